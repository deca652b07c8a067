//! The plan as written in TOML: the public interface. Every struct is strict
//! (`deny_unknown_fields`); doc comments here are the plan reference and the JSON Schema.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::duration::HumanDuration;

/// A cutover plan: two clusters, options, and the steps to run in order.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "cutover plan")]
pub struct PlanFile {
    /// The plan's name. It keys the plan's records in the state database, so it must stay
    /// the same for the life of a migration. 1 to 64 letters, digits, `.`, `_` and `-`.
    pub name: String,
    /// The two clusters: `source` and `destination`.
    pub clusters: Clusters,
    /// How the migration behaves.
    #[serde(default)]
    pub options: Options,
    /// Where cutover keeps its checkpoints.
    #[serde(default)]
    pub state: StateOptions,
    /// The steps, run in order. See the step kinds.
    pub steps: Vec<Step>,
}

/// The clusters of the migration.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Clusters {
    /// The cluster data is copied from (the old cluster).
    pub source: ClusterSpec,
    /// The cluster data is copied to (the new cluster). cutover's state database lives here.
    pub destination: ClusterSpec,
}

/// One cluster.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// A MongoDB connection string (`mongodb://` or `mongodb+srv://`). Keep credentials out of
    /// the plan: write `"${SOURCE_URI}"` and set the variable, or set
    /// `CUTOVER_PLAN__CLUSTERS__SOURCE__URI`. Source and destination must be different deployments.
    pub uri: String,
}

/// Who is kept from writing, and when.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum WriteBlocking {
    /// cutover blocks no writes: the operator stops the application before `commit`.
    None,
    /// User writes are blocked on the destination during the sync and released at commit.
    #[default]
    DestinationOnly,
    /// As `destination-only`, and `commit` also blocks user writes on the source. Required for
    /// `reverse`.
    SourceAndDestination,
}

/// When secondary indexes are built on the destination.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum BuildIndexes {
    /// Build every index before copying documents (slower copy, no index build at the end).
    BeforeCopy,
    /// Copy documents, then build the indexes (fastest).
    #[default]
    AfterCopy,
    /// Build no secondary indexes. Not allowed with `reversible`.
    Never,
}

/// Options of the migration.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// Allow a `reverse` step after the commit: the old source then receives the new
    /// cluster's writes. Needs `write_blocking = "source-and-destination"`, no filters and
    /// `build_indexes` other than `never`.
    #[serde(default)]
    pub reversible: bool,
    /// Which clusters cutover keeps users from writing to.
    #[serde(default)]
    pub write_blocking: WriteBlocking,
    /// When secondary indexes are built on the destination.
    #[serde(default)]
    pub build_indexes: BuildIndexes,
    /// `sync` reports can-commit once the copy is done and replication lag is below this.
    #[serde(default = "default_max_lag")]
    pub max_lag: HumanDuration,
    /// Apply change events while the initial copy runs (the default): the source's oplog
    /// only has to hold the replication lag, not the copy's duration. `false` copies first
    /// and applies the events since the copy's start afterwards (the oplog must then hold
    /// the whole copy); kept as a fallback and as the benchmark's baseline. Read when the
    /// sync starts; a resumed sync keeps the mode it started with. How:
    /// `docs/copy-with-events.md`.
    #[serde(default = "default_true")]
    pub apply_during_copy: bool,
    /// Namespaces to sync (`[[options.include]]`). Absent: every user namespace. `admin`,
    /// `local`, `config`, the state database and `system.*` collections are never synced,
    /// whatever the filters say.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<NamespaceFilter>,
    /// Namespaces to leave out, applied after `include` (`[[options.exclude]]`). Absent: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<NamespaceFilter>,
}

fn default_true() -> bool {
    true
}

fn default_max_lag() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(5))
}

impl Default for Options {
    fn default() -> Self {
        Self {
            reversible: false,
            write_blocking: WriteBlocking::default(),
            build_indexes: BuildIndexes::default(),
            max_lag: default_max_lag(),
            apply_during_copy: true,
            include: Vec::new(),
            exclude: Vec::new(),
        }
    }
}

/// Selects namespaces: one of `database` / `database_regex`, and optionally one of
/// `collections` / `collections_regex` (absent: every collection of the database).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NamespaceFilter {
    /// A database name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// A regular expression matched against database names (Rust `regex` syntax, like RE2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_regex: Option<String>,
    /// Collection names in the selected databases. Absent: every collection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collections: Option<Vec<String>>,
    /// A regular expression matched against collection names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collections_regex: Option<String>,
}

/// Where cutover keeps its checkpoints.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StateOptions {
    /// A database on the original destination that cutover owns. It is never synced.
    #[serde(default = "default_state_db")]
    pub database: String,
}

fn default_state_db() -> String {
    "__cutover".to_string()
}

impl Default for StateOptions {
    fn default() -> Self {
        Self {
            database: default_state_db(),
        }
    }
}

/// One step of the plan, chosen by `kind`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Step {
    /// Copy every selected namespace and replicate changes until can-commit. Replication
    /// keeps running through the following steps until a `commit`. One per plan, first.
    Sync(SyncStep),
    /// Check that no unique index on the source uses the legacy (pre-4.2) format, on every
    /// member, and that every source unique index exists identically on the destination.
    /// Needed before `reverse`.
    ValidateIndexes(ValidateIndexesStep),
    /// The cutover: wait for can-commit (and approval), block source writes, drain, restore
    /// unique/TTL/capped settings, then make the destination writable. Follows `sync` or
    /// `reverse`.
    Commit(CommitStep),
    /// After the commit: replicate the new cluster's writes back to the old one. Follows the
    /// forward `commit`; needs `reversible = true`.
    Reverse(ReverseStep),
    /// Compare source and destination: counts, document hashes, indexes, options; list up to
    /// `max_differences` differences per namespace. Follows `sync`.
    Verify(VerifyStep),
}

/// Kinds in the order the docs list them; used for did-you-mean.
pub const STEP_KINDS: &[&str] = &["sync", "validate-indexes", "commit", "reverse", "verify"];

impl Step {
    pub fn kind(&self) -> &'static str {
        match self {
            Step::Sync(_) => "sync",
            Step::ValidateIndexes(_) => "validate-indexes",
            Step::Commit(_) => "commit",
            Step::Reverse(_) => "reverse",
            Step::Verify(_) => "verify",
        }
    }
}

/// `kind = "sync"`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SyncStep {}

/// `kind = "validate-indexes"`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidateIndexesStep {}

/// Who decides when the cutover happens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Approval {
    /// Proceed as soon as the sync can commit.
    #[default]
    Auto,
    /// Wait until someone runs `cutover approve PLAN` (for example a CI job).
    Manual,
}

/// `kind = "commit"`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommitStep {
    /// `auto` or `manual` (wait for `cutover approve`).
    #[serde(default)]
    pub approval: Approval,
    /// How long to wait for can-commit and approval before failing.
    #[serde(default = "default_commit_timeout")]
    pub timeout: HumanDuration,
}

fn default_commit_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(30 * 60))
}

impl Default for CommitStep {
    fn default() -> Self {
        Self {
            approval: Approval::Auto,
            timeout: default_commit_timeout(),
        }
    }
}

/// `kind = "reverse"`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReverseStep {}

/// `kind = "verify"`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyStep {
    /// How many differences to list per namespace (the totals are always reported).
    #[serde(default = "default_max_differences")]
    pub max_differences: u32,
}

fn default_max_differences() -> u32 {
    20
}

impl Default for VerifyStep {
    fn default() -> Self {
        Self {
            max_differences: default_max_differences(),
        }
    }
}

/// The JSON Schema of a plan file, as checked in at `schemas/plan.schema.json`.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(PlanFile);
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}
