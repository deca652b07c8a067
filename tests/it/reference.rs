//! The generated references and the documentation's links.
//!
//! `docs/reference/plan.md` is generated from the plan's JSON Schema
//! (`cutover::plan::model::json_schema()`, itself generated from `src/plan/model.rs`) and
//! `docs/reference/cli.md` from the command line's clap definition (`cutover::cli::Cli`).
//! The checked-in copies must equal what the code generates; `UPDATE_REFERENCE=1` writes them.
//! Every relative link in `README.md` and `docs/**/*.md` must point to a file that exists and,
//! for an `#anchor` into a markdown file, to a heading of it (GitHub's slugs).
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

const REGENERATE: &str = "UPDATE_REFERENCE=1 ./scripts/test.sh --test it reference::";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Compares a checked-in reference with the generated text, or writes it when
/// `UPDATE_REFERENCE` is set.
fn check_generated(rel: &str, generated: &str) {
    let path = root().join(rel);
    if std::env::var_os("UPDATE_REFERENCE").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, generated).unwrap();
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    if checked_in != generated {
        let line = checked_in
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| checked_in.lines().count().min(generated.lines().count()))
            + 1;
        panic!(
            "{rel} is out of date with the code (first difference at line {line}); regenerate it \
             with:\n    {REGENERATE}\nand commit the result"
        );
    }
}

/// One line of text for a table cell.
fn cell(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

/// `cell`, ending with a full stop (clap drops a help text's last one).
fn sentence(text: &str) -> String {
    let mut s = cell(text);
    if !s.is_empty() && !s.ends_with('.') {
        s.push('.');
    }
    s
}

// ---------------------------------------------------------------------------------------------
// docs/reference/plan.md
// ---------------------------------------------------------------------------------------------

struct PlanDoc<'a> {
    defs: &'a serde_json::Map<String, Value>,
    /// Tables to document, in the order they are first met: definition name → TOML headers.
    tables: Vec<(String, Vec<String>)>,
}

impl<'a> PlanDoc<'a> {
    fn def_name(v: &Value) -> Option<&str> {
        v.get("$ref")?.as_str()?.strip_prefix("#/$defs/")
    }

    fn is_object(def: &Value) -> bool {
        def.get("properties").is_some()
    }

    fn enum_values(def: &Value) -> Option<Vec<(String, String)>> {
        let variants = def.get("oneOf")?.as_array()?;
        variants
            .iter()
            .map(|v| {
                Some((
                    v.get("const")?.as_str()?.to_string(),
                    v.get("description")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                ))
            })
            .collect()
    }

    fn note_table(&mut self, def: &str, header: String) {
        match self.tables.iter_mut().find(|(d, _)| d == def) {
            Some((_, headers)) => headers.push(header),
            None => self.tables.push((def.to_string(), vec![header])),
        }
    }

    /// The type column of a property, noting the tables it leads to.
    fn type_of(&mut self, v: &Value, path: &str, in_array: bool) -> String {
        if let Some(name) = Self::def_name(v) {
            let def = &self.defs[name];
            if Self::is_object(def) {
                let header = if in_array {
                    format!("[[{path}]]")
                } else {
                    format!("[{path}]")
                };
                let anchor = format!("`{header}`");
                self.note_table(name, header);
                return format!("table ({anchor})");
            }
            if name == "Step" {
                self.note_table(name, format!("[[{path}]]"));
                return "table, by `kind`".to_string();
            }
            if Self::enum_values(def).is_some() {
                return "string".to_string();
            }
            if name == "Duration" {
                return "duration".to_string();
            }
            return def
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("value")
                .to_string();
        }
        let types: Vec<&str> = match v.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let t = types.into_iter().find(|t| *t != "null").unwrap_or("value");
        match t {
            "array" => {
                let items = v.get("items").cloned().unwrap_or(Value::Null);
                let inner = self.type_of(&items, path, true);
                if let Some(table) = inner.strip_prefix("table") {
                    format!("array of tables{table}")
                } else {
                    format!("array of {inner}s")
                }
            }
            "boolean" => "bool".to_string(),
            other => other.to_string(),
        }
    }

    /// The description column: the property's description, then the values of an enum.
    fn describe(&self, v: &Value) -> String {
        let mut text = v
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let def = Self::def_name(v).map(|n| &self.defs[n]);
        if let Some(values) = def.and_then(Self::enum_values) {
            let list: Vec<String> = values
                .iter()
                .map(|(value, desc)| format!("`\"{value}\"`: {}", sentence(desc)))
                .collect();
            let _ = write!(text, " One of: {}", list.join(" "));
        }
        cell(&text)
    }

    fn default_of(v: &Value, required: bool) -> String {
        if required {
            return "required".to_string();
        }
        match v.get("default") {
            None => "—".to_string(),
            Some(Value::Object(m)) if !m.is_empty() => "see the table".to_string(),
            Some(d) => format!("`{}`", cell(&d.to_string())),
        }
    }

    /// A table of the object `obj`'s keys (the step's `kind` left out).
    fn table(&mut self, obj: &Value, path: &str, out: &mut String) {
        let required: BTreeSet<&str> = obj
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let empty = serde_json::Map::new();
        let props = obj
            .get("properties")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let rows: Vec<_> = props.iter().filter(|(k, _)| k.as_str() != "kind").collect();
        if rows.is_empty() {
            out.push_str("No other keys.\n\n");
            return;
        }
        out.push_str("| key | type | default | description |\n| --- | --- | --- | --- |\n");
        for (key, v) in rows {
            let sub = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            let ty = self.type_of(v, &sub, false);
            let default = Self::default_of(v, required.contains(key.as_str()));
            let _ = writeln!(out, "| `{key}` | {ty} | {default} | {} |", self.describe(v));
        }
        out.push('\n');
    }
}

fn plan_reference() -> String {
    let schema: Value =
        serde_json::from_str(&cutover::plan::model::json_schema()).expect("the schema is JSON");
    let defs = schema["$defs"].as_object().expect("$defs");
    let mut doc = PlanDoc {
        defs,
        tables: Vec::new(),
    };
    let mut out = String::new();
    out.push_str(
        "# Plan reference\n\n\
         <!-- Generated by tests/it/reference.rs from the plan's JSON Schema; do not edit. -->\n\n\
         Every key of a plan file, generated from the plan's JSON Schema \
         ([`schemas/plan.schema.json`](../../schemas/plan.schema.json), itself generated from \
         the doc comments of `src/plan/model.rs`): do not edit this file, edit those and run \
         `",
    );
    out.push_str(REGENERATE);
    out.push_str(
        "`. How to write a plan, secrets, overrides from the environment and validation: \
         [Writing a plan](../plan.md). Part of the [guide](../README.md).\n\n",
    );
    if let Some(d) = schema.get("description").and_then(Value::as_str) {
        let _ = writeln!(out, "{}\n", cell(d));
    }
    out.push_str("## Top level\n\n");
    doc.table(&schema, "", &mut out);

    let mut done = 0;
    while done < doc.tables.len() {
        let (name, headers) = doc.tables[done].clone();
        done += 1;
        let def = &defs[&name];
        let title: Vec<String> = headers.iter().map(|h| format!("`{h}`")).collect();
        let _ = writeln!(out, "## {}\n", title.join(", "));
        if let Some(d) = def.get("description").and_then(Value::as_str) {
            let _ = writeln!(out, "{}\n", cell(d));
        }
        // The TOML path of the first header, for nested tables.
        let path = headers[0]
            .trim_matches(|c| c == '[' || c == ']')
            .to_string();
        if let Some(variants) = def.get("oneOf").and_then(Value::as_array) {
            for v in variants {
                let kind = v["properties"]["kind"]["const"].as_str().expect("a kind");
                let _ = writeln!(out, "### `kind = \"{kind}\"`\n");
                if let Some(d) = v.get("description").and_then(Value::as_str) {
                    let _ = writeln!(out, "{}\n", cell(d));
                }
                doc.table(v, &path, &mut out);
            }
        } else {
            doc.table(def, &path, &mut out);
        }
    }

    out.push_str("## Value types\n\n");
    if let Some(d) = defs.get("Duration") {
        let _ = writeln!(
            out,
            "**duration** (a string): {}",
            cell(d.get("description").and_then(Value::as_str).unwrap_or(""))
        );
        if let Some(p) = d.get("pattern").and_then(Value::as_str) {
            let _ = writeln!(out, "Pattern: `{p}`.");
        }
        out.push('\n');
    }
    out.push_str(
        "A key marked required must be set; a key with a default may be left out; `—`: no \
         default, absent means what the description says.\n",
    );
    out
}

#[test]
fn plan_reference_is_up_to_date() {
    check_generated("docs/reference/plan.md", &plan_reference());
}

// ---------------------------------------------------------------------------------------------
// docs/reference/cli.md
// ---------------------------------------------------------------------------------------------

fn arg_name(a: &clap::Arg) -> String {
    let value = a
        .get_value_names()
        .and_then(|v| v.first())
        .map(|v| v.to_string())
        .unwrap_or_else(|| a.get_id().as_str().to_uppercase());
    if a.is_positional() {
        return format!("`<{value}>`");
    }
    let mut names = Vec::new();
    if let Some(s) = a.get_short() {
        names.push(format!("-{s}"));
    }
    if let Some(l) = a.get_long() {
        names.push(format!("--{l}"));
    }
    let mut name = names.join(", ");
    if a.get_action().takes_values() {
        let _ = write!(name, " <{value}>");
    }
    format!("`{name}`")
}

fn args_table(args: &[&clap::Arg], out: &mut String) {
    if args.is_empty() {
        out.push_str("No arguments.\n\n");
        return;
    }
    out.push_str("| argument | default | description |\n| --- | --- | --- |\n");
    for a in args {
        let help = a
            .get_long_help()
            .or_else(|| a.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        let mut help = sentence(&help);
        let takes = a.get_action().takes_values();
        let values: Vec<String> = if takes {
            a.get_possible_values()
                .iter()
                .filter(|p| !p.is_hide_set())
                .map(|p| match p.get_help() {
                    Some(h) => format!("`{}` ({})", p.get_name(), cell(&h.to_string())),
                    None => format!("`{}`", p.get_name()),
                })
                .collect()
        } else {
            Vec::new()
        };
        if !values.is_empty() {
            let _ = write!(help, " Values: {}.", values.join(", "));
        }
        if matches!(a.get_action(), clap::ArgAction::Append) && !help.contains("Repeatable") {
            help.push_str(" Repeatable.");
        }
        if matches!(a.get_action(), clap::ArgAction::Count) {
            help.push_str(" Repeatable (counts).");
        }
        if a.is_required_set() && !a.is_positional() {
            help.push_str(" Required.");
        }
        let defaults: Vec<String> = a
            .get_default_values()
            .iter()
            .map(|d| d.to_string_lossy().into_owned())
            .collect();
        let default = if takes && !defaults.is_empty() {
            format!("`{}`", defaults.join(", "))
        } else {
            "—".to_string()
        };
        let _ = writeln!(out, "| {} | {default} | {} |", arg_name(a), help.trim());
    }
    out.push('\n');
}

fn is_builtin(a: &clap::Arg) -> bool {
    matches!(a.get_id().as_str(), "help" | "version")
}

fn about(cmd: &clap::Command) -> String {
    cmd.get_long_about()
        .or_else(|| cmd.get_about())
        .map(|s| s.to_string())
        .unwrap_or_default()
}

fn cli_reference() -> String {
    let mut cmd = <cutover::cli::Cli as clap::CommandFactory>::command();
    cmd.build();
    let mut out = String::new();
    out.push_str(
        "# CLI reference\n\n\
         <!-- Generated by tests/it/reference.rs from the clap definition; do not edit. -->\n\n\
         Every command, argument and flag of `cutover`, generated from the command line's \
         definition (`src/cli`, `cutover::cli::Cli`): do not edit this file, edit the doc \
         comments there and run `",
    );
    out.push_str(REGENERATE);
    out.push_str(
        "`. `cutover help COMMAND` prints the same. Part of the [guide](../README.md); what \
         the commands do in a migration: [Running a migration](../running-a-migration.md).\n\n",
    );
    let _ = writeln!(out, "{}\n", cell(&about(&cmd)));
    let _ = writeln!(
        out,
        "```text\n{}\n```\n",
        cmd.render_usage().to_string().trim()
    );

    out.push_str("## Global options\n\nAccepted by every command.\n\n");
    let globals: Vec<&clap::Arg> = cmd
        .get_arguments()
        .filter(|a| a.is_global_set() && !is_builtin(a))
        .collect();
    let global_ids: BTreeSet<String> = globals
        .iter()
        .map(|a| a.get_id().as_str().to_string())
        .collect();
    args_table(&globals, &mut out);

    out.push_str("## Commands\n\n");
    let subs: Vec<clap::Command> = cmd
        .get_subcommands()
        .filter(|s| s.get_name() != "help")
        .cloned()
        .collect();
    for s in &subs {
        let first = about(s).split("\n\n").next().unwrap_or("").to_string();
        let _ = writeln!(
            out,
            "- [`cutover {}`](#cutover-{}): {}",
            s.get_name(),
            s.get_name(),
            sentence(&first)
        );
    }
    out.push('\n');
    for mut s in subs {
        let _ = writeln!(out, "## `cutover {}`\n", s.get_name());
        let _ = writeln!(out, "{}\n", sentence(&about(&s)));
        let usage = s.render_usage().to_string();
        let _ = writeln!(out, "```text\n{}\n```\n", usage.trim());
        let args: Vec<&clap::Arg> = s
            .get_arguments()
            .filter(|a| !is_builtin(a) && !global_ids.contains(a.get_id().as_str()))
            .collect();
        args_table(&args, &mut out);
    }

    if let Some(after) = cmd.get_after_help() {
        let _ = writeln!(
            out,
            "## Exit codes\n\nAs every command's `--help` prints them; in full: [exit \
             codes](../README.md#exit-codes).\n\n```text\n{}\n```",
            after.to_string().trim()
        );
    }
    out
}

#[test]
fn cli_reference_is_up_to_date() {
    check_generated("docs/reference/cli.md", &cli_reference());
}

// ---------------------------------------------------------------------------------------------
// Links
// ---------------------------------------------------------------------------------------------

fn markdown_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|e| e == "md") {
                out.push(p);
            }
        }
    }
    let mut files = vec![root().join("README.md")];
    walk(&root().join("docs"), &mut files);
    files
}

/// The lines of a markdown file outside fenced code blocks.
fn prose_lines(text: &str) -> Vec<&str> {
    let mut fenced = false;
    text.lines()
        .filter(|l| {
            if l.trim_start().starts_with("```") {
                fenced = !fenced;
                return false;
            }
            !fenced
        })
        .collect()
}

/// GitHub's anchor for a heading: lowercase, punctuation other than `-` and `_` dropped,
/// spaces to `-`; a repeated slug gets `-1`, `-2`, ...
fn slug(heading: &str) -> String {
    let text = regex::Regex::new(r"\[([^\]]*)\]\([^)]*\)")
        .unwrap()
        .replace_all(heading, "$1");
    text.trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for line in prose_lines(text) {
        let Some(rest) = line.strip_prefix('#') else {
            continue;
        };
        let heading = rest.trim_start_matches('#');
        if !heading.starts_with(' ') {
            continue;
        }
        let s = slug(heading);
        let n = seen.entry(s.clone()).or_insert(0);
        out.insert(if *n == 0 {
            s.clone()
        } else {
            format!("{s}-{n}")
        });
        *n += 1;
    }
    out
}

#[test]
fn slugs_follow_github() {
    assert_eq!(
        slug(" A lost resume point: re-copy what changed, not everything"),
        "a-lost-resume-point-re-copy-what-changed-not-everything"
    );
    assert_eq!(slug(" `cutover verify`"), "cutover-verify");
    assert_eq!(slug(" `[[options.include]]`"), "optionsinclude");
    assert_eq!(
        slug(" What `cutover check` checks"),
        "what-cutover-check-checks"
    );
    let a = anchors("# T\n## Status\n```\n## not a heading\n```\n## Status\n");
    assert_eq!(
        a,
        ["status", "status-1", "t"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
}

#[test]
fn every_relative_link_in_the_docs_resolves() {
    if std::env::var_os("UPDATE_REFERENCE").is_some() {
        // The references may not be written yet when this test runs alongside their tests.
        check_generated("docs/reference/plan.md", &plan_reference());
        check_generated("docs/reference/cli.md", &cli_reference());
    }
    let link = regex::Regex::new(r"\]\(([^)\s]+)\)").unwrap();
    let code = regex::Regex::new(r"`[^`]*`").unwrap();
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        let rel = file.strip_prefix(root()).unwrap().display().to_string();
        for line in prose_lines(&text) {
            let line = code.replace_all(line, "``");
            for cap in link.captures_iter(&line) {
                let target = &cap[1];
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                checked += 1;
                let (path, anchor) = match target.split_once('#') {
                    Some((p, a)) => (p, Some(a)),
                    None => (target, None),
                };
                let dest = if path.is_empty() {
                    file.clone()
                } else {
                    file.parent().unwrap().join(path)
                };
                if !dest.exists() {
                    broken.push(format!("{rel}: `{target}`: {} does not exist", path));
                    continue;
                }
                if let Some(anchor) = anchor {
                    if dest.extension().is_some_and(|e| e == "md") {
                        let headings = anchors(&std::fs::read_to_string(&dest).unwrap());
                        if !headings.contains(anchor) {
                            broken.push(format!(
                                "{rel}: `{target}`: no heading `#{anchor}` in {}",
                                dest.strip_prefix(root()).unwrap_or(&dest).display()
                            ));
                        }
                    }
                }
            }
        }
    }
    assert!(checked > 50, "only {checked} links found");
    assert!(
        broken.is_empty(),
        "broken links in the documentation:\n  {}",
        broken.join("\n  ")
    );
}
