//! `MediaCall::push_rtp` and `MediaCall::tick` allocate nothing in steady state: a counting
//! global allocator wraps the system one; after warm-up, a three-party supervised call with
//! mixed codecs (PCMU, Opus, PCMA; the Opus encoder's own C allocations are not counted) and
//! a twelve-member room run for hundreds of frames without one allocation.

// The counting allocator (support/counting_alloc.rs) is an `unsafe impl` by definition;
// only the zero-allocation test binaries include it.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(unsafe_code)]

use switchboard_codecs::codec::{CodecKind, CodecSpec, Encoder};
use switchboard_codecs::tone::{ToneGenerator, ToneLevel};
use switchboard_proto::media::{MediaCall, MediaCallConfig, MediaLegConfig};
use switchboard_proto::relay::LegId;
use switchboard_proto::rtp::{PayloadType, RtpHeaderWriter, RtpTimestamp, Ssrc};
use switchboard_proto::time::Micros;

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::allocations;

fn cfg(kind: CodecKind) -> MediaLegConfig {
    MediaLegConfig {
        recv: vec![CodecSpec::new(kind)],
        send: CodecSpec::new(kind),
        recv_events: None,
        send_events: None,
        ptime_ms: 20,
    }
}

/// Pre-encoded packets of a tone, 50 frames, replayed with new headers.
struct Party {
    leg: LegId,
    spec: CodecSpec,
    payloads: Vec<Vec<u8>>,
    buf: Vec<u8>,
    seq: u16,
    ts: u32,
}

impl Party {
    fn new(leg: LegId, kind: CodecKind, hz: f32) -> Self {
        let spec = CodecSpec::new(kind);
        let mut enc = Encoder::new(&spec, 20).unwrap();
        let mut tone = ToneGenerator::sine(spec.audio_rate(), hz, ToneLevel::Dbm0(-12.0)).unwrap();
        let mut pcm = vec![0i16; spec.samples_per_frame(20)];
        let payloads = (0..50)
            .map(|_| {
                tone.fill(&mut pcm);
                let mut p = vec![0u8; enc.max_payload_bytes()];
                let n = enc.encode(&pcm, &mut p).unwrap();
                p.truncate(n);
                p
            })
            .collect();
        Party {
            leg,
            spec,
            payloads,
            buf: vec![0u8; 2048],
            seq: 0,
            ts: 0,
        }
    }

    fn send(&mut self, call: &mut MediaCall, now: Micros) {
        let payload = &self.payloads[usize::from(self.seq) % self.payloads.len()];
        let n = RtpHeaderWriter::new(
            PayloadType::new(self.spec.payload_type).unwrap(),
            self.seq,
            RtpTimestamp(self.ts),
            Ssrc(0x77 + self.leg.to_raw()),
        )
        .write_packet(payload, &mut self.buf)
        .unwrap();
        call.push_rtp(now, self.leg, &self.buf[..n]).unwrap();
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(self.spec.clock_ticks(20));
    }
}

fn run(call: &mut MediaCall, parties: &mut [Party], now: &mut Micros, frames: usize) -> u64 {
    let mut bytes = 0u64;
    for _ in 0..frames {
        for p in parties.iter_mut() {
            p.send(call, *now);
        }
        call.tick(*now, &mut |_, b| bytes += b.len() as u64);
        while call.poll_event().is_some() {}
        *now = Micros(now.0 + 20_000);
    }
    bytes
}

#[test]
fn supervised_call_does_not_allocate_per_frame() {
    let (c, a, s) = (LegId::from_raw(1), LegId::from_raw(2), LegId::from_raw(3));
    let mut call = MediaCall::new(MediaCallConfig::default());
    call.add_leg(Micros::ZERO, c, cfg(CodecKind::Pcmu), None)
        .unwrap();
    call.add_leg(Micros::ZERO, a, cfg(CodecKind::Opus), None)
        .unwrap();
    call.add_leg(Micros::ZERO, s, cfg(CodecKind::Pcma), None)
        .unwrap();
    call.set_hears(s, &[c, a]).unwrap();
    call.set_hears(a, &[c, s]).unwrap();
    call.set_hears(c, &[a]).unwrap();
    let mut parties = [
        Party::new(c, CodecKind::Pcmu, 500.0),
        Party::new(a, CodecKind::Opus, 1100.0),
        Party::new(s, CodecKind::Pcma, 1700.0),
    ];
    let mut now = Micros::from_secs(1);
    run(&mut call, &mut parties, &mut now, 100);
    let before = allocations();
    let bytes = run(&mut call, &mut parties, &mut now, 500);
    let after = allocations();
    assert!(bytes > 0);
    assert_eq!(after - before, 0, "allocations in 500 frames");
}

#[test]
fn large_room_does_not_allocate_per_frame() {
    let mut call = MediaCall::new(MediaCallConfig::default());
    let legs: Vec<LegId> = (1..=12).map(LegId::from_raw).collect();
    for &l in &legs {
        call.add_leg(Micros::ZERO, l, cfg(CodecKind::Pcmu), None)
            .unwrap();
    }
    for &l in &legs {
        call.set_hears(l, &legs).unwrap();
    }
    let mut parties: Vec<Party> = legs[..4]
        .iter()
        .enumerate()
        .map(|(i, &l)| Party::new(l, CodecKind::Pcmu, 400.0 + 300.0 * i as f32))
        .collect();
    let mut now = Micros::from_secs(1);
    run(&mut call, &mut parties, &mut now, 100);
    let before = allocations();
    run(&mut call, &mut parties, &mut now, 500);
    assert_eq!(allocations() - before, 0);
    assert_eq!(call.stats().talkers_mixed, 3);
}
