//! Process life cycle and engine behaviour seen from outside: configuration errors, clean
//! stops on SIGINT and SIGTERM (draining), media timeouts reported as events, IPv6 media,
//! and the HTTP endpoints.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Engine, recv_all, rtp_packet, sdp, sdp_media_addr, udp};
use serde_json::{Value, json};

fn switchboard() -> Command {
    Command::new(env!("CARGO_BIN_EXE_switchboard"))
}

#[test]
fn bad_config_is_rejected_with_a_clear_message() {
    let dir = std::env::temp_dir().join(format!("sb-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[media]\nport_mni = 30000\n").unwrap();
    let out = switchboard()
        .args(["serve", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("port_mni"), "{err}");

    let out = switchboard()
        .arg("check-config")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));

    let good = dir.join("good.toml");
    std::fs::write(&good, "[media]\nport_min = 30000\nport_max = 30999\n").unwrap();
    let out = switchboard()
        .arg("check-config")
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = switchboard()
        .args(["serve", "--config", "/nonexistent/switchboard.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigint_stops_cleanly() {
    let mut e = Engine::start("auto", &[]);
    let status = e
        .interrupt(Duration::from_secs(10))
        .expect("exited after SIGINT");
    assert!(status.success(), "{status}");
}

#[test]
fn sigterm_drains_then_stops() {
    let mut e = Engine::start("epoll", &[]);
    let ng = e.ng();
    let a = udp();
    let offer = ng.request(
        &json!({"command": "offer", "call-id": "drain-1", "from-tag": "a",
        "sdp": sdp("a", a.local_addr().unwrap().port())}),
    );
    assert_eq!(offer["result"], "ok");
    std::process::Command::new("kill")
        .args(["-TERM", &e.child.id().to_string()])
        .status()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // Draining: health says so, new calls are refused, the engine still answers.
    let (code, _) = e.http_get("/healthz");
    assert_eq!(code, 503);
    let r = ng.request(
        &json!({"command": "offer", "call-id": "drain-2", "from-tag": "a",
        "sdp": sdp("a", 40000)}),
    );
    assert_eq!(r["result"], "error", "{r}");
    // Once the last call is gone, the process exits.
    let r = ng.request(
        &json!({"command": "delete", "call-id": "drain-1", "from-tag": "a",
        "delete delay": 0}),
    );
    assert_eq!(r["result"], "ok", "{r}");
    let status = common::wait_exit(&mut e.child, Duration::from_secs(10)).expect("exited");
    assert!(status.success(), "{status}");
}

#[test]
fn media_timeout_tears_the_call_down_and_is_reported() {
    let e = Engine::start("epoll", &["--timeout", "2"]);
    let s = TcpStream::connect(e.control).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    w.write_all(b"{\"id\":1,\"op\":\"subscribe\",\"topics\":[\"calls\",\"media\"]}\n")
        .unwrap();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert_eq!(serde_json::from_str::<Value>(&line).unwrap()["ok"], true);

    let ng = e.ng();
    let offer = ng.request(
        &json!({"command": "offer", "call-id": "to-1", "from-tag": "a",
        "sdp": sdp("a", 40000)}),
    );
    assert_eq!(offer["result"], "ok");
    let started = Instant::now();
    let mut seen = Vec::new();
    while !seen.iter().any(|e: &String| e == "media.timeout") {
        line.clear();
        r.read_line(&mut line).expect("an event within the timeout");
        let v: Value = serde_json::from_str(&line).unwrap();
        seen.push(v["event"].as_str().unwrap_or("").to_owned());
        if v["event"] == "media.timeout" {
            assert_eq!(v["call"], "to-1");
        }
    }
    assert!(seen.contains(&"call.created".to_owned()), "{seen:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(8),
        "{took:?}"
    );
    // The call is gone.
    let q = ng.request(&json!({"command": "query", "call-id": "to-1"}));
    assert_eq!(q["result"], "error", "{q}");
}

#[test]
fn ipv6_media_relays() {
    if UdpSocket::bind("[::1]:0").is_err() {
        panic!("IPv6 loopback (::1) is not available on this machine");
    }
    let e = Engine::start("auto", &["--interface", "127.0.0.1", "--interface", "::1"]);
    let ng = e.ng();
    let a = UdpSocket::bind("[::1]:0").unwrap();
    let b = UdpSocket::bind("[::1]:0").unwrap();
    let sdp6 = |user: &str, port: u16| {
        format!(
            "v=0\r\no={user} 1 1 IN IP6 ::1\r\ns=-\r\nc=IN IP6 ::1\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\n"
        )
    };
    let offer = ng.request(
        &json!({"command": "offer", "call-id": "v6", "from-tag": "a",
        "sdp": sdp6("a", a.local_addr().unwrap().port())}),
    );
    assert_eq!(offer["result"], "ok", "{offer}");
    let offer_sdp = offer["sdp"].as_str().unwrap();
    assert!(offer_sdp.contains("c=IN IP6 ::1"), "{offer_sdp}");
    let answer = ng.request(
        &json!({"command": "answer", "call-id": "v6", "from-tag": "a",
        "to-tag": "b", "sdp": sdp6("b", b.local_addr().unwrap().port())}),
    );
    assert_eq!(answer["result"], "ok", "{answer}");
    let from_b: SocketAddr = sdp_media_addr(offer_sdp);
    let from_a: SocketAddr = sdp_media_addr(answer["sdp"].as_str().unwrap());
    assert!(from_a.is_ipv6() && from_b.is_ipv6());
    for i in 0..10u16 {
        a.send_to(&rtp_packet(i, 0, 1, 1), from_a).unwrap();
    }
    assert_eq!(recv_all(&b, 10, Duration::from_secs(3)).len(), 10);
    for i in 0..10u16 {
        b.send_to(&rtp_packet(i, 0, 2, 2), from_b).unwrap();
    }
    assert_eq!(recv_all(&a, 10, Duration::from_secs(3)).len(), 10);
}

#[test]
fn http_health_and_metrics() {
    let e = Engine::start("epoll", &[]);
    let (code, body) = e.http_get("/healthz");
    assert_eq!(code, 200);
    assert_eq!(body.trim(), "ok");
    let _ = e.ng().request(&json!({"command": "ping"}));
    let (code, body) = e.http_get("/metrics");
    assert_eq!(code, 200);
    for name in [
        "switchboard_relayed_packets_total",
        "switchboard_calls_active",
        "switchboard_worker_busy_ratio",
        "switchboard_control_requests_total{protocol=\"ng\",op=\"ping\",result=\"pong\"}",
    ] {
        assert!(body.contains(name), "{name} missing:\n{body}");
    }
    let (code, _) = e.http_get("/nope");
    assert_eq!(code, 404);
}
