//! Media fork against a WebSocket service inside the test, on loopback: start message,
//! forked tones (Goertzel), pacing, bot audio back, text passed on untouched, barge-in, a
//! stalled service, junk, reconnects and TLS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard_engine::fork::{
    ForkConfig, ForkHandle, ForkLeg, ForkMediaSide, ForkSession, ForkWhat, ReconnectPolicy,
    StartMessage, pipes,
};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const LIMIT: Duration = Duration::from_secs(10);

type ServerWs = WebSocketStream<TcpStream>;

/// Relative power of `freq` in `x` (Goertzel), normalised by the signal energy.
fn goertzel(x: &[i16], rate: u32, freq: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * freq / f64::from(rate);
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    let mut energy = 0.0;
    for &v in x {
        let v = f64::from(v);
        energy += v * v;
        let s = v + coeff * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    if energy == 0.0 {
        0.0
    } else {
        power / (energy * x.len() as f64 / 2.0)
    }
}

fn sine(rate: u32, freq: f64, n: usize, offset: usize) -> Vec<i16> {
    (0..n)
        .map(|i| {
            let t = (i + offset) as f64 / f64::from(rate);
            (8000.0 * (2.0 * std::f64::consts::PI * freq * t).sin()) as i16
        })
        .collect()
}

fn le_bytes(x: &[i16]) -> Vec<u8> {
    x.iter().flat_map(|s| s.to_le_bytes()).collect()
}

fn samples(b: &[u8]) -> Vec<i16> {
    b.chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect()
}

async fn listener(recv_buffer: Option<u32>) -> TcpListener {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size).unwrap();
    }
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    socket.listen(8).unwrap()
}

async fn accept(l: &TcpListener) -> ServerWs {
    let (tcp, _) = timeout(LIMIT, l.accept()).await.unwrap().unwrap();
    tokio_tungstenite::accept_async(tcp).await.unwrap()
}

/// The next text message, skipping pings.
async fn next_text(ws: &mut ServerWs) -> Value {
    loop {
        match timeout(LIMIT, ws.next()).await.unwrap().unwrap().unwrap() {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Binary(_) | Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

struct Fork {
    handle: ForkHandle,
    events: mpsc::Receiver<Value>,
    seen: Vec<Value>,
}

impl Fork {
    fn start(config: ForkConfig, what: ForkWhat) -> (Self, ForkMediaSide) {
        let start = StartMessage {
            fork: config.id.clone(),
            call: "call-1".into(),
            legs: vec![
                ForkLeg {
                    id: "leg-a".into(),
                    role: "caller".into(),
                    codec: "PCMU/8000".into(),
                },
                ForkLeg {
                    id: "leg-b".into(),
                    role: "agent".into(),
                    codec: "G722/8000".into(),
                },
            ],
            what,
            sample_rate: config.sample_rate,
            bot_leg: Some("leg-a".into()),
            metadata: json!({"queue": "support", "lang": "en"}),
        }
        .to_json();
        let (media, session) = pipes(&config, 1000, 4000);
        let (tx, events) = mpsc::channel(1024);
        let handle = ForkSession::spawn(
            &tokio::runtime::Handle::current(),
            config,
            start,
            session,
            tx,
        )
        .unwrap();
        (
            Self {
                handle,
                events,
                seen: Vec::new(),
            },
            media,
        )
    }

    /// Waits for the next event named `name`, keeping every event seen.
    async fn event(&mut self, name: &str) -> Value {
        let deadline = Instant::now() + LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let e = timeout(left, self.events.recv())
                .await
                .unwrap_or_else(|_| {
                    let tail = &self.seen[self.seen.len().saturating_sub(4)..];
                    panic!("no {name} event; last seen {tail:?}")
                })
                .unwrap();
            self.seen.push(e.clone());
            if e["event"] == name {
                return e;
            }
        }
    }
}

fn config(addr: SocketAddr, rate: u32, channels: u16) -> ForkConfig {
    let mut c = ForkConfig::new("fork-1", format!("ws://{addr}/bot"), rate, channels);
    c.stats_interval = Duration::from_millis(200);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_sends_start_and_paced_stereo_tone_frames() {
    let l = listener(None).await;
    let addr = l.local_addr().unwrap();
    let rate = 16000;
    let (mut fork, media) = Fork::start(config(addr, rate, 2), ForkWhat::Stereo);
    let mut ws = accept(&l).await;

    let start = next_text(&mut ws).await;
    assert_eq!(start["event"], "start");
    assert_eq!(start["version"], 1);
    assert_eq!(start["call"], "call-1");
    assert_eq!(start["what"], "stereo");
    assert_eq!(start["audio"]["sample_rate"], 16000);
    assert_eq!(start["audio"]["channels"], 2);
    assert_eq!(start["audio"]["frame_bytes"], 1280);
    assert_eq!(start["legs"][1]["codec"], "G722/8000");
    assert_eq!(start["metadata"]["queue"], "support");
    assert_eq!(start["reconnects"], 0);
    fork.event("fork.connected").await;

    // The "worker": 50 frames, one every 20 ms; caller 440 Hz left, agent 1004 Hz right.
    const FRAMES: usize = 50;
    let mut audio = media.audio;
    let worker = std::thread::spawn(move || {
        let n = 320;
        let start = Instant::now();
        let mut ok = 0;
        for f in 0..FRAMES {
            let left = sine(rate, 440.0, n, f * n);
            let right = sine(rate, 1004.0, n, f * n);
            let frame: Vec<i16> = left
                .iter()
                .zip(&right)
                .flat_map(|(&a, &b)| [a, b])
                .collect();
            if audio.push_frame(&frame) {
                ok += 1;
            }
            let next = start + Duration::from_millis(20 * (f as u64 + 1));
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        (ok, audio)
    });

    let mut arrivals = Vec::new();
    let mut left = Vec::new();
    let mut right = Vec::new();
    while arrivals.len() < FRAMES {
        match timeout(LIMIT, ws.next()).await.unwrap().unwrap().unwrap() {
            Message::Binary(b) => {
                assert_eq!(b.len(), 1280, "one 20 ms stereo frame per message");
                arrivals.push(Instant::now());
                for pair in samples(&b).chunks_exact(2) {
                    left.push(pair[0]);
                    right.push(pair[1]);
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let (pushed, _audio) = worker.join().unwrap();
    assert_eq!(pushed, FRAMES);
    // Tones on the right channels, continuous across frames.
    assert!(goertzel(&left, rate, 440.0) > 0.9);
    assert!(goertzel(&left, rate, 1004.0) < 0.01);
    assert!(goertzel(&right, rate, 1004.0) > 0.9);
    assert!(goertzel(&right, rate, 440.0) < 0.01);
    assert_eq!(left, sine(rate, 440.0, FRAMES * 320, 0));
    // Paced at 20 ms, not in a burst (loose bounds: shared machines are noisy).
    let span = arrivals[FRAMES - 1] - arrivals[0];
    assert!(
        span >= Duration::from_millis(700) && span <= Duration::from_millis(3000),
        "{span:?}"
    );

    fork.handle.stop();
    let stop = next_text(&mut ws).await;
    assert_eq!(stop, json!({"event": "stop", "reason": "stopped"}));
    match timeout(LIMIT, ws.next()).await.unwrap() {
        Some(Ok(Message::Close(Some(f)))) => assert_eq!(f.code, CloseCode::Normal),
        other => panic!("expected close, got {other:?}"),
    }
    let stopped = fork.event("fork.stopped").await;
    assert_eq!(stopped["reason"], "stopped");
    let stats = fork
        .seen
        .iter()
        .rev()
        .find(|e| e["event"] == "fork.stats")
        .unwrap();
    assert_eq!(stats["frames_sent"], FRAMES);
    assert_eq!(stats["frames_queued"], FRAMES);
    assert_eq!(stats["frames_dropped_late"], 0);
    assert_eq!(stats["frames_dropped_ring_full"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_plays_bot_audio_and_passes_text_untouched() {
    let l = listener(None).await;
    let rate = 8000;
    let (mut fork, mut media) =
        Fork::start(config(l.local_addr().unwrap(), rate, 1), ForkWhat::Caller);
    let mut ws = accept(&l).await;
    assert_eq!(next_text(&mut ws).await["audio"]["channels"], 1);

    // Text: passed on byte for byte, even when it is not JSON.
    let texts = [
        r#"{"type":"transcript","text":"héllo wörld","final":true,  "n":1.50}"#,
        "plain text, not JSON ✓",
    ];
    for t in texts {
        ws.send(Message::text(t)).await.unwrap();
        let e = fork.event("fork.message").await;
        assert_eq!(e["text"], t);
        assert_eq!(e["fork"], "fork-1");
    }

    // 0.5 s of 700 Hz in uneven messages (330 ms + 170 ms): 25 whole frames.
    let bot = sine(rate, 700.0, 4000, 0);
    ws.send(Message::binary(le_bytes(&bot[..2640])))
        .await
        .unwrap();
    ws.send(Message::binary(le_bytes(&bot[2640..])))
        .await
        .unwrap();
    let mut played = Vec::new();
    let mut frame = [0i16; 160];
    let deadline = Instant::now() + LIMIT;
    while played.len() < 4000 && Instant::now() < deadline {
        if media.bot.pop_frame(&mut frame) {
            played.extend_from_slice(&frame);
        } else {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert_eq!(played, bot);
    assert!(goertzel(&played, rate, 700.0) > 0.9);

    // A trailing partial frame is padded with silence once the service pauses.
    ws.send(Message::binary(le_bytes(&bot[..100])))
        .await
        .unwrap();
    let deadline = Instant::now() + LIMIT;
    while !media.bot.pop_frame(&mut frame) {
        assert!(Instant::now() < deadline, "padded frame never came");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(&frame[..100], &bot[..100]);
    assert!(frame[100..].iter().all(|&s| s == 0));
    assert_eq!(fork.handle.shared().bot_frames_played(), 26);
    fork.handle.stop();
    fork.event("fork.stopped").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_barge_in_stops_bot_audio_and_tells_the_service() {
    let l = listener(None).await;
    let rate = 8000;
    let (mut fork, mut media) =
        Fork::start(config(l.local_addr().unwrap(), rate, 1), ForkWhat::Caller);
    let mut ws = accept(&l).await;
    next_text(&mut ws).await;

    // The bot talks for 2 s; the caller interrupts after 100 ms of it.
    let bot = sine(rate, 500.0, 16000, 0);
    for chunk in bot.chunks(4000) {
        ws.send(Message::binary(le_bytes(chunk))).await.unwrap();
    }
    let mut frame = [0i16; 160];
    let mut played = 0;
    let deadline = Instant::now() + LIMIT;
    while played < 5 {
        assert!(Instant::now() < deadline);
        if media.bot.pop_frame(&mut frame) {
            played += 1;
        } else {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    // Wait until all of it is queued, then barge in from the media side.
    let deadline = Instant::now() + LIMIT;
    while fork.event("fork.stats").await["bot_samples"] != 16000 {
        assert!(Instant::now() < deadline, "bot audio never queued");
    }
    let discarded = media.bot.barge_in();
    assert_eq!(discarded, 16000 - 5 * 160);
    assert!(!media.bot.pop_frame(&mut frame), "bot audio stops at once");
    assert_eq!(next_text(&mut ws).await, json!({"event": "barge_in"}));
    let e = fork.event("fork.barge_in").await;
    assert_eq!(e["source"], "media");

    // Barge-in from control: audio queued before it is discarded on the next frame.
    ws.send(Message::binary(le_bytes(&bot[..1600])))
        .await
        .unwrap();
    let deadline = Instant::now() + LIMIT;
    while !media.bot.has_audio() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(fork.handle.barge_in());
    assert_eq!(next_text(&mut ws).await, json!({"event": "barge_in"}));
    assert_eq!(fork.event("fork.barge_in").await["source"], "control");
    assert!(!media.bot.pop_frame(&mut frame));
    assert!(!media.bot.has_audio() || !media.bot.pop_frame(&mut frame));
    fork.handle.stop();
    fork.event("fork.stopped").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_stalled_service_never_blocks_media() {
    // A tiny receive window on the service and a small send buffer on the fork: a service
    // that stops reading backs the connection up within a fraction of a second.
    let l = listener(Some(4096)).await;
    let rate = 16000;
    let mut c = config(l.local_addr().unwrap(), rate, 2);
    c.socket_send_buffer = Some(8192);
    let (mut fork, media) = Fork::start(c, ForkWhat::Stereo);
    let mut ws = accept(&l).await;
    next_text(&mut ws).await;
    fork.event("fork.connected").await;

    // The service stops reading. The worker goes on for 3 s at 20 ms pace.
    let mut audio = media.audio;
    let worker = std::thread::spawn(move || {
        let frame = sine(rate, 440.0, 640, 0);
        let start = Instant::now();
        let mut pushed = 0;
        let mut slowest = Duration::ZERO;
        for f in 0..150u64 {
            let t = Instant::now();
            if audio.push_frame(&frame) {
                pushed += 1;
            }
            slowest = slowest.max(t.elapsed());
            let next = start + Duration::from_millis(20 * (f + 1));
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        // A burst far beyond the ring: returns at once, drops counted.
        let t = Instant::now();
        let burst = (0..10_000).filter(|_| audio.push_frame(&frame)).count();
        (pushed, slowest, t.elapsed(), burst, audio)
    });
    let (pushed, slowest, burst_time, burst, audio) = worker.join().unwrap();
    assert_eq!(
        pushed, 150,
        "every paced frame was taken: zero loss on the media side"
    );
    assert!(slowest < Duration::from_millis(50), "{slowest:?}");
    assert!(burst < 10_000);
    assert!(burst_time < Duration::from_secs(2), "{burst_time:?}");

    let deadline = Instant::now() + LIMIT;
    let stats = loop {
        let s = fork.event("fork.stats").await;
        if s["frames_dropped_ring_full"].as_u64().unwrap() > 0 {
            break s;
        }
        assert!(Instant::now() < deadline, "no drops reported");
    };
    assert!(
        stats["frames_dropped_late"].as_u64().unwrap() > 0,
        "{stats}"
    );
    let sent = stats["frames_sent"].as_u64().unwrap();
    assert!(sent < 150, "the stalled service took everything: {stats}");
    assert_eq!(
        stats["frames_dropped_ring_full"].as_u64().unwrap(),
        10_000 - burst as u64
    );

    // The service reads again: the fork recovers and frames flow.
    drop(audio);
    let mut binary = 0;
    while let Ok(Some(Ok(m))) = timeout(Duration::from_secs(3), ws.next()).await {
        match m {
            Message::Binary(b) => {
                assert_eq!(b.len(), 1280);
                binary += 1;
            }
            Message::Text(t) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                assert_eq!(v["reason"], "media_ended");
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    assert!(binary > 0);
    let stopped = fork.event("fork.stopped").await;
    assert_eq!(stopped["reason"], "media_ended");
    let last = fork
        .seen
        .iter()
        .rev()
        .find(|e| e["event"] == "fork.stats")
        .unwrap()
        .clone();
    let accounted = last["frames_sent"].as_u64().unwrap()
        + last["frames_dropped_late"].as_u64().unwrap()
        + last["frames_dropped_backpressure"].as_u64().unwrap();
    assert_eq!(
        accounted,
        last["frames_queued"].as_u64().unwrap(),
        "every queued frame is sent or counted: {last}"
    );
}

async fn junk_case(junk: Message, reason: &str, code: CloseCode) {
    let l = listener(None).await;
    let mut c = config(l.local_addr().unwrap(), 8000, 1);
    c.limits.max_text_bytes = 1000;
    c.limits.max_binary_bytes = 3200;
    c.limits.max_messages_per_second = 50;
    let (mut fork, _media) = Fork::start(c, ForkWhat::Caller);
    let mut ws = accept(&l).await;
    next_text(&mut ws).await;
    if reason == "rate_exceeded" {
        for i in 0..60 {
            let _ = ws.send(Message::text(format!("{i}"))).await;
        }
    } else {
        ws.send(junk).await.unwrap();
    }
    let e = fork.event("fork.error").await;
    assert_eq!(e["reason"], reason, "{e}");
    assert_eq!(e["fatal"], true);
    let stopped = fork.event("fork.stopped").await;
    assert_eq!(stopped["reason"], reason);
    // The service sees the close code; nothing reconnects.
    let mut closed = None;
    while let Ok(Some(Ok(m))) = timeout(LIMIT, ws.next()).await {
        if let Message::Close(f) = m {
            closed = f;
            break;
        }
    }
    let f = closed.expect("a close frame");
    assert_eq!(f.code, code);
    assert_eq!(f.reason.as_str(), reason);
    assert!(
        timeout(Duration::from_millis(500), l.accept())
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_cuts_off_a_service_that_sends_junk() {
    junk_case(
        Message::binary(vec![1u8; 321]),
        "odd_binary_length",
        CloseCode::Unsupported,
    )
    .await;
    junk_case(
        Message::text("x".repeat(1001)),
        "text_too_large",
        CloseCode::Size,
    )
    .await;
    junk_case(
        Message::binary(vec![0u8; 3202]),
        "binary_too_large",
        CloseCode::Size,
    )
    .await;
    junk_case(
        Message::binary(vec![0u8; 100_000]),
        "message_too_large",
        CloseCode::Size,
    )
    .await;
    junk_case(Message::text("x"), "rate_exceeded", CloseCode::Policy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_reconnects_after_service_restart() {
    let l = listener(None).await;
    let addr = l.local_addr().unwrap();
    let mut c = config(addr, 8000, 1);
    c.reconnect = ReconnectPolicy {
        initial_delay: Duration::from_millis(100),
        max_delay: Duration::from_millis(400),
        max_attempts: 20,
        stable_after: Duration::from_secs(10),
    };
    let (mut fork, mut media) = Fork::start(c, ForkWhat::Caller);
    let mut ws = accept(&l).await;
    assert_eq!(next_text(&mut ws).await["reconnects"], 0);
    // The service goes away without a closing handshake, and is down for 600 ms.
    drop(ws);
    drop(l);
    let e = fork.event("fork.error").await;
    assert_eq!(e["reason"], "connection_lost");
    assert_eq!(e["fatal"], false);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let l = TcpListener::bind(addr).await.unwrap();
    let mut ws = accept(&l).await;
    let start = next_text(&mut ws).await;
    assert_eq!(start["event"], "start");
    assert!(start["reconnects"].as_u64().unwrap() >= 1);
    fork.event("fork.connected").await;
    // Audio flows on the new connection.
    assert!(media.audio.push_frame(&[100; 160]));
    loop {
        match timeout(LIMIT, ws.next()).await.unwrap().unwrap().unwrap() {
            Message::Binary(b) => {
                assert_eq!(samples(&b), vec![100; 160]);
                break;
            }
            _ => continue,
        }
    }
    // A normal close by the service ends the fork without reconnecting.
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "done".into(),
    }))
    .await
    .unwrap();
    let stopped = fork.event("fork.stopped").await;
    assert_eq!(stopped["reason"], "service_closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_wss_speaks_tls_and_gives_up_after_bounded_attempts() {
    // A plain TCP server: the fork's first bytes must be a TLS ClientHello (record type 22).
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let mut hellos = 0;
        while let Ok(Ok((mut tcp, _))) = timeout(Duration::from_secs(3), l.accept()).await {
            let mut b = [0u8; 3];
            use tokio::io::AsyncReadExt;
            if tcp.read_exact(&mut b).await.is_ok() && b == [0x16, 0x03, 0x01] {
                hellos += 1;
            }
            // Not TLS back: the handshake fails.
            use tokio::io::AsyncWriteExt;
            let _ = tcp.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        }
        hellos
    });
    let mut c = ForkConfig::new(
        "fork-tls",
        format!("wss://localhost:{}/", addr.port()),
        8000,
        1,
    );
    c.reconnect = ReconnectPolicy {
        initial_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(50),
        max_attempts: 2,
        stable_after: Duration::from_secs(10),
    };
    let (mut fork, _media) = Fork::start(c, ForkWhat::Caller);
    let stopped = fork.event("fork.stopped").await;
    assert_eq!(stopped["reason"], "gave_up");
    let errors: Vec<&Value> = fork
        .seen
        .iter()
        .filter(|e| e["event"] == "fork.error")
        .collect();
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(errors.iter().all(|e| e["reason"] == "connect_failed"));
    assert_eq!(errors[2]["fatal"], true);
    assert!(errors[0]["fatal"] == false);
    assert_eq!(server.await.unwrap(), 3);
}
