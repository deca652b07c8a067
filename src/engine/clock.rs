//! Reading a cluster's time (a leaf of the engine: the lane, the writer and the commit use it).

use std::time::Duration;

use mongodb::bson::{doc, Timestamp};
use mongodb::Client;

use crate::base::role::Role;
use crate::engine::error::{cluster_err, EngineError};

/// A cluster's current majority-committed time (`cluster` names it in errors: `source` or
/// `destination`, the plan's role). Read from the source it is the start point of a forward
/// lane: every write after it appears in the change stream; every write before it is visible
/// to the copy.
pub async fn cluster_time(source: &Client, cluster: Role) -> Result<Timestamp, EngineError> {
    let hello = source
        .database("admin")
        .run_command(doc! {"hello": 1})
        .await
        .map_err(|e| cluster_err(cluster, "reading the cluster time", &e))?;
    let ts = hello
        .get_document("lastWrite")
        .ok()
        .and_then(|lw| lw.get_document("opTime").ok())
        .and_then(|o| o.get_timestamp("ts").ok())
        .or_else(|| hello.get_timestamp("operationTime").ok())
        .or_else(|| {
            hello
                .get_document("$clusterTime")
                .ok()
                .and_then(|c| c.get_timestamp("clusterTime").ok())
        });
    let Some(ts) = ts else {
        return Err(EngineError::Stream(format!(
            "the {cluster} did not report its cluster time (hello)"
        )));
    };
    // Wait until that time is majority-committed, so the copy's majority reads see it.
    for _ in 0..600 {
        let h = source
            .database("admin")
            .run_command(doc! {"hello": 1})
            .await
            .map_err(|e| cluster_err(cluster, "reading the cluster time", &e))?;
        let maj = h
            .get_document("lastWrite")
            .ok()
            .and_then(|lw| lw.get_document("majorityOpTime").ok())
            .and_then(|o| o.get_timestamp("ts").ok());
        match maj {
            Some(m) if m >= ts => break,
            None => break, // mongos: no lastWrite; operationTime is already majority.
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    Ok(ts)
}
