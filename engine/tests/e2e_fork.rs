//! Media fork through a real engine: two parties send tones over RTP on loopback, a
//! WebSocket service inside the test gets the call's audio (start message, one frame every
//! 20 ms, each party's tone on its own channel), plays bot audio back that the caller hears,
//! is interrupted by the caller (barge-in), and when it stops reading the call's media goes
//! on without a gap while the fork counts its drops.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Engine;
use common::ctl::Ctl;
use common::media::{Party, codec_name, tone_level_db};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const CALLER_HZ: f32 = 500.0;
const AGENT_HZ: f32 = 1100.0;
const BOT_HZ: f64 = 800.0;

/// What the service received.
#[derive(Default)]
struct Received {
    start: Option<Value>,
    frames: Vec<(Instant, Vec<u8>)>,
    texts: Vec<Value>,
}

/// A WebSocket service on loopback: records what it gets, sends what it is given, and
/// stops reading while `stall` is set.
struct Service {
    addr: SocketAddr,
    got: Arc<Mutex<Received>>,
    stall: Arc<AtomicBool>,
    send: tokio::sync::mpsc::UnboundedSender<Message>,
    _rt: tokio::runtime::Runtime,
}

impl Service {
    fn start() -> Service {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        // A small receive buffer, so a service that stops reading holds up little.
        let listener = rt
            .block_on(async {
                let sock = tokio::net::TcpSocket::new_v4()?;
                sock.set_recv_buffer_size(8 * 1024)?;
                sock.bind("127.0.0.1:0".parse().unwrap())?;
                sock.listen(4)
            })
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let got: Arc<Mutex<Received>> = Arc::default();
        let stall = Arc::new(AtomicBool::new(false));
        let (send, mut outbox) = tokio::sync::mpsc::unbounded_channel::<Message>();
        let (g, s) = (got.clone(), stall.clone());
        rt.spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            let (mut tx, mut rx) = ws.split();
            tokio::spawn(async move {
                while let Some(m) = outbox.recv().await {
                    if tx.send(m).await.is_err() {
                        break;
                    }
                }
            });
            loop {
                if s.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                let Some(Ok(m)) = rx.next().await else { break };
                let mut r = g.lock().unwrap();
                match m {
                    Message::Text(t) => {
                        let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                        if r.start.is_none() && v["event"] == "start" {
                            r.start = Some(v);
                        } else {
                            r.texts.push(v);
                        }
                    }
                    Message::Binary(b) => r.frames.push((Instant::now(), b.to_vec())),
                    _ => {}
                }
            }
        });
        Service {
            addr,
            got,
            stall,
            send,
            _rt: rt,
        }
    }

    fn url(&self) -> String {
        format!("ws://{}/bot", self.addr)
    }

    fn wait_start(&self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(s) = self.got.lock().unwrap().start.clone() {
                return s;
            }
            assert!(Instant::now() < deadline, "no start message");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Frames received within the last `window`.
    fn recent_frames(&self, window: Duration) -> Vec<(Instant, Vec<u8>)> {
        let since = Instant::now() - window;
        let r = self.got.lock().unwrap();
        r.frames
            .iter()
            .filter(|(t, _)| *t >= since)
            .cloned()
            .collect()
    }

    fn has_text(&self, event: &str) -> bool {
        self.got
            .lock()
            .unwrap()
            .texts
            .iter()
            .any(|t| t["event"] == event)
    }
}

fn samples(bytes: &[u8]) -> Vec<i16> {
    bytes
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect()
}

struct Call {
    ctl: Ctl,
    id: String,
    caller: Party,
    agent: Party,
}

fn setup(e: &Engine, id: &str) -> Call {
    let mut ctl = Ctl::connect(e.control);
    ctl.ok(json!({"op": "subscribe", "topics": ["media"]}));
    ctl.ok(json!({"op": "call.create", "call": id}));
    let mut caller = Party::new("caller", "PCMU", CALLER_HZ);
    let mut agent = Party::new("agent", "PCMU", AGENT_HZ);
    for p in [&caller, &agent] {
        let r = ctl.ok(json!({
            "op": "leg.create", "call": id, "leg": p.name,
            "codecs": [codec_name(&p.spec)], "remote": p.addr().to_string(),
        }));
        p.set_target(r["local"].as_str().unwrap().parse().unwrap());
    }
    ctl.ok(json!({"op": "leg.hears", "call": id, "leg": "caller", "hears": ["agent"]}));
    ctl.ok(json!({"op": "leg.hears", "call": id, "leg": "agent", "hears": ["caller"]}));
    caller.start();
    agent.start();
    Call {
        ctl,
        id: id.to_owned(),
        caller,
        agent,
    }
}

#[test]
fn fork_streams_stereo_plays_bot_audio_and_barges_in() {
    let e = Engine::start("auto", &[]);
    let svc = Service::start();
    let mut c = setup(&e, "fork-1");
    let r = c.ctl.ok(json!({
        "op": "fork.start", "call": c.id, "url": svc.url(), "what": "stereo", "rate": 16000,
        "caller": "caller", "agent": "agent", "metadata": {"campaign": "x", "n": 7},
    }));
    let fork = r["fork"].as_str().unwrap().to_owned();

    // The start message.
    let start = svc.wait_start();
    assert_eq!(start["call"], "fork-1", "{start}");
    assert_eq!(start["fork"], fork.as_str(), "{start}");
    assert_eq!(start["what"], "stereo");
    assert_eq!(start["audio"]["sample_rate"], 16000);
    assert_eq!(start["audio"]["channels"], 2);
    assert_eq!(start["audio"]["frame_bytes"], 1280);
    assert_eq!(start["metadata"], json!({"campaign": "x", "n": 7}));
    assert_eq!(start["bot_audio"]["leg"], "caller");
    let legs = start["legs"].as_array().unwrap();
    assert_eq!(legs[0]["id"], "caller");
    assert_eq!(legs[0]["role"], "caller");
    assert_eq!(legs[0]["codec"], "PCMU/8000");
    assert_eq!(legs[1]["role"], "agent");

    // Frames: 1280 bytes, one every 20 ms, the caller's tone left, the agent's right.
    std::thread::sleep(Duration::from_millis(1500));
    let frames = svc.recent_frames(Duration::from_millis(1000));
    assert!(
        (44..=56).contains(&frames.len()),
        "{} frames in a second",
        frames.len()
    );
    assert!(frames.iter().all(|(_, f)| f.len() == 1280));
    let gaps: Vec<u128> = frames
        .windows(2)
        .map(|w| w[1].0.duration_since(w[0].0).as_millis())
        .collect();
    assert!(gaps.iter().all(|g| *g < 120), "frame gaps {gaps:?}");
    let pcm: Vec<i16> = frames.iter().flat_map(|(_, f)| samples(f)).collect();
    let left: Vec<i16> = pcm.iter().step_by(2).copied().collect();
    let right: Vec<i16> = pcm.iter().skip(1).step_by(2).copied().collect();
    let l = (
        tone_level_db(&left, 16000, CALLER_HZ),
        tone_level_db(&left, 16000, AGENT_HZ),
    );
    let r = (
        tone_level_db(&right, 16000, AGENT_HZ),
        tone_level_db(&right, 16000, CALLER_HZ),
    );
    assert!(l.0 > -30.0 && l.1 < l.0 - 20.0, "left {l:?}");
    assert!(r.0 > -30.0 && r.1 < r.0 - 20.0, "right {r:?}");

    // Bot audio: the caller is quiet, the service sends 4 s of an 800 Hz tone.
    c.caller.talking.store(false, Ordering::Relaxed);
    c.agent.talking.store(false, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(1200));
    let tone: Vec<i16> = (0..64_000)
        .map(|i| {
            let t = f64::from(i) / 16000.0;
            (8000.0 * (2.0 * std::f64::consts::PI * BOT_HZ * t).sin()) as i16
        })
        .collect();
    for chunk in tone.chunks(8000) {
        let bytes: Vec<u8> = chunk.iter().flat_map(|s| s.to_le_bytes()).collect();
        svc.send.send(Message::Binary(bytes.into())).unwrap();
    }
    std::thread::sleep(Duration::from_millis(1000));
    let heard = c.caller.recent_audio(Duration::from_millis(400));
    let bot = tone_level_db(&heard, c.caller.rate, BOT_HZ as f32);
    assert!(bot > -35.0, "the caller hears the bot at {bot:.1} dB");
    let agent_heard = c.agent.recent_audio(Duration::from_millis(400));
    let leak = tone_level_db(&agent_heard, c.agent.rate, BOT_HZ as f32);
    assert!(leak < -50.0, "the agent hears the bot at {leak:.1} dB");

    // Barge-in: the caller talks; the bot stops at once, service and subscribers are told.
    c.caller.talking.store(true, Ordering::Relaxed);
    let ev = c
        .ctl
        .wait_event("fork.barge_in", Duration::from_secs(3), |_| true);
    assert_eq!(ev["call"], "fork-1", "{ev}");
    assert_eq!(ev["fork"], fork.as_str(), "{ev}");
    assert_eq!(ev["source"], "media", "{ev}");
    std::thread::sleep(Duration::from_millis(500));
    let heard = c.caller.recent_audio(Duration::from_millis(300));
    let bot = tone_level_db(&heard, c.caller.rate, BOT_HZ as f32);
    assert!(
        bot < -50.0,
        "the bot still plays after barge-in ({bot:.1} dB)"
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    while !svc.has_text("barge_in") {
        assert!(
            Instant::now() < deadline,
            "the service was not told of the barge-in"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Text from the service reaches subscribers untouched.
    svc.send
        .send(Message::Text(r#"{"transcript":"hello"}"#.into()))
        .unwrap();
    let ev = c
        .ctl
        .wait_event("fork.message", Duration::from_secs(3), |_| true);
    assert_eq!(ev["text"], r#"{"transcript":"hello"}"#, "{ev}");
    assert_eq!(ev["call"], "fork-1");

    // Stop.
    c.ctl
        .ok(json!({"op": "fork.stop", "call": c.id, "fork": fork}));
    let deadline = Instant::now() + Duration::from_secs(3);
    while !svc.has_text("stop") {
        assert!(Instant::now() < deadline, "no stop message");
        std::thread::sleep(Duration::from_millis(20));
    }
    c.ctl
        .wait_event("fork.stopped", Duration::from_secs(3), |_| true);
    assert_eq!(
        c.ctl
            .err(json!({"op": "fork.stop", "call": c.id, "fork": fork})),
        "not_found"
    );

    // A fork running when its call ends: the service is told the media ended.
    let svc2 = Service::start();
    c.ctl
        .ok(json!({"op": "fork.start", "call": c.id, "url": svc2.url(), "leg": "agent"}));
    let start = svc2.wait_start();
    assert_eq!(start["what"], "caller", "{start}");
    assert_eq!(start["legs"][0]["id"], "agent", "{start}");
    c.ctl.ok(json!({"op": "call.delete", "call": c.id}));
    let deadline = Instant::now() + Duration::from_secs(4);
    loop {
        let reason = svc2
            .got
            .lock()
            .unwrap()
            .texts
            .iter()
            .find(|t| t["event"] == "stop")
            .map(|t| t["reason"].clone());
        if let Some(r) = reason {
            assert_eq!(r, "media_ended");
            break;
        }
        assert!(Instant::now() < deadline, "no stop message at call end");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn stalled_service_never_stalls_media() {
    let e = Engine::start("auto", &[]);
    let svc = Service::start();
    let mut c = setup(&e, "fork-2");
    c.ctl.ok(json!({
        "op": "fork.start", "call": c.id, "url": svc.url(), "what": "mixed", "rate": 8000,
    }));
    let start = svc.wait_start();
    assert_eq!(start["audio"]["frame_bytes"], 320, "{start}");
    // The service stops reading.
    svc.stall.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(500));
    c.agent.clear();
    c.caller.clear();
    std::thread::sleep(Duration::from_secs(3));
    for p in [&c.agent, &c.caller] {
        let h = p.heard.lock().unwrap();
        let n = h.headers.len();
        assert!((140..=160).contains(&n), "{}: {n} packets in 3 s", p.name);
        let gaps = h
            .headers
            .windows(2)
            .filter(|w| w[1].1 != w[0].1.wrapping_add(1))
            .count();
        assert_eq!(gaps, 0, "{}: sequence gaps", p.name);
    }
    let heard = c.agent.recent_audio(Duration::from_millis(1000));
    assert!(tone_level_db(&heard, c.agent.rate, CALLER_HZ) > -30.0);
    // The fork reports its drops.
    let ev = c
        .ctl
        .wait_event("fork.stats", Duration::from_secs(8), |ev| {
            ev["frames_dropped_late"].as_u64().unwrap_or(0)
                + ev["frames_dropped_backpressure"].as_u64().unwrap_or(0)
                + ev["frames_dropped_ring_full"].as_u64().unwrap_or(0)
                > 0
        });
    assert_eq!(ev["call"], "fork-2", "{ev}");
}
