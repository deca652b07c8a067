//! The full reversible plan — sync, validate-indexes, commit, reverse, commit — with an
//! application writing throughout as the `app` user (refused while blocked), in one run, one
//! step per invocation, and after crashes at every transition point.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::env_refs as refs;
use crate::common::*;
use mongodb::bson::{doc, Document};
use mongodb::Client;

const REVERSIBLE: &str = r#"
[options]
reversible = true
write_blocking = "source-and-destination"
max_lag = "2s"

[[steps]]
kind = "sync"

[[steps]]
kind = "validate-indexes"

[[steps]]
kind = "commit"
timeout = "3m"

[[steps]]
kind = "reverse"

# Approved by the test once the application has written to the new cluster: without it a
# fast machine finishes the reverse before the application has moved there.
[[steps]]
kind = "commit"
approval = "manual"
timeout = "3m"
"#;

/// An application: inserts `{_id: n}` into `app.events` and pushes `n` onto `app.counter.log`,
/// on whichever cluster accepts writes; moves to the other cluster when refused with
/// `UserWritesBlocked`; stops for good once it has been refused on the destination after
/// having written there (the final commit has begun), so both clusters can be compared.
struct App {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(i64, &'static str)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl App {
    fn start(src: Client, dst: Client) -> App {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let (st, ak) = (stop.clone(), acked.clone());
        let task = tokio::spawn(async move {
            let mut on_dst = false;
            let mut wrote_dst = false;
            let mut n: i64 = 0;
            while !st.load(Ordering::Relaxed) {
                let (c, name) = if on_dst {
                    (&dst, "destination")
                } else {
                    (&src, "source")
                };
                let db = c.database("app");
                let r = db
                    .collection::<Document>("events")
                    .insert_one(doc! {"_id": n, "on": name})
                    .await;
                match r {
                    Ok(_) => {
                        let _ = db
                            .collection::<Document>("counter")
                            .update_one(doc! {"_id": "c"}, doc! {"$push": {"log": n}})
                            .upsert(true)
                            .await
                            .map(|_| ak.lock().unwrap().push((n, name)));
                        ak.lock().unwrap().push((n, name));
                        wrote_dst |= on_dst;
                        n += 1;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(e)
                        if e.to_string().contains("User writes blocked")
                            || e.to_string().contains("371") =>
                    {
                        if on_dst && wrote_dst {
                            return; // the final commit has begun
                        }
                        on_dst = !on_dst;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        App { stop, acked, task }
    }

    /// Approves the final commit (step 4) once the application has written to the
    /// destination a few times.
    fn approve_when_on_destination(
        &self,
        plan: &str,
        env: &[(&'static str, String)],
    ) -> tokio::task::JoinHandle<()> {
        let acked = self.acked.clone();
        let (plan, env) = (plan.to_string(), env.to_vec());
        tokio::spawn(async move {
            loop {
                let on_dst = acked
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|(_, on)| *on == "destination")
                    .count();
                if on_dst >= 10 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let o = tokio::task::spawn_blocking(move || {
                run_cutover(&["approve", &plan, "--step", "4"], &refs(&env))
            })
            .await
            .unwrap();
            assert_eq!(o.status.code(), Some(0), "approve: {}", show(&o));
        })
    }

    async fn finish(self) -> Vec<(i64, &'static str)> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        let v = self.acked.lock().unwrap().clone();
        v
    }
}

async fn seed(c: &Client) {
    let db = c.database("shop");
    db.collection::<Document>("users")
        .insert_many((0..2000).map(
            |i| doc! {"_id": i, "email": format!("u{i}@x"), "ts": mongodb::bson::DateTime::now()},
        ))
        .await
        .unwrap();
    db.run_command(doc! {"createIndexes": "users", "indexes": [
        {"key": {"email": 1}, "name": "email_1", "unique": true},
        {"key": {"ts": 1}, "name": "ts_ttl", "expireAfterSeconds": 86400},
    ]})
    .await
    .unwrap();
    c.database("app")
        .collection::<Document>("events")
        .insert_one(doc! {"_id": -1, "on": "seed"})
        .await
        .unwrap();
}

fn env_for(src: &ReplicaSet, dst: &ReplicaSet) -> Vec<(&'static str, String)> {
    vec![
        ("SOURCE_URI", src.root_uri()),
        ("DESTINATION_URI", dst.root_uri()),
    ]
}

/// After the whole plan: identical data, every acknowledged write on the source (where the
/// application ends), the source writable and the destination blocked for the app user.
async fn assert_end_state(src: &ReplicaSet, dst: &ReplicaSet, acked: &[(i64, &str)]) {
    let s = src.root_client().await;
    let d = dst.root_client().await;
    assert_same_data(&s, &d, "__cutover").await;
    let events = s.database("app").collection::<Document>("events");
    for (n, on) in acked {
        assert!(
            events.find_one(doc! {"_id": *n}).await.unwrap().is_some(),
            "acknowledged write {n} (made on the {on}) is missing on the source"
        );
    }
    let log = s
        .database("app")
        .collection::<Document>("counter")
        .find_one(doc! {"_id": "c"})
        .await
        .unwrap();
    if let Some(log) = log {
        let pushed: Vec<i64> = log
            .get_array("log")
            .unwrap()
            .iter()
            .filter_map(|b| b.as_i64())
            .collect();
        let mut seen = std::collections::HashSet::new();
        for p in &pushed {
            assert!(seen.insert(*p), "push {p} applied twice");
        }
    }
    let sides = acked
        .iter()
        .map(|(_, on)| *on)
        .collect::<std::collections::BTreeSet<_>>();
    assert!(
        sides.contains("destination"),
        "the application never wrote to the destination: {sides:?}"
    );
    let app_s = src.app_client().await;
    app_s
        .database("app")
        .collection::<Document>("after")
        .insert_one(doc! {"x": 1})
        .await
        .expect("source writable at the end");
    let app_d = dst.app_client().await;
    assert!(
        app_d
            .database("app")
            .collection::<Document>("after")
            .insert_one(doc! {"x": 1})
            .await
            .is_err(),
        "destination must be user-write-blocked after the reverse commit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reversible_plan_in_one_run_with_app_writing() {
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    seed(&src.root_client().await).await;
    let app = App::start(src.app_client().await, dst.app_client().await);
    let (_d, plan) = write_plan(&plan_text("reversible", REVERSIBLE));
    let plan = plan.to_str().unwrap().to_string();
    let env = env_for(&src, &dst);
    let approver = app.approve_when_on_destination(&plan, &env);
    let o = tokio::task::spawn_blocking({
        let (plan, env) = (plan.clone(), env.clone());
        move || run_cutover(&["run", &plan], &refs(&env))
    })
    .await
    .unwrap();
    approver.await.unwrap();
    let acked = app.finish().await;
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("write-blocked window"), "{out}");
    assert_end_state(&src, &dst, &acked).await;

    let o = run_cutover(&["status", &plan, "--format", "json"], &refs(&env));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["state"], "COMMITTED", "{v}");
    assert_eq!(v["blocked"][0]["cluster"], "destination", "{v}");
    assert_eq!(v["direction"]["source"], dst.hosts().as_str(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reversible_plan_one_step_per_invocation() {
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    seed(&src.root_client().await).await;
    let app = App::start(src.app_client().await, dst.app_client().await);
    let (_d, plan) = write_plan(&plan_text("stepwise", REVERSIBLE));
    let plan = plan.to_str().unwrap().to_string();
    let env = env_for(&src, &dst);
    let approver = app.approve_when_on_destination(&plan, &env);
    for step in 0..5 {
        let o = tokio::task::spawn_blocking({
            let (plan, env) = (plan.clone(), env.clone());
            move || run_cutover(&["run", &plan, "--max-steps", "1"], &refs(&env))
        })
        .await
        .unwrap();
        assert_eq!(o.status.code(), Some(0), "step {step}: {}", show(&o));
    }
    approver.await.unwrap();
    let acked = app.finish().await;
    assert_end_state(&src, &dst, &acked).await;
}

/// Crashes (abort, like kill -9) at each transition point, then re-runs the same plan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_at_every_transition_then_resume() {
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    seed(&src.root_client().await).await;
    let app = App::start(src.app_client().await, dst.app_client().await);
    let (_d, plan) = write_plan(&plan_text("crashy", REVERSIBLE));
    let plan = plan.to_str().unwrap().to_string();
    let env = env_for(&src, &dst);
    let approver = app.approve_when_on_destination(&plan, &env);
    let points = [
        "commit.blocked@2",
        "commit.draining@2",
        "apply.drain-round",
        "commit.committed@2",
        "commit.before-unblock@2",
        "reverse.starting@3",
        "commit.blocked@4",
        "commit.committed@4",
        "commit.before-unblock@4",
    ];
    // Each run gets every point not crashed at yet and aborts at the first it reaches; the
    // loop ends when a run completes the plan.
    let mut crashed: Vec<&str> = Vec::new();
    loop {
        let remaining: Vec<&str> = points
            .iter()
            .copied()
            .filter(|p| !crashed.contains(p))
            .collect();
        let o = tokio::task::spawn_blocking({
            let (plan, mut e) = (plan.clone(), env.clone());
            e.push(("CUTOVER_TEST_CRASH_AT", remaining.join(",")));
            move || run_cutover(&["run", &plan], &refs(&e))
        })
        .await
        .unwrap();
        if o.status.code() == Some(0) {
            break;
        }
        assert!(
            o.status.code().is_none(),
            "a run failed instead of crashing: {}",
            show(&o)
        );
        let err = String::from_utf8_lossy(&o.stderr);
        let point = remaining
            .iter()
            .find(|p| {
                err.contains(&format!("crash point `{p}`"))
                    || (!p.contains('@') && err.contains(&format!("crash point `{p}")))
            })
            .unwrap_or_else(|| panic!("aborted without a known crash point: {}", show(&o)));
        crashed.push(point);
        // The status names any blocked cluster and the command that releases it.
        let s = run_cutover(&["status", &plan], &refs(&env));
        let st = String::from_utf8_lossy(&s.stdout);
        assert!(
            !st.contains("BLOCKED") || st.contains("cutover unblock"),
            "{st}"
        );
    }
    eprintln!("crashed at: {crashed:?}");
    // Every step-qualified point lies on the plan's path, so each must have been hit; the
    // drain-round point only when events were still arriving during a drain.
    for p in points.iter().filter(|p| p.contains('@')) {
        assert!(crashed.contains(p), "never crashed at {p}: {crashed:?}");
    }
    approver.await.unwrap();
    let acked = app.finish().await;
    assert_end_state(&src, &dst, &acked).await;
}

/// sync, validate-indexes, commit.
const SYNC_VALIDATE_COMMIT: &str = r#"
[options]
reversible = true
write_blocking = "source-and-destination"
max_lag = "2s"

[[steps]]
kind = "sync"

[[steps]]
kind = "validate-indexes"

[[steps]]
kind = "commit"
timeout = "3m"
"#;

/// `cutover run PLAN --max-steps 1`: the sync step alone, which must succeed.
async fn sync_step_only(plan: &str, env: &[(&'static str, String)]) {
    let (plan, env) = (plan.to_string(), env.to_vec());
    let o = tokio::task::spawn_blocking(move || {
        run_cutover(&["run", &plan, "--max-steps", "1"], &refs(&env))
    })
    .await
    .unwrap();
    assert_eq!(o.status.code(), Some(0), "sync: {}", show(&o));
}

/// `validate-indexes` waits until replication has applied everything the source accepted
/// before the step began: a unique index created on the source right after the sync (here
/// between two invocations, so the step runs in a process whose lane has not caught up yet)
/// is on the destination when the step compares, and the plan goes on to commit. Before the
/// fix the step compared at once (and a re-run never resumed the lane), so every run stopped
/// with "unique index `name_1` ... has no index with the same key on the destination".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_indexes_waits_for_replication() {
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let s = src.root_client().await;
    seed(&s).await;
    let (_d, plan) = write_plan(&plan_text("validate-wait", SYNC_VALIDATE_COMMIT));
    let plan = plan.to_str().unwrap().to_string();
    let env = env_for(&src, &dst);
    sync_step_only(&plan, &env).await;
    // After the sync, before validate-indexes: a new unique index (and a write after it).
    s.database("shop")
        .run_command(doc! {"createIndexes": "users", "indexes": [
            {"key": {"name": 1}, "name": "name_1", "unique": true, "sparse": true},
        ]})
        .await
        .unwrap();
    s.database("shop")
        .collection::<Document>("users")
        .insert_one(doc! {"_id": 5000, "email": "late@x", "name": "late"})
        .await
        .unwrap();
    let o = tokio::task::spawn_blocking({
        let (plan, env) = (plan.clone(), env.clone());
        move || run_cutover(&["run", &plan], &refs(&env))
    })
    .await
    .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "validate-indexes, commit: {}",
        show(&o)
    );
    let d = dst.root_client().await;
    let names: Vec<String> = d
        .database("shop")
        .collection::<Document>("users")
        .list_index_names()
        .await
        .unwrap();
    assert!(names.contains(&"name_1".to_string()), "{names:?}");
    assert_same_data(&s, &d, "__cutover").await;
    assert_same_catalog(&s, &d, "__cutover").await;
}

/// The application's DDL goes on while `validate-indexes` compares (torture seed 21 stopped on
/// both races in CI): a unique index dropped on the source after the step listed it (the
/// destination, caught up, lacks it: "missing" in that comparison), and a collection with a
/// unique index dropped between the format check's listing and its `listIndexes` (error 26).
/// Neither is a problem: the step compares again and passes, and the commit follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_indexes_tolerates_ddl_racing_the_comparison() {
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let s = src.root_client().await;
    seed(&s).await;
    let shop = s.database("shop");
    shop.run_command(doc! {"createIndexes": "users", "indexes": [
        {"key": {"name": 1}, "name": "name_1", "unique": true, "sparse": true},
    ]})
    .await
    .unwrap();
    shop.collection::<Document>("gone")
        .insert_many((0..50).map(|i| doc! {"_id": i, "g": i}))
        .await
        .unwrap();
    shop.run_command(doc! {"createIndexes": "gone", "indexes": [
        {"key": {"g": 1}, "name": "g_1", "unique": true},
    ]})
    .await
    .unwrap();
    let (dir, plan) = write_plan(&plan_text("validate-race", SYNC_VALIDATE_COMMIT));
    let plan = plan.to_str().unwrap().to_string();
    let env = env_for(&src, &dst);
    sync_step_only(&plan, &env).await;

    let mut paused = env.clone();
    paused.push((
        "CUTOVER_TEST_PAUSE_AT",
        "validate-indexes.listed,index-formats.listed".into(),
    ));
    paused.push(("CUTOVER_TEST_PAUSE_DIR", dir.path().display().to_string()));
    let mut child = spawn_cutover(&["run", &plan], &refs(&paused));
    // The format check has listed the collections (shop.gone among them): drop it.
    wait_pause_file(&dir.path().join("index-formats.listed.reached"), &mut child).await;
    shop.collection::<Document>("gone").drop().await.unwrap();
    std::fs::write(dir.path().join("index-formats.listed.go"), b"").unwrap();
    // The comparison has listed the source's unique indexes (name_1 among them): drop it.
    wait_pause_file(
        &dir.path().join("validate-indexes.listed.reached"),
        &mut child,
    )
    .await;
    shop.run_command(doc! {"dropIndexes": "users", "index": "name_1"})
        .await
        .unwrap();
    std::fs::write(dir.path().join("validate-indexes.listed.go"), b"").unwrap();

    let o = finish_child(child).await;
    assert_eq!(
        o.status.code(),
        Some(0),
        "validate-indexes, commit: {}",
        show(&o)
    );
    let d = dst.root_client().await;
    let names = d
        .database("shop")
        .collection::<Document>("users")
        .list_index_names()
        .await
        .unwrap();
    assert!(!names.contains(&"name_1".to_string()), "{names:?}");
    assert!(names.contains(&"email_1".to_string()), "{names:?}");
    let colls = d.database("shop").list_collection_names().await.unwrap();
    assert!(!colls.contains(&"gone".to_string()), "{colls:?}");
    assert_same_data(&s, &d, "__cutover").await;
    assert_same_catalog(&s, &d, "__cutover").await;
}
