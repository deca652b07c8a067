//! Breadth (issue 24): 2,000 collections in 20 databases, some capped, some with validators,
//! unique and TTL indexes, and views; an application writes to a random subset throughout and
//! DDL changes a few during the copy; `cutover run` is killed with kill -9 twice during the
//! copy and resumed by the same command. After the commit both clusters are byte-identical,
//! with the same catalog, and every acknowledged write is on the destination.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use mongodb::bson::{doc, Bson, Document};
use mongodb::Client;
use rand::{Rng, SeedableRng};

use crate::common::*;

const STATE_DB: &str = "__cutover";
const COLLECTIONS: usize = 2_000;
const PER_DB: usize = 100;
const DOCS: i64 = 20;

fn ns_of(i: usize) -> (String, String) {
    (format!("w{:02}", i / PER_DB), format!("c{i:04}"))
}

fn capped(i: usize) -> bool {
    i % 97 == 5
}

/// One collection: its options, indexes and documents.
async fn seed_one(c: &Client, i: usize) {
    let (db, coll) = ns_of(i);
    let d = c.database(&db);
    let mut create = doc! {"create": &coll};
    if capped(i) {
        create.extend(doc! {"capped": true, "size": 1_048_576, "max": 500});
    } else if i % 41 == 3 {
        create
            .extend(doc! {"validator": {"k": {"$type": "number"}}, "validationLevel": "moderate"});
    }
    d.run_command(create).await.expect("create");
    let mut indexes = vec![doc! {"key": {"k": 1}, "name": "k_1"}];
    if i % 29 == 1 {
        indexes.push(doc! {"key": {"u": 1}, "name": "u_1", "unique": true});
    }
    if i % 23 == 2 && !capped(i) {
        indexes.push(doc! {"key": {"exp": 1}, "name": "exp_ttl", "expireAfterSeconds": 3_600_000});
    }
    d.run_command(doc! {"createIndexes": &coll, "indexes": indexes})
        .await
        .expect("createIndexes");
    let docs: Vec<Document> = (0..DOCS)
        .map(|j| {
            doc! {"_id": j, "k": j * 7 % 13, "u": format!("{i}-{j}"), "s": "x".repeat(40),
            "exp": mongodb::bson::DateTime::from_millis(4_000_000_000_000)}
        })
        .collect();
    d.collection::<Document>(&coll)
        .insert_many(docs)
        .await
        .expect("insert");
    if i % 200 == 7 {
        d.run_command(doc! {"create": format!("v{i:04}"), "viewOn": &coll,
        "pipeline": [{"$match": {"k": {"$gte": 3}}}]})
            .await
            .expect("create view");
    }
}

/// What the application wrote and was acknowledged: `(db, coll, _id)`.
type Acked = Arc<Mutex<BTreeSet<(String, String, i64)>>>;

/// Inserts and updates on random collections (capped ones excluded: their documents may be
/// evicted) until `stop`; returns the acknowledged inserts.
fn start_app(app: Client, stop: Arc<AtomicBool>, acked: Acked) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut rng = rand::rngs::StdRng::seed_from_u64(24);
        let mut next = 1_000_000i64;
        while !stop.load(Ordering::Relaxed) {
            let i = rng.random_range(0..COLLECTIONS);
            if capped(i) || i % 500 == 11 {
                continue; // capped, or renamed/dropped by the DDL below
            }
            let (db, coll) = ns_of(i);
            let col = app.database(&db).collection::<Document>(&coll);
            if rng.random_bool(0.6) {
                next += 1;
                let r = col
                    .insert_one(doc! {"_id": next, "k": 1, "u": format!("app-{next}"), "s": "app"})
                    .await;
                if r.is_ok() {
                    acked.lock().unwrap().insert((db, coll, next));
                }
            } else {
                let _ = col
                    .update_one(
                        doc! {"_id": rng.random_range(0..DOCS)},
                        doc! {"$inc": {"k": 1}, "$set": {"s": "updated"}},
                    )
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
}

/// Waits until at least `n` of the copy's ranges are done, then kills the runner with -9.
async fn kill_after(mut child: std::process::Child, d: &Client, n: u64) {
    let parts = d.database(STATE_DB).collection::<Document>("partitions");
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("cutover exited ({st}) before {n} ranges were copied");
        }
        let done = parts
            .count_documents(doc! {"ns": {"$exists": true}, "done": true})
            .await
            .unwrap_or(0);
        if done >= n {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "only {done} ranges copied after 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_thousand_collections_with_writes_ddl_and_two_kills() {
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let s = src.root_client().await;
    let d = dst.root_client().await;
    let seeding = Instant::now();
    stream::iter(0..COLLECTIONS)
        .map(|i| seed_one(&s, i))
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    eprintln!(
        "seeded {COLLECTIONS} collections in {:.1}s",
        seeding.elapsed().as_secs_f64()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let acked: Acked = Arc::default();
    let app = start_app(src.app_client().await, stop.clone(), acked.clone());

    let (_dir, plan) = write_plan(&plan_text(
        "breadth",
        r#"
[options]
write_blocking = "source-and-destination"

[[steps]]
kind = "sync"

[[steps]]
kind = "commit"
approval = "manual"
timeout = "10m"
"#,
    ));
    let plan = plan.to_str().unwrap().to_string();
    let env = root_env(&src, &dst);
    let started = Instant::now();
    // Killed twice during the copy, each time resumed by the same command.
    kill_after(spawn_cutover(&["run", &plan], &env_refs(&env)), &d, 300).await;
    // DDL on a few collections while the copy is under way.
    for i in (0..COLLECTIONS).filter(|i| i % 500 == 11) {
        let (db, coll) = ns_of(i);
        if i % 1000 == 11 {
            s.database("admin")
                .run_command(doc! {"renameCollection": format!("{db}.{coll}"),
                "to": format!("{db}.{coll}_renamed")})
                .await
                .expect("rename");
        } else {
            s.database(&db)
                .collection::<Document>(&coll)
                .drop()
                .await
                .expect("drop");
        }
    }
    let (db, coll) = ns_of(1234);
    s.database(&db)
        .run_command(
            doc! {"createIndexes": &coll, "indexes": [{"key": {"s": 1, "k": -1}, "name": "s_k"}]},
        )
        .await
        .expect("createIndexes");
    s.database("w05")
        .collection::<Document>("new_during_copy")
        .insert_many((0..50).map(|j| doc! {"_id": j, "k": j}))
        .await
        .expect("new collection");
    kill_after(spawn_cutover(&["run", &plan], &env_refs(&env)), &d, 1_200).await;
    let mut child = spawn_cutover(&["run", &plan], &env_refs(&env));
    wait_status(
        &plan,
        &env,
        &[],
        Duration::from_secs(600),
        "can-commit after two kills",
        |v| v["can_commit"].as_bool() == Some(true),
    )
    .await;
    eprintln!(
        "can-commit {:.1}s after the first start",
        started.elapsed().as_secs_f64()
    );
    // The application writes a little longer, then the commit blocks it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    app.await.unwrap();
    let o = run_cutover(&["approve", &plan], &env_refs(&env));
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "commit did not finish"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = finish_child(child).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let report: serde_json::Value = serde_json::from_slice(
        &run_cutover(&["status", &plan, "--format", "json"], &env_refs(&env)).stdout,
    )
    .unwrap_or_default();
    eprintln!(
        "write-blocked window {} ms: {}",
        report["write_blocked_window_ms"], report["write_blocked_window_phases"]
    );
    assert!(
        report["write_blocked_window_phases"]
            .as_array()
            .is_some_and(|p| p.iter().any(|x| x["phase"] == "document counts")),
        "status must split the window into its phases: {report}"
    );

    assert_same_data(&s, &d, STATE_DB).await;
    assert_same_catalog(&s, &d, STATE_DB).await;
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 50,
        "the application wrote too little: {}",
        acked.len()
    );
    let mut missing = Vec::new();
    for (db, coll, id) in &acked {
        let found = d
            .database(db)
            .collection::<Document>(coll)
            .find_one(doc! {"_id": Bson::Int64(*id)})
            .await
            .unwrap();
        if found.is_none() {
            missing.push(format!("{db}.{coll} {id}"));
        }
    }
    assert!(
        missing.is_empty(),
        "acknowledged writes missing: {missing:?}"
    );
}
