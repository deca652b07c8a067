//! Rewriting single documents on the destination from the source (`cutover verify --repair`).
//!
//! The core is [`rewrite`]: read the listed `_id`s on the source and make the destination hold
//! exactly those documents, as replication writes them: a replacement (an upsert whose update
//! is the whole document, so the field order is the source's, never a `$set`) for each found,
//! a delete for each gone.
//!
//! While a runner is live the rewrite must not race the lane. So the lane does it itself:
//! `verify --repair` stores *requests* (`repair_requests`: a namespace and up to
//! [`REQUEST_IDS`] `_id`s) and the lane serves them in [`serve`], between two change-stream
//! batches. At that point every event up to the lane's position `P` is applied and durable
//! and no later event is, so reading the source at exactly `P` (`readConcern: snapshot,
//! atClusterTime: P`) and writing that is what replication itself holds at `P`: an event
//! before `P` is not undone (it is in the snapshot), an event after `P` is applied after the
//! rewrite and wins. When `P` has left the source's snapshot history window (the lane lags
//! by more than `minSnapshotHistoryWindowInSeconds`, 5 minutes by default), the rewrite reads
//! the current majority-committed document instead: later than `P`, so the events between
//! `P` and that read are replayed over it afterwards, exactly as over the initial copy.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mongodb::bson::{doc, Bson, DateTime, Document, Timestamp};

use crate::base::namespace::Namespace;
use crate::engine::apply::ctx::ApplyCtx;
use crate::engine::error::EngineError;
pub use crate::engine::rewrite::{rewrite, rewrite_between, ReadAt, Rewritten};
use crate::state::states::{RepairRequestState, RepairState};
use crate::state::{StateError, StateStore};

/// Requests that the live lane serves.
pub const REQUESTS: &str = "repair_requests";
/// One record per `verify --repair` invocation (who, when, what).
pub const REPAIRS: &str = "repairs";
/// `_id`s per request.
pub const REQUEST_IDS: usize = 500;
/// How often the lane looks for requests.
const SERVE_EVERY: Duration = Duration::from_millis(200);

/// Every state write of repair goes through here. Updates go through the store's fenced
/// `update_one` (inside `cutover run` a runner that lost the plan cannot write); upserts are
/// `verify --repair`'s own records, written outside any runner.
pub(crate) async fn write_state(
    store: &StateStore,
    coll: &str,
    filter: Document,
    update: Document,
    upsert: bool,
) -> Result<(), StateError> {
    if !upsert {
        store.update_one(coll, filter, update).await?;
        return Ok(());
    }
    store.upsert_operator_record(coll, filter, update).await
}

/// The one way a `repairs` record changes state: `from -> to` (see
/// [`RepairState::can_become`]) with `fields`, written only while it is still `from`.
pub(crate) async fn repair_transition(
    store: &StateStore,
    id: &str,
    from: RepairState,
    to: RepairState,
    mut fields: Document,
) -> Result<(), StateError> {
    debug_assert!(from.can_become(to), "repair {from} -> {to}");
    fields.insert("state", to);
    write_state(
        store,
        REPAIRS,
        doc! {"_id": id, "state": from},
        doc! {"$set": fields},
        false,
    )
    .await
}

/// The one way a `repair_requests` record changes state: `from -> to` (see
/// [`RepairRequestState::can_become`]) with `fields`, written only while it is still `from`.
pub(crate) async fn request_transition(
    store: &StateStore,
    id: Bson,
    from: RepairRequestState,
    to: RepairRequestState,
    mut fields: Document,
) -> Result<(), StateError> {
    debug_assert!(from.can_become(to), "repair request {from} -> {to}");
    fields.insert("state", to);
    write_state(
        store,
        REQUESTS,
        doc! {"_id": id, "state": from},
        doc! {"$set": fields},
        false,
    )
    .await
}

static LAST_LOOK: Mutex<Option<HashMap<String, Instant>>> = Mutex::new(None);

fn due(lane: &str) -> bool {
    let Ok(mut g) = LAST_LOOK.lock() else {
        return true;
    };
    let m = g.get_or_insert_with(HashMap::new);
    match m.get(lane) {
        Some(t) if t.elapsed() < SERVE_EVERY => false,
        _ => {
            m.insert(lane.to_string(), Instant::now());
            true
        }
    }
}

/// The lane's hook, called between two batches when every event up to `position` is applied
/// and none after it: serves pending repair requests at exactly that position. A request
/// that fails for good is marked failed (replication goes on); a transient failure leaves it
/// pending for the next batch.
pub async fn serve(ctx: &ApplyCtx, position: Timestamp) -> Result<(), EngineError> {
    if !due(&ctx.lane) {
        return Ok(());
    }
    // One attempt: a poll that fails is repeated at the next batch.
    let pending: Vec<Document> = match ctx
        .store
        .clone()
        .with_retry(std::time::Duration::ZERO)
        .find(
            REQUESTS,
            doc! {"plan": ctx.store.plan(), "lane": &ctx.lane, "state": RepairRequestState::Pending},
            Some(doc! {"_id": 1}),
            Some(20),
        )
        .await
    {
        Ok(docs) => docs,
        Err(e) => {
            tracing::debug!(error = %e, "Could not read repair requests.");
            return Ok(());
        }
    };
    for req in pending {
        let Some(id) = req.get("_id").cloned() else {
            continue;
        };
        let ns = req.get_str("ns").ok().and_then(Namespace::parse);
        let ids = req.get_array("ids").cloned().unwrap_or_default();
        let result = match &ns {
            Some(ns) if ctx.selector.selects(&ns.db, &ns.coll) => {
                rewrite(
                    ctx.direction,
                    &ctx.source,
                    &ctx.dest,
                    ns,
                    &ids,
                    ReadAt::Snapshot(position),
                )
                .await
            }
            _ => Err(EngineError::Refused(
                "the namespace is not replicated by this lane".into(),
            )),
        };
        let (to, fields) = match result {
            Ok(r) => (
                RepairRequestState::Done,
                doc! {
                    "served_by": "lane", "position": position, "snapshot": r.snapshot,
                    "written": r.written as i64, "deleted": r.deleted as i64, "served": DateTime::now(),
                },
            ),
            Err(e) if e.is_transient() => {
                tracing::debug!(error = %e, "Repair request deferred (transient failure).");
                return Ok(());
            }
            Err(e) => (
                RepairRequestState::Failed,
                doc! {"served_by": "lane", "error": e.to_string(), "served": DateTime::now()},
            ),
        };
        let served = request_transition(&ctx.store, id, RepairRequestState::Pending, to, fields);
        if let Err(e) = served.await {
            tracing::debug!(error = %e, "Could not record a served repair request.");
            return Ok(());
        }
        tracing::info!(ns = ?ns.map(|n| n.to_string()), ids = ids.len(), position = %format!("{}.{}", position.time, position.increment), "Repair request served by the lane.");
    }
    Ok(())
}
