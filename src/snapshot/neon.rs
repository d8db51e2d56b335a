//! Neon branches as snapshots.
//!
//! A snapshot is a child branch of the environment's branch, named `sluice-snap-<run token>`
//! and created without compute endpoints (it costs storage only, never compute). A restore is
//! Neon's branch restore (`POST …/branches/{id}/restore`) from that branch with
//! `preserve_under_name = sluice-failed-<run token>`: the environment's branch keeps its id and
//! endpoints (so connection strings keep working) and the state it had is kept as a branch.
//!
//! Every call that starts work answers with Neon operations, which are polled until they
//! finish. Create and restore are idempotent by name: a retry finds the branch an earlier
//! attempt made, or the preserved branch an earlier restore left, instead of doing the work
//! twice. A POST whose outcome is unknown (timeout, dropped connection, 5xx) is never sent
//! again blindly: sluice first checks whether it took effect.
//!
//! API reference: Neon API v2 (`https://console.neon.tech/api/v2`); `423 Locked` (another
//! operation runs) and `429` (rate limited) are retried, honouring `Retry-After`.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{Progress, Quiet, Restored, Snapshot, SnapshotKind, SnapshotProvider};
use crate::config::{Environment, NeonConfig, SecretSource, SnapshotConfig};
use crate::error::{redact_urls, Error, Result};

/// Name prefix of the branches sluice takes as snapshots.
pub const SNAPSHOT_PREFIX: &str = "sluice-snap-";
/// Name prefix of the branches a restore leaves behind with the state it replaced.
pub const PRESERVED_PREFIX: &str = "sluice-failed-";

/// Longest wait for a TCP/TLS connection to the API.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a single API request may take (further capped by the operation's deadline).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Ceiling of the exponential backoff between retries (a `Retry-After` may ask for more).
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Branches asked for per page when listing.
const PAGE_SIZE: usize = 100;
/// Recent operations looked at when waiting for a branch's pending operations.
const RECENT_OPERATIONS: usize = 100;

/// Snapshots of one environment as Neon branches of its project.
pub struct NeonSnapshots {
    http: reqwest::Client,
    base_url: String,
    project_id: String,
    branch_id: String,
    /// Kept only to scrub it from anything the server might echo back.
    api_key: String,
    key_source: String,
    origin: PathBuf,
    timeout: Duration,
    poll_interval: Duration,
}

impl fmt::Debug for NeonSnapshots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NeonSnapshots")
            .field("base_url", &self.base_url)
            .field("project_id", &self.project_id)
            .field("branch_id", &self.branch_id)
            .field("api_key", &"***")
            .field("timeout", &self.timeout)
            .field("poll_interval", &self.poll_interval)
            .finish()
    }
}

/// A Neon branch as far as sluice reads it; everything but `id` and `name` is optional so an
/// answer with fields missing or added still works.
#[derive(Debug, Clone, Deserialize)]
struct Branch {
    id: String,
    name: String,
    #[serde(default)]
    current_state: Option<String>,
    #[serde(default)]
    pending_state: Option<String>,
    #[serde(default)]
    created_at: Option<String>,
    #[serde(default)]
    logical_size: Option<Value>,
    #[serde(default)]
    default: Option<bool>,
}

/// A Neon operation (`create_branch`, `create_timeline`, `delete_timeline`, …).
#[derive(Debug, Clone, Deserialize)]
struct Operation {
    id: String,
    #[serde(default)]
    branch_id: Option<String>,
    #[serde(default)]
    action: Option<String>,
    status: String,
    #[serde(default)]
    error: Option<String>,
}

/// `BranchOperations` and the create answer: a branch plus the operations it started.
#[derive(Debug, Deserialize)]
struct BranchOperations {
    branch: Branch,
    #[serde(default)]
    operations: Vec<Operation>,
}

#[derive(Debug, Deserialize)]
struct BranchEnvelope {
    branch: Branch,
}

#[derive(Debug, Deserialize)]
struct OperationEnvelope {
    operation: Operation,
}

#[derive(Debug, Deserialize)]
struct OperationsPage {
    #[serde(default)]
    operations: Vec<Operation>,
}

#[derive(Debug, Deserialize)]
struct BranchesPage {
    branches: Vec<Branch>,
    #[serde(default)]
    pagination: Option<CursorPagination>,
}

#[derive(Debug, Deserialize)]
struct CursorPagination {
    #[serde(default)]
    next: Option<String>,
}

/// Where an operation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OperationState {
    Done,
    Failed,
    Pending,
}

fn operation_state(status: &str) -> OperationState {
    match status {
        "finished" | "skipped" => OperationState::Done,
        "failed" | "error" | "cancelling" | "cancelled" => OperationState::Failed,
        _ => OperationState::Pending,
    }
}

/// One HTTP exchange as far as sluice can tell.
enum Reply {
    /// A complete response.
    Answer {
        status: StatusCode,
        retry_after: Option<Duration>,
        body: Vec<u8>,
    },
    /// No complete response. `sent` is false only when the connection could not be made, i.e.
    /// the request certainly did not reach the server.
    NoAnswer { reason: String, sent: bool },
}

/// What became of one POST.
enum PostOutcome {
    /// The server answered 2xx with this body.
    Done(StatusCode, Vec<u8>),
    /// The server certainly did not act (423, 429, no connection): safe to send again.
    NotDone {
        why: String,
        retry_after: Option<Duration>,
    },
    /// It may or may not have acted: check before sending again.
    Unknown(String),
}

fn is_neon_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 60
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn is_operation_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// "250ms" under a second, "1.5s" under ten seconds, whole seconds above.
fn seconds(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else if d < Duration::from_secs(10) {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{}s", d.as_secs())
    }
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    Some((at - Utc::now()).to_std().unwrap_or(Duration::ZERO))
}

/// Neon's error text from an error body: `{"code", "message", "request_id"}`, or a problem
/// document (`title`, `detail`, `validation`) from a proxy, or the raw text.
fn error_text(body: &[u8]) -> String {
    let raw = String::from_utf8_lossy(body);
    let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(body) else {
        let text: String = raw.trim().chars().take(300).collect();
        return if text.is_empty() {
            "no message".into()
        } else {
            text
        };
    };
    let field = |k: &str| {
        obj.get(k)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
    };
    let mut text = match (field("message"), field("title"), field("detail")) {
        (Some(m), _, _) => m.to_string(),
        (None, Some(t), Some(d)) => format!("{t}: {d}"),
        (None, Some(t), None) => t.to_string(),
        (None, None, Some(d)) => d.to_string(),
        (None, None, None) => raw.trim().chars().take(300).collect(),
    };
    if let Some(Value::Array(items)) = obj.get("validation") {
        let found: Vec<&str> = items
            .iter()
            .filter_map(|v| v.get("message").and_then(Value::as_str))
            .collect();
        if !found.is_empty() {
            text.push_str(&format!(" [{}]", found.join("; ")));
        }
    }
    if let Some(code) = field("code") {
        text.push_str(&format!(" (code {code})"));
    }
    if let Some(id) = field("request_id") {
        text.push_str(&format!(" (request id {id})"));
    }
    text
}

fn snapshot_of(branch: &Branch, kind: SnapshotKind, run: Option<String>) -> Snapshot {
    Snapshot {
        name: branch.name.clone(),
        kind,
        run,
        created_at: branch
            .created_at
            .as_deref()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc)),
        status: branch
            .current_state
            .clone()
            .unwrap_or_else(|| "unknown".into()),
        size_bytes: branch.logical_size.as_ref().and_then(Value::as_u64),
    }
}

impl NeonSnapshots {
    /// Builds the provider for `env`: checks the ids, reads the API key now (so a missing key
    /// fails before any work starts) and prepares an HTTP client with connect and request
    /// timeouts.
    pub fn new(
        env: &Environment,
        neon: &NeonConfig,
        config: &SnapshotConfig,
    ) -> Result<NeonSnapshots> {
        let origin = env.file.display();
        for (key, value) in [
            ("project_id", &neon.project_id),
            ("branch_id", &neon.branch_id),
        ] {
            if !is_neon_id(value) {
                return Err(Error::Config(format!(
                    "{origin}: key `snapshot.{key}`: `{value}` is not a Neon id (lowercase \
                     letters, digits and `-`, at most 60 characters; e.g. `br-small-term-683261`)"
                )));
            }
        }
        let base_url = neon.base_url.trim().trim_end_matches('/').to_string();
        if !(base_url.starts_with("https://") || base_url.starts_with("http://")) {
            return Err(Error::Config(format!(
                "{origin}: key `snapshot.base_url`: `{}` is not an http(s) URL",
                redact_urls(&base_url)
            )));
        }
        let key_source = match &neon.api_key {
            SecretSource::Env(var) => format!("environment variable `{var}` (`api_key_env`)"),
            SecretSource::File(path) => format!("file {} (`api_key_file`)", path.display()),
        };
        let api_key = neon.api_key.read(&env.file)?;
        let mut auth = HeaderValue::from_str(&format!("Bearer {api_key}")).map_err(|_| {
            Error::Config(format!(
                "{origin}: the Neon API key from {key_source} contains characters that cannot \
                 be sent in an HTTP header"
            ))
        })?;
        auth.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, auth);
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Snapshot(format!("cannot set up the HTTP client for Neon: {e}")))?;
        Ok(NeonSnapshots {
            http,
            base_url,
            project_id: neon.project_id.clone(),
            branch_id: neon.branch_id.clone(),
            api_key,
            key_source,
            origin: env.file.clone(),
            timeout: config.timeout,
            poll_interval: config.poll_interval,
        })
    }

    /// The name of the branch a restore for `run_id` keeps the replaced state under.
    pub fn preserved_name(&self, run_id: &str) -> String {
        format!("{}{}", self.preserved_prefix(), super::run_token(run_id))
    }

    /// Names carry the environment's branch id, so environments sharing a Neon project never
    /// list, prune or restore each other's snapshots.
    fn snapshot_prefix(&self) -> String {
        format!("{SNAPSHOT_PREFIX}{}-", self.branch_id)
    }

    fn preserved_prefix(&self) -> String {
        format!("{PRESERVED_PREFIX}{}-", self.branch_id)
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.timeout
    }

    /// Removes the API key (should a server echo it) and URL passwords from a message.
    fn scrub(&self, text: &str) -> String {
        redact_urls(&text.replace(&self.api_key, "***"))
    }

    fn fail(&self, text: impl AsRef<str>) -> Error {
        Error::Snapshot(self.scrub(text.as_ref()))
    }

    fn note(&self, progress: &dyn Progress, text: impl AsRef<str>) {
        let text = self.scrub(text.as_ref());
        tracing::debug!(target: "sluice::snapshot::neon", "{text}");
        progress.update(&text);
    }

    fn token(&self, run_id: &str) -> Result<String> {
        let token = super::run_token(run_id);
        if token.is_empty() {
            return Err(self.fail(format!(
                "run id {run_id:?} has no letters or digits to name a Neon branch after"
            )));
        }
        Ok(token)
    }

    /// What the user can do about an HTTP error status.
    fn hint(&self, status: StatusCode) -> String {
        match status.as_u16() {
            401 | 403 => format!(
                "; check the Neon API key from {} (set in {})",
                self.key_source,
                self.origin.display()
            ),
            404 => format!(
                "; check `project_id` and `branch_id` in {}",
                self.origin.display()
            ),
            _ => String::new(),
        }
    }

    fn http_error(&self, method: &Method, path: &str, status: StatusCode, body: &[u8]) -> String {
        format!(
            "Neon API {method} {path} answered {status}: {}{}",
            error_text(body),
            self.hint(status)
        )
    }

    fn parse<T: DeserializeOwned>(
        &self,
        method: &Method,
        path: &str,
        status: StatusCode,
        body: &[u8],
    ) -> Result<T> {
        serde_json::from_slice(body).map_err(|e| {
            let text: String = String::from_utf8_lossy(body).chars().take(300).collect();
            self.fail(format!(
                "Neon API {method} {path} answered {status} with a body sluice cannot read \
                 ({e}): {text}"
            ))
        })
    }

    /// Sends one request and reads the whole answer, within `deadline`.
    async fn exchange(
        &self,
        method: &Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
        deadline: Instant,
    ) -> Reply {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let limit = REQUEST_TIMEOUT
            .min(remaining)
            .max(Duration::from_millis(100));
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base_url))
            .timeout(limit);
        if !query.is_empty() {
            request = request.query(query);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(err) => {
                let sent = !err.is_connect();
                return Reply::NoAnswer {
                    reason: crate::error::describe_http_error(err),
                    sent,
                };
            }
        };
        let status = response.status();
        let retry_after = retry_after(response.headers());
        match response.bytes().await {
            Ok(bytes) => Reply::Answer {
                status,
                retry_after,
                body: bytes.to_vec(),
            },
            Err(err) => Reply::NoAnswer {
                reason: format!(
                    "answered {status} but {}",
                    crate::error::describe_http_error(err)
                ),
                sent: true,
            },
        }
    }

    /// Waits before the next attempt: `Retry-After` when the server gave one, else exponential
    /// backoff from the poll interval up to [`MAX_BACKOFF`]. Fails when the wait would cross
    /// the deadline.
    async fn pause(
        &self,
        why: &str,
        retry_after: Option<Duration>,
        attempt: u32,
        started: Instant,
        deadline: Instant,
        progress: &dyn Progress,
    ) -> Result<()> {
        let wait = retry_after.unwrap_or_else(|| self.backoff(attempt));
        let now = Instant::now();
        if now + wait > deadline {
            return Err(self.fail(format!(
                "{why}; gave up after {} and {} attempt(s): the next try would pass the deadline \
                 (`snapshot.timeout` = {} in {})",
                seconds(now.duration_since(started)),
                attempt + 1,
                humantime::format_duration(self.timeout),
                self.origin.display()
            )));
        }
        self.note(progress, format!("{why}; retrying in {}", seconds(wait)));
        tokio::time::sleep(wait).await;
        Ok(())
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let base = self
            .poll_interval
            .clamp(Duration::from_millis(1), Duration::from_millis(500));
        let exp = base
            .saturating_mul(1u32 << attempt.min(16))
            .min(MAX_BACKOFF);
        // Jitter (75–125 %) so that several sluice processes do not retry in step.
        let random = (uuid::Uuid::new_v4().as_u128() % 1000) as f64 / 1000.0;
        exp.mul_f64(0.75 + random / 2.0)
    }

    /// A request that is safe to repeat (GET, and DELETE, which Neon answers 204 once the
    /// branch is gone): retried on 423, 429, 5xx and transport errors until `deadline`.
    /// Returns the 2xx answer; 404 too when `missing_ok`.
    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        missing_ok: bool,
        deadline: Instant,
        progress: &dyn Progress,
    ) -> Result<(StatusCode, Vec<u8>)> {
        let started = Instant::now();
        let mut attempt = 0u32;
        loop {
            let (why, wait) = match self.exchange(&method, path, query, None, deadline).await {
                Reply::Answer { status, body, .. }
                    if status.is_success() || (missing_ok && status == StatusCode::NOT_FOUND) =>
                {
                    return Ok((status, body));
                }
                Reply::Answer {
                    status,
                    retry_after,
                    body,
                } if status == StatusCode::LOCKED
                    || status == StatusCode::TOO_MANY_REQUESTS
                    || status.is_server_error() =>
                {
                    (self.http_error(&method, path, status, &body), retry_after)
                }
                Reply::Answer { status, body, .. } => {
                    return Err(self.fail(self.http_error(&method, path, status, &body)));
                }
                Reply::NoAnswer { reason, .. } => {
                    (format!("Neon API {method} {path}: {reason}"), None)
                }
            };
            self.pause(&why, wait, attempt, started, deadline, progress)
                .await?;
            attempt += 1;
        }
    }

    /// Sends a POST once and says whether it certainly happened, certainly did not, or may have.
    async fn post_once(&self, path: &str, body: &Value, deadline: Instant) -> Result<PostOutcome> {
        let method = Method::POST;
        Ok(
            match self
                .exchange(&method, path, &[], Some(body), deadline)
                .await
            {
                Reply::Answer { status, body, .. } if status.is_success() => {
                    PostOutcome::Done(status, body)
                }
                Reply::Answer {
                    status,
                    retry_after,
                    body,
                } if status == StatusCode::LOCKED || status == StatusCode::TOO_MANY_REQUESTS => {
                    PostOutcome::NotDone {
                        why: self.http_error(&method, path, status, &body),
                        retry_after,
                    }
                }
                Reply::Answer { status, body, .. } if status.is_server_error() => {
                    PostOutcome::Unknown(self.http_error(&method, path, status, &body))
                }
                Reply::Answer { status, body, .. } => {
                    return Err(self.fail(self.http_error(&method, path, status, &body)));
                }
                Reply::NoAnswer {
                    reason,
                    sent: false,
                } => PostOutcome::NotDone {
                    why: format!("Neon API {method} {path}: {reason}"),
                    retry_after: None,
                },
                Reply::NoAnswer { reason, sent: true } => {
                    PostOutcome::Unknown(format!("Neon API {method} {path}: {reason}"))
                }
            },
        )
    }

    fn branches_path(&self) -> String {
        format!("/projects/{}/branches", self.project_id)
    }

    fn branch_path(&self, branch_id: &str) -> Result<String> {
        if !is_neon_id(branch_id) {
            return Err(self.fail(format!(
                "Neon returned the branch id {:?}, which is not a valid id",
                branch_id.chars().take(80).collect::<String>()
            )));
        }
        Ok(format!(
            "/projects/{}/branches/{branch_id}",
            self.project_id
        ))
    }

    /// All branches whose name or id contains `search`, oldest first, following pagination.
    async fn search_branches(
        &self,
        search: &str,
        deadline: Instant,
        progress: &dyn Progress,
    ) -> Result<Vec<Branch>> {
        let path = self.branches_path();
        let mut found = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut query = vec![
                ("search", search.to_string()),
                ("sort_by", "created_at".to_string()),
                ("sort_order", "asc".to_string()),
                ("limit", PAGE_SIZE.to_string()),
            ];
            if let Some(cursor) = &cursor {
                query.push(("cursor", cursor.clone()));
            }
            let (status, body) = self
                .call(Method::GET, &path, &query, false, deadline, progress)
                .await?;
            let page: BranchesPage = self.parse(&Method::GET, &path, status, &body)?;
            let empty = page.branches.is_empty();
            found.extend(page.branches);
            // Follow `next` while pages keep coming; a server that always sends a cursor ends
            // with an empty page, one that repeats its cursor is not followed in circles.
            let next = page
                .pagination
                .and_then(|p| p.next)
                .filter(|next| !next.is_empty());
            match next {
                Some(next) if !empty && cursor.as_ref() != Some(&next) => cursor = Some(next),
                _ => return Ok(found),
            }
        }
    }

    /// Branches named exactly `name`, oldest first.
    async fn branches_named(
        &self,
        name: &str,
        deadline: Instant,
        progress: &dyn Progress,
    ) -> Result<Vec<Branch>> {
        let mut branches = self.search_branches(name, deadline, progress).await?;
        branches.retain(|b| b.name == name);
        Ok(branches)
    }

    async fn find_branch(
        &self,
        name: &str,
        deadline: Instant,
        progress: &dyn Progress,
    ) -> Result<Option<Branch>> {
        Ok(self
            .branches_named(name, deadline, progress)
            .await?
            .into_iter()
            .next())
    }

    async fn get_branch(
        &self,
        branch_id: &str,
        deadline: Instant,
        progress: &dyn Progress,
    ) -> Result<Branch> {
        let path = self.branch_path(branch_id)?;
        let (status, body) = self
            .call(Method::GET, &path, &[], false, deadline, progress)
            .await?;
        let envelope: BranchEnvelope = self.parse(&Method::GET, &path, status, &body)?;
        Ok(envelope.branch)
    }

    async fn get_operation(
        &self,
        operation_id: &str,
        deadline: Instant,
        progress: &dyn Progress,
    ) -> Result<Operation> {
        if !is_operation_id(operation_id) {
            return Err(self.fail(format!(
                "Neon returned the operation id {:?}, which is not a valid id",
                operation_id.chars().take(80).collect::<String>()
            )));
        }
        let path = format!("/projects/{}/operations/{operation_id}", self.project_id);
        let (status, body) = self
            .call(Method::GET, &path, &[], false, deadline, progress)
            .await?;
        let envelope: OperationEnvelope = self.parse(&Method::GET, &path, status, &body)?;
        Ok(envelope.operation)
    }

    /// The project's recent operations on `branch_id` that have not ended yet.
    async fn pending_operations(
        &self,
        branch_id: &str,
        deadline: Instant,
        progress: &dyn Progress,
    ) -> Result<Vec<Operation>> {
        let path = format!("/projects/{}/operations", self.project_id);
        let query = [("limit", RECENT_OPERATIONS.to_string())];
        let (status, body) = self
            .call(Method::GET, &path, &query, false, deadline, progress)
            .await?;
        let page: OperationsPage = self.parse(&Method::GET, &path, status, &body)?;
        Ok(page
            .operations
            .into_iter()
            .filter(|op| op.branch_id.as_deref() == Some(branch_id))
            .filter(|op| operation_state(&op.status) == OperationState::Pending)
            .collect())
    }

    /// Polls each operation every `poll_interval` until it finishes; fails when one fails or
    /// the deadline passes.
    async fn wait_operations(
        &self,
        operations: &[Operation],
        what: &str,
        deadline: Instant,
        progress: &dyn Progress,
    ) -> Result<()> {
        let started = Instant::now();
        for first in operations {
            let mut op = first.clone();
            loop {
                let action = op.action.as_deref().unwrap_or("unknown action");
                match operation_state(&op.status) {
                    OperationState::Done => break,
                    OperationState::Failed => {
                        return Err(self.fail(format!(
                            "Neon operation {} ({action}) {what} ended `{}`: {}; see the \
                             operations of project {} in the Neon console",
                            op.id,
                            op.status,
                            op.error
                                .as_deref()
                                .filter(|e| !e.trim().is_empty())
                                .unwrap_or("Neon gave no error message"),
                            self.project_id
                        )));
                    }
                    OperationState::Pending => {}
                }
                let now = Instant::now();
                if now >= deadline {
                    return Err(self.fail(format!(
                        "timed out after {} waiting for Neon operation {} ({action}) {what}: \
                         still `{}`{}; it may still finish — check the operations of project \
                         {} in the Neon console, or raise `snapshot.timeout` in {}",
                        humantime::format_duration(self.timeout),
                        op.id,
                        op.status,
                        op.error
                            .as_deref()
                            .filter(|e| !e.trim().is_empty())
                            .map(|e| format!(" (last error: {e})"))
                            .unwrap_or_default(),
                        self.project_id,
                        self.origin.display()
                    )));
                }
                self.note(
                    progress,
                    format!(
                        "waiting for Neon operation {} ({action}) {what}: {}, {}",
                        op.id,
                        op.status,
                        seconds(now.duration_since(started))
                    ),
                );
                tokio::time::sleep(self.poll_interval.min(deadline - now)).await;
                op = self.get_operation(&op.id, deadline, progress).await?;
            }
        }
        Ok(())
    }

    /// Waits until no operation on `branch_id` is pending and the branch is no longer being
    /// created or reset; returns the branch as it then is.
    async fn settle(
        &self,
        branch_id: &str,
        what: &str,
        deadline: Instant,
        progress: &dyn Progress,
    ) -> Result<Branch> {
        let started = Instant::now();
        loop {
            let pending = self
                .pending_operations(branch_id, deadline, progress)
                .await?;
            if !pending.is_empty() {
                self.wait_operations(&pending, what, deadline, progress)
                    .await?;
                continue;
            }
            let branch = self.get_branch(branch_id, deadline, progress).await?;
            let current = branch.current_state.as_deref().unwrap_or("unknown");
            let moving = branch
                .pending_state
                .as_deref()
                .is_some_and(|p| p != current);
            if !moving && !matches!(current, "init" | "resetting") {
                return Ok(branch);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(self.fail(format!(
                    "timed out after {} waiting for Neon branch {} ({branch_id}) {what}: still \
                     `{current}`; raise `snapshot.timeout` in {} or check the branch in the Neon \
                     console",
                    humantime::format_duration(self.timeout),
                    branch.name,
                    self.origin.display()
                )));
            }
            self.note(
                progress,
                format!(
                    "waiting for Neon branch {} ({branch_id}) {what}: `{current}`{}, {}",
                    branch.name,
                    branch
                        .pending_state
                        .as_deref()
                        .map(|p| format!(" → `{p}`"))
                        .unwrap_or_default(),
                    seconds(now.duration_since(started))
                ),
            );
            tokio::time::sleep(self.poll_interval.min(deadline - now)).await;
        }
    }
}

#[async_trait::async_trait]
impl SnapshotProvider for NeonSnapshots {
    fn kind(&self) -> &'static str {
        "neon"
    }

    fn snapshot_name(&self, run_id: &str) -> String {
        format!("{}{}", self.snapshot_prefix(), super::run_token(run_id))
    }

    async fn create(
        &self,
        run_id: &str,
        progress: &dyn Progress,
        _hazards: &dyn super::HazardLog,
    ) -> Result<Snapshot> {
        let token = self.token(run_id)?;
        let name = self.snapshot_name(run_id);
        let what = format!("creating branch {name}");
        let deadline = self.deadline();
        let started = Instant::now();
        let path = self.branches_path();
        let body = json!({ "branch": { "parent_id": self.branch_id, "name": name } });
        let mut attempt = 0u32;
        loop {
            if let Some(existing) = self.find_branch(&name, deadline, progress).await? {
                self.note(
                    progress,
                    format!(
                        "Neon branch {name} ({}) already exists; using it instead of creating \
                         another",
                        existing.id
                    ),
                );
                let branch = self.settle(&existing.id, &what, deadline, progress).await?;
                return Ok(snapshot_of(&branch, SnapshotKind::Snapshot, Some(token)));
            }
            match self.post_once(&path, &body, deadline).await? {
                PostOutcome::Done(status, bytes) => {
                    match self.parse::<BranchOperations>(&Method::POST, &path, status, &bytes) {
                        Ok(created) => {
                            self.note(
                                progress,
                                format!("Neon is creating branch {name} ({})", created.branch.id),
                            );
                            self.wait_operations(&created.operations, &what, deadline, progress)
                                .await?;
                            let branch = self
                                .settle(&created.branch.id, &what, deadline, progress)
                                .await?;
                            return Ok(snapshot_of(&branch, SnapshotKind::Snapshot, Some(token)));
                        }
                        Err(err) => {
                            // The branch was made; find it by name on the next turn.
                            self.note(progress, format!("{err}; looking the branch up by name"));
                        }
                    }
                }
                PostOutcome::NotDone { why, retry_after } => {
                    self.pause(&why, retry_after, attempt, started, deadline, progress)
                        .await?;
                }
                PostOutcome::Unknown(why) => {
                    tracing::warn!(target: "sluice::snapshot::neon", "{}", self.scrub(&why));
                    let why = format!(
                        "{why}; the branch may or may not have been created, so sluice checks \
                         by name before sending the request again"
                    );
                    self.pause(&why, None, attempt, started, deadline, progress)
                        .await?;
                }
            }
            attempt += 1;
        }
    }

    async fn restore(
        &self,
        snapshot: &str,
        run_id: &str,
        progress: &dyn Progress,
        _hazards: &dyn super::HazardLog,
    ) -> Result<Restored> {
        self.token(run_id)?;
        let preserved = self.preserved_name(run_id);
        let deadline = self.deadline();
        let started = Instant::now();
        let path = format!("{}/restore", self.branch_path(&self.branch_id)?);
        let what = format!("restoring branch {} from {snapshot}", self.branch_id);
        let mut attempt = 0u32;
        loop {
            let Some(source) = self.find_branch(snapshot, deadline, progress).await? else {
                return Err(self.fail(format!(
                    "cannot restore branch {} of Neon project {}: there is no branch named \
                     `{snapshot}`; `sluice snapshots list` shows the snapshots that exist",
                    self.branch_id, self.project_id
                )));
            };
            if source.id == self.branch_id {
                return Err(self.fail(format!(
                    "cannot restore branch {} from `{snapshot}`: that is the environment's own \
                     branch, not a snapshot of it",
                    self.branch_id
                )));
            }
            if let Some(kept) = self.find_branch(&preserved, deadline, progress).await? {
                self.note(
                    progress,
                    format!(
                        "Neon branch {preserved} ({}) exists: the restore already happened; \
                         waiting for branch {} to settle",
                        kept.id, self.branch_id
                    ),
                );
                self.settle(&self.branch_id, &what, deadline, progress)
                    .await?;
                return Ok(Restored {
                    snapshot: snapshot.to_string(),
                    preserved_as: preserved,
                });
            }
            let body = json!({ "source_branch_id": source.id, "preserve_under_name": preserved });
            match self.post_once(&path, &body, deadline).await? {
                PostOutcome::Done(status, bytes) => {
                    match self.parse::<BranchOperations>(&Method::POST, &path, status, &bytes) {
                        Ok(answer) => {
                            self.wait_operations(&answer.operations, &what, deadline, progress)
                                .await?;
                            self.settle(&self.branch_id, &what, deadline, progress)
                                .await?;
                            return Ok(Restored {
                                snapshot: snapshot.to_string(),
                                preserved_as: preserved,
                            });
                        }
                        Err(err) => {
                            self.note(progress, format!("{err}; checking for {preserved}"));
                        }
                    }
                }
                PostOutcome::NotDone { why, retry_after } => {
                    self.pause(&why, retry_after, attempt, started, deadline, progress)
                        .await?;
                }
                PostOutcome::Unknown(why) => {
                    tracing::warn!(target: "sluice::snapshot::neon", "{}", self.scrub(&why));
                    let why = format!(
                        "{why}; the restore may or may not have started, so sluice checks for \
                         branch {preserved} before sending the request again"
                    );
                    self.pause(&why, None, attempt, started, deadline, progress)
                        .await?;
                }
            }
            attempt += 1;
        }
    }

    async fn delete(&self, name: &str) -> Result<()> {
        let (snap, kept) = (self.snapshot_prefix(), self.preserved_prefix());
        if !(name.starts_with(&snap) || name.starts_with(&kept)) {
            return Err(self.fail(format!(
                "refusing to delete Neon branch `{name}`: sluice deletes only the branches it \
                 made for this environment (`{snap}*`, `{kept}*`)"
            )));
        }
        let progress = &Quiet;
        let deadline = self.deadline();
        let branches = self.branches_named(name, deadline, progress).await?;
        for branch in &branches {
            if branch.id == self.branch_id || branch.default == Some(true) {
                return Err(self.fail(format!(
                    "refusing to delete Neon branch `{name}` ({}): it is the environment's own \
                     branch or the project's default branch",
                    branch.id
                )));
            }
        }
        for branch in &branches {
            let path = self.branch_path(&branch.id)?;
            let (status, body) = self
                .call(Method::DELETE, &path, &[], true, deadline, progress)
                .await?;
            if status != StatusCode::OK {
                continue; // 204 or 404: already gone.
            }
            let answer: BranchOperations = self.parse(&Method::DELETE, &path, status, &body)?;
            let what = format!("deleting branch {name}");
            self.wait_operations(&answer.operations, &what, deadline, progress)
                .await?;
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<Snapshot>> {
        let deadline = self.deadline();
        let branches = self.search_branches("sluice-", deadline, &Quiet).await?;
        let (snap, kept) = (self.snapshot_prefix(), self.preserved_prefix());
        let mut found: Vec<Snapshot> = branches
            .iter()
            .filter_map(|b| {
                let (kind, run) = if let Some(run) = b.name.strip_prefix(snap.as_str()) {
                    (SnapshotKind::Snapshot, run)
                } else if let Some(run) = b.name.strip_prefix(kept.as_str()) {
                    (SnapshotKind::Preserved, run)
                } else {
                    return None;
                };
                let run = (!run.is_empty()).then(|| run.to_string());
                Some(snapshot_of(b, kind, run))
            })
            .collect();
        found.sort_by(|a, b| {
            (a.created_at.is_none(), a.created_at, &a.name).cmp(&(
                b.created_at.is_none(),
                b.created_at,
                &b.name,
            ))
        });
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neon_error_bodies_are_read() {
        assert_eq!(
            error_text(br#"{"code":"","message":"branch not found","request_id":"r1"}"#),
            "branch not found (request id r1)"
        );
        assert_eq!(
            error_text(br#"{"title":"Invalid request","detail":"bad","validation":[{"message":"x must be y"}]}"#),
            "Invalid request: bad [x must be y]"
        );
        assert_eq!(error_text(b"<html>oops</html>"), "<html>oops</html>");
        assert_eq!(error_text(b""), "no message");
    }

    #[test]
    fn operation_states() {
        assert_eq!(operation_state("finished"), OperationState::Done);
        assert_eq!(operation_state("skipped"), OperationState::Done);
        assert_eq!(operation_state("failed"), OperationState::Failed);
        assert_eq!(operation_state("error"), OperationState::Failed);
        assert_eq!(operation_state("cancelled"), OperationState::Failed);
        assert_eq!(operation_state("running"), OperationState::Pending);
        assert_eq!(operation_state("scheduling"), OperationState::Pending);
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3)));
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
        );
        assert_eq!(retry_after(&headers), Some(Duration::ZERO));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn ids_that_go_into_paths_are_checked() {
        assert!(is_neon_id("br-small-term-683261"));
        assert!(!is_neon_id("br/../x"));
        assert!(!is_neon_id(""));
        assert!(is_operation_id("a07f8772-1877-4da9-a939-3a3ae62d1d8d"));
        assert!(!is_operation_id("../x"));
    }
}
