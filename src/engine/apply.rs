//! Change-event application: one cluster-wide change stream (with DDL events), events applied
//! in rounds. Within a round, CRUD events are spread over workers by document, so each
//! document's events stay in order while different documents are written in parallel; a DDL
//! event is a barrier. After a round is durable on the destination (majority write concern)
//! its resume token is stored: a crash replays at most one round, and every statement is
//! idempotent.
//!
//! This file is the loop (read a batch, hand it to [`write`](crate::engine::write), serve the
//! repair and resync hooks between batches, checkpoint); `write.rs` writes to the destination.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::TryStreamExt;
use mongodb::bson::{doc, Document, RawDocument, RawDocumentBuf, Timestamp};
use mongodb::error::ErrorKind;
use mongodb::raw_batch_cursor::{RawBatch, RawBatchCursor};
use tokio::sync::{mpsc, watch};

use crate::engine::control::Control;
use crate::engine::error::{read_err, EngineError};
use crate::engine::write::{apply_ddl, apply_round, ApplyCtx};
use crate::plan::NamespaceSelector;
use crate::progress::Progress;
use crate::state::LANES;
use crate::stats::Stage;

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
    let mut backoff = ctx.retry.backoff();
    loop {
        let mut opened = false;
        match run_stream(&ctx, &mut start, &mut control, &mut opened).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_transient() => {
                // The stream was open again in between: this is a new outage, with its own
                // retry budget.
                if opened {
                    backoff.progress();
                }
                ctx.retry
                    .wait(&ctx.progress, "applying change events", &e, &mut backoff)
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
    // level by level (see events.rs: `updatedFields` cannot tell `{"a.b": 1}` from `{a: {b: 1}}`).
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
    // 286 ChangeStreamHistoryLost: the resume point has left the oplog.
    if code == Some(286) {
        let at = match start {
            StartPoint::Time(ts) => format!("source time {}.{}", ts.time, ts.increment),
            StartPoint::Token(t) => match token_time(t) {
                Some(ts) => format!("source time {}.{}", ts.time, ts.increment),
                None => "the stored resume token".to_string(),
            },
        };
        return EngineError::HistoryLost {
            cluster: ctx.direction.source_name(),
            at,
        };
    }
    read_err(ctx.direction.source_name(), "reading the change stream", e)
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
    loop {
        if *control.borrow() == Control::Stop {
            return Ok(());
        }
        // A safe boundary: the last round is applied and its resume token stored. A pause
        // stops reading (the read-ahead batch is dropped and read again from the token).
        if crate::pause::is_paused() && *control.borrow() == Control::Run {
            drop(ahead);
            if !crate::pause::hold_apply(&ctx.progress, control).await {
                return Ok(());
            }
            ahead = Prefetch::start(open(ctx, start).await?, ctx.progress.clone());
        }
        let batch = match ahead.next().await {
            Ok(Some(b)) => b,
            Ok(None) => {
                return Err(EngineError::Event(
                    "the source closed the change stream".into(),
                ))
            }
            Err(e) => return Err(stream_error(ctx, &e, start)),
        };
        let pbrt = batch
            .as_raw_document()
            .get_document("cursor")
            .ok()
            .and_then(|c| c.get_document("postBatchResumeToken").ok())
            .map(|t| t.to_raw_document_buf());
        let events = batch
            .doc_slices()
            .map_err(|e| stream_error(ctx, &e, start))?;
        let mut round: Vec<RawDocumentBuf> = Vec::new();
        let mut applied = 0u64;
        // Events applied since the last checkpoint of the resume token.
        let mut unpersisted = 0u64;
        let mut last_wall: Option<i64> = None;
        let mut idle = true;
        // The last event's resume token and time (see `applied_through`).
        let mut last_event: Option<(RawDocumentBuf, Timestamp)> = None;
        for ev in events {
            let ev = ev.map_err(|e| EngineError::Event(format!("malformed change event: {e}")))?;
            let Some(ev) = ev.as_document() else { continue };
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
            if is_crud(ev) {
                // A namespace being resynced: its events are held and replayed after the swap.
                if !crate::engine::resync::hold(&ctx.lane, ev) {
                    round.push(ev.to_raw_document_buf());
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
                crate::engine::resync::before_ddl(ctx, ev).await?;
                apply_ddl(ctx, ev).await?;
                crate::crashpoint::hit("apply.ddl-applied", None);
                unpersisted += 1;
                if let Some(tok) = event_token(ev) {
                    persist(ctx, &tok, None, unpersisted).await?;
                    *start = StartPoint::Token(tok);
                    unpersisted = 0;
                }
            }
        }
        apply_round(ctx, round).await?;
        let Some(token) = pbrt else {
            return Err(EngineError::Event(
                "the change stream batch has no postBatchResumeToken".into(),
            ));
        };
        let pos = applied_through(&token, last_event.as_ref());
        let token: Document = token
            .to_document()
            .map_err(|e| EngineError::Event(e.to_string()))?;
        let persisting = Instant::now();
        persist(ctx, &token, pos, unpersisted).await?;
        ctx.progress
            .stats
            .add_busy(Stage::DestinationWrite, persisting.elapsed());
        *start = StartPoint::Token(token);
        ctx.progress
            .events_applied
            .fetch_add(applied, Ordering::Relaxed);
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
                crate::crashpoint::hit("apply.drain-round", None);
            }
            if pos.is_some_and(|p| p >= target) {
                return Ok(());
            }
        }
    }
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
/// of a batch may sit inside a transaction whose other events are not applied yet).
async fn persist(
    ctx: &ApplyCtx,
    token: &Document,
    pos: Option<Timestamp>,
    applied: u64,
) -> Result<(), EngineError> {
    let token = crate::engine::resync::durable_token(&ctx.lane, token);
    let mut set = doc! {"updated": mongodb::bson::DateTime::now(), "resume_token": token};
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
    Ok(())
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
