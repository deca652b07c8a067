//! `cutover completions SHELL` and `cutover man [DIR]`: generated from the clap definitions
//! ([`super::args`]), so they never drift from the command line.

use std::io::Write;

use clap::CommandFactory;

use crate::base::exit::Exit;
use crate::cli::error::CliError;

use super::*;

pub(super) fn completions(args: CompletionsArgs) -> Exit {
    let mut cmd = Cli::command();
    let mut buf = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "cutover", &mut buf);
    write_stdout(&buf)
}

pub(super) fn man(args: ManArgs) -> Exit {
    let cmd = Cli::command();
    match args.dir {
        None => {
            let mut buf = Vec::new();
            if let Err(e) = clap_mangen::Man::new(cmd).render(&mut buf) {
                return fail(CliError::Failed(format!("cannot render the man page: {e}")));
            }
            write_stdout(&buf)
        }
        Some(dir) => {
            if let Err(e) = std::fs::create_dir_all(&dir) {
                return fail(CliError::Failed(format!(
                    "cannot create `{}`: {e}",
                    dir.display()
                )));
            }
            if let Err(e) = clap_mangen::generate_to(cmd, &dir) {
                return fail(CliError::Failed(format!(
                    "cannot write the man pages into `{}`: {e}",
                    dir.display()
                )));
            }
            let mut pages: Vec<String> = std::fs::read_dir(&dir)
                .map(|rd| {
                    rd.filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| n.starts_with("cutover") && n.ends_with(".1"))
                        .collect()
                })
                .unwrap_or_default();
            pages.sort();
            err(&format!(
                "wrote {} man pages into {}: {}",
                pages.len(),
                dir.display(),
                pages.join(", ")
            ));
            Exit::Ok
        }
    }
}

/// Generated text goes to stdout as it is (nothing in it is a secret to scrub).
fn write_stdout(bytes: &[u8]) -> Exit {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|_| stdout.flush()) {
        Ok(()) => Exit::Ok,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Exit::Ok,
        Err(e) => fail(CliError::Failed(format!("cannot write to stdout: {e}"))),
    }
}
