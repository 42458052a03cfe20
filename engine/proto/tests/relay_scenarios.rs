//! Scenario tests of the sans-IO relay: two virtual endpoints exchange G.711-sized RTP at
//! 50 packets/s through a [`Relay`] over a seeded lossy, jittery, duplicating simulated network,
//! in virtual time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod relay_netsim;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use relay_netsim::{LinkConfig, RtpSender, Sim, addr};
use switchboard_proto::relay::{
    Component, Latching, LegConfig, LegId, Relay, RelayConfig, RelayEvent, RelayOutput,
};
use switchboard_proto::rtcp::{
    self, NtpTime, ReceiverReportWriter, ReportBlock, RtcpCompound, RtcpPacket, SenderReportWriter,
};
use switchboard_proto::rtp::{RtpPacket, RtpTimestamp, Ssrc};
use switchboard_proto::stats::DropReason;
use switchboard_proto::time::Micros;

const RELAY_A: &str = "192.0.2.1:30000";
const RELAY_B: &str = "192.0.2.1:30002";
const A_RTP: &str = "10.1.0.1:4000";
const B_SDP: &str = "10.2.0.1:5000";

fn leg_config(local: &str, remote: Option<&str>) -> LegConfig {
    let mut c = LegConfig::new(addr(local));
    c.expected_rtp = remote.map(addr);
    c
}

/// A relay with legs A and B peered, and a simulation around it.
fn call(a: LegConfig, b: LegConfig, config: RelayConfig, seed: u64) -> (Sim, LegId, LegId) {
    let mut relay = Relay::new(Micros::ZERO, config);
    let leg_a = relay.add_leg(a).unwrap();
    let leg_b = relay.add_leg(b).unwrap();
    relay.set_peer(leg_a, leg_b).unwrap();
    let mut sim = Sim::new(relay, seed);
    sim.add_leg_sockets(leg_a, a.advertised);
    sim.add_leg_sockets(leg_b, b.advertised);
    (sim, leg_a, leg_b)
}

fn ms(n: u64) -> Micros {
    Micros::from_millis(n)
}

/// RFC 3550 A.8 in floating point over arrivals (duplicates skipped), as a reference.
fn reference_jitter(arrivals: &[(Micros, u32)], clock_rate: f64) -> f64 {
    let mut jitter = 0.0;
    let mut prev: Option<f64> = None;
    for &(at, ts) in arrivals {
        let arrival = (at.0 as f64 * clock_rate / 1e6).floor();
        let transit = arrival - f64::from(ts);
        if let Some(p) = prev {
            jitter += ((transit - p).abs() - jitter) / 16.0;
        }
        prev = Some(transit);
    }
    jitter
}

#[test]
fn relay_two_way_call_over_lossy_jittery_link() {
    let b_nat = addr("10.2.0.1:25000");
    let (mut sim, leg_a, leg_b) = call(
        leg_config(RELAY_A, Some(A_RTP)),
        leg_config(RELAY_B, Some(B_SDP)),
        RelayConfig::default(),
        0x5eed_0001,
    );
    let (ip_a, ip_b, ip_r) = (addr(A_RTP).ip(), b_nat.ip(), addr(RELAY_A).ip());
    let a_to_r = LinkConfig {
        delay: Duration::from_millis(20),
        jitter: Duration::from_millis(40),
        loss: 0.03,
        duplicate: 0.01,
    };
    sim.set_link(ip_a, ip_r, a_to_r);
    sim.set_link(ip_r, ip_a, LinkConfig::fixed(20));
    sim.set_link(
        ip_b,
        ip_r,
        LinkConfig {
            delay: Duration::from_millis(10),
            jitter: Duration::from_millis(5),
            loss: 0.01,
            duplicate: 0.0,
        },
    );
    sim.set_link(ip_r, ip_b, LinkConfig::fixed(10));
    let mut sender_a = RtpSender::new(addr(A_RTP), addr(RELAY_A), 0xaaaa, ms(0), ms(60_000));
    sender_a.seq = 64_000; // wraps during the call
    sim.senders.push(sender_a);
    // B starts later, from behind a NAT: its real source differs from its SDP address.
    sim.senders.push(RtpSender::new(
        b_nat,
        addr(RELAY_B),
        0xbbbb,
        ms(500),
        ms(60_000),
    ));
    sim.run_until(Micros::from_secs(200));

    // Endpoints learned.
    let relay = &sim.relay;
    assert_eq!(
        relay.leg(leg_a).unwrap().learned(Component::Rtp),
        Some(addr(A_RTP))
    );
    assert_eq!(
        relay.leg(leg_b).unwrap().learned(Component::Rtp),
        Some(b_nat)
    );
    let latches: Vec<_> = sim
        .events
        .iter()
        .filter_map(|(t, e)| match e {
            RelayEvent::EndpointLatched { leg, addr, .. } => Some((*t, *leg, *addr)),
            _ => None,
        })
        .collect();
    assert_eq!(latches.len(), 2, "{latches:?}");
    let b_latched_at = latches.iter().find(|l| l.1 == leg_b).unwrap().0;

    // Payload bytes and headers intact end to end, sent from the socket advertised to each peer.
    let sent_by = |i: usize| -> HashMap<u16, Vec<u8>> {
        sim.senders[i]
            .sent
            .iter()
            .map(|(_, d)| (RtpPacket::parse(d).unwrap().sequence_number(), d.clone()))
            .collect()
    };
    let (sent_a, sent_b) = (sent_by(0), sent_by(1));
    let mut to_b = 0;
    for d in sim.delivered_to(b_nat) {
        assert_eq!(d.src, addr(RELAY_B));
        let seq = RtpPacket::parse(&d.data).unwrap().sequence_number();
        assert_eq!(d.data, sent_a[&seq], "packet {seq} altered");
        assert!(d.at > b_latched_at);
        to_b += 1;
    }
    // Before B's first packet, A's media went to B's SDP address.
    let to_b_sdp: Vec<_> = sim.delivered_to(addr(B_SDP)).collect();
    assert!(!to_b_sdp.is_empty());
    assert!(
        to_b_sdp
            .iter()
            .all(|d| d.at <= b_latched_at + Duration::from_millis(10))
    );
    let mut to_a = 0;
    for d in sim.delivered_to(addr(A_RTP)) {
        assert_eq!(d.src, addr(RELAY_A));
        let seq = RtpPacket::parse(&d.data).unwrap().sequence_number();
        assert_eq!(d.data, sent_b[&seq]);
        to_a += 1;
    }
    assert!(to_b > 2800 && to_a > 2800, "{to_b} {to_a}");

    // Stats of A's stream against what the simulated link did.
    let arrivals: Vec<_> = sim
        .relay_arrivals(addr(RELAY_A))
        .map(|(a, out)| {
            assert!(matches!(out, RelayOutput::Forward(_)));
            let p = RtpPacket::parse(&a.data).unwrap();
            (a.at, p.sequence_number(), p.timestamp().0)
        })
        .collect();
    let index_of: HashMap<u16, i64> = sim.senders[0]
        .sent
        .iter()
        .enumerate()
        .map(|(i, (_, d))| (RtpPacket::parse(d).unwrap().sequence_number(), i as i64))
        .collect();
    let mut seen = HashSet::new();
    let mut highest = -1;
    let (mut duplicates, mut late) = (0, 0);
    let mut unique_arrivals = Vec::new();
    for &(at, seq, ts) in &arrivals {
        let i = index_of[&seq];
        if !seen.insert(i) {
            duplicates += 1;
            continue;
        }
        if i < highest {
            late += 1;
        }
        highest = highest.max(i);
        unique_arrivals.push((at, ts));
    }
    let stats = sim.relay.leg(leg_a).unwrap().rtp_stats();
    assert_eq!(stats.packets(), arrivals.len() as u64);
    assert_eq!(stats.bytes(), 172 * arrivals.len() as u64);
    assert_eq!(stats.duplicates(), duplicates);
    assert_eq!(stats.reordered(), late);
    assert!(
        late > 100,
        "a 40 ms jitter on 20 ms packets reorders: {late}"
    );
    let counters = sim.link_counters[&(ip_a, ip_r)];
    assert_eq!(counters.sent, 3000);
    assert!(duplicates > 0 && duplicates <= counters.duplicated);
    // Packets never received between the first and the highest one received.
    let first = *seen.iter().min().unwrap();
    let missing = (first..=highest).filter(|i| !seen.contains(i)).count() as f64;
    let unique_lost = stats.loss_ratio() * stats.expected() as f64;
    assert!(
        (unique_lost - missing).abs() <= 3.0,
        "{unique_lost} vs {missing}"
    );
    assert!(
        (stats.lost() as f64 - (missing - duplicates as f64)).abs() <= 3.0,
        "A.3 lost counts duplicates as received: {} vs {missing} - {duplicates}",
        stats.lost()
    );
    assert!(
        (0.02..0.04).contains(&stats.loss_ratio()),
        "{}",
        stats.loss_ratio()
    );
    assert!(stats.extended_highest_seq() >= 1 << 16, "sequence wrapped");
    // Jitter: the A.8 estimator against a floating-point reference over the same arrivals, and
    // against the link: |D| of two uniform 0–40 ms delays averages 40/3 ms.
    let reference = reference_jitter(&unique_arrivals, 8000.0);
    assert!(
        (f64::from(stats.jitter()) - reference).abs() <= 2.0,
        "{} vs {reference}",
        stats.jitter()
    );
    assert!(
        (9.0..18.0).contains(&stats.jitter_ms()),
        "{}",
        stats.jitter_ms()
    );
    let mos = sim.relay.leg(leg_a).unwrap().mos().unwrap();
    assert!((3.7..4.3).contains(&mos), "{mos}");
    // B's stream: 1 % loss, little jitter, better MOS.
    let b_stats = sim.relay.leg(leg_b).unwrap().rtp_stats();
    assert!(b_stats.loss_ratio() < 0.02);
    assert!(b_stats.jitter_ms() < 3.0);
    assert!(sim.relay.leg(leg_b).unwrap().mos().unwrap() > mos);

    // Media timeout: 60 s after the last packet reached the relay, once.
    let last = sim.at_relay.iter().map(|(a, _)| a.at).max().unwrap();
    let timeouts: Vec<_> = sim
        .events
        .iter()
        .filter(|(_, e)| matches!(e, RelayEvent::MediaTimeout { .. }))
        .collect();
    assert_eq!(
        timeouts,
        [&(
            last + Duration::from_secs(60),
            RelayEvent::MediaTimeout {
                last_activity: last
            }
        )]
    );
    assert_eq!(sim.relay.poll_timeout(), None);
}

#[test]
fn relay_media_timeout_from_creation_and_configured() {
    // Never any packet: the timeout counts from the relay's creation.
    let mut relay = Relay::new(Micros::from_secs(5), RelayConfig::default());
    let a = relay.add_leg(leg_config(RELAY_A, Some(A_RTP))).unwrap();
    let b = relay.add_leg(leg_config(RELAY_B, Some(B_SDP))).unwrap();
    relay.set_peer(a, b).unwrap();
    let mut sim = Sim::new(relay, 1);
    sim.run_until(Micros::from_secs(100));
    assert_eq!(
        sim.events,
        [(
            Micros::from_secs(65),
            RelayEvent::MediaTimeout {
                last_activity: Micros::from_secs(5)
            }
        )]
    );

    // A 10 s timeout after media stops; the leg B packets arriving keep it alive meanwhile.
    let config = RelayConfig {
        media_timeout: Duration::from_secs(10),
        ..RelayConfig::default()
    };
    let (mut sim, _, _) = call(
        leg_config(RELAY_A, Some(A_RTP)),
        leg_config(RELAY_B, Some(B_SDP)),
        config,
        2,
    );
    sim.set_link(addr(A_RTP).ip(), addr(RELAY_A).ip(), LinkConfig::fixed(15));
    sim.senders.push(RtpSender::new(
        addr(A_RTP),
        addr(RELAY_A),
        1,
        ms(0),
        ms(3000),
    ));
    sim.senders.push(RtpSender::new(
        addr(B_SDP),
        addr(RELAY_B),
        2,
        ms(0),
        ms(8000),
    ));
    sim.run_until(Micros::from_secs(60));
    // B's last packet leaves at 7.980 s and takes the default 1 ms.
    assert_eq!(
        sim.events
            .iter()
            .filter(|(_, e)| matches!(e, RelayEvent::MediaTimeout { .. }))
            .collect::<Vec<_>>(),
        [&(
            ms(17_981),
            RelayEvent::MediaTimeout {
                last_activity: ms(7_981)
            }
        )]
    );
}

#[test]
fn relay_strict_source_refuses_third_party() {
    let third = addr("10.66.0.1:4000");
    for strict in [true, false] {
        let mut a = leg_config(RELAY_A, Some(A_RTP));
        a.strict_source = strict;
        let (mut sim, leg_a, _) = call(
            a,
            leg_config(RELAY_B, Some(B_SDP)),
            RelayConfig::default(),
            3,
        );
        sim.senders.push(RtpSender::new(
            addr(A_RTP),
            addr(RELAY_A),
            0xa,
            ms(0),
            ms(5000),
        ));
        sim.senders.push(RtpSender::new(
            addr(B_SDP),
            addr(RELAY_B),
            0xb,
            ms(0),
            ms(5000),
        ));
        sim.senders.push(RtpSender::new(
            third,
            addr(RELAY_A),
            0xc,
            ms(1000),
            ms(3000),
        ));
        sim.run_until(Micros::from_secs(6));

        let from_third: Vec<_> = sim
            .at_relay
            .iter()
            .filter(|(a, _)| a.src == third)
            .map(|(_, out)| *out)
            .collect();
        assert_eq!(from_third.len(), 100);
        let leg = sim.relay.leg(leg_a).unwrap();
        assert_eq!(leg.learned(Component::Rtp), Some(addr(A_RTP)));
        let ssrcs_at_b: HashSet<Ssrc> = sim
            .delivered_to(addr(B_SDP))
            .map(|d| RtpPacket::parse(&d.data).unwrap().ssrc())
            .collect();
        // B's media never goes to the third party either way: A's source stays latched.
        assert_eq!(sim.delivered_to(third).count(), 0);
        if strict {
            assert!(
                from_third
                    .iter()
                    .all(|o| *o == RelayOutput::Drop(DropReason::StrictSource))
            );
            assert_eq!(leg.drops().get(DropReason::StrictSource), 100);
            assert_eq!(ssrcs_at_b, HashSet::from([Ssrc(0xa)]));
            assert_eq!(leg.rtp_stats().packets(), 250);
        } else {
            // Without strict source, rtpengine forwards packets from other sources too.
            assert!(from_third.iter().all(|o| o.drop_reason().is_none()));
            assert_eq!(ssrcs_at_b, HashSet::from([Ssrc(0xa), Ssrc(0xc)]));
        }
    }
}

fn sender_report(ssrc: u32, ntp: NtpTime) -> Vec<u8> {
    let mut buf = vec![0u8; 28];
    SenderReportWriter {
        ssrc: Ssrc(ssrc),
        ntp_time: ntp,
        rtp_timestamp: RtpTimestamp(8000),
        packet_count: 50,
        octet_count: 8000,
        report_blocks: &[],
    }
    .write(&mut buf)
    .unwrap();
    buf
}

fn receiver_report(ssrc: u32, about: u32, lsr: u32, dlsr: Duration) -> Vec<u8> {
    let mut buf = vec![0u8; 32];
    ReceiverReportWriter {
        ssrc: Ssrc(ssrc),
        report_blocks: &[ReportBlock {
            ssrc: Ssrc(about),
            fraction_lost: 13,
            cumulative_lost: 2,
            extended_highest_seq: 1000,
            jitter: 24,
            last_sr: lsr,
            delay_since_last_sr: rtcp::duration_to_q16(dlsr),
        }],
    }
    .write(&mut buf)
    .unwrap();
    buf
}

#[test]
fn relay_rtcp_on_port_plus_one_and_with_mux() {
    for mux in [false, true] {
        let mut a = leg_config(RELAY_A, Some(A_RTP));
        let mut b = leg_config(RELAY_B, Some(B_SDP));
        a.rtcp_mux = mux;
        b.rtcp_mux = mux;
        let (mut sim, leg_a, leg_b) = call(a, b, RelayConfig::default(), 4);
        let (ip_a, ip_b, ip_r) = (addr(A_RTP).ip(), addr(B_SDP).ip(), addr(RELAY_A).ip());
        sim.set_link(ip_a, ip_r, LinkConfig::fixed(15));
        sim.set_link(ip_r, ip_a, LinkConfig::fixed(15));
        sim.set_link(ip_r, ip_b, LinkConfig::fixed(10));
        sim.set_link(ip_b, ip_r, LinkConfig::fixed(12));
        sim.senders.push(RtpSender::new(
            addr(A_RTP),
            addr(RELAY_A),
            0xa,
            ms(0),
            ms(3000),
        ));
        sim.senders.push(RtpSender::new(
            addr(B_SDP),
            addr(RELAY_B),
            0xb,
            ms(0),
            ms(3000),
        ));
        let (a_rtcp, relay_a_rtcp, b_rtcp, relay_b_rtcp) = if mux {
            (addr(A_RTP), addr(RELAY_A), addr(B_SDP), addr(RELAY_B))
        } else {
            (
                addr("10.1.0.1:4001"),
                addr("192.0.2.1:30001"),
                addr("10.2.0.1:5001"),
                addr("192.0.2.1:30003"),
            )
        };

        sim.run_until(ms(1000));
        let ntp = NtpTime::from_duration(Duration::from_secs(3_900_000_000));
        let sr = sender_report(0xa, ntp);
        sim.send(a_rtcp, relay_a_rtcp, sr.clone());
        // SR reaches the relay at 1.015 s and B at 1.025 s; B answers at 1.125 s.
        sim.run_until(ms(1125));
        let got: Vec<_> = sim
            .delivered_to(b_rtcp)
            .filter(|d| rtcp_like(&d.data))
            .collect();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].src, relay_b_rtcp, "sent from B's own RTCP socket");
        assert_eq!(got[0].data, sr, "bytes intact");
        assert_eq!(got[0].at, ms(1025));
        let rr = receiver_report(0xb, 0xa, ntp.middle(), Duration::from_millis(100));
        sim.send(b_rtcp, relay_b_rtcp, rr.clone());
        sim.run_until(ms(4000));

        let back: Vec<_> = sim
            .delivered_to(a_rtcp)
            .filter(|d| rtcp_like(&d.data))
            .collect();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].src, relay_a_rtcp);
        assert_eq!(back[0].data, rr);
        // Relay↔B round trip: 10 ms out plus 12 ms back.
        let leg = sim.relay.leg(leg_b).unwrap();
        let rtt = leg.rtcp_stats().rtt().unwrap();
        assert!(
            rtt.abs_diff(Duration::from_millis(22)) < Duration::from_micros(50),
            "{rtt:?}"
        );
        let remote = leg.rtcp_stats().remote_report().unwrap();
        assert_eq!(remote.block.fraction_lost, 13);
        assert_eq!(leg.rtcp_stats().receiver_reports(), 1);
        let a_leg = sim.relay.leg(leg_a).unwrap();
        assert_eq!(a_leg.rtcp_stats().sender_reports(), 1);
        assert_eq!(
            a_leg.rtcp_stats().last_sender_report().unwrap().ntp_middle,
            ntp.middle()
        );
        // RTCP never counts as RTP.
        assert_eq!(a_leg.rtp_stats().packets(), 150);
        let mos_with_rtt = leg.mos().unwrap();
        assert!(mos_with_rtt > 4.0, "{mos_with_rtt}");
        if !mux {
            assert_eq!(leg.learned(Component::Rtcp), Some(b_rtcp));
        }
    }
}

fn rtcp_like(data: &[u8]) -> bool {
    RtcpCompound::parse(data).is_ok_and(|c| {
        c.packets().all(|p| {
            matches!(
                p,
                RtcpPacket::SenderReport(_) | RtcpPacket::ReceiverReport(_)
            )
        })
    }) && switchboard_proto::rtp::is_rtcp(data)
}

/// Where B's media went, per relay arrival time, for arrivals on leg B's RTP socket.
fn b_to_a_destinations(sim: &Sim) -> Vec<(Micros, SocketAddr)> {
    sim.relay_arrivals(addr(RELAY_B))
        .filter_map(|(a, out)| out.transmits().first().map(|t| (a.at, t.dst)))
        .collect()
}

#[test]
fn relay_relatching_rules() {
    let a1 = addr(A_RTP);
    let a2 = addr("10.1.0.1:4100");
    for latching in [Latching::Symmetric, Latching::Once, Latching::Asymmetric] {
        let mut a = leg_config(RELAY_A, Some(A_RTP));
        a.latching = latching;
        let (mut sim, leg_a, _) = call(
            a,
            leg_config(RELAY_B, Some(B_SDP)),
            RelayConfig::default(),
            5,
        );
        sim.set_link(a1.ip(), addr(RELAY_A).ip(), LinkConfig::fixed(15));
        // A's NAT rebinds at 10 s: same host, new source port.
        sim.senders
            .push(RtpSender::new(a1, addr(RELAY_A), 0xa, ms(0), ms(10_000)));
        sim.senders.push(RtpSender::new(
            a2,
            addr(RELAY_A),
            0xa,
            ms(10_000),
            ms(20_000),
        ));
        sim.senders.push(RtpSender::new(
            addr(B_SDP),
            addr(RELAY_B),
            0xb,
            ms(0),
            ms(20_000),
        ));
        sim.run_until(ms(21_000));

        let dests = b_to_a_destinations(&sim);
        let leg = sim.relay.leg(leg_a).unwrap();
        // Packets from the new source were forwarded all along (no strict source).
        let a2_forwarded = sim
            .at_relay
            .iter()
            .filter(|(a, out)| a.src == a2 && out.drop_reason().is_none())
            .count();
        assert_eq!(a2_forwarded, 500);
        match latching {
            Latching::Symmetric => {
                // Last packet from a1 reached the relay at 9.995 s; a2's packets arrive at
                // 10.015 s + k·20 ms; the first one 2 s or more after 9.995 s latches.
                let relatch = ms(11_995);
                let latched: Vec<_> = sim
                    .events
                    .iter()
                    .filter_map(|(t, e)| match e {
                        RelayEvent::EndpointLatched {
                            leg,
                            addr,
                            previous,
                            ..
                        } if *leg == leg_a => Some((*t, *addr, *previous)),
                        _ => None,
                    })
                    .collect();
                assert_eq!(latched, [(ms(15), a1, None), (relatch, a2, Some(a1))]);
                assert!(
                    dests
                        .iter()
                        .all(|&(t, d)| if t <= relatch { d == a1 } else { d == a2 })
                );
                assert_eq!(leg.learned(Component::Rtp), Some(a2));
            }
            Latching::Once => {
                assert!(dests.iter().all(|&(_, d)| d == a1));
                assert_eq!(leg.learned(Component::Rtp), Some(a1));
            }
            _ => {
                assert!(
                    dests.iter().all(|&(_, d)| d == a1),
                    "always the SDP address"
                );
                assert_eq!(leg.learned(Component::Rtp), None);
            }
        }
        assert!(dests.len() > 900);
    }
}

#[test]
fn relay_reinvite_with_new_address_relearns() {
    let (mut sim, leg_a, _) = call(
        leg_config(RELAY_A, Some(A_RTP)),
        leg_config(RELAY_B, Some(B_SDP)),
        RelayConfig::default(),
        6,
    );
    sim.senders.push(RtpSender::new(
        addr(A_RTP),
        addr(RELAY_A),
        0xa,
        ms(0),
        ms(1000),
    ));
    sim.senders.push(RtpSender::new(
        addr(B_SDP),
        addr(RELAY_B),
        0xb,
        ms(0),
        ms(3000),
    ));
    sim.run_until(ms(1500));
    assert_eq!(
        sim.relay.leg(leg_a).unwrap().learned(Component::Rtp),
        Some(addr(A_RTP))
    );
    // A re-INVITE moves A: media goes to the new SDP address at once, then latches afresh.
    let moved = addr("10.1.0.9:6000");
    let mut cfg = *sim.relay.leg(leg_a).unwrap().config();
    cfg.expected_rtp = Some(moved);
    sim.relay.update_leg(leg_a, cfg).unwrap();
    assert_eq!(sim.relay.leg(leg_a).unwrap().learned(Component::Rtp), None);
    sim.run_until(ms(2000));
    assert!(sim.delivered_to(moved).count() > 20);
    sim.senders.push(RtpSender::new(
        addr("10.1.0.9:6002"),
        addr(RELAY_A),
        0xd,
        ms(2000),
        ms(3000),
    ));
    sim.run_until(ms(3000));
    assert_eq!(
        sim.relay.leg(leg_a).unwrap().learned(Component::Rtp),
        Some(addr("10.1.0.9:6002"))
    );
    assert!(sim.delivered_to(addr("10.1.0.9:6002")).count() > 40);
    // The stream restarted with a new SSRC; statistics carried on.
    let stats = sim.relay.leg(leg_a).unwrap().rtp_stats();
    assert_eq!(stats.ssrc_changes(), 1);
    assert_eq!(stats.packets(), 100);
}

#[test]
fn relay_listener_leg_receives_a_copy() {
    // A supervisor-style listen leg: A's media goes to B and to L; L's media goes nowhere.
    let (mut sim, leg_a, _) = call(
        leg_config(RELAY_A, Some(A_RTP)),
        leg_config(RELAY_B, Some(B_SDP)),
        RelayConfig::default(),
        7,
    );
    let listener_addr = addr("10.3.0.1:7000");
    let l = sim
        .relay
        .add_leg(leg_config("192.0.2.1:30004", Some("10.3.0.1:7000")))
        .unwrap();
    sim.add_leg_sockets(l, addr("192.0.2.1:30004"));
    sim.relay.add_forward(leg_a, l).unwrap();
    sim.senders.push(RtpSender::new(
        addr(A_RTP),
        addr(RELAY_A),
        0xa,
        ms(0),
        ms(1000),
    ));
    sim.senders.push(RtpSender::new(
        listener_addr,
        addr("192.0.2.1:30004"),
        0xe,
        ms(0),
        ms(1000),
    ));
    sim.run_until(ms(2000));
    let at_b: Vec<_> = sim
        .delivered_to(addr(B_SDP))
        .map(|d| d.data.clone())
        .collect();
    let at_l: Vec<_> = sim
        .delivered_to(listener_addr)
        .map(|d| d.data.clone())
        .collect();
    assert_eq!(at_b.len(), 50);
    assert_eq!(at_b, at_l);
    assert!(
        sim.delivered_to(listener_addr)
            .all(|d| d.src == addr("192.0.2.1:30004"))
    );
    let l_leg = sim.relay.leg(l).unwrap();
    assert_eq!(l_leg.drops().get(DropReason::NoPeer), 50);
    assert_eq!(l_leg.forwarded().packets, 50);
}
