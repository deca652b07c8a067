//! Fidelity (issue 3): after `sync` + `commit` the destination equals the source byte for byte
//! per document — every BSON type, field order, hostile field names, 16 MB documents, mixed
//! `_id` types across many copy ranges — with identical options and index specs for every
//! collection kind; and again when a writer churns the source during the copy.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{
    doc, oid::ObjectId, Binary, Bson, DateTime, Decimal128, Document, JavaScriptCodeWithScope,
    Regex, Timestamp,
};
use mongodb::Client;
use rand::{Rng, SeedableRng};

const STATE_DB: &str = "__cutover";

const SYNC_COMMIT: &str = r#"
[[steps]]
kind = "sync"

[[steps]]
kind = "commit"
timeout = "2m"
"#;

async fn run(c: &Client, db: &str, cmd: Document) -> Document {
    c.database(db)
        .run_command(cmd.clone())
        .await
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

fn dec(bytes: [u8; 16]) -> Bson {
    Bson::Decimal128(Decimal128::from_bytes(bytes))
}

fn nested(levels: usize) -> Bson {
    let mut v = Bson::String("bottom".into());
    for i in 0..levels {
        v = if i % 2 == 0 {
            Bson::Document(doc! {"n": v, "i": i as i32})
        } else {
            Bson::Array(vec![v, Bson::Int32(i as i32)])
        };
    }
    v
}

/// One document per BSON value kind the server stores, with field order that is not sorted.
fn every_type_docs() -> Vec<Document> {
    let uuid = Binary {
        subtype: BinarySubtype::Uuid,
        bytes: (0u8..16).collect(),
    };
    let generic = Binary {
        subtype: BinarySubtype::Generic,
        bytes: vec![0, 255, 1, 254],
    };
    let old_uuid = Binary {
        subtype: BinarySubtype::UuidOld,
        bytes: (16u8..32).collect(),
    };
    let md5 = Binary {
        subtype: BinarySubtype::Md5,
        bytes: vec![7; 16],
    };
    let user = Binary {
        subtype: BinarySubtype::UserDefined(0x80),
        bytes: vec![1, 2, 3],
    };
    vec![
        doc! {"_id": 1, "z": 1, "a": 2, "m": 3},
        doc! {"_id": 2, "nan": f64::NAN, "negzero": -0.0f64, "inf": f64::INFINITY, "ninf": f64::NEG_INFINITY,
        "tiny": f64::MIN_POSITIVE, "big": f64::MAX, "pi": std::f64::consts::PI},
        doc! {"_id": 3, "d1": dec([1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x40, 0x30]),
        "dnan": dec([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x7c]),
        "dinf": dec([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x78]),
        "dneg": dec([5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x3c, 0xb0])},
        doc! {"_id": 4, "i64max": i64::MAX, "i64min": i64::MIN, "i32max": i32::MAX, "i32min": i32::MIN,
        "zero64": 0i64, "zero32": 0i32},
        doc! {"_id": 5, "uuid": uuid, "generic": generic, "old": old_uuid, "md5": md5, "user": user,
        "empty_bin": Binary { subtype: BinarySubtype::Generic, bytes: vec![] }},
        doc! {"_id": 6, "epoch": DateTime::from_millis(0), "neg": DateTime::from_millis(-2_208_988_800_000),
        "far": DateTime::from_millis(253_402_300_799_999), "now": DateTime::from_millis(1_764_000_000_123)},
        doc! {"_id": 7, "ts": Timestamp { time: 1_700_000_000, increment: 7 }, "ts0": Timestamp { time: 1, increment: 1 }},
        doc! {"_id": 8, "re": Regex { pattern: "^a.*b$".into(), options: "imsx".into() },
        "re2": Regex { pattern: "x\\d+".into(), options: "".into() }},
        doc! {"_id": 9, "code": Bson::JavaScriptCode("function() { return 1; }".into())},
        doc! {"_id": 10, "min": Bson::MinKey, "max": Bson::MaxKey, "null": Bson::Null},
        doc! {"_id": 11, "ref": {"$ref": "other", "$id": ObjectId::parse_str("5f0000000000000000000001").unwrap(), "$db": "shop"},
        "oid": ObjectId::parse_str("65a1b2c3d4e5f60718293a4b").unwrap()},
        doc! {"_id": 12, "arr": [[1, [2, [3, []]]], {"a": [{}]}, [], {}], "e": {}, "ea": []},
        doc! {"_id": 13, "deep": nested(100)},
        doc! {"_id": 14, "large": (0..100_000).map(Bson::Int32).collect::<Vec<_>>()},
        doc! {"_id": 15, "a.b": 1, "x": {"c.d": {"e.f": 2}}, "emoji ☃": "ü", "": "empty name"},
        doc! {"_id": 16, "nested": {"$inner": 1, "$x": {"$y": 2}}},
        doc! {"_id": 17, "str": "", "long": "x".repeat(100_000), "bool": true, "f": false},
    ]
}

/// Values the server may or may not accept (it decides; we keep what it stored).
fn optional_docs() -> Vec<(&'static str, Document)> {
    vec![
        (
            "code with scope",
            doc! {"_id": 100, "cws": JavaScriptCodeWithScope { code: "function() { return x; }".into(), scope: doc! {"x": 1} }},
        ),
        ("undefined", doc! {"_id": 101, "u": Bson::Undefined}),
        (
            "top-level $ field",
            doc! {"_id": 102, "$price": 5, "plain": 1},
        ),
        (
            "symbol",
            doc! {"_id": 103, "sym": Bson::Symbol("sym".into())},
        ),
    ]
}

async fn seed_types(c: &Client) -> Vec<&'static str> {
    let coll = c.database("fid").collection::<Document>("types");
    coll.insert_many(every_type_docs()).await.unwrap();
    let mut accepted = Vec::new();
    for (what, d) in optional_docs() {
        if coll.insert_one(d).await.is_ok() {
            accepted.push(what);
        }
    }
    // A document near the 16 MB limit.
    let big = vec![7u8; 16 * 1024 * 1024 - 200];
    coll.insert_one(
        doc! {"_id": 200, "blob": Binary { subtype: BinarySubtype::Generic, bytes: big }},
    )
    .await
    .unwrap();
    accepted
}

/// Thousands of documents whose `_id`s mix every orderable type, so that the many copy ranges
/// (`--docs-per-range 50`) have boundaries of different types.
async fn seed_mixed_ids(c: &Client) {
    let coll = c.database("fid").collection::<Document>("mixed");
    let mut docs = Vec::new();
    for i in 0..600i64 {
        docs.push(doc! {"_id": i as i32, "t": "int"});
        docs.push(doc! {"_id": Bson::Int64(1_000_000 + i), "t": "long"});
        docs.push(doc! {"_id": i as f64 + 0.5, "t": "double"});
        docs.push(doc! {"_id": format!("s{i:05}"), "t": "string"});
        docs.push(doc! {"_id": ObjectId::new(), "t": "oid"});
        docs.push(doc! {"_id": {"k": i, "j": "x"}, "t": "doc"});
        docs.push(doc! {"_id": Binary { subtype: BinarySubtype::Generic, bytes: i.to_be_bytes().to_vec() }, "t": "bin"});
        docs.push(doc! {"_id": DateTime::from_millis(i * 1000 - 300_000), "t": "date"});
    }
    docs.push(doc! {"_id": Bson::Null, "t": "null"});
    docs.push(doc! {"_id": Bson::MinKey, "t": "minkey"});
    docs.push(doc! {"_id": Bson::MaxKey, "t": "maxkey"});
    docs.push(doc! {"_id": true, "t": "bool"});
    docs.push(doc! {"_id": Timestamp { time: 5, increment: 1 }, "t": "ts"});
    docs.push(doc! {"_id": Decimal128::from_bytes([0x45, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x3c, 0x30]), "t": "decimal"});
    docs.push(doc! {"_id": Bson::Double(-0.25), "t": "negdouble"});
    coll.insert_many(docs).await.unwrap();
}

/// One collection of every kind, with every index kind.
async fn seed_kinds(c: &Client) {
    run(
        c,
        "kinds",
        doc! {"create": "capped", "capped": true, "size": 65536, "max": 200},
    )
    .await;
    // More documents than `max`: the source evicted the oldest; natural order must match.
    let capped = c.database("kinds").collection::<Document>("capped");
    for i in 0..300 {
        capped
            .insert_one(doc! {"_id": 1000 - i, "i": i})
            .await
            .unwrap();
    }
    run(
        c,
        "kinds",
        doc! {"create": "validated", "validator": {"$jsonSchema": {"required": ["a"]}},
        "validationLevel": "moderate", "validationAction": "error"},
    )
    .await;
    c.database("kinds")
        .collection::<Document>("validated")
        .insert_one(doc! {"_id": 1, "a": 1})
        .await
        .unwrap();
    // Several copy batches: their order must survive (a capped collection's natural order is
    // insertion order).
    run(
        c,
        "kinds",
        doc! {"create": "bigcapped", "capped": true, "size": 64 * 1024 * 1024},
    )
    .await;
    let big: Vec<Document> = (0..12_000)
        .map(|i| doc! {"_id": (i * 7919) % 12_000, "pad": "c".repeat(100)})
        .collect();
    c.database("kinds")
        .collection::<Document>("bigcapped")
        .insert_many(big)
        .await
        .unwrap();
    run(
        c,
        "kinds",
        doc! {"create": "french", "collation": {"locale": "fr", "strength": 2}},
    )
    .await;
    c.database("kinds")
        .collection::<Document>("french")
        .insert_many(vec![
            doc! {"_id": "côte", "v": 1},
            doc! {"_id": "Cote", "v": 2},
        ])
        .await
        .unwrap();
    run(
        c,
        "kinds",
        doc! {"create": "weather",
        "timeseries": {"timeField": "ts", "metaField": "meta", "granularity": "minutes"},
        "expireAfterSeconds": 86400 * 365 * 50},
    )
    .await;
    let w: Vec<Document> = (0..500)
        .map(|i| doc! {"ts": DateTime::from_millis(1_700_000_000_000 + i * 60_000), "meta": {"station": i % 5}, "temp": i as f64 / 3.0})
        .collect();
    c.database("kinds")
        .collection::<Document>("weather")
        .insert_many(w)
        .await
        .unwrap();
    run(c, "kinds", doc! {"create": "clustered", "clusteredIndex": {"key": {"_id": 1}, "unique": true, "name": "by_id"}})
    .await;
    c.database("kinds")
        .collection::<Document>("clustered")
        .insert_many(
            (0..300)
                .map(|i| doc! {"_id": 300 - i, "v": i})
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap();
    run(
        c,
        "kinds",
        doc! {"create": "images", "changeStreamPreAndPostImages": {"enabled": true}},
    )
    .await;
    c.database("kinds")
        .collection::<Document>("images")
        .insert_one(doc! {"_id": 1})
        .await
        .unwrap();
    run(c, "kinds", doc! {"create": "indexed"}).await;
    let idx = c.database("kinds").collection::<Document>("indexed");
    idx.insert_many((0..500).map(|i| doc! {"_id": i, "u": i, "p": i % 3, "s": if i % 2 == 0 { Bson::Int32(i) } else { Bson::Null },
        "at": DateTime::from_millis(1_700_000_000_000), "txt": format!("word{i} common"), "loc": {"type": "Point", "coordinates": [i as f64 / 10.0, 1.0]},
        "h": i, "w": {"a": i, "b": {"c": i}}, "name": format!("N{i}")}).collect::<Vec<_>>())
        .await
        .unwrap();
    run(c, "kinds", doc! {"createIndexes": "indexed", "indexes": [
        {"key": {"u": 1}, "name": "u_unique", "unique": true},
        {"key": {"p": 1, "u": -1}, "name": "partial", "partialFilterExpression": {"p": {"$gt": 0}}},
        {"key": {"s": 1}, "name": "sparse", "sparse": true},
        {"key": {"at": 1}, "name": "ttl", "expireAfterSeconds": 86400 * 365 * 50},
        {"key": {"txt": "text"}, "name": "text", "weights": {"txt": 5}, "default_language": "spanish", "language_override": "idioma"},
        {"key": {"loc": "2dsphere"}, "name": "geo", "2dsphereIndexVersion": 3},
        {"key": {"h": "hashed"}, "name": "hashed"},
        {"key": {"$**": 1}, "name": "wild", "wildcardProjection": {"w.a": 1}},
        {"key": {"name": 1}, "name": "coll", "collation": {"locale": "de", "strength": 1}},
        {"key": {"p": -1}, "name": "hidden", "hidden": true},
    ]})
    .await;
    run(
        c,
        "kinds",
        doc! {"create": "bigp", "viewOn": "indexed",
        "pipeline": [{"$match": {"p": {"$gt": 1}}}, {"$project": {"u": 1}}]},
    )
    .await;
    run(
        c,
        "kinds",
        doc! {"create": "view_coll", "viewOn": "french", "pipeline": [],
        "collation": {"locale": "fr", "strength": 2}},
    )
    .await;
    run(c, "kinds", doc! {"create": "empty"}).await;
    let only_ids = c.database("kinds").collection::<Document>("only_ids");
    only_ids
        .insert_many((0..100).map(|i| doc! {"_id": i}).collect::<Vec<_>>())
        .await
        .unwrap();
    // Hostile namespace names.
    c.database("dbé_ü")
        .collection::<Document>("with space.and dot ünï")
        .insert_one(doc! {"_id": 1, "x": "y"})
        .await
        .unwrap();
}

/// Natural-order documents of a collection, as raw bytes.
async fn natural(c: &Client, db: &str, coll: &str) -> Vec<Vec<u8>> {
    use futures::TryStreamExt;
    let cur = c
        .database(db)
        .collection::<mongodb::bson::RawDocumentBuf>(coll)
        .find(doc! {})
        .sort(doc! {"$natural": 1})
        .await
        .unwrap();
    let v: Vec<mongodb::bson::RawDocumentBuf> = cur.try_collect().await.unwrap();
    v.into_iter().map(|d| d.into_bytes()).collect()
}

async fn assert_same_natural(s: &Client, d: &Client, db: &str, coll: &str) {
    let (a, b) = (natural(s, db, coll).await, natural(d, db, coll).await);
    let id = |x: &Vec<u8>| {
        mongodb::bson::RawDocument::from_bytes(x)
            .ok()
            .and_then(|r| r.get("_id").ok().flatten())
            .and_then(|v| Bson::try_from(v).ok())
    };
    if let Some(i) = (0..a.len().min(b.len())).find(|&i| a[i] != b[i]) {
        panic!(
            "natural order of {db}.{coll} differs at #{i}: source _id {:?}, destination _id {:?}",
            id(&a[i]),
            id(&b[i])
        );
    }
    assert_eq!(a.len(), b.len(), "{db}.{coll}: document counts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_every_kind_many_ranges_identical() {
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let s = src.root_client().await;
    let d = dst.root_client().await;
    let accepted = seed_types(&s).await;
    eprintln!("optional values the server accepted: {accepted:?}");
    assert!(
        accepted.contains(&"code with scope"),
        "6.0.5 stores code-with-scope"
    );
    seed_mixed_ids(&s).await;
    seed_kinds(&s).await;

    let (_dir, plan) = write_plan(&plan_text("fidelity", SYNC_COMMIT));
    let plan = plan.to_str().unwrap().to_string();
    let env = root_env(&src, &dst);
    let o = run_cutover(
        &[
            "run",
            &plan,
            "--docs-per-range",
            "50",
            "--copy-concurrency",
            "3",
        ],
        &env_refs(&env),
    );
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));

    // The mixed-`_id` collection really was split into many ranges.
    let ranges = d
        .database(STATE_DB)
        .collection::<Document>("partitions")
        .count_documents(doc! {"ns": "fid.mixed"})
        .await
        .unwrap();
    assert!(
        ranges >= 40,
        "expected many ranges for fid.mixed, got {ranges}"
    );

    assert_same_data(&s, &d, STATE_DB).await;
    assert_same_catalog(&s, &d, STATE_DB).await;
    // Capped and clustered collections keep natural order.
    for coll in ["capped", "bigcapped", "clustered", "system.buckets.weather"] {
        assert_same_natural(&s, &d, "kinds", coll).await;
    }
    // The time-series view shows the same measurements.
    assert_same_natural(&s, &d, "kinds", "weather").await;
}

static RENAMES: AtomicU64 = AtomicU64::new(0);

/// A writer that churns the source: every kind of document change plus renames, drops and
/// index builds, until `stop` is set. Returns how many operations it made.
async fn churn(c: Client, seed: u64, stop: Arc<AtomicBool>, ops: Arc<AtomicU64>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let db = c.database("churn");
    let main = db.collection::<Document>("main");
    let mut next_id = 1_000_000i64;
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let id = rng.random_range(0..20_000i64);
        if i == 50 || i == 250 {
            // Every BSON type and hostile shape through the change stream (inserted during the
            // copy, then replaced and updated).
            let types = db.collection::<Document>("types");
            let mut docs = every_type_docs();
            docs.extend(optional_docs().into_iter().map(|(_, d)| d));
            for mut d in docs {
                let id = format!(
                    "ev-{}",
                    d.get("_id").map(|v| v.to_string()).unwrap_or_default()
                );
                d.insert("_id", id.clone());
                if i == 50 {
                    // The server may refuse some optional values; it decides.
                    let _ = types.insert_one(d).await;
                } else {
                    let _ = types.replace_one(doc! {"_id": &id}, d).await;
                    let _ = types
                        .update_one(doc! {"_id": &id}, doc! {"$set": {"deep2": nested(90), "when": Timestamp { time: 9, increment: 9 }}, "$unset": {"z": ""}})
                        .await;
                }
            }
            ops.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if i == 100 || i == 150 {
            // Large documents through the change stream: a near-16 MB insert (the event would
            // exceed the BSON limit: the applier fetches the document) and an 8 MB update.
            let blob = mongodb::bson::Binary {
                subtype: mongodb::bson::spec::BinarySubtype::Generic,
                bytes: vec![i as u8; 16 * 1024 * 1024 - 400],
            };
            // The test source has a 256 MB cache: under load it may refuse a 16 MB write
            // (TransactionTooLargeForCache, 388); that is the source's business, try again.
            let mut tries = 0;
            loop {
                let r = if i == 100 {
                    main.insert_one(doc! {"_id": "huge-insert", "blob": blob.clone()})
                        .await
                        .map(|_| ())
                } else {
                    // 8 MB: a 16 MB update (old and new document plus oplog entry in one
                    // transaction) does not fit the test source's small cache.
                    let half = mongodb::bson::Binary {
                        subtype: mongodb::bson::spec::BinarySubtype::Generic,
                        bytes: vec![i as u8; 8 * 1024 * 1024],
                    };
                    main.update_one(doc! {"_id": id}, doc! {"$set": {"blob": half}})
                        .await
                        .map(|_| ())
                };
                tries += 1;
                match r {
                    Ok(()) => break,
                    Err(_) if tries < 10 => {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    Err(e) => panic!("large write on the source: {e}"),
                }
            }
            ops.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let op = rng.random_range(0..12);
        let r = match op {
            9 => {
                // Hostile shapes through the change stream: `$` and dotted field names (a
                // replacement with a top-level `$` field, a pipeline update of one), capped and
                // time-series inserts.
                let k = i % 4;
                let alt = db.client().database("kinds");
                match k {
                    0 => main
                        .replace_one(doc! {"_id": id}, doc! {"$price": i as i64, "a.b": {"$c": 1}, "x": []})
                        .await
                        .map(|_| ()),
                    1 => main
                        .update_one(
                            doc! {"_id": id},
                            vec![doc! {"$replaceWith": {"$setField": {"field": {"$literal": "$cost"}, "input": "$$ROOT", "value": i as i64}}}],
                        )
                        .await
                        .map(|_| ()),
                    2 => alt
                        .collection::<Document>("capped")
                        .insert_many((0..5).map(|j| doc! {"_id": 10_000 + (i * 10 + j) as i64, "i": i as i64}).collect::<Vec<_>>())
                        .await
                        .map(|_| ()),
                    _ => alt
                        .collection::<Document>("weather")
                        .insert_one(doc! {"ts": DateTime::from_millis(1_700_000_000_000 + i as i64 * 1000), "meta": {"station": (i % 5) as i32}, "temp": 1.5})
                        .await
                        .map(|_| ()),
                }
            }
            10 => main
                .update_one(
                    doc! {"_id": id},
                    doc! {"$set": {"arr.1": i as i64, "deep.a.b": "x"}, "$pop": {"none": 1}},
                )
                .await
                .map(|_| ()),
            11 if i.is_multiple_of(50) => {
                // Near 16 MB: the event would exceed the limit; the applier fetches it.
                next_id += 1;
                main.insert_one(doc! {"_id": next_id, "blob": mongodb::bson::Binary {
                    subtype: mongodb::bson::spec::BinarySubtype::Generic, bytes: vec![1u8; 16 * 1024 * 1024 - 300] }})
                    .await
                    .map(|_| ())
            }
            0 => {
                next_id += 1;
                main.insert_one(doc! {"_id": next_id, "n": 0, "arr": [1, 2, 3], "s": "new"})
                    .await
                    .map(|_| ())
            }
            1 => main
                .update_one(
                    doc! {"_id": id},
                    doc! {"$set": {"s": format!("set{i}"), "sub.x": i as i64}},
                )
                .await
                .map(|_| ()),
            2 => main
                .update_one(doc! {"_id": id}, doc! {"$unset": {"pad": ""}})
                .await
                .map(|_| ()),
            3 => main
                .update_one(doc! {"_id": id}, doc! {"$push": {"arr": i as i64}})
                .await
                .map(|_| ()),
            4 => main
                .update_one(
                    doc! {"_id": id},
                    vec![doc! {"$set": {"arr": {"$slice": [{"$ifNull": ["$arr", []]}, 1]}}}],
                )
                .await
                .map(|_| ()),
            5 => main
                .replace_one(
                    doc! {"_id": id},
                    doc! {"z": "replaced", "a": i as i64, "b.c": 1},
                )
                .await
                .map(|_| ()),
            6 => main.delete_one(doc! {"_id": id}).await.map(|_| ()),
            7 => main
                .update_one(
                    doc! {"_id": id},
                    doc! {"$inc": {"n": 1}, "$set": {"when": DateTime::now()}},
                )
                .await
                .map(|_| ()),
            _ => {
                // Structural changes, in a fixed rotation.
                let k = i % 9;
                let name = format!("side{}", i % 7);
                let admin = db.client().database("admin");
                match k {
                    5 => admin
                        .run_command(doc! {"renameCollection": format!("churn.renamed{}", i % 3), "to": format!("other.moved{}", i % 2), "dropTarget": true})
                        .await
                        .map(|_| ()),
                    6 => db
                        .client()
                        .database("other")
                        .drop()
                        .await
                        .map(|_| ()),
                    7 => db
                        .run_command(doc! {"collMod": &name, "validator": {"i": {"$exists": true}}, "validationLevel": "moderate"})
                        .await
                        .map(|_| ()),
                    8 => db
                        .client()
                        .database("kinds")
                        .run_command(doc! {"collMod": "indexed", "index": {"name": "hidden", "hidden": i.is_multiple_of(2)}})
                        .await
                        .map(|_| ()),
                    0 => db
                        .collection::<Document>(&name)
                        .insert_many((0..20).map(|j| doc! {"_id": j, "i": i as i64}).collect::<Vec<_>>())
                        .await
                        .map(|_| ()),
                    1 => db
                        .collection::<Document>(&name)
                        .create_index(mongodb::IndexModel::builder().keys(doc! {"i": 1}).build())
                        .await
                        .map(|_| ()),
                    2 => admin
                        .run_command(doc! {"renameCollection": format!("churn.{name}"), "to": format!("churn.renamed{}", i % 3), "dropTarget": true})
                        .await
                        .map(|_| ()),
                    3 => db
                        .collection::<Document>(&format!("renamed{}", i % 3))
                        .drop()
                        .await
                        .map(|_| ()),
                    _ => main
                        .create_index(
                            mongodb::IndexModel::builder()
                                .keys(doc! {format!("f{}", i % 4): 1})
                                .build(),
                        )
                        .await
                        .map(|_| ()),
                }
            }
        };
        // Renames of missing collections fail (NamespaceNotFound): that is fine.
        if r.is_ok() {
            ops.fetch_add(1, Ordering::Relaxed);
            if (op == 8 || (op == 11 && !i.is_multiple_of(50))) && matches!(i % 9, 2 | 5) {
                RENAMES.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_during_copy_ends_identical() {
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let s = src.root_client().await;
    let d = dst.root_client().await;
    let main = s.database("churn").collection::<Document>("main");
    for chunk in 0..4 {
        let docs: Vec<Document> = (chunk * 5000..(chunk + 1) * 5000)
            .map(|i: i64| doc! {"_id": i, "n": 0, "arr": [1, 2, 3, 4], "pad": "p".repeat(200), "s": "seed"})
            .collect();
        main.insert_many(docs).await.unwrap();
    }
    seed_kinds(&s).await;

    let seed: u64 = std::env::var("CHURN_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("churn seed: {seed} (set CHURN_SEED to replay)");
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let writer = tokio::spawn(churn(s.clone(), seed, stop.clone(), ops.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (_dir, plan) = write_plan(&plan_text("churn", SYNC_COMMIT));
    let plan = plan.to_str().unwrap().to_string();
    let env = root_env(&src, &dst);
    // Step 1 (sync) while the writer runs: small ranges, one at a time, so the copy is long.
    let started = Instant::now();
    let ops_before = ops.load(Ordering::Relaxed);
    let o = run_cutover(
        &[
            "run",
            &plan,
            "--max-steps",
            "1",
            "--docs-per-range",
            "100",
            "--copy-concurrency",
            "1",
        ],
        &env_refs(&env),
    );
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let during = ops.load(Ordering::Relaxed) - ops_before;
    eprintln!(
        "sync step took {:?}; the writer made {during} changes meanwhile",
        started.elapsed()
    );
    assert!(during > 100, "the writer must churn during the copy");
    let renames = RENAMES.load(Ordering::Relaxed);
    eprintln!("renames so far: {renames}");
    assert!(renames > 0, "the writer must rename collections");
    // A little more churn while cutover is stopped, then stop the writer and commit.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let o = run_cutover(&["run", &plan], &env_refs(&env));
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));

    assert_same_data(&s, &d, STATE_DB).await;
    assert_same_catalog(&s, &d, STATE_DB).await;
    for coll in ["capped", "bigcapped", "clustered", "system.buckets.weather"] {
        assert_same_natural(&s, &d, "kinds", coll).await;
    }
}
