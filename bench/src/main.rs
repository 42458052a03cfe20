//! `switchboard-load`: the Switchboard load harness. Scenarios are subcommands; see the
//! `switchboard_bench` library for what each measures.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchboard_bench::acd::{self, AcdArgs};
use switchboard_bench::cli::{OutputArgs, Progress};
use switchboard_bench::doc::{self, DocArgs};
use switchboard_bench::fork::{self, ForkArgs};
use switchboard_bench::mix::{self, BargeArgs, ConferenceArgs, TranscodeArgs};
use switchboard_bench::probe::{self, ProbeArgs};
use switchboard_bench::relay::{self, RelayArgs};
use switchboard_bench::report::Report;
use switchboard_bench::{Interrupted, chart, sys};

/// Drives a media engine on loopback (NG or Switchboard's native protocol) and measures loss,
/// latency, jitter and CPU per packet; `--compare` runs two targets in alternation.
#[derive(Debug, Parser)]
#[command(name = "switchboard-load", version)]
struct Cli {
    #[command(flatten)]
    output: OutputArgs,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Two-party G.711 calls relayed packet for packet, both directions.
    Relay(RelayArgs),
    /// Two-party calls the target transcodes (NG `codec: {mask, transcode}`), both directions.
    Transcode(TranscodeArgs),
    /// Conferences over the native protocol: N members, K speaking, every member hears the mix.
    Conference(ConferenceArgs),
    /// Customer and agent in a call and a supervisor barging in (native `monitor.start`).
    Barge(BargeArgs),
    /// The relay scenario against one target without and then with every call recorded
    /// (A: plain, B: recorded), in alternation.
    Record(RelayArgs),
    /// Two-party calls, each streamed to a WebSocket sink in the harness (native
    /// `fork.start`); `--analytics` adds conversation analytics (A: without, B: with).
    Fork(ForkArgs),
    /// The ACD router in virtual time, against Erlang C (and Erlang A with patience).
    Acd(AcdArgs),
    /// The limits of this machine: CPU per packet of a minimal recvmmsg/sendmmsg reflector.
    Probe(ProbeArgs),
    /// Rewrites the generated block of docs/performance.md from a `make bench` run's reports.
    Doc(DocArgs),
}

/// What a scenario hands back: the common report, or (for `acd` and `probe`) its own text
/// with the report around its figures.
struct Outcome {
    report: Report,
    text: Option<String>,
}

fn plain(report: Report) -> Outcome {
    Outcome { report, text: None }
}

fn run(scenario: &Scenario, progress: Progress) -> anyhow::Result<Outcome> {
    match scenario {
        Scenario::Relay(args) => Ok(plain(relay::run(args, progress)?)),
        Scenario::Transcode(args) => Ok(plain(mix::run_transcode(args, progress)?)),
        Scenario::Conference(args) => Ok(plain(mix::run_conference(args, progress)?)),
        Scenario::Barge(args) => Ok(plain(mix::run_barge(args, progress)?)),
        Scenario::Record(args) => Ok(plain(relay::run_record(args, progress)?)),
        Scenario::Fork(args) => {
            let outcome = fork::run(args, progress)?;
            let text = outcome.text();
            Ok(Outcome {
                report: outcome.report,
                text: Some(text),
            })
        }
        Scenario::Acd(args) => {
            let result = acd::run(args.clone())?;
            let settings = serde_json::json!({
                "agents": result.agents,
                "arrivals_per_hour": result.arrivals_per_hour,
                "aht_s": result.aht_s,
                "sim_hours": result.sim_hours,
                "sl_seconds": result.sl_seconds,
                "patience_s": result.patience_s,
                "seed": result.seed,
            });
            let mut report = Report::new("acd", settings);
            report.result = Some(serde_json::to_value(&result)?);
            Ok(Outcome {
                report,
                text: Some(format!("{result}\n")),
            })
        }
        Scenario::Doc(args) => {
            let path = doc::run(args)?;
            let report = Report::new("doc", serde_json::json!({"doc": path}));
            Ok(Outcome {
                report,
                text: Some(format!(
                    "rewrote the generated block of {}\n",
                    path.display()
                )),
            })
        }
        Scenario::Probe(args) => {
            let result = probe::run(args)?;
            let settings = serde_json::json!({
                "rate": args.rate,
                "duration_s": args.duration,
                "batches": args.batches,
                "packet_size": args.packet_size,
            });
            let mut report = Report::new("probe", settings);
            report.result = Some(serde_json::to_value(&result)?);
            Ok(Outcome {
                report,
                text: Some(format!("{result}\n")),
            })
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = sys::install_interrupt_handler() {
        eprintln!("switchboard-load: cannot install the SIGINT handler: {e}");
        return ExitCode::FAILURE;
    }
    let progress = Progress::from(&cli.output);
    match run(&cli.scenario, progress) {
        Ok(outcome) => {
            if let Some(dir) = &cli.output.svg {
                match chart::write_charts(&outcome.report, dir) {
                    Ok(files) => {
                        for f in files {
                            eprintln!("switchboard-load: wrote {}", f.display());
                        }
                    }
                    Err(e) => {
                        eprintln!("switchboard-load: charts: {e:#}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            if cli.output.json {
                println!("{}", outcome.report.to_json());
            } else {
                match outcome.text {
                    Some(text) => print!("{text}"),
                    None => print!("{}", outcome.report.to_text()),
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) if e.downcast_ref::<Interrupted>().is_some() => {
            eprintln!("switchboard-load: interrupted; calls cleaned up");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("switchboard-load: {e:#}");
            ExitCode::FAILURE
        }
    }
}
