//! The step handlers the interpreter ([`super`]) dispatches to, one file per step kind.

pub mod commit;
pub mod reverse;
pub mod sync;
pub mod validate_indexes;
pub mod verify;
