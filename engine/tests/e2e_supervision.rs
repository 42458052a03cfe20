//! Supervision, mixing and transcoding heard from outside: a real engine, parties sending
//! real RTP over loopback, each with its own tone (customer 500 Hz, agent 1100 Hz,
//! supervisor 1700 Hz). What each party receives is decoded and measured with a Goertzel
//! filter; it must hold exactly the tones the hears-matrix allows, in every supervision mode
//! and after every switch, with one codec and with mixed codecs.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::Engine;
use common::ctl::Ctl;
use common::media::{Party, assert_hears, codec_name};
use serde_json::{Value, json};

const CUSTOMER: (&str, f32) = ("customer", 500.0);
const AGENT: (&str, f32) = ("agent", 1100.0);
const SUPERVISOR: (&str, f32) = ("supervisor", 1700.0);

/// Time for a change to reach the ears (jitter buffer, one or two frames), then the window
/// measured.
const SETTLE: Duration = Duration::from_millis(700);
const WINDOW: Duration = Duration::from_millis(400);

struct Call {
    ctl: Ctl,
    id: String,
    customer: Party,
    agent: Party,
    supervisor: Party,
}

fn leg(ctl: &mut Ctl, call: &str, p: &Party) {
    let r = ctl.ok(json!({
        "op": "leg.create", "call": call, "leg": p.name,
        "codecs": [codec_name(&p.spec), "telephone-event"],
        "remote": p.addr().to_string(),
    }));
    let local: SocketAddr = r["local"].as_str().unwrap().parse().unwrap();
    p.set_target(local);
}

/// A customer and an agent talking, a supervisor leg present but not monitoring yet.
fn setup(e: &Engine, id: &str, codecs: [&str; 3]) -> Call {
    let mut ctl = Ctl::connect(e.control);
    ctl.ok(json!({"op": "call.create", "call": id}));
    let mut customer = Party::new(CUSTOMER.0, codecs[0], CUSTOMER.1);
    let mut agent = Party::new(AGENT.0, codecs[1], AGENT.1);
    let mut supervisor = Party::new(SUPERVISOR.0, codecs[2], SUPERVISOR.1);
    for p in [&customer, &agent, &supervisor] {
        leg(&mut ctl, id, p);
    }
    ctl.ok(json!({"op": "leg.hears", "call": id, "leg": "customer", "hears": ["agent"]}));
    ctl.ok(json!({"op": "leg.hears", "call": id, "leg": "agent", "hears": ["customer"]}));
    for p in [&mut customer, &mut agent, &mut supervisor] {
        p.start();
    }
    Call {
        ctl,
        id: id.to_owned(),
        customer,
        agent,
        supervisor,
    }
}

impl Call {
    /// Checks the rows of the table in DESIGN.md for `mode` (`None`: not monitoring).
    fn check(&self, mode: Option<&str>) {
        std::thread::sleep(SETTLE);
        let ctx = format!("mode {mode:?}");
        let sup_hears: &[(&str, f32)] = if mode.is_some() {
            &[CUSTOMER, AGENT]
        } else {
            &[]
        };
        let sup_not: &[(&str, f32)] = if mode.is_some() {
            &[SUPERVISOR]
        } else {
            &[CUSTOMER, AGENT, SUPERVISOR]
        };
        assert_hears(&self.supervisor, WINDOW, sup_hears, sup_not, &ctx);
        let (agent_hears, agent_not): (&[_], &[_]) = match mode {
            Some("whisper" | "barge") => (&[CUSTOMER, SUPERVISOR], &[AGENT]),
            _ => (&[CUSTOMER], &[AGENT, SUPERVISOR]),
        };
        if self.customer.talking.load(Ordering::Relaxed) {
            assert_hears(&self.agent, WINDOW, agent_hears, agent_not, &ctx);
        }
        let (cust_hears, cust_not): (&[_], &[_]) = match mode {
            Some("barge" | "talk_to_customer") => (&[AGENT, SUPERVISOR], &[CUSTOMER]),
            _ => (&[AGENT], &[CUSTOMER, SUPERVISOR]),
        };
        if self.agent.talking.load(Ordering::Relaxed) {
            assert_hears(&self.customer, WINDOW, cust_hears, cust_not, &ctx);
        }
    }

    fn start_monitor(&mut self, mode: &str) {
        let id = self.id.clone();
        self.ctl.ok(json!({
            "op": "monitor.start", "call": id, "supervisor": "supervisor",
            "agent": "agent", "customer": "customer", "mode": mode,
        }));
    }

    fn mode(&mut self, mode: &str) {
        let id = self.id.clone();
        self.ctl.ok(json!({
            "op": "monitor.mode", "call": id, "supervisor": "supervisor", "mode": mode,
        }));
    }
}

fn every_mode(driver: &str, codecs: [&str; 3]) {
    let e = Engine::start(driver, &[]);
    let mut c = setup(&e, "sup-modes", codecs);
    c.check(None);
    c.start_monitor("listen");
    c.check(Some("listen"));
    for mode in [
        "whisper",
        "barge",
        "talk_to_customer",
        "listen",
        "barge",
        "whisper",
    ] {
        c.mode(mode);
        c.check(Some(mode));
    }
    let id = c.id.clone();
    c.ctl
        .ok(json!({"op": "monitor.stop", "call": id, "supervisor": "supervisor"}));
    c.check(None);
}

#[test]
fn every_supervision_mode_pcmu_uring() {
    every_mode("io_uring", ["PCMU", "PCMU", "PCMU"]);
}

#[test]
fn every_supervision_mode_pcmu_epoll() {
    every_mode("epoll", ["PCMU", "PCMU", "PCMU"]);
}

#[test]
fn every_supervision_mode_mixed_codecs() {
    // A PCMU customer, an Opus agent and a PCMA supervisor.
    every_mode("auto", ["PCMU", "opus", "PCMA"]);
}

#[test]
fn g722_customer_and_opus_supervisor() {
    every_mode("auto", ["G722", "PCMA", "opus"]);
}

#[test]
fn whisper_reaches_a_silent_agent() {
    let e = Engine::start("auto", &[]);
    let mut c = setup(&e, "sup-silent", ["PCMU", "PCMU", "PCMA"]);
    c.agent.talking.store(false, Ordering::Relaxed);
    c.start_monitor("whisper");
    std::thread::sleep(SETTLE);
    assert_hears(
        &c.agent,
        WINDOW,
        &[CUSTOMER, SUPERVISOR],
        &[AGENT],
        "whisper to a silent agent",
    );
    // The customer hears nothing of the supervisor (and no agent: it is silent).
    assert_hears(
        &c.customer,
        WINDOW,
        &[],
        &[SUPERVISOR, CUSTOMER],
        "customer while whispering",
    );
}

/// Sequence numbers as seen by a receiver: one SSRC, no step back, no gap over `max_gap`.
fn one_stream(headers: &[(u32, u16, u32, u8)], audio_pt: u8, max_gap: u16) {
    let audio: Vec<_> = headers.iter().filter(|h| h.3 == audio_pt).collect();
    assert!(audio.len() > 50, "too few packets: {}", audio.len());
    let ssrcs: std::collections::BTreeSet<u32> = audio.iter().map(|h| h.0).collect();
    assert_eq!(ssrcs.len(), 1, "the stream changed SSRC: {ssrcs:x?}");
    for w in audio.windows(2) {
        let d = w[1].1.wrapping_sub(w[0].1);
        assert!(
            (1..=max_gap).contains(&d),
            "sequence jumps from {} to {}",
            w[0].1,
            w[1].1
        );
        let dt = w[1].2.wrapping_sub(w[0].2);
        assert!(
            dt > 0 && dt < 8000,
            "timestamp jumps from {} to {}",
            w[0].2,
            w[1].2
        );
    }
}

#[test]
fn relay_to_mixing_and_back_is_one_stream() {
    let e = Engine::start("auto", &[]);
    let mut c = setup(&e, "sup-continuity", ["PCMU", "PCMU", "PCMU"]);
    std::thread::sleep(Duration::from_millis(600));
    c.start_monitor("barge");
    c.check(Some("barge"));
    let id = c.id.clone();
    c.ctl
        .ok(json!({"op": "monitor.stop", "call": id, "supervisor": "supervisor"}));
    c.ctl
        .ok(json!({"op": "leg.delete", "call": id, "leg": "supervisor"}));
    std::thread::sleep(Duration::from_millis(800));
    assert_hears(
        &c.customer,
        WINDOW,
        &[AGENT],
        &[SUPERVISOR, CUSTOMER],
        "back to two",
    );
    for p in [&c.customer, &c.agent] {
        let h = p.heard.lock().unwrap();
        one_stream(&h.headers, p.spec.payload_type, 3);
    }
}

#[test]
fn supervisor_switches_mode_with_dtmf() {
    let e = Engine::start("auto", &[]);
    let mut c = setup(&e, "sup-dtmf", ["PCMU", "PCMU", "PCMU"]);
    c.ctl.ok(json!({"op": "subscribe", "topics": ["media"]}));
    let id = c.id.clone();
    c.ctl.ok(json!({
        "op": "monitor.start", "call": id, "supervisor": "supervisor",
        "agent": "agent", "customer": "customer", "mode": "listen", "dtmf_control": true,
    }));
    c.check(Some("listen"));
    // The supervisor presses 5 (whisper) as RFC 4733 events.
    send_digit(&c.supervisor, 101, 5);
    let ev = c
        .ctl
        .wait_event("monitor.mode", Duration::from_secs(5), |_| true);
    assert_eq!(ev["mode"], "whisper", "{ev}");
    c.check(Some("whisper"));
    send_digit(&c.supervisor, 101, 6);
    let ev = c
        .ctl
        .wait_event("monitor.mode", Duration::from_secs(5), |_| true);
    assert_eq!(ev["mode"], "barge", "{ev}");
    c.check(Some("barge"));
}

/// Sends one RFC 4733 digit (event `code`) from `p` to its engine port: 5 packets and 3 end
/// packets, 20 ms apart.
/// Each digit is a new event: a later timestamp and sequence numbers carrying on, in one
/// RFC 4733 stream per party.
fn send_digit(p: &Party, pt: u8, code: u8) {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let to = p.target.lock().unwrap().unwrap();
    let ssrc = 0x5eed_0000u32 ^ p.tone_hz as u32;
    let ts = 90_000u32 + n * 16_000;
    let base = 40_000u16.wrapping_add((n * 16) as u16);
    for i in 0u16..8 {
        let end = i >= 5;
        let dur: u16 = 160 * (i.min(5) + 1);
        let mut pkt = vec![0x80, pt | if i == 0 { 0x80 } else { 0 }];
        pkt.extend_from_slice(&base.wrapping_add(i).to_be_bytes());
        pkt.extend_from_slice(&ts.to_be_bytes());
        pkt.extend_from_slice(&ssrc.to_be_bytes());
        pkt.extend_from_slice(&[code, if end { 0x80 | 10 } else { 10 }]);
        pkt.extend_from_slice(&dur.to_be_bytes());
        p.socket.send_to(&pkt, to).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn digits_are_detected_and_sent() {
    let e = Engine::start("auto", &[]);
    let mut c = setup(&e, "sup-digits", ["PCMU", "PCMA", "PCMU"]);
    c.ctl.ok(json!({"op": "subscribe", "topics": ["media"]}));
    std::thread::sleep(Duration::from_millis(300));
    send_digit(&c.customer, 101, 7);
    let ev = c.ctl.wait_event("dtmf", Duration::from_secs(5), |_| true);
    assert_eq!(ev["digit"], "7", "{ev}");
    assert_eq!(ev["leg"], "customer", "{ev}");
    assert_eq!(ev["call"], "sup-digits", "{ev}");
    // Passed on to the agent, who negotiated telephone-event: RFC 4733 packets.
    std::thread::sleep(Duration::from_millis(300));
    {
        let h = c.agent.heard.lock().unwrap();
        assert!(
            h.events
                .iter()
                .any(|(pt, p)| *pt == 101 && p.first() == Some(&7)),
            "agent got no event for 7"
        );
    }
    // dtmf.send into the agent's leg.
    let id = c.id.clone();
    c.agent.clear();
    c.ctl.ok(
        json!({"op": "dtmf.send", "call": id, "leg": "agent", "digits": "3#", "duration_ms": 100}),
    );
    std::thread::sleep(Duration::from_millis(800));
    let h = c.agent.heard.lock().unwrap();
    let codes: Vec<u8> = h
        .events
        .iter()
        .filter(|(pt, _)| *pt == 101)
        .filter_map(|(_, p)| p.first().copied())
        .collect();
    assert!(codes.contains(&3) && codes.contains(&11), "{codes:?}");
}

#[test]
fn prompts_play_and_stop() {
    let e = Engine::start("auto", &[]);
    let mut c = setup(&e, "sup-play", ["PCMU", "PCMU", "PCMU"]);
    c.ctl.ok(json!({"op": "subscribe", "topics": ["media"]}));
    let id = c.id.clone();
    // A 2600 Hz tone to the customer only.
    let r = c.ctl.ok(json!({
        "op": "play.start", "call": id, "leg": "customer",
        "tone": {"hz": 2600.0, "level_dbm0": -10.0},
    }));
    let play = r["play"].clone();
    std::thread::sleep(SETTLE);
    assert_hears(
        &c.customer,
        WINDOW,
        &[AGENT, ("prompt", 2600.0)],
        &[CUSTOMER],
        "tone to customer",
    );
    assert_hears(
        &c.agent,
        WINDOW,
        &[CUSTOMER],
        &[("prompt", 2600.0)],
        "agent while the customer hears a tone",
    );
    c.ctl
        .ok(json!({"op": "play.stop", "call": id, "play": play}));
    let ev = c
        .ctl
        .wait_event("play.done", Duration::from_secs(5), |_| true);
    assert_eq!(ev["reason"], "stopped", "{ev}");
    std::thread::sleep(SETTLE);
    assert_hears(
        &c.customer,
        WINDOW,
        &[AGENT],
        &[("prompt", 2600.0)],
        "after play.stop",
    );

    // A WAV file played to the whole call, stopped by a digit from the customer.
    let wav = e.dir.join("prompt.wav");
    write_tone_wav(&wav, 16000, 2200.0, 5.0);
    let r = c.ctl.ok(json!({
        "op": "play.start", "call": id, "file": wav.to_str().unwrap(),
        "stop_on_dtmf": true,
    }));
    let ms = r["duration_ms"].as_u64().unwrap();
    assert!((4900..=5100).contains(&ms), "{r}");
    std::thread::sleep(SETTLE);
    for p in [&c.customer, &c.agent, &c.supervisor] {
        let levels = p.levels(WINDOW, &[2200.0]);
        assert!(levels[0] > -40.0, "{} does not hear the prompt", p.name);
    }
    send_digit(&c.customer, 101, 1);
    let ev = c
        .ctl
        .wait_event("play.done", Duration::from_secs(5), |_| true);
    assert_eq!(ev["reason"], "dtmf", "{ev}");
}

/// A mono 16-bit WAV with a sine, written by hand (the format other tools write).
fn write_tone_wav(path: &std::path::Path, rate: u32, hz: f32, secs: f32) {
    let n = (rate as f32 * secs) as u32;
    let mut data = Vec::with_capacity(n as usize * 2);
    for i in 0..n {
        let s = (8000.0 * (std::f32::consts::TAU * hz * i as f32 / rate as f32).sin()) as i16;
        data.extend_from_slice(&s.to_le_bytes());
    }
    let mut f = Vec::new();
    f.extend_from_slice(b"RIFF");
    f.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    f.extend_from_slice(b"WAVEfmt ");
    f.extend_from_slice(&16u32.to_le_bytes());
    f.extend_from_slice(&1u16.to_le_bytes());
    f.extend_from_slice(&1u16.to_le_bytes());
    f.extend_from_slice(&rate.to_le_bytes());
    f.extend_from_slice(&(rate * 2).to_le_bytes());
    f.extend_from_slice(&2u16.to_le_bytes());
    f.extend_from_slice(&16u16.to_le_bytes());
    f.extend_from_slice(b"data");
    f.extend_from_slice(&(data.len() as u32).to_le_bytes());
    f.extend_from_slice(&data);
    std::fs::write(path, f).unwrap();
}

#[test]
fn hostile_supervision_requests() {
    let e = Engine::start("auto", &[]);
    let mut c = setup(&e, "sup-hostile", ["PCMU", "PCMU", "PCMU"]);
    let id = c.id.clone();
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"op": "monitor.start", "call": "nope", "supervisor": "supervisor", "agent": "agent", "mode": "listen"}),
            "not_found",
        ),
        (
            json!({"op": "monitor.start", "call": id, "supervisor": "ghost", "agent": "agent", "mode": "listen"}),
            "not_found",
        ),
        (
            json!({"op": "monitor.start", "call": id, "supervisor": "agent", "agent": "agent", "mode": "listen"}),
            "conflict",
        ),
        (
            json!({"op": "monitor.start", "call": id, "supervisor": "supervisor", "agent": "agent", "mode": "shout"}),
            "bad_request",
        ),
        (
            json!({"op": "monitor.mode", "call": id, "supervisor": "supervisor", "mode": "barge"}),
            "not_found",
        ),
        (
            json!({"op": "leg.hears", "call": id, "leg": "customer", "hears": ["ghost"]}),
            "not_found",
        ),
        (
            json!({"op": "leg.create", "call": id, "leg": "customer", "codecs": ["PCMU"]}),
            "conflict",
        ),
        (
            json!({"op": "leg.create", "call": id, "leg": "x", "codecs": ["G729"]}),
            "bad_request",
        ),
        (
            json!({"op": "play.start", "call": id, "leg": "customer", "file": "/nonexistent/prompt.wav"}),
            "bad_request",
        ),
        (
            json!({"op": "play.start", "call": id, "leg": "ghost", "tone": {"hz": 440.0}}),
            "not_found",
        ),
        (
            json!({"op": "dtmf.send", "call": id, "leg": "customer", "digits": "12x"}),
            "bad_request",
        ),
    ];
    for (req, code) in cases {
        assert_eq!(c.ctl.err(req.clone()), code, "{req}");
    }
    // A corrupt WAV file.
    let bad = e.dir.join("bad.wav");
    std::fs::write(&bad, b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk").unwrap();
    assert_eq!(
        c.ctl.err(json!({"op": "play.start", "call": id, "leg": "customer", "file": bad.to_str().unwrap()})),
        "bad_request"
    );
    // Still serving: the call goes on.
    c.start_monitor("listen");
    c.check(Some("listen"));
}
