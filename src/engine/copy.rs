//! The initial copy: every collection split into `_id` ranges, ranges copied in parallel as
//! raw BSON, each range resumable from the last `_id` durably written.
//!
//! Ranges are index-key ranges (`find` with `hint: {_id: 1}`, `min`, `max`), not `$gte/$lt`
//! filters, so they cover `_id`s of every BSON type: a `{$gte, $lt}` filter is type-bracketed
//! and would silently skip other types. Capped collections (natural order matters),
//! clustered collections and time-series buckets are copied in one natural-order pass that a
//! crash restarts from the beginning; re-inserting is harmless (duplicate `_id`s are ignored,
//! and change events since the start point repair anything older).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{self, FuturesUnordered, StreamExt};
use futures::TryStreamExt;
use mongodb::bson::{doc, Binary, Bson, Document, RawArrayBuf, RawBsonRef, RawDocumentBuf};
use mongodb::error::ErrorKind;
use mongodb::options::WriteConcern;
use mongodb::Client;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::base::namespace::Namespace;
use crate::base::role::Role;
use crate::cluster::server_error::code::DUPLICATE_KEY;
use crate::engine::catalog::{self, NsKind, NsSpec, RelaxationStore};
use crate::engine::error::{cluster_err, on, read_err, write_error, EngineError};
use crate::engine::gate::{self, Gate, RangeInfo};
use crate::engine::progress::Progress;
use crate::engine::retry::RetryPolicy;
use crate::state::record::Direction;
use crate::state::{StateStore, PARTITIONS};

/// Documents per range by default: big enough to amortise a range's setup, small enough
/// that a collection splits across all workers.
pub const DOCS_PER_RANGE: u64 = 20_000;
const MAX_PARTITIONS: u64 = 512;
/// Bytes per insert command; several are in flight per range.
const BATCH_BYTES: usize = 4 * 1024 * 1024;
const BATCH_DOCS: usize = 2_000;
const WRITES_IN_FLIGHT: usize = 2;
/// Small ranges (a collection of at most [`SMALL_DOCS`] documents, in one range) running in
/// one slot of `--copy-concurrency`.
const SMALL_PER_SLOT: usize = 4;
pub const SMALL_DOCS: u64 = 5_000;

#[derive(Clone)]
pub struct CopyCtx {
    pub source: Client,
    pub dest: Client,
    pub store: StateStore,
    /// `plan/direction`, the prefix of every partition record.
    pub lane: String,
    pub progress: Arc<Progress>,
    pub concurrency: usize,
    pub docs_per_range: u64,
    pub retry: RetryPolicy,
    /// The lane's direction: errors name each cluster by its plan role.
    pub direction: Direction,
    /// The copy gate shared with the change application while both run (see
    /// [`gate`](crate::engine::gate)); `None` for copies run inside the change application.
    pub gate: Option<Arc<Gate>>,
    /// Build each collection's indexes as soon as its documents are copied (from the source's
    /// catalog as it is then), with these relaxations.
    pub after_copy: Option<Arc<RelaxationStore>>,
    /// Ranges' `started` and `done` flags, written together (see [`RangeFlags`]).
    pub flags: RangeFlags,
}

/// Writes ranges' `started` / `done` flags for many ranges in one `updateMany`: at thousands
/// of small collections, one majority write per flag and range is the copy's cost. A range
/// waits for its own flag to be durable, as with a write of its own; the writes that queue
/// while one is in flight go together in the next. If a combined write fails, each range
/// writes its flag itself (with the store's retries and errors).
#[derive(Clone)]
pub struct RangeFlags {
    tx: tokio::sync::mpsc::UnboundedSender<FlagRequest>,
}

struct FlagRequest {
    id: String,
    field: &'static str,
    written: tokio::sync::oneshot::Sender<bool>,
}

impl RangeFlags {
    /// Starts the writer (a task that ends with the last clone).
    pub fn new(store: StateStore) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<FlagRequest>();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < 1000 {
                    match rx.try_recv() {
                        Ok(r) => batch.push(r),
                        Err(_) => break,
                    }
                }
                for field in ["started", "done"] {
                    let (these, rest): (Vec<FlagRequest>, Vec<FlagRequest>) =
                        batch.into_iter().partition(|r| r.field == field);
                    batch = rest;
                    if these.is_empty() {
                        continue;
                    }
                    let ids: Vec<&str> = these.iter().map(|r| r.id.as_str()).collect();
                    let ok = store
                        .update_many(
                            PARTITIONS,
                            doc! {"_id": {"$in": ids}},
                            doc! {"$set": {field: true}},
                        )
                        .await
                        // Every range matched (one not matched is left to its own write,
                        // which proves the lease or reports why).
                        .is_ok_and(|n| n as usize == these.len());
                    for r in these {
                        let _ = r.written.send(ok);
                    }
                }
            }
        });
        Self { tx }
    }

    /// Sets `field` (`started` or `done`) of range `id`, durably.
    async fn set(
        &self,
        store: &StateStore,
        id: &str,
        field: &'static str,
    ) -> Result<(), EngineError> {
        let (written, done) = tokio::sync::oneshot::channel();
        let request = FlagRequest {
            id: id.to_string(),
            field,
            written,
        };
        if self.tx.send(request).is_ok() && done.await == Ok(true) {
            return Ok(());
        }
        store
            .update_one(PARTITIONS, doc! {"_id": id}, doc! {"$set": {field: true}})
            .await?;
        Ok(())
    }
}

/// One `_id` range of one collection, as stored in the `partitions` collection.
///
/// The destination name is the collection's name when the copy planned it; the source is
/// read by collection UUID, under whatever name the collection has now (a rename within a
/// database keeps the UUID). The replayed `rename` event renames the destination later, so
/// the destination mirrors the source as of the lane's start point plus replayed events.
#[derive(Clone, Debug)]
struct Partition {
    id: String,
    write_ns: Namespace,
    /// The source collection's UUID; `None` only for records written by older versions,
    /// which read by name.
    uuid: Option<Binary>,
    natural: bool,
    min: Option<Bson>,
    max: Option<Bson>,
    last_id: Option<Bson>,
    /// Recorded before the range's first read: on restart its held events start over.
    started: bool,
    /// Copied before a lost resume point (see [`crate::engine::recover`]): compared with the
    /// source and only its differences rewritten.
    reconcile: bool,
    /// The collection's only range, and it has at most [`SMALL_DOCS`] documents.
    small: bool,
}

/// How one pass over a range ended.
enum Pass {
    Done,
    /// The collection is gone from its database (dropped, or renamed to another database):
    /// the change events from the start point handle it (drop, or the re-created copy).
    Gone,
    /// Renamed (or the cursor was killed) during the pass: resolve the name and go on.
    Moved,
    /// Stopped early for a pause, after its last write is durable and checkpointed.
    Paused,
}

/// Errors of a source read that mean "the collection was renamed or dropped under the
/// cursor": QueryPlanKilled, NamespaceNotFound, CursorKilled, CursorNotFound.
fn moved_code(e: &mongodb::error::Error) -> bool {
    use crate::cluster::server_error::code::*;
    matches!(
        crate::cluster::server_error::code_of(e),
        Some(QUERY_PLAN_KILLED | NAMESPACE_NOT_FOUND | CURSOR_KILLED | CURSOR_NOT_FOUND)
    )
}

/// The namespaces the copy covers, as listed when it started: listed and recorded on first
/// use, read back from the records when a run resumes. A resumed run must not list again:
/// a collection renamed meanwhile would be copied a second time under its new name (and the
/// replayed `rename` would then replace it with the half-copied old one), so the copy keeps
/// the names it started with and reads each collection by UUID. (The records name their
/// namespace in `namespace`: range records are the ones with an `ns`.)
pub async fn copy_set(
    ctx: &CopyCtx,
    selector: &crate::plan::NamespaceSelector,
) -> Result<Vec<NsSpec>, EngineError> {
    let marker = format!("{}/#specs", ctx.lane);
    let prefix = format!("^{}", regex::escape(&format!("{marker}/")));
    if ctx
        .store
        .find_one(PARTITIONS, doc! {"_id": &marker}, None)
        .await?
        .is_some()
    {
        let mut out = Vec::new();
        let records = ctx
            .store
            .find(
                PARTITIONS,
                doc! {"_id": {"$regex": &prefix}},
                Some(doc! {"_id": 1}),
                None,
            )
            .await?;
        for d in records {
            out.push(spec_from_record(&d).ok_or_else(|| {
                EngineError::Corrupt(format!(
                    "malformed copy record {}",
                    d.get_str("_id").unwrap_or("?")
                ))
            })?);
        }
        return Ok(out);
    }
    ctx.store
        .delete_many(PARTITIONS, doc! {"_id": {"$regex": &prefix}})
        .await?;
    let specs = catalog::list_selected(&ctx.source, selector)
        .await
        .map_err(on(ctx.direction.reads()))?;
    // Built and written 500 at a time: the whole set as documents at once was the run's peak
    // of memory at thousands of collections (a profile at 2,000: most of a 25 MB heap peak).
    const RECORDS_PER_WRITE: usize = 500;
    for (c, chunk) in specs.chunks(RECORDS_PER_WRITE).enumerate() {
        let mut docs = Vec::with_capacity(chunk.len());
        for (j, s) in chunk.iter().enumerate() {
            let i = c * RECORDS_PER_WRITE + j;
            let info = s
                .info
                .to_document()
                .map_err(|e| EngineError::Corrupt(format!("`{}`: {e}", s.ns)))?;
            let indexes: Vec<Bson> = s.index_docs().into_iter().map(Bson::Document).collect();
            docs.push(doc! {
                "_id": format!("{marker}/{i:06}"), "plan": ctx.store.plan(), "lane": &ctx.lane,
                "namespace": s.ns.to_string(), "kind": s.kind.as_str(), "info": info,
                "indexes": indexes,
            });
        }
        ctx.store.insert_many(PARTITIONS, docs).await?;
    }
    ctx.store
        .insert_many(
            PARTITIONS,
            vec![doc! {"_id": &marker, "plan": ctx.store.plan(), "count": specs.len() as i64}],
        )
        .await?;
    Ok(specs)
}

/// Deletes (and forgets) the records of ranges planned again, 1,000 per command.
async fn delete_stray(ctx: &CopyCtx, stray: &mut Vec<String>) -> Result<(), EngineError> {
    for chunk in stray.chunks(1000) {
        ctx.store
            .delete_many(PARTITIONS, doc! {"_id": {"$in": chunk.to_vec()}})
            .await?;
    }
    stray.clear();
    Ok(())
}

fn spec_from_record(d: &Document) -> Option<NsSpec> {
    let ns = Namespace::parse(d.get_str("namespace").ok()?)?;
    let kind = NsKind::from_type(d.get_str("kind").ok()?)?;
    let info = RawDocumentBuf::from_document(d.get_document("info").ok()?).ok()?;
    let mut indexes = Vec::new();
    for i in d.get_array("indexes").ok()? {
        indexes.push(RawDocumentBuf::from_document(i.as_document()?).ok()?);
    }
    Some(NsSpec {
        ns,
        kind,
        info,
        indexes,
    })
}

/// Copies every collection in `specs` (views have no documents). Returns when all ranges are
/// durably on the destination.
pub async fn copy_all(
    ctx: &CopyCtx,
    specs: &[NsSpec],
    counts: &Counts,
    indexed: &HashSet<Namespace>,
) -> Result<(), EngineError> {
    let mut queue = VecDeque::new();
    let mut running: FuturesUnordered<JoinHandle<Result<usize, EngineError>>> =
        FuturesUnordered::new();
    // Idempotent (a crash or a retry between planning and its markers plans again).
    let plans = ctx
        .retry
        .run(&ctx.progress, "planning the copy", || {
            plan_all(ctx, specs, counts, indexed)
        })
        .await?;
    for (spec, planned) in plans {
        if let Some(g) = &ctx.gate {
            g.plan(&planned.ns, &planned.ranges);
        }
        let left = Arc::new(CollectionLeft {
            spec,
            ranges: std::sync::atomic::AtomicUsize::new(planned.todo.len()),
            indexed: planned.indexed,
        });
        if planned.todo.is_empty() {
            // Copied before a restart (or empty): its indexes and readiness only.
            let ctx = ctx.clone();
            let left = left.clone();
            running.push(tokio::spawn(async move {
                collection_copied(&ctx, &left).await?;
                Ok(0)
            }));
        }
        queue.extend(planned.todo.into_iter().map(|p| (p, left.clone())));
    }
    let total = queue.len();
    tracing::info!(
        ranges = total,
        collections = specs.len(),
        "Copying documents."
    );
    // Small collections (one range of a few thousand documents) are mostly round trips and
    // majority waits, not bytes: many run at once, each taking a fraction of a slot.
    let slots = ctx.concurrency.max(1) * SMALL_PER_SLOT;
    let mut used = 0usize;
    loop {
        while !queue.is_empty() {
            if crate::base::pause_gate::is_paused() {
                if running.is_empty() {
                    crate::engine::control::hold_copy(&ctx.progress).await;
                } else {
                    break; // no new range while paused; the running ones stop at a checkpoint
                }
            }
            // A DDL event waits for some collections: their ranges first.
            let i = ctx
                .gate
                .as_ref()
                .filter(|g| g.wants_any())
                .and_then(|g| {
                    queue
                        .iter()
                        .position(|(p, _): &(Partition, Arc<CollectionLeft>)| g.wanted(&p.write_ns))
                })
                .unwrap_or(0);
            let cost = if queue[i].0.small { 1 } else { SMALL_PER_SLOT };
            if used + cost > slots && !running.is_empty() {
                break;
            }
            let Some((p, left)) = queue.remove(i) else {
                break;
            };
            used += cost;
            let ctx = ctx.clone();
            let span = tracing::info_span!("range", ns = %p.write_ns, range = %p.id);
            running.push(tokio::spawn(
                async move {
                    copy_partition(&ctx, p).await?;
                    if left.ranges.fetch_sub(1, Ordering::AcqRel) == 1 {
                        collection_copied(&ctx, &left).await?;
                    }
                    Ok(cost)
                }
                .instrument(span),
            ));
        }
        match running.next().await {
            None => break,
            Some(Ok(Ok(cost))) => used -= cost,
            Some(Ok(Err(e))) => {
                for h in running.iter() {
                    h.abort();
                }
                return Err(e);
            }
            Some(Err(join)) => {
                for h in running.iter() {
                    h.abort();
                }
                return Err(EngineError::Task(format!("copy task failed: {join}")));
            }
        }
    }
    Ok(())
}

/// Registers with the gate every collection a previous run of this lane planned (one read of
/// the range records), before any event is routed: a range it started may have written
/// documents, so its events are held from the restart point.
pub async fn register_planned(
    ctx: &CopyCtx,
    specs: &[NsSpec],
    gate: &Gate,
) -> Result<(), EngineError> {
    let prefix = format!("^{}", regex::escape(&format!("{}/", ctx.lane)));
    let records = ctx
        .store
        .find(
            PARTITIONS,
            doc! {"_id": {"$regex": &prefix}, "$or": [{"ns": {"$exists": true}}, {"ranges": {"$exists": true}}]},
            Some(doc! {"_id": 1}),
            None,
        )
        .await?;
    let mut planned = std::collections::HashSet::new();
    let mut ranges: std::collections::HashMap<String, Vec<RangeInfo>> = Default::default();
    for d in &records {
        let id = d.get_str("_id").unwrap_or_default();
        match d.get_str("ns") {
            Ok(ns) => ranges.entry(ns.to_string()).or_default().push(RangeInfo {
                id: id.to_string(),
                min: d.get("min").cloned(),
                max: d.get("max").cloned(),
                started: d.get_bool("started").unwrap_or(false) || d.get("last_id").is_some(),
                done: d.get_bool("done").unwrap_or(false),
            }),
            Err(_) => {
                if let Some(rest) = id
                    .strip_prefix(&format!("{}/", ctx.lane))
                    .and_then(|r| r.strip_suffix("/planned"))
                {
                    planned.insert(rest.to_string());
                }
            }
        }
    }
    for target in specs.iter().filter_map(catalog::copy_target) {
        let key = target.to_string();
        if planned.contains(&key) {
            gate.plan(&target, ranges.get(&key).map(Vec::as_slice).unwrap_or(&[]));
        }
    }
    Ok(())
}

/// A collection's ranges still being copied; the last one to finish completes it.
struct CollectionLeft {
    spec: NsSpec,
    ranges: std::sync::atomic::AtomicUsize,
    indexed: bool,
}

/// Every range of a collection is copied: with `after_copy`, build its indexes as the source
/// has them now (an index dropped or created during the copy was or will be replayed), record
/// that they are built (a restart must not build them again from an older catalog after DDL
/// was replayed), then tell the gate DDL on it may be applied.
async fn collection_copied(ctx: &CopyCtx, left: &CollectionLeft) -> Result<(), EngineError> {
    let Some(write_ns) = catalog::copy_target(&left.spec) else {
        return Ok(());
    };
    if let (Some(relax), false) = (&ctx.after_copy, left.indexed) {
        if let Some(g) = &ctx.gate {
            // Before the first reading of the source's indexes: index DDL waits from here.
            g.start_indexing(&write_ns);
        }
        let what = format!("building the indexes of `{}`", left.spec.ns);
        ctx.retry
            .run(&ctx.progress, &what, || async {
                let spec = current_spec(ctx, &left.spec).await?;
                crate::base::crashpoint::pause("copy.indexes-listed").await;
                if let Some(spec) = spec {
                    catalog::build_indexes(&ctx.dest, &spec, relax)
                        .await
                        .map_err(on(ctx.direction.writes()))?;
                }
                Ok(())
            })
            .await?;
        let marker = format!("{}/{}/planned", ctx.lane, write_ns);
        ctx.store
            .update_one(
                PARTITIONS,
                doc! {"_id": &marker},
                doc! {"$set": {"indexed": true}},
            )
            .await?;
    }
    ctx.progress
        .collections_done
        .fetch_add(1, Ordering::Relaxed);
    if let Some(g) = &ctx.gate {
        g.collection_ready(&write_ns);
    }
    Ok(())
}

/// `spec` with the indexes the source collection has now (found by UUID under its current
/// name); `None` when it is gone (its drop event follows).
async fn current_spec(ctx: &CopyCtx, spec: &NsSpec) -> Result<Option<NsSpec>, EngineError> {
    let Some(target) = catalog::copy_target(spec) else {
        return Ok(None);
    };
    let uuid = source_uuid(ctx, spec, &target).await?;
    let read_ns = match &uuid {
        Some(u) => match catalog::name_of_uuid(&ctx.source, &target.db, u)
            .await
            .map_err(on(ctx.direction.reads()))?
        {
            Some(n) => Namespace::new(target.db.clone(), n),
            None => return Ok(None),
        },
        None => target.clone(),
    };
    // Time-series: built from the listing (their index DDL arrives on the view).
    if spec.kind != NsKind::Collection {
        return Ok(Some(spec.clone()));
    }
    let view_ns = read_ns;
    let now = catalog::spec_of(&ctx.source, &view_ns)
        .await
        .map_err(on(ctx.direction.reads()))?;
    Ok(now.map(|n| NsSpec {
        ns: spec.ns.clone(),
        kind: spec.kind,
        info: spec.info.clone(),
        indexes: n.indexes,
    }))
}

/// The source UUID of the collection a spec copies (`info.uuid`; time-series: its buckets').
async fn source_uuid(
    ctx: &CopyCtx,
    spec: &NsSpec,
    target: &Namespace,
) -> Result<Option<Binary>, EngineError> {
    if spec.kind == NsKind::Collection {
        if let Some(u) = catalog::entry_uuid(&spec.info) {
            return Ok(Some(u));
        }
    }
    catalog::uuid_of(&ctx.source, target)
        .await
        .map_err(on(ctx.direction.reads()))
}

/// A collection's copy plan: every range (for the gate), the ones still to copy, and
/// whether its indexes were built after its copy.
struct Planned {
    ns: Namespace,
    ranges: Vec<RangeInfo>,
    todo: Vec<Partition>,
    indexed: bool,
}

/// Documents per source collection, as `collStats` counted them when the copy started (see
/// [`estimate`]): a collection known to be small is one range without sampling it.
pub type Counts = HashMap<Namespace, u64>;

/// Every collection's ranges, planning those not planned yet. One read of the lane's range
/// records, the new ranges and markers written in a few `insert_many`s, and only collections
/// big enough to split sampled (several at once): at thousands of collections the copy
/// starts in seconds, not one round trip after another per collection.
///
/// A collection is planned when its marker (`<lane>/<ns>/planned`) exists; each batch holds
/// a collection's ranges before its marker, so ranges without a marker are a crash's leftover
/// and are planned again.
async fn plan_all(
    ctx: &CopyCtx,
    specs: &[NsSpec],
    counts: &Counts,
    indexed: &HashSet<Namespace>,
) -> Result<Vec<(NsSpec, Planned)>, EngineError> {
    let lane_prefix = format!("{}/", ctx.lane);
    // A few collections (a replayed rename into the filter, a resync): their records only.
    let pattern = if specs.len() <= 16 {
        let alternatives: Vec<String> = specs
            .iter()
            .filter_map(catalog::copy_target)
            .map(|t| regex::escape(&format!("{lane_prefix}{t}/")))
            .collect();
        if alternatives.is_empty() {
            return Ok(Vec::new());
        }
        format!("^(?:{})", alternatives.join("|"))
    } else {
        format!("^{}", regex::escape(&lane_prefix))
    };
    let records = ctx
        .store
        .find(
            PARTITIONS,
            doc! {"_id": {"$regex": pattern},
            "$or": [{"ns": {"$exists": true}}, {"ranges": {"$exists": true}}]},
            Some(doc! {"_id": 1}),
            None,
        )
        .await?;
    let mut markers: HashMap<String, Document> = HashMap::new();
    let mut ranges_of: HashMap<String, Vec<Document>> = HashMap::new();
    for d in records {
        if let Ok(ns) = d.get_str("ns") {
            ranges_of.entry(ns.to_string()).or_default().push(d);
        } else if let Some(ns) = d
            .get_str("_id")
            .ok()
            .and_then(|id| id.strip_prefix(&lane_prefix))
            .and_then(|r| r.strip_suffix("/planned"))
        {
            markers.insert(ns.to_string(), d);
        }
    }
    // Collections to plan now, and the range bounds of each (big ones sampled, 8 at once).
    let targets: Vec<(&NsSpec, Namespace)> = specs
        .iter()
        .filter_map(|s| catalog::copy_target(s).map(|t| (s, t)))
        .collect();
    let fresh: Vec<(&NsSpec, Namespace)> = targets
        .iter()
        .filter(|(_, t)| !markers.contains_key(&t.to_string()))
        .cloned()
        .collect();
    // The futures are built first: a closure inside the stream makes the spawned copy task's
    // future not `Send` (a higher-ranked lifetime the compiler cannot prove).
    let planning: Vec<_> = fresh
        .iter()
        .map(|(spec, write_ns)| plan_bounds(ctx, spec, write_ns, counts))
        .collect();
    let bounds: Vec<(Option<Binary>, Vec<Option<Bson>>)> =
        stream::iter(planning).buffered(8).try_collect().await?;
    let mut stray = Vec::new();
    // New records, written 1,000 at a time as they are made (in order: a collection's ranges
    // are durable before its marker), never all at once: at thousands of collections the
    // whole set was the run's peak of memory.
    const RECORDS_PER_WRITE: usize = 1000;
    let mut new_docs = Vec::new();
    let mut written = 0usize;
    for ((spec, write_ns), (uuid, bounds)) in fresh.iter().zip(bounds) {
        let key = write_ns.to_string();
        stray.extend(
            ranges_of
                .remove(&key)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|d| d.get_str("_id").ok().map(str::to_string)),
        );
        let prefix = format!("{lane_prefix}{write_ns}/");
        let natural = needs_natural_order(spec);
        let mut docs = Vec::new();
        for (i, w) in bounds.windows(2).enumerate() {
            let mut d = doc! {
                "_id": format!("{prefix}{i:05}"), "plan": ctx.store.plan(), "lane": &ctx.lane,
                "ns": &key, "natural": natural, "done": false,
            };
            if let Some(u) = &uuid {
                d.insert("uuid", u.clone());
            }
            if let Some(b) = &w[0] {
                d.insert("min", b.clone());
            }
            if let Some(b) = &w[1] {
                d.insert("max", b.clone());
            }
            docs.push(d);
        }
        let mut m = doc! {
            "_id": format!("{prefix}planned"), "plan": ctx.store.plan(),
            "ranges": bounds.len().saturating_sub(1) as i64,
        };
        if let Some(u) = &uuid {
            m.insert("uuid", u.clone());
        }
        if indexed.contains(write_ns) {
            // Indexed with its creation (a small collection): no build after its copy.
            m.insert("indexed", true);
        }
        ranges_of.insert(key.clone(), docs.clone());
        markers.insert(key, m.clone());
        new_docs.extend(docs);
        new_docs.push(m);
        if new_docs.len() >= RECORDS_PER_WRITE {
            // Stray records of a collection planned again go first (they name its ranges).
            delete_stray(ctx, &mut stray).await?;
            written += new_docs.len();
            ctx.store
                .insert_many(PARTITIONS, std::mem::take(&mut new_docs))
                .await?;
        }
    }
    delete_stray(ctx, &mut stray).await?;
    if !new_docs.is_empty() {
        written += new_docs.len();
        ctx.store.insert_many(PARTITIONS, new_docs).await?;
    }
    if written > 0 {
        tracing::debug!(records = written, "Planned the copy's ranges.");
    }
    let mut out = Vec::new();
    for (spec, write_ns) in targets {
        let key = write_ns.to_string();
        let marker = markers.get(&key);
        let uuid = match marker.and_then(|m| m.get("uuid")) {
            Some(Bson::Binary(b)) => Some(b.clone()),
            _ => None,
        };
        let indexed = marker.is_some_and(|m| m.get_bool("indexed").unwrap_or(false));
        let mut todo = Vec::new();
        let mut ranges = Vec::new();
        let records = ranges_of.get(&key).map(Vec::as_slice).unwrap_or(&[]);
        let small = records.len() == 1 && counts.get(&write_ns).is_some_and(|n| *n <= SMALL_DOCS);
        for d in records {
            let id = d.get_str("_id").unwrap_or_default().to_string();
            let done = d.get_bool("done").unwrap_or(false);
            let reconcile = d.get_bool("reconcile").unwrap_or(false);
            // A range to reconcile is Pending for the gate until it opens: its comparison
            // reads the source after every event the gate dropped, and rewrites every
            // difference.
            let started = !reconcile
                && (d.get_bool("started").unwrap_or(false) || d.get("last_id").is_some());
            ranges.push(RangeInfo {
                id: id.clone(),
                min: d.get("min").cloned(),
                max: d.get("max").cloned(),
                started,
                done,
            });
            if !done {
                todo.push(Partition {
                    id,
                    write_ns: write_ns.clone(),
                    uuid: uuid.clone(),
                    natural: d.get_bool("natural").unwrap_or(false),
                    min: d.get("min").cloned(),
                    max: d.get("max").cloned(),
                    last_id: d.get("last_id").cloned(),
                    started,
                    reconcile,
                    small,
                });
            }
        }
        out.push((
            spec.clone(),
            Planned {
                ns: write_ns,
                ranges,
                todo,
                indexed,
            },
        ));
    }
    Ok(out)
}

/// A collection's source UUID and range bounds `[None, b1, …, None]` (empty when it is gone).
async fn plan_bounds(
    ctx: &CopyCtx,
    spec: &NsSpec,
    write_ns: &Namespace,
    counts: &Counts,
) -> Result<(Option<Binary>, Vec<Option<Bson>>), EngineError> {
    let uuid = source_uuid(ctx, spec, write_ns).await?;
    // One range: natural order (capped, clustered, time-series); or a non-simple collation
    // (the gate places an event's `_id` in a range by comparing it with the bounds in BSON
    // order, which a collation changes); or small enough. A collection gone meanwhile is
    // found so by its range's copy, which then leaves it to its change events.
    let small = counts
        .get(write_ns)
        .is_some_and(|n| *n <= ctx.docs_per_range.max(1));
    if needs_natural_order(spec) || collated(spec) || small {
        return Ok((uuid, vec![None, None]));
    }
    let read_ns = match &uuid {
        Some(u) => catalog::name_of_uuid(&ctx.source, &write_ns.db, u)
            .await
            .map_err(on(ctx.direction.reads()))?
            .map(|n| Namespace::new(write_ns.db.clone(), n)),
        None => Some(write_ns.clone()),
    };
    let bounds = match &read_ns {
        // Gone since it was listed: its drop (or cross-database rename) events follow.
        None => vec![],
        Some(ns) => split_points(ctx, ns).await?,
    };
    Ok((uuid, bounds))
}

/// A non-simple default collation (strings in `_id`s compare by it).
fn collated(spec: &NsSpec) -> bool {
    spec.info
        .get_document("options")
        .ok()
        .and_then(|o| o.get_document("collation").ok())
        .and_then(|c| c.get_str("locale").ok())
        .is_some_and(|l| l != "simple")
}

fn needs_natural_order(spec: &NsSpec) -> bool {
    let opts = spec.info.get_document("options").ok();
    let flag = |k: &str| opts.and_then(|o| o.get(k).ok().flatten()).is_some();
    spec.kind == NsKind::Timeseries || flag("capped") || flag("clusteredIndex")
}

/// Range boundaries `[None, b1, …, bn, None]` from a server-sorted random sample of `_id`s.
async fn split_points(ctx: &CopyCtx, ns: &Namespace) -> Result<Vec<Option<Bson>>, EngineError> {
    let coll = ctx.source.database(&ns.db).collection::<Document>(&ns.coll);
    let count = coll
        .estimated_document_count()
        .await
        .map_err(|e| cluster_err(ctx.direction.reads(), format!("counting `{ns}`"), &e))?;
    let parts = (count / ctx.docs_per_range.max(1)).clamp(1, MAX_PARTITIONS);
    if parts <= 1 {
        return Ok(vec![None, None]);
    }
    let oversample = 8;
    let sample: Vec<Document> = coll
        .aggregate(vec![
            doc! {"$sample": {"size": (parts * oversample) as i64}},
            doc! {"$project": {"_id": 1}},
            doc! {"$sort": {"_id": 1}},
        ])
        .await
        .map_err(|e| cluster_err(ctx.direction.reads(), format!("sampling `{ns}`"), &e))?
        .try_collect()
        .await
        .map_err(|e| cluster_err(ctx.direction.reads(), format!("sampling `{ns}`"), &e))?;
    let mut bounds = vec![None];
    for (i, d) in sample.iter().enumerate() {
        if i > 0 && i % oversample as usize == 0 {
            if let Some(id) = d.get("_id").filter(|id| !gate::inexact_bound(id)) {
                if bounds.last().and_then(|b: &Option<Bson>| b.as_ref()) != Some(id) {
                    bounds.push(Some(id.clone()));
                }
            }
        }
    }
    bounds.push(None);
    Ok(bounds)
}

async fn copy_partition(ctx: &CopyCtx, mut p: Partition) -> Result<(), EngineError> {
    if p.reconcile {
        return reconcile_partition(ctx, p).await;
    }
    let mut retry = ctx.retry.retry(&ctx.progress);
    let what = format!("copying `{}`", p.write_ns);
    let mut moves = 0u32;
    if ctx.gate.is_some() && !p.started {
        // Before the first read: a restart holds this range's events again (it may have
        // written documents by then).
        ctx.flags.set(&ctx.store, &p.id, "started").await?;
        p.started = true;
    }
    // Each attempt resumes after the last durable `_id`; transient failures retry with
    // backoff until the retry timeout.
    loop {
        let copied = ctx.progress.copied_docs.load(Ordering::Relaxed);
        match copy_partition_once(ctx, &mut p).await {
            Ok(Pass::Done) => break,
            // Paused at a checkpoint: continue from it once resumed.
            Ok(Pass::Paused) => crate::engine::control::hold_copy(&ctx.progress).await,
            Ok(Pass::Gone) => {
                tracing::info!(ns = %p.write_ns, "The collection was dropped or moved to another database during its copy; its change events carry it from here.");
                break;
            }
            Ok(Pass::Moved) => {
                moves += 1;
                if moves > 1000 {
                    return Err(EngineError::Event(format!(
                        "`{}` was renamed or its cursor killed 1000 times during its copy",
                        p.write_ns
                    )));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) if e.is_transient() => {
                // Documents were copied since the last failure: a new outage, with its own
                // retry budget.
                if ctx.progress.copied_docs.load(Ordering::Relaxed) > copied {
                    retry.progress();
                }
                ctx.retry.wait(&mut retry, &what, &e).await?;
            }
            Err(e) => return Err(e),
        }
    }
    retry.succeeded(&what);
    ctx.flags.set(&ctx.store, &p.id, "done").await?;
    if let Some(g) = &ctx.gate {
        g.finish(&p.write_ns, &p.id);
    }
    Ok(())
}

/// A range copied before the resume point was lost: compared with the source (after every
/// event the gate dropped for it) and only its differences rewritten, retried as a copy is.
async fn reconcile_partition(ctx: &CopyCtx, p: Partition) -> Result<(), EngineError> {
    let mut retry = ctx.retry.retry(&ctx.progress);
    let found = loop {
        let read_ns = match &p.uuid {
            Some(u) => match catalog::name_of_uuid(&ctx.source, &p.write_ns.db, u).await {
                Ok(Some(name)) => Some(Namespace::new(p.write_ns.db.clone(), name)),
                Ok(None) => None,
                Err(e) => {
                    let e = on(ctx.direction.reads())(e);
                    if !e.is_transient() {
                        return Err(e);
                    }
                    ctx.retry
                        .wait(&mut retry, "finding a collection to compare", &e)
                        .await?;
                    continue;
                }
            },
            None => Some(p.write_ns.clone()),
        };
        let Some(read_ns) = read_ns else {
            // Dropped since: its drop event follows.
            break crate::engine::recover::Reconciled::default();
        };
        let after = match &ctx.gate {
            Some(g) => g.open(&p.write_ns, &p.id),
            None => crate::engine::clock::cluster_time(&ctx.source, Role::Source).await?,
        };
        let range = crate::engine::recover::RangeToCompare {
            source_ns: &read_ns,
            dest_ns: &p.write_ns,
            min: p.min.clone(),
            max: p.max.clone(),
            after,
        };
        match crate::engine::recover::reconcile_range(
            ctx.direction,
            &ctx.source,
            &ctx.dest,
            &ctx.store,
            range,
        )
        .await
        {
            Ok(r) => break r,
            Err(e) if e.is_transient() => {
                ctx.retry
                    .wait(&mut retry, &format!("comparing `{}`", p.write_ns), &e)
                    .await?;
            }
            Err(e) => return Err(e),
        }
    };
    ctx.progress
        .recovery
        .add_range(found.differs(), found.written, found.bytes, found.deleted);
    ctx.store
        .update_one(
            PARTITIONS,
            doc! {"_id": &p.id},
            doc! {"$set": {"done": true, "reconciled": found.to_doc()}},
        )
        .await?;
    if let Some(g) = &ctx.gate {
        g.finish(&p.write_ns, &p.id);
    }
    Ok(())
}

/// Whether the source collection named `ns` is still the one with this UUID.
async fn still_is(
    ctx: &CopyCtx,
    ns: &Namespace,
    uuid: &Option<Binary>,
) -> Result<bool, EngineError> {
    match uuid {
        None => Ok(true),
        Some(u) => Ok(catalog::uuid_of(&ctx.source, ns)
            .await
            .map_err(on(ctx.direction.reads()))?
            .as_ref()
            == Some(u)),
    }
}

/// Copies the rest of a range (`Pass::Paused` when it stopped early for a pause, after its
/// last write is durable and checkpointed).
async fn copy_partition_once(ctx: &CopyCtx, p: &mut Partition) -> Result<Pass, EngineError> {
    // The source collection's current name.
    let read_ns = match &p.uuid {
        Some(u) => match catalog::name_of_uuid(&ctx.source, &p.write_ns.db, u)
            .await
            .map_err(on(ctx.direction.reads()))?
        {
            Some(name) => Namespace::new(p.write_ns.db.clone(), name),
            None => return Ok(Pass::Gone),
        },
        None => p.write_ns.clone(),
    };
    if read_ns != p.write_ns {
        tracing::debug!(from = %p.write_ns, to = %read_ns, "copying a renamed collection under its new name");
    }
    let dst = ctx
        .dest
        .database(&p.write_ns.db)
        .collection_with_options::<RawDocumentBuf>(
            &p.write_ns.coll,
            mongodb::options::CollectionOptions::builder()
                .write_concern(WriteConcern::majority())
                .build(),
        );
    // `batchSize: 0`: the cursor is opened without reading, then the name is checked to still
    // be this UUID. A rename or drop after that kills the cursor, so no document of another
    // collection that took the name can be read.
    // With the gate: the read sees every event the gate dropped for this range (see
    // `gate.rs`), whatever member answers.
    let read_concern = match &ctx.gate {
        Some(g) => {
            doc! {"level": "majority", "afterClusterTime": g.open(&p.write_ns, &p.id)}
        }
        None => doc! {"level": "majority"},
    };
    let mut find = doc! {"find": &read_ns.coll, "filter": {}, "batchSize": 0, "readConcern": read_concern.clone()};
    if p.natural {
        find.insert("hint", doc! {"$natural": 1});
    } else {
        find.insert("hint", doc! {"_id": 1});
        find.insert("sort", doc! {"_id": 1});
        let lower = p.last_id.clone().or_else(|| p.min.clone());
        if let Some(lo) = lower {
            find.insert("min", doc! {"_id": lo});
        }
        if let Some(hi) = &p.max {
            find.insert("max", doc! {"_id": hi.clone()});
        }
    }
    let ns_text = p.write_ns.to_string();
    let read_err = |e: &mongodb::error::Error| {
        read_err(ctx.direction.reads(), format!("reading `{read_ns}`"), e)
    };
    let mut cursor = match ctx
        .source
        .database(&read_ns.db)
        .run_cursor_command(find)
        .batch_size(1000)
        .batch()
        .await
    {
        Ok(c) => c,
        Err(e) if p.uuid.is_some() && moved_code(&e) => return Ok(Pass::Moved),
        Err(e) => return Err(read_err(&e)),
    };
    if !still_is(ctx, &read_ns, &p.uuid).await? {
        return Ok(Pass::Moved);
    }

    let mut in_flight: VecDeque<Writer> = VecDeque::new();
    let mut batch: Vec<RawDocumentBuf> = Vec::new();
    let mut batch_bytes = 0usize;
    let mut last_checkpoint = Instant::now();
    let mut pending_last: Option<Bson> = None;
    let mut moved = false;

    let dst_name = ctx.direction.writes();
    let flush = |batch: Vec<RawDocumentBuf>, bytes: usize| {
        let dst = dst.clone();
        let ns = ns_text.clone();
        let store = ctx.store.clone();
        tokio::spawn(async move {
            let last = batch.last().and_then(id_of);
            let n = batch.len() as u64;
            insert_batch(dst_name, &store, &dst, &ns, batch).await?;
            Ok((last, n, bytes as u64))
        })
    };

    loop {
        if crate::base::pause_gate::is_paused() && !p.natural {
            while let Some(h) = in_flight.pop_front() {
                let (last, n, b) = join(h).await?;
                ctx.progress.add_copied(n, b);
                if last.is_some() {
                    pending_last = last;
                }
            }
            // `batch` holds documents not written yet: the checkpoint is before them.
            if let Some(id) = pending_last.take() {
                checkpoint(ctx, p, id).await?;
            }
            return Ok(Pass::Paused);
        }
        let next = match cursor.try_next().await {
            Ok(n) => n,
            Err(e) if p.uuid.is_some() && moved_code(&e) => {
                moved = true;
                break;
            }
            Err(e) => return Err(read_err(&e)),
        };
        let Some(raw_batch) = next else { break };
        let docs = raw_batch.doc_slices().map_err(|e| read_err(&e))?;
        for item in docs {
            let item = item.map_err(|e| {
                EngineError::Corrupt(format!(
                    "`{read_ns}`: malformed document from the source: {e}"
                ))
            })?;
            let RawBsonRef::Document(d) = item else {
                continue;
            };
            batch_bytes += d.as_bytes().len();
            batch.push(d.to_raw_document_buf());
            if batch.len() >= BATCH_DOCS || batch_bytes >= BATCH_BYTES {
                {
                    ctx.store.check_fence()?;
                    in_flight.push_back(flush(std::mem::take(&mut batch), batch_bytes));
                }
                batch_bytes = 0;
                // Natural-order collections (capped) keep insertion order: one write at a time.
                let limit = if p.natural { 1 } else { WRITES_IN_FLIGHT };
                while in_flight.len() >= limit {
                    if let Some(h) = in_flight.pop_front() {
                        let (last, n, b) = join(h).await?;
                        ctx.progress.add_copied(n, b);
                        if last.is_some() {
                            pending_last = last;
                        }
                    }
                }
                if !p.natural && last_checkpoint.elapsed() > Duration::from_millis(500) {
                    if let Some(id) = pending_last.take() {
                        checkpoint(ctx, p, id).await?;
                        last_checkpoint = Instant::now();
                    }
                }
            }
        }
        crate::base::crashpoint::pause("copy.reading").await;
    }
    if !moved && !p.natural && p.max.is_none() && (p.last_id.is_some() || p.min.is_some()) {
        // An index scan with `min` and no `max` stops before MaxKey (the implicit upper bound
        // is exclusive), so a document whose `_id` is MaxKey would be skipped: fetch it.
        let top = ctx
            .source
            .database(&read_ns.db)
            .run_command(
                doc! {"find": &read_ns.coll, "filter": {"_id": Bson::MaxKey},
                "limit": 1, "singleBatch": true, "readConcern": read_concern},
            )
            .await
            .map(|r| {
                r.get_document("cursor")
                    .and_then(|c| c.get_array("firstBatch"))
                    .ok()
                    .and_then(|a| a.first())
                    .and_then(Bson::as_document)
                    .and_then(|d| RawDocumentBuf::from_document(d).ok())
            });
        match top {
            Ok(Some(d)) => {
                batch_bytes += d.as_bytes().len();
                batch.push(d);
            }
            Ok(None) => {}
            Err(e) if p.uuid.is_some() && moved_code(&e) => moved = true,
            Err(e) => return Err(read_err(&e)),
        }
        // Read by name: make sure the name still was this collection.
        if !moved && !still_is(ctx, &read_ns, &p.uuid).await? {
            moved = true;
        }
    }
    // What was read is this collection's: write it, then resume after it if moved.
    if !batch.is_empty() {
        {
            ctx.store.check_fence()?;
            in_flight.push_back(flush(std::mem::take(&mut batch), batch_bytes));
        }
    }
    while let Some(h) = in_flight.pop_front() {
        let (last, n, b) = join(h).await?;
        ctx.progress.add_copied(n, b);
        if last.is_some() {
            pending_last = last;
        }
    }
    if moved {
        if !p.natural {
            if let Some(id) = pending_last.take() {
                checkpoint(ctx, p, id).await?;
            }
        }
        return Ok(Pass::Moved);
    }
    Ok(Pass::Done)
}

async fn join<T>(h: JoinHandle<Result<T, EngineError>>) -> Result<T, EngineError> {
    h.await
        .map_err(|e| EngineError::Task(format!("copy writer failed: {e}")))?
}

/// An insert in flight: resolves to (last `_id`, documents, bytes).
type Writer = JoinHandle<Result<(Option<Bson>, u64, u64), EngineError>>;

/// Records the last `_id` durably written (the inserts used majority write concern).
async fn checkpoint(ctx: &CopyCtx, p: &mut Partition, id: Bson) -> Result<(), EngineError> {
    ctx.store
        .update_one(
            PARTITIONS,
            doc! {"_id": &p.id},
            doc! {"$set": {"last_id": id.clone()}},
        )
        .await?;
    p.last_id = Some(id);
    crate::base::crashpoint::pause("copy.checkpointed").await;
    Ok(())
}

fn id_of(d: &RawDocumentBuf) -> Option<Bson> {
    d.get("_id")
        .ok()
        .flatten()
        .and_then(|v| Bson::try_from(v).ok())
}

/// Bytes of documents per insert command: a command is one BSON document (16 MiB, plus the
/// 16 KiB the server allows a command beyond it); a document bigger than this goes alone.
const COMMAND_BYTES: usize = 15 * 1024 * 1024;

/// Unordered insert, bypassing validation; duplicate `_id`s (a range re-copied after a
/// crash) are expected and ignored, any other write error stops the copy naming the `_id`.
///
/// Sent as `insert` commands with the lease's deadline as `maxTimeMS` (as the change
/// application's writes): an insert held up in the destination past this runner's lease
/// (a stalled runner, a blocked server) must not land after another runner took the plan
/// over and applied a later delete of the same document, which would bring it back.
pub async fn insert_batch(
    cluster: Role,
    store: &StateStore,
    dst: &mongodb::Collection<RawDocumentBuf>,
    ns: &str,
    batch: Vec<RawDocumentBuf>,
) -> Result<(), EngineError> {
    let mut start = 0;
    while start < batch.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < batch.len() {
            // Each array element adds its type byte and index key (at most 6 bytes here).
            let len = batch[end].as_bytes().len() + 8;
            if end > start && bytes + len > COMMAND_BYTES {
                break;
            }
            bytes += len;
            end += 1;
        }
        insert_command(cluster, store, dst, ns, &batch[start..end]).await?;
        start = end;
    }
    Ok(())
}

/// One `insert` command (see [`insert_batch`]).
async fn insert_command(
    cluster: Role,
    store: &StateStore,
    dst: &mongodb::Collection<RawDocumentBuf>,
    ns: &str,
    batch: &[RawDocumentBuf],
) -> Result<(), EngineError> {
    use crate::cluster::server_error::code::{
        MAX_TIME_MS_EXPIRED, TRANSACTION_TOO_LARGE_FOR_CACHE,
    };
    let one_by_one = || async {
        // mongod inserts a command's documents in shared storage transactions: several
        // large ones together can exceed what its cache admits although each fits alone.
        tracing::debug!(
            ns,
            documents = batch.len(),
            "Batch too large for the destination's cache: inserting its documents one by one."
        );
        for d in batch {
            Box::pin(insert_command(
                cluster,
                store,
                dst,
                ns,
                std::slice::from_ref(d),
            ))
            .await?;
        }
        Ok(())
    };
    let mut docs = RawArrayBuf::new();
    for d in batch {
        docs.push(d.clone());
    }
    let mut cmd = RawDocumentBuf::new();
    cmd.append("insert", dst.name());
    cmd.append("documents", docs);
    cmd.append("ordered", false);
    cmd.append("bypassDocumentValidation", true);
    let mut wc = RawDocumentBuf::new();
    wc.append("w", "majority");
    cmd.append("writeConcern", wc);
    // A lost lease stays a lost lease (exit 4), not a write error.
    if let Some(budget) = store.write_budget().await? {
        cmd.append("maxTimeMS", (budget.as_millis() as i64).max(1));
    }
    let reply = match dst
        .client()
        .database(&dst.namespace().db)
        .run_raw_command(cmd)
        .await
    {
        Ok(r) => r,
        Err(e) if batch.len() > 1 && too_large_for_cache(&e) => return one_by_one().await,
        Err(e) => {
            if let ErrorKind::Command(c) = e.kind.as_ref() {
                if c.code == MAX_TIME_MS_EXPIRED {
                    // Stopped at this runner's lease deadline: sent again once the lease is
                    // renewed, or not at all if it is lost.
                    return Err(EngineError::Cluster {
                        cluster,
                        doing: format!("writing `{ns}`"),
                        detail: format!("{} (code {})", c.message, c.code),
                        transient: true,
                    });
                }
            }
            return Err(cluster_err(cluster, format!("writing `{ns}`"), &e));
        }
    };
    let write_errors: Vec<(usize, i32, String)> = reply
        .get_array("writeErrors")
        .ok()
        .map(|ws| {
            ws.iter()
                .filter_map(Bson::as_document)
                .map(|w| {
                    (
                        w.get_i32("index").unwrap_or(0).max(0) as usize,
                        w.get_i32("code").unwrap_or(0),
                        w.get_str("errmsg").unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    if batch.len() > 1
        && write_errors
            .iter()
            .any(|(_, code, _)| *code == TRANSACTION_TOO_LARGE_FOR_CACHE)
    {
        return one_by_one().await;
    }
    if let Some((index, code, message)) = write_errors.iter().find(|(_, c, _)| *c != DUPLICATE_KEY)
    {
        let id = batch
            .get(*index)
            .and_then(id_of)
            .map(|b| b.to_string())
            .unwrap_or_else(|| "?".into());
        return Err(write_error(cluster, ns, id, *code, message));
    }
    if let Ok(wce) = reply.get_document("writeConcernError") {
        // The documents are written but not yet majority-durable: the range is sent again.
        return Err(EngineError::Cluster {
            cluster,
            doing: format!("writing `{ns}`"),
            detail: format!(
                "write concern error: {} (code {})",
                wce.get_str("errmsg").unwrap_or(""),
                wce.get_i32("code").unwrap_or(0)
            ),
            transient: true,
        });
    }
    // Duplicate keys: expected when a range is re-copied after a crash, but only on `_id`. A
    // unique index the destination has and the source lacks would drop documents silently:
    // make sure every rejected `_id` is there.
    let dups: Vec<usize> = write_errors.iter().map(|(i, _, _)| *i).collect();
    check_duplicates(cluster, dst, ns, batch, &dups).await
}

/// TransactionTooLargeForCache (388), as a command error or a write error.
fn too_large_for_cache(e: &mongodb::error::Error) -> bool {
    use crate::cluster::server_error::code::TRANSACTION_TOO_LARGE_FOR_CACHE as C;
    match e.kind.as_ref() {
        ErrorKind::Command(c) => c.code == C,
        ErrorKind::InsertMany(im) => im
            .write_errors
            .as_ref()
            .is_some_and(|ws| ws.iter().any(|w| w.code == C)),
        _ => false,
    }
}

/// After duplicate-key errors at `dups` (indexes into `batch`): Ok if every one of those
/// `_id`s exists on the destination (a re-copy), else a write error naming the first `_id`
/// that is missing (another unique index rejected it).
async fn check_duplicates(
    cluster: Role,
    dst: &mongodb::Collection<RawDocumentBuf>,
    ns: &str,
    batch: &[RawDocumentBuf],
    dups: &[usize],
) -> Result<(), EngineError> {
    let ids: Vec<Bson> = dups
        .iter()
        .filter_map(|&i| batch.get(i).and_then(id_of))
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    let read = |e: mongodb::error::Error| cluster_err(cluster, format!("reading `{ns}`"), &e);
    let found = dst
        .count_documents(doc! {"_id": {"$in": ids.clone()}})
        .await
        .map_err(read)?;
    if found as usize >= ids.len() {
        return Ok(());
    }
    for id in ids {
        let present = dst
            .count_documents(doc! {"_id": {"$eq": id.clone()}})
            .await
            .map_err(read)?;
        if present == 0 {
            return Err(EngineError::Write {
                cluster,
                ns: ns.to_string(),
                id: id.to_string(),
                code: DUPLICATE_KEY,
                detail: "duplicate key on a unique index other than `_id` (the destination has \
                         a unique index the source does not)"
                    .into(),
            });
        }
    }
    Ok(())
}

/// Total bytes and documents of the collections to copy (for progress and ETA), and each
/// collection's document count (for planning its ranges): one `collStats` per collection,
/// [`catalog::CATALOG_CONCURRENCY`] at once. A collection whose stats cannot be read is
/// left out (its range plan samples it).
pub async fn estimate(source: &Client, specs: &[NsSpec], progress: &Progress) -> Counts {
    let targets: Vec<Namespace> = specs
        .iter()
        .filter(|s| s.kind != NsKind::View)
        .filter_map(catalog::copy_target)
        .collect();
    let reads: Vec<_> = targets
        .into_iter()
        .map(|ns| {
            let db = source.database(&ns.db);
            async move {
                let st = db
                    .run_command(doc! {"collStats": &ns.coll})
                    .await
                    .ok()
                    .map(|st| (num(&st, "size"), num(&st, "count")));
                (ns, st)
            }
        })
        .collect();
    let stats: Vec<(Namespace, Option<(u64, u64)>)> = stream::iter(reads)
        .buffered(catalog::CATALOG_CONCURRENCY)
        .collect()
        .await;
    let mut counts = Counts::new();
    let (mut bytes, mut docs) = (0u64, 0u64);
    for (ns, st) in stats {
        if let Some((b, n)) = st {
            bytes += b;
            docs += n;
            counts.insert(ns, n);
        }
    }
    progress
        .estimated_total_bytes
        .store(bytes, Ordering::Relaxed);
    progress.estimated_total_docs.store(docs, Ordering::Relaxed);
    counts
}

fn num(d: &Document, k: &str) -> u64 {
    match d.get(k) {
        Some(Bson::Int32(v)) => *v as u64,
        Some(Bson::Int64(v)) => *v as u64,
        Some(Bson::Double(v)) => *v as u64,
        _ => 0,
    }
}

/// Forgets the copy records of one namespace, so a collection that comes back into the
/// filter (a rename into it) is copied again from scratch.
pub async fn forget(ctx: &CopyCtx, ns: &Namespace) -> Result<(), EngineError> {
    let prefix = format!("^{}", regex::escape(&format!("{}/{}/", ctx.lane, ns)));
    ctx.store
        .delete_many(PARTITIONS, doc! {"_id": {"$regex": prefix}})
        .await?;
    Ok(())
}
