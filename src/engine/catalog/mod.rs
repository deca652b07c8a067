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
//!
//! # What the engine's change stream must deliver to [`apply_ddl`]
//! - `showExpandedEvents: true` and `showSystemEvents: true` (both accepted by 6.0.5).
//! - Events on `<db>.system.buckets.<coll>` when `<db>.<coll>` is selected.
//! - `rename` events whose **`to`** is selected even when `ns` is not: a rename across
//!   databases arrives as `create`/`createIndexes`/inserts of `<to db>.tmpXXXXX.renameCollection`,
//!   then `rename` of that temporary namespace to the target, then `drop` of the original;
//!   with a collection-list filter the temporary namespace is not selected, and the rename
//!   yields [`DdlOutcome::NeedsCopy`].
//! - `dropDatabase` events (`ns` has only `db`) of databases that may hold selected collections.
//! - Data events are not DDL: passing one to [`apply_ddl`] is an error.
//!
//! On [`DdlOutcome::NeedsCopy`] the engine creates, copies and indexes the namespace from the
//! source's *current* state ([`spec_of`], [`create_on_destination`], [`build_indexes`]) and
//! keeps applying later events, which must then be idempotent on a destination that is ahead.
//! DDL replay itself tolerates a destination that is ahead (the copy read the catalog after
//! the start point): an existing namespace or index in a later shape is left alone and the
//! later events converge it.

/// Catalog commands (listings, creates, index builds) in flight at once across namespaces: at
/// thousands of collections each one's round trip and majority wait, not the server, is the
/// cost; more than this only queues on a small server.
pub const CATALOG_CONCURRENCY: usize = 16;

mod create;
mod ddl;
mod error;
pub mod index_format;
mod indexes;
mod list;
mod relax;
mod spec;

pub use create::{create_on_destination, create_on_destination_resumed, create_with_indexes};
pub use ddl::{apply_ddl, DdlOutcome};
pub use error::CatalogError;
pub use indexes::build_indexes;
pub(crate) use indexes::{create_indexes, index_relaxations, same_relaxed_index};
pub use list::{
    entry_uuid, list_selected, list_selected_collections, list_selected_views, name_of_uuid,
    spec_of, uuid_of,
};
pub use relax::{
    restore_relaxations, Relaxation, RelaxationKind, RelaxationStore, RestoreReport,
    RELAXATIONS_COLLECTION, RELAXED_CAPPED_SIZE,
};
pub(crate) use spec::bson_eq;
pub use spec::{buckets_of, compare_specs, copy_target, NsKind, NsSpec, BUCKETS_PREFIX};
