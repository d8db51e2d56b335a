//! The API's snapshot and store maintenance: listing an environment's snapshots and preserved
//! copies with what retention says, pruning by retention, and a backup of the whole store.
//! These exist so the CLI's `snapshots`, `snapshots prune` and `store backup` work while the
//! daemon holds the store (sled allows one process at a time).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::api::auth::Role;
use crate::api::server::{body, ApiError, ApiState};
use crate::promote::{self, Pruner, Request, SnapshotListing};
use crate::snapshot;

/// The routes of this module, for the daemon to merge beside the API's router (which this
/// module builds on, so the router does not refer back here).
pub fn routes(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/v1/environments/{env}/snapshots", get(list_snapshots))
        .route("/v1/environments/{env}/snapshots/prune", post(prune))
        .route("/v1/store/backup", get(backup))
        .with_state(state)
}

/// The environment's snapshots and preserved copies, oldest first, with retention's verdict
/// for each and, for preserved copies, when, by whom and why they were kept.
async fn list_snapshots(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(env): Path<String>,
) -> Result<Json<SnapshotListing>, ApiError> {
    let caller = state.authenticate(&headers)?;
    let loaded = state.engine.loaded();
    let environment = loaded.environment(&env)?;
    caller.require(&env, Role::Viewer)?;
    let provider = snapshot::provider_for(environment).await?;
    let listed = promote::list_snapshots(
        environment,
        provider.as_ref(),
        state.engine.store(),
        Pruner::Person,
    )
    .await?;
    Ok(Json(SnapshotListing {
        environment: env,
        provider: provider.kind().to_string(),
        snapshots: listed,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PruneBody {
    #[serde(default)]
    dry_run: bool,
}

/// Deletes what the environment's retention allows, as the caller; with `dry_run`, only says.
async fn prune(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(env): Path<String>,
    bytes: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let caller = state.authenticate(&headers)?;
    let loaded = state.engine.loaded();
    let environment = loaded.environment(&env)?;
    caller.require(&env, Role::Deployer)?;
    let request: PruneBody = body(&bytes)?;
    let provider = snapshot::provider_for(environment).await?;
    let deleted = promote::prune(
        environment,
        provider.as_ref(),
        state.engine.store(),
        &Request {
            actor: caller.name.clone(),
            reason: Some("retention".into()),
        },
        request.dry_run,
        Pruner::Person,
    )
    .await?;
    Ok(Json(json!({
        "environment": env,
        "dry_run": request.dry_run,
        "deleted": deleted,
    })))
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
