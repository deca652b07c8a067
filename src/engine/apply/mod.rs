//! Change-event application: one cluster-wide change stream (with DDL events), events applied
//! in rounds. Within a round, CRUD events are spread over workers by document, so each
//! document's events stay in order while different documents are written in parallel; a DDL
//! event is a barrier. After a round is durable on the destination (majority write concern)
//! its resume token is stored: a crash replays at most one round, and every statement is
//! idempotent.
//!
//! This file is the loop (read a batch, hand it to [`round`], serve the
//! repair and resync hooks between batches, checkpoint); the submodules write to the
//! destination: [`round`] (a round), [`merge`] (fewer, cheaper statements), [`send`]
//! (commands), [`snapshot`] (repair rounds), [`replay_ddl`] (DDL events).

pub(crate) mod ctx;
mod merge;
mod replay_ddl;
pub(crate) mod round;
mod send;
mod snapshot;

pub use ctx::{ApplyCtx, Keying};
pub(crate) use replay_ddl::apply_ddl;
pub(crate) use round::apply_round;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::TryStreamExt;
use mongodb::bson::{doc, Document, RawDocument, RawDocumentBuf, Timestamp};
use mongodb::error::ErrorKind;
use mongodb::raw_batch_cursor::{RawBatch, RawBatchCursor};
use tokio::sync::{mpsc, watch};

use crate::cluster::server_error::code::CHANGE_STREAM_HISTORY_LOST;
use crate::engine::control::Control;
use crate::engine::error::{read_err, EngineError};
use crate::engine::progress::Progress;
use crate::engine::stats::Stage;
use crate::plan::NamespaceSelector;
use crate::state::LANES;

/// Events per change-stream batch (one round); the server also caps a batch at 16 MB.
const ROUND_EVENTS: u32 = 5_000;
/// Inserts and replaces whose document is bigger than this are fetched from the source
/// instead of carried in the event: the event itself must stay under 16 MB (MongoDB 6.0.5 has
/// no `$changeStreamSplitLargeEvent`).
const MAX_EVENT_DOCUMENT: i64 = 15 * 1024 * 1024;

#[derive(Clone, Debug)]
pub enum StartPoint {
    Token(Document),
    Time(Timestamp),
}

/// Applies change events until `control` says to stop (returns the final position).
pub async fn run(
    ctx: ApplyCtx,
    start: StartPoint,
    mut control: watch::Receiver<Control>,
) -> Result<(), EngineError> {
    let mut start = start;
    let mut retry = ctx.retry.retry(&ctx.progress);
    loop {
        let mut opened = false;
        match run_stream(&ctx, &mut start, &mut control, &mut opened).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_transient() => {
                // The stream was open again in between: this is a new outage, with its own
                // retry budget.
                if opened {
                    retry.progress();
                }
                ctx.retry
                    .wait(&mut retry, "applying change events", &e)
                    .await?;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The change stream: cluster-wide, with DDL (`showExpandedEvents`) and time-series bucket
/// events (`showSystemEvents`, which the driver's `watch()` cannot set, hence a raw
/// aggregate: the raw cursor also hands us every batch's `postBatchResumeToken`, so an idle
/// stream still advances the checkpoint). Resuming is ours: [`run`] reopens from the stored
/// token.
fn pipeline(selector: &NamespaceSelector, start: &StartPoint) -> Vec<Document> {
    // `showRawUpdateDescription`: update events carry the oplog's delta, which names fields
    // level by level (see translate.rs: `updatedFields` cannot tell `{"a.b": 1}` from `{a: {b: 1}}`).
    let mut cs = doc! {"allChangesForCluster": true, "showExpandedEvents": true,
    "showSystemEvents": true, "showRawUpdateDescription": true};
    match start {
        StartPoint::Token(t) => cs.insert("resumeAfter", t.clone()),
        StartPoint::Time(ts) => cs.insert("startAtOperationTime", *ts),
    };
    vec![
        doc! {"$changeStream": cs},
        // Never the state database (cluster-wide streams already omit admin/config/local).
        doc! {"$match": {"ns.db": {"$ne": selector.state_database()}}},
        // Keep events under 16 MB: drop a huge fullDocument; the applier fetches it instead.
        doc! {"$set": {"fullDocument": {"$cond": [
            {"$gt": [{"$bsonSize": {"$ifNull": ["$fullDocument", {}]}}, MAX_EVENT_DOCUMENT]},
            "$$REMOVE",
            "$fullDocument"
        ]}}},
    ]
}

async fn open(ctx: &ApplyCtx, start: &StartPoint) -> Result<RawBatchCursor, EngineError> {
    ctx.source
        .database("admin")
        .aggregate(pipeline(&ctx.selector, start))
        .batch_size(ROUND_EVENTS)
        // An idle stream answers after this long with a fresh postBatchResumeToken: it bounds
        // how long a commit's drain waits to see the block point (the write-blocked window).
        .max_await_time(Duration::from_millis(50))
        .batch()
        .await
        .map_err(|e| stream_error(ctx, &e, start))
}

fn stream_error(ctx: &ApplyCtx, e: &mongodb::error::Error, start: &StartPoint) -> EngineError {
    let code = match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        _ => None,
    };
    // ChangeStreamHistoryLost: the resume point has left the oplog.
    if code == Some(CHANGE_STREAM_HISTORY_LOST) {
        let at = match start {
            StartPoint::Time(ts) => format!("source time {}.{}", ts.time, ts.increment),
            StartPoint::Token(t) => match token_time(t) {
                Some(ts) => format!("source time {}.{}", ts.time, ts.increment),
                None => "the stored resume token".to_string(),
            },
        };
        return EngineError::HistoryLost {
            cluster: ctx.direction.reads(),
            at,
        };
    }
    read_err(ctx.direction.reads(), "reading the change stream", e)
}

/// A change-stream batch, owned: a batch read while a DDL event waits for a collection's
/// copy is kept and processed later (see [`gate`](crate::engine::gate)).
struct Batch {
    events: Vec<RawDocumentBuf>,
    pbrt: Option<RawDocumentBuf>,
    bytes: u64,
}

impl Batch {
    fn from_raw(raw: &RawBatch) -> Result<Self, mongodb::error::Error> {
        let pbrt = raw
            .as_raw_document()
            .get_document("cursor")
            .ok()
            .and_then(|c| c.get_document("postBatchResumeToken").ok())
            .map(|t| t.to_raw_document_buf());
        let mut events = Vec::new();
        let mut bytes = 0u64;
        for ev in raw.doc_slices()? {
            let ev = ev?;
            if let Some(d) = ev.as_document() {
                bytes += d.as_bytes().len() as u64;
                events.push(d.to_raw_document_buf());
            }
        }
        Ok(Batch {
            events,
            pbrt,
            bytes,
        })
    }
}

/// Bytes of change events held for ranges being copied, plus batches deferred behind a DDL
/// event, above which the lane stops reading the stream until ranges finish (the lag then
/// grows: `status` shows it).
const HELD_BYTES_LIMIT: u64 = 256 * 1024 * 1024;

/// Whether a DDL event must wait for the copy (see [`crate::engine::gate`]).
fn ddl_blocked(g: &crate::engine::gate::Gate, ev: &RawDocument) -> bool {
    let Some(nss) = ddl_waits_for(ev) else {
        return false;
    };
    match ev.get_str("operationType") {
        // Index DDL waits only while the collection's after-copy build is between its reading
        // of the source's indexes and its end (found by torture seed 19).
        Ok("dropIndexes" | "modify") => !g.index_ddl_ready(&nss),
        _ => !g.ddl_ready(&nss),
    }
}

/// The namespaces a DDL event that may wait concerns: the events that move or remove a
/// namespace wait until the copy of every collection they touch is complete (the copy writes
/// under the names it planned); index DDL waits during a collection's index build.
fn ddl_waits_for(ev: &RawDocument) -> Option<Vec<crate::base::namespace::Namespace>> {
    use crate::base::namespace::Namespace;
    let op = ev.get_str("operationType").ok()?;
    if !matches!(
        op,
        "rename" | "drop" | "dropDatabase" | "dropIndexes" | "modify"
    ) {
        return None;
    }
    let ns = ev.get_document("ns").ok()?;
    let db = ns.get_str("db").ok()?;
    let coll = ns.get_str("coll").unwrap_or("");
    let mut out = vec![Namespace::new(db, coll)];
    if matches!(op, "dropIndexes" | "modify") && !coll.is_empty() && !coll.starts_with("system.") {
        // A time-series collection's index DDL names the view; its copy is of the buckets.
        out.push(Namespace::new(db, format!("system.buckets.{coll}")));
    }
    if let Ok(to) = ev.get_document("to") {
        if let Some(t) = Namespace::from_event_ns(to) {
            out.push(t);
        }
    }
    Some(out)
}

async fn run_stream(
    ctx: &ApplyCtx,
    start: &mut StartPoint,
    control: &mut watch::Receiver<Control>,
    opened: &mut bool,
) -> Result<(), EngineError> {
    let cursor = open(ctx, start).await?;
    *opened = true;
    ctx.progress.set_reconnecting(None);
    let mut ahead = Prefetch::start(cursor, ctx.progress.clone());
    // Batches read while a DDL event waits for a collection's copy; the first one starts
    // with that event.
    let mut deferred: std::collections::VecDeque<Batch> = std::collections::VecDeque::new();
    let mut deferred_bytes = 0u64;
    let mut over_limit_logged = false;
    let result = loop {
        if *control.borrow() == Control::Stop {
            break Ok(());
        }
        if let Some(g) = &ctx.gate {
            if let Some(e) = g.take_failure() {
                break Err(e);
            }
            // Ranges whose copy is durable: their held events first, before any later one.
            if let Err(e) = release(ctx, g).await {
                break Err(e);
            }
            if !deferred.is_empty() {
                // Tests act here: a DDL event waits, finished ranges were just released.
                crate::base::crashpoint::pause("apply.deferred").await;
            }
        }
        // A safe boundary: the last round is applied and its resume token stored. A pause
        // stops reading (the read-ahead and deferred batches are dropped and read again from
        // the token).
        if crate::base::pause_gate::is_paused() && *control.borrow() == Control::Run {
            drop(ahead);
            deferred.clear();
            ctx.progress
                .held_bytes
                .fetch_sub(deferred_bytes, Ordering::Relaxed);
            deferred_bytes = 0;
            if !crate::engine::control::hold_apply(&ctx.progress, control).await {
                break Ok(());
            }
            ahead = match open(ctx, start).await {
                Ok(c) => Prefetch::start(c, ctx.progress.clone()),
                Err(e) => break Err(e),
            };
        }
        let waiting = deferred.front().and_then(|b| {
            let ev = b.events.first()?;
            let g = ctx.gate.as_ref()?;
            ddl_blocked(g, ev).then_some(())
        });
        let held = ctx.progress.held_bytes.load(Ordering::Relaxed);
        let batch = if deferred.front().is_some() && waiting.is_none() {
            let b = deferred.pop_front().expect("checked");
            deferred_bytes -= b.bytes;
            ctx.progress
                .held_bytes
                .fetch_sub(b.bytes, Ordering::Relaxed);
            b
        } else if held >= HELD_BYTES_LIMIT {
            if !over_limit_logged {
                tracing::warn!(
                    held_mb = held / (1024 * 1024),
                    "Holding the change events of ranges being copied at the limit: reading \
                     the change stream waits until those ranges are copied."
                );
                over_limit_logged = true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        } else {
            over_limit_logged = false;
            let raw = match ahead.next().await {
                Ok(Some(b)) => b,
                Ok(None) => {
                    break Err(EngineError::Stream(
                        "the source closed the change stream".into(),
                    ))
                }
                Err(e) => break Err(stream_error(ctx, &e, start)),
            };
            let b = match Batch::from_raw(&raw) {
                Ok(b) => b,
                Err(e) => break Err(stream_error(ctx, &e, start)),
            };
            if waiting.is_some() || !deferred.is_empty() {
                // Still waiting for a collection's copy: keep reading, apply later.
                deferred_bytes += b.bytes;
                let now = ctx
                    .progress
                    .held_bytes
                    .fetch_add(b.bytes, Ordering::Relaxed)
                    + b.bytes;
                ctx.progress
                    .held_peak_bytes
                    .fetch_max(now, Ordering::Relaxed);
                deferred.push_back(b);
                continue;
            }
            b
        };
        match process(ctx, start, control, batch).await {
            Ok(Step::Next) => {}
            Ok(Step::Defer(rest)) => {
                deferred_bytes += rest.bytes;
                ctx.progress
                    .held_bytes
                    .fetch_add(rest.bytes, Ordering::Relaxed);
                deferred.push_front(rest);
            }
            Ok(Step::Drained) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    if deferred_bytes > 0 {
        ctx.progress
            .held_bytes
            .fetch_sub(deferred_bytes, Ordering::Relaxed);
    }
    result
}

/// Applies the held events of ranges whose copy is durable.
async fn release(ctx: &ApplyCtx, g: &crate::engine::gate::Gate) -> Result<(), EngineError> {
    let r = g.release();
    if r.events.is_empty() {
        return Ok(());
    }
    let n = r.events.len() as u64;
    tracing::debug!(
        events = n,
        ranges = r.ranges,
        "Applying the change events held for copied ranges."
    );
    apply_round(ctx, r.events).await?;
    ctx.progress
        .events_applied_during_copy
        .fetch_add(n, Ordering::Relaxed);
    Ok(())
}

enum Step {
    Next,
    /// A DDL event waits for a collection's copy: this batch from that event on.
    Defer(Batch),
    /// The drain target is reached.
    Drained,
}

async fn process(
    ctx: &ApplyCtx,
    start: &mut StartPoint,
    control: &mut watch::Receiver<Control>,
    batch: Batch,
) -> Result<Step, EngineError> {
    use crate::engine::gate::Route;
    let gate = ctx.gate.as_ref().filter(|g| !g.drained());
    let Batch { events, pbrt, .. } = batch;
    let mut round: Vec<RawDocumentBuf> = Vec::new();
    let mut applied = 0u64;
    let mut during_copy = 0u64;
    // Events applied since the last checkpoint of the resume token.
    let mut unpersisted = 0u64;
    let mut last_wall: Option<i64> = None;
    let mut idle = true;
    // The last event's resume token and time (see `applied_through`).
    let mut last_event: Option<(RawDocumentBuf, Timestamp)> = None;
    let mut events = events.into_iter();
    while let Some(ev) = events.next() {
        if let Some(g) = gate {
            if ddl_blocked(g, &ev) {
                // Everything before it first, its checkpoint stored; the rest waits.
                let before = round.last().and_then(|e| event_token(e));
                apply_round(ctx, std::mem::take(&mut round)).await?;
                if let Some(tok) = before {
                    persist(ctx, &tok, None, unpersisted).await?;
                    *start = StartPoint::Token(tok);
                }
                ctx.progress
                    .events_applied
                    .fetch_add(applied, Ordering::Relaxed);
                tracing::info!(
                    event = %ev.get_str("operationType").unwrap_or("?"),
                    "A DDL event waits for the copy of the collections it changes; their ranges \
                     are copied first, and the change stream is read on meanwhile."
                );
                let mut rest = vec![ev];
                rest.extend(events);
                let bytes = rest.iter().map(|e| e.as_bytes().len() as u64).sum();
                return Ok(Step::Defer(Batch {
                    events: rest,
                    pbrt,
                    bytes,
                }));
            }
        }
        let ev: &RawDocument = &ev;
        idle = false;
        ctx.progress
            .stats
            .events_read
            .fetch_add(1, Ordering::Relaxed);
        if let Ok(w) = ev.get_datetime("wallTime") {
            last_wall = Some(w.timestamp_millis());
        }
        if let (Ok(id), Ok(ts)) = (ev.get_document("_id"), ev.get_timestamp("clusterTime")) {
            last_event = Some((id.to_raw_document_buf(), ts));
        }
        applied += 1;
        if ctx.progress.touched.tracking() {
            let ns = if is_crud(ev) {
                ev.get_document("ns")
                    .ok()
                    .and_then(crate::base::namespace::Namespace::from_event_ns)
            } else {
                None
            };
            ctx.progress.touched.touch(ns);
        }
        if is_crud(ev) {
            // A namespace being resynced: its events are held and replayed after the swap.
            if !crate::engine::resync::hold(&ctx.lane, ev) {
                let route = match gate {
                    Some(g) => g.route(
                        ev.get_document("ns")
                            .ok()
                            .and_then(crate::base::namespace::Namespace::from_event_ns)
                            .as_ref(),
                        ev,
                    ),
                    None => Route::Apply,
                };
                match route {
                    Route::Apply => {
                        if gate.is_some() {
                            during_copy += 1;
                        }
                        round.push(ev.to_raw_document_buf());
                    }
                    Route::Drop => {
                        ctx.progress
                            .events_dropped_during_copy
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    Route::Held => {}
                }
            }
            unpersisted += 1;
        } else {
            // DDL is a barrier: everything before it first. Checkpoints on both sides of
            // it: a replay (crash, or a retry after an error) never re-applies writes
            // from before a DDL event after that event; inserts replayed into a renamed
            // collection would re-create its old name as a stub, which the replayed
            // `rename ... dropTarget` would then put in place of the real collection.
            let before = round.last().and_then(|e| event_token(e));
            apply_round(ctx, std::mem::take(&mut round)).await?;
            if let Some(tok) = before {
                persist(ctx, &tok, None, unpersisted).await?;
                *start = StartPoint::Token(tok);
                unpersisted = 0;
            }
            // The held events of every range whose copy finished meanwhile come first: all
            // of them precede this event, and a rename or drop applied before them would send
            // the old collection's writes into whatever takes its name (torture seed 10).
            if let Some(g) = gate {
                release(ctx, g).await?;
            }
            crate::engine::resync::before_ddl(ctx, ev).await?;
            apply_ddl(ctx, ev).await?;
            crate::base::crashpoint::hit("apply.ddl-applied", None);
            unpersisted += 1;
            if let Some(tok) = event_token(ev) {
                if let (Some(g), Ok(ts)) = (gate, ev.get_timestamp("clusterTime")) {
                    g.advance(ts, &tok);
                }
                persist(ctx, &tok, None, unpersisted).await?;
                *start = StartPoint::Token(tok);
                unpersisted = 0;
            }
        }
    }
    apply_round(ctx, round).await?;
    let Some(token) = pbrt else {
        return Err(EngineError::Stream(
            "the change stream batch has no postBatchResumeToken".into(),
        ));
    };
    let pos = applied_through(&token, last_event.as_ref());
    let token: Document = token
        .to_document()
        .map_err(|e| EngineError::Corrupt(e.to_string()))?;
    if let (Some(g), Some(p)) = (gate, pos) {
        g.advance(p, &token);
    }
    let persisting = Instant::now();
    let pos = persist(ctx, &token, pos, unpersisted).await?;
    ctx.progress
        .stats
        .add_busy(Stage::DestinationWrite, persisting.elapsed());
    *start = StartPoint::Token(token);
    ctx.progress
        .events_applied
        .fetch_add(applied, Ordering::Relaxed);
    ctx.progress
        .events_applied_during_copy
        .fetch_add(during_copy, Ordering::Relaxed);
    let lag_ms = if idle {
        0
    } else {
        last_wall.map_or(0, |w| (now_millis() - w).max(0))
    };
    ctx.progress.lag_ms.store(lag_ms, Ordering::Relaxed);
    let copy_done = ctx.progress.copy_done.load(Ordering::Relaxed);
    ctx.progress.can_commit.store(
        copy_done
            && lag_ms <= ctx.max_lag.as_millis() as i64
            && crate::engine::resync::allows_commit(&ctx.lane),
        Ordering::Relaxed,
    );
    if let Some(p) = pos {
        ctx.position.send_replace(Some(p));
        // Between batches: everything up to `p` applied, nothing after it.
        crate::engine::repair::serve(ctx, p).await?;
        let now = *control.borrow();
        crate::engine::resync::serve(ctx, p, now).await?;
    }
    if let Control::DrainTo(target) = *control.borrow() {
        if applied > 0 {
            crate::base::crashpoint::hit("apply.drain-round", None);
        }
        if pos.is_some_and(|p| p >= target) {
            return Ok(Step::Drained);
        }
    }
    Ok(Step::Next)
}

/// Reads the change stream one batch ahead of the applier, so the source prepares the next
/// batch (its `getMore`) while the destination applies the current one; strictly alternating
/// left each side idle half the time. Only batches the applier took are ever checkpointed, so
/// a batch read ahead and then dropped (stop, drain target reached, error) is read again from
/// the stored resume token.
struct Prefetch {
    rx: mpsc::Receiver<(Instant, mongodb::error::Result<Option<RawBatch>>)>,
    task: tokio::task::JoinHandle<()>,
    progress: Arc<Progress>,
}

impl Prefetch {
    fn start(mut cursor: RawBatchCursor, progress: Arc<Progress>) -> Self {
        // One batch in the channel and one being read: at most two 16 MB batches ahead.
        let (tx, rx) = mpsc::channel(1);
        let p = progress.clone();
        let task = tokio::spawn(async move {
            loop {
                let reading = Instant::now();
                let next = cursor.try_next().await;
                p.stats.add_busy(Stage::SourceRead, reading.elapsed());
                let last = !matches!(next, Ok(Some(_)));
                if tx.send((Instant::now(), next)).await.is_err() || last {
                    return;
                }
            }
        });
        Prefetch { rx, task, progress }
    }

    async fn next(&mut self) -> mongodb::error::Result<Option<RawBatch>> {
        match self.rx.recv().await {
            Some((queued, next)) => {
                self.progress
                    .stats
                    .add_busy(Stage::ApplyQueue, queued.elapsed());
                next
            }
            None => Ok(None),
        }
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        // Dropping the reader's cursor kills it on the server.
        self.task.abort();
    }
}

/// An event's own resume token (its `_id`).
fn event_token(ev: &RawDocument) -> Option<Document> {
    ev.get_document("_id")
        .ok()
        .and_then(|t| Document::try_from(t).ok())
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn is_crud(ev: &RawDocument) -> bool {
    matches!(
        ev.get_str("operationType"),
        Ok("insert" | "update" | "replace" | "delete")
    )
}

/// Stores the resume token (and, at the end of a batch, the position: a token in the middle
/// of a batch may sit inside a transaction whose other events are not applied yet). While the
/// copy holds events, the stored point never passes the opening of the oldest range holding
/// them (see [`Gate::clamp`](crate::engine::gate::Gate::clamp)); returns the position stored.
async fn persist(
    ctx: &ApplyCtx,
    token: &Document,
    pos: Option<Timestamp>,
    applied: u64,
) -> Result<Option<Timestamp>, EngineError> {
    let mut token = Some(token.clone());
    let mut pos = pos;
    if let Some((since, since_token)) = ctx.gate.as_ref().and_then(|g| g.clamp()) {
        if pos.is_none_or(|p| p >= since) {
            pos = pos.map(|_| before(since));
        }
        if token
            .as_ref()
            .and_then(token_time)
            .is_none_or(|t| t >= since)
        {
            // No token before the copy's first event: the lane's start time stands.
            token = since_token;
        }
    }
    let mut set = doc! {"updated": mongodb::bson::DateTime::now()};
    if let Some(t) = &token {
        set.insert(
            "resume_token",
            crate::engine::resync::durable_token(&ctx.lane, t),
        );
    }
    if let Some(p) = pos {
        set.insert("position", p);
    }
    ctx.store
        .update_one(
            LANES,
            doc! {"_id": &ctx.lane},
            doc! {"$set": set, "$inc": {"events_applied": applied as i64}},
        )
        .await?;
    Ok(pos)
}

/// The source time up to which every event is applied once a batch ending with `token` (its
/// `postBatchResumeToken`) is applied. A batch that ends at an event (the batch was full:
/// 5,000 events or 16 MB) ends at that event's token, and more events may share its time: all
/// the operations of a transaction have the commit's time, and a large transaction spans
/// several batches. Only the time before it is then complete; the drain (`DrainTo`) and
/// verify's wait must not take the transaction as applied. A batch that ends at a
/// high-water mark (the stream had nothing more) is complete up to the mark's time.
fn applied_through(
    token: &RawDocument,
    last_event: Option<&(RawDocumentBuf, Timestamp)>,
) -> Option<Timestamp> {
    let time = token
        .get_str("_data")
        .ok()
        .and_then(|d| token_time(&doc! {"_data": d}))?;
    match last_event {
        Some((id, ts)) if id.as_bytes() == token.as_bytes() => Some(before(*ts)),
        _ => Some(time),
    }
}

/// The timestamp just before `t`.
fn before(t: Timestamp) -> Timestamp {
    match t.increment {
        0 => Timestamp {
            time: t.time.saturating_sub(1),
            increment: u32::MAX,
        },
        i => Timestamp {
            time: t.time,
            increment: i - 1,
        },
    }
}

/// The source time encoded in a resume token (`_data` hex: `82`, then seconds and increment
/// as 4-byte big-endian numbers).
pub fn token_time(t: &Document) -> Option<Timestamp> {
    let data = t.get_str("_data").ok()?;
    if data.len() < 18 || !data.starts_with("82") {
        return None;
    }
    let time = u32::from_str_radix(&data[2..10], 16).ok()?;
    let increment = u32::from_str_radix(&data[10..18], 16).ok()?;
    Some(Timestamp { time, increment })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_token_time_is_decoded() {
        // A 6.0 token: `82` + seconds 0x6566A1B2 + increment 0x00000003 + the rest.
        let t = doc! {"_data": "826566A1B2000000032B022C0100296E5A1004ABCDEF"};
        assert_eq!(
            token_time(&t),
            Some(Timestamp {
                time: 0x6566_A1B2,
                increment: 3
            })
        );
        assert_eq!(token_time(&doc! {"_data": "01"}), None);
        assert_eq!(token_time(&doc! {}), None);
    }

    #[test]
    fn a_batch_ending_at_an_event_is_complete_only_before_its_time() {
        let tok = |inc: u32| {
            RawDocumentBuf::from_document(
                &doc! {"_data": format!("826566A1B2{inc:08X}2B022C0100296E5A1004ABCDEF")},
            )
            .unwrap()
        };
        let t = |increment| Timestamp {
            time: 0x6566_A1B2,
            increment,
        };
        // Ends at a high-water mark: complete up to it.
        assert_eq!(applied_through(&tok(5), None), Some(t(5)));
        assert_eq!(applied_through(&tok(5), Some(&(tok(3), t(3)))), Some(t(5)));
        // Ends at its last event (the batch was full; a transaction may go on): before it.
        assert_eq!(applied_through(&tok(5), Some(&(tok(5), t(5)))), Some(t(4)));
        assert_eq!(
            before(Timestamp {
                time: 10,
                increment: 0
            }),
            Timestamp {
                time: 9,
                increment: u32::MAX
            }
        );
    }
}
