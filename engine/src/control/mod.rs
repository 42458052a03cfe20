//! The control plane: one task that owns the NG call-signalling state, the port allocator and
//! the handles of the media workers, fed by the NG servers ([`ng`]), the native control
//! protocol ([`native`]) and HTTP through a bounded channel. Replies go back on one-shot
//! channels; events to subscribers on a broadcast channel.
//!
//! It runs on the control runtime's threads, never on a media core. Media commands go to the
//! worker that owns the call; statistics for `query`, `delete` and `call.get` come back from it.

pub mod native;
pub mod ng;
pub mod ports;

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use switchboard_proto::ng::RetransmitCache;
use switchboard_proto::relay::{Latching, LegConfig};
use switchboard_proto::session::{
    EndReason, GlobalStats, LocalPair, MediaCommand, NgHandler, RelaySpec, Sessions,
    SessionsConfig, StatsSource, StreamSide, StreamStats, UnixMicros,
};
use switchboard_proto::time::Micros;
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{info, warn};

use self::native::{ErrorCode, OpError};
use self::ports::{EnginePorts, advertised_rtp};
use crate::metrics::Metrics;
use crate::worker::{CallKey, CallStats, Command, LegKey, WorkerEvent, WorkerHandle};

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
}

/// A call as the control task knows it.
#[derive(Debug)]
struct CallInfo {
    key: CallKey,
    worker: usize,
    /// Legs on the worker, by local RTP port, with the pair.
    legs: HashMap<u16, LocalPair>,
    tags: HashSet<String>,
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
    };
    let task = tokio::spawn(control.run(rx, events, rec_events));
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
        let now = self.now();
        if self.ng.poll_timeout().is_some_and(|t| t <= now) {
            let cmds = self.ng.handle_timeout(now, wall_now(), &mut self.ports);
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
                let cmds = self.ng.sessions.end_call(
                    &call_id,
                    wall_now(),
                    EndReason::Timeout,
                    &mut self.ports,
                );
                let _ = self.apply(cmds);
                // The worker has removed the call already; make sure nothing is left.
                self.forget(&call_id);
            }
            WorkerEvent::RecordingDropped { call, frames, .. } => {
                self.recording_dropped(call, frames);
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
        let result = ng::reply_result(&outcome.reply);
        let mut touched = self.apply(outcome.commands);
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
        Some(outcome.reply)
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
                | MediaCommand::Recording { call_id, .. } => {
                    self.calls.get(call_id).map(|c| c.worker)
                }
                _ => None,
            };
            if let Some(w) = w {
                if !touched.contains(&w) {
                    touched.push(w);
                }
            }
            match cmd {
                MediaCommand::SetRelay(spec) => self.set_relay(&spec),
                MediaCommand::RemoveRelay { call_id, pairs, .. } => {
                    self.remove_legs(&call_id, &pairs);
                }
                MediaCommand::DeleteCall { call_id, .. } => {
                    if let Some(info) = self.calls.get(&call_id) {
                        if let Some(w) = self.workers.get(info.worker) {
                            let _ = w.send(Command::DeleteCall {
                                call: info.key,
                                reply: None,
                            });
                        }
                    }
                    self.forget(&call_id);
                }
                MediaCommand::Recording {
                    call_id,
                    action,
                    metadata,
                } => self.ng_recording(&call_id, action, metadata.as_deref()),
                _ => {}
            }
        }
        touched
    }

    fn forget(&mut self, call_id: &str) {
        if let Some(info) = self.calls.remove(call_id) {
            self.by_key.remove(&info.key);
            self.emit(json!({"event": "call.deleted", "call": call_id}));
        }
    }

    fn remove_legs(&mut self, call_id: &str, pairs: &[LocalPair]) {
        // Legs are removed with their call on the worker; a single media section going away
        // keeps its sockets until the call ends (its relay gets no more commands).
        if let Some(info) = self.calls.get_mut(call_id) {
            for p in pairs {
                info.legs.remove(&p.rtp_port);
            }
        }
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

    fn set_relay(&mut self, spec: &RelaySpec) {
        let worker = spec.sides[0].local.worker;
        let Some(handle) = self.workers.get(worker) else {
            warn!(worker, "media command for an unknown worker");
            return;
        };
        let is_new = !self.calls.contains_key(&spec.call_id);
        if is_new {
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
                return;
            }
            self.calls.insert(
                spec.call_id.clone(),
                CallInfo {
                    key,
                    worker,
                    legs: HashMap::new(),
                    tags: HashSet::new(),
                },
            );
            self.by_key.insert(key, spec.call_id.clone());
            self.emit(json!({"event": "call.created", "call": spec.call_id}));
        }
        let Some(info) = self.calls.get_mut(&spec.call_id) else {
            return;
        };
        let key = info.key;
        let mut added = false;
        for side in &spec.sides {
            let leg = LegKey::from(side.local.rtp_port);
            let config = Self::leg_config(side);
            if !side.tag.is_empty() {
                info.tags.insert(side.tag.clone());
            }
            match info.legs.entry(side.local.rtp_port) {
                Entry::Occupied(_) => {
                    let _ = handle.send(Command::UpdateLeg {
                        call: key,
                        leg,
                        config,
                    });
                }
                Entry::Vacant(slot) => {
                    let Some(bound) = self.ports.take_sockets(&side.local) else {
                        continue;
                    };
                    let sent = handle.send(Command::AddLeg {
                        call: key,
                        leg,
                        config,
                        rtp: bound.rtp,
                        rtcp: bound.rtcp,
                    });
                    if sent.is_ok() {
                        slot.insert(side.local);
                        added = true;
                    }
                }
            }
        }
        if added {
            let _ = handle.send(Command::Connect {
                call: key,
                a: LegKey::from(spec.sides[0].local.rtp_port),
                b: LegKey::from(spec.sides[1].local.rtp_port),
            });
        }
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
                calls.sort_by(|a, b| a["call"].as_str().cmp(&b["call"].as_str()));
                Ok(json!({"calls": calls}))
            }
            NativeOp::CallGet(id) => {
                let Some(info) = self.calls.get(&id) else {
                    return Err(OpError::new(ErrorCode::NotFound, format!("no call `{id}`")));
                };
                let worker = info.worker;
                let mut tags: Vec<String> = info.tags.iter().cloned().collect();
                tags.sort();
                let stats = self.query_worker(&id).await;
                Ok(json!({"call": id, "worker": worker, "tags": tags,
                    "stats": stats.map_or(Value::Null, |s| serde_json::to_value(s).unwrap_or(Value::Null))}))
            }
            NativeOp::CallDelete(id) => {
                if !self.calls.contains_key(&id) && !self.ng.sessions.contains(&id) {
                    return Err(OpError::new(ErrorCode::NotFound, format!("no call `{id}`")));
                }
                let stats = self.query_worker(&id).await;
                let cmds =
                    self.ng
                        .sessions
                        .end_call(&id, wall_now(), EndReason::Forced, &mut self.ports);
                let _ = self.apply(cmds);
                self.forget(&id);
                Ok(json!({"call": id,
                    "stats": stats.map_or(Value::Null, |s| serde_json::to_value(s).unwrap_or(Value::Null))}))
            }
            NativeOp::Record(r) => self.handle_record(r).await,
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
