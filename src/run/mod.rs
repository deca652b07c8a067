//! The step interpreter: walks the plan's steps from the last checkpoint. Each step handler
//! is idempotent on re-entry after a crash: it records its intent in the state store before
//! acting and checks the clusters' real state when re-entered.

mod roles;
mod status_writer;
mod steps;

use steps::{commit, reverse, sync, validate_indexes, verify};

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mongodb::bson::{doc, DateTime, Document};
use serde::Serialize;
use tracing::Instrument;

use crate::base::role::Role;
use crate::cluster::{set_user_write_block_within, Cluster, ClusterError};

use crate::engine::error::EngineError;
use crate::engine::lane::{Direction, Lane, LaneEnv};
use crate::engine::progress::Progress;
use crate::engine::retry::RetryPolicy;
use crate::plan::{Plan, Step};
use crate::state::lease::{Holder, LeaseLost};
use crate::state::record::{RunRecord, StepStatus};
use crate::state::{StateError, StateStore};

/// Runtime knobs (command-line only; the plan describes the migration itself).
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Forget the migration's progress and start the copy over (refused after a commit).
    pub restart: bool,
    /// Accept a plan whose clusters/options/steps changed since the migration started.
    pub accept_changed_plan: bool,
    /// Run at most this many steps, then stop (replication stops with the process).
    pub max_steps: Option<usize>,
    pub copy_concurrency: usize,
    pub docs_per_range: u64,
    pub apply_workers: usize,
    pub retry_timeout: Duration,
    pub connect_timeout: Duration,
    /// Show progress bars (stderr is a TTY and not `--quiet`).
    pub progress_bars: bool,
    /// Serve the HTTP API here (`--listen`); the token comes from `CUTOVER_API_TOKEN`.
    pub listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("step {index} (`{kind}`) failed: {source}")]
    Step {
        index: usize,
        kind: &'static str,
        source: EngineError,
    },
    #[error("{0}")]
    Refused(String),
    #[error("interrupted; run the same command again to continue")]
    Interrupted,
    /// Another runner took the plan over: this one stopped without writing further.
    #[error(transparent)]
    LeaseLost(LeaseLost),
}

impl RunError {
    pub fn hint(&self) -> Option<String> {
        match self {
            RunError::Cluster(c) => Some(c.hint().to_string()),
            RunError::Step { source, .. } => source.hint().map(str::to_string),
            RunError::LeaseLost(l) if l.taken_over() => Some(match &l.holder {
                Some(h) => format!(
                    "the runner {h} holds this plan now and drives it; `cutover status PLAN` shows it. \
                     Run this one again only if that runner is gone"
                ),
                None => "another `cutover run` took this plan; `cutover status PLAN` names the one that \
                         holds it now. Run this one again only if that runner is gone"
                    .into(),
            }),
            RunError::LeaseLost(_) => Some(
                "no other runner held this plan as far as this one knows (the error says whether the \
                 state store confirmed it): this one waited for the state store (the destination) for \
                 `--retry-timeout` and stopped; run the same command again to continue once the \
                 destination answers"
                    .into(),
            ),
            RunError::State(StateError::Leased { .. }) => Some(
                "a runner that was killed lets go of the plan when its lease expires (by the state store's clock); \
                 one killed on this host is taken over at once"
                    .into(),
            ),
            RunError::State(StateError::Changed { .. }) => Some(
                "restore the plan as it was, or pass `--accept-changed-plan` if the change is deliberate and safe".into(),
            ),
            _ => None,
        }
    }
}

/// What a run did, printed at the end (text or JSON), also when it failed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunReport {
    pub plan: String,
    pub ok: bool,
    pub steps: Vec<StepReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_blocked_window_ms: Option<i64>,
    /// What that window was spent on, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub write_blocked_window_phases: Vec<crate::state::record::WindowPhase>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The clusters whose user writes this run left blocked when it stopped with an error
    /// (by its own knowledge: the blocks it set and those recorded when it started).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub blocked: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct StepReport {
    pub index: usize,
    pub kind: &'static str,
    /// `done` (this run), `already-done`, `failed`, `not-run`.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The runner's context, shared by step handlers.
pub struct Ctx {
    pub plan: Plan,
    pub source: Cluster,
    pub destination: Cluster,
    pub store: StateStore,
    pub opts: RunOptions,
    pub lane: Option<Lane>,
    /// The progress the status reporter publishes (the current lane's).
    pub current: Arc<Mutex<Option<Arc<Progress>>>>,
    /// The clusters (plan roles) whose user writes are blocked, by this runner's knowledge:
    /// recorded at start, then every block it sets or lifts. Named when the run stops.
    pub blocked: std::collections::BTreeSet<&'static str>,
}

impl Ctx {
    /// The lane environment for a direction: clients swapped for `Reverse`.
    pub fn lane_env(&self, direction: Direction) -> LaneEnv {
        let (s, d) = match direction {
            Direction::Forward => (&self.source, &self.destination),
            Direction::Reverse => (&self.destination, &self.source),
        };
        LaneEnv {
            source: s.client.clone(),
            destination: d.client.clone(),
            store: self.store.clone(),
            selector: self.plan.selector.clone(),
            build_indexes: self.plan.options.build_indexes,
            max_lag: self.plan.options.max_lag.get(),
            apply_during_copy: self.plan.options.apply_during_copy,
            copy_concurrency: self.opts.copy_concurrency,
            docs_per_range: self.opts.docs_per_range,
            apply_workers: self.opts.apply_workers,
            retry: RetryPolicy {
                timeout: self.opts.retry_timeout,
            },
        }
    }

    /// Starts (or resumes) the lane of `direction` if it is not the one running.
    pub fn ensure_lane(
        &mut self,
        direction: Direction,
        start_at: Option<mongodb::bson::Timestamp>,
    ) -> &mut Lane {
        if self.lane.as_ref().is_some_and(|l| l.direction != direction) {
            self.lane = None;
        }
        if self.lane.is_none() {
            let lane = Lane::start(self.lane_env(direction), direction, start_at);
            if let Ok(mut g) = self.current.lock() {
                *g = Some(lane.progress.clone());
            }
            self.lane = Some(lane);
        }
        self.lane.as_mut().expect("lane was just set")
    }

    /// Forgets the (stopped) lane, so status no longer reports its progress.
    pub fn drop_lane(&mut self) {
        self.lane = None;
        if let Ok(mut g) = self.current.lock() {
            *g = None;
        }
    }

    /// Which cluster plays which role for `direction`.
    pub fn roles(&self, direction: Direction) -> (&Cluster, &Cluster) {
        match direction {
            Direction::Forward => (&self.source, &self.destination),
            Direction::Reverse => (&self.destination, &self.source),
        }
    }

    /// Records the intent, then blocks or unblocks user writes on `which` (a plan role).
    pub async fn set_block(&mut self, which: Role, on: bool) -> Result<(), RunError> {
        let name = which.as_str();
        let key = crate::state::record::block_field(which);
        let cluster = if which == Role::Source {
            &self.source
        } else {
            &self.destination
        };
        // Prove on the server that this runner still holds the plan before changing a cluster.
        if let Some(f) = self.store.fence() {
            f.verify(self.opts.retry_timeout)
                .await
                .map_err(RunError::LeaseLost)?;
        }
        if on {
            // Intent first: status must never miss a block that may have happened.
            self.store.set(doc! {key.clone(): true}).await?;
            self.blocked.insert(name);
            set_user_write_block_within(cluster, true, self.opts.retry_timeout).await?;
            tracing::info!(cluster = which.as_str(), "User writes blocked.");
        } else {
            set_user_write_block_within(cluster, false, self.opts.retry_timeout).await?;
            self.blocked.remove(name);
            self.store.set(doc! {key: false}).await?;
            tracing::info!(cluster = which.as_str(), "User writes unblocked.");
        }
        Ok(())
    }
}

/// Runs the plan from its last checkpoint.
pub async fn run(plan: Plan, opts: RunOptions) -> (RunReport, Result<(), RunError>) {
    let mut report = RunReport {
        plan: plan.name.clone(),
        ..Default::default()
    };
    let result = run_inner(plan, opts, &mut report).await;
    report.ok = result.is_ok();
    if let Err(e) = &result {
        report.error = Some(crate::base::redact::scrub(&e.to_string()));
    }
    (report, result)
}

async fn run_inner(plan: Plan, opts: RunOptions, report: &mut RunReport) -> Result<(), RunError> {
    let api = match opts.listen {
        Some(addr) => Some(
            crate::ops::http::bind(addr, crate::base::env::get(crate::base::env::API_TOKEN))
                .await
                .map_err(RunError::Refused)?,
        ),
        None => None,
    };
    let source = Cluster::connect(Role::Source, &plan.source, opts.connect_timeout).await?;
    let destination =
        Cluster::connect(Role::Destination, &plan.destination, opts.connect_timeout).await?;
    // The state store has its own client: see `Cluster::dedicated_client`.
    let state_client = destination.dedicated_client(opts.connect_timeout).await?;
    let store = StateStore::new(&state_client, &plan.state_database, &plan.name)
        .with_retry(opts.retry_timeout);
    let kinds: Vec<&str> = plan.steps.iter().map(Step::kind).collect();
    let ttl = crate::state::lease::lease_ttl().map_err(RunError::Refused)?;
    let fence = store.take_lease(Holder::mine(), ttl).await?;
    let store = store.with_fence(fence.clone());
    crate::state::lease::install(Some(&fence));
    let renewal = fence.spawn_renewal();
    let opened = async {
        if opts.restart {
            restart(&plan, &store, &destination, opts.retry_timeout).await?;
        }
        store
            .open_run(&plan.fingerprint, &kinds, opts.accept_changed_plan)
            .await?;
        Ok::<(), RunError>(())
    }
    .await;
    if let Err(e) = opened {
        renewal.abort();
        crate::state::lease::install(None);
        fence.release().await;
        source.client.clone().shutdown().await;
        destination.client.clone().shutdown().await;
        state_client.shutdown().await;
        return Err(fenced_error(&fence, e));
    }

    let current: Arc<Mutex<Option<Arc<Progress>>>> = Arc::new(Mutex::new(None));
    let reporter = status_writer::spawn_reporter(
        // Status updates are best-effort: one that fails is replaced a second later.
        store.clone().with_retry(Duration::ZERO),
        current.clone(),
        plan.source.hosts_display(),
        plan.destination.hosts_display(),
        opts.progress_bars,
    );
    let disk_watch = crate::ops::diskwatch::spawn(
        source.client.clone(),
        destination.client.clone(),
        current.clone(),
    );
    let mut service = crate::ops::service::start(
        plan.clone(),
        store.clone().with_retry(Duration::ZERO),
        source.client.clone(),
        destination.client.clone(),
        current.clone(),
        api.is_some(),
    )
    .await;
    if let Some(bound) = api {
        service.attach(|live, stop| crate::ops::http::serve(bound, live, stop));
    }
    // The blocks a previous runner left (status must never miss one).
    let blocked = match store.record().await {
        Ok(rec) => ["source", "destination"]
            .into_iter()
            .filter(|c| rec.blocks.get(*c).copied().unwrap_or(false))
            .collect(),
        Err(_) => Default::default(),
    };
    let mut ctx = Ctx {
        plan,
        source,
        destination,
        store,
        opts,
        lane: None,
        current,
        blocked,
    };
    // A lost lease ends the run at once, wherever it is.
    let result = tokio::select! {
        r = run_steps(&mut ctx, report) => r,
        l = fence.lost() => Err(RunError::LeaseLost(l)),
    };
    renewal.abort();
    disk_watch.abort();
    crate::state::lease::install(None);

    if let Some(lost) = fence.lost_error() {
        // Another runner owns the plan: no graceful stop (it would write a checkpoint), no
        // status, no release. Whatever is in flight is refused by the fence.
        if let Some(lane) = ctx.lane.take() {
            lane.abort();
        }
        reporter.abort();
        let lost = fence.explain(lost).await;
        tracing::error!("{lost}");
        if !lost.taken_over() {
            // Stopped for good with no other runner known: name what stays blocked.
            report.blocked = ctx.blocked.iter().map(|c| c.to_string()).collect();
        }
        return Err(RunError::LeaseLost(lost));
    }
    // Stop replication at a safe point (the current round is finished and checkpointed).
    if let Some(mut lane) = ctx.lane.take() {
        if let Err(e) = lane.stop().await {
            tracing::warn!(error = %e, "Replication stopped with an error.");
        }
    }
    reporter.stop().await;
    service.stop().await;
    if let Err(e) = &result {
        let _ = ctx
            .store
            .set(doc! {"last_error": crate::base::redact::scrub(&e.to_string())})
            .await;
    }
    let result = result.map_err(|e| fenced_error(&fence, e));
    if result.is_err() {
        report.blocked = ctx.blocked.iter().map(|c| c.to_string()).collect();
    }
    fence.release().await;
    ctx.source.client.clone().shutdown().await;
    ctx.destination.client.clone().shutdown().await;
    state_client.shutdown().await;
    result
}

/// An error seen after the lease was lost is that loss, whatever surfaced first.
fn fenced_error(fence: &crate::state::lease::Fence, e: RunError) -> RunError {
    match (fence.lost_error(), e) {
        (Some(l), _) => RunError::LeaseLost(l),
        (None, RunError::State(StateError::LeaseLost(l))) => RunError::LeaseLost(l),
        (None, e) => e,
    }
}

async fn restart(
    plan: &Plan,
    store: &StateStore,
    destination: &Cluster,
    retry_timeout: Duration,
) -> Result<(), RunError> {
    let run: RunRecord = store.record().await?;
    if !run.started() {
        // Nothing was started: there is no partial copy of ours to drop, and the
        // destination's namespaces are not ours to touch.
        tracing::info!(plan = %plan.name, "Restart: no migration recorded for this plan; starting fresh.");
        return Ok(());
    }
    if run.past_cutover() {
        return Err(RunError::Refused(format!(
            "`--restart` is refused: plan `{}` has begun or finished its commit (state {}); restarting would \
             drop data on the cluster your application now uses",
            plan.name, run.state
        )));
    }
    if let Some(f) = store.fence() {
        f.verify(retry_timeout).await.map_err(RunError::LeaseLost)?;
    }
    // What this migration copied so far is stale: drop it so the copy starts clean.
    let specs = crate::engine::catalog::list_selected(&destination.client, &plan.selector)
        .await
        .map_err(|e| RunError::Refused(e.to_string()))?;
    for s in specs {
        tracing::warn!(ns = %s.ns, "Restart: dropping the partial copy on the destination.");
        destination
            .client
            .database(&s.ns.db)
            .collection::<Document>(&s.ns.coll)
            .drop()
            .await
            .map_err(|e| {
                RunError::Cluster(crate::cluster::classify(
                    Role::Destination,
                    &plan.destination.hosts_display(),
                    &e,
                ))
            })?;
    }
    store.reset().await?;
    tracing::info!(plan = %plan.name, "Restart: progress forgotten; the copy starts over.");
    Ok(())
}

async fn run_steps(ctx: &mut Ctx, report: &mut RunReport) -> Result<(), RunError> {
    let steps = ctx.plan.steps.clone();
    let mut ran = 0usize;
    let mut result = Ok(());
    for (i, step) in steps.iter().enumerate() {
        let kind = step.kind();
        if ctx.store.record().await?.step_status(i) == StepStatus::Done {
            report.steps.push(StepReport {
                index: i,
                kind,
                status: "already-done",
                seconds: None,
                detail: None,
            });
            continue;
        }
        if result.is_err() || ctx.opts.max_steps.is_some_and(|m| ran >= m) {
            report.steps.push(StepReport {
                index: i,
                kind,
                status: "not-run",
                seconds: None,
                detail: None,
            });
            continue;
        }
        // Everything the step logs (its lane's too, while it runs) is inside this span.
        let span = tracing::info_span!("step", index = i, kind);
        tracing::info!(parent: &span, "Step started.");
        ctx.store.step_status(i, StepStatus::Running, None).await?;
        let started = Instant::now();
        let outcome = tokio::select! {
            r = run_step(ctx, i, step).instrument(span.clone()) => r,
            _ = tokio::signal::ctrl_c() => Err(RunError::Interrupted),
        };
        let secs = started.elapsed().as_secs_f64();
        match outcome {
            Ok(detail) => {
                ctx.store.step_status(i, StepStatus::Done, None).await?;
                tracing::info!(parent: &span, seconds = format!("{secs:.1}"), "Step done.");
                report.steps.push(StepReport {
                    index: i,
                    kind,
                    status: "done",
                    seconds: Some(secs),
                    detail,
                });
                ran += 1;
            }
            Err(e) => {
                let text = crate::base::redact::scrub(&e.to_string());
                if !matches!(e, RunError::Interrupted) {
                    ctx.store
                        .step_status(i, StepStatus::Failed, Some(&text))
                        .await?;
                }
                report.steps.push(StepReport {
                    index: i,
                    kind,
                    status: "failed",
                    seconds: Some(secs),
                    detail: Some(text),
                });
                result = Err(e);
            }
        }
    }
    let rec = ctx.store.record().await?;
    if let Some(w) = rec.last_window_ms() {
        report.write_blocked_window_ms = Some(w);
        report.write_blocked_window_phases = rec.last_window_phases();
    }
    result
}

async fn run_step(ctx: &mut Ctx, i: usize, step: &Step) -> Result<Option<String>, RunError> {
    let fail = |source: EngineError| RunError::Step {
        index: i,
        kind: step.kind(),
        source,
    };
    match step {
        Step::Sync(_) => sync::sync(ctx, fail).await,
        Step::ValidateIndexes(_) => validate_indexes::validate_indexes(ctx, i)
            .await
            .map_err(fail),
        Step::Commit(c) => commit::commit(ctx, i, c).await,
        Step::Reverse(_) => reverse::reverse(ctx, i).await,
        Step::Verify(v) => verify::verify(ctx, v).await.map_err(fail),
    }
}

/// The wall-clock time now as a BSON date.
pub fn now() -> DateTime {
    DateTime::now()
}
