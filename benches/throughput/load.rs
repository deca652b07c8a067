//! Writers on the source: the backlogs of (d) and the paced churn of (e) and (f).

use super::*;

#[derive(Default)]
pub struct WriteStats {
    pub events: AtomicU64,
    pub ops: AtomicU64,
    pub errors: AtomicU64,
}

/// (d) a bulk backlog of one kind: `writers` concurrent writers, each on one collection, of
/// `insert_many` of 100 new documents, `update_many` of 100 `_id`s, or `delete_many` of 50
/// `_id`s, until at least `target` change events were produced. Round `round`'s inserts
/// create the `_id`s its deletes remove (each writer its own stretch), so rounds can repeat
/// on one data set. Returns (events, elapsed).
pub async fn write_backlog(
    src: &Client,
    kind: BacklogStyle,
    round: usize,
    per_coll: i64,
    target: u64,
    writers: usize,
) -> (u64, Duration) {
    let stats = Arc::new(WriteStats::default());
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let coll = src
            .database(DB)
            .collection::<RawDocumentBuf>(&coll_name(w % COLLECTIONS));
        let stats = stats.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0xDEAD_BEEF ^ ((w as u64 + 1) * 7919) ^ ((round as u64) << 32));
            // The `_id`s of this round's and writer's inserts; its deletes walk the same.
            let base = 1_000_000_000i64 + round as i64 * 10_000_000 + w as i64 * 1_000_000;
            let mut next = base;
            let half = (per_coll / 2).max(200);
            while stats.events.load(Ordering::Relaxed) < target {
                let n = match kind {
                    BacklogStyle::BulkInsert => {
                        let docs: Vec<RawDocumentBuf> = (0..100)
                            .map(|_| {
                                next += 1;
                                make_doc(next, &mut rng)
                            })
                            .collect();
                        coll.insert_many(&docs).await.expect("backlog insert").inserted_ids.len()
                            as u64
                    }
                    BacklogStyle::BulkUpdate => {
                        let lo = (rng.next() % (half as u64 - 100)) as i64;
                        coll.update_many(
                            doc! {"_id": {"$gte": lo, "$lt": lo + 100}},
                            doc! {"$set": {"u": rng.next() as i64, "cat": "updated"}, "$inc": {"v": 1}},
                        )
                        .await
                        .expect("backlog update")
                        .modified_count
                    }
                    BacklogStyle::BulkDelete => {
                        let lo = next + 1;
                        next += 50;
                        let n = coll
                            .delete_many(doc! {"_id": {"$gte": lo, "$lte": next}})
                            .await
                            .expect("backlog delete")
                            .deleted_count;
                        if n == 0 {
                            break; // this writer's stretch of the round's inserts is gone
                        }
                        n
                    }
                    BacklogStyle::Single => unreachable!("write_backlog_single"),
                };
                stats.ops.fetch_add(1, Ordering::Relaxed);
                stats.events.fetch_add(n, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.expect("backlog writer");
    }
    (stats.events.load(Ordering::Relaxed), t.elapsed())
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BacklogStyle {
    BulkInsert,
    BulkUpdate,
    BulkDelete,
    Single,
}

impl BacklogStyle {
    pub const ALL: [BacklogStyle; 4] = [
        BacklogStyle::BulkInsert,
        BacklogStyle::BulkUpdate,
        BacklogStyle::BulkDelete,
        BacklogStyle::Single,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BacklogStyle::BulkInsert => "bulk insert",
            BacklogStyle::BulkUpdate => "bulk update",
            BacklogStyle::BulkDelete => "bulk delete",
            BacklogStyle::Single => "single-document mixed",
        }
    }
}

/// (d) the backlog as an application writes it: `writers` concurrent writers of single
/// documents (40% `insert_one`, 40% `update_one`, 20% `delete_one`) until at least `target`
/// change events. Deletes take the lowest remaining `_id` of the upper half of the original
/// documents, so rounds can repeat. Returns (events, elapsed).
pub async fn write_backlog_single(
    src: &Client,
    round: usize,
    per_coll: i64,
    target: u64,
    writers: usize,
) -> (u64, Duration) {
    let stats = Arc::new(WriteStats::default());
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let coll = src
            .database(DB)
            .collection::<RawDocumentBuf>(&coll_name(w % COLLECTIONS));
        let stats = stats.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0xFACE ^ ((w as u64 + 3) * 65_537) ^ ((round as u64) << 32));
            let mut next_new =
                5_000_000_000i64 + (w as i64) * 100_000_000 + round as i64 * 10_000_000;
            let half = (per_coll / 2).max(200);
            // Two writers share a collection: their deletes start in different stretches.
            let del_from = half
                + if w >= COLLECTIONS {
                    (per_coll - half) / 2
                } else {
                    0
                };
            let mut step = 0u64;
            while stats.events.load(Ordering::Relaxed) < target {
                let n = match step % 5 {
                    0 | 2 => {
                        next_new += 1;
                        coll.insert_one(make_doc(next_new, &mut rng))
                            .await
                            .expect("backlog insert");
                        1
                    }
                    1 | 3 => {
                        let id = (rng.next() % half as u64) as i64;
                        coll.update_one(
                            doc! {"_id": id},
                            doc! {"$set": {"u": rng.next() as i64}, "$inc": {"v": 1}},
                        )
                        .await
                        .expect("backlog update")
                        .modified_count
                    }
                    _ => {
                        coll.delete_one(doc! {"_id": {"$gte": del_from, "$lt": per_coll}})
                            .await
                            .expect("backlog delete")
                            .deleted_count
                    }
                };
                step += 1;
                stats.events.fetch_add(n, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.expect("backlog writer");
    }
    (stats.events.load(Ordering::Relaxed), t.elapsed())
}

/// A steady writer: `rate` single-document writes per second (40% inserts, 50% updates, 10%
/// deletes) over `tasks` paced tasks, as the `app` user (refused while writes are blocked).
/// Records the acknowledgement time of the latest insert for the end-to-end probe.
pub struct Churn {
    pub stop: Arc<AtomicBool>,
    pub stats: Arc<WriteStats>,
    pub latest: Arc<Mutex<Option<(i64, Instant)>>>,
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
    pub started: Instant,
}

pub fn start_churn(app: Client, per_coll: i64, rate: u64, id_base: i64) -> Churn {
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(WriteStats::default());
    let latest = Arc::new(Mutex::new(None));
    // A paced task waits for each write (a few milliseconds for a majority acknowledgement
    // under load): 50 writes a second per task, and enough tasks for the rate.
    let ntasks = (rate as usize / 50).max(4);
    let per_task = (rate as f64 / ntasks as f64).max(1.0);
    let mut tasks = Vec::new();
    for w in 0..ntasks {
        let coll = app
            .database(DB)
            .collection::<RawDocumentBuf>(&coll_name(w % COLLECTIONS));
        let (stop, stats, latest) = (stop.clone(), stats.clone(), latest.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0xC0FFEE ^ ((w as u64 + 11) * 104_729));
            let mut next_new = id_base + (w as i64) * 10_000_000;
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_task));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let r = rng.next() % 10;
                let res = if r < 4 {
                    next_new += 1;
                    let id = next_new;
                    let d = make_doc(id, &mut rng);
                    let res = coll.insert_one(d).await.map(|_| ());
                    if res.is_ok() {
                        if let Ok(mut g) = latest.lock() {
                            *g = Some((id, Instant::now()));
                        }
                    }
                    res
                } else if r < 9 {
                    let id = (rng.next() % per_coll.max(1) as u64) as i64;
                    coll.update_one(
                        doc! {"_id": id},
                        doc! {"$inc": {"v": 1}, "$set": {"u": rng.next() as i64}},
                    )
                    .await
                    .map(|_| ())
                } else {
                    let id = (rng.next() % per_coll.max(1) as u64) as i64;
                    coll.delete_one(doc! {"_id": id}).await.map(|_| ())
                };
                match res {
                    Ok(()) => {
                        stats.ops.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        stats.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    Churn {
        stop,
        stats,
        latest,
        tasks,
        started: Instant::now(),
    }
}

impl Churn {
    /// Stops the writers; returns (acknowledged writes, refused writes, achieved rate/s).
    pub async fn stop(self) -> (u64, u64, f64) {
        self.stop.store(true, Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64();
        for t in self.tasks {
            let _ = t.await;
        }
        let ok = self.stats.ops.load(Ordering::Relaxed);
        (
            ok,
            self.stats.errors.load(Ordering::Relaxed),
            ok as f64 / secs,
        )
    }
}
