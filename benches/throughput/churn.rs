//! (e) lag under steady churn while a manual commit waits for approval, then the approved
//! commit; the small source that (e) and (f) share.

use super::*;

/// A small seeded source for the churn and commit phases.
pub struct SmallSource {
    pub src: ReplicaSet,
    pub sc: Client,
    /// The application user's client (refused while writes are blocked).
    pub app: Client,
    pub docs: u64,
    pub per_coll: i64,
}

pub async fn small_source(opts: &Opts) -> SmallSource {
    let docs = if opts.quick { 8_000 } else { 20_000 };
    let small = generate(docs, 7);
    let src = start_rs(opts, 1024).await;
    let sc = src.root_client().await;
    parallel_insert(&sc, &small, opts.streams).await;
    build_indexes(&sc).await;
    // One connection per churn task: with the default pool of 10, majority-acknowledged
    // writes of a few milliseconds each capped the churn near 1,000 writes/s.
    let mut o = mongodb::options::ClientOptions::parse(src.app_uri())
        .await
        .expect("app uri");
    o.max_pool_size = Some(256);
    let app = Client::with_options(o).expect("app client");
    SmallSource {
        src,
        sc,
        app,
        docs,
        per_coll: (docs / COLLECTIONS as u64) as i64,
    }
}

pub struct ChurnResult {
    /// Acknowledged and refused writes, achieved rate per second.
    pub ok: u64,
    pub refused: u64,
    pub rate: f64,
    /// `lag_seconds` of the status document, sampled every 200 ms.
    pub lags: Vec<f64>,
    /// Insert acknowledged → visible on the destination, seconds.
    pub e2e: Vec<f64>,
    /// `cutover status --format json`'s lag at the end.
    pub status_lag: Option<f64>,
    pub window: Option<i64>,
    pub approve_to_exit: Duration,
    /// Where the time went during the churn: CPU of each process, cutover's stages.
    pub cpu_line: String,
    pub stages: String,
}

pub async fn lag_under_churn(opts: &Opts, dir: &Path, small: &SmallSource) -> ChurnResult {
    let dst = start_rs(opts, 1024).await;
    let dc = dst.root_client().await;
    let churn_plan = plan_file(
        dir,
        "bench-churn",
        "[options]\nwrite_blocking = \"source-and-destination\"\n\n\
         [[steps]]\nkind = \"sync\"\n\n[[steps]]\nkind = \"commit\"\napproval = \"manual\"\ntimeout = \"2h\"\n",
    );
    let env = env_for(&small.src, &dst);
    let args = run_args(opts, &churn_plan, &[]);
    let churn_proc = spawn_cutover(opts, &args, &env_refs(&env), dir, "churn");
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
    let pids = [
        churn_pid,
        mongod_pid(&small.src),
        mongod_pid(&dst),
        std::process::id() as i32,
    ];
    let cpu0 = pids.map(|p| cpu_secs(p).unwrap_or(0.0));
    let churn_started = Instant::now();
    let churn = start_churn(
        small.app.clone(),
        small.per_coll,
        opts.churn_rate,
        2_000_000_000,
    );
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
    let cpu = {
        let mut c = pids.map(|p| cpu_secs(p).unwrap_or(0.0));
        for (a, b) in c.iter_mut().zip(cpu0) {
            *a -= b;
        }
        c
    };
    let wall = churn_started.elapsed().as_secs_f64();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let cpu_line = format!(
        "CPU over the churn's {wall:.0}s: cutover {:.1}s ({:.0}% of a core), source mongod {:.1}s ({:.0}%), destination mongod {:.1}s ({:.0}%), the generator (this bench) {:.1}s ({:.0}%); together {:.0}% of the machine's {cores} cores",
        cpu[0],
        100.0 * cpu[0] / wall,
        cpu[1],
        100.0 * cpu[1] / wall,
        cpu[2],
        100.0 * cpu[2] / wall,
        cpu[3],
        100.0 * cpu[3] / wall,
        100.0 * cpu.iter().sum::<f64>() / (wall * cores)
    );
    let stages = stages_of(
        run_doc(&dc, "bench-churn")
            .await
            .and_then(|d| d.get_document("insight").ok().cloned())
            .as_ref(),
    );
    log(format!("(e) {cpu_line}"));
    log(format!("(e) stages: {stages}"));
    probe_stop.store(true, Ordering::Relaxed);
    let e2e = probe.await.expect("probe");
    let status_json = Command::new(&opts.cutover)
        .args(["status", &churn_plan, "--format", "json"])
        .envs(env.iter().map(|(a, b)| (a.clone(), b.clone())))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    let status_lag = serde_json::from_str::<serde_json::Value>(&status_json)
        .ok()
        .and_then(|v| v["lag_seconds"].as_f64());
    log(format!(
        "(e) lag p50 {:.3}s p99 {:.3}s ({} samples); approving…",
        pct(&mut lags.clone(), 50.0),
        pct(&mut lags.clone(), 99.0),
        lags.len()
    ));
    let t = Instant::now();
    approve(opts, &env, &churn_plan);
    let churn_done = churn_wait.await.expect("churn wait");
    let approve_to_exit = t.elapsed();
    let (ok, refused, rate) = churn.stop().await;
    churn_done.expect_ok("cutover run (manual commit under churn)");
    let window = churn_done.json()["write_blocked_window_ms"].as_i64();
    log(format!(
        "(e) approved commit under churn: window {window:?} ms, approve→exit {:.1}s",
        approve_to_exit.as_secs_f64()
    ));
    ChurnResult {
        ok,
        refused,
        rate,
        lags,
        e2e,
        status_lag,
        window,
        approve_to_exit,
        cpu_line,
        stages,
    }
}
