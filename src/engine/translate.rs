//! Turning CRUD change events into write statements that are idempotent and exact.
//!
//! - insert → an `insert` of the full document, batched; a duplicate key (the document is
//!   already there: copied, or an event replayed after a crash) falls back to the upsert below.
//! - replace → `update {q: documentKey, u: fullDocument, upsert: true}`: re-applying
//!   it after a crash is harmless. A document with `$`-prefixed top-level fields cannot be a
//!   replacement document (the server would read them as operators), so those use a pipeline
//!   `[{$replaceWith: {$literal: doc}}]`.
//! - update → translated from the server's own description of the change: the change stream
//!   is opened with `showRawUpdateDescription`, so an update event carries the oplog entry's
//!   delta (`{$v: 2, diff}`) instead of `updatedFields`/`removedFields`. The delta names every
//!   field by itself, level by level (`sa: {u: {b: 1}}` is the field `b` inside `a`;
//!   `u: {"a.b": 1}` is the top-level field named `a.b`), where `updatedFields` joins the
//!   levels with dots and cannot tell the two apart (MongoDB 6.0 has no `disambiguatedPaths`).
//!   So ordinary nested updates (`$set: {"addr.city": ..}`) stay one `$set` of the same path,
//!   exact without reading anything; only an update that touches a field whose *name* contains
//!   a dot, starts with `$` or is empty (made with `$setField`/`$unsetField` or a replacement)
//!   has no update-operator form, and is applied by re-reading the source's current document
//!   ([`Stmt::Refetch`]): exact once the following events are applied. Deltas are translated
//!   as: array truncations (`l`) → a `$push {$each: [], $slice: n}` statement first; updated
//!   fields and array elements (`u`, `u<index>`, nested `s<field>` / `s<index>`) → `$set`;
//!   removed fields (`d`) → `$unset`; added fields (`i`) → `$set`, which appends them in the
//!   delta's order, except that `$set` applies several new fields of one object in name order
//!   (5.0+): fields added out of name order (a pipeline `$set: {z: 1, b: 2}`) get one `$set`
//!   statement each, in the delta's order, so the destination keeps the source's field order.
//!   An event with the classic `updateDescription` (a server that ignores the option) is
//!   applied from it when no path can be ambiguous, and re-read otherwise.
//! - delete → `delete {q: documentKey, limit: 1}`.

use mongodb::bson::{doc, Bson, Document, RawBson, RawBsonRef, RawDocument, RawDocumentBuf};

/// One write to send to the destination.
#[derive(Clone, Debug)]
pub enum Stmt {
    /// An `update` command statement.
    Update(RawDocumentBuf),
    /// An insert: `{q: documentKey, u: fullDocument}`; sent in an `insert` command, replayed
    /// as an upsert when the document exists.
    Insert(RawDocumentBuf),
    /// A `delete` command statement.
    Delete(RawDocumentBuf),
    /// The update cannot be expressed exactly: replace with the source's current document,
    /// read from the collection with the event's `collectionUUID` (renamed since, perhaps).
    Refetch {
        key: RawDocumentBuf,
        uuid: Option<mongodb::bson::Binary>,
    },
}

impl Stmt {
    pub fn size(&self) -> usize {
        match self {
            Stmt::Update(d) | Stmt::Insert(d) | Stmt::Delete(d) | Stmt::Refetch { key: d, .. } => {
                d.as_bytes().len()
            }
        }
    }
}

/// Why an event could not be translated.
pub type TranslateError = String;

pub fn translate(event: &RawDocument) -> Result<Vec<Stmt>, TranslateError> {
    let op = event
        .get_str("operationType")
        .map_err(|_| "event without operationType".to_string())?;
    let key = event
        .get_document("documentKey")
        .map_err(|_| format!("`{op}` event without documentKey"))?;
    let uuid = match event.get("collectionUUID").ok().flatten() {
        Some(RawBsonRef::Binary(b)) => Some(b.to_binary()),
        _ => None,
    };
    match op {
        "insert" => match event.get("fullDocument").ok().flatten() {
            Some(RawBsonRef::Document(full)) => {
                let mut d = RawDocumentBuf::new();
                d.append("q", key.to_raw_document_buf());
                d.append("u", full.to_raw_document_buf());
                Ok(vec![Stmt::Insert(d)])
            }
            // Dropped by our pipeline because the event would exceed 16 MB: fetch it.
            _ => Ok(vec![Stmt::Refetch {
                key: key.to_raw_document_buf(),
                uuid: uuid.clone(),
            }]),
        },
        "replace" => match event.get("fullDocument").ok().flatten() {
            Some(RawBsonRef::Document(full)) => Ok(vec![upsert(key, full)?]),
            // Dropped by our pipeline because the event would exceed 16 MB: fetch it.
            _ => Ok(vec![Stmt::Refetch {
                key: key.to_raw_document_buf(),
                uuid: uuid.clone(),
            }]),
        },
        "delete" => {
            let mut d = RawDocumentBuf::new();
            d.append("q", key.to_raw_document_buf());
            d.append("limit", 1i32);
            Ok(vec![Stmt::Delete(d)])
        }
        "update" => {
            if let Ok(raw) = event.get_document("rawUpdateDescription") {
                return from_delta(key, raw, &uuid);
            }
            let desc = event
                .get_document("updateDescription")
                .map_err(|_| "`update` event without updateDescription".to_string())?;
            from_update_description(key, desc, &uuid)
        }
        other => Err(format!("`{other}` is not a document event")),
    }
}

/// The classic `updateDescription` (dot-joined paths). Exact only when no path can be
/// ambiguous: the server says which are (`disambiguatedPaths`, 6.1+); without that, any path
/// with a dot could be a field named with one, so the document is re-read.
fn from_update_description(
    key: &RawDocument,
    desc: &RawDocument,
    uuid: &Option<mongodb::bson::Binary>,
) -> Result<Vec<Stmt>, TranslateError> {
    let refetch = || {
        Ok(vec![Stmt::Refetch {
            key: key.to_raw_document_buf(),
            uuid: uuid.clone(),
        }])
    };
    let knows_ambiguity = match desc.get("disambiguatedPaths") {
        Ok(Some(RawBsonRef::Document(amb))) => {
            if !amb.is_empty() {
                return refetch();
            }
            true
        }
        _ => false,
    };
    let bad = |name: &str| {
        name.is_empty() || name.starts_with('$') || name.contains(".$") || name.contains("..")
    };
    let mut out = Vec::new();
    if let Ok(Some(RawBsonRef::Array(arrays))) = desc.get("truncatedArrays") {
        for t in arrays {
            let t = t.map_err(|e| e.to_string())?;
            let Some(t) = t.as_document() else { continue };
            let field = t.get_str("field").map_err(|e| e.to_string())?;
            let size = match t.get("newSize").ok().flatten() {
                Some(RawBsonRef::Int32(n)) => i64::from(n),
                Some(RawBsonRef::Int64(n)) => n,
                _ => {
                    return Err(format!(
                        "truncatedArrays entry for `{field}` without newSize"
                    ))
                }
            };
            if !knows_ambiguity && field.contains('.') {
                return refetch();
            }
            out.push(slice_stmt(key, field, size)?);
        }
    }
    let mut set = RawDocumentBuf::new();
    if let Ok(Some(RawBsonRef::Document(fields))) = desc.get("updatedFields") {
        for e in fields.iter_elements() {
            let e = e.map_err(|e| e.to_string())?;
            if bad(e.key()) || (!knows_ambiguity && e.key().contains('.')) {
                return refetch();
            }
            set.append(e.key(), e.value().map_err(|e| e.to_string())?.to_raw_bson());
        }
    }
    let mut unset = RawDocumentBuf::new();
    if let Ok(Some(RawBsonRef::Array(removed))) = desc.get("removedFields") {
        for f in removed {
            if let Some(name) = f.map_err(|e| e.to_string())?.as_str() {
                if bad(name) || (!knows_ambiguity && name.contains('.')) {
                    return refetch();
                }
                unset.append(name, "");
            }
        }
    }
    let mut u = RawDocumentBuf::new();
    if !set.is_empty() {
        u.append("$set", set);
    }
    if !unset.is_empty() {
        u.append("$unset", unset);
    }
    if !u.is_empty() {
        out.push(update_stmt(key, u));
    }
    Ok(out)
}

/// What an update delta (`{$v: 2, diff}`) does, as update-operator paths.
#[derive(Default)]
struct Delta {
    /// Array truncations: (path, new size).
    slices: Vec<(String, i64)>,
    /// `$set` of existing fields and array elements, in delta order.
    set: Vec<(String, RawBson)>,
    /// `$unset`.
    unset: Vec<String>,
    /// Fields added to an object: (the object's path, field name, value), in delta order.
    inserts: Vec<(String, String, RawBson)>,
    /// A field name with no update-operator path (a dot, a leading `$`, empty), or a delta
    /// this code does not know: the document must be re-read.
    inexpressible: bool,
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

impl Delta {
    /// A field name usable as one component of an update path.
    fn name_ok(&mut self, name: &str) -> bool {
        let ok = !name.is_empty() && !name.contains('.') && !name.starts_with('$');
        if !ok {
            self.inexpressible = true;
        }
        ok
    }

    fn walk(&mut self, diff: &RawDocument, prefix: &str) -> Result<(), TranslateError> {
        let is_array = matches!(diff.get("a"), Ok(Some(RawBsonRef::Boolean(true))));
        for e in diff.iter_elements() {
            if self.inexpressible {
                return Ok(());
            }
            let e = e.map_err(|e| e.to_string())?;
            let (k, v) = (e.key(), e.value().map_err(|e| e.to_string())?);
            match (is_array, k, v) {
                (true, "a", _) => {}
                (true, "l", n) => {
                    let size = match n {
                        RawBsonRef::Int32(n) => i64::from(n),
                        RawBsonRef::Int64(n) => n,
                        RawBsonRef::Double(n) => n as i64,
                        _ => return Err(format!("array delta of `{prefix}` with a bad size")),
                    };
                    self.slices.push((prefix.to_string(), size));
                }
                (false, "d", RawBsonRef::Document(d)) => {
                    for f in d.iter_elements() {
                        let f = f.map_err(|e| e.to_string())?;
                        if self.name_ok(f.key()) {
                            self.unset.push(join(prefix, f.key()));
                        }
                    }
                }
                (false, "u" | "i", RawBsonRef::Document(d)) => {
                    for f in d.iter_elements() {
                        let f = f.map_err(|e| e.to_string())?;
                        if !self.name_ok(f.key()) {
                            continue;
                        }
                        let val = f.value().map_err(|e| e.to_string())?.to_raw_bson();
                        if k == "u" {
                            self.set.push((join(prefix, f.key()), val));
                        } else {
                            self.inserts
                                .push((prefix.to_string(), f.key().to_string(), val));
                        }
                    }
                }
                (true, _, val) if k.starts_with('u') && is_index(&k[1..]) => {
                    self.set.push((join(prefix, &k[1..]), val.to_raw_bson()));
                }
                (_, _, RawBsonRef::Document(sub)) if k.starts_with('s') => {
                    let name = &k[1..];
                    if (is_array && is_index(name)) || (!is_array && self.name_ok(name)) {
                        self.walk(sub, &join(prefix, name))?;
                    } else {
                        self.inexpressible = true;
                    }
                }
                _ => self.inexpressible = true,
            }
        }
        Ok(())
    }
}

fn is_index(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Whether one `$set` adds these new fields of one object in this order: it applies them
/// sorted by name (numeric names numerically), so only a single name, names in plain byte
/// order none of which is numeric, or numeric names in increasing numeric order (time-series
/// buckets add `data.<field>.<n>`) are certain to come out as listed.
pub(crate) fn set_keeps_order(names: &[&str]) -> bool {
    let number = |n: &str| {
        (is_index(n) && n.len() < 19 && (n == "0" || !n.starts_with('0')))
            .then(|| n.parse::<u64>().ok())
            .flatten()
    };
    names.len() < 2
        || (names.iter().all(|n| !is_index(n)) && names.windows(2).all(|w| w[0] < w[1]))
        || names
            .windows(2)
            .all(|w| matches!((number(w[0]), number(w[1])), (Some(a), Some(b)) if a < b))
}

/// An update event's raw delta (`rawUpdateDescription`) as statements; see the module
/// documentation.
fn from_delta(
    key: &RawDocument,
    raw: &RawDocument,
    uuid: &Option<mongodb::bson::Binary>,
) -> Result<Vec<Stmt>, TranslateError> {
    let refetch = || {
        Ok(vec![Stmt::Refetch {
            key: key.to_raw_document_buf(),
            uuid: uuid.clone(),
        }])
    };
    let v2 = matches!(
        raw.get("$v"),
        Ok(Some(RawBsonRef::Int32(2) | RawBsonRef::Int64(2)))
    );
    let Ok(diff) = raw.get_document("diff") else {
        return refetch();
    };
    if !v2 {
        return refetch();
    }
    let mut d = Delta::default();
    d.walk(diff, "")?;
    if d.inexpressible {
        return refetch();
    }
    let mut out = Vec::new();
    for (path, size) in &d.slices {
        out.push(slice_stmt(key, path, *size)?);
    }
    // New fields per object, in delta order: one `$set` keeps that order only if it matches
    // the order `$set` applies them in.
    let mut parents: Vec<&str> = Vec::new();
    for (p, _, _) in &d.inserts {
        if !parents.contains(&p.as_str()) {
            parents.push(p);
        }
    }
    let ordered = parents.iter().all(|p| {
        let names: Vec<&str> = d
            .inserts
            .iter()
            .filter(|(q, _, _)| q == p)
            .map(|(_, n, _)| n.as_str())
            .collect();
        set_keeps_order(&names)
    });
    let mut fields: Vec<(String, RawBson)> = d.set.clone();
    let mut one_by_one = Vec::new();
    for (p, name, v) in &d.inserts {
        if ordered {
            fields.push((join(p, name), v.clone()));
        } else {
            one_by_one.push((join(p, name), v.clone()));
        }
    }
    // `$set` applies its fields in name order whatever order they are listed in, so listing
    // them sorted changes nothing here, and lets runs of such updates on many documents be
    // sent as one (`apply::merge_statements` merges top-level `$set`s listed in the order
    // `$set` applies them).
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    let mut set = RawDocumentBuf::new();
    for (path, v) in fields {
        set.append(path, v);
    }
    let mut unset = RawDocumentBuf::new();
    for path in &d.unset {
        unset.append(path, "");
    }
    let mut u = RawDocumentBuf::new();
    if !set.is_empty() {
        u.append("$set", set);
    }
    if !unset.is_empty() {
        u.append("$unset", unset);
    }
    if !u.is_empty() {
        out.push(update_stmt(key, u));
    }
    for (path, v) in one_by_one {
        let mut set = RawDocumentBuf::new();
        set.append(path, v);
        let mut u = RawDocumentBuf::new();
        u.append("$set", set);
        out.push(update_stmt(key, u));
    }
    Ok(out)
}

fn slice_stmt(key: &RawDocument, path: &str, size: i64) -> Result<Stmt, TranslateError> {
    let mut push = Document::new();
    push.insert(path, doc! {"$each": [], "$slice": size});
    let u = RawDocumentBuf::from_document(&doc! {"$push": push}).map_err(|e| e.to_string())?;
    Ok(update_stmt(key, u))
}

fn update_stmt(key: &RawDocument, u: RawDocumentBuf) -> Stmt {
    let mut d = RawDocumentBuf::new();
    d.append("q", key.to_raw_document_buf());
    d.append("u", u);
    Stmt::Update(d)
}

/// An upsert that writes `full` exactly (field order included).
pub fn upsert(key: &RawDocument, full: &RawDocument) -> Result<Stmt, TranslateError> {
    let mut d = RawDocumentBuf::new();
    d.append("q", key.to_raw_document_buf());
    let dollar_top = full
        .iter_elements()
        .flatten()
        .any(|e| e.key().starts_with('$'));
    if dollar_top {
        let lit = Bson::Document(
            doc! {"$replaceWith": {"$literal": Bson::try_from(RawBsonRef::Document(full)).map_err(|e| e.to_string())?}},
        );
        let mut pipeline = mongodb::bson::RawArrayBuf::new();
        let stage = match lit {
            Bson::Document(st) => RawDocumentBuf::from_document(&st).map_err(|e| e.to_string())?,
            _ => return Err("internal: literal stage is not a document".into()),
        };
        pipeline.push(stage);
        d.append("u", pipeline);
    } else {
        d.append("u", full.to_raw_document_buf());
    }
    d.append("upsert", true);
    Ok(Stmt::Update(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(d: Document) -> RawDocumentBuf {
        RawDocumentBuf::from_document(&d).unwrap()
    }

    fn stmt_doc(s: &Stmt) -> Document {
        match s {
            Stmt::Update(d) | Stmt::Insert(d) | Stmt::Delete(d) | Stmt::Refetch { key: d, .. } => {
                d.to_document().unwrap()
            }
        }
    }

    #[test]
    fn insert_is_an_insert_and_replace_an_exact_upsert() {
        let ev = raw(doc! {"operationType": "insert", "documentKey": {"_id": 1},
        "fullDocument": {"_id": 1, "b": 2, "a": 1}});
        let s = translate(&ev).unwrap();
        assert!(matches!(s[0], Stmt::Insert(_)));
        assert_eq!(
            stmt_doc(&s[0]),
            doc! {"q": {"_id": 1}, "u": {"_id": 1, "b": 2, "a": 1}}
        );
        let ev = raw(doc! {"operationType": "replace", "documentKey": {"_id": 1},
        "fullDocument": {"_id": 1, "b": 2, "a": 1}});
        let s = translate(&ev).unwrap();
        assert_eq!(
            stmt_doc(&s[0]),
            doc! {"q": {"_id": 1}, "u": {"_id": 1, "b": 2, "a": 1}, "upsert": true}
        );
    }

    #[test]
    fn dollar_fields_use_a_literal_pipeline() {
        let ev = raw(doc! {"operationType": "replace", "documentKey": {"_id": 1},
        "fullDocument": {"_id": 1, "$price": 2}});
        let s = stmt_doc(&translate(&ev).unwrap()[0]);
        assert_eq!(
            s.get_array("u").unwrap()[0],
            Bson::Document(doc! {"$replaceWith": {"$literal": {"_id": 1, "$price": 2}}})
        );
    }

    #[test]
    fn update_with_truncation_unset_and_set() {
        // A 6.1+ server says which paths are ambiguous (none here).
        let ev = raw(doc! {"operationType": "update", "documentKey": {"_id": 7},
        "updateDescription": {"updatedFields": {"arr.0": 9, "x": "y"}, "removedFields": ["gone"],
                              "truncatedArrays": [{"field": "arr", "newSize": 2}],
                              "disambiguatedPaths": {}}});
        let s = translate(&ev).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(
            stmt_doc(&s[0]),
            doc! {"q": {"_id": 7}, "u": {"$push": {"arr": {"$each": [], "$slice": 2i64}}}}
        );
        assert_eq!(
            stmt_doc(&s[1]),
            doc! {"q": {"_id": 7}, "u": {"$set": {"arr.0": 9, "x": "y"}, "$unset": {"gone": ""}}}
        );
    }

    #[test]
    fn ambiguous_paths_refetch() {
        let ev = raw(doc! {"operationType": "update", "documentKey": {"_id": 7},
        "updateDescription": {"updatedFields": {"a.b": 1}, "removedFields": [],
                              "disambiguatedPaths": {"a.b": ["a.b"]}}});
        assert!(matches!(translate(&ev).unwrap()[0], Stmt::Refetch { .. }));
        // Without `disambiguatedPaths` (6.0) a dotted path may be a dotted field name.
        let ev = raw(doc! {"operationType": "update", "documentKey": {"_id": 7},
        "updateDescription": {"updatedFields": {"a.b": 1}, "removedFields": []}});
        assert!(matches!(translate(&ev).unwrap()[0], Stmt::Refetch { .. }));
        let ev = raw(doc! {"operationType": "update", "documentKey": {"_id": 7},
        "updateDescription": {"updatedFields": {"a": 1}, "removedFields": ["b"]}});
        assert_eq!(
            stmt_doc(&translate(&ev).unwrap()[0]),
            doc! {"q": {"_id": 7}, "u": {"$set": {"a": 1}, "$unset": {"b": ""}}}
        );
    }

    fn delta(diff: Document) -> Vec<Stmt> {
        let ev = raw(doc! {"operationType": "update", "documentKey": {"_id": 7},
        "rawUpdateDescription": {"$v": 2, "diff": diff}});
        translate(&ev).unwrap()
    }

    fn updates(stmts: &[Stmt]) -> Vec<Document> {
        stmts
            .iter()
            .map(|s| match s {
                Stmt::Update(d) => d.to_document().unwrap().get_document("u").unwrap().clone(),
                other => panic!("not an update: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn delta_paths_are_exact_and_dotted_names_refetch() {
        // The field `b` inside `a`: an ordinary nested `$set`, nothing re-read.
        assert_eq!(
            updates(&delta(doc! {"sa": {"u": {"b": 2}}, "d": {"gone": false}})),
            vec![doc! {"$set": {"a.b": 2}, "$unset": {"gone": ""}}]
        );
        // The top-level field named `a.b` (`$setField`), set, added or removed; `$` names;
        // empty names; the same deeper down.
        for diff in [
            doc! {"u": {"a.b": 2}},
            doc! {"i": {"a.b": 2}},
            doc! {"d": {"a.b": false}},
            doc! {"i": {"$k": 1}},
            doc! {"u": {"": 1}},
            doc! {"sx": {"i": {"c.d": 1}}},
            doc! {"sa.b": {"u": {"c": 1}}},
            doc! {"sarr": {"a": true, "s0": {"d": {"$x": false}}}},
            doc! {"zz": {"unknown": 1}},
        ] {
            assert!(
                matches!(delta(diff.clone())[..], [Stmt::Refetch { .. }]),
                "{diff}"
            );
        }
        // Not a $v 2 delta.
        let ev = raw(doc! {"operationType": "update", "documentKey": {"_id": 7},
        "rawUpdateDescription": {"$set": {"a": 1}}});
        assert!(matches!(
            translate(&ev).unwrap()[..],
            [Stmt::Refetch { .. }]
        ));
    }

    #[test]
    fn delta_arrays_truncate_first_then_set() {
        assert_eq!(
            updates(&delta(
                doc! {"sarr": {"a": true, "l": 2, "u0": 9, "s1": {"u": {"n": 1}}}}
            )),
            vec![
                doc! {"$push": {"arr": {"$each": [], "$slice": 2i64}}},
                doc! {"$set": {"arr.0": 9, "arr.1.n": 1}},
            ]
        );
    }

    #[test]
    fn delta_new_fields_keep_their_order() {
        // In name order: one `$set` appends them in that order.
        assert_eq!(
            updates(&delta(doc! {"u": {"x": 0}, "i": {"b": 1, "z": 2}})),
            vec![doc! {"$set": {"x": 0, "b": 1, "z": 2}}]
        );
        // Out of name order (a pipeline `$set: {z, b}`), or numeric: one statement each.
        assert_eq!(
            updates(&delta(doc! {"u": {"x": 0}, "i": {"z": 1, "b": 2}})),
            vec![
                doc! {"$set": {"x": 0}},
                doc! {"$set": {"z": 1}},
                doc! {"$set": {"b": 2}},
            ]
        );
        // Numeric names in numeric order (time-series buckets) stay one `$set`.
        assert_eq!(
            updates(&delta(doc! {"sdata": {"i": {"9": 1, "10": 2}}})),
            vec![doc! {"$set": {"data.9": 1, "data.10": 2}}]
        );
        assert_eq!(
            updates(&delta(doc! {"sdata": {"i": {"10": 1, "9": 2}}})).len(),
            2
        );
        assert_eq!(
            updates(&delta(doc! {"sdata": {"i": {"b": 1, "10": 2}}})).len(),
            2
        );
    }

    #[test]
    fn delete_and_missing_full_document() {
        let ev = raw(doc! {"operationType": "delete", "documentKey": {"_id": "k"}});
        assert_eq!(
            stmt_doc(&translate(&ev).unwrap()[0]),
            doc! {"q": {"_id": "k"}, "limit": 1}
        );
        let ev = raw(doc! {"operationType": "insert", "documentKey": {"_id": "k"}});
        assert!(matches!(translate(&ev).unwrap()[0], Stmt::Refetch { .. }));
    }
}
