//! Splitting a collection into `_id` ranges: the unit of parallelism and of resumption.
//!
//! A range is `[lower, upper)` in `_id` **index-key order**, read with `find` + `hint({_id:1})`
//! + `min({_id: lower})` / `max({_id: upper})`. Index bounds follow BSON comparison order
//! across every type, so unlike a `{_id: {$gte: a, $lt: b}}` filter (which only matches `_id`s
//! of the bounds' type bracket: "type bracketing") the ranges together cover every document
//! whatever the mix of `_id` types. The first range has no lower bound and the last no upper
//! bound. Split points are sampled (`$sample`, then sorted by the server in `_id` order).

use std::cmp::Ordering;

use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document, RawDocumentBuf};
use mongodb::Client;

use super::error::{Side, VerifyError};
use super::order::cmp_values;
use crate::namespace::Namespace;

/// One `_id` range of a namespace.
#[derive(Clone, Debug)]
pub struct Range {
    pub index: usize,
    pub lower: Option<Bson>,
    pub upper: Option<Bson>,
}

/// The ranges between sorted split points.
pub fn ranges_from_bounds(bounds: &[Bson]) -> Vec<Range> {
    (0..=bounds.len())
        .map(|i| Range {
            index: i,
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

/// Sorted, distinct split points for `ns`, from the cluster that has it (the source when both).
pub async fn split_points(
    side: Side,
    client: &Client,
    ns: &Namespace,
    sizing: Sizing,
) -> Result<Vec<Bson>, VerifyError> {
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
    if wanted <= 1 {
        return Ok(Vec::new());
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
    Ok(bounds
        .iter()
        .filter_map(|d| d.get("_id").ok().flatten())
        .filter_map(|v| Bson::try_from(v.to_raw_bson()).ok())
        .collect())
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
        let r = ranges_from_bounds(&[Bson::Int32(10), Bson::String("m".into())]);
        assert_eq!(r.len(), 3);
        assert!(r[0].lower.is_none() && r[0].upper == Some(Bson::Int32(10)));
        assert!(
            r[1].lower == Some(Bson::Int32(10)) && r[1].upper == Some(Bson::String("m".into()))
        );
        assert!(r[2].upper.is_none());
        assert_eq!(ranges_from_bounds(&[]).len(), 1);
    }
}
