//! The `validate-indexes` step: once the lane has applied everything up to the step's start,
//! compare the unique indexes of both clusters.

use std::time::Duration;

use mongodb::bson::Timestamp;

use crate::engine::error::EngineError;
use crate::engine::lane::Direction;
use crate::plan::Step;
use crate::run::Ctx;

/// `validate-indexes` (mongosync's "Validate Unique Indexes", a prerequisite of reverse): no
/// unique index on any member of the source may use the legacy (pre-4.2) format, and every
/// source unique index must exist identically on the destination (key, collation, partial
/// filter; during the sync the destination's copy is non-unique on purpose).
///
/// The formats are read once, on every member. While a lane replicates (after `sync` or
/// `reverse`, before their commit), the source's unique indexes are listed first, then the
/// step waits until the lane has applied every source write up to the source's time after
/// that listing (a re-run resumes the lane), and only then reads the destination: a unique
/// index created just before the step is on the destination when it is compared. The
/// application's DDL goes on meanwhile, so an index dropped or changed on the source between
/// the two reads can look missing or different: a comparison problem must be seen in every
/// one of up to [`ATTEMPTS`] comparisons to stop the plan, and one comparison without
/// problems ends them.
pub async fn validate_indexes(ctx: &mut Ctx, i: usize) -> Result<Option<String>, EngineError> {
    let selector = ctx.plan.selector.clone();
    let formats = crate::engine::catalog::index_format::check_unique_index_formats(
        &ctx.plan.source,
        &selector,
    )
    .await
    .map_err(cluster_err)?;
    let mut persistent: Option<Vec<String>> = None;
    let mut compared = 0;
    for attempt in 1..=ATTEMPTS {
        let findings = compare_once(ctx, i, &selector).await?;
        compared = findings.len();
        let still: Vec<String> = match persistent {
            None => problems(&findings),
            Some(before) => problems(&findings)
                .into_iter()
                .filter(|p| before.contains(p))
                .collect(),
        };
        let done = still.is_empty();
        persistent = Some(still);
        if done {
            break;
        }
        if attempt < ATTEMPTS {
            tracing::info!(
                attempt,
                "unique-index differences found; comparing again in case the application's DDL raced the listing"
            );
            tokio::time::sleep(RECHECK_PAUSE).await;
        }
    }
    let compare_problems = persistent.unwrap_or_default();
    let mut all = problems(&formats);
    all.extend(compare_problems.iter().cloned());
    if all.is_empty() {
        return Ok(Some(format!(
            "{} unique-index findings, none blocking",
            formats.len() + compared
        )));
    }
    let seen = if compare_problems.is_empty() {
        String::new()
    } else {
        format!(" (the destination's, seen in each of {ATTEMPTS} comparisons)")
    };
    Err(EngineError::Differs(format!(
        "{} unique index problem(s){seen}: {}",
        all.len(),
        all.join("; ")
    )))
}

/// How many comparisons a unique-index difference must survive to stop the plan.
const ATTEMPTS: usize = 3;
/// The pause between two comparisons.
const RECHECK_PAUSE: Duration = Duration::from_secs(1);

fn cluster_err(e: crate::cluster::ClusterError) -> EngineError {
    EngineError::Connect(Box::new(e))
}

/// The blocking findings, each with its fix.
fn problems(findings: &[crate::engine::catalog::index_format::IndexFinding]) -> Vec<String> {
    findings
        .iter()
        .filter(|f| f.is_problem())
        .map(|f| format!("{f} (fix: {})", f.fix()))
        .collect()
}

/// One comparison of the source's unique indexes with the destination's (see above).
async fn compare_once(
    ctx: &mut Ctx,
    i: usize,
    selector: &crate::plan::NamespaceSelector,
) -> Result<Vec<crate::engine::catalog::index_format::IndexFinding>, EngineError> {
    let source_indexes = crate::engine::catalog::index_format::SourceUniqueIndexes::list(
        &ctx.source.client,
        selector,
    )
    .await
    .map_err(cluster_err)?;
    crate::base::crashpoint::pause("validate-indexes.listed").await;
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
    source_indexes
        .compare_with(&ctx.destination.client)
        .await
        .map_err(cluster_err)
}

/// How long `validate-indexes` waits for replication to catch up before it fails.
const VALIDATE_WAIT: Duration = Duration::from_secs(600);

/// The direction whose lane replicates when step `i` runs: that of the last `sync` or
/// `reverse` before it when no `commit` lies between them.
pub(crate) fn replicating_at(ctx: &Ctx, i: usize) -> Option<Direction> {
    ctx.plan.steps[..i].iter().rev().find_map(|s| match s {
        Step::Sync(_) => Some(Some(Direction::Forward)),
        Step::Reverse(_) => Some(Some(Direction::Reverse)),
        Step::Commit(_) => Some(None),
        _ => None,
    })?
}

/// Waits until the running lane has applied every event up to a source time (or gives up
/// after a minute, so a stalled lane cannot hang verify; the range is then reported).
pub(crate) struct LaneWait(pub(crate) tokio::sync::watch::Receiver<Option<Timestamp>>);

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
