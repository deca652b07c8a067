//! Reading one `_id` range from both clusters: a streaming hash of the raw BSON bytes, and
//! on a mismatch a sorted merge that names the `_id`s that differ. Neither holds more than the
//! driver's current batch per side in memory.

use std::cmp::Ordering;

use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, RawDocumentBuf};
use mongodb::options::Hint;
use mongodb::{Client, Collection};
use xxhash_rust::xxh3::Xxh3;

use super::error::VerifyError;
use super::ranges::Range;
use crate::base::bson_order::cmp_values;
use crate::base::namespace::Namespace;
use crate::base::role::Role;

/// What one side holds in a range: field order counts, since the bytes are hashed as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Digest {
    pub count: u64,
    pub bytes: u64,
    pub hash: u64,
}

fn collection(client: &Client, ns: &Namespace) -> Collection<RawDocumentBuf> {
    client
        .database(&ns.db)
        .collection::<RawDocumentBuf>(&ns.coll)
}

/// The reads that make up `range`, in `_id` order. The bounds are always explicit: a
/// `min`-only index scan stops *before* `MaxKey` (verified on 6.0: the implied upper bound is
/// an exclusive `MaxKey`), so the last range adds an equality read of `{_id: MaxKey}`.
fn range_reads<'a>(
    coll: &'a Collection<RawDocumentBuf>,
    range: &Range,
) -> Vec<mongodb::action::Find<'a, RawDocumentBuf>> {
    let lower = range.lower.clone().unwrap_or(Bson::MinKey);
    let upper = range.upper.clone().unwrap_or(Bson::MaxKey);
    let main = coll
        .find(doc! {})
        .hint(Hint::Keys(doc! {"_id": 1}))
        .sort(doc! {"_id": 1})
        .batch_size(range.batch_docs.max(1))
        .min(doc! {"_id": lower})
        .max(doc! {"_id": upper});
    let mut reads = vec![main];
    if range.upper.is_none() {
        reads.push(
            coll.find(doc! {"_id": Bson::MaxKey})
                .hint(Hint::Keys(doc! {"_id": 1})),
        );
    }
    reads
}

/// Hashes every document of `range` in `_id` order. `exists == false`: the collection is not
/// on this side, which holds nothing.
pub async fn digest(
    side: Role,
    client: &Client,
    ns: &Namespace,
    range: &Range,
    exists: bool,
) -> Result<Digest, VerifyError> {
    if !exists {
        return Ok(Digest::default());
    }
    let what = "reading documents";
    let coll = collection(client, ns);
    let mut hasher = Xxh3::new();
    let mut out = Digest::default();
    for read in range_reads(&coll, range) {
        let mut cursor = read
            .batch()
            .await
            .map_err(|e| VerifyError::driver(side, Some(ns), what, &e))?;
        while let Some(batch) = cursor
            .try_next()
            .await
            .map_err(|e| VerifyError::driver(side, Some(ns), what, &e))?
        {
            let docs = batch
                .doc_slices()
                .map_err(|e| VerifyError::driver(side, Some(ns), what, &e))?;
            for d in docs {
                let d = d.map_err(|e| VerifyError::Server {
                    side,
                    ns: Some(ns.clone()),
                    what: what.into(),
                    detail: e.to_string(),
                    hint: "the server sent malformed BSON; run the same command again",
                    transient: false,
                })?;
                if let Some(doc) = d.as_document() {
                    // Documents are length-prefixed, so the concatenation is unambiguous.
                    hasher.update(doc.as_bytes());
                    out.count += 1;
                    out.bytes += doc.as_bytes().len() as u64;
                }
            }
        }
    }
    out.hash = hasher.digest();
    Ok(out)
}

/// A document-level difference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// On the source, not on the destination.
    Missing,
    /// Only on the destination.
    Extra,
    /// Same `_id`, different bytes (a value, a type or the field order).
    Different,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Missing => "missing",
            Kind::Extra => "extra",
            Kind::Different => "different",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "missing" => Some(Kind::Missing),
            "extra" => Some(Kind::Extra),
            "different" => Some(Kind::Different),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct RangeDiff {
    pub missing: u64,
    pub extra: u64,
    pub different: u64,
    /// The first `limit` differences, in `_id` order.
    pub samples: Vec<(Bson, Kind)>,
}

impl RangeDiff {
    pub fn total(&self) -> u64 {
        self.missing + self.extra + self.different
    }

    fn note(&mut self, id: Option<Bson>, kind: Kind, limit: usize) {
        match kind {
            Kind::Missing => self.missing += 1,
            Kind::Extra => self.extra += 1,
            Kind::Different => self.different += 1,
        }
        if self.samples.len() < limit {
            self.samples.push((id.unwrap_or(Bson::Null), kind));
        }
    }
}

struct Side1 {
    side: Role,
    ns: Namespace,
    /// The range's reads still to drain, in `_id` order.
    cursors: std::collections::VecDeque<mongodb::Cursor<RawDocumentBuf>>,
    current: Option<RawDocumentBuf>,
    /// Fail with [`VerifyError::Order`] when `_id`s do not ascend in simple BSON order.
    check_order: bool,
}

impl Side1 {
    async fn open(
        side: Role,
        client: &Client,
        ns: &Namespace,
        range: &Range,
        exists: bool,
    ) -> Result<Self, VerifyError> {
        Self::open_with(side, client, ns, range, exists, true).await
    }

    async fn open_unchecked(
        side: Role,
        client: &Client,
        ns: &Namespace,
        range: &Range,
        exists: bool,
    ) -> Result<Self, VerifyError> {
        Self::open_with(side, client, ns, range, exists, false).await
    }

    async fn open_with(
        side: Role,
        client: &Client,
        ns: &Namespace,
        range: &Range,
        exists: bool,
        check_order: bool,
    ) -> Result<Self, VerifyError> {
        let mut cursors = std::collections::VecDeque::new();
        if exists {
            let coll = collection(client, ns);
            for read in range_reads(&coll, range) {
                cursors.push_back(
                    read.await.map_err(|e| {
                        VerifyError::driver(side, Some(ns), "reading documents", &e)
                    })?,
                );
            }
        }
        let mut s = Side1 {
            side,
            ns: ns.clone(),
            cursors,
            current: None,
            check_order,
        };
        s.advance().await?;
        Ok(s)
    }

    /// Moves to the next document, checking that `_id`s ascend.
    async fn advance(&mut self) -> Result<(), VerifyError> {
        let mut next = None;
        while let Some(cursor) = self.cursors.front_mut() {
            next = cursor.try_next().await.map_err(|e| {
                VerifyError::driver(self.side, Some(&self.ns), "reading documents", &e)
            })?;
            if next.is_some() {
                break;
            }
            self.cursors.pop_front();
        }
        if let (true, Some(prev), Some(n)) = (self.check_order, &self.current, &next) {
            if cmp_ids(prev, n) != Ordering::Less {
                return Err(VerifyError::Order {
                    side: self.side,
                    ns: self.ns.clone(),
                });
            }
        }
        self.current = next;
        Ok(())
    }
}

fn cmp_ids(a: &RawDocumentBuf, b: &RawDocumentBuf) -> Ordering {
    match (a.get("_id").ok().flatten(), b.get("_id").ok().flatten()) {
        (Some(x), Some(y)) => cmp_values(x, y),
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

fn id_of(d: &RawDocumentBuf) -> Option<Bson> {
    d.get("_id")
        .ok()
        .flatten()
        .and_then(|v| Bson::try_from(v.to_raw_bson()).ok())
}

/// Names the differences in `range`: a merge of both sides in `_id` order, or, when the
/// server's `_id` order is not simple BSON order (a collection with a non-simple default
/// collation and string `_id`s), a hash join keyed by the `_id`'s bytes.
pub async fn diff_range(
    source: &Client,
    dest: &Client,
    ns: &Namespace,
    range: &Range,
    source_exists: bool,
    dest_exists: bool,
    limit: usize,
) -> Result<RangeDiff, VerifyError> {
    let both = Pair {
        source: ns,
        dest: ns,
    };
    match merge_range(source, dest, both, range, source_exists, dest_exists, limit).await {
        Err(VerifyError::Order { .. }) => {
            tracing::debug!(%ns, range = range.index, "`_id` order is collated; comparing by hash join");
            join_range(source, dest, both, range, source_exists, dest_exists, limit).await
        }
        other => other,
    }
}

/// [`diff_range`] between a source collection and a destination collection of another name
/// (a lane copies a renamed collection under the name it planned).
pub async fn diff_range_between(
    source: &Client,
    source_ns: &Namespace,
    dest: &Client,
    dest_ns: &Namespace,
    range: &Range,
    limit: usize,
) -> Result<RangeDiff, VerifyError> {
    let both = Pair {
        source: source_ns,
        dest: dest_ns,
    };
    match merge_range(source, dest, both, range, true, true, limit).await {
        Err(VerifyError::Order { .. }) => {
            join_range(source, dest, both, range, true, true, limit).await
        }
        other => other,
    }
}

/// The namespace read on each side.
#[derive(Clone, Copy)]
struct Pair<'a> {
    source: &'a Namespace,
    dest: &'a Namespace,
}

/// At most this many source `_id`s are held by a hash join (about 100 bytes each, so about
/// 25 MB per range in flight; ranges target 100,000 documents).
const JOIN_MAX_IDS: usize = 250_000;

/// The `_id` of `d` as a one-field document's bytes: equal bytes, equal `_id` (type included).
pub(crate) fn id_key(d: &mongodb::bson::RawDocument) -> Vec<u8> {
    let mut key = RawDocumentBuf::new();
    if let Ok(Some(id)) = d.get("_id") {
        key.append_ref("_id", id);
    }
    key.into_bytes()
}

fn key_id(key: &[u8]) -> Option<Bson> {
    let doc = RawDocumentBuf::from_bytes(key.to_vec()).ok()?;
    id_of(&doc)
}

/// Streams the source side of `range` into a map `_id` → document hash, then streams the
/// destination side against it. Used only when the merge cannot be (collated `_id` order);
/// refuses ranges with more than [`JOIN_MAX_IDS`] documents to keep memory bounded.
async fn join_range(
    source: &Client,
    dest: &Client,
    pair: Pair<'_>,
    range: &Range,
    source_exists: bool,
    dest_exists: bool,
    limit: usize,
) -> Result<RangeDiff, VerifyError> {
    let mut seen: std::collections::HashMap<Vec<u8>, (u64, bool)> = Default::default();
    let ns = pair.source;
    let mut src =
        Side1::open_unchecked(Role::Source, source, pair.source, range, source_exists).await?;
    while let Some(doc) = src.current.take() {
        seen.insert(
            id_key(&doc),
            (xxhash_rust::xxh3::xxh3_64(doc.as_bytes()), false),
        );
        if seen.len() > JOIN_MAX_IDS {
            return Err(VerifyError::Order {
                side: Role::Source,
                ns: ns.clone(),
            });
        }
        src.advance().await?;
    }
    drop(src);
    let mut out = RangeDiff::default();
    let mut dst =
        Side1::open_unchecked(Role::Destination, dest, pair.dest, range, dest_exists).await?;
    while let Some(doc) = dst.current.take() {
        let key = id_key(&doc);
        match seen.get_mut(&key) {
            None => out.note(id_of(&doc), Kind::Extra, limit),
            Some((hash, matched)) => {
                *matched = true;
                if *hash != xxhash_rust::xxh3::xxh3_64(doc.as_bytes()) {
                    out.note(id_of(&doc), Kind::Different, limit);
                }
            }
        }
        dst.advance().await?;
    }
    let mut missing: Vec<&Vec<u8>> = seen
        .iter()
        .filter(|(_, (_, m))| !m)
        .map(|(k, _)| k)
        .collect();
    missing.sort();
    for key in missing {
        out.note(key_id(key), Kind::Missing, limit);
    }
    Ok(out)
}

/// Streams both sides of `range` in `_id` order and merge-compares them.
async fn merge_range(
    source: &Client,
    dest: &Client,
    pair: Pair<'_>,
    range: &Range,
    source_exists: bool,
    dest_exists: bool,
    limit: usize,
) -> Result<RangeDiff, VerifyError> {
    let (a, b) = tokio::join!(
        Side1::open(Role::Source, source, pair.source, range, source_exists),
        Side1::open(Role::Destination, dest, pair.dest, range, dest_exists)
    );
    let (mut a, mut b) = (a?, b?);
    let mut out = RangeDiff::default();
    loop {
        let order = match (&a.current, &b.current) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(x), Some(y)) => cmp_ids(x, y),
        };
        match order {
            Ordering::Less => {
                out.note(a.current.as_ref().and_then(id_of), Kind::Missing, limit);
                a.advance().await?;
            }
            Ordering::Greater => {
                out.note(b.current.as_ref().and_then(id_of), Kind::Extra, limit);
                b.advance().await?;
            }
            Ordering::Equal => {
                if let (Some(x), Some(y)) = (&a.current, &b.current) {
                    if x.as_bytes() != y.as_bytes() {
                        out.note(id_of(x), Kind::Different, limit);
                    }
                }
                let (ra, rb) = tokio::join!(a.advance(), b.advance());
                ra?;
                rb?;
            }
        }
    }
    Ok(out)
}
