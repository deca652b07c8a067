//! `cutover status`: the migration's state from the state store.

use crate::base::exit::Exit;
use crate::cli::error::CliError;

use super::*;

pub(super) async fn status(args: StatusArgs) -> Exit {
    let plan = match load(&args.plan) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let dest = match connect_destination(&args.plan, &plan).await {
        Ok(c) => c,
        Err(e) => return e,
    };
    let store = crate::state::StateStore::new(&dest.client, &plan.state_database, &plan.name);
    let view = match crate::ops::status::load_view(&store, &plan).await {
        Ok(v) => v,
        Err(e) => return fail(CliError::Failed(e.to_string())),
    };
    match args.plan.format {
        Format::Json => out(&serde_json::to_string_pretty(&view).unwrap_or_default()),
        Format::Text => out(&view.to_text()),
    }
    Exit::Ok
}
