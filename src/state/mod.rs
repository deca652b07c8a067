//! The control plane of a migration, kept in the state database on the original destination:
//! the store ([`store`]), the run document's typed vocabulary ([`record`]), the other
//! records' states and the lane phase ([`states`]) and the lease with
//! its fencing epoch ([`lease`]), the one place that decides whether this process may write.

pub mod lease;
pub mod record;
pub mod states;
pub mod store;

pub use store::*;
