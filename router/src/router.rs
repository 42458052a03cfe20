//! The router state machine: see [`Router`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::{
    AgentConfig, ExitAction, MAX_AGING_PER_MINUTE, MAX_STEPS, NewTask, QueueConfig, RouterConfig,
    Strategy,
};
use crate::error::{Limit, QueueProblem, RouterError};
use crate::event::{
    AgentState, AwayReason, Event, EventRecord, LeaveReason, RescindReason, Status,
};
use crate::expr::{SkillExpr, Skills};
use crate::idmap::IdMap;
use crate::stats::{AgentCounts, QueueStats, Window};
use crate::types::{
    AgentId, Channel, LegId, MAX_LEVEL, PerChannel, Priority, QueueId, SkillId, TaskId, Timestamp,
};

/// Effective priority is kept in units of 1/60 000 of a point, so that an aging rate in
/// points per minute is an integer number of units per millisecond.
const UNITS_PER_POINT: i128 = 60_000;

type Slot = u32;

/// Emptied offer lists kept for reuse.
const SPARE_OFFER_LISTS: usize = 1024;

/// A waiting task's place in line: ascending order is best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct LineKey {
    /// Minus the time-invariant part of the effective priority (see the crate docs).
    rank: i128,
    /// Global enqueue order: first come, first served among equals.
    seq: u64,
    slot: Slot,
}

/// A lane of waiting tasks in line order, with its best entry kept at hand: a freed agent
/// reads the head of every lane it belongs to, and a cached head spares a walk down each
/// tree (the lanes of a busy contact center hold thousands of tasks).
#[derive(Debug, Clone, Default)]
struct Lane {
    set: BTreeSet<LineKey>,
    head: Option<LineKey>,
}

impl Lane {
    fn insert(&mut self, key: LineKey) {
        if self.set.insert(key) && self.head.is_none_or(|h| key < h) {
            self.head = Some(key);
        }
    }

    fn remove(&mut self, key: &LineKey) {
        if self.set.remove(key) && self.head.as_ref() == Some(key) {
            self.head = self.set.first().copied();
        }
    }

    /// The best task in line.
    fn first(&self) -> Option<&LineKey> {
        self.head.as_ref()
    }
}

impl std::ops::Deref for Lane {
    type Target = BTreeSet<LineKey>;

    fn deref(&self) -> &BTreeSet<LineKey> {
        &self.set
    }
}

/// An agent's place in a pool: ascending order is the strategy's best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct PoolKey {
    primary: u64,
    secondary: u64,
    order: u64,
    slot: Slot,
}

/// A lane of tasks that carry their own extra skill requirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct ExtraLane {
    channel: u8,
    step: u16,
    emotion: bool,
    expr: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LanePos {
    Plain(u32),
    Extra(ExtraLane),
    Preferred(Slot),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKey {
    Agent(Slot),
    Offer(Slot),
    Task(Slot),
}

fn lane_index(step: u16, emotion: bool, channel: Channel) -> usize {
    (usize::from(step) * 2 + usize::from(emotion)) * Channel::COUNT + channel.index()
}

fn step_for(starts: &[u64], wait: u64) -> u16 {
    // starts[0] == 0, so the partition point is at least 1.
    (starts.partition_point(|&s| s <= wait).saturating_sub(1)) as u16
}

#[derive(Debug)]
struct Target {
    expr: SkillExpr,
    min_soothing: Option<u8>,
    positive: Vec<SkillId>,
}

impl Target {
    fn matches(&self, levels: &[u8], soothing: u8) -> bool {
        self.min_soothing.is_none_or(|m| soothing >= m) && self.expr.eval(levels)
    }

    fn score(&self, levels: &[u8]) -> u64 {
        self.positive
            .iter()
            .map(|s| u64::from(levels.get(s.index()).copied().unwrap_or(0)))
            .sum()
    }
}

#[derive(Debug)]
struct Queue {
    cfg: QueueConfig,
    starts: Vec<u64>,
    /// Index `step * 2 + emotion`.
    targets: Vec<Target>,
    lanes: Vec<Lane>,
    pools: Vec<BTreeSet<PoolKey>>,
    extra: BTreeMap<ExtraLane, BTreeSet<LineKey>>,
    preferred: BTreeSet<(Slot, u8, LineKey)>,
    members: BTreeSet<Slot>,
    logged_in: u32,
    in_line: u32,
    offered: u32,
    assigned: u32,
    arrivals: VecDeque<(Timestamp, u64, Slot)>,
    window: Window,
}

impl Queue {
    fn rate(&self) -> i128 {
        i128::from(self.cfg.aging_per_minute)
    }

    fn target(&self, step: u16, emotion: bool) -> Option<&Target> {
        self.targets
            .get(usize::from(step) * 2 + usize::from(emotion))
    }
}

#[derive(Debug, Clone, Copy)]
struct Membership {
    queue: u32,
    step: u16,
    emotion: bool,
    score: u64,
}

#[derive(Debug)]
struct Agent {
    id: AgentId,
    order: u64,
    skills: Vec<(SkillId, u8)>,
    levels: Vec<u8>,
    soothing: u8,
    capacity: PerChannel<u8>,
    status: Status,
    state: AgentState,
    load: PerChannel<u8>,
    offers: Vec<Slot>,
    assigned: Vec<Slot>,
    wrapups: Vec<(Channel, Timestamp)>,
    cooloff_until: Timestamp,
    missed: u32,
    idle_since: Timestamp,
    handled: u64,
    last_offer: u64,
    memberships: Vec<Membership>,
    member_queues: Vec<u32>,
    pool_entries: Vec<(u32, u32, PoolKey)>,
    preferred_queues: BTreeMap<u32, u32>,
    timer_at: Option<Timestamp>,
    dirty: bool,
}

impl Agent {
    fn takes_offers(&self, now: Timestamp) -> bool {
        self.status.is_available() && self.cooloff_until <= now
    }

    fn has_room(&self, channel: Channel) -> bool {
        self.load[channel] < self.capacity[channel]
    }

    fn occupancy_permille(&self) -> u64 {
        self.capacity
            .iter()
            .filter(|(_, cap)| *cap > 0)
            .map(|(c, cap)| u64::from(self.load[c]) * 1000 / u64::from(cap))
            .sum()
    }

    fn computed_state(&self) -> AgentState {
        if !self.assigned.is_empty() {
            AgentState::Busy
        } else if !self.offers.is_empty() {
            AgentState::Reserved
        } else if !self.wrapups.is_empty() {
            AgentState::WrapUp
        } else {
            AgentState::Idle
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Emotion {
    Calm,
    Active(Timestamp),
    Spent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Waiting(LanePos),
    /// Between states while the router moves it (never visible between inputs).
    Limbo,
    Offered,
    Assigned {
        agent: Slot,
        at: Timestamp,
    },
}

#[derive(Debug)]
struct Task {
    id: TaskId,
    seq: u64,
    queue: u32,
    channel: Channel,
    priority: Priority,
    agitation: f32,
    required: Option<u32>,
    /// Preferred agent: slot, its `order` (to detect a removed agent's reused slot), and
    /// the end of the preference.
    preferred: Option<(Slot, u64, Timestamp)>,
    customer_leg: Option<LegId>,
    context: Arc<str>,
    created_at: Timestamp,
    queued_at: Timestamp,
    hops: u8,
    step: u16,
    emotion: Emotion,
    phase: Phase,
    line: LineKey,
    offers: Vec<Slot>,
    ring: bool,
    timer_at: Option<Timestamp>,
    dirty: bool,
}

#[derive(Debug, Clone, Copy)]
struct Offer {
    task: Slot,
    agent: Slot,
    channel: Channel,
    expires_at: Timestamp,
}

/// A slab with a LIFO free list: deterministic slot reuse.
#[derive(Debug)]
struct Slab<T> {
    items: Vec<Option<T>>,
    free: Vec<Slot>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            items: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slab<T> {
    fn insert(&mut self, value: T) -> Slot {
        self.len += 1;
        if let Some(slot) = self.free.pop() {
            self.items[slot as usize] = Some(value);
            slot
        } else {
            self.items.push(Some(value));
            (self.items.len() - 1) as Slot
        }
    }

    fn remove(&mut self, slot: Slot) -> Option<T> {
        let v = self.items.get_mut(slot as usize)?.take()?;
        self.free.push(slot);
        self.len -= 1;
        Some(v)
    }

    fn get(&self, slot: Slot) -> Option<&T> {
        self.items.get(slot as usize)?.as_ref()
    }

    fn get_mut(&mut self, slot: Slot) -> Option<&mut T> {
        self.items.get_mut(slot as usize)?.as_mut()
    }

    fn iter(&self) -> impl Iterator<Item = (Slot, &T)> {
        self.items
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.as_ref().map(|t| (i as Slot, t)))
    }
}

/// One input to the router, for callers that queue inputs (the engine's shard threads).
/// [`Router::handle_input`] applies it; each variant matches one `handle_*` method.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Input {
    /// [`Router::handle_upsert_queue`].
    UpsertQueue(QueueConfig),
    /// [`Router::handle_remove_queue`].
    RemoveQueue(QueueId),
    /// [`Router::handle_upsert_agent`].
    UpsertAgent(AgentConfig),
    /// [`Router::handle_remove_agent`].
    RemoveAgent(AgentId),
    /// [`Router::handle_status`].
    SetStatus {
        /// The agent.
        agent: AgentId,
        /// Its new status.
        status: Status,
    },
    /// [`Router::handle_enqueue`].
    Enqueue(NewTask),
    /// [`Router::handle_priority`].
    SetPriority {
        /// The task.
        task: TaskId,
        /// Its new base priority.
        priority: Priority,
    },
    /// [`Router::handle_agitation`].
    SetAgitation {
        /// The task.
        task: TaskId,
        /// Its new agitation, 0..=1.
        agitation: f32,
    },
    /// [`Router::handle_accept`].
    Accept {
        /// The task.
        task: TaskId,
        /// The agent holding the offer.
        agent: AgentId,
    },
    /// [`Router::handle_reject`].
    Reject {
        /// The task.
        task: TaskId,
        /// The agent holding the offer.
        agent: AgentId,
    },
    /// [`Router::handle_cancel`].
    Cancel {
        /// The task.
        task: TaskId,
    },
    /// [`Router::handle_complete`].
    Complete {
        /// The task.
        task: TaskId,
    },
    /// [`Router::handle_end_wrap_up`].
    EndWrapUp {
        /// The agent.
        agent: AgentId,
    },
}

/// Where a live task is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TaskPhase {
    /// In line at this routing step.
    Waiting {
        /// The step's index.
        step: u16,
    },
    /// Reserved for these agents (more than one only in ring-all queues).
    Offered {
        /// The agents holding an offer.
        agents: Vec<AgentId>,
    },
    /// Handled by this agent.
    Assigned {
        /// The agent.
        agent: AgentId,
    },
}

/// A snapshot of a live task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskView {
    /// The task.
    pub id: TaskId,
    /// Its current queue.
    pub queue: QueueId,
    /// Its channel.
    pub channel: Channel,
    /// Base priority.
    pub priority: Priority,
    /// Effective priority now (base plus aging), in points.
    pub effective_priority: f64,
    /// Agitation, 0..=1.
    pub agitation: f32,
    /// Where it is.
    pub phase: TaskPhase,
    /// When it was first enqueued.
    pub created_at: Timestamp,
    /// When it entered its current queue.
    pub queued_at: Timestamp,
    /// The customer's leg.
    pub customer_leg: Option<LegId>,
    /// The context blob.
    pub context: Arc<str>,
}

/// A snapshot of an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentView {
    /// The agent.
    pub id: AgentId,
    /// Its own choice.
    pub status: Status,
    /// What the router did.
    pub state: AgentState,
    /// Reservations, tasks and wrap-ups per channel.
    pub load: PerChannel<u8>,
    /// Capacity per channel.
    pub capacity: PerChannel<u8>,
    /// Tasks completed since the agent was added.
    pub handled: u64,
    /// Offers timed out in a row.
    pub missed_in_row: u32,
}

/// The ACD router: agents, queues, tasks and offers as a deterministic state machine.
///
/// # Drive contract
///
/// * **Mutate** with the `handle_*` methods (or [`handle_input`](Router::handle_input)),
///   each taking the current time. A call first fires every timer due up to `now`, each *at
///   its own deadline* (so results do not depend on how late the caller polls), then applies
///   the input and makes every match it allows. An input that returns an error changes
///   nothing (apart from the timers that fell due).
/// * **Drain** [`poll_event`](Router::poll_event) until `None` after every call. Events come
///   in one total order ([`EventRecord::seq`]).
/// * **Wait** until [`poll_timeout`](Router::poll_timeout) (offer timeouts, step expiries,
///   wrap-up ends, reject delays, preferred-agent and emotion windows, maximum waits), then
///   call [`handle_timeout`](Router::handle_timeout). `None` means nothing is scheduled.
///
/// Time never goes backwards: a `now` earlier than one already seen counts as the latest.
/// The router reads no clock, spawns nothing, holds no lock and never iterates a hash map,
/// so the same inputs at the same times give the same events.
#[derive(Debug)]
pub struct Router {
    cfg: RouterConfig,
    now: Timestamp,
    skills: Skills,
    queues: Vec<Option<Queue>>,
    queue_ids: BTreeMap<QueueId, u32>,
    agents: Slab<Agent>,
    agent_ids: IdMap<AgentId, Slot>,
    tasks: Slab<Task>,
    task_ids: IdMap<TaskId, Slot>,
    offers: Slab<Offer>,
    exprs: Vec<Option<(SkillExpr, u32)>>,
    expr_ids: BTreeMap<SkillExpr, u32>,
    timers: BTreeSet<(Timestamp, TimerKey)>,
    dirty_tasks: Vec<Slot>,
    dirty_agents: VecDeque<Slot>,
    /// Emptied offer lists of ended tasks, reused by new tasks (no allocation per task).
    spare_offer_lists: Vec<Vec<Slot>>,
    /// The context of every task enqueued without one: one shared, warm allocation
    /// instead of one per task, touched (and dropped) at the task's end.
    empty_context: Arc<str>,
    events: VecDeque<EventRecord>,
    next_event: u64,
    next_task_seq: u64,
    next_agent_order: u64,
    next_offer_seq: u64,
    #[cfg(test)]
    pub(crate) audit: Vec<String>,
}

impl Router {
    /// An empty router.
    #[must_use]
    pub fn new(cfg: RouterConfig) -> Self {
        Router {
            cfg,
            now: Timestamp::ZERO,
            skills: Skills::new(),
            queues: Vec::new(),
            queue_ids: BTreeMap::new(),
            agents: Slab::default(),
            agent_ids: IdMap::default(),
            tasks: Slab::default(),
            task_ids: IdMap::default(),
            offers: Slab::default(),
            exprs: Vec::new(),
            expr_ids: BTreeMap::new(),
            timers: BTreeSet::new(),
            dirty_tasks: Vec::new(),
            dirty_agents: VecDeque::new(),
            spare_offer_lists: Vec::new(),
            empty_context: Arc::from(""),
            events: VecDeque::new(),
            next_event: 0,
            next_task_seq: 0,
            next_agent_order: 0,
            next_offer_seq: 0,
            #[cfg(test)]
            audit: Vec::new(),
        }
    }

    // ----------------------------------------------------------------------------------
    // Public surface
    // ----------------------------------------------------------------------------------

    /// The router's time: the latest `now` handled.
    #[must_use]
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// The skill registry.
    #[must_use]
    pub fn skills(&self) -> &Skills {
        &self.skills
    }

    /// The id of a skill name, registering it if new.
    ///
    /// # Errors
    /// As [`Skills::intern`].
    pub fn skill(&mut self, name: &str) -> Result<SkillId, RouterError> {
        self.skills.intern(name)
    }

    /// Parses a skill expression, registering its skill names.
    ///
    /// # Errors
    /// [`RouterError::InvalidExpression`].
    pub fn parse_expr(&mut self, text: &str) -> Result<SkillExpr, RouterError> {
        SkillExpr::parse(text, &mut self.skills)
            .map_err(|source| RouterError::InvalidExpression { source })
    }

    /// The next event, in order.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<EventRecord> {
        self.events.pop_front()
    }

    /// The earliest deadline at which [`handle_timeout`](Router::handle_timeout) has work.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// Fires every timer due up to `now`.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        self.advance(now);
    }

    /// Applies one [`Input`].
    ///
    /// # Errors
    /// Those of the matching `handle_*` method.
    pub fn handle_input(&mut self, now: Timestamp, input: Input) -> Result<(), RouterError> {
        match input {
            Input::UpsertQueue(q) => self.handle_upsert_queue(now, q),
            Input::RemoveQueue(q) => self.handle_remove_queue(now, q),
            Input::UpsertAgent(a) => self.handle_upsert_agent(now, a),
            Input::RemoveAgent(a) => self.handle_remove_agent(now, a),
            Input::SetStatus { agent, status } => self.handle_status(now, agent, status),
            Input::Enqueue(t) => self.handle_enqueue(now, t),
            Input::SetPriority { task, priority } => self.handle_priority(now, task, priority),
            Input::SetAgitation { task, agitation } => self.handle_agitation(now, task, agitation),
            Input::Accept { task, agent } => self.handle_accept(now, task, agent),
            Input::Reject { task, agent } => self.handle_reject(now, task, agent),
            Input::Cancel { task } => self.handle_cancel(now, task),
            Input::Complete { task } => self.handle_complete(now, task),
            Input::EndWrapUp { agent } => self.handle_end_wrap_up(now, agent),
        }
    }

    /// Adds a queue or replaces its definition. Waiting tasks keep their places in line and
    /// are re-evaluated against the new steps.
    ///
    /// # Errors
    /// [`RouterError::InvalidQueue`], or [`RouterError::CapacityExceeded`] for a new queue
    /// beyond [`RouterConfig::max_queues`].
    pub fn handle_upsert_queue(
        &mut self,
        now: Timestamp,
        cfg: QueueConfig,
    ) -> Result<(), RouterError> {
        self.advance(now);
        let (starts, targets) = self.validate_queue(&cfg)?;
        let existing = self.queue_ids.get(&cfg.id).copied();
        if existing.is_none() && self.queue_ids.len() >= self.cfg.max_queues {
            return Err(RouterError::CapacityExceeded {
                what: Limit::Queues,
                limit: self.cfg.max_queues,
            });
        }
        let lane_count = starts.len() * 2 * Channel::COUNT;
        // Every agent may change membership: take them all out of the pools first.
        let all_agents: Vec<Slot> = self.agents.iter().map(|(s, _)| s).collect();
        for &a in &all_agents {
            self.mark_agent_dirty(a);
        }
        let q = match existing {
            Some(q) => {
                // Pull every waiting task out; they go back in after the change.
                let waiting = self.waiting_tasks_of(q);
                for &t in &waiting {
                    self.take_out_of_line(t);
                }
                for &a in &all_agents {
                    self.leave_queue(a, q);
                }
                if let Some(queue) = self.queue_mut(q) {
                    queue.cfg = cfg;
                    queue.starts = starts;
                    queue.targets = targets;
                    queue.lanes = vec![Lane::default(); lane_count];
                    queue.pools = vec![BTreeSet::new(); lane_count];
                    queue.extra.clear();
                    queue.preferred.clear();
                }
                for &a in &all_agents {
                    self.join_queue(a, q);
                }
                for &t in &waiting {
                    self.relane(t);
                }
                q
            }
            None => {
                let queue = Queue {
                    window: Window::new(self.cfg.stats_window_ms, self.cfg.stats_buckets),
                    cfg,
                    starts,
                    targets,
                    lanes: vec![Lane::default(); lane_count],
                    pools: vec![BTreeSet::new(); lane_count],
                    extra: BTreeMap::new(),
                    preferred: BTreeSet::new(),
                    members: BTreeSet::new(),
                    logged_in: 0,
                    in_line: 0,
                    offered: 0,
                    assigned: 0,
                    arrivals: VecDeque::new(),
                };
                let id = queue.cfg.id;
                let q = match self.queues.iter().position(Option::is_none) {
                    Some(free) => {
                        self.queues[free] = Some(queue);
                        free as u32
                    }
                    None => {
                        self.queues.push(Some(queue));
                        (self.queues.len() - 1) as u32
                    }
                };
                self.queue_ids.insert(id, q);
                for &a in &all_agents {
                    self.join_queue(a, q);
                }
                q
            }
        };
        self.apply_no_agents(q);
        self.settle();
        Ok(())
    }

    /// Removes an empty queue.
    ///
    /// # Errors
    /// [`RouterError::UnknownQueue`], [`RouterError::QueueNotEmpty`] while it holds live
    /// tasks, [`RouterError::QueueInUse`] while another queue overflows into it.
    pub fn handle_remove_queue(&mut self, now: Timestamp, id: QueueId) -> Result<(), RouterError> {
        self.advance(now);
        let q = self.queue_slot(id)?;
        let queue = self
            .queue(q)
            .ok_or(RouterError::UnknownQueue { queue: id })?;
        let live = queue.in_line + queue.offered + queue.assigned;
        if live > 0 {
            return Err(RouterError::QueueNotEmpty {
                queue: id,
                tasks: live as usize,
            });
        }
        for other in self.queues.iter().flatten() {
            let refers = |a: Option<ExitAction>| a == Some(ExitAction::Overflow(id));
            if other.cfg.id != id
                && (refers(other.cfg.when_no_agents) || refers(other.cfg.max_wait.map(|m| m.1)))
            {
                return Err(RouterError::QueueInUse {
                    queue: id,
                    by: other.cfg.id,
                });
            }
        }
        let members: Vec<Slot> = queue.members.iter().copied().collect();
        for &a in &members {
            self.mark_agent_dirty(a);
            self.leave_queue(a, q);
        }
        self.queues[q as usize] = None;
        self.queue_ids.remove(&id);
        self.settle();
        Ok(())
    }

    /// Adds an agent (offline, idle) or updates its skills, soothing and capacity, keeping
    /// its status, state and tasks.
    ///
    /// # Errors
    /// [`RouterError::DuplicateSkill`], [`RouterError::InvalidLevel`],
    /// [`RouterError::UnknownSkill`], or [`RouterError::CapacityExceeded`].
    pub fn handle_upsert_agent(
        &mut self,
        now: Timestamp,
        cfg: AgentConfig,
    ) -> Result<(), RouterError> {
        self.advance(now);
        let mut skills = cfg.skills.clone();
        skills.sort_unstable();
        for pair in skills.windows(2) {
            if pair[0].0 == pair[1].0 {
                return Err(RouterError::DuplicateSkill {
                    agent: cfg.id,
                    skill: pair[0].0,
                });
            }
        }
        for &(skill, level) in &skills {
            if skill.index() >= self.skills.len() {
                return Err(RouterError::UnknownSkill { skill });
            }
            if level == 0 || level > MAX_LEVEL {
                return Err(RouterError::InvalidLevel {
                    agent: cfg.id,
                    level,
                });
            }
        }
        if cfg.soothing > MAX_LEVEL {
            return Err(RouterError::InvalidLevel {
                agent: cfg.id,
                level: cfg.soothing,
            });
        }
        let mut levels = vec![0u8; skills.last().map_or(0, |s| s.0.index() + 1)];
        for &(skill, level) in &skills {
            levels[skill.index()] = level;
        }
        let a = match self.agent_ids.get(&cfg.id) {
            Some(&a) => {
                self.mark_agent_dirty(a);
                let queues = self.agents.get(a).map(|x| x.member_queues.clone());
                for q in queues.unwrap_or_default() {
                    self.leave_queue(a, q);
                }
                if let Some(agent) = self.agents.get_mut(a) {
                    agent.skills = skills;
                    agent.levels = levels;
                    agent.soothing = cfg.soothing;
                    agent.capacity = cfg.capacity;
                }
                a
            }
            None => {
                if self.agents.len >= self.cfg.max_agents {
                    return Err(RouterError::CapacityExceeded {
                        what: Limit::Agents,
                        limit: self.cfg.max_agents,
                    });
                }
                let order = self.next_agent_order;
                self.next_agent_order += 1;
                let a = self.agents.insert(Agent {
                    id: cfg.id,
                    order,
                    skills,
                    levels,
                    soothing: cfg.soothing,
                    capacity: cfg.capacity,
                    status: Status::Offline,
                    state: AgentState::Idle,
                    load: PerChannel::default(),
                    offers: Vec::new(),
                    assigned: Vec::new(),
                    wrapups: Vec::new(),
                    cooloff_until: Timestamp::ZERO,
                    missed: 0,
                    idle_since: self.now,
                    handled: 0,
                    last_offer: 0,
                    memberships: Vec::new(),
                    member_queues: Vec::new(),
                    pool_entries: Vec::new(),
                    preferred_queues: BTreeMap::new(),
                    timer_at: None,
                    dirty: false,
                });
                self.agent_ids.insert(cfg.id, a);
                self.mark_agent_dirty(a);
                a
            }
        };
        let queues: Vec<u32> = (0..self.queues.len() as u32).collect();
        for q in queues {
            self.join_queue(a, q);
        }
        for q in 0..self.queues.len() as u32 {
            self.apply_no_agents(q);
        }
        self.settle();
        Ok(())
    }

    /// Removes an agent. Outstanding offers are rescinded and wrap-up is dropped; tasks that
    /// preferred it fall back to normal routing.
    ///
    /// # Errors
    /// [`RouterError::UnknownAgent`], or [`RouterError::AgentHasTasks`] while it handles
    /// tasks.
    pub fn handle_remove_agent(&mut self, now: Timestamp, id: AgentId) -> Result<(), RouterError> {
        self.advance(now);
        let a = self.agent_slot(id)?;
        let agent = self
            .agent(a)
            .ok_or(RouterError::UnknownAgent { agent: id })?;
        if !agent.assigned.is_empty() {
            return Err(RouterError::AgentHasTasks {
                agent: id,
                tasks: agent.assigned.len(),
            });
        }
        self.set_status(a, Status::Offline);
        self.mark_agent_dirty(a);
        let preferring: Vec<u32> = self
            .agent(a)
            .map(|x| x.preferred_queues.keys().copied().collect())
            .unwrap_or_default();
        let mut tasks = Vec::new();
        for q in preferring {
            if let Some(queue) = self.queue(q) {
                tasks.extend(
                    queue
                        .preferred
                        .range((a, 0, LineKey::MIN)..=(a, u8::MAX, LineKey::MAX))
                        .map(|e| e.2.slot),
                );
            }
        }
        let queues = self.agents.get(a).map(|x| x.member_queues.clone());
        for q in queues.unwrap_or_default() {
            self.leave_queue(a, q);
        }
        if let Some(mut agent) = self.agents.remove(a) {
            if let Some(at) = agent.timer_at.take() {
                self.timers.remove(&(at, TimerKey::Agent(a)));
            }
        }
        self.agent_ids.remove(&id);
        self.dirty_agents.retain(|&x| x != a);
        for t in tasks {
            if let Some(task) = self.tasks.get_mut(t) {
                task.preferred = None;
            }
            self.relane(t);
        }
        self.settle();
        Ok(())
    }

    /// Sets an agent's status. Away and offline rescind its outstanding offers (the tasks go
    /// back to their places in line); tasks in hand continue.
    ///
    /// # Errors
    /// [`RouterError::UnknownAgent`].
    pub fn handle_status(
        &mut self,
        now: Timestamp,
        id: AgentId,
        status: Status,
    ) -> Result<(), RouterError> {
        self.advance(now);
        let a = self.agent_slot(id)?;
        self.set_status(a, status);
        self.settle();
        Ok(())
    }

    /// Enqueues a task.
    ///
    /// # Errors
    /// [`RouterError::UnknownQueue`], [`RouterError::DuplicateTask`],
    /// [`RouterError::InvalidAgitation`], [`RouterError::InvalidExpression`] /
    /// [`RouterError::UnknownSkill`] for the extra requirement,
    /// [`RouterError::UnknownAgent`] for the preferred agent, [`RouterError::QueueFull`],
    /// or [`RouterError::CapacityExceeded`].
    pub fn handle_enqueue(&mut self, now: Timestamp, new: NewTask) -> Result<(), RouterError> {
        self.advance(now);
        let q = self.queue_slot(new.queue)?;
        if self.task_ids.contains_key(&new.id) {
            return Err(RouterError::DuplicateTask { task: new.id });
        }
        check_agitation(new.id, new.agitation)?;
        if let Some(expr) = &new.required {
            self.check_expr(expr)?;
        }
        let preferred = match new.preferred {
            Some(p) => {
                let a = self.agent_slot(p.agent)?;
                let order = self.agent(a).map_or(0, |x| x.order);
                Some((a, order, self.now.saturating_add_ms(p.timeout_ms)))
            }
            None => None,
        };
        if self.tasks.len >= self.cfg.max_tasks {
            return Err(RouterError::CapacityExceeded {
                what: Limit::Tasks,
                limit: self.cfg.max_tasks,
            });
        }
        if let Some(queue) = self.queue(q) {
            if let Some(max) = queue.cfg.max_length {
                if queue.in_line + queue.offered >= max {
                    return Err(RouterError::QueueFull {
                        queue: new.queue,
                        max,
                    });
                }
            }
        }
        let required = new.required.map(|e| self.intern_expr(e));
        let offers = self.spare_offer_lists.pop().unwrap_or_default();
        let context = if new.context.is_empty() {
            self.empty_context.clone()
        } else {
            new.context
        };
        let seq = self.next_task_seq;
        self.next_task_seq += 1;
        let t = self.tasks.insert(Task {
            id: new.id,
            seq,
            queue: q,
            channel: new.channel,
            priority: new.priority,
            agitation: new.agitation,
            required,
            preferred,
            customer_leg: new.customer_leg,
            context,
            created_at: self.now,
            queued_at: self.now,
            hops: 0,
            step: 0,
            emotion: Emotion::Calm,
            phase: Phase::Limbo,
            line: LineKey {
                rank: 0,
                seq,
                slot: 0,
            },
            offers,
            ring: false,
            timer_at: None,
            dirty: false,
        });
        self.task_ids.insert(new.id, t);
        self.enter_queue(t, q);
        self.settle();
        Ok(())
    }

    /// Changes a live task's base priority. A waiting task moves to its new place in line
    /// (keeping its enqueue time, so aging still counts).
    ///
    /// # Errors
    /// [`RouterError::UnknownTask`].
    pub fn handle_priority(
        &mut self,
        now: Timestamp,
        id: TaskId,
        priority: Priority,
    ) -> Result<(), RouterError> {
        self.advance(now);
        let t = self.task_slot(id)?;
        let waiting = self.is_waiting(t);
        if waiting {
            self.take_out_of_line(t);
        }
        if let Some(task) = self.tasks.get_mut(t) {
            task.priority = priority;
        }
        if waiting {
            self.put_in_line(t);
        }
        self.settle();
        Ok(())
    }

    /// Changes a live task's agitation (0..=1), which may start or stop its queue's emotion
    /// policy.
    ///
    /// # Errors
    /// [`RouterError::UnknownTask`], [`RouterError::InvalidAgitation`].
    pub fn handle_agitation(
        &mut self,
        now: Timestamp,
        id: TaskId,
        agitation: f32,
    ) -> Result<(), RouterError> {
        self.advance(now);
        let t = self.task_slot(id)?;
        check_agitation(id, agitation)?;
        if let Some(task) = self.tasks.get_mut(t) {
            task.agitation = agitation;
        }
        if self.is_waiting(t) {
            self.relane(t);
        }
        self.settle();
        Ok(())
    }

    /// The agent accepts its offer of the task: the task is assigned, and in a ring-all
    /// queue every other offer of it is rescinded.
    ///
    /// # Errors
    /// [`RouterError::UnknownTask`], [`RouterError::UnknownAgent`],
    /// [`RouterError::NoSuchOffer`].
    pub fn handle_accept(
        &mut self,
        now: Timestamp,
        task: TaskId,
        agent: AgentId,
    ) -> Result<(), RouterError> {
        self.advance(now);
        let (t, a, o) = self.find_offer(task, agent)?;
        self.drop_offer(o);
        self.push(Event::OfferAccepted { task, agent });
        let others: Vec<Slot> = self
            .tasks
            .get(t)
            .map(|x| x.offers.clone())
            .unwrap_or_default();
        for other in others {
            self.rescind(other, RescindReason::AcceptedElsewhere);
        }
        let Some(tk) = self.tasks.get_mut(t) else {
            return Ok(());
        };
        tk.phase = Phase::Assigned {
            agent: a,
            at: self.now,
        };
        let (q, channel, leg, queued_at) = (tk.queue, tk.channel, tk.customer_leg, tk.queued_at);
        let waited = self.now.millis_since(queued_at);
        let now = self.now;
        if let Some(queue) = self.queue_mut(q) {
            queue.offered -= 1;
            queue.assigned += 1;
            let in_sl = waited <= queue.cfg.service_level_ms;
            queue.window.record(now, |c| {
                c.answered += 1;
                c.answered_in_sl += u64::from(in_sl);
                c.answered_wait_ms = c.answered_wait_ms.saturating_add(waited);
            });
        }
        self.clean_arrivals(q, t);
        if let Some(ag) = self.agents.get_mut(a) {
            ag.assigned.push(t);
            ag.missed = 0;
        }
        let queue_id = self.queue_id(q);
        self.push(Event::TaskAssigned {
            task,
            agent,
            queue: queue_id,
            channel,
            customer_leg: leg,
            waited_ms: waited,
        });
        self.sync_state(a);
        self.settle();
        Ok(())
    }

    /// The agent rejects its offer: the task goes back to its place in line and the agent
    /// gets no offers for the queue's reject delay.
    ///
    /// # Errors
    /// As [`handle_accept`](Router::handle_accept).
    pub fn handle_reject(
        &mut self,
        now: Timestamp,
        task: TaskId,
        agent: AgentId,
    ) -> Result<(), RouterError> {
        self.advance(now);
        let (_, _, o) = self.find_offer(task, agent)?;
        self.end_offer(o, false);
        self.settle();
        Ok(())
    }

    /// The customer hung up or the task was withdrawn: a waiting or offered task ends as
    /// abandoned (all its offers rescinded at once); an assigned task is completed.
    ///
    /// # Errors
    /// [`RouterError::UnknownTask`].
    pub fn handle_cancel(&mut self, now: Timestamp, id: TaskId) -> Result<(), RouterError> {
        self.advance(now);
        let t = self.task_slot(id)?;
        let phase = self.tasks.get(t).map(|x| x.phase);
        match phase {
            Some(Phase::Assigned { .. }) => self.complete(t),
            Some(_) => {
                self.leave_queue_position(t, RescindReason::TaskEnded);
                let (q, waited) = self.task_queue_wait(t);
                let now = self.now;
                if let Some(queue) = self.queue_mut(q) {
                    queue.window.record(now, |c| c.abandoned += 1);
                }
                let queue = self.queue_id(q);
                self.push(Event::TaskAbandoned {
                    task: id,
                    queue,
                    waited_ms: waited,
                });
                self.free_task(t);
            }
            None => {}
        }
        self.settle();
        Ok(())
    }

    /// The agent finished the task: it ends, and the agent wraps up on that channel for the
    /// queue's wrap-up time.
    ///
    /// # Errors
    /// [`RouterError::UnknownTask`], [`RouterError::NotAssigned`].
    pub fn handle_complete(&mut self, now: Timestamp, id: TaskId) -> Result<(), RouterError> {
        self.advance(now);
        let t = self.task_slot(id)?;
        if !matches!(
            self.tasks.get(t).map(|x| x.phase),
            Some(Phase::Assigned { .. })
        ) {
            return Err(RouterError::NotAssigned { task: id });
        }
        self.complete(t);
        self.settle();
        Ok(())
    }

    /// The agent ends all its wrap-ups early.
    ///
    /// # Errors
    /// [`RouterError::UnknownAgent`].
    pub fn handle_end_wrap_up(&mut self, now: Timestamp, id: AgentId) -> Result<(), RouterError> {
        self.advance(now);
        let a = self.agent_slot(id)?;
        self.end_wrap_ups(a, Timestamp(u64::MAX));
        self.settle();
        Ok(())
    }

    /// A snapshot of a live task.
    #[must_use]
    pub fn task(&self, id: TaskId) -> Option<TaskView> {
        let t = *self.task_ids.get(&id)?;
        let task = self.tasks.get(t)?;
        let queue = self.queue(task.queue)?;
        let phase = match task.phase {
            Phase::Waiting(_) | Phase::Limbo => TaskPhase::Waiting { step: task.step },
            Phase::Offered => TaskPhase::Offered {
                agents: task
                    .offers
                    .iter()
                    .filter_map(|&o| self.offers.get(o))
                    .filter_map(|o| self.agent(o.agent).map(|a| a.id))
                    .collect(),
            },
            Phase::Assigned { agent, .. } => TaskPhase::Assigned {
                agent: self.agent(agent).map_or(AgentId(u64::MAX), |a| a.id),
            },
        };
        let eff = -task.line.rank + i128::from(self.now.as_millis()) * queue.rate();
        Some(TaskView {
            id,
            queue: queue.cfg.id,
            channel: task.channel,
            priority: task.priority,
            effective_priority: eff as f64 / UNITS_PER_POINT as f64,
            agitation: task.agitation,
            phase,
            created_at: task.created_at,
            queued_at: task.queued_at,
            customer_leg: task.customer_leg,
            context: task.context.clone(),
        })
    }

    /// A snapshot of an agent.
    #[must_use]
    pub fn agent_view(&self, id: AgentId) -> Option<AgentView> {
        let a = self.agent(*self.agent_ids.get(&id)?)?;
        Some(AgentView {
            id,
            status: a.status.clone(),
            state: a.state,
            load: a.load,
            capacity: a.capacity,
            handled: a.handled,
            missed_in_row: a.missed,
        })
    }

    /// The ids of all queues, in order.
    pub fn queue_ids(&self) -> impl Iterator<Item = QueueId> + '_ {
        self.queue_ids.keys().copied()
    }

    /// Live task count.
    #[must_use]
    pub fn task_count(&self) -> usize {
        self.tasks.len
    }

    /// Agent count.
    #[must_use]
    pub fn agent_count(&self) -> usize {
        self.agents.len
    }

    /// A queue's statistics as of the router's time ([`now`](Router::now)); call
    /// [`handle_timeout`](Router::handle_timeout) first for fresh figures. Costs
    /// O(eligible agents + window buckets).
    ///
    /// # Errors
    /// [`RouterError::UnknownQueue`].
    pub fn queue_stats(&self, id: QueueId) -> Result<QueueStats, RouterError> {
        let q = self.queue_slot(id)?;
        let queue = self
            .queue(q)
            .ok_or(RouterError::UnknownQueue { queue: id })?;
        let longest = queue
            .arrivals
            .iter()
            .find(|e| self.arrival_valid(q, e))
            .map_or(0, |e| self.now.millis_since(e.0));
        let mut agents = AgentCounts::default();
        let (mut occupied, mut staffed) = (0u32, 0u32);
        for a in queue.members.iter().filter_map(|&a| self.agent(a)) {
            agents.members += 1;
            match a.status {
                Status::Available => agents.available += 1,
                Status::Away { .. } => agents.away += 1,
                Status::Offline => agents.offline += 1,
            }
            let logged_in = a.status.is_logged_in();
            match a.state {
                AgentState::Idle if logged_in => agents.idle += 1,
                AgentState::Reserved if logged_in => agents.reserved += 1,
                AgentState::Busy => agents.busy += 1,
                AgentState::WrapUp => agents.wrap_up += 1,
                _ => {}
            }
            let engaged = a.state != AgentState::Idle;
            if a.status.is_available() || engaged {
                staffed += 1;
                occupied += u32::from(engaged);
            }
        }
        Ok(QueueStats {
            queue: id,
            at: self.now,
            waiting: queue.in_line,
            offered_now: queue.offered,
            longest_wait_ms: longest,
            agents,
            occupancy: (staffed > 0).then(|| f64::from(occupied) / f64::from(staffed)),
            window_ms: queue.window.window_ms(),
            window: queue.window.sum(self.now).period(),
            total: queue.window.total.period(),
        })
    }

    /// Expected wait, in milliseconds, for a task of this channel and priority queued now:
    /// 0 if an eligible agent is free; otherwise `(tasks ahead + 1) × AHT / servers`, where
    /// servers are the eligible agents' capacity on the channel among those available or
    /// engaged (the expected time for that many completions when all servers are busy and
    /// handle times are exponential). `None` without handle-time history or servers. Costs
    /// O(tasks ahead).
    ///
    /// # Errors
    /// [`RouterError::UnknownQueue`].
    pub fn expected_wait(
        &self,
        id: QueueId,
        channel: Channel,
        priority: Priority,
    ) -> Result<Option<u64>, RouterError> {
        let q = self.queue_slot(id)?;
        let queue = self
            .queue(q)
            .ok_or(RouterError::UnknownQueue { queue: id })?;
        if queue
            .pools
            .get(lane_index(0, false, channel))
            .is_some_and(|p| !p.is_empty())
        {
            return Ok(Some(0));
        }
        let window = queue.window.sum(self.now).period();
        let Some(aht) = window.aht_ms.or(queue.window.total.period().aht_ms) else {
            return Ok(None);
        };
        let servers: u64 = queue
            .members
            .iter()
            .filter_map(|&a| self.agent(a))
            .filter(|a| a.status.is_available() || a.state != AgentState::Idle)
            .map(|a| u64::from(a.capacity[channel]))
            .sum();
        if servers == 0 {
            return Ok(None);
        }
        let probe = LineKey {
            rank: -(i128::from(priority.0) * UNITS_PER_POINT
                - i128::from(self.now.as_millis()) * queue.rate()),
            seq: u64::MAX,
            slot: Slot::MAX,
        };
        let mut ahead = 0u64;
        for step in 0..queue.starts.len() as u16 {
            for emotion in [false, true] {
                if let Some(lane) = queue.lanes.get(lane_index(step, emotion, channel)) {
                    ahead += lane.range(..probe).count() as u64;
                }
            }
        }
        for (k, lane) in &queue.extra {
            if k.channel as usize == channel.index() {
                ahead += lane.range(..probe).count() as u64;
            }
        }
        Ok(Some(
            ((ahead + 1) as f64 * aht / servers as f64).round() as u64
        ))
    }

    // ----------------------------------------------------------------------------------
    // Time
    // ----------------------------------------------------------------------------------

    fn advance(&mut self, now: Timestamp) {
        let now = now.max(self.now);
        while let Some(&(at, _)) = self.timers.first() {
            if at > now {
                break;
            }
            self.now = at.max(self.now);
            // Everything due at the same instant changes together, then matching runs.
            while let Some(&(due, key)) = self.timers.first() {
                if due != at {
                    break;
                }
                self.timers.pop_first();
                self.fire(key);
            }
            self.settle();
        }
        self.now = now;
    }

    fn fire(&mut self, key: TimerKey) {
        match key {
            TimerKey::Agent(a) => {
                if let Some(agent) = self.agents.get_mut(a) {
                    agent.timer_at = None;
                } else {
                    return;
                }
                self.end_wrap_ups(a, self.now);
                self.mark_agent_dirty(a);
                self.reschedule_agent(a);
            }
            TimerKey::Offer(o) => {
                if self.offers.get(o).is_some() {
                    self.end_offer(o, true);
                }
            }
            TimerKey::Task(t) => {
                if let Some(task) = self.tasks.get_mut(t) {
                    task.timer_at = None;
                } else {
                    return;
                }
                if self.is_waiting(t) {
                    self.relane(t);
                }
            }
        }
    }

    fn set_timer(&mut self, key: TimerKey, old: Option<Timestamp>, new: Option<Timestamp>) {
        if old == new {
            return;
        }
        if let Some(at) = old {
            self.timers.remove(&(at, key));
        }
        if let Some(at) = new {
            self.timers.insert((at, key));
        }
    }

    fn reschedule_agent(&mut self, a: Slot) {
        let Some(agent) = self.agents.get_mut(a) else {
            return;
        };
        let now = self.now;
        let cool = (agent.cooloff_until > now).then_some(agent.cooloff_until);
        let wrap = agent.wrapups.iter().map(|w| w.1).min();
        let new = match (cool, wrap) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        }
        .filter(|at| *at != Timestamp::END);
        let old = std::mem::replace(&mut agent.timer_at, new);
        self.set_timer(TimerKey::Agent(a), old, new);
    }

    /// The next moment a waiting task's routing changes by itself.
    fn task_deadline(&self, t: Slot) -> Option<Timestamp> {
        let task = self.tasks.get(t)?;
        let queue = self.queue(task.queue)?;
        let mut next = None::<Timestamp>;
        let mut consider = |at: Timestamp| next = Some(next.map_or(at, |n| n.min(at)));
        if let Some(start) = queue.starts.get(usize::from(task.step) + 1) {
            consider(task.queued_at.saturating_add_ms(*start));
        }
        if let Some((after, _)) = queue.cfg.max_wait {
            consider(task.queued_at.saturating_add_ms(after));
        }
        if let Emotion::Active(until) = task.emotion {
            consider(until);
        }
        if let Some((_, _, until)) = task.preferred {
            consider(until);
        }
        next.filter(|at| *at != Timestamp::END)
    }

    fn reschedule_task(&mut self, t: Slot) {
        let new = if self.is_waiting(t) {
            self.task_deadline(t)
        } else {
            None
        };
        let Some(task) = self.tasks.get_mut(t) else {
            return;
        };
        let old = std::mem::replace(&mut task.timer_at, new);
        self.set_timer(TimerKey::Task(t), old, new);
    }

    // ----------------------------------------------------------------------------------
    // Matching
    // ----------------------------------------------------------------------------------

    /// Makes every match the last change allows: dirty tasks (best first) look for an agent
    /// in the pools, then dirty agents (in the order they changed) look for tasks in the
    /// lanes and finally rejoin the pools. Afterwards no waiting task has an eligible agent
    /// with room that takes offers.
    fn settle(&mut self) {
        loop {
            if !self.dirty_tasks.is_empty() {
                let best = self
                    .dirty_tasks
                    .iter()
                    .enumerate()
                    .max_by(|(_, x), (_, y)| {
                        let kx = self.task_order_key(**x);
                        let ky = self.task_order_key(**y);
                        ky.cmp(&kx)
                    })
                    .map_or(0, |(i, _)| i);
                let t = self.dirty_tasks.swap_remove(best);
                if let Some(task) = self.tasks.get_mut(t) {
                    task.dirty = false;
                    self.match_task(t);
                }
            } else if let Some(a) = self.dirty_agents.pop_front() {
                if let Some(agent) = self.agents.get_mut(a) {
                    agent.dirty = false;
                    self.match_agent(a);
                }
            } else {
                break;
            }
        }
    }

    /// (−effective priority now, seq): ascending is best first, comparable across queues.
    fn task_order_key(&self, t: Slot) -> (i128, u64) {
        let Some(task) = self.tasks.get(t) else {
            return (i128::MAX, u64::MAX);
        };
        let rate = self.queue(task.queue).map_or(0, Queue::rate);
        (
            task.line.rank - i128::from(self.now.as_millis()) * rate,
            task.seq,
        )
    }

    fn match_task(&mut self, t: Slot) {
        let Some(task) = self.tasks.get(t) else {
            return;
        };
        let Phase::Waiting(pos) = task.phase else {
            return;
        };
        let channel = task.channel;
        let now = self.now;
        let Some(queue) = self.queue(task.queue) else {
            return;
        };
        let ring = queue.cfg.strategy == Strategy::RingAll;
        let mut chosen: Vec<Slot> = Vec::new();
        match pos {
            LanePos::Preferred(a) => {
                if let Some(agent) = self.agent(a) {
                    if agent.takes_offers(now) && agent.has_room(channel) && !agent.dirty {
                        chosen.push(a);
                    }
                }
            }
            LanePos::Plain(_) | LanePos::Extra(_) => {
                let emotion = self.emotion_applies(task);
                let extra = task
                    .required
                    .and_then(|e| self.exprs.get(e as usize)?.as_ref());
                if let Some(pool) = queue.pools.get(lane_index(task.step, emotion, channel)) {
                    for key in pool {
                        let ok = match extra {
                            None => true,
                            Some((e, _)) => self
                                .agent(key.slot)
                                .is_some_and(|agent| e.eval(&agent.levels)),
                        };
                        if ok {
                            chosen.push(key.slot);
                            if !ring {
                                break;
                            }
                        }
                    }
                }
            }
        }
        if chosen.is_empty() {
            return;
        }
        #[cfg(test)]
        self.audit_task_choice(t, &chosen);
        self.offer(t, &chosen, None);
    }

    fn match_agent(&mut self, a: Slot) {
        while let Some(t) = self.best_task_for(a) {
            #[cfg(test)]
            self.audit_agent_choice(a, t);
            self.offer(t, &[a], Some(a));
        }
        self.index_agent(a);
    }

    fn best_task_for(&self, a: Slot) -> Option<Slot> {
        let agent = self.agent(a)?;
        if !agent.takes_offers(self.now) {
            return None;
        }
        let now = i128::from(self.now.as_millis());
        let mut best: Option<(i128, u64, Slot)> = None;
        let mut consider = |key: &LineKey, rate: i128| {
            let k = (key.rank - now * rate, key.seq, key.slot);
            if best.is_none_or(|b| (k.0, k.1) < (b.0, b.1)) {
                best = Some(k);
            }
        };
        for channel in Channel::ALL {
            if !agent.has_room(channel) {
                continue;
            }
            for m in &agent.memberships {
                let Some(queue) = self.queue(m.queue) else {
                    continue;
                };
                if let Some(first) = queue
                    .lanes
                    .get(lane_index(m.step, m.emotion, channel))
                    .and_then(Lane::first)
                {
                    consider(first, queue.rate());
                }
            }
            for &q in &agent.member_queues {
                let Some(queue) = self.queue(q) else {
                    continue;
                };
                if queue.extra.is_empty() {
                    continue;
                }
                let lo = ExtraLane {
                    channel: channel.index() as u8,
                    step: 0,
                    emotion: false,
                    expr: 0,
                };
                let hi = ExtraLane {
                    channel: channel.index() as u8,
                    step: u16::MAX,
                    emotion: true,
                    expr: u32::MAX,
                };
                for (k, lane) in queue.extra.range(lo..=hi) {
                    let fits = queue
                        .target(k.step, k.emotion)
                        .is_some_and(|tg| tg.matches(&agent.levels, agent.soothing))
                        && self
                            .exprs
                            .get(k.expr as usize)
                            .and_then(Option::as_ref)
                            .is_some_and(|(e, _)| e.eval(&agent.levels));
                    if fits {
                        if let Some(first) = lane.first() {
                            consider(first, queue.rate());
                        }
                    }
                }
            }
            for &q in agent.preferred_queues.keys() {
                let Some(queue) = self.queue(q) else {
                    continue;
                };
                let c = channel.index() as u8;
                if let Some(e) = queue
                    .preferred
                    .range((a, c, LineKey::MIN)..=(a, c, LineKey::MAX))
                    .next()
                {
                    consider(&e.2, queue.rate());
                }
            }
        }
        best.map(|b| b.2)
    }

    fn pool_key(strategy: Strategy, agent: &Agent, slot: Slot, score: u64) -> PoolKey {
        let idle = agent.idle_since.as_millis();
        let (primary, secondary) = match strategy {
            Strategy::LongestIdle | Strategy::RingAll => (idle, 0),
            Strategy::MostSkilled => (u64::MAX - score, idle),
            Strategy::LeastOccupied => (agent.occupancy_permille(), idle),
            Strategy::RoundRobin => (agent.last_offer, idle),
            Strategy::FewestTasks => (agent.handled, idle),
        };
        PoolKey {
            primary,
            secondary,
            order: agent.order,
            slot,
        }
    }

    /// Puts a settled agent into the pools of every channel it has room on.
    fn index_agent(&mut self, a: Slot) {
        let Some(agent) = self.agents.get_mut(a) else {
            return;
        };
        if agent.dirty || !agent.pool_entries.is_empty() || !agent.takes_offers(self.now) {
            return;
        }
        let mut entries = std::mem::take(&mut agent.pool_entries);
        for channel in Channel::ALL {
            if !agent.has_room(channel) {
                continue;
            }
            for m in &agent.memberships {
                let Some(Some(queue)) = self.queues.get_mut(m.queue as usize) else {
                    continue;
                };
                let key = Self::pool_key(queue.cfg.strategy, agent, a, m.score);
                let idx = lane_index(m.step, m.emotion, channel);
                if let Some(pool) = queue.pools.get_mut(idx) {
                    pool.insert(key);
                    entries.push((m.queue, idx as u32, key));
                }
            }
        }
        agent.pool_entries = entries;
    }

    /// Takes an agent out of the pools and schedules it to look for work once the current
    /// change is done.
    fn mark_agent_dirty(&mut self, a: Slot) {
        let Some(agent) = self.agents.get_mut(a) else {
            return;
        };
        for (q, idx, key) in agent.pool_entries.drain(..) {
            if let Some(Some(queue)) = self.queues.get_mut(q as usize) {
                if let Some(pool) = queue.pools.get_mut(idx as usize) {
                    pool.remove(&key);
                }
            }
        }
        if !agent.dirty {
            agent.dirty = true;
            self.dirty_agents.push_back(a);
        }
    }

    fn mark_task_dirty(&mut self, t: Slot) {
        if let Some(task) = self.tasks.get_mut(t) {
            if !task.dirty {
                task.dirty = true;
                self.dirty_tasks.push(t);
            }
        }
    }

    /// Reserves task `t` for `agents` (one, or several in ring-all). `settling` is the agent
    /// being settled, which is already out of the pools and needs no new mark.
    fn offer(&mut self, t: Slot, agents: &[Slot], settling: Option<Slot>) {
        self.take_out_of_line(t);
        let Some(task) = self.tasks.get_mut(t) else {
            return;
        };
        task.phase = Phase::Offered;
        let (q, channel, task_id, context) =
            (task.queue, task.channel, task.id, task.context.clone());
        let Some(queue) = self.queue_mut(q) else {
            return;
        };
        queue.offered += 1;
        let (timeout, ring, queue_id) = (
            queue.cfg.offer_timeout_ms,
            queue.cfg.strategy == Strategy::RingAll,
            queue.cfg.id,
        );
        if let Some(task) = self.tasks.get_mut(t) {
            task.ring = ring;
        }
        self.reschedule_task(t);
        let expires_at = self.now.saturating_add_ms(timeout);
        for &a in agents {
            if Some(a) != settling {
                self.mark_agent_dirty(a);
            }
            self.next_offer_seq += 1;
            let seq = self.next_offer_seq;
            let Some(agent) = self.agents.get_mut(a) else {
                continue;
            };
            #[cfg(test)]
            if !agent.has_room(channel) || !agent.takes_offers(self.now) {
                self.audit
                    .push(format!("offer to agent {} without room", agent.id));
            }
            agent.load[channel] = agent.load[channel].saturating_add(1);
            agent.last_offer = seq;
            let agent_id = agent.id;
            let o = self.offers.insert(Offer {
                task: t,
                agent: a,
                channel,
                expires_at,
            });
            if let Some(agent) = self.agents.get_mut(a) {
                agent.offers.push(o);
            }
            if let Some(task) = self.tasks.get_mut(t) {
                task.offers.push(o);
            }
            if expires_at != Timestamp::END {
                self.timers.insert((expires_at, TimerKey::Offer(o)));
            }
            self.push(Event::TaskOffered {
                task: task_id,
                agent: agent_id,
                queue: queue_id,
                channel,
                expires_at,
                context: context.clone(),
            });
            self.sync_state(a);
        }
    }

    fn find_offer(&self, task: TaskId, agent: AgentId) -> Result<(Slot, Slot, Slot), RouterError> {
        let t = self.task_slot(task)?;
        let a = self.agent_slot(agent)?;
        let o = self
            .tasks
            .get(t)
            .and_then(|x| {
                x.offers
                    .iter()
                    .copied()
                    .find(|&o| self.offers.get(o).is_some_and(|o| o.agent == a))
            })
            .ok_or(RouterError::NoSuchOffer { task, agent })?;
        Ok((t, a, o))
    }

    /// Removes an offer from the books (timer, task, agent). The agent's load is untouched.
    fn drop_offer(&mut self, o: Slot) -> Option<Offer> {
        let offer = self.offers.remove(o)?;
        self.timers.remove(&(offer.expires_at, TimerKey::Offer(o)));
        if let Some(task) = self.tasks.get_mut(offer.task) {
            task.offers.retain(|&x| x != o);
        }
        if let Some(agent) = self.agents.get_mut(offer.agent) {
            agent.offers.retain(|&x| x != o);
        }
        Some(offer)
    }

    /// Frees the agent's reserved slot after an offer ended without an accept.
    fn release_slot(&mut self, a: Slot, channel: Channel) {
        self.mark_agent_dirty(a);
        let now = self.now;
        if let Some(agent) = self.agents.get_mut(a) {
            agent.load[channel] = agent.load[channel].saturating_sub(1);
            agent.idle_since = now;
        }
        self.sync_state(a);
    }

    /// A rejected (`timed_out = false`) or timed-out offer: the agent cools off, the task
    /// returns to its place in line once no offer of it is left.
    fn end_offer(&mut self, o: Slot, timed_out: bool) {
        let Some(offer) = self.drop_offer(o) else {
            return;
        };
        let (t, a) = (offer.task, offer.agent);
        let (task_id, q) = match self.tasks.get(t) {
            Some(x) => (x.id, x.queue),
            None => return,
        };
        let delay = self.queue(q).map_or(0, |x| x.cfg.reject_delay_ms);
        let until = self.now.saturating_add_ms(delay);
        let max_missed = self.cfg.max_missed_offers;
        let Some(agent) = self.agents.get_mut(a) else {
            return;
        };
        let agent_id = agent.id;
        agent.cooloff_until = agent.cooloff_until.max(until);
        if timed_out {
            agent.missed = agent.missed.saturating_add(1);
        } else {
            agent.missed = 0;
        }
        let missed_out = timed_out && max_missed > 0 && agent.missed >= max_missed;
        self.push(if timed_out {
            Event::OfferTimedOut {
                task: task_id,
                agent: agent_id,
            }
        } else {
            Event::OfferRejected {
                task: task_id,
                agent: agent_id,
            }
        });
        self.release_slot(a, offer.channel);
        self.reschedule_agent(a);
        self.return_if_unoffered(t);
        if missed_out {
            self.set_status(
                a,
                Status::Away {
                    reason: AwayReason::MissedOffers,
                },
            );
        }
    }

    /// Withdraws an offer; the task returns to line if it was the last one (unless it was
    /// accepted elsewhere or is ending, which the caller handles).
    fn rescind(&mut self, o: Slot, reason: RescindReason) {
        let Some(offer) = self.drop_offer(o) else {
            return;
        };
        let task = self.tasks.get(offer.task).map(|x| x.id);
        let agent = self.agent(offer.agent).map(|x| x.id);
        if let (Some(task), Some(agent)) = (task, agent) {
            self.push(Event::OfferRescinded {
                task,
                agent,
                reason,
            });
        }
        self.release_slot(offer.agent, offer.channel);
        if reason == RescindReason::AgentUnavailable {
            self.return_if_unoffered(offer.task);
        }
    }

    fn return_if_unoffered(&mut self, t: Slot) {
        let Some(task) = self.tasks.get_mut(t) else {
            return;
        };
        if task.phase == Phase::Offered && task.offers.is_empty() {
            task.phase = Phase::Limbo;
            let q = task.queue;
            if let Some(queue) = self.queue_mut(q) {
                queue.offered -= 1;
            }
            self.relane(t);
        }
    }

    // ----------------------------------------------------------------------------------
    // Lines (waiting tasks)
    // ----------------------------------------------------------------------------------

    fn is_waiting(&self, t: Slot) -> bool {
        matches!(self.tasks.get(t).map(|x| x.phase), Some(Phase::Waiting(_)))
    }

    fn emotion_applies(&self, task: &Task) -> bool {
        let threshold = self
            .queue(task.queue)
            .and_then(|q| q.cfg.emotion)
            .map(|e| e.threshold);
        matches!(task.emotion, Emotion::Active(until) if self.now < until)
            && threshold.is_some_and(|th| task.agitation > th)
    }

    /// Recomputes the task's line key from its priority, creation time and queue.
    fn rekey(&mut self, t: Slot) {
        let Some(task) = self.tasks.get(t) else {
            return;
        };
        let rate = self.queue(task.queue).map_or(0, Queue::rate);
        let rank = -(i128::from(task.priority.0) * UNITS_PER_POINT
            - i128::from(task.created_at.as_millis()) * rate);
        if let Some(task) = self.tasks.get_mut(t) {
            task.line = LineKey {
                rank,
                seq: task.seq,
                slot: t,
            };
        }
    }

    /// Where the task belongs now.
    fn lane_for(&self, t: Slot) -> Option<LanePos> {
        let task = self.tasks.get(t)?;
        if let Some((a, order, until)) = task.preferred {
            if self.now < until && self.agent(a).is_some_and(|x| x.order == order) {
                return Some(LanePos::Preferred(a));
            }
        }
        let emotion = self.emotion_applies(task);
        Some(match task.required {
            Some(expr) => LanePos::Extra(ExtraLane {
                channel: task.channel.index() as u8,
                step: task.step,
                emotion,
                expr,
            }),
            None => LanePos::Plain(lane_index(task.step, emotion, task.channel) as u32),
        })
    }

    /// Removes a waiting task from its lane (it stays in its queue's counts as `Limbo`).
    fn take_out_of_line(&mut self, t: Slot) {
        let Some(task) = self.tasks.get_mut(t) else {
            return;
        };
        let Phase::Waiting(pos) = task.phase else {
            return;
        };
        task.phase = Phase::Limbo;
        let (q, line, channel) = (task.queue, task.line, task.channel);
        if let Some(Some(queue)) = self.queues.get_mut(q as usize) {
            queue.in_line -= 1;
            match pos {
                LanePos::Plain(i) => {
                    if let Some(lane) = queue.lanes.get_mut(i as usize) {
                        lane.remove(&line);
                    }
                }
                LanePos::Extra(k) => {
                    if let Some(lane) = queue.extra.get_mut(&k) {
                        lane.remove(&line);
                        if lane.is_empty() {
                            queue.extra.remove(&k);
                        }
                    }
                }
                LanePos::Preferred(a) => {
                    queue.preferred.remove(&(a, channel.index() as u8, line));
                    if let Some(agent) = self.agents.get_mut(a) {
                        if let Some(n) = agent.preferred_queues.get_mut(&q) {
                            *n -= 1;
                            if *n == 0 {
                                agent.preferred_queues.remove(&q);
                            }
                        }
                    }
                }
            }
        }
        self.reschedule_task(t);
    }

    /// Puts a task in `Limbo` into the lane it belongs to now and marks it for matching.
    fn put_in_line(&mut self, t: Slot) {
        self.rekey(t);
        let Some(pos) = self.lane_for(t) else {
            return;
        };
        let Some(task) = self.tasks.get_mut(t) else {
            return;
        };
        if task.phase != Phase::Limbo {
            return;
        }
        task.phase = Phase::Waiting(pos);
        let (q, line, channel) = (task.queue, task.line, task.channel);
        if let Some(Some(queue)) = self.queues.get_mut(q as usize) {
            queue.in_line += 1;
            match pos {
                LanePos::Plain(i) => {
                    if let Some(lane) = queue.lanes.get_mut(i as usize) {
                        lane.insert(line);
                    }
                }
                LanePos::Extra(k) => {
                    queue.extra.entry(k).or_default().insert(line);
                }
                LanePos::Preferred(a) => {
                    queue.preferred.insert((a, channel.index() as u8, line));
                    if let Some(agent) = self.agents.get_mut(a) {
                        *agent.preferred_queues.entry(q).or_insert(0) += 1;
                    }
                }
            }
        }
        self.reschedule_task(t);
        self.mark_task_dirty(t);
    }

    /// Re-evaluates a task in line or `Limbo` at the router's time: maximum wait, routing
    /// step, emotion window, preferred-agent window. Moves it to the right lane.
    fn relane(&mut self, t: Slot) {
        let Some(task) = self.tasks.get(t) else {
            return;
        };
        if !matches!(task.phase, Phase::Waiting(_) | Phase::Limbo) {
            return;
        }
        let Some(queue) = self.queue(task.queue) else {
            return;
        };
        let now = self.now;
        let wait = now.millis_since(task.queued_at);
        if let Some((after, action)) = queue.cfg.max_wait {
            if wait >= after {
                self.exit(t, action, LeaveReason::MaxWait);
                return;
            }
        }
        let step = step_for(&queue.starts, wait);
        let emotion = match (queue.cfg.emotion, task.emotion) {
            (None, _) => Emotion::Calm,
            (Some(_), Emotion::Active(until)) if now >= until => Emotion::Spent,
            (Some(p), Emotion::Calm) if task.agitation > p.threshold => {
                Emotion::Active(now.saturating_add_ms(p.window_ms))
            }
            (Some(_), e) => e,
        };
        let preferred = task.preferred.filter(|p| now < p.2);
        let (old_step, task_id, queue_id) = (task.step, task.id, queue.cfg.id);
        let was_waiting = matches!(task.phase, Phase::Waiting(_));
        let old_pos = match task.phase {
            Phase::Waiting(p) => Some(p),
            _ => None,
        };
        if let Some(task) = self.tasks.get_mut(t) {
            task.step = step;
            task.emotion = emotion;
            task.preferred = preferred;
        }
        if step != old_step {
            self.push(Event::TaskStepChanged {
                task: task_id,
                queue: queue_id,
                step,
            });
        }
        let new_pos = self.lane_for(t);
        if was_waiting && new_pos == old_pos {
            self.reschedule_task(t);
            return;
        }
        self.take_out_of_line(t);
        self.put_in_line(t);
    }

    /// A task (new, or arriving by overflow) enters queue `q`.
    fn enter_queue(&mut self, t: Slot, mut q: u32) {
        loop {
            let now = self.now;
            let Some(task) = self.tasks.get_mut(t) else {
                return;
            };
            task.queue = q;
            task.queued_at = now;
            task.step = 0;
            task.emotion = Emotion::Calm;
            task.phase = Phase::Limbo;
            let (id, channel, priority, seq) = (task.id, task.channel, task.priority, task.seq);
            self.rekey(t);
            let Some(queue) = self.queue_mut(q) else {
                return;
            };
            queue.window.record(now, |c| c.entered += 1);
            queue.arrivals.push_back((now, seq, t));
            let (queue_id, logged_in, no_agents) =
                (queue.cfg.id, queue.logged_in, queue.cfg.when_no_agents);
            self.push(Event::TaskQueued {
                task: id,
                queue: queue_id,
                channel,
                priority,
            });
            if logged_in == 0 {
                if let Some(action) = no_agents {
                    match self.exit_to(t, action, LeaveReason::NoAgents) {
                        Some(next) => {
                            q = next;
                            continue;
                        }
                        None => return,
                    }
                }
            }
            self.relane(t);
            return;
        }
    }

    /// The task leaves its queue early: it ends, or moves to the overflow queue.
    fn exit(&mut self, t: Slot, action: ExitAction, reason: LeaveReason) {
        if let Some(next) = self.exit_to(t, action, reason) {
            self.enter_queue(t, next);
        }
    }

    /// Takes the task out of its queue for `action`; returns the queue to enter next, or
    /// `None` once the task has ended.
    fn exit_to(&mut self, t: Slot, action: ExitAction, reason: LeaveReason) -> Option<u32> {
        let rescind = match action {
            ExitAction::Leave => RescindReason::TaskEnded,
            ExitAction::Overflow(_) => RescindReason::Overflowed,
        };
        self.leave_queue_position(t, rescind);
        let (q, waited) = self.task_queue_wait(t);
        let task = self.tasks.get(t)?;
        let (id, hops) = (task.id, task.hops);
        let from = self.queue_id(q);
        let target = match action {
            ExitAction::Overflow(to) => self.queue_ids.get(&to).copied().filter(|&nq| {
                hops < self.cfg.max_overflow_hops
                    && self.queue(nq).is_some_and(|x| {
                        x.cfg
                            .max_length
                            .is_none_or(|max| x.in_line + x.offered < max)
                    })
            }),
            ExitAction::Leave => None,
        };
        let now = self.now;
        match (action, target) {
            (ExitAction::Overflow(to), Some(nq)) => {
                if let Some(queue) = self.queue_mut(q) {
                    queue.window.record(now, |c| c.overflowed += 1);
                }
                if let Some(task) = self.tasks.get_mut(t) {
                    task.hops += 1;
                    task.queue = nq;
                }
                self.clean_arrivals(q, t);
                self.push(Event::TaskOverflowed { task: id, from, to });
                Some(nq)
            }
            (action, _) => {
                let reason = if matches!(action, ExitAction::Overflow(_)) {
                    LeaveReason::OverflowLimit
                } else {
                    reason
                };
                if let Some(queue) = self.queue_mut(q) {
                    queue.window.record(now, |c| c.left += 1);
                }
                self.push(Event::TaskLeft {
                    task: id,
                    queue: from,
                    reason,
                    waited_ms: waited,
                });
                self.free_task(t);
                None
            }
        }
    }

    /// Takes a waiting or offered task out of line, rescinding its offers; it ends up in
    /// `Limbo` and out of its queue's counts.
    fn leave_queue_position(&mut self, t: Slot, reason: RescindReason) {
        self.take_out_of_line(t);
        let Some(task) = self.tasks.get(t) else {
            return;
        };
        let q = task.queue;
        let offers = task.offers.clone();
        let was_offered = task.phase == Phase::Offered;
        for o in offers {
            self.rescind(o, reason);
        }
        if let Some(task) = self.tasks.get_mut(t) {
            task.phase = Phase::Limbo;
        }
        if was_offered {
            if let Some(queue) = self.queue_mut(q) {
                queue.offered -= 1;
            }
        }
        self.reschedule_task(t);
    }

    fn task_queue_wait(&self, t: Slot) -> (u32, u64) {
        self.tasks
            .get(t)
            .map_or((0, 0), |x| (x.queue, self.now.millis_since(x.queued_at)))
    }

    /// Ends an assigned task: the agent wraps up or frees the slot.
    fn complete(&mut self, t: Slot) {
        let Some(task) = self.tasks.get(t) else {
            return;
        };
        let Phase::Assigned { agent: a, at } = task.phase else {
            return;
        };
        let (q, channel, id) = (task.queue, task.channel, task.id);
        let wrap = self.queue(q).map_or(0, |x| x.cfg.wrap_up_ms);
        let now = self.now;
        let handle = now.millis_since(at).saturating_add(wrap);
        if let Some(queue) = self.queue_mut(q) {
            queue.assigned -= 1;
            queue.window.record(now, |c| {
                c.completed += 1;
                c.handle_ms = c.handle_ms.saturating_add(handle);
            });
        }
        self.mark_agent_dirty(a);
        let agent_id = match self.agents.get_mut(a) {
            Some(agent) => {
                agent.assigned.retain(|&x| x != t);
                agent.handled = agent.handled.saturating_add(1);
                if wrap > 0 {
                    agent.wrapups.push((channel, now.saturating_add_ms(wrap)));
                } else {
                    agent.load[channel] = agent.load[channel].saturating_sub(1);
                    agent.idle_since = now;
                }
                agent.id
            }
            None => AgentId(u64::MAX),
        };
        let queue = self.queue_id(q);
        self.push(Event::TaskCompleted {
            task: id,
            agent: agent_id,
            queue,
        });
        self.reschedule_agent(a);
        self.sync_state(a);
        self.free_task(t);
    }

    fn end_wrap_ups(&mut self, a: Slot, up_to: Timestamp) {
        let now = self.now;
        let Some(agent) = self.agents.get_mut(a) else {
            return;
        };
        let before = agent.wrapups.len();
        let mut freed = PerChannel::<u8>::default();
        agent.wrapups.retain(|&(c, until)| {
            let done = until <= up_to;
            if done {
                freed[c] += 1;
            }
            !done
        });
        if agent.wrapups.len() == before {
            return;
        }
        for c in Channel::ALL {
            agent.load[c] = agent.load[c].saturating_sub(freed[c]);
        }
        agent.idle_since = now;
        self.mark_agent_dirty(a);
        self.reschedule_agent(a);
        self.sync_state(a);
    }

    fn free_task(&mut self, t: Slot) {
        let Some(mut task) = self.tasks.remove(t) else {
            return;
        };
        if let Some(at) = task.timer_at.take() {
            self.timers.remove(&(at, TimerKey::Task(t)));
        }
        let mut offers = std::mem::take(&mut task.offers);
        if offers.capacity() > 0 && self.spare_offer_lists.len() < SPARE_OFFER_LISTS {
            offers.clear();
            self.spare_offer_lists.push(offers);
        }
        self.task_ids.remove(&task.id);
        if let Some(e) = task.required {
            self.release_expr(e);
        }
        self.dirty_tasks.retain(|&x| x != t);
        self.clean_arrivals(task.queue, t);
    }

    fn arrival_valid(&self, q: u32, e: &(Timestamp, u64, Slot)) -> bool {
        self.tasks.get(e.2).is_some_and(|x| {
            x.seq == e.1
                && x.queue == q
                && x.queued_at == e.0
                && !matches!(x.phase, Phase::Assigned { .. })
        })
    }

    /// Task `t` left queue `q`'s line for good (assigned, moved or ended): drops stale
    /// entries from the front of the queue's arrival order (and compacts it when mostly
    /// stale), so its front is the longest-waiting task. The front is valid before the
    /// change, so only an entry of `t` can have made it stale: when `t` is not at the front
    /// there is nothing to look at (no task is touched).
    fn clean_arrivals(&mut self, q: u32, t: Slot) {
        let Some(queue) = self.queue_mut(q) else {
            return;
        };
        let live = (queue.in_line + queue.offered) as usize;
        let front_is_t = queue.arrivals.front().is_some_and(|e| e.2 == t);
        if !front_is_t && queue.arrivals.len() <= 2 * live + 64 {
            return;
        }
        let mut arrivals = std::mem::take(&mut queue.arrivals);
        while let Some(front) = arrivals.front() {
            if self.arrival_valid(q, front) {
                break;
            }
            arrivals.pop_front();
        }
        if arrivals.len() > 2 * live + 64 {
            arrivals.retain(|e| self.arrival_valid(q, e));
        }
        if let Some(queue) = self.queue_mut(q) {
            queue.arrivals = arrivals;
        }
    }

    // ----------------------------------------------------------------------------------
    // Agents
    // ----------------------------------------------------------------------------------

    fn set_status(&mut self, a: Slot, status: Status) {
        let Some(agent) = self.agents.get_mut(a) else {
            return;
        };
        if agent.status == status {
            return;
        }
        let was_logged_in = agent.status.is_logged_in();
        let is_logged_in = status.is_logged_in();
        if status.is_available() {
            agent.idle_since = self.now;
            agent.missed = 0;
        }
        agent.status = status.clone();
        let id = agent.id;
        let offers = agent.offers.clone();
        let queues = agent.member_queues.clone();
        self.push(Event::AgentStatusChanged { agent: id, status });
        self.mark_agent_dirty(a);
        let available = self.agent(a).is_some_and(|x| x.status.is_available());
        if !available {
            for o in offers {
                self.rescind(o, RescindReason::AgentUnavailable);
            }
        }
        if was_logged_in != is_logged_in {
            for &q in &queues {
                if let Some(queue) = self.queue_mut(q) {
                    if is_logged_in {
                        queue.logged_in += 1;
                    } else {
                        queue.logged_in -= 1;
                    }
                }
            }
            if !is_logged_in {
                for q in queues {
                    self.apply_no_agents(q);
                }
            }
        }
    }

    /// When nobody eligible is logged in to `q` and the queue says so, its waiting tasks
    /// leave or overflow.
    fn apply_no_agents(&mut self, q: u32) {
        let Some(queue) = self.queue(q) else {
            return;
        };
        let Some(action) = queue.cfg.when_no_agents else {
            return;
        };
        if queue.logged_in > 0 {
            return;
        }
        let mut waiting = self.waiting_tasks_of(q);
        waiting.sort_by_key(|&t| self.task_order_key(t));
        for t in waiting {
            self.exit(t, action, LeaveReason::NoAgents);
        }
    }

    /// Every task waiting in line in queue `q` (not offered), by slot.
    fn waiting_tasks_of(&self, q: u32) -> Vec<Slot> {
        let Some(queue) = self.queue(q) else {
            return Vec::new();
        };
        let mut out: Vec<Slot> = queue
            .lanes
            .iter()
            .map(|l| &l.set)
            .chain(queue.extra.values())
            .flat_map(|l| l.iter().map(|k| k.slot))
            .chain(queue.preferred.iter().map(|e| e.2.slot))
            .collect();
        out.sort_unstable();
        out
    }

    /// Computes agent `a`'s membership of queue `q` (the agent must be out of the pools).
    fn join_queue(&mut self, a: Slot, q: u32) {
        let Some(Some(queue)) = self.queues.get_mut(q as usize) else {
            return;
        };
        let Some(agent) = self.agents.get_mut(a) else {
            return;
        };
        let has_emotion = queue.cfg.emotion.is_some();
        let mut member = false;
        for step in 0..queue.starts.len() as u16 {
            for emotion in [false, true] {
                if emotion && !has_emotion {
                    continue;
                }
                let Some(target) = queue
                    .targets
                    .get(usize::from(step) * 2 + usize::from(emotion))
                else {
                    continue;
                };
                if target.matches(&agent.levels, agent.soothing) {
                    member = true;
                    agent.memberships.push(Membership {
                        queue: q,
                        step,
                        emotion,
                        score: target.score(&agent.levels),
                    });
                }
            }
        }
        if member {
            agent.member_queues.push(q);
            queue.members.insert(a);
            if agent.status.is_logged_in() {
                queue.logged_in += 1;
            }
        }
    }

    /// Removes agent `a`'s membership of queue `q` (the agent must be out of the pools).
    fn leave_queue(&mut self, a: Slot, q: u32) {
        let Some(agent) = self.agents.get_mut(a) else {
            return;
        };
        agent.memberships.retain(|m| m.queue != q);
        let before = agent.member_queues.len();
        agent.member_queues.retain(|&x| x != q);
        if agent.member_queues.len() != before {
            if let Some(Some(queue)) = self.queues.get_mut(q as usize) {
                queue.members.remove(&a);
                if agent.status.is_logged_in() {
                    queue.logged_in -= 1;
                }
            }
        }
    }

    fn sync_state(&mut self, a: Slot) {
        let Some(agent) = self.agents.get_mut(a) else {
            return;
        };
        let state = agent.computed_state();
        if state != agent.state {
            agent.state = state;
            let id = agent.id;
            self.push(Event::AgentStateChanged { agent: id, state });
        }
    }

    // ----------------------------------------------------------------------------------
    // Bookkeeping
    // ----------------------------------------------------------------------------------

    fn push(&mut self, event: Event) {
        self.events.push_back(EventRecord {
            seq: self.next_event,
            at: self.now,
            event,
        });
        self.next_event += 1;
    }

    fn queue(&self, q: u32) -> Option<&Queue> {
        self.queues.get(q as usize)?.as_ref()
    }

    fn queue_mut(&mut self, q: u32) -> Option<&mut Queue> {
        self.queues.get_mut(q as usize)?.as_mut()
    }

    fn queue_id(&self, q: u32) -> QueueId {
        self.queue(q).map_or(QueueId(u64::MAX), |x| x.cfg.id)
    }

    fn agent(&self, a: Slot) -> Option<&Agent> {
        self.agents.get(a)
    }

    fn queue_slot(&self, id: QueueId) -> Result<u32, RouterError> {
        self.queue_ids
            .get(&id)
            .copied()
            .ok_or(RouterError::UnknownQueue { queue: id })
    }

    fn agent_slot(&self, id: AgentId) -> Result<Slot, RouterError> {
        self.agent_ids
            .get(&id)
            .copied()
            .ok_or(RouterError::UnknownAgent { agent: id })
    }

    fn task_slot(&self, id: TaskId) -> Result<Slot, RouterError> {
        self.task_ids
            .get(&id)
            .copied()
            .ok_or(RouterError::UnknownTask { task: id })
    }

    fn check_expr(&self, expr: &SkillExpr) -> Result<(), RouterError> {
        expr.validate()
            .map_err(|source| RouterError::InvalidExpression { source })?;
        if let Some(skill) = unknown_skill(expr, self.skills.len()) {
            return Err(RouterError::UnknownSkill { skill });
        }
        Ok(())
    }

    fn intern_expr(&mut self, expr: SkillExpr) -> u32 {
        if let Some(&id) = self.expr_ids.get(&expr) {
            if let Some(Some(entry)) = self.exprs.get_mut(id as usize) {
                entry.1 += 1;
            }
            return id;
        }
        let id = match self.exprs.iter().position(Option::is_none) {
            Some(free) => free as u32,
            None => {
                self.exprs.push(None);
                (self.exprs.len() - 1) as u32
            }
        };
        self.expr_ids.insert(expr.clone(), id);
        self.exprs[id as usize] = Some((expr, 1));
        id
    }

    fn release_expr(&mut self, id: u32) {
        let Some(slot) = self.exprs.get_mut(id as usize) else {
            return;
        };
        if let Some(entry) = slot {
            entry.1 -= 1;
            if entry.1 == 0 {
                if let Some((expr, _)) = slot.take() {
                    self.expr_ids.remove(&expr);
                }
            }
        }
    }

    fn validate_queue(&self, cfg: &QueueConfig) -> Result<(Vec<u64>, Vec<Target>), RouterError> {
        let bad = |problem| RouterError::InvalidQueue {
            queue: cfg.id,
            problem,
        };
        if cfg.steps.is_empty() {
            return Err(bad(QueueProblem::NoSteps));
        }
        if cfg.steps.len() > MAX_STEPS {
            return Err(bad(QueueProblem::TooManySteps { max: MAX_STEPS }));
        }
        if cfg.offer_timeout_ms == 0 {
            return Err(bad(QueueProblem::ZeroOfferTimeout));
        }
        if cfg.aging_per_minute > MAX_AGING_PER_MINUTE {
            return Err(bad(QueueProblem::AgingTooHigh {
                rate: cfg.aging_per_minute,
            }));
        }
        if let Some(e) = cfg.emotion {
            if !(0.0..=1.0).contains(&e.threshold) || e.min_soothing == 0 || e.min_soothing > 5 {
                return Err(bad(QueueProblem::EmotionPolicy));
            }
        }
        for action in [cfg.when_no_agents, cfg.max_wait.map(|m| m.1)]
            .into_iter()
            .flatten()
        {
            if let ExitAction::Overflow(to) = action {
                if to == cfg.id {
                    return Err(bad(QueueProblem::OverflowToSelf));
                }
                if !self.queue_ids.contains_key(&to) {
                    return Err(bad(QueueProblem::UnknownOverflowTarget { target: to }));
                }
            }
        }
        let mut starts = Vec::with_capacity(cfg.steps.len());
        let mut at = 0u64;
        let last = cfg.steps.len() - 1;
        let mut targets = Vec::with_capacity(cfg.steps.len() * 2);
        for (i, step) in cfg.steps.iter().enumerate() {
            step.expr
                .validate()
                .map_err(|source| bad(QueueProblem::Expression { step: i, source }))?;
            if let Some(skill) = unknown_skill(&step.expr, self.skills.len()) {
                return Err(bad(QueueProblem::UnknownSkill { step: i, skill }));
            }
            starts.push(at);
            match step.expires_after_ms {
                Some(ms) => at = at.saturating_add(ms),
                None if i == last => {}
                None => return Err(bad(QueueProblem::StepNeverExpires { step: i })),
            }
            let positive = step.expr.positive_skills();
            targets.push(Target {
                expr: step.expr.clone(),
                min_soothing: None,
                positive: positive.clone(),
            });
            targets.push(Target {
                expr: step.expr.clone(),
                min_soothing: Some(cfg.emotion.map_or(u8::MAX, |e| e.min_soothing)),
                positive,
            });
        }
        Ok((starts, targets))
    }
}

impl LineKey {
    const MIN: LineKey = LineKey {
        rank: i128::MIN,
        seq: 0,
        slot: 0,
    };
    const MAX: LineKey = LineKey {
        rank: i128::MAX,
        seq: u64::MAX,
        slot: Slot::MAX,
    };
}

fn check_agitation(task: TaskId, value: f32) -> Result<(), RouterError> {
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(RouterError::InvalidAgitation { task, value })
    }
}

fn unknown_skill(expr: &SkillExpr, registered: usize) -> Option<SkillId> {
    let mut stack = vec![expr];
    while let Some(e) = stack.pop() {
        match e {
            SkillExpr::Any => {}
            SkillExpr::Level { skill, .. } => {
                if skill.index() >= registered {
                    return Some(*skill);
                }
            }
            SkillExpr::Not(inner) => stack.push(inner),
            SkillExpr::And(es) | SkillExpr::Or(es) => stack.extend(es.iter()),
        }
    }
    None
}

// --------------------------------------------------------------------------------------
// Test-only oracles: brute-force checks of the indexed decisions and of every invariant.
// --------------------------------------------------------------------------------------

#[cfg(test)]
impl Router {
    /// Brute force: may agent `a` be offered task `t` now (ignoring whether it is dirty)?
    fn eligible_bf(&self, t: Slot, a: Slot) -> bool {
        let (Some(task), Some(agent)) = (self.tasks.get(t), self.agent(a)) else {
            return false;
        };
        if !agent.takes_offers(self.now) || !agent.has_room(task.channel) {
            return false;
        }
        let Some(queue) = self.queue(task.queue) else {
            return false;
        };
        if let Some((p, order, until)) = task.preferred {
            if self.now < until && self.agent(p).is_some_and(|x| x.order == order) {
                return p == a;
            }
        }
        let wait = self.now.millis_since(task.queued_at);
        let step = step_for(&queue.starts, wait);
        let emotion = self.emotion_applies(task);
        let Some(target) = queue.target(step, emotion) else {
            return false;
        };
        target.matches(&agent.levels, agent.soothing)
            && task.required.is_none_or(|e| {
                self.exprs
                    .get(e as usize)
                    .and_then(Option::as_ref)
                    .is_some_and(|(x, _)| x.eval(&agent.levels))
            })
    }

    fn waiting_bf(&self) -> Vec<Slot> {
        self.tasks
            .iter()
            .filter(|(_, t)| matches!(t.phase, Phase::Waiting(_)))
            .map(|(s, _)| s)
            .collect()
    }

    /// Agent `a` chose task `t`: no waiting task it may take is ahead of `t`.
    fn audit_agent_choice(&mut self, a: Slot, t: Slot) {
        let key = self.task_order_key(t);
        if !self.eligible_bf(t, a) {
            self.audit
                .push(format!("agent slot {a} chose ineligible task slot {t}"));
        }
        for w in self.waiting_bf() {
            if w != t && self.eligible_bf(w, a) && self.task_order_key(w) < key {
                self.audit.push(format!(
                    "agent slot {a} chose task slot {t} over better task slot {w}"
                ));
            }
        }
    }

    /// Task `t` chose `agents`: the strategy's best eligible settled agent (or, for ring-all,
    /// every one), and no eligible waiting task is ahead of `t` for them.
    fn audit_task_choice(&mut self, t: Slot, chosen: &[Slot]) {
        let Some(task) = self.tasks.get(t) else {
            return;
        };
        let Some(queue) = self.queue(task.queue) else {
            return;
        };
        let strategy = queue.cfg.strategy;
        let emotion = self.emotion_applies(task);
        let preferred = matches!(task.phase, Phase::Waiting(LanePos::Preferred(_)));
        let target = queue.target(task.step, emotion);
        let mut eligible: Vec<(PoolKey, Slot)> = self
            .agents
            .iter()
            .filter(|(s, a)| !a.dirty && self.eligible_bf(t, *s))
            .map(|(s, a)| {
                let score = target.map_or(0, |tg| tg.score(&a.levels));
                (Self::pool_key(strategy, a, s, score), s)
            })
            .collect();
        eligible.sort();
        let want: Vec<Slot> = if strategy == Strategy::RingAll && !preferred {
            eligible.iter().map(|e| e.1).collect()
        } else {
            eligible.iter().take(1).map(|e| e.1).collect()
        };
        if want != chosen {
            self.audit.push(format!(
                "task slot {t} chose agents {chosen:?}, brute force says {want:?}"
            ));
        }
        let key = self.task_order_key(t);
        for &a in chosen {
            for w in self.waiting_bf() {
                if w != t && self.eligible_bf(w, a) && self.task_order_key(w) < key {
                    self.audit.push(format!(
                        "task slot {t} went to agent slot {a} ahead of task slot {w}"
                    ));
                }
            }
        }
    }

    /// Every structural invariant, checked from scratch. Call between inputs.
    pub(crate) fn check_invariants(&self) -> Result<(), String> {
        if let Some(v) = self.audit.first() {
            return Err(format!("audit: {v}"));
        }
        if !self.dirty_tasks.is_empty() || !self.dirty_agents.is_empty() {
            return Err("dirty entities left after settle".into());
        }
        // Tasks and offers.
        let mut counts: BTreeMap<u32, (u32, u32, u32)> = BTreeMap::new();
        for (t, task) in self.tasks.iter() {
            if self.task_ids.get(&task.id) != Some(&t) {
                return Err(format!("task {} not indexed", task.id));
            }
            let queue = self
                .queue(task.queue)
                .ok_or_else(|| format!("task {} in a removed queue", task.id))?;
            let c = counts.entry(task.queue).or_default();
            match task.phase {
                Phase::Waiting(pos) => {
                    c.0 += 1;
                    if !task.offers.is_empty() {
                        return Err(format!("waiting task {} holds offers", task.id));
                    }
                    let present = match pos {
                        LanePos::Plain(i) => queue
                            .lanes
                            .get(i as usize)
                            .is_some_and(|l| l.contains(&task.line)),
                        LanePos::Extra(k) => {
                            queue.extra.get(&k).is_some_and(|l| l.contains(&task.line))
                        }
                        LanePos::Preferred(a) => {
                            queue
                                .preferred
                                .contains(&(a, task.channel.index() as u8, task.line))
                        }
                    };
                    if !present || Some(pos) != self.lane_for(t) {
                        return Err(format!("task {} not in its lane", task.id));
                    }
                    let wait = self.now.millis_since(task.queued_at);
                    if task.step != step_for(&queue.starts, wait) {
                        return Err(format!("task {} at a stale step", task.id));
                    }
                    if task.timer_at != self.task_deadline(t)
                        || task
                            .timer_at
                            .is_some_and(|at| !self.timers.contains(&(at, TimerKey::Task(t))))
                    {
                        return Err(format!("task {} timer wrong", task.id));
                    }
                    for (a, agent) in self.agents.iter() {
                        if !agent.dirty && self.eligible_bf(t, a) {
                            return Err(format!(
                                "waiting task {} has free eligible agent {}",
                                task.id, agent.id
                            ));
                        }
                    }
                }
                Phase::Offered => {
                    c.1 += 1;
                    if task.offers.is_empty() {
                        return Err(format!("offered task {} has no offers", task.id));
                    }
                    if task.offers.len() > 1 && !task.ring {
                        return Err(format!("task {} offered twice", task.id));
                    }
                    let mut agents: Vec<Slot> = Vec::new();
                    for &o in &task.offers {
                        let offer = self
                            .offers
                            .get(o)
                            .ok_or_else(|| format!("task {} dangling offer", task.id))?;
                        if offer.task != t
                            || !self
                                .agent(offer.agent)
                                .is_some_and(|a| a.offers.contains(&o))
                        {
                            return Err(format!("task {} offer books disagree", task.id));
                        }
                        agents.push(offer.agent);
                    }
                    agents.sort_unstable();
                    agents.dedup();
                    if agents.len() != task.offers.len() {
                        return Err(format!("task {} offered twice to one agent", task.id));
                    }
                }
                Phase::Assigned { agent, .. } => {
                    c.2 += 1;
                    if !self.agent(agent).is_some_and(|a| a.assigned.contains(&t)) {
                        return Err(format!("task {} assignment books disagree", task.id));
                    }
                }
                Phase::Limbo => return Err(format!("task {} in limbo", task.id)),
            }
        }
        for (q, queue) in self.queues.iter().enumerate() {
            let Some(queue) = queue else { continue };
            let c = counts.get(&(q as u32)).copied().unwrap_or_default();
            if (queue.in_line, queue.offered, queue.assigned) != c {
                return Err(format!("queue {} counts {c:?} wrong", queue.cfg.id));
            }
            if let Some(lane) = queue
                .lanes
                .iter()
                .find(|l| l.head != l.set.first().copied())
            {
                return Err(format!(
                    "queue {} lane head {:?} is not its first entry",
                    queue.cfg.id, lane.head
                ));
            }
            let lane_total: usize = queue.lanes.iter().map(|l| l.set.len()).sum::<usize>()
                + queue.extra.values().map(BTreeSet::len).sum::<usize>()
                + queue.preferred.len();
            if lane_total != c.0 as usize {
                return Err(format!("queue {} lanes hold stale tasks", queue.cfg.id));
            }
            if let Some(front) = queue.arrivals.front() {
                if !self.arrival_valid(q as u32, front) {
                    return Err(format!("queue {} arrival front stale", queue.cfg.id));
                }
            }
            let logged_in = queue
                .members
                .iter()
                .filter(|&&a| self.agent(a).is_some_and(|x| x.status.is_logged_in()))
                .count();
            if logged_in != queue.logged_in as usize {
                return Err(format!("queue {} logged-in count wrong", queue.cfg.id));
            }
        }
        // Agents.
        for (a, agent) in self.agents.iter() {
            let mut load = PerChannel::<u8>::default();
            for &o in &agent.offers {
                let offer = self.offers.get(o).ok_or("agent dangling offer")?;
                load[offer.channel] += 1;
            }
            for &t in &agent.assigned {
                let task = self.tasks.get(t).ok_or("agent dangling task")?;
                load[task.channel] += 1;
            }
            for &(c, _) in &agent.wrapups {
                load[c] += 1;
            }
            if load != agent.load {
                return Err(format!("agent {} load books wrong", agent.id));
            }
            for c in Channel::ALL {
                if agent.load[c] > agent.capacity[c] {
                    return Err(format!("agent {} above capacity on {c}", agent.id));
                }
            }
            if agent.state != agent.computed_state() {
                return Err(format!("agent {} state stale", agent.id));
            }
            // Pools hold exactly the settled agents that take offers and have room.
            let mut expect = Vec::new();
            if agent.takes_offers(self.now) {
                for c in Channel::ALL {
                    if !agent.has_room(c) {
                        continue;
                    }
                    for m in &agent.memberships {
                        let queue = self.queue(m.queue).ok_or("membership of removed queue")?;
                        let key = Self::pool_key(queue.cfg.strategy, agent, a, m.score);
                        let idx = lane_index(m.step, m.emotion, c);
                        if !queue.pools.get(idx).is_some_and(|p| p.contains(&key)) {
                            return Err(format!("agent {} missing from a pool", agent.id));
                        }
                        expect.push((m.queue, idx as u32, key));
                    }
                }
            }
            if expect != agent.pool_entries {
                return Err(format!("agent {} pool entries wrong", agent.id));
            }
            let wrap = agent.wrapups.iter().map(|w| w.1).min();
            let cool = (agent.cooloff_until > self.now).then_some(agent.cooloff_until);
            let want = match (cool, wrap) {
                (Some(x), Some(y)) => Some(x.min(y)),
                (x, y) => x.or(y),
            }
            .filter(|at| *at != Timestamp::END);
            if agent.timer_at != want {
                return Err(format!("agent {} timer wrong", agent.id));
            }
        }
        let pooled: usize = self
            .queues
            .iter()
            .flatten()
            .map(|q| q.pools.iter().map(BTreeSet::len).sum::<usize>())
            .sum();
        let entries: usize = self.agents.iter().map(|(_, a)| a.pool_entries.len()).sum();
        if pooled != entries {
            return Err("pools hold stale agents".into());
        }
        let timers = self
            .tasks
            .iter()
            .filter(|(_, t)| t.timer_at.is_some())
            .count()
            + self
                .agents
                .iter()
                .filter(|(_, a)| a.timer_at.is_some())
                .count()
            + self
                .offers
                .iter()
                .filter(|(_, o)| o.expires_at != Timestamp::END)
                .count();
        if timers != self.timers.len() {
            return Err(format!(
                "timer set holds {} entries, books say {timers}",
                self.timers.len()
            ));
        }
        if let Some(first) = self.poll_timeout() {
            if first < self.now {
                return Err("a due timer was not fired".into());
            }
        }
        Ok(())
    }
}
