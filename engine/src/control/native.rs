//! The native control protocol: JSON lines over TCP and a Unix socket.
//!
//! One JSON object per line. Requests carry `id` (any JSON value, echoed) and `op`; replies
//! carry the same `id` and `ok`, and on failure an `error` object with a stable `code` and a
//! human `message`. After `subscribe`, events arrive on the same connection as lines with an
//! `event` key. A bad line (not JSON, too long, unknown op) gets an error reply and the
//! connection stays usable. See `docs/control-protocol.md`.

use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value, json};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::broadcast;
use tracing::debug;

use super::Hub;

/// Longest request line accepted, in bytes.
pub const MAX_LINE: usize = 64 * 1024;

/// Error codes of the native protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Not JSON, not an object, or a required field missing or of the wrong type.
    BadRequest,
    /// The line exceeded [`MAX_LINE`].
    TooLarge,
    /// No such operation.
    UnknownOp,
    /// The named call, leg or other object does not exist.
    NotFound,
    /// A token is required and was not given or was wrong.
    Unauthorized,
    /// The engine is draining or a worker did not answer.
    Unavailable,
    /// The request clashes with the current state (an id in use, no such offer, a queue
    /// that still holds tasks, …).
    Conflict,
    /// The feature asked for is not available in this engine.
    NotSupported,
    /// The queue holds its maximum number of tasks.
    QueueFull,
    /// An engine-wide limit (tasks, agents, queues, skills) is reached.
    LimitExceeded,
}

impl ErrorCode {
    /// The wire name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::TooLarge => "too_large",
            Self::UnknownOp => "unknown_op",
            Self::NotFound => "not_found",
            Self::Unauthorized => "unauthorized",
            Self::Unavailable => "unavailable",
            Self::Conflict => "conflict",
            Self::NotSupported => "not_supported",
            Self::QueueFull => "queue_full",
            Self::LimitExceeded => "limit_exceeded",
        }
    }
}

/// An error reply.
#[derive(Debug)]
pub struct OpError {
    /// Code.
    pub code: ErrorCode,
    /// Message.
    pub message: String,
}

impl OpError {
    /// A new error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Topics a connection may subscribe to.
pub const TOPICS: &[&str] = &[
    "calls",
    "media",
    "acd",
    "recording",
    "cdr",
    "fork",
    "analytics",
    "all",
];

/// Outcome of reading one bounded line.
enum Line {
    Text(Vec<u8>),
    TooLong,
    Eof,
}

/// Reads up to and including `\n`; a line longer than `max` is consumed and reported as
/// [`Line::TooLong`] without buffering it whole.
///
/// Cancel-safe for ordinary lines: bytes already taken from the reader stay in `buf` (empty
/// after every returned line), so a call dropped half-way through a line (the connection's
/// `select!` serving an event) is continued by the next call. A call dropped while it skips
/// an overlong line leaves the rest of that line to be read as a line of its own.
async fn read_line_bounded<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Line> {
    let mut too_long = false;
    loop {
        let chunk = r.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(if too_long {
                Line::TooLong
            } else if buf.is_empty() {
                Line::Eof
            } else {
                Line::Text(std::mem::take(buf))
            });
        }
        let (used, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        if !too_long {
            if buf.len() + used > max + 1 {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(&chunk[..used]);
            }
        }
        r.consume(used);
        if done {
            return Ok(if too_long {
                Line::TooLong
            } else {
                Line::Text(std::mem::take(buf))
            });
        }
    }
}

fn error_reply(id: &Value, e: &OpError) -> Value {
    json!({"id": id, "ok": false, "error": {"code": e.code.as_str(), "message": e.message}})
}

/// Per-connection state.
struct Session {
    authorised: bool,
    events: Option<broadcast::Receiver<Arc<Value>>>,
    topics: Vec<String>,
}

/// Serves one connection until EOF or an I/O error. `needs_token` is set for TCP clients when
/// a token is configured (Unix-socket clients are trusted by file permissions).
pub async fn serve_connection<S>(hub: Hub, stream: S, needs_token: bool)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (rd, mut wr) = tokio::io::split(stream);
    let mut rd = BufReader::new(rd);
    let mut buf = Vec::with_capacity(1024);
    let mut session = Session {
        authorised: !needs_token,
        events: None,
        topics: Vec::new(),
    };
    loop {
        let reply = tokio::select! {
            line = read_line_bounded(&mut rd, &mut buf, MAX_LINE) => {
                match line {
                    Ok(Line::Eof) | Err(_) => return,
                    Ok(Line::TooLong) => error_reply(
                        &Value::Null,
                        &OpError::new(ErrorCode::TooLarge, format!("request line longer than {MAX_LINE} bytes")),
                    ),
                    Ok(Line::Text(t)) => {
                        let text = t.trim_ascii();
                        if text.is_empty() {
                            continue;
                        }
                        handle_line(&hub, &mut session, text).await
                    }
                }
            }
            ev = recv_event(&mut session.events) => {
                match ev {
                    Some(ev) if wants(&session.topics, &ev) => (*ev).clone(),
                    Some(_) => continue,
                    None => {
                        session.events = None;
                        continue;
                    }
                }
            }
        };
        let mut out = reply.to_string().into_bytes();
        out.push(b'\n');
        if wr.write_all(&out).await.is_err() {
            return;
        }
    }
}

async fn recv_event(rx: &mut Option<broadcast::Receiver<Arc<Value>>>) -> Option<Arc<Value>> {
    match rx {
        None => std::future::pending().await,
        Some(rx) => loop {
            match rx.recv().await {
                Ok(v) => return Some(v),
                // A slow subscriber misses events rather than slowing the engine.
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    debug!(missed = n, "event subscriber lagged");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        },
    }
}

fn wants(topics: &[String], ev: &Value) -> bool {
    let name = ev.get("event").and_then(Value::as_str).unwrap_or("");
    let topic = name.split('.').next().unwrap_or("");
    topics.iter().any(|t| {
        t == "all"
            || t == topic
            || (t == "calls" && matches!(topic, "call" | "bridge" | "cdr"))
            || (t == "media"
                && matches!(
                    topic,
                    "dtmf" | "talking" | "play" | "monitor" | "fork" | "analytics"
                ))
            || (t == "acd" && matches!(topic, "task" | "offer" | "agent"))
    })
}

async fn handle_line(hub: &Hub, session: &mut Session, text: &[u8]) -> Value {
    let started = Instant::now();
    let req: Value = match serde_json::from_slice(text) {
        Ok(v) => v,
        Err(e) => {
            let e = OpError::new(ErrorCode::BadRequest, format!("invalid JSON: {e}"));
            hub.metrics()
                .control
                .record("native", "invalid", "error", started.elapsed());
            return error_reply(&Value::Null, &e);
        }
    };
    let id = req.get("id").cloned().unwrap_or(Value::Null);
    let op = req.get("op").and_then(Value::as_str).unwrap_or("");
    let result = if !req.is_object() {
        Err(OpError::new(
            ErrorCode::BadRequest,
            "a request is a JSON object",
        ))
    } else if op.is_empty() {
        Err(OpError::new(
            ErrorCode::BadRequest,
            "missing string field `op`",
        ))
    } else if !session.authorised && op != "auth" && op != "ping" {
        Err(OpError::new(
            ErrorCode::Unauthorized,
            "send {\"op\":\"auth\",\"token\":…} first",
        ))
    } else {
        dispatch(hub, session, op, &req).await
    };
    let label = if result.is_ok() { "ok" } else { "error" };
    hub.metrics()
        .control
        .record("native", op, label, started.elapsed());
    match result {
        Ok(Value::Object(mut m)) => {
            m.insert("id".into(), id);
            m.insert("ok".into(), Value::Bool(true));
            Value::Object(m)
        }
        Ok(other) => json!({"id": id, "ok": true, "result": other}),
        Err(e) => error_reply(&id, &e),
    }
}

fn str_field<'a>(req: &'a Value, key: &str) -> Result<&'a str, OpError> {
    req.get(key).and_then(Value::as_str).ok_or_else(|| {
        OpError::new(
            ErrorCode::BadRequest,
            format!("missing string field `{key}`"),
        )
    })
}

async fn dispatch(
    hub: &Hub,
    session: &mut Session,
    op: &str,
    req: &Value,
) -> Result<Value, OpError> {
    match op {
        "ping" => Ok(json!({"pong": true})),
        "auth" => {
            let token = str_field(req, "token")?;
            if hub.check_control_token(token) {
                session.authorised = true;
                Ok(json!({}))
            } else {
                Err(OpError::new(ErrorCode::Unauthorized, "wrong token"))
            }
        }
        "stats" => hub.stats().await,
        "call.list" => hub.call_list().await,
        "call.get" => hub.call_get(str_field(req, "call")?).await,
        "call.delete" => hub.call_delete(str_field(req, "call")?).await,
        "record.start" | "record.pause" | "record.resume" | "record.stop" => {
            hub.record(op, req).await
        }
        media if crate::media::OPS.contains(&media) => hub.media(media, req).await,
        bridge if super::bridge::OPS.contains(&bridge) => hub.bridge(bridge, req).await,
        "subscribe" => {
            let topics: Vec<String> = match req.get("topics") {
                None => vec!["all".into()],
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|t| {
                        t.as_str()
                            .filter(|t| TOPICS.contains(t))
                            .map(str::to_owned)
                            .ok_or_else(|| {
                                OpError::new(
                                    ErrorCode::BadRequest,
                                    format!("unknown topic {t}; topics are {TOPICS:?}"),
                                )
                            })
                    })
                    .collect::<Result<_, _>>()?,
                Some(_) => {
                    return Err(OpError::new(
                        ErrorCode::BadRequest,
                        "`topics` is a list of strings",
                    ));
                }
            };
            session.topics = topics.clone();
            session.events = Some(hub.subscribe());
            Ok(json!({"topics": topics}))
        }
        "unsubscribe" => {
            session.events = None;
            session.topics.clear();
            Ok(json!({}))
        }
        acd if crate::acd::handles(acd) => crate::acd::native_op(hub, acd, req).await,
        other => Err(OpError::new(
            ErrorCode::UnknownOp,
            format!(
                "unknown op `{}`",
                other.chars().take(64).collect::<String>()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounded_lines() {
        let data = b"short\nxxxxxxxxxxxxxxxxxxxx\nok\nlast".to_vec();
        let mut r = BufReader::with_capacity(4, &data[..]);
        let mut buf = Vec::new();
        assert!(
            matches!(read_line_bounded(&mut r, &mut buf, 8).await.unwrap(), Line::Text(t) if t == b"short\n")
        );
        assert!(matches!(
            read_line_bounded(&mut r, &mut buf, 8).await.unwrap(),
            Line::TooLong
        ));
        assert!(
            matches!(read_line_bounded(&mut r, &mut buf, 8).await.unwrap(), Line::Text(t) if t == b"ok\n")
        );
        assert!(
            matches!(read_line_bounded(&mut r, &mut buf, 8).await.unwrap(), Line::Text(t) if t == b"last")
        );
        assert!(matches!(
            read_line_bounded(&mut r, &mut buf, 8).await.unwrap(),
            Line::Eof
        ));
    }

    #[tokio::test]
    async fn a_line_survives_a_cancelled_read() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut r = BufReader::new(server);
        let mut buf = Vec::new();
        client.write_all(b"{\"op\":").await.unwrap();
        let cut = tokio::time::timeout(
            std::time::Duration::from_millis(20),
            read_line_bounded(&mut r, &mut buf, 1024),
        )
        .await;
        assert!(cut.is_err(), "the line is not complete yet");
        client.write_all(b"\"ping\"}\n").await.unwrap();
        assert!(matches!(
            read_line_bounded(&mut r, &mut buf, 1024).await.unwrap(),
            Line::Text(t) if t == b"{\"op\":\"ping\"}\n"
        ));
    }

    #[test]
    fn topic_filter() {
        let ev = json!({"event": "call.created"});
        assert!(wants(&["calls".into()], &ev));
        assert!(wants(&["all".into()], &ev));
        assert!(!wants(&["media".into()], &ev));
        assert!(wants(&["media".into()], &json!({"event": "media.timeout"})));
        assert!(wants(&["acd".into()], &json!({"event": "task.offered"})));
        assert!(wants(&["acd".into()], &json!({"event": "agent.state"})));
        assert!(!wants(&["acd".into()], &json!({"event": "call.created"})));
        assert!(wants(&["calls".into()], &json!({"event": "call.ended"})));
        assert!(wants(&["calls".into()], &json!({"event": "cdr"})));
        assert!(wants(&["cdr".into()], &json!({"event": "cdr"})));
        assert!(wants(&["fork".into()], &json!({"event": "fork.message"})));
        for e in [
            "dtmf",
            "talking",
            "play.done",
            "monitor.mode",
            "fork.barge_in",
            "analytics",
        ] {
            assert!(wants(&["media".into()], &json!({"event": e})), "{e}");
            assert!(!wants(&["calls".into()], &json!({"event": e})), "{e}");
        }
    }
}
