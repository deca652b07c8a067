//! The throughput benchmark of issues 3, 4 and 5: not a test. `scripts/bench.sh` builds the
//! release binary and runs this with `cargo bench --bench throughput -- <flags>`.
//!
//! In one run, against fresh local single-node replica sets:
//! (a) a naive copy with the same driver (per collection one `find` cursor → `insert_many` of
//!     1000, then the indexes);
//! (b) the destination's ingest ceiling (the same documents held in memory, inserted by several
//!     concurrent unordered `insert_many` streams, then the indexes);
//! (c) `cutover run PLAN --max-steps 1` (the `sync` step) from start to can-commit, with its peak
//!     RSS (the kernel's `VmHWM` of the process, polled every 20 ms);
//! (d) backlogs of mixed events written while cutover is stopped (batched writes, then
//!     single-document writes), each drained by the next `cutover run` (the plan's commit is
//!     manual, so the run replicates and waits): process start → the lane's durable position
//!     passes the backlog's last write;
//! (e) lag under steady churn while a manual commit waits for approval, then the approved commit;
//! (f) the write-blocked window of commits under light churn (median of several migrations), and
//!     the reverse start latency of a reversible plan;
//! (g) `cutover verify`'s throughput, only if the binary has that command.
//!
//! Flags: `--docs N` (default 1,000,000), `--quick` (100,000 documents, smaller backlog, shorter
//! churn), `--rss-check` (also runs the sync at 2× the documents: slow), `--backlog N`,
//! `--only-sync` (seed, (a), (b), (c) only), `--churn-secs S`, `--churn-rate W`, `--commits K`, `--streams N`, `--cache-gb G`,
//! `--cutover PATH`, `--cutover-arg ARG` (repeatable: extra flags for `cutover run`).

#[path = "../tests/it/common/mod.rs"]
mod common;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{ReplicaSet, RsOptions};
use futures::stream::{self, StreamExt};
use futures::TryStreamExt;
use mongodb::bson::{doc, Document, RawDocumentBuf, Timestamp};
use mongodb::{Client, IndexModel};

const DB: &str = "bench";
const COLLECTIONS: usize = 4;
/// Characters of the payload string: with the other fields a document is about 1 KB.
const PAYLOAD: usize = 960;
const STATE_DB: &str = "__cutover";

#[derive(Clone, Debug)]
struct Opts {
    docs: u64,
    quick: bool,
    rss_check: bool,
    only_sync: bool,
    backlog: u64,
    churn_secs: u64,
    churn_rate: u64,
    commits: usize,
    streams: usize,
    cache_gb: f64,
    cutover: PathBuf,
    cutover_args: Vec<String>,
    out: PathBuf,
}

fn parse_opts() -> Opts {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut o = Opts {
        docs: 1_000_000,
        quick: false,
        rss_check: false,
        only_sync: false,
        backlog: 200_000,
        churn_secs: 30,
        churn_rate: 1000,
        commits: 5,
        streams: 8,
        cache_gb: 1.0,
        cutover: root.join("target/release/cutover"),
        cutover_args: Vec::new(),
        out: root.join("target/bench-summary.txt"),
    };
    let mut docs_set = false;
    let mut backlog_set = false;
    let mut churn_set = false;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    let val = |i: &mut usize| -> String {
        *i += 1;
        args.get(*i)
            .cloned()
            .unwrap_or_else(|| panic!("flag {} needs a value", args[*i - 1]))
    };
    while i < args.len() {
        match args[i].as_str() {
            "--docs" => {
                o.docs = val(&mut i).parse().expect("--docs N");
                docs_set = true;
            }
            "--quick" => o.quick = true,
            "--rss-check" => o.rss_check = true,
            "--only-sync" => o.only_sync = true,
            "--backlog" => {
                o.backlog = val(&mut i).parse().expect("--backlog N");
                backlog_set = true;
            }
            "--churn-secs" => {
                o.churn_secs = val(&mut i).parse().expect("--churn-secs S");
                churn_set = true;
            }
            "--churn-rate" => o.churn_rate = val(&mut i).parse().expect("--churn-rate W"),
            "--commits" => o.commits = val(&mut i).parse().expect("--commits K"),
            "--streams" => o.streams = val(&mut i).parse().expect("--streams N"),
            "--cache-gb" => o.cache_gb = val(&mut i).parse().expect("--cache-gb G"),
            "--cutover" => o.cutover = PathBuf::from(val(&mut i)),
            "--cutover-arg" => o.cutover_args.push(val(&mut i)),
            "--out" => o.out = PathBuf::from(val(&mut i)),
            // `cargo bench` passes `--bench` to every bench target.
            "--bench" => {}
            other => panic!("unknown flag `{other}` (see the top of benches/throughput.rs)"),
        }
        i += 1;
    }
    if o.quick {
        if !docs_set {
            o.docs = 100_000;
        }
        if !backlog_set {
            o.backlog = 50_000;
        }
        if !churn_set {
            o.churn_secs = 15;
        }
        o.commits = o.commits.min(3);
    }
    o
}

// ---------------------------------------------------------------------------------------
// Data

/// xorshift64*: fast, deterministic payloads.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

const ALPHABET: &[u8; 64] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 -";
const CATEGORIES: [&str; 8] = [
    "books", "music", "garden", "tools", "toys", "food", "sports", "office",
];

fn make_doc(id: i64, rng: &mut Rng) -> RawDocumentBuf {
    let mut s = String::with_capacity(PAYLOAD + 8);
    while s.len() < PAYLOAD {
        let r = rng.next();
        for b in 0..8 {
            s.push(ALPHABET[((r >> (b * 8)) & 63) as usize] as char);
        }
    }
    let mut d = RawDocumentBuf::new();
    d.append("_id", id);
    d.append("k", (rng.next() % 10_000_000) as i64);
    d.append("cat", CATEGORIES[(rng.next() % 8) as usize]);
    d.append("n", (rng.next() % 1_000_000) as f64 / 7.0);
    d.append(
        "created",
        mongodb::bson::DateTime::from_millis(1_700_000_000_000 + id),
    );
    d.append("s", s);
    d
}

/// `docs` documents spread over the collections, `_id` 0.. per collection.
fn generate(docs: u64, seed: u64) -> Vec<Vec<RawDocumentBuf>> {
    let per = docs / COLLECTIONS as u64;
    (0..COLLECTIONS)
        .map(|c| {
            let mut rng = Rng(seed ^ (0x9E37_79B9_7F4A_7C15u64.wrapping_mul(c as u64 + 1)));
            (0..per as i64).map(|i| make_doc(i, &mut rng)).collect()
        })
        .collect()
}

fn coll_name(c: usize) -> String {
    format!("c{c}")
}

fn total_bytes(data: &[Vec<RawDocumentBuf>]) -> u64 {
    data.iter()
        .flat_map(|c| c.iter())
        .map(|d| d.as_bytes().len() as u64)
        .sum()
}

/// Inserts every document with `streams` concurrent unordered `insert_many` of 1000.
async fn parallel_insert(client: &Client, data: &[Vec<RawDocumentBuf>], streams: usize) {
    let jobs: Vec<(usize, &[RawDocumentBuf])> = data
        .iter()
        .enumerate()
        .flat_map(|(c, docs)| docs.chunks(1000).map(move |ch| (c, ch)))
        .collect();
    stream::iter(jobs)
        .map(|(c, chunk)| {
            let coll = client
                .database(DB)
                .collection::<RawDocumentBuf>(&coll_name(c));
            async move {
                coll.insert_many(chunk)
                    .ordered(false)
                    .await
                    .expect("insert_many");
            }
        })
        .buffer_unordered(streams.max(1))
        .collect::<Vec<()>>()
        .await;
}

async fn build_indexes(client: &Client) {
    for c in 0..COLLECTIONS {
        client
            .database(DB)
            .collection::<Document>(&coll_name(c))
            .create_index(IndexModel::builder().keys(doc! {"k": 1}).build())
            .await
            .expect("create index");
    }
}

async fn count_all(client: &Client) -> u64 {
    let mut n = 0;
    for c in 0..COLLECTIONS {
        n += client
            .database(DB)
            .collection::<Document>(&coll_name(c))
            .count_documents(doc! {})
            .await
            .expect("count");
    }
    n
}

async fn start_rs(opts: &Opts, oplog_mb: u32) -> ReplicaSet {
    ReplicaSet::start_with(RsOptions {
        members: 1,
        oplog_mb,
        cache_gb: opts.cache_gb,
    })
    .await
}

// ---------------------------------------------------------------------------------------
// Baselines

/// (a) per collection one `find` cursor → `insert_many` of 1000, then the indexes.
async fn naive_copy(src: &Client, dst: &Client) -> Duration {
    let t = Instant::now();
    for c in 0..COLLECTIONS {
        let name = coll_name(c);
        let from = src.database(DB).collection::<RawDocumentBuf>(&name);
        let to = dst.database(DB).collection::<RawDocumentBuf>(&name);
        let mut cur = from.find(doc! {}).batch_size(1000).await.expect("find");
        let mut batch = Vec::with_capacity(1000);
        while let Some(d) = cur.try_next().await.expect("cursor") {
            batch.push(d);
            if batch.len() == 1000 {
                to.insert_many(&batch).await.expect("insert_many");
                batch.clear();
            }
        }
        if !batch.is_empty() {
            to.insert_many(&batch).await.expect("insert_many");
        }
    }
    build_indexes(dst).await;
    t.elapsed()
}

// ---------------------------------------------------------------------------------------
// cutover processes

struct Finished {
    code: Option<i32>,
    wall: Duration,
    max_rss_kb: i64,
    stdout: String,
    stderr: String,
}

/// A running `cutover` whose peak RSS is read from `wait4` when it exits.
struct Proc {
    pid: i32,
    started: Instant,
    out: PathBuf,
    err: PathBuf,
    _child: std::process::Child,
}

fn spawn_cutover(opts: &Opts, args: &[&str], env: &[(&str, &str)], dir: &Path, tag: &str) -> Proc {
    let out = dir.join(format!("{tag}.stdout"));
    let err = dir.join(format!("{tag}.stderr"));
    let mut cmd = Command::new(&opts.cutover);
    cmd.args(args)
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .env_remove("CUTOVER_LOG")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("stdout file"))
        .stderr(std::fs::File::create(&err).expect("stderr file"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let started = Instant::now();
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", opts.cutover.display()));
    Proc {
        pid: child.id() as i32,
        started,
        out,
        err,
        _child: child,
    }
}

impl Proc {
    /// Waits (on a blocking thread) and returns exit code, wall time and peak RSS.
    async fn wait(self) -> Finished {
        let pid = self.pid;
        // Peak RSS from the kernel's VmHWM of the process, polled until it exits. Not wait4's
        // ru_maxrss: Rust spawns with posix_spawn (CLONE_VM), and exec records the parent's
        // high-water mark into the child's maxrss, so it reported this bench's own memory (the
        // data set it holds). VmHWM belongs to the new address space; it only grows, so polling
        // misses at most the last few milliseconds.
        let hwm = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let poller = {
            let (hwm, done) = (hwm.clone(), done.clone());
            tokio::spawn(async move {
                while !done.load(Ordering::Relaxed) {
                    if let Some(kb) = vm_hwm_kb(pid) {
                        hwm.fetch_max(kb, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        let (code, _maxrss_with_parent) = tokio::task::spawn_blocking(move || {
            let mut status = 0i32;
            // SAFETY: a zeroed rusage is a valid out-parameter; wait4 fills it.
            let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: waits for our own child; status and ru are valid pointers.
            let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
            assert_eq!(r, pid, "wait4 on cutover failed");
            let code = if libc::WIFEXITED(status) {
                Some(libc::WEXITSTATUS(status))
            } else {
                None
            };
            (code, ru.ru_maxrss)
        })
        .await
        .expect("wait task");
        let wall = self.started.elapsed();
        done.store(true, Ordering::Relaxed);
        let _ = poller.await;
        Finished {
            code,
            wall,
            max_rss_kb: hwm.load(Ordering::Relaxed) as i64,
            stdout: std::fs::read_to_string(&self.out).unwrap_or_default(),
            stderr: std::fs::read_to_string(&self.err).unwrap_or_default(),
        }
    }
}

/// `VmHWM` (peak resident set) of a live process, in KB.
fn vm_hwm_kb(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

impl Finished {
    fn expect_ok(&self, what: &str) {
        assert_eq!(
            self.code,
            Some(0),
            "{what} failed:\n--- stdout\n{}\n--- stderr (tail)\n{}",
            self.stdout,
            tail(&self.stderr, 40)
        );
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or(serde_json::Value::Null)
    }
}

fn tail(s: &str, n: usize) -> String {
    let l: Vec<&str> = s.lines().collect();
    l[l.len().saturating_sub(n)..].join("\n")
}

fn run_args<'a>(opts: &'a Opts, plan: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["run", plan, "--format", "json"];
    v.extend_from_slice(extra);
    v.extend(opts.cutover_args.iter().map(String::as_str));
    v
}

fn plan_file(dir: &Path, name: &str, body: &str) -> String {
    let text = common::plan_text(name, body);
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("write plan");
    path.display().to_string()
}

fn env_for(src: &ReplicaSet, dst: &ReplicaSet) -> Vec<(String, String)> {
    vec![
        ("SOURCE_URI".into(), src.root_uri()),
        ("DESTINATION_URI".into(), dst.root_uri()),
    ]
}

fn env_refs(e: &[(String, String)]) -> Vec<(&str, &str)> {
    e.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect()
}

async fn run_doc(dst: &Client, plan: &str) -> Option<Document> {
    dst.database(STATE_DB)
        .collection::<Document>("runs")
        .find_one(doc! {"_id": plan})
        .await
        .ok()
        .flatten()
}

async fn lane_doc(dst: &Client, plan: &str) -> Option<Document> {
    dst.database(STATE_DB)
        .collection::<Document>("lanes")
        .find_one(doc! {"_id": format!("{plan}/forward")})
        .await
        .ok()
        .flatten()
}

/// The source's last write time.
async fn last_write(c: &Client) -> Timestamp {
    let h = c
        .database("admin")
        .run_command(doc! {"hello": 1})
        .await
        .expect("hello");
    h.get_document("lastWrite")
        .and_then(|l| l.get_document("opTime"))
        .and_then(|o| o.get_timestamp("ts"))
        .expect("lastWrite.opTime.ts")
}

async fn unblock(c: &Client) {
    let _ = c
        .database("admin")
        .run_command(doc! {"setUserWriteBlockMode": 1, "global": false})
        .await;
}

// ---------------------------------------------------------------------------------------
// Writers

#[derive(Default)]
struct WriteStats {
    events: AtomicU64,
    ops: AtomicU64,
    errors: AtomicU64,
}

/// (d) the backlog: `writers` concurrent writers of batched inserts (100 new documents),
/// updates (`update_many` of 100 `_id`s) and deletes (`delete_many` of 50 `_id`s) until at
/// least `target` change events were produced. Returns (events, elapsed).
async fn write_backlog(
    src: &Client,
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
            let mut rng = Rng(0xDEAD_BEEF ^ ((w as u64 + 1) * 7919));
            let mut next_new = 1_000_000_000i64 + (w as i64) * 100_000_000;
            let half = (per_coll / 2).max(200);
            let mut del_at = per_coll - 1;
            let mut step = 0u64;
            while stats.events.load(Ordering::Relaxed) < target {
                let n = match step % 5 {
                    // 2 of 5: inserts
                    0 | 2 => {
                        let docs: Vec<RawDocumentBuf> = (0..100)
                            .map(|_| {
                                next_new += 1;
                                make_doc(next_new, &mut rng)
                            })
                            .collect();
                        coll.insert_many(&docs).await.expect("backlog insert").inserted_ids.len()
                            as u64
                    }
                    // 2 of 5: updates of 100 existing documents
                    1 | 3 => {
                        let lo = (rng.next() % (half as u64 - 100)) as i64;
                        coll.update_many(
                            doc! {"_id": {"$gte": lo, "$lt": lo + 100}},
                            doc! {"$set": {"u": rng.next() as i64, "cat": "updated"}, "$inc": {"v": 1}},
                        )
                        .await
                        .expect("backlog update")
                        .modified_count
                    }
                    // 1 of 5: deletes of 50, walking down from the top
                    _ => {
                        let hi = del_at;
                        del_at -= 50;
                        if del_at < half {
                            del_at = per_coll - 1; // nothing left to delete there: no events
                        }
                        coll.delete_many(doc! {"_id": {"$gt": hi - 50, "$lte": hi}})
                            .await
                            .expect("backlog delete")
                            .deleted_count
                    }
                };
                step += 1;
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

#[derive(Clone, Copy, PartialEq, Eq)]
enum BacklogStyle {
    Batched,
    Single,
}

impl BacklogStyle {
    fn name(self) -> &'static str {
        match self {
            BacklogStyle::Batched => "batched",
            BacklogStyle::Single => "single-document",
        }
    }
}

struct Drain {
    style: BacklogStyle,
    events: u64,
    accept: Duration,
    caught_up: Duration,
    applied: i64,
    window: Option<i64>,
}

/// (d) the backlog as an application writes it: `writers` concurrent writers of single
/// documents (40% `insert_one`, 40% `update_one`, 20% `delete_one`) until at least `target`
/// change events. Returns (events, elapsed).
async fn write_backlog_single(
    src: &Client,
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
            let mut rng = Rng(0xFACE ^ ((w as u64 + 3) * 65_537));
            let mut next_new = 5_000_000_000i64 + (w as i64) * 100_000_000;
            let half = (per_coll / 2).max(200);
            // Two writers share a collection: their deletes walk down disjoint stretches.
            let mut del_at = per_coll * 3 / 4 - if w >= COLLECTIONS { per_coll / 8 } else { 0 };
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
                        del_at -= 1;
                        coll.delete_one(doc! {"_id": del_at})
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
struct Churn {
    stop: Arc<AtomicBool>,
    stats: Arc<WriteStats>,
    latest: Arc<Mutex<Option<(i64, Instant)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
}

fn start_churn(app: Client, per_coll: i64, rate: u64, id_base: i64) -> Churn {
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(WriteStats::default());
    let latest = Arc::new(Mutex::new(None));
    let ntasks = 4usize;
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
    async fn stop(self) -> (u64, u64, f64) {
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

// ---------------------------------------------------------------------------------------
// Reporting

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let idx = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[idx.min(v.len() - 1)]
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1_000_000.0
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "MET"
    } else {
        "MISSED"
    }
}

fn machine_note() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    format!(
        "{cpus} cores, {mem}; load average {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}

struct Report {
    text: String,
}

impl Report {
    fn line(&mut self, s: impl AsRef<str>) {
        println!("{}", s.as_ref());
        let _ = writeln!(self.text, "{}", s.as_ref());
    }
}

fn log(s: impl AsRef<str>) {
    eprintln!("[bench {}] {}", chrono_now(), s.as_ref());
}

fn chrono_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!(
        "{:02}:{:02}:{:02}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60
    )
}

// ---------------------------------------------------------------------------------------
// Phases

struct SyncResult {
    wall: Duration,
    rss_mb: f64,
    docs: u64,
}

/// (c) `cutover run PLAN --max-steps 1`: the sync from start to can-commit.
async fn measure_sync(
    opts: &Opts,
    src: &ReplicaSet,
    dst: &ReplicaSet,
    dir: &Path,
    plan: &str,
    tag: &str,
) -> SyncResult {
    let env = env_for(src, dst);
    let args = run_args(opts, plan, &["--max-steps", "1"]);
    let p = spawn_cutover(opts, &args, &env_refs(&env), dir, tag);
    let f = p.wait().await;
    f.expect_ok("cutover run --max-steps 1 (sync)");
    // Its log (step timings) stays for a look after the run.
    let log_path = opts.out.with_file_name(format!("bench-cutover-{tag}.log"));
    let _ = std::fs::write(&log_path, &f.stderr);
    let dc = dst.root_client().await;
    let docs = count_all(&dc).await;
    SyncResult {
        wall: f.wall,
        rss_mb: f.max_rss_kb as f64 / 1024.0,
        docs,
    }
}

fn has_verify(opts: &Opts) -> bool {
    let out = Command::new(&opts.cutover)
        .arg("--help")
        .output()
        .expect("cutover --help");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim_start().starts_with("verify "))
}

#[tokio::main]
async fn main() {
    let opts = parse_opts();
    assert!(
        opts.cutover.exists(),
        "{} does not exist: run `cargo build --release` (scripts/bench.sh does)",
        opts.cutover.display()
    );
    let work = tempfile::Builder::new()
        .prefix("cutover-bench-")
        .tempdir()
        .expect("tempdir");
    let dir = work.path();
    let mut rep = Report {
        text: String::new(),
    };
    let machine_start = machine_note();
    log(format!(
        "{} documents (~1 KB, {COLLECTIONS} collections, one secondary index each); machine: {machine_start}",
        opts.docs
    ));

    // ---- seed
    let t = Instant::now();
    let data = generate(opts.docs, 42);
    let bytes = total_bytes(&data);
    let ndocs: u64 = data.iter().map(|c| c.len() as u64).sum();
    log(format!(
        "generated {ndocs} documents, {:.0} MB, in {:.1}s",
        mb(bytes),
        t.elapsed().as_secs_f64()
    ));
    let src = start_rs(&opts, 4096).await;
    let sc = src.root_client().await;
    let t = Instant::now();
    parallel_insert(&sc, &data, opts.streams).await;
    build_indexes(&sc).await;
    let seed_secs = t.elapsed().as_secs_f64();
    log(format!("seeded the source in {seed_secs:.1}s"));

    // ---- (a) naive copy
    let naive = {
        let dst = start_rs(&opts, 1024).await;
        let dc = dst.root_client().await;
        log("(a) naive copy…");
        let d = naive_copy(&sc, &dc).await;
        assert_eq!(count_all(&dc).await, ndocs, "naive copy lost documents");
        log(format!("(a) naive copy: {:.1}s", d.as_secs_f64()));
        d
    };

    // ---- (b) ingest ceiling
    let ceiling = {
        let dst = start_rs(&opts, 1024).await;
        let dc = dst.root_client().await;
        log("(b) ingest ceiling…");
        let t = Instant::now();
        parallel_insert(&dc, &data, opts.streams).await;
        build_indexes(&dc).await;
        let d = t.elapsed();
        assert_eq!(count_all(&dc).await, ndocs, "ceiling insert lost documents");
        log(format!("(b) ingest ceiling: {:.1}s", d.as_secs_f64()));
        d
    };
    drop(data);

    // ---- (c) cutover sync
    let dst = start_rs(&opts, 4096).await;
    let dc = dst.root_client().await;
    let main_plan = plan_file(
        dir,
        "bench-main",
        "[options]\nwrite_blocking = \"source-and-destination\"\nbuild_indexes = \"after-copy\"\n\n\
         [[steps]]\nkind = \"sync\"\n\n[[steps]]\nkind = \"commit\"\napproval = \"manual\"\ntimeout = \"2h\"\n",
    );
    log("(c) cutover sync…");
    let sync = measure_sync(&opts, &src, &dst, dir, &main_plan, "sync").await;
    assert_eq!(
        sync.docs, ndocs,
        "cutover's copy has the wrong document count"
    );
    log(format!(
        "(c) cutover sync: {:.1}s, peak RSS {:.0} MB",
        sync.wall.as_secs_f64(),
        sync.rss_mb
    ));

    if opts.only_sync {
        // A quick look at the copy alone (e.g. while tuning `--cutover-arg` flags).
        let line = format!(
            "only-sync: {ndocs} docs, {:.0} MB: naive {:.1}s, ceiling {:.1}s, cutover {:.1}s ({:.2}x naive, {:.2}x ceiling time), peak RSS {:.0} MB; flags: {}",
            mb(bytes),
            naive.as_secs_f64(),
            ceiling.as_secs_f64(),
            sync.wall.as_secs_f64(),
            naive.as_secs_f64() / sync.wall.as_secs_f64(),
            sync.wall.as_secs_f64() / ceiling.as_secs_f64(),
            sync.rss_mb,
            opts.cutover_args.join(" ")
        );
        rep.line(line);
        return;
    }

    // ---- (d) backlog drains: the plan's commit is manual, so `run` resumes replication and
    // waits; the drain time is from process start until the lane's durable position passes
    // the backlog's last write. Two backlogs: batched writes (the source's cheapest way to
    // accept them), then single-document writes (a typical application).
    let per_coll = (opts.docs / COLLECTIONS as u64) as i64;
    let env = env_for(&src, &dst);
    let mut drains: Vec<Drain> = Vec::new();
    for style in [BacklogStyle::Batched, BacklogStyle::Single] {
        log(format!(
            "(d) writing a {} backlog of ≥{} events…",
            style.name(),
            opts.backlog
        ));
        let lane_before = lane_doc(&dc, "bench-main")
            .await
            .and_then(|l| l.get_i64("events_applied").ok())
            .unwrap_or(0);
        let (events, accept) = match style {
            BacklogStyle::Batched => write_backlog(&sc, per_coll, opts.backlog, 4).await,
            BacklogStyle::Single => write_backlog_single(&sc, per_coll, opts.backlog, 8).await,
        };
        let backlog_end = last_write(&sc).await;
        log(format!(
            "(d) source accepted {events} events in {:.1}s ({:.0}/s); draining…",
            accept.as_secs_f64(),
            events as f64 / accept.as_secs_f64()
        ));
        let args = run_args(&opts, &main_plan, &[]);
        let p = spawn_cutover(
            &opts,
            &args,
            &env_refs(&env),
            dir,
            &format!("drain-{}", style.name()),
        );
        let (pid, started) = (p.pid, p.started);
        let waiter = tokio::spawn(p.wait());
        let caught_up = loop {
            if let Some(pos) = lane_doc(&dc, "bench-main")
                .await
                .and_then(|l| l.get_timestamp("position").ok())
            {
                if pos >= backlog_end {
                    break started.elapsed();
                }
            }
            assert!(
                !waiter.is_finished(),
                "cutover exited before draining the backlog"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let lane_after = lane_doc(&dc, "bench-main")
            .await
            .and_then(|l| l.get_i64("events_applied").ok())
            .unwrap_or(0);
        let mut window = None;
        if style == BacklogStyle::Batched {
            // Stop it (Ctrl-C): it checkpoints and exits; the next run resumes.
            // SAFETY: signals our own child.
            unsafe { libc::kill(pid, libc::SIGINT) };
            let _ = waiter.await.expect("drain wait");
        } else {
            let appr = Command::new(&opts.cutover)
                .args(["approve", &main_plan, "--note", "bench"])
                .envs(env.iter().map(|(a, b)| (a.clone(), b.clone())))
                .output()
                .expect("cutover approve");
            assert!(
                appr.status.success(),
                "cutover approve failed: {}",
                common::show(&appr)
            );
            let f = waiter.await.expect("drain wait");
            f.expect_ok("cutover run (the approved commit after the backlogs)");
            window = f.json()["write_blocked_window_ms"].as_i64();
            assert_eq!(
                count_all(&dc).await,
                count_all(&sc).await,
                "the destination's counts differ from the source after the commit"
            );
        }
        log(format!(
            "(d) {} backlog caught up in {:.1}s ({:.0} events/s)",
            style.name(),
            caught_up.as_secs_f64(),
            events as f64 / caught_up.as_secs_f64()
        ));
        drains.push(Drain {
            style,
            events,
            accept,
            caught_up,
            applied: lane_after - lane_before,
            window,
        });
    }

    // ---- (g) verify, only where the command exists
    let verify_note: String;
    let mut verify_line: Option<(f64, f64, i32)> = None;
    if has_verify(&opts) {
        log("(g) cutover verify…");
        let p = spawn_cutover(
            &opts,
            &["verify", &main_plan, "--format", "json"],
            &env_refs(&env),
            dir,
            "verify",
        );
        let f = p.wait().await;
        verify_line = Some((
            f.wall.as_secs_f64(),
            f.max_rss_kb as f64 / 1024.0,
            f.code.unwrap_or(-1),
        ));
        verify_note = format!(
            "exit {:?}; stdout tail: {}",
            f.code,
            tail(&f.stdout, 3).replace('\n', " ")
        );
    } else {
        verify_note = "SKIPPED: this cutover binary has no `verify` command yet (issue 5)".into();
        log(format!("(g) {verify_note}"));
    }
    drop(dc);
    drop(dst);
    drop(sc);
    drop(src);

    // ---- (e) steady churn lag, then the approved commit
    let small_docs = if opts.quick { 8_000 } else { 20_000 };
    let small = generate(small_docs, 7);
    let small_per = (small_docs / COLLECTIONS as u64) as i64;
    let src = start_rs(&opts, 1024).await;
    let sc = src.root_client().await;
    parallel_insert(&sc, &small, opts.streams).await;
    build_indexes(&sc).await;
    let dst = start_rs(&opts, 1024).await;
    let dc = dst.root_client().await;
    let churn_plan = plan_file(
        dir,
        "bench-churn",
        "[options]\nwrite_blocking = \"source-and-destination\"\n\n\
         [[steps]]\nkind = \"sync\"\n\n[[steps]]\nkind = \"commit\"\napproval = \"manual\"\ntimeout = \"2h\"\n",
    );
    let env = env_for(&src, &dst);
    let args = run_args(&opts, &churn_plan, &[]);
    let churn_proc = spawn_cutover(&opts, &args, &env_refs(&env), dir, "churn");
    let churn_pid = churn_proc.pid;
    let churn_wait = tokio::spawn(churn_proc.wait());
    log("(e) waiting for the sync to reach can-commit (the commit then waits for approval)…");
    let t = Instant::now();
    loop {
        // The reporter rewrites `status` every second, so `phase` flips between "waiting for
        // approval" and the lane's phase; can-commit is what approval waits behind.
        let can_commit = run_doc(&dc, "bench-churn")
            .await
            .and_then(|d| d.get_document("status").ok().cloned())
            .and_then(|s| s.get_bool("can_commit").ok());
        if can_commit == Some(true) {
            break;
        }
        assert!(
            !churn_wait.is_finished(),
            "cutover (pid {churn_pid}) exited before waiting for approval"
        );
        assert!(
            t.elapsed() < Duration::from_secs(600),
            "no approval wait after 10 min"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    log(format!(
        "(e) churn at {}/s for {}s, sampling lag every 200 ms…",
        opts.churn_rate, opts.churn_secs
    ));
    let app = src.app_client().await;
    let churn = start_churn(app.clone(), small_per, opts.churn_rate, 2_000_000_000);
    // Independent end-to-end probe: how long until the latest acknowledged insert is
    // visible on the destination.
    let probe_latest = churn.latest.clone();
    let probe_dc = dc.clone();
    let probe_stop = Arc::new(AtomicBool::new(false));
    let probe_stop2 = probe_stop.clone();
    let probe = tokio::spawn(async move {
        let mut delays = Vec::new();
        while !probe_stop2.load(Ordering::Relaxed) {
            let latest = probe_latest.lock().ok().and_then(|g| *g);
            if let Some((id, acked)) = latest {
                // The insert went to one of the collections; look in all of them.
                loop {
                    let mut found = false;
                    for c in 0..COLLECTIONS {
                        if probe_dc
                            .database(DB)
                            .collection::<Document>(&coll_name(c))
                            .find_one(doc! {"_id": id})
                            .await
                            .ok()
                            .flatten()
                            .is_some()
                        {
                            found = true;
                            break;
                        }
                    }
                    if found {
                        delays.push(acked.elapsed().as_secs_f64());
                        break;
                    }
                    if acked.elapsed() > Duration::from_secs(60)
                        || probe_stop2.load(Ordering::Relaxed)
                    {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        delays
    });
    let mut lags = Vec::new();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(opts.churn_secs) {
        if let Some(l) = run_doc(&dc, "bench-churn")
            .await
            .and_then(|d| d.get_document("status").ok().cloned())
            .and_then(|s| s.get_f64("lag_seconds").ok())
        {
            lags.push(l);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    probe_stop.store(true, Ordering::Relaxed);
    let mut e2e = probe.await.expect("probe");
    let status_json = Command::new(&opts.cutover)
        .args(["status", &churn_plan, "--format", "json"])
        .envs(env.iter().map(|(a, b)| (a.clone(), b.clone())))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    let status_lag = serde_json::from_str::<serde_json::Value>(&status_json)
        .ok()
        .and_then(|v| v["lag_seconds"].as_f64());
    let lag_n = lags.len();
    let lag_p50 = pct(&mut lags, 50.0);
    let lag_p99 = pct(&mut lags, 99.0);
    let lag_max = pct(&mut lags, 100.0);
    let e2e_n = e2e.len();
    let e2e_p50 = pct(&mut e2e, 50.0);
    let e2e_p99 = pct(&mut e2e, 99.0);
    log(format!(
        "(e) lag p50 {lag_p50:.3}s p99 {lag_p99:.3}s ({lag_n} samples); end-to-end p50 {e2e_p50:.3}s p99 {e2e_p99:.3}s; approving…"
    ));
    let t = Instant::now();
    let appr = Command::new(&opts.cutover)
        .args(["approve", &churn_plan, "--note", "bench"])
        .envs(env.iter().map(|(a, b)| (a.clone(), b.clone())))
        .output()
        .expect("cutover approve");
    assert!(
        appr.status.success(),
        "cutover approve failed: {}",
        common::show(&appr)
    );
    let churn_done = churn_wait.await.expect("churn wait");
    let approve_to_exit = t.elapsed();
    let (churn_ok, churn_refused, churn_rate) = churn.stop().await;
    churn_done.expect_ok("cutover run (manual commit under churn)");
    let churn_window = churn_done.json()["write_blocked_window_ms"].as_i64();
    log(format!(
        "(e) approved commit under churn: window {churn_window:?} ms, approve→exit {:.1}s",
        approve_to_exit.as_secs_f64()
    ));
    drop(dc);
    drop(dst);

    // ---- (f) write-blocked window under light churn, several migrations
    let mut windows = Vec::new();
    for k in 0..opts.commits {
        unblock(&sc).await;
        let dst = start_rs(&opts, 1024).await;
        let name = format!("bench-commit-{k}");
        let plan = plan_file(
            dir,
            &name,
            "[options]\nwrite_blocking = \"source-and-destination\"\n\n\
             [[steps]]\nkind = \"sync\"\n\n[[steps]]\nkind = \"commit\"\n",
        );
        let churn = start_churn(
            app.clone(),
            small_per,
            100,
            3_000_000_000 + k as i64 * 100_000_000,
        );
        let env = env_for(&src, &dst);
        let args = run_args(&opts, &plan, &[]);
        let f = spawn_cutover(&opts, &args, &env_refs(&env), dir, &name)
            .wait()
            .await;
        let _ = churn.stop().await;
        f.expect_ok("cutover run (sync + commit under light churn)");
        let w = f.json()["write_blocked_window_ms"].as_i64().unwrap_or(-1);
        log(format!("(f) commit {k}: write-blocked window {w} ms"));
        windows.push(w as f64);
    }
    let mut ws = windows.clone();
    let window_median = pct(&mut ws, 50.0);

    // reverse start latency
    unblock(&sc).await;
    let dst = start_rs(&opts, 1024).await;
    let dcr = dst.root_client().await;
    let rplan = plan_file(
        dir,
        "bench-reverse",
        "[options]\nreversible = true\nwrite_blocking = \"source-and-destination\"\n\n\
         [[steps]]\nkind = \"sync\"\n\n[[steps]]\nkind = \"validate-indexes\"\n\n[[steps]]\nkind = \"commit\"\n\n\
         [[steps]]\nkind = \"reverse\"\n\n[[steps]]\nkind = \"commit\"\napproval = \"manual\"\ntimeout = \"2h\"\n",
    );
    let churn = start_churn(app.clone(), small_per, 100, 4_000_000_000);
    let env = env_for(&src, &dst);
    let args = run_args(&opts, &rplan, &["--max-steps", "4"]);
    let f = spawn_cutover(&opts, &args, &env_refs(&env), dir, "reverse")
        .wait()
        .await;
    let _ = churn.stop().await;
    f.expect_ok("cutover run (reversible plan up to reverse)");
    let reverse_latency = run_doc(&dcr, "bench-reverse")
        .await
        .and_then(|d| d.get_i64("reverse_start_latency_ms").ok());
    log(format!("reverse start latency: {reverse_latency:?} ms"));
    drop(dcr);
    drop(dst);
    drop(sc);
    drop(src);

    // ---- RSS flatness at 2×
    let mut rss2: Option<SyncResult> = None;
    if opts.rss_check {
        let docs2 = opts.docs * 2;
        log(format!("RSS check: sync of {docs2} documents…"));
        let data2 = generate(docs2, 4242);
        let src = start_rs(&opts, 4096).await;
        let sc = src.root_client().await;
        parallel_insert(&sc, &data2, opts.streams).await;
        build_indexes(&sc).await;
        drop(data2);
        let dst = start_rs(&opts, 4096).await;
        let plan = plan_file(
            dir,
            "bench-rss",
            "[options]\nbuild_indexes = \"after-copy\"\n\n[[steps]]\nkind = \"sync\"\n",
        );
        let r = measure_sync(&opts, &src, &dst, dir, &plan, "rss").await;
        log(format!(
            "RSS check: {:.1}s, peak RSS {:.0} MB",
            r.wall.as_secs_f64(),
            r.rss_mb
        ));
        rss2 = Some(r);
    }

    // ---- summary
    let n = ndocs as f64;
    let row = |name: &str, d: Duration| {
        format!(
            "  {name:<34} {:>9.1}s {:>11.0} docs/s {:>8.1} MB/s",
            d.as_secs_f64(),
            n / d.as_secs_f64(),
            mb(bytes) / d.as_secs_f64()
        )
    };
    let vs_naive = naive.as_secs_f64() / sync.wall.as_secs_f64();
    let vs_ceiling = sync.wall.as_secs_f64() / ceiling.as_secs_f64();
    rep.line("================ cutover benchmark (scripts/bench.sh) ================");
    rep.line(format!(
        "data: {ndocs} documents, {:.0} MB BSON, {COLLECTIONS} collections, one secondary index each; \
         single-node replica sets, WiredTiger cache {} GB; mongod {}",
        mb(bytes),
        opts.cache_gb,
        common::mongod_path().display()
    ));
    rep.line(format!(
        "machine: {machine_start} at start, load {} at end — shared with other agents, figures are noisy",
        machine_note().rsplit("load average ").next().unwrap_or("?")
    ));
    if !opts.cutover_args.is_empty() {
        rep.line(format!(
            "cutover run flags: {}",
            opts.cutover_args.join(" ")
        ));
    }
    rep.line(format!(
        "source seed (parallel insert + indexes): {seed_secs:.1}s"
    ));
    rep.line("copy (start → can-commit, indexes included):");
    rep.line(row("(a) naive copy (1 cursor, batches)", naive));
    rep.line(row("(b) ingest ceiling (parallel, RAM)", ceiling));
    rep.line(row("(c) cutover sync (--max-steps 1)", sync.wall));
    rep.line(format!(
        "  cutover vs naive:   {vs_naive:.2}x faster       target >= 2.0x   {}",
        verdict(vs_naive >= 2.0)
    ));
    rep.line(format!(
        "  cutover vs ceiling: {vs_ceiling:.2}x the time      target <= 1.3x   {}",
        verdict(vs_ceiling <= 1.3)
    ));
    rep.line(format!(
        "  cutover peak RSS:   {:.0} MB                target <= 300 MB {}",
        sync.rss_mb,
        verdict(sync.rss_mb <= 300.0)
    ));
    match &rss2 {
        Some(r) => {
            let ratio = r.rss_mb / sync.rss_mb;
            rep.line(format!(
                "  at 2x ({} docs): {:.1}s, peak RSS {:.0} MB = {ratio:.2}x   target within ±20%   {}",
                r.docs,
                r.wall.as_secs_f64(),
                r.rss_mb,
                verdict((0.8..=1.2).contains(&ratio))
            ));
        }
        None => rep.line("  RSS at 2x: not measured (pass --rss-check; slow)"),
    }
    rep.line("change application:");
    for d in &drains {
        let accept_rate = d.events as f64 / d.accept.as_secs_f64();
        let drain_rate = d.events as f64 / d.caught_up.as_secs_f64();
        rep.line(format!(
            "  {} backlog: {} events; source accepted {accept_rate:.0}/s ({:.1}s); drained {drain_rate:.0}/s ({:.1}s from process start, lane +{} events) = {:.2}x   target >= 0.8x   {}",
            d.style.name(),
            d.events,
            d.accept.as_secs_f64(),
            d.caught_up.as_secs_f64(),
            d.applied,
            drain_rate / accept_rate,
            verdict(drain_rate / accept_rate >= 0.8)
        ));
        if let Some(w) = d.window {
            rep.line(format!("    (then approved: commit window {w} ms)"));
        }
    }
    rep.line(format!(
        "  steady churn: {churn_rate:.0} writes/s achieved (target {}/s, {churn_ok} acknowledged, {churn_refused} refused while blocked)",
        opts.churn_rate
    ));
    rep.line(format!(
        "  lag_seconds (status doc, sampled every 200 ms, {lag_n} samples): p50 {lag_p50:.3}s p99 {lag_p99:.3}s max {lag_max:.3}s   target p99 < 1s   {}",
        verdict(lag_p99 < 1.0)
    ));
    rep.line(format!(
        "  end-to-end (insert acknowledged → visible on destination, {e2e_n} probes): p50 {e2e_p50:.3}s p99 {e2e_p99:.3}s"
    ));
    rep.line(format!(
        "  `cutover status --format json` lag_seconds at the end: {}",
        status_lag.map_or("null".into(), |l| format!("{l:.3}"))
    ));
    rep.line("commit:");
    rep.line(format!(
        "  approved commit under {}/s churn: write-blocked window {} ms; approve → exit {:.2}s",
        opts.churn_rate,
        churn_window.map_or("?".into(), |w| w.to_string()),
        approve_to_exit.as_secs_f64()
    ));
    rep.line(format!(
        "  write-blocked window under ~100 writes/s, {} migrations of {small_docs} docs: {} ms; median {window_median:.0} ms   target < 1000 ms   {}",
        windows.len(),
        windows.iter().map(|w| format!("{w:.0}")).collect::<Vec<_>>().join(", "),
        verdict(window_median < 1000.0)
    ));
    rep.line(format!(
        "  reverse start latency (runs.reverse_start_latency_ms): {}",
        reverse_latency.map_or("not recorded".into(), |l| format!("{l} ms"))
    ));
    rep.line("verify:");
    match verify_line {
        Some((secs, rss, code)) => {
            rep.line(format!(
                "  cutover verify: {secs:.1}s = {:.0} docs/s ({:.2}x the copy's speed; target >= 1.0x), peak RSS {rss:.0} MB, exit {code}",
                n / secs,
                sync.wall.as_secs_f64() / secs
            ));
            rep.line(format!("  {verify_note}"));
        }
        None => rep.line(format!("  {verify_note}")),
    }
    if let Some(parent) = opts.out.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    std::fs::write(&opts.out, &rep.text).expect("write summary");
    println!("(written to {})", opts.out.display());
}
