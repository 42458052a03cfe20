//! Per-queue statistics: live figures and counters over a sliding window.
//!
//! A task is *offered* to a queue's service level when its wait in that queue ends: answered
//! (assigned), abandoned, left or overflowed. Service level = answered within T / offered;
//! abandonment rate = abandoned / offered; average speed of answer = mean wait of the
//! answered. Counts are attributed to the window bucket of the moment the wait ended.

use serde::{Deserialize, Serialize};

use crate::types::{QueueId, Timestamp};

/// Raw counters for one period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    pub entered: u64,
    pub answered: u64,
    pub answered_in_sl: u64,
    pub abandoned: u64,
    pub left: u64,
    pub overflowed: u64,
    pub answered_wait_ms: u64,
    pub completed: u64,
    pub handle_ms: u64,
}

impl Counters {
    fn add(&mut self, o: &Counters) {
        self.entered += o.entered;
        self.answered += o.answered;
        self.answered_in_sl += o.answered_in_sl;
        self.abandoned += o.abandoned;
        self.left += o.left;
        self.overflowed += o.overflowed;
        self.answered_wait_ms = self.answered_wait_ms.saturating_add(o.answered_wait_ms);
        self.completed += o.completed;
        self.handle_ms = self.handle_ms.saturating_add(o.handle_ms);
    }

    pub(crate) fn period(&self) -> PeriodStats {
        let offered = self.answered + self.abandoned + self.left + self.overflowed;
        let ratio = |n: u64, d: u64| (d > 0).then(|| n as f64 / d as f64);
        PeriodStats {
            entered: self.entered,
            offered,
            answered: self.answered,
            answered_within_sl: self.answered_in_sl,
            abandoned: self.abandoned,
            left: self.left,
            overflowed: self.overflowed,
            completed: self.completed,
            service_level: ratio(self.answered_in_sl, offered),
            abandon_rate: ratio(self.abandoned, offered),
            asa_ms: ratio(self.answered_wait_ms, self.answered),
            aht_ms: ratio(self.handle_ms, self.completed),
        }
    }
}

/// Counters over a sliding window of fixed-size buckets, plus totals.
#[derive(Debug, Clone)]
pub(crate) struct Window {
    bucket_ms: u64,
    buckets: Vec<(u64, Counters)>,
    pub total: Counters,
}

impl Window {
    pub fn new(window_ms: u64, buckets: u16) -> Self {
        let n = u64::from(buckets.max(1));
        Window {
            bucket_ms: (window_ms / n).max(1),
            buckets: vec![(u64::MAX, Counters::default()); n as usize],
            total: Counters::default(),
        }
    }

    pub fn window_ms(&self) -> u64 {
        self.bucket_ms.saturating_mul(self.buckets.len() as u64)
    }

    pub fn record(&mut self, now: Timestamp, f: impl Fn(&mut Counters)) {
        let epoch = now.as_millis() / self.bucket_ms;
        let len = self.buckets.len() as u64;
        if let Some(slot) = self.buckets.get_mut((epoch % len) as usize) {
            if slot.0 != epoch {
                *slot = (epoch, Counters::default());
            }
            f(&mut slot.1);
        }
        f(&mut self.total);
    }

    pub fn sum(&self, now: Timestamp) -> Counters {
        let epoch = now.as_millis() / self.bucket_ms;
        let len = self.buckets.len() as u64;
        let mut out = Counters::default();
        for (e, c) in &self.buckets {
            if *e <= epoch && epoch - *e < len {
                out.add(c);
            }
        }
        out
    }
}

/// Counters and ratios for one period (the sliding window, or since the queue was created).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PeriodStats {
    /// Tasks that entered the queue.
    pub entered: u64,
    /// Tasks whose wait in the queue ended (answered + abandoned + left + overflowed).
    pub offered: u64,
    /// Tasks assigned to an agent.
    pub answered: u64,
    /// Tasks assigned within the service-level target.
    pub answered_within_sl: u64,
    /// Tasks whose customer hung up (or that were cancelled) before assignment.
    pub abandoned: u64,
    /// Tasks that left unanswered (max wait, no agents).
    pub left: u64,
    /// Tasks that overflowed to another queue.
    pub overflowed: u64,
    /// Tasks completed by agents.
    pub completed: u64,
    /// answered_within_sl / offered.
    pub service_level: Option<f64>,
    /// abandoned / offered.
    pub abandon_rate: Option<f64>,
    /// Average speed of answer: mean wait of the answered, in milliseconds.
    pub asa_ms: Option<f64>,
    /// Average handle time (assignment to completion, plus the queue's wrap-up), in
    /// milliseconds.
    pub aht_ms: Option<f64>,
}

/// The agents eligible for a queue (matching any of its steps), by status and state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentCounts {
    /// Eligible agents, whatever their status.
    pub members: u32,
    /// Status available.
    pub available: u32,
    /// Status away.
    pub away: u32,
    /// Status offline.
    pub offline: u32,
    /// Logged in and idle.
    pub idle: u32,
    /// Logged in and reserved.
    pub reserved: u32,
    /// Busy (whatever the status).
    pub busy: u32,
    /// Wrapping up (whatever the status).
    pub wrap_up: u32,
}

/// A queue's statistics at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueStats {
    /// The queue.
    pub queue: QueueId,
    /// When these figures were taken.
    pub at: Timestamp,
    /// Tasks waiting in line.
    pub waiting: u32,
    /// Tasks being offered.
    pub offered_now: u32,
    /// The longest current wait (in line or being offered), in milliseconds.
    pub longest_wait_ms: u64,
    /// Eligible agents by status and state.
    pub agents: AgentCounts,
    /// Of the eligible agents that are available, or busy/wrapping up whatever their
    /// status: the share not idle.
    pub occupancy: Option<f64>,
    /// The sliding window's length, in milliseconds.
    pub window_ms: u64,
    /// Counters over the sliding window.
    pub window: PeriodStats,
    /// Counters since the queue was created.
    pub total: PeriodStats,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_forgets_old_buckets() {
        let mut w = Window::new(60_000, 6);
        w.record(Timestamp(0), |c| c.entered += 1);
        w.record(Timestamp(15_000), |c| c.entered += 2);
        assert_eq!(w.sum(Timestamp(59_999)).entered, 3);
        assert_eq!(w.sum(Timestamp(60_000)).entered, 2);
        assert_eq!(w.sum(Timestamp(80_000)).entered, 0);
        assert_eq!(w.total.entered, 3);
        w.record(Timestamp(130_000), |c| c.entered += 5);
        assert_eq!(w.sum(Timestamp(130_000)).entered, 5);
    }

    #[test]
    fn ratios() {
        let c = Counters {
            answered: 8,
            answered_in_sl: 6,
            abandoned: 2,
            answered_wait_ms: 80,
            ..Counters::default()
        };
        let p = c.period();
        assert_eq!(p.offered, 10);
        assert_eq!(p.service_level, Some(0.6));
        assert_eq!(p.abandon_rate, Some(0.2));
        assert_eq!(p.asa_ms, Some(10.0));
        assert_eq!(p.aht_ms, None);
    }
}
