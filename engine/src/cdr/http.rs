//! `GET /cdrs?from=&to=&call=&agent=&queue=&limit=&cursor=`: call detail records, newest
//! first, behind the engine's bearer-token middleware.
//!
//! `from` / `to` bound the call's start (Unix seconds, `YYYY-MM-DD` or RFC 3339; `to` is
//! exclusive); `call`, `agent` and `queue` match exactly; `limit` is 1 to 1000 (100 when
//! absent); `cursor` is the previous page's `next_cursor`. Anything else, a value given twice
//! or out of range answers 400 with `{"error": {"code": "bad_request", "message": …}}`.

use axum::extract::{Extension, Query};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router, routing::get};
use serde_json::json;

use super::CdrReader;
use super::store::{self, ListQuery};
use crate::control::Hub;
use crate::record::datetime;

/// Longest query string accepted, bytes.
pub const MAX_QUERY: usize = 2048;
const MAX_VALUE: usize = 1024;
const DEFAULT_LIMIT: u32 = 100;

/// The `/cdrs` route; the [`CdrReader`] comes as an extension.
pub fn routes() -> Router<Hub> {
    Router::new().route("/cdrs", get(list))
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message.into()}})),
    )
        .into_response()
}

/// Parses the query string of `GET /cdrs`.
///
/// # Errors
/// A message saying what is wrong, for a 400 answer.
pub fn parse_query(raw: &str) -> Result<ListQuery, String> {
    if raw.len() > MAX_QUERY {
        return Err(format!("query strings are at most {MAX_QUERY} bytes"));
    }
    let uri: Uri = format!("/cdrs?{raw}")
        .parse()
        .map_err(|e| format!("invalid query string: {e}"))?;
    let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(&uri)
        .map_err(|e| format!("invalid query string: {e}"))?;
    let mut q = ListQuery {
        limit: DEFAULT_LIMIT,
        ..ListQuery::default()
    };
    let mut seen: Vec<String> = Vec::new();
    for (k, v) in pairs {
        let key: String = k.chars().take(64).collect();
        if seen.contains(&k) {
            return Err(format!("`{key}` is given twice"));
        }
        if v.is_empty() || v.len() > MAX_VALUE {
            return Err(format!("`{key}` must be 1 to {MAX_VALUE} bytes"));
        }
        let time = |v: &str| {
            datetime::parse(v)
                .map(|us| us / 1000)
                .ok_or_else(|| format!("`{key}` is a time: Unix seconds, YYYY-MM-DD or RFC 3339"))
        };
        match k.as_str() {
            "call" => q.call = Some(v),
            "agent" => q.agent = Some(v),
            "queue" => q.queue = Some(v),
            "from" => q.from_ms = Some(time(&v)?),
            "to" => q.to_ms = Some(time(&v)?),
            "limit" => {
                q.limit = v
                    .parse::<u32>()
                    .ok()
                    .filter(|l| (1..=store::MAX_LIMIT).contains(l))
                    .ok_or_else(|| format!("`limit` is a number from 1 to {}", store::MAX_LIMIT))?;
            }
            "cursor" => {
                q.before_id = Some(
                    v.parse::<i64>()
                        .ok()
                        .filter(|c| *c > 0)
                        .ok_or("`cursor` is not a cursor from this API")?,
                );
            }
            _ => {
                return Err(format!(
                    "unknown parameter `{key}`; known: from, to, call, agent, queue, limit, cursor"
                ));
            }
        }
        seen.push(k);
    }
    if let (Some(f), Some(t)) = (q.from_ms, q.to_ms) {
        if f >= t {
            return Err("`from` must be before `to`".into());
        }
    }
    Ok(q)
}

async fn list(reader: Option<Extension<CdrReader>>, uri: Uri) -> Response {
    let Some(Extension(reader)) = reader else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "call records are not running",
        );
    };
    let q = match parse_query(uri.query().unwrap_or("")) {
        Ok(q) => q,
        Err(m) => return error(StatusCode::BAD_REQUEST, "bad_request", m),
    };
    let path = reader.db_path.clone();
    match tokio::task::spawn_blocking(move || store::list(&path, &q)).await {
        Ok(Ok((rows, next))) => Json(json!({"cdrs": rows, "next_cursor": next})).into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_parse_and_bad_ones_say_why() {
        let q = parse_query("call=a%20b&agent=30&queue=5&from=2024-01-01&to=1704153600&limit=5")
            .unwrap();
        assert_eq!(q.call.as_deref(), Some("a b"));
        assert_eq!(q.from_ms, Some(1_704_067_200_000));
        assert_eq!(q.to_ms, Some(1_704_153_600_000));
        assert_eq!(q.limit, 5);
        assert_eq!(parse_query("").unwrap().limit, DEFAULT_LIMIT);
        for (bad, says) in [
            ("limit=0", "limit"),
            ("limit=x", "limit"),
            ("from=yesterday", "from"),
            ("call=a&call=b", "twice"),
            ("color=red", "unknown parameter"),
            ("cursor=-3", "cursor"),
            ("call=", "1 to"),
            ("from=2024-02-01&to=2024-01-01", "before"),
        ] {
            let e = parse_query(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert!(parse_query(&"a".repeat(MAX_QUERY + 1)).is_err());
    }
}
