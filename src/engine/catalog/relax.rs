//! Temporary relaxations on the destination during sync, their records in the state
//! database, and their restore at commit.
//!
//! As mongosync does: unique indexes are built non-unique, TTL indexes (and the collection
//! TTL of clustered and time-series collections) without expiry, and capped collections
//! with a 1 PB size and no count limit, so that parallel, per-document application never
//! trips over a transient duplicate and the destination never deletes or evicts on its own.
//! Each relaxation is recorded (majority write concern) *before* the destination is
//! changed, so a crash leaves at worst a record for something not yet relaxed, which the
//! restore handles (setting a value that is already set is a no-op).

use futures::{StreamExt, TryStreamExt};
use mongodb::bson::{doc, Bson, Document};
use mongodb::options::{CollectionOptions, WriteConcern};
use mongodb::{Client, Collection, Database};
use serde::{Deserialize, Serialize};

use super::error::{
    code_of, CatalogError, CANNOT_CONVERT_INDEX_TO_UNIQUE, INDEX_NOT_FOUND, NAMESPACE_NOT_FOUND,
};
use super::list::list_indexes;
use crate::base::namespace::Namespace;
use crate::state::lease::Fence;

/// The collection of the state database that holds relaxation records.
pub use crate::state::RELAXATIONS as RELAXATIONS_COLLECTION;

/// Capped collections are created this large during sync (mongosync uses 1 PB too).
pub const RELAXED_CAPPED_SIZE: i64 = 1 << 50;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RelaxationKind {
    /// A unique index built non-unique.
    Unique,
    /// An index the source marked `prepareUnique` (not unique yet).
    PrepareUnique,
    /// A TTL index built without `expireAfterSeconds`.
    IndexTtl,
    /// A clustered or time-series collection created without `expireAfterSeconds`.
    CollectionTtl,
    /// A capped collection created with [`RELAXED_CAPPED_SIZE`] and no `max`.
    Capped,
}

impl RelaxationKind {
    fn as_str(self) -> &'static str {
        match self {
            RelaxationKind::Unique => "unique",
            RelaxationKind::PrepareUnique => "prepare_unique",
            RelaxationKind::IndexTtl => "index_ttl",
            RelaxationKind::CollectionTtl => "collection_ttl",
            RelaxationKind::Capped => "capped",
        }
    }
}

/// One relaxation and the source's real value to restore.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Relaxation {
    pub ns: Namespace,
    /// The index name, for index relaxations.
    #[serde(default)]
    pub index: Option<String>,
    pub kind: RelaxationKind,
    #[serde(default)]
    pub expire_after_seconds: Option<i64>,
    #[serde(default)]
    pub capped_size: Option<i64>,
    #[serde(default)]
    pub capped_max: Option<i64>,
}

impl Relaxation {
    pub fn unique(ns: &Namespace, index: &str) -> Self {
        Self::base(ns, Some(index), RelaxationKind::Unique)
    }

    pub fn prepare_unique(ns: &Namespace, index: &str) -> Self {
        Self::base(ns, Some(index), RelaxationKind::PrepareUnique)
    }

    pub fn index_ttl(ns: &Namespace, index: &str, seconds: i64) -> Self {
        Self {
            expire_after_seconds: Some(seconds),
            ..Self::base(ns, Some(index), RelaxationKind::IndexTtl)
        }
    }

    pub fn collection_ttl(ns: &Namespace, seconds: i64) -> Self {
        Self {
            expire_after_seconds: Some(seconds),
            ..Self::base(ns, None, RelaxationKind::CollectionTtl)
        }
    }

    pub fn capped(ns: &Namespace, size: Option<i64>, max: Option<i64>) -> Self {
        Self {
            capped_size: size,
            capped_max: max,
            ..Self::base(ns, None, RelaxationKind::Capped)
        }
    }

    fn base(ns: &Namespace, index: Option<&str>, kind: RelaxationKind) -> Self {
        Self {
            ns: ns.clone(),
            index: index.map(str::to_string),
            kind,
            expire_after_seconds: None,
            capped_size: None,
            capped_max: None,
        }
    }

    fn describe(&self) -> String {
        match (&self.index, self.kind) {
            (Some(i), k) => format!("{} index {i}: {}", self.ns, k.as_str()),
            (None, k) => format!("{}: {}", self.ns, k.as_str()),
        }
    }
}

/// Relaxation records of one plan and direction, in the state database.
#[derive(Clone, Debug)]
pub struct RelaxationStore {
    coll: Collection<Document>,
    plan: String,
    direction: String,
    /// Set in a runner: every write is refused once another runner holds the plan.
    fence: Option<Fence>,
}

impl RelaxationStore {
    /// The same store, writing through the runner's fence.
    pub fn with_fence(mut self, fence: Option<Fence>) -> Self {
        self.fence = fence;
        self
    }

    /// Applies the fence to a write's filter (`None`: unfenced).
    /// Waits while the lease is unconfirmed (see [`Fence`]).
    async fn fenced(&self, filter: Document) -> Result<Document, CatalogError> {
        match &self.fence {
            Some(f) => {
                f.ready().await?;
                Ok(f.filter(filter))
            }
            None => Ok(filter),
        }
    }

    /// A fenced write matched nothing: lost if another runner holds the plan.
    async fn confirm(&self) -> Result<(), CatalogError> {
        match &self.fence {
            Some(f) => Ok(f.confirm().await?),
            None => Ok(()),
        }
    }

    /// The relaxations one lane (`direction`) made on its destination.
    pub fn new(state_db: Database, plan: &str, direction: crate::state::record::Direction) -> Self {
        let opts = CollectionOptions::builder()
            .write_concern(WriteConcern::majority())
            .build();
        Self {
            coll: state_db.collection_with_options(RELAXATIONS_COLLECTION, opts),
            plan: plan.to_string(),
            direction: direction.as_str().to_string(),
            fence: None,
        }
    }

    fn id(&self, ns: &Namespace, index: Option<&str>, kind: RelaxationKind) -> Document {
        doc! {
            "plan": &self.plan,
            "direction": &self.direction,
            "ns": ns.to_string(),
            "index": index.unwrap_or(""),
            "kind": kind.as_str(),
        }
    }

    fn scope(&self) -> Document {
        doc! {"plan": &self.plan, "direction": &self.direction}
    }

    fn err(&self, what: &str, e: mongodb::error::Error) -> CatalogError {
        CatalogError::command(
            format!("{what} relaxation records"),
            format!("plan {}", self.plan),
            e,
        )
    }

    /// Records (or replaces) a relaxation.
    pub async fn record(&self, r: &Relaxation) -> Result<(), CatalogError> {
        let mut body =
            mongodb::bson::to_document(r).map_err(|e| CatalogError::malformed("relaxation", e))?;
        body.insert("_id", self.id(&r.ns, r.index.as_deref(), r.kind));
        body.insert("plan", &self.plan);
        body.insert("direction", &self.direction);
        if let Some(f) = &self.fence {
            // It may create the record: prove the lease on the server first.
            f.confirm().await?;
            body = f.stamp_doc(body);
        }
        let filter = self
            .fenced(doc! {"_id": body.get("_id").cloned().unwrap_or(Bson::Null)})
            .await?;
        match self.coll.replace_one(filter, body).upsert(true).await {
            Ok(_) => Ok(()),
            // A record of a newer runner's epoch exists: the upsert collided with it.
            Err(e)
                if crate::cluster::server_error::is_duplicate_key(&e) && self.fence.is_some() =>
            {
                self.confirm().await?;
                Err(self.err("write", e))
            }
            Err(e) => Err(self.err("write", e)),
        }
    }

    /// The record of one relaxation, if any.
    pub async fn get(
        &self,
        ns: &Namespace,
        index: Option<&str>,
        kind: RelaxationKind,
    ) -> Result<Option<Relaxation>, CatalogError> {
        let d = self
            .coll
            .find_one(doc! {"_id": self.id(ns, index, kind)})
            .await
            .map_err(|e| self.err("read", e))?;
        d.map(decode).transpose()
    }

    /// Every record of this plan and direction.
    pub async fn list(&self) -> Result<Vec<Relaxation>, CatalogError> {
        self.find(self.scope()).await
    }

    async fn find(&self, filter: Document) -> Result<Vec<Relaxation>, CatalogError> {
        let docs: Vec<Document> = self
            .coll
            .find(filter)
            .sort(doc! {"_id": 1})
            .await
            .map_err(|e| self.err("read", e))?
            .try_collect()
            .await
            .map_err(|e| self.err("read", e))?;
        docs.into_iter().map(decode).collect()
    }

    /// Removes one record (restored, or its object is gone).
    pub async fn remove(&self, r: &Relaxation) -> Result<(), CatalogError> {
        self.remove_id(&r.ns, r.index.as_deref(), r.kind).await
    }

    pub(crate) async fn remove_id(
        &self,
        ns: &Namespace,
        index: Option<&str>,
        kind: RelaxationKind,
    ) -> Result<(), CatalogError> {
        let r = self
            .coll
            .delete_one(self.fenced(doc! {"_id": self.id(ns, index, kind)}).await?)
            .await
            .map_err(|e| self.err("delete", e))?;
        if r.deleted_count == 0 {
            self.confirm().await?;
        }
        Ok(())
    }

    /// Forgets the records of one index (dropped).
    pub async fn forget_index(&self, ns: &Namespace, index: &str) -> Result<(), CatalogError> {
        let mut f = self.ns_filter(ns);
        f.insert("index", index);
        let r = self
            .coll
            .delete_many(self.fenced(f).await?)
            .await
            .map_err(|e| self.err("delete", e))?;
        if r.deleted_count == 0 {
            self.confirm().await?;
        }
        Ok(())
    }

    /// Forgets the records of a namespace (dropped).
    pub async fn forget_namespace(&self, ns: &Namespace) -> Result<(), CatalogError> {
        let r = self
            .coll
            .delete_many(self.fenced(self.ns_filter(ns)).await?)
            .await
            .map_err(|e| self.err("delete", e))?;
        if r.deleted_count == 0 {
            self.confirm().await?;
        }
        Ok(())
    }

    /// Moves the records of a renamed namespace.
    pub async fn rename_namespace(
        &self,
        from: &Namespace,
        to: &Namespace,
    ) -> Result<(), CatalogError> {
        for mut r in self.find(self.ns_filter(from)).await? {
            self.remove(&r).await?;
            r.ns = to.clone();
            self.record(&r).await?;
        }
        Ok(())
    }

    fn ns_filter(&self, ns: &Namespace) -> Document {
        let mut f = self.scope();
        f.insert("ns.db", &ns.db);
        f.insert("ns.coll", &ns.coll);
        f
    }
}

fn decode(mut d: Document) -> Result<Relaxation, CatalogError> {
    d.remove("_id");
    d.remove("plan");
    d.remove("direction");
    mongodb::bson::from_document(d).map_err(|e| CatalogError::malformed("relaxation record", e))
}

/// What [`restore_relaxations`] did.
#[derive(Clone, Debug, Default)]
pub struct RestoreReport {
    /// Restored relaxations, as `ns index name: kind`.
    pub restored: Vec<String>,
    /// Records whose collection or index no longer exists on the destination (dropped).
    pub gone: Vec<String>,
}

/// At commit: makes unique indexes unique again (`collMod` `prepareUnique`, then `unique`),
/// restores TTL `expireAfterSeconds` and capped limits. Idempotent; each record is removed
/// once restored. A duplicate key at the unique step is a divergence:
/// [`CatalogError::Duplicates`] with the `_id`s (the server's CannotConvertIndexToUnique
/// does not list them).
pub async fn restore_relaxations(
    dest: &Client,
    relax: &RelaxationStore,
) -> Result<RestoreReport, CatalogError> {
    let records = relax.list().await?;
    // Each collection's records in order, several collections at once (this runs inside the
    // write-blocked window: thousands of TTL indexes must not cost a round trip each in turn).
    let mut by_ns: Vec<(Namespace, Vec<&Relaxation>)> = Vec::new();
    for r in &records {
        match by_ns.iter_mut().find(|(ns, _)| *ns == r.ns) {
            Some((_, v)) => v.push(r),
            None => by_ns.push((r.ns.clone(), vec![r])),
        }
    }
    let all = &records;
    let groups: Vec<_> = by_ns
        .into_iter()
        .map(|(_, group)| async move {
            let mut out = Vec::new();
            for r in group {
                out.push((r.describe(), restore_one(dest, relax, r, all).await?));
            }
            Ok::<_, CatalogError>(out)
        })
        .collect();
    let done: Vec<Vec<(String, bool)>> = futures::stream::iter(groups)
        .buffer_unordered(super::CATALOG_CONCURRENCY)
        .try_collect()
        .await?;
    let mut report = RestoreReport::default();
    for (describe, present) in done.into_iter().flatten() {
        if present {
            report.restored.push(describe);
        } else {
            report.gone.push(describe);
        }
    }
    report.restored.sort();
    report.gone.sort();
    Ok(report)
}

/// Restores one record and removes it; `false` when its collection or index is gone.
async fn restore_one(
    dest: &Client,
    relax: &RelaxationStore,
    r: &Relaxation,
    records: &[Relaxation],
) -> Result<bool, CatalogError> {
    let done = match r.kind {
        RelaxationKind::Unique => restore_unique(dest, r).await?,
        RelaxationKind::PrepareUnique => {
            // Superseded by a unique record on the same index.
            let superseded = records
                .iter()
                .any(|u| u.kind == RelaxationKind::Unique && u.ns == r.ns && u.index == r.index);
            if superseded {
                Some(true)
            } else {
                coll_mod_index(dest, r, doc! {"prepareUnique": true}).await?
            }
        }
        RelaxationKind::IndexTtl => {
            let secs = r.expire_after_seconds.unwrap_or(0);
            coll_mod_index(dest, r, doc! {"expireAfterSeconds": secs}).await?
        }
        RelaxationKind::CollectionTtl => {
            let secs = r.expire_after_seconds.unwrap_or(0);
            coll_mod(dest, &r.ns, doc! {"expireAfterSeconds": secs}).await?
        }
        RelaxationKind::Capped => {
            let mut m = Document::new();
            if let Some(s) = r.capped_size {
                m.insert("cappedSize", s);
            }
            if let Some(x) = r.capped_max {
                m.insert("cappedMax", x);
            }
            if m.is_empty() {
                Some(true)
            } else {
                coll_mod(dest, &r.ns, m).await?
            }
        }
    };
    relax.remove(r).await?;
    tracing::info!(ns = %r.ns, index = r.index.as_deref().unwrap_or(""), kind = r.kind.as_str(), gone = done.is_none(), "restored relaxation");
    Ok(done.is_some())
}

/// `collMod` on the collection; `None` when it is gone.
async fn coll_mod(
    dest: &Client,
    ns: &Namespace,
    body: Document,
) -> Result<Option<bool>, CatalogError> {
    let mut cmd = doc! {"collMod": &ns.coll};
    cmd.extend(body);
    match crate::state::lease::run_majority(&dest.database(&ns.db), cmd.clone()).await {
        Ok(_) => Ok(Some(true)),
        Err(e)
            if matches!(
                code_of(&e),
                Some(NAMESPACE_NOT_FOUND) | Some(INDEX_NOT_FOUND)
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(CatalogError::command(format!("collMod {cmd}"), ns, e)),
    }
}

async fn coll_mod_index(
    dest: &Client,
    r: &Relaxation,
    change: Document,
) -> Result<Option<bool>, CatalogError> {
    let Some(name) = &r.index else {
        return Ok(None);
    };
    let mut index = doc! {"name": name};
    index.extend(change);
    coll_mod(dest, &r.ns, doc! {"index": index}).await
}

async fn restore_unique(dest: &Client, r: &Relaxation) -> Result<Option<bool>, CatalogError> {
    let Some(name) = r.index.as_deref() else {
        return Ok(None);
    };
    let Some(spec) = index_spec(dest, &r.ns, name).await? else {
        return Ok(None);
    };
    if spec.get_bool("unique").unwrap_or(false) {
        return Ok(Some(true));
    }
    if coll_mod_index(dest, r, doc! {"prepareUnique": true})
        .await?
        .is_none()
    {
        return Ok(None);
    }
    let cmd = doc! {"collMod": &r.ns.coll, "index": {"name": name, "unique": true}};
    match crate::state::lease::run_majority(&dest.database(&r.ns.db), cmd).await {
        Ok(_) => Ok(Some(true)),
        Err(e) if code_of(&e) == Some(CANNOT_CONVERT_INDEX_TO_UNIQUE) => {
            let ids = duplicate_ids(dest, &r.ns, &spec).await?;
            Err(CatalogError::Duplicates {
                ns: r.ns.clone(),
                index: name.to_string(),
                ids,
            })
        }
        Err(e)
            if matches!(
                code_of(&e),
                Some(NAMESPACE_NOT_FOUND) | Some(INDEX_NOT_FOUND)
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(CatalogError::command(
            format!("collMod unique index {name}"),
            &r.ns,
            e,
        )),
    }
}

pub(crate) async fn index_spec(
    client: &Client,
    ns: &Namespace,
    name: &str,
) -> Result<Option<Document>, CatalogError> {
    let Some(specs) = list_indexes(client, ns).await? else {
        return Ok(None);
    };
    Ok(specs
        .iter()
        .filter_map(|s| s.to_document().ok())
        .find(|d| d.get_str("name").ok() == Some(name)))
}

/// The `_id`s of documents sharing a key of `index` (at most 1000), grouped with the
/// index's collation and restricted to its partial filter, as a unique index would see them.
async fn duplicate_ids(
    dest: &Client,
    ns: &Namespace,
    index: &Document,
) -> Result<Vec<Bson>, CatalogError> {
    let key = index
        .get_document("key")
        .map_err(|e| CatalogError::malformed("index spec", e))?;
    let mut group_key = Document::new();
    let mut exists = Vec::new();
    for (i, field) in key.keys().enumerate() {
        group_key.insert(
            format!("k{i}"),
            doc! {"$ifNull": [format!("${field}"), Bson::Null]},
        );
        exists.push(doc! {field.as_str(): {"$exists": true}});
    }
    let mut pipeline = Vec::new();
    if let Ok(p) = index.get_document("partialFilterExpression") {
        pipeline.push(doc! {"$match": p.clone()});
    }
    if index.get_bool("sparse").unwrap_or(false) {
        pipeline.push(doc! {"$match": {"$or": exists}});
    }
    pipeline.push(doc! {"$group": {"_id": group_key, "ids": {"$push": "$_id"}, "n": {"$sum": 1}}});
    pipeline.push(doc! {"$match": {"n": {"$gt": 1}}});
    pipeline.push(doc! {"$limit": 100});
    let collation = index
        .get_document("collation")
        .cloned()
        .unwrap_or_else(|_| doc! {"locale": "simple"});
    let cmd = doc! {"aggregate": &ns.coll, "pipeline": pipeline, "cursor": {}, "collation": collation, "allowDiskUse": true};
    let groups: Vec<Document> = dest
        .database(&ns.db)
        .run_cursor_command(cmd)
        .await
        .map_err(|e| CatalogError::command("finding duplicate keys", ns, e))?
        .try_collect()
        .await
        .map_err(|e| CatalogError::command("finding duplicate keys", ns, e))?;
    let mut ids = Vec::new();
    for g in groups {
        if let Ok(a) = g.get_array("ids") {
            ids.extend(a.iter().cloned());
        }
        if ids.len() >= 1000 {
            break;
        }
    }
    ids.truncate(1000);
    Ok(ids)
}
