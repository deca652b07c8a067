//! The `reverse` step: start replication from the new source (the plan's destination) back
//! to the old one, from the point the forward commit recorded.

use std::time::{Duration, Instant};

use mongodb::bson::doc;

use crate::base::role::Role;
use crate::engine::error::EngineError;
use crate::plan::WriteBlocking;
use crate::run::{Ctx, RunError};
use crate::state::record::{Direction, RunState};

pub async fn reverse(ctx: &mut Ctx, i: usize) -> Result<Option<String>, RunError> {
    let fail = |source: EngineError| RunError::Step {
        index: i,
        kind: "reverse",
        source,
    };
    let run = ctx.store.record().await?;
    if run.state != RunState::Committed && run.direction != Direction::Reverse {
        return Err(fail(EngineError::Refused(
            "reverse needs a committed forward sync".into(),
        )));
    }
    let Some(start) = run.reverse_start() else {
        return Err(fail(EngineError::Refused(
            "the forward commit recorded no reverse start point".into(),
        )));
    };
    let started = Instant::now();
    ctx.store
        .set(doc! {"state": RunState::Reversing, "direction": Direction::Reverse, "can_write": false})
        .await?;
    // The old source stays user-write-blocked (since the commit) while it receives writes.
    if ctx.plan.options.write_blocking == WriteBlocking::SourceAndDestination {
        ctx.set_block(Role::Source, true).await?;
    }
    crate::base::crashpoint::hit("reverse.starting", Some(i));
    let store = ctx.store.clone();
    let lane = ctx.ensure_lane(Direction::Reverse, Some(start));
    // Started means the change stream opened at the start point (or failed: history lost).
    while lane.position().is_none() {
        lane.check_alive().await.map_err(fail)?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let latency = started.elapsed();
    store
        .set(doc! {"state": RunState::Running, "reverse_start_latency_ms": latency.as_millis() as i64})
        .await?;
    lane.wait_can_commit(None).await.map_err(fail)?;
    Ok(Some(format!(
        "reverse replication running (started in {:.3}s)",
        latency.as_secs_f64()
    )))
}
