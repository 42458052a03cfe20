//! Figures of ended calls and of the live-operations services for `/metrics`: per-leg quality
//! histograms (MOS, jitter, loss) fed from the call records, calls ended by reason, call
//! durations, the record writer's counters, the dashboard's viewers and the configured
//! media port capacity (for port-exhaustion alerts).
//!
//! Written off the media path (the record collector task, the writer thread, HTTP handlers)
//! with relaxed atomics; read at scrape time. Quality is summarised as histograms, never as a
//! series per call.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// MOS bucket bounds (E-model scale 1–5).
pub const MOS_BUCKETS: [f64; 9] = [1.5, 2.0, 2.5, 3.0, 3.5, 3.8, 4.0, 4.2, 4.4];
/// Jitter bucket bounds, seconds.
pub const JITTER_BUCKETS: [f64; 10] = [0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5];
/// Loss-ratio bucket bounds (lost over expected).
pub const LOSS_BUCKETS: [f64; 9] = [0.0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5];
/// Call-duration bucket bounds, seconds.
pub const DURATION_BUCKETS: [f64; 10] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// End reasons with their own series; anything else counts as `other`.
pub const REASONS: [&str; 8] = [
    "hangup", "deleted", "timeout", "shutdown", "forced", "drain", "error", "other",
];

/// A fixed-bucket histogram of atomics (cumulative buckets are computed when rendering).
#[derive(Debug)]
pub struct AtomicHistogram<const N: usize> {
    bounds: &'static [f64; N],
    counts: [AtomicU64; N],
    count: AtomicU64,
    /// The sum in millionths, so it stays an integer atomic.
    sum_micro: AtomicU64,
}

impl<const N: usize> AtomicHistogram<N> {
    /// An empty histogram over `bounds` (ascending upper bounds; `+Inf` is implied).
    #[must_use]
    pub fn new(bounds: &'static [f64; N]) -> Self {
        Self {
            bounds,
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_micro: AtomicU64::new(0),
        }
    }

    /// Counts one observation; NaN and negative values are ignored.
    pub fn observe(&self, v: f64) {
        if !v.is_finite() || v < 0.0 {
            return;
        }
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            if let Some(c) = self.counts.get(i) {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        // Bounded: a value past 1.8e13 saturates the cast, which only skews the sum.
        self.sum_micro
            .fetch_add((v * 1e6) as u64, Ordering::Relaxed);
    }

    /// Observations so far.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Cumulative counts per bound (the Prometheus `le` buckets, without `+Inf`).
    #[must_use]
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut acc = 0;
        self.bounds
            .iter()
            .zip(self.counts.iter())
            .map(|(b, c)| {
                acc += c.load(Ordering::Relaxed);
                (*b, acc)
            })
            .collect()
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, n) in self.cumulative() {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {n}");
        }
        let count = self.count();
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {count}\n{name}_sum {}\n{name}_count {count}",
            self.sum_micro.load(Ordering::Relaxed) as f64 / 1e6
        );
    }
}

/// The live-operations figures (call records, quality, dashboard).
#[derive(Debug)]
pub struct CdrMetrics {
    /// MOS of each leg of ended calls that had one.
    pub mos: AtomicHistogram<9>,
    /// Interarrival jitter of each leg of ended calls, seconds.
    pub jitter: AtomicHistogram<10>,
    /// Loss ratio of each leg of ended calls that received media.
    pub loss: AtomicHistogram<9>,
    /// Duration of ended calls, seconds.
    pub duration: AtomicHistogram<10>,
    /// Ended calls by reason, indexed like [`REASONS`].
    pub ended: [AtomicU64; 8],
    /// Records committed to the store.
    pub written: AtomicU64,
    /// Records lost because the writer's queue was full.
    pub dropped: AtomicU64,
    /// Store or file write errors.
    pub errors: AtomicU64,
    /// Events the record collector missed because it lagged behind the event stream.
    pub events_missed: AtomicU64,
    /// Dashboard viewers connected now.
    pub viewers: AtomicU64,
    /// Media port pairs (RTP + RTCP) the configured range offers per interface.
    pub port_pairs: AtomicU64,
}

impl Default for CdrMetrics {
    fn default() -> Self {
        Self {
            mos: AtomicHistogram::new(&MOS_BUCKETS),
            jitter: AtomicHistogram::new(&JITTER_BUCKETS),
            loss: AtomicHistogram::new(&LOSS_BUCKETS),
            duration: AtomicHistogram::new(&DURATION_BUCKETS),
            ended: Default::default(),
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            events_missed: AtomicU64::new(0),
            viewers: AtomicU64::new(0),
            port_pairs: AtomicU64::new(0),
        }
    }
}

impl CdrMetrics {
    /// Counts one ended call with `reason` (folded into [`REASONS`]).
    pub fn count_ended(&self, reason: &str) {
        let i = REASONS
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(REASONS.len() - 1);
        if let Some(c) = self.ended.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Appends this section of the Prometheus text exposition to `out`.
    pub fn render(&self, out: &mut String) {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        self.mos.render(
            out,
            "switchboard_leg_mos",
            "MOS estimate of each leg of ended calls.",
        );
        self.jitter.render(
            out,
            "switchboard_leg_jitter_seconds",
            "Interarrival jitter of each leg of ended calls.",
        );
        self.loss.render(
            out,
            "switchboard_leg_loss_ratio",
            "Packets lost over packets expected, per leg of ended calls.",
        );
        self.duration.render(
            out,
            "switchboard_call_duration_seconds",
            "Duration of ended calls.",
        );
        let _ = writeln!(
            out,
            "# HELP switchboard_calls_ended_total Ended calls by reason.\n\
             # TYPE switchboard_calls_ended_total counter"
        );
        for (r, c) in REASONS.iter().zip(self.ended.iter()) {
            let _ = writeln!(
                out,
                "switchboard_calls_ended_total{{reason=\"{r}\"}} {}",
                load(c)
            );
        }
        let singles: [(&str, &str, &str, u64); 6] = [
            (
                "cdr_written_total",
                "Call detail records committed.",
                "counter",
                load(&self.written),
            ),
            (
                "cdr_dropped_total",
                "Call detail records lost because the writer's queue was full.",
                "counter",
                load(&self.dropped),
            ),
            (
                "cdr_errors_total",
                "Call detail record store or file write errors.",
                "counter",
                load(&self.errors),
            ),
            (
                "cdr_events_missed_total",
                "Events the record collector missed (it lagged behind the event stream).",
                "counter",
                load(&self.events_missed),
            ),
            (
                "dashboard_viewers",
                "Dashboard live streams connected now.",
                "gauge",
                load(&self.viewers),
            ),
            (
                "port_pairs",
                "Media port pairs (RTP and RTCP) the configured range offers per interface.",
                "gauge",
                load(&self.port_pairs),
            ),
        ];
        for (name, help, kind, v) in singles {
            let _ = writeln!(
                out,
                "# HELP switchboard_{name} {help}\n# TYPE switchboard_{name} {kind}\nswitchboard_{name} {v}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_bounded() {
        let m = CdrMetrics::default();
        m.mos.observe(4.3);
        m.mos.observe(2.2);
        m.mos.observe(f64::NAN);
        m.loss.observe(0.0);
        m.jitter.observe(9.0);
        m.count_ended("timeout");
        m.count_ended("nonsense\"label");
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains("switchboard_leg_mos_bucket{le=\"2.5\"} 1"));
        assert!(out.contains("switchboard_leg_mos_bucket{le=\"4.4\"} 2"));
        assert!(out.contains("switchboard_leg_mos_count 2"));
        assert!(out.contains("switchboard_leg_loss_ratio_bucket{le=\"0\"} 1"));
        assert!(out.contains("switchboard_leg_jitter_seconds_bucket{le=\"0.5\"} 0"));
        assert!(out.contains("switchboard_leg_jitter_seconds_bucket{le=\"+Inf\"} 1"));
        assert!(out.contains("switchboard_calls_ended_total{reason=\"timeout\"} 1"));
        assert!(out.contains("switchboard_calls_ended_total{reason=\"other\"} 1"));
        assert!(!out.contains("nonsense"));
    }
}
