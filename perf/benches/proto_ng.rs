//! Control-path costs of NG: bencode decoding of Kamailio's offer, SDP parse + rewrite, and a
//! whole offer (framing, request parsing, call state, ports, reply encoding) through
//! `NgHandler`.
#![allow(missing_docs)]

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{Criterion, criterion_group, criterion_main};
use switchboard_proto::bencode;
use switchboard_proto::ng::{self, NgRequest, RetransmitCache, RetransmitCacheConfig};
use switchboard_proto::sdp::{self, MediaRewrite, RewriteParams, RtcpAttr, SessionDescription};
use switchboard_proto::session::{
    EndReason, NgHandler, NoStats, RangePorts, Sessions, SessionsConfig, UnixMicros,
};
use switchboard_proto::time::Micros;

const SIPP_SDP: &str = "v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6004 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

const RICH_SDP: &str = "v=0\r\no=alice 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0 8 9 96 101\r\na=rtpmap:96 opus/48000/2\r\na=fmtp:96 useinbandfec=1\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n";

fn kamailio_offer(call_id: &str, cookie: &str) -> Vec<u8> {
    let mut m = format!("{cookie} d8:supportsl10:load limite3:sdp129:").into_bytes();
    m.extend_from_slice(SIPP_SDP.as_bytes());
    m.extend_from_slice(
        b"3:ICE6:remove11:record-call2:no7:replacel6:origin18:session-connectione7:call-id",
    );
    m.extend_from_slice(format!("{}:{call_id}", call_id.len()).as_bytes());
    m.extend_from_slice(
        b"13:received-froml3:IP49:127.0.0.1e8:from-tag15:12488SIPpTag0017:command5:offere",
    );
    m
}

fn bencode_benches(c: &mut Criterion) {
    let msg = kamailio_offer("1-12488@127.0.0.1", "0_12433_2");
    let body = &msg[msg.iter().position(|&b| b == b' ').unwrap_or(0) + 1..];
    let mut g = c.benchmark_group("ng");
    g.bench_function("bencode_decode_kamailio_offer", |b| {
        b.iter(|| bencode::decode(black_box(body)));
    });
    g.bench_function("parse_datagram_and_request", |b| {
        b.iter(|| {
            let m = ng::parse_datagram(black_box(&msg));
            m.map(|m| NgRequest::from_dict(&m.dict))
        });
    });
    g.finish();
}

fn sdp_benches(c: &mut Criterion) {
    let addr = IpAddr::from([127, 0, 0, 1]);
    let mut g = c.benchmark_group("sdp");
    g.bench_function("parse_rewrite_rich_offer", |b| {
        b.iter(|| {
            let Ok(sdp) = SessionDescription::parse(black_box(RICH_SDP.as_bytes())) else {
                return String::new();
            };
            let Ok(infos) = sdp.media_info() else {
                return String::new();
            };
            let media = infos
                .iter()
                .map(|m| MediaRewrite {
                    port: 30002,
                    address: addr,
                    protocol: None,
                    codecs: Some(m.codecs.clone()),
                    direction: m.direction,
                    rtcp: RtcpAttr::Port(30003),
                    rtcp_mux: false,
                    ptime: m.ptime,
                })
                .collect();
            let params = RewriteParams {
                address: addr,
                media,
                replace_origin: true,
                sdp_version: None,
                loop_protect: None,
                zero_address: false,
                strip_extmap: false,
            };
            sdp::rewrite(&sdp, &params)
        });
    });
    g.finish();
}

fn offer_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("ng");
    // Each iteration: a new call's offer (new cookie, new call-id), then the call is ended so
    // state and ports stay flat.
    let mut handler = NgHandler::new(
        Sessions::new(SessionsConfig::default()),
        RetransmitCache::new(RetransmitCacheConfig {
            max_entries: 1024,
            ..RetransmitCacheConfig::default()
        }),
    );
    let mut ports = RangePorts::new(Some(IpAddr::from([127, 0, 0, 1])), None, 30000, 39999);
    let mut n: u64 = 0;
    let msgs: Vec<(String, Vec<u8>)> = (0..4096)
        .map(|i| {
            let id = format!("call-{i:06}@127.0.0.1");
            let m = kamailio_offer(&id, &format!("c{i}"));
            (id, m)
        })
        .collect();
    g.bench_function("offer_kamailio_full", |b| {
        b.iter(|| {
            let (id, msg) = &msgs[(n % 4096) as usize];
            n += 1;
            let now = Micros(n * 100_000_000);
            let wall = UnixMicros(1_700_000_000_000_000 + n);
            let out = handler.handle_datagram(now, wall, black_box(msg), &mut ports, &NoStats);
            let _ = handler
                .sessions
                .end_call(id, wall, EndReason::Forced, &mut ports);
            out
        });
    });
    g.finish();
}

criterion_group!(benches, bencode_benches, sdp_benches, offer_benches);
criterion_main!(benches);
