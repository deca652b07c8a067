//! Exit codes: stable, documented in `docs/README.md#exit-codes` and in `--help`.

/// What the process exit code means. The same codes for every command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Success (warnings allowed).
    Ok = 0,
    /// A check, step or comparison failed.
    Failed = 1,
    /// The plan or the command line is invalid; nothing was written anywhere.
    Invalid = 2,
    /// A cluster is unreachable or authentication failed; for `cutover run`, also: the
    /// state store could not confirm the runner's lease for the TTL plus `--retry-timeout`
    /// (no other runner took the plan; run it again to continue).
    Unreachable = 3,
    /// Refused: the migration's state does not allow this command now (`verify --repair`
    /// or `resync` after the commit, `resync` with no runner live or outside the plan's
    /// filter; nothing was written), or, for `cutover run`, another runner holds
    /// the plan (refused at start) or this runner lost its lease to another and stopped
    /// without writing further.
    Refused = 4,
    /// Interrupted (Ctrl-C) at a safe point; re-run to continue.
    Interrupted = 130,
}

impl Exit {
    pub fn code(self) -> i32 {
        self as i32
    }

    /// The worse of two outcomes.
    pub fn max(self, other: Exit) -> Exit {
        fn rank(e: Exit) -> u8 {
            match e {
                Exit::Ok => 0,
                Exit::Failed => 1,
                Exit::Unreachable => 2,
                Exit::Invalid => 3,
                Exit::Refused => 4,
                Exit::Interrupted => 5,
            }
        }
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }
}

pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0    ok (warnings allowed)
  1    a check, step or comparison failed
  2    the plan or the command line is invalid (nothing was written anywhere)
  3    a cluster is unreachable or authentication failed; run: the destination (state store)
       could not confirm the lease for --retry-timeout; run the same command again
  4    refused: verify --repair or resync after the commit, resync with no runner live or
       outside the plan's filter (nothing written); run: another `cutover run` holds the
       plan, or this runner lost its lease to one and stopped
  130  interrupted; run the same command again to continue";
