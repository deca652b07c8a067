//! The `verify` step: compare both clusters (with the live lane's wait for replication).

use std::time::Duration;

use crate::engine::catalog::RelaxationStore;
use crate::engine::error::EngineError;
use crate::plan::model::VerifyStep;
use crate::run::Ctx;

/// `verify`: compares source and destination. While replication still runs (before the
/// commit), differing ranges are re-checked once the lane has applied past their read time;
/// after a commit the comparison is exact and there are no rechecks.
pub async fn verify(ctx: &mut Ctx, step: &VerifyStep) -> Result<Option<String>, EngineError> {
    use crate::verify::{SleepWait, VerifyOptions};
    let lane_position = ctx.lane.as_ref().map(|l| l.position_watch());
    let replication: std::sync::Arc<dyn crate::verify::ReplicationWait> = match &lane_position {
        Some(rx) => std::sync::Arc::new(super::validate_indexes::LaneWait(rx.clone())),
        None => std::sync::Arc::new(SleepWait(Duration::from_secs(1))),
    };
    // Before the commit, the destination is relaxed on purpose (unique, TTL, capped).
    let mut relaxed = Vec::new();
    if let Some(lane) = &ctx.lane {
        let relax = RelaxationStore::new(
            ctx.store.database().clone(),
            ctx.store.plan(),
            lane.direction,
        );
        for r in relax.list().await? {
            relaxed.push((r.ns.clone(), r.index.clone()));
        }
    }
    let opts = VerifyOptions {
        max_differences: step.max_differences as usize,
        rechecks: if lane_position.is_some() { 3 } else { 0 },
        replication,
        relaxed,
        fence: ctx.store.fence().cloned(),
        retry_timeout: ctx.opts.retry_timeout,
        ..VerifyOptions::default()
    };
    // After a reverse commit the data lives on the old source: compare in the current direction.
    let (a, b) = if ctx.store.record().await?.direction == crate::state::record::Direction::Reverse
    {
        (&ctx.destination.client, &ctx.source.client)
    } else {
        (&ctx.source.client, &ctx.destination.client)
    };
    let report = crate::verify::run(a, b, &ctx.plan, &opts)
        .await
        .map_err(|source| EngineError::Verify {
            doing: "verify".into(),
            source: Box::new(source),
        })?;
    let text = report.to_text();
    for line in text.lines() {
        tracing::info!("{line}");
    }
    if report.ok {
        Ok(Some(format!(
            "verified: {} documents compared, no difference",
            report.documents_compared
        )))
    } else {
        Err(EngineError::Differs(format!(
            "verify found differences:\n{text}"
        )))
    }
}
