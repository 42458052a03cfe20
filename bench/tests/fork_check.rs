//! The `fork` scenario against a fake engine: the fake relays each call's media without loss
//! and, per `fork.start`, connects to the harness's sink as a fork does (start message, then
//! one binary frame every 20 ms, every 10th skipped: a known 10 % loss; a `stop` message when
//! the call is deleted). The harness must report that loss, no media loss of the parties, one
//! valid start message per call, and with `--bot-audio` the sink's frames must reach the fake.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard_bench::cli::{Progress, TargetArgs};
use switchboard_bench::fork::{self, ForkArgs, What};
use switchboard_bench::mix::MixArgs;
use switchboard_bench::ramp::RampArgs;
use tokio_tungstenite::tungstenite::{self, Message};

fn quiet() -> Progress {
    Progress {
        enabled: false,
        every: Duration::from_secs(5),
    }
}

/// What the fake saw.
#[derive(Default)]
struct Seen {
    forks: AtomicU64,
    analytics: AtomicU64,
    bot_frames: AtomicU64,
    deleted: AtomicU64,
}

/// One fork of the fake: connects to `url`, sends the start message and a frame every 20 ms
/// (skipping every 10th) until `stop`, then a stop message and a close.
fn fake_fork(url: String, call: String, rate: u32, stop: Arc<AtomicBool>, seen: Arc<Seen>) {
    let addr = url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let stream = TcpStream::connect(&addr).unwrap();
    let (mut ws, _) = tungstenite::client::client(url.as_str(), stream).unwrap();
    let frame_bytes = rate / 50 * 2 * 2;
    let start = json!({
        "event": "start", "version": 1, "fork": "fork-1", "call": call,
        "legs": [], "what": "stereo",
        "audio": {"encoding": "L16", "byte_order": "little-endian", "sample_rate": rate,
                  "channels": 2, "layout": ["caller", "agent"], "frame_ms": 20,
                  "frame_bytes": frame_bytes},
        "bot_audio": {"encoding": "L16", "byte_order": "little-endian", "sample_rate": rate,
                      "channels": 1, "leg": "leg1"},
        "metadata": null, "reconnects": 0,
    });
    ws.send(Message::text(start.to_string())).unwrap();
    ws.get_mut()
        .set_read_timeout(Some(Duration::from_millis(1)))
        .unwrap();
    let frame = vec![0u8; frame_bytes as usize];
    let t0 = Instant::now();
    let mut k = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let due = t0 + Duration::from_millis(20 * k);
        if Instant::now() >= due {
            k += 1;
            if k % 10 != 0 {
                ws.send(Message::binary(frame.clone())).unwrap();
            }
        }
        match ws.read() {
            Ok(Message::Binary(b)) => {
                assert_eq!(b.len(), (rate / 50 * 2) as usize);
                seen.bot_frames.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("fake fork: {e}"),
        }
    }
    let _ = ws.send(Message::text(r#"{"event":"stop","reason":"stopped"}"#));
    let _ = ws.close(None);
    let _ = ws.flush();
}

/// A fake native engine: `call.create`, `leg.create` (a socket per leg; every leg gets 50
/// frames/s, none lost), `fork.start` (a fake fork thread), `analytics.start`, `call.delete`
/// (stops the call's forks).
fn fake_engine(stop: Arc<AtomicBool>, seen: Arc<Seen>) -> (SocketAddr, thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = thread::spawn(move || {
        listener.set_nonblocking(true).unwrap();
        let mut conn: Option<(TcpStream, BufReader<TcpStream>)> = None;
        let mut legs: Vec<(UdpSocket, SocketAddr, u16)> = Vec::new();
        let mut forks: Vec<(String, Arc<AtomicBool>, thread::JoinHandle<()>)> = Vec::new();
        let mut line = String::new();
        let start = Instant::now();
        let mut frames_due = 0u64;
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            // One control connection per run: take the next when the last one closed.
            if conn.is_none() {
                match listener.accept() {
                    Ok((c, _)) => {
                        c.set_nonblocking(false).unwrap();
                        c.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
                        conn = Some((c.try_clone().unwrap(), BufReader::new(c)));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
            let read = match &mut conn {
                Some((_, reader)) => reader.read_line(&mut line),
                None => Err(std::io::ErrorKind::WouldBlock.into()),
            };
            match read {
                Ok(0) => {
                    conn = None;
                    line.clear();
                }
                Ok(_) if line.ends_with('\n') => {
                    let req: Value = serde_json::from_str(&line).unwrap();
                    line.clear();
                    let id = req["id"].clone();
                    let op = req["op"].as_str().unwrap();
                    let out = match op {
                        "call.create" => json!({"id": id, "ok": true, "call": req["call"]}),
                        "leg.create" => {
                            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                            s.set_nonblocking(true).unwrap();
                            let local = s.local_addr().unwrap();
                            let remote = req["remote"].as_str().unwrap().parse().unwrap();
                            legs.push((s, remote, 0));
                            json!({"id": id, "ok": true, "leg": format!("leg{}", legs.len()), "local": local.to_string(), "sdp": ""})
                        }
                        "fork.start" => {
                            assert_eq!(req["what"], "stereo");
                            assert!(req["caller"].is_string() && req["agent"].is_string());
                            assert_eq!(req["to"], req["caller"], "--bot-audio plays to the caller");
                            let call = req["call"].as_str().unwrap().to_string();
                            let url = req["url"].as_str().unwrap().to_string();
                            let rate = req["rate"].as_u64().unwrap() as u32;
                            let flag = Arc::new(AtomicBool::new(false));
                            let (f, s) = (flag.clone(), seen.clone());
                            let c = call.clone();
                            let t = thread::spawn(move || fake_fork(url, c, rate, f, s));
                            forks.push((call.clone(), flag, t));
                            seen.forks.fetch_add(1, Ordering::Relaxed);
                            json!({"id": id, "ok": true, "call": call, "fork": "fork-1"})
                        }
                        "analytics.start" => {
                            assert_eq!(req["interval_ms"], 0);
                            seen.analytics.fetch_add(1, Ordering::Relaxed);
                            json!({"id": id, "ok": true, "call": req["call"]})
                        }
                        "call.delete" => {
                            seen.deleted.fetch_add(1, Ordering::Relaxed);
                            for (call, flag, _) in &forks {
                                if Some(call.as_str()) == req["call"].as_str() {
                                    flag.store(true, Ordering::Relaxed);
                                }
                            }
                            json!({"id": id, "ok": true, "call": req["call"]})
                        }
                        other => panic!("unexpected op {other}"),
                    };
                    if let Some((writer, _)) = &mut conn {
                        writeln!(writer, "{out}").unwrap();
                    }
                }
                _ => {}
            }
            for (s, ..) in &legs {
                while s.recv(&mut buf).is_ok() {}
            }
            let due = start.elapsed().as_millis() as u64 / 20;
            while frames_due < due {
                frames_due += 1;
                for (s, remote, seq) in &mut legs {
                    let this = *seq;
                    *seq = seq.wrapping_add(1);
                    let mut packet = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
                    packet[2..4].copy_from_slice(&this.to_be_bytes());
                    packet[4..8].copy_from_slice(&(u32::from(this) * 160).to_be_bytes());
                    packet.extend_from_slice(&[0xff; 160]);
                    let _ = s.send_to(&packet, *remote);
                }
            }
        }
        for (_, flag, t) in forks {
            flag.store(true, Ordering::Relaxed);
            t.join().unwrap();
        }
    });
    (addr, handle)
}

fn fork_args(control: SocketAddr, analytics: bool) -> ForkArgs {
    ForkArgs {
        common: MixArgs {
            target: TargetArgs {
                ng: "127.0.0.1:9".parse().unwrap(),
                pid: Some(std::process::id()),
                control: Some(control),
                compare: false,
                ng_b: None,
                control_b: None,
                pid_b: None,
                rounds: 1,
                local_ip: "127.0.0.1".parse().unwrap(),
                name: None,
                name_b: None,
                media: None,
            },
            calls: 2,
            duration: 1.0,
            ramp_up: 0.1,
            threads: 1,
            tick_us: 500,
            ramp: RampArgs::default(),
        },
        what: What::Stereo,
        rate: 8000,
        bot_audio: true,
        analytics,
    }
}

#[test]
fn fork_reports_the_forks_loss_and_no_media_loss() {
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Seen::default());
    let (control, fake) = fake_engine(stop.clone(), seen.clone());
    let outcome = fork::run(&fork_args(control, true), quiet()).unwrap();
    stop.store(true, Ordering::Relaxed);
    fake.join().unwrap();
    assert_eq!(seen.forks.load(Ordering::Relaxed), 4, "2 calls × A and B");
    assert_eq!(seen.analytics.load(Ordering::Relaxed), 2, "B only");
    assert_eq!(seen.deleted.load(Ordering::Relaxed), 4);
    assert!(
        seen.bot_frames.load(Ordering::Relaxed) > 20,
        "bot audio reached the fork"
    );
    assert_eq!(outcome.figures.len(), 2);
    for f in &outcome.figures {
        assert_eq!(f.forks, 2);
        assert_eq!(f.sink.starts, 2, "{f:?}");
        assert_eq!(f.sink.bad_starts, 0);
        assert_eq!(f.sink.wrong_size, 0);
        assert_eq!(f.sink.stops, 2, "{f:?}");
        assert_eq!(f.frames_expected, 100);
        assert!(
            (0.05..=0.2).contains(&f.frame_loss),
            "a tenth of the frames are missing: {f:?}"
        );
        // 8 kHz stereo: 640 bytes per frame, 45 frames a second.
        assert!(
            (25_000.0..=31_000.0).contains(&f.bytes_per_stream_s),
            "{f:?}"
        );
        assert_eq!(f.party_lost, 0, "{f:?}");
        assert!(f.cpu_us_per_stream_s.is_some() && f.cpu_us_per_frame.is_some());
        assert!(f.sink.bot_frames > 0);
    }
    assert!(fork::analytics_cost(&outcome.figures).is_some());
    let text = outcome.text();
    assert!(text.contains("fork figures"), "{text}");
    assert!(text.contains("analytics added"), "{text}");
    let json = outcome.report.to_json();
    assert!(json.contains("\"fork\""), "{json}");
}

#[test]
fn fork_refuses_compare_and_odd_rates() {
    let mut args = fork_args("127.0.0.1:9".parse().unwrap(), false);
    args.rate = 44_100;
    let err = format!("{:#}", fork::run(&args, quiet()).unwrap_err());
    assert!(err.contains("--rate"), "{err}");
    let mut args = fork_args("127.0.0.1:9".parse().unwrap(), false);
    args.common.target.compare = true;
    let err = format!("{:#}", fork::run(&args, quiet()).unwrap_err());
    assert!(err.contains("--compare"), "{err}");
}
