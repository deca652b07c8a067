//! The source's oplog window against what must fit in it. With change events applied during
//! the copy (`apply_during_copy`, the default) the window only has to hold the replication
//! lag and any time the runner is stopped or paused; with copy-then-apply it must hold the
//! whole copy (a rough estimate), or the sync must restart.

use mongodb::bson::{doc, Document};

use super::{human_bytes, human_secs};
use crate::cluster::{get_i64, Cluster};
use crate::preflight::checks::Check;

/// A deliberately conservative copy rate for the estimate (10 MiB/s).
pub const ASSUMED_BYTES_PER_SEC: i64 = 10 * 1024 * 1024;
/// Margin on top of twice the estimated copy time.
pub const MARGIN_SECS: u64 = 15 * 60;
/// With events applied during the copy: a window shorter than this leaves little time to
/// restart a stopped runner (a host reboot, a deploy, a paused run).
pub const DOWNTIME_SECS: u64 = 3600;

/// Whether `window_secs` is tight for copying `bytes`: less than twice the estimate plus a margin.
pub fn is_tight(window_secs: u64, bytes: i64) -> bool {
    window_secs < 2 * estimate_secs(bytes) + MARGIN_SECS
}

pub fn estimate_secs(bytes: i64) -> u64 {
    (bytes.max(0) / ASSUMED_BYTES_PER_SEC) as u64 + 1
}

pub async fn check(c: &Cluster, bytes: i64, apply_during_copy: bool) -> Check {
    match window(c).await {
        Ok((window, used, max)) => {
            let est = estimate_secs(bytes);
            let full = max > 0 && used * 10 >= max * 9;
            let head = format!(
                "oplog window {} ({} of {} used)",
                human_secs(window),
                human_bytes(used),
                human_bytes(max),
            );
            if apply_during_copy {
                let msg = format!(
                    "{head}; change events are applied while the copy runs, so the copy's \
                     length (about {} for {}) does not need to fit in it: what is at risk is \
                     a runner stopped or paused for longer than the window (then the next run \
                     compares what was copied with the source and rewrites what differs)",
                    human_secs(est),
                    human_bytes(bytes)
                );
                return if full && window < DOWNTIME_SECS {
                    Check::warn(
                        "oplog-window",
                        c.role,
                        format!("{msg}: that leaves little time to restart a stopped runner"),
                        "grow the oplog (`replSetResizeOplog`, or `minRetentionHours`) so that a stopped `cutover run` can be restarted within the window (past it, the run recovers by comparing every copied range with the source, a read of both sides)",
                    )
                } else if !full {
                    Check::pass(
                        "oplog-window",
                        c.role,
                        format!("{msg}; the oplog is not full yet, so the window is still growing"),
                    )
                } else {
                    Check::pass("oplog-window", c.role, msg)
                };
            }
            let msg = format!(
                "{head}; copying {} at an assumed {}/s takes about {} and, with \
                 `apply_during_copy = false`, must fit in the window",
                human_bytes(bytes),
                human_bytes(ASSUMED_BYTES_PER_SEC),
                human_secs(est)
            );
            if !full {
                Check::pass(
                    "oplog-window",
                    c.role,
                    format!("{msg}; the oplog is not full yet, so the window is still growing"),
                )
            } else if is_tight(window, bytes) {
                Check::warn(
                    "oplog-window",
                    c.role,
                    format!("{msg}: the window is tight, the copy may outlast it"),
                    "apply change events during the copy (`apply_during_copy = true`, the default), or grow the oplog (`replSetResizeOplog`, or `minRetentionHours`) to more than twice the copy time before `run`",
                )
            } else {
                Check::pass("oplog-window", c.role, msg)
            }
        }
        Err(e) => Check::warn(
            "oplog-window",
            c.role,
            format!("cannot read the oplog window: {}", c.error(&e)),
            "grant `find` on `local.oplog.rs` (e.g. `clusterMonitor`/`root`) to get this estimate",
        ),
    }
}

/// (window seconds, bytes used, maximum bytes) of `local.oplog.rs`.
async fn window(c: &Cluster) -> Result<(u64, i64, i64), mongodb::error::Error> {
    let local = c.client.database("local");
    let oplog = local.collection::<Document>("oplog.rs");
    let first = oplog
        .find_one(doc! {})
        .sort(doc! {"$natural": 1})
        .projection(doc! {"ts": 1})
        .await?;
    let last = oplog
        .find_one(doc! {})
        .sort(doc! {"$natural": -1})
        .projection(doc! {"ts": 1})
        .await?;
    let ts = |d: Option<Document>| {
        d.and_then(|d| d.get_timestamp("ts").ok())
            .map_or(0, |t| t.time)
    };
    let window = u64::from(ts(last).saturating_sub(ts(first)));
    let stats = local.run_command(doc! {"collStats": "oplog.rs"}).await?;
    Ok((window, get_i64(&stats, "size"), get_i64(&stats, "maxSize")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tight_windows() {
        let gib = 1024 * 1024 * 1024;
        // 100 GiB at 10 MiB/s ≈ 2h 50m: a 4h window is tight, a day is not.
        assert!(is_tight(4 * 3600, 100 * gib));
        assert!(!is_tight(24 * 3600, 100 * gib));
        // An empty source still wants a margin.
        assert!(is_tight(60, 0));
        assert!(!is_tight(3600, 0));
    }
}
