//! The catalog layer against real replica sets: every collection kind and index kind is
//! created relaxed on a destination, restored, and compared with the source.

use crate::common::*;
use cutover::base::namespace::Namespace;
use cutover::engine::catalog::*;
use cutover::plan::model::NamespaceFilter;
use cutover::plan::NamespaceSelector;
use cutover::state::record::Direction;
use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document, RawDocumentBuf};
use mongodb::Client;

const STATE_DB: &str = "__cutover";

async fn run(c: &Client, db: &str, cmd: Document) -> Document {
    c.database(db)
        .run_command(cmd.clone())
        .await
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

fn all() -> NamespaceSelector {
    NamespaceSelector::new(&[], &[], STATE_DB).unwrap()
}

fn store(dest: &Client, plan: &str) -> RelaxationStore {
    RelaxationStore::new(dest.database(STATE_DB), plan, Direction::Forward)
}

/// Creates one namespace of each kind in `shop` (plus noise that must not be selected).
async fn seed_source(src: &Client) {
    run(
        src,
        "shop",
        doc! {"create": "cap", "capped": true, "size": 1048576, "max": 100},
    )
    .await;
    run(
        src,
        "shop",
        doc! {"create": "cap_nomax", "capped": true, "size": 4096},
    )
    .await;
    run(
        src,
        "shop",
        doc! {"create": "validated", "validator": {"$jsonSchema": {"required": ["a"]}}, "validationLevel": "moderate", "validationAction": "warn"},
    )
    .await;
    run(
        src,
        "shop",
        doc! {"create": "french", "collation": {"locale": "fr", "strength": 2}},
    )
    .await;
    run(
        src,
        "shop",
        doc! {"create": "ts", "timeseries": {"timeField": "t", "metaField": "m", "granularity": "hours"}, "expireAfterSeconds": 86400},
    )
    .await;
    run(
        src,
        "shop",
        doc! {"createIndexes": "ts", "indexes": [{"key": {"m": 1, "t": -1}, "name": "m_t"}]},
    )
    .await;
    run(
        src,
        "shop",
        doc! {"create": "clu", "clusteredIndex": {"key": {"_id": 1}, "unique": true, "name": "clu_key"}, "expireAfterSeconds": 3600},
    )
    .await;
    run(
        src,
        "shop",
        doc! {"create": "pre", "changeStreamPreAndPostImages": {"enabled": true}},
    )
    .await;
    run(
        src,
        "shop",
        doc! {"create": "vv", "viewOn": "v", "pipeline": [{"$project": {"a": 1}}]},
    )
    .await;
    run(
        src,
        "shop",
        doc! {"create": "v", "viewOn": "validated", "pipeline": [{"$match": {"a": 1}}]},
    )
    .await;
    run(
        src,
        "shop",
        doc! {"create": "vfr", "viewOn": "french", "pipeline": [], "collation": {"locale": "fr"}},
    )
    .await;
    run(src, "shop", doc! {"create": "idx"}).await;
    run(
        src,
        "shop",
        doc! {"createIndexes": "idx", "indexes": [
            {"key": {"email": 1}, "name": "email_unique", "unique": true},
            {"key": {"a": 1, "b": -1}, "name": "partial", "partialFilterExpression": {"a": {"$gt": 5}}},
            {"key": {"s": 1}, "name": "sparse", "sparse": true},
            {"key": {"created": 1}, "name": "ttl", "expireAfterSeconds": 3600},
            {"key": {"title": "text", "body": "text"}, "name": "text", "weights": {"title": 10},
             "default_language": "french", "language_override": "lang"},
            {"key": {"loc": "2dsphere"}, "name": "geo", "2dsphereIndexVersion": 3},
            {"key": {"h": "hashed"}, "name": "hashed"},
            {"key": {"$**": 1}, "name": "wild", "wildcardProjection": {"x": 1, "y.z": 1}},
            {"key": {"name": 1}, "name": "coll_fr", "collation": {"locale": "fr", "strength": 1}},
            {"key": {"hid": 1}, "name": "hidden", "hidden": true},
            {"key": {"u1": 1, "u2": 1}, "name": "unique_partial", "unique": true, "partialFilterExpression": {"u1": {"$exists": true}}},
        ]},
    )
    .await;
    run(
        src,
        "shop",
        doc! {"createIndexes": "cap", "indexes": [{"key": {"k": 1}, "name": "k_1"}]},
    )
    .await;
    // Never selected: system collections, reserved and state databases.
    run(src, STATE_DB, doc! {"create": "checkpoints"}).await;
    run(src, "admin", doc! {"create": "not_mine"}).await;
}

fn opts(spec: &NsSpec) -> Document {
    spec.options()
}

fn index<'a>(spec: &'a [Document], name: &str) -> &'a Document {
    spec.iter()
        .find(|d| d.get_str("name").ok() == Some(name))
        .unwrap_or_else(|| panic!("index {name}"))
}

#[tokio::test]
async fn every_kind_is_created_relaxed_then_restored_identically() {
    let (src_rs, dst_rs) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let src = src_rs.root_client().await;
    let dst = dst_rs.root_client().await;
    seed_source(&src).await;
    let relax = store(&dst, "p1");

    let specs = list_selected(&src, &all()).await.unwrap();
    let names: Vec<String> = specs.iter().map(|s| s.ns.to_string()).collect();
    assert_eq!(
        names,
        [
            "shop.cap",
            "shop.cap_nomax",
            "shop.clu",
            "shop.french",
            "shop.idx",
            "shop.pre",
            "shop.ts",
            "shop.validated",
            "shop.v",
            "shop.vfr",
            "shop.vv"
        ],
        "selected namespaces, views after what they read"
    );
    let ts = specs.iter().find(|s| s.ns.coll == "ts").unwrap();
    assert_eq!(ts.kind, NsKind::Timeseries);
    assert_eq!(
        copy_target(ts),
        Some(Namespace::new("shop", "system.buckets.ts"))
    );
    assert_eq!(
        copy_target(specs.iter().find(|s| s.ns.coll == "v").unwrap()),
        None
    );

    for spec in &specs {
        create_on_destination(&dst, spec, &relax).await.unwrap();
        build_indexes(&dst, spec, &relax).await.unwrap();
    }

    // Mid-way: relaxed on the destination, and every relaxation recorded.
    let d = |coll: &'static str| {
        let dst = dst.clone();
        async move {
            spec_of(&dst, &Namespace::new("shop", coll))
                .await
                .unwrap()
                .unwrap()
        }
    };
    let cap = d("cap").await;
    assert_eq!(
        opts(&cap).get("size"),
        Some(&Bson::Int64(RELAXED_CAPPED_SIZE)),
        "{}",
        opts(&cap)
    );
    assert!(
        !opts(&cap).contains_key("max"),
        "capped max relaxed: {}",
        opts(&cap)
    );
    assert!(!opts(&d("clu").await).contains_key("expireAfterSeconds"));
    assert!(!opts(&d("ts").await).contains_key("expireAfterSeconds"));
    let idx = d("idx").await.index_docs();
    assert!(
        !index(&idx, "email_unique").contains_key("unique"),
        "unique relaxed"
    );
    assert!(!index(&idx, "unique_partial").contains_key("unique"));
    assert!(
        !index(&idx, "ttl").contains_key("expireAfterSeconds"),
        "TTL relaxed"
    );
    assert_eq!(index(&idx, "hidden").get_bool("hidden"), Ok(true));
    let mut records: Vec<(String, Option<String>, RelaxationKind)> = relax
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.ns.to_string(), r.index, r.kind))
        .collect();
    records.sort_by_key(|r| format!("{r:?}"));
    let mut expected = vec![
        ("shop.cap".to_string(), None, RelaxationKind::Capped),
        ("shop.cap_nomax".to_string(), None, RelaxationKind::Capped),
        ("shop.clu".to_string(), None, RelaxationKind::CollectionTtl),
        ("shop.ts".to_string(), None, RelaxationKind::CollectionTtl),
        (
            "shop.idx".to_string(),
            Some("email_unique".to_string()),
            RelaxationKind::Unique,
        ),
        (
            "shop.idx".to_string(),
            Some("unique_partial".to_string()),
            RelaxationKind::Unique,
        ),
        (
            "shop.idx".to_string(),
            Some("ttl".to_string()),
            RelaxationKind::IndexTtl,
        ),
    ];
    expected.sort_by_key(|r| format!("{r:?}"));
    assert_eq!(records, expected);
    let capr = relax
        .list()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.ns.coll == "cap")
        .unwrap();
    assert_eq!(
        (capr.capped_size, capr.capped_max),
        (Some(1048576), Some(100))
    );

    // Re-running both steps changes nothing.
    for spec in &specs {
        create_on_destination(&dst, spec, &relax).await.unwrap();
        build_indexes(&dst, spec, &relax).await.unwrap();
    }
    assert_eq!(relax.list().await.unwrap().len(), expected.len());

    let report = restore_relaxations(&dst, &relax).await.unwrap();
    assert_eq!(report.restored.len(), expected.len(), "{report:?}");
    assert!(report.gone.is_empty());
    assert!(
        relax.list().await.unwrap().is_empty(),
        "records removed once restored"
    );

    for spec in &specs {
        let other = spec_of(&dst, &spec.ns).await.unwrap().unwrap();
        let diffs = compare_specs(spec, &other);
        assert!(diffs.is_empty(), "{}: {diffs:#?}", spec.ns);
    }

    // Idempotent after the restore too: nothing to restore, nothing to re-create.
    let again = restore_relaxations(&dst, &relax).await.unwrap();
    assert!(again.restored.is_empty());
    for spec in &specs {
        create_on_destination(&dst, spec, &relax).await.unwrap();
        build_indexes(&dst, spec, &relax).await.unwrap();
    }
    // compare_specs does see real differences.
    run(
        &dst,
        "shop",
        doc! {"collMod": "idx", "index": {"name": "hidden", "hidden": false}},
    )
    .await;
    let src_idx = spec_of(&src, &Namespace::new("shop", "idx"))
        .await
        .unwrap()
        .unwrap();
    let dst_idx = spec_of(&dst, &Namespace::new("shop", "idx"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(compare_specs(&src_idx, &dst_idx).len(), 1);
}

#[tokio::test]
async fn duplicates_at_restore_name_the_ids_and_filters_apply() {
    let (src_rs, dst_rs) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let src = src_rs.root_client().await;
    let dst = dst_rs.root_client().await;
    run(&src, "shop", doc! {"create": "users"}).await;
    run(
        &src,
        "shop",
        doc! {"createIndexes": "users", "indexes": [{"key": {"email": 1}, "name": "email_1", "unique": true, "collation": {"locale": "en", "strength": 2}}]},
    )
    .await;
    run(&src, "other", doc! {"create": "skipped"}).await;
    let only_shop = NamespaceSelector::new(
        &[NamespaceFilter {
            database: Some("shop".into()),
            database_regex: None,
            collections: None,
            collections_regex: None,
        }],
        &[],
        STATE_DB,
    )
    .unwrap();
    let specs = list_selected(&src, &only_shop).await.unwrap();
    assert_eq!(specs.len(), 1);
    let relax = store(&dst, "p2");
    create_on_destination(&dst, &specs[0], &relax)
        .await
        .unwrap();
    build_indexes(&dst, &specs[0], &relax).await.unwrap();
    // Parallel application may pass through this; if it is still there at commit, it is a divergence.
    dst.database("shop")
        .collection::<Document>("users")
        .insert_many(vec![
            doc! {"_id": 1, "email": "a@x"},
            doc! {"_id": 2, "email": "A@X"},
            doc! {"_id": 3, "email": "b@x"},
        ])
        .await
        .unwrap();
    let err = restore_relaxations(&dst, &relax).await.unwrap_err();
    match &err {
        CatalogError::Duplicates { ns, index, ids } => {
            assert_eq!(ns.to_string(), "shop.users");
            assert_eq!(index, "email_1");
            assert_eq!(ids, &vec![Bson::Int32(1), Bson::Int32(2)]);
        }
        other => panic!("expected Duplicates, got {other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("email_1") && msg.contains("shop.users") && msg.contains("hint:"),
        "{msg}"
    );
    assert_eq!(
        relax.list().await.unwrap().len(),
        1,
        "the record stays until restored"
    );
    // Fixed on the destination: the restore completes.
    dst.database("shop")
        .collection::<Document>("users")
        .delete_one(doc! {"_id": 2})
        .await
        .unwrap();
    restore_relaxations(&dst, &relax).await.unwrap();
    let d = spec_of(&dst, &specs[0].ns).await.unwrap().unwrap();
    assert!(
        compare_specs(&specs[0], &d).is_empty(),
        "{:?}",
        compare_specs(&specs[0], &d)
    );
}

#[tokio::test]
async fn existing_namespace_with_other_options_is_a_conflict() {
    let (src_rs, dst_rs) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let src = src_rs.root_client().await;
    let dst = dst_rs.root_client().await;
    run(
        &src,
        "shop",
        doc! {"create": "orders", "validator": {"a": {"$exists": true}}},
    )
    .await;
    run(
        &dst,
        "shop",
        doc! {"create": "orders", "collation": {"locale": "de"}},
    )
    .await;
    run(&src, "shop", doc! {"create": "items"}).await;
    run(
        &src,
        "shop",
        doc! {"createIndexes": "items", "indexes": [{"key": {"a": 1}, "name": "a"}]},
    )
    .await;
    run(
        &dst,
        "shop",
        doc! {"createIndexes": "items", "indexes": [{"key": {"b": 1}, "name": "a"}]},
    )
    .await;
    let relax = store(&dst, "p3");
    let orders = spec_of(&src, &Namespace::new("shop", "orders"))
        .await
        .unwrap()
        .unwrap();
    let err = create_on_destination(&dst, &orders, &relax)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, CatalogError::Conflict { .. }), "{msg}");
    assert!(
        msg.contains("shop.orders") && msg.contains("de") && msg.contains("validator"),
        "{msg}"
    );
    let items = spec_of(&src, &Namespace::new("shop", "items"))
        .await
        .unwrap()
        .unwrap();
    create_on_destination(&dst, &items, &relax).await.unwrap();
    let err = build_indexes(&dst, &items, &relax).await.unwrap_err();
    assert!(err.to_string().contains("index a"), "{err}");
}

#[tokio::test]
async fn time_series_buckets_copied_raw_show_the_same_measurements() {
    let (src_rs, dst_rs) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let src = src_rs.root_client().await;
    let dst = dst_rs.root_client().await;
    run(
        &src,
        "iot",
        doc! {"create": "temps", "timeseries": {"timeField": "t", "metaField": "sensor"}},
    )
    .await;
    let now = mongodb::bson::DateTime::now().timestamp_millis();
    let docs: Vec<Document> = (0..50)
        .map(|i| doc! {"t": mongodb::bson::DateTime::from_millis(now - i * 60_000), "sensor": {"id": i % 3}, "v": i as f64 * 0.5})
        .collect();
    src.database("iot")
        .collection::<Document>("temps")
        .insert_many(docs)
        .await
        .unwrap();
    let spec = spec_of(&src, &Namespace::new("iot", "temps"))
        .await
        .unwrap()
        .unwrap();
    let relax = store(&dst, "p4");
    create_on_destination(&dst, &spec, &relax).await.unwrap();
    build_indexes(&dst, &spec, &relax).await.unwrap();
    let target = copy_target(&spec).unwrap();
    let buckets: Vec<RawDocumentBuf> = src
        .database(&target.db)
        .collection::<RawDocumentBuf>(&target.coll)
        .find(doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert!(!buckets.is_empty());
    let reply = run(
        &dst,
        &target.db,
        doc! {"insert": &target.coll, "documents": buckets.iter().map(|b| b.to_document().unwrap()).collect::<Vec<_>>(), "bypassDocumentValidation": true},
    )
    .await;
    assert_eq!(reply.get_i32("n").unwrap() as usize, buckets.len());
    let read = |c: Client| async move {
        let v: Vec<Document> = c
            .database("iot")
            .collection::<Document>("temps")
            .find(doc! {})
            .sort(doc! {"_id": 1})
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        v
    };
    let (a, b) = (read(src.clone()).await, read(dst.clone()).await);
    assert_eq!(a.len(), 50);
    assert_eq!(a, b, "measurements through the view are identical");
    let d = spec_of(&dst, &spec.ns).await.unwrap().unwrap();
    assert!(
        compare_specs(&spec, &d).is_empty(),
        "{:?}",
        compare_specs(&spec, &d)
    );
}

#[tokio::test]
async fn restore_skips_what_was_dropped_and_is_scoped_by_plan_and_direction() {
    let dst_rs = ReplicaSet::start().await;
    let dst = dst_rs.root_client().await;
    run(&dst, "shop", doc! {"create": "plain"}).await;
    let relax = store(&dst, "p5");
    let other_direction = RelaxationStore::new(dst.database(STATE_DB), "p5", Direction::Reverse);
    let other_plan = store(&dst, "p6");
    let plain = Namespace::new("shop", "plain");
    relax
        .record(&Relaxation::index_ttl(&plain, "no_such_index", 60))
        .await
        .unwrap();
    relax
        .record(&Relaxation::capped(
            &Namespace::new("shop", "dropped"),
            Some(4096),
            None,
        ))
        .await
        .unwrap();
    relax
        .record(&Relaxation::unique(&Namespace::new("shop", "dropped"), "u"))
        .await
        .unwrap();
    other_direction
        .record(&Relaxation::unique(&plain, "x"))
        .await
        .unwrap();
    other_plan
        .record(&Relaxation::unique(&plain, "y"))
        .await
        .unwrap();
    // Recording twice replaces, never duplicates.
    relax
        .record(&Relaxation::index_ttl(&plain, "no_such_index", 90))
        .await
        .unwrap();
    assert_eq!(relax.list().await.unwrap().len(), 3);
    let report = restore_relaxations(&dst, &relax).await.unwrap();
    assert_eq!(report.gone.len(), 3, "{report:?}");
    assert!(report.restored.is_empty());
    assert!(relax.list().await.unwrap().is_empty());
    assert_eq!(other_direction.list().await.unwrap().len(), 1);
    assert_eq!(other_plan.list().await.unwrap().len(), 1);
}
