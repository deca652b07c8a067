//! Why a command failed, as a type every layer's error converts into with `From`, and the one
//! place a failure becomes an exit code ([`CliError::exit`]). A comparison that finds
//! differences is not an error: the command returns [`Exit::Failed`] with its report.

use crate::base::exit::Exit;
use crate::cluster::ClusterError;
use crate::ops::error::OpError;
use crate::ops::repair::RepairError;
use crate::run::RunError;
use crate::state::StateError;
use crate::verify::VerifyError;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The plan did not validate; its diagnostics are printed already.
    #[error("the plan is invalid")]
    PlanInvalid,
    /// The command line asks for something it cannot (nothing was written).
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Cluster(#[from] ClusterError),
    #[error("{0}")]
    Op(#[from] OpError),
    #[error("{0}")]
    Run(#[from] RunError),
    #[error("{0}")]
    State(#[from] StateError),
    #[error("{0}")]
    Verify(#[from] VerifyError),
    #[error("{0}")]
    Repair(#[from] RepairError),
    /// The migration's state does not allow this command now (nothing was written).
    #[error("{0}")]
    Refused(String),
    /// Anything else that stopped the command.
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    /// The exit code of a failure: the one place that decides it (the codes are documented
    /// in [`crate::base::exit`]).
    pub fn exit(&self) -> Exit {
        use crate::state::lease::LeaseLost;
        match self {
            CliError::PlanInvalid | CliError::Usage(_) => Exit::Invalid,
            CliError::Cluster(c) if c.is_connectivity() => Exit::Unreachable,
            CliError::Op(OpError::Invalid(_)) => Exit::Invalid,
            CliError::Op(OpError::Refused(_)) | CliError::Refused(_) => Exit::Refused,
            CliError::Run(RunError::Cluster(c)) if c.is_connectivity() => Exit::Unreachable,
            CliError::Run(RunError::Interrupted) => Exit::Interrupted,
            CliError::Run(RunError::LeaseLost(l)) if !LeaseLost::taken_over(l) => Exit::Unreachable,
            CliError::Run(RunError::LeaseLost(_))
            | CliError::Run(RunError::State(StateError::Leased { .. })) => Exit::Refused,
            CliError::Verify(e) if e.is_connectivity() => Exit::Unreachable,
            CliError::Repair(e) if e.is_connectivity() => Exit::Unreachable,
            CliError::Cluster(_)
            | CliError::Op(_)
            | CliError::Run(_)
            | CliError::State(_)
            | CliError::Verify(_)
            | CliError::Repair(_)
            | CliError::Failed(_) => Exit::Failed,
        }
    }

    /// The message printed after `error: `, with the hint where the error has one.
    pub fn message(&self) -> String {
        match self {
            CliError::Cluster(c) => format!("{c}\nhint: {}", c.hint()),
            e => e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_has_its_documented_exit_code() {
        assert_eq!(CliError::PlanInvalid.exit(), Exit::Invalid);
        assert_eq!(CliError::Usage("x".into()).exit(), Exit::Invalid);
        assert_eq!(
            CliError::Op(OpError::Invalid("x".into())).exit(),
            Exit::Invalid
        );
        assert_eq!(
            CliError::Op(OpError::Refused("x".into())).exit(),
            Exit::Refused
        );
        assert_eq!(
            CliError::Op(OpError::Failed("x".into())).exit(),
            Exit::Failed
        );
        assert_eq!(CliError::Refused("x".into()).exit(), Exit::Refused);
        assert_eq!(
            CliError::Run(RunError::Interrupted).exit(),
            Exit::Interrupted
        );
        assert_eq!(CliError::Failed("x".into()).exit(), Exit::Failed);
    }
}
