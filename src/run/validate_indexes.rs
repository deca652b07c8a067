//! The `validate-indexes` step: once the lane has applied everything up to the step's start,
//! compare the unique indexes of both clusters.

use std::time::Duration;

use mongodb::bson::Timestamp;

use super::Ctx;
use crate::engine::error::EngineError;
use crate::engine::lane::Direction;
use crate::plan::Step;

/// `validate-indexes` (mongosync's "Validate Unique Indexes", a prerequisite of reverse): no
/// unique index on any member of the source may use the legacy (pre-4.2) format, and every
/// source unique index must exist identically on the destination (key, collation, partial
/// filter; during the sync the destination's copy is non-unique on purpose).
///
/// While a lane replicates (after `sync` or `reverse`, before their commit), the step first
/// waits until it has applied every source write up to the source's time at the step's start
/// (a re-run resumes the lane): a unique index created just before the step is then on the
/// destination when it is compared.
pub async fn validate_indexes(ctx: &mut Ctx, i: usize) -> Result<Option<String>, EngineError> {
    if let Some(direction) = replicating_at(ctx, i) {
        let start_at = if direction == Direction::Reverse {
            ctx.store.record().await?.reverse_start()
        } else {
            None
        };
        let src = ctx.roles(direction).0.clone();
        ctx.ensure_lane(direction, start_at);
        let now = super::commit::cluster_time(ctx, &src).await?;
        let lane = ctx.ensure_lane(direction, start_at);
        lane.wait_applied(now, Some(VALIDATE_WAIT)).await?;
    }
    let selector = &ctx.plan.selector;
    let cluster_err = |e: crate::cluster::ClusterError| EngineError::Event(e.to_string());
    let mut findings = crate::index_format::check_unique_index_formats(&ctx.plan.source, selector)
        .await
        .map_err(cluster_err)?;
    findings.extend(
        crate::index_format::compare_unique_indexes(
            &ctx.source.client,
            &ctx.destination.client,
            selector,
        )
        .await
        .map_err(cluster_err)?,
    );
    let problems: Vec<String> = findings
        .iter()
        .filter(|f| f.is_problem())
        .map(|f| format!("{f} (fix: {})", f.fix()))
        .collect();
    if problems.is_empty() {
        Ok(Some(format!(
            "{} unique-index findings, none blocking",
            findings.len()
        )))
    } else {
        Err(EngineError::Event(format!(
            "{} unique index problem(s): {}",
            problems.len(),
            problems.join("; ")
        )))
    }
}

/// How long `validate-indexes` waits for replication to catch up before it fails.
const VALIDATE_WAIT: Duration = Duration::from_secs(600);

/// The direction whose lane replicates when step `i` runs: that of the last `sync` or
/// `reverse` before it when no `commit` lies between them.
pub(super) fn replicating_at(ctx: &Ctx, i: usize) -> Option<Direction> {
    ctx.plan.steps[..i].iter().rev().find_map(|s| match s {
        Step::Sync(_) => Some(Some(Direction::Forward)),
        Step::Reverse(_) => Some(Some(Direction::Reverse)),
        Step::Commit(_) => Some(None),
        _ => None,
    })?
}

/// Waits until the running lane has applied every event up to a source time (or gives up
/// after a minute, so a stalled lane cannot hang verify; the range is then reported).
pub(super) struct LaneWait(pub(super) tokio::sync::watch::Receiver<Option<Timestamp>>);

impl crate::verify::ReplicationWait for LaneWait {
    fn wait_replicated(&self, read_at: Timestamp) -> futures::future::BoxFuture<'_, ()> {
        let mut rx = self.0.clone();
        Box::pin(async move {
            let reached = async {
                loop {
                    if rx.borrow().is_some_and(|p| p >= read_at) {
                        return;
                    }
                    if rx.changed().await.is_err() {
                        return;
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(60), reached).await;
        })
    }
}
