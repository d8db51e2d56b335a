//! The API's store maintenance: a backup of the whole store, so the CLI's `store backup`
//! works while the daemon holds the store (sled allows one process at a time).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::api::auth::Role;
use crate::api::server::{ApiError, ApiState};

/// The routes of this module, for the daemon to merge beside the API's router (which this
/// module builds on, so the router does not refer back here).
pub fn routes(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/v1/store/backup", get(backup))
        .with_state(state)
}

/// Every record of the store as JSON lines (the format of `sluice store backup`), as of one
/// moment; admin on every environment, since it holds the whole audit log.
async fn backup(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = state.authenticate(&headers)?;
    let names = state.engine.loaded().environment_names();
    caller.require_everywhere(&names, Role::Admin)?;
    let mut out = Vec::new();
    state.engine.store().backup(&mut out)?;
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], out).into_response())
}
