//! What a lane's owner asks of change application (a leaf: the lane, the loop, the resync
//! hook and `pause` share it).

use mongodb::bson::Timestamp;

/// What the lane's owner asks of change application.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Keep applying.
    Run,
    /// Apply every event up to and including this source time, then stop (the commit drain).
    DrainTo(Timestamp),
    /// Stop after the current round (shutdown).
    Stop,
}
