//! Options shared by every scenario: which target(s) to drive and measure, and how to print.
//!
//! Every scenario flattens [`TargetArgs`] into its own options, so `--ng`, `--pid`, `--compare`,
//! `--ng-b`, `--pid-b`, `--rounds` and `--local-ip` mean the same everywhere. Validation turns
//! them into [`Target`]s; the harness only ever talks to loopback addresses.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;

/// Where the load goes and whose CPU is measured.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct TargetArgs {
    /// NG control address (UDP) of the target; loopback only.
    #[arg(long, default_value = "127.0.0.1:2223")]
    pub ng: SocketAddr,
    /// PID of the target, to measure its CPU time from /proc.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Native control address (TCP JSON lines) of the target, for scenarios driven over
    /// Switchboard's own protocol (`conference`, `barge`); loopback only.
    #[arg(long)]
    pub control: Option<SocketAddr>,
    /// Run the scenario against two targets in alternation (A B A B …) and compare them.
    #[arg(long)]
    pub compare: bool,
    /// NG control address of target B (with --compare).
    #[arg(long, requires = "compare")]
    pub ng_b: Option<SocketAddr>,
    /// Native control address of target B (with --compare).
    #[arg(long, requires = "compare")]
    pub control_b: Option<SocketAddr>,
    /// PID of target B (with --compare).
    #[arg(long, requires = "compare")]
    pub pid_b: Option<u32>,
    /// Runs per target with --compare.
    #[arg(long, default_value_t = 2)]
    pub rounds: u32,
    /// Local address the harness sends from and receives on; loopback only.
    #[arg(long, default_value = "127.0.0.1")]
    pub local_ip: IpAddr,
    /// A name for target A in tables and charts (such as `rtpengine`).
    #[arg(long)]
    pub name: Option<String>,
    /// A name for target B (with --compare).
    #[arg(long, requires = "compare")]
    pub name_b: Option<String>,
    /// Speech to send: a 16-bit PCM WAV file (any rate, resampled to 8 kHz). Without it the
    /// harness synthesises speech with espeak-ng at set-up.
    #[arg(long)]
    pub media: Option<PathBuf>,
}

/// How results and progress are printed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Args)]
pub struct OutputArgs {
    /// Print the report as one JSON object instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress lines on stderr.
    #[arg(long, global = true)]
    pub quiet: bool,
    /// Also draw the report's charts as SVG files into this directory.
    #[arg(long, global = true)]
    pub svg: Option<PathBuf>,
}

/// Options of how a run reports progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Print progress lines on stderr.
    pub enabled: bool,
    /// Time between progress lines.
    pub every: Duration,
}

impl From<&OutputArgs> for Progress {
    fn from(out: &OutputArgs) -> Self {
        Self {
            enabled: !out.quiet,
            every: Duration::from_secs(5),
        }
    }
}

/// One validated target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `A` or `B`.
    pub label: &'static str,
    /// NG control address.
    pub ng: SocketAddr,
    /// PID whose CPU time is measured.
    pub pid: Option<u32>,
    /// Native control address.
    pub control: Option<SocketAddr>,
    /// Name in tables and charts.
    pub name: Option<String>,
    /// Ask the relay to record every call (NG `record call: yes` on the offer).
    pub record: bool,
}

/// Most runs per target with `--compare`.
pub const MAX_ROUNDS: u32 = 50;

impl TargetArgs {
    /// The targets in the order they run (A, or A and B), after checking that every address
    /// is loopback and of the local address's family.
    pub fn targets(&self) -> Result<Vec<Target>> {
        require_loopback("--local-ip", self.local_ip)?;
        let mut targets = vec![Target {
            label: "A",
            ng: self.ng,
            pid: self.pid,
            control: self.control,
            name: self.name.clone(),
            record: false,
        }];
        if self.compare {
            if self.ng_b.is_none() && self.control_b.is_none() {
                bail!("--compare needs --ng-b or --control-b");
            }
            targets.push(Target {
                label: "B",
                ng: self.ng_b.unwrap_or(self.ng),
                pid: self.pid_b,
                control: self.control_b,
                name: self.name_b.clone(),
                record: false,
            });
        } else if self.ng_b.is_some() || self.pid_b.is_some() || self.control_b.is_some() {
            bail!("--ng-b, --control-b and --pid-b need --compare");
        }
        for t in &targets {
            require_loopback("the NG address", t.ng.ip())?;
            if let Some(control) = t.control {
                require_loopback("the control address", control.ip())?;
            }
            if t.ng.is_ipv4() != self.local_ip.is_ipv4() {
                bail!(
                    "the NG address {} and --local-ip {} are of different families",
                    t.ng,
                    self.local_ip
                );
            }
            if t.pid == Some(0) {
                bail!("PID 0 is not a process");
            }
        }
        if !(1..=MAX_ROUNDS).contains(&self.rounds) {
            bail!("--rounds must be between 1 and {MAX_ROUNDS}");
        }
        Ok(targets)
    }

    /// Runs per target: `rounds` with `--compare`, otherwise one.
    pub fn rounds(&self) -> u32 {
        if self.compare { self.rounds } else { 1 }
    }
}

/// Refuses any address that is not loopback: the harness floods what it points at.
pub fn require_loopback(what: &str, ip: IpAddr) -> Result<()> {
    let loopback = match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    };
    if !loopback {
        bail!(
            "{what} {ip} is not a loopback address; switchboard-load only sends to loopback \
             (127.0.0.0/8 or ::1)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        target: TargetArgs,
    }

    fn parse(args: &[&str]) -> Result<TargetArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("t").chain(args.iter().copied())).map(|c| c.target)
    }

    #[test]
    fn defaults_are_one_loopback_target() {
        let t = parse(&[]).unwrap();
        let targets = t.targets().unwrap();
        assert_eq!(targets.len(), 1);
        assert_eq!(targets[0].ng, "127.0.0.1:2223".parse().unwrap());
        assert_eq!(t.rounds(), 1);
    }

    #[test]
    fn compare_makes_two_targets() {
        let t = parse(&[
            "--ng",
            "127.0.0.1:1",
            "--pid",
            "5",
            "--compare",
            "--ng-b",
            "127.0.0.2:2",
            "--pid-b",
            "6",
            "--rounds",
            "3",
        ])
        .unwrap();
        let targets = t.targets().unwrap();
        assert_eq!(targets[1].label, "B");
        assert_eq!(targets[1].pid, Some(6));
        assert_eq!(t.rounds(), 3);
    }

    #[test]
    fn compare_options_go_together() {
        assert!(parse(&["--compare"]).unwrap().targets().is_err());
        let native = parse(&[
            "--compare",
            "--control",
            "127.0.0.1:7",
            "--control-b",
            "127.0.0.1:8",
        ])
        .unwrap()
        .targets()
        .unwrap();
        assert_eq!(native[1].control, Some("127.0.0.1:8".parse().unwrap()));
        assert!(
            parse(&["--control", "10.0.0.1:7"])
                .unwrap()
                .targets()
                .is_err()
        );
        assert!(parse(&["--ng-b", "127.0.0.1:2"]).is_err());
        assert!(parse(&["--pid-b", "2"]).is_err());
    }

    #[test]
    fn non_loopback_is_refused() {
        let err = parse(&["--ng", "192.0.2.1:2223"])
            .unwrap()
            .targets()
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a loopback"), "{err}");
        assert!(
            parse(&["--local-ip", "10.0.0.1"])
                .unwrap()
                .targets()
                .is_err()
        );
        assert!(
            parse(&["--ng", "[::1]:2223", "--local-ip", "::1"])
                .unwrap()
                .targets()
                .is_ok()
        );
    }

    #[test]
    fn mixed_families_and_bad_values_are_refused() {
        assert!(parse(&["--ng", "[::1]:2223"]).unwrap().targets().is_err());
        assert!(parse(&["--pid", "0"]).unwrap().targets().is_err());
        let rounds = parse(&["--compare", "--ng-b", "127.0.0.1:3", "--rounds", "0"]).unwrap();
        assert!(rounds.targets().is_err());
    }
}
