//! Recording end to end, black box: a real `switchboard` process, a two-party NG call over
//! loopback in which each side sends its own tone as PCMU RTP (600 Hz from the caller, 1400 Hz
//! from the callee), native `record.*` and NG recording commands, and the HTTP API. The audio
//! is checked with a Goertzel filter; crash repair with `kill -9`, `sox --i` and `ffprobe`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use switchboard_codecs::g711;
use switchboard_codecs::tone::{ToneGenerator, ToneLevel};
use switchboard_codecs::wav::{WavFormat, WavReader};

use common::{Engine, sdp, sdp_media_addr, udp};

const CALLER_HZ: f32 = 600.0;
const CALLEE_HZ: f32 = 1400.0;

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("sb-rec-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts an engine with a config file: no Unix socket, recordings in `rec_dir`, plus `extra`.
fn engine(scratch: &Scratch, rec_dir: &Path, extra: &str) -> Engine {
    let cfg = scratch.0.join(format!(
        "switchboard-{}.toml",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::write(
        &cfg,
        format!(
            "[control]\nunix = \"\"\n\n[recording]\ndir = \"{}\"\njitter_ms = 100\n{extra}",
            rec_dir.display()
        ),
    )
    .unwrap();
    Engine::start("epoll", &["--config", cfg.to_str().unwrap()])
}

/// The native control protocol over TCP; events are kept aside.
struct Native {
    r: BufReader<TcpStream>,
    w: TcpStream,
    id: u64,
    events: Vec<Value>,
}

impl Native {
    fn connect(addr: SocketAddr) -> Native {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Native {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
            id: 0,
            events: Vec::new(),
        }
    }

    fn line(&mut self) -> Value {
        let mut l = String::new();
        self.r.read_line(&mut l).expect("a line from the engine");
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l}"))
    }

    fn request(&mut self, mut req: Value) -> Value {
        self.id += 1;
        req["id"] = json!(self.id);
        writeln!(self.w, "{req}").unwrap();
        loop {
            let v = self.line();
            if v.get("event").is_some() {
                self.events.push(v);
            } else {
                assert_eq!(v["id"], json!(self.id), "{v}");
                return v;
            }
        }
    }

    fn ok(&mut self, req: Value) -> Value {
        let r = self.request(req.clone());
        assert_eq!(r["ok"], json!(true), "{req} -> {r}");
        r
    }

    /// Waits for an event matching `pred` (kept events first).
    fn wait_event(&mut self, within: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.events.iter().position(&pred) {
            return self.events.remove(i);
        }
        let deadline = Instant::now() + within;
        loop {
            assert!(
                Instant::now() < deadline,
                "no matching event; seen {:?}",
                self.events
            );
            let v = self.line();
            if pred(&v) {
                return v;
            }
            self.events.push(v);
        }
    }
}

/// A two-party call: `a` is the caller (from-tag `caller`), `b` the callee (`callee`).
struct Call {
    a: UdpSocket,
    b: UdpSocket,
    a_to: SocketAddr,
    b_to: SocketAddr,
    seq: u16,
    gens: [ToneGenerator; 2],
}

impl Call {
    fn new(e: &Engine, id: &str, offer_extra: Value) -> Call {
        let ng = e.ng();
        let a = udp();
        let b = udp();
        let mut offer = json!({"command": "offer", "call-id": id, "from-tag": "caller",
            "sdp": sdp("a", a.local_addr().unwrap().port())});
        if let (Value::Object(o), Value::Object(x)) = (&mut offer, offer_extra) {
            o.extend(x);
        }
        let r = ng.request(&offer);
        assert_eq!(r["result"], "ok", "{r}");
        let b_to = sdp_media_addr(r["sdp"].as_str().unwrap());
        let r = ng.request(
            &json!({"command": "answer", "call-id": id, "from-tag": "caller",
            "to-tag": "callee", "sdp": sdp("b", b.local_addr().unwrap().port())}),
        );
        assert_eq!(r["result"], "ok", "{r}");
        let a_to = sdp_media_addr(r["sdp"].as_str().unwrap());
        let level = ToneLevel::Dbm0(-10.0);
        Call {
            a,
            b,
            a_to,
            b_to,
            seq: 1,
            gens: [
                ToneGenerator::sine(8000, CALLER_HZ, level).unwrap(),
                ToneGenerator::sine(8000, CALLEE_HZ, level).unwrap(),
            ],
        }
    }

    /// Sends `ms` of both tones as 20 ms PCMU packets, paced in real time.
    fn talk(&mut self, ms: u64) {
        let start = Instant::now();
        let frames = ms / 20;
        let mut pcm = [0i16; 160];
        let mut payload = [0u8; 160];
        for k in 0..frames {
            let due = start + Duration::from_millis(k * 20);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let seq = self.seq;
            self.seq = self.seq.wrapping_add(1);
            let ts = u32::from(seq) * 160;
            for (i, (sock, to)) in [(&self.a, self.a_to), (&self.b, self.b_to)]
                .into_iter()
                .enumerate()
            {
                self.gens[i].fill(&mut pcm);
                g711::ulaw_encode_slice(&pcm, &mut payload);
                let mut p = vec![0x80, 0x00];
                p.extend_from_slice(&seq.to_be_bytes());
                p.extend_from_slice(&ts.to_be_bytes());
                p.extend_from_slice(&(0x1000 + i as u32).to_be_bytes());
                p.extend_from_slice(&payload);
                sock.send_to(&p, to).unwrap();
            }
        }
        // Keep the receive buffers from filling.
        for s in [&self.a, &self.b] {
            s.set_nonblocking(true).unwrap();
            let mut buf = [0u8; 2048];
            while s.recv_from(&mut buf).is_ok() {}
            s.set_nonblocking(false).unwrap();
        }
    }
}

/// Minimal HTTP/1.1 client: (status, headers lower-cased, body).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let hs: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    if hs
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v == "chunked")
    {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let nl = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let n = usize::from_str_radix(std::str::from_utf8(&rest[..nl]).unwrap().trim(), 16)
                .unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&rest[nl + 2..nl + 2 + n]);
            rest = &rest[nl + 4 + n..];
        }
        body = out;
    }
    (status, hs, body)
}

fn header<'a>(hs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    hs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn get_json(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let hs: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    let (status, _, body) = http(addr, "GET", path, &hs);
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// Power of `hz` in `x` (Goertzel), normalised by length.
fn power(x: &[f32], hz: f32, rate: f32) -> f64 {
    let w = 2.0 * std::f64::consts::PI * f64::from(hz) / f64::from(rate);
    let c = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for v in x {
        let s0 = f64::from(*v) + c * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    (s1 * s1 + s2 * s2 - c * s1 * s2) / (x.len() as f64).powi(2)
}

fn db(a: f64, b: f64) -> f64 {
    10.0 * (a.max(1e-12) / b.max(1e-12)).log10()
}

/// Channels of a WAV file as floats.
fn wav_channels(bytes: &[u8]) -> (u32, Vec<Vec<f32>>) {
    let w = WavReader::parse(bytes).expect("a valid WAV file");
    let ch = usize::from(w.info.spec.channels);
    let samples: Vec<i16> = match w.info.spec.format {
        WavFormat::Pcm16 => w.samples_i16().unwrap().collect(),
        WavFormat::Mulaw => w.data.iter().map(|c| g711::ulaw_decode(*c)).collect(),
        WavFormat::Alaw => w.data.iter().map(|c| g711::alaw_decode(*c)).collect(),
        _ => panic!("unexpected format"),
    };
    let mut out = vec![Vec::new(); ch];
    for (i, s) in samples.iter().enumerate() {
        out[i % ch].push(f32::from(*s));
    }
    (w.info.spec.sample_rate, out)
}

/// Decodes any audio file to mono 8 kHz samples with ffmpeg.
fn ffmpeg_mono(path: &Path) -> Vec<f32> {
    assert!(
        common::have("ffmpeg"),
        "ffmpeg is not installed (Debian package ffmpeg)"
    );
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-f", "s16le", "-ac", "1", "-ar", "8000", "-"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ffmpeg: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
        .chunks_exact(2)
        .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])))
        .collect()
}

/// The steady middle of a channel (skips the first and last quarter second).
fn middle(x: &[f32], rate: u32) -> &[f32] {
    let q = rate as usize / 4;
    assert!(x.len() > 3 * q, "only {} samples", x.len());
    &x[q..x.len() - q]
}

/// Asserts `x` carries `want` and not `other`, by `margin` dB.
fn assert_tone(x: &[f32], rate: u32, want: f32, other: f32, margin: f64, what: &str) {
    let pw = power(x, want, rate as f32);
    let po = power(x, other, rate as f32);
    assert!(
        db(pw, po) > margin,
        "{what}: {want} Hz is {:.1} dB over {other} Hz",
        db(pw, po)
    );
    // And the wanted tone is loud (about -10 dBm0, amplitude ~ 4600).
    assert!(
        pw.sqrt() > 500.0,
        "{what}: {want} Hz amplitude {:.0}",
        pw.sqrt() * 2.0
    );
}

fn sha_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn stopped_events(n: &mut Native, ids: &[String]) -> Vec<Value> {
    ids.iter()
        .map(|id| {
            n.wait_event(Duration::from_secs(10), |v| {
                v["event"] == "recording.stopped" && v["recording"] == json!(id)
            })
        })
        .collect()
}

fn ids_of(r: &Value) -> Vec<String> {
    r["recordings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn stereo_mixed_and_per_leg_hold_the_right_voices() {
    let scratch = Scratch::new("voices");
    let rec_dir = scratch.0.join("recordings");
    let e = engine(&scratch, &rec_dir, "");
    let mut n = Native::connect(e.control);
    n.ok(json!({"op": "subscribe", "topics": ["recording"]}));
    let mut call = Call::new(&e, "voices-1", json!({}));
    call.talk(100);
    let stereo = n.ok(
        json!({"op": "record.start", "call": "voices-1", "mode": "stereo",
        "metadata": {"agent": "alice", "queue": "billing", "ticket": 42}}),
    );
    let mixed = n.ok(json!({"op": "record.start", "call": "voices-1", "mode": "mixed"}));
    let ulaw = n.ok(json!({"op": "record.start", "call": "voices-1", "format": "wav-ulaw"}));
    let legs = n.ok(
        json!({"op": "record.start", "call": "voices-1", "mode": "per-leg",
        "format": "opus", "name": "{call}-{leg}-{id}"}),
    );
    assert_eq!(ids_of(&legs).len(), 2);
    let unknown = n.request(json!({"op": "record.start", "call": "nope"}));
    assert_eq!(unknown["error"]["code"], "not_found", "{unknown}");
    call.talk(2000);
    let stop = n.ok(json!({"op": "record.stop", "call": "voices-1"}));
    let all = ids_of(&stop);
    assert_eq!(all.len(), 5, "{stop}");
    let again = n.request(json!({"op": "record.stop", "call": "voices-1"}));
    assert_eq!(again["error"]["code"], "not_found");
    let stops = stopped_events(&mut n, &all);
    for ev in &stops {
        let ms = ev["duration_ms"].as_u64().unwrap();
        assert!((1900..=2300).contains(&ms), "{ev}");
    }
    let started = n
        .events
        .iter()
        .filter(|v| v["event"] == "recording.started")
        .count();
    assert_eq!(started, 5, "{:?}", n.events);

    let audio = |id: &str| {
        let (status, hs, body) = http(e.http, "GET", &format!("/recordings/{id}/audio"), &[]);
        assert_eq!(status, 200);
        (hs, body)
    };
    let meta = |id: &str| get_json(e.http, &format!("/recordings/{id}"), None).1;

    // Stereo: the caller (customer) left, the callee (agent) right.
    let id = stereo["recording"].as_str().unwrap();
    let m = meta(id);
    assert_eq!(m["mode"], "stereo");
    assert_eq!(m["channels"], 2);
    assert_eq!(m["agent"], "alice");
    assert_eq!(m["metadata"]["ticket"], 42);
    assert_eq!(m["legs"][0]["tag"], "caller");
    assert_eq!(m["legs"][0]["role"], "customer");
    assert_eq!(m["legs"][0]["channel"], "left");
    assert_eq!(m["legs"][1]["role"], "agent");
    assert_eq!(m["state"], "complete");
    let (hs, body) = audio(id);
    assert_eq!(header(&hs, "content-type"), Some("audio/wav"));
    assert_eq!(m["sha256"], json!(sha_hex(&body)));
    assert_eq!(m["size"], json!(body.len()));
    let (rate, ch) = wav_channels(&body);
    assert_eq!((rate, ch.len()), (8000, 2));
    assert_tone(
        middle(&ch[0], rate),
        rate,
        CALLER_HZ,
        CALLEE_HZ,
        30.0,
        "stereo left",
    );
    assert_tone(
        middle(&ch[1], rate),
        rate,
        CALLEE_HZ,
        CALLER_HZ,
        30.0,
        "stereo right",
    );

    // µ-law stereo: the same, in G.711.
    let (_, body) = audio(ulaw["recording"].as_str().unwrap());
    let w = WavReader::parse(&body).unwrap();
    assert_eq!(w.info.spec.format, WavFormat::Mulaw);
    let (rate, ch) = wav_channels(&body);
    assert_tone(
        middle(&ch[0], rate),
        rate,
        CALLER_HZ,
        CALLEE_HZ,
        25.0,
        "µ-law left",
    );
    assert_tone(
        middle(&ch[1], rate),
        rate,
        CALLEE_HZ,
        CALLER_HZ,
        25.0,
        "µ-law right",
    );

    // Mixed: both voices in one channel, at about the same level.
    let (_, body) = audio(mixed["recording"].as_str().unwrap());
    let (rate, ch) = wav_channels(&body);
    assert_eq!(ch.len(), 1);
    let x = middle(&ch[0], rate);
    let (p1, p2) = (power(x, CALLER_HZ, 8000.0), power(x, CALLEE_HZ, 8000.0));
    assert!(db(p1, p2).abs() < 3.0, "mixed: {:.1} dB apart", db(p1, p2));
    assert!(
        db(p1, power(x, 1000.0, 8000.0)) > 30.0,
        "mixed holds tones, not noise"
    );

    // One Ogg/Opus file per leg, each with its own voice (decoded by ffmpeg).
    for id in ids_of(&legs) {
        let m = meta(&id);
        assert_eq!(m["format"], "opus");
        assert_eq!(m["content_type"], "audio/ogg");
        let tag = m["legs"][0]["tag"].as_str().unwrap().to_owned();
        assert!(
            m["name"]
                .as_str()
                .unwrap()
                .starts_with(&format!("voices-1-{tag}-"))
        );
        let (hs, body) = audio(&id);
        assert_eq!(header(&hs, "content-type"), Some("audio/ogg"));
        let path = scratch.0.join(format!("{id}.opus"));
        std::fs::write(&path, &body).unwrap();
        let x = ffmpeg_mono(&path);
        let (want, other) = if tag == "caller" {
            (CALLER_HZ, CALLEE_HZ)
        } else {
            (CALLEE_HZ, CALLER_HZ)
        };
        assert_tone(
            middle(&x, 8000),
            8000,
            want,
            other,
            20.0,
            &format!("opus {tag}"),
        );
    }

    // Listing by call, agent and queue.
    let (_, list) = get_json(e.http, "/recordings?call=voices-1", None);
    assert_eq!(list["recordings"].as_array().unwrap().len(), 5);
    let (_, list) = get_json(e.http, "/recordings?agent=alice&queue=billing", None);
    assert_eq!(list["recordings"].as_array().unwrap().len(), 1);
    let (_, list) = get_json(e.http, "/recordings?call=voices-1&limit=2", None);
    assert_eq!(list["recordings"].as_array().unwrap().len(), 2);
    let cursor = list["next_cursor"].as_str().unwrap().to_owned();
    let (_, next) = get_json(
        e.http,
        &format!("/recordings?call=voices-1&limit=2&cursor={cursor}"),
        None,
    );
    assert_eq!(next["recordings"].as_array().unwrap().len(), 2);
    assert_ne!(next["recordings"][0]["id"], list["recordings"][0]["id"]);

    let (_, _, metrics) = http(e.http, "GET", "/metrics", &[]);
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains("switchboard_recordings_active 0"),
        "{metrics}"
    );
    assert!(metrics.contains("switchboard_recordings_started_total 5"));
    assert!(!metrics.contains("switchboard_recording_bytes_written_total 0\n"));
}

#[test]
fn pause_writes_silence_of_the_paused_length() {
    let scratch = Scratch::new("pause");
    let rec_dir = scratch.0.join("recordings");
    let e = engine(&scratch, &rec_dir, "");
    let mut n = Native::connect(e.control);
    n.ok(json!({"op": "subscribe", "topics": ["recording"]}));
    let mut call = Call::new(&e, "pause-1", json!({}));
    call.talk(60);
    let r = n.ok(json!({"op": "record.start", "call": "pause-1"}));
    let id = r["recording"].as_str().unwrap().to_owned();
    call.talk(700);
    let t0 = Instant::now();
    n.ok(json!({"op": "record.pause", "recording": id}));
    let t1 = Instant::now();
    // Pausing twice changes nothing.
    n.ok(json!({"op": "record.pause", "call": "pause-1"}));
    call.talk(600);
    let t2 = Instant::now();
    n.ok(json!({"op": "record.resume", "recording": id}));
    let t3 = Instant::now();
    call.talk(700);
    n.ok(json!({"op": "record.stop", "recording": id}));
    let paused = n.wait_event(Duration::from_secs(5), |v| v["event"] == "recording.paused");
    assert_eq!(paused["recording"], json!(id));
    let resumed = n.wait_event(Duration::from_secs(5), |v| {
        v["event"] == "recording.resumed"
    });
    stopped_events(&mut n, std::slice::from_ref(&id));

    let (status, _, body) = http(e.http, "GET", &format!("/recordings/{id}/audio"), &[]);
    assert_eq!(status, 200);
    let (rate, ch) = wav_channels(&body);
    // The longest run of exact zeros in both channels is the pause.
    let mut best = (0usize, 0usize);
    let mut run = 0;
    for (i, (l, r)) in ch[0].iter().zip(&ch[1]).enumerate() {
        if *l == 0.0 && *r == 0.0 {
            run += 1;
            if run > best.1 {
                best = (i + 1 - run, run);
            }
        } else {
            run = 0;
        }
    }
    let silent_ms = best.1 as f64 * 1000.0 / f64::from(rate);
    let lo = t2.duration_since(t1).as_secs_f64() * 1000.0 - 20.0;
    let hi = t3.duration_since(t0).as_secs_f64() * 1000.0 + 20.0;
    assert!(
        (lo..=hi).contains(&silent_ms),
        "silence of {silent_ms:.1} ms, paused for {lo:.1}..{hi:.1} ms"
    );
    // Tone on both sides of the pause.
    let before = &ch[0][best.0 - 2000..best.0];
    let after = &ch[0][best.0 + best.1..best.0 + best.1 + 2000];
    assert_tone(before, rate, CALLER_HZ, CALLEE_HZ, 20.0, "before the pause");
    assert_tone(after, rate, CALLER_HZ, CALLEE_HZ, 20.0, "after the pause");
    // The pause is in the metadata, at the right place and length (±1 frame).
    let (_, m) = get_json(e.http, &format!("/recordings/{id}"), None);
    let p = &m["pauses"][0];
    let at_ms = p["at_ms"].as_f64().unwrap();
    let dur = p["duration_ms"].as_f64().unwrap();
    assert!((dur - silent_ms).abs() <= 20.0, "{p} vs {silent_ms}");
    assert!(
        (at_ms - best.0 as f64 / 8.0).abs() <= 20.0,
        "{p} vs {}",
        best.0 / 8
    );
    assert_eq!(resumed["paused_ms"], p["duration_ms"]);
}

#[test]
fn kill_9_recordings_are_repaired_and_indexed() {
    for tool in ["sox", "ffprobe"] {
        assert!(
            common::have(tool),
            "{tool} is not installed (Debian packages sox and ffmpeg): the crash test needs it"
        );
    }
    let scratch = Scratch::new("kill9");
    let rec_dir = scratch.0.join("recordings");
    let mut e = engine(&scratch, &rec_dir, "");
    let mut n = Native::connect(e.control);
    let mut call = Call::new(&e, "crash-1", json!({}));
    // NG `start recording` with rtpengine-style metadata, plus an Ogg/Opus recording.
    let r = e
        .ng()
        .request(&json!({"command": "start recording", "call-id": "crash-1",
        "metadata": "agent:bob|queue:sales"}));
    assert_eq!(r["result"], "ok", "{r}");
    n.ok(json!({"op": "record.start", "call": "crash-1", "format": "opus", "mode": "mixed"}));
    call.talk(2500);
    e.child.kill().unwrap();
    e.child.wait().unwrap();
    drop(n);

    let e2 = engine(&scratch, &rec_dir, "");
    let deadline = Instant::now() + Duration::from_secs(15);
    let rows = loop {
        let (status, list) = get_json(e2.http, "/recordings?call=crash-1", None);
        assert_eq!(status, 200, "{list}");
        let rows = list["recordings"].as_array().unwrap().clone();
        if rows.len() == 2 && rows.iter().all(|r| r["state"] != "recording") {
            break rows;
        }
        assert!(Instant::now() < deadline, "not repaired: {list}");
        std::thread::sleep(Duration::from_millis(100));
    };
    for row in &rows {
        assert_eq!(row["state"], "repaired", "{row}");
        assert_eq!(row["stop_reason"], "crash_repaired");
        let ms = row["duration_ms"].as_u64().unwrap();
        // At most the last second lost (the jitter delay, the page being filled).
        assert!((1400..=2600).contains(&ms), "{row}");
        let path = rec_dir.join(row["file"].as_str().unwrap());
        let ffprobe = Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-show_entries",
                "format=duration",
                "-of",
                "csv=p=0",
            ])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            ffprobe.status.success(),
            "ffprobe refused {}: {}",
            path.display(),
            String::from_utf8_lossy(&ffprobe.stderr)
        );
        let secs: f64 = String::from_utf8_lossy(&ffprobe.stdout)
            .trim()
            .parse()
            .unwrap();
        assert!(
            (secs * 1000.0 - ms as f64).abs() < 60.0,
            "ffprobe {secs} s vs {ms} ms"
        );
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(row["sha256"], json!(sha_hex(&bytes)));
        if row["format"] == "wav" {
            assert_eq!(row["agent"], "bob");
            assert_eq!(row["queue"], "sales");
            let sox = Command::new("sox").arg("--i").arg(&path).output().unwrap();
            assert!(
                sox.status.success(),
                "sox refused {}: {}",
                path.display(),
                String::from_utf8_lossy(&sox.stderr)
            );
            let w = WavReader::parse(&bytes).expect("a consistent WAV header");
            assert_eq!(w.info.frames * 1000 / 8000, ms);
            let (rate, ch) = wav_channels(&bytes);
            assert_tone(
                middle(&ch[0], rate),
                rate,
                CALLER_HZ,
                CALLEE_HZ,
                30.0,
                "repaired left",
            );
        }
    }
    let (_, list) = get_json(e2.http, "/recordings?agent=bob", None);
    assert_eq!(list["recordings"].as_array().unwrap().len(), 1);
}

#[test]
fn http_ranges_tokens_and_hostile_input() {
    let scratch = Scratch::new("http");
    let rec_dir = scratch.0.join("recordings");
    let e = engine(&scratch, &rec_dir, "\n[http]\ntoken = \"s3cret\"\n");
    let auth = [("Authorization", "Bearer s3cret")];
    let mut n = Native::connect(e.control);
    n.ok(json!({"op": "subscribe", "topics": ["recording"]}));
    let mut call = Call::new(&e, "http-1", json!({}));
    let r = n.ok(json!({"op": "record.start", "call": "http-1"}));
    let id = r["recording"].as_str().unwrap().to_owned();
    call.talk(600);
    n.ok(json!({"op": "record.stop", "call": "http-1"}));
    stopped_events(&mut n, std::slice::from_ref(&id));

    // Tokens: none 401, wrong 403, right 200; health needs none.
    for path in [
        "/recordings".to_owned(),
        format!("/recordings/{id}"),
        format!("/recordings/{id}/audio"),
    ] {
        assert_eq!(http(e.http, "GET", &path, &[]).0, 401, "{path}");
        assert_eq!(
            http(e.http, "GET", &path, &[("Authorization", "Bearer nope")]).0,
            403,
            "{path}"
        );
        assert_eq!(http(e.http, "GET", &path, &auth).0, 200, "{path}");
    }
    assert_eq!(
        http(e.http, "DELETE", &format!("/recordings/{id}"), &[]).0,
        401
    );
    assert_eq!(http(e.http, "GET", "/healthz", &[]).0, 200);

    // The whole file, byte for byte as on disk.
    let (_, m) = get_json(e.http, &format!("/recordings/{id}"), Some("s3cret"));
    let path = rec_dir.join(m["file"].as_str().unwrap());
    let on_disk = std::fs::read(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode & 0o607,
        0o600,
        "{mode:o}: owner read/write, nothing for others"
    );
    let audio = format!("/recordings/{id}/audio");
    let (status, hs, full) = http(e.http, "GET", &audio, &auth);
    assert_eq!(status, 200);
    assert_eq!(full, on_disk);
    let len = full.len();
    assert_eq!(
        header(&hs, "content-length"),
        Some(len.to_string().as_str())
    );
    assert_eq!(header(&hs, "accept-ranges"), Some("bytes"));
    assert_eq!(
        header(&hs, "etag"),
        Some(format!("\"{}\"", sha_hex(&full)).as_str())
    );
    let (status, hs, body) = http(e.http, "HEAD", &audio, &auth);
    assert_eq!(status, 200);
    assert!(body.is_empty());
    assert_eq!(
        header(&hs, "content-length"),
        Some(len.to_string().as_str())
    );

    // Ranges.
    for (range, a, b) in [
        ("bytes=0-99".to_owned(), 0, 99),
        ("bytes=100-".to_owned(), 100, len - 1),
        ("bytes=-500".to_owned(), len - 500, len - 1),
        ("bytes=10-10".to_owned(), 10, 10),
        (format!("bytes=1000-{}", len + 5000), 1000, len - 1),
        (format!("bytes={}-", len - 1), len - 1, len - 1),
    ] {
        let (status, hs, body) = http(e.http, "GET", &audio, &[auth[0], ("Range", &range)]);
        assert_eq!(status, 206, "{range}");
        assert_eq!(body, full[a..=b], "{range}");
        assert_eq!(
            header(&hs, "content-range"),
            Some(format!("bytes {a}-{b}/{len}").as_str()),
            "{range}"
        );
    }
    for range in [
        format!("bytes={len}-"),
        "bytes=-0".into(),
        "bytes=5-2".into(),
        "bytes=x-y".into(),
    ] {
        let (status, hs, body) = http(e.http, "GET", &audio, &[auth[0], ("Range", &range)]);
        assert_eq!(status, 416, "{range}");
        assert!(body.is_empty());
        assert_eq!(
            header(&hs, "content-range"),
            Some(format!("bytes */{len}").as_str())
        );
    }
    let (status, _, body) = http(
        e.http,
        "GET",
        &audio,
        &[auth[0], ("Range", "bytes=0-1,5-9")],
    );
    assert_eq!(
        (status, body.len()),
        (200, len),
        "lists of ranges get the whole file"
    );
    let (status, _, body) = http(
        e.http,
        "GET",
        &audio,
        &[auth[0], ("Range", "bytes=0-9"), ("If-Range", "\"stale\"")],
    );
    assert_eq!(
        (status, body.len()),
        (200, len),
        "a stale If-Range gets the whole file"
    );

    // Hostile paths and ids: never a file, never a crash.
    for path in [
        "/recordings/..%2f..%2fetc%2fpasswd",
        "/recordings/..%2f..%2fetc%2fpasswd/audio",
        "/recordings/%2e%2e/%2e%2e/etc/passwd",
        "/recordings/../../etc/passwd",
        "/recordings/0123456789abcdef0123456G",
        "/recordings/0123456789ABCDEF01234567",
        "/recordings/x",
        "/recordings/%00",
        &format!("/recordings/{}", "a".repeat(5000)),
    ] {
        let (status, _, body) = http(e.http, "GET", path, &auth);
        assert!(matches!(status, 400 | 404), "{path}: {status}");
        assert!(!String::from_utf8_lossy(&body).contains("root:"), "{path}");
    }
    let (status, v) = get_json(
        e.http,
        "/recordings/0123456789abcdef01234567",
        Some("s3cret"),
    );
    assert_eq!((status, &v["error"]["code"]), (404, &json!("not_found")));
    let (status, v) = get_json(e.http, "/recordings/nope", Some("s3cret"));
    assert_eq!((status, &v["error"]["code"]), (400, &json!("bad_id")));
    for q in [
        "?nope=1",
        "?limit=0",
        "?limit=-1",
        "?limit=abc",
        "?from=yesterday",
        "?cursor=../../x",
        "?call=a&call=b",
        "?%zz=1",
    ] {
        let (status, _) = get_json(e.http, &format!("/recordings{q}"), Some("s3cret"));
        assert_eq!(status, 400, "{q}");
    }
    let huge = format!("/recordings?call={}", "x".repeat(100_000));
    let (status, _, _) = http(e.http, "GET", &huge, &auth);
    assert!((400..500).contains(&status), "huge query: {status}");
    let long = format!("/recordings?call={}", "x".repeat(3000));
    assert_eq!(http(e.http, "GET", &long, &auth).0, 414);
    assert_eq!(http(e.http, "GET", "/healthz", &[]).0, 200, "still serving");

    // Delete: gone from the index and the disk.
    let del = format!("/recordings/{id}");
    assert_eq!(http(e.http, "DELETE", &del, &auth).0, 204);
    assert_eq!(http(e.http, "GET", &del, &auth).0, 404);
    assert_eq!(http(e.http, "GET", &audio, &auth).0, 404);
    assert_eq!(http(e.http, "DELETE", &del, &auth).0, 404);
    assert!(!rec_dir.join(m["file"].as_str().unwrap()).exists());
}

#[test]
fn encrypted_recordings_round_trip_and_ng_record_call() {
    let scratch = Scratch::new("crypt");
    let rec_dir = scratch.0.join("recordings");
    let key_file = scratch.0.join("keys");
    std::fs::write(&key_file, format!("# test keys\nold {}\n", "11".repeat(32))).unwrap();
    let e = engine(
        &scratch,
        &rec_dir,
        &format!(
            "encrypt_with = \"k2\"\nkeys = {{ k2 = \"{}\" }}\nkey_file = \"{}\"\n",
            "5a".repeat(32),
            key_file.display()
        ),
    );
    let mut n = Native::connect(e.control);
    n.ok(json!({"op": "subscribe", "topics": ["recording"]}));
    // `record call` on the offer starts recording; NG `delete` stops it.
    let mut call = Call::new(
        &e,
        "crypt-1",
        json!({"record call": "yes", "metadata": "agent:carol"}),
    );
    let started = n.wait_event(Duration::from_secs(5), |v| {
        v["event"] == "recording.started"
    });
    assert_eq!(started["encrypted"], true);
    let id = started["recording"].as_str().unwrap().to_owned();
    call.talk(1200);
    let r = e
        .ng()
        .request(&json!({"command": "delete", "call-id": "crypt-1", "from-tag": "caller"}));
    assert_eq!(r["result"], "ok");
    let stopped = stopped_events(&mut n, std::slice::from_ref(&id));
    assert_eq!(stopped[0]["reason"], "requested");

    let (_, m) = get_json(e.http, &format!("/recordings/{id}"), None);
    assert_eq!(m["encrypted"], true);
    assert_eq!(m["key_id"], "k2");
    assert_eq!(m["agent"], "carol");
    let on_disk = std::fs::read(rec_dir.join(m["file"].as_str().unwrap())).unwrap();
    assert!(on_disk.starts_with(b"SBRECAE1"));
    for magic in [&b"RIFF"[..], b"WAVE", b"fmt ", b"data"] {
        assert!(!on_disk.windows(4).any(|w| w == magic), "plaintext on disk");
    }
    let audio = format!("/recordings/{id}/audio");
    let (status, hs, full) = http(e.http, "GET", &audio, &[]);
    assert_eq!(status, 200);
    assert_eq!(header(&hs, "content-type"), Some("audio/wav"));
    assert_eq!(m["size"], json!(full.len()));
    assert_eq!(m["sha256"], json!(sha_hex(&full)));
    assert_ne!(full.len(), on_disk.len());
    // No run of the decrypted audio appears on disk.
    let sample = &full[2000..2064];
    assert!(!on_disk.windows(64).any(|w| w == sample));
    let (rate, ch) = wav_channels(&full);
    assert_tone(
        middle(&ch[0], rate),
        rate,
        CALLER_HZ,
        CALLEE_HZ,
        30.0,
        "decrypted left",
    );
    assert_tone(
        middle(&ch[1], rate),
        rate,
        CALLEE_HZ,
        CALLER_HZ,
        30.0,
        "decrypted right",
    );
    // Ranges across chunk boundaries decrypt to the same bytes.
    let len = full.len();
    for (a, b) in [
        (0usize, 43usize),
        (4000, 9000),
        (4139, 4140),
        (len - 300, len - 1),
    ] {
        let range = format!("bytes={a}-{b}");
        let (status, _, body) = http(e.http, "GET", &audio, &[("Range", &range)]);
        assert_eq!(status, 206);
        assert_eq!(body, full[a..=b], "{range}");
    }
}
