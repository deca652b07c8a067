//! `cutover verify PLAN --repair`: fixes what verify finds instead of starting over.
//!
//! A pass is a verify that also collects every differing `_id` (up to
//! [`RepairOptions::max_ids`] per namespace), then repairs:
//! - documents: each differing `_id` is re-read on the source and written to the destination
//!   as a whole-document replacement (or deleted), see [`crate::engine::repair`]. With a
//!   runner live, the lane does the rewrite between two batches, at its own position, so the
//!   repair is ordered with replication; with no runner, verify rewrites them itself;
//! - indexes missing on the destination are built (relaxed as the sync builds them); extra or
//!   different ones are reported, or dropped (and rebuilt) with `--repair-indexes drop`;
//! - validator options (`validator`, `validationLevel`, `validationAction`) are set with
//!   `collMod`; other option differences need the collection copied again and are reported;
//! - a collection missing on the destination is created with its indexes (its documents are
//!   then repaired as missing ones).
//!
//! The repaired `_id`s are compared again (after replication caught up), then a new pass
//! runs, until a pass finds nothing or `rounds` repairs were done. Each invocation is recorded
//! in the state store (`repairs`) and shown by `cutover status`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::TryStreamExt;
use mongodb::bson::{doc, oid::ObjectId, Bson, DateTime, Document, Timestamp};
use mongodb::Client;
use serde::Serialize;

use crate::base::namespace::Namespace;
use crate::base::role::Role;
use crate::engine::catalog::RelaxationStore;
use crate::engine::error::EngineError;
use crate::engine::repair::{self as engine_repair, ReadAt, REPAIRS, REQUESTS, REQUEST_IDS};
use crate::plan::Plan;
use crate::state::record::RunRecord;
use crate::state::states::{RepairRequestState, RepairState};
use crate::state::{StateError, StateStore, LANES};
use crate::verify::catalog;
use crate::verify::error::VerifyError;
use crate::verify::report::VerifyReport;
use crate::verify::scan::{Kind, RangeDiff};
use crate::verify::{ReplicationWait, VerifyOptions};

/// What `--repair-indexes` allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexPolicy {
    /// Build missing indexes; report extra and different ones.
    Build,
    /// Also drop extra indexes, and drop and rebuild different ones.
    Drop,
}

#[derive(Clone, Debug)]
pub struct RepairOptions {
    pub indexes: IndexPolicy,
    /// Repair passes at most (each followed by a verify pass).
    pub rounds: u32,
    /// Differing `_id`s repaired per namespace and pass.
    pub max_ids: usize,
    /// How long to wait for the live lane to serve a pass's requests.
    pub lane_timeout: Duration,
}

impl Default for RepairOptions {
    fn default() -> Self {
        Self {
            indexes: IndexPolicy::Build,
            rounds: 3,
            max_ids: 100_000,
            lane_timeout: Duration::from_secs(120),
        }
    }
}

/// Who writes the repaired documents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A runner is live: the lane with this id serves the requests.
    Lane(String),
    /// No runner: verify writes them itself.
    Direct,
}

impl Mode {
    pub fn as_str(&self) -> &'static str {
        match self {
            Mode::Lane(_) => "lane",
            Mode::Direct => "direct",
        }
    }
}

/// Whether repair may run now, and how; `Err` is the refusal message (exit 4).
///
/// `run` is the plan's run record (`None`: no migration recorded); `live` whether a runner
/// holds the plan now, by the state store's clock ([`StateStore::record_live`]), never this
/// host's: a host whose clock is ahead would take a live runner for gone.
pub fn gate(
    plan: &str,
    run: Option<&RunRecord>,
    live: bool,
    lane: Option<&Document>,
) -> Result<Mode, String> {
    if let Some(r) = run {
        let state = r.state;
        if r.past_cutover() {
            return Err(format!(
                "`verify --repair` is refused: plan `{plan}` has begun or finished its commit (state {state}), so the \
                 destination is the side your application writes to; repairing would overwrite its writes with the \
                 old cluster's documents. Run `cutover verify` without `--repair` to compare"
            ));
        }
    }
    if lane.is_some_and(|l| !l.get_bool("copy_done").unwrap_or(false)) {
        return Err(format!(
            "`verify --repair` is refused: plan `{plan}` has not finished its initial copy; let `cutover run` finish \
             the copy (differences found during a copy are not findings), then repair"
        ));
    }
    if live {
        return match lane {
            Some(l) => Ok(Mode::Lane(
                l.get_str("_id").unwrap_or_default().to_string(),
            )),
            None => Err(format!(
                "`verify --repair` is refused: a `cutover run` holds plan `{plan}` but has not started replicating \
                 yet; try again once `cutover status` shows it applying change events"
            )),
        };
    }
    Ok(Mode::Direct)
}

/// Waits until the lane recorded in the state store has applied every source write up to a
/// time (its durable `position`), or a limit passes.
pub struct StoreLaneWait {
    pub store: StateStore,
    pub lane: String,
    pub limit: Duration,
}

impl ReplicationWait for StoreLaneWait {
    fn wait_replicated(&self, read_at: Timestamp) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let _ = lane_reached(&self.store, &self.lane, read_at, self.limit).await;
        })
    }
}

async fn lane_position(store: &StateStore, lane: &str) -> Option<Timestamp> {
    store
        .find_one(LANES, doc! {"_id": lane}, None)
        .await
        .ok()
        .flatten()
        .and_then(|d| d.get_timestamp("position").ok())
}

async fn lane_reached(store: &StateStore, lane: &str, t: Timestamp, limit: Duration) -> bool {
    let start = Instant::now();
    loop {
        if lane_position(store, lane).await.is_some_and(|p| p >= t) {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{0}")]
    Other(String),
}

impl RepairError {
    pub fn is_connectivity(&self) -> bool {
        match self {
            RepairError::Verify(e) => e.is_connectivity(),
            RepairError::Engine(EngineError::Cluster { transient, .. }) => *transient,
            _ => false,
        }
    }
}

/// What was repaired in one namespace, over every pass.
#[derive(Clone, Debug, Default, Serialize)]
pub struct NsRepair {
    pub ns: String,
    /// Documents written as the source has them (missing or different ones).
    pub documents_written: u64,
    /// Documents deleted (extra ones).
    pub documents_deleted: u64,
    /// Repaired `_id`s that still differed when compared again (a later pass retries them).
    pub documents_still_different: u64,
    pub indexes_built: u64,
    pub indexes_dropped: u64,
    pub options_repaired: u64,
    pub collection_created: bool,
    /// What was found and deliberately not repaired, and why.
    pub not_repaired: Vec<String>,
}

impl NsRepair {
    fn touched(&self) -> bool {
        self.documents_written
            + self.documents_deleted
            + self.indexes_built
            + self.indexes_dropped
            + self.options_repaired
            > 0
            || self.collection_created
            || !self.not_repaired.is_empty()
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct RepairReport {
    /// True when the final verify pass found nothing.
    pub ok: bool,
    pub plan: String,
    /// `lane` (written by the live lane at its position) or `direct` (no runner live).
    pub mode: &'static str,
    /// Repair passes done.
    pub passes: u32,
    pub namespaces: Vec<NsRepair>,
    /// The last verify pass.
    pub final_verify: VerifyReport,
}

impl RepairReport {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|_| "{\"ok\": false}".into())
    }

    pub fn to_text(&self) -> String {
        let how = match self.mode {
            "lane" => "through the live replication lane, at its applied position",
            _ => "directly (no runner live)",
        };
        let mut s = format!(
            "repair `{}`: {} repair pass{}, {how}\n",
            self.plan,
            self.passes,
            if self.passes == 1 { "" } else { "es" }
        );
        let touched: Vec<&NsRepair> = self.namespaces.iter().filter(|n| n.touched()).collect();
        if touched.is_empty() {
            s += "  nothing to repair\n";
        }
        for n in touched {
            s += &format!(
                "  {}: {} documents written, {} deleted, {} indexes built, {} dropped, {} options set{}",
                n.ns,
                n.documents_written,
                n.documents_deleted,
                n.indexes_built,
                n.indexes_dropped,
                n.options_repaired,
                if n.collection_created {
                    ", collection created"
                } else {
                    ""
                }
            );
            if n.documents_still_different > 0 {
                s += &format!(
                    "; {} still differed when compared again",
                    n.documents_still_different
                );
            }
            s.push('\n');
            for why in &n.not_repaired {
                s += &format!("      not repaired: {why}\n");
            }
        }
        s += &format!(
            "final pass: {}",
            if self.ok {
                "nothing differs".to_string()
            } else {
                "differences remain".to_string()
            }
        );
        s.push('\n');
        s += &self.final_verify.to_text();
        s
    }
}

pub(crate) fn who() -> Document {
    let host = hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into());
    let user = crate::base::env::get(crate::base::env::USER)
        .or_else(|| crate::base::env::get(crate::base::env::LOGNAME))
        .unwrap_or_else(|| "unknown".into());
    doc! {"host": host, "user": user, "pid": i64::from(std::process::id())}
}

fn counts_doc(namespaces: &BTreeMap<String, NsRepair>) -> Vec<Document> {
    namespaces
        .values()
        .filter(|n| n.touched())
        .map(|n| {
            doc! {
                "ns": &n.ns,
                "documents_written": n.documents_written as i64,
                "documents_deleted": n.documents_deleted as i64,
                "indexes_built": n.indexes_built as i64,
                "indexes_dropped": n.indexes_dropped as i64,
                "options_repaired": n.options_repaired as i64,
                "collection_created": n.collection_created,
                "not_repaired": n.not_repaired.clone(),
            }
        })
        .collect()
}

/// Repairs until a verify pass finds nothing (or `rounds` passes were done).
pub async fn run(
    source: &Client,
    dest: &Client,
    plan: &Plan,
    state: &StateStore,
    mode: Mode,
    base: VerifyOptions,
    ropts: &RepairOptions,
) -> Result<RepairReport, RepairError> {
    let repair_id = format!("{}/{}", plan.name, ObjectId::new().to_hex());
    engine_repair::write_state(
        state,
        REPAIRS,
        doc! {"_id": &repair_id},
        doc! {"$set": {
            "plan": &plan.name, "who": who(), "mode": mode.as_str(), "state": RepairState::Running,
            "started": DateTime::now(),
        }},
        true,
    )
    .await?;
    let result = passes(source, dest, plan, state, &mode, base, ropts, &repair_id).await;
    let (to, fields, out) = match result {
        Ok(report) => (
            if report.ok {
                RepairState::Ok
            } else {
                RepairState::DifferencesRemain
            },
            doc! {
                "passes": i64::from(report.passes),
                "namespaces": counts_doc(&report.namespaces.iter().map(|n| (n.ns.clone(), n.clone())).collect()),
                "finished": DateTime::now(),
            },
            Ok(report),
        ),
        Err(e) => (
            RepairState::Failed,
            doc! {"error": crate::base::redact::scrub(&e.to_string()), "finished": DateTime::now()},
            Err(e),
        ),
    };
    let _ =
        engine_repair::repair_transition(state, &repair_id, RepairState::Running, to, fields).await;
    out
}

#[allow(clippy::too_many_arguments)]
async fn passes(
    source: &Client,
    dest: &Client,
    plan: &Plan,
    state: &StateStore,
    mode: &Mode,
    base: VerifyOptions,
    ropts: &RepairOptions,
    repair_id: &str,
) -> Result<RepairReport, RepairError> {
    let relax = RelaxationStore::new(
        state.database().clone(),
        &plan.name,
        crate::state::record::Direction::Forward,
    );
    let mut opts = base;
    opts.collect_ids = ropts.max_ids.max(1);
    // A new verify run each pass: a resumed one named only `max_differences` per range.
    opts.restart = true;
    if let Mode::Lane(lane) = mode {
        opts.replication = Arc::new(StoreLaneWait {
            store: state.clone(),
            lane: lane.clone(),
            limit: Duration::from_secs(60),
        });
        opts.rechecks = opts.rechecks.max(1);
    }
    let mut namespaces: BTreeMap<String, NsRepair> = BTreeMap::new();
    let mut done_passes = 0;
    loop {
        if let Ok(list) = relax.list().await {
            opts.relaxed = list.into_iter().map(|r| (r.ns, r.index)).collect();
        }
        let report = crate::verify::run(source, dest, plan, &opts).await?;
        if report.ok || done_passes >= ropts.rounds {
            return Ok(RepairReport {
                ok: report.ok,
                plan: plan.name.clone(),
                mode: mode.as_str(),
                passes: done_passes,
                namespaces: namespaces.into_values().collect(),
                final_verify: report,
            });
        }
        done_passes += 1;
        tracing::info!(pass = done_passes, "Repairing what verify found.");
        let mut work: Vec<(Namespace, Vec<(Bson, Kind)>)> = Vec::new();
        for n in report.namespaces.iter().filter(|n| !n.is_ok()) {
            let Some(ns) = Namespace::parse(&n.ns) else {
                continue;
            };
            let entry = namespaces.entry(n.ns.clone()).or_insert_with(|| NsRepair {
                ns: n.ns.clone(),
                ..Default::default()
            });
            repair_catalog(source, dest, &ns, n, &relax, ropts, entry).await?;
            if !n.ids.is_empty() {
                work.push((ns, n.ids.clone()));
            }
        }
        let counts = repair_documents(source, dest, state, mode, &work, ropts, repair_id).await?;
        for (ns, (written, deleted)) in counts {
            let e = namespaces.entry(ns.to_string()).or_default();
            e.ns = ns.to_string();
            e.documents_written += written;
            e.documents_deleted += deleted;
        }
        // The repaired `_id`s again, once replication has caught up with the rewrite.
        for (ns, ids) in &work {
            let mut diff = RangeDiff::default();
            for (id, k) in ids {
                match k {
                    Kind::Missing => diff.missing += 1,
                    Kind::Extra => diff.extra += 1,
                    Kind::Different => diff.different += 1,
                }
                diff.samples.push((id.clone(), *k));
            }
            let still = crate::verify::settle::settle(source, dest, ns, diff, &opts).await?;
            if let Some(e) = namespaces.get_mut(&ns.to_string()) {
                e.documents_still_different = still.total();
            }
            if still.total() > 0 {
                tracing::info!(%ns, still = still.total(), "Some repaired documents still differ; the next pass retries them.");
            }
        }
    }
}

/// Writes the documents of `work`; returns (written, deleted) per namespace.
async fn repair_documents(
    source: &Client,
    dest: &Client,
    state: &StateStore,
    mode: &Mode,
    work: &[(Namespace, Vec<(Bson, Kind)>)],
    ropts: &RepairOptions,
    repair_id: &str,
) -> Result<BTreeMap<Namespace, (u64, u64)>, RepairError> {
    let mut out: BTreeMap<Namespace, (u64, u64)> = BTreeMap::new();
    if work.is_empty() {
        return Ok(out);
    }
    let lane = match mode {
        Mode::Lane(l) => l.clone(),
        Mode::Direct => {
            for (ns, ids) in work {
                for chunk in ids.chunks(REQUEST_IDS) {
                    let ids: Vec<Bson> = chunk.iter().map(|(id, _)| id.clone()).collect();
                    let r = engine_repair::rewrite(
                        crate::state::record::Direction::Forward,
                        source,
                        dest,
                        ns,
                        &ids,
                        ReadAt::Majority,
                    )
                    .await?;
                    let e = out.entry(ns.clone()).or_default();
                    e.0 += r.written;
                    e.1 += r.deleted;
                }
            }
            return Ok(out);
        }
    };
    // Through the lane: one request per chunk, served between two of its batches.
    let batch = ObjectId::new().to_hex();
    let mut requests = Vec::new();
    for (ns, ids) in work {
        for chunk in ids.chunks(REQUEST_IDS) {
            let id = ObjectId::new();
            let ids: Vec<Bson> = chunk.iter().map(|(id, _)| id.clone()).collect();
            engine_repair::write_state(
                state,
                REQUESTS,
                doc! {"_id": id},
                doc! {"$setOnInsert": {
                    "plan": state.plan(), "lane": &lane, "repair": repair_id, "batch": &batch,
                    "ns": ns.to_string(), "ids": ids, "state": RepairRequestState::Pending, "created": DateTime::now(),
                }},
                true,
            )
            .await?;
            requests.push(id);
        }
    }
    let started = Instant::now();
    loop {
        let docs: Vec<Document> = state
            .find(REQUESTS, doc! {"batch": &batch}, None, None)
            .await?;
        let states = docs
            .iter()
            .map(RepairRequestState::of)
            .collect::<Result<Vec<_>, _>>()
            .map_err(StateError::from)?;
        let with_state = |want: RepairRequestState| {
            docs.iter()
                .zip(&states)
                .filter(move |(_, s)| **s == want)
                .map(|(d, _)| d)
        };
        let pending: Vec<&Document> = with_state(RepairRequestState::Pending).collect();
        if pending.is_empty() {
            let failed: Vec<String> = with_state(RepairRequestState::Failed)
                .map(|d| {
                    format!(
                        "`{}`: {}",
                        d.get_str("ns").unwrap_or("?"),
                        d.get_str("error").unwrap_or("?")
                    )
                })
                .collect();
            if !failed.is_empty() {
                return Err(RepairError::Other(format!(
                    "the lane could not repair {} request(s): {}",
                    failed.len(),
                    failed.join("; ")
                )));
            }
            for d in &docs {
                if let Some(ns) = d.get_str("ns").ok().and_then(Namespace::parse) {
                    let e = out.entry(ns).or_default();
                    e.0 += d.get_i64("written").unwrap_or(0) as u64;
                    e.1 += d.get_i64("deleted").unwrap_or(0) as u64;
                }
            }
            return Ok(out);
        }
        // The runner went away: nothing else writes now, so write them here.
        if !state.runner_live().await? {
            tracing::info!("The runner is gone; repairing the pending requests directly.");
            for d in pending {
                let (Some(ns), Ok(ids)) = (
                    d.get_str("ns").ok().and_then(Namespace::parse),
                    d.get_array("ids"),
                ) else {
                    continue;
                };
                let r = engine_repair::rewrite(
                    crate::state::record::Direction::Forward,
                    source,
                    dest,
                    &ns,
                    ids,
                    ReadAt::Majority,
                )
                .await?;
                engine_repair::request_transition(
                    state,
                    d.get("_id").cloned().unwrap_or(Bson::Null),
                    RepairRequestState::Pending,
                    RepairRequestState::Done,
                    doc! {"served_by": "verify", "written": r.written as i64,
                    "deleted": r.deleted as i64, "served": DateTime::now()},
                )
                .await?;
            }
            continue;
        }
        if started.elapsed() > ropts.lane_timeout {
            return Err(RepairError::Other(format!(
                "the live lane did not serve {} repair request(s) within {}; check `cutover status` (is it \
                 reconnecting?) and run the same command again",
                pending.len(),
                humantime::format_duration(ropts.lane_timeout)
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Indexes, options and a missing collection of one namespace.
async fn repair_catalog(
    source: &Client,
    dest: &Client,
    ns: &Namespace,
    n: &crate::verify::report::NamespaceReport,
    relax: &RelaxationStore,
    ropts: &RepairOptions,
    out: &mut NsRepair,
) -> Result<(), RepairError> {
    let cat = |e: crate::engine::catalog::CatalogError| RepairError::Engine(EngineError::from(e));
    match n.status {
        "missing" => {
            if let Some(spec) = crate::engine::catalog::spec_of(source, ns)
                .await
                .map_err(cat)?
            {
                crate::engine::catalog::create_on_destination(dest, &spec, relax)
                    .await
                    .map_err(cat)?;
                crate::engine::catalog::build_indexes(dest, &spec, relax)
                    .await
                    .map_err(cat)?;
                out.collection_created = true;
            }
            return Ok(());
        }
        "extra" => {
            out.not_repaired.push(
                "the namespace exists only on the destination; drop it there yourself if it is not wanted".into(),
            );
            return Ok(());
        }
        _ => {}
    }
    if !n.index_differences.is_empty() {
        let source_specs = catalog::list_indexes(Role::Source, source, ns).await?;
        for d in &n.index_differences {
            let spec = source_specs
                .iter()
                .find(|(name, _)| name == &d.name)
                .and_then(|(_, s)| s.to_document().ok());
            let drop = |name: String| async move {
                dest.database(&ns.db)
                    .run_command(doc! {"dropIndexes": &ns.coll, "index": &name})
                    .await
                    .map_err(|e| {
                        RepairError::Engine(crate::engine::error::cluster_err(
                            Role::Destination,
                            format!("dropping index `{name}` of `{ns}`"),
                            &e,
                        ))
                    })
            };
            match (d.kind, spec) {
                ("missing", Some(spec)) => {
                    crate::engine::catalog::create_indexes(dest, ns, vec![spec], relax, false)
                        .await
                        .map_err(cat)?;
                    out.indexes_built += 1;
                }
                ("extra", _) if ropts.indexes == IndexPolicy::Drop => {
                    drop(d.name.clone()).await?;
                    out.indexes_dropped += 1;
                }
                ("extra", _) => out.not_repaired.push(format!(
                    "index `{}` exists only on the destination (kept; `--repair-indexes drop` drops it)",
                    d.name
                )),
                ("different", Some(spec)) if ropts.indexes == IndexPolicy::Drop => {
                    drop(d.name.clone()).await?;
                    out.indexes_dropped += 1;
                    crate::engine::catalog::create_indexes(dest, ns, vec![spec], relax, false)
                        .await
                        .map_err(cat)?;
                    out.indexes_built += 1;
                }
                ("different", _) => out.not_repaired.push(format!(
                    "index `{}` differs (kept; `--repair-indexes drop` drops and rebuilds it)",
                    d.name
                )),
                _ => {}
            }
        }
    }
    let validation = ["validator", "validationLevel", "validationAction"];
    let mut coll_mod = doc! {"collMod": &ns.coll};
    for d in &n.option_differences {
        if validation.contains(&d.name.as_str()) {
            let value = match &d.source {
                Some(v) => Bson::try_from(v.clone()).unwrap_or(Bson::Null),
                None => match d.name.as_str() {
                    "validator" => Bson::Document(Document::new()),
                    "validationLevel" => Bson::String("strict".into()),
                    _ => Bson::String("error".into()),
                },
            };
            coll_mod.insert(d.name.clone(), value);
            out.options_repaired += 1;
        } else {
            out.not_repaired.push(format!(
                "collection option `{}` differs: it cannot be changed in place; copy the collection again",
                d.name
            ));
        }
    }
    if coll_mod.len() > 1 {
        // The validator is compared as raw bytes: take it from the source's own options.
        if coll_mod.contains_key("validator") {
            if let Some(v) = source_option(source, ns, "validator").await? {
                coll_mod.insert("validator", v);
            }
        }
        dest.database(&ns.db)
            .run_command(coll_mod)
            .await
            .map_err(|e| {
                RepairError::Engine(crate::engine::error::cluster_err(
                    Role::Destination,
                    format!("setting the validation options of `{ns}`"),
                    &e,
                ))
            })?;
    }
    for d in &n.view_differences {
        out.not_repaired.push(format!(
            "view field `{}` differs; recreate the view on the destination",
            d.name
        ));
    }
    Ok(())
}

async fn source_option(
    source: &Client,
    ns: &Namespace,
    name: &str,
) -> Result<Option<Bson>, RepairError> {
    let mut cursor = source
        .database(&ns.db)
        .list_collections()
        .filter(doc! {"name": &ns.coll})
        .await
        .map_err(|e| VerifyError::driver(Role::Source, Some(ns), "listing collections", &e))?;
    if let Some(spec) = cursor
        .try_next()
        .await
        .map_err(|e| VerifyError::driver(Role::Source, Some(ns), "listing collections", &e))?
    {
        let opts = mongodb::bson::to_document(&spec.options).unwrap_or_default();
        return Ok(opts.get(name).cloned());
    }
    Ok(None)
}

/// The last `verify --repair` of a plan, for `cutover status`.
#[derive(Clone, Debug, Serialize)]
pub struct RepairSummary {
    pub started: Option<String>,
    pub finished: Option<String>,
    pub who: String,
    pub mode: String,
    pub state: RepairState,
    pub documents_written: i64,
    pub documents_deleted: i64,
    pub indexes_built: i64,
}

impl RepairSummary {
    pub fn to_text(&self) -> String {
        format!(
            "{} by {} ({}): {}; {} documents written, {} deleted, {} indexes built",
            self.finished
                .as_deref()
                .or(self.started.as_deref())
                .unwrap_or("?"),
            self.who,
            self.mode,
            self.state,
            self.documents_written,
            self.documents_deleted,
            self.indexes_built
        )
    }
}

/// Reads the plan's most recent repair record.
pub async fn last_repair(state: &StateStore) -> Option<RepairSummary> {
    let d = state
        .find_one(
            REPAIRS,
            doc! {"plan": state.plan()},
            Some(doc! {"started": -1}),
        )
        .await
        .ok()
        .flatten()?;
    let state = match RepairState::of(&d) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "The last repair record is left out of the status.");
            return None;
        }
    };
    let who = d.get_document("who").ok();
    let sum = |k: &str| {
        d.get_array("namespaces")
            .map(|a| {
                a.iter()
                    .filter_map(Bson::as_document)
                    .map(|n| n.get_i64(k).unwrap_or(0))
                    .sum()
            })
            .unwrap_or(0)
    };
    let time = |k: &str| {
        d.get_datetime(k)
            .ok()
            .and_then(|t| t.try_to_rfc3339_string().ok())
    };
    Some(RepairSummary {
        started: time("started"),
        finished: time("finished"),
        who: who
            .map(|w| {
                format!(
                    "{}@{} pid {}",
                    w.get_str("user").unwrap_or("?"),
                    w.get_str("host").unwrap_or("?"),
                    w.get_i64("pid").unwrap_or(0)
                )
            })
            .unwrap_or_else(|| "?".into()),
        mode: d.get_str("mode").unwrap_or("?").to_string(),
        state,
        documents_written: sum("documents_written"),
        documents_deleted: sum("documents_deleted"),
        indexes_built: sum("indexes_built"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(d: Document) -> RunRecord {
        RunRecord::from_doc("p", &d).unwrap()
    }

    #[test]
    fn gate_refuses_after_the_commit_and_during_the_copy() {
        let running = rec(doc! {"state": "RUNNING"});
        let lane = doc! {"_id": "p/forward", "copy_done": true};
        assert_eq!(
            gate("p", Some(&running), true, Some(&lane)),
            Ok(Mode::Lane("p/forward".into()))
        );
        assert_eq!(gate("p", None, false, None), Ok(Mode::Direct));
        assert_eq!(
            gate("p", Some(&running), false, Some(&lane)),
            Ok(Mode::Direct)
        );
        for committed in [
            doc! {"state": "COMMITTED"},
            doc! {"state": "COMMITTING"},
            doc! {"state": "RUNNING", "direction": "reverse"},
        ] {
            let e = gate("p", Some(&rec(committed)), true, Some(&lane)).unwrap_err();
            assert!(e.contains("refused"), "{e}");
        }
        let copying = doc! {"_id": "p/forward", "copy_done": false};
        assert!(gate("p", Some(&running), true, Some(&copying)).is_err());
        assert!(gate("p", Some(&running), true, None).is_err());
    }
}
