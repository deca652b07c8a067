//! Turning CRUD change events into write statements that are idempotent and exact.
//!
//! - insert → an `insert` of the full document, batched; a duplicate key (the document is
//!   already there: copied, or an event replayed after a crash) falls back to the upsert below.
//! - replace → `update {q: documentKey, u: fullDocument, upsert: true}`: re-applying
//!   it after a crash is harmless. A document with `$`-prefixed top-level fields cannot be a
//!   replacement document (the server would read them as operators), so those use a pipeline
//!   `[{$replaceWith: {$literal: doc}}]`.
//! - update → `$set` of `updatedFields` and `$unset` of `removedFields`, preceded, for each
//!   truncated array, by a `$push {$each: [], $slice: n}` statement in the same ordered command.
//!   When the server reports ambiguous paths (`disambiguatedPaths`: field names with dots or
//!   numeric names) the update is applied by fetching the source's current document instead:
//!   exact once the following events are applied.
//! - delete → `delete {q: documentKey, limit: 1}`.

use mongodb::bson::{doc, Bson, Document, RawBsonRef, RawDocument, RawDocumentBuf};

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
            let desc = event
                .get_document("updateDescription")
                .map_err(|_| "`update` event without updateDescription".to_string())?;
            if let Ok(Some(RawBsonRef::Document(amb))) = desc.get("disambiguatedPaths") {
                if !amb.is_empty() {
                    return Ok(vec![Stmt::Refetch {
                        key: key.to_raw_document_buf(),
                        uuid: uuid.clone(),
                    }]);
                }
            }
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
                    let mut push = Document::new();
                    push.insert(field, doc! {"$each": [], "$slice": size});
                    out.push(update_stmt(key, &doc! {"$push": push})?);
                }
            }
            let mut u = Document::new();
            if let Ok(Some(RawBsonRef::Document(set))) = desc.get("updatedFields") {
                if !set.is_empty() {
                    if set
                        .iter_elements()
                        .flatten()
                        .any(|e| e.key().contains(".$") || e.key().starts_with('$'))
                    {
                        return Ok(vec![Stmt::Refetch {
                            key: key.to_raw_document_buf(),
                            uuid: uuid.clone(),
                        }]);
                    }
                    let set: Document = set
                        .try_into()
                        .map_err(|e: mongodb::bson::raw::Error| e.to_string())?;
                    u.insert("$set", set);
                }
            }
            if let Ok(Some(RawBsonRef::Array(removed))) = desc.get("removedFields") {
                let mut unset = Document::new();
                for f in removed {
                    if let Some(name) = f.map_err(|e| e.to_string())?.as_str() {
                        if name.starts_with('$') || name.contains(".$") {
                            return Ok(vec![Stmt::Refetch {
                                key: key.to_raw_document_buf(),
                                uuid: uuid.clone(),
                            }]);
                        }
                        unset.insert(name, "");
                    }
                }
                if !unset.is_empty() {
                    u.insert("$unset", unset);
                }
            }
            if !u.is_empty() {
                out.push(update_stmt(key, &u)?);
            }
            Ok(out)
        }
        other => Err(format!("`{other}` is not a document event")),
    }
}

fn update_stmt(key: &RawDocument, u: &Document) -> Result<Stmt, TranslateError> {
    let mut d = RawDocumentBuf::new();
    d.append("q", key.to_raw_document_buf());
    d.append(
        "u",
        RawDocumentBuf::from_document(u).map_err(|e| e.to_string())?,
    );
    Ok(Stmt::Update(d))
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
        let ev = raw(doc! {"operationType": "update", "documentKey": {"_id": 7},
        "updateDescription": {"updatedFields": {"arr.0": 9, "x": "y"}, "removedFields": ["gone"],
                              "truncatedArrays": [{"field": "arr", "newSize": 2}]}});
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
