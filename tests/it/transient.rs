//! Transient errors on the destination (issue 9): a `failCommand` fail point makes cutover's
//! catalog commands (`create`, `createIndexes`, `collMod` — of the copy and of replayed DDL
//! events) and its state-store writes (`update`, `insert`, `delete`, `findAndModify`) fail
//! with the errors of a shutdown or a failover (ShutdownInProgress 91, InterruptedAtShutdown
//! 11600, NotWritablePrimary 10107, a closed connection). cutover retries them with backoff:
//! the run exits 0 and the clusters end identical.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use mongodb::bson::{doc, Document};
use mongodb::Client;

const STATE_DB: &str = "__cutover";

const SYNC_COMMIT: &str = r#"
[[steps]]
kind = "sync"

[[steps]]
kind = "commit"
timeout = "2m"
"#;

/// Arms `failCommand` on the destination for cutover's commands (`appName: cutover`; the
/// test's own client is not affected): the next `times` matching commands fail with `how`.
async fn fail(c: &Client, cmds: &[&str], times: i32, how: Document) {
    let mut data = doc! {"failCommands": cmds.to_vec(), "appName": "cutover"};
    data.extend(how);
    c.database("admin")
        .run_command(
            doc! {"configureFailPoint": "failCommand", "mode": {"times": times}, "data": data},
        )
        .await
        .expect("configureFailPoint (mongod runs with enableTestCommands=1)");
}

async fn fail_off(c: &Client) {
    c.database("admin")
        .run_command(doc! {"configureFailPoint": "failCommand", "mode": "off"})
        .await
        .unwrap();
}

/// Turns `failCommand` off; how many times it was entered since it was armed.
async fn fail_off_count(c: &Client) -> i64 {
    let r = c
        .database("admin")
        .run_command(doc! {"configureFailPoint": "failCommand", "mode": "off"})
        .await
        .unwrap();
    match r.get("count") {
        Some(mongodb::bson::Bson::Int32(n)) => i64::from(*n),
        Some(mongodb::bson::Bson::Int64(n)) => *n,
        _ => panic!("configureFailPoint reply without a count: {r}"),
    }
}

async fn seed_source(s: &Client) {
    let a = s.database("t").collection::<Document>("a");
    a.insert_many(
        (0..2000)
            .map(|i| doc! {"_id": i, "v": i, "w": i % 7})
            .collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    s.database("t")
        .run_command(doc! {"createIndexes": "a", "indexes": [
        {"key": {"v": 1}, "name": "v_unique", "unique": true},
        {"key": {"w": 1}, "name": "w_1"}]})
        .await
        .unwrap();
    s.database("t")
        .run_command(doc! {"create": "b", "validator": {"x": {"$type": "int"}}})
        .await
        .unwrap();
    s.database("t")
        .collection::<Document>("b")
        .insert_one(doc! {"_id": 1, "x": 1})
        .await
        .unwrap();
}

/// The copy's `create` and `createIndexes`, then the `create`, `createIndexes` and `collMod`
/// of DDL events replayed during change application, each failing transiently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_errors_on_catalog_commands_are_retried() {
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let s = src.root_client().await;
    let d = dst.root_client().await;
    seed_source(&s).await;
    let (_dir, plan) = write_plan(&plan_text("transient_catalog", SYNC_COMMIT));
    let plan = plan.to_str().unwrap().to_string();
    let env = root_env(&src, &dst);
    let env = env_refs(&env);

    // The copy: InterruptedAtShutdown twice on `create` and `createIndexes`.
    fail(
        &d,
        &["create", "createIndexes"],
        2,
        doc! {"errorCode": 11600},
    )
    .await;
    let o = run_cutover(&["run", &plan, "--max-steps", "1"], &env);
    fail_off(&d).await;
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));

    // DDL while stopped, replayed by the next run through closed connections and a stepdown
    // error.
    s.database("t")
        .run_command(doc! {"create": "c", "validator": {"y": {"$exists": true}}})
        .await
        .unwrap();
    s.database("t")
        .run_command(doc! {"createIndexes": "c", "indexes": [{"key": {"y": -1}, "name": "y_-1"}]})
        .await
        .unwrap();
    s.database("t")
        .run_command(doc! {"collMod": "b", "validator": {"x": {"$type": "long"}}})
        .await
        .unwrap();
    s.database("t")
        .collection::<Document>("c")
        .insert_many((0..50).map(|i| doc! {"_id": i, "y": i}).collect::<Vec<_>>())
        .await
        .unwrap();
    fail(
        &d,
        &["create", "createIndexes", "collMod"],
        2,
        doc! {"closeConnection": true},
    )
    .await;
    // A second fail point would replace the first: the stepdown error is armed once the
    // closed connections are used up, by a task watching the fail point's count.
    let stop = Arc::new(AtomicBool::new(false));
    let rearm = {
        let d = d.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = d
                    .database("admin")
                    .run_command(doc! {"getParameter": 1, "failpoint.failCommand": 1})
                    .await;
                let used_up = match r {
                    Ok(r) => r
                        .get_document("failpoint.failCommand")
                        .map(|f| f.get_i32("mode").unwrap_or(0) == 0)
                        .unwrap_or(true),
                    Err(_) => true,
                };
                if used_up {
                    fail(
                        &d,
                        &["createIndexes", "collMod"],
                        2,
                        doc! {"errorCode": 10107},
                    )
                    .await;
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let o = run_cutover(&["run", &plan], &env);
    stop.store(true, Ordering::Relaxed);
    let _ = rearm.await;
    fail_off(&d).await;
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    // The replay's retries name the cluster that failed (it said "source or destination").
    let err = String::from_utf8_lossy(&o.stderr);
    let replays: Vec<&str> = err
        .lines()
        .filter(|l| {
            l.contains("Transient failure; retrying.")
                && l.contains(r#"what="applying a DDL event""#)
        })
        .collect();
    assert!(
        !replays.is_empty()
            && replays
                .iter()
                .all(|l| l.contains(r#"cluster="destination""#)),
        "no retry of a DDL event, or one not naming the destination: {}",
        show(&o)
    );
    assert!(
        !err.contains("source or destination"),
        "a retry does not say which cluster failed: {}",
        show(&o)
    );
    assert_same_data(&s, &d, STATE_DB).await;
    assert_same_catalog(&s, &d, STATE_DB).await;
}

/// The state store's writes (the lease, the lane and range records, the run document) fail
/// transiently, over and over, while a run copies and commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_errors_on_state_store_writes_are_retried() {
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let s = src.root_client().await;
    let d = dst.root_client().await;
    seed_source(&s).await;
    let (_dir, plan) = write_plan(&plan_text("transient_state", SYNC_COMMIT));
    let plan = plan.to_str().unwrap().to_string();
    let env = root_env(&src, &dst);
    let env = env_refs(&env);

    // The driver retries a retryable write once by itself: three failures get past it. The
    // first state write is the lease's.
    let writes = ["update", "insert", "delete", "findAndModify"];
    fail(&d, &writes, 3, doc! {"errorCode": 91}).await;
    // Then, every 500 ms for the first 20 s of the run, the next two writes fail
    // (alternating a closed connection and a stepdown error). Not faster: a fail point armed
    // again before each retry would be an outage that never ends.
    let stop = Arc::new(AtomicBool::new(false));
    let armer = {
        let d = d.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n = 0u32;
            tokio::time::sleep(Duration::from_millis(1000)).await;
            while !stop.load(Ordering::Relaxed) && n < 40 {
                n += 1;
                let how = if n.is_multiple_of(2) {
                    doc! {"closeConnection": true}
                } else {
                    doc! {"errorCode": 11602}
                };
                fail(&d, &writes, 2, how).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            n
        })
    };
    let o = run_cutover(&["run", &plan], &env);
    stop.store(true, Ordering::Relaxed);
    let armed = armer.await.unwrap();
    fail_off(&d).await;
    println!("fail point armed {armed} times");
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_same_data(&s, &d, STATE_DB).await;
    assert_same_catalog(&s, &d, STATE_DB).await;
    let run = d
        .database(STATE_DB)
        .collection::<Document>("runs")
        .find_one(doc! {"_id": "transient_state"})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(run.get_str("state").unwrap(), "COMMITTED", "{run}");
}

/// The destination refuses writes under cache pressure: mongod 6.0 answers a large-document
/// write it cannot fit in the WiredTiger cache with TransactionTooLargeForCache (388), and
/// nothing is written. The same write succeeds once the cache has evicted, so the copy and the
/// change application send it again rather than stopping the run (found by the torture run's
/// reversible seed 15: "transaction is too large and will not fit in the storage engine
/// cache (code 388)" stopped the first commit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_refused_under_cache_pressure_are_retried() {
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let s = src.root_client().await;
    let d = dst.root_client().await;
    seed_source(&s).await;
    let (_dir, plan) = write_plan(&plan_text("transient_cache", SYNC_COMMIT));
    let plan = plan.to_str().unwrap().to_string();
    let env = root_env(&src, &dst);
    let env = env_refs(&env);

    // The copy's inserts (three times: past the driver's own single retry), only on the
    // data's namespace (`namespace` filters the fail point: not the state store's writes).
    fail(
        &d,
        &["insert"],
        3,
        doc! {"errorCode": 388, "namespace": "t.a"},
    )
    .await;
    let o = run_cutover(&["run", &plan, "--max-steps", "1"], &env);
    fail_off(&d).await;
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("TransactionTooLargeForCache"),
        "the fail point was never hit: {}",
        show(&o)
    );

    // Change application: inserts, updates and deletes while stopped, replayed by the next
    // run through the same refusals.
    let a = s.database("t").collection::<Document>("a");
    a.insert_many(
        (5000..5100)
            .map(|i| doc! {"_id": i, "v": i, "w": 1})
            .collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    a.update_many(doc! {"w": 3}, doc! {"$inc": {"v": 100_000}})
        .await
        .unwrap();
    a.delete_many(doc! {"w": 5}).await.unwrap();
    fail(
        &d,
        &["insert", "update", "delete"],
        3,
        doc! {"errorCode": 388, "namespace": "t.a"},
    )
    .await;
    let o = run_cutover(&["run", &plan], &env);
    let hits = fail_off_count(&d).await;
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    // A refused command of several statements is sent again one statement per command; a
    // refused single statement is retried (the warning names the code).
    assert!(
        hits >= 3,
        "the fail point was entered {hits} times: {}",
        show(&o)
    );
    assert_same_data(&s, &d, STATE_DB).await;
    assert_same_catalog(&s, &d, STATE_DB).await;
}
