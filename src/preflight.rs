//! `cutover check`: a read-only preflight of both clusters. It never writes.

use std::time::Duration;

use crate::cluster::Cluster;
use crate::plan::Plan;
use crate::report::{Check, Scope};

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

pub async fn run(plan: &Plan, opts: &PreflightOptions) -> PreflightOutcome {
    let mut checks = Vec::new();
    let mut unreachable = false;
    for (scope, uri) in [(Scope::Source, &plan.source), (Scope::Destination, &plan.destination)] {
        match Cluster::connect(scope, uri, opts.connect_timeout).await {
            Ok(c) => checks.push(Check::pass(
                "reachable",
                scope,
                format!("connected and authenticated to {}", c.uri.hosts_display()),
            )),
            Err(e) => {
                unreachable |= e.is_connectivity();
                checks.push(Check::fail("reachable", scope, e.to_string(), e.hint()));
            }
        }
    }
    PreflightOutcome { checks, unreachable }
}
