//! The HTTP API under `/v1`: JSON in and out, bearer tokens with a role per environment, and
//! one error shape (`{"error": {"code", "message"}}`) for every refusal. A refused request
//! changes nothing: authentication, authorization and body validation all happen before the
//! engine is asked to do anything.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::json;

use crate::api::auth::{AuthError, Caller, Role, Tokens};
use crate::error::Error;
use crate::promote::engine::{Engine, PromotionRequest};
use crate::store::{Event, Run};

use crate::promote::views::{environment_views, EnvironmentView, RunSummary, RunView};
use crate::store::RunPage;

/// What every handler shares.
pub struct ApiState {
    /// The engine.
    pub engine: Arc<Engine>,
    /// Accepted tokens; replaced on reload.
    pub tokens: RwLock<Arc<Tokens>>,
    /// Where the tokens file is, to reload it.
    pub tokens_path: Option<std::path::PathBuf>,
    /// Requests answered, by status class, for `/metrics`.
    pub responses: BTreeMap<&'static str, AtomicU64>,
    /// Durations of runs and their phases for `/metrics`, told of every run change.
    pub durations: Arc<super::metrics::RunDurations>,
}

impl ApiState {
    /// State for `engine` with `tokens` read from `tokens_path`.
    pub fn new(
        engine: Arc<Engine>,
        tokens: Tokens,
        tokens_path: Option<std::path::PathBuf>,
    ) -> ApiState {
        let durations = Arc::new(super::metrics::RunDurations::default());
        engine.add_listener(durations.clone());
        ApiState {
            durations,
            engine,
            tokens: RwLock::new(Arc::new(tokens)),
            tokens_path,
            responses: ["2xx", "4xx", "5xx"]
                .into_iter()
                .map(|k| (k, AtomicU64::new(0)))
                .collect(),
        }
    }

    fn tokens(&self) -> Arc<Tokens> {
        match self.tokens.read() {
            Ok(t) => t.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub(crate) fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let header = headers
            .get(axum::http::header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or("\u{0}"));
        self.tokens().authenticate(header).map_err(ApiError::from)
    }

    fn count(&self, status: StatusCode) {
        let class = match status.as_u16() {
            200..=299 => "2xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        if let Some(counter) = self.responses.get(class) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A refusal or failure as the API reports it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    /// An error with its status, a stable code and a message for people, any credential in
    /// the message hidden: every error the API and the Slack endpoints answer is made here.
    pub(crate) fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            code,
            message: crate::error::redact_urls(&message.into()),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> ApiError {
        let status = StatusCode::from_u16(err.status()).unwrap_or(StatusCode::UNAUTHORIZED);
        let code = if status == StatusCode::FORBIDDEN {
            "forbidden"
        } else {
            "unauthorized"
        };
        ApiError::new(status, code, err.to_string())
    }
}

impl From<Error> for ApiError {
    fn from(err: Error) -> ApiError {
        let (status, code) = match &err {
            Error::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Error::Conflict(_) | Error::IllegalMove(_) | Error::Guard(_) | Error::Lock(_) => {
                (StatusCode::CONFLICT, "conflict")
            }
            Error::Refused(_) => (StatusCode::FORBIDDEN, "refused"),
            Error::Usage(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Error::Config(_) | Error::Discovery(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid_config")
            }
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError::new(status, code, err.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// Parses a JSON object body; an empty body counts as `{}`. The error says where the body is
/// wrong. Arrays are refused although serde would map them onto the fields in order: the
/// documented body is an object, and a positional body is a mistake waiting to happen.
pub(crate) fn body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    if let Some(offset) = text.iter().position(|b| !b.is_ascii_whitespace()) {
        if text[offset] != b'{' {
            let line = 1 + text[..offset].iter().filter(|b| **b == b'\n').count();
            let column = offset
                - text[..offset]
                    .iter()
                    .rposition(|b| *b == b'\n')
                    .map_or(0, |p| p + 1)
                + 1;
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("request body: expected a JSON object at line {line} column {column}"),
            ));
        }
    }
    serde_json::from_slice(text).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("request body: {e}"),
        )
    })
}

/// The router of the whole API.
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/environments", get(list_environments))
        .route("/v1/environments/{env}", get(get_environment))
        .route("/v1/environments/{env}/rollback", post(rollback))
        .route(
            "/v1/environments/{env}/drift",
            get(last_drift_scan).post(check_drift),
        )
        .route("/v1/releases", get(list_releases).post(scan_releases))
        .route("/v1/runs", get(list_runs))
        .route("/v1/runs/{id}", get(get_run))
        .route("/v1/runs/{id}/approve", post(approve))
        .route("/v1/runs/{id}/reject", post(reject))
        .route("/v1/runs/{id}/cancel", post(cancel))
        .route("/v1/runs/{id}/resume", post(resume))
        .route("/v1/promotions", post(promote))
        .route("/v1/events", get(list_events))
        .route("/v1/reload", post(reload))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint; GET /v1/openapi.json lists them",
            )
        })
        .method_not_allowed_fallback(|method: axum::http::Method| async move {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{method} is not allowed here; GET /v1/openapi.json lists the methods of each endpoint"),
            )
        })
        .layer(axum::middleware::from_fn(json_errors))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            count_responses,
        ))
        .with_state(state)
}

/// The largest request body the API reads (axum's own default, named so refusals can say it).
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// The stable code of an error status that reaches the client without an [`ApiError`]
/// (a rejection of axum's own extractors).
fn code_of(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::CONFLICT => "conflict",
        StatusCode::LENGTH_REQUIRED => "length_required",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "unprocessable_entity",
        s if s.is_server_error() => "internal",
        _ => "error",
    }
}

/// Puts every error answer in the API's shape (`{"error": {"code", "message"}}`): axum's own
/// rejections (a body over [`MAX_BODY_BYTES`], say) come as plain text otherwise.
async fn json_errors(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
        format!("the request body is larger than {MAX_BODY_BYTES} bytes")
    } else {
        let text = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .map(|b| String::from_utf8_lossy(&b).trim().to_string())
            .unwrap_or_default();
        if text.is_empty() {
            status
                .canonical_reason()
                .unwrap_or("the request failed")
                .to_string()
        } else {
            text
        }
    };
    ApiError::new(status, code_of(status), message).into_response()
}

async fn count_responses(
    State(state): State<Arc<ApiState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let response = next.run(request).await;
    state.count(response.status());
    response
}

async fn health(State(state): State<Arc<ApiState>>) -> ApiResult<serde_json::Value> {
    let engine = &state.engine;
    let release = engine.store().head_release().map_err(ApiError::from)?;
    Ok(Json(json!({
        "status": if engine.is_stopping() { "stopping" } else { "ok" },
        "version": env!("CARGO_PKG_VERSION"),
        "release": release,
        "store_format": crate::store::FORMAT_VERSION,
    })))
}

async fn metrics(State(state): State<Arc<ApiState>>) -> Result<Response, ApiError> {
    let text = super::metrics::render(&state).map_err(ApiError::from)?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            super::metrics::CONTENT_TYPE,
        )],
        text,
    )
        .into_response())
}

async fn openapi() -> Json<serde_json::Value> {
    Json(super::openapi::document())
}

fn visible(caller: &Caller, env: &str) -> bool {
    caller.role_for(env).is_some()
}

async fn list_environments(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> ApiResult<Vec<EnvironmentView>> {
    let caller = state.authenticate(&headers)?;
    let views = environment_views(&state.engine)?;
    Ok(Json(
        views
            .into_iter()
            .filter(|v| visible(&caller, &v.name))
            .collect(),
    ))
}

async fn get_environment(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(env): Path<String>,
) -> ApiResult<EnvironmentView> {
    let caller = state.authenticate(&headers)?;
    state.engine.loaded().environment(&env)?;
    caller.require(&env, Role::Viewer)?;
    environment_views(&state.engine)?
        .into_iter()
        .find(|v| v.name == env)
        .map(Json)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("unknown environment `{env}`"),
            )
        })
}

/// The environment's last periodic drift scan, if it has a `drift_scan` and one ran.
async fn last_drift_scan(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(env): Path<String>,
) -> ApiResult<serde_json::Value> {
    let caller = state.authenticate(&headers)?;
    state.engine.loaded().environment(&env)?;
    caller.require(&env, Role::Viewer)?;
    let last = state
        .engine
        .store()
        .mark(&crate::drift::scan::last_key(&env))?
        .and_then(|v| serde_json::from_value::<crate::drift::scan::ScanRecord>(v).ok());
    Ok(Json(json!({ "environment": env, "last_scan": last })))
}

/// Checks the environment's drift now (with the daemon's cache of expected schemas) and
/// returns the report with the diff in words. Reads only; nothing is recorded.
async fn check_drift(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(env): Path<String>,
) -> ApiResult<serde_json::Value> {
    let caller = state.authenticate(&headers)?;
    state.engine.loaded().environment(&env)?;
    caller.require(&env, Role::Viewer)?;
    let report = state.engine.check_drift(&env).await?;
    let mut document = serde_json::to_value(&report).unwrap_or_default();
    document["summary"] = json!(report.summary());
    document["diff"] = json!(report.human());
    Ok(Json(document))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReasonBody {
    reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommentBody {
    comment: Option<String>,
}

fn required_reason(reason: Option<String>, what: &str) -> Result<String, ApiError> {
    reason
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("request body: field `reason` is required to {what}"),
            )
        })
}

async fn rollback(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(env): Path<String>,
    bytes: Bytes,
) -> Result<(StatusCode, Json<RunView>), ApiError> {
    let caller = state.authenticate(&headers)?;
    state.engine.loaded().environment(&env)?;
    caller.require(&env, Role::Deployer)?;
    let request: ReasonBody = body(&bytes)?;
    let reason = required_reason(request.reason, "roll back")?;
    let run = state
        .engine
        .request_rollback(&env, &caller.name, &reason, None)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(RunView::of(run, None))))
}

fn any_role(caller: &Caller, state: &ApiState) -> Result<(), ApiError> {
    let names = state.engine.loaded().environment_names();
    if names.iter().any(|n| visible(caller, n)) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("`{}` has no role on any environment", caller.name),
        ))
    }
}

async fn list_releases(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> ApiResult<serde_json::Value> {
    let caller = state.authenticate(&headers)?;
    any_role(&caller, &state)?;
    let store = state.engine.store();
    Ok(Json(json!({
        "head": store.head_release()?,
        "releases": store.releases()?,
    })))
}

async fn scan_releases(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let caller = state.authenticate(&headers)?;
    let names = state.engine.loaded().environment_names();
    if !names
        .iter()
        .any(|n| caller.role_for(n).is_some_and(|r| r >= Role::Deployer))
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("`{}` is not a deployer on any environment", caller.name),
        ));
    }
    let (release, fresh) = state.engine.scan_releases(&caller.name, "api").await?;
    state.engine.wake();
    Ok((
        if fresh {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        Json(json!({"release": release, "new": fresh})),
    ))
}

/// A query string that does not parse, reported after authentication in the API's shape.
fn query_error(rejection: QueryRejection) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "bad_request",
        format!("query string: {}", rejection.body_text()),
    )
}

/// The query of `GET /v1/events`: one environment or all the caller may view, and how many.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    environment: Option<String>,
    limit: Option<usize>,
}

/// The query of `GET /v1/runs`: like [`ListQuery`], and `before`, the id of the last run of
/// the previous page.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunListQuery {
    environment: Option<String>,
    limit: Option<usize>,
    before: Option<String>,
}

/// Runs on one page of `GET /v1/runs` when the query says nothing.
pub const DEFAULT_RUN_PAGE: usize = 50;
/// The most runs one page of `GET /v1/runs` carries; a larger `limit` is cut to this.
pub const MAX_RUN_PAGE: usize = 500;

/// Authenticates a listing request, then checks its query and the caller's view of the
/// environment it names.
fn listing<Q>(
    state: &ApiState,
    headers: &HeaderMap,
    query: Result<Query<Q>, QueryRejection>,
    environment_of: fn(&Q) -> Option<&String>,
) -> Result<(Caller, Q), ApiError> {
    let caller = state.authenticate(headers)?;
    let Query(query) = query.map_err(query_error)?;
    if let Some(env) = environment_of(&query) {
        state.engine.loaded().environment(env)?;
        caller.require(env, Role::Viewer)?;
    }
    Ok((caller, query))
}

/// One page of run summaries, newest first (no transitions, measurements or events: those
/// are at `/v1/runs/{id}`). When more runs follow, a `Link: <…>; rel="next"` header gives the
/// next page's address (`before` = the last id of this page).
async fn list_runs(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    query: Result<Query<RunListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let (caller, query) = listing(&state, &headers, query, |q: &RunListQuery| {
        q.environment.as_ref()
    })?;
    let limit = query.limit.unwrap_or(DEFAULT_RUN_PAGE).min(MAX_RUN_PAGE);
    let wanted = |summary: &RunSummary| {
        visible(&caller, &summary.environment)
            && query
                .environment
                .as_ref()
                .is_none_or(|e| &summary.environment == e)
    };
    let mut runs = state.engine.store().run_summaries(&RunPage {
        before: query.before.as_deref(),
        limit: limit.saturating_add(1),
        wanted: &wanted,
    })?;
    let more = runs.len() > limit;
    runs.truncate(limit);
    let mut response = Json(&runs).into_response();
    if let (true, Some(last)) = (more, runs.last()) {
        let mut next = url::form_urlencoded::Serializer::new(String::new());
        next.append_pair("limit", &limit.to_string());
        next.append_pair("before", &last.id);
        if let Some(env) = &query.environment {
            next.append_pair("environment", env);
        }
        if let Ok(value) = axum::http::HeaderValue::from_str(&format!(
            "</v1/runs?{}>; rel=\"next\"",
            next.finish()
        )) {
            response
                .headers_mut()
                .insert(axum::http::header::LINK, value);
        }
    }
    Ok(response)
}

fn visible_run(state: &ApiState, caller: &Caller, id: &str) -> Result<Run, ApiError> {
    let run = state.engine.run(id)?;
    caller.require(&run.environment, Role::Viewer)?;
    Ok(run)
}

async fn get_run(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<RunView> {
    let caller = state.authenticate(&headers)?;
    let run = visible_run(&state, &caller, &id)?;
    let events = state.engine.store().run_events(&id)?;
    Ok(Json(RunView::of(run, Some(events))))
}

/// Authenticates a decision on run `id`, checks the caller's role on its environment, then
/// parses the body: in this order, so a refused caller learns nothing about the body.
fn decision<B: DeserializeOwned>(
    state: &ApiState,
    headers: &HeaderMap,
    id: &str,
    needed: Role,
    bytes: &Bytes,
) -> Result<(Caller, B), ApiError> {
    let caller = state.authenticate(headers)?;
    let run = visible_run(state, &caller, id)?;
    caller.require(&run.environment, needed)?;
    Ok((caller, body(bytes)?))
}

async fn approve(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: Bytes,
) -> ApiResult<RunView> {
    let (caller, request): (_, CommentBody) =
        decision(&state, &headers, &id, Role::Approver, &bytes)?;
    let run = state
        .engine
        .approve(&id, &caller.name, request.comment)
        .await?;
    Ok(Json(RunView::of(run, None)))
}

async fn reject(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: Bytes,
) -> ApiResult<RunView> {
    let (caller, request): (_, ReasonBody) =
        decision(&state, &headers, &id, Role::Approver, &bytes)?;
    let reason = required_reason(request.reason, "reject a run")?;
    let run = state.engine.reject(&id, &caller.name, &reason).await?;
    Ok(Json(RunView::of(run, None)))
}

async fn cancel(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: Bytes,
) -> ApiResult<RunView> {
    let (caller, request): (_, ReasonBody) =
        decision(&state, &headers, &id, Role::Deployer, &bytes)?;
    let reason = request.reason.unwrap_or_else(|| "no reason given".into());
    let run = state.engine.cancel(&id, &caller.name, &reason).await?;
    Ok(Json(RunView::of(run, None)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmptyBody {}

async fn resume(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: Bytes,
) -> ApiResult<RunView> {
    let (caller, _): (_, EmptyBody) = decision(&state, &headers, &id, Role::Deployer, &bytes)?;
    let run = state.engine.resume(&id, &caller.name).await?;
    Ok(Json(RunView::of(run, None)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PromotionBody {
    to: String,
    release: Option<String>,
    #[serde(default)]
    ladder: bool,
    reason: Option<String>,
}

async fn promote(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<(StatusCode, Json<Vec<RunView>>), ApiError> {
    let caller = state.authenticate(&headers)?;
    let request: PromotionBody = body(&bytes)?;
    let loaded = state.engine.loaded();
    loaded.environment(&request.to)?;
    let chain = if request.ladder {
        loaded.policies.chain_to(&request.to)
    } else {
        vec![request.to.clone()]
    };
    for env in &chain {
        caller.require(env, Role::Deployer)?;
    }
    let runs = state
        .engine
        .request_promotion(&PromotionRequest {
            to: request.to,
            release: request.release,
            ladder: request.ladder,
            actor: caller.name.clone(),
            reason: request.reason,
            origin: None,
        })
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(runs.into_iter().map(|r| RunView::of(r, None)).collect()),
    ))
}

async fn list_events(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Vec<Event>> {
    let (caller, query) = listing(&state, &headers, query, |q: &ListQuery| {
        q.environment.as_ref()
    })?;
    let mut events: Vec<Event> = state
        .engine
        .store()
        .events(query.environment.as_deref())?
        .into_iter()
        .filter(|e| e.environment.is_empty() || visible(&caller, &e.environment))
        .collect();
    let limit = query.limit.unwrap_or(200);
    if events.len() > limit {
        events.drain(..events.len() - limit);
    }
    Ok(Json(events))
}

#[derive(Serialize)]
struct Reloaded {
    release: crate::store::Release,
    environments: Vec<String>,
    tokens: usize,
}

async fn reload(State(state): State<Arc<ApiState>>, headers: HeaderMap) -> ApiResult<Reloaded> {
    let caller = state.authenticate(&headers)?;
    let names = state.engine.loaded().environment_names();
    caller.require_everywhere(&names, Role::Admin)?;
    let tokens = match &state.tokens_path {
        Some(path) => {
            let project = crate::config::Project::load(state.engine.root())?;
            Some(Tokens::load(path, &project.environment_names()?)?)
        }
        None => None,
    };
    let release = state.engine.reload(&caller.name).await?;
    let count = match tokens {
        Some(tokens) => {
            let count = tokens.len();
            match state.tokens.write() {
                Ok(mut guard) => *guard = Arc::new(tokens),
                Err(p) => *p.into_inner() = Arc::new(tokens),
            }
            count
        }
        None => state.tokens().len(),
    };
    Ok(Json(Reloaded {
        release,
        environments: state.engine.loaded().environment_names(),
        tokens: count,
    }))
}
