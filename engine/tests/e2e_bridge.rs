//! Bridging legs of different calls (`call.bridge`), as a contact center does when its ACD
//! hands a waiting customer to an agent: a real engine with two media workers, parties
//! sending their own tone over loopback. The agent's leg moves into the customer's call —
//! on another worker — keeping its local port, and each party hears the other. NG calls keep
//! working after one of their legs moved: re-offers, query, delete, port release.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::ctl::Ctl;
use common::media::{Party, assert_hears};
use common::{Engine, NgClient, sdp_media_addr};
use serde_json::{Value, json};

const CUSTOMER: (&str, f32) = ("customer", 500.0);
const AGENT: (&str, f32) = ("agent", 1100.0);
const QUEUE: (&str, f32) = ("queue", 1700.0);
const ACD: (&str, f32) = ("acd", 2300.0);
const SETTLE: Duration = Duration::from_millis(800);
const WINDOW: Duration = Duration::from_millis(400);

/// A native leg for a party; returns the engine's local address for it.
fn leg(ctl: &mut Ctl, call: &str, p: &Party, hears: Value) -> SocketAddr {
    let r = ctl.ok(json!({
        "op": "leg.create", "call": call, "leg": p.name, "codecs": ["PCMU"],
        "remote": p.addr().to_string(), "hears": hears,
    }));
    let local: SocketAddr = r["local"].as_str().unwrap().parse().unwrap();
    p.set_target(local);
    local
}

/// A silent leg (music-on-hold stand-in) sending to a socket that reads nothing.
fn hold(ctl: &mut Ctl, call: &str, hears: Value) {
    ctl.ok(
        json!({"op": "leg.create", "call": call, "leg": "hold", "codecs": ["PCMU"],
        "remote": "127.0.0.1:9", "hears": hears}),
    );
}

fn worker_of(ctl: &mut Ctl, call: &str) -> u64 {
    ctl.ok(json!({"op": "call.get", "call": call}))["worker"]
        .as_u64()
        .unwrap()
}

fn legs_active(ctl: &mut Ctl) -> u64 {
    ctl.ok(json!({"op": "stats"}))["legs"].as_u64().unwrap()
}

fn local_ports(ctl: &mut Ctl, call: &str) -> Vec<u16> {
    let r = ctl.ok(json!({"op": "call.get", "call": call}));
    r["stats"]["legs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["local_rtp"].as_str()?.parse::<SocketAddr>().ok())
        .map(|a| a.port())
        .collect()
}

/// Native calls until two of them land on different workers: `(customer call, agent call)`.
fn two_native_calls(
    ctl: &mut Ctl,
    customer: &Party,
    agent: &Party,
) -> (String, String, SocketAddr) {
    ctl.ok(json!({"op": "call.create", "call": "cust"}));
    // The customer's leg comes first: the hold leg links itself to it.
    leg(ctl, "cust", customer, Value::Null);
    hold(ctl, "cust", json!(["customer"]));
    let wc = worker_of(ctl, "cust");
    // The least loaded worker takes the next call; keep trying a few names.
    for i in 0..4 {
        let id = format!("agent-{i}");
        ctl.ok(json!({"op": "call.create", "call": id}));
        hold(ctl, &id, Value::Null);
        if worker_of(ctl, &id) != wc {
            let local = leg(ctl, &id, agent, json!(["hold"]));
            return ("cust".into(), id, local);
        }
    }
    panic!("every call landed on worker {wc}");
}

fn bridged_native_calls(driver: &str) {
    let e = Engine::start(driver, &[]);
    let mut ctl = Ctl::connect(e.control);
    let stats = ctl.ok(json!({"op": "stats"}));
    eprintln!("driver: {}", stats["workers"][0]["driver"]);
    ctl.ok(json!({"op": "subscribe", "topics": ["calls"]}));
    let mut customer = Party::new(CUSTOMER.0, "PCMU", CUSTOMER.1);
    let mut agent = Party::new(AGENT.0, "PCMU", AGENT.1);
    let (cust, agent_call, agent_local) = two_native_calls(&mut ctl, &customer, &agent);
    customer.start();
    agent.start();
    let wc = worker_of(&mut ctl, &cust);
    let wa = worker_of(&mut ctl, &agent_call);
    assert_ne!(wc, wa, "the calls must live on different workers");

    let r = ctl.ok(json!({"op": "call.bridge", "call": cust, "leg": "customer",
        "with_call": agent_call, "with_leg": "agent"}));
    let mut legs: Vec<&str> = r["legs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    legs.sort_unstable();
    assert_eq!(legs, ["agent", "customer", "hold"], "{r}");
    let ev = ctl.wait_event("call.bridged", Duration::from_secs(5), |_| true);
    assert_eq!(ev["with_call"], agent_call.as_str(), "{ev}");

    // The moved leg kept its local port, now on the customer's worker.
    assert!(local_ports(&mut ctl, &cust).contains(&agent_local.port()));
    assert!(!local_ports(&mut ctl, &agent_call).contains(&agent_local.port()));
    let got = ctl.ok(json!({"op": "call.get", "call": agent_call}));
    let names: Vec<&str> = got["media"]["legs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["leg"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["hold"], "{got}");

    std::thread::sleep(SETTLE);
    assert_hears(
        &customer,
        WINDOW,
        &[AGENT],
        &[CUSTOMER],
        "customer after the bridge",
    );
    assert_hears(
        &agent,
        WINDOW,
        &[CUSTOMER],
        &[AGENT],
        "agent after the bridge",
    );
    assert_eq!(local_ports(&mut ctl, &cust).len(), 3);
    assert_eq!(local_ports(&mut ctl, &agent_call).len(), 1);

    // Unbridge: the agent stays in the customer's call, hearing nobody and heard by nobody.
    let r = ctl.ok(json!({"op": "call.unbridge", "call": cust, "leg": "agent"}));
    assert_eq!(r["origin"], agent_call.as_str(), "{r}");
    std::thread::sleep(SETTLE);
    assert_hears(
        &customer,
        WINDOW,
        &[],
        &[AGENT, CUSTOMER],
        "customer after unbridge",
    );

    // Moving it home clears the move; the customer's call ends without taking it along.
    ctl.ok(
        json!({"op": "call.bridge", "call": agent_call, "leg": "hold",
        "with_call": cust, "with_leg": "agent"}),
    );
    assert!(local_ports(&mut ctl, &agent_call).contains(&agent_local.port()));
    assert_eq!(local_ports(&mut ctl, &agent_call).len(), 2);
    let before = legs_active(&mut ctl);
    ctl.ok(json!({"op": "call.delete", "call": cust}));
    wait_until("the customer's two legs are gone", || {
        legs_active(&mut ctl) == before - 2
    });
    assert_eq!(local_ports(&mut ctl, &agent_call).len(), 2);
    ctl.ok(json!({"op": "call.delete", "call": agent_call}));
    // The spare agent calls made to find another worker.
    let calls = ctl.ok(json!({"op": "call.list"}));
    for c in calls["calls"].as_array().unwrap() {
        ctl.ok(json!({"op": "call.delete", "call": c["call"]}));
    }
    wait_until("no legs", || legs_active(&mut ctl) == 0);
}

#[test]
fn native_calls_on_two_workers_bridge_epoll() {
    bridged_native_calls("epoll");
}

#[test]
fn native_calls_on_two_workers_bridge_auto() {
    bridged_native_calls("auto");
}

fn sdp_for(user: &str, port: u16) -> String {
    format!(
        "v=0\r\no={user} 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
    )
}

fn ng_ok(ng: &NgClient, req: Value) -> Value {
    let r = ng.request(&req);
    assert_eq!(r["result"], "ok", "{req} -> {r}");
    r
}

/// An NG call between `a` (from-tag) and `b` (to-tag), both PCMU; parties started.
fn ng_call(ng: &NgClient, id: &str, a: &mut Party, b: &mut Party) {
    let r = ng_ok(
        ng,
        json!({"command": "offer", "call-id": id, "from-tag": a.name,
            "sdp": sdp_for(a.name, a.addr().port())}),
    );
    b.set_target(sdp_media_addr(r["sdp"].as_str().unwrap()));
    let r = ng_ok(
        ng,
        json!({"command": "answer", "call-id": id, "from-tag": a.name, "to-tag": b.name,
            "sdp": sdp_for(b.name, b.addr().port())}),
    );
    a.set_target(sdp_media_addr(r["sdp"].as_str().unwrap()));
    a.start();
    b.start();
}

fn ng_delete(ng: &NgClient, id: &str, tag: &str) {
    ng_ok(
        ng,
        json!({"command": "delete", "call-id": id, "from-tag": tag, "delete delay": 0}),
    );
}

fn ports_used(ng: &NgClient) -> u64 {
    let r = ng_ok(ng, json!({"command": "statistics"}));
    r["statistics"]["interfaces"][0]["ports"]["used"]
        .as_u64()
        .unwrap()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..50 {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what}");
}

#[test]
fn ng_customer_bridged_with_a_native_agent() {
    let e = Engine::start("epoll", &[]);
    let ng = e.ng();
    let mut ctl = Ctl::connect(e.control);
    let mut customer = Party::new(CUSTOMER.0, "PCMU", CUSTOMER.1);
    let mut queue = Party::new(QUEUE.0, "PCMU", QUEUE.1);
    ng_call(&ng, "ng-cust", &mut customer, &mut queue);
    let wc = worker_of(&mut ctl, "ng-cust");

    let mut agent = Party::new(AGENT.0, "PCMU", AGENT.1);
    let mut agent_call = String::new();
    for i in 0..4 {
        let id = format!("desk-{i}");
        ctl.ok(json!({"op": "call.create", "call": id}));
        hold(&mut ctl, &id, Value::Null);
        if worker_of(&mut ctl, &id) != wc {
            agent_call = id;
            break;
        }
    }
    assert!(!agent_call.is_empty(), "no call on another worker");
    let agent_local = leg(&mut ctl, &agent_call, &agent, json!(["hold"]));
    agent.start();

    ctl.ok(
        json!({"op": "call.bridge", "call": "ng-cust", "leg": "customer",
        "with_call": agent_call, "with_leg": "agent"}),
    );
    assert!(local_ports(&mut ctl, "ng-cust").contains(&agent_local.port()));
    std::thread::sleep(SETTLE);
    assert_hears(&agent, WINDOW, &[CUSTOMER], &[AGENT], "agent");
    assert_hears(&customer, WINDOW, &[AGENT, QUEUE], &[CUSTOMER], "customer");
    // NG query of the customer's call still answers.
    ng_ok(&ng, json!({"command": "query", "call-id": "ng-cust"}));

    // The customer hangs up: the call ends, the agent's call goes on.
    let before = legs_active(&mut ctl);
    ng_delete(&ng, "ng-cust", "customer");
    wait_until("the customer's call is gone", || {
        ctl.req(json!({"op": "call.get", "call": "ng-cust"}))["ok"] == false
    });
    wait_until("the customer's three legs are gone", || {
        legs_active(&mut ctl) == before - 3
    });
    let got = ctl.ok(json!({"op": "call.get", "call": agent_call}));
    assert_eq!(got["media"]["legs"].as_array().unwrap().len(), 1, "{got}");
    // The agent leg ended with the customer's call: its native pair went back too.
    let calls = ctl.ok(json!({"op": "call.list"}));
    for c in calls["calls"].as_array().unwrap() {
        ctl.ok(json!({"op": "call.delete", "call": c["call"]}));
    }
    wait_until("no legs", || legs_active(&mut ctl) == 0);
    wait_until("every port released", || ports_used(&ng) == 0);
}

#[test]
fn ng_agent_moved_into_ng_customer_survives_reoffer_and_delete() {
    let e = Engine::start("epoll", &[]);
    let ng = e.ng();
    let mut ctl = Ctl::connect(e.control);
    let mut customer = Party::new(CUSTOMER.0, "PCMU", CUSTOMER.1);
    let mut queue = Party::new(QUEUE.0, "PCMU", QUEUE.1);
    ng_call(&ng, "c-1", &mut customer, &mut queue);
    let mut agent = Party::new(AGENT.0, "PCMU", AGENT.1);
    let mut acd = Party::new(ACD.0, "PCMU", ACD.1);
    ng_call(&ng, "a-1", &mut agent, &mut acd);
    assert_ne!(
        worker_of(&mut ctl, "c-1"),
        worker_of(&mut ctl, "a-1"),
        "two NG calls land on different workers"
    );
    let agent_port = agent.target.lock().unwrap().unwrap().port();
    std::thread::sleep(Duration::from_millis(300));
    let before = *agent.heard.lock().unwrap().headers.last().unwrap();

    let r = ctl.ok(
        json!({"op": "call.bridge", "call": "c-1", "leg": "customer",
        "with_call": "a-1", "with_leg": "agent"}),
    );
    assert_eq!(r["with_leg"], "agent", "{r}");
    assert!(local_ports(&mut ctl, "c-1").contains(&agent_port));
    std::thread::sleep(SETTLE);
    assert_hears(&agent, WINDOW, &[CUSTOMER], &[AGENT, ACD], "agent");
    // The agent's phone sees one stream across the move: same SSRC, sequence numbers going
    // on (a packet or two may be lost while the leg moves).
    let headers = agent.heard.lock().unwrap().headers.clone();
    let from = headers.iter().rposition(|h| *h == before).unwrap();
    let after = &headers[from..];
    assert!(after.len() > 20, "the agent hears the customer's call");
    for w in after.windows(2) {
        assert_eq!(
            w[1].0, before.0,
            "the SSRC changed: {:?} -> {:?}",
            w[0], w[1]
        );
        let step = w[1].1.wrapping_sub(w[0].1);
        assert!(
            (1..=4).contains(&step),
            "sequence jump {:?} -> {:?}",
            w[0],
            w[1]
        );
    }

    // A re-INVITE on the agent's call: same engine port, media still flows.
    let r = ng_ok(
        &ng,
        json!({"command": "offer", "call-id": "a-1", "from-tag": "agent",
            "sdp": sdp_for("agent", agent.addr().port())}),
    );
    let _ = sdp_media_addr(r["sdp"].as_str().unwrap());
    ng_ok(
        &ng,
        json!({"command": "answer", "call-id": "a-1", "from-tag": "agent", "to-tag": "acd",
            "sdp": sdp_for("acd", acd.addr().port())}),
    );
    std::thread::sleep(SETTLE);
    assert_hears(
        &agent,
        WINDOW,
        &[CUSTOMER],
        &[AGENT],
        "agent after the re-INVITE",
    );
    let q = ng_ok(&ng, json!({"command": "query", "call-id": "a-1"}));
    assert!(q["tags"].get("agent").is_some(), "{q}");

    assert_eq!(ports_used(&ng), 8, "four pairs, two ports each");
    // The agent hangs up: its leg leaves the customer's call.
    ng_delete(&ng, "a-1", "agent");
    wait_until("the agent's leg left the customer's call", || {
        !local_ports(&mut ctl, "c-1").contains(&agent_port)
    });
    ng_delete(&ng, "c-1", "customer");
    wait_until("no legs", || legs_active(&mut ctl) == 0);
    wait_until("every port released", || ports_used(&ng) == 0);
}

#[test]
fn hostile_bridges() {
    let e = Engine::start("epoll", &[]);
    let mut ctl = Ctl::connect(e.control);
    ctl.ok(json!({"op": "call.create", "call": "x"}));
    hold(&mut ctl, "x", Value::Null);
    ctl.ok(
        json!({"op": "leg.create", "call": "x", "leg": "b", "codecs": ["PCMU"],
        "remote": "127.0.0.1:9"}),
    );
    ctl.ok(json!({"op": "call.create", "call": "y"}));
    hold(&mut ctl, "y", Value::Null);
    ctl.ok(json!({"op": "call.create", "call": "w"}));
    hold(&mut ctl, "w", Value::Null);
    ctl.ok(json!({"op": "call.create", "call": "empty"}));

    let bridge = |c: &str, l: &str, wc: &str, wl: &str| json!({"op": "call.bridge", "call": c, "leg": l, "with_call": wc, "with_leg": wl});
    assert_eq!(ctl.err(bridge("nope", "hold", "y", "hold")), "not_found");
    assert_eq!(ctl.err(bridge("x", "nope", "y", "hold")), "not_found");
    assert_eq!(ctl.err(bridge("x", "hold", "y", "nope")), "not_found");
    assert_eq!(ctl.err(bridge("x", "hold", "empty", "z")), "not_found");
    assert_eq!(ctl.err(bridge("x", "hold", "x", "hold")), "conflict");
    assert_eq!(
        ctl.err(json!({"op": "call.bridge", "call": "x", "leg": "hold"})),
        "bad_request"
    );
    assert_eq!(
        ctl.err(json!({"op": "call.unbridge", "call": "x", "leg": "nope"})),
        "not_found"
    );

    // A name clash: `hold` of y arrives in x as `y/hold`.
    let r = ctl.ok(bridge("x", "b", "y", "hold"));
    assert_eq!(r["with_leg"], "y/hold", "{r}");

    // The same leg bridged twice at once, from two connections: one moves it, the other
    // finds it gone.
    ctl.ok(json!({"op": "call.create", "call": "z"}));
    ctl.ok(
        json!({"op": "leg.create", "call": "z", "leg": "m", "codecs": ["PCMU"],
        "remote": "127.0.0.1:9"}),
    );
    let addr = e.control;
    let racers: Vec<_> = [("x", "b"), ("w", "hold")]
        .into_iter()
        .map(|(target, leg)| {
            std::thread::spawn(move || {
                let mut c = Ctl::connect(addr);
                c.req(json!({"op": "call.bridge", "call": target, "leg": leg,
                    "with_call": "z", "with_leg": "m"}))
            })
        })
        .collect();
    let replies: Vec<Value> = racers.into_iter().map(|t| t.join().unwrap()).collect();
    let oks = replies.iter().filter(|r| r["ok"] == true).count();
    assert_eq!(oks, 1, "{replies:?}");
    let failed = replies.iter().find(|r| r["ok"] == false).unwrap();
    assert_eq!(failed["error"]["code"], "not_found", "{failed}");
    // Every leg is somewhere exactly once.
    let total: usize = ["x", "y", "z", "w"]
        .iter()
        .map(|c| local_ports(&mut ctl, c).len())
        .sum();
    assert_eq!(total as u64, legs_active(&mut ctl));
    assert_eq!(legs_active(&mut ctl), 5);
    for c in ["x", "y", "z", "w", "empty"] {
        ctl.ok(json!({"op": "call.delete", "call": c}));
    }
    wait_until("no legs", || legs_active(&mut ctl) == 0);
}

#[test]
fn a_silent_native_owner_timing_out_leaves_its_moved_leg_talking() {
    let e = Engine::start("epoll", &["--timeout", "2"]);
    let ng = e.ng();
    let mut ctl = Ctl::connect(e.control);
    ctl.ok(json!({"op": "subscribe", "topics": ["calls", "media"]}));
    let mut customer = Party::new(CUSTOMER.0, "PCMU", CUSTOMER.1);
    let mut agent = Party::new(AGENT.0, "PCMU", AGENT.1);
    let (cust, agent_call, agent_local) = two_native_calls(&mut ctl, &customer, &agent);
    customer.start();
    agent.start();
    ctl.ok(json!({"op": "call.bridge", "call": cust, "leg": "customer",
        "with_call": agent_call, "with_leg": "agent"}));
    // The agent's call keeps only its silent hold leg: it times out.
    let ev = ctl.wait_event("media.timeout", Duration::from_secs(8), |ev| {
        ev["call"] == agent_call.as_str()
    });
    assert_eq!(ev["call"], agent_call.as_str());
    assert!(local_ports(&mut ctl, &cust).contains(&agent_local.port()));
    std::thread::sleep(SETTLE);
    assert_hears(
        &agent,
        WINDOW,
        &[CUSTOMER],
        &[AGENT],
        "agent after its call timed out",
    );
    ctl.ok(json!({"op": "call.delete", "call": cust}));
    let calls = ctl.ok(json!({"op": "call.list"}));
    for c in calls["calls"].as_array().unwrap() {
        ctl.ok(json!({"op": "call.delete", "call": c["call"]}));
    }
    wait_until("no legs", || legs_active(&mut ctl) == 0);
    wait_until("every port released", || ports_used(&ng) == 0);
}
