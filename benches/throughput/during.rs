//! (h) `--copy-under-churn`: the copy while an application writes, with change events applied
//! during the copy (`apply_during_copy = true`) against copy-then-apply (`false`) on the same
//! source, in interleaved rounds (issue 20): events applied during the copy, the held-event
//! peak, the time from the last range to can-commit, and start → can-commit for each.

use super::*;

struct Round {
    wall: f64,
    to_can_commit: f64,
    during: i64,
    held_peak: i64,
    writes_per_s: f64,
    oplog_mb_per_s: f64,
}

async fn oplog_bytes(c: &Client) -> i64 {
    let s = c
        .database("local")
        .run_command(doc! {"collStats": "oplog.rs"})
        .await
        .expect("oplog stats");
    match s.get("size") {
        Some(mongodb::bson::Bson::Int32(v)) => i64::from(*v),
        Some(mongodb::bson::Bson::Int64(v)) => *v,
        Some(mongodb::bson::Bson::Double(v)) => *v as i64,
        _ => 0,
    }
}

async fn one(
    opts: &Opts,
    dir: &Path,
    src: &ReplicaSet,
    app: &Client,
    per_coll: i64,
    during: bool,
    round: usize,
) -> Round {
    let dst = start_rs(opts, 4096).await;
    let name = format!("bench-dc-{}-{round}", if during { "on" } else { "off" });
    let plan = plan_file(
        dir,
        &name,
        &format!(
            "[options]\nbuild_indexes = \"after-copy\"\napply_during_copy = {during}\n\n[[steps]]\nkind = \"sync\"\n"
        ),
    );
    let sc = src.root_client().await;
    let before = oplog_bytes(&sc).await;
    let churn = start_churn(
        app.clone(),
        per_coll,
        opts.churn_rate,
        1_000_000_000 + round as i64 * 100_000_000 + i64::from(during) * 50_000_000,
    );
    let env = env_for(src, &dst);
    let args = run_args(opts, &plan, &["--max-steps", "1"]);
    let p = spawn_cutover(opts, &args, &env_refs(&env), dir, &name);
    let f = p.wait().await;
    let exited = mongodb::bson::DateTime::now();
    let (ok, _refused, rate) = churn.stop().await;
    let after = oplog_bytes(&sc).await;
    f.expect_ok("cutover run --max-steps 1 (sync under churn)");
    let dc = dst.root_client().await;
    let lane = dc
        .database(STATE_DB)
        .collection::<Document>("lanes")
        .find_one(doc! {"_id": format!("{name}/forward")})
        .await
        .expect("lane")
        .expect("lane record");
    let finished = lane.get_datetime("copy_finished").expect("copy_finished");
    let wall = f.wall.as_secs_f64();
    let r = Round {
        wall,
        to_can_commit: (exited.timestamp_millis() - finished.timestamp_millis()) as f64 / 1000.0,
        during: lane.get_i64("events_applied_during_copy").unwrap_or(0),
        held_peak: lane.get_i64("held_peak_bytes").unwrap_or(0),
        writes_per_s: rate,
        // The oplog is capped: growth is a lower bound once it is full.
        oplog_mb_per_s: mb((after - before).max(0) as u64) / wall,
    };
    log(format!(
        "(h) round {} {}: {:.1}s start → can-commit, {:.1}s last range → can-commit, {} events applied during the copy, held peak {:.1} MB, churn {ok} writes ({rate:.0}/s)",
        round + 1,
        if during { "during" } else { "then" },
        r.wall,
        r.to_can_commit,
        r.during,
        mb(r.held_peak as u64),
    ));
    r
}

/// Runs `rounds` interleaved pairs on one seeded source and writes the summary lines.
pub async fn copy_under_churn(opts: &Opts, dir: &Path, rep: &mut Report) {
    let data = generate(opts.docs, 99);
    let ndocs: u64 = data.iter().map(|c| c.len() as u64).sum();
    let bytes = total_bytes(&data);
    let src = start_rs(opts, 4096).await;
    let sc = src.root_client().await;
    parallel_insert(&sc, &data, opts.streams).await;
    build_indexes(&sc).await;
    drop(data);
    let mut o = mongodb::options::ClientOptions::parse(src.app_uri())
        .await
        .expect("app uri");
    o.max_pool_size = Some(256);
    let app = Client::with_options(o).expect("app client");
    let per_coll = (opts.docs / COLLECTIONS as u64) as i64;
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for round in 0..opts.rounds {
        // Interleaved, alternating which goes first.
        if round % 2 == 0 {
            on.push(one(opts, dir, &src, &app, per_coll, true, round).await);
            off.push(one(opts, dir, &src, &app, per_coll, false, round).await);
        } else {
            off.push(one(opts, dir, &src, &app, per_coll, false, round).await);
            on.push(one(opts, dir, &src, &app, per_coll, true, round).await);
        }
    }
    let med = |v: &[Round], f: fn(&Round) -> f64| {
        let mut x: Vec<f64> = v.iter().map(f).collect();
        pct(&mut x, 50.0)
    };
    rep.line(format!(
        "copy under churn ({ndocs} docs, {:.0} MB, churn target {}/s; medians of {} interleaved rounds):",
        mb(bytes),
        opts.churn_rate,
        opts.rounds
    ));
    for (label, v) in [
        ("events applied during the copy", &on),
        ("copy, then apply (baseline)", &off),
    ] {
        rep.line(format!(
            "  {label:<32} start → can-commit {:>6.1}s   last range → can-commit {:>6.2}s   applied during copy {:>8.0}   held peak {:>6.1} MB   churn {:.0} writes/s, oplog ≥ {:.2} MB/s",
            med(v, |r| r.wall),
            med(v, |r| r.to_can_commit),
            med(v, |r| r.during as f64),
            med(v, |r| r.held_peak as f64) / (1024.0 * 1024.0),
            med(v, |r| r.writes_per_s),
            med(v, |r| r.oplog_mb_per_s),
        ));
    }
    rep.line(format!(
        "  start → can-commit, baseline / during: {:.2}x; last range → can-commit, baseline / during: {:.1}x",
        med(&off, |r| r.wall) / med(&on, |r| r.wall),
        med(&off, |r| r.to_can_commit) / med(&on, |r| r.to_can_commit).max(0.001),
    ));
}
