//! The progress page (`GET /` of `cutover run --listen`) in a real headless Chromium against a
//! real reversible run; the Grafana dashboard's queries against a real `/metrics`; bad input
//! to the new endpoints.
//!
//! The browser test needs Chromium (Debian's `chromium`; `scripts/test.sh` installs it, or
//! set `CHROME=/path/to/chrome`): without it the test FAILS, it never skips.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
use headless_chrome::{Browser, LaunchOptions, Tab};
use mongodb::bson::{doc, Document};
use mongodb::Client;
use serde_json::Value;

use crate::common::env_refs as refs;
use crate::common::*;
use crate::service::http;

const TOKEN: &str = "page-T0ken-for-tests";

/// Forward copy and replication, a manual commit, replication back, a manual final commit.
const REVERSIBLE_MANUAL: &str = r#"
[options]
reversible = true
write_blocking = "source-and-destination"
max_lag = "2s"

[[steps]]
kind = "sync"

[[steps]]
kind = "commit"
approval = "manual"
timeout = "10m"

[[steps]]
kind = "reverse"

[[steps]]
kind = "commit"
approval = "manual"
timeout = "10m"
"#;

/// Where the screenshots go: kept after the test (printed), under cargo's target directory.
fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("page-screenshots");
    std::fs::create_dir_all(&dir).expect("create the screenshot directory");
    dir
}

/// The Chromium binary: `$CHROME`, else Debian's `chromium`. Missing, the test fails.
fn chromium() -> PathBuf {
    let on_path = || {
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|d| d.join("chromium"))
            .find(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
    };
    let p = std::env::var_os("CHROME")
        .map(PathBuf::from)
        .unwrap_or_else(on_path);
    assert!(
        p.exists(),
        "this test needs Chromium, and {} does not exist.\n\
         Run ./scripts/test.sh (it installs Debian's `chromium`), `apt-get install chromium`, \
         or set CHROME=/path/to/chrome.",
        p.display()
    );
    p
}

fn launch() -> Browser {
    let opts = LaunchOptions::default_builder()
        .path(Some(chromium()))
        // Tests run as root in containers, where Chromium's sandbox cannot start.
        .sandbox(false)
        .window_size(Some((1400, 2000)))
        .idle_browser_timeout(Duration::from_secs(900))
        .args(vec![
            OsStr::new("--disable-dev-shm-usage"),
            OsStr::new("--no-first-run"),
        ])
        .build()
        .expect("Chromium launch options");
    Browser::new(opts).expect("start headless Chromium")
}

/// Console errors, uncaught exceptions and failed loads the page reported.
#[derive(Clone, Default)]
struct Console(Arc<Mutex<Vec<String>>>);

impl Console {
    fn attach(tab: &Arc<Tab>) -> Console {
        use headless_chrome::protocol::cdp::types::Event;
        let c = Console::default();
        let sink = c.0.clone();
        tab.enable_log().expect("enable the Log domain");
        tab.enable_runtime().expect("enable the Runtime domain");
        tab.add_event_listener(Arc::new(move |e: &Event| {
            let line = match e {
                Event::LogEntryAdded(e) => {
                    let en = &e.params.entry;
                    matches!(
                        en.level,
                        headless_chrome::protocol::cdp::Log::LogEntryLevel::Error
                    )
                    .then(|| format!("log: {} ({:?})", en.text, en.url))
                }
                Event::RuntimeExceptionThrown(e) => Some(format!(
                    "exception: {} {:?}",
                    e.params.exception_details.text,
                    e.params
                        .exception_details
                        .exception
                        .as_ref()
                        .and_then(|x| x.description.clone())
                )),
                Event::RuntimeConsoleAPICalled(e) => matches!(
                    e.params.Type,
                    headless_chrome::protocol::cdp::Runtime::ConsoleAPICalledEventTypeOption::Error
                )
                .then(|| format!("console.error: {:?}", e.params.args)),
                _ => None,
            };
            if let Some(l) = line {
                if let Ok(mut v) = sink.lock() {
                    v.push(l);
                }
            }
        }))
        .expect("listen to the page's console");
        c
    }

    fn errors(&self) -> Vec<String> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

/// Evaluates `expr` in the page and returns its value (through JSON).
fn js(tab: &Tab, expr: &str) -> Value {
    let wrapped = format!("JSON.stringify((() => {{ try {{ return ({expr}); }} catch (e) {{ return {{jsError: String(e)}}; }} }})())");
    let r = tab
        .evaluate(&wrapped, false)
        .unwrap_or_else(|e| panic!("evaluate `{expr}`: {e}"));
    match r.value {
        Some(Value::String(s)) => serde_json::from_str(&s).unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

/// What the page shows now, read from its DOM (what a person sees).
const SHOWN: &str = r#"{
  state: document.getElementById('state').textContent,
  phase: document.getElementById('phase').textContent,
  copy: Number(document.getElementById('copy-fill').dataset.fraction || 'NaN'),
  copyText: document.getElementById('copy-text').textContent,
  namespaces: [...document.querySelectorAll('#namespaces tbody tr')].map(r => r.dataset.namespace),
  namespacesDone: [...document.querySelectorAll('#namespaces tbody .fill')].every(f => f.dataset.fraction === '1.0000'),
  blocked: [...document.querySelectorAll('#alerts .blocked')].map(b => ({cluster: b.dataset.cluster, text: b.textContent})),
  approveVisible: !document.getElementById('approve').hidden,
  pauseVisible: !document.getElementById('pause').hidden,
  resumeVisible: !document.getElementById('resume').hidden,
  steps: [...document.querySelectorAll('#steps li')].map(l => l.dataset.status + ' ' + l.textContent),
  lag: document.getElementById('lag').textContent,
  window: document.getElementById('window').textContent,
  windowPhases: document.getElementById('window-phases').textContent,
  lagPoints: window.cutoverPage && window.cutoverPage.charts.lag ? window.cutoverPage.charts.lag.data[1].filter(v => v !== null).length : 0,
  eventPoints: window.cutoverPage && window.cutoverPage.charts.events ? window.cutoverPage.charts.events.data[2].filter(v => v !== null && v > 0).length : 0,
  lagCanvas: !!document.querySelector('#chart-lag canvas'),
  conn: document.getElementById('conn').textContent,
  alerts: document.getElementById('alerts').textContent
}"#;

/// Clicks Approve until its confirmation is open. The page redraws every second, and the
/// browser clicks at the position it found the button at: on a loaded machine the layout can
/// move in between (the confirmation never opened once in a whole-suite run); a person would
/// click again, and so does this.
fn open_approve_dialog(tab: &Tab) {
    let start = Instant::now();
    loop {
        if let Ok(b) = tab.find_element("#approve") {
            let _ = b.click();
        }
        std::thread::sleep(Duration::from_millis(500));
        if js(tab, "!!document.querySelector('#approve-dialog[open]')") == Value::Bool(true) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the approve confirmation never opened; the page shows: {:#}",
            shown(tab)
        );
    }
}

fn shown(tab: &Tab) -> Value {
    js(tab, SHOWN)
}

/// Polls what the page shows until `pred` holds; fails naming `what` after `limit`.
fn wait_page(tab: &Tab, limit: Duration, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let v = shown(tab);
        if pred(&v) {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for the page to show {what}; it shows: {v:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn screenshot(tab: &Tab, name: &str) -> PathBuf {
    let png = tab
        .capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true)
        .expect("capture a screenshot");
    assert!(png.len() > 10_000, "a screenshot of {} bytes", png.len());
    let path = artifacts().join(name);
    std::fs::write(&path, png).expect("write the screenshot");
    eprintln!("page screenshot: {}", path.display());
    path
}

async fn seed(c: &Client, db: &str, coll: &str, n: i64, pad: usize) {
    let coll = c.database(db).collection::<Document>(coll);
    let docs: Vec<Document> = (0..n)
        .map(|i| doc! {"_id": i, "n": i, "pad": "x".repeat(pad)})
        .collect();
    for chunk in docs.chunks(5000) {
        coll.insert_many(chunk.to_vec()).await.expect("seed");
    }
}

/// Writes to `shop.orders` on the source until told to stop (or refused: the commit blocks
/// writes), a few hundred a second, so the lane has events to apply and a lag to show.
fn writer(src: Client, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let coll = src.database("shop").collection::<Document>("orders");
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let batch: Vec<Document> = (0..20)
                .map(|i| doc! {"_id": format!("w{n}-{i}"), "w": n as i64})
                .collect();
            if coll.insert_many(batch).await.is_err() {
                break;
            }
            n += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        n
    })
}

fn wait_api(port: u16, child: &mut std::process::Child) {
    let start = Instant::now();
    while http(port, "GET", "/", None, "").is_err() {
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "cutover run ended before its API came up"
        );
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the API did not come up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn progress(port: u16) -> Value {
    let (status, _, body) =
        http(port, "GET", "/api/v1/progress", Some(TOKEN), "").expect("GET /api/v1/progress");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("progress JSON")
}

/// The issue's "done when": a person follows a reversible run on the page — copy, lag,
/// approval, commit, reverse — in a real browser, with the API token.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_progress_page_follows_a_reversible_run_in_chromium() {
    let chrome = chromium();
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let sc = src.root_client().await;
    let dc = dst.root_client().await;
    seed(&sc, "shop", "orders", 20_000, 300).await;
    seed(&sc, "shop", "customers", 4_000, 200).await;
    seed(&sc, "app", "log", 6_000, 200).await;
    let (dir, plan) = write_plan(&plan_text("page", REVERSIBLE_MANUAL));
    let plan = plan.to_str().expect("utf-8 path").to_string();
    let mut env = root_env(&src, &dst);
    env.push(("CUTOVER_API_TOKEN", TOKEN.to_string()));
    // The copy stops at its 6th read batch until the test lets it go: the page is seen
    // mid-copy, then the bar moves. The first commit stops inside its write-blocked window:
    // the page is seen mid-commit.
    env.push((
        "CUTOVER_TEST_PAUSE_AT",
        "copy.reading@6,commit.blocked@1".into(),
    ));
    env.push(("CUTOVER_TEST_PAUSE_DIR", dir.path().display().to_string()));
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = spawn_cutover(
        &[
            "run",
            &plan,
            "--listen",
            &listen,
            "--copy-concurrency",
            "1",
            "--docs-per-range",
            "2000",
        ],
        &refs(&env),
    );
    wait_pause_file(&dir.path().join("copy.reading.reached"), &mut child).await;
    wait_api(port, &mut child);

    eprintln!("browser: {}", chrome.display());
    let browser = launch();
    let tab = browser.new_tab().expect("a tab");
    let console = Console::attach(&tab);
    tab.navigate_to(&format!("http://127.0.0.1:{port}/"))
        .expect("open the page")
        .wait_until_navigated()
        .expect("the page loads");

    // With a token set, the page asks for it before it reads anything.
    tab.wait_for_element("#token-dialog[open] #token-input")
        .expect("the page asks for the token")
        .click()
        .expect("focus the token field");
    tab.type_str(TOKEN).expect("type the token");
    tab.find_element("#token-save")
        .expect("the token dialog's button")
        .click()
        .expect("submit the token");

    // Mid-copy: the phase, a partial bar, the namespaces.
    let mid = wait_page(&tab, Duration::from_secs(60), "the copy under way", |v| {
        v["phase"] == "copying"
            && v["copy"].as_f64().is_some_and(|f| f > 0.0 && f < 1.0)
            && v["namespaces"].as_array().is_some_and(|n| !n.is_empty())
            && v["lagCanvas"] == true
    });
    assert_eq!(mid["state"], "RUNNING", "{mid:#}");
    assert!(
        mid["copyText"]
            .as_str()
            .is_some_and(|t| t.contains("documents")),
        "{mid:#}"
    );
    let first = mid["copy"].as_f64().expect("a fraction");
    screenshot(&tab, "page-mid-copy.png");

    // Let the copy go on, with an application writing: the bar moves, then fills.
    let stop = Arc::new(AtomicBool::new(false));
    let app = writer(src.app_client().await, stop.clone());
    std::fs::write(dir.path().join("copy.reading.go"), b"").expect("release the copy");
    let moved = wait_page(&tab, Duration::from_secs(120), "the copy bar moving", |v| {
        v["copy"].as_f64().is_some_and(|f| f > first)
    });
    eprintln!(
        "copy bar: {first} → {} (and on to 1)",
        moved["copy"].as_f64().unwrap_or(0.0)
    );

    // The manual commit waits: the approve button, the write-blocked destination with the
    // command that releases it, a lag chart with points, events applied per second.
    let waiting = wait_page(
        &tab,
        Duration::from_secs(180),
        "the commit waiting for approval",
        |v| {
            v["phase"] == "waiting for approval"
                && v["approveVisible"] == true
                && v["copy"].as_f64() == Some(1.0)
                && v["namespacesDone"] == true
                && v["lagPoints"].as_u64().is_some_and(|n| n >= 3)
                && v["eventPoints"].as_u64().is_some_and(|n| n >= 1)
        },
    );
    let blocked = waiting["blocked"].as_array().expect("blocked clusters");
    assert!(
        blocked.iter().any(|b| b["cluster"] == "destination"
            && b["text"].as_str().is_some_and(|t| t.contains(&format!(
                "cutover unblock {plan} --cluster destination --yes"
            )))),
        "the page shows the blocked destination and its release command: {waiting:#}"
    );
    assert!(
        waiting["steps"][0]
            .as_str()
            .is_some_and(|s| s.starts_with("done")),
        "{waiting:#}"
    );
    screenshot(&tab, "page-commit-waiting.png");
    stop.store(true, Ordering::Relaxed);
    let batches = app.await.expect("writer");
    assert!(batches > 0, "the application wrote during the run");

    // Pause and resume on the page (the commit keeps waiting meanwhile).
    assert_eq!(waiting["pauseVisible"], true, "{waiting:#}");
    tab.find_element("#pause")
        .expect("the pause button")
        .click()
        .expect("click pause");
    let paused = wait_page(&tab, Duration::from_secs(30), "the pause", |v| {
        v["state"] == "PAUSED" && v["resumeVisible"] == true && v["pauseVisible"] == false
    });
    assert!(
        paused["alerts"]
            .as_str()
            .is_some_and(|a| a.contains("Paused since")),
        "{paused:#}"
    );
    assert!(progress(port)["paused"].is_object());
    tab.find_element("#resume")
        .expect("the resume button")
        .click()
        .expect("click resume");
    wait_page(&tab, Duration::from_secs(30), "the resume", |v| {
        v["state"] == "RUNNING"
            && v["phase"] == "waiting for approval"
            && v["approveVisible"] == true
            && v["pauseVisible"] == true
    });
    assert!(progress(port)["paused"].is_null());

    // Approve on the page, behind its confirmation: the commit happens.
    open_approve_dialog(&tab);
    tab.wait_for_element("#approve-dialog[open] #approve-confirm")
        .expect("the confirmation")
        .click()
        .expect("confirm");
    // Inside the write-blocked window: committing, both clusters blocked, each with the
    // command that releases it.
    wait_pause_file(&dir.path().join("commit.blocked.reached"), &mut child).await;
    let committing = wait_page(&tab, Duration::from_secs(30), "the commit under way", |v| {
        v["state"] == "COMMITTING"
            && v["approveVisible"] == false
            && v["blocked"].as_array().is_some_and(|b| b.len() == 2)
    });
    for cluster in ["source", "destination"] {
        assert!(
            committing["blocked"]
                .as_array()
                .is_some_and(|b| b.iter().any(|c| c["cluster"] == cluster
                    && c["text"].as_str().is_some_and(|t| t
                        .contains(&format!("cutover unblock {plan} --cluster {cluster} --yes"))))),
            "{committing:#}"
        );
    }
    screenshot(&tab, "page-mid-commit.png");
    std::fs::write(dir.path().join("commit.blocked.go"), b"").expect("let the commit go on");
    let reversing = wait_page(
        &tab,
        Duration::from_secs(180),
        "the commit done and the reverse replicating",
        |v| {
            v["steps"][1]
                .as_str()
                .is_some_and(|s| s.starts_with("done"))
                // `1.032s`, with its phases below: `block the source 46 ms, …`
                && v["window"].as_str().is_some_and(|w| w.ends_with('s'))
                && v["windowPhases"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("block the source"))
                && v["blocked"]
                    .as_array()
                    .is_some_and(|b| b.iter().any(|c| c["cluster"] == "source"))
        },
    );
    eprintln!("after the commit: {reversing:#}");
    let p = progress(port);
    assert!(p["write_blocked_window_ms"].is_i64(), "{p:#}");
    screenshot(&tab, "page-reverse.png");

    // The final commit waits for approval too; approve it on the page.
    wait_page(
        &tab,
        Duration::from_secs(180),
        "the final commit waiting for approval",
        |v| v["phase"] == "waiting for approval" && v["approveVisible"] == true,
    );
    // Every second so far went without a console error (checked before the run ends: then
    // the page reports the runner unreachable, as it should).
    let errors = console.errors();
    assert!(errors.is_empty(), "the page logged errors: {errors:#?}");
    // It loaded nothing from anywhere else.
    let foreign = js(
        &tab,
        "performance.getEntriesByType('resource').map(e => e.name).filter(n => !n.startsWith(location.origin))",
    );
    assert_eq!(foreign, serde_json::json!([]), "requests to other origins");
    open_approve_dialog(&tab);
    tab.wait_for_element("#approve-dialog[open] #approve-confirm")
        .expect("the confirmation")
        .click()
        .expect("confirm");

    let start = Instant::now();
    let exit = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "the run did not finish after the final approval"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let out = finish_child(child).await;
    assert!(exit.success(), "cutover run failed: {}", show(&out));
    let after = status_json(&plan, &root_env(&src, &dst), &[]).await;
    assert_eq!(after["state"], "COMMITTED", "{after:#}");
    assert_same_data(&sc, &dc, "__cutover").await;
    // The page says the runner is gone rather than showing stale figures as live.
    wait_page(
        &tab,
        Duration::from_secs(30),
        "the runner unreachable",
        |v| v["conn"] == "unreachable",
    );
    eprintln!("screenshots in {}", artifacts().display());
}

/// Every metric the Grafana dashboard (`contrib/grafana/cutover.json`) queries, and every
/// label it groups or names series by, is in one real `/metrics` response of a real run.
/// The same run takes bad input on the new endpoints, which changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_queries_real_metrics_and_bad_input_changes_nothing() {
    // The dashboard's queries, and the metric and label names they use.
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("contrib/grafana/cutover.json");
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("the dashboard"))
        .expect("JSON");
    let mut exprs = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().expect("targets") {
            exprs.push((
                t["expr"].as_str().expect("a PromQL query").to_string(),
                t["legendFormat"].as_str().unwrap_or("").to_string(),
            ));
        }
    }
    assert!(exprs.len() >= 10, "{exprs:?}");
    let metric_re = regex::Regex::new(r"\bcutover_[a-z_]+\b").expect("regex");
    let by_re = regex::Regex::new(r"\bby \(([^)]*)\)").expect("regex");
    let legend_re = regex::Regex::new(r"\{\{\s*(\w+)\s*\}\}").expect("regex");
    let mut metrics = std::collections::BTreeSet::new();
    let mut labels = std::collections::BTreeSet::new();
    for (e, legend) in &exprs {
        metrics.extend(metric_re.find_iter(e).map(|m| m.as_str().to_string()));
        for c in by_re.captures_iter(e) {
            labels.extend(c[1].split(',').map(|l| l.trim().to_string()));
        }
        labels.extend(legend_re.captures_iter(legend).map(|c| c[1].to_string()));
    }
    for needed in [
        "cutover_lag_seconds",
        "cutover_copied_bytes_total",
        "cutover_stage_busy_ratio",
        "cutover_can_commit",
        "cutover_write_blocked",
        "cutover_commit_window_seconds",
    ] {
        assert!(metrics.contains(needed), "the dashboard shows {needed}");
    }

    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let sc = src.root_client().await;
    let dc = dst.root_client().await;
    seed(&sc, "shop", "orders", 3_000, 200).await;
    let (_dir, plan) = write_plan(&plan_text("dash", REVERSIBLE_MANUAL));
    let plan = plan.to_str().expect("utf-8 path").to_string();
    let mut env = root_env(&src, &dst);
    env.push(("CUTOVER_API_TOKEN", TOKEN.to_string()));
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = spawn_cutover(&["run", &plan, "--listen", &listen], &refs(&env));
    wait_api(port, &mut child);
    let stop = Arc::new(AtomicBool::new(false));
    let app = writer(src.app_client().await, stop.clone());
    let start = Instant::now();
    while progress(port)["phase"] != "waiting for approval" {
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "the commit did not wait for approval: {:#}",
            progress(port)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Bad input: each gets a clear status and a JSON error, and changes nothing.
    let before = progress(port);
    let bad: &[(&str, &str, Option<&str>, String, u16)] = &[
        ("GET", "/api/v1/nope", Some(TOKEN), String::new(), 404),
        ("GET", "/api/v1/nope", None, String::new(), 401),
        ("GET", "/assets/nope.js", Some(TOKEN), String::new(), 404),
        ("GET", "/api/v1/history", None, String::new(), 401),
        ("GET", "/api/v1/history", Some("wrong"), String::new(), 401),
        ("GET", "/api/v1/copy", None, String::new(), 401),
        (
            "GET",
            "/api/v1/history?since=abc",
            Some(TOKEN),
            String::new(),
            400,
        ),
        (
            "GET",
            "/api/v1/history?since=1e999",
            Some(TOKEN),
            String::new(),
            400,
        ),
        (
            "GET",
            "/api/v1/history?limit=5",
            Some(TOKEN),
            String::new(),
            400,
        ),
        ("POST", "/api/v1/history", Some(TOKEN), String::new(), 405),
        ("DELETE", "/api/v1/copy", Some(TOKEN), String::new(), 405),
        ("GET", "/api/v1/approve", Some(TOKEN), String::new(), 405),
        ("PUT", "/", Some(TOKEN), String::new(), 405),
        ("POST", "/", None, String::new(), 401),
        ("POST", "/api/v1/approve", None, String::new(), 401),
        ("POST", "/api/v1/approve", Some("wrong"), String::new(), 401),
        ("POST", "/api/v1/pause", None, String::new(), 401),
        (
            "POST",
            "/api/v1/approve",
            Some(TOKEN),
            r#"{"step": "#.into(),
            400,
        ),
        (
            "POST",
            "/api/v1/approve",
            Some(TOKEN),
            r#"{"bogus": 1}"#.into(),
            400,
        ),
        (
            "POST",
            "/api/v1/approve",
            Some(TOKEN),
            r#"{"step": 0}"#.into(),
            400,
        ),
        (
            "POST",
            "/api/v1/approve",
            Some(TOKEN),
            format!(r#"{{"note": "{}"}}"#, "x".repeat(200_000)),
            413,
        ),
    ];
    for (method, path, token, body, want) in bad {
        let (status, head, text) = http(port, method, path, *token, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        assert_eq!(status, *want, "{method} {path}: {head}\n{text}");
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"));
        assert_eq!(v["ok"], false, "{method} {path}: {v}");
        assert!(
            v["error"].as_str().is_some_and(|e| e.len() > 10),
            "{method} {path}: a clear error: {v}"
        );
        if *want == 405 {
            assert!(head.to_ascii_lowercase().contains("allow:"), "{head}");
        }
    }
    // The page itself needs no token (it holds no data), and says it will ask for one.
    let (status, head, html) = http(port, "GET", "/", None, "").expect("GET /");
    assert_eq!(status, 200, "{head}");
    assert!(
        html.contains(r#"name="cutover-auth" content="bearer""#),
        "{html}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("content-security-policy: default-src 'none'"),
        "{head}"
    );
    let after = progress(port);
    assert_eq!(after["phase"], "waiting for approval", "{after:#}");
    assert_eq!(after["state"], before["state"], "{after:#}");
    assert!(after["paused"].is_null(), "{after:#}");
    let approvals = dc
        .database("__cutover")
        .collection::<Document>("approvals")
        .count_documents(doc! {})
        .await
        .expect("count approvals");
    assert_eq!(approvals, 0, "bad input approved a commit");

    // History: points every second, the lag among them; `since` returns only later ones.
    let start = Instant::now();
    let h = loop {
        let (status, _, body) =
            http(port, "GET", "/api/v1/history", Some(TOKEN), "").expect("history");
        assert_eq!(status, 200, "{body}");
        let h: Value = serde_json::from_str(&body).expect("history JSON");
        let lags = h["lag_seconds"]
            .as_array()
            .map_or(0, |l| l.iter().filter(|v| v.is_number()).count());
        if lags >= 5 {
            break h;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no 5 seconds of lag in the history: {h}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let t = h["t"].as_array().expect("t");
    assert_eq!(h["lag_seconds"].as_array().map(Vec::len), Some(t.len()));
    assert!(h["kept_seconds"].as_u64().is_some_and(|k| k >= 3600), "{h}");
    assert!(
        t.windows(2)
            .all(|w| w[1].as_f64().unwrap_or(0.0) > w[0].as_f64().unwrap_or(0.0)),
        "{h}"
    );
    assert!(
        h["events_applied_per_second"]
            .as_array()
            .is_some_and(|l| l.iter().any(|v| v.as_f64().is_some_and(|r| r > 0.0))),
        "the application's writes are applied: {h}"
    );
    let last = t[t.len() - 1].as_f64().expect("a time");
    let (_, _, body) = http(
        port,
        "GET",
        &format!("/api/v1/history?since={last}"),
        Some(TOKEN),
        "",
    )
    .expect("history since");
    let later: Value = serde_json::from_str(&body).expect("JSON");
    assert!(
        later["t"]
            .as_array()
            .is_some_and(|l| l.iter().all(|x| x.as_f64().is_some_and(|x| x > last))),
        "{later}"
    );
    let (_, _, body) = http(port, "GET", "/api/v1/copy", Some(TOKEN), "").expect("copy");
    let copy: Value = serde_json::from_str(&body).expect("JSON");
    let orders = copy["namespaces"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["namespace"] == "shop.orders").cloned())
        .unwrap_or_else(|| panic!("shop.orders in {copy:#}"));
    assert_eq!(orders["done"], true, "{copy:#}");
    // The source's figures, read once (the application has written more since the seed).
    assert!(
        orders["estimated_documents"]
            .as_i64()
            .is_some_and(|n| n >= 3_000),
        "{copy:#}"
    );
    assert!(
        orders["documents"].as_i64().is_some_and(|n| n >= 3_000),
        "{copy:#}"
    );

    // Approve (the real thing), then, with the reverse replicating and the application
    // writing to the new cluster, one scrape must hold every metric the dashboard uses.
    // The application stops writing to the old cluster first (the test's clients may bypass
    // write blocking), and writes to the new one once the commit is done.
    stop.store(true, Ordering::Relaxed);
    app.await.expect("writer");
    let (status, _, text) =
        http(port, "POST", "/api/v1/approve", Some(TOKEN), "").expect("approve");
    assert_eq!(status, 200, "{text}");
    let start = Instant::now();
    while progress(port)["steps"][1]["status"] != "done" {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the commit did not finish: {:#}",
            progress(port)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let new_cluster = dst.app_client().await;
    let stop = Arc::new(AtomicBool::new(false));
    let app = tokio::spawn({
        let (dc, stop) = (new_cluster, stop.clone());
        async move {
            let coll = dc.database("shop").collection::<Document>("orders");
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let _ = coll.insert_one(doc! {"_id": format!("new{n}")}).await;
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    let start = Instant::now();
    let missing = loop {
        let (status, _, text) = match http(port, "GET", "/metrics", Some(TOKEN), "") {
            Ok(r) => r,
            Err(e) => {
                let out = finish_child(child).await;
                panic!("scrape: {e}; the run: {}", show(&out));
            }
        };
        assert_eq!(status, 200, "{text}");
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .expect("parse the metrics");
        let missing: Vec<String> = metrics
            .iter()
            .filter(|m| !scrape.samples.iter().any(|s| &s.metric == *m))
            .cloned()
            .chain(
                labels
                    .iter()
                    .filter(|l| {
                        !scrape
                            .samples
                            .iter()
                            .any(|s| s.labels.get(l.as_str()).is_some())
                    })
                    .map(|l| format!("label {l}")),
            )
            .collect();
        if missing.is_empty() {
            break missing;
        }
        if start.elapsed() > Duration::from_secs(90) {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        missing.is_empty(),
        "the dashboard queries what no /metrics response of a real run holds: {missing:?}"
    );
    eprintln!(
        "dashboard: {} queries over {} metrics and labels {labels:?}, all in one scrape",
        exprs.len(),
        metrics.len()
    );
    stop.store(true, Ordering::Relaxed);
    app.await.expect("writer");

    // The final commit, through the API; the run ends.
    let start = Instant::now();
    while progress(port)["phase"] != "waiting for approval" {
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "the final commit did not wait"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, _, text) =
        http(port, "POST", "/api/v1/approve", Some(TOKEN), "").expect("approve");
    assert_eq!(status, 200, "{text}");
    let out = finish_child(child).await;
    assert!(out.status.success(), "{}", show(&out));
}
