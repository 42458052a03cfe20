//! The one report format of every scenario: raw measurements, the figures derived from them,
//! the text table and the JSON document.
//!
//! A scenario produces one [`Measurement`] per run. Runs against the same target merge into one
//! (histograms and counters add up), and [`Figures`] derive from a measurement: rates, ratios,
//! percentiles and CPU per packet. A [`Report`] holds the figures of each target (one, or two
//! with `--compare`), of each run, and the B/A ratios; it prints as a table or serialises as one
//! JSON object.

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::procfs::CpuWindow;

/// Highest latency the histograms hold, in microseconds (larger values are clamped to it).
pub const MAX_LATENCY_US: u64 = 60_000_000;

/// A latency histogram in microseconds with 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    // Bounds are constants: 1 ≤ low, high ≥ 2 × low, 3 significant figures.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).unwrap_or_else(|_| unreachable!())
}

/// Packet counters of a run (all streams, the whole run including ramp-up and drain).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PacketCounts {
    /// Packets the kernel accepted from the harness.
    pub sent: u64,
    /// Packets that came back, duplicates included.
    pub received: u64,
    /// Packets sent and never received: per stream `sent - received once`.
    pub lost: u64,
    /// Packets received more than once.
    pub duplicates: u64,
    /// Packets that arrived after a higher sequence number of their stream.
    pub reordered: u64,
    /// Datagrams received that were not the harness's own packets.
    pub invalid: u64,
    /// Packets that arrived at the wrong end of their call (an A→B packet back at A): the
    /// target mixed up the directions.
    pub misrouted: u64,
    /// Packets the harness could not send (its socket buffer full); not in `sent`.
    pub send_failed: u64,
    /// Streams that lost at least one packet.
    pub streams_with_loss: u64,
    /// Packets the harness's own sockets dropped on a full receive buffer (part of `lost`:
    /// the harness, not the target, lost them).
    pub harness_drops: u64,
    /// Packets a transcoder took in before its first output of a stream (priming its codec);
    /// not in `lost`.
    pub swallowed_at_start: u64,
}

impl PacketCounts {
    /// Adds `other` to `self`.
    pub fn add(&mut self, other: &PacketCounts) {
        self.sent += other.sent;
        self.received += other.received;
        self.lost += other.lost;
        self.duplicates += other.duplicates;
        self.reordered += other.reordered;
        self.invalid += other.invalid;
        self.misrouted += other.misrouted;
        self.send_failed += other.send_failed;
        self.streams_with_loss += other.streams_with_loss;
        self.harness_drops += other.harness_drops;
        self.swallowed_at_start += other.swallowed_at_start;
    }
}

/// Control-plane figures of a run's set-up and tear-down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ControlFigures {
    /// Calls set up.
    pub calls_set_up: u64,
    /// Wall time of the set-up, seconds.
    pub setup_seconds: f64,
    /// NG requests issued.
    pub ng_requests: u64,
    /// NG requests sent again after a timeout.
    pub ng_retries: u64,
    /// Calls deleted at the end.
    pub calls_deleted: u64,
    /// Deletes that failed.
    pub delete_failures: u64,
}

impl ControlFigures {
    /// Adds `other` to `self`.
    pub fn add(&mut self, other: &ControlFigures) {
        self.calls_set_up += other.calls_set_up;
        self.setup_seconds += other.setup_seconds;
        self.ng_requests += other.ng_requests;
        self.ng_retries += other.ng_retries;
        self.calls_deleted += other.calls_deleted;
        self.delete_failures += other.delete_failures;
    }
}

/// Everything one run (or several merged runs) against one target measured.
#[derive(Debug, Clone)]
pub struct Measurement {
    /// Concurrent calls.
    pub calls: u64,
    /// Streams (two per relayed call).
    pub streams: u64,
    /// Packet counters of the whole run.
    pub packets: PacketCounts,
    /// Packets received inside the measurement window (the target forwarded them then).
    pub window_received: u64,
    /// Packets sent inside the measurement window.
    pub window_sent: u64,
    /// Added latency of the packets received inside the window, microseconds.
    pub latency_us: Histogram<u64>,
    /// CPU used inside the window; `None` when the run ended before the window did.
    pub cpu: Option<CpuWindow>,
    /// Set-up and tear-down.
    pub control: ControlFigures,
    /// How late the harness sent packets against their schedule, microseconds.
    pub send_lag_us: Histogram<u64>,
    /// Sum over received streams of their final RFC 3550 jitter, microseconds.
    pub jitter_us_sum: f64,
    /// Streams in `jitter_us_sum`.
    pub jitter_streams: u64,
    /// Participants whose frames a mixer produced (conference members, barge parties); 0 for
    /// relayed calls.
    pub mix_members: u64,
    /// Frames per second the mixer sends each participant.
    pub mix_rate: u32,
}

impl Measurement {
    /// An empty measurement for `calls` calls of `streams` streams.
    pub fn new(calls: u64, streams: u64) -> Self {
        Self {
            calls,
            streams,
            packets: PacketCounts::default(),
            window_received: 0,
            window_sent: 0,
            latency_us: latency_histogram(),
            cpu: None,
            control: ControlFigures::default(),
            send_lag_us: latency_histogram(),
            jitter_us_sum: 0.0,
            jitter_streams: 0,
            mix_members: 0,
            mix_rate: 50,
        }
    }

    /// Adds another run against the same target: counters and CPU add up, histograms merge.
    pub fn merge(&mut self, other: &Measurement) {
        self.packets.add(&other.packets);
        self.window_received += other.window_received;
        self.window_sent += other.window_sent;
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.latency_us.add(&other.latency_us);
        self.cpu = match (self.cpu, other.cpu) {
            (Some(a), Some(b)) => Some(CpuWindow {
                wall_ns: a.wall_ns + b.wall_ns,
                target_ns: a.target_ns.zip(b.target_ns).map(|(x, y)| x + y),
                harness_ns: a.harness_ns + b.harness_ns,
                machine_ns: a.machine_ns.zip(b.machine_ns).map(|(x, y)| x + y),
                udp_drops: a.udp_drops.zip(b.udp_drops).map(|(x, y)| x + y),
            }),
            (a, b) => a.or(b),
        };
        self.control.add(&other.control);
        let _ = self.send_lag_us.add(&other.send_lag_us);
        self.jitter_us_sum += other.jitter_us_sum;
        self.jitter_streams += other.jitter_streams;
    }
}

/// Latency percentiles, microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencyFigures {
    /// Packets measured.
    pub count: u64,
    /// Smallest value.
    pub min: u64,
    /// Arithmetic mean.
    pub mean: f64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p99_9: u64,
    /// Largest value.
    pub max: u64,
}

impl LatencyFigures {
    /// Percentiles of `hist` (all zero when it is empty).
    pub fn from_histogram(hist: &Histogram<u64>) -> Self {
        if hist.is_empty() {
            return Self::default();
        }
        Self {
            count: hist.len(),
            min: hist.min(),
            mean: hist.mean(),
            p50: hist.value_at_quantile(0.50),
            p90: hist.value_at_quantile(0.90),
            p99: hist.value_at_quantile(0.99),
            p99_9: hist.value_at_quantile(0.999),
            max: hist.max(),
        }
    }
}

/// CPU used by one process inside the window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CpuFigures {
    /// CPU seconds (user + system).
    pub seconds: f64,
    /// Average share of one core: CPU seconds per wall second.
    pub cores: f64,
    /// CPU microseconds per packet: per forwarded packet for the target, per packet sent or
    /// received for the harness.
    pub us_per_packet: Option<f64>,
}

impl CpuFigures {
    fn new(cpu_ns: u64, wall_ns: u64, packets: u64) -> Self {
        Self {
            seconds: cpu_ns as f64 / 1e9,
            cores: if wall_ns > 0 {
                cpu_ns as f64 / wall_ns as f64
            } else {
                0.0
            },
            us_per_packet: (packets > 0).then(|| cpu_ns as f64 / 1e3 / packets as f64),
        }
    }
}

/// The figures of one target (or one run), as printed and serialised.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figures {
    /// Concurrent calls.
    pub calls: u64,
    /// Streams.
    pub streams: u64,
    /// Length of the measurement window(s), seconds.
    pub window_seconds: f64,
    /// Packet counters of the whole run(s).
    pub packets: PacketCounts,
    /// `lost / sent`.
    pub loss_ratio: f64,
    /// Packets the target forwarded inside the window.
    pub forwarded_in_window: u64,
    /// Forwarded packets per second inside the window.
    pub forwarded_per_second: f64,
    /// Added latency of forwarded packets inside the window (harness receive time minus send
    /// time), microseconds.
    pub latency_us: LatencyFigures,
    /// The target's CPU inside the window (with `--pid`).
    pub target_cpu: Option<CpuFigures>,
    /// The harness's own CPU inside the window.
    pub harness_cpu: Option<CpuFigures>,
    /// How late the harness sent packets against their schedule, microseconds (the tick
    /// accounts for up to `--tick-us`): tens of milliseconds mean the harness was starved of
    /// CPU and sent in bursts, so the target saw burstier traffic than asked for.
    pub harness_send_lag_us: LatencyFigures,
    /// Busy cores of the whole machine inside the window (all processes).
    pub machine_busy_cores: Option<f64>,
    /// UDP datagrams dropped on full receive buffers in the network namespace inside the
    /// window (the target's sockets and the harness's alike).
    pub udp_receive_buffer_drops: Option<u64>,
    /// Set-up and tear-down.
    pub control: ControlFigures,
    /// Mean RFC 3550 interarrival jitter of the received streams, microseconds.
    pub jitter_us: Option<f64>,
    /// Participants a mixer served (0 for relayed calls).
    pub mix_members: u64,
    /// The target's CPU microseconds per mixed participant-frame: CPU / (participants ×
    /// frames per second × window), for mixing scenarios.
    pub target_cpu_us_per_mixed_frame: Option<f64>,
}

impl Figures {
    /// Derives the figures of `m`.
    pub fn from_measurement(m: &Measurement) -> Self {
        let wall_ns = m.cpu.map_or(0, |c| c.wall_ns);
        let window_seconds = wall_ns as f64 / 1e9;
        Self {
            calls: m.calls,
            streams: m.streams,
            window_seconds,
            packets: m.packets,
            loss_ratio: {
                // A mixer's output is not the harness's input: loss counts against the
                // frames the parties should have received.
                let base = if m.mix_members > 0 {
                    m.packets.received - m.packets.duplicates.min(m.packets.received)
                        + m.packets.lost
                } else {
                    m.packets.sent
                };
                if base > 0 {
                    m.packets.lost as f64 / base as f64
                } else {
                    0.0
                }
            },
            forwarded_in_window: m.window_received,
            forwarded_per_second: if window_seconds > 0.0 {
                m.window_received as f64 / window_seconds
            } else {
                0.0
            },
            latency_us: LatencyFigures::from_histogram(&m.latency_us),
            target_cpu: m.cpu.and_then(|c| {
                c.target_ns
                    .map(|t| CpuFigures::new(t, c.wall_ns, m.window_received))
            }),
            harness_cpu: m.cpu.map(|c| {
                CpuFigures::new(c.harness_ns, c.wall_ns, m.window_sent + m.window_received)
            }),
            harness_send_lag_us: LatencyFigures::from_histogram(&m.send_lag_us),
            machine_busy_cores: m.cpu.and_then(|c| {
                let busy = c.machine_ns?;
                (c.wall_ns > 0).then(|| busy as f64 / c.wall_ns as f64)
            }),
            udp_receive_buffer_drops: m.cpu.and_then(|c| c.udp_drops),
            control: m.control,
            mix_members: m.mix_members,
            jitter_us: (m.jitter_streams > 0).then(|| m.jitter_us_sum / m.jitter_streams as f64),
            target_cpu_us_per_mixed_frame: m.cpu.and_then(|c| {
                let frames = m.mix_members as f64 * f64::from(m.mix_rate) * window_seconds;
                let t = c.target_ns?;
                (frames > 0.0).then(|| t as f64 / 1e3 / frames)
            }),
        }
    }
}

/// Quantiles of the latency distribution drawn in charts.
pub const DISTRIBUTION_QUANTILES: [f64; 14] = [
    0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999, 0.99999, 1.0,
];

/// `(quantile, microseconds)` points of `hist` (empty when it is).
pub fn distribution(hist: &Histogram<u64>) -> Vec<(f64, u64)> {
    if hist.is_empty() {
        return Vec::new();
    }
    DISTRIBUTION_QUANTILES
        .iter()
        .map(|&q| (q, hist.value_at_quantile(q)))
        .collect()
}

/// One step of a `--ramp` run against one target.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RampStep {
    /// The target's label.
    pub label: String,
    /// Load of the step: calls (or conferences).
    pub calls: u32,
    /// `lost / sent`.
    pub loss_ratio: f64,
    /// 99th percentile added latency, microseconds (0 where not measured).
    pub p99_us: u64,
    /// The target's CPU per forwarded packet, microseconds.
    pub target_cpu_us_per_packet: Option<f64>,
    /// The target's CPU per mixed participant-frame, microseconds.
    pub target_cpu_us_per_mixed_frame: Option<f64>,
    /// The target's CPU, cores.
    pub target_cpu_cores: Option<f64>,
    /// Whether the step stayed within the thresholds.
    pub passed: bool,
}

/// The capacity a `--ramp` run found for one target.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Capacity {
    /// The target's label.
    pub label: String,
    /// Highest load that stayed within the thresholds (`None`: not even the first step).
    pub calls: Option<u32>,
    /// Why the ramp stopped.
    pub stopped: String,
}

/// One target of a report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetReport {
    /// `A`, or `B` with `--compare`.
    pub label: String,
    /// The name given with `--name` / `--name-b`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The target's control address.
    pub address: String,
    /// The target's PID, when given.
    pub pid: Option<u32>,
    /// Runs merged into `figures`.
    pub runs: u32,
    /// Figures of all runs against this target together.
    pub figures: Figures,
    /// `(quantile, microseconds)` of the added latency, for charts.
    pub latency_distribution: Vec<(f64, u64)>,
}

/// One run of a report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunReport {
    /// The target's label.
    pub label: String,
    /// 1-based round number.
    pub round: u32,
    /// Figures of this run alone.
    pub figures: Figures,
}

/// One figure of two targets side by side.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ratio {
    /// The figure's name, as in the text table.
    pub figure: String,
    /// Target A's value.
    pub a: f64,
    /// Target B's value.
    pub b: f64,
    /// `b / a`, when `a` is not zero.
    pub b_over_a: Option<f64>,
}

/// The report of one invocation: printed as a table, or as JSON with `--json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Always `switchboard-load`.
    pub tool: &'static str,
    /// The harness's version.
    pub version: &'static str,
    /// Scenario (subcommand) name.
    pub scenario: String,
    /// The scenario's settings after validation.
    pub settings: serde_json::Value,
    /// Each target's figures, all its runs together.
    pub targets: Vec<TargetReport>,
    /// Each run's figures, in the order they ran.
    pub runs: Vec<RunReport>,
    /// B against A, figure by figure (empty without `--compare`).
    pub comparison: Vec<Ratio>,
    /// Figures of a scenario that measures no media target (such as `acd`), in its own shape.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// Steps of a `--ramp` run, in the order they ran.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ramp: Vec<RampStep>,
    /// Capacity per target found by `--ramp`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub capacity: Vec<Capacity>,
    /// Anything the reader should know about how the figures were obtained.
    pub notes: Vec<String>,
}

/// One line of the text table: a name, the text of a value and its number for ratios.
struct Row {
    name: &'static str,
    text: String,
    value: Option<f64>,
}

fn row(name: &'static str, text: String, value: Option<f64>) -> Row {
    Row { name, text, value }
}

fn opt_row(name: &'static str, v: Option<f64>, decimals: usize) -> Row {
    match v {
        Some(v) => row(name, format!("{v:.decimals$}"), Some(v)),
        None => row(name, "-".into(), None),
    }
}

fn count_row(name: &'static str, n: u64) -> Row {
    row(name, n.to_string(), Some(n as f64))
}

fn rows(f: &Figures) -> Vec<Row> {
    let p = &f.packets;
    let l = &f.latency_us;
    let mut rows = vec![
        count_row("calls", f.calls),
        row(
            "window (s)",
            format!("{:.2}", f.window_seconds),
            Some(f.window_seconds),
        ),
        count_row("packets sent", p.sent),
        count_row("packets received", p.received),
        row(
            "packets lost",
            format!("{} ({:.4}%)", p.lost, f.loss_ratio * 100.0),
            Some(p.lost as f64),
        ),
        count_row("streams with loss", p.streams_with_loss),
        count_row("dropped by harness sockets", p.harness_drops),
        count_row("duplicates", p.duplicates),
        count_row("reordered", p.reordered),
        count_row("invalid received", p.invalid),
        count_row("misrouted (wrong end)", p.misrouted),
        count_row("send failures", p.send_failed),
        row(
            "forwarded/s in window",
            format!("{:.0}", f.forwarded_per_second),
            Some(f.forwarded_per_second),
        ),
        count_row("latency p50 (µs)", l.p50),
        count_row("latency p90 (µs)", l.p90),
        count_row("latency p99 (µs)", l.p99),
        count_row("latency p99.9 (µs)", l.p99_9),
        count_row("latency max (µs)", l.max),
        opt_row("jitter (µs)", f.jitter_us, 1),
    ];
    let cpu_rows = |rows: &mut Vec<Row>, who: [&'static str; 3], cpu: Option<CpuFigures>| {
        let Some(c) = cpu else {
            rows.push(row(who[0], "-".into(), None));
            return;
        };
        rows.push(row(who[0], format!("{:.3}", c.seconds), Some(c.seconds)));
        rows.push(row(who[1], format!("{:.3}", c.cores), Some(c.cores)));
        rows.push(match c.us_per_packet {
            Some(us) => row(who[2], format!("{us:.2}"), Some(us)),
            None => row(who[2], "-".into(), None),
        });
    };
    cpu_rows(
        &mut rows,
        [
            "target CPU (s)",
            "target CPU (cores)",
            "target CPU µs/forwarded pkt",
        ],
        f.target_cpu,
    );
    cpu_rows(
        &mut rows,
        [
            "harness CPU (s)",
            "harness CPU (cores)",
            "harness CPU µs/pkt",
        ],
        f.harness_cpu,
    );
    if f.mix_members > 0 {
        rows.push(opt_row(
            "target CPU µs/mixed frame",
            f.target_cpu_us_per_mixed_frame,
            2,
        ));
    }
    rows.push(count_row(
        "harness send lag p99 (µs)",
        f.harness_send_lag_us.p99,
    ));
    rows.push(count_row(
        "harness send lag max (µs)",
        f.harness_send_lag_us.max,
    ));
    rows.push(match f.machine_busy_cores {
        Some(c) => row("machine busy (cores)", format!("{c:.2}"), Some(c)),
        None => row("machine busy (cores)", "-".into(), None),
    });
    rows.push(match f.udp_receive_buffer_drops {
        Some(d) => count_row("UDP rcvbuf drops (host)", d),
        None => row("UDP rcvbuf drops (host)", "-".into(), None),
    });
    rows.push(row(
        "NG requests/retries",
        format!("{}/{}", f.control.ng_requests, f.control.ng_retries),
        None,
    ));
    rows.push(row(
        "set-up (s)",
        format!("{:.2}", f.control.setup_seconds),
        Some(f.control.setup_seconds),
    ));
    rows
}

/// B/A ratios of every numeric figure of two targets.
pub fn compare(a: &Figures, b: &Figures) -> Vec<Ratio> {
    rows(a)
        .into_iter()
        .zip(rows(b))
        .filter_map(|(ra, rb)| {
            let (va, vb) = (ra.value?, rb.value?);
            Some(Ratio {
                figure: ra.name.to_string(),
                a: va,
                b: vb,
                b_over_a: (va != 0.0).then(|| vb / va),
            })
        })
        .collect()
}

impl Report {
    /// A report of `scenario` with `settings`, to which targets and runs are added.
    pub fn new(scenario: &str, settings: serde_json::Value) -> Self {
        Self {
            tool: "switchboard-load",
            version: env!("CARGO_PKG_VERSION"),
            scenario: scenario.to_string(),
            settings,
            targets: Vec::new(),
            runs: Vec::new(),
            comparison: Vec::new(),
            result: None,
            ramp: Vec::new(),
            capacity: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Fills `comparison` when there are exactly two targets.
    pub fn compare_targets(&mut self) {
        self.comparison = match self.targets.as_slice() {
            [a, b] => compare(&a.figures, &b.figures),
            _ => Vec::new(),
        };
    }

    /// The JSON document.
    pub fn to_json(&self) -> String {
        // A tree of plain structs, strings and finite numbers always serialises.
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The text table: one column per target, and B/A with two targets.
    pub fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = write!(out, "switchboard-load {}:", self.scenario);
        match &self.settings {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    match value {
                        serde_json::Value::String(text) => {
                            let _ = write!(out, " {key}={text}");
                        }
                        other => {
                            let _ = write!(out, " {key}={other}");
                        }
                    }
                }
            }
            other => {
                let _ = write!(out, " {other}");
            }
        }
        out.push('\n');
        let columns: Vec<Vec<Row>> = self.targets.iter().map(|t| rows(&t.figures)).collect();
        let Some(first) = columns.first() else {
            return out;
        };
        let headers: Vec<String> = self
            .targets
            .iter()
            .map(|t| {
                let who = match &t.name {
                    Some(name) => format!("{} {name}", t.label),
                    None => format!("{} {}", t.label, t.address),
                };
                match t.pid {
                    Some(pid) => format!("{who} pid {pid}"),
                    None => who,
                }
            })
            .collect();
        let name_width = first
            .iter()
            .map(|r| r.name.chars().count())
            .max()
            .unwrap_or(0);
        let width = columns
            .iter()
            .flatten()
            .map(|r| r.text.chars().count())
            .chain(headers.iter().map(|h| h.chars().count()))
            .max()
            .unwrap_or(0);
        let _ = write!(out, "{:name_width$}", "");
        for h in &headers {
            let _ = write!(out, "  {h:>width$}");
        }
        if columns.len() == 2 {
            let _ = write!(out, "  {:>7}", "B/A");
        }
        out.push('\n');
        for (i, r) in first.iter().enumerate() {
            let _ = write!(out, "{:name_width$}", r.name);
            for col in &columns {
                let _ = write!(out, "  {:>width$}", col[i].text);
            }
            if let [a, b] = columns.as_slice() {
                let ratio = match (a[i].value, b[i].value) {
                    (Some(x), Some(y)) if x != 0.0 => format!("{:.2}", y / x),
                    _ => "-".into(),
                };
                let _ = write!(out, "  {ratio:>7}");
            }
            out.push('\n');
        }
        if self.runs.len() > self.targets.len() {
            let _ = writeln!(out, "runs:");
            for run in &self.runs {
                let f = &run.figures;
                let cpu = f
                    .target_cpu
                    .and_then(|c| c.us_per_packet)
                    .map_or("-".into(), |us| format!("{us:.2}"));
                let _ = writeln!(
                    out,
                    "  {} round {}: lost {} p50 {} µs p99 {} µs target {} µs/pkt",
                    run.label, run.round, f.packets.lost, f.latency_us.p50, f.latency_us.p99, cpu
                );
            }
        }
        if !self.ramp.is_empty() {
            let _ = writeln!(out, "ramp:");
            let _ = writeln!(
                out,
                "  {:<6} {:>7} {:>9} {:>10} {:>10} {:>8}  ",
                "target", "calls", "loss %", "p99 µs", "µs/pkt", "cores"
            );
            for s in &self.ramp {
                let per = s
                    .target_cpu_us_per_mixed_frame
                    .or(s.target_cpu_us_per_packet)
                    .map_or("-".into(), |v| format!("{v:.2}"));
                let cores = s.target_cpu_cores.map_or("-".into(), |v| format!("{v:.2}"));
                let _ = writeln!(
                    out,
                    "  {:<6} {:>7} {:>9.4} {:>10} {:>10} {:>8}  {}",
                    s.label,
                    s.calls,
                    s.loss_ratio * 100.0,
                    s.p99_us,
                    per,
                    cores,
                    if s.passed { "ok" } else { "over threshold" }
                );
            }
            for c in &self.capacity {
                let _ = writeln!(
                    out,
                    "capacity {}: {} ({})",
                    c.label,
                    c.calls.map_or("none".into(), |n| n.to_string()),
                    c.stopped
                );
            }
        }
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measurement(latencies: &[u64], target_ns: u64) -> Measurement {
        let mut m = Measurement::new(10, 20);
        for &v in latencies {
            m.latency_us.record(v).unwrap();
        }
        m.packets = PacketCounts {
            sent: 1000,
            received: 990,
            lost: 10,
            ..PacketCounts::default()
        };
        m.window_received = 500;
        m.window_sent = 500;
        m.cpu = Some(CpuWindow {
            wall_ns: 2_000_000_000,
            target_ns: Some(target_ns),
            harness_ns: 100_000_000,
            machine_ns: Some(3_000_000_000),
            udp_drops: Some(0),
        });
        m
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let values: Vec<u64> = (1..=1000).collect();
        let f = LatencyFigures::from_histogram(&measurement(&values, 0).latency_us);
        assert_eq!(f.count, 1000);
        assert_eq!((f.min, f.max), (1, 1000));
        assert_eq!(f.p50, 500);
        assert_eq!(f.p90, 900);
        assert_eq!(f.p99, 990);
        assert_eq!(f.p99_9, 999);
        assert!((f.mean - 500.5).abs() < 0.5);
        assert_eq!(
            LatencyFigures::from_histogram(&latency_histogram()).count,
            0
        );
    }

    #[test]
    fn cpu_per_packet_and_shares() {
        let f = Figures::from_measurement(&measurement(&[10], 8_000_000));
        let t = f.target_cpu.unwrap();
        // 8 ms over 500 forwarded packets.
        assert!((t.us_per_packet.unwrap() - 16.0).abs() < 1e-9);
        assert!((t.cores - 0.004).abs() < 1e-9);
        let h = f.harness_cpu.unwrap();
        assert!((h.us_per_packet.unwrap() - 100.0).abs() < 1e-9);
        assert!((f.machine_busy_cores.unwrap() - 1.5).abs() < 1e-9);
        assert!((f.loss_ratio - 0.01).abs() < 1e-12);
        assert!((f.forwarded_per_second - 250.0).abs() < 1e-9);
    }

    #[test]
    fn merging_runs_adds_up() {
        let mut a = measurement(&[10, 20], 8_000_000);
        a.merge(&measurement(&[30], 4_000_000));
        assert_eq!(a.latency_us.len(), 3);
        assert_eq!(a.packets.sent, 2000);
        let f = Figures::from_measurement(&a);
        assert!((f.target_cpu.unwrap().us_per_packet.unwrap() - 12.0).abs() < 1e-9);
        assert!((f.window_seconds - 4.0).abs() < 1e-9);
    }

    #[test]
    fn comparison_and_text() {
        let fa = Figures::from_measurement(&measurement(&[10], 8_000_000));
        let fb = Figures::from_measurement(&measurement(&[20], 4_000_000));
        let mut report = Report::new("relay", serde_json::json!({"calls": 10}));
        for (label, figures) in [("A", fa), ("B", fb)] {
            report.targets.push(TargetReport {
                label: label.into(),
                name: None,
                address: "127.0.0.1:2223".into(),
                pid: Some(1),
                runs: 1,
                figures,
                latency_distribution: Vec::new(),
            });
        }
        report.compare_targets();
        let cpu = report
            .comparison
            .iter()
            .find(|r| r.figure == "target CPU µs/forwarded pkt")
            .unwrap();
        assert_eq!(cpu.b_over_a, Some(0.5));
        let text = report.to_text();
        assert!(text.contains("B/A"));
        assert!(text.contains("target CPU µs/forwarded pkt"));
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json["targets"][1]["figures"]["latency_us"]["p50"], 20);
        assert_eq!(json["scenario"], "relay");
    }
}
