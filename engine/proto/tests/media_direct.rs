//! Direct transcoding of a two-party call (`MediaCall::push_rtp_with`): each packet is
//! decoded and re-encoded for the other leg at once, on the other leg's output stream; the
//! stream stays continuous when the call moves to tick mode (a prompt) and back; duplicates
//! are dropped; nothing is allocated per packet.

#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(unsafe_code)]

use switchboard_codecs::codec::{CodecKind, CodecSpec, Decoder, Encoder};
use switchboard_codecs::g711;
use switchboard_codecs::tone::{ToneGenerator, ToneLevel};
use switchboard_proto::media::play::ToneSpec;
use switchboard_proto::media::{
    MediaCall, MediaCallConfig, MediaLegConfig, PlayId, PlaySource, PlayTarget,
};
use switchboard_proto::relay::LegId;
use switchboard_proto::rtp::{PayloadType, RtpHeaderWriter, RtpPacket, RtpTimestamp, Ssrc};
use switchboard_proto::time::Micros;

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::allocations;

fn leg(n: u32) -> LegId {
    LegId::from_raw(n)
}

fn cfg(kind: CodecKind) -> MediaLegConfig {
    MediaLegConfig {
        recv: vec![CodecSpec::new(kind)],
        send: CodecSpec::new(kind),
        recv_events: None,
        send_events: None,
        ptime_ms: 20,
    }
}

fn two_party(a: CodecKind, b: CodecKind) -> MediaCall {
    let mut call = MediaCall::new(MediaCallConfig::default());
    call.add_leg(Micros::ZERO, leg(1), cfg(a), None).unwrap();
    call.add_leg(Micros::ZERO, leg(2), cfg(b), None).unwrap();
    call.set_hears(leg(1), &[leg(2)]).unwrap();
    call.set_hears(leg(2), &[leg(1)]).unwrap();
    call
}

fn packet(pt: u8, seq: u16, ts: u32, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 12 + payload.len()];
    RtpHeaderWriter::new(
        PayloadType::new(pt).unwrap(),
        seq,
        RtpTimestamp(ts),
        Ssrc(0x55),
    )
    .write_packet(payload, &mut buf)
    .unwrap();
    buf
}

#[derive(Debug, Clone)]
struct Out {
    leg: LegId,
    ssrc: u32,
    seq: u16,
    ts: u32,
    pt: u8,
    payload: Vec<u8>,
}

fn parse(leg: LegId, bytes: &[u8]) -> Out {
    let p = RtpPacket::parse(bytes).unwrap();
    Out {
        leg,
        ssrc: p.ssrc().0,
        seq: p.sequence_number(),
        ts: p.timestamp().0,
        pt: p.payload_type().get(),
        payload: p.payload().to_vec(),
    }
}

fn random_ulaw(rng: &mut u64) -> Vec<u8> {
    (0..160)
        .map(|_| {
            *rng ^= *rng << 13;
            *rng ^= *rng >> 7;
            *rng ^= *rng << 17;
            (*rng as u8) & 0xEF
        })
        .collect()
}

#[test]
fn pcmu_to_pcma_is_bit_exact_and_immediate() {
    let mut call = two_party(CodecKind::Pcmu, CodecKind::Pcma);
    let mut rng = 0x1234_5678_9abc_def0u64;
    let mut now = Micros::from_secs(1);
    let mut all = Vec::new();
    for i in 0..100u32 {
        let payload = random_ulaw(&mut rng);
        let data = packet(0, i as u16, i * 160, &payload);
        let mut got = Vec::new();
        call.push_rtp_with(now, leg(1), &data, &mut |l, b| got.push(parse(l, b)))
            .unwrap();
        assert_eq!(got.len(), 1, "one packet out per packet in, at once ({i})");
        let o = &got[0];
        assert_eq!(o.leg, leg(2));
        assert_eq!(o.pt, 8);
        let expect: Vec<u8> = payload
            .iter()
            .map(|&c| g711::alaw_encode(g711::ulaw_decode(c)))
            .collect();
        assert_eq!(o.payload, expect, "packet {i} bit-exact");
        all.push(o.clone());
        // The tick sends nothing in direct mode.
        let mut ticked = 0;
        call.tick(now, &mut |_, _| ticked += 1);
        assert_eq!(ticked, 0);
        now = Micros(now.0 + 20_000);
    }
    assert!(call.is_direct());
    for w in all.windows(2) {
        assert_eq!(w[1].ssrc, w[0].ssrc);
        assert_eq!(w[1].seq, w[0].seq.wrapping_add(1));
        assert_eq!(w[1].ts, w[0].ts.wrapping_add(160));
    }
    assert_eq!(call.stats().direct_packets, 100);
}

fn opus_payloads(hz: f32, n: usize, rate_spec: &CodecSpec) -> Vec<Vec<u8>> {
    let mut enc = Encoder::new(rate_spec, 20).unwrap();
    let mut tone = ToneGenerator::sine(rate_spec.audio_rate(), hz, ToneLevel::Dbm0(-12.0)).unwrap();
    let mut pcm = vec![0i16; rate_spec.samples_per_frame(20)];
    (0..n)
        .map(|_| {
            tone.fill(&mut pcm);
            let mut p = vec![0u8; enc.max_payload_bytes()];
            let k = enc.encode(&pcm, &mut p).unwrap();
            p.truncate(k);
            p
        })
        .collect()
}

fn energy(pcm: &[i16]) -> f64 {
    pcm.iter()
        .map(|&s| f64::from(s) * f64::from(s))
        .sum::<f64>()
        / pcm.len().max(1) as f64
}

#[test]
fn opus_both_ways() {
    let mut call = two_party(CodecKind::Pcmu, CodecKind::Opus);
    let pcmu = CodecSpec::new(CodecKind::Pcmu);
    let opus = CodecSpec::new(CodecKind::Opus);
    let ulaw = opus_payloads(1000.0, 50, &pcmu);
    let op = opus_payloads(700.0, 50, &opus);
    let mut now = Micros::from_secs(1);
    let (mut to_opus, mut to_pcmu) = (Vec::new(), Vec::new());
    for i in 0..50u32 {
        let a = packet(pcmu.payload_type, i as u16, i * 160, &ulaw[i as usize]);
        let b = packet(
            opus.payload_type,
            1000 + i as u16,
            5000 + i * 960,
            &op[i as usize],
        );
        let mut n = 0;
        call.push_rtp_with(now, leg(1), &a, &mut |l, bytes| {
            n += 1;
            to_opus.push(parse(l, bytes));
        })
        .unwrap();
        call.push_rtp_with(now, leg(2), &b, &mut |l, bytes| {
            n += 1;
            to_pcmu.push(parse(l, bytes));
        })
        .unwrap();
        assert_eq!(n, 2, "frame {i}");
        call.tick(now, &mut |_, _| panic!("tick output in direct mode"));
        now = Micros(now.0 + 20_000);
    }
    assert!(
        to_opus
            .iter()
            .all(|o| o.leg == leg(2) && o.pt == opus.payload_type)
    );
    assert!(to_pcmu.iter().all(|o| o.leg == leg(1) && o.pt == 0));
    for w in to_opus.windows(2) {
        assert_eq!(w[1].ts, w[0].ts.wrapping_add(960));
        assert_eq!(w[1].seq, w[0].seq.wrapping_add(1));
    }
    for w in to_pcmu.windows(2) {
        assert_eq!(w[1].ts, w[0].ts.wrapping_add(160));
    }
    // The audio made it: decode the last packets of each direction.
    let mut dec = Decoder::new(&opus).unwrap();
    let mut pcm = vec![0i16; 5760];
    let mut e = 0.0;
    for o in &to_opus {
        let n = dec.decode(&o.payload, &mut pcm).unwrap();
        e = energy(&pcm[..n]);
    }
    assert!(e > 1.0e5, "opus side hears the tone: {e}");
    let last = &to_pcmu[to_pcmu.len() - 1].payload;
    let pcm: Vec<i16> = last.iter().map(|&c| g711::ulaw_decode(c)).collect();
    assert!(energy(&pcm) > 1.0e5, "pcmu side hears the tone");
}

#[test]
fn streams_continue_across_direct_tick_direct() {
    let mut call = two_party(CodecKind::Pcmu, CodecKind::Pcma);
    let mut rng = 7u64;
    let mut now = Micros::from_secs(1);
    let mut to_b: Vec<Out> = Vec::new();
    let mut modes = Vec::new();
    for i in 0..150u32 {
        if i == 50 {
            call.play_start(
                PlayId(1),
                PlayTarget::Leg(leg(2)),
                PlaySource::Tone(ToneSpec::Sine {
                    hz: 800.0,
                    level_dbm0: -10.0,
                }),
                0,
                false,
            )
            .unwrap();
        }
        if i == 100 {
            assert_eq!(call.play_stop(Some(PlayId(1)), None), 1);
        }
        let data = packet(0, i as u16, i * 160, &random_ulaw(&mut rng));
        call.push_rtp_with(now, leg(1), &data, &mut |l, b| {
            if l == leg(2) {
                to_b.push(parse(l, b));
            }
        })
        .unwrap();
        call.tick(now, &mut |l, b| {
            if l == leg(2) {
                to_b.push(parse(l, b));
            }
        });
        modes.push(call.is_direct());
        now = Micros(now.0 + 20_000);
    }
    assert!(modes[..50].iter().all(|&d| d));
    assert!(modes[50..100].iter().all(|&d| !d));
    assert!(modes[101..].iter().all(|&d| d));
    assert!(to_b.len() >= 145, "{} packets", to_b.len());
    for w in to_b.windows(2) {
        assert_eq!(w[1].ssrc, w[0].ssrc, "same SSRC");
        assert_eq!(w[1].seq, w[0].seq.wrapping_add(1), "next sequence number");
        let adv = w[1].ts.wrapping_sub(w[0].ts);
        assert!(
            (160..=480).contains(&adv),
            "timestamp advances by a packet or a little more: {adv}"
        );
    }
}

#[test]
fn duplicates_and_stale_packets_are_dropped() {
    let mut call = two_party(CodecKind::Pcmu, CodecKind::Pcma);
    let mut rng = 9u64;
    let now = Micros::from_secs(1);
    let mut n = 0;
    let p5 = packet(0, 5, 800, &random_ulaw(&mut rng));
    let p6 = packet(0, 6, 960, &random_ulaw(&mut rng));
    let p4 = packet(0, 4, 640, &random_ulaw(&mut rng));
    call.push_rtp_with(now, leg(1), &p5, &mut |_, _| n += 1)
        .unwrap();
    call.push_rtp_with(now, leg(1), &p5, &mut |_, _| n += 1)
        .unwrap();
    call.push_rtp_with(now, leg(1), &p6, &mut |_, _| n += 1)
        .unwrap();
    call.push_rtp_with(now, leg(1), &p4, &mut |_, _| n += 1)
        .unwrap();
    call.push_rtp_with(now, leg(1), &p6, &mut |_, _| n += 1)
        .unwrap();
    assert_eq!(n, 2);
    assert_eq!(call.stats().direct_dropped, 3);
}

#[test]
fn direct_mode_does_not_allocate() {
    let mut call = two_party(CodecKind::Pcmu, CodecKind::Opus);
    let pcmu = CodecSpec::new(CodecKind::Pcmu);
    let opus = CodecSpec::new(CodecKind::Opus);
    let ulaw = opus_payloads(1000.0, 50, &pcmu);
    let op = opus_payloads(700.0, 50, &opus);
    let mut buf = vec![0u8; 2048];
    let mut now = Micros::from_secs(1);
    let mut bytes = 0u64;
    let mut run = |call: &mut MediaCall, from: u32, frames: u32, bytes: &mut u64| {
        for i in from..from + frames {
            let k = (i % 50) as usize;
            for (l, pt, seq, ts, p) in [
                (leg(1), 0u8, i as u16, i * 160, &ulaw[k]),
                (leg(2), opus.payload_type, i as u16, i * 960, &op[k]),
            ] {
                let n = RtpHeaderWriter::new(
                    PayloadType::new(pt).unwrap(),
                    seq,
                    RtpTimestamp(ts),
                    Ssrc(3),
                )
                .write_packet(p, &mut buf)
                .unwrap();
                call.push_rtp_with(now, l, &buf[..n], &mut |_, b| *bytes += b.len() as u64)
                    .unwrap();
            }
            call.tick(now, &mut |_, b| *bytes += b.len() as u64);
            while call.poll_event().is_some() {}
            now = Micros(now.0 + 20_000);
        }
    };
    run(&mut call, 0, 100, &mut bytes);
    let before = allocations();
    run(&mut call, 100, 500, &mut bytes);
    assert_eq!(allocations() - before, 0, "allocations in 500 frames");
    assert!(bytes > 0);
    assert!(call.is_direct());
}
