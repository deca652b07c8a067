//! Faults (issue 6): the source's oplog rolls past cutover's resume point while cutover is
//! stopped; a destination write that keeps failing. Both end with a clear error (exit 1)
//! and recover once the cause is dealt with.

use std::time::{Duration, Instant};

use crate::common::*;
use mongodb::bson::{doc, Document, Timestamp};
use mongodb::Client;

const STATE_DB: &str = "__cutover";

const SYNC_COMMIT: &str = r#"
[[steps]]
kind = "sync"

[[steps]]
kind = "commit"
timeout = "1m"
"#;

async fn oldest_oplog_ts(c: &Client) -> Timestamp {
    c.database("local")
        .collection::<Document>("oplog.rs")
        .find_one(doc! {})
        .sort(doc! {"$natural": 1})
        .await
        .unwrap()
        .unwrap()
        .get_timestamp("ts")
        .unwrap()
}

async fn lane(d: &Client, plan: &str) -> Document {
    d.database(STATE_DB)
        .collection::<Document>("lanes")
        .find_one(doc! {"_id": format!("{plan}/forward")})
        .await
        .unwrap()
        .expect("lane record")
}

fn status_json(plan: &str, env: &[(&str, &str)]) -> serde_json::Value {
    let o = run_cutover(&["status", plan, "--format", "json"], env);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// A real rollover: a 1 MB oplog (`--oplogSize 1`: mongod accepts it at startup; the 990 MB
/// minimum applies to `replSetResizeOplog` only) and about 3 MB/s of writes while cutover is
/// stopped, then the same `cutover run` recovers. Measured on 6.0.5: the first truncation comes about 60 s after the writes start
/// whatever their volume (neither `fsync` nor `syncdelay: 1` brought it forward), so this test
/// takes a little over a minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oplog_rollover_past_the_resume_point_is_recovered_by_the_same_command() {
    let (src, dst) = tokio::join!(
        ReplicaSet::start_with(RsOptions {
            oplog_mb: 1,
            ..Default::default()
        }),
        ReplicaSet::start()
    );
    let s = src.root_client().await;
    let d = dst.root_client().await;
    let coll = s.database("o").collection::<Document>("c");
    coll.insert_many(
        (0..1000)
            .map(|i| doc! {"_id": i, "v": i})
            .collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    s.database("o")
        .run_command(doc! {"createIndexes": "c", "indexes": [
        {"key": {"v": 1}, "name": "v_unique", "unique": true}]})
        .await
        .unwrap();
    s.database("o")
        .run_command(doc! {"create": "capped", "capped": true, "size": 100_000, "max": 50})
        .await
        .unwrap();
    let (_dir, plan) = write_plan(&plan_text("oplog", SYNC_COMMIT));
    let plan = plan.to_str().unwrap().to_string();
    let env = root_env(&src, &dst);
    let env = env_refs(&env);

    let o = run_cutover(&["run", &plan, "--max-steps", "1"], &env);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let resume_at = lane(&d, "oplog")
        .await
        .get_timestamp("position")
        .expect("a stored position");

    let stats = s
        .database("local")
        .run_command(doc! {"collStats": "oplog.rs"})
        .await
        .unwrap();
    println!("source oplog maxSize: {:?}", stats.get("maxSize"));
    // While cutover is stopped: the unique index replaced by another, then writes until the
    // oplog no longer holds the resume point.
    s.database("o")
        .run_command(doc! {"dropIndexes": "c", "index": "v_unique"})
        .await
        .unwrap();
    s.database("o")
        .run_command(doc! {"createIndexes": "c", "indexes": [
        {"key": {"w": 1}, "name": "w_ttl", "expireAfterSeconds": 86_400}]})
        .await
        .unwrap();
    let churn = s.database("o").collection::<Document>("churn");
    churn.insert_one(doc! {"_id": 0}).await.unwrap();
    let start = Instant::now();
    let mut writes = 0;
    while oldest_oplog_ts(&s).await <= resume_at {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the oplog did not roll over after {writes} writes"
        );
        for _ in 0..10 {
            writes += 1;
            churn
                .update_one(
                    doc! {"_id": 0},
                    doc! {"$set": {"blob": format!("{writes:06}").repeat(5_000)}},
                )
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        coll.update_one(doc! {"_id": 1}, doc! {"$inc": {"w": 1}})
            .await
            .unwrap();
    }
    println!(
        "oplog rolled past the resume point after {writes} writes in {:?}",
        start.elapsed()
    );

    // The same command recovers (issue 20): the copied ranges are compared with the source
    // and only what differs is rewritten; the collection created meanwhile is copied.
    let o = run_cutover(&["run", &plan], &env);
    let text = show(&o);
    println!("{text}");
    assert_eq!(o.status.code(), Some(0), "{text}");
    assert!(
        text.contains("oplog no longer holds")
            && text.contains("Recovered from the lost resume point"),
        "the run must say what happened and what it did: {text}"
    );
    assert!(!text.contains(ROOT_PASSWORD));
    assert_same_data(&s, &d, STATE_DB).await;
    assert_same_catalog(&s, &d, STATE_DB).await;
    let l = lane(&d, "oplog").await;
    let r = l
        .get_array("recoveries")
        .ok()
        .and_then(|a| a.first())
        .and_then(|r| r.as_document())
        .cloned()
        .expect("a recovery report");
    println!("recovery: {r}");
    // `o.c` had one document updated while cutover was down: one document rewritten.
    assert_eq!(r.get_i64("documents_rewritten").unwrap(), 1, "{r}");
    // The unique index dropped meanwhile is dropped (not restored as unique at the commit).
    assert_eq!(r.get_i64("indexes_dropped").unwrap(), 1, "{r}");
    let v = status_json(&plan, &env);
    assert_eq!(v["state"], "COMMITTED", "{v}");
}

/// A rogue unique index on the destination (created by someone else during the sync) makes
/// one change keep failing: the run stops naming the namespace and the `_id`; after the index
/// is dropped, the same command completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_write_that_keeps_failing_names_the_document_and_resumes() {
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let s = src.root_client().await;
    let d = dst.root_client().await;
    let users = s.database("crm").collection::<Document>("users");
    users
        .insert_many(
            (0..200)
                .map(|i| doc! {"_id": i, "email": format!("u{i}@x")})
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap();
    let (_dir, plan) = write_plan(&plan_text("failing", SYNC_COMMIT));
    let plan = plan.to_str().unwrap().to_string();
    let env = root_env(&src, &dst);
    let env = env_refs(&env);
    let o = run_cutover(&["run", &plan, "--max-steps", "1"], &env);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));

    d.database("crm")
        .run_command(doc! {"createIndexes": "users", "indexes": [
        {"key": {"email": 1}, "name": "rogue", "unique": true}]})
        .await
        .unwrap();
    // On the source, two users may share an email.
    users
        .insert_one(doc! {"_id": "dup-7", "email": "u7@x"})
        .await
        .unwrap();
    users
        .update_one(doc! {"_id": 3}, doc! {"$set": {"seen": true}})
        .await
        .unwrap();

    let o = run_cutover(&["run", &plan], &env);
    let text = show(&o);
    println!("{text}");
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(text.contains("crm.users"), "names the namespace: {text}");
    assert!(text.contains("dup-7"), "names the document _id: {text}");
    assert!(
        text.contains("11000"),
        "gives the server's error code: {text}"
    );
    let v = status_json(&plan, &env);
    assert_ne!(v["state"], "COMMITTED", "{v}");

    d.database("crm")
        .run_command(doc! {"dropIndexes": "users", "index": "rogue"})
        .await
        .unwrap();
    let o = run_cutover(&["run", &plan], &env);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_same_data(&s, &d, STATE_DB).await;
    assert_same_catalog(&s, &d, STATE_DB).await;
}

/// The same during the copy: the destination already has the (empty) collection with a unique
/// index the source lacks. Copy inserts ignore duplicate keys (a re-copy after a crash), but
/// only on `_id`: the rejected document is named instead of silently dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_insert_rejected_by_another_unique_index_is_named() {
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let s = src.root_client().await;
    let d = dst.root_client().await;
    let users = s.database("crm").collection::<Document>("users");
    users
        .insert_many(
            (0..300)
                .map(|i| doc! {"_id": i, "email": format!("u{}@x", i % 299)})
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap();
    d.database("crm")
        .run_command(doc! {"createIndexes": "users", "indexes": [
        {"key": {"email": 1}, "name": "rogue", "unique": true}]})
        .await
        .unwrap();
    let (_dir, plan) = write_plan(&plan_text("copyfail", SYNC_COMMIT));
    let plan = plan.to_str().unwrap().to_string();
    let env = root_env(&src, &dst);
    let env = env_refs(&env);
    let o = run_cutover(&["run", &plan], &env);
    let text = show(&o);
    println!("{text}");
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(text.contains("crm.users"), "names the namespace: {text}");
    assert!(text.contains("_id 299"), "names the document _id: {text}");

    d.database("crm")
        .run_command(doc! {"dropIndexes": "users", "index": "rogue"})
        .await
        .unwrap();
    let o = run_cutover(&["run", &plan], &env);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_same_data(&s, &d, STATE_DB).await;
    assert_same_catalog(&s, &d, STATE_DB).await;
}

const REVERSIBLE: &str = r#"
[options]
write_blocking = "source-and-destination"
reversible = true

[[steps]]
kind = "sync"

[[steps]]
kind = "commit"
timeout = "2m"

[[steps]]
kind = "reverse"

[[steps]]
kind = "commit"
approval = "manual"
timeout = "5m"
"#;

/// The reverse lane writes to the plan's *source*: when those writes fail, the error names
/// the source cluster, as the plan does (it said "destination cluster" before: the engine's
/// messages named the lane's sides, not the plan's roles).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_write_of_the_reverse_lane_names_the_plans_source() {
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let s = src.root_client().await;
    let d = dst.root_client().await;
    let users = s.database("crm").collection::<Document>("users");
    users
        .insert_many((0..50).map(|i| doc! {"_id": i, "n": 0}).collect::<Vec<_>>())
        .await
        .unwrap();
    let run = spawn_run_until(
        &src,
        &dst,
        "reverse-label",
        REVERSIBLE,
        "the reverse lane to wait for the final approval",
        |v| v["state"] == "RUNNING" && v["phase"] == "waiting for approval",
    )
    .await;

    // The old source refuses cutover's updates with a permanent error; the application
    // updates a document on the new source (the plan's destination).
    s.database("admin")
        .run_command(
            doc! {"configureFailPoint": "failCommand", "mode": "alwaysOn",
            "data": {"failCommands": ["update"], "namespace": "crm.users",
                     "appName": "cutover", "errorCode": 2}},
        )
        .await
        .expect("configureFailPoint (mongod runs with enableTestCommands=1)");
    d.database("crm")
        .collection::<Document>("users")
        .update_one(doc! {"_id": 7}, doc! {"$set": {"n": 1}})
        .await
        .unwrap();
    let start = Instant::now();
    let mut runner = run.child;
    let o = loop {
        if runner.try_wait().unwrap().is_some() {
            break runner.wait_with_output().unwrap();
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = runner.kill();
            panic!(
                "the runner did not stop on the refused write: {}",
                show(&runner.wait_with_output().unwrap())
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    s.database("admin")
        .run_command(doc! {"configureFailPoint": "failCommand", "mode": "off"})
        .await
        .unwrap();
    let text = show(&o);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(text.contains("BadValue, code 2"), "{text}");
    assert!(
        text.contains("source cluster: writing `crm.users`"),
        "the error names the plan's source: {text}"
    );
    assert!(
        !text.contains("destination cluster: writing"),
        "the error names the plan's destination: {text}"
    );
}
