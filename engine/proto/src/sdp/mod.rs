//! SDP (RFC 8866, formerly RFC 4566): a parser and writer that keeps every line, and the
//! rtpengine-compatible offer/answer rewrite ([`rewrite`]).
//!
//! [`SessionDescription::parse`] splits a body into the session section and one section per
//! `m=` line, keeping each line's text and its own line ending; [`SessionDescription::write`]
//! gives back the input byte for byte. Lines this module does not interpret pass through
//! untouched. Validation is what rtpengine 10.5 enforces: the body starts with `v=0`, every line
//! is `x=…` with a known type letter, `m=` has media, port (0–65535, optional `/count`) and
//! protocol, `c=` is `IN IP4|IP6 <address>` with an address of that family. Blank lines are only
//! accepted at the end.
//!
//! [`SessionDescription::media_info`] derives what the relay needs from each media section:
//! connection address, RTP and RTCP ports (`a=rtcp` or port+1), rtcp-mux, codecs (RFC 3551
//! static payload types filled in), direction (session and media level combined), ptime.

mod rewrite;

pub use rewrite::{
    CodecSelection, MediaRewrite, RewriteParams, RtcpAttr, apply_codec_options, remove_codecs,
    rewrite,
};

use std::fmt::Write as _;
use std::net::IpAddr;

use thiserror::Error;

use crate::ng::AddressFamily;

/// Why a body is not acceptable SDP.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SdpError {
    /// Not UTF-8.
    #[error("SDP is not UTF-8")]
    NotUtf8,
    /// Empty body.
    #[error("empty SDP")]
    Empty,
    /// The first line is not `v=0`.
    #[error("SDP does not start with v=0")]
    NoVersion,
    /// A line that is not `x=value` with a known type letter (1-based line number).
    #[error("malformed SDP line {line}")]
    BadLine {
        /// 1-based line number.
        line: usize,
    },
    /// A malformed `m=` line.
    #[error("malformed m= line {line}")]
    BadMedia {
        /// 1-based line number.
        line: usize,
    },
    /// A malformed `c=` line.
    #[error("malformed c= line {line}")]
    BadConnection {
        /// 1-based line number.
        line: usize,
    },
    /// A media section without a connection address at either level.
    #[error("media section {index} has no connection address")]
    Incomplete {
        /// 1-based media index.
        index: usize,
    },
}

/// How a line ended in the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineEnding {
    /// `\r\n`
    CrLf,
    /// `\n`
    Lf,
    /// End of input without a line break.
    None,
}

impl LineEnding {
    /// The bytes of this ending.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            LineEnding::CrLf => "\r\n",
            LineEnding::Lf => "\n",
            LineEnding::None => "",
        }
    }
}

/// One `x=value` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The type letter (`v`, `o`, `c`, `a`, `m`, …).
    pub kind: u8,
    /// Everything after `=`.
    pub value: String,
    /// The line's own ending.
    pub ending: LineEnding,
}

impl Line {
    /// For `a=` lines: the attribute name and its value (after `:`), if any.
    #[must_use]
    pub fn attribute(&self) -> Option<(&str, Option<&str>)> {
        if self.kind != b'a' {
            return None;
        }
        Some(match self.value.split_once(':') {
            Some((n, v)) => (n, Some(v)),
            None => (self.value.as_str(), None),
        })
    }
}

/// A media section: its `m=` line followed by its other lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaSection {
    /// The section's lines; the first is the `m=` line.
    pub lines: Vec<Line>,
}

impl MediaSection {
    /// The `m=` line's value.
    #[must_use]
    pub fn m_line(&self) -> &str {
        self.lines.first().map_or("", |l| l.value.as_str())
    }

    /// The parsed `m=` line.
    #[must_use]
    pub fn media_line(&self) -> MediaLine<'_> {
        // Validated by the parser; a hand-built section degrades to empty fields.
        MediaLine::parse(self.m_line()).unwrap_or(MediaLine {
            media: "",
            port: 0,
            port_count: None,
            protocol: "",
            formats: Vec::new(),
        })
    }

    /// Attribute lines of this section, as (name, value).
    pub fn attributes(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.lines.iter().filter_map(Line::attribute)
    }
}

/// The fields of an `m=` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaLine<'a> {
    /// `audio`, `video`, `image`, …
    pub media: &'a str,
    /// Transport port; 0 rejects the stream.
    pub port: u16,
    /// The optional `/count`.
    pub port_count: Option<u16>,
    /// `RTP/AVP`, `udptl`, …
    pub protocol: &'a str,
    /// Format list (payload types for RTP).
    pub formats: Vec<&'a str>,
}

impl<'a> MediaLine<'a> {
    /// Parses the value of an `m=` line.
    #[must_use]
    pub fn parse(v: &'a str) -> Option<MediaLine<'a>> {
        let mut it = v.split_ascii_whitespace();
        let media = it.next()?;
        let port_s = it.next()?;
        let protocol = it.next()?;
        let (port, port_count) = match port_s.split_once('/') {
            Some((p, c)) => (parse_u16(p)?, Some(parse_u16(c)?)),
            None => (parse_u16(port_s)?, None),
        };
        Some(MediaLine {
            media,
            port,
            port_count,
            protocol,
            formats: it.collect(),
        })
    }
}

fn parse_u16(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses the value of a `c=` line: `IN IP4|IP6 <address>`.
#[must_use]
pub fn parse_connection(v: &str) -> Option<IpAddr> {
    let mut it = v.split_ascii_whitespace();
    if it.next()? != "IN" {
        return None;
    }
    let family = match it.next()? {
        "IP4" => AddressFamily::Ip4,
        "IP6" => AddressFamily::Ip6,
        _ => return None,
    };
    let addr: IpAddr = it.next()?.parse().ok()?;
    if it.next().is_some() || AddressFamily::of(&addr) != family {
        return None;
    }
    Some(addr)
}

/// A parsed SDP body; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDescription {
    /// Lines before the first `m=`.
    pub session: Vec<Line>,
    /// One section per `m=` line.
    pub media: Vec<MediaSection>,
    /// Blank lines after the last line, kept verbatim.
    pub trailer: String,
}

/// Media direction (RFC 8866 §6.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// `sendrecv`
    SendRecv,
    /// `sendonly`
    SendOnly,
    /// `recvonly`
    RecvOnly,
    /// `inactive`
    Inactive,
}

impl Direction {
    /// Parses a direction attribute name.
    #[must_use]
    pub fn from_attribute(name: &str) -> Option<Direction> {
        match name {
            "sendrecv" => Some(Direction::SendRecv),
            "sendonly" => Some(Direction::SendOnly),
            "recvonly" => Some(Direction::RecvOnly),
            "inactive" => Some(Direction::Inactive),
            _ => None,
        }
    }

    /// The attribute name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// Whether the SDP's author sends.
    #[must_use]
    pub fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    /// Whether the SDP's author receives.
    #[must_use]
    pub fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }

    /// The direction allowing only what both allow (session and media level combined).
    #[must_use]
    pub fn intersect(self, other: Direction) -> Direction {
        Direction::from_flags(
            self.sends() && other.sends(),
            self.receives() && other.receives(),
        )
    }

    /// From send/receive flags.
    #[must_use]
    pub fn from_flags(send: bool, recv: bool) -> Direction {
        match (send, recv) {
            (true, true) => Direction::SendRecv,
            (true, false) => Direction::SendOnly,
            (false, true) => Direction::RecvOnly,
            (false, false) => Direction::Inactive,
        }
    }
}

/// One RTP payload format of a media section.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Codec {
    /// Payload type, 0–127.
    pub payload_type: u8,
    /// Encoding name as written (`PCMU`, `opus`, `telephone-event`); empty if unknown.
    pub name: String,
    /// Clock rate, Hz.
    pub clock_rate: u32,
    /// Channels (1 when not given).
    pub channels: u16,
    /// The `a=fmtp` value, if any (the last one wins).
    pub fmtp: Option<String>,
    /// `a=rtcp-fb` values for this payload type, in order.
    pub rtcp_fb: Vec<String>,
}

impl Codec {
    /// The RFC 3551 static assignment for `pt`, if any.
    #[must_use]
    pub fn from_static(pt: u8) -> Option<Codec> {
        let (name, clock, channels) = static_payload_type(pt)?;
        Some(Codec {
            payload_type: pt,
            name: name.to_owned(),
            clock_rate: clock,
            channels,
            fmtp: None,
            rtcp_fb: Vec::new(),
        })
    }

    /// True for telephone-event and comfort noise, which accompany a primary codec.
    #[must_use]
    pub fn is_supplemental(&self) -> bool {
        self.name.eq_ignore_ascii_case("telephone-event") || self.name.eq_ignore_ascii_case("CN")
    }

    /// The `a=rtpmap` value: `PT name/clock[/channels]` (channels only when not 1).
    #[must_use]
    pub fn rtpmap_value(&self) -> String {
        let mut s = format!("{} {}/{}", self.payload_type, self.name, self.clock_rate);
        if self.channels != 1 {
            let _ = write!(s, "/{}", self.channels);
        }
        s
    }

    /// Whether a codec string `name[/clock[/channels]]` names this codec (name
    /// case-insensitive).
    #[must_use]
    pub fn matches_spec(&self, spec: &str) -> bool {
        let mut parts = spec.split('/');
        let name = parts.next().unwrap_or("");
        if name.is_empty() || !self.name.eq_ignore_ascii_case(name) {
            return false;
        }
        if let Some(clock) = parts.next().filter(|s| !s.is_empty()) {
            if clock.parse::<u32>().ok() != Some(self.clock_rate) {
                return false;
            }
        }
        if let Some(ch) = parts.next().filter(|s| !s.is_empty()) {
            if ch.parse::<u16>().ok() != Some(self.channels) {
                return false;
            }
        }
        true
    }
}

/// RFC 3551 §6 static audio and video payload types.
#[must_use]
pub fn static_payload_type(pt: u8) -> Option<(&'static str, u32, u16)> {
    Some(match pt {
        0 => ("PCMU", 8000, 1),
        3 => ("GSM", 8000, 1),
        4 => ("G723", 8000, 1),
        5 => ("DVI4", 8000, 1),
        6 => ("DVI4", 16000, 1),
        7 => ("LPC", 8000, 1),
        8 => ("PCMA", 8000, 1),
        9 => ("G722", 8000, 1),
        10 => ("L16", 44100, 2),
        11 => ("L16", 44100, 1),
        12 => ("QCELP", 8000, 1),
        13 => ("CN", 8000, 1),
        14 => ("MPA", 90000, 1),
        15 => ("G728", 8000, 1),
        16 => ("DVI4", 11025, 1),
        17 => ("DVI4", 22050, 1),
        18 => ("G729", 8000, 1),
        25 => ("CelB", 90000, 1),
        26 => ("JPEG", 90000, 1),
        28 => ("nv", 90000, 1),
        31 => ("H261", 90000, 1),
        32 => ("MPV", 90000, 1),
        33 => ("MP2T", 90000, 1),
        34 => ("H263", 90000, 1),
        _ => return None,
    })
}

/// What the relay needs to know about one media section of a remote party's SDP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaInfo {
    /// 1-based index of the `m=` line.
    pub index: usize,
    /// `audio`, `video`, …
    pub media: String,
    /// Transport protocol as written.
    pub protocol: String,
    /// RTP port; 0 = rejected.
    pub port: u16,
    /// Connection address (media level, else session level).
    pub address: IpAddr,
    /// RTCP port: `a=rtcp`, else the RTP port with rtcp-mux, else port+1.
    pub rtcp_port: u16,
    /// RTCP address (`a=rtcp:PORT IN IP4 ADDR`, else `address`).
    pub rtcp_address: IpAddr,
    /// `a=rtcp-mux` present.
    pub rtcp_mux: bool,
    /// Payload formats in `m=` order (RTP protocols only).
    pub codecs: Vec<Codec>,
    /// Formats as written on the `m=` line.
    pub formats: Vec<String>,
    /// Session and media direction combined; `sendrecv` when absent.
    pub direction: Direction,
    /// The first `a=ptime`, ms.
    pub ptime: Option<u32>,
    /// ICE attributes present (session or media level).
    pub has_ice: bool,
    /// `a=mid` value.
    pub mid: Option<String>,
}

impl MediaInfo {
    /// Whether the protocol carries RTP (`RTP/…`, `UDP/TLS/RTP/…`).
    #[must_use]
    pub fn is_rtp(&self) -> bool {
        is_rtp_protocol(&self.protocol)
    }
}

/// Whether a transport protocol carries RTP.
#[must_use]
pub fn is_rtp_protocol(p: &str) -> bool {
    p.split('/').any(|x| x.eq_ignore_ascii_case("RTP"))
}

/// Whether a transport protocol needs SRTP (SAVP/SAVPF) — not supported yet.
#[must_use]
pub fn is_srtp_protocol(p: &str) -> bool {
    p.split('/')
        .any(|x| x.eq_ignore_ascii_case("SAVP") || x.eq_ignore_ascii_case("SAVPF"))
}

/// ICE attribute names (RFC 8839).
pub(crate) fn is_ice_attribute(name: &str) -> bool {
    matches!(
        name,
        "ice-ufrag"
            | "ice-pwd"
            | "ice-options"
            | "ice-lite"
            | "ice-mismatch"
            | "ice-pacing"
            | "candidate"
            | "remote-candidates"
            | "end-of-candidates"
    )
}

const LINE_TYPES: &[u8] = b"vosiuepcbtrzkam";

impl SessionDescription {
    /// Parses and validates a body (see the module docs for what is checked).
    pub fn parse(body: &[u8]) -> Result<SessionDescription, SdpError> {
        let text = std::str::from_utf8(body).map_err(|_| SdpError::NotUtf8)?;
        let mut session = Vec::new();
        let mut media: Vec<MediaSection> = Vec::new();
        let mut rest = text;
        let mut line_no = 0;
        let mut trailer_start: Option<usize> = None;
        while !rest.is_empty() {
            line_no += 1;
            let (raw, ending, next) = match rest.find('\n') {
                Some(i) if i > 0 && rest.as_bytes()[i - 1] == b'\r' => {
                    (&rest[..i - 1], LineEnding::CrLf, &rest[i + 1..])
                }
                Some(i) => (&rest[..i], LineEnding::Lf, &rest[i + 1..]),
                None => (rest, LineEnding::None, ""),
            };
            if raw.is_empty() {
                trailer_start.get_or_insert(text.len() - rest.len());
                rest = next;
                continue;
            }
            if trailer_start.is_some() {
                // A blank line before more content.
                return Err(SdpError::BadLine { line: line_no });
            }
            let b = raw.as_bytes();
            if b.len() < 2 || b[1] != b'=' || !LINE_TYPES.contains(&b[0]) || raw.contains('\r') {
                return Err(SdpError::BadLine { line: line_no });
            }
            let line = Line {
                kind: b[0],
                value: raw[2..].to_owned(),
                ending,
            };
            if line_no == 1 && (line.kind != b'v' || line.value != "0") {
                return Err(SdpError::NoVersion);
            }
            match line.kind {
                b'm' => {
                    if MediaLine::parse(&line.value).is_none() {
                        return Err(SdpError::BadMedia { line: line_no });
                    }
                    media.push(MediaSection { lines: vec![line] });
                }
                b'c' if parse_connection(&line.value).is_none() => {
                    return Err(SdpError::BadConnection { line: line_no });
                }
                _ => match media.last_mut() {
                    Some(m) => m.lines.push(line),
                    None => session.push(line),
                },
            }
            rest = next;
        }
        if session.is_empty() {
            return Err(SdpError::Empty);
        }
        let trailer = trailer_start.map_or_else(String::new, |s| text[s..].to_owned());
        Ok(SessionDescription {
            session,
            media,
            trailer,
        })
    }

    /// Writes the description; for a parsed body this is the input byte for byte.
    #[must_use]
    pub fn write(&self) -> String {
        let mut out = String::with_capacity(512);
        for l in self
            .session
            .iter()
            .chain(self.media.iter().flat_map(|m| &m.lines))
        {
            out.push(char::from(l.kind));
            out.push('=');
            out.push_str(&l.value);
            out.push_str(l.ending.as_str());
        }
        out.push_str(&self.trailer);
        out
    }

    /// The line ending most lines use (the first line's, or CRLF), for generated lines.
    #[must_use]
    pub fn line_ending(&self) -> LineEnding {
        match self.session.first().map(|l| l.ending) {
            Some(LineEnding::Lf) => LineEnding::Lf,
            _ => LineEnding::CrLf,
        }
    }

    /// The session-level connection address.
    #[must_use]
    pub fn session_connection(&self) -> Option<IpAddr> {
        self.session
            .iter()
            .find(|l| l.kind == b'c')
            .and_then(|l| parse_connection(&l.value))
    }

    /// Session-level attributes as (name, value).
    pub fn session_attributes(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.session.iter().filter_map(Line::attribute)
    }

    /// The session-level direction attribute, if any.
    #[must_use]
    pub fn session_direction(&self) -> Option<Direction> {
        self.session_attributes()
            .find_map(|(n, _)| Direction::from_attribute(n))
    }

    /// The `o=` line's fields, if present and well formed: (username, session id, version,
    /// network type, address type, address).
    #[must_use]
    pub fn origin(&self) -> Option<[&str; 6]> {
        let l = self.session.iter().find(|l| l.kind == b'o')?;
        let f: Vec<&str> = l.value.split_ascii_whitespace().collect();
        <[&str; 6]>::try_from(f).ok()
    }

    /// Derives [`MediaInfo`] for every media section. Fails with [`SdpError::Incomplete`] when
    /// a section has no connection address at either level.
    pub fn media_info(&self) -> Result<Vec<MediaInfo>, SdpError> {
        let session_addr = self.session_connection();
        let session_dir = self.session_direction().unwrap_or(Direction::SendRecv);
        let session_ice = self.session_attributes().any(|(n, _)| is_ice_attribute(n));
        self.media
            .iter()
            .enumerate()
            .map(|(i, m)| media_info(i + 1, m, session_addr, session_dir, session_ice))
            .collect()
    }
}

fn media_info(
    index: usize,
    m: &MediaSection,
    session_addr: Option<IpAddr>,
    session_dir: Direction,
    session_ice: bool,
) -> Result<MediaInfo, SdpError> {
    let ml = m.media_line();
    let address = m
        .lines
        .iter()
        .find(|l| l.kind == b'c')
        .and_then(|l| parse_connection(&l.value))
        .or(session_addr)
        .ok_or(SdpError::Incomplete { index })?;
    let mut rtcp_mux = false;
    let mut rtcp: Option<(u16, Option<IpAddr>)> = None;
    let mut direction = None;
    let mut ptime = None;
    let mut has_ice = session_ice;
    let mut mid = None;
    let mut rtpmaps: Vec<(u8, String, u32, u16)> = Vec::new();
    let mut fmtps: Vec<(u8, String)> = Vec::new();
    let mut fbs: Vec<(u8, String)> = Vec::new();
    for (name, value) in m.attributes() {
        match (name, value) {
            ("rtcp-mux", _) => rtcp_mux = true,
            ("rtcp", Some(v)) if rtcp.is_none() => rtcp = parse_rtcp_attr(v),
            ("ptime", Some(v)) if ptime.is_none() => {
                ptime = v.trim().parse::<u32>().ok().filter(|p| *p > 0);
            }
            ("mid", Some(v)) if mid.is_none() => mid = Some(v.to_owned()),
            ("rtpmap", Some(v)) => {
                if let Some(r) = parse_rtpmap(v) {
                    rtpmaps.push(r);
                }
            }
            ("fmtp", Some(v)) => {
                if let Some((pt, rest)) = split_pt(v) {
                    fmtps.push((pt, rest.to_owned()));
                }
            }
            ("rtcp-fb", Some(v)) => {
                if let Some((pt, rest)) = split_pt(v) {
                    fbs.push((pt, rest.to_owned()));
                }
            }
            (n, _) if is_ice_attribute(n) => has_ice = true,
            (n, _) => {
                if let Some(d) = Direction::from_attribute(n) {
                    direction.get_or_insert(d);
                }
            }
        }
    }
    let formats: Vec<String> = ml.formats.iter().map(|s| (*s).to_owned()).collect();
    let codecs = if is_rtp_protocol(ml.protocol) {
        ml.formats
            .iter()
            .filter_map(|f| f.parse::<u8>().ok().filter(|pt| *pt < 128))
            .map(|pt| {
                let mut c = match rtpmaps.iter().rev().find(|r| r.0 == pt) {
                    Some((_, name, clock, ch)) => Codec {
                        payload_type: pt,
                        name: name.clone(),
                        clock_rate: *clock,
                        channels: *ch,
                        fmtp: None,
                        rtcp_fb: Vec::new(),
                    },
                    None => Codec::from_static(pt).unwrap_or(Codec {
                        payload_type: pt,
                        name: String::new(),
                        clock_rate: 0,
                        channels: 1,
                        fmtp: None,
                        rtcp_fb: Vec::new(),
                    }),
                };
                c.fmtp = fmtps.iter().rev().find(|f| f.0 == pt).map(|f| f.1.clone());
                c.rtcp_fb = fbs
                    .iter()
                    .filter(|f| f.0 == pt)
                    .map(|f| f.1.clone())
                    .collect();
                c
            })
            .collect()
    } else {
        Vec::new()
    };
    let (rtcp_port, rtcp_address) = match rtcp {
        Some((p, a)) => (p, a.unwrap_or(address)),
        None if rtcp_mux => (ml.port, address),
        None => (ml.port.saturating_add(1), address),
    };
    Ok(MediaInfo {
        index,
        media: ml.media.to_owned(),
        protocol: ml.protocol.to_owned(),
        port: ml.port,
        address,
        rtcp_port: if ml.port == 0 { 0 } else { rtcp_port },
        rtcp_address,
        rtcp_mux,
        codecs,
        formats,
        direction: session_dir.intersect(direction.unwrap_or(Direction::SendRecv)),
        ptime,
        has_ice,
        mid,
    })
}

/// `PORT [IN IP4|IP6 ADDR]`
fn parse_rtcp_attr(v: &str) -> Option<(u16, Option<IpAddr>)> {
    let mut it = v.split_ascii_whitespace();
    let port = parse_u16(it.next()?)?;
    let rest: Vec<&str> = it.collect();
    let addr = if rest.len() == 3 {
        parse_connection(&rest.join(" "))
    } else {
        None
    };
    Some((port, addr))
}

/// `PT name/clock[/channels]`
fn parse_rtpmap(v: &str) -> Option<(u8, String, u32, u16)> {
    let (pt, rest) = split_pt(v)?;
    let mut parts = rest.trim().split('/');
    let name = parts.next().filter(|n| !n.is_empty())?;
    let clock = parts.next()?.trim().parse::<u32>().ok()?;
    let channels = match parts.next() {
        Some(c) => c.trim().parse::<u16>().ok()?,
        None => 1,
    };
    Some((pt, name.to_owned(), clock, channels))
}

fn split_pt(v: &str) -> Option<(u8, &str)> {
    let (pt, rest) = v.split_once(' ').unwrap_or((v, ""));
    let pt = pt.parse::<u8>().ok().filter(|p| *p < 128)?;
    Some((pt, rest.trim_start()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: &str = "v=0\r\no=alice 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n";

    #[test]
    fn round_trip_exact() {
        for body in [
            ALICE.to_owned(),
            ALICE.replace("\r\n", "\n"),
            ALICE.replacen("\r\n", "\n", 2),
            ALICE.trim_end().to_owned(),
            format!("{ALICE}\r\n\r\n"),
            "v=0\no=- 1 1 IN IP6 ::1\ns=\u{e9}\u{e8}\nt=0 0\nx".replace("\nx", ""),
        ] {
            let sdp = SessionDescription::parse(body.as_bytes()).unwrap();
            assert_eq!(sdp.write(), body);
        }
    }

    #[test]
    fn rejects_what_rtpengine_rejects() {
        let base = "v=0\r\no=alice 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n";
        let bad = [
            base.replace("v=0", "v=1"),
            base[5..].to_owned(),
            base.replace("40000", "70000"),
            base.replace("40000", "4x000"),
            base.replace("IN IP4 10.0.0.1\r\nt", "IN IP4 10.0.0.300\r\nt"),
            base.replace("c=IN IP4 10.0.0.1", "c=IN IP4 host.example"),
            base.replace("c=IN IP4", "c=IN ip4"),
            base.replace("c=IN IP4 10.0.0.1", "c=IN IP4 224.2.1.1/127"),
            base.replace("c=IN IP4 10.0.0.1", "c=IN IP4 ::1"),
            base.replace("c=IN IP4 10.0.0.1", "c=IN IP4"),
            base.replace("s=-", "s =-"),
            base.replace("s=-", "s=-\r\nx=foo"),
            base.replace("s=-", "s=-\r\nX=foo"),
            base.replace("m=audio 40000 RTP/AVP 0", "m=audio 40000"),
            base.replace("s=-\r\n", "s=-\r\n\r\n"),
            base.replace("\r\n", "\r"),
            "garbage".to_owned(),
            String::new(),
        ];
        for b in &bad {
            assert!(SessionDescription::parse(b.as_bytes()).is_err(), "{b:?}");
        }
        assert!(SessionDescription::parse(&[b'v', b'=', b'0', b'\n', 0xff]).is_err());
        let ok = [
            base.replace("40000", "40000/2"),
            base.replace("o=alice 1 1 IN IP4 10.0.0.1\r\n", ""),
            base.replace("RTP/AVP 0", "RTP/AVP"),
            base.replace("s=-", "s=\t-"),
            base.replace("s=-", "s="),
        ];
        for b in &ok {
            assert!(SessionDescription::parse(b.as_bytes()).is_ok(), "{b:?}");
        }
    }

    #[test]
    fn media_info_fills_static_and_rtcp() {
        let body = "v=0\r\no=a 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\na=sendonly\r\nm=audio 40000 RTP/AVP 96 0 9 101\r\na=recvonly\r\na=rtpmap:96 opus/48000/2\r\na=rtpmap:9 G722/8000/1\r\na=fmtp:96 a=1\r\na=fmtp:96 b=2\r\na=rtcp:40005 IN IP4 10.0.0.7\r\na=rtcp-fb:96 nack\r\na=ptime:20\r\na=ptime:30\r\nm=audio 0 RTP/AVP 8\r\nm=video 5000 RTP/AVP 31\r\nc=IN IP6 2001:db8::1\r\na=rtcp-mux\r\n";
        let sdp = SessionDescription::parse(body.as_bytes()).unwrap();
        let info = sdp.media_info().unwrap();
        let m = &info[0];
        assert_eq!(m.port, 40000);
        assert_eq!(
            (m.rtcp_port, m.rtcp_address),
            (40005, "10.0.0.7".parse().unwrap())
        );
        assert_eq!(m.direction, Direction::Inactive);
        assert_eq!(m.ptime, Some(20));
        assert_eq!(m.codecs.len(), 4);
        assert_eq!(m.codecs[0].rtpmap_value(), "96 opus/48000/2");
        assert_eq!(m.codecs[0].fmtp.as_deref(), Some("b=2"));
        assert_eq!(m.codecs[0].rtcp_fb, vec!["nack".to_owned()]);
        assert_eq!(m.codecs[1].rtpmap_value(), "0 PCMU/8000");
        assert_eq!(m.codecs[2].rtpmap_value(), "9 G722/8000");
        assert_eq!(m.codecs[3].name, "");
        assert_eq!(info[1].port, 0);
        assert_eq!(info[1].direction, Direction::SendOnly);
        assert_eq!(info[2].address, "2001:db8::1".parse::<IpAddr>().unwrap());
        assert!(info[2].rtcp_mux);
        assert_eq!(info[2].rtcp_port, 5000);
        assert!(Codec::from_static(0).unwrap().matches_spec("pcmu/8000"));
        assert!(!Codec::from_static(0).unwrap().matches_spec("PCMU/16000"));
        assert!(!m.codecs[0].matches_spec("opus/48000/1"));
    }

    #[test]
    fn incomplete_without_connection() {
        let body = "v=0\r\no=a 1 1 IN IP4 10.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\nc=IN IP4 10.0.0.1\r\nm=video 0 RTP/AVP 31\r\n";
        let sdp = SessionDescription::parse(body.as_bytes()).unwrap();
        assert_eq!(sdp.media_info(), Err(SdpError::Incomplete { index: 2 }));
    }
}
