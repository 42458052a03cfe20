//! A router shard: one thread that owns the tenants hashed to it, each a [`Router`] with
//! the engine's bookkeeping around it (definitions as given, per-task metadata, the calls of
//! voice tasks, ended tasks).
//!
//! ## Loop
//!
//! Wait on the request queue until the earliest next deadline of its tenants' routers
//! ([`Router::poll_timeout`]) or the next metrics publication (every [`PUBLISH_EVERY_MS`]);
//! fire due timers; serve a request and up to [`MAX_DRAIN`] more that are already queued;
//! after each, drain every router event of the request's tenant (publishing it and turning
//! it into store writes) and hand the writes with the reply to the store thread (a request
//! with no writes is answered at once).
//!
//! A tenant comes into being with its first `queue.create` or `agent.create` (at most
//! [`MAX_TENANTS`] per shard); a request to a tenant the shard does not hold is answered as
//! by an empty tenant (empty lists, `not_found`). Calls that ended are remembered per shard
//! (a voice task naming one is refused in every tenant).
//!
//! ## Recovery
//!
//! At start-up, before the first request, for each of its tenants:
//!
//! 1. queues are re-created at router time 0 (first without their exits, then with them, so
//!    queues that overflow into each other can be restored in any order);
//! 2. agents are re-created; those that were available come back **away** with reason
//!    `engine_restart` (logged in, so "no agents" exits do not fire, but taking no offers
//!    until their desk sets them available again); away and offline agents keep their
//!    status;
//! 3. every persisted non-voice task is enqueued again, oldest first, *at its original
//!    enqueue time* mapped to router time, so aging, routing steps, emotion windows and
//!    maximum waits count from then and the task keeps its place in line. A task that was
//!    assigned when the engine stopped waits first for the agent that held it (for
//!    [`RESTORE_PREFERRED_MS`] from the restart). A task that had overflowed is restored in
//!    the queue it was in, with that queue's clocks counted from its first enqueue time;
//! 4. every persisted voice task ends with `task.ended`, reason `call_gone` (calls do not
//!    survive a restart of the engine); a task that cannot be restored (its queue is gone)
//!    ends with reason `restore_failed`;
//! 5. the router is advanced to now, which fires every deadline that passed while the
//!    engine was down, each at its own time.
//!
//! Events of the recovery are published like any other (`task.queued` carries
//! `"restored": true`), and ended tasks stay visible through `task.get` for a while.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam::channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use serde_json::{Map, Value, json};
use switchboard_router::{
    AgentConfig, AgentId, AgentState, AwayReason, Channel, Event, EventRecord, ExitAction,
    LeaveReason, NewTask, PreferredAgent, Priority, QueueConfig, QueueId, RescindReason, Router,
    RouterConfig, RouterError, RoutingStep, Status, TaskId, TaskPhase, Timestamp,
};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::metrics::EXPORTED_QUEUES;
use super::ops::{
    AgentDef, DEFAULT_PREFERRED_TIMEOUT_MS, QueueDef, RESTART_AWAY_REASON, Request, TaskDef,
    TaskSpec, TaskUpdate, bad,
};
use super::store::{Batch, Loaded, StoreOp, TaskRow};
use super::{Envelope, Reply, ShardTotals};
use crate::control::native::{ErrorCode, OpError};
use crate::metrics::ControlMetrics;

/// How long a restored task that was assigned waits for the agent that held it.
pub const RESTORE_PREFERRED_MS: u64 = 60_000;
/// How often queue figures are published for `/metrics`.
pub const PUBLISH_EVERY_MS: u64 = 500;
/// Requests served back to back before timers and metrics get a turn.
pub const MAX_DRAIN: usize = 256;
/// Ended tasks remembered for `task.get`.
pub const MAX_ENDED: usize = 16_384;
/// Ended calls remembered, so a voice task naming one is refused.
pub const MAX_GONE_CALLS: usize = 4_096;
/// Tenants one shard holds; creating one more is refused with `limit_exceeded`.
pub const MAX_TENANTS: usize = 4_096;

pub(super) struct ShardConfig {
    pub(super) index: usize,
    pub(super) epoch: Instant,
    pub(super) router: RouterConfig,
    /// Whether tenant `default` (hashed here) exports its queues in `/metrics`.
    pub(super) metric_slots: bool,
    pub(super) totals: Arc<ShardTotals>,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, ms)
}

/// Router time from the engine's monotonic clock, and its mapping to wall-clock time.
///
/// Router time `t` is wall-clock time `wall_epoch + t` (milliseconds since 1970). The wall
/// epoch is the earlier of the engine's start and the oldest persisted enqueue time, so that
/// every restored task has a router time of its own, at or after zero.
#[derive(Debug, Clone, Copy)]
struct Clock {
    epoch: Instant,
    base_ms: u64,
    wall_epoch_ms: u64,
}

impl Clock {
    fn new(epoch: Instant, oldest_wall_ms: Option<u64>) -> Clock {
        let engine_start = wall_ms().saturating_sub(ms(epoch.elapsed()));
        let wall_epoch_ms = oldest_wall_ms.map_or(engine_start, |o| o.min(engine_start));
        Clock {
            epoch,
            base_ms: engine_start - wall_epoch_ms,
            wall_epoch_ms,
        }
    }

    fn now(&self) -> Timestamp {
        self.at_elapsed(ms(self.epoch.elapsed()))
    }

    /// Router time when the engine's clock reads `elapsed_ms` (one clock reading serves
    /// every tenant of a shard: they share the engine's epoch).
    fn at_elapsed(&self, elapsed_ms: u64) -> Timestamp {
        Timestamp(self.base_ms.saturating_add(elapsed_ms))
    }

    fn wall(&self, t: Timestamp) -> u64 {
        self.wall_epoch_ms.saturating_add(t.as_millis())
    }

    fn router_time(&self, wall_ms: u64) -> Timestamp {
        Timestamp(wall_ms.saturating_sub(self.wall_epoch_ms))
    }
}

struct QueueEntry {
    def: QueueDef,
    ord: u64,
    slot: Option<usize>,
}

struct AgentEntry {
    def: AgentDef,
    ord: u64,
    status: Status,
    state: AgentState,
}

struct TaskMeta {
    channel: Channel,
    queue: QueueId,
    enqueued_at_ms: u64,
    agitation: f64,
    spec: TaskSpec,
}

/// One tenant: its router and the engine's bookkeeping around it.
struct Tenant {
    name: Arc<str>,
    router: Router,
    clock: Clock,
    queues: BTreeMap<QueueId, QueueEntry>,
    agents: BTreeMap<AgentId, AgentEntry>,
    tasks: HashMap<TaskId, TaskMeta>,
    /// The agent's leg named by `offer.accept`, until the task is assigned.
    accept_legs: HashMap<TaskId, (String, String)>,
    calls: HashMap<String, Vec<TaskId>>,
    ended: HashMap<TaskId, Value>,
    ended_order: VecDeque<TaskId>,
    /// Why the task being cancelled ends (`cancelled`, `hangup`).
    end_reason: Option<(TaskId, &'static str)>,
    restoring: bool,
    ops: Vec<StoreOp>,
    store: Sender<Batch>,
    events: mpsc::Sender<Value>,
    metrics: Arc<ControlMetrics>,
    free_slots: Vec<usize>,
    by_state: [u64; 4],
    by_status: [u64; 3],
    next_task_seq: u64,
    next_queue_ord: u64,
    next_agent_ord: u64,
    event_seq: u64,
}

/// The shard: its tenants and what they share.
struct Shard {
    cfg: ShardConfig,
    tenants: HashMap<Arc<str>, Tenant>,
    gone: HashSet<String>,
    gone_order: VecDeque<String>,
    store: Sender<Batch>,
    events: mpsc::Sender<Value>,
    metrics: Arc<ControlMetrics>,
}

pub(super) fn spawn(
    cfg: ShardConfig,
    loaded: Vec<(String, Loaded)>,
    rx: Receiver<Envelope>,
    store: Sender<Batch>,
    events: mpsc::Sender<Value>,
    metrics: Arc<ControlMetrics>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("sb-acd-{}", cfg.index))
        .spawn(move || {
            let mut shard = Shard {
                cfg,
                tenants: HashMap::new(),
                gone: HashSet::new(),
                gone_order: VecDeque::new(),
                store,
                events,
                metrics,
            };
            for (name, l) in loaded {
                let mut t = shard.new_tenant(Arc::from(name.as_str()), &l);
                t.restore(l);
                shard.tenants.insert(t.name.clone(), t);
            }
            shard.run(&rx);
        })
}

impl Shard {
    fn new_tenant(&self, name: Arc<str>, loaded: &Loaded) -> Tenant {
        let oldest = loaded.tasks.iter().map(|t| t.enqueued_at_ms).min();
        let slots = self.cfg.metric_slots && &*name == super::ops::DEFAULT_TENANT;
        Tenant {
            name,
            router: Router::new(self.cfg.router.clone()),
            clock: Clock::new(self.cfg.epoch, oldest),
            queues: BTreeMap::new(),
            agents: BTreeMap::new(),
            tasks: HashMap::new(),
            accept_legs: HashMap::new(),
            calls: HashMap::new(),
            ended: HashMap::new(),
            ended_order: VecDeque::new(),
            end_reason: None,
            restoring: false,
            ops: Vec::new(),
            store: self.store.clone(),
            events: self.events.clone(),
            metrics: self.metrics.clone(),
            free_slots: if slots {
                (0..EXPORTED_QUEUES).rev().collect()
            } else {
                Vec::new()
            },
            by_state: [0; 4],
            by_status: [0; 3],
            next_task_seq: 0,
            next_queue_ord: 0,
            next_agent_ord: 0,
            event_seq: 0,
        }
    }

    fn run(&mut self, rx: &Receiver<Envelope>) {
        let mut next_publish = Instant::now();
        loop {
            let started = Instant::now();
            let publish = started >= next_publish;
            let mut wait = Duration::from_millis(PUBLISH_EVERY_MS);
            let elapsed = ms(started.saturating_duration_since(self.cfg.epoch));
            for t in self.tenants.values_mut() {
                let now = t.clock.at_elapsed(elapsed);
                if publish {
                    // Fresh figures need the router at `now`.
                    t.router.handle_timeout(now);
                    t.after_input(None);
                    t.publish_metrics();
                } else if t.router.poll_timeout().is_some_and(|d| d <= now) {
                    t.router.handle_timeout(now);
                    t.after_input(None);
                }
                if let Some(d) = t.router.poll_timeout() {
                    wait = wait.min(Duration::from_millis(d.millis_since(now)));
                }
            }
            if publish {
                self.publish_totals();
                next_publish = Instant::now() + Duration::from_millis(PUBLISH_EVERY_MS);
            }
            // Deadlines were measured at `started`; the time the timers took counts.
            let wait = wait
                .saturating_sub(started.elapsed())
                .min(next_publish.saturating_duration_since(Instant::now()));
            match rx.recv_timeout(wait) {
                Ok(env) => {
                    if !self.serve(env) {
                        break;
                    }
                    for _ in 0..MAX_DRAIN {
                        match rx.try_recv() {
                            Ok(env) => {
                                if !self.serve(env) {
                                    self.flush();
                                    return;
                                }
                            }
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        self.flush();
    }

    fn flush(&mut self) {
        for t in self.tenants.values_mut() {
            t.after_input(None);
        }
    }

    fn publish_totals(&self) {
        let mut mine = [0u64; 9];
        for t in self.tenants.values() {
            let add = |c: &mut u64, v: u64| *c = c.saturating_add(v);
            add(&mut mine[0], t.queues.len() as u64);
            add(&mut mine[1], t.router.task_count() as u64);
            for (i, v) in t.by_state.iter().chain(&t.by_status).enumerate() {
                add(&mut mine[2 + i], *v);
            }
        }
        self.cfg
            .totals
            .publish(self.cfg.index, mine, &self.metrics.acd);
    }

    /// Serves one request; false to stop.
    fn serve(&mut self, env: Envelope) -> bool {
        let Envelope {
            tenant,
            request,
            reply,
        } = env;
        match request {
            Request::Shutdown => return false,
            Request::CallGone(call) => {
                for t in self.tenants.values_mut() {
                    let now = t.clock.now();
                    t.call_gone(now, &call);
                    t.after_input(None);
                }
                self.remember_gone(call);
                if let Some(r) = reply {
                    let _ = r.send(Ok(Value::Null));
                }
                return true;
            }
            Request::TaskEnqueue(ref def) => {
                if let Some(call) = def.call.as_deref().filter(|c| self.gone.contains(*c)) {
                    let e = not_found(format!("call `{call}` has ended"));
                    if let Some(r) = reply {
                        let _ = r.send(Err(e));
                    }
                    return true;
                }
            }
            _ => {}
        }
        if let Some(t) = self.tenants.get_mut(&tenant) {
            let now = t.clock.now();
            let result = t.apply(now, request);
            t.after_input(reply.map(|r| (r, result)));
            return true;
        }
        // A tenant this shard does not hold: answered by an empty one, kept only when the
        // request created something in it.
        let creates = matches!(request, Request::QueueCreate(_) | Request::AgentCreate(_));
        if creates && self.tenants.len() >= MAX_TENANTS {
            if let Some(r) = reply {
                let _ = r.send(Err(OpError::new(
                    ErrorCode::LimitExceeded,
                    format!("this ACD shard already holds {MAX_TENANTS} tenants"),
                )));
            }
            return true;
        }
        let mut t = self.new_tenant(tenant, &Loaded::default());
        let now = t.clock.now();
        let result = t.apply(now, request);
        t.after_input(reply.map(|r| (r, result)));
        if !t.is_empty() {
            info!(tenant = %t.name, shard = self.cfg.index, "ACD tenant created");
            self.tenants.insert(t.name.clone(), t);
        }
        true
    }

    fn remember_gone(&mut self, call: String) {
        if self.gone.insert(call.clone()) {
            self.gone_order.push_back(call);
            while self.gone_order.len() > MAX_GONE_CALLS {
                if let Some(old) = self.gone_order.pop_front() {
                    self.gone.remove(&old);
                }
            }
        }
    }
}

fn code_of(e: &RouterError) -> ErrorCode {
    use RouterError as E;
    match e {
        E::UnknownAgent { .. } | E::UnknownQueue { .. } | E::UnknownTask { .. } => {
            ErrorCode::NotFound
        }
        E::DuplicateTask { .. }
        | E::NoSuchOffer { .. }
        | E::NotAssigned { .. }
        | E::AgentHasTasks { .. }
        | E::QueueNotEmpty { .. }
        | E::QueueInUse { .. } => ErrorCode::Conflict,
        E::QueueFull { .. } => ErrorCode::QueueFull,
        E::CapacityExceeded { .. } | E::TooManySkills { .. } => ErrorCode::LimitExceeded,
        _ => ErrorCode::BadRequest,
    }
}

/// The error's message followed by its causes (skipping a cause already quoted).
fn full_message(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cause = c.source();
    }
    s
}

fn router_error(e: &RouterError) -> OpError {
    OpError::new(code_of(e), full_message(e))
}

fn not_found(message: String) -> OpError {
    OpError::new(ErrorCode::NotFound, message)
}

fn conflict(message: String) -> OpError {
    OpError::new(ErrorCode::Conflict, message)
}

fn status_json(s: &Status) -> Value {
    match s {
        Status::Available => json!({"status": "available"}),
        Status::Away { reason } => {
            let reason = match reason {
                AwayReason::Code(c) => c.as_str(),
                AwayReason::MissedOffers => "missed_offers",
                _ => "other",
            };
            json!({"status": "away", "reason": reason})
        }
        Status::Offline => json!({"status": "offline"}),
    }
}

fn status_from_json(text: &str) -> Status {
    let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    match v["status"].as_str() {
        Some("available") => Status::Available,
        Some("away") => Status::Away {
            reason: match v["reason"].as_str() {
                Some("missed_offers") => AwayReason::MissedOffers,
                Some(r) => AwayReason::Code(r.to_owned()),
                None => AwayReason::Code("away".to_owned()),
            },
        },
        _ => Status::Offline,
    }
}

fn status_index(s: &Status) -> usize {
    match s {
        Status::Available => 0,
        Status::Away { .. } => 1,
        Status::Offline => 2,
    }
}

fn state_index(s: AgentState) -> usize {
    match s {
        AgentState::Idle => 0,
        AgentState::Reserved => 1,
        AgentState::Busy => 2,
        AgentState::WrapUp => 3,
    }
}

fn state_name(s: AgentState) -> &'static str {
    super::metrics::STATES[state_index(s)]
}

fn channel_from(name: &str) -> Option<Channel> {
    serde_json::from_value(Value::String(name.to_owned())).ok()
}

fn context_value(text: &str) -> Value {
    if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
    }
}

fn leave_reason(r: LeaveReason) -> &'static str {
    match r {
        LeaveReason::MaxWait => "max_wait",
        LeaveReason::NoAgents => "no_agents",
        LeaveReason::OverflowLimit => "overflow_limit",
        _ => "other",
    }
}

fn rescind_reason(r: RescindReason) -> &'static str {
    match r {
        RescindReason::AcceptedElsewhere => "accepted_elsewhere",
        RescindReason::TaskEnded => "task_ended",
        RescindReason::Overflowed => "overflowed",
        RescindReason::AgentUnavailable => "agent_unavailable",
        _ => "other",
    }
}

impl Tenant {
    // ------------------------------------------------------------------------------------
    // Replies and store
    // ------------------------------------------------------------------------------------

    /// Whether the tenant holds nothing worth keeping.
    fn is_empty(&self) -> bool {
        self.queues.is_empty() && self.agents.is_empty() && self.tasks.is_empty()
    }

    /// Drains the router's events, then hands the writes they caused (and the reply, which
    /// waits for their commit) to the store thread; with no writes the reply goes at once.
    fn after_input(&mut self, reply: Option<(Reply, Result<Value, OpError>)>) {
        self.drain_events();
        if self.ops.is_empty() {
            if let Some((r, v)) = reply {
                let _ = r.send(v);
            }
            return;
        }
        let batch = Batch {
            tenant: self.name.clone(),
            ops: std::mem::take(&mut self.ops),
            reply,
        };
        match self.store.try_send(batch) {
            Ok(()) => {}
            Err(TrySendError::Full(batch)) => {
                self.metrics.acd.count_store_wait();
                if let Err(e) = self.store.send(batch) {
                    answer_unstored(e.into_inner());
                }
            }
            Err(TrySendError::Disconnected(batch)) => answer_unstored(batch),
        }
    }

    fn drain_events(&mut self) {
        while let Some(rec) = self.router.poll_event() {
            self.on_event(rec);
        }
    }

    fn publish(&mut self, at: Timestamp, mut ev: Value) {
        if let Value::Object(m) = &mut ev {
            m.insert("tenant".into(), Value::String(self.name.to_string()));
            m.insert("seq".into(), self.event_seq.into());
            m.insert("at".into(), self.clock.wall(at).into());
        }
        self.event_seq += 1;
        self.metrics.acd.count_event();
        if self.events.try_send(ev).is_err() {
            self.metrics.acd.count_event_dropped();
        }
    }

    /// Publishes the figures of the queues holding a metrics slot (tenant `default`).
    fn publish_metrics(&mut self) {
        let m = &self.metrics.acd;
        for (id, q) in &self.queues {
            if let (Some(slot), Ok(s)) = (q.slot, self.router.queue_stats(*id)) {
                m.set_queue(slot, &s);
            }
        }
    }

    // ------------------------------------------------------------------------------------
    // Requests
    // ------------------------------------------------------------------------------------

    fn apply(&mut self, now: Timestamp, request: Request) -> Result<Value, OpError> {
        match request {
            Request::QueueCreate(def) => self.queue_create(now, *def),
            Request::QueueUpdate { queue, patch } => self.queue_update(now, queue, patch),
            Request::QueueDelete(id) => {
                self.router
                    .handle_remove_queue(now, id)
                    .map_err(|e| router_error(&e))?;
                if let Some(q) = self.queues.remove(&id) {
                    if let Some(slot) = q.slot {
                        self.metrics.acd.clear_queue(slot);
                        self.free_slots.push(slot);
                    }
                }
                self.ops.push(StoreOp::DeleteQueue { id: id.0 });
                Ok(json!({"queue": id.0, "deleted": true}))
            }
            Request::QueueGet(id) => {
                let q = self
                    .queues
                    .get(&id)
                    .ok_or_else(|| not_found(format!("no queue {}", id.0)))?;
                self.router.handle_timeout(now);
                let s = self.router.queue_stats(id).map_err(|e| router_error(&e))?;
                Ok(json!({"queue": q.def.to_json(), "waiting": s.waiting,
                    "offered_now": s.offered_now, "longest_wait_ms": s.longest_wait_ms}))
            }
            Request::QueueList => {
                let queues: Vec<Value> = self
                    .queues
                    .iter()
                    .map(|(id, q)| json!({"queue": id.0, "name": q.def.name}))
                    .collect();
                Ok(json!({"queues": queues}))
            }
            Request::QueueStats {
                queue,
                channel,
                priority,
            } => {
                self.router.handle_timeout(now);
                let s = self
                    .router
                    .queue_stats(queue)
                    .map_err(|e| router_error(&e))?;
                let expected = self
                    .router
                    .expected_wait(queue, channel, Priority(priority))
                    .map_err(|e| router_error(&e))?;
                let mut v = serde_json::to_value(&s).unwrap_or(Value::Null);
                if let Value::Object(m) = &mut v {
                    m.insert("queue".into(), queue.0.into());
                    m.insert("at".into(), self.clock.wall(s.at).into());
                    m.insert(
                        "expected_wait".into(),
                        json!({"channel": channel, "priority": priority, "ms": expected}),
                    );
                }
                Ok(json!({"stats": v}))
            }
            Request::AgentCreate(def) => self.agent_create(now, *def),
            Request::AgentUpdate { agent, patch } => self.agent_update(now, agent, patch),
            Request::AgentStatus { agent, status } => {
                self.router
                    .handle_status(now, agent, status)
                    .map_err(|e| router_error(&e))?;
                Ok(self.agent_json(agent))
            }
            Request::AgentGet(id) => {
                if !self.agents.contains_key(&id) {
                    return Err(not_found(format!("no agent {}", id.0)));
                }
                Ok(self.agent_json(id))
            }
            Request::AgentList => {
                let agents: Vec<Value> = self
                    .agents
                    .iter()
                    .map(|(id, a)| {
                        let mut v = status_json(&a.status);
                        v["agent"] = id.0.into();
                        v["state"] = state_name(a.state).into();
                        v
                    })
                    .collect();
                Ok(json!({"agents": agents}))
            }
            Request::AgentDelete(id) => {
                self.router
                    .handle_remove_agent(now, id)
                    .map_err(|e| router_error(&e))?;
                if let Some(a) = self.agents.remove(&id) {
                    self.count_agent(&a.status, a.state, -1);
                }
                self.ops.push(StoreOp::DeleteAgent { id: id.0 });
                Ok(json!({"agent": id.0, "deleted": true}))
            }
            Request::AgentEndWrapUp(id) => {
                self.router
                    .handle_end_wrap_up(now, id)
                    .map_err(|e| router_error(&e))?;
                Ok(self.agent_json(id))
            }
            Request::TaskEnqueue(def) => self.task_enqueue(now, *def),
            Request::TaskUpdate(u) => self.task_update(now, u),
            Request::TaskCancel(id) => {
                self.check_live(id)?;
                self.end_reason = Some((id, "cancelled"));
                let r = self.router.handle_cancel(now, id);
                self.drain_events();
                self.end_reason = None;
                r.map_err(|e| router_error(&e))?;
                Ok(self.task_json(id))
            }
            Request::TaskComplete(id) => {
                self.check_live(id)?;
                self.router
                    .handle_complete(now, id)
                    .map_err(|e| router_error(&e))?;
                self.drain_events();
                Ok(self.task_json(id))
            }
            Request::TaskGet(id) => {
                if self.tasks.contains_key(&id) || self.ended.contains_key(&id) {
                    Ok(self.task_json(id))
                } else {
                    Err(not_found(format!("no task {}", id.0)))
                }
            }
            Request::OfferAccept { task, agent, leg } => {
                self.check_live(task)?;
                if let Some(leg) = leg {
                    self.accept_legs.insert(task, leg);
                }
                let accepted = self.router.handle_accept(now, task, agent);
                self.drain_events();
                // Used by the task.assigned event drained above, or not at all.
                self.accept_legs.remove(&task);
                accepted.map_err(|e| router_error(&e))?;
                Ok(self.task_json(task))
            }
            Request::OfferReject { task, agent } => {
                self.check_live(task)?;
                self.router
                    .handle_reject(now, task, agent)
                    .map_err(|e| router_error(&e))?;
                self.drain_events();
                Ok(self.task_json(task))
            }
            Request::CallGone(call) => {
                self.call_gone(now, &call);
                Ok(Value::Null)
            }
            Request::Forecast(_) | Request::Shutdown => Err(bad("not an ACD shard request")),
        }
    }

    /// A task id the router knows; an ended one is a conflict, an unknown one not found.
    fn check_live(&self, id: TaskId) -> Result<(), OpError> {
        if self.tasks.contains_key(&id) {
            return Ok(());
        }
        match self.ended.get(&id) {
            Some(t) => Err(conflict(format!(
                "task {} has already ended ({})",
                id.0,
                t["end"].as_str().unwrap_or("ended")
            ))),
            None => Err(not_found(format!("no task {}", id.0))),
        }
    }

    fn queue_config(&mut self, d: &QueueDef) -> Result<QueueConfig, OpError> {
        let mut cfg = QueueConfig::new(QueueId(d.queue));
        let mut steps = Vec::with_capacity(d.steps.len());
        for (i, s) in d.steps.iter().enumerate() {
            let expr = self.router.parse_expr(&s.skills).map_err(|e| {
                OpError::new(
                    code_of(&e),
                    format!("`steps[{i}].skills`: {}", full_message(&e)),
                )
            })?;
            steps.push(RoutingStep {
                expr,
                expires_after_ms: s.expires_after_ms,
            });
        }
        cfg.steps = steps;
        cfg.strategy = d.strategy;
        cfg.service_level_ms = d.service_level_ms;
        cfg.aging_per_minute = d.aging_per_minute;
        cfg.max_wait = d
            .max_wait_ms
            .map(|ms| (ms, d.max_wait_action.unwrap_or(ExitAction::Leave)));
        cfg.when_no_agents = d.when_no_agents;
        cfg.max_length = d.max_length;
        cfg.wrap_up_ms = d.wrap_up_ms;
        cfg.offer_timeout_ms = d.offer_timeout_ms;
        cfg.reject_delay_ms = d.reject_delay_ms;
        cfg.emotion = d.emotion.map(|e| e.policy());
        Ok(cfg)
    }

    fn queue_create(&mut self, now: Timestamp, def: QueueDef) -> Result<Value, OpError> {
        let id = QueueId(def.queue);
        if self.queues.contains_key(&id) {
            return Err(conflict(format!(
                "queue {} already exists; use queue.update",
                id.0
            )));
        }
        let cfg = self.queue_config(&def)?;
        self.router
            .handle_upsert_queue(now, cfg)
            .map_err(|e| router_error(&e))?;
        let ord = self.next_queue_ord;
        self.next_queue_ord += 1;
        let json = def.to_json();
        self.ops.push(StoreOp::PutQueue {
            id: id.0,
            ord,
            def: json.to_string(),
        });
        let slot = self.free_slots.pop();
        self.queues.insert(id, QueueEntry { def, ord, slot });
        Ok(json!({"queue": json}))
    }

    fn queue_update(
        &mut self,
        now: Timestamp,
        id: QueueId,
        patch: Map<String, Value>,
    ) -> Result<Value, OpError> {
        let q = self
            .queues
            .get(&id)
            .ok_or_else(|| not_found(format!("no queue {}", id.0)))?;
        let mut base = q.def.to_json().as_object().cloned().unwrap_or_default();
        if patch.contains_key("skills") {
            base.remove("steps");
        }
        base.extend(patch);
        let def = QueueDef::from_map(base)?;
        let cfg = self.queue_config(&def)?;
        self.router
            .handle_upsert_queue(now, cfg)
            .map_err(|e| router_error(&e))?;
        let json = def.to_json();
        if let Some(q) = self.queues.get_mut(&id) {
            self.ops.push(StoreOp::PutQueue {
                id: id.0,
                ord: q.ord,
                def: json.to_string(),
            });
            q.def = def;
        }
        Ok(json!({"queue": json}))
    }

    fn agent_config(&mut self, d: &AgentDef) -> Result<AgentConfig, OpError> {
        let mut cfg = AgentConfig::new(AgentId(d.agent));
        cfg.skills = Vec::with_capacity(d.skills.len());
        for (name, level) in &d.skills {
            let skill = self.router.skill(name).map_err(|e| {
                OpError::new(code_of(&e), format!("`skills`: {}", full_message(&e)))
            })?;
            cfg.skills.push((skill, *level));
        }
        cfg.soothing = d.soothing()?;
        cfg.capacity = d.capacity;
        Ok(cfg)
    }

    fn agent_create(&mut self, now: Timestamp, def: AgentDef) -> Result<Value, OpError> {
        let id = AgentId(def.agent);
        if self.agents.contains_key(&id) {
            return Err(conflict(format!(
                "agent {} already exists; use agent.update",
                id.0
            )));
        }
        let cfg = self.agent_config(&def)?;
        self.router
            .handle_upsert_agent(now, cfg)
            .map_err(|e| router_error(&e))?;
        let ord = self.next_agent_ord;
        self.next_agent_ord += 1;
        self.ops.push(StoreOp::PutAgent {
            id: id.0,
            ord,
            def: def.to_json().to_string(),
        });
        self.count_agent(&Status::Offline, AgentState::Idle, 1);
        self.agents.insert(
            id,
            AgentEntry {
                def,
                ord,
                status: Status::Offline,
                state: AgentState::Idle,
            },
        );
        Ok(self.agent_json(id))
    }

    fn agent_update(
        &mut self,
        now: Timestamp,
        id: AgentId,
        patch: Map<String, Value>,
    ) -> Result<Value, OpError> {
        let a = self
            .agents
            .get(&id)
            .ok_or_else(|| not_found(format!("no agent {}", id.0)))?;
        let mut base = a.def.to_json().as_object().cloned().unwrap_or_default();
        base.extend(patch);
        let def = AgentDef::from_map(base)?;
        let cfg = self.agent_config(&def)?;
        self.router
            .handle_upsert_agent(now, cfg)
            .map_err(|e| router_error(&e))?;
        if let Some(a) = self.agents.get_mut(&id) {
            self.ops.push(StoreOp::PutAgent {
                id: id.0,
                ord: a.ord,
                def: def.to_json().to_string(),
            });
            a.def = def;
        }
        Ok(self.agent_json(id))
    }

    fn agent_json(&self, id: AgentId) -> Value {
        let Some(a) = self.agents.get(&id) else {
            return json!({"agent": id.0});
        };
        let mut v = json!({"agent": a.def.to_json()});
        if let Some(view) = self.router.agent_view(id) {
            let status = status_json(&view.status);
            v["status"] = status["status"].clone();
            if let Some(r) = status.get("reason") {
                v["reason"] = r.clone();
            }
            v["state"] = state_name(view.state).into();
            v["load"] = serde_json::to_value(view.load).unwrap_or(Value::Null);
            v["handled"] = view.handled.into();
            v["missed_in_row"] = view.missed_in_row.into();
        }
        v
    }

    fn count_agent(&mut self, status: &Status, state: AgentState, delta: i64) {
        let apply = |c: &mut u64| {
            *c = if delta < 0 {
                c.saturating_sub(delta.unsigned_abs())
            } else {
                c.saturating_add(delta.unsigned_abs())
            };
        };
        apply(&mut self.by_status[status_index(status)]);
        apply(&mut self.by_state[state_index(state)]);
    }

    /// The priority points of `tags` in queue `q`.
    fn tag_points(&self, q: QueueId, tags: &[String]) -> Result<u32, OpError> {
        let Some(queue) = self.queues.get(&q) else {
            return Ok(0);
        };
        let mut sum = 0u32;
        for tag in tags {
            let points = queue.def.value_tags.get(tag).ok_or_else(|| {
                bad(format!(
                    "unknown customer-value tag `{tag}` in queue {} (its tags: {:?})",
                    q.0,
                    queue.def.value_tags.keys().collect::<Vec<_>>()
                ))
            })?;
            sum = sum.saturating_add(*points);
        }
        Ok(sum)
    }

    fn task_enqueue(&mut self, now: Timestamp, def: TaskDef) -> Result<Value, OpError> {
        let id = TaskId(def.task);
        let queue = QueueId(def.queue);
        if self.tasks.contains_key(&id) {
            return Err(conflict(format!(
                "task {} is live; a task id may be reused once its task has ended",
                id.0
            )));
        }
        if !self.queues.contains_key(&queue) {
            return Err(not_found(format!("no queue {}", queue.0)));
        }
        let priority = def
            .priority
            .saturating_add(self.tag_points(queue, &def.tags)?);
        let required = match &def.skills {
            Some(text) => Some(self.router.parse_expr(text).map_err(|e| {
                OpError::new(code_of(&e), format!("`skills`: {}", full_message(&e)))
            })?),
            None => None,
        };
        let spec = TaskSpec::from(&def);
        let context = def.context_text();
        let new = NewTask {
            id,
            queue,
            channel: def.channel,
            priority: Priority(priority),
            agitation: def.agitation as f32,
            required,
            preferred: spec.preferred_agent.map(|a| PreferredAgent {
                agent: AgentId(a),
                timeout_ms: spec
                    .preferred_timeout_ms
                    .unwrap_or(DEFAULT_PREFERRED_TIMEOUT_MS),
            }),
            customer_leg: None,
            context: Arc::from(context.as_str()),
        };
        let enqueued_at_ms = self.clock.wall(now.max(self.router.now()));
        let seq = self.next_task_seq;
        let row = TaskRow {
            id: id.0,
            seq,
            queue: queue.0,
            channel: def.channel.to_string(),
            enqueued_at_ms,
            priority,
            agitation: def.agitation,
            spec: serde_json::to_string(&spec).unwrap_or_default(),
            context,
            agent: None,
        };
        self.insert_meta(
            id,
            TaskMeta {
                channel: def.channel,
                queue,
                enqueued_at_ms,
                agitation: def.agitation,
                spec,
            },
        );
        if let Err(e) = self.router.handle_enqueue(now, new) {
            self.remove_meta(id);
            return Err(router_error(&e));
        }
        self.next_task_seq += 1;
        self.ops.push(StoreOp::PutTask(row));
        self.drain_events();
        Ok(self.task_json(id))
    }

    fn insert_meta(&mut self, id: TaskId, meta: TaskMeta) {
        if let Some(call) = &meta.spec.call {
            self.calls.entry(call.clone()).or_default().push(id);
        }
        self.tasks.insert(id, meta);
    }

    fn remove_meta(&mut self, id: TaskId) -> Option<TaskMeta> {
        let meta = self.tasks.remove(&id)?;
        if let Some(call) = &meta.spec.call {
            if let Entry::Occupied(mut e) = self.calls.entry(call.clone()) {
                e.get_mut().retain(|t| *t != id);
                if e.get().is_empty() {
                    e.remove();
                }
            }
        }
        Some(meta)
    }

    fn task_update(&mut self, now: Timestamp, u: TaskUpdate) -> Result<Value, OpError> {
        let id = TaskId(u.task);
        self.check_live(id)?;
        let (queue, mut spec) = match self.tasks.get(&id) {
            Some(m) => (m.queue, m.spec.clone()),
            None => return Err(not_found(format!("no task {}", id.0))),
        };
        if let Some(p) = u.priority {
            spec.priority = p;
        }
        if let Some(tags) = &u.tags {
            spec.tags.clone_from(tags);
        }
        let priority = spec
            .priority
            .saturating_add(self.tag_points(queue, &spec.tags)?);
        if u.priority.is_some() || u.tags.is_some() {
            self.router
                .handle_priority(now, id, Priority(priority))
                .map_err(|e| router_error(&e))?;
        }
        if let Some(a) = u.agitation {
            self.router
                .handle_agitation(now, id, a as f32)
                .map_err(|e| router_error(&e))?;
        }
        let Some(meta) = self.tasks.get_mut(&id) else {
            return Ok(self.task_json(id));
        };
        if let Some(a) = u.agitation {
            meta.agitation = a;
        }
        meta.spec = spec;
        self.ops.push(StoreOp::UpdateTask {
            id: id.0,
            priority,
            agitation: meta.agitation,
            spec: serde_json::to_string(&meta.spec).unwrap_or_default(),
        });
        self.drain_events();
        Ok(self.task_json(id))
    }

    fn call_gone(&mut self, now: Timestamp, call: &str) {
        if let Some(tasks) = self.calls.get(call).cloned() {
            for t in tasks {
                self.end_reason = Some((t, "hangup"));
                let _ = self.router.handle_cancel(now, t);
                self.drain_events();
            }
            self.end_reason = None;
        }
    }

    fn task_json(&self, id: TaskId) -> Value {
        let Some(view) = self.router.task(id) else {
            return self
                .ended
                .get(&id)
                .cloned()
                .unwrap_or_else(|| json!({"task": id.0, "state": "ended"}));
        };
        let now = self.router.now();
        let mut v = json!({
            "task": id.0,
            "queue": view.queue.0,
            "channel": view.channel,
            "priority": view.priority.0,
            "effective_priority": view.effective_priority,
            "queued_at": self.clock.wall(view.queued_at),
            "waited_ms": now.millis_since(view.queued_at),
            "context": context_value(&view.context),
        });
        match view.phase {
            TaskPhase::Waiting { step } => {
                v["state"] = "waiting".into();
                v["step"] = step.into();
            }
            TaskPhase::Offered { agents } => {
                v["state"] = "offered".into();
                v["agents"] = agents.iter().map(|a| a.0).collect::<Vec<_>>().into();
            }
            TaskPhase::Assigned { agent } => {
                v["state"] = "assigned".into();
                v["agent"] = agent.0.into();
            }
            _ => v["state"] = "other".into(),
        }
        if let Some(m) = self.tasks.get(&id) {
            v["enqueued_at"] = m.enqueued_at_ms.into();
            v["agitation"] = m.agitation.into();
            if let Value::Object(spec) = serde_json::to_value(&m.spec).unwrap_or(Value::Null) {
                if let Value::Object(out) = &mut v {
                    out.extend(spec.into_iter().filter(|(k, _)| k != "priority"));
                }
            }
        }
        v
    }

    // ------------------------------------------------------------------------------------
    // Events
    // ------------------------------------------------------------------------------------

    fn call_leg(&self, task: TaskId) -> (Value, Value) {
        self.tasks
            .get(&task)
            .map_or((Value::Null, Value::Null), |m| {
                (
                    m.spec.call.clone().map_or(Value::Null, Value::from),
                    m.spec.leg.clone().map_or(Value::Null, Value::from),
                )
            })
    }

    /// Adds the task's `call` and `leg` to a `task.queued` / `task.overflowed` event, and
    /// `"agitation_from_analytics": true` when `queue` asks for it and the task names a call
    /// (the engine's analytics watcher starts or stops on it).
    fn mark_analytics(&self, v: &mut Value, task: TaskId, queue: QueueId) {
        let (call, leg) = self.call_leg(task);
        if call.is_null() {
            return;
        }
        let on = self
            .queues
            .get(&queue)
            .is_some_and(|q| q.def.agitation_from_analytics);
        if let Value::Object(o) = v {
            o.insert("call".into(), call);
            o.insert("leg".into(), leg);
            o.insert("agitation_from_analytics".into(), on.into());
        }
    }

    fn on_event(&mut self, rec: EventRecord) {
        let at = rec.at;
        let ev = match rec.event {
            Event::TaskQueued {
                task,
                queue,
                channel,
                priority,
            } => {
                let mut v = json!({"event": "task.queued", "task": task.0, "queue": queue.0,
                    "channel": channel, "priority": priority.0});
                if self.restoring {
                    v["restored"] = true.into();
                }
                self.mark_analytics(&mut v, task, queue);
                v
            }
            Event::TaskStepChanged { task, queue, step } => {
                json!({"event": "task.step", "task": task.0, "queue": queue.0, "step": step})
            }
            Event::TaskOffered {
                task,
                agent,
                queue,
                channel,
                expires_at,
                context,
            } => {
                let (call, leg) = self.call_leg(task);
                let expires = (expires_at != Timestamp::END).then(|| self.clock.wall(expires_at));
                json!({"event": "task.offered", "task": task.0, "agent": agent.0,
                    "queue": queue.0, "channel": channel, "expires_at": expires,
                    "timeout_ms": expires_at.millis_since(at).min(u64::MAX - 1),
                    "context": context_value(&context), "call": call, "leg": leg})
            }
            Event::OfferAccepted { task, agent } => {
                json!({"event": "offer.accepted", "task": task.0, "agent": agent.0})
            }
            Event::OfferRejected { task, agent } => {
                json!({"event": "offer.rejected", "task": task.0, "agent": agent.0})
            }
            Event::OfferTimedOut { task, agent } => {
                json!({"event": "offer.timeout", "task": task.0, "agent": agent.0})
            }
            Event::OfferRescinded {
                task,
                agent,
                reason,
            } => {
                json!({"event": "offer.rescinded", "task": task.0, "agent": agent.0,
                    "reason": rescind_reason(reason)})
            }
            Event::TaskAssigned {
                task,
                agent,
                queue,
                channel,
                waited_ms,
                ..
            } => {
                let (call, leg) = self.call_leg(task);
                let context = self
                    .router
                    .task(task)
                    .map_or(Value::Null, |t| context_value(&t.context));
                self.ops.push(StoreOp::SetTaskAgent {
                    id: task.0,
                    agent: agent.0,
                });
                let mut v = json!({"event": "task.assigned", "task": task.0, "agent": agent.0,
                    "queue": queue.0, "channel": channel, "waited_ms": waited_ms,
                    "call": call, "leg": leg, "context": context});
                let accepted_leg = self.accept_legs.remove(&task);
                if self.tasks.get(&task).is_some_and(|m| m.spec.bridge) {
                    let agent_leg = accepted_leg.or_else(|| {
                        let def = &self.agents.get(&agent)?.def;
                        Some((def.call.clone()?, def.leg.clone()?))
                    });
                    v["bridge"] = true.into();
                    if let Some((c, l)) = agent_leg {
                        v["agent_call"] = c.into();
                        v["agent_leg"] = l.into();
                    }
                }
                v
            }
            Event::TaskOverflowed { task, from, to } => {
                if let Some(m) = self.tasks.get_mut(&task) {
                    m.queue = to;
                }
                self.ops.push(StoreOp::MoveTask {
                    id: task.0,
                    queue: to.0,
                });
                let mut v =
                    json!({"event": "task.overflowed", "task": task.0, "from": from.0, "to": to.0});
                self.mark_analytics(&mut v, task, to);
                v
            }
            Event::TaskAbandoned {
                task,
                queue,
                waited_ms,
            } => {
                let reason = self.reason_for(task).unwrap_or("cancelled");
                self.end_task(at, task, queue, "abandoned", reason);
                json!({"event": "task.abandoned", "task": task.0, "queue": queue.0,
                    "waited_ms": waited_ms, "reason": reason})
            }
            Event::TaskLeft {
                task,
                queue,
                reason,
                waited_ms,
            } => {
                let reason = leave_reason(reason);
                self.end_task(at, task, queue, "left", reason);
                json!({"event": "task.left", "task": task.0, "queue": queue.0,
                    "waited_ms": waited_ms, "reason": reason})
            }
            Event::TaskCompleted { task, agent, queue } => {
                let reason = self.reason_for(task).unwrap_or("completed");
                self.end_task(at, task, queue, "completed", reason);
                json!({"event": "task.completed", "task": task.0, "agent": agent.0,
                    "queue": queue.0, "reason": reason})
            }
            Event::AgentStatusChanged { agent, status } => {
                let v = status_json(&status);
                if let Some(a) = self.agents.get_mut(&agent) {
                    let old = std::mem::replace(&mut a.status, status.clone());
                    let state = a.state;
                    self.count_agent(&old, state, -1);
                    self.count_agent(&status, state, 1);
                    self.ops.push(StoreOp::SetAgentStatus {
                        id: agent.0,
                        status: v.to_string(),
                    });
                }
                let mut ev = json!({"event": "agent.status", "agent": agent.0});
                if let (Value::Object(out), Value::Object(s)) = (&mut ev, v) {
                    out.extend(s);
                }
                ev
            }
            Event::AgentStateChanged { agent, state } => {
                if let Some(a) = self.agents.get_mut(&agent) {
                    let old = std::mem::replace(&mut a.state, state);
                    let status = a.status.clone();
                    self.count_agent(&status, old, -1);
                    self.count_agent(&status, state, 1);
                }
                json!({"event": "agent.state", "agent": agent.0, "state": state_name(state)})
            }
            other => json!({"event": "acd.other",
                "detail": serde_json::to_value(&other).unwrap_or(Value::Null)}),
        };
        self.publish(at, ev);
    }

    fn reason_for(&self, task: TaskId) -> Option<&'static str> {
        self.end_reason.and_then(|(t, r)| (t == task).then_some(r))
    }

    /// Forgets an ended task: its metadata and row go, a summary stays for `task.get`.
    fn end_task(&mut self, at: Timestamp, task: TaskId, queue: QueueId, end: &str, reason: &str) {
        let meta = self.remove_meta(task);
        self.ops.push(StoreOp::DeleteTask { id: task.0 });
        let mut v = json!({"task": task.0, "state": "ended", "end": end, "reason": reason,
            "queue": queue.0, "ended_at": self.clock.wall(at)});
        if let Some(m) = meta {
            v["channel"] = serde_json::to_value(m.channel).unwrap_or(Value::Null);
            v["enqueued_at"] = m.enqueued_at_ms.into();
            if let Some(c) = m.spec.call {
                v["call"] = c.into();
            }
        }
        self.remember_ended(task, v);
    }

    fn remember_ended(&mut self, task: TaskId, v: Value) {
        if self.ended.insert(task, v).is_none() {
            self.ended_order.push_back(task);
        }
        while self.ended_order.len() > MAX_ENDED {
            if let Some(old) = self.ended_order.pop_front() {
                if !self.tasks.contains_key(&old) {
                    self.ended.remove(&old);
                }
            }
        }
    }

    // ------------------------------------------------------------------------------------
    // Recovery
    // ------------------------------------------------------------------------------------

    fn restore(&mut self, loaded: Loaded) {
        self.restoring = true;
        let t0 = Timestamp::ZERO;
        let mut queues = Vec::new();
        for (id, ord, text) in loaded.queues {
            self.next_queue_ord = self.next_queue_ord.max(ord + 1);
            let parsed = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.as_object().cloned())
                .ok_or_else(|| bad("not a JSON object"))
                .and_then(QueueDef::from_map)
                .and_then(|d| self.queue_config(&d).map(|c| (d, c)));
            match parsed {
                Ok((def, cfg)) => {
                    let mut first = cfg.clone();
                    first.max_wait = None;
                    first.when_no_agents = None;
                    match self.router.handle_upsert_queue(t0, first) {
                        Ok(()) => queues.push((def, cfg, ord)),
                        Err(e) => warn!(queue = id, error = %e, "ACD: queue not restored"),
                    }
                }
                Err(e) => warn!(queue = id, error = %e.message, "ACD: queue not restored"),
            }
        }
        for (def, cfg, ord) in queues {
            let id = cfg.id;
            if let Err(e) = self.router.handle_upsert_queue(t0, cfg) {
                warn!(queue = id.0, error = %e, "ACD: queue restored without its exits");
            }
            let slot = self.free_slots.pop();
            self.queues.insert(id, QueueEntry { def, ord, slot });
        }
        for (id, ord, text, status) in loaded.agents {
            self.next_agent_ord = self.next_agent_ord.max(ord + 1);
            let parsed = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.as_object().cloned())
                .ok_or_else(|| bad("not a JSON object"))
                .and_then(AgentDef::from_map)
                .and_then(|d| self.agent_config(&d).map(|c| (d, c)));
            let (def, cfg) = match parsed {
                Ok(x) => x,
                Err(e) => {
                    warn!(agent = id, error = %e.message, "ACD: agent not restored");
                    continue;
                }
            };
            if let Err(e) = self.router.handle_upsert_agent(t0, cfg) {
                warn!(agent = id, error = %e, "ACD: agent not restored");
                continue;
            }
            self.count_agent(&Status::Offline, AgentState::Idle, 1);
            self.agents.insert(
                AgentId(id),
                AgentEntry {
                    def,
                    ord,
                    status: Status::Offline,
                    state: AgentState::Idle,
                },
            );
            let status = match status_from_json(&status) {
                Status::Available => Status::Away {
                    reason: AwayReason::Code(RESTART_AWAY_REASON.to_owned()),
                },
                other => other,
            };
            if status != Status::Offline {
                let _ = self.router.handle_status(t0, AgentId(id), status);
            }
        }
        self.drain_events();
        let now = self.clock.now();
        let (mut restored, mut ended) = (0u64, 0u64);
        for row in loaded.tasks {
            self.next_task_seq = self.next_task_seq.max(row.seq + 1);
            let at = self.clock.router_time(row.enqueued_at_ms).min(now);
            if self.restore_task(at, now, &row) {
                restored += 1;
            } else {
                ended += 1;
            }
            self.drain_events();
        }
        self.router.handle_timeout(now);
        self.drain_events();
        self.restoring = false;
        self.metrics.acd.count_restored(restored, ended);
        if restored + ended > 0 || !self.queues.is_empty() {
            info!(
                tenant = %self.name,
                queues = self.queues.len(),
                agents = self.agents.len(),
                restored,
                ended,
                "ACD state restored"
            );
        }
        self.after_input(None);
    }

    /// Puts one persisted task back in line at router time `at`; false if it ended instead.
    fn restore_task(&mut self, at: Timestamp, now: Timestamp, row: &TaskRow) -> bool {
        let id = TaskId(row.id);
        let queue = QueueId(row.queue);
        let channel = channel_from(&row.channel);
        let spec: TaskSpec = serde_json::from_str(&row.spec).unwrap_or_default();
        let reason = match channel {
            Some(Channel::Voice) => Some("call_gone"),
            None => Some("restore_failed"),
            Some(_) if !self.queues.contains_key(&queue) => Some("restore_failed"),
            Some(_) => None,
        };
        let (Some(channel), None) = (channel, reason) else {
            let reason = reason.unwrap_or("restore_failed");
            self.ops.push(StoreOp::DeleteTask { id: row.id });
            let (call, leg) = (spec.call.clone(), spec.leg.clone());
            let summary = json!({"task": row.id, "state": "ended", "end": "ended",
                "reason": reason, "queue": row.queue, "channel": row.channel,
                "enqueued_at": row.enqueued_at_ms, "ended_at": self.clock.wall(now),
                "call": call});
            self.remember_ended(id, summary);
            self.publish(
                now,
                json!({"event": "task.ended", "task": row.id, "queue": row.queue,
                    "channel": row.channel, "reason": reason, "call": call, "leg": leg}),
            );
            return false;
        };
        // Whom to wait for first: the agent that held the task, else the one it named.
        let held = row
            .agent
            .map(AgentId)
            .filter(|a| self.agents.contains_key(a))
            .map(|agent| PreferredAgent {
                agent,
                timeout_ms: now.millis_since(at).saturating_add(RESTORE_PREFERRED_MS),
            });
        let named = spec
            .preferred_agent
            .map(AgentId)
            .filter(|a| self.agents.contains_key(a))
            .map(|agent| PreferredAgent {
                agent,
                timeout_ms: spec
                    .preferred_timeout_ms
                    .unwrap_or(DEFAULT_PREFERRED_TIMEOUT_MS),
            });
        let required = spec
            .skills
            .as_deref()
            .and_then(|s| self.router.parse_expr(s).ok());
        let new = NewTask {
            id,
            queue,
            channel,
            priority: Priority(row.priority),
            agitation: row.agitation.clamp(0.0, 1.0) as f32,
            required,
            preferred: held.or(named),
            customer_leg: None,
            context: Arc::from(row.context.as_str()),
        };
        self.insert_meta(
            id,
            TaskMeta {
                channel,
                queue,
                enqueued_at_ms: row.enqueued_at_ms,
                agitation: row.agitation,
                spec,
            },
        );
        let mut result = self.router.handle_enqueue(at, new.clone());
        if result.is_err() {
            // A preference or requirement that no longer fits must not lose the task.
            let plain = NewTask {
                preferred: None,
                required: None,
                ..new
            };
            result = self.router.handle_enqueue(at, plain);
        }
        match result {
            Ok(()) => true,
            Err(e) => {
                warn!(task = row.id, error = %e, "ACD: task not restored");
                self.remove_meta(id);
                self.ops.push(StoreOp::DeleteTask { id: row.id });
                self.remember_ended(
                    id,
                    json!({"task": row.id, "state": "ended", "end": "ended",
                        "reason": "restore_failed", "queue": row.queue}),
                );
                self.publish(
                    now,
                    json!({"event": "task.ended", "task": row.id, "queue": row.queue,
                        "channel": row.channel, "reason": "restore_failed"}),
                );
                false
            }
        }
    }
}

/// The store thread is gone: answer anyway (the change is applied in memory).
fn answer_unstored(batch: Batch) {
    warn!(
        writes = batch.ops.len(),
        "ACD store thread is not running: writes lost"
    );
    if let Some((r, v)) = batch.reply {
        let _ = r.send(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_maps_wall_time_both_ways() {
        let epoch = Instant::now();
        let oldest = wall_ms() - 3_600_000;
        let c = Clock::new(epoch, Some(oldest));
        assert_eq!(c.router_time(oldest), Timestamp(0));
        assert_eq!(c.wall(c.router_time(oldest + 1234)), oldest + 1234);
        let now = c.now();
        assert!(now.as_millis() >= 3_600_000);
        let wall_now = c.wall(now);
        assert!(wall_now.abs_diff(wall_ms()) < 1_000);
        // Without persisted tasks the epoch is the engine's start.
        let c = Clock::new(epoch, None);
        assert!(c.now().as_millis() < 1_000);
        // A persisted time ahead of the clock (the wall clock went back) maps to now or later.
        let c = Clock::new(epoch, Some(wall_ms() + 60_000));
        assert!(c.router_time(wall_ms() + 60_000) >= c.now());
    }

    #[test]
    fn statuses_round_trip() {
        for s in [
            Status::Available,
            Status::Offline,
            Status::Away {
                reason: AwayReason::Code("lunch".into()),
            },
            Status::Away {
                reason: AwayReason::MissedOffers,
            },
        ] {
            assert_eq!(status_from_json(&status_json(&s).to_string()), s);
        }
    }
}
