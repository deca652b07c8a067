//! The state store: the control plane of a migration, in the reserved database on the
//! original destination, always written with majority write concern.
//!
//! Collections (all keyed by plan name):
//! - `runs`: one document per plan: fingerprint, step progress, lease, cutover transitions,
//!   and the status that `cutover status` reads;
//! - `lanes`: one per replication direction: start point, resume token, phase, counters;
//! - `partitions`: copy progress per `_id` range;
//! - `approvals`: `cutover approve` records;
//! - `relaxations`: what the sync relaxed on the destination (unique, TTL, capped).

use std::time::{Duration, SystemTime};

use mongodb::bson::{doc, Bson, DateTime, Document, Timestamp};
use mongodb::options::{ReadConcern, ReturnDocument, WriteConcern};
use mongodb::{Client, Collection, Database};
use serde::{Deserialize, Serialize};

use crate::cluster::short_message;

pub const RUNS: &str = "runs";
pub const LANES: &str = "lanes";
pub const PARTITIONS: &str = "partitions";
pub const APPROVALS: &str = "approvals";

/// How long a runner's lease lasts without renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(20);

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
        "plan `{plan}` is being run by another `cutover run` ({holder}, lease until {until}); \
         wait for it to finish, or stop it first"
    )]
    Leased {
        plan: String,
        holder: String,
        until: String,
    },
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

/// A handle on the state database for one plan.
#[derive(Clone)]
pub struct StateStore {
    db: Database,
    plan: String,
    /// How long reads and writes of the run document retry transient failures (a lost
    /// connection to the destination, an election). Zero: fail at once (status, approve).
    retry: Duration,
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
        }
    }

    /// The same store, retrying transient failures of the run document's reads and writes
    /// for `timeout` (`cutover run` passes `--retry-timeout`).
    pub fn with_retry(mut self, timeout: Duration) -> Self {
        self.retry = timeout;
        self
    }

    /// Runs an idempotent operation, retrying transient failures with backoff for `self.retry`.
    async fn retrying<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, StateError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, mongodb::error::Error>>,
    {
        let started = std::time::Instant::now();
        let mut delay = Duration::from_millis(200);
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e)
                    if crate::engine::error::is_transient(&e) && started.elapsed() < self.retry =>
                {
                    tracing::warn!(what, error = %short_message(&e), "State store unavailable; retrying.");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(self.err(&e)),
            }
        }
    }

    pub fn plan(&self) -> &str {
        &self.plan
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    pub fn coll(&self, name: &str) -> Collection<Document> {
        self.db.collection(name)
    }

    pub fn err(&self, e: &mongodb::error::Error) -> StateError {
        StateError::Db {
            db: self.db.name().to_string(),
            detail: short_message(e),
            transient: crate::engine::error::is_transient(e),
        }
    }

    /// The plan's run document, if a migration was started.
    pub async fn run_doc(&self) -> Result<Option<Document>, StateError> {
        self.retrying("reading the run document", || {
            let (c, id) = (self.coll(RUNS), self.plan.clone());
            async move { c.find_one(doc! {"_id": id}).await }
        })
        .await
    }

    /// Creates the run document on first use; refuses a plan whose fingerprint changed unless
    /// `accept_changed`.
    pub async fn open_run(
        &self,
        fingerprint: &str,
        steps: &[&str],
        accept_changed: bool,
    ) -> Result<Document, StateError> {
        if let Some(existing) = self.run_doc().await? {
            let stored = existing
                .get_str("fingerprint")
                .unwrap_or_default()
                .to_string();
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
        let steps: Vec<Bson> = steps
            .iter()
            .map(|k| Bson::Document(doc! {"kind": *k, "status": "pending"}))
            .collect();
        let d = doc! {
            "_id": &self.plan,
            "version": 1,
            "fingerprint": fingerprint,
            "created": DateTime::now(),
            "steps": steps,
            "state": "IDLE",
            "direction": "forward",
        };
        match self.coll(RUNS).insert_one(d.clone()).await {
            Ok(_) => Ok(d),
            // Another runner created it first: read theirs.
            Err(e) if is_duplicate_key(&e) => self.run_doc().await?.ok_or_else(|| self.err(&e)),
            Err(e) => Err(self.err(&e)),
        }
    }

    /// Sets fields of the run document (`$set`).
    pub async fn set(&self, fields: Document) -> Result<(), StateError> {
        let mut fields = fields;
        fields.insert("updated", DateTime::now());
        self.retrying("writing the run document", || {
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
        self.coll(RUNS)
            .update_one(doc! {"_id": &self.plan}, doc! {"$unset": u})
            .await
            .map_err(|e| self.err(&e))?;
        Ok(())
    }

    /// Marks step `i` with a status (`running`, `done`, `failed`) and optional error text.
    pub async fn step_status(
        &self,
        i: usize,
        status: &str,
        error: Option<&str>,
    ) -> Result<(), StateError> {
        let mut fields = doc! { format!("steps.{i}.status"): status };
        match status {
            "running" => {
                fields.insert(format!("steps.{i}.started"), DateTime::now());
            }
            _ => {
                fields.insert(format!("steps.{i}.finished"), DateTime::now());
            }
        }
        if let Some(e) = error {
            fields.insert(format!("steps.{i}.error"), e);
        }
        self.set(fields).await
    }

    /// Takes (or renews) the lease that keeps two runners off one plan. A lease held by a
    /// process on this host that no longer exists is taken over at once (kill -9, crash).
    pub async fn acquire_lease(&self, owner: &Lease) -> Result<(), StateError> {
        let now = DateTime::now();
        let until = DateTime::from_system_time(SystemTime::now() + LEASE_TTL);
        let mut takeover = vec![
            doc! {"lease": {"$exists": false}},
            doc! {"lease.until": {"$lt": now}},
            doc! {"lease.id": &owner.id},
        ];
        if let Some(current) = self
            .run_doc()
            .await?
            .and_then(|d| d.get_document("lease").ok().cloned())
        {
            let same_host = current.get_str("host").ok() == Some(owner.host.as_str());
            let pid = current.get_i64("pid").unwrap_or(0);
            if same_host && pid > 0 && !process_alive(pid) {
                takeover.push(doc! {"lease.id": current.get_str("id").unwrap_or_default()});
            }
        }
        let lease = doc! {"id": &owner.id, "host": &owner.host, "pid": owner.pid, "until": until};
        let r = self
            .coll(RUNS)
            .find_one_and_update(
                doc! {"_id": &self.plan, "$or": takeover},
                doc! {"$set": {"lease": lease}},
            )
            .return_document(ReturnDocument::After)
            .await
            .map_err(|e| self.err(&e))?;
        if r.is_some() {
            return Ok(());
        }
        let holder = self
            .run_doc()
            .await?
            .and_then(|d| d.get_document("lease").ok().cloned())
            .unwrap_or_default();
        Err(StateError::Leased {
            plan: self.plan.clone(),
            holder: format!(
                "host {} pid {}",
                holder.get_str("host").unwrap_or("?"),
                holder.get_i64("pid").unwrap_or(0)
            ),
            until: holder
                .get_datetime("until")
                .map(|d| d.try_to_rfc3339_string().unwrap_or_default())
                .unwrap_or_default(),
        })
    }

    pub async fn release_lease(&self, owner: &Lease) -> Result<(), StateError> {
        self.coll(RUNS)
            .update_one(
                doc! {"_id": &self.plan, "lease.id": &owner.id},
                doc! {"$unset": {"lease": ""}},
            )
            .await
            .map_err(|e| self.err(&e))?;
        Ok(())
    }

    /// Removes every record of this plan (for `run --restart`).
    pub async fn reset(&self) -> Result<(), StateError> {
        let prefix = format!("^{}/", regex::escape(&self.plan));
        for c in [
            LANES,
            PARTITIONS,
            APPROVALS,
            "relaxations",
            "verify_runs",
            "verify_partitions",
            "verify_ranges",
            "repairs",
            "repair_requests",
        ] {
            self.coll(c)
                .delete_many(doc! {"$or": [{"_id": {"$regex": &prefix}}, {"plan": &self.plan}]})
                .await
                .map_err(|e| self.err(&e))?;
        }
        self.coll(RUNS)
            .delete_one(doc! {"_id": &self.plan})
            .await
            .map_err(|e| self.err(&e))?;
        Ok(())
    }

    /// Records an approval for step `step` (index in the plan).
    pub async fn approve(&self, step: usize, host: &str, note: &str) -> Result<(), StateError> {
        let id = format!("{}/{step}", self.plan);
        self.coll(APPROVALS)
            .update_one(
                doc! {"_id": &id},
                doc! {"$set": {"plan": &self.plan, "step": step as i64, "when": DateTime::now(), "host": host, "note": note}},
            )
            .upsert(true)
            .await
            .map_err(|e| self.err(&e))?;
        Ok(())
    }

    pub async fn approval(&self, step: usize) -> Result<Option<Document>, StateError> {
        let id = format!("{}/{step}", self.plan);
        self.retrying("reading the approval", || {
            let (c, id) = (self.coll(APPROVALS), id.clone());
            async move { c.find_one(doc! {"_id": id}).await }
        })
        .await
    }
}

/// Who holds a plan's lease.
#[derive(Clone, Debug)]
pub struct Lease {
    pub id: String,
    pub host: String,
    pub pid: i64,
}

impl Lease {
    pub fn mine() -> Self {
        let host = hostname::get()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "unknown".into());
        let pid = i64::from(std::process::id());
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        Self {
            id: format!("{host}/{pid}/{nanos}"),
            host,
            pid,
        }
    }
}

fn process_alive(pid: i64) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

pub fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == 11000,
        ErrorKind::Command(c) => c.code == 11000,
        _ => false,
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
