//! Typed NG requests: the command, the call and tag keys, and every option of rtpengine 10.5's
//! offer/answer family, parsed from a decoded dictionary.
//!
//! Keys and flags are matched case-insensitively with hyphens and spaces equivalent
//! (`call-id` = `call id`, `record-call` = `record call`); the first occurrence of a key wins.
//! Numbers may be integers or decimal strings. Flags may also carry options rtpengine-style:
//! `replace-origin`, `codec-strip-PCMA`, `rtcp-mux-demux`, `ICE=remove`, `key=value`.
//! Unknown keys are ignored (as rtpengine does) but listed in [`NgOptions::unknown_keys`];
//! unknown flags are kept in [`NgOptions::unknown_flags`] so the reply can warn about them.

use std::net::IpAddr;

use thiserror::Error;

use crate::bencode::Value;

/// An NG command (rtpengine 10.5's set plus `pause recording` and `connect`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Command {
    /// `ping`
    Ping,
    /// `offer`
    Offer,
    /// `answer`
    Answer,
    /// `delete`
    Delete,
    /// `query`
    Query,
    /// `list`
    List,
    /// `statistics`
    Statistics,
    /// `start recording`
    StartRecording,
    /// `stop recording`
    StopRecording,
    /// `pause recording`
    PauseRecording,
    /// `start forwarding`
    StartForwarding,
    /// `stop forwarding`
    StopForwarding,
    /// `block DTMF`
    BlockDtmf,
    /// `unblock DTMF`
    UnblockDtmf,
    /// `block media`
    BlockMedia,
    /// `unblock media`
    UnblockMedia,
    /// `silence media`
    SilenceMedia,
    /// `unsilence media`
    UnsilenceMedia,
    /// `play media`
    PlayMedia,
    /// `stop media`
    StopMedia,
    /// `play DTMF`
    PlayDtmf,
    /// `publish`
    Publish,
    /// `subscribe request`
    SubscribeRequest,
    /// `subscribe answer`
    SubscribeAnswer,
    /// `unsubscribe`
    Unsubscribe,
    /// `connect`
    Connect,
}

const COMMANDS: &[(&str, Command)] = &[
    ("ping", Command::Ping),
    ("offer", Command::Offer),
    ("answer", Command::Answer),
    ("delete", Command::Delete),
    ("query", Command::Query),
    ("list", Command::List),
    ("statistics", Command::Statistics),
    ("start recording", Command::StartRecording),
    ("stop recording", Command::StopRecording),
    ("pause recording", Command::PauseRecording),
    ("start forwarding", Command::StartForwarding),
    ("stop forwarding", Command::StopForwarding),
    ("block DTMF", Command::BlockDtmf),
    ("unblock DTMF", Command::UnblockDtmf),
    ("block media", Command::BlockMedia),
    ("unblock media", Command::UnblockMedia),
    ("silence media", Command::SilenceMedia),
    ("unsilence media", Command::UnsilenceMedia),
    ("play media", Command::PlayMedia),
    ("stop media", Command::StopMedia),
    ("play DTMF", Command::PlayDtmf),
    ("publish", Command::Publish),
    ("subscribe request", Command::SubscribeRequest),
    ("subscribe answer", Command::SubscribeAnswer),
    ("unsubscribe", Command::Unsubscribe),
    ("connect", Command::Connect),
];

impl Command {
    /// Parses a command name: exact (case-sensitive, like rtpengine), hyphens accepted for spaces.
    #[must_use]
    pub fn from_name(name: &[u8]) -> Option<Command> {
        COMMANDS
            .iter()
            .find(|(n, _)| {
                n.len() == name.len()
                    && n.bytes()
                        .zip(name)
                        .all(|(a, &b)| a == b || (a == b' ' && b == b'-'))
            })
            .map(|(_, c)| *c)
    }

    /// The canonical name, as rtpengine spells it.
    #[must_use]
    pub fn name(self) -> &'static str {
        COMMANDS
            .iter()
            .find(|(_, c)| *c == self)
            .map_or("", |(n, _)| n)
    }

    /// Every command, in rtpengine's order.
    pub fn all() -> impl Iterator<Item = Command> {
        COMMANDS.iter().map(|(_, c)| *c)
    }
}

/// An NG error with rtpengine's exact `error-reason` text where rtpengine has one.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum NgError {
    /// No `command` string.
    #[error("Dictionary contains no key \"command\"")]
    NoCommand,
    /// A `command` this server does not know.
    #[error("Unrecognized command")]
    UnknownCommand,
    /// `call-id` missing or not a string.
    #[error("No call-id in message")]
    NoCallId,
    /// `from-tag` missing or not a string.
    #[error("No from-tag in message")]
    NoFromTag,
    /// `to-tag` missing in an answer.
    #[error("No to-tag in message")]
    NoToTag,
    /// `sdp` missing, empty or not a string.
    #[error("No SDP body in message")]
    NoSdp,
    /// The call (or the tag the request names) does not exist.
    #[error("Unknown call-id")]
    UnknownCallId,
    /// The call does not exist, for the media and subscription commands (rtpengine spells it
    /// with a capital `ID` there).
    #[error("Unknown call-ID")]
    UnknownCall,
    /// A `from-tag` (or `from-tags` entry) that names no party of the call.
    #[error("From-tag given, but no such tag exists")]
    NoSuchFromTag,
    /// A `to-tag` that names no party of the call.
    #[error("To-tag given, but no such tag exists")]
    NoSuchToTag,
    /// A `label` that names no party of the call.
    #[error("No call participant with given label")]
    NoSuchLabel,
    /// A media command without a party selector (`from-tag`, `to-tag`, `label`, `all`).
    #[error("No participant party specified")]
    NoParty,
    /// `subscribe request` without any source party.
    #[error("No monologues matched")]
    NoMonologues,
    /// `subscribe answer` for a to-tag that is not a subscription, or with SDP that does not
    /// fit the subscription.
    #[error("Failed to process subscription answer")]
    SubscriptionAnswer,
    /// `subscribe answer` for a to-tag no party has.
    #[error("To-tag not found")]
    ToTagNotFound,
    /// `play media` without `file` or `blob`.
    #[error("No media file specified")]
    NoMediaFile,
    /// `play DTMF` without a valid `code`/`digit`.
    #[error("Out of range 'code' specified")]
    DtmfCode,
    /// A request that names the same party twice where two different parties are needed
    /// (`connect` of a tag to itself, a subscription to itself).
    #[error("Cannot connect a party to itself")]
    SameParty,
    /// `subscribe request` with a `to-tag` that already names a party.
    #[error("To-tag already in use")]
    TagInUse,
    /// `delete` with flag `fatal` for a call or tags that do not exist.
    #[error("Call-ID not found or tags didn't match")]
    CallNotFound,
    /// The SDP body is not valid SDP.
    #[error("Failed to parse SDP")]
    SdpParse,
    /// A media section without a connection address.
    #[error("Incomplete SDP specification")]
    IncompleteSdp,
    /// No free port pair.
    #[error("Ran out of ports")]
    OutOfPorts,
    /// `list` with a negative `limit`.
    #[error("invalid limit, must be >= 0")]
    InvalidLimit,
    /// An option whose value has the wrong type or an unknown value.
    #[error("Invalid value for key \"{key}\": expected {expected}")]
    InvalidValue {
        /// The key as received.
        key: String,
        /// What was expected.
        expected: &'static str,
    },
    /// A command or option that needs functionality not built yet.
    #[error("Unsupported: {what}")]
    Unsupported {
        /// What was asked for, naming the option.
        what: String,
    },
}

/// IP address family, as NG spells it (`IP4`, `IP6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressFamily {
    /// IPv4
    Ip4,
    /// IPv6
    Ip6,
}

impl AddressFamily {
    /// The family of an address.
    #[must_use]
    pub fn of(addr: &IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => AddressFamily::Ip4,
            IpAddr::V6(_) => AddressFamily::Ip6,
        }
    }

    /// `IP4` / `IP6`, as in SDP `c=` lines.
    #[must_use]
    pub fn sdp_name(self) -> &'static str {
        match self {
            AddressFamily::Ip4 => "IP4",
            AddressFamily::Ip6 => "IP6",
        }
    }

    /// `IPv4` / `IPv6`, as in query replies.
    #[must_use]
    pub fn query_name(self) -> &'static str {
        match self {
            AddressFamily::Ip4 => "IPv4",
            AddressFamily::Ip6 => "IPv6",
        }
    }

    /// Parses `IP4`/`IP6` (also `IPv4`/`IPv6`), case-insensitively.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "ip4" | "ipv4" => Some(AddressFamily::Ip4),
            "ip6" | "ipv6" => Some(AddressFamily::Ip6),
            _ => None,
        }
    }
}

/// The `ICE` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IceMode {
    /// `remove`: strip ICE attributes.
    Remove,
    /// `force`: always offer ICE.
    Force,
    /// `force-relay`: offer only relay candidates.
    ForceRelay,
    /// `default`: follow the offer.
    Default,
    /// `optional`: ICE if the peer wants it.
    Optional,
    /// `passthrough`: leave ICE attributes as they are.
    Passthrough,
}

/// Boolean flags of the `flags` list that this server acts on or knows to be harmless.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[allow(clippy::struct_excessive_bools)]
pub struct Flags {
    /// `trust address`: use SDP addresses (the default).
    pub trust_address: bool,
    /// `SIP source address`: use `received from` instead of the SDP address.
    pub sip_source_address: bool,
    /// `symmetric`: send from the port the peer sends to (the default).
    pub symmetric: bool,
    /// `asymmetric`: do not learn the peer's address from its packets.
    pub asymmetric: bool,
    /// `unidirectional`: learn the endpoint even if media only flows one way.
    pub unidirectional: bool,
    /// `strict source`: drop packets from other than the learned or given address.
    pub strict_source: bool,
    /// `media handover`: let the learned address change during the call.
    pub media_handover: bool,
    /// `port latching`: keep local ports when the remote endpoint changes (the default here).
    pub port_latching: bool,
    /// `no port latching`.
    pub no_port_latching: bool,
    /// `loop protect`: mark SDP and pass already-marked SDP through.
    pub loop_protect: bool,
    /// `no rtcp attribute`: omit `a=rtcp`.
    pub no_rtcp_attribute: bool,
    /// `full rtcp attribute`: `a=rtcp:PORT IN IP4 ADDR`.
    pub full_rtcp_attribute: bool,
    /// `fatal`: `delete` of an unknown call is an error.
    pub fatal: bool,
    /// `fast`: accepted for compatibility; rtpengine 10.5 ignores it.
    pub fast: bool,
    /// `all`: the selector for media commands.
    pub all: bool,
    /// `allow transcoding`: harmless when no transcoding is needed.
    pub allow_transcoding: bool,
    /// `always transcode`.
    pub always_transcode: bool,
    /// `record call`.
    pub record_call: bool,
    /// `inject DTMF`.
    pub inject_dtmf: bool,
    /// `detect DTMF`.
    pub detect_dtmf: bool,
    /// `original sendrecv`: keep the direction attribute (the default here).
    pub original_sendrecv: bool,
    /// `strip extmap`: remove `a=extmap` lines.
    pub strip_extmap: bool,
    /// `reset`: reset ICE/DTLS state (no effect without ICE).
    pub reset: bool,
    /// `no jitter buffer` (no effect: relaying does not buffer).
    pub no_jitter_buffer: bool,
    /// `directional` (`connect`: one way only).
    pub directional: bool,
    /// `bidirectional` (`connect`: both ways; `subscribe request`: the subscriber may talk).
    pub bidirectional: bool,
}

/// The `replace` list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[allow(clippy::struct_excessive_bools)]
pub struct ReplaceOptions {
    /// `origin`: the `o=` address becomes the relay's.
    pub origin: bool,
    /// `session connection` (the session `c=` is always rewritten).
    pub session_connection: bool,
    /// `SDP version`: bump `o=` version only when the SDP changes.
    pub sdp_version: bool,
    /// `force increment SDP version`: bump it on every offer/answer.
    pub force_increment_sdp_version: bool,
    /// `zero address`: rewrite `0.0.0.0` connection addresses too.
    pub zero_address: bool,
    /// `username`: the `o=` username (not supported yet).
    pub username: bool,
    /// `session name`: `s=` (not supported yet).
    pub session_name: bool,
}

/// The `rtcp-mux` list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[allow(clippy::struct_excessive_bools)]
pub struct RtcpMuxOptions {
    /// `offer`: offer rtcp-mux even if the offerer did not.
    pub offer: bool,
    /// `accept`: accept rtcp-mux from the offerer (the default).
    pub accept: bool,
    /// `demux`: remove rtcp-mux towards the callee.
    pub demux: bool,
    /// `reject`: refuse rtcp-mux from the offerer.
    pub reject: bool,
    /// `require`: require rtcp-mux towards the callee (RTCP on the RTP port).
    pub require: bool,
}

/// The `codec` dictionary; codec strings are `name[/clock[/channels[/…]]]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CodecOptions {
    /// `strip`: remove these (`all` removes every codec not in `except`/`offer`).
    pub strip: Vec<String>,
    /// `offer`: keep these, in this order, ahead of the rest.
    pub offer: Vec<String>,
    /// `transcode`: add these, transcoding.
    pub transcode: Vec<String>,
    /// `mask`: hide these from the callee while still accepting them from the caller.
    pub mask: Vec<String>,
    /// `accept`: in an answer, accept these for transcoding.
    pub accept: Vec<String>,
    /// `except`: exceptions to `strip: all`.
    pub except: Vec<String>,
    /// `consume`: like `mask`; the codec is consumed by the relay (not passed on).
    pub consume: Vec<String>,
    /// `set` (not supported yet).
    pub set: Vec<String>,
}

impl CodecOptions {
    /// True when no codec option was given.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self == &CodecOptions::default()
    }
}

/// All options of a request other than the command, the call-id, tags and SDP.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NgOptions {
    /// Known boolean flags.
    pub flags: Flags,
    /// `replace`.
    pub replace: ReplaceOptions,
    /// `ICE`.
    pub ice: Option<IceMode>,
    /// `rtcp-mux`.
    pub rtcp_mux: RtcpMuxOptions,
    /// `transport protocol` (`RTP/AVP`, …), as given.
    pub transport_protocol: Option<String>,
    /// `direction`: logical interface names, caller side first.
    pub direction: Vec<String>,
    /// `received from`: the signalling source address.
    pub received_from: Option<IpAddr>,
    /// `media address`: the address to advertise instead of the interface's.
    pub media_address: Option<IpAddr>,
    /// `address family` for the side the offer goes to.
    pub address_family: Option<AddressFamily>,
    /// `label` of the from-tag leg.
    pub label: Option<String>,
    /// `set-label`.
    pub set_label: Option<String>,
    /// `from-label`.
    pub from_label: Option<String>,
    /// `to-label`.
    pub to_label: Option<String>,
    /// `record call` (`yes`/`no`).
    pub record_call: Option<bool>,
    /// `metadata`.
    pub metadata: Option<String>,
    /// `codec`.
    pub codec: CodecOptions,
    /// `ptime` to advertise, ms.
    pub ptime: Option<u32>,
    /// `supports` (e.g. `load limit`).
    pub supports: Vec<String>,
    /// `delete delay`, seconds.
    pub delete_delay: Option<u64>,
    /// `limit` for `list` (may be negative: an error for the command).
    pub limit: Option<i64>,
    /// `from-tags`.
    pub from_tags: Vec<String>,
    /// `ptime-reverse`: the ptime to use towards the offerer, ms.
    pub ptime_reverse: Option<u32>,
    /// `file` of `play media`.
    pub file: Option<String>,
    /// `blob` of `play media`: the bytes as received.
    pub blob: Option<Vec<u8>>,
    /// `db-id` of `play media` (not supported).
    pub db_id: Option<String>,
    /// `repeat-times` of `play media`.
    pub repeat_times: Option<i64>,
    /// `code` of `play DTMF`, as given (a digit, a letter, or an event number 0–15).
    pub code: Option<String>,
    /// `digit` of `play DTMF`, as given.
    pub digit: Option<String>,
    /// `duration` of `play DTMF`, ms.
    pub duration: Option<i64>,
    /// `volume` of `play DTMF`, dB below full scale (rtpengine's sign: `8` and `-8` both mean
    /// -8 dBm0).
    pub volume: Option<i64>,
    /// Options that name functionality not built yet, as `name` or `name=value`.
    pub unsupported: Vec<String>,
    /// Flags (and list items of `replace`, `rtcp-mux`, `codec`) not known here.
    pub unknown_flags: Vec<String>,
    /// Keys not known here (ignored).
    pub unknown_keys: Vec<String>,
}

/// A typed NG request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NgRequest {
    /// The command.
    pub command: Command,
    /// `call-id`.
    pub call_id: Option<String>,
    /// `from-tag`.
    pub from_tag: Option<String>,
    /// `to-tag`.
    pub to_tag: Option<String>,
    /// `via-branch`.
    pub via_branch: Option<String>,
    /// `sdp`, raw bytes.
    pub sdp: Option<Vec<u8>>,
    /// Everything else.
    pub options: NgOptions,
}

/// Lowercase, trimmed, hyphens as spaces. Byte-for-byte the same length as the trimmed input.
fn norm(s: &str) -> String {
    s.trim()
        .chars()
        .map(|c| {
            if c == '-' {
                ' '
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

fn invalid(key: &str, expected: &'static str) -> NgError {
    NgError::InvalidValue {
        key: key.to_owned(),
        expected,
    }
}

fn string_of(key: &str, v: &Value) -> Result<String, NgError> {
    match v {
        Value::Bytes(b) => std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| invalid(key, "a UTF-8 string")),
        Value::Int(i) => Ok(i.to_string()),
        _ => Err(invalid(key, "a string")),
    }
}

fn int_of(key: &str, v: &Value) -> Result<i64, NgError> {
    match v {
        Value::Int(i) => Ok(*i),
        Value::Bytes(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .ok_or_else(|| invalid(key, "an integer")),
        _ => Err(invalid(key, "an integer")),
    }
}

fn list_of(key: &str, v: &Value) -> Result<Vec<String>, NgError> {
    match v {
        Value::List(items) => items
            .iter()
            .map(|i| string_of(key, i).map_err(|_| invalid(key, "a list of strings")))
            .collect(),
        _ => Err(invalid(key, "a list of strings")),
    }
}

/// The tag-like keys: a wrong type counts as absent (rtpengine answers "No … in message").
fn tag_of(key: &str, v: &Value) -> Result<Option<String>, NgError> {
    match v {
        Value::Bytes(b) => std::str::from_utf8(b)
            .map(|s| Some(s.to_owned()))
            .map_err(|_| invalid(key, "a UTF-8 string")),
        _ => Ok(None),
    }
}

impl NgRequest {
    /// Parses a request dictionary.
    pub fn from_dict(dict: &Value) -> Result<NgRequest, NgError> {
        let pairs = dict.as_dict().ok_or(NgError::NoCommand)?;
        let command = match dict.get("command") {
            Some(Value::Bytes(b)) => Command::from_name(b).ok_or(NgError::UnknownCommand)?,
            _ => return Err(NgError::NoCommand),
        };
        let mut req = NgRequest {
            command,
            call_id: None,
            from_tag: None,
            to_tag: None,
            via_branch: None,
            sdp: None,
            options: NgOptions::default(),
        };
        let mut seen: Vec<String> = Vec::new();
        for (k, v) in pairs {
            let key_raw = String::from_utf8_lossy(k);
            let key = norm(&key_raw);
            if seen.contains(&key) {
                continue;
            }
            seen.push(key.clone());
            req.apply_key(&key_raw, &key, v)?;
        }
        Ok(req)
    }

    fn apply_key(&mut self, raw: &str, key: &str, v: &Value) -> Result<(), NgError> {
        let o = &mut self.options;
        match key {
            "command" => {}
            "call id" => self.call_id = tag_of(raw, v)?,
            "from tag" => self.from_tag = tag_of(raw, v)?,
            "to tag" => self.to_tag = tag_of(raw, v)?,
            "via branch" => self.via_branch = tag_of(raw, v)?,
            "sdp" => self.sdp = v.as_bytes().map(<[u8]>::to_vec),
            "flags" => {
                for f in list_of(raw, v)? {
                    self.apply_flag(&f)?;
                }
            }
            "rtpp flags" => {
                for f in string_of(raw, v)?.split_ascii_whitespace() {
                    self.apply_flag(f)?;
                }
            }
            "replace" => {
                for item in list_of(raw, v)? {
                    apply_replace(o, &item);
                }
            }
            "rtcp mux" => {
                for item in list_of(raw, v)? {
                    apply_rtcp_mux(o, &item);
                }
            }
            "ice" => o.ice = Some(parse_ice(raw, &string_of(raw, v)?)?),
            "transport protocol" => o.transport_protocol = Some(string_of(raw, v)?),
            "direction" => o.direction = list_of(raw, v)?,
            "received from" => {
                let l = list_of(raw, v)?;
                let addr = l
                    .get(1)
                    .and_then(|a| a.parse::<IpAddr>().ok())
                    .ok_or_else(|| invalid(raw, "[family, address]"))?;
                o.received_from = Some(addr);
            }
            "media address" => {
                o.media_address = Some(
                    string_of(raw, v)?
                        .trim()
                        .parse()
                        .map_err(|_| invalid(raw, "an IP address"))?,
                );
            }
            "address family" => {
                o.address_family = Some(
                    AddressFamily::parse(&string_of(raw, v)?)
                        .ok_or_else(|| invalid(raw, "IP4 or IP6"))?,
                );
            }
            "label" => o.label = Some(string_of(raw, v)?),
            "set label" => o.set_label = Some(string_of(raw, v)?),
            "from label" => o.from_label = Some(string_of(raw, v)?),
            "to label" => o.to_label = Some(string_of(raw, v)?),
            "record call" => {
                let s = norm(&string_of(raw, v)?);
                o.record_call = Some(match s.as_str() {
                    "yes" | "on" | "true" | "1" => true,
                    "no" | "off" | "false" | "0" | "" => false,
                    _ => return Err(invalid(raw, "yes or no")),
                });
            }
            "metadata" => o.metadata = Some(string_of(raw, v)?),
            "codec" => {
                let pairs = v
                    .as_dict()
                    .ok_or_else(|| invalid(raw, "a dictionary of lists"))?;
                for (ck, cv) in pairs {
                    let ck_raw = String::from_utf8_lossy(ck);
                    let items = list_of(&format!("codec.{ck_raw}"), cv)?;
                    for item in items {
                        apply_codec(o, &norm(&ck_raw), &item);
                    }
                }
            }
            "ptime reverse" => {
                let p = int_of(raw, v)?;
                o.ptime_reverse = Some(
                    u32::try_from(p)
                        .ok()
                        .filter(|p| (1..=1000).contains(p))
                        .ok_or_else(|| invalid(raw, "milliseconds in 1..=1000"))?,
                );
            }
            "ptime" => {
                let p = int_of(raw, v)?;
                o.ptime = Some(
                    u32::try_from(p)
                        .ok()
                        .filter(|p| (1..=1000).contains(p))
                        .ok_or_else(|| invalid(raw, "milliseconds in 1..=1000"))?,
                );
            }
            "supports" => o.supports = list_of(raw, v)?,
            "delete delay" => {
                o.delete_delay = Some(
                    u64::try_from(int_of(raw, v)?)
                        .map_err(|_| invalid(raw, "a number of seconds >= 0"))?,
                );
            }
            "limit" => o.limit = Some(int_of(raw, v)?),
            "from tags" => o.from_tags = list_of(raw, v)?,
            "all" => {
                let s = norm(&string_of(raw, v)?);
                o.flags.all = !matches!(s.as_str(), "none" | "no" | "0" | "");
            }
            "sdes" | "osrtp" => {
                for item in list_of(raw, v)? {
                    if !matches!(norm(&item).as_str(), "off" | "no" | "") {
                        o.unsupported.push(format!("{raw}-{item} (SRTP)"));
                    }
                }
            }
            "dtls" => {
                let s = string_of(raw, v)?;
                if !matches!(norm(&s).as_str(), "off" | "no" | "disable" | "") {
                    o.unsupported.push(format!("{raw}={s} (DTLS-SRTP)"));
                }
            }
            "t.38" | "t38" => {
                if !list_of(raw, v)?.is_empty() {
                    o.unsupported.push(format!("{raw} (T.38 gateway)"));
                }
            }
            "tos" | "media echo" | "xmlrpc callback" | "dtls fingerprint" | "ice lite"
            | "dtmf security" | "delay buffer" | "output destination" | "recording file"
            | "recording dir" | "recording path" | "recording pattern" | "trigger"
            | "trigger end" | "trigger end time" | "trigger end digits" | "dtmf delay" => {
                o.unsupported.push(raw.to_owned());
            }
            "file" => o.file = Some(string_of(raw, v)?),
            "blob" => {
                o.blob = Some(
                    v.as_bytes()
                        .map(<[u8]>::to_vec)
                        .ok_or_else(|| invalid(raw, "a byte string"))?,
                );
            }
            "db id" => o.db_id = Some(string_of(raw, v)?),
            "repeat times" => o.repeat_times = Some(int_of(raw, v)?),
            "code" => o.code = Some(string_of(raw, v)?),
            "digit" => o.digit = Some(string_of(raw, v)?),
            "duration" => o.duration = Some(int_of(raw, v)?),
            "volume" => o.volume = Some(int_of(raw, v)?),
            // Selectors this server does not use.
            "frequency" | "address" | "interface" | "sip message type" | "sip code" | "to tags" => {
            }
            _ => o.unknown_keys.push(raw.to_owned()),
        }
        Ok(())
    }

    fn apply_flag(&mut self, original: &str) -> Result<(), NgError> {
        let trimmed = original.trim();
        if trimmed.is_empty() {
            return Ok(());
        }
        if let Some((k, val)) = trimmed.split_once('=') {
            let key = norm(k);
            let value = match key.as_str() {
                "replace" | "rtcp mux" | "direction" | "received from" | "supports"
                | "from tags" | "flags" => Value::List(
                    val.split([',', ' '])
                        .filter(|s| !s.is_empty())
                        .map(Value::from)
                        .collect(),
                ),
                _ => Value::from(val),
            };
            return self.apply_key(k.trim(), &key, &value);
        }
        let f = norm(trimmed);
        let rest = |prefix: &str| trimmed[prefix.len()..].to_owned();
        let o = &mut self.options;
        for (prefix, codec_key) in [
            ("codec strip ", "strip"),
            ("codec offer ", "offer"),
            ("codec transcode ", "transcode"),
            ("codec mask ", "mask"),
            ("codec accept ", "accept"),
            ("codec except ", "except"),
            ("codec consume ", "consume"),
            ("codec set ", "set"),
        ] {
            if f.starts_with(prefix) {
                apply_codec(o, codec_key, &rest(prefix));
                return Ok(());
            }
        }
        if f.starts_with("replace ") {
            apply_replace(o, &rest("replace "));
            return Ok(());
        }
        if f.starts_with("rtcp mux ") {
            apply_rtcp_mux(o, &rest("rtcp mux "));
            return Ok(());
        }
        if f.starts_with("from tags ") {
            o.from_tags.push(rest("from tags "));
            return Ok(());
        }
        if f.starts_with("sdes ") || f.starts_with("osrtp ") {
            if !matches!(f.rsplit(' ').next(), Some("off" | "no")) {
                o.unsupported.push(format!("{trimmed} (SRTP)"));
            }
            return Ok(());
        }
        let fl = &mut o.flags;
        match f.as_str() {
            "trust address" => fl.trust_address = true,
            "sip source address" => fl.sip_source_address = true,
            "symmetric" => fl.symmetric = true,
            "asymmetric" => fl.asymmetric = true,
            "unidirectional" => fl.unidirectional = true,
            "strict source" => fl.strict_source = true,
            "media handover" => fl.media_handover = true,
            "port latching" => fl.port_latching = true,
            "no port latching" => fl.no_port_latching = true,
            "loop protect" => fl.loop_protect = true,
            "no rtcp attribute" => fl.no_rtcp_attribute = true,
            "full rtcp attribute" => fl.full_rtcp_attribute = true,
            "fatal" => fl.fatal = true,
            "fast" => fl.fast = true,
            "all" => fl.all = true,
            "allow transcoding" => fl.allow_transcoding = true,
            "always transcode" => fl.always_transcode = true,
            "record call" => fl.record_call = true,
            "inject dtmf" => fl.inject_dtmf = true,
            "detect dtmf" => fl.detect_dtmf = true,
            "original sendrecv" => fl.original_sendrecv = true,
            "strip extmap" => fl.strip_extmap = true,
            "reset" => fl.reset = true,
            "no jitter buffer" => fl.no_jitter_buffer = true,
            "directional" => fl.directional = true,
            "bidirectional" => fl.bidirectional = true,
            "generate mid"
            | "single codec"
            | "symmetric codecs"
            | "asymmetric codecs"
            | "pad crypto"
            | "trickle ice"
            | "reject ice"
            | "generate rtcp"
            | "pierce nat"
            | "egress"
            | "siprec"
            | "no codec renegotiation"
            | "fragment"
            | "early media"
            | "nat wait"
            | "passthrough"
            | "media echo"
            | "block short"
            | "block dtmf"
            | "block media"
            | "discard recording"
            | "allow no codec media" => {
                o.unsupported.push(trimmed.to_owned());
            }
            "debug" | "no passthrough" | "skip recording db" | "recording vsc" | "all media"
            | "mix" => {}
            _ => o.unknown_flags.push(trimmed.to_owned()),
        }
        Ok(())
    }
}

fn apply_replace(o: &mut NgOptions, item: &str) {
    let r = &mut o.replace;
    match norm(item).as_str() {
        "origin" => r.origin = true,
        "session connection" | "session connection address" => r.session_connection = true,
        "sdp version" => r.sdp_version = true,
        "force increment sdp version" => r.force_increment_sdp_version = true,
        "zero address" => r.zero_address = true,
        "username" => r.username = true,
        "session name" => r.session_name = true,
        _ => o.unknown_flags.push(format!("replace-{item}")),
    }
}

fn apply_rtcp_mux(o: &mut NgOptions, item: &str) {
    let m = &mut o.rtcp_mux;
    match norm(item).as_str() {
        "offer" => m.offer = true,
        "accept" => m.accept = true,
        "demux" => m.demux = true,
        "reject" => m.reject = true,
        "require" => m.require = true,
        _ => o.unknown_flags.push(format!("rtcp-mux-{item}")),
    }
}

fn apply_codec(o: &mut NgOptions, key: &str, item: &str) {
    let c = &mut o.codec;
    let item = item.trim().to_owned();
    match key {
        "strip" => c.strip.push(item),
        "offer" => c.offer.push(item),
        "transcode" => c.transcode.push(item),
        "mask" => c.mask.push(item),
        "accept" => c.accept.push(item),
        "except" => c.except.push(item),
        "consume" => c.consume.push(item),
        "set" => c.set.push(item),
        _ => o.unknown_flags.push(format!("codec-{key}-{item}")),
    }
}

fn parse_ice(raw: &str, s: &str) -> Result<IceMode, NgError> {
    Ok(match norm(s).as_str() {
        "remove" => IceMode::Remove,
        "force" => IceMode::Force,
        "force relay" | "force_relay" => IceMode::ForceRelay,
        "default" => IceMode::Default,
        "optional" => IceMode::Optional,
        "passthrough" => IceMode::Passthrough,
        _ => {
            return Err(invalid(
                raw,
                "remove, force, force-relay, default, optional",
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bencode::{Limits, decode, parse_json};

    fn req(b: &[u8]) -> Result<NgRequest, NgError> {
        NgRequest::from_dict(&decode(b).unwrap().0)
    }

    fn js(j: &str) -> Result<NgRequest, NgError> {
        NgRequest::from_dict(&parse_json(j.as_bytes(), Limits::NG).unwrap())
    }

    #[test]
    fn kamailio_offer_keys() {
        let r = req(b"d8:supportsl10:load limite3:sdp3:v=03:ICE6:remove11:record-call2:no7:replacel6:origin18:session-connectione7:call-id17:1-12488@127.0.0.113:received-froml3:IP49:127.0.0.1e8:from-tag15:12488SIPpTag0017:command5:offere").unwrap();
        assert_eq!(r.command, Command::Offer);
        assert_eq!(r.call_id.as_deref(), Some("1-12488@127.0.0.1"));
        assert_eq!(r.from_tag.as_deref(), Some("12488SIPpTag001"));
        assert_eq!(r.sdp.as_deref(), Some(&b"v=0"[..]));
        let o = &r.options;
        assert_eq!(o.ice, Some(IceMode::Remove));
        assert_eq!(o.record_call, Some(false));
        assert!(o.replace.origin && o.replace.session_connection);
        assert_eq!(o.received_from, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(o.supports, vec!["load limit".to_owned()]);
        assert!(o.unknown_keys.is_empty());
    }

    #[test]
    fn command_errors() {
        assert_eq!(req(b"d3:foo3:bare"), Err(NgError::NoCommand));
        assert_eq!(req(b"d7:commandi5ee"), Err(NgError::NoCommand));
        assert_eq!(req(b"d7:commandl4:pingee"), Err(NgError::NoCommand));
        assert_eq!(req(b"d7:command4:PINGe"), Err(NgError::UnknownCommand));
        assert_eq!(req(b"d7:command3:fooe"), Err(NgError::UnknownCommand));
        assert_eq!(
            js(r#"{"command":"start-recording"}"#).unwrap().command,
            Command::StartRecording
        );
        assert_eq!(
            js(r#"{"command":"block DTMF"}"#).unwrap().command,
            Command::BlockDtmf
        );
        for c in Command::all() {
            assert_eq!(Command::from_name(c.name().as_bytes()), Some(c));
        }
    }

    #[test]
    fn spellings_and_numbers() {
        let r = js(r#"{"command":"delete","call id":"a","delete-delay":"10","limit":3}"#).unwrap();
        assert_eq!(r.call_id.as_deref(), Some("a"));
        assert_eq!(r.options.delete_delay, Some(10));
        assert_eq!(r.options.limit, Some(3));
        let r = js(r#"{"command":"offer","Address-Family":"ip6","Media-Address":"::1%bad"}"#);
        assert!(matches!(r, Err(NgError::InvalidValue { .. })));
        let r = js(r#"{"command":"offer","Address-Family":"ip6","Media-Address":"::1"}"#).unwrap();
        assert_eq!(r.options.address_family, Some(AddressFamily::Ip6));
        // First occurrence wins in bencode.
        let r = req(b"d7:command4:ping7:command4:liste").unwrap();
        assert_eq!(r.command, Command::Ping);
        let r = js(r#"{"command":"list","call-id":"a","call id":"b"}"#).unwrap();
        assert_eq!(r.call_id.as_deref(), Some("a"));
    }

    #[test]
    fn flags_normalised_and_prefixed() {
        let r = js(r#"{"command":"offer","flags":["trust-address","STRICT SOURCE","replace-origin","codec-strip-PCMA","rtcp-mux-demux","ICE=remove","weird-flag-x","always transcode"]}"#).unwrap();
        let o = &r.options;
        assert!(o.flags.trust_address && o.flags.strict_source && o.flags.always_transcode);
        assert!(o.replace.origin);
        assert_eq!(o.codec.strip, vec!["PCMA".to_owned()]);
        assert!(o.rtcp_mux.demux);
        assert_eq!(o.ice, Some(IceMode::Remove));
        assert_eq!(o.unknown_flags, vec!["weird-flag-x".to_owned()]);
        let r = js(r#"{"command":"offer","rtpp-flags":"replace-origin codec-mask-PCMU direction=internal,external"}"#).unwrap();
        assert!(r.options.replace.origin);
        assert_eq!(r.options.codec.mask, vec!["PCMU".to_owned()]);
        assert_eq!(
            r.options.direction,
            vec!["internal".to_owned(), "external".to_owned()]
        );
    }

    #[test]
    fn wrong_types_are_errors_or_absent() {
        // Tags of the wrong type count as absent, like rtpengine.
        let r = js(r#"{"command":"offer","call-id":["a"],"from-tag":{"a":1},"sdp":5}"#).unwrap();
        assert_eq!(r.call_id, None);
        assert_eq!(r.from_tag, None);
        assert_eq!(r.sdp, None);
        for bad in [
            r#"{"command":"offer","flags":"symmetric"}"#,
            r#"{"command":"offer","flags":[["x"]]}"#,
            r#"{"command":"offer","codec":"PCMU"}"#,
            r#"{"command":"offer","codec":{"strip":"PCMU"}}"#,
            r#"{"command":"offer","ptime":"abc"}"#,
            r#"{"command":"offer","ptime":0}"#,
            r#"{"command":"offer","ICE":"bogus"}"#,
            r#"{"command":"offer","received-from":"x"}"#,
            r#"{"command":"offer","received-from":["IP4","notip"]}"#,
            r#"{"command":"offer","address family":"IPX"}"#,
            r#"{"command":"offer","record call":"maybe"}"#,
            r#"{"command":"offer","media address":["1.2.3.4"]}"#,
            r#"{"command":"delete","delete delay":-1}"#,
            r#"{"command":"list","limit":"abc"}"#,
            r#"{"command":"offer","replace":{"a":1}}"#,
        ] {
            assert!(
                matches!(js(bad), Err(NgError::InvalidValue { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn unsupported_options_are_named() {
        let r = js(r#"{"command":"offer","DTLS":"passive","TOS":184,"flags":["single codec"]}"#)
            .unwrap();
        assert_eq!(
            r.options.unsupported,
            vec![
                "DTLS=passive (DTLS-SRTP)".to_owned(),
                "TOS".to_owned(),
                "single codec".to_owned()
            ]
        );
        let r = js(r#"{"command":"offer","DTLS":"off"}"#).unwrap();
        assert!(r.options.unsupported.is_empty());
    }

    #[test]
    fn error_strings() {
        assert_eq!(
            NgError::NoCommand.to_string(),
            "Dictionary contains no key \"command\""
        );
        assert_eq!(
            NgError::CallNotFound.to_string(),
            "Call-ID not found or tags didn't match"
        );
        assert_eq!(NgError::OutOfPorts.to_string(), "Ran out of ports");
    }
}
