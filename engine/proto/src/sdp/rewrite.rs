//! The rtpengine-compatible SDP rewrite and `codec` option handling.
//!
//! Output shape, as rtpengine 10.5 produces it (observed on loopback):
//!
//! - Session level: lines stay in place; every `c=` becomes the relay's address (a `0.0.0.0`
//!   hold address is kept unless `replace: zero address`); `o=` changes only with
//!   `replace: origin` (address) or an SDP version rewrite; direction attributes move into each
//!   media section; ICE attributes and `a=group:BUNDLE` are dropped; the loop-protect marker
//!   `a=rtpengine:ID` closes the section.
//! - Media sections: `m=` gets the relay port and the resulting payload types; non-attribute
//!   lines (`i=`, `c=`, `b=`, `k=`) stay in place; attributes this module does not manage keep
//!   their order and come first; then `a=mid`, then per payload type `a=rtpmap` (always, also for
//!   static types), `a=fmtp`, `a=rtcp-fb`; then the direction, `a=rtcp:PORT`, `a=rtcp-mux`,
//!   `a=ptime`.
//! - Rejected sections (port 0) keep their `m=` line and non-attribute lines (with `c=`
//!   rewritten) and lose their attributes.

use std::net::IpAddr;

use super::{
    Codec, Direction, Line, LineEnding, MediaSection, SessionDescription, is_ice_attribute,
};
use crate::ng::{AddressFamily, CodecOptions};

/// The `a=rtcp` attribute to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtcpAttr {
    /// None (`no rtcp attribute`).
    Omit,
    /// `a=rtcp:PORT`.
    Port(u16),
    /// `a=rtcp:PORT IN IP4 ADDR` (`full rtcp attribute`).
    Full(u16, IpAddr),
}

/// How to rewrite one media section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRewrite {
    /// The relay's RTP port to advertise; 0 passes the section through as rejected.
    pub port: u16,
    /// The relay's address for this section's `c=`.
    pub address: IpAddr,
    /// A transport protocol replacing the input's.
    pub protocol: Option<String>,
    /// The payload formats to advertise, in order; `None` keeps the input's formats and format
    /// attributes as they are (non-RTP media).
    pub codecs: Option<Vec<Codec>>,
    /// The direction attribute to write.
    pub direction: Direction,
    /// The `a=rtcp` attribute.
    pub rtcp: RtcpAttr,
    /// Write `a=rtcp-mux`.
    pub rtcp_mux: bool,
    /// `a=ptime` to write.
    pub ptime: Option<u32>,
}

/// How to rewrite a whole description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewriteParams {
    /// The relay's address for the session-level `c=` and (with `replace_origin`) `o=`.
    pub address: IpAddr,
    /// One entry per media section, in order. Sections without an entry pass as rejected.
    pub media: Vec<MediaRewrite>,
    /// `replace: origin`.
    pub replace_origin: bool,
    /// The `o=` session version to write, if it is to be replaced.
    pub sdp_version: Option<u64>,
    /// Loop-protect marker to add as `a=rtpengine:ID`.
    pub loop_protect: Option<String>,
    /// Rewrite unspecified (`0.0.0.0`, `::`) connection addresses too.
    pub zero_address: bool,
    /// Drop `a=extmap` lines.
    pub strip_extmap: bool,
}

fn connection_value(addr: IpAddr) -> String {
    format!("IN {} {}", AddressFamily::of(&addr).sdp_name(), addr)
}

fn rewrite_connection(l: &Line, addr: IpAddr, zero_address: bool) -> String {
    let keep =
        !zero_address && super::parse_connection(&l.value).is_some_and(|a| a.is_unspecified());
    if keep {
        l.value.clone()
    } else {
        connection_value(addr)
    }
}

fn push_line(out: &mut String, kind: u8, value: &str, ending: LineEnding, eol: LineEnding) {
    out.push(char::from(kind));
    out.push('=');
    out.push_str(value);
    out.push_str(match ending {
        LineEnding::None => eol.as_str(),
        e => e.as_str(),
    });
}

fn push_attr(out: &mut String, value: &str, eol: LineEnding) {
    push_line(out, b'a', value, eol, eol);
}

/// Session-level attributes the relay removes.
fn drop_session_attribute(name: &str, value: Option<&str>, p: &RewriteParams) -> bool {
    Direction::from_attribute(name).is_some()
        || is_ice_attribute(name)
        || is_dtls_or_sdes(name)
        || (name == "group" && value.is_some_and(|v| v.starts_with("BUNDLE")))
        || (p.strip_extmap && (name == "extmap" || name == "extmap-allow-mixed"))
}

fn is_dtls_or_sdes(name: &str) -> bool {
    matches!(name, "crypto" | "fingerprint" | "setup" | "tls-id")
}

/// Rewrites `sdp` per `p`; see the module docs for the output shape.
#[must_use]
pub fn rewrite(sdp: &SessionDescription, p: &RewriteParams) -> String {
    let eol = sdp.line_ending();
    let mut out = String::with_capacity(sdp.session.len() * 32 + sdp.media.len() * 256);
    for l in &sdp.session {
        match l.kind {
            b'o' => {
                let mut f: Vec<String> = l
                    .value
                    .split_ascii_whitespace()
                    .map(str::to_owned)
                    .collect();
                if f.len() == 6 {
                    if let Some(v) = p.sdp_version {
                        f[2] = v.to_string();
                    }
                    if p.replace_origin {
                        f[4] = AddressFamily::of(&p.address).sdp_name().to_owned();
                        f[5] = p.address.to_string();
                    }
                    push_line(&mut out, b'o', &f.join(" "), l.ending, eol);
                } else {
                    push_line(&mut out, b'o', &l.value, l.ending, eol);
                }
            }
            b'c' => {
                let v = rewrite_connection(l, p.address, p.zero_address);
                push_line(&mut out, b'c', &v, l.ending, eol);
            }
            b'a' => {
                let (name, value) = l.attribute().unwrap_or(("", None));
                if !drop_session_attribute(name, value, p) {
                    push_line(&mut out, b'a', &l.value, l.ending, eol);
                }
            }
            k => push_line(&mut out, k, &l.value, l.ending, eol),
        }
    }
    if let Some(id) = &p.loop_protect {
        push_attr(&mut out, &format!("rtpengine:{id}"), eol);
    }
    for (i, m) in sdp.media.iter().enumerate() {
        match p.media.get(i) {
            Some(mr) if mr.port != 0 => rewrite_media(&mut out, m, mr, p, eol),
            other => {
                let addr = other.map_or(p.address, |mr| mr.address);
                rejected_media(&mut out, m, addr, p, eol);
            }
        }
    }
    out
}

fn rejected_media(
    out: &mut String,
    m: &MediaSection,
    addr: IpAddr,
    p: &RewriteParams,
    eol: LineEnding,
) {
    for l in &m.lines {
        match l.kind {
            b'a' => {}
            b'c' => {
                let v = rewrite_connection(l, addr, p.zero_address);
                push_line(out, b'c', &v, l.ending, eol);
            }
            k => push_line(out, k, &l.value, l.ending, eol),
        }
    }
}

fn rewrite_media(
    out: &mut String,
    m: &MediaSection,
    mr: &MediaRewrite,
    p: &RewriteParams,
    eol: LineEnding,
) {
    let ml = m.media_line();
    let mut m_value = format!(
        "{} {} {}",
        ml.media,
        mr.port,
        mr.protocol.as_deref().unwrap_or(ml.protocol)
    );
    match &mr.codecs {
        Some(codecs) => {
            for c in codecs {
                m_value.push(' ');
                m_value.push_str(&c.payload_type.to_string());
            }
        }
        None => {
            for f in &ml.formats {
                m_value.push(' ');
                m_value.push_str(f);
            }
        }
    }
    let m_ending = m.lines.first().map_or(eol, |l| l.ending);
    push_line(out, b'm', &m_value, m_ending, eol);

    for l in m.lines.iter().skip(1).filter(|l| l.kind != b'a') {
        if l.kind == b'c' {
            let v = rewrite_connection(l, mr.address, p.zero_address);
            push_line(out, b'c', &v, l.ending, eol);
        } else {
            push_line(out, l.kind, &l.value, l.ending, eol);
        }
    }
    let manage_codecs = mr.codecs.is_some();
    let mut mid = None;
    for l in m.lines.iter().skip(1).filter(|l| l.kind == b'a') {
        let (name, value) = l.attribute().unwrap_or(("", None));
        let managed = match name {
            "rtpmap" | "fmtp" => manage_codecs,
            "rtcp-fb" => manage_codecs && value.is_some_and(|v| !v.starts_with('*')),
            "ptime" | "rtcp" | "rtcp-mux" => true,
            "mid" => {
                mid.get_or_insert(value.unwrap_or(""));
                true
            }
            "extmap" | "extmap-allow-mixed" => p.strip_extmap,
            n => {
                Direction::from_attribute(n).is_some() || is_ice_attribute(n) || is_dtls_or_sdes(n)
            }
        };
        if !managed {
            push_line(out, b'a', &l.value, l.ending, eol);
        }
    }
    if let Some(mid) = mid {
        push_attr(out, &format!("mid:{mid}"), eol);
    }
    if let Some(codecs) = &mr.codecs {
        for c in codecs {
            if !c.name.is_empty() {
                push_attr(out, &format!("rtpmap:{}", c.rtpmap_value()), eol);
            }
            if let Some(f) = &c.fmtp {
                push_attr(out, &format!("fmtp:{} {}", c.payload_type, f), eol);
            }
            for fb in &c.rtcp_fb {
                push_attr(out, &format!("rtcp-fb:{} {}", c.payload_type, fb), eol);
            }
        }
    }
    push_attr(out, mr.direction.as_str(), eol);
    match mr.rtcp {
        RtcpAttr::Omit => {}
        RtcpAttr::Port(port) => push_attr(out, &format!("rtcp:{port}"), eol),
        RtcpAttr::Full(port, addr) => {
            push_attr(out, &format!("rtcp:{port} {}", connection_value(addr)), eol);
        }
    }
    if mr.rtcp_mux {
        push_attr(out, "rtcp-mux", eol);
    }
    if let Some(pt) = mr.ptime {
        push_attr(out, &format!("ptime:{pt}"), eol);
    }
}

/// The result of applying `codec` options to an offer's payload formats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecSelection {
    /// The formats to advertise, in order.
    pub codecs: Vec<Codec>,
    /// `transcode` entries naming a codec the offer does not carry: they need transcoding.
    pub needs_transcoding: Vec<String>,
}

fn is_all(spec: &str) -> bool {
    spec.eq_ignore_ascii_case("all") || spec.eq_ignore_ascii_case("full")
}

/// Applies `strip`, `mask`, `except`, `offer` and `transcode` to an offer's codecs, as
/// rtpengine 10.5 does without transcoding:
///
/// - `strip`/`mask`/`consume` remove matching codecs; with `all` (or `full`) every codec goes except those
///   in `except` (kept in their order), followed by those in `offer` (in the listed order).
/// - `offer` without `strip: all` changes nothing.
/// - telephone-event and CN survive only while a primary codec of the same clock rate does.
/// - If nothing would remain, the codecs are left unchanged.
/// - `transcode` entries that no offered codec matches are reported in
///   [`CodecSelection::needs_transcoding`].
#[must_use]
pub fn apply_codec_options(codecs: &[Codec], opts: &CodecOptions) -> CodecSelection {
    let mut kept = remove_codecs(codecs, opts);
    if kept.len() != codecs.len() {
        let primaries: Vec<u32> = kept
            .iter()
            .filter(|c| !c.is_supplemental())
            .map(|c| c.clock_rate)
            .collect();
        kept.retain(|c| !c.is_supplemental() || primaries.contains(&c.clock_rate));
        if kept.is_empty() {
            kept = codecs.to_vec();
        }
    }
    let needs_transcoding = opts
        .transcode
        .iter()
        .filter(|s| !kept.iter().any(|c| c.matches_spec(s)))
        .cloned()
        .collect();
    CodecSelection {
        codecs: kept,
        needs_transcoding,
    }
}

/// The removal step of [`apply_codec_options`] alone: `strip`, `mask`, `consume` (with
/// `all`, keeping `except` and then `offer`), without dropping orphaned telephone-event/CN
/// and without the fallback to the input when nothing remains.
#[must_use]
pub fn remove_codecs(codecs: &[Codec], opts: &CodecOptions) -> Vec<Codec> {
    let removals: Vec<&String> = opts
        .strip
        .iter()
        .chain(&opts.mask)
        .chain(&opts.consume)
        .collect();
    let remove_all = removals.iter().any(|s| is_all(s));
    if remove_all {
        let mut k: Vec<Codec> = codecs
            .iter()
            .filter(|c| opts.except.iter().any(|s| c.matches_spec(s)))
            .cloned()
            .collect();
        for spec in &opts.offer {
            if let Some(c) = codecs.iter().find(|c| {
                c.matches_spec(spec) && !k.iter().any(|x| x.payload_type == c.payload_type)
            }) {
                k.push(c.clone());
            }
        }
        k
    } else {
        codecs
            .iter()
            .filter(|c| !removals.iter().any(|s| c.matches_spec(s)))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codecs() -> Vec<Codec> {
        let body = "v=0\r\no=a 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0 8 9 96 101\r\na=rtpmap:96 opus/48000/2\r\na=fmtp:96 useinbandfec=1\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n";
        let sdp = SessionDescription::parse(body.as_bytes()).unwrap();
        sdp.media_info().unwrap().remove(0).codecs
    }

    fn pts(opts: CodecOptions) -> Vec<u8> {
        apply_codec_options(&codecs(), &opts)
            .codecs
            .iter()
            .map(|c| c.payload_type)
            .collect()
    }

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn codec_options_match_rtpengine() {
        let o = |f: fn(&mut CodecOptions)| {
            let mut c = CodecOptions::default();
            f(&mut c);
            pts(c)
        };
        assert_eq!(o(|c| c.strip = v(&["PCMA"])), [0, 9, 96, 101]);
        assert_eq!(o(|c| c.strip = v(&["all"])), [0, 8, 9, 96, 101]);
        assert_eq!(
            o(|c| {
                c.strip = v(&["all"]);
                c.except = v(&["PCMU"]);
            }),
            [0]
        );
        assert_eq!(o(|c| c.strip = v(&["opus", "telephone-event"])), [0, 8, 9]);
        assert_eq!(o(|c| c.offer = v(&["G722"])), [0, 8, 9, 96, 101]);
        assert_eq!(o(|c| c.mask = v(&["PCMU"])), [8, 9, 96, 101]);
        assert_eq!(o(|c| c.strip = v(&["PCMU/8000"])), [8, 9, 96, 101]);
        assert_eq!(o(|c| c.strip = v(&["opus/48000/1"])), [0, 8, 9, 96, 101]);
        assert_eq!(
            o(|c| {
                c.strip = v(&["all"]);
                c.offer = v(&["G722", "PCMA"]);
            }),
            [9, 8]
        );
        assert_eq!(
            o(|c| {
                c.strip = v(&["all"]);
                c.except = v(&["opus", "telephone-event"]);
            }),
            [96]
        );
        assert_eq!(
            o(|c| {
                c.strip = v(&["all"]);
                c.except = v(&["opus"]);
                c.offer = v(&["PCMA"]);
            }),
            [96, 8]
        );
        assert_eq!(o(|c| c.strip = v(&["pcma"])), [0, 9, 96, 101]);
        assert_eq!(
            o(|c| c.strip = v(&["PCMU", "PCMA", "G722", "opus", "telephone-event"])),
            [0, 8, 9, 96, 101]
        );
        assert_eq!(o(|c| c.strip = v(&["PCMU", "PCMA", "G722"])), [96]);
        let t = CodecOptions {
            transcode: v(&["PCMA", "G729"]),
            ..CodecOptions::default()
        };
        assert_eq!(
            apply_codec_options(&codecs(), &t).needs_transcoding,
            v(&["G729"])
        );
    }

    #[test]
    fn rewrite_basic_offer() {
        let body = "v=0\r\no=alice 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n";
        let sdp = SessionDescription::parse(body.as_bytes()).unwrap();
        let info = sdp.media_info().unwrap();
        let addr: IpAddr = "127.0.0.1".parse().unwrap();
        let p = RewriteParams {
            address: addr,
            media: vec![MediaRewrite {
                port: 30052,
                address: addr,
                protocol: None,
                codecs: Some(info[0].codecs.clone()),
                direction: info[0].direction,
                rtcp: RtcpAttr::Port(30053),
                rtcp_mux: false,
                ptime: info[0].ptime,
            }],
            replace_origin: false,
            sdp_version: None,
            loop_protect: None,
            zero_address: false,
            strip_extmap: false,
        };
        assert_eq!(
            rewrite(&sdp, &p),
            "v=0\r\no=alice 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 30052 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=sendrecv\r\na=rtcp:30053\r\na=ptime:20\r\n"
        );
    }
}
