//! `switchboard serve`: start the engine with a validated [`Config`] and run until a signal.
//!
//! Start-up order: media workers (each opens its I/O driver on its own thread), the port
//! allocator, the control task, the ACD (its store is opened and its persisted state
//! restored on its own thread), call records ([`crate::cdr`]: `cdr.sqlite` and the
//! JSON-lines directory) and the dashboard's sampler, then the listeners (NG UDP+TCP, native
//! TCP+Unix, HTTP). A listener that cannot bind, or an ACD or call-record store that cannot
//! be opened, stops start-up with a clear error. On the way out every call is ended (with
//! its call record), and the ACD and the call-record writer commit what they have queued
//! before the process exits.
//!
//! SIGINT stops at once. SIGTERM drains: new calls are refused (`/healthz` answers 503),
//! existing calls keep flowing until they end or `media.drain_grace` passes, then the process
//! exits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::net::{TcpListener, UdpSocket, UnixListener};
use tracing::{info, warn};

use crate::acd::{AcdConfig, AcdService};
use crate::config::Config;
use crate::control::{self, HubConfig, ports::EnginePorts};
use crate::metrics::{ControlMetrics, Metrics, WorkerMetrics};
use crate::rt::DriverOptions;
use crate::worker::{self, DROP_LABELS, WorkerConfig};

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
    let epoch = Instant::now();
    let recording = crate::record::start(config.recording.clone(), config.workers, epoch)
        .context("starting recording")?;
    info!(recording = %config.recording.summary(), "recording ready");
    let crate::record::Started {
        service: rec_service,
        taps: rec_taps,
        events: rec_events,
        threads: rec_threads,
    } = recording;
    let mut rec_taps = rec_taps.into_iter();
    let (ev_tx, ev_rx) = tokio::sync::mpsc::channel(4096);
    let mut workers = Vec::with_capacity(config.workers);
    let mut worker_metrics = Vec::with_capacity(config.workers);
    let pin = config.workers <= std::thread::available_parallelism().map_or(1, |n| n.get());
    for index in 0..config.workers {
        let m = Arc::new(WorkerMetrics::new(index, &DROP_LABELS));
        let handle = worker::spawn(
            WorkerConfig {
                index,
                driver: config.driver,
                options: DriverOptions {
                    coalesce_wait: config.coalesce,
                    ..DriverOptions::default()
                },
                pin,
                epoch,
            },
            m.clone(),
            ev_tx.clone(),
            rec_taps.next(),
        )
        .with_context(|| {
            format!(
                "starting media worker {index} with driver {}",
                config.driver
            )
        })?;
        info!(worker = index, driver = %handle.driver, "media worker started");
        workers.push(handle);
        worker_metrics.push(m);
    }
    let ports = EnginePorts::new(
        config.interfaces.clone(),
        config.port_min,
        config.port_max,
        config.workers,
        Duration::from_secs(config.port_quarantine_s),
    )
    .context("partitioning the media port range")?;
    let metrics = Metrics {
        workers: worker_metrics.into(),
        control: Arc::new(ControlMetrics::default()),
        recording: Some(rec_service.metrics().clone()),
    };
    metrics.control.cdr.port_pairs.store(
        u64::from(config.port_max.saturating_sub(config.port_min)).div_ceil(2),
        std::sync::atomic::Ordering::Relaxed,
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("sb-control")
        .enable_all()
        .build()
        .context("starting the control runtime")?;
    let (acd, cdr) = rt.block_on(async move {
        info!(config = %config.summary(), "switchboard starting");
        let (hub, hub_task) = control::start(
            HubConfig {
                media_timeout: Duration::from_secs(config.timeout_s),
                delete_delay: Duration::from_secs(config.delete_delay_s),
                control_token: config.control_token.clone(),
                http_token: config.http_token.clone(),
                epoch,
                recording: Some((rec_service, rec_events)),
                media: config.media.clone(),
            },
            ports,
            workers,
            metrics,
            ev_rx,
        );
        let acd = AcdService::start(
            AcdConfig {
                state_dir: config.state_dir.clone(),
                epoch,
                router: switchboard_router::RouterConfig::default(),
                shards: config.acd_shards,
            },
            &hub,
        )
        .context("starting the ACD")?;
        hub.set_acd(acd.handle());
        // Live operations: call records (their own SQLite file and thread) and the
        // dashboard's once-a-second snapshot.
        let cdr = crate::cdr::CdrService::start(
            crate::cdr::CdrConfig {
                retention_days: config.cdr_retention_days,
                max_file_bytes: config.cdr_max_file_bytes,
                ..crate::cdr::CdrConfig::in_state_dir(&config.state_dir)
            },
            &hub,
        )
        .context("starting call records")?;
        let dashboard = crate::dashboard::Dashboard::start(&hub);

        let ng_udp = bind_ng_udp(config.listen_ng)
            .with_context(|| format!("binding NG UDP {}", config.listen_ng))?;
        let ng_tcp = TcpListener::bind(config.listen_ng)
            .await
            .with_context(|| format!("binding NG TCP {}", config.listen_ng))?;
        let ctl_tcp = TcpListener::bind(config.listen_control)
            .await
            .with_context(|| format!("binding native control {}", config.listen_control))?;
        let http = TcpListener::bind(config.listen_http)
            .await
            .with_context(|| format!("binding HTTP {}", config.listen_http))?;
        let ctl_unix = match &config.control_unix {
            Some(path) => {
                // A socket file left by an earlier run is replaced; one a running engine still
                // answers on, or anything that is not a socket, is an error.
                if let Ok(meta) = std::fs::symlink_metadata(path) {
                    use std::os::unix::fs::FileTypeExt as _;
                    if meta.file_type().is_socket()
                        && std::os::unix::net::UnixStream::connect(path).is_err()
                    {
                        let _ = std::fs::remove_file(path);
                    }
                }
                if let Some(dir) = path.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                Some(
                    UnixListener::bind(path)
                        .with_context(|| format!("binding control socket {}", path.display()))?,
                )
            }
            None => None,
        };

        tokio::spawn(control::ng::serve_udp(hub.clone(), ng_udp));
        tokio::spawn(control::ng::serve_tcp(hub.clone(), ng_tcp));
        tokio::spawn(serve_native_tcp(hub.clone(), ctl_tcp));
        if let Some(l) = ctl_unix {
            tokio::spawn(serve_native_unix(hub.clone(), l));
        }
        let app = crate::http::router_with(
            hub.clone(),
            crate::http::Live {
                cdr: Some(cdr.reader()),
                dashboard: Some(dashboard),
            },
        );
        tokio::spawn(async move {
            if let Err(e) = axum::serve(http, app).await {
                warn!(error = %e, "HTTP server stopped");
            }
        });
        info!(
            ng = %config.listen_ng,
            control = %config.listen_control,
            http = %config.listen_http,
            "switchboard ready"
        );

        let sig = wait_for_signal().await?;
        if sig == StopSignal::Terminate {
            hub.start_draining();
            let grace = Duration::from_secs(config.drain_grace_s);
            info!(
                grace_s = config.drain_grace_s,
                "SIGTERM: draining (no new calls)"
            );
            let until = Instant::now() + grace;
            let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
                .context("installing the SIGINT handler")?;
            loop {
                let calls = hub
                    .call_list()
                    .await
                    .ok()
                    .and_then(|v| v["calls"].as_array().map(Vec::len))
                    .unwrap_or(0);
                if calls == 0 || Instant::now() >= until {
                    info!(calls, "drain finished");
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = int.recv() => break,
                }
            }
        }
        info!(?sig, "stopping");
        hub.end_all_calls().await;
        // Their call records are made before the collector stops with the runtime.
        cdr.settle().await;
        drop(hub);
        hub_task.abort();
        if let Some(path) = &config.control_unix {
            let _ = std::fs::remove_file(path);
        }
        anyhow::Ok((acd, cdr))
    })?;
    acd.shutdown();
    rt.shutdown_timeout(Duration::from_secs(1));
    // The collector is gone with the runtime: the writer commits what is queued and stops.
    cdr.shutdown();
    // The workers are gone with the control task: close every recording.
    rec_threads.shutdown(Duration::from_secs(10));
    info!("stopped");
    Ok(())
}

/// The NG UDP socket, with a receive buffer large enough for a burst of signalling (a
/// proxy's retransmissions after a stall) without drops.
fn bind_ng_udp(addr: std::net::SocketAddr) -> std::io::Result<UdpSocket> {
    let options = crate::rt::ports::SocketOptions {
        recv_buffer: 4 << 20,
        send_buffer: 1 << 20,
        ..crate::rt::ports::SocketOptions::default()
    };
    UdpSocket::from_std(crate::rt::ports::bind_udp(addr, &options)?)
}

async fn serve_native_tcp(hub: control::Hub, l: TcpListener) {
    loop {
        match l.accept().await {
            Ok((s, _)) => {
                let hub = hub.clone();
                let needs = hub.control_needs_token();
                tokio::spawn(control::native::serve_connection(hub, s, needs));
            }
            Err(e) => {
                warn!(error = %e, "control accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_native_unix(hub: control::Hub, l: UnixListener) {
    loop {
        match l.accept().await {
            Ok((s, _)) => {
                tokio::spawn(control::native::serve_connection(hub.clone(), s, false));
            }
            Err(e) => {
                warn!(error = %e, "control accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
