//! The command line's shape: clap types for every command and its arguments (the CLI
//! reference, `docs/reference/cli.md`, is generated from them).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::base::exit::EXIT_CODES_HELP;
use crate::base::role::Role;
use crate::ops::logging::LogFormat;
use crate::plan::{self};

/// Move live data between MongoDB clusters from a checked-in plan.
#[derive(Debug, Parser)]
#[command(name = "cutover", version, about, after_help = EXIT_CODES_HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = crate::base::env::LOG_FORMAT)]
    pub log_format: LogFormat,

    /// More log detail (-v debug, -vv trace). `CUTOVER_LOG`/`RUST_LOG` take filter directives.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Only warnings and errors on stderr; no progress bars.
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// Also write the log to this file as JSON lines (same levels, credentials redacted),
    /// rotated daily: `PATH.YYYY-MM-DD`, with `PATH` a link to the current file.
    #[arg(long, global = true, value_name = "PATH")]
    pub log_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Dry run: validate the plan, then check both clusters read-only. Writes nothing.
    #[command(after_help = EXIT_CODES_HELP)]
    Check(CheckArgs),
    /// Run the plan's steps from the last checkpoint: sync, validate-indexes, commit, reverse,
    /// verify. Killed or failed, the same command continues where it stopped.
    #[command(after_help = EXIT_CODES_HELP)]
    Run(RunArgs),
    /// Show a migration's state from the state store (works from any machine that reaches the
    /// destination): phase, lag, can-commit, can-write, blocked clusters, steps.
    #[command(after_help = EXIT_CODES_HELP)]
    Status(StatusArgs),
    /// Approve a `commit` step that has `approval = "manual"` (typically from a CI job).
    #[command(after_help = EXIT_CODES_HELP)]
    Approve(ApproveArgs),
    /// Pause a running migration (from any machine that reaches the destination): copying
    /// and change application stop at their next checkpoint; the runner stays up. A commit
    /// waiting for approval keeps waiting, and does not start until `cutover resume`.
    #[command(after_help = EXIT_CODES_HELP)]
    Pause(StatusArgs),
    /// Resume a paused migration.
    #[command(after_help = EXIT_CODES_HELP)]
    Resume(StatusArgs),
    /// Release user write blocking on one cluster: the explicit, logged escape hatch.
    #[command(after_help = EXIT_CODES_HELP)]
    Unblock(UnblockArgs),
    /// Prove the destination equals the source: counts, document hashes over `_id` ranges
    /// (with the exact `_id`s that differ), indexes, collection options and views. Resumable.
    /// Before the commit, what the sync relaxed on purpose (non-unique unique indexes, TTL,
    /// capped limits) is not reported; run it after `commit` for an exact comparison.
    #[command(after_help = EXIT_CODES_HELP)]
    Verify(VerifyArgs),
    /// Copy collections again from scratch while the rest keeps replicating (before the
    /// commit, with `cutover run` live): each is copied into a fresh destination collection
    /// while the runner holds its change events, swapped in with its indexes and options, and
    /// the held events are replayed. Waits until done; `cutover status` shows the progress.
    #[command(after_help = EXIT_CODES_HELP)]
    Resync(ResyncArgs),
    /// Print the plan's JSON Schema.
    Schema,
    /// Print a shell completion script on stdout, e.g. `cutover completions bash >
    /// ~/.local/share/bash-completion/completions/cutover` (see `docs/shell.md`).
    Completions(CompletionsArgs),
    /// Write the man pages (`cutover.1` and one per command, `cutover-run.1`, ...) into DIR;
    /// without DIR, print `cutover.1` on stdout (`cutover man | man -l -`).
    Man(ManArgs),
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// The directory to write the pages into (created if missing).
    #[arg(value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub plan: PlanArgs,

    /// Document differences to list per namespace (totals are always reported). Default: the
    /// plan's `verify` step's `max_differences`, else 20.
    #[arg(long, value_name = "N")]
    pub max_differences: Option<u32>,

    /// Start a new verify run instead of continuing an interrupted one.
    #[arg(long)]
    pub restart: bool,

    /// `_id` ranges compared at the same time (each holds about two 4 MiB batches).
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub concurrency: usize,

    /// Target documents per `_id` range (the unit of parallelism and of resumption).
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    pub range_docs: u64,

    /// Re-reads of a differing range before it is reported (lag-aware while replication runs).
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub rechecks: u32,

    /// Wait before each re-read, e.g. `1s`.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub recheck_delay: Duration,

    /// Repair what differs (before the commit only): rewrite each differing document from the
    /// source (through the live lane when a runner is live), build missing indexes, set
    /// validation options; then verify again. Exit 0 only when a final pass finds nothing.
    #[arg(long)]
    pub repair: bool,

    /// With `--repair`: `build` builds missing indexes and reports extra or different ones;
    /// `drop` also drops extra ones and drops and rebuilds different ones.
    #[arg(long, value_enum, default_value_t = RepairIndexes::Build, requires = "repair")]
    pub repair_indexes: RepairIndexes,

    /// With `--repair`: repair passes at most (each followed by a verify pass).
    #[arg(long, default_value_t = 3, value_name = "N", requires = "repair")]
    pub repair_rounds: u32,

    /// With `--repair`: differing `_id`s repaired per namespace and pass.
    #[arg(long, default_value_t = 100_000, value_name = "N", requires = "repair")]
    pub repair_max: usize,
}

#[derive(Debug, Args)]
pub struct ResyncArgs {
    #[command(flatten)]
    pub plan: PlanArgs,

    /// A collection to copy again, `database.collection`. Repeatable.
    #[arg(long = "ns", value_name = "DB.COLL")]
    pub ns: Vec<String>,

    /// The collections of a database whose names match a regex, `DATABASE.REGEX` (as a plan
    /// filter with `database` and `collections_regex`), e.g. `shop.^orders_`. Repeatable.
    #[arg(long = "ns-regex", value_name = "DB.REGEX")]
    pub ns_regex: Vec<String>,

    /// How long to wait for the resyncs to finish (they go on in the runner after that).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RepairIndexes {
    Build,
    Drop,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub plan: PlanArgs,

    /// Forget this migration's progress, drop what it copied to the destination, and start
    /// the copy over (e.g. after the source's oplog rolled past the resume point). Refused
    /// once a commit has happened.
    #[arg(long)]
    pub restart: bool,

    /// Accept a plan whose clusters, options or steps changed since the migration started.
    #[arg(long)]
    pub accept_changed_plan: bool,

    /// Run at most N steps, then stop (e.g. `--max-steps 1` for one step per invocation).
    #[arg(long, value_name = "N")]
    pub max_steps: Option<usize>,

    /// Collection ranges copied in parallel.
    #[arg(long, default_value_t = 8)]
    pub copy_concurrency: usize,

    /// Documents per copy range (collections are split into `_id` ranges of about this size).
    #[arg(long, default_value_t = crate::engine::copy::DOCS_PER_RANGE)]
    pub docs_per_range: u64,

    /// Parallel writers for change events (each document's events stay in order).
    #[arg(long, default_value_t = 8)]
    pub apply_workers: usize,

    /// How long cutover retries a lost connection or an election before giving up, e.g. `5m`.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub retry_timeout: Duration,

    /// Serve the HTTP API (progress, Prometheus metrics, pause/resume/approve) on this address
    /// while the run lasts, e.g. `127.0.0.1:27182`. Addresses other than loopback need a
    /// bearer token in `CUTOVER_API_TOKEN` (then required on every request).
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub plan: PlanArgs,
}

#[derive(Debug, Args)]
pub struct ApproveArgs {
    #[command(flatten)]
    pub plan: PlanArgs,

    /// The step index of the commit to approve (default: the first manual commit not yet done).
    #[arg(long)]
    pub step: Option<usize>,

    /// A note stored with the approval (e.g. the CI job URL). Never put secrets here.
    #[arg(long, default_value = "")]
    pub note: String,
}

#[derive(Debug, Args)]
pub struct UnblockArgs {
    #[command(flatten)]
    pub plan: PlanArgs,

    /// Which cluster to release.
    #[arg(long, value_enum)]
    pub cluster: Role,

    /// Confirm: user writes become possible again on that cluster, even mid-cutover.
    #[arg(long)]
    pub yes: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// Arguments shared by every command that reads a plan.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The plan file (TOML).
    pub plan: PathBuf,

    /// Override a plan key: `--set options.max_lag=10s`. Repeatable; wins over the file and
    /// over `CUTOVER_PLAN__*` environment variables.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,

    /// Output format on stdout.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// How long to wait for each cluster to answer, e.g. `10s`.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub plan: PlanArgs,

    /// Scan every document for `$`-prefixed field names (default: a sample per collection).
    #[arg(long)]
    pub deep: bool,

    /// Only validate the plan file; do not connect to the clusters.
    #[arg(long)]
    pub no_connect: bool,
}

pub(super) fn parse_duration(s: &str) -> Result<Duration, String> {
    plan::duration::HumanDuration::parse(s).map(|d| d.get())
}
