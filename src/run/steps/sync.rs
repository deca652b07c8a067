//! The `sync` step: block user writes on the destination (unless the plan blocks nothing),
//! start the forward lane (initial copy, then change application) and return once it can
//! commit; the lane keeps replicating until the commit.

use mongodb::bson::doc;

use crate::base::role::Role;
use crate::engine::error::EngineError;
use crate::plan::WriteBlocking;
use crate::run::{Ctx, RunError};
use crate::state::record::{Direction, RunState};

pub(crate) async fn sync(
    ctx: &mut Ctx,
    fail: impl Fn(EngineError) -> RunError,
) -> Result<Option<String>, RunError> {
    if ctx.plan.options.write_blocking != WriteBlocking::None {
        ctx.set_block(Role::Destination, true).await?;
    }
    ctx.store
        .set(doc! {"state": RunState::Running, "direction": Direction::Forward, "can_write": false})
        .await?;
    let lane = ctx.ensure_lane(Direction::Forward, None);
    lane.wait_can_commit(None).await.map_err(fail)?;
    let lag = lane.progress.lag_seconds().unwrap_or(0.0);
    Ok(Some(format!(
        "can-commit (lag {lag:.1}s); replication continues until the commit"
    )))
}
