//! `cutover check` against real replica sets: the example passes, problems fail with the
//! check that names them, unreachable clusters exit 3, and `check` writes nothing.

use crate::common::*;
use mongodb::bson::{doc, Document};
use mongodb::IndexModel;
use serde_json::Value;

fn example(name: &str) -> String {
    format!("{}/examples/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn find<'a>(report: &'a Value, id: &str, cluster: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .expect("checks array")
        .iter()
        .find(|c| c["id"] == id && c["cluster"] == cluster)
        .unwrap_or_else(|| panic!("no check `{id}` for `{cluster}` in {report:#}"))
}

async fn seed(c: &mongodb::Client) {
    let orders = c.database("shop").collection::<Document>("orders");
    orders
        .insert_many(
            (0..50).map(|i| doc! {"_id": i, "email": format!("u{i}@example.com"), "total": i * 10}),
        )
        .await
        .unwrap();
    orders
        .create_index(
            IndexModel::builder()
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
    c.database("crm")
        .collection::<Document>("users")
        .insert_one(doc! {"name": "ada"})
        .await
        .unwrap();
}

#[tokio::test]
async fn reversible_example_passes_and_check_writes_nothing() {
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let (s, d) = (src.root_client().await, dst.root_client().await);
    seed(&s).await;
    let (s_before, d_before) = (last_oplog_ts(&s).await, last_oplog_ts(&d).await);

    let out = run_cutover(
        &["check", &example("reversible.toml"), "--format", "json"],
        &[
            ("SOURCE_URI", &src.root_uri()),
            ("DESTINATION_URI", &dst.root_uri()),
        ],
    );
    let report = json(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{report:#}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(report["ok"], true);
    assert_eq!(report["plan"], "orders-to-new-cluster");
    for c in report["checks"].as_array().unwrap() {
        for key in ["id", "cluster", "status", "message"] {
            assert!(c.get(key).is_some(), "check without `{key}`: {c}");
        }
        assert_ne!(c["status"], "fail", "{c}");
    }
    for cluster in ["source", "destination"] {
        for id in [
            "reachable",
            "version",
            "topology",
            "privileges",
            "write-blocking",
        ] {
            assert_eq!(
                find(&report, id, cluster)["status"],
                "pass",
                "{id} on {cluster}"
            );
        }
    }
    assert_eq!(
        find(&report, "distinct-deployments", "plan")["status"],
        "pass"
    );
    let ns = find(&report, "namespaces", "source")["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(ns.contains("`shop.orders` (50 documents"), "{ns}");
    assert!(ns.contains("`crm.users` (1 document,"), "{ns}");
    assert!(ns.starts_with("2 collections selected"), "{ns}");
    let fmt = find(&report, "indexes.unique-format", "source")["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(fmt.contains("1 unique index checked on 1 member"), "{fmt}");
    assert_eq!(
        find(&report, "indexes.unique-on-destination", "destination")["status"],
        "pass"
    );
    find(&report, "oplog-window", "source");
    find(&report, "documents.dollar-fields", "source");

    // Text output carries the same checks.
    let text = run_cutover(
        &["check", &example("reversible.toml")],
        &[
            ("SOURCE_URI", &src.root_uri()),
            ("DESTINATION_URI", &dst.root_uri()),
        ],
    );
    assert_eq!(text.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(
        stdout.contains("privileges") && stdout.starts_with("plan `orders-to-new-cluster`"),
        "{stdout}"
    );

    // The filtered example selects `shop.orders` (listed) and not `crm.users`.
    let filtered = json(&run_cutover(
        &["check", &example("filtered.toml"), "--format", "json"],
        &[
            ("SOURCE_URI", &src.root_uri()),
            ("DESTINATION_URI", &dst.root_uri()),
        ],
    ));
    let ns = find(&filtered, "namespaces", "source")["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        ns.starts_with("1 collection selected") && ns.contains("`shop.orders`"),
        "{ns}"
    );
    assert!(!ns.contains("crm.users"), "{ns}");
    assert_eq!(filtered["ok"], true, "{filtered:#}");

    for out in [&out, &text] {
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!all.contains(ROOT_PASSWORD), "the password leaked: {all}");
    }

    // Nothing was written: no new oplog entry for user namespaces or the state database.
    assert!(oplog_writes_since(&s, s_before, "__cutover")
        .await
        .is_empty());
    assert!(oplog_writes_since(&d, d_before, "__cutover")
        .await
        .is_empty());
    assert!(!d
        .list_database_names()
        .await
        .unwrap()
        .contains(&"__cutover".to_string()));
    // Strictly no user-visible write at all: the last user-namespace entry is unchanged.
    let s_after = last_oplog_ts(&s).await;
    let newer = oplog_writes_since(&s, s_before, "__cutover").await;
    assert!(
        newer.is_empty(),
        "check wrote to the source up to {s_after:?}: {newer:?}"
    );
}

#[tokio::test]
async fn app_user_lacks_write_blocking_privileges() {
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    seed(&src.root_client().await).await;
    let out = run_cutover(
        &["check", &example("reversible.toml"), "--format", "json"],
        &[
            ("SOURCE_URI", &src.app_uri()),
            ("DESTINATION_URI", &dst.app_uri()),
        ],
    );
    let report = json(&out);
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    assert_eq!(report["ok"], false);
    for cluster in ["source", "destination"] {
        let c = find(&report, "privileges", cluster);
        assert_eq!(c["status"], "fail", "{c}");
        let msg = c["message"].as_str().unwrap();
        assert!(msg.contains("readWriteAnyDatabase@admin"), "{msg}");
        assert!(
            msg.contains("`setUserWriteBlockMode` on the cluster (granted by `backup`)"),
            "{msg}"
        );
        assert!(
            msg.contains("`bypassWriteBlockingMode` on the cluster (granted by `restore`)"),
            "{msg}"
        );
        // readWriteAnyDatabase has no `collMod` (commit needs it to restore unique/TTL settings).
        assert!(
            msg.contains("`collMod` on every database (granted by `dbAdminAnyDatabase`)"),
            "{msg}"
        );
        let fix = c["fix"].as_str().unwrap();
        assert!(
            fix.contains("`root`") && fix.contains("`backup`") && fix.contains("`restore`"),
            "{fix}"
        );
    }
}

#[tokio::test]
async fn data_problems_and_blocked_writes_are_reported() {
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let (s, d) = (src.root_client().await, dst.root_client().await);
    seed(&s).await;
    // A non-empty namespace on the destination.
    d.database("shop")
        .collection::<Document>("orders")
        .insert_one(doc! {"_id": "leftover"})
        .await
        .unwrap();
    // A unique and a non-unique index on one key pattern (distinct names).
    let people = s.database("crm").collection::<Document>("people");
    people
        .insert_one(doc! {"ssn": "1", "meta": {"$price": 3}})
        .await
        .unwrap();
    people
        .create_index(
            IndexModel::builder()
                .keys(doc! {"ssn": 1})
                .options(
                    mongodb::options::IndexOptions::builder()
                        .name("ssn_unique".to_string())
                        .unique(true)
                        .build(),
                )
                .build(),
        )
        .await
        .unwrap();
    people
        .create_index(
            IndexModel::builder()
                .keys(doc! {"ssn": 1})
                .options(
                    mongodb::options::IndexOptions::builder()
                        .name("ssn_plain".to_string())
                        .build(),
                )
                .build(),
        )
        .await
        .unwrap();
    // A view: its definition lives in `crm.system.views`, which is never synced.
    s.database("crm")
        .run_command(doc! {"create": "ada_only", "viewOn": "users", "pipeline": [{"$match": {"name": "ada"}}]})
        .await
        .unwrap();
    // The destination's user writes are blocked.
    d.database("admin")
        .run_command(doc! {"setUserWriteBlockMode": 1, "global": true})
        .await
        .unwrap();

    let (s_before, d_before) = (last_oplog_ts(&s).await, last_oplog_ts(&d).await);
    let out = run_cutover(
        &["check", &example("forward-only.toml"), "--format", "json"],
        &[
            ("SOURCE_URI", &src.root_uri()),
            ("DESTINATION_URI", &dst.root_uri()),
        ],
    );
    let report = json(&out);
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    let c = find(&report, "namespaces.destination-empty", "destination");
    assert_eq!(c["status"], "fail");
    assert!(
        c["message"].as_str().unwrap().contains("`shop.orders`"),
        "{c}"
    );
    let c = find(&report, "indexes.unique-conflict", "source");
    assert_eq!(c["status"], "fail");
    let msg = c["message"].as_str().unwrap();
    assert!(
        msg.contains("ssn_unique") && msg.contains("ssn_plain") && msg.contains("crm.people"),
        "{msg}"
    );
    let c = find(&report, "documents.dollar-fields", "source");
    assert_eq!(c["status"], "warn", "{c}");
    assert!(
        c["message"].as_str().unwrap().contains("`meta.$price`"),
        "{c}"
    );
    let c = find(&report, "namespaces.system", "source");
    assert!(
        c["message"]
            .as_str()
            .unwrap()
            .contains("`crm.system.views`"),
        "{c}"
    );
    let c = find(&report, "namespaces", "source");
    assert!(
        c["message"]
            .as_str()
            .unwrap()
            .contains("views: `crm.ada_only`"),
        "{c}"
    );
    let c = find(&report, "write-blocking", "destination");
    assert_eq!(c["status"], "warn", "{c}");
    assert!(c["message"].as_str().unwrap().contains("BLOCKED"), "{c}");
    assert_eq!(find(&report, "write-blocking", "source")["status"], "pass");
    // --deep scans everything and finds the same field.
    let deep = run_cutover(
        &[
            "check",
            &example("forward-only.toml"),
            "--format",
            "json",
            "--deep",
        ],
        &[
            ("SOURCE_URI", &src.root_uri()),
            ("DESTINATION_URI", &dst.root_uri()),
        ],
    );
    let deep = json(&deep);
    let c = find(&deep, "documents.dollar-fields", "source");
    assert!(
        c["message"].as_str().unwrap().contains("every document"),
        "{c}"
    );
    assert!(oplog_writes_since(&s, s_before, "__cutover")
        .await
        .is_empty());
    assert!(oplog_writes_since(&d, d_before, "__cutover")
        .await
        .is_empty());

    // Unblocked again, the state reads as not blocked.
    d.database("admin")
        .run_command(doc! {"setUserWriteBlockMode": 1, "global": false})
        .await
        .unwrap();
    let again = json(&run_cutover(
        &["check", &example("forward-only.toml"), "--format", "json"],
        &[
            ("SOURCE_URI", &src.root_uri()),
            ("DESTINATION_URI", &dst.root_uri()),
        ],
    ));
    assert_eq!(
        find(&again, "write-blocking", "destination")["status"],
        "pass"
    );
}

#[tokio::test]
async fn unreachable_cluster_exits_3_with_json() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = format!("mongodb://127.0.0.1:{port}/?replicaSet=gone");
    let dst = ReplicaSet::start().await;
    let out = run_cutover(
        &[
            "check",
            &example("forward-only.toml"),
            "--format",
            "json",
            "--connect-timeout",
            "2s",
        ],
        &[("SOURCE_URI", &dead), ("DESTINATION_URI", &dst.root_uri())],
    );
    let report = json(&out);
    assert_eq!(out.status.code(), Some(3), "{report:#}");
    assert_eq!(report["ok"], false);
    let c = find(&report, "reachable", "source");
    assert_eq!(c["status"], "fail");
    assert!(
        c["message"].as_str().unwrap().contains("unreachable"),
        "{c}"
    );
    assert!(c["fix"].is_string());
}

#[tokio::test]
async fn wrong_password_exits_3_and_never_shows_it() {
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let wrong = "Wr0ng-PassWord-xyz";
    let uri = src.uri_for(ROOT_USER, wrong);
    for format in ["text", "json"] {
        let out = run_cutover(
            &["check", &example("forward-only.toml"), "--format", format],
            &[("SOURCE_URI", &uri), ("DESTINATION_URI", &dst.root_uri())],
        );
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(3), "{all}");
        assert!(all.contains("authentication failed"), "{all}");
        assert!(!all.contains(wrong), "the password leaked: {all}");
        assert!(
            !all.contains(ROOT_PASSWORD),
            "the destination password leaked: {all}"
        );
    }
}

/// The built-in roles `check` names really grant what it says: a user with exactly
/// `readWriteAnyDatabase`, `dbAdminAnyDatabase`, `backup` and `restore` passes.
#[tokio::test]
async fn the_named_roles_are_enough() {
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    for rs in [&src, &dst] {
        rs.root_client()
            .await
            .database("admin")
            .run_command(doc! {"createUser": "migrator", "pwd": "migrator-pw",
            "roles": ["readWriteAnyDatabase", "dbAdminAnyDatabase", "backup", "restore"]})
            .await
            .unwrap();
    }
    seed(&src.root_client().await).await;
    let out = run_cutover(
        &["check", &example("reversible.toml"), "--format", "json"],
        &[
            ("SOURCE_URI", &src.uri_for("migrator", "migrator-pw")),
            ("DESTINATION_URI", &dst.uri_for("migrator", "migrator-pw")),
        ],
    );
    let report = json(&out);
    for cluster in ["source", "destination"] {
        assert_eq!(
            find(&report, "privileges", cluster)["status"],
            "pass",
            "{report:#}"
        );
    }
}

/// Two URIs naming different members of one replica set: static validation cannot tell, the
/// preflight can (same `replicaSetId`). The unique-index format check visits every member.
#[tokio::test]
async fn same_replica_set_through_different_members_and_formats_on_every_member() {
    let rs = ReplicaSet::start_with(RsOptions {
        members: 3,
        ..Default::default()
    })
    .await;
    let root = rs.root_client().await;
    seed(&root).await;
    // Wait until the secondaries have the index too.
    let majority = mongodb::options::WriteConcern::majority();
    root.database("shop")
        .collection::<Document>("orders")
        .insert_one(doc! {"_id": "sync-marker"})
        .write_concern(majority)
        .await
        .unwrap();
    let member_uri = |i: usize| {
        format!(
            "mongodb://{ROOT_USER}:{ROOT_PASSWORD}@127.0.0.1:{}/?replicaSet={}",
            rs.members[i].port, rs.name
        )
    };
    let out = run_cutover(
        &["check", &example("forward-only.toml"), "--format", "json"],
        &[
            ("SOURCE_URI", &member_uri(1)),
            ("DESTINATION_URI", &member_uri(2)),
        ],
    );
    let report = json(&out);
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    let c = find(&report, "distinct-deployments", "plan");
    assert_eq!(c["status"], "fail", "{c}");
    assert!(
        c["message"].as_str().unwrap().contains("replicaSetId"),
        "{c}"
    );

    // Hide member 2: `hello` no longer lists it, but its indexes count all the same.
    let admin = root.database("admin");
    let mut cfg = admin
        .run_command(doc! {"replSetGetConfig": 1})
        .await
        .unwrap()
        .get_document("config")
        .unwrap()
        .clone();
    let version = cfg.get_i32("version").unwrap();
    let mut members = cfg.get_array("members").unwrap().clone();
    let m2 = members[2].as_document_mut().unwrap();
    m2.insert("priority", 0);
    m2.insert("hidden", true);
    cfg.insert("members", members);
    cfg.insert("version", version + 1);
    admin
        .run_command(doc! {"replSetReconfig": cfg})
        .await
        .unwrap();
    let hello = admin.run_command(doc! {"hello": 1}).await.unwrap();
    assert_eq!(hello.get_array("hosts").unwrap().len(), 2, "{hello}");

    let uri = cutover::base::uri::ClusterUri::parse(&member_uri(0)).unwrap();
    let selector = cutover::plan::NamespaceSelector::new(&[], &[], "__cutover").unwrap();
    let findings =
        cutover::engine::catalog::index_format::check_unique_index_formats(&uri, &selector)
            .await
            .unwrap();
    let members: std::collections::BTreeSet<_> =
        findings.iter().filter_map(|f| f.member.clone()).collect();
    assert_eq!(members.len(), 3, "one finding per member: {findings:?}");
    for f in &findings {
        assert_eq!(f.index, "email_1");
        assert_eq!(f.namespace.to_string(), "shop.orders");
        assert_eq!(
            f.kind,
            cutover::engine::catalog::index_format::FindingKind::NewFormat { format_version: 14 },
            "{f}"
        );
        assert!(!f.is_problem());
    }
}

#[tokio::test]
async fn unique_indexes_compared_with_the_destination() {
    use cutover::engine::catalog::index_format::{compare_unique_indexes, FindingKind};
    use mongodb::options::{Collation, IndexOptions};
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let (s, d) = (src.root_client().await, dst.root_client().await);
    seed(&s).await;
    let unique = |name: &str| {
        IndexOptions::builder()
            .name(name.to_string())
            .unique(true)
            .build()
    };
    s.database("crm")
        .collection::<Document>("users")
        .create_index(
            IndexModel::builder()
                .keys(doc! {"name": 1})
                .options(unique("name_1"))
                .build(),
        )
        .await
        .unwrap();
    s.database("crm")
        .collection::<Document>("users")
        .create_index(
            IndexModel::builder()
                .keys(doc! {"login": 1})
                .options(unique("login_1"))
                .build(),
        )
        .await
        .unwrap();
    // Destination: `shop.orders.email` relaxed to non-unique (as during a sync), `crm.users.name`
    // with another collation, `crm.users.login` missing.
    d.database("shop")
        .collection::<Document>("orders")
        .create_index(IndexModel::builder().keys(doc! {"email": 1}).build())
        .await
        .unwrap();
    let fr = IndexOptions::builder()
        .name("name_1".to_string())
        .unique(true)
        .collation(Collation::builder().locale("fr").build())
        .build();
    d.database("crm")
        .collection::<Document>("users")
        .create_index(
            IndexModel::builder()
                .keys(doc! {"name": 1})
                .options(fr)
                .build(),
        )
        .await
        .unwrap();
    let selector = cutover::plan::NamespaceSelector::new(&[], &[], "__cutover").unwrap();
    let findings = compare_unique_indexes(&s, &d, &selector).await.unwrap();
    let by = |ix: &str| {
        findings
            .iter()
            .find(|f| f.index == ix)
            .unwrap_or_else(|| panic!("{ix}: {findings:?}"))
    };
    assert_eq!(by("email_1").kind, FindingKind::NotUniqueOnDestination);
    assert!(!by("email_1").is_problem());
    assert!(
        matches!(&by("name_1").kind, FindingKind::DifferentOnDestination { difference } if difference.contains("collation"))
    );
    assert_eq!(by("login_1").kind, FindingKind::MissingOnDestination);
    assert!(by("login_1").is_problem());
    assert_eq!(findings.len(), 3, "{findings:?}");

    // A source collection dropped between the listing and its `listIndexes` (a temporary
    // collection of a `$out`/rename, as torture soak seed 24 hit during validate-indexes):
    // `NamespaceNotFound` on the source means there is nothing to compare, not an error.
    s.database("admin")
        .run_command(doc! {
            "configureFailPoint": "failCommand",
            "mode": {"times": 1},
            "data": {"failCommands": ["listIndexes"], "errorCode": 26},
        })
        .await
        .unwrap();
    let vanished = compare_unique_indexes(&s, &d, &selector).await;
    s.database("admin")
        .run_command(doc! {"configureFailPoint": "failCommand", "mode": "off"})
        .await
        .unwrap();
    let vanished = vanished.expect("a collection gone from the source is skipped");
    assert!(
        !vanished.is_empty() && vanished.len() <= findings.len(),
        "{vanished:?}"
    );

    // `check` on a reversible plan fails on the conflicting collation only.
    let out = run_cutover(
        &["check", &example("reversible.toml"), "--format", "json"],
        &[
            ("SOURCE_URI", &src.root_uri()),
            ("DESTINATION_URI", &dst.root_uri()),
        ],
    );
    let report = json(&out);
    let c = find(&report, "indexes.unique-on-destination", "destination");
    assert_eq!(c["status"], "fail", "{c}");
    assert!(c["message"].as_str().unwrap().contains("name_1"), "{c}");
}

#[tokio::test]
async fn a_standalone_mongod_is_refused() {
    let standalone = Standalone::start();
    let dst = ReplicaSet::start().await;
    let out = run_cutover(
        &["check", &example("forward-only.toml"), "--format", "json"],
        &[
            ("SOURCE_URI", &standalone.uri()),
            ("DESTINATION_URI", &dst.root_uri()),
        ],
    );
    let report = json(&out);
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    let c = find(&report, "topology", "source");
    assert_eq!(c["status"], "fail", "{c}");
    assert!(
        c["message"]
            .as_str()
            .unwrap()
            .contains("change streams need a replica set"),
        "{c}"
    );
    assert!(c["fix"].as_str().unwrap().contains("--replSet"), "{c}");
    assert_eq!(find(&report, "topology", "destination")["status"], "pass");
    // No user: the privileges check cannot judge, and says why instead of listing everything.
    let c = find(&report, "privileges", "source");
    assert_eq!(c["status"], "warn", "{c}");
    assert!(
        c["message"].as_str().unwrap().contains("without a user"),
        "{c}"
    );
}
