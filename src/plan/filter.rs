//! Which namespaces a plan syncs: compiled `include` / `exclude` filters.

use regex::Regex;

use super::model::NamespaceFilter;

/// Databases cutover never syncs, whatever the filters say.
pub const SYSTEM_DATABASES: &[&str] = &["admin", "local", "config"];

#[derive(Clone, Debug)]
enum Matcher {
    Exact(String),
    List(Vec<String>),
    Pattern(Regex),
    Any,
}

impl Matcher {
    fn matches(&self, s: &str) -> bool {
        match self {
            Matcher::Exact(e) => e == s,
            Matcher::List(l) => l.iter().any(|x| x == s),
            Matcher::Pattern(r) => r.is_match(s),
            Matcher::Any => true,
        }
    }
}

#[derive(Clone, Debug)]
struct Rule {
    database: Matcher,
    collections: Matcher,
}

/// The compiled filter set. Built only from a validated plan, so regexes are known to compile.
#[derive(Clone, Debug)]
pub struct NamespaceSelector {
    include: Vec<Rule>,
    exclude: Vec<Rule>,
    state_database: String,
}

impl NamespaceSelector {
    pub fn new(
        include: &[NamespaceFilter],
        exclude: &[NamespaceFilter],
        state_database: &str,
    ) -> Result<Self, regex::Error> {
        let compile = |f: &NamespaceFilter| -> Result<Rule, regex::Error> {
            let database = match (&f.database, &f.database_regex) {
                (Some(d), _) => Matcher::Exact(d.clone()),
                (None, Some(r)) => Matcher::Pattern(Regex::new(r)?),
                (None, None) => Matcher::Any,
            };
            let collections = match (&f.collections, &f.collections_regex) {
                (Some(c), _) => Matcher::List(c.clone()),
                (None, Some(r)) => Matcher::Pattern(Regex::new(r)?),
                (None, None) => Matcher::Any,
            };
            Ok(Rule { database, collections })
        };
        Ok(Self {
            include: include.iter().map(compile).collect::<Result<_, _>>()?,
            exclude: exclude.iter().map(compile).collect::<Result<_, _>>()?,
            state_database: state_database.to_string(),
        })
    }

    /// True when the plan has any include or exclude filter.
    pub fn is_filtered(&self) -> bool {
        !self.include.is_empty() || !self.exclude.is_empty()
    }

    /// Whether any collection of `db` may be selected (to skip whole databases early).
    pub fn may_select_database(&self, db: &str) -> bool {
        if self.is_reserved_database(db) {
            return false;
        }
        let included =
            self.include.is_empty() || self.include.iter().any(|r| r.database.matches(db));
        let wholly_excluded = self
            .exclude
            .iter()
            .any(|r| r.database.matches(db) && matches!(r.collections, Matcher::Any));
        included && !wholly_excluded
    }

    pub fn is_reserved_database(&self, db: &str) -> bool {
        SYSTEM_DATABASES.contains(&db) || db == self.state_database
    }

    /// Whether `db.coll` is synced. `system.*` collections never are.
    pub fn selects(&self, db: &str, coll: &str) -> bool {
        if self.is_reserved_database(db) || coll.starts_with("system.") {
            return false;
        }
        let hit = |r: &Rule| r.database.matches(db) && r.collections.matches(coll);
        let included = self.include.is_empty() || self.include.iter().any(hit);
        included && !self.exclude.iter().any(hit)
    }

    pub fn state_database(&self) -> &str {
        &self.state_database
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(db: Option<&str>, dbr: Option<&str>, cols: Option<&[&str]>, cr: Option<&str>) -> NamespaceFilter {
        NamespaceFilter {
            database: db.map(Into::into),
            database_regex: dbr.map(Into::into),
            collections: cols.map(|c| c.iter().map(|s| s.to_string()).collect()),
            collections_regex: cr.map(Into::into),
        }
    }

    #[test]
    fn no_filters_select_every_user_namespace() {
        let s = NamespaceSelector::new(&[], &[], "__cutover").unwrap();
        assert!(s.selects("shop", "orders"));
        assert!(!s.selects("shop", "system.views"));
        assert!(!s.selects("admin", "x"));
        assert!(!s.selects("local", "oplog.rs"));
        assert!(!s.selects("__cutover", "checkpoints"));
        assert!(!s.is_filtered());
    }

    #[test]
    fn include_then_exclude() {
        let s = NamespaceSelector::new(
            &[f(Some("shop"), None, Some(&["orders", "users"]), None), f(None, Some("^an"), None, None)],
            &[f(None, Some("^tmp_"), None, None), f(Some("analytics"), None, None, Some("^scratch"))],
            "__cutover",
        )
        .unwrap();
        assert!(s.selects("shop", "orders"));
        assert!(!s.selects("shop", "carts"));
        assert!(s.selects("analytics", "events"));
        assert!(!s.selects("analytics", "scratch_1"));
        assert!(!s.selects("tmp_x", "a"));
        assert!(s.may_select_database("analytics"));
        assert!(!s.may_select_database("tmp_x"));
        assert!(!s.may_select_database("other"));
    }
}
