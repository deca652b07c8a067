//! `cutover verify` and `cutover verify --repair`.

use crate::base::exit::Exit;
use crate::cli::error::CliError;
use crate::plan::{self, Plan};
use crate::state::record::{Direction, RunRecord, RunState};

use super::*;

pub(super) async fn verify(args: VerifyArgs) -> Exit {
    use crate::verify::{self, SleepWait, VerifyOptions};

    let plan = match load(&args.plan) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let fail = |e: CliError| fail_report(args.plan.format, &plan.name, e);
    let clusters = match connect_both(&args.plan, &plan).await {
        Ok(c) => c,
        Err(e) => return fail(e.into()),
    };
    let max_differences = args.max_differences.unwrap_or_else(|| {
        plan.steps
            .iter()
            .find_map(|s| match s {
                plan::Step::Verify(v) => Some(v.max_differences),
                _ => None,
            })
            .unwrap_or(20)
    });
    // Before the commit the sync has relaxed the destination on purpose (unique, TTL,
    // capped): those are expected differences, not findings. In reverse the new cluster is
    // the source of truth, so compare in the current direction.
    let store =
        crate::state::StateStore::new(&clusters[1].client, &plan.state_database, &plan.name);
    // Whether a runner is live is decided by the state store's clock (`record_live`).
    let (run, raw) = match store.record_live().await {
        Ok(r) => r,
        // `--repair` must know whether a runner writes: it refuses without the record.
        Err(e) if args.repair => return fail(e.into()),
        Err(e) => {
            tracing::warn!(error = %e, "The run record could not be read: comparing in the forward direction, without the sync's relaxations.");
            (RunRecord::default(), None)
        }
    };
    let direction = run.direction;
    let mut relaxed = Vec::new();
    if run.state != RunState::Committed {
        let relax = crate::engine::catalog::RelaxationStore::new(
            store.database().clone(),
            &plan.name,
            direction,
        );
        if let Ok(list) = relax.list().await {
            relaxed = list.into_iter().map(|r| (r.ns, r.index)).collect();
        }
    }
    let opts = VerifyOptions {
        max_differences: max_differences as usize,
        concurrency: args.concurrency.max(1),
        range_docs: args.range_docs.max(1),
        rechecks: args.rechecks,
        restart: args.restart,
        replication: std::sync::Arc::new(SleepWait(args.recheck_delay)),
        relaxed,
        ..VerifyOptions::default()
    };
    if args.repair {
        let run = raw.is_some().then_some(&run);
        return verify_repair(&args, &plan, &clusters, &store, run, opts).await;
    }
    let (a, b) = if direction == Direction::Reverse {
        (&clusters[1].client, &clusters[0].client)
    } else {
        (&clusters[0].client, &clusters[1].client)
    };
    let outcome = verify::run(a, b, &plan, &opts).await;
    print_report(
        args.plan.format,
        &plan.name,
        outcome
            .map(|r| (r.ok, r.to_text(), r.to_json()))
            .map_err(CliError::from),
    )
}

/// `verify --repair` (see `verify::repair`).
pub(super) async fn verify_repair(
    args: &VerifyArgs,
    plan: &Plan,
    clusters: &[crate::cluster::Cluster],
    store: &crate::state::StateStore,
    run: Option<&RunRecord>,
    opts: crate::verify::VerifyOptions,
) -> Exit {
    use crate::ops::repair::{self, IndexPolicy, RepairOptions};
    let fail = |e: CliError| fail_report(args.plan.format, &plan.name, e);
    let lane = store.lane_doc(Direction::Forward).await.ok().flatten();
    let live = run.is_some_and(|r| r.lease_live == Some(true));
    let mode = match repair::gate(&plan.name, run, live, lane.as_ref()) {
        Ok(m) => m,
        Err(message) => return fail(CliError::Refused(message)),
    };
    let ropts = RepairOptions {
        indexes: match args.repair_indexes {
            RepairIndexes::Build => IndexPolicy::Build,
            RepairIndexes::Drop => IndexPolicy::Drop,
        },
        rounds: args.repair_rounds,
        max_ids: args.repair_max.max(1),
        ..RepairOptions::default()
    };
    let (a, b) = (&clusters[0].client, &clusters[1].client);
    let outcome = repair::run(a, b, plan, store, mode, opts, &ropts).await;
    print_report(
        args.plan.format,
        &plan.name,
        outcome
            .map(|r| (r.ok, r.to_text(), r.to_json()))
            .map_err(CliError::from),
    )
}
