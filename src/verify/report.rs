//! The verify report: bounded (first N differences per namespace, with totals), as text and
//! as JSON.

use serde::Serialize;

use super::catalog::CatalogDifference;

/// One document-level difference. `_id` is relaxed extended JSON.
#[derive(Clone, Debug, Serialize)]
pub struct Mismatch {
    #[serde(rename = "_id")]
    pub id: serde_json::Value,
    /// `missing` (on the destination), `extra` (only on the destination) or `different`.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Totals {
    pub missing: u64,
    pub extra: u64,
    pub different: u64,
}

impl Totals {
    pub fn sum(&self) -> u64 {
        self.missing + self.extra + self.different
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct NamespaceReport {
    pub ns: String,
    /// `collection`, `view` or `timeseries` (the source's, else the destination's).
    #[serde(rename = "type")]
    pub kind: String,
    /// `ok`, `mismatch`, `missing` (not on the destination) or `extra` (only on the destination).
    pub status: &'static str,
    pub source_count: u64,
    pub destination_count: u64,
    /// The first `max_differences` document differences in `_id` order.
    pub mismatches: Vec<Mismatch>,
    pub mismatch_totals: Totals,
    /// True when `mismatches` lists fewer than the totals.
    pub mismatches_truncated: bool,
    pub index_differences: Vec<CatalogDifference>,
    pub option_differences: Vec<CatalogDifference>,
    pub view_differences: Vec<CatalogDifference>,
    /// `_id` ranges compared, and how many of them a previous, interrupted run had finished.
    pub ranges: u64,
    pub ranges_resumed: u64,
    /// Range re-reads after a difference (lag-aware rechecks).
    pub rechecks: u64,
    /// What was not compared, and why (e.g. time-series documents).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Every differing `_id` named (up to `collect_ids`), with its BSON type, for repair.
    #[serde(skip)]
    pub ids: Vec<(mongodb::bson::Bson, super::scan::Kind)>,
}

impl NamespaceReport {
    pub fn is_ok(&self) -> bool {
        self.status == "ok"
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub plan: String,
    /// The run number in the state database (`verify_runs`).
    pub run: i64,
    /// True when this run continued an interrupted one.
    pub resumed: bool,
    /// Source documents covered by the report (including ranges a previous run finished).
    pub documents_compared: u64,
    /// Wall time of this invocation.
    pub elapsed_seconds: f64,
    pub namespaces: Vec<NamespaceReport>,
}

impl VerifyReport {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|_| "{\"ok\": false}".into())
    }

    pub fn to_text(&self) -> String {
        let bad = self.namespaces.iter().filter(|n| !n.is_ok()).count();
        let mut s = format!(
            "verify `{}` (run {}{}): {}\n",
            self.plan,
            self.run,
            if self.resumed { ", resumed" } else { "" },
            if self.ok {
                format!(
                    "OK, {} namespace{} identical",
                    self.namespaces.len(),
                    plural(self.namespaces.len())
                )
            } else {
                format!(
                    "MISMATCH, {bad} of {} namespace{} differ",
                    self.namespaces.len(),
                    plural(self.namespaces.len())
                )
            }
        );
        for n in &self.namespaces {
            if n.kind == "view" {
                s += &format!("  {:<9} {} (view)", n.status, n.ns);
            } else {
                s += &format!(
                    "  {:<9} {} ({}): {} source / {} destination documents",
                    n.status, n.ns, n.kind, n.source_count, n.destination_count
                );
            }
            let t = &n.mismatch_totals;
            if t.sum() > 0 {
                s += &format!(
                    "; {} missing, {} extra, {} different",
                    t.missing, t.extra, t.different
                );
            }
            s.push('\n');
            for m in &n.mismatches {
                s += &format!("      {:<9} _id {}\n", m.kind, m.id);
            }
            if n.mismatches_truncated {
                s += &format!(
                    "      ... {} more (raise --max-differences to list them)\n",
                    t.sum() - n.mismatches.len() as u64
                );
            }
            for (what, list) in [
                ("index", &n.index_differences),
                ("option", &n.option_differences),
                ("view", &n.view_differences),
            ] {
                for d in list {
                    s += &format!("      {what} `{}` {}", d.name, d.kind);
                    if let Some(v) = &d.source {
                        s += &format!(" source {v}");
                    }
                    if let Some(v) = &d.destination {
                        s += &format!(" destination {v}");
                    }
                    s.push('\n');
                }
            }
            if let Some(note) = &n.note {
                s += &format!("      note: {note}\n");
            }
        }
        s
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
