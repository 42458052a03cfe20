//! Decoded media driven through NG, as a SIP proxy drives it: transcoding with the `codec`
//! options, listening with `subscribe request` / `subscribe answer`, whisper with
//! `connect`, prompts with `play media` and digits with `play DTMF`. Each party sends its own
//! tone over loopback; what it receives is decoded and measured.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::Duration;

use common::media::{Party, assert_hears};
use common::{Engine, NgClient, have, sdp_media_addr};
use serde_json::{Value, json};

const CALLER: (&str, f32) = ("caller", 500.0);
const CALLEE: (&str, f32) = ("callee", 1100.0);
const SUPERVISOR: (&str, f32) = ("supervisor", 1700.0);
const SETTLE: Duration = Duration::from_millis(700);
const WINDOW: Duration = Duration::from_millis(400);

fn sdp_for(user: &str, port: u16, codecs: &[(u8, &str)]) -> String {
    let pts: Vec<String> = codecs.iter().map(|(pt, _)| pt.to_string()).collect();
    let mut s = format!(
        "v=0\r\no={user} 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP {}\r\n",
        pts.join(" ")
    );
    for (pt, map) in codecs {
        s.push_str(&format!("a=rtpmap:{pt} {map}\r\n"));
    }
    s.push_str("a=sendrecv\r\n");
    s
}

fn ok(ng: &NgClient, req: Value) -> Value {
    let r = ng.request(&req);
    assert_eq!(r["result"], "ok", "{req} -> {r}");
    r
}

/// The payload types of the first `m=audio` line.
fn media_pts(sdp: &str) -> Vec<u8> {
    let m = sdp
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .unwrap();
    m.split_whitespace()
        .skip(2)
        .map(|p| p.parse().unwrap())
        .collect()
}

/// The payload type an SDP gives to `rtpmap` (`opus/48000/2`), case-insensitively.
fn offered_pt(sdp: &str, rtpmap: &str) -> Option<u8> {
    sdp.lines().find_map(|l| {
        let rest = l.trim_end().strip_prefix("a=rtpmap:")?;
        let (pt, map) = rest.split_once(' ')?;
        map.eq_ignore_ascii_case(rtpmap).then(|| pt.parse().ok())?
    })
}

/// A caller speaking `a` and a callee speaking `b`, through an offer with `codec`
/// options.
fn call(e: &Engine, id: &str, a: &str, b: &str, codec: Value) -> (NgClient, Party, Party) {
    let ng = e.ng();
    let mut caller = Party::new(CALLER.0, a, CALLER.1);
    let mut callee = Party::new(CALLEE.0, b, CALLEE.1);
    let map = |p: &Party| -> (u8, String) {
        let s = p.spec;
        let name = match s.kind {
            switchboard_codecs::codec::CodecKind::Opus => "opus/48000/2".to_owned(),
            switchboard_codecs::codec::CodecKind::G722 => "G722/8000".to_owned(),
            _ => format!("{}/8000", common::media::codec_name(&s)),
        };
        (s.payload_type, name)
    };
    let (pa, ma) = map(&caller);
    let offer = sdp_for(
        "caller",
        caller.addr().port(),
        &[(pa, ma.as_str()), (101, "telephone-event/8000")],
    );
    let r = ok(
        &ng,
        json!({"command": "offer", "call-id": id, "from-tag": "caller", "sdp": offer, "codec": codec}),
    );
    let to_callee = r["sdp"].as_str().unwrap().to_owned();
    // The callee answers with the payload type the offer gave its codec.
    let (_, mb) = map(&callee);
    let pb = offered_pt(&to_callee, &mb)
        .unwrap_or_else(|| panic!("the callee is not offered {mb}: {to_callee}"));
    callee.spec = callee.spec.with_payload_type(pb);
    let answer = sdp_for(
        "callee",
        callee.addr().port(),
        &[(pb, mb.as_str()), (101, "telephone-event/8000")],
    );
    let r = ok(
        &ng,
        json!({"command": "answer", "call-id": id, "from-tag": "caller", "to-tag": "callee", "sdp": answer}),
    );
    let to_caller = r["sdp"].as_str().unwrap().to_owned();
    assert!(
        media_pts(&to_caller).contains(&pa),
        "the caller does not get its codec back: {to_caller}"
    );
    callee.set_target(sdp_media_addr(&to_callee));
    caller.set_target(sdp_media_addr(&to_caller));
    caller.start();
    callee.start();
    (ng, caller, callee)
}

fn transcodes(a: &str, b: &str, codec: Value) {
    let e = Engine::start("auto", &[]);
    let (_ng, caller, callee) = call(&e, &format!("tc-{a}-{b}"), a, b, codec);
    std::thread::sleep(SETTLE);
    assert_hears(&callee, WINDOW, &[CALLER], &[CALLEE], "callee");
    assert_hears(&caller, WINDOW, &[CALLEE], &[CALLER], "caller");
    for p in [&caller, &callee] {
        let h = p.heard.lock().unwrap();
        assert_eq!(h.undecodable, 0, "{} got undecodable packets", p.name);
        let audio = h
            .headers
            .iter()
            .filter(|x| x.3 == p.spec.payload_type)
            .count();
        assert!(audio > 30, "{} got {audio} packets in its codec", p.name);
    }
}

#[test]
fn pcmu_to_pcma() {
    transcodes("PCMU", "PCMA", json!({"transcode": ["PCMA"]}));
}

#[test]
fn pcmu_to_opus() {
    transcodes("PCMU", "opus", json!({"transcode": ["opus"]}));
}

#[test]
fn g722_to_pcmu_masked() {
    transcodes(
        "G722",
        "PCMU",
        json!({"mask": ["G722"], "transcode": ["PCMU"]}),
    );
}

#[test]
fn subscribe_listens_and_connect_whispers() {
    let e = Engine::start("auto", &[]);
    let (ng, caller, callee) = call(&e, "sub-1", "PCMU", "PCMU", json!({}));
    std::thread::sleep(Duration::from_millis(300));
    let mut sup = Party::new(SUPERVISOR.0, "PCMA", SUPERVISOR.1);
    let r = ok(
        &ng,
        json!({"command": "subscribe request", "call-id": "sub-1", "flags": ["all"]}),
    );
    let to_tag = r["to-tag"].as_str().unwrap().to_owned();
    let offer = r["sdp"].as_str().unwrap().to_owned();
    assert!(offer.contains("a=sendonly"), "{offer}");
    // The subscriber answers with PCMA: the engine transcodes for it.
    let answer = sdp_for("sup", sup.addr().port(), &[(8, "PCMA/8000")]);
    let _ = ok(
        &ng,
        json!({"command": "subscribe answer", "call-id": "sub-1", "to-tag": to_tag,
               "sdp": answer.replace("a=sendrecv", "a=recvonly"), "flags": ["allow transcoding"]}),
    );
    sup.set_target(sdp_media_addr(&offer));
    sup.start();
    std::thread::sleep(SETTLE);
    assert_hears(&sup, WINDOW, &[CALLER, CALLEE], &[SUPERVISOR], "listening");
    assert_hears(
        &callee,
        WINDOW,
        &[CALLER],
        &[SUPERVISOR, CALLEE],
        "callee while listened to",
    );
    // Whisper to the callee.
    let _ = ok(
        &ng,
        json!({"command": "connect", "call-id": "sub-1", "from-tag": to_tag, "to-tag": "callee"}),
    );
    std::thread::sleep(SETTLE);
    assert_hears(
        &callee,
        WINDOW,
        &[CALLER, SUPERVISOR],
        &[CALLEE],
        "callee whispered to",
    );
    assert_hears(
        &caller,
        WINDOW,
        &[CALLEE],
        &[SUPERVISOR, CALLER],
        "caller during whisper",
    );
    let _ = ok(
        &ng,
        json!({"command": "unsubscribe", "call-id": "sub-1", "to-tag": to_tag}),
    );
    std::thread::sleep(SETTLE);
    assert_hears(
        &callee,
        WINDOW,
        &[CALLER],
        &[SUPERVISOR, CALLEE],
        "after unsubscribe",
    );
    // As rtpengine 10.5 answers: a second unsubscribe is ok; an unknown call is an error.
    let r = ng.request(&json!({"command": "unsubscribe", "call-id": "sub-1", "to-tag": to_tag}));
    assert_eq!(r["result"], "ok", "{r}");
    let r =
        ng.request(&json!({"command": "subscribe request", "call-id": "nope", "flags": ["all"]}));
    assert_eq!(r["result"], "error", "{r}");
    assert_eq!(r["error-reason"], "Unknown call-ID", "{r}");
}

#[test]
fn play_media_and_dtmf() {
    let e = Engine::start("auto", &[]);
    let (ng, caller, callee) = call(&e, "play-1", "PCMU", "PCMU", json!({}));
    let wav = e.dir.join("p.wav");
    let ok_sox = have("sox")
        && std::process::Command::new("sox")
            .args(["-n", "-r", "8000", "-c", "1", "-b", "16"])
            .arg(&wav)
            .args(["synth", "3", "sine", "2600"])
            .status()
            .is_ok_and(|s| s.success());
    assert!(ok_sox, "sox is needed (make deps installs it)");
    let r = ok(
        &ng,
        json!({"command": "play media", "call-id": "play-1", "from-tag": "caller", "file": wav.to_str().unwrap()}),
    );
    let d = r["duration"].as_u64().unwrap();
    assert!((2900..=3100).contains(&d), "{r}");
    std::thread::sleep(SETTLE);
    assert_hears(
        &caller,
        WINDOW,
        &[CALLEE, ("prompt", 2600.0)],
        &[CALLER],
        "caller with prompt",
    );
    assert_hears(
        &callee,
        WINDOW,
        &[CALLER],
        &[("prompt", 2600.0)],
        "callee without prompt",
    );
    let _ = ok(
        &ng,
        json!({"command": "stop media", "call-id": "play-1", "from-tag": "caller"}),
    );
    std::thread::sleep(SETTLE);
    assert_hears(
        &caller,
        WINDOW,
        &[CALLEE],
        &[("prompt", 2600.0)],
        "after stop media",
    );
    // A bad file is an error, and the call carries on.
    let r = ng.request(&json!({"command": "play media", "call-id": "play-1", "from-tag": "caller", "file": "/nonexistent.wav"}));
    assert_eq!(r["result"], "error", "{r}");
    // play DTMF generated by the caller (NG selects the generating party) reaches the
    // callee: RFC 4733, since it negotiated telephone-event.
    callee.clear();
    let _ = ok(
        &ng,
        json!({"command": "play DTMF", "call-id": "play-1", "from-tag": "caller", "code": "9", "duration": 100}),
    );
    std::thread::sleep(Duration::from_millis(600));
    let h = callee.heard.lock().unwrap();
    assert!(
        h.events
            .iter()
            .any(|(pt, p)| *pt == 101 && p.first() == Some(&9)),
        "callee got no event 9: {:?}",
        h.events.len()
    );
}

/// An RTP packet of the caller's stream: PCMU audio or an RFC 4733 event (payload type 101).
fn caller_packet(pt: u8, seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, pt];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    if pt == 101 {
        p.extend_from_slice(&[5, 10, 0, 160]);
    } else {
        p.extend(std::iter::repeat_n(0xffu8, 160));
    }
    p
}

/// `block DTMF` on a call that only relays (same codec both ways): the caller's event packets
/// are dropped and its audio still passes; `unblock DTMF` lets events through again.
#[test]
fn block_dtmf_while_relaying() {
    let e = Engine::start("auto", &[]);
    let ng = e.ng();
    let a = common::udp();
    let b = common::udp();
    let pcmu = [(0u8, "PCMU/8000"), (101, "telephone-event/8000")];
    let r = ok(
        &ng,
        json!({"command": "offer", "call-id": "d1", "from-tag": "ta",
               "sdp": sdp_for("a", a.local_addr().unwrap().port(), &pcmu)}),
    );
    assert!(r["sdp"].as_str().is_some());
    let r = ok(
        &ng,
        json!({"command": "answer", "call-id": "d1", "from-tag": "ta", "to-tag": "tb",
               "sdp": sdp_for("b", b.local_addr().unwrap().port(), &pcmu)}),
    );
    let to_engine = sdp_media_addr(r["sdp"].as_str().unwrap());
    let _ = ok(
        &ng,
        json!({"command": "block DTMF", "call-id": "d1", "from-tag": "ta"}),
    );
    let mut seq = 1u16;
    let burst = |seq: &mut u16| -> Vec<u8> {
        for i in 0..20 {
            a.send_to(
                &caller_packet(if i % 2 == 0 { 0 } else { 101 }, *seq),
                to_engine,
            )
            .unwrap();
            *seq += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
        common::recv_all(&b, 20, Duration::from_secs(1))
            .iter()
            .map(|(p, _)| p[1] & 0x7f)
            .collect()
    };
    let pts = burst(&mut seq);
    assert!(pts.contains(&0), "audio must pass: {pts:?}");
    assert!(!pts.contains(&101), "events must be blocked: {pts:?}");
    let _ = ok(
        &ng,
        json!({"command": "unblock DTMF", "call-id": "d1", "from-tag": "ta"}),
    );
    let pts = burst(&mut seq);
    assert!(pts.contains(&101), "events pass again: {pts:?}");
}
