//! Reading a cluster's catalog: selected namespaces with their options and indexes.

use futures::stream::{self, StreamExt, TryStreamExt};
use mongodb::bson::{doc, Binary, RawDocumentBuf};
use mongodb::Client;

use super::error::{code_of, CatalogError, NAMESPACE_NOT_FOUND};
use super::spec::{NsKind, NsSpec};
use super::CATALOG_CONCURRENCY;
use crate::base::namespace::Namespace;
use crate::plan::NamespaceSelector;

/// The databases of a cluster the selector may select from.
async fn candidate_databases(
    client: &Client,
    selector: &NamespaceSelector,
) -> Result<Vec<String>, CatalogError> {
    let dbs = client
        .list_database_names()
        .await
        .map_err(|e| CatalogError::command("listDatabases", "the cluster", e))?;
    Ok(dbs
        .into_iter()
        .filter(|d| selector.may_select_database(d))
        .collect())
}

/// Every candidate database's `listCollections` entries (`cmd`'s other fields added),
/// several databases at once, each entry with its database, selected ones only.
async fn list_per_database(
    client: &Client,
    selector: &NamespaceSelector,
    cmd: mongodb::bson::Document,
) -> Result<Vec<(String, RawDocumentBuf)>, CatalogError> {
    let dbs = candidate_databases(client, selector).await?;
    let listed: Vec<(String, Vec<RawDocumentBuf>)> = stream::iter(dbs)
        .map(|db| {
            let cmd = cmd.clone();
            async move {
                let mut full = doc! {"listCollections": 1};
                full.extend(cmd);
                let cursor = client
                    .database(&db)
                    .run_cursor_command(full)
                    .await
                    .map_err(|e| CatalogError::command("listCollections", &db, e))?;
                let entries: Vec<RawDocumentBuf> = cursor
                    .with_type::<RawDocumentBuf>()
                    .try_collect()
                    .await
                    .map_err(|e| CatalogError::command("listCollections", &db, e))?;
                Ok::<_, CatalogError>((db, entries))
            }
        })
        .buffered(CATALOG_CONCURRENCY)
        .try_collect()
        .await?;
    Ok(listed
        .into_iter()
        .flat_map(|(db, entries)| entries.into_iter().map(move |e| (db.clone(), e)))
        .filter(|(db, e)| e.get_str("name").is_ok_and(|n| selector.selects(db, n)))
        .collect())
}

/// The selected views (names only: one `listCollections` per database, several databases at
/// once, no index reads).
pub async fn list_selected_views(
    client: &Client,
    selector: &NamespaceSelector,
) -> Result<Vec<Namespace>, CatalogError> {
    let entries = list_per_database(client, selector, doc! {"filter": {"type": "view"}}).await?;
    Ok(entries
        .into_iter()
        .filter_map(|(db, e)| name_and_kind(&e).map(|(name, _)| Namespace::new(db, name)))
        .collect())
}

/// The selected collections (not views, not time-series), names only: one `listCollections`
/// (`nameOnly`) per database, several databases at once.
pub async fn list_selected_collections(
    client: &Client,
    selector: &NamespaceSelector,
) -> Result<Vec<Namespace>, CatalogError> {
    let cmd = doc! {"nameOnly": true, "authorizedCollections": true};
    let mut out: Vec<Namespace> = list_per_database(client, selector, cmd)
        .await?
        .into_iter()
        .filter_map(|(db, e)| match name_and_kind(&e) {
            Some((name, NsKind::Collection)) => Some(Namespace::new(db, name)),
            _ => None,
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Every selected namespace on a cluster (never `system.*`, `admin`/`local`/`config` or the
/// state database), sorted by namespace with views after the collections and views they read.
/// One `listCollections` per database and one `listIndexes` per collection, up to
/// [`CATALOG_CONCURRENCY`] of them in flight: at thousands of collections the round trips,
/// not the server, are the cost.
pub async fn list_selected(
    client: &Client,
    selector: &NamespaceSelector,
) -> Result<Vec<NsSpec>, CatalogError> {
    let wanted: Vec<(Namespace, NsKind, RawDocumentBuf)> =
        list_per_database(client, selector, doc! {})
            .await?
            .into_iter()
            .filter_map(|(db, e)| {
                let (name, kind) = name_and_kind(&e)?;
                Some((Namespace::new(db, name), kind, e))
            })
            .collect();
    let specs: Vec<Option<NsSpec>> = stream::iter(wanted)
        .map(|(ns, kind, entry)| with_indexes(client, ns, kind, entry))
        .buffered(CATALOG_CONCURRENCY)
        .try_collect()
        .await?;
    // `None`: dropped between the two reads; its drop event will follow.
    Ok(order_views_last(specs.into_iter().flatten().collect()))
}

/// One namespace's spec, or `None` when it does not exist.
pub async fn spec_of(client: &Client, ns: &Namespace) -> Result<Option<NsSpec>, CatalogError> {
    let entries = list_collections(client, &ns.db, doc! {"name": &ns.coll}).await?;
    let Some(entry) = entries.into_iter().next() else {
        return Ok(None);
    };
    let Some((_, kind)) = name_and_kind(&entry) else {
        return Ok(None);
    };
    with_indexes(client, ns.clone(), kind, entry).await
}

/// The collection UUID (`info.uuid`) of `ns`, or `None` when it does not exist or is a view.
pub async fn uuid_of(client: &Client, ns: &Namespace) -> Result<Option<Binary>, CatalogError> {
    let entries = list_collections(client, &ns.db, doc! {"name": &ns.coll}).await?;
    Ok(entries.first().and_then(entry_uuid))
}

/// The current name, in `db`, of the collection whose UUID is `uuid`: a rename within a
/// database keeps the UUID. `None` when no collection of `db` has it (dropped, or renamed to
/// another database, which creates a new collection).
pub async fn name_of_uuid(
    client: &Client,
    db: &str,
    uuid: &Binary,
) -> Result<Option<String>, CatalogError> {
    let entries = list_collections(client, db, doc! {"info.uuid": uuid.clone()}).await?;
    Ok(entries
        .first()
        .and_then(|e| e.get_str("name").ok().map(str::to_string)))
}

/// `info.uuid` of a `listCollections` entry (views and time-series views have none).
pub fn entry_uuid(entry: &RawDocumentBuf) -> Option<Binary> {
    let info = entry.get_document("info").ok()?;
    match info.get("uuid").ok().flatten()? {
        mongodb::bson::RawBsonRef::Binary(b) => Some(b.to_binary()),
        _ => None,
    }
}

async fn list_collections(
    client: &Client,
    db: &str,
    filter: mongodb::bson::Document,
) -> Result<Vec<RawDocumentBuf>, CatalogError> {
    let cursor = client
        .database(db)
        .run_cursor_command(doc! {"listCollections": 1, "filter": filter})
        .await
        .map_err(|e| CatalogError::command("listCollections", db, e))?;
    cursor
        .with_type::<RawDocumentBuf>()
        .try_collect()
        .await
        .map_err(|e| CatalogError::command("listCollections", db, e))
}

fn name_and_kind(entry: &RawDocumentBuf) -> Option<(String, NsKind)> {
    let name = entry.get_str("name").ok()?.to_string();
    let kind = NsKind::from_type(entry.get_str("type").ok()?)?;
    Some((name, kind))
}

async fn with_indexes(
    client: &Client,
    ns: Namespace,
    kind: NsKind,
    info: RawDocumentBuf,
) -> Result<Option<NsSpec>, CatalogError> {
    let indexes = if kind == NsKind::View {
        Vec::new()
    } else {
        match list_indexes(client, &ns).await? {
            Some(i) => i,
            None => return Ok(None),
        }
    };
    Ok(Some(NsSpec {
        ns,
        kind,
        info,
        indexes,
    }))
}

/// Raw `listIndexes`, or `None` when the namespace is gone.
pub(crate) async fn list_indexes(
    client: &Client,
    ns: &Namespace,
) -> Result<Option<Vec<RawDocumentBuf>>, CatalogError> {
    let res = client
        .database(&ns.db)
        .run_cursor_command(doc! {"listIndexes": &ns.coll})
        .await;
    let cursor = match res {
        Ok(c) => c,
        Err(e) if code_of(&e) == Some(NAMESPACE_NOT_FOUND) => return Ok(None),
        Err(e) => return Err(CatalogError::command("listIndexes", ns, e)),
    };
    match cursor.with_type::<RawDocumentBuf>().try_collect().await {
        Ok(v) => Ok(Some(v)),
        Err(e) if code_of(&e) == Some(NAMESPACE_NOT_FOUND) => Ok(None),
        Err(e) => Err(CatalogError::command("listIndexes", ns, e)),
    }
}

/// Collections first (by namespace), then views, each after whatever it reads.
fn order_views_last(mut specs: Vec<NsSpec>) -> Vec<NsSpec> {
    specs.sort_by(|a, b| a.ns.cmp(&b.ns));
    let (mut out, mut views): (Vec<NsSpec>, Vec<NsSpec>) =
        specs.into_iter().partition(|s| s.kind != NsKind::View);
    while !views.is_empty() {
        let ready = views.iter().position(|v| {
            let on = v.view_on().unwrap_or_default();
            !views.iter().any(|w| w.ns.db == v.ns.db && w.ns.coll == on)
        });
        // A cycle cannot exist on a server; take the first view if one somehow does.
        out.push(views.remove(ready.unwrap_or(0)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::{doc, RawDocumentBuf};

    fn view(coll: &str, on: &str) -> NsSpec {
        let info = doc! {"name": coll, "type": "view", "options": {"viewOn": on, "pipeline": []}};
        NsSpec {
            ns: Namespace::new("d", coll),
            kind: NsKind::View,
            info: RawDocumentBuf::from_document(&info).unwrap(),
            indexes: vec![],
        }
    }

    #[test]
    fn views_follow_what_they_read() {
        let coll = NsSpec {
            kind: NsKind::Collection,
            ..view("z", "")
        };
        let specs = vec![view("a", "b"), view("b", "z"), coll];
        let order: Vec<String> = order_views_last(specs)
            .into_iter()
            .map(|s| s.ns.coll)
            .collect();
        assert_eq!(order, vec!["z", "b", "a"]);
    }
}
