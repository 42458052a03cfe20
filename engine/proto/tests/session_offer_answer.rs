//! Offer/answer behaviour of `Sessions`: exact SDP, media commands, port handling, timers,
//! retransmissions and options that are not supported yet.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use switchboard_proto::bencode::{Limits, Value, parse_json};
use switchboard_proto::ng::{RetransmitCache, encode_reply};
use switchboard_proto::session::{
    EndReason, MediaCommand, NgHandler, NoStats, RangePorts, RecordingAction, RelayKind, RelaySpec,
    Sessions, SessionsConfig, StatsSnapshot, StreamStats, UnixMicros,
};
use switchboard_proto::time::Micros;

const ALICE: &str = "v=0\r\no=alice 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n";
const BOB: &str = "v=0\r\no=bob 2 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 50000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n";

struct World {
    ng: NgHandler,
    ports: RangePorts,
    now: Micros,
    wall: UnixMicros,
    cookie: u64,
}

impl World {
    fn new() -> Self {
        Self::with(SessionsConfig::default(), 30000, 39999)
    }

    fn with(config: SessionsConfig, min: u16, max: u16) -> Self {
        World {
            ng: NgHandler::new(Sessions::new(config), RetransmitCache::default()),
            ports: RangePorts::new(Some(IpAddr::from([127, 0, 0, 1])), None, min, max),
            now: Micros::from_secs(100),
            wall: UnixMicros(1_700_000_000_000_000),
            cookie: 0,
        }
    }

    fn raw(&mut self, data: &[u8]) -> (Vec<u8>, Vec<MediaCommand>) {
        self.now = self.now + Duration::from_millis(1);
        self.wall = UnixMicros(self.wall.0 + 1000);
        let out = self
            .ng
            .handle_datagram(self.now, self.wall, data, &mut self.ports, &NoStats)
            .expect("a reply");
        (out.reply, out.commands)
    }

    /// Sends a JSON request; returns the decoded reply and the commands.
    fn req(&mut self, json: &str) -> (Value, Vec<MediaCommand>) {
        self.cookie += 1;
        let data = format!("c{} {json}", self.cookie);
        let (reply, cmds) = self.raw(data.as_bytes());
        let sp = reply.iter().position(|&b| b == b' ').unwrap();
        (parse_json(&reply[sp + 1..], Limits::NG).unwrap(), cmds)
    }

    fn offer(&mut self, call: &str, sdp: &str, extra: &str) -> (Value, Vec<MediaCommand>) {
        self.req(&format!(
            r#"{{"command":"offer","call-id":"{call}","from-tag":"ft","sdp":{}{extra}}}"#,
            serde_json::to_string(sdp).unwrap()
        ))
    }

    fn answer(&mut self, call: &str, sdp: &str, extra: &str) -> (Value, Vec<MediaCommand>) {
        self.req(&format!(
            r#"{{"command":"answer","call-id":"{call}","from-tag":"ft","to-tag":"tt","sdp":{}{extra}}}"#,
            serde_json::to_string(sdp).unwrap()
        ))
    }
}

fn sdp_of(v: &Value) -> String {
    v.get("sdp")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no sdp in {v:?}"))
        .to_owned()
}

fn result(v: &Value) -> &str {
    v.get("result").and_then(Value::as_str).unwrap()
}

fn reason(v: &Value) -> &str {
    v.get("error-reason").and_then(Value::as_str).unwrap_or("")
}

fn warning(v: &Value) -> &str {
    v.get("warning").and_then(Value::as_str).unwrap_or("")
}

fn relays(cmds: &[MediaCommand]) -> Vec<&RelaySpec> {
    cmds.iter()
        .filter_map(|c| match c {
            MediaCommand::SetRelay(r) => Some(&**r),
            _ => None,
        })
        .collect()
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn ng_md_offer_and_answer_exact_sdp() {
    let mut w = World::new();
    let (r, cmds) = w.offer("c1", ALICE, "");
    assert_eq!(
        sdp_of(&r),
        "v=0\r\no=alice 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 30002 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=sendrecv\r\na=rtcp:30003\r\na=ptime:20\r\n"
    );
    // Both sides got ports at offer time; the callee's address is not known yet.
    let rel = relays(&cmds);
    assert_eq!(rel.len(), 1);
    let r0 = rel[0];
    assert_eq!(r0.call_id, "c1");
    assert_eq!(r0.media_index, 1);
    assert_eq!(r0.kind, RelayKind::Rtp);
    assert_eq!(r0.sides[0].tag, "ft");
    assert_eq!(r0.sides[0].local.rtp_port, 30000);
    let remote = r0.sides[0].remote.unwrap();
    assert_eq!(
        (remote.rtp, remote.rtcp),
        (sa("127.0.0.1:40000"), sa("127.0.0.1:40001"))
    );
    assert_eq!(r0.sides[0].payload_types, vec![0, 8, 101]);
    assert!(r0.sides[0].learn_address && !r0.sides[0].strict_source);
    assert_eq!(r0.sides[1].tag, "");
    assert_eq!(r0.sides[1].local.rtp_port, 30002);
    assert_eq!(r0.sides[1].remote, None);
    assert_eq!(w.ports.in_use(), 2);

    let (r, cmds) = w.answer("c1", BOB, "");
    assert_eq!(
        sdp_of(&r),
        "v=0\r\no=bob 2 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 30000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=sendrecv\r\na=rtcp:30001\r\na=ptime:20\r\n"
    );
    let r1 = relays(&cmds)[0];
    assert_eq!(r1.sides[1].tag, "tt");
    assert_eq!(r1.sides[1].local.rtp_port, 30002);
    assert_eq!(r1.sides[1].remote.unwrap().rtp, sa("127.0.0.1:50000"));
    assert_eq!(r1.sides[1].payload_types, vec![0, 101]);
    assert_eq!(w.ports.in_use(), 2);
}

#[test]
fn kamailio_offer_exact_reply_bytes() {
    let mut w = World::new();
    let sdp = "v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6004 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";
    let mut msg = b"0_12433_2 d8:supportsl10:load limite3:sdp129:".to_vec();
    msg.extend_from_slice(sdp.as_bytes());
    msg.extend_from_slice(b"3:ICE6:remove11:record-call2:no7:replacel6:origin18:session-connectione7:call-id17:1-12488@127.0.0.113:received-froml3:IP49:127.0.0.1e8:from-tag15:12488SIPpTag0017:command5:offere");
    let (reply, _) = w.raw(&msg);
    let expected_sdp = "v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 30002 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\na=rtcp:30003\r\n";
    let expected = format!(
        "0_12433_2 d3:sdp{}:{expected_sdp}6:result2:oke",
        expected_sdp.len()
    );
    assert_eq!(String::from_utf8(reply).unwrap(), expected);
}

#[test]
fn reinvite_reuses_ports_and_updates_remote() {
    let mut w = World::new();
    w.offer("c1", ALICE, "");
    w.answer("c1", BOB, "");
    assert_eq!(w.ports.in_use(), 2);
    let moved = ALICE.replace("40000", "40100");
    let (r, cmds) = w.offer("c1", &moved, "");
    assert!(sdp_of(&r).contains("m=audio 30002 "));
    assert_eq!(w.ports.in_use(), 2);
    let rel = relays(&cmds)[0];
    assert_eq!(rel.sides[0].remote.unwrap().rtp, sa("127.0.0.1:40100"));
    // The callee's address from the first answer is still known.
    assert_eq!(rel.sides[1].remote.unwrap().rtp, sa("127.0.0.1:50000"));
    // A re-INVITE from the callee advertises the caller-facing port.
    let (r, _) = w.req(&format!(
        r#"{{"command":"offer","call-id":"c1","from-tag":"tt","to-tag":"ft","sdp":{}}}"#,
        serde_json::to_string(BOB).unwrap()
    ));
    assert!(sdp_of(&r).contains("m=audio 30000 "), "{}", sdp_of(&r));
    assert_eq!(w.ports.in_use(), 2);
}

#[test]
fn port_exhaustion_is_an_error_and_leaks_nothing() {
    // Three pairs: one call takes two.
    let mut w = World::with(SessionsConfig::default(), 30000, 30005);
    let (r, _) = w.offer("c1", ALICE, "");
    assert_eq!(result(&r), "ok");
    let (r, cmds) = w.offer("c2", ALICE, "");
    assert_eq!(reason(&r), "Ran out of ports");
    assert!(cmds.is_empty());
    assert_eq!(w.ports.in_use(), 2);
    let (r, _) = w.req(r#"{"command":"list"}"#);
    assert_eq!(r.get("calls"), Some(&Value::List(vec![Value::from("c1")])));
    // A re-offer of c1 adding a second stream fails too, and leaves c1 as it was.
    let (before, _) = w.req(r#"{"command":"query","call-id":"c1"}"#);
    let two = format!("{ALICE}m=audio 40010 RTP/AVP 0\r\n");
    let (r, _) = w.offer("c1", &two, "");
    assert_eq!(reason(&r), "Ran out of ports");
    assert_eq!(w.ports.in_use(), 2);
    let (after, _) = w.req(r#"{"command":"query","call-id":"c1"}"#);
    assert_eq!(before.get("tags"), after.get("tags"));
    // After deletion the ports are free again.
    let (_, cmds) = w.req(r#"{"command":"delete","call-id":"c1","delete delay":0}"#);
    assert!(matches!(&cmds[..], [MediaCommand::DeleteCall { pairs, .. }] if pairs.len() == 2));
    assert_eq!(w.ports.in_use(), 0);
    let (r, _) = w.offer("c2", ALICE, "");
    assert_eq!(result(&r), "ok");
}

#[test]
fn delete_delay_and_timers() {
    let mut w = World::new();
    w.offer("c1", ALICE, "");
    w.answer("c1", BOB, "");
    let (r, cmds) = w.req(r#"{"command":"delete","call-id":"c1","from-tag":"ft"}"#);
    assert_eq!(result(&r), "ok");
    assert!(r.get("tags").is_some(), "statistics in the delete reply");
    assert!(cmds.is_empty());
    let deleted_at = w.now;
    assert_eq!(
        w.ng.sessions.poll_timeout(),
        Some(deleted_at + Duration::from_secs(30))
    );
    // Still there during the delay.
    let (r, _) = w.req(r#"{"command":"query","call-id":"c1"}"#);
    assert_eq!(result(&r), "ok");
    let early =
        w.ng.handle_timeout(deleted_at + Duration::from_secs(29), w.wall, &mut w.ports);
    assert!(early.is_empty());
    let due =
        w.ng.handle_timeout(deleted_at + Duration::from_secs(30), w.wall, &mut w.ports);
    assert!(matches!(&due[..], [MediaCommand::DeleteCall { call_id, .. }] if call_id == "c1"));
    assert_eq!(w.ports.in_use(), 0);
    assert!(w.ng.sessions.is_empty());
    assert_eq!(w.ng.sessions.poll_timeout(), None);
    let (r, _) = w.req(r#"{"command":"query","call-id":"c1"}"#);
    assert_eq!(reason(&r), "Unknown call-id");
}

#[test]
fn new_offer_cancels_pending_deletion() {
    let mut w = World::new();
    w.offer("c1", ALICE, "");
    w.req(r#"{"command":"delete","call-id":"c1","from-tag":"ft"}"#);
    assert!(w.ng.sessions.poll_timeout().is_some());
    w.offer("c1", ALICE, "");
    assert_eq!(w.ng.sessions.poll_timeout(), None);
}

#[test]
fn delete_without_from_tag_is_plain_ok_and_unknown_gives_warning() {
    let mut w = World::new();
    w.offer("c1", ALICE, "");
    let (r, _) = w.req(r#"{"command":"delete","call-id":"c1","delete-delay":"0"}"#);
    assert_eq!(r.to_bencode(), b"d6:result2:oke");
    let (r, _) = w.req(r#"{"command":"delete","call-id":"c1"}"#);
    assert_eq!(warning(&r), "Call-ID not found or tags didn't match");
    let (r, _) = w.req(r#"{"command":"delete","call-id":"c1","flags":["fatal"]}"#);
    assert_eq!(reason(&r), "Call-ID not found or tags didn't match");
}

#[test]
fn retransmission_returns_cached_reply_without_rerunning() {
    let mut w = World::new();
    let req = format!(
        r#"k1 {{"command":"offer","call-id":"c1","from-tag":"ft","sdp":{}}}"#,
        serde_json::to_string(ALICE).unwrap()
    );
    let first =
        w.ng.handle_datagram(w.now, w.wall, req.as_bytes(), &mut w.ports, &NoStats)
            .unwrap();
    assert!(!first.retransmission && !first.commands.is_empty());
    let again =
        w.ng.handle_datagram(
            w.now + Duration::from_secs(5),
            w.wall,
            req.as_bytes(),
            &mut w.ports,
            &NoStats,
        )
        .unwrap();
    assert!(again.retransmission);
    assert!(again.commands.is_empty());
    assert_eq!(again.reply, first.reply);
    assert_eq!(w.ports.in_use(), 2);
    // After the cache lifetime the cookie runs again (a re-offer reusing the ports).
    let late =
        w.ng.handle_datagram(
            w.now + Duration::from_secs(31),
            w.wall,
            req.as_bytes(),
            &mut w.ports,
            &NoStats,
        )
        .unwrap();
    assert!(!late.retransmission);
    assert_eq!(w.ports.in_use(), 2);
    // Framing errors are cached too.
    let bad =
        w.ng.handle_datagram(w.now, w.wall, b"k2 hello", &mut w.ports, &NoStats)
            .unwrap();
    assert_eq!(
        bad.reply,
        encode_reply(
            b"k2",
            switchboard_proto::ng::Encoding::Bencode,
            &switchboard_proto::ng::error_reply("Invalid NG data format")
        )
    );
    assert!(
        w.ng.handle_datagram(w.now, w.wall, b"k2 hello", &mut w.ports, &NoStats)
            .unwrap()
            .retransmission
    );
    assert!(
        w.ng.handle_datagram(w.now, w.wall, b"nospace", &mut w.ports, &NoStats)
            .is_none()
    );
}

#[test]
fn unsupported_options_are_named_never_silent() {
    let mut w = World::new();
    let (r, _) = w.offer("c1", ALICE, r#","ICE":"force""#);
    assert!(reason(&r).contains("ICE"));
    let (r, _) = w.offer("c1", &ALICE.replace("RTP/AVP", "RTP/SAVP"), "");
    assert!(reason(&r).contains("SRTP"));
    let (r, _) = w.offer("c1", ALICE, r#","transport-protocol":"RTP/SAVPF""#);
    assert!(reason(&r).contains("transport protocol"));
    assert_eq!(w.ports.in_use(), 0);
    assert!(w.ng.sessions.is_empty());
    let (r, _) = w.offer(
        "c1",
        ALICE,
        r#","record call":"yes","flags":["bogus-flag"]"#,
    );
    assert_eq!(result(&r), "ok");
    assert!(
        !warning(&r).contains("record call"),
        "recording works: {r:?}"
    );
    assert!(warning(&r).contains("bogus-flag"), "{r:?}");
    let (r, _) = w.req(r#"{"command":"block media","call-id":"c1","from-tag":"ft"}"#);
    assert!(reason(&r).contains("block media"));
    // Codecs the engine cannot transcode are named in a warning and ignored.
    let (r, _) = w.offer("c2", ALICE, r#","codec":{"transcode":["G729"]}"#);
    assert_eq!(
        warning(&r),
        "Unsupported codecs for transcoding, ignored: G729"
    );
    assert!(!sdp_of(&r).contains("G729"));
}

fn recording(cmds: &[MediaCommand]) -> Vec<(RecordingAction, Option<&str>)> {
    cmds.iter()
        .filter_map(|c| match c {
            MediaCommand::Recording {
                call_id,
                action,
                metadata,
            } => {
                assert_eq!(call_id, "c1");
                Some((*action, metadata.as_deref()))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn recording_requests_become_media_commands() {
    let mut w = World::new();
    let (r, _) = w.req(r#"{"command":"start recording","call-id":"c1"}"#);
    assert_eq!(reason(&r), "Unknown call-id");
    let (r, cmds) = w.offer(
        "c1",
        ALICE,
        r#","record call":"yes","metadata":"agent:a1|queue:q""#,
    );
    assert_eq!(result(&r), "ok");
    assert!(
        matches!(cmds.last(), Some(MediaCommand::Recording { .. })),
        "after the relays"
    );
    assert_eq!(
        recording(&cmds),
        [(RecordingAction::Start, Some("agent:a1|queue:q"))]
    );
    let (_, cmds) = w.answer("c1", BOB, r#","flags":["record-call"]"#);
    assert_eq!(recording(&cmds), [(RecordingAction::Start, None)]);
    let (_, cmds) = w.answer("c1", BOB, r#","metadata":"x:y""#);
    assert_eq!(recording(&cmds), [(RecordingAction::Metadata, Some("x:y"))]);
    let (_, cmds) = w.answer("c1", BOB, r#","record call":"no""#);
    assert!(recording(&cmds).is_empty());
    for (cmd, action) in [
        ("pause recording", RecordingAction::Pause),
        ("start recording", RecordingAction::Start),
        ("stop recording", RecordingAction::Stop),
    ] {
        let (r, cmds) = w.req(&format!(r#"{{"command":"{cmd}","call-id":"c1"}}"#));
        assert_eq!(result(&r), "ok", "{cmd}");
        assert_eq!(recording(&cmds), [(action, None)]);
    }
    let (r, _) = w.req(r#"{"command":"stop recording"}"#);
    assert_eq!(reason(&r), "No call-id in message");
    let legs = w.ng.sessions.recording_legs("c1").unwrap();
    assert_eq!(legs.len(), 2);
    assert!(legs[0].caller && !legs[1].caller);
    assert_eq!((legs[0].tag.as_str(), legs[1].tag.as_str()), ("ft", "tt"));
    assert_eq!(legs[0].codecs.len(), 3, "PCMU, PCMA, telephone-event");
    assert_ne!(legs[0].local.rtp_port, legs[1].local.rtp_port);
    assert!(w.ng.sessions.recording_legs("nope").is_none());
}

#[test]
fn ice_is_stripped_with_a_warning_unless_removed() {
    let mut w = World::new();
    let ice = ALICE.replace(
        "a=sendrecv\r\n",
        "a=sendrecv\r\na=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdefghijkl\r\na=candidate:1 1 UDP 2130706431 127.0.0.1 40000 typ host\r\n",
    );
    let (r, _) = w.offer("c1", &ice, "");
    assert!(!sdp_of(&r).contains("ice-"));
    assert!(!sdp_of(&r).contains("candidate"));
    assert!(warning(&r).contains("ICE"));
    let (r, _) = w.offer("c2", &ice, r#","ICE":"remove""#);
    assert!(!sdp_of(&r).contains("candidate"));
    assert_eq!(warning(&r), "");
}

#[test]
fn hold_keeps_zero_address_and_has_no_remote() {
    let mut w = World::new();
    let hold = ALICE
        .replace("c=IN IP4 127.0.0.1", "c=IN IP4 0.0.0.0")
        .replace("a=sendrecv", "a=sendonly");
    let (r, cmds) = w.offer("c1", &hold, "");
    let sdp = sdp_of(&r);
    assert!(sdp.contains("c=IN IP4 0.0.0.0\r\n"));
    assert!(sdp.contains("a=sendonly\r\n"));
    let rel = relays(&cmds)[0];
    assert_eq!(rel.sides[0].remote, None);
    let (r, _) = w.offer("c1", &hold, r#","replace":["zero-address"]"#);
    assert!(sdp_of(&r).contains("c=IN IP4 127.0.0.1\r\n"));
}

#[test]
fn rejecting_a_stream_releases_its_ports() {
    let mut w = World::new();
    let two = format!("{ALICE}m=video 41000 RTP/AVP 31\r\n");
    let (r, cmds) = w.offer("c1", &two, "");
    assert!(sdp_of(&r).contains("m=video 30006 RTP/AVP 31\r\na=rtpmap:31 H261/90000"));
    assert_eq!(relays(&cmds).len(), 2);
    assert_eq!(w.ports.in_use(), 4);
    let (r, cmds) = w.offer("c1", &two.replace("video 41000", "video 0"), "");
    assert!(sdp_of(&r).contains("m=video 0 RTP/AVP 31\r\n"));
    assert!(cmds.iter().any(|c| matches!(
        c,
        MediaCommand::RemoveRelay { media_index: 2, pairs, .. } if pairs.len() == 2
    )));
    assert_eq!(relays(&cmds).len(), 1);
    assert_eq!(w.ports.in_use(), 2);
}

#[test]
fn rtcp_mux_negotiation_reaches_the_media_plane() {
    let mut w = World::new();
    let mux = ALICE.replace("a=sendrecv\r\n", "a=sendrecv\r\na=rtcp-mux\r\n");
    let (r, _) = w.offer("c1", &mux, "");
    assert!(sdp_of(&r).contains("a=rtcp:30003\r\na=rtcp-mux\r\n"));
    let bob_mux = BOB.replace("a=sendrecv\r\n", "a=sendrecv\r\na=rtcp-mux\r\n");
    let (r, cmds) = w.answer("c1", &bob_mux, "");
    assert!(sdp_of(&r).contains("a=rtcp:30000\r\na=rtcp-mux\r\n"));
    let rel = relays(&cmds)[0];
    assert!(rel.sides[0].rtcp_mux && rel.sides[1].rtcp_mux);
    assert_eq!(rel.sides[1].remote.unwrap().rtcp, sa("127.0.0.1:50000"));
    // demux: muxed towards the caller, not towards the callee.
    let (r, _) = w.offer("c2", &mux, r#","rtcp-mux":["demux"]"#);
    assert!(!sdp_of(&r).contains("rtcp-mux"));
    let (r, cmds) = w.answer("c2", BOB, "");
    assert!(sdp_of(&r).contains("a=rtcp-mux"), "{}", sdp_of(&r));
    let rel = relays(&cmds)[0];
    assert!(rel.sides[0].rtcp_mux && !rel.sides[1].rtcp_mux);
}

#[test]
fn flags_reach_the_media_plane() {
    let mut w = World::new();
    let (_, cmds) = w.offer(
        "c1",
        ALICE,
        r#","flags":["strict-source","asymmetric","media-handover"]"#,
    );
    let s = &relays(&cmds)[0].sides[0];
    assert!(s.strict_source && !s.learn_address && s.media_handover);
    let (_, cmds) = w.offer(
        "c2",
        ALICE,
        r#","flags":["SIP-source-address"],"received-from":["IP4","192.0.2.9"]"#,
    );
    let s = &relays(&cmds)[0].sides[0];
    assert_eq!(s.remote.unwrap().rtp, sa("192.0.2.9:40000"));
}

#[test]
fn loop_protect_marks_and_passes_marked_sdp() {
    let mut w = World::new();
    let (r, _) = w.offer("c1", ALICE, r#","flags":["loop-protect"]"#);
    let marked = sdp_of(&r);
    assert!(marked.contains("t=0 0\r\na=rtpengine:5357434842\r\nm=audio"));
    let (r, cmds) = w.offer("c2", &marked, r#","flags":["loop-protect"]"#);
    assert_eq!(sdp_of(&r), marked);
    assert!(cmds.is_empty());
}

#[test]
fn load_limit() {
    let config = SessionsConfig {
        max_calls: 1,
        ..SessionsConfig::default()
    };
    let mut w = World::with(config, 30000, 39999);
    w.offer("c1", ALICE, "");
    let (r, _) = w.offer("c2", ALICE, r#","supports":["load limit"]"#);
    assert_eq!(r.to_bencode(), b"d6:result10:load limite");
    let (r, _) = w.offer("c2", ALICE, "");
    assert_eq!(result(&r), "error");
    // Existing calls keep working.
    let (r, _) = w.offer("c1", ALICE, "");
    assert_eq!(result(&r), "ok");
}

#[test]
fn engine_ended_calls_and_statistics() {
    let mut w = World::new();
    w.offer("c1", ALICE, "");
    w.answer("c1", BOB, "");
    let cmds =
        w.ng.sessions
            .end_call("c1", w.wall, EndReason::Timeout, &mut w.ports);
    assert_eq!(cmds.len(), 1);
    assert_eq!(w.ports.in_use(), 0);
    assert!(
        w.ng.sessions
            .end_call("c1", w.wall, EndReason::Timeout, &mut w.ports)
            .is_empty()
    );
    let (r, _) = w.req(r#"{"command":"statistics"}"#);
    let total = r
        .get("statistics")
        .and_then(|s| s.get("totalstatistics"))
        .unwrap();
    assert_eq!(total.get("managedsessions"), Some(&Value::Int(1)));
    assert_eq!(total.get("timeoutsessions"), Some(&Value::Int(1)));
    let control = r
        .get("statistics")
        .and_then(|s| s.get("controlstatistics"))
        .unwrap();
    assert_eq!(control.get("totaloffercount"), Some(&Value::Int(1)));
}

#[test]
fn query_uses_stats_source() {
    let mut w = World::new();
    w.offer("c1", ALICE, "");
    w.answer("c1", BOB, "");
    let mut snap = StatsSnapshot::default();
    snap.streams.insert(
        ("c1".to_owned(), sa("127.0.0.1:30000")),
        StreamStats {
            packets: 50,
            bytes: 8600,
            errors: 1,
            last_packet: Some(UnixMicros(1_700_000_100_000_000)),
            learned: Some(sa("127.0.0.1:40000")),
        },
    );
    let out =
        w.ng.handle_datagram(
            w.now,
            w.wall,
            br#"q1 {"command":"query","call-id":"c1"}"#,
            &mut w.ports,
            &snap,
        )
        .unwrap();
    let v = parse_json(&out.reply[3..], Limits::NG).unwrap();
    let rtp = v.get("totals").and_then(|t| t.get("RTP")).unwrap();
    assert_eq!(rtp.get("packets"), Some(&Value::Int(50)));
    assert_eq!(rtp.get("errors"), Some(&Value::Int(1)));
    let stream = v
        .get("tags")
        .and_then(|t| t.get("ft"))
        .and_then(|t| t.get("medias"))
        .and_then(|m| m.as_list())
        .and_then(|m| m[0].get("streams"))
        .and_then(|s| s.as_list())
        .map(|s| s[0].clone())
        .unwrap();
    assert_eq!(stream.get("last packet"), Some(&Value::Int(1_700_000_100)));
    let flags = stream.get("flags").unwrap();
    assert!(flags.as_list().unwrap().contains(&Value::from("confirmed")));
}

#[test]
fn answer_errors() {
    let mut w = World::new();
    let (r, _) = w.answer("nope", BOB, "");
    assert_eq!(reason(&r), "Unknown call-id");
    w.offer("c1", ALICE, "");
    let (r, _) = w.req(&format!(
        r#"{{"command":"answer","call-id":"c1","from-tag":"ft","sdp":{}}}"#,
        serde_json::to_string(BOB).unwrap()
    ));
    assert_eq!(reason(&r), "No to-tag in message");
    let (r, _) = w.answer("c1", "garbage", "");
    assert_eq!(reason(&r), "Failed to parse SDP");
    let (r, _) = w.answer("c1", "", "");
    assert_eq!(reason(&r), "No SDP body in message");
    let (r, _) = w.req(&format!(
        r#"{{"command":"answer","call-id":"c1","from-tag":"zz","to-tag":"tt","sdp":{}}}"#,
        serde_json::to_string(BOB).unwrap()
    ));
    assert_eq!(reason(&r), "Unknown call-id");
}

#[test]
fn ipv6_media_address_and_family() {
    let mut w = World::new();
    w.ports = RangePorts::new(
        Some(IpAddr::from([127, 0, 0, 1])),
        Some("::1".parse().unwrap()),
        30000,
        39999,
    );
    let (r, cmds) = w.offer(
        "c1",
        ALICE,
        r#","address-family":"IP6","replace":["origin"]"#,
    );
    let sdp = sdp_of(&r);
    assert!(sdp.contains("o=alice 1 1 IN IP6 ::1\r\n"), "{sdp}");
    assert!(sdp.contains("c=IN IP6 ::1\r\n"));
    let rel = relays(&cmds)[0];
    assert!(rel.sides[0].local.address.is_ipv4());
    assert!(rel.sides[1].local.address.is_ipv6());
    let v6 = "v=0\r\no=bob 1 1 IN IP6 2001:db8::2\r\ns=-\r\nc=IN IP6 2001:db8::2\r\nt=0 0\r\nm=audio 50000 RTP/AVP 0\r\n";
    let (r, cmds) = w.answer("c1", v6, "");
    assert!(sdp_of(&r).contains("c=IN IP4 127.0.0.1\r\n"));
    let rel = relays(&cmds)[0];
    assert_eq!(rel.sides[1].remote.unwrap().rtp, sa("[2001:db8::2]:50000"));
}

#[test]
fn opaque_media_is_relayed_untouched() {
    let mut w = World::new();
    let t38 = "v=0\r\no=a 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=image 40000 udptl t38\r\na=T38FaxVersion:0\r\na=T38FaxRateManagement:transferredTCF\r\n";
    let (r, cmds) = w.offer("c1", t38, "");
    assert_eq!(
        sdp_of(&r),
        "v=0\r\no=a 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=image 30002 udptl t38\r\na=T38FaxVersion:0\r\na=T38FaxRateManagement:transferredTCF\r\na=sendrecv\r\n"
    );
    assert_eq!(relays(&cmds)[0].kind, RelayKind::Opaque);
}
