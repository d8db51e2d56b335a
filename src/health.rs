//! Health checks per environment: after a run, sluice measures whether the environment still
//! works (an HTTP endpoint answers, a SQL query returns the expected value, the schema holds the
//! expected objects) and turns the measurements into one verdict that decides between carrying
//! on and rolling back.
//!
//! Checks are `[[health]]` tables in `environments/<name>.toml`; [`parse_checks`] validates
//! them with the same `file:line: key …` messages as the rest of the configuration. Each check
//! takes `count` measurements `interval` apart after `initial_delay`, and [`run_check`] judges
//! them the way Argo Rollouts judges an analysis: failures beyond `failure_limit` fail the
//! check at once, consecutive errors beyond `consecutive_error_limit` end it in error, and an
//! inconclusive measurement (a missing JSON value, a query without rows) makes the whole check
//! inconclusive rather than letting it pass.
//!
//! Nothing here writes: SQL runs in a read-only transaction that is rolled back, and messages
//! never carry header values read from the environment or passwords from URLs.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::path::Path;
use std::pin::Pin;
use std::str::FromStr;
use std::task::Poll;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgDatabaseError, PgRow, PgValueFormat};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteRow};
use sqlx::{ConnectOptions, Connection, Executor, Row, TypeInfo, ValueRef};
use toml::Spanned;

use crate::error::{redact_urls, Error};
use crate::migrations::lexer;
use crate::target::postgres::{take_schema_param, APPLICATION_NAME};
use crate::target::Engine;

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// One `[[health]]` table as written, with positions kept so that [`parse_checks`] can name the
/// line of every mistake. Deserialize a TOML array of tables into `Vec<RawHealthCheck>`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    name: Option<Spanned<String>>,
    kind: Option<Spanned<String>>,
    method: Option<Spanned<String>>,
    url: Option<Spanned<String>>,
    expect_status: Option<Spanned<i64>>,
    json_pointer: Option<Spanned<String>>,
    expect_json: Option<Spanned<toml::Value>>,
    body_contains: Option<Spanned<String>>,
    headers: Option<Spanned<BTreeMap<String, Spanned<String>>>>,
    query: Option<Spanned<String>>,
    expect: Option<Spanned<toml::Value>>,
    tables: Option<SpannedList>,
    columns: Option<SpannedList>,
    enums: Option<Spanned<BTreeMap<String, SpannedList>>>,
    initial_delay: Option<Spanned<String>>,
    interval: Option<Spanned<String>>,
    count: Option<Spanned<i64>>,
    timeout: Option<Spanned<String>>,
    failure_limit: Option<Spanned<i64>>,
    consecutive_error_limit: Option<Spanned<i64>>,
}

/// A list of strings with the position of the list and of each entry.
type SpannedList = Spanned<Vec<Spanned<String>>>;

const HTTP_KEYS: &[&str] = &[
    "method",
    "url",
    "expect_status",
    "json_pointer",
    "expect_json",
    "body_contains",
    "headers",
];
const SQL_KEYS: &[&str] = &["query", "expect"];
const SCHEMA_KEYS: &[&str] = &["tables", "columns", "enums"];

impl RawHealthCheck {
    /// Every kind-specific key that was given, with its span.
    fn kind_keys(&self) -> Vec<(&'static str, Range<usize>)> {
        fn s<T>(v: &Option<Spanned<T>>) -> Option<Range<usize>> {
            v.as_ref().map(Spanned::span)
        }
        [
            ("method", s(&self.method)),
            ("url", s(&self.url)),
            ("expect_status", s(&self.expect_status)),
            ("json_pointer", s(&self.json_pointer)),
            ("expect_json", s(&self.expect_json)),
            ("body_contains", s(&self.body_contains)),
            ("headers", s(&self.headers)),
            ("query", s(&self.query)),
            ("expect", s(&self.expect)),
            ("tables", s(&self.tables)),
            ("columns", s(&self.columns)),
            ("enums", s(&self.enums)),
        ]
        .into_iter()
        .filter_map(|(k, span)| span.map(|span| (k, span)))
        .collect()
    }

    /// The earliest position of anything written in this table, to point at the check itself.
    fn first_offset(&self) -> Option<usize> {
        fn s<T>(v: &Option<Spanned<T>>) -> Option<usize> {
            v.as_ref().map(|v| v.span().start)
        }
        self.kind_keys()
            .into_iter()
            .map(|(_, span)| Some(span.start))
            .chain([
                s(&self.name),
                s(&self.kind),
                s(&self.initial_delay),
                s(&self.interval),
                s(&self.count),
                s(&self.timeout),
                s(&self.failure_limit),
                s(&self.consecutive_error_limit),
            ])
            .flatten()
            .min()
    }
}

/// A validated health check: what to measure and how often.
#[derive(Debug, Clone)]
pub struct HealthCheck {
    /// Unique within the environment; names the check in messages and in the run's record.
    pub name: String,
    /// What one measurement does.
    pub kind: CheckKind,
    /// How many measurements, how far apart, and how many misses are tolerated.
    pub schedule: Schedule,
}

/// What one measurement of a check does.
#[derive(Debug, Clone)]
pub enum CheckKind {
    /// Request a URL and judge the answer.
    Http(Box<HttpCheck>),
    /// Run a read-only query against the environment's database and compare one value.
    Sql(SqlCheck),
    /// Look up tables, columns and enum labels in the database's catalog.
    Schema(SchemaCheck),
}

impl CheckKind {
    /// The `kind` as written in the configuration, for messages and default names.
    pub fn name(&self) -> &'static str {
        match self {
            CheckKind::Http(_) => "http",
            CheckKind::Sql(_) => "sql",
            CheckKind::Schema(_) => "schema",
        }
    }
}

/// An HTTP check: the request to send and what the answer must look like.
#[derive(Debug, Clone)]
pub struct HttpCheck {
    /// The request method (default GET).
    pub method: reqwest::Method,
    /// The URL; it never holds a password (refused when parsing).
    pub url: reqwest::Url,
    /// The status the answer must have (default 200). Redirects are not followed.
    pub expect_status: u16,
    /// What the body must hold besides the status.
    pub body: BodyExpectation,
    /// Headers whose values are read from environment variables at each measurement, so
    /// secrets never sit in the configuration and rotate without a reload.
    pub headers: Vec<HeaderFromEnv>,
}

/// A request header whose value comes from an environment variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderFromEnv {
    /// The header's name.
    pub name: String,
    /// The environment variable holding its value.
    pub env_var: String,
}

/// What an HTTP answer's body must hold.
#[derive(Debug, Clone, PartialEq)]
pub enum BodyExpectation {
    /// Only the status matters.
    Any,
    /// The body is JSON and the value at `pointer` (RFC 6901) equals `expected`; an absent
    /// value makes the measurement inconclusive.
    JsonPointer {
        /// The JSON pointer, e.g. `/db/ok`.
        pointer: String,
        /// The value it must point at.
        expected: serde_json::Value,
    },
    /// The body contains this text.
    Contains(String),
}

/// A SQL check: one read-only query and the value its first column of its first row must have.
#[derive(Debug, Clone, PartialEq)]
pub struct SqlCheck {
    /// Exactly one statement.
    pub query: String,
    /// The expected value, compared as text after normalising numbers and booleans.
    pub expect: SqlValue,
}

/// The value a SQL check expects, as written in TOML.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    /// `expect = 0`
    Integer(i64),
    /// `expect = 1.5`
    Float(f64),
    /// `expect = true`
    Bool(bool),
    /// `expect = "text"` (also TOML dates, as written)
    Text(String),
}

impl fmt::Display for SqlValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SqlValue::Integer(i) => write!(f, "{i}"),
            SqlValue::Float(x) => write!(f, "{x}"),
            SqlValue::Bool(b) => write!(f, "{b}"),
            SqlValue::Text(s) => write!(f, "{s:?}"),
        }
    }
}

/// A schema check: objects that must exist after the migrations.
#[derive(Debug, Clone, PartialEq)]
pub struct SchemaCheck {
    /// Tables (or views) that must exist in the search path's schemas.
    pub tables: Vec<String>,
    /// Columns that must exist.
    pub columns: Vec<ColumnRef>,
    /// Enum types and labels that must exist (PostgreSQL only).
    pub enums: Vec<EnumLabels>,
    /// Where `enums` was written (`file:line: key …`), so that using them against SQLite is
    /// reported as the configuration error it is.
    pub enums_key: Option<String>,
}

/// A `table.column` of a schema check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnRef {
    /// The table.
    pub table: String,
    /// The column.
    pub column: String,
}

/// An enum type and the labels it must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnumLabels {
    /// The enum type's name.
    pub name: String,
    /// Labels that must exist (others may exist too).
    pub labels: Vec<String>,
}

/// When and how often a check measures, and how many misses it tolerates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Wait before the first measurement, so a service can settle (default 0s).
    pub initial_delay: Duration,
    /// Wait between the end of one measurement and the start of the next (default 10s).
    pub interval: Duration,
    /// Number of measurements (default 1, at least 1).
    pub count: u32,
    /// Limit for one measurement; a measurement that takes longer is an error (default 10s).
    pub timeout: Duration,
    /// Failed measurements tolerated before the check fails (default 0).
    pub failure_limit: u32,
    /// Consecutive errors tolerated before the check ends in error (default 4).
    pub consecutive_error_limit: u32,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            initial_delay: Duration::ZERO,
            interval: Duration::from_secs(10),
            count: 1,
            timeout: Duration::from_secs(10),
            failure_limit: 0,
            consecutive_error_limit: 4,
        }
    }
}

/// Position-aware error builder for the file the checks came from.
struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Ctx<'_> {
    fn line_of(&self, offset: usize) -> usize {
        crate::error::line_of(self.text, offset)
    }

    /// The line of the `index`-th (1-based) `[[health]]` header, for an empty table.
    fn header_line(&self, index: usize) -> Option<usize> {
        self.text
            .lines()
            .enumerate()
            .filter(|(_, l)| {
                let l = l.trim_start();
                l.starts_with("[[") && l[2..].trim_start().starts_with("health")
            })
            .nth(index - 1)
            .map(|(n, _)| n + 1)
    }

    fn at_offset(&self, key: &str, offset: Option<usize>, message: impl fmt::Display) -> Error {
        self.at_line(key, offset.map(|o| self.line_of(o)), message)
    }

    fn at_line(&self, key: &str, line: Option<usize>, message: impl fmt::Display) -> Error {
        match line {
            Some(line) => Error::Config(format!(
                "{}:{line}: key `{key}`: {message}",
                self.path.display()
            )),
            None => Error::Config(format!("{}: key `{key}`: {message}", self.path.display())),
        }
    }

    fn at<T>(&self, key: &str, value: &Spanned<T>, message: impl fmt::Display) -> Error {
        self.at_offset(key, Some(value.span().start), message)
    }

    fn duration(
        &self,
        key: &str,
        value: &Option<Spanned<String>>,
    ) -> Result<Option<Duration>, Error> {
        let Some(value) = value else { return Ok(None) };
        crate::config::parse_duration(value.get_ref())
            .map(Some)
            .map_err(|message| self.at(key, value, message))
    }

    fn whole(
        &self,
        key: &str,
        value: &Option<Spanned<i64>>,
        min: i64,
    ) -> Result<Option<u32>, Error> {
        let Some(value) = value else { return Ok(None) };
        let n = *value.get_ref();
        if n < min {
            return Err(self.at(key, value, format!("must be at least {min}")));
        }
        u32::try_from(n)
            .map(Some)
            .map_err(|_| self.at(key, value, format!("must be at most {}", u32::MAX)))
    }
}

/// Validates the `[[health]]` tables of one environment file. `file` and `text` are the file's
/// path and contents, used only to name file, line and key in errors such as
/// `environments/prod.toml:12: key `health[2].url`: …`. Checks are numbered from 1 in the
/// order written; unnamed checks are called `<kind>-<number>`.
pub fn parse_checks(
    raw: Vec<RawHealthCheck>,
    file: &Path,
    text: &str,
) -> Result<Vec<HealthCheck>, Error> {
    let ctx = Ctx { path: file, text };
    let mut checks: Vec<HealthCheck> = Vec::with_capacity(raw.len());
    let mut names: HashMap<String, usize> = HashMap::new();
    for (i, raw) in raw.into_iter().enumerate() {
        let index = i + 1;
        let check = parse_one(&ctx, index, &raw)?;
        if let Some(first) = names.insert(check.name.clone(), index) {
            let offset = raw
                .name
                .as_ref()
                .map(|n| n.span().start)
                .or(raw.first_offset());
            return Err(ctx.at_offset(
                &format!("health[{index}].name"),
                offset,
                format!(
                    "`{}` is already the name of health[{first}]; check names must be unique",
                    check.name
                ),
            ));
        }
        checks.push(check);
    }
    Ok(checks)
}

fn parse_one(ctx: &Ctx<'_>, index: usize, raw: &RawHealthCheck) -> Result<HealthCheck, Error> {
    let key = |k: &str| format!("health[{index}].{k}");
    let Some(kind) = &raw.kind else {
        // An empty table has no positions of its own: point at its header.
        let line = raw
            .first_offset()
            .map(|o| ctx.line_of(o))
            .or_else(|| ctx.header_line(index));
        return Err(ctx.at_line(
            &key("kind"),
            line,
            "missing; every [[health]] table needs `kind = \"http\"`, `\"sql\"` or `\"schema\"`",
        ));
    };
    let kind_name = kind.get_ref().trim();
    let allowed = match kind_name {
        "http" => HTTP_KEYS,
        "sql" => SQL_KEYS,
        "schema" => SCHEMA_KEYS,
        other => {
            return Err(ctx.at(
                &key("kind"),
                kind,
                format!("unknown kind `{other}`; expected http, sql or schema"),
            ))
        }
    };
    for (k, span) in raw.kind_keys() {
        if !allowed.contains(&k) {
            return Err(Error::Config(format!(
                "{}:{}: key `{}` does not apply to kind `{kind_name}`",
                ctx.path.display(),
                ctx.line_of(span.start),
                key(k)
            )));
        }
    }
    let missing = |k: &str, why: &str| ctx.at(&key(k), kind, format!("missing; {why}"));

    let name = match &raw.name {
        Some(n) if n.get_ref().trim().is_empty() => {
            return Err(ctx.at(&key("name"), n, "must not be empty"))
        }
        Some(n) => n.get_ref().trim().to_string(),
        None => format!("{kind_name}-{index}"),
    };

    let defaults = Schedule::default();
    let schedule = Schedule {
        initial_delay: ctx
            .duration(&key("initial_delay"), &raw.initial_delay)?
            .unwrap_or(defaults.initial_delay),
        interval: ctx
            .duration(&key("interval"), &raw.interval)?
            .unwrap_or(defaults.interval),
        count: ctx
            .whole(&key("count"), &raw.count, 1)?
            .unwrap_or(defaults.count),
        timeout: match (ctx.duration(&key("timeout"), &raw.timeout)?, &raw.timeout) {
            (Some(d), Some(written)) if d.is_zero() => {
                return Err(ctx.at(&key("timeout"), written, "must be longer than 0s"));
            }
            (Some(d), _) => d,
            (None, _) => defaults.timeout,
        },
        failure_limit: ctx
            .whole(&key("failure_limit"), &raw.failure_limit, 0)?
            .unwrap_or(defaults.failure_limit),
        consecutive_error_limit: ctx
            .whole(
                &key("consecutive_error_limit"),
                &raw.consecutive_error_limit,
                0,
            )?
            .unwrap_or(defaults.consecutive_error_limit),
    };

    let kind = match kind_name {
        "http" => CheckKind::Http(Box::new(parse_http(ctx, index, raw, &missing)?)),
        "sql" => CheckKind::Sql(parse_sql(ctx, index, raw, &missing)?),
        _ => CheckKind::Schema(parse_schema(ctx, index, raw, kind)?),
    };
    Ok(HealthCheck {
        name,
        kind,
        schedule,
    })
}

fn parse_http(
    ctx: &Ctx<'_>,
    index: usize,
    raw: &RawHealthCheck,
    missing: &dyn Fn(&str, &str) -> Error,
) -> Result<HttpCheck, Error> {
    let key = |k: &str| format!("health[{index}].{k}");
    let Some(url_raw) = &raw.url else {
        return Err(missing("url", "an `http` check needs the URL to request"));
    };
    let url = reqwest::Url::parse(url_raw.get_ref().trim()).map_err(|e| {
        ctx.at(
            &key("url"),
            url_raw,
            format!(
                "`{}` is not a valid URL ({e})",
                redact_urls(url_raw.get_ref().trim())
            ),
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ctx.at(
            &key("url"),
            url_raw,
            format!(
                "scheme `{}:` is not supported; use http:// or https://",
                url.scheme()
            ),
        ));
    }
    if url.password().is_some() {
        return Err(ctx.at(
            &key("url"),
            url_raw,
            "must not hold a password; send credentials in a header whose value comes from an \
             environment variable, e.g. `headers = { Authorization = \"HEALTH_TOKEN\" }`",
        ));
    }
    let method = match &raw.method {
        None => reqwest::Method::GET,
        Some(m) => {
            let upper = m.get_ref().trim().to_ascii_uppercase();
            match upper.as_str() {
                "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS" => {
                    reqwest::Method::from_bytes(upper.as_bytes()).map_err(|e| {
                        ctx.at(&key("method"), m, format!("`{}` is not a method ({e})", m.get_ref()))
                    })?
                }
                _ => {
                    return Err(ctx.at(
                        &key("method"),
                        m,
                        format!(
                            "`{}` is not a method; expected GET, HEAD, POST, PUT, PATCH, DELETE or OPTIONS",
                            m.get_ref()
                        ),
                    ))
                }
            }
        }
    };
    let expect_status = match &raw.expect_status {
        None => 200,
        Some(s) => match u16::try_from(*s.get_ref()) {
            Ok(code) if (100..=599).contains(&code) => code,
            _ => {
                return Err(ctx.at(
                    &key("expect_status"),
                    s,
                    format!("{} is not an HTTP status (100 to 599)", s.get_ref()),
                ))
            }
        },
    };
    let body = match (&raw.json_pointer, &raw.expect_json, &raw.body_contains) {
        (Some(_), Some(_), Some(c)) => {
            return Err(ctx.at(
                &key("body_contains"),
                c,
                "give either `json_pointer` with `expect_json` or `body_contains`, not both",
            ))
        }
        (Some(p), None, _) => {
            return Err(ctx.at(
                &key("json_pointer"),
                p,
                "needs `expect_json`, the value the pointer must point at",
            ))
        }
        (None, Some(v), _) => {
            return Err(ctx.at(
                &key("expect_json"),
                v,
                "needs `json_pointer`, the place in the body to compare (e.g. \"/status\")",
            ))
        }
        (Some(p), Some(v), None) => {
            let pointer = p.get_ref().clone();
            if let Err(why) = validate_pointer(&pointer) {
                return Err(ctx.at(&key("json_pointer"), p, why));
            }
            let expected = toml_to_json(v.get_ref()).ok_or_else(|| {
                ctx.at(
                    &key("expect_json"),
                    v,
                    "holds a number that JSON cannot represent (nan or inf)",
                )
            })?;
            BodyExpectation::JsonPointer { pointer, expected }
        }
        (None, None, Some(c)) if c.get_ref().is_empty() => {
            return Err(ctx.at(&key("body_contains"), c, "must not be empty"))
        }
        (None, None, Some(c)) => BodyExpectation::Contains(c.get_ref().clone()),
        (None, None, None) => BodyExpectation::Any,
    };
    let mut headers = Vec::new();
    if let Some(map) = &raw.headers {
        for (name, var) in map.get_ref() {
            let hkey = key(&format!("headers.{name}"));
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(ctx.at(&hkey, var, format!("`{name}` is not a valid header name")));
            }
            // Never echo the value: it may be a secret pasted where a variable name belongs.
            if !is_env_var_name(var.get_ref()) {
                return Err(ctx.at(
                    &hkey,
                    var,
                    "must name the environment variable that holds the header's value \
                     (letters, digits and `_`), not the value itself",
                ));
            }
            headers.push(HeaderFromEnv {
                name: name.clone(),
                env_var: var.get_ref().clone(),
            });
        }
    }
    Ok(HttpCheck {
        method,
        url,
        expect_status,
        body,
        headers,
    })
}

fn parse_sql(
    ctx: &Ctx<'_>,
    index: usize,
    raw: &RawHealthCheck,
    missing: &dyn Fn(&str, &str) -> Error,
) -> Result<SqlCheck, Error> {
    let key = |k: &str| format!("health[{index}].{k}");
    let Some(query) = &raw.query else {
        return Err(missing("query", "a `sql` check needs the query to run"));
    };
    if let Err(why) = single_statement(query.get_ref()) {
        return Err(ctx.at(&key("query"), query, why));
    }
    let Some(expect) = &raw.expect else {
        return Err(missing(
            "expect",
            "a `sql` check needs the value the first column of the first row must have",
        ));
    };
    let value = match expect.get_ref() {
        toml::Value::Integer(i) => SqlValue::Integer(*i),
        toml::Value::Float(f) if f.is_finite() => SqlValue::Float(*f),
        toml::Value::Boolean(b) => SqlValue::Bool(*b),
        toml::Value::String(s) => SqlValue::Text(s.clone()),
        toml::Value::Datetime(d) => SqlValue::Text(d.to_string()),
        _ => {
            return Err(ctx.at(
                &key("expect"),
                expect,
                "must be a string, a finite number or a boolean",
            ))
        }
    };
    Ok(SqlCheck {
        query: query.get_ref().trim().to_string(),
        expect: value,
    })
}

fn parse_schema(
    ctx: &Ctx<'_>,
    index: usize,
    raw: &RawHealthCheck,
    kind: &Spanned<String>,
) -> Result<SchemaCheck, Error> {
    let key = |k: &str| format!("health[{index}].{k}");
    let mut tables = Vec::new();
    for t in raw.tables.iter().flat_map(|v| v.get_ref()) {
        let name = t.get_ref().trim();
        if name.is_empty() || name.contains('.') {
            return Err(ctx.at(
                &key("tables"),
                t,
                format!(
                    "`{name}` is not a table name; write the bare name (tables are looked up in \
                     the search path's schemas)"
                ),
            ));
        }
        tables.push(name.to_string());
    }
    let mut columns = Vec::new();
    for c in raw.columns.iter().flat_map(|v| v.get_ref()) {
        let text = c.get_ref().trim();
        match text.split_once('.') {
            Some((table, column))
                if !table.trim().is_empty()
                    && !column.trim().is_empty()
                    && !column.contains('.') =>
            {
                columns.push(ColumnRef {
                    table: table.trim().to_string(),
                    column: column.trim().to_string(),
                })
            }
            _ => {
                return Err(ctx.at(
                    &key("columns"),
                    c,
                    format!("`{text}` is not `table.column`"),
                ))
            }
        }
    }
    let mut enums = Vec::new();
    for (name, labels) in raw.enums.iter().flat_map(|v| v.get_ref()) {
        let ekey = key(&format!("enums.{name}"));
        if name.trim().is_empty() || name.contains('.') {
            return Err(ctx.at(
                &ekey,
                labels,
                format!("`{name}` is not an enum type name; write the bare name"),
            ));
        }
        let mut list = Vec::new();
        for label in labels.get_ref() {
            if label.get_ref().is_empty() {
                return Err(ctx.at(&ekey, label, "enum labels cannot be empty"));
            }
            list.push(label.get_ref().clone());
        }
        enums.push(EnumLabels {
            name: name.trim().to_string(),
            labels: list,
        });
    }
    if tables.is_empty() && columns.is_empty() && enums.is_empty() {
        return Err(ctx.at(
            &key("kind"),
            kind,
            "a `schema` check needs at least one entry in `tables`, `columns` or `enums`",
        ));
    }
    let enums_key = match (&raw.enums, enums.is_empty()) {
        (Some(e), false) => Some(format!(
            "{}:{}: key `{}`",
            ctx.path.display(),
            ctx.line_of(e.span().start),
            key("enums")
        )),
        _ => None,
    };
    Ok(SchemaCheck {
        tables,
        columns,
        enums,
        enums_key,
    })
}

fn is_env_var_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// RFC 6901: empty (the whole document) or `/`-separated tokens where `~` is only `~0`/`~1`.
fn validate_pointer(pointer: &str) -> Result<(), String> {
    if !pointer.is_empty() && !pointer.starts_with('/') {
        return Err(format!(
            "`{pointer}` is not a JSON pointer; it must start with `/` (e.g. \"/db/ok\")"
        ));
    }
    let mut chars = pointer.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Err(format!(
                "`{pointer}` is not a JSON pointer: `~` must be followed by 0 or 1 (`~0` is `~`, `~1` is `/`)"
            ));
        }
    }
    Ok(())
}

/// Checks that `sql` holds exactly one statement, so a query cannot smuggle a `COMMIT` and a
/// write past the read-only transaction.
fn single_statement(sql: &str) -> Result<(), String> {
    let statements = lexer::split(sql)
        .into_iter()
        .filter(|s| !s.is_empty())
        .count();
    match statements {
        1 => Ok(()),
        0 => Err("must hold a query".into()),
        n => Err(format!(
            "must be exactly one statement; found {n} (health checks only read)"
        )),
    }
}

fn toml_to_json(value: &toml::Value) -> Option<serde_json::Value> {
    use serde_json::Value as J;
    Some(match value {
        toml::Value::String(s) => J::String(s.clone()),
        toml::Value::Integer(i) => J::from(*i),
        toml::Value::Float(f) => J::Number(serde_json::Number::from_f64(*f)?),
        toml::Value::Boolean(b) => J::Bool(*b),
        toml::Value::Datetime(d) => J::String(d.to_string()),
        toml::Value::Array(a) => J::Array(a.iter().map(toml_to_json).collect::<Option<_>>()?),
        toml::Value::Table(t) => J::Object(
            t.iter()
                .map(|(k, v)| Some((k.clone(), toml_to_json(v)?)))
                .collect::<Option<_>>()?,
        ),
    })
}

/// Checks the parts of a configuration that depend on the database engine, which is known
/// only once the URL is resolved: `enums` exist only on PostgreSQL. Call it before a run so
/// the mistake is reported as configuration, not discovered as a failing check.
pub fn check_engine(checks: &[HealthCheck], database_url: &str) -> Result<(), Error> {
    let needs_db = checks.iter().any(|c| !matches!(c.kind, CheckKind::Http(_)));
    if !needs_db {
        return Ok(());
    }
    let engine = Engine::from_url(database_url)?;
    for check in checks {
        if let CheckKind::Schema(schema) = &check.kind {
            if let Some(message) = enums_on_sqlite(schema, engine) {
                return Err(Error::Config(message));
            }
        }
    }
    Ok(())
}

fn enums_on_sqlite(schema: &SchemaCheck, engine: Engine) -> Option<String> {
    if engine != Engine::Sqlite || schema.enums.is_empty() {
        return None;
    }
    let at = schema
        .enums_key
        .clone()
        .unwrap_or_else(|| "key `enums`".to_string());
    Some(format!(
        "{at}: enum types exist only in PostgreSQL; this environment's database is SQLite, so \
         remove `enums` (check the columns instead)"
    ))
}

// ---------------------------------------------------------------------------------------------
// Measurements and outcomes
// ---------------------------------------------------------------------------------------------

/// How one measurement came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MeasurementOutcome {
    /// The environment looked healthy.
    Success,
    /// The environment answered, and the answer was wrong.
    Failure,
    /// No answer could be had (connection refused, timeout, query error).
    Error,
    /// An answer came but could not be judged (no JSON value at the pointer, no row).
    Inconclusive,
}

impl fmt::Display for MeasurementOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MeasurementOutcome::Success => "success",
            MeasurementOutcome::Failure => "failure",
            MeasurementOutcome::Error => "error",
            MeasurementOutcome::Inconclusive => "inconclusive",
        })
    }
}

/// The verdict of a check, or of all checks of an environment; it decides whether a run
/// carries on (`Successful`) or rolls back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthOutcome {
    /// Every measurement passed, within the limits, and at least one really succeeded.
    Successful,
    /// More measurements failed than `failure_limit` allows (or nothing ever passed).
    Failed,
    /// More consecutive errors than `consecutive_error_limit` allows (or nothing ever answered).
    Error,
    /// Some measurement could not be judged and nothing failed: a person has to look.
    Inconclusive,
}

impl HealthOutcome {
    /// Combines verdicts: Failed if any failed, else Error, else Inconclusive, else Successful
    /// (also when there is nothing to combine).
    pub fn combine(outcomes: impl IntoIterator<Item = HealthOutcome>) -> HealthOutcome {
        outcomes
            .into_iter()
            .max_by_key(|o| match o {
                HealthOutcome::Successful => 0,
                HealthOutcome::Inconclusive => 1,
                HealthOutcome::Error => 2,
                HealthOutcome::Failed => 3,
            })
            .unwrap_or(HealthOutcome::Successful)
    }
}

impl fmt::Display for HealthOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HealthOutcome::Successful => "successful",
            HealthOutcome::Failed => "failed",
            HealthOutcome::Error => "error",
            HealthOutcome::Inconclusive => "inconclusive",
        })
    }
}

/// One measurement, recorded as taken so a run's record shows what sluice saw and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// When the measurement started.
    pub at: DateTime<Utc>,
    /// How it came out.
    pub outcome: MeasurementOutcome,
    /// What was observed: a status and a body snippet, the SQL value, the missing objects.
    pub value: Option<String>,
    /// A sentence for people, free of secrets.
    pub message: String,
    /// The why of a failed or inconclusive measurement in a few words ("table `Document` is
    /// missing", "expected 0, got 3", "HTTP 503 from GET https://…"), which the verdict's
    /// summary quotes; absent when the message says it best (errors, other probes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// How long the measurement took.
    pub elapsed_ms: u64,
}

/// The verdict of one check with every measurement behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    /// The check's name.
    pub name: String,
    /// The verdict.
    pub outcome: HealthOutcome,
    /// Why, in one sentence (which limit was exceeded, what was inconclusive).
    pub summary: String,
    /// The measurements taken, in order.
    pub measurements: Vec<Measurement>,
}

/// Receives every measurement the moment it is taken, so a run can record progress even if
/// the process dies before the verdict.
pub trait MeasurementSink: Send + Sync {
    /// Called once per measurement of check `check`.
    fn record(&self, check: &str, measurement: &Measurement);
}

impl<F> MeasurementSink for F
where
    F: Fn(&str, &Measurement) + Send + Sync,
{
    fn record(&self, check: &str, measurement: &Measurement) {
        self(check, measurement)
    }
}

/// Takes one measurement. Implementations bound nothing themselves: [`run_with_probe`] applies
/// the schedule's timeout around each call.
#[async_trait]
pub trait Probe: Send + Sync {
    /// Measures once.
    async fn measure(&self) -> Measurement;
}

/// What a probe saw, before timing is attached.
struct Observation {
    outcome: MeasurementOutcome,
    value: Option<String>,
    message: String,
    reason: Option<String>,
}

impl Observation {
    fn new(outcome: MeasurementOutcome, value: Option<String>, message: impl Into<String>) -> Self {
        Observation {
            outcome,
            value,
            message: message.into(),
            reason: None,
        }
    }

    /// Adds the short why a verdict's summary quotes.
    fn because(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    fn error(message: impl Into<String>) -> Self {
        Observation::new(MeasurementOutcome::Error, None, message)
    }

    /// Replaces every secret in what will be shown or stored.
    fn scrub(mut self, secrets: &[String]) -> Self {
        for secret in secrets.iter().filter(|s| !s.is_empty()) {
            self.message = self.message.replace(secret.as_str(), "***");
            self.value = self.value.map(|v| v.replace(secret.as_str(), "***"));
            self.reason = self.reason.map(|r| r.replace(secret.as_str(), "***"));
        }
        self
    }
}

async fn timed(observe: impl Future<Output = Observation>) -> Measurement {
    let at = Utc::now();
    let started = Instant::now();
    let o = observe.await;
    Measurement {
        at,
        outcome: o.outcome,
        value: o.value,
        message: o.message,
        reason: o.reason,
        elapsed_ms: elapsed_ms(started),
    }
}

fn elapsed_ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Shortens text for a measurement's value: whitespace collapsed, at most `max` characters.
fn snippet(text: &str, max: usize) -> String {
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if collapsed.chars().count() <= max {
        collapsed
    } else {
        let mut s: String = collapsed.chars().take(max).collect();
        s.push('…');
        s
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

/// Bodies beyond this are cut off: a health endpoint that answers megabytes is already wrong.
const MAX_BODY: usize = 1 << 20;

/// Measures an [`HttpCheck`] with reqwest: no redirects followed, header values read from the
/// environment at each measurement and scrubbed from everything it reports.
pub struct HttpProbe {
    check: HttpCheck,
    client: reqwest::Client,
}

impl HttpProbe {
    /// Builds the client once for all measurements of a check.
    pub fn new(check: &HttpCheck, timeout: Duration) -> Result<HttpProbe, String> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!(
                "sluice/",
                env!("CARGO_PKG_VERSION"),
                " health check"
            ))
            .build()
            .map_err(|e| format!("cannot set up the HTTP client: {e}"))?;
        Ok(HttpProbe {
            check: check.clone(),
            client,
        })
    }

    fn target(&self) -> String {
        format!(
            "{} {}",
            self.check.method,
            redact_urls(self.check.url.as_str())
        )
    }

    async fn observe(&self) -> Observation {
        let mut secrets = Vec::new();
        let mut request = self
            .client
            .request(self.check.method.clone(), self.check.url.clone());
        for header in &self.check.headers {
            let value = match std::env::var(&header.env_var) {
                Ok(v) => v.trim().to_string(),
                Err(_) => {
                    return Observation::error(format!(
                        "environment variable `{}` (for header `{}`) is not set",
                        header.env_var, header.name
                    ))
                }
            };
            if value.is_empty() {
                return Observation::error(format!(
                    "environment variable `{}` (for header `{}`) is empty",
                    header.env_var, header.name
                ));
            }
            let Ok(mut header_value) = reqwest::header::HeaderValue::from_str(&value) else {
                return Observation::error(format!(
                    "the value of environment variable `{}` cannot be sent in header `{}`",
                    header.env_var, header.name
                ));
            };
            header_value.set_sensitive(true);
            secrets.push(value);
            request = request.header(header.name.as_str(), header_value);
        }
        self.send(request).await.scrub(&secrets)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Observation {
        let target = self.target();
        let mut response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                return Observation::error(format!(
                    "{target}: {}",
                    crate::error::describe_http_error(e)
                ))
            }
        };
        let status = response.status().as_u16();
        let mut body = Vec::new();
        let mut cut = false;
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    body.extend_from_slice(&chunk);
                    if body.len() > MAX_BODY {
                        body.truncate(MAX_BODY);
                        cut = true;
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    return Observation::error(format!(
                        "{target}: answered {status} but reading the body failed: {}",
                        crate::error::describe_http_error(e)
                    ))
                }
            }
        }
        let text = String::from_utf8_lossy(&body);
        let seen = format!("status {status}: {}", snippet(&text, 200));
        let expected = self.check.expect_status;
        if status != expected {
            return Observation::new(
                MeasurementOutcome::Failure,
                Some(seen),
                format!("{target} answered {status}, expected {expected}"),
            )
            .because(format!("HTTP {status} from {target}, expected {expected}"));
        }
        match &self.check.body {
            BodyExpectation::Any => Observation::new(
                MeasurementOutcome::Success,
                Some(seen),
                format!("{target} answered {status}"),
            ),
            BodyExpectation::Contains(needle) => {
                if text.contains(needle.as_str()) {
                    Observation::new(
                        MeasurementOutcome::Success,
                        Some(seen),
                        format!("{target} answered {status} with {needle:?} in the body"),
                    )
                } else {
                    Observation::new(
                        MeasurementOutcome::Failure,
                        Some(seen),
                        format!(
                            "{target} answered {status} but the body does not contain {needle:?}{}",
                            if cut { " (in its first MiB)" } else { "" }
                        ),
                    )
                    .because(format!(
                        "HTTP {status} from {target} without {needle:?} in the body"
                    ))
                }
            }
            BodyExpectation::JsonPointer { pointer, expected } => {
                if cut {
                    return Observation::error(format!(
                        "{target}: the body is larger than {MAX_BODY} bytes; cannot read it as JSON"
                    ));
                }
                let json: serde_json::Value = match serde_json::from_slice(&body) {
                    Ok(j) => j,
                    Err(e) => {
                        return Observation::new(
                            MeasurementOutcome::Error,
                            Some(seen),
                            format!("{target} answered {status} but the body is not JSON ({e})"),
                        )
                    }
                };
                match json.pointer(pointer) {
                    None => Observation::new(
                        MeasurementOutcome::Inconclusive,
                        Some(seen),
                        format!(
                            "{target} answered {status} but the JSON has no value at `{pointer}`"
                        ),
                    )
                    .because(format!("no value at `{pointer}` in the answer of {target}")),
                    Some(found) => {
                        let shown = snippet(&found.to_string(), 200);
                        let value = Some(format!("status {status}, {pointer} = {shown}"));
                        if json_equal(found, expected) {
                            Observation::new(
                                MeasurementOutcome::Success,
                                value,
                                format!("{target} answered {status} with {pointer} = {shown}"),
                            )
                        } else {
                            Observation::new(
                                MeasurementOutcome::Failure,
                                value,
                                format!(
                                    "{target} answered {status} with {pointer} = {shown}, expected {expected}"
                                ),
                            )
                            .because(format!(
                                "{pointer}: expected {expected}, got {shown} from {target}"
                            ))
                        }
                    }
                }
            }
        }
    }
}

#[async_trait]
impl Probe for HttpProbe {
    async fn measure(&self) -> Measurement {
        timed(self.observe()).await
    }
}

/// JSON equality where numbers compare by value, so `1` in TOML matches `1.0` in JSON.
fn json_equal(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value as J;
    match (a, b) {
        (J::Number(x), J::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(p), Some(q)) => p == q,
            _ => match (x.as_u64(), y.as_u64()) {
                (Some(p), Some(q)) => p == q,
                _ => x.as_f64() == y.as_f64(),
            },
        },
        (J::Array(x), J::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_equal(p, q))
        }
        (J::Object(x), J::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w)))
        }
        _ => a == b,
    }
}

// ---------------------------------------------------------------------------------------------
// Databases
// ---------------------------------------------------------------------------------------------

/// How to reach the environment's database read-only.
#[derive(Clone)]
enum Db {
    Postgres(Box<PgConnectOptions>),
    Sqlite(Box<SqliteConnectOptions>),
}

impl Db {
    fn from_url(url: &str, timeout: Duration) -> Result<Db, String> {
        match Engine::from_url(url).map_err(|e| e.to_string())? {
            Engine::Postgres => {
                let (url, schema) = take_schema_param(url);
                let mut options = PgConnectOptions::from_str(&url)
                    .map_err(|e| format!("bad database URL: {}", redact_urls(&e.to_string())))?
                    .application_name(APPLICATION_NAME)
                    .options([("client_min_messages", "warning")])
                    .log_statements(tracing::log::LevelFilter::Trace)
                    .log_slow_statements(tracing::log::LevelFilter::Off, Duration::from_secs(1));
                if let Some(schema) = schema {
                    options = options.options([("search_path", schema)]);
                }
                Ok(Db::Postgres(Box::new(options)))
            }
            Engine::Sqlite => {
                let options = SqliteConnectOptions::from_str(url)
                    .map_err(|e| format!("bad SQLite URL: {}", redact_urls(&e.to_string())))?
                    // A health check must not conjure up an empty database.
                    .create_if_missing(false)
                    .busy_timeout(timeout)
                    .pragma("query_only", "1")
                    .log_statements(tracing::log::LevelFilter::Trace)
                    .log_slow_statements(tracing::log::LevelFilter::Off, Duration::from_secs(1));
                Ok(Db::Sqlite(Box::new(options)))
            }
        }
    }
}

/// A driver error on one line, with SQLSTATE when the server sent one; never a password.
fn describe_sqlx(err: &sqlx::Error) -> String {
    match err {
        sqlx::Error::Database(db) => {
            let label = if db.try_downcast_ref::<PgDatabaseError>().is_some() {
                "SQLSTATE"
            } else {
                "code"
            };
            match db.code() {
                Some(code) => redact_urls(&format!("{} ({label} {code})", db.message())),
                None => redact_urls(db.message()),
            }
        }
        other => redact_urls(&other.to_string()),
    }
}

/// A PostgreSQL connection inside `BEGIN READ ONLY` with statement and lock timeouts set to
/// what is left of the measurement's time.
///
/// A database that refuses connections because they are blocked (`datallowconn = false`, as a
/// template copy by another process does for a moment) says nothing about the release's
/// health: that measurement is inconclusive, not an error.
async fn pg_read_only(
    options: &PgConnectOptions,
    timeout: Duration,
    started: Instant,
) -> Result<PgConnection, Observation> {
    let connected = loop {
        match options.connect().await {
            Err(e) if connections_blocked(&e) && started.elapsed() + BLOCKED_RETRY < timeout => {
                tokio::time::sleep(BLOCKED_RETRY).await;
            }
            other => break other,
        }
    };
    let mut conn = connected.map_err(|e| {
        let message = format!("cannot connect to the database: {}", describe_sqlx(&e));
        if connections_blocked(&e) {
            Observation::new(
                MeasurementOutcome::Inconclusive,
                None,
                format!(
                    "{message}; its connections are blocked for now (another process copying it \
                     for a snapshot?), so this measurement judges nothing"
                ),
            )
        } else {
            Observation::error(message)
        }
    })?;
    let left = timeout.saturating_sub(started.elapsed()).as_millis().max(1);
    let setup = format!(
        "BEGIN READ ONLY; SET LOCAL statement_timeout = {left}; SET LOCAL lock_timeout = {left}"
    );
    if let Err(e) = conn.execute(setup.as_str()).await {
        finish_pg(conn);
        return Err(Observation::error(format!(
            "cannot start a read-only transaction: {}",
            describe_sqlx(&e)
        )));
    }
    Ok(conn)
}

/// How long a measurement waits before it tries again to connect to a database whose
/// connections are blocked for a moment.
const BLOCKED_RETRY: Duration = Duration::from_millis(200);

/// Whether the server refused a connection because the database does not accept connections
/// now (SQLSTATE 55000, `datallowconn = false`).
fn connections_blocked(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .is_some_and(|d| d.code().as_deref() == Some("55000"))
}

/// Rolls back and closes in the background, so a slow goodbye never costs a measurement.
fn finish_pg(mut conn: PgConnection) {
    tokio::spawn(async move {
        let _ = conn.execute("ROLLBACK").await;
        let _ = conn.close().await;
    });
}

/// A SQLite connection with `query_only` on, inside a transaction that will be rolled back.
async fn sqlite_read_only(options: &SqliteConnectOptions) -> Result<SqliteConnection, String> {
    let mut conn = options
        .connect()
        .await
        .map_err(|e| format!("cannot open the database: {}", describe_sqlx(&e)))?;
    if let Err(e) = conn.execute("BEGIN").await {
        finish_sqlite(conn);
        return Err(format!("cannot start a transaction: {}", describe_sqlx(&e)));
    }
    Ok(conn)
}

fn finish_sqlite(mut conn: SqliteConnection) {
    tokio::spawn(async move {
        let _ = conn.execute("ROLLBACK").await;
        let _ = conn.close().await;
    });
}

/// Measures a [`SqlCheck`]: one statement, read-only, rolled back; the first column of the
/// first row is compared with the expected value.
pub struct SqlProbe {
    check: SqlCheck,
    db: Db,
    timeout: Duration,
}

impl SqlProbe {
    /// Prepares the connection settings; fails on a URL sluice cannot use or a query of more
    /// than one statement.
    pub fn new(
        check: &SqlCheck,
        database_url: &str,
        timeout: Duration,
    ) -> Result<SqlProbe, String> {
        single_statement(&check.query).map_err(|why| format!("the query {why}"))?;
        Ok(SqlProbe {
            check: check.clone(),
            db: Db::from_url(database_url, timeout)?,
            timeout,
        })
    }

    async fn observe(&self) -> Observation {
        let started = Instant::now();
        let got = match &self.db {
            Db::Postgres(options) => {
                let mut conn = match pg_read_only(options, self.timeout, started).await {
                    Ok(c) => c,
                    Err(observed) => return observed,
                };
                let got = match sqlx::query(&self.check.query)
                    .persistent(false)
                    .fetch_optional(&mut conn)
                    .await
                {
                    Ok(Some(row)) => first_value_pg(&row).map(Some),
                    Ok(None) => Ok(None),
                    Err(e) => Err(format!("the query failed: {}", describe_sqlx(&e))),
                };
                finish_pg(conn);
                got
            }
            Db::Sqlite(options) => {
                let mut conn = match sqlite_read_only(options).await {
                    Ok(c) => c,
                    Err(e) => return Observation::error(e),
                };
                let got = match sqlx::query(&self.check.query)
                    .persistent(false)
                    .fetch_optional(&mut conn)
                    .await
                {
                    Ok(Some(row)) => first_value_sqlite(&row).map(Some),
                    Ok(None) => Ok(None),
                    Err(e) => Err(format!("the query failed: {}", describe_sqlx(&e))),
                };
                finish_sqlite(conn);
                got
            }
        };
        let expected = &self.check.expect;
        match got {
            Err(e) => Observation::error(e),
            Ok(None) => Observation::new(
                MeasurementOutcome::Inconclusive,
                None,
                format!("the query returned no row; expected {expected}"),
            )
            .because(format!("no row, expected {expected}")),
            Ok(Some(value)) => {
                let shown = value
                    .as_deref()
                    .map(|v| snippet(v, 200))
                    .unwrap_or_else(|| "NULL".to_string());
                let matches = value.as_deref().is_some_and(|v| sql_matches(expected, v));
                if matches {
                    Observation::new(
                        MeasurementOutcome::Success,
                        Some(shown.clone()),
                        format!("the query returned {shown}, as expected"),
                    )
                } else {
                    Observation::new(
                        MeasurementOutcome::Failure,
                        Some(shown.clone()),
                        format!("the query returned {shown}, expected {expected}"),
                    )
                    .because(format!("expected {expected}, got {shown}"))
                }
            }
        }
    }
}

#[async_trait]
impl Probe for SqlProbe {
    async fn measure(&self) -> Measurement {
        timed(self.observe()).await
    }
}

/// The first column of a PostgreSQL row as text (None for NULL), whatever its type.
fn first_value_pg(row: &PgRow) -> Result<Option<String>, String> {
    if row.columns().is_empty() {
        return Err("the query returned a row without columns".into());
    }
    let raw = row
        .try_get_raw(0)
        .map_err(|e| format!("cannot read the value: {e}"))?;
    if raw.is_null() {
        return Ok(None);
    }
    let type_name = raw.type_info().name().to_string();
    let bad = |e: &dyn fmt::Display| format!("cannot read the {type_name} value: {e}");
    if raw.format() == PgValueFormat::Text {
        return raw
            .as_str()
            .map(|s| Some(s.to_string()))
            .map_err(|e| bad(&e));
    }
    fn get<'r, T>(row: &'r PgRow) -> Result<T, sqlx::Error>
    where
        T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
    {
        row.try_get::<T, _>(0)
    }
    let text = match type_name.as_str() {
        "BOOL" => get::<bool>(row).map(|v| v.to_string()),
        "INT2" => get::<i16>(row).map(|v| v.to_string()),
        "INT4" => get::<i32>(row).map(|v| v.to_string()),
        "INT8" => get::<i64>(row).map(|v| v.to_string()),
        "OID" => get::<sqlx::postgres::types::Oid>(row).map(|v| v.0.to_string()),
        "FLOAT4" => get::<f32>(row).map(|v| v.to_string()),
        "FLOAT8" => get::<f64>(row).map(|v| v.to_string()),
        "UUID" => get::<sqlx::types::Uuid>(row).map(|v| v.to_string()),
        "DATE" => get::<chrono::NaiveDate>(row).map(|v| v.to_string()),
        "TIME" => get::<chrono::NaiveTime>(row).map(|v| v.to_string()),
        "TIMESTAMP" => get::<chrono::NaiveDateTime>(row).map(|v| v.to_string()),
        "TIMESTAMPTZ" => get::<DateTime<Utc>>(row).map(|v| v.to_rfc3339()),
        "NUMERIC" => {
            let bytes = raw.as_bytes().map_err(|e| bad(&e))?;
            return numeric_text(bytes).map(Some).map_err(|e| bad(&e));
        }
        "JSONB" => {
            // Binary jsonb is a version byte (1) followed by the JSON text.
            let bytes = raw.as_bytes().map_err(|e| bad(&e))?;
            return match bytes.split_first() {
                Some((1, rest)) => std::str::from_utf8(rest)
                    .map(|s| Some(s.to_string()))
                    .map_err(|e| bad(&e)),
                _ => Err(bad(&"unknown jsonb version")),
            };
        }
        _ => {
            // Text-like types (text, varchar, name, enums, json, citext, xml) send their text.
            return match raw.as_str() {
                Ok(s) if !s.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')) => {
                    Ok(Some(s.to_string()))
                }
                _ => Err(format!(
                    "cannot show a value of type {type_name}; cast it to text in the query (`…::text`)"
                )),
            };
        }
    };
    text.map(Some).map_err(|e| bad(&e))
}

/// Renders PostgreSQL's binary NUMERIC (base-10000 digits) as decimal text with its scale.
fn numeric_text(bytes: &[u8]) -> Result<String, String> {
    let word = |i: usize| -> Result<u16, String> {
        bytes
            .get(i..i + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "the numeric value is cut short".to_string())
    };
    let ndigits = usize::from(word(0)?);
    let weight = i32::from(word(2)? as i16);
    let sign = word(4)?;
    let dscale = usize::from(word(6)?);
    match sign {
        0xC000 => return Ok("NaN".into()),
        0xD000 => return Ok("Infinity".into()),
        0xF000 => return Ok("-Infinity".into()),
        0x0000 | 0x4000 => {}
        other => return Err(format!("unknown numeric sign {other:#x}")),
    }
    let digits: Vec<u16> = (0..ndigits)
        .map(|i| word(8 + 2 * i))
        .collect::<Result<_, _>>()?;
    if digits.iter().any(|d| *d > 9999) {
        return Err("a numeric digit is out of range".into());
    }
    let digit = |i: i32| -> u16 {
        usize::try_from(i)
            .ok()
            .and_then(|i| digits.get(i).copied())
            .unwrap_or(0)
    };
    let mut out = String::new();
    if sign == 0x4000 {
        out.push('-');
    }
    if weight < 0 {
        out.push('0');
    } else {
        for i in 0..=weight {
            if i == 0 {
                out.push_str(&digit(i).to_string());
            } else {
                out.push_str(&format!("{:04}", digit(i)));
            }
        }
    }
    if dscale > 0 {
        let mut frac = String::new();
        let mut i = weight + 1;
        while frac.len() < dscale {
            frac.push_str(&format!("{:04}", digit(i)));
            i += 1;
        }
        frac.truncate(dscale);
        out.push('.');
        out.push_str(&frac);
    }
    Ok(out)
}

/// The first column of a SQLite row as text (None for NULL), by the value's storage class.
fn first_value_sqlite(row: &SqliteRow) -> Result<Option<String>, String> {
    if row.columns().is_empty() {
        return Err("the query returned a row without columns".into());
    }
    let raw = row
        .try_get_raw(0)
        .map_err(|e| format!("cannot read the value: {e}"))?;
    if raw.is_null() {
        return Ok(None);
    }
    let type_name = raw.type_info().name().to_string();
    let bad = |e: sqlx::Error| format!("cannot read the {type_name} value: {e}");
    match type_name.as_str() {
        "INTEGER" => row
            .try_get_unchecked::<i64, _>(0)
            .map(|v| Some(v.to_string()))
            .map_err(bad),
        "REAL" => row
            .try_get_unchecked::<f64, _>(0)
            .map(|v| Some(v.to_string()))
            .map_err(bad),
        "BLOB" => row
            .try_get_unchecked::<Vec<u8>, _>(0)
            .map(|v| {
                let hex: String = v.iter().map(|b| format!("{b:02X}")).collect();
                Some(format!("X'{hex}'"))
            })
            .map_err(bad),
        _ => row.try_get_unchecked::<String, _>(0).map(Some).map_err(bad),
    }
}

/// Compares an observed value with the expected one as text after normalising numbers
/// (`1.50` = `1.5`, `007` = `7`) and booleans (`t`/`true`, and `1`/`0` when a boolean is
/// expected, as SQLite stores them).
fn sql_matches(expected: &SqlValue, observed: &str) -> bool {
    let want = match expected {
        SqlValue::Integer(i) => i.to_string(),
        SqlValue::Float(f) => canonical_number(&f.to_string()).unwrap_or_else(|| f.to_string()),
        SqlValue::Bool(b) => b.to_string(),
        SqlValue::Text(s) => normalise(s),
    };
    let mut got = normalise(observed);
    if matches!(expected, SqlValue::Bool(_)) {
        match got.as_str() {
            "1" => got = "true".into(),
            "0" => got = "false".into(),
            _ => {}
        }
    }
    got == want
}

fn normalise(text: &str) -> String {
    let t = text.trim();
    match t.to_ascii_lowercase().as_str() {
        "t" | "true" => return "true".into(),
        "f" | "false" => return "false".into(),
        _ => {}
    }
    canonical_number(t).unwrap_or_else(|| text.to_string())
}

/// A decimal number written canonically (`+1.50` → `1.5`, `2.0` → `2`), or None if `t` is
/// not a plain decimal number.
fn canonical_number(t: &str) -> Option<String> {
    let body = t.strip_prefix(['+', '-']).unwrap_or(t);
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits_ok = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    if int.is_empty() && frac.is_empty()
        || !digits_ok(int)
        || !digits_ok(frac)
        || exponent.is_some_and(|e| {
            let e = e.strip_prefix(['+', '-']).unwrap_or(e);
            e.is_empty() || !digits_ok(e)
        })
    {
        return None;
    }
    if let Ok(i) = t.parse::<i128>() {
        return Some(i.to_string());
    }
    let f: f64 = t.parse().ok()?;
    if !f.is_finite() {
        return None;
    }
    if f == f.trunc() && f.abs() < 9.0e15 {
        return Some(format!("{}", f as i64));
    }
    Some(format!("{f}"))
}

/// Measures a [`SchemaCheck`] against the catalog: PostgreSQL's `pg_catalog` within the
/// search path's schemas (the first schema holding a name wins, as for queries), SQLite's
/// `sqlite_master` and `pragma_table_info` (names compared case-insensitively, as SQLite does).
pub struct SchemaProbe {
    check: SchemaCheck,
    db: Db,
    timeout: Duration,
}

impl SchemaProbe {
    /// Prepares the connection settings; refuses enums on SQLite.
    pub fn new(
        check: &SchemaCheck,
        database_url: &str,
        timeout: Duration,
    ) -> Result<SchemaProbe, String> {
        let engine = Engine::from_url(database_url).map_err(|e| e.to_string())?;
        if let Some(message) = enums_on_sqlite(check, engine) {
            return Err(message);
        }
        Ok(SchemaProbe {
            check: check.clone(),
            db: Db::from_url(database_url, timeout)?,
            timeout,
        })
    }

    /// Every table named by `tables` or `columns`, once, in order.
    fn wanted_tables(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for t in self
            .check
            .tables
            .iter()
            .chain(self.check.columns.iter().map(|c| &c.table))
        {
            if !out.contains(t) {
                out.push(t.clone());
            }
        }
        out
    }

    async fn observe(&self) -> Observation {
        let started = Instant::now();
        let found = match &self.db {
            Db::Postgres(options) => {
                let mut conn = match pg_read_only(options, self.timeout, started).await {
                    Ok(c) => c,
                    Err(observed) => return observed,
                };
                let found = self.catalog_pg(&mut conn).await;
                finish_pg(conn);
                found
            }
            Db::Sqlite(options) => {
                let mut conn = match sqlite_read_only(options).await {
                    Ok(c) => c,
                    Err(e) => return Observation::error(e),
                };
                let found = self.catalog_sqlite(&mut conn).await;
                finish_sqlite(conn);
                found
            }
        };
        match found {
            Err(e) => Observation::error(format!("reading the catalog failed: {e}")),
            Ok(catalog) => self.judge(&catalog),
        }
    }

    async fn catalog_pg(&self, conn: &mut PgConnection) -> Result<Catalog, String> {
        let tables = self.wanted_tables();
        let schemas: String =
            sqlx::query_scalar("SELECT array_to_string(current_schemas(false), ', ')")
                .fetch_one(&mut *conn)
                .await
                .map_err(|e| describe_sqlx(&e))?;
        let rows = sqlx::query(
            "SELECT DISTINCT ON (c.relname) c.relname::text, \
                    ARRAY(SELECT a.attname::text FROM pg_attribute a \
                          WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
                          ORDER BY a.attnum) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') \
               AND c.relname::text = ANY($1) \
               AND n.nspname = ANY(current_schemas(false)) \
             ORDER BY c.relname, array_position(current_schemas(false), n.nspname)",
        )
        .bind(&tables)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| describe_sqlx(&e))?;
        let mut catalog = Catalog {
            schemas,
            case_insensitive: false,
            ..Catalog::default()
        };
        for row in rows {
            let name: String = row.try_get(0).map_err(|e| e.to_string())?;
            let columns: Vec<String> = row.try_get(1).map_err(|e| e.to_string())?;
            catalog.tables.insert(name, columns);
        }
        if !self.check.enums.is_empty() {
            let names: Vec<String> = self.check.enums.iter().map(|e| e.name.clone()).collect();
            let rows = sqlx::query(
                "SELECT DISTINCT ON (t.typname) t.typname::text, \
                        ARRAY(SELECT e.enumlabel::text FROM pg_enum e \
                              WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder) \
                 FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace \
                 WHERE t.typtype = 'e' \
                   AND t.typname::text = ANY($1) \
                   AND n.nspname = ANY(current_schemas(false)) \
                 ORDER BY t.typname, array_position(current_schemas(false), n.nspname)",
            )
            .bind(&names)
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| describe_sqlx(&e))?;
            for row in rows {
                let name: String = row.try_get(0).map_err(|e| e.to_string())?;
                let labels: Vec<String> = row.try_get(1).map_err(|e| e.to_string())?;
                catalog.enums.insert(name, labels);
            }
        }
        Ok(catalog)
    }

    async fn catalog_sqlite(&self, conn: &mut SqliteConnection) -> Result<Catalog, String> {
        let existing: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') ORDER BY name",
        )
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| describe_sqlx(&e))?;
        let mut catalog = Catalog {
            schemas: "main".into(),
            case_insensitive: true,
            ..Catalog::default()
        };
        for wanted in self.wanted_tables() {
            let Some(actual) = existing.iter().find(|e| e.eq_ignore_ascii_case(&wanted)) else {
                continue;
            };
            let columns: Vec<String> =
                sqlx::query_scalar("SELECT name FROM pragma_table_info(?1) ORDER BY cid")
                    .bind(actual)
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(|e| describe_sqlx(&e))?;
            catalog.tables.insert(actual.clone(), columns);
        }
        Ok(catalog)
    }

    fn judge(&self, catalog: &Catalog) -> Observation {
        let mut missing: Vec<String> = Vec::new();
        for t in self.wanted_tables() {
            if catalog.table(&t).is_none() {
                missing.push(format!("table `{t}`"));
            }
        }
        for c in &self.check.columns {
            if let Some(columns) = catalog.table(&c.table) {
                if !columns.iter().any(|name| catalog.same(name, &c.column)) {
                    missing.push(format!("column `{}.{}`", c.table, c.column));
                }
            }
        }
        for e in &self.check.enums {
            match catalog.enums.get(&e.name) {
                None => missing.push(format!("enum `{}`", e.name)),
                Some(labels) => {
                    for label in &e.labels {
                        if !labels.contains(label) {
                            missing.push(format!("label `{label}` of enum `{}`", e.name));
                        }
                    }
                }
            }
        }
        let checked =
            self.wanted_tables().len() + self.check.columns.len() + self.check.enums.len();
        if missing.is_empty() {
            let mut seen: Vec<String> = Vec::new();
            for e in &self.check.enums {
                if let Some(labels) = catalog.enums.get(&e.name) {
                    seen.push(format!("{} = [{}]", e.name, labels.join(", ")));
                }
            }
            let value = if seen.is_empty() {
                format!("{checked} object(s) present")
            } else {
                format!("{checked} object(s) present; {}", seen.join("; "))
            };
            Observation::new(
                MeasurementOutcome::Success,
                Some(value),
                format!(
                    "every expected table, column and enum label exists (schemas: {})",
                    catalog.schemas
                ),
            )
        } else {
            let list = missing.join(", ");
            let reason = match missing.as_slice() {
                [one] => format!("{one} is missing"),
                [init @ .., last] => format!("{} and {last} are missing", init.join(", ")),
                [] => String::new(),
            };
            Observation::new(
                MeasurementOutcome::Failure,
                Some(format!("missing: {list}")),
                format!("missing from schemas {}: {list}", catalog.schemas),
            )
            .because(reason)
        }
    }
}

#[async_trait]
impl Probe for SchemaProbe {
    async fn measure(&self) -> Measurement {
        timed(self.observe()).await
    }
}

/// What the catalog holds of the names a schema check asked about.
#[derive(Default)]
struct Catalog {
    schemas: String,
    case_insensitive: bool,
    tables: BTreeMap<String, Vec<String>>,
    enums: BTreeMap<String, Vec<String>>,
}

impl Catalog {
    fn same(&self, a: &str, b: &str) -> bool {
        if self.case_insensitive {
            a.eq_ignore_ascii_case(b)
        } else {
            a == b
        }
    }

    fn table(&self, name: &str) -> Option<&Vec<String>> {
        self.tables
            .iter()
            .find(|(t, _)| self.same(t, name))
            .map(|(_, c)| c)
    }
}

// ---------------------------------------------------------------------------------------------
// Running
// ---------------------------------------------------------------------------------------------

/// The probe that measures `check` against `database_url` (unused by HTTP checks), or why
/// there can be none.
pub fn probe_for(check: &HealthCheck, database_url: &str) -> Result<Box<dyn Probe>, String> {
    let timeout = check.schedule.timeout;
    Ok(match &check.kind {
        CheckKind::Http(http) => Box::new(HttpProbe::new(http, timeout)?),
        CheckKind::Sql(sql) => Box::new(SqlProbe::new(sql, database_url, timeout)?),
        CheckKind::Schema(schema) => Box::new(SchemaProbe::new(schema, database_url, timeout)?),
    })
}

/// Runs one check: `count` measurements `interval` apart after `initial_delay`, each bounded
/// by `timeout`, every one handed to `sink` as taken; the verdict follows Argo Rollouts'
/// analysis rules (see [`run_with_probe`]).
pub async fn run_check(
    check: &HealthCheck,
    database_url: &str,
    sink: &dyn MeasurementSink,
) -> CheckResult {
    match probe_for(check, database_url) {
        Ok(probe) => run_with_probe(check, probe.as_ref(), sink).await,
        Err(message) => {
            let message = redact_urls(&message);
            let m = Measurement {
                at: Utc::now(),
                outcome: MeasurementOutcome::Error,
                value: None,
                message: message.clone(),
                reason: None,
                elapsed_ms: 0,
            };
            sink.record(&check.name, &m);
            tracing::warn!(check = %check.name, "health check cannot run: {message}");
            CheckResult {
                name: check.name.clone(),
                outcome: HealthOutcome::Error,
                summary: format!("cannot run: {message}"),
                measurements: vec![m],
            }
        }
    }
}

#[derive(Default)]
struct Tally {
    successes: u32,
    failures: u32,
    errors: u32,
    consecutive_errors: u32,
    inconclusive: u32,
}

impl Tally {
    fn add(&mut self, outcome: MeasurementOutcome) {
        match outcome {
            MeasurementOutcome::Success => self.successes += 1,
            MeasurementOutcome::Failure => self.failures += 1,
            MeasurementOutcome::Inconclusive => self.inconclusive += 1,
            MeasurementOutcome::Error => {
                self.errors += 1;
                self.consecutive_errors += 1;
                return;
            }
        }
        self.consecutive_errors = 0;
    }

    /// The verdict that ends the check before `count` measurements, if any, with the limit
    /// that ended it.
    fn early(&self, s: &Schedule) -> Option<(HealthOutcome, String)> {
        if self.failures > s.failure_limit {
            return Some((
                HealthOutcome::Failed,
                format!(
                    "{} failed measurement(s) exceed failure_limit {}",
                    self.failures, s.failure_limit
                ),
            ));
        }
        if self.consecutive_errors > s.consecutive_error_limit {
            return Some((
                HealthOutcome::Error,
                format!(
                    "{} consecutive errors exceed consecutive_error_limit {}",
                    self.consecutive_errors, s.consecutive_error_limit
                ),
            ));
        }
        None
    }

    /// The verdict after all measurements, with the counts behind it.
    fn finish(&self, s: &Schedule) -> (HealthOutcome, String) {
        if let Some(verdict) = self.early(s) {
            return verdict;
        }
        let taken = self.successes + self.failures + self.errors + self.inconclusive;
        let tail = format!(
            "{} succeeded, {} failed, {} errors, {} inconclusive of {taken}",
            self.successes, self.failures, self.errors, self.inconclusive
        );
        if self.inconclusive > 0 {
            (
                HealthOutcome::Inconclusive,
                format!("some measurements could not be judged: {tail}"),
            )
        } else if self.successes > 0 {
            (HealthOutcome::Successful, format!("healthy: {tail}"))
        } else if self.failures > 0 {
            (
                HealthOutcome::Failed,
                format!("no measurement succeeded: {tail}"),
            )
        } else {
            (
                HealthOutcome::Error,
                format!("no measurement got an answer: {tail}"),
            )
        }
    }
}

/// The measurement outcome behind a verdict: the one whose reasons explain it.
fn deciding_outcome(verdict: HealthOutcome) -> Option<MeasurementOutcome> {
    match verdict {
        HealthOutcome::Successful => None,
        HealthOutcome::Failed => Some(MeasurementOutcome::Failure),
        HealthOutcome::Error => Some(MeasurementOutcome::Error),
        HealthOutcome::Inconclusive => Some(MeasurementOutcome::Inconclusive),
    }
}

/// How many distinct reasons a summary quotes before it says how many more there were.
const REASONS_QUOTED: usize = 3;

/// Why a check came out as it did, in the words of its measurements: each distinct reason of
/// the deciding measurements with how many said so, e.g. "table `Document` is missing (3 of 3
/// measurements)". Empty for a successful verdict.
fn why(verdict: HealthOutcome, measurements: &[Measurement]) -> String {
    let Some(deciding) = deciding_outcome(verdict) else {
        return String::new();
    };
    let mut reasons: Vec<(&str, usize)> = Vec::new();
    for m in measurements.iter().filter(|m| m.outcome == deciding) {
        let reason = m.reason.as_deref().unwrap_or(m.message.as_str());
        match reasons.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, n)) => *n += 1,
            None => reasons.push((reason, 1)),
        }
    }
    let taken = measurements.len();
    let plural = if taken == 1 { "" } else { "s" };
    let mut parts: Vec<String> = reasons
        .iter()
        .take(REASONS_QUOTED)
        .map(|(reason, n)| format!("{reason} ({n} of {taken} measurement{plural})"))
        .collect();
    if reasons.len() > REASONS_QUOTED {
        parts.push(format!(
            "{} other reason(s) in the measurements",
            reasons.len() - REASONS_QUOTED
        ));
    }
    parts.join("; ")
}

/// The one-sentence summary of a verdict: why (from the measurements) first, then the rule
/// that decided it.
fn summarise(verdict: HealthOutcome, rule: String, measurements: &[Measurement]) -> String {
    let why = why(verdict, measurements);
    if why.is_empty() {
        rule
    } else {
        format!("{why}; {rule}")
    }
}

/// Runs `check`'s schedule with any probe (the built-in ones or a caller's own).
///
/// The verdict, as in Argo Rollouts: Failed as soon as failures exceed `failure_limit`, Error
/// as soon as consecutive errors exceed `consecutive_error_limit` (both stop the check); after
/// the last measurement, Inconclusive if any measurement was inconclusive, Successful if at
/// least one succeeded, otherwise Failed (some failed, within the limit, none passed) or Error
/// (nothing answered).
pub async fn run_with_probe(
    check: &HealthCheck,
    probe: &dyn Probe,
    sink: &dyn MeasurementSink,
) -> CheckResult {
    let s = &check.schedule;
    if !s.initial_delay.is_zero() {
        tokio::time::sleep(s.initial_delay).await;
    }
    let mut tally = Tally::default();
    let mut measurements = Vec::new();
    let mut verdict = None;
    for i in 0..s.count.max(1) {
        if i > 0 && !s.interval.is_zero() {
            tokio::time::sleep(s.interval).await;
        }
        let at = Utc::now();
        let started = Instant::now();
        let m = match tokio::time::timeout(s.timeout, probe.measure()).await {
            Ok(m) => m,
            Err(_) => Measurement {
                at,
                outcome: MeasurementOutcome::Error,
                value: None,
                message: format!("timed out after {}", human(s.timeout)),
                reason: None,
                elapsed_ms: elapsed_ms(started),
            },
        };
        tracing::info!(
            check = %check.name,
            measurement = i + 1,
            outcome = %m.outcome,
            elapsed_ms = m.elapsed_ms,
            "{}",
            m.message
        );
        sink.record(&check.name, &m);
        tally.add(m.outcome);
        measurements.push(m);
        if let Some(v) = tally.early(s) {
            verdict = Some(v);
            break;
        }
    }
    let (outcome, rule) = verdict.unwrap_or_else(|| tally.finish(s));
    let summary = summarise(outcome, rule, &measurements);
    tracing::info!(check = %check.name, outcome = %outcome, "{summary}");
    CheckResult {
        name: check.name.clone(),
        outcome,
        summary,
        measurements,
    }
}

/// Runs all checks of an environment concurrently and combines their verdicts: Failed if any
/// failed, else Error if any ended in error, else Inconclusive if any was inconclusive, else
/// Successful (also when there are no checks). Results come back in the checks' order.
pub async fn run_all(
    checks: &[HealthCheck],
    database_url: &str,
    sink: &dyn MeasurementSink,
) -> (HealthOutcome, Vec<CheckResult>) {
    let futures: Vec<BoxFuture<'_, CheckResult>> = checks
        .iter()
        .map(|c| Box::pin(run_check(c, database_url, sink)) as Pin<Box<_>>)
        .collect();
    let results = join_all(futures).await;
    let outcome = HealthOutcome::combine(results.iter().map(|r| r.outcome));
    (outcome, results)
}

/// A boxed future borrowing from the caller.
type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Polls every future in one task until all are done; keeps the order.
async fn join_all<T>(futures: Vec<BoxFuture<'_, T>>) -> Vec<T> {
    let mut slots: Vec<(BoxFuture<'_, T>, Option<T>)> =
        futures.into_iter().map(|f| (f, None)).collect();
    std::future::poll_fn(move |cx| {
        let mut pending = false;
        for (future, out) in slots.iter_mut() {
            if out.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(v) => *out = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(slots.iter_mut().filter_map(|(_, out)| out.take()).collect())
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    #[derive(Deserialize)]
    struct Doc {
        health: Vec<RawHealthCheck>,
    }

    fn parse(text: &str) -> Result<Vec<HealthCheck>, Error> {
        let doc: Doc = toml::from_str(text).expect("valid TOML for the test");
        parse_checks(doc.health, Path::new("environments/prod.toml"), text)
    }

    #[track_caller]
    fn parse_err(text: &str) -> String {
        match parse(text) {
            Ok(c) => panic!("expected an error, got {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_full_configuration_parses_with_defaults() {
        let checks = parse(
            r#"
[[health]]
name = "api"
kind = "http"
url = "http://127.0.0.1:8080/healthz"
json_pointer = "/db/ok"
expect_json = true
headers = { Authorization = "HEALTH_TOKEN" }
initial_delay = "5s"
interval = "10s"
count = 3
timeout = "5s"
failure_limit = 1
consecutive_error_limit = 2

[[health]]
kind = "sql"
query = "SELECT count(*) FROM \"User\" WHERE \"role\" IS NULL"
expect = 0

[[health]]
kind = "schema"
tables = ["User", "Post"]
columns = ["User.email", "User.role"]
enums = { Role = ["USER", "ADMIN"] }

[[health]]
kind = "http"
method = "head"
url = "https://example.com/"
body_contains = "ready"
"#,
        )
        .unwrap();
        assert_eq!(checks.len(), 4);
        assert_eq!(checks[0].name, "api");
        assert_eq!(
            checks[0].schedule,
            Schedule {
                initial_delay: Duration::from_secs(5),
                interval: Duration::from_secs(10),
                count: 3,
                timeout: Duration::from_secs(5),
                failure_limit: 1,
                consecutive_error_limit: 2,
            }
        );
        match &checks[0].kind {
            CheckKind::Http(h) => {
                assert_eq!(h.method, reqwest::Method::GET);
                assert_eq!(h.expect_status, 200);
                assert_eq!(
                    h.body,
                    BodyExpectation::JsonPointer {
                        pointer: "/db/ok".into(),
                        expected: serde_json::Value::Bool(true)
                    }
                );
                assert_eq!(
                    h.headers,
                    vec![HeaderFromEnv {
                        name: "Authorization".into(),
                        env_var: "HEALTH_TOKEN".into()
                    }]
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(checks[1].name, "sql-2");
        assert_eq!(checks[1].schedule, Schedule::default());
        match &checks[1].kind {
            CheckKind::Sql(s) => assert_eq!(s.expect, SqlValue::Integer(0)),
            other => panic!("{other:?}"),
        }
        assert_eq!(checks[2].name, "schema-3");
        match &checks[2].kind {
            CheckKind::Schema(s) => {
                assert_eq!(s.tables, ["User", "Post"]);
                assert_eq!(
                    s.columns[1],
                    ColumnRef {
                        table: "User".into(),
                        column: "role".into()
                    }
                );
                assert_eq!(s.enums[0].labels, ["USER", "ADMIN"]);
                assert_eq!(
                    s.enums_key.as_deref(),
                    Some("environments/prod.toml:25: key `health[3].enums`")
                );
            }
            other => panic!("{other:?}"),
        }
        match &checks[3].kind {
            CheckKind::Http(h) => {
                assert_eq!(h.method, reqwest::Method::HEAD);
                assert_eq!(h.body, BodyExpectation::Contains("ready".into()));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sub_tables_and_multi_line_arrays_keep_their_lines() {
        let err = parse_err(
            "[[health]]\nkind = \"http\"\nurl = \"http://h/\"\n[health.headers]\nX-Token = \"Bearer abc\"\n",
        );
        assert!(
            err.starts_with("environments/prod.toml:5: key `health[1].headers.X-Token`: must name the environment variable"),
            "{err}"
        );
        assert!(
            !err.contains("Bearer abc"),
            "the value is never echoed: {err}"
        );
        let err = parse_err(
            "[[health]]\nkind = \"schema\"\ntables = [\n  \"User\",\n  \"public.Post\",\n]\n",
        );
        assert!(
            err.starts_with("environments/prod.toml:5: key `health[1].tables`: `public.Post` is not a table name"),
            "{err}"
        );
        let checks =
            parse("[[health]]\nkind = \"schema\"\n[health.enums]\nRole = [\"USER\"]\n").unwrap();
        assert_eq!(checks[0].name, "schema-1");
    }

    #[test]
    fn kind_is_required_and_known() {
        let err = parse_err("[[health]]\nkind = \"http\"\nurl = \"http://h/\"\n\n[[health]]\n\nname = \"x\"\nquery = \"SELECT 1\"\n");
        assert!(
            err.starts_with("environments/prod.toml:7: key `health[2].kind`: missing"),
            "{err}"
        );
        let err = parse_err("[[health]]\n[[health]]\nkind = \"sql\"\n");
        assert!(
            err.starts_with("environments/prod.toml:1: key `health[1].kind`: missing"),
            "{err}"
        );
        let err = parse_err("[[health]]\nkind = \"ping\"\n");
        assert!(
            err.starts_with("environments/prod.toml:2: key `health[1].kind`: unknown kind `ping`"),
            "{err}"
        );
    }

    #[test]
    fn keys_of_other_kinds_are_refused() {
        let err =
            parse_err("[[health]]\nkind = \"http\"\nurl = \"http://h/\"\nquery = \"SELECT 1\"\n");
        assert_eq!(
            err,
            "environments/prod.toml:4: key `health[1].query` does not apply to kind `http`"
        );
        let err = parse_err(
            "[[health]]\nkind = \"sql\"\nquery = \"SELECT 1\"\nexpect = 1\ntables = [\"A\"]\n",
        );
        assert_eq!(
            err,
            "environments/prod.toml:5: key `health[1].tables` does not apply to kind `sql`"
        );
        let err =
            parse_err("[[health]]\nkind = \"schema\"\ntables = [\"A\"]\n\nurl = \"http://h/\"\n");
        assert_eq!(
            err,
            "environments/prod.toml:5: key `health[1].url` does not apply to kind `schema`"
        );
    }

    #[test]
    fn kind_specific_keys_are_required() {
        let err = parse_err("[[health]]\nkind = \"http\"\n");
        assert!(
            err.starts_with("environments/prod.toml:2: key `health[1].url`: missing"),
            "{err}"
        );
        let err = parse_err("[[health]]\nkind = \"sql\"\nexpect = 1\n");
        assert!(
            err.starts_with("environments/prod.toml:2: key `health[1].query`: missing"),
            "{err}"
        );
        let err = parse_err("[[health]]\nkind = \"sql\"\nquery = \"SELECT 1\"\n");
        assert!(
            err.starts_with("environments/prod.toml:2: key `health[1].expect`: missing"),
            "{err}"
        );
        let err = parse_err("[[health]]\nkind = \"schema\"\ntables = []\n");
        assert!(
            err.starts_with("environments/prod.toml:2: key `health[1].kind`: a `schema` check needs at least one"),
            "{err}"
        );
    }

    #[test]
    fn durations_and_counts_are_checked() {
        let base = "[[health]]\nkind = \"http\"\nurl = \"http://h/\"\n";
        let err = parse_err(&format!("{base}interval = \"soon\"\n"));
        assert!(
            err.starts_with(
                "environments/prod.toml:4: key `health[1].interval`: `soon` is not a duration"
            ),
            "{err}"
        );
        let err = parse_err(&format!("{base}initial_delay = \"5\"\n"));
        assert!(
            err.starts_with("environments/prod.toml:4: key `health[1].initial_delay`"),
            "{err}"
        );
        let err = parse_err(&format!("{base}timeout = \"0s\"\n"));
        assert!(
            err.starts_with(
                "environments/prod.toml:4: key `health[1].timeout`: must be longer than 0s"
            ),
            "{err}"
        );
        let err = parse_err(&format!("{base}count = 0\n"));
        assert_eq!(
            err,
            "environments/prod.toml:4: key `health[1].count`: must be at least 1"
        );
        let err = parse_err(&format!("{base}failure_limit = -1\n"));
        assert_eq!(
            err,
            "environments/prod.toml:4: key `health[1].failure_limit`: must be at least 0"
        );
        let err = parse_err(&format!("{base}consecutive_error_limit = 99999999999\n"));
        assert!(
            err.starts_with("environments/prod.toml:4: key `health[1].consecutive_error_limit`: must be at most"),
            "{err}"
        );
    }

    #[test]
    fn urls_methods_and_statuses_are_checked() {
        let err = parse_err("[[health]]\nkind = \"http\"\nurl = \"not a url\"\n");
        assert!(
            err.starts_with(
                "environments/prod.toml:3: key `health[1].url`: `not a url` is not a valid URL"
            ),
            "{err}"
        );
        let err = parse_err("[[health]]\nkind = \"http\"\nurl = \"ftp://h/x\"\n");
        assert!(
            err.starts_with("environments/prod.toml:3: key `health[1].url`: scheme `ftp:`"),
            "{err}"
        );
        let err = parse_err("[[health]]\nkind = \"http\"\nurl = \"https://u:hunter2@h/x\"\n");
        assert!(
            err.starts_with(
                "environments/prod.toml:3: key `health[1].url`: must not hold a password"
            ),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "{err}");
        let err =
            parse_err("[[health]]\nkind = \"http\"\nurl = \"http://h/\"\nmethod = \"FETCH\"\n");
        assert!(
            err.starts_with(
                "environments/prod.toml:4: key `health[1].method`: `FETCH` is not a method"
            ),
            "{err}"
        );
        let err =
            parse_err("[[health]]\nkind = \"http\"\nurl = \"http://h/\"\nexpect_status = 42\n");
        assert!(
            err.starts_with(
                "environments/prod.toml:4: key `health[1].expect_status`: 42 is not an HTTP status"
            ),
            "{err}"
        );
    }

    #[test]
    fn body_expectations_are_exclusive_and_complete() {
        let base = "[[health]]\nkind = \"http\"\nurl = \"http://h/\"\n";
        let err = parse_err(&format!("{base}json_pointer = \"/ok\"\n"));
        assert!(
            err.starts_with(
                "environments/prod.toml:4: key `health[1].json_pointer`: needs `expect_json`"
            ),
            "{err}"
        );
        let err = parse_err(&format!("{base}expect_json = 1\n"));
        assert!(
            err.starts_with(
                "environments/prod.toml:4: key `health[1].expect_json`: needs `json_pointer`"
            ),
            "{err}"
        );
        let err = parse_err(&format!(
            "{base}json_pointer = \"/ok\"\nexpect_json = true\nbody_contains = \"x\"\n"
        ));
        assert!(
            err.starts_with("environments/prod.toml:6: key `health[1].body_contains`: give either"),
            "{err}"
        );
        let err = parse_err(&format!(
            "{base}json_pointer = \"ok\"\nexpect_json = true\n"
        ));
        assert!(
            err.starts_with("environments/prod.toml:4: key `health[1].json_pointer`: `ok` is not a JSON pointer"),
            "{err}"
        );
        let err = parse_err(&format!(
            "{base}json_pointer = \"/a~2\"\nexpect_json = true\n"
        ));
        assert!(err.contains(":4: key `health[1].json_pointer`"), "{err}");
        let err = parse_err(&format!("{base}body_contains = \"\"\n"));
        assert!(
            err.starts_with(
                "environments/prod.toml:4: key `health[1].body_contains`: must not be empty"
            ),
            "{err}"
        );
        let err = parse_err(&format!(
            "{base}headers = {{ \"Bad Header\" = \"TOKEN\" }}\n"
        ));
        assert!(
            err.starts_with("environments/prod.toml:4: key `health[1].headers.Bad Header`: `Bad Header` is not a valid header name"),
            "{err}"
        );
        let checks = parse(&format!(
            "{base}json_pointer = \"/build\"\nexpect_json = {{ sha = \"abc\", n = [1, 2.5] }}\n"
        ))
        .unwrap();
        match &checks[0].kind {
            CheckKind::Http(h) => assert_eq!(
                h.body,
                BodyExpectation::JsonPointer {
                    pointer: "/build".into(),
                    expected: serde_json::json!({"sha": "abc", "n": [1, 2.5]})
                }
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sql_queries_are_single_statements_with_a_plain_expectation() {
        let err = parse_err(
            "[[health]]\nkind = \"sql\"\nquery = \"COMMIT; INSERT INTO t VALUES (1)\"\nexpect = 1\n",
        );
        assert!(
            err.starts_with("environments/prod.toml:3: key `health[1].query`: must be exactly one statement; found 2"),
            "{err}"
        );
        let err = parse_err("[[health]]\nkind = \"sql\"\nquery = \" -- nothing\\n\"\nexpect = 1\n");
        assert!(
            err.starts_with("environments/prod.toml:3: key `health[1].query`: must hold a query"),
            "{err}"
        );
        let err = parse_err("[[health]]\nkind = \"sql\"\nquery = \"SELECT 1\"\nexpect = [1]\n");
        assert!(
            err.starts_with("environments/prod.toml:4: key `health[1].expect`: must be a string"),
            "{err}"
        );
        // A trailing semicolon and a `;` inside a string are still one statement.
        let checks =
            parse("[[health]]\nkind = \"sql\"\nquery = \"SELECT ';' ;\"\nexpect = \";\"\n")
                .unwrap();
        assert!(
            matches!(&checks[0].kind, CheckKind::Sql(s) if s.expect == SqlValue::Text(";".into()))
        );
    }

    #[test]
    fn schema_entries_are_checked() {
        let err = parse_err("[[health]]\nkind = \"schema\"\ncolumns = [\"User\"]\n");
        assert!(
            err.starts_with(
                "environments/prod.toml:3: key `health[1].columns`: `User` is not `table.column`"
            ),
            "{err}"
        );
        let err = parse_err("[[health]]\nkind = \"schema\"\nenums = { Role = [\"\"] }\n");
        assert!(
            err.starts_with(
                "environments/prod.toml:3: key `health[1].enums.Role`: enum labels cannot be empty"
            ),
            "{err}"
        );
    }

    #[test]
    fn names_are_unique() {
        let err = parse_err(
            "[[health]]\nname = \"db\"\nkind = \"sql\"\nquery = \"SELECT 1\"\nexpect = 1\n[[health]]\nname = \"db\"\nkind = \"schema\"\ntables = [\"A\"]\n",
        );
        assert!(
            err.starts_with("environments/prod.toml:7: key `health[2].name`: `db` is already the name of health[1]"),
            "{err}"
        );
        let err = parse_err("[[health]]\nname = \" \"\nkind = \"schema\"\ntables = [\"A\"]\n");
        assert!(
            err.starts_with("environments/prod.toml:2: key `health[1].name`: must not be empty"),
            "{err}"
        );
    }

    /// The shape config.rs embeds: `health: Option<Vec<RawHealthCheck>>` beside other keys.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Env {
        url_env: Option<Spanned<String>>,
        health: Option<Vec<RawHealthCheck>>,
    }

    #[test]
    fn checks_parse_inside_an_environment_file() {
        let text = "url_env = \"PROD_URL\"\n\n[[health]]\nkind = \"sql\"\nquery = \"SELECT 1\"\nexpect = 1\n\n[[health]]\nkind = \"http\"\nurl = \"http://h/\"\ncount = 0\n";
        let env: Env = toml::from_str(text).unwrap();
        let err = parse_checks(
            env.health.unwrap(),
            Path::new("environments/prod.toml"),
            text,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "environments/prod.toml:11: key `health[2].count`: must be at least 1"
        );
        let err = toml::from_str::<Env>("[[health]]\nkind = \"sql\"\nqeury = \"x\"\n")
            .err()
            .expect("an unknown key");
        assert_eq!(
            err.span()
                .map(|s| &"[[health]]\nkind = \"sql\"\nqeury = \"x\"\n"[s]),
            Some("qeury")
        );
    }

    #[test]
    fn unknown_keys_are_refused_by_the_deserializer() {
        let text = "[[health]]\nkind = \"sql\"\nquery = \"SELECT 1\"\nexpected = 1\n";
        let err = toml::from_str::<Doc>(text)
            .err()
            .expect("an error")
            .to_string();
        assert!(err.contains("expected"), "{err}");
    }

    #[test]
    fn enums_are_a_configuration_error_on_sqlite() {
        let checks = parse(
            "[[health]]\nkind = \"schema\"\ntables = [\"A\"]\nenums = { Role = [\"USER\"] }\n",
        )
        .unwrap();
        let err = check_engine(&checks, "sqlite:///tmp/x.db")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("environments/prod.toml:4: key `health[1].enums`: enum types exist only in PostgreSQL"),
            "{err}"
        );
        check_engine(&checks, "postgres://h/db").unwrap();
        assert!(check_engine(&checks, "mysql://h/db").is_err());
        let http = parse("[[health]]\nkind = \"http\"\nurl = \"http://h/\"\n").unwrap();
        check_engine(&http, "mysql://h/db").unwrap();
    }

    #[test]
    fn sql_values_compare_after_normalising() {
        assert!(sql_matches(&SqlValue::Integer(0), "0"));
        assert!(sql_matches(&SqlValue::Integer(7), "007"));
        assert!(sql_matches(&SqlValue::Integer(3), "3.000"));
        assert!(!sql_matches(&SqlValue::Integer(0), "1"));
        assert!(sql_matches(&SqlValue::Float(1.5), "1.50"));
        assert!(sql_matches(&SqlValue::Float(2.0), "2"));
        assert!(sql_matches(&SqlValue::Float(0.1), "0.1000"));
        assert!(sql_matches(&SqlValue::Bool(true), "true"));
        assert!(sql_matches(&SqlValue::Bool(true), "t"));
        assert!(sql_matches(&SqlValue::Bool(false), "0"));
        assert!(sql_matches(&SqlValue::Bool(true), "1"));
        assert!(!sql_matches(&SqlValue::Bool(true), "false"));
        assert!(sql_matches(&SqlValue::Text("ok".into()), "ok"));
        assert!(!sql_matches(&SqlValue::Text("ok".into()), "OK"));
        assert!(sql_matches(&SqlValue::Text("1.0".into()), "1"));
        assert!(sql_matches(
            &SqlValue::Text("12345678901234567890123".into()),
            "12345678901234567890123"
        ));
        assert!(!sql_matches(&SqlValue::Text("NaN".into()), "nan"));
        assert_eq!(canonical_number("+1.50e2"), Some("150".into()));
        assert_eq!(canonical_number("-0.0"), Some("0".into()));
        assert_eq!(canonical_number("1e"), None);
        assert_eq!(canonical_number("."), None);
        assert_eq!(canonical_number("inf"), None);
    }

    #[test]
    fn numerics_render_with_their_scale() {
        fn enc(ndigits: u16, weight: i16, sign: u16, dscale: u16, digits: &[u16]) -> Vec<u8> {
            let mut b = Vec::new();
            for w in [ndigits, weight as u16, sign, dscale].iter().chain(digits) {
                b.extend_from_slice(&w.to_be_bytes());
            }
            b
        }
        assert_eq!(
            numeric_text(&enc(3, 1, 0, 4, &[1, 2345, 600])).unwrap(),
            "12345.0600"
        );
        assert_eq!(numeric_text(&enc(1, -1, 0, 4, &[1])).unwrap(), "0.0001");
        assert_eq!(
            numeric_text(&enc(1, -2, 0x4000, 6, &[1200])).unwrap(),
            "-0.000012"
        );
        assert_eq!(numeric_text(&enc(1, 2, 0, 0, &[1])).unwrap(), "100000000");
        assert_eq!(numeric_text(&enc(0, 0, 0, 2, &[])).unwrap(), "0.00");
        assert_eq!(numeric_text(&enc(0, 0, 0xC000, 0, &[])).unwrap(), "NaN");
        assert!(numeric_text(&enc(2, 0, 0, 0, &[1])).is_err(), "cut short");
        assert!(numeric_text(&[0, 1]).is_err());
    }

    #[test]
    fn json_compares_numbers_by_value() {
        use serde_json::json;
        assert!(json_equal(&json!(1), &json!(1.0)));
        assert!(json_equal(
            &json!({"a": [1, "x"]}),
            &json!({"a": [1.0, "x"]})
        ));
        assert!(!json_equal(&json!(1), &json!("1")));
        assert!(!json_equal(&json!([1]), &json!([1, 2])));
    }

    /// A probe that answers from a script, for the verdict rules alone.
    struct Scripted {
        outcomes: Vec<MeasurementOutcome>,
        next: AtomicUsize,
    }

    #[async_trait]
    impl Probe for Scripted {
        async fn measure(&self) -> Measurement {
            let i = self.next.fetch_add(1, Ordering::SeqCst);
            let outcome = self
                .outcomes
                .get(i)
                .copied()
                .unwrap_or(MeasurementOutcome::Success);
            Measurement {
                at: Utc::now(),
                outcome,
                value: None,
                message: format!("scripted {i}"),
                reason: None,
                elapsed_ms: 0,
            }
        }
    }

    fn check(count: u32, failure_limit: u32, consecutive_error_limit: u32) -> HealthCheck {
        HealthCheck {
            name: "scripted".into(),
            kind: CheckKind::Sql(SqlCheck {
                query: "SELECT 1".into(),
                expect: SqlValue::Integer(1),
            }),
            schedule: Schedule {
                initial_delay: Duration::ZERO,
                interval: Duration::from_millis(1),
                count,
                timeout: Duration::from_secs(5),
                failure_limit,
                consecutive_error_limit,
            },
        }
    }

    async fn verdict(
        c: &HealthCheck,
        outcomes: &[MeasurementOutcome],
    ) -> (HealthOutcome, usize, Vec<String>) {
        let probe = Scripted {
            outcomes: outcomes.to_vec(),
            next: AtomicUsize::new(0),
        };
        let seen = Mutex::new(Vec::new());
        let sink = |name: &str, m: &Measurement| {
            seen.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(format!("{name}: {}", m.message))
        };
        let r = run_with_probe(c, &probe, &sink).await;
        let seen = seen.into_inner().unwrap_or_else(|p| p.into_inner());
        assert_eq!(
            seen.len(),
            r.measurements.len(),
            "the sink saw every measurement"
        );
        (r.outcome, r.measurements.len(), seen)
    }

    fn measured(outcome: MeasurementOutcome, message: &str, reason: Option<&str>) -> Measurement {
        Measurement {
            at: Utc::now(),
            outcome,
            value: None,
            message: message.into(),
            reason: reason.map(String::from),
            elapsed_ms: 0,
        }
    }

    #[test]
    fn item14_the_why_quotes_the_deciding_measurements_reasons() {
        use MeasurementOutcome::{Error as E, Failure as F, Success as S};
        let taken = [
            measured(S, "fine", None),
            measured(
                F,
                "the query returned 3, expected 0",
                Some("expected 0, got 3"),
            ),
            measured(E, "cannot connect to the database: refused", None),
            measured(
                F,
                "the query returned 3, expected 0",
                Some("expected 0, got 3"),
            ),
        ];
        assert_eq!(
            why(HealthOutcome::Failed, &taken),
            "expected 0, got 3 (2 of 4 measurements)"
        );
        assert_eq!(
            why(HealthOutcome::Error, &taken),
            "cannot connect to the database: refused (1 of 4 measurements)",
            "without a reason the message is the why"
        );
        assert_eq!(why(HealthOutcome::Successful, &taken), "");
        let many: Vec<Measurement> = (0..5)
            .map(|i| measured(F, "m", Some(&format!("reason {i}"))))
            .collect();
        assert_eq!(
            why(HealthOutcome::Failed, &many),
            "reason 0 (1 of 5 measurements); reason 1 (1 of 5 measurements); \
             reason 2 (1 of 5 measurements); 2 other reason(s) in the measurements"
        );
        assert_eq!(
            summarise(HealthOutcome::Failed, "the rule".into(), &many[..1]),
            "reason 0 (1 of 1 measurement); the rule"
        );
    }

    #[tokio::test]
    async fn verdicts_follow_the_analysis_rules() {
        use HealthOutcome as H;
        use MeasurementOutcome::{Error as E, Failure as F, Inconclusive as I, Success as S};
        // All good.
        assert_eq!(verdict(&check(3, 0, 4), &[S, S, S]).await.0, H::Successful);
        // Failures within the limit are tolerated; one more fails at once.
        assert_eq!(
            verdict(&check(4, 2, 4), &[F, F, S, S]).await.0,
            H::Successful
        );
        let (o, n, _) = verdict(&check(4, 1, 4), &[F, F, S, S]).await;
        assert_eq!((o, n), (H::Failed, 2));
        // Consecutive errors beyond the limit end in error; a success in between resets them.
        let (o, n, _) = verdict(&check(10, 0, 2), &[E, E, E, S]).await;
        assert_eq!((o, n), (H::Error, 3));
        let (o, n, _) = verdict(&check(5, 0, 2), &[E, E, S, E, E]).await;
        assert_eq!((o, n), (H::Successful, 5));
        // Only errors, within the limit: nothing answered.
        assert_eq!(verdict(&check(2, 0, 4), &[E, E]).await.0, H::Error);
        // Tolerated failures but no success: nothing ever passed.
        assert_eq!(verdict(&check(2, 2, 4), &[F, F]).await.0, H::Failed);
        // An inconclusive measurement makes the check inconclusive, but does not stop it.
        let (o, n, seen) = verdict(&check(3, 0, 4), &[S, I, S]).await;
        assert_eq!((o, n), (H::Inconclusive, 3));
        assert_eq!(seen[1], "scripted: scripted 1");
        assert_eq!(
            verdict(&check(3, 1, 4), &[F, I, S]).await.0,
            H::Inconclusive
        );
        // … unless something fails beyond the limit.
        assert_eq!(verdict(&check(3, 0, 4), &[I, F, S]).await.0, H::Failed);
    }

    #[tokio::test]
    async fn a_slow_measurement_is_an_error_after_the_timeout() {
        struct Slow;
        #[async_trait]
        impl Probe for Slow {
            async fn measure(&self) -> Measurement {
                tokio::time::sleep(Duration::from_secs(30)).await;
                unreachable!("the timeout fires first")
            }
        }
        let mut c = check(1, 0, 0);
        c.schedule.timeout = Duration::from_millis(30);
        let started = Instant::now();
        let r = run_with_probe(&c, &Slow, &|_: &str, _: &Measurement| {}).await;
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(r.outcome, HealthOutcome::Error);
        assert_eq!(r.measurements[0].message, "timed out after 30ms");
    }

    #[test]
    fn outcomes_combine_worst_first() {
        use HealthOutcome as H;
        assert_eq!(H::combine([]), H::Successful);
        assert_eq!(
            H::combine([H::Successful, H::Inconclusive]),
            H::Inconclusive
        );
        assert_eq!(H::combine([H::Inconclusive, H::Error]), H::Error);
        assert_eq!(H::combine([H::Error, H::Failed, H::Successful]), H::Failed);
    }

    #[test]
    fn secrets_are_scrubbed_from_observations() {
        let o = Observation::new(
            MeasurementOutcome::Failure,
            Some("status 401: bad token s3cr3t".into()),
            "token s3cr3t refused",
        )
        .scrub(&["s3cr3t".into()]);
        assert_eq!(o.value.as_deref(), Some("status 401: bad token ***"));
        assert_eq!(o.message, "token *** refused");
    }
}
