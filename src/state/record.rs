//! The run document's vocabulary, typed: the one place where a run state, a step status, a
//! commit phase or a direction is spelled as a string.
//!
//! The run document (`<state_database>.runs`, `_id` = plan name) is written field by field
//! with `$set` through the fenced [`crate::state::StateStore`] (a write is a transition, never
//! a read-modify-write of the whole record), and read back whole as a [`RunRecord`]. Each enum
//! converts into the BSON string it is stored as (`doc! {"state": RunState::Running}`), and
//! serde reads it back; a value this build does not know is an error that names it, and a
//! record written by a newer layout ([`RECORD_VERSION`]) is refused rather than guessed at.
//!
//! This module is a leaf: it depends on serde, BSON and [`crate::base::role`] only.

use std::collections::BTreeMap;
use std::fmt;

use mongodb::bson::{Bson, DateTime, Document, Timestamp};
use serde::{Deserialize, Serialize};

/// Layout version of the run document this build writes (`version`) and can read.
pub const RECORD_VERSION: i64 = 1;

/// Where the migration as a whole stands (`state`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RunState {
    /// Recorded, nothing replicating yet.
    #[default]
    Idle,
    /// A lane copies or applies changes (forward, or reverse once started).
    Running,
    /// A commit blocked writes and is draining.
    Committing,
    /// The destination has everything: the commit's restore and count check passed.
    Committed,
    /// The reverse lane is starting.
    Reversing,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Idle => "IDLE",
            RunState::Running => "RUNNING",
            RunState::Committing => "COMMITTING",
            RunState::Committed => "COMMITTED",
            RunState::Reversing => "REVERSING",
        }
    }

    /// A state a paused run is shown as `PAUSED` in (a commit's drain ignores a pause).
    pub fn pausable(self) -> bool {
        matches!(
            self,
            RunState::Idle | RunState::Running | RunState::Reversing
        )
    }

    /// A lane should be running in this state (so a run without a live runner is stopped).
    pub fn replicating(self) -> bool {
        matches!(
            self,
            RunState::Running | RunState::Reversing | RunState::Committing
        )
    }
}

/// Where one step of the plan stands (`steps.<i>.status`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepStatus {
    #[default]
    Pending,
    Running,
    Done,
    Failed,
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Pending => "pending",
            StepStatus::Running => "running",
            StepStatus::Done => "done",
            StepStatus::Failed => "failed",
        }
    }
}

/// Where one commit stands (`commits.<step index>.phase`). Each phase is recorded before its
/// work starts, so a runner that resumes knows what may be half done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CommitPhase {
    /// Waiting until the lag allows it and for approval; nothing is blocked.
    #[default]
    Waiting,
    /// Blocking writes on the source (the destination is blocked since the sync).
    Blocking,
    /// Applying every event up to the block point (`block_ts`).
    Draining,
    /// Restoring relaxed indexes and options, dropping vanished views, counting.
    Restoring,
    /// The destination has everything; it is about to be unblocked.
    Committed,
    /// The destination is writable.
    Done,
}

impl CommitPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            CommitPhase::Waiting => "waiting",
            CommitPhase::Blocking => "blocking",
            CommitPhase::Draining => "draining",
            CommitPhase::Restoring => "restoring",
            CommitPhase::Committed => "committed",
            CommitPhase::Done => "done",
        }
    }
}

pub use crate::base::role::Direction;

/// The id of a plan's lane record (`lanes._id`): `plan/forward` or `plan/reverse`.
pub fn lane_id(plan: &str, direction: Direction) -> String {
    format!("{plan}/{}", direction.as_str())
}

/// The `$set` fields of commit `i`'s record: each field of `fields` at `commits.<i>.<field>`
/// (the one place that path is spelled), e.g.
/// `commit_fields(i, doc! {"phase": CommitPhase::Draining, "block_ts": ts})`.
pub fn commit_fields(i: usize, fields: Document) -> Document {
    fields
        .into_iter()
        .map(|(k, v)| (format!("commits.{i}.{k}"), v))
        .collect()
}

/// The `$set` fields of step `i`'s record (`steps.<i>.<field>`), as [`commit_fields`].
pub fn step_fields(i: usize, fields: Document) -> Document {
    fields
        .into_iter()
        .map(|(k, v)| (format!("steps.{i}.{k}"), v))
        .collect()
}

/// The run document's field saying whether cutover holds user write blocking on `role`.
pub fn block_field(role: crate::base::role::Role) -> String {
    format!("blocks.{}", role.as_str())
}

macro_rules! stored_as_string {
    ($($t:ty),*) => {$(
        impl From<$t> for Bson {
            fn from(v: $t) -> Bson {
                Bson::String(v.as_str().to_string())
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}
stored_as_string!(RunState, StepStatus, CommitPhase, Direction);

/// One step's record (`steps.<i>`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct StepRecord {
    pub kind: String,
    pub status: StepStatus,
    pub error: Option<String>,
    pub started: Option<DateTime>,
    pub finished: Option<DateTime>,
}

/// One commit's record (`commits.<step index>`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct CommitRecord {
    pub phase: CommitPhase,
    pub direction: Option<Direction>,
    /// When the commit started blocking writes (host clock: only for the window's length).
    pub blocked_at: Option<DateTime>,
    /// The source's cluster time once it was blocked: the drain's target.
    pub block_ts: Option<Timestamp>,
    /// The destination's cluster time before it was unblocked: the reverse start point.
    pub can_write_ts: Option<Timestamp>,
    pub writable_at: Option<DateTime>,
    /// The write-blocked window, in milliseconds.
    pub window_ms: Option<i64>,
    /// What the window was spent on, in order (measured by the runner that finished the
    /// commit; a part an earlier runner did shows as `earlier runner`).
    pub window_phases: Vec<WindowPhase>,
}

/// ` (block 4 ms, drain 30 ms, …)`, or nothing without phases.
pub fn describe_phases(phases: &[WindowPhase]) -> String {
    if phases.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = phases
        .iter()
        .map(|p| format!("{} {} ms", p.phase, p.ms))
        .collect();
    format!(" ({})", parts.join(", "))
}

/// One part of a commit's write-blocked window.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct WindowPhase {
    pub phase: String,
    pub ms: i64,
}

/// A pause request (`pause`), set by `cutover pause` / `resume`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct PauseRecord {
    pub paused: bool,
    pub since: Option<DateTime>,
    pub by: Option<String>,
}

/// The run document, read whole.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct RunRecord {
    pub version: Option<i64>,
    /// Absent on the bare document the first lease creates, before the run is opened.
    pub fingerprint: Option<String>,
    pub steps: Vec<StepRecord>,
    pub state: RunState,
    pub direction: Direction,
    /// Whether the application may write to the current destination (set by a commit).
    pub can_write: bool,
    /// Commits by step index (as a string: BSON keys).
    pub commits: BTreeMap<String, CommitRecord>,
    pub last_error: Option<String>,
    pub pause: PauseRecord,
    /// Whether cutover holds user write blocking on a cluster, by plan role.
    pub blocks: BTreeMap<String, bool>,
    pub reverse_start_latency_ms: Option<i64>,
    /// Only on reads that ask the server (`lease.until > $$NOW`, by the state store's clock):
    /// whether a runner holds the plan now. Never decided by this host's clock.
    pub lease_live: Option<bool>,
}

/// A run document (or another record's state) this build cannot read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(
        "the run document of plan `{plan}` has layout version {found}, newer than this cutover \
         reads ({RECORD_VERSION}): use the cutover release that wrote it"
    )]
    Newer { plan: String, found: i64 },
    #[error("the run document of plan `{plan}` cannot be read: {detail}")]
    Invalid { plan: String, detail: String },
    /// Another record's state (or a lane's phase) this build does not know.
    #[error(transparent)]
    State(#[from] crate::state::states::UnknownState),
}

impl RunRecord {
    /// Reads a run document (as stored, or with `lease_live` added by the status read).
    pub fn from_doc(plan: &str, doc: &Document) -> Result<RunRecord, RecordError> {
        if let Some(v) = doc.get("version") {
            let found = match v {
                Bson::Int32(n) => i64::from(*n),
                Bson::Int64(n) => *n,
                Bson::Double(n) => *n as i64,
                _ => RECORD_VERSION + 1,
            };
            if found > RECORD_VERSION {
                return Err(RecordError::Newer {
                    plan: plan.to_string(),
                    found,
                });
            }
        }
        mongodb::bson::from_document(doc.clone()).map_err(|e| RecordError::Invalid {
            plan: plan.to_string(),
            detail: e.to_string(),
        })
    }

    /// Whether the migration was started (`open_run` recorded its fingerprint).
    pub fn started(&self) -> bool {
        self.fingerprint.is_some()
    }

    pub fn step_status(&self, i: usize) -> StepStatus {
        self.steps.get(i).map(|s| s.status).unwrap_or_default()
    }

    pub fn commit(&self, i: usize) -> Option<&CommitRecord> {
        self.commits.get(&i.to_string())
    }

    /// Whether a commit has begun (or finished) or the run replicates in reverse: the
    /// destination may hold the application's writes, so nothing may overwrite it from the
    /// old cluster (restart, resync, repair).
    pub fn past_cutover(&self) -> bool {
        matches!(
            self.state,
            RunState::Committing | RunState::Committed | RunState::Reversing
        ) || self.direction == Direction::Reverse
            || self.can_write
    }

    /// The reverse lane's start point: recorded by the forward commit.
    pub fn reverse_start(&self) -> Option<Timestamp> {
        self.commits
            .values()
            .find(|c| c.direction == Some(Direction::Forward))
            .and_then(|c| c.can_write_ts)
    }

    /// What the write-blocked window of the most recent commit was spent on.
    pub fn last_window_phases(&self) -> Vec<WindowPhase> {
        self.commits
            .iter()
            .filter_map(|(k, c)| Some((k.parse::<usize>().ok()?, c)))
            .filter(|(_, c)| c.window_ms.is_some())
            .max_by_key(|(k, _)| *k)
            .map(|(_, c)| c.window_phases.clone())
            .unwrap_or_default()
    }

    /// The write-blocked window of the most recent commit, in milliseconds.
    pub fn last_window_ms(&self) -> Option<i64> {
        self.commits
            .iter()
            .filter_map(|(k, c)| Some((k.parse::<usize>().ok()?, c.window_ms?)))
            .max_by_key(|(k, _)| *k)
            .map(|(_, w)| w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::doc;

    #[test]
    fn every_value_reads_back_as_written() {
        for s in [
            RunState::Idle,
            RunState::Running,
            RunState::Committing,
            RunState::Committed,
            RunState::Reversing,
        ] {
            let r = RunRecord::from_doc("p", &doc! {"state": s}).unwrap();
            assert_eq!(r.state, s);
        }
        for p in [
            CommitPhase::Waiting,
            CommitPhase::Blocking,
            CommitPhase::Draining,
            CommitPhase::Restoring,
            CommitPhase::Committed,
            CommitPhase::Done,
        ] {
            let r = RunRecord::from_doc("p", &doc! {"commits": {"3": {"phase": p}}}).unwrap();
            assert_eq!(r.commit(3).unwrap().phase, p);
        }
        for st in [
            StepStatus::Pending,
            StepStatus::Running,
            StepStatus::Done,
            StepStatus::Failed,
        ] {
            let r = RunRecord::from_doc("p", &doc! {"steps": [{"kind": "sync", "status": st}]})
                .unwrap();
            assert_eq!(r.step_status(0), st);
        }
        let r = RunRecord::from_doc("p", &doc! {"direction": Direction::Reverse}).unwrap();
        assert_eq!(r.direction, Direction::Reverse);
    }

    #[test]
    fn the_stored_spelling_is_stable() {
        // Run documents outlive releases: these strings are the on-disk format.
        assert_eq!(
            Bson::from(RunState::Committed),
            Bson::String("COMMITTED".into())
        );
        assert_eq!(Bson::from(StepStatus::Done), Bson::String("done".into()));
        assert_eq!(
            Bson::from(CommitPhase::Restoring),
            Bson::String("restoring".into())
        );
        assert_eq!(
            Bson::from(Direction::Reverse),
            Bson::String("reverse".into())
        );
    }

    #[test]
    fn unknown_values_and_newer_layouts_are_errors_not_defaults() {
        let e = RunRecord::from_doc("p", &doc! {"state": "MIGRATING"}).unwrap_err();
        assert!(e.to_string().contains("MIGRATING"), "{e}");
        let e = RunRecord::from_doc("p", &doc! {"version": 2, "state": "IDLE"}).unwrap_err();
        assert!(matches!(e, RecordError::Newer { found: 2, .. }), "{e}");
        // The bare document a first lease creates reads as a run not yet started.
        let r = RunRecord::from_doc("p", &doc! {"_id": "p", "epoch": 1_i64}).unwrap();
        assert!(!r.started());
        assert_eq!(r.state, RunState::Idle);
        assert_eq!(r.step_status(0), StepStatus::Pending);
    }

    #[test]
    fn commit_and_step_fields_are_stored_at_their_paths() {
        let set = commit_fields(3, doc! {"phase": CommitPhase::Draining, "window_ms": 5_i64});
        assert_eq!(
            set,
            doc! {"commits.3.phase": "draining", "commits.3.window_ms": 5_i64}
        );
        let r = RunRecord::from_doc("p", &doc! {"commits": {"3": {"phase": "draining"}}}).unwrap();
        assert_eq!(r.commit(3).unwrap().phase, CommitPhase::Draining);
        assert_eq!(
            step_fields(0, doc! {"status": StepStatus::Done}),
            doc! {"steps.0.status": "done"}
        );
        assert_eq!(
            block_field(crate::base::role::Role::Destination),
            "blocks.destination"
        );
    }

    #[test]
    fn past_cutover_and_reverse_start_read_the_commits() {
        let ts = Timestamp {
            time: 10,
            increment: 2,
        };
        let r = RunRecord::from_doc(
            "p",
            &doc! {"state": "COMMITTED", "commits": {
                "2": {"phase": "done", "direction": "forward", "can_write_ts": ts, "window_ms": 40_i64},
                "10": {"phase": "done", "direction": "reverse", "window_ms": 70_i64},
            }},
        )
        .unwrap();
        assert!(r.past_cutover());
        assert_eq!(r.reverse_start(), Some(ts));
        // The most recent commit by step index, not by key order ("10" < "2").
        assert_eq!(r.last_window_ms(), Some(70));
        let running = RunRecord::from_doc("p", &doc! {"state": "RUNNING"}).unwrap();
        assert!(!running.past_cutover());
        let reversed =
            RunRecord::from_doc("p", &doc! {"state": "RUNNING", "direction": "reverse"}).unwrap();
        assert!(reversed.past_cutover());
    }
}
