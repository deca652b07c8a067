//! The command line: clap types, dispatch, text/JSON output and exit codes.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::base::exit::{Exit, EXIT_CODES_HELP};
use crate::base::redact;
use crate::base::role::Role;
use crate::ops::logging::{self, LogFormat};
use crate::plan::{self, Diagnostic, Overrides, Plan};
use crate::preflight::checks::{Check, CheckReport, Scope, Status};
use crate::preflight::{self, PreflightOptions};
use crate::state::record::{Direction, RunRecord, RunState};

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
    /// over `CUTOVER_*` environment variables.
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

fn parse_duration(s: &str) -> Result<Duration, String> {
    plan::duration::HumanDuration::parse(s).map(|d| d.get())
}

/// Parses the command line, runs the command and returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => 0,
                _ => Exit::Invalid.code(),
            };
        }
    };
    let log_file = match cli
        .log_file
        .as_deref()
        .map(logging::LogFile::open)
        .transpose()
    {
        Ok(f) => f,
        Err(e) => {
            err(&format!("error: {e}"));
            return Exit::Invalid.code();
        }
    };
    let _ = logging::init_with_file(cli.log_format, cli.verbose, cli.quiet, log_file);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return Exit::Failed.code();
        }
    };
    let exit = runtime.block_on(dispatch(cli));
    exit.code()
}

async fn dispatch(cli: Cli) -> Exit {
    match cli.command {
        Command::Check(args) => check(args).await,
        Command::Run(args) => run(args, cli.quiet).await,
        Command::Status(args) => status(args).await,
        Command::Approve(args) => approve(args).await,
        Command::Pause(args) => pause(args, true).await,
        Command::Resume(args) => pause(args, false).await,
        Command::Unblock(args) => unblock(args).await,
        Command::Verify(args) => verify(args).await,
        Command::Resync(args) => resync(args, cli.quiet).await,
        Command::Schema => {
            out(&plan::model::json_schema());
            Exit::Ok
        }
    }
}

/// Writes data to stdout, scrubbed of secrets.
pub fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(redact::scrub(text).as_bytes());
    if !text.ends_with('\n') {
        let _ = stdout.write_all(b"\n");
    }
    let _ = stdout.flush();
}

/// Writes human messages to stderr, scrubbed of secrets.
pub fn err(text: &str) {
    let mut stderr = std::io::stderr().lock();
    let _ = stderr.write_all(redact::scrub(text).as_bytes());
    if !text.ends_with('\n') {
        let _ = stderr.write_all(b"\n");
    }
}

fn color_stdout() -> bool {
    !crate::base::env::is_set(crate::base::env::NO_COLOR) && std::io::stdout().is_terminal()
}

/// Loads and validates the plan. On errors, prints them (text on stderr, or a JSON report on
/// stdout) and returns `Err(Exit::Invalid)`. Warnings are printed to stderr.
pub fn load(args: &PlanArgs) -> Result<Plan, Exit> {
    let overrides = Overrides::from_process(args.sets.clone());
    match plan::load_plan(&args.plan, &overrides) {
        Ok((plan, warnings)) => {
            for w in &warnings {
                err(&w.to_string());
            }
            Ok(plan)
        }
        Err(diags) => {
            report_plan_errors(args, &diags);
            Err(Exit::Invalid)
        }
    }
}

fn report_plan_errors(args: &PlanArgs, diags: &[Diagnostic]) {
    let errors = diags.iter().filter(|d| d.is_error()).count();
    match args.format {
        Format::Text => {
            for d in diags {
                err(&d.to_string());
            }
            err(&format!(
                "error: the plan `{}` has {errors} error{}; nothing was written to any cluster",
                args.plan.display(),
                if errors == 1 { "" } else { "s" }
            ));
        }
        Format::Json => {
            let checks = diags.iter().map(diagnostic_check).collect();
            let name = args
                .plan
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            out(&CheckReport::new(&name, checks).to_json());
        }
    }
}

fn diagnostic_check(d: &Diagnostic) -> Check {
    let id = if d.key.is_empty() {
        "plan".to_string()
    } else {
        format!("plan.{}", d.key)
    };
    Check {
        id,
        cluster: Scope::Plan,
        status: if d.is_error() {
            Status::Fail
        } else {
            Status::Warn
        },
        message: format!("{}: {}", d.position(), d.message)
            + &d.allowed
                .as_ref()
                .map(|a| format!(" (allowed: {a})"))
                .unwrap_or_default(),
        fix: d.hint.clone(),
    }
}

async fn check(args: CheckArgs) -> Exit {
    let overrides = Overrides::from_process(args.plan.sets.clone());
    let (plan, warnings) = match plan::load_plan(&args.plan.plan, &overrides) {
        Ok(ok) => ok,
        Err(diags) => {
            report_plan_errors(&args.plan, &diags);
            return Exit::Invalid;
        }
    };
    let mut checks: Vec<Check> = vec![Check::pass(
        "plan",
        Scope::Plan,
        format!(
            "`{}` is valid: {} step{} ({})",
            plan.file,
            plan.steps.len(),
            if plan.steps.len() == 1 { "" } else { "s" },
            plan.steps
                .iter()
                .map(|s| s.kind())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )];
    checks.extend(warnings.iter().map(diagnostic_check));
    let mut unreachable = false;
    if !args.no_connect {
        let outcome = preflight::run(
            &plan,
            &PreflightOptions {
                deep: args.deep,
                connect_timeout: args.plan.connect_timeout,
            },
        )
        .await;
        unreachable = outcome.unreachable;
        checks.extend(outcome.checks);
    }
    let report = CheckReport::new(&plan.name, checks);
    match args.plan.format {
        Format::Text => out(&report.to_text(color_stdout())),
        Format::Json => out(&report.to_json()),
    }
    if unreachable {
        Exit::Unreachable
    } else if report.ok {
        Exit::Ok
    } else {
        Exit::Failed
    }
}

async fn run(args: RunArgs, quiet: bool) -> Exit {
    let plan = match load(&args.plan) {
        Ok(p) => p,
        Err(e) => return e,
    };
    if let Some(addr) = args.listen {
        let token = crate::base::env::get(crate::base::env::API_TOKEN).unwrap_or_default();
        if !addr.ip().is_loopback() && token.is_empty() {
            err(&format!(
                "error: `--listen {addr}` is not a loopback address: the API can pause the migration and approve \
                 its commit, so other addresses need a bearer token\nhint: set `{}` (clients then send \
                 `Authorization: Bearer <token>`), or listen on 127.0.0.1",
                crate::base::env::API_TOKEN
            ));
            return Exit::Invalid;
        }
    }
    let opts = crate::run::RunOptions {
        restart: args.restart,
        accept_changed_plan: args.accept_changed_plan,
        max_steps: args.max_steps,
        copy_concurrency: args.copy_concurrency.max(1),
        docs_per_range: args.docs_per_range.max(1),
        apply_workers: args.apply_workers.max(1),
        retry_timeout: args.retry_timeout,
        connect_timeout: args.plan.connect_timeout,
        listen: args.listen,
        progress_bars: !quiet
            && std::io::stderr().is_terminal()
            && std::env::var_os(crate::base::env::RUST_LOG).is_none()
            && !crate::base::env::is_set(crate::base::env::NO_PROGRESS),
    };
    let (report, result) = crate::run::run(plan, opts).await;
    match args.plan.format {
        Format::Json => out(&serde_json::to_string_pretty(&report).unwrap_or_default()),
        Format::Text => out(&run_summary(&report)),
    }
    match result {
        Ok(()) => Exit::Ok,
        Err(e) => {
            err(&format!("error: {e}"));
            if let Some(h) = e.hint() {
                err(&format!("hint: {h}"));
            }
            if !report.blocked.is_empty() {
                err(&format!(
                    "blocked: user writes stay blocked on the {} cluster{} until the migration \
                     continues: run `cutover run {}` (the one command that continues it)",
                    report.blocked.join(" and the "),
                    if report.blocked.len() > 1 { "s" } else { "" },
                    args.plan.plan.display()
                ));
            }
            match e {
                crate::run::RunError::Cluster(c) if c.is_connectivity() => Exit::Unreachable,
                crate::run::RunError::Interrupted => Exit::Interrupted,
                crate::run::RunError::LeaseLost(l) if !l.taken_over() => Exit::Unreachable,
                crate::run::RunError::LeaseLost(_)
                | crate::run::RunError::State(crate::state::StateError::Leased { .. }) => {
                    Exit::Refused
                }
                _ => Exit::Failed,
            }
        }
    }
}

fn run_summary(r: &crate::run::RunReport) -> String {
    let mut s = format!(
        "plan `{}`: {}\n",
        r.plan,
        if r.ok { "ok" } else { "FAILED" }
    );
    for st in &r.steps {
        s.push_str(&format!(
            "  step {} {:<17} {:<12}",
            st.index, st.kind, st.status
        ));
        if let Some(secs) = st.seconds {
            s.push_str(&format!(" {secs:>8.1}s"));
        }
        if let Some(d) = &st.detail {
            s.push_str(&format!("  {d}"));
        }
        s.push('\n');
    }
    if let Some(w) = r.write_blocked_window_ms {
        s.push_str(&format!(
            "  write-blocked window of the last commit: {:.3}s\n",
            w as f64 / 1000.0
        ));
    }
    s
}

async fn connect_destination(
    args: &PlanArgs,
    plan: &Plan,
) -> Result<crate::cluster::Cluster, Exit> {
    match crate::cluster::Cluster::connect(
        Role::Destination,
        &plan.destination,
        args.connect_timeout,
    )
    .await
    {
        Ok(c) => Ok(c),
        Err(e) => {
            err(&format!("error: {e}\nhint: {}", e.hint()));
            Err(if e.is_connectivity() {
                Exit::Unreachable
            } else {
                Exit::Failed
            })
        }
    }
}

async fn status(args: StatusArgs) -> Exit {
    let plan = match load(&args.plan) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let dest = match connect_destination(&args.plan, &plan).await {
        Ok(c) => c,
        Err(e) => return e,
    };
    let store = crate::state::StateStore::new(&dest.client, &plan.state_database, &plan.name);
    let view = match crate::ops::status::load_view(&store, &plan).await {
        Ok(v) => v,
        Err(e) => {
            err(&format!("error: {e}"));
            return Exit::Failed;
        }
    };
    match args.plan.format {
        Format::Json => out(&serde_json::to_string_pretty(&view).unwrap_or_default()),
        Format::Text => out(&view.to_text()),
    }
    Exit::Ok
}

async fn approve(args: ApproveArgs) -> Exit {
    let plan = match load(&args.plan) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let has_manual = plan.steps.iter().any(
        |s| matches!(s, crate::plan::Step::Commit(c) if c.approval == crate::plan::Approval::Manual),
    );
    if !has_manual {
        err(
            "error: the plan has no `commit` step with `approval = \"manual\"`; nothing to approve",
        );
        return Exit::Invalid;
    }
    let dest = match connect_destination(&args.plan, &plan).await {
        Ok(c) => c,
        Err(e) => return e,
    };
    let store = crate::state::StateStore::new(&dest.client, &plan.state_database, &plan.name);
    match crate::ops::service::approve(&plan, &store, args.step, &args.note).await {
        Ok((_, message)) => {
            out(&message);
            Exit::Ok
        }
        Err((exit, message)) => {
            err(&format!("error: {message}"));
            exit
        }
    }
}

async fn pause(args: StatusArgs, paused: bool) -> Exit {
    let plan = match load(&args.plan) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let dest = match connect_destination(&args.plan, &plan).await {
        Ok(c) => c,
        Err(e) => return e,
    };
    let store = crate::state::StateStore::new(&dest.client, &plan.state_database, &plan.name);
    match crate::ops::service::set_pause(&store, paused).await {
        Ok(message) => {
            out(&message);
            Exit::Ok
        }
        Err((exit, message)) => {
            err(&format!("error: {message}"));
            exit
        }
    }
}

async fn unblock(args: UnblockArgs) -> Exit {
    if !args.yes {
        err("error: `cutover unblock` needs `--yes`: it lets applications write to that cluster again, even in the middle of a cutover");
        return Exit::Invalid;
    }
    let plan = match load(&args.plan) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let (scope, uri) = match args.cluster {
        Role::Source => (Role::Source, &plan.source),
        Role::Destination => (Role::Destination, &plan.destination),
    };
    let cluster =
        match crate::cluster::Cluster::connect(scope, uri, args.plan.connect_timeout).await {
            Ok(c) => c,
            Err(e) => {
                err(&format!("error: {e}\nhint: {}", e.hint()));
                return if e.is_connectivity() {
                    Exit::Unreachable
                } else {
                    Exit::Failed
                };
            }
        };
    let name = scope.as_str();
    tracing::warn!(cluster = name, plan = %plan.name, "Releasing user write blocking on request (cutover unblock).");
    if let Err(e) = crate::cluster::set_user_write_block(&cluster, false).await {
        err(&format!("error: {e}"));
        return Exit::Failed;
    }
    // Record it where `status` looks, if the state store is reachable.
    if let Ok(dest) = crate::cluster::Cluster::connect(
        Role::Destination,
        &plan.destination,
        args.plan.connect_timeout,
    )
    .await
    {
        let store = crate::state::StateStore::new(&dest.client, &plan.state_database, &plan.name);
        let _ = store
            .set(mongodb::bson::doc! {format!("blocks.{name}"): false, "last_unblock": {"cluster": name, "when": mongodb::bson::DateTime::now()}})
            .await;
    }
    out(&format!(
        "user writes on the {name} cluster are no longer blocked"
    ));
    Exit::Ok
}

async fn verify(args: VerifyArgs) -> Exit {
    use crate::cluster::Cluster;
    use crate::verify::{self, SleepWait, VerifyOptions};

    let plan = match load(&args.plan) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let fail =
        |exit: Exit, message: String| fail_report(args.plan.format, &plan.name, exit, message);
    let mut clusters = Vec::new();
    for (scope, uri) in [
        (Role::Source, &plan.source),
        (Role::Destination, &plan.destination),
    ] {
        match Cluster::connect(scope, uri, args.plan.connect_timeout).await {
            Ok(c) => clusters.push(c),
            Err(e) => {
                let exit = if e.is_connectivity() {
                    Exit::Unreachable
                } else {
                    Exit::Failed
                };
                return fail(exit, format!("{e}\nhint: {}", e.hint()));
            }
        }
    }
    let max_differences = args.max_differences.unwrap_or_else(|| {
        plan.steps
            .iter()
            .find_map(|s| match s {
                plan::Step::Verify(v) => Some(v.max_differences),
                _ => None,
            })
            .unwrap_or(20)
    });
    // Before the commit the sync has relaxed the destination on purpose (unique, TTL,
    // capped): those are expected differences, not findings. In reverse the new cluster is
    // the source of truth, so compare in the current direction.
    let store =
        crate::state::StateStore::new(&clusters[1].client, &plan.state_database, &plan.name);
    // Whether a runner is live is decided by the state store's clock (`record_live`).
    let (run, raw) = match store.record_live().await {
        Ok(r) => r,
        // `--repair` must know whether a runner writes: it refuses without the record.
        Err(e) if args.repair => return fail(Exit::Failed, e.to_string()),
        Err(e) => {
            tracing::warn!(error = %e, "The run record could not be read: comparing in the forward direction, without the sync's relaxations.");
            (RunRecord::default(), None)
        }
    };
    let direction = run.direction;
    let mut relaxed = Vec::new();
    if run.state != RunState::Committed {
        let relax = crate::engine::catalog::RelaxationStore::new(
            store.database().clone(),
            &plan.name,
            direction,
        );
        if let Ok(list) = relax.list().await {
            relaxed = list.into_iter().map(|r| (r.ns, r.index)).collect();
        }
    }
    let opts = VerifyOptions {
        max_differences: max_differences as usize,
        concurrency: args.concurrency.max(1),
        range_docs: args.range_docs.max(1),
        rechecks: args.rechecks,
        restart: args.restart,
        replication: std::sync::Arc::new(SleepWait(args.recheck_delay)),
        relaxed,
        ..VerifyOptions::default()
    };
    if args.repair {
        let run = raw.is_some().then_some(&run);
        return verify_repair(&args, &plan, &clusters, &store, run, opts).await;
    }
    let (a, b) = if direction == Direction::Reverse {
        (&clusters[1].client, &clusters[0].client)
    } else {
        (&clusters[0].client, &clusters[1].client)
    };
    let outcome = verify::run(a, b, &plan, &opts).await;
    print_report(
        args.plan.format,
        &plan.name,
        outcome
            .map(|r| (r.ok, r.to_text(), r.to_json()))
            .map_err(|e| (e.is_connectivity(), e.to_string())),
    )
}

/// Prints a failure on stderr (and as `{"ok": false, ...}` on stdout with `--format json`).
fn fail_report(format: Format, plan: &str, exit: Exit, message: String) -> Exit {
    err(&format!("error: {message}"));
    if format == Format::Json {
        out(&serde_json::json!({"ok": false, "plan": plan, "error": message}).to_string());
    }
    exit
}

/// Prints a report (`Ok((ok, text, json))`) in the chosen format, or the error
/// (`Err((is_connectivity, message))`), and maps it to the exit code.
fn print_report(
    format: Format,
    plan: &str,
    outcome: Result<(bool, String, String), (bool, String)>,
) -> Exit {
    match outcome {
        Ok((ok, text, json)) => {
            out(if format == Format::Json { &json } else { &text });
            if ok {
                Exit::Ok
            } else {
                Exit::Failed
            }
        }
        Err((connectivity, message)) => {
            let exit = if connectivity {
                Exit::Unreachable
            } else {
                Exit::Failed
            };
            fail_report(format, plan, exit, message)
        }
    }
}

/// `resync` (see `crate::ops::resync_request` and `engine::resync`).
async fn resync(args: ResyncArgs, quiet: bool) -> Exit {
    use crate::cluster::Cluster;
    use crate::ops::resync_request::{self, ResyncReport, Waited};

    let plan = match load(&args.plan) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let fail = |exit: Exit, message: String| {
        err(&format!("error: {message}"));
        if args.plan.format == Format::Json {
            out(&serde_json::json!({"ok": false, "plan": plan.name, "error": message}).to_string());
        }
        exit
    };
    if args.ns.is_empty() && args.ns_regex.is_empty() {
        return fail(
            Exit::Invalid,
            "name a collection with `--ns db.coll` or `--ns-regex DB.REGEX`".into(),
        );
    }
    let mut clusters = Vec::new();
    for (scope, uri) in [
        (Role::Source, &plan.source),
        (Role::Destination, &plan.destination),
    ] {
        match Cluster::connect(scope, uri, args.plan.connect_timeout).await {
            Ok(c) => clusters.push(c),
            Err(e) => {
                let exit = if e.is_connectivity() {
                    Exit::Unreachable
                } else {
                    Exit::Failed
                };
                return fail(exit, format!("{e}\nhint: {}", e.hint()));
            }
        }
    }
    let store =
        crate::state::StateStore::new(&clusters[1].client, &plan.state_database, &plan.name);
    // Whether a runner is live is decided by the state store's clock (`record_live`).
    let (run, raw) = match store.record_live().await {
        Ok(r) => r,
        Err(e) => return fail(Exit::Failed, e.to_string()),
    };
    let live = run.lease_live == Some(true);
    let run = raw.is_some().then_some(&run);
    let lane = store.lane_doc(Direction::Forward).await.ok().flatten();
    let lane = match resync_request::gate(&plan.name, run, live, lane.as_ref()) {
        Ok(l) => l,
        Err(message) => return fail(Exit::Refused, message),
    };
    let namespaces =
        match resync_request::resolve(&clusters[0].client, &plan, &args.ns, &args.ns_regex).await {
            Ok(n) => n,
            Err((exit, message)) => return fail(exit, message),
        };
    let batch = match resync_request::request(&store, &lane, &namespaces).await {
        Ok(b) => b,
        Err(e) => return fail(Exit::Failed, e.to_string()),
    };
    if !quiet {
        err(&format!(
            "Requested a resync of {} (served by the live runner's lane); waiting.",
            namespaces
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let waited = resync_request::wait(&store, &batch, args.timeout, |views| {
        if !quiet {
            for v in views {
                err(&format!("  {}", v.to_text()));
            }
        }
    })
    .await;
    let (views, problem) = match waited {
        Ok(Waited::Finished(v)) => (v, None),
        Ok(Waited::RunnerGone(v)) => (
            v,
            Some(
                "the runner stopped before the resync finished; the request stays recorded and the next                  `cutover run` does it from scratch (`cutover status` shows it)"
                    .to_string(),
            ),
        ),
        Ok(Waited::TimedOut(v)) => (
            v,
            Some(format!(
                "the resync did not finish within {}; it goes on in the runner (`cutover status` shows its progress)",
                humantime::format_duration(args.timeout)
            )),
        ),
        Err(e) => return fail(Exit::Failed, e.to_string()),
    };
    let report = ResyncReport {
        ok: problem.is_none()
            && views
                .iter()
                .all(|v| v.state == crate::state::states::ResyncState::Done),
        plan: plan.name.clone(),
        resyncs: views,
    };
    match args.plan.format {
        Format::Text => out(&report.to_text()),
        Format::Json => out(&report.to_json()),
    }
    if let Some(p) = problem {
        err(&format!("error: {p}"));
    }
    if report.ok {
        Exit::Ok
    } else {
        Exit::Failed
    }
}

/// `verify --repair` (see `verify::repair`).
async fn verify_repair(
    args: &VerifyArgs,
    plan: &Plan,
    clusters: &[crate::cluster::Cluster],
    store: &crate::state::StateStore,
    run: Option<&RunRecord>,
    opts: crate::verify::VerifyOptions,
) -> Exit {
    use crate::ops::repair::{self, IndexPolicy, RepairOptions};
    let fail =
        |exit: Exit, message: String| fail_report(args.plan.format, &plan.name, exit, message);
    let lane = store.lane_doc(Direction::Forward).await.ok().flatten();
    let live = run.is_some_and(|r| r.lease_live == Some(true));
    let mode = match repair::gate(&plan.name, run, live, lane.as_ref()) {
        Ok(m) => m,
        Err(message) => return fail(Exit::Refused, message),
    };
    let ropts = RepairOptions {
        indexes: match args.repair_indexes {
            RepairIndexes::Build => IndexPolicy::Build,
            RepairIndexes::Drop => IndexPolicy::Drop,
        },
        rounds: args.repair_rounds,
        max_ids: args.repair_max.max(1),
        ..RepairOptions::default()
    };
    let (a, b) = (&clusters[0].client, &clusters[1].client);
    let outcome = repair::run(a, b, plan, store, mode, opts, &ropts).await;
    print_report(
        args.plan.format,
        &plan.name,
        outcome
            .map(|r| (r.ok, r.to_text(), r.to_json()))
            .map_err(|e| (e.is_connectivity(), e.to_string())),
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// `CUTOVER_LOG_FORMAT` was documented as configuring the program but read nowhere.
    #[test]
    fn the_log_format_comes_from_the_environment_unless_the_flag_says_otherwise() {
        std::env::set_var(crate::base::env::LOG_FORMAT, "json");
        let env = Cli::try_parse_from(["cutover", "schema"]).unwrap();
        let flag = Cli::try_parse_from(["cutover", "schema", "--log-format", "text"]).unwrap();
        std::env::remove_var(crate::base::env::LOG_FORMAT);
        assert!(matches!(env.log_format, LogFormat::Json));
        assert!(matches!(flag.log_format, LogFormat::Text));
    }
}
