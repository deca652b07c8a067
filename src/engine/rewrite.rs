//! Rewriting documents on the destination from the source by `_id`: the core of
//! `verify --repair` ([`crate::engine::repair`]) and of the recovery from a lost resume point
//! ([`crate::engine::recover`]). Every document found on the source is written as a whole
//! replacement (an upsert, so the field order is the source's), every one gone is deleted.

use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, RawArrayBuf, RawDocumentBuf, Timestamp};
use mongodb::error::ErrorKind;
use mongodb::Client;
use serde::Serialize;

use crate::base::bson_order::cmp_values;
use crate::base::namespace::Namespace;
use crate::cluster::server_error::code::{SNAPSHOT_TOO_OLD, SNAPSHOT_UNAVAILABLE};
use crate::engine::error::{cluster_err, write_error, EngineError};
use crate::engine::translate::{self, Stmt};
use crate::state::record::Direction;

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

fn snapshot_gone(e: &mongodb::error::Error) -> bool {
    matches!(e.kind.as_ref(), ErrorKind::Command(c) if c.code == SNAPSHOT_TOO_OLD || c.code == SNAPSHOT_UNAVAILABLE)
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
                    .map_err(|e| cluster_err(direction.reads(), reading.clone(), &e))?
            }
            Err(e) => return Err(cluster_err(direction.reads(), reading, &e)),
        },
        ReadAt::Majority => read_source(source, source_ns, ids, None)
            .await
            .map_err(|e| cluster_err(direction.reads(), reading, &e))?,
    };
    let mut updates = RawArrayBuf::new();
    let mut n_updates = 0u64;
    let mut deletes = RawArrayBuf::new();
    let mut n_deletes = 0u64;
    for id in ids {
        let raw_id = mongodb::bson::RawBson::try_from(id.clone())
            .map_err(|e| EngineError::Corrupt(format!("`{ns}`: _id {id}: {e}")))?;
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
                match translate::upsert(&key, d) {
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
        .map_err(|e| cluster_err(direction.writes(), doing.clone(), &e))?;
    if let Ok(errs) = reply.get_array("writeErrors") {
        if let Some(e) = errs.iter().find_map(Bson::as_document) {
            return Err(write_error(
                direction.writes(),
                ns,
                format!("(statement {})", e.get_i32("index").unwrap_or(0)),
                e.get_i32("code").unwrap_or(0),
                e.get_str("errmsg").unwrap_or_default(),
            ));
        }
    }
    if let Ok(wce) = reply.get_document("writeConcernError") {
        return Err(EngineError::Cluster {
            cluster: direction.writes(),
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
