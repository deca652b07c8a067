//! Which way a step replicates: the direction a commit finishes (the roles each side of a
//! lane plays come from [`Direction::reads`] and [`Direction::writes`]).

use super::Ctx;
use crate::engine::lane::Direction;
use crate::plan::Step;

/// The direction a commit at step `i` finishes: that of the last `sync`/`reverse` before it.
pub(super) fn direction_of(ctx: &Ctx, i: usize) -> Direction {
    ctx.plan.steps[..i]
        .iter()
        .rev()
        .find_map(|s| match s {
            Step::Sync(_) => Some(Direction::Forward),
            Step::Reverse(_) => Some(Direction::Reverse),
            _ => None,
        })
        .unwrap_or(Direction::Forward)
}
