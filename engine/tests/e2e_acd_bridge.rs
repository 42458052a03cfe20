//! The ACD bridges a waiting customer to the agent itself: the customer's call comes in
//! through NG (a SIP proxy's offer/answer), the agent's phone is a leg of another call; a
//! voice task with `bridge: true` is offered, accepted, and the engine joins the two legs.
//! Each party sends its own tone; each must then hear the other's.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::ctl::Ctl;
use common::media::{Party, assert_hears};
use common::{Engine, sdp_media_addr};
use serde_json::json;

const CUSTOMER: (&str, f32) = ("customer", 500.0);
const AGENT: (&str, f32) = ("agent", 1100.0);

fn pcmu_sdp(user: &str, port: u16) -> String {
    format!(
        "v=0\r\no={user} 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
    )
}

#[test]
fn accepted_voice_task_is_bridged_by_the_engine() {
    let e = Engine::start("auto", &[]);
    let ng = e.ng();
    let mut ctl = Ctl::connect(e.control);
    ctl.ok(json!({"op": "subscribe", "topics": ["acd", "calls"]}));

    // The customer's call through NG: the customer and a silent IVR side.
    let mut customer = Party::new(CUSTOMER.0, "PCMU", CUSTOMER.1);
    let mut ivr = Party::new("ivr", "PCMU", 2900.0);
    ivr.talking.store(false, Ordering::Relaxed);
    let r = ng.request(
        &json!({"command": "offer", "call-id": "cust-call", "from-tag": "cust",
        "sdp": pcmu_sdp("cust", customer.addr().port())}),
    );
    assert_eq!(r["result"], "ok", "{r}");
    ivr.set_target(sdp_media_addr(r["sdp"].as_str().unwrap()));
    let r = ng.request(
        &json!({"command": "answer", "call-id": "cust-call", "from-tag": "cust",
        "to-tag": "ivr", "sdp": pcmu_sdp("ivr", ivr.addr().port())}),
    );
    assert_eq!(r["result"], "ok", "{r}");
    customer.set_target(sdp_media_addr(r["sdp"].as_str().unwrap()));

    // The agent's phone: a leg of a call of its own.
    let mut agent = Party::new(AGENT.0, "PCMA", AGENT.1);
    ctl.ok(json!({"op": "call.create", "call": "agent-7"}));
    let r = ctl.ok(
        json!({"op": "leg.create", "call": "agent-7", "leg": "phone",
        "codecs": ["PCMA", "telephone-event"], "remote": agent.addr().to_string()}),
    );
    let local: SocketAddr = r["local"].as_str().unwrap().parse().unwrap();
    agent.set_target(local);
    for p in [&mut customer, &mut ivr, &mut agent] {
        p.start();
    }

    // Queue, agent with its phone leg, and the customer's voice task asking for a bridge.
    ctl.ok(json!({"op": "queue.create", "queue": 1, "name": "support"}));
    ctl.ok(json!({"op": "agent.create", "agent": 7, "call": "agent-7", "leg": "phone"}));
    ctl.ok(json!({"op": "agent.status", "agent": 7, "status": "available"}));
    ctl.ok(
        json!({"op": "task.enqueue", "task": 1, "queue": 1, "channel": "voice",
        "call": "cust-call", "leg": "cust", "bridge": true}),
    );
    let offered = ctl.wait_event("task.offered", Duration::from_secs(5), |_| true);
    assert_eq!(offered["agent"], 7, "{offered}");
    // Before the bridge the two do not hear each other.
    std::thread::sleep(Duration::from_millis(600));
    assert_hears(
        &customer,
        Duration::from_millis(400),
        &[],
        &[AGENT],
        "before the bridge",
    );

    ctl.ok(json!({"op": "offer.accept", "task": 1, "agent": 7}));
    let assigned = ctl.wait_event("task.assigned", Duration::from_secs(5), |_| true);
    assert_eq!(assigned["bridge"], true, "{assigned}");
    assert_eq!(assigned["agent_call"], "agent-7", "{assigned}");
    assert_eq!(assigned["agent_leg"], "phone", "{assigned}");
    let bridged = ctl.wait_event("call.bridged", Duration::from_secs(5), |_| true);
    assert_eq!(bridged["task"], 1, "{bridged}");
    assert_eq!(bridged["call"], "cust-call", "{bridged}");

    std::thread::sleep(Duration::from_millis(800));
    let window = Duration::from_millis(400);
    assert_hears(
        &customer,
        window,
        &[AGENT],
        &[CUSTOMER],
        "customer after the bridge",
    );
    assert_hears(
        &agent,
        window,
        &[CUSTOMER],
        &[AGENT],
        "agent after the bridge",
    );

    // The customer hangs up: the task completes with reason hangup, the agent's leg goes with
    // the customer's call or stays usable — either way the engine keeps serving.
    let r = ng.request(&json!({"command": "delete", "call-id": "cust-call", "from-tag": "cust", "delete delay": 0}));
    assert_eq!(r["result"], "ok", "{r}");
    let ended = ctl.wait_event("task.completed", Duration::from_secs(5), |_| true);
    assert_eq!(ended["reason"], "hangup", "{ended}");
    let r = ctl.ok(json!({"op": "stats"}));
    assert!(r["calls"].as_u64().is_some(), "{r}");
}

#[test]
fn bridge_without_an_agent_leg_fails_cleanly() {
    let e = Engine::start("auto", &[]);
    let ng = e.ng();
    let mut ctl = Ctl::connect(e.control);
    ctl.ok(json!({"op": "subscribe", "topics": ["acd", "calls"]}));
    let r = ng.request(
        &json!({"command": "offer", "call-id": "c2", "from-tag": "cust",
        "sdp": pcmu_sdp("cust", 40_000)}),
    );
    assert_eq!(r["result"], "ok", "{r}");
    ctl.ok(json!({"op": "queue.create", "queue": 1}));
    ctl.ok(json!({"op": "agent.create", "agent": 8}));
    ctl.ok(json!({"op": "agent.status", "agent": 8, "status": "available"}));
    ctl.ok(
        json!({"op": "task.enqueue", "task": 5, "queue": 1, "channel": "voice",
        "call": "c2", "leg": "cust", "bridge": true}),
    );
    ctl.wait_event("task.offered", Duration::from_secs(5), |_| true);
    ctl.ok(json!({"op": "offer.accept", "task": 5, "agent": 8}));
    let failed = ctl.wait_event("bridge.failed", Duration::from_secs(5), |_| true);
    assert_eq!(failed["task"], 5, "{failed}");
    assert!(
        !failed["reason"].as_str().unwrap_or("").is_empty(),
        "{failed}"
    );
    // A bridge to a leg that does not exist fails the same way.
    ctl.ok(
        json!({"op": "task.enqueue", "task": 6, "queue": 1, "channel": "voice",
        "call": "c2", "leg": "cust", "bridge": true}),
    );
    ctl.ok(json!({"op": "task.complete", "task": 5}));
    let _ = ctl.wait_event("task.offered", Duration::from_secs(10), |ev| {
        ev["task"] == 6
    });
    ctl.ok(json!({"op": "offer.accept", "task": 6, "agent": 8, "call": "nope", "leg": "x"}));
    let failed = ctl.wait_event("bridge.failed", Duration::from_secs(5), |ev| {
        ev["task"] == 6
    });
    assert!(
        !failed["reason"].as_str().unwrap_or("").is_empty(),
        "{failed}"
    );
}
