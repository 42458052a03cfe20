//! Call detail records: one record at the end of each call, written to SQLite
//! (`cdr.sqlite` in the state directory) and to rotating JSON-lines files, listed over HTTP
//! (`GET /cdrs`, [`http`]) and announced as a `cdr` event on the subscribe stream.
//!
//! ## Sources
//!
//! A collector task on the control runtime follows the hub's event stream:
//!
//! * `call.created` notes when a call started;
//! * `task.offered` / `task.assigned` that name a call tie it to an ACD queue and agent;
//! * `recording.started` adds a recording id to its call;
//! * `media.timeout` keeps the call's last statistics and the reason `timeout`;
//! * `call.ended` (`reason`, `created_ms`, `answered_ms`, `ended_ms`, `legs`,
//!   `recordings`, `analytics`; every field optional) makes the full record at once;
//! * `call.deleted` alone makes a minimal record once [`DELETED_GRACE`] has passed without a
//!   `call.ended` for the same call.
//!
//! What the collector remembers per live call is bounded ([`MAX_PENDING`] calls, a few
//! recordings each).
//!
//! ## Writing
//!
//! Records go through a bounded queue to the `sb-cdr` thread, which commits whatever has
//! piled up in one transaction, appends the same records as JSON lines, and then publishes
//! one `cdr` event per record (so a `cdr` event means the record can be listed). A full queue
//! drops the record and counts it (`switchboard_cdr_dropped_total`); nothing here runs on a
//! media core or waits on the media path.

pub mod http;
pub mod metrics;
pub mod store;

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam::channel::{self, TrySendError};
use serde_json::{Map, Value, json};
use tracing::{info, warn};

pub use self::metrics::CdrMetrics;
use self::store::{JsonLines, Row, Store};
use crate::control::Hub;
use crate::record::datetime;

/// The database file's name in the state directory.
pub const DB_FILE: &str = "cdr.sqlite";
/// The JSON-lines directory's name in the state directory.
pub const JSONL_DIR: &str = "cdr";
/// Live calls the collector remembers; the oldest is forgotten past this.
pub const MAX_PENDING: usize = 200_000;
/// How long a `call.deleted` waits for its `call.ended` before a minimal record is written
/// (longer than the control plane waits for a worker's final statistics).
pub const DELETED_GRACE: Duration = Duration::from_secs(3);
/// Records queued to the writer before new ones are dropped.
pub const WRITE_QUEUE: usize = 16 * 1024;
/// Legs kept per record.
const MAX_LEGS: usize = 32;
/// Recording ids kept per call.
const MAX_RECORDINGS: usize = 32;
/// Longest text kept from an event field.
const MAX_TEXT: usize = 256;
/// How long an ended call is remembered, so a late `call.deleted` makes no second record.
const DONE_MEMORY_MS: u64 = 60_000;

/// Where records go and how long they are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CdrConfig {
    /// The SQLite database.
    pub db_path: PathBuf,
    /// The JSON-lines directory.
    pub jsonl_dir: PathBuf,
    /// A JSON-lines file is closed and a new one started past this size.
    pub max_file_bytes: u64,
    /// Records (rows and files) older than this many days are deleted; 0 keeps everything.
    pub retention_days: u32,
}

impl CdrConfig {
    /// The defaults inside a state directory: `cdr.sqlite` and `cdr/`, 64 MiB files, kept.
    #[must_use]
    pub fn in_state_dir(dir: &Path) -> Self {
        Self {
            db_path: dir.join(DB_FILE),
            jsonl_dir: dir.join(JSONL_DIR),
            max_file_bytes: 64 << 20,
            retention_days: 0,
        }
    }
}

/// Wall-clock time, Unix milliseconds.
#[must_use]
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One call's detail record.
#[derive(Debug, Clone, PartialEq)]
pub struct Cdr {
    /// NG call-id.
    pub call: String,
    /// Start (call created), Unix ms, when known.
    pub start_ms: Option<u64>,
    /// Answer, Unix ms, when known.
    pub answer_ms: Option<u64>,
    /// End, Unix ms.
    pub end_ms: u64,
    /// Why it ended (`hangup`, `timeout`, `deleted`, …).
    pub reason: String,
    /// Per-leg figures, each an object with `leg`, `tag`, `codec`, `local`, `remote`,
    /// `packets`, `bytes`, `lost`, `jitter_ms`, `mos` (absent fields are `null`).
    pub legs: Vec<Value>,
    /// Recording ids.
    pub recordings: Vec<String>,
    /// ACD queue of the call's voice task.
    pub queue: Option<Value>,
    /// ACD agent the call was assigned to.
    pub agent: Option<Value>,
    /// ACD task.
    pub task: Option<Value>,
    /// When the ACD assigned the task, Unix ms.
    pub assigned_ms: Option<u64>,
    /// Conversation analytics summary (the `analytics` object of `call.ended`, see
    /// `docs/fork.md`), when analytics ran on the call.
    pub analytics: Option<Value>,
    /// `call.ended` (complete) or `call.deleted` (minimal: no per-leg figures unless a media
    /// timeout left some).
    pub source: &'static str,
}

fn iso(ms: Option<u64>) -> Value {
    ms.map_or(Value::Null, |m| {
        Value::from(datetime::format_micros(m.saturating_mul(1000)))
    })
}

fn id_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl Cdr {
    /// Duration from start (or answer, or end when neither is known) to end, ms.
    #[must_use]
    pub fn duration_ms(&self) -> u64 {
        self.end_ms
            .saturating_sub(self.start_ms.or(self.answer_ms).unwrap_or(self.end_ms))
    }

    /// The record as JSON (the `/cdrs` and JSON-lines form, without the store's `id`).
    #[must_use]
    pub fn to_json(&self) -> Value {
        json!({
            "call": self.call,
            "start": iso(self.start_ms), "start_ms": self.start_ms,
            "answer": iso(self.answer_ms), "answer_ms": self.answer_ms,
            "end": iso(Some(self.end_ms)), "end_ms": self.end_ms,
            "duration_ms": self.duration_ms(),
            "talk_ms": self.answer_ms.map(|a| self.end_ms.saturating_sub(a)),
            "reason": self.reason,
            "legs": self.legs,
            "recordings": self.recordings,
            "queue": self.queue, "agent": self.agent, "task": self.task,
            "assigned": iso(self.assigned_ms), "assigned_ms": self.assigned_ms,
            "analytics": self.analytics,
            "source": self.source,
        })
    }

    /// The indexed columns.
    #[must_use]
    pub fn row(&self) -> Row {
        Row {
            call: self.call.clone(),
            start_ms: self.start_ms.unwrap_or(self.end_ms),
            end_ms: self.end_ms,
            queue: id_text(self.queue.as_ref()),
            agent: id_text(self.agent.as_ref()),
            reason: self.reason.clone(),
        }
    }

    /// Feeds the quality histograms and the ended-calls counters.
    pub fn observe(&self, m: &CdrMetrics) {
        m.count_ended(&self.reason);
        m.duration.observe(self.duration_ms() as f64 / 1000.0);
        for leg in &self.legs {
            if let Some(mos) = leg["mos"].as_f64() {
                m.mos.observe(mos);
            }
            let packets = leg["packets"].as_f64().unwrap_or(0.0);
            if packets > 0.0 {
                if let Some(j) = leg["jitter_ms"].as_f64() {
                    m.jitter.observe(j / 1000.0);
                }
                let lost = leg["lost"].as_f64().unwrap_or(0.0).max(0.0);
                m.loss.observe(lost / (packets + lost));
            }
        }
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.chars().take(MAX_TEXT).collect()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn num(v: &Value) -> Value {
    if v.is_number() {
        v.clone()
    } else {
        Value::Null
    }
}

/// Longest analytics object kept, as JSON text.
const MAX_ANALYTICS: usize = 8 * 1024;

/// The `analytics` object of a `call.ended` event, when it is an object of bounded size.
fn analytics_from_ended(v: &Value) -> Option<Value> {
    (v.is_object() && v.to_string().len() <= MAX_ANALYTICS).then(|| v.clone())
}

/// One leg from a `call.ended` leg object (known fields only, checked types).
fn leg_from_ended(v: &Value) -> Value {
    let t = |k: &str| text(&v[k]).map_or(Value::Null, Value::from);
    json!({
        "leg": t("leg"), "tag": t("tag"), "codec": t("codec"),
        "local": t("local"), "remote": t("remote"),
        "packets": num(&v["packets"]), "bytes": num(&v["bytes"]), "lost": num(&v["lost"]),
        "jitter_ms": num(&v["jitter_ms"]), "mos": num(&v["mos"]),
    })
}

/// One leg from the worker statistics a `media.timeout` carries.
fn leg_from_stats(v: &Value) -> Value {
    let t = |k: &str| text(&v[k]).map_or(Value::Null, Value::from);
    json!({
        "leg": t("key"), "tag": Value::Null, "codec": Value::Null,
        "local": t("local_rtp"), "remote": t("remote_rtp"),
        "packets": num(&v["rtp"]["packets"]), "bytes": num(&v["rtp"]["bytes"]),
        "lost": num(&v["lost"]), "jitter_ms": num(&v["jitter_ms"]), "mos": num(&v["mos"]),
    })
}

/// What the collector knows of a live call.
#[derive(Debug, Default, Clone)]
struct Pending {
    created_ms: Option<u64>,
    recordings: Vec<String>,
    queue: Option<Value>,
    agent: Option<Value>,
    task: Option<Value>,
    assigned_ms: Option<u64>,
    timeout_legs: Option<Vec<Value>>,
    reason: Option<String>,
    /// Set by `call.deleted`: a minimal record is due at this time unless `call.ended` comes.
    due_ms: Option<u64>,
}

/// Turns the event stream into records. Pure: time comes in with each call, so it is tested
/// without a hub.
#[derive(Debug, Default)]
pub struct Collector {
    pending: HashMap<String, Pending>,
    /// Insertion order of `pending`, for the bound (entries may be stale).
    order: VecDeque<String>,
    /// Calls whose record was made, with when, so late events make no second record.
    done: HashMap<String, u64>,
    done_order: VecDeque<(u64, String)>,
    /// Deleted calls waiting for their `call.ended`, by when their minimal record is due
    /// (in arrival order, so due times ascend).
    due: VecDeque<(u64, String)>,
}

impl Collector {
    fn entry(&mut self, call: &str) -> &mut Pending {
        if !self.pending.contains_key(call) {
            while self.pending.len() >= MAX_PENDING {
                let Some(old) = self.order.pop_front() else {
                    break;
                };
                self.pending.remove(&old);
            }
            self.order.push_back(call.to_owned());
        }
        self.pending.entry(call.to_owned()).or_default()
    }

    fn finish(&mut self, call: &str, now_ms: u64) {
        self.pending.remove(call);
        if self.order.len() > 2 * self.pending.len() + 1024 {
            let pending = &self.pending;
            self.order.retain(|c| pending.contains_key(c));
        }
        self.done.insert(call.to_owned(), now_ms);
        self.done_order.push_back((now_ms, call.to_owned()));
        while self.done.len() > MAX_PENDING {
            if let Some((_, c)) = self.done_order.pop_front() {
                self.done.remove(&c);
            } else {
                break;
            }
        }
    }

    /// Calls remembered now (for tests and limits).
    #[must_use]
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Handles one event received at `now_ms`; returns the records it completes.
    pub fn on_event(&mut self, ev: &Value, now_ms: u64) -> Vec<Cdr> {
        let name = ev["event"].as_str().unwrap_or("");
        let call = ev["call"]
            .as_str()
            .map(|c| c.chars().take(MAX_TEXT).collect::<String>());
        match (name, call) {
            ("call.created", Some(call)) => {
                if self.done.remove(&call).is_some() {
                    // A call-id used again: a new call.
                    self.pending.remove(&call);
                }
                let p = self.entry(&call);
                *p = Pending {
                    created_ms: Some(now_ms),
                    ..Pending::default()
                };
                Vec::new()
            }
            ("task.offered" | "task.assigned", Some(call)) => {
                if self.done.contains_key(&call) {
                    return Vec::new();
                }
                let p = self.entry(&call);
                p.queue = ev.get("queue").filter(|v| !v.is_null()).cloned();
                p.task = ev.get("task").filter(|v| !v.is_null()).cloned();
                if name == "task.assigned" {
                    p.agent = ev.get("agent").filter(|v| !v.is_null()).cloned();
                    p.assigned_ms = Some(ev["at"].as_u64().unwrap_or(now_ms));
                }
                Vec::new()
            }
            ("recording.started", Some(call)) => {
                if let Some(id) = ev["recording"].as_str() {
                    let p = self.entry(&call);
                    if p.recordings.len() < MAX_RECORDINGS && !p.recordings.iter().any(|r| r == id)
                    {
                        p.recordings.push(id.chars().take(MAX_TEXT).collect());
                    }
                }
                Vec::new()
            }
            ("media.timeout", Some(call)) => {
                let p = self.entry(&call);
                p.reason = Some("timeout".into());
                p.timeout_legs = ev["stats"]["legs"]
                    .as_array()
                    .map(|legs| legs.iter().take(MAX_LEGS).map(leg_from_stats).collect());
                Vec::new()
            }
            ("call.ended", Some(call)) => {
                let p = self.pending.get(&call).cloned().unwrap_or_default();
                let ms = |k: &str| ev[k].as_u64();
                let mut recordings = p.recordings;
                for r in ev["recordings"].as_array().into_iter().flatten() {
                    let id = match r {
                        Value::String(s) => Some(s.as_str()),
                        other => other["recording"].as_str(),
                    };
                    if let Some(id) = id {
                        if recordings.len() < MAX_RECORDINGS && !recordings.iter().any(|x| x == id)
                        {
                            recordings.push(id.chars().take(MAX_TEXT).collect());
                        }
                    }
                }
                let legs = match ev["legs"].as_array() {
                    Some(legs) => legs.iter().take(MAX_LEGS).map(leg_from_ended).collect(),
                    None => p.timeout_legs.unwrap_or_default(),
                };
                let cdr = Cdr {
                    call: call.clone(),
                    start_ms: ms("created_ms").or(p.created_ms),
                    answer_ms: ms("answered_ms"),
                    end_ms: ms("ended_ms").unwrap_or(now_ms),
                    reason: ev["reason"]
                        .as_str()
                        .map(|r| r.chars().take(64).collect())
                        .or(p.reason)
                        .unwrap_or_else(|| "hangup".into()),
                    legs,
                    recordings,
                    queue: p.queue,
                    agent: p.agent,
                    task: p.task,
                    assigned_ms: p.assigned_ms,
                    analytics: analytics_from_ended(&ev["analytics"]),
                    source: "call.ended",
                };
                self.finish(&call, now_ms);
                vec![cdr]
            }
            ("call.deleted", Some(call)) => {
                if !self.done.contains_key(&call) {
                    let due = now_ms + DELETED_GRACE.as_millis() as u64;
                    let p = self.entry(&call);
                    if p.due_ms.is_none() {
                        p.due_ms = Some(due);
                        self.due.push_back((due, call));
                    }
                }
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    /// Makes the minimal records of deleted calls whose grace has passed, and forgets old
    /// finished calls.
    pub fn on_tick(&mut self, now_ms: u64) -> Vec<Cdr> {
        let mut due = Vec::new();
        while self.due.front().is_some_and(|(at, _)| *at <= now_ms) {
            if let Some((at, call)) = self.due.pop_front() {
                // Still waiting (not ended meanwhile, not a new call under the same id).
                if self
                    .pending
                    .get(&call)
                    .is_some_and(|p| p.due_ms == Some(at))
                {
                    due.push(call);
                }
            }
        }
        let mut out = Vec::with_capacity(due.len());
        for call in due {
            let Some(p) = self.pending.get(&call).cloned() else {
                continue;
            };
            let end = p.due_ms.map_or(now_ms, |d| {
                d.saturating_sub(DELETED_GRACE.as_millis() as u64)
            });
            out.push(Cdr {
                call: call.clone(),
                start_ms: p.created_ms,
                answer_ms: None,
                end_ms: end,
                reason: p.reason.unwrap_or_else(|| "deleted".into()),
                legs: p.timeout_legs.unwrap_or_default(),
                recordings: p.recordings,
                queue: p.queue,
                agent: p.agent,
                task: p.task,
                assigned_ms: p.assigned_ms,
                analytics: None,
                source: "call.deleted",
            });
            self.finish(&call, now_ms);
        }
        while let Some((at, _)) = self.done_order.front() {
            if now_ms.saturating_sub(*at) < DONE_MEMORY_MS {
                break;
            }
            if let Some((at, c)) = self.done_order.pop_front() {
                if self.done.get(&c) == Some(&at) {
                    self.done.remove(&c);
                }
            }
        }
        out
    }
}

/// The running record service: the collector task and the writer thread.
#[derive(Debug)]
pub struct CdrService {
    config: CdrConfig,
    writer: Option<JoinHandle<()>>,
    collector: Option<tokio::task::JoinHandle<()>>,
    progress: Arc<Progress>,
}

/// How far the collector got, for [`CdrService::settle`].
#[derive(Debug, Default)]
struct Progress {
    /// Events handled.
    handled: std::sync::atomic::AtomicU64,
    /// Whether its queue was empty after the last event.
    caught_up: std::sync::atomic::AtomicBool,
}

/// What HTTP needs to list records.
#[derive(Debug, Clone)]
pub struct CdrReader {
    /// The database.
    pub db_path: Arc<PathBuf>,
}

impl CdrService {
    /// Opens the store and the JSON-lines directory, starts the writer thread and, on the
    /// current `tokio` runtime, the collector task.
    ///
    /// # Errors
    /// When the database or the directory cannot be opened, or the thread cannot start.
    pub fn start(config: CdrConfig, hub: &Hub) -> anyhow::Result<CdrService> {
        use anyhow::Context as _;
        let store = Store::open(&config.db_path).with_context(|| {
            format!("opening the call record store {}", config.db_path.display())
        })?;
        let jsonl = JsonLines::new(
            config.jsonl_dir.clone(),
            config.max_file_bytes,
            config.retention_days,
        )
        .with_context(|| {
            format!(
                "creating the call record directory {}",
                config.jsonl_dir.display()
            )
        })?;
        let (tx, rx) = channel::bounded(WRITE_QUEUE);
        let publish_hub = hub.clone();
        let metrics = hub.metrics().control.clone();
        let retention = config.retention_days;
        let writer = std::thread::Builder::new()
            .name("sb-cdr".into())
            .spawn(move || {
                write_loop(&rx, store, jsonl, retention, &metrics.cdr, &|ev| {
                    publish_hub.publish(ev)
                });
            })
            .context("starting the call record thread")?;
        let progress = Arc::new(Progress::default());
        let collector = tokio::spawn(collect(hub.clone(), tx, progress.clone()));
        info!(db = %config.db_path.display(), dir = %config.jsonl_dir.display(), "call records ready");
        Ok(CdrService {
            config,
            writer: Some(writer),
            collector: Some(collector),
            progress,
        })
    }

    /// A reader for HTTP.
    #[must_use]
    pub fn reader(&self) -> CdrReader {
        CdrReader {
            db_path: Arc::new(self.config.db_path.clone()),
        }
    }

    /// Waits (at most a second) until the collector has handled the events published so far,
    /// e.g. the `call.ended` of every call ended at shutdown.
    pub async fn settle(&self) {
        use std::sync::atomic::Ordering;
        let until = tokio::time::Instant::now() + Duration::from_secs(1);
        loop {
            let before = self.progress.handled.load(Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(50)).await;
            let quiet = self.progress.handled.load(Ordering::Relaxed) == before
                && self.progress.caught_up.load(Ordering::Relaxed);
            if quiet || tokio::time::Instant::now() >= until {
                return;
            }
        }
    }

    /// Stops collecting and waits for the writer to commit what is queued. Call it outside
    /// the control runtime's threads (it blocks).
    pub fn shutdown(mut self) {
        if let Some(c) = self.collector.take() {
            c.abort();
        }
        if let Some(w) = self.writer.take() {
            // The writer ends when the collector's sender is gone (task aborted or runtime
            // stopped).
            if w.join().is_err() {
                warn!("call record thread panicked");
            }
        }
    }
}

/// Follows the hub's events; hands finished records to the writer.
async fn collect(hub: Hub, tx: channel::Sender<Cdr>, progress: Arc<Progress>) {
    use tokio::sync::broadcast::error::RecvError;
    let mut rx = hub.subscribe();
    let mut c = Collector::default();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let metrics = hub.metrics().control.clone();
    loop {
        let cdrs = tokio::select! {
            ev = rx.recv() => match ev {
                Ok(ev) => c.on_event(&ev, wall_ms()),
                Err(RecvError::Lagged(n)) => {
                    warn!(missed = n, "call record collector lagged: some records may be incomplete");
                    metrics.cdr.events_missed.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                    Vec::new()
                }
                Err(RecvError::Closed) => return,
            },
            _ = tick.tick() => c.on_tick(wall_ms()),
        };
        progress
            .handled
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        progress
            .caught_up
            .store(rx.is_empty(), std::sync::atomic::Ordering::Relaxed);
        for cdr in cdrs {
            cdr.observe(&metrics.cdr);
            match tx.try_send(cdr) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    metrics
                        .cdr
                        .dropped
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Err(TrySendError::Disconnected(_)) => return,
            }
        }
    }
}

/// Records per transaction at most.
const BATCH: usize = 512;

/// The writer thread: batches into one transaction, then JSON lines, then `cdr` events.
fn write_loop(
    rx: &channel::Receiver<Cdr>,
    mut store: Store,
    mut jsonl: JsonLines,
    retention_days: u32,
    m: &CdrMetrics,
    publish: &dyn Fn(Value),
) {
    use std::sync::atomic::Ordering;
    let mut next_expiry = 0u64;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        let now = wall_ms();
        if retention_days > 0 && now >= next_expiry {
            let before = now.saturating_sub(u64::from(retention_days) * 86_400_000);
            if let Err(e) = store.expire(before) {
                warn!(error = %e, "expiring old call records failed");
            }
            next_expiry = now + 3_600_000;
        }
        let docs: Vec<Value> = batch.iter().map(Cdr::to_json).collect();
        let rows: Vec<(Row, String)> = batch
            .iter()
            .zip(&docs)
            .map(|(c, d)| (c.row(), d.to_string()))
            .collect();
        let ids = match store.insert(&rows) {
            Ok(ids) => ids.into_iter().map(Some).collect(),
            Err(e) => {
                warn!(error = %e, records = rows.len(), "writing call records to SQLite failed");
                m.errors.fetch_add(1, Ordering::Relaxed);
                vec![None; rows.len()]
            }
        };
        let docs: Vec<Value> = docs
            .into_iter()
            .zip(ids)
            .map(|(mut d, id)| {
                if let (Value::Object(o), Some(id)) = (&mut d, id) {
                    o.insert("id".into(), id.into());
                }
                d
            })
            .collect();
        let lines: Vec<String> = docs.iter().map(Value::to_string).collect();
        if let Err(e) = jsonl.append(now, &lines) {
            warn!(error = %e, "writing call records to the JSON-lines file failed");
            m.errors.fetch_add(1, Ordering::Relaxed);
        }
        m.written.fetch_add(batch.len() as u64, Ordering::Relaxed);
        for d in docs {
            let mut ev = Map::new();
            ev.insert("event".into(), "cdr".into());
            if let Value::Object(o) = d {
                ev.extend(o);
            }
            publish(Value::Object(ev));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(v: Value) -> Value {
        v
    }

    #[test]
    fn call_ended_analytics_are_kept_when_bounded() {
        let mut c = Collector::default();
        let a = json!({"duration_ms": 1000, "silence_ms": 200, "parties": []});
        let out = c.on_event(
            &json!({"event": "call.ended", "call": "a1", "ended_ms": 5_000, "analytics": a}),
            5_001,
        );
        assert_eq!(out[0].analytics, Some(a.clone()));
        assert_eq!(out[0].to_json()["analytics"], a);
        let big = json!({"x": "y".repeat(MAX_ANALYTICS)});
        for junk in [json!("text"), json!([1, 2]), big] {
            let out = c.on_event(
                &json!({"event": "call.ended", "call": "a2", "ended_ms": 5_000,
                    "analytics": junk}),
                6_000,
            );
            assert_eq!(out[0].analytics, None);
            assert!(out[0].to_json()["analytics"].is_null());
            c = Collector::default();
        }
    }

    #[test]
    fn call_ended_makes_a_full_record_with_acd_and_recordings() {
        let mut c = Collector::default();
        assert!(
            c.on_event(&ev(json!({"event": "call.created", "call": "c1"})), 1_000)
                .is_empty()
        );
        c.on_event(
            &json!({"event": "task.offered", "task": 9, "queue": 5, "agent": 30, "call": "c1"}),
            1_100,
        );
        c.on_event(
            &json!({"event": "task.assigned", "task": 9, "queue": 5, "agent": 30, "call": "c1",
                "at": 1_200}),
            1_250,
        );
        c.on_event(
            &json!({"event": "recording.started", "recording": "r1", "call": "c1"}),
            1_300,
        );
        c.on_event(
            &json!({"event": "task.assigned", "task": 1, "agent": 2}),
            1_300,
        );
        let out = c.on_event(
            &json!({"event": "call.ended", "call": "c1", "reason": "hangup",
                "created_ms": 900, "answered_ms": 1_150, "ended_ms": 5_000,
                "legs": [{"leg": "a", "tag": "cust", "codec": "PCMU", "local": "127.0.0.1:30000",
                          "remote": "127.0.0.1:4000", "packets": 200, "bytes": 34_400,
                          "lost": 2, "jitter_ms": 3.5, "mos": 4.3, "evil": "x"},
                         {"leg": 7, "packets": "many"}],
                "recordings": ["r1", "r2", {"recording": "r3"}]}),
            5_001,
        );
        assert_eq!(out.len(), 1);
        let r = &out[0];
        assert_eq!(r.start_ms, Some(900));
        assert_eq!(r.answer_ms, Some(1_150));
        assert_eq!(r.duration_ms(), 4_100);
        assert_eq!(r.recordings, ["r1", "r2", "r3"]);
        assert_eq!(r.queue, Some(json!(5)));
        assert_eq!(r.agent, Some(json!(30)));
        assert_eq!(r.assigned_ms, Some(1_200));
        let j = r.to_json();
        assert_eq!(j["legs"][0]["mos"], 4.3);
        assert_eq!(j["legs"][0]["codec"], "PCMU");
        assert!(j["legs"][0].get("evil").is_none());
        assert_eq!(j["legs"][1]["leg"], "7");
        assert!(j["legs"][1]["packets"].is_null());
        assert_eq!(j["talk_ms"], 3_850);
        assert_eq!(j["start"], "1970-01-01T00:00:00.900Z");
        let row = r.row();
        assert_eq!(
            (row.queue.as_deref(), row.agent.as_deref()),
            (Some("5"), Some("30"))
        );
        // The call.deleted that follows makes no second record.
        assert!(
            c.on_event(&json!({"event": "call.deleted", "call": "c1"}), 5_002)
                .is_empty()
        );
        assert!(c.on_tick(10_000).is_empty());
        assert_eq!(c.pending(), 0);
        let m = CdrMetrics::default();
        r.observe(&m);
        assert_eq!(m.mos.count(), 1);
        assert_eq!(m.loss.count(), 1);
    }

    #[test]
    fn call_deleted_alone_makes_a_minimal_record_after_the_grace() {
        let mut c = Collector::default();
        c.on_event(&json!({"event": "call.created", "call": "d"}), 1_000);
        c.on_event(
            &json!({"event": "media.timeout", "call": "d", "stats": {"legs": [
                {"key": 30000, "local_rtp": "127.0.0.1:30000", "remote_rtp": null,
                 "rtp": {"packets": 10, "bytes": 1720}, "lost": 0, "jitter_ms": 1.0,
                 "mos": null}]}}),
            2_000,
        );
        assert!(
            c.on_event(&json!({"event": "call.deleted", "call": "d"}), 2_001)
                .is_empty()
        );
        assert!(c.on_tick(2_500).is_empty());
        let out = c.on_tick(2_001 + DELETED_GRACE.as_millis() as u64);
        assert_eq!(out.len(), 1);
        let r = &out[0];
        assert_eq!(r.source, "call.deleted");
        assert_eq!(r.reason, "timeout");
        assert_eq!(r.end_ms, 2_001);
        assert_eq!(r.start_ms, Some(1_000));
        assert_eq!(r.legs[0]["packets"], 10);
        assert_eq!(r.legs[0]["leg"], "30000");
        // A late call.ended within the memory makes no second record... unless it is the
        // real one arriving after the grace: it is ignored only if the call was forgotten.
        assert!(c.on_tick(100_000).is_empty());
    }

    #[test]
    fn bounded_and_tolerant() {
        let mut c = Collector::default();
        for bad in [
            json!(null),
            json!({"event": 5}),
            json!({"event": "call.ended"}),
            json!({"event": "call.ended", "call": 7}),
            json!({"event": "recording.started", "call": "x"}),
        ] {
            assert!(c.on_event(&bad, 1).is_empty());
        }
        let out = c.on_event(&json!({"event": "call.ended", "call": "bare"}), 42);
        assert_eq!(out[0].end_ms, 42);
        assert_eq!(out[0].reason, "hangup");
        assert_eq!(out[0].duration_ms(), 0);
        let long = "x".repeat(10_000);
        c.on_event(&json!({"event": "call.created", "call": long}), 1);
        assert!(c.pending.keys().all(|k| k.len() <= MAX_TEXT));
    }

    #[test]
    fn the_writer_commits_appends_and_announces() {
        let d = std::env::temp_dir().join(format!("sb-cdr-writer-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let cfg = CdrConfig::in_state_dir(&d);
        let store = Store::open(&cfg.db_path).unwrap();
        let jsonl = JsonLines::new(cfg.jsonl_dir.clone(), cfg.max_file_bytes, 0).unwrap();
        let (tx, rx) = channel::bounded(4);
        let mut c = Collector::default();
        let cdr = c
            .on_event(
                &json!({"event": "call.ended", "call": "w1", "ended_ms": 10}),
                10,
            )
            .remove(0);
        tx.send(cdr).unwrap();
        drop(tx);
        let seen = std::sync::Mutex::new(Vec::new());
        let m = CdrMetrics::default();
        write_loop(&rx, store, jsonl, 0, &m, &|ev| {
            seen.lock().unwrap().push(ev)
        });
        let seen = seen.into_inner().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0]["event"], "cdr");
        assert_eq!(seen[0]["call"], "w1");
        assert_eq!(seen[0]["id"], 1);
        let (rows, _) = store::list(
            &cfg.db_path,
            &store::ListQuery {
                limit: 10,
                ..store::ListQuery::default()
            },
        )
        .unwrap();
        assert_eq!(rows[0]["call"], "w1");
        let files: Vec<_> = std::fs::read_dir(&cfg.jsonl_dir).unwrap().collect();
        assert_eq!(files.len(), 1);
        let _ = std::fs::remove_dir_all(&d);
    }
}
