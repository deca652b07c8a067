//! (g) `cutover verify` over the synced data, only if the binary has that command.

use super::*;

/// Wall seconds, peak RSS (MB) and exit code of the verify, with a note for the summary.
pub async fn verify(
    opts: &Opts,
    env: &[(String, String)],
    dir: &Path,
    plan: &str,
) -> (Option<(f64, f64, i32)>, String) {
    if !has_verify(opts) {
        let note = "SKIPPED: this cutover binary has no `verify` command yet (issue 5)".to_string();
        log(format!("(g) {note}"));
        return (None, note);
    }
    log("(g) cutover verify…");
    let p = spawn_cutover(
        opts,
        &["verify", plan, "--format", "json"],
        &env_refs(env),
        dir,
        "verify",
    );
    let f = p.wait().await;
    let line = (
        f.wall.as_secs_f64(),
        f.max_rss_kb as f64 / 1024.0,
        f.code.unwrap_or(-1),
    );
    let note = format!(
        "exit {:?}; stdout tail: {}",
        f.code,
        tail(&f.stdout, 3).replace('\n', " ")
    );
    (Some(line), note)
}
