//! RTP/RTCP parsing and the relay's per-packet decision (`switchboard-proto`).
//!
//! - `rtp/parse`: validate a 172-byte PCMU packet and read its header fields.
//! - `rtcp/parse`: validate a compound SR (one report block) + SDES and read the report.
//! - `relay/handle_packet`: one packet of a two-leg call, alternating directions (A→B, B→A),
//!   with statistics, latching and forward decision; the caller's send is not included.
#![allow(missing_docs, clippy::expect_used)]

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use switchboard_proto::relay::{Component, LegConfig, Relay, RelayConfig};
use switchboard_proto::rtcp::{NtpTime, ReportBlock, RtcpCompound, RtcpPacket, SenderReportWriter};
use switchboard_proto::rtp::{PayloadType, RtpHeaderWriter, RtpPacket, RtpTimestamp, Ssrc};
use switchboard_proto::time::Micros;

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("literal address")
}

fn pcmu(seq: u16, ssrc: u32) -> [u8; 172] {
    let mut buf = [0xd5u8; 172];
    RtpHeaderWriter::new(
        PayloadType::PCMU,
        seq,
        RtpTimestamp(u32::from(seq) * 160),
        Ssrc(ssrc),
    )
    .write(&mut buf)
    .expect("172 bytes hold a header");
    buf
}

fn compound_sr() -> Vec<u8> {
    let mut buf = vec![0u8; 52 + 12];
    SenderReportWriter {
        ssrc: Ssrc(0xa),
        ntp_time: NtpTime(0x1234_5678_9abc_def0),
        rtp_timestamp: RtpTimestamp(8000),
        packet_count: 50,
        octet_count: 8000,
        report_blocks: &[ReportBlock {
            ssrc: Ssrc(0xb),
            fraction_lost: 2,
            cumulative_lost: 10,
            extended_highest_seq: 70_000,
            jitter: 30,
            last_sr: 0x5678_9abc,
            delay_since_last_sr: 0x8000,
        }],
    }
    .write(&mut buf)
    .expect("buffer sized for the SR");
    buf[52..].copy_from_slice(&[0x81, 202, 0, 2, 0, 0, 0, 0xa, 1, 2, b'a', b'b']);
    buf
}

fn bench(c: &mut Criterion) {
    let packet = pcmu(1234, 0xa);
    let mut g = c.benchmark_group("rtp");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse", |b| {
        b.iter(|| {
            let p = RtpPacket::parse(black_box(&packet)).expect("valid");
            (
                p.sequence_number(),
                p.timestamp(),
                p.ssrc(),
                p.payload().len(),
            )
        })
    });
    g.finish();

    let sr = compound_sr();
    let mut g = c.benchmark_group("rtcp");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse", |b| {
        b.iter(|| {
            let c = RtcpCompound::parse(black_box(&sr)).expect("valid");
            let mut jitter = 0;
            for p in c.packets() {
                if let RtcpPacket::SenderReport(sr) = p {
                    jitter += sr.report_blocks().map(|b| b.jitter).sum::<u32>();
                }
            }
            jitter
        })
    });
    g.finish();

    let mut relay = Relay::new(Micros::ZERO, RelayConfig::default());
    let mut a_cfg = LegConfig::new(addr("192.0.2.1:30000"));
    a_cfg.expected_rtp = Some(addr("10.1.0.1:4000"));
    let mut b_cfg = LegConfig::new(addr("192.0.2.1:30002"));
    b_cfg.expected_rtp = Some(addr("10.2.0.1:5000"));
    let a = relay.add_leg(a_cfg).expect("room for a leg");
    let b = relay.add_leg(b_cfg).expect("room for a leg");
    relay.set_peer(a, b).expect("both legs exist");
    let (src_a, src_b) = (addr("10.1.0.1:4000"), addr("10.2.0.1:5000"));
    let mut from_a = pcmu(0, 0xa);
    let mut from_b = pcmu(0, 0xb);
    let mut i: u64 = 0;
    let mut g = c.benchmark_group("relay");
    g.throughput(Throughput::Elements(1));
    g.bench_function("handle_packet", |bench| {
        bench.iter(|| {
            i += 1;
            // Truncation wraps the sequence number like a long call does.
            let seq = (i / 2) as u16;
            let now = Micros(i * 10_000);
            let out = if i % 2 == 0 {
                from_a[2..4].copy_from_slice(&seq.to_be_bytes());
                from_a[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
                relay.handle_packet(now, a, Component::Rtp, src_a, black_box(&from_a))
            } else {
                from_b[2..4].copy_from_slice(&seq.to_be_bytes());
                from_b[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
                relay.handle_packet(now, b, Component::Rtp, src_b, black_box(&from_b))
            };
            out.transmits().len()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
