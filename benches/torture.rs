//! The torture soak (issue 9): not a test. Runs seeds of `tests/it/torture/workload.rs` one after
//! another until `--minutes` have passed (or `--runs` seeds), alternating forward and
//! reversible plans unless told, and prints each seed's report and the totals.
//!
//!   cargo bench --bench torture --features test-hooks -- --seed 1 --minutes 30
//!   cargo bench --bench torture --features test-hooks -- --seed 7 --runs 1 --reversible --faults kill,crash
//!
//! Flags: `--seed N` (first seed; default random), `--minutes M` (default 10), `--runs K`
//! (stop after K seeds), `--forward` / `--reversible` (default: alternate), `--faults LIST`
//! (kill, crash, stepdown, proxy, failcommand, all, none; default `kill,crash,failcommand,proxy`,
//! with `stepdown` on every fourth seed), `--features LIST` (ddl, rename-in-copy, txn,
//! txn-large, dotted, big, unique, filter, all, none; `-name` turns one off; default all),
//! `--apply-secs S` (generator time before each approval, default 15), `--seed-docs N`
//! (default 20000), `--bulk-writes` (the generator also writes into `ta.bulk` while it is
//! copied), `--logs DIR` (keep every runner log under DIR/seed-N).

// The integration tests' helpers signal and set up child processes through libc.
#![allow(unsafe_code)]

#[path = "../tests/it/common/mod.rs"]
mod common;
#[path = "../tests/it/torture/workload.rs"]
mod workload;

use std::time::{Duration, Instant};

use workload::{Config, Faults, Features};

fn main() {
    let mut seed: u64 = rand::random::<u32>() as u64;
    let mut minutes = 10.0f64;
    let mut runs: Option<u64> = None;
    let mut direction: Option<bool> = None;
    let mut faults: Option<Faults> = None;
    let mut features = Features::ALL;
    let mut apply_secs = 15;
    let mut seed_docs = 20_000;
    // The generator also writes into `ta.bulk` while it is copied (issue 20).
    let mut bulk_writes = false;
    let mut logs: Option<std::path::PathBuf> = None;
    let mut args = std::env::args().skip(1);
    let fail = |m: String| -> ! {
        eprintln!("torture: {m}");
        std::process::exit(2)
    };
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .unwrap_or_else(|| fail(format!("{a} needs a value")))
        };
        match a.as_str() {
            "--bench" => {}
            "--seed" => {
                seed = val()
                    .parse()
                    .unwrap_or_else(|e| fail(format!("--seed: {e}")))
            }
            "--minutes" => {
                minutes = val()
                    .parse()
                    .unwrap_or_else(|e| fail(format!("--minutes: {e}")))
            }
            "--runs" => {
                runs = Some(
                    val()
                        .parse()
                        .unwrap_or_else(|e| fail(format!("--runs: {e}"))),
                )
            }
            "--forward" => direction = Some(false),
            "--reversible" => direction = Some(true),
            "--faults" => faults = Some(Faults::parse(&val()).unwrap_or_else(|e| fail(e))),
            "--features" => {
                features = Features::parse(features, &val()).unwrap_or_else(|e| fail(e))
            }
            "--apply-secs" => {
                apply_secs = val()
                    .parse()
                    .unwrap_or_else(|e| fail(format!("--apply-secs: {e}")))
            }
            "--seed-docs" => {
                seed_docs = val()
                    .parse()
                    .unwrap_or_else(|e| fail(format!("--seed-docs: {e}")))
            }
            "--logs" => logs = Some(val().into()),
            "--bulk-writes" => bulk_writes = true,
            other => fail(format!("unknown flag {other}")),
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let started = Instant::now();
    let budget = Duration::from_secs_f64(minutes * 60.0);
    let (mut n, mut failed, mut ops, mut ddl, mut injected) = (0u64, Vec::new(), 0, 0, 0);
    println!("torture soak: first seed {seed}, {minutes} minutes");
    while started.elapsed() < budget && runs.is_none_or(|r| n < r) {
        let s = seed + n;
        let reversible = direction.unwrap_or(n % 2 == 1);
        let f = faults.unwrap_or(Faults {
            kill: true,
            crash: true,
            fail_command: true,
            proxy: n % 4 != 3,
            stepdown: n % 4 == 3,
        });
        let mut cfg = Config::new(s, reversible, f, features);
        cfg.apply_secs = apply_secs;
        cfg.seed_docs = seed_docs;
        cfg.bulk_writes = bulk_writes;
        cfg.pre_ops = 1000;
        cfg.limit = Duration::from_secs(900);
        cfg.log_dir = logs.as_ref().map(|d| d.join(format!("seed-{s}")));
        let r = rt.block_on(workload::run(&cfg));
        println!("{}", r.summary());
        ops += r.ops.total();
        ddl += r.ddl.total();
        injected += r.faults.total();
        if !r.passed() {
            failed.push(s);
        }
        n += 1;
    }
    println!(
        "torture soak: {n} seeds ({seed}..{}) in {:.1} min: {ops} operations, {ddl} DDL, {injected} faults; {} failed{}",
        seed + n.saturating_sub(1),
        started.elapsed().as_secs_f64() / 60.0,
        failed.len(),
        if failed.is_empty() { String::new() } else { format!(": seeds {failed:?}") }
    );
    if !failed.is_empty() {
        std::process::exit(1);
    }
}
