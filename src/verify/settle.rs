//! Lag-aware confirmation of differences while replication is still running.
//!
//! A range read from both sides while the source keeps changing can differ only because the
//! destination has not applied the latest events yet. Re-reading whole ranges races the
//! writes again, so differences are confirmed per document instead: after each round waits
//! until replication has applied everything up to a source time taken after the previous
//! read, a document is settled when both sides agree; it is a confirmed difference when it
//! still differs although its source version did not change since the previous round (so the
//! destination had every write to it). A document still changing after every round is
//! reported too: cutover cannot prove it equal.

use std::collections::HashMap;

use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, RawDocumentBuf};
use mongodb::Client;

use super::error::VerifyError;
use super::scan::{id_key, Kind, RangeDiff};
use super::{operation_time, VerifyOptions};
use crate::base::bson_order::cmp_values;
use crate::base::namespace::Namespace;
use crate::base::role::Role;

/// At most this many differing documents are confirmed one by one; beyond it the range's
/// differences are reported as found.
pub const MAX_SETTLE_IDS: usize = 10_000;

type Docs = HashMap<Vec<u8>, RawDocumentBuf>;

async fn read_ids(
    side: Role,
    client: &Client,
    ns: &Namespace,
    ids: &[Bson],
) -> Result<Docs, VerifyError> {
    let mut out = Docs::new();
    for chunk in ids.chunks(1000) {
        let coll = client
            .database(&ns.db)
            .collection::<RawDocumentBuf>(&ns.coll);
        let mut cur = coll
            .find(doc! {"_id": {"$in": chunk.to_vec()}})
            .await
            .map_err(|e| VerifyError::driver(side, Some(ns), "re-reading documents", &e))?;
        while let Some(d) = cur
            .try_next()
            .await
            .map_err(|e| VerifyError::driver(side, Some(ns), "re-reading documents", &e))?
        {
            out.insert(id_key(&d), d);
        }
    }
    Ok(out)
}

/// The document whose `_id` equals `id`: by exact bytes, else by BSON comparison (an int and
/// a long of the same value are the same `_id` to the server, and to the range merge).
fn lookup<'a>(docs: &'a Docs, id: &Bson) -> Option<&'a RawDocumentBuf> {
    if let Some(d) = docs.get(&key_of(id)) {
        return Some(d);
    }
    let raw = mongodb::bson::RawBson::try_from(id.clone()).ok()?;
    docs.values().find(|d| {
        d.get("_id")
            .ok()
            .flatten()
            .is_some_and(|v| cmp_values(v, raw.as_raw_bson_ref()) == std::cmp::Ordering::Equal)
    })
}

fn key_of(id: &Bson) -> Vec<u8> {
    let mut k = RawDocumentBuf::new();
    if let Ok(raw) = mongodb::bson::RawBson::try_from(id.clone()) {
        k.append("_id", raw);
    }
    k.into_bytes()
}

/// Confirms the differences of `diff` (its samples must hold every differing `_id`) and
/// returns only the confirmed ones.
pub async fn settle(
    source: &Client,
    dest: &Client,
    ns: &Namespace,
    diff: RangeDiff,
    opts: &VerifyOptions,
) -> Result<RangeDiff, VerifyError> {
    let mut pending: Vec<Bson> = diff.samples.iter().map(|(id, _)| id.clone()).collect();
    let mut previous: Docs = read_ids(Role::Source, source, ns, &pending).await?;
    let mut confirmed: Vec<(Bson, Kind)> = Vec::new();
    let rounds = opts.rechecks.max(1) + 2;
    for round in 0..rounds {
        if pending.is_empty() {
            break;
        }
        let t = operation_time(source).await;
        opts.replication.wait_replicated(t).await;
        let (s, d) = tokio::join!(
            read_ids(Role::Source, source, ns, &pending),
            read_ids(Role::Destination, dest, ns, &pending)
        );
        let (s, d) = (s?, d?);
        let last = round + 1 == rounds;
        let mut still = Vec::new();
        for id in pending {
            let (sd, dd) = (lookup(&s, &id), lookup(&d, &id));
            let same = match (sd, dd) {
                (Some(a), Some(b)) => a.as_bytes() == b.as_bytes(),
                (None, None) => true,
                _ => false,
            };
            if same {
                continue;
            }
            let unchanged = match (sd, lookup(&previous, &id)) {
                (Some(a), Some(b)) => a.as_bytes() == b.as_bytes(),
                (None, None) => true,
                _ => false,
            };
            if unchanged || last {
                let kind = match (sd, dd) {
                    (Some(_), None) => Kind::Missing,
                    (None, Some(_)) => Kind::Extra,
                    _ => Kind::Different,
                };
                confirmed.push((id, kind));
            } else {
                still.push(id);
            }
        }
        pending = still;
        previous = s;
    }
    let mut out = RangeDiff::default();
    for (id, kind) in confirmed {
        match kind {
            Kind::Missing => out.missing += 1,
            Kind::Extra => out.extra += 1,
            Kind::Different => out.different += 1,
        }
        if out.samples.len() < opts.sample_limit() {
            out.samples.push((id, kind));
        }
    }
    Ok(out)
}
