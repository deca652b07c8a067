//! `cutover verify` against real replica sets: a clean copy passes, each injected difference
//! is detected and named, mixed `_id` types are covered, and a killed verify resumes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use futures::TryStreamExt;
use mongodb::bson::{
    doc, oid::ObjectId, spec::BinarySubtype, Binary, Bson, DateTime, Document, RawDocumentBuf,
};
use mongodb::Client;
use serde_json::Value;

/// Copies every user namespace of `src` to `dst` the naive way (the test has no sync engine):
/// collections with their options, raw documents, secondary indexes, then views.
async fn copy_all(src: &Client, dst: &Client) {
    for db in src.list_database_names().await.unwrap() {
        if matches!(db.as_str(), "admin" | "local" | "config") {
            continue;
        }
        let specs: Vec<Document> = src
            .database(&db)
            .run_cursor_command(doc! {"listCollections": 1})
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        let (views, colls): (Vec<_>, Vec<_>) = specs
            .into_iter()
            .partition(|s| s.get_str("type").unwrap_or_default() == "view");
        for spec in colls.iter().chain(views.iter()) {
            let name = spec.get_str("name").unwrap();
            if name.starts_with("system.") {
                continue;
            }
            let mut create = doc! {"create": name};
            for (k, v) in spec.get_document("options").unwrap() {
                create.insert(k, v.clone());
            }
            dst.database(&db).run_command(create).await.unwrap();
            if spec.get_str("type").unwrap_or_default() == "view" {
                continue;
            }
            let from = src.database(&db).collection::<RawDocumentBuf>(name);
            let to = dst.database(&db).collection::<RawDocumentBuf>(name);
            let mut cursor = from.find(doc! {}).await.unwrap();
            let mut batch = Vec::new();
            while let Some(d) = cursor.try_next().await.unwrap() {
                batch.push(d);
                if batch.len() == 5000 {
                    to.insert_many(std::mem::take(&mut batch)).await.unwrap();
                }
            }
            if !batch.is_empty() {
                to.insert_many(batch).await.unwrap();
            }
            let indexes: Vec<Document> = src
                .database(&db)
                .run_cursor_command(doc! {"listIndexes": name})
                .await
                .unwrap()
                .try_collect()
                .await
                .unwrap();
            let secondary: Vec<Document> = indexes
                .into_iter()
                .filter(|i| i.get_str("name").unwrap() != "_id_")
                .collect();
            if !secondary.is_empty() {
                dst.database(&db)
                    .run_command(doc! {"createIndexes": name, "indexes": secondary})
                    .await
                    .unwrap();
            }
        }
    }
}

/// `_id`s of every BSON type an application is likely to use, in no particular order.
fn mixed_ids(n: usize) -> Vec<Bson> {
    let mut ids = Vec::new();
    for i in 0..n {
        let id = match i % 8 {
            0 => Bson::Int32(i as i32),
            1 => Bson::Double(i as f64 + 0.5),
            2 => Bson::Int64(1_000_000 + i as i64),
            3 => Bson::String(format!("key-{i:05}")),
            4 => Bson::ObjectId(ObjectId::from_bytes({
                let mut b = [7u8; 12];
                b[8..12].copy_from_slice(&(i as u32).to_be_bytes());
                b
            })),
            5 => Bson::Document(doc! {"tenant": (i % 3) as i32, "n": i as i32}),
            6 => Bson::Binary(Binary {
                subtype: BinarySubtype::Generic,
                bytes: (i as u32).to_be_bytes().to_vec(),
            }),
            _ => Bson::DateTime(DateTime::from_millis(1_600_000_000_000 + i as i64)),
        };
        ids.push(id);
    }
    ids
}

/// One-of-a-kind `_id`s and the rarer types, to append to [`mixed_ids`].
fn special_ids() -> Vec<Bson> {
    let mut ids = vec![
        Bson::Null,
        Bson::MinKey,
        Bson::MaxKey,
        Bson::Boolean(true),
        Bson::Boolean(false),
    ];
    for j in 0..10u32 {
        ids.push(Bson::Decimal128(format!("{j}.25").parse().unwrap()));
        ids.push(Bson::Timestamp(mongodb::bson::Timestamp {
            time: 1000 + j,
            increment: j,
        }));
        ids.push(Bson::Symbol(format!("sym-{j}")));
    }
    ids.push(Bson::Decimal128("-Infinity".parse().unwrap()));
    ids.push(Bson::Double(-1e300));
    ids.push(Bson::Int64(i64::MAX));
    ids
}

fn verify_plan(name: &str) -> String {
    plan_text(name, "[[steps]]\nkind = \"sync\"\n\n[[steps]]\nkind = \"commit\"\n\n[[steps]]\nkind = \"verify\"\nmax_differences = 50\n")
}

fn run_verify(
    src: &ReplicaSet,
    dst: &ReplicaSet,
    plan: &std::path::Path,
    extra: &[&str],
) -> (i32, String, String) {
    let mut args = vec![
        "verify",
        plan.to_str().unwrap(),
        "--recheck-delay",
        "100ms",
        "--rechecks",
        "1",
    ];
    args.extend_from_slice(extra);
    let out = run_cutover(
        &args,
        &[
            ("SOURCE_URI", &src.root_uri()),
            ("DESTINATION_URI", &dst.root_uri()),
        ],
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json_report(stdout: &str) -> Value {
    serde_json::from_str(stdout)
        .unwrap_or_else(|e| panic!("verify printed invalid JSON ({e}):\n{stdout}"))
}

fn namespace<'a>(report: &'a Value, ns: &str) -> &'a Value {
    report["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["ns"] == ns)
        .unwrap_or_else(|| panic!("no namespace {ns} in {report:#}"))
}

fn mismatch_kinds(n: &Value) -> BTreeMap<String, String> {
    n["mismatches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["_id"].to_string(),
                m["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

async fn seed_source(c: &Client) {
    let shop = c.database("shop");
    let orders = shop.collection::<Document>("orders");
    let docs: Vec<Document> = mixed_ids(400)
        .into_iter()
        .chain(special_ids())
        .enumerate()
        .map(|(i, id)| doc! {"_id": id, "n": i as i32, "name": format!("order {i}"), "tags": ["a", "b"]})
        .collect();
    orders.insert_many(docs).await.unwrap();
    orders
        .create_index(mongodb::IndexModel::builder().keys(doc! {"n": 1}).build())
        .await
        .unwrap();
    shop.run_command(doc! {"create": "users", "validator": {"$jsonSchema": {"required": ["email"]}}, "validationLevel": "moderate"})
        .await
        .unwrap();
    let users = shop.collection::<Document>("users");
    users
        .insert_many(
            (0..50).map(|i| doc! {"_id": i, "email": format!("u{i}@example.com"), "age": i}),
        )
        .await
        .unwrap();
    users
        .create_index(
            mongodb::IndexModel::builder()
                .keys(doc! {"email": 1})
                .options(
                    mongodb::options::IndexOptions::builder()
                        .unique(true)
                        .build(),
                )
                .build(),
        )
        .await
        .unwrap();
    users
        .create_index(
            mongodb::IndexModel::builder()
                .keys(doc! {"age": -1})
                .build(),
        )
        .await
        .unwrap();
    shop.run_command(doc! {"create": "sessions"}).await.unwrap();
    let sessions = shop.collection::<Document>("sessions");
    sessions
        .insert_many((0..30).map(|i| doc! {"_id": i, "at": DateTime::from_millis(i)}))
        .await
        .unwrap();
    sessions
        .create_index(
            mongodb::IndexModel::builder()
                .keys(doc! {"at": 1})
                .options(
                    mongodb::options::IndexOptions::builder()
                        .expire_after(Duration::from_secs(3600))
                        .build(),
                )
                .build(),
        )
        .await
        .unwrap();
    shop.run_command(doc! {"create": "big_orders", "viewOn": "orders", "pipeline": [{"$match": {"n": {"$gt": 100}}}]})
        .await
        .unwrap();
    shop.run_command(doc! {"create": "recent", "viewOn": "orders", "pipeline": [{"$limit": 5}]})
        .await
        .unwrap(); // Collections without a plain `_id` index scan: clustered (6.0+) and capped.
    shop.run_command(
        doc! {"create": "clustered", "clusteredIndex": {"key": {"_id": 1}, "unique": true}},
    )
    .await
    .unwrap();
    shop.collection::<Document>("clustered")
        .insert_many(mixed_ids(64).into_iter().map(|id| doc! {"_id": id, "c": 1}))
        .await
        .unwrap();
    shop.run_command(doc! {"create": "log", "capped": true, "size": 1_000_000})
        .await
        .unwrap();
    shop.collection::<Document>("log")
        .insert_many((0..40).map(|i| doc! {"_id": i, "line": i}))
        .await
        .unwrap();
}

#[tokio::test]
async fn clean_copy_passes_and_every_injected_difference_is_named() {
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let (s, d) = (src.root_client().await, dst.root_client().await);
    seed_source(&s).await;
    copy_all(&s, &d).await;
    let (_dir, plan) = write_plan(&verify_plan("verify-clean"));

    // A clean copy: exit 0 and `ok: true`, with many ranges over the mixed `_id` types.
    let (code, stdout, stderr) = run_verify(
        &src,
        &dst,
        &plan,
        &["--format", "json", "--range-docs", "25"],
    );
    assert_eq!(
        code, 0,
        "clean copy must verify; stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let report = json_report(&stdout);
    assert_eq!(report["ok"], true);
    assert_eq!(
        report["documents_compared"].as_u64().unwrap(),
        400 + special_ids().len() as u64 + 50 + 30 + 64 + 40
    );
    let orders = namespace(&report, "shop.orders");
    assert_eq!(orders["status"], "ok");
    let total = 400 + special_ids().len();
    assert_eq!(orders["source_count"], total);
    assert_eq!(orders["destination_count"], total);
    assert!(
        orders["ranges"].as_u64().unwrap() >= 8,
        "expected several ranges: {orders:#}"
    );
    assert_eq!(namespace(&report, "shop.clustered")["status"], "ok");
    assert_eq!(namespace(&report, "shop.clustered")["source_count"], 64);
    assert_eq!(namespace(&report, "shop.log")["source_count"], 40);
    assert_eq!(namespace(&report, "shop.big_orders")["type"], "view");
    assert_eq!(namespace(&report, "shop.big_orders")["status"], "ok");

    // The drill-down merge must agree with the server's `_id` order for every type: merge the
    // whole collection (it fails on any out-of-order pair) and find nothing.
    let whole = cutover::verify::ranges::Range {
        index: 0,
        batch_docs: 64,
        lower: None,
        upper: None,
    };
    let ns = cutover::base::namespace::Namespace::new("shop", "orders");
    let diff = cutover::verify::scan::diff_range(&s, &d, &ns, &whole, true, true, 10)
        .await
        .expect("ordered merge");
    assert_eq!(diff.total(), 0, "{diff:?}");

    // Inject each kind of difference straight into the destination.
    let dshop = d.database("shop");
    let dorders = dshop.collection::<Document>("orders");
    let ids = mixed_ids(400);
    // A missing document (binary `_id`), an extra one (document `_id`), a changed value
    // (date `_id`), a changed field order (same fields and values, ObjectId `_id`).
    dorders
        .delete_one(doc! {"_id": ids[6].clone()})
        .await
        .unwrap();
    dorders
        .insert_one(doc! {"_id": {"tenant": 99, "n": -1}, "n": -1})
        .await
        .unwrap();
    dorders
        .update_one(
            doc! {"_id": ids[7].clone()},
            doc! {"$set": {"name": "changed"}},
        )
        .await
        .unwrap();
    dorders
        .replace_one(
            doc! {"_id": ids[4].clone()},
            doc! {"_id": ids[4].clone(), "name": "order 4", "n": 4, "tags": ["a", "b"]},
        )
        .await
        .unwrap();
    // A number of the same value but another type is a different document too.
    dorders
        .replace_one(
            doc! {"_id": ids[0].clone()},
            doc! {"_id": 0i64, "n": 0, "name": "order 0", "tags": ["a", "b"]},
        )
        .await
        .unwrap();
    let dclustered = dshop.collection::<Document>("clustered");
    dclustered
        .delete_one(doc! {"_id": mixed_ids(64)[3].clone()})
        .await
        .unwrap();
    // A changed index option (TTL) and a missing index.
    dshop
        .run_command(doc! {"collMod": "sessions", "index": {"keyPattern": {"at": 1}, "expireAfterSeconds": 60}})
        .await
        .unwrap();
    dshop
        .collection::<Document>("users")
        .drop_index("age_-1")
        .await
        .unwrap();
    // A different validator.
    dshop
        .run_command(doc! {"collMod": "users", "validator": {"$jsonSchema": {"required": ["email", "name"]}}})
        .await
        .unwrap();
    // A collection only on the destination.
    dshop
        .collection::<Document>("stray")
        .insert_one(doc! {"_id": 1})
        .await
        .unwrap();
    // A missing view, and a view with another pipeline.
    dshop
        .collection::<Document>("big_orders")
        .drop()
        .await
        .unwrap();
    dshop.collection::<Document>("recent").drop().await.unwrap();
    dshop
        .run_command(doc! {"create": "recent", "viewOn": "orders", "pipeline": [{"$limit": 6}]})
        .await
        .unwrap();

    let (code, stdout, stderr) = run_verify(
        &src,
        &dst,
        &plan,
        &["--format", "json", "--range-docs", "25"],
    );
    assert_eq!(
        code, 1,
        "a mismatch exits 1; stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let report = json_report(&stdout);
    assert_eq!(report["ok"], false);

    let orders = namespace(&report, "shop.orders");
    assert_eq!(orders["status"], "mismatch");
    assert_eq!(orders["source_count"], total);
    assert_eq!(orders["destination_count"], total);
    let kinds = mismatch_kinds(orders);
    let key = |b: &Bson| b.clone().into_relaxed_extjson().to_string();
    assert_eq!(
        kinds.get(&key(&ids[6])).map(String::as_str),
        Some("missing"),
        "{orders:#}"
    );
    assert_eq!(
        kinds
            .get(&key(&Bson::Document(doc! {"tenant": 99, "n": -1})))
            .map(String::as_str),
        Some("extra"),
        "{orders:#}"
    );
    assert_eq!(
        kinds.get(&key(&ids[7])).map(String::as_str),
        Some("different"),
        "{orders:#}"
    );
    assert_eq!(
        kinds.get(&key(&ids[4])).map(String::as_str),
        Some("different"),
        "field order: {orders:#}"
    );
    assert_eq!(
        kinds.get(&key(&ids[0])).map(String::as_str),
        Some("different"),
        "int vs long: {orders:#}"
    );
    assert_eq!(kinds.len(), 5, "nothing else differs: {orders:#}");
    assert_eq!(
        orders["mismatch_totals"],
        serde_json::json!({"missing": 1, "extra": 1, "different": 3})
    );
    assert_eq!(orders["mismatches_truncated"], false);

    let clustered = namespace(&report, "shop.clustered");
    assert_eq!(
        mismatch_kinds(clustered)
            .get("\"key-00003\"")
            .map(String::as_str),
        Some("missing"),
        "{clustered:#}"
    );
    assert_eq!(namespace(&report, "shop.log")["status"], "ok");

    let sessions = namespace(&report, "shop.sessions");
    assert_eq!(sessions["status"], "mismatch");
    let idx = sessions["index_differences"].as_array().unwrap();
    assert_eq!(idx.len(), 1, "{sessions:#}");
    assert_eq!(idx[0]["name"], "at_1");
    assert_eq!(idx[0]["kind"], "different");
    assert_eq!(idx[0]["source"]["expireAfterSeconds"], 3600);
    assert_eq!(idx[0]["destination"]["expireAfterSeconds"], 60);

    let users = namespace(&report, "shop.users");
    assert_eq!(users["status"], "mismatch");
    let idx = users["index_differences"].as_array().unwrap();
    assert!(
        idx.iter()
            .any(|i| i["name"] == "age_-1" && i["kind"] == "missing"),
        "{users:#}"
    );
    let opts = users["option_differences"].as_array().unwrap();
    assert!(
        opts.iter()
            .any(|o| o["name"] == "validator" && o["kind"] == "different"),
        "{users:#}"
    );
    assert_eq!(
        users["mismatch_totals"],
        serde_json::json!({"missing": 0, "extra": 0, "different": 0})
    );

    assert_eq!(namespace(&report, "shop.big_orders")["status"], "missing");
    let stray = namespace(&report, "shop.stray");
    assert_eq!(stray["status"], "extra");
    assert_eq!(stray["destination_count"], 1);
    assert_eq!(stray["mismatch_totals"]["extra"], 1);
    let recent = namespace(&report, "shop.recent");
    assert_eq!(recent["status"], "mismatch");
    assert!(
        recent["view_differences"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "pipeline"),
        "{recent:#}"
    );

    // A bounded report: one difference listed, totals still exact.
    let (code, stdout, _) = run_verify(
        &src,
        &dst,
        &plan,
        &["--format", "json", "--max-differences", "1"],
    );
    assert_eq!(code, 1);
    let report = json_report(&stdout);
    let orders = namespace(&report, "shop.orders");
    assert_eq!(orders["mismatches"].as_array().unwrap().len(), 1);
    assert_eq!(orders["mismatches_truncated"], true);
    assert_eq!(orders["mismatch_totals"]["different"], 3);

    // Text output names the differences too.
    let (code, text, _) = run_verify(&src, &dst, &plan, &[]);
    assert_eq!(code, 1);
    assert!(text.contains("MISMATCH"), "{text}");
    assert!(text.contains("index `age_-1` missing"), "{text}");
    assert!(text.contains("option `validator` different"), "{text}");
    assert!(!text.contains(crate::common::ROOT_PASSWORD));
}

#[tokio::test]
async fn killed_verify_resumes_from_finished_ranges() {
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let (s, d) = (src.root_client().await, dst.root_client().await);
    let coll = s.database("bulk").collection::<Document>("items");
    let pad = "x".repeat(200);
    for chunk in 0..20 {
        let docs: Vec<Document> = (0..5000)
            .map(|i| doc! {"_id": chunk * 5000 + i, "pad": &pad})
            .collect();
        coll.insert_many(docs).await.unwrap();
    }
    copy_all(&s, &d).await;
    // One difference near the start and one at the end of the `_id` order.
    let dcoll = d.database("bulk").collection::<Document>("items");
    dcoll.delete_one(doc! {"_id": 3}).await.unwrap();
    dcoll
        .update_one(doc! {"_id": 99_990}, doc! {"$set": {"pad": "changed"}})
        .await
        .unwrap();

    let (_dir, plan) = write_plan(&verify_plan("verify-resume"));
    let mut child = std::process::Command::new(cutover_bin())
        .args([
            "verify",
            plan.to_str().unwrap(),
            "--range-docs",
            "500",
            "--concurrency",
            "1",
            "--rechecks",
            "0",
        ])
        .env("SOURCE_URI", src.root_uri())
        .env("DESTINATION_URI", dst.root_uri())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ranges = d
        .database("__cutover")
        .collection::<Document>("verify_ranges");
    wait_until(
        Duration::from_secs(120),
        "verify to finish 20 ranges",
        || async { ranges.count_documents(doc! {}).await.unwrap_or(0) >= 20 },
    )
    .await;
    child.kill().unwrap();
    let _ = child.wait();
    let done_before = ranges.count_documents(doc! {}).await.unwrap();
    let range0_before = ranges
        .find_one(doc! {"_id.range": 0i64})
        .await
        .unwrap()
        .expect("range 0 finished before the kill");
    let partitions = d
        .database("__cutover")
        .collection::<Document>("verify_partitions");
    let bounds = partitions.find_one(doc! {}).await.unwrap().unwrap();
    let total_ranges = bounds.get_array("bounds").unwrap().len() as u64 + 1;
    assert!(
        done_before < total_ranges,
        "verify finished ({done_before} of {total_ranges}) before it was killed"
    );

    let (code, stdout, stderr) = run_verify(
        &src,
        &dst,
        &plan,
        &["--format", "json", "--range-docs", "500"],
    );
    assert_eq!(code, 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let report = json_report(&stdout);
    assert_eq!(report["resumed"], true);
    assert_eq!(report["run"], 1);
    let items = namespace(&report, "bulk.items");
    assert_eq!(items["ranges"].as_u64().unwrap(), total_ranges);
    let resumed = items["ranges_resumed"].as_u64().unwrap();
    assert!(
        resumed >= 20 && resumed >= done_before,
        "resumed {resumed}, finished before {done_before}"
    );
    assert_eq!(items["source_count"], 100_000);
    assert_eq!(items["destination_count"], 99_999);
    let kinds = mismatch_kinds(items);
    assert_eq!(
        kinds.get("3").map(String::as_str),
        Some("missing"),
        "{items:#}"
    );
    assert_eq!(
        kinds.get("99990").map(String::as_str),
        Some("different"),
        "{items:#}"
    );
    assert_eq!(kinds.len(), 2);
    // Finished ranges were skipped, not read again: their records are untouched.
    let range0_after = ranges
        .find_one(doc! {"_id.range": 0i64})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(range0_before, range0_after);

    // The finished run is not resumed again; `--restart` is not needed for a fresh run, and
    // with it an interrupted run is abandoned.
    let (code, stdout, _) = run_verify(
        &src,
        &dst,
        &plan,
        &["--format", "json", "--range-docs", "500", "--restart"],
    );
    assert_eq!(code, 1);
    let report = json_report(&stdout);
    assert_eq!(report["resumed"], false);
    assert_eq!(report["run"], 2);
    assert_eq!(namespace(&report, "bulk.items")["ranges_resumed"], 0);
}

/// A replication stand-in: the first wait applies the pending source write to the destination.
struct ApplyOnWait {
    dest: Client,
    calls: AtomicU32,
    read_at: std::sync::Mutex<Option<mongodb::bson::Timestamp>>,
}

impl cutover::verify::ReplicationWait for ApplyOnWait {
    fn wait_replicated(
        &self,
        read_at: mongodb::bson::Timestamp,
    ) -> futures::future::BoxFuture<'_, ()> {
        *self.read_at.lock().unwrap() = Some(read_at);
        Box::pin(async move {
            if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
                self.dest
                    .database("app")
                    .collection::<Document>("events")
                    .insert_one(doc! {"_id": "late", "v": 1})
                    .await
                    .unwrap();
            }
        })
    }
}

#[tokio::test]
async fn lagging_range_is_rechecked_after_replication_not_reported() {
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let (s, d) = (src.root_client().await, dst.root_client().await);
    let events = s.database("app").collection::<Document>("events");
    events
        .insert_many((0..100).map(|i| doc! {"_id": i, "v": i}))
        .await
        .unwrap();
    copy_all(&s, &d).await;
    // A write the "replication" has not applied yet.
    events
        .insert_one(doc! {"_id": "late", "v": 1})
        .await
        .unwrap();
    let written_at = last_oplog_ts(&s).await;

    let text = format!(
        "name = \"lag\"\n[clusters.source]\nuri = \"{}\"\n[clusters.destination]\nuri = \"{}\"\n[[steps]]\nkind = \"sync\"\n[[steps]]\nkind = \"commit\"\n[[steps]]\nkind = \"verify\"\n",
        src.root_uri(),
        dst.root_uri()
    );
    let overrides = cutover::plan::Overrides {
        sets: Vec::new(),
        env: BTreeMap::new(),
    };
    let (plan, _) = cutover::plan::load_plan_str("lag.toml", &text, &overrides).expect("plan");
    let wait = Arc::new(ApplyOnWait {
        dest: d.clone(),
        calls: AtomicU32::new(0),
        read_at: std::sync::Mutex::new(None),
    });
    let opts = cutover::verify::VerifyOptions {
        replication: wait.clone(),
        rechecks: 2,
        ..Default::default()
    };
    let report = cutover::verify::run(&s, &d, &plan, &opts)
        .await
        .expect("verify runs");
    assert!(report.ok, "{}", report.to_text());
    let ns = report
        .namespaces
        .iter()
        .find(|n| n.ns == "app.events")
        .unwrap();
    assert_eq!(ns.rechecks, 1);
    assert_eq!(ns.source_count, 101);
    assert_eq!(wait.calls.load(Ordering::SeqCst), 1);
    // The hook is asked about a source time at or after the unreplicated write.
    let read_at = wait.read_at.lock().unwrap().expect("read_at");
    assert!(
        read_at.increment > 0,
        "read_at must be a cluster time, not a wall-clock fallback"
    );
    assert!(
        (read_at.time, read_at.increment) >= (written_at.time, written_at.increment),
        "read_at {read_at:?} is before the write at {written_at:?}"
    );

    // With no rechecks the same lag would have been reported: prove the hook mattered.
    events
        .insert_one(doc! {"_id": "later", "v": 2})
        .await
        .unwrap();
    let opts = cutover::verify::VerifyOptions {
        rechecks: 0,
        ..Default::default()
    };
    let report = cutover::verify::run(&s, &d, &plan, &opts)
        .await
        .expect("verify runs");
    assert!(!report.ok);
    let ns = report
        .namespaces
        .iter()
        .find(|n| n.ns == "app.events")
        .unwrap();
    assert_eq!(ns.mismatches.len(), 1);
    assert_eq!(ns.mismatches[0].kind, "missing");
    assert_eq!(ns.mismatches[0].id, Value::String("later".into()));
}

#[test]
fn unreachable_cluster_exits_3_and_invalid_plan_exits_2() {
    let (_dir, plan) = write_plan(&verify_plan("verify-unreachable"));
    let closed = |port: u16| format!("mongodb://127.0.0.1:{port}/?serverSelectionTimeoutMS=500");
    // Two distinct ports nobody listens on (both bound at once, then released).
    let (a, b) = (
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
    );
    let (pa, pb) = (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    );
    drop((a, b));
    let out = run_cutover(
        &[
            "verify",
            plan.to_str().unwrap(),
            "--connect-timeout",
            "1s",
            "--format",
            "json",
        ],
        &[
            ("SOURCE_URI", &closed(pa)),
            ("DESTINATION_URI", &closed(pb)),
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert!(v["error"].as_str().unwrap().contains("unreachable"), "{v}");

    let (_dir, bad) = write_plan("name = \"x\"\nsteps = 3\n");
    let out = run_cutover(&["verify", bad.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn collated_string_ids_are_compared_by_hash_join() {
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let (s, d) = (src.root_client().await, dst.root_client().await);
    // Under `en` strength 2 the index orders "a" < "B" < "c"; simple BSON order is "B" < "a".
    s.database("intl")
        .run_command(doc! {"create": "words", "collation": {"locale": "en", "strength": 2}})
        .await
        .unwrap();
    let words = s.database("intl").collection::<Document>("words");
    let ids = ["a", "B", "c", "D", "e", "F", "g", "H", "i", "J"];
    words
        .insert_many(ids.iter().map(|w| doc! {"_id": *w, "len": w.len() as i32}))
        .await
        .unwrap();
    copy_all(&s, &d).await;
    let dwords = d.database("intl").collection::<Document>("words");
    dwords.delete_one(doc! {"_id": "D"}).await.unwrap();
    dwords
        .update_one(doc! {"_id": "g"}, doc! {"$set": {"len": 9}})
        .await
        .unwrap();
    dwords
        .insert_one(doc! {"_id": "zz", "len": 2})
        .await
        .unwrap();

    let (_dir, plan) = write_plan(&verify_plan("verify-collated"));
    let (code, stdout, stderr) = run_verify(&src, &dst, &plan, &["--format", "json"]);
    assert_eq!(code, 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let report = json_report(&stdout);
    let w = namespace(&report, "intl.words");
    let kinds = mismatch_kinds(w);
    assert_eq!(
        kinds.get("\"D\"").map(String::as_str),
        Some("missing"),
        "{w:#}"
    );
    assert_eq!(
        kinds.get("\"g\"").map(String::as_str),
        Some("different"),
        "{w:#}"
    );
    assert_eq!(
        kinds.get("\"zz\"").map(String::as_str),
        Some("extra"),
        "{w:#}"
    );
    assert_eq!(kinds.len(), 3, "{w:#}");
}
