//! Scenario and property tests that also run the router's internal brute-force oracles
//! (`check_invariants` and the per-offer audit) after every input.

mod props;
mod scenarios;

use std::collections::BTreeMap;

use crate::{
    AgentConfig, AgentId, Channel, Event, EventRecord, NewTask, PerChannel, Priority, QueueId,
    Router, RouterConfig, RouterError, SkillId, Status, TaskId, Timestamp,
};

/// A router plus its event log; checks every invariant after each call.
pub(crate) struct Harness {
    pub r: Router,
    pub log: Vec<EventRecord>,
    pub now: u64,
}

impl Harness {
    pub fn new() -> Self {
        Harness::with_config(RouterConfig::default())
    }

    pub fn with_config(cfg: RouterConfig) -> Self {
        Harness {
            r: Router::new(cfg),
            log: Vec::new(),
            now: 0,
        }
    }

    pub fn t(&self) -> Timestamp {
        Timestamp(self.now)
    }

    /// Runs one call at the harness time, drains events, checks invariants.
    pub fn run<T>(&mut self, f: impl FnOnce(&mut Router, Timestamp) -> T) -> T {
        let now = self.t();
        let out = f(&mut self.r, now);
        self.drain();
        out
    }

    pub fn drain(&mut self) -> Vec<Event> {
        let mut new = Vec::new();
        while let Some(e) = self.r.poll_event() {
            new.push(e.event.clone());
            self.log.push(e);
        }
        if let Err(e) = self.r.check_invariants() {
            panic!(
                "invariant broken at {}ms: {e}\nlog tail: {:#?}",
                self.now,
                tail(&self.log)
            );
        }
        new
    }

    /// Moves time forward, firing timers.
    pub fn advance(&mut self, ms: u64) -> Vec<Event> {
        self.now += ms;
        let now = self.t();
        self.r.handle_timeout(now);
        self.drain()
    }

    pub fn skill(&mut self, name: &str) -> SkillId {
        self.r.skill(name).unwrap()
    }

    pub fn agent(&mut self, id: u64, skills: &[(&str, u8)]) {
        let skills = skills.iter().map(|(n, l)| (self.skill(n), *l)).collect();
        let cfg = AgentConfig {
            skills,
            ..AgentConfig::new(AgentId(id))
        };
        self.run(|r, now| r.handle_upsert_agent(now, cfg)).unwrap();
        self.run(|r, now| r.handle_status(now, AgentId(id), Status::Available))
            .unwrap();
    }

    pub fn agent_cfg(&mut self, cfg: AgentConfig) {
        let id = cfg.id;
        self.run(|r, now| r.handle_upsert_agent(now, cfg)).unwrap();
        self.run(|r, now| r.handle_status(now, id, Status::Available))
            .unwrap();
    }

    pub fn enqueue(&mut self, task: u64, queue: u64, priority: u32) -> Result<(), RouterError> {
        let t = NewTask {
            priority: Priority(priority),
            ..NewTask::new(TaskId(task), QueueId(queue))
        };
        self.run(|r, now| r.handle_enqueue(now, t))
    }

    pub fn enqueue_task(&mut self, t: NewTask) -> Result<(), RouterError> {
        self.run(|r, now| r.handle_enqueue(now, t))
    }

    pub fn accept(&mut self, task: u64, agent: u64) {
        self.run(|r, now| r.handle_accept(now, TaskId(task), AgentId(agent)))
            .unwrap();
    }

    pub fn reject(&mut self, task: u64, agent: u64) {
        self.run(|r, now| r.handle_reject(now, TaskId(task), AgentId(agent)))
            .unwrap();
    }

    pub fn complete(&mut self, task: u64) {
        self.run(|r, now| r.handle_complete(now, TaskId(task)))
            .unwrap();
    }

    pub fn cancel(&mut self, task: u64) {
        self.run(|r, now| r.handle_cancel(now, TaskId(task)))
            .unwrap();
    }

    /// Offers made so far, as (task, agent), in order.
    pub fn offers(&self) -> Vec<(u64, u64)> {
        self.log
            .iter()
            .filter_map(|e| match e.event {
                Event::TaskOffered { task, agent, .. } => Some((task.0, agent.0)),
                _ => None,
            })
            .collect()
    }

    /// The last offer made.
    pub fn last_offer(&self) -> Option<(u64, u64)> {
        self.offers().last().copied()
    }

    /// Counts events by kind, for quick assertions.
    pub fn count(&self, pred: impl Fn(&Event) -> bool) -> usize {
        self.log.iter().filter(|e| pred(&e.event)).count()
    }
}

fn tail(log: &[EventRecord]) -> &[EventRecord] {
    &log[log.len().saturating_sub(12)..]
}

/// Voice 1 plus chat `chat`.
pub(crate) fn capacity(chat: u8) -> PerChannel<u8> {
    PerChannel {
        voice: 1,
        chat,
        ..PerChannel::default()
    }
}

/// A chat task.
pub(crate) fn chat(task: u64, queue: u64) -> NewTask {
    NewTask {
        channel: Channel::Chat,
        ..NewTask::new(TaskId(task), QueueId(queue))
    }
}

/// Ends per task id, to check "exactly once".
pub(crate) fn ends(log: &[EventRecord]) -> BTreeMap<TaskId, usize> {
    let mut out = BTreeMap::new();
    for e in log {
        if e.event.is_task_end() {
            if let Some(t) = e.event.task() {
                *out.entry(t).or_insert(0) += 1;
            }
        }
    }
    out
}
