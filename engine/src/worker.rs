//! Media workers: one thread per core, each owning an I/O driver, the sockets of its calls
//! and the calls themselves (their [`Relay`]s).
//!
//! The control thread talks to a worker through a bounded lock-free channel of [`Command`]s
//! plus the driver's [`Waker`]; answers come back on the one-shot channel carried by the
//! command, and unsolicited [`WorkerEvent`]s (media timeouts) on a bounded event channel.
//!
//! Per datagram the worker does a table lookup from the driver's port token to (call, leg,
//! component), lets the call's relay decide, and queues the very same bytes on the target
//! leg's socket (or a copy with the relay's header [`Rewrite`] applied); when the call is being
//! recorded it also copies the packet into its recording tap ring ([`crate::record::ring`]).
//! No allocation, no lock, no syscall of its own: the driver batches the I/O.
//!
//! # Decoded media
//!
//! A call whose legs are put under a mixer ([`MediaOp::SetLegs`]) gets a [`MediaCall`]: the
//! relay marks those legs mixed and hands their RTP back ([`RelayOutput::Consume`]); the
//! worker pushes it into the media call. While any call on the worker mixes, the worker runs
//! a 20 ms media clock: the driver's poll timeout is the sooner of the next sweep and the
//! next tick, and on each tick every mixing call is ticked (at most [`MAX_CATCH_UP`] frames
//! when the worker is late; the rest are skipped and counted). The packets a tick produces
//! leave from the target leg's RTP socket to its current destination through the driver's
//! send queue; the media call's events go out as [`WorkerEvent::Media`]. Streams carry on
//! across the switches: a leg entering the mixer continues the stream the relay sent it
//! ([`switchboard_proto::relay::RelayLeg::last_sent`]), a leg going back to relaying has the
//! relay rewrite what it forwards to continue the mixer's stream
//! ([`Relay::continue_stream`]).
//!
//! Media forks and conversation analytics ([`MediaOp::ForkStart`],
//! [`MediaOp::AnalyticsStart`]) hang off a mixing call's tick ([`crate::media::taps`]): bot
//! audio is injected before the mix, the fork frames and the analytics are made from the
//! members' decoded input after it, and live analytics summaries go out as
//! [`WorkerEvent::Analytics`].

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, Sender, TrySendError};
use switchboard_proto::media::{
    MediaCall, MediaCallConfig, MediaEvent, MediaLegConfig, PlayId, PlayTarget,
};
use switchboard_proto::relay::{
    Component, LegConfig, LegId, Relay, RelayConfig, RelayEvent, RelayOutput, Rewrite,
};
use switchboard_proto::rtp::{RtpPacket, is_rtcp};
use switchboard_proto::stats::DropReason;
use switchboard_proto::time::Micros;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, warn};

use crate::metrics::{IDLE_AFTER_US, SweepTally, WorkerMetrics};
use crate::record::ring::{CallTap, Mark, MarkKind, StopReason, TapOp, TapProducer};
use crate::rt::{self, Driver, DriverKind, DriverOptions, PortToken, Waker};

/// The control plane's name for a call on a worker.
pub type CallKey = u64;
/// The control plane's name for a leg within a call.
pub type LegKey = u32;

/// Commands queued per worker before the control plane is told the worker is busy.
pub const COMMAND_QUEUE: usize = 4096;
/// Most commands handled per loop turn, so a burst of signalling never starves media.
const COMMANDS_PER_TURN: usize = 256;
/// How often timers are swept and counters published.
const SWEEP: Duration = Duration::from_millis(250);
/// The media clock's period (one mixing frame).
const TICK: Duration = Duration::from_millis(switchboard_proto::media::FRAME_MS as u64);
/// Most frames a late media clock catches up on in one go; older ones are skipped.
pub const MAX_CATCH_UP: u32 = 3;
/// Most digits one [`MediaOp::SendDtmf`] may queue.
pub const MAX_DTMF_DIGITS: usize = 64;

/// Drop reasons counted by a worker: the relay's, then the worker's own.
pub const DROP_LABELS: [&str; DropReason::COUNT + 4] = {
    let mut out = [""; DropReason::COUNT + 4];
    let mut i = 0;
    while i < DropReason::COUNT {
        out[i] = DropReason::ALL[i].as_str();
        i += 1;
    }
    out[DropReason::COUNT] = DROP_UNKNOWN_PORT_LABEL;
    out[DropReason::COUNT + 1] = DROP_SEND_QUEUE_LABEL;
    out[DropReason::COUNT + 2] = DROP_SEND_REFUSED_LABEL;
    out[DropReason::COUNT + 3] = DROP_SEND_FAILED_LABEL;
    out
};
const DROP_UNKNOWN_PORT_LABEL: &str = "unknown_port";
const DROP_SEND_QUEUE_LABEL: &str = "send_queue_full";
const DROP_SEND_REFUSED_LABEL: &str = "send_refused";
const DROP_SEND_FAILED_LABEL: &str = "send_failed";
const DROP_UNKNOWN_PORT: usize = DropReason::COUNT;
const DROP_SEND_QUEUE: usize = DropReason::COUNT + 1;
const DROP_SEND_REFUSED: usize = DropReason::COUNT + 2;
const DROP_SEND_FAILED: usize = DropReason::COUNT + 3;

/// A request to a worker.
#[derive(Debug)]
#[non_exhaustive]
pub enum Command {
    /// Creates an empty call.
    CreateCall {
        /// The call.
        call: CallKey,
        /// Media timeout.
        timeout: Duration,
    },
    /// Adds a leg with its two bound sockets (RTP, RTCP).
    AddLeg {
        /// The call.
        call: CallKey,
        /// The leg's name.
        leg: LegKey,
        /// Where and how to relay.
        config: LegConfig,
        /// RTP socket.
        rtp: UdpSocket,
        /// RTCP socket.
        rtcp: UdpSocket,
    },
    /// Takes a leg out of its call (mixer, relay, port routes) without closing its sockets,
    /// and answers with them, its settings, its output stream and its statistics: the leg
    /// can then join another call, on this worker or another, with the same local ports
    /// ([`Command::AttachLeg`]). Answers `None` for an unknown call or leg.
    DetachLeg {
        /// The call.
        call: CallKey,
        /// The leg.
        leg: LegKey,
        /// Where the detached leg goes.
        reply: oneshot::Sender<Option<Box<DetachedLeg>>>,
    },
    /// Adds a leg detached from a call ([`Command::DetachLeg`]): its sockets are registered
    /// again and the stream it was sent continues (same SSRC, next sequence number). When
    /// the call is unknown or already has a leg of that name, the leg is handed back
    /// untouched; when its sockets cannot be registered, they are closed.
    AttachLeg {
        /// The call.
        call: CallKey,
        /// The leg's name in this call.
        leg: LegKey,
        /// The leg.
        detached: Box<DetachedLeg>,
        /// Told whether it worked; on failure the leg comes back (`None`: its sockets could
        /// not be registered and are closed).
        reply: Option<oneshot::Sender<Result<(), Option<Box<DetachedLeg>>>>>,
    },
    /// Changes a leg's remote side (answer, re-INVITE).
    UpdateLeg {
        /// The call.
        call: CallKey,
        /// The leg.
        leg: LegKey,
        /// The new settings.
        config: LegConfig,
    },
    /// Relays media between two legs, both ways.
    Connect {
        /// The call.
        call: CallKey,
        /// One leg.
        a: LegKey,
        /// The other.
        b: LegKey,
    },
    /// Blocks or unblocks media from a leg.
    Block {
        /// The call.
        call: CallKey,
        /// The leg.
        leg: LegKey,
        /// Blocked or not.
        blocked: bool,
    },
    /// Removes a call and closes its sockets; answers with its final statistics.
    DeleteCall {
        /// The call.
        call: CallKey,
        /// Where the statistics go, if anyone waits for them.
        reply: Option<oneshot::Sender<Option<CallStats>>>,
    },
    /// Reports a call's statistics.
    Query {
        /// The call.
        call: CallKey,
        /// Where they go.
        reply: oneshot::Sender<Option<CallStats>>,
    },
    /// Starts, pauses, resumes or stops a recording of a call: the worker queues the mark
    /// on its tap ring and taps the call's packets while a recording runs.
    Record {
        /// The call.
        call: CallKey,
        /// What to do.
        op: TapOp,
    },
    /// Decoded media: mixing, transcoding, supervision, prompts, DTMF (see [`MediaOp`]).
    Media {
        /// The call.
        call: CallKey,
        /// What to do.
        op: MediaOp,
        /// Told whether it worked, if anyone waits.
        reply: Option<oneshot::Sender<Result<(), String>>>,
    },
    /// Answers once every earlier command has been applied.
    Barrier {
        /// Signalled when reached.
        reply: oneshot::Sender<()>,
    },
    /// Ends the worker thread.
    Shutdown,
}

/// A change to a call's decoded media. A call relays packet for packet until a `SetLegs`
/// puts legs under its mixer; `Relay` returns it to relaying between two legs.
#[derive(Debug)]
#[non_exhaustive]
pub enum MediaOp {
    /// Puts legs under the call's mixer (the call starts mixing if it was relaying), or
    /// changes their codecs. New members hear nobody until `Hears`.
    SetLegs {
        /// The legs and how their media is decoded and encoded.
        legs: Vec<(LegKey, switchboard_proto::media::MediaLegConfig)>,
    },
    /// Stops mixing: the two legs are relayed packet for packet again, their output streams
    /// carrying on (same SSRC, next sequence number).
    Relay {
        /// One leg.
        a: LegKey,
        /// The other.
        b: LegKey,
    },
    /// Sets what a leg hears (a row of the hears-matrix).
    Hears {
        /// The listener.
        leg: LegKey,
        /// The legs it hears.
        hears: Vec<LegKey>,
    },
    /// Mute (nobody hears the leg), deaf (the leg hears nothing) and gain.
    LegFlags {
        /// The leg.
        leg: LegKey,
        /// Muted.
        mute: Option<bool>,
        /// Deaf.
        deaf: Option<bool>,
        /// Gain applied to the leg's audio, dB.
        gain_db: Option<f32>,
    },
    /// Plays a prompt or tone.
    Play {
        /// The prompt's id (chosen by the control plane).
        id: u32,
        /// The leg that hears it; `None`: every member.
        leg: Option<LegKey>,
        /// What to play.
        source: switchboard_proto::media::PlaySource,
        /// How many times; 0: until stopped.
        repeat: u32,
        /// A digit from the leg stops it.
        stop_on_dtmf: bool,
    },
    /// Stops prompts: one by id, or every prompt of a leg (`leg`), or of the call.
    StopPlay {
        /// The prompt.
        id: Option<u32>,
        /// The leg.
        leg: Option<LegKey>,
    },
    /// Sends DTMF digits to a leg (RFC 4733 events when it negotiated them, else tones).
    SendDtmf {
        /// The leg.
        leg: LegKey,
        /// The digits, in order.
        digits: String,
        /// Duration of each digit, ms.
        duration_ms: u32,
        /// Level of in-band tones, dBm0.
        volume_dbm0: i8,
    },
    /// Drops (or passes again) digits sent by a leg.
    BlockDtmf {
        /// The leg.
        leg: LegKey,
        /// Blocked.
        blocked: bool,
    },
    /// Removes one leg from the call and closes its sockets.
    RemoveLeg {
        /// The leg.
        leg: LegKey,
    },
    /// Starts a media fork on the call's decoded audio (the call must mix); see
    /// [`crate::media::taps`].
    ForkStart {
        /// The fork's id within the call.
        id: u32,
        /// The caller's leg.
        caller: Option<LegKey>,
        /// The agent's leg.
        agent: Option<LegKey>,
        /// Which audio goes to the service.
        what: crate::fork::ForkWhat,
        /// 8000 or 16000.
        sample_rate: u32,
        /// The leg that hears the bot audio.
        bot_leg: Option<LegKey>,
        /// The worker's ends of the fork's rings.
        media: Box<crate::fork::ForkMediaSide>,
    },
    /// Stops a media fork.
    ForkStop {
        /// The fork's id.
        id: u32,
    },
    /// Starts (or restarts) conversation analytics on the call's decoded audio.
    AnalyticsStart {
        /// Party 0.
        caller: Option<LegKey>,
        /// Party 1.
        agent: Option<LegKey>,
        /// Call time between live summaries, ms (0: none).
        interval_ms: u32,
    },
    /// Stops the analytics; their final summary is reported ([`WorkerEvent::Analytics`]).
    AnalyticsStop,
    /// The `telephone-event` payload type a leg sends (from its SDP), so the relay can tell
    /// its RFC 4733 events apart (DTMF blocking) while the call relays.
    TelephoneEvent {
        /// The leg.
        leg: LegKey,
        /// The payload type, if the leg negotiated telephone events.
        pt: Option<u8>,
    },
}

/// Something a worker reports without being asked.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum WorkerEvent {
    /// A conversation analytics summary of a call: live (every interval of call time) or
    /// final (`last`, when the analytics were stopped).
    Analytics {
        /// The call.
        call: CallKey,
        /// The worker.
        worker: usize,
        /// The figures.
        summary: Box<switchboard_codecs::analytics::AnalyticsSummary>,
        /// The analytics ended with this summary.
        last: bool,
    },
    /// No media on the call for its timeout; the worker has already removed it.
    MediaTimeout {
        /// The call.
        call: CallKey,
        /// The worker.
        worker: usize,
        /// Final statistics.
        stats: Box<CallStats>,
    },
    /// Tapped packets of a recorded call were dropped because the tap ring was full.
    RecordingDropped {
        /// The call.
        call: CallKey,
        /// The worker.
        worker: usize,
        /// Packets dropped on this call so far.
        frames: u64,
    },
    /// Something the call's media reported: a DTMF digit, talking on or off, a prompt that
    /// ended. `leg` is the control plane's name for the leg the event is about (`None` for
    /// events about no leg, such as [`MediaEvent::PlayDone`]); the [`LegId`]s inside `event`
    /// are the worker's own and mean nothing outside it.
    Media {
        /// The call.
        call: CallKey,
        /// The worker.
        worker: usize,
        /// The leg the event is about.
        leg: Option<LegKey>,
        /// What happened.
        event: MediaEvent,
    },
}

/// Receive statistics of one stream (RTP or RTCP) of a leg.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StreamStats {
    /// Packets received.
    pub packets: u64,
    /// Bytes received.
    pub bytes: u64,
    /// Malformed packets.
    pub errors: u64,
    /// Last packet, µs on the engine's clock.
    pub last_packet_us: Option<u64>,
}

/// Statistics of one leg.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LegStats {
    /// The control plane's name for the leg.
    pub key: LegKey,
    /// Local RTP address.
    pub local_rtp: Option<SocketAddr>,
    /// Where this leg's media is sent now (learned or from SDP).
    pub remote_rtp: Option<SocketAddr>,
    /// RTP received from this leg.
    pub rtp: StreamStats,
    /// RTCP received from this leg.
    pub rtcp: StreamStats,
    /// Packets lost from this leg (RFC 3550 A.3).
    pub lost: i64,
    /// Interarrival jitter, ms (RFC 3550 A.8).
    pub jitter_ms: f64,
    /// Round-trip time from RTCP, ms.
    pub rtt_ms: Option<f64>,
    /// MOS estimate (E-model).
    pub mos: Option<f64>,
    /// Packets dropped on this leg.
    pub dropped: u64,
    /// Whether the leg's media is decoded and mixed (rather than relayed).
    pub mixed: bool,
    /// Its decoded input, when mixed.
    pub media: Option<LegMediaStats>,
}

/// The decoded input of a mixed leg.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LegMediaStats {
    /// Audio buffered in the jitter buffer now, ms.
    pub jitter_depth_ms: u32,
    /// The jitter buffer's target delay, ms.
    pub jitter_target_ms: u32,
    /// Frames filled by concealment.
    pub concealed_frames: u64,
    /// Packets that arrived after their playout time.
    pub late: u64,
    /// Packets never received.
    pub lost: u64,
    /// Payloads the decoder refused.
    pub decode_errors: u64,
    /// Talking now (voice activity).
    pub talking: bool,
}

/// A leg taken out of its call by [`Command::DetachLeg`], ready for [`Command::AttachLeg`].
#[derive(Debug)]
pub struct DetachedLeg {
    /// Its settings, with the remote addresses it had learned as the expected ones.
    pub config: LegConfig,
    /// Its RTP socket, still bound to the same local port.
    pub rtp: UdpSocket,
    /// Its RTCP socket.
    pub rtcp: UdpSocket,
    /// The stream last sent to it (by the relay or the mixer), so its next call continues it.
    pub seed: Option<switchboard_proto::media::OutputSeed>,
    /// Its statistics in the call it left.
    pub stats: Option<LegStats>,
}

/// Statistics of one call.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CallStats {
    /// Created, µs on the engine's clock.
    pub created_us: u64,
    /// Last media, µs on the engine's clock.
    pub last_activity_us: u64,
    /// The legs.
    pub legs: Vec<LegStats>,
    /// The conversation analytics' summary, when they ran until the call ended.
    #[serde(skip)]
    pub analytics: Option<switchboard_codecs::analytics::AnalyticsSummary>,
}

/// The control plane's handle on a worker.
#[derive(Debug)]
pub struct WorkerHandle {
    /// Index.
    pub index: usize,
    /// The driver the worker ended up with (after fallback).
    pub driver: DriverKind,
    tx: Sender<Command>,
    waker: Waker,
    thread: Option<JoinHandle<()>>,
}

/// The worker is gone or its queue is full.
#[derive(Debug, thiserror::Error)]
#[error("media worker {worker} is {what}")]
pub struct WorkerBusy {
    /// Which worker.
    pub worker: usize,
    /// `busy` or `gone`.
    pub what: &'static str,
}

impl WorkerHandle {
    /// Queues a command and wakes the worker. Never blocks.
    pub fn send(&self, cmd: Command) -> Result<(), WorkerBusy> {
        match self.tx.try_send(cmd) {
            Ok(()) => {
                self.waker.wake();
                Ok(())
            }
            Err(TrySendError::Full(_)) => Err(WorkerBusy {
                worker: self.index,
                what: "busy",
            }),
            Err(TrySendError::Disconnected(_)) => Err(WorkerBusy {
                worker: self.index,
                what: "gone",
            }),
        }
    }

    /// Asks the worker to stop and waits for its thread.
    pub fn shutdown(&mut self) {
        let _ = self
            .tx
            .send_timeout(Command::Shutdown, Duration::from_secs(1));
        self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Where a port token leads.
#[derive(Debug, Clone, Copy)]
struct PortRoute {
    call_slot: u32,
    leg: LegId,
    component: Component,
}

#[derive(Debug)]
struct LegEntry {
    key: LegKey,
    id: LegId,
    rtp: PortToken,
    rtcp: PortToken,
}

#[derive(Debug)]
struct CallEntry {
    key: CallKey,
    relay: Relay,
    /// Indexed by the relay's slot ([`LegId::index`]), so a leg is found in O(1).
    legs: Vec<Option<LegEntry>>,
    tap: CallTap,
    /// The call's decoded media, while any of its legs is mixed.
    media: Option<Box<MediaCall>>,
    /// Media forks and analytics on the decoded media.
    taps: crate::media::taps::CallTaps,
}

impl CallEntry {
    fn leg(&self, id: LegId) -> Option<&LegEntry> {
        self.legs
            .get(id.index())
            .and_then(Option::as_ref)
            .filter(|l| l.id == id)
    }

    fn legs(&self) -> impl Iterator<Item = &LegEntry> + '_ {
        self.legs.iter().flatten()
    }

    fn leg_count(&self) -> usize {
        self.legs().count()
    }

    fn id_of(&self, key: LegKey) -> Option<LegId> {
        self.legs().find(|l| l.key == key).map(|l| l.id)
    }

    fn token(&self, leg: LegId, component: Component) -> Option<PortToken> {
        self.leg(leg).map(|l| match component {
            Component::Rtp => l.rtp,
            Component::Rtcp => l.rtcp,
        })
    }

    fn stats(&self, driver: &impl Driver) -> CallStats {
        let legs = self
            .legs()
            .filter_map(|l| self.leg_stats(l, driver))
            .collect();
        CallStats {
            created_us: self.relay.created().0,
            last_activity_us: self.relay.last_activity().0,
            legs,
            analytics: self.taps.analytics_summary(),
        }
    }

    fn leg_stats(&self, l: &LegEntry, driver: &impl Driver) -> Option<LegStats> {
        let r = self.relay.leg(l.id)?;
        let rtp = r.rtp_stats();
        let rtcp = r.rtcp_stats();
        Some(LegStats {
            key: l.key,
            local_rtp: driver.local_addr(l.rtp),
            remote_rtp: r.destination(Component::Rtp).map(|(_, a)| a),
            rtp: StreamStats {
                packets: rtp.packets(),
                bytes: rtp.bytes(),
                errors: rtp.errors(),
                last_packet_us: rtp.last_packet().map(|m| m.0),
            },
            rtcp: StreamStats {
                packets: rtcp.packets(),
                bytes: rtcp.bytes(),
                errors: rtcp.errors(),
                last_packet_us: rtcp.last_packet().map(|m| m.0),
            },
            lost: rtp.lost(),
            jitter_ms: rtp.jitter_ms(),
            rtt_ms: rtcp.rtt().map(|d| d.as_secs_f64() * 1000.0),
            mos: r.mos(),
            dropped: r.drops().total(),
            mixed: r.is_mixed(),
            media: self.media.as_ref().and_then(|m| {
                let i = m.input_stats(l.id)?;
                Some(LegMediaStats {
                    jitter_depth_ms: i.depth_ms,
                    jitter_target_ms: i.target_delay_ms,
                    concealed_frames: i.concealed_frames,
                    late: i.late,
                    lost: i.lost,
                    decode_errors: i.decode_errors,
                    talking: m.is_talking(l.id),
                })
            }),
        })
    }
}

/// Configuration of one worker.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Index (also the core it is pinned to).
    pub index: usize,
    /// Driver choice.
    pub driver: DriverKind,
    /// Driver pool sizes.
    pub options: DriverOptions,
    /// Pin the thread to core `index`.
    pub pin: bool,
    /// The engine's clock origin.
    pub epoch: Instant,
}

/// Starts a worker thread; returns once its driver is open (or failed to open). `tap` is
/// the worker's end of its recording tap ring (none: calls on it cannot be recorded).
pub fn spawn(
    config: WorkerConfig,
    metrics: Arc<WorkerMetrics>,
    events: mpsc::Sender<WorkerEvent>,
    tap: Option<TapProducer>,
) -> io::Result<WorkerHandle> {
    let (tx, rx) = crossbeam::channel::bounded(COMMAND_QUEUE);
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    let index = config.index;
    let thread = std::thread::Builder::new()
        .name(format!("sb-media-{index}"))
        .spawn(move || {
            if config.pin {
                rt::pin_to_core(config.index);
            }
            let driver = match rt::open_driver(config.driver, &config.options) {
                Ok(d) => d,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok((driver.waker(), driver.kind())));
            let mut w = Worker {
                index: config.index,
                epoch: config.epoch,
                driver,
                rx,
                events,
                metrics,
                calls: Vec::new(),
                free_slots: Vec::new(),
                by_key: HashMap::new(),
                routes: Vec::new(),
                tap,
                next_tick: None,
                mixing_calls: 0,
                input_seen: HashMap::new(),
                sweep_mark: false,
            };
            w.run();
        })?;
    match ready_rx.recv() {
        Ok(Ok((waker, driver))) => Ok(WorkerHandle {
            index,
            driver,
            tx,
            waker,
            thread: Some(thread),
        }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => {
            let _ = thread.join();
            Err(io::Error::other(format!(
                "media worker {index} died while starting"
            )))
        }
    }
}

struct Worker {
    index: usize,
    epoch: Instant,
    driver: rt::AnyDriver,
    rx: Receiver<Command>,
    events: mpsc::Sender<WorkerEvent>,
    metrics: Arc<WorkerMetrics>,
    calls: Vec<Option<CallEntry>>,
    free_slots: Vec<u32>,
    by_key: HashMap<CallKey, u32>,
    routes: Vec<Option<PortRoute>>,
    tap: Option<TapProducer>,
    /// The media clock's next tick, while any call mixes.
    next_tick: Option<Instant>,
    /// Calls with a [`MediaCall`].
    mixing_calls: usize,
    /// Late, lost and concealed counts of each mixed leg at the last sweep (so the sweep
    /// publishes their growth), with the sweep mark that last saw the leg.
    input_seen: HashMap<(CallKey, LegId), ([u64; 3], bool)>,
    /// Flips every sweep; entries of `input_seen` not carrying it are gone.
    sweep_mark: bool,
}

fn micros(epoch: Instant) -> Micros {
    Micros(u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX))
}

/// `at` on the engine's clock.
fn micros_at(epoch: Instant, at: Instant) -> Micros {
    Micros(u64::try_from(at.saturating_duration_since(epoch).as_micros()).unwrap_or(u64::MAX))
}

/// Sends one packet a mixer produced for `leg`: from the leg's RTP socket to where its media
/// goes now. Counts what could not be sent.
fn send_media(
    driver: &mut rt::AnyDriver,
    metrics: &WorkerMetrics,
    relay: &Relay,
    legs: &[Option<LegEntry>],
    leg: LegId,
    data: &[u8],
) {
    let Some(token) = legs
        .get(leg.index())
        .and_then(Option::as_ref)
        .filter(|l| l.id == leg)
        .map(|l| l.rtp)
    else {
        metrics.drop_packet(DropReason::UnknownLeg.index());
        return;
    };
    let Some((_, dst)) = relay.leg(leg).and_then(|l| l.destination(Component::Rtp)) else {
        metrics.drop_packet(DropReason::NoDestination.index());
        return;
    };
    match driver.queue_send(token, dst, data) {
        Ok(()) => {
            WorkerMetrics::add(&metrics.media_packets_out, 1);
            WorkerMetrics::add(&metrics.media_bytes_out, data.len() as u64);
        }
        Err(rt::SendError::QueueFull { .. }) => metrics.drop_packet(DROP_SEND_QUEUE),
        Err(_) => metrics.drop_packet(DROP_SEND_REFUSED),
    }
}

/// Copies a relayed RTP packet into the recording tap when a running recording needs its
/// leg; counts it on the call when the ring has no room. No allocation, no lock.
fn tap_packet(p: &mut TapProducer, call: &mut CallEntry, leg: LegId, now: Micros, data: &[u8]) {
    let Some(key) = call.leg(leg).map(|l| l.key) else {
        return;
    };
    if !call.tap.wants(key) || is_rtcp(data) {
        return;
    }
    let Ok(pkt) = RtpPacket::parse(data) else {
        return;
    };
    if !p.push_packet(call.key, key, now, &pkt) {
        call.tap.note_drop();
    }
}

/// The control plane's name for the leg a media event is about.
fn event_leg_in(legs: &[Option<LegEntry>], event: &MediaEvent) -> Option<LegKey> {
    let id = match event {
        MediaEvent::Dtmf { leg, .. } | MediaEvent::Talking { leg, .. } => *leg,
        _ => return None,
    };
    legs.get(id.index())
        .and_then(Option::as_ref)
        .filter(|l| l.id == id)
        .map(|l| l.key)
}

/// `0`-`9`, `*`, `#`, `A`-`D` (either case).
fn is_dtmf_digit(c: char) -> bool {
    matches!(c.to_ascii_uppercase(), '0'..='9' | '*' | '#' | 'A'..='D')
}

/// The call's media call, or an error when it is not mixing.
fn mixer(entry: &mut CallEntry, call: CallKey) -> Result<&mut MediaCall, String> {
    entry
        .media
        .as_deref_mut()
        .ok_or_else(|| format!("call {call} is not mixing (no SetLegs yet)"))
}

/// Puts legs under the call's mixer (creating it) or updates their codecs.
fn set_legs(
    entry: &mut CallEntry,
    now: Micros,
    ids: &[LegId],
    legs: Vec<(LegKey, MediaLegConfig)>,
) -> Result<(), String> {
    let media = entry
        .media
        .get_or_insert_with(|| Box::new(MediaCall::new(MediaCallConfig::default())));
    let relay = &mut entry.relay;
    for (&id, (key, cfg)) in ids.iter().zip(legs) {
        let events_pt = cfg.recv_events;
        if media.contains(id) {
            media
                .update_leg(now, id, cfg)
                .map_err(|e| format!("leg {key}: {e}"))?;
        } else {
            let seed = relay.leg(id).and_then(|l| l.last_sent());
            let dtmf_blocked = relay.leg(id).is_some_and(|l| l.is_dtmf_blocked());
            media
                .add_leg(now, id, cfg, seed)
                .map_err(|e| format!("leg {key}: {e}"))?;
            if dtmf_blocked {
                media
                    .set_dtmf_blocked(id, true)
                    .map_err(|e| format!("leg {key}: {e}"))?;
            }
            // The mixer feeds this leg now: nothing is relayed to or from it.
            relay.clear_forwards(id).map_err(|e| e.to_string())?;
            relay.continue_stream(id, None).map_err(|e| e.to_string())?;
            relay.set_mixed(id, true).map_err(|e| e.to_string())?;
        }
        relay
            .set_telephone_event(id, events_pt)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Ends the call's mixing: every member goes back to the relay, which continues the stream
/// the mixer sent each of them.
fn stop_mixing(entry: &mut CallEntry) {
    let Some(mut media) = entry.media.take() else {
        return;
    };
    for l in entry.legs.iter().flatten() {
        if !media.contains(l.id) {
            continue;
        }
        let seed = media.remove_leg(l.id);
        let _ = entry.relay.continue_stream(l.id, seed);
        let _ = entry.relay.set_mixed(l.id, false);
    }
}

/// Queues a copy of a forwarded RTP packet with its header rewritten.
fn push_rewritten(
    tx: &mut rt::SendQueue,
    token: PortToken,
    dst: SocketAddr,
    data: &[u8],
    rw: Rewrite,
) -> Result<(), rt::SendError> {
    tx.push_with(token, dst, data.len(), |buf| {
        buf.copy_from_slice(data);
        rw.apply(buf);
    })
}

/// CPU time of the calling thread, from `/proc/thread-self/schedstat` (nanoseconds on CPU).
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

impl Worker {
    fn run(&mut self) {
        let mut next_sweep = Instant::now() + SWEEP;
        let started = Instant::now();
        let cpu0 = thread_cpu_ns().unwrap_or(0);
        loop {
            if let Some(t) = &mut self.tap {
                t.flush_marks();
            }
            let deadline = match self.next_tick {
                Some(t) => t.min(next_sweep),
                None => next_sweep,
            };
            let wait = deadline.saturating_duration_since(Instant::now());
            if !self.poll_media(wait) {
                std::thread::sleep(Duration::from_millis(1));
            }
            if !self.handle_commands() {
                break;
            }
            self.media_clock();
            if Instant::now() >= next_sweep {
                self.sweep();
                next_sweep = Instant::now() + SWEEP;
                let wall = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                let cpu = thread_cpu_ns().unwrap_or(cpu0).saturating_sub(cpu0);
                self.metrics
                    .busy_ns
                    .store(cpu, std::sync::atomic::Ordering::Relaxed);
                self.metrics
                    .loop_ns
                    .store(wall, std::sync::atomic::Ordering::Relaxed);
            }
        }
        // Close every socket.
        let keys: Vec<CallKey> = self.by_key.keys().copied().collect();
        for k in keys {
            let _ = self.remove_call(k);
        }
        debug!(worker = self.index, "media worker stopped");
    }

    /// One driver turn. Returns false when the driver failed (the caller backs off).
    fn poll_media(&mut self, wait: Duration) -> bool {
        let Worker {
            driver,
            calls,
            routes,
            metrics,
            epoch,
            tap,
            ..
        } = self;
        let epoch = *epoch;
        let mut rx_packets = 0u64;
        let mut rx_bytes = 0u64;
        let mut tx_packets = 0u64;
        let mut tx_bytes = 0u64;
        let res = driver.poll(Some(wait), |dg, tx| {
            rx_packets += 1;
            rx_bytes += dg.data.len() as u64;
            let Some(Some(route)) = routes.get(dg.token.index()) else {
                metrics.drop_packet(DROP_UNKNOWN_PORT);
                return;
            };
            let Some(Some(call)) = calls.get_mut(route.call_slot as usize) else {
                metrics.drop_packet(DROP_UNKNOWN_PORT);
                return;
            };
            let now = micros(epoch);
            match call
                .relay
                .handle_packet(now, route.leg, route.component, dg.src, dg.data)
            {
                RelayOutput::Forward(ts) => {
                    for t in ts.iter() {
                        let Some(token) = call.token(t.from_leg, t.component) else {
                            metrics.drop_packet(DROP_UNKNOWN_PORT);
                            continue;
                        };
                        let data: &[u8] = dg.data;
                        let sent = match t.rewrite {
                            None => tx.push(token, t.dst, data),
                            Some(rw) => push_rewritten(tx, token, t.dst, data, rw),
                        };
                        match sent {
                            Ok(()) => {
                                tx_packets += 1;
                                tx_bytes += dg.data.len() as u64;
                            }
                            Err(rt::SendError::QueueFull { .. }) => {
                                metrics.drop_packet(DROP_SEND_QUEUE)
                            }
                            Err(_) => metrics.drop_packet(DROP_SEND_REFUSED),
                        }
                    }
                    if route.component == Component::Rtp && !call.tap.is_empty() {
                        if let Some(p) = tap.as_mut() {
                            tap_packet(p, call, route.leg, now, dg.data);
                        }
                    }
                }
                RelayOutput::Consume(kind) => {
                    // RTCP from a mixed leg is only counted (by the relay).
                    if kind == Component::Rtp {
                        let CallEntry {
                            media,
                            relay,
                            legs,
                            taps,
                            ..
                        } = &mut *call;
                        if let Some(media) = media.as_mut() {
                            // Forks and analytics need the call's frames every tick.
                            media.set_direct_allowed(taps.is_empty());
                            // Direct mode: the packet is transcoded and sent at once, from
                            // the target leg's RTP socket, as the tick output is.
                            let mut out = |leg: LegId, data: &[u8]| {
                                let Some(token) = legs
                                    .get(leg.index())
                                    .and_then(Option::as_ref)
                                    .filter(|l| l.id == leg)
                                    .map(|l| l.rtp)
                                else {
                                    metrics.drop_packet(DropReason::UnknownLeg.index());
                                    return;
                                };
                                let Some((_, dst)) =
                                    relay.leg(leg).and_then(|l| l.destination(Component::Rtp))
                                else {
                                    metrics.drop_packet(DropReason::NoDestination.index());
                                    return;
                                };
                                match tx.push(token, dst, data) {
                                    Ok(()) => {
                                        WorkerMetrics::add(&metrics.media_packets_out, 1);
                                        WorkerMetrics::add(
                                            &metrics.media_bytes_out,
                                            data.len() as u64,
                                        );
                                    }
                                    Err(rt::SendError::QueueFull { .. }) => {
                                        metrics.drop_packet(DROP_SEND_QUEUE)
                                    }
                                    Err(_) => metrics.drop_packet(DROP_SEND_REFUSED),
                                }
                            };
                            if let Err(reason) =
                                media.push_rtp_with(now, route.leg, dg.data, &mut out)
                            {
                                metrics.drop_packet(reason.index());
                            }
                        }
                        if !call.tap.is_empty() {
                            if let Some(p) = tap.as_mut() {
                                tap_packet(p, call, route.leg, now, dg.data);
                            }
                        }
                    }
                }
                RelayOutput::Drop(reason) => metrics.drop_packet(reason.index()),
            }
        });
        WorkerMetrics::add(&metrics.rx_packets, rx_packets);
        WorkerMetrics::add(&metrics.rx_bytes, rx_bytes);
        WorkerMetrics::add(&metrics.tx_packets, tx_packets);
        WorkerMetrics::add(&metrics.tx_bytes, tx_bytes);
        match res {
            Ok(_) => true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => true,
            Err(e) => {
                error!(worker = self.index, error = %e, "I/O driver poll failed");
                false
            }
        }
    }

    /// Handles queued commands. Returns false on shutdown.
    fn handle_commands(&mut self) -> bool {
        for _ in 0..COMMANDS_PER_TURN {
            let Ok(cmd) = self.rx.try_recv() else {
                return true;
            };
            if matches!(cmd, Command::Shutdown) {
                return false;
            }
            self.handle_command(cmd);
        }
        true
    }

    fn call_mut(&mut self, key: CallKey) -> Option<&mut CallEntry> {
        let slot = *self.by_key.get(&key)?;
        self.calls.get_mut(slot as usize)?.as_mut()
    }

    fn handle_command(&mut self, cmd: Command) {
        let now = micros(self.epoch);
        match cmd {
            Command::CreateCall { call, timeout } => {
                if self.by_key.contains_key(&call) {
                    return;
                }
                let relay = Relay::new(
                    now,
                    RelayConfig {
                        media_timeout: timeout,
                        ..RelayConfig::default()
                    },
                );
                let entry = CallEntry {
                    key: call,
                    relay,
                    legs: Vec::new(),
                    tap: CallTap::default(),
                    media: None,
                    taps: crate::media::taps::CallTaps::default(),
                };
                let slot = match self.free_slots.pop() {
                    Some(s) => {
                        self.calls[s as usize] = Some(entry);
                        s
                    }
                    None => {
                        self.calls.push(Some(entry));
                        u32::try_from(self.calls.len() - 1).unwrap_or(u32::MAX)
                    }
                };
                self.by_key.insert(call, slot);
                self.publish_counts();
            }
            Command::AddLeg {
                call,
                leg,
                config,
                rtp,
                rtcp,
            } => {
                let Some(&slot) = self.by_key.get(&call) else {
                    warn!(call, "leg for an unknown call dropped");
                    return;
                };
                let Some(Some(entry)) = self.calls.get_mut(slot as usize) else {
                    return;
                };
                let id = match entry.relay.add_leg(config) {
                    Ok(id) => id,
                    Err(e) => {
                        warn!(call, leg, error = %e, "cannot add leg");
                        return;
                    }
                };
                let rtp_token = match self.driver.register(rtp) {
                    Ok(t) => t,
                    Err(e) => {
                        warn!(call, leg, error = %e, "cannot register RTP socket");
                        let _ = entry.relay.remove_leg(id);
                        return;
                    }
                };
                let rtcp_token = match self.driver.register(rtcp) {
                    Ok(t) => t,
                    Err(e) => {
                        warn!(call, leg, error = %e, "cannot register RTCP socket");
                        let _ = self.driver.deregister(rtp_token);
                        let _ = entry.relay.remove_leg(id);
                        return;
                    }
                };
                let i = id.index();
                if entry.legs.len() <= i {
                    entry.legs.resize_with(i + 1, || None);
                }
                entry.legs[i] = Some(LegEntry {
                    key: leg,
                    id,
                    rtp: rtp_token,
                    rtcp: rtcp_token,
                });
                for (token, component) in
                    [(rtp_token, Component::Rtp), (rtcp_token, Component::Rtcp)]
                {
                    let i = token.index();
                    if self.routes.len() <= i {
                        self.routes.resize(i + 1, None);
                    }
                    self.routes[i] = Some(PortRoute {
                        call_slot: slot,
                        leg: id,
                        component,
                    });
                }
                self.publish_counts();
            }
            Command::DetachLeg { call, leg, reply } => {
                let detached = self.detach_leg(call, leg);
                self.publish_counts();
                let _ = reply.send(detached);
            }
            Command::AttachLeg {
                call,
                leg,
                detached,
                reply,
            } => {
                let res = self.attach_leg(call, leg, detached);
                if res.is_err() {
                    warn!(call, leg, "cannot attach a moved leg");
                }
                self.publish_counts();
                if let Some(r) = reply {
                    let _ = r.send(res);
                }
            }
            Command::UpdateLeg { call, leg, config } => {
                if let Some(entry) = self.call_mut(call) {
                    if let Some(id) = entry.id_of(leg) {
                        if let Err(e) = entry.relay.update_leg(id, config) {
                            warn!(call, leg, error = %e, "cannot update leg");
                        }
                    }
                }
            }
            Command::Connect { call, a, b } => {
                if let Some(entry) = self.call_mut(call) {
                    if let (Some(a), Some(b)) = (entry.id_of(a), entry.id_of(b)) {
                        if let Err(e) = entry.relay.set_peer(a, b) {
                            warn!(call, error = %e, "cannot connect legs");
                        }
                    }
                }
            }
            Command::Block { call, leg, blocked } => {
                if let Some(entry) = self.call_mut(call) {
                    if let Some(id) = entry.id_of(leg) {
                        let _ = entry.relay.set_blocked(id, blocked);
                    }
                }
            }
            Command::DeleteCall { call, reply } => {
                let stats = self.remove_call(call);
                if let Some(r) = reply {
                    let _ = r.send(stats);
                }
            }
            Command::Query { call, reply } => {
                let stats = self
                    .by_key
                    .get(&call)
                    .and_then(|s| self.calls.get(*s as usize))
                    .and_then(Option::as_ref)
                    .map(|c| c.stats(&self.driver));
                let _ = reply.send(stats);
            }
            Command::Record { call, op } => {
                let Some(Some(entry)) = self
                    .by_key
                    .get(&call)
                    .and_then(|s| self.calls.get_mut(*s as usize))
                else {
                    return;
                };
                if let (Some((kind, rec, reason)), Some(p)) =
                    (entry.tap.apply(op), self.tap.as_mut())
                {
                    p.push_mark(Mark {
                        kind,
                        rec,
                        call,
                        at: now,
                        reason,
                    });
                }
            }
            Command::Media { call, op, reply } => {
                let res = self.handle_media(now, call, op);
                if let Err(e) = &res {
                    debug!(call, error = %e, "media operation refused");
                }
                self.publish_counts();
                if let Some(r) = reply {
                    let _ = r.send(res);
                }
            }
            Command::Barrier { reply } => {
                let _ = reply.send(());
            }
            Command::Shutdown => {}
        }
    }

    fn remove_call(&mut self, key: CallKey) -> Option<CallStats> {
        let slot = self.by_key.remove(&key)?;
        let entry = self.calls.get_mut(slot as usize)?.take()?;
        if let Some(p) = self.tap.as_mut() {
            let at = micros(self.epoch);
            for rec in entry.tap.recs() {
                p.push_mark(Mark {
                    kind: MarkKind::Stop,
                    rec,
                    call: key,
                    at,
                    reason: StopReason::CallEnded,
                });
            }
        }
        let stats = entry.stats(&self.driver);
        for l in entry.legs() {
            self.close_leg_sockets(l.rtp, l.rtcp);
        }
        self.free_slots.push(slot);
        self.publish_counts();
        Some(stats)
    }

    /// Takes a leg out of its call, keeping its sockets open (see [`Command::DetachLeg`]).
    fn detach_leg(&mut self, call: CallKey, leg: LegKey) -> Option<Box<DetachedLeg>> {
        let slot = *self.by_key.get(&call)?;
        let entry = self.calls.get_mut(slot as usize)?.as_mut()?;
        let id = entry.id_of(leg)?;
        let l = entry.legs.get(id.index())?.as_ref()?;
        let (rtp_token, rtcp_token) = (l.rtp, l.rtcp);
        let stats = entry.leg_stats(l, &self.driver);
        // Forks and analytics stop listening to it here, as for a removed leg.
        entry.taps.remove_leg(id);
        // The mixer's output state, when it fed the leg; the relay's otherwise.
        let mixed_seed = match entry.media.as_mut() {
            Some(media) if media.contains(id) => {
                let seed = media.remove_leg(id);
                if media.is_empty() {
                    entry.media = None;
                }
                seed
            }
            _ => None,
        };
        let relayed = entry.relay.remove_leg(id).ok()?;
        entry.legs[id.index()] = None;
        let seed = mixed_seed.or_else(|| relayed.last_sent());
        let mut config = *relayed.config();
        if let Some(a) = relayed.learned(Component::Rtp) {
            config.expected_rtp = Some(a);
        }
        if let Some(a) = relayed.learned(Component::Rtcp) {
            config.expected_rtcp = Some(a);
        }
        for t in [rtp_token, rtcp_token] {
            if let Some(r) = self.routes.get_mut(t.index()) {
                *r = None;
            }
        }
        let rtp = self.driver.take(rtp_token);
        let rtcp = self.driver.take(rtcp_token);
        match (rtp, rtcp) {
            (Ok(rtp), Ok(rtcp)) => Some(Box::new(DetachedLeg {
                config,
                rtp,
                rtcp,
                seed,
                stats,
            })),
            (rtp, rtcp) => {
                // The leg is gone from the call either way; whatever socket came back closes.
                warn!(call, leg, rtp = ?rtp.err(), rtcp = ?rtcp.err(), "cannot take a leg's sockets");
                None
            }
        }
    }

    /// Adds a detached leg to a call (see [`Command::AttachLeg`]).
    fn attach_leg(
        &mut self,
        call: CallKey,
        leg: LegKey,
        detached: Box<DetachedLeg>,
    ) -> Result<(), Option<Box<DetachedLeg>>> {
        let Some(&slot) = self.by_key.get(&call) else {
            return Err(Some(detached));
        };
        let Some(Some(entry)) = self.calls.get_mut(slot as usize) else {
            return Err(Some(detached));
        };
        if entry.id_of(leg).is_some() {
            return Err(Some(detached));
        }
        let DetachedLeg {
            config,
            rtp,
            rtcp,
            seed,
            stats,
        } = *detached;
        let Ok(id) = entry.relay.add_leg(config) else {
            return Err(Some(Box::new(DetachedLeg {
                config,
                rtp,
                rtcp,
                seed,
                stats,
            })));
        };
        if seed.is_some() {
            let _ = entry.relay.continue_stream(id, seed);
        }
        // Registering takes the sockets; on failure they are closed and the leg is lost.
        let rtp_token = match self.driver.register(rtp) {
            Ok(t) => t,
            Err(e) => {
                warn!(call, leg, error = %e, "cannot register a moved RTP socket");
                let _ = entry.relay.remove_leg(id);
                return Err(None);
            }
        };
        let rtcp_token = match self.driver.register(rtcp) {
            Ok(t) => t,
            Err(e) => {
                warn!(call, leg, error = %e, "cannot register a moved RTCP socket");
                let _ = self.driver.deregister(rtp_token);
                let _ = entry.relay.remove_leg(id);
                return Err(None);
            }
        };
        let i = id.index();
        if entry.legs.len() <= i {
            entry.legs.resize_with(i + 1, || None);
        }
        entry.legs[i] = Some(LegEntry {
            key: leg,
            id,
            rtp: rtp_token,
            rtcp: rtcp_token,
        });
        for (token, component) in [(rtp_token, Component::Rtp), (rtcp_token, Component::Rtcp)] {
            let t = token.index();
            if self.routes.len() <= t {
                self.routes.resize(t + 1, None);
            }
            self.routes[t] = Some(PortRoute {
                call_slot: slot,
                leg: id,
                component,
            });
        }
        Ok(())
    }

    fn close_leg_sockets(&mut self, rtp: PortToken, rtcp: PortToken) {
        for t in [rtp, rtcp] {
            if let Some(r) = self.routes.get_mut(t.index()) {
                *r = None;
            }
            let _ = self.driver.deregister(t);
        }
    }

    fn publish_counts(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
        let calls = self.by_key.len() as u64;
        let mut legs = 0usize;
        let mut mixing = 0usize;
        let mut members = 0usize;
        for c in self.calls.iter().flatten() {
            legs += c.leg_count();
            if let Some(m) = &c.media {
                mixing += 1;
                members += m.len();
            }
        }
        self.mixing_calls = mixing;
        self.metrics.calls_active.store(calls, Relaxed);
        self.metrics.legs_active.store(legs as u64, Relaxed);
        self.metrics.mixing_calls.store(mixing as u64, Relaxed);
        self.metrics.mixed_legs.store(members as u64, Relaxed);
        if mixing == 0 {
            self.next_tick = None;
        } else if self.next_tick.is_none() {
            self.next_tick = Some(Instant::now() + TICK);
        }
    }

    /// Runs the media clock: ticks every mixing call for each 20 ms frame that is due (at most
    /// [`MAX_CATCH_UP`]; older frames are skipped), sends what they produce and reports
    /// their events.
    fn media_clock(&mut self) {
        let Some(mut due) = self.next_tick else {
            return;
        };
        let now = Instant::now();
        if now < due {
            return;
        }
        let mut frames = 0u32;
        while due <= now && frames < MAX_CATCH_UP {
            self.tick_all(micros_at(self.epoch, due));
            due += TICK;
            frames += 1;
        }
        let mut late = u64::from(frames.saturating_sub(1));
        if due <= now {
            // Too far behind: skip the frames that cannot be caught up.
            let behind = now.saturating_duration_since(due).as_micros() / TICK.as_micros();
            late += u64::try_from(behind).unwrap_or(u64::MAX).saturating_add(1);
            due = now + TICK;
        }
        WorkerMetrics::add(&self.metrics.media_ticks, u64::from(frames));
        WorkerMetrics::add(&self.metrics.media_late_ticks, late);
        if self.next_tick.is_some() {
            self.next_tick = Some(due);
        }
    }

    /// One frame of every mixing call at `now`.
    fn tick_all(&mut self, now: Micros) {
        let Worker {
            driver,
            calls,
            metrics,
            events,
            index,
            ..
        } = self;
        for call in calls.iter_mut().flatten() {
            let CallEntry {
                relay,
                legs,
                media,
                taps,
                ..
            } = call;
            let Some(media) = media.as_mut() else {
                continue;
            };
            // A fork or analytics needs every frame through the tick: no direct transcoding.
            media.set_direct_allowed(taps.is_empty());
            taps.before_tick(media);
            media.tick(now, &mut |leg, data| {
                send_media(driver, metrics, relay, legs, leg, data);
            });
            if let Some(summary) = taps.after_tick(media) {
                let ev = WorkerEvent::Analytics {
                    call: call.key,
                    worker: *index,
                    summary: Box::new(summary),
                    last: false,
                };
                if events.try_send(ev).is_err() {
                    WorkerMetrics::add(&metrics.media_events_dropped, 1);
                }
            }
            while let Some(event) = media.poll_event() {
                taps.on_event(&event);
                let ev = WorkerEvent::Media {
                    call: call.key,
                    worker: *index,
                    leg: event_leg_in(legs, &event),
                    event,
                };
                if events.try_send(ev).is_err() {
                    WorkerMetrics::add(&metrics.media_events_dropped, 1);
                }
            }
        }
    }

    /// Applies a [`MediaOp`] to a call.
    fn handle_media(&mut self, now: Micros, call: CallKey, op: MediaOp) -> Result<(), String> {
        let entry = self
            .call_mut(call)
            .ok_or_else(|| format!("unknown call {call}"))?;
        let id_of = |entry: &CallEntry, key: LegKey| {
            entry
                .id_of(key)
                .ok_or_else(|| format!("unknown leg {key} in call {call}"))
        };
        match op {
            MediaOp::SetLegs { legs } => {
                let ids = legs
                    .iter()
                    .map(|(k, _)| id_of(entry, *k))
                    .collect::<Result<Vec<_>, _>>()?;
                let res = set_legs(entry, now, &ids, legs);
                if entry.media.as_ref().is_some_and(|m| m.is_empty()) {
                    entry.media = None;
                }
                res
            }
            MediaOp::Relay { a, b } => {
                if a == b {
                    return Err(format!("cannot relay leg {a} to itself"));
                }
                let a = id_of(entry, a)?;
                let b = id_of(entry, b)?;
                stop_mixing(entry);
                let relay = &mut entry.relay;
                for id in [a, b] {
                    relay.clear_forwards(id).map_err(|e| e.to_string())?;
                }
                relay.set_peer(a, b).map_err(|e| e.to_string())
            }
            MediaOp::Hears { leg, hears } => {
                let listener = id_of(entry, leg)?;
                let speakers = hears
                    .iter()
                    .map(|k| id_of(entry, *k))
                    .collect::<Result<Vec<_>, _>>()?;
                mixer(entry, call)?
                    .set_hears(listener, &speakers)
                    .map_err(|e| format!("leg {leg}: {e}"))
            }
            MediaOp::LegFlags {
                leg,
                mute,
                deaf,
                gain_db,
            } => {
                let id = id_of(entry, leg)?;
                let media = mixer(entry, call)?;
                let err = |e: switchboard_proto::media::MediaError| format!("leg {leg}: {e}");
                if let Some(m) = mute {
                    media.set_mute(id, m).map_err(err)?;
                }
                if let Some(d) = deaf {
                    media.set_deaf(id, d).map_err(err)?;
                }
                if let Some(g) = gain_db {
                    media.set_gain_db(id, g).map_err(err)?;
                }
                Ok(())
            }
            MediaOp::Play {
                id,
                leg,
                source,
                repeat,
                stop_on_dtmf,
            } => {
                let target = match leg {
                    Some(k) => PlayTarget::Leg(id_of(entry, k)?),
                    None => PlayTarget::Call,
                };
                mixer(entry, call)?
                    .play_start(PlayId(id), target, source, repeat, stop_on_dtmf)
                    .map_err(|e| format!("play {id}: {e}"))
            }
            MediaOp::StopPlay { id, leg } => {
                let target = match leg {
                    Some(k) => Some(PlayTarget::Leg(id_of(entry, k)?)),
                    None => None,
                };
                if let Some(media) = entry.media.as_mut() {
                    let _ = media.play_stop(id.map(PlayId), target);
                }
                Ok(())
            }
            MediaOp::SendDtmf {
                leg,
                digits,
                duration_ms,
                volume_dbm0,
            } => {
                let id = id_of(entry, leg)?;
                if digits.is_empty() || digits.chars().count() > MAX_DTMF_DIGITS {
                    return Err(format!("between 1 and {MAX_DTMF_DIGITS} digits expected"));
                }
                if let Some(bad) = digits.chars().find(|c| !is_dtmf_digit(*c)) {
                    return Err(format!("{bad:?} is not a DTMF digit"));
                }
                let media = mixer(entry, call)?;
                for digit in digits.chars() {
                    media
                        .send_dtmf(id, digit.to_ascii_uppercase(), duration_ms, volume_dbm0)
                        .map_err(|e| format!("leg {leg}: digit {digit:?}: {e}"))?;
                }
                Ok(())
            }
            MediaOp::BlockDtmf { leg, blocked } => {
                let id = id_of(entry, leg)?;
                entry
                    .relay
                    .set_dtmf_blocked(id, blocked)
                    .map_err(|e| e.to_string())?;
                if let Some(media) = entry.media.as_mut().filter(|m| m.contains(id)) {
                    media
                        .set_dtmf_blocked(id, blocked)
                        .map_err(|e| format!("leg {leg}: {e}"))?;
                }
                Ok(())
            }
            MediaOp::ForkStart {
                id,
                caller,
                agent,
                what,
                sample_rate,
                bot_leg,
                media,
            } => {
                let caller = caller.map(|k| id_of(entry, k)).transpose()?;
                let agent = agent.map(|k| id_of(entry, k)).transpose()?;
                let bot_leg = bot_leg.map(|k| id_of(entry, k)).transpose()?;
                entry.taps.start_fork(crate::media::taps::ForkTapSpec {
                    id,
                    caller,
                    agent,
                    what,
                    sample_rate,
                    bot_leg,
                    media: *media,
                })
            }
            MediaOp::TelephoneEvent { leg, pt } => {
                let id = id_of(entry, leg)?;
                entry
                    .relay
                    .set_telephone_event(id, pt)
                    .map_err(|e| e.to_string())
            }
            MediaOp::ForkStop { id } => {
                entry.taps.stop_fork(id);
                Ok(())
            }
            MediaOp::AnalyticsStart {
                caller,
                agent,
                interval_ms,
            } => {
                let caller = caller.map(|k| id_of(entry, k)).transpose()?;
                let agent = agent.map(|k| id_of(entry, k)).transpose()?;
                entry.taps.start_analytics(caller, agent, interval_ms)
            }
            MediaOp::AnalyticsStop => {
                if let Some(summary) = entry.taps.stop_analytics() {
                    let ev = WorkerEvent::Analytics {
                        call,
                        worker: self.index,
                        summary: Box::new(summary),
                        last: true,
                    };
                    let _ = self.events.try_send(ev);
                }
                Ok(())
            }
            MediaOp::RemoveLeg { leg } => {
                let id = id_of(entry, leg)?;
                entry.taps.remove_leg(id);
                if let Some(media) = entry.media.as_mut() {
                    let _ = media.remove_leg(id);
                    if media.is_empty() {
                        entry.media = None;
                    }
                }
                let _ = entry.relay.remove_leg(id);
                let removed = entry.legs.get_mut(id.index()).and_then(Option::take);
                if let Some(l) = removed {
                    self.close_leg_sockets(l.rtp, l.rtcp);
                }
                Ok(())
            }
        }
    }

    /// Recomputes the sweep's figures from the calls (states, jitter buffers, mixer
    /// speakers, transcoding, live quality) and publishes them. Allocates only when a new
    /// mixed leg enters `input_seen`.
    fn publish_sweep(&mut self, now: Micros) {
        let mut t = SweepTally::default();
        let mark = !self.sweep_mark;
        self.sweep_mark = mark;
        let seen = &mut self.input_seen;
        for c in self.calls.iter().flatten() {
            let mut call_active = false;
            for l in c.legs() {
                let Some(r) = c.relay.leg(l.id) else {
                    continue;
                };
                let rtp = r.rtp_stats();
                let active = r
                    .last_packet()
                    .is_some_and(|p| now.0.saturating_sub(p.0) < IDLE_AFTER_US);
                call_active |= active;
                if rtp.packets() > 0 {
                    t.quality(r.mos(), rtp.jitter_ms(), rtp.loss_ratio());
                }
                if r.is_mixed() {
                    continue;
                }
                if active {
                    t.legs_relay_active += 1;
                } else {
                    t.legs_relay_idle += 1;
                }
            }
            let Some(media) = c.media.as_deref() else {
                if call_active {
                    t.calls_relaying += 1;
                } else {
                    t.calls_idle += 1;
                }
                continue;
            };
            t.mixer_speakers += media.stats().talkers_mixed as u64;
            for leg in media.legs() {
                let Some(i) = media.input_stats(leg) else {
                    continue;
                };
                t.depth_ms(i.depth_ms, i.target_delay_ms);
                let cur = [i.late, i.lost, i.concealed_frames];
                let prev = seen.insert((c.key, leg), (cur, mark)).map(|(p, _)| p);
                for (k, (now_v, acc)) in cur
                    .iter()
                    .zip([&mut t.late, &mut t.lost, &mut t.concealed])
                    .enumerate()
                {
                    // A smaller count is a new input (the leg re-added): all of it is new.
                    let before = prev.map_or(0, |p| p[k]);
                    *acc += if *now_v >= before {
                        now_v - before
                    } else {
                        *now_v
                    };
                }
            }
            if media.len() == 2 {
                let mut legs = media.legs();
                if let (Some(a), Some(b)) = (legs.next(), legs.next()) {
                    if let (Some(ca), Some(cb)) = (media.send_codec(a), media.send_codec(b)) {
                        t.transcode(ca, cb);
                        t.transcode(cb, ca);
                    }
                }
            }
        }
        seen.retain(|_, (_, m)| *m == mark);
        self.metrics.sweep.publish(&t);
    }

    /// Media timeouts and driver counters.
    fn sweep(&mut self) {
        let now = micros(self.epoch);
        self.publish_sweep(now);
        let mut timed_out = Vec::new();
        for entry in self.calls.iter_mut().flatten() {
            if let Some(frames) = entry.tap.take_new_drops() {
                let ev = WorkerEvent::RecordingDropped {
                    call: entry.key,
                    worker: self.index,
                    frames,
                };
                let _ = self.events.try_send(ev);
            }
            while entry.relay.poll_event().is_some() {}
            if entry.relay.poll_timeout().is_some_and(|t| t <= now) {
                if let Some(RelayEvent::MediaTimeout { .. }) = entry.relay.handle_timeout(now) {
                    timed_out.push(entry.key);
                }
            }
        }
        for key in timed_out {
            if let Some(stats) = self.remove_call(key) {
                let ev = WorkerEvent::MediaTimeout {
                    call: key,
                    worker: self.index,
                    stats: Box::new(stats),
                };
                if self.events.try_send(ev).is_err() {
                    warn!(call = key, "event queue full: media timeout not reported");
                }
            }
        }
        // Sends the kernel refused after the driver accepted them: cumulative in the driver.
        let s = self.driver.stats();
        if let Some(c) = self.metrics.drops.get(DROP_SEND_FAILED) {
            c.store(
                s.send_errors + s.send_would_block + s.send_stale_token,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
    }
}
