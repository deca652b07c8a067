//! The replication engine: catalog (collections, indexes, relaxations, DDL), the partitioned
//! copy, change-event application, and the lane that runs them in order.

pub mod apply;
pub mod catalog;
pub mod clock;
pub mod control;
pub mod copy;
pub mod error;
pub mod gate;
pub mod identity;
pub mod lane;
pub mod progress;
pub mod recover;
pub mod repair;
pub mod resync;
pub mod retry;
pub mod rewrite;
pub mod stats;
pub mod translate;
