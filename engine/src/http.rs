//! HTTP: `/healthz`, `/metrics` (Prometheus text format) and `/recordings…`
//! ([`crate::record::http`]).
//!
//! When a token is configured, every path but `/healthz` needs `Authorization: Bearer TOKEN`:
//! 401 without one, 403 with a wrong one.

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::control::Hub;

/// Builds the router.
pub fn router(hub: Hub) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .merge(crate::record::http::routes())
        .route_layer(middleware::from_fn_with_state(hub.clone(), auth))
        .route("/healthz", get(healthz))
        .with_state(hub)
}

async fn auth(State(hub): State<Hub>, req: Request, next: Next) -> Response {
    if let Some(expected) = hub.http_token() {
        match bearer(req.headers()) {
            None => {
                return (
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, "Bearer")],
                    "bearer token required\n",
                )
                    .into_response();
            }
            Some(t) if !constant_time_eq(t.as_bytes(), expected.as_bytes()) => {
                return (StatusCode::FORBIDDEN, "wrong token\n").into_response();
            }
            Some(_) => {}
        }
    }
    next.run(req).await
}

fn bearer(h: &HeaderMap) -> Option<&str> {
    h.get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Compares without an early exit, so the time taken does not reveal the matching prefix.
#[must_use]
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn healthz(State(hub): State<Hub>) -> Response {
    if hub.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else {
        (StatusCode::OK, "ok\n").into_response()
    }
}

async fn metrics(State(hub): State<Hub>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        hub.metrics().render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
