//! What can go wrong while reading or writing a catalog.

use mongodb::bson::Bson;

use crate::base::namespace::Namespace;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// This runner lost its lease: another runner holds the plan.
    #[error(transparent)]
    Fenced(#[from] crate::state::lease::LeaseLost),

    /// A command the server refused or a network failure.
    #[error("{what} for {ns} failed: {source}")]
    Command {
        what: String,
        ns: String,
        #[source]
        source: Box<mongodb::error::Error>,
    },

    /// The destination already holds the namespace (or index) with other options.
    #[error(
        "{ns} already exists on the destination with different {what}:\n  destination: {existing}\n  source:      {wanted}\n\
         hint: drop or rename it on the destination (it is not the source's), then run again"
    )]
    Conflict {
        ns: Namespace,
        what: String,
        existing: String,
        wanted: String,
    },

    /// Restoring a unique index found documents the source's unique index would refuse.
    #[error(
        "unique index {index} on {ns} cannot be made unique on the destination: documents with duplicate keys exist \
         (_ids {ids:?}). The destination diverged from the source (the source's index is unique). \
         hint: remove the duplicates on the destination (compare these _ids with the source), then run the commit again"
    )]
    Duplicates {
        ns: Namespace,
        index: String,
        ids: Vec<Bson>,
    },

    /// A DDL change event cutover cannot apply; never skipped silently.
    #[error(
        "cannot apply change event {operation_type} on {ns} at cluster time {cluster_time}: {reason}"
    )]
    UnsupportedDdl {
        operation_type: String,
        ns: String,
        cluster_time: String,
        reason: String,
    },

    /// A server reply or event without a field it must have.
    #[error("unexpected {what}: {detail}")]
    Malformed { what: String, detail: String },

    /// An error of a read on the source within an operation that otherwise works on the
    /// destination (a DDL event's replay): says which cluster failed.
    #[error(transparent)]
    OnSource(Box<CatalogError>),
}

impl CatalogError {
    pub(crate) fn command(
        what: impl Into<String>,
        ns: impl ToString,
        source: mongodb::error::Error,
    ) -> Self {
        CatalogError::Command {
            what: what.into(),
            ns: ns.to_string(),
            source: Box::new(source),
        }
    }

    /// A command or read that failed on the network, an election or a shutdown: the whole
    /// catalog operation (each is idempotent) can be run again.
    pub fn is_transient(&self) -> bool {
        match self {
            CatalogError::Command { source, .. } => {
                crate::cluster::server_error::is_transient(source)
            }
            CatalogError::OnSource(e) => e.is_transient(),
            _ => false,
        }
    }

    /// Marks an error as the source's (see [`CatalogError::OnSource`]).
    pub fn on_source(self) -> Self {
        match self {
            e @ CatalogError::OnSource(_) => e,
            e => CatalogError::OnSource(Box::new(e)),
        }
    }

    pub(crate) fn malformed(what: impl Into<String>, detail: impl ToString) -> Self {
        CatalogError::Malformed {
            what: what.into(),
            detail: detail.to_string(),
        }
    }
}

pub(crate) use crate::cluster::server_error::code::{
    CANNOT_CONVERT_INDEX_TO_UNIQUE, INDEX_KEY_SPECS_CONFLICT, INDEX_NOT_FOUND,
    INDEX_OPTIONS_CONFLICT, NAMESPACE_EXISTS, NAMESPACE_NOT_FOUND,
};
pub(crate) use crate::cluster::server_error::code_of;
