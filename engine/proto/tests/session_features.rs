//! Transcoding, subscriptions, `connect` and the media commands at the session level: the SDP
//! each side sees, the media commands for the engine, and hostile requests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use switchboard_proto::bencode::{Limits, Value, parse_json};
use switchboard_proto::ng::RetransmitCache;
use switchboard_proto::session::{
    MediaCommand, NgHandler, NoStats, PromptSource, RangePorts, RelaySpec, Sessions,
    SessionsConfig, SideCodecs, UnixMicros,
};
use switchboard_proto::time::Micros;

const PCMU: &str = "v=0\r\no=alice 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n";

fn bob(formats: &str, attrs: &str) -> String {
    format!(
        "v=0\r\no=bob 2 2 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\nm=audio 50000 RTP/AVP {formats}\r\n{attrs}"
    )
}

struct World {
    ng: NgHandler,
    ports: RangePorts,
    now: Micros,
    wall: UnixMicros,
    cookie: u64,
}

impl World {
    fn new() -> Self {
        Self::with(SessionsConfig::default())
    }

    fn with(config: SessionsConfig) -> Self {
        World {
            ng: NgHandler::new(Sessions::new(config), RetransmitCache::default()),
            ports: RangePorts::new(Some(IpAddr::from([127, 0, 0, 1])), None, 30000, 39999),
            now: Micros::from_secs(100),
            wall: UnixMicros(1_700_000_000_000_000),
            cookie: 0,
        }
    }

    fn req(&mut self, json: &str) -> (Value, Vec<MediaCommand>) {
        self.cookie += 1;
        self.now = self.now + Duration::from_millis(1);
        self.wall = UnixMicros(self.wall.0 + 1000);
        let data = format!("c{} {json}", self.cookie);
        let out = self
            .ng
            .handle_datagram(
                self.now,
                self.wall,
                data.as_bytes(),
                &mut self.ports,
                &NoStats,
            )
            .expect("a reply");
        let sp = out.reply.iter().position(|&b| b == b' ').unwrap();
        (
            parse_json(&out.reply[sp + 1..], Limits::NG).unwrap(),
            out.commands,
        )
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

    /// A call `c1` between `ft` (PCMU offer) and `tt` (PCMU answer), relayed.
    fn call(&mut self) {
        let (r, _) = self.offer("c1", PCMU, "");
        assert_eq!(result(&r), "ok");
        let (r, _) = self.answer(
            "c1",
            &bob(
                "0 101",
                "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n",
            ),
            "",
        );
        assert_eq!(result(&r), "ok");
    }
}

fn result(v: &Value) -> &str {
    v.get("result").and_then(Value::as_str).unwrap_or("")
}

fn reason(v: &Value) -> &str {
    v.get("error-reason").and_then(Value::as_str).unwrap_or("")
}

fn warning(v: &Value) -> &str {
    v.get("warning").and_then(Value::as_str).unwrap_or("")
}

fn sdp_of(v: &Value) -> String {
    v.get("sdp")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no sdp in {v:?}"))
        .to_owned()
}

fn m_line(sdp: &str) -> String {
    sdp.lines()
        .find(|l| l.starts_with("m="))
        .unwrap()
        .split(' ')
        .skip(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn relay(cmds: &[MediaCommand]) -> &RelaySpec {
    cmds.iter()
        .find_map(|c| match c {
            MediaCommand::SetRelay(s) => Some(&**s),
            _ => None,
        })
        .expect("a SetRelay")
}

fn names(c: &[switchboard_proto::sdp::Codec]) -> Vec<String> {
    c.iter().map(|c| c.name.clone()).collect()
}

#[test]
fn pcmu_to_pcma_transcodes_with_side_codecs() {
    let mut w = World::new();
    let (r, _) = w.offer(
        "c1",
        PCMU,
        r#","codec":{"mask":["PCMU"],"transcode":["PCMA"]}"#,
    );
    // NG.md: the answerer sees only the resulting codecs.
    let sdp = sdp_of(&r);
    assert_eq!(m_line(&sdp), "8 101");
    assert!(sdp.contains("a=rtpmap:8 PCMA/8000\r\n"));
    assert!(!sdp.contains("PCMU"));
    let (r, cmds) = w.answer(
        "c1",
        &bob(
            "8 101",
            "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:30\r\n",
        ),
        "",
    );
    let sdp = sdp_of(&r);
    assert_eq!(m_line(&sdp), "0 101");
    assert!(sdp.contains("a=ptime:20\r\n"));
    let spec = relay(&cmds);
    let t = spec.transcode.as_deref().expect("transcoding");
    assert_eq!(spec.sides[0].tag, "ft");
    let (a, b): (&SideCodecs, &SideCodecs) = (&t[0], &t[1]);
    assert_eq!(names(&a.recv), ["PCMU"]);
    assert_eq!((a.send.name.as_str(), a.send.payload_type), ("PCMU", 0));
    assert_eq!(
        (a.recv_events, a.send_events, a.ptime_ms),
        (Some(101), Some(101), Some(20))
    );
    assert_eq!(names(&b.recv), ["PCMA"]);
    assert_eq!((b.send.name.as_str(), b.send.payload_type), ("PCMA", 8));
    assert_eq!(
        (b.recv_events, b.send_events, b.ptime_ms),
        (Some(101), Some(101), Some(30))
    );
}

#[test]
fn shared_codec_relays_and_always_transcode_forces() {
    let mut w = World::new();
    w.offer("c1", PCMU, r#","codec":{"transcode":["PCMA","opus"]}"#);
    let (_, cmds) = w.answer(
        "c1",
        &bob("0 101", "a=rtpmap:101 telephone-event/8000\r\n"),
        "",
    );
    assert!(relay(&cmds).transcode.is_none());

    w.offer("c2", PCMU, r#","flags":["always transcode"],"ptime":30"#);
    let (r, cmds) = w.answer(
        "c2",
        &bob("0 101", "a=rtpmap:101 telephone-event/8000\r\n"),
        "",
    );
    assert_eq!(m_line(&sdp_of(&r)), "0 101");
    let t = relay(&cmds).transcode.as_deref().expect("forced");
    assert_eq!(t[0].send, t[1].send.clone());
    assert_eq!(
        t[1].ptime_ms,
        Some(30),
        "the offer's ptime is for the answerer"
    );
}

#[test]
fn opus_and_g722_answers() {
    let mut w = World::new();
    let (r, _) = w.offer("c1", PCMU, r#","codec":{"transcode":["opus"]}"#);
    assert_eq!(m_line(&sdp_of(&r)), "0 96 97 101");
    assert!(sdp_of(&r).contains("a=rtpmap:97 telephone-event/48000\r\na=fmtp:97 0-15\r\n"));
    let (_, cmds) = w.answer(
        "c1",
        &bob(
            "96 97",
            "a=rtpmap:96 opus/48000/2\r\na=rtpmap:97 telephone-event/48000\r\n",
        ),
        "",
    );
    let t = relay(&cmds).transcode.as_deref().expect("transcoding");
    assert_eq!(
        (t[1].send.name.as_str(), t[1].send.clock_rate),
        ("opus", 48000)
    );
    assert_eq!(t[1].send_events, Some(97));
    assert_eq!(t[0].send_events, Some(101));

    let g722 = PCMU.replace("RTP/AVP 0 101", "RTP/AVP 9");
    let (r, _) = w.offer("c2", &g722, r#","codec":{"transcode":["PCMU"]}"#);
    assert_eq!(m_line(&sdp_of(&r)), "9 0");
    let (r, cmds) = w.answer("c2", &bob("0", ""), "");
    assert_eq!(m_line(&sdp_of(&r)), "9");
    let t = relay(&cmds).transcode.as_deref().expect("transcoding");
    assert_eq!(t[0].send.name, "G722");
    assert_eq!(t[1].send.name, "PCMU");
    assert_eq!(t[0].send_events, None, "no telephone-event on either side");
}

#[test]
fn telephone_event_can_be_added_for_a_side_without_it() {
    let mut w = World::new();
    let plain = PCMU.replace("RTP/AVP 0 101", "RTP/AVP 0").replace(
        "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n",
        "",
    );
    let (r, _) = w.offer(
        "c1",
        &plain,
        r#","codec":{"transcode":["telephone-event"]}"#,
    );
    assert_eq!(m_line(&sdp_of(&r)), "0 96");
    let (r, cmds) = w.answer(
        "c1",
        &bob("0 96", "a=rtpmap:96 telephone-event/8000\r\n"),
        "",
    );
    assert_eq!(m_line(&sdp_of(&r)), "0");
    let t = relay(&cmds).transcode.as_deref().expect("DTMF conversion");
    assert_eq!(t[0].send_events, None, "the offerer gets in-band tones");
    assert_eq!(t[1].recv_events, Some(96));
}

#[test]
fn unknown_and_huge_codec_lists_are_bounded() {
    let mut w = World::new();
    let (r, _) = w.offer(
        "c1",
        PCMU,
        r#","codec":{"transcode":["foo","G729","PCMA/44100","opus/48000/2/x","PCMA"]}"#,
    );
    assert_eq!(result(&r), "ok");
    assert_eq!(
        warning(&r),
        "Unsupported codecs for transcoding, ignored: foo, G729, PCMA/44100, opus/48000/2/x"
    );
    assert_eq!(m_line(&sdp_of(&r)), "0 8 101");
    let many: Vec<String> = (0..5000).map(|i| format!("\"x{i}\"")).collect();
    let (r, _) = w.offer(
        "c2",
        PCMU,
        &format!(
            r#","codec":{{"transcode":[{}],"strip":[{}]}}"#,
            many.join(","),
            many.join(",")
        ),
    );
    assert_eq!(result(&r), "ok");
    assert!(warning(&r).len() < 200, "{}", warning(&r));
    assert_eq!(m_line(&sdp_of(&r)), "0 101");
    // Every dynamic payload type taken: added codecs that need one are skipped.
    let pts: Vec<String> = (96..=127).map(|p| p.to_string()).collect();
    let full = PCMU.replace("RTP/AVP 0 101", &format!("RTP/AVP 0 {}", pts.join(" ")));
    let (r, _) = w.offer("c3", &full, r#","codec":{"transcode":["opus","PCMA"]}"#);
    assert_eq!(result(&r), "ok");
    assert!(warning(&r).contains("opus (no free payload type)"), "{r:?}");
    assert!(m_line(&sdp_of(&r)).starts_with("0 8 96"));
}

fn subscribe(
    cmds: &[MediaCommand],
) -> (
    &str,
    &switchboard_proto::session::StreamSide,
    &[String],
    &SideCodecs,
) {
    match cmds {
        [
            MediaCommand::Subscribe {
                call_id,
                subscriber,
                sources,
                codecs,
            },
        ] => (call_id, subscriber, sources, codecs),
        other => panic!("{other:?}"),
    }
}

#[test]
fn subscribe_answer_and_unsubscribe() {
    let mut w = World::new();
    w.call();
    let before = w.ports.in_use();
    let (r, cmds) = w.req(r#"{"command":"subscribe request","call-id":"c1","from-tag":"ft"}"#);
    assert_eq!(result(&r), "ok", "{r:?}");
    let to_tag = r.get("to-tag").and_then(Value::as_str).unwrap().to_owned();
    assert_eq!(to_tag.len(), 64);
    assert_eq!(r.get("from-tag").and_then(Value::as_str), Some("ft"));
    let sdp = sdp_of(&r);
    assert!(sdp.contains("a=sendonly\r\n"), "{sdp}");
    assert_eq!(m_line(&sdp), "0 101");
    let (call_id, sub, sources, codecs) = subscribe(&cmds);
    assert_eq!(call_id, "c1");
    assert_eq!(sub.tag, to_tag);
    assert_eq!(sub.remote, None);
    assert_eq!(sources, ["ft".to_owned()]);
    assert_eq!(codecs.send.name, "PCMU");
    assert_eq!(codecs.send_events, Some(101));
    assert!(sdp.contains(&format!("m=audio {} ", sub.local.rtp_port)));
    assert_eq!(w.ports.in_use(), before + 1);

    let answer = bob("0", "a=recvonly\r\n").replace("50000", "60000");
    let (r, cmds) = w.req(&format!(
        r#"{{"command":"subscribe answer","call-id":"c1","to-tag":"{to_tag}","sdp":{}}}"#,
        serde_json::to_string(&answer).unwrap()
    ));
    assert_eq!(result(&r), "ok", "{r:?}");
    match &cmds[..] {
        [
            MediaCommand::SubscribeAnswer {
                subscriber, codecs, ..
            },
        ] => {
            let remote = subscriber.remote.unwrap();
            assert_eq!(remote.rtp, SocketAddr::from(([127, 0, 0, 2], 60000)));
            assert_eq!(codecs.send.name, "PCMU");
            assert_eq!(codecs.send_events, None);
        }
        other => panic!("{other:?}"),
    }
    // The subscriber shows in query, with the pub/sub relation on both legs.
    let (q, _) = w.req(r#"{"command":"query","call-id":"c1"}"#);
    let tags = q.get("tags").unwrap();
    let subs = tags.get("ft").unwrap().get("subscribers").unwrap();
    assert_eq!(subs.as_list().unwrap().len(), 2);
    assert!(tags.get(&to_tag).is_some());
    // list still counts calls, not legs.
    let (l, _) = w.req(r#"{"command":"list"}"#);
    assert_eq!(l.get("calls").unwrap().as_list().unwrap().len(), 1);

    let unsub = format!(r#"{{"command":"unsubscribe","call-id":"c1","to-tag":"{to_tag}"}}"#);
    let (r, cmds) = w.req(&unsub);
    assert_eq!(result(&r), "ok");
    assert!(
        matches!(&cmds[..], [MediaCommand::Unsubscribe { tag, pairs, .. }] if *tag == to_tag && pairs.len() == 1)
    );
    assert_eq!(w.ports.in_use(), before);
    // Twice: ok, nothing to do.
    let (r, cmds) = w.req(&unsub);
    assert_eq!(result(&r), "ok");
    assert!(cmds.is_empty());
    let (q, _) = w.req(r#"{"command":"query","call-id":"c1"}"#);
    assert!(q.get("tags").unwrap().get(&to_tag).is_none());
    // A subscription's tag is not a dialogue party.
    w.req(r#"{"command":"subscribe request","call-id":"c1","from-tag":"tt","to-tag":"s2"}"#);
    let (r, cmds) = w.req(&format!(
        r#"{{"command":"offer","call-id":"c1","from-tag":"s2","sdp":{}}}"#,
        serde_json::to_string(PCMU).unwrap()
    ));
    assert_eq!(result(&r), "error");
    assert!(cmds.is_empty());
    assert_eq!(w.ports.in_use(), before + 1);
}

#[test]
fn subscribe_several_and_errors() {
    let mut w = World::new();
    w.call();
    let (r, cmds) =
        w.req(r#"{"command":"subscribe request","call-id":"c1","flags":["all"],"to-tag":"mon"}"#);
    assert_eq!(result(&r), "ok", "{r:?}");
    assert!(r.get("from-tag").is_none());
    let sdp = sdp_of(&r);
    assert_eq!(sdp.matches("m=audio").count(), 1, "one mixed stream: {sdp}");
    assert!(sdp.contains("s=switchboard\r\n"));
    let (_, _, sources, _) = subscribe(&cmds);
    assert_eq!(sources, ["ft".to_owned(), "tt".to_owned()]);

    for (req, err) in [
        (
            r#"{"command":"subscribe request","call-id":"nope","from-tag":"ft"}"#,
            "Unknown call-ID",
        ),
        (
            r#"{"command":"subscribe request","call-id":"c1","from-tag":"zz"}"#,
            "From-tag given, but no such tag exists",
        ),
        (
            r#"{"command":"subscribe request","call-id":"c1","from-tags":["ft","zz"]}"#,
            "From-tag given, but no such tag exists",
        ),
        (
            r#"{"command":"subscribe request","call-id":"c1"}"#,
            "No monologues matched",
        ),
        (
            r#"{"command":"subscribe request","call-id":"c1","from-tag":"ft","to-tag":"ft"}"#,
            "Cannot connect a party to itself",
        ),
        (
            r#"{"command":"subscribe request","call-id":"c1","from-tag":"ft","to-tag":"tt"}"#,
            "To-tag already in use",
        ),
        (
            r#"{"command":"subscribe request","call-id":"c1","from-tag":"mon"}"#,
            "From-tag given, but no such tag exists",
        ),
        (
            r#"{"command":"subscribe answer","call-id":"c1","to-tag":"zz","sdp":"v=0"}"#,
            "To-tag not found",
        ),
        (
            r#"{"command":"subscribe answer","call-id":"c1","to-tag":"tt","sdp":"v=0"}"#,
            "Failed to process subscription answer",
        ),
        (
            r#"{"command":"subscribe answer","call-id":"c1","to-tag":"mon"}"#,
            "No SDP body in message",
        ),
        (
            r#"{"command":"unsubscribe","call-id":"c1"}"#,
            "No to-tag in message",
        ),
        (
            r#"{"command":"unsubscribe","call-id":"nope","to-tag":"mon"}"#,
            "Unknown call-ID",
        ),
    ] {
        let (r, cmds) = w.req(req);
        assert_eq!(reason(&r), err, "{req}");
        assert!(cmds.is_empty());
    }
    // An answer with a codec that was not offered needs `allow transcoding`.
    let pcma = bob("8", "");
    let sub_answer = |flags: &str| {
        format!(
            r#"{{"command":"subscribe answer","call-id":"c1","to-tag":"mon","sdp":{}{flags}}}"#,
            serde_json::to_string(&pcma).unwrap()
        )
    };
    let (r, _) = w.req(&sub_answer(""));
    assert_eq!(reason(&r), "Failed to process subscription answer");
    let (r, cmds) = w.req(&sub_answer(r#","flags":["allow transcoding"]"#));
    assert_eq!(result(&r), "ok");
    assert!(
        matches!(&cmds[..], [MediaCommand::SubscribeAnswer { codecs, .. }] if codecs.send.name == "PCMA")
    );
}

#[test]
fn subscriptions_are_bounded_and_released_with_the_call() {
    let mut w = World::with(SessionsConfig {
        max_legs: 4,
        ..SessionsConfig::default()
    });
    w.call();
    let base = w.ports.in_use();
    for i in 0..2 {
        let (r, _) = w.req(&format!(
            r#"{{"command":"subscribe request","call-id":"c1","from-tag":"ft","to-tag":"s{i}"}}"#
        ));
        assert_eq!(result(&r), "ok");
    }
    let (r, cmds) =
        w.req(r#"{"command":"subscribe request","call-id":"c1","from-tag":"ft","to-tag":"s9"}"#);
    assert_eq!(result(&r), "error");
    assert!(cmds.is_empty());
    assert_eq!(w.ports.in_use(), base + 2);
    let (_, cmds) = w.req(r#"{"command":"delete","call-id":"c1","delete delay":0}"#);
    assert!(
        matches!(&cmds[..], [MediaCommand::DeleteCall { pairs, .. }] if pairs.len() == base + 2)
    );
    assert_eq!(w.ports.in_use(), 0);
}

#[test]
fn connect_parties() {
    let mut w = World::new();
    w.call();
    let (r, cmds) = w.req(r#"{"command":"connect","call-id":"c1","from-tag":"ft","to-tag":"tt"}"#);
    assert_eq!(result(&r), "ok");
    assert_eq!(
        cmds,
        [MediaCommand::Connect {
            call_id: "c1".into(),
            from: "ft".into(),
            to: "tt".into(),
            bidirectional: false
        }]
    );
    let (_, cmds) = w.req(
        r#"{"command":"connect","call-id":"c1","from-tag":"tt","to-tag":"ft","flags":["bidirectional"]}"#,
    );
    assert!(matches!(
        &cmds[..],
        [MediaCommand::Connect {
            bidirectional: true,
            ..
        }]
    ));
    for (req, err) in [
        (
            r#"{"command":"connect","call-id":"c1","from-tag":"ft","to-tag":"ft"}"#,
            "Cannot connect a party to itself",
        ),
        (
            r#"{"command":"connect","call-id":"c1","from-tag":"zz","to-tag":"ft"}"#,
            "From-tag given, but no such tag exists",
        ),
        (
            r#"{"command":"connect","call-id":"c1","from-tag":"ft","to-tag":"zz"}"#,
            "To-tag given, but no such tag exists",
        ),
        (
            r#"{"command":"connect","call-id":"c1","from-tag":"ft"}"#,
            "No to-tag in message",
        ),
        (
            r#"{"command":"connect","call-id":"nope","from-tag":"ft","to-tag":"tt"}"#,
            "Unknown call-ID",
        ),
    ] {
        let (r, cmds) = w.req(req);
        assert_eq!(reason(&r), err, "{req}");
        assert!(cmds.is_empty());
    }
}

#[test]
fn play_and_stop_media() {
    let mut w = World::new();
    w.offer("c1", PCMU, r#","label":"customer""#);
    w.answer("c1", &bob("0", ""), "");
    let (r, cmds) = w.req(
        r#"{"command":"play media","call-id":"c1","from-tag":"ft","file":"/p/hello.wav","repeat-times":"3"}"#,
    );
    assert_eq!(result(&r), "ok");
    assert_eq!(
        cmds,
        [MediaCommand::PlayMedia {
            call_id: "c1".into(),
            tags: vec!["ft".into()],
            source: PromptSource::File("/p/hello.wav".into()),
            repeat: 3
        }]
    );
    let (_, cmds) =
        w.req(r#"{"command":"play media","call-id":"c1","label":"customer","blob":"RIFF"}"#);
    assert!(
        matches!(&cmds[..], [MediaCommand::PlayMedia { tags, source: PromptSource::Blob(b), repeat: 1, .. }] if tags == &["ft".to_owned()] && b == b"RIFF")
    );
    let (_, cmds) = w.req(
        r#"{"command":"play media","call-id":"c1","flags":["all"],"file":"/x","repeat-times":-5}"#,
    );
    assert!(
        matches!(&cmds[..], [MediaCommand::PlayMedia { tags, repeat: 1, .. }] if tags.is_empty())
    );
    let (_, cmds) = w.req(r#"{"command":"stop media","call-id":"c1","to-tag":"tt"}"#);
    assert_eq!(
        cmds,
        [MediaCommand::StopMedia {
            call_id: "c1".into(),
            tags: vec!["tt".into()]
        }]
    );
    for (req, err) in [
        (
            r#"{"command":"play media","call-id":"c1","from-tag":"ft"}"#,
            "No media file specified",
        ),
        (
            r#"{"command":"play media","call-id":"c1","from-tag":"ft","file":""}"#,
            "No media file specified",
        ),
        (
            r#"{"command":"play media","call-id":"c1","file":"/x"}"#,
            "No participant party specified",
        ),
        (
            r#"{"command":"play media","call-id":"c1","label":"nobody","file":"/x"}"#,
            "No call participant with given label",
        ),
        (
            r#"{"command":"play media","call-id":"nope","from-tag":"ft","file":"/x"}"#,
            "Unknown call-ID",
        ),
        (
            r#"{"command":"play media","call-id":"c1","from-tag":"ft","blob":["x"]}"#,
            "Invalid value for key \"blob\": expected a byte string",
        ),
    ] {
        let (r, cmds) = w.req(req);
        assert_eq!(reason(&r), err, "{req}");
        assert!(cmds.is_empty());
    }
}

#[test]
fn dtmf_commands() {
    let mut w = World::new();
    w.call();
    let (r, cmds) = w.req(r#"{"command":"play DTMF","call-id":"c1","from-tag":"ft","code":"5"}"#);
    assert_eq!(result(&r), "ok");
    // The from-tag party "generates" the digit (the engine sends it to its peer).
    assert_eq!(
        cmds,
        [MediaCommand::PlayDtmf {
            call_id: "c1".into(),
            tags: vec!["ft".into()],
            digit: '5',
            duration_ms: 100,
            volume_dbm0: -8
        }]
    );
    let (_, cmds) = w.req(
        r##"{"command":"play DTMF","call-id":"c1","to-tag":"tt","digit":"#","duration":"250","volume":12}"##,
    );
    assert!(
        matches!(&cmds[..], [MediaCommand::PlayDtmf { tags, digit: '#', duration_ms: 250, volume_dbm0: -12, .. }] if tags == &["tt".to_owned()])
    );
    let (_, cmds) = w.req(r#"{"command":"play DTMF","call-id":"c1","from-tag":"ft","code":11}"#);
    assert!(matches!(
        &cmds[..],
        [MediaCommand::PlayDtmf { digit: '#', .. }]
    ));
    let (_, cmds) = w.req(r#"{"command":"block DTMF","call-id":"c1","from-tag":"ft"}"#);
    assert_eq!(
        cmds,
        [MediaCommand::BlockDtmf {
            call_id: "c1".into(),
            tags: vec!["ft".into()],
            blocked: true
        }]
    );
    let (_, cmds) = w.req(r#"{"command":"unblock DTMF","call-id":"c1"}"#);
    assert!(
        matches!(&cmds[..], [MediaCommand::BlockDtmf { tags, blocked: false, .. }] if tags.is_empty())
    );
    for (req, err) in [
        (
            r#"{"command":"play DTMF","call-id":"c1","from-tag":"ft"}"#,
            "Out of range 'code' specified",
        ),
        (
            r#"{"command":"play DTMF","call-id":"c1","from-tag":"ft","code":"X"}"#,
            "Out of range 'code' specified",
        ),
        (
            r#"{"command":"play DTMF","call-id":"c1","from-tag":"ft","code":"16"}"#,
            "Out of range 'code' specified",
        ),
        (
            r#"{"command":"play DTMF","call-id":"c1","from-tag":"ft","code":"1","duration":999999}"#,
            "Invalid value for key \"duration\": expected milliseconds in 1..=10000",
        ),
        (
            r#"{"command":"play DTMF","call-id":"c1","code":"1"}"#,
            "No participant party specified",
        ),
        (
            r#"{"command":"play DTMF","call-id":"nope","from-tag":"ft","code":"1"}"#,
            "Unknown call-ID",
        ),
        (
            r#"{"command":"block DTMF","call-id":"c1","from-tag":"zz"}"#,
            "From-tag given, but no such tag exists",
        ),
    ] {
        let (r, cmds) = w.req(req);
        assert_eq!(reason(&r), err, "{req}");
        assert!(cmds.is_empty());
    }
}
