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
use switchboard_codecs::codec::CodecKind;

use crate::cdr::metrics::{JITTER_BUCKETS, LOSS_BUCKETS, MOS_BUCKETS};

/// Audio codecs the transcoding gauge distinguishes, in index order.
pub const TRANSCODE_CODECS: [CodecKind; 5] = [
    CodecKind::Pcmu,
    CodecKind::Pcma,
    CodecKind::G722,
    CodecKind::Opus,
    CodecKind::L16,
];

/// Index of `kind` in [`TRANSCODE_CODECS`] (none for non-audio kinds).
#[must_use]
pub fn codec_index(kind: CodecKind) -> Option<usize> {
    TRANSCODE_CODECS.iter().position(|k| *k == kind)
}

/// Upper bounds (ms) of the jitter-buffer depth distribution.
pub const DEPTH_BUCKETS_MS: [u32; 8] = [0, 20, 40, 60, 80, 120, 200, 400];

/// Time without RTP (µs, 5 s) after which a relayed leg (or call) counts as idle.
pub const IDLE_AFTER_US: u64 = 5_000_000;

/// Gauges and counters a worker recomputes from its calls in its periodic sweep (every
/// 250 ms). Kept apart from the packet counters so the sweep's stores never share a cache
/// line with them.
#[derive(Debug)]
pub struct SweepMetrics {
    /// Calls relayed without a mixer with RTP in the last [`IDLE_AFTER_US`].
    pub calls_relaying: AtomicU64,
    /// Calls relayed without a mixer and without RTP for [`IDLE_AFTER_US`] (held, not started).
    pub calls_idle: AtomicU64,
    /// Relayed legs with RTP in the last [`IDLE_AFTER_US`].
    pub legs_relay_active: AtomicU64,
    /// Relayed legs without RTP for [`IDLE_AFTER_US`].
    pub legs_relay_idle: AtomicU64,
    /// Talkers summed in the last mixer frame, over all mixing calls.
    pub mixer_speakers: AtomicU64,
    /// Sum of the current jitter-buffer depths (ms) of mixed legs.
    pub jitter_depth_ms: AtomicU64,
    /// Sum of the jitter buffers' current target delays (ms) of mixed legs.
    pub jitter_target_ms: AtomicU64,
    /// Mixed legs whose jitter-buffer depth is at most `DEPTH_BUCKETS_MS[i]` (cumulative;
    /// the last entry counts them all).
    pub jitter_depth_legs: [AtomicU64; DEPTH_BUCKETS_MS.len() + 1],
    /// Packets that reached a jitter buffer after their playout time.
    pub jitter_late: AtomicU64,
    /// Packets never received by a jitter buffer at playout.
    pub jitter_lost: AtomicU64,
    /// Frames filled by concealment.
    pub jitter_concealed: AtomicU64,
    /// Transcoded streams of two-leg mixed calls, indexed `from * N + to` over
    /// [`TRANSCODE_CODECS`].
    pub transcoding: [AtomicU64; TRANSCODE_CODECS.len() * TRANSCODE_CODECS.len()],
    /// Live legs by MOS estimate, cumulative over [`MOS_BUCKETS`] then `+Inf`.
    pub live_mos: [AtomicU64; MOS_BUCKETS.len() + 1],
    /// Live legs by interarrival jitter (seconds), cumulative over [`JITTER_BUCKETS`], `+Inf`.
    pub live_jitter: [AtomicU64; JITTER_BUCKETS.len() + 1],
    /// Live legs by loss ratio, cumulative over [`LOSS_BUCKETS`] then `+Inf`.
    pub live_loss: [AtomicU64; LOSS_BUCKETS.len() + 1],
}

impl Default for SweepMetrics {
    fn default() -> Self {
        Self {
            calls_relaying: AtomicU64::new(0),
            calls_idle: AtomicU64::new(0),
            legs_relay_active: AtomicU64::new(0),
            legs_relay_idle: AtomicU64::new(0),
            mixer_speakers: AtomicU64::new(0),
            jitter_depth_ms: AtomicU64::new(0),
            jitter_target_ms: AtomicU64::new(0),
            jitter_depth_legs: std::array::from_fn(|_| AtomicU64::new(0)),
            jitter_late: AtomicU64::new(0),
            jitter_lost: AtomicU64::new(0),
            jitter_concealed: AtomicU64::new(0),
            transcoding: std::array::from_fn(|_| AtomicU64::new(0)),
            live_mos: std::array::from_fn(|_| AtomicU64::new(0)),
            live_jitter: std::array::from_fn(|_| AtomicU64::new(0)),
            live_loss: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// What one sweep counted, before it is published. Plain integers on the worker's stack.
#[derive(Debug, Default, Clone)]
pub struct SweepTally {
    /// See [`SweepMetrics::calls_relaying`].
    pub calls_relaying: u64,
    /// See [`SweepMetrics::calls_idle`].
    pub calls_idle: u64,
    /// See [`SweepMetrics::legs_relay_active`].
    pub legs_relay_active: u64,
    /// See [`SweepMetrics::legs_relay_idle`].
    pub legs_relay_idle: u64,
    /// See [`SweepMetrics::mixer_speakers`].
    pub mixer_speakers: u64,
    /// See [`SweepMetrics::jitter_depth_ms`].
    pub jitter_depth_ms: u64,
    /// See [`SweepMetrics::jitter_target_ms`].
    pub jitter_target_ms: u64,
    /// Mixed legs per depth bucket (not cumulative; the last is over the top bound).
    pub depth: [u64; DEPTH_BUCKETS_MS.len() + 1],
    /// Growth of late, lost and concealed since the last sweep.
    pub late: u64,
    /// See `late`.
    pub lost: u64,
    /// See `late`.
    pub concealed: u64,
    /// See [`SweepMetrics::transcoding`].
    pub transcoding: [u64; TRANSCODE_CODECS.len() * TRANSCODE_CODECS.len()],
    /// Live legs per MOS bucket (not cumulative; last is `+Inf` only).
    pub mos: [u64; MOS_BUCKETS.len() + 1],
    /// Live legs per jitter bucket (not cumulative).
    pub jitter: [u64; JITTER_BUCKETS.len() + 1],
    /// Live legs per loss bucket (not cumulative).
    pub loss: [u64; LOSS_BUCKETS.len() + 1],
}

/// The bucket of `v` among `bounds` (`bounds.len()` when above them all).
fn bucket_of<T: PartialOrd>(bounds: &[T], v: &T) -> usize {
    bounds.iter().position(|b| v <= b).unwrap_or(bounds.len())
}

impl SweepTally {
    /// Counts a mixed leg's jitter-buffer depth and target delay.
    pub fn depth_ms(&mut self, ms: u32, target_ms: u32) {
        self.jitter_depth_ms += u64::from(ms);
        self.jitter_target_ms += u64::from(target_ms);
        if let Some(c) = self.depth.get_mut(bucket_of(&DEPTH_BUCKETS_MS, &ms)) {
            *c += 1;
        }
    }

    /// Counts a live leg's quality: MOS (when known), jitter in ms and loss ratio.
    pub fn quality(&mut self, mos: Option<f64>, jitter_ms: f64, loss: f64) {
        if let Some(m) = mos.filter(|m| m.is_finite()) {
            self.mos[bucket_of(&MOS_BUCKETS, &m)] += 1;
        }
        if jitter_ms.is_finite() {
            self.jitter[bucket_of(&JITTER_BUCKETS, &(jitter_ms / 1000.0))] += 1;
        }
        if loss.is_finite() {
            self.loss[bucket_of(&LOSS_BUCKETS, &loss.max(0.0))] += 1;
        }
    }

    /// Counts a stream decoded from `from` and encoded to `to` (only when they differ).
    pub fn transcode(&mut self, from: CodecKind, to: CodecKind) {
        if from == to {
            return;
        }
        if let (Some(f), Some(t)) = (codec_index(from), codec_index(to)) {
            self.transcoding[f * TRANSCODE_CODECS.len() + t] += 1;
        }
    }
}

/// Stores `counts` (per bucket) into `gauges` as cumulative counts.
fn store_cumulative(gauges: &[AtomicU64], counts: &[u64]) {
    let mut acc = 0u64;
    for (g, c) in gauges.iter().zip(counts) {
        acc += c;
        g.store(acc, Ordering::Relaxed);
    }
}

impl SweepMetrics {
    /// Publishes one sweep's tally (gauges replaced, counters advanced).
    pub fn publish(&self, t: &SweepTally) {
        let set = |c: &AtomicU64, v: u64| c.store(v, Ordering::Relaxed);
        set(&self.calls_relaying, t.calls_relaying);
        set(&self.calls_idle, t.calls_idle);
        set(&self.legs_relay_active, t.legs_relay_active);
        set(&self.legs_relay_idle, t.legs_relay_idle);
        set(&self.mixer_speakers, t.mixer_speakers);
        set(&self.jitter_depth_ms, t.jitter_depth_ms);
        set(&self.jitter_target_ms, t.jitter_target_ms);
        store_cumulative(&self.jitter_depth_legs, &t.depth);
        WorkerMetrics::add(&self.jitter_late, t.late);
        WorkerMetrics::add(&self.jitter_lost, t.lost);
        WorkerMetrics::add(&self.jitter_concealed, t.concealed);
        for (g, v) in self.transcoding.iter().zip(t.transcoding) {
            set(g, v);
        }
        store_cumulative(&self.live_mos, &t.mos);
        store_cumulative(&self.live_jitter, &t.jitter);
        store_cumulative(&self.live_loss, &t.loss);
    }
}

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
    /// Figures the periodic sweep recomputes (states, jitter buffers, transcoding, quality).
    pub sweep: CachePadded<SweepMetrics>,
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
            sweep: CachePadded::new(SweepMetrics::default()),
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

/// Picks one figure of a worker's sweep metrics.
type SweepField = fn(&SweepMetrics) -> &AtomicU64;
/// Picks one bucket array of a worker's sweep metrics.
type SweepBuckets = fn(&SweepMetrics) -> &[AtomicU64];

/// Writes a HELP and a TYPE line.
fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

impl Metrics {
    /// The per-worker figures the sweep publishes: states, jitter buffers, mixer speakers,
    /// transcoding and live quality.
    fn render_sweep(&self, out: &mut String) {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        header(
            out,
            "switchboard_calls",
            "Calls by state: relaying (RTP in the last 5 s), idle (relayed, no RTP for 5 s: held or not started), mixing (decoded media).",
            "gauge",
        );
        for w in self.workers.iter() {
            let s = &w.sweep;
            for (state, v) in [
                ("relaying", load(&s.calls_relaying)),
                ("idle", load(&s.calls_idle)),
                ("mixing", load(&w.mixing_calls)),
            ] {
                let _ = writeln!(
                    out,
                    "switchboard_calls{{worker=\"{}\",state=\"{state}\"}} {v}",
                    w.index
                );
            }
        }
        header(
            out,
            "switchboard_legs",
            "Legs by state: active (relayed, RTP in the last 5 s), idle (relayed, no RTP for 5 s), mixed (under a mixer).",
            "gauge",
        );
        for w in self.workers.iter() {
            let s = &w.sweep;
            for (state, v) in [
                ("active", load(&s.legs_relay_active)),
                ("idle", load(&s.legs_relay_idle)),
                ("mixed", load(&w.mixed_legs)),
            ] {
                let _ = writeln!(
                    out,
                    "switchboard_legs{{worker=\"{}\",state=\"{state}\"}} {v}",
                    w.index
                );
            }
        }
        let singles: [(&str, &str, &str, SweepField); 6] = [
            (
                "switchboard_mixer_speakers",
                "Talkers summed in the last mixer frame, over all mixing calls.",
                "gauge",
                |s| &s.mixer_speakers,
            ),
            (
                "switchboard_jitter_buffer_depth_ms",
                "Sum of the current jitter-buffer depths (ms) of mixed legs; divide by the mixed legs for the mean.",
                "gauge",
                |s| &s.jitter_depth_ms,
            ),
            (
                "switchboard_jitter_buffer_target_ms",
                "Sum of the jitter buffers' current target delays (ms) of mixed legs.",
                "gauge",
                |s| &s.jitter_target_ms,
            ),
            (
                "switchboard_jitter_late_packets_total",
                "Packets that reached a jitter buffer after their playout time.",
                "counter",
                |s| &s.jitter_late,
            ),
            (
                "switchboard_jitter_lost_packets_total",
                "Packets missing from a jitter buffer at their playout time.",
                "counter",
                |s| &s.jitter_lost,
            ),
            (
                "switchboard_jitter_concealed_frames_total",
                "Decoded frames filled by concealment.",
                "counter",
                |s| &s.jitter_concealed,
            ),
        ];
        for (name, help, kind, f) in singles {
            header(out, name, help, kind);
            for w in self.workers.iter() {
                let _ = writeln!(
                    out,
                    "{name}{{worker=\"{}\"}} {}",
                    w.index,
                    load(f(&w.sweep))
                );
            }
        }
        header(
            out,
            "switchboard_jitter_buffer_legs",
            "Mixed legs whose jitter-buffer depth is at most le ms now (cumulative).",
            "gauge",
        );
        for w in self.workers.iter() {
            for (i, c) in w.sweep.jitter_depth_legs.iter().enumerate() {
                let le = DEPTH_BUCKETS_MS
                    .get(i)
                    .map_or_else(|| "+Inf".to_owned(), u32::to_string);
                let _ = writeln!(
                    out,
                    "switchboard_jitter_buffer_legs{{worker=\"{}\",le=\"{le}\"}} {}",
                    w.index,
                    load(c)
                );
            }
        }
        header(
            out,
            "switchboard_transcoding_streams",
            "Streams decoded from one codec and encoded to another: each direction of a two-leg mixed call whose legs use different codecs.",
            "gauge",
        );
        let n = TRANSCODE_CODECS.len();
        for (i, from) in TRANSCODE_CODECS.iter().enumerate() {
            for (j, to) in TRANSCODE_CODECS.iter().enumerate() {
                let sum: u64 = self
                    .workers
                    .iter()
                    .filter_map(|w| w.sweep.transcoding.get(i * n + j))
                    .map(load)
                    .sum();
                if i != j && sum > 0 {
                    let _ = writeln!(
                        out,
                        "switchboard_transcoding_streams{{from=\"{}\",to=\"{}\"}} {sum}",
                        from.encoding_name(),
                        to.encoding_name()
                    );
                }
            }
        }
        let live: [(&str, &str, &[f64], SweepBuckets); 3] = [
            (
                "switchboard_live_leg_mos",
                "Live legs whose current MOS estimate is at most le (cumulative).",
                &MOS_BUCKETS,
                |s| &s.live_mos,
            ),
            (
                "switchboard_live_leg_jitter_seconds",
                "Live legs whose current interarrival jitter is at most le seconds (cumulative).",
                &JITTER_BUCKETS,
                |s| &s.live_jitter,
            ),
            (
                "switchboard_live_leg_loss_ratio",
                "Live legs whose loss ratio so far is at most le (cumulative).",
                &LOSS_BUCKETS,
                |s| &s.live_loss,
            ),
        ];
        for (name, help, bounds, f) in live {
            header(out, name, help, "gauge");
            let sums: Vec<u64> = (0..=bounds.len())
                .map(|i| {
                    self.workers
                        .iter()
                        .filter_map(|w| f(&w.sweep).get(i))
                        .map(load)
                        .sum()
                })
                .collect();
            for (i, v) in sums.iter().enumerate() {
                match bounds.get(i) {
                    Some(b) => {
                        let _ = writeln!(out, "{name}{{le=\"{b}\"}} {v}");
                    }
                    None => {
                        let _ = writeln!(out, "{name}{{le=\"+Inf\"}} {v}");
                    }
                }
            }
        }
    }

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
        self.render_sweep(&mut out);
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

    #[test]
    fn sweep_tally_publishes_gauges_counters_and_codec_pairs() {
        let w = Arc::new(WorkerMetrics::new(3, &[]));
        let mut t = SweepTally {
            calls_relaying: 2,
            legs_relay_idle: 1,
            mixer_speakers: 2,
            late: 4,
            ..SweepTally::default()
        };
        t.depth_ms(0, 40);
        t.depth_ms(60, 40);
        t.depth_ms(9999, 40);
        t.transcode(CodecKind::Pcmu, CodecKind::Pcma);
        t.transcode(CodecKind::Pcmu, CodecKind::Pcmu); // same codec: not counted
        t.transcode(CodecKind::TelephoneEvent, CodecKind::Pcma); // not audio: ignored
        t.quality(Some(4.3), 3.0, 0.0);
        t.quality(None, f64::NAN, 0.3);
        w.sweep.publish(&t);
        w.sweep.publish(&SweepTally { late: 1, ..t });
        let m = Metrics {
            workers: vec![w].into(),
            control: Arc::default(),
            recording: None,
        };
        let text = m.render();
        for want in [
            "# TYPE switchboard_calls gauge",
            "switchboard_calls{worker=\"3\",state=\"relaying\"} 2",
            "switchboard_legs{worker=\"3\",state=\"idle\"} 1",
            "switchboard_mixer_speakers{worker=\"3\"} 2",
            "switchboard_jitter_buffer_depth_ms{worker=\"3\"} 10059",
            "switchboard_jitter_buffer_target_ms{worker=\"3\"} 120",
            "switchboard_jitter_buffer_legs{worker=\"3\",le=\"0\"} 1",
            "switchboard_jitter_buffer_legs{worker=\"3\",le=\"40\"} 1",
            "switchboard_jitter_buffer_legs{worker=\"3\",le=\"60\"} 2",
            "switchboard_jitter_buffer_legs{worker=\"3\",le=\"+Inf\"} 3",
            "# TYPE switchboard_jitter_late_packets_total counter",
            "switchboard_jitter_late_packets_total{worker=\"3\"} 5",
            "switchboard_transcoding_streams{from=\"PCMU\",to=\"PCMA\"} 1",
            "switchboard_live_leg_mos{le=\"4.2\"} 0",
            "switchboard_live_leg_mos{le=\"4.4\"} 1",
            "switchboard_live_leg_mos{le=\"+Inf\"} 1",
            "switchboard_live_leg_jitter_seconds{le=\"0.005\"} 1",
            "switchboard_live_leg_loss_ratio{le=\"0\"} 1",
            "switchboard_live_leg_loss_ratio{le=\"0.5\"} 2",
        ] {
            assert!(text.contains(want), "{want} missing:\n{text}");
        }
        assert!(!text.contains("to=\"PCMU\""));
    }
}
