//! The integration tests, one test binary (`./scripts/test.sh --test it`): every module
//! drives the real `cutover` binary against real `mongod` replica sets started by `common`.
//! Run one file's tests with a filter: `./scripts/test.sh --test it resync::`.
//! One binary builds and links once instead of once per file.
//!
//! Needs the `test-hooks` feature (Cargo.toml's `required-features`: without it cargo skips
//! this target); `./scripts/test.sh` passes it.

// Child processes are signalled and set up through libc (each block says why it is sound).
#![allow(unsafe_code)]

mod apply;
mod breadth;
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
mod page;
mod plan_errors;
mod reference;
mod rename;
mod repair;
mod resync;
mod schema;
mod service;
mod shell;
mod stepdown;
mod sync;
mod torture;
mod transient;
mod verify;
