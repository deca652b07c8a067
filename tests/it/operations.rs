//! Operating a migration from the command line: `cutover approve` from a separate process,
//! `cutover unblock` (and its `--yes` guard), and credentials never leaving the URIs.

use std::process::Output;
use std::time::Duration;

use crate::common::env_refs as refs;
use crate::common::*;
use mongodb::bson::{doc, Document};
use mongodb::Client;

const MANUAL: &str = r#"
[options]
write_blocking = "source-and-destination"
max_lag = "2s"

[[steps]]
kind = "sync"

[[steps]]
kind = "commit"
approval = "manual"
timeout = "3m"
"#;

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

async fn seed(c: &Client) {
    c.database("shop")
        .collection::<Document>("orders")
        .insert_many((0..500).map(|i| doc! {"_id": i, "item": format!("item-{i}"), "qty": i % 7}))
        .await
        .unwrap();
}

fn env_of(src: &str, dst: &str) -> Vec<(&'static str, String)> {
    vec![
        ("SOURCE_URI", src.to_string()),
        ("DESTINATION_URI", dst.to_string()),
    ]
}

async fn app_insert(rs: &ReplicaSet, db: &str, id: i64) -> bool {
    rs.app_client()
        .await
        .database(db)
        .collection::<Document>("probe")
        .insert_one(doc! {"_id": id})
        .await
        .is_ok()
}

/// A plan with a manual commit: the run replicates and waits (status says so) until
/// `cutover approve` runs as another process; the approval record names the host and time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_commit_waits_for_cutover_approve() {
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let s = src.root_client().await;
    seed(&s).await;
    let (_d, plan) = write_plan(&plan_text("approve-me", MANUAL));
    let plan = plan.to_str().unwrap().to_string();
    let env = env_of(&src.root_uri(), &dst.root_uri());
    let run = tokio::task::spawn_blocking({
        let (plan, env) = (plan.clone(), env.clone());
        move || run_cutover(&["run", &plan], &refs(&env))
    });
    let v = wait_status(
        &plan,
        &env,
        &[],
        Duration::from_secs(120),
        "the run to wait for approval",
        |v| v["phase"] == "waiting for approval",
    )
    .await;
    assert_eq!(v["state"], "RUNNING", "{v}");
    assert_eq!(v["can_write"], false, "{v}");
    // It keeps waiting (and replicating) until approved.
    s.database("shop")
        .collection::<Document>("orders")
        .insert_one(doc! {"_id": 10_000, "while": "waiting"})
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!run.is_finished(), "the run must wait for the approval");
    let v = status_json(&plan, &env, &[]).await;
    assert_eq!(v["phase"], "waiting for approval", "{v}");
    assert_ne!(v["state"], "COMMITTED", "{v}");

    let o = run_cutover(&["approve", &plan, "--note", "ci job 42"], &refs(&env));
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("approved the commit at step 1"),
        "{}",
        show(&o)
    );
    let o = run.await.unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("write-blocked window"),
        "{}",
        show(&o)
    );
    let d = dst.root_client().await;
    assert_same_data(&s, &d, "__cutover").await;
    let v = status_json(&plan, &env, &[]).await;
    assert_eq!(v["state"], "COMMITTED", "{v}");

    // The approval record: host, time, note; no credentials.
    let rec = d
        .database("__cutover")
        .collection::<Document>("approvals")
        .find_one(doc! {"plan": "approve-me"})
        .await
        .unwrap()
        .expect("an approval record");
    let host = rec.get_str("host").expect("host");
    assert!(!host.is_empty(), "{rec}");
    let when = rec.get_datetime("when").expect("when");
    let age = mongodb::bson::DateTime::now().timestamp_millis() - when.timestamp_millis();
    assert!((0..600_000).contains(&age), "approval time {when} in {rec}");
    assert_eq!(rec.get_str("note").unwrap(), "ci job 42");
    assert_eq!(rec.get_i64("step").unwrap(), 1);
    let text = format!("{rec:?}");
    for secret in [ROOT_PASSWORD, APP_PASSWORD, "mongodb://"] {
        assert!(
            !text.contains(secret),
            "approval record holds `{secret}`: {text}"
        );
    }

    // Nothing left to approve.
    let o = run_cutover(&["approve", &plan], &refs(&env));
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("already done"),
        "{}",
        show(&o)
    );
}

/// `cutover unblock`: without `--yes` it exits 2 and changes nothing; with it, the cluster
/// accepts the application's writes again and status no longer lists it as blocked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unblock_needs_yes_and_releases_the_block() {
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let s = src.root_client().await;
    let d = dst.root_client().await;
    seed(&s).await;
    let (_d, plan) = write_plan(&plan_text("unblock-me", FORWARD));
    let plan = plan.to_str().unwrap().to_string();
    let env = env_of(&src.root_uri(), &dst.root_uri());

    // The sync blocks user writes on the destination.
    let o = run_cutover(&["run", &plan, "--max-steps", "1"], &refs(&env));
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        !app_insert(&dst, "scratch", 1).await,
        "destination must be blocked"
    );
    let v = status_json(&plan, &env, &[]).await;
    assert_eq!(v["blocked"][0]["cluster"], "destination", "{v}");

    let o = run_cutover(&["unblock", &plan, "--cluster", "destination"], &refs(&env));
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--yes"),
        "{}",
        show(&o)
    );
    assert!(
        !app_insert(&dst, "scratch", 2).await,
        "unblock without --yes must change nothing"
    );
    let v = status_json(&plan, &env, &[]).await;
    assert_eq!(v["blocked"][0]["cluster"], "destination", "{v}");

    let o = run_cutover(
        &["unblock", &plan, "--cluster", "destination", "--yes"],
        &refs(&env),
    );
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(app_insert(&dst, "scratch", 3).await, "destination released");
    let v = status_json(&plan, &env, &[]).await;
    assert_eq!(v["blocked"].as_array().unwrap().len(), 0, "{v}");
    let run_doc = d
        .database("__cutover")
        .collection::<Document>("runs")
        .find_one(doc! {"_id": "unblock-me"})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        run_doc
            .get_document("last_unblock")
            .unwrap()
            .get_str("cluster")
            .unwrap(),
        "destination"
    );
    d.database("scratch").drop().await.unwrap();

    // The commit blocks the source for good (source-and-destination); unblock releases it.
    let o = run_cutover(&["run", &plan], &refs(&env));
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_same_data(&s, &d, "__cutover").await;
    assert!(
        !app_insert(&src, "scratch", 4).await,
        "source must be blocked"
    );
    let v = status_json(&plan, &env, &[]).await;
    assert_eq!(v["blocked"][0]["cluster"], "source", "{v}");
    let o = run_cutover(&["unblock", &plan, "--cluster", "source"], &refs(&env));
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(!app_insert(&src, "scratch", 5).await, "still blocked");
    let o = run_cutover(
        &["unblock", &plan, "--cluster", "source", "--yes"],
        &refs(&env),
    );
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("source cluster are no longer blocked"),
        "{}",
        show(&o)
    );
    assert!(app_insert(&src, "scratch", 6).await, "source released");
    let v = status_json(&plan, &env, &[]).await;
    assert_eq!(v["blocked"].as_array().unwrap().len(), 0, "{v}");
}

/// Every output of one command: stdout and stderr.
fn text_of(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

const WRONG_PASSWORD: &str = "Wr0ng-Secret-pw";

/// Runs every command (successful and failing variants, text and JSON output, text and JSON
/// logs) with a known password in the URIs, and searches every output and every document of
/// the state database for the password and the full URI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_appear_in_any_output_or_the_state_store() {
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let s = src.root_client().await;
    seed(&s).await;
    let body = format!("{MANUAL}\n[[steps]]\nkind = \"verify\"\n");
    let (_d, plan) = write_plan(&plan_text("secretive", &body));
    let plan = plan.to_str().unwrap().to_string();
    let env = env_of(&src.root_uri(), &dst.root_uri());
    let mut outputs: Vec<(String, Output)> = Vec::new();
    fn record(label: &str, o: Output, outputs: &mut Vec<(String, Output)>) {
        outputs.push((label.to_string(), o));
    }
    let logs = ["--log-format", "json"];

    record("schema", run_cutover(&["schema"], &[]), &mut outputs);
    for fmt in ["text", "json"] {
        let o = run_cutover(&["check", &plan, "--format", fmt, "-v"], &refs(&env));
        assert!(matches!(o.status.code(), Some(0 | 1)), "{}", show(&o));
        record(&format!("check {fmt}"), o, &mut outputs);
    }
    let o = run_cutover(&["check", &plan, "--log-format", "json", "-v"], &refs(&env));
    record("check json logs", o, &mut outputs);

    // The run, in the background, with JSON logs at debug level.
    let run = tokio::task::spawn_blocking({
        let (plan, env) = (plan.clone(), env.clone());
        move || {
            run_cutover(
                &[
                    "run",
                    &plan,
                    "--format",
                    "json",
                    "--log-format",
                    "json",
                    "-v",
                ],
                &refs(&env),
            )
        }
    });
    wait_status(
        &plan,
        &env,
        &[],
        Duration::from_secs(120),
        "the run to wait for approval",
        |v| v["phase"] == "waiting for approval",
    )
    .await;
    for args in [
        vec!["status", plan.as_str()],
        vec!["status", plan.as_str(), "--format", "json"],
        vec!["status", plan.as_str(), logs[0], logs[1], "-v"],
    ] {
        let o = run_cutover(&args, &refs(&env));
        assert_eq!(o.status.code(), Some(0), "{}", show(&o));
        record(&args.join(" "), o, &mut outputs);
    }
    let o = run_cutover(
        &["approve", &plan, "--log-format", "json", "-v"],
        &refs(&env),
    );
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    record("approve", o, &mut outputs);
    let o = run.await.unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    record("run", o, &mut outputs);
    let o = run_cutover(&["run", &plan], &refs(&env));
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    record("run again (text)", o, &mut outputs);
    for fmt in ["text", "json"] {
        let o = run_cutover(
            &[
                "verify",
                &plan,
                "--format",
                fmt,
                "--log-format",
                "json",
                "-v",
            ],
            &refs(&env),
        );
        assert_eq!(o.status.code(), Some(0), "{}", show(&o));
        record(&format!("verify {fmt}"), o, &mut outputs);
    }
    let o = run_cutover(&["unblock", &plan, "--cluster", "source"], &refs(&env));
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    record("unblock without --yes", o, &mut outputs);
    let o = run_cutover(
        &[
            "unblock",
            &plan,
            "--cluster",
            "source",
            "--yes",
            "--log-format",
            "json",
            "-v",
        ],
        &refs(&env),
    );
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    record("unblock", o, &mut outputs);

    // Failing variants: a wrong password, an unreachable cluster, an unparsable URI.
    let wrong_src = src.uri_for(ROOT_USER, WRONG_PASSWORD);
    let wrong_dst = dst.uri_for(ROOT_USER, WRONG_PASSWORD);
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead =
        format!("mongodb://{ROOT_USER}:{ROOT_PASSWORD}@127.0.0.1:{dead_port}/?replicaSet=gone");
    let bad = format!("mongodb://{ROOT_USER}:{ROOT_PASSWORD}@127.0.0.1:notaport/");
    let variants = [
        ("wrong source password", env_of(&wrong_src, &dst.root_uri())),
        (
            "wrong destination password",
            env_of(&src.root_uri(), &wrong_dst),
        ),
        ("unreachable source", env_of(&dead, &dst.root_uri())),
        ("unreachable destination", env_of(&src.root_uri(), &dead)),
        ("unparsable source uri", env_of(&bad, &dst.root_uri())),
    ];
    for (label, venv) in &variants {
        for args in [
            vec!["check", plan.as_str(), "--connect-timeout", "2s"],
            vec![
                "check",
                plan.as_str(),
                "--connect-timeout",
                "2s",
                "--format",
                "json",
            ],
            vec![
                "run",
                plan.as_str(),
                "--connect-timeout",
                "2s",
                "--log-format",
                "json",
                "-v",
            ],
            vec![
                "run",
                plan.as_str(),
                "--connect-timeout",
                "2s",
                "--format",
                "json",
            ],
            vec![
                "status",
                plan.as_str(),
                "--connect-timeout",
                "2s",
                "--format",
                "json",
            ],
            vec!["approve", plan.as_str(), "--connect-timeout", "2s"],
            vec![
                "verify",
                plan.as_str(),
                "--connect-timeout",
                "2s",
                "--format",
                "json",
            ],
            vec![
                "unblock",
                plan.as_str(),
                "--cluster",
                "source",
                "--yes",
                "--connect-timeout",
                "2s",
            ],
        ] {
            let o = run_cutover(&args, &refs(venv));
            record(&format!("{label}: {}", args.join(" ")), o, &mut outputs);
        }
    }
    // The failing variants did fail, with the cluster named.
    let failed = outputs
        .iter()
        .filter(|(l, o)| l.starts_with("wrong source password: run") && o.status.code() == Some(3))
        .count();
    assert_eq!(failed, 2, "a wrong password must fail the run with exit 3");
    let auth = outputs
        .iter()
        .find(|(l, _)| l.starts_with("wrong source password: check"))
        .map(|(_, o)| text_of(o))
        .unwrap();
    assert!(auth.contains("authentication"), "{auth}");

    let needles: Vec<String> = vec![
        ROOT_PASSWORD.to_string(),
        WRONG_PASSWORD.to_string(),
        src.root_uri(),
        dst.root_uri(),
        dead.clone(),
        format!("{ROOT_USER}:{ROOT_PASSWORD}"),
    ];
    assert!(outputs.len() >= 50, "{} outputs", outputs.len());
    for (label, o) in &outputs {
        let t = text_of(o);
        for n in &needles {
            assert!(!t.contains(n.as_str()), "`{label}` printed `{n}`:\n{t}");
        }
    }

    // Every document of every collection of the state database.
    let d = dst.root_client().await;
    let state = d.database("__cutover");
    let names = state.list_collection_names().await.unwrap();
    assert!(names.iter().any(|n| n == "runs"), "{names:?}");
    let mut docs = 0;
    for name in names {
        use futures::TryStreamExt;
        let all: Vec<Document> = state
            .collection::<Document>(&name)
            .find(doc! {})
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        for doc in all {
            docs += 1;
            let text = serde_json::to_string(&doc).unwrap();
            for n in &needles {
                assert!(
                    !text.contains(n.as_str()),
                    "`__cutover.{name}` holds `{n}`: {text}"
                );
            }
        }
    }
    assert!(docs > 3, "only {docs} state documents");
}
