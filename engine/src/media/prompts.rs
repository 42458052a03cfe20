//! Prompts: WAV files decoded once, resampled once to the mixing rates, and shared.
//!
//! [`PromptCache::load_file`] reads a WAV file (PCM 16-bit, G.711 µ-law or A-law; mono, or
//! stereo mixed down; 8 to 48 kHz), decodes it, and resamples it to 8000 and 16 000 Hz
//! (the rates the mixer runs at) with [`switchboard_codecs::resample`]; rates other than
//! 8/16/48 kHz are first interpolated to 48 kHz. Decoded prompts are cached by
//! (path, modification time, size) and stored by the SHA-256 of the file's bytes, so the
//! same audio under two names is held once; the cache holds at most
//! [`PromptConfig::cache_bytes`] of samples and evicts the least recently used prompt.
//! Files larger than [`PromptConfig::max_file_bytes`] are refused before they are read.
//!
//! Loading reads files: call it off the media threads (the control plane does it on a
//! blocking thread). The cache's lock is held only for lookups and inserts, never while a
//! file is read or decoded.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use switchboard_codecs::g711;
use switchboard_codecs::resample::Resampler;
use switchboard_codecs::wav::{WavError, WavFormat, WavReader};
use switchboard_proto::media::PlaySource;

/// Default bound of the cache, bytes of samples.
pub const DEFAULT_CACHE_BYTES: u64 = 64 * 1024 * 1024;
/// Default largest file accepted, bytes.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 32 * 1024 * 1024;
/// Lowest sample rate of a prompt file, Hz.
pub const MIN_RATE: u32 = 8000;
/// Highest sample rate of a prompt file, Hz.
pub const MAX_RATE: u32 = 48_000;

/// Settings of the prompt cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromptConfig {
    /// Most bytes of decoded samples kept.
    pub cache_bytes: u64,
    /// Largest file read, bytes.
    pub max_file_bytes: u64,
}

impl Default for PromptConfig {
    fn default() -> Self {
        Self {
            cache_bytes: DEFAULT_CACHE_BYTES,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
        }
    }
}

/// Why a prompt could not be loaded. The messages name the file and the reason.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PromptError {
    /// No such file.
    #[error("prompt file {0} does not exist")]
    Missing(PathBuf),
    /// The file exists but cannot be read.
    #[error("prompt file {path} cannot be read: {reason}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The OS error.
        reason: String,
    },
    /// Not a regular file.
    #[error("prompt {0} is not a regular file")]
    NotAFile(PathBuf),
    /// Larger than allowed.
    #[error("prompt is {size} bytes, more than the limit of {max}")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// Zero bytes.
    #[error("prompt file is empty")]
    Empty,
    /// Not a WAV file, or a malformed one.
    #[error("not a usable WAV file: {0}")]
    Wav(String),
    /// The file ends before its audio does.
    #[error("truncated WAV file: {0}")]
    Truncated(String),
    /// A WAV file without audio.
    #[error("the WAV file holds no audio")]
    NoAudio,
    /// A sample rate outside 8–48 kHz.
    #[error("sample rate {0} Hz unsupported (8000 to 48000 Hz)")]
    Rate(u32),
}

impl From<WavError> for PromptError {
    fn from(e: WavError) -> Self {
        match e {
            WavError::Truncated { .. } | WavError::DataBeyondFile { .. } => {
                Self::Truncated(e.to_string())
            }
            other => Self::Wav(other.to_string()),
        }
    }
}

/// A decoded prompt, mono, at the mixing rates.
#[derive(Debug, Clone)]
pub struct Prompt {
    /// Samples at 8000 Hz.
    pub pcm8: Arc<[i16]>,
    /// Samples at 16 000 Hz.
    pub pcm16: Arc<[i16]>,
    /// Length, ms.
    pub duration_ms: u64,
    /// SHA-256 of the file's bytes.
    pub hash: [u8; 32],
}

impl Prompt {
    /// What the mixer plays: the samples at 16 kHz when `wideband`, else at 8 kHz.
    #[must_use]
    pub fn source(&self, wideband: bool) -> PlaySource {
        if wideband {
            PlaySource::Pcm {
                samples: Arc::clone(&self.pcm16),
                rate: 16_000,
            }
        } else {
            PlaySource::Pcm {
                samples: Arc::clone(&self.pcm8),
                rate: 8000,
            }
        }
    }

    /// Bytes of samples held.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        ((self.pcm8.len() + self.pcm16.len()) * 2) as u64
    }
}

/// Converts a whole mono signal between two of 8/16/48 kHz, compensating the filter's
/// delay so the output lines up with the input and has `len × to / from` samples.
fn convert(input: &[i16], from: u32, to: u32) -> Vec<i16> {
    if from == to {
        return input.to_vec();
    }
    let Ok(mut r) = Resampler::new(from, to) else {
        return Vec::new();
    };
    let want = (input.len() as u64 * u64::from(to) / u64::from(from)) as usize;
    let delay_out = r.delay_samples();
    // Input samples that push the delayed tail out (rounded up to a whole input block).
    let pad = (delay_out as u64 * u64::from(from)).div_ceil(u64::from(to)) as usize + 6;
    let mut padded = Vec::with_capacity(input.len() + pad);
    padded.extend_from_slice(input);
    padded.resize(input.len() + pad, 0);
    let mut out = vec![0i16; r.output_len(padded.len())];
    let n = r.process(&padded, &mut out);
    out.truncate(n);
    let mut out: Vec<i16> = out.into_iter().skip(delay_out).take(want).collect();
    out.resize(want, 0);
    out
}

/// Linear interpolation to 48 kHz, for rates the polyphase resampler does not take.
fn to_48k_linear(input: &[i16], from: u32) -> Vec<i16> {
    let want = (input.len() as u64 * 48_000 / u64::from(from)) as usize;
    let mut out = Vec::with_capacity(want);
    let step = f64::from(from) / 48_000.0;
    for i in 0..want {
        let pos = i as f64 * step;
        let k = pos as usize;
        let frac = pos - k as f64;
        let a = f64::from(input.get(k).copied().unwrap_or(0));
        let b = f64::from(
            input
                .get(k + 1)
                .copied()
                .unwrap_or(input.get(k).copied().unwrap_or(0)),
        );
        out.push((a + (b - a) * frac).round().clamp(-32768.0, 32767.0) as i16);
    }
    out
}

/// Decodes a WAV file held in memory into a [`Prompt`].
pub fn decode_wav(bytes: &[u8]) -> Result<Prompt, PromptError> {
    if bytes.is_empty() {
        return Err(PromptError::Empty);
    }
    let wav = WavReader::parse(bytes)?;
    let spec = wav.info.spec;
    let rate = spec.sample_rate;
    if !(MIN_RATE..=MAX_RATE).contains(&rate) {
        return Err(PromptError::Rate(rate));
    }
    if wav.info.frames == 0 {
        return Err(PromptError::NoAudio);
    }
    let channels = usize::from(spec.channels.max(1));
    let interleaved: Vec<i16> = match spec.format {
        WavFormat::Pcm16 => wav
            .data
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect(),
        WavFormat::Mulaw => wav.data.iter().map(|&c| g711::ulaw_decode(c)).collect(),
        WavFormat::Alaw => wav.data.iter().map(|&c| g711::alaw_decode(c)).collect(),
        _ => return Err(PromptError::Wav("unsupported sample format".into())),
    };
    let mono: Vec<i16> = if channels == 1 {
        interleaved
    } else {
        interleaved
            .chunks_exact(channels)
            .map(|f| {
                let sum: i32 = f.iter().map(|&s| i32::from(s)).sum();
                (sum / channels as i32) as i16
            })
            .collect()
    };
    let (base, base_rate) = if matches!(rate, 8000 | 16_000 | 48_000) {
        (mono, rate)
    } else {
        (to_48k_linear(&mono, rate), 48_000)
    };
    let pcm8 = convert(&base, base_rate, 8000);
    let pcm16 = convert(&base, base_rate, 16_000);
    let duration_ms = wav.info.frames * 1000 / u64::from(rate);
    Ok(Prompt {
        pcm8: pcm8.into(),
        pcm16: pcm16.into(),
        duration_ms,
        hash: Sha256::digest(bytes).into(),
    })
}

#[derive(Debug)]
struct FileKey {
    mtime: Option<SystemTime>,
    size: u64,
    hash: [u8; 32],
}

#[derive(Debug)]
struct Blob {
    prompt: Arc<Prompt>,
    used: u64,
}

#[derive(Debug, Default)]
struct Inner {
    files: HashMap<PathBuf, FileKey>,
    blobs: HashMap<[u8; 32], Blob>,
    total: u64,
    tick: u64,
}

impl Inner {
    fn get(&mut self, hash: &[u8; 32]) -> Option<Arc<Prompt>> {
        self.tick += 1;
        let tick = self.tick;
        self.blobs.get_mut(hash).map(|b| {
            b.used = tick;
            Arc::clone(&b.prompt)
        })
    }

    fn insert(&mut self, prompt: Arc<Prompt>, cap: u64) {
        let size = prompt.bytes();
        if size > cap || self.blobs.contains_key(&prompt.hash) {
            return;
        }
        while self.total + size > cap {
            let Some(oldest) = self
                .blobs
                .iter()
                .min_by_key(|(_, b)| b.used)
                .map(|(h, _)| *h)
            else {
                break;
            };
            if let Some(b) = self.blobs.remove(&oldest) {
                self.total = self.total.saturating_sub(b.prompt.bytes());
            }
            self.files.retain(|_, f| f.hash != oldest);
        }
        self.tick += 1;
        self.total += size;
        self.blobs.insert(
            prompt.hash,
            Blob {
                prompt,
                used: self.tick,
            },
        );
    }
}

/// Decoded prompts, shared by the control plane. See the [module docs](self).
#[derive(Debug, Default)]
pub struct PromptCache {
    config: PromptConfig,
    inner: Mutex<Inner>,
}

impl PromptCache {
    /// An empty cache.
    #[must_use]
    pub fn new(config: PromptConfig) -> Self {
        Self {
            config,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps inconsistent (every
        // mutation is a single insert or remove), so a poisoned lock is used as is.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Bytes of samples held.
    #[must_use]
    pub fn held_bytes(&self) -> u64 {
        self.lock().total
    }

    /// Loads a WAV file (from the cache when its modification time and size are unchanged).
    pub fn load_file(&self, path: &Path) -> Result<Arc<Prompt>, PromptError> {
        let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => PromptError::Missing(path.to_owned()),
            _ => PromptError::Unreadable {
                path: path.to_owned(),
                reason: e.to_string(),
            },
        })?;
        if !meta.is_file() {
            return Err(PromptError::NotAFile(path.to_owned()));
        }
        let size = meta.len();
        if size > self.config.max_file_bytes {
            return Err(PromptError::TooLarge {
                size,
                max: self.config.max_file_bytes,
            });
        }
        if size == 0 {
            return Err(PromptError::Empty);
        }
        let mtime = meta.modified().ok();
        {
            let mut inner = self.lock();
            let hit = inner
                .files
                .get(path)
                .filter(|f| f.mtime == mtime && f.size == size && mtime.is_some())
                .map(|f| f.hash);
            if let Some(p) = hit.and_then(|h| inner.get(&h)) {
                return Ok(p);
            }
        }
        let bytes = std::fs::read(path).map_err(|e| PromptError::Unreadable {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        if bytes.len() as u64 > self.config.max_file_bytes {
            return Err(PromptError::TooLarge {
                size: bytes.len() as u64,
                max: self.config.max_file_bytes,
            });
        }
        let prompt = self.load_bytes(&bytes)?;
        self.lock().files.insert(
            path.to_owned(),
            FileKey {
                mtime,
                size,
                hash: prompt.hash,
            },
        );
        Ok(prompt)
    }

    /// Decodes a WAV file's bytes (from the cache when the same bytes were decoded before).
    pub fn load_bytes(&self, bytes: &[u8]) -> Result<Arc<Prompt>, PromptError> {
        if bytes.len() as u64 > self.config.max_file_bytes {
            return Err(PromptError::TooLarge {
                size: bytes.len() as u64,
                max: self.config.max_file_bytes,
            });
        }
        let hash: [u8; 32] = Sha256::digest(bytes).into();
        if let Some(p) = self.lock().get(&hash) {
            return Ok(p);
        }
        let prompt = Arc::new(decode_wav(bytes)?);
        self.lock()
            .insert(Arc::clone(&prompt), self.config.cache_bytes);
        Ok(prompt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use switchboard_codecs::wav::{WavSpec, WavWriter};

    fn wav(format: WavFormat, channels: u16, rate: u32, frames: usize) -> Vec<u8> {
        let mut w = WavWriter::create(
            Cursor::new(Vec::new()),
            WavSpec {
                format,
                channels,
                sample_rate: rate,
            },
        )
        .unwrap();
        let n = frames * usize::from(channels);
        match format {
            WavFormat::Pcm16 => {
                let s: Vec<i16> = (0..n).map(|i| ((i % 100) * 100) as i16).collect();
                w.write_samples_i16(&s).unwrap();
            }
            _ => w.write_encoded(&vec![0xd5; n]).unwrap(),
        }
        w.finalize().unwrap().into_inner()
    }

    fn tmp(name: &str, bytes: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sb-prompts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn lengths_after_resampling() {
        for (rate, frames) in [
            (8000, 8000),
            (16_000, 16_000),
            (48_000, 4800),
            (44_100, 44_100),
            (22_050, 11_025),
            (11_025, 11_025),
        ] {
            let p = decode_wav(&wav(WavFormat::Pcm16, 1, rate, frames)).unwrap();
            let secs = frames as f64 / f64::from(rate);
            let expect8 = (secs * 8000.0).round() as i64;
            let expect16 = (secs * 16_000.0).round() as i64;
            assert!((p.pcm8.len() as i64 - expect8).abs() <= 1, "{rate}");
            assert!((p.pcm16.len() as i64 - expect16).abs() <= 2, "{rate}");
            assert_eq!(p.duration_ms, frames as u64 * 1000 / u64::from(rate));
        }
    }

    #[test]
    fn g711_and_stereo_decode() {
        let p = decode_wav(&wav(WavFormat::Mulaw, 1, 8000, 800)).unwrap();
        assert_eq!(p.pcm8.len(), 800);
        assert_eq!(p.duration_ms, 100);
        let p = decode_wav(&wav(WavFormat::Alaw, 2, 8000, 1600)).unwrap();
        assert_eq!(p.pcm8.len(), 1600);
        assert_eq!(p.pcm16.len(), 3200);
        let p = decode_wav(&wav(WavFormat::Pcm16, 2, 16_000, 320)).unwrap();
        assert_eq!(p.pcm16.len(), 320);
        assert_eq!(p.pcm8.len(), 160);
    }

    #[test]
    fn a_tone_keeps_its_level_through_resampling() {
        let rate = 16_000;
        let s: Vec<i16> = (0..rate)
            .map(|i| {
                (8000.0
                    * (2.0 * std::f64::consts::PI * 1000.0 * f64::from(i) / f64::from(rate)).sin())
                    as i16
            })
            .collect();
        let mut w = WavWriter::create(
            Cursor::new(Vec::new()),
            WavSpec {
                format: WavFormat::Pcm16,
                channels: 1,
                sample_rate: rate,
            },
        )
        .unwrap();
        w.write_samples_i16(&s).unwrap();
        let p = decode_wav(&w.finalize().unwrap().into_inner()).unwrap();
        let peak = p.pcm8[1000..7000].iter().map(|x| x.abs()).max().unwrap();
        assert!((7000..=8500).contains(&peak), "{peak}");
    }

    #[test]
    fn bad_files_get_clear_errors() {
        let c = PromptCache::new(PromptConfig::default());
        let missing = c.load_file(Path::new("/nonexistent/sb/prompt.wav"));
        assert!(matches!(missing, Err(PromptError::Missing(_))));
        assert!(missing.unwrap_err().to_string().contains("does not exist"));
        let empty = tmp("empty.wav", b"");
        assert!(matches!(c.load_file(&empty), Err(PromptError::Empty)));
        let text = tmp("text.wav", b"hello, this is not a wav file at all");
        let e = c.load_file(&text).unwrap_err();
        assert!(matches!(e, PromptError::Wav(_)), "{e}");
        let good = wav(WavFormat::Pcm16, 1, 8000, 8000);
        let cut = tmp("cut.wav", &good[..good.len() / 2]);
        let e = c.load_file(&cut).unwrap_err();
        assert!(matches!(e, PromptError::Truncated(_)), "{e}");
        let silent = tmp("silent.wav", &wav(WavFormat::Pcm16, 1, 8000, 0));
        assert!(matches!(c.load_file(&silent), Err(PromptError::NoAudio)));
        let low = tmp("low.wav", &wav(WavFormat::Pcm16, 1, 4000, 400));
        assert!(matches!(c.load_file(&low), Err(PromptError::Rate(4000))));
        let dir = std::env::temp_dir();
        assert!(matches!(c.load_file(&dir), Err(PromptError::NotAFile(_))));
        let small = PromptCache::new(PromptConfig {
            cache_bytes: 1 << 20,
            max_file_bytes: 100,
        });
        let big = tmp("big.wav", &good);
        assert!(matches!(
            small.load_file(&big),
            Err(PromptError::TooLarge { .. })
        ));
        assert!(c.load_bytes(&[0xff; 3]).is_err());
    }

    #[test]
    fn cache_hits_and_bounded_size() {
        let c = PromptCache::new(PromptConfig {
            // Room for two one-second prompts (48 000 bytes each), not three.
            cache_bytes: 100_000,
            max_file_bytes: 1 << 20,
        });
        let mk = |n: usize| {
            let mut b = wav(WavFormat::Pcm16, 1, 8000, 8000);
            let last = b.len() - 1;
            b[last] = n as u8;
            b
        };
        let a = tmp("a.wav", &mk(1));
        let p1 = c.load_file(&a).unwrap();
        let p2 = c.load_file(&a).unwrap();
        assert!(Arc::ptr_eq(&p1, &p2));
        // The same bytes under another name share the blob.
        let a2 = tmp("a2.wav", &mk(1));
        assert!(Arc::ptr_eq(&p1, &c.load_file(&a2).unwrap()));
        assert_eq!(c.held_bytes(), p1.bytes());
        let _ = c.load_file(&tmp("b.wav", &mk(2))).unwrap();
        let _ = c.load_file(&a).unwrap();
        let _ = c.load_file(&tmp("c.wav", &mk(3))).unwrap();
        assert!(c.held_bytes() <= 100_000);
        // `a` was used more recently than `b`: it stayed.
        assert!(Arc::ptr_eq(&p1, &c.load_file(&a).unwrap()));
    }
}
