//! HTTP retrieval of recordings, behind the engine's bearer-token middleware:
//!
//! - `GET /recordings?call=&agent=&queue=&from=&to=&limit=&cursor=`: a page of the index,
//!   newest first, with `next_cursor`;
//! - `GET /recordings/{id}`: one recording's metadata;
//! - `GET /recordings/{id}/audio` (and `HEAD`): the file, decrypted when encrypted at rest,
//!   with single byte ranges (RFC 9110 §14: `a-b`, `a-`, `-n`; 206, or 416 with
//!   `Content-Range: bytes */len`);
//! - `DELETE /recordings/{id}`: file and row.
//!
//! Ids are checked against their exact shape before anything else; files are reached only
//! through the index, and their paths are checked to stay inside the recordings directory.
//! Index and file work runs on tokio's blocking pool.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::crypt::{self, EncryptedReader};
use super::index::{self, Index, ListQuery, RecordingRow};
use super::{Format, RecordingId, RecordingService, datetime, name, store};
use crate::control::Hub;

/// Longest query string accepted, bytes.
pub const MAX_QUERY: usize = 2048;
/// Longest filter value.
const MAX_VALUE: usize = 1024;
/// Rows per page when `limit` is not given.
const DEFAULT_LIMIT: u32 = 100;
/// Bytes per body chunk.
const BODY_CHUNK: usize = 64 * 1024;

/// The recordings routes (state: the [`Hub`]).
pub fn routes() -> Router<Hub> {
    Router::new()
        .route("/recordings", get(list))
        .route("/recordings/{id}", get(describe).delete(delete))
        .route("/recordings/{id}/audio", get(audio))
}

/// An error answer: status and a JSON body `{"error": {"code", "message"}}`.
#[derive(Debug)]
pub struct HttpError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl HttpError {
    /// The status it answers with.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response()
    }
}

fn error(status: StatusCode, code: &'static str, message: impl Into<String>) -> HttpError {
    HttpError {
        status,
        code,
        message: message.into(),
    }
}

fn service(hub: &Hub) -> Result<RecordingService, HttpError> {
    hub.recordings().cloned().ok_or_else(|| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "recording is not running",
        )
    })
}

fn parse_id(id: &str) -> Result<RecordingId, HttpError> {
    RecordingId::parse(id).ok_or_else(|| {
        error(
            StatusCode::BAD_REQUEST,
            "bad_id",
            "a recording id is 24 lower-case hexadecimal digits",
        )
    })
}

fn internal(e: impl std::fmt::Display) -> HttpError {
    error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, HttpError> + Send + 'static,
) -> Result<T, HttpError> {
    tokio::task::spawn_blocking(f).await.map_err(internal)?
}

/// Parses the listing's query string.
fn list_query(uri: &Uri) -> Result<ListQuery, HttpError> {
    let raw = uri.query().unwrap_or("");
    if raw.len() > MAX_QUERY {
        return Err(error(
            StatusCode::URI_TOO_LONG,
            "too_large",
            format!("query strings are at most {MAX_QUERY} bytes"),
        ));
    }
    let bad = |m: String| error(StatusCode::BAD_REQUEST, "bad_request", m);
    let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map_err(|e| bad(format!("invalid query string: {e}")))?;
    let mut q = ListQuery {
        limit: DEFAULT_LIMIT,
        ..ListQuery::default()
    };
    let mut seen: Vec<String> = Vec::new();
    for (k, v) in pairs {
        if seen.contains(&k) {
            return Err(bad(format!("`{k}` is given twice")));
        }
        if v.is_empty() || v.len() > MAX_VALUE {
            return Err(bad(format!("`{k}` must be 1 to {MAX_VALUE} bytes")));
        }
        let time = |v: &str| {
            datetime::parse(v)
                .and_then(|t| i64::try_from(t).ok())
                .ok_or_else(|| {
                    bad(format!(
                        "`{k}` is a time: Unix seconds, YYYY-MM-DD or RFC 3339"
                    ))
                })
        };
        match k.as_str() {
            "call" => q.call = Some(v.clone()),
            "agent" => q.agent = Some(v.clone()),
            "queue" => q.queue = Some(v.clone()),
            "from" => q.from_us = Some(time(&v)?),
            "to" => q.to_us = Some(time(&v)?),
            "limit" => {
                q.limit = v
                    .parse::<u32>()
                    .ok()
                    .filter(|l| (1..=index::MAX_LIMIT).contains(l))
                    .ok_or_else(|| {
                        bad(format!(
                            "`limit` is a number from 1 to {}",
                            index::MAX_LIMIT
                        ))
                    })?;
            }
            "cursor" => {
                q.after = Some(
                    index::parse_cursor(&v)
                        .ok_or_else(|| bad("`cursor` is not a cursor from this API".into()))?,
                );
            }
            other => {
                let other: String = other.chars().take(64).collect();
                return Err(bad(format!(
                    "unknown parameter `{other}`; known: call, agent, queue, from, to, limit, cursor"
                )));
            }
        }
        seen.push(k);
    }
    Ok(q)
}

async fn list(State(hub): State<Hub>, uri: Uri) -> Response {
    let run = async {
        let svc = service(&hub)?;
        let q = list_query(&uri)?;
        let (rows, next) = blocking(move || {
            let ix = Index::connect(&svc.index_path()).map_err(internal)?;
            ix.list(&q).map_err(internal)
        })
        .await?;
        let rows: Vec<Value> = rows.iter().map(RecordingRow::to_json).collect();
        Ok::<_, HttpError>(Json(json!({"recordings": rows, "next_cursor": next})).into_response())
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

fn row_of(svc: &RecordingService, id: &RecordingId) -> Result<RecordingRow, HttpError> {
    let ix = Index::connect(&svc.index_path()).map_err(internal)?;
    ix.get(id.as_str()).map_err(internal)?.ok_or_else(|| {
        error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no recording `{id}`"),
        )
    })
}

async fn describe(State(hub): State<Hub>, Path(id): Path<String>) -> Response {
    let run = async {
        let svc = service(&hub)?;
        let id = parse_id(&id)?;
        let row = blocking(move || row_of(&svc, &id)).await?;
        Ok::<_, HttpError>(Json(row.to_json()).into_response())
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

async fn delete(State(hub): State<Hub>, Path(id): Path<String>) -> Response {
    let run = async {
        let svc = service(&hub)?;
        let id = parse_id(&id)?;
        blocking(move || {
            let row = row_of(&svc, &id)?;
            if row.state == index::state::RECORDING {
                return Err(error(
                    StatusCode::CONFLICT,
                    "recording",
                    "the recording is still running: stop it first",
                ));
            }
            let ix = Index::connect(&svc.index_path()).map_err(internal)?;
            store::remove_recording(svc.dir(), &ix, id.as_str(), &row.file).map_err(internal)?;
            tracing::info!(recording = %id, "recording deleted over HTTP");
            Ok(())
        })
        .await?;
        Ok::<_, HttpError>(StatusCode::NO_CONTENT.into_response())
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

/// The outcome of a `Range` header against a body of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeOutcome {
    /// No (usable) range: the whole body.
    Full,
    /// Bytes `start..=end`.
    Partial(u64, u64),
    /// 416.
    Unsatisfiable,
}

/// Interprets a `Range` header (RFC 9110 §14.1.2). Other units and lists of ranges are
/// ignored (the whole body is sent); a malformed or unsatisfiable byte range is refused.
#[must_use]
pub fn parse_range(value: &str, len: u64) -> RangeOutcome {
    let value = value.trim();
    let Some(spec) = value
        .get(..6)
        .filter(|u| u.eq_ignore_ascii_case("bytes="))
        .map(|_| value[6..].trim())
    else {
        return RangeOutcome::Full;
    };
    if spec.contains(',') {
        return RangeOutcome::Full;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return RangeOutcome::Unsatisfiable;
    };
    let num = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.len() <= 19 && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let (a, b) = (a.trim(), b.trim());
    if len == 0 {
        return RangeOutcome::Unsatisfiable;
    }
    match (a.is_empty(), b.is_empty()) {
        (true, false) => match num(b) {
            Some(n) if n > 0 => RangeOutcome::Partial(len.saturating_sub(n), len - 1),
            _ => RangeOutcome::Unsatisfiable,
        },
        (false, true) => match num(a) {
            Some(start) if start < len => RangeOutcome::Partial(start, len - 1),
            _ => RangeOutcome::Unsatisfiable,
        },
        (false, false) => match (num(a), num(b)) {
            (Some(start), Some(end)) if start <= end && start < len => {
                RangeOutcome::Partial(start, end.min(len - 1))
            }
            _ => RangeOutcome::Unsatisfiable,
        },
        (true, true) => RangeOutcome::Unsatisfiable,
    }
}

enum Source {
    Plain(File),
    Encrypted(Box<EncryptedReader>),
}

struct Audio {
    source: Source,
    len: u64,
    row: RecordingRow,
}

fn open_audio(svc: &RecordingService, id: &RecordingId) -> Result<Audio, HttpError> {
    let row = row_of(svc, id)?;
    if row.state == index::state::RECORDING {
        return Err(error(
            StatusCode::CONFLICT,
            "recording",
            "the recording is still being written",
        ));
    }
    let gone = || error(StatusCode::GONE, "gone", "the recording's file is missing");
    let path = name::resolve(svc.dir(), &row.file).ok_or_else(gone)?;
    let file = File::open(&path).map_err(|_| gone())?;
    let encrypted = crypt::is_encrypted(&file).map_err(internal)?;
    let (source, len) = if encrypted {
        let r = EncryptedReader::open(file, &svc.config().keys).map_err(|e| {
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "decryption",
                format!("cannot decrypt: {e}"),
            )
        })?;
        let len = r.len();
        (Source::Encrypted(Box::new(r)), len)
    } else {
        let len = file.metadata().map_err(internal)?.len();
        (Source::Plain(file), len)
    };
    Ok(Audio { source, len, row })
}

/// Reads `start..=end` of the source into the channel, chunk by chunk, until done or the
/// client goes away.
fn pump(mut source: Source, start: u64, end: u64, tx: mpsc::Sender<std::io::Result<Bytes>>) {
    let mut pos = start;
    let mut buf = vec![0u8; BODY_CHUNK];
    if let Source::Plain(f) = &mut source {
        if let Err(e) = f.seek(SeekFrom::Start(start)) {
            let _ = tx.blocking_send(Err(e));
            return;
        }
    }
    while pos <= end {
        let want = usize::try_from(end - pos + 1)
            .unwrap_or(BODY_CHUNK)
            .min(BODY_CHUNK);
        let chunk = match &mut source {
            Source::Plain(f) => match f.read(&mut buf[..want]) {
                Ok(0) => Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the file got shorter",
                )),
                Ok(n) => Ok(Bytes::copy_from_slice(&buf[..n])),
                Err(e) => Err(e),
            },
            Source::Encrypted(r) => match r.read_at(pos) {
                Ok([]) => Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the file got shorter",
                )),
                Ok(b) => Ok(Bytes::copy_from_slice(&b[..b.len().min(want)])),
                Err(e) => Err(e.into()),
            },
        };
        let failed = chunk.is_err();
        if let Ok(b) = &chunk {
            pos += b.len() as u64;
        }
        if tx.blocking_send(chunk).is_err() || failed {
            return;
        }
    }
}

async fn audio(
    State(hub): State<Hub>,
    Path(id): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let run = async {
        let svc = service(&hub)?;
        let id = parse_id(&id)?;
        let audio = blocking(move || open_audio(&svc, &id)).await?;
        let len = audio.len;
        let etag = audio.row.sha256.as_ref().map(|s| format!("\"{s}\""));
        let if_range_ok = headers
            .get(header::IF_RANGE)
            .and_then(|v| v.to_str().ok())
            .is_none_or(|v| etag.as_deref() == Some(v.trim()));
        let range = match headers.get(header::RANGE).map(|v| v.to_str()) {
            Some(Ok(v)) if if_range_ok => parse_range(v, len),
            Some(Err(_)) if if_range_ok => RangeOutcome::Unsatisfiable,
            _ => RangeOutcome::Full,
        };
        let content_type = Format::parse(&audio.row.format)
            .map_or("application/octet-stream", Format::content_type);
        let mut h = HeaderMap::new();
        let hv = |s: &str| HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static(""));
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("private, no-store"),
        );
        if let Some(e) = &etag {
            h.insert(header::ETAG, hv(e));
        }
        let (status, start, end) = match range {
            RangeOutcome::Unsatisfiable => {
                h.insert(header::CONTENT_RANGE, hv(&format!("bytes */{len}")));
                return Ok((StatusCode::RANGE_NOT_SATISFIABLE, h).into_response());
            }
            RangeOutcome::Full => (StatusCode::OK, 0, len.saturating_sub(1)),
            RangeOutcome::Partial(a, b) => {
                h.insert(header::CONTENT_RANGE, hv(&format!("bytes {a}-{b}/{len}")));
                (StatusCode::PARTIAL_CONTENT, a, b)
            }
        };
        let body_len = if len == 0 { 0 } else { end - start + 1 };
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        h.insert(header::CONTENT_LENGTH, hv(&body_len.to_string()));
        h.insert(
            header::CONTENT_DISPOSITION,
            hv(&format!("attachment; filename=\"{}\"", audio.row.name)),
        );
        if method == Method::HEAD || body_len == 0 {
            return Ok((status, h, Body::empty()).into_response());
        }
        let (tx, rx) = mpsc::channel(4);
        let source = audio.source;
        tokio::task::spawn_blocking(move || pump(source, start, end, tx));
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Ok::<_, HttpError>((status, h, Body::from_stream(stream)).into_response())
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeOutcome::*;
        let len = 1000;
        for (h, want) in [
            ("bytes=0-99", Partial(0, 99)),
            ("bytes=100-", Partial(100, 999)),
            ("bytes=-200", Partial(800, 999)),
            ("bytes=-5000", Partial(0, 999)),
            ("bytes=990-5000", Partial(990, 999)),
            ("bytes=5-5", Partial(5, 5)),
            ("BYTES= 1-2", Partial(1, 2)),
            ("bytes=1000-", Unsatisfiable),
            ("bytes=-0", Unsatisfiable),
            ("bytes=5-2", Unsatisfiable),
            ("bytes=abc", Unsatisfiable),
            ("bytes=-", Unsatisfiable),
            ("bytes=1-x", Unsatisfiable),
            ("bytes=99999999999999999999-", Unsatisfiable),
            ("bytes=0-1,5-6", Full),
            ("items=0-5", Full),
            ("", Full),
        ] {
            assert_eq!(parse_range(h, len), want, "{h}");
        }
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
    }

    #[test]
    fn list_queries() {
        let q = |s: &str| list_query(&s.parse::<Uri>().unwrap());
        let ok =
            q("/recordings?call=c%201&agent=a&limit=5&from=2024-05-01&to=1714600000&cursor=10.3")
                .unwrap();
        assert_eq!(ok.call.as_deref(), Some("c 1"));
        assert_eq!(ok.limit, 5);
        assert_eq!(ok.after, Some((10, 3)));
        assert_eq!(ok.to_us, Some(1_714_600_000_000_000));
        assert_eq!(q("/recordings").unwrap().limit, DEFAULT_LIMIT);
        for bad in [
            "/recordings?nope=1",
            "/recordings?limit=0",
            "/recordings?limit=abc",
            "/recordings?limit=100000",
            "/recordings?from=yesterday",
            "/recordings?cursor=../../etc",
            "/recordings?call=a&call=b",
            "/recordings?call=",
        ] {
            assert_eq!(
                q(bad).unwrap_err().status(),
                StatusCode::BAD_REQUEST,
                "{bad}"
            );
        }
        let long = format!("/recordings?call={}", "x".repeat(MAX_QUERY));
        assert_eq!(q(&long).unwrap_err().status(), StatusCode::URI_TOO_LONG);
    }
}
