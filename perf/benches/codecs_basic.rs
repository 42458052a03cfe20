//! Per-frame costs of the basic codecs: G.711 µ-law and A-law, L16, and the resampler.
//!
//! Every benchmark processes one 20 ms frame (160 samples at 8 kHz, 320 at 16 kHz, 960 at
//! 48 kHz) into buffers allocated once outside the timed loop.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use switchboard_codecs::{g711, l16, resample::Resampler};

/// Samples in a 20 ms frame at `rate` Hz.
fn frame_len(rate: u32) -> usize {
    rate as usize / 50
}

/// A deterministic speech-like test frame: two tones plus a little pseudo-random noise.
fn test_frame(rate: u32) -> Vec<i16> {
    let mut seed: u32 = 0x1234_5678;
    (0..frame_len(rate))
        .map(|n| {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let t = n as f64 / f64::from(rate);
            let tones = 9_000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()
                + 4_000.0 * (2.0 * std::f64::consts::PI * 1_330.0 * t).sin();
            let noise = f64::from((seed >> 16) as i16) / 16.0;
            (tones + noise) as i16
        })
        .collect()
}

fn g711_benches(c: &mut Criterion) {
    let pcm = test_frame(8_000);
    let mut codes = vec![0u8; pcm.len()];
    let mut decoded = vec![0i16; pcm.len()];

    let mut group = c.benchmark_group("g711_20ms");
    group.bench_function("ulaw_encode_160", |b| {
        b.iter(|| g711::ulaw_encode_slice(black_box(&pcm), black_box(&mut codes)));
    });
    g711::ulaw_encode_slice(&pcm, &mut codes);
    group.bench_function("ulaw_decode_160", |b| {
        b.iter(|| g711::ulaw_decode_slice(black_box(&codes), black_box(&mut decoded)));
    });
    group.bench_function("alaw_encode_160", |b| {
        b.iter(|| g711::alaw_encode_slice(black_box(&pcm), black_box(&mut codes)));
    });
    g711::alaw_encode_slice(&pcm, &mut codes);
    group.bench_function("alaw_decode_160", |b| {
        b.iter(|| g711::alaw_decode_slice(black_box(&codes), black_box(&mut decoded)));
    });
    group.finish();
}

fn l16_benches(c: &mut Criterion) {
    let pcm = test_frame(8_000);
    let mut bytes = vec![0u8; 2 * pcm.len()];
    let mut decoded = vec![0i16; pcm.len()];

    let mut group = c.benchmark_group("l16_20ms");
    group.bench_function("encode_160", |b| {
        b.iter(|| l16::encode(black_box(&pcm), black_box(&mut bytes)));
    });
    l16::encode(&pcm, &mut bytes);
    group.bench_function("decode_160", |b| {
        b.iter(|| l16::decode(black_box(&bytes), black_box(&mut decoded)));
    });
    group.finish();
}

fn resample_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("resample_20ms");
    for (from, to) in [
        (8_000, 48_000),
        (48_000, 8_000),
        (16_000, 48_000),
        (48_000, 16_000),
        (8_000, 16_000),
    ] {
        let input = test_frame(from);
        let mut out = vec![0i16; frame_len(to)];
        let Ok(mut resampler) = Resampler::new(from, to) else {
            panic!("{from} -> {to} is a supported conversion");
        };
        let name = format!("{}k_to_{}k", from / 1000, to / 1000);
        group.bench_function(name, |b| {
            b.iter(|| resampler.process(black_box(&input), black_box(&mut out)));
        });
    }
    group.finish();
}

criterion_group!(benches, g711_benches, l16_benches, resample_benches);
criterion_main!(benches);
