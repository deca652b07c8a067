//! Reading a plan: the TOML file, layered with figment under the environment
//! (`CUTOVER_PLAN__CLUSTERS__SOURCE__URI`, see [`crate::base::env`]) and `--set key=value` (file < environment < `--set`),
//! then `${VAR}` interpolation. Every problem becomes a [`Diagnostic`] that points at the
//! file, line and column (or at the variable or argument that supplied the value).

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Value};
use figment::Figment;
use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::base::env;

use super::diagnostic::{did_you_mean, one_of, Diagnostic, Location, Severity};
use super::model::{
    ClusterSpec, CommitStep, NamespaceFilter, Options, PlanFile, ReverseStep, StateOptions, Step,
    SyncStep, ValidateIndexesStep, VerifyStep, STEP_KINDS,
};

/// The plan's top-level keys.
const TOP_KEYS: &[&str] = &["name", "clusters", "options", "state", "steps"];

/// Where overrides come from; the process environment in production, a map in tests.
pub struct Overrides {
    /// `--set key=value` arguments, in order (later wins).
    pub sets: Vec<String>,
    /// Variables for `${VAR}` and `CUTOVER_PLAN__*` overrides.
    pub env: BTreeMap<String, String>,
}

impl Overrides {
    pub fn from_process(sets: Vec<String>) -> Self {
        Self {
            sets,
            env: crate::base::env::all().collect(),
        }
    }
}

/// The raw plan with its source text, ready for validation.
pub struct LoadedFile {
    pub file: String,
    /// The plan; sections that failed to load hold their defaults.
    pub plan: PlanFile,
    pub spans: SpanIndex,
    /// Errors found while loading (unknown keys, wrong types, unset variables, ...).
    pub errors: Vec<Diagnostic>,
    /// False when a step could not be read (its kind is unknown or missing): step-order
    /// checks are skipped then, since they would report the gap rather than the plan.
    pub steps_complete: bool,
}

/// Maps key paths to positions in the plan's text.
pub struct SpanIndex {
    file: String,
    text: String,
    /// `path` (dot-joined, indices as numbers) → (key span, value span).
    spans: BTreeMap<String, (Range<usize>, Range<usize>)>,
    env_keys: BTreeMap<String, String>,
    set_keys: BTreeMap<String, String>,
}

impl SpanIndex {
    fn new(file: &str, text: &str) -> Self {
        Self {
            file: file.to_string(),
            text: text.to_string(),
            spans: BTreeMap::new(),
            env_keys: BTreeMap::new(),
            set_keys: BTreeMap::new(),
        }
    }

    fn index_table(&mut self, prefix: &str, table: &DeTable<'_>) {
        for (k, v) in table.iter() {
            let path = join(prefix, k.get_ref());
            self.spans.insert(path.clone(), (k.span(), v.span()));
            self.index_value(&path, v);
        }
    }

    fn index_value(&mut self, path: &str, v: &Spanned<DeValue<'_>>) {
        match v.get_ref() {
            DeValue::Table(t) => self.index_table(path, t),
            DeValue::Array(a) => {
                for (i, item) in a.iter().enumerate() {
                    let p = join(path, &i.to_string());
                    self.spans.insert(p.clone(), (item.span(), item.span()));
                    self.index_value(&p, item);
                }
            }
            _ => {}
        }
    }

    /// Where the value at `path` came from; `on_key` points at the key rather than the value.
    pub fn locate(&self, path: &str, on_key: bool) -> Location {
        // The highest layer that supplied this path (or a parent of it) wins.
        let mut probe = path.to_string();
        loop {
            if let Some(arg) = self.set_keys.get(&probe) {
                return Location::Set {
                    argument: arg.clone(),
                };
            }
            if let Some(var) = self.env_keys.get(&probe) {
                return Location::Env {
                    variable: var.clone(),
                };
            }
            match probe.rfind('.') {
                Some(i) => probe.truncate(i),
                None => break,
            }
        }
        let mut probe = path.to_string();
        loop {
            if let Some((k, v)) = self.spans.get(&probe) {
                let span = if on_key && probe == path {
                    k.clone()
                } else {
                    v.clone()
                };
                return self.file_location(span);
            }
            match probe.rfind('.') {
                Some(i) => probe.truncate(i),
                None => {
                    return Location::Whole {
                        file: self.file.clone(),
                    }
                }
            }
        }
    }

    fn file_location(&self, span: Range<usize>) -> Location {
        let start = span.start.min(self.text.len());
        let before = &self.text[..start];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = self.text[line_start..start].chars().count() + 1;
        let line_text: String = self.text[line_start..]
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        let width = self.text[start..span.end.min(self.text.len())]
            .lines()
            .next()
            .map_or(1, |l| l.chars().count().max(1));
        Location::File {
            file: self.file.clone(),
            line,
            column,
            text: line_text,
            width,
        }
    }

    pub fn diag(&self, sev: Severity, path: &str, on_key: bool, message: String) -> Diagnostic {
        Diagnostic {
            severity: sev,
            key: display_path(path),
            message,
            allowed: None,
            hint: None,
            location: self.locate(path, on_key),
        }
    }

    pub fn file(&self) -> &str {
        &self.file
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// `steps.1.kind` → `steps[1].kind`.
pub fn display_path(path: &str) -> String {
    let mut out = String::new();
    for seg in path.split('.').filter(|s| !s.is_empty()) {
        if seg.chars().all(|c| c.is_ascii_digit()) {
            out.push_str(&format!("[{seg}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(seg);
        }
    }
    out
}

/// Reads, layers and interpolates a plan file. Returns every problem found, not just the first.
pub fn load(path: &Path, overrides: &Overrides) -> Result<LoadedFile, Vec<Diagnostic>> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![Diagnostic {
            severity: Severity::Error,
            key: String::new(),
            message: format!("cannot read the plan file `{file}`: {e}"),
            allowed: None,
            hint: Some(
                "pass the path of a TOML plan, e.g. `cutover check examples/reversible.toml`"
                    .into(),
            ),
            location: Location::Whole { file: file.clone() },
        }]
    })?;
    load_str(&file, &text, overrides)
}

/// As [`load`], from text already in memory (`file` is the name used in messages).
pub fn load_str(file: &str, text: &str, ov: &Overrides) -> Result<LoadedFile, Vec<Diagnostic>> {
    let mut spans = SpanIndex::new(file, text);
    let root = match DeTable::parse(text) {
        Ok(root) => root,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let mut d = Diagnostic {
                severity: Severity::Error,
                key: String::new(),
                message: format!("the plan is not valid TOML: {}", e.message().trim()),
                allowed: None,
                hint: Some("see https://toml.io for the syntax; strings need double quotes".into()),
                location: spans.file_location(span),
            };
            d.message = d.message.replace('\n', " ");
            return Err(vec![d]);
        }
    };
    spans.index_table("", root.get_ref());

    let mut errors = Vec::new();
    let mut figment = Figment::from(Toml::string(text));

    // Environment: CUTOVER_PLAN__CLUSTERS__SOURCE__URI → clusters.source.uri (names in
    // `base::env`). Values are read as TOML values when they parse as one (`true`, `10`),
    // otherwise as strings — the same rule as figment's `Env` provider, applied to the map we
    // were given so tests need no globals. The legacy spelling (`CUTOVER_OPTIONS__MAX_LAG`)
    // is read first, so the new one wins, and warned about.
    let legacy: Vec<(String, String, &String)> = ov
        .env
        .iter()
        .filter_map(|(k, v)| env::legacy_plan_path(k, TOP_KEYS).map(|p| (k.clone(), p, v)))
        .collect();
    let current: Vec<(String, String, &String)> = ov
        .env
        .iter()
        .filter_map(|(k, v)| env::plan_path(k).map(|p| (k.clone(), p, v)))
        .collect();
    let mut deprecated = Vec::new();
    for (k, path, v) in legacy.into_iter().chain(current) {
        if !k.starts_with(env::PLAN_PREFIX) {
            deprecated.push((k.clone(), path.clone()));
        }
        spans.env_keys.insert(path.clone(), k);
        figment = figment.merge(Serialized::default(&path, parse_set_value(v)));
    }
    for (k, path) in deprecated {
        let mut d = Diagnostic {
            severity: Severity::Warning,
            key: display_path(&path),
            message: format!(
                "`{k}` sets a plan key in the old spelling, which a later release will not read"
            ),
            allowed: None,
            hint: Some(format!("rename it `{}`", env::plan_var(&path))),
            location: Location::Env { variable: k },
        };
        d.message = d.message.replace('\n', " ");
        errors.push(d);
    }

    for arg in &ov.sets {
        let Some((key, raw)) = arg.split_once('=') else {
            errors.push(Diagnostic {
                severity: Severity::Error,
                key: String::new(),
                message: format!("`--set {arg}` has no `=`"),
                allowed: None,
                hint: Some("write `--set key.path=value`, e.g. `--set options.max_lag=10s`".into()),
                location: Location::Set {
                    argument: arg.clone(),
                },
            });
            continue;
        };
        let key = key.trim().to_string();
        let value = parse_set_value(raw);
        spans.set_keys.insert(key.clone(), arg.clone());
        figment = figment.merge(Serialized::default(&key, value));
    }

    let data: Dict = match figment.extract() {
        Ok(d) => d,
        Err(e) => {
            errors.push(spans.diag(
                Severity::Error,
                "",
                false,
                format!("cannot read the plan: {e}"),
            ));
            return Err(errors);
        }
    };

    // Top-level keys.
    const TOP: &[&str] = TOP_KEYS;
    for key in data.keys() {
        if !TOP.contains(&key.as_str()) {
            errors.push(unknown_key(&spans, "", key, TOP));
        }
    }

    let name: Option<String> = section(&spans, &data, "name", &mut errors, true);
    let clusters = extract_clusters(&spans, &data, &mut errors);
    let options: Option<Options> = if data.contains_key("options") {
        section(&spans, &data, "options", &mut errors, true)
    } else {
        Some(Options::default())
    };
    let state: Option<StateOptions> = if data.contains_key("state") {
        section(&spans, &data, "state", &mut errors, true)
    } else {
        Some(StateOptions::default())
    };
    let (steps, steps_complete) = extract_steps(&spans, &data, &mut errors);

    // Sections that failed are replaced by defaults (`name`, `uri` empty) so that semantic
    // validation still runs on everything that did parse; `validate` drops its findings for keys
    // that already have a load error, so nothing is reported twice.
    let (source, destination) = clusters;
    let blank = || ClusterSpec { uri: String::new() };
    let mut plan = PlanFile {
        name: name.unwrap_or_default(),
        clusters: super::model::Clusters {
            source: source.unwrap_or_else(blank),
            destination: destination.unwrap_or_else(blank),
        },
        options: options.unwrap_or_default(),
        state: state.unwrap_or_default(),
        steps,
    };
    interpolate_plan(&mut plan, &spans, &ov.env, &mut errors);
    Ok(LoadedFile {
        file: file.to_string(),
        plan,
        spans,
        errors,
        steps_complete,
    })
}

/// `--set` values are TOML values when they parse as one (`true`, `10`, `"x"`, `[..]`),
/// otherwise plain strings (`--set options.max_lag=10s`).
fn parse_set_value(raw: &str) -> toml::Value {
    let snippet = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&snippet) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

fn unknown_key(spans: &SpanIndex, parent: &str, key: &str, allowed: &[&str]) -> Diagnostic {
    let path = join(parent, key);
    let mut d = spans.diag(
        Severity::Error,
        &path,
        true,
        if parent.is_empty() {
            format!("unknown key `{key}` at the top level of the plan")
        } else {
            format!("unknown key `{key}` in `{}`", display_path(parent))
        },
    );
    d.allowed = Some(one_of(allowed));
    d.hint = did_you_mean(key, allowed).or_else(|| Some(format!("remove `{key}`")));
    d
}

fn section<T: DeserializeOwned>(
    spans: &SpanIndex,
    data: &Dict,
    key: &str,
    errors: &mut Vec<Diagnostic>,
    required: bool,
) -> Option<T> {
    match data.get(key) {
        Some(v) => deserialize_at(spans, v, key, errors),
        None => {
            if required {
                errors.push(missing(spans, "", key));
            }
            None
        }
    }
}

fn missing(spans: &SpanIndex, parent: &str, key: &str) -> Diagnostic {
    let path = join(parent, key);
    let mut d = spans.diag(
        Severity::Error,
        parent,
        false,
        format!("missing key `{}`", display_path(&path)),
    );
    d.key = display_path(&path);
    d.hint = Some(match path.as_str() {
        "name" => "add `name = \"my-migration\"` at the top of the plan".to_string(),
        "steps" => "add at least one step: `[[steps]]` then `kind = \"sync\"`".to_string(),
        "clusters" | "clusters.source" | "clusters.destination" => format!(
            "add `[{}]` with `uri = \"${{{}_URI}}\"`",
            if path == "clusters" {
                "clusters.source"
            } else {
                path.as_str()
            },
            if path.ends_with("destination") {
                "DESTINATION"
            } else {
                "SOURCE"
            }
        ),
        _ => format!("add `{key} = ...`"),
    });
    d
}

/// Deserializes `value` (found at `path`), reporting every error rather than the first: after
/// each error the offending key is removed and deserialization retried.
fn deserialize_at<T: DeserializeOwned>(
    spans: &SpanIndex,
    value: &Value,
    path: &str,
    errors: &mut Vec<Diagnostic>,
) -> Option<T> {
    let mut value = value.clone();
    let mut gone: Vec<Vec<String>> = Vec::new();
    for _ in 0..64 {
        match value.deserialize::<T>() {
            // After a failure, `v` lacks the offending keys: their defaults stand in.
            Ok(v) => return Some(v),
            Err(e) => {
                let mut removed = false;
                for err in e {
                    let rel = relative_path(&err);
                    // A required key removed after a type error is not also "missing".
                    let echo = matches!(err.kind, figment::error::Kind::MissingField(_))
                        && gone.contains(&rel);
                    if !echo {
                        errors.push(figment_error(spans, path, err));
                    }
                    if !rel.is_empty() && remove_at(&mut value, &rel) {
                        removed = true;
                        gone.push(rel);
                    }
                }
                if !removed {
                    return None;
                }
            }
        }
    }
    None
}

/// The path of the key an error is about, relative to the value being deserialized.
fn relative_path(err: &figment::Error) -> Vec<String> {
    use figment::error::Kind;
    let mut p = err.path.clone();
    match &err.kind {
        Kind::UnknownField(f, _) if p.last() != Some(f) => p.push(f.clone()),
        Kind::MissingField(f) if p.last().map(String::as_str) != Some(f.as_ref()) => {
            p.push(f.to_string())
        }
        _ => {}
    }
    p
}

fn remove_at(value: &mut Value, path: &[String]) -> bool {
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    match value {
        Value::Dict(_, dict) => {
            if rest.is_empty() {
                dict.remove(first).is_some()
            } else {
                dict.get_mut(first).is_some_and(|v| remove_at(v, rest))
            }
        }
        Value::Array(_, items) => match first.parse::<usize>() {
            Ok(i) if i < items.len() => {
                if rest.is_empty() {
                    items.remove(i);
                    true
                } else {
                    remove_at(&mut items[i], rest)
                }
            }
            _ => false,
        },
        _ => false,
    }
}

fn figment_error(spans: &SpanIndex, base: &str, err: figment::Error) -> Diagnostic {
    use figment::error::Kind;
    let mut path = base.to_string();
    let mut segs = err.path.clone();
    // figment puts the unknown or missing field itself at the end of the path.
    match &err.kind {
        Kind::UnknownField(f, _) if segs.last() == Some(f) => {
            segs.pop();
        }
        Kind::MissingField(f) if segs.last().map(String::as_str) == Some(f.as_ref()) => {
            segs.pop();
        }
        _ => {}
    }
    for seg in &segs {
        path = join(&path, seg);
    }
    let shown = display_path(&path);
    match &err.kind {
        Kind::UnknownField(field, expected) => unknown_key(spans, &path, field, expected),
        Kind::MissingField(field) => missing(spans, &path, field),
        Kind::UnknownVariant(v, expected) => {
            let mut d = spans.diag(
                Severity::Error,
                &path,
                false,
                format!("`{v}` is not a valid value for `{shown}`"),
            );
            d.allowed = Some(one_of(expected));
            d.hint =
                did_you_mean(v, expected).or_else(|| Some("use one of the allowed values".into()));
            d
        }
        Kind::InvalidType(actual, expected) => {
            let mut d = spans.diag(
                Severity::Error,
                &path,
                false,
                format!("`{shown}` must be {expected}, not {actual}"),
            );
            d.hint = Some(value_hint(&path));
            d
        }
        Kind::InvalidValue(actual, expected) => {
            let mut d = spans.diag(
                Severity::Error,
                &path,
                false,
                format!("`{shown}` must be {expected}, not {actual}"),
            );
            d.hint = Some(value_hint(&path));
            d
        }
        Kind::Message(m) => {
            let mut d = spans.diag(Severity::Error, &path, false, format!("`{shown}`: {m}"));
            d.hint = Some(value_hint(&path));
            d
        }
        other => spans.diag(Severity::Error, &path, false, format!("`{shown}`: {other}")),
    }
}

/// How to write a value of the key at `path`.
fn value_hint(path: &str) -> String {
    let leaf = path.rsplit('.').next().unwrap_or(path);
    match leaf {
        "max_lag" | "timeout" => {
            "write a duration in double quotes: a number and a unit, such as `\"90s\"`, `\"10m\"` or `\"1h30m\"`".into()
        }
        "reversible" => "write `true` or `false`, without quotes".into(),
        "max_differences" => "write a whole number, such as `20`".into(),
        "collections" => "write a list of names: `collections = [\"orders\", \"users\"]`".into(),
        "include" | "exclude" => format!("write each filter as a `[[options.{leaf}]]` table"),
        "uri" => "write the URI as one string in double quotes, e.g. `uri = \"${SOURCE_URI}\"`".into(),
        _ => "see the plan reference (docs/reference/plan.md); `cutover schema` prints every key and its type".into(),
    }
}

fn extract_clusters(
    spans: &SpanIndex,
    data: &Dict,
    errors: &mut Vec<Diagnostic>,
) -> (Option<ClusterSpec>, Option<ClusterSpec>) {
    let Some(v) = data.get("clusters") else {
        errors.push(missing(spans, "", "clusters"));
        return (None, None);
    };
    let Some(dict) = v.as_dict() else {
        let mut d = spans.diag(
            Severity::Error,
            "clusters",
            false,
            "`clusters` must be a table with `source` and `destination`".into(),
        );
        d.hint = Some(
            "write `[clusters.source]` and `[clusters.destination]` tables, each with a `uri`"
                .into(),
        );
        errors.push(d);
        return (None, None);
    };
    const NAMES: &[&str] = &["source", "destination"];
    for k in dict.keys() {
        if !NAMES.contains(&k.as_str()) {
            let mut d = unknown_key(spans, "clusters", k, NAMES);
            d.message =
                format!("unknown cluster `{k}`: a plan has exactly a `source` and a `destination`");
            errors.push(d);
        }
    }
    let mut get = |name: &str| -> Option<ClusterSpec> {
        match dict.get(name) {
            Some(v) => deserialize_at(spans, v, &format!("clusters.{name}"), errors),
            None => {
                errors.push(missing(spans, "clusters", name));
                None
            }
        }
    };
    let source = get("source");
    let destination = get("destination");
    (source, destination)
}

fn extract_steps(
    spans: &SpanIndex,
    data: &Dict,
    errors: &mut Vec<Diagnostic>,
) -> (Vec<Step>, bool) {
    let Some(v) = data.get("steps") else {
        errors.push(missing(spans, "", "steps"));
        return (Vec::new(), false);
    };
    let Some(items) = v.as_array() else {
        let mut d = spans.diag(
            Severity::Error,
            "steps",
            false,
            "`steps` must be an array of tables".into(),
        );
        d.hint = Some(
            "write each step as `[[steps]]` (double brackets) followed by `kind = \"sync\"`".into(),
        );
        errors.push(d);
        return (Vec::new(), false);
    };
    let mut steps = Vec::new();
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let path = format!("steps.{i}");
        let Some(table) = item.as_dict() else {
            let mut d = spans.diag(
                Severity::Error,
                &path,
                false,
                format!("`{}` must be a table with a `kind`", display_path(&path)),
            );
            d.hint = Some("write each step as `[[steps]]` followed by `kind = \"sync\"`".into());
            errors.push(d);
            ok = false;
            continue;
        };
        let kind = match table.get("kind") {
            Some(k) => match k.as_str() {
                Some(s) => s.to_string(),
                None => {
                    let mut d = spans.diag(
                        Severity::Error,
                        &format!("{path}.kind"),
                        false,
                        format!("`{}.kind` must be a string", display_path(&path)),
                    );
                    d.allowed = Some(one_of(STEP_KINDS));
                    d.hint = Some("write the kind in double quotes, e.g. `kind = \"sync\"`".into());
                    errors.push(d);
                    ok = false;
                    continue;
                }
            },
            None => {
                let mut d = missing(spans, &path, "kind");
                d.allowed = Some(one_of(STEP_KINDS));
                d.hint = Some("add `kind = \"sync\"` (or another kind) to this step".into());
                errors.push(d);
                ok = false;
                continue;
            }
        };
        let mut rest = table.clone();
        rest.remove("kind");
        let rest = Value::from(rest);
        let step = match kind.as_str() {
            "sync" => deserialize_at::<SyncStep>(spans, &rest, &path, errors).map(Step::Sync),
            "validate-indexes" => {
                deserialize_at::<ValidateIndexesStep>(spans, &rest, &path, errors)
                    .map(Step::ValidateIndexes)
            }
            "commit" => deserialize_at::<CommitStep>(spans, &rest, &path, errors).map(Step::Commit),
            "reverse" => {
                deserialize_at::<ReverseStep>(spans, &rest, &path, errors).map(Step::Reverse)
            }
            "verify" => deserialize_at::<VerifyStep>(spans, &rest, &path, errors).map(Step::Verify),
            other => {
                let mut d = spans.diag(
                    Severity::Error,
                    &format!("{path}.kind"),
                    false,
                    format!("unknown step kind `{other}` in `{}`", display_path(&path)),
                );
                d.allowed = Some(one_of(STEP_KINDS));
                d.hint = did_you_mean(other, STEP_KINDS);
                errors.push(d);
                None
            }
        };
        match step {
            Some(s) => steps.push(s),
            None => ok = false,
        }
    }
    (steps, ok)
}

/// Replaces `${VAR}` in every string of the plan; `$${` writes a literal `${`.
fn interpolate_plan(
    plan: &mut PlanFile,
    spans: &SpanIndex,
    env: &BTreeMap<String, String>,
    errors: &mut Vec<Diagnostic>,
) {
    let mut apply = |s: &mut String, path: &str| match interpolate(s, env) {
        Ok(v) => *s = v,
        Err(InterpolationError::Unset(var)) => {
            // The half-interpolated text must not reach later checks (or the secret registry).
            s.clear();
            let mut d = spans.diag(
                Severity::Error,
                path,
                false,
                format!(
                    "environment variable `{var}` is not set (used by `{}`)",
                    display_path(path)
                ),
            );
            let override_var = env::plan_var(path);
            d.hint = Some(format!(
                "export {var}=..., or set {override_var} to the whole value"
            ));
            errors.push(d);
        }
        Err(InterpolationError::Malformed(why)) => {
            s.clear();
            let mut d = spans.diag(
                Severity::Error,
                path,
                false,
                format!("`{}`: {why}", display_path(path)),
            );
            d.hint =
                Some("write `${NAME}` with a letter or `_` first; `$${` for a literal `${`".into());
            errors.push(d);
        }
    };
    apply(&mut plan.name, "name");
    apply(&mut plan.clusters.source.uri, "clusters.source.uri");
    apply(
        &mut plan.clusters.destination.uri,
        "clusters.destination.uri",
    );
    apply(&mut plan.state.database, "state.database");
    for (list, key) in [
        (&mut plan.options.include, "include"),
        (&mut plan.options.exclude, "exclude"),
    ] {
        for (i, f) in list.iter_mut().enumerate() {
            let base = format!("options.{key}.{i}");
            interpolate_filter(f, &base, &mut apply);
        }
    }
}

fn interpolate_filter(
    f: &mut NamespaceFilter,
    base: &str,
    apply: &mut impl FnMut(&mut String, &str),
) {
    if let Some(s) = f.database.as_mut() {
        apply(s, &format!("{base}.database"));
    }
    if let Some(s) = f.database_regex.as_mut() {
        apply(s, &format!("{base}.database_regex"));
    }
    if let Some(s) = f.collections_regex.as_mut() {
        apply(s, &format!("{base}.collections_regex"));
    }
    if let Some(list) = f.collections.as_mut() {
        for (j, s) in list.iter_mut().enumerate() {
            apply(s, &format!("{base}.collections.{j}"));
        }
    }
}

#[derive(Debug, PartialEq)]
pub enum InterpolationError {
    Unset(String),
    Malformed(String),
}

pub fn interpolate(s: &str, env: &BTreeMap<String, String>) -> Result<String, InterpolationError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(body) = after.strip_prefix("${") {
            let Some(end) = body.find('}') else {
                return Err(InterpolationError::Malformed(
                    "`${` without a closing `}`".into(),
                ));
            };
            let name = &body[..end];
            let valid = name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(InterpolationError::Malformed(format!(
                    "`${{{name}}}` is not a variable name"
                )));
            }
            match env.get(name) {
                Some(v) => out.push_str(v),
                None => return Err(InterpolationError::Unset(name.to_string())),
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn interpolation() {
        let e = env(&[("A", "x"), ("B_2", "y")]);
        assert_eq!(interpolate("${A}-${B_2}", &e).unwrap(), "x-y");
        assert_eq!(interpolate("$${A} $5", &e).unwrap(), "${A} $5");
        assert_eq!(
            interpolate("${NOPE}", &e),
            Err(InterpolationError::Unset("NOPE".into()))
        );
        assert!(matches!(
            interpolate("${A", &e),
            Err(InterpolationError::Malformed(_))
        ));
        assert!(matches!(
            interpolate("${1A}", &e),
            Err(InterpolationError::Malformed(_))
        ));
    }

    #[test]
    fn display_paths() {
        assert_eq!(display_path("steps.1.kind"), "steps[1].kind");
        assert_eq!(
            display_path("options.include.0.database"),
            "options.include[0].database"
        );
    }

    const PLAN: &str = "name = \"p\"\n[clusters.source]\nuri = \"mongodb://127.0.0.1:1\"\n\
        [clusters.destination]\nuri = \"mongodb://127.0.0.1:2\"\n[[steps]]\nkind = \"sync\"\n";

    fn load_env(pairs: &[(&str, &str)]) -> Result<(), Vec<Diagnostic>> {
        let ov = Overrides {
            sets: Vec::new(),
            env: env(pairs),
        };
        crate::plan::load_plan_str("plan.toml", PLAN, &ov).map(|_| ())
    }

    /// A CI environment that sets `CUTOVER_BIN` (tried) failed every plan with "unknown key
    /// `bin`": a single-word variable that names no plan key is not a plan override.
    #[test]
    fn other_cutover_variables_are_not_plan_keys() {
        for var in ["CUTOVER_BIN", "CUTOVER_VERSION"] {
            if let Err(e) = load_env(&[(var, "/usr/local/bin/cutover")]) {
                panic!("{var}: {e:?}");
            }
        }
        // A path with an unknown first key is still an error that names the variable.
        let Err(errs) = load_env(&[("CUTOVER_OPTIONZ__MAX_LAG", "3s")]) else {
            panic!("an unknown plan path is an error");
        };
        let text = format!("{errs:?}");
        assert!(text.contains("optionz"), "{text}");
        // Plan keys still override.
        if let Err(e) = load_env(&[
            ("CUTOVER_NAME", "renamed"),
            ("CUTOVER_OPTIONS__MAX_LAG", "7s"),
        ]) {
            panic!("{e:?}");
        }
    }

    #[test]
    fn set_values_parse_as_toml_or_string() {
        assert_eq!(parse_set_value("true"), toml::Value::Boolean(true));
        assert_eq!(parse_set_value("10s"), toml::Value::String("10s".into()));
        assert_eq!(
            parse_set_value("\"a b\""),
            toml::Value::String("a b".into())
        );
    }
}
