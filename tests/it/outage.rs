//! Connection loss between cutover and the source: a TCP proxy on loopback (written here)
//! drops every connection, then refuses new ones. cutover retries with backoff, `cutover
//! status` shows it reconnecting, a longer outage ends with a clear error after
//! `--retry-timeout`, and a later run resumes and finishes with identical data.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::env_refs as refs;
use crate::common::*;
use mongodb::bson::{doc, Document};
use tokio::io::copy_bidirectional;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;

static FORWARDED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static CLOSED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Forward connections.
    Up,
    /// Close every open connection and every new one at once.
    Drop,
    /// No listener: connecting is refused.
    Refuse,
}

/// A loopback TCP proxy to one mongod, whose behaviour the test switches.
pub(crate) struct Proxy {
    port: u16,
    mode: watch::Sender<Mode>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub(crate) async fn start(upstream: u16) -> Proxy {
        let first = bind(0).expect("bind the proxy");
        let port = first.local_addr().unwrap().port();
        let (mode, rx) = watch::channel(Mode::Up);
        let task = tokio::spawn(async move {
            let mut listener = Some(first);
            let mut rx = rx;
            loop {
                let m = *rx.borrow_and_update();
                if m == Mode::Refuse {
                    listener = None;
                    if rx.changed().await.is_err() {
                        return;
                    }
                    continue;
                }
                if listener.is_none() {
                    match bind(port) {
                        Ok(l) => listener = Some(l),
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    }
                }
                let l = listener.as_ref().expect("listener");
                tokio::select! {
                    acc = l.accept() => {
                        let Ok((mut client, _)) = acc else { continue };
                        if m != Mode::Up {
                            CLOSED.fetch_add(1, Ordering::Relaxed);
                            drop(client);
                            continue;
                        }
                        let mut conn_rx = rx.clone();
                        FORWARDED.fetch_add(1, Ordering::Relaxed);
                        tokio::spawn(async move {
                            let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                                return;
                            };
                            tokio::select! {
                                _ = copy_bidirectional(&mut client, &mut server) => {}
                                _ = async {
                                    while *conn_rx.borrow_and_update() == Mode::Up {
                                        if conn_rx.changed().await.is_err() { break; }
                                    }
                                } => {}
                            }
                            // Dropping both sockets closes them.
                        });
                    }
                    r = rx.changed() => if r.is_err() { return },
                }
            }
        });
        Proxy { port, mode, task }
    }

    pub(crate) fn set(&self, m: Mode) {
        self.mode.send_replace(m);
    }

    /// A root URI through the proxy. `directConnection=true`: a replica-set URI would make
    /// the driver connect to the members' advertised hosts, around the proxy.
    pub(crate) fn uri(&self) -> String {
        format!(
            "mongodb://{ROOT_USER}:{ROOT_PASSWORD}@127.0.0.1:{}/?directConnection=true",
            self.port
        )
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn bind(port: u16) -> std::io::Result<tokio::net::TcpListener> {
    let s = TcpSocket::new_v4()?;
    s.set_reuseaddr(true)?;
    s.bind(std::net::SocketAddr::from(([127, 0, 0, 1], port)))?;
    s.listen(128)
}

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

/// Polls status while the proxy is in `mode` for `dur`; returns the reconnecting messages seen.
async fn outage(
    proxy: &Proxy,
    plan: &str,
    env: &[(&'static str, String)],
    steps: &[(Mode, Duration)],
) -> Vec<String> {
    let mut seen = Vec::new();
    for (mode, dur) in steps {
        proxy.set(*mode);
        let until = Instant::now() + *dur;
        while Instant::now() < until {
            let v = status_json(plan, env, &[]).await;
            if let Some(r) = v["reconnecting"].as_str() {
                seen.push(r.to_string());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    proxy.set(Mode::Up);
    seen
}

/// An application inserting into `app.events` on the source (directly, not through the
/// proxy) until the commit blocks it; returns the acknowledged `_id`s.
fn app(src: mongodb::Client, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<i64>> {
    tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut n = 0i64;
        let coll = src.database("app").collection::<Document>("events");
        while !stop.load(Ordering::Relaxed) {
            match coll
                .insert_one(doc! {"_id": n, "pad": "x".repeat(100)})
                .await
            {
                Ok(_) => acked.push(n),
                Err(e) if e.to_string().contains("User writes blocked") => break,
                Err(_) => {}
            }
            n += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        acked
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_outage_is_retried_then_times_out_then_resumes() {
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let s = src.root_client().await;
    s.database("shop")
        .collection::<Document>("orders")
        .insert_many(
            (0..40_000)
                .map(|i| doc! {"_id": i, "item": format!("item-{i}"), "pad": "p".repeat(200)}),
        )
        .await
        .unwrap();
    let proxy = Proxy::start(src.members[0].port).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = app(src.app_client().await, stop.clone());
    let (_d, plan) = write_plan(&plan_text("outage", MANUAL));
    let plan = plan.to_str().unwrap().to_string();
    let env: Vec<(&'static str, String)> = vec![
        ("SOURCE_URI", proxy.uri()),
        ("DESTINATION_URI", dst.root_uri()),
    ];
    let log: Arc<Mutex<Vec<String>>> = Arc::default();

    // Run 1: retries for at most 5 s per outage.
    let run1 = tokio::task::spawn_blocking({
        let (plan, env) = (plan.clone(), env.clone());
        move || {
            run_cutover(
                &[
                    "run",
                    &plan,
                    "--retry-timeout",
                    "5s",
                    // Also the driver's server selection timeout: operations fail (and
                    // cutover's retries take over) once the source is gone this long.
                    "--connect-timeout",
                    "2s",
                    "--docs-per-range",
                    "500",
                    "--copy-concurrency",
                    "1",
                ],
                &refs(&env),
            )
        }
    });

    // 1. During the copy: drop everything for 2 s, refuse for 2 s.
    wait_status(
        &plan,
        &env,
        &[],
        Duration::from_secs(120),
        "the copy",
        |v| {
            v["phase"] == "copying"
                && v["collection_copy"]["estimated_copied_bytes"].as_i64() > Some(0)
        },
    )
    .await;
    let seen = outage(
        &proxy,
        &plan,
        &env,
        &[
            (Mode::Drop, Duration::from_secs(2)),
            (Mode::Refuse, Duration::from_secs(2)),
        ],
    )
    .await;
    log.lock().unwrap().push(format!("copy outage: {seen:?}"));
    assert!(
        !run1.is_finished(),
        "a short outage during the copy must not end the run"
    );
    let v = status_json(&plan, &env, &[]).await;
    if !seen
        .iter()
        .any(|r| r.contains("source cluster unavailable"))
    {
        run_cutover(&["approve", &plan], &refs(&env));
        let o = run1.await.unwrap();
        panic!(
            "status never showed the copy reconnecting: {seen:?}\n{v}\n{}\nforwarded {} closed {}",
            show(&o),
            FORWARDED.load(Ordering::Relaxed),
            CLOSED.load(Ordering::Relaxed)
        );
    }
    assert_eq!(
        v["phase"], "copying",
        "the copy was over before the outage ended: {v}"
    );

    // 2. During change application (the run waits for approval): the same outage.
    wait_status(
        &plan,
        &env,
        &[],
        Duration::from_secs(300),
        "the run to wait for approval",
        |v| v["phase"] == "waiting for approval" && v["reconnecting"].is_null(),
    )
    .await;
    let seen = outage(
        &proxy,
        &plan,
        &env,
        &[
            (Mode::Drop, Duration::from_secs(2)),
            (Mode::Refuse, Duration::from_secs(2)),
        ],
    )
    .await;
    log.lock().unwrap().push(format!("apply outage: {seen:?}"));
    assert!(
        seen.iter().any(|r| r.contains("applying change events")),
        "status never showed change application reconnecting: {seen:?}"
    );
    let v = wait_status(
        &plan,
        &env,
        &[],
        Duration::from_secs(60),
        "reconnected",
        |v| v["reconnecting"].is_null(),
    )
    .await;
    assert!(
        !run1.is_finished(),
        "a short outage must not end the run: {v}"
    );

    // 3. A longer outage: refused until cutover gives up after its retry timeout.
    proxy.set(Mode::Refuse);
    let started = Instant::now();
    let o = run1.await.unwrap();
    let took = started.elapsed();
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("gave up after 5s"), "{err}");
    assert!(err.contains("reach the source cluster"), "{err}");
    assert!(err.contains("--retry-timeout"), "{err}");
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(60),
        "gave up after {took:?}"
    );
    let v = status_json(&plan, &env, &[]).await;
    assert!(
        v["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("gave up"),
        "{v}"
    );

    // 4. The proxy heals; a new run resumes and, approved, commits with identical data.
    proxy.set(Mode::Up);
    let o = run_cutover(&["approve", &plan], &refs(&env));
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let o = tokio::task::spawn_blocking({
        let (plan, env) = (plan.clone(), env.clone());
        move || run_cutover(&["run", &plan], &refs(&env))
    })
    .await
    .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    stop.store(true, Ordering::Relaxed);
    let acked = writer.await.unwrap();
    eprintln!("{:?}", log.lock().unwrap());
    let d = dst.root_client().await;
    assert_same_data(&s, &d, "__cutover").await;
    assert!(
        acked.len() > 100,
        "only {} writes acknowledged",
        acked.len()
    );
    let events = d.database("app").collection::<Document>("events");
    let on_dst = events.count_documents(doc! {}).await.unwrap();
    assert!(on_dst as usize >= acked.len());
    for n in &acked {
        assert!(
            events.find_one(doc! {"_id": *n}).await.unwrap().is_some(),
            "acknowledged write {n} is missing on the destination"
        );
    }
}

/// The proxy itself: forwards when up, fails operations when dropping or refusing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_forwards_drops_and_refuses() {
    let rs = ReplicaSet::start().await;
    let proxy = Proxy::start(rs.members[0].port).await;
    let mut o = mongodb::options::ClientOptions::parse(proxy.uri())
        .await
        .unwrap();
    o.server_selection_timeout = Some(Duration::from_secs(1));
    let c = mongodb::Client::with_options(o).unwrap();
    let ping = || async { c.database("admin").run_command(doc! {"ping": 1}).await };
    ping().await.expect("through the proxy");
    proxy.set(Mode::Drop);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(ping().await.is_err(), "dropping");
    proxy.set(Mode::Refuse);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(ping().await.is_err(), "refusing");
    proxy.set(Mode::Up);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut ok = false;
    for _ in 0..20 {
        if ping().await.is_ok() {
            ok = true;
            break;
        }
    }
    assert!(ok, "up again");
}

/// The same short outage between cutover and the destination (which also holds the state
/// store) while change events are applied: the run survives it and completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_outage_is_retried() {
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let s = src.root_client().await;
    s.database("shop")
        .collection::<Document>("orders")
        .insert_many((0..2_000).map(|i| doc! {"_id": i, "item": format!("item-{i}")}))
        .await
        .unwrap();
    let proxy = Proxy::start(dst.members[0].port).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = app(src.app_client().await, stop.clone());
    let (_d, plan) = write_plan(&plan_text("dst-outage", MANUAL));
    let plan = plan.to_str().unwrap().to_string();
    let env: Vec<(&'static str, String)> = vec![
        ("SOURCE_URI", src.root_uri()),
        ("DESTINATION_URI", proxy.uri()),
    ];
    // `status` reads the state store directly, not through the proxy.
    let direct: Vec<(&'static str, String)> = vec![
        ("SOURCE_URI", src.root_uri()),
        ("DESTINATION_URI", dst.root_uri()),
    ];
    let run = tokio::task::spawn_blocking({
        let (plan, env) = (plan.clone(), env.clone());
        move || {
            run_cutover(
                &[
                    "run",
                    &plan,
                    "--retry-timeout",
                    "60s",
                    "--connect-timeout",
                    "2s",
                ],
                &refs(&env),
            )
        }
    });
    wait_status(
        &plan,
        &direct,
        &[],
        Duration::from_secs(120),
        "the run to wait for approval",
        |v| v["phase"] == "waiting for approval",
    )
    .await;
    outage(
        &proxy,
        &plan,
        &direct,
        &[
            (Mode::Drop, Duration::from_secs(3)),
            (Mode::Refuse, Duration::from_secs(3)),
        ],
    )
    .await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    if run.is_finished() {
        let o = run.await.unwrap();
        panic!("a short destination outage ended the run: {}", show(&o));
    }
    let o = run_cutover(&["approve", &plan], &refs(&direct));
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let o = run.await.unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    stop.store(true, Ordering::Relaxed);
    let acked = writer.await.unwrap();
    let d = dst.root_client().await;
    assert_same_data(&s, &d, "__cutover").await;
    let events = d.database("app").collection::<Document>("events");
    for n in &acked {
        assert!(
            events.find_one(doc! {"_id": *n}).await.unwrap().is_some(),
            "acknowledged write {n} is missing on the destination"
        );
    }
}

/// Free bytes of the filesystem holding `path` (`df`).
fn avail_bytes(path: &std::path::Path) -> u64 {
    let o = std::process::Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(path)
        .output()
        .expect("df");
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("df printed no free space for {}", path.display()))
}

/// Fills the filesystem of `dbpath` with a ballast file (returned) until about 20 MB are free.
fn ballast_leaving_20_mb(dbpath: &std::path::Path) -> std::path::PathBuf {
    let ballast = dbpath.join("ballast");
    let fill = avail_bytes(dbpath).saturating_sub(20 << 20);
    let st = std::process::Command::new("fallocate")
        .args(["-l", &fill.to_string()])
        .arg(&ballast)
        .status()
        .expect("fallocate");
    assert!(st.success(), "fallocate the ballast");
    let free = avail_bytes(dbpath);
    assert!(free < 25 << 20, "{free} bytes free after the ballast");
    ballast
}

/// Issue #23 (c): the destination's disk is nearly full during the copy (its dbpath on a
/// 600 MB tmpfs, a ballast file leaving about 20 MB free: less than the 30 MB left to copy
/// and less than 5% of the filesystem). The disk watch holds the copy with a message naming
/// the destination's disk space (log and status); when the space comes back (the ballast
/// removed) the copy goes on by itself and the same run commits with identical data. Before,
/// the copy filled the disk and the run ended with an error that did not say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_short_of_disk_space_holds_the_copy_until_space_returns() {
    let (src, dst) = tokio::join!(
        ReplicaSet::start(),
        ReplicaSet::start_with(RsOptions {
            tmpfs_mb: Some(600),
            oplog_mb: 64,
            ..Default::default()
        })
    );
    let s = src.root_client().await;
    let d = dst.root_client().await;
    let orders = s.database("shop").collection::<Document>("orders");
    for chunk in 0..30 {
        orders
            .insert_many((0..1000).map(|i| doc! {"_id": chunk * 1000 + i, "pad": "p".repeat(1000)}))
            .await
            .unwrap();
    }
    // Leave about 20 MB free on the destination's data filesystem.
    let ballast = ballast_leaving_20_mb(&dst.members[0].dbpath);

    let (_d, plan) = write_plan(&plan_text(
        "disk-low",
        r#"
[options]
write_blocking = "source-and-destination"
max_lag = "2s"

[[steps]]
kind = "sync"

[[steps]]
kind = "commit"
timeout = "5m"
"#,
    ));
    let plan = plan.to_str().unwrap().to_string();
    let env: Vec<(&'static str, String)> = vec![
        ("SOURCE_URI", src.root_uri()),
        ("DESTINATION_URI", dst.root_uri()),
        ("CUTOVER_DISK_WATCH_EVERY", "1s".into()),
    ];
    let run = tokio::task::spawn_blocking({
        let (plan, env) = (plan.clone(), env.clone());
        move || run_cutover(&["run", &plan, "--docs-per-range", "1000"], &refs(&env))
    });
    let v = wait_status(
        &plan,
        &env,
        &[],
        Duration::from_secs(120),
        "the copy to hold for disk space",
        |v| {
            v["phase"]
                .as_str()
                .unwrap_or_default()
                .contains("short of disk space")
        },
    )
    .await;
    // Held: nothing more is copied while the space is short.
    let copied = v["collection_copy"]["copied_documents"]
        .as_i64()
        .unwrap_or(0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!run.is_finished(), "the run ended while the disk was short");
    let v = status_json(&plan, &env, &[]).await;
    assert!(
        v["phase"]
            .as_str()
            .unwrap_or_default()
            .contains("short of disk space"),
        "{v}"
    );
    assert_eq!(
        v["collection_copy"]["copied_documents"]
            .as_i64()
            .unwrap_or(0),
        copied,
        "the copy went on while the disk was short: {v}"
    );
    assert!(copied < 30_000, "the copy was done before it held: {v}");

    // Space comes back: the same run goes on and commits.
    std::fs::remove_file(&ballast).unwrap();
    let o = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("the run did not finish after the space came back")
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        err.contains("Copy and change application held"),
        "{}",
        show(&o)
    );
    assert!(
        err.contains("destination's data filesystem has"),
        "{}",
        show(&o)
    );
    assert!(err.contains("room again"), "{}", show(&o));
    assert_same_data(&s, &d, "__cutover").await;
}

/// The disk watch follows the running lane: once the reverse lane runs, it writes to the
/// plan's *source*, and that is the disk it samples. The source's dbpath on a 600 MB tmpfs;
/// after the first commit a ballast leaves about 20 MB free (below 5%): change application
/// of the reverse lane holds (`cutover status`: `paused: the source is short of disk space`),
/// writes on the new primary wait on it; the ballast removed, they reach the source and the
/// second commit ends identical. Before, the watch sampled the plan's destination for every
/// lane and the reverse lane filled the source's disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reverse_lane_holds_when_the_source_is_short_of_disk_space() {
    let (src, dst) = tokio::join!(
        ReplicaSet::start_with(RsOptions {
            tmpfs_mb: Some(600),
            oplog_mb: 64,
            ..Default::default()
        }),
        ReplicaSet::start()
    );
    let s = src.root_client().await;
    let d = dst.root_client().await;
    s.database("shop")
        .collection::<Document>("orders")
        .insert_many((0..1000).map(|i| doc! {"_id": i, "pad": "p".repeat(100)}))
        .await
        .unwrap();
    let (_d, plan) = write_plan(&plan_text(
        "disk-low-reverse",
        r#"
[options]
reversible = true
write_blocking = "source-and-destination"
max_lag = "2s"

[[steps]]
kind = "sync"

[[steps]]
kind = "commit"
timeout = "5m"

[[steps]]
kind = "reverse"

[[steps]]
kind = "commit"
approval = "manual"
timeout = "5m"
"#,
    ));
    let plan = plan.to_str().unwrap().to_string();
    let env: Vec<(&'static str, String)> = vec![
        ("SOURCE_URI", src.root_uri()),
        ("DESTINATION_URI", dst.root_uri()),
        ("CUTOVER_DISK_WATCH_EVERY", "1s".into()),
    ];
    let run = tokio::task::spawn_blocking({
        let (plan, env) = (plan.clone(), env.clone());
        move || run_cutover(&["run", &plan], &refs(&env))
    });
    // The reverse lane runs and the second commit waits for approval.
    wait_status(
        &plan,
        &env,
        &[],
        Duration::from_secs(180),
        "the second commit to wait for approval",
        |v| v["steps"][3]["status"] == "running" && v["phase"] == "waiting for approval",
    )
    .await;
    // The source's disk runs short.
    let ballast = ballast_leaving_20_mb(&src.members[0].dbpath);
    wait_status(
        &plan,
        &env,
        &[],
        Duration::from_secs(60),
        "the reverse lane to hold for the source's disk space",
        |v| v["phase"] == "paused: the source is short of disk space",
    )
    .await;
    // Writes on the new primary wait while the source is short.
    let late = d.database("shop").collection::<Document>("late");
    late.insert_many((0..100).map(|i| doc! {"_id": i}))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let on_source = s.database("shop").collection::<Document>("late");
    assert_eq!(
        on_source.count_documents(doc! {}).await.unwrap(),
        0,
        "the reverse lane wrote to the source while its disk was short"
    );
    assert!(!run.is_finished(), "the run ended while the disk was short");

    // Space comes back: the writes reach the source, and the second commit ends identical.
    std::fs::remove_file(&ballast).unwrap();
    wait_until(
        Duration::from_secs(60),
        "the held writes on the source",
        || {
            let c = on_source.clone();
            async move { c.count_documents(doc! {}).await.unwrap() == 100 }
        },
    )
    .await;
    let o = run_cutover(&["approve", &plan], &refs(&env));
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let o = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("the run did not finish after the approval")
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        err.contains("the source's data filesystem has"),
        "{}",
        show(&o)
    );
    assert!(err.contains("The source has room again"), "{}", show(&o));
    assert_same_data(&s, &d, "__cutover").await;
}
