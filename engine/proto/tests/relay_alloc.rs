//! `Relay::handle_packet` allocates nothing per packet: a counting global allocator wraps the
//! system one, and 10,000 calls after warm-up (RTP both ways, RTCP on both ports and muxed,
//! malformed, strict-source and unknown-leg drops) must not allocate once.

// The counting allocator (support/counting_alloc.rs) is an `unsafe impl` by definition;
// only the zero-allocation test binaries include it.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(unsafe_code)]

use std::net::SocketAddr;

use switchboard_proto::relay::{Component, LegConfig, LegId, Relay, RelayConfig};
use switchboard_proto::rtcp::{NtpTime, ReceiverReportWriter, ReportBlock, SenderReportWriter};
use switchboard_proto::rtp::{PayloadType, RtpHeaderWriter, RtpTimestamp, Ssrc};
use switchboard_proto::time::Micros;

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::allocations;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn rtp(buf: &mut [u8; 172], seq: u16, ssrc: u32) {
    RtpHeaderWriter::new(
        PayloadType::PCMU,
        seq,
        RtpTimestamp(u32::from(seq) * 160),
        Ssrc(ssrc),
    )
    .write(buf)
    .unwrap();
}

#[test]
fn relay_handle_packet_does_not_allocate() {
    let mut relay = Relay::new(Micros::ZERO, RelayConfig::default());
    let mut a_cfg = LegConfig::new(addr("192.0.2.1:30000"));
    a_cfg.expected_rtp = Some(addr("10.1.0.1:4000"));
    a_cfg.strict_source = true;
    let mut b_cfg = LegConfig::new(addr("192.0.2.1:30002"));
    b_cfg.rtcp_mux = true;
    let a = relay.add_leg(a_cfg).unwrap();
    let b = relay.add_leg(b_cfg).unwrap();
    relay.set_peer(a, b).unwrap();
    let mut l_cfg = LegConfig::new(addr("192.0.2.1:30004"));
    l_cfg.expected_rtp = Some(addr("10.3.0.1:7000"));
    let listener = relay.add_leg(l_cfg).unwrap();
    relay.add_forward(a, listener).unwrap();

    let (src_a, src_a_rtcp, src_b) = (
        addr("10.1.0.1:4000"),
        addr("10.1.0.1:4001"),
        addr("[2001:db8::2]:5000"),
    );
    let block = ReportBlock {
        ssrc: Ssrc(0xa),
        fraction_lost: 3,
        cumulative_lost: 1,
        extended_highest_seq: 100,
        jitter: 10,
        last_sr: 0x1234_0000,
        delay_since_last_sr: 0x100,
    };
    let mut sr = [0u8; 52];
    SenderReportWriter {
        ssrc: Ssrc(0xa),
        ntp_time: NtpTime(0x0000_1234_0000_0000),
        rtp_timestamp: RtpTimestamp(0),
        packet_count: 1,
        octet_count: 160,
        report_blocks: &[block],
    }
    .write(&mut sr)
    .unwrap();
    let mut rr = [0u8; 32];
    ReceiverReportWriter {
        ssrc: Ssrc(0xb),
        report_blocks: &[block],
    }
    .write(&mut rr)
    .unwrap();
    let mut pkt = [0u8; 172];
    let garbage = [0x80u8, 0x00, 0x01];

    let mut drive = |relay: &mut Relay, i: u32| -> usize {
        let now = Micros(u64::from(i) * 10_000);
        // i as u16 wraps the sequence number on purpose.
        let seq = i as u16;
        let out = match i % 8 {
            0 | 2 | 4 => {
                rtp(&mut pkt, seq, 0xa);
                relay.handle_packet(now, a, Component::Rtp, src_a, &pkt)
            }
            1 | 3 | 5 => {
                rtp(&mut pkt, seq, 0xb);
                relay.handle_packet(now, b, Component::Rtp, src_b, &pkt)
            }
            6 => match i % 32 {
                6 => relay.handle_packet(now, a, Component::Rtcp, src_a_rtcp, &sr),
                14 => relay.handle_packet(now, b, Component::Rtp, src_b, &rr),
                22 => relay.handle_packet(now, a, Component::Rtp, src_a, &garbage),
                _ => relay.handle_packet(now, a, Component::Rtp, addr("10.6.6.6:1"), &pkt),
            },
            _ => relay.handle_packet(now, LegId::from_raw(99), Component::Rtp, src_a, &pkt),
        };
        while relay.poll_event().is_some() {}
        let _ = relay.poll_timeout();
        out.transmits().len()
    };

    let mut warm = 0;
    for i in 0..1_000 {
        warm += drive(&mut relay, i);
    }
    assert!(warm > 0);

    let before = allocations();
    let mut sent = 0;
    for i in 1_000..11_000 {
        sent += drive(&mut relay, i);
    }
    let allocated = allocations() - before;
    assert_eq!(allocated, 0, "handle_packet allocated {allocated} times");
    // The counter is live: an allocation on this thread shows up.
    let boxed = std::hint::black_box(Box::new(1u64));
    assert_eq!(allocations() - before, 1);
    drop(boxed);
    // Sanity: the loop did relay (A to B and the listener, B to A, RTCP both ways).
    assert!(sent > 10_000, "{sent}");
    assert!(relay.leg(b).unwrap().rtcp_stats().rtt().is_some());
}
