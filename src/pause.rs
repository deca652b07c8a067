//! Pause and resume. `cutover pause PLAN` (or `POST /api/v1/pause`) records the request in
//! the run document; the runner's control poller ([`crate::service`]) closes this gate, and
//! the copy and change application wait at their next safe boundary: every batch they took
//! is durable and checkpointed, nothing is half-applied. The runner stays up and renews its
//! lease; `cutover resume PLAN` opens the gate again.
//!
//! One runner per process: the gate is process-wide.

use std::sync::OnceLock;

use tokio::sync::watch;

use crate::engine::control::Control;
use crate::progress::Progress;

fn gate() -> &'static watch::Sender<bool> {
    static GATE: OnceLock<watch::Sender<bool>> = OnceLock::new();
    GATE.get_or_init(|| watch::channel(false).0)
}

/// Closes (`true`) or opens (`false`) the gate.
pub fn set_paused(paused: bool) {
    gate().send_if_modified(|v| {
        let changed = *v != paused;
        *v = paused;
        changed
    });
}

pub fn is_paused() -> bool {
    *gate().borrow()
}

/// Returns at once when not paused, else when resumed.
pub async fn wait_resumed() {
    let mut rx = gate().subscribe();
    let _ = rx.wait_for(|p| !*p).await;
}

/// Change application's safe boundary (the last round is applied and its resume token
/// stored): waits while paused. Returns `false` if the lane was told to stop meanwhile; a
/// drain (the commit) ends the pause, so a write-blocked window never waits on it.
pub async fn hold_apply(progress: &Progress, control: &mut watch::Receiver<Control>) -> bool {
    let before = progress.phase();
    progress.set_phase("paused");
    tracing::info!("Paused: change application stopped after a checkpoint.");
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
    if progress.phase() == "paused" {
        progress.set_phase(&before);
    }
    go_on
}

/// The copy's safe boundary (in-flight inserts done, range checkpointed): waits while paused.
pub async fn hold_copy(progress: &Progress) {
    if !is_paused() {
        return;
    }
    let before = progress.phase();
    progress.set_phase("paused");
    wait_resumed().await;
    if progress.phase() == "paused" {
        progress.set_phase(&before);
    }
}
