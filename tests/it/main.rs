//! The integration tests, one test binary (`cargo test --release --test it`): every module
//! drives the real `cutover` binary against real `mongod` replica sets started by `common`.
//! Run one file's tests with a filter: `cargo test --release --test it resync::`.
//! One binary builds and links once instead of once per file.

#[cfg(not(feature = "test-hooks"))]
compile_error!(
    "the integration tests use cutover's crash and pause points: run them with \
     `./scripts/test.sh` (or `cargo test --release --features test-hooks`)"
);

mod apply;
mod catalog;
mod check;
mod common;
mod connections;
mod cutover;
mod ddl;
mod during_copy;
mod examples;
mod faults;
mod fidelity;
mod harness;
mod kill;
mod lease;
mod operations;
mod outage;
mod plan_errors;
mod reference;
mod rename;
mod repair;
mod resync;
mod schema;
mod service;
mod stepdown;
mod sync;
mod torture;
mod transient;
mod verify;
