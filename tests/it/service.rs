//! Operating a run like a service: the HTTP API (`--listen`), Prometheus metrics, pause and
//! resume, against real replica sets.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Child;
use std::time::{Duration, Instant};

use crate::common::env_refs as refs;
use crate::common::*;
use mongodb::bson::{doc, Document};
use serde_json::Value;

const TOKEN: &str = "api-T0ken-for-tests";

const MANUAL: &str = r#"
[options]
write_blocking = "source-and-destination"
max_lag = "2s"

[[steps]]
kind = "sync"

[[steps]]
kind = "commit"
approval = "manual"
timeout = "5m"
"#;

/// One HTTP/1.1 request (`Connection: close`): returns (status, headers, body).
pub(crate) fn http(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> std::io::Result<(u16, String, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let ct = if body.is_empty() {
        String::new()
    } else {
        "Content-Type: application/json\r\n".to_string()
    };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}{ct}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("malformed response: {text}")))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line: {head}")))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Ok((status, head.to_string(), body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

struct Api {
    port: u16,
}

impl Api {
    fn get_json(&self, path: &str) -> Value {
        let (status, _, body) =
            http(self.port, "GET", path, Some(TOKEN), "").expect("GET reaches the API");
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    fn post(&self, path: &str, body: &str) -> Value {
        let (status, _, text) =
            http(self.port, "POST", path, Some(TOKEN), body).expect("POST reaches the API");
        assert_eq!(status, 200, "POST {path}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("POST {path}: {e}: {text}"))
    }

    /// Scrapes `/metrics` and parses it as Prometheus text.
    fn scrape(&self) -> prometheus_parse::Scrape {
        let (status, head, body) =
            http(self.port, "GET", "/metrics", Some(TOKEN), "").expect("scrape");
        assert_eq!(status, 200, "{body}");
        assert!(
            head.to_ascii_lowercase().contains("text"),
            "content type: {head}"
        );
        let lines = body.lines().map(|l| Ok(l.to_string()));
        prometheus_parse::Scrape::parse(lines).expect("parse the metrics text")
    }

    async fn wait(&self, limit: Duration, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let v = self.get_json("/api/v1/progress");
            if pred(&v) {
                return v;
            }
            assert!(
                start.elapsed() < limit,
                "timed out after {limit:?} waiting for {what}; last progress: {v:#}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return s;
        }
        assert!(start.elapsed() < limit, "cutover run did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn output_of(mut child: Child) -> String {
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    format!("--- stdout\n{out}\n--- stderr\n{err}")
}

/// The issue's "done when": a run driven through the HTTP API only — progress, metrics
/// scraped and parsed, pause (source writes are not applied), resume (they are), approve
/// (the commit happens).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_is_driven_through_the_http_api() {
    let src = ReplicaSet::start().await;
    let dst = ReplicaSet::start().await;
    let sc = src.root_client().await;
    let dc = dst.root_client().await;
    let coll = sc.database("shop").collection::<Document>("orders");
    coll.insert_many((0..500).map(|i| doc! {"_id": i, "n": i, "pad": "x".repeat(100)}))
        .await
        .expect("seed");
    let (_dir, plan) = write_plan(&plan_text("api", MANUAL));
    let plan = plan.to_str().expect("utf-8 path").to_string();
    let env = root_env(&src, &dst);
    let mut env_api = env.clone();
    env_api.push(("CUTOVER_API_TOKEN", TOKEN.to_string()));
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let logs = tempfile::tempdir().expect("log dir");
    let log_file = logs.path().join("cutover.log");
    let log_arg = log_file.to_str().expect("utf-8").to_string();
    let mut child = spawn_cutover(
        &["run", &plan, "--listen", &listen, "--log-file", &log_arg],
        &refs(&env_api),
    );
    let api = Api { port };

    // The API comes up with the run; every request needs the token once it is set.
    let start = Instant::now();
    loop {
        match http(port, "GET", "/api/v1/progress", None, "") {
            Ok((status, _, body)) => {
                assert_eq!(status, 401, "a request without the token: {body}");
                break;
            }
            Err(_) if start.elapsed() < Duration::from_secs(60) => {
                assert!(
                    child.try_wait().expect("try_wait").is_none(),
                    "cutover run ended early: {}",
                    output_of(child)
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("the API did not come up: {e}"),
        }
    }
    let (status, _, _) =
        http(port, "GET", "/api/v1/progress", Some("wrong-token"), "").expect("request");
    assert_eq!(status, 401, "a wrong token is refused");

    // Progress: the same document as `cutover status --format json`.
    let p = api
        .wait(
            Duration::from_secs(120),
            "the commit waiting for approval",
            |v| v["phase"] == "waiting for approval" && v["can_commit"] == true,
        )
        .await;
    assert_eq!(p["plan"], "api");
    assert_eq!(p["collection_copy"]["copied_documents"], 500, "{p:#}");
    let cli = status_json(&plan, &env, &[]).await;
    let keys = |v: &Value| {
        v.as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert_eq!(
        keys(&p),
        keys(&cli),
        "the API and `status --format json` differ in shape"
    );
    assert!(p["insight"].is_object(), "progress explains the lag: {p:#}");

    // Metrics: scraped and parsed.
    let m = api.scrape();
    let lane = [("plan", "api"), ("lane", "forward")];
    assert_eq!(
        value(&m, "cutover_copied_documents_total", &lane),
        Some(500.0)
    );
    assert!(value(&m, "cutover_copied_bytes_total", &lane).unwrap_or(0.0) > 50_000.0);
    assert_eq!(value(&m, "cutover_can_commit", &lane), Some(1.0));
    assert!(
        value(&m, "cutover_lag_seconds", &lane).is_some(),
        "lag is exported"
    );
    assert!(value(&m, "cutover_events_read_total", &lane).is_some());
    assert!(value(&m, "cutover_events_applied_total", &lane).is_some());
    assert_eq!(
        value(
            &m,
            "cutover_write_blocked",
            &[("plan", "api"), ("cluster", "destination")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &m,
            "cutover_write_blocked",
            &[("plan", "api"), ("cluster", "source")]
        ),
        Some(0.0)
    );

    // Pause: the runner stops applying at a checkpoint; source writes are not applied.
    let r = api.post("/api/v1/pause", "");
    assert_eq!(r["ok"], true, "{r}");
    let p = api
        .wait(Duration::from_secs(30), "the pause", |v| {
            v["state"] == "PAUSED" && v["phase"] == "paused"
        })
        .await;
    assert!(p["paused"].is_object(), "{p:#}");
    let applied_at_pause = value(&api.scrape(), "cutover_events_applied_total", &lane);
    assert!(applied_at_pause.is_some(), "events applied is exported");
    coll.insert_many((1000..1100).map(|i| doc! {"_id": i, "during": "pause"}))
        .await
        .expect("write during the pause");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let dcoll = dc.database("shop").collection::<Document>("orders");
    assert_eq!(
        dcoll
            .count_documents(doc! {"during": "pause"})
            .await
            .expect("count"),
        0,
        "a paused run applied source writes"
    );
    let p = api.get_json("/api/v1/progress");
    assert_eq!(p["state"], "PAUSED", "{p:#}");
    assert!(p["runner"].is_string(), "the runner keeps its lease: {p:#}");
    let m = api.scrape();
    assert_eq!(value(&m, "cutover_paused", &[("plan", "api")]), Some(1.0));
    assert_eq!(
        value(&m, "cutover_events_applied_total", &lane),
        applied_at_pause,
        "events were applied while paused"
    );

    // An approval while paused is recorded, but the commit waits for the resume.
    let r = api.post("/api/v1/approve", r#"{"note": "from the test"}"#);
    assert_eq!(r["ok"], true, "{r}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let p = api.get_json("/api/v1/progress");
    assert_eq!(
        p["state"], "PAUSED",
        "the commit started while paused: {p:#}"
    );
    assert!(
        p["blocked"].as_array().is_some_and(|b| b.len() == 1),
        "{p:#}"
    );

    // Resume: the writes are applied, then the approved commit happens.
    let r = api.post("/api/v1/resume", "");
    assert_eq!(r["ok"], true, "{r}");
    let mut committed = false;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(120) {
        match http(port, "GET", "/api/v1/progress", Some(TOKEN), "") {
            Ok((200, _, body)) => {
                let v: Value = serde_json::from_str(&body).expect("json");
                if v["state"] == "COMMITTED" {
                    committed = true;
                    break;
                }
            }
            _ => break, // the run ended and the API with it
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let exit = wait_exit(&mut child, Duration::from_secs(120));
    let out = output_of(child);
    assert!(exit.success(), "cutover run failed: {out}");
    assert_eq!(
        dcoll
            .count_documents(doc! {"during": "pause"})
            .await
            .expect("count"),
        100,
        "writes made during the pause were applied after the resume"
    );
    assert_same_data(&sc, &dc, "__cutover").await;
    let after = status_json(&plan, &env, &[]).await;
    assert_eq!(after["state"], "COMMITTED", "{after:#}");
    assert!(
        committed || out.contains("committed"),
        "the commit was seen through the API or reported: {out}"
    );
    // `--log-file`: JSON lines, credentials redacted as on stderr.
    let text =
        std::fs::read_to_string(&log_file).expect("the log file (a link to the current one)");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {e}: {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "Step started."),
        "{text}"
    );
    // Approved through the API in the runner's own process: the approval is logged once as
    // recorded (by the API) and once as seen (by the waiting commit), not twice alike.
    let count = |m: &str| lines.iter().filter(|l| l["fields"]["message"] == m).count();
    assert_eq!(count("Commit approved."), 1, "{text}");
    assert_eq!(count("Commit approval recorded."), 1, "{text}");
    for secret in [ROOT_PASSWORD, TOKEN] {
        assert!(
            !text.contains(secret),
            "the log file holds a secret: {text}"
        );
    }
    // What was copied stays visible after the commit.
    assert_eq!(
        after["collection_copy"]["copied_documents"], 500,
        "{after:#}"
    );
}

/// A non-loopback address without a token is refused before anything connects.
#[test]
fn a_public_listen_address_needs_a_token() {
    let (_dir, plan) = write_plan(&plan_text("api", MANUAL));
    let plan = plan.to_str().expect("utf-8 path");
    let env = [
        ("SOURCE_URI", "mongodb://127.0.0.1:1/?replicaSet=a"),
        ("DESTINATION_URI", "mongodb://127.0.0.1:2/?replicaSet=b"),
    ];
    let o = run_cutover(&["run", plan, "--listen", "0.0.0.0:0"], &env);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("CUTOVER_API_TOKEN") && err.contains("not a loopback address"),
        "{}",
        show(&o)
    );
}
