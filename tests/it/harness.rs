//! The harness itself: a replica set with auth, the root user bypasses write blocking and the
//! app user does not.

use crate::common::*;
use mongodb::bson::{doc, Document};

#[tokio::test]
async fn replica_set_with_users_and_write_blocking() {
    let rs = ReplicaSet::start().await;
    let root = rs.root_client().await;
    let app = rs.app_client().await;
    app.database("shop")
        .collection::<Document>("orders")
        .insert_one(doc! {"_id": 1})
        .await
        .expect("app writes");

    root.database("admin")
        .run_command(doc! {"setUserWriteBlockMode": 1, "global": true})
        .await
        .expect("block");
    let err = app
        .database("shop")
        .collection::<Document>("orders")
        .insert_one(doc! {"_id": 2})
        .await
        .expect_err("app must be refused while blocked");
    assert!(
        err.to_string().contains("User writes blocked") || err.to_string().contains("371"),
        "{err}"
    );
    root.database("shop")
        .collection::<Document>("orders")
        .insert_one(doc! {"_id": 3})
        .await
        .expect("root bypasses");
    root.database("admin")
        .run_command(doc! {"setUserWriteBlockMode": 1, "global": false})
        .await
        .expect("unblock");
    let n = root
        .database("shop")
        .collection::<Document>("orders")
        .count_documents(doc! {})
        .await
        .unwrap();
    assert_eq!(n, 2);
}

#[tokio::test]
async fn anonymous_clients_are_refused() {
    let rs = ReplicaSet::start().await;
    let anon = direct_client(rs.members[0].port, None).await;
    let err = anon
        .database("shop")
        .collection::<Document>("x")
        .insert_one(doc! {"a": 1})
        .await;
    assert!(
        err.is_err(),
        "keyFile auth must refuse unauthenticated writes"
    );
}
