//! TEMPORARY minimal catalog so the engine compiles and runs before the real catalog module
//! (collections, options, indexes, relaxations, DDL) lands. Replaced wholesale at merge.
#![allow(dead_code)]

use futures::TryStreamExt;
use mongodb::bson::{doc, Document, RawDocument, RawDocumentBuf};
use mongodb::{Client, Database};

use crate::namespace::Namespace;
use crate::plan::NamespaceSelector;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("{0}")]
    Other(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NsKind {
    Collection,
    View,
    Timeseries,
}

#[derive(Clone, Debug)]
pub struct NsSpec {
    pub ns: Namespace,
    pub kind: NsKind,
    pub info: RawDocumentBuf,
    pub indexes: Vec<RawDocumentBuf>,
}

pub struct RelaxationStore {
    state_db: Database,
    plan: String,
    direction: String,
}

impl RelaxationStore {
    pub fn new(state_db: Database, plan: &str, direction: &str) -> Self {
        Self {
            state_db,
            plan: plan.into(),
            direction: direction.into(),
        }
    }
}

pub enum DdlOutcome {
    Applied,
    Ignored,
    NeedsCopy(Namespace),
}

pub struct RestoreReport {
    pub restored: usize,
}

fn e(x: mongodb::error::Error) -> CatalogError {
    CatalogError::Other(crate::cluster::short_message(&x))
}

pub async fn list_selected(
    client: &Client,
    selector: &NamespaceSelector,
) -> Result<Vec<NsSpec>, CatalogError> {
    let mut out = Vec::new();
    for db in client.list_database_names().await.map_err(e)? {
        if !selector.may_select_database(&db) {
            continue;
        }
        let mut cur = client
            .database(&db)
            .run_cursor_command(doc! {"listCollections": 1})
            .await
            .map_err(e)?;
        while let Some(d) = cur.try_next().await.map_err(e)? {
            let name = d.get_str("name").unwrap_or_default().to_string();
            if !selector.selects(&db, &name) {
                continue;
            }
            let kind = match d.get_str("type").unwrap_or("collection") {
                "view" => NsKind::View,
                "timeseries" => NsKind::Timeseries,
                _ => NsKind::Collection,
            };
            let ns = Namespace::new(&db, &name);
            let mut indexes = Vec::new();
            if kind == NsKind::Collection {
                let mut ic = client
                    .database(&db)
                    .run_cursor_command(doc! {"listIndexes": &name})
                    .await
                    .map_err(e)?;
                while let Some(i) = ic.try_next().await.map_err(e)? {
                    indexes.push(
                        RawDocumentBuf::from_document(&i)
                            .map_err(|x| CatalogError::Other(x.to_string()))?,
                    );
                }
            }
            out.push(NsSpec {
                ns,
                kind,
                info: RawDocumentBuf::from_document(&d)
                    .map_err(|x| CatalogError::Other(x.to_string()))?,
                indexes,
            });
        }
    }
    Ok(out)
}

pub fn copy_target(spec: &NsSpec) -> Namespace {
    match spec.kind {
        NsKind::Timeseries => {
            Namespace::new(&spec.ns.db, format!("system.buckets.{}", spec.ns.coll))
        }
        _ => spec.ns.clone(),
    }
}

pub async fn create_on_destination(
    dest: &Client,
    spec: &NsSpec,
    _relax: &RelaxationStore,
) -> Result<(), CatalogError> {
    let info: Document = spec
        .info
        .to_document()
        .map_err(|x| CatalogError::Other(x.to_string()))?;
    let mut cmd = doc! {"create": &spec.ns.coll};
    if let Ok(o) = info.get_document("options") {
        for (k, v) in o {
            cmd.insert(k, v.clone());
        }
    }
    match dest.database(&spec.ns.db).run_command(cmd).await {
        Ok(_) => Ok(()),
        Err(x) if matches!(x.kind.as_ref(), mongodb::error::ErrorKind::Command(c) if c.code == 48) => {
            Ok(())
        }
        Err(x) => Err(e(x)),
    }
}

pub async fn build_indexes(
    dest: &Client,
    spec: &NsSpec,
    _relax: &RelaxationStore,
) -> Result<(), CatalogError> {
    let mut specs = Vec::new();
    for i in &spec.indexes {
        let mut d: Document = i
            .to_document()
            .map_err(|x| CatalogError::Other(x.to_string()))?;
        if d.get_str("name") == Ok("_id_") {
            continue;
        }
        d.remove("ns");
        d.remove("v");
        specs.push(d);
    }
    if specs.is_empty() {
        return Ok(());
    }
    dest.database(&spec.ns.db)
        .run_command(doc! {"createIndexes": &spec.ns.coll, "indexes": specs})
        .await
        .map_err(e)?;
    Ok(())
}

pub async fn restore_relaxations(
    _dest: &Client,
    _relax: &RelaxationStore,
) -> Result<RestoreReport, CatalogError> {
    Ok(RestoreReport { restored: 0 })
}

pub async fn apply_ddl(
    _source: &Client,
    _dest: &Client,
    event: &RawDocument,
    _selector: &NamespaceSelector,
    _relax: &RelaxationStore,
) -> Result<DdlOutcome, CatalogError> {
    Err(CatalogError::Other(format!(
        "DDL event `{}` cannot be applied yet",
        event.get_str("operationType").unwrap_or("?")
    )))
}

pub async fn spec_of(client: &Client, ns: &Namespace) -> Result<Option<NsSpec>, CatalogError> {
    let sel = NamespaceSelector::new(
        &[crate::plan::model::NamespaceFilter {
            database: Some(ns.db.clone()),
            collections: Some(vec![ns.coll.clone()]),
            ..Default::default()
        }],
        &[],
        "__none__",
    )
    .map_err(|x| CatalogError::Other(x.to_string()))?;
    Ok(list_selected(client, &sel).await?.into_iter().next())
}
