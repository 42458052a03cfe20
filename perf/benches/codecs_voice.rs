//! Per-frame costs of the voice codecs: G.722, Opus (libopus), and the `codec`
//! abstraction's enum dispatch.
//!
//! Every benchmark processes one 20 ms frame (160 samples at 8 kHz, 320 at 16 kHz, 960 at
//! 48 kHz), cycling through one second of a speech-like signal so the adaptive codecs see
//! changing input. Buffers are allocated once, outside the timed loop.
#![allow(missing_docs)]
// Benchmark set-up: a failure here is a broken benchmark, not a runtime condition.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use switchboard_codecs::codec::{CodecKind, CodecSpec, Decoder, Encoder};
use switchboard_codecs::g722::{G722Decoder, G722Encoder};
use switchboard_codecs::opus::{MAX_PACKET_BYTES, OpusConfig, OpusDecoder, OpusEncoder};

/// Frames in the cycled test signal (one second).
const FRAMES: usize = 50;

/// Samples in a 20 ms frame at `rate` Hz.
fn frame_len(rate: u32) -> usize {
    rate as usize / 50
}

/// One second of a speech-like signal at `rate`: 160 ms syllables of harmonics on a gliding
/// fundamental with 80 ms pauses, plus a little noise.
fn speech_like(rate: u32) -> Vec<i16> {
    let mut seed: u32 = 0x1234_5678;
    (0..frame_len(rate) * FRAMES)
        .map(|i| {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let noise = f64::from((seed >> 16) as i16) / 256.0;
            let t = i as f64 / f64::from(rate);
            let syllable = (t / 0.24).floor();
            let within = t - syllable * 0.24;
            if within >= 0.16 {
                return noise as i16;
            }
            let f0 = 110.0 + 15.0 * (syllable % 5.0) + 250.0 * within;
            let phase = 2.0 * std::f64::consts::PI * f0 * within;
            let env = (std::f64::consts::PI * within / 0.16).sin();
            let voiced: f64 = (1..10)
                .map(|h| (phase * f64::from(h)).sin() / f64::from(h))
                .sum();
            (6000.0 * env * voiced + noise) as i16
        })
        .collect()
}

/// Cycles through the frames of `signal`.
struct Frames<'a> {
    signal: &'a [i16],
    len: usize,
    next: usize,
}

impl<'a> Frames<'a> {
    fn new(signal: &'a [i16], len: usize) -> Self {
        Self {
            signal,
            len,
            next: 0,
        }
    }

    fn next_frame(&mut self) -> &'a [i16] {
        let start = self.next * self.len;
        self.next = (self.next + 1) % (self.signal.len() / self.len);
        &self.signal[start..start + self.len]
    }
}

fn g722_benches(c: &mut Criterion) {
    let signal = speech_like(16_000);
    let n = frame_len(16_000);
    let mut group = c.benchmark_group("g722_20ms");

    let mut enc = G722Encoder::new();
    let mut payload = [0u8; 160];
    let mut frames = Frames::new(&signal, n);
    group.bench_function("encode_320", |b| {
        b.iter(|| enc.encode(black_box(frames.next_frame()), black_box(&mut payload)));
    });

    let mut enc = G722Encoder::new();
    let mut bitstream = vec![0u8; signal.len() / 2];
    enc.encode(&signal, &mut bitstream);
    let mut dec = G722Decoder::new();
    let mut pcm = [0i16; 320];
    let mut next = 0;
    group.bench_function("decode_160", |b| {
        b.iter(|| {
            let packet = &bitstream[next * 160..(next + 1) * 160];
            next = (next + 1) % FRAMES;
            dec.decode(black_box(packet), black_box(&mut pcm))
        });
    });
    group.finish();
}

fn opus_encode_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("opus_encode_20ms_32kbps");
    for rate in [8_000, 16_000, 48_000] {
        let signal = speech_like(rate);
        for complexity in [5, 10] {
            let mut enc = OpusEncoder::new(&OpusConfig {
                sample_rate: rate,
                bitrate: 32_000,
                complexity,
                ..OpusConfig::default()
            })
            .unwrap();
            let mut frames = Frames::new(&signal, frame_len(rate));
            let mut packet = [0u8; MAX_PACKET_BYTES];
            let name = format!("{}k_c{complexity}", rate / 1000);
            group.bench_function(name, |b| {
                b.iter(|| {
                    enc.encode(black_box(frames.next_frame()), black_box(&mut packet))
                        .unwrap()
                });
            });
        }
    }
    group.finish();
}

fn opus_decode_benches(c: &mut Criterion) {
    let rate = 48_000;
    let signal = speech_like(rate);
    let n = frame_len(rate);
    let mut enc = OpusEncoder::new(&OpusConfig {
        sample_rate: rate,
        bitrate: 32_000,
        ..OpusConfig::default()
    })
    .unwrap();
    let mut buf = [0u8; MAX_PACKET_BYTES];
    let packets: Vec<Vec<u8>> = signal
        .chunks_exact(n)
        .map(|frame| {
            let len = enc.encode(frame, &mut buf).unwrap();
            buf[..len].to_vec()
        })
        .collect();

    let mut group = c.benchmark_group("opus_decode_20ms_32kbps");
    let mut dec = OpusDecoder::new(rate).unwrap();
    let mut pcm = vec![0i16; n];
    let mut next = 0;
    group.bench_function("48k", |b| {
        b.iter(|| {
            let packet = &packets[next];
            next = (next + 1) % packets.len();
            dec.decode(black_box(packet), black_box(&mut pcm)).unwrap()
        });
    });
    group.bench_function("48k_conceal", |b| {
        b.iter(|| dec.decode_lost(black_box(&mut pcm)).unwrap());
    });
    group.finish();
}

fn dispatch_benches(c: &mut Criterion) {
    let spec = CodecSpec::new(CodecKind::Pcmu);
    let signal = speech_like(8_000);
    let mut enc = Encoder::new(&spec, 20).unwrap();
    let mut dec = Decoder::new(&spec).unwrap();
    let mut payload = vec![0u8; enc.max_payload_bytes()];
    let mut pcm = vec![0i16; enc.frame().samples];
    let mut frames = Frames::new(&signal, enc.frame().samples);

    let mut group = c.benchmark_group("codec_dispatch_pcmu_20ms");
    group.bench_function("encode_160", |b| {
        b.iter(|| {
            enc.encode(black_box(frames.next_frame()), black_box(&mut payload))
                .unwrap()
        });
    });
    group.bench_function("decode_160", |b| {
        b.iter(|| {
            dec.decode(black_box(&payload), black_box(&mut pcm))
                .unwrap()
        });
    });
    group.finish();
}

criterion_group!(
    benches,
    g722_benches,
    opus_encode_benches,
    opus_decode_benches,
    dispatch_benches
);
criterion_main!(benches);
