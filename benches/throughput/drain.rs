//! (d) backlog drains: a backlog written while cutover is stopped, drained by the next
//! `cutover run` (the plan's commit is manual, so it replicates and waits). The drain time is
//! from process start until the lane's durable position passes the backlog's last write.

use super::*;

pub struct Drain {
    pub style: BacklogStyle,
    pub round: usize,
    pub events: u64,
    pub accept: Duration,
    pub caught_up: Duration,
    pub applied: i64,
    /// The run document's `insight` (rates and busy time per stage over the sampler's
    /// window) with the highest apply rate seen while draining.
    pub insight: Option<Document>,
    /// CPU seconds used during the drain (process start → caught up) by cutover, the
    /// destination's mongod and the source's mongod.
    pub cpu: [f64; 3],
    /// CPU seconds the source's mongod used while accepting the backlog (the application's
    /// writes): with `cpu[1]`, what one event costs each side.
    pub accept_cpu: f64,
    /// The commit approved after the last backlog: its write-blocked window.
    pub window: Option<i64>,
}

impl Drain {
    pub fn accept_rate(&self) -> f64 {
        self.events as f64 / self.accept.as_secs_f64()
    }
    pub fn drain_rate(&self) -> f64 {
        self.events as f64 / self.caught_up.as_secs_f64()
    }
    pub fn ratio(&self) -> f64 {
        self.drain_rate() / self.accept_rate()
    }
    /// "cutover 1.2 s (60% of a core), destination mongod ..., of 2 cores × wall".
    pub fn cpu_line(&self) -> String {
        let wall = self.caught_up.as_secs_f64();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let [c, d, s] = self.cpu;
        format!(
            "CPU over the drain's {wall:.1}s: cutover {c:.1}s ({:.0}% of a core), destination mongod {d:.1}s ({:.0}%), source mongod {s:.1}s ({:.0}%); together {:.0}% of the machine's {cores} cores",
            100.0 * c / wall,
            100.0 * d / wall,
            100.0 * s / wall,
            100.0 * (c + d + s) / (wall * cores)
        ) + &format!(
            "; mongod CPU per event: {:.0} µs to accept on the source, {:.0} µs to apply on the destination ({:.2}x)",
            1e6 * self.accept_cpu / self.events.max(1) as f64,
            1e6 * d / self.events.max(1) as f64,
            d / self.accept_cpu.max(1e-9)
        ) + &format!(
            "; were the {cores} cores the two mongods' alone (cutover's CPU free), they would apply {:.0} events/s = {:.2}x the accept rate: cutover reached {:.0}% of that",
            self.mongod_bound(),
            self.mongod_bound() / self.accept_rate(),
            100.0 * self.drain_rate() / self.mongod_bound()
        )
    }

    /// Events per second the two mongods could sustain through a drain with every core to
    /// themselves: cores / their CPU seconds per event during this drain.
    pub fn mongod_bound(&self) -> f64 {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let per_event = (self.cpu[1] + self.cpu[2]) / self.events.max(1) as f64;
        cores / per_event.max(1e-12)
    }

    /// "source_read 12%, decode 3%, ... (in 40000/s, out 39000/s)" from the insight.
    pub fn stages(&self) -> String {
        stages_of(self.insight.as_ref())
    }
}

/// "source_read 12%, decode 3%, ... (in 40000/s, out 39000/s, bottleneck ...)" from a run
/// document's `insight`.
pub fn stages_of(insight: Option<&Document>) -> String {
    let Some(i) = insight else {
        return "no insight sampled".into();
    };
    let stages: Vec<String> = i
        .get_array("stages")
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_document())
                .map(|s| {
                    format!(
                        "{} {:.0}%",
                        s.get_str("stage").unwrap_or("?"),
                        s.get_f64("busy_fraction").unwrap_or(0.0) * 100.0
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    format!(
        "{} (in {:.0}/s, out {:.0}/s, bottleneck {})",
        stages.join(", "),
        i.get_f64("events_read_per_second").unwrap_or(0.0),
        i.get_f64("events_applied_per_second").unwrap_or(0.0),
        i.get_str("bottleneck").unwrap_or("?")
    )
}

/// Writes and drains each backlog kind in turn, `opts.rounds` times interleaved (insert,
/// update, delete, single; insert, ...), on the synced `main_plan`; the last drain is
/// followed by the approved commit (the counts must then match).
pub async fn backlogs(
    opts: &Opts,
    src: &ReplicaSet,
    dst: &ReplicaSet,
    env: &[(String, String)],
    dir: &Path,
    main_plan: &str,
    per_coll: i64,
) -> Vec<Drain> {
    let (sc, dc) = (&src.root_client().await, &dst.root_client().await);
    let (src_pid, dst_pid) = (mongod_pid(src), mongod_pid(dst));
    let mut drains: Vec<Drain> = Vec::new();
    let total = opts.rounds * BacklogStyle::ALL.len();
    for k in 0..total {
        let (round, style) = (
            k / BacklogStyle::ALL.len(),
            BacklogStyle::ALL[k % BacklogStyle::ALL.len()],
        );
        let last = k + 1 == total;
        log(format!(
            "(d) round {}: writing a {} backlog of ≥{} events…",
            round + 1,
            style.name(),
            opts.backlog
        ));
        let lane_before = lane_doc(dc, "bench-main")
            .await
            .and_then(|l| l.get_i64("events_applied").ok())
            .unwrap_or(0);
        let accept_cpu0 = cpu_secs(src_pid).unwrap_or(0.0);
        let (events, accept) = match style {
            BacklogStyle::Single => {
                write_backlog_single(sc, round, per_coll, opts.backlog, 8).await
            }
            kind => write_backlog(sc, kind, round, per_coll, opts.backlog, 4).await,
        };
        let accept_cpu = cpu_secs(src_pid).unwrap_or(0.0) - accept_cpu0;
        let backlog_end = last_write(sc).await;
        log(format!(
            "(d) source accepted {events} events in {:.1}s ({:.0}/s); draining…",
            accept.as_secs_f64(),
            events as f64 / accept.as_secs_f64()
        ));
        // The insight a previous process published would pass for this drain's.
        let _ = dc
            .database(STATE_DB)
            .collection::<Document>("runs")
            .update_one(doc! {"_id": "bench-main"}, doc! {"$unset": {"insight": ""}})
            .await;
        let args = run_args(opts, main_plan, &[]);
        let p = spawn_cutover(opts, &args, &env_refs(env), dir, &format!("drain-{k}"));
        let (pid, started) = (p.pid, p.started);
        let cpu0 = [
            0.0,
            cpu_secs(dst_pid).unwrap_or(0.0),
            cpu_secs(src_pid).unwrap_or(0.0),
        ];
        let waiter = tokio::spawn(p.wait());
        let mut insight: Option<Document> = None;
        let caught_up = loop {
            if let Some(i) = run_doc(dc, "bench-main")
                .await
                .and_then(|d| d.get_document("insight").ok().cloned())
            {
                let rate = |d: &Document| d.get_f64("events_applied_per_second").unwrap_or(0.0);
                if insight.as_ref().is_none_or(|best| rate(&i) > rate(best)) {
                    insight = Some(i);
                }
            }
            if let Some(pos) = lane_doc(dc, "bench-main")
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
        let cpu = [
            cpu_secs(pid).unwrap_or(0.0) - cpu0[0],
            cpu_secs(dst_pid).unwrap_or(0.0) - cpu0[1],
            cpu_secs(src_pid).unwrap_or(0.0) - cpu0[2],
        ];
        let lane_after = lane_doc(dc, "bench-main")
            .await
            .and_then(|l| l.get_i64("events_applied").ok())
            .unwrap_or(0);
        let mut window = None;
        if !last {
            // Stop it (Ctrl-C): it checkpoints and exits; the next run resumes.
            // SAFETY: signals our own child.
            unsafe { libc::kill(pid, libc::SIGINT) };
            let _ = waiter.await.expect("drain wait");
        } else {
            approve(opts, env, main_plan);
            let f = waiter.await.expect("drain wait");
            f.expect_ok("cutover run (the approved commit after the backlogs)");
            window = f.json()["write_blocked_window_ms"].as_i64();
            assert_eq!(
                count_all(dc).await,
                count_all(sc).await,
                "the destination's counts differ from the source after the commit"
            );
        }
        let d = Drain {
            style,
            round,
            events,
            accept,
            caught_up,
            applied: lane_after - lane_before,
            insight,
            cpu,
            accept_cpu,
            window,
        };
        log(format!(
            "(d) {} backlog caught up in {:.1}s ({:.0} events/s, {:.2}x the source's rate; lane +{} events); {}",
            style.name(),
            caught_up.as_secs_f64(),
            d.drain_rate(),
            d.ratio(),
            d.applied,
            d.stages()
        ));
        log(format!("(d)   {}", d.cpu_line()));
        drains.push(d);
    }
    drains
}
