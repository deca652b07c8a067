//! Operating a run: the runner's service task and the operations `pause`, `resume`, `approve`,
//! `resync` and `verify --repair` share with the HTTP API; the status document; the in-memory history and the progress page; metrics; the
//! disk watch; logging.

pub mod diskwatch;
pub mod error;
pub mod history;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod repair;
pub mod resync_request;
pub mod service;
pub mod status;
