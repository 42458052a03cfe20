//! `/metrics` figures the media workers publish from their periodic sweep: calls and legs by
//! state, jitter buffers, mixer speakers, transcoding by codec pair and live quality. A
//! relayed NG call, a transcoded NG call (PCMU caller, PCMA callee) and a three-leg native
//! conference run over loopback for about a second; then the series are checked.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::ctl::Ctl;
use common::media::Party;
use common::{Engine, NgClient, rtp_packet, sdp, sdp_media_addr, udp};
use serde_json::{Value, json};

fn sdp_for(user: &str, port: u16, pt: u8, map: &str) -> String {
    format!(
        "v=0\r\no={user} 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP {pt}\r\na=rtpmap:{pt} {map}\r\na=sendrecv\r\n"
    )
}

fn ok(ng: &NgClient, req: Value) -> Value {
    let r = ng.request(&req);
    assert_eq!(r["result"], "ok", "{req} -> {r}");
    r
}

/// The payload type an SDP gives to `rtpmap`.
fn offered_pt(sdp: &str, rtpmap: &str) -> Option<u8> {
    sdp.lines().find_map(|l| {
        let rest = l.trim_end().strip_prefix("a=rtpmap:")?;
        let (pt, map) = rest.split_once(' ')?;
        map.eq_ignore_ascii_case(rtpmap).then(|| pt.parse().ok())?
    })
}

/// A PCMU caller and a PCMA callee through an offer asking to transcode to PCMA.
fn transcoded_call(e: &Engine) -> (Party, Party) {
    let ng = e.ng();
    let mut caller = Party::new("caller", "PCMU", 500.0);
    let mut callee = Party::new("callee", "PCMA", 1100.0);
    let offer = sdp_for("caller", caller.addr().port(), 0, "PCMU/8000");
    let r = ok(
        &ng,
        json!({"command": "offer", "call-id": "m-tc", "from-tag": "caller", "sdp": offer,
            "codec": {"transcode": ["PCMA"]}}),
    );
    let to_callee = r["sdp"].as_str().unwrap().to_owned();
    let pb = offered_pt(&to_callee, "PCMA/8000").expect("PCMA offered");
    callee.spec = callee.spec.with_payload_type(pb);
    let answer = sdp_for("callee", callee.addr().port(), pb, "PCMA/8000");
    let r = ok(
        &ng,
        json!({"command": "answer", "call-id": "m-tc", "from-tag": "caller",
            "to-tag": "callee", "sdp": answer}),
    );
    let to_caller = r["sdp"].as_str().unwrap().to_owned();
    callee.set_target(sdp_media_addr(&to_callee));
    caller.set_target(sdp_media_addr(&to_caller));
    caller.start();
    callee.start();
    (caller, callee)
}

/// A native call whose three PCMU legs all hear each other: two steady talkers and a raw
/// socket (returned with the leg's address) that sends in bursts.
fn conference(e: &Engine) -> (Ctl, Vec<Party>, UdpSocket, SocketAddr) {
    let mut c = Ctl::connect(e.control);
    c.ok(json!({"op": "call.create", "call": "m-conf"}));
    let bursty = udp();
    let r = c.ok(
        json!({"op": "leg.create", "call": "m-conf", "leg": "bursty",
        "codecs": ["PCMU"], "remote": bursty.local_addr().unwrap().to_string(), "hears": "all"}),
    );
    let bursty_to: SocketAddr = r["local"].as_str().unwrap().parse().unwrap();
    let mut parties = Vec::new();
    for (name, hz) in [("a", 400.0), ("b", 900.0)] {
        let mut p = Party::new(name, "PCMU", hz);
        let r = c.ok(json!({"op": "leg.create", "call": "m-conf", "leg": name,
            "codecs": ["PCMU"], "remote": p.addr().to_string(), "hears": "all"}));
        let local: SocketAddr = r["local"].as_str().unwrap().parse().unwrap();
        p.set_target(local);
        p.start();
        parties.push(p);
    }
    (c, parties, bursty, bursty_to)
}

/// `(name, labels) -> value` of every sample, labels as written (`k="v",...`).
fn samples(text: &str) -> BTreeMap<(String, String), f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, v) = l.rsplit_once(' ')?;
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            Some(((name.to_owned(), labels.to_owned()), v.parse().ok()?))
        })
        .collect()
}

/// The sum over workers of `name` samples whose labels contain `with`.
fn sum(s: &BTreeMap<(String, String), f64>, name: &str, with: &str) -> f64 {
    s.iter()
        .filter(|((n, l), _)| n == name && l.contains(with))
        .map(|(_, v)| *v)
        .sum()
}

#[test]
fn sweep_figures_cover_states_jitter_buffers_transcoding_and_quality() {
    let e = Engine::start("auto", &[]);
    // A relayed call with RTP one way.
    let ng = e.ng();
    let (a, b) = (udp(), udp());
    ok(
        &ng,
        json!({"command": "offer", "call-id": "m-relay", "from-tag": "x",
            "sdp": sdp("a", a.local_addr().unwrap().port())}),
    );
    let r = ok(
        &ng,
        json!({"command": "answer", "call-id": "m-relay", "from-tag": "x", "to-tag": "y",
            "sdp": sdp("b", b.local_addr().unwrap().port())}),
    );
    let relay_to = sdp_media_addr(r["sdp"].as_str().unwrap());
    let (_caller, _callee) = transcoded_call(&e);
    let (_ctl, _parties, bursty, bursty_to) = conference(&e);

    // RTP for about a second, then scrapes (media still flowing) until a sweep saw audio
    // waiting in a jitter buffer: the bursty leg sends 100 ms of audio every 100 ms at once.
    let start = Instant::now();
    let mut seq = 0u16;
    let mut burst_seq = 0u16;
    let mut scraped = None;
    while start.elapsed() < Duration::from_secs(4) {
        a.send_to(&rtp_packet(seq, u32::from(seq) * 160, 0x77, 1), relay_to)
            .unwrap();
        if seq % 5 == 0 {
            for _ in 0..5 {
                let p = rtp_packet(burst_seq, u32::from(burst_seq) * 160, 0x99, 0x55);
                bursty.send_to(&p, bursty_to).unwrap();
                burst_seq += 1;
            }
        }
        seq += 1;
        std::thread::sleep(Duration::from_millis(20));
        if start.elapsed() > Duration::from_millis(1200) && seq % 5 == 2 {
            let (code, text) = e.http_get("/metrics");
            assert_eq!(code, 200);
            if sum(&samples(&text), "switchboard_jitter_buffer_depth_ms", "") > 0.0 {
                scraped = Some(text);
                break;
            }
        }
    }
    let text = scraped.expect("no sweep saw audio waiting in a jitter buffer");
    let s = samples(&text);
    for t in [
        "# TYPE switchboard_calls gauge",
        "# TYPE switchboard_legs gauge",
        "# TYPE switchboard_mixer_speakers gauge",
        "# TYPE switchboard_jitter_buffer_depth_ms gauge",
        "# TYPE switchboard_jitter_buffer_legs gauge",
        "# TYPE switchboard_jitter_late_packets_total counter",
        "# TYPE switchboard_jitter_lost_packets_total counter",
        "# TYPE switchboard_jitter_concealed_frames_total counter",
        "# TYPE switchboard_transcoding_streams gauge",
        "# TYPE switchboard_live_leg_mos gauge",
        "# TYPE switchboard_live_leg_jitter_seconds gauge",
        "# TYPE switchboard_live_leg_loss_ratio gauge",
    ] {
        assert!(text.contains(t), "{t} missing:\n{text}");
    }
    let got = |name: &str, with: &str| sum(&s, name, with);
    assert_eq!(
        got("switchboard_calls", "state=\"mixing\""),
        2.0,
        "transcoded call and conference mix:\n{text}"
    );
    assert_eq!(
        got("switchboard_calls", "state=\"relaying\""),
        1.0,
        "{text}"
    );
    assert_eq!(got("switchboard_calls", "state=\"idle\""), 0.0, "{text}");
    assert_eq!(got("switchboard_legs", "state=\"mixed\""), 5.0, "{text}");
    // The relayed call: the sending leg is active, the silent one idle.
    assert_eq!(got("switchboard_legs", "state=\"active\""), 1.0, "{text}");
    assert_eq!(got("switchboard_legs", "state=\"idle\""), 1.0, "{text}");
    assert_eq!(
        got(
            "switchboard_transcoding_streams",
            "from=\"PCMU\",to=\"PCMA\""
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        got(
            "switchboard_transcoding_streams",
            "from=\"PCMA\",to=\"PCMU\""
        ),
        1.0,
        "{text}"
    );
    assert!(
        !text.contains("from=\"PCMU\",to=\"PCMU\""),
        "same-codec mixing is no transcoding:\n{text}"
    );
    assert!(
        got("switchboard_jitter_buffer_target_ms", "") >= 5.0 * 20.0,
        "{text}"
    );
    assert!(
        got("switchboard_jitter_buffer_legs", "le=\"0\"") < 5.0,
        "one leg has audio waiting:\n{text}"
    );
    assert_eq!(
        got("switchboard_jitter_buffer_legs", "le=\"+Inf\""),
        5.0,
        "{text}"
    );
    let speakers = got("switchboard_mixer_speakers", "");
    assert!(
        (1.0..=5.0).contains(&speakers),
        "speakers {speakers}:\n{text}"
    );
    // Every leg that sent RTP is in the live quality figures: 5 mixed legs and the relayed
    // sender.
    assert_eq!(
        got("switchboard_live_leg_jitter_seconds", "le=\"+Inf\""),
        6.0,
        "{text}"
    );
    assert_eq!(
        got("switchboard_live_leg_loss_ratio", "le=\"+Inf\""),
        6.0,
        "{text}"
    );
    let lost = got("switchboard_jitter_lost_packets_total", "");
    assert!(
        (0.0..50.0).contains(&lost),
        "lost {lost} over loopback:\n{text}"
    );
}
