//! Golden tests: replay NG exchanges captured from rtpengine 10.5 (`tests/data/rtpengine/*.json`,
//! written by `tests/data/capture_rtpengine.py`) and compare our replies to rtpengine's after
//! normalising what legitimately differs: timestamps, and local ports (renumbered in order of
//! first appearance, so the offer/answer/query relations between ports are still checked).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;

use serde::Deserialize;
use switchboard_proto::bencode::{self, Limits, Value};
use switchboard_proto::ng::RetransmitCache;
use switchboard_proto::session::{
    NgHandler, NoStats, RangePorts, Sessions, SessionsConfig, UnixMicros,
};
use switchboard_proto::time::Micros;

#[derive(Deserialize)]
struct Fixture {
    description: String,
    exchanges: Vec<Exchange>,
}

#[derive(Deserialize)]
struct Exchange {
    request: String,
    reply: Option<String>,
}

/// Exchanges where we knowingly differ from rtpengine, with the reason.
const DEVIATIONS: &[(&str, usize, &str)] = &[
    (
        "offer_query",
        4,
        "delete with an unknown to-tag: rtpengine answers ok with empty tags, we warn like for an unknown from-tag",
    ),
    (
        "json",
        2,
        "list: rtpengine lists every call of its instance, the replay starts empty",
    ),
];

/// Renumbers (address, port) pairs by order of first appearance.
#[derive(Default)]
struct Ports(HashMap<(String, i64), i64>);

impl Ports {
    fn canon(&mut self, addr: &str, p: i64) -> i64 {
        if p == 0 {
            return 0;
        }
        let n = self.0.len() as i64 + 1;
        *self.0.entry((addr.to_owned(), p)).or_insert(1000 + n)
    }
}

fn connection_addr(line: &str) -> Option<String> {
    line.strip_prefix("c=")
        .and_then(|c| c.split(' ').nth(2))
        .map(str::to_owned)
}

fn canon_sdp(sdp: &str, ports: &mut Ports) -> String {
    let lines: Vec<&str> = sdp.split_inclusive('\n').collect();
    // The connection address in effect for each line (media level overrides session level).
    let mut addr_of = vec![String::new(); lines.len()];
    let mut session_addr = String::new();
    let mut i = 0;
    while i < lines.len() && !lines[i].starts_with("m=") {
        if let Some(a) = connection_addr(lines[i].trim_end()) {
            session_addr = a;
        }
        i += 1;
    }
    while i < lines.len() {
        let start = i;
        i += 1;
        while i < lines.len() && !lines[i].starts_with("m=") {
            i += 1;
        }
        let media_addr = lines[start..i]
            .iter()
            .find_map(|l| connection_addr(l.trim_end()))
            .unwrap_or_else(|| session_addr.clone());
        for a in &mut addr_of[start..i] {
            a.clone_from(&media_addr);
        }
    }
    let mut out = String::new();
    for (line, addr) in lines.iter().zip(&addr_of) {
        let (body, end) = line
            .strip_suffix("\r\n")
            .map(|b| (b, "\r\n"))
            .or_else(|| line.strip_suffix('\n').map(|b| (b, "\n")))
            .unwrap_or((line, ""));
        let rewritten = if let Some(rest) = body.strip_prefix("m=") {
            let mut f: Vec<String> = rest.split(' ').map(str::to_owned).collect();
            if let Some(p) = f.get(1).and_then(|p| p.parse::<i64>().ok()) {
                f[1] = ports.canon(addr, p).to_string();
            }
            format!("m={}", f.join(" "))
        } else if let Some(rest) = body.strip_prefix("a=rtcp:") {
            let (p, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            let a = tail.split(' ').nth(2).map_or(addr.as_str(), |a| a);
            let p = p.parse::<i64>().map(|p| ports.canon(a, p)).unwrap_or(-1);
            if tail.is_empty() {
                format!("a=rtcp:{p}")
            } else {
                format!("a=rtcp:{p} {tail}")
            }
        } else {
            body.to_owned()
        };
        out.push_str(&rewritten);
        out.push_str(end);
    }
    out
}

fn normalise(v: &Value, ports: &mut Ports) -> Value {
    match v {
        Value::Dict(pairs) => {
            let local_addr = v
                .get("local address")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            Value::Dict(
                pairs
                    .iter()
                    .map(|(k, val)| {
                        let key = String::from_utf8_lossy(k);
                        let nv = match (key.as_ref(), val) {
                            ("created" | "created_us" | "last signal" | "last packet", _) => {
                                Value::Int(0)
                            }
                            ("local port", Value::Int(p)) => {
                                Value::Int(ports.canon(&local_addr, *p))
                            }
                            ("sdp", Value::Bytes(b)) => {
                                Value::from(canon_sdp(&String::from_utf8_lossy(b), ports))
                            }
                            ("flags", Value::List(l)) => Value::List(
                                l.iter()
                                    .filter(|f| f.as_str() != Some("ICE controlling"))
                                    .cloned()
                                    .collect(),
                            ),
                            _ => normalise(val, ports),
                        };
                        (k.clone(), nv)
                    })
                    .collect(),
            )
        }
        Value::List(l) => Value::List(l.iter().map(|x| normalise(x, ports)).collect()),
        other => other.clone(),
    }
}

fn split_reply(reply: &[u8]) -> (&[u8], Value) {
    let sp = reply.iter().position(|&b| b == b' ').expect("cookie");
    let body = &reply[sp + 1..];
    let v = if body.first() == Some(&b'{') {
        bencode::parse_json(body, Limits::NG).expect("json reply")
    } else {
        bencode::decode(body).expect("bencode reply").0
    };
    (&reply[..sp], v)
}

/// Dictionary keys, recursively, for comparing reply shapes whose values vary.
fn shape(v: &Value) -> Value {
    match v {
        Value::Dict(p) => Value::Dict(p.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
        _ => Value::Int(0),
    }
}

fn new_handler(name: &str) -> (NgHandler, RangePorts) {
    let handler = NgHandler::new(
        Sessions::new(SessionsConfig::default()),
        RetransmitCache::default(),
    );
    let v4 = Some(IpAddr::from([127, 0, 0, 1]));
    let ports = match name {
        "ipv6" => RangePorts::new(v4, Some("::1".parse().unwrap()), 30000, 39999),
        // The same three pairs rtpengine had (31000-31005).
        "ports_exhausted" => RangePorts::new(v4, None, 30000, 30005),
        _ => RangePorts::new(v4, None, 30000, 39999),
    };
    (handler, ports)
}

fn run_fixture(name: &str) -> usize {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/rtpengine")
        .join(format!("{name}.json"));
    let fixture: Fixture =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("json");
    let (mut handler, mut ports) = new_handler(name);
    let (mut ours_ports, mut theirs_ports) = (Ports::default(), Ports::default());
    let mut compared = 0;
    for (i, ex) in fixture.exchanges.iter().enumerate() {
        let now = Micros::from_millis(1000 + i as u64);
        let wall = UnixMicros(1_795_604_000_000_000 + i as u64 * 1000);
        let ours = handler.handle_datagram(now, wall, ex.request.as_bytes(), &mut ports, &NoStats);
        let deviation = DEVIATIONS
            .iter()
            .find(|(n, idx, _)| *n == name && *idx == i);
        match (&ex.reply, ours) {
            (None, None) => {}
            (Some(theirs), Some(ours)) => {
                if deviation.is_some() {
                    continue;
                }
                let (c1, v1) = split_reply(theirs.as_bytes());
                let (c2, v2) = split_reply(&ours.reply);
                assert_eq!(c1, c2, "{name}[{i}] cookie");
                if name == "statistics" {
                    let s1 = shape(v1.get("statistics").unwrap());
                    let s2 = shape(v2.get("statistics").unwrap());
                    for k in ["currentstatistics", "totalstatistics"] {
                        assert_eq!(s1.get(k), s2.get(k), "{name}[{i}] {k} shape");
                    }
                } else {
                    let n1 = normalise(&v1, &mut theirs_ports);
                    let n2 = normalise(&v2, &mut ours_ports);
                    assert_eq!(
                        n2, n1,
                        "{name}[{i}] ({}) request {:?}",
                        fixture.description, ex.request
                    );
                    // Replies are byte-identical once normalised values are re-encoded.
                    if v1.get("sdp").is_none() && v1.get("tags").is_none() {
                        assert_eq!(
                            String::from_utf8_lossy(&ours.reply),
                            theirs.as_str(),
                            "{name}[{i}] exact bytes"
                        );
                    }
                }
                compared += 1;
            }
            (theirs, ours) => panic!(
                "{name}[{i}]: rtpengine replied {:?}, we replied {:?}",
                theirs.is_some(),
                ours.map(|o| String::from_utf8_lossy(&o.reply).into_owned())
            ),
        }
    }
    assert!(compared > 0);
    compared
}

macro_rules! golden {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run_fixture(stringify!($name));
            }
        )*
    };
}

golden!(
    ping,
    errors,
    kamailio_offer,
    basic_call,
    offer_query,
    delete_delay,
    sdp_shapes,
    flags,
    rtcp_mux,
    codecs,
    ptime_direction,
    reinvite,
    json,
    statistics,
    ipv6,
    ports_exhausted,
    media_kinds,
    transcoding,
    subscribe,
    media_commands,
);

#[test]
fn deviations_are_listed_with_reasons() {
    for (name, idx, why) in DEVIATIONS {
        assert!(!why.is_empty(), "{name}[{idx}]");
    }
}
