//! `schemas/plan.schema.json` is generated from the Rust types and must not drift; the step
//! schema is a `oneOf` by `kind`; every schema key is documented in the generated
//! `docs/reference/plan.md`; the README is the front door.
use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::Value;

const REGENERATE: &str = "cargo run --quiet -- schema > schemas/plan.schema.json";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn checked_in() -> Value {
    let text =
        std::fs::read_to_string(root().join("schemas/plan.schema.json")).unwrap_or_else(|e| {
            panic!("schemas/plan.schema.json: {e}; generate it with `{REGENERATE}`")
        });
    serde_json::from_str(&text).expect("schema is JSON")
}

#[test]
fn checked_in_schema_matches_the_code() {
    let text = std::fs::read_to_string(root().join("schemas/plan.schema.json")).unwrap_or_default();
    assert!(
        text == cutover::plan::model::json_schema(),
        "schemas/plan.schema.json is out of date with src/plan/model.rs; regenerate it with:\n    {REGENERATE}"
    );
}

#[test]
fn the_binary_prints_the_same_schema() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
        .arg("schema")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        cutover::plan::model::json_schema()
    );
}

#[test]
fn steps_are_one_of_by_kind() {
    let s = checked_in();
    let step = &s["$defs"]["Step"];
    let variants = step["oneOf"].as_array().expect("Step is a oneOf");
    let mut kinds = Vec::new();
    for v in variants {
        assert_eq!(v["type"], "object", "{v}");
        assert_eq!(v["additionalProperties"], false, "{v}");
        assert!(
            v["required"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r == "kind"),
            "{v}"
        );
        kinds.push(
            v["properties"]["kind"]["const"]
                .as_str()
                .expect("kind is a const")
                .to_string(),
        );
    }
    assert_eq!(kinds, cutover::plan::model::STEP_KINDS);
    assert_eq!(s["properties"]["steps"]["items"]["$ref"], "#/$defs/Step");
}

fn collect(v: &Value, keys: &mut BTreeSet<String>, values: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::Object(props)) = m.get("properties") {
                keys.extend(props.keys().cloned());
            }
            if let Some(Value::String(c)) = m.get("const") {
                values.insert(c.clone());
            }
            if let Some(Value::Array(e)) = m.get("enum") {
                values.extend(e.iter().filter_map(|x| x.as_str().map(str::to_string)));
            }
            m.values().for_each(|x| collect(x, keys, values));
        }
        Value::Array(a) => a.iter().for_each(|x| collect(x, keys, values)),
        _ => {}
    }
}

/// `tests/it/reference.rs` proves `docs/reference/plan.md` is what the generator makes from
/// the schema; this proves the generator left no key or value of the schema out.
#[test]
fn the_plan_reference_documents_every_schema_key_and_value() {
    let reference = std::fs::read_to_string(root().join("docs/reference/plan.md"))
        .expect("docs/reference/plan.md (generate it: UPDATE_REFERENCE=1 ./scripts/test.sh --test it reference::)");
    let (mut keys, mut values) = (BTreeSet::new(), BTreeSet::new());
    collect(&checked_in(), &mut keys, &mut values);
    assert!(keys.len() > 15, "{keys:?}");
    let missing_keys: Vec<_> = keys
        .iter()
        .filter(|k| !reference.contains(&format!("`{k}`")))
        .collect();
    assert!(
        missing_keys.is_empty(),
        "docs/reference/plan.md does not document keys {missing_keys:?}"
    );
    let missing_values: Vec<_> = values
        .iter()
        .filter(|v| {
            !reference.contains(&format!("`{v}`"))
                && !reference.contains(&format!("`\"{v}\"`"))
                && !reference.contains(&format!("\"{v}\""))
        })
        .collect();
    assert!(
        missing_values.is_empty(),
        "docs/reference/plan.md does not document values {missing_values:?}"
    );
}

#[test]
fn readme_has_the_front_door() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    for needle in [
        "./scripts/demo.sh",
        "./scripts/test.sh",
        "docs/running-a-migration.md",
        "docs/reference/plan.md",
        "docs/reference/cli.md",
        "### Exit codes",
        "untested",
    ] {
        assert!(readme.contains(needle), "README lacks {needle}");
    }
    for code in ["`0`", "`1`", "`2`", "`3`"] {
        assert!(
            readme.contains(code),
            "README does not document exit code {code}"
        );
    }
}
