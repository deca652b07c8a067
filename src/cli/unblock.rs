//! `cutover unblock`: the logged escape hatch that releases user write blocking on one cluster.

use crate::base::exit::Exit;
use crate::base::role::Role;
use crate::cli::error::CliError;

use super::*;

pub(super) async fn unblock(args: UnblockArgs) -> Exit {
    if !args.yes {
        return fail(CliError::Usage("`cutover unblock` needs `--yes`: it lets applications write to that cluster again, even in the middle of a cutover".into()));
    }
    let plan = match load(&args.plan) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let (scope, uri) = match args.cluster {
        Role::Source => (Role::Source, &plan.source),
        Role::Destination => (Role::Destination, &plan.destination),
    };
    let cluster =
        match crate::cluster::Cluster::connect(scope, uri, args.plan.connect_timeout).await {
            Ok(c) => c,
            Err(e) => return fail(e),
        };
    let name = scope.as_str();
    tracing::warn!(cluster = name, plan = %plan.name, "Releasing user write blocking on request (cutover unblock).");
    if let Err(e) = crate::cluster::set_user_write_block(&cluster, false).await {
        return fail(CliError::Failed(e.to_string()));
    }
    // Record it where `status` looks, if the state store is reachable.
    if let Ok(dest) = crate::cluster::Cluster::connect(
        Role::Destination,
        &plan.destination,
        args.plan.connect_timeout,
    )
    .await
    {
        let store = crate::state::StateStore::new(&dest.client, &plan.state_database, &plan.name);
        let _ = store
            .set(mongodb::bson::doc! {crate::state::record::block_field(scope): false, "last_unblock": {"cluster": name, "when": mongodb::bson::DateTime::now()}})
            .await;
    }
    out(&format!(
        "user writes on the {name} cluster are no longer blocked"
    ));
    Exit::Ok
}
