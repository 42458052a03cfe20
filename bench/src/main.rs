//! `switchboard-load`: the Switchboard load harness. Scenarios are subcommands; see the
//! `switchboard_bench` library for what each measures.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchboard_bench::acd::{self, AcdArgs};
use switchboard_bench::cli::{OutputArgs, Progress};
use switchboard_bench::relay::{self, RelayArgs};
use switchboard_bench::report::Report;
use switchboard_bench::{Interrupted, sys};

/// Drives an NG-speaking media relay on loopback and measures loss, latency and CPU per packet.
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
    /// The relay scenario against one target without and then with every call recorded
    /// (A: plain, B: recorded), in alternation.
    Record(RelayArgs),
    /// The ACD router in virtual time, against Erlang C (and Erlang A with patience).
    Acd(AcdArgs),
}

/// What a scenario hands back: the common report, or (for `acd`) its own text with the
/// report around its figures.
struct Outcome {
    report: Report,
    text: Option<String>,
}

fn run(scenario: &Scenario, progress: Progress) -> anyhow::Result<Outcome> {
    match scenario {
        Scenario::Relay(args) => Ok(Outcome {
            report: relay::run(args, progress)?,
            text: None,
        }),
        Scenario::Record(args) => Ok(Outcome {
            report: relay::run_record(args, progress)?,
            text: None,
        }),
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
