//! Collections renamed while cutover copies and replicates them (issue 9): the copy follows
//! the collection UUID and keeps writing under the name the collection had when the copy
//! started; the replayed `rename` event then renames it on the destination. Pause points
//! (`CUTOVER_TEST_PAUSE_AT`) make the rename land mid-copy deterministically; crash points
//! and kill -9 cover the replays. Every test ends with a commit and identical clusters.

use std::time::Duration;

use crate::common::*;
use mongodb::bson::{doc, Document};
use mongodb::Client;

const STATE_DB: &str = "__cutover";

const AUTO: &str = r#"
[options]
max_lag = "2s"

[[steps]]
kind = "sync"

[[steps]]
kind = "commit"
timeout = "3m"
"#;

/// Manual approval keeps replication running until the test approves.
const MANUAL: &str = r#"
[options]
max_lag = "2s"

[[steps]]
kind = "sync"

[[steps]]
kind = "commit"
approval = "manual"
timeout = "3m"
"#;

async fn run(c: &Client, db: &str, cmd: Document) -> Document {
    c.database(db)
        .run_command(cmd.clone())
        .await
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

async fn rename(c: &Client, from: &str, to: &str, drop_target: bool) {
    run(
        c,
        "admin",
        doc! {"renameCollection": from, "to": to, "dropTarget": drop_target},
    )
    .await;
}

/// `bulk.c1`: `n` documents with a secondary index, copied in several ranges.
async fn seed_big(c: &Client, db: &str, coll: &str, n: i64) {
    let col = c.database(db).collection::<Document>(coll);
    let mut i = 0;
    while i < n {
        let docs: Vec<Document> = (i..(i + 5000).min(n))
            .map(|j| doc! {"_id": j, "k": j % 97, "v": format!("v{j}"), "pad": "x".repeat(200)})
            .collect();
        col.insert_many(docs).await.unwrap();
        i += 5000;
    }
    run(
        c,
        db,
        doc! {"createIndexes": coll, "indexes": [{"key": {"k": 1}, "name": "k_1"}]},
    )
    .await;
}

fn lane_ready(lane: Option<Document>) -> bool {
    lane.is_some_and(|l| l.get_bool("copy_done").unwrap_or(false) && l.contains_key("resume_token"))
}

/// Runs until the copy is done and a round of change events is checkpointed, then kill -9.
async fn run_into_apply_then_kill(args: &[&str], env: &[(&'static str, String)], d: &Client) {
    let mut child = spawn_cutover(args, &env_refs(env));
    let lanes = d.database(STATE_DB).collection::<Document>("lanes");
    let start = std::time::Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("cutover exited ({st}) before change application");
        }
        if lane_ready(
            lanes
                .find_one(doc! {"_id": "rename/forward"})
                .await
                .unwrap(),
        ) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "no change application"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

async fn assert_same(s: &Client, d: &Client) {
    assert_same_data(s, d, STATE_DB).await;
    assert_same_catalog(s, d, STATE_DB).await;
}

/// The reported failure: `renameCollection bulk.c1 -> bulk.c1_renamed` while the copy's cursor
/// on `bulk.c1` is open (it is killed with QueryPlanKilled), then writes and an index on the
/// new name, and a new collection under the old name (another UUID, which the copy must not
/// read into the old one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_during_copy_follows_the_uuid() {
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let s = src.root_client().await;
    let d = dst.root_client().await;
    seed_big(&s, "bulk", "c1", 30_000).await;
    seed_big(&s, "bulk", "c2", 3_000).await;
    let (dir, plan) = write_plan(&plan_text("rename", AUTO));
    let plan = plan.to_str().unwrap().to_string();
    let mut env = root_env(&src, &dst);
    env.push(("CUTOVER_TEST_PAUSE_AT", "copy.reading@2".into()));
    env.push(("CUTOVER_TEST_PAUSE_DIR", dir.path().display().to_string()));
    let args = [
        "run",
        plan.as_str(),
        "--docs-per-range",
        "5000",
        "--copy-concurrency",
        "1",
    ];
    let mut child = spawn_cutover(&args, &env_refs(&env));
    wait_pause_file(&dir.path().join("copy.reading.reached"), &mut child).await;

    // Mid-copy of bulk.c1 (its first range, cursor open).
    rename(&s, "bulk.c1", "bulk.c1_renamed", false).await;
    let renamed = s.database("bulk").collection::<Document>("c1_renamed");
    renamed
        .insert_many((100_000..100_100).map(|i| doc! {"_id": i, "k": 1, "v": "after"}))
        .await
        .unwrap();
    renamed
        .update_many(doc! {"_id": {"$lt": 50}}, doc! {"$set": {"v": "changed"}})
        .await
        .unwrap();
    renamed
        .delete_many(doc! {"_id": {"$gte": 29_990}})
        .await
        .unwrap();
    run(
        &s,
        "bulk",
        doc! {"createIndexes": "c1_renamed", "indexes": [{"key": {"v": 1}, "name": "v_1"}]},
    )
    .await;
    s.database("bulk")
        .collection::<Document>("c1")
        .insert_many((0..10).map(|i| doc! {"_id": i, "new": true}))
        .await
        .unwrap();
    std::fs::write(dir.path().join("copy.reading.go"), b"").unwrap();

    let out = finish_child(child).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_same(&s, &d).await;
    let n = d
        .database("bulk")
        .collection::<Document>("c1_renamed")
        .count_documents(doc! {})
        .await
        .unwrap();
    // 30,000 copied, 100 inserted after the rename, every `_id` ≥ 29,990 deleted.
    assert_eq!(n, 29_990);
}

/// kill -9 in the middle of the copy of `bulk.c1`, then the rename (and a new `bulk.c1`)
/// while cutover is down: the resumed run continues the copy from its records (which carry
/// the UUID) instead of starting over under the new name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_copy_then_rename_resumes_by_uuid() {
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let s = src.root_client().await;
    let d = dst.root_client().await;
    seed_big(&s, "bulk", "c1", 30_000).await;
    seed_big(&s, "bulk", "c2", 3_000).await;
    let (dir, plan) = write_plan(&plan_text("rename", AUTO));
    let plan = plan.to_str().unwrap().to_string();
    let env = root_env(&src, &dst);
    let mut paused = env.clone();
    paused.push(("CUTOVER_TEST_PAUSE_AT", "copy.reading@8".into()));
    paused.push(("CUTOVER_TEST_PAUSE_DIR", dir.path().display().to_string()));
    let args = [
        "run",
        plan.as_str(),
        "--docs-per-range",
        "5000",
        "--copy-concurrency",
        "1",
    ];
    let mut child = spawn_cutover(&args, &env_refs(&paused));
    wait_pause_file(&dir.path().join("copy.reading.reached"), &mut child).await;
    child.kill().unwrap(); // SIGKILL, in the second range of bulk.c1
    child.wait().unwrap();

    rename(&s, "bulk.c1", "bulk.c1_renamed", false).await;
    let renamed = s.database("bulk").collection::<Document>("c1_renamed");
    renamed
        .update_many(doc! {"_id": {"$gte": 20_000}}, doc! {"$set": {"v": "late"}})
        .await
        .unwrap();
    s.database("bulk")
        .collection::<Document>("c1")
        .insert_many((0..10).map(|i| doc! {"_id": i, "new": true}))
        .await
        .unwrap();

    let out = run_cutover(&args, &env_refs(&env));
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_same(&s, &d).await;
}

/// Across databases and into/out of the plan's filter, mid-copy: `bulk.c1 -> other.c1`
/// (the server copies the documents into a temporary collection of `other` and drops the
/// original), `bulk.gone -> bulk.x_gone` (out of the filter), `bulk.x_in -> bulk.incoming`
/// (into it: copied by UUID during change application).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_db_and_filter_renames_during_copy() {
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let s = src.root_client().await;
    let d = dst.root_client().await;
    seed_big(&s, "bulk", "c1", 30_000).await;
    seed_big(&s, "bulk", "gone", 6_000).await;
    seed_big(&s, "bulk", "x_in", 6_000).await;
    let body = r#"
[options]
max_lag = "2s"

[[options.include]]
database = "bulk"

[[options.include]]
database = "other"

[[options.exclude]]
database = "bulk"
collections_regex = "^x_"

[[steps]]
kind = "sync"

[[steps]]
kind = "commit"
timeout = "3m"
"#;
    let (dir, plan) = write_plan(&plan_text("rename", body));
    let plan = plan.to_str().unwrap().to_string();
    let mut env = root_env(&src, &dst);
    env.push(("CUTOVER_TEST_PAUSE_AT", "copy.reading@2".into()));
    env.push(("CUTOVER_TEST_PAUSE_DIR", dir.path().display().to_string()));
    let args = [
        "run",
        plan.as_str(),
        "--docs-per-range",
        "5000",
        "--copy-concurrency",
        "1",
    ];
    let mut child = spawn_cutover(&args, &env_refs(&env));
    wait_pause_file(&dir.path().join("copy.reading.reached"), &mut child).await;

    rename(&s, "bulk.c1", "other.c1", false).await;
    rename(&s, "bulk.gone", "bulk.x_gone", false).await;
    rename(&s, "bulk.x_in", "bulk.incoming", false).await;
    s.database("other")
        .collection::<Document>("c1")
        .update_many(doc! {"_id": {"$lt": 100}}, doc! {"$set": {"v": "moved"}})
        .await
        .unwrap();
    s.database("bulk")
        .collection::<Document>("incoming")
        .insert_one(doc! {"_id": -1, "v": "in"})
        .await
        .unwrap();
    std::fs::write(dir.path().join("copy.reading.go"), b"").unwrap();

    let out = finish_child(child).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    // `bulk.x_gone` is outside the plan: leave it out of the comparison.
    s.database("bulk")
        .collection::<Document>("x_gone")
        .drop()
        .await
        .unwrap();
    assert_same(&s, &d).await;
}

/// A change-stream batch that spans a `renameCollection ... dropTarget`, replayed after a
/// crash right after the rename was applied: the replayed inserts into the old name must not
/// make a stub that then replaces the renamed (complete) collection, and its relaxed unique
/// index must still be restored at the commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_drop_target_replayed_after_kill_keeps_the_collection() {
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let s = src.root_client().await;
    let d = dst.root_client().await;
    seed_big(&s, "bulk", "c1", 3_000).await;
    run(
        &s,
        "bulk",
        doc! {"createIndexes": "c1", "indexes": [{"key": {"v": 1}, "name": "v_u", "unique": true}]},
    )
    .await;
    seed_big(&s, "bulk", "c2", 500).await;
    let (_dir, plan) = write_plan(&plan_text("rename", MANUAL));
    let plan = plan.to_str().unwrap().to_string();
    let env = root_env(&src, &dst);
    let args = ["run", plan.as_str()];
    run_into_apply_then_kill(&args, &env, &d).await;

    // While cutover is down: both land in the first batch of the next run.
    s.database("bulk")
        .collection::<Document>("c1")
        .insert_many((50_000..50_005).map(|i| doc! {"_id": i, "k": 0, "v": format!("n{i}")}))
        .await
        .unwrap();
    rename(&s, "bulk.c1", "bulk.c2", true).await;

    let mut crash = env.clone();
    crash.push(("CUTOVER_TEST_CRASH_AT", "apply.ddl-applied".into()));
    let out = run_cutover(&args, &env_refs(&crash));
    assert_ne!(out.status.code(), Some(0), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("crash point `apply.ddl-applied`"),
        "{}",
        show(&out)
    );

    let o = run_cutover(&["approve", &plan], &env_refs(&env));
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let out = run_cutover(&args, &env_refs(&env));
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_same(&s, &d).await;
}

/// Events whose document is re-read from the source (a document too large to travel in its
/// event, an update of a `$`-prefixed field) after the collection was renamed: the re-read
/// follows the collection UUID instead of finding nothing under the old name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refetch_after_rename_reads_the_renamed_collection() {
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let s = src.root_client().await;
    let d = dst.root_client().await;
    seed_big(&s, "bulk", "c1", 1_000).await;
    let (_dir, plan) = write_plan(&plan_text("rename", MANUAL));
    let plan = plan.to_str().unwrap().to_string();
    let env = root_env(&src, &dst);
    let args = ["run", plan.as_str()];
    run_into_apply_then_kill(&args, &env, &d).await;

    let c1 = s.database("bulk").collection::<Document>("c1");
    // 15.5 MB: its insert event carries no document (cutover re-reads it).
    c1.insert_one(doc! {"_id": "big", "blob": "b".repeat(15_500_000)})
        .await
        .unwrap();
    c1.update_one(
        doc! {"_id": 7},
        vec![doc! {"$replaceWith": {"$setField": {"field": {"$literal": "$price"}, "input": "$$ROOT", "value": 12}}}],
    )
    .await
    .unwrap();
    rename(&s, "bulk.c1", "bulk.c1_new", false).await;

    let o = run_cutover(&["approve", &plan], &env_refs(&env));
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let out = run_cutover(&args, &env_refs(&env));
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_same(&s, &d).await;
}

/// Found by torture seed 19 under load: index DDL on a collection whose after-copy indexes
/// were listed from the source but not built yet. The `dropIndexes` and the `collMod` of a
/// TTL index happen after the listing and reach the lane before the build: applied at once
/// they were no-ops (no index yet), and the build then created the dropped index and the old
/// TTL. They now wait, like a rename, until the collection's indexes are built.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_ddl_between_the_listing_and_the_build_is_not_lost() {
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let s = src.root_client().await;
    let d = dst.root_client().await;
    // Above `copy::SMALL_DOCS`: a small collection is indexed when created, not after its copy.
    seed_big(&s, "bulk", "c1", 6_000).await;
    run(
        &s,
        "bulk",
        doc! {"createIndexes": "c1", "indexes": [
        {"key": {"exp": 1}, "name": "exp_ttl", "expireAfterSeconds": 3600},
        {"key": {"v": 1}, "name": "v_1"}]},
    )
    .await;
    let (dir, plan) = write_plan(&plan_text("rename", AUTO));
    let plan = plan.to_str().unwrap().to_string();
    let mut env = root_env(&src, &dst);
    env.push(("CUTOVER_TEST_PAUSE_AT", "copy.indexes-listed@1".into()));
    env.push(("CUTOVER_TEST_PAUSE_DIR", dir.path().display().to_string()));
    let mut child = spawn_cutover(&["run", plan.as_str()], &env_refs(&env));
    wait_pause_file(&dir.path().join("copy.indexes-listed.reached"), &mut child).await;

    run(&s, "bulk", doc! {"dropIndexes": "c1", "index": "k_1"}).await;
    run(
        &s,
        "bulk",
        doc! {"collMod": "c1", "index": {"name": "exp_ttl", "expireAfterSeconds": 7711}},
    )
    .await;
    s.database("bulk")
        .collection::<Document>("c1")
        .insert_one(doc! {"_id": 100_000, "k": 1, "v": "after"})
        .await
        .unwrap();
    // The lane reads the change stream while the build waits; give it time to reach the DDL.
    tokio::time::sleep(Duration::from_secs(3)).await;
    std::fs::write(dir.path().join("copy.indexes-listed.go"), b"").unwrap();

    let out = finish_child(child).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_same(&s, &d).await;
    let names: Vec<String> = d
        .database("bulk")
        .collection::<Document>("c1")
        .list_index_names()
        .await
        .unwrap();
    assert!(!names.contains(&"k_1".to_string()), "{names:?}");
}

/// Found by torture seed 10 in CI (`document counts differ after the drain: tb.c3: source
/// 71, destination 75`): a cross-database rename replaced `tb.c3` (`dropTarget`) while its
/// copy held change events. The rename waited for the copy; the copy finished between the
/// lane's release of finished ranges and its check of the waiting rename, so the rename was
/// applied first and the held inserts of the *old* collection then landed in the new one.
/// Every range's held events are now applied before any DDL event. The pause points make the
/// interleaving exact: the copy pauses with the range open, the lane pauses with the rename
/// deferred (just after a release), the copy then finishes, and the lane goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_events_are_applied_before_a_rename_replaces_their_collection() {
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let s = src.root_client().await;
    let d = dst.root_client().await;
    seed_big(&s, "bulk", "c1", 3_000).await;
    let (dir, plan) = write_plan(&plan_text("rename", AUTO));
    let plan = plan.to_str().unwrap().to_string();
    let mut env = root_env(&src, &dst);
    env.push((
        "CUTOVER_TEST_PAUSE_AT",
        "copy.reading@1,apply.deferred@1".into(),
    ));
    env.push(("CUTOVER_TEST_PAUSE_DIR", dir.path().display().to_string()));
    let mut child = spawn_cutover(&["run", plan.as_str()], &env_refs(&env));
    wait_pause_file(&dir.path().join("copy.reading.reached"), &mut child).await;

    // Held by the open range: inserts into the collection being copied.
    let c1 = s.database("bulk").collection::<Document>("c1");
    c1.insert_many((0..5).map(|i| doc! {"_id": 500_000 + i, "k": 1, "v": "held"}))
        .await
        .unwrap();
    // A new collection replaces it: the rename waits for c1's copy.
    s.database("bulk")
        .collection::<Document>("t")
        .insert_many(vec![doc! {"_id": 1, "v": "t1"}, doc! {"_id": 2, "v": "t2"}])
        .await
        .unwrap();
    rename(&s, "bulk.t", "bulk.c1", true).await;
    wait_pause_file(&dir.path().join("apply.deferred.reached"), &mut child).await;

    // The copy of c1 finishes (every range done, indexes built) while the lane waits.
    std::fs::write(dir.path().join("copy.reading.go"), b"").unwrap();
    let parts = d.database(STATE_DB).collection::<Document>("partitions");
    let start = std::time::Instant::now();
    loop {
        let marker = parts
            .find_one(doc! {"_id": "rename/forward/bulk.c1/planned"})
            .await
            .unwrap();
        let open = parts
            .count_documents(doc! {"ns": "bulk.c1", "done": false})
            .await
            .unwrap();
        if open == 0 && marker.is_some_and(|m| m.get_bool("indexed").unwrap_or(false)) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the copy of bulk.c1 did not finish"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The collection is marked ready just after its marker is written.
    tokio::time::sleep(Duration::from_millis(500)).await;
    std::fs::write(dir.path().join("apply.deferred.go"), b"").unwrap();

    let out = finish_child(child).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_same(&s, &d).await;
    let n = d
        .database("bulk")
        .collection::<Document>("c1")
        .count_documents(doc! {})
        .await
        .unwrap();
    assert_eq!(
        n, 2,
        "the destination's bulk.c1 must hold bulk.t's two documents only"
    );
}
