//! The catalog side of verify: which namespaces exist on each cluster, and whether their
//! collection options, index specs and view definitions are identical.
//!
//! Options are listCollections' raw `options` (minus `uuid`, which always differs); index
//! specs are listIndexes' raw specs (minus the legacy `ns`). Both are compared as raw BSON
//! bytes, so field order counts, as it does for the server (a key pattern `{a:1,b:1}` is not
//! `{b:1,a:1}`). Note: while a sync is running, unique indexes may be temporarily non-unique on
//! the destination (and TTL indexes paused); verify is meant to run after the commit, and
//! before it such settings are reported as index differences.

use std::collections::BTreeMap;

use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, RawDocument, RawDocumentBuf};
use mongodb::Client;
use serde::Serialize;

use super::error::VerifyError;
use crate::base::namespace::Namespace;
use crate::base::role::Role;
use crate::plan::NamespaceSelector;

/// What listCollections says about one namespace on one cluster.
#[derive(Clone, Debug)]
pub struct CollectionInfo {
    /// `collection`, `view` or `timeseries`.
    pub kind: String,
    /// `options` without `uuid`.
    pub options: RawDocumentBuf,
}

/// Both clusters' catalogs, restricted to the plan's namespaces.
pub type Catalog = BTreeMap<Namespace, (Option<CollectionInfo>, Option<CollectionInfo>)>;

pub async fn list_selected(
    source: &Client,
    dest: &Client,
    selector: &NamespaceSelector,
) -> Result<Catalog, VerifyError> {
    let mut out: Catalog = BTreeMap::new();
    for (side, client) in [(Role::Source, source), (Role::Destination, dest)] {
        for (ns, info) in list_side(side, client, selector).await? {
            let entry = out.entry(ns).or_insert((None, None));
            match side {
                Role::Source => entry.0 = Some(info),
                Role::Destination => entry.1 = Some(info),
            }
        }
    }
    Ok(out)
}

async fn list_side(
    side: Role,
    client: &Client,
    selector: &NamespaceSelector,
) -> Result<Vec<(Namespace, CollectionInfo)>, VerifyError> {
    let dbs = client
        .list_database_names()
        .await
        .map_err(|e| VerifyError::driver(side, None, "listing databases", &e))?;
    let mut out = Vec::new();
    for db in dbs.into_iter().filter(|d| selector.may_select_database(d)) {
        let mut cursor = client
            .database(&db)
            .run_raw_cursor_command(raw(doc! {"listCollections": 1}))
            .await
            .map_err(|e| {
                VerifyError::driver(side, None, &format!("listing collections of `{db}`"), &e)
            })?
            .with_type::<RawDocumentBuf>();
        while let Some(spec) = cursor.try_next().await.map_err(|e| {
            VerifyError::driver(side, None, &format!("listing collections of `{db}`"), &e)
        })? {
            let Ok(name) = spec.get_str("name") else {
                continue;
            };
            if !selector.selects(&db, name) {
                continue;
            }
            let kind = spec.get_str("type").unwrap_or("collection").to_string();
            let options = spec
                .get_document("options")
                .map(|o| without(o, &["uuid"]))
                .unwrap_or_else(|_| RawDocumentBuf::new());
            out.push((Namespace::new(&db, name), CollectionInfo { kind, options }));
        }
    }
    Ok(out)
}

fn raw(d: mongodb::bson::Document) -> RawDocumentBuf {
    // A `doc!` literal always serializes.
    RawDocumentBuf::from_document(&d).unwrap_or_default()
}

/// A copy of `d` without the named top-level fields, keeping the order of the rest.
pub fn without(d: &RawDocument, drop: &[&str]) -> RawDocumentBuf {
    let mut out = RawDocumentBuf::new();
    for (k, v) in d.iter().flatten() {
        if !drop.contains(&k) {
            out.append_ref(k, v);
        }
    }
    out
}

/// One differing index, option or view field.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CatalogDifference {
    /// The index name, or the option (`validator`, `collation`, `viewOn`, `type`, ...).
    pub name: String,
    /// `missing` (on the destination), `extra` (only on the destination) or `different`.
    pub kind: &'static str,
    /// The source's value as relaxed extended JSON (absent when missing there).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<serde_json::Value>,
}

fn json(d: Option<&RawDocument>) -> Option<serde_json::Value> {
    d.and_then(|d| mongodb::bson::Document::try_from(d).ok())
        .map(|d| Bson::Document(d).into_relaxed_extjson())
}

fn json_value(v: Option<mongodb::bson::RawBsonRef<'_>>) -> Option<serde_json::Value> {
    v.and_then(|v| Bson::try_from(v.to_raw_bson()).ok())
        .map(Bson::into_relaxed_extjson)
}

/// Compares two documents key by key (raw bytes of each value, and the key order itself).
pub fn diff_fields(
    source: &RawDocument,
    dest: &RawDocument,
    skip: &[&str],
) -> Vec<CatalogDifference> {
    let mut out = Vec::new();
    let src: Vec<_> = source
        .iter()
        .flatten()
        .filter(|(k, _)| !skip.contains(k))
        .collect();
    let dst: Vec<_> = dest
        .iter()
        .flatten()
        .filter(|(k, _)| !skip.contains(k))
        .collect();
    for (k, v) in &src {
        match dst.iter().find(|(dk, _)| dk == k) {
            None => out.push(CatalogDifference {
                name: k.to_string(),
                kind: "missing",
                source: json_value(Some(*v)),
                destination: None,
            }),
            Some((_, dv)) if !same_value(*v, *dv) => out.push(CatalogDifference {
                name: k.to_string(),
                kind: "different",
                source: json_value(Some(*v)),
                destination: json_value(Some(*dv)),
            }),
            _ => {}
        }
    }
    for (k, v) in &dst {
        if !src.iter().any(|(sk, _)| sk == k) {
            out.push(CatalogDifference {
                name: k.to_string(),
                kind: "extra",
                source: None,
                destination: json_value(Some(*v)),
            });
        }
    }
    out
}

fn same_value(a: mongodb::bson::RawBsonRef<'_>, b: mongodb::bson::RawBsonRef<'_>) -> bool {
    // Byte equality of the value (type and encoding), via a one-field wrapper document.
    let mut da = RawDocumentBuf::new();
    da.append_ref("v", a);
    let mut db = RawDocumentBuf::new();
    db.append_ref("v", b);
    da.as_bytes() == db.as_bytes()
}

/// Option and view differences between the two sides of one namespace.
pub fn diff_options(
    source: &CollectionInfo,
    dest: &CollectionInfo,
) -> (Vec<CatalogDifference>, Vec<CatalogDifference>) {
    let mut options = Vec::new();
    if source.kind != dest.kind {
        options.push(CatalogDifference {
            name: "type".into(),
            kind: "different",
            source: Some(serde_json::Value::String(source.kind.clone())),
            destination: Some(serde_json::Value::String(dest.kind.clone())),
        });
    }
    let view_fields = ["viewOn", "pipeline"];
    let views = diff_fields(
        &only(&source.options, &view_fields),
        &only(&dest.options, &view_fields),
        &[],
    );
    options.extend(diff_fields(&source.options, &dest.options, &view_fields));
    (options, views)
}

fn only(d: &RawDocument, keep: &[&str]) -> RawDocumentBuf {
    let mut out = RawDocumentBuf::new();
    for (k, v) in d.iter().flatten() {
        if keep.contains(&k) {
            out.append_ref(k, v);
        }
    }
    out
}

/// Index specs by name, raw, minus `ns`. Empty when the collection does not exist.
pub async fn list_indexes(
    side: Role,
    client: &Client,
    ns: &Namespace,
) -> Result<Vec<(String, RawDocumentBuf)>, VerifyError> {
    let cmd = raw(doc! {"listIndexes": &ns.coll});
    let mut cursor = match client.database(&ns.db).run_raw_cursor_command(cmd).await {
        Ok(c) => c.with_type::<RawDocumentBuf>(),
        // NamespaceNotFound: no indexes to compare.
        Err(e) if matches!(e.kind.as_ref(), mongodb::error::ErrorKind::Command(c) if c.code == crate::cluster::server_error::code::NAMESPACE_NOT_FOUND) => {
            return Ok(Vec::new())
        }
        Err(e) => return Err(VerifyError::driver(side, Some(ns), "listing indexes", &e)),
    };
    let mut out = Vec::new();
    while let Some(spec) = cursor
        .try_next()
        .await
        .map_err(|e| VerifyError::driver(side, Some(ns), "listing indexes", &e))?
    {
        let name = spec.get_str("name").unwrap_or_default().to_string();
        out.push((name, without(&spec, &["ns"])));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Index differences by name: missing on the destination, extra there, or a different spec.
pub fn diff_indexes(
    source: &[(String, RawDocumentBuf)],
    dest: &[(String, RawDocumentBuf)],
) -> Vec<CatalogDifference> {
    let mut out = Vec::new();
    for (name, spec) in source {
        match dest.iter().find(|(n, _)| n == name) {
            None => out.push(CatalogDifference {
                name: name.clone(),
                kind: "missing",
                source: json(Some(spec)),
                destination: None,
            }),
            Some((_, d)) if d.as_bytes() != spec.as_bytes() => out.push(CatalogDifference {
                name: name.clone(),
                kind: "different",
                source: json(Some(spec)),
                destination: json(Some(d)),
            }),
            _ => {}
        }
    }
    for (name, spec) in dest {
        if !source.iter().any(|(n, _)| n == name) {
            out.push(CatalogDifference {
                name: name.clone(),
                kind: "extra",
                source: None,
                destination: json(Some(spec)),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(d: mongodb::bson::Document) -> RawDocumentBuf {
        RawDocumentBuf::from_document(&d).unwrap()
    }

    #[test]
    fn field_order_and_values_count() {
        let a = r(doc! {"validator": {"a": 1, "b": 1}, "capped": false});
        let b = r(doc! {"validator": {"b": 1, "a": 1}, "collation": {"locale": "fr"}});
        let d = diff_fields(&a, &b, &[]);
        let kinds: Vec<_> = d.iter().map(|d| (d.name.as_str(), d.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                ("validator", "different"),
                ("capped", "missing"),
                ("collation", "extra")
            ]
        );
    }

    #[test]
    fn index_differences_by_name() {
        let s = vec![
            (
                "_id_".to_string(),
                r(doc! {"v": 2, "key": {"_id": 1}, "name": "_id_"}),
            ),
            (
                "a_1".to_string(),
                r(doc! {"v": 2, "key": {"a": 1}, "name": "a_1", "unique": true}),
            ),
        ];
        let d = vec![
            (
                "_id_".to_string(),
                r(doc! {"v": 2, "key": {"_id": 1}, "name": "_id_"}),
            ),
            (
                "a_1".to_string(),
                r(doc! {"v": 2, "key": {"a": 1}, "name": "a_1"}),
            ),
        ];
        let diffs = diff_indexes(&s, &d);
        assert_eq!(diffs.len(), 1);
        assert_eq!(diffs[0].kind, "different");
        assert!(diff_indexes(&s, &d[..1])
            .iter()
            .any(|x| x.kind == "missing" && x.name == "a_1"));
    }
}
