//! The catalog layer of the sync engine: which namespaces exist, their options and indexes,
//! creating them on the destination (relaxed during sync), restoring the relaxations at
//! commit, and applying DDL change events.
//!
//! # Time-series collections
//! mongosync does not support them; cutover does, by copying **buckets**. The destination
//! gets a time-series collection with the source's options ([`create_on_destination`]), its
//! secondary indexes through the view name ([`build_indexes`]), and then the engine copies and
//! replicates the raw documents of `<db>.system.buckets.<name>` ([`copy_target`]). Verified on
//! 6.0.5: `root` can insert, replace and delete in `system.buckets.<name>` on the destination
//! and the time-series view shows the same measurements. A cluster-wide change stream shows
//! bucket writes (insert, update with `updateDescription`) and time-series DDL only with
//! `showSystemEvents: true` (accepted by 6.0.5), on the namespace `system.buckets.<name>`;
//! the engine's server-side filter must therefore let `system.buckets.<selected>` through.

mod create;
mod ddl;
mod error;
mod indexes;
mod list;
mod relax;
mod spec;

pub use create::create_on_destination;
pub use ddl::{apply_ddl, DdlOutcome};
pub use error::CatalogError;
pub use indexes::build_indexes;
pub use list::{list_selected, spec_of};
pub use relax::{
    restore_relaxations, Relaxation, RelaxationKind, RelaxationStore, RestoreReport,
    RELAXATIONS_COLLECTION, RELAXED_CAPPED_SIZE,
};
pub use spec::{buckets_of, compare_specs, copy_target, NsKind, NsSpec};
