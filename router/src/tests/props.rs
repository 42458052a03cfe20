//! Property tests over random operation sequences in a small world: three queues (skills
//! with a widening step, emotion policy and overflow; ring-all with leave-when-empty and
//! wrap-up; a catch-all with a length limit and a maximum wait), five agents with random skills, soothing and
//! chat capacity.
//!
//! After every operation the harness runs the router's brute-force `check_invariants`
//! (books agree, loads within capacity, no waiting task with a free eligible agent, indexes
//! exact, timers exact) and every offer is audited against brute force (the offered task is
//! the best eligible waiting task for the agent; the agent is the strategy's best, or every
//! eligible agent for ring-all). On top, the event log is replayed here to check offers,
//! accepts and task ends.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::Harness;
use crate::{
    AgentConfig, AgentId, AwayReason, Channel, EmotionPolicy, Event, EventRecord, ExitAction,
    Input, NewTask, PerChannel, PreferredAgent, Priority, QueueConfig, QueueId, RouterConfig,
    RouterError, RoutingStep, SkillExpr, Status, Strategy as Pick, TaskId, Timestamp,
};

const RING_QUEUE: QueueId = QueueId(2);

#[derive(Debug, Clone)]
struct AgentSpec {
    levels: [u8; 3],
    soothing: u8,
    chat: u8,
}

#[derive(Debug, Clone)]
enum Op {
    Enqueue {
        id: u8,
        queue: u8,
        chat: bool,
        priority: u8,
        agitation: u8,
        required: bool,
        preferred: Option<(u8, u16)>,
    },
    Accept(u8),
    Reject(u8),
    Cancel(u8),
    Complete(u8),
    Status(u8, u8),
    Priority(u8, u8),
    Agitation(u8, u8),
    Retrain(u8, [u8; 3]),
    EndWrapUp(u8),
    RemoveAgent(u8),
    Reconfigure(u8, bool),
    Advance(u32),
}

fn agent_spec() -> impl Strategy<Value = AgentSpec> {
    ([0u8..=5, 0u8..=5, 0u8..=5], 0u8..=5, 0u8..=3).prop_map(|(levels, soothing, chat)| AgentSpec {
        levels,
        soothing,
        chat,
    })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (
            0u8..24,
            0u8..3,
            any::<bool>(),
            0u8..4,
            0u8..=10,
            prop::bool::weighted(0.15),
            prop::option::weighted(0.15, (0u8..5, 0u16..15_000)),
        )
            .prop_map(|(id, queue, chat, priority, agitation, required, preferred)| {
                Op::Enqueue {
                    id,
                    queue,
                    chat,
                    priority,
                    agitation,
                    required,
                    preferred,
                }
            }),
        5 => any::<u8>().prop_map(Op::Accept),
        2 => any::<u8>().prop_map(Op::Reject),
        1 => (0u8..24).prop_map(Op::Cancel),
        4 => any::<u8>().prop_map(Op::Complete),
        1 => (0u8..5, 0u8..3).prop_map(|(a, k)| Op::Status(a, k)),
        1 => (0u8..24, 0u8..6).prop_map(|(t, p)| Op::Priority(t, p)),
        1 => (0u8..24, 0u8..=10).prop_map(|(t, x)| Op::Agitation(t, x)),
        1 => (0u8..5, [0u8..=5, 0u8..=5, 0u8..=5]).prop_map(|(a, l)| Op::Retrain(a, l)),
        1 => (0u8..5).prop_map(Op::EndWrapUp),
        1 => (0u8..5).prop_map(Op::RemoveAgent),
        1 => (0u8..6, any::<bool>()).prop_map(|(s, w)| Op::Reconfigure(s, w)),
        4 => (0u32..25_000).prop_map(Op::Advance),
    ]
}

fn strategy() -> impl Strategy<Value = Pick> {
    (0usize..PICKS.len()).prop_map(|i| PICKS[i])
}

fn agent_config(h: &mut Harness, id: u8, levels: [u8; 3], spec: &AgentSpec) -> AgentConfig {
    let names = ["a", "b", "c"];
    let skills = names
        .iter()
        .zip(levels)
        .filter(|(_, l)| *l > 0)
        .map(|(n, l)| (h.skill(n), l))
        .collect();
    AgentConfig {
        id: AgentId(u64::from(id)),
        skills,
        soothing: spec.soothing,
        capacity: PerChannel {
            voice: 1,
            chat: spec.chat,
            ..PerChannel::default()
        },
    }
}

const PICKS: [Pick; 6] = [
    Pick::LongestIdle,
    Pick::MostSkilled,
    Pick::LeastOccupied,
    Pick::RoundRobin,
    Pick::FewestTasks,
    Pick::RingAll,
];

/// Queue 3: a catch-all (or `a | b`) with a length limit and a maximum wait.
fn queue3(h: &mut Harness, strategy: Pick, wide: bool) -> QueueConfig {
    let expr = if wide {
        SkillExpr::Any
    } else {
        h.r.parse_expr("a | b").unwrap()
    };
    let mut q3 = QueueConfig::new(QueueId(3)).with_expr(expr);
    q3.strategy = strategy;
    q3.max_length = Some(6);
    q3.max_wait = Some((60_000, ExitAction::Leave));
    q3
}

fn world(s1: Pick, s3: Pick, agents: &[AgentSpec]) -> Harness {
    let mut h = Harness::with_config(RouterConfig {
        max_missed_offers: 2,
        max_overflow_hops: 3,
        ..RouterConfig::default()
    });
    let b_or_c = h.r.parse_expr("b | c").unwrap();
    let mut q2 = QueueConfig::new(RING_QUEUE).with_expr(b_or_c);
    q2.strategy = Pick::RingAll;
    q2.when_no_agents = Some(ExitAction::Leave);
    q2.wrap_up_ms = 2_000;
    q2.offer_timeout_ms = 4_000;
    q2.reject_delay_ms = 0;
    q2.aging_per_minute = 0;
    q2.max_wait = Some((90_000, ExitAction::Overflow(QueueId(3))));
    let q3 = queue3(&mut h, s3, true);
    let narrow = h.r.parse_expr("a>=2").unwrap();
    let wide = h.r.parse_expr("a | !b").unwrap();
    let mut q1 = QueueConfig::new(QueueId(1));
    q1.steps = vec![
        RoutingStep {
            expr: narrow,
            expires_after_ms: Some(10_000),
        },
        RoutingStep {
            expr: wide,
            expires_after_ms: None,
        },
    ];
    q1.strategy = s1;
    q1.emotion = Some(EmotionPolicy {
        threshold: 0.5,
        min_soothing: 3,
        window_ms: 20_000,
    });
    q1.max_wait = Some((120_000, ExitAction::Overflow(RING_QUEUE)));
    q1.aging_per_minute = 60;
    q1.offer_timeout_ms = 5_000;
    q1.reject_delay_ms = 2_000;
    q1.wrap_up_ms = 1_000;
    for q in [q3, q2, q1] {
        h.run(|r, now| r.handle_upsert_queue(now, q)).unwrap();
    }
    for (i, spec) in agents.iter().enumerate() {
        let cfg = agent_config(&mut h, i as u8, spec.levels, spec);
        h.agent_cfg(cfg);
    }
    h
}

/// Replays events and checks what the router's own books cannot see.
#[derive(Default)]
struct Tracker {
    ring: BTreeSet<QueueId>,
    live: BTreeSet<TaskId>,
    offers: BTreeMap<TaskId, BTreeSet<AgentId>>,
    assigned: BTreeMap<TaskId, AgentId>,
    enqueued: usize,
    ended: usize,
}

impl Tracker {
    fn apply(&mut self, e: &EventRecord) -> Result<(), String> {
        match &e.event {
            Event::TaskOffered {
                task, agent, queue, ..
            } => {
                if !self.live.contains(task) || self.assigned.contains_key(task) {
                    return Err(format!("offer of a task not waiting: {e:?}"));
                }
                let set = self.offers.entry(*task).or_default();
                if !set.insert(*agent) {
                    return Err(format!("same offer twice: {e:?}"));
                }
                if set.len() > 1 && !self.ring.contains(queue) {
                    return Err(format!("two simultaneous offers outside ring-all: {e:?}"));
                }
            }
            Event::OfferAccepted { task, agent }
            | Event::OfferRejected { task, agent }
            | Event::OfferTimedOut { task, agent }
            | Event::OfferRescinded { task, agent, .. } => {
                if !self.offers.get_mut(task).is_some_and(|s| s.remove(agent)) {
                    return Err(format!("offer end without offer: {e:?}"));
                }
                if matches!(e.event, Event::OfferAccepted { .. })
                    && self.assigned.insert(*task, *agent).is_some()
                {
                    return Err(format!("second accept: {e:?}"));
                }
            }
            Event::TaskAssigned { task, agent, .. } => {
                if self.assigned.get(task) != Some(agent) {
                    return Err(format!("assigned without accept: {e:?}"));
                }
                if self.offers.get(task).is_some_and(|s| !s.is_empty()) {
                    return Err(format!("assigned while other offers stand: {e:?}"));
                }
            }
            Event::TaskCompleted { task, agent, .. } => {
                if self.assigned.remove(task) != Some(*agent) {
                    return Err(format!("completed but not assigned: {e:?}"));
                }
                self.end(*task)?;
            }
            Event::TaskAbandoned { task, .. } | Event::TaskLeft { task, .. } => {
                if self.assigned.contains_key(task) {
                    return Err(format!("assigned task abandoned: {e:?}"));
                }
                if self.offers.get(task).is_some_and(|s| !s.is_empty()) {
                    return Err(format!("ended with offers standing: {e:?}"));
                }
                self.end(*task)?;
            }
            _ => {}
        }
        Ok(())
    }

    fn end(&mut self, task: TaskId) -> Result<(), String> {
        self.offers.remove(&task);
        self.ended += 1;
        if self.live.remove(&task) {
            Ok(())
        } else {
            Err(format!("{task} ended twice or never started"))
        }
    }

    fn pick_offer(&self, i: u8) -> Option<(TaskId, AgentId)> {
        let all: Vec<(TaskId, AgentId)> = self
            .offers
            .iter()
            .flat_map(|(t, s)| s.iter().map(move |a| (*t, *a)))
            .collect();
        (!all.is_empty()).then(|| all[usize::from(i) % all.len()])
    }

    fn pick_assigned(&self, i: u8) -> Option<TaskId> {
        let all: Vec<TaskId> = self.assigned.keys().copied().collect();
        (!all.is_empty()).then(|| all[usize::from(i) % all.len()])
    }
}

/// Inputs with the times they were applied.
type Inputs = Vec<(Timestamp, Input)>;

/// Applies one input at the harness time, records it, drains and checks.
fn call(
    h: &mut Harness,
    inputs: &mut Vec<(Timestamp, Input)>,
    input: Input,
) -> Result<(), RouterError> {
    let now = h.t();
    inputs.push((now, input.clone()));
    let res = h.r.handle_input(now, input);
    h.drain();
    res
}

/// Drives the world with `ops`, polling every deadline `poll_timeout` reports. Returns the
/// event log and the inputs issued (with their times).
fn run(
    s1: Pick,
    s3: Pick,
    agents: &[AgentSpec],
    ops: &[Op],
) -> Result<(Vec<EventRecord>, Inputs), TestCaseError> {
    let mut h = world(s1, s3, agents);
    let mut inputs = Vec::new();
    let mut tr = Tracker::default();
    tr.ring.insert(RING_QUEUE);
    for (q, s) in [(QueueId(1), s1), (QueueId(3), s3)] {
        if s == Pick::RingAll {
            tr.ring.insert(q);
        }
    }
    let mut seen = h.log.len();
    for op in ops {
        match op {
            Op::Enqueue {
                id,
                queue,
                chat,
                priority,
                agitation,
                required,
                preferred,
            } => {
                let required: Option<SkillExpr> = required.then(|| {
                    let c = h.skill("c");
                    SkillExpr::Level {
                        skill: c,
                        cmp: crate::Cmp::Ge,
                        level: 2,
                    }
                });
                let t = NewTask {
                    channel: if *chat { Channel::Chat } else { Channel::Voice },
                    priority: Priority(u32::from(*priority)),
                    agitation: f32::from(*agitation) / 10.0,
                    required,
                    preferred: preferred.map(|(a, ms)| PreferredAgent {
                        agent: AgentId(u64::from(a)),
                        timeout_ms: u64::from(ms),
                    }),
                    ..NewTask::new(TaskId(u64::from(*id)), QueueId(u64::from(*queue) + 1))
                };
                let id = t.id;
                let was_live = tr.live.contains(&id);
                // The task is live from here on; its events are replayed below.
                if call(&mut h, &mut inputs, Input::Enqueue(t)).is_ok() {
                    prop_assert!(!was_live, "duplicate id accepted");
                    tr.live.insert(id);
                    tr.enqueued += 1;
                }
            }
            Op::Accept(i) | Op::Reject(i) => {
                if let Some((task, agent)) = tr.pick_offer(*i) {
                    let input = if matches!(op, Op::Accept(_)) {
                        Input::Accept { task, agent }
                    } else {
                        Input::Reject { task, agent }
                    };
                    let res = call(&mut h, &mut inputs, input);
                    prop_assert!(res.is_ok(), "{res:?}");
                }
            }
            Op::Cancel(id) => {
                let task = TaskId(u64::from(*id));
                let _ = call(&mut h, &mut inputs, Input::Cancel { task });
            }
            Op::Complete(i) => {
                if let Some(task) = tr.pick_assigned(*i) {
                    let res = call(&mut h, &mut inputs, Input::Complete { task });
                    prop_assert!(res.is_ok(), "{res:?}");
                }
            }
            Op::Status(a, k) => {
                let status = match k {
                    0 => Status::Available,
                    1 => Status::Away {
                        reason: AwayReason::Code("break".into()),
                    },
                    _ => Status::Offline,
                };
                let agent = AgentId(u64::from(*a));
                // Refused only for a removed agent.
                let res = call(&mut h, &mut inputs, Input::SetStatus { agent, status });
                prop_assert!(res.is_ok() || h.r.agent_view(agent).is_none());
            }
            Op::Priority(t, p) => {
                let task = TaskId(u64::from(*t));
                let priority = Priority(u32::from(*p));
                let _ = call(&mut h, &mut inputs, Input::SetPriority { task, priority });
            }
            Op::Agitation(t, x) => {
                let task = TaskId(u64::from(*t));
                let agitation = f32::from(*x) / 10.0;
                let _ = call(&mut h, &mut inputs, Input::SetAgitation { task, agitation });
            }
            Op::Retrain(a, levels) => {
                let spec = agents[usize::from(*a) % agents.len()].clone();
                let cfg = agent_config(&mut h, *a % agents.len() as u8, *levels, &spec);
                call(&mut h, &mut inputs, Input::UpsertAgent(cfg))
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            Op::EndWrapUp(a) => {
                let agent = AgentId(u64::from(*a));
                let res = call(&mut h, &mut inputs, Input::EndWrapUp { agent });
                prop_assert!(res.is_ok() || h.r.agent_view(agent).is_none());
            }
            Op::RemoveAgent(a) => {
                let agent = AgentId(u64::from(*a));
                let busy =
                    h.r.agent_view(agent)
                        .is_some_and(|v| v.state == crate::AgentState::Busy);
                let res = call(&mut h, &mut inputs, Input::RemoveAgent(agent));
                prop_assert!(res.is_ok() || busy || h.r.agent_view(agent).is_none());
            }
            Op::Reconfigure(pick, wide) => {
                let strategy = PICKS[usize::from(*pick) % PICKS.len()];
                if strategy == Pick::RingAll {
                    tr.ring.insert(QueueId(3));
                }
                let q3 = queue3(&mut h, strategy, *wide);
                call(&mut h, &mut inputs, Input::UpsertQueue(q3))
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            Op::Advance(ms) => {
                let target = h.now + u64::from(*ms);
                while let Some(at) = h.r.poll_timeout().filter(|at| at.0 <= target) {
                    h.now = at.0;
                    h.r.handle_timeout(at);
                    h.drain();
                }
                h.now = target;
            }
        }
        for e in &h.log[seen..] {
            tr.apply(e).map_err(TestCaseError::fail)?;
        }
        seen = h.log.len();
    }
    // Drain: hang up on everything still live; every task must then have ended once.
    let live: Vec<TaskId> = tr.live.iter().copied().collect();
    for task in live {
        // A timer due now may have ended it already.
        let _ = call(&mut h, &mut inputs, Input::Cancel { task });
    }
    let now = h.t();
    h.r.handle_timeout(now);
    // A refused input still fires the timers due before it: it ends the replay at the
    // same time.
    inputs.push((
        now,
        Input::EndWrapUp {
            agent: AgentId(u64::MAX),
        },
    ));
    h.drain();
    for e in &h.log[seen..] {
        tr.apply(e).map_err(TestCaseError::fail)?;
    }
    prop_assert!(tr.live.is_empty(), "tasks never ended: {:?}", tr.live);
    prop_assert_eq!(tr.enqueued, tr.ended);
    prop_assert_eq!(h.r.task_count(), 0);
    Ok((h.log, inputs))
}

/// Replays recorded inputs without ever calling `handle_timeout` in between: each input
/// fires the timers that fell due before it.
fn replay_lazily(
    s1: Pick,
    s3: Pick,
    agents: &[AgentSpec],
    inputs: &[(Timestamp, Input)],
) -> Vec<EventRecord> {
    let mut h = world(s1, s3, agents);
    for (at, input) in inputs {
        h.now = at.0;
        let _ = h.r.handle_input(*at, input.clone());
        h.drain();
    }
    h.log
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Invariants hold after every operation, whatever the sequence; every task ends
    /// exactly once; replaying the same operations gives the same event log, whether the
    /// driver polls every deadline or never.
    #[test]
    fn random_operations_keep_every_invariant(
        s1 in strategy(),
        s3 in strategy(),
        agents in prop::collection::vec(agent_spec(), 5),
        ops in prop::collection::vec(op(), 1..70),
    ) {
        let (log, inputs) = run(s1, s3, &agents, &ops)?;
        let (again, _) = run(s1, s3, &agents, &ops)?;
        prop_assert_eq!(&log, &again, "same inputs, different events");
        let lazy = replay_lazily(s1, s3, &agents, &inputs);
        prop_assert_eq!(&log, &lazy, "polling cadence changed the events");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// No starvation under aging: a priority-0 task waiting while higher-priority tasks
    /// keep arriving (one per service) is served once the tasks created within
    /// `gap / rate` minutes after it are gone.
    #[test]
    fn aging_prevents_starvation(
        rate in 1u32..=30,
        gap in 1u32..=20,
        service_ms in 5_000u64..=30_000,
    ) {
        let mut h = Harness::new();
        let mut q = QueueConfig::new(QueueId(1));
        q.aging_per_minute = rate;
        h.run(|r, now| r.handle_upsert_queue(now, q)).unwrap();
        h.agent(1, &[]);
        h.enqueue(1_000_000, 1, gap).unwrap();
        h.accept(1_000_000, 1);
        h.enqueue(0, 1, 0).unwrap();
        let mut current = 1_000_000u64;
        let bound = (u64::from(gap) * 60_000 / u64::from(rate)) / service_ms + 3;
        let mut cycles = 0;
        loop {
            cycles += 1;
            prop_assert!(cycles <= bound, "starved for {} cycles (bound {})", cycles, bound);
            h.now += service_ms;
            h.enqueue(cycles, 1, gap).unwrap();
            h.complete(current);
            let (task, _) = h.last_offer().unwrap();
            h.accept(task, 1);
            if task == 0 {
                break;
            }
            current = task;
        }
        prop_assert!(h.r.task(TaskId(0)).is_some());
        prop_assert!(h.r.now() >= Timestamp(0));
    }
}
