//! `cutover pause` / `cutover resume`.

use crate::base::exit::Exit;

use super::*;

pub(super) async fn pause(args: StatusArgs, paused: bool) -> Exit {
    let plan = match load(&args.plan) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let dest = match connect_destination(&args.plan, &plan).await {
        Ok(c) => c,
        Err(e) => return e,
    };
    let store = crate::state::StateStore::new(&dest.client, &plan.state_database, &plan.name);
    match crate::ops::service::set_pause(&store, paused).await {
        Ok(message) => {
            out(&message);
            Exit::Ok
        }
        Err(e) => fail(e),
    }
}
