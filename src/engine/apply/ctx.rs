//! What a round needs (the destination, the source, the lane's options) and small helpers
//! every part of change application shares: how a namespace is keyed, event labels.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use mongodb::bson::{RawDocument, Timestamp};
use mongodb::Client;
use tokio::sync::watch;

use crate::base::namespace::Namespace;
use crate::engine::catalog::{self, RelaxationStore};
use crate::engine::copy::CopyCtx;
use crate::engine::error::{on, EngineError};
use crate::engine::progress::Progress;
use crate::engine::retry::RetryPolicy;
use crate::plan::NamespaceSelector;
use crate::state::record::Direction;
use crate::state::StateStore;

pub(super) const COMMAND_BYTES: usize = 8 * 1024 * 1024;
pub(super) const COMMAND_STMTS: usize = 1_000;

#[derive(Clone)]
pub struct ApplyCtx {
    /// The lane's direction: errors name each cluster by its plan role.
    pub direction: Direction,
    pub source: Client,
    pub dest: Client,
    pub store: StateStore,
    /// The `lanes` record id (`plan/direction`).
    pub lane: String,
    pub selector: NamespaceSelector,
    pub relax: Arc<RelaxationStore>,
    pub progress: Arc<Progress>,
    pub retry: RetryPolicy,
    pub workers: usize,
    pub copy: CopyCtx,
    /// While the initial copy runs: which events to apply, hold or drop.
    pub gate: Option<Arc<crate::engine::gate::Gate>>,
    pub max_lag: Duration,
    /// The source time up to which every event is applied and durable.
    pub position: watch::Sender<Option<Timestamp>>,
    /// Whether a destination namespace exists (`None`: it does not) and how its events are
    /// keyed to workers; forgotten at every DDL event.
    pub keying: Arc<std::sync::Mutex<HashMap<Namespace, Option<Keying>>>>,
}

/// What a collection's options mean for spreading its events over workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keying {
    /// Capped: its natural order is insertion order, so all its events keep source order.
    pub capped: bool,
    /// A non-simple default collation: strings in `_id`s compare by it (see
    /// [`identity_key`]).
    pub collated: bool,
}

pub(super) fn event_ns(ev: &RawDocument) -> Option<Namespace> {
    ev.get_document("ns")
        .ok()
        .and_then(Namespace::from_event_ns)
}

/// Buckets of time-series collections arrive as `system.buckets.<name>` events.
pub(super) fn selected(sel: &NamespaceSelector, ns: &Namespace) -> bool {
    match ns.coll.strip_prefix("system.buckets.") {
        Some(view) => sel.selects(&ns.db, view),
        None => sel.selects(&ns.db, &ns.coll),
    }
}

/// How `ns`'s events are keyed on the destination (capped, collated), `None` when the
/// destination has no such namespace (cached until the next DDL event).
pub(super) async fn dest_keying(
    ctx: &ApplyCtx,
    ns: &Namespace,
) -> Result<Option<Keying>, EngineError> {
    if let Some(c) = ctx.keying.lock().ok().and_then(|m| m.get(ns).copied()) {
        return Ok(c);
    }
    let spec = catalog::spec_of(&ctx.dest, ns)
        .await
        .map_err(on(ctx.direction.writes()))?;
    let keying = spec.map(|s| {
        let options = s.options();
        Keying {
            capped: options.get_bool("capped").unwrap_or(false),
            collated: options
                .get_document("collation")
                .is_ok_and(|c| c.get_str("locale").unwrap_or("simple") != "simple"),
        }
    });
    if let Ok(mut m) = ctx.keying.lock() {
        m.insert(ns.clone(), keying);
    }
    Ok(keying)
}

pub(super) fn describe(ev: &RawDocument, why: &str) -> String {
    format!("change event {} cannot be applied: {why}", event_label(ev))
}

/// `` `insert` on `shop.orders` at source time 1795646164.4 ``
pub(super) fn event_label(ev: &RawDocument) -> String {
    let op = ev.get_str("operationType").unwrap_or("?");
    let ns = event_ns(ev)
        .map(|n| n.to_string())
        .unwrap_or_else(|| "?".into());
    let ts = ev
        .get_timestamp("clusterTime")
        .map(|t| format!("{}.{}", t.time, t.increment))
        .unwrap_or_else(|_| "?".into());
    format!("`{op}` on `{ns}` at source time {ts}")
}
