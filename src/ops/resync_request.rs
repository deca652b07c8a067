//! `cutover resync PLAN --ns db.coll`: the command's side (which namespaces, may it run,
//! the requests, waiting for them, the report) and the summary `cutover status` shows. The
//! lane's side, and the design, are in [`crate::engine::resync`].

use std::time::{Duration, Instant};

use mongodb::bson::{doc, oid::ObjectId, DateTime, Document};
use mongodb::Client;
use serde::Serialize;

use crate::base::namespace::Namespace;
use crate::engine::catalog::{self, NsKind};
use crate::engine::resync::{records, RESYNCS};
use crate::ops::error::OpError;
use crate::plan::model::NamespaceFilter;
use crate::plan::{NamespaceSelector, Plan};
use crate::state::record::RunRecord;
use crate::state::states::{ResyncState, UnknownState};
use crate::state::{StateError, StateStore};

/// Whether a resync may be requested now; `Ok` is the lane that serves it, `Err` the
/// refusal message (exit 4).
///
/// `run` is the plan's run record (`None`: no migration recorded); `live` whether a runner
/// holds the plan now, by the state store's clock ([`StateStore::record_live`]), never this
/// host's: a host whose clock is ahead would take a live runner for gone.
pub fn gate(
    plan: &str,
    run: Option<&RunRecord>,
    live: bool,
    lane: Option<&Document>,
) -> Result<String, String> {
    if let Some(r) = run {
        let state = r.state;
        if r.past_cutover() {
            return Err(format!(
                "`resync` is refused: plan `{plan}` has begun or finished its commit (state {state}), so the \
                 destination is the side your application writes to; copying the old cluster's collection over it \
                 would lose its writes. Nothing was written"
            ));
        }
    }
    if lane.is_some_and(|l| !l.get_bool("copy_done").unwrap_or(false)) {
        return Err(format!(
            "`resync` is refused: plan `{plan}` has not finished its initial copy; the copy is copying every \
             collection already, let `cutover run` finish it"
        ));
    }
    let Some(lane) = lane else {
        return Err(format!(
            "`resync` is refused: plan `{plan}` has not started replicating; start it with `cutover run`"
        ));
    };
    if !live {
        return Err(format!(
            "`resync` is refused: no `cutover run` is live for plan `{plan}`. A resync is served by the runner's \
             replication lane, which holds the collection's change events during the copy and replays them after \
             the swap; start `cutover run` (it resumes the sync) and run this command again"
        ));
    }
    Ok(lane.get_str("_id").unwrap_or_default().to_string())
}

/// A namespace argument that cannot be resynced.
pub type Refusal = OpError;

/// The namespaces named by `--ns db.coll` (exact) and `--ns-regex DB.REGEX` (the part before
/// the first dot is the database, the rest a regex on its collection names, as a plan filter
/// with `database` and `collections_regex`), each checked against the plan's filter and the
/// source's catalog.
pub async fn resolve(
    source: &Client,
    plan: &Plan,
    exact: &[String],
    regexes: &[String],
) -> Result<Vec<Namespace>, Refusal> {
    let mut out: Vec<Namespace> = Vec::new();
    let not_in_plan = |what: &str| {
        OpError::Refused(format!(
                "`resync` is refused: {what} is not in plan `{}`'s filter (`options.include` / `options.exclude`); \
                 only namespaces the plan replicates can be resynced. Nothing was written",
                plan.name
            ),
        )
    };
    let catalog_err = OpError::Catalog;
    for s in exact {
        let Some(ns) = Namespace::parse(s) else {
            return Err(OpError::Invalid(format!(
                "`--ns {s}`: expected `database.collection`"
            )));
        };
        if !plan.selector.selects(&ns.db, &ns.coll) {
            return Err(not_in_plan(&format!("`{ns}`")));
        }
        let Some(spec) = catalog::spec_of(source, &ns).await.map_err(catalog_err)? else {
            return Err(OpError::Failed(format!(
                "`{ns}` does not exist on the source"
            )));
        };
        check_kind(&spec)?;
        if !out.contains(&ns) {
            out.push(ns);
        }
    }
    for r in regexes {
        let Some((db, re)) = r.split_once('.') else {
            return Err(OpError::Invalid(format!("`--ns-regex {r}`: expected `DATABASE.REGEX` (a regex on the database's collection names)"),
            ));
        };
        let filter = NamespaceFilter {
            database: Some(db.to_string()),
            database_regex: None,
            collections: None,
            collections_regex: Some(re.to_string()),
        };
        let sel = NamespaceSelector::new(&[filter], &[], &plan.state_database)
            .map_err(|e| OpError::Invalid(format!("`--ns-regex {r}`: invalid regex: {e}")))?;
        let specs = catalog::list_selected(source, &sel)
            .await
            .map_err(catalog_err)?;
        let mut hit = false;
        for spec in specs
            .iter()
            .filter(|s| plan.selector.selects(&s.ns.db, &s.ns.coll))
        {
            if spec.kind != NsKind::Collection {
                continue; // views and time-series collections are left out of a regex
            }
            hit = true;
            if !out.contains(&spec.ns) {
                out.push(spec.ns.clone());
            }
        }
        if !hit {
            return Err(not_in_plan(&format!(
                "no collection of the source matching `--ns-regex {r}`"
            )));
        }
    }
    if out.is_empty() {
        return Err(OpError::Invalid(
            "name a collection with `--ns db.coll` or `--ns-regex DB.REGEX`".into(),
        ));
    }
    Ok(out)
}

fn check_kind(spec: &catalog::NsSpec) -> Result<(), Refusal> {
    match spec.kind {
        NsKind::Collection => Ok(()),
        NsKind::View => Err(OpError::Refused(format!("`resync` is refused: `{}` is a view (it holds no documents; its definition is replicated)", spec.ns),
        )),
        NsKind::Timeseries => Err(OpError::Refused(format!(
                "`resync` is refused: `{}` is a time-series collection, which cannot be renamed into place; use \
                 `cutover verify --repair` for its differences",
                spec.ns
            ),
        )),
    }
}

/// Stores one request per namespace for the lane; returns the batch id the records share.
pub async fn request(
    store: &StateStore,
    lane: &str,
    namespaces: &[Namespace],
) -> Result<String, StateError> {
    let batch = ObjectId::new().to_hex();
    let who = crate::ops::repair::who();
    for ns in namespaces {
        let id = format!("{}/{}", store.plan(), ObjectId::new().to_hex());
        store
            .insert_operator_record(
                RESYNCS,
                doc! {
                    "_id": id, "plan": store.plan(), "lane": lane, "batch": &batch, "ns": ns.to_string(),
                    "who": who.clone(), "requested": DateTime::now(), "state": ResyncState::Pending,
                },
            )
            .await?;
    }
    Ok(batch)
}

/// One resync, as recorded.
#[derive(Clone, Debug, Serialize)]
pub struct ResyncView {
    pub ns: String,
    /// `pending`, `copying`, `swapping`, `done` or `failed`.
    pub state: ResyncState,
    pub who: String,
    pub requested: Option<String>,
    pub started: Option<String>,
    pub finished: Option<String>,
    /// The lane's position (source time `seconds.increment`) where the hold began.
    pub position: Option<String>,
    /// The temporary destination collection the copy writes.
    pub temp: Option<String>,
    pub estimated_documents: i64,
    pub copied_documents: i64,
    /// The namespace's change events held during the copy.
    pub held_events: i64,
    /// Held events replayed after the swap (or, when cancelled, onto the original).
    pub replayed_events: i64,
    pub attempt: i32,
    pub error: Option<String>,
}

impl ResyncView {
    /// The view of a stored request; an error names a state this build does not know.
    pub fn from_record(d: &Document) -> Result<Self, UnknownState> {
        let time = |k: &str| {
            d.get_datetime(k)
                .ok()
                .and_then(|t| t.try_to_rfc3339_string().ok())
        };
        let who = d
            .get_document("who")
            .map(|w| {
                format!(
                    "{}@{} pid {}",
                    w.get_str("user").unwrap_or("?"),
                    w.get_str("host").unwrap_or("?"),
                    w.get_i64("pid").unwrap_or(0)
                )
            })
            .unwrap_or_else(|_| "?".into());
        Ok(Self {
            ns: d.get_str("ns").unwrap_or("?").to_string(),
            state: ResyncState::of(d)?,
            who,
            requested: time("requested"),
            started: time("started"),
            finished: time("finished"),
            position: d
                .get_timestamp("position")
                .ok()
                .map(|t| format!("{}.{}", t.time, t.increment)),
            temp: d.get_str("temp").ok().map(str::to_string),
            estimated_documents: d.get_i64("estimated_documents").unwrap_or(0),
            copied_documents: d.get_i64("copied_documents").unwrap_or(0),
            held_events: d.get_i64("held_events").unwrap_or(0),
            replayed_events: d.get_i64("replayed_events").unwrap_or(0),
            attempt: d.get_i32("attempt").unwrap_or(0),
            error: d.get_str("error").ok().map(str::to_string),
        })
    }

    pub fn finished_state(&self) -> bool {
        self.state.finished()
    }

    /// One line: `shop.orders: copying, 1200/5000 documents, 35 events held (by ..., requested ...)`.
    pub fn to_text(&self) -> String {
        let mut s = format!("{}: {}", self.ns, self.state);
        match self.state {
            ResyncState::Pending => s += " (waiting for the lane)",
            ResyncState::Copying | ResyncState::Swapping => {
                s += &format!(
                    ", {}/{} documents copied, {} events held",
                    self.copied_documents, self.estimated_documents, self.held_events
                )
            }
            ResyncState::Done | ResyncState::Failed => {
                s += &format!(
                    ", {} documents copied, {} events held and replayed",
                    self.copied_documents, self.replayed_events
                )
            }
        }
        if let Some(p) = &self.position {
            s += &format!(", from source time {p}");
        }
        s += &format!(
            " (by {}, requested {})",
            self.who,
            self.requested.as_deref().unwrap_or("?")
        );
        if let Some(e) = &self.error {
            s += &format!(": {e}");
        }
        s
    }
}

#[derive(Debug, Serialize)]
pub struct ResyncReport {
    /// True when every requested resync is done.
    pub ok: bool,
    pub plan: String,
    pub resyncs: Vec<ResyncView>,
}

impl ResyncReport {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|_| "{\"ok\": false}".into())
    }

    pub fn to_text(&self) -> String {
        let mut s = format!("resync `{}`:\n", self.plan);
        for r in &self.resyncs {
            s += &format!("  {}\n", r.to_text());
        }
        s
    }
}

/// How waiting for the lane ended.
pub enum Waited {
    /// Every request is done or failed.
    Finished(Vec<ResyncView>),
    /// The runner stopped (the requests stay; the next `cutover run` serves them).
    RunnerGone(Vec<ResyncView>),
    TimedOut(Vec<ResyncView>),
}

/// Waits for the lane to serve a batch; `tick` sees the records every few seconds.
pub async fn wait(
    store: &StateStore,
    batch: &str,
    timeout: Duration,
    mut tick: impl FnMut(&[ResyncView]),
) -> Result<Waited, StateError> {
    let start = Instant::now();
    let mut last_tick = Instant::now();
    loop {
        let views: Vec<ResyncView> = records(store, doc! {"batch": batch})
            .await?
            .iter()
            .map(ResyncView::from_record)
            .collect::<Result<_, _>>()?;
        if views.iter().all(ResyncView::finished_state) {
            return Ok(Waited::Finished(views));
        }
        if last_tick.elapsed() >= Duration::from_secs(5) {
            tick(&views);
            last_tick = Instant::now();
        }
        if !store.runner_live().await? {
            return Ok(Waited::RunnerGone(views));
        }
        if start.elapsed() >= timeout {
            return Ok(Waited::TimedOut(views));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The plan's unfinished resyncs and the last few finished ones, newest first, for `status`.
pub async fn recent(store: &StateStore) -> Vec<ResyncView> {
    let docs: Vec<Document> = store
        .find(
            RESYNCS,
            doc! {"plan": store.plan()},
            Some(doc! {"requested": -1}),
            Some(20),
        )
        .await
        .unwrap_or_default();
    let mut out: Vec<ResyncView> = docs
        .iter()
        .filter_map(|d| match ResyncView::from_record(d) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(error = %e, "A resync record is left out of the status.");
                None
            }
        })
        .collect();
    let mut finished = 0;
    out.retain(|v| {
        if v.finished_state() {
            finished += 1;
            finished <= 5
        } else {
            true
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(d: Document) -> RunRecord {
        RunRecord::from_doc("p", &d).unwrap()
    }

    #[test]
    fn gate_needs_a_live_runner_and_refuses_after_the_commit() {
        let running = rec(doc! {"state": "RUNNING"});
        let lane = doc! {"_id": "p/forward", "copy_done": true};
        assert_eq!(
            gate("p", Some(&running), true, Some(&lane)),
            Ok("p/forward".into())
        );
        let e = gate("p", Some(&running), false, Some(&lane)).unwrap_err();
        assert!(e.contains("no `cutover run` is live"), "{e}");
        assert!(gate("p", None, false, None)
            .unwrap_err()
            .contains("has not started"));
        for committed in [
            doc! {"state": "COMMITTED"},
            doc! {"state": "COMMITTING"},
            doc! {"state": "RUNNING", "direction": "reverse"},
        ] {
            let e = gate("p", Some(&rec(committed)), true, Some(&lane)).unwrap_err();
            assert!(e.contains("commit"), "{e}");
        }
        let copying = doc! {"_id": "p/forward", "copy_done": false};
        assert!(gate("p", Some(&running), true, Some(&copying))
            .unwrap_err()
            .contains("initial copy"));
    }
}
