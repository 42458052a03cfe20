//! The one codec abstraction the engine uses: what a negotiated payload format is
//! ([`CodecSpec`], parsed from and written back to SDP `a=rtpmap` / `a=fmtp` values), and
//! enum-dispatched [`Encoder`] / [`Decoder`] / [`Codec`] values built from it.
//!
//! **Payload formats.** RFC 3551 §6 assigns static payload types (PCMU 0, PCMA 8, G722 9,
//! CN 13, ...) that an `m=` line may use without an `rtpmap`; see
//! [`static_payload_type`]. Everything else is dynamic (96–127) and described by
//! `a=rtpmap:<pt> <name>/<clock>[/<channels>]` (RFC 8866 §6.6) plus optional
//! `a=fmtp:<pt> <parameters>` (RFC 8866 §6.15). Encoding names compare case-insensitively
//! (RFC 4855 §3). The parsers here take the attribute values, return typed errors for
//! anything malformed, and never panic on any input.
//!
//! **Rates.** The RTP clock rate and the audio sample rate differ for two codecs: G.722
//! runs at 16 kHz audio but an 8000 Hz RTP clock (RFC 3551 §4.5.2), and Opus always uses
//! a 48 000 Hz RTP clock while the decoder or encoder may run at 8, 12, 16, 24 or 48 kHz
//! (RFC 7587 §4.1). [`CodecSpec::audio_rate`] and [`CodecSpec::clock_ticks`] keep the two
//! apart.
//!
//! **Drive contract.** An [`Encoder`] takes one frame of mono PCM at its audio rate and
//! writes one RTP payload; a [`Decoder`] takes one payload and writes PCM. Both write into
//! caller buffers and never allocate after construction. For a lost packet call
//! [`Decoder::conceal`]: Opus runs its packet-loss concealment; the sample codecs (G.711,
//! G.722, L16) return `Ok(0)`, and the caller repeats the last frame with a fade.

use core::fmt;

use crate::g722::{G722Decoder, G722Encoder};
use crate::opus::{self, OpusConfig, OpusDecoder, OpusEncoder, OpusError};
use crate::{g711, l16};

/// Errors from payload-format parsing and from encoding or decoding through the
/// abstraction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// An `rtpmap` value does not follow `<pt> <name>/<clock>[/<channels>]`.
    #[error("malformed rtpmap: {reason}")]
    MalformedRtpmap {
        /// What is wrong.
        reason: &'static str,
    },
    /// An `fmtp` value is malformed, or a parameter this module knows has a bad value.
    #[error("malformed fmtp: {reason}")]
    MalformedFmtp {
        /// What is wrong.
        reason: &'static str,
    },
    /// A payload type above 127 (RTP carries 7 bits, RFC 3550 §5.1).
    #[error("payload type {0} is out of range (0..=127)")]
    InvalidPayloadType(u32),
    /// An `fmtp` for another payload type than the spec it is applied to.
    #[error("fmtp for payload type {fmtp} applied to payload type {spec}")]
    PayloadTypeMismatch {
        /// Payload type of the spec.
        spec: u8,
        /// Payload type named by the `fmtp`.
        fmtp: u8,
    },
    /// The encoding name is not one this crate implements (for example G729 or GSM).
    #[error("payload type {payload_type}: encoding not supported")]
    UnsupportedEncoding {
        /// The payload type that carried it.
        payload_type: u8,
    },
    /// A payload type with no `rtpmap` that is not a static assignment of RFC 3551 §6.
    #[error("payload type {0} is not statically assigned and has no rtpmap")]
    UnknownStaticPayloadType(u8),
    /// The clock rate does not fit the codec (for example `PCMU/16000`).
    #[error("{kind:?} does not run at an RTP clock rate of {clock_rate} Hz")]
    UnsupportedClockRate {
        /// The codec.
        kind: CodecKind,
        /// The clock rate asked for.
        clock_rate: u32,
    },
    /// The audio sample rate does not fit the codec.
    #[error("{kind:?} does not run at an audio rate of {audio_rate} Hz")]
    UnsupportedAudioRate {
        /// The codec.
        kind: CodecKind,
        /// The audio rate asked for.
        audio_rate: u32,
    },
    /// The channel count is not supported (the engine codes mono audio).
    #[error("{kind:?} with {channels} channels is not supported")]
    UnsupportedChannels {
        /// The codec.
        kind: CodecKind,
        /// Channels asked for.
        channels: u8,
    },
    /// The packetization time does not fit the codec.
    #[error("{kind:?} cannot packetize {ptime_ms} ms frames")]
    InvalidPtime {
        /// The codec.
        kind: CodecKind,
        /// The packetization time asked for, in milliseconds.
        ptime_ms: u32,
    },
    /// Telephone-events and comfort noise are not audio codecs: no encoder or decoder.
    #[error("{0:?} is not an audio codec")]
    NotAudio(CodecKind),
    /// The PCM frame length does not fit the codec (G.722 needs an even count).
    #[error("{kind:?} cannot encode a frame of {samples} samples")]
    InvalidFrameLength {
        /// The codec.
        kind: CodecKind,
        /// Samples given.
        samples: usize,
    },
    /// The payload cannot be a valid payload of the codec (L16 with an odd byte count).
    #[error("{kind:?} payload of {len} bytes is malformed")]
    MalformedPayload {
        /// The codec.
        kind: CodecKind,
        /// Payload length.
        len: usize,
    },
    /// The output buffer is too short for the whole result.
    #[error("output buffer holds {available} but {needed} are needed")]
    BufferTooSmall {
        /// Elements (bytes or samples) needed.
        needed: usize,
        /// Elements available.
        available: usize,
    },
    /// An error from the Opus codec.
    #[error(transparent)]
    Opus(#[from] OpusError),
}

/// The payload formats the engine knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CodecKind {
    /// G.711 µ-law, `PCMU` (RFC 3551 §4.5.14), static payload type 0.
    Pcmu,
    /// G.711 A-law, `PCMA` (RFC 3551 §4.5.14), static payload type 8.
    Pcma,
    /// G.722, `G722` (RFC 3551 §4.5.2), static payload type 9; 16 kHz audio, 8000 Hz clock.
    G722,
    /// Opus, `opus` (RFC 7587), dynamic; 48 000 Hz clock, rtpmap always `/2`.
    Opus,
    /// Linear 16-bit PCM, `L16` (RFC 3551 §4.5.11); used dynamically at any rate (the
    /// static types 10 and 11 are 44.1 kHz).
    L16,
    /// DTMF and other named events, `telephone-event` (RFC 4733), dynamic.
    TelephoneEvent,
    /// Comfort noise, `CN` (RFC 3389), static payload type 13.
    ComfortNoise,
}

impl CodecKind {
    /// Every kind, in a stable order.
    pub const ALL: [Self; 7] = [
        Self::Pcmu,
        Self::Pcma,
        Self::G722,
        Self::Opus,
        Self::L16,
        Self::TelephoneEvent,
        Self::ComfortNoise,
    ];

    /// The SDP encoding name as registered (RFC 3551 §6, RFC 7587 §7, RFC 4733 §7).
    #[must_use]
    pub const fn encoding_name(self) -> &'static str {
        match self {
            Self::Pcmu => "PCMU",
            Self::Pcma => "PCMA",
            Self::G722 => "G722",
            Self::Opus => "opus",
            Self::L16 => "L16",
            Self::TelephoneEvent => "telephone-event",
            Self::ComfortNoise => "CN",
        }
    }

    /// The kind for an SDP encoding name, compared case-insensitively (RFC 4855 §3).
    #[must_use]
    pub fn from_encoding_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.encoding_name().eq_ignore_ascii_case(name))
    }

    /// The usual RTP clock rate: 8000 for G.711, G.722, telephone-event and CN, 48 000 for
    /// Opus, and 16 000 for L16 (whose rate is whatever the `rtpmap` says; wideband is the
    /// engine's default). Telephone-event may also run at its audio codec's rate.
    #[must_use]
    pub const fn default_clock_rate(self) -> u32 {
        match self {
            Self::Opus => 48_000,
            Self::L16 => 16_000,
            Self::Pcmu | Self::Pcma | Self::G722 | Self::TelephoneEvent | Self::ComfortNoise => {
                8000
            }
        }
    }

    /// The static payload type of RFC 3551 §6 used for this kind, if any.
    #[must_use]
    pub const fn static_payload_type(self) -> Option<u8> {
        match self {
            Self::Pcmu => Some(0),
            Self::Pcma => Some(8),
            Self::G722 => Some(9),
            Self::ComfortNoise => Some(13),
            Self::Opus | Self::L16 | Self::TelephoneEvent => None,
        }
    }

    /// The payload type to offer: the static one, or a conventional dynamic number
    /// (Opus 111, telephone-event 101, L16 118) that an answer may change.
    #[must_use]
    pub const fn default_payload_type(self) -> u8 {
        match self.static_payload_type() {
            Some(pt) => pt,
            None => match self {
                Self::Opus => 111,
                Self::TelephoneEvent => 101,
                _ => 118,
            },
        }
    }

    /// The channel count an `rtpmap` states by default: 2 for Opus (always, RFC 7587 §7,
    /// even for mono audio), 1 otherwise.
    #[must_use]
    pub const fn default_channels(self) -> u8 {
        match self {
            Self::Opus => 2,
            _ => 1,
        }
    }

    /// Whether the kind carries audio samples (and so has an [`Encoder`] and [`Decoder`]).
    #[must_use]
    pub const fn is_audio(self) -> bool {
        !matches!(self, Self::TelephoneEvent | Self::ComfortNoise)
    }
}

/// One entry of the static audio payload type table (RFC 3551 §6, Table 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaticPayloadType {
    /// The payload type number.
    pub payload_type: u8,
    /// The encoding name.
    pub encoding_name: &'static str,
    /// The RTP clock rate in Hz.
    pub clock_rate: u32,
    /// The channel count.
    pub channels: u8,
}

const fn spt(
    payload_type: u8,
    encoding_name: &'static str,
    clock_rate: u32,
    channels: u8,
) -> StaticPayloadType {
    StaticPayloadType {
        payload_type,
        encoding_name,
        clock_rate,
        channels,
    }
}

/// The statically assigned audio payload types of RFC 3551 §6 (Table 4), for `m=` lines
/// that list a format without an `rtpmap`.
pub const STATIC_AUDIO_PAYLOAD_TYPES: [StaticPayloadType; 17] = [
    spt(0, "PCMU", 8000, 1),
    spt(3, "GSM", 8000, 1),
    spt(4, "G723", 8000, 1),
    spt(5, "DVI4", 8000, 1),
    spt(6, "DVI4", 16000, 1),
    spt(7, "LPC", 8000, 1),
    spt(8, "PCMA", 8000, 1),
    spt(9, "G722", 8000, 1),
    spt(10, "L16", 44100, 2),
    spt(11, "L16", 44100, 1),
    spt(12, "QCELP", 8000, 1),
    spt(13, "CN", 8000, 1),
    spt(14, "MPA", 90000, 1),
    spt(15, "G728", 8000, 1),
    spt(16, "DVI4", 11025, 1),
    spt(17, "DVI4", 22050, 1),
    spt(18, "G729", 8000, 1),
];

/// The static audio assignment for `payload_type` (RFC 3551 §6), if there is one.
#[must_use]
pub fn static_payload_type(payload_type: u8) -> Option<&'static StaticPayloadType> {
    STATIC_AUDIO_PAYLOAD_TYPES
        .iter()
        .find(|s| s.payload_type == payload_type)
}

/// A set of RFC 4733 event codes (0–255), as listed in a telephone-event `fmtp`
/// (RFC 4733 §2.4.1, for example `0-15,66`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EventSet([u64; 4]);

impl EventSet {
    /// The DTMF events 0–15 (digits, `*`, `#`, A–D), which a receiver assumes when an
    /// offer lists none (RFC 4733 §2.4.1).
    pub const DTMF: Self = Self([0xffff, 0, 0, 0]);

    /// An empty set.
    #[must_use]
    pub const fn new() -> Self {
        Self([0; 4])
    }

    /// Adds `event`.
    pub fn insert(&mut self, event: u8) {
        self.0[usize::from(event >> 6)] |= 1 << (event & 63);
    }

    /// Whether the set has `event`.
    #[must_use]
    pub const fn contains(&self, event: u8) -> bool {
        self.0[(event >> 6) as usize] & (1 << (event & 63)) != 0
    }

    /// Whether the set is empty.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.0[0] == 0 && self.0[1] == 0 && self.0[2] == 0 && self.0[3] == 0
    }

    /// Parses a comma-separated list of event codes and ranges (`0-15,66,70-72`).
    ///
    /// # Errors
    ///
    /// [`CodecError::MalformedFmtp`] for an empty item, a number above 255 or a reversed
    /// range.
    pub fn parse(list: &str) -> Result<Self, CodecError> {
        let mut set = Self::new();
        for item in list.split(',') {
            let item = item.trim();
            let (lo, hi) = match item.split_once('-') {
                Some((lo, hi)) => (parse_event(lo)?, parse_event(hi)?),
                None => {
                    let e = parse_event(item)?;
                    (e, e)
                }
            };
            if lo > hi {
                return Err(CodecError::MalformedFmtp {
                    reason: "event range is reversed",
                });
            }
            for e in lo..=hi {
                set.insert(e);
            }
        }
        Ok(set)
    }
}

fn parse_event(s: &str) -> Result<u8, CodecError> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CodecError::MalformedFmtp {
            reason: "event code is not a number",
        });
    }
    s.parse().map_err(|_| CodecError::MalformedFmtp {
        reason: "event code is above 255",
    })
}

impl fmt::Display for EventSet {
    /// Writes the set as ranges, `0-15,66`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut e: u16 = 0;
        while e <= 255 {
            // `e` is at most 255 inside the loop.
            let start = e as u8;
            if !self.contains(start) {
                e += 1;
                continue;
            }
            let mut end = start;
            while end < 255 && self.contains(end + 1) {
                end += 1;
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if end == start {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
            e = u16::from(end) + 1;
        }
        Ok(())
    }
}

/// The format parameters of an `a=fmtp` line that the engine acts on (RFC 8866 §6.15).
///
/// Opus parameters follow RFC 7587 §6.1; the telephone-event list follows RFC 4733
/// §2.4.1. Parameters this structure does not model are counted in `unknown` and
/// otherwise dropped: the SDP layer keeps the original line for relaying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fmtp {
    /// Opus `useinbandfec`: the receiver can use in-band FEC.
    pub useinbandfec: Option<bool>,
    /// Opus `usedtx`: the receiver prefers discontinuous transmission.
    pub usedtx: Option<bool>,
    /// Opus `maxplaybackrate`: the highest audio rate the receiver renders, Hz.
    pub maxplaybackrate: Option<u32>,
    /// Opus `sprop-maxcapturerate`: the highest audio rate the sender captures, Hz.
    pub sprop_maxcapturerate: Option<u32>,
    /// Opus `maxaveragebitrate`: the receiver's bitrate ceiling, bit/s.
    pub maxaveragebitrate: Option<u32>,
    /// Opus `stereo`: the receiver prefers stereo.
    pub stereo: Option<bool>,
    /// Opus `sprop-stereo`: the sender is likely to send stereo.
    pub sprop_stereo: Option<bool>,
    /// Opus `cbr`: the receiver prefers constant bitrate.
    pub cbr: Option<bool>,
    /// `minptime`: the shortest packetization time wanted, ms (RFC 7587 §6.1 via RFC 4566).
    pub minptime: Option<u32>,
    /// telephone-event list of supported events.
    pub events: Option<EventSet>,
    /// How many parameters were present that this structure does not model (saturating).
    pub unknown: u8,
}

impl Fmtp {
    /// No parameters.
    pub const EMPTY: Self = Self {
        useinbandfec: None,
        usedtx: None,
        maxplaybackrate: None,
        sprop_maxcapturerate: None,
        maxaveragebitrate: None,
        stereo: None,
        sprop_stereo: None,
        cbr: None,
        minptime: None,
        events: None,
        unknown: 0,
    };

    /// Parses an `a=fmtp` value, `<pt> <parameters>` (with or without the `a=fmtp:`
    /// prefix), and returns the payload type with the parameters.
    ///
    /// ```
    /// use switchboard_codecs::codec::Fmtp;
    /// let (pt, fmtp) = Fmtp::parse("96 useinbandfec=1; maxplaybackrate=16000")?;
    /// assert_eq!((pt, fmtp.useinbandfec, fmtp.maxplaybackrate), (96, Some(true), Some(16000)));
    /// let (pt, fmtp) = Fmtp::parse("101 0-16")?;
    /// assert!(pt == 101 && fmtp.events.is_some_and(|e| e.contains(16)));
    /// # Ok::<(), switchboard_codecs::codec::CodecError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`CodecError::MalformedFmtp`] for a missing or non-numeric payload type, an empty
    /// parameter list or a bad value of a modelled parameter;
    /// [`CodecError::InvalidPayloadType`] above 127.
    pub fn parse(value: &str) -> Result<(u8, Self), CodecError> {
        let value = strip_attribute(value, "fmtp");
        let (pt, params) =
            split_payload_type(value, |reason| CodecError::MalformedFmtp { reason })?;
        Ok((pt, Self::parse_parameters(params)?))
    }

    /// Parses the parameter part of an `fmtp` value (after the payload type).
    ///
    /// # Errors
    ///
    /// As [`Fmtp::parse`].
    pub fn parse_parameters(params: &str) -> Result<Self, CodecError> {
        let mut fmtp = Self::default();
        let mut any = false;
        for param in params.split(';') {
            let param = param.trim();
            if param.is_empty() {
                continue;
            }
            any = true;
            match param.split_once('=') {
                Some((name, value)) => fmtp.set(name.trim(), value.trim())?,
                None if param
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b == b'-' || b == b',' || b == b' ') =>
                {
                    fmtp.events = Some(EventSet::parse(param)?);
                }
                None => fmtp.unknown = fmtp.unknown.saturating_add(1),
            }
        }
        if any {
            Ok(fmtp)
        } else {
            Err(CodecError::MalformedFmtp {
                reason: "no parameters",
            })
        }
    }

    fn set(&mut self, name: &str, value: &str) -> Result<(), CodecError> {
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        if is("useinbandfec") {
            self.useinbandfec = Some(parse_flag(value)?);
        } else if is("usedtx") {
            self.usedtx = Some(parse_flag(value)?);
        } else if is("stereo") {
            self.stereo = Some(parse_flag(value)?);
        } else if is("sprop-stereo") {
            self.sprop_stereo = Some(parse_flag(value)?);
        } else if is("cbr") {
            self.cbr = Some(parse_flag(value)?);
        } else if is("maxplaybackrate") {
            self.maxplaybackrate = Some(parse_number(value)?);
        } else if is("sprop-maxcapturerate") {
            self.sprop_maxcapturerate = Some(parse_number(value)?);
        } else if is("maxaveragebitrate") {
            self.maxaveragebitrate = Some(parse_number(value)?);
        } else if is("minptime") {
            self.minptime = Some(parse_number(value)?);
        } else if is("events") {
            self.events = Some(EventSet::parse(value)?);
        } else {
            self.unknown = self.unknown.saturating_add(1);
        }
        Ok(())
    }

    /// Whether no modelled parameter is set.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        let Self {
            useinbandfec,
            usedtx,
            maxplaybackrate,
            sprop_maxcapturerate,
            maxaveragebitrate,
            stereo,
            sprop_stereo,
            cbr,
            minptime,
            events,
            unknown: _,
        } = self;
        useinbandfec.is_none()
            && usedtx.is_none()
            && maxplaybackrate.is_none()
            && sprop_maxcapturerate.is_none()
            && maxaveragebitrate.is_none()
            && stereo.is_none()
            && sprop_stereo.is_none()
            && cbr.is_none()
            && minptime.is_none()
            && events.is_none()
    }
}

fn parse_flag(value: &str) -> Result<bool, CodecError> {
    match value {
        "0" => Ok(false),
        "1" => Ok(true),
        _ => Err(CodecError::MalformedFmtp {
            reason: "flag is not 0 or 1",
        }),
    }
}

fn parse_number(value: &str) -> Result<u32, CodecError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CodecError::MalformedFmtp {
            reason: "value is not a number",
        });
    }
    value.parse().map_err(|_| CodecError::MalformedFmtp {
        reason: "value is too large",
    })
}

impl fmt::Display for Fmtp {
    /// Writes the parameter part of an `fmtp` value: the event list for telephone-event,
    /// then `name=value` pairs joined by `;`. Unknown parameters are not written.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        if let Some(events) = &self.events {
            write!(f, "{events}")?;
            sep = ";";
        }
        let flags = [
            ("useinbandfec", self.useinbandfec),
            ("usedtx", self.usedtx),
            ("stereo", self.stereo),
            ("sprop-stereo", self.sprop_stereo),
            ("cbr", self.cbr),
        ]
        .map(|(name, v)| (name, v.map(u32::from)));
        let numbers = [
            ("maxplaybackrate", self.maxplaybackrate),
            ("sprop-maxcapturerate", self.sprop_maxcapturerate),
            ("maxaveragebitrate", self.maxaveragebitrate),
            ("minptime", self.minptime),
        ];
        for (name, v) in flags.into_iter().chain(numbers) {
            if let Some(v) = v {
                write!(f, "{sep}{name}={v}")?;
                sep = ";";
            }
        }
        Ok(())
    }
}

/// Strips an optional `a=<name>:` prefix (case-insensitive) and surrounding whitespace.
fn strip_attribute<'a>(value: &'a str, name: &str) -> &'a str {
    let value = value.trim();
    let rest = strip_prefix_ignore_case(value, "a=").unwrap_or(value);
    strip_prefix_ignore_case(rest, name)
        .and_then(|r| r.strip_prefix(':'))
        .unwrap_or(value)
        .trim()
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        s.get(prefix.len()..)
    } else {
        None
    }
}

/// Splits `<pt> <rest>` and checks the payload type.
fn split_payload_type(
    value: &str,
    malformed: impl Fn(&'static str) -> CodecError,
) -> Result<(u8, &str), CodecError> {
    let value = value.trim_start();
    let (pt, rest) = value
        .split_once(|c: char| c.is_ascii_whitespace())
        .ok_or_else(|| malformed("missing payload type or format"))?;
    if pt.is_empty() || !pt.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed("payload type is not a number"));
    }
    let pt: u32 = pt
        .parse()
        .map_err(|_| CodecError::InvalidPayloadType(u32::MAX))?;
    let pt = u8::try_from(pt)
        .ok()
        .filter(|&p| p <= 127)
        .ok_or(CodecError::InvalidPayloadType(pt))?;
    let rest = rest.trim();
    if rest.is_empty() {
        return Err(malformed("missing format after payload type"));
    }
    Ok((pt, rest))
}

/// A negotiated payload format: codec, payload type, RTP clock rate, channels and format
/// parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodecSpec {
    /// The codec.
    pub kind: CodecKind,
    /// The RTP payload type, 0..=127.
    pub payload_type: u8,
    /// The RTP clock rate in Hz.
    pub clock_rate: u32,
    /// The channel count stated in the `rtpmap` (Opus always states 2).
    pub channels: u8,
    /// The format parameters from `a=fmtp`.
    pub fmtp: Fmtp,
}

impl CodecSpec {
    /// A spec for `kind` with its default payload type, clock rate and channels, and no
    /// format parameters.
    #[must_use]
    pub const fn new(kind: CodecKind) -> Self {
        Self {
            kind,
            payload_type: kind.default_payload_type(),
            clock_rate: kind.default_clock_rate(),
            channels: kind.default_channels(),
            fmtp: Fmtp::EMPTY,
        }
    }

    /// The same spec with another payload type.
    #[must_use]
    pub const fn with_payload_type(mut self, payload_type: u8) -> Self {
        self.payload_type = payload_type;
        self
    }

    /// The same spec with another clock rate.
    #[must_use]
    pub const fn with_clock_rate(mut self, clock_rate: u32) -> Self {
        self.clock_rate = clock_rate;
        self
    }

    /// Parses an `a=rtpmap` value, `<pt> <name>/<clock>[/<channels>]` (RFC 8866 §6.6),
    /// with or without the `a=rtpmap:` prefix.
    ///
    /// ```
    /// use switchboard_codecs::codec::{CodecKind, CodecSpec};
    /// let spec = CodecSpec::parse_rtpmap("96 opus/48000/2")?;
    /// assert_eq!((spec.kind, spec.payload_type, spec.clock_rate, spec.channels),
    ///            (CodecKind::Opus, 96, 48000, 2));
    /// assert_eq!(spec.rtpmap().to_string(), "96 opus/48000/2");
    /// # Ok::<(), switchboard_codecs::codec::CodecError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`CodecError::MalformedRtpmap`], [`CodecError::InvalidPayloadType`], or
    /// [`CodecError::UnsupportedEncoding`] for a well-formed map of a codec this crate
    /// does not implement.
    pub fn parse_rtpmap(value: &str) -> Result<Self, CodecError> {
        let malformed = |reason| CodecError::MalformedRtpmap { reason };
        let value = strip_attribute(value, "rtpmap");
        let (payload_type, format) = split_payload_type(value, malformed)?;
        let mut parts = format.split('/');
        let name = parts.next().map(str::trim).unwrap_or_default();
        if name.is_empty() {
            return Err(malformed("missing encoding name"));
        }
        let clock_rate = parts
            .next()
            .map(str::trim)
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u32>().ok())
            .filter(|&r| r > 0)
            .ok_or_else(|| malformed("missing or invalid clock rate"))?;
        let channels = match parts.next().map(str::trim) {
            None => 1,
            Some(c) => c
                .parse::<u8>()
                .ok()
                .filter(|&c| c > 0)
                .ok_or_else(|| malformed("invalid channel count"))?,
        };
        if parts.next().is_some() {
            return Err(malformed("too many '/' fields"));
        }
        let kind = CodecKind::from_encoding_name(name)
            .ok_or(CodecError::UnsupportedEncoding { payload_type })?;
        Ok(Self {
            kind,
            payload_type,
            clock_rate,
            channels,
            fmtp: Fmtp::default(),
        })
    }

    /// The spec for a static payload type listed on an `m=` line without an `rtpmap`
    /// (RFC 3551 §6).
    ///
    /// # Errors
    ///
    /// [`CodecError::UnknownStaticPayloadType`] for a dynamic or unassigned number,
    /// [`CodecError::UnsupportedEncoding`] for a static codec this crate does not
    /// implement (GSM, G.729, ...).
    pub fn from_static_payload_type(payload_type: u8) -> Result<Self, CodecError> {
        let entry = static_payload_type(payload_type)
            .ok_or(CodecError::UnknownStaticPayloadType(payload_type))?;
        let kind = CodecKind::from_encoding_name(entry.encoding_name)
            .ok_or(CodecError::UnsupportedEncoding { payload_type })?;
        Ok(Self {
            kind,
            payload_type,
            clock_rate: entry.clock_rate,
            channels: entry.channels,
            fmtp: Fmtp::default(),
        })
    }

    /// Parses an `a=fmtp` value and stores its parameters in this spec.
    ///
    /// # Errors
    ///
    /// As [`Fmtp::parse`], or [`CodecError::PayloadTypeMismatch`] when the `fmtp` names
    /// another payload type.
    pub fn apply_fmtp(&mut self, value: &str) -> Result<(), CodecError> {
        let (pt, fmtp) = Fmtp::parse(value)?;
        if pt != self.payload_type {
            return Err(CodecError::PayloadTypeMismatch {
                spec: self.payload_type,
                fmtp: pt,
            });
        }
        self.fmtp = fmtp;
        Ok(())
    }

    /// The `a=rtpmap` value for this spec, for `Display` (`96 opus/48000/2`,
    /// `0 PCMU/8000`).
    #[must_use]
    pub const fn rtpmap(&self) -> Rtpmap<'_> {
        Rtpmap(self)
    }

    /// The `a=fmtp` value for this spec (`96 useinbandfec=1`), or `None` when it has no
    /// parameters to state.
    #[must_use]
    pub fn fmtp_value(&self) -> Option<FmtpValue<'_>> {
        (!self.fmtp.is_empty()).then_some(FmtpValue(self))
    }

    /// The audio sample rate the codec runs at by default: 16 000 for G.722 (whose RTP
    /// clock is 8000, RFC 3551 §4.5.2), 48 000 for Opus, otherwise the clock rate.
    #[must_use]
    pub const fn audio_rate(&self) -> u32 {
        match self.kind {
            CodecKind::G722 => 16_000,
            CodecKind::Opus => 48_000,
            _ => self.clock_rate,
        }
    }

    /// Audio samples in a frame of `ptime_ms` at [`audio_rate`](Self::audio_rate).
    #[must_use]
    pub const fn samples_per_frame(&self, ptime_ms: u32) -> usize {
        samples_in(self.audio_rate(), ptime_ms)
    }

    /// RTP timestamp increment for a frame of `ptime_ms` (at the clock rate, so 160 for
    /// 20 ms of G.722).
    #[must_use]
    pub const fn clock_ticks(&self, ptime_ms: u32) -> u32 {
        // At most 2^32 * 2^32 / 1000, which fits u64; the quotient fits u32 for any
        // realistic rate and ptime, and saturates otherwise.
        let ticks = self.clock_rate as u64 * ptime_ms as u64 / 1000;
        if ticks > u32::MAX as u64 {
            u32::MAX
        } else {
            ticks as u32
        }
    }

    /// Checks that an encoder or decoder can be built for this spec.
    fn check_media(&self) -> Result<(), CodecError> {
        let kind = self.kind;
        if !kind.is_audio() {
            return Err(CodecError::NotAudio(kind));
        }
        let clock_ok = match kind {
            CodecKind::Pcmu | CodecKind::Pcma | CodecKind::G722 => self.clock_rate == 8000,
            CodecKind::Opus => self.clock_rate == 48_000,
            _ => self.clock_rate > 0,
        };
        if !clock_ok {
            return Err(CodecError::UnsupportedClockRate {
                kind,
                clock_rate: self.clock_rate,
            });
        }
        let channels_ok = match kind {
            // RFC 7587 §7: always 2 in the rtpmap; the stream may be mono. Accept a
            // sloppy peer's 1 as well.
            CodecKind::Opus => matches!(self.channels, 1 | 2),
            _ => self.channels == 1,
        };
        if !channels_ok {
            return Err(CodecError::UnsupportedChannels {
                kind,
                channels: self.channels,
            });
        }
        Ok(())
    }

    /// The Opus encoder settings this spec asks for: FEC and DTX as the receiver's
    /// `useinbandfec` / `usedtx`, bitrate capped by `maxaveragebitrate` (RFC 7587 §6.1).
    fn opus_config(&self, audio_rate: u32) -> OpusConfig {
        let defaults = OpusConfig::default();
        let bitrate = match self.fmtp.maxaveragebitrate {
            Some(max) => {
                let max = i32::try_from(max).unwrap_or(opus::BITRATE_MAX_BPS);
                defaults
                    .bitrate
                    .min(max)
                    .clamp(opus::BITRATE_MIN_BPS, opus::BITRATE_MAX_BPS)
            }
            None => defaults.bitrate,
        };
        let fec = self.fmtp.useinbandfec.unwrap_or(defaults.fec);
        OpusConfig {
            sample_rate: audio_rate,
            bitrate,
            fec,
            dtx: self.fmtp.usedtx.unwrap_or(false),
            packet_loss_pct: if fec { defaults.packet_loss_pct } else { 0 },
            ..defaults
        }
    }
}

const fn samples_in(audio_rate: u32, ptime_ms: u32) -> usize {
    (audio_rate as u64 * ptime_ms as u64 / 1000) as usize
}

/// `Display` of an `a=rtpmap` value; see [`CodecSpec::rtpmap`].
#[derive(Debug, Clone, Copy)]
pub struct Rtpmap<'a>(&'a CodecSpec);

impl fmt::Display for Rtpmap<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        write!(
            f,
            "{} {}/{}",
            s.payload_type,
            s.kind.encoding_name(),
            s.clock_rate
        )?;
        if s.channels != 1 {
            write!(f, "/{}", s.channels)?;
        }
        Ok(())
    }
}

/// `Display` of an `a=fmtp` value; see [`CodecSpec::fmtp_value`].
#[derive(Debug, Clone, Copy)]
pub struct FmtpValue<'a>(&'a CodecSpec);

impl fmt::Display for FmtpValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.0.payload_type, self.0.fmtp)
    }
}

/// Packetization of an encoder: audio rate, frame duration and samples per frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameFormat {
    /// Audio sample rate in Hz.
    pub audio_rate: u32,
    /// Frame duration in milliseconds.
    pub ptime_ms: u32,
    /// Samples per frame at the audio rate.
    pub samples: usize,
}

/// Longest packetization the sample codecs accept, in ms.
const MAX_PTIME_MS: u32 = 200;

fn frame_format(
    kind: CodecKind,
    audio_rate: u32,
    ptime_ms: u32,
) -> Result<FrameFormat, CodecError> {
    let ok = match kind {
        CodecKind::Opus => matches!(ptime_ms, 5 | 10 | 20 | 40 | 60),
        _ => {
            (1..=MAX_PTIME_MS).contains(&ptime_ms)
                && (u64::from(audio_rate) * u64::from(ptime_ms)) % 1000 == 0
        }
    };
    if !ok {
        return Err(CodecError::InvalidPtime { kind, ptime_ms });
    }
    Ok(FrameFormat {
        audio_rate,
        ptime_ms,
        samples: samples_in(audio_rate, ptime_ms),
    })
}

/// Checks `audio_rate` against what the codec can run at.
fn check_audio_rate(spec: &CodecSpec, audio_rate: u32) -> Result<(), CodecError> {
    let ok = match spec.kind {
        CodecKind::Opus => matches!(audio_rate, 8000 | 12000 | 16000 | 24000 | 48000),
        _ => audio_rate == spec.audio_rate(),
    };
    if ok {
        Ok(())
    } else {
        Err(CodecError::UnsupportedAudioRate {
            kind: spec.kind,
            audio_rate,
        })
    }
}

fn need(needed: usize, available: usize) -> Result<(), CodecError> {
    if available >= needed {
        Ok(())
    } else {
        Err(CodecError::BufferTooSmall { needed, available })
    }
}

/// An encoder for one outgoing stream, dispatching on the codec without boxing.
///
/// ```
/// use switchboard_codecs::codec::{CodecKind, CodecSpec, Encoder};
/// let mut enc = Encoder::new(&CodecSpec::new(CodecKind::G722), 20)?;
/// let pcm = vec![0i16; enc.frame().samples]; // 320 samples at 16 kHz
/// let mut payload = vec![0u8; enc.max_payload_bytes()];
/// assert_eq!(enc.encode(&pcm, &mut payload)?, 160);
/// # Ok::<(), switchboard_codecs::codec::CodecError>(())
/// ```
#[derive(Debug)]
#[non_exhaustive]
#[allow(
    clippy::large_enum_variant,
    reason = "the G.722 state (about 300 bytes) stays inline: one value per call leg, \
              built once, so no heap allocation or pointer chase per frame"
)]
pub enum Encoder {
    /// G.711 µ-law.
    Pcmu {
        /// Packetization.
        frame: FrameFormat,
    },
    /// G.711 A-law.
    Pcma {
        /// Packetization.
        frame: FrameFormat,
    },
    /// G.722 at 64 kbit/s.
    G722 {
        /// Codec state.
        codec: G722Encoder,
        /// Packetization.
        frame: FrameFormat,
    },
    /// Opus through libopus.
    Opus {
        /// Codec state.
        codec: OpusEncoder,
        /// Packetization.
        frame: FrameFormat,
    },
    /// L16, network byte order.
    L16 {
        /// Packetization.
        frame: FrameFormat,
    },
}

impl Encoder {
    /// An encoder for `spec` producing `ptime_ms` frames at the spec's
    /// [`audio_rate`](CodecSpec::audio_rate).
    ///
    /// # Errors
    ///
    /// [`CodecError::NotAudio`], [`CodecError::UnsupportedClockRate`],
    /// [`CodecError::UnsupportedChannels`], [`CodecError::InvalidPtime`] (Opus: 5, 10,
    /// 20, 40 or 60 ms; others 1–200 ms with a whole number of samples), or an Opus error.
    pub fn new(spec: &CodecSpec, ptime_ms: u32) -> Result<Self, CodecError> {
        Self::with_audio_rate(spec, ptime_ms, spec.audio_rate())
    }

    /// As [`new`](Self::new), at `audio_rate`: Opus runs at 8000, 12000, 16000, 24000 or
    /// 48000; the other codecs only at their fixed rate.
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new), and [`CodecError::UnsupportedAudioRate`].
    pub fn with_audio_rate(
        spec: &CodecSpec,
        ptime_ms: u32,
        audio_rate: u32,
    ) -> Result<Self, CodecError> {
        spec.check_media()?;
        check_audio_rate(spec, audio_rate)?;
        let frame = frame_format(spec.kind, audio_rate, ptime_ms)?;
        Ok(match spec.kind {
            CodecKind::Pcmu => Self::Pcmu { frame },
            CodecKind::Pcma => Self::Pcma { frame },
            CodecKind::G722 => Self::G722 {
                codec: G722Encoder::new(),
                frame,
            },
            CodecKind::Opus => Self::Opus {
                codec: OpusEncoder::new(&spec.opus_config(audio_rate))?,
                frame,
            },
            CodecKind::L16 => Self::L16 { frame },
            kind @ (CodecKind::TelephoneEvent | CodecKind::ComfortNoise) => {
                return Err(CodecError::NotAudio(kind));
            }
        })
    }

    /// The codec.
    #[must_use]
    pub const fn kind(&self) -> CodecKind {
        match self {
            Self::Pcmu { .. } => CodecKind::Pcmu,
            Self::Pcma { .. } => CodecKind::Pcma,
            Self::G722 { .. } => CodecKind::G722,
            Self::Opus { .. } => CodecKind::Opus,
            Self::L16 { .. } => CodecKind::L16,
        }
    }

    /// The packetization this encoder was built for.
    #[must_use]
    pub const fn frame(&self) -> FrameFormat {
        match self {
            Self::Pcmu { frame }
            | Self::Pcma { frame }
            | Self::G722 { frame, .. }
            | Self::Opus { frame, .. }
            | Self::L16 { frame } => *frame,
        }
    }

    /// The audio sample rate in Hz.
    #[must_use]
    pub const fn audio_rate(&self) -> u32 {
        self.frame().audio_rate
    }

    /// Audio samples in a frame of `ptime_ms` at this encoder's audio rate.
    #[must_use]
    pub const fn samples_per_frame(&self, ptime_ms: u32) -> usize {
        samples_in(self.audio_rate(), ptime_ms)
    }

    /// A payload buffer size that always holds one encoded frame of the configured ptime
    /// (for Opus, 1275 bytes per started 20 ms plus 7 bytes of framing, RFC 6716 §3.2).
    #[must_use]
    pub const fn max_payload_bytes(&self) -> usize {
        let frame = self.frame();
        match self {
            Self::Pcmu { .. } | Self::Pcma { .. } => frame.samples,
            Self::G722 { .. } => frame.samples / 2,
            Self::L16 { .. } => frame.samples * 2,
            Self::Opus { .. } => opus::MAX_PACKET_BYTES * frame.ptime_ms.div_ceil(20) as usize + 7,
        }
    }

    /// The Opus encoder, for codec-specific tuning (bitrate, expected loss), or `None`.
    pub fn as_opus_mut(&mut self) -> Option<&mut OpusEncoder> {
        match self {
            Self::Opus { codec, .. } => Some(codec),
            _ => None,
        }
    }

    /// Encodes one frame of mono PCM at the audio rate into `out`; returns the payload
    /// length in bytes.
    ///
    /// The sample codecs take any length (G.722 an even one) and need `out` to hold the
    /// whole result (G.711: 1 byte per sample, G.722: 1 per 2, L16: 2 per sample). Opus
    /// takes 2.5–60 ms frames (see [`OpusEncoder::encode`]).
    ///
    /// # Errors
    ///
    /// [`CodecError::BufferTooSmall`], [`CodecError::InvalidFrameLength`], or an Opus
    /// error.
    pub fn encode(&mut self, pcm: &[i16], out: &mut [u8]) -> Result<usize, CodecError> {
        match self {
            Self::Pcmu { .. } => {
                need(pcm.len(), out.len())?;
                g711::ulaw_encode_slice(pcm, out);
                Ok(pcm.len())
            }
            Self::Pcma { .. } => {
                need(pcm.len(), out.len())?;
                g711::alaw_encode_slice(pcm, out);
                Ok(pcm.len())
            }
            Self::G722 { codec, .. } => {
                if pcm.len() % 2 != 0 {
                    return Err(CodecError::InvalidFrameLength {
                        kind: CodecKind::G722,
                        samples: pcm.len(),
                    });
                }
                need(pcm.len() / 2, out.len())?;
                Ok(codec.encode(pcm, out))
            }
            Self::Opus { codec, .. } => Ok(codec.encode(pcm, out)?),
            Self::L16 { .. } => {
                need(pcm.len() * 2, out.len())?;
                Ok(l16::encode(pcm, out))
            }
        }
    }

    /// Resets the codec state, as for a new stream.
    ///
    /// # Errors
    ///
    /// An Opus error.
    pub fn reset(&mut self) -> Result<(), CodecError> {
        match self {
            Self::G722 { codec, .. } => codec.reset(),
            Self::Opus { codec, .. } => codec.reset()?,
            Self::Pcmu { .. } | Self::Pcma { .. } | Self::L16 { .. } => {}
        }
        Ok(())
    }
}

/// A decoder for one incoming stream, dispatching on the codec without boxing.
#[derive(Debug)]
#[non_exhaustive]
#[allow(
    clippy::large_enum_variant,
    reason = "the G.722 state (about 300 bytes) stays inline: one value per call leg, \
              built once, so no heap allocation or pointer chase per frame"
)]
pub enum Decoder {
    /// G.711 µ-law.
    Pcmu,
    /// G.711 A-law.
    Pcma,
    /// G.722 at 64 kbit/s.
    G722(G722Decoder),
    /// Opus through libopus.
    Opus(OpusDecoder),
    /// L16 at the given audio (= clock) rate.
    L16(u32),
}

impl Decoder {
    /// A decoder for `spec` at the spec's [`audio_rate`](CodecSpec::audio_rate).
    ///
    /// # Errors
    ///
    /// [`CodecError::NotAudio`], [`CodecError::UnsupportedClockRate`],
    /// [`CodecError::UnsupportedChannels`], or an Opus error.
    pub fn new(spec: &CodecSpec) -> Result<Self, CodecError> {
        Self::with_audio_rate(spec, spec.audio_rate())
    }

    /// As [`new`](Self::new), at `audio_rate`: Opus decodes at 8000, 12000, 16000, 24000
    /// or 48000; the other codecs only at their fixed rate.
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new), and [`CodecError::UnsupportedAudioRate`].
    pub fn with_audio_rate(spec: &CodecSpec, audio_rate: u32) -> Result<Self, CodecError> {
        spec.check_media()?;
        check_audio_rate(spec, audio_rate)?;
        Ok(match spec.kind {
            CodecKind::Pcmu => Self::Pcmu,
            CodecKind::Pcma => Self::Pcma,
            CodecKind::G722 => Self::G722(G722Decoder::new()),
            CodecKind::Opus => Self::Opus(OpusDecoder::new(audio_rate)?),
            CodecKind::L16 => Self::L16(audio_rate),
            kind @ (CodecKind::TelephoneEvent | CodecKind::ComfortNoise) => {
                return Err(CodecError::NotAudio(kind));
            }
        })
    }

    /// The codec.
    #[must_use]
    pub const fn kind(&self) -> CodecKind {
        match self {
            Self::Pcmu => CodecKind::Pcmu,
            Self::Pcma => CodecKind::Pcma,
            Self::G722(_) => CodecKind::G722,
            Self::Opus(_) => CodecKind::Opus,
            Self::L16(_) => CodecKind::L16,
        }
    }

    /// The audio sample rate of the output in Hz.
    #[must_use]
    pub fn audio_rate(&self) -> u32 {
        match self {
            Self::Pcmu | Self::Pcma => 8000,
            Self::G722(_) => 16_000,
            Self::Opus(codec) => codec.sample_rate(),
            Self::L16(rate) => *rate,
        }
    }

    /// Audio samples in a frame of `ptime_ms` at this decoder's audio rate.
    #[must_use]
    pub fn samples_per_frame(&self, ptime_ms: u32) -> usize {
        samples_in(self.audio_rate(), ptime_ms)
    }

    /// Decodes one RTP payload into `out`; returns the number of samples written.
    ///
    /// `out` must hold the whole frame (G.711: 1 sample per byte, G.722: 2 per byte, L16:
    /// 1 per 2 bytes, Opus: the packet's duration, up to 120 ms).
    ///
    /// # Errors
    ///
    /// [`CodecError::BufferTooSmall`], [`CodecError::MalformedPayload`] (L16 with an odd
    /// length), or an Opus error such as [`OpusError::InvalidPacket`].
    pub fn decode(&mut self, payload: &[u8], out: &mut [i16]) -> Result<usize, CodecError> {
        match self {
            Self::Pcmu => {
                need(payload.len(), out.len())?;
                g711::ulaw_decode_slice(payload, out);
                Ok(payload.len())
            }
            Self::Pcma => {
                need(payload.len(), out.len())?;
                g711::alaw_decode_slice(payload, out);
                Ok(payload.len())
            }
            Self::G722(codec) => {
                need(payload.len() * 2, out.len())?;
                Ok(codec.decode(payload, out))
            }
            Self::Opus(codec) => Ok(codec.decode(payload, out)?),
            Self::L16(_) => {
                if payload.len() % 2 != 0 {
                    return Err(CodecError::MalformedPayload {
                        kind: CodecKind::L16,
                        len: payload.len(),
                    });
                }
                need(payload.len() / 2, out.len())?;
                Ok(l16::decode(payload, out))
            }
        }
    }

    /// Fills `out` for one lost frame of `out.len()` samples and returns how many samples
    /// it wrote.
    ///
    /// Opus runs libopus packet-loss concealment (`out.len()` a multiple of 2.5 ms) and
    /// returns `out.len()`. G.711, G.722 and L16 have no concealment of their own: they
    /// write nothing and return `Ok(0)`, and the caller repeats the previous frame with a
    /// fade (ITU-T G.711 Appendix I describes a fuller,
    /// pitch-based method).
    ///
    /// # Errors
    ///
    /// An Opus error.
    pub fn conceal(&mut self, out: &mut [i16]) -> Result<usize, CodecError> {
        match self {
            Self::Opus(codec) => Ok(codec.decode_lost(out)?),
            Self::Pcmu | Self::Pcma | Self::G722(_) | Self::L16(_) => Ok(0),
        }
    }

    /// Recovers the lost frame before `next_payload` from Opus in-band FEC (RFC 6716
    /// §2.1.7), writing `out.len()` samples; the other codecs carry no FEC and return
    /// `Ok(0)` like [`conceal`](Self::conceal).
    ///
    /// # Errors
    ///
    /// An Opus error.
    pub fn decode_fec(
        &mut self,
        next_payload: &[u8],
        out: &mut [i16],
    ) -> Result<usize, CodecError> {
        match self {
            Self::Opus(codec) => Ok(codec.decode_fec(next_payload, out)?),
            Self::Pcmu | Self::Pcma | Self::G722(_) | Self::L16(_) => Ok(0),
        }
    }

    /// Resets the codec state, as for a new stream.
    ///
    /// # Errors
    ///
    /// An Opus error.
    pub fn reset(&mut self) -> Result<(), CodecError> {
        match self {
            Self::G722(codec) => codec.reset(),
            Self::Opus(codec) => codec.reset()?,
            Self::Pcmu | Self::Pcma | Self::L16(_) => {}
        }
        Ok(())
    }
}

/// A negotiated codec for one call leg: its [`CodecSpec`] with the [`Encoder`] for the
/// outgoing stream and the [`Decoder`] for the incoming one.
#[derive(Debug)]
pub struct Codec {
    spec: CodecSpec,
    encoder: Encoder,
    decoder: Decoder,
}

impl Codec {
    /// Builds the encoder (framed at `ptime_ms`) and decoder for `spec` at its default
    /// audio rate.
    ///
    /// # Errors
    ///
    /// As [`Encoder::new`] and [`Decoder::new`].
    pub fn new(spec: &CodecSpec, ptime_ms: u32) -> Result<Self, CodecError> {
        Ok(Self {
            spec: *spec,
            encoder: Encoder::new(spec, ptime_ms)?,
            decoder: Decoder::new(spec)?,
        })
    }

    /// The negotiated payload format.
    #[must_use]
    pub const fn spec(&self) -> &CodecSpec {
        &self.spec
    }

    /// The outgoing stream's encoder.
    pub fn encoder(&mut self) -> &mut Encoder {
        &mut self.encoder
    }

    /// The incoming stream's decoder.
    pub fn decoder(&mut self) -> &mut Decoder {
        &mut self.decoder
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtpmap_examples() {
        let cases = [
            ("0 PCMU/8000", CodecKind::Pcmu, 0, 8000, 1),
            ("8 pcma/8000", CodecKind::Pcma, 8, 8000, 1),
            ("9 G722/8000", CodecKind::G722, 9, 8000, 1),
            ("96 opus/48000/2", CodecKind::Opus, 96, 48000, 2),
            ("111 OPUS/48000/2", CodecKind::Opus, 111, 48000, 2),
            (
                "101 telephone-event/8000",
                CodecKind::TelephoneEvent,
                101,
                8000,
                1,
            ),
            ("a=rtpmap:97 L16/16000", CodecKind::L16, 97, 16000, 1),
            ("  13   cn/8000 \r\n", CodecKind::ComfortNoise, 13, 8000, 1),
            (
                "A=RTPMAP:100 Telephone-Event/48000",
                CodecKind::TelephoneEvent,
                100,
                48000,
                1,
            ),
        ];
        for (text, kind, pt, rate, ch) in cases {
            let s = CodecSpec::parse_rtpmap(text).unwrap();
            assert_eq!(
                (s.kind, s.payload_type, s.clock_rate, s.channels),
                (kind, pt, rate, ch),
                "{text}"
            );
        }
    }

    #[test]
    fn rtpmap_errors() {
        let malformed = [
            "",
            "96",
            "96 ",
            "96 opus",
            "96 opus/",
            "96 /48000",
            "96 opus/x",
            "96 opus/0",
            "96 opus/48000/0",
            "96 opus/48000/2/1",
            "x opus/48000",
            "-1 opus/48000",
            "96 opus/-48000",
            "96 opus/48000/300",
            "a=rtpmap:",
            "96opus/48000",
        ];
        for text in malformed {
            assert!(
                matches!(
                    CodecSpec::parse_rtpmap(text),
                    Err(CodecError::MalformedRtpmap { .. })
                ),
                "{text:?}: {:?}",
                CodecSpec::parse_rtpmap(text)
            );
        }
        assert_eq!(
            CodecSpec::parse_rtpmap("128 PCMU/8000"),
            Err(CodecError::InvalidPayloadType(128))
        );
        assert_eq!(
            CodecSpec::parse_rtpmap("18 G729/8000"),
            Err(CodecError::UnsupportedEncoding { payload_type: 18 })
        );
    }

    #[test]
    fn rtpmap_round_trips() {
        for text in [
            "0 PCMU/8000",
            "96 opus/48000/2",
            "101 telephone-event/8000",
            "9 G722/8000",
            "97 L16/16000",
        ] {
            assert_eq!(
                CodecSpec::parse_rtpmap(text).unwrap().rtpmap().to_string(),
                text
            );
        }
        assert_eq!(
            CodecSpec::parse_rtpmap("8 pcma/8000")
                .unwrap()
                .rtpmap()
                .to_string(),
            "8 PCMA/8000"
        );
    }

    #[test]
    fn fmtp_examples() {
        let (pt, f) = Fmtp::parse("96 useinbandfec=1; maxplaybackrate=16000").unwrap();
        assert_eq!(pt, 96);
        assert_eq!(f.useinbandfec, Some(true));
        assert_eq!(f.maxplaybackrate, Some(16000));
        assert_eq!(f.to_string(), "useinbandfec=1;maxplaybackrate=16000");

        let (pt, f) = Fmtp::parse("101 0-16").unwrap();
        assert_eq!(pt, 101);
        let events = f.events.unwrap();
        assert!((0..=16).all(|e| events.contains(e)) && !events.contains(17));
        assert_eq!(f.to_string(), "0-16");

        let (_, f) = Fmtp::parse("a=fmtp:101 0-15,66,70-72").unwrap();
        assert_eq!(f.events.unwrap().to_string(), "0-15,66,70-72");

        let (_, f) = Fmtp::parse(
            "111 minptime=10;useinbandfec=1;usedtx=0;stereo=0;sprop-stereo=0;cbr=1;\
             maxaveragebitrate=20000;sprop-maxcapturerate=16000;x-google-foo=3",
        )
        .unwrap();
        assert_eq!(f.minptime, Some(10));
        assert_eq!(f.usedtx, Some(false));
        assert_eq!(f.cbr, Some(true));
        assert_eq!(f.maxaveragebitrate, Some(20000));
        assert_eq!(f.sprop_maxcapturerate, Some(16000));
        assert_eq!(f.unknown, 1);
        let reparsed = Fmtp::parse_parameters(&f.to_string()).unwrap();
        assert_eq!(
            Fmtp {
                unknown: 1,
                ..reparsed
            },
            f
        );

        let (_, f) = Fmtp::parse("101 events=0-15").unwrap();
        assert_eq!(f.events, Some(EventSet::DTMF));
    }

    #[test]
    fn fmtp_errors() {
        for text in [
            "",
            "96",
            "96 ",
            "x useinbandfec=1",
            "96 useinbandfec=2",
            "96 maxplaybackrate=abc",
            "96 maxplaybackrate=",
            "101 0-256",
            "101 15-0",
            "101 0-",
            "101 ,",
            "101 1,,2",
            "96 ;;",
            "96 maxaveragebitrate=99999999999",
        ] {
            assert!(Fmtp::parse(text).is_err(), "{text:?}");
        }
        assert_eq!(
            Fmtp::parse("200 0-15"),
            Err(CodecError::InvalidPayloadType(200))
        );
    }

    #[test]
    fn apply_fmtp_checks_payload_type() {
        let mut spec = CodecSpec::parse_rtpmap("96 opus/48000/2").unwrap();
        spec.apply_fmtp("96 useinbandfec=1").unwrap();
        assert_eq!(spec.fmtp_value().unwrap().to_string(), "96 useinbandfec=1");
        assert_eq!(
            spec.apply_fmtp("97 useinbandfec=1"),
            Err(CodecError::PayloadTypeMismatch { spec: 96, fmtp: 97 })
        );
        assert!(CodecSpec::new(CodecKind::Pcmu).fmtp_value().is_none());
    }

    #[test]
    fn static_table() {
        for (pt, kind) in [
            (0, CodecKind::Pcmu),
            (8, CodecKind::Pcma),
            (9, CodecKind::G722),
            (13, CodecKind::ComfortNoise),
        ] {
            let s = CodecSpec::from_static_payload_type(pt).unwrap();
            assert_eq!((s.kind, s.clock_rate, s.channels), (kind, 8000, 1));
            assert_eq!(kind.static_payload_type(), Some(pt));
        }
        let l16 = CodecSpec::from_static_payload_type(10).unwrap();
        assert_eq!(
            (l16.kind, l16.clock_rate, l16.channels),
            (CodecKind::L16, 44100, 2)
        );
        assert_eq!(
            CodecSpec::from_static_payload_type(18),
            Err(CodecError::UnsupportedEncoding { payload_type: 18 })
        );
        for pt in [1, 2, 19, 34, 96, 127] {
            assert_eq!(
                CodecSpec::from_static_payload_type(pt),
                Err(CodecError::UnknownStaticPayloadType(pt))
            );
        }
    }

    #[test]
    fn kinds_and_rates() {
        let g722 = CodecSpec::new(CodecKind::G722);
        assert_eq!((g722.clock_rate, g722.audio_rate()), (8000, 16000));
        assert_eq!(
            (g722.samples_per_frame(20), g722.clock_ticks(20)),
            (320, 160)
        );
        let opus = CodecSpec::new(CodecKind::Opus);
        assert_eq!(
            (opus.payload_type, opus.channels, opus.clock_ticks(20)),
            (111, 2, 960)
        );
        for kind in CodecKind::ALL {
            assert_eq!(
                CodecKind::from_encoding_name(kind.encoding_name()),
                Some(kind)
            );
            assert_eq!(
                CodecKind::from_encoding_name(&kind.encoding_name().to_uppercase()),
                Some(kind)
            );
        }
        assert_eq!(CodecKind::from_encoding_name("G729"), None);
    }

    #[test]
    fn event_set_formats_edges() {
        let mut set = EventSet::new();
        assert!(set.is_empty());
        assert_eq!(set.to_string(), "");
        set.insert(255);
        set.insert(0);
        set.insert(63);
        set.insert(64);
        assert_eq!(set.to_string(), "0,63-64,255");
        assert_eq!(EventSet::parse("0-255").unwrap().to_string(), "0-255");
    }
}
