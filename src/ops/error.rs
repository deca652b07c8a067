//! Why an operation on a run (`pause`, `resume`, `approve`, `resync`) did not happen. The CLI
//! maps it to an exit code ([`crate::cli::error`]), the HTTP API to a status
//! ([`crate::ops::http`]); each in one place.

use crate::engine::catalog::CatalogError;
use crate::state::StateError;

#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The request itself is wrong (a step that is no manual commit, a malformed `--ns`):
    /// nothing was written.
    #[error("{0}")]
    Invalid(String),
    /// The migration's state does not allow it now (a resync after the commit, of a view,
    /// with no runner live): nothing was written.
    #[error("{0}")]
    Refused(String),
    /// It cannot be done as asked (nothing recorded yet, a namespace the source lacks,
    /// every manual commit done already).
    #[error("{0}")]
    Failed(String),
    /// The state store could not be read or written.
    #[error("{0}")]
    State(#[from] StateError),
    /// The run document could not be read.
    #[error("{0}")]
    Record(#[from] crate::state::record::RecordError),
    /// The source's catalog could not be read.
    #[error("reading the source's catalog: {0}")]
    Catalog(#[from] CatalogError),
}
