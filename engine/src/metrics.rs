//! Engine counters and their Prometheus text rendering.
//!
//! Media workers each own a [`WorkerMetrics`] (cache-padded atomics, written only by that
//! worker with relaxed stores, so the packet path never contends); the HTTP handler sums them
//! at scrape time. Control-plane figures (NG and native requests) live in [`ControlMetrics`],
//! touched only off the media path; it also carries the ACD's section
//! ([`crate::acd::AcdMetrics`]), rendered last.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crossbeam::utils::CachePadded;

/// Counters of one media worker. Single writer (the worker), any number of readers.
#[derive(Debug)]
pub struct WorkerMetrics {
    /// Worker index.
    pub index: usize,
    /// Datagrams received on media ports.
    pub rx_packets: CachePadded<AtomicU64>,
    /// Bytes received on media ports.
    pub rx_bytes: AtomicU64,
    /// Datagrams relayed (sent).
    pub tx_packets: AtomicU64,
    /// Bytes relayed (sent).
    pub tx_bytes: AtomicU64,
    /// Calls on this worker.
    pub calls_active: AtomicU64,
    /// Legs on this worker.
    pub legs_active: AtomicU64,
    /// Nanoseconds spent handling work (not waiting in the driver).
    pub busy_ns: AtomicU64,
    /// Nanoseconds of loop time in all.
    pub loop_ns: AtomicU64,
    /// Dropped packets, indexed like `drop_labels`.
    pub drops: Box<[AtomicU64]>,
    /// Metric label of each drop counter.
    pub drop_labels: &'static [&'static str],
    // --- Decoded media (mixing, transcoding, prompts, DTMF) ---
    /// Calls whose legs are (partly) mixed.
    pub mixing_calls: AtomicU64,
    /// Legs under a mixer.
    pub mixed_legs: AtomicU64,
    /// Media clock ticks (20 ms frames) run.
    pub media_ticks: AtomicU64,
    /// Media clock frames run late (caught up) or skipped.
    pub media_late_ticks: AtomicU64,
    /// RTP packets encoded by mixers and queued for sending.
    pub media_packets_out: AtomicU64,
    /// Bytes of those packets.
    pub media_bytes_out: AtomicU64,
    /// Media events lost because the event queue was full.
    pub media_events_dropped: AtomicU64,
    // --- end of decoded media ---
}

impl WorkerMetrics {
    /// Counters for worker `index` with the given drop reasons.
    #[must_use]
    pub fn new(index: usize, drop_labels: &'static [&'static str]) -> Self {
        Self {
            index,
            rx_packets: CachePadded::new(AtomicU64::new(0)),
            rx_bytes: AtomicU64::new(0),
            tx_packets: AtomicU64::new(0),
            tx_bytes: AtomicU64::new(0),
            calls_active: AtomicU64::new(0),
            legs_active: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
            loop_ns: AtomicU64::new(0),
            drops: drop_labels.iter().map(|_| AtomicU64::new(0)).collect(),
            drop_labels,
            // Decoded media.
            mixing_calls: AtomicU64::new(0),
            mixed_legs: AtomicU64::new(0),
            media_ticks: AtomicU64::new(0),
            media_late_ticks: AtomicU64::new(0),
            media_packets_out: AtomicU64::new(0),
            media_bytes_out: AtomicU64::new(0),
            media_events_dropped: AtomicU64::new(0),
        }
    }

    /// Adds `n` to a counter. Only the owning worker calls this, so a relaxed load and store
    /// is enough and cheaper than a read-modify-write.
    #[inline]
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.store(
            counter.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    /// Counts one dropped packet for reason `idx`.
    #[inline]
    pub fn drop_packet(&self, idx: usize) {
        if let Some(c) = self.drops.get(idx) {
            Self::add(c, 1);
        }
    }
}

/// Latency buckets (seconds) for control-request histograms.
const LATENCY_BUCKETS: [f64; 10] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.05, 0.25,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.buckets[i] += 1;
            }
        }
        self.count += 1;
        self.sum += secs;
    }
}

/// Control-plane request counters: by protocol, operation and result, with latency.
#[derive(Debug, Default)]
pub struct ControlMetrics {
    // Control plane only (never on a media or routing path); at most a few dozen keys.
    requests: Mutex<BTreeMap<(&'static str, String, &'static str), u64>>,
    latency: Mutex<BTreeMap<(&'static str, String), Histogram>>,
    /// The ACD's figures (lock-free; written by the ACD threads).
    pub acd: crate::acd::AcdMetrics,
    /// Call records, per-leg quality of ended calls and dashboard viewers (lock-free).
    pub cdr: crate::cdr::CdrMetrics,
}

/// Longest operation name kept as a label; longer (hostile) names are folded into `other`.
const MAX_OP_LABEL: usize = 32;

impl ControlMetrics {
    /// Records one request of `proto` (`ng` or `native`) for `op` with `result`.
    pub fn record(&self, proto: &'static str, op: &str, result: &'static str, took: Duration) {
        let op = if op.len() <= MAX_OP_LABEL
            && op
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b' ' || b == b'.' || b == b'_')
        {
            op.to_owned()
        } else {
            "other".to_owned()
        };
        if let Ok(mut m) = self.requests.lock() {
            // Bound the label set against hostile clients inventing names.
            if m.len() < 512 || m.contains_key(&(proto, op.clone(), result)) {
                *m.entry((proto, op.clone(), result)).or_default() += 1;
            }
        }
        if let Ok(mut m) = self.latency.lock() {
            if m.len() < 256 || m.contains_key(&(proto, op.clone())) {
                m.entry((proto, op))
                    .or_default()
                    .observe(took.as_secs_f64());
            }
        }
    }
}

/// Everything `/metrics` shows.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// One per media worker.
    pub workers: Arc<[Arc<WorkerMetrics>]>,
    /// Control-plane requests.
    pub control: Arc<ControlMetrics>,
    /// Recording, when it runs.
    pub recording: Option<Arc<crate::record::RecordingMetrics>>,
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// Renders the Prometheus text exposition format (version 0.0.4).
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut per_worker =
            |name: &str, help: &str, kind: &str, f: &dyn Fn(&WorkerMetrics) -> u64| {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
                for w in self.workers.iter() {
                    let _ = writeln!(out, "{name}{{worker=\"{}\"}} {}", w.index, f(w));
                }
            };
        per_worker(
            "switchboard_rx_packets_total",
            "Datagrams received on media ports.",
            "counter",
            &|w| load(&w.rx_packets),
        );
        per_worker(
            "switchboard_rx_bytes_total",
            "Bytes received on media ports.",
            "counter",
            &|w| load(&w.rx_bytes),
        );
        per_worker(
            "switchboard_relayed_packets_total",
            "Datagrams relayed.",
            "counter",
            &|w| load(&w.tx_packets),
        );
        per_worker(
            "switchboard_relayed_bytes_total",
            "Bytes relayed.",
            "counter",
            &|w| load(&w.tx_bytes),
        );
        per_worker(
            "switchboard_calls_active",
            "Calls owned by each worker.",
            "gauge",
            &|w| load(&w.calls_active),
        );
        per_worker(
            "switchboard_legs_active",
            "Legs owned by each worker.",
            "gauge",
            &|w| load(&w.legs_active),
        );
        // --- Decoded media (mixing, transcoding, prompts, DTMF) ---
        per_worker(
            "switchboard_mixing_calls",
            "Calls whose legs are mixed, per worker.",
            "gauge",
            &|w| load(&w.mixing_calls),
        );
        per_worker(
            "switchboard_mixed_legs",
            "Legs under a mixer, per worker.",
            "gauge",
            &|w| load(&w.mixed_legs),
        );
        per_worker(
            "switchboard_media_ticks_total",
            "Media clock ticks (20 ms frames) run.",
            "counter",
            &|w| load(&w.media_ticks),
        );
        per_worker(
            "switchboard_media_late_ticks_total",
            "Media clock frames run late or skipped.",
            "counter",
            &|w| load(&w.media_late_ticks),
        );
        per_worker(
            "switchboard_media_encoded_packets_total",
            "RTP packets encoded by mixers and queued for sending.",
            "counter",
            &|w| load(&w.media_packets_out),
        );
        per_worker(
            "switchboard_media_encoded_bytes_total",
            "Bytes of RTP packets encoded by mixers.",
            "counter",
            &|w| load(&w.media_bytes_out),
        );
        per_worker(
            "switchboard_media_events_dropped_total",
            "Media events (DTMF, talking, prompt ends) lost to a full event queue.",
            "counter",
            &|w| load(&w.media_events_dropped),
        );
        // --- end of decoded media ---
        let _ = writeln!(
            out,
            "# HELP switchboard_worker_busy_seconds_total Time each worker spent working rather than waiting for I/O.\n\
             # TYPE switchboard_worker_busy_seconds_total counter"
        );
        for w in self.workers.iter() {
            let _ = writeln!(
                out,
                "switchboard_worker_busy_seconds_total{{worker=\"{}\"}} {:.6}",
                w.index,
                load(&w.busy_ns) as f64 / 1e9
            );
        }
        let _ = writeln!(
            out,
            "# HELP switchboard_worker_busy_ratio Share of loop time spent working since start.\n\
             # TYPE switchboard_worker_busy_ratio gauge"
        );
        for w in self.workers.iter() {
            let total = load(&w.loop_ns);
            let ratio = if total == 0 {
                0.0
            } else {
                load(&w.busy_ns) as f64 / total as f64
            };
            let _ = writeln!(
                out,
                "switchboard_worker_busy_ratio{{worker=\"{}\"}} {ratio:.6}",
                w.index
            );
        }
        let _ = writeln!(
            out,
            "# HELP switchboard_dropped_packets_total Media datagrams dropped, by reason.\n\
             # TYPE switchboard_dropped_packets_total counter"
        );
        for w in self.workers.iter() {
            for (label, c) in w.drop_labels.iter().zip(w.drops.iter()) {
                let _ = writeln!(
                    out,
                    "switchboard_dropped_packets_total{{worker=\"{}\",reason=\"{label}\"}} {}",
                    w.index,
                    load(c)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP switchboard_control_requests_total Control requests by protocol, operation and result.\n\
             # TYPE switchboard_control_requests_total counter"
        );
        if let Ok(m) = self.control.requests.lock() {
            for ((proto, op, result), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "switchboard_control_requests_total{{protocol=\"{proto}\",op=\"{}\",result=\"{result}\"}} {n}",
                    escape(op)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP switchboard_control_request_seconds Control request handling time.\n\
             # TYPE switchboard_control_request_seconds histogram"
        );
        if let Ok(m) = self.control.latency.lock() {
            for ((proto, op), h) in m.iter() {
                let op = escape(op);
                for (b, n) in LATENCY_BUCKETS.iter().zip(h.buckets.iter()) {
                    let _ = writeln!(
                        out,
                        "switchboard_control_request_seconds_bucket{{protocol=\"{proto}\",op=\"{op}\",le=\"{b}\"}} {n}"
                    );
                }
                let _ = writeln!(
                    out,
                    "switchboard_control_request_seconds_bucket{{protocol=\"{proto}\",op=\"{op}\",le=\"+Inf\"}} {}\n\
                     switchboard_control_request_seconds_sum{{protocol=\"{proto}\",op=\"{op}\"}} {}\n\
                     switchboard_control_request_seconds_count{{protocol=\"{proto}\",op=\"{op}\"}} {}",
                    h.count, h.sum, h.count
                );
            }
        }
        self.control.acd.render(&mut out);
        // Live operations: call records, quality histograms of ended calls, dashboard.
        self.control.cdr.render(&mut out);
        if let Some(r) = &self.recording {
            r.render(&mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_sums_and_labels() {
        let w = Arc::new(WorkerMetrics::new(0, &["malformed", "strict_source"]));
        WorkerMetrics::add(&w.rx_packets, 3);
        w.drop_packet(1);
        w.drop_packet(7); // out of range: ignored
        let m = Metrics {
            workers: vec![w].into(),
            control: Arc::default(),
            recording: Some(Arc::default()),
        };
        m.control
            .record("ng", "offer", "ok", Duration::from_micros(80));
        m.control
            .record("ng", "\"evil\nname", "error", Duration::from_micros(80));
        let text = m.render();
        assert!(text.contains("switchboard_rx_packets_total{worker=\"0\"} 3"));
        assert!(text.contains("switchboard_mixing_calls{worker=\"0\"} 0"));
        assert!(text.contains("# TYPE switchboard_media_ticks_total counter"));
        assert!(text.contains(
            "switchboard_dropped_packets_total{worker=\"0\",reason=\"strict_source\"} 1"
        ));
        assert!(text.contains(
            "switchboard_control_requests_total{protocol=\"ng\",op=\"offer\",result=\"ok\"} 1"
        ));
        assert!(text.contains("op=\"other\""));
        assert!(text.contains("switchboard_recordings_active 0"));
        assert!(
            text.contains("switchboard_recording_dropped_frames_total{reason=\"queue_full\"} 0")
        );
        assert!(!text.contains("evil"));
        assert!(text.contains(
            "switchboard_control_request_seconds_bucket{protocol=\"ng\",op=\"offer\",le=\"0.0001\"} 1"
        ));
    }
}
