//! End to end over loopback, on both I/O drivers: the Perl `rtpengine-ng-client` (from
//! rtpengine-utils) drives Switchboard through ping, offer, answer and delete, and RTP flows
//! both ways through the relay with the payload bytes intact.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::{Engine, have, recv_all, rtp_packet, sdp_media_addr, udp};

fn perl_client(e: &Engine, args: &[&str]) -> String {
    assert!(
        have("rtpengine-ng-client"),
        "rtpengine-ng-client is not installed (Debian package rtpengine-utils): `make test` installs it"
    );
    let out = Command::new("rtpengine-ng-client")
        .arg("--proxy-address=127.0.0.1")
        .arg(format!("--proxy-port={}", e.ng.port()))
        .args(args)
        .output()
        .expect("running rtpengine-ng-client");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "rtpengine-ng-client {args:?} failed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The SDP the client printed after "New SDP:".
fn new_sdp(out: &str) -> String {
    let after = out.split("New SDP:").nth(1).expect("a New SDP section");
    after
        .lines()
        .skip_while(|l| !l.starts_with("v=0"))
        .take_while(|l| !l.starts_with("----->8"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn plain_sdp(user: &str, port: u16) -> String {
    format!(
        "v=0\no={user} 1 1 IN IP4 127.0.0.1\ns=-\nc=IN IP4 127.0.0.1\nt=0 0\nm=audio {port} RTP/AVP 0\n"
    )
}

fn flow(driver: &str) {
    let e = Engine::start(driver, &[]);
    let pong = perl_client(&e, &["ping"]);
    assert!(pong.contains("pong"), "{pong}");

    let a = udp();
    let b = udp();
    let call = format!("perl-{driver}-{}", std::process::id());
    let offer = perl_client(
        &e,
        &[
            "offer",
            &format!("--call-id={call}"),
            "--from-tag=caller",
            &format!("--sdp={}", plain_sdp("a", a.local_addr().unwrap().port())),
        ],
    );
    // The offer's rewritten SDP goes to the callee: where B must send.
    let to_relay_from_b: SocketAddr = sdp_media_addr(&new_sdp(&offer));
    let answer = perl_client(
        &e,
        &[
            "answer",
            &format!("--call-id={call}"),
            "--from-tag=caller",
            "--to-tag=callee",
            &format!("--sdp={}", plain_sdp("b", b.local_addr().unwrap().port())),
        ],
    );
    let to_relay_from_a: SocketAddr = sdp_media_addr(&new_sdp(&answer));
    assert_ne!(to_relay_from_a, to_relay_from_b);
    for p in [to_relay_from_a.port(), to_relay_from_b.port()] {
        assert!(
            (e.port_min..=e.port_max).contains(&p) && p % 2 == 0,
            "port {p}"
        );
    }

    // A → B, then B → A, each 50 packets; the bytes arrive unchanged and come from the port
    // advertised to the receiver (symmetric RTP).
    for (from, to, dst, src_expected, fill) in [
        (&a, &b, to_relay_from_a, to_relay_from_b, 7u8),
        (&b, &a, to_relay_from_b, to_relay_from_a, 99u8),
    ] {
        let sent: Vec<Vec<u8>> = (0..50u16)
            .map(|i| {
                rtp_packet(
                    1000 + i,
                    160 * u32::from(i),
                    0xABCD_0000 | u32::from(fill),
                    fill,
                )
            })
            .collect();
        for p in &sent {
            from.send_to(p, dst).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
        let got = recv_all(to, sent.len(), Duration::from_secs(5));
        if got.len() != sent.len() {
            let (_, metrics) = e.http_get("/metrics");
            panic!(
                "{driver}: {} of {} packets relayed (fill {fill})\n{metrics}",
                got.len(),
                sent.len()
            );
        }
        for ((bytes, src), want) in got.iter().zip(&sent) {
            assert_eq!(bytes, want, "{driver}: payload and header intact");
            assert_eq!(
                *src, src_expected,
                "{driver}: sent from the advertised port"
            );
        }
    }

    let del = perl_client(
        &e,
        &["delete", &format!("--call-id={call}"), "--from-tag=caller"],
    );
    assert!(del.contains("created"), "delete returns statistics: {del}");
    assert!(del.contains("packets"), "delete returns statistics: {del}");
    let del = perl_client(
        &e,
        &["delete", "--call-id=no-such-call", "--from-tag=caller"],
    );
    assert!(
        del.contains("Call-ID not found or tags didn't match")
            || del.contains("Call-ID not found or tags didn\\'t match"),
        "{del}"
    );
}

#[test]
fn perl_client_relay_epoll() {
    flow("epoll");
}

#[test]
fn perl_client_relay_io_uring() {
    flow("io_uring");
}
