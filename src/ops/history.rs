//! The run's recent history, kept in memory by the runner for the progress page's charts
//! (`GET /api/v1/history`): one point a second (the service task samples the current lane's
//! counters), the last [`KEPT`] of them in a ring buffer; and the copy's progress per
//! namespace (`GET /api/v1/copy`), refreshed every second while the copy runs.
//!
//! Nothing here is stored: a new runner starts with an empty history.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::Client;
use serde::Serialize;

use crate::engine::progress::Progress;
use crate::engine::stats::STAGES;
use crate::state::StateStore;

/// How much history the runner keeps: two hours of one-second points.
pub const KEPT: Duration = Duration::from_secs(2 * 3600);

/// At most this many points are kept (one a second for [`KEPT`]).
const CAPACITY: usize = KEPT.as_secs() as usize;

/// One second of the run. Rates are per second over the interval since the previous point;
/// `None` where there was nothing to measure (no lane, or the lane changed).
#[derive(Clone, Debug, Default)]
pub struct Point {
    /// Seconds since the Unix epoch (this host's clock).
    pub t: f64,
    pub lag_seconds: Option<f64>,
    pub events_read_per_second: Option<f64>,
    pub events_applied_per_second: Option<f64>,
    pub copy_bytes_per_second: Option<f64>,
    pub copy_documents_per_second: Option<f64>,
    /// Busy fraction (0–1) of each stage of [`STAGES`] over the interval.
    pub busy: [Option<f64>; 4],
    pub copied_bytes: Option<f64>,
    pub estimated_total_bytes: Option<f64>,
}

/// The counters of the previous sample, to turn the next into rates.
struct Prev {
    lane: usize,
    at: Instant,
    read: u64,
    applied: u64,
    copied_bytes: u64,
    copied_docs: u64,
    busy: [Duration; 4],
}

/// The ring buffer of [`Point`]s.
#[derive(Default)]
pub struct History {
    points: VecDeque<Point>,
    prev: Option<Prev>,
}

impl History {
    /// Adds the point for now: from the current lane's counters, or an empty point (a gap in
    /// the charts) while no lane runs.
    pub fn sample(&mut self, progress: Option<&Progress>) {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let mut point = Point {
            t,
            ..Point::default()
        };
        match progress {
            None => self.prev = None,
            Some(p) => {
                let (lane, s) = p.sample();
                let now = Prev {
                    lane,
                    at: s.at,
                    read: s.read,
                    applied: s.applied,
                    copied_bytes: p.copied_bytes.load(Ordering::Relaxed),
                    copied_docs: p.copied_docs.load(Ordering::Relaxed),
                    busy: s.busy,
                };
                point.lag_seconds = s.lag;
                point.copied_bytes = Some(now.copied_bytes as f64);
                let total = p.estimated_total_bytes.load(Ordering::Relaxed);
                point.estimated_total_bytes = (total > 0).then_some(total as f64);
                if let Some(prev) = self.prev.as_ref().filter(|prev| prev.lane == lane) {
                    let secs = now.at.duration_since(prev.at).as_secs_f64();
                    if secs > 0.0 {
                        let rate = |a: u64, b: u64| Some(a.saturating_sub(b) as f64 / secs);
                        point.events_read_per_second = rate(now.read, prev.read);
                        point.events_applied_per_second = rate(now.applied, prev.applied);
                        point.copy_bytes_per_second = rate(now.copied_bytes, prev.copied_bytes);
                        point.copy_documents_per_second = rate(now.copied_docs, prev.copied_docs);
                        for (i, b) in point.busy.iter_mut().enumerate() {
                            let d = now.busy[i].saturating_sub(prev.busy[i]).as_secs_f64();
                            *b = Some((d / secs).clamp(0.0, 1.0));
                        }
                    }
                }
                self.prev = Some(now);
            }
        }
        if self.points.len() >= CAPACITY {
            self.points.pop_front();
        }
        self.points.push_back(point);
    }

    /// The points after `since` (seconds since the epoch; all when `None`), column by column
    /// (the layout chart libraries take). A point within [`SINCE_TOLERANCE`] of `since` counts
    /// as the one the client already has: a client that echoes the last `t` it got, parsed or
    /// printed with a little less precision (a JSON parser a bit off, three decimals), must not
    /// get it again. Points are a second apart.
    pub fn view(&self, since: Option<f64>) -> HistoryView {
        let pts: Vec<&Point> = self
            .points
            .iter()
            .filter(|p| since.is_none_or(|s| p.t > s + SINCE_TOLERANCE))
            .collect();
        let col = |f: &dyn Fn(&Point) -> Option<f64>| pts.iter().map(|p| f(p)).collect();
        let busy = STAGES
            .iter()
            .enumerate()
            .map(|(i, s)| StageSeries {
                stage: s.name().to_string(),
                busy: col(&|p: &Point| p.busy[i]),
            })
            .collect();
        let busiest_stage = pts
            .iter()
            .map(|p| {
                let (i, b) = p
                    .busy
                    .iter()
                    .enumerate()
                    .filter_map(|(i, b)| b.map(|b| (i, b)))
                    .max_by(|a, b| a.1.total_cmp(&b.1))?;
                (b > 0.0).then(|| STAGES[i].name().to_string())
            })
            .collect();
        HistoryView {
            interval_seconds: 1.0,
            kept_seconds: KEPT.as_secs(),
            t: pts.iter().map(|p| p.t).collect(),
            lag_seconds: col(&|p| p.lag_seconds),
            events_read_per_second: col(&|p| p.events_read_per_second),
            events_applied_per_second: col(&|p| p.events_applied_per_second),
            copy_bytes_per_second: col(&|p| p.copy_bytes_per_second),
            copy_documents_per_second: col(&|p| p.copy_documents_per_second),
            copied_bytes: col(&|p| p.copied_bytes),
            estimated_total_bytes: col(&|p| p.estimated_total_bytes),
            busy,
            busiest_stage,
        }
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }
}

/// See [`History::view`].
const SINCE_TOLERANCE: f64 = 0.001;

/// What `GET /api/v1/history` serves: one array per series, aligned with `t`.
#[derive(Debug, Serialize)]
pub struct HistoryView {
    pub interval_seconds: f64,
    /// How much history the runner keeps (older points are dropped).
    pub kept_seconds: u64,
    /// Seconds since the Unix epoch (the runner's clock).
    pub t: Vec<f64>,
    pub lag_seconds: Vec<Option<f64>>,
    pub events_read_per_second: Vec<Option<f64>>,
    pub events_applied_per_second: Vec<Option<f64>>,
    pub copy_bytes_per_second: Vec<Option<f64>>,
    pub copy_documents_per_second: Vec<Option<f64>>,
    pub copied_bytes: Vec<Option<f64>>,
    pub estimated_total_bytes: Vec<Option<f64>>,
    /// Busy fraction (0–1) of each change-application stage.
    pub busy: Vec<StageSeries>,
    /// The busiest stage of each second (`None` when none was busy).
    pub busiest_stage: Vec<Option<String>>,
}

/// One stage's busy fraction (0–1) per point.
#[derive(Debug, Serialize)]
pub struct StageSeries {
    pub stage: String,
    pub busy: Vec<Option<f64>>,
}

/// The copy of one namespace (`GET /api/v1/copy`).
#[derive(Clone, Debug, Serialize)]
pub struct NamespaceCopy {
    /// The destination namespace.
    pub namespace: String,
    pub ranges: i64,
    pub ranges_done: i64,
    /// Documents and bytes on the destination now (its collection statistics).
    pub documents: Option<i64>,
    pub bytes: Option<i64>,
    /// The source collection's documents and bytes when first read (once, during the copy:
    /// writes since then make them an estimate).
    pub estimated_documents: Option<i64>,
    pub estimated_bytes: Option<i64>,
    pub done: bool,
}

/// At most this many namespaces are shown (those still copying first).
const MAX_NAMESPACES: usize = 100;

/// The per-namespace copy table, refreshed by [`refresh_copy`].
#[derive(Default)]
pub struct CopyTable {
    pub namespaces: Vec<NamespaceCopy>,
    pub updated: Option<SystemTime>,
    /// The source's figures per destination namespace, read once.
    estimates: HashMap<String, (Option<i64>, Option<i64>)>,
    /// Whether the table was refreshed after the copy finished (then it stays as it is).
    pub final_: bool,
}

/// `collStats`' document count and size of `db.coll`, if it can be read.
async fn coll_stats(client: &Client, db: &str, coll: &str) -> (Option<i64>, Option<i64>) {
    let num = |d: &Document, k: &str| match d.get(k) {
        Some(Bson::Int32(v)) => Some(i64::from(*v)),
        Some(Bson::Int64(v)) => Some(*v),
        Some(Bson::Double(v)) => Some(*v as i64),
        _ => None,
    };
    match client
        .database(db)
        .run_command(doc! {"collStats": coll})
        .await
    {
        Ok(d) => (num(&d, "count"), num(&d, "size")),
        Err(_) => (None, None),
    }
}

/// The source collection a destination namespace copies: the one with the range records'
/// UUID (a rename keeps it), else the same name.
async fn source_name(source: &Client, db: &str, coll: &str, uuid: Option<&Bson>) -> String {
    if let Some(u) = uuid {
        if let Ok(mut c) = source
            .database(db)
            .list_collections()
            .filter(doc! {"info.uuid": u.clone()})
            .await
        {
            if let Ok(Some(spec)) = c.try_next().await {
                return spec.name;
            }
        }
    }
    coll.to_string()
}

/// Refreshes the per-namespace copy table from the copy's range records (in the state
/// store), the destination's collection statistics and (once per namespace) the source's.
pub async fn refresh_copy(
    table: &std::sync::Mutex<CopyTable>,
    store: &StateStore,
    source: &Client,
    destination: &Client,
    copy_done: bool,
) {
    if table.lock().map(|t| t.final_).unwrap_or(true) {
        return;
    }
    let pipeline = vec![
        doc! {"$match": {"plan": store.plan(), "ns": {"$exists": true}}},
        doc! {"$group": {
            "_id": "$ns",
            "ranges": {"$sum": 1},
            "done": {"$sum": {"$cond": [{"$eq": ["$done", true]}, 1, 0]}},
            "uuid": {"$first": "$uuid"},
        }},
        doc! {"$sort": {"_id": 1}},
    ];
    let rows: Vec<Document> = match store
        .database()
        .collection::<Document>(crate::state::PARTITIONS)
        .aggregate(pipeline)
        .await
    {
        Ok(c) => match c.try_collect().await {
            Ok(r) => r,
            Err(_) => return,
        },
        Err(_) => return,
    };
    let n = |d: &Document, k: &str| match d.get(k) {
        Some(Bson::Int32(v)) => i64::from(*v),
        Some(Bson::Int64(v)) => *v,
        _ => 0,
    };
    let mut rows: Vec<(String, i64, i64, Option<Bson>)> = rows
        .iter()
        .filter_map(|d| {
            Some((
                d.get_str("_id").ok()?.to_string(),
                n(d, "ranges"),
                n(d, "done"),
                d.get("uuid").cloned(),
            ))
        })
        .collect();
    // Those still copying first, then by name.
    rows.sort_by(|a, b| (a.2 >= a.1, &a.0).cmp(&(b.2 >= b.1, &b.0)));
    rows.truncate(MAX_NAMESPACES);
    let known = table
        .lock()
        .map(|t| t.estimates.clone())
        .unwrap_or_default();
    let previous: HashMap<String, NamespaceCopy> = table
        .lock()
        .map(|t| {
            t.namespaces
                .iter()
                .map(|n| (n.namespace.clone(), n.clone()))
                .collect()
        })
        .unwrap_or_default();
    let mut estimates = HashMap::new();
    let mut out = Vec::new();
    for (ns, ranges, ranges_done, uuid) in rows {
        let Some((db, coll)) = ns.split_once('.') else {
            continue;
        };
        let done = ranges_done >= ranges;
        let estimate = match known.get(&ns) {
            Some(e) => *e,
            None => {
                let name = source_name(source, db, coll, uuid.as_ref()).await;
                coll_stats(source, db, &name).await
            }
        };
        estimates.insert(ns.clone(), estimate);
        // A namespace whose copy was done when last read keeps its figures.
        let (documents, bytes) = match previous.get(&ns).filter(|p| p.done && done) {
            Some(p) => (p.documents, p.bytes),
            None => coll_stats(destination, db, coll).await,
        };
        out.push(NamespaceCopy {
            namespace: ns,
            ranges,
            ranges_done,
            documents,
            bytes,
            estimated_documents: estimate.0,
            estimated_bytes: estimate.1,
            done,
        });
    }
    if let Ok(mut t) = table.lock() {
        t.namespaces = out;
        t.estimates = estimates;
        t.updated = Some(SystemTime::now());
        t.final_ = copy_done;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_buffer_keeps_the_last_points_and_serves_them_after_a_time() {
        let mut h = History::default();
        for _ in 0..CAPACITY + 5 {
            h.sample(None);
        }
        assert_eq!(h.len(), CAPACITY);
        let v = h.view(None);
        assert_eq!(v.t.len(), CAPACITY);
        assert_eq!(v.lag_seconds.len(), CAPACITY);
        assert!(v.busy.iter().all(|s| s.busy.len() == CAPACITY));
        let last = *v.t.last().expect("a point");
        assert!(h.view(Some(last)).t.is_empty());
    }

    #[test]
    fn a_since_echoed_back_a_little_low_does_not_repeat_the_point() {
        let mut h = History::default();
        h.sample(None);
        std::thread::sleep(Duration::from_millis(20));
        h.sample(None);
        let v = h.view(None);
        let (first, second) = (v.t[0], v.t[1]);
        // The first point echoed back one unit in the last place low (what a JSON parser
        // without exact rounding can give: the whole-suite page test once got its last point
        // again this way), or rounded down to milliseconds: only the second is new.
        assert_eq!(
            h.view(Some(f64::from_bits(first.to_bits() - 1))).t,
            vec![second]
        );
        assert_eq!(
            h.view(Some((first * 1000.0).floor() / 1000.0)).t,
            vec![second]
        );
        assert_eq!(h.view(Some(first - 1.0)).t.len(), 2);
    }

    #[test]
    fn rates_come_from_consecutive_samples_of_one_lane() {
        let p = Progress::new();
        let mut h = History::default();
        h.sample(Some(&p));
        std::thread::sleep(Duration::from_millis(50));
        p.add_copied(10, 1000);
        p.lag_ms.store(1500, Ordering::Relaxed);
        h.sample(Some(&p));
        let v = h.view(None);
        assert_eq!(
            v.copy_bytes_per_second[0], None,
            "no rate without a previous point"
        );
        let rate = v.copy_bytes_per_second[1].expect("a rate");
        assert!(rate > 1000.0 && rate < 1000.0 / 0.04, "{rate}");
        assert_eq!(v.lag_seconds[1], Some(1.5));
        assert_eq!(v.copied_bytes[1], Some(1000.0));
        // Another lane (a new `Progress`) starts its rates afresh.
        let q = Progress::new();
        q.add_copied(1, 1);
        h.sample(Some(&q));
        assert_eq!(h.view(None).copy_bytes_per_second[2], None);
    }
}
