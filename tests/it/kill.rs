//! Checkpoints (issue 3) and kill -9 (issue 6): the real binary is SIGKILLed at seeded random
//! moments of the copy and of change application while a client keeps writing to the source;
//! each time the same `cutover run PLAN` continues. In the end the clusters are byte-identical
//! and every acknowledged write is on the destination.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use mongodb::bson::{doc, Document};
use mongodb::Client;
use rand::{Rng, SeedableRng};

const STATE_DB: &str = "__cutover";

/// Manual approval keeps the commit step waiting with replication running: the window in
/// which change application is killed.
const PLAN: &str = r#"
[[steps]]
kind = "sync"

[[steps]]
kind = "commit"
approval = "manual"
timeout = "5m"
"#;

const SEED_DOCS: i64 = 40_000;

/// What the writer knows the source acknowledged.
#[derive(Default)]
struct Acked {
    inserted: BTreeSet<i64>,
    deleted: BTreeSet<i64>,
    /// `_id` → acknowledged `$inc`s of `n`.
    incs: BTreeMap<i64, i64>,
    /// `_id`s whose write failed (outcome unknown): excluded from the exact checks.
    unknown: BTreeSet<i64>,
    ops: u64,
}

async fn writer(c: Client, seed: u64, stop: Arc<AtomicBool>, acked: Arc<Mutex<Acked>>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
    let coll = c.database("k").collection::<Document>("main");
    let mut next = 1_000_000i64;
    while !stop.load(Ordering::Relaxed) {
        let op = rng.random_range(0..10);
        let id = rng.random_range(0..SEED_DOCS);
        let (target, r) = match op {
            0..=2 => {
                next += 1;
                let r = coll
                    .insert_one(doc! {"_id": next, "n": 0i64, "v": "inserted", "arr": [1, 2]})
                    .await
                    .map(|_| ());
                (next, r)
            }
            3..=7 => {
                let r = coll
                    .update_one(
                        doc! {"_id": id},
                        doc! {"$inc": {"n": 1i64}, "$set": {"v": format!("w{next}")}},
                    )
                    .await
                    .map(|_| ());
                (id, r)
            }
            8 => {
                let r = coll
                    .update_one(
                        doc! {"_id": id},
                        doc! {"$push": {"arr": next}, "$unset": {"pad": ""}},
                    )
                    .await
                    .map(|_| ());
                (id, r)
            }
            9 if next % 4 == 1 => {
                // DDL in its own database: create, index, rename, drop in rotation.
                next += 1;
                let k2 = c.database("k2");
                let name = format!("t{}", next % 5);
                let r = match (next / 4) % 4 {
                    0 => k2
                        .collection::<Document>(&name)
                        .insert_many((0..10).map(|j| doc! {"_id": j, "at": next}).collect::<Vec<_>>())
                        .await
                        .map(|_| ()),
                    1 => k2
                        .collection::<Document>(&name)
                        .create_index(mongodb::IndexModel::builder().keys(doc! {"at": -1}).build())
                        .await
                        .map(|_| ()),
                    2 => c
                        .database("admin")
                        .run_command(doc! {"renameCollection": format!("k2.{name}"), "to": format!("k2.r{}", next % 3), "dropTarget": true})
                        .await
                        .map(|_| ()),
                    _ => k2
                        .collection::<Document>(&format!("r{}", next % 3))
                        .drop()
                        .await
                        .map(|_| ()),
                };
                // Not an acknowledged-write check: a rename of a missing collection fails.
                let _ = r;
                (0, Ok(()))
            }
            9 if next % 4 == 0 => {
                // Capped (natural order matters) and time-series inserts.
                next += 1;
                let db = c.database("k");
                let r = if next % 8 < 4 {
                    db.collection::<Document>("log")
                        .insert_many(
                            (0..3)
                                .map(|j| doc! {"_id": next * 10 + j, "at": next})
                                .collect::<Vec<_>>(),
                        )
                        .await
                        .map(|_| ())
                } else {
                    db.collection::<Document>("metrics")
                        .insert_one(doc! {"ts": mongodb::bson::DateTime::from_millis(1_700_000_000_000 + next * 1000), "m": {"host": next % 3}, "v": next})
                        .await
                        .map(|_| ())
                };
                (0, r)
            }
            _ => {
                // Delete only documents this writer has not touched otherwise.
                let victim = SEED_DOCS + 1 + rng.random_range(0..5_000);
                let r = c
                    .database("k")
                    .collection::<Document>("extra")
                    .delete_one(doc! {"_id": victim})
                    .await
                    .map(|_| ());
                (-victim, r)
            }
        };
        {
            let mut a = acked.lock().unwrap();
            a.ops += 1;
            match (op, r) {
                (_, Err(_)) => {
                    a.unknown.insert(target);
                }
                (0..=2, Ok(())) => {
                    a.inserted.insert(target);
                }
                (3..=7, Ok(())) => *a.incs.entry(target).or_default() += 1,
                (9, Ok(())) if target < 0 => {
                    a.deleted.insert(-target);
                }
                _ => {}
            }
        }
        // Not flat out: the source must stay responsive for the copy.
        if op == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

async fn seed(c: &Client) {
    let main = c.database("k").collection::<Document>("main");
    for chunk in 0..(SEED_DOCS / 5000) {
        let docs: Vec<Document> = (chunk * 5000..(chunk + 1) * 5000)
            .map(|i| doc! {"_id": i, "n": 0i64, "v": "seed", "arr": [i], "pad": "x".repeat(300)})
            .collect();
        main.insert_many(docs).await.unwrap();
    }
    c.database("k")
        .run_command(doc! {"create": "log", "capped": true, "size": 256 * 1024, "max": 1500})
        .await
        .unwrap();
    c.database("k")
        .collection::<Document>("log")
        .insert_many(
            (0..3000i64)
                .map(|i| doc! {"_id": i, "at": 0i64})
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap();
    c.database("k")
        .run_command(
            doc! {"create": "metrics", "timeseries": {"timeField": "ts", "metaField": "m"}},
        )
        .await
        .unwrap();
    // Mixed `_id` types, copied first (namespaces are copied in name order): kills land in
    // its ranges, whose resume points (`last_id`) are of every type.
    let mut mixed = Vec::new();
    for i in 0..1500i64 {
        mixed.push(doc! {"_id": i as i32, "t": 1});
        mixed.push(doc! {"_id": format!("s{i:05}"), "t": 2});
        mixed.push(doc! {"_id": mongodb::bson::oid::ObjectId::new(), "t": 3});
        mixed.push(doc! {"_id": {"k": i}, "t": 4});
        mixed.push(doc! {"_id": i as f64 + 0.5, "t": 5});
        mixed.push(doc! {"_id": mongodb::bson::DateTime::from_millis(i * 1000), "t": 6});
    }
    mixed.push(doc! {"_id": mongodb::bson::Bson::MaxKey});
    mixed.push(doc! {"_id": mongodb::bson::Bson::MinKey});
    c.database("k")
        .collection::<Document>("aa_mixed")
        .insert_many(mixed)
        .await
        .unwrap();
    let extra = c.database("k").collection::<Document>("extra");
    let docs: Vec<Document> = (SEED_DOCS + 1..SEED_DOCS + 5_001)
        .map(|i| doc! {"_id": i, "e": i})
        .collect();
    extra.insert_many(docs).await.unwrap();
}

async fn copy_done(d: &Client) -> bool {
    d.database(STATE_DB)
        .collection::<Document>("lanes")
        .find_one(doc! {"_id": "kill/forward"})
        .await
        .unwrap()
        .and_then(|l| l.get_bool("copy_done").ok())
        .unwrap_or(false)
}

/// `k.<coll>`'s documents in natural order, as raw bytes.
async fn natural(c: &Client, coll: &str) -> Vec<Vec<u8>> {
    use futures::TryStreamExt;
    let cur = c
        .database("k")
        .collection::<mongodb::bson::RawDocumentBuf>(coll)
        .find(doc! {})
        .sort(doc! {"$natural": 1})
        .await
        .unwrap();
    let v: Vec<mongodb::bson::RawDocumentBuf> = cur.try_collect().await.unwrap();
    v.into_iter().map(|d| d.into_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_copy_and_apply_loses_nothing() {
    let started = Instant::now();
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let s = src.root_client().await;
    let d = dst.root_client().await;
    seed(&s).await;

    let seed: u64 = std::env::var("KILL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    println!("kill seed: {seed} (set KILL_SEED={seed} to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Acked::default()));
    let w = tokio::spawn(writer(s.clone(), seed, stop.clone(), acked.clone()));

    let (_dir, plan) = write_plan(&plan_text("kill", PLAN));
    let plan = plan.to_str().unwrap().to_string();
    let env = root_env(&src, &dst);
    let args = [
        "run",
        plan.as_str(),
        "--docs-per-range",
        "100",
        "--copy-concurrency",
        "1",
    ];

    let (mut copy_kills, mut apply_kills) = (0, 0);
    let mut attempts = 0;
    // At least 4 kills in each phase and 14 in all (plus up to 3 in the commit).
    while copy_kills < 4 || apply_kills < 4 || copy_kills + apply_kills < 14 {
        attempts += 1;
        assert!(
            attempts <= 40,
            "could not place the kills (copy {copy_kills}, apply {apply_kills})"
        );
        let in_copy = !copy_done(&d).await;
        // In the copy: short random runs (the copy lasts a few seconds in all). In change
        // application: long enough to get past startup into applying rounds.
        let delay = if in_copy {
            rng.random_range(200..700)
        } else {
            rng.random_range(500..2000)
        };
        let mut child = spawn_cutover(&args, &env_refs(&env));
        if in_copy && copy_kills >= 8 {
            // Enough kills in the copy (a loaded machine copies slowly): let this run finish
            // the copy, then kill it in change application.
            let d2 = d.clone();
            wait_until(Duration::from_secs(120), "the copy to finish", || {
                let d2 = d2.clone();
                async move { copy_done(&d2).await }
            })
            .await;
        }
        tokio::time::sleep(Duration::from_millis(delay)).await;
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "cutover exited by itself ({status}) before kill #{attempts}:\n{}",
                show(&out)
            );
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let done_after = copy_done(&d).await;
        let phase = if !done_after {
            copy_kills += 1;
            "copy"
        } else if in_copy {
            "end of copy"
        } else {
            apply_kills += 1;
            "change application"
        };
        let ops = acked.lock().unwrap().ops;
        println!("kill #{attempts} after {delay} ms, during {phase} (writer ops so far: {ops})");
    }
    let kills = attempts;
    assert!(copy_kills + apply_kills >= 14);

    // Stop the writer and approve; kill the commit too, then run to the end.
    stop.store(true, Ordering::Relaxed);
    w.await.unwrap();
    let o = run_cutover(&["approve", &plan], &env_refs(&env));
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let mut commit_kills = 0;
    for _ in 0..3 {
        let delay = rng.random_range(100..1500);
        let mut child = spawn_cutover(&args, &env_refs(&env));
        tokio::time::sleep(Duration::from_millis(delay)).await;
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            assert_eq!(status.code(), Some(0), "{}", show(&out));
            println!("the commit finished within {delay} ms");
            break;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        commit_kills += 1;
        println!("kill during the commit after {delay} ms");
    }
    let o = run_cutover(&args, &env_refs(&env));
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let v: serde_json::Value = serde_json::from_slice(
        &run_cutover(&["status", &plan, "--format", "json"], &env_refs(&env)).stdout,
    )
    .unwrap();
    assert_eq!(v["state"], "COMMITTED", "{v}");

    assert_same_data(&s, &d, STATE_DB).await;
    assert_same_catalog(&s, &d, STATE_DB).await;
    for coll in ["log", "system.buckets.metrics"] {
        assert_eq!(
            natural(&s, coll).await,
            natural(&d, coll).await,
            "natural order of k.{coll}"
        );
    }

    // Every acknowledged write is on the destination.
    let a = std::mem::take(&mut *acked.lock().unwrap());
    let main = d.database("k").collection::<Document>("main");
    let extra = d.database("k").collection::<Document>("extra");
    for id in &a.inserted {
        assert!(
            main.find_one(doc! {"_id": id}).await.unwrap().is_some(),
            "acknowledged insert of _id {id} is missing on the destination"
        );
    }
    for (id, n) in &a.incs {
        if a.unknown.contains(id) {
            continue;
        }
        let got = main
            .find_one(doc! {"_id": id})
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("document {id} missing on the destination"))
            .get_i64("n")
            .unwrap();
        assert_eq!(
            got, *n,
            "_id {id}: {n} acknowledged $inc, destination has n = {got}"
        );
    }
    for id in &a.deleted {
        assert!(
            extra.find_one(doc! {"_id": id}).await.unwrap().is_none(),
            "acknowledged delete of _id {id} not applied on the destination"
        );
    }
    println!(
        "{kills} kills ({copy_kills} in the copy, {apply_kills} in change application, \
         {commit_kills} in the commit), {} writer ops \
         ({} inserts, {} updated documents, {} deletes), {:?} in all",
        a.ops,
        a.inserted.len(),
        a.incs.len(),
        a.deleted.len(),
        started.elapsed()
    );
    assert!(a.ops > 1000, "the writer must have written throughout");
}

/// Resuming inside one range: a single large range of mixed `_id` types is killed after it
/// checkpointed a `last_id`; re-runs continue from there (inclusive, duplicates ignored)
/// without losing or duplicating a document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_inside_a_range_resumes_from_last_id() {
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let s = src.root_client().await;
    let d = dst.root_client().await;
    let coll = s.database("k").collection::<Document>("big");
    for chunk in 0..16i64 {
        let mut docs = Vec::new();
        for i in chunk * 5000..(chunk + 1) * 5000 {
            docs.push(doc! {"_id": i as i32, "pad": "x".repeat(150)});
            docs.push(doc! {"_id": format!("s{i:06}"), "pad": "y".repeat(150)});
            docs.push(doc! {"_id": {"k": i}, "pad": "z".repeat(150)});
        }
        coll.insert_many(docs).await.unwrap();
    }
    let seed: u64 = std::env::var("KILL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    println!("kill seed: {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (_dir, plan) = write_plan(&plan_text("kill", PLAN));
    let plan = plan.to_str().unwrap().to_string();
    let env = root_env(&src, &dst);
    let args = [
        "run",
        plan.as_str(),
        "--docs-per-range",
        "1000000",
        "--copy-concurrency",
        "1",
        "--max-steps",
        "1",
    ];
    let parts = d.database(STATE_DB).collection::<Document>("partitions");
    let last_id = || async {
        parts
            .find_one(doc! {"ns": "k.big"})
            .await
            .unwrap()
            .and_then(|p| p.get("last_id").cloned())
    };
    // The first run is killed exactly at its first within-range checkpoint (a pause point),
    // so the runs after it resume from a `last_id` however fast the machine copies (CI once
    // finished the whole range inside the first random delay, and no kill landed).
    let mut resumed_from = Vec::new();
    {
        let pause_dir = tempfile::tempdir().unwrap();
        let mut paused = env.clone();
        paused.push(("CUTOVER_TEST_PAUSE_AT", "copy.checkpointed@1".into()));
        paused.push((
            "CUTOVER_TEST_PAUSE_DIR",
            pause_dir.path().display().to_string(),
        ));
        let mut child = spawn_cutover(&args, &env_refs(&paused));
        wait_pause_file(
            &pause_dir.path().join("copy.checkpointed.reached"),
            &mut child,
        )
        .await;
        child.kill().unwrap();
        child.wait().unwrap();
        let id = last_id().await.expect("a checkpointed last_id");
        println!("kill #0 at a checkpoint: last_id {id:?}");
        resumed_from.push(id);
    }
    // Then kills at random moments, wherever they land.
    for attempt in 1..40 {
        if copy_done(&d).await {
            break;
        }
        let delay = rng.random_range(100..1000);
        let mut child = spawn_cutover(&args, &env_refs(&env));
        tokio::time::sleep(Duration::from_millis(delay)).await;
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            assert_eq!(out.status.code(), Some(0), "{}", show(&out));
            break;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let p = last_id().await;
        println!("kill #{attempt} after {delay} ms: last_id {p:?}");
        if let Some(id) = p {
            if resumed_from.last() != Some(&id) {
                resumed_from.push(id);
            }
        }
    }
    let o = run_cutover(&["approve", &plan], &env_refs(&env));
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let o = run_cutover(&args[..args.len() - 2], &env_refs(&env));
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    println!("resumed from: {resumed_from:?}");
    assert_same_data(&s, &d, STATE_DB).await;
}

/// Torture seeds 3, 4, 13, 19, 20 (issue 9): a runner killed during the copy, after it had
/// created the destination's collections and views, then a `collMod` of a collection's
/// validator and of a view's pipeline on the source: the re-run refused its own collections
/// ("already exists on the destination with different options"). The change events from the
/// lane's start point bring them in line, so the re-run must continue and end identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_changed_on_the_source_after_a_kill_during_the_copy_converge() {
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let s = src.root_client().await;
    let d = dst.root_client().await;
    let db = s.database("k");
    db.run_command(doc! {"create": "aa_small"}).await.unwrap();
    db.run_command(doc! {"create": "v", "viewOn": "aa_small", "pipeline": [{"$match": {"x": 1}}]})
        .await
        .unwrap();
    for chunk in 0..8 {
        let docs: Vec<Document> = (chunk * 5000..(chunk + 1) * 5000)
            .map(|i| doc! {"_id": i, "pad": "x".repeat(200)})
            .collect();
        db.collection::<Document>("main")
            .insert_many(docs)
            .await
            .unwrap();
    }
    let (_dir, plan) = write_plan(&plan_text("kill", PLAN));
    let plan = plan.to_str().unwrap().to_string();
    let env = root_env(&src, &dst);
    let args = [
        "run",
        plan.as_str(),
        "--docs-per-range",
        "100",
        "--copy-concurrency",
        "1",
    ];
    let mut child = spawn_cutover(&args, &env_refs(&env));
    // Killed once the destination has the view (created before any document is copied).
    let dd = d.clone();
    wait_until(Duration::from_secs(60), "the destination's view", || {
        let dd = dd.clone();
        async move {
            dd.database("k")
                .list_collection_names()
                .await
                .map(|n| n.contains(&"v".to_string()))
                .unwrap_or(false)
        }
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!copy_done(&d).await, "the copy finished before the kill");
    db.run_command(doc! {"collMod": "aa_small", "validator": {"x": {"$type": "int"}}})
        .await
        .unwrap();
    db.run_command(doc! {"collMod": "v", "viewOn": "aa_small", "pipeline": [{"$match": {"x": 2}}]})
        .await
        .unwrap();

    let child = spawn_cutover(&args, &env_refs(&env));
    let dd = d.clone();
    let start = Instant::now();
    let mut child = child;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            panic!("the re-run stopped ({st}):\n{}", show(&out));
        }
        if copy_done(&dd).await {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the copy did not finish"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let the lane apply the collMod events, then approve and finish.
    let o = run_cutover(&["approve", &plan], &env_refs(&env));
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_same_catalog(&s, &d, STATE_DB).await;
    assert_same_data(&s, &d, STATE_DB).await;
}
