//! cutover: move live data between MongoDB clusters from a checked-in plan.
//!
//! Layers, lowest first (a folder depends only on folders before it; CI checks it with
//! `scripts/import-cycles.py`): [`base`] (shared vocabulary), [`plan`] (the TOML plan),
//! [`cluster`] (connections and server errors), [`state`] (store, run record, lease),
//! [`verify`] (comparing clusters), [`engine`] (catalog, copy, change application, lanes),
//! [`preflight`] (`cutover check`), [`ops`] (service, HTTP API, metrics, status), [`run`] (the
//! step interpreter) and [`cli`].

pub mod base;
pub mod cli;
pub mod cluster;
pub mod engine;
pub mod ops;
pub mod plan;
pub mod preflight;
pub mod run;
pub mod state;
pub mod verify;
