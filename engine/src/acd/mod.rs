//! The ACD service: the [`switchboard_router::Router`] running inside the engine.
//!
//! ## Tenants and shards
//!
//! Every request names a *tenant* (`"tenant": "name"`, default `default`); queues, agents
//! and tasks live in their tenant, and the same id may exist in two tenants independently.
//! Each tenant has its own [`switchboard_router::Router`]. Tenants map to *shards* by a
//! stable hash of their name ([`shard_of`], FNV-1a): `[acd] shards = N` in the
//! configuration, by default one per four cores (at least one, at most
//! [`crate::config::MAX_ACD_SHARDS`]). A tenant always lands on the same shard for the same
//! `N`, so a restart restores it where its requests go.
//!
//! ## Threads and queues
//!
//! * **`sb-acd-K`** (one thread per shard): owns the routers of its tenants and everything
//!   the engine keeps next to them (queue and agent definitions, per-task metadata such as
//!   the customer's call). Each shard is fed by its own bounded lock-free MPSC queue
//!   ([`crossbeam::channel`]) of requests, each carrying a [`tokio::sync::oneshot`] reply
//!   channel. It drives the routers with the engine's monotonic clock, fires
//!   `Router::handle_timeout` at `Router::poll_timeout`, and turns every router event into
//!   a JSON event (carrying `tenant`) for the native control subscribers (topic `acd`). It
//!   never takes a lock.
//! * **[`AcdHandle`]**: cloneable, usable from any thread; it holds every shard's sender and
//!   picks the queue of a request from its tenant (a hash, no lock, no shared map).
//! * **`sb-acd-store`** (one thread): owns the SQLite connection (`acd.sqlite` in the state
//!   directory, WAL mode). The shards hand it batches of writes through a second bounded
//!   queue; it commits whatever has piled up in one transaction and only then sends the
//!   replies of the requests those writes belong to, so an acknowledged change is on disk
//!   (see [`store`]).
//! * On the control runtime, three small tasks: one forwards the shards' events (a bounded
//!   `tokio` channel, written with `try_send`) to the hub's broadcast, one watches the
//!   hub's `call.deleted` / `media.timeout` events and tells every shard which calls are
//!   gone, so voice tasks of a hung-up call end at once in whichever tenant they are, and
//!   one starts and stops conversation analytics on the calls of voice tasks waiting in
//!   queues with `agitation_from_analytics`, from the `task.*` events (see
//!   [`QUEUE_ANALYTICS_INTERVAL_MS`]); the analytics feed the task through `task.update`.
//!
//! Connection tasks parse and check each request ([`ops`]) before queueing it, so a shard
//! only applies typed requests. `forecast.staffing` is pure arithmetic and runs on a blocking
//! thread of the control runtime, never on a shard.
//!
//! ## Time
//!
//! A tenant's router counts milliseconds from an epoch chosen at start-up: the earlier of
//! the engine's start and the tenant's oldest persisted task's enqueue time. Router time `t`
//! is wall-clock time `epoch + t`; the store keeps wall-clock enqueue times, so a restart
//! maps them back to router times and every restored task keeps its place in line.
//!
//! ## Recovery
//!
//! Before its first request each shard replays the store, tenant by tenant (those that hash
//! to it): queues (first without their exits, then with them, so queues overflowing into
//! each other restore in any order), agents (those that were available come back away with
//! reason `engine_restart`), then every persisted non-voice task, oldest first, enqueued *at
//! its original enqueue time* so aging, routing steps, emotion windows and maximum waits
//! count from then; a task that was assigned waits first for the agent that held it.
//! Persisted voice tasks end with `task.ended`, reason `call_gone` (calls do not survive a
//! restart). Finally the router is advanced to now, firing every deadline that passed while
//! the engine was down, each at its own time.
//!
//! ## Metrics
//!
//! Engine-wide totals (queues, live tasks, agents by state and status) are summed over the
//! shards. Per-queue series in `/metrics` are exported for tenant `default` only (the queue
//! id is their only label); every tenant's figures are available through `queue.stats`.

pub mod metrics;
pub mod ops;
mod shard;
pub mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{self, TrySendError};
use serde_json::Value;
use switchboard_router::RouterConfig;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

pub use self::metrics::AcdMetrics;
use self::ops::Request;
use crate::control::Hub;
use crate::control::native::{ErrorCode, OpError};

/// Requests queued to one shard before new ones are refused with `unavailable`.
pub const REQUEST_QUEUE: usize = 16 * 1024;
/// Write batches queued to the store thread before the shard waits for it.
pub const STORE_QUEUE: usize = 16 * 1024;
/// Events queued between the shard and the hub's broadcast before events are dropped.
pub const EVENT_QUEUE: usize = 64 * 1024;
/// The database file's name in the state directory.
pub const DB_FILE: &str = "acd.sqlite";

/// The reply to one request.
pub(crate) type Reply = oneshot::Sender<Result<Value, OpError>>;

/// One queued request, its tenant and where its answer goes.
pub(crate) struct Envelope {
    pub(crate) tenant: Arc<str>,
    pub(crate) request: Request,
    pub(crate) reply: Option<Reply>,
}

/// What the ACD service needs to start.
#[derive(Debug, Clone)]
pub struct AcdConfig {
    /// The state directory; the database is [`DB_FILE`] in it.
    pub state_dir: PathBuf,
    /// The engine's monotonic clock origin.
    pub epoch: Instant,
    /// Router limits (of each tenant).
    pub router: RouterConfig,
    /// Router shards (threads), at least 1.
    pub shards: usize,
}

/// The shard of `tenant` among `shards`: FNV-1a (64-bit) of the name, modulo `shards`.
/// Stable across runs and builds, so persisted tenants restore into the shard their
/// requests go to.
#[must_use]
pub fn shard_of(tenant: &str, shards: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in tenant.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let n = shards.max(1) as u64;
    // `h % n` is below `n`, which came from a `usize`.
    usize::try_from(h % n).unwrap_or(0)
}

/// Engine-wide figures each shard publishes, summed for `/metrics` (relaxed atomics).
#[derive(Debug)]
pub(crate) struct ShardTotals {
    /// Per shard: queues, live tasks, agents by state (4), agents by status (3).
    rows: Box<[[AtomicU64; 9]]>,
}

impl ShardTotals {
    fn new(shards: usize) -> ShardTotals {
        ShardTotals {
            rows: (0..shards).map(|_| Default::default()).collect(),
        }
    }

    /// Stores shard `k`'s figures and publishes the sums over every shard.
    pub(crate) fn publish(&self, k: usize, mine: [u64; 9], metrics: &AcdMetrics) {
        if let Some(row) = self.rows.get(k) {
            for (c, v) in row.iter().zip(mine) {
                c.store(v, Ordering::Relaxed);
            }
        }
        let mut sum = [0u64; 9];
        for row in &self.rows {
            for (s, c) in sum.iter_mut().zip(row) {
                *s = s.saturating_add(c.load(Ordering::Relaxed));
            }
        }
        let by_state = [sum[2], sum[3], sum[4], sum[5]];
        let by_status = [sum[6], sum[7], sum[8]];
        metrics.set_totals(
            usize::try_from(sum[0]).unwrap_or(usize::MAX),
            usize::try_from(sum[1]).unwrap_or(usize::MAX),
            &by_state,
            &by_status,
        );
    }
}

/// A cheap, cloneable handle on the ACD shards, usable from any thread.
#[derive(Clone)]
pub struct AcdHandle {
    shards: Arc<[channel::Sender<Envelope>]>,
    metrics: Arc<crate::metrics::ControlMetrics>,
}

impl std::fmt::Debug for AcdHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcdHandle").finish_non_exhaustive()
    }
}

fn unavailable(message: &str) -> OpError {
    OpError::new(ErrorCode::Unavailable, message)
}

impl AcdHandle {
    /// The number of router shards.
    #[must_use]
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    fn sender(&self, tenant: &str) -> Result<&channel::Sender<Envelope>, OpError> {
        self.shards
            .get(shard_of(tenant, self.shards.len()))
            .ok_or_else(|| unavailable("the ACD is not running"))
    }

    /// Queues a request to its tenant's shard and waits for its reply.
    async fn call(&self, tenant: Arc<str>, request: Request) -> Result<Value, OpError> {
        let (reply, rx) = oneshot::channel();
        self.post(tenant, request, Some(reply))?;
        rx.await
            .map_err(|_| unavailable("the ACD stopped before answering"))?
    }

    /// Queues a request without waiting; a full queue refuses it.
    fn post(
        &self,
        tenant: Arc<str>,
        request: Request,
        reply: Option<Reply>,
    ) -> Result<(), OpError> {
        let tx = self.sender(&tenant)?;
        match tx.try_send(Envelope {
            tenant,
            request,
            reply,
        }) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                self.metrics.acd.count_rejected();
                Err(unavailable("the ACD request queue is full; retry shortly"))
            }
            Err(TrySendError::Disconnected(_)) => Err(unavailable("the ACD is not running")),
        }
    }
}

/// The running ACD: its handle and threads.
#[derive(Debug)]
pub struct AcdService {
    handle: AcdHandle,
    shards: Vec<JoinHandle<()>>,
    writer: Option<JoinHandle<()>>,
}

impl AcdService {
    /// Opens the store, restores the persisted queues, agents and tasks, and starts the
    /// shard and store threads plus the event forwarders on the current `tokio` runtime.
    /// Each shard replays the persisted state of its tenants before it serves its first
    /// request.
    ///
    /// # Errors
    /// When the database cannot be opened or created, or a thread cannot be spawned.
    pub fn start(config: AcdConfig, hub: &Hub) -> anyhow::Result<AcdService> {
        use anyhow::Context as _;
        let path = config.state_dir.join(DB_FILE);
        let (conn, loaded) = store::open(&path)
            .with_context(|| format!("opening the ACD store {}", path.display()))?;
        let control_metrics = hub.metrics().control.clone();
        let (store_tx, store_rx) = channel::bounded(STORE_QUEUE);
        let writer = store::spawn_writer(conn, store_rx, control_metrics.clone())
            .context("starting the ACD store thread")?;
        let n = config.shards.max(1);
        let mut per_shard: Vec<Vec<(String, store::Loaded)>> = (0..n).map(|_| Vec::new()).collect();
        for (tenant, l) in loaded {
            if let Some(v) = per_shard.get_mut(shard_of(&tenant, n)) {
                v.push((tenant, l));
            }
        }
        let (ev_tx, ev_rx) = mpsc::channel(EVENT_QUEUE);
        let totals = Arc::new(ShardTotals::new(n));
        // The shard of tenant `default` owns the per-queue metric slots.
        let slots_shard = shard_of(ops::DEFAULT_TENANT, n);
        let mut senders = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for (k, tenants) in per_shard.into_iter().enumerate() {
            let (tx, rx) = channel::bounded(REQUEST_QUEUE);
            let spawned = shard::spawn(
                shard::ShardConfig {
                    index: k,
                    epoch: config.epoch,
                    router: config.router.clone(),
                    metric_slots: k == slots_shard,
                    totals: totals.clone(),
                },
                tenants,
                rx,
                store_tx.clone(),
                ev_tx.clone(),
                control_metrics.clone(),
            );
            match spawned {
                Ok(t) => {
                    senders.push(tx);
                    threads.push(t);
                }
                Err(e) => {
                    // Stop the shards already running before giving up.
                    for tx in &senders {
                        let _ = tx.send(Envelope {
                            tenant: Arc::from(ops::DEFAULT_TENANT),
                            request: Request::Shutdown,
                            reply: None,
                        });
                    }
                    drop(store_tx);
                    for t in threads {
                        let _ = t.join();
                    }
                    let _ = writer.join();
                    return Err(e).context("starting an ACD shard thread");
                }
            }
        }
        drop(store_tx);
        let handle = AcdHandle {
            shards: senders.into(),
            metrics: control_metrics,
        };
        tokio::spawn(forward_events(hub.clone(), ev_rx));
        tokio::spawn(watch_calls(hub.clone(), handle.clone()));
        tokio::spawn(watch_queued_calls(hub.clone()));
        info!(db = %path.display(), shards = n, "ACD started");
        Ok(AcdService {
            handle,
            shards: threads,
            writer: Some(writer),
        })
    }

    /// A handle for the control plane.
    #[must_use]
    pub fn handle(&self) -> AcdHandle {
        self.handle.clone()
    }

    /// Stops the shards, lets the store thread commit what is queued, and waits for them.
    /// Call it outside the control runtime's threads (it blocks).
    pub fn shutdown(mut self) {
        // Requests queued before this one are still served.
        for tx in self.handle.shards.iter() {
            let _ = tx.send(Envelope {
                tenant: Arc::from(ops::DEFAULT_TENANT),
                request: Request::Shutdown,
                reply: None,
            });
        }
        for t in self.shards.drain(..) {
            if t.join().is_err() {
                warn!(thread = "shard", "ACD thread panicked");
            }
        }
        if let Some(t) = self.writer.take() {
            if t.join().is_err() {
                warn!(thread = "store", "ACD thread panicked");
            }
        }
        info!("ACD stopped");
    }
}

/// Whether `op` is served by the ACD.
#[must_use]
pub fn handles(op: &str) -> bool {
    ["queue.", "agent.", "task.", "offer.", "forecast."]
        .iter()
        .any(|p| op.starts_with(p))
}

/// Serves one native control operation of the ACD (`queue.*`, `agent.*`, `task.*`,
/// `offer.*`, `forecast.staffing`).
///
/// # Errors
/// An [`OpError`] with a stable code; see `docs/control-protocol.md`.
pub async fn native_op(hub: &Hub, op: &str, req: &Value) -> Result<Value, OpError> {
    let (tenant, request) = ops::parse(op, req)?;
    let request = match request {
        Request::Forecast(f) => {
            return tokio::task::spawn_blocking(move || ops::forecast(&f))
                .await
                .map_err(|_| unavailable("the forecast did not finish"))?;
        }
        Request::TaskEnqueue(def) => {
            if let Some(call) = &def.call {
                check_call(hub, call, def.leg.as_deref()).await?;
            }
            Request::TaskEnqueue(def)
        }
        other => other,
    };
    let acd = hub
        .acd()
        .ok_or_else(|| unavailable("the ACD is not running"))?;
    acd.call(tenant, request).await
}

/// A voice task may only name a call (and a leg tag of it) the engine knows.
async fn check_call(hub: &Hub, call: &str, leg: Option<&str>) -> Result<(), OpError> {
    let info = hub.call_get(call).await.map_err(|e| {
        if e.code == ErrorCode::NotFound {
            OpError::new(
                ErrorCode::NotFound,
                format!("no call `{call}`: a voice task may only name a live call"),
            )
        } else {
            e
        }
    })?;
    if let Some(leg) = leg {
        // An NG tag, or the name of a leg created over the native protocol.
        let known = info["tags"]
            .as_array()
            .is_some_and(|tags| tags.iter().any(|t| t.as_str() == Some(leg)))
            || info["media"]["legs"]
                .as_array()
                .is_some_and(|legs| legs.iter().any(|l| l["leg"].as_str() == Some(leg)));
        if !known {
            return Err(OpError::new(
                ErrorCode::NotFound,
                format!("call `{call}` has no leg `{leg}` (NG tag or native leg name)"),
            ));
        }
    }
    Ok(())
}

/// Moves the shard's events onto the hub's broadcast, in order.
async fn forward_events(hub: Hub, mut rx: mpsc::Receiver<Value>) {
    while let Some(ev) = rx.recv().await {
        hub.publish(ev);
    }
}

/// Tells every shard about calls that ended, so their voice tasks end too (a call may carry
/// tasks of any tenant).
async fn watch_calls(hub: Hub, acd: AcdHandle) {
    use tokio::sync::broadcast::error::RecvError;
    let mut rx = hub.subscribe();
    loop {
        match rx.recv().await {
            Ok(ev) => {
                let name = ev.get("event").and_then(Value::as_str);
                if !matches!(name, Some("call.deleted" | "media.timeout")) {
                    continue;
                }
                let Some(call) = ev.get("call").and_then(Value::as_str) else {
                    continue;
                };
                for tx in acd.shards.iter() {
                    let mut env = Envelope {
                        tenant: Arc::from(ops::DEFAULT_TENANT),
                        request: Request::CallGone(call.to_owned()),
                        reply: None,
                    };
                    // A full shard queue is retried: a hang-up must not be lost.
                    loop {
                        match tx.try_send(env) {
                            Ok(()) => break,
                            Err(TrySendError::Full(back)) => {
                                env = back;
                                tokio::time::sleep(Duration::from_millis(1)).await;
                            }
                            Err(TrySendError::Disconnected(_)) => return,
                        }
                    }
                }
            }
            Err(RecvError::Lagged(n)) => {
                warn!(
                    missed = n,
                    "ACD call watcher lagged: voice tasks of calls that ended meanwhile wait for task.cancel"
                );
                acd.metrics.acd.count_call_events_missed(n);
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// Live `analytics` interval of the analytics a queue starts (`agitation_from_analytics`).
pub const QUEUE_ANALYTICS_INTERVAL_MS: u32 = 2000;
/// Waiting tasks whose analytics the watcher tracks at once; beyond, new ones are skipped.
const MAX_QUEUE_ANALYTICS: usize = 64 * 1024;
/// How long the watcher waits for the control task to start or stop analytics.
const ANALYTICS_OP_TIMEOUT: Duration = Duration::from_secs(2);

/// Calls whose analytics a queue started, by `(tenant, task)`; lives on the watcher task.
#[derive(Debug, Default)]
struct QueueAnalytics {
    running: std::collections::HashMap<(String, u64), String>,
}

/// What the analytics watcher does about one event.
#[derive(Debug, PartialEq, Eq)]
enum AnalyticsAction {
    /// Start analytics on `call` (caller `leg`) feeding `task` of `tenant`.
    Start {
        call: String,
        leg: Option<String>,
        task: u64,
        tenant: String,
    },
    /// Stop the analytics of `call`.
    Stop(String),
}

impl QueueAnalytics {
    /// The actions an event asks for, updating what is tracked.
    fn on_event(&mut self, ev: &Value) -> Vec<AnalyticsAction> {
        let name = ev.get("event").and_then(Value::as_str).unwrap_or("");
        if matches!(name, "call.deleted" | "media.timeout") {
            // The analytics ended with the call.
            if let Some(call) = ev.get("call").and_then(Value::as_str) {
                self.running.retain(|_, c| c != call);
            }
            return Vec::new();
        }
        let (Some(task), Some(tenant)) = (
            ev.get("task").and_then(Value::as_u64),
            ev.get("tenant").and_then(Value::as_str),
        ) else {
            return Vec::new();
        };
        let key = (tenant.to_owned(), task);
        match name {
            "task.queued" | "task.overflowed" => {
                let wanted = ev.get("agitation_from_analytics") == Some(&Value::Bool(true));
                let call = ev.get("call").and_then(Value::as_str);
                match (wanted, call) {
                    (true, Some(call)) => {
                        if self.running.get(&key).is_some_and(|c| c == call) {
                            return Vec::new();
                        }
                        if self.running.len() >= MAX_QUEUE_ANALYTICS {
                            warn!(task, "ACD: too many queue analytics; not started");
                            return Vec::new();
                        }
                        self.running.insert(key, call.to_owned());
                        vec![AnalyticsAction::Start {
                            call: call.to_owned(),
                            leg: ev.get("leg").and_then(Value::as_str).map(str::to_owned),
                            task,
                            tenant: tenant.to_owned(),
                        }]
                    }
                    _ => self.stop(&key),
                }
            }
            "task.assigned" | "task.abandoned" | "task.left" | "task.completed" | "task.ended" => {
                self.stop(&key)
            }
            _ => Vec::new(),
        }
    }

    /// Stops tracking a task; its call's analytics stop unless another tracked task uses it.
    fn stop(&mut self, key: &(String, u64)) -> Vec<AnalyticsAction> {
        let Some(call) = self.running.remove(key) else {
            return Vec::new();
        };
        if self.running.values().any(|c| *c == call) {
            return Vec::new();
        }
        vec![AnalyticsAction::Stop(call)]
    }
}

/// Runs conversation analytics on the calls of voice tasks waiting in queues with
/// `agitation_from_analytics`: starts them on the task's `task.queued` (or
/// `task.overflowed` into such a queue), with the task's leg as the caller and
/// `update_task` for the task, and stops them when the task is assigned, ends or
/// overflows into a queue without the option. It reads the hub's events and asks the
/// control task through the hub: nothing on the shards' path waits for it.
async fn watch_queued_calls(hub: Hub) {
    use tokio::sync::broadcast::error::RecvError;
    let mut rx = hub.subscribe();
    let mut state = QueueAnalytics::default();
    loop {
        let ev = match rx.recv().await {
            Ok(ev) => ev,
            Err(RecvError::Lagged(n)) => {
                warn!(
                    missed = n,
                    "ACD analytics watcher lagged: some queue analytics may not start or stop"
                );
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        for action in state.on_event(&ev) {
            let (op, req) = match &action {
                AnalyticsAction::Start {
                    call,
                    leg,
                    task,
                    tenant,
                } => {
                    let mut req = serde_json::json!({"call": call, "update_task": true,
                        "task": task, "tenant": tenant,
                        "interval_ms": QUEUE_ANALYTICS_INTERVAL_MS});
                    if let (Some(leg), Some(o)) = (leg, req.as_object_mut()) {
                        o.insert("caller".into(), Value::String(leg.clone()));
                    }
                    ("analytics.start", req)
                }
                AnalyticsAction::Stop(call) => {
                    ("analytics.stop", serde_json::json!({"call": call}))
                }
            };
            match tokio::time::timeout(ANALYTICS_OP_TIMEOUT, hub.media(op, &req)).await {
                Ok(Ok(_)) => {}
                // The call ended meanwhile: nothing to stop.
                Ok(Err(e)) if op == "analytics.stop" && e.code == ErrorCode::NotFound => {}
                Ok(Err(e)) => warn!(%req, "ACD: queue {op} refused: {}", e.message),
                Err(_) => warn!(%req, "ACD: queue {op} timed out"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn queue_analytics_start_and_stop_with_the_task() {
        let mut s = QueueAnalytics::default();
        let queued = |task: u64, on: bool| {
            json!({"event": "task.queued", "task": task, "tenant": "default", "queue": 1,
                "call": "c1", "leg": "from-1", "agitation_from_analytics": on})
        };
        // Not asked for, or no call: nothing.
        assert!(s.on_event(&queued(1, false)).is_empty());
        assert!(
            s.on_event(&json!({"event": "task.queued", "task": 2, "tenant": "default"}))
                .is_empty()
        );
        let start = s.on_event(&queued(1, true));
        assert_eq!(
            start,
            vec![AnalyticsAction::Start {
                call: "c1".into(),
                leg: Some("from-1".into()),
                task: 1,
                tenant: "default".into()
            }]
        );
        // Seen twice (a requeue into the same call): started once.
        assert!(s.on_event(&queued(1, true)).is_empty());
        // Another tenant's task 1 is another task.
        assert!(
            s.on_event(&json!({"event": "task.assigned", "task": 1, "tenant": "acme"}))
                .is_empty()
        );
        assert_eq!(
            s.on_event(&json!({"event": "task.assigned", "task": 1, "tenant": "default"})),
            vec![AnalyticsAction::Stop("c1".into())]
        );
        assert!(
            s.on_event(&json!({"event": "task.completed", "task": 1, "tenant": "default"}))
                .is_empty()
        );
        // Overflowing out of the option stops; a hang-up forgets without stopping.
        assert_eq!(s.on_event(&queued(3, true)).len(), 1);
        assert_eq!(
            s.on_event(
                &json!({"event": "task.overflowed", "task": 3, "tenant": "default",
                "from": 1, "to": 2, "call": "c1", "agitation_from_analytics": false})
            ),
            vec![AnalyticsAction::Stop("c1".into())]
        );
        assert_eq!(s.on_event(&queued(4, true)).len(), 1);
        assert!(
            s.on_event(&json!({"event": "call.deleted", "call": "c1"}))
                .is_empty()
        );
        assert!(s.running.is_empty());
    }

    #[test]
    fn tenants_hash_stably_onto_shards() {
        // FNV-1a reference values: the mapping must never change between builds.
        assert_eq!(
            shard_of("", 1 << 20),
            (0xcbf2_9ce4_8422_2325u64 % (1 << 20)) as usize
        );
        assert_eq!(
            shard_of("a", 1 << 20),
            (0xaf63_dc4c_8601_ec8cu64 % (1 << 20)) as usize
        );
        for n in 1..8 {
            for t in ["default", "acme", "x", "tenant-42"] {
                let k = shard_of(t, n);
                assert!(k < n);
                assert_eq!(k, shard_of(t, n));
            }
        }
        assert_eq!(shard_of("anything", 0), 0);
        // Names spread over the shards.
        let mut seen = [0usize; 3];
        for i in 0..300 {
            seen[shard_of(&format!("t{i}"), 3)] += 1;
        }
        assert!(seen.iter().all(|&c| c > 50), "{seen:?}");
    }
}
