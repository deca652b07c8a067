//! `cutover completions SHELL` and `cutover man [DIR]`: bash's real completion of
//! `cutover ru<TAB>` and `cutover run --li<TAB>` from the generated script, and the man pages.

use std::process::Command;

use crate::common::*;

/// Sources the generated bash script in a real `bash`, sets `COMP_WORDS`/`COMP_CWORD` as
/// readline does for `line` (the cursor at its end), calls the completion function the
/// script registered for `cutover`, and returns `COMPREPLY`.
fn bash_complete(script: &std::path::Path, line: &str) -> Vec<String> {
    let words: Vec<&str> = line.split(' ').collect();
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let program = format!(
        r#"set -u
source '{script}'
spec=$(complete -p cutover) || {{ echo "no completion registered for cutover" >&2; exit 3; }}
fn=$(sed -E 's/.*-F ([^ ]+).*/\1/' <<<"$spec")
COMP_WORDS=({words})
COMP_CWORD={cword}
COMP_LINE='{line}'
COMP_POINT=${{#COMP_LINE}}
COMP_TYPE=9
COMPREPLY=()
"$fn" cutover '{cur}' '{prev}'
printf '%s\n' "${{COMPREPLY[@]}}"
"#,
        script = script.display(),
        words = quoted.join(" "),
        cword = words.len() - 1,
        cur = words[words.len() - 1],
        prev = words[words.len() - 2],
    );
    let o = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &program])
        .output()
        .expect("run bash");
    assert!(
        o.status.success(),
        "bash completion of `{line}` failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn bash_completes_commands_and_options_from_the_generated_script() {
    let o = run_cutover(&["completions", "bash"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let dir = tempfile::tempdir().expect("temp dir");
    let script = dir.path().join("cutover.bash");
    std::fs::write(&script, &o.stdout).expect("write the script");

    assert_eq!(bash_complete(&script, "cutover ru"), vec!["run"]);
    assert_eq!(bash_complete(&script, "cutover run --li"), vec!["--listen"]);
    let re = bash_complete(&script, "cutover re");
    for c in ["resume", "resync"] {
        assert!(re.iter().any(|r| r == c), "`cutover re<TAB>`: {re:?}");
    }
    let shells = bash_complete(&script, "cutover completions ");
    for s in ["bash", "zsh", "fish", "powershell"] {
        assert!(
            shells.iter().any(|r| r == s),
            "`cutover completions <TAB>`: {shells:?}"
        );
    }
}

#[test]
fn completions_for_every_shell_name_the_commands() {
    for (shell, marker) in [
        ("zsh", "#compdef cutover"),
        ("fish", "complete -c cutover"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let o = run_cutover(&["completions", shell], &[]);
        assert_eq!(o.status.code(), Some(0), "{shell}: {}", show(&o));
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.contains(marker), "{shell}: {text}");
        assert!(
            text.contains("listen") && text.contains("approve"),
            "{shell}"
        );
    }
    let o = run_cutover(&["completions", "tcsh"], &[]);
    assert_eq!(o.status.code(), Some(2), "an unknown shell: {}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("possible values"),
        "{}",
        show(&o)
    );
}

#[test]
fn man_pages_are_generated_for_every_command() {
    let o = run_cutover(&["man"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let top = String::from_utf8_lossy(&o.stdout);
    assert!(top.contains(".TH cutover 1"), "{top}");
    assert!(top.contains("run"), "{top}");

    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("man1");
    let o = run_cutover(&["man", out.to_str().expect("utf-8")], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    for page in [
        "cutover.1",
        "cutover-run.1",
        "cutover-status.1",
        "cutover-approve.1",
        "cutover-completions.1",
    ] {
        assert!(out.join(page).exists(), "{page} in {}", show(&o));
    }
    let run = std::fs::read_to_string(out.join("cutover-run.1")).expect("cutover-run.1");
    assert!(run.contains("listen"), "{run}");
    assert!(run.contains(".SH OPTIONS"), "{run}");
}
