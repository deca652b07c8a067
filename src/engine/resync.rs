//! Re-copying one collection from scratch while the rest keeps replicating
//! (`cutover resync PLAN --ns db.coll`): the lane's side.
//!
//! Like `verify --repair`, the command only stores *requests* (`resyncs`: a namespace, who,
//! when) and the live lane serves them, in [`serve`], between two change-stream batches,
//! where every event up to the lane's position `P` is applied and durable and no later one is:
//!
//! 1. **hold** — from `P` on, the lane keeps the namespace's CRUD events in memory instead of
//!    applying them ([`hold`]); every other namespace goes on replicating;
//! 2. **copy** — a background task creates a fresh collection in the same database
//!    (`<coll>.cutover_resync_<id>`) with the source's options and the plan's relaxations
//!    (recorded under that name), copies the source collection into it with the copy code of
//!    the initial sync (majority reads, which start after `P`, so the copy is *at or after*
//!    `P`), and builds its indexes;
//! 3. **swap** — at the first batch boundary after the copy finished (position `Q`), the lane
//!    moves the relaxation records to the real name and runs `renameCollection ... dropTarget`
//!    (same database: a catalog change, indexes and options move with it);
//! 4. **replay** — the held events (`P`, `Q`] are applied to the new collection, in order,
//!    then the hold ends and later events apply as usual. A document changed after `P` and
//!    read by the copy in a later state is brought to the source's state by the replay, which
//!    is idempotent: exactly the initial copy's "copy at or after the start point, then apply
//!    the events since" argument. Nothing is lost (every event after `P` is held or applied
//!    after the swap) and nothing is doubled (a replayed event is the same whole-document
//!    write or delete).
//!
//! Failures: a DDL event on the namespace during the copy (drop, rename, collMod, index
//! changes), more than [`MAX_HELD_BYTES`] of held events, or a copy error cancel the resync:
//! the temporary collection is dropped, the held events are applied to the original collection
//! (so it is exactly as replicated as before), and the request is marked `failed` with the
//! reason. A runner killed mid-resync loses the held events from its memory, but not from the
//! source: while a resync holds events the lane stores no resume token past `P`
//! ([`durable_token`]), so the next runner reads them again. A resync found `copying` or
//! `swapping` by a new runner is done again from scratch (its stale ranges removed); while a resync is unfinished (or a
//! new lane has not yet looked for one), the lane does not report can-commit, and a commit
//! drain finishes a running resync before it returns.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mongodb::bson::Timestamp;
use mongodb::bson::{doc, oid::ObjectId, Bson, DateTime, Document, RawDocument, RawDocumentBuf};
use tokio::task::JoinHandle;

use crate::base::namespace::Namespace;
use crate::engine::apply::ctx::ApplyCtx;
use crate::engine::apply::round as write;
use crate::engine::catalog::{self, NsKind};
use crate::engine::control::Control;
use crate::engine::copy::{self, CopyCtx};
use crate::engine::error::{cluster_err, on, EngineError};
use crate::engine::progress::Progress;
use crate::state::states::ResyncState;
use crate::state::{StateError, PARTITIONS};

/// One record per requested resync (who, when, what, progress).
pub const RESYNCS: &str = "resyncs";
/// Held events beyond this size cancel the resync (they are kept in the runner's memory).
pub const MAX_HELD_BYTES: usize = 512 * 1024 * 1024;
/// How often the lane looks for new requests.
const LOOK_EVERY: Duration = Duration::from_millis(300);
/// How often the lane records a running resync's progress.
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// Held events replayed per round.
const REPLAY_ROUND: usize = 1_000;

struct Active {
    request: Bson,
    /// The request record's state as this lane last wrote it.
    state: ResyncState,
    ns: Namespace,
    temp: Namespace,
    position: Timestamp,
    /// The lane's resume token at `position`: the lane stores no later one while the resync
    /// holds events in memory (see [`durable_token`]).
    hold_token: Option<Document>,
    /// The copy's lane id: its ranges in `partitions` are `<copy_lane>/…`.
    copy_lane: String,
    held: Vec<RawDocumentBuf>,
    held_bytes: usize,
    /// Why the resync must be cancelled (set where no I/O can be done).
    cancel: Option<String>,
    task: Option<JoinHandle<Result<(), EngineError>>>,
    progress: Arc<Progress>,
    last_report: Instant,
}

#[derive(Default)]
struct Lanes {
    active: HashMap<String, Active>,
    /// Lanes that have looked for unfinished resyncs since this process started them.
    checked: HashSet<String>,
    last_look: HashMap<String, Instant>,
    /// Each lane's last stored resume token.
    last_token: HashMap<String, Document>,
}

static STATE: Mutex<Option<Lanes>> = Mutex::new(None);
/// Resyncs active in this process (a lock-free fast path for [`hold`]).
static ACTIVE: AtomicUsize = AtomicUsize::new(0);

fn with<T>(f: impl FnOnce(&mut Lanes) -> T) -> T {
    let mut g = STATE.lock().unwrap_or_else(|p| p.into_inner());
    f(g.get_or_insert_with(Lanes::default))
}

/// The resume token the lane may store once everything up to `token` is applied: while a
/// resync of the lane holds events in memory, the token of the hold's start (a runner killed
/// mid-resync then reads the held events again; if it stored `token`, a redo cancelled by a
/// DDL event would apply only the events after the kill to the original collection, and the
/// held ones would be lost), else `token` itself.
pub fn durable_token(lane: &str, token: &Document) -> Document {
    with(|l| {
        if let Some(t) = l.active.get(lane).and_then(|a| a.hold_token.clone()) {
            return t;
        }
        l.last_token.insert(lane.to_string(), token.clone());
        token.clone()
    })
}

/// False while a resync of this lane is unfinished, or before the lane has looked for one
/// left by an earlier runner: the lane must not report can-commit then.
pub fn allows_commit(lane: &str) -> bool {
    with(|l| l.checked.contains(lane) && !l.active.contains_key(lane))
}

fn event_ns(ev: &RawDocument) -> Option<Namespace> {
    ev.get_document("ns")
        .ok()
        .and_then(Namespace::from_event_ns)
}

/// The lane's hook for each CRUD event: `true` when the event belongs to a namespace being
/// resynced and was held (the caller must not apply it).
pub fn hold(lane: &str, ev: &RawDocument) -> bool {
    if ACTIVE.load(Ordering::Relaxed) == 0 {
        return false;
    }
    let Some(ns) = event_ns(ev) else {
        return false;
    };
    with(|l| match l.active.get_mut(lane) {
        Some(a) if a.ns == ns => {
            a.held_bytes += ev.as_bytes().len();
            a.held.push(ev.to_raw_document_buf());
            if a.held_bytes > MAX_HELD_BYTES && a.cancel.is_none() {
                a.cancel = Some(format!(
                    "more than {} MiB of change events arrived for the collection during its copy (they are held in \
                     memory); run the resync again when the collection is quieter",
                    MAX_HELD_BYTES >> 20
                ));
            }
            true
        }
        _ => false,
    })
}

/// The lane's hook before a DDL event: a DDL event on the namespace being resynced cancels
/// the resync (the held events are applied to the original collection first, so the DDL
/// event then applies in order).
pub async fn before_ddl(ctx: &ApplyCtx, ev: &RawDocument) -> Result<(), EngineError> {
    if ACTIVE.load(Ordering::Relaxed) == 0 {
        return Ok(());
    }
    let Some(held_ns) = with(|l| l.active.get(&ctx.lane).map(|a| a.ns.clone())) else {
        return Ok(());
    };
    let touches = |d: Option<&RawDocument>| {
        d.is_some_and(|d| {
            d.get_str("db").ok() == Some(held_ns.db.as_str())
                && match d.get_str("coll") {
                    Ok(c) => c == held_ns.coll,
                    Err(_) => true, // dropDatabase
                }
        })
    };
    if touches(ev.get_document("ns").ok()) || touches(ev.get_document("to").ok()) {
        let what = ev.get_str("operationType").unwrap_or("DDL");
        if let Some(a) = take(&ctx.lane) {
            let why = format!(
                "a `{what}` change on `{held_ns}` arrived during its resync; the resync was cancelled (run it again)"
            );
            cancel(ctx, a, &why).await?;
        }
    }
    Ok(())
}

/// The lane's hook between two batches (every event up to `position` applied, none after
/// it): starts a requested resync, records progress, swaps a finished copy in.
pub async fn serve(
    ctx: &ApplyCtx,
    position: Timestamp,
    control: Control,
) -> Result<(), EngineError> {
    let draining = matches!(control, Control::DrainTo(_));
    let running = with(|l| l.active.contains_key(&ctx.lane));
    if running {
        return advance(ctx, position, draining).await;
    }
    let due = with(|l| match l.last_look.get(&ctx.lane) {
        Some(t) if t.elapsed() < LOOK_EVERY => false,
        _ => {
            l.last_look.insert(ctx.lane.clone(), Instant::now());
            true
        }
    });
    if !due {
        return Ok(());
    }
    // One attempt: a poll that fails is repeated at the next round.
    let next = ctx
        .store
        .clone()
        .with_retry(std::time::Duration::ZERO)
        .find_one(
            RESYNCS,
            doc! {"plan": ctx.store.plan(), "lane": &ctx.lane,
            "state": {"$in": ResyncState::UNFINISHED.map(Bson::from).to_vec()}},
            Some(doc! {"requested": 1, "_id": 1}),
        )
        .await;
    let next = match next {
        Ok(n) => n,
        Err(e) => {
            tracing::debug!(error = %e, "Could not read resync requests.");
            return Ok(());
        }
    };
    let Some(req) = next else {
        with(|l| l.checked.insert(ctx.lane.clone()));
        return Ok(());
    };
    let state = ResyncState::of(&req).map_err(StateError::from)?;
    if draining && state == ResyncState::Pending {
        // The commit has begun: the destination is about to become the writable side.
        record(
            ctx,
            &req,
            state,
            ResyncState::Failed,
            doc! {"error": "refused: the commit began before the resync started", "finished": DateTime::now()},
        )
        .await?;
        return Ok(());
    }
    start(ctx, &req, state, position).await?;
    with(|l| l.checked.insert(ctx.lane.clone()));
    if draining {
        // A resync left unfinished by an earlier runner: finish it before the commit.
        return advance(ctx, position, true).await;
    }
    Ok(())
}

/// A transition of the request `req` (read in state `from`): see [`transition`].
async fn record(
    ctx: &ApplyCtx,
    req: &Document,
    from: ResyncState,
    to: ResyncState,
    set: Document,
) -> Result<(), EngineError> {
    let id = req.get("_id").cloned().unwrap_or(Bson::Null);
    transition(ctx, &id, from, to, set).await
}

/// The one way a resync record changes state: `from -> to` (a transition of
/// [`ResyncState::can_become`]) with `set`'s fields, written only while the record is still
/// `from`.
async fn transition(
    ctx: &ApplyCtx,
    id: &Bson,
    from: ResyncState,
    to: ResyncState,
    mut set: Document,
) -> Result<(), EngineError> {
    debug_assert!(from.can_become(to), "resync {from} -> {to}");
    set.insert("state", to);
    ctx.store
        .update_one(RESYNCS, doc! {"_id": id, "state": from}, doc! {"$set": set})
        .await?;
    Ok(())
}

/// Fields of a request that are not its state (progress figures).
async fn update(ctx: &ApplyCtx, id: &Bson, set: Document) -> Result<(), EngineError> {
    ctx.store
        .update_one(RESYNCS, doc! {"_id": id}, doc! {"$set": set})
        .await?;
    Ok(())
}

/// Starts the request at `position`: the hold begins now, the copy in the background.
async fn start(
    ctx: &ApplyCtx,
    req: &Document,
    from: ResyncState,
    position: Timestamp,
) -> Result<(), EngineError> {
    let id = req.get("_id").cloned().unwrap_or(Bson::Null);
    let fail = |why: String| {
        record(
            ctx,
            req,
            from,
            ResyncState::Failed,
            doc! {"error": why, "finished": DateTime::now()},
        )
    };
    let Some(ns) = req.get_str("ns").ok().and_then(Namespace::parse) else {
        return fail("malformed request: no namespace".into()).await;
    };
    if !ctx.selector.selects(&ns.db, &ns.coll) {
        return fail(format!("`{ns}` is not in the plan's filter")).await;
    }
    // An earlier attempt's temporary collection and copy ranges (a runner stopped
    // mid-resync; one resync runs per lane at a time, so every resync range is stale).
    if let Some(old) = req.get_str("temp").ok().and_then(Namespace::parse) {
        drop_temp(ctx, &old).await?;
    }
    let stale = format!("^{}", regex::escape(&format!("{}/resync/", ctx.lane)));
    ctx.store
        .delete_many(PARTITIONS, doc! {"_id": {"$regex": stale}})
        .await?;
    let spec = match catalog::spec_of(&ctx.source, &ns)
        .await
        .map_err(on(ctx.direction.reads()))?
    {
        Some(s) => s,
        None => return fail(format!("`{ns}` does not exist on the source")).await,
    };
    if spec.kind != NsKind::Collection {
        return fail(format!(
            "`{ns}` is a {}: only collections can be resynced",
            spec.kind.as_str()
        ))
        .await;
    }
    let short = ObjectId::new().to_hex();
    let temp = Namespace::new(
        ns.db.clone(),
        format!("{}.cutover_resync_{}", ns.coll, &short[16..]),
    );
    let estimated = ctx
        .source
        .database(&ns.db)
        .collection::<Document>(&ns.coll)
        .estimated_document_count()
        .await
        .unwrap_or(0);
    let attempt = req.get_i32("attempt").unwrap_or(0) + 1;
    record(
        ctx,
        req,
        from,
        ResyncState::Copying,
        doc! {
            "attempt": attempt, "position": position, "temp": temp.to_string(),
            "started": DateTime::now(), "estimated_documents": estimated as i64,
            "copied_documents": 0i64, "held_events": 0i64, "replayed_events": 0i64,
        },
    )
    .await?;
    tracing::info!(%ns, %temp, position = %format!("{}.{}", position.time, position.increment),
        "Resync started: holding the collection's events and copying it again.");
    let progress = Arc::new(Progress::new());
    let copy_lane = format!("{}/resync/{short}", ctx.lane);
    let copy_ctx = CopyCtx {
        lane: copy_lane.clone(),
        progress: progress.clone(),
        ..ctx.copy.clone()
    };
    let mut temp_spec = spec;
    temp_spec.ns = temp.clone();
    let (dest, relax) = (ctx.dest.clone(), ctx.relax.clone());
    let dest_name = ctx.direction.writes();
    let task = tokio::spawn(async move {
        catalog::create_on_destination(&dest, &temp_spec, &relax)
            .await
            .map_err(on(dest_name))?;
        copy::copy_all(
            &copy_ctx,
            std::slice::from_ref(&temp_spec),
            &copy::Counts::new(),
            &Default::default(),
        )
        .await?;
        catalog::build_indexes(&dest, &temp_spec, &relax)
            .await
            .map_err(on(dest_name))?;
        let prefix = format!("^{}", regex::escape(&format!("{}/", copy_ctx.lane)));
        copy_ctx
            .store
            .delete_many(PARTITIONS, doc! {"_id": {"$regex": prefix}})
            .await?;
        Ok(())
    });
    with(|l| {
        let hold_token = l.last_token.get(&ctx.lane).cloned();
        l.active.insert(
            ctx.lane.clone(),
            Active {
                request: id,
                state: ResyncState::Copying,
                ns,
                temp,
                position,
                hold_token,
                copy_lane,
                held: Vec::new(),
                held_bytes: 0,
                cancel: None,
                task: Some(task),
                progress,
                last_report: Instant::now(),
            },
        )
    });
    ACTIVE.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// A running resync at a batch boundary: progress, cancellation, or the swap once the copy
/// is done (waiting for the copy when the commit drains).
async fn advance(ctx: &ApplyCtx, position: Timestamp, draining: bool) -> Result<(), EngineError> {
    let (finished, cancelled, report) = with(|l| match l.active.get_mut(&ctx.lane) {
        Some(a) => {
            let finished = a.task.as_ref().is_none_or(|t| t.is_finished());
            let report = a.last_report.elapsed() >= REPORT_EVERY;
            if report {
                a.last_report = Instant::now();
            }
            let progress = doc! {
                "copied_documents": a.progress.copied_docs.load(Ordering::Relaxed) as i64,
                "held_events": a.held.len() as i64,
            };
            (
                finished,
                a.cancel.clone(),
                report.then(|| (a.request.clone(), progress)),
            )
        }
        None => (false, None, None),
    });
    if let Some(why) = cancelled {
        if let Some(a) = take(&ctx.lane) {
            return cancel(ctx, a, &why).await;
        }
        return Ok(());
    }
    if let Some((id, progress)) = report {
        update(ctx, &id, progress).await?;
    }
    if !finished && !draining {
        return Ok(());
    }
    let Some(mut a) = take(&ctx.lane) else {
        return Ok(());
    };
    let result = match a.task.take() {
        Some(t) => t
            .await
            .unwrap_or_else(|j| Err(EngineError::Task(format!("resync copy task failed: {j}")))),
        None => Ok(()),
    };
    if let Err(e) = result {
        let why = format!("copying `{}` failed: {e}", a.ns);
        return cancel(ctx, a, &why).await;
    }
    swap(ctx, a, position).await
}

fn take(lane: &str) -> Option<Active> {
    let a = with(|l| l.active.remove(lane));
    if a.is_some() {
        ACTIVE.fetch_sub(1, Ordering::Relaxed);
    }
    a
}

/// The copy is complete: move it in place of the original, then replay the held events.
async fn swap(ctx: &ApplyCtx, a: Active, position: Timestamp) -> Result<(), EngineError> {
    ctx.store.fence_ready().await?;
    let held = a.held.len() as i64;
    transition(
        ctx,
        &a.request,
        a.state,
        ResyncState::Swapping,
        doc! {"swap_position": position, "held_events": held,
        "copied_documents": a.progress.copied_docs.load(Ordering::Relaxed) as i64},
    )
    .await?;
    // The relaxation records first (recorded before the destination changes, as always).
    ctx.relax.forget_namespace(&a.ns).await?;
    ctx.relax.rename_namespace(&a.temp, &a.ns).await?;
    let cmd = doc! {
        "renameCollection": a.temp.to_string(), "to": a.ns.to_string(), "dropTarget": true,
    };
    crate::state::lease::run_majority(&ctx.dest.database("admin"), cmd)
        .await
        .map_err(|e| {
            cluster_err(
                ctx.direction.writes(),
                format!("renaming `{}` to `{}`", a.temp, a.ns),
                &e,
            )
        })?;
    if let Ok(mut m) = ctx.keying.lock() {
        m.clear();
    }
    crate::base::crashpoint::hit("resync.swapped", None);
    let replayed = replay(ctx, &a.ns, a.held).await?;
    transition(
        ctx,
        &a.request,
        ResyncState::Swapping,
        ResyncState::Done,
        doc! {"replayed_events": replayed as i64, "finished": DateTime::now()},
    )
    .await?;
    tracing::info!(ns = %a.ns, copied = a.progress.copied_docs.load(Ordering::Relaxed), held, replayed,
        "Resync done: the new copy is in place and the held events are replayed.");
    Ok(())
}

/// Applies held events in order (idempotent statements), retrying transient failures.
async fn replay(
    ctx: &ApplyCtx,
    ns: &Namespace,
    held: Vec<RawDocumentBuf>,
) -> Result<u64, EngineError> {
    let mut n = 0u64;
    for chunk in held.chunks(REPLAY_ROUND) {
        ctx.retry
            .run(
                &ctx.progress,
                &format!("replaying the held events of `{ns}`"),
                || write::apply_round(ctx, chunk.to_vec()),
            )
            .await?;
        n += chunk.len() as u64;
    }
    Ok(n)
}

async fn drop_temp(ctx: &ApplyCtx, temp: &Namespace) -> Result<(), EngineError> {
    ctx.store.fence_ready().await?;
    let r =
        crate::state::lease::run_majority(&ctx.dest.database(&temp.db), doc! {"drop": &temp.coll})
            .await;
    match r {
        Ok(_) => {}
        Err(e) if matches!(e.kind.as_ref(), mongodb::error::ErrorKind::Command(c) if c.code == crate::cluster::server_error::code::NAMESPACE_NOT_FOUND) =>
            {}
        Err(e) => {
            return Err(cluster_err(
                ctx.direction.writes(),
                format!("dropping the resync's temporary collection `{temp}`"),
                &e,
            ))
        }
    }
    ctx.relax.forget_namespace(temp).await?;
    Ok(())
}

/// Cancels a resync: applies the held events to the original collection (which is then
/// exactly as replicated as before), records why, and drops the temporary copy once its copy
/// task has stopped (in the background: a copy task still writing would re-create it).
async fn cancel(ctx: &ApplyCtx, mut a: Active, why: &str) -> Result<(), EngineError> {
    tracing::warn!(ns = %a.ns, temp = %a.temp, reason = why,
        started_at = %format!("{}.{}", a.position.time, a.position.increment), "Resync cancelled.");
    let task = a.task.take();
    let held = a.held.len() as i64;
    let replayed = replay(ctx, &a.ns, std::mem::take(&mut a.held)).await?;
    transition(
        ctx,
        &a.request,
        a.state,
        ResyncState::Failed,
        doc! {"error": why, "held_events": held,
        "replayed_events": replayed as i64, "finished": DateTime::now(),
        "copied_documents": a.progress.copied_docs.load(Ordering::Relaxed) as i64},
    )
    .await?;
    let ctx = ctx.clone();
    tokio::spawn(async move {
        if let Some(t) = task {
            let _ = t.await;
        }
        if let Err(e) = drop_temp(&ctx, &a.temp).await {
            tracing::warn!(temp = %a.temp, error = %e, "Could not drop a cancelled resync's temporary collection; drop it on the destination.");
        }
        let ranges = format!("^{}", regex::escape(&format!("{}/", a.copy_lane)));
        if let Err(e) = ctx
            .store
            .delete_many(PARTITIONS, doc! {"_id": {"$regex": ranges}})
            .await
        {
            tracing::debug!(error = %e, "Could not remove a cancelled resync's copy ranges (the next resync of the lane does).");
        }
    });
    Ok(())
}

/// The records of one request batch (for the command waiting on them).
pub async fn records(
    store: &crate::state::StateStore,
    filter: Document,
) -> Result<Vec<Document>, crate::state::StateError> {
    store
        .find(RESYNCS, filter, Some(doc! {"requested": 1, "_id": 1}), None)
        .await
}
