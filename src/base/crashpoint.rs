//! Crash and pause points for tests, compiled only with the cargo feature `test-hooks`
//! (`./scripts/test.sh` and the torture bench enable it; a release build has neither the
//! points nor their environment variables, and every call here is then a no-op).
//!
//! With the feature, `CUTOVER_TEST_CRASH_AT=commit.blocked@2` makes the process abort (like
//! `kill -9`: no cleanup, no checkpoint) when step 2 reaches the `commit.blocked` point.
//! Several points may be given, separated by commas.

/// Aborts the process if `name` (or `name@step`) is a configured crash point.
#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub fn hit(_name: &str, _step: Option<usize>) {}

/// Lets a test act at an exact moment (see the `test-hooks` build).
#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub async fn pause(_name: &str) {}

#[cfg(feature = "test-hooks")]
pub use hooks::*;

#[cfg(feature = "test-hooks")]
mod hooks {
    use std::sync::OnceLock;

    pub use crate::base::env::TEST_CRASH_AT as ENV;

    fn points() -> &'static Vec<String> {
        static POINTS: OnceLock<Vec<String>> = OnceLock::new();
        POINTS.get_or_init(|| {
            crate::base::env::get(ENV)
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

    /// Pause points for tests: with `CUTOVER_TEST_PAUSE_AT=copy.reading@3` and
    /// `CUTOVER_TEST_PAUSE_DIR=/some/dir`, the task that reaches the point for the third time
    /// (`@1` when no count is given) creates `/some/dir/copy.reading.reached` and waits (other
    /// tasks go on) until the test creates `/some/dir/copy.reading.go`. Lets a test act at an
    /// exact moment (rename a collection while its copy cursor is open, or kill -9 the process
    /// there). Never set it outside tests.
    pub use crate::base::env::{TEST_PAUSE_AT as PAUSE_ENV, TEST_PAUSE_DIR as PAUSE_DIR_ENV};

    pub async fn pause(name: &str) {
        use std::collections::HashMap;
        use std::sync::Mutex;
        type Pauses = (Vec<(String, usize)>, Option<std::path::PathBuf>);
        static PAUSES: OnceLock<Pauses> = OnceLock::new();
        static HITS: OnceLock<Mutex<HashMap<String, usize>>> = OnceLock::new();
        let (points, dir) = PAUSES.get_or_init(|| {
            let points = crate::base::env::get(PAUSE_ENV)
                .map(|v| {
                    v.split(',')
                        .filter(|s| !s.trim().is_empty())
                        .map(|s| match s.trim().split_once('@') {
                            Some((n, c)) => (n.to_string(), c.parse().unwrap_or(1)),
                            None => (s.trim().to_string(), 1),
                        })
                        .collect()
                })
                .unwrap_or_default();
            (
                points,
                crate::base::env::get_os(PAUSE_DIR_ENV).map(Into::into),
            )
        });
        let Some(dir) = dir else { return };
        let Some((_, at)) = points.iter().find(|(n, _)| n == name) else {
            return;
        };
        let hit = HITS
            .get_or_init(Default::default)
            .lock()
            .map(|mut h| {
                let c = h.entry(name.to_string()).or_default();
                *c += 1;
                *c
            })
            .unwrap_or(0);
        if hit != *at {
            return;
        }
        let _ = std::fs::write(dir.join(format!("{name}.reached")), b"");
        eprintln!("pause point `{name}` reached: waiting for the test");
        while !dir.join(format!("{name}.go")).exists() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}
