//! The speech the harness sends: real speech from a WAV file (`--media`), or speech synthesised
//! once at set-up with `espeak-ng`, turned into 8 kHz linear PCM and pre-encoded into 20 ms
//! frames of the codec a scenario sends (PCMU, PCMA or Opus), so that codecs and voice activity
//! detection in the target work as they do on real calls. Encoding happens once; sending a
//! frame afterwards is a copy.
//!
//! Without `--media` and without `espeak-ng` on the machine the harness falls back to a
//! deterministic speech-like signal ([`crate::rtp::Audio`]) and says so in the report notes.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use serde::Serialize;
use switchboard_codecs::g711;
use switchboard_codecs::opus::{OpusConfig, OpusEncoder};
use switchboard_codecs::wav::WavReader;

/// Sample rate of the PCM the harness keeps (G.711's).
pub const RATE: u32 = 8_000;
/// Samples per 20 ms frame at [`RATE`].
pub const FRAME_SAMPLES: usize = 160;
/// Longest speech kept, seconds (a longer file is cut).
pub const MAX_SECONDS: usize = 120;
/// Largest WAV file read, bytes.
pub const MAX_FILE_BYTES: u64 = 64 << 20;
/// Text synthesised when no file is given.
pub const DEFAULT_TEXT: &str = "Thank you for calling. Your call is important to us. \
    Please hold while we connect you to the next available agent. \
    I can see your order from last Tuesday, the parcel left our warehouse this morning, \
    and it should arrive within two working days. Is there anything else I can help you with?";

/// A codec the harness sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// G.711 µ-law, payload type 0.
    Pcmu,
    /// G.711 A-law, payload type 8.
    Pcma,
    /// Opus, dynamic payload type 96, RTP clock 48 kHz (RFC 7587).
    Opus,
}

impl Codec {
    /// The RTP payload type the harness uses for it.
    pub fn payload_type(self) -> u8 {
        match self {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
            Codec::Opus => 96,
        }
    }

    /// RTP clock rate.
    pub fn clock_rate(self) -> u32 {
        match self {
            Codec::Pcmu | Codec::Pcma => 8_000,
            Codec::Opus => 48_000,
        }
    }

    /// RTP timestamp units per 20 ms frame.
    pub fn timestamp_step(self) -> u32 {
        self.clock_rate() / 50
    }

    /// The NG codec name (`codec: {transcode: [..]}`).
    pub fn ng_name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
            Codec::Opus => "opus",
        }
    }

    /// The SDP `a=rtpmap` value.
    pub fn rtpmap(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU/8000",
            Codec::Pcma => "PCMA/8000",
            Codec::Opus => "opus/48000/2",
        }
    }
}

/// Where the speech came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// A WAV file given with `--media`.
    File(PathBuf),
    /// Synthesised with espeak-ng.
    Espeak,
    /// The built-in speech-like signal (neither a file nor espeak-ng).
    Synthetic,
}

/// Speech as 8 kHz mono linear PCM, a whole number of frames long.
#[derive(Debug, Clone)]
pub struct Speech {
    /// The samples.
    pub pcm: Vec<i16>,
    /// Where they came from.
    pub source: Source,
}

impl Speech {
    /// The speech of a run: `file` when given, otherwise espeak-ng's rendering of
    /// [`DEFAULT_TEXT`], otherwise the built-in signal.
    pub fn load(file: Option<&Path>) -> Result<Self> {
        if let Some(path) = file {
            let pcm = read_wav(path)?;
            return Ok(Self::from_pcm(pcm, Source::File(path.to_path_buf())));
        }
        match synthesise(DEFAULT_TEXT) {
            Ok(pcm) => Ok(Self::from_pcm(pcm, Source::Espeak)),
            Err(_) => Ok(Self::synthetic()),
        }
    }

    /// The built-in speech-like signal, one second long.
    pub fn synthetic() -> Self {
        let audio = crate::rtp::Audio::new();
        let pcm = audio
            .second()
            .iter()
            .map(|&c| g711::ulaw_decode(c))
            .collect();
        Self::from_pcm(pcm, Source::Synthetic)
    }

    fn from_pcm(mut pcm: Vec<i16>, source: Source) -> Self {
        pcm.truncate(MAX_SECONDS * RATE as usize);
        let whole = pcm.len() / FRAME_SAMPLES * FRAME_SAMPLES;
        pcm.truncate(whole);
        if pcm.is_empty() {
            pcm = vec![0; FRAME_SAMPLES];
        }
        Self { pcm, source }
    }

    /// Whole frames of speech.
    pub fn frames(&self) -> usize {
        self.pcm.len() / FRAME_SAMPLES
    }

    /// The speech as G.711 µ-law bytes, one per sample.
    pub fn ulaw(&self) -> Vec<u8> {
        let mut out = vec![0; self.pcm.len()];
        g711::ulaw_encode_slice(&self.pcm, &mut out);
        out
    }

    /// The speech pre-encoded into 20 ms frames of `codec`.
    pub fn encode(&self, codec: Codec) -> Result<Frames> {
        let mut data = Vec::new();
        let mut ends = Vec::with_capacity(self.frames());
        let mut encoder = match codec {
            Codec::Opus => Some(
                OpusEncoder::new(&OpusConfig {
                    sample_rate: RATE,
                    bitrate: 24_000,
                    fec: false,
                    packet_loss_pct: 0,
                    ..OpusConfig::default()
                })
                .map_err(|e| anyhow::anyhow!("creating the Opus encoder: {e}"))?,
            ),
            _ => None,
        };
        let mut buf = [0u8; 1_500];
        for frame in self.pcm.chunks_exact(FRAME_SAMPLES) {
            let len = match codec {
                Codec::Pcmu => {
                    g711::ulaw_encode_slice(frame, &mut buf[..FRAME_SAMPLES]);
                    FRAME_SAMPLES
                }
                Codec::Pcma => {
                    g711::alaw_encode_slice(frame, &mut buf[..FRAME_SAMPLES]);
                    FRAME_SAMPLES
                }
                Codec::Opus => match encoder.as_mut() {
                    Some(enc) => enc
                        .encode(frame, &mut buf)
                        .map_err(|e| anyhow::anyhow!("Opus encoding: {e}"))?,
                    None => bail!("no Opus encoder"),
                },
            };
            data.extend_from_slice(&buf[..len]);
            ends.push(data.len());
        }
        Ok(Frames { codec, data, ends })
    }
}

/// Pre-encoded 20 ms frames of one codec, looked up by frame number (wrapping).
#[derive(Debug, Clone)]
pub struct Frames {
    /// Their codec.
    pub codec: Codec,
    data: Vec<u8>,
    ends: Vec<usize>,
}

impl Frames {
    /// Frame `n` (modulo the number of frames).
    pub fn get(&self, n: usize) -> &[u8] {
        let i = n % self.ends.len().max(1);
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        let end = self.ends.get(i).copied().unwrap_or(0);
        &self.data[start.min(end)..end]
    }

    /// Number of frames.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Largest frame, bytes.
    pub fn max_len(&self) -> usize {
        (0..self.len())
            .map(|i| self.get(i).len())
            .max()
            .unwrap_or(0)
    }
}

/// Reads a PCM16 WAV file (any rate, any channel count; channels are averaged) and resamples
/// it to 8 kHz.
pub fn read_wav(path: &Path) -> Result<Vec<i16>> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.len() > MAX_FILE_BYTES {
        bail!(
            "{} is larger than {} MiB",
            path.display(),
            MAX_FILE_BYTES >> 20
        );
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let wav = WavReader::parse_lenient(&bytes)
        .map_err(|e| anyhow::anyhow!("{} is not a usable WAV file: {e}", path.display()))?;
    let channels = usize::from(wav.info.spec.channels.max(1));
    let rate = wav.info.spec.sample_rate;
    let Some(samples) = wav.samples_i16() else {
        bail!(
            "{}: only 16-bit linear PCM WAV files are read",
            path.display()
        );
    };
    let interleaved: Vec<i16> = samples.collect();
    let mono: Vec<i16> = interleaved
        .chunks_exact(channels)
        .map(|c| (c.iter().map(|&s| i32::from(s)).sum::<i32>() / channels as i32) as i16)
        .collect();
    if !(4_000..=192_000).contains(&rate) {
        bail!("{}: sample rate {rate} Hz is not supported", path.display());
    }
    Ok(resample(&mono, rate, RATE))
}

/// Synthesises `text` with espeak-ng into a temporary WAV file and reads it back at 8 kHz.
pub fn synthesise(text: &str) -> Result<Vec<i16>> {
    let path = std::env::temp_dir().join(format!("switchboard-load-{}.wav", std::process::id()));
    let status = Command::new("espeak-ng")
        .arg("-w")
        .arg(&path)
        .arg(text)
        .status()
        .context("running espeak-ng (install it with `make deps`)")?;
    let read = if status.success() {
        read_wav(&path)
    } else {
        Err(anyhow::anyhow!("espeak-ng failed: {status}"))
    };
    let _ = std::fs::remove_file(&path);
    read
}

/// Resamples by windowed-sinc interpolation (Hann window, 16 zero crossings each side, cut-off
/// at the lower Nyquist frequency). Set-up only; not for the media path.
pub fn resample(input: &[i16], from_hz: u32, to_hz: u32) -> Vec<i16> {
    if from_hz == to_hz || input.is_empty() {
        return input.to_vec();
    }
    const HALF: f64 = 16.0;
    let ratio = f64::from(to_hz) / f64::from(from_hz);
    let cutoff = ratio.min(1.0);
    let out_len = (input.len() as f64 * ratio).floor() as usize;
    let radius = HALF / cutoff;
    (0..out_len)
        .map(|n| {
            let centre = n as f64 / ratio;
            let lo = (centre - radius).ceil().max(0.0) as usize;
            let hi = ((centre + radius).floor() as usize).min(input.len() - 1);
            let mut acc = 0.0;
            for (k, &s) in input.iter().enumerate().take(hi + 1).skip(lo) {
                let x = (k as f64 - centre) * cutoff;
                let sinc = if x.abs() < 1e-9 {
                    1.0
                } else {
                    (std::f64::consts::PI * x).sin() / (std::f64::consts::PI * x)
                };
                let window = 0.5 + 0.5 * (std::f64::consts::PI * x / HALF).cos();
                acc += f64::from(s) * sinc * window * cutoff;
            }
            acc.round().clamp(-32_768.0, 32_767.0) as i16
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resampling_keeps_a_tone() {
        // 440 Hz at 22.05 kHz down to 8 kHz: the same tone, same amplitude.
        let input: Vec<i16> = (0..22_050)
            .map(|n| {
                (10_000.0 * (std::f64::consts::TAU * 440.0 * n as f64 / 22_050.0).sin()) as i16
            })
            .collect();
        let out = resample(&input, 22_050, 8_000);
        assert_eq!(out.len(), 8_000);
        let peak = out[1_000..7_000]
            .iter()
            .map(|s| s.unsigned_abs())
            .max()
            .unwrap();
        assert!((9_000..=11_000).contains(&peak), "peak {peak}");
        // Zero crossings: 880 per second.
        let crossings = out[..8_000]
            .windows(2)
            .filter(|w| (w[0] < 0) != (w[1] < 0))
            .count();
        assert!((860..=900).contains(&crossings), "{crossings}");
    }

    #[test]
    fn frames_of_every_codec() {
        let speech = Speech::synthetic();
        assert_eq!(speech.frames(), 50);
        for codec in [Codec::Pcmu, Codec::Pcma, Codec::Opus] {
            let frames = speech.encode(codec).unwrap();
            assert_eq!(frames.len(), 50);
            assert!(frames.max_len() > 0);
            assert_eq!(frames.get(50), frames.get(0));
            if codec != Codec::Opus {
                assert_eq!(frames.get(3).len(), 160);
            }
        }
        assert_eq!(Codec::Opus.timestamp_step(), 960);
        assert_eq!(Codec::Pcma.payload_type(), 8);
    }

    #[test]
    fn reads_a_wav_file() {
        let dir = std::env::temp_dir().join(format!("sbl-media-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.wav");
        let pcm: Vec<i16> = (0..16_000).map(|n| ((n % 100) * 100) as i16).collect();
        let mut bytes = Vec::new();
        bytes.extend_from_slice(b"RIFF");
        bytes.extend_from_slice(&(36 + 32_000u32).to_le_bytes());
        bytes.extend_from_slice(b"WAVEfmt ");
        bytes.extend_from_slice(&16u32.to_le_bytes());
        bytes.extend_from_slice(&1u16.to_le_bytes());
        bytes.extend_from_slice(&1u16.to_le_bytes());
        bytes.extend_from_slice(&16_000u32.to_le_bytes());
        bytes.extend_from_slice(&32_000u32.to_le_bytes());
        bytes.extend_from_slice(&2u16.to_le_bytes());
        bytes.extend_from_slice(&16u16.to_le_bytes());
        bytes.extend_from_slice(b"data");
        bytes.extend_from_slice(&32_000u32.to_le_bytes());
        for s in &pcm {
            bytes.extend_from_slice(&s.to_le_bytes());
        }
        std::fs::write(&path, bytes).unwrap();
        let speech = Speech::load(Some(&path)).unwrap();
        assert_eq!(speech.pcm.len(), 8_000);
        assert_eq!(speech.source, Source::File(path.clone()));
        assert!(read_wav(&dir.join("missing.wav")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
