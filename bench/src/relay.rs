//! The `relay` scenario: N two-party G.711 calls through an NG-driven relay.
//!
//! Each call is set up as Kamailio does it: `offer` with the caller's (A) SDP and a from-tag,
//! then `answer` with the callee's (B) SDP and a to-tag. The SDP of the offer reply is what B
//! sees, so B sends to its address; the SDP of the answer reply is what A sees, so A sends to
//! its address. Then every call streams both ways (A→B and B→A) at `--rate` packets per second
//! for the ramp-up plus `--duration`, and is deleted at the end, or on SIGINT/SIGTERM.
//!
//! Media runs on `--threads` worker threads; call `i` belongs to worker `i % threads`, which owns
//! both of its streams and the sockets of both ends, so loss and latency are counted without any
//! sharing. With `--sockets shared` (the default) a worker has one socket for all its A ends and
//! one for all its B ends, and sends and receives in batches of up to [`BATCH`] datagrams; with
//! `--sockets per-call` every end has its own socket, as a SIP phone would. Sends follow an
//! absolute schedule: stream `s` of `S` sends at `t0 + k·period + s·period/S`, so phases are
//! spread evenly and nothing drifts.
//!
//! A worker wakes on a fixed tick (`--tick-us`, absolute, so it does not drift either), sends
//! what is due, and drains whatever its sockets received. Waking per tick rather than per
//! readable socket keeps the harness's own CPU low; latency does not suffer from it because it
//! is measured from the kernel's arrival timestamp (`SO_TIMESTAMPNS`, converted to
//! `CLOCK_MONOTONIC`) minus the send time carried in the payload.
//!
//! The measurement window is the `--duration` after the ramp-up: the target's and the harness's
//! CPU time are sampled at its edges, and latency is recorded for packets that arrived inside
//! it. Loss, duplicates and reordering count over the whole run, after a [`DRAIN_NS`] drain.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use serde::Serialize;
use socket2::{Domain, Protocol, Socket, Type};

use crate::Interrupted;
use crate::cli::{Progress, Target, TargetArgs};
use crate::media::{Source, Speech};
use crate::ng::{CallIds, NgClient, NgConfig};
use crate::procfs::{CpuSample, CpuWindow};
use crate::ramp::{self, RampArgs};
use crate::report::{Figures, Measurement, PacketCounts, Report, RunReport, TargetReport};
use crate::rtp::{self, Audio, PCMU_CLOCK_RATE, PROBE_LEN, Probe, RTP_HEADER_LEN, RtpHeader};
use crate::sdp;
use crate::seq::{Arrival, Jitter, StreamRx};
use crate::sys::{self, Poller, RawAddr, RecvBatch, SendBatch};

/// Datagrams per `sendmmsg`/`recvmmsg` call.
pub const BATCH: usize = 64;
/// Ready sockets reported per `epoll` call.
pub const POLL_EVENTS: usize = 256;
/// How long workers keep receiving after the last send.
pub const DRAIN_NS: u64 = 500_000_000;
/// Receive and send buffer of a shared socket (it carries every stream of a worker).
pub const SHARED_SOCKET_BUFFER: usize = 8 << 20;
/// Most calls per run.
pub const MAX_CALLS: u32 = 20_000;
/// Most worker threads.
pub const MAX_THREADS: usize = 64;
/// Longest `--duration` and `--ramp-up`, seconds.
pub const MAX_SECONDS: f64 = 3_600.0;
/// Largest payload; the smallest is the probe ([`PROBE_LEN`]).
pub const MAX_PAYLOAD: usize = 1_400;
/// Consecutive failed deletes after which tear-down gives up (the target is gone).
const MAX_DELETE_FAILURES_IN_A_ROW: u32 = 3;

/// How the harness's call ends map to sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SocketMode {
    /// One socket for all A ends and one for all B ends per worker; batched I/O.
    Shared,
    /// One socket per call end, as SIP phones have.
    PerCall,
}

/// Options of `switchboard-load relay`.
#[derive(Debug, Clone, PartialEq, Args)]
pub struct RelayArgs {
    /// Target(s) and measurement.
    #[command(flatten)]
    pub target: TargetArgs,
    /// Concurrent calls.
    #[arg(long, default_value_t = 100)]
    pub calls: u32,
    /// Length of the measurement window, seconds (after the ramp-up).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Packets per second per stream.
    #[arg(long, default_value_t = 50)]
    pub rate: u32,
    /// RTP payload bytes per packet (160 = 20 ms of G.711).
    #[arg(long, default_value_t = 160)]
    pub payload_size: usize,
    /// Seconds over which calls start sending, one after another, before the window opens.
    #[arg(long, default_value_t = 2.0)]
    pub ramp_up: f64,
    /// Worker threads sending and receiving media.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Socket layout of the harness's call ends.
    #[arg(long, value_enum, default_value_t = SocketMode::Shared)]
    pub sockets: SocketMode,
    /// Worker tick, microseconds: how often a worker wakes to send what is due and receive.
    /// Packets due within one tick leave together, so a longer tick makes the traffic burstier
    /// (a relay then handles more packets per wake-up and looks cheaper) and the harness cheaper.
    #[arg(long, default_value_t = 100)]
    pub tick_us: u64,
    /// Capacity ramp.
    #[command(flatten)]
    pub ramp: RampArgs,
}

/// Validated settings of a relay run, as reported.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RelaySettings {
    /// Concurrent calls.
    pub calls: u32,
    /// Measurement window, seconds.
    pub duration_s: f64,
    /// Ramp-up before the window, seconds.
    pub ramp_up_s: f64,
    /// Packets per second per stream.
    pub rate: u32,
    /// Payload bytes per packet.
    pub payload_size: usize,
    /// Packet time advertised in the SDP, milliseconds.
    pub ptime_ms: u32,
    /// Worker threads.
    pub threads: usize,
    /// Socket layout.
    pub sockets: SocketMode,
    /// Worker tick, microseconds.
    pub tick_us: u64,
    /// Local address.
    pub local_ip: IpAddr,
    /// Runs per target.
    pub rounds: u32,
    /// Where the speech comes from.
    pub media: Source,
}

/// Everything a relay run needs, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct RelayConfig {
    /// Settings as reported.
    pub settings: RelaySettings,
    /// Targets in running order.
    pub targets: Vec<Target>,
    /// Time between two packets of a stream.
    pub period_ns: u64,
    /// Measurement window.
    pub duration_ns: u64,
    /// Ramp-up.
    pub ramp_up_ns: u64,
    /// NG timing.
    pub ng: NgConfig,
    /// The speech sent, µ-law (the probe takes the first bytes of every payload).
    pub audio: Audio,
}

impl RelayConfig {
    /// Validates `args`.
    pub fn from_args(args: &RelayArgs) -> Result<Self> {
        let targets = args.target.targets()?;
        if !(1..=MAX_CALLS).contains(&args.calls) {
            bail!("--calls must be between 1 and {MAX_CALLS}");
        }
        if !(args.duration > 0.0 && args.duration <= MAX_SECONDS) {
            bail!("--duration must be more than 0 and at most {MAX_SECONDS} seconds");
        }
        if !(args.ramp_up >= 0.0 && args.ramp_up <= MAX_SECONDS) {
            bail!("--ramp-up must be between 0 and {MAX_SECONDS} seconds");
        }
        if !(1..=1_000).contains(&args.rate) {
            bail!("--rate must be between 1 and 1000 packets per second");
        }
        if !(PROBE_LEN..=MAX_PAYLOAD).contains(&args.payload_size) {
            bail!("--payload-size must be between {PROBE_LEN} and {MAX_PAYLOAD} bytes");
        }
        if !(1..=MAX_THREADS).contains(&args.threads) {
            bail!("--threads must be between 1 and {MAX_THREADS}");
        }
        if !(50..=20_000).contains(&args.tick_us) {
            bail!("--tick-us must be between 50 and 20000");
        }
        if args.threads > args.calls as usize {
            bail!(
                "--threads ({}) exceeds --calls ({})",
                args.threads,
                args.calls
            );
        }
        let period_ns = 1_000_000_000 / u64::from(args.rate);
        if args.ramp.ramp {
            args.ramp.steps(MAX_CALLS)?;
        }
        let speech = Speech::load(args.target.media.as_deref())?;
        Ok(Self {
            settings: RelaySettings {
                calls: args.calls,
                duration_s: args.duration,
                ramp_up_s: args.ramp_up,
                rate: args.rate,
                payload_size: args.payload_size,
                ptime_ms: (1_000 / args.rate).max(1),
                threads: args.threads,
                sockets: args.sockets,
                tick_us: args.tick_us,
                local_ip: args.target.local_ip,
                rounds: args.target.rounds(),
                media: speech.source.clone(),
            },
            targets,
            period_ns,
            duration_ns: (args.duration * 1e9) as u64,
            ramp_up_ns: (args.ramp_up * 1e9) as u64,
            ng: NgConfig::default(),
            audio: Audio::from_ulaw(&speech.ulaw()),
        })
    }

    /// RTP timestamp units per packet.
    fn samples_per_packet(&self) -> u32 {
        PCMU_CLOCK_RATE / self.settings.rate
    }
}

/// Runs the scenario: every round against every target, in alternation, and reports.
pub fn run(args: &RelayArgs, progress: Progress) -> Result<Report> {
    let config = RelayConfig::from_args(args)?;
    if args.ramp.ramp {
        return run_ramp("relay", &config, &args.ramp, progress);
    }
    run_config("relay", &config, progress)
}

/// `--ramp`: the scenario at growing call counts until a threshold is passed.
fn run_ramp(
    scenario: &str,
    config: &RelayConfig,
    ramp_args: &RampArgs,
    progress: Progress,
) -> Result<Report> {
    let mut settings = serde_json::to_value(&config.settings)?;
    settings["ramp"] = serde_json::json!({
        "start": ramp_args.ramp_start,
        "step": ramp_args.ramp_step,
        "max": ramp_args.ramp_max,
        "max_loss": ramp_args.max_loss,
        "max_p99_ms": ramp_args.max_p99_ms,
    });
    let mut report = Report::new(scenario, settings);
    let mut first = true;
    let outcome = ramp::run(
        ramp_args,
        MAX_CALLS,
        &config.targets,
        true,
        |calls, target| {
            if !first {
                sleep_interruptible(Duration::from_secs(1))?;
            }
            first = false;
            let mut step = config.clone();
            step.settings.calls = calls;
            step.settings.threads = step.settings.threads.min(calls as usize);
            let m = run_once(&step, target, 1, progress)?;
            report.runs.push(RunReport {
                label: target.label.to_string(),
                round: calls,
                figures: Figures::from_measurement(&m),
            });
            Ok(m)
        },
    )?;
    for (target, best) in config.targets.iter().zip(&outcome.best) {
        let Some(m) = best else { continue };
        report.targets.push(TargetReport {
            label: target.label.to_string(),
            name: target.name.clone(),
            address: target.ng.to_string(),
            pid: target.pid,
            runs: 1,
            figures: Figures::from_measurement(m),
            latency_distribution: crate::report::distribution(&m.latency_us),
        });
    }
    report.ramp = outcome.steps;
    report.capacity = outcome.capacity;
    report.compare_targets();
    report.notes = notes(&report, &config.settings.media);
    report.notes.push(
        "ramp: each target's figures are those of its highest step within the thresholds; \
         `runs` lists every step (round = calls)"
            .into(),
    );
    Ok(report)
}

/// `switchboard-load record`: the relay scenario against one target twice in alternation,
/// A without recording and B with every call recorded (NG `record call: yes`), so the
/// comparison shows what recording costs in CPU, loss and latency.
pub fn run_record(args: &RelayArgs, progress: Progress) -> Result<Report> {
    if args.target.compare {
        bail!("record compares the same target with and without recording: drop --compare");
    }
    let mut config = RelayConfig::from_args(args)?;
    let Some(plain) = config.targets.first().cloned() else {
        bail!("no target");
    };
    let named = |what: &str| match &plain.name {
        Some(n) => format!("{n}, {what}"),
        None => what.to_string(),
    };
    config.targets = vec![
        Target {
            name: Some(named("not recorded")),
            ..plain.clone()
        },
        Target {
            label: "B",
            record: true,
            name: Some(named("recorded")),
            ..plain.clone()
        },
    ];
    if args.ramp.ramp {
        return run_ramp("record", &config, &args.ramp, progress);
    }
    run_config("record", &config, progress)
}

fn run_config(scenario: &str, config: &RelayConfig, progress: Progress) -> Result<Report> {
    let settings = serde_json::to_value(&config.settings)?;
    let mut report = Report::new(scenario, settings);
    let mut totals: Vec<Option<Measurement>> = vec![None; config.targets.len()];
    for round in 1..=config.settings.rounds {
        for (i, target) in config.targets.iter().enumerate() {
            if round > 1 || i > 0 {
                // Let the previous target's sockets and timers settle.
                sleep_interruptible(Duration::from_secs(1))?;
            }
            let m = run_once(config, target, round, progress)?;
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
    for (target, total) in config.targets.iter().zip(totals) {
        let Some(total) = total else { continue };
        report.targets.push(TargetReport {
            label: target.label.to_string(),
            name: target.name.clone(),
            address: target.ng.to_string(),
            pid: target.pid,
            runs: config.settings.rounds,
            figures: Figures::from_measurement(&total),
            latency_distribution: crate::report::distribution(&total.latency_us),
        });
    }
    report.compare_targets();
    report.notes = notes(&report, &config.settings.media);
    Ok(report)
}

/// The note that says where the speech came from.
pub fn media_note(media: &Source) -> String {
    match media {
        Source::File(path) => format!("payload: speech from {}", path.display()),
        Source::Espeak => "payload: speech synthesised with espeak-ng at set-up".into(),
        Source::Synthetic => "payload: the built-in speech-like signal (no --media file and \
                              no espeak-ng on this machine)"
            .into(),
    }
}

fn notes(report: &Report, media: &Source) -> Vec<String> {
    let mut notes = vec![
        media_note(media),
        "latency = kernel arrival time at the harness's socket (SO_TIMESTAMPNS) minus the send \
         time carried in the payload, both on CLOCK_MONOTONIC"
            .to_string(),
        "loss counts the whole run (ramp-up, window, drain); CPU and latency only the window"
            .to_string(),
        "on loopback a sender's CPU time includes delivering its packets into the receiver's \
         socket (softirq), so the target's figure includes delivery to the harness and the \
         harness's includes delivery to the target"
            .to_string(),
    ];
    for t in &report.targets {
        let f = &t.figures;
        if f.harness_send_lag_us.p99 > 20_000 {
            notes.push(format!(
                "target {}: the harness sent 1% of packets more than {} ms late; it was starved \
                 of CPU, so the target saw bursts (more --threads, or a quieter machine)",
                t.label,
                f.harness_send_lag_us.p99 / 1_000
            ));
        }
        if let (Some(busy), Some(h)) = (f.machine_busy_cores, f.harness_cpu) {
            let others = busy - h.cores - f.target_cpu.map_or(0.0, |c| c.cores);
            if others > 0.2 {
                notes.push(format!(
                    "target {}: other processes kept {others:.2} cores busy during the window; \
                     figures are noisy",
                    t.label
                ));
            }
        }
    }
    notes
}

/// One end of a call as a worker sends it.
#[derive(Debug, Clone, Copy)]
struct TxStream {
    /// Stream index of the run: `2 × call` for A→B, `2 × call + 1` for B→A.
    id: u32,
    /// 0: sent from an A end; 1: from a B end.
    side: usize,
    fd: RawFd,
    dest: RawAddr,
    ssrc: u32,
    sequence: u16,
    timestamp: u32,
    counter: u32,
    /// Packets the kernel accepted.
    sent: u64,
    /// Earliest send time after `t0` (ramp-up).
    start_offset_ns: u64,
    /// Offset in the period.
    phase_ns: u64,
}

/// Absolute times of one run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeline {
    pub(crate) t0: u64,
    pub(crate) window_start: u64,
    pub(crate) window_end: u64,
    pub(crate) drain_end: u64,
}

/// Counters a worker publishes for progress lines.
#[derive(Debug, Default)]
pub(crate) struct Live {
    pub(crate) sent: AtomicU64,
    pub(crate) received: AtomicU64,
}

/// What a media thread hands back (relayed and mixed scenarios alike).
#[derive(Debug)]
pub(crate) struct WorkerOutcome {
    pub(crate) packets: PacketCounts,
    pub(crate) window_received: u64,
    pub(crate) window_sent: u64,
    pub(crate) latency_us: Histogram<u64>,
    pub(crate) send_lag_us: Histogram<u64>,
    pub(crate) jitter_us_sum: f64,
    pub(crate) jitter_streams: u64,
}

/// Waits for the media threads and adds what each measured to `m`; returns the last error
/// (a thread's own, or a panic).
pub(crate) fn join_workers(
    handles: Vec<thread::JoinHandle<Result<WorkerOutcome>>>,
    m: &mut Measurement,
) -> Option<anyhow::Error> {
    let mut worker_error = None;
    for handle in handles {
        match handle.join() {
            Ok(Ok(out)) => {
                m.packets.add(&out.packets);
                m.window_received += out.window_received;
                m.window_sent += out.window_sent;
                let _ = m.latency_us.add(&out.latency_us);
                let _ = m.send_lag_us.add(&out.send_lag_us);
                m.jitter_us_sum += out.jitter_us_sum;
                m.jitter_streams += out.jitter_streams;
            }
            Ok(Err(e)) => worker_error = Some(e),
            Err(_) => worker_error = Some(anyhow!("a media thread panicked")),
        }
    }
    worker_error
}

/// A media thread: its calls' streams, their sockets, batches and counters.
struct Worker {
    index: usize,
    threads: usize,
    calls: u64,
    period_ns: u64,
    tick_ns: u64,
    samples_per_packet: u32,
    payload_size: usize,
    time: Timeline,
    sockets: Vec<UdpSocket>,
    tx: Vec<TxStream>,
    rx: Vec<StreamRx>,
    jitter: Vec<Jitter>,
    audio: Audio,
    send: [SendBatch; 2],
    recv: RecvBatch,
    poller: Poller,
    cursor: usize,
    cycle: u64,
    sending_done: bool,
    packets: PacketCounts,
    window_received: u64,
    window_sent: u64,
    latency_us: Histogram<u64>,
    /// Per socket: datagrams the kernel dropped on its full receive buffer.
    socket_drops: Vec<u32>,
    /// How late packets left against their schedule, microseconds.
    send_lag_us: Histogram<u64>,
    live: Arc<Live>,
    /// Raised by the main thread when the run must end early.
    stop: Arc<AtomicBool>,
}

impl Worker {
    fn new(
        index: usize,
        config: &RelayConfig,
        time: Timeline,
        sockets: Vec<UdpSocket>,
        tx: Vec<TxStream>,
        live: Arc<Live>,
        stop: Arc<AtomicBool>,
    ) -> Result<Self> {
        let s = &config.settings;
        let mut poller = Poller::new(POLL_EVENTS)?;
        for (i, sock) in sockets.iter().enumerate() {
            poller.add(sock, i as u64)?;
        }
        let max_len = RTP_HEADER_LEN + s.payload_size;
        Ok(Self {
            index,
            threads: s.threads,
            calls: u64::from(s.calls),
            period_ns: config.period_ns,
            tick_ns: s.tick_us * 1_000,
            samples_per_packet: config.samples_per_packet(),
            payload_size: s.payload_size,
            time,
            rx: vec![StreamRx::new(); tx.len()],
            jitter: vec![Jitter::default(); tx.len()],
            tx,
            socket_drops: vec![0; sockets.len()],
            sockets,
            audio: config.audio.clone(),
            send: [
                SendBatch::new(BATCH, max_len),
                SendBatch::new(BATCH, max_len),
            ],
            recv: RecvBatch::new(BATCH, 2_048),
            poller,
            cursor: 0,
            cycle: 0,
            sending_done: false,
            packets: PacketCounts::default(),
            window_received: 0,
            window_sent: 0,
            latency_us: crate::report::latency_histogram(),
            send_lag_us: crate::report::latency_histogram(),
            live,
            stop,
        })
    }

    fn run(mut self) -> Result<WorkerOutcome> {
        let fds: Vec<RawFd> = self.sockets.iter().map(AsRawFd::as_raw_fd).collect();
        let mut tick = self.time.t0;
        loop {
            if sys::is_interrupted() || self.stop.load(Ordering::Relaxed) {
                break;
            }
            let now = sys::monotonic_ns();
            if now >= self.time.drain_end {
                break;
            }
            self.send_due(now);
            // Kernel timestamps are on CLOCK_REALTIME: subtracting this offset moves them to
            // CLOCK_MONOTONIC, the clock of the send times.
            let offset = sys::realtime_ns().wrapping_sub(sys::monotonic_ns());
            loop {
                let ready = self.poller.wait(0)?;
                for i in 0..ready {
                    let socket = self.poller.token(i) as usize;
                    self.receive(socket, fds[socket], offset);
                }
                if ready < self.poller.capacity() {
                    break;
                }
            }
            self.live.sent.store(self.packets.sent, Ordering::Relaxed);
            self.live
                .received
                .store(self.packets.received, Ordering::Relaxed);
            // Next tick after now (ticks missed while busy are skipped, not made up).
            let now = sys::monotonic_ns();
            tick += self.tick_ns * ((now.saturating_sub(tick)) / self.tick_ns + 1);
            sys::sleep_until(tick.min(self.time.drain_end));
        }
        self.finish()
    }

    fn next_due(&self) -> u64 {
        self.time.t0 + self.cycle * self.period_ns + self.tx[self.cursor].phase_ns
    }

    /// Sends every packet due by `now`, in phase order, batched per socket.
    fn send_due(&mut self, now: u64) {
        while !self.sending_done {
            let due = self.next_due();
            if due >= self.time.window_end {
                self.sending_done = true;
                break;
            }
            if due > now {
                break;
            }
            let local = self.cursor;
            if due >= self.time.t0 + self.tx[local].start_offset_ns {
                self.send_one(local, due);
            }
            self.cursor += 1;
            if self.cursor == self.tx.len() {
                self.cursor = 0;
                self.cycle += 1;
            }
        }
        self.flush(0);
        self.flush(1);
    }

    fn send_one(&mut self, local: usize, due: u64) {
        let s = self.tx[local];
        let batch = &self.send[s.side];
        if !batch.is_empty() && (batch.is_full() || batch.fd() != s.fd) {
            self.flush(s.side);
        }
        let header = RtpHeader {
            payload_type: rtp::PT_PCMU,
            sequence: s.sequence,
            timestamp: s.timestamp,
            ssrc: s.ssrc,
        };
        let audio_len = self.payload_size - PROBE_LEN;
        let offset = (s.counter as usize)
            .wrapping_mul(audio_len)
            .wrapping_add(s.id as usize * 997);
        let audio = self.audio.at(offset, audio_len);
        let payload_size = self.payload_size;
        let mut sent_ns = due;
        self.send[s.side].push(s.fd, &s.dest, local as u32, |buf| {
            sent_ns = sys::monotonic_ns();
            let probe = Probe {
                stream: s.id,
                counter: s.counter,
                sent_ns,
            };
            // The batch's buffers are RTP_HEADER_LEN + payload_size long, so this fits.
            rtp::write_packet(buf, &header, &probe, payload_size, audio).unwrap_or(0)
        });
        let s = &mut self.tx[local];
        s.sequence = s.sequence.wrapping_add(1);
        s.timestamp = s.timestamp.wrapping_add(self.samples_per_packet);
        s.counter = s.counter.wrapping_add(1);
        s.sent += 1;
        if due >= self.time.window_start {
            self.window_sent += 1;
        }
        self.send_lag_us
            .saturating_record(sent_ns.saturating_sub(due) / 1_000);
    }

    fn flush(&mut self, side: usize) {
        if self.send[side].is_empty() {
            return;
        }
        let outcome = self.send[side].flush();
        self.packets.sent += outcome.sent as u64;
        self.packets.send_failed += outcome.failed as u64;
        for &tag in self.send[side].failed() {
            let s = &mut self.tx[tag as usize];
            s.sent = s.sent.saturating_sub(1);
        }
    }

    /// Drains a readable socket (a bounded number of batches, so sends are not starved).
    fn receive(&mut self, socket: usize, fd: RawFd, realtime_offset: u64) {
        for _ in 0..64 {
            let n = match self.recv.recv(fd) {
                Ok(n) => n,
                // Errors queued by ICMP are not datagrams; nothing to count.
                Err(_) => return,
            };
            if n == 0 {
                return;
            }
            let now = sys::monotonic_ns();
            for i in 0..n {
                let meta = self.recv.meta(i);
                if let Some(drops) = meta.socket_drops {
                    self.socket_drops[socket] = self.socket_drops[socket].max(drops);
                }
                let arrived = meta
                    .arrival_realtime_ns
                    .map_or(now, |rt| rt.wrapping_sub(realtime_offset));
                self.account(i, socket, arrived);
            }
            if !self.recv.is_full() {
                return;
            }
        }
    }

    /// Accounts the `i`-th datagram of the last receive, which arrived on socket `socket` at
    /// `arrived` (`CLOCK_MONOTONIC`).
    fn account(&mut self, i: usize, socket: usize, arrived: u64) {
        let Some(packet) = rtp::parse_packet(self.recv.datagram(i)) else {
            self.packets.invalid += 1;
            return;
        };
        let stream = u64::from(packet.probe.stream);
        let call = stream / 2;
        let threads = self.threads as u64;
        if call >= self.calls || call % threads != self.index as u64 {
            self.packets.invalid += 1;
            return;
        }
        // A→B streams (even) must arrive at a B end (odd socket index), B→A at an A end.
        if socket % 2 == (stream % 2) as usize {
            self.packets.misrouted += 1;
        }
        let local = ((call / threads) * 2 + stream % 2) as usize;
        let Some(rx) = self.rx.get_mut(local) else {
            self.packets.invalid += 1;
            return;
        };
        self.packets.received += 1;
        let arrival = rx.on_packet(packet.header.sequence);
        if !matches!(arrival, Arrival::Duplicate(_)) {
            self.jitter[local].on_packet(arrived, packet.probe.sent_ns);
        }
        if arrived >= self.time.window_start && arrived < self.time.window_end {
            self.window_received += 1;
            if !matches!(arrival, Arrival::Duplicate(_)) {
                let us = arrived.saturating_sub(packet.probe.sent_ns) / 1_000;
                self.latency_us.saturating_record(us);
            }
        }
    }

    fn finish(mut self) -> Result<WorkerOutcome> {
        // Whatever is still queued (interrupted mid-round) goes out uncounted by the receiver.
        self.flush(0);
        self.flush(1);
        let mut packets = self.packets;
        packets.harness_drops = self.socket_drops.iter().map(|&d| u64::from(d)).sum();
        for (tx, rx) in self.tx.iter().zip(&self.rx) {
            packets.duplicates += rx.duplicates();
            packets.reordered += rx.reordered();
            let lost = tx.sent.saturating_sub(rx.unique());
            packets.lost += lost;
            packets.streams_with_loss += u64::from(lost > 0);
        }
        let jitters: Vec<f64> = self.jitter.iter().filter_map(Jitter::us).collect();
        Ok(WorkerOutcome {
            packets,
            window_received: self.window_received,
            window_sent: self.window_sent,
            latency_us: self.latency_us,
            send_lag_us: self.send_lag_us,
            jitter_us_sum: jitters.iter().sum(),
            jitter_streams: jitters.len() as u64,
        })
    }
}

/// Offset of stream `id` of `streams` in the period: phases spread evenly.
pub(crate) fn phase_ns(id: u32, period_ns: u64, streams: u64) -> u64 {
    u64::from(id) * period_ns / streams.max(1)
}

/// A non-blocking UDP socket on `ip`, with large buffers when it is shared by many streams.
fn media_socket(ip: IpAddr, mode: SocketMode) -> Result<UdpSocket> {
    let addr = SocketAddr::new(ip, 0);
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .context("creating a media socket")?;
    socket.set_nonblocking(true)?;
    if mode == SocketMode::Shared {
        sys::set_buffer_sizes(&socket, SHARED_SOCKET_BUFFER)
            .context("sizing a shared media socket's buffers")?;
    }
    sys::enable_receive_metadata(&socket).context("enabling receive timestamps")?;
    socket
        .bind(&addr.into())
        .with_context(|| format!("binding a media socket on {ip}"))?;
    Ok(socket.into())
}

/// Sleeps for `duration`, returning early with [`Interrupted`] on SIGINT/SIGTERM.
pub(crate) fn sleep_interruptible(duration: Duration) -> Result<()> {
    let end = Instant::now() + duration;
    loop {
        if sys::is_interrupted() {
            return Err(Interrupted.into());
        }
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// Deletes `calls`; gives up after a few failures in a row. Returns (deleted, failed).
fn delete_calls(ng: &mut NgClient, calls: &[CallIds]) -> (u64, u64) {
    let (mut deleted, mut failed, mut in_a_row) = (0u64, 0u64, 0u32);
    for (i, ids) in calls.iter().enumerate() {
        if in_a_row >= MAX_DELETE_FAILURES_IN_A_ROW {
            let left = (calls.len() - i) as u64;
            eprintln!(
                "switchboard-load: {} does not answer; {left} calls left undeleted",
                ng.server()
            );
            return (deleted, failed + left);
        }
        match ng.delete(ids) {
            Ok(()) => {
                deleted += 1;
                in_a_row = 0;
            }
            Err(e) => {
                eprintln!("switchboard-load: delete {}: {e:#}", ids.call_id);
                failed += 1;
                in_a_row += 1;
            }
        }
    }
    (deleted, failed)
}

/// Per worker: its sockets. A ends have even indexes and B ends odd ones (see
/// [`Layout::ends`]).
struct Layout {
    sockets: Vec<Vec<UdpSocket>>,
}

impl Layout {
    fn new(config: &RelayConfig) -> Result<Self> {
        let s = &config.settings;
        let calls = s.calls as usize;
        let per_worker = |w: usize| (calls - w).div_ceil(s.threads);
        let total: usize = match s.sockets {
            SocketMode::Shared => 2 * s.threads,
            SocketMode::PerCall => 2 * calls,
        };
        let limit = sys::raise_open_file_limit(total as u64 + 256)
            .context("raising the open-file limit")?;
        if limit < total as u64 + 32 {
            bail!(
                "{total} sockets need more open files than the limit of {limit}; \
                 use --sockets shared or raise `ulimit -n`"
            );
        }
        let sockets = (0..s.threads)
            .map(|w| {
                let n = match s.sockets {
                    SocketMode::Shared => 2,
                    SocketMode::PerCall => 2 * per_worker(w),
                };
                (0..n)
                    .map(|_| media_socket(s.local_ip, s.sockets))
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { sockets })
    }

    /// Socket indexes (A end, B end) of call `call` inside its worker.
    fn ends(&self, mode: SocketMode, threads: usize, call: usize) -> (usize, usize) {
        match mode {
            SocketMode::Shared => (0, 1),
            SocketMode::PerCall => {
                let j = call / threads;
                (2 * j, 2 * j + 1)
            }
        }
    }
}

/// One run against one target: set up, stream, measure, tear down.
fn run_once(
    config: &RelayConfig,
    target: &Target,
    round: u32,
    progress: Progress,
) -> Result<Measurement> {
    let s = &config.settings;
    let calls = s.calls as usize;
    if let Some(pid) = target.pid {
        crate::procfs::process_cpu_ns(pid)
            .with_context(|| format!("target {} PID {pid}", target.label))?;
    }
    let layout = Layout::new(config)?;
    let mut ng = NgClient::new(s.local_ip, target.ng, config.ng)?;
    let say = |msg: String| {
        if progress.enabled {
            eprintln!(
                "switchboard-load relay {} round {round}: {msg}",
                target.label
            );
        }
    };
    say(format!("setting up {calls} calls via {}", target.ng));

    let setup_started = Instant::now();
    let mut ids_set_up = Vec::with_capacity(calls);
    let streams = set_up_calls(config, target, &layout, &mut ng, &mut ids_set_up);
    let setup_seconds = setup_started.elapsed().as_secs_f64();
    let streams = match streams {
        Ok(streams) => streams,
        Err(e) => {
            say(format!(
                "set-up failed; deleting {} calls",
                ids_set_up.len()
            ));
            delete_calls(&mut ng, &ids_set_up);
            return Err(e.context(format!(
                "setting up call {} of {calls} via {}",
                ids_set_up.len(),
                target.ng
            )));
        }
    };
    say(format!("{calls} calls set up in {setup_seconds:.2} s"));

    let t0 = sys::monotonic_ns() + 100_000_000;
    let window_start = t0 + config.ramp_up_ns;
    let window_end = window_start + config.duration_ns;
    let time = Timeline {
        t0,
        window_start,
        window_end,
        drain_end: window_end + DRAIN_NS,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::with_capacity(s.threads);
    let mut lives = Vec::with_capacity(s.threads);
    let mut spawned = Ok(());
    for (index, (sockets, tx)) in layout.sockets.into_iter().zip(streams).enumerate() {
        let live = Arc::new(Live::default());
        lives.push(live.clone());
        let started =
            Worker::new(index, config, time, sockets, tx, live, stop.clone()).and_then(|worker| {
                thread::Builder::new()
                    .name(format!("load-{index}"))
                    .spawn(move || worker.run())
                    .context("starting a media thread")
            });
        match started {
            Ok(handle) => handles.push(handle),
            Err(e) => {
                spawned = Err(e);
                break;
            }
        }
    }
    let label = format!("relay {} round {round}", target.label);
    let watched = spawned.and_then(|()| watch_window(time, target.pid, &label, progress, &lives));
    if watched.is_err() {
        stop.store(true, Ordering::Relaxed);
    }

    let mut m = Measurement::new(calls as u64, 2 * calls as u64);
    let worker_error = join_workers(handles, &mut m);

    say(format!("deleting {calls} calls"));
    let (deleted, delete_failures) = delete_calls(&mut ng, &ids_set_up);
    let stats = ng.stats();
    m.control = crate::report::ControlFigures {
        calls_set_up: calls as u64,
        setup_seconds,
        ng_requests: stats.requests,
        ng_retries: stats.retries,
        calls_deleted: deleted,
        delete_failures,
    };
    if let Some(e) = worker_error {
        return Err(e.context("media thread"));
    }
    m.cpu = Some(watched?);
    Ok(m)
}

/// Offers and answers every call; returns each worker's streams in phase order. Every call
/// that may exist on the target is in `ids_set_up`, also on failure, so it can be deleted.
fn set_up_calls(
    config: &RelayConfig,
    target: &Target,
    layout: &Layout,
    ng: &mut NgClient,
    ids_set_up: &mut Vec<CallIds>,
) -> Result<Vec<Vec<TxStream>>> {
    let s = &config.settings;
    let calls = s.calls as usize;
    let threads = s.threads;
    let streams_total = 2 * calls as u64;
    let tag = format!(
        "{:x}",
        sys::monotonic_ns() ^ u64::from(std::process::id()) << 40
    );
    let mut tx: Vec<Vec<TxStream>> = vec![Vec::new(); threads];
    for call in 0..calls {
        if sys::is_interrupted() {
            return Err(Interrupted.into());
        }
        let w = call % threads;
        let (a_end, b_end) = layout.ends(s.sockets, threads, call);
        let a_sock = &layout.sockets[w][a_end];
        let b_sock = &layout.sockets[w][b_end];
        let ids = CallIds {
            call_id: format!("sbl-{tag}-{call}"),
            from_tag: format!("caller-{call}"),
            to_tag: format!("callee-{call}"),
        };
        ids_set_up.push(ids.clone());
        let a_port = a_sock.local_addr()?.port();
        let b_port = b_sock.local_addr()?.port();
        let offer_sdp = sdp::audio_sdp(s.local_ip, a_port, call as u64, s.ptime_ms);
        let to_b = ng.offer_with(&ids, &offer_sdp, target.record)?;
        let answer_sdp = sdp::audio_sdp(s.local_ip, b_port, call as u64, s.ptime_ms);
        let to_a = ng.answer(&ids, &answer_sdp)?;
        // B sends where the offer reply points; A where the answer reply points.
        let b_dest = sdp::audio_endpoint(&to_b).context("the offer reply's SDP")?;
        let a_dest = sdp::audio_endpoint(&to_a).context("the answer reply's SDP")?;
        crate::cli::require_loopback("the relay's media address", a_dest.ip())?;
        crate::cli::require_loopback("the relay's media address", b_dest.ip())?;
        let start_offset_ns = config.ramp_up_ns * call as u64 / calls as u64;
        for (dir, (sock, dest)) in [(a_sock, a_dest), (b_sock, b_dest)].into_iter().enumerate() {
            let id = (2 * call + dir) as u32;
            tx[w].push(TxStream {
                id,
                side: dir,
                fd: sock.as_raw_fd(),
                dest: RawAddr::from(dest),
                ssrc: 0x5b00_0000 ^ id.wrapping_mul(0x9e37_79b9),
                // Start close to the wrap so every run crosses it.
                sequence: 0xff00u16.wrapping_add((id % 256) as u16),
                timestamp: id.wrapping_mul(7_919),
                counter: 0,
                sent: 0,
                start_offset_ns,
                phase_ns: phase_ns(id, config.period_ns, streams_total),
            });
        }
    }
    Ok(tx)
}

/// Waits for the window, samples CPU at both of its edges and prints progress meanwhile.
pub(crate) fn watch_window(
    time: Timeline,
    pid: Option<u32>,
    label: &str,
    progress: Progress,
    lives: &[Arc<Live>],
) -> Result<CpuWindow> {
    let every = progress.every.as_nanos() as u64;
    let mut next_progress = sys::monotonic_ns() + every;
    let mut wait_until = |deadline: u64| -> Result<()> {
        loop {
            if sys::is_interrupted() {
                return Err(Interrupted.into());
            }
            let now = sys::monotonic_ns();
            if now >= deadline {
                return Ok(());
            }
            if progress.enabled && now >= next_progress {
                next_progress += every;
                let sent: u64 = lives.iter().map(|l| l.sent.load(Ordering::Relaxed)).sum();
                let received: u64 = lives
                    .iter()
                    .map(|l| l.received.load(Ordering::Relaxed))
                    .sum();
                let phase = if now < time.window_start {
                    "ramp-up"
                } else {
                    "window"
                };
                eprintln!(
                    "switchboard-load {label}: {phase} {:.1} s, sent {sent}, received \
                     {received}, in flight or lost {}",
                    now.saturating_sub(time.t0) as f64 / 1e9,
                    sent.saturating_sub(received)
                );
            }
            let sleep = (deadline - now)
                .min(next_progress.saturating_sub(now).max(1_000_000))
                .min(50_000_000);
            thread::sleep(Duration::from_nanos(sleep));
        }
    };
    wait_until(time.window_start)?;
    let start = CpuSample::take(pid)?;
    wait_until(time.window_end)?;
    let end = CpuSample::take(pid)?;
    Ok(CpuWindow::between(&start, &end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        relay: RelayArgs,
    }

    #[test]
    fn record_refuses_compare() {
        let cli = Cli::try_parse_from([
            "record",
            "--compare",
            "--ng-b",
            "127.0.0.1:9",
            "--duration",
            "1",
        ])
        .unwrap();
        let err = run_record(
            &cli.relay,
            Progress::from(&crate::cli::OutputArgs::default()),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("drop --compare"), "{err}");
    }

    fn config(args: &[&str]) -> Result<RelayConfig> {
        let cli = Cli::try_parse_from(std::iter::once("relay").chain(args.iter().copied()))?;
        RelayConfig::from_args(&cli.relay)
    }

    #[test]
    fn defaults_are_g711() {
        let c = config(&[]).unwrap();
        assert_eq!(c.settings.calls, 100);
        assert_eq!(c.period_ns, 20_000_000);
        assert_eq!(c.settings.ptime_ms, 20);
        assert_eq!(c.samples_per_packet(), 160);
        assert_eq!(c.settings.payload_size, 160);
        assert_eq!(c.settings.sockets, SocketMode::Shared);
        assert_eq!(c.duration_ns, 10_000_000_000);
    }

    #[test]
    fn bounds_are_checked() {
        for bad in [
            &["--calls", "0"][..],
            &["--calls", "20001"],
            &["--duration", "0"],
            &["--duration", "-1"],
            &["--duration", "NaN"],
            &["--duration", "4000"],
            &["--ramp-up", "-1"],
            &["--rate", "0"],
            &["--rate", "1001"],
            &["--payload-size", "19"],
            &["--payload-size", "1401"],
            &["--threads", "0"],
            &["--threads", "3", "--calls", "2"],
            &["--ng", "10.1.2.3:2223"],
            &["--local-ip", "192.168.1.1"],
        ] {
            assert!(config(bad).is_err(), "{bad:?} accepted");
        }
        assert!(config(&["--calls", "2", "--threads", "2", "--sockets", "per-call"]).is_ok());
    }

    #[test]
    fn phases_spread_evenly() {
        let c = config(&["--calls", "4"]).unwrap();
        let phases: Vec<u64> = (0..8).map(|id| phase_ns(id, c.period_ns, 8)).collect();
        assert_eq!(phases[0], 0);
        assert!(phases.windows(2).all(|w| w[1] - w[0] == 2_500_000));
        assert!(phase_ns(7, c.period_ns, 8) < c.period_ns);
    }
}
