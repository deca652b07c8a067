//! Every environment variable cutover reads, named once. No other file spells one.
//!
//! Two families, which cannot collide:
//! - **the program's own** (`CUTOVER_LOG`, `CUTOVER_API_TOKEN`, ...): [`OWN`]; none starts with
//!   [`PLAN_PREFIX`];
//! - **plan keys**: `CUTOVER_PLAN__` + the key path in upper case with `__` between levels
//!   (`CUTOVER_PLAN__CLUSTERS__SOURCE__URI` sets `clusters.source.uri`).
//!
//! Before this prefix, plan keys were read from `CUTOVER_` + the path
//! (`CUTOVER_CLUSTERS__SOURCE__URI`). That spelling is still read (a path with `__`, or a single word
//! that is a top-level plan key: [`legacy_plan_path`]), with a warning that names the new spelling; it
//! will be removed in a later release. Any other `CUTOVER_*` variable (a CI's `CUTOVER_BIN`)
//! is not cutover's and is ignored.

/// The prefix of environment variables that set plan keys.
pub const PLAN_PREFIX: &str = "CUTOVER_PLAN__";
/// The prefix of the legacy spelling of plan keys (`CUTOVER_OPTIONS__MAX_LAG`).
pub const LEGACY_PLAN_PREFIX: &str = "CUTOVER_";

/// Log filter directives (as `RUST_LOG`); wins over [`RUST_LOG`].
pub const LOG: &str = "CUTOVER_LOG";
/// The log format on stderr, `text` or `json` (as `--log-format`, which wins).
pub const LOG_FORMAT: &str = "CUTOVER_LOG_FORMAT";
/// Any non-empty value: no progress bars (as `--quiet` does, without lowering the log level).
pub const NO_PROGRESS: &str = "CUTOVER_NO_PROGRESS";
/// The HTTP API's bearer token (`cutover run --listen`); required on every request when set.
pub const API_TOKEN: &str = "CUTOVER_API_TOKEN";
/// The lease TTL, a duration such as `20s` (at least 1s).
pub const LEASE_TTL: &str = "CUTOVER_LEASE_TTL";
/// The disk watch's sampling interval, a duration such as `10s`.
pub const DISK_WATCH_EVERY: &str = "CUTOVER_DISK_WATCH_EVERY";

/// Crash points for tests (`test-hooks` builds only; a release binary has no such name).
#[cfg(feature = "test-hooks")]
pub const TEST_CRASH_AT: &str = "CUTOVER_TEST_CRASH_AT";
/// Pause points for tests.
#[cfg(feature = "test-hooks")]
pub const TEST_PAUSE_AT: &str = "CUTOVER_TEST_PAUSE_AT";
/// Where pause points signal and wait.
#[cfg(feature = "test-hooks")]
pub const TEST_PAUSE_DIR: &str = "CUTOVER_TEST_PAUSE_DIR";

/// Conventions cutover honours.
pub const RUST_LOG: &str = "RUST_LOG";
pub const NO_COLOR: &str = "NO_COLOR";
/// Who asks for a repair (recorded with it), `USER` or else `LOGNAME`.
pub const USER: &str = "USER";
pub const LOGNAME: &str = "LOGNAME";

/// The program's own `CUTOVER_*` variables.
pub const OWN: &[&str] = &[
    LOG,
    LOG_FORMAT,
    NO_PROGRESS,
    API_TOKEN,
    LEASE_TTL,
    DISK_WATCH_EVERY,
    #[cfg(feature = "test-hooks")]
    TEST_CRASH_AT,
    #[cfg(feature = "test-hooks")]
    TEST_PAUSE_AT,
    #[cfg(feature = "test-hooks")]
    TEST_PAUSE_DIR,
];

/// The value of `name`, `None` when unset or not UTF-8.
pub fn get(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The value of `name` as the OS holds it, `None` when unset.
pub fn get_os(name: &str) -> Option<std::ffi::OsString> {
    std::env::var_os(name)
}

/// Every variable of the process, as `std::env::vars` (which panics on a name or value that
/// is not UTF-8).
pub fn all() -> std::env::Vars {
    std::env::vars()
}

/// Whether `name` is set to a non-empty value.
pub fn is_set(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty())
}

/// The plan key path a variable sets under [`PLAN_PREFIX`] (`options.max_lag` for
/// `CUTOVER_PLAN__OPTIONS__MAX_LAG`), `None` for any other variable.
pub fn plan_path(var: &str) -> Option<String> {
    let rest = var.strip_prefix(PLAN_PREFIX)?;
    (!rest.is_empty()).then(|| path_of(rest))
}

/// The plan key path a variable sets in the legacy spelling (`CUTOVER_OPTIONS__MAX_LAG`):
/// a path with `__` (an unknown one is then reported as an unknown key, as before the new
/// prefix), or a single word that is one of `top_keys`; never one of the program's own.
pub fn legacy_plan_path(var: &str, top_keys: &[&str]) -> Option<String> {
    if OWN.contains(&var) || var.starts_with(PLAN_PREFIX) {
        return None;
    }
    let rest = var.strip_prefix(LEGACY_PLAN_PREFIX)?;
    let word = rest.to_lowercase();
    (rest.contains("__") || top_keys.contains(&word.as_str())).then(|| path_of(rest))
}

/// The variable that sets plan key `path` (`options.max_lag` → `CUTOVER_PLAN__OPTIONS__MAX_LAG`).
pub fn plan_var(path: &str) -> String {
    let upper: Vec<String> = path.split('.').map(str::to_uppercase).collect();
    format!("{PLAN_PREFIX}{}", upper.join("__"))
}

fn path_of(rest: &str) -> String {
    rest.split("__")
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_own_variable_is_a_plan_key() {
        for v in OWN {
            assert!(
                v.starts_with("CUTOVER_") && !v.starts_with(PLAN_PREFIX),
                "{v}"
            );
            assert_eq!(
                legacy_plan_path(v, &["log", "api", "lease", "disk"]),
                None,
                "{v}"
            );
        }
    }

    #[test]
    fn plan_variables_map_to_paths_and_back() {
        assert_eq!(
            plan_path("CUTOVER_PLAN__OPTIONS__MAX_LAG").as_deref(),
            Some("options.max_lag")
        );
        assert_eq!(
            plan_var("options.max_lag"),
            "CUTOVER_PLAN__OPTIONS__MAX_LAG"
        );
        assert_eq!(plan_path("CUTOVER_PLAN__"), None);
        assert_eq!(plan_path("CUTOVER_OPTIONS__MAX_LAG"), None);
        let top = ["name", "options"];
        assert_eq!(
            legacy_plan_path("CUTOVER_OPTIONS__MAX_LAG", &top).as_deref(),
            Some("options.max_lag")
        );
        assert_eq!(
            legacy_plan_path("CUTOVER_NAME", &top).as_deref(),
            Some("name")
        );
        assert_eq!(legacy_plan_path("CUTOVER_BIN", &top), None);
        assert_eq!(
            legacy_plan_path("CUTOVER_OPTIONZ__MAX_LAG", &top).as_deref(),
            Some("optionz.max_lag")
        );
    }
}
