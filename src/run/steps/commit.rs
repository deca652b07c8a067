//! The cutover transitions: `commit` (block, drain, restore, unblock) and `reverse`, each
//! recording its intent before acting and checking the clusters' real state on re-entry.
//!
//! A commit's record lives at `commits.<step index>` in the run document:
//! `phase` = `waiting` → `blocking` → `draining` → `restoring` → `committed` → `done`.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt, TryStreamExt};
use mongodb::bson::{doc, Document, Timestamp};

use crate::base::namespace::Namespace;
use crate::base::role::Role;
use crate::engine::catalog::{self, RelaxationStore};
use crate::engine::clock::cluster_time as read_cluster_time;
use crate::engine::error::EngineError;
use crate::plan::model::CommitStep;
use crate::plan::{Approval, WriteBlocking};
use crate::run::roles::*;
use crate::run::{Ctx, RunError};
use crate::state::record::{
    commit_fields, CommitPhase, CommitRecord, Direction, RunState, WindowPhase,
};

pub async fn commit(
    ctx: &mut Ctx,
    i: usize,
    step: &CommitStep,
) -> Result<Option<String>, RunError> {
    let fail = |source: EngineError| RunError::Step {
        index: i,
        kind: "commit",
        source,
    };
    let direction = direction_of(ctx, i);
    let run = ctx.store.record().await?;
    let mut rec = run.commit(i).cloned().unwrap_or_default();
    let blocking = ctx.plan.options.write_blocking;
    let start_at = if direction == Direction::Reverse {
        run.reverse_start()
    } else {
        None
    };
    // The plan roles of this commit's two sides (a reverse commit's source is the plan's
    // destination): errors name the cluster as the plan does.
    let (src_name, dst_name) = (direction.reads(), direction.writes());

    // What the write-blocked window is spent on, as this runner saw it.
    let mut clock = WindowClock::new();
    // Collections whose counts matched before the block and that no event touched since need
    // no count inside the window; `None`: count every collection (a resumed commit, a DDL
    // event since, or no count before the block).
    let mut precounted: Option<HashSet<Namespace>> = None;
    let mut recount: Option<HashSet<Namespace>> = None;
    // Each arm does one phase's work and records the next phase before returning it: a
    // runner that stops anywhere resumes at the recorded phase, whose work is idempotent.
    loop {
        rec.phase = match rec.phase {
            CommitPhase::Waiting => {
                ctx.store
                    .set(commit_fields(
                        i,
                        doc! {"phase": CommitPhase::Waiting, "direction": direction},
                    ))
                    .await?;
                let started = Instant::now();
                let timeout = step.timeout.get();
                let lane = ctx.ensure_lane(direction, start_at);
                lane.wait_can_commit(Some(timeout)).await.map_err(fail)?;
                if step.approval == Approval::Manual {
                    wait_for_approval(ctx, i, timeout.saturating_sub(started.elapsed())).await?;
                    if let Some(l) = &ctx.lane {
                        l.progress
                            .set_phase(crate::state::states::LanePhase::Applying);
                    }
                }
                // A paused run does not block writes: the commit starts once resumed.
                crate::ops::service::wait_resumed_before_commit(
                    ctx.lane.as_ref().map(|l| &*l.progress),
                )
                .await;
                // Outside the window: every collection counted once, so that inside it only
                // those written since are counted again.
                // Best effort: if it cannot finish, every collection is counted inside.
                precounted = match precount(ctx, direction, start_at, (src_name, dst_name)).await {
                    Ok(differ) => Some(differ),
                    Err(e) => {
                        tracing::warn!(error = %e, "Could not count the documents before blocking writes; every collection is counted inside the write-blocked window.");
                        None
                    }
                };
                let blocked_at = mongodb::bson::DateTime::now();
                clock = WindowClock::new();
                let mut set = commit_fields(
                    i,
                    doc! {"phase": CommitPhase::Blocking, "blocked_at": blocked_at},
                );
                set.insert("state", RunState::Committing);
                ctx.store.set(set).await?;
                rec.blocked_at = Some(blocked_at);
                CommitPhase::Blocking
            }
            CommitPhase::Blocking => {
                let src = ctx.roles(direction).0.clone();
                if blocking == WriteBlocking::SourceAndDestination {
                    ctx.set_block(direction.reads(), true).await?;
                } else {
                    tracing::warn!(
                        "write_blocking is `{}`: cutover does not block the source; the application must have stopped writing to it",
                        match blocking { WriteBlocking::None => "none", _ => "destination-only" }
                    );
                }
                clock.lap("block the source");
                crate::base::crashpoint::hit("commit.blocked", Some(i));
                // Tests act here, inside the write-blocked window (tests/it/lease.rs).
                crate::base::crashpoint::pause("commit.blocked").await;
                // Every user write the source accepted has a time at or before this point.
                let block_ts = cluster_time(ctx, &src).await.map_err(fail)?;
                ctx.store
                    .set(commit_fields(
                        i,
                        doc! {"phase": CommitPhase::Draining, "block_ts": block_ts},
                    ))
                    .await?;
                clock.lap("block point");
                rec.block_ts = Some(block_ts);
                CommitPhase::Draining
            }
            CommitPhase::Draining => {
                let block_ts = rec.block_ts.ok_or_else(|| {
                    fail(EngineError::Corrupt(
                        "commit record without block point".into(),
                    ))
                })?;
                crate::base::crashpoint::hit("commit.draining", Some(i));
                let lane = ctx.ensure_lane(direction, start_at);
                if blocking == WriteBlocking::SourceAndDestination {
                    lane.drain_to(block_ts).await.map_err(fail)?;
                } else {
                    drain_until_quiet(ctx, direction, start_at, block_ts, step.timeout.get())
                        .await
                        .map_err(fail)?;
                }
                // Every event up to the block point is applied: what they touched since the
                // count before the block is all that can differ from it.
                let touched = ctx
                    .lane
                    .as_ref()
                    .and_then(|l| l.progress.touched.since_start());
                recount = match (precounted.take(), touched) {
                    (Some(mismatched), Some(touched)) => {
                        Some(mismatched.into_iter().chain(touched).collect())
                    }
                    _ => None,
                };
                ctx.drop_lane();
                ctx.store
                    .set(commit_fields(i, doc! {"phase": CommitPhase::Restoring}))
                    .await?;
                clock.lap("drain");
                CommitPhase::Restoring
            }
            CommitPhase::Restoring => {
                let (src, dst) = ctx.roles(direction);
                let (src, dst) = (src.client.clone(), dst.client.clone());
                let relax =
                    RelaxationStore::new(ctx.store.database().clone(), ctx.store.plan(), direction)
                        .with_fence(ctx.store.fence().cloned());
                // Prove on the server that this runner still holds the plan before changing a
                // cluster.
                if let Some(f) = ctx.store.fence() {
                    f.verify(ctx.opts.retry_timeout)
                        .await
                        .map_err(RunError::LeaseLost)?;
                }
                clock.lap("lease check");
                // Idempotent (each record is removed once restored): transient failures retry it.
                let policy = crate::engine::retry::RetryPolicy {
                    timeout: ctx.opts.retry_timeout,
                };
                let progress = crate::engine::progress::Progress::new();
                policy
                    .run(
                        &progress,
                        "restoring the relaxed indexes and options",
                        || async { Ok(catalog::restore_relaxations(&dst, &relax).await?) },
                    )
                    .await
                    .map_err(fail)?;
                clock.lap("restore relaxed indexes and options");
                // Checked before the block too: inside it only after DDL since (a failed
                // `dropDatabase` shows as its collections' drop events), or when resumed.
                if recount.is_none() {
                    drop_vanished_views(&src, &dst, &ctx.plan.selector, (src_name, dst_name))
                        .await
                        .map_err(fail)?;
                }
                clock.lap("views");
                let mismatches = count_check(
                    &src,
                    &dst,
                    &ctx.plan.selector,
                    (src_name, dst_name),
                    recount.take(),
                )
                .await
                .map_err(fail)?;
                clock.lap("document counts");
                if !mismatches.is_empty() {
                    return Err(fail(EngineError::Differs(format!(
                        "document counts differ after the drain: {}; the {dst_name} is still blocked",
                        mismatches.join(", ")
                    ))));
                }
                let mut set = commit_fields(i, doc! {"phase": CommitPhase::Committed});
                set.insert("state", RunState::Committed);
                ctx.store.set(set).await?;
                clock.lap("record the commit");
                crate::base::crashpoint::hit("commit.committed", Some(i));
                CommitPhase::Committed
            }
            CommitPhase::Committed => return unblock(ctx, i, direction, &rec, clock).await,
            CommitPhase::Done => return Ok(Some("already committed".into())),
        };
    }
}

/// The commit's last phase: records the reverse start point once, unblocks the destination
/// and records the write-blocked window.
async fn unblock(
    ctx: &mut Ctx,
    i: usize,
    direction: Direction,
    rec: &CommitRecord,
    mut clock: WindowClock,
) -> Result<Option<String>, RunError> {
    let blocking = ctx.plan.options.write_blocking;
    let dst = ctx.roles(direction).1.clone();
    // After a crash the in-memory record may predate what was stored: read it again.
    let stored = ctx
        .store
        .record()
        .await?
        .commit(i)
        .cloned()
        .unwrap_or_default();
    // The reverse start point: every write the new source accepts after it is unblocked has
    // a later time. Recorded once: after a crash past the unblock, a later time would miss
    // writes.
    if stored.can_write_ts.is_none() {
        let can_write_ts = cluster_time(ctx, &dst)
            .await
            .map_err(|source| RunError::Step {
                index: i,
                kind: "commit",
                source,
            })?;
        ctx.store
            .set(commit_fields(i, doc! {"can_write_ts": can_write_ts}))
            .await?;
    }
    crate::base::crashpoint::hit("commit.before-unblock", Some(i));
    if blocking != WriteBlocking::None {
        ctx.set_block(direction.writes(), false).await?;
    }
    clock.lap("unblock the destination");
    let now = mongodb::bson::DateTime::now();
    let blocked_at = rec.blocked_at.or(stored.blocked_at);
    let window = blocked_at.map(|b| now.timestamp_millis() - b.timestamp_millis());
    let mut commit = doc! {"phase": CommitPhase::Done, "writable_at": now};
    if let Some(w) = window {
        commit.insert("window_ms", w);
        let phases: Vec<mongodb::bson::Bson> = clock
            .phases(w)
            .into_iter()
            .filter_map(|p| mongodb::bson::to_bson(&p).ok())
            .collect();
        commit.insert("window_phases", phases);
    }
    let mut set = commit_fields(i, commit);
    set.extend(doc! {"can_write": true,
    "status.phase": crate::state::states::LanePhase::Committed, "status.can_commit": false});
    if let Some(w) = window {
        tracing::info!(
            window_ms = w,
            "Destination writable: write-blocked window {:.3}s.",
            w as f64 / 1000.0
        );
    }
    ctx.store.set(set).await?;
    Ok(Some(match window {
        Some(w) => format!("committed; write-blocked window {:.3}s", w as f64 / 1000.0),
        None => "committed".into(),
    }))
}

/// [`read_cluster_time`] of a cluster, retried through transient failures (an election, a dropped
/// connection) for `--retry-timeout`: inside the write-blocked window, giving up would
/// leave the clusters blocked until a re-run.
pub(crate) async fn cluster_time(
    ctx: &Ctx,
    cluster: &crate::cluster::Cluster,
) -> Result<Timestamp, EngineError> {
    let (client, name) = (&cluster.client, cluster.name());
    let progress = match &ctx.lane {
        Some(l) => l.progress.clone(),
        None => std::sync::Arc::new(crate::engine::progress::Progress::new()),
    };
    let policy = crate::engine::retry::RetryPolicy {
        timeout: ctx.opts.retry_timeout,
    };
    policy
        .run(&progress, "reading the cluster time", || {
            read_cluster_time(client, name)
        })
        .await
}

/// Without source write blocking the operator must have stopped the application: drain to
/// the block point, then keep draining until no source event arrives for a quiet period.
async fn drain_until_quiet(
    ctx: &mut Ctx,
    direction: Direction,
    start_at: Option<Timestamp>,
    first: Timestamp,
    timeout: Duration,
) -> Result<(), EngineError> {
    let started = Instant::now();
    let mut target = first;
    loop {
        let src = ctx.roles(direction).0.clone();
        let lane = ctx.ensure_lane(direction, start_at);
        let before = lane.progress.events_applied.load(Ordering::Relaxed);
        lane.wait_applied(target, None).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let next = read_cluster_time(&src.client, src.name()).await?;
        let applied = lane.progress.events_applied.load(Ordering::Relaxed) - before;
        if applied == 0 || next == target {
            return lane.drain_to(next).await;
        }
        tracing::warn!(events = applied, "Source writes are still arriving: stop the application's writes to the source to finish the commit.");
        if started.elapsed() >= timeout {
            return Err(EngineError::TimedOut(format!(
                "source writes kept arriving for {}: the commit cannot finish while the application writes to the source \
                 (use `write_blocking = \"source-and-destination\"` to have cutover block them)",
                humantime::format_duration(timeout)
            )));
        }
        target = next;
    }
}

/// Waits for `cutover approve`. Replication keeps running meanwhile: a lane that fails (an
/// outage beyond `--retry-timeout`) ends the wait with its error. The lane's phase says
/// what the run waits for, so the status reporter publishes it.
async fn wait_for_approval(ctx: &mut Ctx, i: usize, limit: Duration) -> Result<(), RunError> {
    let started = Instant::now();
    let mut said = false;
    loop {
        if let Some(a) = ctx.store.approval(i).await? {
            tracing::info!(
                step = i,
                host = a.get_str("host").unwrap_or("?"),
                "Commit approved."
            );
            return Ok(());
        }
        if !said {
            tracing::info!(
                step = i,
                "Waiting for approval: run `cutover approve {} --step {i}` (from any machine that reaches the destination).",
                ctx.plan.file
            );
            if let Some(l) = &ctx.lane {
                l.progress
                    .set_phase(crate::state::states::LanePhase::WaitingForApproval);
            }
            ctx.store
                .set(doc! {"status.phase": crate::state::states::LanePhase::WaitingForApproval})
                .await?;
            said = true;
        }
        if let Some(l) = ctx.lane.as_mut() {
            l.check_alive().await.map_err(|source| RunError::Step {
                index: i,
                kind: "commit",
                source,
            })?;
        }
        if started.elapsed() >= limit {
            return Err(RunError::Step {
                index: i,
                kind: "commit",
                source: EngineError::TimedOut(format!(
                    "no approval within the step's timeout; run `cutover approve {} --step {i}` and run the plan again",
                    ctx.plan.file
                )),
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Drops, on the destination, the selected views the source no longer has. A `dropDatabase`
/// that fails after it dropped the database's collections (user writes blocked by this very
/// commit, a stepdown, `killOp`) has already dropped `system.views`: the source's views are
/// gone and no change event says so (verified on 6.0.5: the stream shows the collections'
/// `drop` events and nothing for the views). Run after the drain, when every event is applied.
async fn drop_vanished_views(
    src: &mongodb::Client,
    dst: &mongodb::Client,
    selector: &crate::plan::NamespaceSelector,
    (src_name, dst_name): (Role, Role),
) -> Result<(), EngineError> {
    use crate::engine::error::on;
    // Names only (no index reads). The destination first: before the block (the source still
    // writable), a view created meanwhile is then in the source's later listing, never taken
    // for one the source lost.
    let at_destination = catalog::list_selected_views(dst, selector)
        .await
        .map_err(on(dst_name))?;
    let at_source = catalog::list_selected_views(src, selector)
        .await
        .map_err(on(src_name))?;
    for v in at_destination.iter().filter(|v| !at_source.contains(v)) {
        tracing::warn!(view = %v, "The view is gone from the source without a change event (its database's drop failed after dropping the database's collections): dropping it on the destination.");
        match crate::state::lease::run_majority(&dst.database(&v.db), doc! {"drop": &v.coll}).await
        {
            Ok(_) => {}
            Err(e)
                if crate::cluster::server_error::code_of(&e)
                    == Some(crate::cluster::server_error::code::NAMESPACE_NOT_FOUND) => {}
            Err(e) => {
                return Err(crate::engine::error::cluster_err(
                    dst_name,
                    format!("dropping the view `{v}`"),
                    &e,
                ))
            }
        }
    }
    Ok(())
}

/// The count before the write block: starts tracking the namespaces change events touch,
/// waits until every source write up to now is applied, then counts every selected
/// collection on both sides. Returns the collections whose counts differ (counted again
/// inside the window with the ones touched since; a difference then is an error).
async fn precount(
    ctx: &mut Ctx,
    direction: Direction,
    start_at: Option<Timestamp>,
    roles: (Role, Role),
) -> Result<HashSet<Namespace>, EngineError> {
    let (src, dst) = ctx.roles(direction);
    let (src, dst) = (src.clone(), dst.clone());
    // The lane is at can-commit: it catches up with `now` within its lag.
    let timeout = Duration::from_secs(30);
    let lane = ctx.ensure_lane(direction, start_at);
    lane.progress.touched.start();
    // Events up to `now` were read before tracking started or are tracked: once they are
    // applied, a collection no event touches from here counts the same on both sides
    // until the block.
    let now = read_cluster_time(&src.client, src.name()).await?;
    lane.wait_applied(now, Some(timeout)).await?;
    let started = Instant::now();
    drop_vanished_views(&src.client, &dst.client, &ctx.plan.selector, roles).await?;
    let names = catalog::list_selected_collections(&src.client, &ctx.plan.selector)
        .await
        .map_err(crate::engine::error::on(roles.0))?;
    let differ = count_differences(&src.client, &dst.client, names.clone(), roles).await?;
    tracing::info!(
        collections = names.len(),
        differing = differ.len(),
        seconds = format!("{:.1}", started.elapsed().as_secs_f64()),
        "Counted the documents of every collection before blocking writes; inside the write-blocked window only the collections written since are counted again."
    );
    Ok(differ.into_iter().map(|(ns, _)| ns).collect())
}

/// Per-namespace document counts on both sides after the drain: of `only` (the collections
/// written since the count before the block, or whose counts differed then), or of every
/// selected collection when `only` is `None`.
async fn count_check(
    src: &mongodb::Client,
    dst: &mongodb::Client,
    selector: &crate::plan::NamespaceSelector,
    roles: (Role, Role),
    only: Option<HashSet<Namespace>>,
) -> Result<Vec<String>, EngineError> {
    let names = match only {
        Some(set) => {
            let mut v: Vec<Namespace> = set
                .into_iter()
                .filter(|ns| !ns.coll.starts_with("system.") && selector.selects(&ns.db, &ns.coll))
                .collect();
            v.sort();
            v
        }
        None => catalog::list_selected_collections(src, selector)
            .await
            .map_err(crate::engine::error::on(roles.0))?,
    };
    Ok(count_differences(src, dst, names, roles)
        .await?
        .into_iter()
        .map(|(_, text)| text)
        .collect())
}

/// Collections whose document counts differ, with `` `ns`: source A, destination B ``.
/// Metadata counts first (instant); an exact count only to confirm a difference (metadata
/// counts drift after an unclean shutdown). Several collections at once. A collection gone
/// from both sides counts 0 = 0.
async fn count_differences(
    src: &mongodb::Client,
    dst: &mongodb::Client,
    names: Vec<Namespace>,
    (src_name, dst_name): (Role, Role),
) -> Result<Vec<(Namespace, String)>, EngineError> {
    let checks: Vec<_> = names
        .into_iter()
        .map(|ns| {
            let (a, b) = (
                src.database(&ns.db).collection::<Document>(&ns.coll),
                dst.database(&ns.db).collection::<Document>(&ns.coll),
            );
            async move {
                let err = |role: Role, e: mongodb::error::Error| {
                    crate::engine::error::cluster_err(role, format!("counting `{ns}`"), &e)
                };
                let fa = a
                    .estimated_document_count()
                    .await
                    .map_err(|e| err(src_name, e))?;
                let fb = b
                    .estimated_document_count()
                    .await
                    .map_err(|e| err(dst_name, e))?;
                if fa == fb {
                    return Ok(None);
                }
                let ea = a
                    .count_documents(doc! {})
                    .await
                    .map_err(|e| err(src_name, e))?;
                let eb = b
                    .count_documents(doc! {})
                    .await
                    .map_err(|e| err(dst_name, e))?;
                Ok::<_, EngineError>((ea != eb).then(|| {
                    let text = format!("`{ns}`: {src_name} {ea}, {dst_name} {eb}");
                    (ns, text)
                }))
            }
        })
        .collect();
    let found: Vec<Option<(Namespace, String)>> = stream::iter(checks)
        .buffered(catalog::CATALOG_CONCURRENCY)
        .try_collect()
        .await?;
    Ok(found.into_iter().flatten().collect())
}

/// Laps of the write-blocked window, measured by this runner.
struct WindowClock {
    last: Instant,
    phases: Vec<WindowPhase>,
}

impl WindowClock {
    fn new() -> Self {
        Self {
            last: Instant::now(),
            phases: Vec::new(),
        }
    }

    /// Ends the current part of the window under `name`.
    fn lap(&mut self, name: &str) {
        let now = Instant::now();
        self.phases.push(WindowPhase {
            phase: name.to_string(),
            ms: now.duration_since(self.last).as_millis() as i64,
        });
        self.last = now;
    }

    /// The parts, with what this runner did not see (an earlier runner's part of a resumed
    /// commit) first as `earlier runner`, so that they add up to the window `window_ms`.
    fn phases(self, window_ms: i64) -> Vec<WindowPhase> {
        let seen: i64 = self.phases.iter().map(|p| p.ms).sum();
        let mut out = Vec::new();
        if window_ms - seen > 50 {
            out.push(WindowPhase {
                phase: "earlier runner".into(),
                ms: window_ms - seen,
            });
        }
        out.extend(self.phases);
        out
    }
}
