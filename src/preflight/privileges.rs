//! Does the connecting user hold what the plan needs? Reads `connectionStatus` with
//! `showPrivileges: true` and compares the privileges against a list derived from the plan.

use std::collections::BTreeMap;

use mongodb::bson::{doc, Document};

use crate::base::role::Role;
use crate::cluster::Cluster;
use crate::plan::{Plan, Step, WriteBlocking};

/// What a privilege applies to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Resource {
    /// The cluster resource (`{cluster: true}`).
    Cluster,
    /// Every non-system collection of a database; `""` means of every database.
    Database(String),
}

impl Resource {
    pub fn describe(&self) -> String {
        match self {
            Resource::Cluster => "the cluster".into(),
            Resource::Database(d) if d.is_empty() => "every database".into(),
            Resource::Database(d) => format!("database `{d}`"),
        }
    }
}

/// One action the plan needs on one resource.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Need {
    pub resource: Resource,
    pub action: &'static str,
}

const READ_ACTIONS: &[&str] = &[
    "find",
    "listCollections",
    "listIndexes",
    "collStats",
    "changeStream",
];
const WRITE_ACTIONS: &[&str] = &[
    "find",
    "insert",
    "update",
    "remove",
    "createCollection",
    "createIndex",
    "dropIndex",
    "collMod",
    "dropCollection",
    "listCollections",
    "listIndexes",
];
const STATE_ACTIONS: &[&str] = &[
    "find",
    "insert",
    "update",
    "remove",
    "createCollection",
    "createIndex",
];

/// The privileges `cluster` needs for `plan`.
pub fn needs(plan: &Plan, role: Role) -> Vec<Need> {
    let mut out = Vec::new();
    let mut add = |resource: Resource, actions: &[&'static str]| {
        for a in actions {
            let n = Need {
                resource: resource.clone(),
                action: a,
            };
            if !out.contains(&n) {
                out.push(n);
            }
        }
    };
    let any = Resource::Database(String::new());
    let reverse = plan.steps.iter().any(|s| matches!(s, Step::Reverse(_)));
    let wb = plan.options.write_blocking;
    add(Resource::Cluster, &["listDatabases"]);
    match role {
        Role::Source => {
            // A cluster-wide change stream needs `changeStream` and `find` on every database.
            add(any.clone(), READ_ACTIONS);
            if wb == WriteBlocking::SourceAndDestination {
                add(
                    Resource::Cluster,
                    &["setUserWriteBlockMode", "bypassWriteBlockingMode"],
                );
            }
            if reverse {
                // Reverse writes the new cluster's changes back into the source.
                add(any, WRITE_ACTIONS);
            }
        }
        Role::Destination => {
            add(any.clone(), WRITE_ACTIONS);
            if reverse {
                add(any, READ_ACTIONS);
            }
            if wb != WriteBlocking::None {
                add(
                    Resource::Cluster,
                    &["setUserWriteBlockMode", "bypassWriteBlockingMode"],
                );
            }
            add(
                Resource::Database(plan.state_database.clone()),
                STATE_ACTIONS,
            );
        }
    }
    out
}

/// A built-in role that grants `action` (checked against the server's built-in role
/// definitions: `backup` holds `setUserWriteBlockMode`, `restore` holds
/// `bypassWriteBlockingMode`, `dbAdminAnyDatabase` holds `collMod`).
pub fn role_for(action: &str) -> &'static str {
    match action {
        "setUserWriteBlockMode" => "backup",
        "bypassWriteBlockingMode" => "restore",
        "collMod" => "dbAdminAnyDatabase",
        "listDatabases" | "find" | "listCollections" | "listIndexes" | "collStats"
        | "changeStream" => "readAnyDatabase",
        _ => "readWriteAnyDatabase",
    }
}

/// The privileges a user holds, as listed by `connectionStatus`.
#[derive(Debug, Default)]
pub struct Held {
    any_resource: Vec<String>,
    cluster: Vec<String>,
    /// db ("" = every database) → actions on all its (non-system) collections.
    databases: BTreeMap<String, Vec<String>>,
    pub roles: Vec<String>,
}

impl Held {
    /// Parses `connectionStatus` (with `showPrivileges: true`).
    pub fn from_connection_status(status: &Document) -> Self {
        let mut held = Held::default();
        let Ok(info) = status.get_document("authInfo") else {
            return held;
        };
        if let Ok(roles) = info.get_array("authenticatedUserRoles") {
            held.roles = roles
                .iter()
                .filter_map(|r| r.as_document())
                .map(|r| {
                    format!(
                        "{}@{}",
                        r.get_str("role").unwrap_or("?"),
                        r.get_str("db").unwrap_or("?")
                    )
                })
                .collect();
        }
        let Ok(privs) = info.get_array("authenticatedUserPrivileges") else {
            return held;
        };
        for p in privs.iter().filter_map(|p| p.as_document()) {
            let actions: Vec<String> = p
                .get_array("actions")
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            let Ok(r) = p.get_document("resource") else {
                continue;
            };
            if r.get_bool("anyResource").unwrap_or(false) {
                held.any_resource.extend(actions);
            } else if r.get_bool("cluster").unwrap_or(false) {
                held.cluster.extend(actions);
            } else if let (Ok(db), Ok("")) = (r.get_str("db"), r.get_str("collection")) {
                held.databases
                    .entry(db.to_string())
                    .or_default()
                    .extend(actions);
            }
        }
        held
    }

    pub fn has(&self, need: &Need) -> bool {
        let a = need.action;
        let has = |v: &Vec<String>| v.iter().any(|x| x == a);
        if has(&self.any_resource) {
            return true;
        }
        match &need.resource {
            Resource::Cluster => has(&self.cluster),
            Resource::Database(db) => {
                self.databases.get("").is_some_and(has)
                    || (!db.is_empty() && self.databases.get(db).is_some_and(has))
            }
        }
    }
}

/// The `privileges` check for one cluster.
pub async fn check(c: &Cluster, plan: &Plan) -> crate::preflight::checks::Check {
    use crate::preflight::checks::Check;
    let status = match c
        .admin_command(doc! {"connectionStatus": 1, "showPrivileges": true})
        .await
    {
        Ok(s) => s,
        Err(e) => {
            return Check::warn(
                "privileges",
                c.role,
                format!("cannot list the user's privileges: {e}"),
                "make sure `connectionStatus` works for this user",
            )
        }
    };
    let held = Held::from_connection_status(&status);
    let anonymous = status
        .get_document("authInfo")
        .and_then(|a| a.get_array("authenticatedUsers"))
        .map_or(true, |u| u.is_empty());
    if anonymous {
        return Check::warn(
            "privileges",
            c.role,
            "connected without a user: that works only when the server runs without access control, where every action is allowed",
            "create a user for cutover and put it in the URI; production clusters should require authentication",
        );
    }
    let missing: Vec<Need> = needs(plan, c.role)
        .into_iter()
        .filter(|n| !held.has(n))
        .collect();
    let roles = if held.roles.is_empty() {
        "no roles".to_string()
    } else {
        held.roles.join(", ")
    };
    if missing.is_empty() {
        return Check::pass(
            "privileges",
            c.role,
            format!("the user ({roles}) holds every privilege the plan needs"),
        );
    }
    let listed: Vec<String> = missing
        .iter()
        .map(|n| {
            format!(
                "`{}` on {} (granted by `{}`)",
                n.action,
                n.resource.describe(),
                role_for(n.action)
            )
        })
        .collect();
    let mut grant: Vec<&str> = missing.iter().map(|n| role_for(n.action)).collect();
    grant.sort_unstable();
    grant.dedup();
    Check::fail(
        "privileges",
        c.role,
        format!(
            "the user ({roles}) lacks {} privilege{}: {}",
            missing.len(),
            if missing.len() == 1 { "" } else { "s" },
            listed.join("; ")
        ),
        format!(
            "grant the role `root`, or the built-in roles {} (db.grantRolesToUser on `admin`)",
            grant
                .iter()
                .map(|r| format!("`{r}`"))
                .collect::<Vec<_>>()
                .join(" + ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(privs: Vec<Document>) -> Document {
        doc! {"authInfo": {"authenticatedUserRoles": [{"role": "readWriteAnyDatabase", "db": "admin"}],
        "authenticatedUserPrivileges": privs}}
    }

    #[test]
    fn database_wildcard_covers_every_database() {
        let held = Held::from_connection_status(&status(vec![
            doc! {"resource": {"db": "", "collection": ""}, "actions": ["find", "insert"]},
            doc! {"resource": {"cluster": true}, "actions": ["listDatabases"]},
        ]));
        assert!(held.has(&Need {
            resource: Resource::Database("shop".into()),
            action: "find"
        }));
        assert!(held.has(&Need {
            resource: Resource::Database(String::new()),
            action: "insert"
        }));
        assert!(held.has(&Need {
            resource: Resource::Cluster,
            action: "listDatabases"
        }));
        assert!(!held.has(&Need {
            resource: Resource::Cluster,
            action: "setUserWriteBlockMode"
        }));
        assert_eq!(held.roles, vec!["readWriteAnyDatabase@admin"]);
    }

    #[test]
    fn a_single_database_does_not_cover_every_database() {
        let held = Held::from_connection_status(&status(vec![
            doc! {"resource": {"db": "shop", "collection": ""}, "actions": ["find"]},
        ]));
        assert!(held.has(&Need {
            resource: Resource::Database("shop".into()),
            action: "find"
        }));
        assert!(!held.has(&Need {
            resource: Resource::Database(String::new()),
            action: "find"
        }));
        assert!(!held.has(&Need {
            resource: Resource::Database("other".into()),
            action: "find"
        }));
    }

    #[test]
    fn any_resource_covers_everything() {
        let held = Held::from_connection_status(&status(vec![
            doc! {"resource": {"anyResource": true}, "actions": ["bypassWriteBlockingMode"]},
        ]));
        assert!(held.has(&Need {
            resource: Resource::Cluster,
            action: "bypassWriteBlockingMode"
        }));
    }

    #[test]
    fn roles_named_for_write_blocking() {
        assert_eq!(role_for("setUserWriteBlockMode"), "backup");
        assert_eq!(role_for("bypassWriteBlockingMode"), "restore");
        assert_eq!(role_for("collMod"), "dbAdminAnyDatabase");
    }
}
