//! A replication lane: one direction (source → destination). It records its start point,
//! copies (forward only), then applies change events in the background until its owner
//! drains or stops it. All of it resumes from the `lanes` and `partitions` records.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt, TryStreamExt};
use mongodb::bson::{doc, Bson, Document, Timestamp};
use mongodb::Client;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::base::namespace::Namespace;
use crate::base::role::Role;
use crate::engine::apply::ctx::ApplyCtx;
use crate::engine::apply::{self, StartPoint};
use crate::engine::catalog::{self, NsKind, RelaxationStore};
use crate::engine::clock::cluster_time;
use crate::engine::control::Control;
use crate::engine::copy::{self, CopyCtx};
use crate::engine::error::{cluster_err, on, EngineError};
use crate::engine::gate::Gate;
use crate::engine::progress::Progress;
use crate::engine::retry::RetryPolicy;
use crate::plan::{BuildIndexes, NamespaceSelector};
use crate::state::states::LanePhase;
use crate::state::{StateStore, LANES};

pub use crate::state::record::Direction;

/// Collections whose indexes are built at once. A server runs a few builds in parallel
/// (`maxNumActiveUserIndexBuilds`, 3 by default) and queues the rest; a few more in flight
/// keep it busy between one build's majority wait and the next.
const INDEX_BUILDS_IN_FLIGHT: usize = 8;

/// Everything a lane needs; `source`/`destination` are already swapped for `Reverse`.
#[derive(Clone)]
pub struct LaneEnv {
    pub source: Client,
    pub destination: Client,
    pub store: StateStore,
    pub selector: NamespaceSelector,
    pub build_indexes: BuildIndexes,
    pub max_lag: Duration,
    /// Apply change events while the copy runs (a new forward lane; see `gate.rs`).
    pub apply_during_copy: bool,
    pub copy_concurrency: usize,
    pub docs_per_range: u64,
    pub apply_workers: usize,
    pub retry: RetryPolicy,
}

pub struct Lane {
    pub id: String,
    pub direction: Direction,
    pub progress: Arc<Progress>,
    control: watch::Sender<Control>,
    position: watch::Receiver<Option<Timestamp>>,
    task: Option<JoinHandle<Result<(), EngineError>>>,
}

impl Lane {
    pub fn lane_id(plan: &str, direction: Direction) -> String {
        crate::state::record::lane_id(plan, direction)
    }

    /// Starts or resumes a lane. `start_at` is the reverse lane's start point (the
    /// destination's time when it became writable); the forward lane records its own.
    pub fn start(env: LaneEnv, direction: Direction, start_at: Option<Timestamp>) -> Lane {
        let id = Self::lane_id(env.store.plan(), direction);
        let progress = Arc::new(Progress::new());
        let _ = progress.direction.set(direction);
        let (control, control_rx) = watch::channel(Control::Run);
        let (position_tx, position) = watch::channel(None);
        // The lane's logs nest under its span (and under the step that started it).
        let span = tracing::info_span!("lane", lane = %id);
        let task = tokio::spawn(
            lane_main(
                env,
                direction,
                id.clone(),
                start_at,
                progress.clone(),
                control_rx,
                position_tx,
            )
            .instrument(span),
        );
        Lane {
            id,
            direction,
            progress,
            control,
            position,
            task: Some(task),
        }
    }

    /// Waits until the lane can commit (copy done, lag ≤ max_lag). Fails if the lane fails,
    /// or after `timeout`.
    pub async fn wait_can_commit(&mut self, timeout: Option<Duration>) -> Result<(), EngineError> {
        let start = Instant::now();
        loop {
            if self.progress.can_commit.load(Ordering::Relaxed) {
                return Ok(());
            }
            self.check_alive().await?;
            if let Some(t) = timeout {
                if start.elapsed() >= t {
                    return Err(EngineError::TimedOut(format!(
                        "the sync did not reach can-commit within {} (phase: {}, lag: {})",
                        humantime::format_duration(t),
                        self.progress.phase(),
                        self.progress
                            .lag_seconds()
                            .map_or("unknown".into(), |l| format!("{l:.1}s"))
                    )));
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Fails if the lane's task has ended with an error (or ended at all).
    pub async fn check_alive(&mut self) -> Result<(), EngineError> {
        if self.task.as_ref().is_some_and(|t| t.is_finished()) {
            if let Some(t) = self.task.take() {
                return match t.await {
                    Ok(Ok(())) => Err(EngineError::Task("replication stopped unexpectedly".into())),
                    Ok(Err(e)) => Err(e),
                    Err(j) => Err(EngineError::Task(format!("replication task failed: {j}"))),
                };
            }
            return Err(EngineError::Task("replication is not running".into()));
        }
        Ok(())
    }

    /// Waits until the lane has applied every event up to the source time `to` (its
    /// position reached it). Fails if the lane fails, or after `timeout`.
    pub async fn wait_applied(
        &mut self,
        to: Timestamp,
        timeout: Option<Duration>,
    ) -> Result<(), EngineError> {
        let start = Instant::now();
        while self.position().is_none_or(|p| p < to) {
            self.check_alive().await?;
            if let Some(t) = timeout {
                if start.elapsed() >= t {
                    return Err(EngineError::TimedOut(format!(
                        "replication did not apply the source's writes up to {}.{} within {} (phase: {}, lag: {})",
                        to.time,
                        to.increment,
                        humantime::format_duration(t),
                        self.progress.phase(),
                        self.progress
                            .lag_seconds()
                            .map_or("unknown".into(), |l| format!("{l:.1}s"))
                    )));
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// A receiver of the applied position, for waiting on replication elsewhere (verify).
    pub fn position_watch(&self) -> watch::Receiver<Option<Timestamp>> {
        self.position.clone()
    }

    /// The source time up to which every event is applied.
    pub fn position(&self) -> Option<Timestamp> {
        *self.position.borrow()
    }

    /// Applies every event up to `to` (inclusive), then stops the lane.
    pub async fn drain_to(&mut self, to: Timestamp) -> Result<(), EngineError> {
        self.control.send_replace(Control::DrainTo(to));
        self.join().await
    }

    /// Stops after the current round and waits for the task.
    pub async fn stop(&mut self) -> Result<(), EngineError> {
        self.control.send_replace(Control::Stop);
        self.join().await
    }

    /// Cancels the lane's task at once, without a checkpoint (the lease was lost).
    pub fn abort(mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    async fn join(&mut self) -> Result<(), EngineError> {
        match self.task.take() {
            Some(t) => t
                .await
                .map_err(|j| EngineError::Task(format!("replication task failed: {j}")))?,
            None => Ok(()),
        }
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        self.control.send_replace(Control::Stop);
    }
}

/// Runs the lane; a forward lane whose resume point left the source's oplog recovers (see
/// [`recover`](crate::engine::recover)) and runs on from a new start point.
async fn lane_main(
    env: LaneEnv,
    direction: Direction,
    id: String,
    start_at: Option<Timestamp>,
    progress: Arc<Progress>,
    control: watch::Receiver<Control>,
    position: watch::Sender<Option<Timestamp>>,
) -> Result<(), EngineError> {
    let mut recoveries = 0;
    loop {
        let result = lane_run(
            &env,
            direction,
            &id,
            start_at,
            progress.clone(),
            control.clone(),
            position.clone(),
        )
        .await;
        match result {
            // A reverse lane has no copy to compare: its lost point stays an error.
            Err(EngineError::HistoryLost { at, .. })
                if direction == Direction::Forward && recoveries < 3 =>
            {
                recoveries += 1;
                recover_lost_point(&env, direction, &id, &progress, &at).await?;
            }
            other => return other,
        }
    }
}

/// The first half of a recovery: a new start point, the catalog and range records (see
/// [`recover`](crate::engine::recover)); the lane then runs its copy, which compares and
/// rewrites the ranges marked to reconcile.
async fn recover_lost_point(
    env: &LaneEnv,
    direction: Direction,
    id: &str,
    progress: &Arc<Progress>,
    lost_at: &str,
) -> Result<(), EngineError> {
    use crate::engine::recover;
    let store = env.store.clone();
    progress.set_phase(LanePhase::Recovering);
    tracing::warn!(
        lane = %id, lost_at,
        "The source's oplog no longer holds the lane's resume point (the runner was stopped \
         for longer than the oplog window). Recovering: a new start point, then every range \
         copied so far is compared with the source and only what differs is rewritten."
    );
    let relax = RelaxationStore::new(store.database().clone(), store.plan(), direction)
        .with_fence(store.fence().cloned());
    let copy_ctx = copy_ctx(env, direction, id, progress);
    let start = cluster_time(&env.source, Role::Source).await?;
    // The copy set is listed again: collections created meanwhile are copied.
    store
        .delete_many(
            crate::state::PARTITIONS,
            doc! {"_id": {"$regex": format!("^{}", regex::escape(&format!("{id}/#specs")))}},
        )
        .await?;
    let specs = env
        .retry
        .run(progress, "listing the collections to copy", || {
            copy::copy_set(&copy_ctx, &env.selector)
        })
        .await?;
    let prepared = env
        .retry
        .run(
            progress,
            "comparing the catalog after a lost resume point",
            || {
                recover::prepare(
                    &env.source,
                    &env.destination,
                    &store,
                    direction,
                    id,
                    &env.selector,
                    &specs,
                    &relax,
                )
            },
        )
        .await?;
    create_catalog(
        env,
        direction,
        &specs,
        true,
        progress,
        &relax,
        &copy::Counts::new(),
    )
    .await?;
    // A crash here finds the old point lost again and prepares again (idempotent).
    crate::base::crashpoint::hit("recover.prepared", None);
    store
        .update_one(
            LANES,
            doc! {"_id": id},
            doc! {
                "$set": {
                    "start_ts": start, "copy_done": false, "apply_during_copy": true,
                    "catalog_done": true,
                    "recovering": {
                        "lost_at": lost_at, "started": mongodb::bson::DateTime::now(),
                        "start_ts": start, "ranges": prepared.ranges as i64,
                        "recopied": &prepared.recopied, "dropped": &prepared.dropped,
                        "indexes_dropped": prepared.indexes_dropped as i64,
                    },
                },
                "$unset": {"resume_token": ""},
            },
        )
        .await?;
    tracing::info!(
        lane = %id,
        ranges_to_compare = prepared.ranges,
        collections_copied_again = prepared.recopied.len(),
        namespaces_dropped = prepared.dropped.len(),
        indexes_dropped = prepared.indexes_dropped,
        start = %format!("{}.{}", start.time, start.increment),
        "Recovery prepared: replication restarts at a new start point while the copied ranges are compared."
    );
    Ok(())
}

/// The copy's context for this lane, without a gate (the copy with events adds one).
fn copy_ctx(env: &LaneEnv, direction: Direction, id: &str, progress: &Arc<Progress>) -> CopyCtx {
    CopyCtx {
        source: env.source.clone(),
        dest: env.destination.clone(),
        store: env.store.clone(),
        lane: id.to_string(),
        progress: progress.clone(),
        concurrency: env.copy_concurrency,
        docs_per_range: env.docs_per_range,
        retry: env.retry,
        direction,
        gate: None,
        after_copy: None,
        flags: copy::RangeFlags::new(env.store.clone()),
    }
}

async fn lane_run(
    env: &LaneEnv,
    direction: Direction,
    id: &str,
    start_at: Option<Timestamp>,
    progress: Arc<Progress>,
    control: watch::Receiver<Control>,
    position: watch::Sender<Option<Timestamp>>,
) -> Result<(), EngineError> {
    let id = id.to_string();
    let env = env.clone();
    let store = env.store.clone();
    let relax = Arc::new(
        RelaxationStore::new(store.database().clone(), store.plan(), direction)
            .with_fence(store.fence().cloned()),
    );
    let copy_ctx = copy_ctx(&env, direction, &id, &progress);

    let mut record = env
        .retry
        .run(&progress, "reading the lane record", || async {
            let once = store.clone().with_retry(Duration::ZERO);
            Ok(once.find_one(LANES, doc! {"_id": &id}, None).await?)
        })
        .await?;
    let resumed = record.is_some();
    if record.is_none() {
        progress.set_phase(LanePhase::Starting);
        let (start_ts, copy_done) = match (direction, start_at) {
            (_, Some(ts)) => (ts, true),
            (Direction::Forward, None) => (cluster_time(&env.source, Role::Source).await?, false),
            (Direction::Reverse, None) => {
                return Err(EngineError::Corrupt(
                    "reverse lane started without a start point".into(),
                ))
            }
        };
        if !copy_done {
            refuse_non_empty_destination(&env, direction).await?;
        }
        let d = doc! {
            "_id": &id, "plan": store.plan(), "direction": direction.as_str(),
            "start_ts": start_ts, "copy_done": copy_done, "events_applied": 0i64,
            "apply_during_copy": !copy_done && env.apply_during_copy,
            "created": mongodb::bson::DateTime::now(),
        };
        store.insert_many(LANES, vec![d.clone()]).await?;
        tracing::info!(lane = %id, start = %format!("{}.{}", start_ts.time, start_ts.increment), "Replication lane started.");
        record = Some(d);
    }
    let record = record.unwrap_or_default();
    let start_ts = record
        .get_timestamp("start_ts")
        .map_err(|_| EngineError::Corrupt(format!("lane record `{id}` has no start point")))?;

    let start = match record.get("resume_token") {
        Some(Bson::Document(tok)) => StartPoint::Token(tok.clone()),
        _ => StartPoint::Time(start_ts),
    };
    let copy_done = record.get_bool("copy_done").unwrap_or(false);
    if !copy_done && record.get_bool("apply_during_copy").unwrap_or(false) {
        return copy_with_events(
            &env, direction, id, &record, resumed, start, start_ts, progress, relax, copy_ctx,
            control, position,
        )
        .await;
    }
    if !copy_done {
        progress.set_phase(LanePhase::Copying);
        let specs = env
            .retry
            .run(&progress, "listing the collections to copy", || {
                copy::copy_set(&copy_ctx, &env.selector)
            })
            .await?;
        progress
            .collections_total
            .store(specs.len() as u64, Ordering::Relaxed);
        let counts = copy::estimate(&env.source, &specs, &progress).await;
        let indexed =
            create_catalog(&env, direction, &specs, resumed, &progress, &relax, &counts).await?;
        progress.set_phase(LanePhase::Copying);
        copy::copy_all(&copy_ctx, &specs, &counts, &indexed).await?;
        if env.build_indexes == BuildIndexes::AfterCopy {
            progress.set_phase(LanePhase::BuildingIndexes);
            build_all_indexes(&env, direction, &progress, &specs, &relax).await?;
        }
        progress
            .collections_done
            .store(specs.len() as u64, Ordering::Relaxed);
        store
            .update_one(
                LANES,
                doc! {"_id": &id},
                doc! {"$set": copy_done_fields(&progress)},
            )
            .await?;
        tracing::info!(lane = %id, "Copy finished; applying change events.");
    }
    progress.copy_done.store(true, Ordering::Relaxed);
    progress.set_phase(LanePhase::Applying);
    let ctx = apply_ctx(
        &env, direction, &id, relax, progress, copy_ctx, position, None,
    );
    apply::run(ctx, start, control).await
}

/// The copy with change events applied while it runs (see [`gate`](crate::engine::gate)):
/// the catalog first (once: a restart after DDL was replayed must not create from the old
/// listing again), then the copy in a task and the change application here, both through
/// one gate. The copy is done when every range is copied and its held events applied.
#[allow(clippy::too_many_arguments)]
async fn copy_with_events(
    env: &LaneEnv,
    direction: Direction,
    id: String,
    record: &Document,
    resumed: bool,
    start: StartPoint,
    start_ts: Timestamp,
    progress: Arc<Progress>,
    relax: Arc<RelaxationStore>,
    copy_ctx: CopyCtx,
    control: watch::Receiver<Control>,
    position: watch::Sender<Option<Timestamp>>,
) -> Result<(), EngineError> {
    let store = env.store.clone();
    progress.set_phase(LanePhase::Copying);
    let listing = Instant::now();
    let specs = env
        .retry
        .run(&progress, "listing the collections to copy", || {
            copy::copy_set(&copy_ctx, &env.selector)
        })
        .await?;
    progress
        .collections_total
        .store(specs.len() as u64, Ordering::Relaxed);
    let listed = listing.elapsed();
    let counts = copy::estimate(&env.source, &specs, &progress).await;
    tracing::info!(
        namespaces = specs.len(),
        listing_seconds = format!("{:.1}", listed.as_secs_f64()),
        sizes_seconds = format!("{:.1}", (listing.elapsed() - listed).as_secs_f64()),
        "Listed the namespaces to copy and their sizes."
    );
    // Small collections indexed with their creation (empty after a restart: their after-copy
    // build then finds the indexes there and leaves them).
    let mut indexed = HashSet::new();
    if !record.get_bool("catalog_done").unwrap_or(false) {
        let creating = Instant::now();
        indexed =
            create_catalog(env, direction, &specs, resumed, &progress, &relax, &counts).await?;
        store
            .update_one(
                LANES,
                doc! {"_id": &id},
                doc! {"$set": {"catalog_done": true}},
            )
            .await?;
        tracing::info!(
            namespaces = specs.len(),
            indexed_with_creation = indexed.len(),
            seconds = format!("{:.1}", creating.elapsed().as_secs_f64()),
            "Created the namespaces on the destination."
        );
    }
    progress.set_phase(LanePhase::Copying);
    let (start_time, start_token) = match &start {
        StartPoint::Token(t) => (apply::token_time(t).unwrap_or(start_ts), Some(t.clone())),
        StartPoint::Time(ts) => (*ts, None),
    };
    let gate = Gate::new(
        specs.iter().filter_map(catalog::copy_target),
        start_time,
        start_token,
        progress.clone(),
    );
    // Ranges a previous run started: held from the restart point before any event is routed.
    copy::register_planned(&copy_ctx, &specs, &gate).await?;
    let gated = CopyCtx {
        gate: Some(gate.clone()),
        after_copy: (env.build_indexes == BuildIndexes::AfterCopy).then(|| relax.clone()),
        ..copy_ctx.clone()
    };
    let recovering = record.get_document("recovering").ok().cloned();
    let copy_task = {
        let gate = gate.clone();
        let store = store.clone();
        let progress = progress.clone();
        let id = id.clone();
        tokio::spawn(
            async move {
                let result = async {
                    copy::copy_all(&gated, &specs, &counts, &indexed).await?;
                    // Every range copied: the change application applies what they held.
                    while !gate.drained() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    let mut update = doc! {"$set": copy_done_fields(&progress)};
                    if let Some(r) = &recovering {
                        let report =
                            crate::engine::recover::report(&store, &id, r, &progress).await?;
                        tracing::info!(
                            ranges_compared = report.get_i64("ranges_compared").unwrap_or(0),
                            ranges_differing = report.get_i64("ranges_differing").unwrap_or(0),
                            documents_rewritten = report.get_i64("documents_rewritten").unwrap_or(0),
                            bytes_rewritten = report.get_i64("bytes_rewritten").unwrap_or(0),
                            collections_copied_again = report.get_array("recopied").map(|a| a.len()).unwrap_or(0),
                            source_bytes = report.get_i64("source_bytes").unwrap_or(0),
                            "Recovered from the lost resume point: only what differed was rewritten."
                        );
                        update.insert("$push", doc! {"recoveries": report});
                        update.insert("$unset", doc! {"recovering": ""});
                    }
                    store
                        .update_one(LANES, doc! {"_id": &id}, update)
                        .await?;
                    progress.copy_done.store(true, Ordering::Relaxed);
                    progress.set_phase(LanePhase::Applying);
                    tracing::info!(
                        events_applied_during_copy =
                            progress.events_applied_during_copy.load(Ordering::Relaxed),
                        events_dropped =
                            progress.events_dropped_during_copy.load(Ordering::Relaxed),
                        held_peak_mb =
                            progress.held_peak_bytes.load(Ordering::Relaxed) / (1024 * 1024),
                        "Copy finished; change events were applied during it."
                    );
                    Ok::<(), EngineError>(())
                }
                .await;
                if let Err(e) = result {
                    gate.fail(e);
                }
            }
            .in_current_span(),
        )
    };
    let ctx = apply_ctx(
        env,
        direction,
        &id,
        relax,
        progress,
        copy_ctx,
        position,
        Some(gate),
    );
    let result = apply::run(ctx, start, control).await;
    // Stopped or failed: the copy stops too (its ranges resume from their checkpoints).
    copy_task.abort();
    result
}

/// What the lane record keeps of the copy once it is done (for `status` after the copy and
/// the commit).
fn copy_done_fields(progress: &Progress) -> Document {
    let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as i64;
    doc! {
        "copy_done": true, "copy_finished": mongodb::bson::DateTime::now(),
        "copied_bytes": n(&progress.copied_bytes),
        "copied_documents": n(&progress.copied_docs),
        "estimated_total_bytes": n(&progress.estimated_total_bytes),
        "events_applied_during_copy": n(&progress.events_applied_during_copy),
        "held_peak_bytes": n(&progress.held_peak_bytes),
    }
}

/// The change application's context for this lane (`gate`: while the copy runs).
#[allow(clippy::too_many_arguments)]
fn apply_ctx(
    env: &LaneEnv,
    direction: Direction,
    id: &str,
    relax: Arc<RelaxationStore>,
    progress: Arc<Progress>,
    copy: CopyCtx,
    position: watch::Sender<Option<Timestamp>>,
    gate: Option<Arc<Gate>>,
) -> ApplyCtx {
    ApplyCtx {
        direction,
        source: env.source.clone(),
        dest: env.destination.clone(),
        store: env.store.clone(),
        lane: id.to_string(),
        selector: env.selector.clone(),
        relax,
        progress,
        retry: env.retry,
        workers: env.apply_workers,
        copy,
        max_lag: env.max_lag,
        position,
        keying: Default::default(),
        gate,
    }
}

/// Creates the copy's collections on the destination (and, with `before-copy`, their
/// indexes). Catalog operations are idempotent: a transient failure runs one again. Up to
/// [`catalog::CATALOG_CONCURRENCY`] at once: collections first, then the views (in order:
/// one may read another).
async fn create_catalog(
    env: &LaneEnv,
    direction: Direction,
    specs: &[catalog::NsSpec],
    resumed: bool,
    progress: &Progress,
    relax: &RelaxationStore,
    counts: &copy::Counts,
) -> Result<HashSet<Namespace>, EngineError> {
    // With `after-copy`, a small collection gets its indexes with its creation: an index
    // built on an empty collection is ready at once (no build over documents), and its few
    // documents then cost little to index as they are inserted. At thousands of collections
    // this halves the copy's per-collection work. Big ones are indexed after their copy.
    let small = |s: &catalog::NsSpec| {
        env.build_indexes == BuildIndexes::AfterCopy
            && s.kind == NsKind::Collection
            && catalog::copy_target(s)
                .and_then(|t| counts.get(&t))
                .is_some_and(|n| *n <= copy::SMALL_DOCS)
    };
    // The futures are built before the stream: a closure inside it makes the lane's spawned
    // future not `Send` (a higher-ranked lifetime the compiler cannot prove).
    let creates: Vec<_> = specs
        .iter()
        .filter(|s| s.kind != NsKind::View)
        .map(|s| create_one(env, direction, s, resumed, progress, relax, small(s)))
        .collect();
    stream::iter(creates)
        .buffer_unordered(catalog::CATALOG_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    for s in specs.iter().filter(|s| s.kind == NsKind::View) {
        create_one(env, direction, s, resumed, progress, relax, false).await?;
    }
    if env.build_indexes == BuildIndexes::BeforeCopy {
        progress.set_phase(LanePhase::BuildingIndexes);
        build_all_indexes(env, direction, progress, specs, relax).await?;
    }
    Ok(specs
        .iter()
        .filter(|s| small(s))
        .filter_map(catalog::copy_target)
        .collect())
}

async fn create_one(
    env: &LaneEnv,
    direction: Direction,
    s: &catalog::NsSpec,
    resumed: bool,
    progress: &Progress,
    relax: &RelaxationStore,
    with_indexes: bool,
) -> Result<(), EngineError> {
    let what = format!("creating `{}`", s.ns);
    env.retry
        .run(progress, &what, || async {
            if with_indexes && !resumed {
                return catalog::create_with_indexes(&env.destination, s, relax)
                    .await
                    .map_err(on(direction.writes()));
            }
            if resumed {
                catalog::create_on_destination_resumed(&env.destination, s, relax)
                    .await
                    .map_err(on(direction.writes()))?
            } else {
                catalog::create_on_destination(&env.destination, s, relax)
                    .await
                    .map_err(on(direction.writes()))?
            }
            if with_indexes {
                catalog::build_indexes(&env.destination, s, relax)
                    .await
                    .map_err(on(direction.writes()))?
            }
            Ok(())
        })
        .await
}

/// Builds every collection's indexes (one `createIndexes` each with all of its indexes),
/// several collections at once.
async fn build_all_indexes(
    env: &LaneEnv,
    direction: Direction,
    progress: &Progress,
    specs: &[catalog::NsSpec],
    relax: &RelaxationStore,
) -> Result<(), EngineError> {
    let builds: Vec<_> = specs
        .iter()
        .filter(|s| s.kind != NsKind::View)
        .map(|s| build_indexes(env, direction, progress, s, relax))
        .collect();
    stream::iter(builds)
        .buffer_unordered(INDEX_BUILDS_IN_FLIGHT)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Builds a collection's indexes on the destination, retrying transient failures.
async fn build_indexes(
    env: &LaneEnv,
    direction: Direction,
    progress: &Progress,
    s: &catalog::NsSpec,
    relax: &RelaxationStore,
) -> Result<(), EngineError> {
    let what = format!("building the indexes of `{}`", s.ns);
    env.retry
        .run(progress, &what, || async {
            catalog::build_indexes(&env.destination, s, relax)
                .await
                .map_err(on(direction.writes()))
        })
        .await
}

/// cutover copies into empty namespaces only: an existing non-empty one would mix data.
async fn refuse_non_empty_destination(
    env: &LaneEnv,
    direction: Direction,
) -> Result<(), EngineError> {
    let specs = catalog::list_selected(&env.destination, &env.selector)
        .await
        .map_err(on(direction.writes()))?;
    let mut busy = Vec::new();
    for s in specs.iter().filter(|s| s.kind != NsKind::View) {
        let Some(ns) = catalog::copy_target(s) else {
            continue;
        };
        let n = env
            .destination
            .database(&ns.db)
            .collection::<Document>(&ns.coll)
            .estimated_document_count()
            .await
            .map_err(|e| cluster_err(direction.writes(), format!("counting `{ns}`"), &e))?;
        if n > 0 {
            busy.push(format!("`{}` ({n} documents)", s.ns));
        }
    }
    if busy.is_empty() {
        Ok(())
    } else {
        Err(EngineError::Differs(format!(
            "the destination already holds data in {}: cutover copies into empty namespaces only; drop them \
             on the destination or exclude them with `options.exclude`",
            busy.join(", ")
        )))
    }
}
