//! The `fork` scenario: N two-party calls over the native protocol, both parties speaking,
//! each call with a media fork (`fork.start`, see `docs/fork.md`) to a WebSocket sink inside
//! the harness ([`Sink`]).
//!
//! The calls are set up and their media sent and received as in [`crate::mix`] (two legs
//! that hear each other: the engine mixes a call while it is forked). The sink accepts every
//! fork's connection, checks its start message, and counts inside the measurement window the
//! binary frames and their bytes and the gaps between a connection's frames; with
//! `--bot-audio` it sends a 20 ms frame of bot audio back every 20 ms (played to the caller).
//!
//! Reported per target on top of the common figures:
//! - frames received against those expected (forks × 50 per second of window): the forks'
//!   loss; gaps (more than 60 ms between two frames of one connection) and the longest;
//! - bytes per fork stream-second;
//! - the engine's CPU (`--pid`) per fork stream-second and per forked frame. It is the whole
//!   engine's CPU: the calls' own media (decoding and mixing both parties) included;
//! - the parties' own media loss, which a fork must never cause (expected 0).
//!
//! `--analytics` runs the calls without (A) and with (B) `analytics.start` per call, in
//! alternation (A B A B …, `--rounds` each), and reports the CPU the analytics added per
//! call-second.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::Value;
use tokio_tungstenite::tungstenite::{Bytes, Message};

use crate::cli::{MAX_ROUNDS, Progress, Target};
use crate::mix::{FRAME_RATE, Kind, MixArgs, MixConfig, run_once};
use crate::relay::{media_note, sleep_interruptible};
use crate::report::{Figures, Measurement, Report, RunReport, TargetReport};
use crate::sys;

/// A gap between two frames of one fork longer than this is counted.
pub const GAP_NS: u64 = 60_000_000;
/// Most concurrent sink connections (each fork has one).
const MAX_CONNECTIONS: u64 = 20_000;

/// What a fork streams (`what` of `fork.start`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum What {
    /// The caller's audio, mono.
    Caller,
    /// The agent's audio, mono.
    Agent,
    /// Both, caller left and agent right.
    Stereo,
    /// Both summed to mono.
    Mixed,
}

impl What {
    /// The value of `what` in `fork.start`.
    pub fn wire(self) -> &'static str {
        match self {
            What::Caller => "caller",
            What::Agent => "agent",
            What::Stereo => "stereo",
            What::Mixed => "mixed",
        }
    }

    /// Channels of the forked audio.
    pub fn channels(self) -> u32 {
        match self {
            What::Stereo => 2,
            _ => 1,
        }
    }
}

/// Options of `switchboard-load fork`.
#[derive(Debug, Clone, PartialEq, Args)]
pub struct ForkArgs {
    /// Common options (`--calls` counts two-party calls, one fork each).
    #[command(flatten)]
    pub common: MixArgs,
    /// What each fork streams.
    #[arg(long, value_enum, default_value = "stereo")]
    pub what: What,
    /// Sample rate of the forked L16 audio: 8000 or 16000.
    #[arg(long, default_value_t = 16_000)]
    pub rate: u32,
    /// The sink sends a 20 ms frame of bot audio back every 20 ms (played to the caller).
    #[arg(long)]
    pub bot_audio: bool,
    /// Run without (A) and with (B) `analytics.start` per call, alternating `--rounds` times,
    /// and report the CPU the analytics add.
    #[arg(long)]
    pub analytics: bool,
}

/// Where the forks of a run stream to.
#[derive(Debug, Clone)]
pub(crate) struct ForkPlan {
    /// `ws://` URL of the sink.
    pub(crate) url: String,
    /// The sink's counters.
    pub(crate) sink: Arc<SinkShared>,
}

/// Counters of the sink, shared with its connections.
#[derive(Debug, Default)]
pub struct SinkShared {
    window_start: AtomicU64,
    window_end: AtomicU64,
    connections: AtomicU64,
    open: AtomicU64,
    starts: AtomicU64,
    bad_starts: AtomicU64,
    frames: AtomicU64,
    window_frames: AtomicU64,
    window_bytes: AtomicU64,
    wrong_size: AtomicU64,
    gaps: AtomicU64,
    max_gap_ns: AtomicU64,
    bot_frames: AtomicU64,
    stops: AtomicU64,
    refused: AtomicU64,
}

/// A snapshot of the sink's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SinkCounts {
    /// WebSocket connections accepted.
    pub connections: u64,
    /// Connections whose first message was a valid start message.
    pub starts: u64,
    /// Connections whose first message was not.
    pub bad_starts: u64,
    /// Binary frames received, in all.
    pub frames: u64,
    /// Binary frames received inside the window.
    pub window_frames: u64,
    /// Their bytes.
    pub window_bytes: u64,
    /// Frames whose size was not the start message's `frame_bytes`.
    pub wrong_size: u64,
    /// Gaps of more than 60 ms between two frames of one connection, inside the window.
    pub gaps: u64,
    /// The longest gap inside the window, ns.
    pub max_gap_ns: u64,
    /// Bot-audio frames sent back.
    pub bot_frames: u64,
    /// `stop` messages received.
    pub stops: u64,
    /// Connections refused (over the limit or failed handshakes).
    pub refused: u64,
}

impl SinkShared {
    /// Frames arriving in `[start, end)` (monotonic ns) count as the window's.
    pub fn set_window(&self, start: u64, end: u64) {
        self.window_start.store(start, Ordering::Relaxed);
        self.window_end.store(end, Ordering::Relaxed);
    }

    fn in_window(&self, at: u64) -> bool {
        at >= self.window_start.load(Ordering::Relaxed)
            && at < self.window_end.load(Ordering::Relaxed)
    }

    /// The counters now.
    pub fn counts(&self) -> SinkCounts {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SinkCounts {
            connections: get(&self.connections),
            starts: get(&self.starts),
            bad_starts: get(&self.bad_starts),
            frames: get(&self.frames),
            window_frames: get(&self.window_frames),
            window_bytes: get(&self.window_bytes),
            wrong_size: get(&self.wrong_size),
            gaps: get(&self.gaps),
            max_gap_ns: get(&self.max_gap_ns),
            bot_frames: get(&self.bot_frames),
            stops: get(&self.stops),
            refused: get(&self.refused),
        }
    }

    /// Zeroes the counters (between runs) and closes the window.
    pub fn reset(&self) {
        for a in [
            &self.connections,
            &self.starts,
            &self.bad_starts,
            &self.frames,
            &self.window_frames,
            &self.window_bytes,
            &self.wrong_size,
            &self.gaps,
            &self.max_gap_ns,
            &self.bot_frames,
            &self.stops,
            &self.refused,
            &self.window_start,
            &self.window_end,
        ] {
            a.store(0, Ordering::Relaxed);
        }
    }
}

/// The WebSocket sink: a thread running a single-threaded tokio runtime that accepts the
/// forks' connections on loopback. Stops when dropped.
#[derive(Debug)]
pub struct Sink {
    addr: SocketAddr,
    shared: Arc<SinkShared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Sink {
    /// Listens on `ip` (an ephemeral port). `bot_audio`: send bot audio back on every
    /// connection whose start message asks for it.
    pub fn start(ip: IpAddr, bot_audio: bool) -> Result<Self> {
        crate::cli::require_loopback("the fork sink's address", ip)?;
        let listener =
            std::net::TcpListener::bind(SocketAddr::new(ip, 0)).context("binding the fork sink")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(SinkShared::default());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the fork sink's runtime")?;
        let s = shared.clone();
        let thread = thread::Builder::new()
            .name("fork-sink".into())
            .spawn(move || {
                runtime.block_on(accept_loop(listener, s, bot_audio, rx));
            })
            .context("starting the fork sink's thread")?;
        Ok(Self {
            addr,
            shared,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// The sink's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL a fork connects to.
    pub fn url(&self) -> String {
        format!("ws://{}/fork", self.addr)
    }

    /// The shared counters.
    pub fn shared(&self) -> Arc<SinkShared> {
        self.shared.clone()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept_loop(
    listener: std::net::TcpListener,
    shared: Arc<SinkShared>,
    bot_audio: bool,
    mut shutdown: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("switchboard-load: the fork sink cannot listen: {e}");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                if shared.open.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
                    shared.refused.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let _ = stream.set_nodelay(true);
                shared.open.fetch_add(1, Ordering::Relaxed);
                let s = shared.clone();
                tokio::spawn(async move {
                    serve(stream, &s, bot_audio).await;
                    s.open.fetch_sub(1, Ordering::Relaxed);
                });
            }
        }
    }
}

/// What the sink needs from a start message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartInfo {
    /// Bytes of one binary frame.
    pub frame_bytes: usize,
    /// Sample rate of the bot audio the engine takes, if any.
    pub bot_rate: Option<u32>,
}

/// Checks a start message (`docs/fork.md`): event, version, L16 20 ms audio whose frame size
/// matches rate and channels.
pub fn parse_start(text: &str) -> Option<StartInfo> {
    let v: Value = serde_json::from_str(text).ok()?;
    if v.get("event")?.as_str()? != "start" || v.get("version")?.as_u64()? != 1 {
        return None;
    }
    v.get("fork")?.as_str()?;
    v.get("call")?.as_str()?;
    let audio = v.get("audio")?;
    if audio.get("encoding")?.as_str()? != "L16" || audio.get("frame_ms")?.as_u64()? != 20 {
        return None;
    }
    let rate = audio.get("sample_rate")?.as_u64()?;
    let channels = audio.get("channels")?.as_u64()?;
    let frame_bytes = audio.get("frame_bytes")?.as_u64()?;
    if !matches!(rate, 8000 | 16000) || !(1..=2).contains(&channels) {
        return None;
    }
    if frame_bytes != rate / 50 * channels * 2 {
        return None;
    }
    let bot_rate = match v.get("bot_audio") {
        Some(Value::Object(b)) => {
            let r = b.get("sample_rate")?.as_u64()?;
            if !matches!(r, 8000 | 16000 | 24000 | 32000 | 48000) {
                return None;
            }
            Some(r as u32)
        }
        _ => None,
    };
    Some(StartInfo {
        frame_bytes: frame_bytes as usize,
        bot_rate,
    })
}

/// A 20 ms frame of a quiet 440 Hz tone, mono L16 little-endian at `rate`.
fn bot_frame(rate: u32) -> Bytes {
    let n = (rate / 50) as usize;
    let mut out = Vec::with_capacity(n * 2);
    for i in 0..n {
        let t = i as f64 / f64::from(rate);
        let s = (2000.0 * (2.0 * std::f64::consts::PI * 450.0 * t).sin()) as i16;
        out.extend_from_slice(&s.to_le_bytes());
    }
    Bytes::from(out)
}

async fn serve(stream: tokio::net::TcpStream, shared: &SinkShared, bot_audio: bool) {
    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
        shared.refused.fetch_add(1, Ordering::Relaxed);
        return;
    };
    shared.connections.fetch_add(1, Ordering::Relaxed);
    let (mut tx, mut rx) = ws.split();
    // The first message: the start message.
    let start = match tokio::time::timeout(Duration::from_secs(5), rx.next()).await {
        Ok(Some(Ok(Message::Text(text)))) => parse_start(text.as_str()),
        _ => None,
    };
    let Some(start) = start else {
        shared.bad_starts.fetch_add(1, Ordering::Relaxed);
        let _ = tx.close().await;
        return;
    };
    shared.starts.fetch_add(1, Ordering::Relaxed);
    let bot = if bot_audio {
        start.bot_rate.map(bot_frame)
    } else {
        None
    };
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last: Option<u64> = None;
    loop {
        tokio::select! {
            _ = ticker.tick(), if bot.is_some() => {
                if let Some(frame) = &bot {
                    if tx.send(Message::Binary(frame.clone())).await.is_err() {
                        return;
                    }
                    shared.bot_frames.fetch_add(1, Ordering::Relaxed);
                }
            }
            msg = rx.next() => {
                let msg = match msg {
                    Some(Ok(m)) => m,
                    _ => return,
                };
                match msg {
                    Message::Binary(data) => {
                        let now = sys::monotonic_ns();
                        shared.frames.fetch_add(1, Ordering::Relaxed);
                        if data.len() != start.frame_bytes {
                            shared.wrong_size.fetch_add(1, Ordering::Relaxed);
                        }
                        if shared.in_window(now) {
                            shared.window_frames.fetch_add(1, Ordering::Relaxed);
                            shared
                                .window_bytes
                                .fetch_add(data.len() as u64, Ordering::Relaxed);
                            if let Some(prev) = last {
                                let gap = now.saturating_sub(prev);
                                if gap > GAP_NS {
                                    shared.gaps.fetch_add(1, Ordering::Relaxed);
                                }
                                shared.max_gap_ns.fetch_max(gap, Ordering::Relaxed);
                            }
                        }
                        last = Some(now);
                    }
                    Message::Text(text) => {
                        let stop = serde_json::from_str::<Value>(text.as_str())
                            .ok()
                            .is_some_and(|v| v.get("event").and_then(Value::as_str) == Some("stop"));
                        if stop {
                            shared.stops.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Message::Close(_) => return,
                    _ => {}
                }
            }
        }
    }
}

/// The fork figures of one target (all its runs together).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ForkFigures {
    /// `A`, or `B` (with analytics).
    pub label: String,
    /// Whether the calls ran analytics too.
    pub analytics: bool,
    /// Runs merged.
    pub runs: u32,
    /// Forks started (one per call), summed over runs.
    pub forks: u64,
    /// Window length summed over runs, seconds.
    pub window_s: f64,
    /// The sink's counters, summed over runs (`max_gap_ns`: the largest).
    pub sink: SinkCounts,
    /// Frames expected inside the windows: forks × 50 × window.
    pub frames_expected: u64,
    /// Share of the expected frames not received.
    pub frame_loss: f64,
    /// Bytes per fork stream-second.
    pub bytes_per_stream_s: f64,
    /// The engine's CPU per fork stream-second, microseconds (whole engine).
    pub cpu_us_per_stream_s: Option<f64>,
    /// The engine's CPU per forked frame received, microseconds (whole engine).
    pub cpu_us_per_frame: Option<f64>,
    /// The engine's CPU in the windows, seconds.
    pub target_cpu_s: Option<f64>,
    /// The parties' own media loss (packets), expected 0.
    pub party_lost: u64,
}

impl ForkFigures {
    fn add(&mut self, forks: u64, window_s: f64, sink: &SinkCounts, m: &Measurement) {
        self.runs += 1;
        self.forks += forks;
        self.window_s += window_s;
        let s = &mut self.sink;
        s.connections += sink.connections;
        s.starts += sink.starts;
        s.bad_starts += sink.bad_starts;
        s.frames += sink.frames;
        s.window_frames += sink.window_frames;
        s.window_bytes += sink.window_bytes;
        s.wrong_size += sink.wrong_size;
        s.gaps += sink.gaps;
        s.max_gap_ns = s.max_gap_ns.max(sink.max_gap_ns);
        s.bot_frames += sink.bot_frames;
        s.stops += sink.stops;
        s.refused += sink.refused;
        self.frames_expected += (forks as f64 * window_s * f64::from(FRAME_RATE)).round() as u64;
        self.party_lost += m.packets.lost;
        let cpu = m.cpu.as_ref().and_then(|c| c.target_ns);
        self.target_cpu_s = match (self.target_cpu_s, cpu) {
            (prev, Some(ns)) => Some(prev.unwrap_or(0.0) + ns as f64 / 1e9),
            (_, None) => None,
        };
        self.derive();
    }

    /// Forks × seconds of window.
    fn stream_s(&self) -> f64 {
        self.forks as f64 * self.window_s / f64::from(self.runs.max(1))
    }

    fn derive(&mut self) {
        // Forks summed over runs × the window of one run = stream-seconds of all runs.
        let stream_s = self.stream_s();
        self.frame_loss = if self.frames_expected > 0 {
            self.frames_expected.saturating_sub(self.sink.window_frames) as f64
                / self.frames_expected as f64
        } else {
            0.0
        };
        self.bytes_per_stream_s = if stream_s > 0.0 {
            self.sink.window_bytes as f64 / stream_s
        } else {
            0.0
        };
        self.cpu_us_per_stream_s = self
            .target_cpu_s
            .filter(|_| stream_s > 0.0)
            .map(|s| s * 1e6 / stream_s);
        self.cpu_us_per_frame = self
            .target_cpu_s
            .filter(|_| self.sink.window_frames > 0)
            .map(|s| s * 1e6 / self.sink.window_frames as f64);
    }
}

/// What `fork` hands back: the report and its text.
#[derive(Debug)]
pub struct ForkOutcome {
    /// The common report, with the fork figures as `result`.
    pub report: Report,
    /// The fork figures per target.
    pub figures: Vec<ForkFigures>,
}

impl ForkOutcome {
    /// The report's table followed by the fork figures.
    pub fn text(&self) -> String {
        use std::fmt::Write as _;
        let mut out = self.report.to_text();
        out.push_str("\nfork figures\n");
        for f in &self.figures {
            let opt = |v: Option<f64>, digits: usize| match v {
                Some(x) => format!("{x:.digits$}"),
                None => "n/a (no --pid)".into(),
            };
            let _ = writeln!(
                out,
                "  {}{}: {} forks × {} runs, {} connections ({} valid start messages, {} bad), \
                 frames {} of {} expected (loss {:.3} %), {} gaps > 60 ms (longest {:.1} ms), \
                 {} wrong-size frames, {:.0} bytes per stream-second, engine CPU {} µs per \
                 stream-second and {} µs per forked frame, {} bot-audio frames sent, {} stop \
                 messages, parties' media lost {}",
                f.label,
                if f.analytics { " (analytics)" } else { "" },
                f.forks / u64::from(f.runs.max(1)),
                f.runs,
                f.sink.connections,
                f.sink.starts,
                f.sink.bad_starts,
                f.sink.window_frames,
                f.frames_expected,
                f.frame_loss * 100.0,
                f.sink.gaps,
                f.sink.max_gap_ns as f64 / 1e6,
                f.sink.wrong_size,
                f.bytes_per_stream_s,
                opt(f.cpu_us_per_stream_s, 1),
                opt(f.cpu_us_per_frame, 2),
                f.sink.bot_frames,
                f.sink.stops,
                f.party_lost,
            );
        }
        if let Some(delta) = analytics_cost(&self.figures) {
            let _ = writeln!(
                out,
                "  analytics added {delta:.1} µs of engine CPU per call-second (B − A)"
            );
        }
        out
    }
}

/// CPU the analytics added per call-second (B − A), microseconds.
pub fn analytics_cost(figures: &[ForkFigures]) -> Option<f64> {
    let a = figures.iter().find(|f| !f.analytics)?;
    let b = figures.iter().find(|f| f.analytics)?;
    Some(b.cpu_us_per_stream_s? - a.cpu_us_per_stream_s?)
}

/// `switchboard-load fork`.
pub fn run(args: &ForkArgs, progress: Progress) -> Result<ForkOutcome> {
    if args.common.target.compare {
        bail!(
            "fork measures one engine (the NG protocol has no fork): drop --compare; \
             --analytics compares the engine with and without analytics"
        );
    }
    if !matches!(args.rate, 8000 | 16000) {
        bail!("--rate must be 8000 or 16000");
    }
    if args.common.ramp.ramp {
        bail!("fork has no --ramp");
    }
    let rounds = if args.analytics {
        args.common.target.rounds
    } else {
        1
    };
    if !(1..=MAX_ROUNDS).contains(&rounds) {
        bail!("--rounds must be between 1 and {MAX_ROUNDS}");
    }
    let kind = Kind::Fork {
        what: args.what,
        rate: args.rate,
        bot_audio: args.bot_audio,
    };
    let mut config = MixConfig::new(&args.common, kind)?;
    config.settings.rounds = rounds;
    let sink = Sink::start(config.settings.local_ip, args.bot_audio)?;
    config.fork = Some(ForkPlan {
        url: sink.url(),
        sink: sink.shared(),
    });
    let Some(plain) = config.targets.first().cloned() else {
        bail!("no target");
    };
    let named = |what: &str| match &plain.name {
        Some(n) => format!("{n}, {what}"),
        None => what.to_string(),
    };
    let targets: Vec<(Target, bool)> = if args.analytics {
        vec![
            (
                Target {
                    name: Some(named("forked")),
                    ..plain.clone()
                },
                false,
            ),
            (
                Target {
                    label: "B",
                    name: Some(named("forked, with analytics")),
                    ..plain.clone()
                },
                true,
            ),
        ]
    } else {
        vec![(plain.clone(), false)]
    };
    let mut settings = serde_json::to_value(&config.settings)?;
    settings["analytics"] = Value::Bool(args.analytics);
    settings["sink"] = Value::String(sink.url());
    let mut report = Report::new("fork", settings);
    let mut totals: Vec<Option<Measurement>> = vec![None; targets.len()];
    let mut figures: Vec<ForkFigures> = targets
        .iter()
        .map(|(t, analytics)| ForkFigures {
            label: t.label.to_string(),
            analytics: *analytics,
            ..ForkFigures::default()
        })
        .collect();
    let window_s = args.common.duration;
    for round in 1..=rounds {
        for (i, (target, analytics)) in targets.iter().enumerate() {
            if round > 1 || i > 0 {
                sleep_interruptible(Duration::from_secs(1))?;
            }
            sink.shared.reset();
            let m = run_once(&config, target, round, progress, *analytics)?;
            // Let the forks' stop messages arrive.
            wait_for_stops(&sink.shared, u64::from(config.settings.calls));
            let counts = sink.shared.counts();
            figures[i].add(u64::from(config.settings.calls), window_s, &counts, &m);
            report.runs.push(RunReport {
                label: target.label.to_string(),
                round,
                figures: Figures::from_measurement(&m),
            });
            match &mut totals[i] {
                Some(total) => total.merge(&m),
                slot => *slot = Some(m),
            }
        }
    }
    for ((target, _), total) in targets.iter().zip(totals) {
        let Some(total) = total else { continue };
        report.targets.push(TargetReport {
            label: target.label.to_string(),
            name: target.name.clone(),
            address: target
                .control
                .map_or_else(|| target.ng.to_string(), |c| c.to_string()),
            pid: target.pid,
            runs: rounds,
            figures: Figures::from_measurement(&total),
            latency_distribution: crate::report::distribution(&total.latency_us),
        });
    }
    report.compare_targets();
    report.notes.push(media_note(&config.settings.media));
    report.notes.push(
        "fork: frames counted by the harness's WebSocket sink inside the window; expected \
         forks × 50 per second; engine CPU per stream-second and per frame is the whole \
         engine's (the calls' own decoding and mixing included); the parties' media loss \
         counts gaps in the sequence numbers each party receives and must stay 0"
            .into(),
    );
    if args.analytics {
        report.notes.push(
            "A: calls forked; B: calls forked with analytics.start (interval_ms 0) per call; \
             alternating"
                .into(),
        );
    }
    report.result = Some(serde_json::json!({
        "fork": figures,
        "analytics_cpu_us_per_call_s": analytics_cost(&figures),
    }));
    Ok(ForkOutcome { report, figures })
}

/// Waits up to 2 s for `n` stop messages (the calls were deleted).
fn wait_for_stops(shared: &SinkShared, n: u64) {
    let deadline = sys::monotonic_ns() + 2_000_000_000;
    while shared.stops.load(Ordering::Relaxed) < n && sys::monotonic_ns() < deadline {
        if sys::is_interrupted() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_messages_are_checked() {
        let good = r#"{"event":"start","version":1,"fork":"fork-1","call":"c",
            "audio":{"encoding":"L16","sample_rate":16000,"channels":2,"frame_ms":20,
            "frame_bytes":1280},"bot_audio":{"sample_rate":16000}}"#;
        assert_eq!(
            parse_start(good),
            Some(StartInfo {
                frame_bytes: 1280,
                bot_rate: Some(16000)
            })
        );
        let no_bot = good.replace(
            r#""bot_audio":{"sample_rate":16000}"#,
            r#""bot_audio":null"#,
        );
        assert_eq!(parse_start(&no_bot).map(|s| s.bot_rate), Some(None));
        let wrong_size = good.replace("1280", "640");
        assert_eq!(parse_start(&wrong_size), None);
        assert_eq!(parse_start("not json"), None);
        assert_eq!(parse_start(r#"{"event":"stop"}"#), None);
    }

    #[test]
    fn figures_derive_loss_bytes_and_cpu() {
        let mut f = ForkFigures::default();
        let sink = SinkCounts {
            window_frames: 900,
            window_bytes: 900 * 640,
            ..SinkCounts::default()
        };
        let m = Measurement::new(2, 4);
        f.add(2, 10.0, &sink, &m);
        assert_eq!(f.frames_expected, 1000);
        assert!((f.frame_loss - 0.1).abs() < 1e-9);
        assert!((f.bytes_per_stream_s - 900.0 * 640.0 / 20.0).abs() < 1e-6);
        assert_eq!(f.cpu_us_per_stream_s, None);
    }
}
