//! Hostile input on every socket: the NG port (UDP and TCP), the native control port, the
//! RTP ports of a live call. Every bad message gets an error reply or a counted drop, and the
//! engine keeps serving the other clients and the call.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::{Engine, recv_all, rtp_packet, sdp, sdp_media_addr, udp};
use serde_json::{Value, json};

/// A small deterministic generator (splitmix64).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Sets up a call with two parties; returns (caller socket, callee socket, where the caller
/// sends, where the callee sends).
fn call(
    e: &Engine,
    id: &str,
) -> (
    std::net::UdpSocket,
    std::net::UdpSocket,
    SocketAddr,
    SocketAddr,
) {
    let ng = e.ng();
    let a = udp();
    let b = udp();
    let offer = ng.request(&json!({"command": "offer", "call-id": id, "from-tag": "a",
        "sdp": sdp("a", a.local_addr().unwrap().port())}));
    assert_eq!(offer["result"], "ok", "{offer}");
    let answer = ng.request(&json!({"command": "answer", "call-id": id, "from-tag": "a",
        "to-tag": "b", "sdp": sdp("b", b.local_addr().unwrap().port())}));
    assert_eq!(answer["result"], "ok", "{answer}");
    let from_b = sdp_media_addr(offer["sdp"].as_str().unwrap());
    let from_a = sdp_media_addr(answer["sdp"].as_str().unwrap());
    (a, b, from_a, from_b)
}

fn relays(a: &std::net::UdpSocket, b: &std::net::UdpSocket, dst: SocketAddr, seq0: u16) {
    for i in 0..10u16 {
        a.send_to(&rtp_packet(seq0 + i, 0, 42, 3), dst).unwrap();
    }
    let got = recv_all(b, 10, Duration::from_secs(3));
    assert_eq!(got.len(), 10, "the call still relays");
}

/// The engine still answers. After a flood the socket's receive buffer may still be full,
/// so a lost ping is retried a few times (UDP promises nothing more).
fn assert_alive(e: &Engine) {
    let ng = e.ng();
    for _ in 0..10 {
        if let Ok(r) = ng.try_request(&json!({"command": "ping"}), Duration::from_millis(500)) {
            assert_eq!(r["result"], "pong");
            return;
        }
    }
    panic!("the engine stopped answering NG pings");
}

#[test]
fn hostile_ng_udp() {
    let e = Engine::start("epoll", &[]);
    let ng = e.ng();
    let expect_error = |msg: &[u8], reason: &str| {
        let r = ng.raw(msg, Duration::from_secs(3)).expect("an error reply");
        let text = String::from_utf8_lossy(&r).into_owned();
        assert!(
            text.contains(reason),
            "{:?} → {text}",
            String::from_utf8_lossy(msg)
        );
    };
    expect_error(b"c1 hello", "Invalid NG data format");
    expect_error(b"c2 d7:command", "Could not decode bencode dictionary");
    expect_error(b"c3 {\"command\": ", "Failed to parse JSON document");
    expect_error(b"c4 d3:foo3:bare", "Dictionary contains no key");
    expect_error(b"c5 d7:command5:bogose", "Unrecognized command");
    expect_error(b"c6 d7:command5:offere", "");
    expect_error(b"c7 d7:command5:offer7:call-idi5ee", "");
    expect_error(
        b"c8 d7:command5:offer7:call-id1:x8:from-tag1:x3:sdpi3ee",
        "",
    );
    expect_error(
        b"c9 d7:command6:answer7:call-id7:missing8:from-tag1:x6:to-tag1:y3:sdp3:v=0e",
        "Unknown call-id",
    );
    // Deep nesting and huge declared lengths.
    let mut deep = b"c10 d7:command4:ping4:deep".to_vec();
    deep.extend(std::iter::repeat_n(b'l', 50_000));
    expect_error(&deep, "Could not decode bencode dictionary");
    expect_error(
        b"c11 d7:command999999999999:ping",
        "Could not decode bencode dictionary",
    );
    expect_error(
        b"c12 di99999999999999999999999ee",
        "Could not decode bencode dictionary",
    );
    let mut big = b"c13 d7:command4:ping3:pad60000:".to_vec();
    big.extend(std::iter::repeat_n(b'x', 60_000));
    big.push(b'e');
    let r = ng
        .raw(&big, Duration::from_secs(3))
        .expect("a reply to a large datagram");
    assert!(String::from_utf8_lossy(&r).contains("pong"));
    // No space: dropped without a reply.
    assert!(ng.raw(b"nospace", Duration::from_millis(300)).is_none());
    // Random datagrams.
    let mut rng = Rng(7);
    let sock = udp();
    for i in 0..2000 {
        let len = (rng.next() % 1500) as usize;
        let mut d = rng.bytes(len);
        if i % 3 == 0 {
            d.splice(0..0, b"x d".iter().copied());
        }
        sock.send_to(&d, e.ng).unwrap();
    }
    assert_alive(&e);
}

#[test]
fn hostile_ng_tcp() {
    let e = Engine::start("epoll", &[]);
    let mut rng = Rng(11);
    for _ in 0..20 {
        if let Ok(mut s) = TcpStream::connect(e.ng) {
            let len = (rng.next() % 4096) as usize;
            let _ = s.write_all(&rng.bytes(len));
        }
    }
    // A declared length far beyond anything reasonable, then a normal client still works.
    if let Ok(mut s) = TcpStream::connect(e.ng) {
        let _ = s.write_all(b"x d7:command99999999999:");
    }
    let mut s = TcpStream::connect(e.ng).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(b"5323_1 d7:command4:pinge").unwrap();
    let mut buf = [0u8; 64];
    let mut got = Vec::new();
    while !got.ends_with(b"ponge") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed before the reply");
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, b"5323_1 d6:result4:ponge");
    // Two messages back to back on one connection.
    s.write_all(b"a d7:command4:pinge b d7:command4:pinge")
        .unwrap();
    let mut got = Vec::new();
    while got.len() < b"a d6:result4:pongeb d6:result4:ponge".len() {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, b"a d6:result4:pongeb d6:result4:ponge");
    assert_alive(&e);
}

#[test]
fn hostile_rtp() {
    let e = Engine::start("epoll", &[]);
    let (a, b, from_a, from_b) = call(&e, "hostile-rtp");
    relays(&a, &b, from_a, 1);
    relays(&b, &a, from_b, 1);
    let evil = udp();
    let mut rng = Rng(5);
    for i in 0..3000u32 {
        let len = match i % 4 {
            0 => 0,
            1 => (rng.next() % 12) as usize,
            2 => (rng.next() % 1400) as usize,
            _ => 9000,
        };
        let d = rng.bytes(len);
        for dst in [from_a, from_b] {
            let _ = evil.send_to(&d, dst);
            let _ = evil.send_to(&d, SocketAddr::new(dst.ip(), dst.port() + 1));
        }
    }
    // Drain whatever garbage may have been relayed; the parties must still talk.
    let _ = recv_all(&a, usize::MAX, Duration::from_millis(300));
    let _ = recv_all(&b, usize::MAX, Duration::from_millis(300));
    relays(&a, &b, from_a, 100);
    relays(&b, &a, from_b, 100);
    let (code, metrics) = e.http_get("/metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("switchboard_dropped_packets_total"),
        "{metrics}"
    );
    assert_alive(&e);
}

#[test]
fn hostile_native_control() {
    let e = Engine::start("epoll", &[]);
    let s = TcpStream::connect(e.control).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut ask = |line: &[u8]| -> Value {
        w.write_all(line).unwrap();
        w.write_all(b"\n").unwrap();
        let mut reply = String::new();
        r.read_line(&mut reply).unwrap();
        serde_json::from_str(&reply).unwrap()
    };
    let v = ask(b"{not json");
    assert_eq!(v["ok"], false);
    assert_eq!(v["error"]["code"], "bad_request");
    let v = ask(b"[1,2,3]");
    assert_eq!(v["error"]["code"], "bad_request");
    let v = ask(br#"{"id":1,"op":"no.such.op"}"#);
    assert_eq!(v["id"], 1);
    assert_eq!(v["error"]["code"], "unknown_op");
    let v = ask(br#"{"id":2,"op":"call.get"}"#);
    assert_eq!(v["error"]["code"], "bad_request");
    let v = ask(br#"{"id":3,"op":"call.get","call":"nope"}"#);
    assert_eq!(v["error"]["code"], "not_found");
    let huge = vec![b'x'; 200_000];
    let v = ask(&huge);
    assert_eq!(v["error"]["code"], "too_large");
    let v = ask(br#"{"id":4,"op":"ping"}"#);
    assert_eq!(v["ok"], true, "the connection stays usable");
    let v = ask(br#"{"id":5,"op":"stats"}"#);
    assert_eq!(v["ok"], true);
    let mut rng = Rng(3);
    for _ in 0..50 {
        let mut d = rng.bytes(300);
        d.retain(|b| *b != b'\n');
        let v = ask(&d);
        assert_eq!(v["ok"], false);
    }
    let v = ask(br#"{"id":6,"op":"ping"}"#);
    assert_eq!(v["ok"], true);
    assert_alive(&e);
}
