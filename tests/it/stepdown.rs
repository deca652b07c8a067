//! Elections: three-node replica sets as source and destination; the primary steps down
//! (`replSetStepDown`) during the copy, during change application (an application writing)
//! and during a commit. The run completes and the clusters end byte-identical with every
//! acknowledged write present. One test function: six mongods at a time are enough.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::env_refs as refs;
use crate::common::*;

/// Elections can take a while: `status` waits longer for a primary.
const STATUS_ARGS: &[&str] = &["--connect-timeout", "30s"];
use mongodb::bson::{doc, Document};

const MANUAL: &str = r#"
[options]
write_blocking = "source-and-destination"
max_lag = "2s"

[[steps]]
kind = "sync"

[[steps]]
kind = "commit"
approval = "manual"
timeout = "10m"
"#;

/// The member that is primary now.
async fn primary(rs: &ReplicaSet) -> Option<usize> {
    for i in 0..rs.members.len() {
        let c = rs.member_client(i).await;
        if let Ok(h) = c.database("admin").run_command(doc! {"hello": 1}).await {
            if h.get_bool("isWritablePrimary").unwrap_or(false) {
                return Some(i);
            }
        }
    }
    None
}

/// Steps the current primary down (as root, directly on it) and waits until another member
/// is primary. Returns (old, new).
async fn step_down(rs: &ReplicaSet, who: &str) -> (usize, usize) {
    let mut old = None;
    for _ in 0..300 {
        old = primary(rs).await;
        if old.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let old = old.unwrap_or_else(|| panic!("{who}: no primary to step down"));
    let c = rs.member_client(old).await;
    let start = Instant::now();
    // The primary may close this connection as it steps down, so the reply can be an error;
    // it refuses when no secondary caught up in time (262): ask again.
    loop {
        let r = c
            .database("admin")
            .run_command(doc! {"replSetStepDown": 15, "secondaryCatchUpPeriodSecs": 5})
            .await;
        eprintln!(
            "{who}: replSetStepDown on member {old}: {}",
            r.map(|_| "ok".to_string()).unwrap_or_else(|e| e
                .to_string()
                .chars()
                .take(160)
                .collect())
        );
        let asked = Instant::now();
        while asked.elapsed() < Duration::from_secs(15) {
            if let Some(p) = primary(rs).await {
                if p != old {
                    eprintln!("{who}: member {p} is primary after {:?}", start.elapsed());
                    return (old, p);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{who}: no new primary after stepping down member {old}"
        );
    }
}

/// An application on the source (`app` user) inserting `{_id: n}` into `app.events` and
/// incrementing a counter, until user writes are blocked. Returns the acknowledged ids.
fn app(src: mongodb::Client, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<i64>> {
    tokio::spawn(async move {
        let mut acked = Vec::new();
        let db = src.database("app");
        let mut n = 0i64;
        while !stop.load(Ordering::Relaxed) {
            match db
                .collection::<Document>("events")
                .insert_one(doc! {"_id": n, "pad": "e".repeat(64)})
                .await
            {
                Ok(_) => {
                    acked.push(n);
                    let _ = db
                        .collection::<Document>("counter")
                        .update_one(
                            doc! {"_id": "c"},
                            doc! {"$inc": {"n": 1}, "$set": {"last": n}},
                        )
                        .upsert(true)
                        .await;
                }
                Err(e) if e.to_string().contains("User writes blocked") => break,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
            n += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        acked
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_stepdowns_during_copy_apply_and_commit() {
    let three = || {
        ReplicaSet::start_with(RsOptions {
            members: 3,
            ..Default::default()
        })
    };
    let (src, dst) = tokio::join!(three(), three());
    let s = src.root_client().await;
    s.database("shop")
        .collection::<Document>("orders")
        .insert_many(
            (0..40_000)
                .map(|i| doc! {"_id": i, "item": format!("item-{i}"), "pad": "p".repeat(200)}),
        )
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = app(src.app_client().await, stop.clone());
    let (_d, plan) = write_plan(&plan_text("elections", MANUAL));
    let plan = plan.to_str().unwrap().to_string();
    let env: Vec<(&'static str, String)> = vec![
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
                    "--docs-per-range",
                    "300",
                    "--copy-concurrency",
                    "1",
                ],
                &refs(&env),
            )
        }
    });

    // 1. During the copy: the source's primary steps down.
    wait_status(
        &plan,
        &env,
        STATUS_ARGS,
        Duration::from_secs(300),
        "the copy",
        |v| {
            v["phase"] == "copying"
                && v["collection_copy"]["estimated_copied_bytes"].as_i64() > Some(0)
        },
    )
    .await;
    step_down(&src, "source (copy)").await;
    let d = dst.root_client().await;
    let lane = d
        .database("__cutover")
        .collection::<Document>("lanes")
        .find_one(doc! {"_id": "elections/forward"})
        .await
        .unwrap()
        .unwrap();
    assert!(
        !lane.get_bool("copy_done").unwrap_or(false),
        "the copy finished before the stepdown took effect; seed more documents"
    );
    assert!(!run.is_finished(), "the run ended during the copy");

    // 2. During change application (the app writes; the run waits for approval): the
    //    destination's primary, then the source's, step down.
    wait_status(
        &plan,
        &env,
        STATUS_ARGS,
        Duration::from_secs(600),
        "the run to wait for approval",
        |v| v["phase"] == "waiting for approval",
    )
    .await;
    let before = status_json(&plan, &env, STATUS_ARGS).await["events_applied"]
        .as_i64()
        .unwrap_or(0);
    step_down(&dst, "destination (apply)").await;
    step_down(&src, "source (apply)").await;
    let v = wait_status(
        &plan,
        &env,
        STATUS_ARGS,
        Duration::from_secs(120),
        "change application to continue",
        |v| v["events_applied"].as_i64().unwrap_or(0) > before + 50 && v["can_commit"] == true,
    )
    .await;
    assert!(
        !run.is_finished(),
        "the run ended during change application: {v}"
    );

    // 3. During the commit: approve, then step both primaries down while it runs.
    let o = run_cutover(&["approve", &plan], &refs(&env));
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let approved_at = mongodb::bson::DateTime::now();
    let (dst_old, _) = step_down(&dst, "destination (commit)").await;
    let state_after_dst = status_json(&plan, &env, STATUS_ARGS).await;
    step_down(&src, "source (commit)").await;
    let o = run.await.unwrap();
    stop.store(true, Ordering::Relaxed);
    let acked = writer.await.unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    eprintln!(
        "state after the destination stepdown (member {dst_old}): {}",
        state_after_dst["state"]
    );
    let run_doc = d
        .database("__cutover")
        .collection::<Document>("runs")
        .find_one(doc! {"_id": "elections"})
        .await
        .unwrap()
        .unwrap();
    let commit = run_doc
        .get_document("commits")
        .unwrap()
        .get_document("1")
        .unwrap();
    eprintln!("commit record: {commit}");
    // The commit could not begin before the approval, and the destination's stepdown was
    // issued right after it: the commit finished only after that stepdown began.
    let writable_at = commit.get_datetime("writable_at").unwrap();
    assert!(
        *writable_at > approved_at,
        "the commit ended ({writable_at}) before the stepdown ({approved_at})"
    );

    assert_same_data(&s, &d, "__cutover").await;
    assert!(acked.len() > 20, "only {} writes acknowledged", acked.len());
    let events = d.database("app").collection::<Document>("events");
    for n in &acked {
        assert!(
            events.find_one(doc! {"_id": *n}).await.unwrap().is_some(),
            "acknowledged write {n} is missing on the destination"
        );
    }
    let counter = d
        .database("app")
        .collection::<Document>("counter")
        .find_one(doc! {"_id": "c"})
        .await
        .unwrap()
        .unwrap();
    eprintln!("acknowledged inserts: {}, counter {counter}", acked.len());
}
