//! Static validation: everything that can be known about a plan without touching a cluster.
//! Collects every error and warning; a plan with no errors becomes a [`Plan`].

use std::time::Duration;

use super::diagnostic::{Diagnostic, Severity};
use super::filter::{NamespaceSelector, SYSTEM_DATABASES};
use super::load::{display_path, LoadedFile, SpanIndex};
use super::model::{BuildIndexes, NamespaceFilter, Options, PlanFile, Step, WriteBlocking};
use crate::base::uri::ClusterUri;

/// A plan that passed static validation.
#[derive(Clone, Debug)]
pub struct Plan {
    pub file: String,
    pub name: String,
    pub source: ClusterUri,
    pub destination: ClusterUri,
    pub options: Options,
    pub selector: NamespaceSelector,
    pub state_database: String,
    pub steps: Vec<Step>,
    /// A stable hash of what must not change during a migration: cluster hosts, options,
    /// steps. Never includes credentials.
    pub fingerprint: String,
}

impl Plan {
    pub fn has_reverse(&self) -> bool {
        self.steps.iter().any(|s| matches!(s, Step::Reverse(_)))
    }
}

/// The outcome of validation: the plan (when there is no error) and every diagnostic.
pub struct Validated {
    pub plan: Option<Plan>,
    pub diagnostics: Vec<Diagnostic>,
}

pub fn validate(loaded: LoadedFile) -> Validated {
    let LoadedFile {
        file,
        plan,
        spans,
        errors: load_errors,
        steps_complete,
    } = loaded;
    let mut v = Validator {
        spans: &spans,
        out: Vec::new(),
    };
    let (source, destination) = v.clusters(&plan);
    v.name(&plan.name);
    v.state_database(&plan.state.database);
    let selector = v.filters(&plan);
    v.options(&plan);
    if steps_complete {
        v.steps(&plan);
    }

    // Semantic findings about a key that already failed to load would only echo that error
    // (or judge a default standing in for it): drop them.
    let failed: Vec<String> = load_errors
        .iter()
        .filter(|d| d.is_error())
        .map(|d| d.key.clone())
        .collect();
    let mut diagnostics = load_errors;
    diagnostics.extend(
        v.out
            .into_iter()
            .filter(|d| !failed.iter().any(|f| is_under(&d.key, f))),
    );
    // In file order, so the report reads top to bottom.
    diagnostics.sort_by_key(|d| match &d.location {
        super::diagnostic::Location::File { line, column, .. } => (0, *line, *column),
        _ => (1, 0, 0),
    });
    let ok = !diagnostics.iter().any(Diagnostic::is_error);
    let plan = match (ok, source, destination, selector) {
        (true, Some(source), Some(destination), Some(selector)) => Some(Plan {
            fingerprint: fingerprint(&plan, &source, &destination),
            file,
            name: plan.name,
            source,
            destination,
            options: plan.options,
            selector,
            state_database: plan.state.database,
            steps: plan.steps,
        }),
        _ => None,
    };
    Validated { plan, diagnostics }
}

struct Validator<'a> {
    spans: &'a SpanIndex,
    out: Vec<Diagnostic>,
}

impl Validator<'_> {
    fn error(&mut self, path: &str, message: String, hint: &str) -> &mut Diagnostic {
        self.push(Severity::Error, path, message, hint)
    }

    fn warn(&mut self, path: &str, message: String, hint: &str) -> &mut Diagnostic {
        self.push(Severity::Warning, path, message, hint)
    }

    fn push(&mut self, sev: Severity, path: &str, message: String, hint: &str) -> &mut Diagnostic {
        let mut d = self.spans.diag(sev, path, false, message);
        if !hint.is_empty() {
            d.hint = Some(hint.to_string());
        }
        self.out.push(d);
        let last = self.out.len() - 1;
        &mut self.out[last]
    }

    fn name(&mut self, name: &str) {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !valid {
            self.error(
                "name",
                format!("plan name `{name}` is not allowed: it keys the plan's checkpoints"),
                "use 1 to 64 letters, digits, `.`, `_` or `-`, e.g. `orders-to-new-cluster`",
            );
        }
    }

    fn state_database(&mut self, db: &str) {
        if let Some(why) = database_name_problem(db) {
            self.error(
                "state.database",
                format!("`state.database` `{db}` {why}"),
                "use a name such as `__cutover`",
            );
        } else if SYSTEM_DATABASES.contains(&db) {
            self.error(
                "state.database",
                format!("`state.database` cannot be the system database `{db}`"),
                "use a database of its own, such as `__cutover`",
            );
        }
    }

    fn clusters(&mut self, plan: &PlanFile) -> (Option<ClusterUri>, Option<ClusterUri>) {
        let parse = |v: &mut Self, which: &str, raw: &str| -> Option<ClusterUri> {
            let path = format!("clusters.{which}.uri");
            match ClusterUri::parse(raw) {
                Ok(u) => Some(u),
                Err(why) => {
                    v.error(
                        &path,
                        format!("`{}` is not a valid MongoDB URI: {why}", display_path(&path)),
                        "write `mongodb://host:port/?replicaSet=NAME` or `mongodb+srv://name.example.net`, with credentials percent-encoded",
                    );
                    None
                }
            }
        };
        let source = parse(self, "source", &plan.clusters.source.uri);
        let destination = parse(self, "destination", &plan.clusters.destination.uri);
        if let (Some(s), Some(d)) = (&source, &destination) {
            let shared: Vec<String> = s.hosts().intersection(&d.hosts()).cloned().collect();
            if !shared.is_empty() {
                self.error(
                    "clusters.destination.uri",
                    format!(
                        "source and destination are the same deployment (both list {})",
                        shared.join(", ")
                    ),
                    "point `clusters.destination.uri` at the new cluster",
                );
            } else if let (Some(a), Some(b)) = (s.replica_set(), d.replica_set()) {
                // Distinct deployments may share a set name (`rs0` is common), so the name alone
                // is a warning; `cutover check` compares the sets' `replicaSetId` and fails
                // when they are the same set.
                if a == b {
                    self.warn(
                        "clusters.destination.uri",
                        format!("source and destination both name replica set `{a}` (with different hosts)"),
                        "make sure the destination is the new cluster; `cutover check` compares the sets' replicaSetId",
                    );
                }
            }
        }
        (source, destination)
    }

    fn filters(&mut self, plan: &PlanFile) -> Option<NamespaceSelector> {
        let o = &plan.options;
        let mut ok = true;
        for (key, list) in [("include", &o.include), ("exclude", &o.exclude)] {
            for (i, f) in list.iter().enumerate() {
                ok &= self.filter(&format!("options.{key}.{i}"), f, &plan.state.database);
            }
        }
        if !ok {
            return None;
        }
        NamespaceSelector::new(&o.include, &o.exclude, &plan.state.database).ok()
    }

    fn filter(&mut self, base: &str, f: &NamespaceFilter, state_db: &str) -> bool {
        let before = self.out.len();
        match (&f.database, &f.database_regex) {
            (Some(_), Some(_)) => {
                self.error(
                    base,
                    format!(
                        "`{}` sets both `database` and `database_regex`",
                        display_path(base)
                    ),
                    "keep one of them",
                );
            }
            (None, None) => {
                self.error(
                    base,
                    format!(
                        "`{}` needs `database` or `database_regex`",
                        display_path(base)
                    ),
                    "add `database = \"name\"`, or `database_regex = \"^prefix_\"`",
                );
            }
            (Some(db), None) => {
                let path = format!("{base}.database");
                if let Some(why) = database_name_problem(db) {
                    self.error(
                        &path,
                        format!("`{}` `{db}` {why}", display_path(&path)),
                        "use the database's exact name, or `database_regex` for a pattern",
                    );
                } else if SYSTEM_DATABASES.contains(&db.as_str()) || db == state_db {
                    self.error(
                        &path,
                        format!("`{}` names `{db}`, which cutover never syncs", display_path(&path)),
                        "remove this filter: `admin`, `local`, `config` and the state database are never synced",
                    );
                }
            }
            (None, Some(_)) => {}
        }
        if f.collections.is_some() && f.collections_regex.is_some() {
            self.error(
                base,
                format!(
                    "`{}` sets both `collections` and `collections_regex`",
                    display_path(base)
                ),
                "keep one of them",
            );
        }
        if let Some(list) = &f.collections {
            if list.is_empty() {
                self.error(
                    &format!("{base}.collections"),
                    format!("`{}.collections` is empty", display_path(base)),
                    "list at least one collection, or remove `collections` to select the whole database",
                );
            }
            for (j, c) in list.iter().enumerate() {
                if c.is_empty() || c.contains('\0') || c.starts_with('$') {
                    let p = format!("{base}.collections.{j}");
                    self.error(
                        &p,
                        format!("`{}` `{c}` is not a collection name", display_path(&p)),
                        "collection names are non-empty and do not start with `$`",
                    );
                }
            }
        }
        for key in ["database_regex", "collections_regex"] {
            let pattern = if key == "database_regex" {
                &f.database_regex
            } else {
                &f.collections_regex
            };
            if let Some(p) = pattern {
                if let Err(e) = regex::Regex::new(p) {
                    let path = format!("{base}.{key}");
                    let detail = e
                        .to_string()
                        .lines()
                        .last()
                        .unwrap_or_default()
                        .trim()
                        .to_string();
                    self.error(
                        &path,
                        format!("`{}` is not a valid regular expression: {detail}", display_path(&path)),
                        "the syntax is Rust's `regex` crate (like RE2): escape `.` as `\\\\.` in TOML strings",
                    );
                }
            }
        }
        self.out.len() == before
    }

    fn options(&mut self, plan: &PlanFile) {
        let o = &plan.options;
        if o.max_lag.get() == Duration::ZERO {
            self.error(
                "options.max_lag",
                "`options.max_lag` must be more than zero".into(),
                "lag never reaches exactly zero under writes: use e.g. `5s`",
            );
        }
        if o.reversible {
            if o.write_blocking != WriteBlocking::SourceAndDestination {
                self.error(
                    "options.write_blocking",
                    "`reversible = true` needs `write_blocking = \"source-and-destination\"`".into(),
                    "set `write_blocking = \"source-and-destination\"`: reverse sync relies on both clusters being write-blocked at the switch (mongosync's rule)",
                );
            }
            if o.build_indexes == BuildIndexes::Never {
                self.error(
                    "options.build_indexes",
                    "`build_indexes = \"never\"` cannot be combined with `reversible = true`"
                        .into(),
                    "use `after-copy`: reverse writes back through the destination's indexes",
                );
            }
            if !o.include.is_empty() || !o.exclude.is_empty() {
                let path = if o.include.is_empty() {
                    "options.exclude"
                } else {
                    "options.include"
                };
                self.error(
                    path,
                    "namespace filters cannot be combined with `reversible = true` (filtered sync is not supported during reverse)".into(),
                    "remove `options.include`/`options.exclude`, or set `reversible = false` and drop the `reverse` step",
                );
            }
        }
    }

    fn steps(&mut self, plan: &PlanFile) {
        #[derive(PartialEq)]
        enum Lane {
            Idle,
            Forward,
            Committed,
            Reversed,
            ReverseCommitted,
        }
        if plan.steps.is_empty() {
            self.error(
                "steps",
                "the plan has no steps".into(),
                "add `[[steps]]` with `kind = \"sync\"`",
            );
            return;
        }
        let mut lane = Lane::Idle;
        let mut saw_validate_before_commit = false;
        for (i, step) in plan.steps.iter().enumerate() {
            let path = format!("steps.{i}");
            let at = display_path(&path);
            match step {
                Step::Sync(_) => {
                    if lane != Lane::Idle {
                        self.error(
                            &path,
                            format!(
                                "`{at}`: a plan has one `sync`, and it comes before any `commit`"
                            ),
                            "remove this `sync`",
                        );
                    }
                    lane = Lane::Forward;
                }
                Step::ValidateIndexes(_) => {
                    if lane == Lane::Idle || lane == Lane::Forward {
                        saw_validate_before_commit = true;
                    }
                }
                Step::Commit(_) => match lane {
                    Lane::Forward => lane = Lane::Committed,
                    Lane::Reversed => lane = Lane::ReverseCommitted,
                    _ => {
                        self.error(
                            &path,
                            format!("`{at}`: `commit` must follow a `sync` or a `reverse` (with no other `commit` between)"),
                            "add a `sync` step before this `commit`, or remove it",
                        );
                    }
                },
                Step::Reverse(_) => {
                    if lane != Lane::Committed {
                        self.error(
                            &path,
                            format!(
                                "`{at}`: `reverse` must follow the `commit` of the forward sync"
                            ),
                            "put `reverse` after `sync` … `commit`",
                        );
                    }
                    if !plan.options.reversible {
                        self.error(
                            &path,
                            format!("`{at}`: `reverse` needs `options.reversible = true`"),
                            "set `reversible = true` and `write_blocking = \"source-and-destination\"` in `[options]`",
                        );
                    } else if plan.options.write_blocking != WriteBlocking::SourceAndDestination {
                        // Reported once, on the option (see `options`).
                    }
                    if plan.options.reversible && !saw_validate_before_commit {
                        self.warn(
                            &path,
                            format!("`{at}`: no `validate-indexes` step runs before the commit"),
                            "add `[[steps]] kind = \"validate-indexes\"` before the first `commit`, so legacy unique indexes stop the plan before the cutover rather than at `reverse`",
                        );
                    }
                    lane = Lane::Reversed;
                }
                Step::Verify(_) => {
                    if lane == Lane::Idle {
                        self.error(
                            &path,
                            format!("`{at}`: `verify` must follow a `sync`"),
                            "move `verify` after `sync`",
                        );
                    }
                }
            }
        }
        if !plan.options.reversible && plan.steps.iter().any(|s| matches!(s, Step::Reverse(_))) {
            // already reported per step
        }
        if lane == Lane::Forward || lane == Lane::Reversed {
            let last = format!("steps.{}", plan.steps.len() - 1);
            self.warn(
                &last,
                "the plan ends while replication is running: `cutover run` returns at can-commit and replication stops with it".into(),
                "add a `commit` step, or run the plan again later to resume replication",
            );
        }
    }
}

/// `key` is `parent` or lies beneath it (`options.include[0].database` under `options.include`).
fn is_under(key: &str, parent: &str) -> bool {
    if parent.is_empty() {
        return key.is_empty();
    }
    key == parent
        || key
            .strip_prefix(parent)
            .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
}

/// Why `db` is not a usable database name, if it is not.
fn database_name_problem(db: &str) -> Option<&'static str> {
    if db.is_empty() {
        Some("is empty")
    } else if db.len() > 63 {
        Some("is longer than 63 bytes")
    } else if db
        .chars()
        .any(|c| matches!(c, '/' | '\\' | '.' | ' ' | '"' | '$' | '\0'))
    {
        Some("contains a character MongoDB forbids in database names (/\\. \"$)")
    } else {
        None
    }
}

/// FNV-1a over the parts of the plan that must not change while a migration runs.
fn fingerprint(plan: &PlanFile, source: &ClusterUri, destination: &ClusterUri) -> String {
    let canonical = serde_json::json!({
        "source": source.hosts_display(),
        "destination": destination.hosts_display(),
        "options": plan.options,
        "state": plan.state.database,
        "steps": plan.steps,
    })
    .to_string();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in canonical.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}
