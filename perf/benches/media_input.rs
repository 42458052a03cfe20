//! One leg's decoded input alone ([`LegInput`], `switchboard-proto`): per 20 ms frame, one
//! RTP packet parsed and pushed, then `next_frame` (jitter buffer playout, decode,
//! resampling to the mixing rate).
//!
//! - `pcmu/*`: PCMU at an 8 kHz mixing rate (a G.711-only call).
//! - `opus/*`: Opus 48 kHz RTP (32 kbit/s, complexity 5, FEC) decoded at a 16 kHz mixing rate
//!   (what a call mixing Opus with narrow- or wideband legs does).
//! - `in_order`: packets arrive in order, one per frame; `reordered`: every pair of packets is
//!   swapped (the odd packet arrives 20 ms early, the even one 20 ms late), which the jitter
//!   buffer absorbs after growing its delay.
//!
//! The packets are encoded before the timed loop (one second, cycled); each iteration patches
//! the sequence number and timestamp of one packet. Each case is checked before it is timed:
//! after a second of settling, a second of frames with every frame decoded audio and no packet
//! late or lost.
#![allow(missing_docs)]
// Benchmark set-up: a failure here is a broken benchmark, not a runtime condition.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use switchboard_codecs::codec::{CodecKind, CodecSpec, Encoder};
use switchboard_proto::media::input::FrameKind;
use switchboard_proto::media::{InputConfig, JitterConfig, LegInput};
use switchboard_proto::rtp::{PayloadType, RtpHeaderWriter, RtpPacket, RtpTimestamp, Ssrc};
use switchboard_proto::time::Micros;

/// Packets in the cycled stream (one second).
const FRAMES: usize = 50;

/// One second of a speech-like signal at `rate` (as in `media_mix`, without the noise).
fn speech_like(rate: u32) -> Vec<i16> {
    (0..rate as usize)
        .map(|i| {
            let t = i as f64 / f64::from(rate);
            let syllable = (t / 0.24).floor();
            let within = t - syllable * 0.24;
            if within >= 0.16 {
                return 0;
            }
            let f0 = 110.0 + 15.0 * (syllable % 5.0) + 250.0 * within;
            let phase = 2.0 * std::f64::consts::PI * f0 * within;
            let env = (std::f64::consts::PI * within / 0.16).sin();
            let voiced: f64 = (1..10)
                .map(|h| (phase * f64::from(h)).sin() / f64::from(h))
                .sum();
            (6000.0 * env * voiced) as i16
        })
        .collect()
}

/// A leg input fed one packet per frame.
struct Feed {
    input: LegInput,
    packets: Vec<Vec<u8>>,
    frame: Vec<i16>,
    /// Frames played.
    k: u64,
    reordered: bool,
    ticks: u32,
    now: Micros,
}

impl Feed {
    fn new(kind: CodecKind, mix_rate: u32, reordered: bool) -> Self {
        let spec = CodecSpec::new(kind);
        let input = LegInput::new(InputConfig {
            codecs: vec![spec],
            mix_rate,
            jitter: JitterConfig::default(),
        })
        .expect("input");
        let mut encoder = Encoder::new(&spec, 20).expect("encoder");
        let pt = PayloadType::new(spec.payload_type).expect("payload type");
        let mut payload = vec![0u8; 1500];
        let packets = speech_like(spec.audio_rate())
            .chunks_exact(spec.samples_per_frame(20))
            .map(|pcm| {
                let len = encoder.encode(pcm, &mut payload).expect("encode");
                let mut buf = vec![0u8; 12 + len];
                let n = RtpHeaderWriter::new(pt, 0, RtpTimestamp(0), Ssrc(0x1234))
                    .write_packet(&payload[..len], &mut buf)
                    .expect("packet fits");
                buf.truncate(n);
                buf
            })
            .collect();
        let mut feed = Self {
            input,
            packets,
            frame: vec![0; mix_rate as usize / 50],
            k: 0,
            reordered,
            ticks: spec.clock_ticks(20),
            now: Micros::from_secs(10),
        };
        feed.check();
        feed
    }

    /// One frame: the packet due now (in order or with pairs swapped), then `next_frame`.
    fn frame(&mut self) -> FrameKind {
        let n = if self.reordered { self.k ^ 1 } else { self.k };
        let p = &mut self.packets[(n % FRAMES as u64) as usize];
        // Truncation wraps the sequence number and timestamp like a long call does.
        p[2..4].copy_from_slice(&(n as u16).wrapping_add(7000).to_be_bytes());
        p[4..8].copy_from_slice(&(n as u32).wrapping_mul(self.ticks).to_be_bytes());
        let packet = RtpPacket::parse(p).expect("valid packet");
        self.input.push(self.now, &packet);
        let kind = self.input.next_frame(self.now, &mut self.frame);
        self.k += 1;
        self.now = Micros(self.now.0 + 20_000);
        kind
    }

    /// A second to settle, then a second of frames that are all decoded audio with no packet
    /// late or lost.
    fn check(&mut self) {
        for _ in 0..FRAMES {
            self.frame();
        }
        let (late, lost) = (self.input.stats().late, self.input.stats().lost);
        for _ in 0..FRAMES {
            assert_eq!(self.frame(), FrameKind::Audio, "every frame decoded");
        }
        let s = self.input.stats();
        assert_eq!((s.late - late, s.lost - lost), (0, 0), "no loss");
    }
}

fn bench_input(c: &mut Criterion) {
    for (group, kind, mix_rate) in [
        ("pcmu", CodecKind::Pcmu, 8000),
        ("opus", CodecKind::Opus, 16_000),
    ] {
        let mut g = c.benchmark_group(group);
        g.throughput(Throughput::Elements(1));
        for (name, reordered) in [("in_order", false), ("reordered", true)] {
            let mut feed: Option<Feed> = None;
            g.bench_function(name, |b| {
                let f = feed.get_or_insert_with(|| Feed::new(kind, mix_rate, reordered));
                b.iter(|| black_box(f.frame()));
            });
        }
        g.finish();
    }
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_input
}
criterion_main!(benches);
