//! The OpenAPI 3.0 document of the API, served at `/v1/openapi.json`, built from one table of
//! endpoints so that a test can check it against the router.

use serde_json::{json, Map, Value};

/// One endpoint of the API.
pub struct Endpoint {
    /// HTTP method, lowercase.
    pub method: &'static str,
    /// Path as in the router, e.g. `/v1/runs/{id}`.
    pub path: &'static str,
    /// One line for people.
    pub summary: &'static str,
    /// The role needed (`none` for public endpoints).
    pub role: &'static str,
    /// Request body schema name, if any.
    pub body: Option<&'static str>,
    /// Success status and response schema name.
    pub ok: (&'static str, &'static str),
}

/// Every endpoint the router serves.
pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint { method: "get", path: "/v1/health", summary: "Liveness: the daemon answers and says its version and head release.", role: "none", body: None, ok: ("200", "Health") },
    Endpoint { method: "get", path: "/metrics", summary: "Metrics in the OpenMetrics text format (Prometheus): runs by state, sluice_environment_info, health, pending approvals, drifted environments, HTTP responses, and duration histograms (_seconds) of runs, snapshots, applies, checks and gate waits.", role: "none", body: None, ok: ("200", "Text") },
    Endpoint { method: "get", path: "/v1/openapi.json", summary: "This document.", role: "none", body: None, ok: ("200", "Object") },
    Endpoint { method: "get", path: "/v1/environments", summary: "Environments the caller may view, in ladder order, with their release and runs.", role: "viewer", body: None, ok: ("200", "EnvironmentList") },
    Endpoint { method: "get", path: "/v1/environments/{env}", summary: "One environment.", role: "viewer", body: None, ok: ("200", "Environment") },
    Endpoint { method: "post", path: "/v1/environments/{env}/rollback", summary: "Put the environment back where it was before its last promotion (down scripts or snapshot, per policy).", role: "deployer", body: Some("ReasonRequired"), ok: ("202", "Run") },
    Endpoint { method: "get", path: "/v1/environments/{env}/drift", summary: "The environment's last periodic drift scan (policy drift_scan), or null.", role: "viewer", body: None, ok: ("200", "Object") },
    Endpoint { method: "post", path: "/v1/environments/{env}/drift", summary: "Compare the environment with the expected schema of its applied migrations now: the report, its summary and the diff in words (nothing is recorded).", role: "viewer", body: None, ok: ("200", "Object") },
    Endpoint { method: "get", path: "/v1/releases", summary: "Recorded releases and the head.", role: "viewer", body: None, ok: ("200", "Releases") },
    Endpoint { method: "post", path: "/v1/releases", summary: "Read the migrations directory now and record a new head.", role: "deployer", body: None, ok: ("200", "ReleaseScan") },
    Endpoint { method: "get", path: "/v1/runs", summary: "One page of run summaries, newest first, without transitions, measurements or events (those are at /v1/runs/{id}). Paginated by cursor: query limit (default 50, at most 500) and before (the id of the last run of the previous page); a Link header with rel=\"next\" gives the next page while there is one.", role: "viewer", body: None, ok: ("200", "RunSummaryList") },
    Endpoint { method: "get", path: "/v1/runs/{id}", summary: "One run with its transitions, measurements and events.", role: "viewer", body: None, ok: ("200", "Run") },
    Endpoint { method: "post", path: "/v1/runs/{id}/approve", summary: "Approve a waiting run (not your own).", role: "approver", body: Some("Comment"), ok: ("200", "Run") },
    Endpoint { method: "post", path: "/v1/runs/{id}/reject", summary: "Reject a waiting run.", role: "approver", body: Some("ReasonRequired"), ok: ("200", "Run") },
    Endpoint { method: "post", path: "/v1/runs/{id}/cancel", summary: "Cancel a waiting or halted run.", role: "deployer", body: Some("Reason"), ok: ("200", "Run") },
    Endpoint { method: "post", path: "/v1/runs/{id}/resume", summary: "Continue a halted run from the step it stopped at.", role: "deployer", body: None, ok: ("200", "Run") },
    Endpoint { method: "post", path: "/v1/promotions", summary: "Request a promotion of a release to an environment (with ladder: also upstream).", role: "deployer", body: Some("Promotion"), ok: ("202", "RunList") },
    Endpoint { method: "get", path: "/v1/events", summary: "The audit log, oldest first (query: environment, limit).", role: "viewer", body: None, ok: ("200", "EventList") },
    Endpoint { method: "get", path: "/v1/environments/{env}/snapshots", summary: "The environment's snapshots and preserved copies, oldest first, with retention's verdict for each and, for preserved copies, when, by whom and why they were kept.", role: "viewer", body: None, ok: ("200", "SnapshotList") },
    Endpoint { method: "post", path: "/v1/environments/{env}/snapshots/prune", summary: "Delete what the environment's retention allows (never the last success's snapshot nor a copy of a run not finished); with dry_run, only say what.", role: "deployer", body: Some("Prune"), ok: ("200", "Pruned") },
    Endpoint { method: "get", path: "/v1/store/backup", summary: "Every record of the store as JSON lines, a header with format, counts and checksum first (the format of `sluice store backup`).", role: "admin on every environment", body: None, ok: ("200", "JsonLines") },
    Endpoint { method: "post", path: "/v1/reload", summary: "Re-read environments, policies, tokens and migrations; a bad file changes nothing.", role: "admin on every environment", body: None, ok: ("200", "Object") },
    Endpoint { method: "post", path: "/slack/commands", summary: "Slack slash command (form-encoded, as Slack sends it); answered within 3 s.", role: "a valid X-Slack-Signature; then the Slack user's roles from [slack.users]", body: None, ok: ("200", "Object") },
    Endpoint { method: "post", path: "/slack/interactions", summary: "Slack button clicks (form-encoded `payload` of type block_actions).", role: "a valid X-Slack-Signature; then the Slack user's roles from [slack.users]", body: None, ok: ("200", "Object") },
    Endpoint { method: "post", path: "/hooks/release", summary: "CI announces a release: read the migrations directory and request a promotion (under every gate). Body {to?, release?, reason?, delivery?}.", role: "a valid X-Sluice-Signature (sha256=HMAC-SHA256 of the body with the [hooks] secret)", body: None, ok: ("202", "Object") },
];

fn reference(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn schemas() -> Value {
    let string = json!({"type": "string"});
    let nullable_string = json!({"type": "string", "nullable": true});
    let time = json!({"type": "string", "format": "date-time"});
    let mut schemas = json!({
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["code", "message"],
            "properties": {"code": string, "message": string}}}},
        "Object": {"type": "object"},
        "Text": {"type": "string"},
        "Health": {"type": "object", "properties": {
            "status": {"type": "string", "enum": ["ok", "stopping"]}, "version": string,
            "release": nullable_string, "store_format": {"type": "integer"}}},
        "RunSummary": {"type": "object", "required": ["id", "kind", "environment", "release", "state"], "properties": {
            "id": string, "kind": {"type": "string", "enum": ["promotion", "rollback"]},
            "environment": string, "release": string, "head": nullable_string,
            "state": reference("RunState"), "describe": string, "requested_by": string,
            "reason": nullable_string, "created_at": time, "updated_at": time,
            "error": nullable_string,
            "health": {"type": "string", "nullable": true, "enum": ["successful", "failed", "error", "inconclusive", null]},
            "version": {"type": "integer", "description": "the run's number of transitions"},
            "rolls_back": nullable_string, "snapshot": nullable_string,
            "origin": {"type": "object"}}},
        "RunSummaryList": {"type": "array", "items": reference("RunSummary")},
        "Environment": {"type": "object", "required": ["name"], "properties": {
            "name": string, "release": nullable_string, "head": nullable_string,
            "since": {"type": "string", "format": "date-time", "nullable": true},
            "healthy": {"type": "boolean"}, "run_id": nullable_string,
            "active_run": {"allOf": [reference("RunSummary")], "nullable": true},
            "waiting_runs": {"type": "array", "items": reference("RunSummary")},
            "from": nullable_string, "auto_promote": {"type": "boolean"},
            "drift": {"type": "object", "nullable": true, "properties": {
                "at": time, "differences": {"type": "integer"}, "fingerprint": string,
                "error": nullable_string}}}},
        "EnvironmentList": {"type": "array", "items": reference("Environment")},
        "RunState": {"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string", "enum": ["queued", "gated", "locked", "snapshotted", "applying",
                "verifying", "succeeded", "rolling_back", "rolled_back", "halted", "cancelled", "rejected"]},
            "waiting_for": {"type": "array", "items": string},
            "gates": {"type": "array", "items": {"type": "object", "required": ["kind", "text"], "properties": {
                "kind": {"type": "string", "enum": ["upstream", "soak", "lint", "approval", "window", "concurrency"]},
                "text": string}}},
            "index": {"type": "integer"}, "total": {"type": "integer"}, "migration": string,
            "method": string, "reason": string}},
        "Event": {"type": "object", "properties": {
            "at": time, "actor": string, "action": string, "environment": string,
            "reason": nullable_string, "detail": {"type": "object"}, "run_id": nullable_string}},
        "EventList": {"type": "array", "items": reference("Event")},
        "Run": {"type": "object", "required": ["id", "kind", "environment", "release", "state"], "properties": {
            "id": string, "kind": {"type": "string", "enum": ["promotion", "rollback"]},
            "environment": string, "release": string, "head": nullable_string,
            "previous_release": nullable_string, "requested_by": string, "reason": nullable_string,
            "created_at": time, "updated_at": time, "state": reference("RunState"),
            "transitions": {"type": "array", "items": {"type": "object"}},
            "plan": {"type": "array", "items": string}, "applied": {"type": "array", "items": string},
            "snapshot": nullable_string,
            "approvals": {"type": "array", "items": {"type": "object", "properties": {
                "by": string, "at": time, "comment": nullable_string}}},
            "measurements": {"type": "array", "items": {"type": "object"}},
            "health": {"type": "string", "nullable": true, "enum": ["successful", "failed", "error", "inconclusive", null]},
            "error": nullable_string, "rolls_back": nullable_string,
            "events": {"type": "array", "items": reference("Event")}}},
        "RunList": {"type": "array", "items": reference("Run")},
        "Release": {"type": "object", "properties": {
            "hash": string, "head": nullable_string, "recorded_at": time, "source": string,
            "migrations": {"type": "array", "items": {"type": "object", "properties": {
                "name": string, "checksum": string}}}}},
        "Releases": {"type": "object", "properties": {
            "head": nullable_string, "releases": {"type": "array", "items": reference("Release")}}},
        "ReleaseScan": {"type": "object", "properties": {"release": reference("Release"), "new": {"type": "boolean"}}},
        "Promotion": {"type": "object", "required": ["to"], "additionalProperties": false, "properties": {
            "to": string, "release": nullable_string, "ladder": {"type": "boolean", "default": false},
            "reason": nullable_string}},
        "Reason": {"type": "object", "additionalProperties": false, "properties": {"reason": nullable_string}},
        "ReasonRequired": {"type": "object", "required": ["reason"], "additionalProperties": false,
            "properties": {"reason": string}},
        "Comment": {"type": "object", "additionalProperties": false, "properties": {"comment": nullable_string}},
    });
    if let (Some(all), Value::Object(more)) = (schemas.as_object_mut(), maintenance_schemas()) {
        all.extend(more);
    }
    schemas
}

/// The schemas of the snapshot and store endpoints (one `json!` for all would exceed the
/// macro's recursion limit).
fn maintenance_schemas() -> Value {
    let string = json!({"type": "string"});
    let nullable_string = json!({"type": "string", "nullable": true});
    json!({
        "JsonLines": {"type": "string", "description": "one JSON object per line"},
        "Snapshot": {"type": "object", "required": ["name", "kind", "verdict"], "properties": {
            "name": string, "kind": {"type": "string", "enum": ["snapshot", "preserved"]},
            "run": nullable_string, "created_at": {"type": "string", "format": "date-time", "nullable": true},
            "status": string, "size_bytes": {"type": "integer", "nullable": true},
            "record": {"type": "object", "nullable": true},
            "preserved_at": {"type": "string", "format": "date-time", "nullable": true},
            "preserved_by": nullable_string, "preserved_run": nullable_string,
            "preserved_reason": nullable_string,
            "verdict": {"type": "string", "enum": ["keep_last_success", "keep_unfinished_run",
                "keep_newest_preserved", "keep_newest", "keep_young", "keep_no_rule", "prune"]}}},
        "SnapshotList": {"type": "object", "properties": {
            "environment": string, "provider": string,
            "snapshots": {"type": "array", "items": reference("Snapshot")}}},
        "Prune": {"type": "object", "additionalProperties": false, "properties": {
            "dry_run": {"type": "boolean", "default": false}}},
        "Pruned": {"type": "object", "properties": {
            "environment": string, "dry_run": {"type": "boolean"},
            "deleted": {"type": "array", "items": string}}},
    })
}

/// The query of `GET /v1/runs` and the `Link` header of its pages.
fn document_run_list_paging(operation: &mut Value) {
    let query = |name: &str, schema: Value, description: &str| json!({"name": name, "in": "query", "required": false, "schema": schema, "description": description});
    operation["parameters"] = json!([
        query("environment", json!({"type": "string"}), "only runs of this environment"),
        query(
            "limit",
            json!({"type": "integer", "minimum": 0, "default": 50, "maximum": 500}),
            "at most this many runs (a larger value is cut to 500)",
        ),
        query(
            "before",
            json!({"type": "string"}),
            "cursor: the id of the last run of the previous page; the page starts with the next older run",
        ),
    ]);
    operation["responses"]["200"]["headers"] = json!({"Link": {
        "description": "`</v1/runs?limit=N&before=ID…>; rel=\"next\"` while more runs follow",
        "schema": {"type": "string"}}});
}

/// The document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for endpoint in ENDPOINTS {
        let mut operation = json!({
            "summary": endpoint.summary,
            "description": format!("Role needed: {}.", endpoint.role),
            "responses": {
                endpoint.ok.0: {"description": "success", "content": {
                    match endpoint.ok.1 { "Text" => "application/openmetrics-text", "JsonLines" => "application/x-ndjson", _ => "application/json" }:
                    {"schema": reference(endpoint.ok.1)}}},
                "default": {"description": "a refusal or failure, saying why",
                    "content": {"application/json": {"schema": reference("Error")}}}
            }
        });
        if endpoint.role == "none" || endpoint.role.contains("Signature") {
            operation["security"] = json!([]);
        }
        let parameters: Vec<Value> = endpoint
            .path
            .split('/')
            .filter_map(|part| part.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        if !parameters.is_empty() {
            operation["parameters"] = Value::Array(parameters);
        }
        if (endpoint.method, endpoint.path) == ("get", "/v1/runs") {
            document_run_list_paging(&mut operation);
        }
        if let Some(body) = endpoint.body {
            operation["requestBody"] = json!({
                "required": body == "ReasonRequired" || body == "Promotion",
                "content": {"application/json": {"schema": reference(body)}}
            });
        }
        let item = paths
            .entry(endpoint.path.to_string())
            .or_insert_with(|| json!({}));
        item[endpoint.method] = operation;
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "sluice",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Promotes database schema migrations through a ladder of environments. \
                Every call but health, metrics and this document needs `Authorization: Bearer <token>`; \
                each token has a role per environment (viewer < deployer < approver < admin)."
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": Value::Object(paths),
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas()
        }
    })
}
