//! Retention in the daemon (issue 12, item 5): promote and roll back an environment with
//! pg-template snapshots again and again; the daemon prunes after every run, so its copies stay
//! within `keep_last`, while the last success's snapshot and a halted run's snapshot stay; the
//! listing and prune endpoints answer by role; preserved copies say when and by whom; and the
//! CLI's `snapshots` works while the daemon holds the store.

mod common;

use std::time::{Duration, Instant};

use common::daemon::{state_of, write_tokens, Daemon};
use common::*;
use serde_json::Value;

const DEPLOYER: &str = "slc_retention_deployer_0123456789";
const VIEWER: &str = "slc_retention_viewer_01234567890";

/// Databases on the server whose names start with `prefix`, sorted; asked of the maintenance
/// database so no session ever sits on the environment's own (it would block a template copy).
fn databases(db: &TestDb, prefix: &str) -> Vec<String> {
    let out = std::process::Command::new(db.server().bin("psql"))
        .args([
            "-X",
            "-A",
            "-t",
            "-d",
            &db.server().admin_url(),
            "-c",
            &format!(
                "SELECT datname FROM pg_database WHERE starts_with(datname, '{prefix}') ORDER BY 1"
            ),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect()
}

/// The name a run's snapshot or preserved copy gets: `<db><infix><first 12 of the run id>`.
fn copy_name(db: &TestDb, infix: &str, run_id: &str) -> String {
    let token: String = run_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(12)
        .collect();
    format!("{}{infix}{token}", db.name)
}

/// Waits until the copies of `db` are exactly `snapshots` and `preserved` (the daemon prunes
/// after the run's last transition, in the background).
fn wait_for_copies(db: &TestDb, snapshots: &[&str], preserved: &[&str], daemon: &Daemon) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let wanted = |names: &[&str]| {
        let mut names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        names.sort();
        names
    };
    loop {
        let found = (
            databases(db, &format!("{}_snap_", db.name)),
            databases(db, &format!("{}_failed_", db.name)),
        );
        if found == (wanted(snapshots), wanted(preserved)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "copies of {} are {found:?}, expected snapshots {snapshots:?} and preserved {preserved:?}\n{}",
            db.name,
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn promote(daemon: &Daemon) -> String {
    let (status, created) = daemon.post("/v1/promotions", Some(DEPLOYER), r#"{"to": "dev"}"#);
    assert_eq!(status, 202, "{created}");
    created[0]["id"].as_str().unwrap().to_string()
}

fn wait_state(daemon: &Daemon, id: &str, state: &str) -> Value {
    daemon.wait_run(id, DEPLOYER, Duration::from_secs(90), |r| {
        state_of(r) == state
    })
}

fn rollback(daemon: &Daemon, reason: &str) -> String {
    let (status, run) = daemon.post(
        "/v1/environments/dev/rollback",
        Some(DEPLOYER),
        &format!("{{\"reason\": \"{reason}\"}}"),
    );
    assert_eq!(status, 202, "{run}");
    let id = run["id"].as_str().unwrap().to_string();
    wait_state(daemon, &id, "rolled_back");
    id
}

fn listing(daemon: &Daemon, token: &str) -> (u16, Value) {
    daemon.get("/v1/environments/dev/snapshots", Some(token))
}

fn verdict_of(listing: &Value, name: &str) -> String {
    listing["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .map(|c| c["verdict"].as_str().unwrap_or_default().to_string())
        .unwrap_or_else(|| format!("{name} not listed in {listing}"))
}

#[test]
fn item05_the_daemon_prunes_by_retention_keeping_the_last_success_and_a_halted_runs_snapshot() {
    let db = pg().create_db("retention");
    let mut project = Project::with_local_migrations(&[], "");
    project.add_env(
        "dev",
        &db.url,
        "lock_timeout = \"5s\"\n[snapshot]\nprovider = \"pg-template\"\n[snapshot.retention]\nkeep_last = 1\n",
    );
    let policies = project.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    // A failing run halts for a person; a person's rollback restores the snapshot.
    std::fs::write(
        policies.join("dev.toml"),
        "environment = \"dev\"\n[rollback]\non_failure = \"halt\"\n",
    )
    .unwrap();
    write_tokens(
        &project,
        &[
            ("deployer", DEPLOYER, "dev = \"deployer\""),
            ("watcher", VIEWER, "\"*\" = \"viewer\""),
        ],
    );
    let settings = "migrations = \"migrations\"\nstate_dir = \".sluice\"\n[daemon]\ntokens_file = \"tokens.toml\"\ntick = \"100ms\"\nwatch_interval = \"0s\"\n";
    std::fs::write(project.path().join("sluice.toml"), settings).unwrap();
    let migration = |n: usize| {
        project.add_migration(
            &format!("2024010{n}000000_t{n}"),
            &format!("CREATE TABLE t{n} (id int PRIMARY KEY);\n"),
        );
    };

    migration(1);
    let mut daemon = Daemon::start(&project, &[]);
    let reload = |daemon: &Daemon| {
        let (status, body) = daemon.post("/v1/releases", Some(DEPLOYER), "");
        assert!(status == 200 || status == 201, "{body}");
    };
    // Promote, promote a new release and roll it back, twice over, then promote again: without
    // retention that leaves three snapshots and two preserved copies behind.
    let first = promote(&daemon);
    wait_state(&daemon, &first, "succeeded");
    let s1 = copy_name(&db, "_snap_", &first);
    wait_for_copies(&db, &[&s1], &[], &daemon);
    let mut last_preserved = String::new();
    for round in [2, 4] {
        migration(round);
        reload(&daemon);
        let promoted = promote(&daemon);
        wait_state(&daemon, &promoted, "succeeded");
        let snapshot = copy_name(&db, "_snap_", &promoted);
        // keep_last = 1: the older snapshot goes as soon as this run has succeeded.
        let expected_preserved: Vec<&str> = if last_preserved.is_empty() {
            vec![]
        } else {
            vec![last_preserved.as_str()]
        };
        wait_for_copies(&db, &[&snapshot], &expected_preserved, &daemon);
        let rolled_back = rollback(&daemon, &format!("round {round}"));
        // The restore consumed the snapshot; the replaced state is kept, and only the newest
        // preserved copy stays.
        last_preserved = copy_name(&db, "_failed_", &rolled_back);
        wait_for_copies(&db, &[], &[&last_preserved], &daemon);
        migration(round + 1);
        reload(&daemon);
        let again = promote(&daemon);
        wait_state(&daemon, &again, "succeeded");
        wait_for_copies(
            &db,
            &[&copy_name(&db, "_snap_", &again)],
            &[&last_preserved],
            &daemon,
        );
    }
    let (_, environment) = daemon.get("/v1/environments/dev", Some(DEPLOYER));
    let last_success = copy_name(&db, "_snap_", environment["run_id"].as_str().unwrap());

    // A run that fails halts with its snapshot taken: both stay.
    project.add_migration(
        "20240107000000_broken",
        "ALTER TABLE no_such_table ADD COLUMN x int;\n",
    );
    reload(&daemon);
    let broken = promote(&daemon);
    wait_state(&daemon, &broken, "halted");
    let halted_snapshot = copy_name(&db, "_snap_", &broken);
    wait_for_copies(
        &db,
        &[&last_success, &halted_snapshot],
        &[&last_preserved],
        &daemon,
    );

    // A newer snapshot taken by hand (the daemon stopped) makes the halted run's snapshot
    // neither the newest nor the last success: only its run keeps it now.
    assert!(daemon.terminate().success());
    std::thread::sleep(Duration::from_millis(1100));
    let manual = project.run_ok(&["snapshot", "--env", "dev", "--reason", "by hand"]);
    let manual = String::from_utf8_lossy(&manual.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    daemon = Daemon::start(&project, &[]);

    let (status, body) = listing(&daemon, VIEWER);
    assert_eq!(status, 200, "{body}");
    assert_eq!(verdict_of(&body, &halted_snapshot), "keep_unfinished_run");
    assert_eq!(verdict_of(&body, &last_success), "keep_last_success");
    assert_eq!(verdict_of(&body, &manual), "keep_newest");
    let preserved = body["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == last_preserved.as_str())
        .cloned()
        .unwrap();
    assert_eq!(preserved["kind"], "preserved", "{preserved}");
    assert_eq!(preserved["preserved_by"], "sluice", "{preserved}");
    assert!(preserved["preserved_at"].is_string(), "{preserved}");
    assert!(
        preserved["preserved_reason"]
            .as_str()
            .is_some_and(|r| r.contains("requested by deployer: round 4")),
        "{preserved}"
    );

    let (status, _) = daemon.post("/v1/environments/dev/snapshots/prune", Some(VIEWER), "{}");
    assert_eq!(status, 403, "a viewer lists but does not prune");
    let (status, pruned) =
        daemon.post("/v1/environments/dev/snapshots/prune", Some(DEPLOYER), "{}");
    assert_eq!(status, 200, "{pruned}");
    assert_eq!(pruned["deleted"], serde_json::json!([]), "{pruned}");
    wait_for_copies(
        &db,
        &[&last_success, &halted_snapshot, &manual],
        &[&last_preserved],
        &daemon,
    );

    // The CLI lists and prunes through the daemon, which holds the store.
    let listen = daemon.base.trim_start_matches("http://");
    std::fs::write(
        project.path().join("sluice.toml"),
        format!("{settings}listen = \"{listen}\"\n"),
    )
    .unwrap();
    let mut cli = project.cmd(&["snapshots", "--env", "dev"]);
    cli.env("SLUICE_TOKEN", VIEWER);
    let out = run_with_timeout(cli, Duration::from_secs(120));
    assert_success(&out);
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        table.contains("keep: run not finished")
            && table.contains("keep: last success")
            && table.contains("by sluice (run "),
        "{table}"
    );
    let mut cli = project.cmd(&["snapshots", "prune", "--env", "dev", "--dry-run"]);
    cli.env("SLUICE_TOKEN", DEPLOYER);
    let out = run_with_timeout(cli, Duration::from_secs(120));
    assert_success(&out);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("retention allows deleting nothing"),
        "{}",
        output_text(&out)
    );

    // Once the halted run is cancelled, its snapshot is an old one like any other: the daemon
    // prunes it, and says so in the audit log as `sluice`.
    let (status, cancelled) = daemon.post(
        &format!("/v1/runs/{broken}/cancel"),
        Some(DEPLOYER),
        r#"{"reason": "broken migration"}"#,
    );
    assert_eq!(status, 200, "{cancelled}");
    wait_for_copies(&db, &[&last_success, &manual], &[&last_preserved], &daemon);
    let (_, events) = daemon.get("/v1/events?environment=dev&limit=1000", Some(VIEWER));
    let pruned_by_sluice: Vec<&Value> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "snapshot.pruned" && e["actor"] == "sluice")
        .collect();
    assert!(
        pruned_by_sluice.iter().any(|e| e["detail"]["deleted"]
            .as_array()
            .is_some_and(|d| d.iter().any(|n| n == halted_snapshot.as_str()))),
        "{pruned_by_sluice:?}"
    );
    assert!(pruned_by_sluice.len() >= 4, "{pruned_by_sluice:?}");
}
