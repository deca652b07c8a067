//! The two parts a cluster plays in a plan, and which way a lane replicates. Errors, logs,
//! reports, the CLI and verify name clusters with [`Role`]; a [`Direction`] says which role
//! a lane reads and which it writes.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A cluster's part in the plan: `[clusters.source]` or `[clusters.destination]`. It does not
/// change with the direction: after a commit, the reverse lane reads the `Destination`.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Source,
    Destination,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Source => "source",
            Role::Destination => "destination",
        }
    }

    /// The other cluster.
    pub fn other(self) -> Role {
        match self {
            Role::Source => Role::Destination,
            Role::Destination => Role::Source,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A cluster's role for messages, or `source or destination` when it is not known which.
pub fn role_name(role: Option<Role>) -> &'static str {
    role.map_or("source or destination", Role::as_str)
}

/// Which way a lane replicates: `Forward` from the plan's source to its destination, `Reverse`
/// back (after a commit).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    #[default]
    Forward,
    Reverse,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Forward => "forward",
            Direction::Reverse => "reverse",
        }
    }

    /// The role of the cluster a lane of this direction reads from.
    pub fn reads(self) -> Role {
        match self {
            Direction::Forward => Role::Source,
            Direction::Reverse => Role::Destination,
        }
    }

    /// The role of the cluster a lane of this direction writes to.
    pub fn writes(self) -> Role {
        self.reads().other()
    }

    /// The plan role (`source` / `destination`) of the cluster a lane of this direction reads
    /// from: messages name clusters as the plan does, whatever the lane's direction.
    pub fn source_name(self) -> &'static str {
        self.reads().as_str()
    }

    /// The plan role of the cluster a lane of this direction writes to.
    pub fn destination_name(self) -> &'static str {
        self.writes().as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_direction_reads_one_role_and_writes_the_other() {
        assert_eq!(Direction::Forward.reads(), Role::Source);
        assert_eq!(Direction::Forward.writes(), Role::Destination);
        assert_eq!(Direction::Reverse.reads(), Role::Destination);
        assert_eq!(Direction::Reverse.writes(), Role::Source);
        assert_eq!(Direction::Reverse.reads().as_str(), "destination");
    }
}
