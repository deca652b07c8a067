//! The bad-input corpus: every plan in `tests/plans/invalid/` makes `cutover check` exit 2 with
//! a message naming the key and the fix; stderr is snapshotted (`tests/it/snapshots/`). A subset
//! runs with URIs of real replica sets to prove an invalid plan touches no cluster.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::*;

const SOURCE: &str = "mongodb://127.0.0.1:27017/?replicaSet=old";
const DESTINATION: &str = "mongodb://127.0.0.1:28017/?replicaSet=new";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn corpus() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("tests/plans/invalid"))
        .expect("tests/plans/invalid")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

/// Runs the binary from the crate root with a relative plan path, so messages are stable.
fn cutover(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(cutover_bin());
    cmd.current_dir(root())
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .env_remove("CUTOVER_LOG");
    for (k, _) in std::env::vars() {
        if k.starts_with("CUTOVER_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run cutover")
}

fn rel(p: &Path) -> String {
    p.strip_prefix(root()).unwrap().display().to_string()
}

#[test]
fn corpus_is_large_enough() {
    assert!(
        corpus().len() >= 30,
        "want at least 30 invalid plans, have {}",
        corpus().len()
    );
}

#[test]
fn every_invalid_plan_exits_2_with_a_located_message() {
    for file in corpus() {
        let path = rel(&file);
        let out = cutover(
            &["check", &path, "--no-connect"],
            &[("SOURCE_URI", SOURCE), ("DESTINATION_URI", DESTINATION)],
        );
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{path}: expected exit 2\n{stderr}"
        );
        assert!(
            out.stdout.is_empty(),
            "{path}: text errors go to stderr, stdout was {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(stderr.starts_with("error: "), "{path}: {stderr}");
        assert!(
            stderr.contains(&format!("--> {path}")),
            "{path}: the message must point into the file\n{stderr}"
        );
        assert!(
            stderr.contains("nothing was written to any cluster"),
            "{path}: {stderr}"
        );
        assert!(
            stderr.contains("= hint:") || stderr.contains("= allowed:"),
            "{path}: says how to fix it\n{stderr}"
        );
        let stem = file.file_stem().unwrap().to_string_lossy().into_owned();
        insta::assert_snapshot!(format!("invalid__{stem}"), stderr);
    }
}

#[test]
fn all_errors_are_reported_at_once() {
    let out = cutover(
        &[
            "check",
            "tests/plans/invalid/many-errors-at-once.toml",
            "--no-connect",
        ],
        &[("SOURCE_URI", SOURCE), ("DESTINATION_URI", DESTINATION)],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "unknown key `owner`",
        "did you mean `reversible`?",
        "`options.max_lag`",
        "`options.exclude[0].database_regex` is not a valid regular expression",
        "`steps[1].timeout`",
        "`steps[2]`: `commit` must follow a `sync` or a `reverse`",
        "has 6 errors",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in:\n{stderr}");
    }
}

#[test]
fn json_report_for_an_invalid_plan() {
    let out = cutover(
        &[
            "check",
            "tests/plans/invalid/many-errors-at-once.toml",
            "--no-connect",
            "--format",
            "json",
        ],
        &[("SOURCE_URI", SOURCE), ("DESTINATION_URI", DESTINATION)],
    );
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(v["ok"], false);
    assert!(v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["cluster"] == "plan" && c["status"] == "fail"));
    insta::assert_snapshot!(
        "invalid_json__many-errors-at-once",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn invalid_overrides_from_the_environment_and_the_command_line() {
    let example = "examples/reversible.toml";
    let env = [("SOURCE_URI", SOURCE), ("DESTINATION_URI", DESTINATION)];
    let out = cutover(
        &["check", example, "--no-connect", "--set", "options.max_lag"],
        &env,
    );
    assert_eq!(out.status.code(), Some(2));
    insta::assert_snapshot!(
        "override__set_without_equals",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = cutover(
        &[
            "check",
            example,
            "--no-connect",
            "--set",
            "options.build_indexes=never",
        ],
        &env,
    );
    assert_eq!(out.status.code(), Some(2));
    insta::assert_snapshot!(
        "override__set_build_indexes_never",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut env2 = env.to_vec();
    env2.push(("CUTOVER_PLAN__OPTIONS__WRITE_BLOCKING", "sideways"));
    let out = cutover(&["check", example, "--no-connect"], &env2);
    assert_eq!(out.status.code(), Some(2));
    insta::assert_snapshot!(
        "override__env_write_blocking",
        String::from_utf8_lossy(&out.stderr)
    );

    // The spelling before `CUTOVER_PLAN__` is still read, with a warning naming the new one;
    // the new spelling wins when both are set; a CI's own `CUTOVER_BIN` is not a plan key.
    let mut env3 = env.to_vec();
    env3.push(("CUTOVER_OPTIONS__MAX_LAG", "not a duration"));
    env3.push(("CUTOVER_BIN", "/usr/local/bin/cutover"));
    let out = cutover(&["check", example, "--no-connect"], &env3);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("CUTOVER_OPTIONS__MAX_LAG"), "{err}");
    env3.push(("CUTOVER_PLAN__OPTIONS__MAX_LAG", "7s"));
    let out = cutover(&["check", example, "--no-connect"], &env3);
    // `check` reports warnings as checks on stdout.
    let err = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("old spelling") && err.contains("rename it `CUTOVER_PLAN__OPTIONS__MAX_LAG`"),
        "{err}"
    );

    let out = cutover(&["check", "tests/plans/does-not-exist.toml"], &env);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the plan file"));
    let out = cutover(&["check"], &env);
    assert_eq!(out.status.code(), Some(2), "a bad command line exits 2");
}

/// With real clusters behind the URIs, an invalid plan still exits 2 before connecting, and
/// neither cluster sees a write.
#[tokio::test]
async fn invalid_plans_touch_no_real_cluster() {
    let (src, dst) = tokio::join!(ReplicaSet::start(), ReplicaSet::start());
    let (s, d) = (src.root_client().await, dst.root_client().await);
    let (s_before, d_before) = (last_oplog_ts(&s).await, last_oplog_ts(&d).await);
    let (s_uri, d_uri) = (src.root_uri(), dst.root_uri());
    for case in [
        "reverse-not-reversible",
        "filters-with-reverse",
        "build-indexes-never-reversible",
        "unknown-step-kind",
        "invalid-database-regex",
        "many-errors-at-once",
    ] {
        let path = format!("tests/plans/invalid/{case}.toml");
        let out = cutover(
            &["check", &path],
            &[("SOURCE_URI", &s_uri), ("DESTINATION_URI", &d_uri)],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{case}: {stderr}");
        assert!(!stderr.contains(ROOT_PASSWORD), "{case}: password leaked");
    }
    assert!(oplog_writes_since(&s, s_before, "__cutover")
        .await
        .is_empty());
    assert!(oplog_writes_since(&d, d_before, "__cutover")
        .await
        .is_empty());
    let dbs = d.list_database_names().await.unwrap();
    assert!(!dbs.iter().any(|db| db == "__cutover"), "{dbs:?}");
}

#[test]
fn same_replica_set_name_with_other_hosts_is_a_warning() {
    let out = cutover(
        &["check", "examples/forward-only.toml", "--no-connect"],
        &[
            ("SOURCE_URI", "mongodb://old-a:27017/?replicaSet=rs0"),
            ("DESTINATION_URI", "mongodb://new-a:27017/?replicaSet=rs0"),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stderr}{stdout}");
    assert!(stdout.contains("warn  plan"), "{stdout}");
    assert!(
        stdout.contains("source and destination both name replica set `rs0`"),
        "{stdout}"
    );
}
