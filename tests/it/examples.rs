//! Every plan in `examples/` loads and validates (statically, and through the binary).

use std::collections::BTreeMap;
use std::path::PathBuf;

use cutover::plan::{load_plan, Overrides};

const SOURCE: &str = "mongodb://127.0.0.1:27017,127.0.0.1:27018/?replicaSet=old";
const DESTINATION: &str = "mongodb://127.0.0.1:28017,127.0.0.1:28018/?replicaSet=new";

fn examples() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("examples/ exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_is_valid() {
    let files = examples();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for required in [
        "forward-only.toml",
        "reversible.toml",
        "filtered.toml",
        "ci-approved.toml",
    ] {
        assert!(
            names.iter().any(|n| n == required),
            "examples/{required} is missing; have {names:?}"
        );
    }
    let env: BTreeMap<String, String> = [("SOURCE_URI", SOURCE), ("DESTINATION_URI", DESTINATION)]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for file in &files {
        let overrides = Overrides {
            sets: Vec::new(),
            env: env.clone(),
        };
        match load_plan(file, &overrides) {
            Ok((plan, warnings)) => {
                assert!(
                    warnings.is_empty(),
                    "{}: unexpected warnings: {warnings:?}",
                    file.display()
                );
                assert!(!plan.steps.is_empty());
            }
            Err(diags) => {
                let text: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
                panic!("{} is invalid:\n{}", file.display(), text.join("\n"));
            }
        }
        let text = std::fs::read_to_string(file).unwrap();
        assert!(
            text.trim_start().starts_with('#'),
            "{}: start with a comment saying what it is for",
            file.display()
        );
    }
}

#[test]
fn every_example_passes_check_without_connecting() {
    for file in examples() {
        let out = crate::common::run_cutover(
            &["check", file.to_str().unwrap(), "--no-connect"],
            &[("SOURCE_URI", SOURCE), ("DESTINATION_URI", DESTINATION)],
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}{}",
            file.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_filtered_example_selects_what_its_comments_say() {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/filtered.toml");
    let env = [("SOURCE_URI", SOURCE), ("DESTINATION_URI", DESTINATION)]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let (plan, _) = load_plan(
        &file,
        &Overrides {
            sets: Vec::new(),
            env,
        },
    )
    .expect("valid");
    let s = &plan.selector;
    assert!(s.selects("shop", "orders") && s.selects("shop", "users"));
    assert!(!s.selects("shop", "carts"));
    assert!(s.selects("billing", "invoices"));
    assert!(!s.selects("billing", "scratch_1"));
    assert!(!s.selects("tmp_2024", "x"));
}
