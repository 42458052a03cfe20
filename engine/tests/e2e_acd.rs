//! The ACD seen from outside: queues, agents and tasks over the native control protocol
//! against a real `switchboard` process — offers, accept, reject and timeout with their
//! events in order, live priority and agitation changes, voice tasks tied to NG calls,
//! durability across `kill -9`, hostile input, metrics.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{Engine, sdp, udp};
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

    fn raw(&mut self, line: &str) -> Value {
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

    fn req(&mut self, mut v: Value) -> Value {
        let id = self.next;
        self.next += 1;
        v["id"] = id.into();
        let reply = self.raw(&v.to_string());
        assert_eq!(reply["id"], id, "{reply}");
        reply
    }

    fn ok(&mut self, v: Value) -> Value {
        let reply = self.req(v.clone());
        assert_eq!(reply["ok"], true, "{v} -> {reply}");
        reply
    }

    /// The error code of a request that must fail; checks the message is there.
    fn err(&mut self, v: Value) -> String {
        let reply = self.req(v.clone());
        assert_eq!(reply["ok"], false, "{v} -> {reply}");
        let msg = reply["error"]["message"].as_str().unwrap_or("");
        assert!(!msg.is_empty(), "{reply}");
        reply["error"]["code"].as_str().unwrap().to_owned()
    }

    fn event(&mut self, within: Duration) -> Option<Value> {
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

    /// Reads events until `name` for `task` (any task when `None`); returns it and every
    /// event read before it.
    fn until(&mut self, name: &str, task: Option<u64>) -> (Value, Vec<Value>) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ev = self
                .event(left.max(Duration::from_millis(1)))
                .unwrap_or_else(|| panic!("no `{name}` for {task:?}; saw {before:?}"));
            if ev["event"] == name && task.is_none_or(|t| ev["task"] == t) {
                return (ev, before);
            }
            before.push(ev);
        }
    }

    /// Every event up to and including `name` for `task`.
    fn collect(&mut self, name: &str, task: u64) -> Vec<Value> {
        let (last, mut before) = self.until(name, Some(task));
        before.push(last);
        before
    }

    fn subscribe_acd(&mut self) {
        let r = self.ok(json!({"op": "subscribe", "topics": ["acd"]}));
        assert_eq!(r["topics"], json!(["acd"]));
    }
}

fn chat(task: u64, queue: u64) -> Value {
    json!({"op": "task.enqueue", "task": task, "queue": queue, "channel": "chat"})
}

/// Task and offer events as `(event, task, agent)`, for order checks.
fn trail(events: &[Value]) -> Vec<(String, u64, Option<u64>)> {
    events
        .iter()
        .filter(|e| e["task"].is_u64())
        .map(|e| {
            (
                e["event"].as_str().unwrap().to_owned(),
                e["task"].as_u64().unwrap(),
                e["agent"].as_u64(),
            )
        })
        .collect()
}

fn s(name: &str, task: u64, agent: Option<u64>) -> (String, u64, Option<u64>) {
    (name.to_owned(), task, agent)
}

#[test]
fn offers_accept_reject_timeout_with_events_in_order() {
    let e = Engine::start("epoll", &[]);
    let mut c = Ctl::connect(e.control);
    c.ok(json!({"op": "queue.create", "queue": 1, "name": "support",
        "offer_timeout_ms": 400, "reject_delay_ms": 300}));
    for a in [1, 2] {
        c.ok(json!({"op": "agent.create", "agent": a, "capacity": {"chat": 1}}));
    }
    c.subscribe_acd();
    c.ok(json!({"op": "agent.status", "agent": 1, "status": "available"}));
    c.ok(json!({"op": "agent.status", "agent": 2, "status": "available"}));

    // Agent 1 has been idle longest: it gets the first offer, with the context.
    let mut t1 = chat(101, 1);
    t1["context"] = json!({"ticket": 42, "subject": "refund"});
    let r = c.ok(t1);
    assert_eq!(r["state"], "offered", "{r}");
    let (offer, _) = c.until("task.offered", Some(101));
    assert_eq!(offer["agent"], 1);
    assert_eq!(offer["context"]["ticket"], 42);
    assert_eq!(offer["channel"], "chat");
    assert!(offer["expires_at"].as_u64().unwrap() > offer["at"].as_u64().unwrap());

    // Reject: back in line, offered to agent 2; accept.
    let r = c.ok(json!({"op": "offer.reject", "task": 101, "agent": 1}));
    assert_eq!(r["agents"], json!([2]), "{r}");
    let r = c.ok(json!({"op": "offer.accept", "task": 101, "agent": 2}));
    assert_eq!(r["state"], "assigned");
    assert_eq!(r["agent"], 2);
    let (assigned, _) = c.until("task.assigned", Some(101));
    assert_eq!(assigned["context"]["subject"], "refund");
    assert!(assigned["waited_ms"].is_u64());
    // Accepting twice is a conflict.
    assert_eq!(
        c.err(json!({"op": "offer.accept", "task": 101, "agent": 2})),
        "conflict"
    );

    // Past agent 1's reject delay, a new task goes to it; nobody answers; the offer times
    // out, and after the reject delay it is offered to agent 1 again (agent 2 is full).
    std::thread::sleep(Duration::from_millis(350));
    c.ok(chat(102, 1));
    let (_, _) = c.until("offer.timeout", Some(102));
    let (again, _) = c.until("task.offered", Some(102));
    assert_eq!(again["agent"], 1);
    c.ok(json!({"op": "offer.accept", "task": 102, "agent": 1}));
    c.ok(json!({"op": "task.complete", "task": 101}));
    c.ok(json!({"op": "task.complete", "task": 102}));
    let (done, _) = c.until("task.completed", Some(102));
    assert_eq!(done["agent"], 1);

    let ended = c.ok(json!({"op": "task.get", "task": 101}));
    assert_eq!(ended["state"], "ended");
    assert_eq!(ended["end"], "completed");
    assert_eq!(
        c.err(json!({"op": "task.complete", "task": 101})),
        "conflict"
    );
}

#[test]
fn event_stream_is_one_total_order() {
    let e = Engine::start("epoll", &[]);
    let mut c = Ctl::connect(e.control);
    c.subscribe_acd();
    c.ok(
        json!({"op": "queue.create", "queue": 1, "offer_timeout_ms": 300,
        "reject_delay_ms": 200}),
    );
    c.ok(json!({"op": "agent.create", "agent": 1, "capacity": {"chat": 1}}));
    c.ok(json!({"op": "agent.create", "agent": 2, "capacity": {"chat": 1}}));
    c.ok(json!({"op": "agent.status", "agent": 1, "status": "available"}));
    c.ok(json!({"op": "agent.status", "agent": 2, "status": "available"}));
    c.ok(chat(7, 1));
    c.ok(json!({"op": "offer.reject", "task": 7, "agent": 1}));
    c.ok(json!({"op": "offer.accept", "task": 7, "agent": 2}));
    c.ok(chat(8, 1));
    let mut log = c.collect("offer.timeout", 8);
    log.extend(c.collect("task.offered", 8));
    c.ok(json!({"op": "offer.accept", "task": 8, "agent": 1}));
    c.ok(json!({"op": "task.cancel", "task": 7}));
    log.extend(c.collect("task.completed", 7));
    assert_eq!(
        trail(&log),
        vec![
            s("task.queued", 7, None),
            s("task.offered", 7, Some(1)),
            s("offer.rejected", 7, Some(1)),
            s("task.offered", 7, Some(2)),
            s("offer.accepted", 7, Some(2)),
            s("task.assigned", 7, Some(2)),
            s("task.queued", 8, None),
            s("task.offered", 8, Some(1)),
            s("offer.timeout", 8, Some(1)),
            s("task.offered", 8, Some(1)),
            s("offer.accepted", 8, Some(1)),
            s("task.assigned", 8, Some(1)),
            s("task.completed", 7, Some(2)),
        ]
    );
    // Sequence numbers only grow; agent state changes are interleaved in the same order.
    let seqs: Vec<u64> = log.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert!(
        log.iter()
            .any(|e| e["event"] == "agent.state" && e["state"] == "reserved")
    );
}

#[test]
fn live_priority_and_agitation_change_who_is_served() {
    let e = Engine::start("epoll", &[]);
    let mut c = Ctl::connect(e.control);
    c.ok(
        json!({"op": "queue.create", "queue": 2, "aging_per_minute": 0,
        "value_tags": {"vip": 100},
        "emotion": {"threshold": 0.5, "min_soothing": 4, "window_ms": 60000}}),
    );
    c.ok(
        json!({"op": "agent.create", "agent": 10, "capacity": {"chat": 1},
        "attributes": {"soothing": 1}}),
    );
    c.ok(
        json!({"op": "agent.create", "agent": 11, "capacity": {"chat": 1},
        "attributes": {"soothing": 5, "languages": ["en", "de"]}}),
    );
    c.subscribe_acd();
    for t in [201, 202, 203] {
        c.ok(chat(t, 2));
        std::thread::sleep(Duration::from_millis(5));
    }
    // Layer 2: the last task becomes a VIP while waiting and goes first.
    let r = c.ok(json!({"op": "task.update", "task": 203, "tags": ["vip"]}));
    assert_eq!(r["priority"], 100);
    c.ok(json!({"op": "agent.status", "agent": 10, "status": "available"}));
    let (offer, _) = c.until("task.offered", None);
    assert_eq!(
        (offer["task"].as_u64(), offer["agent"].as_u64()),
        (Some(203), Some(10))
    );
    c.ok(json!({"op": "offer.accept", "task": 203, "agent": 10}));

    // Layer 3: the oldest task turns agitated: it now waits for a soothing agent, so the
    // plain agent gets the next one in line instead.
    let r = c.ok(json!({"op": "task.update", "task": 201, "agitation": 0.9}));
    assert_eq!(r["agitation"], 0.9);
    c.ok(json!({"op": "task.complete", "task": 203}));
    let (offer, _) = c.until("task.offered", None);
    assert_eq!(
        (offer["task"].as_u64(), offer["agent"].as_u64()),
        (Some(202), Some(10))
    );
    c.ok(json!({"op": "offer.accept", "task": 202, "agent": 10}));
    let waiting = c.ok(json!({"op": "task.get", "task": 201}));
    assert_eq!(waiting["state"], "waiting");
    // The soothing agent logs in and takes the agitated customer.
    c.ok(json!({"op": "agent.status", "agent": 11, "status": "available"}));
    let (offer, _) = c.until("task.offered", None);
    assert_eq!(
        (offer["task"].as_u64(), offer["agent"].as_u64()),
        (Some(201), Some(11))
    );

    // Live statistics and the expected wait for a new task.
    let st = c.ok(json!({"op": "queue.stats", "queue": 2, "channel": "chat"}));
    let st = &st["stats"];
    assert_eq!(st["waiting"], 0);
    assert_eq!(st["offered_now"], 1);
    assert_eq!(st["total"]["answered"], 2);
    assert!(st["expected_wait"].get("ms").is_some());
    let a = c.ok(json!({"op": "agent.get", "agent": 11}));
    assert_eq!(a["state"], "reserved");
    assert_eq!(a["agent"]["attributes"]["languages"], json!(["en", "de"]));
}

fn ng_call(e: &Engine, call: &str) {
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
}

#[test]
fn voice_tasks_carry_the_call_and_end_on_hang_up() {
    let e = Engine::start("epoll", &[]);
    ng_call(&e, "acd-call-1");
    let mut c = Ctl::connect(e.control);
    c.ok(json!({"op": "queue.create", "queue": 5, "skills": "english & sales>=2"}));
    c.ok(json!({"op": "agent.create", "agent": 30,
        "skills": {"english": 3, "sales": 4}}));
    c.subscribe_acd();
    c.ok(json!({"op": "agent.status", "agent": 30, "status": "available"}));
    let voice = |task: u64| {
        json!({"op": "task.enqueue", "task": task, "queue": 5, "channel": "voice",
            "call": "acd-call-1", "leg": "cust", "context": {"ivr": "billing"}})
    };
    c.ok(voice(1));
    let (offer, _) = c.until("task.offered", Some(1));
    assert_eq!(offer["call"], "acd-call-1");
    assert_eq!(offer["leg"], "cust");
    c.ok(json!({"op": "offer.accept", "task": 1, "agent": 30}));
    let (assigned, _) = c.until("task.assigned", Some(1));
    assert_eq!(assigned["call"], "acd-call-1");
    assert_eq!(assigned["leg"], "cust");
    assert_eq!(assigned["agent"], 30);
    // A second task on the same call waits (one voice call per agent).
    c.ok(voice(2));
    // Engine-side bridging needs the customer's leg.
    let mut bridged = voice(3);
    bridged["bridge"] = true.into();
    bridged.as_object_mut().unwrap().remove("leg");
    assert_eq!(c.err(bridged), "bad_request");
    // A voice task must name a live call and one of its legs.
    let mut ghost = voice(4);
    ghost["call"] = "no-such-call".into();
    assert_eq!(c.err(ghost), "not_found");
    let mut bad_leg = voice(4);
    bad_leg["leg"] = "stranger".into();
    assert_eq!(c.err(bad_leg), "not_found");

    // Hang-up: the waiting task is abandoned, the assigned one completed, both with reason.
    c.ok(json!({"op": "call.delete", "call": "acd-call-1"}));
    let (ab, seen) = c.until("task.abandoned", Some(2));
    assert_eq!(ab["reason"], "hangup");
    let done = seen
        .into_iter()
        .find(|e| e["event"] == "task.completed")
        .unwrap_or_else(|| c.until("task.completed", Some(1)).0);
    assert_eq!(done["task"], 1);
    assert_eq!(done["reason"], "hangup");
    assert_eq!(
        c.ok(json!({"op": "task.get", "task": 2}))["end"],
        "abandoned"
    );

    // Metrics: per-queue figures and agents by state appear within a publication period.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (code, body) = e.http_get("/metrics");
        assert_eq!(code, 200);
        if body.contains("switchboard_acd_queue_tasks_total{queue=\"5\",outcome=\"abandoned\"} 1") {
            assert!(body.contains("switchboard_acd_queue_waiting{queue=\"5\"} 0"));
            assert!(body.contains("switchboard_acd_queue_longest_wait_seconds{queue=\"5\"}"));
            assert!(body.contains("switchboard_acd_queue_service_level{queue=\"5\"}"));
            assert!(body.contains("switchboard_acd_queue_abandon_rate{queue=\"5\"} 0.5"));
            assert!(body.contains("switchboard_acd_agents{state=\"idle\"} 1"));
            assert!(body.contains("switchboard_acd_queue_agents{queue=\"5\",state=\"idle\"} 1"));
            break;
        }
        assert!(Instant::now() < deadline, "{body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn waiting_chats_survive_kill_9_in_order_and_voice_tasks_end() {
    let mut e = Engine::start("epoll", &[]);
    ng_call(&e, "acd-voice-9");
    let mut c = Ctl::connect(e.control);
    c.ok(
        json!({"op": "queue.create", "queue": 3, "value_tags": {"vip": 50},
        "when_no_agents": "leave"}),
    );
    c.ok(json!({"op": "agent.create", "agent": 20, "capacity": {"chat": 1}}));
    c.ok(json!({"op": "agent.status", "agent": 20, "status": "available"}));
    // The first chat is assigned when the engine dies; two more and an email wait.
    let mut first = chat(301, 3);
    first["context"] = json!({"order": "A-1"});
    c.ok(first);
    c.ok(json!({"op": "offer.accept", "task": 301, "agent": 20}));
    for t in [302, 303] {
        std::thread::sleep(Duration::from_millis(20));
        c.ok(chat(t, 3));
    }
    c.ok(
        json!({"op": "task.enqueue", "task": 304, "queue": 3, "channel": "email",
        "tags": ["vip"], "agitation": 0.25}),
    );
    c.ok(
        json!({"op": "task.enqueue", "task": 305, "queue": 3, "channel": "voice",
        "call": "acd-voice-9", "leg": "cust"}),
    );
    let before: Vec<Value> = (301..=304)
        .map(|t| c.ok(json!({"op": "task.get", "task": t})))
        .collect();
    drop(c);

    e.restart();
    let mut c = Ctl::connect(e.control);
    // Voice tasks end: their calls did not survive.
    let v = c.ok(json!({"op": "task.get", "task": 305}));
    assert_eq!(v["state"], "ended", "{v}");
    assert_eq!(v["reason"], "call_gone");
    // Everything else is back with its original enqueue time.
    for b in &before {
        let t = b["task"].as_u64().unwrap();
        let now = c.ok(json!({"op": "task.get", "task": t}));
        assert_eq!(now["state"], "waiting", "{now}");
        assert_eq!(now["enqueued_at"], b["enqueued_at"], "{b} vs {now}");
        assert_eq!(now["channel"], b["channel"]);
        assert_eq!(now["priority"], b["priority"]);
        assert!(now["waited_ms"].as_u64().unwrap() >= b["waited_ms"].as_u64().unwrap());
    }
    assert_eq!(
        c.ok(json!({"op": "task.get", "task": 301}))["context"]["order"],
        "A-1"
    );
    assert_eq!(
        c.ok(json!({"op": "task.get", "task": 304}))["agitation"],
        0.25
    );
    // The agent is back logged in but away until its desk says otherwise.
    let a = c.ok(json!({"op": "agent.get", "agent": 20}));
    assert_eq!(a["status"], "away", "{a}");
    assert_eq!(a["reason"], "engine_restart");
    let q = c.ok(json!({"op": "queue.get", "queue": 3}));
    assert_eq!(q["queue"]["when_no_agents"], "leave");
    assert_eq!(q["waiting"], 4);

    // Served in the original order: the chat the agent held, then the others.
    c.subscribe_acd();
    c.ok(json!({"op": "agent.status", "agent": 20, "status": "available"}));
    let mut order = Vec::new();
    for _ in 0..3 {
        let (offer, _) = c.until("task.offered", None);
        let t = offer["task"].as_u64().unwrap();
        order.push(t);
        c.ok(json!({"op": "offer.accept", "task": t, "agent": 20}));
        c.ok(json!({"op": "task.complete", "task": t}));
    }
    assert_eq!(order, vec![301, 302, 303]);
    let st = c.ok(json!({"op": "queue.stats", "queue": 3, "channel": "email"}));
    assert_eq!(
        st["stats"]["waiting"], 1,
        "the email still waits (no email capacity)"
    );

    // A second crash right away loses nothing acknowledged either.
    c.ok(chat(306, 3));
    drop(c);
    e.restart();
    let mut c = Ctl::connect(e.control);
    assert_eq!(
        c.ok(json!({"op": "task.get", "task": 306}))["state"],
        "waiting"
    );
    assert_eq!(
        c.ok(json!({"op": "task.get", "task": 304}))["state"],
        "waiting"
    );
    assert_eq!(c.err(json!({"op": "task.get", "task": 303})), "not_found");
}

#[test]
fn hostile_input_gets_clear_errors_and_the_connection_stays_usable() {
    let e = Engine::start("epoll", &[]);
    let mut c = Ctl::connect(e.control);
    c.ok(json!({"op": "queue.create", "queue": 1, "max_length": 1}));
    c.ok(json!({"op": "agent.create", "agent": 1}));
    let deep = format!("{}a{}", "(".repeat(200), ")".repeat(200));
    let cases: Vec<(Value, &str)> = vec![
        // Wrong types.
        (json!({"op": "queue.create", "queue": "one"}), "bad_request"),
        (
            json!({"op": "queue.create", "queue": 9, "strategy": 3}),
            "bad_request",
        ),
        (
            json!({"op": "agent.create", "agent": 9, "skills": ["a"]}),
            "bad_request",
        ),
        (
            json!({"op": "task.enqueue", "task": 1, "queue": 1, "channel": 5}),
            "bad_request",
        ),
        (json!({"op": "task.get", "task": {"id": 1}}), "bad_request"),
        (json!({"op": "task.get", "task": -1}), "bad_request"),
        (json!({"op": "offer.accept", "task": 1}), "bad_request"),
        (
            json!({"op": "agent.status", "agent": 1, "status": "asleep"}),
            "bad_request",
        ),
        (
            json!({"op": "queue.create", "queue": 9, "colour": "red"}),
            "bad_request",
        ),
        // Huge values.
        (
            json!({"op": "queue.create", "queue": 9, "offer_timeout_ms": 1e300}),
            "bad_request",
        ),
        (
            json!({"op": "queue.create", "queue": 9, "wrap_up_ms": u64::MAX}),
            "bad_request",
        ),
        (
            json!({"op": "task.enqueue", "task": 1, "queue": 1, "channel": "chat",
            "priority": 4_294_967_296u64}),
            "bad_request",
        ),
        (
            json!({"op": "task.enqueue", "task": 1, "queue": 1, "channel": "chat",
            "agitation": 1e9}),
            "bad_request",
        ),
        (
            json!({"op": "task.enqueue", "task": 1, "queue": 1, "channel": "chat",
            "context": "x".repeat(40_000)}),
            "bad_request",
        ),
        (
            json!({"op": "agent.create", "agent": 9, "skills": {"x": 300}}),
            "bad_request",
        ),
        (
            json!({"op": "forecast.staffing", "arrivals": 1e12, "aht_s": 1e6,
            "target_service_level": 0.8}),
            "bad_request",
        ),
        // Unknown ids.
        (json!({"op": "task.get", "task": 424242}), "not_found"),
        (json!({"op": "task.cancel", "task": 424242}), "not_found"),
        (
            json!({"op": "offer.accept", "task": 424242, "agent": 1}),
            "not_found",
        ),
        (
            json!({"op": "agent.status", "agent": 77, "status": "available"}),
            "not_found",
        ),
        (json!({"op": "agent.get", "agent": 77}), "not_found"),
        (json!({"op": "queue.delete", "queue": 77}), "not_found"),
        (json!({"op": "queue.stats", "queue": 77}), "not_found"),
        (
            json!({"op": "queue.update", "queue": 77, "wrap_up_ms": 1}),
            "not_found",
        ),
        (
            json!({"op": "task.enqueue", "task": 1, "queue": 77, "channel": "chat"}),
            "not_found",
        ),
        (
            json!({"op": "task.enqueue", "task": 1, "queue": 1, "channel": "chat",
            "preferred_agent": 77}),
            "not_found",
        ),
        // Invalid skill expressions and names.
        (
            json!({"op": "queue.create", "queue": 9, "skills": "billing >= "}),
            "bad_request",
        ),
        (
            json!({"op": "queue.create", "queue": 9, "skills": "a & (b"}),
            "bad_request",
        ),
        (
            json!({"op": "queue.create", "queue": 9, "skills": "a >= 9"}),
            "bad_request",
        ),
        (
            json!({"op": "queue.create", "queue": 9, "skills": ""}),
            "bad_request",
        ),
        (
            json!({"op": "queue.create", "queue": 9, "skills": deep}),
            "bad_request",
        ),
        (
            json!({"op": "queue.create", "queue": 9, "steps": [{"skills": "a"}, {"skills": "*"}]}),
            "bad_request",
        ),
        (
            json!({"op": "task.enqueue", "task": 1, "queue": 1, "channel": "chat",
            "skills": "&&"}),
            "bad_request",
        ),
        (
            json!({"op": "agent.create", "agent": 9, "skills": {"no spaces": 3}}),
            "bad_request",
        ),
        // Unknown customer-value tag, unknown op, voice fields on a chat.
        (
            json!({"op": "task.enqueue", "task": 1, "queue": 1, "channel": "chat",
            "tags": ["gold"]}),
            "bad_request",
        ),
        (json!({"op": "queue.explode", "queue": 1}), "unknown_op"),
        (
            json!({"op": "task.enqueue", "task": 1, "queue": 1, "channel": "chat",
            "call": "x"}),
            "bad_request",
        ),
    ];
    for (req, code) in cases {
        let got = c.err(req.clone());
        assert_eq!(got, code, "{req}");
        assert_eq!(c.ok(json!({"op": "ping"}))["pong"], true);
    }
    // State conflicts.
    assert_eq!(c.err(json!({"op": "queue.create", "queue": 1})), "conflict");
    assert_eq!(c.err(json!({"op": "agent.create", "agent": 1})), "conflict");
    c.ok(chat(1, 1));
    assert_eq!(c.err(chat(1, 1)), "conflict");
    assert_eq!(c.err(chat(2, 1)), "queue_full");
    assert_eq!(c.err(json!({"op": "task.complete", "task": 1})), "conflict");
    assert_eq!(c.err(json!({"op": "queue.delete", "queue": 1})), "conflict");
    assert_eq!(
        c.err(json!({"op": "offer.reject", "task": 1, "agent": 1})),
        "conflict"
    );
    c.ok(json!({"op": "task.cancel", "task": 1}));
    assert_eq!(c.err(json!({"op": "task.cancel", "task": 1})), "conflict");
    c.ok(json!({"op": "queue.delete", "queue": 1}));
    // A line of garbage and an over-long line, then business as usual.
    assert_eq!(
        c.raw("{\"op\": \"task.get\", \"task\": ")["error"]["code"],
        "bad_request"
    );
    let long = format!(
        "{{\"op\":\"task.enqueue\",\"context\":\"{}\"}}",
        "y".repeat(70_000)
    );
    assert_eq!(c.raw(&long)["error"]["code"], "too_large");
    // Erlang C: 360 calls per 30 minutes at 240 s, 80/20 needs 54 agents.
    let f = c.ok(
        json!({"op": "forecast.staffing", "arrivals": 360, "interval_s": 1800,
        "aht_s": 240, "target_service_level": 0.8, "sl_seconds": 20}),
    );
    assert_eq!(f["agents"], 54, "{f}");
    let f = c.ok(
        json!({"op": "forecast.staffing", "arrivals": 360, "aht_s": 240,
        "target_service_level": 0.8, "patience_s": 120}),
    );
    assert_eq!(f["model"], "erlang_a");
    assert!(f["agents"].as_u64().unwrap() <= 54);
    let f = c.ok(
        json!({"op": "forecast.staffing", "arrivals": 360, "aht_s": 240,
        "target_asa_s": 15}),
    );
    assert!(f["asa_s"].as_f64().unwrap() <= 15.0);
    assert_eq!(c.ok(json!({"op": "ping"}))["pong"], true);
}

/// The shard a tenant maps to: FNV-1a of its name modulo the shard count (as the engine).
fn shard_of(tenant: &str, shards: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in tenant.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h % shards
}

/// Names of the engine's ACD shard threads (`sb-acd-K`), from `/proc`.
fn acd_threads(e: &Engine) -> Vec<String> {
    let dir = format!("/proc/{}/task", e.child.id());
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_owned())
        .filter(|n| n.starts_with("sb-acd-") && n != "sb-acd-store")
        .collect();
    names.sort();
    names
}

/// Starts an engine with `[acd] shards = n` in a configuration file.
fn start_with_shards(n: u32) -> Engine {
    let k = std::process::id();
    let path = std::env::temp_dir().join(format!("sb-acd-shards-{k}-{n}-{}.toml", free_seq()));
    std::fs::write(&path, format!("[acd]\nshards = {n}\n")).unwrap();
    Engine::start("epoll", &["--config", path.to_str().unwrap()])
}

fn free_seq() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    SEQ.fetch_add(1, Ordering::Relaxed)
}

/// One queue, one chat agent available, in `tenant`.
fn tenant_setup(c: &mut Ctl, tenant: &str, skill: &str) {
    c.ok(
        json!({"op": "queue.create", "tenant": tenant, "queue": 1, "name": tenant,
        "skills": skill}),
    );
    c.ok(json!({"op": "agent.create", "tenant": tenant, "agent": 7,
        "skills": {skill: 3}, "capacity": {"chat": 1}}));
}

#[test]
fn two_tenants_hold_the_same_ids_independently() {
    let e = Engine::start("epoll", &[]);
    let mut c = Ctl::connect(e.control);
    c.subscribe_acd();
    // The default tenant and an explicit one: same queue, agent and task ids.
    tenant_setup(&mut c, "default", "billing");
    tenant_setup(&mut c, "acme", "sales");
    assert_eq!(
        c.ok(json!({"op": "queue.get", "queue": 1}))["queue"]["name"],
        "default"
    );
    assert_eq!(
        c.ok(json!({"op": "queue.get", "tenant": "acme", "queue": 1}))["queue"]["name"],
        "acme"
    );
    // Creating an id that exists in the other tenant is no conflict; again in the same is.
    assert_eq!(
        c.err(json!({"op": "queue.create", "tenant": "acme", "queue": 1})),
        "conflict"
    );
    assert_eq!(
        c.err(json!({"op": "queue.get", "tenant": "nobody", "queue": 1})),
        "not_found"
    );
    assert_eq!(
        c.ok(json!({"op": "queue.list", "tenant": "nobody"}))["queues"],
        json!([])
    );
    // Task 5 waits in both; only acme's agent becomes available: only acme's is offered.
    c.ok(chat(5, 1));
    let mut t = chat(5, 1);
    t["tenant"] = "acme".into();
    c.ok(t);
    c.ok(json!({"op": "agent.status", "tenant": "acme", "agent": 7, "status": "available"}));
    let (offer, before) = c.until("task.offered", Some(5));
    assert_eq!(offer["tenant"], "acme", "{offer}");
    assert_eq!(offer["agent"], 7);
    assert!(before.iter().all(|e| e["tenant"].is_string()), "{before:?}");
    let queued: Vec<&Value> = before
        .iter()
        .filter(|e| e["event"] == "task.queued")
        .collect();
    assert_eq!(queued.len(), 2, "{before:?}");
    assert_eq!(queued[0]["tenant"], "default");
    assert_eq!(queued[1]["tenant"], "acme");
    assert_eq!(
        c.ok(json!({"op": "task.get", "task": 5}))["state"],
        "waiting"
    );
    assert_eq!(
        c.ok(json!({"op": "task.get", "tenant": "acme", "task": 5}))["state"],
        "offered"
    );
    // Accepting in the wrong tenant finds no offer there.
    assert_eq!(
        c.err(json!({"op": "offer.accept", "task": 5, "agent": 7})),
        "conflict"
    );
    c.ok(json!({"op": "offer.accept", "tenant": "acme", "task": 5, "agent": 7}));
    c.ok(json!({"op": "task.complete", "tenant": "acme", "task": 5}));
    let (done, _) = c.until("task.completed", Some(5));
    assert_eq!(done["tenant"], "acme");
    // The default tenant's task 5 still waits, and its id can be served there now.
    c.ok(json!({"op": "agent.status", "agent": 7, "status": "available"}));
    let (offer, _) = c.until("task.offered", Some(5));
    assert_eq!(offer["tenant"], "default");
    assert_eq!(
        c.ok(json!({"op": "task.get", "tenant": "acme", "task": 5}))["state"],
        "ended"
    );
    // Statistics are per tenant.
    let acme = c.ok(json!({"op": "queue.stats", "tenant": "acme", "queue": 1}));
    assert_eq!(acme["stats"]["total"]["completed"], 1, "{acme}");
    let dflt = c.ok(json!({"op": "queue.stats", "queue": 1}));
    assert_eq!(dflt["stats"]["total"]["completed"], 0, "{dflt}");
}

#[test]
fn three_shards_route_tenants_and_restore_them_after_kill_9() {
    let mut e = start_with_shards(3);
    assert_eq!(
        acd_threads(&e),
        vec!["sb-acd-0", "sb-acd-1", "sb-acd-2"],
        "one thread per shard"
    );
    // Two tenants on two different shards (and the default tenant on its own).
    let names: Vec<String> = (0..64).map(|i| format!("tenant-{i}")).collect();
    let a = names[0].clone();
    let b = names
        .iter()
        .find(|n| shard_of(n, 3) != shard_of(&a, 3))
        .unwrap()
        .clone();
    let mut c = Ctl::connect(e.control);
    c.subscribe_acd();
    for t in [&a, &b] {
        tenant_setup(&mut c, t, "support");
        c.ok(json!({"op": "agent.status", "tenant": t, "agent": 7, "status": "available"}));
    }
    // Task 1 is assigned in both tenants; tasks 2 and 3 wait in both.
    for t in [&a, &b] {
        for task in 1..=3u64 {
            let mut v = chat(task, 1);
            v["tenant"] = t.as_str().into();
            v["context"] = json!({"who": t, "n": task});
            c.ok(v);
            std::thread::sleep(Duration::from_millis(5));
        }
        c.ok(json!({"op": "offer.accept", "tenant": t, "task": 1, "agent": 7}));
    }
    // Many tenants across the shards, each with its own queue 1.
    for n in &names[2..20] {
        c.ok(json!({"op": "queue.create", "tenant": n, "queue": 1}));
    }
    for n in &names[2..20] {
        assert_eq!(
            c.ok(json!({"op": "queue.get", "tenant": n, "queue": 1}))["queue"]["queue"],
            1
        );
    }
    drop(c);

    e.restart();
    assert_eq!(acd_threads(&e).len(), 3);
    let mut c = Ctl::connect(e.control);
    for t in [&a, &b] {
        for task in 1..=3u64 {
            let v = c.ok(json!({"op": "task.get", "tenant": t, "task": task}));
            assert_eq!(v["state"], "waiting", "{t} {v}");
            assert_eq!(v["context"]["who"], t.as_str());
        }
        let ag = c.ok(json!({"op": "agent.get", "tenant": t, "agent": 7}));
        assert_eq!(ag["reason"], "engine_restart", "{ag}");
    }
    assert_eq!(
        c.ok(json!({"op": "queue.list", "tenant": &names[5]}))["queues"],
        json!([{"queue": 1, "name": null}])
    );
    assert_eq!(c.ok(json!({"op": "queue.list"}))["queues"], json!([]));
    // Each tenant serves its own line, the held task first.
    c.subscribe_acd();
    for t in [&a, &b] {
        c.ok(json!({"op": "agent.status", "tenant": t, "agent": 7, "status": "available"}));
        let (offer, _) = c.until("task.offered", None);
        assert_eq!(offer["tenant"], t.as_str(), "{offer}");
        assert_eq!(offer["task"], 1);
        assert_eq!(offer["context"]["who"], t.as_str());
    }
    // A hang-up reaches every shard: voice tasks of one call in two tenants both end.
    ng_call(&e, "acd-shared-call");
    for t in [&a, &b] {
        c.ok(
            json!({"op": "task.enqueue", "tenant": t, "task": 9, "queue": 1,
            "channel": "voice", "call": "acd-shared-call", "leg": "cust"}),
        );
    }
    c.ok(json!({"op": "call.delete", "call": "acd-shared-call"}));
    let mut ended = Vec::new();
    while ended.len() < 2 {
        let (ev, _) = c.until("task.abandoned", Some(9));
        assert_eq!(ev["reason"], "hangup", "{ev}");
        ended.push(ev["tenant"].as_str().unwrap().to_owned());
    }
    ended.sort();
    let mut want = vec![a.clone(), b.clone()];
    want.sort();
    assert_eq!(ended, want);
    // Engine-wide agent figures add up over the shards.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (code, body) = e.http_get("/metrics");
        assert_eq!(code, 200);
        if body.contains("switchboard_acd_agents_status{status=\"available\"} 2") {
            break;
        }
        assert!(Instant::now() < deadline, "{body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn hostile_tenant_names_are_refused() {
    let e = Engine::start("epoll", &[]);
    let mut c = Ctl::connect(e.control);
    let long = "t".repeat(65);
    for bad in [
        json!(""),
        json!(long),
        json!("a b"),
        json!("../../etc"),
        json!("a/b"),
        json!("x'; DROP TABLE acd_tasks; --"),
        json!("caf\u{e9}"),
        json!("nul\u{0}"),
        json!("line\nbreak"),
        json!(42),
        json!(null),
        json!({"name": "x"}),
        json!(["x"]),
    ] {
        for op in [
            json!({"op": "queue.create", "queue": 1, "tenant": bad.clone()}),
            json!({"op": "queue.list", "tenant": bad.clone()}),
            json!({"op": "task.get", "task": 1, "tenant": bad.clone()}),
            json!({"op": "forecast.staffing", "arrivals": 10, "aht_s": 100,
                "agents": 5, "tenant": bad.clone()}),
        ] {
            assert_eq!(c.err(op.clone()), "bad_request", "{op}");
        }
    }
    // The longest name and every allowed character work; `default` is the default.
    let ok = format!("A-z_0.9{}", "x".repeat(57));
    assert_eq!(ok.len(), 64);
    c.ok(json!({"op": "queue.create", "tenant": ok, "queue": 1}));
    c.ok(json!({"op": "queue.create", "tenant": "default", "queue": 2}));
    assert_eq!(
        c.ok(json!({"op": "queue.list"}))["queues"],
        json!([{"queue": 2, "name": null}])
    );
    assert_eq!(
        c.ok(json!({"op": "queue.list", "tenant": ok}))["queues"],
        json!([{"queue": 1, "name": null}])
    );
    c.ok(
        json!({"op": "forecast.staffing", "arrivals": 10, "aht_s": 100, "agents": 5,
        "tenant": "acme"}),
    );
}
