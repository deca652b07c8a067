//! Change events applied while the copy runs (issue 20): a copy much longer than the
//! source's oplog window, under an application writing throughout, needs no restart; a runner
//! killed at seeded moments of such a copy resumes to the same result.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mongodb::bson::{doc, Document};
use mongodb::Client;
use rand::{Rng, SeedableRng};

use crate::common::*;

const STATE_DB: &str = "__cutover";

const SYNC_COMMIT: &str = r#"
[options]
max_lag = "2s"

[[steps]]
kind = "sync"

[[steps]]
kind = "commit"
timeout = "3m"
"#;

/// Documents of about `bytes` bytes, `_id`s `from..to`.
async fn seed(c: &Client, db: &str, coll: &str, from: i64, to: i64, bytes: usize) {
    let pad = "x".repeat(bytes);
    let coll = c.database(db).collection::<Document>(coll);
    let mut i = from;
    while i < to {
        let end = (i + 10_000).min(to);
        let docs: Vec<Document> = (i..end)
            .map(|k| doc! {"_id": k, "v": k, "pad": &pad})
            .collect();
        coll.insert_many(docs).await.expect("seed");
        i = end;
    }
}

/// What the application wrote (acknowledged).
#[derive(Default)]
struct Churn {
    stop: AtomicBool,
    writes: AtomicU64,
    bytes: AtomicU64,
}

/// An application writing about `mb_per_s` MB/s of oplog into `db.coll` (`_id`s
/// `0..n` exist at the start): inserts of new documents, updates and deletes of random
/// existing ones (in ranges not read yet, being read and already read), until stopped.
fn churn(c: Client, db: &str, coll: &str, n: i64, mb_per_s: f64, seed: u64) -> Arc<Churn> {
    let state = Arc::new(Churn::default());
    let st = state.clone();
    let coll = c.database(db).collection::<Document>(coll);
    tokio::spawn(async move {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut next_id = 10_000_000i64;
        let tick = Duration::from_millis(100);
        // Per tick: 10 inserts of 8 KB, then updates of 1 KB each for the rest of the budget.
        let budget = (mb_per_s * 1024.0 * 1024.0 / 10.0) as usize;
        let big = "i".repeat(8 * 1024);
        while !st.stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            let docs: Vec<Document> = (0..10)
                .map(|_| {
                    next_id += 1;
                    doc! {"_id": next_id, "v": next_id, "pad": &big}
                })
                .collect();
            match coll.insert_many(docs).await {
                Ok(_) => {}
                Err(_) if st.stop.load(Ordering::Relaxed) => return,
                Err(e) => panic!("churn insert: {e}"),
            }
            let mut spent = 10 * big.len();
            st.writes.fetch_add(10, Ordering::Relaxed);
            // Updates of 1 KB each (one oplog entry per document), 5% deletes, by batch.
            while spent < budget {
                let ids: Vec<i64> = (0..50).map(|_| rng.random_range(0..n)).collect();
                if rng.random_bool(0.05) {
                    let n = match coll.delete_many(doc! {"_id": {"$in": ids}}).await {
                        Ok(r) => r.deleted_count,
                        Err(_) if st.stop.load(Ordering::Relaxed) => return,
                        Err(e) => panic!("churn delete: {e}"),
                    };
                    spent += 100 * n as usize + 100;
                    st.writes.fetch_add(n, Ordering::Relaxed);
                } else {
                    let v = format!("{:0>1024}", rng.random::<u64>());
                    let n = match coll
                        .update_many(
                            doc! {"_id": {"$in": ids}},
                            doc! {"$set": {"u": v}, "$inc": {"n": 1}},
                        )
                        .await
                    {
                        Ok(r) => r.modified_count,
                        Err(_) if st.stop.load(Ordering::Relaxed) => return,
                        Err(e) => panic!("churn update: {e}"),
                    };
                    spent += 1100 * n as usize + 100;
                    st.writes.fetch_add(n, Ordering::Relaxed);
                }
            }
            st.bytes.fetch_add(spent as u64, Ordering::Relaxed);
            if let Some(rest) = tick.checked_sub(started.elapsed()) {
                tokio::time::sleep(rest).await;
            }
        }
    });
    state
}

async fn lane(d: &Client, plan: &str) -> Document {
    d.database(STATE_DB)
        .collection::<Document>("lanes")
        .find_one(doc! {"_id": format!("{plan}/forward")})
        .await
        .unwrap()
        .expect("lane record")
}

async fn oldest_oplog_ts(c: &Client) -> mongodb::bson::Timestamp {
    c.database("local")
        .collection::<Document>("oplog.rs")
        .find_one(doc! {})
        .sort(doc! {"$natural": 1})
        .await
        .unwrap()
        .expect("oplog entry")
        .get_timestamp("ts")
        .unwrap()
}

/// 500,000 documents copied while an application writes ~2 MB/s of oplog into a source whose
/// oplog holds a few seconds (much less than the copy takes), with a rename and an index
/// build during the copy: one `cutover run`, no restart; can-commit within 10 s of the copy's
/// end; byte-identical data and catalog after the commit. Copy-then-apply loses its resume
/// point here (`apply_during_copy = false`: "the source's oplog no longer holds cutover's
/// resume point").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_longer_than_the_oplog_window_needs_no_restart() {
    let (src, dst) = tokio::join!(
        ReplicaSet::start_with(RsOptions {
            oplog_mb: 6,
            cache_gb: 0.5,
            syncdelay: Some(1),
            ..Default::default()
        }),
        ReplicaSet::start_with(RsOptions {
            cache_gb: 0.5,
            ..Default::default()
        })
    );
    let s = src.root_client().await;
    let d = dst.root_client().await;
    const N: i64 = 500_000;
    seed(&s, "big", "items", 0, N, 400).await;
    seed(&s, "big", "small", 0, 2_000, 100).await;
    s.database("big")
        .run_command(doc! {"createIndexes": "items", "indexes": [
        {"key": {"v": 1}, "name": "v_unique", "unique": true}]})
        .await
        .unwrap();
    let (_dir, plan) = write_plan(&plan_text("dcopy", SYNC_COMMIT));
    let plan = plan.to_str().unwrap().to_string();
    let env = root_env(&src, &dst);

    let app = churn(s.clone(), "big", "items", N, 2.0, 20);
    let t0 = Instant::now();
    let child = spawn_cutover(&["run", &plan, "--max-steps", "1"], &env_refs(&env));
    // During the copy: a rename (of a collection the copy may not have read yet) and an
    // index build on the collection being copied.
    wait_status(
        &plan,
        &env,
        &[],
        Duration::from_secs(120),
        "the copy to start",
        |v| v.to_string().contains("copying"),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    s.database("admin")
        .run_command(doc! {"renameCollection": "big.small", "to": "big.renamed"})
        .await
        .unwrap();
    s.database("big")
        .collection::<Document>("renamed")
        .insert_one(doc! {"_id": "after-rename"})
        .await
        .unwrap();
    s.database("big")
        .run_command(doc! {"createIndexes": "items", "indexes": [
        {"key": {"n": 1, "v": -1}, "name": "n_v"}]})
        .await
        .unwrap();
    let out = finish_child(child).await;
    let exited = mongodb::bson::DateTime::now();
    let elapsed = t0.elapsed();
    println!("{}", show(&out));
    let l = lane(&d, "dcopy").await;
    let oldest = oldest_oplog_ts(&s).await;
    let start_ts = l.get_timestamp("start_ts").unwrap();
    println!(
        "sync step: {elapsed:?}; application: {} writes, {:.1} MB; lane: {l}",
        app.writes.load(Ordering::Relaxed),
        app.bytes.load(Ordering::Relaxed) as f64 / 1048576.0
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    // The source's oplog no longer holds the copy's start: copy-then-apply could not work.
    assert!(
        oldest > start_ts,
        "the oplog still holds the copy's start ({oldest:?} <= {start_ts:?}): the test proves nothing"
    );
    assert!(
        l.get_i64("events_applied_during_copy").unwrap_or(0) > 0,
        "no event was applied during the copy: {l}"
    );
    let finished = l.get_datetime("copy_finished").expect("copy_finished");
    let since_copy = exited.timestamp_millis() - finished.timestamp_millis();
    println!("can-commit {since_copy} ms after the copy's end");
    assert!(
        since_copy < 10_000,
        "can-commit came {since_copy} ms after the copy's end"
    );

    app.stop.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let o = run_cutover(&["run", &plan], &env_refs(&env));
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_same_data(&s, &d, STATE_DB).await;
    assert_same_catalog(&s, &d, STATE_DB).await;
}

/// kill -9 of the runner at seeded moments of a copy under churn (a rename and an index
/// build among the writes): each time the same command resumes (ranges from their
/// checkpoints, held events replayed from the lane's stored point), and the commit is
/// byte-identical. `DURING_COPY_SEED` replays a seed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_copy_under_churn_resumes_to_the_same_result() {
    let run_seed: u64 = std::env::var("DURING_COPY_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed {run_seed} (DURING_COPY_SEED={run_seed} replays it)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(run_seed);
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let s = src.root_client().await;
    let d = dst.root_client().await;
    const N: i64 = 200_000;
    seed(&s, "big", "items", 0, N, 400).await;
    seed(&s, "big", "small", 0, 3_000, 100).await;
    let (_dir, plan) = write_plan(&plan_text("dkill", SYNC_COMMIT));
    let plan = plan.to_str().unwrap().to_string();
    let env = root_env(&src, &dst);
    let app = churn(s.clone(), "big", "items", N, 1.0, run_seed);
    let args = [
        "run",
        plan.as_str(),
        "--max-steps",
        "1",
        "--docs-per-range",
        "2000",
        "--copy-concurrency",
        "1",
    ];
    let parts = d.database(STATE_DB).collection::<Document>("partitions");
    // Kill points: seeded numbers of finished ranges (of about 100), increasing.
    let mut targets: Vec<u64> = (0..3).map(|_| rng.random_range(3..90)).collect();
    targets.sort();
    let mut kills = 0;
    for (round, target) in targets.iter().enumerate() {
        let mut child = spawn_cutover(&args, &env_refs(&env));
        let started = Instant::now();
        loop {
            let done = parts
                .count_documents(doc! {"ns": {"$exists": true}, "done": true})
                .await
                .unwrap();
            if done >= *target || child.try_wait().unwrap().is_some() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "the copy stalled"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if round == 1 {
            s.database("admin")
                .run_command(doc! {"renameCollection": "big.small", "to": "big.moved"})
                .await
                .unwrap();
            s.database("big")
                .run_command(doc! {"createIndexes": "items", "indexes": [
                {"key": {"n": 1}, "name": "n_1"}]})
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
        }
        let killed = child.try_wait().unwrap().is_none();
        if killed {
            // SAFETY: kill(2) on a child this test spawned.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGKILL);
            }
            kills += 1;
        }
        let _ = child.wait();
        let (done, total) = (
            parts
                .count_documents(doc! {"ns": {"$exists": true}, "done": true})
                .await
                .unwrap(),
            parts
                .count_documents(doc! {"ns": {"$exists": true}})
                .await
                .unwrap(),
        );
        println!("round {round}: target {target}, killed {killed}; {done} of {total} ranges done");
    }
    assert!(kills >= 2, "only {kills} kill(s) landed during the copy");
    let o = run_cutover(&args, &env_refs(&env));
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let l = lane(&d, "dkill").await;
    println!("lane: {l}");
    app.stop.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let o = run_cutover(&["run", &plan], &env_refs(&env));
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_same_data(&s, &d, STATE_DB).await;
    assert_same_catalog(&s, &d, STATE_DB).await;
}

const SYNC_COMMIT_NO_FILLER: &str = r#"
[options]
max_lag = "2s"

[[options.exclude]]
database = "filler"

[[steps]]
kind = "sync"

[[steps]]
kind = "commit"
timeout = "3m"
"#;

/// The runner stopped (kill -9) in the middle of the copy and kept down until the source's
/// oplog no longer holds its resume point, while about 5% of the documents are updated,
/// some inserted and deleted, an index dropped and one created, a collection created and one
/// dropped. The same `cutover run` recovers: it compares the ranges copied so far, rewrites
/// only what differs (under 25% of the bytes), copies the rest, and ends byte-identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_resume_point_re_copies_only_what_changed() {
    let (src, dst) = tokio::join!(
        ReplicaSet::start_with(RsOptions {
            oplog_mb: 2,
            syncdelay: Some(1),
            ..Default::default()
        }),
        ReplicaSet::start()
    );
    let s = src.root_client().await;
    let d = dst.root_client().await;
    const N: i64 = 100_000;
    seed(&s, "big", "items", 0, N, 500).await;
    seed(&s, "big", "gone", 0, 500, 100).await;
    s.database("big")
        .run_command(doc! {"createIndexes": "items", "indexes": [
        {"key": {"v": 1}, "name": "v_1"}, {"key": {"pad": 1, "v": 1}, "name": "pad_v"}]})
        .await
        .unwrap();
    let (dir, plan) = write_plan(&plan_text("lost", SYNC_COMMIT_NO_FILLER));
    let plan = plan.to_str().unwrap().to_string();
    let env = root_env(&src, &dst);
    let args = [
        "run",
        plan.as_str(),
        "--docs-per-range",
        "5000",
        "--copy-concurrency",
        "1",
    ];
    // Stop in the middle of the copy: paused at the 60th read batch (of about 100), killed there.
    let mut paused = env.clone();
    paused.push(("CUTOVER_TEST_PAUSE_AT", "copy.reading@60".into()));
    paused.push(("CUTOVER_TEST_PAUSE_DIR", dir.path().display().to_string()));
    let mut child = spawn_cutover(&args, &env_refs(&paused));
    wait_pause_file(&dir.path().join("copy.reading.reached"), &mut child).await;
    // A collection created during the copy (not in its copy set): its documents reach the
    // destination as change events while the copy is paused.
    seed(&s, "big", "early", 0, 200, 100).await;
    let t0 = Instant::now();
    while d
        .database("big")
        .collection::<Document>("early")
        .count_documents(doc! {})
        .await
        .unwrap()
        < 200
    {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "big.early not replicated"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // SAFETY: kill(2) on a child this test spawned.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGKILL);
    }
    let _ = child.wait();
    let parts = d.database(STATE_DB).collection::<Document>("partitions");
    let done = parts
        .count_documents(doc! {"ns": "big.items", "done": true})
        .await
        .unwrap();
    println!("killed with {done} of 20 ranges of big.items copied");
    assert!(done >= 3, "the kill came too early: {done} ranges done");
    let l = lane(&d, "lost").await;
    let stored = l
        .get_document("resume_token")
        .ok()
        .and_then(|t| t.get_str("_data").ok().map(str::to_string));
    // The stored point: the lane's position (its resume token's time), else its start.
    let start = l
        .get_timestamp("position")
        .or_else(|_| l.get_timestamp("start_ts"))
        .unwrap();

    // While it is down: ~5% of the documents change, some come and go, and the catalog moves.
    let items = s.database("big").collection::<Document>("items");
    items
        .update_many(
            doc! {"_id": {"$mod": [20, 7]}},
            doc! {"$set": {"v": -1, "changed": true}},
        )
        .await
        .unwrap();
    items
        .delete_many(doc! {"_id": {"$gte": 40_000, "$lt": 40_500}})
        .await
        .unwrap();
    items
        .insert_many((N..N + 500).map(|k| doc! {"_id": k, "v": k, "new": true}))
        .await
        .unwrap();
    s.database("big")
        .run_command(doc! {"dropIndexes": "items", "index": "pad_v"})
        .await
        .unwrap();
    s.database("big")
        .run_command(doc! {"createIndexes": "items", "indexes": [
        {"key": {"changed": 1}, "name": "changed_1", "sparse": true}]})
        .await
        .unwrap();
    s.database("big")
        .collection::<Document>("gone")
        .drop()
        .await
        .unwrap();
    seed(&s, "big", "fresh", 0, 300, 100).await;
    // The collection created during the copy loses documents while cutover is down: a copy
    // into the destination's version would keep them.
    let early = s.database("big").collection::<Document>("early");
    early.delete_many(doc! {"_id": {"$lt": 50}}).await.unwrap();
    early
        .update_many(doc! {"_id": {"$gte": 190}}, doc! {"$set": {"v": -7}})
        .await
        .unwrap();
    // ... and the oplog rolls past the stored point (writes outside the plan).
    let filler = s.database("filler").collection::<Document>("f");
    filler.insert_one(doc! {"_id": 0}).await.unwrap();
    let t0 = Instant::now();
    let mut writes = 0u64;
    while oldest_oplog_ts(&s).await <= start {
        assert!(
            t0.elapsed() < Duration::from_secs(150),
            "the oplog did not roll over"
        );
        for _ in 0..10 {
            writes += 1;
            filler
                .update_one(
                    doc! {"_id": 0},
                    doc! {"$set": {"blob": format!("{writes:06}").repeat(5_000)}},
                )
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "oplog rolled past the start point after {writes} writes in {:?} (stored token: {})",
        t0.elapsed(),
        stored.is_some()
    );

    // A crash once the recovery has prepared the catalog and the ranges, before it moved the
    // lane to its new start point: the same command prepares again.
    let mut crash = env.clone();
    crash.push(("CUTOVER_TEST_CRASH_AT", "recover.prepared".into()));
    let o = run_cutover(&args, &env_refs(&crash));
    assert!(
        o.status.code() != Some(0) && show(&o).contains("crash point `recover.prepared`"),
        "{}",
        show(&o)
    );
    let o = run_cutover(&args, &env_refs(&env));
    let text = show(&o);
    assert_eq!(o.status.code(), Some(0), "{text}");
    assert!(
        text.contains("Recovered from the lost resume point"),
        "the run must say what it did: {text}"
    );
    // The filler database is outside the plan.
    s.database("filler").drop().await.unwrap();
    assert_same_data(&s, &d, STATE_DB).await;
    assert_same_catalog(&s, &d, STATE_DB).await;
    let l = lane(&d, "lost").await;
    let r = l
        .get_array("recoveries")
        .expect("a recovery report")
        .first()
        .and_then(|r| r.as_document())
        .expect("one recovery")
        .clone();
    println!("recovery: {r}");
    let rewritten = r.get_i64("bytes_rewritten").unwrap();
    let source = r.get_i64("source_bytes").unwrap();
    let compared = r.get_i64("ranges_compared").unwrap();
    assert!(compared >= done as i64, "{r}");
    assert!(r.get_i64("ranges_differing").unwrap() > 0, "{r}");
    assert!(
        r.get_i64("documents_deleted").unwrap() > 0,
        "the documents deleted meanwhile are deleted: {r}"
    );
    assert!(
        (rewritten as f64) < 0.25 * source as f64,
        "re-copied {rewritten} of {source} bytes: {r}"
    );
    let recopied: Vec<&str> = r
        .get_array("recopied")
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(!recopied.contains(&"big.items"), "{r}\n{text}");
    // `big.early` (created during the copy, changed while cutover was down) is either copied
    // again or, when the restarted copy planned it before the lost point was found (the copy
    // plans every collection at once), compared range by range like `big.items`: either way
    // the destination holds the source's version (asserted above).
    assert!(
        recopied.contains(&"big.early") || r.get_i64("ranges_compared").unwrap() > done as i64,
        "{r}\n{text}"
    );
    println!(
        "re-copied {rewritten} of {source} bytes ({:.1}%)",
        100.0 * rewritten as f64 / source as f64
    );
    let st = run_cutover(&["status", plan.as_str()], &env_refs(&env));
    let st_text = String::from_utf8_lossy(&st.stdout).to_string();
    assert!(st_text.contains("recovered"), "{st_text}");
}
