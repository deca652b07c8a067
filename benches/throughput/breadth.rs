//! (i) `--collections N`: breadth (issue 24). N collections in N/100 databases, `--per-coll`
//! small documents (~200 bytes) and two secondary indexes each, against:
//! - the **breadth ceiling**: the same documents copied into a single collection by a plain
//!   client with `--streams` (8) parallel connections, plus the same number of index builds
//!   (two per collection, one `createIndexes` each, which also creates the collection) with 8
//!   in flight;
//! - `cutover run PLAN --max-steps 1` (start → can-commit), with its peak RSS;
//! - the write-blocked window of a commit with N collections against one with 5 collections
//!   (each from its own fresh destination), with the phases the window was spent on;
//! - `cutover verify` over the N collections.
//!
//! Rounds are interleaved (ceiling, cutover, window N, window 5 per round); medians are quoted.

use super::*;

const BREADTH_DB_SIZE: usize = 100;

pub fn breadth_ns(c: usize) -> (String, String) {
    (format!("t{:03}", c / BREADTH_DB_SIZE), format!("c{c:05}"))
}

fn small_doc(id: i64, rng: &mut Rng) -> RawDocumentBuf {
    let s = payload(120, rng);
    let mut d = RawDocumentBuf::new();
    d.append("_id", id);
    d.append("k", (rng.next() % 10_000_000) as i64);
    d.append("cat", CATEGORIES[(rng.next() % 8) as usize]);
    d.append(
        "created",
        mongodb::bson::DateTime::from_millis(1_700_000_000_000 + id),
    );
    d.append("s", s);
    d
}

fn docs_of(c: usize, per: u64) -> Vec<RawDocumentBuf> {
    let mut rng = Rng(0x5EED ^ (0x9E37_79B9_7F4A_7C15u64.wrapping_mul(c as u64 + 1)));
    (0..per as i64).map(|i| small_doc(i, &mut rng)).collect()
}

fn two_indexes() -> Vec<Document> {
    vec![
        doc! {"key": {"k": 1}, "name": "k_1"},
        doc! {"key": {"cat": 1, "created": -1}, "name": "cat_1_created_-1"},
    ]
}

/// Seeds `n` collections of `per` documents with two indexes each (8 in flight).
async fn seed(c: &Client, n: usize, per: u64, streams: usize) {
    stream::iter(0..n)
        .map(|i| {
            let c = c.clone();
            async move {
                let (db, coll) = breadth_ns(i);
                let d = c.database(&db);
                d.collection::<RawDocumentBuf>(&coll)
                    .insert_many(docs_of(i, per))
                    .ordered(false)
                    .await
                    .expect("insert_many");
                d.run_command(doc! {"createIndexes": &coll, "indexes": two_indexes()})
                    .await
                    .expect("createIndexes");
            }
        })
        .buffer_unordered(streams.max(1))
        .collect::<Vec<()>>()
        .await;
}

/// The breadth ceiling on a fresh destination: every document into one collection with
/// `streams` parallel `insert_many` of 1000, then `n` `createIndexes` of two indexes (each on
/// its own new collection) with `streams` in flight.
async fn ceiling(opts: &Opts, n: usize, per: u64) -> Duration {
    let dst = start_rs(opts, 4096).await;
    let dc = dst.root_client().await;
    let mut all: Vec<RawDocumentBuf> = Vec::with_capacity(n * per as usize);
    for i in 0..n {
        for (j, d) in docs_of(i, per).into_iter().enumerate() {
            // One collection: the _id must be unique across the former collections.
            let mut x = RawDocumentBuf::new();
            x.append("_id", (i as i64) * 1_000_000 + j as i64);
            for (k, v) in d.iter().flatten().skip(1) {
                x.append(k, v.to_raw_bson());
            }
            all.push(x);
        }
    }
    let t = Instant::now();
    let one = dc.database("ceiling").collection::<RawDocumentBuf>("all");
    stream::iter(all.chunks(1000))
        .map(|ch| {
            let one = one.clone();
            async move {
                one.insert_many(ch)
                    .ordered(false)
                    .await
                    .expect("insert_many");
            }
        })
        .buffer_unordered(opts.streams.max(1))
        .collect::<Vec<()>>()
        .await;
    stream::iter(0..n)
        .map(|i| {
            let dc = dc.clone();
            async move {
                let (db, coll) = breadth_ns(i);
                dc.database(&format!("ceiling_{db}"))
                    .run_command(doc! {"createIndexes": &coll, "indexes": two_indexes()})
                    .await
                    .expect("createIndexes");
            }
        })
        .buffer_unordered(opts.streams.max(1))
        .collect::<Vec<()>>()
        .await;
    t.elapsed()
}

struct Window {
    ms: f64,
    phases: String,
}

/// A `sync` + automatic `commit` plan from `src` into a fresh destination: the window and its
/// phases as the run record stores them.
async fn window(opts: &Opts, dir: &Path, src: &ReplicaSet, tag: &str) -> Window {
    let sc = src.root_client().await;
    unblock(&sc).await;
    let dst = start_rs(opts, 4096).await;
    let dc = dst.root_client().await;
    let plan = plan_file(
        dir,
        tag,
        "[options]\nwrite_blocking = \"source-and-destination\"\n\n\
         [[steps]]\nkind = \"sync\"\n\n[[steps]]\nkind = \"commit\"\n",
    );
    let env = env_for(src, &dst);
    let args = run_args(opts, &plan, &[]);
    let f = spawn_cutover(opts, &args, &env_refs(&env), dir, tag)
        .wait()
        .await;
    unblock(&sc).await;
    f.expect_ok("cutover run (sync + commit)");
    window_of(&dc, tag, &f).await
}

/// The window of a finished run and its phases (`commits.<step>.window_phases`).
async fn window_of(dc: &Client, tag: &str, f: &Finished) -> Window {
    let ms = f.json()["write_blocked_window_ms"].as_f64().unwrap_or(-1.0);
    let phases = run_doc(dc, tag)
        .await
        .and_then(|d| d.get_document("commits").ok().cloned())
        .and_then(|c| {
            c.iter()
                .filter_map(|(_, v)| v.as_document().cloned())
                .find(|c| c.get("window_ms").is_some())
        })
        .and_then(|c| c.get_array("window_phases").ok().cloned())
        .map(|a| {
            a.iter()
                .filter_map(|p| p.as_document())
                .map(|p| {
                    format!(
                        "{} {}",
                        p.get_str("phase").unwrap_or("?"),
                        p.get_i64("ms").unwrap_or(-1)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_else(|| "(no phases recorded)".into());
    Window { ms, phases }
}

pub async fn breadth(opts: &Opts, dir: &Path, rep: &mut Report) {
    let n = opts.collections;
    let per = opts.per_coll;
    let ndocs = n as u64 * per;
    log(format!(
        "(i) breadth: {n} collections in {} databases × {per} documents × 2 indexes = {ndocs} documents",
        n.div_ceil(BREADTH_DB_SIZE)
    ));
    let src = start_rs(opts, 4096).await;
    let sc = src.root_client().await;
    let t = Instant::now();
    seed(&sc, n, per, opts.streams).await;
    let seed_secs = t.elapsed().as_secs_f64();
    log(format!("(i) source seeded in {seed_secs:.1}s"));
    // The 5-collection source for the window baseline.
    let small = start_rs(opts, 1024).await;
    seed(&small.root_client().await, 5, per, opts.streams).await;

    let (mut ceil, mut sync, mut rss, mut wn, mut w5, mut ver) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut phases_n = String::new();
    let mut phases_5 = String::new();
    for round in 0..opts.rounds {
        let c = ceiling(opts, n, per).await.as_secs_f64();
        log(format!("(i) round {}: breadth ceiling {c:.1}s", round + 1));
        ceil.push(c);

        let dst = start_rs(opts, 4096).await;
        let name = format!("bench-breadth-{round}");
        let plan = plan_file(
            dir,
            &name,
            "[options]\nwrite_blocking = \"source-and-destination\"\n\n\
             [[steps]]\nkind = \"sync\"\n\n[[steps]]\nkind = \"commit\"\napproval = \"manual\"\ntimeout = \"2h\"\n",
        );
        let env = env_for(&src, &dst);
        let args = run_args(opts, &plan, &["--max-steps", "1"]);
        let f = spawn_cutover(opts, &args, &env_refs(&env), dir, &name)
            .wait()
            .await;
        f.expect_ok("cutover run --max-steps 1 (breadth sync)");
        let s = f.wall.as_secs_f64();
        log(format!(
            "(i) round {}: cutover start → can-commit {s:.1}s ({:.2}x the ceiling), peak RSS {:.0} MB",
            round + 1,
            s / c,
            f.max_rss_kb as f64 / 1024.0
        ));
        sync.push(s);
        rss.push(f.max_rss_kb as f64 / 1024.0);
        if opts.only_sync {
            // `--only-sync`: time to can-commit and memory only (e.g. at 10,000 collections).
            continue;
        }
        if has_verify(opts) {
            let v = spawn_cutover(
                opts,
                &["verify", &plan, "--format", "json"],
                &env_refs(&env),
                dir,
                &format!("{name}-verify"),
            )
            .wait()
            .await;
            log(format!(
                "(i) round {}: cutover verify {:.1}s, exit {:?}",
                round + 1,
                v.wall.as_secs_f64(),
                v.code
            ));
            assert_eq!(v.code, Some(0), "verify at breadth: {}", tail(&v.stdout, 5));
            ver.push(v.wall.as_secs_f64());
        }
        // The window with N: the commit of this sync (approved, then run again), and the
        // window with 5 collections from a fresh sync + commit (alternating which goes first).
        let commit_n = async {
            approve(opts, &env, &plan);
            let f = spawn_cutover(
                opts,
                &run_args(opts, &plan, &[]),
                &env_refs(&env),
                dir,
                &format!("{name}-commit"),
            )
            .wait()
            .await;
            unblock(&sc).await;
            f.expect_ok("cutover run (the commit at breadth)");
            window_of(&dst.root_client().await, &name, &f).await
        };
        let pair = if round % 2 == 0 {
            let a = commit_n.await;
            let b = window(opts, dir, &small, &format!("bench-w5-{round}")).await;
            (a, b)
        } else {
            let b = window(opts, dir, &small, &format!("bench-w5-{round}")).await;
            let a = commit_n.await;
            (a, b)
        };
        drop(dst);
        log(format!(
            "(i) round {}: window with {n} collections {:.0} ms [{}]; with 5 collections {:.0} ms [{}]",
            round + 1,
            pair.0.ms,
            pair.0.phases,
            pair.1.ms,
            pair.1.phases
        ));
        wn.push(pair.0.ms);
        w5.push(pair.1.ms);
        phases_n = pair.0.phases;
        phases_5 = pair.1.phases;
    }
    let med = |v: &mut Vec<f64>| pct(v, 50.0);
    let rounds_line = format!(
        "    each round: ceiling / cutover (s): {}",
        ceil.iter()
            .zip(sync.iter())
            .map(|(c, s)| format!("{c:.1}/{s:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let (c, s, r) = (med(&mut ceil), med(&mut sync), med(&mut rss));
    let (a, b) = if opts.only_sync {
        (f64::NAN, f64::NAN)
    } else {
        (med(&mut wn), med(&mut w5))
    };
    rep.line(format!(
        "breadth ({n} collections in {} databases × {per} docs × 2 indexes = {ndocs} docs; medians of {} interleaved rounds; machine: {}):",
        n.div_ceil(BREADTH_DB_SIZE),
        opts.rounds,
        machine_note()
    ));
    rep.line(format!(
        "  breadth ceiling (1 collection, {} connections, + {} index builds) {c:>7.1}s",
        opts.streams,
        2 * n
    ));
    rep.line(format!(
        "  cutover start → can-commit                               {s:>7.1}s = {:.2}x the ceiling   target <= 2.0x   {}",
        s / c,
        verdict(s / c <= 2.0)
    ));
    rep.line(rounds_line);
    if !opts.only_sync {
        rep.line(format!(
            "  write-blocked window: {n} collections {a:.0} ms vs 5 collections {b:.0} ms = {:.2}x   target <= 1.5x   {}",
            a / b.max(1.0),
            verdict(a / b.max(1.0) <= 1.5)
        ));
        rep.line(format!("    phases ({n}, last round): {phases_n}"));
        rep.line(format!("    phases (5, last round): {phases_5}"));
        rep.line(format!(
            "    each round (ms), {n} / 5: {}",
            wn.iter()
                .zip(w5.iter())
                .map(|(x, y)| format!("{x:.0}/{y:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    rep.line(format!(
        "  peak RSS of the sync: {r:.0} MB   target < 300 MB   {}",
        verdict(r < 300.0)
    ));
    if !ver.is_empty() {
        rep.line(format!(
            "  cutover verify: {:.1}s ({:.0} docs/s)",
            med(&mut ver),
            ndocs as f64 / med(&mut ver.clone())
        ));
    }
}
