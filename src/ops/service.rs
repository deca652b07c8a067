//! Operating a run like a service: the operations that `cutover pause|resume|approve` and the
//! HTTP API share, and the runner's service task, which every second
//! - follows pause requests in the run document (so they work from any machine),
//! - samples the current lane's counters into an [`Insight`] (rates, stage busy time,
//!   bottleneck, busiest namespaces, catch-up time) and, every 10 s, the source's oplog
//!   (how long before it rolls past the lane's resume point),
//! - publishes both in the run document (`insight`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::Client;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::engine::progress::Progress;
use crate::engine::stats::{Insight, Sampler};
use crate::ops::error::OpError;
use crate::plan::{Approval, Plan, Step};
use crate::state::record::{Direction, StepStatus};
use crate::state::StateStore;

/// What the runner shares with the HTTP API.
pub struct Live {
    pub plan: Plan,
    pub store: StateStore,
    pub current: Arc<Mutex<Option<Arc<Progress>>>>,
    pub insight: Mutex<Option<Insight>>,
    /// The last hours, one point a second, for the progress page's charts.
    pub history: Mutex<crate::ops::history::History>,
    /// The copy's progress per namespace, refreshed every second while it runs.
    pub copy: Mutex<crate::ops::history::CopyTable>,
}

impl Live {
    pub fn progress(&self) -> Option<Arc<Progress>> {
        self.current.lock().ok().and_then(|g| g.clone())
    }
}

/// The runner's service task (and the API server, if `--listen` was given: [`Service::attach`]).
pub struct Service {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    pub live: Arc<Live>,
}

impl Service {
    /// Runs `task` (the HTTP API) until [`Service::stop`]; it gets the stop signal.
    pub fn attach<F>(&mut self, task: impl FnOnce(Arc<Live>, watch::Receiver<bool>) -> F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let fut = task(self.live.clone(), self.stop.subscribe());
        self.tasks.push(tokio::spawn(fut));
    }

    pub async fn stop(self) {
        self.stop.send_replace(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Starts the service task; follows a pause already requested before returning, so a
/// paused plan's copy or change application does not start. `serving`: the HTTP API will be
/// attached, so the per-namespace copy table (a state-store aggregation and up to 100
/// `collStats` a second during the copy) is kept; without a listener nobody reads it.
pub async fn start(
    plan: Plan,
    store: StateStore,
    source: Client,
    destination: Client,
    current: Arc<Mutex<Option<Arc<Progress>>>>,
    serving: bool,
) -> Service {
    let live = Arc::new(Live {
        plan,
        store,
        current,
        insight: Mutex::new(None),
        history: Mutex::default(),
        copy: Mutex::default(),
    });
    if let Ok(run) = live.store.record().await {
        crate::base::pause_gate::set_paused(run.pause.paused);
    }
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    if serving {
        tasks.push(tokio::spawn(copy_loop(
            live.clone(),
            source.clone(),
            destination.clone(),
            stop_rx.clone(),
        )));
    }
    tasks.push(tokio::spawn(service_loop(
        live.clone(),
        source,
        destination,
        stop_rx,
    )));
    Service { stop, tasks, live }
}

async fn service_loop(
    live: Arc<Live>,
    source: Client,
    destination: Client,
    mut stop: watch::Receiver<bool>,
) {
    let mut sampler = Sampler::default();
    let mut last_oplog: Option<Instant> = None;
    let mut oplog_remaining: Option<f64> = None;
    // The previous oplog sample and the lane it was taken for (the source changes with it).
    let mut oplog_prev: Option<(Direction, crate::engine::stats::OplogSample)> = None;
    let mut was_paused = crate::base::pause_gate::operator_paused();
    loop {
        let run = live.store.record().await.ok();
        if let Some(run) = &run {
            let paused = run.pause.paused;
            if paused != was_paused {
                if paused {
                    tracing::info!("Pause requested: copying and change application stop at the next checkpoint.");
                } else {
                    tracing::info!("Resume requested.");
                }
                was_paused = paused;
            }
            crate::base::pause_gate::set_paused(paused);
        }
        let current = live.progress();
        if let Ok(mut h) = live.history.lock() {
            h.sample(current.as_deref());
        }
        if let Some(p) = current {
            let direction = run.as_ref().map(|r| r.direction).unwrap_or_default();
            if last_oplog.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                last_oplog = Some(Instant::now());
                let src = match direction {
                    Direction::Reverse => &destination,
                    Direction::Forward => &source,
                };
                let dir = direction;
                let sample = oplog_sample(src, &live.store, dir).await;
                let prev = oplog_prev
                    .as_ref()
                    .filter(|(d, _)| *d == dir)
                    .map(|(_, s)| s);
                oplog_remaining = sample
                    .as_ref()
                    .and_then(|s| crate::engine::stats::oplog_remaining(prev, s));
                if let Some(s) = sample {
                    oplog_prev = Some((dir, s));
                }
            }
            let (lane, now) = p.sample();
            let mut insight = sampler.sample(lane, now);
            insight.oplog_remaining_seconds = oplog_remaining;
            if let Ok(d) = mongodb::bson::to_document(&insight) {
                // Beside `status`, which the reporter rewrites whole every second.
                let _ = live.store.set(doc! {"insight": d}).await;
            }
            if let Ok(mut g) = live.insight.lock() {
                *g = Some(insight);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(1000)) => {}
            _ = stop.changed() => break,
        }
    }
}

/// Refreshes the per-namespace copy table every second while a lane copies (its own task: the
/// statistics of many collections must not delay the one-second samples).
async fn copy_loop(
    live: Arc<Live>,
    source: Client,
    destination: Client,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        if let Some(p) = live.progress() {
            let done = p.copy_done.load(std::sync::atomic::Ordering::Relaxed);
            // The copy is forward only: the reverse lane has no ranges to show.
            crate::ops::history::refresh_copy(&live.copy, &live.store, &source, &destination, done)
                .await;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => break,
        }
    }
}

/// Seconds before the source's oplog rolls past the lane's resume point (its stored
/// position, else its start point). `None` when it cannot be read (e.g. no permission on
/// `local`).
pub async fn oplog_sample(
    source: &Client,
    store: &StateStore,
    direction: Direction,
) -> Option<crate::engine::stats::OplogSample> {
    let lane = store.lane_doc(direction).await.ok()??;
    let resume = lane
        .get_timestamp("position")
        .or_else(|_| lane.get_timestamp("start_ts"))
        .ok()?;
    let local = source.database("local");
    let oplog = local.collection::<Document>("oplog.rs");
    let first = oplog
        .find_one(doc! {})
        .sort(doc! {"$natural": 1})
        .projection(doc! {"ts": 1})
        .await
        .ok()??
        .get_timestamp("ts")
        .ok()?;
    let last = oplog
        .find_one(doc! {})
        .sort(doc! {"$natural": -1})
        .projection(doc! {"ts": 1})
        .await
        .ok()??
        .get_timestamp("ts")
        .ok()?;
    let stats = local
        .run_command(doc! {"collStats": "oplog.rs"})
        .await
        .ok()?;
    let num = |k: &str| match stats.get(k) {
        Some(Bson::Int32(v)) => Some(f64::from(*v)),
        Some(Bson::Int64(v)) => Some(*v as f64),
        Some(Bson::Double(v)) => Some(*v),
        _ => None,
    };
    Some(crate::engine::stats::OplogSample {
        first: first.time,
        last: last.time,
        resume: resume.time,
        used: num("size")?,
        max: num("maxSize")?,
    })
}

/// `cutover pause` / `resume`: records the request in the run document, where the runner
/// (on any machine) follows it within a second.
pub async fn set_pause(store: &StateStore, paused: bool) -> Result<String, OpError> {
    let run = store.run_doc().await?.ok_or_else(|| {
        OpError::Failed(format!(
            "plan `{}` has no migration recorded yet: nothing to {}",
            store.plan(),
            if paused { "pause" } else { "resume" }
        ))
    })?;
    let run = crate::state::record::RunRecord::from_doc(store.plan(), &run)?;
    let host = hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into());
    let already = run.pause.paused;
    if paused == already {
        return Ok(format!(
            "plan `{}` is already {}",
            store.plan(),
            if paused {
                "paused"
            } else {
                "running (not paused)"
            }
        ));
    }
    let fields = if paused {
        doc! {"pause": {"paused": true, "since": DateTime::now(), "by": &host}}
    } else {
        doc! {"pause.paused": false, "pause.resumed": DateTime::now(), "pause.resumed_by": &host}
    };
    store.set(fields).await?;
    tracing::info!(plan = %store.plan(), host = %host, paused, "Pause state changed on request.");
    Ok(if paused {
        format!(
            "paused plan `{}`: the runner stops copying and applying at its next checkpoint; resume with `cutover resume`",
            store.plan()
        )
    } else {
        format!("resumed plan `{}`", store.plan())
    })
}

/// `cutover approve`: records the approval of a manual commit (`step`, default the first
/// manual commit not yet done). Returns the step and a message.
pub async fn approve(
    plan: &Plan,
    store: &StateStore,
    step: Option<usize>,
    note: &str,
) -> Result<(usize, String), OpError> {
    let manual: Vec<usize> = plan
        .steps
        .iter()
        .enumerate()
        .filter(|(_, s)| matches!(s, Step::Commit(c) if c.approval == Approval::Manual))
        .map(|(i, _)| i)
        .collect();
    if manual.is_empty() {
        return Err(OpError::Invalid(
            "the plan has no `commit` step with `approval = \"manual\"`; nothing to approve".into(),
        ));
    }
    let step = match step {
        Some(s) if manual.contains(&s) => s,
        Some(s) => {
            return Err(OpError::Invalid(format!(
                "step {s} is not a manual `commit`; manual commits are at {}",
                manual
                    .iter()
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
        None => {
            let run = store.record().await?;
            let done = |i: usize| run.step_status(i) == StepStatus::Done;
            match manual.iter().find(|i| !done(**i)) {
                Some(i) => *i,
                None => {
                    return Err(OpError::Failed(
                        "every manual commit of this plan is already done".into(),
                    ))
                }
            }
        }
    };
    let host = hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into());
    store.approve(step, &host, note).await?;
    tracing::info!(step, host = %host, "Commit approval recorded.");
    Ok((
        step,
        format!(
            "approved the commit at step {step} of plan `{}` (from {host})",
            plan.name
        ),
    ))
}

/// A commit approved (or automatic) while the run is paused waits for `cutover resume`
/// before it blocks any write.
pub async fn wait_resumed_before_commit(progress: Option<&Progress>) {
    if !crate::base::pause_gate::is_paused() {
        return;
    }
    tracing::info!("The run is paused: the commit starts after `cutover resume`.");
    match progress {
        Some(p) => crate::engine::control::hold_copy(p).await,
        None => crate::base::pause_gate::wait_resumed().await,
    }
}
