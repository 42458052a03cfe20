//! The `probe` scenario: what the kernel alone costs per relayed packet on this machine.
//!
//! A minimal reflector thread ([`sys::Reflector`]) receives with one blocking `recvmmsg` and
//! returns every datagram with one `sendmmsg`; the harness paces packets at `--rate` towards it
//! over loopback and counts what comes back. The reflector's own thread CPU divided by the
//! packets it reflected is the floor of a userspace relay: with `--batch 1` one system-call
//! round per packet (what a relay that wakes per packet pays), with larger batches what
//! batching alone saves. Figures of real relays are read against these limits.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Serialize;

use crate::sys::{self, RawAddr, RecvBatch, Reflector, SendBatch};

/// Options of `switchboard-load probe`.
#[derive(Debug, Clone, PartialEq, Args)]
pub struct ProbeArgs {
    /// Packets per second sent to the reflector.
    #[arg(long, default_value_t = 50_000)]
    pub rate: u32,
    /// Seconds per batch size.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Reflector batch sizes to measure (datagrams per recvmmsg/sendmmsg round).
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    pub batches: Vec<usize>,
    /// UDP payload bytes (172 = an RTP packet of 20 ms G.711).
    #[arg(long, default_value_t = 172)]
    pub packet_size: usize,
    /// Local address; loopback only.
    #[arg(long, default_value = "127.0.0.1")]
    pub local_ip: IpAddr,
}

/// One batch size measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeStep {
    /// Datagrams per round the reflector allowed.
    pub batch: usize,
    /// Packets the harness sent.
    pub sent: u64,
    /// Packets the reflector returned.
    pub reflected: u64,
    /// Packets that came back to the harness.
    pub received: u64,
    /// `sent - received`.
    pub lost: u64,
    /// recvmmsg/sendmmsg rounds of the reflector.
    pub rounds: u64,
    /// Reflector thread CPU, seconds.
    pub reflector_cpu_s: f64,
    /// Reflector CPU per reflected packet, microseconds.
    pub us_per_packet: f64,
    /// Harness CPU per packet sent or received, microseconds.
    pub harness_us_per_packet: f64,
}

/// The report of `probe`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeReport {
    /// Packets per second offered.
    pub rate: u32,
    /// Seconds per step.
    pub duration_s: f64,
    /// Payload bytes.
    pub packet_size: usize,
    /// One per batch size.
    pub steps: Vec<ProbeStep>,
}

impl std::fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "probe: minimal loopback reflector, {} packets/s of {} bytes, {} s per batch size",
            self.rate, self.packet_size, self.duration_s
        )?;
        writeln!(
            f,
            "  {:>5} {:>10} {:>10} {:>8} {:>10} {:>12} {:>14}",
            "batch", "sent", "reflected", "lost", "pkts/round", "µs/packet", "harness µs/pkt"
        )?;
        for s in &self.steps {
            writeln!(
                f,
                "  {:>5} {:>10} {:>10} {:>8} {:>10.2} {:>12.2} {:>14.2}",
                s.batch,
                s.sent,
                s.reflected,
                s.lost,
                s.reflected as f64 / s.rounds.max(1) as f64,
                s.us_per_packet,
                s.harness_us_per_packet
            )?;
        }
        write!(
            f,
            "  µs/packet: the reflector thread's CPU (user + system, loopback delivery of its \
             sends included) per reflected packet"
        )
    }
}

/// Runs every batch size in turn.
pub fn run(args: &ProbeArgs) -> Result<ProbeReport> {
    crate::cli::require_loopback("--local-ip", args.local_ip)?;
    if !(1_000..=2_000_000).contains(&args.rate) {
        bail!("--rate must be between 1000 and 2000000");
    }
    if !(args.duration > 0.0 && args.duration <= 600.0) {
        bail!("--duration must be more than 0 and at most 600 seconds");
    }
    if args.batches.is_empty() || args.batches.iter().any(|&b| !(1..=1024).contains(&b)) {
        bail!("--batches are between 1 and 1024");
    }
    if !(16..=1_400).contains(&args.packet_size) {
        bail!("--packet-size must be between 16 and 1400");
    }
    let mut steps = Vec::new();
    for &batch in &args.batches {
        if sys::is_interrupted() {
            return Err(crate::Interrupted.into());
        }
        steps.push(run_step(args, batch)?);
    }
    Ok(ProbeReport {
        rate: args.rate,
        duration_s: args.duration,
        packet_size: args.packet_size,
        steps,
    })
}

struct ReflectorOutcome {
    reflected: u64,
    rounds: u64,
    cpu_ns: u64,
}

fn run_step(args: &ProbeArgs, batch: usize) -> Result<ProbeStep> {
    let reflector = UdpSocket::bind(SocketAddr::new(args.local_ip, 0))
        .context("binding the reflector socket")?;
    sys::set_receive_timeout(&reflector, 50_000_000)?;
    sys::set_buffer_sizes(&reflector, 4 << 20)?;
    let target = reflector.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop_r = stop.clone();
    let handle = thread::Builder::new()
        .name("probe-reflector".into())
        .spawn(move || -> Result<ReflectorOutcome> {
            let mut r = Reflector::new(batch, 2_048);
            let fd = reflector.as_raw_fd();
            let start = sys::thread_cpu_ns();
            let (mut reflected, mut rounds) = (0u64, 0u64);
            while !stop_r.load(Ordering::Relaxed) {
                let n = r.round(fd)?;
                if n > 0 {
                    reflected += n as u64;
                    rounds += 1;
                }
            }
            Ok(ReflectorOutcome {
                reflected,
                rounds,
                cpu_ns: sys::thread_cpu_ns() - start,
            })
        })
        .context("starting the reflector thread")?;

    let socket = UdpSocket::bind(SocketAddr::new(args.local_ip, 0))?;
    socket.set_nonblocking(true)?;
    sys::set_buffer_sizes(&socket, 4 << 20)?;
    let fd = socket.as_raw_fd();
    let dest = RawAddr::from(target);
    let mut send = SendBatch::new(64, args.packet_size);
    let mut recv = RecvBatch::new(64, 2_048);
    let period_ns = 1_000_000_000 / u64::from(args.rate);
    let tick_ns = 100_000;
    let t0 = sys::monotonic_ns() + 10_000_000;
    let end = t0 + (args.duration * 1e9) as u64;
    let drain_end = end + 200_000_000;
    let harness_start = sys::process_cpu_ns();
    let (mut sent, mut received, mut k) = (0u64, 0u64, 0u64);
    let mut tick = t0;
    sys::sleep_until(t0);
    loop {
        let now = sys::monotonic_ns();
        if now >= drain_end || sys::is_interrupted() {
            break;
        }
        while now < end && t0 + k * period_ns <= now {
            if send.is_full() {
                sent += send.flush().sent as u64;
            }
            let counter = k;
            send.push(fd, &dest, 0, |buf| {
                buf[..8].copy_from_slice(&counter.to_be_bytes());
                buf.len()
            });
            k += 1;
        }
        if !send.is_empty() {
            sent += send.flush().sent as u64;
        }
        loop {
            let n = recv.recv(fd).unwrap_or(0);
            received += n as u64;
            if n < 64 {
                break;
            }
        }
        tick += tick_ns * ((sys::monotonic_ns().saturating_sub(tick)) / tick_ns + 1);
        sys::sleep_until(tick.min(drain_end));
    }
    let harness_ns = sys::process_cpu_ns() - harness_start;
    stop.store(true, Ordering::Relaxed);
    let out = match handle.join() {
        Ok(r) => r?,
        Err(_) => bail!("the reflector thread panicked"),
    };
    let harness_ns = harness_ns.saturating_sub(out.cpu_ns);
    Ok(ProbeStep {
        batch,
        sent,
        reflected: out.reflected,
        received,
        lost: sent.saturating_sub(received),
        rounds: out.rounds,
        reflector_cpu_s: out.cpu_ns as f64 / 1e9,
        us_per_packet: out.cpu_ns as f64 / 1e3 / out.reflected.max(1) as f64,
        harness_us_per_packet: harness_ns as f64 / 1e3 / (sent + received).max(1) as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflects_everything_at_a_low_rate() {
        let report = run(&ProbeArgs {
            rate: 2_000,
            duration: 0.5,
            batches: vec![1, 16],
            packet_size: 172,
            local_ip: "127.0.0.1".parse().unwrap(),
        })
        .unwrap();
        for s in &report.steps {
            assert!((990..=1010).contains(&s.sent), "{report}");
            assert_eq!(s.reflected, s.sent, "{report}");
            assert_eq!(s.lost, 0, "{report}");
            assert!(s.us_per_packet > 0.0);
        }
        assert!(report.to_string().contains("µs/packet"));
    }

    #[test]
    fn bad_options_are_refused() {
        let ok = ProbeArgs {
            rate: 2_000,
            duration: 0.1,
            batches: vec![1],
            packet_size: 172,
            local_ip: "127.0.0.1".parse().unwrap(),
        };
        for bad in [
            ProbeArgs {
                local_ip: "10.0.0.1".parse().unwrap(),
                ..ok.clone()
            },
            ProbeArgs {
                batches: vec![0],
                ..ok.clone()
            },
            ProbeArgs {
                duration: 0.0,
                ..ok.clone()
            },
        ] {
            assert!(run(&bad).is_err());
        }
    }
}
