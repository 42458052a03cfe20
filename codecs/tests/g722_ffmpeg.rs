//! Cross-check of the G.722 codec against an independent implementation: ffmpeg's
//! `adpcm_g722` encoder and decoder, on real speech (espeak-ng) and a sine sweep.
//!
//! Needs `ffmpeg` and `espeak-ng` on the PATH; the test panics naming the missing tool
//! rather than passing without checking anything.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use switchboard_codecs::g722::{G722Decoder, G722Encoder};

/// A unique scratch path under the system temp directory, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Self(std::env::temp_dir().join(format!(
            "switchboard-g722-{}-{nanos}-{n}-{tag}",
            std::process::id()
        )))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn require_tool(tool: &str, version_arg: &str) {
    let ok = Command::new(tool)
        .arg(version_arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "required tool `{tool}` is missing or broken: install it (Debian: apt-get install {tool}) \
         to run the G.722 cross-check"
    );
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("could not run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ffmpeg() -> Command {
    let mut c = Command::new("ffmpeg");
    c.args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y"]);
    c
}

fn write_pcm(path: &Path, pcm: &[i16]) {
    let bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
    std::fs::write(path, bytes).unwrap();
}

fn read_pcm(path: &Path) -> Vec<i16> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

/// Speech from espeak-ng, resampled by ffmpeg to 16 kHz mono s16le.
fn speech() -> Vec<i16> {
    let wav = TempFile::new("speech.wav");
    let raw = TempFile::new("speech.raw");
    run(Command::new("espeak-ng").arg("-w").arg(wav.path()).arg(
        "Thank you for calling Switchboard. Your call is important to us. \
         Please hold while we connect you to the next available agent.",
    ));
    run(ffmpeg()
        .arg("-i")
        .arg(wav.path())
        .args(["-ar", "16000", "-ac", "1", "-f", "s16le"])
        .arg(raw.path()));
    let mut pcm = read_pcm(raw.path());
    pcm.truncate(pcm.len() & !1);
    assert!(
        pcm.len() > 16000,
        "espeak-ng produced only {} samples",
        pcm.len()
    );
    pcm
}

/// A logarithmic sine sweep from 50 Hz to 7500 Hz over two seconds at 16 kHz.
fn sweep() -> Vec<i16> {
    let n = 32000;
    let (f0, f1) = (50.0f64, 7500.0f64);
    let duration = n as f64 / 16000.0;
    let k = (f1 / f0).ln() / duration;
    (0..n)
        .map(|i| {
            let t = i as f64 / 16000.0;
            let phase = 2.0 * std::f64::consts::PI * f0 * ((k * t).exp() - 1.0) / k;
            (12000.0 * phase.sin()) as i16
        })
        .collect()
}

/// Full-scale square bursts and clipped noise, to drive every saturation in the codec.
fn full_scale() -> Vec<i16> {
    let mut state = 0x1357_9bdf_u32;
    (0..16000)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            if (i / 4000) % 2 == 0 {
                if (i / 7) % 2 == 0 { i16::MAX } else { i16::MIN }
            } else {
                ((state >> 16) as i16).saturating_mul(2)
            }
        })
        .collect()
}

fn ffmpeg_encode(pcm: &[i16]) -> Vec<u8> {
    let raw = TempFile::new("in.raw");
    let g722 = TempFile::new("out.g722");
    write_pcm(raw.path(), pcm);
    run(ffmpeg()
        .args(["-f", "s16le", "-ar", "16000", "-ac", "1", "-i"])
        .arg(raw.path())
        .args(["-c:a", "g722", "-f", "g722"])
        .arg(g722.path()));
    std::fs::read(g722.path()).unwrap()
}

fn ffmpeg_decode(bitstream: &[u8]) -> Vec<i16> {
    let g722 = TempFile::new("in.g722");
    let raw = TempFile::new("out.raw");
    std::fs::write(g722.path(), bitstream).unwrap();
    run(ffmpeg()
        .args(["-f", "g722", "-i"])
        .arg(g722.path())
        .args(["-f", "s16le"])
        .arg(raw.path()));
    read_pcm(raw.path())
}

fn our_encode(pcm: &[i16]) -> Vec<u8> {
    let mut enc = G722Encoder::new();
    let mut out = vec![0u8; pcm.len() / 2];
    // Feed in 20 ms frames, as the engine does.
    let mut written = 0;
    for frame in pcm.chunks(320) {
        written += enc.encode(frame, &mut out[written..]);
    }
    assert_eq!(written, out.len());
    out
}

fn our_decode(bitstream: &[u8]) -> Vec<i16> {
    let mut dec = G722Decoder::new();
    let mut out = vec![0i16; bitstream.len() * 2];
    let mut written = 0;
    for frame in bitstream.chunks(160) {
        written += dec.decode(frame, &mut out[written..]);
    }
    assert_eq!(written, out.len());
    out
}

/// SNR (dB) of `out` against `reference` delayed by `delay` samples.
fn snr_db(reference: &[i16], out: &[i16], delay: usize) -> f64 {
    let n = reference.len().min(out.len().saturating_sub(delay));
    let (mut sig, mut noise) = (0.0f64, 0.0f64);
    for i in 0..n {
        let r = f64::from(reference[i]);
        let e = f64::from(out[i + delay]) - r;
        sig += r * r;
        noise += e * e;
    }
    10.0 * (sig / noise.max(1e-9)).log10()
}

struct Comparison {
    bytes_equal: usize,
    bytes_total: usize,
    samples_exact: usize,
    max_abs_diff: i32,
    samples_total: usize,
    delay: usize,
    snr: f64,
}

fn compare(name: &str, pcm: &[i16]) -> Comparison {
    // (a) Encoders on the same input.
    let theirs = ffmpeg_encode(pcm);
    let ours = our_encode(pcm);
    assert_eq!(theirs.len(), ours.len(), "{name}: bitstream lengths differ");
    let bytes_equal = theirs.iter().zip(&ours).filter(|(a, b)| a == b).count();
    if let Some(first) = theirs.iter().zip(&ours).position(|(a, b)| a != b) {
        eprintln!(
            "{name}: first bitstream difference at byte {first}: ffmpeg {:#04x}, ours {:#04x}",
            theirs[first], ours[first]
        );
    }

    // (b) Decoders on ffmpeg's bitstream.
    let theirs_pcm = ffmpeg_decode(&theirs);
    let ours_pcm = our_decode(&theirs);
    assert_eq!(
        theirs_pcm.len(),
        ours_pcm.len(),
        "{name}: decoded lengths differ"
    );
    let samples_exact = theirs_pcm
        .iter()
        .zip(&ours_pcm)
        .filter(|(a, b)| a == b)
        .count();
    let max_abs_diff = theirs_pcm
        .iter()
        .zip(&ours_pcm)
        .map(|(&a, &b)| (i32::from(a) - i32::from(b)).abs())
        .max()
        .unwrap_or(0);

    // (c) Our own round trip, aligned on the codec delay.
    let round_trip = our_decode(&ours);
    let (delay, snr) = (0..64)
        .map(|d| (d, snr_db(pcm, &round_trip, d)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap();

    let c = Comparison {
        bytes_equal,
        bytes_total: ours.len(),
        samples_exact,
        max_abs_diff,
        samples_total: ours_pcm.len(),
        delay,
        snr,
    };
    eprintln!(
        "{name}: encoder {}/{} bytes identical to ffmpeg ({:.3}%); decoder {}/{} samples \
         identical to ffmpeg (max |diff| {}); round trip SNR {:.1} dB at delay {}",
        c.bytes_equal,
        c.bytes_total,
        100.0 * c.bytes_equal as f64 / c.bytes_total as f64,
        c.samples_exact,
        c.samples_total,
        c.max_abs_diff,
        c.snr,
        c.delay
    );
    c
}

#[test]
fn g722_matches_ffmpeg_on_speech_sweep_and_full_scale() {
    require_tool("ffmpeg", "-version");
    require_tool("espeak-ng", "--version");

    for (name, pcm) in [
        ("speech", speech()),
        ("sweep", sweep()),
        ("full-scale", full_scale()),
    ] {
        let c = compare(name, &pcm);
        assert_eq!(
            c.bytes_equal, c.bytes_total,
            "{name}: encoder bitstream differs from ffmpeg's"
        );
        assert!(
            c.max_abs_diff <= 1,
            "{name}: decoder differs from ffmpeg's by up to {}",
            c.max_abs_diff
        );
        if name != "full-scale" {
            assert!(c.snr > 20.0, "{name}: round-trip SNR only {:.1} dB", c.snr);
        }
    }
}

#[test]
fn g722_decoder_matches_ffmpeg_on_random_bitstream() {
    require_tool("ffmpeg", "-version");

    // Arbitrary bytes, including the low-band codes 0..=3 that an encoder never emits.
    let mut state = 0x9e37_79b9_u32;
    let bitstream: Vec<u8> = (0..8000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state >> 24) as u8
        })
        .collect();
    let theirs = ffmpeg_decode(&bitstream);
    let ours = our_decode(&bitstream);
    assert_eq!(theirs.len(), ours.len());
    let exact = theirs.iter().zip(&ours).filter(|(a, b)| a == b).count();
    eprintln!(
        "random: decoder {exact}/{} samples identical to ffmpeg",
        ours.len()
    );
    assert_eq!(
        exact,
        ours.len(),
        "decoder differs from ffmpeg's on random input"
    );
}
