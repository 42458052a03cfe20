//! The live dashboard in a real browser: a `switchboard` process with queues, agents, tasks
//! and NG calls, the page opened in headless Chromium (Debian's `chromium`, driven over its
//! DevTools protocol), the numbers on the page checked against the engine's own (`stats`,
//! `queue.stats`, `agent.list`), the engine changed and the page checked to follow within a
//! few seconds, at most one update a second. A screenshot is kept in
//! `target/artifacts/dashboard.png`.
//!
//! Chromium is required: without it the test fails and says that `make deps` installs it.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Engine, http_get, rtp_packet, sdp, sdp_media_addr, udp};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{self, Message, stream::MaybeTlsStream};

const TOKEN: &str = "dash-t0ken";

/// A native control connection (events are ignored).
struct Ctl {
    r: BufReader<TcpStream>,
    w: TcpStream,
    next: u64,
}

impl Ctl {
    fn connect(addr: SocketAddr) -> Ctl {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Ctl {
            w: s.try_clone().unwrap(),
            r: BufReader::new(s),
            next: 1,
        }
    }

    fn ok(&mut self, mut v: Value) -> Value {
        let id = self.next;
        self.next += 1;
        v["id"] = id.into();
        writeln!(self.w, "{v}").unwrap();
        loop {
            let mut line = String::new();
            self.r.read_line(&mut line).unwrap();
            let r: Value = serde_json::from_str(&line).unwrap();
            if r.get("event").is_some() {
                continue;
            }
            assert_eq!(r["ok"], true, "{v} -> {r}");
            return r;
        }
    }
}

fn chromium() -> PathBuf {
    for p in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!(
        "Chromium is not installed (looked for /usr/bin/chromium): `make deps` installs it \
         (Debian package `chromium`)"
    );
}

/// Headless Chromium with a profile of its own, killed when dropped.
struct Browser {
    child: Child,
    profile: PathBuf,
    ws: tungstenite::WebSocket<MaybeTlsStream<TcpStream>>,
    next: u64,
    session: String,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

impl Browser {
    fn launch() -> Browser {
        let bin = chromium();
        let profile = std::env::temp_dir().join(format!("sb-chromium-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).unwrap();
        let mut child = Command::new(bin)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--remote-debugging-port=0",
                "--window-size=1400,1000",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromium");
        // Chromium writes its DevTools port and path here once it listens.
        let port_file = profile.join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(20);
        let url = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file) {
                let mut lines = text.lines();
                if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                    break format!("ws://127.0.0.1:{port}{path}");
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("chromium exited at start-up: {status}");
            }
            assert!(Instant::now() < deadline, "chromium did not open DevTools");
            std::thread::sleep(Duration::from_millis(50));
        };
        let (ws, _) = tungstenite::connect(url.as_str()).expect("DevTools WebSocket");
        if let MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        }
        let mut b = Browser {
            child,
            profile,
            ws,
            next: 1,
            session: String::new(),
        };
        let target = b.call("Target.createTarget", json!({"url": "about:blank"}));
        let target = target["targetId"].as_str().unwrap().to_owned();
        let attached = b.call(
            "Target.attachToTarget",
            json!({"targetId": target, "flatten": true}),
        );
        b.session = attached["sessionId"].as_str().unwrap().to_owned();
        b
    }

    /// Sends a DevTools command (to the page once attached); returns its result.
    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next;
        self.next += 1;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            msg["sessionId"] = self.session.clone().into();
        }
        self.ws.send(Message::text(msg.to_string())).unwrap();
        loop {
            let m = self.ws.read().expect("DevTools reply");
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Evaluates a JavaScript expression in the page; returns its value.
    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true}),
        );
        assert!(r.get("exceptionDetails").is_none(), "{expr}: {r}");
        r["result"]["value"].clone()
    }
}

/// What the page shows, by element id.
const READ: &str = r"(() => {
  const t = (id) => { const e = document.getElementById(id); return e ? e.textContent : null; };
  return {
    at: document.body.dataset.at || null,
    status: t('status'),
    calls: t('calls-active'),
    legs: t('calls-legs'),
    sampled: t('calls-sampled'),
    q1_name: t('queue-1-name'),
    q1_waiting: t('queue-1-waiting'),
    q1_idle: t('queue-1-agents-idle'),
    q1_reserved: t('queue-1-agents-reserved'),
    q2_waiting: t('queue-2-waiting'),
    idle: t('agents-idle'),
    reserved: t('agents-reserved'),
    offline: t('agents-offline'),
    workers: document.querySelectorAll('[id^=worker-][id$=-load]').length,
    rec_active: t('rec-active'),
  };
})()";

/// The same figures from the engine.
fn engine_view(c: &mut Ctl) -> Value {
    let stats = c.ok(json!({"op": "stats"}));
    let q1 = c.ok(json!({"op": "queue.stats", "queue": 1}))["stats"].clone();
    let q2 = c.ok(json!({"op": "queue.stats", "queue": 2}))["stats"].clone();
    let agents = c.ok(json!({"op": "agent.list"}));
    let count = |f: &dyn Fn(&Value) -> bool| {
        agents["agents"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| f(a))
            .count()
            .to_string()
    };
    let n = |v: &Value| v.as_u64().unwrap().to_string();
    json!({
        "status": "live",
        "calls": n(&stats["calls"]),
        "legs": n(&stats["legs"]),
        "sampled": n(&stats["calls"]),
        "q1_name": "sales (1)",
        "q1_waiting": n(&q1["waiting"]),
        "q1_idle": n(&q1["agents"]["idle"]),
        "q1_reserved": n(&q1["agents"]["reserved"]),
        "q2_waiting": n(&q2["waiting"]),
        "idle": count(&|a| a["state"] == "idle"),
        "reserved": count(&|a| a["state"] == "reserved"),
        "offline": count(&|a| a["status"] == "offline"),
        "workers": stats["workers"].as_array().unwrap().len(),
        "rec_active": "0",
    })
}

/// Polls the page until every figure of `want` shows; panics with both after `within`.
fn expect(b: &mut Browser, want: &Value, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let got = b.eval(READ);
        let ok = want.as_object().unwrap().iter().all(|(k, v)| &got[k] == v);
        if ok {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "the page does not show the engine's figures\n want {want}\n  got {got}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// An NG call (offer and answer); returns the caller's socket and where it sends media.
fn ng_call(e: &Engine, call: &str) -> (std::net::UdpSocket, SocketAddr) {
    let ng = e.ng();
    let (a, b) = (udp(), udp());
    let r = ng.request(
        &json!({"command": "offer", "call-id": call, "from-tag": "cust",
        "sdp": sdp("a", a.local_addr().unwrap().port())}),
    );
    assert_eq!(r["result"], "ok", "{r}");
    let r = ng.request(
        &json!({"command": "answer", "call-id": call, "from-tag": "cust",
        "to-tag": "desk", "sdp": sdp("b", b.local_addr().unwrap().port())}),
    );
    assert_eq!(r["result"], "ok", "{r}");
    // The caller sends to the address the answer's SDP gives it.
    (a, sdp_media_addr(r["sdp"].as_str().unwrap()))
}

/// Sends 50 packets a second from `sock` to `to` until `stop` is set (at most 30 s).
fn media(
    sock: std::net::UdpSocket,
    to: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let until = Instant::now() + Duration::from_secs(30);
        let mut seq = 0u16;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < until {
            let p = rtp_packet(seq, u32::from(seq) * 160, 0x5eed, 0x11);
            let _ = sock.send_to(&p, to);
            seq = seq.wrapping_add(1);
            std::thread::sleep(Duration::from_millis(20));
        }
    })
}

/// `target/artifacts`, next to the test binary's `target/debug/deps`.
fn artifacts_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe
        .ancestors()
        .nth(3)
        .map_or_else(|| PathBuf::from("target"), Path::to_path_buf);
    target.join("artifacts")
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64"),
    };
    let bytes: Vec<u8> = s.bytes().filter(|c| *c != b'=' && *c != b'\n').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            acc |= u32::from(val(*c)) << (18 - 6 * i);
        }
        let [_, b0, b1, b2] = acc.to_be_bytes();
        out.push(b0);
        if chunk.len() > 2 {
            out.push(b1);
        }
        if chunk.len() > 3 {
            out.push(b2);
        }
    }
    out
}

#[test]
fn the_dashboard_shows_the_engines_figures_and_follows_them() {
    let started = Instant::now();
    let bin = chromium();
    assert!(bin.exists());
    let dir = std::env::temp_dir().join(format!("sb-dash-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("switchboard.toml");
    std::fs::write(
        &cfg,
        format!("[control]\nunix = \"\"\n\n[http]\ntoken = \"{TOKEN}\"\n"),
    )
    .unwrap();
    let e = Engine::start("epoll", &["--config", cfg.to_str().unwrap()]);

    // The page is public (no data in it); its data needs the token.
    let (code, html) = http_get(e.http, "/", None);
    assert_eq!(code, 200);
    assert!(html.contains("dashboard/app.js"));
    assert!(!html.contains("https://") && !html.contains("http://"));
    assert_eq!(http_get(e.http, "/dashboard/app.js", None).0, 200);
    assert_eq!(http_get(e.http, "/dashboard/snapshot", None).0, 401);
    assert_eq!(http_get(e.http, "/dashboard/events", Some("wrong")).0, 403);

    let mut c = Ctl::connect(e.control);
    // Offers stay open for the whole test.
    c.ok(json!({"op": "queue.create", "queue": 1, "name": "sales", "offer_timeout_ms": 300_000}));
    c.ok(json!({"op": "queue.create", "queue": 2, "name": "support", "offer_timeout_ms": 300_000}));
    for a in [10, 11, 12] {
        c.ok(json!({"op": "agent.create", "agent": a, "capacity": {"chat": 1}}));
    }
    c.ok(json!({"op": "agent.status", "agent": 10, "status": "available"}));
    for t in 1..=3 {
        c.ok(json!({"op": "task.enqueue", "task": t, "queue": 1, "channel": "chat"}));
    }
    c.ok(json!({"op": "task.enqueue", "task": 20, "queue": 2, "channel": "chat"}));
    ng_call(&e, "dash-1");
    let (sock, to) = ng_call(&e, "dash-2");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = media(sock, to, stop.clone());

    let mut b = Browser::launch();
    b.call("Page.enable", json!({}));
    b.call(
        "Page.navigate",
        json!({"url": format!("http://{}/#token={TOKEN}", e.http)}),
    );

    // The page shows what the engine says.
    let want = engine_view(&mut c);
    assert_eq!(want["calls"], "2");
    assert_eq!(want["q1_reserved"], "1", "{want}");
    assert_eq!(want["q1_waiting"], "2", "{want}");
    let got = expect(&mut b, &want, Duration::from_secs(8));
    println!("page before: {got}");
    // The token from the fragment was used and taken out of the address bar.
    assert_eq!(b.eval("location.hash"), "");

    // Updates come at most once a second.
    b.eval(
        "window.__ats = []; window.__tick = setInterval(() => { const a = document.body.dataset.at; \
         if (a && window.__ats[window.__ats.length - 1] !== a) window.__ats.push(a); }, 20); 0",
    );

    // The engine changes; the page follows.
    ng_call(&e, "dash-3");
    ng_call(&e, "dash-4");
    ng_call(&e, "dash-5");
    c.ok(json!({"op": "agent.status", "agent": 11, "status": "available"}));
    c.ok(json!({"op": "task.enqueue", "task": 21, "queue": 2, "channel": "chat"}));
    c.ok(json!({"op": "call.delete", "call": "dash-1"}));
    // Queue figures are published by the ACD about twice a second; give them a moment.
    std::thread::sleep(Duration::from_millis(700));
    let want = engine_view(&mut c);
    assert_eq!(want["calls"], "4", "{want}");
    assert_eq!(want["reserved"], "2", "{want}");
    let got = expect(&mut b, &want, Duration::from_secs(6));
    println!("page after: {got}");
    // The call with media is in the quality sample and heads the worst-calls list; packets
    // flow on the engine figures.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = b.eval(
            "({worst: document.getElementById('worst-0-call')?.textContent ?? null, \
              pps: document.getElementById('engine-rx-pps').textContent})",
        );
        if v["worst"] == "dash-2" && v["pps"] != "0" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no media figures on the page: {v}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let ats: Vec<u64> = b
        .eval("window.__ats")
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().parse().unwrap())
        .collect();
    assert!(ats.len() >= 2, "the page did not update: {ats:?}");
    for w in ats.windows(2) {
        assert!(w[1] - w[0] >= 900, "updates closer than a second: {ats:?}");
    }

    // Keep a picture of it.
    let shot = b.call(
        "Page.captureScreenshot",
        json!({"format": "png", "captureBeyondViewport": true}),
    );
    let png = base64_decode(shot["data"].as_str().unwrap());
    assert_eq!(&png[1..4], b"PNG");
    let dir_out = artifacts_dir();
    std::fs::create_dir_all(&dir_out).unwrap();
    let path = dir_out.join("dashboard.png");
    std::fs::write(&path, &png).unwrap();
    println!("screenshot: {}", path.display());
    println!("took {:?}", started.elapsed());
    drop(b);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sender.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
