//! The state store: the control plane of a migration, in the reserved database on the
//! original destination, always written with majority write concern.
//!
//! Collections (all keyed by plan name):
//! - `runs`: one document per plan: fingerprint, step progress, lease, cutover transitions,
//!   and the status that `cutover status` reads;
//! - `lanes`: one per replication direction: start point, resume token, phase, counters;
//! - `partitions`: copy progress per `_id` range;
//! - `approvals`: `cutover approve` records;
//! - `relaxations`: what the sync relaxed on the destination (unique, TTL, capped);
//! - `repairs`, `repair_requests`, `resyncs`: `verify --repair` and `cutover resync`.

use std::time::Duration;

use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, DateTime, Document, Timestamp};
use mongodb::options::{ReadConcern, WriteConcern};
use mongodb::{Client, Collection, Database};
use serde::{Deserialize, Serialize};

use crate::base::role::Role;
use crate::cluster::retry::{Failure, Retry, Retryable};
use crate::cluster::server_error;
use crate::state::lease::{AcquireError, Fence, Holder, LeaseLost};
use crate::state::record::{Direction, RunRecord, RunState, StepStatus, RECORD_VERSION};

pub const RUNS: &str = "runs";
pub const LANES: &str = "lanes";
pub const PARTITIONS: &str = "partitions";
pub const APPROVALS: &str = "approvals";

/// The destination's temporary relaxations (unique/TTL/capped, restored at commit), one
/// record each ([`crate::engine::catalog::RelaxationStore`]).
pub const RELAXATIONS: &str = "relaxations";

/// The record collections a runner writes, each record with a `plan` field: stamped with
/// the epoch when a runner takes the lease, and fenced on every write.
pub const FENCED_RECORDS: [&str; 6] = [
    LANES,
    PARTITIONS,
    RELAXATIONS,
    "verify_runs",
    "verify_partitions",
    "verify_ranges",
];

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state database `{db}` on the destination: {detail}")]
    Db {
        db: String,
        detail: String,
        /// A network error or an election: worth retrying.
        transient: bool,
    },
    #[error(
        "plan `{plan}` is being run by another `cutover run` ({holder}; its lease runs until {until} \
         by the state store's clock unless renewed); wait for it to finish, or stop it first"
    )]
    Leased {
        plan: String,
        holder: String,
        until: String,
    },
    /// This runner lost the plan to another (fatal: stop at once).
    #[error(transparent)]
    LeaseLost(#[from] LeaseLost),
    /// A run document this build cannot read (newer layout, unknown value).
    #[error(transparent)]
    Record(#[from] crate::state::record::RecordError),
    #[error(
        "plan `{plan}` changed since its migration started (fingerprint {stored} → {current}): \
         clusters, options and steps must stay the same for the life of a migration"
    )]
    Changed {
        plan: String,
        stored: String,
        current: String,
    },
}

/// How one attempt of a state-store operation failed.
enum Attempt {
    Db(mongodb::error::Error),
    Lost(LeaseLost),
}

impl Retryable for Attempt {
    fn is_transient(&self) -> bool {
        matches!(self, Attempt::Db(e) if server_error::is_transient(e))
    }
    fn describe(&self) -> String {
        match self {
            Attempt::Db(e) => server_error::with_cause(e),
            Attempt::Lost(l) => l.to_string(),
        }
    }
}

/// A handle on the state database for one plan.
#[derive(Clone)]
pub struct StateStore {
    db: Database,
    plan: String,
    /// How long reads and writes of the run document retry transient failures (a lost
    /// connection to the destination, an election). Zero: fail at once (status, approve).
    retry: Duration,
    /// Set once this process holds the plan's lease: every write is then fenced.
    fence: Option<Fence>,
}

fn majority() -> WriteConcern {
    WriteConcern::majority()
}

impl StateStore {
    pub fn new(destination: &Client, database: &str, plan: &str) -> Self {
        let db = destination.database_with_options(
            database,
            mongodb::options::DatabaseOptions::builder()
                .write_concern(majority())
                .read_concern(ReadConcern::majority())
                .build(),
        );
        Self {
            db,
            plan: plan.to_string(),
            retry: Duration::ZERO,
            fence: None,
        }
    }

    /// The same store, retrying transient failures of the run document's reads and writes
    /// for `timeout` (`cutover run` passes `--retry-timeout`).
    pub fn with_retry(mut self, timeout: Duration) -> Self {
        self.retry = timeout;
        self
    }

    /// Runs an idempotent operation (given the attempt number, from 1), retrying transient
    /// failures with backoff for `self.retry` (see [`Retry`]). Every read and
    /// write of the store goes through it: a write is an upsert, a `$set` or a delete under
    /// the fencing condition, so sending it again after a lost reply changes nothing; an
    /// insert that finds its records already there after such a retry is told apart by
    /// [`StateStore::insert_many`], and a fenced write that matches nothing by
    /// [`Fence::confirm`] (this runner still holds the plan, or lost it).
    async fn retrying<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, StateError>
    where
        F: FnMut(u32) -> Fut,
        Fut: std::future::Future<Output = Result<T, mongodb::error::Error>>,
    {
        let mut retry = Retry::new(self.retry).on(Role::Destination);
        let what = format!("{what} (state database `{}`)", self.db.name());
        let fence = self.fence.clone();
        let attempt = |n: u32| {
            let fut = op(n);
            let fence = fence.clone();
            async move {
                // While the lease is unconfirmed every attempt waits (it is sent once this
                // runner is known to still hold the plan); a lost lease ends the retries.
                if let Some(f) = &fence {
                    f.ready().await.map_err(Attempt::Lost)?;
                }
                fut.await.map_err(Attempt::Db)
            }
        };
        match retry.run(&what, attempt).await {
            Ok(v) => Ok(v),
            Err(Failure::Permanent(Attempt::Lost(l)) | Failure::GaveUp(Attempt::Lost(l), _)) => {
                Err(StateError::LeaseLost(l))
            }
            Err(Failure::Permanent(Attempt::Db(e))) => Err(self.err(&e)),
            // The budget is spent: no caller retries it again.
            Err(Failure::GaveUp(Attempt::Db(_), g)) if g.attempts > 1 => Err(StateError::Db {
                db: self.db.name().to_string(),
                detail: g.to_string(),
                transient: false,
            }),
            Err(Failure::GaveUp(Attempt::Db(e), _)) => Err(self.err(&e)),
        }
    }

    pub fn plan(&self) -> &str {
        &self.plan
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    fn coll(&self, name: &str) -> Collection<Document> {
        self.db.collection(name)
    }

    /// Reads the first record of `coll` matching `filter` (in `sort` order, if given),
    /// retried through transient failures for the store's retry budget.
    pub async fn find_one(
        &self,
        coll: &str,
        filter: Document,
        sort: Option<Document>,
    ) -> Result<Option<Document>, StateError> {
        self.retrying(&format!("reading a `{coll}` record"), |_| {
            let (c, q, s) = (self.coll(coll), filter.clone(), sort.clone());
            async move {
                match s {
                    Some(s) => c.find_one(q).sort(s).await,
                    None => c.find_one(q).await,
                }
            }
        })
        .await
    }

    /// Reads the records of `coll` matching `filter`, in `sort` order, at most `limit` of
    /// them (all when `None`), retried as [`StateStore::find_one`].
    pub async fn find(
        &self,
        coll: &str,
        filter: Document,
        sort: Option<Document>,
        limit: Option<i64>,
    ) -> Result<Vec<Document>, StateError> {
        self.retrying(&format!("reading `{coll}` records"), |_| {
            let (c, q, s) = (self.coll(coll), filter.clone(), sort.clone());
            async move {
                let mut find = c.find(q);
                if let Some(s) = s {
                    find = find.sort(s);
                }
                if let Some(l) = limit {
                    find = find.limit(l);
                }
                find.await?.try_collect().await
            }
        })
        .await
    }

    /// Writes an operator's record (a resync request, `verify --repair`'s own records): made
    /// by a command outside any runner, so not fenced; runners only read such records and
    /// update them through the fenced [`StateStore::update_one`]. An upsert, so retried.
    pub async fn upsert_operator_record(
        &self,
        coll: &str,
        filter: Document,
        update: Document,
    ) -> Result<(), StateError> {
        self.retrying(&format!("writing a `{coll}` record"), |_| {
            let (c, q, u) = (self.coll(coll), filter.clone(), update.clone());
            async move { c.update_one(q, u).upsert(true).await }
        })
        .await
        .map(|_| ())
    }

    /// Inserts an operator's new record (see [`StateStore::upsert_operator_record`]). Sent
    /// once: an insert whose reply was lost is not told apart from a duplicate.
    pub async fn insert_operator_record(
        &self,
        coll: &str,
        doc: Document,
    ) -> Result<(), StateError> {
        self.coll(coll)
            .insert_one(doc)
            .await
            .map(|_| ())
            .map_err(|e| self.err(&e))
    }

    pub fn err(&self, e: &mongodb::error::Error) -> StateError {
        StateError::Db {
            db: self.db.name().to_string(),
            detail: server_error::with_cause(e),
            transient: server_error::is_transient(e),
        }
    }

    /// The plan's run document, if a migration was started.
    pub async fn run_doc(&self) -> Result<Option<Document>, StateError> {
        self.retrying("reading the run document", |_| {
            let (c, id) = (self.coll(RUNS), self.plan.clone());
            async move { c.find_one(doc! {"_id": id}).await }
        })
        .await
    }

    /// The plan's run record ([`RunRecord::started`] is false if no migration was started).
    pub async fn record(&self) -> Result<RunRecord, StateError> {
        match self.run_doc().await? {
            Some(d) => Ok(RunRecord::from_doc(&self.plan, &d)?),
            None => Ok(RunRecord::default()),
        }
    }

    /// The run record with [`RunRecord::lease_live`] decided by the state store's clock, and
    /// the raw document it was read from (see [`StateStore::run_doc_for_status`]).
    pub async fn record_live(&self) -> Result<(RunRecord, Option<Document>), StateError> {
        let doc = self.run_doc_for_status().await?;
        let mut rec = match &doc {
            Some(d) => RunRecord::from_doc(&self.plan, d)?,
            None => RunRecord::default(),
        };
        rec.lease_live = Some(rec.lease_live.unwrap_or(false));
        Ok((rec, doc))
    }

    /// The record of the plan's lane in `direction` (its position, copy figures), if any.
    pub async fn lane_doc(&self, direction: Direction) -> Result<Option<Document>, StateError> {
        let id = crate::state::record::lane_id(&self.plan, direction);
        self.coll(LANES)
            .find_one(doc! {"_id": id})
            .await
            .map_err(|e| self.err(&e))
    }

    /// Whether a runner holds the plan now (an unexpired lease), by the state store's clock.
    pub async fn runner_live(&self) -> Result<bool, StateError> {
        Ok(self.record_live().await?.0.lease_live == Some(true))
    }

    /// The run document for `cutover status`, with `lease_live` computed by the state
    /// store's clock (`lease.until > $$NOW`).
    pub async fn run_doc_for_status(&self) -> Result<Option<Document>, StateError> {
        use futures::TryStreamExt;
        let pipeline = vec![
            doc! {"$match": {"_id": &self.plan}},
            doc! {"$addFields": {
                "lease_live": {"$and": [
                    {"$eq": [{"$type": "$lease.until"}, "date"]},
                    {"$gt": ["$lease.until", "$$NOW"]},
                ]},
                // Expired, but its holder may still be trying to confirm it (see
                // `lease::stored_unconfirmed`).
                "lease_waiting": {"$and": [
                    {"$eq": [{"$type": "$lease.until"}, "date"]},
                    {"$lte": ["$lease.until", "$$NOW"]},
                    {"$gt": [
                        {"$add": ["$lease.until", {"$ifNull": ["$lease.patience_ms", 0_i64]}]},
                        "$$NOW"
                    ]},
                ]},
            }},
        ];
        let mut docs: Vec<Document> = self
            .coll(RUNS)
            .aggregate(pipeline)
            .await
            .map_err(|e| self.err(&e))?
            .try_collect()
            .await
            .map_err(|e| self.err(&e))?;
        Ok(docs.pop())
    }

    /// Starts the run record on first use (after [`StateStore::take_lease`]); refuses a plan whose fingerprint changed unless
    /// `accept_changed`.
    pub async fn open_run(
        &self,
        fingerprint: &str,
        steps: &[&str],
        accept_changed: bool,
    ) -> Result<Document, StateError> {
        if let Some(existing) = self.run_doc().await? {
            if let Ok(stored) = existing.get_str("fingerprint") {
                let stored = stored.to_string();
                if stored != fingerprint {
                    if !accept_changed {
                        return Err(StateError::Changed {
                            plan: self.plan.clone(),
                            stored,
                            current: fingerprint.to_string(),
                        });
                    }
                    self.set(doc! {"fingerprint": fingerprint}).await?;
                }
                return Ok(existing);
            }
        }
        // New (the lease created a bare run document): start the migration's record.
        let steps: Vec<Bson> = steps
            .iter()
            .map(|k| Bson::Document(doc! {"kind": *k, "status": StepStatus::Pending}))
            .collect();
        self.set(doc! {
            "version": RECORD_VERSION,
            "fingerprint": fingerprint,
            "steps": steps,
            "state": RunState::Idle,
            "direction": Direction::Forward,
        })
        .await?;
        Ok(self.run_doc().await?.unwrap_or_default())
    }

    /// Sets fields of the run document (`$set`).
    pub async fn set(&self, fields: Document) -> Result<(), StateError> {
        let mut fields = fields;
        fields.insert("updated", DateTime::now());
        if let Some(f) = &self.fence {
            f.check().map_err(StateError::LeaseLost)?;
            let matched = self
                .retrying("writing the run document", |_| {
                    let (c, q, u) = (
                        self.coll(RUNS),
                        f.run_filter(),
                        doc! {"$set": fields.clone()},
                    );
                    async move { c.update_one(q, u).await }
                })
                .await?
                .matched_count;
            if matched == 0 {
                self.confirm().await?;
            }
            return Ok(());
        }
        self.retrying("writing the run document", |_| {
            let (c, id, f) = (self.coll(RUNS), self.plan.clone(), fields.clone());
            async move {
                c.update_one(doc! {"_id": id}, doc! {"$set": f})
                    .upsert(true)
                    .await
            }
        })
        .await?;
        Ok(())
    }

    pub async fn unset(&self, fields: &[&str]) -> Result<(), StateError> {
        let mut u = Document::new();
        for f in fields {
            u.insert(*f, "");
        }
        let filter = match &self.fence {
            Some(f) => {
                f.check().map_err(StateError::LeaseLost)?;
                f.run_filter()
            }
            None => doc! {"_id": &self.plan},
        };
        let r = self
            .retrying("writing the run document", |_| {
                let (c, q, u) = (self.coll(RUNS), filter.clone(), doc! {"$unset": u.clone()});
                async move { c.update_one(q, u).await }
            })
            .await?;
        if r.matched_count == 0 {
            self.confirm().await?;
        }
        Ok(())
    }

    /// Marks step `i` with a status and optional error text.
    pub async fn step_status(
        &self,
        i: usize,
        status: StepStatus,
        error: Option<&str>,
    ) -> Result<(), StateError> {
        let mut fields = doc! {"status": status};
        match status {
            StepStatus::Running => {
                fields.insert("started", DateTime::now());
            }
            _ => {
                fields.insert("finished", DateTime::now());
            }
        }
        if let Some(e) = error {
            fields.insert("error", e);
        }
        self.set(crate::state::record::step_fields(i, fields)).await
    }

    /// Takes the plan's lease (creating the run document if needed): the epoch goes up by
    /// one and every state record of the plan is stamped with it. The store then writes
    /// through the returned [`Fence`] (see [`StateStore::with_fence`]).
    pub async fn take_lease(&self, holder: Holder, ttl: Duration) -> Result<Fence, StateError> {
        let created = DateTime::now();
        self.retrying("creating the run document", |_| {
            let (c, id) = (self.coll(RUNS), self.plan.clone());
            async move {
                c.update_one(
                    doc! {"_id": id},
                    doc! {"$setOnInsert": {"created": created}},
                )
                .upsert(true)
                .await
            }
        })
        .await?;
        let records: Vec<Collection<Document>> =
            FENCED_RECORDS.iter().map(|c| self.coll(c)).collect();
        // How long an unconfirmed lease is waited for: the store's retry budget.
        let patience = self.retry;
        // Taking the lease is retried like any write: an attempt whose reply was lost left the
        // lease with this holder, and the next attempt takes it again from itself (see
        // [`crate::state::lease::takeover_filter`]).
        let taken = self
            .retrying("taking the plan's lease", |_| {
                let (runs, records, holder) = (self.coll(RUNS), records.clone(), holder.clone());
                let plan = self.plan.clone();
                async move {
                    match Fence::acquire(runs, &records, &plan, holder, ttl, patience).await {
                        Ok(f) => Ok(Ok(f)),
                        Err(AcquireError::Held { holder, until }) => Ok(Err((holder, until))),
                        Err(AcquireError::Db(e)) => Err(e),
                    }
                }
            })
            .await?;
        taken.map_err(|(holder, until)| StateError::Leased {
            plan: self.plan.clone(),
            holder,
            until,
        })
    }

    /// The same store, writing through `fence`: every write is refused once another runner
    /// holds the plan.
    pub fn with_fence(mut self, fence: Fence) -> Self {
        self.fence = Some(fence);
        self
    }

    pub fn fence(&self) -> Option<&Fence> {
        self.fence.as_ref()
    }

    /// The time limit (`maxTimeMS`) for a destination data write sent now, so that it cannot
    /// land after another runner took the plan over: the server stops a command at its
    /// deadline, and the deadline falls before this runner's lease can have expired (its time
    /// left less a quarter of the TTL for the command's transit). With too little time left
    /// it waits for the next renewal (the renewal task runs meanwhile), also through an
    /// unconfirmed lease (the state store unreachable: see [`Fence`]); fails once the lease
    /// is lost or the wait gave up. `None` without a lease (no limit).
    pub async fn write_budget(&self) -> Result<Option<Duration>, StateError> {
        let Some(f) = &self.fence else {
            return Ok(None);
        };
        let margin = f.ttl() / 4;
        loop {
            f.ready().await.map_err(StateError::LeaseLost)?;
            let left = f.time_left().map_err(StateError::LeaseLost)?;
            if left >= margin + Duration::from_millis(500) {
                return Ok(Some(left - margin));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The local fence check (no I/O, no wait): Err once the lease is lost. A write sent
    /// after it must carry [`StateStore::write_budget`]'s deadline (which waits while the
    /// lease is unconfirmed); otherwise use [`StateStore::fence_ready`].
    pub fn check_fence(&self) -> Result<(), StateError> {
        match &self.fence {
            Some(f) => f.check().map_err(StateError::LeaseLost),
            None => Ok(()),
        }
    }

    /// Waits until this runner may act on a cluster: at once while its lease is confirmed,
    /// until it is confirmed again while unconfirmed (see [`Fence::ready`]). Err once lost.
    pub async fn fence_ready(&self) -> Result<(), StateError> {
        match &self.fence {
            Some(f) => f.ready().await.map_err(StateError::LeaseLost),
            None => Ok(()),
        }
    }

    /// A fenced write matched nothing: lost if another runner holds the plan.
    async fn confirm(&self) -> Result<(), StateError> {
        match &self.fence {
            Some(f) => f.confirm().await.map_err(StateError::LeaseLost),
            None => Ok(()),
        }
    }

    /// `update_one` on a record collection, fenced: refuses records of a newer epoch and
    /// stamps the record with this runner's.
    pub async fn update_one(
        &self,
        coll: &str,
        filter: Document,
        update: Document,
    ) -> Result<u64, StateError> {
        let (filter, update) = match &self.fence {
            Some(f) => {
                f.check().map_err(StateError::LeaseLost)?;
                (f.filter(filter), f.stamp(update))
            }
            None => (filter, update),
        };
        let r = self
            .retrying(&format!("writing a `{coll}` record"), |_| {
                let (c, q, u) = (self.coll(coll), filter.clone(), update.clone());
                async move { c.update_one(q, u).await }
            })
            .await?;
        if r.matched_count == 0 {
            self.confirm().await?;
        }
        Ok(r.matched_count)
    }

    /// `update_many` on a record collection, fenced (as [`Self::update_one`]).
    pub async fn update_many(
        &self,
        coll: &str,
        filter: Document,
        update: Document,
    ) -> Result<u64, StateError> {
        let (filter, update) = match &self.fence {
            Some(f) => {
                f.check().map_err(StateError::LeaseLost)?;
                (f.filter(filter), f.stamp(update))
            }
            None => (filter, update),
        };
        let r = self
            .retrying(&format!("writing `{coll}` records"), |_| {
                let (c, q, u) = (self.coll(coll), filter.clone(), update.clone());
                async move { c.update_many(q, u).await }
            })
            .await?;
        if r.matched_count == 0 {
            self.confirm().await?;
        }
        Ok(r.matched_count)
    }

    /// `delete_many` on a record collection, fenced.
    pub async fn delete_many(&self, coll: &str, filter: Document) -> Result<u64, StateError> {
        let filter = match &self.fence {
            Some(f) => {
                f.check().map_err(StateError::LeaseLost)?;
                f.filter(filter)
            }
            None => filter,
        };
        let r = self
            .retrying(&format!("deleting `{coll}` records"), |_| {
                let (c, q) = (self.coll(coll), filter.clone());
                async move { c.delete_many(q).await }
            })
            .await?;
        if r.deleted_count == 0 {
            self.confirm().await?;
        }
        Ok(r.deleted_count)
    }

    /// Inserts new records, stamped; first proves on the server that this runner still
    /// holds the plan.
    pub async fn insert_many(&self, coll: &str, docs: Vec<Document>) -> Result<(), StateError> {
        let docs = match &self.fence {
            Some(f) => {
                f.confirm().await.map_err(StateError::LeaseLost)?;
                docs.into_iter().map(|d| f.stamp_doc(d)).collect()
            }
            None => docs,
        };
        if docs.is_empty() {
            return Ok(());
        }
        let epoch = self.fence.as_ref().map(|f| f.epoch());
        self.retrying(&format!("inserting `{coll}` records"), |attempt| {
            let (c, docs) = (self.coll(coll), docs.clone());
            async move {
                if attempt == 1 {
                    return c.insert_many(docs).await.map(|_| ());
                }
                // A retry: an earlier attempt whose reply was lost may have inserted some or
                // all of them. Those already there with this runner's stamp are its own.
                match c.insert_many(docs.clone()).ordered(false).await {
                    Ok(_) => Ok(()),
                    Err(e) => match e.kind.as_ref() {
                        mongodb::error::ErrorKind::InsertMany(im)
                            if im.write_concern_error.is_none()
                                && im.write_errors.as_ref().is_some_and(|ws| {
                                    ws.iter()
                                        .all(|w| w.code == server_error::code::DUPLICATE_KEY)
                                }) =>
                        {
                            let ids: Vec<Bson> = im
                                .write_errors
                                .iter()
                                .flatten()
                                .filter_map(|w| {
                                    docs.get(w.index).and_then(|d| d.get("_id")).cloned()
                                })
                                .collect();
                            let mut q = doc! {"_id": {"$in": ids.clone()}};
                            if let Some(epoch) = epoch {
                                q.insert(crate::state::lease::EPOCH, epoch);
                            }
                            if c.count_documents(q).await? as usize == ids.len() {
                                Ok(())
                            } else {
                                Err(e)
                            }
                        }
                        _ => Err(e),
                    },
                }
            }
        })
        .await
    }

    /// Removes every record of this plan (for `run --restart`).
    pub async fn reset(&self) -> Result<(), StateError> {
        let prefix = format!("^{}/", regex::escape(&self.plan));
        // `repairs` and `repair_requests` are written by `verify --repair`, `resyncs` by
        // `resync`, not by a runner.
        for c in
            FENCED_RECORDS
                .iter()
                .chain([&APPROVALS, &"repairs", &"repair_requests", &"resyncs"])
        {
            self.delete_many(
                c,
                doc! {"$or": [{"_id": {"$regex": &prefix}}, {"plan": &self.plan}]},
            )
            .await?;
        }
        match &self.fence {
            // Keep the lease and the epoch (it never goes down); forget everything else.
            Some(f) => {
                f.check().map_err(StateError::LeaseLost)?;
                let r = self
                    .retrying("resetting the run document", |_| {
                        let (c, q) = (self.coll(RUNS), f.run_filter());
                        async move {
                            c.update_one(
                                q,
                                vec![doc! {"$project": {"_id": 1, "epoch": 1, "lease": 1, "created": 1}}],
                            )
                            .await
                        }
                    })
                    .await?;
                if r.matched_count == 0 {
                    self.confirm().await?;
                }
            }
            None => {
                self.retrying("deleting the run document", |_| {
                    let (c, id) = (self.coll(RUNS), self.plan.clone());
                    async move { c.delete_one(doc! {"_id": id}).await }
                })
                .await?;
            }
        }
        Ok(())
    }

    /// Records an approval for step `step` (index in the plan).
    pub async fn approve(&self, step: usize, host: &str, note: &str) -> Result<(), StateError> {
        let id = format!("{}/{step}", self.plan);
        let set = doc! {"plan": &self.plan, "step": step as i64, "when": DateTime::now(), "host": host, "note": note};
        self.retrying("recording the approval", |_| {
            let (c, id, set) = (self.coll(APPROVALS), id.clone(), set.clone());
            async move {
                c.update_one(doc! {"_id": id}, doc! {"$set": set})
                    .upsert(true)
                    .await
            }
        })
        .await?;
        Ok(())
    }

    pub async fn approval(&self, step: usize) -> Result<Option<Document>, StateError> {
        let id = format!("{}/{step}", self.plan);
        self.retrying("reading the approval", |_| {
            let (c, id) = (self.coll(APPROVALS), id.clone());
            async move { c.find_one(doc! {"_id": id}).await }
        })
        .await
    }
}

/// A stored BSON timestamp as `(seconds, increment)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ClusterTime(pub Timestamp);

impl ClusterTime {
    pub fn seconds(self) -> u32 {
        self.0.time
    }
}
