//! A lost resume point costs a re-copy of what changed, not of everything (issue 20).
//!
//! With change events applied during the copy, the forward lane only loses its resume point
//! when the runner was stopped for longer than the source's oplog window. Then `cutover run`
//! (the same command) recovers instead of failing:
//!
//! 1. **A new start point** `P` (the source's majority time now): every change from `P` on is
//!    read from the stream; only the changes between the old point and `P` are unknown.
//! 2. **The catalog, per collection the lane planned.** A collection renamed or dropped on the
//!    source meanwhile, one read in natural order (capped, clustered, time-series), or one whose
//!    options changed is dropped on the destination and copied again in full. Otherwise its
//!    indexes are brought to the source's current ones (a destination index the source no
//!    longer has, or has with another spec, is dropped; missing ones are built; relaxation
//!    records take the source's current unique/TTL values). Destination namespaces the source
//!    no longer has are dropped; namespaces created meanwhile are created (and copied).
//! 3. **Every range already started** (copied, or being copied) is marked `reconcile`. When
//!    the copy reaches it, the gate opens it like a range to copy (its events held from that
//!    moment, the ones before dropped), both sides are read in `_id` order and compared
//!    document by document (the byte-exact comparison of `cutover verify`), and only the
//!    documents that differ, are missing or are extra are rewritten from the source's current
//!    majority-committed version ([`crate::engine::repair::rewrite_between`]). Ranges never
//!    started are copied as usual.
//! 4. The lane record moves to `P` last: a crash before that finds the old point lost again
//!    and recovers again (every step above is idempotent).
//!
//! Why it is exact: a reconciled range is read after every event the gate dropped for it
//! (the same rule as a range's copy), its documents are made equal to a source version at a
//! time ≥ that read's start, and the events held since its opening are replayed over them
//! (the replay-over-later-state property). A document that changed between the old point
//! and `P` differs, so it is rewritten.

use std::sync::atomic::Ordering;

use mongodb::bson::{doc, Bson, Document, Timestamp};
use mongodb::Client;
use serde::Serialize;

use crate::base::namespace::Namespace;
use crate::engine::catalog::{self, NsKind, NsSpec, RelaxationStore};
use crate::engine::error::{cluster_err, on, EngineError};
use crate::engine::rewrite::{self as repair, ReadAt};
use crate::state::record::Direction;
use crate::state::StateStore;
use crate::verify::ranges::Range;

/// Where range records live (shared with the copy).
use crate::state::PARTITIONS;
/// `_id`s rewritten per command.
const REWRITE_IDS: usize = 500;

/// What one reconciled range needed.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Reconciled {
    /// Documents on the source and not on the destination, only on the destination, or with
    /// other bytes.
    pub missing: u64,
    pub extra: u64,
    pub different: u64,
    /// Documents written from the source, and their bytes; documents deleted.
    pub written: u64,
    pub bytes: u64,
    pub deleted: u64,
}

impl Reconciled {
    pub fn to_doc(&self) -> Document {
        doc! {
            "missing": self.missing as i64, "extra": self.extra as i64,
            "different": self.different as i64, "written": self.written as i64,
            "bytes": self.bytes as i64, "deleted": self.deleted as i64,
        }
    }

    pub fn differs(&self) -> bool {
        self.missing + self.extra + self.different > 0
    }
}

/// One range to compare: the source collection's current name, the name the lane writes.
pub struct RangeToCompare<'a> {
    pub source_ns: &'a Namespace,
    pub dest_ns: &'a Namespace,
    pub min: Option<Bson>,
    pub max: Option<Bson>,
    /// The read must see every write up to this source time (the gate's position when the
    /// range opened).
    pub after: Timestamp,
}

/// Compares one range on both sides and rewrites what differs (see the module doc).
pub async fn reconcile_range(
    direction: Direction,
    source: &Client,
    dest: &Client,
    store: &StateStore,
    r: RangeToCompare<'_>,
) -> Result<Reconciled, EngineError> {
    // The comparison reads the primary; this read waits until the source's majority-committed
    // state has reached `after` (every event the gate dropped for this range).
    let barrier = doc! {
        "find": &r.source_ns.coll, "filter": {"_id": Bson::MinKey}, "limit": 1, "singleBatch": true,
        "readConcern": {"level": "majority", "afterClusterTime": r.after},
    };
    source
        .database(&r.source_ns.db)
        .run_command(barrier)
        .await
        .map_err(|e| cluster_err(direction.reads(), format!("reading `{}`", r.source_ns), &e))?;
    let range = Range {
        index: 0,
        batch_docs: 1000,
        lower: r.min.clone(),
        upper: r.max.clone(),
    };
    let diff = crate::verify::scan::diff_range_between(
        source,
        r.source_ns,
        dest,
        r.dest_ns,
        &range,
        usize::MAX,
    )
    .await
    .map_err(|source| EngineError::Verify {
        doing: format!("comparing `{}`", r.dest_ns),
        source: Box::new(source),
    })?;
    let mut out = Reconciled {
        missing: diff.missing,
        extra: diff.extra,
        different: diff.different,
        ..Default::default()
    };
    let ids: Vec<Bson> = diff.samples.into_iter().map(|(id, _)| id).collect();
    for chunk in ids.chunks(REWRITE_IDS) {
        store.check_fence()?;
        let w = repair::rewrite_between(
            direction,
            source,
            r.source_ns,
            dest,
            r.dest_ns,
            chunk,
            ReadAt::Majority,
        )
        .await?;
        out.written += w.written;
        out.bytes += w.bytes;
        out.deleted += w.deleted;
    }
    Ok(out)
}

/// What [`prepare`] decided, recorded in the lane record (`recovering`).
#[derive(Debug, Default)]
pub struct Prepared {
    pub start: Option<Timestamp>,
    /// Collections dropped on the destination and copied again in full.
    pub recopied: Vec<String>,
    /// Ranges marked to compare.
    pub ranges: u64,
    /// Destination namespaces dropped (gone from the source).
    pub dropped: Vec<String>,
    /// Indexes dropped on the destination (gone or changed on the source).
    pub indexes_dropped: u64,
}

/// The catalog and range records after a lost resume point, then the lane record at a new
/// start point (see the module doc). `specs`: the source's selected namespaces now.
#[allow(clippy::too_many_arguments)]
pub async fn prepare(
    source: &Client,
    dest: &Client,
    store: &StateStore,
    direction: Direction,
    lane: &str,
    selector: &crate::plan::NamespaceSelector,
    specs: &[NsSpec],
    relax: &RelaxationStore,
) -> Result<Prepared, EngineError> {
    let mut out = Prepared::default();
    let markers = store
        .find(
            PARTITIONS,
            doc! {"_id": {"$regex": format!("^{}/.*/planned$", regex::escape(lane))}},
            None,
            None,
        )
        .await?;
    let prefix_len = lane.len() + 1;
    // Destination names of the collections the lane planned.
    let mut planned = std::collections::HashSet::new();
    for m in markers {
        let id = m.get_str("_id").unwrap_or_default();
        let Some(ns) = id
            .get(prefix_len..id.len().saturating_sub("/planned".len()))
            .and_then(Namespace::parse)
        else {
            continue;
        };
        planned.insert(ns.to_string());
        let uuid = match m.get("uuid") {
            Some(Bson::Binary(b)) => Some(b.clone()),
            _ => None,
        };
        let indexed = m.get_bool("indexed").unwrap_or(false);
        let range_prefix = format!("{lane}/{ns}/");
        let natural = store
            .find(
                PARTITIONS,
                doc! {"_id": {"$regex": format!("^{}\\d", regex::escape(&range_prefix))}, "natural": true},
                None,
                Some(1),
            )
            .await?
            .into_iter()
            .next()
            .is_some();
        let current = match &uuid {
            Some(u) => catalog::name_of_uuid(source, &ns.db, u)
                .await
                .map_err(on(direction.reads()))?,
            None => Some(ns.coll.clone()),
        };
        let (src_spec, dst_spec) = if current.as_deref() == Some(ns.coll.as_str()) {
            (
                catalog::spec_of(source, &ns)
                    .await
                    .map_err(on(direction.reads()))?,
                catalog::spec_of(dest, &ns)
                    .await
                    .map_err(on(direction.writes()))?,
            )
        } else {
            (None, None)
        };
        let keep = match (&src_spec, &dst_spec) {
            (Some(s), Some(d)) => {
                !natural
                    && s.kind == NsKind::Collection
                    && d.kind == NsKind::Collection
                    && crate::engine::catalog::bson_eq(
                        &Bson::Document(s.options()),
                        &Bson::Document(d.options()),
                    )
            }
            _ => false,
        };
        if !keep {
            // Renamed or dropped meanwhile, changed options, or read in natural order: drop it
            // on the destination and plan it again (it is copied in full if the source has it).
            drop_on_destination(dest, &ns, direction).await?;
            relax.forget_namespace(&ns).await?;
            if let Some(view) = ns.coll.strip_prefix(catalog::BUCKETS_PREFIX) {
                relax
                    .forget_namespace(&Namespace::new(ns.db.clone(), view))
                    .await?;
            }
            store
                .delete_many(
                    PARTITIONS,
                    doc! {"_id": {"$regex": format!("^{}", regex::escape(&range_prefix))}},
                )
                .await?;
            out.recopied.push(ns.to_string());
            continue;
        }
        let (s, d) = (src_spec.expect("kept"), dst_spec.expect("kept"));
        out.indexes_dropped += align_indexes(dest, &s, &d, relax, indexed, direction).await?;
        out.ranges += store
            .update_many(
                PARTITIONS,
                doc! {
                    "_id": {"$regex": format!("^{}\\d", regex::escape(&range_prefix))},
                    "$or": [{"started": true}, {"done": true}, {"last_id": {"$exists": true}}],
                },
                doc! {"$set": {"reconcile": true, "done": false}, "$unset": {"last_id": "", "reconciled": ""}},
            )
            .await?;
    }
    // Collections to copy that the lane never planned but the destination holds (created
    // during the copy and filled by change events): their events since are lost, and a copy
    // into them would keep documents deleted meanwhile. Dropped and copied in full.
    for spec in specs {
        let Some(target) = catalog::copy_target(spec) else {
            continue;
        };
        if planned.contains(&target.to_string()) {
            continue;
        }
        if catalog::spec_of(dest, &spec.ns)
            .await
            .map_err(on(direction.writes()))?
            .is_some()
        {
            drop_on_destination(dest, &target, direction).await?;
            relax.forget_namespace(&spec.ns).await?;
            relax.forget_namespace(&target).await?;
            out.recopied.push(spec.ns.to_string());
        }
    }
    // Destination namespaces the source no longer has (dropped or renamed meanwhile), and
    // views whose definition changed.
    let on_dest = catalog::list_selected(dest, selector)
        .await
        .map_err(on(direction.writes()))?;
    for d in on_dest {
        let same = specs.iter().find(|s| s.ns == d.ns);
        let stale = match same {
            None => true,
            Some(s) if s.kind == NsKind::View || d.kind == NsKind::View => {
                s.kind != d.kind || !catalog::compare_specs(s, &d).is_empty()
            }
            Some(_) => false,
        };
        if stale {
            drop_on_destination(dest, &d.ns, direction).await?;
            relax.forget_namespace(&d.ns).await?;
            out.dropped.push(d.ns.to_string());
        }
    }
    Ok(out)
}

/// Drops a namespace on the destination (a time-series collection by its view name).
async fn drop_on_destination(
    dest: &Client,
    ns: &Namespace,
    direction: Direction,
) -> Result<(), EngineError> {
    let ns = &match ns.coll.strip_prefix(catalog::BUCKETS_PREFIX) {
        Some(view) => Namespace::new(ns.db.clone(), view),
        None => ns.clone(),
    };
    let cmd = doc! {"drop": &ns.coll, "writeConcern": {"w": "majority"}};
    match dest.database(&ns.db).run_command(cmd).await {
        Ok(_) => Ok(()),
        Err(e)
            if crate::cluster::server_error::code_of(&e)
                == Some(crate::cluster::server_error::code::NAMESPACE_NOT_FOUND) =>
        {
            Ok(())
        }
        Err(e) => Err(cluster_err(
            direction.writes(),
            format!("dropping `{ns}` to copy it again"),
            &e,
        )),
    }
}

/// Drops destination indexes the source no longer has as they are, records the source's
/// current unique/TTL values, and (when the collection's indexes were built) builds the
/// missing ones. Returns how many indexes were dropped.
async fn align_indexes(
    dest: &Client,
    source: &NsSpec,
    have: &NsSpec,
    relax: &RelaxationStore,
    indexed: bool,
    direction: Direction,
) -> Result<u64, EngineError> {
    let ns = &source.ns;
    let wanted = source.index_docs();
    let mut dropped = 0;
    for h in have.index_docs() {
        let name = h.get_str("name").unwrap_or_default().to_string();
        if name == "_id_" {
            continue;
        }
        let same = wanted
            .iter()
            .find(|w| w.get_str("name").ok() == Some(name.as_str()))
            .is_some_and(|w| catalog::same_relaxed_index(w, &h));
        if !same {
            let cmd =
                doc! {"dropIndexes": &ns.coll, "index": &name, "writeConcern": {"w": "majority"}};
            dest.database(&ns.db).run_command(cmd).await.map_err(|e| {
                cluster_err(
                    direction.writes(),
                    format!("dropping index {name} of `{ns}`"),
                    &e,
                )
            })?;
            relax.forget_index(ns, &name).await?;
            dropped += 1;
        }
    }
    for w in &wanted {
        let name = w.get_str("name").unwrap_or_default();
        if name == "_id_" {
            continue;
        }
        for r in catalog::index_relaxations(ns, name, w) {
            relax.record(&r).await?;
        }
    }
    if indexed {
        catalog::build_indexes(dest, source, relax)
            .await
            .map_err(on(direction.writes()))?;
    }
    Ok(dropped)
}

/// The figures of a finished recovery, for the lane record's `recoveries` (and `status`):
/// summed from the range records (a recovery interrupted by a crash counts every range).
pub async fn report(
    store: &StateStore,
    lane: &str,
    recovering: &Document,
    progress: &crate::engine::progress::Progress,
) -> Result<Document, EngineError> {
    let ranges = store
        .find(
            PARTITIONS,
            doc! {
                "_id": {"$regex": format!("^{}/", regex::escape(lane))},
                "reconciled": {"$exists": true},
            },
            None,
            None,
        )
        .await?;
    let mut sum = Reconciled::default();
    let mut differing = 0i64;
    for r in &ranges {
        let Ok(d) = r.get_document("reconciled") else {
            continue;
        };
        let n = |k: &str| d.get_i64(k).unwrap_or(0).max(0) as u64;
        let one = Reconciled {
            missing: n("missing"),
            extra: n("extra"),
            different: n("different"),
            written: n("written"),
            bytes: n("bytes"),
            deleted: n("deleted"),
        };
        if one.differs() {
            differing += 1;
        }
        sum.missing += one.missing;
        sum.extra += one.extra;
        sum.different += one.different;
        sum.written += one.written;
        sum.bytes += one.bytes;
        sum.deleted += one.deleted;
    }
    let mut out = recovering.clone();
    out.insert("finished", mongodb::bson::DateTime::now());
    out.insert("ranges_compared", ranges.len() as i64);
    out.insert("ranges_differing", differing);
    out.insert("documents_missing", sum.missing as i64);
    out.insert("documents_extra", sum.extra as i64);
    out.insert("documents_different", sum.different as i64);
    out.insert("documents_rewritten", sum.written as i64);
    out.insert("documents_deleted", sum.deleted as i64);
    out.insert("bytes_rewritten", sum.bytes as i64);
    out.insert(
        "source_bytes",
        progress.estimated_total_bytes.load(Ordering::Relaxed) as i64,
    );
    Ok(out)
}
