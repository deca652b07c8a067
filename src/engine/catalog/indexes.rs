//! Secondary indexes on the destination: identical specs, relaxed during sync.

use mongodb::bson::{doc, Bson, Document};
use mongodb::Client;

use super::error::{code_of, CatalogError, INDEX_KEY_SPECS_CONFLICT, INDEX_OPTIONS_CONFLICT};
use super::list::list_indexes;
use super::relax::{Relaxation, RelaxationStore};
use super::spec::{as_i64, bson_eq, NsKind, NsSpec};
use crate::base::namespace::Namespace;

/// Fields an index loses while relaxed (and the server-side `ns` of old specs).
const RELAXED_FIELDS: &[&str] = &["unique", "prepareUnique", "expireAfterSeconds", "ns"];

/// Builds the source's secondary indexes on the destination with identical specs (unique,
/// partial, sparse, TTL, text with weights/default_language/language_override/
/// textIndexVersion, 2dsphere with its version, hashed, wildcard with wildcardProjection,
/// collation, hidden, name), in one `createIndexes`.
///
/// Relaxed: unique indexes are built non-unique and TTL indexes without expiry; both are
/// recorded first and restored by [`super::restore_relaxations`]. Idempotent: an index that
/// already exists with the same spec (relaxed or restored) is left alone; one with another
/// spec is a [`CatalogError::Conflict`].
pub async fn build_indexes(
    dest: &Client,
    spec: &NsSpec,
    relax: &RelaxationStore,
) -> Result<(), CatalogError> {
    if spec.kind == NsKind::View {
        return Ok(());
    }
    let specs: Vec<Document> = spec
        .index_docs()
        .into_iter()
        .filter(|i| {
            i.get_str("name").ok() != Some("_id_") && !i.get_bool("clustered").unwrap_or(false)
        })
        .collect();
    create_indexes(dest, &spec.ns, specs, relax, false).await
}

/// Builds a collection's indexes right after its creation (it has none yet: no listing),
/// relaxed and recorded, in one `createIndexes`.
pub(crate) async fn create_indexes_on_new(
    dest: &Client,
    spec: &NsSpec,
    relax: &RelaxationStore,
) -> Result<(), CatalogError> {
    let ns = &spec.ns;
    let mut to_build = Vec::new();
    for source in spec.index_docs() {
        let name = source
            .get_str("name")
            .map_err(|e| CatalogError::malformed("index spec", e))?
            .to_string();
        if name == "_id_" || source.get_bool("clustered").unwrap_or(false) {
            continue;
        }
        let (relaxed, relaxations) = relax_index(ns, &name, &source);
        for r in &relaxations {
            relax.record(r).await?;
        }
        to_build.push(relaxed);
    }
    if to_build.is_empty() {
        return Ok(());
    }
    let cmd = doc! {"createIndexes": &ns.coll, "indexes": to_build};
    crate::state::lease::run_majority(&dest.database(&ns.db), cmd)
        .await
        .map_err(|e| CatalogError::command("createIndexes", ns, e))?;
    tracing::debug!(%ns, "built indexes with the collection's creation");
    Ok(())
}

/// Creates `specs` (source specs) on `ns`, relaxed and recorded; shared with DDL apply.
///
/// With `replay` (a DDL change event), the destination may already be *ahead* of the event:
/// the copy read the catalog after it. Then a missing collection, or an index already there
/// with another spec or key, is left alone: the later events (drop, dropIndexes, collMod)
/// bring the destination to the source's state, and the verifier compares the end result.
pub(crate) async fn create_indexes(
    dest: &Client,
    ns: &Namespace,
    specs: Vec<Document>,
    relax: &RelaxationStore,
    replay: bool,
) -> Result<(), CatalogError> {
    if specs.is_empty() {
        return Ok(());
    }
    let existing = match list_indexes(dest, ns).await? {
        Some(e) => e,
        None if replay => {
            tracing::debug!(%ns, "createIndexes skipped: the collection is not on the destination (dropped later on the source)");
            return Ok(());
        }
        None => Vec::new(),
    };
    let existing: Vec<Document> = existing
        .iter()
        .filter_map(|i| i.to_document().ok())
        .collect();
    let mut to_build = Vec::new();
    for source in specs {
        let name = source
            .get_str("name")
            .map_err(|e| CatalogError::malformed("index spec", e))?
            .to_string();
        if name == "_id_" {
            continue;
        }
        let (relaxed, relaxations) = relax_index(ns, &name, &source);
        if let Some(have) = existing
            .iter()
            .find(|d| d.get_str("name").ok() == Some(name.as_str()))
        {
            if !bson_eq(
                &Bson::Document(strip(have)),
                &Bson::Document(strip(&source)),
            ) {
                if replay {
                    tracing::debug!(%ns, index = %name, "createIndexes skipped: the destination already has a later version of this index");
                    continue;
                }
                return Err(CatalogError::Conflict {
                    ns: ns.clone(),
                    what: format!("index {name}"),
                    existing: have.to_string(),
                    wanted: source.to_string(),
                });
            }
            continue;
        }
        for r in &relaxations {
            relax.record(r).await?;
        }
        to_build.push(relaxed);
    }
    if to_build.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = to_build
        .iter()
        .filter_map(|d| d.get_str("name").ok().map(String::from))
        .collect();
    let cmd = doc! {"createIndexes": &ns.coll, "indexes": to_build.clone()};
    match crate::state::lease::run_majority(&dest.database(&ns.db), cmd).await {
        Ok(_) => {}
        Err(e) if replay && is_index_conflict(&e) => {
            // One spec collides with a later index of the same key: build the others.
            for spec in to_build {
                let name = spec.get_str("name").unwrap_or_default().to_string();
                let one = doc! {"createIndexes": &ns.coll, "indexes": [spec]};
                match crate::state::lease::run_majority(&dest.database(&ns.db), one).await {
                    Ok(_) => {}
                    Err(e) if is_index_conflict(&e) => {
                        tracing::debug!(%ns, index = %name, "createIndexes skipped: an index with this key already exists (created later on the source)");
                    }
                    Err(e) => {
                        return Err(CatalogError::command(
                            format!("createIndexes {name}"),
                            ns,
                            e,
                        ))
                    }
                }
            }
        }
        Err(e) => {
            return Err(CatalogError::command(
                format!("createIndexes {names:?}"),
                ns,
                e,
            ))
        }
    }
    tracing::debug!(%ns, ?names, "built indexes");
    Ok(())
}

fn is_index_conflict(e: &mongodb::error::Error) -> bool {
    matches!(
        code_of(e),
        Some(INDEX_OPTIONS_CONFLICT) | Some(INDEX_KEY_SPECS_CONFLICT)
    )
}

/// The spec to build during sync and the relaxations it implies.
pub(crate) fn relax_index(
    ns: &Namespace,
    name: &str,
    source: &Document,
) -> (Document, Vec<Relaxation>) {
    let mut relaxations = Vec::new();
    if source.get_bool("unique").unwrap_or(false) {
        relaxations.push(Relaxation::unique(ns, name));
    } else if source.get_bool("prepareUnique").unwrap_or(false) {
        relaxations.push(Relaxation::prepare_unique(ns, name));
    }
    if let Some(secs) = as_i64(source.get("expireAfterSeconds")) {
        relaxations.push(Relaxation::index_ttl(ns, name, secs));
    }
    (strip(source), relaxations)
}

/// Whether a source index spec and a destination one are the same but for what the sync
/// relaxes (unique, prepareUnique, TTL), which the relaxation records carry.
pub(crate) fn same_relaxed_index(source: &Document, dest: &Document) -> bool {
    bson_eq(&Bson::Document(strip(source)), &Bson::Document(strip(dest)))
}

/// The relaxations a source index spec implies (its current unique/TTL values).
pub(crate) fn index_relaxations(ns: &Namespace, name: &str, source: &Document) -> Vec<Relaxation> {
    relax_index(ns, name, source).1
}

fn strip(d: &Document) -> Document {
    let mut d = d.clone();
    for k in RELAXED_FIELDS {
        d.remove(*k);
    }
    d
}
