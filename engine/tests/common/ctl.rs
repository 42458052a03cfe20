//! A native control client for the end-to-end tests: JSON lines over TCP, replies kept
//! apart from events.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A native control connection that keeps events apart from replies.
pub struct Ctl {
    r: BufReader<TcpStream>,
    w: TcpStream,
    next: u64,
    events: VecDeque<Value>,
}

impl Ctl {
    pub fn connect(addr: SocketAddr) -> Ctl {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Ctl {
            w: s.try_clone().unwrap(),
            r: BufReader::new(s),
            next: 1,
            events: VecDeque::new(),
        }
    }

    pub fn line(&mut self, after: &str) -> Value {
        let mut line = String::new();
        if let Err(e) = self.r.read_line(&mut line) {
            panic!("no reply to {after}: {e}");
        }
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    pub fn raw(&mut self, line: &str) -> Value {
        self.w.write_all(line.as_bytes()).unwrap();
        self.w.write_all(b"\n").unwrap();
        loop {
            let v = self.line(line);
            if v.get("event").is_some() {
                self.events.push_back(v);
            } else {
                return v;
            }
        }
    }

    pub fn req(&mut self, mut v: Value) -> Value {
        let id = self.next;
        self.next += 1;
        v["id"] = id.into();
        let reply = self.raw(&v.to_string());
        assert_eq!(reply["id"], id, "{reply}");
        reply
    }

    pub fn ok(&mut self, v: Value) -> Value {
        let reply = self.req(v.clone());
        assert_eq!(reply["ok"], true, "{v} -> {reply}");
        reply
    }

    /// The error code of a request that must fail; checks the message is there.
    pub fn err(&mut self, v: Value) -> String {
        let reply = self.req(v.clone());
        assert_eq!(reply["ok"], false, "{v} -> {reply}");
        let msg = reply["error"]["message"].as_str().unwrap_or("");
        assert!(!msg.is_empty(), "{reply}");
        reply["error"]["code"].as_str().unwrap().to_owned()
    }

    pub fn event(&mut self, within: Duration) -> Option<Value> {
        if let Some(v) = self.events.pop_front() {
            return Some(v);
        }
        self.r.get_ref().set_read_timeout(Some(within)).unwrap();
        let mut line = String::new();
        let got = self.r.read_line(&mut line);
        self.r
            .get_ref()
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        match got {
            Ok(n) if n > 0 => Some(serde_json::from_str(&line).unwrap()),
            _ => None,
        }
    }

    /// Reads events until one named `name` matching `pred`; returns it.
    pub fn wait_event(
        &mut self,
        name: &str,
        within: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ev = self
                .event(left.max(Duration::from_millis(1)))
                .unwrap_or_else(|| panic!("no `{name}` event; saw {seen:?}"));
            if ev["event"] == name && pred(&ev) {
                return ev;
            }
            seen.push(ev);
        }
    }
}
