//! Merging a worker's statements: regrouped by namespace and kind (each document's order
//! kept), and same-kind runs merged into fewer statements mongod runs more cheaply.

use mongodb::bson::{RawArrayBuf, RawBson, RawBsonRef, RawDocument, RawDocumentBuf};

use crate::base::namespace::Namespace;
use crate::engine::identity::identity_key;
use crate::engine::translate::{self, Stmt};

#[derive(PartialEq, Eq, PartialOrd, Ord, Clone, Copy)]
pub(super) enum Kind {
    Insert,
    Update,
    Delete,
}

/// A statement with its namespace and its document's [`identity_key`].
pub(super) type Keyed = (Namespace, Vec<u8>, Stmt);

pub(super) fn kind_of(s: &Stmt) -> Kind {
    match s {
        Stmt::Delete(_) => Kind::Delete,
        Stmt::Insert(_) => Kind::Insert,
        Stmt::Update(_) | Stmt::Refetch { .. } => Kind::Update,
    }
}

/// Reorders one worker's statements so that consecutive statements share namespace and kind
/// (one command each) while every document's own statements keep their order.
///
/// Writes batch only while namespace and kind stay the same, so an application writing to
/// several collections with a mix of updates and deletes interleaves them and every command
/// carried one or two statements (a round trip and a majority wait each). Statements of
/// different documents are independent (the workers already apply them concurrently), so
/// each statement gets a wave: the number of kind changes in its document's sequence so far.
/// Waves run in order; within a wave a stable sort by (namespace, kind) groups them, and a
/// document's statements within one wave all have the same kind, in their original order.
pub(super) fn regroup(stmts: &mut Vec<Keyed>) {
    if stmts.len() < 2 {
        return;
    }
    let mut last: std::collections::HashMap<(&Namespace, &[u8]), (Kind, usize)> =
        std::collections::HashMap::new();
    let mut waves = Vec::with_capacity(stmts.len());
    for (ns, key, st) in stmts.iter() {
        let k = kind_of(st);
        let w = match last.get(&(ns, key.as_slice())) {
            None => 0,
            Some((pk, pw)) if *pk == k => *pw,
            Some((_, pw)) => pw + 1,
        };
        last.insert((ns, key.as_slice()), (k, w));
        waves.push(w);
    }
    drop(last);
    let mut order: Vec<usize> = (0..stmts.len()).collect();
    order.sort_by(|&a, &b| {
        (waves[a], &stmts[a].0, kind_of(&stmts[a].2)).cmp(&(
            waves[b],
            &stmts[b].0,
            kind_of(&stmts[b].2),
        ))
    });
    let mut taken: Vec<Option<Keyed>> = std::mem::take(stmts).into_iter().map(Some).collect();
    stmts.extend(order.into_iter().filter_map(|i| taken[i].take()));
}

/// The `_id` of a statement whose filter is exactly `{_id: value}`, when that value can stand
/// in an `$in` list with the same meaning (a regular expression there matches by pattern).
pub(super) fn single_id(stmt: &RawDocument) -> Option<RawBsonRef<'_>> {
    let q = stmt.get_document("q").ok()?;
    let mut it = q.iter();
    let (k, v) = it.next()?.ok()?;
    if k != "_id" || it.next().is_some() {
        return None;
    }
    match v {
        RawBsonRef::RegularExpression(_) | RawBsonRef::Array(_) => None,
        v => Some(v),
    }
}

/// The operator update (or pipeline) of a plain `{q, u}` update statement: the kind a `multi`
/// update can carry (not an upsert, not a replacement document).
pub(super) fn plain_update(stmt: &RawDocument) -> Option<RawBsonRef<'_>> {
    let mut keys = stmt.iter().filter_map(Result::ok).map(|(k, _)| k);
    if !(keys.next() == Some("q") && keys.next() == Some("u") && keys.next().is_none()) {
        return None;
    }
    match stmt.get("u").ok()?? {
        RawBsonRef::Document(u) => {
            let first = u.iter().next()?.ok()?.0;
            first.starts_with('$').then_some(RawBsonRef::Document(u))
        }
        RawBsonRef::Array(p) => Some(RawBsonRef::Array(p)),
        _ => None,
    }
}

/// The `$set` document of an update statement that sets top-level fields only (`{q, u:
/// {$set: {..}}}`, no dotted path, no `_id`), in an order `$set` itself applies them in (see
/// [`translate::set_keeps_order`]): such a statement has the same effect as merging the document
/// into the stored one, which an aggregation pipeline can do for many documents at once.
pub(super) fn top_level_set(stmt: &RawDocument) -> Option<&RawDocument> {
    let RawBsonRef::Document(u) = plain_update(stmt)? else {
        return None;
    };
    let mut ops = u.iter();
    let ("$set", RawBsonRef::Document(set)) = ops.next()?.ok()? else {
        return None;
    };
    if ops.next().is_some() {
        return None;
    }
    let mut names = Vec::new();
    for e in set {
        let name = e.ok()?.0;
        if name.is_empty() || name.contains('.') || name.starts_with('$') || name == "_id" {
            return None;
        }
        names.push(name);
    }
    (!names.is_empty() && translate::set_keeps_order(&names)).then_some(set)
}

/// An `_id` that `$in` and `$indexOfArray` find alike (no NaN, whose equality differs between
/// languages, and nothing exotic).
pub(super) fn lookup_id(id: RawBsonRef<'_>) -> bool {
    match id {
        RawBsonRef::Double(x) => !x.is_nan(),
        RawBsonRef::ObjectId(_)
        | RawBsonRef::String(_)
        | RawBsonRef::Int32(_)
        | RawBsonRef::Int64(_)
        | RawBsonRef::Binary(_)
        | RawBsonRef::DateTime(_)
        | RawBsonRef::Timestamp(_)
        | RawBsonRef::Boolean(_) => true,
        _ => false,
    }
}

/// The statements of one same-kind command as fewer statements mongod runs more cheaply
/// (measured on 6.0.5, pymongo, 50,000 documents in commands of 1,000: per-document update
/// statements 5.3–6.1 s of mongod CPU, one `multi` update per command 2.8 s, the pipeline
/// below 3.6 s; deletes 4.2 s vs 2.5 s):
/// - deletes by `_id` become one `{_id: {$in: [...]}}` delete;
/// - runs of consecutive updates on distinct `_id`s become one `multi` update: with the same
///   operator document, that document; when each sets its own top-level values (an
///   application's `$inc`, `$set: {updatedAt: now}`), a pipeline that merges each
///   document's own values, found by its `_id`:
///   `[{$replaceWith: {$mergeObjects: ["$$ROOT", {$arrayElemAt: [{$literal: [v1, .., {}]},
///   {$indexOfArray: [{$literal: [id1, ..]}, "$_id"]}]}]}}]` (an `_id` not found picks the
///   trailing `{}`: nothing changes rather than the wrong values). `$mergeObjects` keeps an
///   existing field where it is and appends new ones in the given order, which is the order
///   `$set` applies them in (checked by [`top_level_set`]); values inside `$literal` are kept
///   as they are, every BSON type included (checked on 6.0.5).
///
/// A document's statements keep their order: deletes of distinct documents commute, and an
/// update run ends where its `_id` repeats (compared by [`identity_key`], so `1` and `1.0`
/// are one). `None` when nothing merges.
pub(super) fn merge_statements(
    kind: Kind,
    stmts: &[RawDocumentBuf],
) -> Option<Vec<RawDocumentBuf>> {
    fn in_filter(ids: &[RawBsonRef<'_>]) -> RawDocumentBuf {
        let mut op = RawDocumentBuf::new();
        op.append("$in", id_list(ids));
        let mut q = RawDocumentBuf::new();
        q.append("_id", op);
        q
    }
    fn id_list(ids: &[RawBsonRef<'_>]) -> RawArrayBuf {
        let mut list = RawArrayBuf::new();
        for id in ids {
            list.push(id.to_raw_bson());
        }
        list
    }
    fn literal(v: impl Into<RawBson>) -> RawDocumentBuf {
        let mut d = RawDocumentBuf::new();
        d.append("$literal", v);
        d
    }
    /// The pipeline that merges each document's own `$set` values (see above).
    fn per_document(ids: &[RawBsonRef<'_>], sets: &[&RawDocument]) -> RawArrayBuf {
        let mut values = RawArrayBuf::new();
        for set in sets {
            values.push(set.to_raw_document_buf());
        }
        values.push(RawDocumentBuf::new());
        let mut index = RawArrayBuf::new();
        index.push(literal(id_list(ids)));
        index.push("$_id");
        let mut index_of = RawDocumentBuf::new();
        index_of.append("$indexOfArray", index);
        let mut pick = RawArrayBuf::new();
        pick.push(literal(values));
        pick.push(index_of);
        let mut elem = RawDocumentBuf::new();
        elem.append("$arrayElemAt", pick);
        let mut merge = RawArrayBuf::new();
        merge.push("$$ROOT");
        merge.push(elem);
        let mut merge_objects = RawDocumentBuf::new();
        merge_objects.append("$mergeObjects", merge);
        let mut stage = RawDocumentBuf::new();
        stage.append("$replaceWith", merge_objects);
        let mut pipeline = RawArrayBuf::new();
        pipeline.push(stage);
        pipeline
    }
    let mut out: Vec<RawDocumentBuf> = Vec::new();
    match kind {
        Kind::Insert => return None,
        Kind::Delete => {
            let mut ids = Vec::new();
            for st in stmts {
                let plain = st.get_i32("limit") == Ok(1) && st.iter().count() == 2;
                match single_id(st).filter(|_| plain) {
                    Some(id) => ids.push(id),
                    None => out.push(st.clone()),
                }
            }
            if ids.len() < 2 {
                return None;
            }
            let mut d = RawDocumentBuf::new();
            d.append("q", in_filter(&ids));
            d.append("limit", 0i32);
            out.push(d);
        }
        Kind::Update => {
            /// The current run: its statements and their `_id`s (distinct), and its operator
            /// document while every statement has the same one.
            struct Run<'a> {
                same: Option<RawBsonRef<'a>>,
                /// Every statement a per-document merge can carry.
                settable: bool,
                /// Each statement's top-level `$set`, while `settable`.
                sets: Vec<&'a RawDocument>,
                ids: Vec<RawBsonRef<'a>>,
                keys: std::collections::HashSet<Vec<u8>>,
                sts: Vec<&'a RawDocumentBuf>,
            }
            let flush = |run: Option<Run<'_>>, out: &mut Vec<RawDocumentBuf>| {
                let Some(run) = run else { return };
                // A per-document merge pairs `sets[i]` with `ids[i]`: only when every
                // statement brought its `$set` (the join rule ensures it; checked, since a
                // shifted pairing would write one document's values into another).
                let paired = run.same.is_some() || run.sets.len() == run.ids.len();
                if run.sts.len() == 1 || !paired {
                    out.extend(run.sts.iter().map(|st| (*st).clone()));
                    return;
                }
                let mut d = RawDocumentBuf::new();
                d.append("q", in_filter(&run.ids));
                match run.same {
                    Some(u) => d.append("u", u.to_raw_bson()),
                    None => d.append("u", per_document(&run.ids, &run.sets)),
                }
                d.append("multi", true);
                out.push(d);
            };
            let mut run: Option<Run<'_>> = None;
            for st in stmts {
                let (Some(id), Some(u)) = (single_id(st), plain_update(st)) else {
                    flush(run.take(), &mut out);
                    out.push(st.clone());
                    continue;
                };
                let key = st
                    .get_document("q")
                    .map(|q| identity_key(q, false))
                    .unwrap_or_default();
                let set = top_level_set(st).filter(|_| lookup_id(id));
                let settable = set.is_some();
                // A run of one takes either kind of partner; a run of the same update keeps
                // to it (its `multi` is the cheaper); a per-document run takes any settable.
                let joins = run.as_ref().is_some_and(|r| {
                    !r.keys.contains(&key)
                        && (r.same == Some(u)
                            || (r.settable && settable && (r.same.is_none() || r.sts.len() == 1)))
                });
                if joins {
                    if let Some(r) = run.as_mut() {
                        if r.same != Some(u) {
                            r.same = None;
                        }
                        r.settable &= settable;
                        r.ids.push(id);
                        r.keys.insert(key);
                        r.sts.push(st);
                        r.sets.extend(set);
                    }
                } else {
                    flush(run.take(), &mut out);
                    run = Some(Run {
                        same: Some(u),
                        settable,
                        ids: vec![id],
                        keys: std::iter::once(key).collect(),
                        sts: vec![st],
                        sets: set.into_iter().collect(),
                    });
                }
            }
            flush(run.take(), &mut out);
        }
    }
    (out.len() < stmts.len()).then_some(out)
}

#[cfg(test)]
mod tests {
    use mongodb::bson::{doc, Bson, Document};

    use super::*;

    fn stmt(ns: &str, key: u8, kind: Kind, i: i32) -> Keyed {
        let mut d = RawDocumentBuf::new();
        d.append("i", i);
        let s = match kind {
            Kind::Insert => Stmt::Insert(d),
            Kind::Update => Stmt::Update(d),
            Kind::Delete => Stmt::Delete(d),
        };
        (Namespace::parse(ns).expect("ns"), vec![key], s)
    }

    fn seq(stmts: &[Keyed]) -> Vec<i32> {
        stmts
            .iter()
            .map(|(_, _, s)| match s {
                Stmt::Update(d) | Stmt::Insert(d) | Stmt::Delete(d) => d.get_i32("i").expect("i"),
                Stmt::Refetch { .. } => -1,
            })
            .collect()
    }

    fn raw(d: Document) -> RawDocumentBuf {
        RawDocumentBuf::from_document(&d).expect("raw")
    }

    fn docs(v: Option<Vec<RawDocumentBuf>>) -> Option<Vec<Document>> {
        v.map(|v| v.iter().map(|d| d.to_document().expect("doc")).collect())
    }

    #[test]
    fn deletes_by_id_merge_into_one_in_delete_and_others_stay() {
        let stmts = vec![
            raw(doc! {"q": {"_id": 1}, "limit": 1}),
            raw(doc! {"q": {"_id": "a"}, "limit": 1}),
            // A regular expression in `$in` matches by pattern: kept as it is.
            raw(
                doc! {"q": {"_id": mongodb::bson::Regex{pattern: "^a".into(), options: String::new()}}, "limit": 1},
            ),
            // A documentKey with a shard key: kept.
            raw(doc! {"q": {"_id": 2, "sk": 1}, "limit": 1}),
            raw(doc! {"q": {"_id": 3}, "limit": 1}),
        ];
        let out = docs(merge_statements(Kind::Delete, &stmts)).expect("merged");
        assert_eq!(
            out,
            vec![
                doc! {"q": {"_id": mongodb::bson::Regex{pattern: "^a".into(), options: String::new()}}, "limit": 1},
                doc! {"q": {"_id": 2, "sk": 1}, "limit": 1},
                doc! {"q": {"_id": {"$in": [1, "a", 3]}}, "limit": 0},
            ]
        );
        // One mergeable delete: nothing to gain.
        assert!(merge_statements(Kind::Delete, &stmts[..1]).is_none());
        assert!(merge_statements(Kind::Insert, &stmts).is_none());
    }

    #[test]
    fn same_updates_on_distinct_ids_merge_in_order_and_a_repeated_id_ends_the_run() {
        let set = |id: i32, v: i32| raw(doc! {"q": {"_id": id}, "u": {"$set": {"v": v}}});
        let stmts = vec![
            set(1, 7),
            set(2, 7),
            set(3, 7),
            set(1, 8), // another update: a new run
            set(2, 8),
            set(2, 8), // the same _id again: a new run, after the first
            // Upserts and replacements cannot be `multi`: kept, and they end the run.
            raw(doc! {"q": {"_id": 4}, "u": {"a": 1}, "upsert": true}),
            raw(doc! {"q": {"_id": 5}, "u": {"a": 1}}),
            set(6, 8),
        ];
        let out = docs(merge_statements(Kind::Update, &stmts)).expect("merged");
        assert_eq!(
            out,
            vec![
                doc! {"q": {"_id": {"$in": [1, 2, 3]}}, "u": {"$set": {"v": 7}}, "multi": true},
                doc! {"q": {"_id": {"$in": [1, 2]}}, "u": {"$set": {"v": 8}}, "multi": true},
                doc! {"q": {"_id": 2}, "u": {"$set": {"v": 8}}},
                doc! {"q": {"_id": 4}, "u": {"a": 1}, "upsert": true},
                doc! {"q": {"_id": 5}, "u": {"a": 1}},
                doc! {"q": {"_id": 6}, "u": {"$set": {"v": 8}}},
            ]
        );
        // `1` and `1.0` are one `_id`: a repeat, nothing merges.
        let one_point_oh = raw(doc! {"q": {"_id": 1.0}, "u": {"$set": {"v": 2}}});
        assert!(merge_statements(Kind::Update, &[set(1, 1), one_point_oh]).is_none());
    }

    fn per_document(ids: Vec<Bson>, values: Vec<Document>) -> Document {
        let mut values: Vec<Bson> = values.into_iter().map(Bson::Document).collect();
        values.push(Bson::Document(doc! {}));
        doc! {
            "q": {"_id": {"$in": ids.clone()}},
            "u": [{"$replaceWith": {"$mergeObjects": ["$$ROOT", {"$arrayElemAt": [
                {"$literal": values},
                {"$indexOfArray": [{"$literal": ids}, "$_id"]},
            ]}]}}],
            "multi": true,
        }
    }

    #[test]
    fn top_level_sets_of_own_values_merge_into_one_pipeline_in_order() {
        let set = |id: Bson, u: Document| raw(doc! {"q": {"_id": id}, "u": {"$set": u}});
        let stmts = vec![
            set(1.into(), doc! {"cat": "x", "n": 1}),
            set("a".into(), doc! {"cat": "x", "n": 2, "z": {"$literal": 1}}),
            set(3.into(), doc! {"n": 3}),
            // Not expressible as a merge, each ends the run: a nested path, an `$unset`,
            // new names out of the order `$set` applies them in, a NaN `_id`.
            set(4.into(), doc! {"a.b": 1}),
            raw(doc! {"q": {"_id": 5}, "u": {"$set": {"n": 5}, "$unset": {"m": ""}}}),
            set(6.into(), doc! {"z": 1, "a": 1}),
            set(f64::NAN.into(), doc! {"n": 7}),
            set(8.into(), doc! {"n": 8}),
            set(9.into(), doc! {"n": 9}),
            // `9` again: a new run.
            set(9.into(), doc! {"n": 10}),
        ];
        let out = docs(merge_statements(Kind::Update, &stmts)).expect("merged");
        // Compared as text: NaN is not equal to itself.
        assert_eq!(
            format!("{out:?}"),
            format!(
                "{:?}",
                vec![
                    per_document(
                        vec![1.into(), "a".into(), 3.into()],
                        vec![
                            doc! {"cat": "x", "n": 1},
                            doc! {"cat": "x", "n": 2, "z": {"$literal": 1}},
                            doc! {"n": 3},
                        ]
                    ),
                    doc! {"q": {"_id": 4}, "u": {"$set": {"a.b": 1}}},
                    doc! {"q": {"_id": 5}, "u": {"$set": {"n": 5}, "$unset": {"m": ""}}},
                    doc! {"q": {"_id": 6}, "u": {"$set": {"z": 1, "a": 1}}},
                    doc! {"q": {"_id": f64::NAN}, "u": {"$set": {"n": 7}}},
                    per_document(vec![8.into(), 9.into()], vec![doc! {"n": 8}, doc! {"n": 9}]),
                    doc! {"q": {"_id": 9}, "u": {"$set": {"n": 10}}},
                ]
            )
        );
        // A run of one update kept for several `_id`s stays a plain `multi`; a different
        // update after it starts a new run.
        let same = docs(merge_statements(
            Kind::Update,
            &[
                set(1.into(), doc! {"n": 7}),
                set(2.into(), doc! {"n": 7}),
                set(3.into(), doc! {"n": 9}),
                set(4.into(), doc! {"n": 10}),
            ],
        ))
        .expect("merged");
        assert_eq!(
            same,
            vec![
                doc! {"q": {"_id": {"$in": [1, 2]}}, "u": {"$set": {"n": 7}}, "multi": true},
                per_document(
                    vec![3.into(), 4.into()],
                    vec![doc! {"n": 9}, doc! {"n": 10}]
                ),
            ]
        );
    }

    #[test]
    fn regroup_batches_kinds_and_keeps_each_documents_order() {
        use Kind::{Delete as D, Update as U};
        // Interleaved like several application writers: a.x and b.y, updates and deletes.
        let mut v = vec![
            stmt("a.x", 1, U, 0),
            stmt("b.y", 2, D, 1),
            stmt("a.x", 3, U, 2),
            stmt("a.x", 1, D, 3), // doc 1: U then D then U
            stmt("b.y", 2, U, 4), // doc 2 (b.y): D then U
            stmt("a.x", 1, U, 5),
            stmt("a.x", 4, D, 6),
            stmt("a.x", 3, U, 7),
        ];
        regroup(&mut v);
        let order = seq(&v);
        // Wave 0: a.x updates (0, 2, 7), a.x deletes (6), b.y deletes (1); wave 1: a.x
        // delete (3), b.y update (4); wave 2: a.x update (5).
        assert_eq!(order, vec![0, 2, 7, 6, 1, 3, 4, 5]);
        // Every document's statements are still in their original order.
        for key in [1u8, 2, 3, 4] {
            let mine: Vec<i32> = v
                .iter()
                .zip(order.iter())
                .filter(|((_, k, _), _)| k == &vec![key])
                .map(|(_, i)| *i)
                .collect();
            let mut sorted = mine.clone();
            sorted.sort();
            assert_eq!(mine, sorted, "document {key} reordered");
        }
    }
}
