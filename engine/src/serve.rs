//! `switchboard serve`: start the engine with a validated [`Config`] and run until a signal.
//!
//! SIGINT and SIGTERM both stop the process cleanly; SIGTERM first drains (no new calls,
//! existing calls keep flowing for `media.drain_grace` seconds).

use anyhow::Context as _;
use tracing::info;

use crate::config::Config;

/// How the process was asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    /// SIGINT (Ctrl-C): stop now.
    Interrupt,
    /// SIGTERM: drain, then stop.
    Terminate,
}

/// Waits for SIGINT or SIGTERM.
pub async fn wait_for_signal() -> anyhow::Result<StopSignal> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => Ok(StopSignal::Terminate),
        _ = int.recv() => Ok(StopSignal::Interrupt),
    }
}

/// Runs the engine until SIGINT/SIGTERM.
pub fn run(config: Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.state_dir).with_context(|| {
        format!(
            "creating the state directory {}",
            config.state_dir.display()
        )
    })?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("sb-control")
        .enable_all()
        .build()
        .context("starting the control runtime")?;
    rt.block_on(async move {
        info!(config = %config.summary(), "switchboard starting");
        let sig = wait_for_signal().await?;
        info!(?sig, "stopping");
        anyhow::Ok(())
    })?;
    info!("stopped");
    Ok(())
}
