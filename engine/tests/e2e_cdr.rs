//! Call detail records seen from outside: an NG call tied to an ACD queue and agent and
//! recorded, then ended; its record arrives as a `cdr` event, is listed by `GET /cdrs` with
//! every filter (behind the HTTP token), is in the JSON-lines file, and is counted in
//! `/metrics`. Bad query parameters answer 400 with a message. A call still up when the
//! engine stops gets its record too.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{Engine, http_get, rtp_packet, sdp, sdp_media_addr, udp};
use serde_json::{Value, json};

const TOKEN: &str = "cdr-s3cret";

/// A native control connection; events are kept aside.
struct Ctl {
    r: BufReader<TcpStream>,
    w: TcpStream,
    next: u64,
    events: Vec<Value>,
}

impl Ctl {
    fn connect(addr: SocketAddr) -> Ctl {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Ctl {
            w: s.try_clone().unwrap(),
            r: BufReader::new(s),
            next: 1,
            events: Vec::new(),
        }
    }

    fn read(&mut self) -> Option<Value> {
        let mut line = String::new();
        match self.r.read_line(&mut line) {
            Ok(n) if n > 0 => Some(serde_json::from_str(&line).unwrap()),
            _ => None,
        }
    }

    fn ok(&mut self, mut v: Value) -> Value {
        let id = self.next;
        self.next += 1;
        v["id"] = id.into();
        writeln!(self.w, "{v}").unwrap();
        loop {
            let r = self.read().expect("reply");
            if r.get("event").is_some() {
                self.events.push(r);
                continue;
            }
            assert_eq!(r["id"], id);
            assert_eq!(r["ok"], true, "{v} -> {r}");
            return r;
        }
    }

    /// Waits for an event matching `f`.
    fn wait(&mut self, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.events.iter().position(&f) {
            return self.events.remove(i);
        }
        let deadline = Instant::now() + Duration::from_secs(8);
        while Instant::now() < deadline {
            if let Some(v) = self.read() {
                if f(&v) {
                    return v;
                }
                self.events.push(v);
            }
        }
        panic!("no {what}; saw {:?}", self.events);
    }
}

/// An NG call; sends `packets` RTP packets from the caller through the engine.
fn ng_call(e: &Engine, call: &str, packets: u16) {
    let ng = e.ng();
    let a = udp();
    let b = udp();
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
    let to = sdp_media_addr(r["sdp"].as_str().unwrap());
    for seq in 0..packets {
        a.send_to(&rtp_packet(seq, u32::from(seq) * 160, 0xcd, 1), to)
            .unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    if packets > 0 {
        let got = common::recv_all(&b, usize::from(packets), Duration::from_secs(3));
        assert_eq!(got.len(), usize::from(packets), "relayed packets");
    }
}

fn get(e: &Engine, path: &str) -> (u16, Value) {
    let (code, body) = http_get(e.http, path, Some(TOKEN));
    let v = serde_json::from_str(&body).unwrap_or(Value::Null);
    (code, v)
}

fn calls_in(v: &Value) -> Vec<String> {
    v["cdrs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["call"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn an_ended_call_leaves_a_record_with_its_queue_agent_and_recording() {
    let dir = std::env::temp_dir().join(format!("sb-cdr-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("switchboard.toml");
    std::fs::write(
        &cfg,
        format!("[control]\nunix = \"\"\n\n[http]\ntoken = \"{TOKEN}\"\n"),
    )
    .unwrap();
    let e = Engine::start("epoll", &["--config", cfg.to_str().unwrap()]);
    let mut c = Ctl::connect(e.control);
    c.ok(json!({"op": "subscribe", "topics": ["all"]}));

    ng_call(&e, "cdr-call-1", 50);
    ng_call(&e, "cdr-call-2", 0);
    c.ok(json!({"op": "queue.create", "queue": 5, "name": "billing"}));
    c.ok(json!({"op": "agent.create", "agent": 30}));
    c.ok(json!({"op": "agent.status", "agent": 30, "status": "available"}));
    c.ok(
        json!({"op": "task.enqueue", "task": 1, "queue": 5, "channel": "voice",
        "call": "cdr-call-1", "leg": "cust"}),
    );
    c.wait("task.offered", |v| {
        v["event"] == "task.offered" && v["task"] == 1
    });
    c.ok(json!({"op": "offer.accept", "task": 1, "agent": 30}));
    c.wait("task.assigned", |v| {
        v["event"] == "task.assigned" && v["task"] == 1
    });
    let rec = c.ok(json!({"op": "record.start", "call": "cdr-call-1"}));
    let rec_id = rec["recording"].as_str().unwrap().to_owned();
    c.wait("recording.started", |v| v["event"] == "recording.started");

    let before_end = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    c.ok(json!({"op": "call.delete", "call": "cdr-call-1"}));
    c.ok(json!({"op": "call.delete", "call": "cdr-call-2"}));
    let ev = c.wait("cdr event", |v| {
        v["event"] == "cdr" && v["call"] == "cdr-call-1"
    });
    assert_eq!(ev["queue"], 5, "{ev}");
    assert_eq!(ev["agent"], 30, "{ev}");
    assert_eq!(ev["task"], 1, "{ev}");
    assert_eq!(ev["recordings"], json!([rec_id]), "{ev}");
    assert!(ev["id"].is_i64(), "{ev}");
    assert!(ev["reason"].is_string(), "{ev}");
    let start = ev["start_ms"].as_u64().unwrap();
    let end = ev["end_ms"].as_u64().unwrap();
    assert!(start <= before_end && end >= before_end - 1000, "{ev}");
    assert_eq!(ev["duration_ms"].as_u64().unwrap(), end - start);
    assert!(ev["start"].as_str().unwrap().ends_with('Z'));
    // Made from the control plane's `call.ended`: the legs carry their figures.
    assert_eq!(ev["source"], "call.ended", "{ev}");
    assert_eq!(ev["reason"], "deleted", "{ev}");
    let legs = ev["legs"].as_array().unwrap();
    assert_eq!(legs.len(), 2, "{ev}");
    let total: u64 = legs.iter().map(|l| l["packets"].as_u64().unwrap()).sum();
    assert_eq!(total, 50, "{ev}");
    let cust = legs
        .iter()
        .find(|l| l["tag"] == "cust")
        .expect("the caller's leg");
    assert_eq!(cust["packets"], 50, "{ev}");
    assert!(cust["mos"].as_f64().unwrap() > 1.0, "{ev}");
    assert!(
        cust["local"].is_string() && cust["remote"].is_string(),
        "{ev}"
    );
    c.wait("second cdr", |v| {
        v["event"] == "cdr" && v["call"] == "cdr-call-2"
    });

    // Listed, newest first, with every filter.
    let (code, all) = get(&e, "/cdrs");
    assert_eq!(code, 200, "{all}");
    assert_eq!(calls_in(&all), ["cdr-call-2", "cdr-call-1"]);
    let one = &all["cdrs"][1];
    assert_eq!(one["recordings"], json!([rec_id]));
    assert_eq!(one["id"], ev["id"]);
    for (q, want) in [
        ("/cdrs?call=cdr-call-1", vec!["cdr-call-1"]),
        ("/cdrs?agent=30", vec!["cdr-call-1"]),
        ("/cdrs?queue=5", vec!["cdr-call-1"]),
        ("/cdrs?queue=6", vec![]),
        (
            "/cdrs?from=2000-01-01&to=2999-01-01",
            vec!["cdr-call-2", "cdr-call-1"],
        ),
        ("/cdrs?to=2000-01-01", vec![]),
        ("/cdrs?limit=1", vec!["cdr-call-2"]),
    ] {
        let (code, v) = get(&e, q);
        assert_eq!(code, 200, "{q}: {v}");
        assert_eq!(calls_in(&v), want, "{q}");
    }
    let (_, page) = get(&e, "/cdrs?limit=1");
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let (_, next) = get(&e, &format!("/cdrs?limit=1&cursor={cursor}"));
    assert_eq!(calls_in(&next), ["cdr-call-1"]);

    // Bad parameters say what is wrong; the token is required.
    for bad in [
        "/cdrs?limit=0",
        "/cdrs?from=yesterday",
        "/cdrs?colour=red",
        "/cdrs?call=a&call=b",
        "/cdrs?cursor=x",
    ] {
        let (code, v) = get(&e, bad);
        assert_eq!(code, 400, "{bad}: {v}");
        assert_eq!(v["error"]["code"], "bad_request");
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    }
    assert_eq!(http_get(e.http, "/cdrs", None).0, 401);
    assert_eq!(http_get(e.http, "/cdrs", Some("wrong")).0, 403);

    // The same records as JSON lines.
    let jsonl: String = std::fs::read_dir(e.dir.join("cdr"))
        .unwrap()
        .map(|f| std::fs::read_to_string(f.unwrap().path()).unwrap())
        .collect();
    let lines: Vec<Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{jsonl}");
    assert_eq!(lines[0]["call"], "cdr-call-1");
    assert_eq!(lines[0]["agent"], 30);
    assert!(e.dir.join("cdr.sqlite").exists());

    // Counted in /metrics.
    let (code, text) = http_get(e.http, "/metrics", Some(TOKEN));
    assert_eq!(code, 200);
    assert!(text.contains("switchboard_cdr_written_total 2"), "{text}");
    assert!(text.contains("switchboard_call_duration_seconds_count 2"));
    assert!(text.contains("# TYPE switchboard_leg_mos histogram"));
    assert!(text.contains("switchboard_leg_mos_count 1"), "{text}");
    assert!(text.contains("switchboard_leg_loss_ratio_count 1"));
    assert!(text.contains("switchboard_calls_ended_total{reason=\"deleted\"} 2"));

    // Calls still up when the engine stops get their records too (reason `shutdown`).
    ng_call(&e, "cdr-call-3", 0);
    let mut e = e;
    assert!(
        e.interrupt(Duration::from_secs(10)).is_some(),
        "engine did not stop"
    );
    let jsonl: String = std::fs::read_dir(e.dir.join("cdr"))
        .unwrap()
        .map(|f| std::fs::read_to_string(f.unwrap().path()).unwrap())
        .collect();
    let last: Value = serde_json::from_str(jsonl.lines().last().unwrap()).unwrap();
    assert_eq!(last["call"], "cdr-call-3", "{jsonl}");
    assert_eq!(last["reason"], "shutdown", "{last}");
    let _ = std::fs::remove_dir_all(&dir);
}
