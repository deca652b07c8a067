//! A connected cluster: the driver client plus what cutover needs to know about it.

pub mod retry;
pub mod server_error;

use std::time::Duration;

use mongodb::bson::{doc, Document};
use mongodb::error::ErrorKind;
use mongodb::options::ClientOptions;
use mongodb::Client;

use crate::base::redact;
use crate::base::role::Role;
use crate::base::uri::ClusterUri;
use retry::{Failure, Retry};
use server_error::code;

/// Why a cluster could not be used. Messages name the cluster and never hold credentials.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{cluster} cluster ({hosts}) is unreachable: {detail}")]
    Unreachable {
        cluster: Role,
        hosts: String,
        detail: String,
    },
    #[error("{cluster} cluster ({hosts}): authentication failed: {detail}")]
    Auth {
        cluster: Role,
        hosts: String,
        detail: String,
    },
    #[error("{cluster} cluster ({hosts}): {detail}")]
    Other {
        cluster: Role,
        hosts: String,
        detail: String,
    },
}

impl ClusterError {
    /// Unreachable and authentication failures exit 3; the rest exit 1.
    pub fn is_connectivity(&self) -> bool {
        matches!(
            self,
            ClusterError::Unreachable { .. } | ClusterError::Auth { .. }
        )
    }

    pub fn hint(&self) -> &'static str {
        match self {
            ClusterError::Unreachable { .. } => {
                "check the URI's hosts and ports, the network path and TLS options; cutover waits `--connect-timeout` for a server"
            }
            ClusterError::Auth { .. } => {
                "check the user name and password in the URI (percent-encoded), and `authSource` (default `admin`)"
            }
            ClusterError::Other { .. } => "see the server's message above",
        }
    }
}

/// A connected cluster.
#[derive(Clone)]
pub struct Cluster {
    pub role: Role,
    pub uri: ClusterUri,
    pub client: Client,
}

impl Cluster {
    /// Connects and authenticates (a `ping` on `admin`), waiting at most `timeout` for a server.
    pub async fn connect(
        role: Role,
        uri: &ClusterUri,
        timeout: Duration,
    ) -> Result<Self, ClusterError> {
        let client = new_client(role, uri, timeout).await?;
        Ok(Self {
            role,
            uri: uri.clone(),
            client,
        })
    }

    /// A second, independent client to the same cluster: its own connection pool and server
    /// monitors. The run's state store (the lease and its renewals) uses one, so that an error
    /// on the data path that makes the driver clear its pool and re-discover the server (a
    /// shutdown error such as InterruptedAtShutdown 11600) cannot hold the renewals back.
    pub async fn dedicated_client(&self, timeout: Duration) -> Result<Client, ClusterError> {
        new_client(self.name(), &self.uri, timeout).await
    }

    pub fn name(&self) -> Role {
        self.role
    }

    pub async fn admin_command(&self, cmd: Document) -> Result<Document, ClusterError> {
        self.client
            .database("admin")
            .run_command(cmd)
            .await
            .map_err(|e| classify(self.name(), &self.uri.hosts_display(), &e))
    }
}

/// How often the driver's monitors hear from each server (see [`new_client`]).
const HEARTBEAT: Duration = Duration::from_secs(1);

async fn new_client(
    name: Role,
    uri: &ClusterUri,
    timeout: Duration,
) -> Result<Client, ClusterError> {
    let hosts = uri.hosts_display();
    let mut opts = ClientOptions::parse(uri.expose())
        .await
        .map_err(|e| ClusterError::Other {
            cluster: name,
            hosts: hosts.clone(),
            detail: redact::scrub(&e.to_string()),
        })?;
    opts.app_name = Some("cutover".into());
    opts.server_selection_timeout = Some(timeout);
    opts.connect_timeout = Some(timeout.min(Duration::from_secs(10)));
    // After a shutdown error (e.g. InterruptedAtShutdown 11600 on one write) the driver marks
    // the server unknown and waits for its monitor's next answer before it selects that server
    // again; the monitor's streamed `hello` answers every `heartbeatFrequencyMS` (10 s by
    // default). Measured on 6.0.5: one such error stalled every operation of the client for
    // 9-10 s. One second keeps that stall short; a URI that sets the option wins.
    if opts.heartbeat_freq.is_none() {
        opts.heartbeat_freq = Some(HEARTBEAT);
    }
    let client = Client::with_options(opts).map_err(|e| classify(name, &hosts, &e))?;
    client
        .database("admin")
        .run_command(doc! {"ping": 1})
        .await
        .map_err(|e| classify(name, &hosts, &e))?;
    Ok(client)
}

/// Sorts a driver error into unreachable / authentication / other, by kind and code.
pub fn classify(cluster: Role, hosts: &str, e: &mongodb::error::Error) -> ClusterError {
    let detail = redact::scrub(&crate::cluster::server_error::with_cause(e));
    let hosts = hosts.to_string();
    match e.kind.as_ref() {
        _ if crate::cluster::server_error::is_unreachable(e) => ClusterError::Unreachable {
            cluster,
            hosts,
            detail,
        },
        ErrorKind::Authentication { .. } => ClusterError::Auth {
            cluster,
            hosts,
            detail,
        },
        // 18 AuthenticationFailed, 13 Unauthorized on ping means no valid login.
        ErrorKind::Command(c) if c.code == code::AUTHENTICATION_FAILED => ClusterError::Auth {
            cluster,
            hosts,
            detail,
        },
        _ => ClusterError::Other {
            cluster,
            hosts,
            detail,
        },
    }
}

/// How a deployment is laid out, from `hello`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Topology {
    /// A replica set: its name and member hosts (`host:port`, as the set reports them).
    ReplicaSet {
        set_name: String,
        hosts: Vec<String>,
    },
    /// A sharded cluster reached through `mongos` (`msg: "isdbgrid"`).
    Sharded,
    /// A single `mongod` without a replica set.
    Standalone,
}

impl Topology {
    pub fn describe(&self) -> String {
        match self {
            Topology::ReplicaSet { set_name, hosts } => {
                format!(
                    "replica set `{set_name}` ({} member{})",
                    hosts.len(),
                    if hosts.len() == 1 { "" } else { "s" }
                )
            }
            Topology::Sharded => "sharded cluster (mongos)".into(),
            Topology::Standalone => "standalone mongod".into(),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Topology::ReplicaSet { .. } => "replica set",
            Topology::Sharded => "sharded cluster",
            Topology::Standalone => "standalone",
        }
    }
}

/// What cutover needs to know about a server before it trusts it.
#[derive(Clone, Debug)]
pub struct ServerInfo {
    /// `buildInfo.version`, e.g. `6.0.5`.
    pub version: String,
    /// `buildInfo.versionArray`'s first two numbers.
    pub major: i32,
    pub minor: i32,
    pub topology: Topology,
}

impl ServerInfo {
    pub fn at_least(&self, major: i32, minor: i32) -> bool {
        (self.major, self.minor) >= (major, minor)
    }
}

impl Cluster {
    /// Version (`buildInfo`) and topology (`hello`). Read-only.
    pub async fn server_info(&self) -> Result<ServerInfo, ClusterError> {
        let build = self.admin_command(doc! {"buildInfo": 1}).await?;
        let version = build.get_str("version").unwrap_or("unknown").to_string();
        let nums: Vec<i32> = match build.get_array("versionArray") {
            Ok(a) => a.iter().filter_map(bson_i32).collect(),
            Err(_) => version.split('.').filter_map(|p| p.parse().ok()).collect(),
        };
        let hello = self.admin_command(doc! {"hello": 1}).await?;
        let topology = if hello.get_str("msg") == Ok("isdbgrid") {
            Topology::Sharded
        } else if let Ok(set_name) = hello.get_str("setName") {
            let hosts = hello
                .get_array("hosts")
                .map(|a| {
                    a.iter()
                        .filter_map(|h| h.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            Topology::ReplicaSet {
                set_name: set_name.to_string(),
                hosts,
            }
        } else {
            Topology::Standalone
        };
        Ok(ServerInfo {
            version,
            major: nums.first().copied().unwrap_or(0),
            minor: nums.get(1).copied().unwrap_or(0),
            topology,
        })
    }

    /// The replica set's `settings.replicaSetId` (from `replSetGetConfig`): the same id means
    /// the same deployment, whatever host names the URIs use. `None` when not readable.
    pub async fn replica_set_id(&self) -> Option<String> {
        let cfg = self
            .admin_command(doc! {"replSetGetConfig": 1})
            .await
            .ok()?;
        let id = cfg
            .get_document("config")
            .ok()?
            .get_document("settings")
            .ok()?
            .get_object_id("replicaSetId")
            .ok()?;
        Some(id.to_hex())
    }

    /// The number of shards (`listShards`), for sharded clusters.
    pub async fn shard_count(&self) -> Result<usize, ClusterError> {
        let r = self.admin_command(doc! {"listShards": 1}).await?;
        Ok(r.get_array("shards").map(|a| a.len()).unwrap_or(0))
    }

    /// An error about this cluster, with its hosts.
    pub fn error(&self, e: &mongodb::error::Error) -> ClusterError {
        classify(self.name(), &self.uri.hosts_display(), e)
    }
}

/// An integer BSON value of any width.
pub fn bson_i32(b: &mongodb::bson::Bson) -> Option<i32> {
    bson_i64(b).and_then(|v| i32::try_from(v).ok())
}

/// An integer (or integral double) BSON value as `i64`.
pub fn bson_i64(b: &mongodb::bson::Bson) -> Option<i64> {
    use mongodb::bson::Bson;
    match b {
        Bson::Int32(v) => Some(i64::from(*v)),
        Bson::Int64(v) => Some(*v),
        Bson::Double(v) if v.fract() == 0.0 => Some(*v as i64),
        _ => None,
    }
}

/// A document field as `i64` (any numeric width); 0 when absent.
pub fn get_i64(d: &Document, key: &str) -> i64 {
    d.get(key).and_then(bson_i64).unwrap_or(0)
}

/// The namespaces of a deployment, sorted by what the plan's filters do with them.
#[derive(Debug, Default)]
pub struct Listing {
    /// Collections the plan syncs.
    pub selected: Vec<crate::base::namespace::Namespace>,
    /// `system.*` collections in databases the plan looks at: never synced.
    pub system: Vec<crate::base::namespace::Namespace>,
    /// Views in selected databases (their definitions live in `system.views`).
    pub views: Vec<crate::base::namespace::Namespace>,
}

/// Lists the namespaces `selector` selects (read-only: `listDatabases`, `listCollections`).
pub async fn list_namespaces(
    client: &Client,
    selector: &crate::plan::NamespaceSelector,
) -> Result<Listing, mongodb::error::Error> {
    use crate::base::namespace::Namespace;
    use futures::TryStreamExt;
    let mut out = Listing::default();
    let mut dbs = client.list_database_names().await?;
    dbs.sort();
    for db in dbs {
        if !selector.may_select_database(&db) {
            continue;
        }
        let specs: Vec<Document> = client
            .database(&db)
            .run_cursor_command(
                doc! {"listCollections": 1, "nameOnly": false, "authorizedCollections": true},
            )
            .await?
            .try_collect()
            .await?;
        let mut names: Vec<(String, String)> = specs
            .iter()
            .filter_map(|s| {
                Some((
                    s.get_str("name").ok()?.to_string(),
                    s.get_str("type").unwrap_or("collection").to_string(),
                ))
            })
            .collect();
        names.sort();
        for (name, kind) in names {
            if name.starts_with("system.") {
                out.system.push(Namespace::new(&db, &name));
            } else if kind == "view" {
                if selector.selects(&db, &name) {
                    out.views.push(Namespace::new(&db, &name));
                }
            } else if selector.selects(&db, &name) {
                out.selected.push(Namespace::new(&db, &name));
            }
        }
    }
    Ok(out)
}

/// Blocks or unblocks user writes on a whole cluster (`setUserWriteBlockMode`, 6.0+). Users
/// holding `bypassWriteBlockingMode` (cutover's own) can still write. Idempotent, so a
/// transient failure (an election, a dropped connection: the driver does not retry
/// commands) is retried with backoff for up to a minute: `cutover unblock` has no
/// `--retry-timeout`, and an operator waits on it at a terminal (`cutover run` uses
/// [`set_user_write_block_within`] with its own).
pub async fn set_user_write_block(cluster: &Cluster, on: bool) -> Result<(), ClusterError> {
    set_user_write_block_within(cluster, on, Duration::from_secs(60)).await
}

/// [`set_user_write_block`], retrying transient failures for `budget` (`cutover run`:
/// `--retry-timeout`).
pub async fn set_user_write_block_within(
    cluster: &Cluster,
    on: bool,
    budget: Duration,
) -> Result<(), ClusterError> {
    let mut retry = Retry::new(budget)
        .with_delays(Duration::from_millis(100), Duration::from_secs(2))
        .on(cluster.name());
    let what = if on {
        "blocking user writes"
    } else {
        "unblocking user writes"
    };
    match retry
        .run(what, |_| set_block_majority(&cluster.client, on))
        .await
    {
        Ok(()) => Ok(()),
        Err(Failure::Permanent(e)) => Err(cluster.error(&e)),
        Err(Failure::GaveUp(_, g)) => Err(ClusterError::Other {
            cluster: cluster.name(),
            hosts: cluster.uri.hosts_display(),
            detail: redact::scrub(&g.to_string()),
        }),
    }
}

/// `setUserWriteBlockMode`, then a wait until it is majority-committed: the command refuses a
/// `writeConcern` (6.0.5: InvalidOptions, "Command does not support writeConcern"), so its
/// reply's `operationTime` is awaited in `hello`'s `lastWrite.majorityOpTime`, the way
/// [`crate::engine::clock::cluster_time`] does. A stepdown cannot then roll the block (or the
/// unblock) back after cutover moved on.
async fn set_block_majority(client: &Client, on: bool) -> Result<(), mongodb::error::Error> {
    let admin = client.database("admin");
    let reply = admin
        .run_command(doc! {"setUserWriteBlockMode": 1, "global": on})
        .await?;
    let Ok(at) = reply.get_timestamp("operationTime") else {
        return Ok(());
    };
    let started = std::time::Instant::now();
    loop {
        let hello = admin.run_command(doc! {"hello": 1}).await?;
        let majority = hello
            .get_document("lastWrite")
            .ok()
            .and_then(|lw| lw.get_document("majorityOpTime").ok())
            .and_then(|o| o.get_timestamp("ts").ok());
        match majority {
            Some(m) if m < at && started.elapsed() < Duration::from_secs(60) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Some(m) if m < at => {
                // As a write-concern timeout: transient, the caller retries the command.
                return Err(
                    ErrorKind::Write(mongodb::error::WriteFailure::WriteConcernError(
                        mongodb::bson::from_document(
                            doc! {"code": code::WRITE_CONCERN_FAILED, "codeName": "WriteConcernFailed",
                            "errmsg": "setUserWriteBlockMode not majority-committed within 60s"},
                        )
                        .map_err(mongodb::error::Error::custom)?,
                    ))
                    .into(),
                );
            }
            // Majority-committed, or no `lastWrite` (mongos).
            _ => return Ok(()),
        }
    }
}
