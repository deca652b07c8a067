//! Plans: the TOML model, loading with layered overrides, and static validation.

pub mod diagnostic;
pub mod duration;
pub mod filter;
pub mod load;
pub mod model;
pub mod validate;

use std::path::Path;

pub use diagnostic::{Diagnostic, Severity};
pub use filter::NamespaceSelector;
pub use load::Overrides;
pub use model::{Approval, BuildIndexes, Step, WriteBlocking};
pub use validate::Plan;

/// Loads and validates a plan: `Ok` holds the plan and its warnings, `Err` every diagnostic
/// (errors and warnings) when there is at least one error.
pub fn load_plan(path: &Path, overrides: &Overrides) -> Result<(Plan, Vec<Diagnostic>), Vec<Diagnostic>> {
    let loaded = load::load(path, overrides)?;
    check_loaded(loaded)
}

/// As [`load_plan`] for text in memory.
pub fn load_plan_str(
    file: &str,
    text: &str,
    overrides: &Overrides,
) -> Result<(Plan, Vec<Diagnostic>), Vec<Diagnostic>> {
    let loaded = load::load_str(file, text, overrides)?;
    check_loaded(loaded)
}

fn check_loaded(loaded: load::LoadedFile) -> Result<(Plan, Vec<Diagnostic>), Vec<Diagnostic>> {
    let v = validate::validate(loaded);
    match v.plan {
        Some(p) => Ok((p, v.diagnostics)),
        None => Err(v.diagnostics),
    }
}
