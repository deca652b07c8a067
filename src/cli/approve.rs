//! `cutover approve`: approves a manual `commit`.

use crate::base::exit::Exit;
use crate::cli::error::CliError;

use super::*;

pub(super) async fn approve(args: ApproveArgs) -> Exit {
    let plan = match load(&args.plan) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let has_manual = plan.steps.iter().any(
        |s| matches!(s, crate::plan::Step::Commit(c) if c.approval == crate::plan::Approval::Manual),
    );
    if !has_manual {
        return fail(CliError::Usage(
            "the plan has no `commit` step with `approval = \"manual\"`; nothing to approve".into(),
        ));
    }
    let dest = match connect_destination(&args.plan, &plan).await {
        Ok(c) => c,
        Err(e) => return e,
    };
    let store = crate::state::StateStore::new(&dest.client, &plan.state_database, &plan.name);
    match crate::ops::service::approve(&plan, &store, args.step, &args.note).await {
        Ok((_, message)) => {
            out(&message);
            Exit::Ok
        }
        Err(e) => fail(e),
    }
}
