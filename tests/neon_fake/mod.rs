//! A stateful fake of the part of the Neon API v2 that sluice's Neon provider uses: list,
//! create, get and delete branches, restore a branch, list and get operations.
//!
//! Answers follow the official OpenAPI spec (every required field of `Branch`, `Operation`,
//! `BranchResponse`, `BranchesResponse`, `AnnotationsMapResponse`, `OperationsResponse`, …),
//! so the same fake can sit behind `prism proxy`, which checks each exchange against the spec.
//! Branches carry a `data` string standing for their database contents, so a test can see that
//! a restore really moved the snapshot's state onto the environment's branch.
//!
//! Operations need a few polls before they finish. Faults can be injected per endpoint:
//! 423, 429 (optionally with `Retry-After`), a 5xx before acting, a lost answer after acting
//! (502 or a dropped connection), failing or never-ending operations, and answers that break
//! the spec.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde_json::{json, Value};

/// The endpoints the fake serves, for aiming faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET /projects/{project_id}/branches`
    ListBranches,
    /// `POST /projects/{project_id}/branches`
    CreateBranch,
    /// `GET /projects/{project_id}/branches/{branch_id}`
    GetBranch,
    /// `DELETE /projects/{project_id}/branches/{branch_id}`
    DeleteBranch,
    /// `POST /projects/{project_id}/branches/{branch_id}/restore`
    Restore,
    /// `GET /projects/{project_id}/operations`
    ListOperations,
    /// `GET /projects/{project_id}/operations/{operation_id}`
    GetOperation,
}

/// Something the fake does instead of (or besides) answering normally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// `423 Locked` without acting.
    Locked,
    /// `429 Too Many Requests` without acting, with `Retry-After: <secs>` when given.
    RateLimited { retry_after: Option<u64> },
    /// This 5xx status without acting.
    Unavailable(u16),
    /// Acts, then answers `502 Bad Gateway`: the answer is lost.
    LostResponse,
    /// Acts, then drops the connection without answering.
    DropConnection,
    /// Acts, but the operations it starts end `failed`.
    FailOperations,
    /// Acts, but the operations it starts never finish.
    StuckOperations,
    /// Answers with branches and operations missing fields the spec requires.
    ViolateSpec,
}

/// How an operation will end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Finish,
    Fail,
    Never,
}

/// A branch of the fake project.
#[derive(Debug, Clone)]
pub struct FakeBranch {
    pub id: String,
    pub name: String,
    pub parent_id: Option<String>,
    /// Stands for the branch's database contents.
    pub data: String,
    pub created_at: DateTime<Utc>,
    pub default: bool,
    pub current_state: String,
    pub pending_state: Option<String>,
}

/// An operation of the fake project.
#[derive(Debug, Clone)]
pub struct FakeOperation {
    pub id: String,
    pub branch_id: String,
    pub action: &'static str,
    pub status: String,
    pub error: Option<String>,
    pub polls_left: u32,
    pub ending: Ending,
    pub created_at: DateTime<Utc>,
}

struct Injection {
    endpoint: Endpoint,
    fault: Fault,
    remaining: u32,
}

/// Everything the fake knows; tests read and change it through [`FakeNeon::state`].
pub struct FakeState {
    pub project_id: String,
    pub api_key: String,
    pub branches: Vec<FakeBranch>,
    pub operations: Vec<FakeOperation>,
    /// `METHOD /path` of every request, in order.
    pub requests: Vec<String>,
    /// Bodies of the create-branch requests.
    pub create_bodies: Vec<Value>,
    /// Bodies of the restore requests.
    pub restore_bodies: Vec<Value>,
    /// GETs an operation needs before it ends.
    pub polls_per_operation: u32,
    /// Largest page the branch list returns, whatever `limit` asks.
    pub page_cap: usize,
    injections: Vec<Injection>,
    clock: DateTime<Utc>,
    next_branch: u32,
}

impl FakeState {
    fn tick(&mut self) -> DateTime<Utc> {
        self.clock += chrono::Duration::seconds(1);
        self.clock
    }

    fn new_branch_id(&mut self) -> String {
        self.next_branch += 1;
        format!("br-fake-{:06}", self.next_branch)
    }

    /// Adds a ready branch and returns its id.
    pub fn add_branch(&mut self, name: &str, parent_id: Option<&str>, data: &str) -> String {
        let id = self.new_branch_id();
        let created_at = self.tick();
        self.branches.push(FakeBranch {
            id: id.clone(),
            name: name.into(),
            parent_id: parent_id.map(Into::into),
            data: data.into(),
            created_at,
            default: false,
            current_state: "ready".into(),
            pending_state: None,
        });
        id
    }

    /// The branch with this id.
    pub fn branch(&self, id: &str) -> Option<&FakeBranch> {
        self.branches.iter().find(|b| b.id == id)
    }

    /// The branch with this id, to change.
    pub fn branch_mut(&mut self, id: &str) -> Option<&mut FakeBranch> {
        self.branches.iter_mut().find(|b| b.id == id)
    }

    /// Branches with exactly this name.
    pub fn named(&self, name: &str) -> Vec<&FakeBranch> {
        self.branches.iter().filter(|b| b.name == name).collect()
    }

    /// How many requests matched `METHOD /path-prefix`.
    pub fn count(&self, method: &str, path_suffix: &str) -> usize {
        self.requests
            .iter()
            .filter(|r| r.starts_with(&format!("{method} ")) && r.ends_with(path_suffix))
            .count()
    }

    fn start_operation(&mut self, branch_id: &str, action: &'static str, ending: Ending) -> usize {
        let created_at = self.clock;
        self.operations.push(FakeOperation {
            id: uuid::Uuid::new_v4().to_string(),
            branch_id: branch_id.into(),
            action,
            status: "scheduling".into(),
            error: None,
            polls_left: self.polls_per_operation.max(1),
            ending,
            created_at,
        });
        self.operations.len() - 1
    }

    /// One poll of an operation: it moves towards its ending; finishing readies its branch.
    fn advance(&mut self, index: usize) {
        let op = &mut self.operations[index];
        if matches!(op.status.as_str(), "finished" | "failed") {
            return;
        }
        op.polls_left = op.polls_left.saturating_sub(1);
        if op.polls_left > 0 || op.ending == Ending::Never {
            op.status = "running".into();
            return;
        }
        match op.ending {
            Ending::Fail => {
                op.status = "failed".into();
                op.error = Some("pageserver did not answer (injected failure)".into());
            }
            _ => {
                op.status = "finished".into();
                let branch_id = op.branch_id.clone();
                if let Some(branch) = self.branch_mut(&branch_id) {
                    branch.current_state = "ready".into();
                    branch.pending_state = None;
                }
            }
        }
    }
}

type Shared = Arc<Mutex<FakeState>>;

fn lock(state: &Shared) -> MutexGuard<'_, FakeState> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A running fake, serving on `url` until dropped.
pub struct FakeNeon {
    /// `http://127.0.0.1:<port>`, the base URL to give sluice (no `/api/v2`).
    pub url: String,
    /// The port it listens on.
    pub port: u16,
    state: Shared,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

/// The id of the environment's branch in every fake project.
pub const ENV_BRANCH: &str = "br-main-123";

impl FakeNeon {
    /// Starts a fake project `project_id` that accepts `api_key`, holding a default branch
    /// [`ENV_BRANCH`] named `main` with data `v1`, and an unrelated root branch `dev`.
    pub fn start(project_id: &str, api_key: &str) -> FakeNeon {
        let clock = Utc
            .with_ymd_and_hms(2024, 5, 1, 12, 0, 0)
            .single()
            .expect("a valid date");
        let mut state = FakeState {
            project_id: project_id.into(),
            api_key: api_key.into(),
            branches: Vec::new(),
            operations: Vec::new(),
            requests: Vec::new(),
            create_bodies: Vec::new(),
            restore_bodies: Vec::new(),
            polls_per_operation: 3,
            page_cap: 10_000,
            injections: Vec::new(),
            clock,
            next_branch: 0,
        };
        state.branches.push(FakeBranch {
            id: ENV_BRANCH.into(),
            name: "main".into(),
            parent_id: None,
            data: "v1".into(),
            created_at: clock,
            default: true,
            current_state: "ready".into(),
            pending_state: None,
        });
        // An unrelated branch that is not a child of the environment's (a schema-only root),
        // so that a restore, which moves the branch's children, leaves it alone.
        state.add_branch("dev", None, "dev data");
        let state: Shared = Arc::new(Mutex::new(state));

        let app = Router::new()
            .route(
                "/projects/{project_id}/branches",
                get(list_branches).post(create_branch),
            )
            .route(
                "/projects/{project_id}/branches/{branch_id}",
                get(get_branch).delete(delete_branch),
            )
            .route(
                "/projects/{project_id}/branches/{branch_id}/restore",
                axum::routing::post(restore_branch),
            )
            .route("/projects/{project_id}/operations", get(list_operations))
            .route(
                "/projects/{project_id}/operations/{operation_id}",
                get(get_operation),
            )
            .fallback(not_found)
            .with_state(state.clone());

        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let port = listener.local_addr().expect("local address").port();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("fake-neon".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for the fake");
                runtime.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                    let server = axum::serve(listener, app);
                    tokio::select! {
                        _ = server => {}
                        _ = rx => {}
                    }
                });
            })
            .expect("spawn the fake's thread");
        FakeNeon {
            url: format!("http://127.0.0.1:{port}"),
            port,
            state,
            shutdown: Some(tx),
        }
    }

    /// The fake's state, locked.
    pub fn state(&self) -> MutexGuard<'_, FakeState> {
        lock(&self.state)
    }

    /// Makes the next `times` requests to `endpoint` meet `fault`.
    pub fn inject(&self, endpoint: Endpoint, fault: Fault, times: u32) {
        self.state().injections.push(Injection {
            endpoint,
            fault,
            remaining: times,
        });
    }

    /// Drops every injected fault that has not fired yet.
    pub fn clear_faults(&self) {
        self.state().injections.clear();
    }
}

impl Drop for FakeNeon {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// What a handler decided, built while the state is locked and sent after it is released.
enum Reply {
    Json {
        status: u16,
        body: Value,
        headers: Vec<(&'static str, String)>,
    },
    Empty(u16),
    /// Close the connection without answering.
    Drop,
}

impl Reply {
    fn json(status: u16, body: Value) -> Reply {
        Reply::Json {
            status,
            body,
            headers: Vec::new(),
        }
    }

    fn error(status: u16, message: &str) -> Reply {
        Reply::json(
            status,
            json!({ "code": "", "message": message, "request_id": uuid::Uuid::new_v4().to_string() }),
        )
    }

    fn send(self) -> Response {
        match self {
            Reply::Json {
                status,
                body,
                headers,
            } => {
                let status =
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let mut response = (status, Json(body)).into_response();
                for (name, value) in headers {
                    if let Ok(value) = HeaderValue::from_str(&value) {
                        response.headers_mut().insert(name, value);
                    }
                }
                response
            }
            Reply::Empty(status) => StatusCode::from_u16(status)
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
                .into_response(),
            // Unwinding out of the handler makes the server drop the connection unanswered;
            // `resume_unwind` skips the panic hook, so nothing is printed.
            Reply::Drop => std::panic::resume_unwind(Box::new("fake neon drops the connection")),
        }
    }
}

fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A `Branch` with every field the spec requires (minus two when `violate` is set).
fn branch_json(project_id: &str, b: &FakeBranch, violate: bool) -> Value {
    let mut v = json!({
        "id": b.id,
        "project_id": project_id,
        "name": b.name,
        "current_state": b.current_state,
        "state_changed_at": timestamp(b.created_at),
        "logical_size": b.data.len() as i64 * 1024,
        "creation_source": "console",
        "primary": b.default,
        "default": b.default,
        "protected": false,
        "cpu_used_sec": 0,
        "compute_time_seconds": 0,
        "active_time_seconds": 0,
        "written_data_bytes": 0,
        "data_transfer_bytes": 0,
        "created_at": timestamp(b.created_at),
        "updated_at": timestamp(b.created_at),
        "init_source": "parent-data",
    });
    if let Value::Object(map) = &mut v {
        if let Some(parent) = &b.parent_id {
            map.insert("parent_id".into(), json!(parent));
            map.insert("parent_lsn".into(), json!("0/1DE2850"));
        }
        if let Some(pending) = &b.pending_state {
            map.insert("pending_state".into(), json!(pending));
        }
        if violate {
            map.remove("data_transfer_bytes");
            map.remove("creation_source");
        }
    }
    v
}

/// An `Operation` with every field the spec requires (minus one when `violate` is set).
fn operation_json(project_id: &str, op: &FakeOperation, violate: bool) -> Value {
    let mut v = json!({
        "id": op.id,
        "project_id": project_id,
        "branch_id": op.branch_id,
        "action": op.action,
        "status": op.status,
        "failures_count": if op.status == "failed" { 1 } else { 0 },
        "created_at": timestamp(op.created_at),
        "updated_at": timestamp(op.created_at),
        "total_duration_ms": 0,
    });
    if let Value::Object(map) = &mut v {
        if let Some(error) = &op.error {
            map.insert("error".into(), json!(error));
        }
        if violate {
            map.remove("total_duration_ms");
        }
    }
    v
}

/// Logs the request, checks the key and project, and applies a pending fault: faults that
/// answer instead of acting come back as `Err`, the others as `Ok(Some(fault))`.
fn begin(
    s: &mut FakeState,
    endpoint: Endpoint,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    project_id: &str,
) -> Result<Option<Fault>, Reply> {
    s.requests.push(format!("{method} {}", uri.path()));
    let presented = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if presented != format!("Bearer {}", s.api_key) {
        let token = presented.strip_prefix("Bearer ").unwrap_or(presented);
        // Echoes the key it refuses, so tests can check that sluice never repeats it.
        return Err(Reply::error(
            401,
            &format!("authentication failed: API key `{token}` is not valid"),
        ));
    }
    if project_id != s.project_id {
        return Err(Reply::error(404, "project not found"));
    }
    let Some(injection) = s
        .injections
        .iter_mut()
        .find(|i| i.endpoint == endpoint && i.remaining > 0)
    else {
        return Ok(None);
    };
    injection.remaining -= 1;
    match injection.fault.clone() {
        Fault::Locked => Err(Reply::error(
            423,
            "project already has running conflicting operations, scheduling of new ones is prohibited",
        )),
        Fault::RateLimited { retry_after } => {
            let mut reply = Reply::error(429, "too many requests");
            if let (Some(secs), Reply::Json { headers, .. }) = (retry_after, &mut reply) {
                headers.push(("retry-after", secs.to_string()));
            }
            Err(reply)
        }
        Fault::Unavailable(status) => Err(Reply::error(status, "upstream unavailable (injected)")),
        other => Ok(Some(other)),
    }
}

/// Turns the answer into a lost one when the fault says so.
fn finish(reply: Reply, fault: &Option<Fault>) -> Response {
    match fault {
        Some(Fault::LostResponse) => Reply::error(502, "bad gateway (injected)").send(),
        Some(Fault::DropConnection) => Reply::Drop.send(),
        _ => reply.send(),
    }
}

fn ending(fault: &Option<Fault>) -> Ending {
    match fault {
        Some(Fault::FailOperations) => Ending::Fail,
        Some(Fault::StuckOperations) => Ending::Never,
        _ => Ending::Finish,
    }
}

async fn not_found(method: Method, uri: Uri) -> Response {
    Reply::error(404, &format!("no route for {method} {}", uri.path())).send()
}

async fn list_branches(
    State(state): State<Shared>,
    Path(project_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let (reply, fault) = {
        let mut s = lock(&state);
        match begin(
            &mut s,
            Endpoint::ListBranches,
            &method,
            &uri,
            &headers,
            &project_id,
        ) {
            Err(reply) => (reply, None),
            Ok(fault) => {
                let violate = fault == Some(Fault::ViolateSpec);
                let search = query.get("search").cloned().unwrap_or_default();
                let mut found: Vec<&FakeBranch> = s
                    .branches
                    .iter()
                    .filter(|b| b.name.contains(&search) || b.id.contains(&search))
                    .collect();
                let sort_by = query
                    .get("sort_by")
                    .map(String::as_str)
                    .unwrap_or("updated_at");
                let ascending = query.get("sort_order").map(String::as_str) == Some("asc");
                match sort_by {
                    "name" => found.sort_by(|a, b| a.name.cmp(&b.name)),
                    _ => found.sort_by_key(|b| b.created_at),
                }
                if !ascending {
                    found.reverse();
                }
                let offset: usize = query
                    .get("cursor")
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                let limit = query
                    .get("limit")
                    .and_then(|l| l.parse::<usize>().ok())
                    .unwrap_or(usize::MAX)
                    .min(s.page_cap);
                let page: Vec<Value> = found
                    .iter()
                    .skip(offset)
                    .take(limit)
                    .map(|b| branch_json(&s.project_id, b, violate))
                    .collect();
                let mut pagination = json!({
                    "sort_by": sort_by,
                    "sort_order": if ascending { "asc" } else { "desc" },
                });
                if offset + page.len() < found.len() {
                    pagination["next"] = json!((offset + page.len()).to_string());
                }
                let reply = Reply::json(
                    200,
                    json!({ "branches": page, "annotations": {}, "pagination": pagination }),
                );
                (reply, fault)
            }
        }
    };
    finish(reply, &fault)
}

async fn create_branch(
    State(state): State<Shared>,
    Path(project_id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (reply, fault) = {
        let mut s = lock(&state);
        match begin(
            &mut s,
            Endpoint::CreateBranch,
            &method,
            &uri,
            &headers,
            &project_id,
        ) {
            Err(reply) => (reply, None),
            Ok(fault) => (create(&mut s, &body, &fault), fault),
        }
    };
    finish(reply, &fault)
}

fn create(s: &mut FakeState, body: &[u8], fault: &Option<Fault>) -> Reply {
    let request: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return Reply::error(400, &format!("invalid JSON body: {e}")),
        }
    };
    s.create_bodies.push(request.clone());
    let parent_id = request["branch"]["parent_id"]
        .as_str()
        .map(str::to_string)
        .or_else(|| s.branches.iter().find(|b| b.default).map(|b| b.id.clone()));
    let Some(parent) = parent_id.as_deref().and_then(|id| s.branch(id)).cloned() else {
        return Reply::error(404, "parent branch not found");
    };
    let id = s.new_branch_id();
    let name = request["branch"]["name"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| id.clone());
    let created_at = s.tick();
    s.branches.push(FakeBranch {
        id: id.clone(),
        name,
        parent_id: Some(parent.id.clone()),
        data: parent.data.clone(),
        created_at,
        default: false,
        current_state: "init".into(),
        pending_state: Some("ready".into()),
    });
    let op = s.start_operation(&id, "create_timeline", ending(fault));
    let violate = *fault == Some(Fault::ViolateSpec);
    let branch = s
        .branch(&id)
        .map(|b| branch_json(&s.project_id, b, violate));
    Reply::json(
        201,
        json!({
            "branch": branch,
            "endpoints": [],
            "operations": [operation_json(&s.project_id, &s.operations[op], violate)],
            "roles": [],
            "databases": [],
        }),
    )
}

async fn get_branch(
    State(state): State<Shared>,
    Path((project_id, branch_id)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let (reply, fault) = {
        let mut s = lock(&state);
        match begin(
            &mut s,
            Endpoint::GetBranch,
            &method,
            &uri,
            &headers,
            &project_id,
        ) {
            Err(reply) => (reply, None),
            Ok(fault) => {
                let violate = fault == Some(Fault::ViolateSpec);
                let reply = match s.branch(&branch_id) {
                    None => Reply::error(404, "branch not found"),
                    Some(b) => Reply::json(
                        200,
                        json!({
                            "branch": branch_json(&s.project_id, b, violate),
                            "annotation": {
                                "object": { "type": "console/branch", "id": b.id },
                                "value": {},
                            },
                        }),
                    ),
                };
                (reply, fault)
            }
        }
    };
    finish(reply, &fault)
}

async fn delete_branch(
    State(state): State<Shared>,
    Path((project_id, branch_id)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let (reply, fault) = {
        let mut s = lock(&state);
        match begin(
            &mut s,
            Endpoint::DeleteBranch,
            &method,
            &uri,
            &headers,
            &project_id,
        ) {
            Err(reply) => (reply, None),
            Ok(fault) => (delete(&mut s, &branch_id, &fault), fault),
        }
    };
    finish(reply, &fault)
}

fn delete(s: &mut FakeState, branch_id: &str, fault: &Option<Fault>) -> Reply {
    let Some(branch) = s.branch(branch_id).cloned() else {
        return Reply::Empty(204);
    };
    if branch.default {
        return Reply::error(400, "cannot delete the project's default branch");
    }
    if s.branches
        .iter()
        .any(|b| b.parent_id.as_deref() == Some(branch_id))
    {
        return Reply::error(400, "cannot delete a branch that has child branches");
    }
    s.branches.retain(|b| b.id != branch_id);
    let op = s.start_operation(branch_id, "delete_timeline", ending(fault));
    let violate = *fault == Some(Fault::ViolateSpec);
    Reply::json(
        200,
        json!({
            "branch": branch_json(&s.project_id, &branch, violate),
            "operations": [operation_json(&s.project_id, &s.operations[op], violate)],
        }),
    )
}

async fn restore_branch(
    State(state): State<Shared>,
    Path((project_id, branch_id)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (reply, fault) = {
        let mut s = lock(&state);
        match begin(
            &mut s,
            Endpoint::Restore,
            &method,
            &uri,
            &headers,
            &project_id,
        ) {
            Err(reply) => (reply, None),
            Ok(fault) => (restore(&mut s, &branch_id, &body, &fault), fault),
        }
    };
    finish(reply, &fault)
}

/// Neon's restore with `preserve_under_name`: the branch keeps its id and takes the source's
/// data; its old state becomes a new branch under the given name, which also adopts the
/// branch's children.
fn restore(s: &mut FakeState, branch_id: &str, body: &[u8], fault: &Option<Fault>) -> Reply {
    let request: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return Reply::error(400, &format!("invalid JSON body: {e}")),
    };
    s.restore_bodies.push(request.clone());
    let Some(target) = s.branch(branch_id).cloned() else {
        return Reply::error(404, "branch not found");
    };
    let Some(source_id) = request["source_branch_id"].as_str() else {
        return Reply::error(400, "source_branch_id is required");
    };
    let Some(source) = s.branch(source_id).cloned() else {
        return Reply::error(404, "source branch not found");
    };
    if source.id == target.id {
        return Reply::error(
            400,
            "source_lsn or source_timestamp is required to restore a branch to itself",
        );
    }
    let preserve = request["preserve_under_name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .map(str::to_string);
    let has_children = s
        .branches
        .iter()
        .any(|b| b.parent_id.as_deref() == Some(branch_id));
    if has_children && preserve.is_none() {
        return Reply::error(
            400,
            "preserve_under_name is required when the branch has children",
        );
    }
    if let Some(name) = preserve {
        let kept = s.new_branch_id();
        let created_at = s.tick();
        for child in s.branches.iter_mut() {
            if child.parent_id.as_deref() == Some(branch_id) {
                child.parent_id = Some(kept.clone());
            }
        }
        s.branches.push(FakeBranch {
            id: kept,
            name,
            parent_id: target.parent_id.clone(),
            data: target.data.clone(),
            created_at,
            default: false,
            current_state: "ready".into(),
            pending_state: None,
        });
    }
    if let Some(b) = s.branch_mut(branch_id) {
        b.data = source.data.clone();
        b.current_state = "resetting".into();
        b.pending_state = Some("ready".into());
    }
    let end = ending(fault);
    let first = s.start_operation(branch_id, "create_timeline", end);
    let second = s.start_operation(branch_id, "apply_config", end);
    let violate = *fault == Some(Fault::ViolateSpec);
    let branch = s
        .branch(branch_id)
        .map(|b| branch_json(&s.project_id, b, violate));
    Reply::json(
        200,
        json!({
            "branch": branch,
            "operations": [
                operation_json(&s.project_id, &s.operations[first], violate),
                operation_json(&s.project_id, &s.operations[second], violate),
            ],
        }),
    )
}

async fn list_operations(
    State(state): State<Shared>,
    Path(project_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let (reply, fault) = {
        let mut s = lock(&state);
        match begin(
            &mut s,
            Endpoint::ListOperations,
            &method,
            &uri,
            &headers,
            &project_id,
        ) {
            Err(reply) => (reply, None),
            Ok(fault) => {
                let violate = fault == Some(Fault::ViolateSpec);
                let limit = query
                    .get("limit")
                    .and_then(|l| l.parse::<usize>().ok())
                    .unwrap_or(usize::MAX);
                let ops: Vec<Value> = s
                    .operations
                    .iter()
                    .rev()
                    .take(limit)
                    .map(|op| operation_json(&s.project_id, op, violate))
                    .collect();
                (Reply::json(200, json!({ "operations": ops })), fault)
            }
        }
    };
    finish(reply, &fault)
}

async fn get_operation(
    State(state): State<Shared>,
    Path((project_id, operation_id)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let (reply, fault) = {
        let mut s = lock(&state);
        match begin(
            &mut s,
            Endpoint::GetOperation,
            &method,
            &uri,
            &headers,
            &project_id,
        ) {
            Err(reply) => (reply, None),
            Ok(fault) => {
                let violate = fault == Some(Fault::ViolateSpec);
                let reply = match s.operations.iter().position(|op| op.id == operation_id) {
                    None => Reply::error(404, "operation not found"),
                    Some(index) => {
                        s.advance(index);
                        let op = operation_json(&s.project_id, &s.operations[index], violate);
                        Reply::json(200, json!({ "operation": op }))
                    }
                };
                (reply, fault)
            }
        }
    };
    finish(reply, &fault)
}
