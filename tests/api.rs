//! The daemon's HTTP API at its edges: who may do what (roles per environment, self-approval),
//! requests without a valid bearer token, secrets kept out of the logs, malformed bodies, and
//! malformed policies at startup and on reload. Every refusal is checked to change nothing.

mod common;

use std::time::Duration;

use common::daemon::*;
use common::*;
use serde_json::Value;

const VIEWER: &str = "slc_viewer_token_0123456789abcdef";
const DEPLOYER: &str = "slc_deployer_token_0123456789abcd";
const APPROVER: &str = "slc_approver_token_0123456789abcd";
const ADMIN: &str = "slc_admin_token_0123456789abcdefg";
const DEVONLY: &str = "slc_devonly_token_0123456789abcde";
/// A token no tokens file knows.
const WRONG: &str = "slc_wrong_token_Zq8Xw7Vv6Uu5Tt4Ss3";

const M1: &str = "20240101000000_users";

const ENVS: [&str; 3] = ["dev", "staging", "prod"];

/// A project with environments dev, staging, prod on fresh databases, pg-template snapshots,
/// one migration with a down script, the five tokens above and a daemon section.
struct Setup {
    project: Project,
    dbs: Vec<(String, TestDb)>,
}

impl Setup {
    fn new(prefix: &str) -> Setup {
        Setup::with_urls(prefix, |_, db| db.url.clone())
    }

    /// Like [`Setup::new`], with `url` deciding each environment's URL from its database.
    fn with_urls(prefix: &str, url: impl Fn(&str, &TestDb) -> String) -> Setup {
        let dbs: Vec<(String, TestDb)> = ENVS
            .iter()
            .map(|n| (n.to_string(), pg().create_db(&format!("api_{prefix}_{n}"))))
            .collect();
        let mut project = Project::with_local_migrations(&[], "");
        for (name, db) in &dbs {
            project.add_env(
                name,
                &url(name, db),
                "lock_timeout = \"5s\"\n[snapshot]\nprovider = \"pg-template\"\n",
            );
        }
        let file = project.add_migration(
            M1,
            "CREATE TABLE users (id serial PRIMARY KEY, email text NOT NULL);\n",
        );
        std::fs::write(file.with_file_name("down.sql"), "DROP TABLE users;\n").unwrap();
        write_tokens(
            &project,
            &[
                ("viewer", VIEWER, "\"*\" = \"viewer\""),
                (
                    "deployer",
                    DEPLOYER,
                    "dev = \"deployer\", \"*\" = \"viewer\"",
                ),
                ("approver", APPROVER, "\"*\" = \"approver\""),
                ("admin", ADMIN, "\"*\" = \"admin\""),
                (
                    "devonly",
                    DEVONLY,
                    "dev = \"deployer\", staging = \"viewer\"",
                ),
            ],
        );
        std::fs::write(
            project.path().join("sluice.toml"),
            "migrations = \"migrations\"\nstate_dir = \".sluice\"\n\n[daemon]\n\
             tokens_file = \"tokens.toml\"\ntick = \"100ms\"\nwatch_interval = \"0s\"\n",
        )
        .unwrap();
        Setup { project, dbs }
    }

    fn db(&self, name: &str) -> &TestDb {
        &self.dbs.iter().find(|(n, _)| n == name).unwrap().1
    }

    fn policy(&self, name: &str, text: &str) {
        let dir = self.project.path().join("policies");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.toml")), text).unwrap();
    }

    /// dev, staging and prod each waiting for one approval, in a line dev → staging → prod.
    fn gated_policies(&self) {
        self.policy("dev", "environment = \"dev\"\n[approvals]\nrequired = 1\n");
        self.policy(
            "staging",
            "environment = \"staging\"\nfrom = \"dev\"\n[approvals]\nrequired = 1\n",
        );
        self.policy(
            "prod",
            "environment = \"prod\"\nfrom = \"staging\"\n[approvals]\nrequired = 1\n",
        );
    }
}

/// The `_prisma_migrations` rows of `db` as `name|applied|rolled back`, or a note that there
/// is no history table.
fn history_rows(db: &TestDb) -> String {
    db.psql_try(
        "SELECT migration_name, finished_at IS NOT NULL, rolled_back_at IS NOT NULL \
         FROM _prisma_migrations ORDER BY started_at, migration_name",
    )
    .unwrap_or_else(|e| format!("no history table: {e}"))
}

/// Asserts that sluice never wrote to `db`: it has no history table.
#[track_caller]
fn assert_untouched(db: &TestDb) {
    let rows = history_rows(db);
    assert!(
        rows.starts_with("no history table") && rows.contains("does not exist"),
        "{rows}"
    );
}

/// The error message of an API error body, asserting the `{"error": {"code", "message"}}` shape
/// and the code.
#[track_caller]
fn error_message(body: &Value, code: &str) -> String {
    assert_eq!(body["error"]["code"], code, "{body}");
    let message = body["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no message: {body}"));
    assert!(!message.trim().is_empty(), "{body}");
    message.to_string()
}

/// Asserts a refusal with `status` and error `code` whose message contains every one of `parts`.
#[track_caller]
fn assert_refused(answer: &(u16, Value), status: u16, code: &str, parts: &[&str]) {
    assert_eq!(answer.0, status, "{}", answer.1);
    let message = error_message(&answer.1, code);
    for part in parts {
        assert!(message.contains(part), "`{part}` missing from `{message}`");
    }
}

fn sha256_hex(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

fn run_id(created: &Value) -> String {
    created[0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no run id in {created}"))
        .to_string()
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect()
}

fn run_ids(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect()
}

/// Every event of the audit log as `(action, environment, run)`.
fn events(daemon: &Daemon, token: &str) -> Vec<(String, String, String)> {
    let (status, events) = daemon.get("/v1/events?limit=100000", Some(token));
    assert_eq!(status, 200, "{events}");
    events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap_or("").to_string(),
                e["environment"].as_str().unwrap_or("").to_string(),
                e["run_id"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn count_action(daemon: &Daemon, action: &str) -> usize {
    events(daemon, ADMIN)
        .iter()
        .filter(|(a, _, _)| a == action)
        .count()
}

fn wait_state(daemon: &Daemon, id: &str, state: &str) -> Value {
    daemon.wait_run(id, ADMIN, Duration::from_secs(30), |r| state_of(r) == state)
}

fn run_view(daemon: &Daemon, id: &str) -> Value {
    let (status, run) = daemon.get(&format!("/v1/runs/{id}"), Some(ADMIN));
    assert_eq!(status, 200, "{run}");
    run
}

#[test]
fn each_role_may_do_what_it_should_and_nothing_more() {
    let setup = Setup::new("roles");
    setup.gated_policies();
    let daemon = Daemon::start(&setup.project, &[]);

    // Reading: every role sees every environment it has a role on, and only those.
    for token in [VIEWER, DEPLOYER, APPROVER, ADMIN] {
        let (status, envs) = daemon.get("/v1/environments", Some(token));
        assert_eq!(status, 200, "{envs}");
        assert_eq!(names(&envs), ENVS, "{envs}");
    }
    let (status, envs) = daemon.get("/v1/environments", Some(DEVONLY));
    assert_eq!(status, 200, "{envs}");
    assert_eq!(
        names(&envs),
        ["dev", "staging"],
        "no role on prod, so prod is not listed"
    );
    assert_refused(
        &daemon.get("/v1/environments/prod", Some(DEVONLY)),
        403,
        "forbidden",
        &["devonly", "prod"],
    );
    assert_refused(
        &daemon.get("/v1/runs?environment=prod", Some(DEVONLY)),
        403,
        "forbidden",
        &["prod"],
    );
    let (status, _) = daemon.get("/v1/environments/staging", Some(DEVONLY));
    assert_eq!(status, 200);

    // Requesting promotions: a deployer on dev only, not a viewer, not on staging.
    assert_refused(
        &daemon.post("/v1/promotions", Some(VIEWER), r#"{"to": "dev"}"#),
        403,
        "forbidden",
        &["`viewer` is viewer on `dev`", "deployer"],
    );
    assert_refused(
        &daemon.post("/v1/promotions", Some(DEPLOYER), r#"{"to": "staging"}"#),
        403,
        "forbidden",
        &["`deployer` is viewer on `staging`", "deployer"],
    );
    assert_refused(
        &daemon.post("/v1/promotions", Some(DEVONLY), r#"{"to": "prod"}"#),
        403,
        "forbidden",
        &["`devonly` has no role on `prod`"],
    );
    // A ladder request needs the role on every step of the ladder.
    assert_refused(
        &daemon.post(
            "/v1/promotions",
            Some(DEPLOYER),
            r#"{"to": "prod", "ladder": true}"#,
        ),
        403,
        "forbidden",
        &["deployer"],
    );
    let (status, runs) = daemon.get("/v1/runs", Some(ADMIN));
    assert_eq!(status, 200);
    assert_eq!(
        runs,
        Value::Array(vec![]),
        "refused promotions create no run"
    );
    assert_eq!(count_action(&daemon, "run.requested"), 0);

    let (status, created) = daemon.post("/v1/promotions", Some(DEPLOYER), r#"{"to": "dev"}"#);
    assert_eq!(status, 202, "{created}");
    let first = run_id(&created);
    let run = wait_state(&daemon, &first, "gated");
    assert_eq!(run["requested_by"], "deployer", "{run}");

    // Deciding on a run someone else requested: approve and reject need an approver;
    // cancel and resume a deployer.
    let approve = format!("/v1/runs/{first}/approve");
    let reject = format!("/v1/runs/{first}/reject");
    let cancel = format!("/v1/runs/{first}/cancel");
    let resume = format!("/v1/runs/{first}/resume");
    for token in [VIEWER, DEPLOYER, DEVONLY] {
        let answer = daemon.post(&approve, Some(token), "{}");
        assert_refused(&answer, 403, "forbidden", &["approver"]);
        let answer = daemon.post(&reject, Some(token), r#"{"reason": "no"}"#);
        assert_refused(&answer, 403, "forbidden", &["approver"]);
    }
    assert_refused(
        &daemon.post(&cancel, Some(VIEWER), "{}"),
        403,
        "forbidden",
        &["deployer"],
    );
    assert_refused(
        &daemon.post(&resume, Some(VIEWER), ""),
        403,
        "forbidden",
        &["deployer"],
    );
    // A deployer passes the role check for resume; the run is just not halted.
    assert_refused(
        &daemon.post(&resume, Some(DEPLOYER), ""),
        409,
        "conflict",
        &["halted"],
    );
    let run = run_view(&daemon, &first);
    assert_eq!(state_of(&run), "gated", "{run}");
    assert_eq!(run["approvals"], Value::Array(vec![]), "{run}");

    // The deployer cancels its run and asks again.
    let (status, cancelled) = daemon.post(&cancel, Some(DEPLOYER), r#"{"reason": "wrong day"}"#);
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(state_of(&run_view(&daemon, &first)), "cancelled");
    let (status, created) = daemon.post("/v1/promotions", Some(DEPLOYER), r#"{"to": "dev"}"#);
    assert_eq!(status, 202, "{created}");
    let second = run_id(&created);
    wait_state(&daemon, &second, "gated");
    assert_untouched(setup.db("dev"));

    // An approver approves a run someone else requested; it then runs.
    let (status, approved) = daemon.post(
        &format!("/v1/runs/{second}/approve"),
        Some(APPROVER),
        r#"{"comment": "fine"}"#,
    );
    assert_eq!(status, 200, "{approved}");
    let run = wait_state(&daemon, &second, "succeeded");
    assert_eq!(run["approvals"][0]["by"], "approver", "{run}");
    assert_eq!(history_rows(setup.db("dev")), format!("{M1}|t|f"));

    // An approver who requested a run may not approve it, nor reject it.
    let (status, created) = daemon.post("/v1/promotions", Some(APPROVER), r#"{"to": "staging"}"#);
    assert_eq!(status, 202, "{created}");
    let own = run_id(&created);
    wait_state(&daemon, &own, "gated");
    assert_refused(
        &daemon.post(&format!("/v1/runs/{own}/approve"), Some(APPROVER), "{}"),
        403,
        "refused",
        &["`approver` requested run", "cannot approve it"],
    );
    assert_refused(
        &daemon.post(
            &format!("/v1/runs/{own}/reject"),
            Some(APPROVER),
            r#"{"reason": "x"}"#,
        ),
        403,
        "refused",
        &["cancel it instead"],
    );
    // The deployer is only a viewer on staging: it cannot cancel the approver's run.
    assert_refused(
        &daemon.post(&format!("/v1/runs/{own}/cancel"), Some(DEPLOYER), "{}"),
        403,
        "forbidden",
        &["staging"],
    );
    let run = run_view(&daemon, &own);
    assert_eq!(state_of(&run), "gated", "{run}");
    assert_eq!(run["approvals"], Value::Array(vec![]), "{run}");
    assert_untouched(setup.db("staging"));
    // Another approver (the admin) rejects it.
    let (status, rejected) = daemon.post(
        &format!("/v1/runs/{own}/reject"),
        Some(ADMIN),
        r#"{"reason": "not this week"}"#,
    );
    assert_eq!(status, 200, "{rejected}");
    let run = run_view(&daemon, &own);
    assert_eq!(state_of(&run), "rejected", "{run}");
    assert!(
        run.to_string().contains("rejected by admin: not this week"),
        "{run}"
    );
    assert_untouched(setup.db("staging"));

    // devonly sees neither runs nor events of prod.
    let (status, created) = daemon.post("/v1/promotions", Some(ADMIN), r#"{"to": "prod"}"#);
    assert_eq!(status, 202, "{created}");
    let prod_run = run_id(&created);
    let (_, runs) = daemon.get("/v1/runs", Some(DEVONLY));
    assert!(!run_ids(&runs).contains(&prod_run), "{runs}");
    assert!(run_ids(&runs).contains(&second), "{runs}");
    assert_refused(
        &daemon.get(&format!("/v1/runs/{prod_run}"), Some(DEVONLY)),
        403,
        "forbidden",
        &["prod"],
    );
    assert!(events(&daemon, DEVONLY)
        .iter()
        .all(|(_, env, _)| env != "prod"));
    assert!(events(&daemon, VIEWER)
        .iter()
        .any(|(_, env, _)| env == "prod"));

    // Rolling back: a deployer on the environment, with a reason.
    let rollback = "/v1/environments/dev/rollback";
    assert_refused(
        &daemon.post(rollback, Some(VIEWER), r#"{"reason": "bad"}"#),
        403,
        "forbidden",
        &["viewer", "deployer"],
    );
    assert_refused(
        &daemon.post(
            "/v1/environments/staging/rollback",
            Some(DEPLOYER),
            r#"{"reason": "bad"}"#,
        ),
        403,
        "forbidden",
        &["staging"],
    );
    assert_eq!(history_rows(setup.db("dev")), format!("{M1}|t|f"));
    let (status, rolled) = daemon.post(rollback, Some(DEPLOYER), r#"{"reason": "bad"}"#);
    assert_eq!(status, 202, "{rolled}");
    let rollback_run = rolled["id"].as_str().unwrap().to_string();
    let run = wait_state(&daemon, &rollback_run, "rolled_back");
    assert_eq!(run["requested_by"], "deployer", "{run}");
    // The default rollback ladder is the snapshot: dev is as before the promotion.
    assert_eq!(run["state"]["method"], "snapshot", "{run}");
    assert_untouched(setup.db("dev"));
    assert_eq!(
        setup
            .db("dev")
            .psql("SELECT to_regclass('public.users') IS NULL"),
        "t"
    );

    // Reloading: admin on every environment only.
    for token in [VIEWER, DEPLOYER, APPROVER, DEVONLY] {
        assert_refused(
            &daemon.post("/v1/reload", Some(token), ""),
            403,
            "forbidden",
            &["admin"],
        );
    }
    assert_eq!(count_action(&daemon, "config.reloaded"), 0);
    let (status, reloaded) = daemon.post("/v1/reload", Some(ADMIN), "");
    assert_eq!(status, 200, "{reloaded}");
    assert_eq!(
        reloaded["environments"].as_array().unwrap().len(),
        3,
        "{reloaded}"
    );
    assert_eq!(count_action(&daemon, "config.reloaded"), 1);

    // The audit log names who did what.
    let log = events(&daemon, ADMIN);
    for (action, run) in [
        ("run.requested", &first),
        ("run.requested", &second),
        ("run.approved", &second),
        ("run.requested", &own),
    ] {
        assert!(
            log.iter().any(|(a, _, r)| a == action && r == run),
            "{action} of {run} missing: {log:?}"
        );
    }
    assert!(
        !log.iter().any(|(a, _, r)| a == "run.approved" && r == &own),
        "{log:?}"
    );
}

#[test]
fn requests_without_a_valid_bearer_token_are_refused_and_change_nothing() {
    let setup = Setup::new("unauth");
    setup.gated_policies();
    let daemon = Daemon::start(&setup.project, &[]);
    let http = reqwest::blocking::Client::new();
    let headers: [(&str, Option<String>); 7] = [
        ("no header", None),
        ("unknown token", Some(format!("Bearer {WRONG}"))),
        ("basic auth", Some("Basic x".to_string())),
        (
            "basic auth with a real token",
            Some(format!("Basic {DEPLOYER}")),
        ),
        ("empty bearer", Some("Bearer ".to_string())),
        ("two words", Some(format!("Bearer {DEPLOYER} extra"))),
        (
            "the stored hash instead of the token",
            Some(format!("Bearer {}", sha256_hex(ADMIN))),
        ),
    ];
    let requests: [(&str, &str, &str); 10] = [
        ("POST", "/v1/promotions", r#"{"to": "dev"}"#),
        ("GET", "/v1/runs?limit=many", ""),
        ("GET", "/v1/events?environment=dev&limit=-1", ""),
        ("POST", "/v1/releases", ""),
        ("POST", "/v1/promotions", r#"{"to": "nowhere"}"#),
        ("POST", "/v1/promotions", "{not json"),
        ("GET", "/v1/environments", ""),
        ("GET", "/v1/runs/00000000-0000-0000-0000-000000000000", ""),
        (
            "POST",
            "/v1/environments/dev/rollback",
            r#"{"reason": "x"}"#,
        ),
        ("POST", "/v1/reload", ""),
    ];
    for (what, header) in &headers {
        for (method, path, body) in requests {
            let url = format!("{}{path}", daemon.base);
            let mut request = match method {
                "GET" => http.get(&url),
                _ => http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.to_string()),
            };
            if let Some(header) = header {
                request = request.header("authorization", header.as_str());
            }
            let response = request.send().unwrap();
            let status = response.status().as_u16();
            let challenge = response
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap().to_string());
            let text = response.text().unwrap();
            assert_eq!(status, 401, "{what}: {method} {path}: {text}");
            assert_eq!(
                challenge.as_deref(),
                Some("Bearer"),
                "{what}: {method} {path}"
            );
            let body: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{what}: {method} {path}: not JSON ({e}): {text}"));
            let message = error_message(&body, "unauthorized");
            assert!(
                !message.contains(WRONG) && !message.contains(DEPLOYER),
                "{message}"
            );
        }
    }
    // The answers say what is wrong.
    let (_, missing) = daemon.get("/v1/environments", None);
    assert!(
        error_message(&missing, "unauthorized").contains("no bearer token"),
        "{missing}"
    );
    let (_, unknown) = daemon.get("/v1/environments", Some(WRONG));
    assert!(
        error_message(&unknown, "unauthorized").contains("not known"),
        "{unknown}"
    );

    // The scheme is case-insensitive and whitespace around the token is ignored.
    for header in [format!("bearer {VIEWER}"), format!("BEARER   {VIEWER}  ")] {
        let response = http
            .get(format!("{}/v1/environments", daemon.base))
            .header("authorization", header.as_str())
            .send()
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{header:?}");
    }

    // Nothing happened: no run, no request, no reload in the audit log.
    let (status, runs) = daemon.get("/v1/runs", Some(VIEWER));
    assert_eq!(status, 200, "{runs}");
    assert_eq!(runs, Value::Array(vec![]));
    let log = events(&daemon, ADMIN);
    assert!(
        !log.iter().any(|(a, _, _)| a == "run.requested"
            || a == "rollback.requested"
            || a == "config.reloaded"),
        "{log:?}"
    );
    let (_, dev) = daemon.get("/v1/environments/dev", Some(VIEWER));
    assert_eq!(dev["waiting_runs"], Value::Array(vec![]), "{dev}");
    assert_untouched(setup.db("dev"));

    // Health, metrics and the OpenAPI document need no token; metrics count the refusals.
    assert_eq!(daemon.get("/v1/health", None).0, 200);
    assert_eq!(daemon.get("/v1/openapi.json", None).0, 200);
    let (status, metrics) = daemon.get("/metrics", None);
    assert_eq!(status, 200);
    assert!(metrics.as_str().unwrap_or("").contains("4xx"), "{metrics}");
}

#[test]
fn secrets_never_reach_the_logs() {
    const PASSWORD: &str = "Sup3rS3cretPw";
    let socket = pg()
        .socket_dir()
        .expect("this test needs the private PostgreSQL cluster (SLUICE_TEST_PG_URL unset)")
        .display()
        .to_string();
    // dev and staging carry the password; staging's database does not exist, so its run fails
    // with a connection error (the path most likely to print a URL).
    let setup = Setup::with_urls("secrets", |env, db| {
        let name = if env == "staging" {
            format!("{}_missing", db.name)
        } else {
            db.name.clone()
        };
        format!("postgres://postgres:{PASSWORD}@localhost/{name}?host={socket}")
    });
    setup.policy("dev", "environment = \"dev\"\n");
    setup.policy("staging", "environment = \"staging\"\nfrom = \"dev\"\n");
    setup.policy("prod", "environment = \"prod\"\nfrom = \"staging\"\n");
    // Debug logging (documented as `SLUICE_LOG=debug`) is where a leak would most likely be.
    let mut daemon = Daemon::start(&setup.project, &[("SLUICE_LOG", "debug")]);
    let secrets = [PASSWORD, VIEWER, DEPLOYER, APPROVER, ADMIN, DEVONLY, WRONG];
    let check = |log: &str, when: &str| {
        for secret in secrets {
            assert!(
                !log.contains(secret),
                "{when}: `{secret}` is in the log:\n{log}"
            );
        }
    };

    let (status, created) = daemon.post("/v1/promotions", Some(DEPLOYER), r#"{"to": "dev"}"#);
    assert_eq!(status, 202, "{created}");
    let dev_run = run_id(&created);
    let run = daemon.wait_run(&dev_run, VIEWER, Duration::from_secs(30), |r| {
        matches!(
            state_of(r),
            "succeeded" | "halted" | "rolled_back" | "failed"
        )
    });
    assert_eq!(state_of(&run), "succeeded", "{run}\n{}", daemon.log());
    assert_eq!(
        history_rows(setup.db("dev")),
        format!("{M1}|t|f"),
        "the run used the URL with the password"
    );

    // Requests that succeed, and ones that fail, with good and bad tokens.
    assert_eq!(daemon.get("/v1/environments", Some(VIEWER)).0, 200);
    assert_eq!(
        daemon.get(&format!("/v1/runs/{dev_run}"), Some(DEVONLY)).0,
        200
    );
    assert_eq!(daemon.get("/v1/environments", Some(WRONG)).0, 401);
    assert_eq!(
        daemon
            .post("/v1/promotions", Some(WRONG), r#"{"to": "dev"}"#)
            .0,
        401
    );
    assert_eq!(
        daemon
            .post("/v1/promotions", Some(VIEWER), r#"{"to": "dev"}"#)
            .0,
        403
    );
    assert_eq!(
        daemon
            .post("/v1/promotions", Some(DEPLOYER), r#"{"to": "dev"}"#)
            .0,
        409
    );
    assert_eq!(
        daemon.post("/v1/promotions", Some(ADMIN), r#"{"to": 5}"#).0,
        400
    );
    assert_eq!(daemon.post("/v1/reload", Some(APPROVER), "").0, 403);
    assert_eq!(daemon.post("/v1/reload", Some(ADMIN), "").0, 200);
    check(&daemon.log(), "after requests");

    // A run that fails to connect to a database whose URL has the password.
    let (status, created) = daemon.post("/v1/promotions", Some(ADMIN), r#"{"to": "staging"}"#);
    assert_eq!(status, 202, "{created}");
    let staging_run = run_id(&created);
    let run = daemon.wait_run(&staging_run, VIEWER, Duration::from_secs(30), |r| {
        !matches!(
            state_of(r),
            "queued" | "gated" | "locked" | "snapshotted" | "applying" | "verifying"
        )
    });
    assert_ne!(state_of(&run), "succeeded", "{run}");
    assert!(
        !run.to_string().contains(PASSWORD),
        "the run view shows the password: {run}"
    );
    let (_, view) = daemon.get(&format!("/v1/runs/{staging_run}"), Some(ADMIN));
    assert!(
        !view.to_string().contains(PASSWORD),
        "the run's events show the password: {view}"
    );
    let (_, events) = daemon.get("/v1/events", Some(ADMIN));
    assert!(
        !events.to_string().contains(PASSWORD),
        "the audit log shows the password: {events}"
    );
    check(&daemon.log(), "after a failing run");

    // Resuming the halted run (a deployer on staging) connects again and halts again; a
    // token that is only a viewer on staging may not resume or cancel it.
    assert_eq!(state_of(&run), "halted", "{run}");
    let resume = format!("/v1/runs/{staging_run}/resume");
    let cancel = format!("/v1/runs/{staging_run}/cancel");
    assert_refused(
        &daemon.post(&resume, Some(DEPLOYER), ""),
        403,
        "forbidden",
        &["staging"],
    );
    assert_refused(
        &daemon.post(&cancel, Some(VIEWER), "{}"),
        403,
        "forbidden",
        &["staging"],
    );
    assert_refused(
        &daemon.post(&resume, Some(WRONG), ""),
        401,
        "unauthorized",
        &[],
    );
    let (status, resumed) = daemon.post(&resume, Some(APPROVER), "");
    assert_eq!(status, 200, "{resumed}");
    let halts = |r: &Value| {
        r["transitions"]
            .as_array()
            .map_or(0, |t| t.iter().filter(|t| t["name"] == "halted").count())
    };
    let run = daemon.wait_run(&staging_run, VIEWER, Duration::from_secs(30), |r| {
        state_of(r) == "halted" && halts(r) == 2
    });
    assert_eq!(
        run["transitions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["actor"] == "approver")
            .count(),
        1,
        "{run}"
    );
    let (status, cancelled) = daemon.post(&cancel, Some(APPROVER), r#"{"reason": "no database"}"#);
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(state_of(&run_view(&daemon, &staging_run)), "cancelled");
    check(&daemon.log(), "after resuming the failing run");

    let status = daemon.terminate();
    assert_eq!(status.code(), Some(0), "{}", daemon.log());
    let log = daemon.log();
    check(&log, "after SIGTERM");

    // The log is JSON lines and says which runs it is about.
    let mut json_lines = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        if line.starts_with('{') {
            serde_json::from_str::<Value>(line)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            json_lines += 1;
        }
    }
    assert!(json_lines >= 3, "hardly any JSON lines:\n{log}");
    assert!(
        log.contains(&dev_run),
        "the log never mentions run {dev_run}:\n{log}"
    );
    assert!(
        log.contains(&staging_run),
        "the log never mentions run {staging_run}:\n{log}"
    );
}

#[test]
fn malformed_bodies_are_refused_with_a_clear_400_and_change_nothing() {
    let setup = Setup::new("bodies");
    setup.gated_policies();
    let daemon = Daemon::start(&setup.project, &[]);

    let bad_promotions: [(&str, &[&str]); 9] = [
        (r#"{"to": "#, &["request body:", "EOF", "line 1 column"]),
        (
            r#"{"to": 5}"#,
            &[
                "request body:",
                "invalid type: integer `5`, expected a string",
                "line 1 column",
            ],
        ),
        ("{}", &["request body:", "missing field `to`"]),
        ("", &["request body:", "missing field `to`"]),
        (
            r#"{"to":"dev","colour":"red"}"#,
            &["request body:", "unknown field `colour`", "line 1 column"],
        ),
        (
            r#"{"to":"dev","ladder":"yes"}"#,
            &["request body:", "invalid type", "line 1 column"],
        ),
        ("[\"dev\"]", &["request body:"]),
        // The documented body is an object; an array in field order is not it.
        ("[\"dev\", null, false, null]", &["request body:"]),
        (
            "{\"to\": \"dev\"}\n{\"to\": \"dev\"}",
            &["request body:", "trailing characters", "line 2 column"],
        ),
    ];
    for (body, parts) in bad_promotions {
        let answer = daemon.post("/v1/promotions", Some(DEPLOYER), body);
        assert_eq!(answer.0, 400, "body {body:?}: {}", answer.1);
        assert_refused(&answer, 400, "bad_request", parts);
    }
    assert_refused(
        &daemon.post("/v1/promotions", Some(DEPLOYER), r#"{"to": "qa"}"#),
        404,
        "not_found",
        &["unknown environment `qa`", "dev", "staging", "prod"],
    );
    assert_refused(
        &daemon.get("/v1/environments/qa", Some(VIEWER)),
        404,
        "not_found",
        &["unknown environment `qa`", "dev, prod, staging"],
    );
    assert_refused(
        &daemon.post(
            "/v1/environments/qa/rollback",
            Some(ADMIN),
            r#"{"reason": "x"}"#,
        ),
        404,
        "not_found",
        &["`qa`"],
    );
    assert_refused(
        &daemon.post("/v1/environments/dev/rollback", Some(DEPLOYER), "{}"),
        400,
        "bad_request",
        &["`reason` is required"],
    );
    let missing = "00000000-0000-4000-8000-000000000000";
    for (path, body) in [
        (format!("/v1/runs/{missing}/approve"), "{}"),
        (format!("/v1/runs/{missing}/reject"), r#"{"reason": "x"}"#),
        (format!("/v1/runs/{missing}/cancel"), "{}"),
        (format!("/v1/runs/{missing}/resume"), ""),
    ] {
        assert_refused(
            &daemon.post(&path, Some(ADMIN), body),
            404,
            "not_found",
            &[missing],
        );
    }
    assert_refused(
        &daemon.get(&format!("/v1/runs/{missing}"), Some(VIEWER)),
        404,
        "not_found",
        &[missing],
    );
    assert_refused(
        &daemon.get("/v1/nothing-here", Some(VIEWER)),
        404,
        "not_found",
        &[],
    );

    // Bad query strings and wrong methods get the same error shape.
    for path in ["/v1/runs?limit=many", "/v1/events?limit=-1"] {
        assert_refused(
            &daemon.get(path, Some(VIEWER)),
            400,
            "bad_request",
            &["limit"],
        );
    }
    let (status, body) = daemon.get("/v1/promotions", Some(ADMIN));
    assert_eq!(status, 405, "{body}");
    error_message(&body, "method_not_allowed");

    let (status, runs) = daemon.get("/v1/runs", Some(ADMIN));
    assert_eq!(status, 200);
    assert_eq!(
        runs,
        Value::Array(vec![]),
        "malformed requests created a run"
    );
    let log = events(&daemon, ADMIN);
    assert!(
        !log.iter()
            .any(|(a, _, _)| a.starts_with("run.") || a.starts_with("rollback.")),
        "{log:?}"
    );

    // Bodies of decisions on a real, waiting run.
    let (status, created) = daemon.post(
        "/v1/promotions",
        Some(DEPLOYER),
        r#"{"to": "dev", "reason": "r"}"#,
    );
    assert_eq!(status, 202, "{created}");
    let id = run_id(&created);
    wait_state(&daemon, &id, "gated");
    // The run is stored before its transition's event is appended: wait for the event too.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !events(&daemon, ADMIN)
        .iter()
        .any(|(action, _, _)| action == "run.gated")
    {
        assert!(std::time::Instant::now() < deadline, "no run.gated event");
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = events(&daemon, ADMIN).len();
    let bad_decisions: [(&str, &str, &[&str]); 9] = [
        (
            "approve",
            r#"{"comment": 5}"#,
            &[
                "request body:",
                "invalid type: integer `5`, expected a string",
            ],
        ),
        (
            "approve",
            r#"{"comment": "ok", "force": true}"#,
            &["request body:", "unknown field `force`"],
        ),
        (
            "approve",
            "{\"comment\": ",
            &["request body:", "line 1 column"],
        ),
        (
            "reject",
            "{}",
            &["request body:", "`reason` is required to reject"],
        ),
        ("reject", "", &["`reason` is required to reject"]),
        (
            "reject",
            r#"{"reason": "   "}"#,
            &["`reason` is required to reject"],
        ),
        (
            "reject",
            r#"{"reason": ["no"]}"#,
            &["request body:", "invalid type"],
        ),
        (
            "cancel",
            r#"{"reason": 5}"#,
            &["request body:", "invalid type"],
        ),
        (
            "resume",
            r#"{"now": true}"#,
            &["request body:", "unknown field `now`"],
        ),
    ];
    for (action, body, parts) in bad_decisions {
        let answer = daemon.post(&format!("/v1/runs/{id}/{action}"), Some(ADMIN), body);
        assert_eq!(answer.0, 400, "{action} with {body:?}: {}", answer.1);
        assert_refused(&answer, 400, "bad_request", parts);
    }
    let run = run_view(&daemon, &id);
    assert_eq!(state_of(&run), "gated", "{run}");
    assert_eq!(run["approvals"], Value::Array(vec![]), "{run}");
    assert_eq!(
        events(&daemon, ADMIN).len(),
        before,
        "a malformed decision was recorded"
    );
    let (_, runs) = daemon.get("/v1/runs", Some(ADMIN));
    assert_eq!(run_ids(&runs), vec![id]);
    assert_untouched(setup.db("dev"));
}

/// A bad policy: which file to write, its text, and what the error must name.
struct BadPolicy {
    what: &'static str,
    file: &'static str,
    text: &'static str,
    /// Substrings of the error: the file and line, the key.
    expect: &'static [&'static str],
}

const GOOD_DEV: &str = "environment = \"dev\"\n";
const GOOD_STAGING: &str = "environment = \"staging\"\nfrom = \"dev\"\n";
const GOOD_PROD: &str = "environment = \"prod\"\nfrom = \"staging\"\n";

const BAD_POLICIES: [BadPolicy; 4] = [
    BadPolicy {
        what: "a cycle in `from`",
        file: "dev",
        text: "environment = \"dev\"\nfrom = \"prod\"\n",
        expect: &["policies/", ".toml:2", "from", "cycle"],
    },
    BadPolicy {
        what: "`from` naming an unknown environment",
        file: "staging",
        text: "environment = \"staging\"\nauto_promote = true\nfrom = \"qa\"\n",
        expect: &["policies/staging.toml:3", "from", "`qa`"],
    },
    BadPolicy {
        what: "a bad cron line",
        file: "prod",
        text: "environment = \"prod\"\nfrom = \"staging\"\n\n[[windows]]\nname = \"freeze\"\nkind = \"deny\"\n\
               cron = \"every friday\"\nduration = \"1h\"\ntimezone = \"UTC\"\n",
        expect: &["policies/prod.toml:7", "cron", "every friday"],
    },
    BadPolicy {
        what: "a bad duration",
        file: "staging",
        text: "environment = \"staging\"\nfrom = \"dev\"\nsoak = \"soon\"\n",
        expect: &["policies/staging.toml:3", "soak", "soon"],
    },
];

fn good_policies(setup: &Setup) {
    setup.policy("dev", GOOD_DEV);
    setup.policy("staging", GOOD_STAGING);
    setup.policy("prod", GOOD_PROD);
}

#[test]
fn malformed_policies_stop_serve_naming_file_line_and_key() {
    let setup = Setup::new("badpol_start");
    for bad in &BAD_POLICIES {
        good_policies(&setup);
        setup.policy(bad.file, bad.text);
        let (code, output) = serve_expecting_exit(&setup.project, &[]);
        assert_eq!(code, Some(2), "{}: {output}", bad.what);
        for part in bad.expect {
            assert!(
                output.contains(part),
                "{}: `{part}` missing from:\n{output}",
                bad.what
            );
        }
        assert!(
            !output.contains("sluice serving on"),
            "{}: {output}",
            bad.what
        );
    }
    // And with good policies it starts.
    good_policies(&setup);
    let daemon = Daemon::start(&setup.project, &[]);
    let (status, _) = daemon.get("/v1/environments", Some(VIEWER));
    assert_eq!(status, 200);
}

#[test]
fn a_bad_reload_keeps_the_running_configuration_and_a_good_one_replaces_it() {
    let setup = Setup::new("badpol_reload");
    good_policies(&setup);
    let daemon = Daemon::start(&setup.project, &[]);
    let from = |env: &str| {
        let (status, view) = daemon.get(&format!("/v1/environments/{env}"), Some(VIEWER));
        assert_eq!(status, 200, "{view}");
        view["from"].clone()
    };
    let ladder = || {
        let (status, envs) = daemon.get("/v1/environments", Some(VIEWER));
        assert_eq!(status, 200, "{envs}");
        envs.as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap().to_string(),
                    e["from"].clone(),
                    e["auto_promote"].clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    let before = ladder();
    assert_eq!(from("dev"), Value::Null);
    assert_eq!(from("staging"), "dev");
    assert_eq!(from("prod"), "staging");
    let reloads = count_action(&daemon, "config.reloaded");

    for bad in &BAD_POLICIES {
        good_policies(&setup);
        setup.policy(bad.file, bad.text);
        let answer = daemon.post("/v1/reload", Some(ADMIN), "");
        assert_eq!(answer.0, 422, "{}: {}", bad.what, answer.1);
        let message = error_message(&answer.1, "invalid_config");
        for part in bad.expect {
            assert!(
                message.contains(part),
                "{}: `{part}` missing from `{message}`",
                bad.what
            );
        }
        assert_eq!(
            ladder(),
            before,
            "{}: the daemon changed its configuration",
            bad.what
        );
        assert_eq!(
            count_action(&daemon, "config.reloaded"),
            reloads,
            "{}",
            bad.what
        );
    }

    // A non-admin is refused before the files are read.
    assert_eq!(daemon.post("/v1/reload", Some(APPROVER), "").0, 403);

    // Fixed, and changed: prod is now fed from dev, staging is an entry point.
    setup.policy("dev", GOOD_DEV);
    setup.policy("staging", "environment = \"staging\"\n");
    setup.policy(
        "prod",
        "environment = \"prod\"\nfrom = \"dev\"\nauto_promote = true\n",
    );
    let (status, reloaded) = daemon.post("/v1/reload", Some(ADMIN), "");
    assert_eq!(status, 200, "{reloaded}");
    assert_eq!(count_action(&daemon, "config.reloaded"), reloads + 1);
    assert_eq!(from("staging"), Value::Null);
    assert_eq!(from("prod"), "dev");
    let (_, prod) = daemon.get("/v1/environments/prod", Some(VIEWER));
    assert_eq!(prod["auto_promote"], true, "{prod}");
}
