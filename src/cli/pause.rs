//! `cutover pause` / `cutover resume`.

use crate::base::exit::Exit;

use super::*;

pub(super) async fn pause(args: StatusArgs, paused: bool) -> Exit {
    let (_plan, store) = match open_store(&args.plan).await {
        Ok(ps) => ps,
        Err(e) => return e,
    };
    match crate::ops::service::set_pause(&store, paused).await {
        Ok(message) => {
            out(&message);
            Exit::Ok
        }
        Err(e) => fail(e),
    }
}
