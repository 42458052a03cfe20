//! Conversation analytics through a real engine: a caller and an agent send tones over RTP
//! on loopback, switched on and off on a schedule; live `analytics` events arrive, and the
//! final summary (in `analytics.stop`'s event, `call.ended` and the call detail record) has
//! each party's talk time, the over-talk and the silence of the schedule within 60 ms.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::Engine;
use common::ctl::Ctl;
use common::media::{Party, codec_name};
use serde_json::{Value, json};

/// Network and frame timing: each edge lands on a 20 ms frame of the sender and of the
/// mixer, and the schedule is kept by a sleeping thread.
const TOLERANCE_MS: i64 = 60;

fn near(got: &Value, want: i64, what: &str, all: &Value) {
    let g = got
        .as_i64()
        .unwrap_or_else(|| panic!("{what} missing in {all}"));
    assert!(
        (g - want).abs() <= TOLERANCE_MS,
        "{what}: {g} ms, schedule {want} ms; {all}"
    );
}

#[test]
fn analytics_follow_a_talk_schedule() {
    let e = Engine::start("auto", &[]);
    let mut ctl = Ctl::connect(e.control);
    ctl.ok(json!({"op": "subscribe", "topics": ["media", "calls"]}));
    let id = "analytics-1";
    ctl.ok(json!({"op": "call.create", "call": id}));
    let mut caller = Party::new("caller", "PCMU", 300.0);
    let mut agent = Party::new("agent", "G722", 700.0);
    for p in [&caller, &agent] {
        p.talking.store(false, Ordering::Relaxed);
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
    // A voice task of the call waits in the ACD; its agitation follows the caller's.
    ctl.ok(json!({"op": "queue.create", "queue": 1}));
    ctl.ok(
        json!({"op": "task.enqueue", "task": 77, "queue": 1, "channel": "voice",
        "call": id}),
    );
    assert_eq!(
        ctl.ok(json!({"op": "task.get", "task": 77}))["agitation"],
        0.0
    );
    assert_eq!(
        ctl.err(json!({"op": "analytics.start", "call": id, "update_task": true})),
        "bad_request"
    );
    let r = ctl.ok(
        json!({"op": "analytics.start", "call": id, "interval_ms": 1000,
        "update_task": true, "task": 77}),
    );
    assert_eq!(r["caller"], "caller", "{r}");
    assert_eq!(r["agent"], "agent", "{r}");

    // The schedule, ms from now: (at, party, on).
    let t0 = Instant::now();
    let schedule = [
        (500, &caller, true),
        (2000, &agent, true),
        (2500, &caller, false),
        (3500, &agent, false),
        (4500, &caller, true),
        (5500, &caller, false),
    ];
    for (at, p, on) in schedule {
        let due = t0 + Duration::from_millis(at);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        p.talking.store(on, Ordering::Relaxed);
    }
    std::thread::sleep(
        (t0 + Duration::from_millis(6500)).saturating_duration_since(Instant::now()),
    );
    ctl.ok(json!({"op": "analytics.stop", "call": id}));

    // Live events came every second of call time.
    let mut live = 0;
    let last = loop {
        let ev = ctl.wait_event("analytics", Duration::from_secs(3), |_| true);
        assert_eq!(ev["call"], id, "{ev}");
        if ev["final"] == true {
            break ev;
        }
        live += 1;
    };
    assert!((5..=7).contains(&live), "{live} live analytics events");
    let a = &last["analytics"];
    eprintln!("final analytics: {a}");
    let duration = a["duration_ms"].as_i64().unwrap();
    assert!((6300..=6700).contains(&duration), "{a}");
    let parties = a["parties"].as_array().unwrap();
    assert_eq!(parties[0]["party"], "caller");
    near(&parties[0]["talk_ms"], 3000, "caller talk", a);
    near(&parties[1]["talk_ms"], 1500, "agent talk", a);
    near(&a["overtalk_ms"], 500, "over-talk", a);
    near(&a["silence_ms"], duration - 4000, "silence", a);
    near(&parties[0]["first_talk_ms"], 500, "caller's first word", a);
    near(
        &a["time_to_first_agent_word_ms"],
        2000,
        "agent's first word",
        a,
    );
    near(&a["longest_monologue"]["ms"], 2000, "longest monologue", a);
    assert_eq!(a["longest_monologue"]["party"], "caller");

    // The caller's agitation reached the task.
    let caller_agitation = parties[0]["agitation"].as_f64().unwrap();
    let task = ctl.ok(json!({"op": "task.get", "task": 77}));
    let got = task["agitation"].as_f64().unwrap();
    assert!(
        got > 0.0 && (got - caller_agitation).abs() < 0.05,
        "task agitation {got}, caller {caller_agitation}"
    );

    // The summary is in call.ended and in the call detail record.
    ctl.ok(json!({"op": "call.delete", "call": id}));
    let ended = ctl.wait_event("call.ended", Duration::from_secs(5), |ev| ev["call"] == id);
    assert_eq!(ended["analytics"], *a, "{ended}");
    // Answered when the second leg with a known address was created.
    let answered = ended["answered_ms"].as_u64().unwrap();
    let created = ended["created_ms"].as_u64().unwrap();
    assert!(answered >= created && answered - created < 2000, "{ended}");
    let cdr = ctl.wait_event("cdr", Duration::from_secs(5), |ev| ev["call"] == id);
    assert_eq!(cdr["analytics"], *a, "{cdr}");
    assert_eq!(cdr["answer_ms"], answered, "{cdr}");
    assert!(cdr["talk_ms"].as_u64().unwrap() > 6000, "{cdr}");
}

fn ng_sdp(user: &str, port: u16) -> String {
    format!(
        "v=0\r\no={user} 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
    )
}

/// An NG call: offer and answer, parties sending tones.
fn ng_call(e: &Engine, id: &str) -> (Party, Party) {
    let ng = e.ng();
    let mut caller = Party::new("caller", "PCMU", 300.0);
    let mut callee = Party::new("callee", "PCMU", 700.0);
    let r = ng.request(
        &json!({"command": "offer", "call-id": id, "from-tag": "from-1",
        "sdp": ng_sdp("a", caller.addr().port())}),
    );
    assert_eq!(r["result"], "ok", "{r}");
    callee.set_target(common::sdp_media_addr(r["sdp"].as_str().unwrap()));
    let r = ng.request(
        &json!({"command": "answer", "call-id": id, "from-tag": "from-1",
        "to-tag": "to-1", "sdp": ng_sdp("b", callee.addr().port())}),
    );
    assert_eq!(r["result"], "ok", "{r}");
    caller.set_target(common::sdp_media_addr(r["sdp"].as_str().unwrap()));
    caller.start();
    callee.start();
    (caller, callee)
}

#[test]
fn ng_calls_get_analytics_answer_time_and_codecs() {
    let e = Engine::start("auto", &[]);
    let mut ctl = Ctl::connect(e.control);
    ctl.ok(json!({"op": "subscribe", "topics": ["analytics", "calls"]}));

    // Analytics on an NG call, parties by tag.
    let (_a, _b) = ng_call(&e, "ng-an-1");
    let r = ctl.ok(
        json!({"op": "analytics.start", "call": "ng-an-1", "caller": "from-1",
        "agent": "to-1", "interval_ms": 500}),
    );
    assert_eq!(r["agent"], "to-1", "{r}");
    let ev = ctl.wait_event("analytics", Duration::from_secs(3), |_| true);
    assert_eq!(ev["call"], "ng-an-1", "{ev}");
    std::thread::sleep(Duration::from_millis(1500));
    ctl.ok(json!({"op": "call.delete", "call": "ng-an-1"}));
    let ended = ctl.wait_event("call.ended", Duration::from_secs(5), |ev| {
        ev["call"] == "ng-an-1"
    });
    let talk = &ended["analytics"]["parties"];
    assert!(talk[0]["talk_ms"].as_u64().unwrap() > 1000, "{ended}");
    assert!(talk[1]["talk_ms"].as_u64().unwrap() > 1000, "{ended}");
    assert!(ended["answered_ms"].as_u64().is_some(), "{ended}");

    // A relayed NG call: its legs' codecs come from the SDP.
    let (_c, _d) = ng_call(&e, "ng-relay-1");
    std::thread::sleep(Duration::from_millis(300));
    let got = ctl.ok(json!({"op": "call.get", "call": "ng-relay-1"}));
    assert_eq!(got["media"]["mixing"], false, "{got}");
    ctl.ok(json!({"op": "call.delete", "call": "ng-relay-1"}));
    let ended = ctl.wait_event("call.ended", Duration::from_secs(5), |ev| {
        ev["call"] == "ng-relay-1"
    });
    let legs = ended["legs"].as_array().unwrap();
    assert_eq!(legs.len(), 2, "{ended}");
    assert!(legs.iter().all(|l| l["codec"] == "PCMU"), "{ended}");
    assert!(ended["analytics"].is_null(), "{ended}");
    assert!(ended["answered_ms"].as_u64().is_some(), "{ended}");
}

#[test]
fn queue_option_feeds_live_agitation_to_waiting_voice_tasks() {
    let e = Engine::start("auto", &[]);
    let mut ctl = Ctl::connect(e.control);
    ctl.ok(json!({"op": "subscribe", "topics": ["analytics", "acd"]}));
    let q = ctl.ok(json!({"op": "queue.create", "queue": 1, "agitation_from_analytics": true}));
    assert_eq!(q["queue"]["agitation_from_analytics"], true, "{q}");
    ctl.ok(json!({"op": "queue.create", "queue": 2}));
    let got = ctl.ok(json!({"op": "queue.get", "queue": 1}));
    assert_eq!(got["queue"]["agitation_from_analytics"], true, "{got}");

    // NG calls from the SBC: the customer (tag `from-1`) and an IVR leg playing nothing.
    let (customer, ivr) = ng_call(&e, "qa-1");
    let (customer2, ivr2) = ng_call(&e, "qa-2");
    for p in [&ivr, &ivr2] {
        p.talking.store(false, Ordering::Relaxed);
    }
    // Nobody to take them: both wait.
    ctl.ok(
        json!({"op": "task.enqueue", "task": 91, "queue": 1, "channel": "voice",
        "call": "qa-1", "leg": "from-1", "agitation": 0.05}),
    );
    let queued = ctl.wait_event("task.queued", Duration::from_secs(3), |ev| ev["task"] == 91);
    assert_eq!(queued["call"], "qa-1", "{queued}");
    assert_eq!(queued["leg"], "from-1", "{queued}");
    assert_eq!(queued["agitation_from_analytics"], true, "{queued}");
    ctl.ok(
        json!({"op": "task.enqueue", "task": 92, "queue": 2, "channel": "voice",
        "call": "qa-2", "leg": "from-1", "agitation": 0.05}),
    );

    // The customers speak in loud bursts.
    let t0 = Instant::now();
    let mut on = true;
    let mut risen = None;
    while t0.elapsed() < Duration::from_secs(8) {
        std::thread::sleep(Duration::from_millis(250));
        on = !on;
        customer.talking.store(on, Ordering::Relaxed);
        customer2.talking.store(on, Ordering::Relaxed);
        let a = ctl.ok(json!({"op": "task.get", "task": 91}))["agitation"]
            .as_f64()
            .unwrap();
        if a > 0.05 + 1e-6 {
            risen = Some((a, t0.elapsed()));
            break;
        }
    }
    let (a, after) = risen.expect("task 91's agitation never rose above 0.05");
    eprintln!("task 91 agitation {a} after {after:?}");
    // The live analytics are on the waiting call, its customer as the caller.
    let ev = ctl.wait_event("analytics", Duration::from_secs(3), |ev| {
        ev["call"] == "qa-1"
    });
    assert_eq!(ev["analytics"]["parties"][0]["party"], "caller", "{ev}");
    // The queue without the option left its task alone, and ran no analytics.
    assert_eq!(
        ctl.ok(json!({"op": "task.get", "task": 92}))["agitation"],
        0.05
    );
    assert_eq!(
        ctl.err(json!({"op": "analytics.stop", "call": "qa-2"})),
        "not_found"
    );

    // The task ends: its analytics stop (the final summary follows).
    ctl.ok(json!({"op": "task.cancel", "task": 91}));
    let fin = ctl.wait_event("analytics", Duration::from_secs(5), |ev| {
        ev["call"] == "qa-1" && ev["final"] == true
    });
    assert!(fin["analytics"]["duration_ms"].as_u64().is_some(), "{fin}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        ctl.err(json!({"op": "analytics.stop", "call": "qa-1"})),
        "not_found"
    );
}
