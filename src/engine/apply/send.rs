//! Sending statements to the destination: batched commands, refetches of documents an event
//! cannot carry, write-concern and shape errors, one-by-one fallbacks.

use std::collections::HashMap;

use mongodb::bson::{Bson, Document, RawArrayBuf, RawDocumentBuf};
use mongodb::error::ErrorKind;

use crate::base::namespace::Namespace;
use crate::cluster::server_error::code::{
    BAD_VALUE, DUPLICATE_KEY, PATH_NOT_VIABLE, TYPE_MISMATCH,
};
use crate::engine::catalog::{self};
use crate::engine::error::{cluster_err, on, write_error, EngineError};
use crate::engine::translate::{self, Stmt};

use super::ctx::*;
use super::merge::*;

/// Writes one worker's statements in order, batching consecutive statements of the same
/// namespace and kind into one ordered command.
pub(super) type Uuids = HashMap<Namespace, mongodb::bson::Binary>;

pub(super) async fn write_bucket(
    ctx: &ApplyCtx,
    stmts: &[Keyed],
    uuids: &Uuids,
) -> Result<(), EngineError> {
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
pub(super) async fn refetch(
    ctx: &ApplyCtx,
    ns: &Namespace,
    key: &RawDocumentBuf,
    uuid: Option<&mongodb::bson::Binary>,
) -> Result<Option<RawDocumentBuf>, EngineError> {
    let filter: Document = key
        .to_document()
        .map_err(|e| EngineError::Corrupt(e.to_string()))?;
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
pub(super) const SHAPE_ERRORS: [i32; 3] = [PATH_NOT_VIABLE, BAD_VALUE, TYPE_MISMATCH];

/// Sends each statement in its own command (see the TransactionTooLargeForCache case in
/// [`send`]).
pub(super) async fn one_by_one(
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

/// Runs one write command of `kind` with these statements on `ns` (majority write concern,
/// the lease's deadline as `maxTimeMS`). The outer error is the state store's; the inner is
/// the destination's answer.
pub(super) async fn write_command(
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
pub(super) fn write_concern_error(
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
pub(super) async fn send_merged(
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
pub(super) async fn send(
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
                let doc = s.get_document("u").map_err(|e| {
                    EngineError::Corrupt(format!("internal: insert statement: {e}"))
                })?;
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
            .map_err(|e| EngineError::Corrupt(format!("internal: update statement: {e}")))?
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
                return Err(EngineError::Corrupt(
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
