//! The copy gate: while the initial copy runs, it decides for every change event whether the
//! change application applies it now, holds it until the copy of its `_id` range is durable,
//! or drops it because the range's read is certain to see a later version.
//!
//! ## The rule, and why it is exact
//!
//! Every `_id` range of the copy (a slot here) moves `Pending → Open → Finished → Done`:
//!
//! - **Pending** (not read yet): an event for it is dropped. The range's read starts later,
//!   with `readConcern: {level: majority, afterClusterTime: P}` where `P` is the gate's
//!   position (the time of the last event routed) when the range opened, so the read sees
//!   every dropped event's write (each had a time ≤ `P`).
//! - **Open** (being read and written): its events are held, in stream order. The range's
//!   copy of a document has some version at time ≥ `P`; applying the held events (every event
//!   after `P`) over it is the replay-over-later-state the change application always relied
//!   on (an insert upserts, an update of a missing document does nothing, a delete of a
//!   missing one does nothing), and reaches the source's version.
//! - **Finished** (every write durable, still held): the change application applies the held
//!   events as a round *before it routes any later event or applies any DDL event*, then
//!   marks the range Done. (A DDL event is not routed: a rename that waited for this
//!   collection's copy, applied before the held events, would send the old collection's
//!   writes into the collection that took its name; torture seed 10.)
//! - **Done**: events are applied at once.
//!
//! Routing and opening take one lock, so an event is either routed before a range opens
//! (dropped, and seen by the read) or after (held). A document never changes range (`_id` is
//! immutable). Events of namespaces outside the copy, or of collections not planned yet, are
//! applied (applying is always safe for a range not yet read: the copy's insert of a
//! document the events created is ignored as a duplicate, and the events after `P` are held).
//!
//! ## Crash safety
//!
//! The lane's stored resume token never passes the token at which the oldest open range
//! opened ([`Gate::clamp`]): a restart replays every event that was held and not applied. A
//! range records `started` before its first read; on restart every started, unfinished range
//! is Open again from the restart point (its documents already written were read after its
//! old opening, which is after the stored token).
//!
//! ## DDL
//!
//! A rename or a drop of a collection whose copy is not complete (ranges left, or its indexes
//! not yet built) waits: the DDL event and everything after it are deferred (still read, so
//! the oplog only has to hold the lane's lag) until the collection is ready; its ranges are
//! copied first. Other DDL is applied at once, except a `dropIndexes` or `collMod` of a
//! collection whose after-copy index build has read the source's indexes and not finished
//! ([`Gate::start_indexing`]): applied then, it would find no index and be undone by the
//! build, so it waits (deferred like a rename) until the build is done. One routed before the
//! reading was committed before it, so the reading sees it.

use std::cmp::Ordering as CmpOrdering;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use mongodb::bson::{Bson, Document, RawBson, RawBsonRef, RawDocument, RawDocumentBuf, Timestamp};

use crate::base::bson_order::cmp_values;
use crate::base::namespace::Namespace;
use crate::engine::error::EngineError;
use crate::engine::progress::Progress;

/// What the change application does with one event while the copy runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Apply,
    /// The range is not read yet: its read will see this write.
    Drop,
    /// Taken by the gate; applied when its range is durable.
    Held,
}

#[derive(Debug)]
enum SlotState {
    Pending,
    /// Being copied, its events held (its opening is in `Inner::holding`).
    Open {
        held: Vec<RawDocumentBuf>,
        bytes: u64,
    },
    /// Every write durable; events still held until the change application releases them.
    Finished {
        held: Vec<RawDocumentBuf>,
        bytes: u64,
    },
    Done,
}

/// A point of the change stream: a range's opening (resuming after `token` replays every
/// event it held).
#[derive(Clone, Debug)]
struct Since {
    time: Timestamp,
    /// Raw: routing records it for every event; only a checkpoint decodes it.
    token: Option<RawDocumentBuf>,
}

#[derive(Debug)]
struct Slot {
    id: String,
    /// `[min, max)` as raw BSON (compared for every routed event); `None`: open-ended.
    min: Option<RawBson>,
    max: Option<RawBson>,
    state: SlotState,
}

#[derive(Debug, Default)]
struct Coll {
    planned: bool,
    /// Ranges in `_id` order (as planned: the first without `min`, the last without `max`).
    slots: Vec<Slot>,
    /// Every range copied and its indexes built: DDL on it may be applied.
    ready: bool,
}

/// One planned range, as the copy registers it.
#[derive(Clone, Debug)]
pub struct RangeInfo {
    pub id: String,
    pub min: Option<Bson>,
    pub max: Option<Bson>,
    pub started: bool,
    pub done: bool,
}

/// A range of a collection: (namespace, slot index).
type SlotKey = (Namespace, usize);

#[derive(Debug)]
struct Inner {
    /// The time and token of the last event routed (or the last batch end): the stream's
    /// position, which a reopened stream (after a transient error) moves back.
    at: Since,
    /// The latest time ever routed: what a range's read must see.
    read_after: Timestamp,
    /// The copy's namespaces (destination names as planned).
    colls: HashMap<Namespace, Coll>,
    /// Ranges holding events (Open or Finished) with their openings: `clamp` reads these,
    /// never every range of every collection.
    holding: HashMap<SlotKey, Since>,
    /// Finished ranges not released yet.
    finished: Vec<SlotKey>,
    /// Namespaces a deferred DDL event waits for: copied first.
    wanted: HashSet<Namespace>,
    /// Collections whose after-copy index build has read the source's indexes and is not
    /// done: their index DDL (`dropIndexes`, `collMod`) waits until it is.
    indexing: HashSet<Namespace>,
    /// The copy failed: the change application stops with this.
    failed: Option<EngineError>,
    /// Every range Done and every collection ready: the gate routes everything to Apply.
    complete: bool,
}

pub struct Gate {
    inner: Mutex<Inner>,
    progress: Arc<Progress>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gate")
    }
}

/// The held events of ranges whose copy is durable, for the change application to apply.
pub struct Release {
    pub events: Vec<RawDocumentBuf>,
    pub ranges: usize,
}

impl Gate {
    /// A gate for a copy of `namespaces` whose change application starts at `start` (with
    /// its token when resuming).
    pub fn new(
        namespaces: impl IntoIterator<Item = Namespace>,
        start: Timestamp,
        token: Option<Document>,
        progress: Arc<Progress>,
    ) -> Arc<Self> {
        let colls = namespaces
            .into_iter()
            .map(|ns| (ns, Coll::default()))
            .collect();
        Arc::new(Self {
            inner: Mutex::new(Inner {
                at: Since {
                    time: start,
                    token: token.and_then(|t| RawDocumentBuf::from_document(&t).ok()),
                },
                read_after: start,
                colls,
                holding: HashMap::new(),
                finished: Vec::new(),
                wanted: HashSet::new(),
                indexing: HashSet::new(),
                failed: None,
                complete: false,
            }),
            progress,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a collection's ranges (idempotent). Started, unfinished ranges (a resumed
    /// copy) are Open from the gate's start: their held events begin at the restart point.
    pub fn plan(&self, ns: &Namespace, ranges: &[RangeInfo]) {
        let mut g = self.lock();
        let at = g.at.clone();
        // Only the copy's own namespaces (a copy run inside the change application is not
        // gated).
        let Some(coll) = g.colls.get_mut(ns) else {
            return;
        };
        if coll.planned {
            return;
        }
        coll.planned = true;
        let raw = |b: &Option<Bson>| b.clone().and_then(|b| RawBson::try_from(b).ok());
        coll.slots = ranges
            .iter()
            .map(|r| Slot {
                id: r.id.clone(),
                min: raw(&r.min),
                max: raw(&r.max),
                state: if r.done {
                    SlotState::Done
                } else if r.started {
                    SlotState::Open {
                        held: Vec::new(),
                        bytes: 0,
                    }
                } else {
                    SlotState::Pending
                },
            })
            .collect();
        let open: Vec<usize> = ranges
            .iter()
            .enumerate()
            .filter(|(_, r)| r.started && !r.done)
            .map(|(i, _)| i)
            .collect();
        for i in open {
            g.holding.insert((ns.clone(), i), at.clone());
        }
    }

    /// Routes one CRUD event of `ns` (its `documentKey._id`), and moves the gate's position
    /// to the event.
    pub fn route(&self, ns: Option<&Namespace>, ev: &RawDocument) -> Route {
        let mut g = self.lock();
        if let Ok(ts) = ev.get_timestamp("clusterTime") {
            g.read_after = g.read_after.max(ts);
            g.at = Since {
                time: ts,
                token: ev.get_document("_id").ok().map(|t| t.to_raw_document_buf()),
            };
        }
        if g.complete {
            return Route::Apply;
        }
        let Some(ns) = ns else { return Route::Apply };
        let Some(coll) = g.colls.get_mut(ns) else {
            return Route::Apply;
        };
        if !coll.planned {
            // Not planned yet, so never read: its ranges open later, after this event.
            return Route::Drop;
        }
        let id = ev
            .get_document("documentKey")
            .ok()
            .and_then(|k| k.get("_id").ok().flatten());
        let Some(id) = id else { return Route::Apply };
        let Some(i) = slot_of(&coll.slots, id) else {
            return Route::Apply;
        };
        match &mut coll.slots[i].state {
            SlotState::Pending => Route::Drop,
            SlotState::Done => Route::Apply,
            SlotState::Open { held, bytes } | SlotState::Finished { held, bytes } => {
                let n = ev.as_bytes().len() as u64;
                held.push(ev.to_raw_document_buf());
                *bytes += n;
                self.progress.held_events.fetch_add(1, Ordering::Relaxed);
                let now = self.progress.held_bytes.fetch_add(n, Ordering::Relaxed) + n;
                self.progress
                    .held_peak_bytes
                    .fetch_max(now, Ordering::Relaxed);
                Route::Held
            }
        }
    }

    /// Moves the position to a batch's end (its `postBatchResumeToken` and time).
    pub fn advance(&self, time: Timestamp, token: &Document) {
        let mut g = self.lock();
        g.read_after = g.read_after.max(time);
        g.at = Since {
            time,
            token: RawDocumentBuf::from_document(token).ok(),
        };
    }

    /// Opens a range for reading: returns the time its read must see (`afterClusterTime`).
    /// Idempotent: a range read again (retry, rename) keeps holding from its first opening.
    pub fn open(&self, ns: &Namespace, range: &str) -> Timestamp {
        let mut g = self.lock();
        let at = g.at.clone();
        let read_after = g.read_after;
        let Some(i) = slot_index(&g, ns, range) else {
            return read_after;
        };
        let slot = &mut g.colls.get_mut(ns).expect("found").slots[i];
        if matches!(slot.state, SlotState::Pending) {
            slot.state = SlotState::Open {
                held: Vec::new(),
                bytes: 0,
            };
            g.holding.insert((ns.clone(), i), at);
        }
        read_after
    }

    /// A range's writes are durable: its held events may be released.
    pub fn finish(&self, ns: &Namespace, range: &str) {
        let mut g = self.lock();
        let at = g.at.clone();
        let Some(i) = slot_index(&g, ns, range) else {
            return;
        };
        let slot = &mut g.colls.get_mut(ns).expect("found").slots[i];
        let (next, newly) = match std::mem::replace(&mut slot.state, SlotState::Done) {
            SlotState::Open { held, bytes } => (SlotState::Finished { held, bytes }, true),
            // Finished without opening (its collection was gone): nothing held.
            SlotState::Pending => (
                SlotState::Finished {
                    held: Vec::new(),
                    bytes: 0,
                },
                true,
            ),
            other => (other, false),
        };
        slot.state = next;
        if !newly {
            return;
        }
        g.holding.entry((ns.clone(), i)).or_insert(at);
        g.finished.push((ns.clone(), i));
    }

    /// A collection's copy is complete (every range finished, indexes built).
    pub fn collection_ready(&self, ns: &Namespace) {
        let mut g = self.lock();
        if let Some(c) = g.colls.get_mut(ns) {
            c.ready = true;
            // A collection with no range (dropped before planning) is planned empty.
            c.planned = true;
        }
        g.wanted.remove(ns);
        g.indexing.remove(ns);
    }

    /// A collection's after-copy index build is about to read the source's indexes: from now
    /// until it is ready, its `dropIndexes` and `collMod` events wait (one routed before this
    /// was committed before the reading, which sees it).
    pub fn start_indexing(&self, ns: &Namespace) {
        self.lock().indexing.insert(ns.clone());
    }

    /// Whether index DDL on these namespaces may be applied now (see [`Self::start_indexing`]).
    pub fn index_ddl_ready(&self, namespaces: &[Namespace]) -> bool {
        let g = self.lock();
        g.complete || !namespaces.iter().any(|n| g.indexing.contains(n))
    }

    /// Takes the held events of every Finished range and marks those ranges Done. The caller
    /// applies the events before it routes another one.
    pub fn release(&self) -> Release {
        let mut g = self.lock();
        let mut events = Vec::new();
        let (mut freed, mut count) = (0u64, 0u64);
        let finished = std::mem::take(&mut g.finished);
        let ranges = finished.len();
        for key in finished {
            g.holding.remove(&key);
            let slot = &mut g.colls.get_mut(&key.0).expect("planned").slots[key.1];
            if let SlotState::Finished { held, bytes } =
                std::mem::replace(&mut slot.state, SlotState::Done)
            {
                freed += bytes;
                count += held.len() as u64;
                events.extend(held);
            }
        }
        if count > 0 {
            self.progress.held_bytes.fetch_sub(freed, Ordering::Relaxed);
            self.progress
                .held_events
                .fetch_sub(count, Ordering::Relaxed);
        }
        Release { events, ranges }
    }

    /// The oldest point a restart must replay from: the opening of the oldest range whose
    /// events are held (None: nothing held, the caller's own position stands).
    pub fn clamp(&self) -> Option<(Timestamp, Option<Document>)> {
        let g = self.lock();
        let oldest = g.holding.values().min_by_key(|s| s.time)?;
        Some((
            oldest.time,
            oldest.token.as_ref().and_then(|t| t.to_document().ok()),
        ))
    }

    /// Whether a DDL event on `namespaces` may be applied now (each collection of the copy
    /// among them is ready); if not, they are copied first.
    pub fn ddl_ready(&self, namespaces: &[Namespace]) -> bool {
        let mut g = self.lock();
        if g.complete {
            return true;
        }
        let waiting: Vec<Namespace> = g
            .colls
            .iter()
            .filter(|(ns, c)| {
                !c.ready
                    && namespaces
                        .iter()
                        .any(|n| *n == **ns || (n.coll.is_empty() && n.db == ns.db))
            })
            .map(|(ns, _)| ns.clone())
            .collect();
        let ready = waiting.is_empty();
        g.wanted.extend(waiting);
        ready
    }

    /// Namespaces a waiting DDL event needs: the copy takes their ranges first.
    pub fn wanted(&self, ns: &Namespace) -> bool {
        self.lock().wanted.contains(ns)
    }

    /// Whether a waiting DDL event needs any collection (the copy then looks for its ranges;
    /// otherwise it takes the next one without scanning its queue).
    pub fn wants_any(&self) -> bool {
        !self.lock().wanted.is_empty()
    }

    /// Every range Done and every collection ready: from now on everything is applied.
    pub fn drained(&self) -> bool {
        let mut g = self.lock();
        if g.complete {
            return true;
        }
        let done = g.holding.is_empty()
            && g.colls
                .values()
                .all(|c| c.ready && c.slots.iter().all(|s| matches!(s.state, SlotState::Done)));
        g.complete = done;
        done
    }

    /// The copy failed: the change application stops with `e` at its next batch.
    pub fn fail(&self, e: EngineError) {
        self.lock().failed = Some(e);
    }

    pub fn take_failure(&self) -> Option<EngineError> {
        self.lock().failed.take()
    }
}

fn slot_index(g: &Inner, ns: &Namespace, range: &str) -> Option<usize> {
    g.colls.get(ns)?.slots.iter().position(|s| s.id == range)
}

/// The range holding `id`: ranges are in `_id` order and cover MinKey to MaxKey, so it is
/// the last one whose `min` is ≤ `id` (binary search), checked against its `max`.
fn slot_of(slots: &[Slot], id: RawBsonRef<'_>) -> Option<usize> {
    let after = slots.partition_point(|s| match &s.min {
        None => true,
        Some(min) => cmp_values(min.as_raw_bson_ref(), id) != CmpOrdering::Greater,
    });
    let i = after.checked_sub(1)?;
    let below_max = match &slots[i].max {
        None => true,
        Some(max) => cmp_values(id, max.as_raw_bson_ref()) == CmpOrdering::Less,
    };
    below_max.then_some(i)
}

/// Whether a value holds a double or a decimal at any depth: such values do not make range
/// bounds (the gate compares event `_id`s with bounds exactly only for other types).
pub fn inexact_bound(v: &Bson) -> bool {
    match v {
        Bson::Double(_) | Bson::Decimal128(_) => true,
        Bson::Document(d) => d.values().any(inexact_bound),
        Bson::Array(a) => a.iter().any(inexact_bound),
        Bson::JavaScriptCodeWithScope(c) => c.scope.values().any(inexact_bound),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::doc;

    fn ev(id: Bson, t: u32) -> RawDocumentBuf {
        RawDocumentBuf::from_document(&doc! {
            "_id": {"_data": format!("82{t:08X}00000001")},
            "operationType": "update", "clusterTime": Timestamp { time: t, increment: 1 },
            "documentKey": {"_id": id},
        })
        .unwrap()
    }

    fn ts(t: u32) -> Timestamp {
        Timestamp {
            time: t,
            increment: 1,
        }
    }

    fn gate() -> (Arc<Gate>, Namespace) {
        let ns = Namespace::new("d", "c");
        let g = Gate::new([ns.clone()], ts(1), None, Arc::new(Progress::new()));
        g.plan(
            &ns,
            &[
                RangeInfo {
                    id: "r0".into(),
                    min: None,
                    max: Some(Bson::Int32(100)),
                    started: false,
                    done: false,
                },
                RangeInfo {
                    id: "r1".into(),
                    min: Some(Bson::Int32(100)),
                    max: None,
                    started: false,
                    done: false,
                },
            ],
        );
        (g, ns)
    }

    #[test]
    fn pending_drops_open_holds_done_applies() {
        let (g, ns) = gate();
        assert_eq!(g.route(Some(&ns), &ev(Bson::Int32(5), 2)), Route::Drop);
        // The read opened now must see time 2.
        assert_eq!(g.open(&ns, "r0"), ts(2));
        assert_eq!(g.route(Some(&ns), &ev(Bson::Int32(5), 3)), Route::Held);
        // Decimal and double ids compare exactly against integer bounds.
        assert_eq!(g.route(Some(&ns), &ev(Bson::Double(99.5), 4)), Route::Held);
        assert_eq!(g.route(Some(&ns), &ev(Bson::Int64(100), 4)), Route::Drop);
        assert_eq!(
            g.route(Some(&ns), &ev(Bson::String("s".into()), 4)),
            Route::Drop
        );
        assert_eq!(g.route(Some(&ns), &ev(Bson::MinKey, 4)), Route::Held);
        // The restart point is r0's opening.
        assert_eq!(g.clamp().map(|c| c.0), Some(ts(2)));
        g.finish(&ns, "r0");
        assert_eq!(g.route(Some(&ns), &ev(Bson::Int32(7), 5)), Route::Held);
        let r = g.release();
        assert_eq!((r.ranges, r.events.len()), (1, 4));
        assert_eq!(g.route(Some(&ns), &ev(Bson::Int32(7), 6)), Route::Apply);
        assert_eq!(g.clamp(), None);
        assert!(!g.drained());
        assert!(!g.ddl_ready(&[Namespace::new("d", "")]));
        assert!(g.wanted(&ns));
        g.open(&ns, "r1");
        g.finish(&ns, "r1");
        g.release();
        g.collection_ready(&ns);
        assert!(g.ddl_ready(std::slice::from_ref(&ns)));
        assert!(g.drained());
        // Outside the copy: applied.
        assert_eq!(
            g.route(Some(&Namespace::new("d", "other")), &ev(Bson::Int32(1), 7)),
            Route::Apply
        );
    }

    #[test]
    fn a_resumed_started_range_holds_from_the_restart_point() {
        let ns = Namespace::new("d", "c");
        let g = Gate::new([ns.clone()], ts(10), None, Arc::new(Progress::new()));
        g.plan(
            &ns,
            &[RangeInfo {
                id: "r0".into(),
                min: None,
                max: None,
                started: true,
                done: false,
            }],
        );
        assert_eq!(g.route(Some(&ns), &ev(Bson::Int32(1), 11)), Route::Held);
        assert_eq!(g.clamp().map(|c| c.0), Some(ts(10)));
    }

    #[test]
    fn unplanned_collections_are_not_read_yet() {
        let ns = Namespace::new("d", "c");
        let g = Gate::new([ns.clone()], ts(10), None, Arc::new(Progress::new()));
        assert_eq!(g.route(Some(&ns), &ev(Bson::Int32(1), 11)), Route::Drop);
        // Planned with no range (dropped before planning): a new collection's events apply.
        g.plan(&ns, &[]);
        assert_eq!(g.route(Some(&ns), &ev(Bson::Int32(1), 12)), Route::Apply);
    }

    #[test]
    fn doubles_and_decimals_are_not_bounds() {
        assert!(inexact_bound(&Bson::Double(1.0)));
        assert!(inexact_bound(&Bson::Document(doc! {"a": {"b": 1.5}})));
        assert!(!inexact_bound(&Bson::Document(doc! {"a": 1, "b": "x"})));
    }
}
