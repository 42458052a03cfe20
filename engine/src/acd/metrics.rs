//! ACD figures for `/metrics`: fixed-capacity atomics the shard publishes about twice a
//! second and the HTTP handler reads at scrape time.
//!
//! The shard is the only writer of the gauges (relaxed stores, no read-modify-write, no
//! lock); the store thread and the control tasks bump a few counters with `fetch_add`. Each
//! figure is read on its own, so one scrape may mix values from two publications — as with
//! any set of Prometheus gauges. The first [`EXPORTED_QUEUES`] queues get a slot; further
//! queues are counted in `switchboard_acd_queues_unexported` (their figures stay available
//! through `queue.stats`).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use switchboard_router::QueueStats;

/// Queues with their own series in `/metrics`.
pub const EXPORTED_QUEUES: usize = 256;

/// A slot's id when no queue uses it.
const EMPTY: u64 = u64::MAX;

/// Agent states, in the order of the state gauges.
pub(crate) const STATES: [&str; 4] = ["idle", "reserved", "busy", "wrap_up"];
/// Agent statuses, in the order of the status gauges.
pub(crate) const STATUSES: [&str; 3] = ["available", "away", "offline"];

/// One queue's published figures.
#[derive(Debug)]
struct QueueSlot {
    id: AtomicU64,
    waiting: AtomicU64,
    offered: AtomicU64,
    longest_wait_ms: AtomicU64,
    /// `f64` bits; NaN when there is nothing to divide by.
    service_level: AtomicU64,
    abandon_rate: AtomicU64,
    asa_ms: AtomicU64,
    occupancy: AtomicU64,
    /// Since the queue was created: entered, answered, answered within the service level,
    /// abandoned, left, overflowed, completed.
    totals: [AtomicU64; 7],
    /// Eligible agents by state (idle, reserved, busy, wrap-up), then by status
    /// (available, away, offline).
    agents: [AtomicU64; 7],
}

/// A per-queue series: name, help, the slot's field and the scale to its unit.
type Series = (
    &'static str,
    &'static str,
    fn(&QueueSlot) -> &AtomicU64,
    f64,
);

const TOTALS: [&str; 7] = [
    "entered",
    "answered",
    "answered_within_sl",
    "abandoned",
    "left",
    "overflowed",
    "completed",
];

impl QueueSlot {
    fn new() -> Self {
        QueueSlot {
            id: AtomicU64::new(EMPTY),
            waiting: AtomicU64::new(0),
            offered: AtomicU64::new(0),
            longest_wait_ms: AtomicU64::new(0),
            service_level: AtomicU64::new(f64::NAN.to_bits()),
            abandon_rate: AtomicU64::new(f64::NAN.to_bits()),
            asa_ms: AtomicU64::new(f64::NAN.to_bits()),
            occupancy: AtomicU64::new(f64::NAN.to_bits()),
            totals: Default::default(),
            agents: Default::default(),
        }
    }
}

/// Agents by state and by status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct AgentFigures {
    /// Logged in and idle.
    pub idle: u64,
    /// Holding an offer.
    pub reserved: u64,
    /// Working on a task.
    pub busy: u64,
    /// In wrap-up.
    pub wrap_up: u64,
    /// Status available.
    pub available: u64,
    /// Status away.
    pub away: u64,
    /// Status offline.
    pub offline: u64,
}

impl AgentFigures {
    fn from_slots(a: &[AtomicU64; 7]) -> Self {
        let v = |i: usize| a[i].load(Ordering::Relaxed);
        AgentFigures {
            idle: v(0),
            reserved: v(1),
            busy: v(2),
            wrap_up: v(3),
            available: v(4),
            away: v(5),
            offline: v(6),
        }
    }
}

/// One queue's figures as last published by the shard (about twice a second).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct QueueFigures {
    /// Queue id.
    pub queue: u64,
    /// Tasks waiting in line.
    pub waiting: u64,
    /// Tasks being offered.
    pub offered: u64,
    /// The longest current wait, ms.
    pub longest_wait_ms: u64,
    /// Answered within the service-level threshold over ended waits (sliding window).
    pub service_level: Option<f64>,
    /// Abandoned over ended waits (sliding window).
    pub abandon_rate: Option<f64>,
    /// Average speed of answer, ms (sliding window).
    pub asa_ms: Option<f64>,
    /// Share of staffed eligible agents not idle.
    pub occupancy: Option<f64>,
    /// Tasks that entered since the queue was created.
    pub entered: u64,
    /// Tasks answered since the queue was created.
    pub answered: u64,
    /// Tasks abandoned since the queue was created.
    pub abandoned: u64,
    /// Eligible agents by state and status.
    pub agents: AgentFigures,
}

/// The ACD's counters and gauges.
#[derive(Debug)]
pub struct AcdMetrics {
    queues: Box<[QueueSlot]>,
    queues_total: AtomicU64,
    tasks_live: AtomicU64,
    agents_by_state: [AtomicU64; 4],
    agents_by_status: [AtomicU64; 3],
    events: AtomicU64,
    events_dropped: AtomicU64,
    requests_rejected: AtomicU64,
    call_events_missed: AtomicU64,
    store_batches: AtomicU64,
    store_writes: AtomicU64,
    store_errors: AtomicU64,
    store_waits: AtomicU64,
    restored: AtomicU64,
    ended_on_restore: AtomicU64,
}

impl Default for AcdMetrics {
    fn default() -> Self {
        AcdMetrics {
            queues: (0..EXPORTED_QUEUES).map(|_| QueueSlot::new()).collect(),
            queues_total: AtomicU64::new(0),
            tasks_live: AtomicU64::new(0),
            agents_by_state: Default::default(),
            agents_by_status: Default::default(),
            events: AtomicU64::new(0),
            events_dropped: AtomicU64::new(0),
            requests_rejected: AtomicU64::new(0),
            call_events_missed: AtomicU64::new(0),
            store_batches: AtomicU64::new(0),
            store_writes: AtomicU64::new(0),
            store_errors: AtomicU64::new(0),
            store_waits: AtomicU64::new(0),
            restored: AtomicU64::new(0),
            ended_on_restore: AtomicU64::new(0),
        }
    }
}

fn set(c: &AtomicU64, v: u64) {
    c.store(v, Ordering::Relaxed);
}

fn set_ratio(c: &AtomicU64, v: Option<f64>) {
    c.store(v.unwrap_or(f64::NAN).to_bits(), Ordering::Relaxed);
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl AcdMetrics {
    /// Publishes one queue's statistics into `slot` (shard only).
    pub(crate) fn set_queue(&self, slot: usize, s: &QueueStats) {
        let Some(q) = self.queues.get(slot) else {
            return;
        };
        set(&q.id, s.queue.0);
        set(&q.waiting, u64::from(s.waiting));
        set(&q.offered, u64::from(s.offered_now));
        set(&q.longest_wait_ms, s.longest_wait_ms);
        set_ratio(&q.service_level, s.window.service_level);
        set_ratio(&q.abandon_rate, s.window.abandon_rate);
        set_ratio(&q.asa_ms, s.window.asa_ms);
        set_ratio(&q.occupancy, s.occupancy);
        let t = &s.total;
        let totals = [
            t.entered,
            t.answered,
            t.answered_within_sl,
            t.abandoned,
            t.left,
            t.overflowed,
            t.completed,
        ];
        for (c, v) in q.totals.iter().zip(totals) {
            set(c, v);
        }
        let a = &s.agents;
        let agents = [
            a.idle,
            a.reserved,
            a.busy,
            a.wrap_up,
            a.available,
            a.away,
            a.offline,
        ];
        for (c, v) in q.agents.iter().zip(agents) {
            set(c, u64::from(v));
        }
    }

    /// Frees a slot whose queue was removed (shard only).
    pub(crate) fn clear_queue(&self, slot: usize) {
        if let Some(q) = self.queues.get(slot) {
            set(&q.id, EMPTY);
        }
    }

    /// Publishes the engine-wide figures (shard only).
    pub(crate) fn set_totals(
        &self,
        queues: usize,
        tasks: usize,
        by_state: &[u64; 4],
        by_status: &[u64; 3],
    ) {
        set(&self.queues_total, queues as u64);
        set(&self.tasks_live, tasks as u64);
        for (c, v) in self.agents_by_state.iter().zip(by_state) {
            set(c, *v);
        }
        for (c, v) in self.agents_by_status.iter().zip(by_status) {
            set(c, *v);
        }
    }

    pub(crate) fn count_event(&self) {
        bump(&self.events, 1);
    }
    pub(crate) fn count_event_dropped(&self) {
        bump(&self.events_dropped, 1);
    }
    pub(crate) fn count_rejected(&self) {
        bump(&self.requests_rejected, 1);
    }
    pub(crate) fn count_call_events_missed(&self, n: u64) {
        bump(&self.call_events_missed, n);
    }
    pub(crate) fn count_store_batch(&self, writes: usize) {
        bump(&self.store_batches, 1);
        bump(&self.store_writes, writes as u64);
    }
    pub(crate) fn count_store_error(&self) {
        bump(&self.store_errors, 1);
    }
    pub(crate) fn count_store_wait(&self) {
        bump(&self.store_waits, 1);
    }
    pub(crate) fn count_restored(&self, restored: u64, ended: u64) {
        bump(&self.restored, restored);
        bump(&self.ended_on_restore, ended);
    }

    /// The published figures of every exported queue, for the dashboard (lock-free reads).
    #[must_use]
    pub fn queue_figures(&self) -> Vec<QueueFigures> {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let ratio = |c: &AtomicU64| Some(f64::from_bits(load(c))).filter(|v| v.is_finite());
        self.queues
            .iter()
            .filter(|q| load(&q.id) != EMPTY)
            .map(|q| QueueFigures {
                queue: load(&q.id),
                waiting: load(&q.waiting),
                offered: load(&q.offered),
                longest_wait_ms: load(&q.longest_wait_ms),
                service_level: ratio(&q.service_level),
                abandon_rate: ratio(&q.abandon_rate),
                asa_ms: ratio(&q.asa_ms),
                occupancy: ratio(&q.occupancy),
                entered: load(&q.totals[0]),
                answered: load(&q.totals[1]),
                abandoned: load(&q.totals[3]),
                agents: AgentFigures::from_slots(&q.agents),
            })
            .collect()
    }

    /// Agents by state and status, engine wide.
    #[must_use]
    pub fn agent_figures(&self) -> AgentFigures {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let s = &self.agents_by_state;
        let t = &self.agents_by_status;
        AgentFigures {
            idle: load(&s[0]),
            reserved: load(&s[1]),
            busy: load(&s[2]),
            wrap_up: load(&s[3]),
            available: load(&t[0]),
            away: load(&t[1]),
            offline: load(&t[2]),
        }
    }

    /// Live tasks (waiting, offered or assigned).
    #[must_use]
    pub fn tasks_live(&self) -> u64 {
        self.tasks_live.load(Ordering::Relaxed)
    }

    /// Appends the ACD section of the Prometheus text exposition to `out`.
    pub fn render(&self, out: &mut String) {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let live: Vec<(u64, &QueueSlot)> = self
            .queues
            .iter()
            .map(|q| (load(&q.id), q))
            .filter(|(id, _)| *id != EMPTY)
            .collect();
        let head = |out: &mut String, name: &str, help: &str, kind: &str| {
            let _ = writeln!(
                out,
                "# HELP switchboard_acd_{name} {help}\n# TYPE switchboard_acd_{name} {kind}"
            );
        };
        let gauges: [Series; 3] = [
            (
                "queue_waiting",
                "Tasks waiting in line.",
                |q| &q.waiting,
                1.0,
            ),
            (
                "queue_offered",
                "Tasks being offered to agents.",
                |q| &q.offered,
                1.0,
            ),
            (
                "queue_longest_wait_seconds",
                "The longest current wait (in line or being offered).",
                |q| &q.longest_wait_ms,
                1e-3,
            ),
        ];
        for (name, help, field, scale) in gauges {
            head(out, name, help, "gauge");
            for (id, q) in &live {
                let v = load(field(q));
                if scale == 1.0 {
                    let _ = writeln!(out, "switchboard_acd_{name}{{queue=\"{id}\"}} {v}");
                } else {
                    let _ = writeln!(
                        out,
                        "switchboard_acd_{name}{{queue=\"{id}\"}} {:.3}",
                        v as f64 * scale
                    );
                }
            }
        }
        let ratios: [Series; 4] = [
            (
                "queue_service_level",
                "Answered within the service-level target over ended waits, in the sliding window.",
                |q| &q.service_level,
                1.0,
            ),
            (
                "queue_abandon_rate",
                "Abandoned over ended waits, in the sliding window.",
                |q| &q.abandon_rate,
                1.0,
            ),
            (
                "queue_asa_seconds",
                "Average speed of answer in the sliding window.",
                |q| &q.asa_ms,
                1e-3,
            ),
            (
                "queue_occupancy",
                "Share of staffed eligible agents not idle.",
                |q| &q.occupancy,
                1.0,
            ),
        ];
        for (name, help, field, scale) in ratios {
            head(out, name, help, "gauge");
            for (id, q) in &live {
                let v = f64::from_bits(load(field(q)));
                if v.is_finite() {
                    let _ = writeln!(
                        out,
                        "switchboard_acd_{name}{{queue=\"{id}\"}} {:.6}",
                        v * scale
                    );
                }
            }
        }
        head(
            out,
            "queue_tasks_total",
            "Tasks by outcome since the queue was created (or the engine started).",
            "counter",
        );
        for (id, q) in &live {
            for (label, c) in TOTALS.iter().zip(&q.totals) {
                let _ = writeln!(
                    out,
                    "switchboard_acd_queue_tasks_total{{queue=\"{id}\",outcome=\"{label}\"}} {}",
                    load(c)
                );
            }
        }
        head(
            out,
            "queue_agents",
            "Eligible agents by state (logged-in idle and reserved; busy and wrap-up whatever their status).",
            "gauge",
        );
        for (id, q) in &live {
            for (label, c) in STATES.iter().zip(&q.agents[..4]) {
                let _ = writeln!(
                    out,
                    "switchboard_acd_queue_agents{{queue=\"{id}\",state=\"{label}\"}} {}",
                    load(c)
                );
            }
        }
        head(
            out,
            "queue_agents_status",
            "Eligible agents by status.",
            "gauge",
        );
        for (id, q) in &live {
            for (label, c) in STATUSES.iter().zip(&q.agents[4..]) {
                let _ = writeln!(
                    out,
                    "switchboard_acd_queue_agents_status{{queue=\"{id}\",status=\"{label}\"}} {}",
                    load(c)
                );
            }
        }
        head(out, "agents", "Agents by state.", "gauge");
        for (label, c) in STATES.iter().zip(&self.agents_by_state) {
            let _ = writeln!(
                out,
                "switchboard_acd_agents{{state=\"{label}\"}} {}",
                load(c)
            );
        }
        head(out, "agents_status", "Agents by status.", "gauge");
        for (label, c) in STATUSES.iter().zip(&self.agents_by_status) {
            let _ = writeln!(
                out,
                "switchboard_acd_agents_status{{status=\"{label}\"}} {}",
                load(c)
            );
        }
        let queues = load(&self.queues_total);
        let singles: [(&str, &str, &str, u64); 13] = [
            ("queues", "Queues defined.", "gauge", queues),
            (
                "queues_unexported",
                "Queues beyond the exported slots (see queue.stats).",
                "gauge",
                queues.saturating_sub(live.len() as u64),
            ),
            (
                "tasks_live",
                "Live tasks (waiting, offered or assigned).",
                "gauge",
                load(&self.tasks_live),
            ),
            (
                "events_total",
                "Events published.",
                "counter",
                load(&self.events),
            ),
            (
                "events_dropped_total",
                "Events dropped because the event queue was full.",
                "counter",
                load(&self.events_dropped),
            ),
            (
                "requests_rejected_total",
                "Requests refused because the ACD request queue was full.",
                "counter",
                load(&self.requests_rejected),
            ),
            (
                "call_events_missed_total",
                "Call-ended events the ACD missed (its subscriber lagged).",
                "counter",
                load(&self.call_events_missed),
            ),
            (
                "store_batches_total",
                "Transactions committed by the store thread.",
                "counter",
                load(&self.store_batches),
            ),
            (
                "store_writes_total",
                "Writes committed by the store thread.",
                "counter",
                load(&self.store_writes),
            ),
            (
                "store_errors_total",
                "Transactions that failed (their writes are lost).",
                "counter",
                load(&self.store_errors),
            ),
            (
                "store_waits_total",
                "Times the shard waited because the store queue was full.",
                "counter",
                load(&self.store_waits),
            ),
            (
                "restored_tasks_total",
                "Tasks put back in their queues at start-up.",
                "counter",
                load(&self.restored),
            ),
            (
                "restore_ended_tasks_total",
                "Persisted tasks ended at start-up (voice tasks whose calls are gone, unrestorable tasks).",
                "counter",
                load(&self.ended_on_restore),
            ),
        ];
        for (name, help, kind, v) in singles {
            head(out, name, help, kind);
            let _ = writeln!(out, "switchboard_acd_{name} {v}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_router::{QueueConfig, QueueId, Router, RouterConfig, Timestamp};

    #[test]
    fn renders_published_queues_only() {
        let m = AcdMetrics::default();
        let mut r = Router::new(RouterConfig::default());
        r.handle_upsert_queue(Timestamp(0), QueueConfig::new(QueueId(7)))
            .unwrap();
        let s = r.queue_stats(QueueId(7)).unwrap();
        m.set_queue(3, &s);
        m.set_totals(1, 0, &[1, 0, 0, 0], &[0, 0, 1]);
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains("switchboard_acd_queue_waiting{queue=\"7\"} 0"));
        assert!(out.contains("switchboard_acd_queue_longest_wait_seconds{queue=\"7\"} 0.000"));
        assert!(!out.contains("switchboard_acd_queue_service_level{"));
        assert!(out.contains("switchboard_acd_agents_status{status=\"offline\"} 1"));
        assert!(out.contains("switchboard_acd_queues_unexported 0"));
        m.clear_queue(3);
        let mut out = String::new();
        m.render(&mut out);
        assert!(!out.contains("queue=\"7\""));
    }
}
