//! Why a verify could not finish. A mismatch is not an error: it is a report.

use mongodb::error::ErrorKind;

use crate::base::namespace::Namespace;
use crate::base::redact;
use crate::base::role::Role;
use crate::cluster::server_error::{self, code, short_message};

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Run inside `cutover run`: the runner lost its lease to another.
    #[error(transparent)]
    Fenced(#[from] crate::state::lease::LeaseLost),

    /// A cluster stopped answering (exit 3).
    #[error("{side} cluster is unreachable while {what}{}: {detail}\nhint: check the cluster and the network, then run the same command again; finished ranges are not checked again", ns_suffix(.ns))]
    Unreachable {
        side: Role,
        ns: Option<Namespace>,
        what: String,
        detail: String,
    },
    /// The server refused an operation (exit 1).
    #[error("{side} cluster refused {what}{}: {detail}\nhint: {hint}", ns_suffix(.ns))]
    Server {
        side: Role,
        ns: Option<Namespace>,
        what: String,
        detail: String,
        hint: &'static str,
        /// A failover, a killed cursor or a shutdown: worth another attempt.
        transient: bool,
    },
    /// The `_id` order is collated (not simple BSON order) and the range is too big to
    /// compare by hash join.
    #[error("{ns}: the {side} returns `_id`s in collated order (the collection has a non-simple default collation) and a differing range holds more than 250,000 documents, too many to compare in bounded memory\nhint: run again with a smaller `--range-docs` (and `--restart`)")]
    Order { side: Role, ns: Namespace },
}

fn ns_suffix(ns: &Option<Namespace>) -> String {
    ns.as_ref()
        .map(|n| format!(" (namespace `{n}`)"))
        .unwrap_or_default()
}

impl VerifyError {
    pub fn driver(
        side: Role,
        ns: Option<&Namespace>,
        what: &str,
        e: &mongodb::error::Error,
    ) -> Self {
        let detail = redact::scrub(&short_message(e));
        let ns = ns.cloned();
        let what = what.to_string();
        match e.kind.as_ref() {
            _ if server_error::is_unreachable(e) => {
                VerifyError::Unreachable { side, ns, what, detail }
            }
            ErrorKind::Command(c) if c.code == code::UNAUTHORIZED => VerifyError::Server {
                side,
                ns,
                what,
                detail,
                hint: "the plan's user needs find, listCollections, listIndexes and collStats on the selected databases, and readWrite on the state database",
                transient: false,
            },
            _ => VerifyError::Server {
                side,
                ns,
                what,
                detail,
                hint: "see the server's message; run the same command again to continue",
                // A verify only reads: a killed cursor is worth another read of the range.
                transient: server_error::transience(e).for_read(),
            },
        }
    }

    /// Worth retrying the range: the cluster is unreachable for now, or a failover, shutdown
    /// or killed cursor interrupted the read.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            VerifyError::Unreachable { .. }
                | VerifyError::Server {
                    transient: true,
                    ..
                }
        )
    }

    /// True when a cluster could not be reached (exit 3).
    pub fn is_connectivity(&self) -> bool {
        matches!(self, VerifyError::Unreachable { .. })
    }
}
