//! Two runners on one plan: the lease's expiry is decided by the state store's clock (a
//! runner whose host clock is ahead cannot take a live plan), and a runner that lost its
//! lease (paused past its TTL while another took over) stops at once with exit code 4,
//! naming the new holder, without writing another byte of state or unblocking anything.
//!
//! The skewed clock is real: the second process runs under libfaketime (Debian's
//! `libfaketime` package, which `scripts/test.sh` installs), with only its wall clock moved.

use std::path::PathBuf;
use std::process::{Child, Output};
use std::time::{Duration, Instant};

use crate::common::env_refs as refs;
use crate::common::*;
use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::Client;

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

const STATE_DB: &str = "__cutover";

/// libfaketime's preload library (Debian package `libfaketime`). Fails, never skips.
fn libfaketime() -> PathBuf {
    let candidates = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ];
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "this test needs libfaketime (Debian: `apt-get install libfaketime`; \
                 ./scripts/test.sh installs it); looked in {candidates:?}"
            )
        })
}

/// Environment that moves a process's wall clock `secs` ahead (its monotonic clock is left
/// alone, as a host whose clock is set wrong would have it).
fn skewed(secs: i64) -> Vec<(&'static str, String)> {
    vec![
        ("LD_PRELOAD", libfaketime().display().to_string()),
        ("FAKETIME", format!("+{secs}s")),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".into()),
        ("FAKETIME_NO_CACHE", "1".into()),
    ]
}

fn env_of(
    src: &ReplicaSet,
    dst: &ReplicaSet,
    extra: &[(&'static str, String)],
) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("SOURCE_URI", src.root_uri()),
        ("DESTINATION_URI", dst.root_uri()),
    ];
    env.extend(extra.iter().cloned());
    env
}

async fn seed(c: &Client) {
    c.database("shop")
        .collection::<Document>("orders")
        .insert_many((0..500).map(|i| doc! {"_id": i, "item": format!("item-{i}")}))
        .await
        .unwrap();
}

async fn app_insert(rs: &ReplicaSet, id: i64) -> bool {
    rs.app_client()
        .await
        .database("scratch")
        .collection::<Document>("probe")
        .insert_one(doc! {"_id": id})
        .await
        .is_ok()
}

/// Waits for a spawned runner to exit, at most `limit`; kills it (and fails) after that.
async fn wait_exit(mut child: Child, limit: Duration, what: &str) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
                .await
                .unwrap();
        }
        if start.elapsed() >= limit {
            let _ = child.kill();
            let o = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
                .await
                .unwrap();
            panic!(
                "{what}: still running after {limit:?}; killed it.\n{}",
                show(&o)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn signal(child: &Child, sig: &str) {
    let st = std::process::Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(st.success(), "kill {sig} {}", child.id());
}

/// Waits until the runner with `pid` holds the plan and waits for approval; its status.
async fn taken_over_by(plan: &str, env: &[(&'static str, String)], pid: u32) -> serde_json::Value {
    wait_status(
        plan,
        env,
        &[],
        Duration::from_secs(120),
        "the second runner to take over",
        |v| {
            v["runner"]
                .as_str()
                .unwrap_or_default()
                .contains(&format!("pid {pid}"))
                && v["phase"] == "waiting for approval"
        },
    )
    .await
}

async fn run_doc(d: &Client, plan: &str) -> Document {
    d.database(STATE_DB)
        .collection::<Document>("runs")
        .find_one(doc! {"_id": plan})
        .await
        .unwrap()
        .expect("run document")
}

fn epoch_of(run: &Document) -> i64 {
    match run.get("epoch") {
        Some(Bson::Int64(e)) => *e,
        Some(Bson::Int32(e)) => i64::from(*e),
        other => panic!("run document without an epoch ({other:?}): {run}"),
    }
}

/// Every document of the plan in the runner-written state collections, as text, by collection.
async fn state_docs(d: &Client, plan: &str) -> Vec<(String, Document)> {
    let db = d.database(STATE_DB);
    let mut out = Vec::new();
    for c in ["lanes", "partitions", "relaxations"] {
        let docs: Vec<Document> = db
            .collection::<Document>(c)
            .find(doc! {"plan": plan})
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        out.extend(docs.into_iter().map(|x| (c.to_string(), x)));
    }
    out
}

/// (a) A second runner whose host clock is two minutes ahead must not take the plan while
/// the first is alive and renewing: it stops with exit code 4 naming the holder, and the
/// first runner finishes the migration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skewed_clock_does_not_take_a_live_plan() {
    // The skew is real: a process under this environment reads a clock 2 minutes ahead.
    let date = std::process::Command::new("date")
        .arg("+%s")
        .envs(skewed(120))
        .output()
        .expect("date");
    let skewed_now: i64 = String::from_utf8_lossy(&date.stdout)
        .trim()
        .parse()
        .unwrap();
    let now = mongodb::bson::DateTime::now().timestamp_millis() / 1000;
    assert!(
        (110..130).contains(&(skewed_now - now)),
        "libfaketime did not skew the clock: {skewed_now} vs {now}"
    );

    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let s = src.root_client().await;
    seed(&s).await;
    let (_d, plan) = write_plan(&plan_text("skewed", MANUAL));
    let plan = plan.to_str().unwrap().to_string();
    let env = env_of(&src, &dst, &[]);
    let first = spawn_cutover(&["run", &plan], &refs(&env));
    wait_status(
        &plan,
        &env,
        &[],
        Duration::from_secs(120),
        "the first runner to wait for approval",
        |v| v["phase"] == "waiting for approval",
    )
    .await;
    let d = dst.root_client().await;

    let mut skew_env = env.clone();
    skew_env.extend(skewed(120));
    let second = spawn_cutover(&["run", &plan], &refs(&skew_env));
    let o = wait_exit(
        second,
        Duration::from_secs(60),
        "the skewed second runner (it took the plan)",
    )
    .await;
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(4), "{}", show(&o));
    assert!(err.contains("is being run by another"), "{}", show(&o));
    assert!(
        err.contains(&format!("pid {}", first.id())),
        "the message names the holder (pid {}): {}",
        first.id(),
        show(&o)
    );
    // Nothing changed hands: the first runner's epoch (1) is still the plan's.
    let epoch = 1;
    let after = run_doc(&d, "skewed").await;
    assert_eq!(epoch_of(&after), epoch, "{after}");
    let v = status_json(&plan, &env, &[]).await;
    assert_eq!(v["epoch"], epoch, "{v}");
    assert!(
        v["runner"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("pid {}", first.id())),
        "{v}"
    );

    // `verify --repair` on the skewed host sees the live runner too (by the state store's
    // clock) and routes its writes through the runner's lane; deciding by the host clock, it
    // took the runner for gone and wrote directly beside the live lane (found while typing the
    // run record: `runner_live` compared `lease.until` with this host's clock).
    let o = run_cutover(
        &["verify", &plan, "--repair", "--format", "json"],
        &refs(&skew_env),
    );
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("verify --repair printed no JSON ({e}): {}", show(&o)));
    assert_eq!(report["mode"], "lane", "{report:#}");

    // The first runner still owns the migration and finishes it.
    let o = run_cutover(&["approve", &plan], &refs(&env));
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let o = wait_exit(first, Duration::from_secs(120), "the first runner").await;
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_same_data(&s, &d, STATE_DB).await;
}

/// (b) A runner paused (SIGSTOP) past its lease TTL loses the plan to a second runner; when
/// it resumes, after the commit was approved, it stops at once with exit code 4 naming the
/// new holder: it blocks and unblocks nothing and writes no state. A third runner then
/// finishes the commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_that_lost_its_lease_stops_at_once() {
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let s = src.root_client().await;
    seed(&s).await;
    let (_d, plan) = write_plan(&plan_text("fenced", MANUAL));
    let plan = plan.to_str().unwrap().to_string();
    let env = env_of(&src, &dst, &[("CUTOVER_LEASE_TTL", "3s".into())]);
    let first = spawn_cutover(&["run", &plan], &refs(&env));
    wait_status(
        &plan,
        &env,
        &[],
        Duration::from_secs(120),
        "the first runner to wait for approval",
        |v| v["phase"] == "waiting for approval",
    )
    .await;
    let d = dst.root_client().await;
    let first_epoch = epoch_of(&run_doc(&d, "fenced").await);

    // Pause the first runner past its TTL; a second one takes the plan over.
    signal(&first, "-STOP");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let second = spawn_cutover(&["run", &plan], &refs(&env));
    let second_pid = second.id();
    let v = taken_over_by(&plan, &env, second_pid).await;
    let second_epoch = v["epoch"].as_i64().expect("status shows the epoch");
    assert!(second_epoch > first_epoch, "{v}");
    // Freeze the second runner too, approve, and wake the stale one: it must not commit.
    signal(&second, "-STOP");
    let o = run_cutover(&["approve", &plan], &refs(&env));
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let run_before = run_doc(&d, "fenced").await;
    let state_before = state_docs(&d, "fenced").await;
    signal(&first, "-CONT");
    let o = wait_exit(
        first,
        Duration::from_secs(10),
        "the runner that lost its lease",
    )
    .await;
    eprintln!("the first runner: {}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(4), "{}", show(&o));
    assert!(err.contains("lost its lease"), "{}", show(&o));
    assert!(
        err.contains(&format!("pid {second_pid}")),
        "names the new holder: {}",
        show(&o)
    );

    // It wrote nothing and changed no cluster: the run document and every state record are
    // as they were, the destination is still blocked and the source is not.
    let run_after = run_doc(&d, "fenced").await;
    assert_eq!(
        run_after, run_before,
        "the stale runner wrote the run document"
    );
    assert_eq!(
        state_docs(&d, "fenced").await,
        state_before,
        "the stale runner wrote state"
    );
    for (c, x) in &state_before {
        assert_eq!(x.get_i64("epoch").ok(), Some(second_epoch), "{c}: {x}");
    }
    assert!(
        !app_insert(&dst, 1).await,
        "the destination must still be write-blocked"
    );
    assert!(app_insert(&src, 2).await, "the source must not be blocked");

    // The second runner is gone too (kill -9); a third takes over at once (a dead process
    // on this host) and finishes the commit.
    signal(&second, "-KILL");
    let _ = wait_exit(second, Duration::from_secs(10), "the killed second runner").await;
    let third = spawn_cutover(&["run", &plan], &refs(&env));
    let o = wait_exit(third, Duration::from_secs(180), "the third runner").await;
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_same_data(&s, &d, STATE_DB).await;
    let v = status_json(&plan, &env, &[]).await;
    assert_eq!(v["state"], "COMMITTED", "{v}");
    assert!(v["epoch"].as_i64().unwrap_or(0) > second_epoch, "{v}");
}

/// Makes the destination hold cutover's next `command` on `ns` for `block`
/// (`failCommand` `blockConnection`); returns the fail point's count before it.
async fn hold_next(d: &Client, command: &str, ns: &str, block: Duration) -> i64 {
    let armed = d
        .database("admin")
        .run_command(
            doc! {"configureFailPoint": "failCommand", "mode": {"times": 1},
            "data": {"failCommands": [command], "namespace": ns, "appName": "cutover",
                     "blockConnection": true, "blockTimeMS": block.as_millis() as i64}},
        )
        .await
        .expect("configureFailPoint (mongod runs with enableTestCommands=1)");
    match armed.get("count") {
        Some(Bson::Int32(n)) => i64::from(*n),
        Some(Bson::Int64(n)) => *n,
        _ => 0,
    }
}

/// Freezes `first` (SIGSTOP) past its 4 s TTL, then starts a second runner and waits until
/// it holds the plan.
async fn freeze_then_take_over(first: &Child, plan: &str, env: &[(&'static str, String)]) -> Child {
    signal(first, "-STOP");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let second = spawn_cutover(&["run", plan], &refs(env));
    taken_over_by(plan, env, second.id()).await;
    second
}

/// Kills the frozen first runner, approves the commit and waits for the second runner to
/// finish it.
async fn kill_frozen_then_commit(
    first: Child,
    second: Child,
    plan: &str,
    env: &[(&'static str, String)],
) {
    signal(&first, "-KILL");
    let _ = wait_exit(first, Duration::from_secs(10), "the frozen runner").await;
    let o = run_cutover(&["approve", plan], &refs(env));
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let o = wait_exit(second, Duration::from_secs(120), "the second runner").await;
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
}

/// Waits until the command [`hold_next`] armed for is held.
async fn wait_held(d: &Client, entered: i64, what: &str) {
    d.database("admin")
        .run_command(
            doc! {"waitForFailPoint": "failCommand", "timesEntered": entered + 1,
            "maxTimeMS": 120_000},
        )
        .await
        .unwrap_or_else(|e| panic!("{what} never reached the destination: {e}"));
}

/// (c) A destination write sent just before a runner's lease runs out cannot land after
/// another runner took the plan over. The first runner's update of `shop.orders` is held by
/// the destination (`failCommand` `blockConnection`, 12 s) and the runner is frozen
/// (SIGSTOP) past its 4 s TTL; a second runner takes over, replays the update and applies a
/// later one. When the block ends the stale update must not overwrite the later value:
/// cutover sends every change-application write with a `maxTimeMS` that ends before its
/// lease can have expired, so the server stops it. Before, the stale write landed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_sent_before_the_lease_ran_out_cannot_land_after_a_takeover() {
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let s = src.root_client().await;
    let d = dst.root_client().await;
    seed(&s).await;
    let (_d, plan) = write_plan(&plan_text("fenced-write", MANUAL));
    let plan = plan.to_str().unwrap().to_string();
    let env = env_of(&src, &dst, &[("CUTOVER_LEASE_TTL", "4s".into())]);
    let first = spawn_cutover(&["run", &plan], &refs(&env));
    wait_status(
        &plan,
        &env,
        &[],
        Duration::from_secs(120),
        "the first runner to wait for approval",
        |v| v["phase"] == "waiting for approval",
    )
    .await;

    // The destination holds cutover's next update of shop.orders for 12 s.
    let entered = hold_next(&d, "update", "shop.orders", Duration::from_secs(12)).await;
    let orders = s.database("shop").collection::<Document>("orders");
    orders
        .update_one(doc! {"_id": 1}, doc! {"$set": {"v": "stale"}})
        .await
        .unwrap();
    wait_held(&d, entered, "the runner's update").await;
    let blocked_at = Instant::now();
    // A second runner takes over and applies a later update.
    let second = freeze_then_take_over(&first, &plan, &env).await;
    orders
        .update_one(doc! {"_id": 1}, doc! {"$set": {"v": "fresh"}})
        .await
        .unwrap();
    let dest_orders = d.database("shop").collection::<Document>("orders");
    let start = Instant::now();
    loop {
        let v = dest_orders
            .find_one(doc! {"_id": 1})
            .await
            .unwrap()
            .unwrap();
        if v.get_str("v") == Ok("fresh") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the second runner never applied the later update: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Past the end of the block (and the server's answer to it).
    let until = Duration::from_secs(15);
    if blocked_at.elapsed() < until {
        tokio::time::sleep(until - blocked_at.elapsed()).await;
    }
    let v = dest_orders
        .find_one(doc! {"_id": 1})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        v.get_str("v"),
        Ok("fresh"),
        "the frozen runner's update landed after the takeover: {v}"
    );

    kill_frozen_then_commit(first, second, &plan, &env).await;
    assert_same_data(&s, &d, STATE_DB).await;
}

/// (d) The same for the copy: an insert of the initial copy held by the destination past the
/// runner's lease (`failCommand` `blockConnection`, 25 s; the runner frozen past its 4 s TTL)
/// must not land after a second runner took over, copied the range again and applied a later
/// delete of one of its documents: landing, it would bring the deleted document back. Before,
/// the copy's inserts carried no deadline and the document came back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_insert_sent_before_the_lease_ran_out_cannot_land_after_a_takeover() {
    const BLOCK: Duration = Duration::from_secs(25);
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let s = src.root_client().await;
    let d = dst.root_client().await;
    seed(&s).await;
    let items = s.database("shop").collection::<Document>("items");
    items
        .insert_many((0..3000).map(|i| doc! {"_id": i, "v": "copied"}))
        .await
        .unwrap();
    // The destination holds cutover's first insert into shop.items (the copy's) for 25 s.
    let entered = hold_next(&d, "insert", "shop.items", BLOCK).await;
    let (_d, plan) = write_plan(&plan_text("fenced-copy", MANUAL));
    let plan = plan.to_str().unwrap().to_string();
    let env = env_of(&src, &dst, &[("CUTOVER_LEASE_TTL", "4s".into())]);
    let first = spawn_cutover(&["run", &plan], &refs(&env));
    wait_held(&d, entered, "the runner's copy insert").await;
    let blocked_at = Instant::now();
    // A second runner takes over, copies shop.items again and applies a later delete of a
    // document of the held insert.
    let second = freeze_then_take_over(&first, &plan, &env).await;
    let dest_items = d.database("shop").collection::<Document>("items");
    let start = Instant::now();
    while dest_items.count_documents(doc! {}).await.unwrap() < 3000 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the second runner never copied shop.items"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    items.delete_one(doc! {"_id": 0}).await.unwrap();
    while dest_items
        .find_one(doc! {"_id": 0})
        .await
        .unwrap()
        .is_some()
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the second runner never applied the delete"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        blocked_at.elapsed() < BLOCK,
        "the delete was applied only after the held insert's block ended ({:?}): \
         this run proves nothing, the machine was too slow",
        blocked_at.elapsed()
    );
    // Past the end of the block (and the server's answer to it).
    let until = BLOCK + Duration::from_secs(3);
    if blocked_at.elapsed() < until {
        tokio::time::sleep(until - blocked_at.elapsed()).await;
    }
    let back = dest_items.find_one(doc! {"_id": 0}).await.unwrap();
    assert!(
        back.is_none(),
        "the frozen runner's copy insert landed after the takeover: {back:?}"
    );

    kill_frozen_then_commit(first, second, &plan, &env).await;
    assert_same_data(&s, &d, STATE_DB).await;
}

/// A destination that answers the runner's data writes with a shutdown error
/// (InterruptedAtShutdown, 11600) for a while: the driver clears its connection pool to that
/// server on each one and marks it unknown. The lease's renewals must not wait behind those
/// clears — the runner keeps its lease through the storm and finishes (found by the torture
/// run's reversible seed 15 with failCommand faults: the renewals shared the data path's
/// client, stalled 20 s, and the lease was lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_errors_on_data_writes_do_not_cost_the_lease() {
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let s = src.root_client().await;
    let d = dst.root_client().await;
    seed(&s).await;
    let (_d, plan) = write_plan(&plan_text("pool-storm", MANUAL));
    let plan = plan.to_str().unwrap().to_string();
    let env = env_of(&src, &dst, &[("CUTOVER_LEASE_TTL", "4s".into())]);
    let runner = spawn_cutover(&["run", &plan], &refs(&env));
    wait_status(
        &plan,
        &env,
        &[],
        Duration::from_secs(120),
        "the runner to wait for approval",
        |v| v["phase"] == "waiting for approval",
    )
    .await;
    let before = epoch_of(&run_doc(&d, "pool-storm").await);

    // For 15 s (almost four TTLs) every data write of cutover's fails with 11600 while the
    // application keeps writing.
    d.database("admin")
        .run_command(
            doc! {"configureFailPoint": "failCommand", "mode": "alwaysOn",
            "data": {"failCommands": ["insert", "update", "delete"], "namespace": "shop.orders",
                     "appName": "cutover", "errorCode": 11600}},
        )
        .await
        .expect("configureFailPoint (mongod runs with enableTestCommands=1)");
    let orders = s.database("shop").collection::<Document>("orders");
    let storm = Instant::now();
    let mut i = 0_i64;
    while storm.elapsed() < Duration::from_secs(15) {
        orders
            .insert_one(doc! {"_id": 100_000 + i, "v": i})
            .await
            .unwrap();
        orders
            .update_one(doc! {"_id": 1}, doc! {"$inc": {"n": 1}})
            .await
            .unwrap();
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let off = d
        .database("admin")
        .run_command(doc! {"configureFailPoint": "failCommand", "mode": "off"})
        .await
        .unwrap();
    let hits = match off.get("count") {
        Some(Bson::Int32(n)) => i64::from(*n),
        Some(Bson::Int64(n)) => *n,
        _ => 0,
    };
    let a = run_cutover(&["approve", &plan], &refs(&env));
    let o = wait_exit(runner, Duration::from_secs(120), "the runner").await;
    eprintln!("failCommand entered {hits} times in the 15 s storm");
    assert!(
        hits >= 3,
        "the fail point was entered {hits} times only: {}",
        show(&o)
    );
    assert_eq!(a.status.code(), Some(0), "{}", show(&a));
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(
        epoch_of(&run_doc(&d, "pool-storm").await),
        before,
        "the lease changed hands during the storm"
    );
    assert_same_data(&s, &d, STATE_DB).await;
}

const AUTO: &str = r#"
[options]
write_blocking = "source-and-destination"
max_lag = "2s"

[[steps]]
kind = "sync"

[[steps]]
kind = "commit"
timeout = "5m"
"#;

/// A runner whose destination (the state store) goes through a loopback proxy, paused inside
/// the commit's write-blocked window (`commit.blocked`: both clusters user-write-blocked)
/// with a 4 s lease TTL. Returns the runner, its pause directory and the proxy.
async fn runner_paused_in_the_window(
    src: &ReplicaSet,
    dst: &ReplicaSet,
    plan: &str,
) -> (Child, tempfile::TempDir, crate::outage::Proxy) {
    runner_paused_in_the_window_with(src, dst, plan, "120s", &[]).await
}

/// [`runner_paused_in_the_window`] with another `--retry-timeout`, and `extra` arguments.
async fn runner_paused_in_the_window_with(
    src: &ReplicaSet,
    dst: &ReplicaSet,
    plan: &str,
    retry_timeout: &str,
    extra: &[&str],
) -> (Child, tempfile::TempDir, crate::outage::Proxy) {
    let proxy = crate::outage::Proxy::start(dst.members[0].port).await;
    let pause = tempfile::tempdir().unwrap();
    let env: Vec<(&'static str, String)> = vec![
        ("SOURCE_URI", src.root_uri()),
        ("DESTINATION_URI", proxy.uri()),
        ("CUTOVER_LEASE_TTL", "4s".into()),
        ("CUTOVER_TEST_PAUSE_AT", "commit.blocked".into()),
        ("CUTOVER_TEST_PAUSE_DIR", pause.path().display().to_string()),
    ];
    let mut args = vec![
        "run",
        plan,
        "--retry-timeout",
        retry_timeout,
        "--connect-timeout",
        "2s",
    ];
    args.extend_from_slice(extra);
    let mut runner = spawn_cutover(&args, &refs(&env));
    wait_pause_file(&pause.path().join("commit.blocked.reached"), &mut runner).await;
    assert!(
        !app_insert(src, 10).await,
        "the source must be write-blocked inside the window"
    );
    assert!(
        !app_insert(dst, 11).await,
        "the destination must be write-blocked inside the window"
    );
    (runner, pause, proxy)
}

/// Cuts the destination off (connections dropped, then refused) and lets the paused runner
/// go on into the cut: its next writes (the commit's record, the drain) meet an unreachable
/// state store.
async fn cut_and_go(proxy: &crate::outage::Proxy, pause: &std::path::Path) {
    proxy.set(crate::outage::Mode::Drop);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    proxy.set(crate::outage::Mode::Refuse);
    std::fs::write(pause.join("commit.blocked.go"), b"").unwrap();
}

/// Issue #23 (a): the destination, which holds the state store and the lease, unreachable
/// for 12 s (three lease TTLs) inside the commit's write-blocked window. The runner stops
/// writing when its lease is unconfirmed, waits, renews its own epoch when the destination
/// answers (no other runner took the plan) and finishes the commit in the same run: exit 0,
/// identical data, the epoch unchanged. Before, it exited 4 ("lost its lease") and left
/// both clusters blocked until someone ran it again.
///
/// During the cut, everything a person looks at says "lease unconfirmed", not "nobody is
/// working": `cutover status` (reaching the destination directly) names the waiting runner
/// and never offers "no runner is working to release it"; the runner's own HTTP API answers
/// 503 with the unconfirmed lease and its last error; its metrics say
/// `cutover_lease_unconfirmed 1`. Before, status said no runner was working on the plan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_outage_in_the_window_is_waited_out() {
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let s = src.root_client().await;
    let d = dst.root_client().await;
    seed(&s).await;
    let (_p, plan) = write_plan(&plan_text("unconfirmed", AUTO));
    let plan = plan.to_str().unwrap().to_string();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let (runner, pause, proxy) =
        runner_paused_in_the_window_with(&src, &dst, &plan, "120s", &["--listen", &listen]).await;
    let epoch = epoch_of(&run_doc(&d, "unconfirmed").await);

    cut_and_go(&proxy, pause.path()).await;
    let cut = Instant::now();
    let mut runner = runner;
    // Past the TTL (4 s) by the state store's clock: what status, the API and metrics say.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let direct = env_of(&src, &dst, &[]);
    let v = status_json(&plan, &direct, &[]).await;
    let u = &v["lease_unconfirmed"];
    assert_eq!(u["process"], "alive on this host", "{v}");
    assert_eq!(
        u["holder"],
        format!("host {} pid {}", this_host(), runner.id()),
        "{v}"
    );
    assert_eq!(u["epoch"], epoch, "{v}");
    assert!(u["gives_up"].is_string(), "{v}");
    let blocked = v["blocked"].as_array().unwrap();
    assert_eq!(blocked.len(), 2, "{v}");
    assert!(blocked.iter().all(|b| b["continue_with"].is_null()), "{v}");
    let o = run_cutover(&["status", &plan], &refs(&direct));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("LEASE UNCONFIRMED"), "{}", show(&o));
    assert!(!text.contains("no runner is working"), "{}", show(&o));
    assert!(text.contains("waits for the state store"), "{}", show(&o));
    // Both answer promptly (the page polls every second, a scrape has a timeout): before,
    // `/metrics` waited for the unreachable state store past the client's 30 s.
    let (code, body) = get_within_10s(port, "/api/v1/progress").await;
    assert_eq!(code, 503, "{body}");
    let p: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(p["lease_unconfirmed"]["process"], "this runner", "{p}");
    assert!(p["lease_unconfirmed"]["last_error"].is_string(), "{p}");
    let (code, metrics) = get_within_10s(port, "/metrics").await;
    assert_eq!(code, 200, "{metrics}");
    assert!(
        metrics.contains("cutover_lease_unconfirmed{plan=\"unconfirmed\"} 1"),
        "{metrics}"
    );
    while cut.elapsed() < Duration::from_secs(12) {
        if let Some(st) = runner.try_wait().unwrap() {
            let o = finish_child(runner).await;
            panic!(
                "the runner stopped ({st}) while the destination was unreachable: {}",
                show(&o)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Still inside the window, with no runner able to reach the destination: both blocked.
    assert!(!app_insert(&dst, 12).await, "the destination was unblocked");
    proxy.set(crate::outage::Mode::Up);

    let o = wait_exit(
        runner,
        Duration::from_secs(120),
        "the runner after the outage",
    )
    .await;
    eprintln!("the runner after the outage: {}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(err.contains("Lease unconfirmed"), "{}", show(&o));
    assert!(err.contains("Lease confirmed again"), "{}", show(&o));
    assert!(!err.contains("lost its lease"), "{}", show(&o));
    assert_eq!(
        epoch_of(&run_doc(&d, "unconfirmed").await),
        epoch,
        "the plan changed hands"
    );
    let direct = env_of(&src, &dst, &[]);
    let v = status_json(&plan, &direct, &[]).await;
    assert_eq!(v["state"], "COMMITTED", "{v}");
    assert!(
        app_insert(&dst, 13).await,
        "the destination must be writable after the commit"
    );
    d.database("scratch").drop().await.unwrap();
    s.database("scratch").drop().await.unwrap();
    assert_same_data(&s, &d, STATE_DB).await;
}

/// Issue #23 (b): the same outage, and a second runner (which reaches the destination) is
/// started during it, after the first one's lease expired by the state store's clock. The
/// second takes the plan (a newer epoch); when the destination answers the first runner
/// again, its conditional renewal matches nothing: it exits 4 naming the second runner and
/// writes nothing, and the second finishes the commit. Exactly one runner finishes. Before,
/// the first runner gave up on its own after one TTL, naming nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_cut_off_in_the_window_yields_to_one_that_took_over() {
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let s = src.root_client().await;
    let d = dst.root_client().await;
    seed(&s).await;
    let (_p, plan) = write_plan(&plan_text("unconfirmed-two", AUTO));
    let plan = plan.to_str().unwrap().to_string();
    let (first, pause, proxy) = runner_paused_in_the_window(&src, &dst, &plan).await;
    let first_epoch = epoch_of(&run_doc(&d, "unconfirmed-two").await);

    cut_and_go(&proxy, pause.path()).await;
    // Past the first runner's TTL (4 s), by the state store's clock too.
    tokio::time::sleep(Duration::from_secs(6)).await;
    // The second runner reaches the destination directly; it pauses at the same point so
    // that it still holds the plan when the first one hears from the destination again.
    let pause2 = tempfile::tempdir().unwrap();
    let env2 = env_of(
        &src,
        &dst,
        &[
            ("CUTOVER_LEASE_TTL", "4s".into()),
            ("CUTOVER_TEST_PAUSE_AT", "commit.blocked".into()),
            (
                "CUTOVER_TEST_PAUSE_DIR",
                pause2.path().display().to_string(),
            ),
        ],
    );
    // Its destination URI differs from the first runner's (direct, not through the proxy),
    // which changes the plan's fingerprint: accepted, as an operator on another machine would.
    let mut second = spawn_cutover(&["run", &plan, "--accept-changed-plan"], &refs(&env2));
    let second_pid = second.id();
    wait_pause_file(&pause2.path().join("commit.blocked.reached"), &mut second).await;
    let run_before = run_doc(&d, "unconfirmed-two").await;
    let second_epoch = epoch_of(&run_before);
    assert!(second_epoch > first_epoch, "{run_before}");

    // The destination answers the first runner again: it must stop, naming the second.
    proxy.set(crate::outage::Mode::Up);
    let o = wait_exit(
        first,
        Duration::from_secs(60),
        "the first runner after the outage",
    )
    .await;
    eprintln!("the first runner: {}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(4), "{}", show(&o));
    assert!(err.contains("lost its lease"), "{}", show(&o));
    assert!(
        err.contains(&format!("pid {second_pid}")),
        "names the runner that holds the plan: {}",
        show(&o)
    );
    // It wrote nothing once the second runner held the plan: the commit's record, the
    // blocks, the steps and the lease are the second runner's, as they were.
    let run_after = run_doc(&d, "unconfirmed-two").await;
    for k in ["commits", "blocks", "steps", "epoch", "state"] {
        assert_eq!(
            run_after.get(k),
            run_before.get(k),
            "the first runner wrote `{k}` of the run document"
        );
    }
    let id = |r: &Document| {
        r.get_document("lease")
            .unwrap()
            .get_str("id")
            .unwrap()
            .to_string()
    };
    assert_eq!(id(&run_after), id(&run_before));
    assert!(
        !app_insert(&dst, 14).await,
        "the destination must still be write-blocked (the second runner is paused)"
    );

    // The second runner finishes the commit.
    std::fs::write(pause2.path().join("commit.blocked.go"), b"").unwrap();
    let o = wait_exit(second, Duration::from_secs(120), "the second runner").await;
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let v = status_json(&plan, &env_of(&src, &dst, &[]), &[]).await;
    assert_eq!(v["state"], "COMMITTED", "{v}");
    assert_eq!(v["epoch"], second_epoch, "{v}");
    assert_same_data(&s, &d, STATE_DB).await;
}

/// Issue #23, the other end: the destination stays unreachable past the lease TTL plus
/// `--retry-timeout` (4 s + 5 s) inside the write-blocked window. The runner stops for good
/// with exit 3 (not 4: no other runner took the plan), saying it could not confirm its
/// lease, why (the destination cannot be reached), which clusters stay user-write-blocked
/// and the one command that continues; once the destination is back, `cutover status` says
/// the same (no runner is working to release the blocks), and that command finishes the
/// commit with identical data. Before, the runner exited 4 after one TTL ("lost its lease"),
/// naming neither the blocked clusters nor the command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_that_gives_up_waiting_names_the_blocked_clusters_and_the_command() {
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let s = src.root_client().await;
    let d = dst.root_client().await;
    seed(&s).await;
    let (_p, plan) = write_plan(&plan_text("gave-up", AUTO));
    let plan = plan.to_str().unwrap().to_string();
    let (runner, pause, proxy) =
        runner_paused_in_the_window_with(&src, &dst, &plan, "5s", &[]).await;
    cut_and_go(&proxy, pause.path()).await;
    let o = wait_exit(
        runner,
        Duration::from_secs(90),
        "the runner in the long outage",
    )
    .await;
    eprintln!("the runner in the long outage: {}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{}", show(&o));
    assert!(err.contains("could not confirm its lease"), "{}", show(&o));
    assert!(err.contains("cannot be reached"), "{}", show(&o));
    assert!(!err.contains("lost its lease"), "{}", show(&o));
    assert!(
        err.contains("user writes stay blocked on the destination and the source clusters"),
        "{}",
        show(&o)
    );
    assert!(
        err.contains(&format!("`cutover run {plan}`")),
        "{}",
        show(&o)
    );
    assert!(
        !app_insert(&src, 20).await,
        "the source must still be blocked"
    );
    assert!(
        !app_insert(&dst, 21).await,
        "the destination must still be blocked"
    );

    // The destination is back: status names the blocks and the command that continues.
    proxy.set(crate::outage::Mode::Up);
    let env: Vec<(&'static str, String)> = vec![
        ("SOURCE_URI", src.root_uri()),
        ("DESTINATION_URI", proxy.uri()),
    ];
    let v = wait_status(
        &plan,
        &env,
        &[],
        Duration::from_secs(60),
        "status to show the blocks with no runner",
        |v| v["runner"].is_null() && v["blocked"].as_array().is_some_and(|b| b.len() == 2),
    )
    .await;
    for b in v["blocked"].as_array().unwrap() {
        assert_eq!(
            b["continue_with"].as_str(),
            Some(format!("cutover run {plan}").as_str()),
            "{v}"
        );
    }
    let o = run_cutover(&["run", &plan], &refs(&env));
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        app_insert(&dst, 22).await,
        "the destination must be writable"
    );
    d.database("scratch").drop().await.unwrap();
    s.database("scratch").drop().await.unwrap();
    assert_same_data(&s, &d, STATE_DB).await;
}

/// This machine's host name, as a runner records it in its lease.
fn this_host() -> String {
    hostname::get().unwrap().to_string_lossy().into_owned()
}

/// `GET path` of the runner's API on `port`: its status and body, failing unless it answered
/// within 10 s.
async fn get_within_10s(port: u16, path: &'static str) -> (u16, String) {
    let asked = Instant::now();
    let (code, _, body) = tokio::task::spawn_blocking(move || {
        crate::service::http(port, "GET", path, None, "").expect("the runner's API")
    })
    .await
    .unwrap();
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(10), "{path} took {took:?}");
    (code, body)
}
