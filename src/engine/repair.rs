//! Rewriting single documents on the destination from the source (`cutover verify --repair`).
//!
//! The core is [`rewrite`]: read the listed `_id`s on the source and make the destination hold
//! exactly those documents, as replication writes them: a replacement (an upsert whose update
//! is the whole document, so the field order is the source's, never a `$set`) for each found,
//! a delete for each gone.
//!
//! While a runner is live the rewrite must not race the lane. So the lane does it itself:
//! `verify --repair` stores *requests* (`repair_requests`: a namespace and up to
//! [`REQUEST_IDS`] `_id`s) and the lane serves them in [`serve`], between two change-stream
//! batches. At that point every event up to the lane's position `P` is applied and durable
//! and no later event is, so reading the source at exactly `P` (`readConcern: snapshot,
//! atClusterTime: P`) and writing that is what replication itself holds at `P`: an event
//! before `P` is not undone (it is in the snapshot), an event after `P` is applied after the
//! rewrite and wins. When `P` has left the source's snapshot history window (the lane lags
//! by more than `minSnapshotHistoryWindowInSeconds`, 5 minutes by default), the rewrite reads
//! the current majority-committed document instead: later than `P`, so the events between
//! `P` and that read are replayed over it afterwards, exactly as over the initial copy.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, DateTime, Document, RawArrayBuf, RawDocumentBuf, Timestamp};
use mongodb::error::ErrorKind;
use mongodb::Client;
use serde::Serialize;

use crate::engine::error::{cluster_err, write_error, EngineError};
use crate::engine::events::{self, Stmt};
use crate::engine::write::ApplyCtx;
use crate::namespace::Namespace;
use crate::record::Direction;
use crate::state::{StateError, StateStore};
use crate::verify::order::cmp_values;

/// Requests that the live lane serves.
pub const REQUESTS: &str = "repair_requests";
/// One record per `verify --repair` invocation (who, when, what).
pub const REPAIRS: &str = "repairs";
/// `_id`s per request.
pub const REQUEST_IDS: usize = 500;
/// How often the lane looks for requests.
const SERVE_EVERY: Duration = Duration::from_millis(200);

/// How the source is read.
#[derive(Clone, Copy, Debug)]
pub enum ReadAt {
    /// `readConcern: snapshot` at this cluster time (falls back to majority when the time has
    /// left the history window).
    Snapshot(Timestamp),
    /// The current majority-committed documents.
    Majority,
}

/// What a rewrite did.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Rewritten {
    /// Documents written as the source has them (inserted or replaced).
    pub written: u64,
    /// Documents deleted (gone from the source).
    pub deleted: u64,
    /// Bytes of the documents written.
    #[serde(skip)]
    pub bytes: u64,
    /// True when the source was read at a snapshot time (the lane's position).
    pub snapshot: bool,
}

/// Every state write of repair goes through here. Updates go through the store's fenced
/// `update_one` (inside `cutover run` a runner that lost the plan cannot write); upserts are
/// `verify --repair`'s own records, written outside any runner.
pub(crate) async fn write_state(
    store: &StateStore,
    coll: &str,
    filter: Document,
    update: Document,
    upsert: bool,
) -> Result<(), StateError> {
    if !upsert {
        store.update_one(coll, filter, update).await?;
        return Ok(());
    }
    store.upsert_operator_record(coll, filter, update).await
}

fn snapshot_gone(e: &mongodb::error::Error) -> bool {
    // 239 SnapshotTooOld, 246 SnapshotUnavailable.
    matches!(e.kind.as_ref(), ErrorKind::Command(c) if c.code == 239 || c.code == 246)
}

async fn read_source(
    source: &Client,
    ns: &Namespace,
    ids: &[Bson],
    at: Option<Timestamp>,
) -> Result<Vec<RawDocumentBuf>, mongodb::error::Error> {
    let rc = match at {
        Some(ts) => doc! {"level": "snapshot", "atClusterTime": ts},
        None => doc! {"level": "majority"},
    };
    let cmd = doc! {"find": &ns.coll, "filter": {"_id": {"$in": ids.to_vec()}}, "readConcern": rc};
    let cmd = RawDocumentBuf::from_document(&cmd)
        .map_err(|e| mongodb::error::Error::custom(e.to_string()))?;
    source
        .database(&ns.db)
        .run_raw_cursor_command(cmd)
        .await?
        .with_type::<RawDocumentBuf>()
        .try_collect()
        .await
}

/// Makes the destination's documents with these `_id`s exactly the source's (read as `at`
/// says): replaced when on the source, deleted when not.
///
/// `direction` is the lane's (forward for a direct repair): errors name clusters by plan role.
pub async fn rewrite(
    direction: Direction,
    source: &Client,
    dest: &Client,
    ns: &Namespace,
    ids: &[Bson],
    at: ReadAt,
) -> Result<Rewritten, EngineError> {
    rewrite_between(direction, source, ns, dest, ns, ids, at).await
}

/// [`rewrite`] from the source collection `source_ns` into `ns` on the destination (a lane
/// writes a renamed collection under the name it planned).
pub async fn rewrite_between(
    direction: Direction,
    source: &Client,
    source_ns: &Namespace,
    dest: &Client,
    ns: &Namespace,
    ids: &[Bson],
    at: ReadAt,
) -> Result<Rewritten, EngineError> {
    let mut out = Rewritten::default();
    if ids.is_empty() {
        return Ok(out);
    }
    let reading = format!("reading `{ns}` to repair it");
    let found = match at {
        ReadAt::Snapshot(ts) => match read_source(source, source_ns, ids, Some(ts)).await {
            Ok(d) => {
                out.snapshot = true;
                d
            }
            Err(e) if snapshot_gone(&e) => {
                tracing::info!(%ns, "The lane's position left the snapshot window; repairing from the current majority read (replayed over like the copy).");
                read_source(source, source_ns, ids, None)
                    .await
                    .map_err(|e| cluster_err(direction.source_name(), reading.clone(), &e))?
            }
            Err(e) => return Err(cluster_err(direction.source_name(), reading, &e)),
        },
        ReadAt::Majority => read_source(source, source_ns, ids, None)
            .await
            .map_err(|e| cluster_err(direction.source_name(), reading, &e))?,
    };
    let mut updates = RawArrayBuf::new();
    let mut n_updates = 0u64;
    let mut deletes = RawArrayBuf::new();
    let mut n_deletes = 0u64;
    for id in ids {
        let raw_id = mongodb::bson::RawBson::try_from(id.clone())
            .map_err(|e| EngineError::Event(format!("`{ns}`: _id {id}: {e}")))?;
        let doc = found.iter().find(|d| {
            d.get("_id").ok().flatten().is_some_and(|v| {
                cmp_values(v, raw_id.as_raw_bson_ref()) == std::cmp::Ordering::Equal
            })
        });
        match doc {
            Some(d) => {
                let mut key = RawDocumentBuf::new();
                if let Ok(Some(v)) = d.get("_id") {
                    key.append_ref("_id", v);
                }
                match events::upsert(&key, d) {
                    Ok(Stmt::Update(s)) => {
                        updates.push(s);
                        n_updates += 1;
                        out.bytes += d.as_bytes().len() as u64;
                    }
                    Ok(_) => {}
                    Err(why) => return Err(EngineError::Event(format!("`{ns}`: {why}"))),
                }
            }
            None => {
                let mut q = RawDocumentBuf::new();
                q.append("_id", raw_id);
                let mut d = RawDocumentBuf::new();
                d.append("q", q);
                d.append("limit", 1i32);
                deletes.push(d);
                n_deletes += 1;
            }
        }
    }
    if n_updates > 0 {
        send(direction, dest, ns, "update", "updates", updates).await?;
        out.written = n_updates;
    }
    if n_deletes > 0 {
        out.deleted = send(direction, dest, ns, "delete", "deletes", deletes).await?;
    }
    Ok(out)
}

/// Sends one ordered write command with majority write concern; returns the reply's `n`.
async fn send(
    direction: Direction,
    dest: &Client,
    ns: &Namespace,
    name: &str,
    list: &str,
    stmts: RawArrayBuf,
) -> Result<u64, EngineError> {
    let mut cmd = RawDocumentBuf::new();
    cmd.append(name, ns.coll.as_str());
    cmd.append(list, stmts);
    cmd.append("ordered", true);
    if name == "update" {
        cmd.append("bypassDocumentValidation", true);
    }
    let mut wc = RawDocumentBuf::new();
    wc.append("w", "majority");
    cmd.append("writeConcern", wc);
    let doing = format!("repairing `{ns}`");
    let reply = dest
        .database(&ns.db)
        .run_raw_command(cmd)
        .await
        .map_err(|e| cluster_err(direction.destination_name(), doing.clone(), &e))?;
    if let Ok(errs) = reply.get_array("writeErrors") {
        if let Some(e) = errs.iter().find_map(Bson::as_document) {
            return Err(write_error(
                direction.destination_name(),
                ns,
                format!("(statement {})", e.get_i32("index").unwrap_or(0)),
                e.get_i32("code").unwrap_or(0),
                e.get_str("errmsg").unwrap_or_default(),
            ));
        }
    }
    if let Ok(wce) = reply.get_document("writeConcernError") {
        return Err(EngineError::Cluster {
            cluster: direction.destination_name(),
            doing,
            detail: wce.get_str("errmsg").unwrap_or_default().to_string(),
            transient: true,
        });
    }
    Ok(match reply.get("n") {
        Some(Bson::Int32(n)) => (*n).max(0) as u64,
        Some(Bson::Int64(n)) => (*n).max(0) as u64,
        _ => 0,
    })
}

static LAST_LOOK: Mutex<Option<HashMap<String, Instant>>> = Mutex::new(None);

fn due(lane: &str) -> bool {
    let Ok(mut g) = LAST_LOOK.lock() else {
        return true;
    };
    let m = g.get_or_insert_with(HashMap::new);
    match m.get(lane) {
        Some(t) if t.elapsed() < SERVE_EVERY => false,
        _ => {
            m.insert(lane.to_string(), Instant::now());
            true
        }
    }
}

/// The lane's hook, called between two batches when every event up to `position` is applied
/// and none after it: serves pending repair requests at exactly that position. A request
/// that fails for good is marked failed (replication goes on); a transient failure leaves it
/// pending for the next batch.
pub async fn serve(ctx: &ApplyCtx, position: Timestamp) -> Result<(), EngineError> {
    if !due(&ctx.lane) {
        return Ok(());
    }
    // One attempt: a poll that fails is repeated at the next batch.
    let pending: Vec<Document> = match ctx
        .store
        .clone()
        .with_retry(std::time::Duration::ZERO)
        .find(
            REQUESTS,
            doc! {"plan": ctx.store.plan(), "lane": &ctx.lane, "state": "pending"},
            Some(doc! {"_id": 1}),
            Some(20),
        )
        .await
    {
        Ok(docs) => docs,
        Err(e) => {
            tracing::debug!(error = %e, "Could not read repair requests.");
            return Ok(());
        }
    };
    for req in pending {
        let Some(id) = req.get("_id").cloned() else {
            continue;
        };
        let ns = req.get_str("ns").ok().and_then(Namespace::parse);
        let ids = req.get_array("ids").cloned().unwrap_or_default();
        let result = match &ns {
            Some(ns) if ctx.selector.selects(&ns.db, &ns.coll) => {
                rewrite(
                    ctx.direction,
                    &ctx.source,
                    &ctx.dest,
                    ns,
                    &ids,
                    ReadAt::Snapshot(position),
                )
                .await
            }
            _ => Err(EngineError::Event(
                "the namespace is not replicated by this lane".into(),
            )),
        };
        let update = match result {
            Ok(r) => doc! {"$set": {
                "state": "done", "served_by": "lane", "position": position, "snapshot": r.snapshot,
                "written": r.written as i64, "deleted": r.deleted as i64, "served": DateTime::now(),
            }},
            Err(e) if e.is_transient() => {
                tracing::debug!(error = %e, "Repair request deferred (transient failure).");
                return Ok(());
            }
            Err(e) => doc! {"$set": {
                "state": "failed", "served_by": "lane", "error": e.to_string(), "served": DateTime::now(),
            }},
        };
        if let Err(e) = write_state(&ctx.store, REQUESTS, doc! {"_id": id}, update, false).await {
            tracing::debug!(error = %e, "Could not record a served repair request.");
            return Ok(());
        }
        tracing::info!(ns = ?ns.map(|n| n.to_string()), ids = ids.len(), position = %format!("{}.{}", position.time, position.increment), "Repair request served by the lane.");
    }
    Ok(())
}
