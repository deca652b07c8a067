//! The status document (`runs.status` in the state store) and its reporters: progress bars
//! on a TTY, periodic log lines otherwise. `cutover status` reads the same document from any
//! machine that reaches the destination.

use std::time::Duration;

use mongodb::bson::{doc, Bson, Document};
use serde::Serialize;

use crate::state::record::{Direction, RunRecord, RunState};
use crate::state::StateStore;
/// What `cutover status --format json` prints. Field names follow mongosync's `/progress`.
#[derive(Debug, Serialize)]
pub struct StatusView {
    pub plan: String,
    pub state: String,
    pub phase: String,
    pub can_commit: bool,
    pub can_write: bool,
    pub lag_seconds: Option<f64>,
    pub collection_copy: CopyView,
    pub events_applied: i64,
    pub direction: DirectionView,
    /// Clusters whose user writes cutover has (or may have) blocked, with the command that
    /// releases each.
    pub blocked: Vec<BlockedView>,
    pub steps: Vec<StepView>,
    pub reconnecting: Option<String>,
    pub write_blocked_window_ms: Option<i64>,
    /// What that window was spent on (block, drain, restore, counts, unblock...), in order.
    pub write_blocked_window_phases: Vec<crate::state::record::WindowPhase>,
    /// Set while `cutover pause` holds the run.
    pub paused: Option<PausedView>,
    /// Why the lag is what it is (rates, stage busy time, bottleneck; see `stats.rs`).
    pub insight: Option<crate::engine::stats::Insight>,
    /// The live lease's holder (`host H pid P`), by the state store's clock.
    pub runner: Option<String>,
    /// The plan's fencing epoch: goes up by one each time a runner takes the plan.
    pub epoch: Option<i64>,
    /// When the live lease expires unless renewed (the state store's clock).
    pub lease_until: Option<String>,
    /// Set when the lease ran out without renewal but its runner may still be waiting for the
    /// state store to confirm it (lease *unconfirmed*, not lost): every write waits, and the
    /// runner carries on by itself when the store answers, unless another runner took the
    /// plan. `gives_up` says when it stops trying.
    pub lease_unconfirmed: Option<crate::state::lease::UnconfirmedView>,
    pub last_error: Option<String>,
    pub updated: Option<String>,
    /// The last `verify --repair` (who, when, what it repaired).
    pub last_repair: Option<crate::ops::repair::RepairSummary>,
    /// `cutover resync` requests: unfinished ones and the last few finished, newest first,
    /// with their progress (documents copied, events held and replayed).
    pub resyncs: Vec<crate::ops::resync_request::ResyncView>,
    /// Lost resume points the forward lane recovered from (oldest first), and one in
    /// progress (`finished: null`): ranges compared, and what was rewritten.
    pub recoveries: Vec<RecoveryView>,
}

#[derive(Debug, Serialize)]
pub struct RecoveryView {
    pub lost_at: String,
    pub started: Option<String>,
    pub finished: Option<String>,
    pub ranges_compared: i64,
    pub ranges_differing: i64,
    pub documents_rewritten: i64,
    pub documents_deleted: i64,
    pub bytes_rewritten: i64,
    /// Collections dropped on the destination and copied again in full (renamed, dropped,
    /// changed options, or read in natural order).
    pub collections_copied_again: Vec<String>,
    pub source_bytes: i64,
}

impl RecoveryView {
    fn from_doc(d: &Document) -> Self {
        let n = |k: &str| d.get_i64(k).unwrap_or(0);
        let t = |k: &str| {
            d.get_datetime(k)
                .ok()
                .and_then(|t| t.try_to_rfc3339_string().ok())
        };
        Self {
            lost_at: d.get_str("lost_at").unwrap_or_default().to_string(),
            started: t("started"),
            finished: t("finished"),
            ranges_compared: n("ranges_compared").max(n("ranges")),
            ranges_differing: n("ranges_differing"),
            documents_rewritten: n("documents_rewritten"),
            documents_deleted: n("documents_deleted"),
            bytes_rewritten: n("bytes_rewritten"),
            collections_copied_again: d
                .get_array("recopied")
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            source_bytes: n("source_bytes"),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct CopyView {
    /// Whether the copy finished (its figures are then final).
    pub done: bool,
    pub estimated_total_bytes: i64,
    pub estimated_copied_bytes: i64,
    pub copied_documents: i64,
    /// Change events applied while the copy ran.
    pub events_applied: i64,
    /// Change events the copy's reads saw first (not applied: the range had not been read).
    pub events_dropped: i64,
    /// Change events held now until their range's copy is durable, and their bytes.
    pub held_events: i64,
    pub held_bytes: i64,
    pub held_peak_bytes: i64,
}

#[derive(Debug, Serialize)]
pub struct PausedView {
    pub since: Option<String>,
    pub by: Option<String>,
    /// How long the pause can last before the source's oplog rolls past the resume point.
    pub oplog_remaining_seconds: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct DirectionView {
    pub source: String,
    pub destination: String,
}

#[derive(Debug, Serialize)]
pub struct BlockedView {
    pub cluster: String,
    pub release: String,
    /// Set when no runner holds the plan (so none is working to release the block): the
    /// one command that continues the migration, and releases the block when it is done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub continue_with: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct StepView {
    pub index: usize,
    pub kind: String,
    pub status: String,
    pub error: Option<String>,
    /// When the step started and finished (the runner's clock), and how long it ran (so
    /// far, for a running step).
    pub started: Option<String>,
    pub finished: Option<String>,
    pub seconds: Option<f64>,
}

/// The status of a run from its record and the raw run document it was read from (the
/// runner's `status` sub-document, the lease holder); `lease_live` must come from the state
/// store's clock ([`StateStore::record_live`]).
pub fn view(
    plan_name: &str,
    plan_file: &str,
    rec: &RunRecord,
    run: Option<&Document>,
    source_hosts: &str,
    destination_hosts: &str,
) -> StatusView {
    let empty = Document::new();
    let run = run.unwrap_or(&empty);
    let st = run.get_document("status").unwrap_or(&empty);
    let copy = st.get_document("collection_copy").unwrap_or(&empty);
    let reversed = rec.direction == Direction::Reverse;
    let i64_of = |d: &Document, k: &str| match d.get(k) {
        Some(Bson::Int64(v)) => *v,
        Some(Bson::Int32(v)) => i64::from(*v),
        Some(Bson::Double(v)) => *v as i64,
        _ => 0,
    };
    let unconfirmed = crate::state::lease::stored_unconfirmed(run);
    let nobody = rec.lease_live != Some(true) && unconfirmed.is_none();
    let blocked = ["source", "destination"]
        .iter()
        .filter(|c| rec.blocks.get(**c).copied().unwrap_or(false))
        .map(|c| BlockedView {
            cluster: c.to_string(),
            release: format!("cutover unblock {plan_file} --cluster {c} --yes"),
            continue_with: nobody.then(|| format!("cutover run {plan_file}")),
        })
        .collect();
    let steps = rec
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let rfc =
                |d: Option<mongodb::bson::DateTime>| d.and_then(|d| d.try_to_rfc3339_string().ok());
            let seconds = s.started.map(|a| {
                let b = match (s.status, s.finished) {
                    (crate::state::record::StepStatus::Running, _) => {
                        mongodb::bson::DateTime::now()
                    }
                    (_, Some(f)) => f,
                    (_, None) => a,
                };
                (b.timestamp_millis() - a.timestamp_millis()).max(0) as f64 / 1000.0
            });
            StepView {
                index: i,
                kind: s.kind.clone(),
                status: s.status.as_str().into(),
                error: s.error.clone(),
                started: rfc(s.started),
                finished: rfc(s.finished)
                    .filter(|_| s.status != crate::state::record::StepStatus::Running),
                seconds,
            }
        })
        .collect();
    // Whether the lease is live was decided by the state store's clock
    // ([`StateStore::run_doc_for_status`] adds `lease_live`), never by this host's.
    let lease = run
        .get_document("lease")
        .ok()
        .filter(|_| rec.lease_live == Some(true));
    let runner = lease.map(|l| {
        format!(
            "host {} pid {}",
            l.get_str("host").unwrap_or("?"),
            l.get_i64("pid").unwrap_or(0)
        )
    });
    let lease_until = lease
        .and_then(|l| l.get_datetime("until").ok())
        .and_then(|d| d.try_to_rfc3339_string().ok());
    let epoch = run
        .contains_key(crate::state::lease::EPOCH)
        .then(|| crate::state::lease::stored_epoch(run));
    let mut v = StatusView {
        plan: plan_name.to_string(),
        state: rec.state.as_str().to_string(),
        phase: match crate::state::states::LanePhase::of(st) {
            Ok(Some(p)) => p.to_string(),
            Ok(None) => "not started".to_string(),
            // Shown as the error (it names the value), never taken for a known phase.
            Err(e) => e.to_string(),
        },
        can_commit: st.get_bool("can_commit").unwrap_or(false),
        can_write: rec.can_write,
        lag_seconds: st.get_f64("lag_seconds").ok(),
        collection_copy: CopyView {
            done: false,
            estimated_total_bytes: i64_of(copy, "estimated_total_bytes"),
            estimated_copied_bytes: i64_of(copy, "estimated_copied_bytes"),
            copied_documents: i64_of(copy, "copied_documents"),
            events_applied: i64_of(copy, "events_applied"),
            events_dropped: i64_of(copy, "events_dropped"),
            held_events: i64_of(copy, "held_events"),
            held_bytes: i64_of(copy, "held_bytes"),
            held_peak_bytes: i64_of(copy, "held_peak_bytes"),
        },
        events_applied: i64_of(st, "events_applied"),
        direction: if reversed {
            DirectionView {
                source: destination_hosts.to_string(),
                destination: source_hosts.to_string(),
            }
        } else {
            DirectionView {
                source: source_hosts.to_string(),
                destination: destination_hosts.to_string(),
            }
        },
        blocked,
        steps,
        reconnecting: st.get_str("reconnecting").ok().map(str::to_string),
        write_blocked_window_ms: rec.last_window_ms(),
        write_blocked_window_phases: rec.last_window_phases(),
        paused: None,
        insight: run
            .get_document("insight")
            .ok()
            .and_then(|d| mongodb::bson::from_document(d.clone()).ok()),
        runner,
        epoch,
        lease_until,
        lease_unconfirmed: unconfirmed,
        last_error: rec.last_error.clone(),
        updated: st
            .get_datetime("at")
            .ok()
            .and_then(|d| d.try_to_rfc3339_string().ok()),
        last_repair: None,
        resyncs: Vec::new(),
        recoveries: Vec::new(),
    };
    // Replication runs inside `cutover run`: without a runner, nothing is replicating, so
    // the last stored can-commit and lag no longer hold.
    if v.runner.is_none() && rec.state.replicating() {
        v.phase = format!(
            "stopped ({}); run `cutover run {plan_file}` to continue",
            v.phase
        );
        v.can_commit = false;
        v.lag_seconds = None;
        v.insight = None;
    }
    apply_pause(&mut v, rec);
    v
}

impl StatusView {
    pub fn to_text(&self) -> String {
        let mut s = format!("plan `{}`: {} ({})\n", self.plan, self.state, self.phase);
        s.push_str(&format!(
            "  direction     {} → {}\n",
            self.direction.source, self.direction.destination
        ));
        s.push_str(&format!(
            "  copy          {} of ~{} bytes, {} documents\n",
            self.collection_copy.estimated_copied_bytes,
            self.collection_copy.estimated_total_bytes,
            self.collection_copy.copied_documents
        ));
        let c = &self.collection_copy;
        if c.events_applied > 0 || c.held_events > 0 || c.held_peak_bytes > 0 {
            s.push_str(&format!(
                "  during copy   {} events applied, {} seen by the copy's reads; {} held ({} bytes, peak {} bytes)\n",
                c.events_applied, c.events_dropped, c.held_events, c.held_bytes, c.held_peak_bytes
            ));
        }
        s.push_str(&format!(
            "  replication   {} events applied, lag {}\n",
            self.events_applied,
            self.lag_seconds
                .map_or("unknown".into(), |l| format!("{l:.1}s"))
        ));
        for r in &self.recoveries {
            match &r.finished {
                Some(_) => s.push_str(&format!(
                    "  recovered     a lost resume point ({}): {} of {} ranges differed; {} documents \
                     ({} bytes) rewritten, {} deleted; {} collections copied again; source {} bytes\n",
                    r.lost_at,
                    r.ranges_differing,
                    r.ranges_compared,
                    r.documents_rewritten,
                    r.bytes_rewritten,
                    r.documents_deleted,
                    r.collections_copied_again.len(),
                    r.source_bytes
                )),
                None => s.push_str(&format!(
                    "  recovering    a lost resume point ({}): comparing {} copied ranges with the \
                     source, rewriting only what differs\n",
                    r.lost_at, r.ranges_compared
                )),
            }
        }
        if let Some(i) = &self.insight {
            s.push_str(&insight_text(i));
        }
        if let Some(p) = &self.paused {
            s.push_str(&format!(
                "  PAUSED        since {} by {}; the source's oplog allows the pause to last {}; continue with `cutover resume`\n",
                p.since.as_deref().unwrap_or("?"),
                p.by.as_deref().unwrap_or("?"),
                p.oplog_remaining_seconds
                    .map_or("an unknown time (the oplog could not be read)".into(), |r| format!("about {}", secs_text(r)))
            ));
        }
        s.push_str(&format!(
            "  can commit    {}\n  can write     {}\n",
            self.can_commit, self.can_write
        ));
        if let Some(w) = self.write_blocked_window_ms {
            s.push_str(&format!(
                "  write-blocked window of the last commit: {:.3}s{}\n",
                w as f64 / 1000.0,
                crate::state::record::describe_phases(&self.write_blocked_window_phases)
            ));
        }
        for st in &self.steps {
            s.push_str(&format!(
                "  step {} {:<17} {}",
                st.index, st.kind, st.status
            ));
            if let Some(e) = &st.error {
                s.push_str(&format!(": {e}"));
            }
            s.push('\n');
        }
        let epoch = self.epoch.map_or(String::new(), |e| format!("epoch {e}"));
        match &self.runner {
            Some(r) => s.push_str(&format!(
                "  runner        {r} ({epoch}, lease until {} by the state store's clock)\n",
                self.lease_until.as_deref().unwrap_or("?")
            )),
            None if self.lease_unconfirmed.is_some() => {}
            None if self.epoch.is_some() => s.push_str(&format!(
                "  runner        none (no `cutover run` holds this plan; last {epoch})\n"
            )),
            None => s.push_str("  runner        none (no `cutover run` holds this plan)\n"),
        }
        if let Some(u) = &self.lease_unconfirmed {
            s.push_str(&format!(
                "  runner        {} (epoch {}): LEASE UNCONFIRMED since {} — the state store did \
                 not confirm its renewals; every write waits, and it carries on by itself when the \
                 store answers unless another runner took the plan; it stops trying at {}{}\n",
                u.holder,
                u.epoch,
                u.last_renewed.as_deref().unwrap_or("?"),
                u.gives_up.as_deref().unwrap_or("?"),
                u.process
                    .as_deref()
                    .map(|p| format!(" (process: {p})"))
                    .unwrap_or_default()
            ));
            if let Some(e) = &u.last_error {
                s.push_str(&format!("                last renewal error: {e}\n"));
            }
        }
        if let Some(r) = &self.reconnecting {
            s.push_str(&format!("  RECONNECTING  {r}\n"));
        }
        for b in &self.blocked {
            s.push_str(&format!(
                "  BLOCKED       user writes on the {} cluster are blocked by cutover; release: `{}`\n",
                b.cluster, b.release
            ));
            if let Some(c) = &b.continue_with {
                s.push_str(&format!(
                    "                no runner is working to release it: `{c}` continues the migration\n"
                ));
            } else if let Some(u) = &self.lease_unconfirmed {
                s.push_str(&format!(
                    "                its runner ({}) waits for the state store and goes on to release \
                     it; if that process is gone, `cutover run` continues the migration once its \
                     lease expires for good ({})\n",
                    u.holder,
                    u.gives_up.as_deref().unwrap_or("?")
                ));
            }
        }
        if let Some(e) = &self.last_error {
            s.push_str(&format!("  last error    {e}\n"));
        }
        if let Some(r) = &self.last_repair {
            s.push_str(&format!("  last repair   {}\n", r.to_text()));
        }
        for r in &self.resyncs {
            s.push_str(&format!("  resync        {}\n", r.to_text()));
        }
        if let Some(u) = &self.updated {
            s.push_str(&format!("  updated       {u}\n"));
        }
        s
    }
}

/// Marks a paused run: `state` says `PAUSED` while replication would otherwise run (a
/// commit's drain ignores a pause, so `COMMITTING` stays).
fn apply_pause(v: &mut StatusView, rec: &RunRecord) {
    let p = &rec.pause;
    if !p.paused {
        return;
    }
    if rec.state.pausable() {
        v.state = "PAUSED".into();
    }
    v.paused = Some(PausedView {
        since: p.since.and_then(|d| d.try_to_rfc3339_string().ok()),
        by: p.by.clone(),
        oplog_remaining_seconds: v.insight.as_ref().and_then(|i| i.oplog_remaining_seconds),
    });
}

fn secs_text(s: f64) -> String {
    humantime::format_duration(Duration::from_secs(s.max(0.0) as u64)).to_string()
}

fn insight_text(i: &crate::engine::stats::Insight) -> String {
    let mut s = format!(
        "  rates         {:.1} events/s read, {:.1} events/s applied (last {:.0}s)\n",
        i.events_read_per_second, i.events_applied_per_second, i.window_seconds
    );
    s.push_str(&format!(
        "  busy          {}; bottleneck: {}\n",
        i.stages
            .iter()
            .map(|st| format!("{} {:.0}%", st.stage, st.busy_fraction * 100.0))
            .collect::<Vec<_>>()
            .join(", "),
        i.bottleneck
    ));
    if !i.busiest_namespaces.is_empty() {
        s.push_str(&format!(
            "  busiest       {}\n",
            i.busiest_namespaces
                .iter()
                .map(|n| format!("{} {:.1}/s", n.namespace, n.events_per_second))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    s.push_str(&format!(
        "  catch-up      {}\n",
        i.catch_up_seconds.map_or(
            "- (caught up, or the lag is not shrinking)".into(),
            secs_text
        )
    ));
    if let Some(o) = i.oplog_remaining_seconds {
        s.push_str(&format!(
            "  oplog left    {} before the source's oplog rolls past the resume point\n",
            secs_text(o)
        ));
    }
    s
}

/// The status of `plan` as `cutover status` and `GET /api/v1/progress` show it: the run
/// document's view, with durable counters from the lane records (events applied across
/// invocations; what the copy copied, also after the copy and after the commit).
pub async fn load_view(
    store: &StateStore,
    plan: &crate::plan::Plan,
) -> Result<StatusView, crate::state::StateError> {
    let (rec, run) = store.record_live().await?;
    let mut view = view(
        &plan.name,
        &plan.file,
        &rec,
        run.as_ref(),
        &plan.source.hosts_display(),
        &plan.destination.hosts_display(),
    );
    if let Ok(Some(lane)) = store.lane_doc(rec.direction).await {
        if let Ok(n) = lane.get_i64("events_applied") {
            view.events_applied = n;
        }
    }
    // The copy happens once, forward: its record keeps the figures.
    if let Ok(Some(lane)) = store.lane_doc(Direction::Forward).await {
        if let Ok(done) = lane.get_array("recoveries") {
            view.recoveries = done
                .iter()
                .filter_map(Bson::as_document)
                .map(RecoveryView::from_doc)
                .collect();
        }
        if let Ok(r) = lane.get_document("recovering") {
            let mut r = RecoveryView::from_doc(r);
            r.finished = None;
            view.recoveries.push(r);
        }
        if lane.get_bool("copy_done").unwrap_or(false) {
            view.collection_copy.done = true;
            let get = |k: &str| lane.get_i64(k).ok();
            if let (Some(b), Some(d)) = (get("copied_bytes"), get("copied_documents")) {
                let c = &mut view.collection_copy;
                c.estimated_copied_bytes = c.estimated_copied_bytes.max(b);
                c.copied_documents = c.copied_documents.max(d);
                c.estimated_total_bytes = c
                    .estimated_total_bytes
                    .max(get("estimated_total_bytes").unwrap_or(b));
            }
            let c = &mut view.collection_copy;
            c.events_applied = c
                .events_applied
                .max(get("events_applied_during_copy").unwrap_or(0));
            c.held_peak_bytes = c.held_peak_bytes.max(get("held_peak_bytes").unwrap_or(0));
            c.held_events = 0;
            c.held_bytes = 0;
        }
    }
    if rec.state == RunState::Committed {
        view.lag_seconds = None; // nothing is replicating after a commit
        view.insight = None;
    }
    view.last_repair = crate::ops::repair::last_repair(store).await;
    view.resyncs = crate::ops::resync_request::recent(store).await;
    Ok(view)
}
