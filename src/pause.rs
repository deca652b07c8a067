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

/// What holds the run: an operator's pause, and the disk watch (the destination's free
/// space below its margin: see [`crate::diskwatch`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Gate {
    operator: bool,
    /// Why the disk watch holds the copy, while it does.
    disk: Option<String>,
}

impl Gate {
    fn closed(&self) -> bool {
        self.operator || self.disk.is_some()
    }
}

fn gate() -> &'static watch::Sender<Gate> {
    static GATE: OnceLock<watch::Sender<Gate>> = OnceLock::new();
    GATE.get_or_init(|| watch::channel(Gate::default()).0)
}

/// Closes (`true`) or opens (`false`) the operator's gate (`cutover pause` / `resume`).
pub fn set_paused(paused: bool) {
    gate().send_if_modified(|g| {
        let changed = g.operator != paused;
        g.operator = paused;
        changed
    });
}

/// Holds the copy (and change application) while the destination's disk is short of space
/// (`Some(why)`), or lets it go on (`None`).
pub fn set_disk_low(why: Option<String>) {
    gate().send_if_modified(|g| {
        let changed = g.disk != why;
        g.disk = why;
        changed
    });
}

/// Why the disk watch holds the run now, if it does.
pub fn disk_low() -> Option<String> {
    gate().borrow().disk.clone()
}

/// Whether the run is held: an operator's pause or the disk watch.
pub fn is_paused() -> bool {
    gate().borrow().closed()
}

/// Whether an operator paused the run (`cutover pause`).
pub fn operator_paused() -> bool {
    gate().borrow().operator
}

/// Returns at once when not paused, else when resumed (and the disk has room again).
pub async fn wait_resumed() {
    let mut rx = gate().subscribe();
    let _ = rx.wait_for(|g| !g.closed()).await;
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
    let phase = if operator_paused() {
        "paused".to_string()
    } else {
        "paused: the destination is short of disk space".to_string()
    };
    progress.set_phase(&phase);
    wait_resumed().await;
    if progress.phase() == phase {
        progress.set_phase(&before);
    }
}
