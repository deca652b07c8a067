//! Creating collections, time-series collections and views on the destination with the
//! source's options, relaxed for the sync (see [`super::relax`]).

use mongodb::bson::{doc, Bson, Document};
use mongodb::Client;

use super::error::{code_of, CatalogError, NAMESPACE_EXISTS};
use super::list::spec_of;
use super::relax::{Relaxation, RelaxationStore, RELAXED_CAPPED_SIZE};
use super::spec::{as_i64, bson_eq, NsKind, NsSpec};

/// Options that differ between source and destination while relaxed.
const RELAXED_OPTIONS: &[&str] = &["size", "max", "expireAfterSeconds"];

/// Creates the collection, time-series collection or view on the destination with the
/// source's options: capped (size, max), validator with level and action, collation, time
/// series (timeField, metaField, granularity), clustered index,
/// `changeStreamPreAndPostImages`, views with their pipeline, `expireAfterSeconds` of
/// clustered and time-series collections.
///
/// Relaxed: capped collections get a 1 PB size and no `max` (nothing evicted out of order),
/// and no collection gets `expireAfterSeconds` (nothing deleted by the destination); both are
/// recorded in `relax` and come back with [`super::restore_relaxations`].
///
/// Idempotent: an existing namespace with the same options (relaxed or restored) is fine;
/// one with other options is a [`CatalogError::Conflict`] naming both.
pub async fn create_on_destination(
    dest: &Client,
    spec: &NsSpec,
    relax: &RelaxationStore,
) -> Result<(), CatalogError> {
    create_ns(dest, spec, relax, false).await
}

/// As [`create_on_destination`], for a copy that resumes after a kill or an error: the
/// destination's namespaces were created by the earlier run from an earlier state of the
/// source (the destination was empty when the lane started), so one whose options differ now
/// is left as it is; the change events since the lane's start point (`collMod`, a view's new
/// pipeline, drop and create) bring it in line.
pub async fn create_on_destination_resumed(
    dest: &Client,
    spec: &NsSpec,
    relax: &RelaxationStore,
) -> Result<(), CatalogError> {
    create_ns(dest, spec, relax, true).await
}

/// As [`create_on_destination`]; with `replay` (a DDL change event) an existing namespace
/// with other options is left alone: the copy created it from a later state of the source,
/// and the events after this one (collMod, drop) converge.
pub(crate) async fn create_ns(
    dest: &Client,
    spec: &NsSpec,
    relax: &RelaxationStore,
    replay: bool,
) -> Result<(), CatalogError> {
    if let Some(existing) = spec_of(dest, &spec.ns).await? {
        let same = check_same(spec, &existing);
        if replay && same.is_err() {
            tracing::debug!(ns = %spec.ns, "create skipped: the destination already has a later version of it");
            return Ok(());
        }
        return same;
    }
    let (cmd, created) = run_create(dest, spec, relax).await?;
    match created {
        Ok(_) => {
            tracing::debug!(ns = %spec.ns, kind = spec.kind.as_str(), "created on the destination");
            Ok(())
        }
        // Created concurrently (or by a previous run between our check and now).
        Err(e) if code_of(&e) == Some(NAMESPACE_EXISTS) => match spec_of(dest, &spec.ns).await? {
            Some(_) if replay => Ok(()),
            Some(existing) => check_same(spec, &existing),
            None => Err(CatalogError::command(format!("create {cmd}"), &spec.ns, e)),
        },
        Err(e) => Err(CatalogError::command(format!("create {cmd}"), &spec.ns, e)),
    }
}

/// A collection of a fresh copy (the destination was empty when the lane started) with its
/// indexes: `create`, then one `createIndexes` with every index (relaxed and recorded) and no
/// listing in between: the collection is new, so it has no index yet. Two commands instead of
/// four, which matters at thousands of small collections. A collection that exists already (a
/// retry after a transient failure) is checked and indexed as [`create_on_destination`] and
/// [`super::build_indexes`] do.
pub async fn create_with_indexes(
    dest: &Client,
    spec: &NsSpec,
    relax: &RelaxationStore,
) -> Result<(), CatalogError> {
    let (cmd, created) = run_create(dest, spec, relax).await?;
    match created {
        Ok(_) => super::indexes::create_indexes_on_new(dest, spec, relax).await,
        Err(e) if code_of(&e) == Some(NAMESPACE_EXISTS) => {
            create_ns(dest, spec, relax, false).await?;
            super::build_indexes(dest, spec, relax).await
        }
        Err(e) => Err(CatalogError::command(format!("create {cmd}"), &spec.ns, e)),
    }
}

/// Records the relaxations of `spec`'s options, then runs its relaxed `create` (majority):
/// the command, and the server's answer.
async fn run_create(
    dest: &Client,
    spec: &NsSpec,
    relax: &RelaxationStore,
) -> Result<(Document, mongodb::error::Result<Document>), CatalogError> {
    let (create_opts, relaxations) = relaxed_options(spec, &spec.options());
    for r in &relaxations {
        relax.record(r).await?;
    }
    let mut cmd = doc! {"create": &spec.ns.coll};
    cmd.extend(create_opts);
    let answer = crate::state::lease::run_majority(&dest.database(&spec.ns.db), cmd.clone()).await;
    Ok((cmd, answer))
}

/// The `create` options for the destination and the relaxations they imply.
fn relaxed_options(spec: &NsSpec, source: &Document) -> (Document, Vec<Relaxation>) {
    let mut opts = source.clone();
    let mut relaxations = Vec::new();
    if spec.kind == NsKind::View {
        return (opts, relaxations);
    }
    if opts.get_bool("capped").unwrap_or(false) {
        let size = as_i64(opts.get("size"));
        let max = as_i64(opts.get("max")).filter(|m| *m > 0);
        relaxations.push(Relaxation::capped(&spec.ns, size, max));
        opts.insert("size", RELAXED_CAPPED_SIZE);
        opts.remove("max");
    }
    if let Some(secs) = as_i64(opts.get("expireAfterSeconds")) {
        relaxations.push(Relaxation::collection_ttl(&spec.ns, secs));
        opts.remove("expireAfterSeconds");
    }
    if let Ok(ts) = opts.get_document_mut("timeseries") {
        // Derived from the granularity; 6.0 does not accept it next to one.
        if ts.contains_key("granularity") {
            ts.remove("bucketMaxSpanSeconds");
            ts.remove("bucketRoundingSeconds");
        }
    }
    (opts, relaxations)
}

fn without_relaxed(d: &Document) -> Document {
    let mut d = d.clone();
    for k in RELAXED_OPTIONS {
        d.remove(*k);
    }
    d
}

fn check_same(wanted: &NsSpec, existing: &NsSpec) -> Result<(), CatalogError> {
    let w = without_relaxed(&wanted.options());
    let e = without_relaxed(&existing.options());
    if existing.kind == wanted.kind && bson_eq(&Bson::Document(w), &Bson::Document(e)) {
        return Ok(());
    }
    Err(CatalogError::Conflict {
        ns: wanted.ns.clone(),
        what: "options".into(),
        existing: format!("{} {}", existing.kind.as_str(), existing.options()),
        wanted: format!("{} {}", wanted.kind.as_str(), wanted.options()),
    })
}
