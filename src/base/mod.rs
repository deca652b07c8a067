//! The leaf layer: vocabulary every other layer shares and that depends on nothing else in
//! the crate (roles, exit codes, namespaces, connection strings, credential scrubbing, BSON
//! order, the environment variables cutover reads, the process-wide pause gate, test hooks).

pub mod bson_order;
pub mod crashpoint;
pub mod env;
pub mod exit;
pub mod namespace;
pub mod pause_gate;
pub mod redact;
pub mod role;
pub mod uri;
