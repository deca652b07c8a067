//! The command line: one file per command, [`args`] for the clap types, and here the entry
//! point, dispatch and output helpers. A failure becomes an exit code in [`error`] only.

mod approve;
pub mod args;
mod check;
mod completions;
pub mod error;
mod pause;
mod resync;
mod run;
mod status;
mod unblock;
mod verify;

use std::io::{IsTerminal, Write};

use clap::Parser;

use crate::base::exit::Exit;
use crate::base::redact;
use crate::base::role::Role;
use crate::cli::error::CliError;
use crate::ops::logging::{self};
use crate::plan::{self, Diagnostic, Overrides, Plan};
use crate::preflight::checks::CheckReport;

use approve::approve;
pub use args::*;
use check::{check, diagnostic_check};
use pause::pause;
use resync::resync;
use run::run;
use status::status;
use unblock::unblock;
use verify::verify;

/// Parses the command line, runs the command and returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => 0,
                _ => CliError::Usage(e.to_string()).exit().code(),
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
        Err(e) => return fail(CliError::Usage(e.to_string())).code(),
    };
    let _ = logging::init_with_file(cli.log_format, cli.verbose, cli.quiet, log_file);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            return fail(CliError::Failed(format!(
                "cannot start the async runtime: {e}"
            )))
            .code()
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
        Command::Completions(args) => completions::completions(args),
        Command::Man(args) => completions::man(args),
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
/// stdout) and returns the exit code of [`CliError::PlanInvalid`]. Warnings are printed to stderr.
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
            Err(CliError::PlanInvalid.exit())
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

/// Connects to the source, then the destination (in that order in the result).
async fn connect_both(
    args: &PlanArgs,
    plan: &Plan,
) -> Result<Vec<crate::cluster::Cluster>, crate::cluster::ClusterError> {
    let mut clusters = Vec::with_capacity(2);
    for (role, uri) in [
        (Role::Source, &plan.source),
        (Role::Destination, &plan.destination),
    ] {
        clusters.push(crate::cluster::Cluster::connect(role, uri, args.connect_timeout).await?);
    }
    Ok(clusters)
}

/// Loads the plan and opens its state store on the destination (the commands that only
/// read or record there: `status`, `pause`, `resume`).
async fn open_store(args: &PlanArgs) -> Result<(Plan, crate::state::StateStore), Exit> {
    let plan = load(args)?;
    let dest = connect_destination(args, &plan).await?;
    let store = crate::state::StateStore::new(&dest.client, &plan.state_database, &plan.name);
    Ok((plan, store))
}

async fn connect_destination(
    args: &PlanArgs,
    plan: &Plan,
) -> Result<crate::cluster::Cluster, Exit> {
    crate::cluster::Cluster::connect(Role::Destination, &plan.destination, args.connect_timeout)
        .await
        .map_err(fail)
}

/// Prints a failure on stderr and returns its exit code.
fn fail(e: impl Into<CliError>) -> Exit {
    let e = e.into();
    err(&format!("error: {}", e.message()));
    e.exit()
}

/// Prints a failure on stderr (and as `{"ok": false, ...}` on stdout with `--format json`).
fn fail_report(format: Format, plan: &str, e: CliError) -> Exit {
    let message = e.message();
    err(&format!("error: {message}"));
    if format == Format::Json {
        out(&serde_json::json!({"ok": false, "plan": plan, "error": message}).to_string());
    }
    e.exit()
}

/// Prints a report (`Ok((ok, text, json))`) in the chosen format, or the error, and maps
/// it to the exit code.
fn print_report(
    format: Format,
    plan: &str,
    outcome: Result<(bool, String, String), CliError>,
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
        Err(e) => fail_report(format, plan, e),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::ops::logging::LogFormat;

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
