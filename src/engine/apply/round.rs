//! A round of change events applied to the destination: CRUD events regrouped by document
//! and spread over workers, DDL events in order between them.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::time::Instant;

use futures::future::try_join_all;
use mongodb::bson::{RawBsonRef, RawDocumentBuf};

use crate::cluster::server_error::code::DUPLICATE_KEY;
use crate::engine::error::EngineError;
use crate::engine::identity::identity_key;
use crate::engine::stats::Stage;
use crate::engine::translate::{self};

use super::ctx::*;
use super::merge::*;
use super::send::*;
use super::snapshot::*;

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

pub(super) async fn apply_round_with(
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
