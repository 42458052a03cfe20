//! Hostile input: random, mutated, truncated and oversized datagrams into `rtp::RtpPacket::parse`,
//! RTCP iteration and `Relay::handle_packet`. Nothing panics, every drop is counted, and the call
//! keeps relaying afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod relay_netsim;

use std::net::SocketAddr;

use proptest::prelude::*;
use relay_netsim::{Rng, addr};
use switchboard_proto::relay::{Component, LegConfig, LegId, Relay, RelayConfig, RelayOutput};
use switchboard_proto::rtcp::{
    self, NtpTime, ReceiverReportWriter, ReportBlock, RtcpCompound, RtcpPacket, SenderReportWriter,
};
use switchboard_proto::rtp::{
    PayloadType, RtpHeaderWriter, RtpPacket, RtpPacketMut, RtpTimestamp, Ssrc,
};
use switchboard_proto::stats::{DropCounters, DropReason};
use switchboard_proto::time::Micros;

const A: &str = "10.1.0.1:4000";
const B: &str = "10.2.0.1:5000";

fn relay() -> (Relay, LegId, LegId) {
    let mut r = Relay::new(Micros::ZERO, RelayConfig::default());
    let mut a = LegConfig::new(addr("192.0.2.1:30000"));
    a.expected_rtp = Some(addr(A));
    let mut b = LegConfig::new(addr("192.0.2.1:30002"));
    b.expected_rtp = Some(addr(B));
    b.strict_source = true;
    let a = r.add_leg(a).unwrap();
    let b = r.add_leg(b).unwrap();
    r.set_peer(a, b).unwrap();
    (r, a, b)
}

fn valid_rtp(seq: u16) -> Vec<u8> {
    let mut buf = vec![0u8; 172];
    RtpHeaderWriter::new(
        PayloadType::PCMU,
        seq,
        RtpTimestamp(160 * u32::from(seq)),
        Ssrc(9),
    )
    .write(&mut buf)
    .unwrap();
    buf
}

/// RTP with two CSRCs, a one-word extension and 4 bytes of padding.
fn rich_rtp() -> Vec<u8> {
    let mut buf = vec![0u8; 20];
    RtpHeaderWriter::new(PayloadType::new(111).unwrap(), 1, RtpTimestamp(2), Ssrc(3))
        .csrcs(&[Ssrc(4), Ssrc(5)])
        .write(&mut buf)
        .unwrap();
    buf[0] |= 0x30;
    buf.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x10, 0xff, 0, 0]);
    buf.extend_from_slice(&[1, 2, 3, 4, 5, 0, 0, 0, 4]);
    assert!(RtpPacket::parse(&buf).is_ok());
    buf
}

/// SR with a block, RR with two blocks, SDES, BYE.
fn compound() -> Vec<u8> {
    let block = ReportBlock {
        ssrc: Ssrc(1),
        fraction_lost: 1,
        cumulative_lost: -1,
        extended_highest_seq: 2,
        jitter: 3,
        last_sr: 4,
        delay_since_last_sr: 5,
    };
    let mut buf = vec![0u8; 256];
    let mut n = SenderReportWriter {
        ssrc: Ssrc(7),
        ntp_time: NtpTime(1 << 40),
        rtp_timestamp: RtpTimestamp(0),
        packet_count: 1,
        octet_count: 2,
        report_blocks: &[block],
    }
    .write(&mut buf)
    .unwrap();
    n += ReceiverReportWriter {
        ssrc: Ssrc(7),
        report_blocks: &[block, block],
    }
    .write(&mut buf[n..])
    .unwrap();
    let tail = [
        0x81, 202, 0, 2, 0, 0, 0, 7, 1, 2, b'a', b'b', // SDES CNAME
        0x81, 203, 0, 1, 0, 0, 0, 7, // BYE
    ];
    buf[n..n + tail.len()].copy_from_slice(&tail);
    buf.truncate(n + tail.len());
    assert_eq!(RtcpCompound::parse(&buf).unwrap().packets().count(), 4);
    buf
}

/// Read everything a parser exposes, so lazy accessors run too.
fn exercise(data: &[u8]) {
    if let Ok(p) = RtpPacket::parse(data) {
        let _ = (
            p.payload(),
            p.csrcs().count(),
            p.extension(),
            p.padding_len(),
        );
        let _ = format!("{p:?}");
    }
    let mut copy = data.to_vec();
    if let Ok(mut p) = RtpPacketMut::parse(&mut copy) {
        p.set_sequence_number(1);
        p.set_ssrc(Ssrc(2));
        let _ = p.payload_mut().len();
    }
    for packet in rtcp::iter(data) {
        match packet {
            Ok(RtcpPacket::SenderReport(sr)) => {
                let _ = (sr.ntp_time(), sr.packet_count());
                for b in sr.report_blocks() {
                    let _ = b.round_trip_time(NtpTime(u64::MAX));
                }
            }
            Ok(RtcpPacket::ReceiverReport(rr)) => {
                let _ = rr.report_blocks().collect::<Vec<_>>();
            }
            _ => {}
        }
    }
    let _ = RtcpCompound::parse(data).map(|c| c.packets().count());
}

struct Tally {
    forwarded: u64,
    dropped: DropCounters,
}

impl Tally {
    fn new() -> Self {
        Tally {
            forwarded: 0,
            dropped: DropCounters::default(),
        }
    }

    fn feed(
        &mut self,
        r: &mut Relay,
        now: Micros,
        leg: LegId,
        component: Component,
        src: SocketAddr,
        data: &[u8],
    ) {
        match r.handle_packet(now, leg, component, src, data) {
            RelayOutput::Forward(t) => {
                assert!(!t.is_empty());
                self.forwarded += 1;
            }
            RelayOutput::Drop(reason) => self.dropped.record(reason),
            RelayOutput::Consume(_) => panic!("no leg of these scenarios is mixed"),
        }
    }

    /// Every drop the relay reported is in its counters, and nothing else is.
    fn check(&self, r: &Relay) {
        let mut counted = *r.drops();
        for leg in r.legs() {
            counted.add(leg.drops());
        }
        assert_eq!(counted, self.dropped);
    }
}

fn still_relays(r: &mut Relay, a: LegId, now: Micros) {
    let out = r.handle_packet(now, a, Component::Rtp, addr(A), &valid_rtp(5000));
    assert_eq!(out.transmits().len(), 1, "{out:?}");
}

#[test]
fn relay_hostile_random_datagrams_are_counted_and_harmless() {
    let (mut r, a, b) = relay();
    let mut rng = Rng::new(0xbad5eed);
    let mut tally = Tally::new();
    let sources = [
        addr(A),
        addr(B),
        addr("10.6.6.6:666"),
        addr("[2001:db8::1]:1"),
    ];
    let mut buf = vec![0u8; 2048];
    for i in 0..20_000u64 {
        let len = match rng.below(4) {
            0 => rng.below(16) as usize,
            1 => rng.below(64) as usize,
            _ => rng.below(2048) as usize,
        };
        let data = &mut buf[..len];
        rng.bytes(data);
        // Half of them look like RTP or RTCP version 2 so they get past the first check.
        if len > 0 && rng.chance(0.5) {
            data[0] = 0x80 | (data[0] & 0x3f);
        }
        let leg = match rng.below(5) {
            0 => b,
            1 => LegId::from_raw(rng.next_u64() as u32),
            _ => a,
        };
        let component = if rng.chance(0.5) {
            Component::Rtp
        } else {
            Component::Rtcp
        };
        let src = sources[rng.below(4) as usize];
        tally.feed(&mut r, Micros(i * 1000), leg, component, src, data);
        exercise(data);
    }
    tally.check(&r);
    assert!(tally.dropped.get(DropReason::UnknownLeg) > 0);
    assert!(
        tally.dropped.get(DropReason::RtpBadVersion)
            + tally.dropped.get(DropReason::RtcpBadVersion)
            > 0
    );
    still_relays(&mut r, a, Micros::from_secs(100));
}

#[test]
fn relay_hostile_truncated_and_oversized() {
    let (mut r, a, _) = relay();
    let mut tally = Tally::new();
    let mut now = 0;
    for packet in [valid_rtp(1), rich_rtp(), compound()] {
        for cut in 0..=packet.len() {
            let data = &packet[..cut];
            exercise(data);
            for component in [Component::Rtp, Component::Rtcp] {
                now += 1;
                tally.feed(&mut r, Micros(now), a, component, addr(A), data);
            }
        }
    }
    // Every proper prefix of the compound is refused as RTCP (lengths no longer add up), except
    // at packet boundaries.
    let c = compound();
    let boundaries = [0usize, 52, 52 + 56, 52 + 56 + 12, c.len()];
    for cut in 0..c.len() {
        assert_eq!(
            RtcpCompound::parse(&c[..cut]).is_ok(),
            boundaries.contains(&cut) && cut > 0,
            "cut at {cut}"
        );
    }
    // Oversized: a maximal UDP payload, random, then claiming every optional header part.
    let mut rng = Rng::new(7);
    let mut big = vec![0u8; 65_535];
    rng.bytes(&mut big);
    big[0] = 0x80;
    exercise(&big);
    tally.feed(&mut r, Micros(now + 1), a, Component::Rtp, addr(A), &big);
    big[0] = 0xbf; // padding, extension, 15 CSRCs
    big[72..76].copy_from_slice(&[0, 0, 0xff, 0xff]);
    exercise(&big);
    tally.feed(&mut r, Micros(now + 2), a, Component::Rtp, addr(A), &big);
    big[1] = 200; // an SR whose length field runs past the end
    big[2..4].copy_from_slice(&[0xff, 0xff]);
    exercise(&big);
    tally.feed(&mut r, Micros(now + 3), a, Component::Rtp, addr(A), &big);
    tally.feed(&mut r, Micros(now + 4), a, Component::Rtcp, addr(A), &big);
    tally.check(&r);
    assert!(tally.forwarded > 0);
    still_relays(&mut r, a, Micros(now + 5));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn relay_hostile_arbitrary_bytes(
        datagrams in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 0..400), any::<bool>(), 0u8..4),
            1..40,
        ),
    ) {
        let (mut r, a, b) = relay();
        let mut tally = Tally::new();
        for (i, (data, rtcp_port, who)) in datagrams.iter().enumerate() {
            exercise(data);
            let component = if *rtcp_port { Component::Rtcp } else { Component::Rtp };
            let (leg, src) = match who {
                0 => (a, addr(A)),
                1 => (b, addr(B)),
                2 => (b, addr("10.6.6.6:1")),
                _ => (LegId::from_raw(0xdead), addr(A)),
            };
            tally.feed(&mut r, Micros(i as u64), leg, component, src, data);
        }
        tally.check(&r);
        still_relays(&mut r, a, Micros(1_000_000));
    }

    #[test]
    fn relay_hostile_mutated_valid_packets(
        which in 0usize..3,
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let mut data = [valid_rtp(3), rich_rtp(), compound()][which].clone();
        for (at, value) in edits {
            let i = at % data.len();
            data[i] = value;
        }
        data.truncate(cut % (data.len() + 1) + 1);
        exercise(&data);
        let (mut r, a, _) = relay();
        let mut tally = Tally::new();
        tally.feed(&mut r, Micros(1), a, Component::Rtp, addr(A), &data);
        tally.feed(&mut r, Micros(2), a, Component::Rtcp, addr(A), &data);
        tally.check(&r);
        still_relays(&mut r, a, Micros(3));
    }
}
