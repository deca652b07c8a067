//! Repair rounds: documents a round touches made equal to the source's at the round's last
//! event time, through a snapshot read and one destination transaction.

use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document, RawArrayBuf, RawDocumentBuf, Timestamp};
use mongodb::error::ErrorKind;

use crate::base::namespace::Namespace;
use crate::cluster::server_error::code::{DUPLICATE_KEY, SNAPSHOT_TOO_OLD, SNAPSHOT_UNAVAILABLE};
use crate::engine::error::{cluster_err, write_error, EngineError};

use super::ctx::*;

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
pub(super) async fn repair_round(
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
pub(super) async fn repair_ns(
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
                    EngineError::Stream(format!(
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
pub(super) async fn snapshot_read(
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
                let e = e.map_err(|e| EngineError::Corrupt(e.to_string()))?;
                let v = Bson::try_from(e.value().map_err(|e| EngineError::Corrupt(e.to_string()))?)
                    .map_err(|e| EngineError::Corrupt(e.to_string()))?;
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
pub(super) async fn replace_in_transaction(
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
