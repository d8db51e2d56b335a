//! The commands sluice's messages suggest ("next: `sluice resume …`"), pulled out of the text
//! and run, so a test proves every hint it was shown works from the state sluice left.

use std::process::Output;

use super::Project;

/// Every `sluice …` command in backticks in `text`, in order.
pub fn hints(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|quoted| quoted.starts_with("sluice "))
        .map(str::to_string)
        .collect()
}

/// A hint's words after `sluice`, as a shell would split them; the placeholder `…` (what a
/// person writes, such as a reason) becomes `filled`.
pub fn hint_args(hint: &str, filled: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut in_word = false;
    for c in hint.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    assert_eq!(words.first().map(String::as_str), Some("sluice"), "{hint}");
    words
        .into_iter()
        .skip(1)
        .map(|w| if w == "…" { filled.to_string() } else { w })
        .collect()
}

/// Runs a hint in `project` with `env` added (the daemon's URL and a token, say).
pub fn run_hint(project: &Project, hint: &str, env: &[(&str, &str)]) -> Output {
    let args = hint_args(hint, "from a test following sluice's hint");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cmd = project.cmd(&args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    super::run_with_timeout(cmd, std::time::Duration::from_secs(120))
}
