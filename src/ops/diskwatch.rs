//! The disk watch: while a run lasts, the free disk space (as `cutover check` reads it:
//! `dbStats` `fsTotalSize - fsUsedSize`) of the cluster the running lane writes to — the
//! plan's destination, or its source while the reverse lane runs — is sampled; below the
//! margin — 5% of the filesystem or the bytes the copy has left to write, whichever is
//! larger — the copy (and change application) hold at their next checkpoint (the pause gate,
//! [`crate::base::pause_gate`]), with a warning in the log, the phase `paused: the
//! destination is short of disk space` (or `the source`) in `cutover status`, and the metric
//! `cutover_destination_disk_low{cluster=…}` (the lane's destination). They go on by
//! themselves once the space is back. A commit's drain is never held (see
//! [`crate::engine::control::hold_apply`]).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::base::env;
use crate::base::role::Role;
use crate::engine::progress::Progress;
use crate::preflight::connection::free_space;
use crate::preflight::human_bytes;

/// How often the watch samples, unless `CUTOVER_DISK_WATCH_EVERY` says otherwise.
pub const DEFAULT_EVERY: Duration = Duration::from_secs(10);
/// The smallest share of the filesystem kept free.
pub const MIN_FREE_SHARE: f64 = 0.05;

static FREE: AtomicI64 = AtomicI64::new(-1);
static SAMPLED: Mutex<Option<Role>> = Mutex::new(None);

/// The watched cluster (by its plan role) and its free bytes at the last sample (`None`
/// before one, or when unknown).
pub fn last_free() -> Option<(Role, i64)> {
    let v = FREE.load(Ordering::Relaxed);
    let role = SAMPLED.lock().ok().and_then(|g| *g)?;
    (v >= 0).then_some((role, v))
}

/// The margin for a filesystem of `total` bytes with `remaining` bytes left to copy.
pub fn margin(total: i64, remaining: i64) -> i64 {
    ((total as f64 * MIN_FREE_SHARE) as i64).max(remaining)
}

/// Why the copy must hold, if `free` (on the plan's `cluster`) is below the margin.
pub fn verdict(cluster: Role, free: i64, total: i64, remaining: i64) -> Option<String> {
    let need = margin(total, remaining);
    (free < need).then(|| {
        format!(
            "the {cluster}'s data filesystem has {} free, below the margin of {} (5% of its {} \
             or the {} the copy has left to write, whichever is larger): the copy and change \
             application hold until there is room; free space on the {cluster} (or grow its \
             disk) and they go on by themselves",
            human_bytes(free),
            human_bytes(need),
            human_bytes(total),
            human_bytes(remaining)
        )
    })
}

fn every() -> Duration {
    env::get(env::DISK_WATCH_EVERY)
        .and_then(|v| humantime::parse_duration(v.trim()).ok())
        .filter(|d| *d >= Duration::from_millis(100))
        .unwrap_or(DEFAULT_EVERY)
}

/// Samples the free space of the cluster the running lane writes to until aborted, holding
/// and releasing the copy. `current`: the running lane's progress (its direction, and the
/// bytes it has left to copy); the plan's destination when no lane runs.
pub fn spawn(
    source: mongodb::Client,
    destination: mongodb::Client,
    current: Arc<Mutex<Option<Arc<Progress>>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let every = every();
        loop {
            let progress = current.lock().ok().and_then(|g| g.clone());
            let role = progress
                .as_ref()
                .and_then(|p| p.direction.get().copied())
                .map_or(Role::Destination, |d| d.writes());
            let client = match role {
                Role::Source => &source,
                Role::Destination => &destination,
            };
            let remaining = progress
                .filter(|p| !p.copy_done.load(Ordering::Relaxed))
                .map(|p| {
                    p.estimated_total_bytes
                        .load(Ordering::Relaxed)
                        .saturating_sub(p.copied_bytes.load(Ordering::Relaxed))
                        as i64
                })
                .unwrap_or(0);
            // No answer (the cluster unreachable): keep the last verdict.
            if let Some((free, total)) = free_space(client).await {
                FREE.store(free.max(0), Ordering::Relaxed);
                if let Ok(mut g) = SAMPLED.lock() {
                    *g = Some(role);
                }
                let why = verdict(role, free, total, remaining);
                match (&why, crate::base::pause_gate::disk_low()) {
                    (Some(w), None) => tracing::warn!("Copy and change application held: {w}."),
                    (None, Some(_)) => tracing::info!(
                        free = %human_bytes(free),
                        "The {role} has room again: the copy and change application go on."
                    ),
                    _ => {}
                }
                crate::base::pause_gate::set_disk_low(why.map(|w| (role, w)));
            }
            tokio::time::sleep(every).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_margin_is_five_percent_or_what_is_left_to_copy() {
        let gb = 1 << 30;
        assert_eq!(margin(100 * gb, 0), 5 * gb);
        assert_eq!(margin(100 * gb, 20 * gb), 20 * gb);
        let d = Role::Destination;
        assert!(verdict(d, 6 * gb, 100 * gb, 0).is_none());
        assert!(verdict(d, 4 * gb, 100 * gb, 0).is_some());
        let why = verdict(d, 10 * gb, 100 * gb, 20 * gb).unwrap();
        assert!(why.contains("has left to write"), "{why}");
        assert!(
            why.starts_with("the destination's data filesystem"),
            "{why}"
        );
        assert!(verdict(d, 30 * gb, 100 * gb, 20 * gb).is_none());
        // The reverse lane writes to the plan's source: the message names it.
        let why = verdict(Role::Source, 1, 100 * gb, 0).unwrap();
        assert!(why.contains("free space on the source"), "{why}");
    }
}
