//! `cutover check`: a read-only preflight of both clusters. It never writes: every command it
//! sends is a read (`hello`, `buildInfo`, `connectionStatus`, `listDatabases`,
//! `listCollections`, `listIndexes`, `$collStats`, `$sample`/`find`, `replSetGetConfig`).

pub mod checks;
pub mod connection;
mod data;
mod oplog;
pub mod privileges;
mod server;
mod write_block;

use std::time::Duration;

use crate::base::role::Role;
use crate::cluster::{Cluster, ServerInfo};
use crate::plan::Plan;
use crate::preflight::checks::Check;

pub struct PreflightOptions {
    /// Scan every document for `$`-prefixed field names instead of a sample.
    pub deep: bool,
    pub connect_timeout: Duration,
}

pub struct PreflightOutcome {
    pub checks: Vec<Check>,
    /// A cluster could not be reached or authenticated (exit 3).
    pub unreachable: bool,
}

/// Documents per collection that the default `$`-field scan samples.
pub const SAMPLE_SIZE: i64 = 1000;

pub async fn run(plan: &Plan, opts: &PreflightOptions) -> PreflightOutcome {
    let mut checks = Vec::new();
    let mut unreachable = false;
    let mut connected: Vec<(Cluster, Option<ServerInfo>)> = Vec::new();
    for (scope, uri) in [
        (Role::Source, &plan.source),
        (Role::Destination, &plan.destination),
    ] {
        match Cluster::connect(scope, uri, opts.connect_timeout).await {
            Ok(c) => {
                checks.push(Check::pass(
                    "reachable",
                    scope,
                    format!(
                        "connected and authenticated to {} ({})",
                        c.uri.hosts_display(),
                        connection::describe(&c.uri)
                    ),
                ));
                let info = match c.server_info().await {
                    Ok(i) => Some(i),
                    Err(e) => {
                        checks.push(Check::fail("version", scope, e.to_string(), e.hint()));
                        None
                    }
                };
                connected.push((c, info));
            }
            Err(e) => {
                unreachable |= e.is_connectivity();
                checks.push(Check::fail("reachable", scope, e.to_string(), e.hint()));
            }
        }
    }
    if connected.len() < 2 {
        return PreflightOutcome {
            checks,
            unreachable,
        };
    }
    let (dest, dest_info) = connected.pop().expect("two clusters");
    let (source, source_info) = connected.pop().expect("two clusters");
    let (Some(si), Some(di)) = (source_info, dest_info) else {
        return PreflightOutcome {
            checks,
            unreachable,
        };
    };

    checks.extend(server::version_checks(plan, &si, &di));
    checks.extend(server::topology_checks(plan, &source, &si, &dest, &di).await);
    checks.push(server::same_deployment(&source, &si, &dest, &di).await);
    checks.push(privileges::check(&source, plan).await);
    checks.push(privileges::check(&dest, plan).await);
    checks.push(write_block::check(&source).await);
    checks.push(write_block::check(&dest).await);
    let inventory = data::inventory_checks(plan, &source, &dest, opts.deep, &mut checks).await;
    checks.push(
        oplog::check(
            &source,
            inventory.total_bytes,
            plan.options.apply_during_copy,
        )
        .await,
    );
    checks.push(connection::disk_check(&dest, inventory.total_bytes).await);
    if plan.options.reversible || plan.has_reverse() {
        checks.extend(data::unique_index_checks(plan, &source, &dest).await);
    }
    PreflightOutcome {
        checks,
        unreachable,
    }
}

/// `1.5 GiB`, `12.0 MiB`, `900 B`.
pub fn human_bytes(n: i64) -> String {
    const UNITS: &[&str] = &["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `2h 5m`, `40s`.
pub fn human_secs(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m {s}s"),
        _ => format!("{h}h {m}m"),
    }
}
