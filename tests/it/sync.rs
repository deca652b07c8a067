//! `cutover run`: copy, replicate, commit — on real replica sets, with the real binary.

use crate::common::*;
use mongodb::bson::{doc, Bson, Document};

const FORWARD: &str = r#"
[options]
write_blocking = "source-and-destination"
max_lag = "2s"

[[steps]]
kind = "sync"

[[steps]]
kind = "commit"
timeout = "2m"
"#;

async fn seed(c: &mongodb::Client) {
    let orders = c.database("shop").collection::<Document>("orders");
    let docs: Vec<Document> = (0..5000)
        .map(|i| doc! {"_id": i, "item": format!("item-{i}"), "qty": i % 7, "tags": ["a", "b"], "nested": {"x": i, "y": [1, 2, {"z": i}]}})
        .collect();
    orders.insert_many(docs).await.unwrap();
    let mixed = c.database("shop").collection::<Document>("mixed");
    mixed
        .insert_many(vec![
            doc! {"_id": 1, "t": "int"},
            doc! {"_id": 2.5, "t": "double"},
            doc! {"_id": "s", "t": "string"},
            doc! {"_id": mongodb::bson::oid::ObjectId::new(), "t": "oid"},
            doc! {"_id": {"a": 1, "b": 2}, "t": "doc"},
            doc! {"_id": Bson::Int64(i64::MAX), "t": "int64"},
        ])
        .await
        .unwrap();
    c.database("crm")
        .collection::<Document>("users")
        .insert_one(doc! {"_id": "u1", "name": "Ada"})
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_then_commit_copies_and_replicates_exactly() {
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let s = src.root_client().await;
    let d = dst.root_client().await;
    seed(&s).await;
    let (_dir, plan) = write_plan(&plan_text("sync-commit", FORWARD));
    let plan = plan.to_str().unwrap().to_string();
    let env = [
        ("SOURCE_URI", src.root_uri()),
        ("DESTINATION_URI", dst.root_uri()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();

    // Step 1 only: the sync reaches can-commit.
    let o = run_cutover(&["run", &plan, "--max-steps", "1"], &env);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));

    // Writes while cutover is stopped are picked up from the stored resume token.
    let orders = s.database("shop").collection::<Document>("orders");
    orders
        .update_one(
            doc! {"_id": 1},
            doc! {"$set": {"qty": 100}, "$unset": {"tags": ""}},
        )
        .await
        .unwrap();
    orders
        .update_one(doc! {"_id": 2}, doc! {"$push": {"tags": "c"}})
        .await
        .unwrap();
    orders
        .update_one(
            doc! {"_id": 3},
            vec![doc! {"$set": {"tags": {"$slice": ["$tags", 1]}}}],
        )
        .await
        .unwrap();
    orders.delete_one(doc! {"_id": 4}).await.unwrap();
    orders
        .replace_one(doc! {"_id": 5}, doc! {"z": 1, "a": 2})
        .await
        .unwrap();
    orders
        .insert_one(doc! {"_id": 99999, "new": true})
        .await
        .unwrap();

    let o = run_cutover(&["run", &plan], &env);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("write-blocked window"),
        "{}",
        show(&o)
    );
    assert_same_data(&s, &d, "__cutover").await;

    // After the commit the destination is writable for the app user; the source is blocked.
    let app_d = dst.app_client().await;
    app_d
        .database("shop")
        .collection::<Document>("orders")
        .insert_one(doc! {"_id": -1})
        .await
        .expect("destination writable");
    let app_s = src.app_client().await;
    let e = app_s
        .database("shop")
        .collection::<Document>("orders")
        .insert_one(doc! {"_id": -1})
        .await;
    assert!(
        e.is_err(),
        "the source must stay write-blocked after a source-and-destination commit"
    );

    // status tells the truth: COMMITTED, can_write, the source blocked with the release command.
    let o = run_cutover(&["status", &plan, "--format", "json"], &env);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["state"], "COMMITTED", "{v}");
    assert_eq!(v["can_write"], true);
    assert_eq!(v["blocked"][0]["cluster"], "source", "{v}");
    assert!(v["write_blocked_window_ms"].as_i64().unwrap() >= 0);
    assert!(!String::from_utf8_lossy(&o.stdout).contains(ROOT_PASSWORD));

    // `--restart` would drop the data the application now uses: refused after a commit.
    let o = run_cutover(&["run", &plan, "--restart"], &env);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("refused"),
        "{}",
        show(&o)
    );
    let kept = d
        .database("shop")
        .collection::<Document>("orders")
        .find_one(doc! {"_id": -1})
        .await
        .unwrap();
    assert!(
        kept.is_some(),
        "the refused restart must not touch the destination"
    );
}

const WITH_VERIFY: &str = r#"
[options]
write_blocking = "source-and-destination"
max_lag = "2s"

[[steps]]
kind = "sync"

[[steps]]
kind = "verify"

[[steps]]
kind = "commit"

[[steps]]
kind = "verify"
"#;

/// `verify` as a step: before the commit (replication running, indexes relaxed on purpose)
/// and after it; then a difference injected into the destination makes `cutover verify` fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_steps_before_and_after_commit() {
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let s = src.root_client().await;
    seed(&s).await;
    s.database("shop")
        .run_command(doc! {"createIndexes": "orders", "indexes": [
            {"key": {"item": 1}, "name": "item_1", "unique": true},
            {"key": {"when": 1}, "name": "when_ttl", "expireAfterSeconds": 3600},
        ]})
        .await
        .unwrap();
    let (_dir, plan) = write_plan(&plan_text("with-verify", WITH_VERIFY));
    let plan = plan.to_str().unwrap().to_string();
    let env = [
        ("SOURCE_URI", src.root_uri()),
        ("DESTINATION_URI", dst.root_uri()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let o = run_cutover(&["run", &plan], &env);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(out.matches("verified:").count(), 2, "{}", show(&o));

    let d = dst.root_client().await;
    d.database("shop")
        .collection::<Document>("orders")
        .delete_one(doc! {"_id": 7})
        .await
        .unwrap();
    let o = run_cutover(&["verify", &plan, "--format", "json"], &env);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], false);
    let text = v.to_string();
    assert!(text.contains("missing"), "{text}");
}

/// `write_blocking = "destination-only"`: cutover never blocks the source (the operator stops
/// the application); the commit drains until the source is quiet, then opens the destination.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_only_commit_leaves_the_source_writable() {
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let s = src.root_client().await;
    seed(&s).await;
    let body = FORWARD.replace("source-and-destination", "destination-only");
    let (_dir, plan) = write_plan(&plan_text("dest-only", &body));
    let plan = plan.to_str().unwrap().to_string();
    let env = [
        ("SOURCE_URI", src.root_uri()),
        ("DESTINATION_URI", dst.root_uri()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let o = run_cutover(&["run", &plan], &env);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_same_data(&s, &dst.root_client().await, "__cutover").await;
    let app = src.app_client().await;
    app.database("shop")
        .collection::<Document>("orders")
        .insert_one(doc! {"_id": "after"})
        .await
        .expect("source never blocked");
    let app = dst.app_client().await;
    app.database("shop")
        .collection::<Document>("orders")
        .insert_one(doc! {"_id": "after"})
        .await
        .expect("destination writable");
}

/// A `verify` step while an application keeps writing to the source (replication running):
/// ranges that differ only because replication had not caught up are re-checked once the
/// lane has applied past their read time, so churn produces no false mismatch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_during_churn_reports_nothing_false() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let s = src.root_client().await;
    seed(&s).await;
    let stop = Arc::new(AtomicBool::new(false));
    let app = src.app_client().await;
    let writer = tokio::spawn({
        let stop = stop.clone();
        async move {
            let orders = app.database("shop").collection::<Document>("orders");
            let mut n = 0i64;
            while !stop.load(Ordering::Relaxed) {
                let _ = orders
                    .update_one(doc! {"_id": n % 5000}, doc! {"$inc": {"qty": 1}})
                    .await;
                let _ = orders.insert_one(doc! {"_id": format!("churn-{n}")}).await;
                n += 1;
            }
            n
        }
    });
    let (_dir, plan) = write_plan(&plan_text("verify-churn", WITH_VERIFY));
    let plan = plan.to_str().unwrap().to_string();
    let env = vec![
        ("SOURCE_URI", src.root_uri()),
        ("DESTINATION_URI", dst.root_uri()),
    ];
    let o = tokio::task::spawn_blocking({
        let (plan, env) = (plan.clone(), env.clone());
        move || {
            let e: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            run_cutover(&["run", &plan], &e)
        }
    })
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    let writes = writer.await.unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        writes > 50,
        "the application wrote only {writes} times during the run"
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout)
            .matches("verified:")
            .count(),
        2,
        "{}",
        show(&o)
    );
}
