//! `cutover run --listen ADDR`: an HTTP API while the run lasts (the shape of mongosync's).
//!
//! - `GET /api/v1/progress`: the document `cutover status PLAN --format json` prints;
//! - `GET /metrics`: Prometheus/OpenMetrics text ([`crate::ops::metrics`]);
//! - `POST /api/v1/pause`, `/api/v1/resume`, `/api/v1/approve` (optional JSON body
//!   `{"step": N, "note": "..."}`): the same as `cutover pause|resume|approve PLAN`.
//!
//! Loopback addresses only, unless `CUTOVER_API_TOKEN` is set; when it is set, every request
//! must carry `Authorization: Bearer <token>`, on any address.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;

use crate::base::env::API_TOKEN;
use crate::ops::error::OpError;
use crate::ops::metrics::Metrics;
use crate::ops::service::Live;

/// A listening socket, bound before the run starts (so a busy port fails at once).
pub struct Bound {
    listener: tokio::net::TcpListener,
    token: Option<String>,
}

impl Bound {
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }
}

/// Checks the address against the token rule and binds it.
pub async fn bind(addr: SocketAddr, token: Option<String>) -> Result<Bound, String> {
    let token = token.filter(|t| !t.is_empty());
    if !addr.ip().is_loopback() && token.is_none() {
        return Err(format!(
            "`--listen {addr}` is not a loopback address: the API can pause the migration and approve its commit, \
             so it is served on other addresses only with a bearer token; set `{API_TOKEN}` (clients send \
             `Authorization: Bearer <token>`), or listen on 127.0.0.1"
        ));
    }
    if let Some(t) = &token {
        crate::base::redact::register_secret(t);
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    Ok(Bound { listener, token })
}

struct Api {
    live: Arc<Live>,
    token: Option<String>,
    metrics: Mutex<Metrics>,
}

/// Serves until `stop` turns true.
pub async fn serve(bound: Bound, live: Arc<Live>, mut stop: watch::Receiver<bool>) {
    let addr = bound.local_addr();
    let api = Arc::new(Api {
        metrics: Mutex::new(Metrics::new()),
        live,
        token: bound.token,
    });
    let app = Router::new()
        .route("/api/v1/progress", get(progress))
        .route("/metrics", get(metrics))
        .route("/api/v1/pause", post(pause))
        .route("/api/v1/resume", post(resume))
        .route("/api/v1/approve", post(approve))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(api.clone(), auth))
        .with_state(api);
    if let Some(a) = addr {
        tracing::info!(address = %a, "HTTP API listening (/api/v1/progress, /metrics).");
    }
    let shutdown = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    if let Err(e) = axum::serve(bound.listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::warn!(error = %e, "The HTTP API stopped.");
    }
}

async fn auth(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    if let Some(token) = &api.token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !constant_time_eq(given.as_bytes(), token.as_bytes()) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                Json(json!({"ok": false, "error": format!("missing or wrong bearer token (`{API_TOKEN}`)")})),
            )
                .into_response();
        }
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"ok": false, "error": "no such endpoint; see /api/v1/progress, /metrics, /api/v1/pause, /api/v1/resume, /api/v1/approve"})),
    )
        .into_response()
}

fn failure(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(json!({"ok": false, "error": crate::base::redact::scrub(message)})),
    )
        .into_response()
}

async fn progress(State(api): State<Arc<Api>>) -> Response {
    match crate::ops::status::load_view(&api.live.store, &api.live.plan).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => failure(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

async fn metrics(State(api): State<Arc<Api>>) -> Response {
    let run = api.live.store.record().await.ok();
    let insight = api.live.insight.lock().ok().and_then(|g| g.clone());
    let text = match api.metrics.lock() {
        Ok(mut m) => m.render(
            &api.live.plan.name,
            api.live.progress().as_deref(),
            run.as_ref(),
            insight.as_ref(),
        ),
        Err(_) => return failure(StatusCode::INTERNAL_SERVER_ERROR, "metrics unavailable"),
    };
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

fn op_result(r: Result<String, OpError>) -> Response {
    match r {
        Ok(message) => Json(json!({"ok": true, "message": message})).into_response(),
        Err(e) => failure(status_of(&e), &e.to_string()),
    }
}

/// The HTTP status of an operation that did not happen: the one place that decides it. A
/// wrong request is 400; anything the migration's state (or the store) did not allow, 409.
fn status_of(e: &OpError) -> StatusCode {
    match e {
        OpError::Invalid(_) => StatusCode::BAD_REQUEST,
        OpError::Refused(_)
        | OpError::Failed(_)
        | OpError::State(_)
        | OpError::Record(_)
        | OpError::Catalog(_) => StatusCode::CONFLICT,
    }
}

async fn pause(State(api): State<Arc<Api>>) -> Response {
    op_result(crate::ops::service::set_pause(&api.live.store, true).await)
}

async fn resume(State(api): State<Arc<Api>>) -> Response {
    op_result(crate::ops::service::set_pause(&api.live.store, false).await)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApproveBody {
    step: Option<usize>,
    #[serde(default)]
    note: String,
}

async fn approve(State(api): State<Arc<Api>>, body: axum::body::Bytes) -> Response {
    let body: ApproveBody = if body.iter().all(u8::is_ascii_whitespace) {
        ApproveBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => {
                return failure(
                    StatusCode::BAD_REQUEST,
                    &format!("the body must be JSON like {{\"step\": 3, \"note\": \"...\"}}: {e}"),
                )
            }
        }
    };
    let note = if body.note.is_empty() {
        "approved through the HTTP API".to_string()
    } else {
        body.note
    };
    op_result(
        crate::ops::service::approve(&api.live.plan, &api.live.store, body.step, &note)
            .await
            .map(|(_, m)| m),
    )
}
