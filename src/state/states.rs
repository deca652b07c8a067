//! The states of the state database's records other than the run document (whose vocabulary
//! is [`crate::state::record`]), typed: the one place where a resync, repair, repair request
//! or verify run state, or a lane's phase, is spelled as a string.
//!
//! Each enum has exactly one stored spelling per value ([`ResyncState::as_str`] and the
//! like), converts into the BSON string it is stored as (`doc! {"state": ResyncState::Done}`)
//! and serializes as it (the JSON reports show the same word). A stored value this build does
//! not know is an [`UnknownState`] naming the record and the value, never taken for another.
//! Each also says which changes of state are transitions ([`ResyncState::can_become`] and the
//! like): the writers pass `from` and `to`, and the `from` state is part of the write's filter.
//!
//! These spellings are the on-disk format: existing state databases must keep reading.
//!
//! Apart from the conversion of [`UnknownState`] into the store's error, this module depends
//! on serde and BSON only.

use std::fmt;
use std::str::FromStr;

use mongodb::bson::{Bson, Document};

/// A record's state (or a lane's phase) that this build does not know.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{record}{} has {field} {value}, which this cutover does not know (written by a newer \
     release, or edited by hand): use the cutover release that wrote it",
    .id.as_ref().map(|i| format!(" `{i}`")).unwrap_or_default()
)]
pub struct UnknownState {
    /// What holds the value: `the `resyncs` record`, `the lane phase`.
    pub record: &'static str,
    /// The record's `_id`, when known.
    pub id: Option<String>,
    pub field: &'static str,
    /// The value as found (quoted), or `(missing)`.
    pub value: String,
}

macro_rules! stored_enum {
    (
        $(#[$m:meta])*
        $name:ident, record = $rec:literal, field = $field:literal {
            $($(#[$vm:meta])* $v:ident = $s:literal),* $(,)?
        }
    ) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vm])* $v),* }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$v),*];
            /// What holds the value (for [`UnknownState`]).
            pub const RECORD: &'static str = $rec;
            /// The field it is stored in.
            pub const FIELD: &'static str = $field;

            /// The stored spelling.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$v => $s),* }
            }

            /// The value stored in a record's field (an error naming the record's `_id` and
            /// the value when it is missing or unknown).
            pub fn of(d: &Document) -> Result<$name, UnknownState> {
                let unknown = |value: String| UnknownState {
                    record: $rec,
                    id: d.get("_id").map(id_text),
                    field: $field,
                    value,
                };
                match d.get($field) {
                    Some(Bson::String(s)) => s.parse().map_err(|e: UnknownState| unknown(e.value)),
                    Some(other) => Err(unknown(other.to_string())),
                    None => Err(unknown("(missing)".into())),
                }
            }
        }

        impl FromStr for $name {
            type Err = UnknownState;
            fn from_str(s: &str) -> Result<$name, UnknownState> {
                match s {
                    $($s => Ok($name::$v),)*
                    _ => Err(UnknownState {
                        record: $rec,
                        id: None,
                        field: $field,
                        value: format!("{s:?}"),
                    }),
                }
            }
        }

        impl From<$name> for Bson {
            fn from(v: $name) -> Bson {
                Bson::String(v.as_str().to_string())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    };
}

fn id_text(b: &Bson) -> String {
    match b {
        Bson::String(s) => s.clone(),
        Bson::ObjectId(o) => o.to_hex(),
        other => other.to_string(),
    }
}

stored_enum! {
    /// Where a `cutover resync` request stands (`resyncs.state`).
    ResyncState, record = "the `resyncs` record", field = "state" {
        /// Requested; the lane has not started it.
        Pending = "pending",
        /// The lane holds the namespace's events and copies it into the temporary collection.
        Copying = "copying",
        /// The copy is renamed into place and the held events replayed.
        Swapping = "swapping",
        Done = "done",
        /// Refused or cancelled (`error` says why).
        Failed = "failed",
    }
}

impl ResyncState {
    /// The states the lane serves (a new runner redoes `copying` and `swapping` ones).
    pub const UNFINISHED: [ResyncState; 3] = [
        ResyncState::Pending,
        ResyncState::Copying,
        ResyncState::Swapping,
    ];

    pub fn finished(self) -> bool {
        matches!(self, ResyncState::Done | ResyncState::Failed)
    }

    /// Whether `self -> to` is a transition: a start (again from scratch, by a new runner,
    /// for an unfinished one), the swap, its end, or a failure of an unfinished one.
    pub fn can_become(self, to: ResyncState) -> bool {
        use ResyncState::*;
        match to {
            Copying => !self.finished(),
            Swapping => self == Copying,
            Done => self == Swapping,
            Failed => !self.finished(),
            Pending => false,
        }
    }
}

stored_enum! {
    /// Where one `verify --repair` invocation stands (`repairs.state`).
    RepairState, record = "the `repairs` record", field = "state" {
        Running = "running",
        /// A verify pass found no difference.
        Ok = "ok",
        /// The passes ran out with differences left.
        DifferencesRemain = "differences remain",
        Failed = "failed",
    }
}

impl RepairState {
    pub fn can_become(self, to: RepairState) -> bool {
        self == RepairState::Running && to != RepairState::Running
    }
}

stored_enum! {
    /// Where one repair request for the live lane stands (`repair_requests.state`).
    RepairRequestState, record = "the `repair_requests` record", field = "state" {
        Pending = "pending",
        /// Rewritten, by the lane or (the runner gone) by `verify --repair` itself.
        Done = "done",
        Failed = "failed",
    }
}

impl RepairRequestState {
    pub fn can_become(self, to: RepairRequestState) -> bool {
        self == RepairRequestState::Pending && to != RepairRequestState::Pending
    }
}

stored_enum! {
    /// Where one verify run stands (`verify_runs.status`).
    VerifyRunStatus, record = "the `verify_runs` record", field = "status" {
        Running = "running",
        Finished = "finished",
        /// Left unfinished and replaced by a new run (`--restart`).
        Abandoned = "abandoned",
    }
}

impl VerifyRunStatus {
    pub fn can_become(self, to: VerifyRunStatus) -> bool {
        self == VerifyRunStatus::Running && to != VerifyRunStatus::Running
    }
}

/// What a replication lane is doing (`Progress::phase`; stored as `status.phase` of the run
/// document, shown by `cutover status`, the HTTP API and the metrics).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum LanePhase {
    /// A lane just made, before it says what it does (stored as the empty string).
    #[default]
    Unset,
    /// A new lane records its start point.
    Starting,
    Copying,
    BuildingIndexes,
    Applying,
    /// Comparing and rewriting ranges after the resume point was lost.
    Recovering,
    /// Held at a checkpoint: by the operator (`paused`), or for a reason (`paused: <reason>`,
    /// e.g. [`LanePhase::disk_short`]).
    Paused {
        reason: Option<String>,
    },
    WaitingForApproval,
    /// The commit made the destination writable.
    Committed,
}

impl LanePhase {
    /// The copy paused because the cluster it writes to (the plan's destination, or its
    /// source for the reverse lane) is short of disk space.
    pub fn disk_short(cluster: crate::base::role::Role) -> LanePhase {
        LanePhase::Paused {
            reason: Some(format!("the {cluster} is short of disk space")),
        }
    }

    /// The operator's pause.
    pub const PAUSED: LanePhase = LanePhase::Paused { reason: None };

    /// The stored and shown spelling (a paused phase carries its reason's text).
    pub fn text(&self) -> std::borrow::Cow<'static, str> {
        let s = match self {
            LanePhase::Unset => "",
            LanePhase::Starting => "starting",
            LanePhase::Copying => "copying",
            LanePhase::BuildingIndexes => "building indexes",
            LanePhase::Applying => "applying change events",
            LanePhase::Recovering => "recovering a lost resume point",
            LanePhase::Paused { reason: None } => "paused",
            LanePhase::Paused { reason: Some(r) } => return format!("paused: {r}").into(),
            LanePhase::WaitingForApproval => "waiting for approval",
            LanePhase::Committed => "committed",
        };
        s.into()
    }

    /// The phase stored in a status document (`status.phase`); `None` when absent.
    pub fn of(status: &Document) -> Result<Option<LanePhase>, UnknownState> {
        match status.get("phase") {
            None => Ok(None),
            Some(Bson::String(s)) => s.parse().map(Some),
            Some(other) => Err(UnknownState {
                record: "the lane phase (`status.phase` of the run document)",
                id: None,
                field: "value",
                value: other.to_string(),
            }),
        }
    }
}

impl FromStr for LanePhase {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<LanePhase, UnknownState> {
        Ok(match s {
            "" => LanePhase::Unset,
            "starting" => LanePhase::Starting,
            "copying" => LanePhase::Copying,
            "building indexes" => LanePhase::BuildingIndexes,
            "applying change events" => LanePhase::Applying,
            "recovering a lost resume point" => LanePhase::Recovering,
            "paused" => LanePhase::PAUSED,
            "waiting for approval" => LanePhase::WaitingForApproval,
            "committed" => LanePhase::Committed,
            _ => match s.strip_prefix("paused: ") {
                Some(r) if !r.is_empty() => LanePhase::Paused {
                    reason: Some(r.to_string()),
                },
                _ => {
                    return Err(UnknownState {
                        record: "the lane phase (`status.phase` of the run document)",
                        id: None,
                        field: "value",
                        value: format!("{s:?}"),
                    })
                }
            },
        })
    }
}

impl fmt::Display for LanePhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

impl From<LanePhase> for Bson {
    fn from(p: LanePhase) -> Bson {
        Bson::String(p.text().into_owned())
    }
}

impl serde::Serialize for LanePhase {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text())
    }
}

impl From<UnknownState> for crate::state::StateError {
    fn from(e: UnknownState) -> Self {
        crate::state::StateError::Record(e.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::doc;

    fn round_trips<T>(all: &[T], spellings: &[&str])
    where
        T: Copy + PartialEq + fmt::Debug + FromStr<Err = UnknownState> + Into<Bson> + fmt::Display,
    {
        assert_eq!(all.len(), spellings.len());
        for (v, s) in all.iter().zip(spellings) {
            assert_eq!(v.to_string(), *s);
            assert_eq!(Into::<Bson>::into(*v), Bson::String(s.to_string()));
            assert_eq!(s.parse::<T>().unwrap(), *v);
        }
    }

    #[test]
    fn every_state_round_trips_its_stored_spelling() {
        // Records outlive releases: these strings are the on-disk format.
        round_trips(
            ResyncState::ALL,
            &["pending", "copying", "swapping", "done", "failed"],
        );
        round_trips(
            RepairState::ALL,
            &["running", "ok", "differences remain", "failed"],
        );
        round_trips(RepairRequestState::ALL, &["pending", "done", "failed"]);
        round_trips(VerifyRunStatus::ALL, &["running", "finished", "abandoned"]);
        for s in ResyncState::ALL {
            assert_eq!(ResyncState::of(&doc! {"state": *s}), Ok(*s));
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::Value::String(s.as_str().into())
            );
        }
        assert_eq!(
            VerifyRunStatus::of(&doc! {"status": "abandoned"}),
            Ok(VerifyRunStatus::Abandoned)
        );
    }

    #[test]
    fn unknown_or_missing_states_are_errors_naming_record_and_value() {
        let e = ResyncState::of(&doc! {"_id": "p/1", "state": "queued"}).unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("`resyncs` record `p/1`") && m.contains("\"queued\""),
            "{m}"
        );
        let e = RepairRequestState::of(&doc! {"_id": 3, "state": 1}).unwrap_err();
        assert!(e.to_string().contains("repair_requests"), "{e}");
        let e = VerifyRunStatus::of(&doc! {"run": 1}).unwrap_err();
        assert!(e.to_string().contains("(missing)"), "{e}");
        assert!("Pending".parse::<ResyncState>().is_err());
        assert!("differences_remain".parse::<RepairState>().is_err());
        assert!("abandon".parse::<VerifyRunStatus>().is_err());
        let e = "pausing".parse::<LanePhase>().unwrap_err();
        assert!(
            e.to_string().contains("lane phase") && e.to_string().contains("pausing"),
            "{e}"
        );
        assert!("paused: ".parse::<LanePhase>().is_err());
        assert!(LanePhase::of(&doc! {"phase": 3}).is_err());
    }

    #[test]
    fn lane_phases_round_trip_with_their_display_text() {
        let all = [
            (LanePhase::Unset, ""),
            (LanePhase::Starting, "starting"),
            (LanePhase::Copying, "copying"),
            (LanePhase::BuildingIndexes, "building indexes"),
            (LanePhase::Applying, "applying change events"),
            (LanePhase::Recovering, "recovering a lost resume point"),
            (LanePhase::PAUSED, "paused"),
            (
                LanePhase::disk_short(crate::base::role::Role::Destination),
                "paused: the destination is short of disk space",
            ),
            (
                LanePhase::disk_short(crate::base::role::Role::Source),
                "paused: the source is short of disk space",
            ),
            (LanePhase::WaitingForApproval, "waiting for approval"),
            (LanePhase::Committed, "committed"),
        ];
        for (p, s) in all {
            assert_eq!(p.to_string(), s);
            assert_eq!(Bson::from(&p), Bson::String(s.into()));
            assert_eq!(s.parse::<LanePhase>().unwrap(), p);
            assert_eq!(LanePhase::of(&doc! {"phase": s}), Ok(Some(p)));
        }
        assert_eq!(LanePhase::of(&doc! {}), Ok(None));
    }

    #[test]
    fn transitions() {
        use ResyncState::*;
        assert!(Pending.can_become(Copying));
        assert!(Copying.can_become(Copying)); // redone by a new runner
        assert!(Swapping.can_become(Copying));
        assert!(Copying.can_become(Swapping));
        assert!(Swapping.can_become(Done));
        assert!(Pending.can_become(Failed) && Copying.can_become(Failed));
        assert!(!Pending.can_become(Swapping));
        assert!(!Pending.can_become(Done));
        assert!(!Done.can_become(Failed) && !Failed.can_become(Copying));
        assert!(!Copying.can_become(Pending));
        assert!(RepairState::Running.can_become(RepairState::DifferencesRemain));
        assert!(!RepairState::Ok.can_become(RepairState::Failed));
        assert!(RepairRequestState::Pending.can_become(RepairRequestState::Done));
        assert!(!RepairRequestState::Done.can_become(RepairRequestState::Failed));
        assert!(VerifyRunStatus::Running.can_become(VerifyRunStatus::Abandoned));
        assert!(!VerifyRunStatus::Finished.can_become(VerifyRunStatus::Running));
    }
}
