//! Conversation analytics ([`ConversationAnalytics::process`], `switchboard-codecs`): the cost
//! of one two-party 20 ms frame (voice activity, pitch tracking and agitation for both
//! parties, talk and over-talk accounting), which the engine pays per call while
//! `analytics.start` runs.
//!
//! - `two_party/8000` and `two_party/16000`: caller and agent at the analytics' sample rate.
//!
//! Input: ten seconds of a speech-like signal per party (harmonic syllables with a gliding
//! pitch, 180 ms voiced then 100 ms quiet, the agent's pitch higher and its syllables offset
//! so that the parties talk, pause and over-talk), generated at set-up; no files. Each
//! iteration feeds the next frame of both parties, cycling through the ten seconds. Live
//! reports are off (`report_interval_ms` 0): only the per-frame work is timed.
#![allow(missing_docs)]
// Benchmark set-up: a failure here is a broken benchmark, not a runtime condition.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use switchboard_codecs::analytics::{AnalyticsConfig, ConversationAnalytics};

/// Seconds of input per party, cycled.
const SECONDS: usize = 10;

/// `SECONDS` of a speech-like signal at `rate`: syllables of a harmonic tone whose pitch
/// glides inside each syllable and steps between syllables (`base_hz` plus up to 60 Hz), with
/// a slow loudness drift; `offset_s` shifts the syllable pattern.
fn speech_like(rate: u32, base_hz: f64, offset_s: f64) -> Vec<i16> {
    let syllable_s = 0.28;
    let voiced_s = 0.18;
    let mut phase = 0.0f64;
    (0..rate as usize * SECONDS)
        .map(|i| {
            let t = i as f64 / f64::from(rate) + offset_s;
            let syllable = (t / syllable_s).floor();
            let within = t - syllable * syllable_s;
            // Every seventh syllable is a pause (a breath between phrases).
            if within >= voiced_s || syllable % 7.0 == 6.0 {
                return 0;
            }
            let f0 = base_hz + 12.0 * (syllable % 5.0) + 120.0 * within;
            phase += 2.0 * std::f64::consts::PI * f0 / f64::from(rate);
            let env = (std::f64::consts::PI * within / voiced_s).sin();
            let level = 5000.0 + 2500.0 * (t * 0.7).sin();
            let voiced: f64 = (1..8)
                .map(|h| (phase * f64::from(h)).sin() / f64::from(h))
                .sum();
            (level * env * voiced).clamp(-32_000.0, 32_000.0) as i16
        })
        .collect()
}

fn bench_two_party(c: &mut Criterion) {
    let mut group = c.benchmark_group("analytics/two_party");
    group.throughput(Throughput::Elements(1));
    for rate in [8000u32, 16000] {
        let caller = speech_like(rate, 120.0, 0.0);
        let agent = speech_like(rate, 190.0, 0.13);
        let frame = rate as usize / 50;
        let frames = caller.len() / frame;
        let mut config = AnalyticsConfig::new(rate);
        config.report_interval_ms = 0;
        let mut analytics = ConversationAnalytics::new(config).unwrap();
        // Check before timing: ten seconds through, both parties talked.
        for k in 0..frames {
            let span = k * frame..(k + 1) * frame;
            let _ = analytics.process(&[&caller[span.clone()], &agent[span]]);
        }
        let summary = analytics.summary();
        for p in summary.parties() {
            assert!(
                p.talk_ms > 0,
                "the input at {rate} Hz must read as talk: {summary:?}"
            );
        }
        let mut k = 0usize;
        group.bench_function(BenchmarkId::from_parameter(rate), |b| {
            b.iter(|| {
                let span = k * frame..(k + 1) * frame;
                k = (k + 1) % frames;
                black_box(analytics.process(black_box(&[&caller[span.clone()], &agent[span]])))
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench_two_party
}
criterion_main!(benches);
