//! The current user-write-blocking state, read without writing.
//!
//! `setUserWriteBlockMode {global: true}` persists its state as a document in
//! `config.user_writes_critical_sections` (`blockUserWrites: true`); `global: false` deletes
//! it. Reading that collection is a plain `find`: no command here can change the state.

use futures::TryStreamExt;
use mongodb::bson::{doc, Document};

use crate::cluster::Cluster;
use crate::preflight::checks::Check;

pub const STATE_COLLECTION: &str = "user_writes_critical_sections";

/// Whether user writes are blocked on `c` (`None` when it cannot be read, e.g. through mongos
/// or without `find` on the `config` database).
pub async fn is_blocked(c: &Cluster) -> Result<bool, mongodb::error::Error> {
    let docs: Vec<Document> = c
        .client
        .database("config")
        .collection::<Document>(STATE_COLLECTION)
        .find(doc! {})
        .await?
        .try_collect()
        .await?;
    Ok(docs
        .iter()
        .any(|d| d.get_bool("blockUserWrites").unwrap_or(false)))
}

pub async fn check(c: &Cluster) -> Check {
    match is_blocked(c).await {
        Ok(false) => Check::pass("write-blocking", c.role, "user writes are not blocked"),
        Ok(true) => Check::warn(
            "write-blocking",
            c.role,
            "user writes are BLOCKED on this cluster (setUserWriteBlockMode is on): applications without `bypassWriteBlockingMode` cannot write",
            "if no cutover is running, a previous run may have left it on: `db.adminCommand({setUserWriteBlockMode: 1, global: false})`",
        ),
        Err(e) => Check::warn(
            "write-blocking",
            c.role,
            format!("cannot read the write-blocking state from `config.{STATE_COLLECTION}`: {}", c.error(&e)),
            "grant `find` on the `config` database (e.g. `clusterMonitor` or `root`) to see it",
        ),
    }
}
