//! The SDP the harness offers and answers with, and the media address read from a relay's reply.
//!
//! The harness offers one PCMU audio stream (RFC 4566 §5, RFC 3551 payload type 0) and needs one
//! thing back from the relay's rewritten SDP: where to send that stream, i.e. the first `m=audio`
//! line with a non-zero port and the connection address that applies to it (the media-level
//! `c=` if present, otherwise the session-level one, RFC 4566 §5.7).

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context, Result, bail};

/// A PCMU-only audio SDP for media at `addr:port`, with packets of `ptime_ms` milliseconds.
pub fn audio_sdp(addr: IpAddr, port: u16, session_id: u64, ptime_ms: u32) -> String {
    let family = if addr.is_ipv4() { "IP4" } else { "IP6" };
    format!(
        "v=0\r\n\
         o=switchboard-load {session_id} 1 IN {family} {addr}\r\n\
         s=switchboard-load\r\n\
         c=IN {family} {addr}\r\n\
         t=0 0\r\n\
         m=audio {port} RTP/AVP 0\r\n\
         a=rtpmap:0 PCMU/8000\r\n\
         a=ptime:{ptime_ms}\r\n\
         a=sendrecv\r\n"
    )
}

/// An audio SDP offering one codec at payload type `pt` (`rtpmap` such as `opus/48000/2`).
pub fn codec_sdp(
    addr: IpAddr,
    port: u16,
    session_id: u64,
    ptime_ms: u32,
    pt: u8,
    rtpmap: &str,
) -> String {
    let family = if addr.is_ipv4() { "IP4" } else { "IP6" };
    format!(
        "v=0\r\n\
         o=switchboard-load {session_id} 1 IN {family} {addr}\r\n\
         s=switchboard-load\r\n\
         c=IN {family} {addr}\r\n\
         t=0 0\r\n\
         m=audio {port} RTP/AVP {pt}\r\n\
         a=rtpmap:{pt} {rtpmap}\r\n\
         a=ptime:{ptime_ms}\r\n\
         a=sendrecv\r\n"
    )
}

/// The payload type the first audio section of `sdp` uses for the codec named `name`
/// (case-insensitive, as in `a=rtpmap:PT NAME/...`), or its static type (0 PCMU, 8 PCMA)
/// when listed on the `m=` line without an `rtpmap`.
pub fn payload_type_for(sdp: &str, name: &str) -> Option<u8> {
    let mut formats: Vec<u8> = Vec::new();
    let mut in_audio = false;
    let mut seen_audio = false;
    for line in sdp.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(media) = line.strip_prefix("m=") {
            if seen_audio {
                break;
            }
            let mut fields = media.split_ascii_whitespace();
            in_audio = fields.next() == Some("audio");
            if in_audio {
                seen_audio = true;
                formats = fields.skip(2).filter_map(|f| f.parse().ok()).collect();
            }
        } else if in_audio {
            if let Some(map) = line.strip_prefix("a=rtpmap:") {
                let mut it = map.splitn(2, ' ');
                let pt = it.next().and_then(|p| p.parse::<u8>().ok());
                let codec = it.next().and_then(|c| c.split('/').next());
                if let (Some(pt), Some(codec)) = (pt, codec) {
                    if codec.eq_ignore_ascii_case(name) {
                        return Some(pt);
                    }
                }
            }
        }
    }
    let fixed = match name.to_ascii_uppercase().as_str() {
        "PCMU" => 0,
        "PCMA" => 8,
        _ => return None,
    };
    formats.contains(&fixed).then_some(fixed)
}

/// The address the first active `m=audio` section of `sdp` receives RTP on.
pub fn audio_endpoint(sdp: &str) -> Result<SocketAddr> {
    let mut session_addr: Option<IpAddr> = None;
    // (port, media-level address) of the first active audio section once found.
    let mut found: Option<(u16, Option<IpAddr>)> = None;
    let mut in_audio = false;
    let mut in_session = true;
    for line in sdp.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(media) = line.strip_prefix("m=") {
            if found.is_some() {
                break;
            }
            in_session = false;
            let mut fields = media.split_ascii_whitespace();
            let kind = fields.next().unwrap_or_default();
            let port_field = fields.next().unwrap_or_default();
            // A port may be written `port/count`, RFC 4566 §5.14.
            let port_text = port_field.split('/').next().unwrap_or_default();
            let port: u16 = port_text
                .parse()
                .with_context(|| format!("bad port in SDP media line {line:?}"))?;
            in_audio = kind == "audio" && port != 0;
            if in_audio {
                found = Some((port, None));
            }
        } else if let Some(conn) = line.strip_prefix("c=") {
            let addr = connection_address(conn)
                .with_context(|| format!("bad SDP connection line {line:?}"))?;
            if in_session {
                session_addr = Some(addr);
            } else if let (Some((_, media_addr)), true) = (found.as_mut(), in_audio) {
                *media_addr = Some(addr);
            }
        }
    }
    let Some((port, media_addr)) = found else {
        bail!("SDP has no audio media line with a non-zero port");
    };
    let Some(addr) = media_addr.or(session_addr) else {
        bail!("SDP has no connection address for its audio media");
    };
    Ok(SocketAddr::new(addr, port))
}

/// The address of a `c=` value: `IN IP4 127.0.0.1` (a multicast `/ttl` suffix is dropped).
fn connection_address(value: &str) -> Result<IpAddr> {
    let mut fields = value.split_ascii_whitespace();
    let (net, family, addr) = (fields.next(), fields.next(), fields.next());
    if net != Some("IN") {
        bail!("network type is not IN");
    }
    let addr = addr.context("no address")?.split('/').next().unwrap_or("");
    let ip: IpAddr = addr.parse().context("not an IP address")?;
    match (family, ip) {
        (Some("IP4"), IpAddr::V4(_)) | (Some("IP6"), IpAddr::V6(_)) => Ok(ip),
        _ => bail!("address family does not match the address"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// rtpengine 10.5's rewritten offer, as observed on loopback.
    const RTPENGINE_OFFER_OUT: &str = "v=0\r\no=alice 1 1 IN IP4 127.0.0.1\r\ns=-\r\n\
        c=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 30052 RTP/AVP 0 8 101\r\n\
        a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
        a=fmtp:101 0-16\r\na=sendrecv\r\na=rtcp:30053\r\na=ptime:20\r\n";

    #[test]
    fn reads_rtpengine_offer_reply() {
        let ep = audio_endpoint(RTPENGINE_OFFER_OUT).unwrap();
        assert_eq!(ep, "127.0.0.1:30052".parse().unwrap());
    }

    #[test]
    fn round_trips_own_sdp() {
        let sdp = audio_sdp("127.0.0.1".parse().unwrap(), 40_000, 7, 20);
        assert!(sdp.contains("m=audio 40000 RTP/AVP 0\r\n"));
        assert_eq!(
            audio_endpoint(&sdp).unwrap(),
            "127.0.0.1:40000".parse().unwrap()
        );
        let sdp6 = audio_sdp("::1".parse().unwrap(), 40_002, 7, 20);
        assert!(sdp6.contains("c=IN IP6 ::1\r\n"));
        assert_eq!(
            audio_endpoint(&sdp6).unwrap(),
            "[::1]:40002".parse().unwrap()
        );
    }

    #[test]
    fn media_level_connection_wins() {
        let sdp = "v=0\nc=IN IP4 127.0.0.1\nt=0 0\nm=audio 5000 RTP/AVP 0\nc=IN IP4 127.0.0.9\n";
        assert_eq!(
            audio_endpoint(sdp).unwrap(),
            "127.0.0.9:5000".parse().unwrap()
        );
    }

    #[test]
    fn skips_rejected_and_non_audio_sections() {
        let sdp = "v=0\r\nc=IN IP4 127.0.0.1\r\nm=video 6000 RTP/AVP 96\r\nc=IN IP4 127.0.0.7\r\n\
                   m=audio 0 RTP/AVP 0\r\nm=audio 6002/2 RTP/AVP 0\r\n";
        assert_eq!(
            audio_endpoint(sdp).unwrap(),
            "127.0.0.1:6002".parse().unwrap()
        );
    }

    #[test]
    fn errors_are_clear() {
        let no_audio = audio_endpoint("v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 0 RTP/AVP 0\r\n");
        assert!(no_audio.unwrap_err().to_string().contains("non-zero port"));
        let no_conn = audio_endpoint("v=0\r\nm=audio 5000 RTP/AVP 0\r\n");
        assert!(
            no_conn
                .unwrap_err()
                .to_string()
                .contains("connection address")
        );
        assert!(audio_endpoint("m=audio x RTP/AVP 0").is_err());
        assert!(audio_endpoint("c=IN IP6 127.0.0.1\r\nm=audio 5 RTP/AVP 0").is_err());
        assert!(audio_endpoint("c=IN IP4 nowhere\r\nm=audio 5 RTP/AVP 0").is_err());
    }

    #[test]
    fn finds_payload_types() {
        let sdp = "v=0\r\nm=audio 5 RTP/AVP 8 96\r\na=rtpmap:96 opus/48000/2\r\n";
        assert_eq!(payload_type_for(sdp, "opus"), Some(96));
        assert_eq!(payload_type_for(sdp, "PCMA"), Some(8));
        assert_eq!(payload_type_for(sdp, "PCMU"), None);
        let own = codec_sdp("127.0.0.1".parse().unwrap(), 9, 1, 20, 97, "opus/48000/2");
        assert_eq!(payload_type_for(&own, "OPUS"), Some(97));
        assert_eq!(audio_endpoint(&own).unwrap().port(), 9);
    }
}
