//! One namespace's catalog entry (kind, options, indexes) and how two of them differ.

use mongodb::bson::{Bson, Document, RawDocumentBuf};

use crate::base::namespace::Namespace;

/// What a `listCollections` entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NsKind {
    Collection,
    View,
    Timeseries,
}

impl NsKind {
    pub fn from_type(t: &str) -> Option<Self> {
        match t {
            "collection" => Some(NsKind::Collection),
            "view" => Some(NsKind::View),
            "timeseries" => Some(NsKind::Timeseries),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            NsKind::Collection => "collection",
            NsKind::View => "view",
            NsKind::Timeseries => "timeseries",
        }
    }
}

/// A namespace as the server describes it, raw so no option is lost.
#[derive(Clone, Debug)]
pub struct NsSpec {
    pub ns: Namespace,
    pub kind: NsKind,
    /// The raw `listCollections` entry: `{name, type, options, info, idIndex}`.
    pub info: RawDocumentBuf,
    /// The raw `listIndexes` entries, `_id_` included; empty for views.
    pub indexes: Vec<RawDocumentBuf>,
}

impl NsSpec {
    /// The entry's `options` as a document (empty when absent).
    pub fn options(&self) -> Document {
        self.info
            .to_document()
            .ok()
            .and_then(|d| d.get_document("options").ok().cloned())
            .unwrap_or_default()
    }

    /// Index specs as documents.
    pub fn index_docs(&self) -> Vec<Document> {
        self.indexes
            .iter()
            .filter_map(|i| i.to_document().ok())
            .collect()
    }

    /// For a view: the collection it reads (same database).
    pub fn view_on(&self) -> Option<String> {
        self.options().get_str("viewOn").ok().map(str::to_string)
    }
}

/// Where the engine reads and writes this namespace's documents, or `None` for a view
/// (nothing to copy).
///
/// Time-series collections are copied as their buckets: the documents of
/// `<db>.system.buckets.<name>` are moved raw, exactly as the source stores them (verified on
/// 6.0.5: `root` may `insert`/`update`/`delete` in `system.buckets.<name>` on the destination,
/// and the time-series view then shows the same measurements). Re-bucketing measurements
/// would change bucket `_id`s and layout; raw buckets keep the destination identical and let
/// change events (bucket inserts and updates, seen with `showSystemEvents: true`) apply
/// per bucket `_id` like any other collection.
pub fn copy_target(spec: &NsSpec) -> Option<Namespace> {
    match spec.kind {
        NsKind::View => None,
        NsKind::Collection => Some(spec.ns.clone()),
        NsKind::Timeseries => Some(buckets_of(&spec.ns)),
    }
}

/// `<db>.system.buckets.<coll>`.
pub fn buckets_of(ns: &Namespace) -> Namespace {
    Namespace::new(ns.db.clone(), format!("{BUCKETS_PREFIX}{}", ns.coll))
}

pub const BUCKETS_PREFIX: &str = "system.buckets.";

/// Differences between two namespaces' kinds, options and index specs, as readable lines;
/// empty when they are the same. Ignores what legitimately differs between clusters
/// (`info.uuid`, an index's legacy `ns`); key order inside options is ignored, the order of
/// an index's key fields is not.
pub fn compare_specs(a: &NsSpec, b: &NsSpec) -> Vec<String> {
    let mut out = Vec::new();
    let ns = &a.ns;
    if a.kind != b.kind {
        out.push(format!(
            "{ns}: kind {} vs {}",
            a.kind.as_str(),
            b.kind.as_str()
        ));
    }
    let (oa, ob) = (a.options(), b.options());
    for (k, v) in &oa {
        match ob.get(k) {
            None => out.push(format!("{ns}: option {k} = {v} only on the first")),
            Some(w) if !bson_eq(v, w) => out.push(format!("{ns}: option {k}: {v} vs {w}")),
            _ => {}
        }
    }
    for (k, w) in &ob {
        if !oa.contains_key(k) {
            out.push(format!("{ns}: option {k} = {w} only on the second"));
        }
    }
    let ia = a.index_docs();
    let ib = b.index_docs();
    let name = |d: &Document| d.get_str("name").unwrap_or_default().to_string();
    for x in &ia {
        match ib.iter().find(|y| name(y) == name(x)) {
            None => out.push(format!("{ns}: index {} only on the first: {x}", name(x))),
            Some(y) => {
                let (cx, cy) = (clean_index(x), clean_index(y));
                if !bson_eq(&Bson::Document(cx.clone()), &Bson::Document(cy.clone())) {
                    out.push(format!("{ns}: index {}: {cx} vs {cy}", name(x)));
                }
            }
        }
    }
    for y in &ib {
        if !ia.iter().any(|x| name(x) == name(y)) {
            out.push(format!("{ns}: index {} only on the second: {y}", name(y)));
        }
    }
    out
}

fn clean_index(d: &Document) -> Document {
    let mut d = d.clone();
    d.remove("ns");
    d
}

/// Equality where document key order does not matter, except inside an index `key`
/// (compared by [`compare_specs`] through `key_order_eq`).
pub(crate) fn bson_eq(a: &Bson, b: &Bson) -> bool {
    match (a, b) {
        (Bson::Document(x), Bson::Document(y)) => {
            if let (Ok(kx), Ok(ky)) = (x.get_document("key"), y.get_document("key")) {
                if !key_order_eq(kx, ky) {
                    return false;
                }
            }
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| bson_eq(v, w)))
        }
        (Bson::Array(x), Bson::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(v, w)| bson_eq(v, w))
        }
        _ => numeric(a).zip(numeric(b)).map_or(a == b, |(x, y)| x == y),
    }
}

fn key_order_eq(a: &Document, b: &Document) -> bool {
    a.keys().eq(b.keys())
}

/// Numbers compare by value whatever their BSON type (`size: 1024` vs `size: 1024.0`).
fn numeric(b: &Bson) -> Option<f64> {
    match b {
        Bson::Int32(i) => Some(f64::from(*i)),
        Bson::Int64(i) => Some(*i as f64),
        Bson::Double(d) => Some(*d),
        _ => None,
    }
}

/// A BSON number as i64.
pub(crate) fn as_i64(b: Option<&Bson>) -> Option<i64> {
    match b? {
        Bson::Int32(i) => Some(i64::from(*i)),
        Bson::Int64(i) => Some(*i),
        Bson::Double(d) => Some(*d as i64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::{doc, rawdoc};

    fn spec(options: Document, indexes: Vec<Document>) -> NsSpec {
        let info =
            doc! {"name": "c", "type": "collection", "options": options, "info": {"uuid": 1}};
        NsSpec {
            ns: Namespace::new("d", "c"),
            kind: NsKind::Collection,
            info: RawDocumentBuf::from_document(&info).unwrap(),
            indexes: indexes
                .iter()
                .map(|i| RawDocumentBuf::from_document(i).unwrap())
                .collect(),
        }
    }

    #[test]
    fn option_order_is_ignored_but_index_key_order_is_not() {
        let a = spec(
            doc! {"validator": {"a": 1, "b": 2}, "size": 10},
            vec![doc! {"name": "i", "key": {"a": 1, "b": 1}}],
        );
        let b = spec(
            doc! {"size": 10.0, "validator": {"b": 2, "a": 1}},
            vec![doc! {"key": {"a": 1, "b": 1}, "name": "i"}],
        );
        assert!(
            compare_specs(&a, &b).is_empty(),
            "{:?}",
            compare_specs(&a, &b)
        );
        let c = spec(
            doc! {"size": 10, "validator": {"b": 2, "a": 1}},
            vec![doc! {"key": {"b": 1, "a": 1}, "name": "i"}],
        );
        assert_eq!(compare_specs(&a, &c).len(), 1);
        let d = spec(doc! {"size": 11}, vec![]);
        let diffs = compare_specs(&a, &d);
        assert!(diffs.iter().any(|l| l.contains("option size")), "{diffs:?}");
        assert!(
            diffs
                .iter()
                .any(|l| l.contains("index i only on the first")),
            "{diffs:?}"
        );
        let _ = rawdoc! {};
    }
}
