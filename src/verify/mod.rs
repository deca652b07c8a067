//! `verify`: a streaming, resumable proof that the destination equals the source.
//!
//! For every selected namespace: the catalog (collection options, index specs, view
//! definitions, compared as raw BSON bytes, see [`catalog`]), then the documents. Each
//! collection is cut into `_id` ranges ([`ranges`]: index-key bounds, so every BSON type of
//! `_id` is covered). Ranges run in parallel (bounded by [`VerifyOptions::concurrency`]); each
//! streams both sides in `_id` order and hashes the raw bytes of every document (field order
//! counts). A range whose hashes differ is re-read after [`ReplicationWait::wait_replicated`]
//! up to [`VerifyOptions::rechecks`] times, then drilled down: both sides are merged in `_id`
//! order to name each `_id` that is missing, extra or different ([`scan`]; when the `_id`
//! index is collated, so its order is not simple BSON order, a hash join of the range instead). Each finished range
//! is stored with majority write concern in the plan's state database ([`resume`]), so a
//! killed verify continues where it stopped. Memory: at most one driver batch per side per
//! range in flight (the server caps a batch at 16 MiB), whatever the collection size.
//!
//! What it guarantees: after a commit (no writes on either side) the comparison is exact.
//! While replication runs, a range is reported only if it differed on `rechecks + 1`
//! consecutive reads, each re-read started after `wait_replicated(T)` returned for the source
//! time `T` at which the previous read ended. With an engine hook that returns once the
//! destination has applied every source write up to `T`, a reported difference is one that
//! persisted after replication caught up with the earlier read (a range under constant churn
//! can still be reported; re-run verify after the commit for an exact answer). The default
//! hook only sleeps ([`SleepWait`]), which makes false reports unlikely but not impossible.

pub mod catalog;
pub mod error;
pub mod ranges;
pub mod report;
pub mod resume;
pub mod scan;
pub(crate) mod settle;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use mongodb::bson::{doc, Bson, Timestamp};
use mongodb::Client;

pub use error::VerifyError;
pub use report::{Mismatch, NamespaceReport, Totals, VerifyReport};

use crate::base::namespace::Namespace;
use crate::base::role::Role;
use crate::cluster::retry::{Failure, Retry, Retryable};
use crate::plan::Plan;
use catalog::CollectionInfo;
use ranges::{Range, Sizing};
use resume::{RangeRecord, StateStore};

/// Tells verify when the destination has caught up with the source. The sync engine
/// implements it precisely ("replication has applied every source write up to `read_at`").
pub trait ReplicationWait: Send + Sync {
    /// Returns once the destination reflects every source write at or before `read_at`
    /// (a source cluster time), or when waiting longer is pointless.
    fn wait_replicated(&self, read_at: Timestamp) -> BoxFuture<'_, ()>;
}

/// The default [`ReplicationWait`]: sleeps a fixed delay (no knowledge of replication).
#[derive(Clone, Copy, Debug)]
pub struct SleepWait(pub Duration);

impl ReplicationWait for SleepWait {
    fn wait_replicated(&self, _read_at: Timestamp) -> BoxFuture<'_, ()> {
        Box::pin(tokio::time::sleep(self.0))
    }
}

/// How verify runs.
#[derive(Clone)]
pub struct VerifyOptions {
    /// Document differences listed per namespace (totals are always counted).
    pub max_differences: usize,
    /// `_id` ranges compared at the same time.
    pub concurrency: usize,
    /// Target documents per range.
    pub range_docs: u64,
    /// Target bytes (uncompressed BSON) per range.
    pub range_bytes: u64,
    /// Re-reads of a differing range before it is drilled down and reported. Use 0 after a
    /// commit (nothing is replicating, so a difference is final and re-reads only cost time).
    pub rechecks: u32,
    /// Start a new run instead of continuing an interrupted one.
    pub restart: bool,
    pub replication: Arc<dyn ReplicationWait>,
    /// What a running sync relaxed on the destination on purpose (namespace, index name;
    /// `None` for collection-level options such as capped limits): differences there are
    /// expected until the commit restores them, and are not reported.
    pub relaxed: Vec<(Namespace, Option<String>)>,
    /// Differing `_id`s to collect per range and per namespace for `--repair`
    /// ([`NamespaceReport::ids`]); 0: only the listed `max_differences`.
    pub collect_ids: usize,
    /// Inside `cutover run`: the runner's fence; verify's records are then written only
    /// while it holds the plan.
    pub fence: Option<crate::state::lease::Fence>,
    /// How long a range's transient read failures are retried: `cutover run`'s
    /// `--retry-timeout`; `cutover verify` has no such option and uses the same default.
    pub retry_timeout: Duration,
}

impl VerifyOptions {
    /// Differences named per range: what the report lists, or what repair needs.
    fn sample_limit(&self) -> usize {
        self.max_differences.max(self.collect_ids)
    }
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            max_differences: 20,
            concurrency: 4,
            range_docs: 100_000,
            range_bytes: 64 << 20,
            rechecks: 2,
            restart: false,
            replication: Arc::new(SleepWait(Duration::from_secs(1))),
            relaxed: Vec::new(),
            collect_ids: 0,
            fence: None,
            retry_timeout: crate::cluster::retry::DEFAULT_RETRY_TIMEOUT,
        }
    }
}

struct Work {
    ns: Namespace,
    ranges: Vec<Range>,
    source_exists: bool,
    dest_exists: bool,
}

fn holds_documents(info: &Option<CollectionInfo>) -> bool {
    info.as_ref().is_some_and(|i| i.kind == "collection")
}

/// Verifies every namespace `plan` selects: `source` against `dest`. Mismatches are in the
/// report (`ok == false`); `Err` means the verify could not finish (re-run to continue).
/// Namespaces planned or reported at once (their partition reads and writes, counts).
const NAMESPACES_IN_FLIGHT: usize = 16;
/// Single-range collections compared at once per slot of `--concurrency`.
const SMALL_PER_SLOT: usize = 4;

pub async fn run(
    source: &Client,
    dest: &Client,
    plan: &Plan,
    opts: &VerifyOptions,
) -> Result<VerifyReport, VerifyError> {
    let started = std::time::Instant::now();
    let catalog = catalog::list_selected(source, dest, &plan.selector).await?;
    let (store, resumed) = StateStore::open(
        dest,
        &plan.state_database,
        &plan.name,
        opts.restart,
        opts.fence.clone(),
    )
    .await?;
    tracing::info!(plan = %plan.name, run = store.run, resumed, namespaces = catalog.len(), "verify started");
    let finished = store.finished().await?;
    let sizing = Sizing {
        range_docs: opts.range_docs,
        range_bytes: opts.range_bytes,
        max_ranges: 4096,
    };

    // Per namespace: its stored partition, or a new one (sampled and saved), several
    // namespaces at once: at thousands of collections the round trips are the cost.
    let planning: Vec<_> = catalog
        .iter()
        .filter(|(_, (s, d))| holds_documents(s) || holds_documents(d))
        .map(|(ns, (s, d))| {
            let (source_exists, dest_exists) = (holds_documents(s), holds_documents(d));
            let store = &store;
            async move {
                let partition = match store.partition(ns).await? {
                    Some(b) => b,
                    None => {
                        let (side, client) = if source_exists {
                            (Role::Source, source)
                        } else {
                            (Role::Destination, dest)
                        };
                        let b = ranges::split_points(side, client, ns, sizing).await?;
                        store.save_partition(ns, &b).await?;
                        b
                    }
                };
                Ok::<_, VerifyError>(Work {
                    ns: ns.clone(),
                    ranges: ranges::ranges_from_bounds(&partition.bounds, partition.batch_docs),
                    source_exists,
                    dest_exists,
                })
            }
        })
        .collect();
    let works: Vec<Work> = futures::stream::iter(planning)
        .buffered(NAMESPACES_IN_FLIGHT)
        .try_collect()
        .await?;

    let pending = works.iter().flat_map(|w| {
        w.ranges
            .iter()
            .filter(|r| !finished.contains(&(w.ns.to_string(), r.index as i64)))
            .map(move |r| (w, r))
    });
    let total: usize = works.iter().map(|w| w.ranges.len()).sum();
    let done = std::sync::atomic::AtomicUsize::new(finished.len().min(total));
    let mut last_log = std::time::Instant::now();
    // A collection in one range is mostly round trips: several of them per slot.
    let (single, split): (Vec<_>, Vec<_>) = pending.partition(|(w, _)| w.ranges.len() == 1);
    let check = |(w, r)| verify_range(source, dest, &store, w, r, opts);
    let big: Vec<_> = split.into_iter().map(check).collect();
    let small: Vec<_> = single.into_iter().map(check).collect();
    futures::stream::iter(big)
        .buffer_unordered(opts.concurrency.max(1))
        .chain(futures::stream::iter(small).buffer_unordered(opts.concurrency.max(1) * SMALL_PER_SLOT))
        .try_for_each(|()| {
            let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if last_log.elapsed() >= Duration::from_secs(10) || n == total {
                last_log = std::time::Instant::now();
                tracing::info!(plan = %plan.name, ranges_done = n, ranges = total, "verify progress");
            }
            futures::future::ready(Ok(()))
        })
        .await?;

    let by_ns: std::collections::HashMap<&Namespace, &Work> =
        works.iter().map(|w| (&w.ns, w)).collect();
    let reports: Vec<_> = catalog
        .iter()
        .map(|(ns, (s, d))| {
            let work = by_ns.get(ns).copied();
            namespace_report(source, dest, &store, ns, s, d, work, &finished, opts)
        })
        .collect();
    let namespaces: Vec<NamespaceReport> = futures::stream::iter(reports)
        .buffered(NAMESPACES_IN_FLIGHT)
        .try_collect()
        .await?;
    store.finish().await?;
    let ok = namespaces.iter().all(NamespaceReport::is_ok);
    let documents_compared = namespaces.iter().map(|n| n.source_count).sum();
    tracing::info!(plan = %plan.name, run = store.run, ok, "verify finished");
    Ok(VerifyReport {
        ok,
        plan: plan.name.clone(),
        run: store.run,
        resumed,
        documents_compared,
        elapsed_seconds: started.elapsed().as_secs_f64(),
        namespaces,
    })
}

/// Verifies one range, starting it over after a transient failure (failover, killed cursor,
/// network) until the failures have lasted `opts.retry_timeout`; then the last error.
async fn verify_range(
    source: &Client,
    dest: &Client,
    store: &StateStore,
    w: &Work,
    r: &Range,
    opts: &VerifyOptions,
) -> Result<(), VerifyError> {
    Retry::new(opts.retry_timeout)
        .with_delays(Duration::from_secs(1), Duration::from_secs(5))
        .run(
            &format!("verifying range {} of `{}`", r.index, w.ns),
            |_| verify_range_once(source, dest, store, w, r, opts),
        )
        .await
        .map_err(Failure::into_inner)
}

impl Retryable for VerifyError {
    fn is_transient(&self) -> bool {
        VerifyError::is_transient(self)
    }
    /// The message without its hint.
    fn describe(&self) -> String {
        let s = self.to_string();
        s.lines().next().unwrap_or_default().to_string()
    }
    fn role(&self) -> Option<Role> {
        match self {
            VerifyError::Unreachable { side, .. } | VerifyError::Server { side, .. } => Some(*side),
            _ => None,
        }
    }
}

async fn verify_range_once(
    source: &Client,
    dest: &Client,
    store: &StateStore,
    w: &Work,
    r: &Range,
    opts: &VerifyOptions,
) -> Result<(), VerifyError> {
    let (s, d) = tokio::join!(
        scan::digest(Role::Source, source, &w.ns, r, w.source_exists),
        scan::digest(Role::Destination, dest, &w.ns, r, w.dest_exists)
    );
    let (s, d) = (s?, d?);
    let mut rec = RangeRecord {
        range: r.index as i64,
        source_count: s.count,
        destination_count: d.count,
        rechecks: 0,
        ..Default::default()
    };
    if s == d {
        return store.save_range(&w.ns, &rec).await;
    }
    // A collection missing on one side is not lag of a range: no recheck.
    if opts.rechecks == 0 || !w.source_exists || !w.dest_exists {
        tracing::debug!(ns = %w.ns, range = r.index, "range differs; naming the differences");
        rec.diff = scan::diff_range(
            source,
            dest,
            &w.ns,
            r,
            w.source_exists,
            w.dest_exists,
            opts.sample_limit(),
        )
        .await?;
        return store.save_range(&w.ns, &rec).await;
    }
    // Replication is running: confirm each differing document after replication has
    // caught up with its read (see `settle`), rather than re-reading whole ranges, which
    // would race the writes again.
    let mut diff = scan::diff_range(
        source,
        dest,
        &w.ns,
        r,
        w.source_exists,
        w.dest_exists,
        settle::MAX_SETTLE_IDS,
    )
    .await?;
    if diff.total() as usize <= settle::MAX_SETTLE_IDS {
        diff = settle::settle(source, dest, &w.ns, diff, opts).await?;
        // The first reads raced the writes: the counts that hold are the source's and
        // what the confirmed differences make of it on the destination.
        rec.destination_count = (rec.source_count + diff.extra).saturating_sub(diff.missing);
    } else {
        diff.samples.truncate(opts.sample_limit());
    }
    rec.rechecks = 1;
    rec.diff = diff;
    return store.save_range(&w.ns, &rec).await;
}

/// The source's current operation time: every read that ended before this call is at or
/// before it.
async fn operation_time(client: &Client) -> Timestamp {
    let now = || Timestamp {
        time: u32::try_from(mongodb::bson::DateTime::now().timestamp_millis() / 1000).unwrap_or(0),
        increment: 0,
    };
    match client.database("admin").run_command(doc! {"ping": 1}).await {
        Ok(reply) => reply
            .get_timestamp("operationTime")
            .unwrap_or_else(|_| now()),
        Err(_) => now(),
    }
}

#[allow(clippy::too_many_arguments)]
async fn namespace_report(
    source: &Client,
    dest: &Client,
    store: &StateStore,
    ns: &Namespace,
    s: &Option<CollectionInfo>,
    d: &Option<CollectionInfo>,
    work: Option<&Work>,
    finished_before: &HashSet<(String, i64)>,
    opts: &VerifyOptions,
) -> Result<NamespaceReport, VerifyError> {
    let kind = s
        .as_ref()
        .or(d.as_ref())
        .map(|i| i.kind.clone())
        .unwrap_or_default();
    let mut r = NamespaceReport {
        ns: ns.to_string(),
        kind: kind.clone(),
        status: "ok",
        source_count: 0,
        destination_count: 0,
        mismatches: Vec::new(),
        mismatch_totals: Totals::default(),
        mismatches_truncated: false,
        index_differences: Vec::new(),
        option_differences: Vec::new(),
        view_differences: Vec::new(),
        ranges: 0,
        ranges_resumed: 0,
        rechecks: 0,
        note: None,
        ids: Vec::new(),
    };
    if let (Some(si), Some(di)) = (s, d) {
        let (options, views) = catalog::diff_options(si, di);
        r.option_differences = options;
        r.view_differences = views;
    }
    let has_indexes = |i: &Option<CollectionInfo>| i.as_ref().is_some_and(|i| i.kind != "view");
    if has_indexes(s) || has_indexes(d) {
        let si = if has_indexes(s) {
            catalog::list_indexes(Role::Source, source, ns).await?
        } else {
            Vec::new()
        };
        let di = if has_indexes(d) {
            catalog::list_indexes(Role::Destination, dest, ns).await?
        } else {
            Vec::new()
        };
        r.index_differences = catalog::diff_indexes(&si, &di);
        r.index_differences.retain(|x| {
            !(x.kind == "different"
                && opts
                    .relaxed
                    .iter()
                    .any(|(n, i)| n == ns && i.as_deref() == Some(x.name.as_str())))
        });
    }
    if opts.relaxed.iter().any(|(n, i)| n == ns && i.is_none()) {
        r.option_differences.retain(|x| x.name == "type");
    }
    if kind == "timeseries" {
        r.note = Some("time-series documents are not compared; options and indexes are".into());
    }
    if let Some(w) = work {
        r.ranges = w.ranges.len() as u64;
        r.ranges_resumed = w
            .ranges
            .iter()
            .filter(|x| finished_before.contains(&(ns.to_string(), x.index as i64)))
            .count() as u64;
        for rec in store.ranges(ns).await? {
            r.source_count += rec.source_count;
            r.destination_count += rec.destination_count;
            r.rechecks += u64::from(rec.rechecks);
            r.mismatch_totals.missing += rec.diff.missing;
            r.mismatch_totals.extra += rec.diff.extra;
            r.mismatch_totals.different += rec.diff.different;
            for (id, k) in rec.diff.samples {
                if r.ids.len() < opts.collect_ids {
                    r.ids.push((id.clone(), k));
                }
                if r.mismatches.len() < opts.max_differences {
                    r.mismatches.push(Mismatch {
                        id: Bson::into_relaxed_extjson(id),
                        kind: k.as_str(),
                    });
                }
            }
        }
        r.mismatches_truncated = (r.mismatches.len() as u64) < r.mismatch_totals.sum();
    }
    r.status = match (s, d) {
        (Some(_), None) => "missing",
        (None, Some(_)) => "extra",
        _ if r.mismatch_totals.sum() > 0
            || r.source_count != r.destination_count
            || !r.index_differences.is_empty()
            || !r.option_differences.is_empty()
            || !r.view_differences.is_empty() =>
        {
            "mismatch"
        }
        _ => "ok",
    };
    Ok(r)
}
