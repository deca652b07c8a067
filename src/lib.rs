//! cutover: move live data between MongoDB clusters from a checked-in plan.
//!
//! The plan (TOML) is loaded and checked without I/O ([`plan`]); `cutover check` adds a
//! read-only preflight of both clusters ([`preflight`]).

pub mod api;
pub mod cli;
pub mod cluster;
pub mod crashpoint;
pub mod diskwatch;
pub mod engine;
pub mod exit;
pub mod fence;
pub mod index_format;
pub mod logging;
pub mod metrics;
pub mod mongo_error;
pub mod namespace;
pub mod pause;
pub mod plan;
pub mod preflight;
pub mod progress;
pub mod record;
pub mod redact;
pub mod report;
pub mod resync;
pub mod run;
pub mod service;
pub mod state;
pub mod stats;
pub mod status;
pub mod uri;
pub mod verify;
