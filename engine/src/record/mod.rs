//! Call recording: the tap on the media path, the recorder threads that turn tapped RTP into
//! audio files, the SQLite index, crash repair, encryption at rest, retention and the HTTP
//! retrieval API. See `docs/recordings.md`.
//!
//! # Threads and message paths
//!
//! ```text
//! control ──Setup/Metadata──▶ recorder i ◀──tap ring (rtrb SPSC)── media worker i
//!    │                          │  decode, jitter window, mix, encode, write, index rows
//!    └──Command::Record────────▶ worker i: start/pause/resume/stop marks go through the
//!                               │  ring, in order with the packets they apply to
//!                               ▼
//!                        store thread: hash, finish rows, repair after a crash, retention
//!                               │
//!   events (started/paused/resumed/stopped/failed) ──▶ control ──▶ subscribers
//! ```
//!
//! - The worker copies each relayed RTP packet of a recorded call (leg, arrival time, header
//!   fields, payload) into its [`ring::TapProducer`]; nothing else happens on the media path.
//!   A full ring drops recording data only, counted per worker and reported as a
//!   `recording.dropped` event.
//! - Each worker has its own recorder thread ([`recorder`]), so a call's packets, marks and
//!   files stay on one thread and recording scales with the workers. A recorder owns its
//!   open files. It decodes per leg, places audio on the recording's timeline by RTP
//!   timestamp ([`timeline`]), waits `jitter_ms` for late packets, mixes or interleaves per
//!   the mode, and writes through [`sink`]. Buffered audio reaches the kernel every 100 ms
//!   and WAV headers are synced every second, so a killed process loses well under a second.
//! - The store thread ([`store`]) finishes closed recordings (size, SHA-256, final row),
//!   repairs recordings a previous run left unfinished, and applies retention.
//! - HTTP ([`http`]) lists, describes, downloads (with ranges, decrypting on the fly) and
//!   deletes recordings.

pub mod config;
pub mod crypt;
pub mod datetime;
pub mod http;
pub mod index;
pub mod manager;
pub mod name;
pub mod ogg;
pub mod recorder;
pub mod ring;
pub mod sink;
pub mod store;
pub mod timeline;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio::sync::mpsc;
use tracing::{info, warn};

pub use self::config::{RecordingConfig, RecordingSection};
use self::ring::{TapCounters, TapProducer};

/// How the legs of a call are laid out in files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One stereo file: the customer left, everyone else right.
    Stereo,
    /// One mono file with every leg mixed.
    Mixed,
    /// One mono file per leg.
    PerLeg,
}

impl Mode {
    /// Parses `stereo`, `mixed` or `per-leg` (`per_leg`, `leg` also accepted).
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "stereo" => Self::Stereo,
            "mixed" | "mono" => Self::Mixed,
            "per-leg" | "per_leg" | "leg" => Self::PerLeg,
            _ => return None,
        })
    }

    /// The canonical name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stereo => "stereo",
            Self::Mixed => "mixed",
            Self::PerLeg => "per-leg",
        }
    }
}

/// File format of a recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// WAV, PCM 16-bit.
    Wav,
    /// WAV, G.711 µ-law (8 kHz).
    WavUlaw,
    /// WAV, G.711 A-law (8 kHz).
    WavAlaw,
    /// Ogg/Opus.
    Opus,
}

impl Format {
    /// Parses `wav`, `wav-ulaw` (`wav-pcmu`), `wav-alaw` (`wav-pcma`) or `opus` (`ogg`).
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "wav" | "wav-pcm" => Self::Wav,
            "wav-ulaw" | "wav-pcmu" | "wav-mulaw" => Self::WavUlaw,
            "wav-alaw" | "wav-pcma" => Self::WavAlaw,
            "opus" | "ogg" | "ogg-opus" => Self::Opus,
            _ => return None,
        })
    }

    /// The canonical name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Wav => "wav",
            Self::WavUlaw => "wav-ulaw",
            Self::WavAlaw => "wav-alaw",
            Self::Opus => "opus",
        }
    }

    /// File name extension.
    #[must_use]
    pub fn extension(self) -> &'static str {
        match self {
            Self::Opus => "opus",
            _ => "wav",
        }
    }

    /// HTTP `Content-Type`.
    #[must_use]
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Opus => "audio/ogg",
            _ => "audio/wav",
        }
    }

    /// Whether the format fixes the sample rate at 8 kHz.
    #[must_use]
    pub fn is_narrowband_only(self) -> bool {
        matches!(self, Self::WavUlaw | Self::WavAlaw)
    }
}

/// A recording's public id: 24 lower-case hex digits (48 bits of creation time in ms, 48
/// random bits), so ids sort by creation time.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordingId(String);

impl RecordingId {
    /// Length of an id.
    pub const LEN: usize = 24;

    /// A new id for a recording created at `unix_ms`.
    #[must_use]
    pub fn generate(unix_ms: u64) -> Self {
        let r: u64 = rand::random();
        RecordingId(format!(
            "{:012x}{:012x}",
            unix_ms & 0xffff_ffff_ffff,
            r & 0xffff_ffff_ffff
        ))
    }

    /// Validates an id from outside.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        (s.len() == Self::LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| RecordingId(s.to_owned()))
    }

    /// The id as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RecordingId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Recording counters, shared by the recorder, the store and the workers' rings.
#[derive(Debug, Default)]
pub struct RecordingMetrics {
    /// Recordings being written.
    pub active: AtomicU64,
    /// Recordings started.
    pub started: AtomicU64,
    /// Recordings that failed.
    pub failed: AtomicU64,
    /// Bytes written to recording files.
    pub bytes_written: AtomicU64,
    /// Packets whose audio arrived after its place on the timeline was written.
    pub late: AtomicU64,
    /// Packets that could not be decoded (unknown payload type, bad payload).
    pub undecodable: AtomicU64,
    /// Per-worker tap ring counters.
    pub taps: Vec<Arc<TapCounters>>,
}

impl RecordingMetrics {
    /// Renders the Prometheus text lines.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let sum = |f: &dyn Fn(&TapCounters) -> u64| -> u64 { self.taps.iter().map(|t| f(t)).sum() };
        let _ = writeln!(
            out,
            "# HELP switchboard_recordings_active Recordings being written.\n\
             # TYPE switchboard_recordings_active gauge\n\
             switchboard_recordings_active {}\n\
             # HELP switchboard_recordings_started_total Recordings started.\n\
             # TYPE switchboard_recordings_started_total counter\n\
             switchboard_recordings_started_total {}\n\
             # HELP switchboard_recordings_failed_total Recordings that failed.\n\
             # TYPE switchboard_recordings_failed_total counter\n\
             switchboard_recordings_failed_total {}\n\
             # HELP switchboard_recording_bytes_written_total Bytes written to recording files.\n\
             # TYPE switchboard_recording_bytes_written_total counter\n\
             switchboard_recording_bytes_written_total {}\n\
             # HELP switchboard_recording_dropped_frames_total Audio frames (RTP packets) left out of recordings, by reason.\n\
             # TYPE switchboard_recording_dropped_frames_total counter\n\
             switchboard_recording_dropped_frames_total{{reason=\"queue_full\"}} {}\n\
             switchboard_recording_dropped_frames_total{{reason=\"too_large\"}} {}\n\
             switchboard_recording_dropped_frames_total{{reason=\"late\"}} {}\n\
             switchboard_recording_dropped_frames_total{{reason=\"undecodable\"}} {}",
            load(&self.active),
            load(&self.started),
            load(&self.failed),
            load(&self.bytes_written),
            sum(&|t| load(&t.queue_full)),
            sum(&|t| load(&t.too_large)),
            load(&self.late),
            load(&self.undecodable),
        );
    }
}

/// How the legs go into one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Track `left` on the left channel, the other tracks mixed on the right.
    Stereo {
        /// Index of the customer's track.
        left: usize,
    },
    /// Every track mixed, mono.
    Mixed,
    /// The only track, mono.
    Single,
}

impl Layout {
    /// Channels of the file.
    #[must_use]
    pub fn channels(self) -> usize {
        match self {
            Self::Stereo { .. } => 2,
            Self::Mixed | Self::Single => 1,
        }
    }

    /// The `mode` stored in the index.
    #[must_use]
    pub fn mode_name(self) -> &'static str {
        match self {
            Self::Stereo { .. } => "stereo",
            Self::Mixed => "mixed",
            Self::Single => "leg",
        }
    }
}

/// A payload type a leg may send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecEntry {
    /// Payload type.
    pub pt: u8,
    /// Encoding name.
    pub name: String,
    /// RTP clock rate.
    pub clock: u32,
    /// Channels.
    pub channels: u16,
}

/// One recorded leg.
#[derive(Debug, Clone)]
pub struct LegSetup {
    /// The worker's leg key (the leg's local RTP port).
    pub key: u32,
    /// NG tag.
    pub tag: String,
    /// NG label.
    pub label: Option<String>,
    /// `customer`, `agent` or `party`.
    pub role: &'static str,
    /// Payload types it may send (its own, then its peers').
    pub codecs: Vec<CodecEntry>,
}

/// Everything the recorder needs to write one file, sent before the worker starts tapping.
#[derive(Debug, Clone)]
pub struct RecordingSetup {
    /// The recorder's handle (also in the ring's marks).
    pub rec: u32,
    /// Public id.
    pub id: RecordingId,
    /// The worker's call key.
    pub call_key: u64,
    /// NG call-id.
    pub call_id: String,
    /// Channel layout.
    pub layout: Layout,
    /// Recorded legs, in track order.
    pub legs: Vec<LegSetup>,
    /// File format.
    pub format: Format,
    /// Samples per second.
    pub rate: u32,
    /// Name pattern.
    pub name: String,
    /// `{leg}` of the name pattern.
    pub leg_name: String,
    /// Caller metadata.
    pub metadata: Value,
    /// Agent.
    pub agent: Option<String>,
    /// Queue.
    pub queue: Option<String>,
}

/// Control → recorder.
#[derive(Debug)]
#[non_exhaustive]
pub enum RecorderCommand {
    /// A recording that a worker is about to start.
    Setup(Box<RecordingSetup>),
    /// New metadata for a recording.
    Metadata {
        /// The recording.
        rec: u32,
        /// Replaces the metadata.
        metadata: Value,
        /// Agent.
        agent: Option<String>,
        /// Queue.
        queue: Option<String>,
    },
    /// The worker never got the start: forget the setup.
    Cancel {
        /// The recording.
        rec: u32,
    },
}

/// What a recorder event means for the recording's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Writing started.
    Started,
    /// Paused.
    Paused,
    /// Resumed.
    Resumed,
    /// Closed and indexed (final).
    Stopped,
    /// Failed (final).
    Failed,
}

/// Recorder or store → control: an event for subscribers.
#[derive(Debug, Clone)]
pub struct RecorderEvent {
    /// The recorder's handle (0 for recordings of a previous run).
    pub rec: u32,
    /// What happened.
    pub kind: EventKind,
    /// The event as sent to subscribers.
    pub json: Value,
}

/// Microseconds since the Unix epoch, now.
#[must_use]
pub fn wall_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// The engine's shared view of recordings: configuration, the channel to the recorder, and
/// the blocking operations HTTP needs. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RecordingService {
    inner: Arc<ServiceInner>,
}

#[derive(Debug)]
struct ServiceInner {
    config: RecordingConfig,
    /// One recorder per media worker.
    commands: Vec<crossbeam::channel::Sender<RecorderCommand>>,
    metrics: Arc<RecordingMetrics>,
}

impl RecordingService {
    /// Settings.
    #[must_use]
    pub fn config(&self) -> &RecordingConfig {
        &self.inner.config
    }

    /// Counters.
    #[must_use]
    pub fn metrics(&self) -> &Arc<RecordingMetrics> {
        &self.inner.metrics
    }

    /// Queues a command for the recorder of media worker `worker`; false when its queue is
    /// full or it is gone.
    pub fn send(&self, worker: usize, cmd: RecorderCommand) -> bool {
        self.inner
            .commands
            .get(worker)
            .is_some_and(|c| c.try_send(cmd).is_ok())
    }

    /// The index file.
    #[must_use]
    pub fn index_path(&self) -> PathBuf {
        self.inner.config.dir.join(index::INDEX_FILE)
    }

    /// The recordings directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.inner.config.dir
    }
}

/// The threads behind recording, owned by `serve` until shutdown.
#[derive(Debug)]
pub struct RecordingThreads {
    recorders: Vec<JoinHandle<()>>,
    store: Option<JoinHandle<()>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    store_tx: crossbeam::channel::Sender<store::StoreJob>,
}

impl RecordingThreads {
    /// Closes every open recording (final headers, index rows) and stops the threads,
    /// waiting at most `within`.
    pub fn shutdown(mut self, within: Duration) {
        self.stop.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + within;
        for t in self.recorders.drain(..) {
            join_until(t, deadline, "recorder");
        }
        let _ = self.store_tx.send(store::StoreJob::Shutdown);
        if let Some(t) = self.store.take() {
            join_until(t, deadline, "recording store");
        }
    }
}

fn join_until(t: JoinHandle<()>, deadline: Instant, what: &str) {
    while !t.is_finished() {
        if Instant::now() >= deadline {
            warn!("{what} thread did not stop in time");
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = t.join();
}

/// What [`start`] hands back: the service for control and HTTP, one ring producer per
/// worker, the event stream for control, and the threads.
#[derive(Debug)]
pub struct Started {
    /// For control and HTTP.
    pub service: RecordingService,
    /// One per media worker, in worker order.
    pub taps: Vec<TapProducer>,
    /// Events for control to publish.
    pub events: mpsc::Receiver<RecorderEvent>,
    /// The threads, to stop at shutdown.
    pub threads: RecordingThreads,
}

/// Errors starting recording.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The directory could not be created.
    #[error("recordings directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The index could not be opened.
    #[error("recordings index {path}: {source}")]
    Index {
        /// The index file.
        path: PathBuf,
        /// The cause.
        source: rusqlite::Error,
    },
    /// A thread could not be started.
    #[error("starting the {what} thread: {source}")]
    Thread {
        /// Which.
        what: &'static str,
        /// The cause.
        source: std::io::Error,
    },
}

/// Opens the recordings directory and index, finds recordings a previous run left
/// unfinished (the store thread repairs them), and starts the store thread and one recorder
/// thread with its tap ring per worker. `epoch` is the engine's clock origin.
pub fn start(
    config: RecordingConfig,
    workers: usize,
    epoch: Instant,
) -> Result<Started, StartError> {
    std::fs::create_dir_all(&config.dir).map_err(|source| StartError::Dir {
        path: config.dir.clone(),
        source,
    })?;
    let index_path = config.dir.join(index::INDEX_FILE);
    let index_err = |source| StartError::Index {
        path: index_path.clone(),
        source,
    };
    let store_index = index::Index::open(&index_path).map_err(index_err)?;
    let unfinished = store_index.unfinished().map_err(index_err)?;
    if !unfinished.is_empty() {
        info!(
            count = unfinished.len(),
            "recordings left unfinished by the previous run: repairing"
        );
    }
    let mut taps = Vec::with_capacity(workers);
    let mut rings = Vec::with_capacity(workers);
    let mut counters = Vec::with_capacity(workers);
    for _ in 0..workers {
        let c = Arc::new(TapCounters::default());
        let (p, r) = ring::tap_ring(config.queue_bytes, c.clone());
        taps.push(p);
        rings.push(r);
        counters.push(c);
    }
    let metrics = Arc::new(RecordingMetrics {
        taps: counters,
        ..RecordingMetrics::default()
    });
    let (ev_tx, ev_rx) = mpsc::channel(4096);
    let (store_tx, store_rx) = crossbeam::channel::unbounded();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));

    let store = store::Store::new(
        config.clone(),
        store_index,
        metrics.clone(),
        ev_tx.clone(),
        unfinished,
    );
    let store_thread = std::thread::Builder::new()
        .name("sb-rec-store".into())
        .spawn(move || store.run(store_rx))
        .map_err(|source| StartError::Thread {
            what: "recording store",
            source,
        })?;
    // One recorder per worker: a call's packets, marks and files stay on one thread.
    let mut commands = Vec::with_capacity(workers);
    let mut recorders = Vec::with_capacity(workers);
    for (i, ring) in rings.into_iter().enumerate() {
        let (cmd_tx, cmd_rx) = crossbeam::channel::bounded(4096);
        let rec = recorder::Recorder::new(
            config.clone(),
            vec![ring],
            cmd_rx,
            index::Index::open(&index_path).map_err(index_err)?,
            store_tx.clone(),
            ev_tx.clone(),
            metrics.clone(),
            epoch,
            stop.clone(),
        );
        let t = std::thread::Builder::new()
            .name(format!("sb-recorder-{i}"))
            .spawn(move || rec.run())
            .map_err(|source| StartError::Thread {
                what: "recorder",
                source,
            })?;
        commands.push(cmd_tx);
        recorders.push(t);
    }
    Ok(Started {
        service: RecordingService {
            inner: Arc::new(ServiceInner {
                config,
                commands,
                metrics,
            }),
        },
        taps,
        events: ev_rx,
        threads: RecordingThreads {
            recorders,
            store: Some(store_thread),
            stop,
            store_tx,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_names() {
        let id = RecordingId::generate(1_714_566_896_789);
        assert_eq!(id.as_str().len(), RecordingId::LEN);
        assert!(id.as_str().starts_with("018f34269c95"));
        assert_eq!(RecordingId::parse(id.as_str()), Some(id));
        for bad in [
            "",
            "../../etc/passwd",
            "0123456789abcdef0123456G",
            "0123456789ABCDEF01234567",
        ] {
            assert!(RecordingId::parse(bad).is_none(), "{bad}");
        }
        for f in ["wav", "wav-ulaw", "wav-alaw", "opus"] {
            assert_eq!(Format::parse(f).unwrap().as_str(), f);
        }
        for m in ["stereo", "mixed", "per-leg"] {
            assert_eq!(Mode::parse(m).unwrap().as_str(), m);
        }
        assert!(Format::parse("mp3").is_none());
    }
}
