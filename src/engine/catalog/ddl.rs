//! Applying DDL change events (cluster-wide change stream with `showExpandedEvents` and
//! `showSystemEvents`) to the destination.
//!
//! What 6.0.5 sends (verified on this server, see tests/it/ddl.rs):
//! - `create`: `operationDescription` holds the options (`capped`, `size`, `max`,
//!   `validator`, `validationLevel`, `validationAction`, full `collation`, `clusteredIndex`,
//!   `expireAfterSeconds`, `viewOn` + `pipeline` for views) and `idIndex`.
//! - A time-series collection `X` shows as `create` of `system.buckets.X` (only with
//!   `showSystemEvents`; it carries `timeseries` and `expireAfterSeconds`), then `create` of
//!   the view `X` (`viewOn: "system.buckets.X"`). Its indexes, `collMod`s and writes all
//!   arrive on `system.buckets.X`, in bucket terms (`control.min.t`, `meta`).
//! - `createIndexes` / `dropIndexes`: `operationDescription.indexes` = full specs.
//! - `modify` (collMod): `operationDescription` holds exactly the changed fields
//!   (`validator`, `index: {name, hidden | expireAfterSeconds | prepareUnique | unique}`,
//!   `cappedSize`, `cappedMax`, `expireAfterSeconds`, `viewOn` + `pipeline`); it is empty
//!   when the collMod changed nothing (e.g. `prepareUnique` on a unique index).
//! - `rename`: `to` (and `operationDescription.to`, `dropTarget` when one was replaced).
//!   Across databases the server creates `<to db>.tmpXXXXX.renameCollection`, builds its
//!   indexes, inserts every document into it (as insert events), renames it to the target
//!   and drops the original: each step arrives as its own event.
//! - `drop` (also of a view), `dropDatabase` (`ns` without `coll`, after one `drop` each).

use mongodb::bson::{doc, Document, RawDocument, RawDocumentBuf};
use mongodb::Client;

use super::create::create_ns;
use super::error::{code_of, CatalogError, INDEX_NOT_FOUND, NAMESPACE_NOT_FOUND};
use super::indexes::create_indexes;
use super::list::spec_of;
use super::relax::{Relaxation, RelaxationKind, RelaxationStore};
use super::spec::{as_i64, NsKind, NsSpec, BUCKETS_PREFIX};
use crate::base::namespace::Namespace;
use crate::plan::NamespaceSelector;

/// What [`apply_ddl`] did with an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DdlOutcome {
    Applied,
    /// The event concerns no selected namespace (the reason is logged at debug level).
    Ignored,
    /// A collection was renamed into the selection: the engine must copy it (create, copy
    /// documents, build indexes) from the source.
    NeedsCopy(Namespace),
}

struct Event<'a> {
    op: &'a str,
    ns: String,
    cluster_time: String,
}

impl Event<'_> {
    fn unsupported(&self, reason: impl Into<String>) -> CatalogError {
        CatalogError::UnsupportedDdl {
            operation_type: self.op.to_string(),
            ns: self.ns.clone(),
            cluster_time: self.cluster_time.clone(),
            reason: reason.into(),
        }
    }
}

/// Applies one DDL change event to the destination. Idempotent: re-applying events after a
/// crash (drop of a missing collection, create of an existing one, ...) succeeds. New unique
/// and TTL indexes are relaxed and recorded like the copy's. An event it cannot apply is an
/// error naming it (`operationType`, `ns`, `clusterTime`), never skipped.
pub async fn apply_ddl(
    source: &Client,
    dest: &Client,
    event: &RawDocument,
    selector: &NamespaceSelector,
    relax: &RelaxationStore,
) -> Result<DdlOutcome, CatalogError> {
    let ev = Document::try_from(event).map_err(|e| CatalogError::malformed("change event", e))?;
    let op = ev
        .get_str("operationType")
        .map_err(|e| CatalogError::malformed("change event", e))?;
    let ns_doc = ev.get_document("ns").cloned().unwrap_or_default();
    let db = ns_doc.get_str("db").unwrap_or_default().to_string();
    let coll = ns_doc.get_str("coll").ok().map(str::to_string);
    let ctx = Event {
        op,
        ns: match &coll {
            Some(c) => format!("{db}.{c}"),
            None => db.clone(),
        },
        cluster_time: ev
            .get("clusterTime")
            .map(|t| t.to_string())
            .unwrap_or_else(|| "?".into()),
    };
    let desc = ev
        .get_document("operationDescription")
        .cloned()
        .unwrap_or_default();

    if op == "dropDatabase" {
        return drop_database(dest, &db, selector, relax).await;
    }
    if matches!(
        op,
        "shardCollection" | "reshardCollection" | "refineCollectionShardKey"
    ) {
        return Err(ctx.unsupported(
            "sharding DDL is not supported (cutover syncs replica sets); stop the sync, shard the destination yourself, and run again",
        ));
    }
    if !matches!(
        op,
        "create" | "createIndexes" | "dropIndexes" | "modify" | "drop" | "rename"
    ) {
        return Err(ctx.unsupported("not a DDL event cutover knows how to apply"));
    }
    let Some(coll) = coll else {
        return Err(ctx.unsupported("the event has no collection name"));
    };
    let event_ns = Namespace::new(db.clone(), coll.clone());
    // Time-series DDL arrives on the buckets namespace; the user's namespace is the view.
    let (target, buckets) = match coll.strip_prefix(BUCKETS_PREFIX) {
        Some(view) => (Namespace::new(db.clone(), view), true),
        None => (event_ns.clone(), false),
    };

    if op == "rename" {
        return rename(dest, &ev, &desc, &target, selector, relax, &ctx).await;
    }
    if !selector.selects(&target.db, &target.coll) {
        tracing::debug!(op, ns = %event_ns, "DDL ignored: namespace not selected");
        return Ok(DdlOutcome::Ignored);
    }
    match op {
        "create" => create(source, dest, &desc, &target, buckets, relax).await,
        "createIndexes" => {
            let specs = index_specs(&desc, &ctx)?;
            create_indexes(dest, &event_ns, specs, relax, true).await?;
            Ok(DdlOutcome::Applied)
        }
        "dropIndexes" => {
            for spec in index_specs(&desc, &ctx)? {
                let name = spec
                    .get_str("name")
                    .map_err(|_| ctx.unsupported("an index without a name"))?;
                let cmd = doc! {"dropIndexes": &event_ns.coll, "index": name};
                run_tolerant(dest, &event_ns, cmd).await?;
                relax.forget_index(&target, name).await?;
            }
            Ok(DdlOutcome::Applied)
        }
        "modify" => modify(dest, &desc, &target, relax, &ctx).await,
        "drop" => {
            run_tolerant(dest, &target, doc! {"drop": &target.coll}).await?;
            relax.forget_namespace(&target).await?;
            Ok(DdlOutcome::Applied)
        }
        _ => Err(ctx.unsupported("not a DDL event cutover knows how to apply")),
    }
}

fn index_specs(desc: &Document, ctx: &Event<'_>) -> Result<Vec<Document>, CatalogError> {
    let arr = desc
        .get_array("indexes")
        .map_err(|_| ctx.unsupported("operationDescription.indexes is missing"))?;
    arr.iter()
        .map(|b| {
            b.as_document()
                .cloned()
                .ok_or_else(|| ctx.unsupported("an index spec is not a document"))
        })
        .collect()
}

fn spec_from(ns: &Namespace, kind: NsKind, options: Document) -> Result<NsSpec, CatalogError> {
    let info = doc! {"name": &ns.coll, "type": kind.as_str(), "options": options};
    let info = RawDocumentBuf::from_document(&info)
        .map_err(|e| CatalogError::malformed("collection options", e))?;
    Ok(NsSpec {
        ns: ns.clone(),
        kind,
        info,
        indexes: Vec::new(),
    })
}

async fn create(
    source: &Client,
    dest: &Client,
    desc: &Document,
    target: &Namespace,
    buckets: bool,
    relax: &RelaxationStore,
) -> Result<DdlOutcome, CatalogError> {
    let view_on = desc.get_str("viewOn").ok();
    if buckets {
        let mut options = Document::new();
        if let Ok(ts) = desc.get_document("timeseries") {
            options.insert("timeseries", ts.clone());
        }
        if let Some(e) = desc.get("expireAfterSeconds") {
            options.insert("expireAfterSeconds", e.clone());
        }
        create_ns(
            dest,
            &spec_from(target, NsKind::Timeseries, options)?,
            relax,
            true,
        )
        .await?;
        return Ok(DdlOutcome::Applied);
    }
    if view_on.is_some_and(|v| v.starts_with(BUCKETS_PREFIX)) {
        // The view half of a time-series collection. Its buckets' create event (with
        // showSystemEvents) came first; without it, read the options from the source.
        if spec_of(dest, target)
            .await?
            .is_some_and(|s| s.kind == NsKind::Timeseries)
        {
            return Ok(DdlOutcome::Applied);
        }
        return match spec_of(source, target)
            .await
            .map_err(CatalogError::on_source)?
        {
            Some(s) if s.kind == NsKind::Timeseries => {
                create_ns(dest, &s, relax, true).await?;
                Ok(DdlOutcome::Applied)
            }
            _ => {
                tracing::debug!(ns = %target, "time-series create ignored: gone on the source, its drop event follows");
                Ok(DdlOutcome::Ignored)
            }
        };
    }
    let mut options = desc.clone();
    options.remove("idIndex");
    let kind = if view_on.is_some() {
        NsKind::View
    } else {
        NsKind::Collection
    };
    create_ns(dest, &spec_from(target, kind, options)?, relax, true).await?;
    Ok(DdlOutcome::Applied)
}

async fn modify(
    dest: &Client,
    desc: &Document,
    target: &Namespace,
    relax: &RelaxationStore,
    ctx: &Event<'_>,
) -> Result<DdlOutcome, CatalogError> {
    let mut apply = Document::new();
    for (k, v) in desc {
        match k.as_str() {
            "validator"
            | "validationLevel"
            | "validationAction"
            | "viewOn"
            | "pipeline"
            | "changeStreamPreAndPostImages"
            | "timeseries" => {
                apply.insert(k, v.clone());
            }
            "expireAfterSeconds" => match as_i64(Some(v)) {
                Some(secs) => {
                    relax
                        .record(&Relaxation::collection_ttl(target, secs))
                        .await?
                }
                None => {
                    relax
                        .remove_id(target, None, RelaxationKind::CollectionTtl)
                        .await?
                }
            },
            "cappedSize" | "cappedMax" => {
                let mut r = relax
                    .get(target, None, RelaxationKind::Capped)
                    .await?
                    .unwrap_or_else(|| Relaxation::capped(target, None, None));
                if k == "cappedSize" {
                    r.capped_size = as_i64(Some(v));
                } else {
                    r.capped_max = as_i64(Some(v)).filter(|m| *m > 0);
                }
                relax.record(&r).await?;
            }
            "index" => {
                let index = v.as_document().ok_or_else(|| {
                    ctx.unsupported("operationDescription.index is not a document")
                })?;
                if let Some(a) = modify_index(dest, index, target, relax, ctx).await? {
                    apply.insert("index", a);
                }
            }
            other => return Err(ctx.unsupported(format!("collMod of `{other}` is not supported"))),
        }
    }
    if !apply.is_empty() {
        let mut cmd = doc! {"collMod": &target.coll};
        cmd.extend(apply);
        match crate::state::lease::run_majority(&dest.database(&target.db), cmd.clone()).await {
            Ok(_) => {}
            // Not (or no longer) on the destination: its drop event follows.
            Err(e)
                if matches!(
                    code_of(&e),
                    Some(NAMESPACE_NOT_FOUND) | Some(INDEX_NOT_FOUND)
                ) =>
            {
                tracing::debug!(ns = %target, "collMod skipped: not on the destination");
            }
            Err(e) => return Err(CatalogError::command(format!("collMod {cmd}"), target, e)),
        }
    }
    Ok(DdlOutcome::Applied)
}

/// Records unique/TTL changes of an index; returns what to send to the destination (hidden).
async fn modify_index(
    dest: &Client,
    index: &Document,
    target: &Namespace,
    relax: &RelaxationStore,
    ctx: &Event<'_>,
) -> Result<Option<Document>, CatalogError> {
    let name = match index.get_str("name") {
        Ok(n) => n.to_string(),
        Err(_) => {
            let key = index
                .get_document("keyPattern")
                .map_err(|_| ctx.unsupported("index without name or keyPattern"))?;
            index_name_by_key(dest, target, key)
                .await?
                .ok_or_else(|| ctx.unsupported("no destination index has this keyPattern"))?
        }
    };
    let mut apply = doc! {"name": &name};
    for (k, v) in index {
        match k.as_str() {
            "name" | "keyPattern" => {}
            "hidden" => {
                apply.insert("hidden", v.clone());
            }
            "expireAfterSeconds" => match as_i64(Some(v)) {
                Some(secs) => {
                    relax
                        .record(&Relaxation::index_ttl(target, &name, secs))
                        .await?
                }
                None => return Err(ctx.unsupported(format!("index expireAfterSeconds {v}"))),
            },
            "prepareUnique" => {
                if v.as_bool() == Some(true) {
                    relax
                        .record(&Relaxation::prepare_unique(target, &name))
                        .await?;
                } else {
                    relax
                        .remove_id(target, Some(&name), RelaxationKind::PrepareUnique)
                        .await?;
                }
            }
            "unique" => {
                relax.record(&Relaxation::unique(target, &name)).await?;
                relax
                    .remove_id(target, Some(&name), RelaxationKind::PrepareUnique)
                    .await?;
            }
            other => {
                return Err(ctx.unsupported(format!(
                    "collMod of index option `{other}` is not supported"
                )))
            }
        }
    }
    Ok((apply.len() > 1).then_some(apply))
}

async fn index_name_by_key(
    dest: &Client,
    ns: &Namespace,
    key: &Document,
) -> Result<Option<String>, CatalogError> {
    let specs = super::list::list_indexes(dest, ns)
        .await?
        .unwrap_or_default();
    Ok(specs
        .iter()
        .filter_map(|s| s.to_document().ok())
        .find_map(|d| {
            let k = d.get_document("key").ok()?;
            (k == key && k.keys().eq(key.keys()))
                .then(|| d.get_str("name").ok().map(String::from))?
        }))
}

#[allow(clippy::too_many_arguments)]
async fn rename(
    dest: &Client,
    ev: &Document,
    desc: &Document,
    from: &Namespace,
    selector: &NamespaceSelector,
    relax: &RelaxationStore,
    ctx: &Event<'_>,
) -> Result<DdlOutcome, CatalogError> {
    let to_doc = desc
        .get_document("to")
        .or_else(|_| ev.get_document("to"))
        .map_err(|_| ctx.unsupported("rename without `to`"))?;
    let raw_to = RawDocumentBuf::from_document(to_doc)
        .map_err(|e| CatalogError::malformed("rename target", e))?;
    let to = Namespace::from_event_ns(&raw_to)
        .ok_or_else(|| ctx.unsupported("rename `to` lacks db or coll"))?;
    let drop_target = desc.contains_key("dropTarget");
    let from_sel = selector.selects(&from.db, &from.coll);
    let to_sel = selector.selects(&to.db, &to.coll);
    match (from_sel, to_sel) {
        (false, false) => {
            tracing::debug!(%from, %to, "rename ignored: neither namespace is selected");
            Ok(DdlOutcome::Ignored)
        }
        (true, false) => {
            tracing::debug!(%from, %to, "rename out of the selection: dropping on the destination");
            run_tolerant(dest, from, doc! {"drop": &from.coll}).await?;
            relax.forget_namespace(from).await?;
            Ok(DdlOutcome::Applied)
        }
        (false, true) => {
            if drop_target {
                run_tolerant(dest, &to, doc! {"drop": &to.coll}).await?;
                relax.forget_namespace(&to).await?;
            }
            Ok(DdlOutcome::NeedsCopy(to))
        }
        (true, true) => {
            let have_from = spec_of(dest, from).await?.is_some();
            if !have_from {
                // Already renamed by an earlier attempt, or never created here.
                if spec_of(dest, &to).await?.is_some() {
                    // Renamed by an earlier attempt (the records of a replaced target were
                    // forgotten before it): move whatever records are left under `from`.
                    relax.rename_namespace(from, &to).await?;
                    return Ok(DdlOutcome::Applied);
                }
                return Ok(DdlOutcome::NeedsCopy(to));
            }
            // The source's rename succeeded, so `to` did not exist there (or was replaced):
            // a `to` on the destination is a leftover of an earlier attempt at later events.
            // The records of whatever `to` holds now go first: once the destination is renamed
            // a replay takes the branch above, which only moves records.
            relax.forget_namespace(&to).await?;
            let cmd = doc! {
                "renameCollection": from.to_string(),
                "to": to.to_string(),
                "dropTarget": true,
            };
            crate::state::lease::run_majority(&dest.database("admin"), cmd)
                .await
                .map_err(|e| CatalogError::command(format!("renameCollection to {to}"), from, e))?;
            relax.rename_namespace(from, &to).await?;
            Ok(DdlOutcome::Applied)
        }
    }
}

async fn drop_database(
    dest: &Client,
    db: &str,
    selector: &NamespaceSelector,
    relax: &RelaxationStore,
) -> Result<DdlOutcome, CatalogError> {
    if !selector.may_select_database(db) {
        tracing::debug!(db, "dropDatabase ignored: database not selected");
        return Ok(DdlOutcome::Ignored);
    }
    // Drop only the selected namespaces: the destination may hold others of its own.
    let names = dest
        .database(db)
        .list_collection_names()
        .await
        .map_err(|e| CatalogError::command("listCollections", db, e))?;
    for name in names {
        if !selector.selects(db, &name) {
            continue;
        }
        let ns = Namespace::new(db, name);
        run_tolerant(dest, &ns, doc! {"drop": &ns.coll}).await?;
        relax.forget_namespace(&ns).await?;
    }
    Ok(DdlOutcome::Applied)
}

/// Runs a command, treating "namespace/index not found" as done (idempotent replays).
async fn run_tolerant(dest: &Client, ns: &Namespace, cmd: Document) -> Result<(), CatalogError> {
    match crate::state::lease::run_majority(&dest.database(&ns.db), cmd.clone()).await {
        Ok(_) => Ok(()),
        Err(e)
            if matches!(
                code_of(&e),
                Some(NAMESPACE_NOT_FOUND) | Some(INDEX_NOT_FOUND)
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(CatalogError::command(format!("{cmd}"), ns, e)),
    }
}
