//! Native media operations against a real `switchboard` process: calls and legs,
//! supervisor monitors, prompts, DTMF — the replies, the errors of hostile requests, and the
//! `call.ended` event. (The audio itself is checked by the tone suites.)
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::Engine;
use serde_json::{Value, json};

/// A native control connection that keeps events apart from replies.
struct Ctl {
    r: BufReader<TcpStream>,
    w: TcpStream,
    next: u64,
    events: VecDeque<Value>,
}

impl Ctl {
    fn connect(addr: SocketAddr) -> Ctl {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Ctl {
            w: s.try_clone().unwrap(),
            r: BufReader::new(s),
            next: 1,
            events: VecDeque::new(),
        }
    }

    fn line(&mut self, after: &str) -> Value {
        let mut line = String::new();
        if let Err(e) = self.r.read_line(&mut line) {
            panic!("no reply to {after}: {e}");
        }
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    fn req(&mut self, mut v: Value) -> Value {
        let id = self.next;
        self.next += 1;
        v["id"] = id.into();
        let line = v.to_string();
        self.w.write_all(line.as_bytes()).unwrap();
        self.w.write_all(b"\n").unwrap();
        loop {
            let r = self.line(&line);
            if r.get("event").is_some() {
                self.events.push_back(r);
            } else {
                assert_eq!(r["id"], id, "{r}");
                return r;
            }
        }
    }

    fn ok(&mut self, v: Value) -> Value {
        let reply = self.req(v.clone());
        assert_eq!(reply["ok"], true, "{v} -> {reply}");
        reply
    }

    /// The error code of a request that must fail, and its message.
    fn err(&mut self, v: Value) -> (String, String) {
        let reply = self.req(v.clone());
        assert_eq!(reply["ok"], false, "{v} -> {reply}");
        let msg = reply["error"]["message"].as_str().unwrap_or("").to_owned();
        assert!(!msg.is_empty(), "{reply}");
        (reply["error"]["code"].as_str().unwrap().to_owned(), msg)
    }

    /// The next event called `name` within 5 s.
    fn until(&mut self, name: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(i) = self.events.iter().position(|e| e["event"] == name) {
                return self.events.remove(i).unwrap();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no `{name}`; saw {:?}", self.events);
            self.r.get_ref().set_read_timeout(Some(left)).unwrap();
            let mut line = String::new();
            if let Ok(n) = self.r.read_line(&mut line) {
                if n > 0 {
                    self.events.push_back(serde_json::from_str(&line).unwrap());
                }
            }
            self.r
                .get_ref()
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
        }
    }
}

fn leg(call: &str, name: &str, hears: Value) -> Value {
    let mut v = json!({"op": "leg.create", "call": call, "leg": name, "codecs": ["PCMU", "telephone-event"],
        "remote": "127.0.0.1:9"});
    if !hears.is_null() {
        v["hears"] = hears;
    }
    v
}

#[test]
fn call_legs_and_a_supervisor() {
    let e = Engine::start("epoll", &[]);
    let mut c = Ctl::connect(e.control);
    c.ok(json!({"op": "subscribe", "topics": ["calls", "media"]}));
    let r = c.ok(json!({"op": "call.create", "call": "c1"}));
    assert_eq!(r["call"], "c1");
    let made = c.ok(json!({"op": "call.create"}));
    assert!(made["call"].as_str().unwrap().starts_with("call-"));

    let cust = c.ok(leg("c1", "customer", json!("all")));
    let local: SocketAddr = cust["local"].as_str().unwrap().parse().unwrap();
    assert!(local.port() >= e.port_min && local.port() <= e.port_max);
    let sdp = cust["sdp"].as_str().unwrap();
    assert!(
        sdp.contains(&format!("m=audio {} RTP/AVP 0 101", local.port())),
        "{sdp}"
    );
    c.ok(leg("c1", "agent", json!("all")));
    c.ok(leg("c1", "sup", Value::Null));

    let r = c.ok(
        json!({"op": "monitor.start", "call": "c1", "supervisor": "sup",
        "agent": "agent", "customer": "customer", "mode": "listen", "dtmf_control": true}),
    );
    assert_eq!(r["mode"], "listen");
    let got = c.ok(json!({"op": "call.get", "call": "c1"}));
    let media = &got["media"];
    assert_eq!(media["mixing"], true, "{got}");
    let hears = |m: &Value, l: &str| -> Value {
        m["legs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["leg"] == l)
            .unwrap()["hears"]
            .clone()
    };
    assert_eq!(hears(media, "sup"), json!(["customer", "agent"]));
    assert_eq!(hears(media, "agent"), json!(["customer"]));
    assert_eq!(hears(media, "customer"), json!(["agent"]));

    let r =
        c.ok(json!({"op": "monitor.mode", "call": "c1", "supervisor": "sup", "mode": "whisper"}));
    assert_eq!(r["mode"], "whisper");
    let ev = c.until("monitor.started");
    assert_eq!(ev["mode"], "listen");
    let ev = c.until("monitor.mode");
    assert_eq!(
        (ev["mode"].as_str(), ev["supervisor"].as_str()),
        (Some("whisper"), Some("sup"))
    );
    let got = c.ok(json!({"op": "call.get", "call": "c1"}));
    assert_eq!(hears(&got["media"], "agent"), json!(["customer", "sup"]));

    c.ok(json!({"op": "monitor.stop", "call": "c1", "supervisor": "sup"}));
    let (code, _) =
        c.err(json!({"op": "monitor.mode", "call": "c1", "supervisor": "sup", "mode": "barge"}));
    assert_eq!(code, "not_found");

    let r = c.ok(json!({"op": "play.start", "call": "c1", "leg": "customer", "tone": "ringback", "repeat": 0}));
    let play = r["play"].as_u64().unwrap();
    assert!(r["duration_ms"].is_null());
    let r = c.ok(json!({"op": "play.stop", "call": "c1", "play": play}));
    assert_eq!(r["stopped"], json!([play]));
    c.ok(json!({"op": "dtmf.send", "call": "c1", "leg": "customer", "digits": "12#"}));
    c.ok(json!({"op": "leg.mute", "call": "c1", "leg": "agent", "mute": true}));
    c.ok(json!({"op": "leg.delete", "call": "c1", "leg": "sup"}));

    c.ok(json!({"op": "call.delete", "call": "c1"}));
    let ended = c.until("call.ended");
    assert_eq!(ended["call"], "c1");
    assert_eq!(ended["reason"], "deleted");
    assert_eq!(ended["legs"].as_array().unwrap().len(), 2, "{ended}");
    assert!(ended["created_ms"].as_u64().unwrap() <= ended["ended_ms"].as_u64().unwrap());
}

#[test]
fn hostile_media_requests_get_clear_errors() {
    let dir = std::env::temp_dir().join(format!("sb-media-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("engine.toml");
    std::fs::write(&config, "[media]\nconference_max_members = 2\n").unwrap();
    let corrupt = dir.join("corrupt.wav");
    std::fs::write(
        &corrupt,
        b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00garbage",
    )
    .unwrap();
    let e = Engine::start("epoll", &["--config", config.to_str().unwrap()]);
    let mut c = Ctl::connect(e.control);

    let (code, _) = c.err(leg("nope", "a", Value::Null));
    assert_eq!(code, "not_found");
    let (code, _) =
        c.err(json!({"op": "monitor.start", "call": "nope", "supervisor": "s", "agent": "a"}));
    assert_eq!(code, "not_found");

    c.ok(json!({"op": "call.create", "call": "c1"}));
    let (code, _) = c.err(json!({"op": "call.create", "call": "c1"}));
    assert_eq!(code, "conflict");
    c.ok(leg("c1", "a", json!("all")));
    c.ok(leg("c1", "b", json!("all")));
    // The conference holds two members; a leg outside it may still join.
    let (code, msg) = c.err(leg("c1", "c", json!("all")));
    assert_eq!(code, "limit_exceeded", "{msg}");
    c.ok(leg("c1", "c", json!(["a"])));
    let (code, _) = c.err(leg("c1", "a", json!([])));
    assert_eq!(code, "conflict");
    let (code, msg) = c.err(json!({"op": "leg.create", "call": "c1", "codecs": ["G729"]}));
    assert_eq!(code, "bad_request");
    assert!(msg.contains("G729"), "{msg}");
    let (code, _) = c.err(json!({"op": "leg.create", "call": "c1", "sdp": "not sdp"}));
    assert_eq!(code, "bad_request");

    let (code, _) =
        c.err(json!({"op": "monitor.start", "call": "c1", "supervisor": "a", "agent": "a"}));
    assert_eq!(code, "conflict");
    let (code, _) =
        c.err(json!({"op": "monitor.start", "call": "c1", "supervisor": "zz", "agent": "a"}));
    assert_eq!(code, "not_found");
    let (code, _) = c.err(json!({"op": "monitor.start", "call": "c1", "supervisor": "a", "agent": "b", "mode": "shout"}));
    assert_eq!(code, "bad_request");
    let (code, _) = c.err(json!({"op": "leg.delete", "call": "c1", "leg": "zz"}));
    assert_eq!(code, "not_found");
    let (code, _) = c.err(json!({"op": "dtmf.send", "call": "c1", "leg": "a", "digits": "12x"}));
    assert_eq!(code, "bad_request");
    let (code, _) = c.err(json!({"op": "leg.mute", "call": "c1", "leg": "a", "gain_db": 1000}));
    assert_eq!(code, "bad_request");
    let (code, _) = c.err(json!({"op": "play.stop", "call": "c1", "play": 77}));
    assert_eq!(code, "not_found");

    // A leg of another call.
    c.ok(json!({"op": "call.create", "call": "c2"}));
    c.ok(leg("c2", "x", Value::Null));
    let (code, msg) =
        c.err(json!({"op": "monitor.start", "call": "c1", "supervisor": "x", "agent": "a"}));
    assert_eq!(code, "conflict", "{msg}");

    // Prompts: missing, corrupt.
    let (code, msg) =
        c.err(json!({"op": "play.start", "call": "c1", "file": "/nonexistent/x.wav"}));
    assert_eq!(code, "bad_request");
    assert!(msg.contains("does not exist"), "{msg}");
    let (code, msg) =
        c.err(json!({"op": "play.start", "call": "c1", "file": corrupt.to_str().unwrap()}));
    assert_eq!(code, "bad_request");
    assert!(msg.contains("WAV"), "{msg}");
    let (code, _) = c.err(json!({"op": "play.start", "call": "c1", "tone": {"hz": -5}}));
    assert_eq!(code, "bad_request");

    // The connection still works.
    c.ok(json!({"op": "ping"}));
    let _ = std::fs::remove_dir_all(&dir);
}
