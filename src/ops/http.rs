//! `cutover run --listen ADDR`: an HTTP API while the run lasts (the shape of mongosync's).
//!
//! - `GET /api/v1/progress`: the document `cutover status PLAN --format json` prints;
//! - `GET /metrics`: Prometheus/OpenMetrics text ([`crate::ops::metrics`]);
//! - `GET /api/v1/history[?since=T]`: the run's recent history, one point a second (lag,
//!   events read and applied per second, copy throughput, stage busy fractions), kept in
//!   memory for two hours ([`crate::ops::history`]); `since` (seconds since the Unix epoch)
//!   returns only later points;
//! - `GET /api/v1/copy`: the copy's progress per namespace;
//! - `POST /api/v1/pause`, `/api/v1/resume`, `/api/v1/approve` (optional JSON body
//!   `{"step": N, "note": "..."}`): the same as `cutover pause|resume|approve PLAN`;
//! - `GET /`: the progress page (HTML, CSS and JS built into the binary, `page/`), which
//!   draws the above every second; its static files are under `/assets/`.
//!
//! Loopback addresses only, unless `CUTOVER_API_TOKEN` is set; when it is set, every request
//! must carry `Authorization: Bearer <token>`, on any address — except the page and its
//! static files, which hold no data (the page asks for the token and sends it).
//! Request bodies are limited to [`BODY_LIMIT`] bytes.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
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
        .route("/", get(page_html))
        .route("/assets/{file}", get(asset))
        .route("/api/v1/progress", get(progress))
        .route("/api/v1/history", get(history))
        .route("/api/v1/copy", get(copy))
        .route("/metrics", get(metrics))
        .route("/api/v1/pause", post(pause))
        .route("/api/v1/resume", post(resume))
        .route("/api/v1/approve", post(approve))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(api.clone(), auth))
        .with_state(api);
    if let Some(a) = addr {
        tracing::info!(address = %a, page = %format!("http://{a}/"), "HTTP API listening (progress page at /, /api/v1/progress, /metrics).");
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

/// The largest request body accepted (the API's bodies are a few bytes of JSON).
pub const BODY_LIMIT: usize = 64 * 1024;

/// Whether a request is for the page or its static files (served without the token: they
/// hold no data, and a browser cannot send a bearer header when it opens a page).
fn public(method: &Method, path: &str) -> bool {
    (method == Method::GET || method == Method::HEAD)
        && (path == "/"
            || path
                .strip_prefix("/assets/")
                .is_some_and(|f| asset_of(f).is_some()))
}

async fn auth(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    if public(req.method(), req.uri().path()) {
        return next.run(req).await;
    }
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

const ENDPOINTS: &str =
    "/ (the progress page), GET /api/v1/progress, GET /api/v1/history, GET /api/v1/copy, \
     GET /metrics, POST /api/v1/pause, POST /api/v1/resume, POST /api/v1/approve";

async fn not_found() -> Response {
    failure(
        StatusCode::NOT_FOUND,
        &format!("no such endpoint; see {ENDPOINTS}"),
    )
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> Response {
    let allow = match uri.path() {
        "/api/v1/pause" | "/api/v1/resume" | "/api/v1/approve" => "POST",
        _ => "GET, HEAD",
    };
    let mut r = failure(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!(
            "`{method} {}` is not allowed; use {allow} (endpoints: {ENDPOINTS})",
            uri.path()
        ),
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// The progress page's files, built into the binary: (content type, body).
fn asset_of(file: &str) -> Option<(&'static str, &'static str)> {
    Some(match file {
        "page.js" => (
            "text/javascript; charset=utf-8",
            include_str!("page/page.js"),
        ),
        "page.css" => ("text/css; charset=utf-8", include_str!("page/page.css")),
        // uPlot 1.6.32 (MIT, `page/uPlot.LICENSE`), the charts.
        "uPlot.iife.min.js" => (
            "text/javascript; charset=utf-8",
            include_str!("page/uPlot.iife.min.js"),
        ),
        "uPlot.min.css" => (
            "text/css; charset=utf-8",
            include_str!("page/uPlot.min.css"),
        ),
        "uPlot.LICENSE" => (
            "text/plain; charset=utf-8",
            include_str!("page/uPlot.LICENSE"),
        ),
        _ => return None,
    })
}

/// Only this origin's own files, no inline script: the page works offline and loads nothing
/// from elsewhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn page_headers(content_type: &'static str) -> [(header::HeaderName, &'static str); 4] {
    [
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::CACHE_CONTROL, "no-cache"),
    ]
}

async fn page_html(State(api): State<Arc<Api>>) -> Response {
    // The page asks for the token before its first request when the API needs one.
    let auth = if api.token.is_some() {
        "bearer"
    } else {
        "none"
    };
    let html = include_str!("page/index.html").replace("{{AUTH}}", auth);
    (page_headers("text/html; charset=utf-8"), html).into_response()
}

async fn asset(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    match asset_of(&file) {
        Some((ct, body)) => (page_headers(ct), body).into_response(),
        None => not_found().await,
    }
}

async fn history(State(api): State<Arc<Api>>, RawQuery(query): RawQuery) -> Response {
    let mut since = None;
    for pair in query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        match pair.split_once('=') {
            Some(("since", v)) => match v.parse::<f64>() {
                Ok(t) if t.is_finite() => since = Some(t),
                _ => {
                    return failure(
                        StatusCode::BAD_REQUEST,
                        &format!("`since` must be a number of seconds since the Unix epoch, not `{v}`"),
                    )
                }
            },
            _ => {
                return failure(
                    StatusCode::BAD_REQUEST,
                    &format!("unknown query parameter `{pair}`; the one parameter is `since` (seconds since the Unix epoch)"),
                )
            }
        }
    }
    match api.live.history.lock() {
        Ok(h) => Json(h.view(since)).into_response(),
        Err(_) => failure(StatusCode::INTERNAL_SERVER_ERROR, "history unavailable"),
    }
}

async fn copy(State(api): State<Arc<Api>>) -> Response {
    match api.live.copy.lock() {
        Ok(t) => Json(json!({
            "namespaces": t.namespaces,
            "updated": t.updated.map(|u| mongodb::bson::DateTime::from_system_time(u).try_to_rfc3339_string().ok()),
        }))
        .into_response(),
        Err(_) => failure(StatusCode::INTERNAL_SERVER_ERROR, "copy progress unavailable"),
    }
}

fn failure(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(json!({"ok": false, "error": crate::base::redact::scrub(message)})),
    )
        .into_response()
}

/// How long a read endpoint waits for the state store: the page polls every second and a
/// scrape has its own timeout; a store that does not answer must not hang either (it is
/// exactly when the lease is unconfirmed that people look).
const STORE_READ_LIMIT: Duration = Duration::from_secs(3);

async fn progress(State(api): State<Arc<Api>>) -> Response {
    // The runner's own view of its lease beats the stored one: it knows the last error.
    let unconfirmed = crate::state::lease::process_unconfirmed();
    let read = match tokio::time::timeout(
        STORE_READ_LIMIT,
        crate::ops::status::load_view(&api.live.store, &api.live.plan),
    )
    .await
    {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "the state store on the destination did not answer within {}",
            humantime::format_duration(STORE_READ_LIMIT)
        )),
    };
    match read {
        Ok(mut v) => {
            if unconfirmed.is_some() {
                v.lease_unconfirmed = unconfirmed;
            }
            Json(v).into_response()
        }
        // The state store does not answer: say so, and what the runner does about it.
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "ok": false,
                "error": crate::base::redact::scrub(&e),
                "lease_unconfirmed": unconfirmed,
            })),
        )
            .into_response(),
    }
}

async fn metrics(State(api): State<Arc<Api>>) -> Response {
    // Without the store (it does not answer), the metrics of this process still render.
    let run = tokio::time::timeout(STORE_READ_LIMIT, api.live.store.record())
        .await
        .ok()
        .and_then(Result::ok);
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

async fn approve(
    State(api): State<Arc<Api>>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            return failure(
                e.status(),
                &format!("the request body was not read ({e}); at most {BODY_LIMIT} bytes of JSON like {{\"step\": 3, \"note\": \"...\"}}"),
            )
        }
    };
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
