//! The throughput benchmark of issues 3, 4, 5 and 10: not a test. `scripts/bench.sh` builds the
//! release binary and runs this with `cargo bench --bench throughput -- <flags>`.
//!
//! In one run, against fresh local single-node replica sets:
//! (a) a naive copy with the same driver (per collection one `find` cursor → `insert_many` of
//!     1000, then the indexes);
//! (b) the destination's ingest ceiling (the same documents held in memory, inserted by several
//!     concurrent unordered `insert_many` streams, then the indexes);
//! (c) `cutover run PLAN --max-steps 1` (the `sync` step) from start to can-commit, with its peak
//!     RSS (the kernel's `VmHWM` of the process, polled every 20 ms);
//! (d) backlogs written while cutover is stopped — bulk inserts, bulk updates, bulk deletes,
//!     single-document mixed writes, in `--rounds` interleaved rounds — each drained by the next
//!     `cutover run` (the plan's commit is manual, so the run replicates and waits): process
//!     start → the lane's durable position passes the backlog's last write; with the busy time
//!     per stage that cutover's sampler published meanwhile;
//! (e) lag under steady churn while a manual commit waits for approval, then the approved commit;
//! (f) the write-blocked window of commits under light churn (median of several migrations), and
//!     the reverse start latency of a reversible plan;
//! (g) `cutover verify`'s throughput, only if the binary has that command.
//!
//! Flags: `--docs N` (default 1,000,000), `--quick` (100,000 documents, smaller backlog, shorter
//! churn), `--no-rss-check` (skip the sync at 2× the documents), `--rounds N` (backlog rounds,
//! default 3: each round drains a bulk-insert, a bulk-update, a bulk-delete and a
//! single-document backlog; the summary quotes each kind's median), `--backlog N`,
//! `--only-sync` (seed, (a), (b), (c) only), `--churn-secs S`, `--churn-rate W`, `--commits K`, `--streams N`, `--cache-gb G`,
//! `--cutover PATH`, `--cutover-arg ARG` (repeatable: extra flags for `cutover run`),
//! `--collections N [--per-coll D]` (breadth alone, issue 24: see breadth.rs).

// Child processes are signalled and reaped through libc (each block says why it is sound).
#![allow(unsafe_code)]

#[path = "../../tests/it/common/mod.rs"]
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

mod breadth;
mod churn;
mod commit;
mod copy;
mod data;
mod drain;
mod during;
mod load;
mod procs;
mod report;
mod verify;

use churn::*;
use copy::*;
use data::*;
use drain::*;
use load::*;
use procs::*;
use report::*;

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
    copy_under_churn: bool,
    collections: usize,
    per_coll: u64,
    rounds: usize,
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
        rss_check: true,
        only_sync: false,
        copy_under_churn: false,
        collections: 0,
        per_coll: 200,
        rounds: 3,
        backlog: 200_000,
        churn_secs: 30,
        churn_rate: 5000,
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
            "--no-rss-check" => o.rss_check = false,
            "--rounds" => o.rounds = val(&mut i).parse().expect("--rounds N"),
            "--only-sync" => o.only_sync = true,
            "--copy-under-churn" => o.copy_under_churn = true,
            "--collections" => o.collections = val(&mut i).parse().expect("--collections N"),
            "--per-coll" => o.per_coll = val(&mut i).parse().expect("--per-coll N"),
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
            other => panic!("unknown flag `{other}` (see the top of benches/throughput/main.rs)"),
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

    if opts.collections > 0 {
        // (i) alone: breadth (issue 24).
        breadth::breadth(&opts, dir, &mut rep).await;
        write_summary(&opts, &rep);
        return;
    }

    if opts.copy_under_churn {
        // (h) alone: the copy with change events applied during it, against copy-then-apply.
        during::copy_under_churn(&opts, dir, &mut rep).await;
        write_summary(&opts, &rep);
        return;
    }

    // ---- the copy: (a) naive, (b) ceiling, (c) cutover's sync
    let (seeded, data) = copy::seed(&opts).await;
    let (bytes, ndocs, seed_secs) = (seeded.bytes, seeded.ndocs, seeded.seed_secs);
    let naive = copy::naive(&opts, &seeded).await;
    let ceiling = copy::ceiling(&opts, &data, ndocs).await;
    drop(data);
    let dst = start_rs(&opts, 4096).await;
    let dc = dst.root_client().await;
    let main_plan = plan_file(
        dir,
        "bench-main",
        "[options]\nwrite_blocking = \"source-and-destination\"\nbuild_indexes = \"after-copy\"\n\n\
         [[steps]]\nkind = \"sync\"\n\n[[steps]]\nkind = \"commit\"\napproval = \"manual\"\ntimeout = \"2h\"\n",
    );
    log("(c) cutover sync…");
    let sync = measure_sync(&opts, &seeded.src, &dst, dir, &main_plan, "sync").await;
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

    // ---- (d) backlog drains, then (g) verify of the same data
    let per_coll = (opts.docs / COLLECTIONS as u64) as i64;
    let env = env_for(&seeded.src, &dst);
    let drains = drain::backlogs(&opts, &seeded.src, &dst, &env, dir, &main_plan, per_coll).await;
    let (verify_line, verify_note) = verify::verify(&opts, &env, dir, &main_plan).await;
    drop(dc);
    drop(dst);
    drop(seeded);

    // ---- (e) lag under churn, (f) commit windows and the reverse start, on a small source
    let small = churn::small_source(&opts).await;
    let churned = churn::lag_under_churn(&opts, dir, &small).await;
    let windows = commit::windows(&opts, dir, &small).await;
    let window_median = pct(&mut windows.clone(), 50.0);
    let reverse_latency = commit::reverse_latency(&opts, dir, &small).await;
    let small_docs = small.docs;
    drop(small);

    // ---- RSS flatness at 2×
    let rss2 = if opts.rss_check {
        Some(copy::rss_at_2x(&opts, dir).await)
    } else {
        None
    };

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
        "  cutover vs ceiling: {vs_ceiling:.2}x the time      target <= 1.2x   {}",
        verdict(vs_ceiling <= 1.2)
    ));
    rep.line(format!(
        "  ceiling vs naive:   {:.2}x faster       (the most any copy could gain here)",
        naive.as_secs_f64() / ceiling.as_secs_f64()
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
    rep.line(format!(
        "change application (backlogs of ≥{} events, {} interleaved rounds; ratio = drain rate / the source's accept rate, median of the rounds):",
        opts.backlog, opts.rounds
    ));
    for style in BacklogStyle::ALL {
        let of: Vec<&Drain> = drains.iter().filter(|d| d.style == style).collect();
        let mut ratios: Vec<f64> = of.iter().map(|d| d.ratio()).collect();
        let median = pct(&mut ratios, 50.0);
        let mut drain_rates: Vec<f64> = of.iter().map(|d| d.drain_rate()).collect();
        let mut accept_rates: Vec<f64> = of.iter().map(|d| d.accept_rate()).collect();
        rep.line(format!(
            "  {:<22} drained {:>6.0}/s vs accepted {:>6.0}/s = {median:.2}x (rounds: {})   target >= 0.8x   {}",
            style.name(),
            pct(&mut drain_rates, 50.0),
            pct(&mut accept_rates, 50.0),
            of.iter().map(|d| format!("{:.2}", d.ratio())).collect::<Vec<_>>().join(", "),
            verdict(median >= 0.8)
        ));
        if let Some(d) = of.iter().max_by(|a, b| a.caught_up.cmp(&b.caught_up)) {
            rep.line(format!(
                "      stages (round {}, busiest sample): {}",
                d.round + 1,
                d.stages()
            ));
            rep.line(format!("      {}", d.cpu_line()));
        }
    }
    if let Some(w) = drains.last().and_then(|d| d.window) {
        rep.line(format!("  (then approved: commit window {w} ms)"));
    }
    let mut lags = churned.lags.clone();
    let mut e2e = churned.e2e.clone();
    let (lag_n, e2e_n) = (lags.len(), e2e.len());
    let lag_p50 = pct(&mut lags, 50.0);
    let lag_p99 = pct(&mut lags, 99.0);
    let lag_max = pct(&mut lags, 100.0);
    let e2e_p50 = pct(&mut e2e, 50.0);
    let e2e_p99 = pct(&mut e2e, 99.0);
    rep.line(format!(
        "  steady churn: {:.0} writes/s achieved (target {}/s, {} acknowledged, {} refused while blocked)",
        churned.rate, opts.churn_rate, churned.ok, churned.refused
    ));
    rep.line(format!(
        "  lag_seconds (status doc, sampled every 200 ms, {lag_n} samples): p50 {lag_p50:.3}s p99 {lag_p99:.3}s max {lag_max:.3}s   target p99 < 1s   {}",
        verdict(lag_p99 < 1.0)
    ));
    rep.line(format!(
        "  end-to-end (insert acknowledged → visible on destination, {e2e_n} probes): p50 {e2e_p50:.3}s p99 {e2e_p99:.3}s"
    ));
    rep.line(format!("      stages: {}", churned.stages));
    rep.line(format!("      {}", churned.cpu_line));
    rep.line(format!(
        "  `cutover status --format json` lag_seconds at the end: {}",
        churned
            .status_lag
            .map_or("null".into(), |l| format!("{l:.3}"))
    ));
    rep.line("commit:");
    rep.line(format!(
        "  approved commit under {}/s churn: write-blocked window {} ms; approve → exit {:.2}s",
        opts.churn_rate,
        churned.window.map_or("?".into(), |w| w.to_string()),
        churned.approve_to_exit.as_secs_f64()
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
    write_summary(&opts, &rep);
}

/// Writes the summary to `--out` (default `target/bench-summary.txt`).
fn write_summary(opts: &Opts, rep: &Report) {
    if let Some(parent) = opts.out.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    std::fs::write(&opts.out, &rep.text).expect("write summary");
    println!("(written to {})", opts.out.display());
}
