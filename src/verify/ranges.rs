//! Splitting a collection into `_id` ranges: the unit of parallelism and of resumption.
//!
//! A range is `[lower, upper)` in `_id` **index-key order**, read with `find`, `hint({_id:1})`,
//! `min({_id: lower})` and `max({_id: upper})`. Index bounds follow BSON comparison order
//! across every type, so unlike a `{_id: {$gte: a, $lt: b}}` filter (which only matches `_id`s
//! of the bounds' type bracket: "type bracketing") the ranges together cover every document
//! whatever the mix of `_id` types. The first range has no lower bound and the last no upper
//! bound. Split points are sampled (`$sample`, then sorted by the server in `_id` order).

use std::cmp::Ordering;

use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document, RawDocumentBuf};
use mongodb::Client;

use super::error::VerifyError;
use crate::base::bson_order::cmp_values;
use crate::base::namespace::Namespace;
use crate::base::role::Role;

/// One `_id` range of a namespace.
#[derive(Clone, Debug)]
pub struct Range {
    pub index: usize,
    pub batch_docs: u32,
    pub lower: Option<Bson>,
    pub upper: Option<Bson>,
}

/// The ranges between sorted split points.
pub fn ranges_from_bounds(bounds: &[Bson], batch_docs: u32) -> Vec<Range> {
    (0..=bounds.len())
        .map(|i| Range {
            index: i,
            batch_docs,
            lower: if i == 0 {
                None
            } else {
                bounds.get(i - 1).cloned()
            },
            upper: bounds.get(i).cloned(),
        })
        .collect()
}

/// How big ranges should be.
#[derive(Clone, Copy, Debug)]
pub struct Sizing {
    pub range_docs: u64,
    pub range_bytes: u64,
    pub max_ranges: u64,
}

fn number(d: &Document, key: &str) -> u64 {
    match d.get(key) {
        Some(Bson::Int32(i)) => u64::try_from(*i).unwrap_or(0),
        Some(Bson::Int64(i)) => u64::try_from(*i).unwrap_or(0),
        Some(Bson::Double(f)) if *f > 0.0 => *f as u64,
        _ => 0,
    }
}

/// How a namespace is read: its sorted, distinct split points and the documents per batch.
#[derive(Clone, Debug, Default)]
pub struct Partition {
    pub bounds: Vec<Bson>,
    /// Documents per `find` batch, so a batch holds about [`BATCH_BYTES`] (the server caps a
    /// batch at 16 MiB anyway): memory per range in flight stays small.
    pub batch_docs: u32,
}

/// Target bytes per driver batch.
pub const BATCH_BYTES: u64 = 4 << 20;

fn batch_docs(count: u64, size: u64) -> u32 {
    let avg = size.checked_div(count).unwrap_or(1).max(1);
    u32::try_from((BATCH_BYTES / avg).clamp(16, 10_000)).unwrap_or(10_000)
}

/// Split points for `ns`, from the cluster that has it (the source when both).
pub async fn split_points(
    side: Role,
    client: &Client,
    ns: &Namespace,
    sizing: Sizing,
) -> Result<Partition, VerifyError> {
    let db = client.database(&ns.db);
    let stats = match db.run_command(doc! {"collStats": &ns.coll}).await {
        Ok(s) => s,
        Err(e) => {
            return Err(VerifyError::driver(
                side,
                Some(ns),
                "reading collection statistics",
                &e,
            ))
        }
    };
    let count = number(&stats, "count");
    let size = number(&stats, "size");
    let wanted = count
        .div_ceil(sizing.range_docs.max(1))
        .max(size.div_ceil(sizing.range_bytes.max(1)))
        .clamp(1, sizing.max_ranges.max(1));
    let batch_docs = batch_docs(count, size);
    if wanted <= 1 {
        return Ok(Partition {
            bounds: Vec::new(),
            batch_docs,
        });
    }
    // Ten samples per range smooth the quantiles; capped to keep the sample small.
    let sample = (wanted * 10).min(20_000);
    let mut cursor = db
        .collection::<Document>(&ns.coll)
        .aggregate([
            doc! {"$sample": {"size": sample as i64}},
            doc! {"$project": {"_id": 1}},
            doc! {"$sort": {"_id": 1}},
        ])
        .with_type::<RawDocumentBuf>()
        .await
        .map_err(|e| VerifyError::driver(side, Some(ns), "sampling `_id` split points", &e))?;
    let mut ids: Vec<RawDocumentBuf> = Vec::new();
    while let Some(d) = cursor
        .try_next()
        .await
        .map_err(|e| VerifyError::driver(side, Some(ns), "sampling `_id` split points", &e))?
    {
        ids.push(d);
    }
    let mut bounds: Vec<RawDocumentBuf> = Vec::new();
    for i in 1..wanted {
        let at = (i as usize * ids.len()) / wanted as usize;
        let Some(candidate) = ids.get(at) else {
            continue;
        };
        let distinct = match bounds.last() {
            None => true,
            Some(prev) => cmp_id(prev, candidate) == Ordering::Less,
        };
        if distinct {
            bounds.push(candidate.clone());
        }
    }
    let bounds = bounds
        .iter()
        .filter_map(|d| d.get("_id").ok().flatten())
        .filter_map(|v| Bson::try_from(v.to_raw_bson()).ok())
        .collect();
    Ok(Partition { bounds, batch_docs })
}

fn cmp_id(a: &RawDocumentBuf, b: &RawDocumentBuf) -> Ordering {
    match (a.get("_id").ok().flatten(), b.get("_id").ok().flatten()) {
        (Some(x), Some(y)) => cmp_values(x, y),
        _ => Ordering::Equal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_everything_between_bounds() {
        let r = ranges_from_bounds(&[Bson::Int32(10), Bson::String("m".into())], 100);
        assert_eq!(r.len(), 3);
        assert!(r[0].lower.is_none() && r[0].upper == Some(Bson::Int32(10)));
        assert!(
            r[1].lower == Some(Bson::Int32(10)) && r[1].upper == Some(Bson::String("m".into()))
        );
        assert!(r[2].upper.is_none());
        assert_eq!(ranges_from_bounds(&[], 100).len(), 1);
    }

    #[test]
    fn batches_hold_about_four_mebibytes() {
        assert_eq!(batch_docs(1000, 1000 * 1024), 4096);
        assert_eq!(batch_docs(10, 10 * (8 << 20)), 16);
        assert_eq!(batch_docs(0, 0), 10_000);
    }
}
