//! The `switchboard` binary: parse the command line, load the configuration, start.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use switchboard_engine::config::{Config, DriverKind, Overrides};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Switchboard: the media and routing data plane of a contact center.
#[derive(Debug, Parser)]
#[command(name = "switchboard", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the engine (defaults: everything on loopback, state in ./var).
    Serve(ServeArgs),
    /// Validate a configuration file and print the resulting settings.
    CheckConfig {
        /// The TOML file to check.
        file: PathBuf,
    },
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// TOML configuration file; flags below override it.
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Media interface: ADDR, NAME/ADDR or ADDR!ADVERTISED (repeatable).
    #[arg(long = "interface", short = 'i')]
    interfaces: Vec<String>,
    /// NG control address (UDP and TCP).
    #[arg(long)]
    listen_ng: Option<String>,
    /// Native control TCP address.
    #[arg(long)]
    listen_control: Option<String>,
    /// HTTP address (metrics, health, recordings).
    #[arg(long)]
    listen_http: Option<String>,
    /// Lowest media port.
    #[arg(long)]
    port_min: Option<u32>,
    /// Highest media port.
    #[arg(long)]
    port_max: Option<u32>,
    /// Media worker threads (0: one per core).
    #[arg(long)]
    workers: Option<u32>,
    /// I/O driver: auto, io_uring or epoll.
    #[arg(long)]
    driver: Option<DriverKind>,
    /// Seconds without media before a call is torn down.
    #[arg(long)]
    timeout: Option<u64>,
    /// State directory (recordings, database).
    #[arg(long)]
    state_dir: Option<String>,
    /// io_uring wake-up coalescing under load, in microseconds (0: off).
    #[arg(long)]
    coalesce_us: Option<u64>,
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => match Config::load(Some(&file), Overrides::default()) {
            Ok(c) => {
                println!("{}: ok\n{}", file.display(), c.summary());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("switchboard: {e}");
                ExitCode::from(2)
            }
        },
        Command::Serve(a) => {
            let ov = Overrides {
                interfaces: a.interfaces,
                listen_ng: a.listen_ng,
                listen_control: a.listen_control,
                listen_http: a.listen_http,
                port_min: a.port_min,
                port_max: a.port_max,
                workers: a.workers,
                driver: a.driver,
                timeout: a.timeout,
                state_dir: a.state_dir,
                coalesce_us: a.coalesce_us,
            };
            let config = match Config::load(a.config.as_deref(), ov) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("switchboard: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logging(&config.log_level);
            match switchboard_engine::serve::run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("switchboard: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
