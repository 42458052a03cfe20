//! The live dashboard: one page at `/` (HTML, CSS and JavaScript compiled into the binary; no
//! external asset, so it works offline) fed by a snapshot the engine computes once a second.
//!
//! * `GET /` and `GET /dashboard/{app.js,style.css}`: the page; public, it holds no data.
//! * `GET /dashboard/events`: server-sent events, one `snapshot` event per second with the
//!   JSON below; behind the HTTP bearer token like every data path. The page reads its
//!   stream with `fetch`, so it sends the token as an `Authorization` header (it takes the
//!   token from the address's fragment, `/#token=…`, which browsers never send to the
//!   server, and keeps it in the tab's session storage).
//! * `GET /dashboard/snapshot`: the latest snapshot as one JSON document (same token).
//!
//! One sampler task builds the snapshot and shares it through a `watch` channel, so a
//! thousand viewers cost one computation; each viewer only copies the shared text. What it
//! reads is cheap whatever the number of calls: worker counters (atomics), the ACD's
//! published queue figures (atomics) plus one `queue.list`, one `stats` request, the call list
//! every second ([`LIST_EVERY`] seconds past [`LIST_EVERY_BELOW`] calls), and the statistics of at most [`SAMPLE_PER_TICK`] calls per
//! second, round robin. Call quality (distribution and worst calls) is therefore a rolling
//! sample: every live call is visited once per `calls / SAMPLE_PER_TICK` seconds.
//!
//! Snapshot:
//! `{"at", "engine": {"calls", "legs", "workers": [{"index", "load"}], "rx_pps",
//! "relayed_pps", "drops", "drops_per_s"}, "queues": [{"queue", "name", "waiting", "offered",
//! "longest_wait_ms", "service_level", "sl_threshold_ms", "abandon_rate", "asa_ms",
//! "answered", "abandoned", "agents": {"idle", "reserved", "busy", "wrap_up", "available",
//! "away", "offline"}}], "agents": {…}, "tasks_live", "calls": {"active", "sampled",
//! "quality": {"good", "fair", "poor", "bad", "no_media"}, "worst": [{"call", "mos",
//! "loss", "jitter_ms", "packets"}]}, "recordings": {"active", "today", "bytes"}}`.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Extension;
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::control::Hub;

/// Calls whose statistics are fetched per second.
pub const SAMPLE_PER_TICK: usize = 24;
/// The call list is refreshed every this many seconds.
pub const LIST_EVERY: u64 = 5;
/// Below this many calls the call list is refreshed every second.
pub const LIST_EVERY_BELOW: usize = 1000;
/// Worst calls shown.
pub const WORST: usize = 10;
/// Live streams served at once; more are refused with 503.
pub const MAX_VIEWERS: u64 = 256;
/// Calls the sampler tracks at most.
const MAX_TRACKED: usize = 100_000;
/// Queues with a name and threshold looked up (the ACD exports the first 256 anyway).
const MAX_QUEUES: usize = 256;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'";

/// The shared snapshot and its viewers.
#[derive(Debug, Clone)]
pub struct Dashboard {
    tx: Arc<watch::Sender<Arc<str>>>,
}

impl Dashboard {
    /// Starts the sampler on the current `tokio` runtime.
    #[must_use]
    pub fn start(hub: &Hub) -> Dashboard {
        let (tx, _) = watch::channel(Arc::<str>::from("{}"));
        let tx = Arc::new(tx);
        tokio::spawn(sample_loop(hub.clone(), tx.clone()));
        Dashboard { tx }
    }

    /// The latest snapshot (JSON text).
    #[must_use]
    pub fn latest(&self) -> Arc<str> {
        self.tx.borrow().clone()
    }
}

/// The page and its assets (public).
pub fn page_routes() -> Router<Hub> {
    Router::new()
        .route("/", get(|| asset("text/html; charset=utf-8", INDEX_HTML)))
        .route(
            "/dashboard/app.js",
            get(|| asset("text/javascript; charset=utf-8", APP_JS)),
        )
        .route(
            "/dashboard/style.css",
            get(|| asset("text/css; charset=utf-8", STYLE_CSS)),
        )
}

/// The data paths (behind the token).
pub fn data_routes() -> Router<Hub> {
    Router::new()
        .route("/dashboard/events", get(events))
        .route("/dashboard/snapshot", get(snapshot))
}

async fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "the dashboard is not running\n",
    )
        .into_response()
}

async fn snapshot(d: Option<Extension<Dashboard>>) -> Response {
    let Some(Extension(d)) = d else {
        return unavailable();
    };
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        d.latest().to_string(),
    )
        .into_response()
}

/// Counts a connected viewer for as long as its stream lives.
struct Viewer(Hub);

impl Drop for Viewer {
    fn drop(&mut self) {
        self.0
            .metrics()
            .control
            .cdr
            .viewers
            .fetch_sub(1, Ordering::Relaxed);
    }
}

async fn events(
    axum::extract::State(hub): axum::extract::State<Hub>,
    d: Option<Extension<Dashboard>>,
) -> Response {
    let Some(Extension(d)) = d else {
        return unavailable();
    };
    let viewers = &hub.metrics().control.cdr.viewers;
    if viewers.fetch_add(1, Ordering::Relaxed) >= MAX_VIEWERS {
        viewers.fetch_sub(1, Ordering::Relaxed);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many dashboard viewers\n",
        )
            .into_response();
    }
    let guard = Viewer(hub.clone());
    let rx = d.tx.subscribe();
    let stream = futures_util::stream::unfold((rx, guard, true), |(mut rx, g, first)| async move {
        if !first && rx.changed().await.is_err() {
            return None;
        }
        let data = rx.borrow_and_update().clone();
        let ev = Event::default().event("snapshot").data(&*data);
        Some((Ok::<_, Infallible>(ev), (rx, g, false)))
    });
    (
        [(header::CACHE_CONTROL, "no-store")],
        Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))),
    )
        .into_response()
}

/// One call's quality as last sampled.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Quality {
    mos: Option<f64>,
    loss: f64,
    jitter_ms: f64,
    packets: u64,
}

impl Quality {
    /// The worst leg of a `call.get` answer.
    fn of(call: &Value) -> Quality {
        let mut q = Quality {
            mos: None,
            loss: 0.0,
            jitter_ms: 0.0,
            packets: 0,
        };
        for leg in call["stats"]["legs"].as_array().into_iter().flatten() {
            let packets = leg["rtp"]["packets"].as_u64().unwrap_or(0);
            q.packets += packets;
            if let Some(m) = leg["mos"].as_f64() {
                q.mos = Some(q.mos.map_or(m, |x: f64| x.min(m)));
            }
            let lost = leg["lost"].as_f64().unwrap_or(0.0).max(0.0);
            if packets > 0 {
                q.loss = q.loss.max(lost / (packets as f64 + lost));
                q.jitter_ms = q.jitter_ms.max(leg["jitter_ms"].as_f64().unwrap_or(0.0));
            }
        }
        q
    }

    fn class(&self) -> &'static str {
        if self.packets == 0 {
            return "no_media";
        }
        match self.mos {
            Some(m) if m >= 4.0 => "good",
            Some(m) if m >= 3.6 => "fair",
            Some(m) if m >= 3.1 => "poor",
            Some(_) => "bad",
            None if self.loss < 0.01 => "good",
            None if self.loss < 0.03 => "fair",
            None if self.loss < 0.1 => "poor",
            None => "bad",
        }
    }

    /// Sort key: lower is worse.
    fn score(&self) -> f64 {
        self.mos.unwrap_or(4.5) - self.loss * 10.0
    }
}

/// Engine counters at one tick, for rates over the next.
struct Counters {
    at: Instant,
    /// Busy and loop nanoseconds per worker.
    per_worker: Vec<(u64, u64)>,
    rx: u64,
    relayed: u64,
    drops: u64,
}

/// The state the sampler keeps between ticks.
#[derive(Default)]
struct Sampler {
    prev: Option<Counters>,
    calls: Vec<String>,
    cursor: usize,
    quality: HashMap<String, Quality>,
    ticks: u64,
    names: HashMap<u64, (Value, Value)>,
    today: (i64, u64),
}

async fn sample_loop(hub: Hub, tx: Arc<watch::Sender<Arc<str>>>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut s = Sampler::default();
    loop {
        tick.tick().await;
        let snap = s.sample(&hub).await;
        tx.send_replace(Arc::from(snap.to_string()));
    }
}

fn day_start_us(now_ms: u64) -> (i64, u64) {
    let day = now_ms / 86_400_000;
    (i64::try_from(day).unwrap_or(0), day * 86_400_000 * 1000)
}

/// Recordings started since `since_us`, from the recordings index (read-only).
fn recordings_since(index: &std::path::Path, since_us: u64) -> Option<u64> {
    let conn = rusqlite::Connection::open_with_flags(
        index,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .ok()?;
    conn.busy_timeout(Duration::from_secs(1)).ok()?;
    conn.query_row(
        "SELECT count(*) FROM recordings WHERE start_us >= ?1",
        [i64::try_from(since_us).unwrap_or(i64::MAX)],
        |r| r.get::<_, i64>(0),
    )
    .ok()
    .and_then(|n| u64::try_from(n).ok())
}

impl Sampler {
    async fn sample(&mut self, hub: &Hub) -> Value {
        self.ticks += 1;
        let now = Instant::now();
        let at = crate::cdr::wall_ms();
        let m = hub.metrics();
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);

        // Engine: per-worker load and rates since the previous tick.
        let per_worker: Vec<(u64, u64)> = m
            .workers
            .iter()
            .map(|w| (load(&w.busy_ns), load(&w.loop_ns)))
            .collect();
        let rx: u64 = m.workers.iter().map(|w| load(&w.rx_packets)).sum();
        let relayed: u64 = m.workers.iter().map(|w| load(&w.tx_packets)).sum();
        let drops: u64 = m
            .workers
            .iter()
            .map(|w| w.drops.iter().map(load).sum::<u64>())
            .sum();
        let (workers, rx_pps, relayed_pps, drops_ps) = match &self.prev {
            Some(p) => {
                let dt = now.duration_since(p.at).as_secs_f64().max(1e-3);
                let workers: Vec<Value> = m
                    .workers
                    .iter()
                    .zip(per_worker.iter())
                    .enumerate()
                    .map(|(i, (w, (b, l)))| {
                        let (pb, pl) = p.per_worker.get(i).copied().unwrap_or((0, 0));
                        let dl = l.saturating_sub(pl);
                        let loadv = if dl == 0 {
                            0.0
                        } else {
                            b.saturating_sub(pb) as f64 / dl as f64
                        };
                        json!({"index": w.index, "load": (loadv * 1000.0).round() / 1000.0})
                    })
                    .collect();
                let rate = |a: u64, b: u64| (a.saturating_sub(b) as f64 / dt).round();
                (
                    workers,
                    rate(rx, p.rx),
                    rate(relayed, p.relayed),
                    rate(drops, p.drops),
                )
            }
            None => (
                m.workers
                    .iter()
                    .map(|w| json!({"index": w.index, "load": 0.0}))
                    .collect(),
                0.0,
                0.0,
                0.0,
            ),
        };
        self.prev = Some(Counters {
            at: now,
            per_worker,
            rx,
            relayed,
            drops,
        });

        let stats = hub.stats().await.unwrap_or(Value::Null);

        // Queues: figures from the ACD's published atomics; names and thresholds from the
        // shard, refreshed now and then.
        let acd = &m.control.acd;
        let figures = acd.queue_figures();
        if hub.acd().is_some()
            && (self.ticks % 10 == 1 || figures.iter().any(|f| !self.names.contains_key(&f.queue)))
        {
            self.refresh_queues(hub, &figures).await;
        }
        let mut queues: Vec<Value> = figures
            .iter()
            .map(|f| {
                let (name, sl) = self
                    .names
                    .get(&f.queue)
                    .cloned()
                    .unwrap_or((Value::Null, Value::Null));
                let mut v = serde_json::to_value(f).unwrap_or(Value::Null);
                v["name"] = name;
                v["sl_threshold_ms"] = sl;
                v
            })
            .collect();
        queues.sort_by_key(|q| q["queue"].as_u64());

        // Calls: a rolling sample of per-call quality.
        // Small engines list their calls every second; large ones every LIST_EVERY seconds.
        if self.ticks % LIST_EVERY == 1 || self.calls.len() <= LIST_EVERY_BELOW {
            if let Ok(list) = hub.call_list().await {
                self.calls = list["calls"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c["call"].as_str().map(str::to_owned))
                    .take(MAX_TRACKED)
                    .collect();
                let live: HashSet<&str> = self.calls.iter().map(String::as_str).collect();
                self.quality.retain(|k, _| live.contains(k.as_str()));
            }
        }
        for _ in 0..SAMPLE_PER_TICK.min(self.calls.len()) {
            self.cursor %= self.calls.len().max(1);
            let Some(id) = self.calls.get(self.cursor).cloned() else {
                break;
            };
            self.cursor += 1;
            match hub.call_get(&id).await {
                Ok(v) => {
                    self.quality.insert(id, Quality::of(&v));
                }
                Err(_) => {
                    self.quality.remove(&id);
                }
            }
        }
        let mut dist: HashMap<&str, u64> = HashMap::new();
        for q in self.quality.values() {
            *dist.entry(q.class()).or_default() += 1;
        }
        let mut worst: Vec<(&String, &Quality)> =
            self.quality.iter().filter(|(_, q)| q.packets > 0).collect();
        worst.sort_by(|a, b| a.1.score().total_cmp(&b.1.score()).then(a.0.cmp(b.0)));
        let worst: Vec<Value> = worst
            .into_iter()
            .take(WORST)
            .map(|(c, q)| {
                json!({"call": c, "mos": q.mos, "loss": (q.loss * 10_000.0).round() / 10_000.0,
                    "jitter_ms": (q.jitter_ms * 10.0).round() / 10.0, "packets": q.packets})
            })
            .collect();

        // Recordings.
        let (rec_active, rec_bytes, today) = match hub.recordings() {
            Some(svc) => {
                let rm = svc.metrics();
                let (day, since) = day_start_us(at);
                if self.today.0 != day || self.ticks % 10 == 1 {
                    let path = svc.index_path();
                    if let Ok(Some(n)) =
                        tokio::task::spawn_blocking(move || recordings_since(&path, since)).await
                    {
                        self.today = (day, n);
                    } else if self.today.0 != day {
                        self.today = (day, 0);
                    }
                }
                (load(&rm.active), load(&rm.bytes_written), self.today.1)
            }
            None => (0, 0, 0),
        };

        json!({
            "at": at,
            "engine": {
                "calls": stats["calls"], "legs": stats["legs"], "workers": workers,
                "rx_pps": rx_pps, "relayed_pps": relayed_pps,
                "drops": drops, "drops_per_s": drops_ps,
                "draining": stats["draining"],
            },
            "queues": queues,
            "agents": acd.agent_figures(),
            "tasks_live": acd.tasks_live(),
            "calls": {
                "active": stats["calls"],
                "sampled": self.quality.len(),
                "quality": {
                    "good": dist.get("good").copied().unwrap_or(0),
                    "fair": dist.get("fair").copied().unwrap_or(0),
                    "poor": dist.get("poor").copied().unwrap_or(0),
                    "bad": dist.get("bad").copied().unwrap_or(0),
                    "no_media": dist.get("no_media").copied().unwrap_or(0),
                },
                "worst": worst,
            },
            "recordings": {"active": rec_active, "today": today, "bytes": rec_bytes},
        })
    }

    async fn refresh_queues(&mut self, hub: &Hub, figures: &[crate::acd::metrics::QueueFigures]) {
        let ids: Vec<u64> = figures.iter().map(|f| f.queue).take(MAX_QUEUES).collect();
        let mut names = HashMap::with_capacity(ids.len());
        for id in ids {
            let req = json!({"op": "queue.get", "queue": id});
            if let Ok(v) = crate::acd::native_op(hub, "queue.get", &req).await {
                let q = &v["queue"];
                names.insert(id, (q["name"].clone(), q["service_level_ms"].clone()));
            }
        }
        self.names = names;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quality_takes_the_worst_leg() {
        let v = json!({"stats": {"legs": [
            {"rtp": {"packets": 100}, "lost": 0, "jitter_ms": 2.0, "mos": 4.4},
            {"rtp": {"packets": 90}, "lost": 10, "jitter_ms": 9.0, "mos": 3.2},
        ]}});
        let q = Quality::of(&v);
        assert_eq!(q.mos, Some(3.2));
        assert!((q.loss - 0.1).abs() < 1e-9);
        assert_eq!(q.jitter_ms, 9.0);
        assert_eq!(q.class(), "poor");
        assert_eq!(Quality::of(&json!({"stats": null})).class(), "no_media");
        let lossy = Quality::of(&json!({"stats": {"legs": [
            {"rtp": {"packets": 50}, "lost": 50}]}}));
        assert_eq!(lossy.class(), "bad");
        assert!(lossy.score() < q.score());
    }

    #[test]
    fn assets_are_self_contained() {
        for a in [INDEX_HTML, APP_JS, STYLE_CSS] {
            assert!(
                !a.contains("http://") && !a.contains("https://"),
                "external URL"
            );
        }
        assert!(INDEX_HTML.contains("dashboard/app.js"));
        assert!(APP_JS.contains("dashboard/events"));
    }
}
