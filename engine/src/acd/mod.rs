//! The ACD service: the [`switchboard_router::Router`] running inside the engine.
//!
//! ## Threads and queues
//!
//! * **`sb-acd`** (one thread, the router *shard*): owns the [`switchboard_router::Router`] and everything the
//!   engine keeps next to it (queue and agent definitions, per-task metadata such as the
//!   customer's call). It is fed by a bounded lock-free MPSC queue
//!   ([`crossbeam::channel`]) of requests, each carrying a [`tokio::sync::oneshot`] reply
//!   channel. It drives the router with the engine's monotonic clock, fires
//!   `Router::handle_timeout` at `Router::poll_timeout`, and turns every router event into
//!   a JSON event for the native control subscribers (topic `acd`). It never takes a lock.
//! * **`sb-acd-store`** (one thread): owns the SQLite connection (`acd.sqlite` in the state
//!   directory, WAL mode). The shard hands it batches of writes through a second bounded
//!   queue; it commits whatever has piled up in one transaction and only then sends the
//!   replies of the requests those writes belong to, so an acknowledged change is on disk
//!   (see [`store`]).
//! * On the control runtime, two small tasks: one forwards the shard's events (a bounded
//!   `tokio` channel, written with `try_send`) to the hub's broadcast, the other watches the
//!   hub's `call.deleted` / `media.timeout` events and tells the shard which calls are gone,
//!   so voice tasks of a hung-up call end at once.
//!
//! Connection tasks parse and check each request ([`ops`]) before queueing it, so the shard
//! only applies typed requests. `forecast.staffing` is pure arithmetic and runs on a blocking
//! thread of the control runtime, never on the shard.
//!
//! ## Time
//!
//! The router counts milliseconds from an epoch chosen at start-up: the earlier of the
//! engine's start and the oldest persisted task's enqueue time. Router time `t` is wall-clock
//! time `epoch + t`; the store keeps wall-clock enqueue times, so a restart maps them back
//! to router times and every restored task keeps its place in line.
//!
//! ## Recovery
//!
//! Before its first request the shard replays the store: queues (first without their
//! exits, then with them, so queues overflowing into each other restore in any order),
//! agents (those that were available come back away with reason `engine_restart`), then
//! every persisted non-voice task, oldest first, enqueued *at its original enqueue time* so
//! aging, routing steps, emotion windows and maximum waits count from then; a task that was
//! assigned waits first for the agent that held it. Persisted voice tasks end with
//! `task.ended`, reason `call_gone` (calls do not survive a restart). Finally the router is
//! advanced to now, firing every deadline that passed while the engine was down, each at its
//! own time.

pub mod metrics;
pub mod ops;
mod shard;
pub mod store;

use std::path::PathBuf;
use std::sync::Arc;
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

/// Requests queued to the shard before new ones are refused with `unavailable`.
pub const REQUEST_QUEUE: usize = 16 * 1024;
/// Write batches queued to the store thread before the shard waits for it.
pub const STORE_QUEUE: usize = 16 * 1024;
/// Events queued between the shard and the hub's broadcast before events are dropped.
pub const EVENT_QUEUE: usize = 64 * 1024;
/// The database file's name in the state directory.
pub const DB_FILE: &str = "acd.sqlite";

/// The reply to one request.
pub(crate) type Reply = oneshot::Sender<Result<Value, OpError>>;

/// One queued request and where its answer goes.
pub(crate) struct Envelope {
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
    /// Router limits.
    pub router: RouterConfig,
}

/// A cheap, cloneable handle on the ACD shard, usable from any thread.
#[derive(Clone)]
pub struct AcdHandle {
    tx: channel::Sender<Envelope>,
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
    /// Queues a request and waits for its reply.
    async fn call(&self, request: Request) -> Result<Value, OpError> {
        let (reply, rx) = oneshot::channel();
        self.post(request, Some(reply))?;
        rx.await
            .map_err(|_| unavailable("the ACD stopped before answering"))?
    }

    /// Queues a request without waiting; a full queue refuses it.
    fn post(&self, request: Request, reply: Option<Reply>) -> Result<(), OpError> {
        match self.tx.try_send(Envelope { request, reply }) {
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
    shard: Option<JoinHandle<()>>,
    writer: Option<JoinHandle<()>>,
}

impl AcdService {
    /// Opens the store, restores the persisted queues, agents and tasks, and starts the
    /// shard and store threads plus the event forwarders on the current `tokio` runtime.
    /// The shard replays the persisted state before it serves its first request.
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
        let (tx, rx) = channel::bounded(REQUEST_QUEUE);
        let (ev_tx, ev_rx) = mpsc::channel(EVENT_QUEUE);
        let shard = shard::spawn(
            shard::ShardConfig {
                epoch: config.epoch,
                router: config.router,
            },
            loaded,
            rx,
            store_tx,
            ev_tx,
            control_metrics.clone(),
        )
        .context("starting the ACD thread")?;
        let handle = AcdHandle {
            tx,
            metrics: control_metrics,
        };
        tokio::spawn(forward_events(hub.clone(), ev_rx));
        tokio::spawn(watch_calls(hub.clone(), handle.clone()));
        info!(db = %path.display(), "ACD started");
        Ok(AcdService {
            handle,
            shard: Some(shard),
            writer: Some(writer),
        })
    }

    /// A handle for the control plane.
    #[must_use]
    pub fn handle(&self) -> AcdHandle {
        self.handle.clone()
    }

    /// Stops the shard, lets the store thread commit what is queued, and waits for both.
    /// Call it outside the control runtime's threads (it blocks).
    pub fn shutdown(mut self) {
        // Requests queued before this one are still served.
        let _ = self.handle.tx.send(Envelope {
            request: Request::Shutdown,
            reply: None,
        });
        for (name, thread) in [("shard", self.shard.take()), ("store", self.writer.take())] {
            if let Some(t) = thread {
                if t.join().is_err() {
                    warn!(thread = name, "ACD thread panicked");
                }
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
    let request = ops::parse(op, req)?;
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
    acd.call(request).await
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
        let known = info["tags"]
            .as_array()
            .is_some_and(|tags| tags.iter().any(|t| t.as_str() == Some(leg)));
        if !known {
            return Err(OpError::new(
                ErrorCode::NotFound,
                format!("call `{call}` has no leg tagged `{leg}`"),
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

/// Tells the shard about calls that ended, so their voice tasks end too.
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
                let mut request = Request::CallGone(call.to_owned());
                // A full shard queue is retried: a hang-up must not be lost.
                loop {
                    match acd.tx.try_send(Envelope {
                        request,
                        reply: None,
                    }) {
                        Ok(()) => break,
                        Err(TrySendError::Full(env)) => {
                            request = env.request;
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        Err(TrySendError::Disconnected(_)) => return,
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
