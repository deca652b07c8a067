//! `cutover run`: the step interpreter ([`crate::run`]) with its options, summary and exit code.

use std::io::IsTerminal;

use crate::base::exit::Exit;
use crate::cli::error::CliError;

use super::*;

pub(super) async fn run(args: RunArgs, quiet: bool) -> Exit {
    let plan = match load(&args.plan) {
        Ok(p) => p,
        Err(e) => return e,
    };
    if let Some(addr) = args.listen {
        let token = crate::base::env::get(crate::base::env::API_TOKEN).unwrap_or_default();
        if !addr.ip().is_loopback() && token.is_empty() {
            return fail(CliError::Usage(format!(
                "`--listen {addr}` is not a loopback address: the API can pause the migration and approve \
                 its commit, so other addresses need a bearer token\nhint: set `{}` (clients then send \
                 `Authorization: Bearer <token>`), or listen on 127.0.0.1",
                crate::base::env::API_TOKEN
            )));
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
            && crate::base::env::get_os(crate::base::env::RUST_LOG).is_none()
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
            CliError::from(e).exit()
        }
    }
}

pub(super) fn run_summary(r: &crate::run::RunReport) -> String {
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
            "  write-blocked window of the last commit: {:.3}s{}\n",
            w as f64 / 1000.0,
            crate::state::record::describe_phases(&r.write_blocked_window_phases)
        ));
    }
    s
}
