//! Engine errors: which cluster, which namespace, what cutover was doing, what to do next.

use crate::base::role::{role_name, Role};
use crate::cluster::server_error::short_message;
use crate::engine::catalog::CatalogError;
use crate::state::StateError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{cluster} cluster: {doing}: {detail}")]
    Cluster {
        cluster: Role,
        doing: String,
        detail: String,
        transient: bool,
    },
    #[error("cannot write to `{ns}` on the {cluster} (document _id {id}): {detail} (code {code})")]
    Write {
        /// The plan role of the cluster written to (the reverse lane writes to the source).
        cluster: Role,
        ns: String,
        id: String,
        code: i32,
        detail: String,
    },
    #[error(
        "the {cluster}'s oplog no longer holds cutover's resume point ({at}): changes made since \
         then are lost to replication, so this sync can never reach can-commit"
    )]
    HistoryLost {
        /// The plan role of the cluster the lane reads (the reverse lane reads the destination).
        cluster: Role,
        at: String,
    },
    /// A change event (or the document it concerns) that cannot be applied; the message
    /// names the event or the namespace.
    #[error("{0}")]
    Event(String),
    /// The clusters differ where a step requires them equal (unique indexes, document counts
    /// after the drain, a verify step), or the destination holds what it must not.
    #[error("{0}")]
    Differs(String),
    /// A step's own timeout passed (can-commit, the drain, an approval).
    #[error("{0}")]
    TimedOut(String),
    /// The source's change stream or clock did not answer as MongoDB documents it.
    #[error("{0}")]
    Stream(String),
    /// A record cutover keeps, or a document it read, is not in the shape it expects.
    #[error("{0}")]
    Corrupt(String),
    /// A background task (copy, replication, resync) stopped without its result.
    #[error("{0}")]
    Task(String),
    /// The step cannot run in the migration's current state.
    #[error("{0}")]
    Refused(String),
    /// A cluster could not be used (connecting, authenticating, a command).
    #[error("{0}")]
    Connect(Box<crate::cluster::ClusterError>),
    /// A comparison could not finish.
    #[error("{doing}: {source}")]
    Verify {
        doing: String,
        source: Box<crate::verify::VerifyError>,
    },
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{0}")]
    Catalog(#[from] CatalogError),
    #[error("gave up after {secs}s of failed attempts to reach the {} cluster: {last}", role_name(*.cluster))]
    Outage {
        /// `None` when the failed operation touched both clusters.
        cluster: Option<Role>,
        secs: u64,
        last: String,
    },
    #[error("interrupted")]
    Interrupted,
}

impl EngineError {
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            EngineError::HistoryLost { .. } => Some(
                "a forward lane recovers by itself (it compares what was copied with the source); this \
                 one cannot: run `cutover run PLAN --restart` to start over, and give the cluster it reads a \
                 larger oplog (replSetResizeOplog) or run cutover without long pauses",
            ),
            EngineError::Write { .. } => Some(
                "fix the cause on the destination (privileges, validator, disk), then run the same \
                 `cutover run PLAN` again: it resumes where it stopped",
            ),
            EngineError::Outage { .. } => Some(
                "restore connectivity, then run the same `cutover run PLAN` again: it resumes from its \
                 last checkpoint; `--retry-timeout` sets how long cutover keeps retrying",
            ),
            EngineError::Event(_) => Some(
                "the event is named above; fix the destination or the plan's filters, then run the same \
                 `cutover run PLAN` again",
            ),
            EngineError::Differs(_) => Some(
                "what differs is named above; fix it on the destination (or in the plan), then run the \
                 same `cutover run PLAN` again",
            ),
            EngineError::Stream(_) | EngineError::Task(_) | EngineError::Corrupt(_) => Some(
                "run the same `cutover run PLAN` again: it resumes from its last checkpoint; if this \
                 repeats, report it with the log",
            ),
            _ => None,
        }
    }

    pub fn is_transient(&self) -> bool {
        match self {
            // A catalog read or command (listCollections by UUID in the copy, a DDL event's
            // `create`) that failed on the network or an election is as retryable as a read.
            EngineError::Catalog(c) => c.is_transient(),
            _ => matches!(
                self,
                EngineError::Cluster {
                    transient: true,
                    ..
                } | EngineError::State(StateError::Db {
                    transient: true,
                    ..
                })
            ),
        }
    }

    /// The cluster an error is about, for messages (the state store is on the destination);
    /// `None` when it is not about one cluster.
    pub fn cluster(&self) -> Option<Role> {
        match self {
            EngineError::Outage { cluster, .. } => *cluster,
            EngineError::Cluster { cluster, .. }
            | EngineError::Write { cluster, .. }
            | EngineError::HistoryLost { cluster, .. } => Some(*cluster),
            EngineError::State(_) => Some(Role::Destination),
            _ => None,
        }
    }
}

impl crate::cluster::retry::Retryable for EngineError {
    fn is_transient(&self) -> bool {
        EngineError::is_transient(self)
    }
    fn describe(&self) -> String {
        match self {
            EngineError::Cluster { doing, detail, .. } => format!("{doing}: {detail}"),
            other => other.to_string(),
        }
    }
    fn role(&self) -> Option<Role> {
        self.cluster()
    }
}

/// A catalog read or command that ran on `cluster`: a server or network failure becomes a
/// [`EngineError::Cluster`] naming that cluster (so retries and `status` say which one is
/// unavailable); the catalog's other errors keep their own message.
pub fn on(cluster: Role) -> impl FnOnce(CatalogError) -> EngineError {
    move |e| match e {
        CatalogError::Command { what, ns, source } => EngineError::Cluster {
            cluster,
            doing: format!("{what} for {ns}"),
            detail: short_message(&source),
            transient: crate::cluster::server_error::is_transient(&source),
        },
        other => EngineError::Catalog(other),
    }
}

/// A write error the destination returned for one statement (`id` names its document):
/// transient when sending it again can succeed (a large document refused under cache
/// pressure, a stepdown mid-command), so the caller's retry sends it again; otherwise it
/// stops the run naming the document.
pub fn write_error(
    cluster: Role,
    ns: impl ToString,
    id: impl Into<String>,
    code: i32,
    detail: &str,
) -> EngineError {
    // MaxTimeMSExpired: stopped at this runner's lease deadline (see
    // `Store::write_budget`); sent again once the lease is renewed, or not at all if lost.
    if crate::cluster::server_error::code_is_transient(code)
        || code == crate::cluster::server_error::code::MAX_TIME_MS_EXPIRED
    {
        return EngineError::Cluster {
            cluster,
            doing: format!("writing `{}` (document _id {})", ns.to_string(), id.into()),
            detail: format!("{detail} (code {code})"),
            transient: true,
        };
    }
    EngineError::Write {
        cluster,
        ns: ns.to_string(),
        id: id.into(),
        code,
        detail: detail.to_string(),
    }
}

/// A failed write or command on `cluster` while `doing`: transient when sending the same
/// idempotent operation again can succeed (see [`crate::cluster::server_error::transience`]).
pub fn cluster_err(
    cluster: Role,
    doing: impl Into<String>,
    e: &mongodb::error::Error,
) -> EngineError {
    EngineError::Cluster {
        cluster,
        doing: doing.into(),
        // Led by what is wrong when the server says it (out of disk space, not primary…).
        detail: crate::cluster::server_error::with_cause(e),
        transient: crate::cluster::server_error::transience(e).for_write(),
    }
}

/// A failed read on `cluster` while `doing`: also transient when only its cursor was lost
/// (killed, or its plan killed by a rename): the read starts over from its checkpoint.
pub fn read_err(cluster: Role, doing: impl Into<String>, e: &mongodb::error::Error) -> EngineError {
    EngineError::Cluster {
        cluster,
        doing: doing.into(),
        detail: short_message(e),
        transient: crate::cluster::server_error::transience(e).for_read(),
    }
}
