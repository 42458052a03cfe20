//! Hostile input on the NG path: random bytes, truncated and deeply nested bencode, huge
//! strings, wrong types for every key. The handler never panics, every message with a cookie
//! gets a decodable reply (or is dropped when it has none), and no port leaks.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;

use proptest::prelude::*;
use switchboard_proto::bencode::{self, Limits, Value};
use switchboard_proto::ng::{self, RetransmitCache, RetransmitCacheConfig};
use switchboard_proto::session::{
    EndReason, NgHandler, NoStats, RangePorts, Sessions, SessionsConfig, UnixMicros,
};
use switchboard_proto::time::Micros;

const SDP: &str = "v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6004 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

fn handler() -> (NgHandler, RangePorts) {
    // A tiny cache so that the random cookies do not hide commands behind cached replies.
    let cache = RetransmitCache::new(RetransmitCacheConfig {
        max_entries: 1,
        ..RetransmitCacheConfig::default()
    });
    (
        NgHandler::new(Sessions::new(SessionsConfig::default()), cache),
        RangePorts::new(Some(IpAddr::from([127, 0, 0, 1])), None, 30000, 30099),
    )
}

/// Sends `data`; checks the reply is `cookie SP dict` and returns the dict.
fn send(h: &mut NgHandler, ports: &mut RangePorts, i: u64, data: &[u8]) -> Option<Value> {
    let out = h.handle_datagram(
        Micros::from_millis(i),
        UnixMicros(1_700_000_000_000_000 + i),
        data,
        ports,
        &NoStats,
    )?;
    let sp = out.reply.iter().position(|&b| b == b' ').expect("cookie");
    assert_eq!(&out.reply[..sp], &data[..sp], "cookie echoed");
    let body = &out.reply[sp + 1..];
    let v = if body.first() == Some(&b'{') {
        bencode::parse_json(body, Limits::NG).expect("JSON reply")
    } else {
        let (v, n) = bencode::decode(body).expect("bencode reply");
        assert_eq!(n, body.len());
        v
    };
    let result = v.get("result").and_then(Value::as_str).expect("result");
    assert!(matches!(result, "ok" | "error" | "pong" | "load limit"));
    if result == "error" {
        assert!(v.get("error-reason").and_then(Value::as_str).is_some());
    }
    Some(v)
}

/// Ends every call and checks that all ports came back.
fn assert_no_leak(h: &mut NgHandler, ports: &mut RangePorts) {
    let ids: Vec<String> = h.sessions.call_ids().map(str::to_owned).collect();
    for id in ids {
        let _ = h
            .sessions
            .end_call(&id, UnixMicros(0), EndReason::Forced, ports);
    }
    assert_eq!(ports.in_use(), 0, "ports leaked");
}

fn kamailio_offer() -> Vec<u8> {
    let mut m = b"0_12433_2 d8:supportsl10:load limite3:sdp129:".to_vec();
    m.extend_from_slice(SDP.as_bytes());
    m.extend_from_slice(b"3:ICE6:remove11:record-call2:no7:replacel6:origin18:session-connectione7:call-id17:1-12488@127.0.0.113:received-froml3:IP49:127.0.0.1e8:from-tag15:12488SIPpTag0017:command5:offere");
    m
}

#[test]
fn every_truncation_of_a_real_offer() {
    let full = kamailio_offer();
    let (mut h, mut ports) = handler();
    for cut in 0..full.len() {
        let data = &full[..cut];
        let reply = send(&mut h, &mut ports, cut as u64, data);
        let has_cookie = data.iter().position(|&b| b == b' ').is_some_and(|p| p > 0);
        assert_eq!(reply.is_some(), has_cookie, "cut {cut}");
        if let Some(v) = reply {
            assert_eq!(
                v.get("result").and_then(Value::as_str),
                Some("error"),
                "cut {cut}"
            );
        }
    }
    // The truncations were answered under the same cookie: the complete message needs a new
    // one, or it would get the cached error reply.
    let fresh = [b"fresh".as_slice(), &full[9..]].concat();
    assert_eq!(
        send(&mut h, &mut ports, 9999, &fresh)
            .unwrap()
            .get("result")
            .and_then(Value::as_str),
        Some("ok")
    );
    assert_eq!(ports.in_use(), 2);
    assert_no_leak(&mut h, &mut ports);
}

#[test]
fn deep_nesting_huge_lengths_and_odd_integers() {
    let (mut h, mut ports) = handler();
    let mut deep = b"c1 d7:command4:ping1:x".to_vec();
    deep.extend(std::iter::repeat_n(b'l', 100_000));
    deep.extend(std::iter::repeat_n(b'e', 100_000));
    deep.push(b'e');
    let v = send(&mut h, &mut ports, 1, &deep).unwrap();
    assert_eq!(
        v.get("error-reason").and_then(Value::as_str),
        Some("Could not decode bencode dictionary")
    );
    let mut json = b"c2 {\"command\":\"ping\",\"x\":".to_vec();
    json.extend(std::iter::repeat_n(b'[', 100_000));
    json.extend(std::iter::repeat_n(b']', 100_000));
    json.push(b'}');
    let v = send(&mut h, &mut ports, 2, &json).unwrap();
    assert_eq!(
        v.get("error-reason").and_then(Value::as_str),
        Some("Failed to parse JSON document")
    );
    for (i, m) in [
        &b"c3 d7:command4:ping1:x99999999999999999999:ae"[..],
        b"c4 d7:command4:ping1:x4294967296:ae",
        b"c5 d7:command4:ping1:xi-0ee",
        b"c6 d7:command4:ping1:xi007ee",
        b"c7 d7:command4:ping1:xi99999999999999999999999ee",
        b"c8 d7:command4:ping1:x-1:ae",
        b"c9 d",
        b"c10 de",
        b"c11 {}",
        b"c12 {\"command\":\"\\u0000\"}",
        b"c13 \xff\xfe",
        b"\xff \xff",
    ]
    .iter()
    .enumerate()
    {
        let v = send(&mut h, &mut ports, 10 + i as u64, m).unwrap();
        assert_eq!(
            v.get("result").and_then(Value::as_str),
            Some("error"),
            "{m:?}"
        );
    }
    // A huge but well-formed string is fine as long as it fits the datagram.
    let mut big = b"c20 d7:command4:ping1:x60000:".to_vec();
    big.extend(std::iter::repeat_n(b'a', 60_000));
    big.push(b'e');
    let v = send(&mut h, &mut ports, 20, &big).unwrap();
    assert_eq!(v.get("result").and_then(Value::as_str), Some("pong"));
}

/// Values of every wrong type for every key of every command.
#[test]
fn wrong_types_for_every_key() {
    let keys = [
        "call-id",
        "from-tag",
        "to-tag",
        "via-branch",
        "sdp",
        "flags",
        "replace",
        "ICE",
        "rtcp-mux",
        "transport protocol",
        "direction",
        "received-from",
        "media address",
        "address family",
        "label",
        "record call",
        "metadata",
        "codec",
        "ptime",
        "supports",
        "delete delay",
        "limit",
        "from-tags",
        "DTLS",
        "SDES",
        "T.38",
        "rtpp-flags",
        "all",
    ];
    let wrong = [
        Value::Int(-1),
        Value::Int(i64::MAX),
        Value::Bytes(Vec::new()),
        Value::Bytes(vec![0xff, 0xfe]),
        Value::Bytes(vec![b'x'; 5000]),
        Value::List(vec![]),
        Value::List(vec![Value::Int(1), Value::dict()]),
        Value::dict(),
        Value::dict().with("strip", Value::Int(1)),
        Value::dict().with("strip", vec![Value::dict()]),
    ];
    let (mut h, mut ports) = handler();
    let mut i = 0u64;
    for command in [
        "offer",
        "answer",
        "delete",
        "query",
        "list",
        "statistics",
        "ping",
    ] {
        for key in keys {
            for bad in &wrong {
                let mut d = Value::dict()
                    .with("command", command)
                    .with("call-id", "c1")
                    .with("from-tag", "ft")
                    .with("to-tag", "tt")
                    .with("sdp", SDP);
                // The bad value comes first, so it wins over the good one.
                if let Value::Dict(p) = &mut d {
                    p.insert(0, (key.as_bytes().to_vec(), bad.clone()));
                }
                i += 1;
                let mut msg = format!("w{i} ").into_bytes();
                d.encode(&mut msg);
                send(&mut h, &mut ports, i, &msg).unwrap();
                let mut json = format!("j{i} ").into_bytes();
                d.encode_json(&mut json);
                send(&mut h, &mut ports, i, &json).unwrap();
            }
        }
    }
    assert_no_leak(&mut h, &mut ports);
}

#[test]
fn too_many_media_sections_and_legs() {
    let (mut h, mut ports) = handler();
    let mut sdp =
        String::from("v=0\r\no=a 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n");
    for i in 0..100 {
        sdp.push_str(&format!("m=audio {} RTP/AVP 0\r\n", 40000 + 2 * i));
    }
    let mut msg = b"m1 ".to_vec();
    Value::dict()
        .with("command", "offer")
        .with("call-id", "c1")
        .with("from-tag", "ft")
        .with("sdp", sdp.as_str())
        .encode(&mut msg);
    let v = send(&mut h, &mut ports, 1, &msg).unwrap();
    assert!(
        v.get("error-reason")
            .and_then(Value::as_str)
            .unwrap()
            .contains("media sections")
    );
    assert_eq!(ports.in_use(), 0);
    // Many from-tags on one call stop at the leg limit; the port range (50 pairs) may end first.
    for i in 0..40 {
        let mut msg = format!("t{i} ").into_bytes();
        Value::dict()
            .with("command", "offer")
            .with("call-id", "c2")
            .with("from-tag", format!("f{i}"))
            .with("sdp", SDP)
            .encode(&mut msg);
        send(&mut h, &mut ports, 100 + i, &msg).unwrap();
    }
    assert!(ports.in_use() <= 16);
    assert_no_leak(&mut h, &mut ports);
}

#[test]
fn tcp_framer_on_hostile_streams() {
    let mut f = ng::TcpFramer::new(4096);
    f.push(&kamailio_offer());
    f.push(b"\r\nc2 d7:command4:pinge");
    assert!(f.next_message().unwrap().is_ok());
    assert_eq!(f.next_message().unwrap().unwrap(), b"c2 d7:command4:pinge");
    let mut f = ng::TcpFramer::new(4096);
    let mut deep = b"c1 ".to_vec();
    deep.extend(std::iter::repeat_n(b'd', 10_000));
    f.push(&deep);
    assert!(matches!(f.next_message(), Some(Err(_))));
    let mut f = ng::TcpFramer::new(4096);
    f.push(&[b'x'; 5000]);
    assert!(matches!(
        f.next_message(),
        Some(Err(ng::NgFramingError::TooLarge { .. }))
    ));
}

fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(Value::Int),
        prop::collection::vec(any::<u8>(), 0..12).prop_map(Value::Bytes),
        prop::sample::select(vec![
            "offer",
            "answer",
            "delete",
            "query",
            "list",
            "ping",
            "statistics",
            "c1",
            "ft",
            "tt",
            "all",
            "remove",
            "IP4",
            "IP6",
            "PCMU",
            "yes",
            "no",
            "strict source",
            "fatal",
            "0",
            "-1",
            SDP,
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::List),
            prop::collection::vec(
                (
                    prop::sample::select(vec![
                        "command",
                        "call-id",
                        "from-tag",
                        "to-tag",
                        "sdp",
                        "flags",
                        "replace",
                        "codec",
                        "strip",
                        "offer",
                        "mask",
                        "ICE",
                        "rtcp-mux",
                        "limit",
                        "delete delay",
                        "received-from",
                        "direction",
                        "ptime",
                        "label",
                    ]),
                    inner
                ),
                0..6
            )
            .prop_map(|kv| Value::Dict(
                kv.into_iter()
                    .map(|(k, v)| (k.as_bytes().to_vec(), v))
                    .collect()
            )),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..512)) {
        let (mut h, mut ports) = handler();
        let _ = send(&mut h, &mut ports, 1, &data);
        let mut prefixed = b"r1 d".to_vec();
        prefixed.extend_from_slice(&data);
        let _ = send(&mut h, &mut ports, 2, &prefixed);
        assert_no_leak(&mut h, &mut ports);
    }

    #[test]
    fn random_requests_never_panic_nor_leak(
        msgs in prop::collection::vec((arb_value(), any::<bool>()), 1..8)
    ) {
        let (mut h, mut ports) = handler();
        for (i, (v, json)) in msgs.iter().enumerate() {
            let dict = match v {
                Value::Dict(_) => v.clone(),
                other => Value::dict().with("command", "offer").with("x", other.clone()),
            };
            let mut msg = format!("p{i} ").into_bytes();
            if *json {
                dict.encode_json(&mut msg);
            } else {
                dict.encode(&mut msg);
            }
            send(&mut h, &mut ports, i as u64, &msg).unwrap();
        }
        let _ = h.handle_timeout(Micros::from_secs(3600), UnixMicros(0), &mut ports);
        assert_no_leak(&mut h, &mut ports);
    }
}
