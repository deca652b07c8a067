//! Versions, topologies, and whether source and destination are the same deployment.

use std::collections::BTreeSet;

use crate::base::role::Role;
use crate::cluster::{Cluster, ServerInfo, Topology};
use crate::plan::Plan;
use crate::preflight::checks::{Check, Scope};

pub fn version_checks(plan: &Plan, source: &ServerInfo, dest: &ServerInfo) -> Vec<Check> {
    let mut out = Vec::new();
    for (scope, info) in [(Role::Source, source), (Role::Destination, dest)] {
        if info.at_least(6, 0) {
            out.push(Check::pass(
                "version",
                scope,
                format!("MongoDB {}", info.version),
            ));
        } else {
            out.push(Check::fail(
                "version",
                scope,
                format!(
                    "MongoDB {} is too old: cutover needs MongoDB 6.0 or later on both clusters (user write blocking and the change stream events it relies on arrived in 6.0)",
                    info.version
                ),
                "upgrade this cluster to MongoDB 6.0 or later before migrating",
            ));
        }
    }
    if plan.has_reverse() && source.major != dest.major {
        out.push(Check::fail(
            "version.same-major",
            Scope::Plan,
            format!(
                "the plan has `reverse`, which needs the same major version on both clusters; the source runs {} and the destination {}",
                source.version, dest.version
            ),
            "run the same major version on both clusters, or remove `reverse` and set `reversible = false`",
        ));
    }
    out
}

pub async fn topology_checks(
    plan: &Plan,
    source: &Cluster,
    si: &ServerInfo,
    dest: &Cluster,
    di: &ServerInfo,
) -> Vec<Check> {
    let mut out = Vec::new();
    for (scope, info) in [(Role::Source, si), (Role::Destination, di)] {
        out.push(match &info.topology {
            Topology::Standalone => Check::fail(
                "topology",
                scope,
                "a standalone mongod is not supported: change streams need a replica set".to_string(),
                "convert it to a single-member replica set (`--replSet`, then `rs.initiate()`), and add `replicaSet=NAME` to the URI",
            ),
            t => Check::pass("topology", scope, t.describe()),
        });
    }
    if plan.has_reverse() {
        if si.topology.kind() != di.topology.kind() {
            out.push(Check::fail(
                "topology.same",
                Scope::Plan,
                format!(
                    "the plan has `reverse`, which needs the same topology on both clusters; the source is a {} and the destination a {}",
                    si.topology.kind(),
                    di.topology.kind()
                ),
                "migrate between two replica sets or two sharded clusters, or remove `reverse`",
            ));
        } else if si.topology == Topology::Sharded {
            match (source.shard_count().await, dest.shard_count().await) {
                (Ok(a), Ok(b)) if a != b => out.push(Check::fail(
                    "topology.same",
                    Scope::Plan,
                    format!("the plan has `reverse`, which needs the same number of shards; the source has {a} and the destination {b}"),
                    "give both clusters the same number of shards, or remove `reverse`",
                )),
                (Ok(a), Ok(_)) => out.push(Check::pass("topology.same", Scope::Plan, format!("both clusters are sharded with {a} shards"))),
                (Err(e), _) | (_, Err(e)) => out.push(Check::warn(
                    "topology.same",
                    Scope::Plan,
                    format!("cannot count shards: {e}"),
                    "grant `clusterMonitor` so `listShards` works",
                )),
            }
        } else {
            out.push(Check::pass(
                "topology.same",
                Scope::Plan,
                format!("both clusters are {}s", si.topology.kind()),
            ));
        }
    }
    out
}

/// Fails when the two URIs reach the same deployment (same `replicaSetId`, or shared member hosts).
pub async fn same_deployment(
    source: &Cluster,
    si: &ServerInfo,
    dest: &Cluster,
    di: &ServerInfo,
) -> Check {
    if let (Some(a), Some(b)) = (source.replica_set_id().await, dest.replica_set_id().await) {
        if a == b {
            return Check::fail(
                "distinct-deployments",
                Scope::Plan,
                format!("source and destination are the same replica set (replicaSetId {a}), reached through different addresses"),
                "point `clusters.destination.uri` at the new cluster",
            );
        }
        return Check::pass(
            "distinct-deployments",
            Scope::Plan,
            "source and destination are different deployments (replicaSetId differs)",
        );
    }
    let hosts = |i: &ServerInfo| -> BTreeSet<String> {
        match &i.topology {
            Topology::ReplicaSet { hosts, .. } => hosts.iter().map(|h| h.to_lowercase()).collect(),
            _ => BTreeSet::new(),
        }
    };
    let shared: Vec<String> = hosts(si).intersection(&hosts(di)).cloned().collect();
    if shared.is_empty() {
        Check::pass(
            "distinct-deployments",
            Scope::Plan,
            "source and destination share no member host",
        )
    } else {
        Check::fail(
            "distinct-deployments",
            Scope::Plan,
            format!(
                "source and destination are the same deployment (both have member {})",
                shared.join(", ")
            ),
            "point `clusters.destination.uri` at the new cluster",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{load_plan_str, Overrides};
    use crate::preflight::checks::Status;

    fn plan(reverse: bool) -> Plan {
        let steps = if reverse {
            "[options]\nreversible = true\nwrite_blocking = \"source-and-destination\"\n\n[[steps]]\nkind = \"sync\"\n[[steps]]\nkind = \"validate-indexes\"\n[[steps]]\nkind = \"commit\"\n[[steps]]\nkind = \"reverse\"\n[[steps]]\nkind = \"commit\"\n"
        } else {
            "[[steps]]\nkind = \"sync\"\n[[steps]]\nkind = \"commit\"\n"
        };
        let text = format!(
            "name = \"t\"\n[clusters.source]\nuri = \"mongodb://a:1/?replicaSet=a\"\n[clusters.destination]\nuri = \"mongodb://b:1/?replicaSet=b\"\n{steps}"
        );
        let ov = Overrides {
            sets: Vec::new(),
            env: Default::default(),
        };
        load_plan_str("t.toml", &text, &ov)
            .map(|(p, _)| p)
            .expect("valid plan")
    }

    fn info(version: &str, major: i32, minor: i32) -> ServerInfo {
        ServerInfo {
            version: version.into(),
            major,
            minor,
            topology: Topology::ReplicaSet {
                set_name: "rs".into(),
                hosts: vec!["h:1".into()],
            },
        }
    }

    #[test]
    fn old_versions_are_refused_plainly() {
        let checks = version_checks(&plan(false), &info("5.0.14", 5, 0), &info("6.0.5", 6, 0));
        let src = checks
            .iter()
            .find(|c| c.cluster == Role::Source.into())
            .unwrap();
        assert_eq!(src.status, Status::Fail);
        assert!(
            src.message.contains("MongoDB 5.0.14 is too old"),
            "{}",
            src.message
        );
        assert!(src.message.contains("6.0 or later"));
        let dst = checks
            .iter()
            .find(|c| c.cluster == Role::Destination.into())
            .unwrap();
        assert_eq!(dst.status, Status::Pass);
        assert!(
            !checks.iter().any(|c| c.id == "version.same-major"),
            "forward-only plans may mix majors"
        );
    }

    #[test]
    fn reverse_needs_the_same_major_version() {
        let checks = version_checks(&plan(true), &info("6.0.5", 6, 0), &info("7.0.2", 7, 0));
        let c = checks
            .iter()
            .find(|c| c.id == "version.same-major")
            .expect("same-major check");
        assert_eq!(c.status, Status::Fail);
        assert!(
            c.message.contains("6.0.5") && c.message.contains("7.0.2"),
            "{}",
            c.message
        );
        let same = version_checks(&plan(true), &info("6.0.5", 6, 0), &info("6.0.12", 6, 0));
        assert!(same.iter().all(|c| c.status == Status::Pass));
    }
}
