//! The harness against a fake NG relay on loopback: the NG client's retries and cookie matching,
//! and a whole `relay` run whose loss and duplicates are known because the fake makes them.
// Helpers outside `#[test]` functions panic on failure too: this file is a test.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard_bench::cli::{Progress, TargetArgs};
use switchboard_bench::ng::{CallIds, NgClient, NgConfig};
use switchboard_bench::relay::{self, RelayArgs, SocketMode};
use switchboard_bench::sdp;

fn quick() -> NgConfig {
    NgConfig {
        timeout: Duration::from_millis(100),
        tries: 3,
    }
}

fn ids(n: u32) -> CallIds {
    CallIds {
        call_id: format!("call-{n}"),
        from_tag: "a".into(),
        to_tag: "b".into(),
    }
}

/// Splits `COOKIE {json}`.
fn split(datagram: &[u8]) -> (String, Value) {
    let text = std::str::from_utf8(datagram).unwrap();
    let (cookie, body) = text.split_once(' ').unwrap();
    (cookie.to_string(), serde_json::from_str(body).unwrap())
}

fn reply(socket: &UdpSocket, to: SocketAddr, cookie: &str, body: Value) {
    socket
        .send_to(format!("{cookie} {body}").as_bytes(), to)
        .unwrap();
}

#[test]
fn ng_client_retries_skips_stale_replies_and_reports_errors() {
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let addr = server.local_addr().unwrap();
    let fake = thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut seen = Vec::new();
        let mut dropped_once = false;
        while let Ok((len, from)) = server.recv_from(&mut buf) {
            let (cookie, req) = split(&buf[..len]);
            let command = req["command"].as_str().unwrap().to_string();
            seen.push((cookie.clone(), command.clone()));
            match command.as_str() {
                "ping" => reply(&server, from, &cookie, json!({"result": "pong"})),
                "offer" if !dropped_once => dropped_once = true,
                "offer" => {
                    // A stale reply first: the client must skip it.
                    reply(
                        &server,
                        from,
                        "stale_0",
                        json!({"result": "ok", "sdp": "x"}),
                    );
                    let sdp = sdp::audio_sdp("127.0.0.1".parse().unwrap(), 30_052, 1, 20);
                    reply(&server, from, &cookie, json!({"result": "ok", "sdp": sdp}));
                }
                "answer" => reply(
                    &server,
                    from,
                    &cookie,
                    json!({"result": "error", "error-reason": "Unknown call-id"}),
                ),
                "delete" => {
                    reply(&server, from, &cookie, json!({"result": "ok"}));
                    break;
                }
                _ => {}
            }
        }
        seen
    });
    let mut ng = NgClient::new("127.0.0.1".parse().unwrap(), addr, quick()).unwrap();
    ng.ping().unwrap();
    let offered = ng.offer(&ids(1), "v=0\r\n").unwrap();
    assert_eq!(
        sdp::audio_endpoint(&offered).unwrap(),
        "127.0.0.1:30052".parse().unwrap()
    );
    let err = ng.answer(&ids(1), "v=0\r\n").unwrap_err().to_string();
    assert!(err.contains("Unknown call-id"), "{err}");
    ng.delete(&ids(1)).unwrap();
    let stats = ng.stats();
    assert_eq!((stats.requests, stats.retries, stats.failures), (4, 1, 0));
    let seen = fake.join().unwrap();
    // The retried offer reused its cookie; every request had its own.
    assert_eq!(seen[1], seen[2]);
    let mut cookies: Vec<_> = seen.iter().map(|(c, _)| c.clone()).collect();
    cookies.dedup();
    assert_eq!(cookies.len(), 4);
}

#[test]
fn ng_client_gives_up_after_its_tries() {
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut ng = NgClient::new(
        "127.0.0.1".parse().unwrap(),
        silent.local_addr().unwrap(),
        NgConfig {
            timeout: Duration::from_millis(30),
            tries: 2,
        },
    )
    .unwrap();
    let started = Instant::now();
    let err = ng.ping().unwrap_err().to_string();
    assert!(err.contains("no reply after 2 tries"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(ng.stats().failures, 1);
}

/// Media state of one fake call: the relay's two sockets and the peers they face.
struct FakeCall {
    /// Faces A: A sends here; B→A goes out from here.
    to_a: UdpSocket,
    /// Faces B.
    to_b: UdpSocket,
    a: SocketAddr,
    b: Option<SocketAddr>,
}

/// Counters of what the fake relay did to the media.
#[derive(Default)]
struct Tampering {
    dropped: AtomicU64,
    duplicated: AtomicU64,
    forwarded: AtomicU64,
}

/// A fake NG relay: answers offer/answer/delete, forwards RTP both ways, drops every 10th
/// A→B packet and sends every 7th B→A packet twice.
fn fake_relay(
    stop: Arc<AtomicBool>,
    tamper: Arc<Tampering>,
) -> (SocketAddr, thread::JoinHandle<u64>) {
    let ng = UdpSocket::bind("127.0.0.1:0").unwrap();
    ng.set_nonblocking(true).unwrap();
    let addr = ng.local_addr().unwrap();
    let handle = thread::spawn(move || {
        let mut calls: HashMap<String, FakeCall> = HashMap::new();
        let mut deleted = 0;
        let mut buf = [0u8; 65_536];
        let (mut a_to_b, mut b_to_a) = (0u64, 0u64);
        while !stop.load(Ordering::Relaxed) {
            let mut idle = true;
            while let Ok((len, from)) = ng.recv_from(&mut buf) {
                idle = false;
                let (cookie, req) = split(&buf[..len]);
                let call_id = req["call-id"].as_str().unwrap_or_default().to_string();
                match req["command"].as_str().unwrap() {
                    "offer" => {
                        let a = sdp::audio_endpoint(req["sdp"].as_str().unwrap()).unwrap();
                        let call = FakeCall {
                            to_a: UdpSocket::bind("127.0.0.1:0").unwrap(),
                            to_b: UdpSocket::bind("127.0.0.1:0").unwrap(),
                            a,
                            b: None,
                        };
                        call.to_a.set_nonblocking(true).unwrap();
                        call.to_b.set_nonblocking(true).unwrap();
                        let port = call.to_b.local_addr().unwrap().port();
                        let sdp = sdp::audio_sdp("127.0.0.1".parse().unwrap(), port, 1, 20);
                        calls.insert(call_id, call);
                        reply(&ng, from, &cookie, json!({"result": "ok", "sdp": sdp}));
                    }
                    "answer" => {
                        let call = calls.get_mut(&call_id).unwrap();
                        call.b = Some(sdp::audio_endpoint(req["sdp"].as_str().unwrap()).unwrap());
                        let port = call.to_a.local_addr().unwrap().port();
                        let sdp = sdp::audio_sdp("127.0.0.1".parse().unwrap(), port, 1, 20);
                        reply(&ng, from, &cookie, json!({"result": "ok", "sdp": sdp}));
                    }
                    "delete" => {
                        deleted += u64::from(calls.remove(&call_id).is_some());
                        reply(&ng, from, &cookie, json!({"result": "ok"}));
                    }
                    _ => reply(&ng, from, &cookie, json!({"result": "error"})),
                }
            }
            for call in calls.values() {
                let Some(b) = call.b else { continue };
                while let Ok(len) = call.to_a.recv(&mut buf) {
                    idle = false;
                    a_to_b += 1;
                    if a_to_b % 10 == 0 {
                        tamper.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    call.to_b.send_to(&buf[..len], b).unwrap();
                    tamper.forwarded.fetch_add(1, Ordering::Relaxed);
                }
                while let Ok(len) = call.to_b.recv(&mut buf) {
                    idle = false;
                    b_to_a += 1;
                    call.to_a.send_to(&buf[..len], call.a).unwrap();
                    tamper.forwarded.fetch_add(1, Ordering::Relaxed);
                    if b_to_a % 7 == 0 {
                        call.to_a.send_to(&buf[..len], call.a).unwrap();
                        tamper.duplicated.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            if idle {
                thread::sleep(Duration::from_micros(200));
            }
        }
        deleted
    });
    (addr, handle)
}

#[test]
fn relay_run_reports_the_loss_and_duplicates_it_was_given() {
    let stop = Arc::new(AtomicBool::new(false));
    let tamper = Arc::new(Tampering::default());
    let (ng, fake) = fake_relay(stop.clone(), tamper.clone());
    let args = RelayArgs {
        target: TargetArgs {
            ng,
            pid: Some(std::process::id()),
            compare: false,
            ng_b: None,
            pid_b: None,
            rounds: 1,
            local_ip: "127.0.0.1".parse().unwrap(),
            control: None,
            control_b: None,
            name: None,
            name_b: None,
            media: None,
        },
        calls: 4,
        duration: 1.0,
        rate: 50,
        payload_size: 160,
        ramp_up: 0.2,
        threads: 2,
        sockets: SocketMode::PerCall,
        tick_us: 500,
        ramp: Default::default(),
    };
    let progress = Progress {
        enabled: false,
        every: Duration::from_secs(5),
    };
    let report = relay::run(&args, progress).unwrap();
    stop.store(true, Ordering::Relaxed);
    assert_eq!(fake.join().unwrap(), 4, "every call deleted");

    let f = &report.targets[0].figures;
    let p = &f.packets;
    let dropped = tamper.dropped.load(Ordering::Relaxed);
    let duplicated = tamper.duplicated.load(Ordering::Relaxed);
    assert!(dropped > 0 && duplicated > 0);
    // Calls start 0, 50, 100 and 150 ms into the 200 ms ramp-up and send until its end plus
    // 1 s: 4 calls × 2 streams × 50 packets/s × 1.125 s on average.
    assert!((440..=460).contains(&p.sent), "sent {}", p.sent);
    assert_eq!(p.harness_drops, 0);
    assert_eq!(p.lost, dropped);
    assert_eq!(p.duplicates, duplicated);
    assert_eq!(p.received, p.sent - dropped + duplicated);
    assert_eq!(p.invalid, 0);
    assert_eq!(p.misrouted, 0);
    assert_eq!(p.send_failed, 0);
    assert_eq!(f.control.calls_deleted, 4);
    assert!(f.latency_us.count > 0);
    assert!(f.latency_us.p50 < 100_000, "p50 {} µs", f.latency_us.p50);
    // The "target" is this process, so its CPU figure exists.
    assert!(f.target_cpu.is_some());
    let json: Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["targets"][0]["figures"]["packets"]["lost"], dropped);
}

#[test]
fn relay_run_refuses_non_loopback_targets_before_sending() {
    let args = RelayArgs {
        target: TargetArgs {
            ng: "192.0.2.1:2223".parse().unwrap(),
            pid: None,
            compare: false,
            ng_b: None,
            pid_b: None,
            rounds: 1,
            local_ip: "127.0.0.1".parse().unwrap(),
            control: None,
            control_b: None,
            name: None,
            name_b: None,
            media: None,
        },
        calls: 1,
        duration: 1.0,
        rate: 50,
        payload_size: 160,
        ramp_up: 0.0,
        threads: 1,
        sockets: SocketMode::Shared,
        tick_us: 100,
        ramp: Default::default(),
    };
    let progress = Progress {
        enabled: false,
        every: Duration::from_secs(5),
    };
    let err = relay::run(&args, progress).unwrap_err().to_string();
    assert!(err.contains("not a loopback"), "{err}");
}
