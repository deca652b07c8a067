//! Which cluster plays which part in a step: the direction a commit finishes and the plan
//! role of each side of a lane.

use super::Ctx;
use crate::engine::lane::Direction;
use crate::plan::Step;
use crate::preflight::checks::Scope;

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

/// The plan role (`Scope`) of the cluster that is the source of `direction`.
pub(super) fn source_role(d: Direction) -> Scope {
    match d {
        Direction::Forward => Scope::Source,
        Direction::Reverse => Scope::Destination,
    }
}

pub(super) fn dest_role(d: Direction) -> Scope {
    match d {
        Direction::Forward => Scope::Destination,
        Direction::Reverse => Scope::Source,
    }
}
