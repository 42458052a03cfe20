//! Files written by `switchboard_codecs::wav` are checked with external readers: `sox` and
//! `ffprobe` must both be installed; the tests fail, naming the tool, when one is missing.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use switchboard_codecs::wav::{WavFormat, WavReader, WavSpec, WavWriter, repair};

/// Runs `tool args...` and returns its stdout; panics naming the tool if it cannot run.
fn run(tool: &str, args: &[&str]) -> String {
    let out = Command::new(tool).args(args).output().unwrap_or_else(|e| {
        panic!("`{tool}` is required for this test but could not be run ({e}); install it")
    });
    assert!(
        out.status.success(),
        "`{tool} {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "switchboard-wav-tools-{}-{name}.wav",
        std::process::id()
    ))
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// Writes `frames` frames of a 1 kHz tone (PCM) or a byte pattern (G.711).
fn write(path: &Path, spec: WavSpec, frames: usize, finalize: bool) {
    let file = File::create(path).unwrap();
    let mut w = WavWriter::create(BufWriter::new(file), spec).unwrap();
    let channels = usize::from(spec.channels);
    let mut written = 0;
    while written < frames {
        let n = (frames - written).min(160);
        if spec.format == WavFormat::Pcm16 {
            let samples: Vec<i16> = (0..n * channels)
                .map(|i| {
                    let t = (written + i / channels) as f64 / f64::from(spec.sample_rate);
                    (8000.0 * (std::f64::consts::TAU * 1000.0 * t).sin()) as i16
                })
                .collect();
            w.write_samples_i16(&samples).unwrap();
        } else {
            w.write_encoded(&vec![0xD5; n * channels]).unwrap();
        }
        written += n;
    }
    if finalize {
        w.finalize().unwrap();
    } else {
        w.get_mut().flush().unwrap();
    }
}

/// Decodes the whole file with sox; returns the decoded 16-bit sample count and checks sox
/// printed no warning.
fn sox_decode(path: &Path) -> usize {
    let out = Command::new("sox")
        .args([
            path_str(path),
            "-t",
            "raw",
            "-e",
            "signed-integer",
            "-b",
            "16",
            "-",
        ])
        .output()
        .unwrap_or_else(|e| panic!("`sox` is required for this test but could not be run ({e})"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains("WARN") && !stderr.contains("FAIL"),
        "{stderr}"
    );
    out.stdout.len() / 2
}

fn sox_info(path: &Path, flag: &str) -> String {
    run("sox", &["--i", flag, path_str(path)]).trim().to_owned()
}

#[test]
fn wav_files_open_in_sox_and_ffprobe() {
    for format in [WavFormat::Pcm16, WavFormat::Alaw, WavFormat::Mulaw] {
        for channels in [1u16, 2] {
            for rate in [8000u32, 16000, 48000] {
                let spec = WavSpec {
                    format,
                    channels,
                    sample_rate: rate,
                };
                let path = temp(&format!("{format:?}-{channels}-{rate}"));
                let frames = rate as usize / 2 + 1; // 0.5 s and one frame: odd for G.711 mono
                write(&path, spec, frames, true);

                assert_eq!(sox_info(&path, "-r"), rate.to_string());
                assert_eq!(sox_info(&path, "-c"), channels.to_string());
                assert_eq!(sox_info(&path, "-s"), frames.to_string());
                let encoding = sox_info(&path, "-e");
                let want = match format {
                    WavFormat::Pcm16 => "Signed Integer PCM",
                    WavFormat::Alaw => "A-law",
                    WavFormat::Mulaw => "u-law",
                    _ => unreachable!(),
                };
                assert!(encoding.contains(want), "{format:?}: sox says {encoding}");
                assert_eq!(sox_decode(&path), frames * usize::from(channels));

                let probe = run(
                    "ffprobe",
                    &[
                        "-v",
                        "error",
                        "-show_entries",
                        "stream=codec_name,sample_rate,channels,duration_ts",
                        "-of",
                        "default=noprint_wrappers=1",
                        path_str(&path),
                    ],
                );
                let codec = match format {
                    WavFormat::Pcm16 => "pcm_s16le",
                    WavFormat::Alaw => "pcm_alaw",
                    WavFormat::Mulaw => "pcm_mulaw",
                    _ => unreachable!(),
                };
                for line in [
                    format!("codec_name={codec}"),
                    format!("sample_rate={rate}"),
                    format!("channels={channels}"),
                    format!("duration_ts={frames}"),
                ] {
                    assert!(
                        probe.lines().any(|l| l == line),
                        "ffprobe lacks {line}:\n{probe}"
                    );
                }
                std::fs::remove_file(&path).unwrap();
            }
        }
    }
}

#[test]
fn wav_sox_written_files_parse() {
    for (encoding, format) in [
        ("signed-integer", WavFormat::Pcm16),
        ("a-law", WavFormat::Alaw),
        ("u-law", WavFormat::Mulaw),
    ] {
        let path = temp(&format!("from-sox-{encoding}"));
        let bits = if format == WavFormat::Pcm16 {
            "16"
        } else {
            "8"
        };
        run(
            "sox",
            &[
                "-n",
                "-r",
                "16000",
                "-c",
                "2",
                "-e",
                encoding,
                "-b",
                bits,
                path_str(&path),
                "synth",
                "0.25",
                "sine",
                "440",
            ],
        );
        let bytes = std::fs::read(&path).unwrap();
        let f = WavReader::parse(&bytes).unwrap();
        assert_eq!(f.info.spec.format, format);
        assert_eq!(f.info.spec.channels, 2);
        assert_eq!(f.info.spec.sample_rate, 16000);
        assert_eq!(f.info.frames, 4000);
        std::fs::remove_file(&path).unwrap();
    }
}

#[test]
fn wav_stale_header_is_repaired_and_sox_reads_the_full_duration() {
    for (format, channels) in [
        (WavFormat::Pcm16, 1u16),
        (WavFormat::Pcm16, 2),
        (WavFormat::Mulaw, 1),
    ] {
        let spec = WavSpec {
            format,
            channels,
            sample_rate: 8000,
        };
        let path = temp(&format!("stale-{format:?}-{channels}"));
        // Killed after writing 1.5 s of audio: the header still says 0 bytes.
        write(&path, spec, 12_000, false);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(WavReader::parse(&bytes).unwrap().info.frames, 0);
        // And one more byte: a partial frame for PCM16 (trimmed), a whole odd-length
        // frame for µ-law mono (kept, then padded).
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[0x11; 1]).unwrap();
        drop(f);
        let frames = if format == WavFormat::Pcm16 {
            12_000
        } else {
            12_001
        };

        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let report = repair(&mut file).unwrap();
        drop(file);
        assert!(report.changed);
        assert_eq!(report.frames, frames);
        assert_eq!(report.data_size_before, 0);
        assert_eq!(std::fs::metadata(&path).unwrap().len() % 2, 0);

        assert_eq!(sox_info(&path, "-s"), frames.to_string());
        let seconds: f64 = sox_info(&path, "-D").parse().unwrap();
        assert!((seconds - frames as f64 / 8000.0).abs() < 1e-6, "{seconds}");
        // sox decodes every sample, without complaining about the file.
        let out = Command::new("sox")
            .args([
                path_str(&path),
                "-t",
                "raw",
                "-e",
                "signed-integer",
                "-b",
                "16",
                "-",
            ])
            .output()
            .unwrap_or_else(|e| panic!("`sox` is required for this test ({e})"));
        assert!(out.status.success());
        assert_eq!(out.stdout.len() as u64, frames * u64::from(channels) * 2);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("WARN") && !stderr.contains("FAIL"),
            "{stderr}"
        );
        std::fs::remove_file(&path).unwrap();
    }
}
