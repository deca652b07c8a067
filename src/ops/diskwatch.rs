//! The disk watch: while a run lasts, the destination's free disk space (as `cutover check`
//! reads it: `dbStats` `fsTotalSize - fsUsedSize`) is sampled; below the margin — 5% of the
//! filesystem or the bytes the copy has left to write, whichever is larger — the copy (and
//! change application) hold at their next checkpoint (the pause gate, [`crate::base::pause_gate`]),
//! with a warning in the log, the phase `paused: the destination is short of disk space`
//! in `cutover status`, and the metric `cutover_destination_disk_low`. They go on by
//! themselves once the space is back. A commit's drain is never held (see
//! [`crate::engine::control::hold_apply`]).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::base::env;
use crate::engine::progress::Progress;
use crate::preflight::connection::free_space;
use crate::preflight::human_bytes;

/// How often the watch samples, unless `CUTOVER_DISK_WATCH_EVERY` says otherwise.
pub const DEFAULT_EVERY: Duration = Duration::from_secs(10);
/// The smallest share of the filesystem kept free.
pub const MIN_FREE_SHARE: f64 = 0.05;

static FREE: AtomicI64 = AtomicI64::new(-1);

/// The destination's free bytes at the last sample (`None` before one, or when unknown).
pub fn last_free() -> Option<i64> {
    let v = FREE.load(Ordering::Relaxed);
    (v >= 0).then_some(v)
}

/// The margin for a filesystem of `total` bytes with `remaining` bytes left to copy.
pub fn margin(total: i64, remaining: i64) -> i64 {
    ((total as f64 * MIN_FREE_SHARE) as i64).max(remaining)
}

/// Why the copy must hold, if `free` is below the margin.
pub fn verdict(free: i64, total: i64, remaining: i64) -> Option<String> {
    let need = margin(total, remaining);
    (free < need).then(|| {
        format!(
            "the destination's data filesystem has {} free, below the margin of {} (5% of its {} \
             or the {} the copy has left to write, whichever is larger): the copy holds until \
             there is room; free space on the destination (or grow its disk) and it goes on by itself",
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

/// Samples the destination's free space until aborted, holding and releasing the copy.
/// `current`: the running lane's progress (the bytes it has left to copy).
pub fn spawn(
    destination: mongodb::Client,
    current: Arc<Mutex<Option<Arc<Progress>>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let every = every();
        loop {
            let progress = current.lock().ok().and_then(|g| g.clone());
            let remaining = progress
                .filter(|p| !p.copy_done.load(Ordering::Relaxed))
                .map(|p| {
                    p.estimated_total_bytes
                        .load(Ordering::Relaxed)
                        .saturating_sub(p.copied_bytes.load(Ordering::Relaxed))
                        as i64
                })
                .unwrap_or(0);
            // No answer (the destination unreachable): keep the last verdict.
            if let Some((free, total)) = free_space(&destination).await {
                FREE.store(free.max(0), Ordering::Relaxed);
                let why = verdict(free, total, remaining);
                match (&why, crate::base::pause_gate::disk_low()) {
                    (Some(w), None) => tracing::warn!("Copy held: {w}."),
                    (None, Some(_)) => tracing::info!(
                        free = %human_bytes(free),
                        "The destination has room again: the copy goes on."
                    ),
                    _ => {}
                }
                crate::base::pause_gate::set_disk_low(why);
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
        assert!(verdict(6 * gb, 100 * gb, 0).is_none());
        assert!(verdict(4 * gb, 100 * gb, 0).is_some());
        let why = verdict(10 * gb, 100 * gb, 20 * gb).unwrap();
        assert!(why.contains("has left to write"), "{why}");
        assert!(verdict(30 * gb, 100 * gb, 20 * gb).is_none());
    }
}
