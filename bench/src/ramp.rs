//! `--ramp`: raise the load step by step until loss or p99 latency passes a threshold, and
//! report the capacity found.
//!
//! Every step runs the scenario once against each target (A then B with `--compare`, so both
//! see the machine in the same state); a target whose step went over a threshold is not
//! stepped further, and the run ends when no target is left or the last step is done. The
//! capacity of a target is the highest load that stayed within both thresholds.

use anyhow::{Result, bail};
use clap::Args;

use crate::cli::Target;
use crate::report::{Capacity, Figures, Measurement, RampStep};

/// Most steps of one ramp.
pub const MAX_STEPS: u32 = 100;

/// Options of `--ramp`.
#[derive(Debug, Clone, PartialEq, Args)]
pub struct RampArgs {
    /// Raise the load step by step until a threshold is passed; report the capacity found.
    #[arg(long)]
    pub ramp: bool,
    /// Load of the first step (calls; conferences for `conference`).
    #[arg(long, default_value_t = 100)]
    pub ramp_start: u32,
    /// Load added at every step.
    #[arg(long, default_value_t = 100)]
    pub ramp_step: u32,
    /// Highest load tried.
    #[arg(long, default_value_t = 5_000)]
    pub ramp_max: u32,
    /// Loss ratio a step may not exceed (0.001 = 0.1 %).
    #[arg(long, default_value_t = 0.001)]
    pub max_loss: f64,
    /// 99th percentile added latency a step may not exceed, milliseconds.
    #[arg(long, default_value_t = 20.0)]
    pub max_p99_ms: f64,
}

impl Default for RampArgs {
    fn default() -> Self {
        Self {
            ramp: false,
            ramp_start: 100,
            ramp_step: 100,
            ramp_max: 5_000,
            max_loss: 0.001,
            max_p99_ms: 20.0,
        }
    }
}

impl RampArgs {
    /// The loads of the steps, after checking the options.
    pub fn steps(&self, most: u32) -> Result<Vec<u32>> {
        if self.ramp_start == 0 || self.ramp_step == 0 {
            bail!("--ramp-start and --ramp-step must be at least 1");
        }
        if self.ramp_max < self.ramp_start || self.ramp_max > most {
            bail!("--ramp-max must be between --ramp-start and {most}");
        }
        if !(0.0..=1.0).contains(&self.max_loss) {
            bail!("--max-loss is a ratio between 0 and 1");
        }
        if !(self.max_p99_ms > 0.0 && self.max_p99_ms <= 60_000.0) {
            bail!("--max-p99-ms must be more than 0 and at most 60000");
        }
        let steps: Vec<u32> = (0..)
            .map(|k: u32| {
                self.ramp_start
                    .saturating_add(k.saturating_mul(self.ramp_step))
            })
            .take_while(|&n| n <= self.ramp_max)
            .take(MAX_STEPS as usize + 1)
            .collect();
        if steps.len() > MAX_STEPS as usize {
            bail!("the ramp would take more than {MAX_STEPS} steps; raise --ramp-step");
        }
        Ok(steps)
    }

    /// Whether a step's figures stay within the thresholds; `latency` tells whether the
    /// scenario measures latency at all.
    pub fn passes(&self, f: &Figures, latency: bool) -> (bool, Option<String>) {
        if f.loss_ratio > self.max_loss {
            return (
                false,
                Some(format!(
                    "loss {:.4}% over {:.4}%",
                    f.loss_ratio * 100.0,
                    self.max_loss * 100.0
                )),
            );
        }
        let p99_ms = f.latency_us.p99 as f64 / 1_000.0;
        if latency && p99_ms > self.max_p99_ms {
            return (
                false,
                Some(format!("p99 {p99_ms:.1} ms over {} ms", self.max_p99_ms)),
            );
        }
        (true, None)
    }
}

/// What a ramp produced: the steps, each target's capacity and each target's measurement at
/// its highest passing step (or its first step when none passed).
#[derive(Debug)]
pub struct RampOutcome {
    /// Every step of every target.
    pub steps: Vec<RampStep>,
    /// Per target.
    pub capacity: Vec<Capacity>,
    /// Per target, the measurement reported as its figures.
    pub best: Vec<Option<Measurement>>,
}

/// Runs the ramp: `step(load, target)` runs the scenario once.
pub fn run(
    args: &RampArgs,
    most: u32,
    targets: &[Target],
    latency: bool,
    mut step: impl FnMut(u32, &Target) -> Result<Measurement>,
) -> Result<RampOutcome> {
    let loads = args.steps(most)?;
    let mut active = vec![true; targets.len()];
    let mut stopped: Vec<String> = vec!["reached --ramp-max".into(); targets.len()];
    let mut capacity: Vec<Option<u32>> = vec![None; targets.len()];
    let mut best: Vec<Option<Measurement>> = vec![None; targets.len()];
    let mut steps = Vec::new();
    for &load in &loads {
        if !active.iter().any(|&a| a) {
            break;
        }
        for (i, target) in targets.iter().enumerate() {
            if !active[i] {
                continue;
            }
            let m = match step(load, target) {
                Ok(m) => m,
                Err(e) if e.downcast_ref::<crate::Interrupted>().is_some() => return Err(e),
                Err(e) => {
                    // A failed set-up (ports exhausted, load limit) ends this target's ramp.
                    active[i] = false;
                    stopped[i] = format!("step {load} failed: {e:#}");
                    continue;
                }
            };
            let f = Figures::from_measurement(&m);
            let (passed, why) = args.passes(&f, latency);
            steps.push(RampStep {
                label: target.label.to_string(),
                calls: load,
                loss_ratio: f.loss_ratio,
                p99_us: f.latency_us.p99,
                target_cpu_us_per_packet: f.target_cpu.and_then(|c| c.us_per_packet),
                target_cpu_us_per_mixed_frame: f.target_cpu_us_per_mixed_frame,
                target_cpu_cores: f.target_cpu.map(|c| c.cores),
                passed,
            });
            if passed {
                capacity[i] = Some(load);
                best[i] = Some(m);
            } else {
                active[i] = false;
                stopped[i] = format!("step {load}: {}", why.unwrap_or_default());
                if best[i].is_none() {
                    best[i] = Some(m);
                }
            }
        }
    }
    let capacity = targets
        .iter()
        .zip(capacity)
        .zip(stopped)
        .map(|((t, calls), stopped)| Capacity {
            label: t.label.to_string(),
            calls,
            stopped,
        })
        .collect();
    Ok(RampOutcome {
        steps,
        capacity,
        best,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::PacketCounts;

    fn target(label: &'static str) -> Target {
        Target {
            label,
            ng: "127.0.0.1:1".parse().unwrap(),
            pid: None,
            control: None,
            name: None,
            record: false,
        }
    }

    #[test]
    fn steps_are_bounded() {
        let mut a = RampArgs {
            ramp: true,
            ramp_start: 100,
            ramp_step: 50,
            ramp_max: 300,
            ..RampArgs::default()
        };
        assert_eq!(a.steps(1000).unwrap(), vec![100, 150, 200, 250, 300]);
        a.ramp_step = 1;
        a.ramp_max = 1000;
        assert!(a.steps(1000).is_err());
        a.ramp_step = 0;
        assert!(a.steps(1000).is_err());
    }

    #[test]
    fn capacity_is_the_last_step_within_thresholds() {
        let args = RampArgs {
            ramp: true,
            ramp_start: 10,
            ramp_step: 10,
            ramp_max: 60,
            max_loss: 0.01,
            max_p99_ms: 5.0,
        };
        let targets = [target("A"), target("B")];
        let out = run(&args, 100, &targets, true, |load, t| {
            let mut m = Measurement::new(u64::from(load), 2 * u64::from(load));
            m.packets = PacketCounts {
                sent: 1000,
                ..PacketCounts::default()
            };
            // A loses 5 % from 40 calls on; B's p99 passes 5 ms from 30 on.
            if t.label == "A" && load >= 40 {
                m.packets.lost = 50;
            }
            let p99 = if t.label == "B" && load >= 30 {
                9_000
            } else {
                1_000
            };
            m.latency_us.record(p99).unwrap();
            Ok(m)
        })
        .unwrap();
        assert_eq!(out.capacity[0].calls, Some(30));
        assert!(out.capacity[0].stopped.contains("loss"));
        assert_eq!(out.capacity[1].calls, Some(20));
        assert!(out.capacity[1].stopped.contains("p99"));
        // A ran 10..=40, B 10..=30.
        assert_eq!(out.steps.len(), 7);
        assert_eq!(out.best[0].as_ref().unwrap().calls, 30);
    }
}
