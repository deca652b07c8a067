//! `cutover check`: the plan's validation, then a read-only preflight of both clusters.

use crate::base::exit::Exit;
use crate::cli::error::CliError;
use crate::plan::{self, Diagnostic, Overrides};
use crate::preflight::checks::{Check, CheckReport, Scope, Status};
use crate::preflight::{self, PreflightOptions};

use super::*;

pub(super) fn diagnostic_check(d: &Diagnostic) -> Check {
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

pub(super) async fn check(args: CheckArgs) -> Exit {
    let overrides = Overrides::from_process(args.plan.sets.clone());
    let (plan, warnings) = match plan::load_plan(&args.plan.plan, &overrides) {
        Ok(ok) => ok,
        Err(diags) => {
            report_plan_errors(&args.plan, &diags);
            return CliError::PlanInvalid.exit();
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
