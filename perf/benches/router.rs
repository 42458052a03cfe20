//! Routing decisions at contact-center scale: 10,000 agents, 50 skills, 50 queues and
//! 100,000 waiting tasks.
//!
//! The world: queue `q` routes to `s{q}>=3` for 30 s, then to anyone with `s{q}`; queues
//! rotate through the five ranking strategies. 9,000 agents hold four skills among s0–s44
//! and are all busy, with 100,000 tasks waiting in queues 0–44. 1,000 agents hold two
//! skills among s45–s49; their queues are empty and most of them are idle.
//!
//! * `enqueue_wait`: a task arrives in a backlog queue, finds no agent and waits (then is
//!   cancelled, to keep the backlog at 100,000): 2 inputs.
//! * `enqueue_match`: a task arrives in a spare queue and is offered to an idle agent, who
//!   accepts and completes it: 3 inputs, one decision.
//! * `agent_free_match`: a busy agent completes its task, takes the best waiting task across
//!   its queues and accepts it; a replacement task arrives: 3 inputs, one decision.
//!
//! Virtual time advances 1 ms per input, so routing steps expire and timers fire as in
//! production. Events are drained after every input.
//!
//! After the criterion groups, `cargo bench` also prints per-input latency percentiles
//! (wall time of single `handle_*` calls) for the same three paths.
#![allow(missing_docs)]
// Benchmark set-up: a failure here is a broken benchmark, not a runtime condition.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use switchboard_router::{
    AgentConfig, AgentId, Event, NewTask, PerChannel, Priority, QueueConfig, QueueId, Router,
    RouterConfig, RoutingStep, SkillExpr, Status, Strategy, TaskId, Timestamp,
};

const SKILLS: usize = 50;
const QUEUES: usize = 50;
const BACKLOG_QUEUES: u64 = 45;
const BACKLOG_AGENTS: u64 = 9_000;
const SPARE_AGENTS: u64 = 1_000;
const WAITING: usize = 100_000;

/// xorshift64*: a fixed, dependency-free sequence.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct World {
    r: Router,
    now: u64,
    rng: Rng,
    next_task: u64,
    /// Backlog tasks assigned to agents, completed round-robin.
    assigned: Vec<TaskId>,
    cursor: usize,
    waiting: usize,
}

impl World {
    fn tick(&mut self) -> Timestamp {
        self.now += 1;
        Timestamp(self.now)
    }

    /// Drains events; accepts every offer at once. Returns the assigned task, if any.
    fn pump(&mut self) -> Option<TaskId> {
        let mut offers = Vec::new();
        let mut assigned = None;
        while let Some(e) = self.r.poll_event() {
            match e.event {
                Event::TaskOffered { task, agent, .. } => offers.push((task, agent)),
                Event::TaskAssigned { task, .. } => assigned = Some(task),
                _ => {}
            }
        }
        for (task, agent) in offers {
            let now = Timestamp(self.now);
            self.r.handle_accept(now, task, agent).unwrap();
            while let Some(e) = self.r.poll_event() {
                if let Event::TaskAssigned { task, .. } = e.event {
                    assigned = Some(task);
                }
            }
        }
        assigned
    }

    fn new_task(&mut self, queue: u64) -> NewTask {
        self.next_task += 1;
        NewTask {
            priority: Priority(self.rng.below(10) as u32),
            ..NewTask::new(TaskId(self.next_task), QueueId(queue))
        }
    }

    fn build() -> World {
        let mut r = Router::new(RouterConfig::default());
        let skills: Vec<_> = (0..SKILLS)
            .map(|i| r.skill(&format!("s{i}")).unwrap())
            .collect();
        let strategies = [
            Strategy::LongestIdle,
            Strategy::MostSkilled,
            Strategy::LeastOccupied,
            Strategy::RoundRobin,
            Strategy::FewestTasks,
        ];
        let t0 = Timestamp(0);
        for (q, &skill) in skills.iter().enumerate().take(QUEUES) {
            let mut cfg = QueueConfig::new(QueueId(q as u64));
            cfg.steps = vec![
                RoutingStep {
                    expr: SkillExpr::Level {
                        skill,
                        cmp: switchboard_router::Cmp::Ge,
                        level: 3,
                    },
                    expires_after_ms: Some(30_000),
                },
                RoutingStep {
                    expr: SkillExpr::has(skill),
                    expires_after_ms: None,
                },
            ];
            cfg.strategy = strategies[q % strategies.len()];
            cfg.offer_timeout_ms = 24 * 3_600_000;
            r.handle_upsert_queue(t0, cfg).unwrap();
        }
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let voice = PerChannel {
            voice: 1,
            ..PerChannel::default()
        };
        for a in 0..BACKLOG_AGENTS + SPARE_AGENTS {
            let (base, span, count) = if a < BACKLOG_AGENTS {
                (0, BACKLOG_QUEUES, 4)
            } else {
                (BACKLOG_QUEUES, QUEUES as u64 - BACKLOG_QUEUES, 2)
            };
            let mut mine: Vec<(switchboard_router::SkillId, u8)> = Vec::new();
            while mine.len() < count {
                let s = skills[(base + rng.below(span)) as usize];
                if !mine.iter().any(|m| m.0 == s) {
                    mine.push((s, 1 + rng.below(5) as u8));
                }
            }
            let cfg = AgentConfig {
                skills: mine,
                capacity: voice,
                ..AgentConfig::new(AgentId(a))
            };
            r.handle_upsert_agent(t0, cfg).unwrap();
            r.handle_status(t0, AgentId(a), Status::Available).unwrap();
        }
        let mut w = World {
            r,
            now: 0,
            rng,
            next_task: 0,
            assigned: Vec::new(),
            cursor: 0,
            waiting: 0,
        };
        while w.r.poll_event().is_some() {}
        // Fill: every backlog agent busy, then 100,000 waiting.
        loop {
            let q = w.rng.below(BACKLOG_QUEUES);
            let t = w.new_task(q);
            let now = w.tick();
            w.r.handle_enqueue(now, t).unwrap();
            match w.pump() {
                Some(task) => w.assigned.push(task),
                None => w.waiting += 1,
            }
            if w.waiting >= WAITING {
                break;
            }
        }
        w
    }

    /// Enqueue into a backlog queue (waits), then cancel it.
    fn enqueue_wait(&mut self) {
        let q = self.rng.below(BACKLOG_QUEUES);
        let t = self.new_task(q);
        let id = t.id;
        let now = self.tick();
        self.r.handle_enqueue(now, t).unwrap();
        self.pump();
        let now = self.tick();
        self.r.handle_cancel(now, id).unwrap();
        self.pump();
    }

    /// Enqueue into a spare queue: offered, accepted, completed.
    fn enqueue_match(&mut self) {
        let q = BACKLOG_QUEUES + self.rng.below(QUEUES as u64 - BACKLOG_QUEUES);
        let t = self.new_task(q);
        let id = t.id;
        let now = self.tick();
        self.r.handle_enqueue(now, t).unwrap();
        let assigned = self.pump();
        self.finish(id, assigned.is_some());
    }

    /// Completes an assigned task, or cancels one still waiting.
    fn finish(&mut self, id: TaskId, assigned: bool) {
        let now = self.tick();
        if assigned {
            self.r.handle_complete(now, id).unwrap();
        } else {
            self.r.handle_cancel(now, id).unwrap();
        }
        self.pump();
    }

    /// A busy agent completes; it takes the best waiting task; a new task arrives.
    fn agent_free_match(&mut self) {
        let i = self.cursor % self.assigned.len();
        self.cursor += 1;
        let done = self.assigned[i];
        let now = self.tick();
        self.r.handle_complete(now, done).unwrap();
        let next = self.pump().expect("a waiting task for the freed agent");
        self.assigned[i] = next;
        let q = self.rng.below(BACKLOG_QUEUES);
        let t = self.new_task(q);
        let now = self.tick();
        self.r.handle_enqueue(now, t).unwrap();
        if let Some(task) = self.pump() {
            self.assigned.push(task);
        }
    }
}

fn router_benches(c: &mut Criterion) {
    let mut w = World::build();
    assert_eq!(w.r.agent_count(), 10_000);
    assert!(w.r.task_count() >= WAITING + BACKLOG_AGENTS as usize / 2);
    let mut g = c.benchmark_group("router");
    g.bench_function("enqueue_wait", |b| b.iter(|| w.enqueue_wait()));
    g.bench_function("enqueue_match", |b| b.iter(|| w.enqueue_match()));
    g.bench_function("agent_free_match", |b| b.iter(|| w.agent_free_match()));
    g.finish();
    black_box(&w.r);
}

/// Wall time of single inputs on the decision paths, as percentiles.
fn latency_report() {
    let mut w = World::build();
    let n = 200_000;
    let mut enqueue_wait = Vec::with_capacity(n);
    let mut enqueue_match = Vec::with_capacity(n);
    let mut free_match = Vec::with_capacity(n);
    for _ in 0..n {
        // Enqueue that waits.
        let q = w.rng.below(BACKLOG_QUEUES);
        let t = w.new_task(q);
        let id = t.id;
        let now = w.tick();
        let start = Instant::now();
        w.r.handle_enqueue(now, t).unwrap();
        enqueue_wait.push(start.elapsed());
        w.pump();
        let now = w.tick();
        w.r.handle_cancel(now, id).unwrap();
        w.pump();
        // Enqueue that matches an idle agent.
        let q = BACKLOG_QUEUES + w.rng.below(QUEUES as u64 - BACKLOG_QUEUES);
        let t = w.new_task(q);
        let id = t.id;
        let now = w.tick();
        let start = Instant::now();
        w.r.handle_enqueue(now, t).unwrap();
        enqueue_match.push(start.elapsed());
        let assigned = w.pump();
        w.finish(id, assigned.is_some());
        // A completion that frees an agent, which takes the best waiting task.
        let i = w.cursor % w.assigned.len();
        w.cursor += 1;
        let now = w.tick();
        let start = Instant::now();
        w.r.handle_complete(now, w.assigned[i]).unwrap();
        free_match.push(start.elapsed());
        w.assigned[i] = w.pump().expect("a waiting task");
        let q = w.rng.below(BACKLOG_QUEUES);
        let t = w.new_task(q);
        let now = w.tick();
        w.r.handle_enqueue(now, t).unwrap();
        if let Some(task) = w.pump() {
            w.assigned.push(task);
        }
    }
    println!("router single-input latency ({n} samples each, 10,000 agents, 100,000 waiting):");
    for (name, mut v) in [
        ("enqueue_wait", enqueue_wait),
        ("enqueue_match", enqueue_match),
        ("agent_free_match (complete)", free_match),
    ] {
        v.sort_unstable();
        let at = |p: f64| v[((v.len() - 1) as f64 * p) as usize];
        let mean = v.iter().sum::<Duration>() / v.len() as u32;
        println!(
            "  {name:<28} mean {:>7.2?}  p50 {:>7.2?}  p99 {:>7.2?}  p99.9 {:>7.2?}",
            mean,
            at(0.50),
            at(0.99),
            at(0.999)
        );
    }
}

criterion_group!(benches, router_benches);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // `cargo bench` passes `--bench`; `cargo test --benches` does not.
    if std::env::args().any(|a| a == "--bench") {
        latency_report();
    }
}
