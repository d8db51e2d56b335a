//! Local snapshot providers end to end through the CLI: pg-template, pg-dump and sqlite-file
//! snapshot, migrate, restore; sessions in the way; crashes mid-create and mid-restore;
//! retention.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const M1: &str = "20240101000000_shop";
const M2: &str = "20240102000000_prices";

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The whole database as pg_dump prints it (schema, data, history table), minus only the
/// random `\restrict` key newer pg_dump versions put in every dump.
fn raw_dump(db: &TestDb) -> String {
    let out = Command::new(db.server().bin("pg_dump"))
        .args(["--no-sync", "-d", &db.url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Asks the server's maintenance database, which exists whatever happens to the test's own.
fn admin_psql(db: &TestDb, sql: &str) -> String {
    let out = Command::new(db.server().bin("psql"))
        .args(["-X", "-A", "-t", "-d", &db.server().admin_url(), "-c", sql])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn database_exists(db: &TestDb, name: &str) -> bool {
    admin_psql(
        db,
        &format!("SELECT count(*) FROM pg_database WHERE datname = '{name}'"),
    ) == "1"
}

fn snapshot_databases(db: &TestDb) -> String {
    admin_psql(
        db,
        &format!(
            "SELECT count(*) FROM pg_database WHERE starts_with(datname, '{}_snap_')",
            db.name
        ),
    )
}

fn project_with(db: &TestDb, snapshot_toml: &str) -> Project {
    let project = Project::with_local_migrations(&[("t", &db.url)], snapshot_toml);
    project.add_migration(
        M1,
        "CREATE TABLE item (id serial PRIMARY KEY, name text NOT NULL);\n\
         INSERT INTO item (name) VALUES ('kettle'), ('teapot');\n",
    );
    project
}

fn add_breaking_change(project: &Project) {
    project.add_migration(
        M2,
        "ALTER TABLE item ADD COLUMN price numeric NOT NULL DEFAULT 0;\n\
         UPDATE item SET name = upper(name);\n\
         DELETE FROM item WHERE name = 'TEAPOT';\n",
    );
}

fn snapshot_name_from(out: &std::process::Output) -> String {
    let text = stdout(out);
    text.split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no snapshot name in: {text}"))
        .to_string()
}

/// Snapshot, migrate schema and data, restore: the database dumps byte-identical to before,
/// and the replaced state is kept under its `_failed_` name.
fn snapshot_migrate_restore(provider_toml: &str) {
    let db = pg().create_db("snap_cycle");
    let project = project_with(&db, provider_toml);
    project.run_ok(&["apply", "--env", "t"]);
    let before = raw_dump(&db);

    let out = project.run_ok(&[
        "snapshot",
        "--env",
        "t",
        "--reason",
        "before prices",
        "--by",
        "ops",
    ]);
    let manual = snapshot_name_from(&out);
    add_breaking_change(&project);
    let applied = project.run_ok(&["apply", "--env", "t"]);
    assert!(
        stderr(&applied).contains("taken before applying"),
        "apply took its own snapshot: {}",
        stderr(&applied)
    );
    assert_eq!(db.psql("SELECT string_agg(name, ',') FROM item"), "KETTLE");

    let restored = project.run_ok(&[
        "restore",
        "--env",
        "t",
        &manual,
        "--reason",
        "prices broke checkout",
    ]);
    let preserved = stdout(&restored)
        .rsplit(' ')
        .next()
        .unwrap()
        .trim()
        .to_string();
    assert!(
        preserved.starts_with(&format!("{}_failed_", db.name)),
        "{preserved}"
    );
    assert_eq!(
        raw_dump(&db),
        before,
        "the restored database is the snapshot"
    );
    assert!(
        database_exists(&db, &preserved),
        "the replaced state is kept"
    );
    let kept_url = replace_url_database(&db.url, &preserved);
    let kept = Command::new(db.server().bin("psql"))
        .args([
            "-X",
            "-A",
            "-t",
            "-d",
            &kept_url,
            "-c",
            "SELECT string_agg(name, ',') FROM item",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&kept.stdout).trim(), "KETTLE");

    let listing = project.run_ok(&["snapshots", "--env", "t", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&listing.stdout).unwrap();
    let kinds: Vec<(String, String)> = doc["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["kind"].as_str().unwrap().to_string(),
                s["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        kinds.contains(&("preserved".into(), preserved.clone())),
        "{kinds:?}"
    );
    let manual_record = doc["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == manual.as_str());
    if let Some(record) = manual_record {
        assert_eq!(record["record"]["actor"], "ops");
        assert_eq!(record["record"]["reason"], "before prices");
    }
}

#[test]
fn pg_template_snapshot_migrate_restore_is_byte_identical() {
    snapshot_migrate_restore("[snapshot]\nprovider = \"pg-template\"\n");
}

#[test]
fn pg_dump_snapshot_migrate_restore_is_byte_identical() {
    snapshot_migrate_restore("[snapshot]\nprovider = \"pg-dump\"\n");
}

fn spawn_session(db: &TestDb) -> std::process::Child {
    let mut child = Command::new(db.server().bin("psql"))
        .args(["-X", "-q", "-A", "-t", "-d", &db.url])
        .args(["-c", "SELECT 'connected'", "-c", "SELECT pg_sleep(60)"])
        .env("PGAPPNAME", "reporting-job")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("connected"), "{line}");
    child
}

#[test]
fn a_template_snapshot_with_a_session_open_names_it_or_ends_it_when_allowed() {
    let db = pg().create_db("snap_busy");
    let mut project = project_with(&db, "[snapshot]\nprovider = \"pg-template\"\n");
    project.run_ok(&["apply", "--env", "t", "--no-snapshot"]);
    let mut session = spawn_session(&db);
    let pid = db.psql("SELECT pid FROM pg_stat_activity WHERE application_name = 'reporting-job' AND datname = current_database()");

    let out = project.run(&["snapshot", "--env", "t"]);
    assert_exit_code(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains(&format!("pid {pid}")) && err.contains("reporting-job"),
        "names the session: {err}"
    );
    assert!(err.contains("terminate_sessions = true"), "{err}");
    assert_eq!(
        db.psql(&format!(
            "SELECT datallowconn FROM pg_database WHERE datname = '{}'",
            db.name
        )),
        "t",
        "connections are allowed again"
    );
    assert_eq!(snapshot_databases(&db), "0");

    project.add_env(
        "t",
        &db.url,
        "[snapshot]\nprovider = \"pg-template\"\nterminate_sessions = true\n",
    );
    project.run_ok(&["snapshot", "--env", "t"]);
    let status = session.wait().unwrap();
    assert!(!status.success(), "the session was terminated");
    assert_eq!(snapshot_databases(&db), "1");
}

/// Runs `sluice <args>` until it pauses at `point`, then SIGKILLs it.
fn kill_at(project: &Project, args: &[&str], point: &str) {
    let mut child = project
        .cmd(args)
        .env("SLUICE_TEST_PAUSE", point)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let reader = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    for line in reader.lines().map_while(Result::ok) {
        if line == format!("sluice-test-paused: {point}") {
            child.kill().unwrap();
            child.wait().unwrap();
            return;
        }
        seen.push_str(&line);
        seen.push('\n');
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("sluice never paused at {point}:\n{seen}");
}

#[test]
fn sigkill_during_create_then_retry_leaves_exactly_one_snapshot() {
    for (provider, point) in [
        ("pg-template", "snapshot-isolated"),
        ("pg-dump", "dump-written"),
    ] {
        let db = pg().create_db("snap_kill");
        let project = project_with(&db, &format!("[snapshot]\nprovider = \"{provider}\"\n"));
        project.run_ok(&["apply", "--env", "t", "--no-snapshot"]);
        let run = "5d1f2a7e-8c3b-4a9d-9e0f-1a2b3c4d5e6f";
        kill_at(&project, &["snapshot", "--env", "t", "--run", run], point);
        project.run_ok(&["snapshot", "--env", "t", "--run", run]);
        project.run_ok(&["snapshot", "--env", "t", "--run", run]);
        let listing = project.run_ok(&["snapshots", "--env", "t", "--json"]);
        let doc: serde_json::Value = serde_json::from_slice(&listing.stdout).unwrap();
        let names: Vec<&str> = doc["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [format!("{}_snap_5d1f2a7e8c3b", db.name)],
            "{provider}"
        );
        assert_eq!(
            db.psql(&format!(
                "SELECT datallowconn FROM pg_database WHERE datname = '{}'",
                db.name
            )),
            "t",
            "{provider}: the target accepts connections again"
        );
        let leftovers = std::fs::read_dir(project.path().join(".sluice/snapshots/t"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
                    .count()
            })
            .unwrap_or(0);
        assert_eq!(leftovers, 0, "{provider}: no partial dump left");
    }
}

#[test]
fn sigkill_between_the_two_renames_of_a_restore_then_rerun_completes_it() {
    let db = pg().create_db("restore_kill");
    let project = project_with(&db, "[snapshot]\nprovider = \"pg-template\"\n");
    project.run_ok(&["apply", "--env", "t", "--no-snapshot"]);
    let before = raw_dump(&db);
    let snap = snapshot_name_from(&project.run_ok(&["snapshot", "--env", "t"]));
    add_breaking_change(&project);
    project.run_ok(&["apply", "--env", "t", "--no-snapshot"]);
    let run = "0a0b0c0d-0e0f-4011-8213-141516171819";
    let args = [
        "restore", "--env", "t", &snap, "--reason", "test", "--run", run,
    ];
    kill_at(&project, &args, "restore-between-renames");
    let failed = format!("{}_failed_0a0b0c0d0e0f", db.name);
    assert!(
        !database_exists(&db, &db.name),
        "killed between the renames"
    );
    assert!(
        database_exists(&db, &failed) && database_exists(&db, &snap),
        "no database lost"
    );
    project.run_ok(&args);
    assert!(database_exists(&db, &db.name) && database_exists(&db, &failed));
    assert!(!database_exists(&db, &snap));
    assert_eq!(raw_dump(&db), before);
    project.run_ok(&args);
}

#[test]
fn prune_keeps_the_newest_and_the_last_successful_runs_snapshot() {
    let db = pg().create_db("snap_prune");
    let project = project_with(
        &db,
        "[snapshot]\nprovider = \"pg-template\"\n[snapshot.retention]\nkeep_last = 1\n",
    );
    project.run_ok(&["apply", "--env", "t", "--no-snapshot"]);
    add_breaking_change(&project);
    let applied = project.run_ok(&["apply", "--env", "t"]);
    let protected = stderr(&applied)
        .lines()
        .find_map(|l| {
            l.strip_prefix("snapshot ")
                .map(|r| r.split(' ').next().unwrap().to_string())
        })
        .unwrap();
    let mut manual = Vec::new();
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(1100));
        manual.push(snapshot_name_from(
            &project.run_ok(&["snapshot", "--env", "t"]),
        ));
    }
    let dry = project.run_ok(&["snapshots", "prune", "--env", "t", "--dry-run"]);
    assert!(stdout(&dry).contains("would delete"), "{}", stdout(&dry));
    let out = project.run_ok(&["snapshots", "prune", "--env", "t"]);
    let text = stdout(&out);
    assert!(
        text.contains(&format!("deleted {}", manual[0]))
            && text.contains(&format!("deleted {}", manual[1])),
        "{text}"
    );
    assert!(
        !text.contains(&protected) && !text.contains(&manual[2]),
        "{text}"
    );
    assert!(database_exists(&db, &protected) && database_exists(&db, &manual[2]));
    assert!(!database_exists(&db, &manual[0]) && !database_exists(&db, &manual[1]));
}

#[test]
fn sqlite_file_snapshot_migrate_restore_keeps_the_replaced_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    std::fs::write(
        dir.path().join("sluice.toml"),
        "migrations = \"migrations\"\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("environments")).unwrap();
    std::fs::write(
        dir.path().join("environments/dev.toml"),
        "url = \"sqlite:data/dev.db\"\n[snapshot]\nprovider = \"sqlite-file\"\n",
    )
    .unwrap();
    let copy = Command::new("cp")
        .args([
            "-r",
            &root.join("migrations").to_string_lossy(),
            &dir.path().to_string_lossy(),
        ])
        .status()
        .unwrap();
    assert!(copy.success());
    let run = |args: &[&str]| {
        let out = sluice()
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", output_text(&out));
        out
    };
    let states = || {
        let out = sluice()
            .args(["status", "--env", "dev", "--json"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        doc["status"]["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["state"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    run(&[
        "apply",
        "--env",
        "dev",
        "--to",
        "20240115120000_add_user_role",
    ]);
    let snap = snapshot_name_from(&run(&["snapshot", "--env", "dev"]));
    assert!(snap.starts_with("dev.db.snap-"), "{snap}");
    let applied = run(&["apply", "--env", "dev"]);
    assert!(stderr(&applied).contains("taken before applying"));
    assert_eq!(states(), ["applied"; 4]);
    let restored = run(&["restore", "--env", "dev", &snap, "--reason", "back"]);
    let preserved = stdout(&restored)
        .rsplit(' ')
        .next()
        .unwrap()
        .trim()
        .to_string();
    assert!(preserved.starts_with("dev.db.failed-"), "{preserved}");
    assert_eq!(states(), ["applied", "applied", "pending", "pending"]);
    assert!(
        dir.path().join("data").join(&preserved).exists(),
        "the replaced file is kept"
    );
    assert!(
        dir.path().join("data").join(&snap).exists(),
        "the snapshot stays restorable"
    );
}
