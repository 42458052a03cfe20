//! One 20 ms tick of a [`MediaCall`] (`switchboard-proto`): every talking member's RTP packet
//! pushed with `push_rtp`, then `tick`, whose output packets are counted. Everything a media
//! worker does per frame except the sockets: jitter buffer, decode, resampling, voice
//! activity, mixing, encode, packetisation.
//!
//! - `three_party/pcmu`: three PCMU legs with `telephone-event`, everyone hears everyone,
//!   everyone talks; `three_party/pcmu_inband_dtmf`: the same without `telephone-event`, so
//!   every leg's audio also goes through the in-band DTMF detector.
//! - `barge/pcmu_pcmu_pcma`: customer and agent PCMU, supervisor PCMA, barge rows (each
//!   hears the two others), all three talk.
//! - `transcode/*`: two legs with different codecs hearing each other, both talking: PCMU →
//!   PCMA, PCMU ↔ Opus (the engine's default Opus settings: complexity 5, 32 kbit/s, FEC; the
//!   call mixes at 16 kHz), G.722 ↔ PCMU.
//! - `room/*`: PCMU rooms where everyone hears everyone; three members talk (speech-like
//!   signal), the others send quiet background noise (G.711 without comfort noise sends
//!   all the time). `room/500_talkers_only` has only the three talkers sending.
//!
//! In the smoke test (`cargo test --benches`, without `--bench`) every room has
//! [`SMOKE_ROOM`] members, so that the unoptimised set-up stays short.
//!
//! Throughput is in members: criterion's `elem/s` is participant-frames per second, and the
//! time per iteration divided by the members is the cost of one participant-frame.
//!
//! The packets are encoded before the timed loop (one second per member, cycled); each
//! iteration only patches the sequence number and timestamp of the next packet. Every
//! scenario is checked before it is timed: each tick sends one packet to every member and
//! no talker's input counts a late or lost packet.
#![allow(missing_docs)]
// Benchmark set-up: a failure here is a broken benchmark, not a runtime condition.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use switchboard_codecs::codec::{CodecKind, CodecSpec, Encoder};
use switchboard_proto::media::{MediaCall, MediaCallConfig, MediaLegConfig};
use switchboard_proto::relay::LegId;
use switchboard_proto::rtp::{PayloadType, RtpHeaderWriter, RtpTimestamp, Ssrc};
use switchboard_proto::time::Micros;

/// Packets per member in the cycled stream (one second).
const FRAMES: usize = 50;

/// `telephone-event` payload type of the legs that negotiate it.
const EVENTS_PT: u8 = 101;

/// Samples in a 20 ms frame at `rate` Hz.
fn frame_len(rate: u32) -> usize {
    rate as usize / 50
}

/// One second of a speech-like signal at `rate`, starting `shift` frames in: 160 ms
/// syllables of harmonics on a gliding fundamental with 80 ms pauses, plus a little noise
/// (the signal of `codecs_voice`).
fn speech_like(rate: u32, shift: usize) -> Vec<i16> {
    let n = frame_len(rate) * FRAMES;
    let mut seed: u32 = 0x1234_5678;
    let signal: Vec<i16> = (0..n)
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
        .collect();
    let start = (shift % FRAMES) * frame_len(rate);
    signal[start..]
        .iter()
        .chain(&signal[..start])
        .copied()
        .collect()
}

/// One second of quiet background noise (about −60 dBFS) at `rate`.
fn background(rate: u32, seed: u32) -> Vec<i16> {
    let mut seed = seed | 1;
    (0..frame_len(rate) * FRAMES)
        .map(|_| {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 16) as i16 / 1024
        })
        .collect()
}

/// A member's RTP stream: one second of packets encoded up front, cycled with the sequence
/// number and timestamp patched in place.
struct Stream {
    leg: LegId,
    packets: Vec<Vec<u8>>,
    next: usize,
    seq: u16,
    ts: u32,
    ticks: u32,
}

impl Stream {
    fn new(leg: LegId, spec: &CodecSpec, signal: &[i16]) -> Self {
        let mut encoder = Encoder::new(spec, 20).expect("encoder");
        let n = spec.samples_per_frame(20);
        let pt = PayloadType::new(spec.payload_type).expect("payload type");
        let ssrc = Ssrc(0x5000_0000 ^ leg.to_raw());
        let mut payload = vec![0u8; 1500];
        let packets = signal
            .chunks_exact(n)
            .map(|pcm| {
                let len = encoder.encode(pcm, &mut payload).expect("encode");
                let mut buf = vec![0u8; 12 + len];
                let written = RtpHeaderWriter::new(pt, 0, RtpTimestamp(0), ssrc)
                    .write_packet(&payload[..len], &mut buf)
                    .expect("packet fits");
                buf.truncate(written);
                buf
            })
            .collect();
        Self {
            leg,
            packets,
            next: 0,
            seq: 1000u16.wrapping_add(leg.to_raw() as u16),
            ts: 0x1000_0000u32.wrapping_add(leg.to_raw()),
            ticks: spec.clock_ticks(20),
        }
    }

    /// The next packet.
    fn next_packet(&mut self) -> &[u8] {
        let p = &mut self.packets[self.next];
        p[2..4].copy_from_slice(&self.seq.to_be_bytes());
        p[4..8].copy_from_slice(&self.ts.to_be_bytes());
        self.next = (self.next + 1) % FRAMES;
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(self.ticks);
        p
    }
}

fn leg_config(kind: CodecKind, events: bool) -> MediaLegConfig {
    let spec = CodecSpec::new(kind);
    MediaLegConfig {
        recv: vec![spec],
        send: spec,
        recv_events: events.then_some(EVENTS_PT),
        send_events: events.then_some(EVENTS_PT),
        ptime_ms: 20,
    }
}

/// A media call and the streams of its sending members.
struct Scenario {
    call: MediaCall,
    streams: Vec<Stream>,
    /// Members whose inputs must see no loss (the talkers).
    talkers: Vec<LegId>,
    now: Micros,
    members: usize,
}

/// A member to add: its codec, whether it talks (speech) or sends background noise, or
/// sends nothing.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sends {
    Speech,
    Noise,
    Nothing,
}

impl Scenario {
    /// Members `1..=n` with the given codecs; `hears[i]` lists the members (1-based) member
    /// `i + 1` hears, `None`: everyone else.
    fn new(members: &[(CodecKind, Sends)], events: bool, hears: &[Option<Vec<u32>>]) -> Self {
        let config = MediaCallConfig {
            max_members: members.len().max(1),
            ..MediaCallConfig::default()
        };
        let mut call = MediaCall::new(config);
        let now = Micros::from_secs(10);
        let legs: Vec<LegId> = (1..=members.len() as u32).map(LegId::from_raw).collect();
        let mut streams = Vec::new();
        let mut talkers = Vec::new();
        for (i, (&(kind, sends), &leg)) in members.iter().zip(&legs).enumerate() {
            call.add_leg(now, leg, leg_config(kind, events), None)
                .expect("add leg");
            let spec = CodecSpec::new(kind);
            let rate = spec.audio_rate();
            match sends {
                Sends::Speech => {
                    streams.push(Stream::new(leg, &spec, &speech_like(rate, 17 * i)));
                    talkers.push(leg);
                }
                Sends::Noise => {
                    streams.push(Stream::new(leg, &spec, &background(rate, leg.to_raw())));
                }
                Sends::Nothing => {}
            }
        }
        for (i, &leg) in legs.iter().enumerate() {
            let row: Vec<LegId> = match hears.get(i).cloned().flatten() {
                Some(row) => row.into_iter().map(LegId::from_raw).collect(),
                None => legs.clone(),
            };
            call.set_hears(leg, &row).expect("hears row");
        }
        let mut s = Self {
            call,
            streams,
            talkers,
            now,
            members: members.len(),
        };
        s.check();
        s
    }

    /// One frame: every stream's next packet, then the tick. Returns packets and bytes sent.
    fn frame(&mut self) -> (u64, u64) {
        for stream in &mut self.streams {
            let leg = stream.leg;
            let _ = self.call.push_rtp(self.now, leg, stream.next_packet());
        }
        let (mut packets, mut bytes) = (0u64, 0u64);
        self.call.tick(self.now, &mut |_, data| {
            packets += 1;
            bytes += data.len() as u64;
        });
        // The worker drains events (voice activity) after every tick.
        while self.call.poll_event().is_some() {}
        self.now = Micros(self.now.0 + 20_000);
        (packets, bytes)
    }

    /// Plays a second to settle the jitter buffers, then checks a second of frames: a packet
    /// to every member each tick, no talker's packet late or lost.
    fn check(&mut self) {
        for _ in 0..FRAMES {
            self.frame();
        }
        let before: Vec<(u64, u64)> = self
            .talkers
            .iter()
            .map(|&l| {
                let s = self.call.input_stats(l).expect("member");
                (s.late, s.lost)
            })
            .collect();
        for _ in 0..FRAMES {
            let (packets, _) = self.frame();
            assert_eq!(packets, self.members as u64, "a packet to every member");
        }
        for (&leg, &(late, lost)) in self.talkers.iter().zip(&before) {
            let s = self.call.input_stats(leg).expect("member");
            assert_eq!(
                (s.late - late, s.lost - lost),
                (0, 0),
                "talker {leg:?} lost packets"
            );
        }
    }
}

/// Benchmarks one scenario, built (and checked) only when the benchmark is not filtered out.
fn bench_scenario(
    c: &mut Criterion,
    group: &str,
    name: &str,
    members: usize,
    build: impl Fn() -> Scenario,
) {
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(members as u64));
    let mut scenario: Option<Scenario> = None;
    g.bench_function(name, |b| {
        let s = scenario.get_or_insert_with(&build);
        b.iter(|| black_box(s.frame()));
    });
    g.finish();
}

fn three_party(c: &mut Criterion) {
    let members = [(CodecKind::Pcmu, Sends::Speech); 3];
    bench_scenario(c, "three_party", "pcmu", members.len(), || {
        Scenario::new(&members, true, &[])
    });
    bench_scenario(c, "three_party", "pcmu_inband_dtmf", members.len(), || {
        Scenario::new(&members, false, &[])
    });
}

fn barge(c: &mut Criterion) {
    // Customer 1, agent 2, supervisor 3; barge: the customer hears agent + supervisor, the
    // agent customer + supervisor, the supervisor customer + agent.
    let members = [
        (CodecKind::Pcmu, Sends::Speech),
        (CodecKind::Pcmu, Sends::Speech),
        (CodecKind::Pcma, Sends::Speech),
    ];
    let hears = [Some(vec![2, 3]), Some(vec![1, 3]), Some(vec![1, 2])];
    bench_scenario(c, "barge", "pcmu_pcmu_pcma", members.len(), || {
        Scenario::new(&members, true, &hears)
    });
}

fn transcode(c: &mut Criterion) {
    for (name, a, b) in [
        ("pcmu_pcma", CodecKind::Pcmu, CodecKind::Pcma),
        ("pcmu_opus", CodecKind::Pcmu, CodecKind::Opus),
        ("g722_pcmu", CodecKind::G722, CodecKind::Pcmu),
    ] {
        let members = [(a, Sends::Speech), (b, Sends::Speech)];
        bench_scenario(c, "transcode", name, members.len(), || {
            Scenario::new(&members, true, &[])
        });
    }
}

fn room_members(n: usize, others: Sends) -> Vec<(CodecKind, Sends)> {
    (0..n)
        .map(|i| {
            // Three talkers spread through the member list.
            let talker = i == 0 || i == n / 2 || i == n - 1;
            (CodecKind::Pcmu, if talker { Sends::Speech } else { others })
        })
        .collect()
}

/// Whether this is a real benchmark run (`cargo bench` passes `--bench`) rather than the
/// smoke test of `cargo test --benches`, which runs unoptimised code once per benchmark.
fn benching() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// Members of a room in the smoke test, whatever its name says: building a room costs
/// O(members³) in `set_hears`, seconds at 500 members without optimisation.
const SMOKE_ROOM: usize = 20;

fn room(c: &mut Criterion) {
    let full = benching();
    for (name, n, others) in [
        ("50", 50, Sends::Noise),
        ("500", 500, Sends::Noise),
        ("500_talkers_only", 500, Sends::Nothing),
    ] {
        let n = if full { n } else { n.min(SMOKE_ROOM) };
        bench_scenario(c, "room", name, n, || {
            Scenario::new(&room_members(n, others), true, &[])
        });
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
    targets = three_party, barge, transcode, room
}
criterion_main!(benches);
