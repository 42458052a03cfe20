//! Talk-off: synthetic speech must not be taken for DTMF. The speech comes from `espeak-ng`
//! (several voices and pitches), resampled by `sox`; both must be installed, and the test
//! fails naming the tool when one is missing.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

use switchboard_codecs::dtmf::{DtmfDetector, DtmfEvent};
use switchboard_codecs::tone::{Cadence, ToneGenerator};

const TEXT: &str = "Thank you for calling. Your call is important to us. Please press one for \
    sales, two for support, or stay on the line. Seven, eight, nine, zero, star, hash. The \
    quick brown fox jumps over the lazy dog. Oh, hello, yes, I need help with my account.";

/// Speech for `voice` at espeak pitch `pitch` (0–99), as i16 samples at `rate`.
fn speech(voice: &str, pitch: u32, rates: &[u32]) -> Vec<Vec<i16>> {
    let dir = std::env::temp_dir();
    let wav: PathBuf = dir.join(format!(
        "switchboard-talkoff-{}-{voice}-{pitch}.wav",
        std::process::id()
    ));
    let wav_str = wav.to_str().expect("temp paths are UTF-8");
    let status = Command::new("espeak-ng")
        .args(["-v", voice, "-p", &pitch.to_string(), "-w", wav_str, TEXT])
        .status()
        .unwrap_or_else(|e| {
            panic!("`espeak-ng` is required for this test but could not be run ({e})")
        });
    assert!(status.success(), "espeak-ng failed for voice {voice}");
    let out: Vec<Vec<i16>> = rates
        .iter()
        .map(|rate| {
            let out = Command::new("sox")
                .args([wav_str, "-t", "raw", "-r", &rate.to_string()])
                .args(["-e", "signed-integer", "-b", "16", "-c", "1", "-L", "-"])
                .output()
                .unwrap_or_else(|e| {
                    panic!("`sox` is required for this test but could not be run ({e})")
                });
            assert!(
                out.status.success(),
                "sox failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]))
                .collect()
        })
        .collect();
    std::fs::remove_file(&wav).unwrap();
    out
}

fn detect(rate: u32, pcm: &[i16]) -> String {
    let mut det = DtmfDetector::new(rate).unwrap();
    let mut got = String::new();
    for frame in pcm.chunks(rate as usize / 50) {
        det.process(frame, |e| {
            if let DtmfEvent::Begin(d) = e {
                got.push(d.digit);
            }
        });
    }
    got
}

#[test]
fn dtmf_talkoff_espeak_speech_gives_no_digits() {
    let rates = [8000, 16000];
    let mut seconds = 0.0;
    for voice in ["en", "en-us", "en+f3", "de", "fr", "es"] {
        for pitch in [30, 60, 99] {
            let audio = speech(voice, pitch, &rates);
            for (rate, pcm) in rates.iter().zip(&audio) {
                assert!(pcm.len() > *rate as usize, "espeak-ng produced no audio");
                seconds += pcm.len() as f64 / f64::from(*rate);
                let got = detect(*rate, pcm);
                assert_eq!(got, "", "voice {voice} pitch {pitch} at {rate} Hz");

                // The detector still works right after the speech.
                let mut with_digits = pcm.clone();
                for key in "159#".chars() {
                    let cadence = Cadence::once(&[(60, 60)]).unwrap();
                    let mut g = ToneGenerator::dtmf(*rate, key, cadence).unwrap();
                    let mut buf = vec![0i16; *rate as usize * 120 / 1000];
                    g.fill(&mut buf);
                    with_digits.extend(buf);
                }
                assert_eq!(detect(*rate, &with_digits), "159#");
            }
        }
    }
    assert!(seconds > 60.0, "only {seconds} s of speech");
}
