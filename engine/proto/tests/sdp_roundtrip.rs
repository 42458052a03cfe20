//! SDP properties: every parseable body writes back byte for byte (line endings included),
//! arbitrary bytes never panic, and the rewrite of a parseable body is itself parseable SDP
//! with the same media sections.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;

use proptest::prelude::*;
use switchboard_proto::sdp::{
    Direction, MediaRewrite, RewriteParams, RtcpAttr, SessionDescription, rewrite,
};

fn arb_line() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][=][ -~]{0,30}",
        Just("c=IN IP4 10.0.0.1".to_owned()),
        Just("c=IN IP6 2001:db8::1".to_owned()),
        Just("c=IN IP4 0.0.0.0".to_owned()),
        "m=(audio|video|image) [0-9]{1,5}(/2)? (RTP/AVP|RTP/AVPF|udptl)( [0-9]{1,3}){0,4}",
        "a=(rtpmap|fmtp|rtcp-fb):[0-9]{1,3} [ -~]{0,20}",
        "a=(sendrecv|sendonly|recvonly|inactive|rtcp-mux|ice-ufrag:x|candidate:1 1 UDP 1 1.2.3.4 5 typ host)",
        "a=rtcp:[0-9]{1,5}( IN IP4 10.0.0.[0-9])?",
        "a=ptime:[0-9]{1,3}",
        "[a-z]=[^\r\n]{0,10}",
    ]
}

fn arb_body() -> impl Strategy<Value = String> {
    (
        prop::collection::vec((arb_line(), 0u8..3), 0..20),
        0u8..3,
        0usize..3,
    )
        .prop_map(|(lines, first_end, blank)| {
            let ending = |e: u8| match e {
                0 => "\r\n",
                1 => "\n",
                _ => "\r\n",
            };
            let mut s = format!("v=0{}", ending(first_end));
            let n = lines.len();
            for (i, (l, e)) in lines.into_iter().enumerate() {
                s.push_str(&l);
                // The last line may lack its line break.
                if !(i + 1 == n && e == 2 && blank == 0) {
                    s.push_str(ending(e));
                }
            }
            for _ in 0..blank {
                s.push_str("\r\n");
            }
            s
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn parse_write_is_identity(body in arb_body()) {
        if let Ok(sdp) = SessionDescription::parse(body.as_bytes()) {
            prop_assert_eq!(sdp.write(), body);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..300)) {
        let mut with_v = b"v=0\r\n".to_vec();
        with_v.extend_from_slice(&data);
        for d in [&data, &with_v] {
            if let Ok(sdp) = SessionDescription::parse(d) {
                let written = sdp.write();
                prop_assert_eq!(written.as_bytes(), &d[..]);
                let _ = sdp.media_info();
            }
        }
    }

    #[test]
    fn rewrite_output_is_valid_sdp(body in arb_body(), port in 1u16..65000, v6 in any::<bool>()) {
        let Ok(sdp) = SessionDescription::parse(body.as_bytes()) else { return Ok(()) };
        let Ok(infos) = sdp.media_info() else { return Ok(()) };
        let addr: IpAddr = if v6 { "::1".parse().unwrap() } else { "127.0.0.1".parse().unwrap() };
        let params = RewriteParams {
            address: addr,
            media: infos
                .iter()
                .map(|m| MediaRewrite {
                    port: if m.port == 0 { 0 } else { port },
                    address: addr,
                    protocol: None,
                    codecs: m.is_rtp().then(|| m.codecs.clone()),
                    direction: m.direction,
                    rtcp: RtcpAttr::Full(port.saturating_add(1), addr),
                    rtcp_mux: m.rtcp_mux,
                    ptime: m.ptime,
                })
                .collect(),
            replace_origin: true,
            sdp_version: Some(7),
            loop_protect: Some("x".to_owned()),
            zero_address: false,
            strip_extmap: true,
        };
        let out = rewrite(&sdp, &params);
        let again = SessionDescription::parse(out.as_bytes()).expect("rewritten SDP parses");
        let infos2 = again.media_info().expect("complete");
        prop_assert_eq!(infos2.len(), infos.len());
        for (a, b) in infos.iter().zip(&infos2) {
            prop_assert_eq!(a.port == 0, b.port == 0);
            if a.port != 0 {
                prop_assert_eq!(b.port, port);
                prop_assert_eq!(b.direction, a.direction);
                prop_assert!(!b.has_ice);
            }
        }
    }
}

#[test]
fn direction_defaults_to_sendrecv() {
    let sdp = SessionDescription::parse(
        b"v=0\r\no=a 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nt=0 0\r\nm=audio 1 RTP/AVP 0\r\n",
    )
    .unwrap();
    assert_eq!(sdp.media_info().unwrap()[0].direction, Direction::SendRecv);
}
