//! HTTP: `/healthz`, `/metrics` (Prometheus text format), `/recordings…`
//! ([`crate::record::http`]), `/cdrs` ([`crate::cdr::http`]) and the live dashboard
//! ([`crate::dashboard`]: the page at `/`, its stream at `/dashboard/events`).
//!
//! When a token is configured, every path but `/healthz` and the dashboard's static page and
//! assets (which carry no data) needs `Authorization: Bearer TOKEN`: 401 without one, 403
//! with a wrong one.

use axum::Router;
use axum::extract::{Extension, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::control::Hub;

/// The live-operations services HTTP serves when they run.
#[derive(Debug, Clone, Default)]
pub struct Live {
    /// Call detail records (`/cdrs`).
    pub cdr: Option<crate::cdr::CdrReader>,
    /// The dashboard's shared snapshot (`/dashboard/events`, `/dashboard/snapshot`).
    pub dashboard: Option<crate::dashboard::Dashboard>,
}

/// Builds the router without the live-operations services (`/cdrs` and the dashboard's data
/// answer 503).
pub fn router(hub: Hub) -> Router {
    router_with(hub, Live::default())
}

/// Builds the router.
pub fn router_with(hub: Hub, live: Live) -> Router {
    let mut r = Router::new()
        .route("/metrics", get(metrics))
        .merge(crate::record::http::routes())
        .merge(crate::cdr::http::routes())
        .merge(crate::dashboard::data_routes())
        .route_layer(middleware::from_fn_with_state(hub.clone(), auth))
        .route("/healthz", get(healthz))
        .merge(crate::dashboard::page_routes());
    if let Some(c) = live.cdr {
        r = r.layer(Extension(c));
    }
    if let Some(d) = live.dashboard {
        r = r.layer(Extension(d));
    }
    r.with_state(hub)
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
