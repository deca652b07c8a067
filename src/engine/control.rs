//! What a lane's owner asks of change application, and holding the copy and the change
//! application at a checkpoint while the pause gate ([`crate::base::pause_gate`]) is closed.

use mongodb::bson::Timestamp;
use tokio::sync::watch;

use crate::base::pause_gate::{is_paused, operator_paused, wait_resumed};
use crate::engine::progress::Progress;
use crate::state::states::LanePhase;

/// What the lane's owner asks of change application.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Keep applying.
    Run,
    /// Apply every event up to and including this source time, then stop (the commit drain).
    DrainTo(Timestamp),
    /// Stop after the current round (shutdown).
    Stop,
}

/// Change application's safe boundary (the last round is applied and its resume token
/// stored): waits while paused. Returns `false` if the lane was told to stop meanwhile; a
/// drain (the commit) ends the pause, so a write-blocked window never waits on it.
pub async fn hold_apply(progress: &Progress, control: &mut watch::Receiver<Control>) -> bool {
    let before = progress.phase();
    let phase = held_phase();
    progress.set_phase(phase.clone());
    match crate::base::pause_gate::disk_low() {
        Some((_, why)) if !operator_paused() => {
            tracing::warn!("Change application held after a checkpoint: {why}.")
        }
        _ => tracing::info!("Paused: change application stopped after a checkpoint."),
    }
    let go_on = loop {
        if *control.borrow() == Control::Stop {
            break false;
        }
        if matches!(*control.borrow(), Control::DrainTo(_)) || !is_paused() {
            break true;
        }
        tokio::select! {
            _ = wait_resumed() => {}
            r = control.changed() => if r.is_err() { break false },
        }
    };
    if go_on {
        tracing::info!("Resumed: change application continues.");
    }
    if progress.phase() == phase {
        progress.set_phase(before);
    }
    go_on
}

/// The phase of a held lane: the operator's pause, or the disk watch's hold (naming the
/// cluster short of space).
fn held_phase() -> LanePhase {
    if operator_paused() {
        return LanePhase::PAUSED;
    }
    match crate::base::pause_gate::disk_low() {
        Some((cluster, _)) => LanePhase::disk_short(cluster),
        None => LanePhase::PAUSED,
    }
}

/// The copy's safe boundary (in-flight inserts done, range checkpointed): waits while paused.
pub async fn hold_copy(progress: &Progress) {
    if !is_paused() {
        return;
    }
    let before = progress.phase();
    let phase = held_phase();
    progress.set_phase(phase.clone());
    wait_resumed().await;
    if progress.phase() == phase {
        progress.set_phase(before);
    }
}
