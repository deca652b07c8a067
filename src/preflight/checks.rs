//! The result of `cutover check`: a list of checks, as text or JSON.

use std::fmt::Write as _;

use serde::Serialize;

use crate::base::role::Role;

/// What a check is about: the plan itself, or one of its clusters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Plan,
    Cluster(Role),
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Plan => "plan",
            Scope::Cluster(r) => r.as_str(),
        }
    }
}

impl From<Role> for Scope {
    fn from(r: Role) -> Self {
        Scope::Cluster(r)
    }
}

impl Serialize for Scope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// A stable identifier, e.g. `version`, `privileges`, `namespaces.empty-on-destination`.
    pub id: String,
    pub cluster: Scope,
    pub status: Status,
    pub message: String,
    /// What to do about a failure or warning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    pub fn pass(id: &str, cluster: impl Into<Scope>, message: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            cluster: cluster.into(),
            status: Status::Pass,
            message: message.into(),
            fix: None,
        }
    }
    pub fn warn(
        id: &str,
        cluster: impl Into<Scope>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            id: id.into(),
            cluster: cluster.into(),
            status: Status::Warn,
            message: message.into(),
            fix: Some(fix.into()),
        }
    }
    pub fn fail(
        id: &str,
        cluster: impl Into<Scope>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            id: id.into(),
            cluster: cluster.into(),
            status: Status::Fail,
            message: message.into(),
            fix: Some(fix.into()),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct CheckReport {
    pub ok: bool,
    pub plan: String,
    pub checks: Vec<Check>,
}

impl CheckReport {
    pub fn new(plan: &str, checks: Vec<Check>) -> Self {
        let ok = !checks.iter().any(|c| c.status == Status::Fail);
        Self {
            ok,
            plan: plan.to_string(),
            checks,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|_| "{}".into())
    }

    /// Readable text; `color` adds ANSI colours to the status markers.
    pub fn to_text(&self, color: bool) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "plan `{}`", self.plan);
        for c in &self.checks {
            let (mark, code) = match c.status {
                Status::Pass => ("pass", "32"),
                Status::Warn => ("warn", "33"),
                Status::Fail => ("FAIL", "31"),
            };
            let mark = if color {
                format!("\x1b[{code}m{mark}\x1b[0m")
            } else {
                mark.to_string()
            };
            let _ = writeln!(
                s,
                "  {mark}  {:<11} {:<30} {}",
                c.cluster.as_str(),
                c.id,
                c.message
            );
            if let Some(fix) = &c.fix {
                if c.status != Status::Pass {
                    let _ = writeln!(s, "        {:<11} {:<30} fix: {fix}", "", "");
                }
            }
        }
        let fails = self
            .checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .count();
        let warns = self
            .checks
            .iter()
            .filter(|c| c.status == Status::Warn)
            .count();
        let _ = writeln!(
            s,
            "{}: {} checks, {fails} failed, {warns} warnings",
            if self.ok { "ok" } else { "failed" },
            self.checks.len()
        );
        s
    }
}
