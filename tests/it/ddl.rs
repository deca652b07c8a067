//! DDL change events captured from a real source (cluster-wide change stream with
//! `showExpandedEvents` and `showSystemEvents`) are applied to a destination with
//! `apply_ddl`, each twice (a replay after a crash), and the catalogs end up identical.

use std::time::Duration;

use crate::common::*;
use cutover::base::namespace::Namespace;
use cutover::engine::catalog::*;
use cutover::plan::model::NamespaceFilter;
use cutover::plan::NamespaceSelector;
use cutover::state::record::Direction;
use futures::TryStreamExt;
use mongodb::bson::{doc, Document, RawDocumentBuf};
use mongodb::Client;

const STATE_DB: &str = "__cutover";

async fn run(c: &Client, db: &str, cmd: Document) -> Document {
    c.database(db)
        .run_command(cmd.clone())
        .await
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

async fn rename(c: &Client, from: &str, to: &str) {
    run(c, "admin", doc! {"renameCollection": from, "to": to}).await;
}

fn filter(db: &str, colls: Option<&[&str]>) -> NamespaceFilter {
    NamespaceFilter {
        database: Some(db.into()),
        database_regex: None,
        collections: colls.map(|c| c.iter().map(|s| s.to_string()).collect()),
        collections_regex: None,
    }
}

fn selector() -> NamespaceSelector {
    NamespaceSelector::new(
        &[
            filter("shop", None),
            filter("arch", Some(&["kept", "leaving", "arrived"])),
            filter("tmpdb", None),
        ],
        &[],
        STATE_DB,
    )
    .unwrap()
}

/// The test's stand-in for the engine's document path: enough to keep data in step.
async fn apply_data(src: &Client, dst: &Client, ev: &Document, sel: &NamespaceSelector) {
    let ns = ev.get_document("ns").unwrap();
    let (db, coll) = (ns.get_str("db").unwrap(), ns.get_str("coll").unwrap());
    let user = coll.strip_prefix("system.buckets.").unwrap_or(coll);
    if !sel.selects(db, user) {
        return;
    }
    let key = ev.get_document("documentKey").unwrap().clone();
    let dc = dst.database(db).collection::<Document>(coll);
    let current = src
        .database(db)
        .collection::<Document>(coll)
        .find_one(key.clone())
        .await
        .unwrap();
    let doc = match ev.get_str("operationType").unwrap() {
        "insert" => Some(ev.get_document("fullDocument").unwrap().clone()),
        _ => current,
    };
    match doc {
        Some(d) => {
            dc.replace_one(key, d)
                .upsert(true)
                .bypass_document_validation(true)
                .await
                .unwrap();
        }
        None => {
            dc.delete_one(key).await.unwrap();
        }
    }
}

/// What the engine does with `NeedsCopy`: create, build indexes, copy the documents.
async fn copy_namespace(src: &Client, dst: &Client, ns: &Namespace, relax: &RelaxationStore) {
    let Some(spec) = spec_of(src, ns).await.unwrap() else {
        return;
    };
    create_on_destination(dst, &spec, relax).await.unwrap();
    build_indexes(dst, &spec, relax).await.unwrap();
    let Some(target) = copy_target(&spec) else {
        return;
    };
    let docs: Vec<Document> = src
        .database(&target.db)
        .collection::<Document>(&target.coll)
        .find(doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let dc = dst
        .database(&target.db)
        .collection::<Document>(&target.coll);
    for d in docs {
        let id = d.get("_id").unwrap().clone();
        dc.replace_one(doc! {"_id": id}, d)
            .upsert(true)
            .bypass_document_validation(true)
            .await
            .unwrap();
    }
}

async fn source_ddl(src: &Client) {
    let shop = |coll: &str| src.database("shop").collection::<Document>(coll);
    // create, insert, createIndexes (unique, TTL, plain), collMod validator / TTL / hidden, dropIndexes.
    run(src, "shop", doc! {"create": "a"}).await;
    shop("a").insert_many((0..20).map(|i| doc! {"_id": i, "email": format!("u{i}@x"), "created": mongodb::bson::DateTime::now()})).await.unwrap();
    run(
        src,
        "shop",
        doc! {"createIndexes": "a", "indexes": [
            {"key": {"email": 1}, "name": "email_1", "unique": true},
            {"key": {"created": 1}, "name": "created_ttl", "expireAfterSeconds": 3600},
            {"key": {"y": 1}, "name": "y_1"},
            {"key": {"x": 1}, "name": "x_1"},
        ]},
    )
    .await;
    run(src, "shop", doc! {"collMod": "a", "validator": {"email": {"$type": "string"}}, "validationLevel": "moderate"}).await;
    run(
        src,
        "shop",
        doc! {"collMod": "a", "index": {"name": "created_ttl", "expireAfterSeconds": 7200}},
    )
    .await;
    run(
        src,
        "shop",
        doc! {"collMod": "a", "index": {"name": "y_1", "hidden": true}},
    )
    .await;
    run(src, "shop", doc! {"dropIndexes": "a", "index": "x_1"}).await;
    // A non-unique index made unique on the source during the sync.
    run(src, "shop", doc! {"create": "u"}).await;
    shop("u")
        .insert_many(vec![doc! {"k": 1}, doc! {"k": 2}])
        .await
        .unwrap();
    run(
        src,
        "shop",
        doc! {"createIndexes": "u", "indexes": [{"key": {"k": 1}, "name": "k_1"}]},
    )
    .await;
    run(
        src,
        "shop",
        doc! {"collMod": "u", "index": {"name": "k_1", "prepareUnique": true}},
    )
    .await;
    run(
        src,
        "shop",
        doc! {"collMod": "u", "index": {"name": "k_1", "unique": true}},
    )
    .await;
    // Capped, clustered with TTL, collation, pre/post images.
    run(
        src,
        "shop",
        doc! {"create": "cap", "capped": true, "size": 65536, "max": 50},
    )
    .await;
    run(src, "shop", doc! {"collMod": "cap", "cappedSize": 32768}).await;
    run(src, "shop", doc! {"create": "clu", "clusteredIndex": {"key": {"_id": 1}, "unique": true}, "expireAfterSeconds": 60}).await;
    run(src, "shop", doc! {"create": "fr", "collation": {"locale": "fr"}, "changeStreamPreAndPostImages": {"enabled": true}}).await;
    // Views: create, collMod.
    run(
        src,
        "shop",
        doc! {"create": "v", "viewOn": "a", "pipeline": [{"$match": {"_id": {"$lt": 5}}}]},
    )
    .await;
    run(
        src,
        "shop",
        doc! {"collMod": "v", "viewOn": "fr", "pipeline": []},
    )
    .await;
    // Time series: create, index, TTL change, hidden; one more created and dropped.
    run(src, "shop", doc! {"create": "ts", "timeseries": {"timeField": "t", "metaField": "m", "granularity": "minutes"}, "expireAfterSeconds": 86400}).await;
    shop("ts")
        .insert_many(
            (0..10).map(|i| doc! {"t": mongodb::bson::DateTime::now(), "m": i % 2, "v": i}),
        )
        .await
        .unwrap();
    run(
        src,
        "shop",
        doc! {"createIndexes": "ts", "indexes": [{"key": {"m": 1, "t": -1}, "name": "m_t"}]},
    )
    .await;
    run(
        src,
        "shop",
        doc! {"collMod": "ts", "expireAfterSeconds": 172800},
    )
    .await;
    run(
        src,
        "shop",
        doc! {"collMod": "ts", "index": {"name": "m_t", "hidden": true}},
    )
    .await;
    run(
        src,
        "shop",
        doc! {"create": "ts2", "timeseries": {"timeField": "t"}},
    )
    .await;
    src.database("shop")
        .collection::<Document>("ts2")
        .insert_one(doc! {"t": mongodb::bson::DateTime::now()})
        .await
        .unwrap();
    run(src, "shop", doc! {"drop": "ts2"}).await;
    // Renames: within the database, across databases into the filter (arch.kept), from
    // outside into the filter, out of the filter.
    rename(src, "shop.a", "shop.a2").await;
    run(src, "shop", doc! {"create": "b"}).await;
    shop("b").insert_one(doc! {"_id": "b1"}).await.unwrap();
    rename(src, "shop.a2", "shop.a3").await;
    run(src, "shop", doc! {"create": "for_arch"}).await;
    shop("for_arch")
        .insert_many(vec![doc! {"_id": 1}, doc! {"_id": 2}])
        .await
        .unwrap();
    rename(src, "shop.for_arch", "arch.kept").await;
    run(src, "outside", doc! {"create": "x"}).await;
    src.database("outside")
        .collection::<Document>("x")
        .insert_many(vec![doc! {"_id": 1, "q": 1}, doc! {"_id": 2}])
        .await
        .unwrap();
    run(
        src,
        "outside",
        doc! {"createIndexes": "x", "indexes": [{"key": {"q": 1}, "name": "q_1", "unique": true}]},
    )
    .await;
    rename(src, "outside.x", "shop.from_outside").await;
    rename(src, "shop.b", "outside.b").await;
    // Within one database, into and out of the filter.
    run(src, "arch", doc! {"create": "staging"}).await;
    src.database("arch")
        .collection::<Document>("staging")
        .insert_many(vec![doc! {"_id": 1}, doc! {"_id": 2}])
        .await
        .unwrap();
    rename(src, "arch.staging", "arch.arrived").await;
    run(src, "arch", doc! {"create": "leaving"}).await;
    rename(src, "arch.leaving", "arch.gone").await;
    // drop, dropDatabase.
    run(src, "shop", doc! {"create": "dropme"}).await;
    run(src, "shop", doc! {"drop": "dropme"}).await;
    run(src, "tmpdb", doc! {"create": "c1"}).await;
    run(src, "tmpdb", doc! {"create": "c2"}).await;
    run(src, "tmpdb", doc! {"dropDatabase": 1}).await;
}

#[tokio::test]
async fn ddl_events_replayed_twice_give_identical_catalogs() {
    let (src_rs, dst_rs) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let src = src_rs.root_client().await;
    let dst = dst_rs.root_client().await;
    let sel = selector();
    let relax = RelaxationStore::new(dst.database(STATE_DB), "ddl", Direction::Forward);
    // The destination has a collection of its own in a dropped database: it must survive.
    run(&dst, "tmpdb", doc! {"create": "dest_only"}).await;
    let sel_no_dest_only = sel.selects("tmpdb", "dest_only");
    assert!(sel_no_dest_only, "tmpdb is wholly selected");

    let start = run(
        &src,
        "admin",
        doc! {"appendOplogNote": 1, "data": {"test": "ddl"}},
    )
    .await;
    let t = start.get_timestamp("operationTime").unwrap();
    source_ddl(&src).await;
    run(&src, "zz_sentinel", doc! {"create": "done"}).await;

    let stream = doc! {"allChangesForCluster": true, "showExpandedEvents": true, "showSystemEvents": true, "startAtOperationTime": t};
    let mut cursor = src
        .database("admin")
        .run_raw_cursor_command(
            RawDocumentBuf::from_document(
                &doc! {"aggregate": 1, "pipeline": [{"$changeStream": stream}], "cursor": {}},
            )
            .unwrap(),
        )
        .await
        .unwrap()
        .with_type::<RawDocumentBuf>();
    let mut events = Vec::new();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(30), cursor.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let d = ev.to_document().unwrap();
        if d.get_document("ns").ok().and_then(|n| n.get_str("db").ok()) == Some("zz_sentinel") {
            break;
        }
        events.push(ev);
    }

    let mut outcomes = Vec::new();
    for ev in &events {
        let d = ev.to_document().unwrap();
        let op = d.get_str("operationType").unwrap().to_string();
        if matches!(op.as_str(), "insert" | "update" | "replace" | "delete") {
            apply_data(&src, &dst, &d, &sel).await;
            continue;
        }
        let first = apply_ddl(&src, &dst, ev, &sel, &relax)
            .await
            .unwrap_or_else(|e| panic!("{d}: {e}"));
        let again = apply_ddl(&src, &dst, ev, &sel, &relax)
            .await
            .unwrap_or_else(|e| panic!("replay of {d}: {e}"));
        let ns = d
            .get_document("ns")
            .map(|n| n.to_string())
            .unwrap_or_default();
        if let DdlOutcome::NeedsCopy(ns) = &first {
            copy_namespace(&src, &dst, ns, &relax).await;
        }
        if !matches!(first, DdlOutcome::NeedsCopy(_)) {
            assert_eq!(first, again, "{op} {ns}: replay gives the same outcome");
        }
        outcomes.push((op, ns, first));
    }
    let find = |op: &str, ns: &str| {
        outcomes
            .iter()
            .find(|(o, n, _)| o == op && n.contains(ns))
            .map(|(_, _, r)| r.clone())
            .unwrap_or_else(|| panic!("no {op} on {ns} in {outcomes:#?}"))
    };
    // Across databases the server renames through `arch.tmpXXXXX.renameCollection` (unselected
    // here), so the target arrives as a rename from outside the filter, and the original is dropped.
    assert_eq!(find("drop", r#""coll": "for_arch""#), DdlOutcome::Applied);
    assert!(
        outcomes.iter().any(|(o, _, r)| o == "rename"
            && *r == DdlOutcome::NeedsCopy(Namespace::new("arch", "kept"))),
        "renamed into the filter: {outcomes:#?}"
    );
    assert_eq!(find("create", r#""db": "outside""#), DdlOutcome::Ignored);
    assert_eq!(
        find("drop", r#""coll": "b""#),
        DdlOutcome::Applied,
        "across databases out of the filter"
    );
    assert_eq!(
        find("rename", r#""coll": "leaving""#),
        DdlOutcome::Applied,
        "out of the filter = drop"
    );
    assert_eq!(
        find("rename", r#""coll": "staging""#),
        DdlOutcome::NeedsCopy(Namespace::new("arch", "arrived"))
    );

    // Mid-way: relaxed on the destination, recorded.
    let dspec = spec_of(&dst, &Namespace::new("shop", "a3"))
        .await
        .unwrap()
        .unwrap();
    let email = dspec
        .index_docs()
        .into_iter()
        .find(|i| i.get_str("name") == Ok("email_1"))
        .unwrap();
    assert!(!email.contains_key("unique"), "{email}");
    let kinds: Vec<(String, Option<String>, RelaxationKind, Option<i64>)> = relax
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.ns.to_string(), r.index, r.kind, r.expire_after_seconds))
        .collect();
    for want in [
        (
            "shop.a3".to_string(),
            Some("email_1".to_string()),
            RelaxationKind::Unique,
            None,
        ),
        (
            "shop.a3".to_string(),
            Some("created_ttl".to_string()),
            RelaxationKind::IndexTtl,
            Some(7200),
        ),
        (
            "shop.u".to_string(),
            Some("k_1".to_string()),
            RelaxationKind::Unique,
            None,
        ),
        (
            "shop.ts".to_string(),
            None,
            RelaxationKind::CollectionTtl,
            Some(172800),
        ),
        (
            "shop.clu".to_string(),
            None,
            RelaxationKind::CollectionTtl,
            Some(60),
        ),
        ("shop.cap".to_string(), None, RelaxationKind::Capped, None),
    ] {
        assert!(kinds.contains(&want), "missing {want:?} in {kinds:#?}");
    }
    assert!(
        !kinds
            .iter()
            .any(|k| k.0.starts_with("tmpdb") || k.0 == "shop.a"),
        "{kinds:#?}"
    );
    let cap = relax
        .list()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.ns.coll == "cap")
        .unwrap();
    assert_eq!((cap.capped_size, cap.capped_max), (Some(32768), Some(50)));

    restore_relaxations(&dst, &relax).await.unwrap();

    let (s, d) = (
        list_selected(&src, &sel).await.unwrap(),
        list_selected(&dst, &sel).await.unwrap(),
    );
    let names = |v: &[NsSpec]| v.iter().map(|s| s.ns.to_string()).collect::<Vec<_>>();
    assert_eq!(names(&s), names(&d));
    assert!(
        names(&s).contains(&"shop.from_outside".to_string())
            && names(&s).contains(&"arch.kept".to_string())
    );
    for (a, b) in s.iter().zip(&d) {
        let diffs = compare_specs(a, b);
        assert!(diffs.is_empty(), "{}: {diffs:#?}", a.ns);
        if let Some(t) = copy_target(a) {
            let count = |c: &Client| {
                let c = c.clone();
                let t = t.clone();
                async move {
                    c.database(&t.db)
                        .collection::<Document>(&t.coll)
                        .count_documents(doc! {})
                        .await
                        .unwrap()
                }
            };
            assert_eq!(count(&src).await, count(&dst).await, "documents of {t}");
        }
    }
    let dest_dbs = dst.list_database_names().await.unwrap();
    assert!(!dest_dbs.contains(&"outside".to_string()), "{dest_dbs:?}");
    // dropDatabase dropped only what cutover syncs... which in tmpdb is everything.
    assert!(!dest_dbs.contains(&"tmpdb".to_string()), "{dest_dbs:?}");
}

#[tokio::test]
async fn unknown_or_data_events_are_errors_that_name_the_event() {
    let (src_rs, dst_rs) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let src = src_rs.root_client().await;
    let dst = dst_rs.root_client().await;
    let relax = RelaxationStore::new(dst.database(STATE_DB), "ddl", Direction::Forward);
    let sel = selector();
    let ts = mongodb::bson::Timestamp {
        time: 1700000000,
        increment: 3,
    };
    for op in ["shardCollection", "insert", "somethingNew"] {
        let ev = RawDocumentBuf::from_document(&doc! {
            "operationType": op, "clusterTime": ts, "ns": {"db": "shop", "coll": "orders"}, "operationDescription": {}
        })
        .unwrap();
        let err = apply_ddl(&src, &dst, &ev, &sel, &relax).await.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, CatalogError::UnsupportedDdl { .. }), "{msg}");
        assert!(
            msg.contains(op) && msg.contains("shop.orders") && msg.contains("1700000000"),
            "{msg}"
        );
    }
    // A collMod option cutover does not know is an error too, not a silent skip.
    let ev = RawDocumentBuf::from_document(&doc! {
        "operationType": "modify", "clusterTime": ts, "ns": {"db": "shop", "coll": "orders"},
        "operationDescription": {"futureOption": true}
    })
    .unwrap();
    let msg = apply_ddl(&src, &dst, &ev, &sel, &relax)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("futureOption") && msg.contains("modify"),
        "{msg}"
    );
    // ... but on an unselected namespace it is ignored.
    let ev = RawDocumentBuf::from_document(&doc! {
        "operationType": "modify", "clusterTime": ts, "ns": {"db": "outside", "coll": "orders"},
        "operationDescription": {"futureOption": true}
    })
    .unwrap();
    assert_eq!(
        apply_ddl(&src, &dst, &ev, &sel, &relax).await.unwrap(),
        DdlOutcome::Ignored
    );
}

/// The copy reads the catalog after the start point, so replayed events can be *behind* the
/// destination: creating what already exists in a later shape, indexing a collection the
/// copy never saw. Replay must converge, not fail.
#[tokio::test]
async fn replay_behind_the_copy_converges() {
    let (src_rs, dst_rs) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let src = src_rs.root_client().await;
    let dst = dst_rs.root_client().await;
    let sel = selector();
    let relax = RelaxationStore::new(dst.database(STATE_DB), "behind", Direction::Forward);
    run(&src, "shop", doc! {"create": "gone2"}).await;

    let start = run(
        &src,
        "admin",
        doc! {"appendOplogNote": 1, "data": {"test": "behind"}},
    )
    .await;
    let t = start.get_timestamp("operationTime").unwrap();
    run(
        &src,
        "shop",
        doc! {"create": "r", "validator": {"a": {"$exists": true}}},
    )
    .await;
    run(
        &src,
        "shop",
        doc! {"createIndexes": "r", "indexes": [
            {"key": {"h": 1}, "name": "h_1", "hidden": true},
            {"key": {"k": 1}, "name": "k_1"},
            {"key": {"e": 1}, "name": "e_1", "unique": true},
        ]},
    )
    .await;
    run(
        &src,
        "shop",
        doc! {"collMod": "r", "validator": {"b": {"$exists": true}}},
    )
    .await;
    run(
        &src,
        "shop",
        doc! {"collMod": "r", "index": {"name": "h_1", "hidden": false}},
    )
    .await;
    run(&src, "shop", doc! {"dropIndexes": "r", "index": "k_1"}).await;
    run(&src, "shop", doc! {"createIndexes": "r", "indexes": [{"key": {"k": 1}, "name": "k_named", "sparse": true}]}).await;
    run(
        &src,
        "shop",
        doc! {"createIndexes": "gone2", "indexes": [{"key": {"z": 1}, "name": "z_1"}]},
    )
    .await;
    run(&src, "shop", doc! {"drop": "gone2"}).await;
    run(&src, "zz_sentinel", doc! {"create": "done"}).await;

    // The copy happens now, from the source's current (later) catalog.
    for spec in list_selected(&src, &sel).await.unwrap() {
        create_on_destination(&dst, &spec, &relax).await.unwrap();
        build_indexes(&dst, &spec, &relax).await.unwrap();
    }

    let stream = doc! {"allChangesForCluster": true, "showExpandedEvents": true, "showSystemEvents": true, "startAtOperationTime": t};
    let mut cursor = src
        .database("admin")
        .run_raw_cursor_command(
            RawDocumentBuf::from_document(
                &doc! {"aggregate": 1, "pipeline": [{"$changeStream": stream}], "cursor": {}},
            )
            .unwrap(),
        )
        .await
        .unwrap()
        .with_type::<RawDocumentBuf>();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(30), cursor.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let d = ev.to_document().unwrap();
        if d.get_document("ns").ok().and_then(|n| n.get_str("db").ok()) == Some("zz_sentinel") {
            break;
        }
        let op = d.get_str("operationType").unwrap();
        if matches!(op, "insert" | "update" | "replace" | "delete") {
            continue;
        }
        for _ in 0..2 {
            apply_ddl(&src, &dst, &ev, &sel, &relax)
                .await
                .unwrap_or_else(|e| panic!("{d}: {e}"));
        }
        let coll = d
            .get_document("ns")
            .unwrap()
            .get_str("coll")
            .unwrap_or_default();
        if op == "createIndexes" && coll == "gone2" {
            assert!(
                spec_of(&dst, &Namespace::new("shop", "gone2"))
                    .await
                    .unwrap()
                    .is_none(),
                "createIndexes must not implicitly create a collection the copy never saw"
            );
        }
    }
    restore_relaxations(&dst, &relax).await.unwrap();
    let (s, d) = (
        list_selected(&src, &sel).await.unwrap(),
        list_selected(&dst, &sel).await.unwrap(),
    );
    assert_eq!(s.len(), d.len());
    for (a, b) in s.iter().zip(&d) {
        assert!(
            compare_specs(a, b).is_empty(),
            "{}: {:#?}",
            a.ns,
            compare_specs(a, b)
        );
    }
}

/// A `dropDatabase` on the source (by a user without `bypassWriteBlockingMode`) that fails
/// after dropping the database's collections: held by the fail point
/// `dropDatabaseHangAfterAllCollectionsDrop` while the commit blocks user writes, it then ends
/// with UserWritesBlocked. Its collections and `system.views` are already dropped, so the
/// source's view is gone, with no change event for it and no `dropDatabase` event. The commit
/// drops the vanished view on the destination after the drain, and the catalogs are identical.
/// Before, the view stayed on the destination (found by the torture run's reversible seed 15:
/// "`tb.v1` exists only on the destination").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_dropped_by_a_failed_drop_database_is_dropped_at_commit() {
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let s = src.root_client().await;
    let d = dst.root_client().await;
    let gone = s.database("gone");
    for c in ["a", "b"] {
        gone.collection::<Document>(c)
            .insert_many((0..50).map(|i| doc! {"_id": i, "x": i}))
            .await
            .unwrap();
    }
    gone.run_command(
        doc! {"create": "v", "viewOn": "a", "pipeline": [{"$match": {"x": {"$gt": 10}}}]},
    )
    .await
    .unwrap();
    s.database("shop")
        .collection::<Document>("orders")
        .insert_many((0..100).map(|i| doc! {"_id": i}))
        .await
        .unwrap();
    s.database("admin")
        .run_command(doc! {"createUser": "dba", "pwd": "dba-password",
        "roles": ["readWriteAnyDatabase", "dbAdminAnyDatabase"]})
        .await
        .unwrap();
    let plan_body = r#"
[options]
write_blocking = "source-and-destination"

[[steps]]
kind = "sync"

[[steps]]
kind = "commit"
approval = "manual"
timeout = "5m"
"#;
    let RunningPlan {
        dir: _dir,
        plan,
        env,
        child: runner,
    } = spawn_run_until(
        &src,
        &dst,
        "inflight",
        plan_body,
        "waiting for approval",
        |v| v["phase"] == "waiting for approval",
    )
    .await;

    // The dropDatabase drops gone.a and gone.b, then hangs before dropping the database.
    let armed = s
        .database("admin")
        .run_command(doc! {"configureFailPoint": "dropDatabaseHangAfterAllCollectionsDrop", "mode": "alwaysOn"})
        .await
        .expect("configureFailPoint (mongod runs with enableTestCommands=1)");
    let entered = match armed.get("count") {
        Some(mongodb::bson::Bson::Int32(n)) => i64::from(*n),
        Some(mongodb::bson::Bson::Int64(n)) => *n,
        _ => 0,
    };
    let dba = client(&src.uri_for("dba", "dba-password")).await;
    let dropping = tokio::spawn(async move { dba.database("gone").drop().await });
    s.database("admin")
        .run_command(
            doc! {"waitForFailPoint": "dropDatabaseHangAfterAllCollectionsDrop",
            "timesEntered": entered + 1, "maxTimeMS": 60_000},
        )
        .await
        .expect("the dropDatabase never reached its fail point");

    // Approve; the dropDatabase finishes 3 s into the commit.
    let o = run_cutover(&["approve", &plan], &env_refs(&env));
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    tokio::time::sleep(Duration::from_secs(3)).await;
    s.database("admin")
        .run_command(
            doc! {"configureFailPoint": "dropDatabaseHangAfterAllCollectionsDrop", "mode": "off"},
        )
        .await
        .unwrap();
    let dropped = dropping.await.unwrap();
    eprintln!("dropDatabase on the source: {dropped:?}");
    let o = tokio::task::spawn_blocking(move || runner.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        dropped.is_err(),
        "the dropDatabase was expected to fail on the block: {dropped:?}"
    );
    assert_same_data(&s, &d, "__cutover").await;
    assert_same_catalog(&s, &d, "__cutover").await;
}
