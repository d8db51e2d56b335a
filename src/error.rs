//! The crate's error type: every failure a user can cause or meet, rendered as a message that
//! says what went wrong, where, and what to do next.

use std::fmt;

/// Result alias used across the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can stop a sluice command. Each variant carries a message ready for a user;
/// none of them carries a secret (URLs are redacted before they get here).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration file is missing, malformed or inconsistent.
    #[error("{0}")]
    Config(String),
    /// The migrations directory cannot be read as a migration history.
    #[error("{0}")]
    Discovery(String),
    /// The target's history disagrees with the directory (edited, missing or failed migrations).
    #[error("{0}")]
    Guard(String),
    /// The migration lock could not be taken in time.
    #[error("{0}")]
    Lock(String),
    /// A migration's SQL failed on the server.
    #[error("{0}")]
    Migration(Box<MigrationFailure>),
    /// The target changed between the snapshot taken for an apply and its migration lock:
    /// another deploy ran in between, so nothing was applied.
    #[error("{0}")]
    ChangedUnderUs(Box<ChangedUnderUs>),
    /// Talking to the database failed outside a migration's own SQL.
    #[error("{context}: {message}")]
    Database {
        /// What sluice was doing.
        context: String,
        /// The driver's or server's message.
        message: String,
    },
    /// A snapshot provider (a local copy, Neon, RDS) could not create, restore, list or delete.
    #[error("{0}")]
    Snapshot(String),
    /// The command line asked for something that cannot be done.
    #[error("{0}")]
    Usage(String),
    /// A run, release or environment asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with what is happening (a run in the wrong state, a duplicate).
    #[error("{0}")]
    Conflict(String),
    /// A rule forbids the request for this caller (self-approval, not an allowed approver).
    #[error("{0}")]
    Refused(String),
    /// The state store is open in another sluice process (sled allows one at a time): the
    /// caller may wait, or talk to that process instead.
    #[error(
        "{path}: the state store is in use by another sluice process (sled allows one process \
         at a time); stop it or run this command through it"
    )]
    StoreBusy {
        /// The store directory.
        path: String,
    },
    /// The state store's files are damaged: sluice refuses to work on them rather than lose
    /// or invent history.
    #[error(
        "the store at {path} is damaged: {found}. sluice has written nothing to it. Restore it \
         from a backup with `sluice store restore FILE --force` (the damaged directory is moved \
         aside, not deleted), or move the directory away to start with an empty store (losing \
         the history of runs, approvals and events)"
    )]
    StoreDamaged {
        /// The store directory.
        path: String,
        /// What was found, in words.
        found: String,
    },
    /// A local file could not be read or written.
    #[error("{path}: {message}")]
    Io {
        /// The file concerned.
        path: String,
        /// What the operating system said.
        message: String,
    },
}

impl Error {
    /// Wraps a driver error with what sluice was doing when it happened.
    pub fn database(context: impl Into<String>, err: impl fmt::Display) -> Self {
        Error::Database {
            context: context.into(),
            message: redact_urls(&err.to_string()),
        }
    }

    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: &std::path::Path, err: impl fmt::Display) -> Self {
        Error::Io {
            path: path.display().to_string(),
            message: err.to_string(),
        }
    }
}

/// What another deploy changed between a snapshot and the migration lock that followed it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChangedUnderUs {
    /// The environment.
    pub environment: String,
    /// What was pending when the snapshot was taken.
    pub expected: Vec<String>,
    /// What is pending under the lock.
    pub pending: Vec<String>,
    /// Migrations of `expected` that someone else applied meanwhile, each with who and when.
    pub applied_meanwhile: Vec<String>,
}

impl ChangedUnderUs {
    /// What changed, in one sentence, without advice (callers know what comes next).
    pub fn facts(&self) -> String {
        let mut text = format!(
            "`{}` changed between the snapshot and the migration lock",
            self.environment
        );
        if !self.applied_meanwhile.is_empty() {
            text.push_str(&format!(
                ": another deploy applied {}",
                self.applied_meanwhile.join(", ")
            ));
        }
        text.push_str(&format!(
            ". The snapshot was taken to apply [{}]; pending now: [{}]. Nothing was applied and \
             nothing was undone",
            self.expected.join(", "),
            self.pending.join(", ")
        ));
        text
    }
}

impl fmt::Display for ChangedUnderUs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.\nnext: run the command again; it plans against what is there now and takes a new snapshot",
            self.facts()
        )
    }
}

/// A migration that failed on the server, with everything needed to find and fix it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MigrationFailure {
    /// The migration's full name.
    pub migration: String,
    /// The file that holds the failing SQL.
    pub file: String,
    /// Line and column (1-based) within the file, when the server reported a position or the
    /// failing statement is known.
    pub line: Option<usize>,
    /// Column within `line`, when the server reported a position.
    pub column: Option<usize>,
    /// The failing statement's ordinal (1-based) when the migration ran statement by statement.
    pub statement: Option<usize>,
    /// SQLSTATE code, when the server sent one.
    pub sqlstate: Option<String>,
    /// The server's primary message.
    pub message: String,
    /// The server's DETAIL, if any.
    pub detail: Option<String>,
    /// The server's HINT, if any.
    pub hint: Option<String>,
    /// What state the database was left in, in words.
    pub outcome: String,
    /// The command that gets the user moving again.
    pub next: String,
}

impl MigrationFailure {
    /// The error text stored in the history row's `logs`: the same facts as the terminal report.
    pub fn log_text(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!("Migration {} failed", self.migration));
        if let Some(line) = self.line {
            out.push_str(&format!(" at {}:{}", self.file, line));
            if let Some(col) = self.column {
                out.push_str(&format!(":{col}"));
            }
        }
        if let Some(n) = self.statement {
            out.push_str(&format!(" (statement {n})"));
        }
        out.push('\n');
        match &self.sqlstate {
            Some(code) => out.push_str(&format!("SQLSTATE {code}: {}\n", self.message)),
            None => out.push_str(&format!("{}\n", self.message)),
        }
        if let Some(detail) = &self.detail {
            out.push_str(&format!("DETAIL: {detail}\n"));
        }
        if let Some(hint) = &self.hint {
            out.push_str(&format!("HINT: {hint}\n"));
        }
        out
    }
}

impl fmt::Display for MigrationFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.log_text())?;
        writeln!(f, "{}", self.outcome)?;
        write!(f, "next: {}", self.next)
    }
}

/// Replaces the password in anything that looks like a database URL (`scheme://user:pass@host`)
/// so that driver messages can be shown and logged safely.
pub fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(idx) = rest.find("://") {
        let (head, tail) = rest.split_at(idx + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == '/')
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match (authority.rfind('@'), authority.find(':')) {
            (Some(at), Some(colon)) if colon < at => {
                out.push_str(&authority[..colon]);
                out.push_str(":***");
                out.push_str(&authority[at..]);
            }
            _ => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// A reqwest error and its causes on one line, without the URL (callers name the endpoint) and
/// with any credentials in nested URLs redacted.
pub fn describe_http_error(err: reqwest::Error) -> String {
    let kind = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "could not connect"
    } else if err.is_body() || err.is_decode() {
        "the answer was cut off"
    } else {
        "the request failed"
    };
    let err = err.without_url();
    let mut parts: Vec<String> = Vec::new();
    let mut source: Option<&dyn std::error::Error> = Some(&err);
    while let Some(e) = source {
        let text = e.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = e.source();
    }
    redact_urls(&format!("{kind} ({})", parts.join(": ")))
}

/// The 1-based line of a byte offset in a config file's text, for error messages.
pub fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::redact_urls;

    #[test]
    fn passwords_in_urls_are_hidden() {
        assert_eq!(
            redact_urls("cannot reach postgres://app:s3cret@db:5432/x now"),
            "cannot reach postgres://app:***@db:5432/x now"
        );
        assert_eq!(
            redact_urls("postgres://app@db/x and http://h:1/p"),
            "postgres://app@db/x and http://h:1/p"
        );
    }
}
