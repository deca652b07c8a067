//! (f) the write-blocked window of commits under light churn (several migrations of the small
//! source), and the reverse start latency of a reversible plan.

use super::*;

/// The windows (ms) of `opts.commits` sync + commit runs under ~100 writes/s.
pub async fn windows(opts: &Opts, dir: &Path, small: &SmallSource) -> Vec<f64> {
    let mut windows = Vec::new();
    for k in 0..opts.commits {
        unblock(&small.sc).await;
        let dst = start_rs(opts, 1024).await;
        let name = format!("bench-commit-{k}");
        let plan = plan_file(
            dir,
            &name,
            "[options]\nwrite_blocking = \"source-and-destination\"\n\n\
             [[steps]]\nkind = \"sync\"\n\n[[steps]]\nkind = \"commit\"\n",
        );
        let churn = start_churn(
            small.app.clone(),
            small.per_coll,
            100,
            3_000_000_000 + k as i64 * 100_000_000,
        );
        let env = env_for(&small.src, &dst);
        let args = run_args(opts, &plan, &[]);
        let f = spawn_cutover(opts, &args, &env_refs(&env), dir, &name)
            .wait()
            .await;
        let _ = churn.stop().await;
        f.expect_ok("cutover run (sync + commit under light churn)");
        let w = f.json()["write_blocked_window_ms"].as_i64().unwrap_or(-1);
        log(format!("(f) commit {k}: write-blocked window {w} ms"));
        windows.push(w as f64);
    }
    windows
}

/// A reversible plan up to its `reverse` step under light churn: the recorded latency (ms)
/// from the reverse step's start to its change stream being open.
pub async fn reverse_latency(opts: &Opts, dir: &Path, small: &SmallSource) -> Option<i64> {
    unblock(&small.sc).await;
    let dst = start_rs(opts, 1024).await;
    let dcr = dst.root_client().await;
    let rplan = plan_file(
        dir,
        "bench-reverse",
        "[options]\nreversible = true\nwrite_blocking = \"source-and-destination\"\n\n\
         [[steps]]\nkind = \"sync\"\n\n[[steps]]\nkind = \"validate-indexes\"\n\n[[steps]]\nkind = \"commit\"\n\n\
         [[steps]]\nkind = \"reverse\"\n\n[[steps]]\nkind = \"commit\"\napproval = \"manual\"\ntimeout = \"2h\"\n",
    );
    let churn = start_churn(small.app.clone(), small.per_coll, 100, 4_000_000_000);
    let env = env_for(&small.src, &dst);
    let args = run_args(opts, &rplan, &["--max-steps", "4"]);
    let f = spawn_cutover(opts, &args, &env_refs(&env), dir, "reverse")
        .wait()
        .await;
    let _ = churn.stop().await;
    f.expect_ok("cutover run (reversible plan up to reverse)");
    let latency = run_doc(&dcr, "bench-reverse")
        .await
        .and_then(|d| d.get_i64("reverse_start_latency_ms").ok());
    log(format!("reverse start latency: {latency:?} ms"));
    latency
}
