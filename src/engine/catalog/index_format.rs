//! Unique indexes that `reverse` relies on: the legacy (pre-4.2) unique-index format on every
//! source member, and the same unique indexes on the destination.
//!
//! The rule (MongoDB's mongosync docs, "Validate Unique Indexes", and the server's
//! `wiredtiger_index.h`): `$collStats` `storageStats.indexDetails.<name>.metadata.formatVersion`
//! of a non-`_id` unique index is 13 or 14 for the new format (cannot hold legacy keys); 11 or
//! 12 for a unique index upgraded in place from before 4.2 (may hold legacy keys: `validate`
//! with `full: false` on that member decides, warning "Unique index <name> has one or more keys
//! in the old format"); 6 or 8 are the non-unique formats, which on a unique index mean the
//! old layout too. Everything here reads; nothing writes.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::options::{ClientOptions, ServerAddress};
use mongodb::Client;

use crate::base::namespace::Namespace;
use crate::base::role::Role;
use crate::base::uri::ClusterUri;
use crate::cluster::server_error::code::NAMESPACE_NOT_FOUND;
use crate::cluster::{bson_i32, classify, list_namespaces, ClusterError};
use crate::plan::NamespaceSelector;

/// What a unique index's `formatVersion` says about legacy keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormatClass {
    /// 13 or 14 (or the `_id` index, or not unique): cannot hold legacy keys.
    Ok,
    /// 11 or 12 (or an unknown version): may hold legacy keys; run `validate` to decide.
    NeedsValidate,
    /// 6 or 8 on a unique index: the pre-4.2 layout.
    Legacy,
}

/// Classifies one index's `formatVersion`.
pub fn classify_format_version(version: i32, unique: bool, is_id_index: bool) -> FormatClass {
    if !unique || is_id_index {
        return FormatClass::Ok;
    }
    match version {
        13 | 14 => FormatClass::Ok,
        6 | 8 => FormatClass::Legacy,
        _ => FormatClass::NeedsValidate,
    }
}

/// Index name → `formatVersion`, from one `$collStats` (with `storageStats`) result document.
pub fn format_versions(coll_stats: &Document) -> BTreeMap<String, i32> {
    let mut out = BTreeMap::new();
    let details = coll_stats
        .get_document("storageStats")
        .and_then(|s| s.get_document("indexDetails"));
    if let Ok(details) = details {
        for (name, d) in details {
            let v = d
                .as_document()
                .and_then(|d| d.get_document("metadata").ok())
                .and_then(|m| m.get("formatVersion"))
                .and_then(bson_i32);
            if let Some(v) = v {
                out.insert(name.clone(), v);
            }
        }
    }
    out
}

const OLD_FORMAT_PREFIX: &str = "Unique index ";
const OLD_FORMAT_SUFFIX: &str = " has one or more keys in the old format";

/// Names of the indexes a `validate` result reports as holding old-format unique keys.
pub fn legacy_indexes_in_validate(validate: &Document) -> Vec<String> {
    let mut out = Vec::new();
    let mut scan = |list: Option<&Vec<Bson>>| {
        for w in list.into_iter().flatten().filter_map(Bson::as_str) {
            if let Some(name) = w
                .strip_prefix(OLD_FORMAT_PREFIX)
                .and_then(|r| r.strip_suffix(OLD_FORMAT_SUFFIX))
            {
                if !out.iter().any(|n| n == name) {
                    out.push(name.to_string());
                }
            }
        }
    };
    scan(validate.get_array("warnings").ok());
    scan(validate.get_array("errors").ok());
    out
}

/// What was found about one index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FindingKind {
    /// The unique index is in the new format on this member.
    NewFormat { format_version: i32 },
    /// Format 11/12, and `validate` found no old-format keys on this member.
    ValidatedClean { format_version: i32 },
    /// Old-format keys (or an old format) on this member: reverse would fail.
    Legacy { format_version: i32, reason: String },
    /// The destination lacks a unique index with this key pattern.
    MissingOnDestination,
    /// The destination has an index with this key pattern but another collation or partial filter.
    DifferentOnDestination { difference: String },
    /// Same key, collation and partial filter on the destination, but not (yet) unique. During a
    /// sync the engine relaxes unique indexes on the destination and restores them at commit.
    NotUniqueOnDestination,
    /// Same definition, unique on both.
    SameOnDestination,
}

/// One index, on one member (format checks) or on the destination (comparison).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexFinding {
    pub namespace: Namespace,
    pub index: String,
    /// `host:port` of the member, for format checks.
    pub member: Option<String>,
    pub kind: FindingKind,
}

impl IndexFinding {
    /// True when this finding must stop a `reverse`.
    pub fn is_problem(&self) -> bool {
        matches!(
            self.kind,
            FindingKind::Legacy { .. }
                | FindingKind::MissingOnDestination
                | FindingKind::DifferentOnDestination { .. }
        )
    }

    /// The documented fix for a problem.
    pub fn fix(&self) -> &'static str {
        match self.kind {
            FindingKind::Legacy { .. } => {
                "resync every member of the source replica set (secondaries one by one, then step down the primary and resync it); a resynced member rebuilds unique indexes in the new format"
            }
            FindingKind::MissingOnDestination | FindingKind::DifferentOnDestination { .. } => {
                "create the unique index on the destination exactly as on the source (same key, collation and partialFilterExpression), or let `sync` build it"
            }
            FindingKind::NotUniqueOnDestination => "nothing while a sync runs: commit makes it unique again",
            _ => "",
        }
    }
}

impl fmt::Display for IndexFinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = self
            .member
            .as_deref()
            .map(|m| format!(" on member {m}"))
            .unwrap_or_default();
        let (ns, ix) = (&self.namespace, &self.index);
        match &self.kind {
            FindingKind::NewFormat { format_version } => {
                write!(f, "unique index `{ix}` of `{ns}`{at}: formatVersion {format_version} (new format)")
            }
            FindingKind::ValidatedClean { format_version } => write!(
                f,
                "unique index `{ix}` of `{ns}`{at}: formatVersion {format_version}, and `validate` found no old-format keys"
            ),
            FindingKind::Legacy { format_version, reason } => write!(
                f,
                "unique index `{ix}` of `{ns}`{at} uses the legacy unique-index format (formatVersion {format_version}): {reason}"
            ),
            FindingKind::MissingOnDestination => {
                write!(f, "unique index `{ix}` of `{ns}` has no index with the same key on the destination")
            }
            FindingKind::DifferentOnDestination { difference } => {
                write!(f, "unique index `{ix}` of `{ns}` differs on the destination: {difference}")
            }
            FindingKind::NotUniqueOnDestination => write!(
                f,
                "unique index `{ix}` of `{ns}` exists on the destination but is not unique there (expected while a sync runs)"
            ),
            FindingKind::SameOnDestination => write!(f, "unique index `{ix}` of `{ns}` is the same on the destination"),
        }
    }
}

/// An index definition as `listIndexes` returns it.
#[derive(Clone, Debug)]
struct IndexDef {
    name: String,
    key: Document,
    unique: bool,
    collation: Option<Document>,
    partial: Option<Document>,
}

impl IndexDef {
    fn from_spec(d: &Document) -> Option<Self> {
        Some(Self {
            name: d.get_str("name").ok()?.to_string(),
            key: d.get_document("key").ok()?.clone(),
            unique: d.get_bool("unique").unwrap_or(false),
            collation: d.get_document("collation").ok().cloned(),
            partial: d.get_document("partialFilterExpression").ok().cloned(),
        })
    }

    fn is_id(&self) -> bool {
        self.name == "_id_"
    }
}

async fn list_indexes(
    client: &Client,
    ns: &Namespace,
) -> Result<Vec<IndexDef>, mongodb::error::Error> {
    let specs: Vec<Document> = client
        .database(&ns.db)
        .run_cursor_command(doc! {"listIndexes": &ns.coll})
        .await?
        .try_collect()
        .await?;
    Ok(specs.iter().filter_map(IndexDef::from_spec).collect())
}

/// Index definitions of a namespace as plain documents `{name, key, unique, collation?,
/// partialFilterExpression?}`, for other checks.
pub async fn index_specs(
    client: &Client,
    ns: &Namespace,
) -> Result<Vec<Document>, mongodb::error::Error> {
    client
        .database(&ns.db)
        .run_cursor_command(doc! {"listIndexes": &ns.coll})
        .await?
        .try_collect()
        .await
}

/// Connects to every member of the source replica set directly (same credentials and options
/// as the plan's URI, `directConnection=true`) and classifies every non-`_id` unique index of
/// the selected namespaces. Returns one finding per (member, index).
pub async fn check_unique_index_formats(
    source: &ClusterUri,
    selector: &NamespaceSelector,
) -> Result<Vec<IndexFinding>, ClusterError> {
    let hosts_display = source.hosts_display();
    let base = parse_options(source, &hosts_display).await?;
    let client = Client::with_options(base.clone())
        .map_err(|e| classify(Role::Source, &hosts_display, &e))?;
    let hello = client
        .database("admin")
        .run_command(doc! {"hello": 1})
        .await
        .map_err(|e| classify(Role::Source, &hosts_display, &e))?;
    let members = member_hosts(&client, &hello).await;
    let members = if members.is_empty() {
        // A standalone (or mongos): the seed list is all we can reach.
        source.hosts().into_iter().collect()
    } else {
        members
    };
    let mut findings = Vec::new();
    for member in members {
        let address =
            ServerAddress::parse(&member).map_err(|e| classify(Role::Source, &member, &e))?;
        let mut opts = base.clone();
        opts.hosts = vec![address];
        opts.direct_connection = Some(true);
        opts.repl_set_name = None;
        let direct = Client::with_options(opts).map_err(|e| classify(Role::Source, &member, &e))?;
        let listing = list_namespaces(&direct, selector)
            .await
            .map_err(|e| classify(Role::Source, &member, &e))?;
        crate::base::crashpoint::pause("index-formats.listed").await;
        for ns in &listing.selected {
            match member_findings(&direct, &member, ns).await {
                Ok(f) => findings.extend(f),
                // Dropped or renamed away since the listing: no index left to classify.
                Err(e) if is_namespace_not_found(&e) => {}
                Err(e) => return Err(classify(Role::Source, &member, &e)),
            }
        }
    }
    Ok(findings)
}

/// Every data-bearing member: `replSetGetConfig` lists hidden and delayed members too (arbiters
/// hold no data and are skipped); without the privilege for it, `hello`'s `hosts` and `passives`.
async fn member_hosts(client: &Client, hello: &Document) -> Vec<String> {
    if let Ok(cfg) = client
        .database("admin")
        .run_command(doc! {"replSetGetConfig": 1})
        .await
    {
        if let Ok(members) = cfg
            .get_document("config")
            .and_then(|c| c.get_array("members"))
        {
            let hosts: Vec<String> = members
                .iter()
                .filter_map(Bson::as_document)
                .filter(|m| !m.get_bool("arbiterOnly").unwrap_or(false))
                .filter_map(|m| m.get_str("host").ok().map(str::to_string))
                .collect();
            if !hosts.is_empty() {
                return hosts;
            }
        }
    }
    let mut hosts = Vec::new();
    for key in ["hosts", "passives"] {
        if let Ok(list) = hello.get_array(key) {
            hosts.extend(list.iter().filter_map(|h| h.as_str().map(str::to_string)));
        }
    }
    hosts
}

async fn parse_options(uri: &ClusterUri, hosts: &str) -> Result<ClientOptions, ClusterError> {
    let mut opts = ClientOptions::parse(uri.expose())
        .await
        .map_err(|e| classify(Role::Source, hosts, &e))?;
    opts.app_name = Some("cutover".into());
    if opts.server_selection_timeout.is_none() {
        opts.server_selection_timeout = Some(Duration::from_secs(10));
    }
    Ok(opts)
}

async fn member_findings(
    client: &Client,
    member: &str,
    ns: &Namespace,
) -> Result<Vec<IndexFinding>, mongodb::error::Error> {
    let unique: Vec<IndexDef> = list_indexes(client, ns)
        .await?
        .into_iter()
        .filter(|i| i.unique && !i.is_id())
        .collect();
    if unique.is_empty() {
        return Ok(Vec::new());
    }
    let stats: Vec<Document> = client
        .database(&ns.db)
        .collection::<Document>(&ns.coll)
        .aggregate([doc! {"$collStats": {"storageStats": {}}}])
        .await?
        .try_collect()
        .await?;
    let versions = stats.first().map(format_versions).unwrap_or_default();
    let mut out = Vec::new();
    let mut validated: Option<Vec<String>> = None;
    for ix in unique {
        let version = versions.get(&ix.name).copied().unwrap_or(0);
        let kind = match classify_format_version(version, true, false) {
            FormatClass::Ok => FindingKind::NewFormat {
                format_version: version,
            },
            FormatClass::Legacy => FindingKind::Legacy {
                format_version: version,
                reason: "a unique index stored in a non-unique (pre-4.2) layout".into(),
            },
            FormatClass::NeedsValidate => {
                if validated.is_none() {
                    let v = client
                        .database(&ns.db)
                        .run_command(doc! {"validate": &ns.coll, "full": false})
                        .await?;
                    validated = Some(legacy_indexes_in_validate(&v));
                }
                if validated.as_ref().is_some_and(|l| l.contains(&ix.name)) {
                    FindingKind::Legacy {
                        format_version: version,
                        reason: "`validate` reports keys in the old format".into(),
                    }
                } else {
                    FindingKind::ValidatedClean {
                        format_version: version,
                    }
                }
            }
        };
        out.push(IndexFinding {
            namespace: ns.clone(),
            index: ix.name.clone(),
            member: Some(member.to_string()),
            kind,
        });
    }
    Ok(out)
}

/// The non-`_id` unique indexes of the selected source namespaces, as listed at one moment:
/// the first half of [`compare_unique_indexes`], so a caller can let replication catch up
/// with the listing before it reads the destination.
#[derive(Clone, Debug, Default)]
pub struct SourceUniqueIndexes(Vec<(Namespace, Vec<IndexDef>)>);

impl SourceUniqueIndexes {
    /// Lists them on the source.
    pub async fn list(source: &Client, selector: &NamespaceSelector) -> Result<Self, ClusterError> {
        let listing = list_namespaces(source, selector)
            .await
            .map_err(|e| classify(Role::Source, "", &e))?;
        let mut out = Vec::new();
        for ns in &listing.selected {
            let src = match list_indexes(source, ns).await {
                Ok(s) => s,
                // 26 NamespaceNotFound: dropped (or renamed away) on the source since the
                // listing, e.g. a `$out` or rename's temporary collection; replication drops it
                // on the destination too, so there is nothing to compare.
                Err(e) if is_namespace_not_found(&e) => continue,
                Err(e) => return Err(classify(Role::Source, "", &e)),
            };
            let unique: Vec<IndexDef> =
                src.into_iter().filter(|i| i.unique && !i.is_id()).collect();
            if !unique.is_empty() {
                out.push((ns.clone(), unique));
            }
        }
        Ok(Self(out))
    }

    /// Checks that each of them exists on the destination with the same key, collation and
    /// partial filter. Uniqueness on the destination is reported on its own
    /// (`NotUniqueOnDestination`), since a sync relaxes it until commit.
    pub async fn compare_with(&self, dest: &Client) -> Result<Vec<IndexFinding>, ClusterError> {
        let mut out = Vec::new();
        for (ns, unique) in &self.0 {
            let dst = match list_indexes(dest, ns).await {
                Ok(d) => d,
                // 26 NamespaceNotFound: the collection does not exist on the destination.
                Err(e) if is_namespace_not_found(&e) => Vec::new(),
                Err(e) => return Err(classify(Role::Destination, "", &e)),
            };
            for ix in unique {
                out.push(IndexFinding {
                    namespace: ns.clone(),
                    index: ix.name.clone(),
                    member: None,
                    kind: compare_one(ix, &dst),
                });
            }
        }
        Ok(out)
    }
}

/// Checks that every non-`_id` unique index of the selected source namespaces exists on the
/// destination with the same key, collation and partial filter (both listings read now).
pub async fn compare_unique_indexes(
    source: &Client,
    dest: &Client,
    selector: &NamespaceSelector,
) -> Result<Vec<IndexFinding>, ClusterError> {
    SourceUniqueIndexes::list(source, selector)
        .await?
        .compare_with(dest)
        .await
}

/// NamespaceNotFound: a collection dropped or renamed away since it was listed.
fn is_namespace_not_found(e: &mongodb::error::Error) -> bool {
    matches!(e.kind.as_ref(), mongodb::error::ErrorKind::Command(c) if c.code == NAMESPACE_NOT_FOUND)
}

fn compare_one(ix: &IndexDef, dst: &[IndexDef]) -> FindingKind {
    let same_key: Vec<&IndexDef> = dst.iter().filter(|d| d.key == ix.key).collect();
    if same_key.is_empty() {
        return FindingKind::MissingOnDestination;
    }
    let exact = same_key
        .iter()
        .find(|d| d.collation == ix.collation && d.partial == ix.partial);
    match exact {
        Some(d) if d.unique => FindingKind::SameOnDestination,
        Some(_) => FindingKind::NotUniqueOnDestination,
        None => {
            let d = same_key[0];
            let mut diffs = Vec::new();
            if d.collation != ix.collation {
                diffs.push(format!(
                    "collation {} on the source, {} on the destination",
                    show(&ix.collation),
                    show(&d.collation)
                ));
            }
            if d.partial != ix.partial {
                diffs.push(format!(
                    "partialFilterExpression {} on the source, {} on the destination",
                    show(&ix.partial),
                    show(&d.partial)
                ));
            }
            FindingKind::DifferentOnDestination {
                difference: diffs.join("; "),
            }
        }
    }
}

fn show(d: &Option<Document>) -> String {
    d.as_ref()
        .map_or_else(|| "none".to_string(), |d| d.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `$collStats` from 6.0.5 (trimmed): a fresh unique index (14), a non-unique one (8), and
    /// captured-shape documents for pre-4.2 unique indexes upgraded in place (12, 11).
    fn coll_stats(versions: &[(&str, i32)]) -> Document {
        let mut details = Document::new();
        for (name, v) in versions {
            details.insert(
                *name,
                doc! {"metadata": {"formatVersion": *v, "infoObj": "{ \"v\" : 2 }"},
                "creationString": "access_pattern_hint=none,allocation_size=4KB",
                "type": "file", "uri": "statistics:table:index-7--123"},
            );
        }
        doc! {"ns": "shop.users", "host": "127.0.0.1:27017", "localTime": mongodb::bson::DateTime::now(),
        "storageStats": {"size": 1234, "count": 10, "avgObjSize": 123, "storageSize": 4096,
                         "nindexes": versions.len() as i32, "indexDetails": details,
                         "indexSizes": {"_id_": 4096}, "totalIndexSize": 4096}}
    }

    #[test]
    fn reads_format_versions_by_index_name() {
        let v = format_versions(&coll_stats(&[
            ("_id_", 8),
            ("email_1", 14),
            ("city_1", 8),
            ("old_1", 12),
        ]));
        assert_eq!(v.get("email_1"), Some(&14));
        assert_eq!(v.get("city_1"), Some(&8));
        assert_eq!(v.get("old_1"), Some(&12));
        assert_eq!(format_versions(&doc! {"storageStats": {}}).len(), 0);
    }

    #[test]
    fn classification_follows_the_documented_rule() {
        assert_eq!(classify_format_version(14, true, false), FormatClass::Ok);
        assert_eq!(classify_format_version(13, true, false), FormatClass::Ok);
        assert_eq!(
            classify_format_version(12, true, false),
            FormatClass::NeedsValidate
        );
        assert_eq!(
            classify_format_version(11, true, false),
            FormatClass::NeedsValidate
        );
        assert_eq!(classify_format_version(8, true, false), FormatClass::Legacy);
        assert_eq!(classify_format_version(6, true, false), FormatClass::Legacy);
        assert_eq!(
            classify_format_version(0, true, false),
            FormatClass::NeedsValidate
        );
        // `_id` and non-unique indexes never count.
        assert_eq!(classify_format_version(8, true, true), FormatClass::Ok);
        assert_eq!(classify_format_version(8, false, false), FormatClass::Ok);
    }

    #[test]
    fn validate_warnings_name_legacy_indexes() {
        // Shape of a 6.0 `validate` reply with the server's warning text.
        let v = doc! {"ns": "shop.users", "nInvalidDocuments": 0, "nrecords": 3, "nIndexes": 2,
        "keysPerIndex": {"_id_": 3, "a_1": 3}, "valid": true, "repaired": false,
        "warnings": ["Unique index a_1 has one or more keys in the old format",
                     "Could not complete validation of table:index-1; this is expected"],
        "errors": [], "extraIndexEntries": [], "missingIndexEntries": [], "ok": 1.0};
        assert_eq!(legacy_indexes_in_validate(&v), vec!["a_1".to_string()]);
        let clean =
            doc! {"ns": "shop.users", "valid": true, "warnings": [], "errors": [], "ok": 1.0};
        assert!(legacy_indexes_in_validate(&clean).is_empty());
    }

    fn def(
        name: &str,
        key: Document,
        unique: bool,
        collation: Option<Document>,
        partial: Option<Document>,
    ) -> IndexDef {
        IndexDef {
            name: name.into(),
            key,
            unique,
            collation,
            partial,
        }
    }

    #[test]
    fn compares_key_collation_and_partial_filter() {
        let src = def(
            "email_1",
            doc! {"email": 1},
            true,
            None,
            Some(doc! {"active": true}),
        );
        assert_eq!(compare_one(&src, &[]), FindingKind::MissingOnDestination);
        let same = def(
            "e",
            doc! {"email": 1},
            true,
            None,
            Some(doc! {"active": true}),
        );
        assert_eq!(compare_one(&src, &[same]), FindingKind::SameOnDestination);
        let relaxed = def(
            "email_1",
            doc! {"email": 1},
            false,
            None,
            Some(doc! {"active": true}),
        );
        assert_eq!(
            compare_one(&src, &[relaxed]),
            FindingKind::NotUniqueOnDestination
        );
        let other = def(
            "email_1",
            doc! {"email": 1},
            true,
            Some(doc! {"locale": "fr"}),
            None,
        );
        match compare_one(&src, &[other]) {
            FindingKind::DifferentOnDestination { difference } => {
                assert!(difference.contains("collation"), "{difference}");
                assert!(
                    difference.contains("partialFilterExpression"),
                    "{difference}"
                );
            }
            k => panic!("unexpected {k:?}"),
        }
        let reversed = def(
            "email_-1",
            doc! {"email": -1},
            true,
            None,
            Some(doc! {"active": true}),
        );
        assert_eq!(
            compare_one(&src, &[reversed]),
            FindingKind::MissingOnDestination
        );
    }
}
