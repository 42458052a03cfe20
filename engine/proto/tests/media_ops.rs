//! Random sequences of media-call operations (members joining and leaving with any codec
//! mix, hears rows, mute, deaf, gain, prompts, digits, garbage and valid RTP, ticks) never
//! panic, and every tick sends well-formed RTP to members only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use proptest::prelude::*;
use switchboard_codecs::codec::{CodecKind, CodecSpec};
use switchboard_proto::media::play::ToneSpec;
use switchboard_proto::media::{
    MediaCall, MediaCallConfig, MediaLegConfig, OutputSeed, PlayId, PlaySource, PlayTarget,
};
use switchboard_proto::relay::LegId;
use switchboard_proto::rtp::{PayloadType, RtpHeaderWriter, RtpPacket, RtpTimestamp, Ssrc};
use switchboard_proto::time::Micros;

const KINDS: [CodecKind; 5] = [
    CodecKind::Pcmu,
    CodecKind::Pcma,
    CodecKind::G722,
    CodecKind::Opus,
    CodecKind::L16,
];

#[derive(Debug, Clone)]
enum Op {
    Add(u8, u8, u8, bool, bool),
    Remove(u8),
    Update(u8, u8, u8),
    Hears(u8, Vec<u8>),
    Mute(u8, bool),
    Deaf(u8, bool),
    Gain(u8, f32),
    Play(u8, u8, bool, u8),
    Stop(u8),
    Dtmf(u8, char, u32),
    Block(u8, bool),
    Rtp(u8, u8, u16, Vec<u8>),
    Garbage(u8, Vec<u8>),
    Tick(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..8, 0u8..5, 0u8..4, any::<bool>(), any::<bool>())
            .prop_map(|(l, k, p, e, s)| Op::Add(l, k, p, e, s)),
        (0u8..8).prop_map(Op::Remove),
        (0u8..8, 0u8..5, 0u8..4).prop_map(|(l, k, p)| Op::Update(l, k, p)),
        (0u8..8, prop::collection::vec(0u8..9, 0..6)).prop_map(|(l, v)| Op::Hears(l, v)),
        (0u8..8, any::<bool>()).prop_map(|(l, b)| Op::Mute(l, b)),
        (0u8..8, any::<bool>()).prop_map(|(l, b)| Op::Deaf(l, b)),
        (0u8..8, -60.0f32..40.0).prop_map(|(l, g)| Op::Gain(l, g)),
        (0u8..9, 0u8..6, any::<bool>(), 0u8..3).prop_map(|(l, s, d, r)| Op::Play(l, s, d, r)),
        (0u8..4).prop_map(Op::Stop),
        (
            0u8..8,
            prop::sample::select(vec!['1', '#', 'A', 'x', '!', 'd']),
            0u32..10_000
        )
            .prop_map(|(l, d, ms)| Op::Dtmf(l, d, ms)),
        (0u8..8, any::<bool>()).prop_map(|(l, b)| Op::Block(l, b)),
        (
            0u8..8,
            prop::sample::select(vec![0u8, 8, 9, 96, 101, 111, 127]),
            any::<u16>(),
            prop::collection::vec(any::<u8>(), 0..400)
        )
            .prop_map(|(l, pt, seq, p)| Op::Rtp(l, pt, seq, p)),
        (0u8..9, prop::collection::vec(any::<u8>(), 0..64)).prop_map(|(l, d)| Op::Garbage(l, d)),
        (1u8..4).prop_map(Op::Tick),
    ]
}

fn spec(k: u8) -> CodecSpec {
    let kind = KINDS[usize::from(k) % KINDS.len()];
    let s = CodecSpec::new(kind);
    match kind {
        CodecKind::L16 => s.with_payload_type(96).with_clock_rate(16000),
        CodecKind::Opus => s.with_payload_type(111),
        _ => s,
    }
}

fn config(k: u8, p: u8, events: bool) -> MediaLegConfig {
    MediaLegConfig {
        recv: vec![spec(k), spec(k.wrapping_add(1))],
        send: spec(k),
        recv_events: events.then_some(101),
        send_events: events.then_some(101),
        ptime_ms: [20, 40, 60, 30][usize::from(p) % 4],
    }
}

fn leg(l: u8) -> LegId {
    LegId::from_raw(u32::from(l) + 1)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn media_call_never_panics(ops in prop::collection::vec(op(), 1..80)) {
        let mut call = MediaCall::new(MediaCallConfig { large_room: 3, ..MediaCallConfig::default() });
        let mut now = Micros::from_secs(1);
        let mut buf = vec![0u8; 1500];
        for op in ops {
            match op {
                Op::Add(l, k, p, e, s) => {
                    let seed = s.then_some(OutputSeed {
                        ssrc: 5,
                        seq: u16::MAX,
                        timestamp: u32::MAX - 10,
                        clock_rate: 48_000,
                        at: Micros(now.0.saturating_sub(3_000_000)),
                    });
                    let _ = call.add_leg(now, leg(l), config(k, p, e), seed);
                }
                Op::Remove(l) => {
                    let _ = call.remove_leg(leg(l));
                }
                Op::Update(l, k, p) => {
                    let _ = call.update_leg(now, leg(l), config(k, p, k % 2 == 0));
                }
                Op::Hears(l, v) => {
                    let v: Vec<LegId> = v.into_iter().map(leg).collect();
                    let _ = call.set_hears(leg(l), &v);
                }
                Op::Mute(l, b) => {
                    let _ = call.set_mute(leg(l), b);
                }
                Op::Deaf(l, b) => {
                    let _ = call.set_deaf(leg(l), b);
                }
                Op::Gain(l, g) => {
                    let r = call.set_gain_db(leg(l), g);
                    prop_assert!(r.is_err() || (-40.0..=20.0).contains(&g));
                }
                Op::Play(l, s, d, r) => {
                    let target = if l == 8 { PlayTarget::Call } else { PlayTarget::Leg(leg(l)) };
                    let source = match s {
                        0 => PlaySource::Tone(ToneSpec::Ringback),
                        1 => PlaySource::Tone(ToneSpec::Busy),
                        2 => PlaySource::Tone(ToneSpec::Dtmf('5')),
                        3 => PlaySource::Tone(ToneSpec::Sine { hz: 440.0, level_dbm0: -12.0 }),
                        4 => PlaySource::Pcm { samples: Arc::from(vec![1000i16; 500]), rate: 8000 },
                        _ => PlaySource::Pcm { samples: Arc::from(vec![-5i16; 3]), rate: 48000 },
                    };
                    let _ = call.play_start(PlayId(u32::from(s)), target, source, u32::from(r), d);
                }
                Op::Stop(i) => {
                    let _ = call.play_stop(Some(PlayId(u32::from(i))), None);
                }
                Op::Dtmf(l, d, ms) => {
                    let _ = call.send_dtmf(leg(l), d, ms, -10);
                }
                Op::Block(l, b) => {
                    let _ = call.set_dtmf_blocked(leg(l), b);
                }
                Op::Rtp(l, pt, seq, payload) => {
                    if let Ok(n) = RtpHeaderWriter::new(
                        PayloadType::new(pt).unwrap(),
                        seq,
                        RtpTimestamp(u32::from(seq) * 160),
                        Ssrc(9),
                    )
                    .write_packet(&payload, &mut buf)
                    {
                        let _ = call.push_rtp(now, leg(l), &buf[..n]);
                    }
                }
                Op::Garbage(l, d) => {
                    let _ = call.push_rtp(now, leg(l), &d);
                }
                Op::Tick(n) => {
                    for _ in 0..n {
                        let members: Vec<LegId> = call.legs().collect();
                        let mut bad = false;
                        call.tick(now, &mut |l, b| {
                            bad |= !members.contains(&l) || RtpPacket::parse(b).is_err();
                        });
                        prop_assert!(!bad);
                        now = Micros(now.0 + 20_000);
                    }
                }
            }
            while call.poll_event().is_some() {}
            let _ = call.stats();
        }
    }
}
