//! The jitter buffer on its own: ordering, duplicates, late packets, streams, bounds,
//! adaptive delay; and a counting allocator showing that a leg input allocates nothing per
//! packet or frame once running.

#![allow(clippy::unwrap_used, clippy::expect_used)]
// A global allocator is an `unsafe impl` by definition: it counts allocations to check that
// the media path allocates nothing per packet or frame.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use proptest::prelude::*;
use switchboard_codecs::codec::{CodecKind, CodecSpec, Encoder};
use switchboard_proto::media::input::{InputConfig, LegInput};
use switchboard_proto::media::jitter::{
    JitterBuffer, JitterConfig, MAX_PAYLOAD, PacketInfo, PushOutcome,
};
use switchboard_proto::rtp::{PayloadType, RtpHeaderWriter, RtpPacket, RtpTimestamp, Ssrc};
use switchboard_proto::time::Micros;

thread_local! {
    /// Allocations made by this thread; const-initialised, so reading it never allocates.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

struct Counting;

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// `GlobalAlloc` contract is exactly `System`'s; the counter is a thread-local `Cell` touched
// without allocating.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: same layout as our caller gave, per `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: `ptr` was allocated by `System` through this wrapper with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` through this wrapper with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn info(ssrc: u32, seq: u16, ts: u32) -> PacketInfo {
    PacketInfo {
        ssrc,
        seq,
        timestamp: ts,
        marker: false,
        payload_type: 0,
        clock_rate: 8000,
        duration: 160,
    }
}

fn ms(v: u64) -> Micros {
    Micros::from_millis(v)
}

fn seqs(jb: &JitterBuffer) -> Vec<u64> {
    (0..jb.len()).map(|i| jb.get(i).unwrap().seq).collect()
}

#[test]
fn reordered_packets_come_out_in_order() {
    let mut jb = JitterBuffer::new(JitterConfig::default());
    for (k, seq) in [3u16, 1, 2, 5, 4, 6].into_iter().enumerate() {
        let out = jb.push(
            ms(1000 + k as u64),
            &info(1, seq, u32::from(seq) * 160),
            &[seq as u8],
        );
        assert_eq!(out, PushOutcome::Queued);
    }
    let s = seqs(&jb);
    assert!(s.windows(2).all(|w| w[1] == w[0] + 1), "{s:?}");
    let payloads: Vec<u8> = (0..jb.len())
        .map(|i| jb.get(i).unwrap().payload[0])
        .collect();
    assert_eq!(payloads, [1, 2, 3, 4, 5, 6]);
    assert_eq!(jb.stats().reordered, 3);
}

#[test]
fn duplicates_are_dropped_even_after_playout() {
    let mut jb = JitterBuffer::new(JitterConfig::default());
    assert_eq!(
        jb.push(ms(1000), &info(1, 10, 1600), &[1]),
        PushOutcome::Queued
    );
    assert_eq!(
        jb.push(ms(1001), &info(1, 10, 1600), &[1]),
        PushOutcome::Duplicate
    );
    jb.pop();
    assert_eq!(
        jb.push(ms(1002), &info(1, 10, 1600), &[1]),
        PushOutcome::Duplicate
    );
    assert_eq!(jb.stats().duplicates, 2);
    assert!(jb.is_empty());
}

#[test]
fn packets_before_the_playout_point_are_late() {
    let mut jb = JitterBuffer::new(JitterConfig::default());
    jb.push(ms(1000), &info(1, 1, 160), &[0]);
    jb.push(ms(1020), &info(1, 3, 480), &[0]);
    let base = jb.get(0).unwrap().timestamp;
    jb.pop();
    jb.set_playout(Some(base + 320));
    // Seq 2 (ts 320) arrives after the playout point passed it.
    assert_eq!(jb.push(ms(1030), &info(1, 2, 320), &[0]), PushOutcome::Late);
    assert_eq!(jb.stats().late, 1);
    assert_eq!(jb.len(), 1);
}

#[test]
fn ssrc_change_starts_a_new_stream() {
    let mut jb = JitterBuffer::new(JitterConfig::default());
    for i in 0..5u16 {
        jb.push(
            ms(1000 + 20 * u64::from(i)),
            &info(1, i, u32::from(i) * 160),
            &[0],
        );
    }
    let out = jb.push(ms(1100), &info(2, 40_000, 99), &[0]);
    assert_eq!(out, PushOutcome::Reset);
    assert_eq!(jb.len(), 1);
    assert_eq!(jb.stats().resets, 1);
    // The new stream carries on normally; a straggler of the old one is late.
    assert_eq!(
        jb.push(ms(1120), &info(2, 40_001, 259), &[0]),
        PushOutcome::Queued
    );
    assert_eq!(jb.push(ms(1125), &info(1, 5, 800), &[0]), PushOutcome::Late);
    assert_eq!(
        jb.push(ms(1140), &info(2, 40_002, 419), &[0]),
        PushOutcome::Queued
    );
    assert_eq!((jb.len(), jb.stats().resets), (3, 1));
    // Switching back later is a new stream again.
    assert_eq!(
        jb.push(ms(2200), &info(1, 50, 8000), &[0]),
        PushOutcome::Reset
    );
}

#[test]
fn jumps_start_a_new_stream_but_dtx_does_not() {
    let start = |jb: &mut JitterBuffer| {
        for i in 0..10u16 {
            jb.push(
                ms(1000 + 20 * u64::from(i)),
                &info(1, i, u32::from(i) * 160),
                &[0],
            );
        }
    };
    // DTX: two seconds of silence, sequence numbers consecutive, timestamp advanced by
    // the time that passed.
    let mut jb = JitterBuffer::new(JitterConfig::default());
    start(&mut jb);
    let out = jb.push(ms(3200), &info(1, 10, 160 * 10 + 8000 * 2), &[0]);
    assert_eq!(out, PushOutcome::Queued);
    // Timestamp jumps ten seconds ahead of the clock.
    let mut jb = JitterBuffer::new(JitterConfig::default());
    start(&mut jb);
    let out = jb.push(ms(1200), &info(1, 10, 160 * 10 + 80_000), &[0]);
    assert_eq!(out, PushOutcome::Reset);
    // Timestamp runs back while the sequence number runs on.
    let mut jb = JitterBuffer::new(JitterConfig::default());
    start(&mut jb);
    let out = jb.push(ms(1200), &info(1, 10, 0u32.wrapping_sub(80_000)), &[0]);
    assert_eq!(out, PushOutcome::Reset);
    // Sequence number jump.
    let mut jb = JitterBuffer::new(JitterConfig::default());
    start(&mut jb);
    let out = jb.push(ms(1200), &info(1, 10 + 5000, 1600), &[0]);
    assert_eq!(out, PushOutcome::Reset);
    // A packet a little out of order is none of these.
    let mut jb = JitterBuffer::new(JitterConfig::default());
    start(&mut jb);
    assert_eq!(
        jb.push(ms(1200), &info(1, 11, 1760), &[0]),
        PushOutcome::Queued
    );
    assert_eq!(
        jb.push(ms(1201), &info(1, 10, 1600), &[0]),
        PushOutcome::Queued
    );
    assert_eq!(jb.stats().resets, 0);
}

#[test]
fn sequence_and_timestamp_wrap() {
    let mut jb = JitterBuffer::new(JitterConfig::default());
    let ts0 = u32::MAX - 800;
    for k in 0..12u16 {
        let seq = 65_530u16.wrapping_add(k);
        let ts = ts0.wrapping_add(u32::from(k) * 160);
        let out = jb.push(ms(1000 + 20 * u64::from(k)), &info(5, seq, ts), &[0]);
        assert_eq!(out, PushOutcome::Queued, "{k}");
    }
    let s = seqs(&jb);
    assert!(s.windows(2).all(|w| w[1] == w[0] + 1), "{s:?}");
    let ts: Vec<i64> = (0..jb.len())
        .map(|i| jb.get(i).unwrap().timestamp)
        .collect();
    assert!(ts.windows(2).all(|w| w[1] == w[0] + 160), "{ts:?}");
}

#[test]
fn storage_is_bounded_under_a_flood() {
    let mut jb = JitterBuffer::new(JitterConfig {
        capacity: 50,
        ..JitterConfig::default()
    });
    let payload = [0u8; MAX_PAYLOAD];
    let mut rng = Rng(42);
    for i in 0..50_000u32 {
        let seq = rng.below(65_536) as u16;
        let ts = rng.next() as u32;
        let ssrc = (i % 3 == 0) as u32;
        let len = rng.below(MAX_PAYLOAD as u64 + 1) as usize;
        let _ = jb.push(Micros(u64::from(i)), &info(ssrc, seq, ts), &payload[..len]);
        assert!(jb.len() <= 50);
    }
    assert_eq!(
        jb.push(ms(60_000), &info(1, 1, 1), &[0; MAX_PAYLOAD + 1]),
        PushOutcome::TooLarge
    );
    // Capacity is clamped: zero holds one packet.
    let mut tiny = JitterBuffer::new(JitterConfig {
        capacity: 0,
        ..JitterConfig::default()
    });
    assert_eq!(
        tiny.push(ms(1), &info(1, 1, 160), &[0]),
        PushOutcome::Queued
    );
    assert_eq!(
        tiny.push(ms(1), &info(1, 2, 320), &[0]),
        PushOutcome::Overflow
    );
    assert_eq!(tiny.stats().overflows, 1);
}

/// Feeds 20 ms packets with `jitter(i)` ms of extra delay, ticking every 20 ms and
/// popping what is due; returns the target delay after each tick.
fn run_targets(count: u16, mut jitter: impl FnMut(u16) -> u64) -> Vec<u32> {
    let mut jb = JitterBuffer::new(JitterConfig::default());
    let mut arrivals: Vec<(u64, u16)> = (0..count)
        .map(|i| (1_000_000 + u64::from(i) * 20_000 + jitter(i) * 1000, i))
        .collect();
    arrivals.sort_unstable();
    let mut next = 0;
    let mut targets = Vec::new();
    for t in 0..u64::from(count) + 10 {
        let now = 1_000_000 + t * 20_000;
        while next < arrivals.len() && arrivals[next].0 <= now {
            let (at, i) = arrivals[next];
            jb.push(Micros(at), &info(1, i, u32::from(i) * 160), &[0]);
            next += 1;
        }
        jb.tick();
        if let Some(ideal) = jb.ideal_position(Micros(now)) {
            while jb.peek().is_some_and(|p| p.timestamp <= ideal) {
                jb.pop();
            }
            jb.set_playout(Some(ideal));
        }
        targets.push(jb.target_delay_ms());
    }
    targets
}

#[test]
fn target_delay_follows_jitter_up_at_once_and_down_slowly() {
    let mut rng = Rng(7);
    // 5 s clean, 5 s with up to 100 ms jitter, 10 s clean.
    let targets = run_targets(1000, |i| {
        if (250..500).contains(&i) {
            rng.below(100)
        } else {
            0
        }
    });
    assert_eq!(targets[240], 20);
    // Within half a second of the jitter starting the target has grown.
    assert!(targets[275] >= 60, "{:?}", &targets[250..280]);
    let peak = *targets[250..520].iter().max().unwrap();
    assert!((80..=110).contains(&peak), "{peak}");
    // It shrinks slowly: never by more than a millisecond per tick...
    assert!(targets.windows(2).all(|w| w[1] + 1 >= w[0]));
    // ...and is back at the minimum a few seconds later.
    assert_eq!(targets[800], 20, "{:?}", &targets[500..800]);
}

#[test]
fn target_delay_stays_within_bounds() {
    let mut rng = Rng(99);
    let targets = run_targets(500, |_| rng.below(2000));
    assert!(targets.iter().all(|&t| (20..=200).contains(&t)));
    assert_eq!(*targets.iter().max().unwrap(), 200);
}

/// RTP packets (arrival µs, bytes) of `codec` carrying a tone, 20 ms each, with loss,
/// duplicates, reordering and jitter.
fn impaired_stream(codec: &CodecSpec, seconds: usize, rng: &mut Rng) -> Vec<(u64, Vec<u8>)> {
    let mut enc = Encoder::new(codec, 20).unwrap();
    let rate = codec.audio_rate();
    let n = rate as usize / 50;
    let ticks = codec.clock_ticks(20);
    let mut out = Vec::new();
    for i in 0..seconds * 50 {
        let pcm: Vec<i16> = (0..n)
            .map(|k| {
                let t = (i * n + k) as f64 / f64::from(rate);
                (8000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()) as i16
            })
            .collect();
        let mut payload = vec![0u8; 1500];
        let len = enc.encode(&pcm, &mut payload).unwrap();
        if rng.below(100) < 3 {
            continue; // lost
        }
        let mut bytes = vec![0u8; 12 + len];
        RtpHeaderWriter::new(
            PayloadType::new(codec.payload_type).unwrap(),
            i as u16,
            RtpTimestamp((i as u32).wrapping_mul(ticks)),
            Ssrc(77),
        )
        .write_packet(&payload[..len], &mut bytes)
        .unwrap();
        let arrival = 1_000_000 + i as u64 * 20_000 + rng.below(50_000);
        if rng.below(100) < 2 {
            out.push((arrival + 7_000, bytes.clone()));
        }
        out.push((arrival, bytes));
    }
    out.sort_by_key(|(t, _)| *t);
    out
}

#[test]
fn leg_input_allocates_nothing_per_packet_or_frame() {
    let mut opus = CodecSpec::new(CodecKind::Opus);
    opus.fmtp.useinbandfec = Some(true);
    let cases = [
        (CodecSpec::new(CodecKind::Pcmu), 48_000),
        (CodecSpec::new(CodecKind::G722), 8000),
        (opus, 16_000),
    ];
    for (codec, mix_rate) in cases {
        let mut rng = Rng(mix_rate.into());
        let packets = impaired_stream(&codec, 12, &mut rng);
        let mut input = LegInput::new(InputConfig {
            codecs: vec![codec],
            mix_rate,
            jitter: JitterConfig::default(),
        })
        .unwrap();
        let mut frame = vec![0i16; input.frame_samples()];
        let mut next = 0;
        let mut counted_from = None;
        for tick in 0..12 * 50 + 20 {
            let now = 1_000_000 + tick * 20_000;
            if tick == 100 {
                counted_from = Some(allocations());
            }
            while next < packets.len() && packets[next].0 <= now {
                let pkt = RtpPacket::parse(&packets[next].1).unwrap();
                let _ = input.push(Micros(packets[next].0), &pkt);
                next += 1;
            }
            let _ = input.next_frame(Micros(now), &mut frame);
        }
        let made = allocations() - counted_from.unwrap();
        assert_eq!(
            made, 0,
            "{:?} at {mix_rate}: {made} allocations",
            codec.kind
        );
        let s = input.stats();
        assert!(s.lost > 0 && s.duplicates > 0 && s.reordered > 0, "{s:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn arbitrary_pushes_never_panic(
        capacity in 0usize..80,
        ops in prop::collection::vec(
            (any::<u64>(), any::<u32>(), any::<u16>(), any::<u32>(), any::<bool>(),
             prop::sample::select(vec![0u32, 1, 8000, 16_000, 48_000, u32::MAX]),
             0usize..1600, 0u8..6),
            0..300,
        ),
    ) {
        let mut jb = JitterBuffer::new(JitterConfig { capacity, ..JitterConfig::default() });
        let payload = vec![7u8; 1600];
        for (now, ssrc, seq, ts, marker, clock, len, op) in ops {
            let info = PacketInfo {
                ssrc: ssrc % 3,
                seq,
                timestamp: ts,
                marker,
                payload_type: 0,
                clock_rate: clock,
                duration: ts % 10_000,
            };
            let _ = jb.push(Micros(now), &info, &payload[..len]);
            match op {
                0 => jb.pop(),
                1 => jb.tick(),
                2 => jb.set_playout(jb.ideal_position(Micros(now))),
                3 => jb.rebase(),
                4 => jb.clear(),
                _ => {}
            }
            prop_assert!(jb.len() <= capacity.max(1));
            prop_assert!(jb.target_delay_ms() <= 200);
        }
    }
}
