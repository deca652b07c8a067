//! Writing change events to the destination: a round's CRUD events regrouped into commands
//! by namespace and kind and spread over workers by document (each document's events keep
//! their order), DDL events replayed through the catalog, documents re-read from the source
//! where an event cannot carry them. Used by the change-application loop (`apply.rs`) and by
//! the repair and resync hooks it serves between batches.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::try_join_all;
use futures::TryStreamExt;
use mongodb::bson::{
    doc, Bson, Document, RawArrayBuf, RawBson, RawBsonRef, RawDocument, RawDocumentBuf, Timestamp,
};
use mongodb::error::ErrorKind;
use mongodb::Client;
use tokio::sync::watch;

use crate::base::namespace::Namespace;
use crate::cluster::server_error::code::{
    BAD_VALUE, DUPLICATE_KEY, PATH_NOT_VIABLE, SNAPSHOT_TOO_OLD, SNAPSHOT_UNAVAILABLE,
    TYPE_MISMATCH,
};
use crate::engine::catalog::{self, CatalogError, DdlOutcome, RelaxationStore};
use crate::engine::copy::{self, CopyCtx};
use crate::engine::error::{cluster_err, on, write_error, EngineError};
use crate::engine::identity::identity_key;
use crate::engine::progress::Progress;
use crate::engine::retry::RetryPolicy;
use crate::engine::stats::Stage;
use crate::engine::translate::{self, Stmt};
use crate::plan::NamespaceSelector;
use crate::state::record::Direction;
use crate::state::StateStore;

const COMMAND_BYTES: usize = 8 * 1024 * 1024;
const COMMAND_STMTS: usize = 1_000;

#[derive(Clone)]
pub struct ApplyCtx {
    /// The lane's direction: errors name each cluster by its plan role.
    pub direction: Direction,
    pub source: Client,
    pub dest: Client,
    pub store: StateStore,
    /// The `lanes` record id (`plan/direction`).
    pub lane: String,
    pub selector: NamespaceSelector,
    pub relax: Arc<RelaxationStore>,
    pub progress: Arc<Progress>,
    pub retry: RetryPolicy,
    pub workers: usize,
    pub copy: CopyCtx,
    /// While the initial copy runs: which events to apply, hold or drop.
    pub gate: Option<Arc<crate::engine::gate::Gate>>,
    pub max_lag: Duration,
    /// The source time up to which every event is applied and durable.
    pub position: watch::Sender<Option<Timestamp>>,
    /// Whether a destination namespace exists (`None`: it does not) and how its events are
    /// keyed to workers; forgotten at every DDL event.
    pub keying: Arc<std::sync::Mutex<HashMap<Namespace, Option<Keying>>>>,
}

/// What a collection's options mean for spreading its events over workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keying {
    /// Capped: its natural order is insertion order, so all its events keep source order.
    pub capped: bool,
    /// A non-simple default collation: strings in `_id`s compare by it (see
    /// [`identity_key`]).
    pub collated: bool,
}

fn event_ns(ev: &RawDocument) -> Option<Namespace> {
    ev.get_document("ns")
        .ok()
        .and_then(Namespace::from_event_ns)
}

/// Buckets of time-series collections arrive as `system.buckets.<name>` events.
fn selected(sel: &NamespaceSelector, ns: &Namespace) -> bool {
    match ns.coll.strip_prefix("system.buckets.") {
        Some(view) => sel.selects(&ns.db, view),
        None => sel.selects(&ns.db, &ns.coll),
    }
}

pub(crate) async fn apply_round(
    ctx: &ApplyCtx,
    round: Vec<RawDocumentBuf>,
) -> Result<(), EngineError> {
    if round.is_empty() {
        return Ok(());
    }
    // No destination write once the lease may be another runner's.
    ctx.store.check_fence()?;
    // Where the destination enforces uniqueness (the reverse direction: the old source's
    // indexes are real), a round can fail with a duplicate key although the source never had
    // one: parallel workers pass through states the source never had (two documents swapping
    // a unique value), and a replayed round (after a crash or a transient error) or a re-read
    // document puts some documents *ahead* of the round, holding a value an earlier statement
    // of another document needs. First replay the round in source order (enough for the
    // first case); if that fails too, repair it (`repair_round`) instead of failing the same
    // way on every retry and every restart.
    let mut err = match apply_round_with(ctx, &round, ctx.workers.max(1)).await {
        Err(
            e @ EngineError::Write {
                code: DUPLICATE_KEY,
                ..
            },
        ) => e,
        other => return other,
    };
    if ctx.workers > 1 {
        tracing::debug!("Duplicate key in a parallel round; replaying it in source order.");
        match apply_round_with(ctx, &round, 1).await {
            Err(
                e @ EngineError::Write {
                    code: DUPLICATE_KEY,
                    ..
                },
            ) => err = e,
            other => return other,
        }
    }
    tracing::info!(
        events = round.len(),
        "Duplicate key replaying a round in source order (documents ahead of it on the \
         destination): installing its documents as of the round's source time."
    );
    repair_round(ctx, &round, err).await
}

/// Makes every document the round touches equal to the source's document at the round's last
/// event time `T` (a snapshot read, `atClusterTime: T`): in one destination transaction,
/// delete them all, then insert their versions at `T`. Documents the round does not touch
/// have no event in it, so they already have their state at `T`; the source's unique indexes
/// held at `T`, so the inserts cannot collide with each other or with them. The one exception
/// is a transaction cut by the batch boundary: its later operations (same time `T`, next
/// batch) are in the snapshot but not yet on the destination, so a document only they change
/// can still hold an old value; a collision names it (`keyValue`), and it joins the repaired
/// set. Events of the next rounds then replay on top, as after any re-read. Without snapshot
/// history for `T` (the lane is more than `minSnapshotHistoryWindowInSeconds` behind) the
/// source's current majority time is used instead, with the same collision handling. A
/// collision the source's own state has too (a unique index only the destination has) aborts
/// the transaction, leaves the destination as it was and fails with `err`, which names the
/// document.
async fn repair_round(
    ctx: &ApplyCtx,
    round: &[RawDocumentBuf],
    err: EngineError,
) -> Result<(), EngineError> {
    let Some(at) = round
        .iter()
        .rev()
        .find_map(|ev| ev.get_timestamp("clusterTime").ok())
    else {
        return Err(err);
    };
    let mut touched: Vec<(Namespace, Vec<RawDocumentBuf>)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for ev in round {
        let Some(ns) = event_ns(ev) else { continue };
        if !selected(&ctx.selector, &ns) {
            continue;
        }
        let Ok(key) = ev.get_document("documentKey") else {
            continue;
        };
        if !seen.insert((ns.clone(), key.as_bytes().to_vec())) {
            continue;
        }
        match touched.iter_mut().find(|(n, _)| *n == ns) {
            Some((_, keys)) => keys.push(key.to_raw_document_buf()),
            None => touched.push((ns, vec![key.to_raw_document_buf()])),
        }
    }
    for (ns, keys) in &touched {
        let repaired = ctx
            .retry
            .run(&ctx.progress, "repairing a round", || {
                repair_ns(ctx, ns, keys.clone(), at)
            })
            .await?;
        if !repaired {
            return Err(err);
        }
    }
    Ok(())
}

/// See [`repair_round`]; `false` when the collisions do not resolve.
async fn repair_ns(
    ctx: &ApplyCtx,
    ns: &Namespace,
    mut keys: Vec<RawDocumentBuf>,
    at: Timestamp,
) -> Result<bool, EngineError> {
    let mut at = at;
    for _ in 0..8 {
        let docs = match snapshot_read(ctx, ns, &keys, at).await? {
            Some(docs) => docs,
            None => {
                at = crate::engine::clock::cluster_time(&ctx.source, ctx.direction.reads()).await?;
                snapshot_read(ctx, ns, &keys, at).await?.ok_or_else(|| {
                    EngineError::Event(format!(
                        "`{ns}`: the source has no snapshot at its own majority time"
                    ))
                })?
            }
        };
        let blockers = replace_in_transaction(ctx, ns, &keys, docs).await?;
        if blockers.is_empty() {
            return Ok(true);
        }
        // Documents outside the set hold a value the set's documents have at `at`: find them
        // on the destination and repair them too.
        let mut grew = false;
        for value in blockers {
            let found: Vec<RawDocumentBuf> = ctx
                .dest
                .database(&ns.db)
                .collection::<RawDocumentBuf>(&ns.coll)
                .find(value.clone())
                .projection(doc! {"_id": 1})
                .await
                .map_err(|e| cluster_err(ctx.direction.writes(), format!("reading `{ns}`"), &e))?
                .try_collect()
                .await
                .map_err(|e| cluster_err(ctx.direction.writes(), format!("reading `{ns}`"), &e))?;
            for f in found {
                if !keys.iter().any(|k| k.as_bytes() == f.as_bytes()) {
                    keys.push(f);
                    grew = true;
                }
            }
        }
        if !grew {
            break;
        }
    }
    Ok(false)
}

/// The source's documents with these keys at `at` (a snapshot read); `None` when the source
/// no longer (or not yet) has a snapshot at `at`.
async fn snapshot_read(
    ctx: &ApplyCtx,
    ns: &Namespace,
    keys: &[RawDocumentBuf],
    at: Timestamp,
) -> Result<Option<Vec<RawDocumentBuf>>, EngineError> {
    let mut out = Vec::new();
    for chunk in keys.chunks(500) {
        let mut or = Vec::with_capacity(chunk.len());
        for k in chunk {
            // `{field: {$eq: value}}`: a key value is a literal, never a regex or an operator.
            let mut f = Document::new();
            for e in k.iter_elements() {
                let e = e.map_err(|e| EngineError::Event(e.to_string()))?;
                let v = Bson::try_from(e.value().map_err(|e| EngineError::Event(e.to_string()))?)
                    .map_err(|e| EngineError::Event(e.to_string()))?;
                f.insert(e.key(), doc! {"$eq": v});
            }
            or.push(f);
        }
        let cmd = doc! {
            "find": &ns.coll, "filter": {"$or": or},
            "readConcern": {"level": "snapshot", "atClusterTime": at},
        };
        let read = async {
            ctx.source
                .database(&ns.db)
                .run_cursor_command(cmd)
                .await?
                .with_type::<RawDocumentBuf>()
                .try_collect::<Vec<_>>()
                .await
        };
        match read.await {
            Ok(docs) => out.extend(docs),
            Err(e) if matches!(e.kind.as_ref(), ErrorKind::Command(c) if c.code == SNAPSHOT_TOO_OLD || c.code == SNAPSHOT_UNAVAILABLE) => {
                return Ok(None)
            }
            Err(e) => {
                return Err(cluster_err(
                    ctx.direction.reads(),
                    format!("reading `{ns}` at its round's time"),
                    &e,
                ))
            }
        }
    }
    Ok(Some(out))
}

/// In one destination transaction: deletes the documents with these keys and inserts `docs`.
/// Returns the `keyValue`s of unique-index collisions (the transaction is then aborted).
async fn replace_in_transaction(
    ctx: &ApplyCtx,
    ns: &Namespace,
    keys: &[RawDocumentBuf],
    docs: Vec<RawDocumentBuf>,
) -> Result<Vec<Document>, EngineError> {
    let dest_err = |e: mongodb::error::Error| {
        cluster_err(ctx.direction.writes(), format!("writing `{ns}`"), &e)
    };
    let db = ctx.dest.database(&ns.db);
    let mut session = ctx.dest.start_session().await.map_err(dest_err)?;
    session
        .start_transaction()
        .write_concern(mongodb::options::WriteConcern::majority())
        .await
        .map_err(dest_err)?;
    let mut commands = Vec::new();
    for chunk in keys.chunks(COMMAND_STMTS) {
        let mut arr = RawArrayBuf::new();
        for k in chunk {
            let mut d = RawDocumentBuf::new();
            d.append("q", k.clone());
            d.append("limit", 1i32);
            arr.push(d);
        }
        let mut cmd = RawDocumentBuf::new();
        cmd.append("delete", ns.coll.as_str());
        cmd.append("deletes", arr);
        commands.push(cmd);
    }
    let mut rest = docs.as_slice();
    while !rest.is_empty() {
        let (mut n, mut bytes) = (0, 0);
        let mut arr = RawArrayBuf::new();
        for d in rest {
            if n > 0 && (n >= COMMAND_STMTS || bytes + d.as_bytes().len() > COMMAND_BYTES) {
                break;
            }
            bytes += d.as_bytes().len();
            arr.push(d.clone());
            n += 1;
        }
        rest = &rest[n..];
        let mut cmd = RawDocumentBuf::new();
        cmd.append("insert", ns.coll.as_str());
        cmd.append("documents", arr);
        cmd.append("bypassDocumentValidation", true);
        commands.push(cmd);
    }
    let mut blockers = Vec::new();
    for cmd in commands {
        let reply = db
            .run_raw_command(cmd)
            .session(&mut session)
            .await
            .map_err(dest_err)?;
        if let Ok(errs) = reply.get_array("writeErrors") {
            for e in errs.iter().filter_map(Bson::as_document) {
                let code = e.get_i32("code").unwrap_or(0);
                match e.get_document("keyValue") {
                    Ok(v) if code == DUPLICATE_KEY => blockers.push(v.clone()),
                    _ => {
                        let _ = session.abort_transaction().await;
                        return Err(write_error(
                            ctx.direction.writes(),
                            ns,
                            "?",
                            code,
                            e.get_str("errmsg").unwrap_or_default(),
                        ));
                    }
                }
            }
        }
        if !blockers.is_empty() {
            let _ = session.abort_transaction().await;
            return Ok(blockers);
        }
    }
    session.commit_transaction().await.map_err(dest_err)?;
    Ok(blockers)
}

async fn apply_round_with(
    ctx: &ApplyCtx,
    round: &[RawDocumentBuf],
    workers: usize,
) -> Result<(), EngineError> {
    let decoding = Instant::now();
    let mut per_ns: HashMap<String, u64> = HashMap::new();
    let mut buckets: Vec<Vec<Keyed>> = (0..workers).map(|_| Vec::new()).collect();
    // Each namespace's collection UUID (one collection per name within a round: DDL events
    // are barriers between rounds), for re-reading a document (see `send`).
    let mut uuids: Uuids = HashMap::new();
    for ev in round {
        let Some(ns) = event_ns(ev) else { continue };
        if !selected(&ctx.selector, &ns) {
            continue;
        }
        if let Some(RawBsonRef::Binary(b)) = ev.get("collectionUUID").ok().flatten() {
            uuids.entry(ns.clone()).or_insert_with(|| b.to_binary());
        }
        *per_ns.entry(ns.to_string()).or_default() += 1;
        let stmts =
            translate::translate(ev).map_err(|why| EngineError::Event(describe(ev, &why)))?;
        let mut h = DefaultHasher::new();
        ns.hash(&mut h);
        // A capped collection's natural order is insertion order: all its events share one
        // key, so they go to one worker and `regroup` keeps them in source order. Other
        // collections spread by document, keyed by what the `_id` index compares equal.
        let Some(keying) = dest_keying(ctx, &ns).await? else {
            // Not on the destination: it was renamed or dropped there by a DDL event this
            // lane applied already, or the copy listed the source after it was renamed or
            // dropped (the copy then read these writes under the new name). Writing would
            // create a stub under the old name, which a replayed `rename ... dropTarget`
            // would put in place of the real collection.
            tracing::debug!(%ns, "event skipped: the namespace is not on the destination (renamed or dropped later on the source)");
            continue;
        };
        let key = if keying.capped {
            Vec::new()
        } else {
            ev.get_document("documentKey")
                .map(|k| identity_key(k, keying.collated))
                .unwrap_or_default()
        };
        key.hash(&mut h);
        let b = (h.finish() % workers as u64) as usize;
        buckets[b].extend(stmts.into_iter().map(|s| (ns.clone(), key.clone(), s)));
    }
    // Replaying in source order (workers == 1, the duplicate-key fallback) keeps the order;
    // otherwise documents are independent and each bucket is regrouped into few commands.
    if workers > 1 {
        for b in &mut buckets {
            regroup(b);
        }
    }
    ctx.progress
        .stats
        .add_busy(Stage::Decode, decoding.elapsed());
    ctx.progress.stats.add_namespaces(per_ns);
    let writing = Instant::now();
    // The whole round is idempotent: a transient failure retries it.
    let written = ctx
        .retry
        .run(&ctx.progress, "applying change events", || async {
            let futs = buckets
                .iter()
                .filter(|b| !b.is_empty())
                .map(|b| write_bucket(ctx, b, &uuids));
            try_join_all(futs).await.map(|_| ())
        })
        .await;
    ctx.progress
        .stats
        .add_busy(Stage::DestinationWrite, writing.elapsed());
    written
}

/// How `ns`'s events are keyed on the destination (capped, collated), `None` when the
/// destination has no such namespace (cached until the next DDL event).
async fn dest_keying(ctx: &ApplyCtx, ns: &Namespace) -> Result<Option<Keying>, EngineError> {
    if let Some(c) = ctx.keying.lock().ok().and_then(|m| m.get(ns).copied()) {
        return Ok(c);
    }
    let spec = catalog::spec_of(&ctx.dest, ns)
        .await
        .map_err(on(ctx.direction.writes()))?;
    let keying = spec.map(|s| {
        let options = s.options();
        Keying {
            capped: options.get_bool("capped").unwrap_or(false),
            collated: options
                .get_document("collation")
                .is_ok_and(|c| c.get_str("locale").unwrap_or("simple") != "simple"),
        }
    });
    if let Ok(mut m) = ctx.keying.lock() {
        m.insert(ns.clone(), keying);
    }
    Ok(keying)
}

fn describe(ev: &RawDocument, why: &str) -> String {
    format!("change event {} cannot be applied: {why}", event_label(ev))
}

/// `` `insert` on `shop.orders` at source time 1795646164.4 ``
fn event_label(ev: &RawDocument) -> String {
    let op = ev.get_str("operationType").unwrap_or("?");
    let ns = event_ns(ev)
        .map(|n| n.to_string())
        .unwrap_or_else(|| "?".into());
    let ts = ev
        .get_timestamp("clusterTime")
        .map(|t| format!("{}.{}", t.time, t.increment))
        .unwrap_or_else(|_| "?".into());
    format!("`{op}` on `{ns}` at source time {ts}")
}

#[derive(PartialEq, Eq, PartialOrd, Ord, Clone, Copy)]
enum Kind {
    Insert,
    Update,
    Delete,
}

/// A statement with its namespace and its document's [`identity_key`].
type Keyed = (Namespace, Vec<u8>, Stmt);

fn kind_of(s: &Stmt) -> Kind {
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
fn regroup(stmts: &mut Vec<Keyed>) {
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

/// Writes one worker's statements in order, batching consecutive statements of the same
/// namespace and kind into one ordered command.
type Uuids = HashMap<Namespace, mongodb::bson::Binary>;

async fn write_bucket(ctx: &ApplyCtx, stmts: &[Keyed], uuids: &Uuids) -> Result<(), EngineError> {
    let mut cur: Option<(Namespace, Kind)> = None;
    let mut batch: Vec<RawDocumentBuf> = Vec::new();
    let mut bytes = 0;
    for (ns, _, stmt) in stmts {
        let (kind, doc) = match stmt {
            Stmt::Update(d) => (Kind::Update, d.clone()),
            Stmt::Insert(d) => (Kind::Insert, d.clone()),
            Stmt::Delete(d) => (Kind::Delete, d.clone()),
            Stmt::Refetch { key, uuid } => match refetch(ctx, ns, key, uuid.as_ref()).await? {
                Some(s) => (Kind::Update, s),
                // Gone from the source: the delete event that follows removes it.
                None => continue,
            },
        };
        let same = cur.as_ref().is_some_and(|(n, k)| n == ns && *k == kind);
        if !same || batch.len() >= COMMAND_STMTS || bytes + doc.as_bytes().len() > COMMAND_BYTES {
            if let Some((n, k)) = cur.take() {
                send(ctx, &n, k, std::mem::take(&mut batch), uuids.get(&n)).await?;
                bytes = 0;
            }
        }
        bytes += doc.as_bytes().len();
        batch.push(doc);
        cur = Some((ns.clone(), kind));
    }
    if let Some((n, k)) = cur {
        send(ctx, &n, k, batch, uuids.get(&n)).await?;
    }
    Ok(())
}

/// The source's current version of a document, for a statement the event cannot express.
/// Read from the collection with the event's UUID, under its current name: after a rename
/// the old name has nothing (or another collection), and the document would be skipped.
/// `None` when the document or its collection is gone (the delete, drop or cross-database
/// rename events that follow take care of it).
async fn refetch(
    ctx: &ApplyCtx,
    ns: &Namespace,
    key: &RawDocumentBuf,
    uuid: Option<&mongodb::bson::Binary>,
) -> Result<Option<RawDocumentBuf>, EngineError> {
    let filter: Document = key
        .to_document()
        .map_err(|e| EngineError::Event(e.to_string()))?;
    let mut found = None;
    for attempt in 0.. {
        let name = match uuid {
            Some(u) => match catalog::name_of_uuid(&ctx.source, &ns.db, u)
                .await
                .map_err(on(ctx.direction.reads()))?
            {
                Some(n) => Namespace::new(ns.db.clone(), n),
                None => return Ok(None),
            },
            None => ns.clone(),
        };
        found = ctx
            .source
            .database(&name.db)
            .collection::<RawDocumentBuf>(&name.coll)
            .find_one(filter.clone())
            .await
            .map_err(|e| cluster_err(ctx.direction.reads(), format!("reading `{name}`"), &e))?;
        // Still the same collection under that name after the read: the read was of it.
        match uuid {
            Some(u)
                if catalog::uuid_of(&ctx.source, &name)
                    .await
                    .map_err(on(ctx.direction.reads()))?
                    .as_ref()
                    != Some(u) =>
            {
                if attempt >= 100 {
                    return Err(EngineError::Event(format!(
                        "`{ns}`: its collection kept being renamed while cutover re-read a document"
                    )));
                }
            }
            _ => break,
        }
    }
    match found {
        Some(full) => match translate::upsert(key, &full) {
            Ok(Stmt::Update(d)) => Ok(Some(d)),
            Ok(_) => Ok(None),
            Err(why) => Err(EngineError::Event(format!("`{ns}`: {why}"))),
        },
        None => Ok(None),
    }
}

/// Write errors of an update statement applied to a document whose field has another shape
/// than the statement expects: PathNotViable (`$set a.b` on `{a: 5}`), BadValue (`$push` on a
/// field that is no longer an array), TypeMismatch.
const SHAPE_ERRORS: [i32; 3] = [PATH_NOT_VIABLE, BAD_VALUE, TYPE_MISMATCH];

/// Sends each statement in its own command (see the TransactionTooLargeForCache case in
/// [`send`]).
async fn one_by_one(
    ctx: &ApplyCtx,
    ns: &Namespace,
    kind: Kind,
    stmts: &[RawDocumentBuf],
    uuid: Option<&mongodb::bson::Binary>,
) -> Result<(), EngineError> {
    tracing::debug!(%ns, statements = stmts.len(), "Write too large for the destination's cache as one command: sending its statements one by one.");
    for st in stmts {
        Box::pin(send(ctx, ns, kind, vec![st.clone()], uuid)).await?;
    }
    Ok(())
}

/// The `_id` of a statement whose filter is exactly `{_id: value}`, when that value can stand
/// in an `$in` list with the same meaning (a regular expression there matches by pattern).
fn single_id(stmt: &RawDocument) -> Option<RawBsonRef<'_>> {
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
fn plain_update(stmt: &RawDocument) -> Option<RawBsonRef<'_>> {
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
fn top_level_set(stmt: &RawDocument) -> Option<&RawDocument> {
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
fn lookup_id(id: RawBsonRef<'_>) -> bool {
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
fn merge_statements(kind: Kind, stmts: &[RawDocumentBuf]) -> Option<Vec<RawDocumentBuf>> {
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

/// Runs one write command of `kind` with these statements on `ns` (majority write concern,
/// the lease's deadline as `maxTimeMS`). The outer error is the state store's; the inner is
/// the destination's answer.
async fn write_command(
    ctx: &ApplyCtx,
    ns: &Namespace,
    kind: Kind,
    arr: RawArrayBuf,
    ordered: bool,
) -> Result<Result<Document, mongodb::error::Error>, EngineError> {
    let mut cmd = RawDocumentBuf::new();
    let (name, list) = match kind {
        Kind::Insert => ("insert", "documents"),
        Kind::Update => ("update", "updates"),
        Kind::Delete => ("delete", "deletes"),
    };
    cmd.append(name, ns.coll.as_str());
    cmd.append(list, arr);
    cmd.append("ordered", ordered);
    if kind != Kind::Delete {
        cmd.append("bypassDocumentValidation", true);
    }
    let mut wc = RawDocumentBuf::new();
    wc.append("w", "majority");
    cmd.append("writeConcern", wc);
    // A write that started just before this runner's lease ran out must not land after
    // another runner took the plan over: the server stops it at the lease's deadline.
    if let Some(budget) = ctx.store.write_budget().await? {
        cmd.append("maxTimeMS", (budget.as_millis() as i64).max(1));
    }
    Ok(ctx.dest.database(&ns.db).run_raw_command(cmd).await)
}

/// A reply's `writeConcernError` (the writes happened but are not yet majority-durable): a
/// transient error, so the round is sent again.
fn write_concern_error(
    ctx: &ApplyCtx,
    ns: &Namespace,
    reply: &Document,
) -> Result<(), EngineError> {
    match reply.get_document("writeConcernError") {
        Ok(wce) => Err(EngineError::Cluster {
            cluster: ctx.direction.writes(),
            doing: format!("writing `{ns}`"),
            detail: wce.get_str("errmsg").unwrap_or_default().to_string(),
            transient: true,
        }),
        Err(_) => Ok(()),
    }
}

/// Sends `stmts` merged (see [`merge_statements`]). `Ok(true)`: all written. `Ok(false)`: a
/// write error (or a cache refusal): the caller sends the statements one per document, where
/// each error is handled as that document's.
async fn send_merged(
    ctx: &ApplyCtx,
    ns: &Namespace,
    kind: Kind,
    merged: Vec<RawDocumentBuf>,
) -> Result<bool, EngineError> {
    use crate::cluster::server_error::code::{
        MAX_TIME_MS_EXPIRED, TRANSACTION_TOO_LARGE_FOR_CACHE,
    };
    let mut arr = RawArrayBuf::new();
    for m in merged {
        arr.push(m);
    }
    let reply = match write_command(ctx, ns, kind, arr, true).await? {
        Ok(r) => r,
        Err(e) => {
            return match e.kind.as_ref() {
                ErrorKind::Command(c) if c.code == TRANSACTION_TOO_LARGE_FOR_CACHE => Ok(false),
                ErrorKind::Command(c) if c.code == MAX_TIME_MS_EXPIRED => Err(write_error(
                    ctx.direction.writes(),
                    ns,
                    "?",
                    c.code,
                    &c.message,
                )),
                _ => Err(cluster_err(
                    ctx.direction.writes(),
                    format!("writing `{ns}`"),
                    &e,
                )),
            };
        }
    };
    write_concern_error(ctx, ns, &reply)?;
    Ok(reply.get_array("writeErrors").is_err())
}

/// Sends one command of `kind` with `stmts` to `ns` on the destination. `uuid` is the source
/// collection's UUID (from the events), for re-reading a document.
async fn send(
    ctx: &ApplyCtx,
    ns: &Namespace,
    kind: Kind,
    stmts: Vec<RawDocumentBuf>,
    uuid: Option<&mongodb::bson::Binary>,
) -> Result<(), EngineError> {
    if stmts.is_empty() {
        return Ok(());
    }
    // Time-series buckets are written as stored, one statement each.
    if stmts.len() > 1 && !ns.coll.starts_with("system.buckets.") {
        if let Some(merged) = merge_statements(kind, &stmts) {
            if send_merged(ctx, ns, kind, merged).await? {
                return Ok(());
            }
        }
    }
    let mut arr = RawArrayBuf::new();
    for s in &stmts {
        match kind {
            // `{q, u}` → the document itself.
            Kind::Insert => {
                let doc = s
                    .get_document("u")
                    .map_err(|e| EngineError::Event(format!("internal: insert statement: {e}")))?;
                arr.push(doc.to_raw_document_buf());
            }
            _ => arr.push(s.clone()),
        }
    }
    use crate::cluster::server_error::code::{
        MAX_TIME_MS_EXPIRED, TRANSACTION_TOO_LARGE_FOR_CACHE,
    };
    // Inserts are of distinct documents: unordered, so duplicates do not stop the rest.
    let reply = match write_command(ctx, ns, kind, arr, kind != Kind::Insert).await? {
        Ok(r) => r,
        Err(e) => {
            return Err(match e.kind.as_ref() {
                ErrorKind::Command(c)
                    if c.code == TRANSACTION_TOO_LARGE_FOR_CACHE && stmts.len() > 1 =>
                {
                    return one_by_one(ctx, ns, kind, &stmts, uuid).await;
                }
                ErrorKind::Command(c) if c.code == MAX_TIME_MS_EXPIRED => {
                    write_error(ctx.direction.writes(), ns, "?", c.code, &c.message)
                }
                _ => cluster_err(ctx.direction.writes(), format!("writing `{ns}`"), &e),
            })
        }
    };
    let mut replay = Vec::new();
    let mut reshaped = None;
    if let Ok(errs) = reply.get_array("writeErrors") {
        for e in errs.iter().filter_map(Bson::as_document) {
            let idx = e.get_i32("index").unwrap_or(0) as usize;
            let code = e.get_i32("code").unwrap_or(0);
            // mongod writes a command's inserts in shared storage transactions: several
            // large documents together can exceed what its cache admits although each fits
            // alone (TransactionTooLargeForCache). Send the statements one per command (an
            // ordered command stopped at `idx`; unordered inserts are all sent again, and
            // the ones already written come back as duplicates, written as upserts).
            if code == TRANSACTION_TOO_LARGE_FOR_CACHE && stmts.len() > 1 {
                let from = if kind == Kind::Insert {
                    0
                } else {
                    idx.min(stmts.len())
                };
                return one_by_one(ctx, ns, kind, &stmts[from..], uuid).await;
            }
            // An update replayed on a document already at a later state (a restart before the
            // checkpoint, a retried round) where a field has changed shape since (`$set a.b`,
            // then `$set a: 5`): the statement cannot apply to that state. Updates are sent
            // ordered, so this is the only error and nothing after it ran.
            if kind == Kind::Update && SHAPE_ERRORS.contains(&code) && idx < stmts.len() {
                reshaped = Some((idx, code));
                break;
            }
            // The document is already there (copied, or this event replayed after a crash):
            // write it as the event has it, with an upsert.
            if kind == Kind::Insert && code == DUPLICATE_KEY {
                if let Some(st) = stmts.get(idx) {
                    replay.push((idx, st));
                    continue;
                }
            }
            let id = stmts
                .get(idx)
                .and_then(|s| s.get_document("q").ok())
                .and_then(|q| q.get("_id").ok().flatten())
                .and_then(|v| Bson::try_from(v).ok())
                .map(|b| b.to_string())
                .unwrap_or_else(|| "?".into());
            // A transient code: the round is retried from the last checkpoint, as after any
            // transient error (statements before it are replayed over themselves).
            return Err(write_error(
                ctx.direction.writes(),
                ns,
                id,
                code,
                e.get_str("errmsg").unwrap_or_default(),
            ));
        }
    }
    write_concern_error(ctx, ns, &reply)?;
    if let Some((idx, code)) = reshaped {
        // Install the source's current version of the document instead (as for an update the
        // events cannot express, `Stmt::Refetch`: exact once the following events are
        // applied), then send the statements after it.
        let key = stmts[idx]
            .get_document("q")
            .map_err(|e| EngineError::Event(format!("internal: update statement: {e}")))?
            .to_raw_document_buf();
        tracing::debug!(%ns, code, "Update does not apply to the destination's document (replayed over a later state): re-reading it from the source.");
        let mut rest = Vec::with_capacity(stmts.len() - idx);
        // `None`: gone from the source; the delete event that follows removes it.
        if let Some(st) = refetch(ctx, ns, &key, uuid).await? {
            rest.push(st);
        }
        rest.extend(stmts[idx + 1..].iter().cloned());
        return Box::pin(send(ctx, ns, kind, rest, uuid)).await;
    }
    if !replay.is_empty() {
        replay.sort_by_key(|(i, _)| *i);
        let mut upserts = Vec::with_capacity(replay.len());
        for (_, st) in replay {
            let (Ok(q), Ok(u)) = (st.get_document("q"), st.get_document("u")) else {
                return Err(EngineError::Event(
                    "internal: insert statement without q/u".into(),
                ));
            };
            match translate::upsert(q, u) {
                Ok(Stmt::Update(d)) => upserts.push(d),
                Ok(_) => {}
                Err(why) => return Err(EngineError::Event(format!("`{ns}`: {why}"))),
            }
        }
        Box::pin(send(ctx, ns, Kind::Update, upserts, uuid)).await?;
    }
    Ok(())
}

pub(crate) async fn apply_ddl(ctx: &ApplyCtx, ev: &RawDocument) -> Result<(), EngineError> {
    ctx.store.fence_ready().await?;
    if let Ok(mut m) = ctx.keying.lock() {
        m.clear();
    }
    // `showSystemEvents` also shows writes to e.g. `system.views`; only buckets matter.
    if let Some(ns) = event_ns(ev) {
        if ns.coll.starts_with("system.") && !ns.coll.starts_with("system.buckets.") {
            return Ok(());
        }
    }
    // Each DDL event's application is idempotent: a transient failure retries the event.
    let outcome = ctx
        .retry
        .run(&ctx.progress, "applying a DDL event", || async {
            catalog::apply_ddl(&ctx.source, &ctx.dest, ev, &ctx.selector, &ctx.relax)
                .await
                .map_err(|e| {
                    if !e.is_transient() {
                        return EngineError::Event(describe(ev, &e.to_string()));
                    }
                    // A replay writes the destination; only its one source read says so.
                    match e {
                        CatalogError::OnSource(e) => on(ctx.direction.reads())(*e),
                        e => on(ctx.direction.writes())(e),
                    }
                })
        })
        .await?;
    match outcome {
        DdlOutcome::Applied => tracing::info!(event = %event_label(ev), "DDL applied."),
        DdlOutcome::Ignored => {
            tracing::debug!(event = %event_label(ev), "DDL ignored: not selected.")
        }
        DdlOutcome::NeedsCopy(ns) => {
            tracing::info!(%ns, "A collection moved into the plan's filter: copying it.");
            if let Some(spec) = renamed_spec(ctx, ev, &ns).await? {
                let what = format!("creating `{}`", spec.ns);
                ctx.retry
                    .run(&ctx.progress, &what, || async {
                        catalog::create_on_destination(&ctx.dest, &spec, &ctx.relax)
                            .await
                            .map_err(on(ctx.direction.writes()))
                    })
                    .await?;
                if let Some(target) = catalog::copy_target(&spec) {
                    copy::forget(&ctx.copy, &target).await?;
                }
                copy::copy_all(&ctx.copy, std::slice::from_ref(&spec)).await?;
                let what = format!("building the indexes of `{}`", spec.ns);
                ctx.retry
                    .run(&ctx.progress, &what, || async {
                        catalog::build_indexes(&ctx.dest, &spec, &ctx.relax)
                            .await
                            .map_err(on(ctx.direction.writes()))
                    })
                    .await?;
            }
        }
    }
    Ok(())
}

/// The source collection a `rename` event moved to `ns`, as a spec named `ns`: found by the
/// event's `collectionUUID` under whatever name it has now (it may have been renamed again,
/// and another collection may have taken the name since), so the copy reads that collection
/// and the later events (the next rename, the other collection's create) apply in order.
/// `None` when it no longer exists (its drop event follows).
async fn renamed_spec(
    ctx: &ApplyCtx,
    ev: &RawDocument,
    ns: &Namespace,
) -> Result<Option<catalog::NsSpec>, EngineError> {
    let uuid = match ev.get("collectionUUID").ok().flatten() {
        Some(mongodb::bson::RawBsonRef::Binary(b)) => b.to_binary(),
        _ => {
            return catalog::spec_of(&ctx.source, ns)
                .await
                .map_err(on(ctx.direction.reads()))
        }
    };
    for _ in 0..100 {
        let Some(name) = catalog::name_of_uuid(&ctx.source, &ns.db, &uuid)
            .await
            .map_err(on(ctx.direction.reads()))?
        else {
            return Ok(None);
        };
        let current = Namespace::new(ns.db.clone(), name);
        match catalog::spec_of(&ctx.source, &current)
            .await
            .map_err(on(ctx.direction.reads()))?
        {
            Some(mut spec) if catalog::entry_uuid(&spec.info).as_ref() == Some(&uuid) => {
                spec.ns = ns.clone();
                return Ok(Some(spec));
            }
            // Renamed again between the two reads: look again.
            _ => continue,
        }
    }
    Err(EngineError::Event(format!(
        "`{ns}`: its collection kept being renamed while cutover looked it up"
    )))
}

#[cfg(test)]
mod tests {
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
