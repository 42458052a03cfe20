//! One leg's decoded input: jitter, loss, reordering, streams, packet times, codecs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::f64::consts::PI;

use proptest::prelude::*;
use switchboard_codecs::codec::{CodecKind, CodecSpec, Encoder};
use switchboard_codecs::g711;
use switchboard_codecs::opus::{OpusConfig, OpusEncoder};
use switchboard_proto::media::input::{FrameKind, InputConfig, LegInput, PushOutcome};
use switchboard_proto::media::{JitterConfig, MediaError};
use switchboard_proto::rtp::{PayloadType, RtpHeaderWriter, RtpPacket, RtpTimestamp, Ssrc};
use switchboard_proto::time::Micros;

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

#[derive(Clone, Debug)]
struct Pkt {
    arrival_us: u64,
    ssrc: u32,
    seq: u16,
    ts: u32,
    marker: bool,
    pt: u8,
    payload: Vec<u8>,
}

impl Pkt {
    fn bytes(&self) -> Vec<u8> {
        let mut buf = vec![0u8; 12 + self.payload.len()];
        let n = RtpHeaderWriter::new(
            PayloadType::new(self.pt).unwrap(),
            self.seq,
            RtpTimestamp(self.ts),
            Ssrc(self.ssrc),
        )
        .marker(self.marker)
        .write_packet(&self.payload, &mut buf)
        .unwrap();
        buf.truncate(n);
        buf
    }
}

/// The result of a run: every frame with its kind.
struct Run {
    frames: Vec<(FrameKind, Vec<i16>)>,
    input: LegInput,
}

impl Run {
    fn samples(&self) -> Vec<i16> {
        self.frames
            .iter()
            .flat_map(|(_, f)| f.iter().copied())
            .collect()
    }
    fn count(&self, kind: FrameKind) -> usize {
        self.frames.iter().filter(|(k, _)| *k == kind).count()
    }
    /// Index of the first non-silent frame.
    fn first_audio(&self) -> usize {
        self.frames
            .iter()
            .position(|(k, _)| *k != FrameKind::Silence)
            .unwrap()
    }
}

/// Pushes `packets` (in order of arrival) and ticks every 20 ms, starting at `t0_us`, for
/// `ticks` ticks. A tick at time `t` first pushes every packet with arrival <= t.
fn drive(mut input: LegInput, mut packets: Vec<Pkt>, tick0_us: u64, ticks: usize) -> Run {
    packets.sort_by_key(|p| p.arrival_us);
    let mut frames = Vec::with_capacity(ticks);
    let mut next = 0;
    let n = input.frame_samples();
    for i in 0..ticks as u64 {
        let now = tick0_us + i * 20_000;
        while next < packets.len() && packets[next].arrival_us <= now {
            let bytes = packets[next].bytes();
            let pkt = RtpPacket::parse(&bytes).unwrap();
            let _ = input.push(Micros(packets[next].arrival_us), &pkt);
            next += 1;
        }
        let mut out = vec![i16::MIN; n];
        let kind = input.next_frame(Micros(now), &mut out);
        assert_eq!(out.len(), n);
        frames.push((kind, out));
    }
    Run { frames, input }
}

fn spec(kind: CodecKind) -> CodecSpec {
    CodecSpec::new(kind)
}

fn input(codecs: Vec<CodecSpec>, mix_rate: u32) -> LegInput {
    LegInput::new(InputConfig {
        codecs,
        mix_rate,
        jitter: JitterConfig::default(),
    })
    .unwrap()
}

fn sine(freq: f64, rate: u32, amplitude: f64, len: usize) -> Vec<i16> {
    (0..len)
        .map(|n| (amplitude * (2.0 * PI * freq * n as f64 / f64::from(rate)).sin()).round() as i16)
        .collect()
}

/// Speech-like test signal: two tones with a slow envelope.
fn voice(rate: u32, len: usize) -> Vec<i16> {
    (0..len)
        .map(|n| {
            let t = n as f64 / f64::from(rate);
            let env = 0.6 + 0.4 * (2.0 * PI * 3.0 * t).sin();
            let v = 6000.0 * (2.0 * PI * 220.0 * t).sin() + 3000.0 * (2.0 * PI * 660.0 * t).sin();
            (env * v).round() as i16
        })
        .collect()
}

/// PCMU packets of `ptime_ms` covering `codes`, sent every ptime from `start_us` with no
/// jitter; sequence numbers from `seq0`, timestamps from `ts0`.
fn pcmu_packets(codes: &[u8], ptime_ms: u32, start_us: u64, seq0: u16, ts0: u32) -> Vec<Pkt> {
    let per = (8 * ptime_ms) as usize;
    codes
        .chunks(per)
        .enumerate()
        .map(|(i, c)| Pkt {
            arrival_us: start_us + i as u64 * u64::from(ptime_ms) * 1000,
            ssrc: 0x1234,
            seq: seq0.wrapping_add(i as u16),
            ts: ts0.wrapping_add((i * per) as u32),
            marker: i == 0,
            pt: 0,
            payload: c.to_vec(),
        })
        .collect()
}

fn ulaw(pcm: &[i16]) -> Vec<u8> {
    let mut codes = vec![0u8; pcm.len()];
    g711::ulaw_encode_slice(pcm, &mut codes);
    codes
}

fn ulaw_decoded(codes: &[u8]) -> Vec<i16> {
    codes.iter().map(|&c| g711::ulaw_decode(c)).collect()
}

/// Asserts that `out` holds `expected` contiguously after leading silence, and returns
/// where it starts.
fn assert_contains_exactly(out: &[i16], expected: &[i16]) -> usize {
    let start = out.iter().position(|&v| v != 0).unwrap();
    // The expected signal may itself start with zeros.
    let lead = expected.iter().position(|&v| v != 0).unwrap();
    let start = start - lead;
    let len = expected.len().min(out.len() - start);
    assert!(len >= expected.len() - 8 * 200, "only {len} samples played");
    assert_eq!(&out[start..start + len], &expected[..len]);
    start
}

#[test]
fn pcmu_at_8k_is_bit_exact() {
    let pcm = voice(8000, 8000 * 3);
    let codes = ulaw(&pcm);
    let packets = pcmu_packets(&codes, 20, 1_000_000, 100, 5000);
    let run = drive(
        input(vec![spec(CodecKind::Pcmu)], 8000),
        packets,
        1_005_000,
        170,
    );
    let start = assert_contains_exactly(&run.samples(), &ulaw_decoded(&codes));
    assert_eq!(start % 160, 0, "frames align with packets");
    // Playout starts after the minimum delay.
    assert!(run.first_audio() <= 3, "{}", run.first_audio());
    let s = run.input.stats();
    assert_eq!((s.lost, s.late, s.concealed_frames, s.resets), (0, 0, 0, 0));
    assert_eq!(s.packets, 150);
    assert_eq!(run.count(FrameKind::Concealed), 0);
}

#[test]
fn packet_times_come_out_as_20ms_frames() {
    let pcm = voice(8000, 8000 * 3);
    let codes = ulaw(&pcm);
    let expected = ulaw_decoded(&codes);
    for ptime in [10, 20, 30, 40, 60] {
        let packets = pcmu_packets(&codes, ptime, 1_000_000, 7, 0);
        let run = drive(
            input(vec![spec(CodecKind::Pcmu)], 8000),
            packets,
            1_003_000,
            170,
        );
        assert_contains_exactly(&run.samples(), &expected);
        let s = run.input.stats();
        assert_eq!(
            (s.lost, s.late, s.concealed_frames),
            (0, 0, 0),
            "ptime {ptime}"
        );
        assert!(
            run.first_audio() <= 5,
            "ptime {ptime}: {}",
            run.first_audio()
        );
    }
}

#[test]
fn sequence_numbers_wrap() {
    let codes = ulaw(&voice(8000, 8000 * 2));
    let packets = pcmu_packets(&codes, 20, 1_000_000, 65_500, u32::MAX - 3000);
    let run = drive(
        input(vec![spec(CodecKind::Pcmu)], 8000),
        packets,
        1_005_000,
        110,
    );
    assert_contains_exactly(&run.samples(), &ulaw_decoded(&codes));
    let s = run.input.stats();
    assert_eq!((s.lost, s.late, s.resets, s.reordered), (0, 0, 0, 0));
}

#[test]
fn reordering_within_the_buffer_is_repaired() {
    let codes = ulaw(&voice(8000, 8000 * 3));
    let mut packets = pcmu_packets(&codes, 20, 1_000_000, 1, 0);
    // Swap neighbours: each even packet arrives 30 ms late, after the next one.
    for (i, p) in packets.iter_mut().enumerate().skip(10) {
        if i % 2 == 0 {
            p.arrival_us += 30_000;
        } else {
            p.arrival_us += 5_000;
        }
    }
    let run = drive(
        input(vec![spec(CodecKind::Pcmu)], 8000),
        packets,
        1_005_000,
        170,
    );
    let s = run.input.stats();
    assert!(s.reordered >= 60, "{s:?}");
    // The first reorderings may arrive late while the delay grows; afterwards nothing is
    // lost.
    assert!(s.late <= 3, "{s:?}");
    let out = run.samples();
    let expected = ulaw_decoded(&codes);
    // The last second matches the source exactly, at some offset.
    let tail = &expected[8000 * 3 - 8000 - 800..8000 * 3 - 800];
    assert!(
        out.windows(tail.len()).any(|w| w == tail),
        "last second not bit-exact"
    );
}

#[test]
fn duplicates_are_dropped() {
    let codes = ulaw(&voice(8000, 8000 * 2));
    let mut packets = pcmu_packets(&codes, 20, 1_000_000, 1, 0);
    let dups: Vec<Pkt> = packets
        .iter()
        .map(|p| Pkt {
            arrival_us: p.arrival_us + 3_000,
            ..p.clone()
        })
        .collect();
    packets.extend(dups);
    let run = drive(
        input(vec![spec(CodecKind::Pcmu)], 8000),
        packets,
        1_005_000,
        110,
    );
    assert_contains_exactly(&run.samples(), &ulaw_decoded(&codes));
    let s = run.input.stats();
    assert_eq!(s.duplicates, 100);
    assert_eq!((s.lost, s.concealed_frames), (0, 0));
}

#[test]
fn lost_pcmu_packet_is_concealed_with_a_fade() {
    let codes = ulaw(&sine(440.0, 8000, 8000.0, 8000 * 2));
    let mut packets = pcmu_packets(&codes, 20, 1_000_000, 1, 0);
    packets.remove(40);
    let run = drive(
        input(vec![spec(CodecKind::Pcmu)], 8000),
        packets,
        1_005_000,
        110,
    );
    let s = run.input.stats();
    assert_eq!(s.lost, 1);
    assert_eq!(s.concealed_frames, 1);
    let idx = run
        .frames
        .iter()
        .position(|(k, _)| *k == FrameKind::Concealed)
        .unwrap();
    // The concealed frame repeats the previous one at half amplitude.
    let prev = &run.frames[idx - 1].1;
    let conc = &run.frames[idx].1;
    for (a, b) in prev.iter().zip(conc) {
        assert_eq!(*b, a >> 1);
    }
    // Then the stream carries on in place.
    let expected = ulaw_decoded(&codes);
    let start = run.first_audio() * 160;
    let after = (idx + 1) * 160;
    assert_eq!(
        &run.samples()[after..after + 1600],
        &expected[after - start..after - start + 1600]
    );
}

#[test]
fn long_loss_fades_to_silence() {
    let codes = ulaw(&sine(440.0, 8000, 8000.0, 8000 * 2));
    let mut packets = pcmu_packets(&codes, 20, 1_000_000, 1, 0);
    packets.drain(40..48); // 160 ms
    // A delay long enough to hold the packet after the gap when the gap is played: loss,
    // not underflow.
    let input = LegInput::new(InputConfig {
        codecs: vec![spec(CodecKind::Pcmu)],
        mix_rate: 8000,
        jitter: JitterConfig {
            min_delay_ms: 200,
            ..JitterConfig::default()
        },
    })
    .unwrap();
    let run = drive(input, packets, 1_005_000, 110);
    let s = run.input.stats();
    assert_eq!(s.lost, 8);
    assert_eq!(s.concealed_frames, 4, "{s:?}");
    let kinds: Vec<FrameKind> = run.frames.iter().map(|(k, _)| *k).collect();
    let idx = kinds
        .iter()
        .position(|k| *k == FrameKind::Concealed)
        .unwrap();
    assert!(
        kinds[idx..idx + 4]
            .iter()
            .all(|k| *k == FrameKind::Concealed)
    );
    for f in &run.frames[idx + 4..idx + 8] {
        assert!(f.1.iter().all(|&v| v == 0));
    }
    assert_eq!(kinds[idx + 8], FrameKind::Audio);
}

#[test]
fn dtx_gap_is_silence_not_concealment() {
    let codes = ulaw(&voice(8000, 8000 * 3));
    let mut packets = pcmu_packets(&codes, 20, 1_000_000, 1, 0);
    // Packets 40..90 are not sent (one second of silence): sequence numbers run on, the
    // timestamp jumps, and the next talkspurt starts with the marker bit.
    packets.drain(40..90);
    for (i, p) in packets.iter_mut().enumerate().skip(40) {
        p.seq = 1 + i as u16;
        p.marker = i == 40;
    }
    let run = drive(
        input(vec![spec(CodecKind::Pcmu)], 8000),
        packets,
        1_005_000,
        170,
    );
    let s = run.input.stats();
    assert_eq!((s.lost, s.concealed_frames, s.resets), (0, 0, 0), "{s:?}");
    // A short gap without the marker bit, consecutive sequence numbers.
    let mut packets = pcmu_packets(&codes, 20, 1_000_000, 1, 0);
    packets.drain(40..45);
    for (i, p) in packets.iter_mut().enumerate().skip(40) {
        p.seq = 1 + i as u16;
        p.marker = false;
    }
    let run = drive(
        input(vec![spec(CodecKind::Pcmu)], 8000),
        packets,
        1_005_000,
        170,
    );
    let s = run.input.stats();
    assert_eq!((s.lost, s.concealed_frames, s.resets), (0, 0, 0), "{s:?}");
    let silent = run
        .frames
        .iter()
        .filter(|(k, f)| *k == FrameKind::Silence && f.iter().all(|&v| v == 0))
        .count();
    assert!(silent >= 5 + run.first_audio(), "{silent}");
}

#[test]
fn ssrc_change_resets_without_a_long_gap() {
    let codes = ulaw(&voice(8000, 8000 * 3));
    let mut packets = pcmu_packets(&codes, 20, 1_000_000, 1, 0);
    for p in packets.iter_mut().skip(60) {
        p.ssrc = 0x9999;
        p.seq = p.seq.wrapping_add(30_000);
        p.ts = p.ts.wrapping_add(123_456_789);
    }
    let run = drive(
        input(vec![spec(CodecKind::Pcmu)], 8000),
        packets,
        1_005_000,
        170,
    );
    let s = run.input.stats();
    assert_eq!(s.resets, 1);
    assert_eq!(s.lost, 0);
    assert_gap_at_most(&run, 3);
}

#[test]
fn timestamp_jump_resets_without_a_long_gap() {
    let codes = ulaw(&voice(8000, 8000 * 3));
    for jump in [8000 * 10, 0u32.wrapping_sub(8000 * 10)] {
        let mut packets = pcmu_packets(&codes, 20, 1_000_000, 1, 0);
        for p in packets.iter_mut().skip(60) {
            p.ts = p.ts.wrapping_add(jump);
        }
        let run = drive(
            input(vec![spec(CodecKind::Pcmu)], 8000),
            packets,
            1_005_000,
            170,
        );
        let s = run.input.stats();
        assert_eq!(s.resets, 1, "jump {jump}: {s:?}");
        assert_gap_at_most(&run, 3);
    }
}

#[test]
fn sequence_jump_resets() {
    let codes = ulaw(&voice(8000, 8000 * 3));
    let mut packets = pcmu_packets(&codes, 20, 1_000_000, 1, 0);
    for p in packets.iter_mut().skip(60) {
        p.seq = p.seq.wrapping_add(20_000);
    }
    let run = drive(
        input(vec![spec(CodecKind::Pcmu)], 8000),
        packets,
        1_005_000,
        170,
    );
    assert_eq!(run.input.stats().resets, 1);
    assert_gap_at_most(&run, 3);
}

/// After the first audio, at most `frames` non-audio frames in a row before the end of the
/// stream.
fn assert_gap_at_most(run: &Run, frames: usize) {
    let first = run.first_audio();
    let last = run
        .frames
        .iter()
        .rposition(|(k, _)| *k == FrameKind::Audio)
        .unwrap();
    let mut gap = 0;
    for (k, _) in &run.frames[first..=last] {
        if *k == FrameKind::Audio {
            gap = 0;
        } else {
            gap += 1;
            assert!(gap <= frames, "gap of {gap} frames");
        }
    }
}

#[test]
fn recovers_after_an_outage_burst() {
    // Two seconds of packets are held up by the network and arrive in one burst, then the
    // stream carries on in time.
    let codes = ulaw(&voice(8000, 8000 * 8));
    let mut packets = pcmu_packets(&codes, 20, 1_000_000, 1, 0);
    for p in packets.iter_mut().skip(100).take(100) {
        p.arrival_us = 1_000_000 + 200 * 20_000 + 500;
    }
    let run = drive(
        input(vec![spec(CodecKind::Pcmu)], 8000),
        packets,
        1_005_000,
        420,
    );
    let s = run.input.stats();
    assert!(s.resets <= 1, "{s:?}");
    // From half a second after the burst on, every frame is audio again.
    let kinds: Vec<FrameKind> = run.frames.iter().map(|(k, _)| *k).collect();
    assert!(
        kinds[225..400].iter().all(|k| *k == FrameKind::Audio),
        "{:?} {s:?}",
        &kinds[195..260]
    );
    // The delay ends up low again: the last packet plays soon after it arrives.
    let last_audio = kinds.iter().rposition(|k| *k == FrameKind::Audio).unwrap();
    assert!(last_audio <= 400 + 12, "{last_audio} {s:?}");
}

#[test]
fn delay_adapts_up_under_jitter_and_back_down() {
    let codes = ulaw(&voice(8000, 8000 * 30));
    let mut packets = pcmu_packets(&codes, 20, 1_000_000, 1, 0);
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    // Seconds 5..15: up to 80 ms of random delay.
    for p in packets.iter_mut().skip(250).take(500) {
        p.arrival_us += rng.below(80_000);
    }
    let input = input(vec![spec(CodecKind::Pcmu)], 8000);
    let mut packets_sorted = packets.clone();
    packets_sorted.sort_by_key(|p| p.arrival_us);
    // Drive in three stages to look at the target delay along the way.
    let mut run = drive(input, packets_sorted.clone(), 1_005_000, 0);
    let mut targets = Vec::new();
    let mut depths = Vec::new();
    let mut frames = Vec::new();
    let mut next = 0;
    for i in 0..1550u64 {
        let now = 1_005_000 + i * 20_000;
        while next < packets_sorted.len() && packets_sorted[next].arrival_us <= now {
            let bytes = packets_sorted[next].bytes();
            let _ = run.input.push(
                Micros(packets_sorted[next].arrival_us),
                &RtpPacket::parse(&bytes).unwrap(),
            );
            next += 1;
        }
        let mut out = vec![0i16; 160];
        frames.push(run.input.next_frame(Micros(now), &mut out));
        targets.push(run.input.stats().target_delay_ms);
        depths.push(run.input.stats().depth_ms);
    }
    assert_eq!(targets[200], 20);
    let peak = *targets[300..800].iter().max().unwrap();
    assert!(peak >= 60, "target under jitter: {peak}");
    // Late packets: only while the delay grows.
    let s = run.input.stats().clone();
    assert!(s.late <= 15, "{s:?}");
    // Concealment stays rare.
    let concealed = frames[250..800]
        .iter()
        .filter(|k| **k == FrameKind::Concealed)
        .count();
    assert!(concealed <= 15, "{concealed} concealed, {s:?}");
    // Ten seconds after the jitter stopped, the target is back at the minimum and the
    // buffer has drained to it.
    assert_eq!(targets[1400], 20, "{:?}", &targets[1300..1400]);
    let depth = depths[1350..1400].iter().max().unwrap();
    assert!(*depth <= 40, "{depth}");
}

#[test]
fn bounded_under_a_flood() {
    let mut input = LegInput::new(InputConfig {
        codecs: vec![spec(CodecKind::Pcmu)],
        mix_rate: 8000,
        jitter: JitterConfig {
            capacity: 50,
            ..JitterConfig::default()
        },
    })
    .unwrap();
    let payload = vec![0x55u8; 160];
    let mut out = vec![0i16; 160];
    let mut outcomes = [0usize; 3];
    for i in 0..20_000u32 {
        let p = Pkt {
            arrival_us: 1_000_000 + u64::from(i),
            ssrc: 1,
            seq: i as u16,
            ts: i * 160,
            marker: false,
            pt: 0,
            payload: payload.clone(),
        };
        let bytes = p.bytes();
        match input.push(Micros(p.arrival_us), &RtpPacket::parse(&bytes).unwrap()) {
            PushOutcome::Queued => outcomes[0] += 1,
            PushOutcome::Overflow => outcomes[1] += 1,
            _ => outcomes[2] += 1,
        }
        assert!(input.jitter().len() <= 50);
        if i % 100 == 0 {
            input.next_frame(Micros(p.arrival_us), &mut out);
        }
    }
    assert!(outcomes[1] > 10_000, "{outcomes:?}");
    assert!(input.stats().overflows > 10_000);
}

#[test]
fn too_large_and_unknown_payload_types() {
    let mut input = input(vec![spec(CodecKind::Pcmu)], 8000);
    let mk = |pt: u8, len: usize| Pkt {
        arrival_us: 1000,
        ssrc: 1,
        seq: 1,
        ts: 0,
        marker: false,
        pt,
        payload: vec![0; len],
    };
    let big = mk(0, 1501).bytes();
    assert_eq!(
        input.push(Micros(1000), &RtpPacket::parse(&big).unwrap()),
        PushOutcome::TooLarge
    );
    let other = mk(8, 160).bytes();
    assert_eq!(
        input.push(Micros(1000), &RtpPacket::parse(&other).unwrap()),
        PushOutcome::UnknownPayloadType
    );
    let ok = mk(0, 1500).bytes();
    assert_eq!(
        input.push(Micros(1000), &RtpPacket::parse(&ok).unwrap()),
        PushOutcome::Queued
    );
    assert_eq!(input.stats().unknown_payload_type, 1);
}

#[test]
fn config_is_checked() {
    let bad_rate = LegInput::new(InputConfig {
        codecs: vec![spec(CodecKind::Pcmu)],
        mix_rate: 44_100,
        jitter: JitterConfig::default(),
    });
    assert!(matches!(bad_rate, Err(MediaError::Invalid(_))));
    let l16_44 = LegInput::new(InputConfig {
        codecs: vec![spec(CodecKind::L16).with_clock_rate(44_100)],
        mix_rate: 8000,
        jitter: JitterConfig::default(),
    });
    assert!(matches!(l16_44, Err(MediaError::Codec(_))));
    let pcmu_16k = LegInput::new(InputConfig {
        codecs: vec![spec(CodecKind::Pcmu).with_clock_rate(16_000)],
        mix_rate: 8000,
        jitter: JitterConfig::default(),
    });
    assert!(matches!(pcmu_16k, Err(MediaError::Codec(_))));
    // Telephone-event and CN are skipped.
    let mut ok = LegInput::new(InputConfig {
        codecs: vec![
            spec(CodecKind::TelephoneEvent),
            spec(CodecKind::ComfortNoise),
            spec(CodecKind::Pcmu),
        ],
        mix_rate: 16_000,
        jitter: JitterConfig::default(),
    })
    .unwrap();
    assert_eq!(ok.frame_samples(), 320);
    ok.set_mix_rate(48_000).unwrap();
    assert_eq!((ok.mix_rate(), ok.frame_samples()), (48_000, 960));
    assert!(ok.set_mix_rate(12_000).is_err());
    let bad_jitter = LegInput::new(InputConfig {
        codecs: vec![],
        mix_rate: 8000,
        jitter: JitterConfig {
            capacity: 0,
            ..JitterConfig::default()
        },
    });
    assert!(matches!(bad_jitter, Err(MediaError::Invalid(_))));
}

/// Power of `freq` in `x` (Goertzel).
fn goertzel(x: &[i16], freq: f64, rate: u32) -> f64 {
    let w = 2.0 * PI * freq / f64::from(rate);
    let c = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0, 0.0);
    for &v in x {
        let s = f64::from(v) + c * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    s1 * s1 + s2 * s2 - c * s1 * s2
}

fn g722_packets(pcm16k: &[i16], start_us: u64) -> Vec<Pkt> {
    let spec = spec(CodecKind::G722);
    let mut enc = Encoder::new(&spec, 20).unwrap();
    pcm16k
        .chunks_exact(320)
        .enumerate()
        .map(|(i, frame)| {
            let mut payload = vec![0u8; 160];
            let n = enc.encode(frame, &mut payload).unwrap();
            payload.truncate(n);
            Pkt {
                arrival_us: start_us + i as u64 * 20_000,
                ssrc: 7,
                seq: i as u16,
                // G.722: 8000 Hz RTP clock for 16 kHz audio.
                ts: (i * 160) as u32,
                marker: false,
                pt: 9,
                payload,
            }
        })
        .collect()
}

#[test]
fn g722_sine_keeps_its_frequency_at_every_mix_rate() {
    let pcm = sine(1000.0, 16_000, 10_000.0, 16_000 * 2);
    for rate in [16_000, 8000, 48_000] {
        let packets = g722_packets(&pcm, 1_000_000);
        let run = drive(
            input(vec![spec(CodecKind::G722)], rate),
            packets,
            1_005_000,
            110,
        );
        let s = run.input.stats();
        assert_eq!(
            (s.lost, s.concealed_frames, s.late),
            (0, 0, 0),
            "{rate}: {s:?}"
        );
        let first = run.first_audio();
        // One second of steady output, well inside the stream.
        let out: Vec<i16> = run.frames[first + 10..first + 60]
            .iter()
            .flat_map(|(_, f)| f.iter().copied())
            .collect();
        assert_eq!(out.len(), rate as usize);
        let on = goertzel(&out, 1000.0, rate);
        for off in [500.0, 800.0, 1250.0, 2000.0] {
            let p = goertzel(&out, off, rate);
            assert!(
                on > 1000.0 * p,
                "{rate} Hz mix: 1 kHz {on:e} vs {off} Hz {p:e}"
            );
        }
        // Level: about the input's (G.722 is close to transparent at 1 kHz).
        let rms =
            (out.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / out.len() as f64).sqrt();
        assert!(
            (rms - 10_000.0 / 2f64.sqrt()).abs() < 1500.0,
            "{rate}: rms {rms}"
        );
    }
}

fn opus_packets(pcm48k: &[i16], spec: &CodecSpec, ptime: u32, start_us: u64) -> Vec<Pkt> {
    let mut enc = Encoder::new(spec, ptime).unwrap();
    let per = 48 * ptime as usize;
    pcm48k
        .chunks_exact(per)
        .enumerate()
        .map(|(i, frame)| {
            let mut payload = vec![0u8; 1500];
            let n = enc.encode(frame, &mut payload).unwrap();
            payload.truncate(n);
            Pkt {
                arrival_us: start_us + i as u64 * u64::from(ptime) * 1000,
                ssrc: 11,
                seq: i as u16,
                ts: (i * per) as u32,
                marker: false,
                pt: spec.payload_type,
                payload,
            }
        })
        .collect()
}

fn opus_spec(fec: bool) -> CodecSpec {
    let mut s = spec(CodecKind::Opus);
    s.fmtp.useinbandfec = Some(fec);
    s
}

#[test]
fn opus_decodes_at_every_mix_rate_and_ptime() {
    let pcm = voice(48_000, 48_000 * 2);
    for rate in [8000, 16_000, 48_000] {
        for ptime in [10, 20, 40, 60] {
            let packets = opus_packets(&pcm, &opus_spec(true), ptime, 1_000_000);
            let run = drive(input(vec![opus_spec(true)], rate), packets, 1_005_000, 110);
            let s = run.input.stats();
            assert_eq!(
                (s.lost, s.concealed_frames, s.decode_errors),
                (0, 0, 0),
                "{rate} {ptime}: {s:?}"
            );
            let first = run.first_audio();
            assert!(first <= 5, "{rate} {ptime}: starts at {first}");
            let kinds: Vec<FrameKind> = run.frames.iter().map(|(k, _)| *k).collect();
            assert!(
                kinds[first..first + 90]
                    .iter()
                    .all(|k| *k == FrameKind::Audio),
                "{rate} {ptime}: {kinds:?}"
            );
            assert_eq!(run.frames[0].1.len(), rate as usize / 50);
        }
    }
}

/// Voiced speech-like test signal (syllables of a harmonic tone with a gliding pitch).
fn voiced(rate: u32, len: usize) -> Vec<i16> {
    (0..len)
        .map(|i| {
            let t = i as f64 / f64::from(rate);
            let syllable = (t / 0.24).floor();
            let within = t - syllable * 0.24;
            if within >= 0.16 {
                return 0;
            }
            let f0 = 110.0 + 15.0 * (syllable % 5.0) + 250.0 * within;
            let phase = 2.0 * PI * f0 * within;
            let env = (PI * within / 0.16).sin();
            let v: f64 = (1..10).map(|h| (phase * h as f64).sin() / h as f64).sum();
            (6000.0 * env * v) as i16
        })
        .collect()
}

/// Opus packets of 20 ms from a 16 kHz encoder (48 kHz RTP clock).
fn opus_speech_packets(fec: bool, count: usize) -> Vec<Pkt> {
    let mut enc = OpusEncoder::new(&OpusConfig {
        sample_rate: 16_000,
        bitrate: 32_000,
        fec,
        packet_loss_pct: if fec { 20 } else { 0 },
        ..OpusConfig::default()
    })
    .unwrap();
    let pcm = voiced(16_000, 320 * count);
    pcm.chunks_exact(320)
        .enumerate()
        .map(|(i, frame)| {
            let mut payload = vec![0u8; 1500];
            let n = enc.encode(frame, &mut payload).unwrap();
            payload.truncate(n);
            Pkt {
                arrival_us: 1_000_000 + i as u64 * 20_000,
                ssrc: 11,
                seq: i as u16,
                ts: (i * 960) as u32,
                marker: false,
                pt: 111,
                payload,
            }
        })
        .collect()
}

/// SNR of the frame holding a lost packet against a run without loss, with the stats.
fn opus_loss_snr(fec: bool) -> (f64, u64, u64) {
    let packets = opus_speech_packets(fec, 60);
    let clean = drive(
        input(vec![opus_spec(fec)], 16_000),
        packets.clone(),
        1_005_000,
        70,
    );
    let mut lossy_packets = packets;
    lossy_packets.remove(30);
    let lossy = drive(
        input(vec![opus_spec(fec)], 16_000),
        lossy_packets,
        1_005_000,
        70,
    );
    let s = lossy.input.stats();
    let idx = lossy
        .frames
        .iter()
        .position(|(k, _)| *k == FrameKind::Concealed)
        .unwrap();
    assert!(
        lossy.frames[idx].1.iter().any(|&v| v != 0),
        "concealment is not silent"
    );
    let reference = &clean.frames[idx].1;
    let sig: f64 = reference.iter().map(|&v| f64::from(v).powi(2)).sum();
    let noise: f64 = reference
        .iter()
        .zip(&lossy.frames[idx].1)
        .map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2))
        .sum();
    (
        10.0 * (sig / noise.max(1e-9)).log10(),
        s.lost,
        s.concealed_frames,
    )
}

#[test]
fn opus_loss_uses_fec_when_present_else_plc() {
    let (plc_snr, lost, concealed) = opus_loss_snr(false);
    assert_eq!((lost, concealed), (1, 1));
    let (fec_snr, lost, concealed) = opus_loss_snr(true);
    assert_eq!((lost, concealed), (1, 1));
    // The FEC copy is much closer to what was lost than concealment.
    assert!(
        fec_snr > plc_snr + 3.0,
        "FEC {fec_snr:.1} dB, PLC {plc_snr:.1} dB"
    );
    assert!(fec_snr > 5.0, "FEC {fec_snr:.1} dB");
}

#[test]
fn lossy_jittery_streams_keep_time() {
    // Every codec and packet time through 5 % loss and up to 40 ms of jitter: the talk
    // time that comes out matches what was sent, give or take the concealment.
    let voice48 = voice(48_000, 48_000 * 6);
    let voice16 = voice(16_000, 16_000 * 6);
    let codes = ulaw(&voice(8000, 8000 * 6));
    for rate in [8000, 16_000, 48_000] {
        for (name, ptime, packets, codec) in [
            (
                "opus20",
                20,
                opus_packets(&voice48, &opus_spec(true), 20, 1_000_000),
                opus_spec(true),
            ),
            (
                "opus60",
                60,
                opus_packets(&voice48, &opus_spec(false), 60, 1_000_000),
                opus_spec(false),
            ),
            (
                "pcmu30",
                30,
                pcmu_packets(&codes, 30, 1_000_000, 9, 77),
                spec(CodecKind::Pcmu),
            ),
            (
                "g722",
                20,
                g722_packets(&voice16, 1_000_000),
                spec(CodecKind::G722),
            ),
        ] {
            let mut rng = Rng(u64::from(rate) * 31 + ptime);
            let sent = packets.len();
            let mut kept: Vec<Pkt> = packets
                .into_iter()
                .filter(|_| rng.below(100) >= 5)
                .collect();
            for p in &mut kept {
                p.arrival_us += rng.below(40_000);
            }
            let run = drive(input(vec![codec], rate), kept, 1_005_000, 400);
            let s = run.input.stats();
            assert_eq!(s.decode_errors, 0, "{name} {rate}");
            assert!(
                s.lost >= 1 && s.lost as usize <= sent / 10,
                "{name} {rate}: {s:?}"
            );
            let talk = run.count(FrameKind::Audio) + run.count(FrameKind::Concealed);
            let expected = sent * ptime as usize / 20;
            assert!(
                talk + 10 >= expected && talk <= expected + 15,
                "{name} {rate}: {talk} frames of talk for {expected} sent, {s:?}"
            );
            assert!(
                run.frames
                    .iter()
                    .all(|(_, f)| f.len() == rate as usize / 50)
            );
        }
    }
}

#[test]
fn hostile_payloads_are_counted() {
    let mut l16 = spec(CodecKind::L16);
    l16.payload_type = 96;
    let cases: [(CodecSpec, Vec<u8>); 7] = [
        (opus_spec(true), vec![]),
        (opus_spec(true), vec![0xff; 3]),
        (opus_spec(true), vec![0x0b; 1500]),
        (l16, vec![1, 2, 3]),
        (spec(CodecKind::Pcmu), vec![]),
        (spec(CodecKind::G722), vec![0xaa; 1500]),
        (spec(CodecKind::Pcma), vec![0xd5; 1500]),
    ];
    let mut errors = 0;
    for (codec, payload) in cases {
        for rate in [8000, 16_000, 48_000] {
            let mut input = input(vec![codec], rate);
            let mut out = vec![0i16; rate as usize / 50];
            for i in 0..3u16 {
                let p = Pkt {
                    arrival_us: 1_000_000 + u64::from(i) * 20_000,
                    ssrc: 1,
                    seq: i,
                    ts: u32::from(i) * codec.clock_ticks(20),
                    marker: false,
                    pt: codec.payload_type,
                    payload: payload.clone(),
                };
                let bytes = p.bytes();
                input.push(Micros(p.arrival_us), &RtpPacket::parse(&bytes).unwrap());
            }
            for i in 0..40 {
                input.next_frame(Micros(1_000_000 + i * 20_000), &mut out);
            }
            errors += input.stats().decode_errors;
        }
    }
    assert!(errors >= 3 * 3, "{errors}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn arbitrary_packets_never_panic_and_frames_are_full(
        rate in prop::sample::select(vec![8000u32, 16_000, 48_000]),
        events in prop::collection::vec(
            (
                0u64..40_000,              // arrival step, µs
                prop::sample::select(vec![1u32, 2]),
                any::<u16>(),
                any::<u32>(),
                any::<bool>(),
                prop::sample::select(vec![0u8, 8, 9, 96, 111, 13, 50]),
                prop::collection::vec(any::<u8>(), 0..400),
                0u8..4,                    // ticks after this packet
            ),
            0..120,
        ),
        seq_mode in 0u8..3,
    ) {
        let mut l16 = spec(CodecKind::L16);
        l16.payload_type = 96;
        let codecs = vec![
            spec(CodecKind::Pcmu),
            spec(CodecKind::Pcma),
            spec(CodecKind::G722),
            opus_spec(true),
            l16,
        ];
        let mut input = input(codecs, rate);
        let n = input.frame_samples();
        let mut now = 1_000_000u64;
        let mut tick = now;
        let mut out = vec![0i16; n];
        for (i, (step, ssrc, seq, ts, marker, pt, payload, ticks)) in events.into_iter().enumerate() {
            now += step;
            // Mostly plausible streams, sometimes arbitrary numbers.
            let (seq, ts) = match seq_mode {
                0 => (seq, ts),
                1 => (i as u16, (i as u32).wrapping_mul(160)),
                _ => (65_530u16.wrapping_add(i as u16), (u32::MAX - 800).wrapping_add((i as u32).wrapping_mul(160))),
            };
            let p = Pkt { arrival_us: now, ssrc, seq, ts, marker, pt, payload };
            let bytes = p.bytes();
            let _ = input.push(Micros(now), &RtpPacket::parse(&bytes).unwrap());
            for _ in 0..ticks {
                tick = tick.max(now) + 20_000;
                out.fill(i16::MIN);
                let _ = input.next_frame(Micros(tick), &mut out);
                prop_assert_eq!(out.len(), n);
                prop_assert!(input.jitter().len() <= 50);
            }
        }
        for _ in 0..30 {
            tick += 20_000;
            let _ = input.next_frame(Micros(tick), &mut out);
        }
        let s = input.stats();
        prop_assert!(s.depth_ms <= 10_000);
    }
}
