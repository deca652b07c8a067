//! `cutover resync PLAN --ns db.coll` against real replica sets: a collection corrupted on the
//! destination (documents changed, deleted, extra ones, an index dropped) is copied again and
//! swapped in by the live lane while another collection keeps replicating and an application
//! writes to both throughout; after the commit both clusters are identical (data and
//! catalog). Refused with exit 4 with no runner live, for a namespace outside the plan's
//! filter, and after the commit (writing nothing); `status` shows the resync's progress.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use futures::TryStreamExt;
use mongodb::bson::{doc, Document};
use mongodb::Client;
use serde_json::Value;

const PLAN: &str = r#"
[options]
max_lag = "2s"

[[options.include]]
database = "shop"

[[steps]]
kind = "sync"

[[steps]]
kind = "commit"
approval = "manual"
timeout = "10m"
"#;

const ORDERS: i64 = 100_000;

async fn seed(c: &Client) {
    let orders = c.database("shop").collection::<Document>("orders");
    let pad = "x".repeat(200);
    for chunk in 0..(ORDERS / 10_000) {
        let docs: Vec<Document> = (chunk * 10_000..(chunk + 1) * 10_000)
            .map(|i| doc! {"_id": i, "a": format!("item-{i}"), "qty": 0i64, "pad": &pad, "nested": {"k": i}})
            .collect();
        orders.insert_many(docs).await.unwrap();
    }
    c.database("shop")
        .run_command(doc! {"createIndexes": "orders", "indexes": [
            {"key": {"qty": 1}, "name": "qty_1"},
            {"key": {"a": 1}, "name": "a_1", "unique": true},
        ]})
        .await
        .unwrap();
    let users = c.database("shop").collection::<Document>("users");
    let docs: Vec<Document> = (0..300i64)
        .map(|i| doc! {"_id": format!("u{i:04}"), "name": format!("user {i}")})
        .collect();
    users.insert_many(docs).await.unwrap();
    // Outside the plan's filter.
    c.database("other")
        .collection::<Document>("things")
        .insert_one(doc! {"_id": 1})
        .await
        .unwrap();
}

/// An application writing to both collections: `$set`s of a new field each time and `$inc`s
/// on orders 0..300 and on users, inserts and deletes in both.
struct Churn {
    stop: Arc<AtomicBool>,
    writes: Arc<AtomicI64>,
    task: tokio::task::JoinHandle<()>,
}

impl Churn {
    fn start(app: Client) -> Churn {
        let stop = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(AtomicI64::new(0));
        let (st, w) = (stop.clone(), writes.clone());
        let task = tokio::spawn(async move {
            let orders = app.database("shop").collection::<Document>("orders");
            let users = app.database("shop").collection::<Document>("users");
            let mut n = 0i64;
            while !st.load(Ordering::Relaxed) {
                n += 1;
                let ok = orders
                    .update_one(
                        doc! {"_id": n % 300},
                        doc! {"$set": {"seq": n, format!("f{n}"): n}, "$inc": {"qty": 1i64}},
                    )
                    .await
                    .is_ok();
                let _ = orders
                    .insert_one(
                        doc! {"_id": format!("churn-{n}"), "a": format!("churn-{n}"), "n": n},
                    )
                    .await;
                let _ = users
                    .update_one(
                        doc! {"_id": format!("u{:04}", n % 300)},
                        doc! {"$set": {"seen": n}, "$inc": {"visits": 1i64}},
                    )
                    .await;
                let _ = users
                    .insert_one(doc! {"_id": format!("new-{n}"), "n": n})
                    .await;
                if n % 5 == 0 {
                    let _ = orders
                        .delete_one(doc! {"_id": format!("churn-{}", n - 3)})
                        .await;
                    let _ = users
                        .delete_one(doc! {"_id": format!("new-{}", n - 2)})
                        .await;
                }
                if ok {
                    w.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        Churn { stop, writes, task }
    }

    async fn finish(self) -> i64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.writes.load(Ordering::Relaxed)
    }
}

/// Corrupts `shop.orders` on the destination: 7 and 50007 deleted, 9 and 50009 changed (9 is
/// churned), two extra documents, index `qty_1` dropped.
async fn corrupt(dst: &Client) {
    let orders = dst.database("shop").collection::<Document>("orders");
    for id in [7i64, 50_007] {
        let r = orders.delete_one(doc! {"_id": id}).await.unwrap();
        assert_eq!(r.deleted_count, 1, "inject: delete {id}");
    }
    for id in [9i64, 50_009] {
        let r = orders
            .update_one(
                doc! {"_id": id},
                doc! {"$set": {"a": format!("corrupted-{id}")}},
            )
            .await
            .unwrap();
        assert_eq!(r.modified_count, 1, "inject: change {id}");
    }
    orders
        .insert_many(vec![
            doc! {"_id": "ghost-1", "a": "only on the destination"},
            doc! {"_id": "ghost-2", "a": "only on the destination too"},
        ])
        .await
        .unwrap();
    dst.database("shop")
        .run_command(doc! {"dropIndexes": "orders", "index": "qty_1"})
        .await
        .unwrap();
}

async fn run_blocking(args: Vec<String>, env: Vec<(&'static str, String)>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        run_cutover(&a, &env_refs(&env))
    })
    .await
    .unwrap()
}

/// Two replica sets, the source seeded (without `other`), the plan written and a runner
/// started and at can-commit: the start of the tests that resync under a live lane.
struct Live {
    src: ReplicaSet,
    dst: ReplicaSet,
    s: Client,
    d: Client,
    _dir: tempfile::TempDir,
    plan: String,
    env: Vec<(&'static str, String)>,
    runner: std::process::Child,
}

async fn live_at_can_commit(name: &str) -> Live {
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let s = src.root_client().await;
    let d = dst.root_client().await;
    seed(&s).await;
    s.database("other").drop().await.unwrap();
    let run = spawn_run_until(&src, &dst, name, PLAN, "can-commit", |v| {
        v["can_commit"] == true && v["runner"].is_string()
    })
    .await;
    Live {
        src,
        dst,
        s,
        d,
        _dir: run.dir,
        plan: run.plan,
        env: run.env,
        runner: run.child,
    }
}

async fn resync_records(d: &Client) -> Vec<Document> {
    d.database("__cutover")
        .collection::<Document>("resyncs")
        .find(doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_a_corrupted_collection_while_another_keeps_replicating() {
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let s = src.root_client().await;
    let d = dst.root_client().await;
    seed(&s).await;
    let (_dir, plan) = write_plan(&plan_text("resync-live", PLAN));
    let plan = plan.to_str().unwrap().to_string();
    let env = root_env(&src, &dst);

    // The sync step, then the runner exits: nothing serves a resync now.
    let o = run_blocking(
        vec!["run".into(), plan.clone(), "--max-steps".into(), "1".into()],
        env.clone(),
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let o = run_blocking(
        vec![
            "resync".into(),
            plan.clone(),
            "--ns".into(),
            "shop.orders".into(),
        ],
        env.clone(),
    )
    .await;
    assert_eq!(o.status.code(), Some(4), "{}", show(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("no `cutover run` is live") && stderr.contains("start `cutover run`"),
        "{}",
        show(&o)
    );
    assert!(
        resync_records(&d).await.is_empty(),
        "a refused resync recorded a request"
    );

    let runner = spawn_cutover(&["run", &plan], &env_refs(&env));
    wait_status(
        &plan,
        &env,
        &[],
        Duration::from_secs(120),
        "can-commit",
        |v| v["can_commit"] == true && v["runner"].is_string(),
    )
    .await;

    // Outside the plan's filter: refused, nothing requested.
    let o = run_blocking(
        vec![
            "resync".into(),
            plan.clone(),
            "--ns".into(),
            "other.things".into(),
        ],
        env.clone(),
    )
    .await;
    assert_eq!(o.status.code(), Some(4), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not in plan"),
        "{}",
        show(&o)
    );
    let o = run_blocking(
        vec![
            "resync".into(),
            plan.clone(),
            "--ns-regex".into(),
            "other.^th".into(),
        ],
        env.clone(),
    )
    .await;
    assert_eq!(o.status.code(), Some(4), "{}", show(&o));
    assert!(resync_records(&d).await.is_empty());

    let churn = Churn::start(src.app_client().await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    corrupt(&d).await;

    let resync = spawn_cutover(
        &[
            "resync",
            &plan,
            "--ns-regex",
            "shop.^ord",
            "--format",
            "json",
        ],
        &env_refs(&env),
    );
    // While the copy runs: `status` shows its progress, and the other collection keeps
    // replicating (a new user appears on the destination before the swap).
    let start = Instant::now();
    loop {
        let recs = resync_records(&d).await;
        if recs.iter().any(|r| r.get_str("state") == Ok("copying")) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the resync never started copying: {recs:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.database("shop")
        .collection::<Document>("users")
        .insert_one(doc! {"_id": "marker", "during": "resync"})
        .await
        .unwrap();
    let st = status_json(&plan, &env, &[]).await;
    let r = &st["resyncs"][0];
    assert_eq!(r["ns"], "shop.orders", "{st:#}");
    assert!(
        r["state"] == "copying" || r["state"] == "swapping" || r["state"] == "done",
        "{st:#}"
    );
    assert_eq!(
        r["estimated_documents"].as_i64().map(|n| n >= ORDERS),
        Some(true),
        "{st:#}"
    );
    assert!(r["who"].as_str().unwrap().contains("pid"), "{st:#}");
    let start = Instant::now();
    loop {
        let found = d
            .database("shop")
            .collection::<Document>("users")
            .find_one(doc! {"_id": "marker"})
            .await
            .unwrap();
        if found.is_some() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "users did not replicate during the resync"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let recs = resync_records(&d).await;
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(
        recs[0].get_str("state"),
        Ok("copying"),
        "shop.users replicated only after the resync's copy: {recs:?}"
    );

    let o = tokio::task::spawn_blocking(move || resync.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let report: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("invalid JSON ({e}): {}", show(&o)));
    eprintln!("resync report: {report}");
    assert_eq!(report["ok"], true, "{report:#}");
    let r = &report["resyncs"][0];
    assert_eq!(report["resyncs"].as_array().unwrap().len(), 1, "{report:#}");
    assert_eq!(r["ns"], "shop.orders", "{report:#}");
    assert_eq!(r["state"], "done", "{report:#}");
    assert!(
        r["copied_documents"].as_i64().unwrap() >= ORDERS,
        "{report:#}"
    );
    let held = r["held_events"].as_i64().unwrap();
    assert!(
        held > 0,
        "the application wrote during the copy, yet nothing was held: {report:#}"
    );
    assert_eq!(r["replayed_events"].as_i64(), Some(held), "{report:#}");
    // The temporary collection is gone; the corruption is gone already (before the commit).
    let names = d.database("shop").list_collection_names().await.unwrap();
    assert!(
        !names.iter().any(|n| n.contains("cutover_resync")),
        "temporary collection left: {names:?}"
    );
    let orders = d.database("shop").collection::<Document>("orders");
    assert!(orders
        .find_one(doc! {"_id": "ghost-1"})
        .await
        .unwrap()
        .is_none());
    assert!(orders
        .find_one(doc! {"_id": 50_007i64})
        .await
        .unwrap()
        .is_some());

    // Keep writing a while after the swap, then commit.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes = churn.finish().await;
    assert!(writes > 100, "the application wrote only {writes} times");
    let o = run_blocking(vec!["approve".into(), plan.clone()], env.clone()).await;
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let o = tokio::task::spawn_blocking(move || runner.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    // `other.things` is outside the plan's filter, so never on the destination.
    s.database("other").drop().await.unwrap();
    // The commit restored the relaxations (unique `a_1`) of the swapped-in collection too.
    assert_same_data(&s, &d, "__cutover").await;
    assert_same_catalog(&s, &d, "__cutover").await;

    let st = status_json(&plan, &env, &[]).await;
    assert_eq!(st["resyncs"][0]["state"], "done", "{st:#}");
    assert_eq!(
        st["resyncs"][0]["held_events"].as_i64(),
        Some(held),
        "{st:#}"
    );
    let o = run_blocking(vec!["status".into(), plan.clone()], env.clone()).await;
    let text = String::from_utf8_lossy(&o.stdout);
    eprintln!("status after the commit:\n{text}");
    assert!(
        text.contains("resync        shop.orders: done"),
        "{}",
        show(&o)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_is_refused_after_the_commit_and_writes_nothing() {
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let s = src.root_client().await;
    s.database("shop")
        .collection::<Document>("orders")
        .insert_many((0..100i64).map(|i| doc! {"_id": i, "v": i}))
        .await
        .unwrap();
    let plan_body = PLAN.replace("approval = \"manual\"", "approval = \"auto\"");
    let (_dir, plan) = write_plan(&plan_text("resync-committed", &plan_body));
    let plan = plan.to_str().unwrap().to_string();
    let env = root_env(&src, &dst);
    let o = run_blocking(vec!["run".into(), plan.clone()], env.clone()).await;
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let st = status_json(&plan, &env, &[]).await;
    assert_eq!(st["state"], "COMMITTED", "{st:#}");

    let d = dst.root_client().await;
    let before = last_oplog_ts(&d).await;
    for format in ["text", "json"] {
        let o = run_blocking(
            vec![
                "resync".into(),
                plan.clone(),
                "--ns".into(),
                "shop.orders".into(),
                "--format".into(),
                format.into(),
            ],
            env.clone(),
        )
        .await;
        assert_eq!(o.status.code(), Some(4), "{}", show(&o));
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(
            stderr.contains("refused") && stderr.contains("commit"),
            "{}",
            show(&o)
        );
        if format == "json" {
            let v: Value = serde_json::from_slice(&o.stdout).unwrap();
            assert_eq!(v["ok"], false, "{v:#}");
        }
    }
    let writes = oplog_writes_since(&d, before, "__cutover").await;
    assert!(writes.is_empty(), "a refused resync wrote: {writes:?}");
    assert!(resync_records(&d).await.is_empty());
}

/// A DDL change on the collection during its copy (an index built on the source) cancels the
/// resync: exit 1 naming the event, the held events are applied to the original collection,
/// the temporary copy is dropped, and the sync goes on to an identical commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ddl_change_during_the_copy_cancels_the_resync_without_losing_events() {
    let Live {
        src,
        dst: _dst,
        s,
        d,
        _dir,
        plan,
        env,
        runner,
    } = live_at_can_commit("resync-cancel").await;
    let churn = Churn::start(src.app_client().await);
    let resync = spawn_cutover(
        &["resync", &plan, "--ns", "shop.orders", "--format", "json"],
        &env_refs(&env),
    );
    let start = Instant::now();
    loop {
        let recs = resync_records(&d).await;
        if recs.iter().any(|r| r.get_str("state") == Ok("copying")) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the resync never started copying: {recs:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.database("shop")
        .run_command(
            doc! {"createIndexes": "orders", "indexes": [{"key": {"n": 1}, "name": "n_1"}]},
        )
        .await
        .unwrap();
    let o = tokio::task::spawn_blocking(move || resync.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let report: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("invalid JSON ({e}): {}", show(&o)));
    eprintln!("cancelled resync report: {report}");
    let r = &report["resyncs"][0];
    assert_eq!(r["state"], "failed", "{report:#}");
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("`createIndexes` change on `shop.orders`"),
        "{report:#}"
    );
    assert_eq!(r["replayed_events"], r["held_events"], "{report:#}");
    // The temporary copy is dropped once its copy task has stopped.
    let start = Instant::now();
    loop {
        let names = d.database("shop").list_collection_names().await.unwrap();
        if !names.iter().any(|n| n.contains("cutover_resync")) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "temporary collection left: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let writes = churn.finish().await;
    assert!(writes > 50, "the application wrote only {writes} times");
    let o = run_blocking(vec!["approve".into(), plan.clone()], env.clone()).await;
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let o = tokio::task::spawn_blocking(move || runner.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_same_data(&s, &d, "__cutover").await;
    assert_same_catalog(&s, &d, "__cutover").await;
}

/// Waits until the resync of `shop.orders` is copying and its temporary collection on the
/// destination holds documents; returns the temporary collection's name.
async fn wait_copying_with_docs(d: &Client) -> String {
    let start = Instant::now();
    loop {
        let recs = resync_records(d).await;
        if let Some(r) = recs.iter().find(|r| r.get_str("state") == Ok("copying")) {
            let temp = r.get_str("temp").unwrap().to_string();
            let coll = temp.split_once('.').unwrap().1.to_string();
            let n = d
                .database("shop")
                .collection::<Document>(&coll)
                .estimated_document_count()
                .await
                .unwrap_or(0);
            if n > 0 {
                return temp;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the resync never started copying: {recs:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn temp_collections(d: &Client) -> Vec<String> {
    d.database("shop")
        .list_collection_names()
        .await
        .unwrap()
        .into_iter()
        .filter(|n| n.contains("cutover_resync"))
        .collect()
}

/// A runner killed with SIGKILL in the middle of a resync's copy, then one aborted right after
/// the swap (before the held events are replayed: crash point `resync.swapped`), while an
/// application writes to the collection and another throughout: each next `cutover run` does
/// the resync again, no temporary collection is left on the destination, the record ends
/// `done` (third attempt) and the commit is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_killed_during_a_resync_copy_or_after_its_swap_redoes_it() {
    let Live {
        src,
        dst: _dst,
        s,
        d,
        _dir,
        plan,
        env,
        mut runner,
    } = live_at_can_commit("resync-kill").await;
    let churn = Churn::start(src.app_client().await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    corrupt(&d).await;
    let resync = spawn_cutover(
        &["resync", &plan, "--ns", "shop.orders", "--format", "json"],
        &env_refs(&env),
    );

    // 1. kill -9 in the middle of the copy.
    let temp = wait_copying_with_docs(&d).await;
    runner.kill().unwrap(); // SIGKILL
    let killed = runner.wait_with_output().unwrap();
    let recs = resync_records(&d).await;
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(
        recs[0].get_str("state"),
        Ok("copying"),
        "the kill did not land during the copy: {recs:?}\n{}",
        show(&killed)
    );
    let copied_at_kill = d
        .database("shop")
        .collection::<Document>(temp.split_once('.').unwrap().1)
        .estimated_document_count()
        .await
        .unwrap();
    eprintln!("killed during the copy of {temp} ({copied_at_kill} documents copied)");
    assert!((copied_at_kill as i64) < ORDERS, "copy already complete");
    let o = tokio::task::spawn_blocking(move || resync.wait_with_output().unwrap())
        .await
        .unwrap();
    eprintln!("resync command after the kill: {}", show(&o));
    assert_ne!(o.status.code(), Some(0), "{}", show(&o));

    // 2. The next runner does it again and aborts right after the swap.
    let mut crash = env.clone();
    crash.push(("CUTOVER_TEST_CRASH_AT", "resync.swapped".into()));
    let o = run_blocking(vec!["run".into(), plan.clone()], crash).await;
    assert_eq!(o.status.code(), None, "expected an abort: {}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("crash point `resync.swapped`"),
        "{}",
        show(&o)
    );
    let recs = resync_records(&d).await;
    assert_eq!(recs[0].get_str("state"), Ok("swapping"), "{recs:?}");
    assert_eq!(recs[0].get_i32("attempt"), Ok(2), "{recs:?}");
    assert_eq!(
        temp_collections(&d).await,
        Vec::<String>::new(),
        "the first attempt's temporary collection was left behind"
    );

    // 3. The next runner does it a third time and finishes; then the commit.
    let runner = spawn_cutover(&["run", &plan], &env_refs(&env));
    let start = Instant::now();
    loop {
        let recs = resync_records(&d).await;
        if recs[0].get_str("state") == Ok("done") {
            eprintln!("resync record: {:?}", recs[0]);
            assert_eq!(recs[0].get_i32("attempt"), Ok(3), "{recs:?}");
            assert!(recs[0].get_i64("copied_documents").unwrap() >= ORDERS);
            assert_eq!(
                recs[0].get_i64("replayed_events"),
                recs[0].get_i64("held_events")
            );
            break;
        }
        assert_ne!(recs[0].get_str("state"), Ok("failed"), "{recs:?}");
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the resync was not redone: {recs:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(temp_collections(&d).await, Vec::<String>::new());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let writes = churn.finish().await;
    assert!(writes > 100, "the application wrote only {writes} times");
    wait_status(
        &plan,
        &env,
        &[],
        Duration::from_secs(120),
        "can-commit",
        |v| v["can_commit"] == true,
    )
    .await;
    let o = run_blocking(vec!["approve".into(), plan.clone()], env.clone()).await;
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let o = tokio::task::spawn_blocking(move || runner.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_same_data(&s, &d, "__cutover").await;
    assert_same_catalog(&s, &d, "__cutover").await;
    let st = status_json(&plan, &env, &[]).await;
    assert_eq!(st["resyncs"][0]["state"], "done", "{st:#}");
    assert_eq!(temp_collections(&d).await, Vec::<String>::new());
}

/// The commit approved while a resync is copying (the application writing until cutover
/// blocks its writes on the source: `write_blocking = "source-and-destination"`): the commit waits for the resync to finish, and the result is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_approved_during_a_resync_waits_for_it() {
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let s = src.root_client().await;
    let d = dst.root_client().await;
    seed(&s).await;
    s.database("other").drop().await.unwrap();
    // cutover blocks the application's writes on the source at the commit, so the
    // application may write until then.
    let body = PLAN.replace(
        "max_lag = \"2s\"",
        "max_lag = \"2s\"\nwrite_blocking = \"source-and-destination\"",
    );
    let (_dir, plan) = write_plan(&plan_text("resync-commit", &body));
    let plan = plan.to_str().unwrap().to_string();
    let env = root_env(&src, &dst);
    let runner = spawn_cutover(&["run", &plan], &env_refs(&env));
    wait_status(
        &plan,
        &env,
        &[],
        Duration::from_secs(120),
        "can-commit",
        |v| v["can_commit"] == true && v["runner"].is_string(),
    )
    .await;
    let churn = Churn::start(src.app_client().await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    corrupt(&d).await;
    let resync = spawn_cutover(
        &["resync", &plan, "--ns", "shop.orders", "--format", "json"],
        &env_refs(&env),
    );
    wait_copying_with_docs(&d).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let o = run_blocking(vec!["approve".into(), plan.clone()], env.clone()).await;
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let recs = resync_records(&d).await;
    eprintln!("at the approval: {recs:?}");
    assert_eq!(
        recs[0].get_str("state"),
        Ok("copying"),
        "approved too late: {recs:?}"
    );
    let o = tokio::task::spawn_blocking(move || runner.wait_with_output().unwrap())
        .await
        .unwrap();
    let writes = churn.finish().await;
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(writes > 20, "the application wrote only {writes} times");
    let r = tokio::task::spawn_blocking(move || resync.wait_with_output().unwrap())
        .await
        .unwrap();
    eprintln!("resync command: {}", show(&r));
    let recs = resync_records(&d).await;
    eprintln!("after the commit: {recs:?}");
    assert_eq!(recs[0].get_str("state"), Ok("done"), "{recs:?}");
    assert_eq!(
        recs[0].get_i64("replayed_events"),
        recs[0].get_i64("held_events")
    );
    assert_eq!(r.status.code(), Some(0), "{}", show(&r));
    assert_eq!(temp_collections(&d).await, Vec::<String>::new());
    let st = status_json(&plan, &env, &[]).await;
    assert_eq!(st["state"], "COMMITTED", "{st:#}");
    assert_same_data(&s, &d, "__cutover").await;
    assert_same_catalog(&s, &d, "__cutover").await;
}

/// A runner killed during a resync's copy while the application writes to the collection
/// (events held in the runner's memory), then the redo by the next runner cancelled by a DDL
/// change on the collection: the held events of both attempts reach the original collection,
/// the stale copy ranges are gone and the commit is exact. Before the lane kept its stored
/// resume token at the hold's start, the first attempt's held events were lost: the lane had
/// stored tokens past them, and the cancelled redo applied only the events after the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_events_survive_a_kill_and_a_cancelled_redo() {
    let Live {
        src,
        dst: _dst,
        s,
        d,
        _dir,
        plan,
        env,
        mut runner,
    } = live_at_can_commit("resync-kill-cancel").await;
    let churn = Churn::start(src.app_client().await);
    let resync = spawn_cutover(&["resync", &plan, "--ns", "shop.orders"], &env_refs(&env));

    // 1. kill -9 during the copy, once the lane has held events over several batches.
    wait_copying_with_docs(&d).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    runner.kill().unwrap(); // SIGKILL
    let killed = runner.wait_with_output().unwrap();
    let recs = resync_records(&d).await;
    assert_eq!(
        recs[0].get_str("state"),
        Ok("copying"),
        "the kill did not land during the copy: {recs:?}\n{}",
        show(&killed)
    );
    let held_at_kill = recs[0].get_i64("held_events").unwrap_or(0);
    eprintln!("killed during the copy; {held_at_kill} held events last recorded");
    let _ = tokio::task::spawn_blocking(move || resync.wait_with_output())
        .await
        .unwrap();

    // 2. The next runner redoes it; a DDL change on the collection cancels the redo.
    let runner = spawn_cutover(&["run", &plan], &env_refs(&env));
    let start = Instant::now();
    loop {
        let recs = resync_records(&d).await;
        if recs[0].get_i32("attempt") == Ok(2) && recs[0].get_str("state") == Ok("copying") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the resync was not redone: {recs:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    s.database("shop")
        .run_command(
            doc! {"createIndexes": "orders", "indexes": [{"key": {"n": 1}, "name": "n_1"}]},
        )
        .await
        .unwrap();
    let start = Instant::now();
    loop {
        let recs = resync_records(&d).await;
        if recs[0].get_str("state") == Ok("failed") {
            eprintln!("cancelled redo: {:?}", recs[0]);
            assert!(
                recs[0]
                    .get_str("error")
                    .unwrap_or_default()
                    .contains("`createIndexes` change on `shop.orders`"),
                "{recs:?}"
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the redo was not cancelled: {recs:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let writes = churn.finish().await;
    assert!(writes > 100, "the application wrote only {writes} times");
    // The cancelled copy stops in the background; then neither attempt leaves a temporary
    // collection or copy ranges.
    let start = Instant::now();
    loop {
        let stale: Vec<Document> = d
            .database("__cutover")
            .collection::<Document>("partitions")
            .find(doc! {"_id": {"$regex": "/resync/"}})
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        let temps = temp_collections(&d).await;
        if stale.is_empty() && temps.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "left behind: {} copy ranges, temporary collections {temps:?}",
            stale.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_status(
        &plan,
        &env,
        &[],
        Duration::from_secs(120),
        "can-commit",
        |v| v["can_commit"] == true,
    )
    .await;
    let o = run_blocking(vec!["approve".into(), plan.clone()], env.clone()).await;
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let o = tokio::task::spawn_blocking(move || runner.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_same_data(&s, &d, "__cutover").await;
    assert_same_catalog(&s, &d, "__cutover").await;
}
