//! A recorder thread (one per media worker): drains its worker's tap ring, decodes each leg,
//! places its audio on the recording's timeline, mixes per layout and writes the files.
//!
//! Every 20 ms it writes each recording up to "now minus the jitter delay" (silence where no
//! packet arrived, silence inside pauses); every 100 ms buffered bytes go to the kernel;
//! every second WAV headers are synced. Marks from the ring start, pause, resume and stop
//! recordings in order with the packets. The thread never touches media state and never
//! blocks a worker: when it falls behind, the ring fills and the worker drops tapped packets.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard_codecs::codec::{CodecKind, CodecSpec, Decoder};
use switchboard_codecs::resample::Resampler;
use switchboard_proto::time::Micros;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::index::{self, Index, RecordingRow};
use super::name::{self, NameValues};
use super::ring::{Mark, MarkKind, PacketMeta, TapConsumer, TapRecord};
use super::sink::{Sink, SinkSpec};
use super::store::{FinishJob, StoreJob};
use super::timeline::{PauseMask, Track, interleave, mix_into};
use super::{
    CodecEntry, EventKind, Layout, RecorderCommand, RecorderEvent, RecordingConfig,
    RecordingMetrics, RecordingSetup, datetime, wall_micros,
};

/// How often recordings are written up to the jitter horizon.
const TICK: Duration = Duration::from_millis(20);
/// How often buffered bytes are handed to the kernel.
const WRITE_EVERY: Duration = Duration::from_millis(100);
/// How often WAV headers are brought up to date.
const SYNC_EVERY: Duration = Duration::from_secs(1);
/// Sleep when the ring was empty while recordings run.
const IDLE: Duration = Duration::from_millis(10);
/// Longest wait for a command while no recording runs (bounds the reaction to shutdown).
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// Most bytes read from one ring per turn.
const RING_TURN_BYTES: usize = 1 << 20;
/// A setup whose start mark never came is dropped after this long.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest decoded frame (120 ms at 48 kHz).
const MAX_FRAME: usize = 5760;
/// Permissions of recording files: the engine's user reads and writes, its group reads.
const FILE_MODE: u32 = 0o640;

/// The recorder thread's state; [`run`](Self::run) is the thread body.
pub struct Recorder {
    rings: Vec<TapConsumer>,
    state: State,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("rings", &self.rings.len())
            .field("recordings", &self.state.recs.len())
            .finish_non_exhaustive()
    }
}

struct DecoderSlot {
    pt: u8,
    clock: u32,
    /// `None` for payload types that carry no audio to record (telephone-event, CN) or that
    /// cannot be decoded.
    decoder: Option<(Decoder, Option<Resampler>)>,
    audio: bool,
}

struct TrackState {
    key: u32,
    timeline: Track,
    codecs: Vec<CodecEntry>,
    decoders: Vec<DecoderSlot>,
}

enum Decoded {
    Audio { clock: u32 },
    Skip,
    Bad,
}

impl TrackState {
    fn slot(&mut self, pt: u8, rate: u32) -> &mut DecoderSlot {
        if let Some(i) = self.decoders.iter().position(|d| d.pt == pt) {
            return &mut self.decoders[i];
        }
        let spec = self
            .codecs
            .iter()
            .find(|c| c.pt == pt)
            .and_then(|c| {
                let kind = CodecKind::from_encoding_name(&c.name)?;
                let mut s = CodecSpec::new(kind)
                    .with_payload_type(pt)
                    .with_clock_rate(c.clock);
                s.channels = u8::try_from(c.channels).unwrap_or(1);
                Some(s)
            })
            .or_else(|| CodecSpec::from_static_payload_type(pt).ok());
        let slot = match spec {
            None => DecoderSlot {
                pt,
                clock: 8000,
                decoder: None,
                audio: true,
            },
            Some(spec) if !spec.kind.is_audio() => DecoderSlot {
                pt,
                clock: spec.clock_rate,
                decoder: None,
                audio: false,
            },
            Some(spec) => {
                let decoder = if spec.kind == CodecKind::Opus {
                    Decoder::with_audio_rate(&spec, rate)
                } else {
                    Decoder::new(&spec)
                };
                let decoder = decoder.ok().and_then(|d| {
                    let from = d.audio_rate();
                    if from == rate {
                        Some((d, None))
                    } else {
                        Resampler::new(from, rate).ok().map(|r| (d, Some(r)))
                    }
                });
                DecoderSlot {
                    pt,
                    clock: spec.clock_rate,
                    decoder,
                    audio: true,
                }
            }
        };
        self.decoders.push(slot);
        let last = self.decoders.len() - 1;
        &mut self.decoders[last]
    }

    fn decode(
        &mut self,
        pt: u8,
        payload: &[u8],
        rate: u32,
        dec: &mut [i16],
        out: &mut Vec<i16>,
    ) -> Decoded {
        let slot = self.slot(pt, rate);
        let clock = slot.clock;
        let Some((decoder, resampler)) = slot.decoder.as_mut() else {
            return if slot.audio {
                Decoded::Bad
            } else {
                Decoded::Skip
            };
        };
        let Ok(n) = decoder.decode(payload, dec) else {
            return Decoded::Bad;
        };
        out.clear();
        match resampler {
            None => out.extend_from_slice(&dec[..n]),
            Some(r) => {
                out.resize(r.output_len(n), 0);
                let m = r.process(&dec[..n], out);
                out.truncate(m);
            }
        }
        Decoded::Audio { clock }
    }
}

struct Recording {
    setup: Box<RecordingSetup>,
    start: Micros,
    start_wall: u64,
    channels: usize,
    tracks: Vec<TrackState>,
    pauses: PauseMask,
    written: u64,
    sink: Sink,
    file: String,
    path: PathBuf,
    key_id: Option<String>,
}

impl Recording {
    fn pos_of(&self, at: Micros) -> i64 {
        let d = i128::from(at.0) - i128::from(self.start.0);
        (d * i128::from(self.setup.rate) / 1_000_000) as i64
    }

    fn ms_of(&self, pos: u64) -> u64 {
        pos * 1000 / u64::from(self.setup.rate.max(1))
    }

    fn pauses_json(&self) -> Value {
        Value::Array(
            self.pauses
                .intervals()
                .iter()
                .map(|&(from, to)| {
                    json!({
                        "at_ms": self.ms_of(from),
                        "duration_ms": to.map(|t| self.ms_of(t) - self.ms_of(from)),
                    })
                })
                .collect(),
        )
    }
}

struct State {
    config: RecordingConfig,
    commands: crossbeam::channel::Receiver<RecorderCommand>,
    setups: HashMap<u32, (Box<RecordingSetup>, Instant)>,
    recs: HashMap<u32, Recording>,
    by_call: HashMap<u64, Vec<u32>>,
    index: Index,
    store: crossbeam::channel::Sender<StoreJob>,
    events: mpsc::Sender<RecorderEvent>,
    metrics: Arc<RecordingMetrics>,
    epoch: Instant,
    wall_at_epoch: u64,
    dec: Vec<i16>,
    samples: Vec<i16>,
    track_bufs: Vec<Vec<i16>>,
    right: Vec<i16>,
    frame: Vec<i16>,
}

impl Recorder {
    /// A recorder over `rings` (one per worker).
    #[allow(clippy::too_many_arguments)]
    #[must_use]
    pub fn new(
        config: RecordingConfig,
        rings: Vec<TapConsumer>,
        commands: crossbeam::channel::Receiver<RecorderCommand>,
        index: Index,
        store: crossbeam::channel::Sender<StoreJob>,
        events: mpsc::Sender<RecorderEvent>,
        metrics: Arc<RecordingMetrics>,
        epoch: Instant,
        stop: Arc<AtomicBool>,
    ) -> Self {
        let elapsed = u64::try_from(epoch.elapsed().as_micros()).unwrap_or(0);
        Recorder {
            rings,
            stop,
            state: State {
                config,
                commands,
                setups: HashMap::new(),
                recs: HashMap::new(),
                by_call: HashMap::new(),
                index,
                store,
                events,
                metrics,
                epoch,
                wall_at_epoch: wall_micros().saturating_sub(elapsed),
                dec: vec![0; MAX_FRAME],
                samples: Vec::with_capacity(MAX_FRAME),
                track_bufs: Vec::new(),
                right: Vec::new(),
                frame: Vec::new(),
            },
        }
    }

    /// The thread body: runs until the stop flag is set, then closes every recording.
    pub fn run(mut self) {
        let mut next_tick = Instant::now() + TICK;
        let mut next_write = Instant::now() + WRITE_EVERY;
        let mut next_sync = Instant::now() + SYNC_EVERY;
        loop {
            let stopping = self.stop.load(Ordering::Relaxed);
            self.state.handle_commands();
            let mut records = 0;
            let Recorder { rings, state, .. } = &mut self;
            for ring in rings.iter_mut() {
                records += ring.drain(RING_TURN_BYTES, |r| state.handle_record(r));
            }
            let now = Instant::now();
            if stopping {
                self.state.close_all();
                break;
            }
            if now >= next_tick {
                self.state.advance(false);
                self.state.expire_setups(now);
                next_tick = now + TICK;
            }
            if now >= next_sync {
                self.state.flush_files(true);
                next_sync = now + SYNC_EVERY;
                next_write = now + WRITE_EVERY;
            } else if now >= next_write {
                self.state.flush_files(false);
                next_write = now + WRITE_EVERY;
            }
            if records == 0 {
                if self.state.recs.is_empty() && self.state.setups.is_empty() {
                    // Nothing can arrive on the ring before a setup: wait for one.
                    self.state.wait_command(IDLE_WAIT);
                } else {
                    std::thread::sleep(IDLE);
                }
            }
        }
        debug!("recorder stopped");
    }
}

impl State {
    fn now(&self) -> Micros {
        Micros(u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX))
    }

    fn emit(&self, rec: u32, kind: EventKind, json: Value) {
        if self
            .events
            .try_send(RecorderEvent { rec, kind, json })
            .is_err()
        {
            warn!("recording event queue full: event dropped");
        }
    }

    fn handle_commands(&mut self) {
        while let Ok(cmd) = self.commands.try_recv() {
            self.handle_command(cmd);
        }
    }

    /// Blocks until a command arrives (handled) or `timeout` passes.
    fn wait_command(&mut self, timeout: Duration) {
        if let Ok(cmd) = self.commands.recv_timeout(timeout) {
            self.handle_command(cmd);
        }
    }

    fn handle_command(&mut self, cmd: RecorderCommand) {
        match cmd {
            RecorderCommand::Setup(s) => {
                self.setups.insert(s.rec, (s, Instant::now()));
            }
            RecorderCommand::Metadata {
                rec,
                metadata,
                agent,
                queue,
            } => {
                if let Some((s, _)) = self.setups.get_mut(&rec) {
                    s.metadata = metadata;
                    s.agent = agent;
                    s.queue = queue;
                } else if let Some(r) = self.recs.get_mut(&rec) {
                    if let Err(e) = self.index.set_metadata(
                        r.setup.id.as_str(),
                        &metadata,
                        agent.as_deref(),
                        queue.as_deref(),
                    ) {
                        warn!(recording = %r.setup.id, error = %e, "cannot update metadata");
                    }
                    r.setup.metadata = metadata;
                    r.setup.agent = agent;
                    r.setup.queue = queue;
                }
            }
            RecorderCommand::Cancel { rec } => {
                self.setups.remove(&rec);
            }
        }
    }

    fn expire_setups(&mut self, now: Instant) {
        let old: Vec<u32> = self
            .setups
            .iter()
            .filter(|(_, (_, at))| now.duration_since(*at) > SETUP_TIMEOUT)
            .map(|(k, _)| *k)
            .collect();
        for rec in old {
            if let Some((s, _)) = self.setups.remove(&rec) {
                self.metrics.failed.fetch_add(1, Ordering::Relaxed);
                self.emit(
                    rec,
                    EventKind::Failed,
                    json!({"event": "recording.failed", "recording": s.id.as_str(),
                        "call": s.call_id, "error": "the call's media worker never started it"}),
                );
            }
        }
    }

    fn handle_record(&mut self, r: TapRecord<'_>) {
        match r {
            TapRecord::Packet(meta, payload) => self.packet(&meta, payload),
            TapRecord::Mark(m) => self.mark(m),
        }
    }

    fn packet(&mut self, meta: &PacketMeta, payload: &[u8]) {
        let Some(list) = self.by_call.get(&meta.call) else {
            return;
        };
        for rec in list {
            let Some(r) = self.recs.get_mut(rec) else {
                continue;
            };
            let rate = r.setup.rate;
            let arrival = r.pos_of(meta.at);
            let Some(t) = r.tracks.iter_mut().find(|t| t.key == meta.leg) else {
                continue;
            };
            match t.decode(meta.pt, payload, rate, &mut self.dec, &mut self.samples) {
                Decoded::Audio { clock } => {
                    let pos = t.timeline.position(arrival, meta.ssrc, meta.ts, clock);
                    let p = t.timeline.place(pos, &self.samples);
                    if p.late > 0 || p.ahead > 0 {
                        self.metrics.late.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Decoded::Skip => {}
                Decoded::Bad => {
                    self.metrics.undecodable.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn mark(&mut self, m: Mark) {
        match m.kind {
            MarkKind::Start => {
                if !self.setups.contains_key(&m.rec) {
                    // The setup is sent before the worker is told to start; it may still be
                    // in the command queue.
                    self.handle_commands();
                }
                let Some((setup, _)) = self.setups.remove(&m.rec) else {
                    warn!(rec = m.rec, "start mark without a setup: ignored");
                    return;
                };
                self.begin(setup, m.at);
            }
            MarkKind::Pause | MarkKind::Resume => {
                let Some(r) = self.recs.get_mut(&m.rec) else {
                    return;
                };
                let pos = u64::try_from(r.pos_of(m.at)).unwrap_or(0).max(r.written);
                let was = r.pauses.is_paused();
                let (kind, name) = if m.kind == MarkKind::Pause {
                    r.pauses.pause(pos);
                    (EventKind::Paused, "recording.paused")
                } else {
                    r.pauses.resume(pos);
                    (EventKind::Resumed, "recording.resumed")
                };
                if was == r.pauses.is_paused() {
                    return;
                }
                let pauses = r.pauses_json();
                let mut ev = json!({"event": name, "recording": r.setup.id.as_str(),
                    "call": r.setup.call_id, "at_ms": r.ms_of(pos)});
                if m.kind == MarkKind::Resume {
                    if let Some(&(from, Some(to))) = r.pauses.intervals().last() {
                        ev["paused_ms"] = json!(r.ms_of(to) - r.ms_of(from));
                    }
                }
                if let Err(e) = self.index.set_pauses(r.setup.id.as_str(), &pauses) {
                    warn!(recording = %r.setup.id, error = %e, "cannot index the pause");
                }
                self.emit(m.rec, kind, ev);
            }
            MarkKind::Stop => {
                self.end(m.rec, Some(m.at), m.reason.as_str());
            }
        }
    }

    fn legs_json(setup: &RecordingSetup) -> Value {
        Value::Array(
            setup
                .legs
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    let channel = match setup.layout {
                        Layout::Stereo { left } if left == i => "left",
                        Layout::Stereo { .. } => "right",
                        Layout::Mixed | Layout::Single => "mono",
                    };
                    json!({"tag": l.tag, "label": l.label, "role": l.role, "channel": channel})
                })
                .collect(),
        )
    }

    fn create_file(
        &self,
        setup: &RecordingSetup,
        start_wall: u64,
    ) -> std::io::Result<(File, String, PathBuf)> {
        let (date, time) = datetime::date_and_time(start_wall);
        let base = name::expand(
            &setup.name,
            &NameValues {
                id: setup.id.as_str(),
                call: &setup.call_id,
                date: &date,
                time: &time,
                agent: setup.agent.as_deref().unwrap_or(""),
                queue: setup.queue.as_deref().unwrap_or(""),
                leg: &setup.leg_name,
                mode: setup.layout.mode_name(),
            },
        );
        let dir = self.config.dir.join(&date);
        std::fs::create_dir_all(&dir)?;
        let ext = setup.format.extension();
        let mut last_err = None;
        for candidate in [base.clone(), format!("{base}-{}", setup.id)] {
            let file = format!("{date}/{candidate}.{ext}");
            let path = dir.join(format!("{candidate}.{ext}"));
            match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(FILE_MODE)
                .open(&path)
            {
                Ok(f) => return Ok((f, file, path)),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| std::io::Error::other("no file name")))
    }

    fn begin(&mut self, setup: Box<RecordingSetup>, at: Micros) {
        let start_wall = self.wall_at_epoch + at.0;
        let fail = |this: &Self, setup: &RecordingSetup, error: String| {
            warn!(recording = %setup.id, call = setup.call_id, error, "recording failed to start");
            this.metrics.failed.fetch_add(1, Ordering::Relaxed);
            this.emit(
                setup.rec,
                EventKind::Failed,
                json!({"event": "recording.failed", "recording": setup.id.as_str(),
                    "call": setup.call_id, "error": error}),
            );
        };
        let (file, rel, path) = match self.create_file(&setup, start_wall) {
            Ok(x) => x,
            Err(e) => return fail(self, &setup, format!("cannot create the file: {e}")),
        };
        let key = self
            .config
            .encrypt_with
            .as_deref()
            .and_then(|id| self.config.keys.get(id).map(|k| (id, k)));
        let channels = setup.layout.channels();
        let spec = SinkSpec {
            format: setup.format,
            channels,
            rate: setup.rate,
            key,
            opus_bitrate: self.config.opus_bitrate,
            serial: rand::random(),
            tags: vec![
                ("SWITCHBOARD_RECORDING".into(), setup.id.to_string()),
                ("SWITCHBOARD_CALL".into(), setup.call_id.clone()),
                ("DATE".into(), datetime::format_micros(start_wall)),
            ],
        };
        let sink = match Sink::create(file, &spec) {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return fail(self, &setup, format!("cannot start the file: {e}"));
            }
        };
        let legs = Self::legs_json(&setup);
        let key_id = key.map(|(id, _)| id.to_owned());
        let row = RecordingRow {
            seq: 0,
            id: setup.id.to_string(),
            call_id: setup.call_id.clone(),
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            file: rel.clone(),
            legs: legs.clone(),
            agent: setup.agent.clone(),
            queue: setup.queue.clone(),
            mode: setup.layout.mode_name().into(),
            format: setup.format.as_str().into(),
            channels: channels as u32,
            sample_rate: setup.rate,
            state: index::state::RECORDING.into(),
            start_us: i64::try_from(start_wall).unwrap_or(i64::MAX),
            end_us: None,
            duration_ms: None,
            size: None,
            stored_size: None,
            sha256: None,
            key_id: key_id.clone(),
            pauses: json!([]),
            metadata: setup.metadata.clone(),
            stop_reason: None,
            error: None,
        };
        if let Err(e) = self.index.insert(&row) {
            drop(sink);
            let _ = std::fs::remove_file(&path);
            return fail(self, &setup, format!("cannot index the recording: {e}"));
        }
        let window =
            (u64::from(setup.rate) * (u64::from(self.config.jitter_ms) + 700) / 1000) as usize;
        let tracks = setup
            .legs
            .iter()
            .map(|l| TrackState {
                key: l.key,
                timeline: Track::new(setup.rate, window),
                codecs: l.codecs.clone(),
                decoders: Vec::new(),
            })
            .collect();
        self.metrics.active.fetch_add(1, Ordering::Relaxed);
        self.metrics.started.fetch_add(1, Ordering::Relaxed);
        debug!(recording = %setup.id, call = setup.call_id, file = rel, "recording started");
        self.emit(
            setup.rec,
            EventKind::Started,
            json!({"event": "recording.started", "recording": setup.id.as_str(),
                "call": setup.call_id, "mode": setup.layout.mode_name(),
                "format": setup.format.as_str(), "file": rel, "legs": legs,
                "start": datetime::format_micros(start_wall),
                "encrypted": key_id.is_some()}),
        );
        self.by_call
            .entry(setup.call_key)
            .or_default()
            .push(setup.rec);
        let rec = setup.rec;
        self.recs.insert(
            rec,
            Recording {
                setup,
                start: at,
                start_wall,
                channels,
                tracks,
                pauses: PauseMask::default(),
                written: 0,
                sink,
                file: rel,
                path,
                key_id,
            },
        );
    }

    /// Writes every recording up to now minus the jitter delay (or up to now).
    fn advance(&mut self, all: bool) {
        let now = self.now();
        let jitter = self.config.jitter_ms;
        let keys: Vec<u32> = self.recs.keys().copied().collect();
        for rec in keys {
            let Some(r) = self.recs.get(&rec) else {
                continue;
            };
            let horizon = if all {
                0
            } else {
                i64::from(r.setup.rate) * i64::from(jitter) / 1000
            };
            let target = r.pos_of(now) - horizon;
            if let Ok(target) = u64::try_from(target) {
                if let Err(e) = self.write_to(rec, target) {
                    self.fail(rec, e);
                }
            }
        }
    }

    /// Writes recording `rec` from its current position up to `target`.
    fn write_to(&mut self, rec: u32, target: u64) -> Result<(), String> {
        let Some(r) = self.recs.get_mut(&rec) else {
            return Ok(());
        };
        let chunk = (r.setup.rate / 10).max(1) as usize;
        if self.track_bufs.len() < r.tracks.len() {
            self.track_bufs.resize(r.tracks.len(), Vec::new());
        }
        while r.written < target {
            let n = usize::try_from(target - r.written)
                .unwrap_or(chunk)
                .min(chunk);
            for (t, buf) in r.tracks.iter_mut().zip(self.track_bufs.iter_mut()) {
                buf.resize(n, 0);
                t.timeline.take(&mut buf[..n]);
            }
            let bufs = &mut self.track_bufs[..r.tracks.len()];
            self.frame.clear();
            match r.setup.layout {
                Layout::Stereo { left } => {
                    self.right.clear();
                    self.right.resize(n, 0);
                    for (i, b) in bufs.iter().enumerate() {
                        if i != left {
                            mix_into(&mut self.right, &b[..n]);
                        }
                    }
                    self.frame.resize(2 * n, 0);
                    match bufs.get(left) {
                        Some(l) => interleave(&l[..n], &self.right, &mut self.frame),
                        None => {
                            for (f, s) in self.frame.chunks_exact_mut(2).zip(&self.right) {
                                f[1] = *s;
                            }
                        }
                    }
                }
                Layout::Mixed => {
                    self.frame.resize(n, 0);
                    for b in bufs.iter() {
                        mix_into(&mut self.frame, &b[..n]);
                    }
                }
                Layout::Single => match bufs.first() {
                    Some(b) => self.frame.extend_from_slice(&b[..n]),
                    None => self.frame.resize(n, 0),
                },
            }
            r.pauses.apply(r.written, &mut self.frame, r.channels);
            r.sink
                .write(&self.frame)
                .map_err(|e| format!("write failed: {e}"))?;
            r.written += n as u64;
        }
        Ok(())
    }

    fn flush_files(&mut self, sync: bool) {
        let mut failed = Vec::new();
        for (rec, r) in &mut self.recs {
            let res = if sync { r.sink.sync() } else { r.sink.flush() };
            match res {
                Ok(n) => {
                    self.metrics.bytes_written.fetch_add(n, Ordering::Relaxed);
                }
                Err(e) => failed.push((*rec, format!("flush failed: {e}"))),
            }
        }
        for (rec, e) in failed {
            self.fail(rec, e);
        }
    }

    fn detach(&mut self, rec: u32) -> Option<Recording> {
        let r = self.recs.remove(&rec)?;
        if let Some(list) = self.by_call.get_mut(&r.setup.call_key) {
            list.retain(|x| *x != rec);
            if list.is_empty() {
                self.by_call.remove(&r.setup.call_key);
            }
        }
        self.metrics.active.fetch_sub(1, Ordering::Relaxed);
        Some(r)
    }

    /// Ends a recording at `at` (or at what has been received, when `None`).
    fn end(&mut self, rec: u32, at: Option<Micros>, reason: &'static str) {
        let target = match (self.recs.get(&rec), at) {
            (Some(r), Some(at)) => u64::try_from(r.pos_of(at)).unwrap_or(0),
            (Some(r), None) => u64::try_from(r.pos_of(self.now())).unwrap_or(0),
            (None, _) => return,
        };
        if let Err(e) = self.write_to(rec, target) {
            return self.fail(rec, e);
        }
        let Some(r) = self.detach(rec) else {
            return;
        };
        let pauses = r.pauses_json();
        let frames = r.sink.frames();
        let rate = u64::from(r.setup.rate.max(1));
        let (state, error) = match r.sink.finish() {
            Ok((n, _)) => {
                self.metrics.bytes_written.fetch_add(n, Ordering::Relaxed);
                (index::state::COMPLETE, None)
            }
            Err(e) => {
                self.metrics.failed.fetch_add(1, Ordering::Relaxed);
                (index::state::FAILED, Some(format!("closing failed: {e}")))
            }
        };
        let duration_ms = frames * 1000 / rate;
        debug!(recording = %r.setup.id, call = r.setup.call_id, duration_ms, reason, "recording closed");
        let job = FinishJob {
            rec,
            id: r.setup.id.to_string(),
            call_id: r.setup.call_id.clone(),
            file: r.file,
            path: r.path,
            key_id: r.key_id,
            format: r.setup.format,
            end_us: r.start_wall + duration_ms * 1000,
            duration_ms,
            pauses,
            stop_reason: reason,
            state,
            error,
        };
        if self.store.send(StoreJob::Finish(Box::new(job))).is_err() {
            warn!("recording store is gone: recording not finished in the index");
        }
    }

    /// Abandons a recording after a write error: the file is closed as it is and the index
    /// row marked failed.
    fn fail(&mut self, rec: u32, error: String) {
        let Some(r) = self.detach(rec) else {
            return;
        };
        warn!(recording = %r.setup.id, call = r.setup.call_id, error, "recording failed");
        self.metrics.failed.fetch_add(1, Ordering::Relaxed);
        let frames = r.sink.frames();
        let rate = u64::from(r.setup.rate.max(1));
        let pauses = r.pauses_json();
        let _ = r.sink.finish();
        let duration_ms = frames * 1000 / rate;
        let job = FinishJob {
            rec,
            id: r.setup.id.to_string(),
            call_id: r.setup.call_id.clone(),
            file: r.file,
            path: r.path,
            key_id: r.key_id,
            format: r.setup.format,
            end_us: r.start_wall + duration_ms * 1000,
            duration_ms,
            pauses,
            stop_reason: "error",
            state: index::state::FAILED,
            error: Some(error),
        };
        let _ = self.store.send(StoreJob::Finish(Box::new(job)));
    }

    /// Shutdown: everything received is written and every recording closed.
    fn close_all(&mut self) {
        let keys: Vec<u32> = self.recs.keys().copied().collect();
        for rec in keys {
            self.end(rec, None, "shutdown");
        }
    }
}
