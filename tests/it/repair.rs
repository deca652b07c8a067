//! `cutover verify --repair` against real replica sets: differences injected on the
//! destination (missing, extra, changed value, field order, a missing index) are repaired with
//! the runner live while an application keeps writing to the source (the live lane does the
//! rewrites), and with no runner (verify rewrites directly, and the resumed sync converges
//! over the repair); repair refuses to run after the commit (exit 4) and `status` shows the
//! last repair.

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

[[steps]]
kind = "sync"

[[steps]]
kind = "commit"
approval = "manual"
timeout = "10m"
"#;

async fn seed(c: &Client) {
    let orders = c.database("shop").collection::<Document>("orders");
    let docs: Vec<Document> = (0..2000i64)
        .map(|i| doc! {"_id": i, "a": format!("item-{i}"), "b": i * 2, "qty": 0i64, "nested": {"k": i, "v": [1, 2, 3]}})
        .collect();
    orders.insert_many(docs).await.unwrap();
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
}

/// An application writing to the source: `$set`s (each of a new field) and `$inc`s on orders
/// 0..200 (the injected differences are among them, so their events race the repair),
/// inserts and deletes.
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
            let mut n = 0i64;
            while !st.load(Ordering::Relaxed) {
                n += 1;
                let ok = orders
                    .update_one(
                        doc! {"_id": n % 200},
                        // A new field per event: an event the repair undid would be
                        // missing for good, not healed by the next `$set`.
                        doc! {"$set": {"seq": n, format!("f{n}"): n}, "$inc": {"qty": 1i64}},
                    )
                    .await
                    .is_ok();
                let _ = orders
                    .insert_one(doc! {"_id": format!("churn-{n}"), "n": n})
                    .await;
                if n % 5 == 0 {
                    let _ = orders
                        .delete_one(doc! {"_id": format!("churn-{}", n - 3)})
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

/// Injects one of each difference into `shop.orders` on the destination: `_id`s 7 and 1007
/// missing, `ghost` extra, 9 and 1009 with a changed value, 11 and 1011 with their fields
/// reordered, index `qty_1` missing. 7, 9 and 11 are churned by [`Churn`].
async fn corrupt(dst: &Client) {
    let orders = dst.database("shop").collection::<Document>("orders");
    for id in [7i64, 1007] {
        let r = orders.delete_one(doc! {"_id": id}).await.unwrap();
        assert_eq!(r.deleted_count, 1, "inject: delete {id}");
    }
    orders
        .insert_one(doc! {"_id": "ghost", "a": "only on the destination"})
        .await
        .unwrap();
    for id in [9i64, 1009] {
        orders
            .update_one(doc! {"_id": id}, doc! {"$set": {"a": "corrupted"}})
            .await
            .unwrap();
    }
    for id in [11i64, 1011] {
        let d = orders.find_one(doc! {"_id": id}).await.unwrap().unwrap();
        let mut reordered = Document::new();
        reordered.insert("_id", id);
        let fields: Vec<_> = d.iter().filter(|(k, _)| *k != "_id").collect();
        for (k, v) in fields.into_iter().rev() {
            reordered.insert(k, v.clone());
        }
        orders
            .replace_one(doc! {"_id": id}, reordered)
            .await
            .unwrap();
    }
    dst.database("shop")
        .run_command(doc! {"dropIndexes": "orders", "index": "qty_1"})
        .await
        .unwrap();
}

fn json(o: &std::process::Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("invalid JSON ({e}): {}", show(o)))
}

fn ns_counts<'a>(report: &'a Value, ns: &str) -> &'a Value {
    report["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["ns"] == ns)
        .unwrap_or_else(|| panic!("no repair counts for {ns}: {report:#}"))
}

async fn run_blocking(args: Vec<String>, env: Vec<(&'static str, String)>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        run_cutover(&a, &env_refs(&env))
    })
    .await
    .unwrap()
}

/// Waits until `shop.orders` is byte-identical on both sides (replication caught up).
async fn wait_same_orders(src: &Client, dst: &Client) {
    let start = Instant::now();
    loop {
        let (a, b) = (
            raw_docs(src, "shop", "orders").await,
            raw_docs(dst, "shop", "orders").await,
        );
        if a == b {
            return;
        }
        if start.elapsed() > Duration::from_secs(60) {
            panic!(
                "shop.orders still differs after 60s: {} vs {} documents; only on the source: {:?}; only on the destination: {:?}",
                a.len(),
                b.len(),
                ids_only_in(&a, &b),
                ids_only_in(&b, &a)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_with_the_runner_live_under_churn() {
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let s = src.root_client().await;
    seed(&s).await;
    let (_dir, plan) = write_plan(&plan_text("repair-live", PLAN));
    let plan = plan.to_str().unwrap().to_string();
    let env = root_env(&src, &dst);
    let mut runner = spawn_cutover(&["run", &plan], &env_refs(&env));
    wait_status(
        &plan,
        &env,
        &[],
        Duration::from_secs(120),
        "can-commit",
        |v| v["can_commit"] == true,
    )
    .await;
    let churn = Churn::start(src.app_client().await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let d = dst.root_client().await;
    corrupt(&d).await;

    let o = run_blocking(
        vec![
            "verify".into(),
            plan.clone(),
            "--repair".into(),
            "--format".into(),
            "json".into(),
            "--recheck-delay".into(),
            "100ms".into(),
            "--rechecks".into(),
            "3".into(),
        ],
        env.clone(),
    )
    .await;
    let report = json(&o);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(report["mode"], "lane", "{report:#}");
    let orders = ns_counts(&report, "shop.orders");
    assert!(
        orders["documents_written"].as_u64().unwrap() >= 6,
        "7, 1007, 9, 1009, 11, 1011 rewritten: {orders:#}"
    );
    assert!(
        orders["documents_deleted"].as_u64().unwrap() >= 1,
        "ghost deleted: {orders:#}"
    );
    assert_eq!(orders["indexes_built"], 1, "{orders:#}");
    assert_eq!(report["final_verify"]["ok"], true, "{report:#}");

    // The lane served every request, at its own position.
    let reqs: Vec<Document> = d
        .database("__cutover")
        .collection::<Document>("repair_requests")
        .find(doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert!(!reqs.is_empty());
    for r in &reqs {
        assert_eq!(r.get_str("state"), Ok("done"), "{r}");
        assert_eq!(r.get_str("served_by"), Ok("lane"), "{r}");
        assert!(r.get_timestamp("position").is_ok(), "{r}");
    }

    // Keep writing a while after the repair: every later event applies over the repair.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes = churn.finish().await;
    assert!(writes > 50, "the application wrote only {writes} times");
    wait_same_orders(&s, &d).await;
    let idx: Vec<Document> = d
        .database("shop")
        .run_cursor_command(doc! {"listIndexes": "orders"})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert!(
        idx.iter()
            .any(|i| i.get_document("key").ok() == Some(&doc! {"qty": 1})),
        "qty_1 rebuilt: {idx:?}"
    );

    let o = run_blocking(
        vec![
            "verify".into(),
            plan.clone(),
            "--recheck-delay".into(),
            "100ms".into(),
        ],
        env.clone(),
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));

    let st = status_json(&plan, &env, &[]).await;
    assert_eq!(st["last_repair"]["mode"], "lane", "{st:#}");
    assert!(
        st["last_repair"]["documents_written"].as_i64().unwrap() >= 6,
        "{st:#}"
    );
    let _ = runner.kill();
    let _ = runner.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_without_a_runner_then_the_sync_resumes_and_commits() {
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let s = src.root_client().await;
    seed(&s).await;
    let (_dir, plan) = write_plan(&plan_text("repair-direct", PLAN));
    let plan = plan.to_str().unwrap().to_string();
    let env = root_env(&src, &dst);
    let o = run_blocking(
        vec!["run".into(), plan.clone(), "--max-steps".into(), "1".into()],
        env.clone(),
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));

    let d = dst.root_client().await;
    corrupt(&d).await;
    // Written while nothing replicates: found missing or different, repaired directly; the
    // resumed sync replays these events over the repair later.
    let orders = s.database("shop").collection::<Document>("orders");
    orders
        .update_one(doc! {"_id": 9i64}, doc! {"$set": {"late": true}})
        .await
        .unwrap();
    orders
        .insert_one(doc! {"_id": "late-insert", "x": 1})
        .await
        .unwrap();

    let o = run_blocking(
        vec![
            "verify".into(),
            plan.clone(),
            "--repair".into(),
            "--format".into(),
            "json".into(),
        ],
        env.clone(),
    )
    .await;
    let report = json(&o);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(report["mode"], "direct", "{report:#}");
    let counts = ns_counts(&report, "shop.orders");
    assert_eq!(counts["documents_written"], 7, "{counts:#}");
    assert_eq!(counts["documents_deleted"], 1, "{counts:#}");
    assert_eq!(counts["indexes_built"], 1, "{counts:#}");
    wait_same_orders(&s, &d).await;

    // Text output counts per namespace too.
    let o = run_blocking(
        vec!["verify".into(), plan.clone(), "--repair".into()],
        env.clone(),
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("nothing to repair"), "{}", show(&o));

    // An index only on the destination is reported and kept (exit 1: the final pass still
    // finds it), and dropped with `--repair-indexes drop`.
    d.database("shop")
        .run_command(
            doc! {"createIndexes": "users", "indexes": [{"key": {"name": 1}, "name": "junk"}]},
        )
        .await
        .unwrap();
    let o = run_blocking(
        vec![
            "verify".into(),
            plan.clone(),
            "--repair".into(),
            "--repair-rounds".into(),
            "1".into(),
        ],
        env.clone(),
    )
    .await;
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("not repaired: index `junk` exists only on the destination"),
        "{}",
        show(&o)
    );
    let o = run_blocking(
        vec![
            "verify".into(),
            plan.clone(),
            "--repair".into(),
            "--repair-indexes".into(),
            "drop".into(),
            "--format".into(),
            "json".into(),
        ],
        env.clone(),
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(
        ns_counts(&json(&o), "shop.users")["indexes_dropped"],
        1,
        "{}",
        show(&o)
    );

    // More writes, then the sync resumes, and commits: the replay over repaired documents
    // converges to the source exactly.
    orders
        .update_one(doc! {"_id": 1007i64}, doc! {"$set": {"after": 1}})
        .await
        .unwrap();
    let o = run_blocking(vec!["approve".into(), plan.clone()], env.clone()).await;
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let o = run_blocking(vec!["run".into(), plan.clone()], env.clone()).await;
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_same_data(&s, &d, "__cutover").await;

    // After the commit the destination is the writable side: refused, exit 4, nothing written.
    let before = last_oplog_ts(&d).await;
    let o = run_blocking(
        vec!["verify".into(), plan.clone(), "--repair".into()],
        env.clone(),
    )
    .await;
    assert_eq!(o.status.code(), Some(4), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("refused"),
        "{}",
        show(&o)
    );
    let writes = oplog_writes_since(&d, before, "__cutover").await;
    assert!(writes.is_empty(), "refused repair wrote: {writes:?}");

    let st = status_json(&plan, &env, &[]).await;
    assert_eq!(st["last_repair"]["mode"], "direct", "{st:#}");
}
