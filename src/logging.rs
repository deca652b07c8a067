//! Logs go to stderr (stdout carries data), as text or JSON, always scrubbed of credentials.

use std::io::{self, Write};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::redact;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// A writer that scrubs each write of registered secrets before it reaches stderr.
pub struct ScrubbingStderr;

impl Write for ScrubbingStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        io::stderr().write_all(redact::scrub(&text).as_bytes())?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

impl<'a> MakeWriter<'a> for ScrubbingStderr {
    type Writer = ScrubbingStderr;
    fn make_writer(&'a self) -> Self::Writer {
        ScrubbingStderr
    }
}

/// `RUST_LOG` (or `CUTOVER_LOG`) picks levels; default `info` for cutover, `warn` elsewhere.
pub fn init(format: LogFormat, verbose: u8, quiet: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "warn,cutover=info",
        (false, 1) => "warn,cutover=debug",
        _ => "info,cutover=trace",
    };
    let filter = std::env::var("CUTOVER_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .and_then(|s| EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    let ansi = std::env::var_os("NO_COLOR").is_none() && io::IsTerminal::is_terminal(&io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(ScrubbingStderr);
    let _ = match format {
        LogFormat::Text => builder.with_ansi(ansi).with_target(false).try_init(),
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
    };
}
