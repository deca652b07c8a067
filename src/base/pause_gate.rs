//! Pause and resume. `cutover pause PLAN` (or `POST /api/v1/pause`) records the request in
//! the run document; the runner's control poller ([`crate::ops::service`]) closes this gate, and
//! the copy and change application wait at their next safe boundary: every batch they took
//! is durable and checkpointed, nothing is half-applied. The runner stays up and renews its
//! lease; `cutover resume PLAN` opens the gate again.
//!
//! One runner per process: the gate is process-wide.

use std::sync::OnceLock;

use tokio::sync::watch;

use crate::base::role::Role;

/// What holds the run: an operator's pause, and the disk watch (the free space of the
/// cluster the lane writes to below its margin: see [`crate::ops::diskwatch`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Gate {
    operator: bool,
    /// Which cluster (by its plan role) is short of space and why, while the disk watch
    /// holds the copy.
    disk: Option<(Role, String)>,
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

/// Holds the copy (and change application) while the disk of the cluster the lane writes to
/// is short of space (`Some((cluster, why))`), or lets it go on (`None`).
pub fn set_disk_low(why: Option<(Role, String)>) {
    gate().send_if_modified(|g| {
        let changed = g.disk != why;
        g.disk = why;
        changed
    });
}

/// Which cluster is short of space and why, if the disk watch holds the run now.
pub fn disk_low() -> Option<(Role, String)> {
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
