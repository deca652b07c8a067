//! What the filters select, and the data limitations cutover checks rather than documents:
//! non-empty destination namespaces, unique and non-unique indexes on one key pattern,
//! `$`-prefixed field names, `system.*` namespaces, and (reversible plans) unique indexes.

use std::collections::BTreeSet;

use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};

use super::{human_bytes, SAMPLE_SIZE};
use crate::base::namespace::Namespace;
use crate::base::role::Role;
use crate::cluster::{get_i64, list_namespaces, Cluster};
use crate::engine::catalog::index_format::{self, FindingKind};
use crate::plan::Plan;
use crate::preflight::checks::Check;

/// What later checks need from the inventory.
#[derive(Debug, Default)]
pub struct Inventory {
    pub total_bytes: i64,
}

/// At most this many items are named in one message.
const LIST_MAX: usize = 10;

fn list<T: std::fmt::Display>(items: &[T]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("`{i}`")).collect();
    list_plain(&quoted)
}

fn list_plain(items: &[String]) -> String {
    let mut s: Vec<String> = items.iter().take(LIST_MAX).cloned().collect();
    if items.len() > LIST_MAX {
        s.push(format!("and {} more", items.len() - LIST_MAX));
    }
    s.join(", ")
}

pub async fn inventory_checks(
    plan: &Plan,
    source: &Cluster,
    dest: &Cluster,
    deep: bool,
    out: &mut Vec<Check>,
) -> Inventory {
    let mut inv = Inventory::default();
    let listing = match list_namespaces(&source.client, &plan.selector).await {
        Ok(l) => l,
        Err(e) => {
            out.push(Check::fail(
                "namespaces",
                Role::Source,
                format!("cannot list the source's namespaces: {}", source.error(&e)),
                "grant `listDatabases` and `listCollections` (e.g. `readAnyDatabase`)",
            ));
            return inv;
        }
    };

    // Counts and sizes.
    let mut described = Vec::new();
    let mut total_docs = 0;
    for ns in &listing.selected {
        let (count, size) = coll_stats(source, ns).await;
        total_docs += count;
        inv.total_bytes += size;
        described.push(format!(
            "`{ns}` ({count} document{}, {})",
            if count == 1 { "" } else { "s" },
            human_bytes(size)
        ));
    }
    let n = listing.selected.len();
    if n == 0 {
        out.push(Check::warn(
            "namespaces",
            Role::Source,
            "the plan's filters select no collection on the source".to_string(),
            "check `options.include`/`options.exclude` and that the source holds data",
        ));
    } else {
        let views = if listing.views.is_empty() {
            String::new()
        } else {
            format!("; views: {}", list(&listing.views))
        };
        out.push(Check::pass(
            "namespaces",
            Role::Source,
            format!(
                "{n} collection{} selected, {total_docs} documents, {}: {}{views}",
                if n == 1 { "" } else { "s" },
                human_bytes(inv.total_bytes),
                list_plain(&described)
            ),
        ));
    }
    out.push(if listing.system.is_empty() {
        Check::pass(
            "namespaces.system",
            Role::Source,
            "no `system.*` collections in the selected databases",
        )
    } else {
        Check::pass(
            "namespaces.system",
            Role::Source,
            format!(
                "excluded, never synced: {} (`system.*` collections are the server's own)",
                list(&listing.system)
            ),
        )
    });

    out.push(destination_empty(dest, &listing.selected).await);
    out.push(index_conflicts(source, &listing.selected).await);
    out.push(dollar_fields_check(source, &listing.selected, deep).await);
    inv
}

async fn coll_stats(c: &Cluster, ns: &Namespace) -> (i64, i64) {
    let res: Result<Vec<Document>, _> = async {
        c.client
            .database(&ns.db)
            .collection::<Document>(&ns.coll)
            .aggregate([doc! {"$collStats": {"storageStats": {}}}])
            .await?
            .try_collect()
            .await
    }
    .await;
    match res
        .ok()
        .as_ref()
        .and_then(|v| v.first())
        .and_then(|d| d.get_document("storageStats").ok())
    {
        Some(s) => (get_i64(s, "count"), get_i64(s, "size")),
        None => (0, 0),
    }
}

async fn destination_empty(dest: &Cluster, selected: &[Namespace]) -> Check {
    let mut non_empty = Vec::new();
    for ns in selected {
        match dest
            .client
            .database(&ns.db)
            .collection::<Document>(&ns.coll)
            .find_one(doc! {})
            .projection(doc! {"_id": 1})
            .await
        {
            Ok(Some(_)) => non_empty.push(ns.clone()),
            Ok(None) => {}
            Err(e) => {
                return Check::warn(
                    "namespaces.destination-empty",
                    Role::Destination,
                    format!("cannot read `{ns}` on the destination: {}", dest.error(&e)),
                    "grant `find` on the selected databases",
                )
            }
        }
    }
    if non_empty.is_empty() {
        Check::pass(
            "namespaces.destination-empty",
            Role::Destination,
            "no selected namespace holds documents on the destination",
        )
    } else {
        Check::fail(
            "namespaces.destination-empty",
            Role::Destination,
            format!("{} selected namespace{} already hold documents on the destination: {}", non_empty.len(), if non_empty.len() == 1 { "" } else { "s" }, list(&non_empty)),
            "drop these collections on the destination (if they are leftovers), or leave them out with `[[options.exclude]]`",
        )
    }
}

/// A unique and a non-unique index on the same key pattern (mongosync cannot sync these).
async fn index_conflicts(source: &Cluster, selected: &[Namespace]) -> Check {
    let mut conflicts = Vec::new();
    for ns in selected {
        let specs = match index_format::index_specs(&source.client, ns).await {
            Ok(s) => s,
            Err(e) => {
                return Check::warn(
                    "indexes.unique-conflict",
                    Role::Source,
                    format!("cannot list the indexes of `{ns}`: {}", source.error(&e)),
                    "grant `listIndexes`",
                )
            }
        };
        for (i, a) in specs.iter().enumerate() {
            for b in &specs[i + 1..] {
                let (Ok(ka), Ok(kb)) = (a.get_document("key"), b.get_document("key")) else {
                    continue;
                };
                let ua = a.get_bool("unique").unwrap_or(false);
                let ub = b.get_bool("unique").unwrap_or(false);
                if ka == kb && ua != ub {
                    let (u, nu) = if ua { (a, b) } else { (b, a) };
                    conflicts.push(format!(
                        "`{ns}` key {ka}: unique `{}` and non-unique `{}`",
                        u.get_str("name").unwrap_or("?"),
                        nu.get_str("name").unwrap_or("?")
                    ));
                }
            }
        }
    }
    if conflicts.is_empty() {
        Check::pass(
            "indexes.unique-conflict",
            Role::Source,
            "no key pattern has both a unique and a non-unique index",
        )
    } else {
        Check::fail(
            "indexes.unique-conflict",
            Role::Source,
            format!("a unique and a non-unique index share a key pattern (not supported): {}", conflicts.join("; ")),
            "drop one of the two indexes on the source (usually the non-unique one: the unique index serves the same queries)",
        )
    }
}

/// Field paths whose name starts with `$`, anywhere in `d` (arrays included).
pub fn dollar_fields(d: &Document) -> Vec<String> {
    fn walk(d: &Document, prefix: &str, out: &mut Vec<String>) {
        for (k, v) in d {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            if k.starts_with('$') {
                out.push(path.clone());
            }
            walk_value(v, &path, out);
        }
    }
    fn walk_value(v: &Bson, path: &str, out: &mut Vec<String>) {
        match v {
            Bson::Document(d) => walk(d, path, out),
            Bson::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    walk_value(x, &format!("{path}.{i}"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(d, "", &mut out);
    out
}

/// `$`-prefixed field names in one collection: a sample (`$sample`) or every document.
async fn scan_one(
    source: &Cluster,
    ns: &Namespace,
    deep: bool,
) -> Result<(u64, Vec<String>), mongodb::error::Error> {
    let coll = source
        .client
        .database(&ns.db)
        .collection::<Document>(&ns.coll);
    let mut cursor = if deep {
        coll.find(doc! {}).await?
    } else {
        coll.aggregate([doc! {"$sample": {"size": SAMPLE_SIZE}}])
            .await?
    };
    let mut scanned = 0;
    let mut found = Vec::new();
    while let Some(d) = cursor.try_next().await? {
        scanned += 1;
        for p in dollar_fields(&d) {
            if found.len() < 3 {
                found.push(format!(
                    "`{ns}` _id {}: `{p}`",
                    d.get("_id").map(|i| i.to_string()).unwrap_or_default()
                ));
            }
        }
    }
    Ok((scanned, found))
}

/// `$`-prefixed field names are a warning, not a failure: the server stores them (5.0+) and
/// cutover moves whole documents, but mongosync lists them as unsupported and update operators
/// cannot address them, so the operator should know and verify them.
async fn dollar_fields_check(source: &Cluster, selected: &[Namespace], deep: bool) -> Check {
    let mut scanned = 0;
    let mut found = Vec::new();
    for ns in selected {
        match scan_one(source, ns, deep).await {
            Ok((n, f)) => {
                scanned += n;
                found.extend(f);
            }
            Err(e) => {
                return Check::warn(
                    "documents.dollar-fields",
                    Role::Source,
                    format!("cannot scan `{ns}`: {}", source.error(&e)),
                    "grant `find` on the selected databases",
                )
            }
        }
    }
    let how = if deep {
        "every document".to_string()
    } else {
        format!("a sample of up to {SAMPLE_SIZE} documents per collection; `--deep` scans all")
    };
    if found.is_empty() {
        Check::pass(
            "documents.dollar-fields",
            Role::Source,
            format!("no `$`-prefixed field names in {scanned} documents ({how})"),
        )
    } else {
        Check::warn(
            "documents.dollar-fields",
            Role::Source,
            format!(
                "documents with `$`-prefixed field names in {how}: {}. MongoDB stores them since 5.0, but update operators cannot address them and mongosync does not support them",
                found.join("; ")
            ),
            "cutover copies and replicates whole documents; run a `verify` step after the sync to confirm these documents, or rename the fields (`$setField`/`$unsetField` in an update pipeline)",
        )
    }
}

/// For reversible plans: the `validate-indexes` checks, run read-only before anything starts.
pub async fn unique_index_checks(plan: &Plan, source: &Cluster, dest: &Cluster) -> Vec<Check> {
    let mut out = Vec::new();
    match index_format::check_unique_index_formats(&plan.source, &plan.selector).await {
        Ok(findings) => {
            let bad: Vec<String> = findings
                .iter()
                .filter(|f| f.is_problem())
                .map(|f| f.to_string())
                .collect();
            let members: BTreeSet<&str> = findings
                .iter()
                .filter_map(|f| f.member.as_deref())
                .collect();
            let indexes: BTreeSet<(String, &str)> = findings
                .iter()
                .map(|f| (f.namespace.to_string(), f.index.as_str()))
                .collect();
            if bad.is_empty() {
                out.push(Check::pass(
                    "indexes.unique-format",
                    Role::Source,
                    format!(
                        "{} unique index{} checked on {} member{}: none uses the legacy format",
                        indexes.len(),
                        if indexes.len() == 1 { "" } else { "es" },
                        members.len(),
                        if members.len() == 1 { "" } else { "s" }
                    ),
                ));
            } else {
                let fix = findings
                    .iter()
                    .find(|f| f.is_problem())
                    .map(|f| f.fix())
                    .unwrap_or_default();
                out.push(Check::fail(
                    "indexes.unique-format",
                    Role::Source,
                    format!(
                        "`reverse` needs unique indexes in the new format: {}",
                        bad.join("; ")
                    ),
                    fix,
                ));
            }
        }
        Err(e) => out.push(Check::fail(
            "indexes.unique-format",
            Role::Source,
            e.to_string(),
            e.hint(),
        )),
    }
    match index_format::compare_unique_indexes(&source.client, &dest.client, &plan.selector).await {
        Ok(findings) => {
            let different: Vec<String> = findings
                .iter()
                .filter(|f| matches!(f.kind, FindingKind::DifferentOnDestination { .. }))
                .map(|f| f.to_string())
                .collect();
            let to_build = findings
                .iter()
                .filter(|f| f.kind == FindingKind::MissingOnDestination)
                .count();
            if different.is_empty() {
                out.push(Check::pass(
                    "indexes.unique-on-destination",
                    Role::Destination,
                    format!(
                        "{} source unique index{}: none conflicts with the destination ({to_build} to be built by `sync`)",
                        findings.len(),
                        if findings.len() == 1 { "" } else { "es" }
                    ),
                ));
            } else {
                out.push(Check::fail(
                    "indexes.unique-on-destination",
                    Role::Destination,
                    different.join("; "),
                    "drop the conflicting index on the destination and let `sync` build it as on the source",
                ));
            }
        }
        Err(e) => out.push(Check::fail(
            "indexes.unique-on-destination",
            Role::Destination,
            e.to_string(),
            e.hint(),
        )),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_dollar_fields_at_any_depth() {
        let d = doc! {"_id": 1, "a": {"$b": 1}, "c": [{"x": 1}, {"$y": 2}], "$top": 3, "ok": "$notakey"};
        assert_eq!(dollar_fields(&d), vec!["a.$b", "c.1.$y", "$top"]);
        assert!(dollar_fields(&doc! {"a": 1, "b": {"c": [1, 2]}}).is_empty());
    }
}
