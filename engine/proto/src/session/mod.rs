//! NG call signalling state: calls, legs (NG tags) and their media, driven by NG requests.
//!
//! [`Sessions`] holds every call. Each call has legs, one per NG tag (plus an untagged leg for
//! the callee until the answer names it); each leg has one media entry per `m=` line with the
//! relay port pair that leg's party talks to, the party's address from its SDP and its codecs.
//! Two legs in dialogue form a relay per media section.
//!
//! As rtpengine does, an `offer` allocates ports for both sides: the offer's rewritten SDP
//! advertises the callee-facing pair, and the `answer`'s rewritten SDP advertises the
//! caller-facing pair allocated at offer time. A repeated offer (re-INVITE) reuses the pairs.
//!
//! Drive contract: call [`Sessions::handle_request`] (or [`NgHandler::handle_datagram`], which
//! adds framing and the retransmission cache) with the monotonic and wall-clock times; apply the
//! returned [`MediaCommand`]s to the media plane in order. Call [`Sessions::handle_timeout`]
//! when [`Sessions::poll_timeout`] is due (delayed deletions). The engine reports calls it ends
//! itself (media timeout) with [`Sessions::end_call`]. Ports come from the engine's
//! [`PortAllocator`]; counters for replies from its [`StatsSource`].

mod commands;
mod report;
mod transcode;
mod types;

pub use types::{
    EndReason, GlobalStats, InterfaceUsage, LocalPair, MediaCommand, NoStats, PortAllocator,
    PortError, PromptSource, RangePorts, RecordingAction, RecordingLeg, RelayKind, RelaySpec,
    RemoteEndpoint, SideCodecs, StatsSnapshot, StatsSource, StreamSide, StreamStats, UnixMicros,
};

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::bencode::Value;
use crate::ng::{
    self, AddressFamily, Command, IceMode, NgError, NgFramingError, NgMessage, NgOptions,
    NgRequest, ReplaceOptions, RetransmitCache, RtcpMuxOptions,
};
use crate::sdp::{
    self, Codec, Direction, MediaInfo, MediaRewrite, RewriteParams, RtcpAttr, SessionDescription,
};
use crate::time::Micros;

/// Settings of [`Sessions`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionsConfig {
    /// How long a deleted call lingers (rtpengine's `--delete-delay`, default 30 s); the
    /// request's `delete delay` overrides it.
    pub delete_delay: Duration,
    /// Default `limit` of `list` (32, like rtpengine).
    pub list_limit: usize,
    /// Most calls at once; beyond, offers get `load limit` (or an error when the client does
    /// not announce `supports: [load limit]`).
    pub max_calls: usize,
    /// Most `m=` lines in one SDP.
    pub max_media: usize,
    /// Most legs (tags) in one call.
    pub max_legs: usize,
    /// The loop-protect marker written as `a=rtpengine:ID`.
    pub instance_id: String,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        SessionsConfig {
            delete_delay: Duration::from_secs(30),
            list_limit: 32,
            max_calls: 100_000,
            max_media: 16,
            max_legs: 16,
            instance_id: "5357434842".to_owned(),
        }
    }
}

/// The result of one request: the reply dictionary (to encode in the request's encoding) and
/// what the media plane must do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct Outcome {
    /// The reply dictionary.
    pub reply: Value,
    /// Media plane commands, in order.
    pub commands: Vec<MediaCommand>,
}

impl Outcome {
    fn reply(reply: Value) -> Self {
        Outcome {
            reply,
            commands: Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
struct Call {
    id: String,
    seq: u64,
    created_wall: UnixMicros,
    last_signal_wall: UnixMicros,
    legs: Vec<Leg>,
    delete_at: Option<Micros>,
}

#[derive(Debug, Clone)]
struct Leg {
    tag: String,
    label: Option<String>,
    via_branch: Option<String>,
    created_wall: UnixMicros,
    peer: Option<usize>,
    medias: Vec<Media>,
    /// SDP received from this party.
    initialized: bool,
    /// The last SDP sent on this party's behalf and its `o=` version.
    sdp_out: Option<(u64, String)>,
    strict_source: bool,
    asymmetric: bool,
    media_handover: bool,
    /// For a subscriber (`subscribe request`): the tags of the parties it hears. Empty for
    /// the parties of the offer/answer dialogue.
    sources: Vec<String>,
    /// The last SDP received from this party, as sent (for `subscribe request`).
    sdp_in: Option<String>,
}

impl Leg {
    fn is_subscriber(&self) -> bool {
        !self.sources.is_empty()
    }
}

#[derive(Debug, Clone)]
struct Media {
    index: usize,
    kind: String,
    protocol: String,
    opaque: bool,
    local: Option<LocalPair>,
    /// The party's addresses as written in its SDP.
    sdp_endpoint: Option<RemoteEndpoint>,
    /// Where to send: `sdp_endpoint` unless on hold.
    remote: Option<RemoteEndpoint>,
    /// The party's codecs.
    codecs: Vec<Codec>,
    /// What the relay advertised to this party in the last offer it received.
    offered: Vec<Codec>,
    direction: Direction,
    ptime: Option<u32>,
    /// The party's SDP carries `a=rtcp-mux`.
    mux_remote: bool,
    /// rtcp-mux negotiated with this party.
    rtcp_mux: bool,
    /// The `rtcp-mux` options of the offer this party made.
    mux_options: RtcpMuxOptions,
    updated_wall: UnixMicros,
    /// The offer of this media section allows transcoding (codecs added, masked, or
    /// `always transcode`).
    transcoding: bool,
    /// `always transcode` was given for this media section.
    always_transcode: bool,
    /// The packet time asked for the engine's output to this party (`ptime` or
    /// `ptime-reverse`).
    ptime_out: Option<u32>,
    /// What the engine decodes from and encodes to this party, when transcoding.
    transcode: Option<SideCodecs>,
}

impl Media {
    fn new(index: usize, wall: UnixMicros) -> Self {
        Media {
            index,
            kind: String::new(),
            protocol: String::new(),
            opaque: false,
            local: None,
            sdp_endpoint: None,
            remote: None,
            codecs: Vec::new(),
            offered: Vec::new(),
            direction: Direction::SendRecv,
            ptime: None,
            mux_remote: false,
            rtcp_mux: false,
            mux_options: RtcpMuxOptions::default(),
            updated_wall: wall,
            transcoding: false,
            always_transcode: false,
            ptime_out: None,
            transcode: None,
        }
    }
}

/// Counters kept for `statistics`.
#[derive(Debug, Clone, Default)]
struct Counters {
    managed: u64,
    rejected: u64,
    ended: HashMap<&'static str, u64>,
    commands: HashMap<Command, u64>,
    errors: u64,
    call_duration_sum: f64,
    call_duration_sq_sum: f64,
    calls_ended: u64,
}

/// Every call; see the module docs for the drive contract.
#[derive(Debug)]
pub struct Sessions {
    config: SessionsConfig,
    calls: HashMap<String, Call>,
    by_seq: BTreeMap<u64, String>,
    deletions: BTreeMap<(Micros, u64), String>,
    next_seq: u64,
    started: Option<UnixMicros>,
    counters: Counters,
}

/// The request context passed down to the offer/answer code.
struct Ctx<'a> {
    wall: UnixMicros,
    req: &'a NgRequest,
    opts: &'a NgOptions,
    config: &'a SessionsConfig,
}

/// What an offer/answer changed: commands, pairs to release, pairs allocated (for rollback).
#[derive(Default)]
struct Changes {
    commands: Vec<MediaCommand>,
    release: Vec<LocalPair>,
    allocated: Vec<LocalPair>,
}

impl Sessions {
    /// No calls yet.
    #[must_use]
    pub fn new(config: SessionsConfig) -> Self {
        Sessions {
            config,
            calls: HashMap::new(),
            by_seq: BTreeMap::new(),
            deletions: BTreeMap::new(),
            next_seq: 0,
            started: None,
            counters: Counters::default(),
        }
    }

    /// Number of calls (including calls waiting out their delete delay).
    #[must_use]
    pub fn len(&self) -> usize {
        self.calls.len()
    }

    /// True without calls.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// Whether a call exists.
    #[must_use]
    pub fn contains(&self, call_id: &str) -> bool {
        self.calls.contains_key(call_id)
    }

    /// Handles a decoded NG message: parses the request, runs it, and always returns a reply.
    pub fn handle_message(
        &mut self,
        now: Micros,
        wall: UnixMicros,
        message: &NgMessage,
        ports: &mut dyn PortAllocator,
        stats: &dyn StatsSource,
    ) -> Outcome {
        match NgRequest::from_dict(&message.dict) {
            Ok(req) => self.handle_request(now, wall, &req, ports, stats),
            Err(e) => {
                self.counters.errors += 1;
                Outcome::reply(ng::error_reply(&e.to_string()))
            }
        }
    }

    /// Runs one request. Errors become error replies; nothing is half-applied (a failed offer
    /// releases what it allocated and leaves the call as it was).
    pub fn handle_request(
        &mut self,
        now: Micros,
        wall: UnixMicros,
        request: &NgRequest,
        ports: &mut dyn PortAllocator,
        stats: &dyn StatsSource,
    ) -> Outcome {
        self.started.get_or_insert(wall);
        *self.counters.commands.entry(request.command).or_insert(0) += 1;
        let result = match request.command {
            Command::Ping => Ok(Outcome::reply(ng::pong_reply())),
            Command::Offer => self.offer(wall, request, ports),
            Command::Answer => self.answer(wall, request, ports),
            Command::Delete => self.delete(now, wall, request, ports, stats),
            Command::Query => self.query(request, stats),
            Command::List => self.list(request),
            Command::Statistics => Ok(Outcome::reply(ng::ok_reply(
                report::statistics(self, wall, ports, stats),
                &[],
            ))),
            Command::StartRecording => self.recording(request, RecordingAction::Start),
            Command::StopRecording => self.recording(request, RecordingAction::Stop),
            Command::PauseRecording => self.recording(request, RecordingAction::Pause),
            Command::SubscribeRequest => self.subscribe_request(wall, request, ports),
            Command::SubscribeAnswer => self.subscribe_answer(wall, request),
            Command::Unsubscribe => self.unsubscribe(request, ports),
            Command::Connect => self.connect(request),
            Command::PlayMedia => self.play_media(request),
            Command::StopMedia => self.stop_media(request),
            Command::PlayDtmf => self.play_dtmf(request),
            Command::BlockDtmf => self.block_dtmf(request, true),
            Command::UnblockDtmf => self.block_dtmf(request, false),
            other => Err(NgError::Unsupported {
                what: format!("command '{}' is not supported yet", other.name()),
            }),
        };
        result.unwrap_or_else(|e| {
            self.counters.errors += 1;
            match e {
                NgError::Unsupported { .. } | NgError::OutOfPorts
                    if request.command == Command::Offer =>
                {
                    self.counters.rejected += 1;
                }
                _ => {}
            }
            Outcome::reply(ng::error_reply(&e.to_string()))
        })
    }

    /// When the next delayed deletion is due.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Micros> {
        self.deletions.keys().next().map(|(t, _)| *t)
    }

    /// Runs deletions due at `now`; returns the media commands for them.
    pub fn handle_timeout(
        &mut self,
        now: Micros,
        wall: UnixMicros,
        ports: &mut dyn PortAllocator,
    ) -> Vec<MediaCommand> {
        let mut out = Vec::new();
        while let Some(((at, _), _)) = self.deletions.first_key_value() {
            if *at > now {
                break;
            }
            let Some((_, call_id)) = self.deletions.pop_first() else {
                break;
            };
            out.extend(self.remove_call(&call_id, wall, EndReason::Deleted, ports));
        }
        out
    }

    /// Ends a call the engine gave up on (media timeout, shutdown): releases its ports and
    /// returns the commands to close them. Unknown calls yield nothing.
    pub fn end_call(
        &mut self,
        call_id: &str,
        wall: UnixMicros,
        reason: EndReason,
        ports: &mut dyn PortAllocator,
    ) -> Vec<MediaCommand> {
        self.remove_call(call_id, wall, reason, ports)
            .into_iter()
            .collect()
    }

    /// Call-ids in creation order.
    pub fn call_ids(&self) -> impl Iterator<Item = &str> {
        self.by_seq.values().map(String::as_str)
    }

    fn remove_call(
        &mut self,
        call_id: &str,
        wall: UnixMicros,
        reason: EndReason,
        ports: &mut dyn PortAllocator,
    ) -> Option<MediaCommand> {
        let call = self.calls.remove(call_id)?;
        self.by_seq.remove(&call.seq);
        if let Some(at) = call.delete_at {
            self.deletions.remove(&(at, call.seq));
        }
        let name = match reason {
            EndReason::Deleted => "regular",
            EndReason::Timeout => "timeout",
            EndReason::FinalTimeout => "finaltimeout",
            EndReason::OfferTimeout => "offertimeout",
            EndReason::Forced => "forced",
        };
        *self.counters.ended.entry(name).or_insert(0) += 1;
        let secs = wall.0.saturating_sub(call.created_wall.0) as f64 / 1e6;
        self.counters.calls_ended += 1;
        self.counters.call_duration_sum += secs;
        self.counters.call_duration_sq_sum += secs * secs;
        let pairs: Vec<LocalPair> = call
            .legs
            .iter()
            .flat_map(|l| l.medias.iter().filter_map(|m| m.local))
            .collect();
        for p in &pairs {
            ports.release_pair(&call.id, p);
        }
        Some(MediaCommand::DeleteCall {
            call_id: call.id,
            pairs,
        })
    }

    fn offer(
        &mut self,
        wall: UnixMicros,
        req: &NgRequest,
        ports: &mut dyn PortAllocator,
    ) -> Result<Outcome, NgError> {
        let sdp_bytes = req
            .sdp
            .as_deref()
            .filter(|s| !s.is_empty())
            .ok_or(NgError::NoSdp)?;
        let call_id = req.call_id.as_deref().ok_or(NgError::NoCallId)?;
        req.from_tag.as_deref().ok_or(NgError::NoFromTag)?;
        let opts = &req.options;
        let sdp = SessionDescription::parse(sdp_bytes).map_err(|_| NgError::SdpParse)?;
        let infos = sdp.media_info().map_err(|_| NgError::IncompleteSdp)?;
        if opts.flags.loop_protect && sdp.session_attributes().any(|(n, _)| n == "rtpengine") {
            let sdp_text = sdp.write();
            return Ok(Outcome::reply(ng::ok_reply(
                Value::dict().with("sdp", sdp_text),
                &[],
            )));
        }
        let mut warnings = check_options(opts, &infos, &self.config)?;
        let selections = select_codecs(&infos, opts, &mut warnings);
        if !self.calls.contains_key(call_id) && self.calls.len() >= self.config.max_calls {
            self.counters.rejected += 1;
            if opts.supports.iter().any(|s| s == "load limit") {
                return Ok(Outcome::reply(ng::load_limit_reply()));
            }
            return Err(NgError::Unsupported {
                what: format!("more than {} calls (load limit)", self.config.max_calls),
            });
        }
        let ctx = Ctx {
            wall,
            req,
            opts,
            config: &self.config,
        };
        let new_call = !self.calls.contains_key(call_id);
        let call = self
            .calls
            .entry(call_id.to_owned())
            .or_insert_with(|| Call {
                id: call_id.to_owned(),
                seq: self.next_seq,
                created_wall: wall,
                last_signal_wall: wall,
                legs: Vec::new(),
                delete_at: None,
            });
        let backup = (!new_call).then(|| call.clone());
        let mut changes = Changes::default();
        match offer_in_call(call, &ctx, &sdp, &infos, &selections, ports, &mut changes) {
            Ok(sdp_out) => {
                if new_call {
                    self.by_seq.insert(self.next_seq, call_id.to_owned());
                    self.next_seq += 1;
                    self.counters.managed += 1;
                }
                call.last_signal_wall = wall;
                if let Some(at) = call.delete_at.take() {
                    self.deletions.remove(&(at, call.seq));
                }
                for p in &changes.release {
                    ports.release_pair(call_id, p);
                }
                warnings.extend(ice_warning(opts, &infos));
                changes.commands.extend(recording_command(call_id, opts));
                Ok(Outcome {
                    reply: ng::ok_reply(Value::dict().with("sdp", sdp_out), &warnings),
                    commands: changes.commands,
                })
            }
            Err(e) => {
                for p in &changes.allocated {
                    ports.release_pair(call_id, p);
                }
                match backup {
                    Some(b) => *call = b,
                    None => {
                        self.calls.remove(call_id);
                    }
                }
                Err(e)
            }
        }
    }

    fn answer(
        &mut self,
        wall: UnixMicros,
        req: &NgRequest,
        ports: &mut dyn PortAllocator,
    ) -> Result<Outcome, NgError> {
        let sdp_bytes = req
            .sdp
            .as_deref()
            .filter(|s| !s.is_empty())
            .ok_or(NgError::NoSdp)?;
        let call_id = req.call_id.as_deref().ok_or(NgError::NoCallId)?;
        req.from_tag.as_deref().ok_or(NgError::NoFromTag)?;
        req.to_tag.as_deref().ok_or(NgError::NoToTag)?;
        let opts = &req.options;
        let sdp = SessionDescription::parse(sdp_bytes).map_err(|_| NgError::SdpParse)?;
        let infos = sdp.media_info().map_err(|_| NgError::IncompleteSdp)?;
        let mut warnings = check_options(opts, &infos, &self.config)?;
        let ctx = Ctx {
            wall,
            req,
            opts,
            config: &self.config,
        };
        let call = self.calls.get_mut(call_id).ok_or(NgError::UnknownCallId)?;
        let backup = call.clone();
        let mut changes = Changes::default();
        match answer_in_call(call, &ctx, &sdp, &infos, &mut changes) {
            Ok(sdp_out) => {
                call.last_signal_wall = wall;
                if let Some(at) = call.delete_at.take() {
                    self.deletions.remove(&(at, call.seq));
                }
                for p in &changes.release {
                    ports.release_pair(call_id, p);
                }
                warnings.extend(ice_warning(opts, &infos));
                changes.commands.extend(recording_command(call_id, opts));
                Ok(Outcome {
                    reply: ng::ok_reply(Value::dict().with("sdp", sdp_out), &warnings),
                    commands: changes.commands,
                })
            }
            Err(e) => {
                *call = backup;
                Err(e)
            }
        }
    }

    fn delete(
        &mut self,
        now: Micros,
        wall: UnixMicros,
        req: &NgRequest,
        ports: &mut dyn PortAllocator,
        stats: &dyn StatsSource,
    ) -> Result<Outcome, NgError> {
        let call_id = req.call_id.as_deref().ok_or(NgError::NoCallId)?;
        let fatal = req.options.flags.fatal;
        let not_found = || {
            if fatal {
                Err(NgError::CallNotFound)
            } else {
                Ok(Outcome::reply(ng::ok_reply(
                    Value::dict(),
                    &[NgError::CallNotFound.to_string()],
                )))
            }
        };
        let Some(call) = self.calls.get_mut(call_id) else {
            return not_found();
        };
        let has = |tag: &Option<String>| {
            tag.as_deref()
                .is_none_or(|t| call.legs.iter().any(|l| l.tag == t))
        };
        if !has(&req.from_tag) || !has(&req.to_tag) {
            return not_found();
        }
        let reply = match req.from_tag.as_deref() {
            Some(tag) => report::call_stats(call, Some(tag), stats),
            None => Value::dict(),
        };
        let delay = req
            .options
            .delete_delay
            .map_or(self.config.delete_delay, Duration::from_secs);
        let mut commands = Vec::new();
        if delay.is_zero() {
            commands.extend(self.remove_call(call_id, wall, EndReason::Deleted, ports));
        } else {
            let at = now + delay;
            if call.delete_at.is_none_or(|old| at < old) {
                if let Some(old) = call.delete_at.replace(at) {
                    self.deletions.remove(&(old, call.seq));
                }
                self.deletions.insert((at, call.seq), call_id.to_owned());
            }
            call.last_signal_wall = wall;
        }
        Ok(Outcome {
            reply: ng::ok_reply(reply, &[]),
            commands,
        })
    }

    fn query(&self, req: &NgRequest, stats: &dyn StatsSource) -> Result<Outcome, NgError> {
        let call_id = req.call_id.as_deref().ok_or(NgError::NoCallId)?;
        let call = self.calls.get(call_id).ok_or(NgError::UnknownCallId)?;
        Ok(Outcome::reply(ng::ok_reply(
            report::call_stats(call, req.from_tag.as_deref(), stats),
            &[],
        )))
    }

    /// `start recording`, `stop recording`, `pause recording`: the call must exist; the
    /// engine does the rest.
    fn recording(&mut self, req: &NgRequest, action: RecordingAction) -> Result<Outcome, NgError> {
        let call_id = req.call_id.as_deref().ok_or(NgError::NoCallId)?;
        if !self.calls.contains_key(call_id) {
            return Err(NgError::UnknownCallId);
        }
        Ok(Outcome {
            reply: ng::ok_reply(Value::dict(), &[]),
            commands: vec![MediaCommand::Recording {
                call_id: call_id.to_owned(),
                action,
                metadata: req.options.metadata.clone(),
            }],
        })
    }

    /// The parties of a call for recording: each leg with a local pair on its first audio
    /// media section, the caller first. `None` for an unknown call.
    #[must_use]
    pub fn recording_legs(&self, call_id: &str) -> Option<Vec<RecordingLeg>> {
        let call = self.calls.get(call_id)?;
        let legs = call
            .legs
            .iter()
            .enumerate()
            .filter(|(_, leg)| !leg.is_subscriber())
            .filter_map(|(i, leg)| {
                let media = leg
                    .medias
                    .iter()
                    .find(|m| m.kind == "audio" && !m.opaque && m.local.is_some())?;
                Some(RecordingLeg {
                    tag: leg.tag.clone(),
                    label: leg.label.clone(),
                    local: media.local?,
                    codecs: media.codecs.clone(),
                    caller: i == 0,
                })
            })
            .collect();
        Some(legs)
    }

    fn list(&self, req: &NgRequest) -> Result<Outcome, NgError> {
        let limit = match req.options.limit {
            Some(l) if l < 0 => return Err(NgError::InvalidLimit),
            Some(l) => usize::try_from(l).unwrap_or(usize::MAX),
            None => self.config.list_limit,
        };
        let calls: Vec<Value> = self.call_ids().take(limit).map(Value::from).collect();
        Ok(Outcome::reply(ng::ok_reply(
            Value::dict().with("calls", calls),
            &[],
        )))
    }
}

/// Errors for options that need functionality not built yet; warnings for the rest.
fn check_options(
    opts: &NgOptions,
    infos: &[MediaInfo],
    config: &SessionsConfig,
) -> Result<Vec<String>, NgError> {
    let unsupported = |what: String| Err(NgError::Unsupported { what });
    if infos.len() > config.max_media {
        return unsupported(format!("more than {} media sections", config.max_media));
    }
    if let Some(p) = &opts.transport_protocol {
        if !(p.eq_ignore_ascii_case("RTP/AVP") || p.eq_ignore_ascii_case("RTP/AVPF")) {
            return unsupported(format!("transport protocol {p} (SRTP and others)"));
        }
    }
    for m in infos.iter().filter(|m| m.port != 0) {
        if sdp::is_srtp_protocol(&m.protocol) {
            return unsupported(format!("SRTP media ({})", m.protocol));
        }
        if m.protocol.to_ascii_uppercase().starts_with("TCP") {
            return unsupported(format!("TCP media ({})", m.protocol));
        }
    }
    if matches!(opts.ice, Some(IceMode::Force | IceMode::ForceRelay)) {
        return unsupported("ICE=force (ICE)".to_owned());
    }
    if let Some(c) = opts.codec.set.first() {
        return unsupported(format!("codec set {c}"));
    }
    let mut warnings = Vec::new();
    let mut later: Vec<String> = opts.unsupported.clone();
    if opts.flags.inject_dtmf {
        later.push("inject DTMF".to_owned());
    }
    if opts.flags.detect_dtmf {
        later.push("detect DTMF".to_owned());
    }
    if opts.replace.username {
        later.push("replace username".to_owned());
    }
    if opts.replace.session_name {
        later.push("replace session name".to_owned());
    }
    if !later.is_empty() {
        warnings.push(format!("Not supported yet, ignored: {}", later.join(", ")));
    }
    if !opts.unknown_flags.is_empty() {
        warnings.push(format!(
            "Unknown flags ignored: {}",
            opts.unknown_flags.join(", ")
        ));
    }
    Ok(warnings)
}

/// The recording command an offer or answer implies: `record call: yes` (or the flag) starts
/// recording; `metadata` alone updates it. `record call: no` asks for nothing (a recording
/// started otherwise goes on).
fn recording_command(call_id: &str, opts: &NgOptions) -> Option<MediaCommand> {
    let action = if opts.flags.record_call || opts.record_call == Some(true) {
        RecordingAction::Start
    } else if opts.metadata.is_some() {
        RecordingAction::Metadata
    } else {
        return None;
    };
    Some(MediaCommand::Recording {
        call_id: call_id.to_owned(),
        action,
        metadata: opts.metadata.clone(),
    })
}

fn ice_warning(opts: &NgOptions, infos: &[MediaInfo]) -> Option<String> {
    let has_ice = infos.iter().any(|m| m.has_ice);
    (has_ice && !matches!(opts.ice, Some(IceMode::Remove)))
        .then(|| "ICE is not supported yet: ICE attributes were removed".to_owned())
}

/// Applies the `codec` options to each RTP media section of an offer; `transcode` entries
/// the engine cannot produce are ignored with a warning.
fn select_codecs(
    infos: &[MediaInfo],
    opts: &NgOptions,
    warnings: &mut Vec<String>,
) -> Vec<Option<transcode::OfferCodecs>> {
    let mut ignored = Vec::new();
    let selections = infos
        .iter()
        .map(|m| {
            m.is_rtp().then(|| {
                transcode::offer_codecs(
                    &m.codecs,
                    &opts.codec,
                    opts.flags.always_transcode,
                    &mut ignored,
                )
            })
        })
        .collect();
    ignored.dedup();
    if !ignored.is_empty() {
        let shown: Vec<&str> = ignored.iter().take(8).map(String::as_str).collect();
        let more = ignored.len().saturating_sub(shown.len());
        let mut w = format!(
            "Unsupported codecs for transcoding, ignored: {}",
            shown.join(", ")
        );
        if more > 0 {
            w.push_str(&format!(" and {more} more"));
        }
        warnings.push(w);
    }
    selections
}

fn leg_index(call: &Call, tag: &str) -> Option<usize> {
    call.legs.iter().position(|l| l.tag == tag)
}

fn add_leg(call: &mut Call, tag: &str, ctx: &Ctx<'_>) -> Result<usize, NgError> {
    if call.legs.len() >= ctx.config.max_legs {
        return Err(NgError::Unsupported {
            what: format!("more than {} legs in one call", ctx.config.max_legs),
        });
    }
    call.legs.push(Leg {
        tag: tag.to_owned(),
        label: None,
        via_branch: None,
        created_wall: ctx.wall,
        peer: None,
        medias: Vec::new(),
        initialized: false,
        sdp_out: None,
        strict_source: false,
        asymmetric: false,
        media_handover: false,
        sources: Vec::new(),
        sdp_in: None,
    });
    Ok(call.legs.len() - 1)
}

fn link(call: &mut Call, a: usize, b: usize) {
    for (x, y) in [(a, b), (b, a)] {
        if let Some(old) = call.legs[x].peer.filter(|o| *o != y) {
            if call.legs[old].peer == Some(x) {
                call.legs[old].peer = None;
            }
        }
        call.legs[x].peer = Some(y);
    }
}

fn ensure_media(leg: &mut Leg, count: usize, wall: UnixMicros) {
    while leg.medias.len() < count {
        let index = leg.medias.len() + 1;
        leg.medias.push(Media::new(index, wall));
    }
}

/// Records a party's SDP for one media section on its leg.
fn absorb_sdp(media: &mut Media, info: &MediaInfo, codecs: Vec<Codec>, ctx: &Ctx<'_>) {
    let addr = match (ctx.opts.flags.sip_source_address, ctx.opts.received_from) {
        (true, Some(a)) => a,
        _ => info.address,
    };
    let rtcp_addr = if info.rtcp_address == info.address {
        addr
    } else {
        info.rtcp_address
    };
    let endpoint = RemoteEndpoint {
        rtp: SocketAddr::new(addr, info.port),
        rtcp: SocketAddr::new(rtcp_addr, info.rtcp_port),
    };
    media.kind.clone_from(&info.media);
    media.protocol.clone_from(&info.protocol);
    media.opaque = !info.is_rtp();
    media.sdp_endpoint = (info.port != 0).then_some(endpoint);
    media.remote = (info.port != 0 && !addr.is_unspecified()).then_some(endpoint);
    media.codecs = codecs;
    media.direction = info.direction;
    media.ptime = info.ptime;
    media.mux_remote = info.rtcp_mux;
    media.updated_wall = ctx.wall;
}

fn allocate(
    media: &mut Media,
    call_id: &str,
    family: AddressFamily,
    interface: Option<&str>,
    ports: &mut dyn PortAllocator,
    changes: &mut Changes,
) -> Result<LocalPair, NgError> {
    if let Some(p) = media.local {
        return Ok(p);
    }
    let pair = ports
        .allocate_pair(call_id, family, interface)
        .map_err(|e| match e {
            PortError::UnknownInterface(name) => NgError::Unsupported {
                what: format!("unknown interface '{name}' in direction"),
            },
            _ => NgError::OutOfPorts,
        })?;
    changes.allocated.push(pair);
    media.local = Some(pair);
    Ok(pair)
}

fn release_media(call_id: &str, index: usize, legs: [&mut Media; 2], changes: &mut Changes) {
    let pairs: Vec<LocalPair> = legs.into_iter().filter_map(|m| m.local.take()).collect();
    if !pairs.is_empty() {
        changes.release.extend(pairs.iter().copied());
        changes.commands.push(MediaCommand::RemoveRelay {
            call_id: call_id.to_owned(),
            media_index: index,
            pairs,
        });
    }
}

fn two_mut<T>(v: &mut [T], a: usize, b: usize) -> (&mut T, &mut T) {
    debug_assert_ne!(a, b);
    if a < b {
        let (x, y) = v.split_at_mut(b);
        (&mut x[a], &mut y[0])
    } else {
        let (x, y) = v.split_at_mut(a);
        (&mut y[0], &mut x[b])
    }
}

fn side(leg: &Leg, media: &Media, local: LocalPair) -> StreamSide {
    StreamSide {
        tag: leg.tag.clone(),
        local,
        remote: media.remote,
        rtcp_mux: media.rtcp_mux,
        strict_source: leg.strict_source,
        learn_address: !leg.asymmetric,
        media_handover: leg.media_handover,
        direction: media.direction,
        payload_types: media.codecs.iter().map(|c| c.payload_type).collect(),
    }
}

fn relay_commands(call: &Call, a: usize, b: usize, count: usize, out: &mut Vec<MediaCommand>) {
    let (first, second) = if a < b { (a, b) } else { (b, a) };
    let (l1, l2) = (&call.legs[first], &call.legs[second]);
    for k in 0..count {
        let (Some(m1), Some(m2)) = (l1.medias.get(k), l2.medias.get(k)) else {
            continue;
        };
        let (Some(p1), Some(p2)) = (m1.local, m2.local) else {
            continue;
        };
        out.push(MediaCommand::SetRelay(Box::new(RelaySpec {
            call_id: call.id.clone(),
            media_index: k + 1,
            kind: if m1.opaque || m2.opaque {
                RelayKind::Opaque
            } else {
                RelayKind::Rtp
            },
            sides: [side(l1, m1, p1), side(l2, m2, p2)],
            transcode: match (&m1.transcode, &m2.transcode) {
                (Some(a), Some(b)) => Some(Box::new([a.clone(), b.clone()])),
                _ => None,
            },
        })));
    }
}

fn rtcp_attr(opts: &NgOptions, port: u16, addr: IpAddr) -> RtcpAttr {
    if opts.flags.no_rtcp_attribute {
        RtcpAttr::Omit
    } else if opts.flags.full_rtcp_attribute {
        RtcpAttr::Full(port, addr)
    } else {
        RtcpAttr::Port(port)
    }
}

/// Rewrites with the `o=` version rules of `replace: SDP version`: the version stays while the
/// output is unchanged and goes up by one when it changes (always, with `force increment`).
fn versioned_rewrite(
    sdp: &SessionDescription,
    params: &mut RewriteParams,
    state: &mut Option<(u64, String)>,
    replace: &ReplaceOptions,
) -> String {
    let managed = replace.sdp_version || replace.force_increment_sdp_version;
    let out = match (managed, state.as_ref()) {
        (true, Some((version, last))) => {
            params.sdp_version = Some(*version);
            let out = sdp::rewrite(sdp, params);
            if replace.force_increment_sdp_version || out != *last {
                params.sdp_version = Some(version.saturating_add(1));
                sdp::rewrite(sdp, params)
            } else {
                out
            }
        }
        _ => sdp::rewrite(sdp, params),
    };
    let version = params
        .sdp_version
        .or_else(|| sdp.origin().and_then(|o| o[2].parse::<u64>().ok()));
    if let Some(v) = version {
        *state = Some((v, out.clone()));
    }
    out
}

fn first_family(infos: &[MediaInfo]) -> AddressFamily {
    infos
        .iter()
        .find(|m| m.port != 0)
        .or(infos.first())
        .map_or(AddressFamily::Ip4, |m| AddressFamily::of(&m.address))
}

fn offer_in_call(
    call: &mut Call,
    ctx: &Ctx<'_>,
    sdp: &SessionDescription,
    infos: &[MediaInfo],
    selections: &[Option<transcode::OfferCodecs>],
    ports: &mut dyn PortAllocator,
    changes: &mut Changes,
) -> Result<String, NgError> {
    let opts = ctx.opts;
    reject_subscriber_tags(call, ctx.req)?;
    let from_tag = ctx.req.from_tag.as_deref().unwrap_or("");
    let f = match leg_index(call, from_tag) {
        Some(i) => i,
        None => add_leg(call, from_tag, ctx)?,
    };
    // A to-tag equal to the from-tag names no second party.
    let to_tag = ctx.req.to_tag.as_deref().filter(|t| *t != from_tag);
    let p = match to_tag {
        Some(tt) => match leg_index(call, tt).filter(|i| *i != f) {
            Some(i) => i,
            None => match call.legs[f].peer {
                Some(pi) => {
                    tt.clone_into(&mut call.legs[pi].tag);
                    pi
                }
                None => add_leg(call, tt, ctx)?,
            },
        },
        None => match call.legs[f].peer {
            Some(pi) => pi,
            None => add_leg(call, "", ctx)?,
        },
    };
    link(call, f, p);
    {
        let leg = &mut call.legs[f];
        if let Some(l) = opts.label.as_ref().or(opts.set_label.as_ref()) {
            leg.label = Some(l.clone());
        }
        leg.initialized = true;
        leg.sdp_in = Some(sdp.write());
        leg.strict_source = opts.flags.strict_source;
        leg.asymmetric = opts.flags.asymmetric;
        leg.media_handover = opts.flags.media_handover;
    }
    if let Some(l) = &opts.to_label {
        call.legs[p].label = Some(l.clone());
    }
    if let Some(vb) = &ctx.req.via_branch {
        call.legs[p].via_branch = Some(vb.clone());
    }
    let family_f = first_family(infos);
    let family_p = opts
        .address_family
        .or(opts.media_address.as_ref().map(AddressFamily::of))
        .unwrap_or(family_f);
    let iface_f = opts.direction.first().map(String::as_str);
    let iface_p = opts.direction.get(1).map(String::as_str);
    let call_id = call.id.clone();
    let n = infos.len();
    ensure_media(&mut call.legs[f], n, ctx.wall);
    ensure_media(&mut call.legs[p], n, ctx.wall);

    let mut rewrites = Vec::with_capacity(n);
    for (k, info) in infos.iter().enumerate() {
        let (lf, lp) = two_mut(&mut call.legs, f, p);
        let (mf, mp) = (&mut lf.medias[k], &mut lp.medias[k]);
        let selection = selections.get(k).cloned().flatten();
        let codecs = selection
            .as_ref()
            .map_or_else(|| info.codecs.clone(), |s| s.offerer.clone());
        absorb_sdp(mf, info, codecs, ctx);
        let transcoding = selection.as_ref().is_some_and(|s| s.transcoding);
        for m in [&mut *mf, &mut *mp] {
            m.transcoding = transcoding;
            m.always_transcode = opts.flags.always_transcode;
        }
        mp.ptime_out = opts.ptime;
        mf.ptime_out = opts.ptime_reverse;
        mf.mux_options = opts.rtcp_mux.clone();
        mp.kind.clone_from(&info.media);
        mp.protocol.clone_from(&info.protocol);
        mp.opaque = mf.opaque;
        if info.port == 0 {
            release_media(&call_id, k + 1, [mf, mp], changes);
            mp.offered.clear();
            rewrites.push(None);
            continue;
        }
        allocate(mf, &call_id, family_f, iface_f, ports, changes)?;
        let pair_p = allocate(mp, &call_id, family_p, iface_p, ports, changes)?;
        let selected = selection.map(|s| s.answerer);
        mp.offered = selected.clone().unwrap_or_default();
        let mux = &opts.rtcp_mux;
        let mux_out = mux.require || mux.offer || (info.rtcp_mux && !mux.demux && !mux.reject);
        if mux.require {
            mp.rtcp_mux = true;
        }
        let adv = opts.media_address.unwrap_or(pair_p.address);
        let rtcp_port = if mux.require {
            pair_p.rtp_port
        } else {
            pair_p.rtcp_port
        };
        let rtp = info.is_rtp();
        rewrites.push(Some(MediaRewrite {
            port: pair_p.rtp_port,
            address: adv,
            protocol: opts.transport_protocol.clone(),
            codecs: selected,
            direction: info.direction,
            rtcp: if rtp {
                rtcp_attr(opts, rtcp_port, adv)
            } else {
                RtcpAttr::Omit
            },
            rtcp_mux: mux_out && rtp,
            ptime: opts.ptime.or(info.ptime),
        }));
    }
    let address = session_address(&call.legs[p], opts, family_p, iface_p, ports);
    let mut params = RewriteParams {
        address,
        media: rewrites
            .into_iter()
            .map(|r| r.unwrap_or_else(|| rejected(address)))
            .collect(),
        replace_origin: opts.replace.origin,
        sdp_version: None,
        loop_protect: opts
            .flags
            .loop_protect
            .then(|| ctx.config.instance_id.clone()),
        zero_address: opts.replace.zero_address,
        strip_extmap: opts.flags.strip_extmap,
    };
    let out = versioned_rewrite(sdp, &mut params, &mut call.legs[f].sdp_out, &opts.replace);
    relay_commands(call, f, p, n, &mut changes.commands);
    Ok(out)
}

/// Offers and answers are between dialogue parties: a tag of a subscription is refused.
fn reject_subscriber_tags(call: &Call, req: &NgRequest) -> Result<(), NgError> {
    let named = |t: &Option<String>| {
        t.as_deref()
            .and_then(|t| call.legs.iter().find(|l| l.tag == t))
            .is_some_and(Leg::is_subscriber)
    };
    if named(&req.from_tag) || named(&req.to_tag) {
        return Err(NgError::Unsupported {
            what: "offer or answer naming a subscription's tag".to_owned(),
        });
    }
    Ok(())
}

fn rejected(address: IpAddr) -> MediaRewrite {
    MediaRewrite {
        port: 0,
        address,
        protocol: None,
        codecs: None,
        direction: Direction::Inactive,
        rtcp: RtcpAttr::Omit,
        rtcp_mux: false,
        ptime: None,
    }
}

/// The address for session-level lines of SDP sent to `leg`'s party.
fn session_address(
    leg: &Leg,
    opts: &NgOptions,
    family: AddressFamily,
    iface: Option<&str>,
    ports: &dyn PortAllocator,
) -> IpAddr {
    opts.media_address
        .or_else(|| leg.medias.iter().find_map(|m| m.local.map(|p| p.address)))
        .or_else(|| ports.address(family, iface))
        .unwrap_or(match family {
            AddressFamily::Ip4 => IpAddr::from([127, 0, 0, 1]),
            AddressFamily::Ip6 => IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
        })
}

fn answer_in_call(
    call: &mut Call,
    ctx: &Ctx<'_>,
    sdp: &SessionDescription,
    infos: &[MediaInfo],
    changes: &mut Changes,
) -> Result<String, NgError> {
    let opts = ctx.opts;
    reject_subscriber_tags(call, ctx.req)?;
    let from_tag = ctx.req.from_tag.as_deref().unwrap_or("");
    let to_tag = ctx.req.to_tag.as_deref().unwrap_or("");
    // The offerer (from-tag) and the answerer (to-tag, or the offerer's untagged peer).
    let f = leg_index(call, from_tag).ok_or(NgError::UnknownCallId)?;
    let p = match leg_index(call, to_tag).filter(|i| *i != f) {
        Some(i) => i,
        None => {
            let pi = call.legs[f].peer.ok_or(NgError::UnknownCallId)?;
            if to_tag != from_tag {
                to_tag.clone_into(&mut call.legs[pi].tag);
            }
            pi
        }
    };
    link(call, f, p);
    {
        let leg = &mut call.legs[p];
        leg.initialized = true;
        leg.sdp_in = Some(sdp.write());
        leg.strict_source = opts.flags.strict_source;
        leg.asymmetric = opts.flags.asymmetric;
        leg.media_handover = opts.flags.media_handover;
        if let Some(l) = opts.label.as_ref().or(opts.set_label.as_ref()) {
            leg.label = Some(l.clone());
        }
    }
    let call_id = call.id.clone();
    let n = infos.len();
    ensure_media(&mut call.legs[f], n, ctx.wall);
    ensure_media(&mut call.legs[p], n, ctx.wall);
    let family_f = call.legs[f]
        .medias
        .iter()
        .find_map(|m| m.local.map(|l| l.family()))
        .unwrap_or(AddressFamily::Ip4);
    let iface_f = opts.direction.first().map(String::as_str);
    let mut rewrites = Vec::with_capacity(n);
    for (k, info) in infos.iter().enumerate() {
        let (lf, lp) = two_mut(&mut call.legs, f, p);
        let (mf, mp) = (&mut lf.medias[k], &mut lp.medias[k]);
        let offered = mp.offered.clone();
        let mut codecs: Vec<Codec> = info
            .codecs
            .iter()
            .filter(|c| offered.iter().any(|o| o.payload_type == c.payload_type))
            .cloned()
            .collect();
        if codecs.is_empty() {
            // Nothing the answer lists was offered: rtpengine falls back to what it offered.
            codecs = if offered.is_empty() {
                info.codecs.clone()
            } else {
                offered
            };
        }
        let codecs = if opts.codec.is_empty() {
            codecs
        } else {
            sdp::apply_codec_options(&codecs, &opts.codec).codecs
        };
        absorb_sdp(mp, info, codecs.clone(), ctx);
        let always = mp.always_transcode || opts.flags.always_transcode;
        let decision = (info.is_rtp() && (mp.transcoding || always)).then(|| {
            let ptimes = transcode::Ptimes {
                offerer: opts.ptime_reverse.or(mf.ptime_out).or(mf.ptime),
                answerer: mp.ptime_out.or(opts.ptime).or(info.ptime),
            };
            transcode::answer_codecs(&mf.codecs, &codecs, always, ptimes)
        });
        let (to_offerer, offer_ptime) = match &decision {
            Some(d) if d.sides.is_some() => (d.to_offerer.clone(), mf.ptime),
            Some(d) => (d.to_offerer.clone(), opts.ptime.or(info.ptime).or(mf.ptime)),
            None => (codecs, opts.ptime.or(info.ptime).or(mf.ptime)),
        };
        let sides = decision.and_then(|d| d.sides);
        mf.transcode = sides.as_ref().map(|s| s.0.clone());
        mp.transcode = sides.map(|s| s.1);
        let (Some(pair_f), true) = (mf.local, mp.local.is_some() && info.port != 0) else {
            release_media(&call_id, k + 1, [mf, mp], changes);
            rewrites.push(None);
            continue;
        };
        let mux = mf.mux_options.clone();
        mp.rtcp_mux = info.rtcp_mux || mux.require;
        mf.rtcp_mux = mf.mux_remote && !mux.reject && (info.rtcp_mux || mux.accept || mux.demux);
        let adv = opts.media_address.unwrap_or(pair_f.address);
        let rtcp_port = if mf.rtcp_mux {
            pair_f.rtp_port
        } else {
            pair_f.rtcp_port
        };
        rewrites.push(Some(MediaRewrite {
            port: pair_f.rtp_port,
            address: adv,
            protocol: opts.transport_protocol.clone(),
            codecs: (!mp.opaque).then_some(to_offerer),
            direction: info.direction,
            rtcp: if mp.opaque {
                RtcpAttr::Omit
            } else {
                rtcp_attr(opts, rtcp_port, adv)
            },
            rtcp_mux: mf.rtcp_mux && !mp.opaque,
            ptime: offer_ptime,
        }));
    }
    let address = session_address(&call.legs[f], opts, family_f, iface_f, &NoPorts);
    let mut params = RewriteParams {
        address,
        media: rewrites
            .into_iter()
            .map(|r| r.unwrap_or_else(|| rejected(address)))
            .collect(),
        replace_origin: opts.replace.origin,
        sdp_version: None,
        loop_protect: opts
            .flags
            .loop_protect
            .then(|| ctx.config.instance_id.clone()),
        zero_address: opts.replace.zero_address,
        strip_extmap: opts.flags.strip_extmap,
    };
    let out = versioned_rewrite(sdp, &mut params, &mut call.legs[p].sdp_out, &opts.replace);
    relay_commands(call, f, p, n, &mut changes.commands);
    Ok(out)
}

/// Used where no allocation may happen (answers): knows no addresses.
struct NoPorts;

impl PortAllocator for NoPorts {
    fn allocate_pair(
        &mut self,
        _call_id: &str,
        _family: AddressFamily,
        _interface: Option<&str>,
    ) -> Result<LocalPair, PortError> {
        Err(PortError::Exhausted)
    }

    fn release_pair(&mut self, _call_id: &str, _pair: &LocalPair) {}

    fn address(&self, _family: AddressFamily, _interface: Option<&str>) -> Option<IpAddr> {
        None
    }
}

/// What [`NgHandler::handle_datagram`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct DatagramOutcome {
    /// The complete reply datagram (cookie, space, encoded dictionary).
    pub reply: Vec<u8>,
    /// Media plane commands, in order (empty for a retransmission).
    pub commands: Vec<MediaCommand>,
    /// The reply came from the retransmission cache: the command was not run again.
    pub retransmission: bool,
}

/// The whole NG pipeline for one control endpoint: framing, retransmission cache, request
/// handling and reply encoding. Sans-IO: bytes and times in, reply bytes and media commands out.
#[derive(Debug)]
pub struct NgHandler {
    /// The call state.
    pub sessions: Sessions,
    /// Replies by cookie.
    pub cache: RetransmitCache,
}

impl NgHandler {
    /// A handler with empty state.
    #[must_use]
    pub fn new(sessions: Sessions, cache: RetransmitCache) -> Self {
        NgHandler { sessions, cache }
    }

    /// Handles one datagram (or one message cut out of a TCP stream by
    /// [`ng::frame_tcp`]). `None`: drop silently (no cookie).
    pub fn handle_datagram(
        &mut self,
        now: Micros,
        wall: UnixMicros,
        data: &[u8],
        ports: &mut dyn PortAllocator,
        stats: &dyn StatsSource,
    ) -> Option<DatagramOutcome> {
        let message = match ng::parse_datagram(data) {
            Ok(m) => m,
            Err(NgFramingError::NoCookie) => return None,
            Err(e) => {
                let cookie = e.cookie().unwrap_or_default().to_vec();
                if let Some(hit) = self.cache.lookup(&cookie, now) {
                    return Some(DatagramOutcome {
                        reply: hit.to_vec(),
                        commands: Vec::new(),
                        retransmission: true,
                    });
                }
                let reply = e.reply()?;
                self.cache.insert(&cookie, reply.clone(), now);
                return Some(DatagramOutcome {
                    reply,
                    commands: Vec::new(),
                    retransmission: false,
                });
            }
        };
        if let Some(hit) = self.cache.lookup(&message.cookie, now) {
            return Some(DatagramOutcome {
                reply: hit.to_vec(),
                commands: Vec::new(),
                retransmission: true,
            });
        }
        let outcome = self
            .sessions
            .handle_message(now, wall, &message, ports, stats);
        let reply = ng::encode_reply(&message.cookie, message.encoding, &outcome.reply);
        self.cache.insert(&message.cookie, reply.clone(), now);
        Some(DatagramOutcome {
            reply,
            commands: outcome.commands,
            retransmission: false,
        })
    }

    /// The earliest time [`handle_timeout`](Self::handle_timeout) has work.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Micros> {
        match (self.sessions.poll_timeout(), self.cache.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs due deletions and expires cached replies.
    pub fn handle_timeout(
        &mut self,
        now: Micros,
        wall: UnixMicros,
        ports: &mut dyn PortAllocator,
    ) -> Vec<MediaCommand> {
        self.cache.expire(now);
        self.sessions.handle_timeout(now, wall, ports)
    }
}
