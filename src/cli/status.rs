//! `cutover status`: the migration's state from the state store.

use crate::base::exit::Exit;
use crate::cli::error::CliError;

use super::*;

pub(super) async fn status(args: StatusArgs) -> Exit {
    let (plan, store) = match open_store(&args.plan).await {
        Ok(ps) => ps,
        Err(e) => return e,
    };
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
