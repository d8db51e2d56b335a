//! The crate's error type: every failure a user can cause or meet, rendered as a message that
//! says what went wrong, where, and what to do next.

use std::fmt;

/// Result alias used across the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A move the run machine's table does not allow: the run stays as it was. Typed, so callers
/// decide by it and not by its wording.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("run {run} cannot go from `{from}` to `{to}`; nothing was recorded")]
pub struct IllegalMove {
    /// The run.
    pub run: String,
    /// The state it is in.
    pub from: &'static str,
    /// The state asked for.
    pub to: &'static str,
}

/// Everything that can stop a sluice command. Each variant carries a message ready for a user;
/// its display passes through [`redact_urls`], so no password that slipped into one (a driver
/// message quoting a malformed URL, say) is ever printed, logged or answered.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration file is missing, malformed or inconsistent.
    #[error("{}", redact_urls(.0))]
    Config(String),
    /// The migrations directory cannot be read as a migration history.
    #[error("{}", redact_urls(.0))]
    Discovery(String),
    /// The target's history disagrees with the directory (edited, missing or failed migrations).
    #[error("{}", redact_urls(.0))]
    Guard(String),
    /// The migration lock could not be taken in time.
    #[error("{}", redact_urls(.0))]
    Lock(String),
    /// A migration's SQL failed on the server.
    #[error("{}", redact_urls(&.0.to_string()))]
    Migration(Box<MigrationFailure>),
    /// The target changed between the snapshot taken for an apply and its migration lock:
    /// another deploy ran in between, so nothing was applied.
    #[error("{0}")]
    ChangedUnderUs(Box<ChangedUnderUs>),
    /// Talking to the database failed outside a migration's own SQL.
    #[error("{}", redact_urls(&format!("{}: {}", .context, .message)))]
    Database {
        /// What sluice was doing.
        context: String,
        /// The driver's or server's message.
        message: String,
    },
    /// A snapshot provider (a local copy, Neon, RDS) could not create, restore, list or delete.
    #[error("{}", redact_urls(.0))]
    Snapshot(String),
    /// The command line asked for something that cannot be done.
    #[error("{}", redact_urls(.0))]
    Usage(String),
    /// A run, release or environment asked for does not exist.
    #[error("{}", redact_urls(.0))]
    NotFound(String),
    /// The request conflicts with what is happening (a run in the wrong state, a duplicate).
    #[error("{}", redact_urls(.0))]
    Conflict(String),
    /// A run was asked to make a move the run machine's table does not allow (see
    /// `promote::table`); nothing was recorded.
    #[error(transparent)]
    IllegalMove(#[from] IllegalMove),
    /// A rule forbids the request for this caller (self-approval, not an allowed approver).
    #[error("{}", redact_urls(.0))]
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
    #[error("{}", redact_urls(&format!("{}: {}", .path, .message)))]
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

/// What a redacted secret is replaced with.
pub const REDACTED: &str = "***";

/// Names of parameters whose value is a secret (`password=…` in a query string or a libpq
/// connection string, `"token": …` in JSON), compared without regard to case.
const SECRET_KEYS: &[&str] = &[
    "password",
    "passwd",
    "pwd",
    "pass",
    "sslpassword",
    "secret",
    "client_secret",
    "token",
    "access_token",
    "api_key",
    "apikey",
];

/// Hides every credential in free text before it reaches a message, a log line, an event or an
/// API view: the password of anything shaped like a URL's user information, however malformed
/// (`scheme://user:pw@host`, `scheme:/user:pw@host`, `scheme:user:pw@host`, `user:pw@host`,
/// passwords holding `:`, `/` or `@`), the same percent-encoded (`postgres%3A%2F%2Fu%3Apw%40h`),
/// a URL cut short after `user:pw` (`scheme://user:pw`), and the value of secret parameters
/// (`password=…`, `?token=…`, `password='a b'`). The user and host stay, so a message still
/// says where. Passwords that hold whitespace, `"` or `` ` `` unencoded are hidden up to that
/// character only: those end a word of text.
pub fn redact_urls(text: &str) -> String {
    let text = redact_parameters(text);
    let mut out = String::with_capacity(text.len());
    let mut word_start = 0;
    for (index, c) in text.char_indices() {
        if is_word_break(c) {
            out.push_str(&redact_word(&text[word_start..index]));
            out.push(c);
            word_start = index + c.len_utf8();
        }
    }
    out.push_str(&redact_word(&text[word_start..]));
    out
}

/// [`redact_urls`] on every string of a JSON document, and the whole value of every member
/// named like a secret (`password`, `token`, …).
pub fn redact_json(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(text) if could_hold_a_secret(text) => {
            *text = redact_urls(text);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact_json),
        serde_json::Value::Object(members) => {
            for (key, member) in members.iter_mut() {
                if member.is_string() && is_secret_key(key) {
                    *member = serde_json::Value::String(REDACTED.into());
                } else {
                    redact_json(member);
                }
            }
        }
        _ => {}
    }
}

/// Whether `text` has anything [`redact_urls`] could change (a cheap test that spares most
/// strings of a large document the copy).
fn could_hold_a_secret(text: &str) -> bool {
    text.contains(['@', '=', '%']) || text.contains("://")
}

fn is_secret_key(key: &str) -> bool {
    SECRET_KEYS.iter().any(|k| k.eq_ignore_ascii_case(key))
}

/// Characters that end a word of text: a URL never holds them unencoded.
fn is_word_break(c: char) -> bool {
    c.is_whitespace() || c == '"' || c == '`'
}

/// Replaces the value of every `key=value` whose key is a secret's name; the value runs to the
/// next whitespace, `&`, `;` or `,`, or, when it starts with a quote, to the closing quote.
fn redact_parameters(text: &str) -> String {
    if !text.contains('=') {
        return text.to_string();
    }
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut index = 0;
    while let Some(offset) = text[index..].find('=') {
        let equals = index + offset;
        let key_start = text[..equals]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(0, |p| p + 1);
        index = equals + 1;
        if !is_secret_key(&text[key_start..equals]) {
            continue;
        }
        let value_start = equals + 1;
        let value_end = match bytes.get(value_start) {
            Some(quote @ (b'\'' | b'"')) => text[value_start + 1..]
                .find(char::from(*quote))
                .map_or(text.len(), |p| value_start + 1 + p + 1),
            _ => text[value_start..]
                .find(|c: char| c.is_whitespace() || matches!(c, '&' | ';' | ',' | '"' | '`'))
                .map_or(text.len(), |p| value_start + p),
        };
        if value_end > value_start {
            out.push_str(&text[copied..value_start]);
            out.push_str(REDACTED);
            copied = value_end;
            index = value_end;
        }
    }
    out.push_str(&text[copied..]);
    out
}

/// One word of text with its credentials hidden, looking through percent-encoding.
fn redact_word(word: &str) -> String {
    let plain = redact_user_info(word);
    if !plain.contains('%') {
        return plain;
    }
    let mut decoded = plain.clone();
    for _ in 0..3 {
        let Some(next) = percent_decode(&decoded) else {
            break;
        };
        let redacted = redact_urls(&next);
        if redacted != next {
            return redacted;
        }
        decoded = next;
    }
    plain
}

/// `text` with `%XX` escapes decoded, or `None` when it has none.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    let mut changed = false;
    while index < bytes.len() {
        let escaped = (bytes[index] == b'%')
            .then(|| bytes.get(index + 1..index + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                index += 3;
                changed = true;
            }
            None => {
                out.push(bytes[index]);
                index += 1;
            }
        }
    }
    changed.then(|| String::from_utf8_lossy(&out).into_owned())
}

/// A word with the password of its user information hidden. The user information ends at the
/// word's last `@` (a password may hold `@`). After `scheme://` the password follows the
/// user's `:`; in any other shape (`scheme:/user:pw`, `scheme:user:pw`, `user:pw`, a password
/// holding `://`) everything after the word's first `:` is hidden, user included where a
/// scheme and a user cannot be told apart. Without an `@`, a `scheme://user:password` cut
/// short loses what follows its `:` unless that is a port number.
fn redact_user_info(word: &str) -> String {
    let Some(at) = word.rfind('@') else {
        return redact_cut_authority(word);
    };
    let left = &word[..at];
    let after_first_colon = || left.find(':').map(|c| c + 1);
    let password_start = match left.find("://") {
        Some(p) => {
            let info = left[p + 3..].trim_start_matches('/');
            let info_start = left.len() - info.len();
            match info.find(':') {
                Some(c) => Some(info_start + c + 1),
                None if left[..p].contains(':') => after_first_colon(),
                None => None,
            }
        }
        None => after_first_colon(),
    };
    let password_start = password_start.or_else(|| echoed_password_start(word, at));
    match password_start {
        Some(start) if start < at => format!("{}{REDACTED}{}", &word[..start], &word[at..]),
        _ => word.to_string(),
    }
}

/// `password@host/database` without a user or `:` (a server quoting the database name it was
/// given, when the URL `postgres:password@host/db` lost its scheme's slashes): the word's text
/// before `@` is hidden when what follows is a host (with at most a port number) and a path.
fn echoed_password_start(word: &str, at: usize) -> Option<usize> {
    let left = &word[..at];
    if left.contains(':') {
        return None;
    }
    let (authority, _) = word[at + 1..].split_once('/')?;
    let port_ok = authority.starts_with('[')
        || authority
            .split_once(':')
            .is_none_or(|(_, port)| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()));
    if authority.is_empty() || !port_ok {
        return None;
    }
    Some(
        left.rfind(['(', '<', '[', '{', '\'', '=', ',', ';'])
            .map_or(0, |p| p + 1),
    )
}

/// `scheme://user:password` without its `@host` (cut by a quote in the password, say): what
/// follows the authority's first `:` is hidden unless it is a port number.
fn redact_cut_authority(word: &str) -> String {
    let Some(p) = word.find("://") else {
        return word.to_string();
    };
    let authority_start = p + 3;
    let authority_end = word[authority_start..]
        .find(['/', '?', '#'])
        .map_or(word.len(), |e| authority_start + e);
    let authority = &word[authority_start..authority_end];
    if authority.starts_with('[') {
        return word.to_string();
    }
    match authority.find(':') {
        Some(c)
            if !authority[c + 1..].is_empty()
                && !authority[c + 1..].bytes().all(|b| b.is_ascii_digit()) =>
        {
            let start = authority_start + c + 1;
            format!("{}{REDACTED}{}", &word[..start], &word[authority_end..])
        }
        _ => word.to_string(),
    }
}

/// Standard error for the log, each line passed through [`redact_urls`] on its way out: the
/// one exit of every log line, whatever field or library message it carries.
#[derive(Debug, Clone, Copy, Default)]
pub struct RedactedStderr;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for RedactedStderr {
    type Writer = RedactingWriter<std::io::Stderr>;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter {
            inner: std::io::stderr(),
            pending: Vec::new(),
        }
    }
}

/// A writer that holds text back until a line is complete (or it is dropped), then writes it
/// with credentials hidden.
pub struct RedactingWriter<W: std::io::Write> {
    inner: W,
    pending: Vec<u8>,
}

impl<W: std::io::Write> RedactingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        RedactingWriter {
            inner,
            pending: Vec::new(),
        }
    }

    fn write_complete_lines(&mut self) -> std::io::Result<()> {
        if let Some(end) = self.pending.iter().rposition(|b| *b == b'\n') {
            let lines: Vec<u8> = self.pending.drain(..=end).collect();
            let text = redact_urls(&String::from_utf8_lossy(&lines));
            self.inner.write_all(text.as_bytes())?;
        }
        Ok(())
    }
}

impl<W: std::io::Write> std::io::Write for RedactingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.pending.extend_from_slice(buf);
        self.write_complete_lines()?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.write_complete_lines()?;
        if !self.pending.is_empty() {
            let rest = std::mem::take(&mut self.pending);
            let text = redact_urls(&String::from_utf8_lossy(&rest));
            self.inner.write_all(text.as_bytes())?;
        }
        self.inner.flush()
    }
}

impl<W: std::io::Write> Drop for RedactingWriter<W> {
    fn drop(&mut self) {
        let _ = std::io::Write::flush(self);
    }
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
    use super::{redact_json, redact_urls, Error};
    use proptest::prelude::*;

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

    #[test]
    fn item09_every_url_shape_loses_its_password_and_keeps_its_host() {
        let cases = [
            ("postgres:/user:PW@host/db", "postgres:***@host/db"),
            ("postgres:user:PW@host/db", "postgres:***@host/db"),
            ("user:PW@host/db", "user:***@host/db"),
            (
                "postgres://user:P@W/x@host/db",
                "postgres://user:***@host/db",
            ),
            ("postgres://user:P:W@host", "postgres://user:***@host"),
            ("postgres:///user:PW@host", "postgres:///user:***@host"),
            ("postgres://:PW@host", "postgres://:***@host"),
            ("u:/PW@host", "u:***@host"),
            ("u:a://PW@host", "u:***@host"),
            (
                "postgres://host/db?sslmode=require&password=PW",
                "postgres://host/db?sslmode=require&password=***",
            ),
            (
                "host=h user=u password='P W' dbname=d",
                "host=h user=u password=*** dbname=d",
            ),
            (
                "postgres%3A%2F%2Fuser%3APW%40host%2Fdb",
                "postgres://user:***@host/db",
            ),
            ("postgres://user:P%40W@host", "postgres://user:***@host"),
            (
                "database \"user:PW@host/db\" does not exist",
                "database \"user:***@host/db\" does not exist",
            ),
            ("`postgres:/user:PW@host/db`", "`postgres:***@host/db`"),
            ("(postgres://user:PW@host)", "(postgres://user:***@host)"),
            ("postgres://user:PW", "postgres://user:***"),
            (
                "database PW@localhost/nodb does not exist",
                "database ***@localhost/nodb does not exist",
            ),
            (
                "('PW@db.example.com:5432/x')",
                "('***@db.example.com:5432/x')",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(redact_urls(text), expected, "{text}");
        }
        for untouched in [
            "postgres://app@db:5432/x, http://h:1/p and sqlite:///tmp/x.db",
            "mail alice@example.com at 12:30",
            "git@github.com:org/repo.git",
            "https://registry.example/@scope/pkg",
            "postgres://[::1]:5432/db",
        ] {
            assert_eq!(redact_urls(untouched), untouched);
        }
    }

    #[test]
    fn item09_json_documents_lose_passwords_in_strings_and_secret_members() {
        let mut document = serde_json::json!({
            "error": "cannot connect: database \"u:PW@h/db\" does not exist",
            "nested": [{"password": "PW"}, {"token": "PW"}, 5, null],
            "name": "plain",
        });
        redact_json(&mut document);
        assert!(!document.to_string().contains("PW"), "{document}");
        assert_eq!(document["name"], "plain");
    }

    /// One credential in some URL shape, the way a user might mistype or encode it.
    fn url_with_password(
        scheme: &str,
        separator: &str,
        user: &str,
        password: &str,
        host: &str,
        tail: &str,
        form: u8,
    ) -> String {
        let scheme_part = if scheme.is_empty() {
            String::new()
        } else {
            format!("{scheme}{separator}")
        };
        match form {
            0 => format!("{scheme_part}{user}:{password}@{host}{tail}"),
            1 => format!(
                "{scheme_part}{user}:{}@{host}{tail}",
                percent_encode_all(password)
            ),
            2 => percent_encode_all(&format!("{scheme_part}{user}:{password}@{host}{tail}")),
            3 => format!("{scheme_part}{host}{tail}?sslmode=require&password={password}"),
            4 => format!(
                "{password}@{host}/{}",
                tail.trim_start_matches("/a@b").trim_start_matches('/')
            ),
            _ => format!("host={host} user={user} password={password} dbname=d"),
        }
    }

    fn percent_encode_all(text: &str) -> String {
        text.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    char::from(b).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn item09_a_marker_password_in_any_malformed_url_appears_in_no_message(
            marker in "MARK[A-Za-z0-9]{8}",
            // A password opening with `//` after a user without a scheme reads as
            // `scheme://user@host`; no text rule can tell them apart.
            before in "([!$&*+=~._^:@#?-][!$&*+=~._^:/@#?-]{0,3})?",
            after in "[!$&*+=~._^:/@#?-]{0,4}",
            scheme in prop::sample::select(vec!["", "postgres", "postgresql", "mysql", "https", "redis", "x-db"]),
            separator in prop::sample::select(vec!["://", ":/", ":", ":///"]),
            user in "[a-z][a-z0-9_.-]{0,6}|",
            host in prop::sample::select(vec!["host", "127.0.0.1:5432", "[::1]:5432", "db.example.com", "localhost"]),
            tail in prop::sample::select(vec!["", "/db", "/db?sslmode=require", "/db?host=/tmp/s", "/a@b"]),
            form in 0u8..6,
            wrap in prop::sample::select(vec![("", ""), ("`", "`"), ("\"", "\""), ("'", "'"), ("(", ")"), ("<", ">"), ("[", "]"), ("url=", ";")]),
            prefix in "[a-z ]{0,12}",
            suffix in "[a-z :]{0,12}",
        ) {
            let url_password = if (3..=5).contains(&form) {
                marker.clone()
            } else {
                format!("{before}{marker}{after}")
            };
            let url = url_with_password(scheme, separator, &user, &url_password, host, tail, form);
            let message = format!("{prefix}{}{url}{}{suffix}", wrap.0, wrap.1);
            let shown = [
                redact_urls(&message),
                Error::Config(message.clone()).to_string(),
                Error::database("cannot connect to environment `dev`", &message).to_string(),
                format!("{}", Error::Io { path: message.clone(), message: message.clone() }),
                {
                    let mut document = serde_json::json!({"error": message, "detail": [message]});
                    redact_json(&mut document);
                    document.to_string()
                },
                redact_urls(&serde_json::to_string(&message).unwrap_or_default()),
                redact_urls(&format!("{message:?}")),
            ];
            for text in shown {
                prop_assert!(!text.contains(&marker), "{message:?} became {text:?}");
            }
        }
    }
}
