//! The source's oplog window against a rough copy-time estimate. Change replication starts
//! when the copy starts; if the oplog rolls over before the copy is done, the sync must restart.

use mongodb::bson::{doc, Document};

use super::{human_bytes, human_secs};
use crate::cluster::{get_i64, Cluster};
use crate::report::Check;

/// A deliberately conservative copy rate for the estimate (10 MiB/s).
pub const ASSUMED_BYTES_PER_SEC: i64 = 10 * 1024 * 1024;
/// Margin on top of twice the estimated copy time.
pub const MARGIN_SECS: u64 = 15 * 60;

/// Whether `window_secs` is tight for copying `bytes`: less than twice the estimate plus a margin.
pub fn is_tight(window_secs: u64, bytes: i64) -> bool {
    window_secs < 2 * estimate_secs(bytes) + MARGIN_SECS
}

pub fn estimate_secs(bytes: i64) -> u64 {
    (bytes.max(0) / ASSUMED_BYTES_PER_SEC) as u64 + 1
}

pub async fn check(c: &Cluster, bytes: i64) -> Check {
    match window(c).await {
        Ok((window, used, max)) => {
            let est = estimate_secs(bytes);
            let full = max > 0 && used * 10 >= max * 9;
            let msg = format!(
                "oplog window {} ({} of {} used); copying {} at an assumed {}/s takes about {}",
                human_secs(window),
                human_bytes(used),
                human_bytes(max),
                human_bytes(bytes),
                human_bytes(ASSUMED_BYTES_PER_SEC),
                human_secs(est)
            );
            if !full {
                Check::pass(
                    "oplog-window",
                    c.scope,
                    format!("{msg}; the oplog is not full yet, so the window is still growing"),
                )
            } else if is_tight(window, bytes) {
                Check::warn(
                    "oplog-window",
                    c.scope,
                    format!("{msg}: the window is tight, the copy may outlast it"),
                    "grow the oplog (`replSetResizeOplog`, or `minRetentionHours`) to more than twice the copy time before `run`",
                )
            } else {
                Check::pass("oplog-window", c.scope, msg)
            }
        }
        Err(e) => Check::warn(
            "oplog-window",
            c.scope,
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
