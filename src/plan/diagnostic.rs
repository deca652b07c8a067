//! Plan errors and warnings for people: where (file:line:column or the environment variable
//! or `--set` that supplied the value), which key, what is allowed and how to fix it.

use std::fmt;

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "from", rename_all = "kebab-case")]
pub enum Location {
    /// The plan file, 1-based line and column, and the text of that line.
    File {
        file: String,
        line: usize,
        column: usize,
        #[serde(skip)]
        text: String,
        #[serde(skip)]
        width: usize,
    },
    /// An environment variable such as `CUTOVER_PLAN__CLUSTERS__SOURCE__URI`.
    Env { variable: String },
    /// A `--set key=value` argument.
    Set { argument: String },
    /// The file as a whole (no better position is known).
    Whole { file: String },
}

#[derive(Clone, Debug, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    /// The key in plan notation, e.g. `steps[1].kind`; empty for the whole file.
    pub key: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    pub location: Location,
}

impl Diagnostic {
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// `file:line:column` or where the value came from.
    pub fn position(&self) -> String {
        match &self.location {
            Location::File {
                file, line, column, ..
            } => format!("{file}:{line}:{column}"),
            Location::Env { variable } => format!("environment variable {variable}"),
            Location::Set { argument } => format!("--set {argument}"),
            Location::Whole { file } => file.clone(),
        }
    }

    /// One line, for JSON reports and logs.
    pub fn one_line(&self) -> String {
        let mut s = format!("{}: {}", self.position(), self.message);
        if let Some(a) = &self.allowed {
            s.push_str(&format!("; allowed: {a}"));
        }
        if let Some(h) = &self.hint {
            s.push_str(&format!("; hint: {h}"));
        }
        s
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let label = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        writeln!(f, "{label}: {}", self.message)?;
        writeln!(f, "  --> {}", self.position())?;
        if let Location::File {
            line,
            column,
            text,
            width,
            ..
        } = &self.location
        {
            let num = line.to_string();
            let pad = " ".repeat(num.len());
            writeln!(f, "  {pad} |")?;
            writeln!(f, "  {num} | {text}")?;
            let caret_pad: String = text
                .chars()
                .take(column.saturating_sub(1))
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            writeln!(f, "  {pad} | {caret_pad}{}", "^".repeat((*width).max(1)))?;
        }
        if !self.key.is_empty() {
            writeln!(f, "   = key: {}", self.key)?;
        }
        if let Some(a) = &self.allowed {
            writeln!(f, "   = allowed: {a}")?;
        }
        if let Some(h) = &self.hint {
            writeln!(f, "   = hint: {h}")?;
        }
        Ok(())
    }
}

/// `Did you mean ...?` for a misspelled name, when one candidate is close enough.
pub fn did_you_mean(given: &str, candidates: &[&str]) -> Option<String> {
    let given_l = given.to_lowercase().replace('_', "-");
    candidates
        .iter()
        .map(|c| {
            (
                strsim::jaro_winkler(&given_l, &c.to_lowercase().replace('_', "-")),
                *c,
            )
        })
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| format!("did you mean `{c}`?"))
}

/// `` `a`, `b` or `c` ``
pub fn one_of(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("`{s}`")).collect();
    match quoted.len() {
        0 => String::new(),
        1 => quoted[0].clone(),
        n => format!("{} or {}", quoted[..n - 1].join(", "), quoted[n - 1]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(
            did_you_mean("reversable", &["reversible", "write_blocking"]).as_deref(),
            Some("did you mean `reversible`?")
        );
        assert_eq!(
            did_you_mean("validate_indexes", &["sync", "validate-indexes"]).as_deref(),
            Some("did you mean `validate-indexes`?")
        );
        assert_eq!(did_you_mean("zzz", &["sync", "commit"]), None);
    }
}
