//! Verify's records in the state database on the destination, so a killed verify continues.
//!
//! - `verify_runs`: `{_id: {plan, run}, plan, run, status: running|finished|abandoned}`
//!   ([`VerifyRunStatus`], changed only by [`StateStore::transition`]).
//! - `verify_partitions`: `{_id: {plan, run, ns}, bounds: [...], batch_docs}`, the split points of a
//!   namespace, written before its first range so a resumed run reads the same ranges.
//! - `verify_ranges`: `{_id: {plan, run, ns, range}, source_count, destination_count, missing,
//!   extra, different, samples: [{_id, kind}], rechecks}`, one per finished range.
//!
//! Every document also has a top-level `plan` field, so a plan's reset can delete them all
//! with `{plan: NAME}`. Every write uses majority write concern, so a record survives a
//! failover.

use std::collections::HashSet;

use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::options::{CollectionOptions, WriteConcern};
use mongodb::{Client, Collection};

use super::error::VerifyError;
use super::ranges::Partition;
use super::scan::{Kind, RangeDiff};
use crate::base::namespace::Namespace;
use crate::base::role::Role;
use crate::state::lease::Fence;
use crate::state::states::VerifyRunStatus;

pub const RUNS: &str = "verify_runs";
pub const PARTITIONS: &str = "verify_partitions";
pub const RANGES: &str = "verify_ranges";

/// The result of one finished range, as stored.
#[derive(Clone, Debug, Default)]
pub struct RangeRecord {
    pub range: i64,
    pub source_count: u64,
    pub destination_count: u64,
    pub diff: RangeDiff,
    pub rechecks: u32,
}

#[derive(Clone)]
pub struct StateStore {
    client: Client,
    db: String,
    plan: String,
    pub run: i64,
    fence: Option<Fence>,
}

fn err(what: &str, e: &mongodb::error::Error) -> VerifyError {
    VerifyError::driver(
        Role::Destination,
        None,
        &format!("{what} in the state database"),
        e,
    )
}

impl StateStore {
    fn coll(&self, name: &str) -> Collection<Document> {
        let opts = CollectionOptions::builder()
            .write_concern(WriteConcern::majority())
            .build();
        self.client
            .database(&self.db)
            .collection_with_options(name, opts)
    }

    /// Continues the plan's unfinished run, or starts a new one (`restart`: always new).
    /// Returns the store and whether it resumed.
    pub async fn open(
        client: &Client,
        state_db: &str,
        plan: &str,
        restart: bool,
        fence: Option<Fence>,
    ) -> Result<(Self, bool), VerifyError> {
        let mut store = StateStore {
            client: client.clone(),
            db: state_db.to_string(),
            plan: plan.to_string(),
            run: 0,
            fence,
        };
        let runs = store.coll(RUNS);
        let last = runs
            .find_one(doc! {"plan": plan})
            .sort(doc! {"run": -1})
            .await
            .map_err(|e| err("reading verify runs", &e))?;
        let last_run = last
            .as_ref()
            .and_then(|d| d.get_i64("run").ok())
            .unwrap_or(0);
        let running = match &last {
            Some(d) => VerifyRunStatus::of(d).map_err(|e| VerifyError::Server {
                side: Role::Destination,
                ns: None,
                what: "reading verify runs in the state database".into(),
                detail: e.to_string(),
                hint: "run the verify with the cutover release that wrote the record, or with `--restart`",
                transient: false,
            })? == VerifyRunStatus::Running,
            None => false,
        };
        if running && !restart {
            store.run = last_run;
            return Ok((store, true));
        }
        if running {
            store
                .transition(
                    last_run,
                    VerifyRunStatus::Running,
                    VerifyRunStatus::Abandoned,
                    doc! {},
                    "abandoning the previous verify run",
                )
                .await?;
        }
        store.run = last_run + 1;
        store.confirm().await?;
        runs.insert_one(store.stamp_doc(doc! {
            "_id": {"plan": plan, "run": store.run}, "plan": plan, "run": store.run,
            "status": VerifyRunStatus::Running, "started_at": DateTime::now(),
        }))
        .await
        .map_err(|e| err("starting a verify run", &e))?;
        Ok((store, false))
    }

    /// The fence's epoch condition on a write's filter (inside `cutover run`).
    /// Waits while the lease is unconfirmed (see [`Fence`]).
    async fn filter(&self, f: Document) -> Result<Document, VerifyError> {
        match &self.fence {
            Some(fence) => {
                fence.ready().await?;
                Ok(fence.filter(f))
            }
            None => Ok(f),
        }
    }

    fn stamp(&self, u: Document) -> Document {
        match &self.fence {
            Some(f) => f.stamp(u),
            None => u,
        }
    }

    fn stamp_doc(&self, d: Document) -> Document {
        match &self.fence {
            Some(f) => f.stamp_doc(d),
            None => d,
        }
    }

    /// Before creating records: proves on the server that the runner still holds the plan.
    async fn confirm(&self) -> Result<(), VerifyError> {
        if let Some(f) = &self.fence {
            f.confirm().await?;
        }
        Ok(())
    }

    pub async fn finish(&self) -> Result<(), VerifyError> {
        self.transition(
            self.run,
            VerifyRunStatus::Running,
            VerifyRunStatus::Finished,
            doc! {"finished_at": DateTime::now()},
            "finishing the verify run",
        )
        .await
    }

    /// The one way a `verify_runs` record changes status: run `run` of the plan goes
    /// `from -> to` (see [`VerifyRunStatus::can_become`]) with `fields`, written only while it
    /// is still `from`.
    async fn transition(
        &self,
        run: i64,
        from: VerifyRunStatus,
        to: VerifyRunStatus,
        mut fields: Document,
        what: &str,
    ) -> Result<(), VerifyError> {
        debug_assert!(from.can_become(to), "verify run {from} -> {to}");
        fields.insert("status", to);
        let filter = self
            .filter(doc! {"_id": {"plan": &self.plan, "run": run}, "status": from})
            .await?;
        self.coll(RUNS)
            .update_one(filter, self.stamp(doc! {"$set": fields}))
            .await
            .map_err(|e| err(what, &e))?;
        Ok(())
    }

    /// The stored split points of `ns` in this run, if any.
    pub async fn partition(&self, ns: &Namespace) -> Result<Option<Partition>, VerifyError> {
        let found = self
            .coll(PARTITIONS)
            .find_one(doc! {"_id": {"plan": &self.plan, "run": self.run, "ns": ns.to_string()}})
            .await
            .map_err(|e| err("reading verify partitions", &e))?;
        Ok(found.and_then(|d| {
            Some(Partition {
                bounds: d.get_array("bounds").ok()?.clone(),
                batch_docs: d
                    .get_i64("batch_docs")
                    .ok()
                    .and_then(|b| u32::try_from(b).ok())?,
            })
        }))
    }

    pub async fn save_partition(&self, ns: &Namespace, p: &Partition) -> Result<(), VerifyError> {
        self.confirm().await?;
        self.coll(PARTITIONS)
            .replace_one(
                self.filter(
                    doc! {"_id": {"plan": &self.plan, "run": self.run, "ns": ns.to_string()}},
                )
                .await?,
                self.stamp_doc(doc! {
                    "_id": {"plan": &self.plan, "run": self.run, "ns": ns.to_string()},
                    "plan": &self.plan,
                    "bounds": p.bounds.clone(),
                    "batch_docs": i64::from(p.batch_docs),
                }),
            )
            .upsert(true)
            .await
            .map_err(|e| err("saving verify partitions", &e))?;
        Ok(())
    }

    /// `(ns, range)` pairs already finished in this run.
    pub async fn finished(&self) -> Result<HashSet<(String, i64)>, VerifyError> {
        let mut cursor = self
            .coll(RANGES)
            .find(doc! {"_id.plan": &self.plan, "_id.run": self.run})
            .projection(doc! {"_id": 1})
            .await
            .map_err(|e| err("reading finished verify ranges", &e))?;
        let mut out = HashSet::new();
        while let Some(d) = cursor
            .try_next()
            .await
            .map_err(|e| err("reading finished verify ranges", &e))?
        {
            if let Ok(id) = d.get_document("_id") {
                if let (Ok(ns), Ok(r)) = (id.get_str("ns"), id.get_i64("range")) {
                    out.insert((ns.to_string(), r));
                }
            }
        }
        Ok(out)
    }

    pub async fn save_range(&self, ns: &Namespace, rec: &RangeRecord) -> Result<(), VerifyError> {
        let id =
            doc! {"plan": &self.plan, "run": self.run, "ns": ns.to_string(), "range": rec.range};
        let samples: Vec<Document> = rec
            .diff
            .samples
            .iter()
            .map(|(id, k)| doc! {"_id": id.clone(), "kind": k.as_str()})
            .collect();
        let body = doc! {
            "_id": id.clone(),
            "plan": &self.plan,
            "source_count": rec.source_count as i64,
            "destination_count": rec.destination_count as i64,
            "missing": rec.diff.missing as i64,
            "extra": rec.diff.extra as i64,
            "different": rec.diff.different as i64,
            "samples": samples,
            "rechecks": i64::from(rec.rechecks),
            "finished_at": DateTime::now(),
        };
        self.coll(RANGES)
            .replace_one(self.filter(doc! {"_id": id}).await?, self.stamp_doc(body))
            .upsert(true)
            .await
            .map_err(|e| err("saving a verify range", &e))?;
        Ok(())
    }

    /// The finished ranges of `ns` in this run, in range order.
    pub async fn ranges(&self, ns: &Namespace) -> Result<Vec<RangeRecord>, VerifyError> {
        let mut cursor = self
            .coll(RANGES)
            .find(doc! {"_id.plan": &self.plan, "_id.run": self.run, "_id.ns": ns.to_string()})
            .sort(doc! {"_id.range": 1})
            .await
            .map_err(|e| err("reading verify ranges", &e))?;
        let mut out = Vec::new();
        while let Some(d) = cursor
            .try_next()
            .await
            .map_err(|e| err("reading verify ranges", &e))?
        {
            let n = |k: &str| {
                d.get_i64(k)
                    .ok()
                    .and_then(|v| u64::try_from(v).ok())
                    .unwrap_or(0)
            };
            let samples = d
                .get_array("samples")
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_document())
                        .filter_map(|s| {
                            let kind = Kind::parse(s.get_str("kind").ok()?)?;
                            Some((s.get("_id").cloned().unwrap_or(Bson::Null), kind))
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(RangeRecord {
                range: d
                    .get_document("_id")
                    .ok()
                    .and_then(|i| i.get_i64("range").ok())
                    .unwrap_or(0),
                source_count: n("source_count"),
                destination_count: n("destination_count"),
                diff: RangeDiff {
                    missing: n("missing"),
                    extra: n("extra"),
                    different: n("different"),
                    samples,
                },
                rechecks: u32::try_from(n("rechecks")).unwrap_or(u32::MAX),
            });
        }
        Ok(out)
    }
}
