//! The control plane of decoded media: what each call's legs hear ([`topology`]), the
//! prompts they play ([`prompts`]), and the parsing of the native media operations
//! (`leg.*`, `monitor.*`, `play.*`, `dtmf.send`) into typed requests.
//!
//! Nothing here touches a media thread: the control task turns these decisions into
//! [`crate::worker::MediaOp`]s for the call's worker.

pub mod prompts;
pub mod taps;
pub mod topology;

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use serde_json::Value;
use switchboard_codecs::codec::{CodecKind, CodecSpec};
use switchboard_proto::media::MediaLegConfig;
use switchboard_proto::media::play::ToneSpec;
use switchboard_proto::sdp;

use crate::control::native::{ErrorCode, OpError};
use topology::MonitorMode;

/// Default conference member limit of a call.
pub const DEFAULT_MAX_MEMBERS: usize = 500;
/// Most legs a native call may have (conference members or not).
pub const MAX_LEGS: usize = 1000;
/// Longest leg or call name.
pub const MAX_NAME: usize = 128;
/// Most DTMF digits in one `dtmf.send`.
pub const MAX_DIGITS: usize = 64;

/// Settings of the media control plane.
#[derive(Debug, Clone)]
pub struct MediaSettings {
    /// Conference members per call.
    pub max_members: usize,
    /// The prompt cache.
    pub prompts: prompts::PromptConfig,
}

impl Default for MediaSettings {
    fn default() -> Self {
        Self {
            max_members: DEFAULT_MAX_MEMBERS,
            prompts: prompts::PromptConfig::default(),
        }
    }
}

fn bad(msg: impl Into<String>) -> OpError {
    OpError::new(ErrorCode::BadRequest, msg)
}

fn name_field(req: &Value, key: &str) -> Result<Option<String>, OpError> {
    match req.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_NAME => Ok(Some(s.clone())),
        Some(Value::String(_)) => Err(bad(format!("`{key}` must be 1 to {MAX_NAME} characters"))),
        Some(_) => Err(bad(format!("`{key}` must be a string"))),
    }
}

fn req_name(req: &Value, key: &str) -> Result<String, OpError> {
    name_field(req, key)?.ok_or_else(|| bad(format!("missing string field `{key}`")))
}

fn opt_bool(req: &Value, key: &str) -> Result<Option<bool>, OpError> {
    match req.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(bad(format!("`{key}` must be true or false"))),
    }
}

fn opt_num(req: &Value, key: &str, min: f64, max: f64) -> Result<Option<f64>, OpError> {
    match req.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(n) if n.is_finite() && (min..=max).contains(&n) => Ok(Some(n)),
            _ => Err(bad(format!("`{key}` must be a number from {min} to {max}"))),
        },
    }
}

/// What a leg hears when created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HearsSpec {
    /// The call's conference: every other conference member.
    All,
    /// These legs, both ways (an empty list, the default: nobody).
    Legs(Vec<String>),
}

fn hears_field(req: &Value) -> Result<Option<HearsSpec>, OpError> {
    match req.get("hears") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s == "all" => Ok(Some(HearsSpec::All)),
        Some(Value::Array(a)) if a.len() <= MAX_LEGS => a
            .iter()
            .map(|v| {
                v.as_str()
                    .filter(|s| !s.is_empty() && s.len() <= MAX_NAME)
                    .map(str::to_owned)
                    .ok_or_else(|| bad("`hears` is \"all\" or a list of leg names"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|v| Some(HearsSpec::Legs(v))),
        Some(_) => Err(bad("`hears` is \"all\" or a list of leg names")),
    }
}

/// The codecs a leg is created with.
#[derive(Debug, Clone)]
pub enum LegCodecs {
    /// Names, in preference order.
    Names(Vec<String>),
    /// A remote SDP offer.
    Sdp(String),
}

/// Something to play.
#[derive(Debug, Clone, PartialEq)]
pub enum PlayWhat {
    /// A WAV file.
    File(String),
    /// A tone.
    Tone(ToneSpec),
}

/// A native media request, parsed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum MediaRequest {
    /// `fork.start`.
    ForkStart(Box<ForkRequest>),
    /// `fork.stop`.
    ForkStop {
        /// The call.
        call: String,
        /// The fork; none: every fork of the call.
        fork: Option<String>,
    },
    /// `analytics.start`.
    AnalyticsStart(AnalyticsRequest),
    /// `analytics.stop`.
    AnalyticsStop {
        /// The call.
        call: String,
    },
    /// `call.create`.
    CallCreate {
        /// The call's name, or one is made up.
        call: Option<String>,
    },
    /// `leg.create`.
    LegCreate {
        /// The call.
        call: String,
        /// The leg's name, or one is made up.
        leg: Option<String>,
        /// Codecs or SDP.
        codecs: LegCodecs,
        /// The remote RTP address.
        remote: Option<SocketAddr>,
        /// Packet time, ms.
        ptime: Option<u32>,
        /// What it hears.
        hears: Option<HearsSpec>,
    },
    /// `leg.answer`.
    LegAnswer {
        /// The call.
        call: String,
        /// The leg.
        leg: String,
        /// The remote's SDP answer.
        sdp: Option<String>,
        /// Or its address.
        remote: Option<SocketAddr>,
    },
    /// `leg.delete`.
    LegDelete {
        /// The call.
        call: String,
        /// The leg.
        leg: String,
    },
    /// `leg.hears`.
    LegHears {
        /// The call.
        call: String,
        /// The leg.
        leg: String,
        /// Its new row.
        hears: HearsSpec,
    },
    /// `leg.mute`.
    LegMute {
        /// The call.
        call: String,
        /// The leg.
        leg: String,
        /// Muted.
        mute: Option<bool>,
        /// Deaf.
        deaf: Option<bool>,
        /// Gain, dB.
        gain_db: Option<f32>,
    },
    /// `monitor.start`.
    MonitorStart {
        /// The call.
        call: String,
        /// Supervisor leg.
        supervisor: String,
        /// Agent leg.
        agent: String,
        /// Customer leg.
        customer: Option<String>,
        /// Mode.
        mode: MonitorMode,
        /// DTMF 4/5/6 switch modes.
        dtmf_control: bool,
    },
    /// `monitor.mode`.
    MonitorMode {
        /// The call.
        call: String,
        /// Supervisor leg.
        supervisor: String,
        /// Mode.
        mode: MonitorMode,
    },
    /// `monitor.stop`.
    MonitorStop {
        /// The call.
        call: String,
        /// Supervisor leg.
        supervisor: String,
    },
    /// `play.start` (a file's prompt is loaded before the request reaches the control task).
    PlayStart {
        /// The call.
        call: String,
        /// The leg (none: every leg).
        leg: Option<String>,
        /// What.
        what: PlayWhat,
        /// Repetitions (0: until stopped).
        repeat: u32,
        /// A digit from the leg stops it.
        stop_on_dtmf: bool,
    },
    /// `play.stop`.
    PlayStop {
        /// The call.
        call: String,
        /// The prompt.
        play: Option<u32>,
        /// Or every prompt of this leg.
        leg: Option<String>,
    },
    /// `dtmf.send`.
    DtmfSend {
        /// The call.
        call: String,
        /// The leg.
        leg: String,
        /// Digits.
        digits: String,
        /// Per digit, ms.
        duration_ms: u32,
        /// Level, dBm0.
        volume_dbm0: i8,
    },
}

/// `fork.start` settings, parsed.
#[derive(Debug, Clone)]
pub struct ForkRequest {
    /// The call.
    pub call: String,
    /// The caller's leg (`caller`, or `leg`); default: the call's first leg.
    pub caller: Option<String>,
    /// The agent's leg; default: the call's other leg.
    pub agent: Option<String>,
    /// `ws://` or `wss://` URL.
    pub url: String,
    /// Which audio.
    pub what: crate::fork::ForkWhat,
    /// 8000 or 16000.
    pub rate: u32,
    /// The leg bot audio is played into (`to`); default: the caller.
    pub to: Option<String>,
    /// Whether bot audio is played at all (`to: false` turns it off).
    pub bot: bool,
    /// Passed through to the service.
    pub metadata: Value,
}

/// `analytics.start` settings, parsed.
#[derive(Debug, Clone)]
pub struct AnalyticsRequest {
    /// The call.
    pub call: String,
    /// Party 0; default: the call's first leg.
    pub caller: Option<String>,
    /// Party 1; default: the call's other leg.
    pub agent: Option<String>,
    /// Call time between live `analytics` events, ms.
    pub interval_ms: u32,
    /// Sends the caller's live agitation to this ACD task (`task.update`).
    pub update_task: Option<u64>,
    /// The ACD tenant of that task.
    pub tenant: Option<String>,
}

/// The native operations handled here.
pub const OPS: &[&str] = &[
    "fork.start",
    "fork.stop",
    "analytics.start",
    "analytics.stop",
    "call.create",
    "leg.create",
    "leg.answer",
    "leg.delete",
    "leg.hears",
    "leg.mute",
    "monitor.start",
    "monitor.mode",
    "monitor.stop",
    "play.start",
    "play.stop",
    "dtmf.send",
];

fn addr_field(req: &Value, key: &str) -> Result<Option<SocketAddr>, OpError> {
    match req.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => s
            .parse()
            .map(Some)
            .map_err(|_| bad(format!("`{key}` must be an address IP:PORT"))),
        Some(_) => Err(bad(format!("`{key}` must be an address IP:PORT"))),
    }
}

fn mode_field(req: &Value, default: Option<MonitorMode>) -> Result<MonitorMode, OpError> {
    match req.get("mode") {
        None | Some(Value::Null) => default.ok_or_else(|| bad("missing string field `mode`")),
        Some(Value::String(s)) => MonitorMode::parse(s)
            .ok_or_else(|| bad("`mode` is one of listen, whisper, barge, talk_to_customer")),
        Some(_) => Err(bad(
            "`mode` is one of listen, whisper, barge, talk_to_customer",
        )),
    }
}

fn tone_field(v: &Value) -> Result<ToneSpec, OpError> {
    match v {
        Value::String(s) if s == "ringback" => Ok(ToneSpec::Ringback),
        Value::String(s) if s == "busy" => Ok(ToneSpec::Busy),
        Value::Object(o) if o.contains_key("dtmf") => {
            let d = o.get("dtmf").and_then(Value::as_str).unwrap_or("");
            let mut it = d.chars();
            match (it.next(), it.next()) {
                (Some(c), None) if is_dtmf(c) => Ok(ToneSpec::Dtmf(c.to_ascii_uppercase())),
                _ => Err(bad("`tone.dtmf` is one digit 0-9, *, #, A-D")),
            }
        }
        Value::Object(_) => {
            let hz = opt_num(v, "hz", 20.0, 7900.0)?.ok_or_else(|| bad("`tone.hz` is required"))?;
            let level = opt_num(v, "level_dbm0", -60.0, 3.0)?.unwrap_or(-13.0);
            Ok(ToneSpec::Sine {
                hz: hz as f32,
                level_dbm0: level as f32,
            })
        }
        _ => Err(bad(
            "`tone` is {\"hz\":…,\"level_dbm0\":…}, \"ringback\", \"busy\" or {\"dtmf\":\"5\"}",
        )),
    }
}

/// Whether `c` is a DTMF digit.
#[must_use]
pub fn is_dtmf(c: char) -> bool {
    c.is_ascii_digit() || matches!(c.to_ascii_uppercase(), '*' | '#' | 'A' | 'B' | 'C' | 'D')
}

impl MediaRequest {
    /// Parses a request of one of [`OPS`].
    pub fn parse(op: &str, req: &Value) -> Result<Self, OpError> {
        let call = || req_name(req, "call");
        Ok(match op {
            "fork.start" => {
                let url = req
                    .get("url")
                    .and_then(Value::as_str)
                    .filter(|u| {
                        u.len() <= 2048 && (u.starts_with("ws://") || u.starts_with("wss://"))
                    })
                    .ok_or_else(|| bad("`url` is a ws:// or wss:// URL"))?
                    .to_owned();
                let leg = name_field(req, "leg")?;
                let caller = name_field(req, "caller")?.or_else(|| leg.clone());
                let what = match req.get("what") {
                    None | Some(Value::Null) if leg.is_some() => crate::fork::ForkWhat::Caller,
                    None | Some(Value::Null) => crate::fork::ForkWhat::Stereo,
                    Some(Value::String(w)) => crate::fork::ForkWhat::parse(w)
                        .ok_or_else(|| bad("`what` is one of caller, agent, stereo, mixed"))?,
                    Some(_) => return Err(bad("`what` is one of caller, agent, stereo, mixed")),
                };
                let rate = opt_num(req, "rate", 8000.0, 16000.0)?.map_or(16000, |r| r as u32);
                if !matches!(rate, 8000 | 16000) {
                    return Err(bad("`rate` is 8000 or 16000"));
                }
                let metadata = req.get("metadata").cloned().unwrap_or(Value::Null);
                if metadata.to_string().len() > 16 * 1024 {
                    return Err(bad("`metadata` is at most 16 KiB of JSON"));
                }
                Self::ForkStart(Box::new(ForkRequest {
                    call: call()?,
                    caller,
                    agent: name_field(req, "agent")?,
                    url,
                    what,
                    rate,
                    bot: !matches!(req.get("to"), Some(Value::Bool(false))),
                    to: match req.get("to") {
                        Some(Value::Bool(_)) => None,
                        _ => name_field(req, "to")?,
                    },
                    metadata,
                }))
            }
            "fork.stop" => Self::ForkStop {
                call: call()?,
                fork: name_field(req, "fork")?,
            },
            "analytics.start" => {
                let update = opt_bool(req, "update_task")?.unwrap_or(false);
                let task = opt_num(req, "task", 0.0, 9.0e15)?.map(|t| t as u64);
                if update && task.is_none() {
                    return Err(bad(
                        "`update_task` needs `task`: the ACD task id of the call",
                    ));
                }
                Self::AnalyticsStart(AnalyticsRequest {
                    call: call()?,
                    caller: name_field(req, "caller")?,
                    agent: name_field(req, "agent")?,
                    interval_ms: opt_num(req, "interval_ms", 0.0, 600_000.0)?
                        .map_or(5000, |i| i as u32),
                    update_task: if update { task } else { None },
                    tenant: name_field(req, "tenant")?,
                })
            }
            "analytics.stop" => Self::AnalyticsStop { call: call()? },
            "call.create" => Self::CallCreate {
                call: name_field(req, "call")?,
            },
            "leg.create" => {
                let codecs = match (req.get("codecs"), req.get("sdp")) {
                    (Some(Value::Array(a)), None) if !a.is_empty() && a.len() <= 16 => {
                        LegCodecs::Names(
                            a.iter()
                                .map(|v| {
                                    v.as_str()
                                        .filter(|s| s.len() <= 64)
                                        .map(str::to_owned)
                                        .ok_or_else(|| bad("`codecs` is a list of codec names"))
                                })
                                .collect::<Result<_, _>>()?,
                        )
                    }
                    (None, Some(Value::String(s))) if s.len() <= 32 * 1024 => {
                        LegCodecs::Sdp(s.clone())
                    }
                    (None, None) => LegCodecs::Names(vec!["PCMU".into(), "PCMA".into()]),
                    _ => {
                        return Err(bad(
                            "give either `codecs` (1 to 16 names) or `sdp` (a remote offer)",
                        ));
                    }
                };
                let ptime = opt_num(req, "ptime", 10.0, 120.0)?.map(|p| p as u32);
                if ptime.is_some_and(|p| p % 20 != 0) {
                    return Err(bad("`ptime` must be a multiple of 20"));
                }
                Self::LegCreate {
                    call: call()?,
                    leg: name_field(req, "leg")?,
                    codecs,
                    remote: addr_field(req, "remote")?,
                    ptime,
                    hears: hears_field(req)?,
                }
            }
            "leg.answer" => {
                let sdp = match req.get("sdp") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(s)) if s.len() <= 32 * 1024 => Some(s.clone()),
                    Some(_) => return Err(bad("`sdp` must be a string of at most 32 KiB")),
                };
                let remote = addr_field(req, "remote")?;
                if sdp.is_none() && remote.is_none() {
                    return Err(bad("give `sdp` or `remote`"));
                }
                Self::LegAnswer {
                    call: call()?,
                    leg: req_name(req, "leg")?,
                    sdp,
                    remote,
                }
            }
            "leg.delete" => Self::LegDelete {
                call: call()?,
                leg: req_name(req, "leg")?,
            },
            "leg.hears" => Self::LegHears {
                call: call()?,
                leg: req_name(req, "leg")?,
                hears: hears_field(req)?.ok_or_else(|| bad("missing field `hears`"))?,
            },
            "leg.mute" => Self::LegMute {
                call: call()?,
                leg: req_name(req, "leg")?,
                mute: opt_bool(req, "mute")?,
                deaf: opt_bool(req, "deaf")?,
                gain_db: opt_num(req, "gain_db", -60.0, 24.0)?.map(|g| g as f32),
            },
            "monitor.start" => Self::MonitorStart {
                call: call()?,
                supervisor: req_name(req, "supervisor")?,
                agent: req_name(req, "agent")?,
                customer: name_field(req, "customer")?,
                mode: mode_field(req, Some(MonitorMode::Listen))?,
                dtmf_control: opt_bool(req, "dtmf_control")?.unwrap_or(false),
            },
            "monitor.mode" => Self::MonitorMode {
                call: call()?,
                supervisor: req_name(req, "supervisor")?,
                mode: mode_field(req, None)?,
            },
            "monitor.stop" => Self::MonitorStop {
                call: call()?,
                supervisor: req_name(req, "supervisor")?,
            },
            "play.start" => {
                let what = match (req.get("file"), req.get("tone")) {
                    (Some(Value::String(f)), None) if !f.is_empty() && f.len() <= 4096 => {
                        PlayWhat::File(f.clone())
                    }
                    (None, Some(t)) => PlayWhat::Tone(tone_field(t)?),
                    _ => return Err(bad("give either `file` (a WAV path) or `tone`")),
                };
                let repeat = opt_num(req, "repeat", 0.0, 10_000.0)?.map_or(1, |r| r as u32);
                Self::PlayStart {
                    call: call()?,
                    leg: name_field(req, "leg")?,
                    what,
                    repeat,
                    stop_on_dtmf: opt_bool(req, "stop_on_dtmf")?.unwrap_or(false),
                }
            }
            "play.stop" => Self::PlayStop {
                call: call()?,
                play: opt_num(req, "play", 0.0, f64::from(u32::MAX))?.map(|p| p as u32),
                leg: name_field(req, "leg")?,
            },
            "dtmf.send" => {
                let digits = req
                    .get("digits")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad("missing string field `digits`"))?;
                if digits.is_empty()
                    || digits.chars().count() > MAX_DIGITS
                    || !digits.chars().all(is_dtmf)
                {
                    return Err(bad(format!(
                        "`digits` is 1 to {MAX_DIGITS} of 0-9, *, #, A-D"
                    )));
                }
                Self::DtmfSend {
                    call: call()?,
                    leg: req_name(req, "leg")?,
                    digits: digits.to_ascii_uppercase(),
                    duration_ms: opt_num(req, "duration_ms", 40.0, 2000.0)?
                        .map_or(100, |d| d as u32),
                    volume_dbm0: opt_num(req, "volume_dbm0", -63.0, 0.0)?.map_or(-10, |v| v as i8),
                }
            }
            other => {
                return Err(OpError::new(
                    ErrorCode::UnknownOp,
                    format!(
                        "unknown op `{}`",
                        other.chars().take(64).collect::<String>()
                    ),
                ));
            }
        })
    }

    /// The call the request is about (none for `call.create` without a name).
    #[must_use]
    pub fn call(&self) -> Option<&str> {
        match self {
            Self::CallCreate { call } => call.as_deref(),
            Self::LegCreate { call, .. }
            | Self::LegAnswer { call, .. }
            | Self::LegDelete { call, .. }
            | Self::LegHears { call, .. }
            | Self::LegMute { call, .. }
            | Self::MonitorStart { call, .. }
            | Self::MonitorMode { call, .. }
            | Self::MonitorStop { call, .. }
            | Self::PlayStart { call, .. }
            | Self::PlayStop { call, .. }
            | Self::DtmfSend { call, .. }
            | Self::ForkStop { call, .. }
            | Self::AnalyticsStop { call } => Some(call),
            Self::ForkStart(r) => Some(&r.call),
            Self::AnalyticsStart(r) => Some(&r.call),
        }
    }
}

/// A codec name as a request gives it (`PCMU`, `opus`, `L16/8000`) as a spec; `None` for
/// a codec the engine cannot decode.
#[must_use]
pub fn codec_by_name(name: &str) -> Option<CodecSpec> {
    let mut parts = name.split('/');
    let kind = CodecKind::from_encoding_name(parts.next()?)?;
    let mut spec = CodecSpec::new(kind);
    if let Some(rate) = parts.next() {
        spec = spec.with_clock_rate(rate.parse().ok()?);
    }
    supported(&spec).then_some(spec)
}

/// Whether the engine can decode and encode `spec`.
#[must_use]
pub fn supported(spec: &CodecSpec) -> bool {
    match spec.kind {
        CodecKind::Pcmu | CodecKind::Pcma | CodecKind::G722 => spec.clock_rate == 8000,
        CodecKind::Opus => spec.clock_rate == 48_000,
        CodecKind::L16 => matches!(spec.clock_rate, 8000 | 16_000 | 48_000),
        _ => false,
    }
}

/// An SDP codec as a [`CodecSpec`], when the engine can decode it.
#[must_use]
pub fn spec_of(c: &sdp::Codec) -> Option<CodecSpec> {
    let kind = CodecKind::from_encoding_name(&c.name)?;
    let mut spec = CodecSpec::new(kind)
        .with_payload_type(c.payload_type)
        .with_clock_rate(c.clock_rate);
    spec.channels = u8::try_from(c.channels).unwrap_or(1);
    if kind == CodecKind::Opus {
        spec.channels = 2;
    }
    if let Some(f) = &c.fmtp {
        let _ = spec.apply_fmtp(f);
    }
    supported(&spec).then_some(spec)
}

fn events_pt(codecs: &[sdp::Codec]) -> Option<u8> {
    codecs
        .iter()
        .find(|c| c.name.eq_ignore_ascii_case("telephone-event") && c.clock_rate == 8000)
        .or_else(|| {
            codecs
                .iter()
                .find(|c| c.name.eq_ignore_ascii_case("telephone-event"))
        })
        .map(|c| c.payload_type)
}

/// A leg's media configuration from the codecs of its SDP: it may send any of them; the
/// engine sends `prefer` when given and supported, else the first supported one. `None`
/// when no audio codec of the list can be decoded.
#[must_use]
pub fn config_from_sdp(
    codecs: &[sdp::Codec],
    prefer: Option<&sdp::Codec>,
    ptime: Option<u32>,
) -> Option<MediaLegConfig> {
    let recv: Vec<CodecSpec> = codecs.iter().filter_map(spec_of).collect();
    let send = prefer.and_then(spec_of).or_else(|| recv.first().copied())?;
    let events = events_pt(codecs);
    Some(MediaLegConfig {
        recv,
        send,
        recv_events: events,
        send_events: events,
        ptime_ms: ptime.filter(|p| *p > 0 && p % 20 == 0).unwrap_or(20),
    })
}

/// A transcoded NG side's codecs as a media configuration.
#[must_use]
pub fn config_from_side(side: &switchboard_proto::session::SideCodecs) -> Option<MediaLegConfig> {
    let mut recv: Vec<CodecSpec> = side.recv.iter().filter_map(spec_of).collect();
    let send = spec_of(&side.send)?;
    if recv.is_empty() {
        recv.push(send);
    }
    Some(MediaLegConfig {
        recv,
        send,
        recv_events: side.recv_events,
        send_events: side.send_events,
        ptime_ms: side
            .ptime_ms
            .filter(|p| *p > 0 && p % 20 == 0)
            .unwrap_or(20),
    })
}

/// The telephone-event payload type a native leg uses.
pub const EVENTS_PT: u8 = 101;

/// A native leg's configuration from codec names.
pub fn config_from_names(names: &[String], ptime: Option<u32>) -> Result<MediaLegConfig, OpError> {
    let mut recv = Vec::new();
    let mut events = false;
    for n in names {
        if n.eq_ignore_ascii_case("telephone-event") {
            events = true;
            continue;
        }
        let spec = codec_by_name(n).ok_or_else(|| {
            bad(format!(
                "unsupported codec `{}` (PCMU, PCMA, G722, opus, L16, telephone-event)",
                n.chars().take(64).collect::<String>()
            ))
        })?;
        if !recv.contains(&spec) {
            recv.push(spec);
        }
    }
    let send = *recv
        .first()
        .ok_or_else(|| bad("`codecs` names no audio codec"))?;
    Ok(MediaLegConfig {
        recv,
        send,
        recv_events: events.then_some(EVENTS_PT),
        send_events: events.then_some(EVENTS_PT),
        ptime_ms: ptime.unwrap_or(20),
    })
}

/// The remote side of an SDP offer or answer: first audio section's codecs, address, ptime.
#[derive(Debug, Clone)]
pub struct RemoteSdp {
    /// The audio codecs, in order.
    pub codecs: Vec<sdp::Codec>,
    /// Where to send RTP (`None`: port 0 or a hold address).
    pub remote: Option<SocketAddr>,
    /// Its RTCP address.
    pub remote_rtcp: Option<SocketAddr>,
    /// `a=ptime`.
    pub ptime: Option<u32>,
}

/// Parses a remote SDP for a native leg.
pub fn parse_remote_sdp(text: &str) -> Result<RemoteSdp, OpError> {
    let sd = sdp::SessionDescription::parse(text.as_bytes())
        .map_err(|e| bad(format!("invalid SDP: {e}")))?;
    let media = sd
        .media_info()
        .map_err(|e| bad(format!("invalid SDP: {e}")))?;
    let audio = media
        .into_iter()
        .find(|m| m.media == "audio" && m.is_rtp() && m.port != 0)
        .ok_or_else(|| bad("the SDP has no audio RTP section"))?;
    let held = audio.address.is_unspecified();
    Ok(RemoteSdp {
        remote: (!held).then(|| SocketAddr::new(audio.address, audio.port)),
        remote_rtcp: (!held).then(|| SocketAddr::new(audio.rtcp_address, audio.rtcp_port)),
        ptime: audio.ptime,
        codecs: audio.codecs,
    })
}

/// The engine's SDP for a native leg: its address and the codecs it accepts (the one it
/// sends first).
#[must_use]
pub fn local_sdp(address: IpAddr, rtp_port: u16, media: &MediaLegConfig, session: u64) -> String {
    let ip = match address {
        IpAddr::V4(_) => "IP4",
        IpAddr::V6(_) => "IP6",
    };
    let mut order: Vec<CodecSpec> = vec![media.send];
    order.extend(media.recv.iter().filter(|c| **c != media.send).copied());
    let mut pts: Vec<String> = order.iter().map(|c| c.payload_type.to_string()).collect();
    if let Some(e) = media.recv_events {
        pts.push(e.to_string());
    }
    let mut s = String::with_capacity(512);
    let _ = write!(
        s,
        "v=0\r\no=- {session} 1 IN {ip} {address}\r\ns=switchboard\r\nc=IN {ip} {address}\r\nt=0 0\r\nm=audio {rtp_port} RTP/AVP {}\r\n",
        pts.join(" ")
    );
    for c in &order {
        let _ = write!(s, "a=rtpmap:{}\r\n", c.rtpmap());
        if let Some(f) = c.fmtp_value() {
            let _ = write!(s, "a=fmtp:{} {f}\r\n", c.payload_type);
        }
    }
    if let Some(e) = media.recv_events {
        let _ = write!(
            s,
            "a=rtpmap:{e} telephone-event/8000\r\na=fmtp:{e} 0-16\r\n"
        );
    }
    let _ = write!(
        s,
        "a=ptime:{}\r\na=rtcp:{}\r\na=sendrecv\r\n",
        media.ptime_ms,
        rtp_port.saturating_add(1)
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn codec_names() {
        assert_eq!(codec_by_name("PCMU").unwrap().payload_type, 0);
        assert_eq!(codec_by_name("opus").unwrap().clock_rate, 48_000);
        assert!(codec_by_name("G729").is_none());
        assert!(codec_by_name("L16/44100").is_none());
        let c = config_from_names(
            &["opus".into(), "PCMA".into(), "telephone-event".into()],
            None,
        )
        .unwrap();
        assert_eq!(c.send.kind, CodecKind::Opus);
        assert_eq!(c.recv.len(), 2);
        assert_eq!(c.send_events, Some(EVENTS_PT));
        let e = config_from_names(&["GSM".into()], None).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
    }

    #[test]
    fn sdp_round_trip() {
        let c = config_from_names(&["PCMU".into(), "telephone-event".into()], None).unwrap();
        let text = local_sdp("127.0.0.1".parse().unwrap(), 30000, &c, 1);
        let r = parse_remote_sdp(&text).unwrap();
        assert_eq!(r.remote, Some("127.0.0.1:30000".parse().unwrap()));
        let back = config_from_sdp(&r.codecs, None, r.ptime).unwrap();
        assert_eq!(back.send, c.send);
        assert_eq!(back.recv_events, Some(EVENTS_PT));
        assert!(parse_remote_sdp("nonsense").is_err());
    }

    #[test]
    fn fork_and_analytics_requests() {
        use crate::fork::ForkWhat;
        let r =
            MediaRequest::parse("fork.start", &json!({"call": "c", "url": "ws://h/x"})).unwrap();
        let MediaRequest::ForkStart(f) = r else {
            panic!("{r:?}")
        };
        assert_eq!((f.what, f.rate, f.bot), (ForkWhat::Stereo, 16000, true));
        let r = MediaRequest::parse(
            "fork.start",
            &json!({"call": "c", "url": "wss://h/x", "leg": "l1", "rate": 8000, "to": false}),
        )
        .unwrap();
        let MediaRequest::ForkStart(f) = r else {
            panic!("{r:?}")
        };
        assert_eq!(f.caller.as_deref(), Some("l1"));
        assert_eq!((f.what, f.rate, f.bot), (ForkWhat::Caller, 8000, false));
        for bad in [
            json!({"call": "c"}),
            json!({"call": "c", "url": "http://h/"}),
            json!({"call": "c", "url": "ws://h/", "rate": 11025}),
            json!({"call": "c", "url": "ws://h/", "what": "left"}),
            json!({"call": "c", "url": "ws://h/", "metadata": {"x": "y".repeat(20_000)}}),
        ] {
            assert!(MediaRequest::parse("fork.start", &bad).is_err(), "{bad}");
        }
        let r = MediaRequest::parse(
            "analytics.start",
            &json!({"call": "c", "update_task": true, "task": 5, "interval_ms": 0}),
        )
        .unwrap();
        let MediaRequest::AnalyticsStart(a) = r else {
            panic!("{r:?}")
        };
        assert_eq!((a.update_task, a.interval_ms), (Some(5), 0));
        assert!(
            MediaRequest::parse(
                "analytics.start",
                &json!({"call": "c", "update_task": true})
            )
            .is_err()
        );
        assert_eq!(
            MediaRequest::parse("analytics.stop", &json!({"call": "c"}))
                .unwrap()
                .call(),
            Some("c")
        );
    }

    #[test]
    fn requests_parse_and_refuse() {
        let r = MediaRequest::parse(
            "monitor.start",
            &json!({"call": "c", "supervisor": "s", "agent": "a"}),
        )
        .unwrap();
        assert!(matches!(
            r,
            MediaRequest::MonitorStart {
                mode: MonitorMode::Listen,
                ..
            }
        ));
        assert!(
            MediaRequest::parse(
                "monitor.mode",
                &json!({"call": "c", "supervisor": "s", "mode": "shout"})
            )
            .is_err()
        );
        assert!(MediaRequest::parse("leg.create", &json!({"call": 5})).is_err());
        assert!(
            MediaRequest::parse(
                "dtmf.send",
                &json!({"call": "c", "leg": "l", "digits": "12x"})
            )
            .is_err()
        );
        let p = MediaRequest::parse("play.start", &json!({"call": "c", "tone": {"dtmf": "5"}}))
            .unwrap();
        assert!(matches!(
            p,
            MediaRequest::PlayStart {
                what: PlayWhat::Tone(ToneSpec::Dtmf('5')),
                ..
            }
        ));
        let p = MediaRequest::parse(
            "play.start",
            &json!({"call": "c", "tone": "ringback", "repeat": 0}),
        )
        .unwrap();
        assert!(matches!(p, MediaRequest::PlayStart { repeat: 0, .. }));
        assert!(
            MediaRequest::parse("play.start", &json!({"call": "c", "tone": {"hz": 1e9}})).is_err()
        );
        assert!(
            MediaRequest::parse("leg.hears", &json!({"call": "c", "leg": "l", "hears": 3}))
                .is_err()
        );
    }
}
