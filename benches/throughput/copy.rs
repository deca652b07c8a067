//! The copy: the seeded source, (a) the naive copy, (b) the ingest ceiling, (c) cutover's
//! sync from start to can-commit with its peak RSS, and the same sync at 2× the data.

use super::*;

/// The source every copy phase reads.
pub struct Seeded {
    pub src: ReplicaSet,
    pub sc: Client,
    pub bytes: u64,
    pub ndocs: u64,
    pub seed_secs: f64,
}

/// Generates the data set and loads it into a fresh source (indexes included). Returns the
/// data too: (b) inserts the same documents from memory.
pub async fn seed(opts: &Opts) -> (Seeded, Vec<Vec<RawDocumentBuf>>) {
    let t = Instant::now();
    let data = generate(opts.docs, 42);
    let bytes = total_bytes(&data);
    let ndocs: u64 = data.iter().map(|c| c.len() as u64).sum();
    log(format!(
        "generated {ndocs} documents, {:.0} MB, in {:.1}s",
        mb(bytes),
        t.elapsed().as_secs_f64()
    ));
    let src = start_rs(opts, 4096).await;
    let sc = src.root_client().await;
    let t = Instant::now();
    parallel_insert(&sc, &data, opts.streams).await;
    build_indexes(&sc).await;
    let seed_secs = t.elapsed().as_secs_f64();
    log(format!("seeded the source in {seed_secs:.1}s"));
    (
        Seeded {
            src,
            sc,
            bytes,
            ndocs,
            seed_secs,
        },
        data,
    )
}

/// (a) the naive copy into a fresh destination.
pub async fn naive(opts: &Opts, seeded: &Seeded) -> Duration {
    let dst = start_rs(opts, 1024).await;
    let dc = dst.root_client().await;
    log("(a) naive copy…");
    let d = naive_copy(&seeded.sc, &dc).await;
    assert_eq!(
        count_all(&dc).await,
        seeded.ndocs,
        "naive copy lost documents"
    );
    log(format!("(a) naive copy: {:.1}s", d.as_secs_f64()));
    d
}

/// (b) the ingest ceiling: the same documents from memory, parallel unordered inserts.
pub async fn ceiling(opts: &Opts, data: &[Vec<RawDocumentBuf>], ndocs: u64) -> Duration {
    let dst = start_rs(opts, 1024).await;
    let dc = dst.root_client().await;
    log("(b) ingest ceiling…");
    let t = Instant::now();
    parallel_insert(&dc, data, opts.streams).await;
    build_indexes(&dc).await;
    let d = t.elapsed();
    assert_eq!(count_all(&dc).await, ndocs, "ceiling insert lost documents");
    log(format!("(b) ingest ceiling: {:.1}s", d.as_secs_f64()));
    d
}

pub struct SyncResult {
    pub wall: Duration,
    pub rss_mb: f64,
    pub docs: u64,
}

/// (c) `cutover run PLAN --max-steps 1`: the sync from start to can-commit.
pub async fn measure_sync(
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

/// The sync at 2× the documents, on fresh clusters: is the peak RSS flat?
pub async fn rss_at_2x(opts: &Opts, dir: &Path) -> SyncResult {
    let docs2 = opts.docs * 2;
    log(format!("RSS check: sync of {docs2} documents…"));
    let data2 = generate(docs2, 4242);
    let src = start_rs(opts, 4096).await;
    let sc = src.root_client().await;
    parallel_insert(&sc, &data2, opts.streams).await;
    build_indexes(&sc).await;
    drop(data2);
    let dst = start_rs(opts, 4096).await;
    let plan = plan_file(
        dir,
        "bench-rss",
        "[options]\nbuild_indexes = \"after-copy\"\n\n[[steps]]\nkind = \"sync\"\n",
    );
    let r = measure_sync(opts, &src, &dst, dir, &plan, "rss").await;
    log(format!(
        "RSS check: {:.1}s, peak RSS {:.0} MB",
        r.wall.as_secs_f64(),
        r.rss_mb
    ));
    r
}
