//! Health checks against real servers: HTTP checks against a local axum server, SQL and schema
//! checks against the PostgreSQL of the test harness and against SQLite files.
//!
//! Checks are built from TOML through `parse_checks`, exactly as an environment file would
//! give them, with intervals of a few milliseconds.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use common::*;
use serde::Deserialize;
use serde_json::json;
use sluice::health::{
    check_engine, parse_checks, run_all, run_check, CheckKind, CheckResult, HealthCheck,
    HealthOutcome, Measurement, MeasurementOutcome, MeasurementSink, RawHealthCheck, Schedule,
    SqlCheck, SqlValue,
};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, Executor};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct Doc {
    health: Vec<RawHealthCheck>,
}

/// Parses `[[health]]` tables as an environment file would hold them.
fn checks(text: &str) -> Vec<HealthCheck> {
    let doc: Doc = toml::from_str(text).expect("the test's TOML parses");
    parse_checks(doc.health, Path::new("environments/test.toml"), text)
        .unwrap_or_else(|e| panic!("the test's checks are valid: {e}"))
}

fn one(text: &str) -> HealthCheck {
    let mut all = checks(text);
    assert_eq!(all.len(), 1);
    all.remove(0)
}

/// Records what the sink receives, to compare with the result.
#[derive(Default)]
struct Recorder(Mutex<Vec<(String, Measurement)>>);

impl MeasurementSink for Recorder {
    fn record(&self, check: &str, measurement: &Measurement) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((check.to_string(), measurement.clone()));
    }
}

impl Recorder {
    fn all(&self) -> Vec<(String, Measurement)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Runs one check, checking that the sink saw exactly the measurements of the result.
async fn run(check: &HealthCheck, url: &str) -> CheckResult {
    let sink = Recorder::default();
    let result = run_check(check, url, &sink).await;
    let seen: Vec<Measurement> = sink.all().into_iter().map(|(_, m)| m).collect();
    assert_eq!(seen, result.measurements, "the sink got every measurement");
    assert_eq!(result.name, check.name);
    result
}

fn outcomes(result: &CheckResult) -> Vec<MeasurementOutcome> {
    result.measurements.iter().map(|m| m.outcome).collect()
}

use MeasurementOutcome::{
    Error as ErrorM, Failure as FailureM, Inconclusive as InconclusiveM, Success as SuccessM,
};

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

/// State of the test server.
#[derive(Default)]
struct AppState {
    /// Requests to `/flaky` so far.
    flaky_hits: AtomicUsize,
    /// How many first `/flaky` requests answer 503.
    fail_first: usize,
    /// The token `/auth` accepts.
    token: String,
    /// Authorization headers received.
    auth_seen: Mutex<Vec<String>>,
}

async fn healthz() -> impl IntoResponse {
    Json(json!({"db": {"ok": true}, "status": "ready", "version": 3}))
}

async fn flaky(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    let n = s.flaky_hits.fetch_add(1, Ordering::SeqCst);
    if n < s.fail_first {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"db": {"ok": false}})),
        )
    } else {
        (StatusCode::OK, Json(json!({"db": {"ok": true}})))
    }
}

fn auth_header(s: &AppState, headers: &HeaderMap) -> String {
    let got = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    s.auth_seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(got.clone());
    got
}

async fn auth(State(s): State<Arc<AppState>>, headers: HeaderMap) -> impl IntoResponse {
    let got = auth_header(&s, &headers);
    if got == s.token {
        (StatusCode::OK, "ready".to_string())
    } else {
        (StatusCode::UNAUTHORIZED, format!("refused {got}"))
    }
}

/// Fails and echoes the Authorization header back, as careless servers do.
async fn echo(State(s): State<Arc<AppState>>, headers: HeaderMap) -> impl IntoResponse {
    let got = auth_header(&s, &headers);
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({"error": format!("bad credentials: {got}"), "ok": got})),
    )
}

async fn slow() -> impl IntoResponse {
    tokio::time::sleep(Duration::from_secs(3)).await;
    "late"
}

async fn status(axum::extract::Path(code): axum::extract::Path<u16>) -> impl IntoResponse {
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        "status page",
    )
}

/// Starts the test server on 127.0.0.1 and returns its base URL and state.
async fn server(fail_first: usize, token: &str) -> (String, Arc<AppState>) {
    let state = Arc::new(AppState {
        fail_first,
        token: token.to_string(),
        ..AppState::default()
    });
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/flaky", get(flaky))
        .route("/auth", get(auth))
        .route("/echo", get(echo))
        .route("/slow", get(slow))
        .route("/status/{code}", get(status))
        .route("/submit", post(|| async { "posted, ready" }))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), state)
}

fn http(base: &str, path: &str, extra: &str) -> HealthCheck {
    one(&format!(
        "[[health]]\nname = \"api\"\nkind = \"http\"\nurl = \"{base}{path}\"\ninterval = \"10ms\"\n{extra}\n"
    ))
}

#[tokio::test]
async fn http_a_matching_json_pointer_is_successful() {
    let (base, _) = server(0, "").await;
    let check = http(
        &base,
        "/healthz",
        "json_pointer = \"/db/ok\"\nexpect_json = true\ncount = 2",
    );
    let r = run(&check, "").await;
    assert_eq!(r.outcome, HealthOutcome::Successful, "{r:#?}");
    assert_eq!(outcomes(&r), [SuccessM, SuccessM]);
    assert_eq!(
        r.measurements[0].value.as_deref(),
        Some("status 200, /db/ok = true")
    );
    assert!(
        r.measurements[0]
            .message
            .starts_with(&format!("GET {base}/healthz answered 200")),
        "{r:#?}"
    );
    // Numbers compare by value: TOML 3.0 matches JSON 3.
    let check = http(
        &base,
        "/healthz",
        "json_pointer = \"/version\"\nexpect_json = 3.0",
    );
    assert_eq!(run(&check, "").await.outcome, HealthOutcome::Successful);
}

#[tokio::test]
async fn http_a_wrong_status_fails() {
    let (base, _) = server(0, "").await;
    let r = run(&http(&base, "/status/503", "count = 3"), "").await;
    assert_eq!(r.outcome, HealthOutcome::Failed, "{r:#?}");
    assert_eq!(
        outcomes(&r),
        [FailureM],
        "failed at once: failure_limit is 0"
    );
    assert_eq!(
        r.measurements[0].value.as_deref(),
        Some("status 503: status page")
    );
    assert!(
        r.measurements[0]
            .message
            .ends_with("answered 503, expected 200"),
        "{r:#?}"
    );
    // The expected status is configurable, and redirects are not followed.
    let r = run(&http(&base, "/status/302", "expect_status = 302"), "").await;
    assert_eq!(r.outcome, HealthOutcome::Successful, "{r:#?}");
}

#[tokio::test]
async fn http_a_different_json_value_fails() {
    let (base, _) = server(0, "").await;
    let check = http(
        &base,
        "/healthz",
        "json_pointer = \"/status\"\nexpect_json = \"degraded\"",
    );
    let r = run(&check, "").await;
    assert_eq!(r.outcome, HealthOutcome::Failed, "{r:#?}");
    assert_eq!(
        r.measurements[0].value.as_deref(),
        Some("status 200, /status = \"ready\"")
    );
    assert!(
        r.measurements[0].message.ends_with("expected \"degraded\""),
        "{r:#?}"
    );
}

#[tokio::test]
async fn http_a_missing_json_value_is_inconclusive() {
    let (base, _) = server(0, "").await;
    let check = http(
        &base,
        "/healthz",
        "json_pointer = \"/db/replica\"\nexpect_json = true\ncount = 2",
    );
    let r = run(&check, "").await;
    assert_eq!(r.outcome, HealthOutcome::Inconclusive, "{r:#?}");
    assert_eq!(outcomes(&r), [InconclusiveM, InconclusiveM], "not stopped");
    assert!(
        r.measurements[0]
            .message
            .contains("has no value at `/db/replica`"),
        "{r:#?}"
    );
}

#[tokio::test]
async fn http_body_contains() {
    let (base, _) = server(0, "").await;
    let r = run(&http(&base, "/healthz", "body_contains = \"ready\""), "").await;
    assert_eq!(r.outcome, HealthOutcome::Successful, "{r:#?}");
    let r = run(&http(&base, "/healthz", "body_contains = \"starting\""), "").await;
    assert_eq!(r.outcome, HealthOutcome::Failed, "{r:#?}");
    assert!(
        r.measurements[0]
            .message
            .ends_with("the body does not contain \"starting\""),
        "{r:#?}"
    );
    // The method is used as configured.
    let r = run(
        &http(
            &base,
            "/submit",
            "method = \"POST\"\nbody_contains = \"ready\"",
        ),
        "",
    )
    .await;
    assert_eq!(r.outcome, HealthOutcome::Successful, "{r:#?}");
    let r = run(&http(&base, "/submit", ""), "").await;
    assert_eq!(
        r.measurements[0].value.as_deref().map(|v| &v[..10]),
        Some("status 405")
    );
}

#[tokio::test]
async fn http_headers_come_from_the_environment_and_never_show() {
    let token = format!("Bearer tok-{}", uuid::Uuid::new_v4().simple());
    let var = "SLUICE_TEST_HEALTH_TOKEN_A";
    std::env::set_var(var, &token);
    let (base, state) = server(0, &token).await;
    let headers = format!("headers = {{ Authorization = \"{var}\" }}");

    let ok = run(&http(&base, "/auth", &headers), "").await;
    assert_eq!(ok.outcome, HealthOutcome::Successful, "{ok:#?}");
    assert_eq!(
        state.auth_seen.lock().unwrap().as_slice(),
        std::slice::from_ref(&token),
        "the header reached the server"
    );

    // A server that echoes the header in a failure: the value is scrubbed from what we keep.
    let echoed = run(
        &http(
            &base,
            "/echo",
            &format!("{headers}\ncount = 2\nfailure_limit = 1"),
        ),
        "",
    )
    .await;
    assert_eq!(echoed.outcome, HealthOutcome::Failed, "{echoed:#?}");
    let sink = Recorder::default();
    let (overall, results) = run_all(
        &checks(&format!(
            "[[health]]\nkind = \"http\"\nurl = \"{base}/echo\"\n{headers}\n\
             [[health]]\nkind = \"http\"\nurl = \"{base}/auth\"\n{headers}\n\
             json_pointer = \"/x\"\nexpect_json = 1\n"
        )),
        "",
        &sink,
    )
    .await;
    assert_eq!(overall, HealthOutcome::Failed);
    assert!(
        state.auth_seen.lock().unwrap().len() >= 5,
        "every request carried the header"
    );
    let everything = format!(
        "{}\n{}\n{}\n{:?}",
        serde_json::to_string(&ok).unwrap(),
        serde_json::to_string(&echoed).unwrap(),
        serde_json::to_string(&results).unwrap(),
        sink.all()
    );
    let secret = token.trim_start_matches("Bearer ");
    assert!(
        !everything.contains(secret),
        "the header value leaked: {everything}"
    );
    assert!(
        echoed.measurements[0]
            .value
            .as_deref()
            .unwrap_or_default()
            .contains("bad credentials: ***"),
        "{echoed:#?}"
    );

    // An unset variable is an error that names the variable.
    let missing = run(
        &http(
            &base,
            "/auth",
            "headers = { Authorization = \"SLUICE_TEST_SURELY_UNSET_TOKEN\" }",
        ),
        "",
    )
    .await;
    assert_eq!(missing.outcome, HealthOutcome::Error, "{missing:#?}");
    assert_eq!(
        missing.measurements[0].message,
        "environment variable `SLUICE_TEST_SURELY_UNSET_TOKEN` (for header `Authorization`) is not set"
    );
}

#[tokio::test]
async fn http_a_server_that_is_down_ends_in_error_after_the_consecutive_error_limit() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("address").port()
    };
    let check = http(
        &format!("http://127.0.0.1:{port}"),
        "/healthz",
        "count = 10\nconsecutive_error_limit = 2",
    );
    let r = run(&check, "").await;
    assert_eq!(r.outcome, HealthOutcome::Error, "{r:#?}");
    assert_eq!(outcomes(&r), [ErrorM, ErrorM, ErrorM], "stopped after 3");
    assert!(
        r.measurements[0].message.contains("could not connect"),
        "{r:#?}"
    );
    assert!(
        r.summary
            .contains("3 consecutive errors exceed consecutive_error_limit 2"),
        "{r:#?}"
    );
}

#[tokio::test]
async fn http_failures_within_the_failure_limit_are_tolerated() {
    let (base, _) = server(2, "").await;
    let check = http(
        &base,
        "/flaky",
        "json_pointer = \"/db/ok\"\nexpect_json = true\ncount = 4\nfailure_limit = 2",
    );
    let r = run(&check, "").await;
    assert_eq!(r.outcome, HealthOutcome::Successful, "{r:#?}");
    assert_eq!(outcomes(&r), [FailureM, FailureM, SuccessM, SuccessM]);

    let (base, _) = server(2, "").await;
    let check = http(
        &base,
        "/flaky",
        "json_pointer = \"/db/ok\"\nexpect_json = true\ncount = 4\nfailure_limit = 1",
    );
    let r = run(&check, "").await;
    assert_eq!(r.outcome, HealthOutcome::Failed, "{r:#?}");
    assert_eq!(
        outcomes(&r),
        [FailureM, FailureM],
        "stopped at the second failure"
    );
}

#[tokio::test]
async fn http_the_timeout_bounds_each_measurement() {
    let (base, _) = server(0, "").await;
    let check = http(
        &base,
        "/slow",
        "timeout = \"150ms\"\ncount = 2\nconsecutive_error_limit = 0",
    );
    let started = Instant::now();
    let r = run(&check, "").await;
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(r.outcome, HealthOutcome::Error, "{r:#?}");
    assert_eq!(outcomes(&r), [ErrorM]);
    assert!(r.measurements[0].message.contains("timed out"), "{r:#?}");
    assert!(r.measurements[0].elapsed_ms < 1000, "{r:#?}");
}

#[tokio::test]
async fn run_all_combines_and_runs_checks_concurrently() {
    let (base, _) = server(0, "").await;
    let ok = format!("[[health]]\nname = \"ok\"\nkind = \"http\"\nurl = \"{base}/healthz\"\ninitial_delay = \"400ms\"\n");
    let unsure = format!(
        "[[health]]\nname = \"unsure\"\nkind = \"http\"\nurl = \"{base}/healthz\"\njson_pointer = \"/nope\"\nexpect_json = 1\ninitial_delay = \"400ms\"\n"
    );
    let broken =
        format!("[[health]]\nname = \"broken\"\nkind = \"http\"\nurl = \"{base}/status/500\"\n");

    let started = Instant::now();
    let sink = Recorder::default();
    let (overall, results) = run_all(&checks(&format!("{ok}{unsure}")), "", &sink).await;
    assert!(
        started.elapsed() < Duration::from_millis(780),
        "two 400ms delays overlapped: {:?}",
        started.elapsed()
    );
    assert_eq!(overall, HealthOutcome::Inconclusive);
    assert_eq!(
        results
            .iter()
            .map(|r| (r.name.as_str(), r.outcome))
            .collect::<Vec<_>>(),
        [
            ("ok", HealthOutcome::Successful),
            ("unsure", HealthOutcome::Inconclusive)
        ]
    );
    let mut names: Vec<String> = sink.all().into_iter().map(|(n, _)| n).collect();
    names.sort();
    assert_eq!(names, ["ok", "unsure"]);

    let (overall, _) = run_all(&checks(&format!("{ok}{unsure}{broken}")), "", &sink).await;
    assert_eq!(overall, HealthOutcome::Failed);
    let (overall, results) = run_all(&[], "", &sink).await;
    assert_eq!((overall, results.len()), (HealthOutcome::Successful, 0));
}

// ---------------------------------------------------------------------------------------------
// SQL
// ---------------------------------------------------------------------------------------------

fn sql(name: &str, query: &str, expect: &str, extra: &str) -> String {
    format!(
        "[[health]]\nname = \"{name}\"\nkind = \"sql\"\nquery = {}\nexpect = {expect}\n{extra}\n",
        toml_str(query)
    )
}

fn user_table(db: &TestDb) {
    db.psql(
        "CREATE TYPE \"Role\" AS ENUM ('USER', 'ADMIN');\n\
         CREATE TABLE \"User\" (id serial PRIMARY KEY, email text NOT NULL, role \"Role\");\n\
         CREATE TABLE \"Post\" (id serial PRIMARY KEY, title text, \"authorId\" int REFERENCES \"User\");\n\
         INSERT INTO \"User\" (email, role) VALUES ('a@x', 'ADMIN'), ('b@x', 'USER');",
    );
}

#[tokio::test]
async fn sql_postgres_compares_the_first_value() {
    let db = pg().create_db("health_sql");
    user_table(&db);
    let nulls = "SELECT count(*) FROM \"User\" WHERE \"role\" IS NULL";
    let r = run(&one(&sql("roles", nulls, "0", "")), &db.url).await;
    assert_eq!(r.outcome, HealthOutcome::Successful, "{r:#?}");
    assert_eq!(r.measurements[0].value.as_deref(), Some("0"));

    db.psql("INSERT INTO \"User\" (email) VALUES ('c@x')");
    let r = run(&one(&sql("roles", nulls, "0", "")), &db.url).await;
    assert_eq!(r.outcome, HealthOutcome::Failed, "{r:#?}");
    assert_eq!(r.measurements[0].value.as_deref(), Some("1"));
    assert_eq!(
        r.measurements[0].message,
        "the query returned 1, expected 0"
    );

    // Values of many types are read as text and compared after normalising.
    let cases = [
        (
            "numeric",
            "SELECT 12345.0600::numeric",
            "12345.06",
            Some("12345.0600"),
        ),
        (
            "negative",
            "SELECT -0.5::numeric(10,3)",
            "-0.5",
            Some("-0.500"),
        ),
        (
            "sum",
            "SELECT sum(id)::numeric FROM \"User\"",
            "6",
            Some("6"),
        ),
        ("float", "SELECT 2.5::float8", "2.5", Some("2.5")),
        (
            "bool",
            "SELECT bool_and(email LIKE '%@x') FROM \"User\"",
            "true",
            Some("true"),
        ),
        (
            "text",
            "SELECT email FROM \"User\" ORDER BY id LIMIT 1",
            "\"a@x\"",
            Some("a@x"),
        ),
        (
            "enum",
            "SELECT role FROM \"User\" WHERE email = 'a@x'",
            "\"ADMIN\"",
            Some("ADMIN"),
        ),
        (
            "date",
            "SELECT DATE '2024-05-01'",
            "2024-05-01",
            Some("2024-05-01"),
        ),
        (
            "uuid",
            "SELECT '6f1c2a2e-0000-4000-8000-000000000001'::uuid",
            "\"6f1c2a2e-0000-4000-8000-000000000001\"",
            Some("6f1c2a2e-0000-4000-8000-000000000001"),
        ),
        (
            "jsonb",
            "SELECT '{\"a\": 1}'::jsonb",
            "'{\"a\": 1}'",
            Some("{\"a\": 1}"),
        ),
        (
            "app",
            "SELECT current_setting('application_name')",
            "\"sluice\"",
            Some("sluice"),
        ),
    ];
    let text: String = cases.iter().map(|(n, q, e, _)| sql(n, q, e, "")).collect();
    let (overall, results) = run_all(&checks(&text), &db.url, &Recorder::default()).await;
    for (r, (name, _, _, value)) in results.iter().zip(&cases) {
        assert_eq!(
            (r.outcome, r.measurements[0].value.as_deref()),
            (HealthOutcome::Successful, *value),
            "{name}: {r:#?}"
        );
    }
    assert_eq!(overall, HealthOutcome::Successful);

    // NULL never equals anything; no row cannot be judged.
    let r = run(&one(&sql("null", "SELECT NULL::int", "0", "")), &db.url).await;
    assert_eq!(r.outcome, HealthOutcome::Failed, "{r:#?}");
    assert_eq!(r.measurements[0].value.as_deref(), Some("NULL"));
    let r = run(
        &one(&sql(
            "none",
            "SELECT id FROM \"User\" WHERE false",
            "1",
            "count = 2\ninterval = \"10ms\"",
        )),
        &db.url,
    )
    .await;
    assert_eq!(r.outcome, HealthOutcome::Inconclusive, "{r:#?}");
    assert_eq!(outcomes(&r), [InconclusiveM, InconclusiveM]);
    // A broken query is an error, not a failure.
    let r = run(
        &one(&sql("typo", "SELECT nope FROM \"User\"", "1", "")),
        &db.url,
    )
    .await;
    assert_eq!(r.outcome, HealthOutcome::Error, "{r:#?}");
    assert!(
        r.measurements[0].message.contains("SQLSTATE 42703"),
        "{r:#?}"
    );
}

#[tokio::test]
async fn sql_postgres_cannot_write() {
    let db = pg().create_db("health_ro");
    user_table(&db);
    for query in [
        "INSERT INTO \"User\" (email) VALUES ('evil@x') RETURNING 1",
        "WITH w AS (INSERT INTO \"User\" (email) VALUES ('evil@x') RETURNING 1) SELECT count(*) FROM w",
        "SELECT nextval('\"User_id_seq\"')",
    ] {
        let r = run(&one(&sql("write", query, "1", "")), &db.url).await;
        assert_eq!(r.outcome, HealthOutcome::Error, "{query}: {r:#?}");
        assert!(
            r.measurements[0].message.contains("read-only transaction"),
            "{query}: {r:#?}"
        );
    }
    // A check built in code, past the parser's one-statement rule, is refused before it runs.
    let smuggled = HealthCheck {
        name: "smuggled".into(),
        kind: CheckKind::Sql(SqlCheck {
            query: "COMMIT; INSERT INTO \"User\" (email) VALUES ('evil@x')".into(),
            expect: SqlValue::Integer(1),
        }),
        schedule: Schedule::default(),
    };
    let r = run(&smuggled, &db.url).await;
    assert_eq!(r.outcome, HealthOutcome::Error, "{r:#?}");
    assert!(
        r.measurements[0].message.contains("exactly one statement"),
        "{r:#?}"
    );
    // Let the background rollbacks finish, then look.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        db.psql_i64("SELECT count(*) FROM \"User\" WHERE email = 'evil@x'"),
        0
    );
    assert_eq!(db.psql_i64("SELECT last_value FROM \"User_id_seq\""), 2);
}

#[tokio::test]
async fn sql_postgres_statement_timeout() {
    let db = pg().create_db("health_timeout");
    let check = one(&sql(
        "sleepy",
        "SELECT pg_sleep(5)",
        "\"\"",
        "timeout = \"200ms\"",
    ));
    let started = Instant::now();
    let r = run(&check, &db.url).await;
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    assert_eq!(r.outcome, HealthOutcome::Error, "{r:#?}");
    let message = &r.measurements[0].message;
    assert!(
        message.contains("statement timeout") || message.contains("timed out"),
        "{r:#?}"
    );
    // The server stopped the query too: nothing of ours keeps sleeping.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let active = db.psql_i64(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'sluice' \
             AND state = 'active' AND query LIKE '%pg_sleep(5)%'",
        );
        if active == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the query still runs on the server"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A SQLite database file with a `User` table; returns (temp dir, URL as config resolves it).
async fn sqlite_db() -> (tempfile::TempDir, PathBuf, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("dev.db");
    let mut conn = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .connect()
        .await
        .expect("create the SQLite file");
    conn.execute(
        "CREATE TABLE \"User\" (id INTEGER PRIMARY KEY, email TEXT NOT NULL, role TEXT, active BOOLEAN);\n\
         CREATE TABLE \"Post\" (id INTEGER PRIMARY KEY, title TEXT);\n\
         INSERT INTO \"User\" (email, role, active) VALUES ('a@x', 'ADMIN', 1), ('b@x', NULL, 0);",
    )
    .await
    .expect("create tables");
    conn.close().await.expect("close");
    let url = format!("sqlite://{}", path.display());
    (dir, path, url)
}

async fn sqlite_count(path: &Path, query: &str) -> i64 {
    let mut conn = SqliteConnectOptions::new()
        .filename(path)
        .connect()
        .await
        .expect("open");
    let n: i64 = sqlx::query_scalar(query)
        .fetch_one(&mut conn)
        .await
        .expect("count");
    conn.close().await.expect("close");
    n
}

#[tokio::test]
async fn sql_sqlite_compares_and_cannot_write() {
    let (_dir, path, url) = sqlite_db().await;
    let nulls = "SELECT count(*) FROM \"User\" WHERE role IS NULL";
    let r = run(&one(&sql("roles", nulls, "1", "")), &url).await;
    assert_eq!(r.outcome, HealthOutcome::Successful, "{r:#?}");
    let r = run(&one(&sql("roles", nulls, "0", "")), &url).await;
    assert_eq!(r.outcome, HealthOutcome::Failed, "{r:#?}");
    assert_eq!(r.measurements[0].value.as_deref(), Some("1"));
    // SQLite keeps booleans as 1/0; a boolean expectation reads them.
    let r = run(
        &one(&sql(
            "active",
            "SELECT active FROM \"User\" WHERE email = 'a@x'",
            "true",
            "",
        )),
        &url,
    )
    .await;
    assert_eq!(r.outcome, HealthOutcome::Successful, "{r:#?}");
    let r = run(
        &one(&sql("avg", "SELECT avg(id) FROM \"User\"", "1.5", "")),
        &url,
    )
    .await;
    assert_eq!(r.outcome, HealthOutcome::Successful, "{r:#?}");
    let r = run(
        &one(&sql("none", "SELECT id FROM \"User\" WHERE 0", "1", "")),
        &url,
    )
    .await;
    assert_eq!(r.outcome, HealthOutcome::Inconclusive, "{r:#?}");

    for query in [
        "INSERT INTO \"User\" (email) VALUES ('evil@x') RETURNING 1",
        "DELETE FROM \"User\" RETURNING 1",
    ] {
        let r = run(&one(&sql("write", query, "1", "")), &url).await;
        assert_eq!(r.outcome, HealthOutcome::Error, "{query}: {r:#?}");
        assert!(
            r.measurements[0].message.contains("readonly"),
            "{query}: {r:#?}"
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        sqlite_count(&path, "SELECT count(*) FROM \"User\"").await,
        2
    );

    // A missing file is an error, and the check does not create it.
    let missing = path.with_file_name("missing.db");
    let r = run(
        &one(&sql("roles", nulls, "0", "")),
        &format!("sqlite://{}?mode=rwc", missing.display()),
    )
    .await;
    assert_eq!(r.outcome, HealthOutcome::Error, "{r:#?}");
    assert!(!missing.exists(), "the health check created a database");
}

// ---------------------------------------------------------------------------------------------
// Schema
// ---------------------------------------------------------------------------------------------

fn schema(body: &str) -> HealthCheck {
    one(&format!(
        "[[health]]\nname = \"schema\"\nkind = \"schema\"\n{body}\n"
    ))
}

#[tokio::test]
async fn schema_postgres_names_exactly_what_is_missing() {
    let db = pg().create_db("health_schema");
    user_table(&db);
    let all = schema(
        "tables = [\"User\", \"Post\"]\ncolumns = [\"User.email\", \"User.role\", \"Post.authorId\"]\nenums = { Role = [\"USER\", \"ADMIN\"] }",
    );
    check_engine(std::slice::from_ref(&all), &db.url).expect("enums are fine on PostgreSQL");
    let r = run(&all, &db.url).await;
    assert_eq!(r.outcome, HealthOutcome::Successful, "{r:#?}");
    assert_eq!(
        r.measurements[0].value.as_deref(),
        Some("6 object(s) present; Role = [USER, ADMIN]")
    );

    let wrong = schema(
        "tables = [\"User\", \"Comment\", \"user\"]\n\
         columns = [\"User.email\", \"User.name\", \"Tag.label\"]\n\
         enums = { Role = [\"USER\", \"SUPERADMIN\"], Status = [\"ON\"] }",
    );
    let r = run(&wrong, &db.url).await;
    assert_eq!(r.outcome, HealthOutcome::Failed, "{r:#?}");
    assert_eq!(
        r.measurements[0].value.as_deref(),
        Some(
            "missing: table `Comment`, table `user`, table `Tag`, column `User.name`, \
             label `SUPERADMIN` of enum `Role`, enum `Status`"
        )
    );
    assert!(
        r.measurements[0]
            .message
            .starts_with("missing from schemas public: table `Comment`"),
        "{r:#?}"
    );

    // Only the search path's schemas count; Prisma's `schema=` parameter sets it.
    db.psql("CREATE SCHEMA audit; CREATE TABLE audit.\"Entry\" (id int, at timestamptz)");
    let entry = schema("tables = [\"Entry\"]\ncolumns = [\"Entry.at\"]");
    let r = run(&entry, &db.url).await;
    assert_eq!(r.outcome, HealthOutcome::Failed, "{r:#?}");
    let sep = if db.url.contains('?') { '&' } else { '?' };
    let r = run(&entry, &format!("{}{sep}schema=audit", db.url)).await;
    assert_eq!(r.outcome, HealthOutcome::Successful, "{r:#?}");
}

#[tokio::test]
async fn schema_sqlite_tables_and_columns() {
    let (_dir, _path, url) = sqlite_db().await;
    let r = run(
        &schema("tables = [\"User\", \"post\"]\ncolumns = [\"User.email\", \"user.ROLE\"]"),
        &url,
    )
    .await;
    assert_eq!(r.outcome, HealthOutcome::Successful, "{r:#?}");
    let r = run(
        &schema("tables = [\"User\", \"Comment\"]\ncolumns = [\"User.email\", \"User.name\", \"Tag.label\"]"),
        &url,
    )
    .await;
    assert_eq!(r.outcome, HealthOutcome::Failed, "{r:#?}");
    assert_eq!(
        r.measurements[0].value.as_deref(),
        Some("missing: table `Comment`, table `Tag`, column `User.name`")
    );

    // Enums are a configuration error on SQLite, reported with file, line and key.
    let enums = schema("tables = [\"User\"]\nenums = { Role = [\"USER\"] }");
    let err = check_engine(std::slice::from_ref(&enums), &url)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(
            "environments/test.toml:5: key `health[1].enums`: enum types exist only in PostgreSQL"
        ),
        "{err}"
    );
    let r = run(&enums, &url).await;
    assert_eq!(r.outcome, HealthOutcome::Error, "{r:#?}");
    assert_eq!(r.measurements[0].message, err);
}

#[tokio::test]
async fn database_passwords_never_show() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("address").port()
    };
    let urls = [
        format!("postgres://sluice:hunter2pw@127.0.0.1:{port}/app"),
        "postgresql://sluice:hunter2pw@127.0.0.1:notaport/app".to_string(),
        "postgres://sluice:hunter2pw@[::1/app".to_string(),
    ];
    let sink = Recorder::default();
    for url in &urls {
        let checks = checks(&format!(
            "{}[[health]]\nkind = \"schema\"\ntables = [\"User\"]\n",
            sql("q", "SELECT 1", "1", "")
        ));
        let (overall, results) = run_all(&checks, url, &sink).await;
        assert_eq!(overall, HealthOutcome::Error, "{url}: {results:#?}");
        let everything = format!(
            "{}{:?}",
            serde_json::to_string(&results).unwrap(),
            sink.all()
        );
        assert!(!everything.contains("hunter2pw"), "{everything}");
    }
}

/// Item 14: a failed check's summary says why in the words of its measurements — the status
/// and the URL, the expected and the observed value, the missing objects — before the limit
/// that decided it.
#[tokio::test]
async fn item14_failed_checks_summarise_why_from_their_measurements() {
    let (base, _) = server(2, "").await;
    let r = run(&http(&base, "/status/503", ""), "").await;
    assert_eq!(r.outcome, HealthOutcome::Failed, "{r:#?}");
    assert_eq!(
        r.summary,
        format!(
            "HTTP 503 from GET {base}/status/503, expected 200 (1 of 1 measurement); \
             1 failed measurement(s) exceed failure_limit 0"
        )
    );
    // Different reasons are each quoted with how many measurements gave them.
    let (base, _) = server(1, "").await;
    let check = http(
        &base,
        "/flaky",
        "json_pointer = \"/db/ok\"\nexpect_json = false\ncount = 2\nfailure_limit = 1",
    );
    let r = run(&check, "").await;
    assert_eq!(r.outcome, HealthOutcome::Failed, "{r:#?}");
    assert_eq!(
        r.summary,
        format!(
            "HTTP 503 from GET {base}/flaky, expected 200 (1 of 2 measurements); \
             /db/ok: expected false, got true from GET {base}/flaky (1 of 2 measurements); \
             2 failed measurement(s) exceed failure_limit 1"
        )
    );

    let (_dir, _path, url) = sqlite_db().await;
    let r = run(
        &schema("tables = [\"User\", \"Comment\"]\ncolumns = [\"User.email\", \"User.name\"]\ncount = 2\ninterval = \"1ms\"\nfailure_limit = 1"),
        &url,
    )
    .await;
    assert_eq!(r.outcome, HealthOutcome::Failed, "{r:#?}");
    assert!(
        r.summary.starts_with(
            "table `Comment` and column `User.name` are missing (2 of 2 measurements)"
        ),
        "{r:#?}"
    );
    let r = run(&schema("tables = [\"Document\"]"), &url).await;
    assert!(
        r.summary
            .starts_with("table `Document` is missing (1 of 1 measurement)"),
        "{r:#?}"
    );

    let r = run(
        &one(&sql("users", "SELECT count(*) FROM \"User\"", "0", "")),
        &url,
    )
    .await;
    assert_eq!(r.outcome, HealthOutcome::Failed, "{r:#?}");
    assert!(
        r.summary
            .starts_with("expected 0, got 2 (1 of 1 measurement)"),
        "{r:#?}"
    );
}
