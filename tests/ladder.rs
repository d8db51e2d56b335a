//! The promotion daemon end to end on real PostgreSQL with pg-template snapshots: a release
//! moving dev → staging → prod through soak, approval and window gates; a failing health check
//! rolled back by snapshot and by down scripts; two requests at once; two daemons on one store;
//! a run halted by drift and the periodic drift scan.

mod common;

use std::time::Duration;

use chrono::{Timelike, Utc};
use common::daemon::*;
use common::ladder::*;
use common::slack::SlackServer;
use common::*;
use serde_json::Value;

fn history_rows(db: &TestDb) -> String {
    db.psql_try(
        "SELECT migration_name, finished_at IS NOT NULL, rolled_back_at IS NOT NULL \
         FROM _prisma_migrations ORDER BY started_at, migration_name",
    )
    .unwrap_or_else(|e| format!("no history table: {e}"))
}

fn snapshot_count(db: &TestDb) -> i64 {
    db.psql_i64(&format!(
        "SELECT count(*) FROM pg_database WHERE starts_with(datname, '{}_snap_')",
        db.name
    ))
}

fn waiting_for(run: &Value) -> Vec<String> {
    run["state"]["waiting_for"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn gate_kinds(run: &Value) -> Vec<String> {
    waiting_for(run)
        .iter()
        .map(|g| g.split(':').next().unwrap_or("").to_string())
        .collect()
}

fn only_run(daemon: &Daemon, env: &str, done: impl Fn(&Value) -> bool) -> Value {
    let runs = daemon.wait_runs(env, DEPLOYER, Duration::from_secs(120), |runs| {
        runs.len() == 1 && done(&runs[0])
    });
    runs[0].clone()
}

#[test]
fn a_release_climbs_the_ladder_through_soak_approval_and_window() {
    let ladder = Ladder::new("climb", &[]);
    ladder.policy("dev", "environment = \"dev\"\n");
    ladder.policy(
        "staging",
        "environment = \"staging\"\nfrom = \"dev\"\nauto_promote = true\nsoak = \"3s\"\n",
    );
    // A deny window that started when the test started and lasts 40 seconds.
    let now = Utc::now();
    ladder.policy(
        "prod",
        &format!(
            "environment = \"prod\"\nfrom = \"staging\"\nauto_promote = true\nsoak = \"1s\"\n\
             [approvals]\nrequired = 1\nfrom = [\"alice\"]\n\
             [[windows]]\nname = \"test freeze\"\nkind = \"deny\"\ncron = \"{} {} {} * * *\"\nduration = \"40s\"\ntimezone = \"UTC\"\n",
            now.second(),
            now.minute(),
            now.hour()
        ),
    );
    let daemon = Daemon::start(&ladder.project, &[]);

    let (status, created) = daemon.post(
        "/v1/promotions",
        Some(DEPLOYER),
        r#"{"to": "dev", "reason": "ship it"}"#,
    );
    assert_eq!(status, 202, "{created}");
    let dev_run = created[0]["id"].as_str().unwrap().to_string();
    let dev = daemon.wait_run(&dev_run, DEPLOYER, Duration::from_secs(60), |r| {
        state_of(r) == "succeeded"
    });
    assert_eq!(dev["applied"].as_array().unwrap().len(), 3, "{dev}");

    // staging: created by auto_promote, held by the soak gate, then opened by time.
    let staging = only_run(&daemon, "staging", |r| state_of(r) == "gated");
    assert_eq!(gate_kinds(&staging), ["soak"], "{staging}");
    let staging_id = staging["id"].as_str().unwrap().to_string();
    let staging = daemon.wait_run(&staging_id, DEPLOYER, Duration::from_secs(60), |r| {
        state_of(r) == "succeeded"
    });
    let states: Vec<&str> = staging["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        [
            "queued",
            "gated",
            "locked",
            "snapshotted",
            "applying",
            "applying",
            "applying",
            "verifying",
            "succeeded"
        ],
        "{staging}"
    );

    // prod: held by the approval and the deny window.
    let prod = only_run(&daemon, "prod", |r| {
        state_of(r) == "gated" && gate_kinds(r).contains(&"approval".to_string())
    });
    assert!(gate_kinds(&prod).contains(&"window".to_string()), "{prod}");
    assert!(
        waiting_for(&prod).iter().any(|g| g.contains("test freeze")),
        "{prod}"
    );
    let prod_id = prod["id"].as_str().unwrap().to_string();
    assert!(ladder
        .db("prod")
        .psql_try("SELECT 1 FROM _prisma_migrations")
        .is_err());

    // The requester (sluice itself, by auto_promote) is not alice; a deployer cannot approve.
    let (status, refused) =
        daemon.post(&format!("/v1/runs/{prod_id}/approve"), Some(DEPLOYER), "{}");
    assert_eq!(status, 403, "{refused}");
    let (status, approved) = daemon.post(
        &format!("/v1/runs/{prod_id}/approve"),
        Some(ALICE),
        r#"{"comment": "looks good"}"#,
    );
    assert_eq!(status, 200, "{approved}");

    // The approval gate opens; the window still holds the run.
    let prod = daemon.wait_run(&prod_id, DEPLOYER, Duration::from_secs(30), |r| {
        state_of(r) == "gated" && gate_kinds(r) == ["window"]
    });
    assert_eq!(prod["approvals"][0]["by"], "alice");
    assert!(ladder
        .db("prod")
        .psql_try("SELECT 1 FROM _prisma_migrations")
        .is_err());

    // The window ends 40 s after the test began; then prod runs.
    let prod = daemon.wait_run(&prod_id, DEPLOYER, Duration::from_secs(90), |r| {
        state_of(r) == "succeeded"
    });
    assert_eq!(prod["applied"].as_array().unwrap().len(), 3);

    for (name, db) in &ladder.dbs {
        assert_eq!(
            history_rows(db),
            format!("{M1}|t|f\n{M2}|t|f\n{M3}|t|f"),
            "history of {name}"
        );
        assert_eq!(snapshot_count(db), 1, "one snapshot of {name}");
        assert_eq!(
            db.psql("SELECT string_agg(enumlabel, ',' ORDER BY enumsortorder) FROM pg_enum"),
            "new,paid"
        );
    }
    let (status, envs) = daemon.get("/v1/environments", Some(DEPLOYER));
    assert_eq!(status, 200);
    let release = dev["release"].as_str().unwrap();
    for env in envs.as_array().unwrap() {
        assert_eq!(env["release"], release, "{env}");
        assert_eq!(env["healthy"], true, "{env}");
    }
    let (_, events) = daemon.get(&format!("/v1/runs/{prod_id}"), Some(DEPLOYER));
    let actions: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"run.approved"), "{actions:?}");
    assert!(actions.contains(&"snapshot.created"), "{actions:?}");
    let (status, metrics) = daemon.get("/metrics", None);
    assert_eq!(status, 200);
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    assert!(
        metrics.contains("sluice_runs_finished_total{state=\"succeeded\"} 3"),
        "{metrics}"
    );
}

/// A health check that fails after staging migrates: staging is put back by the ladder's
/// method, prod is never touched, and the run says why.
fn failing_health_check_rolls_back(method: &str) {
    let failing = "[[health]]\nname = \"orders-have-status\"\nkind = \"sql\"\n\
                   query = \"SELECT count(*) FROM orders WHERE status = 'paid'\"\nexpect = 1\n\
                   interval = \"50ms\"\ncount = 2\n";
    let ladder = Ladder::new(&format!("hc_{method}"), &[("staging", failing)]);
    let on_failure = if method == "down" {
        "[\"down\", \"snapshot\"]"
    } else {
        "[\"snapshot\"]"
    };
    ladder.policy("dev", "environment = \"dev\"\n");
    ladder.policy(
        "staging",
        &format!("environment = \"staging\"\nfrom = \"dev\"\nauto_promote = true\n[rollback]\non_failure = {on_failure}\n"),
    );
    ladder.policy(
        "prod",
        "environment = \"prod\"\nfrom = \"staging\"\nauto_promote = true\n",
    );
    // staging already holds data the run must not lose.
    let staging = ladder.db("staging");
    staging.psql("CREATE TABLE keepme (id int PRIMARY KEY, note text); INSERT INTO keepme VALUES (1, 'precious')");
    let before_full = staging.full_dump();
    let before_history = history_rows(staging);

    let daemon = Daemon::start(&ladder.project, &[]);
    let (status, created) = daemon.post("/v1/promotions", Some(DEPLOYER), r#"{"to": "dev"}"#);
    assert_eq!(status, 202, "{created}");
    let run = only_run(&daemon, "staging", |r| {
        state_of(r) == "rolled_back" || state_of(r) == "halted"
    });
    assert_eq!(state_of(&run), "rolled_back", "{run}");
    assert_eq!(run["state"]["method"], method, "{run}");
    let reason = run["state"]["reason"].as_str().unwrap();
    assert!(reason.contains("orders-have-status"), "{reason}");
    assert_eq!(run["health"], "failed");
    let detail = daemon
        .get(
            &format!("/v1/runs/{}", run["id"].as_str().unwrap()),
            Some(DEPLOYER),
        )
        .1;
    assert!(!detail["measurements"].as_array().unwrap().is_empty());

    assert_eq!(
        staging.full_dump(),
        before_full,
        "staging's schema and data are as before the run"
    );
    match method {
        "snapshot" => {
            assert_eq!(history_rows(staging), before_history);
            assert_eq!(
                staging.psql_i64(&format!(
                    "SELECT count(*) FROM pg_database WHERE starts_with(datname, '{}_failed_')",
                    staging.name
                )),
                1,
                "the replaced state is kept"
            );
        }
        _ => assert_eq!(
            history_rows(staging),
            format!("{M1}|t|t\n{M2}|t|t\n{M3}|t|t"),
            "each migration is recorded as applied, then rolled back"
        ),
    }
    // prod is never touched: no run, no history table.
    let (_, prod_runs) = daemon.get("/v1/runs?environment=prod", Some(DEPLOYER));
    assert_eq!(prod_runs.as_array().unwrap().len(), 0, "{prod_runs}");
    assert!(ladder
        .db("prod")
        .psql_try("SELECT 1 FROM _prisma_migrations")
        .is_err());

    let (_, view) = daemon.get(
        &format!("/v1/runs/{}", run["id"].as_str().unwrap()),
        Some(DEPLOYER),
    );
    let actions: Vec<&str> = view["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for expected in ["health.checked", "run.rolling_back", "run.rolled_back"] {
        assert!(
            actions.contains(&expected),
            "{expected} missing from {actions:?}"
        );
    }
    let (_, staging_env) = daemon.get("/v1/environments/staging", Some(DEPLOYER));
    assert_eq!(staging_env["release"], Value::Null, "{staging_env}");
}

#[test]
fn a_failing_health_check_rolls_staging_back_from_its_snapshot() {
    failing_health_check_rolls_back("snapshot");
}

#[test]
fn a_failing_health_check_rolls_staging_back_with_down_scripts() {
    failing_health_check_rolls_back("down");
}

#[test]
fn two_requests_for_one_environment_make_one_run_and_a_second_daemon_is_refused() {
    let ladder = Ladder::new("twice", &[]);
    ladder.policy("dev", "environment = \"dev\"\n[approvals]\nrequired = 1\n");
    let daemon = Daemon::start(&ladder.project, &[]);
    let base = daemon.base.clone();
    let send = |base: String| {
        std::thread::spawn(move || {
            let response = reqwest::blocking::Client::new()
                .post(format!("{base}/v1/promotions"))
                .bearer_auth(DEPLOYER)
                .header("content-type", "application/json")
                .body(r#"{"to": "dev"}"#)
                .send()
                .unwrap();
            (response.status().as_u16(), response.text().unwrap())
        })
    };
    let (a, b) = (send(base.clone()), send(base));
    let mut answers = vec![a.join().unwrap(), b.join().unwrap()];
    answers.sort();
    assert_eq!(answers[0].0, 202, "{answers:?}");
    assert_eq!(answers[1].0, 409, "{answers:?}");
    assert!(answers[1].1.contains("already brings `dev`"), "{answers:?}");
    let (_, runs) = daemon.get("/v1/runs?environment=dev", Some(DEPLOYER));
    assert_eq!(runs.as_array().unwrap().len(), 1, "{runs}");

    let (code, log) = serve_expecting_exit(&ladder.project, &[]);
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("held by another sluice process"), "{log}");
}

#[test]
fn a_held_lock_halts_the_run_and_resume_finishes_it_then_rollback_undoes_it() {
    let ladder = Ladder::new("resume", &[]);
    ladder.policy(
        "dev",
        "environment = \"dev\"\n[rollback]\non_failure = [\"down\", \"snapshot\"]\n",
    );
    let env_file = ladder.project.env_file("dev");
    // No snapshot: the session holding the lock would block a template copy before the lock
    // is even tried; the lock is what this test is about.
    let text = std::fs::read_to_string(&env_file)
        .unwrap()
        .replace("lock_timeout = \"5s\"", "lock_timeout = \"1s\"")
        .replace("[snapshot]\nprovider = \"pg-template\"\n", "");
    std::fs::write(&env_file, text).unwrap();
    let dev = ladder.db("dev");

    // Another deploy holds Prisma's migration lock on dev.
    let mut holder = std::process::Command::new(dev.server().bin("psql"))
        .args([
            "-X",
            "-q",
            "-d",
            &dev.url,
            "-c",
            "SELECT pg_advisory_lock(72707369)",
            "-c",
            "SELECT pg_sleep(600)",
        ])
        .env("PGAPPNAME", "lockholder")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while dev.psql_i64("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted") == 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the lock holder never got the lock"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let daemon = Daemon::start(&ladder.project, &[]);
    let (status, created) = daemon.post("/v1/promotions", Some(DEPLOYER), r#"{"to": "dev"}"#);
    assert_eq!(status, 202, "{created}");
    let id = created[0]["id"].as_str().unwrap().to_string();
    let halted = daemon.wait_run(&id, DEPLOYER, Duration::from_secs(60), |r| {
        state_of(r) == "halted"
    });
    let reason = halted["state"]["reason"].as_str().unwrap();
    assert!(reason.contains("nothing was applied"), "{reason}");
    assert!(
        reason.contains("lockholder"),
        "the error names who holds the lock: {reason}"
    );
    assert!(
        dev.psql_try("SELECT 1 FROM _prisma_migrations")
            .map(|_| ())
            .is_err()
            || history_rows(dev).is_empty()
    );
    // A halted run keeps the environment: a new promotion waits behind it.
    let (_, env) = daemon.get("/v1/environments/dev", Some(DEPLOYER));
    assert_eq!(env["active_run"]["id"], id.as_str(), "{env}");

    dev.psql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = 'lockholder' AND datname = current_database()",
    );
    let _ = holder.kill();
    let _ = holder.wait();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while dev.psql_i64("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the killed holder's lock never went away"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, resumed) = daemon.post(&format!("/v1/runs/{id}/resume"), Some(DEPLOYER), "");
    assert_eq!(status, 200, "{resumed}");
    let done = daemon.wait_run(&id, DEPLOYER, Duration::from_secs(60), |r| {
        state_of(r) == "succeeded"
    });
    assert_eq!(done["applied"].as_array().unwrap().len(), 3);
    let (status, again) = daemon.post(&format!("/v1/runs/{id}/resume"), Some(DEPLOYER), "");
    assert_eq!(status, 409, "a finished run cannot be resumed: {again}");

    // Roll dev back by request: down scripts (the policy's first method), history kept.
    let (status, rollback) = daemon.post(
        "/v1/environments/dev/rollback",
        Some(DEPLOYER),
        r#"{"reason": "bad release"}"#,
    );
    assert_eq!(status, 202, "{rollback}");
    let rollback_id = rollback["id"].as_str().unwrap().to_string();
    let rolled = daemon.wait_run(&rollback_id, DEPLOYER, Duration::from_secs(60), |r| {
        state_of(r) == "rolled_back"
    });
    assert_eq!(rolled["state"]["method"], "down", "{rolled}");
    assert_eq!(rolled["rolls_back"], id.as_str());
    assert_eq!(history_rows(dev), format!("{M1}|t|t\n{M2}|t|t\n{M3}|t|t"));
    assert!(
        dev.psql_try("SELECT 1 FROM users").is_err(),
        "the tables are gone again"
    );
    let (_, env) = daemon.get("/v1/environments/dev", Some(DEPLOYER));
    assert_eq!(env["release"], Value::Null, "{env}");
    assert!(env["active_run"].is_null(), "{env}");
    let (status, refused) = daemon.post(
        "/v1/environments/dev/rollback",
        Some(DEPLOYER),
        r#"{"reason": "again"}"#,
    );
    assert_eq!(status, 409, "nothing left to roll back: {refused}");
}

#[test]
fn the_openapi_document_lists_exactly_the_routes_served() {
    let ladder = Ladder::new("openapi", &[]);
    ladder.policy("dev", "environment = \"dev\"\n[approvals]\nrequired = 1\n");
    let daemon = Daemon::start(&ladder.project, &[]);
    let (_, created) = daemon.post("/v1/promotions", Some(DEPLOYER), r#"{"to": "dev"}"#);
    let run_id = created[0]["id"].as_str().unwrap().to_string();
    let (status, doc) = daemon.get("/v1/openapi.json", None);
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.0.3");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 15, "{paths:?}");
    let client = reqwest::blocking::Client::new();
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            let url = format!(
                "{}{}",
                daemon.base,
                path.replace("{env}", "dev").replace("{id}", &run_id)
            );
            let request = match method.as_str() {
                "get" => client.get(&url),
                "post" => client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body("{}"),
                other => panic!("unexpected method {other}"),
            };
            let response = request.bearer_auth("not-a-token").send().unwrap();
            let status = response.status().as_u16();
            let body = response.text().unwrap();
            assert!(
                !body.contains("no such endpoint"),
                "{method} {path} is documented but not served ({status})"
            );
        }
    }
    let (status, body) = daemon.get("/v1/nothing-here", Some(DEPLOYER));
    assert_eq!(status, 404);
    assert!(body.to_string().contains("no such endpoint"), "{body}");
}

#[test]
fn a_new_release_is_noticed_and_a_newer_request_replaces_a_waiting_one() {
    let ladder = Ladder::new("replace", &[]);
    ladder.policy("dev", "environment = \"dev\"\n[approvals]\nrequired = 1\n");
    let toml = ladder.project.path().join("sluice.toml");
    let text = std::fs::read_to_string(&toml)
        .unwrap()
        .replace("watch_interval = \"0s\"", "watch_interval = \"200ms\"");
    std::fs::write(&toml, text).unwrap();
    let daemon = Daemon::start(&ladder.project, &[]);
    let (_, releases) = daemon.get("/v1/releases", Some(DEPLOYER));
    let first = releases["head"].as_str().unwrap().to_string();
    let (status, created) = daemon.post("/v1/promotions", Some(DEPLOYER), r#"{"to": "dev"}"#);
    assert_eq!(status, 202, "{created}");
    let old_run = created[0]["id"].as_str().unwrap().to_string();
    daemon.wait_run(&old_run, DEPLOYER, Duration::from_secs(30), |r| {
        state_of(r) == "gated"
    });

    // A fourth migration lands; the watcher records the new head.
    ladder
        .project
        .add_migration("20240104000000_more", "CREATE TABLE more (id int);\n");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let second = loop {
        let (_, releases) = daemon.get("/v1/releases", Some(DEPLOYER));
        let head = releases["head"].as_str().unwrap().to_string();
        if head != first {
            assert_eq!(
                releases["releases"].as_array().unwrap().len(),
                2,
                "{releases}"
            );
            break head;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new head was never noticed"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let (_, events) = daemon.get("/v1/events", Some(DEPLOYER));
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "release.recorded" && e["detail"]["source"] == "watch"),
        "{events}"
    );
    // POST /v1/releases finds nothing newer now.
    let (status, scan) = daemon.post("/v1/releases", Some(DEPLOYER), "");
    assert_eq!(
        (status, scan["new"].clone()),
        (200, Value::Bool(false)),
        "{scan}"
    );

    let (status, created) = daemon.post(
        "/v1/promotions",
        Some(DEPLOYER),
        r#"{"to": "dev", "reason": "newer"}"#,
    );
    assert_eq!(status, 202, "{created}");
    assert_eq!(created[0]["release"], second.as_str());
    let (_, old) = daemon.get(&format!("/v1/runs/{old_run}"), Some(DEPLOYER));
    assert_eq!(state_of(&old), "cancelled", "{old}");
    assert!(
        old["state"]["reason"]
            .as_str()
            .unwrap()
            .contains("replaced by run"),
        "{old}"
    );
    let (_, runs) = daemon.get("/v1/runs?environment=dev", Some(DEPLOYER));
    let waiting: Vec<_> = runs
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| state_of(r) == "gated" || state_of(r) == "queued")
        .collect();
    assert_eq!(waiting.len(), 1, "{runs}");
    assert!(
        ladder
            .db("dev")
            .psql_try("SELECT 1 FROM _prisma_migrations")
            .is_err(),
        "nothing ran"
    );
}

#[test]
fn a_schedule_in_the_daemon_promotes_once_and_then_finds_nothing_to_do() {
    let ladder = Ladder::new("scheduled", &[]);
    ladder.policy(
        "dev",
        "environment = \"dev\"\nschedule = \"*/2 * * * * *\"\n",
    );
    let daemon = Daemon::start(&ladder.project, &[]);
    let runs = daemon.wait_runs("dev", DEPLOYER, Duration::from_secs(60), |runs| {
        runs.iter().any(|r| state_of(r) == "succeeded")
    });
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["origin"]["via"], "schedule");
    assert_eq!(runs[0]["requested_by"], "schedule");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let actions = loop {
        let (_, events) = daemon.get("/v1/events?environment=dev", Some(DEPLOYER));
        let actions: Vec<String> = events
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["action"].as_str().unwrap().to_string())
            .filter(|a| a.starts_with("schedule."))
            .collect();
        if actions.iter().any(|a| a == "schedule.skipped") || std::time::Instant::now() > deadline {
            break actions;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(actions[0], "schedule.armed", "{actions:?}");
    assert_eq!(
        actions.iter().filter(|a| *a == "schedule.fired").count(),
        1,
        "{actions:?}"
    );
    assert!(
        actions.iter().any(|a| a == "schedule.skipped"),
        "{actions:?}"
    );
    let (_, runs) = daemon.get("/v1/runs?environment=dev", Some(DEPLOYER));
    assert_eq!(runs.as_array().unwrap().len(), 1, "one run for one release");
}

#[test]
fn lint_findings_block_a_run_or_make_it_wait_for_an_approval_as_the_policy_says() {
    let ladder = Ladder::new("lintgate", &[]);
    ladder.policy(
        "dev",
        "environment = \"dev\"\nlint = { require_approval = [\"drop-column\"] }\n",
    );
    ladder.policy(
        "staging",
        "environment = \"staging\"\nlint = { block = [\"drop-column\"] }\n",
    );
    add_migration_with_down(
        &ladder.project,
        "20240104000000_drop_email",
        "ALTER TABLE users DROP COLUMN email;\n",
        "ALTER TABLE users ADD COLUMN email text;\n",
    );
    let daemon = Daemon::start(&ladder.project, &[]);

    let (status, created) = daemon.post("/v1/promotions", Some(DEPLOYER), r#"{"to": "dev"}"#);
    assert_eq!(status, 202, "{created}");
    let dev = only_run(&daemon, "dev", |r| state_of(r) == "gated");
    let gates = waiting_for(&dev);
    assert_eq!(gate_kinds(&dev), ["approval"], "{gates:?}");
    assert!(
        gates[0].contains("lint findings drop-column at 20240104000000_drop_email:1"),
        "{gates:?}"
    );
    let id = dev["id"].as_str().unwrap();
    let (status, _) = daemon.post(&format!("/v1/runs/{id}/approve"), Some(ALICE), "{}");
    assert_eq!(status, 200);
    daemon.wait_run(id, DEPLOYER, Duration::from_secs(60), |r| {
        state_of(r) == "succeeded"
    });
    assert_eq!(ladder.db("dev").psql("SELECT count(*) FROM information_schema.columns WHERE table_name = 'users' AND column_name = 'email'"), "0");

    let (status, created) = daemon.post("/v1/promotions", Some(DEPLOYER), r#"{"to": "staging"}"#);
    assert_eq!(status, 202, "{created}");
    let staging = only_run(&daemon, "staging", |r| state_of(r) == "gated");
    let gates = waiting_for(&staging);
    assert_eq!(gate_kinds(&staging), ["lint"], "{gates:?}");
    assert!(
        gates[0].contains("the policy blocks drop-column"),
        "{gates:?}"
    );
    let id = staging["id"].as_str().unwrap();
    let (status, _) = daemon.post(&format!("/v1/runs/{id}/approve"), Some(ALICE), "{}");
    assert_eq!(status, 200);
    std::thread::sleep(Duration::from_millis(500));
    let (_, still) = daemon.get(&format!("/v1/runs/{id}"), Some(DEPLOYER));
    assert_eq!(
        state_of(&still),
        "gated",
        "an approval does not lift a block: {still}"
    );
    assert!(
        ladder
            .db("staging")
            .psql_try("SELECT 1 FROM _prisma_migrations")
            .is_err(),
        "staging untouched"
    );
}

/// Appends to a file of the project (an environment's `[drift]`, sluice.toml's `[[notify]]`).
fn append(path: &std::path::Path, text: &str) {
    let mut existing = std::fs::read_to_string(path).unwrap();
    existing.push_str(text);
    std::fs::write(path, existing).unwrap();
}

/// The actions of an environment's events, oldest first, with their details.
fn events_of(daemon: &Daemon, env: &str) -> Vec<Value> {
    let (_, events) = daemon.get(&format!("/v1/events?environment={env}"), Some(DEPLOYER));
    events.as_array().cloned().unwrap_or_default()
}

fn wait_for_event(
    daemon: &Daemon,
    env: &str,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let events = events_of(daemon, env);
        if done(&events) {
            return events;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}; events: {events:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn count_action(events: &[Value], action: &str) -> usize {
    events.iter().filter(|e| e["action"] == action).count()
}

/// A ladder whose dev has `dev_policy` (one line), builds its expected schema in scratch
/// databases, and notifies a recording webhook (`notify_extra`: more keys of the sink).
fn drift_ladder(prefix: &str, dev_policy: &str, notify_extra: &str) -> (Ladder, SlackServer) {
    let sink = SlackServer::start();
    let ladder = Ladder::new(prefix, &[]);
    ladder.policy("dev", &format!("environment = \"dev\"\n{dev_policy}\n"));
    append(
        &ladder.project.env_file("dev"),
        "\n[drift]\nscratch_databases = true\n",
    );
    append(
        &ladder.project.path().join("sluice.toml"),
        &format!(
            "\n[[notify]]\nname = \"ops\"\nkind = \"webhook\"\nurl = \"{}/hook/ops\"\n{notify_extra}",
            sink.base
        ),
    );
    (ladder, sink)
}

#[test]
fn drift_blocks_a_run_with_the_diff_in_the_event_log_and_the_notification() {
    let (ladder, sink) = drift_ladder("driftblock", "drift = \"block\"", "");
    ladder
        .project
        .run_ok(&["apply", "--env", "dev", "--to", M1]);
    ladder
        .db("dev")
        .psql("ALTER TABLE users ADD COLUMN hack integer;");
    let daemon = Daemon::start(&ladder.project, &[]);

    let (status, created) = daemon.post("/v1/promotions", Some(DEPLOYER), r#"{"to": "dev"}"#);
    assert_eq!(status, 202, "{created}");
    let run = only_run(&daemon, "dev", |r| state_of(r) == "halted");
    let reason = run["state"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("`dev` drifted: 1 difference(s)"), "{run}");
    assert!(reason.contains("column hack"), "{run}");
    assert!(
        ladder.db("dev").psql_try("SELECT 1 FROM orders").is_err(),
        "nothing was applied"
    );
    assert!(run["snapshot"].is_null(), "no snapshot was taken: {run}");

    let events = events_of(&daemon, "dev");
    let detected: Vec<&Value> = events
        .iter()
        .filter(|e| e["action"] == "drift.detected")
        .collect();
    assert_eq!(detected.len(), 1, "{events:#?}");
    assert_eq!(detected[0]["run_id"], run["id"]);
    let diff = detected[0]["detail"]["diff"].as_str().unwrap_or_default();
    assert!(
        diff.contains("table public.users:") && diff.contains("- column hack"),
        "{diff}"
    );
    let differences = detected[0]["detail"]["report"]["differences"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(differences.len(), 1, "{differences:?}");
    assert_eq!(differences[0]["name"], "public.users.hack");

    let calls = sink.wait_for("the drift notification", Duration::from_secs(20), |calls| {
        calls
            .iter()
            .any(|c| c.kind == "hook/ops" && c.body["event"] == "drift.detected")
            && calls
                .iter()
                .any(|c| c.kind == "hook/ops" && c.body["event"] == "run.halted")
    });
    let notice = calls
        .iter()
        .find(|c| c.body["event"] == "drift.detected")
        .unwrap();
    assert_eq!(notice.body["environment"], "dev");
    assert_eq!(notice.body["run_id"], run["id"]);
    assert!(
        notice.body["text"]
            .as_str()
            .unwrap_or_default()
            .contains("- column hack"),
        "{}",
        notice.body
    );

    // The API checks on demand: the same difference, in words and as data.
    let (status, report) = daemon.post("/v1/environments/dev/drift", Some(DEPLOYER), "");
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        report["differences"].as_array().map(Vec::len),
        Some(1),
        "{report}"
    );
    assert!(
        report["diff"]
            .as_str()
            .unwrap_or_default()
            .contains("- column hack"),
        "{report}"
    );
    assert_eq!(
        report["expected"], "cache",
        "the run's check cached the expected schema"
    );

    // Put the database back as its migrations say, then resume: the check passes and the run
    // goes through.
    ladder.db("dev").psql("ALTER TABLE users DROP COLUMN hack;");
    let id = run["id"].as_str().unwrap();
    let (status, body) = daemon.post(&format!("/v1/runs/{id}/resume"), Some(DEPLOYER), "{}");
    assert_eq!(status, 200, "{body}");
    daemon.wait_run(id, DEPLOYER, Duration::from_secs(60), |r| {
        state_of(r) == "succeeded"
    });
    let events = events_of(&daemon, "dev");
    assert_eq!(count_action(&events, "drift.checked"), 1, "{events:#?}");
    assert_eq!(ladder.db("dev").psql("SELECT count(*) FROM orders"), "0");
}

#[test]
fn a_drift_scan_records_every_look_and_announces_only_changes() {
    let (ladder, sink) = drift_ladder(
        "driftscan",
        "drift_scan = { schedule = \"* * * * * *\" }",
        "events = [\"drift.detected\", \"drift.resolved\"]\n",
    );
    ladder
        .project
        .run_ok(&["apply", "--env", "dev", "--to", M2]);
    let daemon = Daemon::start(&ladder.project, &[]);

    wait_for_event(&daemon, "dev", "two clean scans", |events| {
        count_action(events, "drift.scanned") >= 2
    });
    ladder
        .db("dev")
        .psql("CREATE INDEX orders_user_idx ON orders (user_id);");
    sink.wait_for("drift.detected", Duration::from_secs(30), |calls| {
        calls.iter().any(|c| c.body["event"] == "drift.detected")
    });
    let seen = count_action(&events_of(&daemon, "dev"), "drift.scanned");
    wait_for_event(&daemon, "dev", "three more scans", |events| {
        count_action(events, "drift.scanned") >= seen + 3
    });
    let detected: Vec<_> = sink
        .calls()
        .into_iter()
        .filter(|c| c.body["event"] == "drift.detected")
        .collect();
    assert_eq!(detected.len(), 1, "the same drift is announced once");
    assert!(
        detected[0].body["text"]
            .as_str()
            .unwrap_or_default()
            .contains("index orders_user_idx"),
        "{}",
        detected[0].body
    );

    let (status, last) = daemon.get("/v1/environments/dev/drift", Some(DEPLOYER));
    assert_eq!(status, 200, "{last}");
    assert_eq!(last["last_scan"]["differences"], 1, "{last}");
    let (_, view) = daemon.get("/v1/environments/dev", Some(DEPLOYER));
    assert_eq!(view["drift"]["differences"], 1, "{view}");

    ladder.db("dev").psql("DROP INDEX orders_user_idx;");
    sink.wait_for("drift.resolved", Duration::from_secs(30), |calls| {
        calls.iter().any(|c| c.body["event"] == "drift.resolved")
    });
    let events = events_of(&daemon, "dev");
    assert!(
        events
            .iter()
            .any(|e| e["action"] == "drift.scanned" && e["detail"]["changed"] == true),
        "{events:#?}"
    );
    assert_eq!(
        sink.calls().len(),
        2,
        "only the two changes were announced: {:?}",
        sink.calls()
            .iter()
            .map(|c| c.body["event"].clone())
            .collect::<Vec<_>>()
    );
}

/// Item 14: a failing health check says why — the missing table and the wrong value — in the
/// run's reason, the `health.checked` event, `sluice run ID` and the notification, not only
/// which limit the failures exceeded.
#[test]
fn item14_a_failing_health_check_says_why_in_the_run_its_event_sluice_run_and_the_notification() {
    let failing = "[[health]]\nname = \"documents\"\nkind = \"schema\"\n\
                   tables = [\"users\", \"Document\"]\ninterval = \"20ms\"\ncount = 3\nfailure_limit = 2\n\
                   [[health]]\nname = \"orders\"\nkind = \"sql\"\n\
                   query = \"SELECT count(*) FROM orders\"\nexpect = 3\n";
    let sink = SlackServer::start();
    let ladder = Ladder::new("hcwhy", &[("dev", failing)]);
    ladder.policy(
        "dev",
        "environment = \"dev\"\n[rollback]\non_failure = [\"snapshot\"]\n",
    );
    append(
        &ladder.project.path().join("sluice.toml"),
        &format!(
            "\n[[notify]]\nname = \"ops\"\nkind = \"webhook\"\nurl = \"{}/hook/ops\"\n",
            sink.base
        ),
    );
    let daemon = Daemon::start(&ladder.project, &[]);
    let (status, created) = daemon.post("/v1/promotions", Some(DEPLOYER), r#"{"to": "dev"}"#);
    assert_eq!(status, 202, "{created}");
    let run = only_run(&daemon, "dev", |r| {
        state_of(r) == "rolled_back" || state_of(r) == "halted"
    });
    assert_eq!(state_of(&run), "rolled_back", "{run}");
    let schema_why = "`documents` failed: table `Document` is missing (3 of 3 measurements)";
    let sql_why = "`orders` failed: expected 3, got 0 (1 of 1 measurement)";
    let reason = run["state"]["reason"].as_str().unwrap_or_default();
    for why in [schema_why, sql_why] {
        assert!(
            reason.contains(why),
            "`{why}` missing from the reason: {reason}"
        );
    }

    let id = run["id"].as_str().unwrap_or_default();
    let (_, view) = daemon.get(&format!("/v1/runs/{id}"), Some(DEPLOYER));
    let checked: Vec<&Value> = view["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter(|e| e["action"] == "health.checked")
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(checked.len(), 1, "{view}");
    let summary = checked[0]["detail"]["summary"].as_str().unwrap_or_default();
    for why in [schema_why, sql_why] {
        assert!(
            summary.contains(why),
            "`{why}` missing from the event: {summary}"
        );
    }

    let out = ladder.project.run(&[
        "run",
        id,
        "--server",
        &daemon.base,
        "--token-file",
        &write_token_file(&ladder.project, DEPLOYER)
            .display()
            .to_string(),
    ]);
    assert_success(&out);
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    let state_line = printed
        .lines()
        .find(|l| l.starts_with("state: "))
        .unwrap_or_default();
    assert!(state_line.contains(schema_why), "{printed}");
    let event_line = printed
        .lines()
        .find(|l| l.contains("health.checked"))
        .unwrap_or_default();
    assert!(
        event_line.contains(schema_why) && event_line.contains(sql_why),
        "{printed}"
    );

    let calls = sink.wait_for(
        "the rollback notification",
        Duration::from_secs(20),
        |calls| {
            calls
                .iter()
                .any(|c| c.kind == "hook/ops" && c.body["event"] == "run.rolled_back")
        },
    );
    let notice = calls
        .iter()
        .find(|c| c.body["event"] == "run.rolled_back")
        .map(|c| c.body.clone())
        .unwrap_or_default();
    let state = notice["state"].as_str().unwrap_or_default();
    assert!(
        state.contains(schema_why) && state.contains(sql_why),
        "{notice}"
    );
}

/// A file holding `token`, for `--token-file`.
fn write_token_file(project: &Project, token: &str) -> std::path::PathBuf {
    let path = project.path().join("token.txt");
    std::fs::write(&path, token).unwrap();
    path
}
