//! Logs go to stderr (stdout carries data), as text or JSON, always scrubbed of credentials;
//! with `--log-file PATH` also to a file, as JSON lines, rotated daily.

use std::io::{self, Write};
use std::path::Path;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::base::{env, redact};

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

/// A writer that scrubs each formatted event before it reaches the wrapped writer.
pub struct Scrubbing<W>(W);

impl<W: Write> Write for Scrubbing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.0.write_all(redact::scrub(&text).as_bytes())?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// The log file: daily rotation (`PATH.YYYY-MM-DD`, the last 14 kept), `PATH` itself a
/// symbolic link to the current file.
pub struct LogFile(tracing_appender::rolling::RollingFileAppender);

impl LogFile {
    pub fn open(path: &Path) -> Result<Self, String> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| format!("`--log-file {}` names no file", path.display()))?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        // A regular file at PATH (e.g. from an older version) would block the link.
        if path.is_file() && !path.is_symlink() {
            return Err(format!(
                "`--log-file {}`: a regular file is in the way; cutover writes `{name}.YYYY-MM-DD` files and makes `{name}` a link to the current one",
                path.display()
            ));
        }
        let appender = tracing_appender::rolling::Builder::new()
            .rotation(tracing_appender::rolling::Rotation::DAILY)
            .filename_prefix(name.clone())
            .latest_symlink(name)
            .max_log_files(14)
            .build(&dir)
            .map_err(|e| format!("`--log-file {}`: {e}", path.display()))?;
        Ok(Self(appender))
    }
}

impl<'a> MakeWriter<'a> for LogFile {
    type Writer = Scrubbing<tracing_appender::rolling::RollingWriter<'a>>;
    fn make_writer(&'a self) -> Self::Writer {
        Scrubbing(self.0.make_writer())
    }
}

/// `RUST_LOG` (or `CUTOVER_LOG`) picks levels; default `info` for cutover, `warn` elsewhere.
pub fn init(format: LogFormat, verbose: u8, quiet: bool) {
    let _ = init_with_file(format, verbose, quiet, None);
}

/// [`init`], plus a JSON-lines log file (at the same levels) when `file` is given.
pub fn init_with_file(
    format: LogFormat,
    verbose: u8,
    quiet: bool,
    file: Option<LogFile>,
) -> Result<(), String> {
    let default = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "warn,cutover=info",
        (false, 1) => "warn,cutover=debug",
        _ => "info,cutover=trace",
    };
    let filter = env::get(env::LOG)
        .or_else(|| env::get(env::RUST_LOG))
        .and_then(|s| EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    let ansi = !env::is_set(env::NO_COLOR) && io::IsTerminal::is_terminal(&io::stderr());
    let stderr: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(ScrubbingStderr)
            .with_ansi(ansi)
            .with_target(false)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(ScrubbingStderr)
            .json()
            .with_current_span(true)
            .boxed(),
    };
    let mut layers = vec![stderr];
    if let Some(f) = file {
        layers.push(
            tracing_subscriber::fmt::layer()
                .with_writer(f)
                .json()
                .with_current_span(true)
                .with_ansi(false)
                .boxed(),
        );
    }
    tracing_subscriber::registry()
        .with(layers)
        .with(filter)
        .try_init()
        .map_err(|e| e.to_string())
}
