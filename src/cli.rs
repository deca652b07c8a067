//! The command line: clap types, dispatch, text/JSON output and exit codes.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::exit::{Exit, EXIT_CODES_HELP};
use crate::logging::{self, LogFormat};
use crate::plan::{self, Diagnostic, Overrides, Plan};
use crate::preflight::{self, PreflightOptions};
use crate::redact;
use crate::report::{Check, CheckReport, Scope, Status};

/// Move live data between MongoDB clusters from a checked-in plan.
#[derive(Debug, Parser)]
#[command(name = "cutover", version, about, after_help = EXIT_CODES_HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// More log detail (-v debug, -vv trace). `CUTOVER_LOG`/`RUST_LOG` take filter directives.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Only warnings and errors on stderr; no progress bars.
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Dry run: validate the plan, then check both clusters read-only. Writes nothing.
    #[command(after_help = EXIT_CODES_HELP)]
    Check(CheckArgs),
    /// Prove the destination equals the source: counts, document hashes over `_id` ranges
    /// (with the exact `_id`s that differ), indexes, collection options and views. Resumable.
    /// Run it after `commit`: before, unique indexes may still be non-unique on the
    /// destination, and that is reported as an index difference.
    #[command(after_help = EXIT_CODES_HELP)]
    Verify(VerifyArgs),
    /// Print the plan's JSON Schema.
    Schema,
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
    logging::init(cli.log_format, cli.verbose, cli.quiet);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
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
        Command::Verify(args) => verify(args).await,
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
    std::env::var_os("NO_COLOR").is_none() && std::io::stdout().is_terminal()
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
            let name = args.plan.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            out(&CheckReport::new(&name, checks).to_json());
        }
    }
}

fn diagnostic_check(d: &Diagnostic) -> Check {
    let id = if d.key.is_empty() { "plan".to_string() } else { format!("plan.{}", d.key) };
    Check {
        id,
        cluster: Scope::Plan,
        status: if d.is_error() { Status::Fail } else { Status::Warn },
        message: format!("{}: {}", d.position(), d.message)
            + &d.allowed.as_ref().map(|a| format!(" (allowed: {a})")).unwrap_or_default(),
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
            plan.steps.iter().map(|s| s.kind()).collect::<Vec<_>>().join(", ")
        ),
    )];
    checks.extend(warnings.iter().map(diagnostic_check));
    let mut unreachable = false;
    if !args.no_connect {
        let outcome = preflight::run(
            &plan,
            &PreflightOptions { deep: args.deep, connect_timeout: args.plan.connect_timeout },
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

async fn verify(args: VerifyArgs) -> Exit {
    use crate::cluster::Cluster;
    use crate::verify::{self, SleepWait, VerifyOptions};

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
    let mut clusters = Vec::new();
    for (scope, uri) in [
        (Scope::Source, &plan.source),
        (Scope::Destination, &plan.destination),
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
    let opts = VerifyOptions {
        max_differences: max_differences as usize,
        concurrency: args.concurrency.max(1),
        range_docs: args.range_docs.max(1),
        rechecks: args.rechecks,
        restart: args.restart,
        replication: std::sync::Arc::new(SleepWait(args.recheck_delay)),
        ..VerifyOptions::default()
    };
    match verify::run(&clusters[0].client, &clusters[1].client, &plan, &opts).await {
        Ok(report) => {
            match args.plan.format {
                Format::Text => out(&report.to_text()),
                Format::Json => out(&report.to_json()),
            }
            if report.ok {
                Exit::Ok
            } else {
                Exit::Failed
            }
        }
        Err(e) => {
            let exit = if e.is_connectivity() {
                Exit::Unreachable
            } else {
                Exit::Failed
            };
            fail(exit, e.to_string())
        }
    }
}
