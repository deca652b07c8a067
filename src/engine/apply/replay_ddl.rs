//! Replaying DDL change events on the destination through the catalog (renames with the
//! source's current spec).

use mongodb::bson::RawDocument;

use crate::base::namespace::Namespace;
use crate::engine::catalog::{self, CatalogError, DdlOutcome};
use crate::engine::copy::{self};
use crate::engine::error::{on, EngineError};

use super::ctx::*;

pub(crate) async fn apply_ddl(ctx: &ApplyCtx, ev: &RawDocument) -> Result<(), EngineError> {
    ctx.store.fence_ready().await?;
    if let Ok(mut m) = ctx.keying.lock() {
        m.clear();
    }
    // `showSystemEvents` also shows writes to e.g. `system.views`; only buckets matter.
    if let Some(ns) = event_ns(ev) {
        if ns.coll.starts_with("system.") && !ns.coll.starts_with("system.buckets.") {
            return Ok(());
        }
    }
    // Each DDL event's application is idempotent: a transient failure retries the event.
    let outcome = ctx
        .retry
        .run(&ctx.progress, "applying a DDL event", || async {
            catalog::apply_ddl(&ctx.source, &ctx.dest, ev, &ctx.selector, &ctx.relax)
                .await
                .map_err(|e| {
                    if !e.is_transient() {
                        return EngineError::Event(describe(ev, &e.to_string()));
                    }
                    // A replay writes the destination; only its one source read says so.
                    match e {
                        CatalogError::OnSource(e) => on(ctx.direction.reads())(*e),
                        e => on(ctx.direction.writes())(e),
                    }
                })
        })
        .await?;
    match outcome {
        DdlOutcome::Applied => tracing::info!(event = %event_label(ev), "DDL applied."),
        DdlOutcome::Ignored => {
            tracing::debug!(event = %event_label(ev), "DDL ignored: not selected.")
        }
        DdlOutcome::NeedsCopy(ns) => {
            tracing::info!(%ns, "A collection moved into the plan's filter: copying it.");
            if let Some(spec) = renamed_spec(ctx, ev, &ns).await? {
                let what = format!("creating `{}`", spec.ns);
                ctx.retry
                    .run(&ctx.progress, &what, || async {
                        catalog::create_on_destination(&ctx.dest, &spec, &ctx.relax)
                            .await
                            .map_err(on(ctx.direction.writes()))
                    })
                    .await?;
                if let Some(target) = catalog::copy_target(&spec) {
                    copy::forget(&ctx.copy, &target).await?;
                }
                copy::copy_all(
                    &ctx.copy,
                    std::slice::from_ref(&spec),
                    &copy::Counts::new(),
                    &Default::default(),
                )
                .await?;
                let what = format!("building the indexes of `{}`", spec.ns);
                ctx.retry
                    .run(&ctx.progress, &what, || async {
                        catalog::build_indexes(&ctx.dest, &spec, &ctx.relax)
                            .await
                            .map_err(on(ctx.direction.writes()))
                    })
                    .await?;
            }
        }
    }
    Ok(())
}

/// The source collection a `rename` event moved to `ns`, as a spec named `ns`: found by the
/// event's `collectionUUID` under whatever name it has now (it may have been renamed again,
/// and another collection may have taken the name since), so the copy reads that collection
/// and the later events (the next rename, the other collection's create) apply in order.
/// `None` when it no longer exists (its drop event follows).
pub(super) async fn renamed_spec(
    ctx: &ApplyCtx,
    ev: &RawDocument,
    ns: &Namespace,
) -> Result<Option<catalog::NsSpec>, EngineError> {
    let uuid = match ev.get("collectionUUID").ok().flatten() {
        Some(mongodb::bson::RawBsonRef::Binary(b)) => b.to_binary(),
        _ => {
            return catalog::spec_of(&ctx.source, ns)
                .await
                .map_err(on(ctx.direction.reads()))
        }
    };
    for _ in 0..100 {
        let Some(name) = catalog::name_of_uuid(&ctx.source, &ns.db, &uuid)
            .await
            .map_err(on(ctx.direction.reads()))?
        else {
            return Ok(None);
        };
        let current = Namespace::new(ns.db.clone(), name);
        match catalog::spec_of(&ctx.source, &current)
            .await
            .map_err(on(ctx.direction.reads()))?
        {
            Some(mut spec) if catalog::entry_uuid(&spec.info).as_ref() == Some(&uuid) => {
                spec.ns = ns.clone();
                return Ok(Some(spec));
            }
            // Renamed again between the two reads: look again.
            _ => continue,
        }
    }
    Err(EngineError::Event(format!(
        "`{ns}`: its collection kept being renamed while cutover looked it up"
    )))
}
