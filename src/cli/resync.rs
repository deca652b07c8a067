//! `cutover resync`: re-copies collections through the live runner.

use crate::base::exit::Exit;
use crate::cli::error::CliError;
use crate::state::record::Direction;

use super::*;

/// `resync` (see `crate::ops::resync_request` and `engine::resync`).
pub(super) async fn resync(args: ResyncArgs, quiet: bool) -> Exit {
    use crate::ops::resync_request::{self, ResyncReport, Waited};

    let plan = match load(&args.plan) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let fail = |e: CliError| fail_report(args.plan.format, &plan.name, e);
    if args.ns.is_empty() && args.ns_regex.is_empty() {
        return fail(CliError::Usage(
            "name a collection with `--ns db.coll` or `--ns-regex DB.REGEX`".into(),
        ));
    }
    let clusters = match connect_both(&args.plan, &plan).await {
        Ok(c) => c,
        Err(e) => return fail(e.into()),
    };
    let store =
        crate::state::StateStore::new(&clusters[1].client, &plan.state_database, &plan.name);
    // Whether a runner is live is decided by the state store's clock (`record_live`).
    let (run, raw) = match store.record_live().await {
        Ok(r) => r,
        Err(e) => return fail(e.into()),
    };
    let live = run.lease_live == Some(true);
    let run = raw.is_some().then_some(&run);
    let lane = store.lane_doc(Direction::Forward).await.ok().flatten();
    let lane = match resync_request::gate(&plan.name, run, live, lane.as_ref()) {
        Ok(l) => l,
        Err(message) => return fail(CliError::Refused(message)),
    };
    let namespaces =
        match resync_request::resolve(&clusters[0].client, &plan, &args.ns, &args.ns_regex).await {
            Ok(n) => n,
            Err(e) => return fail(e.into()),
        };
    let batch = match resync_request::request(&store, &lane, &namespaces).await {
        Ok(b) => b,
        Err(e) => return fail(e.into()),
    };
    if !quiet {
        err(&format!(
            "Requested a resync of {} (served by the live runner's lane); waiting.",
            namespaces
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let waited = resync_request::wait(&store, &batch, args.timeout, |views| {
        if !quiet {
            for v in views {
                err(&format!("  {}", v.to_text()));
            }
        }
    })
    .await;
    let (views, problem) = match waited {
        Ok(Waited::Finished(v)) => (v, None),
        Ok(Waited::RunnerGone(v)) => (
            v,
            Some(
                "the runner stopped before the resync finished; the request stays recorded and the next                  `cutover run` does it from scratch (`cutover status` shows it)"
                    .to_string(),
            ),
        ),
        Ok(Waited::TimedOut(v)) => (
            v,
            Some(format!(
                "the resync did not finish within {}; it goes on in the runner (`cutover status` shows its progress)",
                humantime::format_duration(args.timeout)
            )),
        ),
        Err(e) => return fail(e.into()),
    };
    let report = ResyncReport {
        ok: problem.is_none()
            && views
                .iter()
                .all(|v| v.state == crate::state::states::ResyncState::Done),
        plan: plan.name.clone(),
        resyncs: views,
    };
    match args.plan.format {
        Format::Text => out(&report.to_text()),
        Format::Json => out(&report.to_json()),
    }
    if let Some(p) = problem {
        err(&format!("error: {p}"));
    }
    if report.ok {
        Exit::Ok
    } else {
        Exit::Failed
    }
}
