//! The control plane: one task that owns the NG call-signalling state, the port allocator and
//! the handles of the media workers, fed by the NG servers ([`ng`]), the native control
//! protocol ([`native`]) and HTTP through a bounded channel. Replies go back on one-shot
//! channels; events to subscribers on a broadcast channel.
//!
//! It runs on the control runtime's threads, never on a media core. Media commands go to the
//! worker that owns the call; statistics for `query`, `delete` and `call.get` come back from it.

pub mod bridge;
pub mod native;
pub mod ng;
pub mod ports;
mod taps;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use switchboard_proto::media::MediaEvent;
use switchboard_proto::ng::{AddressFamily, RetransmitCache};
use switchboard_proto::relay::{Latching, LegConfig};
use switchboard_proto::session::{
    EndReason, GlobalStats, LocalPair, MediaCommand, NgHandler, PortAllocator, PromptSource,
    RelayKind, RelaySpec, Sessions, SessionsConfig, StatsSource, StreamSide, StreamStats,
    UnixMicros,
};
use switchboard_proto::time::Micros;
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{info, warn};

use self::native::{ErrorCode, OpError};
use self::ports::{EnginePorts, advertised_rtp};
use crate::media::prompts::{Prompt, PromptCache};
use crate::media::topology::{Change, Leg, Monitor, Topology, TopologyError};
use crate::media::{HearsSpec, LegCodecs, MediaRequest, MediaSettings, PlayWhat};
use crate::metrics::Metrics;
use crate::worker::{CallKey, CallStats, Command, LegKey, MediaOp, WorkerEvent, WorkerHandle};

/// Requests queued to the control task before senders wait.
const HUB_QUEUE: usize = 4096;
/// Events buffered per subscriber before a slow one misses some.
const EVENT_BUFFER: usize = 4096;
/// How long the control task waits for a worker's answer.
const WORKER_ANSWER: Duration = Duration::from_secs(2);

enum HubRequest {
    Ng {
        data: Vec<u8>,
        reply: oneshot::Sender<Option<Vec<u8>>>,
    },
    Native {
        op: NativeOp,
        reply: oneshot::Sender<Result<Value, OpError>>,
    },
}

enum NativeOp {
    Stats,
    CallList,
    CallGet(String),
    CallDelete(String),
    Record(crate::record::manager::NativeRecord),
    Media(Box<MediaRequest>, Option<Arc<Prompt>>),
    EndAll,
    Bridge(bridge::BridgeRequest),
    Unbridge { call: String, leg: String },
}

struct Shared {
    tx: mpsc::Sender<HubRequest>,
    events: broadcast::Sender<Arc<Value>>,
    metrics: Metrics,
    control_token: Option<String>,
    http_token: Option<String>,
    recordings: Option<crate::record::RecordingService>,
    draining: AtomicBool,
    /// The ACD service, once started (set once, read without locking).
    acd: std::sync::OnceLock<crate::acd::AcdHandle>,
    /// Decoded prompts, shared by the native and NG paths.
    prompts: Arc<PromptCache>,
}

/// A cheap, cloneable handle on the control task.
#[derive(Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").finish_non_exhaustive()
    }
}

fn unavailable() -> OpError {
    OpError::new(ErrorCode::Unavailable, "the engine is shutting down")
}

impl Hub {
    /// Handles one NG message (a datagram, or one message cut from a TCP stream); `None` means
    /// no reply (the message had no cookie).
    pub async fn ng(&self, data: Vec<u8>) -> Option<Vec<u8>> {
        let (reply, rx) = oneshot::channel();
        self.shared
            .tx
            .send(HubRequest::Ng { data, reply })
            .await
            .ok()?;
        rx.await.ok().flatten()
    }

    async fn native(&self, op: NativeOp) -> Result<Value, OpError> {
        let (reply, rx) = oneshot::channel();
        self.shared
            .tx
            .send(HubRequest::Native { op, reply })
            .await
            .map_err(|_| unavailable())?;
        rx.await.map_err(|_| unavailable())?
    }

    /// Engine counters.
    pub async fn stats(&self) -> Result<Value, OpError> {
        self.native(NativeOp::Stats).await
    }

    /// Every call.
    pub async fn call_list(&self) -> Result<Value, OpError> {
        self.native(NativeOp::CallList).await
    }

    /// One call with its legs and statistics.
    pub async fn call_get(&self, call: &str) -> Result<Value, OpError> {
        self.native(NativeOp::CallGet(call.to_owned())).await
    }

    /// Ends a call at once.
    pub async fn call_delete(&self, call: &str) -> Result<Value, OpError> {
        self.native(NativeOp::CallDelete(call.to_owned())).await
    }

    /// A receiver of every event from now on.
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Value>> {
        self.shared.events.subscribe()
    }

    /// The engine's counters.
    #[must_use]
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Whether `token` is the native control token (always true when none is configured).
    #[must_use]
    pub fn check_control_token(&self, token: &str) -> bool {
        self.shared
            .control_token
            .as_deref()
            .is_none_or(|t| crate::http::constant_time_eq(t.as_bytes(), token.as_bytes()))
    }

    /// Whether TCP control clients must authenticate.
    #[must_use]
    pub fn control_needs_token(&self) -> bool {
        self.shared.control_token.is_some()
    }

    /// The HTTP bearer token, if configured.
    #[must_use]
    pub fn http_token(&self) -> Option<&str> {
        self.shared.http_token.as_deref()
    }

    /// Recording, if it runs.
    #[must_use]
    pub fn recordings(&self) -> Option<&crate::record::RecordingService> {
        self.shared.recordings.as_ref()
    }

    /// `record.start`, `record.pause`, `record.resume`, `record.stop`.
    pub async fn record(&self, op: &str, req: &Value) -> Result<Value, OpError> {
        let r = crate::record::manager::NativeRecord::parse(op, req)?;
        self.native(NativeOp::Record(r)).await
    }

    /// `call.create`, `leg.*`, `monitor.*`, `play.*`, `dtmf.send`. A prompt file is read and
    /// decoded here, on a blocking thread, before the request reaches the control task.
    pub async fn media(&self, op: &str, req: &Value) -> Result<Value, OpError> {
        let request = MediaRequest::parse(op, req)?;
        let prompt = match &request {
            MediaRequest::PlayStart {
                what: PlayWhat::File(path),
                ..
            } => Some(self.load_prompt(PromptSource::File(path.clone())).await?),
            _ => None,
        };
        self.native(NativeOp::Media(Box::new(request), prompt))
            .await
    }

    /// Loads a prompt on a blocking thread; errors are `bad_request` with the reason.
    async fn load_prompt(&self, source: PromptSource) -> Result<Arc<Prompt>, OpError> {
        let cache = Arc::clone(&self.shared.prompts);
        let res = tokio::task::spawn_blocking(move || match source {
            PromptSource::File(p) => cache.load_file(std::path::Path::new(&p)),
            PromptSource::Blob(b) => cache.load_bytes(&b),
            _ => Err(crate::media::prompts::PromptError::Wav(
                "unknown prompt source".into(),
            )),
        })
        .await
        .map_err(|_| unavailable())?;
        res.map_err(|e| OpError::new(ErrorCode::BadRequest, e.to_string()))
    }

    /// Ends every call (reason `shutdown`), each with its `call.ended` event; bounded in
    /// time. Called once before the engine stops.
    pub async fn end_all_calls(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(3), self.native(NativeOp::EndAll)).await;
    }

    /// Whether the engine refuses new calls while draining.
    #[must_use]
    pub fn is_draining(&self) -> bool {
        self.shared.draining.load(Ordering::Relaxed)
    }

    /// Starts draining: new calls are refused from now on.
    pub fn start_draining(&self) {
        self.shared.draining.store(true, Ordering::Relaxed);
    }

    /// The ACD service's handle, if it was started.
    #[must_use]
    pub fn acd(&self) -> Option<&crate::acd::AcdHandle> {
        self.shared.acd.get()
    }

    /// Hands the ACD service's handle to the control plane (once; later calls are ignored).
    pub fn set_acd(&self, acd: crate::acd::AcdHandle) {
        let _ = self.shared.acd.set(acd);
    }

    /// Sends an event to every subscriber.
    pub fn publish(&self, ev: Value) {
        let _ = self.shared.events.send(Arc::new(ev));
    }
}

/// What the control task needs to start.
#[derive(Debug)]
pub struct HubConfig {
    /// Media timeout.
    pub media_timeout: Duration,
    /// Default NG delete delay.
    pub delete_delay: Duration,
    /// Native control token.
    pub control_token: Option<String>,
    /// HTTP token.
    pub http_token: Option<String>,
    /// The engine's monotonic clock origin (shared with the workers).
    pub epoch: Instant,
    /// Recording, when started: the service and the recorder's events.
    pub recording: Option<(
        crate::record::RecordingService,
        mpsc::Receiver<crate::record::RecorderEvent>,
    )>,
    /// Conferences, prompts.
    pub media: MediaSettings,
}

/// A call as the control task knows it.
#[derive(Debug)]
struct CallInfo {
    key: CallKey,
    worker: usize,
    /// Legs on the worker, by local RTP port, with the pair.
    legs: HashMap<u16, LocalPair>,
    tags: HashSet<String>,
    /// Who hears whom; relay or mix.
    topo: Topology,
    /// Pairs allocated by native `leg.create` (released by the control task, not NG).
    native_legs: HashMap<u16, LocalPair>,
    /// The NG media section whose legs are in the topology (others are relayed as they are).
    topo_section: Option<usize>,
    /// Created, Unix ms.
    created_ms: u64,
    /// The next prompt id.
    next_play: u32,
    /// Names given to native legs without one.
    next_leg: u32,
    /// Mixing held for DTMF being sent: (until, hold id).
    holds: Vec<(Instant, u32)>,
    /// The next hold id.
    next_hold: u32,
    /// Media forks running, by fork id.
    forks: HashMap<String, taps::ForkRun>,
    /// The number in the next fork's id.
    next_fork: u32,
    /// Conversation analytics, while they run.
    analytics: Option<taps::AnalyticsRun>,
    /// The last analytics summary (live or final), for `call.ended`.
    last_analytics: Option<Value>,
    /// When the call was answered, Unix ms (see [`Control::note_answered`]).
    answered_ms: Option<u64>,
    /// The codec each NG leg negotiated, by key, for `call.ended`.
    ng_codecs: HashMap<LegKey, String>,
}

impl CallInfo {
    fn new(key: CallKey, worker: usize, max_members: usize, created_ms: u64) -> Self {
        Self {
            key,
            worker,
            legs: HashMap::new(),
            tags: HashSet::new(),
            topo: Topology::new(max_members),
            native_legs: HashMap::new(),
            topo_section: None,
            created_ms,
            next_play: 1,
            next_leg: 1,
            holds: Vec::new(),
            next_hold: 1,
            forks: HashMap::new(),
            next_fork: 1,
            analytics: None,
            last_analytics: None,
            answered_ms: None,
            ng_codecs: HashMap::new(),
        }
    }
}

struct Control {
    ng: NgHandler,
    ports: EnginePorts,
    workers: Vec<WorkerHandle>,
    calls: HashMap<String, CallInfo>,
    by_key: HashMap<CallKey, String>,
    next_key: CallKey,
    media_timeout: Duration,
    epoch: Instant,
    hub: Hub,
    recording: Option<crate::record::manager::Manager>,
    media: MediaSettings,
    /// Native calls without a leg yet (no worker chosen): name → created, Unix ms.
    empty_calls: HashMap<String, u64>,
    /// Why calls ended by the commands being applied now end (`call.ended` events).
    end_reason: &'static str,
    /// Names given to native calls without one.
    next_call: u64,
    /// Legs living in a call other than the one that owns them (`call.bridge`).
    moves: bridge::Moves,
}

/// Starts the control task; returns its handle. Workers' events arrive on `events`.
pub fn start(
    config: HubConfig,
    ports: EnginePorts,
    workers: Vec<WorkerHandle>,
    metrics: Metrics,
    events: mpsc::Receiver<WorkerEvent>,
) -> (Hub, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(HUB_QUEUE);
    let (ev_tx, _) = broadcast::channel(EVENT_BUFFER);
    let hub = Hub {
        shared: Arc::new(Shared {
            tx,
            events: ev_tx,
            metrics,
            control_token: config.control_token,
            http_token: config.http_token,
            recordings: config.recording.as_ref().map(|(s, _)| s.clone()),
            draining: AtomicBool::new(false),
            acd: std::sync::OnceLock::new(),
            prompts: Arc::new(PromptCache::new(config.media.prompts)),
        }),
    };
    let sessions = Sessions::new(SessionsConfig {
        delete_delay: config.delete_delay,
        ..SessionsConfig::default()
    });
    let (recording, rec_events) = match config.recording {
        Some((service, events)) => (
            Some(crate::record::manager::Manager::new(service)),
            Some(events),
        ),
        None => (None, None),
    };
    let control = Control {
        ng: NgHandler::new(sessions, RetransmitCache::default()),
        ports,
        workers,
        calls: HashMap::new(),
        by_key: HashMap::new(),
        next_key: 1,
        media_timeout: config.media_timeout,
        epoch: config.epoch,
        hub: hub.clone(),
        recording,
        media: config.media,
        empty_calls: HashMap::new(),
        end_reason: "hangup",
        next_call: 1,
        moves: bridge::Moves::default(),
    };
    let task = tokio::spawn(control.run(rx, events, rec_events));
    tokio::spawn(bridge::watch_assignments(hub.clone()));
    (hub, task)
}

fn wall_now() -> UnixMicros {
    UnixMicros(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
    )
}

/// Statistics handed to the NG state: one call's streams, fetched from its worker just
/// before the request, and the engine-wide totals.
struct EngineStats {
    streams: HashMap<SocketAddr, StreamStats>,
    global: GlobalStats,
}

impl StatsSource for EngineStats {
    fn stream(&self, _call_id: &str, local: SocketAddr) -> Option<StreamStats> {
        self.streams.get(&local).copied()
    }
    fn global(&self) -> GlobalStats {
        self.global
    }
}

impl Control {
    fn now(&self) -> Micros {
        Micros(u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX))
    }

    async fn run(
        mut self,
        mut rx: mpsc::Receiver<HubRequest>,
        mut events: mpsc::Receiver<WorkerEvent>,
        mut rec_events: Option<mpsc::Receiver<crate::record::RecorderEvent>>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                req = rx.recv() => match req {
                    Some(HubRequest::Ng { data, reply }) => {
                        let out = self.handle_ng(&data).await;
                        let _ = reply.send(out);
                    }
                    Some(HubRequest::Native { op, reply }) => {
                        let out = self.handle_native(op).await;
                        let _ = reply.send(out);
                    }
                    None => break,
                },
                Some(ev) = events.recv() => self.handle_worker_event(ev),
                Some(ev) = recv_recording(&mut rec_events) => self.handle_recorder_event(ev),
                _ = tick.tick() => self.handle_timers(),
            }
        }
        for w in &mut self.workers {
            w.shutdown();
        }
    }

    fn handle_timers(&mut self) {
        self.release_holds();
        self.reap_forks();
        let now = self.now();
        if self.ng.poll_timeout().is_some_and(|t| t <= now) {
            let cmds = self.ng.handle_timeout(now, wall_now(), &mut self.ports);
            self.end_reason = "hangup";
            let _ = self.apply(cmds);
        }
    }

    fn handle_worker_event(&mut self, ev: WorkerEvent) {
        #[allow(clippy::match_wildcard_for_single_variants)]
        match ev {
            WorkerEvent::MediaTimeout { call, stats, .. } => {
                let Some(call_id) = self.by_key.get(&call).cloned() else {
                    return;
                };
                info!(call_id, "media timeout: call torn down");
                self.emit(json!({"event": "media.timeout", "call": call_id,
                    "stats": serde_json::to_value(&*stats).unwrap_or(Value::Null)}));

                // The worker has removed the call already: end it here with its statistics.
                self.finish_call(&call_id, "timeout", Some(*stats));
                let cmds = self.ng.sessions.end_call(
                    &call_id,
                    wall_now(),
                    EndReason::Timeout,
                    &mut self.ports,
                );
                let _ = self.apply(cmds);
            }
            WorkerEvent::Analytics {
                call,
                summary,
                last,
                ..
            } => self.on_analytics(call, &summary, last),
            WorkerEvent::RecordingDropped { call, frames, .. } => {
                self.recording_dropped(call, frames);
            }
            WorkerEvent::Media {
                call, leg, event, ..
            } => {
                // `leg` is None for events about no leg (a prompt that ended).
                self.handle_media_event(call, leg, event);
            }
        }
    }

    fn emit(&self, ev: Value) {
        let _ = self.hub.shared.events.send(Arc::new(ev));
    }

    fn global_stats(&self) -> GlobalStats {
        let mut g = GlobalStats::default();
        for w in self.hub.shared.metrics.workers.iter() {
            g.packets += w.tx_packets.load(Ordering::Relaxed);
            g.bytes += w.tx_bytes.load(Ordering::Relaxed);
            g.errors += w
                .drops
                .iter()
                .map(|d| d.load(Ordering::Relaxed))
                .sum::<u64>();
        }
        g
    }

    async fn query_worker(&self, call_id: &str) -> Option<CallStats> {
        let info = self.calls.get(call_id)?;
        let worker = self.workers.get(info.worker)?;
        let (reply, rx) = oneshot::channel();
        worker
            .send(Command::Query {
                call: info.key,
                reply,
            })
            .ok()?;
        tokio::time::timeout(WORKER_ANSWER, rx).await.ok()?.ok()?
    }

    fn stream_stats(&self, call_id: &str, stats: &CallStats) -> HashMap<SocketAddr, StreamStats> {
        let mut out = HashMap::new();
        let Some(info) = self.calls.get(call_id) else {
            return out;
        };
        let now = self.now().0;
        let wall = wall_now().0;
        for leg in &stats.legs {
            let Some(pair) = u16::try_from(leg.key).ok().and_then(|p| info.legs.get(&p)) else {
                continue;
            };
            let last = leg.rtp.last_packet_us.max(leg.rtcp.last_packet_us);
            out.insert(
                advertised_rtp(pair),
                StreamStats {
                    packets: leg.rtp.packets + leg.rtcp.packets,
                    bytes: leg.rtp.bytes + leg.rtcp.bytes,
                    errors: leg.rtp.errors + leg.rtcp.errors,
                    last_packet: last
                        .map(|t| UnixMicros(wall.saturating_sub(now.saturating_sub(t)))),
                    learned: leg.remote_rtp,
                },
            );
        }
        out
    }

    async fn handle_ng(&mut self, data: &[u8]) -> Option<Vec<u8>> {
        let started = Instant::now();
        // Peek at the command: requests that report statistics need the call's counters
        // from its worker first.
        let peek = switchboard_proto::ng::parse_datagram(data).ok();
        let command = peek
            .as_ref()
            .and_then(|m| m.dict.get("command"))
            .and_then(|v| v.as_str())
            .unwrap_or("invalid")
            .to_owned();
        let call_id = peek
            .as_ref()
            .and_then(|m| m.dict.get("call-id").or_else(|| m.dict.get("call id")))
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        if let (Some(m), Some(id)) = (&peek, &call_id) {
            let new_call = !self.calls.contains_key(id) && !self.ng.sessions.contains(id);
            if command == "offer" && new_call && self.hub.is_draining() {
                let reply = switchboard_proto::ng::encode_reply(
                    &m.cookie,
                    m.encoding,
                    &switchboard_proto::ng::error_reply(
                        "Switchboard is shutting down: no new calls",
                    ),
                );
                self.record_ng(&command, "error", started);
                return Some(reply);
            }
        }
        let mut stats = EngineStats {
            streams: HashMap::new(),
            global: self.global_stats(),
        };
        if matches!(command.as_str(), "query" | "delete") {
            if let Some(id) = &call_id {
                if let Some(s) = self.query_worker(id).await {
                    stats.streams = self.stream_stats(id, &s);
                }
                stats.streams.extend(self.moved_stream_stats(id).await);
            }
        }
        let now = self.now();
        let outcome = self
            .ng
            .handle_datagram(now, wall_now(), data, &mut self.ports, &stats);
        let Some(outcome) = outcome else {
            self.record_ng(&command, "dropped", started);
            return None;
        };
        let mut reply = outcome.reply;
        let mut commands = outcome.commands;
        // `play media`: the prompt is loaded first; the reply carries its duration, or
        // becomes an error when it cannot be played.
        let plays: Vec<MediaCommand> = {
            let (p, rest): (Vec<_>, Vec<_>) = commands
                .into_iter()
                .partition(|c| matches!(c, MediaCommand::PlayMedia { .. }));
            commands = rest;
            p
        };
        self.end_reason = "hangup";
        let mut touched = self.apply(commands);
        for play in plays {
            if let MediaCommand::PlayMedia {
                call_id,
                tags,
                source,
                repeat,
            } = play
            {
                let res = self.ng_play(&call_id, &tags, source, repeat).await;
                if let Some(w) = self.calls.get(&call_id).map(|c| c.worker) {
                    touched.push(w);
                }
                reply = self.rewrite_play_reply(&reply, res);
            }
        }
        let result = ng::reply_result(&reply);
        if matches!(command.as_str(), "offer" | "answer") && result == "ok" {
            if let Some(id) = &call_id {
                if command == "answer" {
                    self.note_answered(id);
                }
                self.note_ng_codecs(id);
            }
        }
        if command == "delete" && result == "ok" {
            // The parties hung up: recordings end now, not after the delete delay.
            if let Some(id) = &call_id {
                touched.extend(self.stop_recordings(id));
            }
        }
        // Reply only once the media plane has the new state, so media sent by a party right
        // after it sees the reply finds its destination.
        self.barrier(&touched).await;
        self.record_ng(&command, result, started);
        Some(reply)
    }

    /// The NG reply of `play media`, with the prompt's `duration` (ms), or the error.
    fn rewrite_play_reply(&mut self, reply: &[u8], res: Result<Option<u64>, String>) -> Vec<u8> {
        use switchboard_proto::bencode::Value as B;
        let Ok(msg) = switchboard_proto::ng::parse_datagram(reply) else {
            return reply.to_vec();
        };
        let new = match res {
            Err(reason) => switchboard_proto::ng::error_reply(&format!(
                "Failed to start media playback: {reason}"
            )),
            Ok(duration) => {
                let B::Dict(mut items) = msg.dict else {
                    return reply.to_vec();
                };
                if let Some(d) = duration {
                    let at = items
                        .iter()
                        .position(|(k, _)| k == b"result")
                        .unwrap_or(items.len());
                    items.insert(at, (b"duration".to_vec(), B::from(d)));
                }
                B::Dict(items)
            }
        };
        let out = switchboard_proto::ng::encode_reply(&msg.cookie, msg.encoding, &new);
        let now = self.now();
        self.ng.cache.insert(&msg.cookie, out.clone(), now);
        out
    }

    fn record_ng(&self, command: &str, result: &'static str, started: Instant) {
        self.hub
            .shared
            .metrics
            .control
            .record("ng", command, result, started.elapsed());
    }

    /// Waits until each worker in `workers` has applied every command sent so far.
    async fn barrier(&self, workers: &[usize]) {
        for &w in workers {
            let Some(h) = self.workers.get(w) else {
                continue;
            };
            let (reply, rx) = oneshot::channel();
            if h.send(Command::Barrier { reply }).is_ok() {
                let _ = tokio::time::timeout(WORKER_ANSWER, rx).await;
            }
        }
    }

    /// Applies media commands from the NG state to the workers; returns the workers touched.
    fn apply(&mut self, cmds: Vec<MediaCommand>) -> Vec<usize> {
        let mut touched = Vec::new();
        for cmd in cmds {
            let w = match &cmd {
                MediaCommand::SetRelay(spec) => Some(spec.sides[0].local.worker),
                MediaCommand::RemoveRelay { call_id, .. }
                | MediaCommand::DeleteCall { call_id, .. }
                | MediaCommand::Recording { call_id, .. }
                | MediaCommand::Subscribe { call_id, .. }
                | MediaCommand::SubscribeAnswer { call_id, .. }
                | MediaCommand::Unsubscribe { call_id, .. }
                | MediaCommand::Connect { call_id, .. }
                | MediaCommand::StopMedia { call_id, .. }
                | MediaCommand::PlayDtmf { call_id, .. }
                | MediaCommand::BlockDtmf { call_id, .. } => {
                    self.calls.get(call_id).map(|c| c.worker)
                }
                _ => None,
            };
            if let Some(w) = w {
                if !touched.contains(&w) {
                    touched.push(w);
                }
            }
            if let MediaCommand::SetRelay(spec) = &cmd {
                for h in self.hosts_of(&spec.call_id) {
                    if !touched.contains(&h) {
                        touched.push(h);
                    }
                }
            }
            match cmd {
                MediaCommand::SetRelay(spec) => self.set_relay(&spec),
                MediaCommand::RemoveRelay { call_id, pairs, .. } => {
                    self.remove_legs(&call_id, &pairs);
                }
                MediaCommand::DeleteCall { call_id, .. } => {
                    let reason = self.end_reason;
                    self.finish_call(&call_id, reason, None);
                }
                MediaCommand::Recording {
                    call_id,
                    action,
                    metadata,
                } => self.ng_recording(&call_id, action, metadata.as_deref()),
                MediaCommand::Subscribe {
                    call_id,
                    subscriber,
                    sources,
                    codecs,
                } => self.ng_subscribe(&call_id, &subscriber, &sources, &codecs),
                MediaCommand::SubscribeAnswer {
                    call_id,
                    subscriber,
                    codecs,
                } => self.ng_subscribe_answer(&call_id, &subscriber, &codecs),
                MediaCommand::Unsubscribe {
                    call_id,
                    tag,
                    pairs,
                } => self.ng_unsubscribe(&call_id, &tag, &pairs),
                MediaCommand::Connect {
                    call_id,
                    from,
                    to,
                    bidirectional,
                } => self.ng_connect(&call_id, &from, &to, bidirectional),
                MediaCommand::StopMedia { call_id, tags } => {
                    let legs = self.ng_legs(&call_id, &tags);
                    for leg in legs {
                        self.ng_media_op(&call_id, MediaOp::StopPlay { id: None, leg });
                    }
                }
                MediaCommand::PlayDtmf {
                    call_id,
                    tags,
                    digit,
                    duration_ms,
                    volume_dbm0,
                } => {
                    // The selected parties generate the digit: it goes to whoever hears
                    // them.
                    let legs = self.dtmf_listeners(&call_id, &tags);
                    if self.hold_mixing(&call_id, 1, duration_ms).is_err() {
                        warn!(call_id, "play DTMF: the call cannot mix");
                    }
                    for leg in legs {
                        self.ng_media_op(
                            &call_id,
                            MediaOp::SendDtmf {
                                leg,
                                digits: digit.to_string(),
                                duration_ms,
                                volume_dbm0,
                            },
                        );
                    }
                }
                MediaCommand::BlockDtmf {
                    call_id,
                    tags,
                    blocked,
                } => {
                    let legs = self.ng_legs(&call_id, &tags);
                    for leg in legs.into_iter().flatten() {
                        self.ng_media_op(&call_id, MediaOp::BlockDtmf { leg, blocked });
                    }
                }
                _ => {}
            }
        }
        touched
    }

    /// Ends a call known to the control task: closes it on its worker (unless the worker
    /// already did and handed over `stats`), gives back the native legs' ports, and emits
    /// `call.deleted` and `call.ended`. Does nothing for an unknown call.
    fn finish_call(&mut self, call_id: &str, reason: &'static str, stats: Option<CallStats>) {
        let ended_ms = wall_now().0 / 1000;
        if let Some(created) = self.empty_calls.remove(call_id) {
            self.emit(json!({"event": "call.deleted", "call": call_id}));
            self.emit(
                json!({"event": "call.ended", "call": call_id, "reason": reason,
                "created_ms": created, "ended_ms": ended_ms, "legs": [], "recordings": []}),
            );
            return;
        }
        let foreign = self.end_moves(call_id, reason);
        let Some(info) = self.calls.remove(call_id) else {
            return;
        };
        self.by_key.remove(&info.key);
        taps::end_forks(info.forks);
        for p in info.native_legs.values() {
            if !foreign.contains(&p.rtp_port) {
                self.ports.release_pair(call_id, p);
            }
        }
        let recordings: Vec<String> = self.recording.as_ref().map_or_else(Vec::new, |m| {
            m.recordings_of(call_id)
                .iter()
                .map(ToString::to_string)
                .collect()
        });
        self.emit(json!({"event": "call.deleted", "call": call_id}));
        let ng_codecs = info.ng_codecs.clone();
        let skeleton = CallEnd {
            call: call_id.to_owned(),
            reason,
            created_ms: info.created_ms,
            ended_ms,
            legs: info
                .topo
                .legs()
                .map(|l| LegEnd {
                    key: l.key,
                    name: l.name.clone(),
                    tag: info.tags.contains(&l.name).then(|| l.name.clone()),
                    codec: l
                        .media
                        .as_ref()
                        .map(|m| m.send.kind.encoding_name().to_owned())
                        .or_else(|| ng_codecs.get(&l.key).cloned()),
                })
                .collect(),
            ng_codecs,
            recordings,
            analytics: info.last_analytics.clone(),
            answered_ms: info.answered_ms,
        };
        match stats {
            Some(s) => self.emit(skeleton.event(Some(&s))),
            None => {
                let (reply, rx) = oneshot::channel();
                let sent = self.workers.get(info.worker).is_some_and(|w| {
                    w.send(Command::DeleteCall {
                        call: info.key,
                        reply: Some(reply),
                    })
                    .is_ok()
                });
                if sent {
                    let hub = self.hub.clone();
                    tokio::spawn(async move {
                        let stats = tokio::time::timeout(WORKER_ANSWER, rx)
                            .await
                            .ok()
                            .and_then(Result::ok)
                            .flatten();
                        hub.publish(skeleton.event(stats.as_ref()));
                    });
                } else {
                    self.emit(skeleton.event(None));
                }
            }
        }
    }

    fn remove_legs(&mut self, call_id: &str, pairs: &[LocalPair]) {
        // Legs are removed with their call on the worker; a single media section going away
        // keeps its sockets until the call ends (its relay gets no more commands), unless
        // the call mixes: then the leg leaves the mixer.
        for p in pairs {
            if self
                .moves
                .get(p.rtp_port)
                .is_some_and(|m| m.origin == call_id)
            {
                self.remove_moved(p.rtp_port);
            }
        }
        let Some(info) = self.calls.get_mut(call_id) else {
            return;
        };
        let mut ops = Vec::new();
        for p in pairs {
            info.legs.remove(&p.rtp_port);
            let key = LegKey::from(p.rtp_port);
            if info.topo.leg(key).is_some() {
                let mixing = info.topo.is_mixing();
                info.topo.remove_leg(key);
                if mixing {
                    ops.push(MediaOp::RemoveLeg { leg: key });
                }
            }
        }
        let changes = info.topo.plan().unwrap_or_default();
        let (worker, key) = (info.worker, info.key);
        self.send_ops(worker, key, ops);
        let _ = self.send_changes(worker, key, changes, false);
    }

    fn leg_config(side: &StreamSide) -> LegConfig {
        let mut c = LegConfig::new(advertised_rtp(&side.local));
        c.expected_rtp = side.remote.map(|r| r.rtp);
        c.expected_rtcp = side.remote.map(|r| r.rtcp);
        c.rtcp_mux = side.rtcp_mux;
        c.strict_source = side.strict_source;
        c.latching = if side.learn_address {
            Latching::Symmetric
        } else {
            Latching::Asymmetric
        };
        c
    }

    /// Creates the call on `worker` for the control task (not on the NG side).
    fn create_call(&mut self, call_id: &str, worker: usize) -> Option<&mut CallInfo> {
        if !self.calls.contains_key(call_id) {
            let handle = self.workers.get(worker)?;
            let key = self.next_key;
            self.next_key += 1;
            if handle
                .send(Command::CreateCall {
                    call: key,
                    timeout: self.media_timeout,
                })
                .is_err()
            {
                warn!(worker, "media worker busy: call not created");
                return None;
            }
            let announced = self.empty_calls.contains_key(call_id);
            let created = self
                .empty_calls
                .remove(call_id)
                .unwrap_or_else(|| wall_now().0 / 1000);
            self.calls.insert(
                call_id.to_owned(),
                CallInfo::new(key, worker, self.media.max_members, created),
            );
            self.by_key.insert(key, call_id.to_owned());
            if !announced {
                self.emit(json!({"event": "call.created", "call": call_id}));
            }
        }
        self.calls.get_mut(call_id)
    }

    /// Adds a leg's bound sockets to the call on its worker.
    fn add_worker_leg(&mut self, call_id: &str, pair: &LocalPair, config: LegConfig) -> bool {
        let Some(bound) = self.ports.take_sockets(pair) else {
            return false;
        };
        let Some(info) = self.calls.get_mut(call_id) else {
            return false;
        };
        let Some(handle) = self.workers.get(info.worker) else {
            return false;
        };
        let sent = handle.send(Command::AddLeg {
            call: info.key,
            leg: LegKey::from(pair.rtp_port),
            config,
            rtp: bound.rtp,
            rtcp: bound.rtcp,
        });
        if sent.is_ok() {
            info.legs.insert(pair.rtp_port, *pair);
        }
        sent.is_ok()
    }

    fn set_relay(&mut self, spec: &RelaySpec) {
        if self.redirect_relay(spec) {
            return;
        }
        let worker = spec.sides[0].local.worker;
        if self.workers.get(worker).is_none() {
            warn!(worker, "media command for an unknown worker");
            return;
        }
        if self.create_call(&spec.call_id, worker).is_none() {
            return;
        }
        let Some(info) = self.calls.get_mut(&spec.call_id) else {
            return;
        };
        let key = info.key;
        let mut added = false;
        let mut new_sides = Vec::new();
        for side in &spec.sides {
            let leg = LegKey::from(side.local.rtp_port);
            let config = Self::leg_config(side);
            if !side.tag.is_empty() {
                info.tags.insert(side.tag.clone());
            }
            if info.legs.contains_key(&side.local.rtp_port) {
                if let Some(h) = self.workers.get(worker) {
                    let _ = h.send(Command::UpdateLeg {
                        call: key,
                        leg,
                        config,
                    });
                }
            } else {
                new_sides.push((side.local, config));
            }
        }
        for (pair, config) in new_sides {
            added |= self.add_worker_leg(&spec.call_id, &pair, config);
        }
        let a = LegKey::from(spec.sides[0].local.rtp_port);
        let b = LegKey::from(spec.sides[1].local.rtp_port);
        let Some(info) = self.calls.get_mut(&spec.call_id) else {
            return;
        };
        let in_topology = spec.kind == RelayKind::Rtp
            && *info.topo_section.get_or_insert(spec.media_index) == spec.media_index;
        if !in_topology {
            if added {
                self.send_ops_connect(worker, key, a, b);
            }
            return;
        }
        let mut topo = info.topo.clone();
        for (i, side) in spec.sides.iter().enumerate() {
            let k = LegKey::from(side.local.rtp_port);
            let media = spec
                .transcode
                .as_ref()
                .and_then(|t| crate::media::config_from_side(&t[i]));
            let name = if side.tag.is_empty() || topo.key_of(&side.tag).is_some_and(|o| o != k) {
                format!("port:{}", side.local.rtp_port)
            } else {
                side.tag.clone()
            };
            match topo.leg_mut(k) {
                Some(l) => {
                    if l.name.starts_with("port:") && !name.starts_with("port:") {
                        l.name = name;
                    }
                    if media.is_some() {
                        l.media = media;
                    }
                }
                None => {
                    let _ = topo.add_leg(Leg::new(name, k, media));
                }
            }
        }
        topo.link(a, b);
        topo.set_transcode(spec.transcode.is_some());
        match self.plan_ng(&spec.call_id, topo) {
            Ok(changes) => {
                let _ = self.send_changes(worker, key, changes, false);
            }
            Err(e) => {
                warn!(call_id = spec.call_id, error = %e, "relaying the call instead");
                if added {
                    self.send_ops_connect(worker, key, a, b);
                }
            }
        }
    }

    fn send_ops_connect(&self, worker: usize, call: CallKey, a: LegKey, b: LegKey) {
        if let Some(h) = self.workers.get(worker) {
            let _ = h.send(Command::Connect { call, a, b });
        }
    }

    /// Plans a changed topology of an NG call: legs whose codecs the mixer needs are taken
    /// from the NG state. On success the topology is the call's.
    fn plan_ng(&mut self, call_id: &str, mut topo: Topology) -> Result<Vec<Change>, TopologyError> {
        let changes = match topo.plan() {
            Ok(c) => c,
            Err(TopologyError::CodecsUnknown(_)) => {
                self.fill_ng_codecs(call_id, &mut topo);
                topo.plan()?
            }
            Err(e) => return Err(e),
        };
        if let Some(info) = self.calls.get_mut(call_id) {
            info.topo = topo;
        }
        Ok(changes)
    }

    /// Fills the codecs of NG legs from their SDP: each party may send what it offered or
    /// answered, and is sent the first codec it shares with the other party.
    fn fill_ng_codecs(&self, call_id: &str, topo: &mut Topology) {
        let legs = self.ng.sessions.recording_legs(call_id).unwrap_or_default();
        for l in &legs {
            let key = LegKey::from(l.local.rtp_port);
            let Some(leg) = topo.leg_mut(key) else {
                continue;
            };
            if leg.media.is_some() {
                continue;
            }
            let common = l.codecs.iter().find(|c| {
                !c.is_supplemental()
                    && legs.iter().any(|o| {
                        o.local.rtp_port != l.local.rtp_port
                            && o.codecs.iter().any(|x| {
                                x.name.eq_ignore_ascii_case(&c.name) && x.clock_rate == c.clock_rate
                            })
                    })
            });
            leg.media = crate::media::config_from_sdp(&l.codecs, common, None);
        }
    }

    /// Converts planned changes into worker commands and sends them; with `wait`, returns
    /// the receivers of the worker's answers.
    fn send_changes(
        &self,
        worker: usize,
        call: CallKey,
        changes: Vec<Change>,
        wait: bool,
    ) -> Vec<oneshot::Receiver<Result<(), String>>> {
        let mut rxs = Vec::new();
        let Some(h) = self.workers.get(worker) else {
            return rxs;
        };
        for c in changes {
            if let Change::Connect { a, b } = c {
                let _ = h.send(Command::Connect { call, a, b });
                continue;
            }
            let Some(op) = c.into_media_op() else {
                continue;
            };
            let reply = if wait {
                let (tx, rx) = oneshot::channel();
                rxs.push(rx);
                Some(tx)
            } else {
                None
            };
            if h.send(Command::Media { call, op, reply }).is_err() {
                warn!(worker, "media worker busy: media change dropped");
            }
        }
        rxs
    }

    /// Sends media operations without waiting.
    fn send_ops(&self, worker: usize, call: CallKey, ops: Vec<MediaOp>) {
        let Some(h) = self.workers.get(worker) else {
            return;
        };
        for op in ops {
            let _ = h.send(Command::Media {
                call,
                op,
                reply: None,
            });
        }
    }

    /// Sends media operations and waits for the worker's answers.
    async fn send_ops_wait(
        &self,
        worker: usize,
        call: CallKey,
        ops: Vec<MediaOp>,
    ) -> Result<(), OpError> {
        let Some(h) = self.workers.get(worker) else {
            return Err(unavailable());
        };
        let mut rxs = Vec::new();
        for op in ops {
            let (tx, rx) = oneshot::channel();
            h.send(Command::Media {
                call,
                op,
                reply: Some(tx),
            })
            .map_err(|e| OpError::new(ErrorCode::Unavailable, e.to_string()))?;
            rxs.push(rx);
        }
        wait_answers(rxs).await
    }

    fn ng_media_op(&self, call_id: &str, op: MediaOp) {
        if let Some(info) = self.calls.get(call_id) {
            self.send_ops(info.worker, info.key, vec![op]);
        }
    }

    /// The legs of an NG call named by tags: `[None]` (the whole call) for no tags.
    fn ng_legs(&self, call_id: &str, tags: &[String]) -> Vec<Option<LegKey>> {
        let Some(info) = self.calls.get(call_id) else {
            return Vec::new();
        };
        if tags.is_empty() {
            return vec![None];
        }
        tags.iter()
            .filter_map(|t| info.topo.key_of(t))
            .map(Some)
            .collect()
    }

    /// The legs that hear any of the parties `tags` (every party for no tags).
    fn dtmf_listeners(&self, call_id: &str, tags: &[String]) -> Vec<LegKey> {
        let Some(info) = self.calls.get(call_id) else {
            return Vec::new();
        };
        let sources: Vec<LegKey> = if tags.is_empty() {
            info.topo.legs().map(|l| l.key).collect()
        } else {
            tags.iter().filter_map(|t| info.topo.key_of(t)).collect()
        };
        info.topo
            .matrix()
            .into_iter()
            .filter(|(_, row)| sources.iter().any(|s| row.contains(s)))
            .map(|(k, _)| k)
            .collect()
    }

    /// Applies a changed topology to an NG call, logging what cannot be done.
    fn commit_ng(&mut self, call_id: &str, topo: Topology) {
        let Some((worker, key)) = self.calls.get(call_id).map(|c| (c.worker, c.key)) else {
            return;
        };
        match self.plan_ng(call_id, topo) {
            Ok(changes) => {
                let _ = self.send_changes(worker, key, changes, false);
            }
            Err(e) => warn!(call_id, error = %e, "NG media request not applied"),
        }
    }

    fn ng_subscribe(
        &mut self,
        call_id: &str,
        sub: &StreamSide,
        sources: &[String],
        codecs: &switchboard_proto::session::SideCodecs,
    ) {
        if !self.calls.contains_key(call_id) {
            warn!(call_id, "subscription to an unknown call");
            return;
        }
        if !self.add_worker_leg(call_id, &sub.local, Self::leg_config(sub)) {
            return;
        }
        let Some(info) = self.calls.get_mut(call_id) else {
            return;
        };
        if !sub.tag.is_empty() {
            info.tags.insert(sub.tag.clone());
        }
        let mut topo = info.topo.clone();
        let k = LegKey::from(sub.local.rtp_port);
        let name = if sub.tag.is_empty() {
            format!("port:{}", sub.local.rtp_port)
        } else {
            sub.tag.clone()
        };
        if topo
            .add_leg(Leg::new(name, k, crate::media::config_from_side(codecs)))
            .is_err()
        {
            return;
        }
        let row = sources.iter().filter_map(|t| topo.key_of(t)).collect();
        let _ = topo.set_row(k, Some(row));
        self.commit_ng(call_id, topo);
    }

    fn ng_subscribe_answer(
        &mut self,
        call_id: &str,
        sub: &StreamSide,
        codecs: &switchboard_proto::session::SideCodecs,
    ) {
        let Some(info) = self.calls.get_mut(call_id) else {
            return;
        };
        if let Some(h) = self.workers.get(info.worker) {
            let _ = h.send(Command::UpdateLeg {
                call: info.key,
                leg: LegKey::from(sub.local.rtp_port),
                config: Self::leg_config(sub),
            });
        }
        let mut topo = info.topo.clone();
        if let Some(l) = topo.leg_mut(LegKey::from(sub.local.rtp_port)) {
            if let Some(m) = crate::media::config_from_side(codecs) {
                l.media = Some(m);
            }
        }
        self.commit_ng(call_id, topo);
    }

    fn ng_unsubscribe(&mut self, call_id: &str, tag: &str, pairs: &[LocalPair]) {
        let Some(info) = self.calls.get_mut(call_id) else {
            return;
        };
        let mut ops = Vec::new();
        for p in pairs {
            info.legs.remove(&p.rtp_port);
            let k = LegKey::from(p.rtp_port);
            if info.topo.remove_leg(k).is_some() {
                ops.push(MediaOp::RemoveLeg { leg: k });
            }
        }
        if let Some(k) = info.topo.key_of(tag) {
            info.topo.remove_leg(k);
            ops.push(MediaOp::RemoveLeg { leg: k });
        }
        let changes = info.topo.plan().unwrap_or_default();
        let (worker, key) = (info.worker, info.key);
        self.send_ops(worker, key, ops);
        let _ = self.send_changes(worker, key, changes, false);
    }

    fn ng_connect(&mut self, call_id: &str, from: &str, to: &str, bidirectional: bool) {
        let Some(info) = self.calls.get(call_id) else {
            return;
        };
        let mut topo = info.topo.clone();
        let (Some(f), Some(t)) = (topo.key_of(from), topo.key_of(to)) else {
            warn!(call_id, from, to, "connect: unknown tag");
            return;
        };
        topo.link_one_way(t, f);
        if bidirectional {
            topo.link_one_way(f, t);
        }
        // Connecting parties makes the call a conference of its own: mix.
        topo.set_transcode(true);
        self.commit_ng(call_id, topo);
    }

    /// `play media` of an NG call: `Ok(duration ms)` or the reason it cannot play.
    async fn ng_play(
        &mut self,
        call_id: &str,
        tags: &[String],
        source: PromptSource,
        repeat: u32,
    ) -> Result<Option<u64>, String> {
        if !self.calls.contains_key(call_id) {
            return Err("unknown call".into());
        }
        let prompt = self.hub.load_prompt(source).await.map_err(|e| e.message)?;
        let targets = self.ng_legs(call_id, tags);
        if targets.is_empty() {
            return Err("no such party".into());
        }
        let repeat = repeat.max(1);
        for leg in targets {
            self.start_play(
                call_id,
                leg,
                PlayPlan::Prompt(Arc::clone(&prompt)),
                repeat,
                false,
                false,
            )
            .await
            .map_err(|e| e.message)?;
        }
        Ok(Some(prompt.duration_ms.saturating_mul(u64::from(repeat))))
    }

    async fn handle_native(&mut self, op: NativeOp) -> Result<Value, OpError> {
        match op {
            NativeOp::Stats => {
                let m = &self.hub.shared.metrics;
                let sum = |f: &dyn Fn(&crate::metrics::WorkerMetrics) -> u64| -> u64 {
                    m.workers.iter().map(|w| f(w)).sum()
                };
                Ok(json!({
                    "calls": self.calls.len(),
                    "legs": sum(&|w| w.legs_active.load(Ordering::Relaxed)),
                    "workers": self.workers.iter().map(|w| json!({"index": w.index, "driver": w.driver.as_str()})).collect::<Vec<_>>(),
                    "packets_received": sum(&|w| w.rx_packets.load(Ordering::Relaxed)),
                    "packets_relayed": sum(&|w| w.tx_packets.load(Ordering::Relaxed)),
                    "bytes_relayed": sum(&|w| w.tx_bytes.load(Ordering::Relaxed)),
                    "packets_dropped": sum(&|w| w.drops.iter().map(|d| d.load(Ordering::Relaxed)).sum()),
                    "draining": self.hub.is_draining(),
                }))
            }
            NativeOp::CallList => {
                let mut calls: Vec<Value> = self
                    .calls
                    .iter()
                    .map(|(id, c)| {
                        let mut tags: Vec<&String> = c.tags.iter().collect();
                        tags.sort();
                        json!({"call": id, "worker": c.worker, "legs": c.legs.len(), "tags": tags})
                    })
                    .collect();
                calls.extend(
                    self.empty_calls.keys().map(
                        |id| json!({"call": id, "worker": Value::Null, "legs": 0, "tags": []}),
                    ),
                );
                calls.sort_by(|a, b| a["call"].as_str().cmp(&b["call"].as_str()));
                Ok(json!({"calls": calls}))
            }
            NativeOp::CallGet(id) => {
                if self.empty_calls.contains_key(&id) {
                    return Ok(json!({"call": id, "worker": Value::Null, "tags": [],
                        "stats": Value::Null, "media": {"mixing": false, "legs": []}}));
                }
                let Some(info) = self.calls.get(&id) else {
                    return Err(OpError::new(ErrorCode::NotFound, format!("no call `{id}`")));
                };
                let worker = info.worker;
                let mut tags: Vec<String> = info.tags.iter().cloned().collect();
                tags.sort();
                let media = media_json(&info.topo);
                let stats = self.query_worker(&id).await;
                Ok(
                    json!({"call": id, "worker": worker, "tags": tags, "media": media,
                    "stats": stats.map_or(Value::Null, |s| serde_json::to_value(s).unwrap_or(Value::Null))}),
                )
            }
            NativeOp::CallDelete(id) => {
                if !self.calls.contains_key(&id)
                    && !self.ng.sessions.contains(&id)
                    && !self.empty_calls.contains_key(&id)
                {
                    return Err(OpError::new(ErrorCode::NotFound, format!("no call `{id}`")));
                }
                let stats = self.query_worker(&id).await;
                let cmds =
                    self.ng
                        .sessions
                        .end_call(&id, wall_now(), EndReason::Forced, &mut self.ports);
                self.end_reason = "deleted";
                let _ = self.apply(cmds);
                self.finish_call(&id, "deleted", None);
                Ok(json!({"call": id,
                    "stats": stats.map_or(Value::Null, |s| serde_json::to_value(s).unwrap_or(Value::Null))}))
            }
            NativeOp::Record(r) => self.handle_record(r).await,
            NativeOp::Media(req, prompt) => self.handle_media(*req, prompt).await,
            NativeOp::Bridge(req) => self.bridge(req).await,
            NativeOp::Unbridge { call, leg } => self.unbridge(&call, &leg).await,
            NativeOp::EndAll => {
                let ids: Vec<String> = self
                    .calls
                    .keys()
                    .chain(self.empty_calls.keys())
                    .cloned()
                    .collect();
                let mut waits = Vec::new();
                for id in &ids {
                    let cmds = self.ng.sessions.end_call(
                        id,
                        wall_now(),
                        EndReason::Forced,
                        &mut self.ports,
                    );
                    self.end_reason = "shutdown";
                    let _ = self.apply(cmds);
                    if let Some(w) = self.calls.get(id).map(|c| c.worker) {
                        waits.push(w);
                    }
                    self.finish_call(id, "shutdown", None);
                }
                waits.sort_unstable();
                waits.dedup();
                self.barrier(&waits).await;
                // The workers have answered: let the `call.ended` publishers run.
                for _ in 0..8 {
                    tokio::task::yield_now().await;
                }
                Ok(json!({"calls": ids.len()}))
            }
        }
    }
}

/// The next recorder event, or never when recording does not run.
async fn recv_recording(
    rx: &mut Option<mpsc::Receiver<crate::record::RecorderEvent>>,
) -> Option<crate::record::RecorderEvent> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Recording: `record.*`, NG recording commands, events from the recorder.
impl Control {
    fn recording_unavailable() -> OpError {
        OpError::new(ErrorCode::Unavailable, "recording is not running")
    }

    fn handle_recorder_event(&mut self, ev: crate::record::RecorderEvent) {
        if let Some(m) = &mut self.recording {
            m.on_event(&ev);
        }
        self.emit(ev.json);
    }

    fn recording_dropped(&mut self, call: CallKey, frames: u64) {
        let Some(call_id) = self.by_key.get(&call).cloned() else {
            return;
        };
        let ids: Vec<String> = self.recording.as_ref().map_or_else(Vec::new, |m| {
            m.recordings_of(&call_id)
                .into_iter()
                .map(|i| i.to_string())
                .collect()
        });
        warn!(
            call_id,
            frames, "recording tap ring full: recording data dropped"
        );
        self.emit(json!({"event": "recording.dropped", "call": call_id,
            "recordings": ids, "frames": frames}));
    }

    /// Starts recording a call known to the NG state.
    fn start_recording(
        &mut self,
        call_id: &str,
        req: crate::record::manager::StartRequest,
    ) -> Result<Vec<crate::record::RecordingId>, OpError> {
        let Some(info) = self.calls.get(call_id) else {
            return Err(OpError::new(
                ErrorCode::NotFound,
                format!("no call `{call_id}`"),
            ));
        };
        let legs: Vec<_> = self
            .ng
            .sessions
            .recording_legs(call_id)
            .unwrap_or_default()
            .into_iter()
            .filter(|l| info.legs.contains_key(&l.local.rtp_port))
            .collect();
        let call = crate::record::manager::CallRef {
            call_id,
            key: info.key,
            worker: info.worker,
        };
        let m = self
            .recording
            .as_mut()
            .ok_or_else(Self::recording_unavailable)?;
        m.start(call, &legs, req, &self.workers)
    }

    /// Stops every recording of a call; returns the workers told.
    fn stop_recordings(&mut self, call_id: &str) -> Vec<usize> {
        let Some(m) = &mut self.recording else {
            return Vec::new();
        };
        let target = crate::record::manager::Target::Call(call_id.to_owned());
        m.control(&target, crate::record::manager::Op::Stop, &self.workers)
            .map(|(_, w)| w)
            .unwrap_or_default()
    }

    fn ng_recording(
        &mut self,
        call_id: &str,
        action: switchboard_proto::session::RecordingAction,
        metadata: Option<&str>,
    ) {
        use crate::record::manager::{Op, StartRequest, Target, parse_ng_metadata};
        use switchboard_proto::session::RecordingAction;
        let Some(m) = &mut self.recording else {
            warn!(
                call_id,
                "NG recording request while recording is not running"
            );
            return;
        };
        let extra = metadata.map(parse_ng_metadata).unwrap_or_default();
        let (any, paused) = m.state_of(call_id);
        let target = Target::Call(call_id.to_owned());
        let result = match action {
            RecordingAction::Start if paused => {
                m.update_metadata(call_id, &extra);
                m.control(&target, Op::Resume, &self.workers).map(|_| ())
            }
            RecordingAction::Start if any => {
                m.update_metadata(call_id, &extra);
                Ok(())
            }
            RecordingAction::Start => self
                .start_recording(
                    call_id,
                    StartRequest {
                        metadata: extra,
                        ..StartRequest::default()
                    },
                )
                .map(|_| ()),
            RecordingAction::Stop if any => m.control(&target, Op::Stop, &self.workers).map(|_| ()),
            RecordingAction::Pause if any && !paused => {
                m.control(&target, Op::Pause, &self.workers).map(|_| ())
            }
            RecordingAction::Metadata => {
                m.update_metadata(call_id, &extra);
                Ok(())
            }
            _ => Ok(()),
        };
        if let Err(e) = result {
            warn!(call_id, error = e.message, "NG recording request failed");
            self.emit(json!({"event": "recording.failed", "call": call_id,
                "error": e.message}));
        }
    }

    async fn handle_record(
        &mut self,
        r: crate::record::manager::NativeRecord,
    ) -> Result<Value, OpError> {
        use crate::record::manager::{NativeRecord, Op};
        let (target, op) = match r {
            NativeRecord::Start { call, request } => {
                if !self.calls.contains_key(&call) {
                    return Err(OpError::new(
                        ErrorCode::NotFound,
                        format!("no call `{call}`"),
                    ));
                }
                let ids = self.start_recording(&call, *request)?;
                if let Some(w) = self.calls.get(&call).map(|c| c.worker) {
                    self.barrier(&[w]).await;
                }
                let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
                return Ok(json!({"recording": ids.first(), "recordings": ids, "call": call}));
            }
            NativeRecord::Pause(t) => (t, Op::Pause),
            NativeRecord::Resume(t) => (t, Op::Resume),
            NativeRecord::Stop(t) => (t, Op::Stop),
        };
        let m = self
            .recording
            .as_mut()
            .ok_or_else(Self::recording_unavailable)?;
        let (ids, workers) = m.control(&target, op, &self.workers)?;
        // Reply once the workers have placed the marks: the caller's clock and the
        // recording's timeline agree to within a round trip.
        self.barrier(&workers).await;
        let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
        Ok(json!({"recordings": ids}))
    }
}

/// What a `call.ended` event says, less the statistics that come from the worker.
#[derive(Debug)]
struct CallEnd {
    call: String,
    reason: &'static str,
    created_ms: u64,
    ended_ms: u64,
    legs: Vec<LegEnd>,
    recordings: Vec<String>,
    /// The last analytics summary the control task saw.
    analytics: Option<Value>,
    /// Answered, Unix ms.
    answered_ms: Option<u64>,
    /// Codecs of the NG legs, by key (for legs the topology has no codec for).
    ng_codecs: HashMap<LegKey, String>,
}

#[derive(Debug)]
struct LegEnd {
    key: LegKey,
    name: String,
    tag: Option<String>,
    codec: Option<String>,
}

impl CallEnd {
    /// The event, with the worker's final statistics when it gave them.
    fn event(&self, stats: Option<&CallStats>) -> Value {
        let mut legs: Vec<Value> = Vec::new();
        let mut seen = HashSet::new();
        for s in stats.map(|s| s.legs.as_slice()).unwrap_or_default() {
            seen.insert(s.key);
            let named = self.legs.iter().find(|l| l.key == s.key);
            legs.push(json!({
                "leg": named.map_or_else(|| format!("port:{}", s.key), |l| l.name.clone()),
                "tag": named.and_then(|l| l.tag.clone()),
                "codec": named
                    .and_then(|l| l.codec.clone())
                    .or_else(|| self.ng_codecs.get(&s.key).cloned()),
                "local": s.local_rtp.map(|a| a.to_string()),
                "remote": s.remote_rtp.map(|a| a.to_string()),
                "packets": s.rtp.packets,
                "bytes": s.rtp.bytes,
                "lost": s.lost,
                "jitter_ms": s.jitter_ms,
                "mos": s.mos,
            }));
        }
        for l in self.legs.iter().filter(|l| !seen.contains(&l.key)) {
            legs.push(
                json!({"leg": l.name, "tag": l.tag, "codec": l.codec, "local": Value::Null,
                "remote": Value::Null, "packets": 0, "bytes": 0, "lost": 0, "jitter_ms": 0.0,
                "mos": Value::Null}),
            );
        }
        json!({
            "event": "call.ended",
            "call": self.call,
            "reason": self.reason,
            "created_ms": self.created_ms,
            "answered_ms": self.answered_ms,
            "ended_ms": self.ended_ms,
            "duration_ms": self.ended_ms.saturating_sub(self.created_ms),
            "legs": legs,
            "recordings": self.recordings,
            "analytics": stats
                .and_then(|s| s.analytics.as_ref())
                .map(|a| crate::fork::analytics_json(a, &taps::PARTIES))
                .or_else(|| self.analytics.clone()),
        })
    }
}

/// What `play.start` plays, once loaded.
#[derive(Debug, Clone)]
enum PlayPlan {
    Prompt(Arc<Prompt>),
    Tone(switchboard_proto::media::play::ToneSpec),
}

/// Waits for the worker's answers to media operations; the first refusal is the error.
async fn wait_answers(rxs: Vec<oneshot::Receiver<Result<(), String>>>) -> Result<(), OpError> {
    for rx in rxs {
        match tokio::time::timeout(WORKER_ANSWER, rx).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => {
                return Err(OpError::new(
                    ErrorCode::Unavailable,
                    format!("the media worker refused: {e}"),
                ));
            }
            Ok(Err(_)) | Err(_) => {
                return Err(OpError::new(
                    ErrorCode::Unavailable,
                    "the media worker did not answer",
                ));
            }
        }
    }
    Ok(())
}

fn topo_err(e: TopologyError) -> OpError {
    let code = match &e {
        TopologyError::UnknownLeg(_) => ErrorCode::NotFound,
        TopologyError::LegExists(_) | TopologyError::Conflict(_) => ErrorCode::Conflict,
        TopologyError::TooManyMembers(_) => ErrorCode::LimitExceeded,
        TopologyError::CodecsUnknown(_) => ErrorCode::NotSupported,
    };
    OpError::new(code, e.to_string())
}

fn not_found(what: &str, name: &str) -> OpError {
    OpError::new(ErrorCode::NotFound, format!("no {what} `{name}`"))
}

/// The media part of `call.get`.
fn media_json(t: &Topology) -> Value {
    let matrix = t.matrix();
    let name = |k: &LegKey| t.leg(*k).map_or_else(|| k.to_string(), |l| l.name.clone());
    let legs: Vec<Value> = t
        .legs()
        .map(|l| {
            json!({
                "leg": l.name,
                "codec": l.media.as_ref().map(|m| m.send.kind.encoding_name()),
                "conference": l.conference,
                "hears": matrix.get(&l.key).map(|r| r.iter().map(name).collect::<Vec<_>>()),
                "mute": l.mute,
                "deaf": l.deaf,
                "gain_db": l.gain_db,
            })
        })
        .collect();
    let monitors: Vec<Value> = t
        .monitors()
        .iter()
        .map(|m| {
            json!({"supervisor": name(&m.supervisor), "agent": name(&m.agent),
                "customer": m.customer.as_ref().map(name), "mode": m.mode.as_str(),
                "dtmf_control": m.dtmf_control})
        })
        .collect();
    let plays: Vec<Value> = t
        .prompts()
        .map(|(id, leg)| json!({"play": id, "leg": leg.as_ref().map(name)}))
        .collect();
    json!({"mixing": t.is_mixing(), "legs": legs, "monitors": monitors, "plays": plays})
}

/// Whether a topology mixes at 16 kHz (a wideband member).
fn wideband(t: &Topology) -> bool {
    t.legs()
        .filter_map(|l| l.media.as_ref())
        .any(|m| m.send.audio_rate() > 8000)
}

/// Native media operations and media events.
impl Control {
    /// A leg of a call by name; a leg of another call is a conflict.
    fn find_leg(&self, call_id: &str, name: &str) -> Result<LegKey, OpError> {
        let Some(info) = self.calls.get(call_id) else {
            if self.empty_calls.contains_key(call_id) {
                return Err(not_found("leg", name));
            }
            return Err(not_found("call", call_id));
        };
        if let Some(k) = info.topo.key_of(name) {
            return Ok(k);
        }
        if let Some((other, _)) = self
            .calls
            .iter()
            .find(|(id, c)| id.as_str() != call_id && c.topo.key_of(name).is_some())
        {
            return Err(OpError::new(
                ErrorCode::Conflict,
                format!("leg `{name}` belongs to call `{other}`"),
            ));
        }
        Err(not_found("leg", name))
    }

    fn call_exists(&self, call_id: &str) -> bool {
        self.calls.contains_key(call_id)
            || self.empty_calls.contains_key(call_id)
            || self.ng.sessions.contains(call_id)
    }

    /// Plans `topo` for the call, makes it the call's, sends the changes and waits.
    async fn commit(&mut self, call_id: &str, topo: Topology) -> Result<(), OpError> {
        let Some((worker, key)) = self.calls.get(call_id).map(|c| (c.worker, c.key)) else {
            return Err(not_found("call", call_id));
        };
        let changes = self.plan_ng(call_id, topo).map_err(topo_err)?;
        let rxs = self.send_changes(worker, key, changes, true);
        wait_answers(rxs).await
    }

    /// Starts a prompt or tone; returns its id.
    async fn start_play(
        &mut self,
        call_id: &str,
        leg: Option<LegKey>,
        plan: PlayPlan,
        repeat: u32,
        stop_on_dtmf: bool,
        _native: bool,
    ) -> Result<u32, OpError> {
        let Some(info) = self.calls.get_mut(call_id) else {
            return Err(not_found("call", call_id));
        };
        let id = info.next_play;
        info.next_play = info.next_play.wrapping_add(1).max(1);
        let mut topo = info.topo.clone();
        topo.add_prompt(id, leg);
        self.commit(call_id, topo).await?;
        let Some(info) = self.calls.get(call_id) else {
            return Err(not_found("call", call_id));
        };
        let source = match plan {
            PlayPlan::Prompt(p) => p.source(wideband(&info.topo)),
            PlayPlan::Tone(t) => switchboard_proto::media::PlaySource::Tone(t),
        };
        let (worker, key) = (info.worker, info.key);
        let res = self
            .send_ops_wait(
                worker,
                key,
                vec![MediaOp::Play {
                    id,
                    leg,
                    source,
                    repeat,
                    stop_on_dtmf,
                }],
            )
            .await;
        if res.is_err() {
            if let Some(info) = self.calls.get_mut(call_id) {
                info.topo.remove_prompt(id);
                let changes = info.topo.plan().unwrap_or_default();
                let _ = self.send_changes(worker, key, changes, false);
            }
        }
        res.map(|()| id)
    }

    async fn handle_media(
        &mut self,
        req: MediaRequest,
        prompt: Option<Arc<Prompt>>,
    ) -> Result<Value, OpError> {
        match req {
            MediaRequest::ForkStart(r) => self.fork_start(*r).await,
            MediaRequest::ForkStop { call, fork } => self.fork_stop(&call, fork.as_deref()).await,
            MediaRequest::AnalyticsStart(r) => self.analytics_start(r).await,
            MediaRequest::AnalyticsStop { call } => self.analytics_stop(&call).await,
            MediaRequest::CallCreate { call } => self.call_create(call),
            MediaRequest::LegCreate {
                call,
                leg,
                codecs,
                remote,
                ptime,
                hears,
            } => {
                self.leg_create(&call, leg, codecs, remote, ptime, hears)
                    .await
            }
            MediaRequest::LegAnswer {
                call,
                leg,
                sdp,
                remote,
            } => self.leg_answer(&call, &leg, sdp.as_deref(), remote).await,
            MediaRequest::LegDelete { call, leg } => self.leg_delete(&call, &leg).await,
            MediaRequest::LegHears { call, leg, hears } => {
                let k = self.find_leg(&call, &leg)?;
                let mut topo = self.topo_of(&call)?;
                match hears {
                    HearsSpec::All => topo.set_conference(k, true).map_err(topo_err)?,
                    HearsSpec::Legs(names) => {
                        let mut row = std::collections::BTreeSet::new();
                        for n in &names {
                            row.insert(self.find_leg(&call, n)?);
                        }
                        topo.set_row(k, Some(row)).map_err(topo_err)?;
                    }
                }
                self.commit(&call, topo).await?;
                Ok(json!({"call": call, "leg": leg}))
            }
            MediaRequest::LegMute {
                call,
                leg,
                mute,
                deaf,
                gain_db,
            } => {
                let k = self.find_leg(&call, &leg)?;
                let mut topo = self.topo_of(&call)?;
                topo.set_flags(k, mute, deaf, gain_db).map_err(topo_err)?;
                self.commit(&call, topo).await?;
                let l = self.calls.get(&call).and_then(|c| c.topo.leg(k));
                Ok(json!({"call": call, "leg": leg,
                    "mute": l.is_some_and(|l| l.mute), "deaf": l.is_some_and(|l| l.deaf),
                    "gain_db": l.map_or(0.0, |l| l.gain_db)}))
            }
            MediaRequest::MonitorStart {
                call,
                supervisor,
                agent,
                customer,
                mode,
                dtmf_control,
            } => {
                if supervisor == agent || customer.as_deref() == Some(supervisor.as_str()) {
                    return Err(OpError::new(
                        ErrorCode::Conflict,
                        "a supervisor cannot monitor itself",
                    ));
                }
                let s = self.find_leg(&call, &supervisor)?;
                let a = self.find_leg(&call, &agent)?;
                let c = match &customer {
                    Some(c) => Some(self.find_leg(&call, c)?),
                    None => None,
                };
                let mut topo = self.topo_of(&call)?;
                topo.start_monitor(Monitor {
                    supervisor: s,
                    agent: a,
                    customer: c,
                    mode,
                    dtmf_control,
                })
                .map_err(topo_err)?;
                self.commit(&call, topo).await?;
                self.emit(json!({"event": "monitor.started", "call": call,
                    "supervisor": supervisor, "agent": agent, "customer": customer,
                    "mode": mode.as_str()}));
                Ok(
                    json!({"call": call, "supervisor": supervisor, "agent": agent,
                    "customer": customer, "mode": mode.as_str(), "dtmf_control": dtmf_control}),
                )
            }
            MediaRequest::MonitorMode {
                call,
                supervisor,
                mode,
            } => {
                let s = self.find_leg(&call, &supervisor)?;
                let mut topo = self.topo_of(&call)?;
                topo.set_mode(s, mode)
                    .map_err(|_| not_found("monitor of supervisor", &supervisor))?;
                self.commit(&call, topo).await?;
                self.emit(json!({"event": "monitor.mode", "call": call,
                    "supervisor": supervisor, "mode": mode.as_str(), "source": "request"}));
                Ok(json!({"call": call, "supervisor": supervisor, "mode": mode.as_str()}))
            }
            MediaRequest::MonitorStop { call, supervisor } => {
                let s = self.find_leg(&call, &supervisor)?;
                let mut topo = self.topo_of(&call)?;
                topo.stop_monitor(s)
                    .ok_or_else(|| not_found("monitor of supervisor", &supervisor))?;
                self.commit(&call, topo).await?;
                self.emit(json!({"event": "monitor.stopped", "call": call,
                    "supervisor": supervisor}));
                Ok(json!({"call": call, "supervisor": supervisor}))
            }
            MediaRequest::PlayStart {
                call,
                leg,
                what,
                repeat,
                stop_on_dtmf,
            } => {
                let k = match &leg {
                    Some(l) => Some(self.find_leg(&call, l)?),
                    None => {
                        if !self.calls.contains_key(&call) {
                            return Err(not_found("call", &call));
                        }
                        None
                    }
                };
                let (plan, duration) = match (what, prompt) {
                    (PlayWhat::File(_), Some(p)) => {
                        let d =
                            (repeat > 0).then(|| p.duration_ms.saturating_mul(u64::from(repeat)));
                        (PlayPlan::Prompt(p), d)
                    }
                    (PlayWhat::Tone(t), _) => (PlayPlan::Tone(t), None),
                    (PlayWhat::File(f), None) => {
                        return Err(OpError::new(
                            ErrorCode::BadRequest,
                            format!("prompt `{f}` was not loaded"),
                        ));
                    }
                };
                let id = self
                    .start_play(&call, k, plan, repeat, stop_on_dtmf, true)
                    .await?;
                Ok(json!({"call": call, "play": id, "duration_ms": duration}))
            }
            MediaRequest::PlayStop { call, play, leg } => {
                let k = match &leg {
                    Some(l) => Some(self.find_leg(&call, l)?),
                    None => None,
                };
                let Some(info) = self.calls.get_mut(&call) else {
                    return Err(not_found("call", &call));
                };
                let ids: Vec<u32> = info
                    .topo
                    .prompts()
                    .filter(|(id, l)| play.is_none_or(|p| p == *id) && (k.is_none() || *l == k))
                    .map(|(id, _)| id)
                    .collect();
                if let Some(p) = play {
                    if ids.is_empty() {
                        return Err(not_found("play", &p.to_string()));
                    }
                }
                let (worker, key) = (info.worker, info.key);
                self.send_ops_wait(worker, key, vec![MediaOp::StopPlay { id: play, leg: k }])
                    .await?;
                let mut topo = self.topo_of(&call)?;
                for id in &ids {
                    topo.remove_prompt(*id);
                }
                self.commit(&call, topo).await?;
                Ok(json!({"call": call, "stopped": ids}))
            }
            MediaRequest::DtmfSend {
                call,
                leg,
                digits,
                duration_ms,
                volume_dbm0,
            } => {
                let k = self.find_leg(&call, &leg)?;
                let n = u32::try_from(digits.chars().count()).unwrap_or(u32::MAX);
                let rxs = self.hold_mixing(&call, n, duration_ms).map_err(topo_err)?;
                wait_answers(rxs).await?;
                let Some((worker, key)) = self.calls.get(&call).map(|c| (c.worker, c.key)) else {
                    return Err(not_found("call", &call));
                };
                self.send_ops_wait(
                    worker,
                    key,
                    vec![MediaOp::SendDtmf {
                        leg: k,
                        digits: digits.clone(),
                        duration_ms,
                        volume_dbm0,
                    }],
                )
                .await?;
                Ok(json!({"call": call, "leg": leg, "digits": digits}))
            }
        }
    }

    /// Keeps a call mixing while `digits` DTMF digits of `duration_ms` are sent (the mixer
    /// sends them); released by the timer. Returns the worker's answers to wait for.
    fn hold_mixing(
        &mut self,
        call: &str,
        digits: u32,
        duration_ms: u32,
    ) -> Result<Vec<oneshot::Receiver<Result<(), String>>>, TopologyError> {
        let Some(info) = self.calls.get_mut(call) else {
            return Ok(Vec::new());
        };
        let id = info.next_hold;
        info.next_hold = info.next_hold.wrapping_add(1);
        let mut topo = info.topo.clone();
        topo.add_hold(id);
        let changes = self.plan_ng(call, topo)?;
        let per_digit = u64::from(duration_ms) + 100;
        let span = Duration::from_millis(per_digit.saturating_mul(u64::from(digits)) + 1000);
        let Some(info) = self.calls.get_mut(call) else {
            return Ok(Vec::new());
        };
        info.holds.push((Instant::now() + span, id));
        let (worker, key) = (info.worker, info.key);
        Ok(self.send_changes(worker, key, changes, true))
    }

    /// Ends the DTMF holds that are due; calls may go back to relaying.
    fn release_holds(&mut self) {
        let now = Instant::now();
        let mut plans = Vec::new();
        for info in self.calls.values_mut() {
            if info.holds.iter().all(|(t, _)| *t > now) {
                continue;
            }
            let due: Vec<u32> = info
                .holds
                .iter()
                .filter(|(t, _)| *t <= now)
                .map(|(_, id)| *id)
                .collect();
            info.holds.retain(|(t, _)| *t > now);
            for id in due {
                info.topo.remove_hold(id);
            }
            if let Ok(changes) = info.topo.plan() {
                plans.push((info.worker, info.key, changes));
            }
        }
        for (worker, key, changes) in plans {
            let _ = self.send_changes(worker, key, changes, false);
        }
    }

    /// Notes the call's answer time, once: the first NG `answer` for the call, the first
    /// native `leg.answer`, or a native leg created with its remote address while another
    /// leg is already there (`answered_ms` in `call.ended`).
    fn note_answered(&mut self, call: &str) {
        if let Some(info) = self.calls.get_mut(call) {
            info.answered_ms.get_or_insert(wall_now().0 / 1000);
        }
    }

    /// Keeps the codec each NG leg negotiated (its first non-supplemental one), so
    /// `call.ended` names it even for relayed legs after the session is gone.
    fn note_ng_codecs(&mut self, call: &str) {
        let legs = self.ng.sessions.recording_legs(call).unwrap_or_default();
        let Some(info) = self.calls.get_mut(call) else {
            return;
        };
        let mut ops = Vec::new();
        for l in legs {
            let key = LegKey::from(l.local.rtp_port);
            if let Some(c) = l.codecs.iter().find(|c| !c.is_supplemental()) {
                info.ng_codecs.insert(key, c.name.clone());
            }
            // The relay learns the leg's telephone-event payload type even when the call
            // never mixes, so `block DTMF` drops its events in relay mode too.
            let pt = l
                .codecs
                .iter()
                .find(|c| c.name.eq_ignore_ascii_case("telephone-event"))
                .map(|c| c.payload_type);
            ops.push(MediaOp::TelephoneEvent { leg: key, pt });
        }
        let (worker, key) = (info.worker, info.key);
        self.send_ops(worker, key, ops);
    }

    fn topo_of(&self, call: &str) -> Result<Topology, OpError> {
        self.calls
            .get(call)
            .map(|c| c.topo.clone())
            .ok_or_else(|| not_found("call", call))
    }

    fn call_create(&mut self, call: Option<String>) -> Result<Value, OpError> {
        if self.hub.is_draining() {
            return Err(OpError::new(
                ErrorCode::Unavailable,
                "the engine is draining: no new calls",
            ));
        }
        let id = match call {
            Some(c) => {
                if self.call_exists(&c) {
                    return Err(OpError::new(
                        ErrorCode::Conflict,
                        format!("call `{c}` exists already"),
                    ));
                }
                c
            }
            None => loop {
                let c = format!("call-{}", self.next_call);
                self.next_call += 1;
                if !self.call_exists(&c) {
                    break c;
                }
            },
        };
        self.empty_calls.insert(id.clone(), wall_now().0 / 1000);
        self.emit(json!({"event": "call.created", "call": id}));
        Ok(json!({"call": id}))
    }

    async fn leg_create(
        &mut self,
        call: &str,
        leg: Option<String>,
        codecs: LegCodecs,
        remote: Option<SocketAddr>,
        ptime: Option<u32>,
        hears: Option<HearsSpec>,
    ) -> Result<Value, OpError> {
        if !self.call_exists(call) {
            return Err(not_found("call", call));
        }
        let (media, remote, remote_rtcp) = match codecs {
            LegCodecs::Names(n) => (crate::media::config_from_names(&n, ptime)?, remote, None),
            LegCodecs::Sdp(text) => {
                let r = crate::media::parse_remote_sdp(&text)?;
                let m = crate::media::config_from_sdp(&r.codecs, None, ptime.or(r.ptime))
                    .ok_or_else(|| {
                        OpError::new(
                            ErrorCode::BadRequest,
                            "the SDP offers no supported codec (PCMU, PCMA, G722, opus, L16)",
                        )
                    })?;
                (
                    m,
                    remote.or(r.remote),
                    r.remote_rtcp.filter(|_| remote.is_none()),
                )
            }
        };
        let hears = hears.unwrap_or(HearsSpec::Legs(Vec::new()));
        // Checks before any port is taken.
        let (legs_now, conference_now) = self.calls.get(call).map_or((0, 0), |c| {
            (c.topo.legs().count(), c.topo.conference_size())
        });
        if legs_now >= crate::media::MAX_LEGS {
            return Err(OpError::new(
                ErrorCode::LimitExceeded,
                format!("a call has at most {} legs", crate::media::MAX_LEGS),
            ));
        }
        if hears == HearsSpec::All && conference_now >= self.media.max_members {
            return Err(OpError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "the call has {} conference members, its limit",
                    self.media.max_members
                ),
            ));
        }
        let mut links = Vec::new();
        if let HearsSpec::Legs(names) = &hears {
            for n in names {
                links.push(self.find_leg(call, n)?);
            }
        }
        let name = match leg {
            Some(n) => {
                if self
                    .calls
                    .get(call)
                    .is_some_and(|c| c.topo.key_of(&n).is_some())
                {
                    return Err(OpError::new(
                        ErrorCode::Conflict,
                        format!("leg `{n}` exists already in call `{call}`"),
                    ));
                }
                n
            }
            None => loop {
                let n = self.calls.get_mut(call).map_or(1, |c| {
                    c.next_leg += 1;
                    c.next_leg - 1
                });
                let n = format!("leg{n}");
                if self
                    .calls
                    .get(call)
                    .is_none_or(|c| c.topo.key_of(&n).is_none())
                {
                    break n;
                }
            },
        };
        let pair = self
            .ports
            .allocate_pair(call, AddressFamily::Ip4, None)
            .map_err(|e| OpError::new(ErrorCode::Unavailable, format!("no port pair: {e}")))?;
        if self.create_call(call, pair.worker).is_none() {
            self.ports.release_pair(call, &pair);
            return Err(OpError::new(ErrorCode::Unavailable, "media worker busy"));
        }
        let mut config = LegConfig::new(advertised_rtp(&pair));
        config.expected_rtp = remote;
        config.expected_rtcp = remote_rtcp
            .or_else(|| remote.map(|r| SocketAddr::new(r.ip(), r.port().saturating_add(1))));
        config.latching = Latching::Symmetric;
        if !self.add_worker_leg(call, &pair, config) {
            self.ports.release_pair(call, &pair);
            return Err(OpError::new(ErrorCode::Unavailable, "media worker busy"));
        }
        let k = LegKey::from(pair.rtp_port);
        let Some(info) = self.calls.get_mut(call) else {
            return Err(not_found("call", call));
        };
        info.native_legs.insert(pair.rtp_port, pair);
        let mut topo = info.topo.clone();
        let mut l = Leg::new(name.clone(), k, Some(media.clone()));
        l.conference = hears == HearsSpec::All;
        topo.add_leg(l).map_err(topo_err)?;
        for o in links {
            topo.link(k, o);
        }
        if let Err(e) = self.commit(call, topo).await {
            self.drop_native_leg(call, k).await;
            return Err(e);
        }
        if remote.is_some()
            && self
                .calls
                .get(call)
                .is_some_and(|c| c.topo.legs().count() >= 2)
        {
            // A second leg whose media address is known: both sides can talk.
            self.note_answered(call);
        }
        let session = u64::from(pair.rtp_port) ^ (wall_now().0 / 1000);
        Ok(json!({
            "call": call,
            "leg": name,
            "local": advertised_rtp(&pair).to_string(),
            "sdp": crate::media::local_sdp(pair.address, pair.rtp_port, &media, session),
        }))
    }

    /// Removes a native leg: from the topology, the worker and the port allocator.
    async fn drop_native_leg(&mut self, call: &str, k: LegKey) -> Option<()> {
        let info = self.calls.get_mut(call)?;
        let port = u16::try_from(k).ok()?;
        let pair = info.native_legs.remove(&port);
        info.legs.remove(&port);
        info.topo.remove_leg(k);
        let changes = info.topo.plan().unwrap_or_default();
        let (worker, key) = (info.worker, info.key);
        let mut rxs = self.send_changes(worker, key, changes, true);
        if let Some(h) = self.workers.get(worker) {
            let (tx, rx) = oneshot::channel();
            if h.send(Command::Media {
                call: key,
                op: MediaOp::RemoveLeg { leg: k },
                reply: Some(tx),
            })
            .is_ok()
            {
                rxs.push(rx);
            }
        }
        let _ = wait_answers(rxs).await;
        if let Some(p) = pair {
            let owner = self.release_owner(call, p.rtp_port);
            self.ports.release_pair(&owner, &p);
        }
        Some(())
    }

    async fn leg_answer(
        &mut self,
        call: &str,
        leg: &str,
        sdp: Option<&str>,
        remote: Option<SocketAddr>,
    ) -> Result<Value, OpError> {
        let k = self.find_leg(call, leg)?;
        let info = self
            .calls
            .get(call)
            .ok_or_else(|| not_found("call", call))?;
        let pair = u16::try_from(k)
            .ok()
            .and_then(|p| info.native_legs.get(&p))
            .copied()
            .ok_or_else(|| {
                OpError::new(
                    ErrorCode::Conflict,
                    format!("leg `{leg}` is an NG party: it is answered over NG"),
                )
            })?;
        let mut topo = info.topo.clone();
        let mut rtp = remote;
        let mut rtcp = None;
        if let Some(text) = sdp {
            let r = crate::media::parse_remote_sdp(text)?;
            let current = topo.leg(k).and_then(|l| l.media.clone());
            let ptime = current.as_ref().map(|m| m.ptime_ms);
            let m = crate::media::config_from_sdp(&r.codecs, None, r.ptime.or(ptime)).ok_or_else(
                || {
                    OpError::new(
                        ErrorCode::BadRequest,
                        "the SDP answer has no supported codec",
                    )
                },
            )?;
            if let Some(l) = topo.leg_mut(k) {
                l.media = Some(m);
            }
            if rtp.is_none() {
                rtp = r.remote;
                rtcp = r.remote_rtcp;
            }
        }
        let mut config = LegConfig::new(advertised_rtp(&pair));
        config.expected_rtp = rtp;
        config.expected_rtcp =
            rtcp.or_else(|| rtp.map(|r| SocketAddr::new(r.ip(), r.port().saturating_add(1))));
        config.latching = Latching::Symmetric;
        if let Some(h) = self.workers.get(info.worker) {
            let _ = h.send(Command::UpdateLeg {
                call: info.key,
                leg: k,
                config,
            });
        }
        self.commit(call, topo).await?;
        self.note_answered(call);
        Ok(json!({"call": call, "leg": leg, "remote": rtp.map(|r| r.to_string())}))
    }

    async fn leg_delete(&mut self, call: &str, leg: &str) -> Result<Value, OpError> {
        let k = self.find_leg(call, leg)?;
        let native = self
            .calls
            .get(call)
            .is_some_and(|c| u16::try_from(k).is_ok_and(|p| c.native_legs.contains_key(&p)));
        if !native {
            return Err(OpError::new(
                ErrorCode::Conflict,
                format!("leg `{leg}` is an NG party: it ends with its NG call"),
            ));
        }
        self.drop_native_leg(call, k).await;
        Ok(json!({"call": call, "leg": leg}))
    }

    /// An event of a call's decoded media, from its worker.
    fn handle_media_event(&mut self, call: CallKey, leg: Option<LegKey>, ev: MediaEvent) {
        let Some(call_id) = self.by_key.get(&call).cloned() else {
            return;
        };
        let Some(info) = self.calls.get_mut(&call_id) else {
            return;
        };
        let name = leg.map(|leg| {
            info.topo
                .leg(leg)
                .map_or_else(|| format!("port:{leg}"), |l| l.name.clone())
        });
        match ev {
            MediaEvent::Dtmf {
                digit,
                duration_ms,
                source,
                ..
            } => {
                self.emit(json!({"event": "dtmf", "call": call_id, "leg": name,
                    "digit": digit.to_string(), "duration_ms": duration_ms,
                    "source": source.as_str()}));
                let Some(info) = self.calls.get_mut(&call_id) else {
                    return;
                };
                let Some(leg) = leg else {
                    return;
                };
                let control = info
                    .topo
                    .monitor(leg)
                    .filter(|m| m.dtmf_control)
                    .map(|m| m.mode);
                let Some(mode) = crate::media::topology::MonitorMode::from_digit(digit) else {
                    return;
                };
                if control.is_none_or(|m| m == mode) {
                    return;
                }
                let mut topo = info.topo.clone();
                if topo.set_mode(leg, mode).is_err() {
                    return;
                }
                match topo.plan() {
                    Ok(changes) => {
                        info.topo = topo;
                        let (worker, key) = (info.worker, info.key);
                        let _ = self.send_changes(worker, key, changes, false);
                        self.emit(json!({"event": "monitor.mode", "call": call_id,
                            "supervisor": name, "mode": mode.as_str(), "source": "dtmf"}));
                    }
                    Err(e) => warn!(call_id, error = %e, "supervisor mode not changed"),
                }
            }
            MediaEvent::Talking { talking, .. } => {
                self.emit(json!({"event": "talking", "call": call_id, "leg": name,
                    "talking": talking}));
            }
            MediaEvent::PlayDone { id, reason } => {
                if info.topo.remove_prompt(id.0) {
                    let changes = info.topo.plan().unwrap_or_default();
                    let (worker, key) = (info.worker, info.key);
                    let _ = self.send_changes(worker, key, changes, false);
                }
                self.emit(json!({"event": "play.done", "call": call_id, "play": id.0,
                    "reason": reason.as_str()}));
            }
            _ => {}
        }
    }
}
