//! Scenarios whose media the target re-encodes, so packets carry no probe: `transcode`
//! (NG offer/answer with `codec: {mask, transcode}`), `conference` (N members of a mixed
//! call over the native protocol, K of them speaking) and `barge` (customer, agent and a
//! supervisor who barges in, over the native protocol). The calls of `fork` (two parties and
//! a media fork each, see [`crate::fork`]) are set up and measured here too.
//!
//! Every party is an *endpoint*: one socket of the harness, what it sends (pre-encoded speech
//! frames of its codec, see [`crate::media`]) and what it receives. Endpoints of one call live
//! on the same worker thread. A worker wakes on a fixed tick, sends what is due on an absolute
//! schedule and drains its sockets with `recvmmsg`, reading the kernel's arrival timestamps.
//!
//! What is measured per received stream:
//! - loss: for a transcoded stream, packets its peer sent less distinct packets received; for
//!   a mix, gaps in the output's sequence numbers (a mixer may send nothing in silence);
//! - duplicates and reordering (RFC 3550 §A.1 extended sequence numbers);
//! - jitter (RFC 3550 §A.8, from the output's RTP timestamps);
//! - added latency of transcoded streams. Between G.711 codecs the output is an exact
//!   function of the input (table look-ups), so each output payload names the speech frame it
//!   came from and thus the input packet and its send time ([`Matcher`]). Otherwise (Opus)
//!   a transcoder is assumed to send one output packet per input
//!   packet, with sequence numbers that follow the input's (timestamps are no guide: some
//!   transcoders restamp them from their own clock). Each transcoded stream pauses 80 ms after
//!   its first packet, so the first output packet can only come from it; every later output
//!   packet maps by its sequence-number distance to the input packet it came from and that
//!   packet's send time. Exact while the target adds less than 80 ms and either loses
//!   nothing or keeps the input's sequence gaps in its output; mixed output has no such
//!   mapping: mixes report no latency.
//!
//! CPU: the target's CPU per received packet, and for mixes per mixed participant-frame:
//! CPU seconds / (participants × 50 frames/s × window).

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{Value, json};
use socket2::{Domain, Protocol, Socket, Type};

use crate::Interrupted;
use crate::cli::{Progress, Target, TargetArgs};
use crate::media::{Codec, Frames, Source, Speech};
use crate::native::NativeClient;
use crate::ng::{CallIds, NgClient, NgConfig};
use crate::ramp::{self, RampArgs};
use crate::relay::{
    Live, Timeline, WorkerOutcome, join_workers, media_note, sleep_interruptible, watch_window,
};
use crate::report::{
    ControlFigures, Figures, Measurement, PacketCounts, Report, RunReport, TargetReport,
};
use crate::rtp::{self, RtpHeader};
use crate::seq::{Arrival, Jitter, StreamRx};
use crate::sys::{self, Poller, RecvBatch};

/// Most calls (or conferences) per run.
pub const MAX_CALLS: u32 = 5_000;
/// Most members of one conference.
pub const MAX_MEMBERS: u32 = 100;
/// Send times kept per sending endpoint, for matching transcoded output (5 s at 50/s).
const RING: usize = 256;
/// How long workers keep receiving after the last send.
const DRAIN_NS: u64 = 500_000_000;
/// Frames per second every party sends and a mixer sends back (20 ms).
pub const FRAME_RATE: u32 = 50;
const PERIOD_NS: u64 = 1_000_000_000 / FRAME_RATE as u64;
/// Pause after a transcoded stream's first packet: its output arrives alone, so it anchors
/// the matching of output timestamps to input packets (exact while the target adds less
/// than this).
const LEAD_GAP_NS: u64 = 4 * PERIOD_NS;

/// Options shared by `transcode`, `conference` and `barge`.
#[derive(Debug, Clone, PartialEq, Args)]
pub struct MixArgs {
    /// Target(s) and measurement.
    #[command(flatten)]
    pub target: TargetArgs,
    /// Concurrent calls (conferences for `conference`).
    #[arg(long, default_value_t = 20)]
    pub calls: u32,
    /// Length of the measurement window, seconds (after the ramp-up).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds over which calls start sending, one after another, before the window opens.
    #[arg(long, default_value_t = 2.0)]
    pub ramp_up: f64,
    /// Worker threads sending and receiving media.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Worker tick, microseconds.
    #[arg(long, default_value_t = 200)]
    pub tick_us: u64,
    /// Capacity ramp.
    #[command(flatten)]
    pub ramp: RampArgs,
}

/// Options of `switchboard-load transcode`.
#[derive(Debug, Clone, PartialEq, Args)]
pub struct TranscodeArgs {
    /// Common options.
    #[command(flatten)]
    pub common: MixArgs,
    /// Codec the caller (A) sends and receives.
    #[arg(long, value_enum, default_value = "pcmu")]
    pub from: Codec,
    /// Codec the callee (B) is offered instead (the relay transcodes between them).
    #[arg(long, value_enum, default_value = "pcma")]
    pub to: Codec,
}

/// Options of `switchboard-load conference`.
#[derive(Debug, Clone, PartialEq, Args)]
pub struct ConferenceArgs {
    /// Common options (`--calls` counts conferences).
    #[command(flatten)]
    pub common: MixArgs,
    /// Members per conference.
    #[arg(long, default_value_t = 3)]
    pub members: u32,
    /// Members of each conference that speak (the others only listen).
    #[arg(long, default_value_t = 1)]
    pub speakers: u32,
}

/// Options of `switchboard-load barge`.
#[derive(Debug, Clone, PartialEq, Args)]
pub struct BargeArgs {
    /// Common options.
    #[command(flatten)]
    pub common: MixArgs,
}

/// Which scenario, with its own settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Kind {
    /// NG transcoding between two codecs.
    Transcode {
        /// A's codec.
        from: Codec,
        /// B's codec.
        to: Codec,
    },
    /// Native conferences.
    Conference {
        /// Members per conference.
        members: u32,
        /// Speaking members.
        speakers: u32,
    },
    /// Native three-party barge.
    Barge,
    /// Native two-party calls, each with a media fork to the harness's WebSocket sink.
    Fork {
        /// What the fork streams.
        what: crate::fork::What,
        /// Sample rate of the forked L16 audio.
        rate: u32,
        /// Whether the sink sends bot audio back (played to the caller).
        bot_audio: bool,
    },
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Transcode { .. } => "transcode",
            Kind::Conference { .. } => "conference",
            Kind::Barge => "barge",
            Kind::Fork { .. } => "fork",
        }
    }

    fn is_mix(self) -> bool {
        !matches!(self, Kind::Transcode { .. })
    }

    /// Parties per call.
    fn parties(self) -> u32 {
        match self {
            Kind::Transcode { .. } => 2,
            Kind::Conference { members, .. } => members,
            Kind::Barge => 3,
            Kind::Fork { .. } => 2,
        }
    }
}

/// Validated settings, as reported.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MixSettings {
    /// Scenario and its own settings.
    pub scenario: Kind,
    /// Calls or conferences.
    pub calls: u32,
    /// Window, seconds.
    pub duration_s: f64,
    /// Ramp-up, seconds.
    pub ramp_up_s: f64,
    /// Worker threads.
    pub threads: usize,
    /// Tick, microseconds.
    pub tick_us: u64,
    /// Runs per target.
    pub rounds: u32,
    /// Local address.
    pub local_ip: IpAddr,
    /// Where the speech comes from.
    pub media: Source,
}

/// A validated run.
#[derive(Debug, Clone)]
pub(crate) struct MixConfig {
    pub(crate) settings: MixSettings,
    pub(crate) targets: Vec<Target>,
    duration_ns: u64,
    ramp_up_ns: u64,
    /// Pre-encoded speech per codec.
    pcmu: Arc<Frames>,
    pcma: Arc<Frames>,
    opus: Arc<Frames>,
    /// Transcode between G.711 codecs: (A→B, B→A) expected outputs.
    matchers: (Option<Arc<Matcher>>, Option<Arc<Matcher>>),
    /// `fork`: where the forks stream to.
    pub(crate) fork: Option<crate::fork::ForkPlan>,
}

impl MixConfig {
    pub(crate) fn new(common: &MixArgs, kind: Kind) -> Result<Self> {
        let targets = common.target.targets()?;
        if !(1..=MAX_CALLS).contains(&common.calls) {
            bail!("--calls must be between 1 and {MAX_CALLS}");
        }
        if !(common.duration > 0.0 && common.duration <= crate::relay::MAX_SECONDS) {
            bail!("--duration must be more than 0 and at most 3600 seconds");
        }
        if !(common.ramp_up >= 0.0 && common.ramp_up <= crate::relay::MAX_SECONDS) {
            bail!("--ramp-up must be between 0 and 3600 seconds");
        }
        if !(1..=crate::relay::MAX_THREADS).contains(&common.threads) {
            bail!("--threads must be between 1 and 64");
        }
        if !(50..=20_000).contains(&common.tick_us) {
            bail!("--tick-us must be between 50 and 20000");
        }
        match kind {
            Kind::Conference { members, speakers } => {
                if !(2..=MAX_MEMBERS).contains(&members) {
                    bail!("--members must be between 2 and {MAX_MEMBERS}");
                }
                if speakers > members {
                    bail!("--speakers cannot exceed --members");
                }
            }
            Kind::Transcode { from, to } if from == to => {
                bail!("--from and --to name the same codec: nothing to transcode")
            }
            _ => {}
        }
        if kind.is_mix() {
            for t in &targets {
                if t.control.is_none() {
                    bail!(
                        "{} runs over Switchboard's native control protocol: give --control \
                         ADDR{} (the NG protocol has no equivalent)",
                        kind.name(),
                        if targets.len() > 1 {
                            " and --control-b"
                        } else {
                            ""
                        }
                    );
                }
            }
        }
        if common.ramp.ramp {
            common.ramp.steps(MAX_CALLS)?;
        }
        let speech = Speech::load(common.target.media.as_deref())?;
        let encode = |c| speech.encode(c).map(Arc::new);
        let (pcmu, pcma, opus) = (
            encode(Codec::Pcmu)?,
            encode(Codec::Pcma)?,
            encode(Codec::Opus)?,
        );
        let pick = |c| match c {
            Codec::Pcmu => &pcmu,
            Codec::Pcma => &pcma,
            Codec::Opus => &opus,
        };
        let matchers = match kind {
            Kind::Transcode { from, to } => (
                Matcher::new(pick(from), to).map(Arc::new),
                Matcher::new(pick(to), from).map(Arc::new),
            ),
            _ => (None, None),
        };
        Ok(Self {
            settings: MixSettings {
                scenario: kind,
                calls: common.calls,
                duration_s: common.duration,
                ramp_up_s: common.ramp_up,
                threads: common.threads.min(common.calls as usize),
                tick_us: common.tick_us,
                rounds: common.target.rounds(),
                local_ip: common.target.local_ip,
                media: speech.source.clone(),
            },
            targets,
            duration_ns: (common.duration * 1e9) as u64,
            ramp_up_ns: (common.ramp_up * 1e9) as u64,
            pcmu,
            pcma,
            opus,
            matchers,
            fork: None,
        })
    }

    fn frames(&self, codec: Codec) -> Arc<Frames> {
        match codec {
            Codec::Pcmu => self.pcmu.clone(),
            Codec::Pcma => self.pcma.clone(),
            Codec::Opus => self.opus.clone(),
        }
    }
}

/// `switchboard-load transcode`.
pub fn run_transcode(args: &TranscodeArgs, progress: Progress) -> Result<Report> {
    let kind = Kind::Transcode {
        from: args.from,
        to: args.to,
    };
    run(&args.common, kind, progress)
}

/// `switchboard-load conference`.
pub fn run_conference(args: &ConferenceArgs, progress: Progress) -> Result<Report> {
    let kind = Kind::Conference {
        members: args.members,
        speakers: args.speakers,
    };
    run(&args.common, kind, progress)
}

/// `switchboard-load barge`.
pub fn run_barge(args: &BargeArgs, progress: Progress) -> Result<Report> {
    run(&args.common, Kind::Barge, progress)
}

fn run(common: &MixArgs, kind: Kind, progress: Progress) -> Result<Report> {
    let config = MixConfig::new(common, kind)?;
    let mut settings = serde_json::to_value(&config.settings)?;
    if common.ramp.ramp {
        settings["ramp"] = serde_json::json!({
            "start": common.ramp.ramp_start,
            "step": common.ramp.ramp_step,
            "max": common.ramp.ramp_max,
            "max_loss": common.ramp.max_loss,
            "max_p99_ms": common.ramp.max_p99_ms,
        });
    }
    let mut report = Report::new(kind.name(), settings);
    let address = |t: &Target| match (kind.is_mix(), t.control) {
        (true, Some(c)) => c.to_string(),
        _ => t.ng.to_string(),
    };
    if common.ramp.ramp {
        let mut first = true;
        let outcome = ramp::run(
            &common.ramp,
            MAX_CALLS,
            &config.targets,
            !kind.is_mix(),
            |calls, target| {
                if !first {
                    sleep_interruptible(Duration::from_secs(1))?;
                }
                first = false;
                let mut step = config.clone();
                step.settings.calls = calls;
                step.settings.threads = step.settings.threads.min(calls as usize).max(1);
                let m = run_once(&step, target, 1, progress, false)?;
                report.runs.push(RunReport {
                    label: target.label.to_string(),
                    round: calls,
                    figures: Figures::from_measurement(&m),
                });
                Ok(m)
            },
        )?;
        for (target, best) in config.targets.iter().zip(&outcome.best) {
            let Some(m) = best else { continue };
            report.targets.push(TargetReport {
                label: target.label.to_string(),
                name: target.name.clone(),
                address: address(target),
                pid: target.pid,
                runs: 1,
                figures: Figures::from_measurement(m),
                latency_distribution: crate::report::distribution(&m.latency_us),
            });
        }
        report.ramp = outcome.steps;
        report.capacity = outcome.capacity;
    } else {
        let mut totals: Vec<Option<Measurement>> = vec![None; config.targets.len()];
        for round in 1..=config.settings.rounds {
            for (i, target) in config.targets.iter().enumerate() {
                if round > 1 || i > 0 {
                    sleep_interruptible(Duration::from_secs(1))?;
                }
                let m = run_once(&config, target, round, progress, false)?;
                report.runs.push(RunReport {
                    label: target.label.to_string(),
                    round,
                    figures: Figures::from_measurement(&m),
                });
                match &mut totals[i] {
                    Some(total) => total.merge(&m),
                    slot => *slot = Some(m),
                }
            }
        }
        for (target, total) in config.targets.iter().zip(totals) {
            let Some(total) = total else { continue };
            report.targets.push(TargetReport {
                label: target.label.to_string(),
                name: target.name.clone(),
                address: address(target),
                pid: target.pid,
                runs: config.settings.rounds,
                figures: Figures::from_measurement(&total),
                latency_distribution: crate::report::distribution(&total.latency_us),
            });
        }
    }
    report.compare_targets();
    report.notes.push(media_note(&config.settings.media));
    for t in &report.targets {
        let p = &t.figures.packets;
        if !kind.is_mix() && p.received > p.sent + p.sent / 50 {
            report.notes.push(format!(
                "target {}: {} packets came out for {} that went in: it sends on its own clock, \
                 so streams that cannot be matched by content (Opus) have no latency figure",
                t.label, p.received, p.sent
            ));
        }
        let n = t.figures.packets.swallowed_at_start;
        if n > 0 {
            report.notes.push(format!(
                "target {}: {n} packets went in before a stream's first output (the \
                 transcoder priming its codec); not counted as lost",
                t.label
            ));
        }
    }
    if kind.is_mix() {
        report.notes.push(
            "mixed output carries no send time: latency is not measured; loss counts gaps in \
             the sequence numbers each party receives"
                .into(),
        );
    } else {
        report.notes.push(
            "latency of transcoded packets: arrival minus the send time of the input packet \
             the output packet came from: between G.711 codecs found by its content, with Opus \
             by sequence-number distance from the stream's first packet (such streams pause \
             80 ms after it, so that match is certain)"
                .into(),
        );
    }
    Ok(report)
}

/// What an endpoint sends.
#[derive(Debug, Clone)]
struct Tx {
    dest: SocketAddr,
    frames: Arc<Frames>,
    payload_type: u8,
    ssrc: u32,
    sequence: u16,
    timestamp: u32,
    ts_step: u32,
    counter: u64,
    /// Packets the kernel accepted.
    sent: u64,
    /// Frame of the speech to start from (parties do not speak in unison).
    frame_offset: usize,
    /// Next send time.
    next_ns: u64,
    /// Send times of the last [`RING`] packets by counter (`u64::MAX`: not sent).
    sent_ns: Vec<u64>,
    /// Pause after the first packet (transcode), so that the first output packet can only
    /// come from it and the timestamp matching starts right.
    lead_gap_ns: u64,
}

/// What an endpoint receives.
#[derive(Debug, Clone)]
struct Rx {
    seq: StreamRx,
    jitter: Jitter,
    clock: u32,
    /// Unwrapped RTP timestamp of the last packet.
    ts_ext: i64,
    last_ts: Option<u32>,
    /// (extended sequence number, peer counter) of the first matched packet.
    base: Option<(i64, u64)>,
}

/// One party of a call, as its worker holds it.
struct Endpoint {
    socket: UdpSocket,
    tx: Option<Tx>,
    rx: Rx,
    /// Worker-local index of the endpoint whose stream this one receives (transcode).
    peer: Option<usize>,
    /// G.711 to G.711: the output payload expected for each of the peer's frames.
    matcher: Option<Arc<Matcher>>,
}

/// The payloads a G.711 transcoder must produce from each frame of the speech: exact, since
/// G.711 conversions are table look-ups. Frames whose output is not unique (silence) are left
/// out.
#[derive(Debug, Default)]
pub struct Matcher {
    by_hash: std::collections::HashMap<u64, u32>,
}

impl Matcher {
    /// The matcher for frames `input` converted to `output` (both G.711), or `None`.
    pub fn new(input: &Frames, output: Codec) -> Option<Self> {
        use switchboard_codecs::g711;
        if input.codec == Codec::Opus || output == Codec::Opus || input.codec == output {
            return None;
        }
        let mut counts: std::collections::HashMap<u64, (u32, u32)> = Default::default();
        let mut pcm = [0i16; 160];
        let mut out = [0u8; 160];
        for i in 0..input.len() {
            let frame = input.get(i);
            let n = frame.len().min(160);
            match input.codec {
                Codec::Pcmu => g711::ulaw_decode_slice(&frame[..n], &mut pcm[..n]),
                _ => g711::alaw_decode_slice(&frame[..n], &mut pcm[..n]),
            }
            match output {
                Codec::Pcmu => g711::ulaw_encode_slice(&pcm[..n], &mut out[..n]),
                _ => g711::alaw_encode_slice(&pcm[..n], &mut out[..n]),
            }
            let entry = counts
                .entry(payload_hash(&out[..n]))
                .or_insert((i as u32, 0));
            entry.1 += 1;
        }
        let by_hash = counts
            .into_iter()
            .filter(|(_, (_, n))| *n == 1)
            .map(|(h, (i, _))| (h, i))
            .collect();
        Some(Self { by_hash })
    }

    /// The frame index whose conversion is `payload`.
    pub fn frame(&self, payload: &[u8]) -> Option<u32> {
        self.by_hash.get(&payload_hash(payload)).copied()
    }
}

/// FNV-1a over a payload.
fn payload_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// What set-up produces for one party.
struct PartySpec {
    socket: UdpSocket,
    tx: Option<(SocketAddr, Arc<Frames>, u8)>,
    rx_codec: Codec,
    /// Index of the peer inside its call.
    peer: Option<usize>,
    matcher: Option<Arc<Matcher>>,
}

/// How a call is torn down.
#[derive(Debug, Clone)]
enum Handle {
    Ng(CallIds),
    Native(String),
}

/// The target's control connection of a run.
enum Control {
    Ng(NgClient),
    Native(NativeClient),
}

impl Control {
    fn requests(&self) -> (u64, u64) {
        match self {
            Control::Ng(ng) => {
                let s = ng.stats();
                (s.requests, s.retries)
            }
            Control::Native(n) => (n.requests, 0),
        }
    }

    fn delete(&mut self, handle: &Handle) -> Result<()> {
        match (self, handle) {
            (Control::Ng(ng), Handle::Ng(ids)) => ng.delete(ids),
            (Control::Native(n), Handle::Native(call)) => n.call_delete(call),
            _ => bail!("call handle of another protocol"),
        }
    }
}

fn party_socket(ip: IpAddr) -> Result<UdpSocket> {
    let addr = SocketAddr::new(ip, 0);
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .context("creating a media socket")?;
    socket.set_nonblocking(true)?;
    sys::enable_receive_metadata(&socket).context("enabling receive timestamps")?;
    socket
        .bind(&addr.into())
        .with_context(|| format!("binding a media socket on {ip}"))?;
    Ok(socket.into())
}

/// Sets up call `call`; pushes its handle as soon as the call may exist on the target.
fn set_up_call(
    config: &MixConfig,
    control: &mut Control,
    call: usize,
    tag: &str,
    handles: &mut Vec<Handle>,
    analytics: bool,
) -> Result<Vec<PartySpec>> {
    let ip = config.settings.local_ip;
    let check = |addr: SocketAddr| -> Result<SocketAddr> {
        crate::cli::require_loopback("the target's media address", addr.ip())?;
        Ok(addr)
    };
    match (config.settings.scenario, control) {
        (Kind::Transcode { from, to }, Control::Ng(ng)) => {
            let a = party_socket(ip)?;
            let b = party_socket(ip)?;
            let ids = CallIds {
                call_id: format!("sbl-{tag}-{call}"),
                from_tag: format!("caller-{call}"),
                to_tag: format!("callee-{call}"),
            };
            handles.push(Handle::Ng(ids.clone()));
            let a_sdp = crate::sdp::codec_sdp(
                ip,
                a.local_addr()?.port(),
                call as u64,
                20,
                from.payload_type(),
                from.rtpmap(),
            );
            let options = json!({
                "codec": {"mask": [from.ng_name()], "transcode": [to.ng_name()]},
            });
            let to_b = ng.offer_opts(&ids, &a_sdp, &options)?;
            let b_dest = check(crate::sdp::audio_endpoint(&to_b).context("the offer reply")?)?;
            let Some(b_pt) = crate::sdp::payload_type_for(&to_b, to.ng_name()) else {
                bail!(
                    "the target did not offer {} to the callee (no transcoding?); its SDP: {:?}",
                    to.ng_name(),
                    to_b
                );
            };
            let b_sdp = crate::sdp::codec_sdp(
                ip,
                b.local_addr()?.port(),
                call as u64,
                20,
                b_pt,
                to.rtpmap(),
            );
            let to_a = ng.answer(&ids, &b_sdp)?;
            let a_dest = check(crate::sdp::audio_endpoint(&to_a).context("the answer reply")?)?;
            let a_pt =
                crate::sdp::payload_type_for(&to_a, from.ng_name()).unwrap_or(from.payload_type());
            Ok(vec![
                PartySpec {
                    socket: a,
                    tx: Some((a_dest, config.frames(from), a_pt)),
                    rx_codec: from,
                    peer: Some(1),
                    matcher: config.matchers.1.clone(),
                },
                PartySpec {
                    socket: b,
                    tx: Some((b_dest, config.frames(to), b_pt)),
                    rx_codec: to,
                    peer: Some(0),
                    matcher: config.matchers.0.clone(),
                },
            ])
        }
        (Kind::Conference { members, speakers }, Control::Native(n)) => {
            let id = n.call_create(Some(&format!("sbl-{tag}-{call}")))?;
            handles.push(Handle::Native(id.clone()));
            let mut parties = Vec::with_capacity(members as usize);
            for m in 0..members {
                let socket = party_socket(ip)?;
                let (_, local) =
                    n.leg_create(&id, &["PCMU"], socket.local_addr()?, Some(json!("all")))?;
                let local = check(local)?;
                parties.push(PartySpec {
                    socket,
                    tx: (m < speakers).then(|| (local, config.pcmu.clone(), 0)),
                    rx_codec: Codec::Pcmu,
                    peer: None,
                    matcher: None,
                });
            }
            Ok(parties)
        }
        (Kind::Barge, Control::Native(n)) => {
            let id = n.call_create(Some(&format!("sbl-{tag}-{call}")))?;
            handles.push(Handle::Native(id.clone()));
            let mut parties = Vec::with_capacity(3);
            let mut legs = Vec::with_capacity(3);
            for hears in [Some(json!("all")), Some(json!("all")), None] {
                let socket = party_socket(ip)?;
                let (leg, local) = n.leg_create(&id, &["PCMU"], socket.local_addr()?, hears)?;
                let local = check(local)?;
                legs.push(leg);
                parties.push(PartySpec {
                    socket,
                    tx: Some((local, config.pcmu.clone(), 0)),
                    rx_codec: Codec::Pcmu,
                    peer: None,
                    matcher: None,
                });
            }
            n.request(
                "monitor.start",
                json!({
                    "call": id,
                    "customer": legs[0],
                    "agent": legs[1],
                    "supervisor": legs[2],
                    "mode": "barge",
                }),
            )?;
            Ok(parties)
        }
        (
            Kind::Fork {
                what,
                rate,
                bot_audio,
            },
            Control::Native(n),
        ) => {
            let Some(plan) = &config.fork else {
                bail!("internal: fork scenario without a sink");
            };
            let id = n.call_create(Some(&format!("sbl-{tag}-{call}")))?;
            handles.push(Handle::Native(id.clone()));
            let mut parties = Vec::with_capacity(2);
            let mut legs = Vec::with_capacity(2);
            for _ in 0..2 {
                let socket = party_socket(ip)?;
                let (leg, local) =
                    n.leg_create(&id, &["PCMU"], socket.local_addr()?, Some(json!("all")))?;
                let local = check(local)?;
                legs.push(leg);
                parties.push(PartySpec {
                    socket,
                    tx: Some((local, config.pcmu.clone(), 0)),
                    rx_codec: Codec::Pcmu,
                    peer: None,
                    matcher: None,
                });
            }
            let to = if bot_audio {
                json!(legs[0])
            } else {
                json!(false)
            };
            let reply = n.request(
                "fork.start",
                json!({
                    "call": id,
                    "url": plan.url,
                    "what": what.wire(),
                    "caller": legs[0],
                    "agent": legs[1],
                    "rate": rate,
                    "to": to,
                    "metadata": {"load": "switchboard-load", "call": call},
                }),
            )?;
            if reply.get("fork").is_none() {
                bail!("fork.start reply has no `fork`: {reply:?}");
            }
            if analytics {
                n.request(
                    "analytics.start",
                    json!({
                        "call": id,
                        "caller": legs[0],
                        "agent": legs[1],
                        "interval_ms": 0,
                    }),
                )?;
            }
            Ok(parties)
        }
        _ => bail!("internal: scenario and control protocol do not match"),
    }
}

/// Deletes every call; gives up after three failures in a row. Returns (deleted, failed).
fn tear_down(control: &mut Control, handles: &[Handle]) -> (u64, u64) {
    let (mut deleted, mut failed, mut in_a_row) = (0u64, 0u64, 0u32);
    for (i, h) in handles.iter().enumerate() {
        if in_a_row >= 3 {
            let left = (handles.len() - i) as u64;
            eprintln!("switchboard-load: the target does not answer; {left} calls left undeleted");
            return (deleted, failed + left);
        }
        match control.delete(h) {
            Ok(()) => {
                deleted += 1;
                in_a_row = 0;
            }
            Err(e) => {
                eprintln!("switchboard-load: deleting {h:?}: {e:#}");
                failed += 1;
                in_a_row += 1;
            }
        }
    }
    (deleted, failed)
}

/// One run against one target (`analytics`: `fork` also starts analytics per call).
pub(crate) fn run_once(
    config: &MixConfig,
    target: &Target,
    round: u32,
    progress: Progress,
    analytics: bool,
) -> Result<Measurement> {
    let s = &config.settings;
    let kind = s.scenario;
    if let Some(pid) = target.pid {
        crate::procfs::process_cpu_ns(pid)
            .with_context(|| format!("target {} PID {pid}", target.label))?;
    }
    let calls = s.calls as usize;
    let parties = kind.parties() as usize;
    sys::raise_open_file_limit((calls * parties) as u64 + 256)
        .context("raising the open-file limit")?;
    let mut control = match (kind.is_mix(), target.control) {
        (true, Some(addr)) => Control::Native(NativeClient::connect(addr)?),
        (true, None) => bail!("{} needs --control", kind.name()),
        (false, _) => Control::Ng(NgClient::new(s.local_ip, target.ng, NgConfig::default())?),
    };
    let say = |msg: String| {
        if progress.enabled {
            eprintln!(
                "switchboard-load {} {} round {round}: {msg}",
                kind.name(),
                target.label
            );
        }
    };
    say(format!("setting up {calls} calls"));
    let tag = format!(
        "{:x}",
        sys::monotonic_ns() ^ u64::from(std::process::id()) << 40
    );
    let started = Instant::now();
    let mut handles = Vec::with_capacity(calls);
    let mut specs: Vec<Vec<PartySpec>> = Vec::with_capacity(calls);
    for call in 0..calls {
        let r = if sys::is_interrupted() {
            Err(Interrupted.into())
        } else {
            set_up_call(config, &mut control, call, &tag, &mut handles, analytics)
        };
        match r {
            Ok(p) => specs.push(p),
            Err(e) => {
                say(format!("set-up failed; deleting {} calls", handles.len()));
                tear_down(&mut control, &handles);
                if e.downcast_ref::<Interrupted>().is_some() {
                    return Err(e);
                }
                return Err(e.context(format!("setting up call {} of {calls}", call + 1)));
            }
        }
    }
    let setup_seconds = started.elapsed().as_secs_f64();
    say(format!("{calls} calls set up in {setup_seconds:.2} s"));

    let t0 = sys::monotonic_ns() + 100_000_000;
    let window_start = t0 + config.ramp_up_ns;
    let window_end = window_start + config.duration_ns;
    let time = Timeline {
        t0,
        window_start,
        window_end,
        drain_end: window_end + DRAIN_NS,
    };
    if let Some(plan) = &config.fork {
        plan.sink.set_window(window_start, window_end);
    }
    // Endpoints per worker: call c goes to worker c % threads.
    let threads = s.threads.max(1);
    let mut per_worker: Vec<Vec<Endpoint>> = (0..threads).map(|_| Vec::new()).collect();
    for (call, parties) in specs.into_iter().enumerate() {
        let w = call % threads;
        let base = per_worker[w].len();
        let start = t0 + config.ramp_up_ns * call as u64 / calls as u64;
        let n = parties.len();
        // Whether the party receiving party p's stream matches by content (no lead gap then).
        let by_content: Vec<bool> = parties
            .iter()
            .map(|s| {
                s.peer
                    .and_then(|q| parties.get(q))
                    .is_some_and(|r| r.matcher.is_some())
            })
            .collect();
        for (p, spec) in parties.into_iter().enumerate() {
            let id = (call * n + p) as u32;
            let tx = spec.tx.map(|(dest, frames, payload_type)| {
                let codec = frames.codec;
                Tx {
                    dest,
                    frame_offset: (id as usize).wrapping_mul(37) % frames.len().max(1),
                    frames,
                    payload_type,
                    ssrc: 0x5c00_0000 ^ id.wrapping_mul(0x9e37_79b9),
                    sequence: 0xff00u16.wrapping_add((id % 256) as u16),
                    timestamp: id.wrapping_mul(7_919),
                    ts_step: codec.timestamp_step(),
                    counter: 0,
                    sent: 0,
                    // Parties of a call are spread over the period.
                    next_ns: start + PERIOD_NS * p as u64 / n as u64,
                    sent_ns: vec![u64::MAX; RING],
                    lead_gap_ns: if kind.is_mix() || by_content[p] {
                        0
                    } else {
                        LEAD_GAP_NS
                    },
                }
            });
            per_worker[w].push(Endpoint {
                socket: spec.socket,
                tx,
                rx: Rx {
                    seq: StreamRx::new(),
                    jitter: Jitter::default(),
                    clock: spec.rx_codec.clock_rate(),
                    ts_ext: 0,
                    last_ts: None,
                    base: None,
                },
                peer: spec.peer.map(|q| base + q),
                matcher: spec.matcher,
            });
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    let mut handles_t = Vec::with_capacity(threads);
    let mut lives = Vec::with_capacity(threads);
    let mut spawned = Ok(());
    for (index, endpoints) in per_worker.into_iter().enumerate() {
        let live = Arc::new(Live::default());
        lives.push(live.clone());
        let worker = Worker::new(endpoints, time, s.tick_us * 1_000, live, stop.clone());
        let started = worker.and_then(|w| {
            thread::Builder::new()
                .name(format!("mix-{index}"))
                .spawn(move || w.run())
                .context("starting a media thread")
        });
        match started {
            Ok(h) => handles_t.push(h),
            Err(e) => {
                spawned = Err(e);
                break;
            }
        }
    }
    let label = format!("{} {} round {round}", kind.name(), target.label);
    let watched = spawned.and_then(|()| watch_window(time, target.pid, &label, progress, &lives));
    if watched.is_err() {
        stop.store(true, Ordering::Relaxed);
    }
    let rx_streams = (calls * parties) as u64;
    let mut m = Measurement::new(calls as u64, rx_streams);
    if kind.is_mix() {
        m.mix_members = rx_streams;
        m.mix_rate = FRAME_RATE;
    }
    let worker_error = join_workers(handles_t, &mut m);
    say(format!("deleting {calls} calls"));
    let (deleted, delete_failures) = tear_down(&mut control, &handles);
    let (requests, retries) = control.requests();
    m.control = ControlFigures {
        calls_set_up: calls as u64,
        setup_seconds,
        ng_requests: requests,
        ng_retries: retries,
        calls_deleted: deleted,
        delete_failures,
    };
    if let Some(e) = worker_error {
        return Err(e.context("media thread"));
    }
    m.cpu = Some(watched?);
    Ok(m)
}

struct Worker {
    endpoints: Vec<Endpoint>,
    fds: Vec<RawFd>,
    time: Timeline,
    tick_ns: u64,
    poller: Poller,
    recv: RecvBatch,
    buf: Vec<u8>,
    packets: PacketCounts,
    window_received: u64,
    window_sent: u64,
    latency_us: Histogram<u64>,
    send_lag_us: Histogram<u64>,
    socket_drops: Vec<u32>,
    /// Transcoded packets whose content matched no input frame (silence, or not G.711).
    unmatched: u64,
    live: Arc<Live>,
    stop: Arc<AtomicBool>,
}

impl Worker {
    fn new(
        endpoints: Vec<Endpoint>,
        time: Timeline,
        tick_ns: u64,
        live: Arc<Live>,
        stop: Arc<AtomicBool>,
    ) -> Result<Self> {
        let mut poller = Poller::new(256)?;
        for (i, e) in endpoints.iter().enumerate() {
            poller.add(&e.socket, i as u64)?;
        }
        let fds = endpoints.iter().map(|e| e.socket.as_raw_fd()).collect();
        let n = endpoints.len();
        Ok(Self {
            endpoints,
            fds,
            time,
            tick_ns,
            poller,
            recv: RecvBatch::new(32, 2_048),
            buf: vec![0; 2_048],
            packets: PacketCounts::default(),
            window_received: 0,
            window_sent: 0,
            latency_us: crate::report::latency_histogram(),
            send_lag_us: crate::report::latency_histogram(),
            socket_drops: vec![0; n],
            unmatched: 0,
            live,
            stop,
        })
    }

    fn run(mut self) -> Result<WorkerOutcome> {
        let mut tick = self.time.t0;
        loop {
            if sys::is_interrupted() || self.stop.load(Ordering::Relaxed) {
                break;
            }
            let now = sys::monotonic_ns();
            if now >= self.time.drain_end {
                break;
            }
            self.send_due(now);
            let offset = sys::realtime_ns().wrapping_sub(sys::monotonic_ns());
            loop {
                let ready = self.poller.wait(0)?;
                for i in 0..ready {
                    let e = self.poller.token(i) as usize;
                    self.receive(e, offset);
                }
                if ready < self.poller.capacity() {
                    break;
                }
            }
            self.live.sent.store(self.packets.sent, Ordering::Relaxed);
            self.live
                .received
                .store(self.packets.received, Ordering::Relaxed);
            let now = sys::monotonic_ns();
            tick += self.tick_ns * ((now.saturating_sub(tick)) / self.tick_ns + 1);
            sys::sleep_until(tick.min(self.time.drain_end));
        }
        Ok(self.finish())
    }

    fn send_due(&mut self, now: u64) {
        for e in &mut self.endpoints {
            let Some(tx) = e.tx.as_mut() else { continue };
            while tx.next_ns <= now && tx.next_ns < self.time.window_end {
                let due = tx.next_ns;
                tx.next_ns += PERIOD_NS;
                let header = RtpHeader {
                    payload_type: tx.payload_type,
                    sequence: tx.sequence,
                    timestamp: tx.timestamp,
                    ssrc: tx.ssrc,
                };
                let frame = tx.frames.get(tx.frame_offset + tx.counter as usize);
                let Some(len) = rtp::write_plain(&mut self.buf, &header, frame) else {
                    continue;
                };
                let sent_ns = sys::monotonic_ns();
                let slot = tx.counter;
                // After the first packet, a pause of `lead_gap_ns` in sending only.
                if tx.counter == 0 {
                    tx.next_ns += tx.lead_gap_ns;
                }
                match e.socket.send_to(&self.buf[..len], tx.dest) {
                    Ok(_) => {
                        tx.sent_ns[(slot as usize) % RING] = sent_ns;
                        tx.sent += 1;
                        self.packets.sent += 1;
                        if due >= self.time.window_start {
                            self.window_sent += 1;
                        }
                    }
                    Err(_) => {
                        // Not sent: its slot stays empty.
                        tx.sent_ns[(slot as usize) % RING] = u64::MAX;
                        self.packets.send_failed += 1;
                    }
                }
                tx.counter += 1;
                tx.sequence = tx.sequence.wrapping_add(1);
                tx.timestamp = tx.timestamp.wrapping_add(tx.ts_step);
                self.send_lag_us
                    .saturating_record(sent_ns.saturating_sub(due) / 1_000);
            }
        }
    }

    fn receive(&mut self, e: usize, realtime_offset: u64) {
        for _ in 0..64 {
            let n = match self.recv.recv(self.fds[e]) {
                Ok(n) => n,
                Err(_) => return,
            };
            if n == 0 {
                return;
            }
            let now = sys::monotonic_ns();
            for i in 0..n {
                let meta = self.recv.meta(i);
                if let Some(drops) = meta.socket_drops {
                    self.socket_drops[e] = self.socket_drops[e].max(drops);
                }
                let arrived = meta
                    .arrival_realtime_ns
                    .map_or(now, |rt| rt.wrapping_sub(realtime_offset));
                let datagram = self.recv.datagram(i);
                let frame = self.endpoints[e]
                    .matcher
                    .as_ref()
                    .and_then(|m| m.frame(datagram.get(rtp::RTP_HEADER_LEN..).unwrap_or_default()));
                let Some(header) = rtp::parse_header(datagram) else {
                    self.packets.invalid += 1;
                    continue;
                };
                self.account(e, &header, arrived, frame);
            }
            if !self.recv.is_full() {
                return;
            }
        }
    }

    fn account(&mut self, e: usize, header: &RtpHeader, arrived: u64, frame: Option<u32>) {
        self.packets.received += 1;
        let in_window = arrived >= self.time.window_start && arrived < self.time.window_end;
        let rx = &mut self.endpoints[e].rx;
        let arrival = rx.seq.on_packet(header.sequence);
        if matches!(arrival, Arrival::Duplicate(_)) {
            if in_window {
                self.window_received += 1;
            }
            return;
        }
        let delta = match rx.last_ts {
            Some(last) => i64::from(header.timestamp.wrapping_sub(last) as i32),
            None => 0,
        };
        rx.last_ts = Some(header.timestamp);
        rx.ts_ext += delta;
        let ts = rx.ts_ext;
        let clock = i64::from(rx.clock.max(1));
        // Media time of the packet in nanoseconds (only differences matter).
        let media_ns = (ts.wrapping_mul(1_000_000_000) / clock) as u64;
        rx.jitter.on_packet(arrived, media_ns);
        if in_window {
            self.window_received += 1;
        }
        let Some(peer) = self.endpoints[e].peer else {
            return;
        };
        let ext = match arrival {
            Arrival::New(n) | Arrival::Reordered(n) | Arrival::Duplicate(n) => n.0 as i64,
        };
        if self.endpoints[e].matcher.is_some() {
            self.account_content(peer, arrived, frame, in_window);
            return;
        }
        let known_base = self.endpoints[e].rx.base;
        let Some(tx) = self.endpoints.get(peer).and_then(|p| p.tx.as_ref()) else {
            return;
        };
        let (sent_ns, counter) = (&tx.sent_ns, tx.counter);
        let base = match known_base {
            Some(b) => b,
            None => {
                // Match the first packet to the input sent most recently before it arrived.
                let lowest = counter.saturating_sub(RING as u64);
                let found = (lowest..counter)
                    .rev()
                    .find(|&k| sent_ns[(k as usize) % RING] <= arrived);
                let Some(k) = found else { return };
                (ext, k)
            }
        };
        let offset = ext - base.0;
        let sent = base
            .1
            .checked_add_signed(offset)
            .filter(|&idx| idx < counter && counter - idx <= RING as u64)
            .map(|idx| sent_ns[(idx as usize) % RING]);
        if known_base.is_none() {
            self.endpoints[e].rx.base = Some(base);
        }
        let Some(sent) = sent else { return };
        if sent == u64::MAX || sent > arrived {
            return;
        }
        if in_window {
            self.latency_us.saturating_record((arrived - sent) / 1_000);
        }
    }

    /// Latency by content: the output frame is the conversion of one frame of the speech; the
    /// input packet is the latest one the peer sent with that frame.
    fn account_content(&mut self, peer: usize, arrived: u64, frame: Option<u32>, in_window: bool) {
        let Some(f) = frame else {
            self.unmatched += 1;
            return;
        };
        let Some(tx) = self.endpoints.get(peer).and_then(|p| p.tx.as_ref()) else {
            return;
        };
        let n = tx.frames.len().max(1) as u64;
        if tx.counter == 0 {
            return;
        }
        // Latest counter c < tx.counter with (frame_offset + c) % n == f.
        let last = tx.counter - 1;
        let back = (tx.frame_offset as u64 + last + n - u64::from(f) % n) % n;
        let mut c = last.checked_sub(back);
        while let Some(k) = c {
            if tx.counter - k > RING as u64 {
                c = None;
                break;
            }
            let sent = tx.sent_ns[(k as usize) % RING];
            if sent != u64::MAX && sent <= arrived {
                break;
            }
            c = k.checked_sub(n);
        }
        let Some(k) = c else {
            self.unmatched += 1;
            return;
        };
        let sent = tx.sent_ns[(k as usize) % RING];
        if in_window {
            self.latency_us.saturating_record((arrived - sent) / 1_000);
        }
    }

    fn finish(self) -> WorkerOutcome {
        let mut packets = self.packets;
        packets.harness_drops = self.socket_drops.iter().map(|&d| u64::from(d)).sum();
        let mut jitter_sum = 0.0;
        let mut jitter_n = 0;
        for e in &self.endpoints {
            packets.duplicates += e.rx.seq.duplicates();
            packets.reordered += e.rx.seq.reordered();
            let lost = match e.peer.and_then(|p| self.endpoints.get(p)) {
                Some(p) => {
                    // Inputs before the one the first output answers primed the transcoder.
                    let primed = e.rx.base.map_or(0, |(_, k)| k);
                    packets.swallowed_at_start += primed;
                    // A target that sends on its own clock sends more than it gets: gaps in
                    // its sequence numbers are then the loss that can be seen.
                    let by_count = p.tx.as_ref().map_or(0, |tx| {
                        tx.sent
                            .saturating_sub(e.rx.seq.unique())
                            .saturating_sub(primed)
                    });
                    let by_gaps = e.rx.seq.expected().saturating_sub(e.rx.seq.unique());
                    by_count.max(by_gaps)
                }
                // A party that received nothing lost every frame of the run.
                None if e.rx.seq.received() == 0 => {
                    (self.time.window_end - self.time.t0) / PERIOD_NS
                }
                None => e.rx.seq.expected().saturating_sub(e.rx.seq.unique()),
            };
            packets.lost += lost;
            packets.streams_with_loss += u64::from(lost > 0);
            if let Some(j) = e.rx.jitter.us() {
                jitter_sum += j;
                jitter_n += 1;
            }
        }
        WorkerOutcome {
            packets,
            window_received: self.window_received,
            window_sent: self.window_sent,
            latency_us: self.latency_us,
            send_lag_us: self.send_lag_us,
            jitter_us_sum: jitter_sum,
            jitter_streams: jitter_n,
        }
    }
}

/// The settings of a run as JSON, for tests and callers.
pub fn settings_json(common: &MixArgs, kind: Kind) -> Result<Value> {
    Ok(serde_json::to_value(
        &MixConfig::new(common, kind)?.settings,
    )?)
}
