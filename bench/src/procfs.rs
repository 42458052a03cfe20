//! CPU time of a target process, of the harness itself and of the whole machine, and the
//! kernel's UDP drop counter, read from `/proc`.
//!
//! A target's time is `utime + stime` (fields 14 and 15) of `/proc/PID/stat`, all threads, in
//! clock ticks of `sysconf(_SC_CLK_TCK)`; the machine's busy time is the first `cpu` line of
//! `/proc/stat` less idle and iowait. The harness's own time comes from `getrusage(2)`, in
//! microseconds. `RcvbufErrors` of `/proc/net/snmp` counts datagrams any UDP socket of the network
//! namespace dropped because its receive buffer was full (the relay's and the harness's alike).
//! Take a [`CpuSample`] at the start and at the end of a measurement window and subtract.

use std::fs;

use anyhow::{Context, Result, bail};

use crate::sys;

/// `utime + stime` in clock ticks from the text of `/proc/PID/stat`.
///
/// The command name (field 2) is in parentheses and may itself contain spaces and parentheses,
/// so fields are counted from the last `)`.
pub fn parse_proc_pid_stat(text: &str) -> Result<u64> {
    let close = text.rfind(')').context("no ')' in /proc/PID/stat")?;
    // After the name: field 3 (state) is index 0, so field N is index N - 3.
    let fields: Vec<&str> = text[close + 1..].split_ascii_whitespace().collect();
    let field = |n: usize| -> Result<u64> {
        fields
            .get(n - 3)
            .with_context(|| format!("/proc/PID/stat has no field {n}"))?
            .parse::<u64>()
            .with_context(|| format!("/proc/PID/stat field {n} is not a number"))
    };
    Ok(field(14)? + field(15)?)
}

/// `(busy, total)` clock ticks of all CPUs from the text of `/proc/stat`.
///
/// Busy is everything but `idle` and `iowait`; `guest` time is already inside `user`.
pub fn parse_proc_stat(text: &str) -> Result<(u64, u64)> {
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("/proc/stat has no cpu line")?;
    let values = line
        .split_ascii_whitespace()
        .skip(1)
        .take(8)
        .map(|v| v.parse::<u64>())
        .collect::<Result<Vec<_>, _>>()
        .context("/proc/stat cpu line is not numeric")?;
    if values.len() < 5 {
        bail!("/proc/stat cpu line is too short");
    }
    let total: u64 = values.iter().sum();
    let idle = values[3] + values[4];
    Ok((total - idle, total))
}

/// `RcvbufErrors` of the `Udp:` lines of `/proc/net/snmp` (a header line, then a value line).
pub fn parse_udp_rcvbuf_errors(text: &str) -> Result<u64> {
    let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        bail!("/proc/net/snmp has no Udp lines");
    };
    let column = names
        .split_ascii_whitespace()
        .position(|n| n == "RcvbufErrors")
        .context("/proc/net/snmp has no RcvbufErrors")?;
    values
        .split_ascii_whitespace()
        .nth(column)
        .context("/proc/net/snmp Udp values are short")?
        .parse()
        .context("/proc/net/snmp RcvbufErrors is not a number")
}

/// Datagrams dropped on full UDP receive buffers in this network namespace so far.
pub fn udp_rcvbuf_errors() -> Result<u64> {
    let text = fs::read_to_string("/proc/net/snmp").context("reading /proc/net/snmp")?;
    parse_udp_rcvbuf_errors(&text)
}

/// CPU time of a process given by PID, in nanoseconds.
pub fn process_cpu_ns(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let ticks = parse_proc_pid_stat(&text)?;
    Ok(ticks * 1_000_000_000 / sys::clock_ticks_per_second())
}

/// Busy CPU time of the whole machine in nanoseconds (all cores added up).
pub fn machine_busy_ns() -> Result<u64> {
    let text = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let (busy, _) = parse_proc_stat(&text)?;
    Ok(busy * 1_000_000_000 / sys::clock_ticks_per_second())
}

/// Everything read at one edge of a measurement window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuSample {
    /// `CLOCK_MONOTONIC` time of the sample.
    pub at_ns: u64,
    /// The target's CPU time, when a PID was given.
    pub target_ns: Option<u64>,
    /// The harness's CPU time.
    pub harness_ns: u64,
    /// The machine's busy time, when `/proc/stat` is readable.
    pub machine_ns: Option<u64>,
    /// UDP receive-buffer drops so far, when `/proc/net/snmp` is readable.
    pub udp_drops: Option<u64>,
}

impl CpuSample {
    /// Samples now; fails only when the target's stat cannot be read (it exited).
    pub fn take(target: Option<u32>) -> Result<Self> {
        Ok(Self {
            at_ns: sys::monotonic_ns(),
            target_ns: target.map(process_cpu_ns).transpose()?,
            harness_ns: sys::process_cpu_ns(),
            machine_ns: machine_busy_ns().ok(),
            udp_drops: udp_rcvbuf_errors().ok(),
        })
    }
}

/// CPU used between two samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuWindow {
    /// Wall time between the samples.
    pub wall_ns: u64,
    /// The target's CPU time.
    pub target_ns: Option<u64>,
    /// The harness's CPU time.
    pub harness_ns: u64,
    /// The machine's busy time.
    pub machine_ns: Option<u64>,
    /// UDP receive-buffer drops.
    pub udp_drops: Option<u64>,
}

impl CpuWindow {
    /// The difference `end - start`.
    pub fn between(start: &CpuSample, end: &CpuSample) -> Self {
        let diff = |a: Option<u64>, b: Option<u64>| Some(b?.saturating_sub(a?));
        Self {
            wall_ns: end.at_ns.saturating_sub(start.at_ns),
            target_ns: diff(start.target_ns, end.target_ns),
            harness_ns: end.harness_ns.saturating_sub(start.harness_ns),
            machine_ns: diff(start.machine_ns, end.machine_ns),
            udp_drops: diff(start.udp_drops, end.udp_drops),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "1234 (rtp engine) S 1 1234 1234 0 -1 4194560 5000 0 0 0 \
                        250 75 0 0 20 0 9 0 100 900000000 3000 18446744073709551615 \
                        1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0";

    #[test]
    fn reads_utime_and_stime() {
        assert_eq!(parse_proc_pid_stat(STAT).unwrap(), 325);
    }

    #[test]
    fn names_with_parentheses_do_not_shift_fields() {
        let odd = STAT.replace("(rtp engine)", "(a) b (c))");
        assert_eq!(parse_proc_pid_stat(&odd).unwrap(), 325);
    }

    #[test]
    fn malformed_stat_is_an_error() {
        assert!(parse_proc_pid_stat("1234 rtpengine S").is_err());
        assert!(parse_proc_pid_stat("1 (x) S 1 2").is_err());
    }

    #[test]
    fn machine_busy_excludes_idle_and_iowait() {
        let text = "cpu  100 5 50 1000 20 3 2 1 0 0\ncpu0 50 2 25 500 10 1 1 0 0 0\n";
        assert_eq!(parse_proc_stat(text).unwrap(), (161, 1181));
        assert!(parse_proc_stat("intr 1 2 3\n").is_err());
    }

    #[test]
    fn window_subtracts() {
        let a = CpuSample {
            at_ns: 1_000,
            target_ns: Some(10),
            harness_ns: 5,
            machine_ns: None,
            udp_drops: Some(3),
        };
        let b = CpuSample {
            at_ns: 3_000,
            target_ns: Some(40),
            harness_ns: 6,
            machine_ns: Some(9),
            udp_drops: Some(5),
        };
        let w = CpuWindow::between(&a, &b);
        assert_eq!(w.wall_ns, 2_000);
        assert_eq!(w.target_ns, Some(30));
        assert_eq!(w.harness_ns, 1);
        assert_eq!(w.machine_ns, None);
        assert_eq!(w.udp_drops, Some(2));
    }

    #[test]
    fn reads_udp_receive_buffer_errors() {
        let text = "Ip: Forwarding\nIp: 1\n\
                    Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n\
                    Udp: 1107 1 7 1109 6 0\n\
                    UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors\n\
                    UdpLite: 0 0 0 0 0\n";
        assert_eq!(parse_udp_rcvbuf_errors(text).unwrap(), 6);
        assert!(parse_udp_rcvbuf_errors("Udp: A B\n").is_err());
    }
}
