//! Per-frame costs of the signal modules: DTMF detection, tone generation, frame energy and
//! voice activity, RFC 4733 telephone-event parsing, and WAV header parsing.
//!
//! Audio benchmarks process one 20 ms frame (160 samples at 8 kHz, 320 at 16 kHz, 960 at
//! 48 kHz) per iteration, cycling through one second of pre-generated audio so the stateful
//! detectors see a realistic mix of digits, pauses and noise. Buffers are allocated once
//! outside the timed loop.
#![allow(missing_docs)]
// Benchmark set-up: a failed expect is a broken benchmark, reported at once.
#![allow(clippy::expect_used)]

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use switchboard_codecs::dtmf::DtmfDetector;
use switchboard_codecs::telephone_event::{DtmfReceiver, DtmfSender, TelephoneEvent, parse_packed};
use switchboard_codecs::tone::{Cadence, ToneGenerator};
use switchboard_codecs::vad::{VadConfig, VoiceActivity, energy_dbov};
use switchboard_codecs::wav::{WavFormat, WavReader, WavSpec, WavWriter};

const RATES: [u32; 3] = [8_000, 16_000, 48_000];

/// Samples in a 20 ms frame at `rate` Hz.
fn frame_len(rate: u32) -> usize {
    rate as usize / 50
}

/// One second of audio: 60 ms DTMF digits with 60 ms pauses, plus low-level noise.
fn signal(rate: u32) -> Vec<i16> {
    let mut out = Vec::with_capacity(rate as usize);
    let mut buf = vec![0i16; rate as usize * 120 / 1000];
    for key in "0123456789".chars() {
        let cadence = Cadence::once(&[(60, 60)]).expect("valid cadence");
        let mut g = ToneGenerator::dtmf(rate, key, cadence).expect("valid digit");
        g.fill(&mut buf);
        out.extend_from_slice(&buf);
    }
    out.resize(rate as usize, 0);
    let mut seed: u32 = 0x1234_5678;
    for s in &mut out {
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        *s = s.saturating_add(((seed >> 16) as i16) / 256);
    }
    out
}

/// Cycles through `audio` one frame at a time.
struct Frames {
    audio: Vec<i16>,
    len: usize,
    pos: usize,
}

impl Frames {
    fn new(rate: u32) -> Self {
        Self {
            audio: signal(rate),
            len: frame_len(rate),
            pos: 0,
        }
    }

    fn next(&mut self) -> &[i16] {
        if self.pos + self.len > self.audio.len() {
            self.pos = 0;
        }
        let frame = &self.audio[self.pos..self.pos + self.len];
        self.pos += self.len;
        frame
    }
}

fn dtmf_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("dtmf_detect_20ms");
    for rate in RATES {
        let mut frames = Frames::new(rate);
        let mut detector = DtmfDetector::new(rate).expect("supported rate");
        group.bench_function(format!("{}k", rate / 1000), |b| {
            b.iter(|| {
                let mut digits = 0u32;
                detector.process(black_box(frames.next()), |_| digits += 1);
                black_box(digits)
            });
        });
    }
    group.finish();
}

fn tone_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("tone_fill_20ms");
    for rate in RATES {
        let mut out = vec![0i16; frame_len(rate)];
        let mut dtmf = ToneGenerator::dtmf(rate, '5', Cadence::continuous()).expect("valid");
        group.bench_function(format!("dtmf_{}k", rate / 1000), |b| {
            b.iter(|| dtmf.fill(black_box(&mut out)));
        });
    }
    let mut out = vec![0i16; frame_len(8_000)];
    let mut ringback = ToneGenerator::ringback(8_000).expect("valid");
    group.bench_function("ringback_8k_cadenced", |b| {
        b.iter(|| ringback.fill(black_box(&mut out)));
    });
    group.finish();
}

fn vad_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("vad_20ms");
    for rate in RATES {
        let mut frames = Frames::new(rate);
        group.bench_function(format!("energy_dbov_{}k", rate / 1000), |b| {
            b.iter(|| energy_dbov(black_box(frames.next())));
        });
    }
    for rate in [8_000, 16_000] {
        let mut frames = Frames::new(rate);
        let mut vad = VoiceActivity::new(VadConfig::new(rate)).expect("valid config");
        group.bench_function(format!("voice_activity_{}k", rate / 1000), |b| {
            b.iter(|| vad.process(black_box(frames.next())));
        });
    }
    group.finish();
}

fn telephone_event_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("telephone_event");
    let payload = [5u8, 0x8A, 0x03, 0x20];
    group.bench_function("parse", |b| {
        b.iter(|| TelephoneEvent::parse(black_box(&payload)));
    });
    let event = TelephoneEvent::parse(&payload).expect("valid payload");
    let mut out = [0u8; 4];
    group.bench_function("write", |b| {
        b.iter(|| black_box(&event).write(black_box(&mut out)));
    });
    let packed = [
        1u8, 0x8A, 0x01, 0x90, 2, 0x8A, 0x01, 0x90, 3, 0x0A, 0x00, 0xA0,
    ];
    group.bench_function("parse_packed_3", |b| {
        b.iter(|| {
            parse_packed(black_box(&packed)).map(|events| {
                events
                    .map(|(offset, e)| offset + u32::from(e.duration))
                    .sum::<u32>()
            })
        });
    });
    let mut sender = DtmfSender::new(160).expect("valid packet time");
    group.bench_function("sender_100ms_event", |b| {
        b.iter(|| {
            let _ = sender.start(black_box(7), 800, 10);
            let mut n = 0u32;
            while let Some(p) = sender.poll_packet() {
                n += u32::from(p.event.duration);
            }
            n
        });
    });
    let mut receiver = DtmfReceiver::default();
    let now = Instant::now();
    let mut seq = 0u16;
    let mut ts = 0u32;
    group.bench_function("receiver_packet", |b| {
        b.iter(|| {
            seq = seq.wrapping_add(1);
            ts = ts.wrapping_add(1600);
            let _ = receiver.handle_payload(now, seq, ts, black_box(&payload));
            while let Some(e) = receiver.poll_event() {
                black_box(e);
            }
        });
    });
    group.finish();
}

fn wav_benches(c: &mut Criterion) {
    let spec = WavSpec {
        format: WavFormat::Mulaw,
        channels: 1,
        sample_rate: 8_000,
    };
    let mut w = WavWriter::create(std::io::Cursor::new(Vec::new()), spec).expect("valid spec");
    w.write_encoded(&[0xFF; 160]).expect("in-memory write");
    let bytes = w.finalize().expect("in-memory write").into_inner();
    let mut group = c.benchmark_group("wav");
    group.bench_function("parse_header", |b| {
        b.iter(|| WavReader::parse(black_box(&bytes)).map(|f| f.info.frames));
    });
    group.finish();
}

criterion_group!(
    benches,
    dtmf_benches,
    tone_benches,
    vad_benches,
    telephone_event_benches,
    wav_benches
);
criterion_main!(benches);
