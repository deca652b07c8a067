//! Crash points for tests: `CUTOVER_TEST_CRASH_AT=commit.blocked@2` makes the process abort
//! (like `kill -9`: no cleanup, no checkpoint) when step 2 reaches the `commit.blocked` point.
//! Several points may be given, separated by commas. Never set it outside tests.

use std::sync::OnceLock;

pub const ENV: &str = "CUTOVER_TEST_CRASH_AT";

fn points() -> &'static Vec<String> {
    static POINTS: OnceLock<Vec<String>> = OnceLock::new();
    POINTS.get_or_init(|| {
        std::env::var(ENV)
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// Aborts the process if `name` (or `name@step`) is a configured crash point.
pub fn hit(name: &str, step: Option<usize>) {
    let ps = points();
    if ps.is_empty() {
        return;
    }
    let qualified = step.map(|s| format!("{name}@{s}"));
    if ps
        .iter()
        .any(|p| p == name || Some(p) == qualified.as_ref())
    {
        eprintln!(
            "crash point `{}` reached: aborting (test)",
            qualified.as_deref().unwrap_or(name)
        );
        std::process::abort();
    }
}
