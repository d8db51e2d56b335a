//! The shipped example (SQLite environments, no server): it applies, records Prisma's history,
//! and a broken migration on SQLite is rolled back and recorded like on PostgreSQL.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::example_copy;
use sqlx::{Connection, Row, SqliteConnection};

fn sluice(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn query(db: &Path, sql: &str) -> Vec<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let url = format!("sqlite://{}", db.display());
        let mut conn = SqliteConnection::connect(&url).await.unwrap();
        let rows = sqlx::query(sql).fetch_all(&mut conn).await.unwrap();
        rows.iter()
            .map(|r| r.try_get::<String, _>(0).unwrap_or_default())
            .collect()
    })
}

#[test]
fn the_example_applies_to_sqlite_without_a_server() {
    let dir = example_copy();
    let out = sluice(dir.path(), &["apply", "--env", "dev"]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("applied 4 migrations to `dev`"), "{stdout}");

    let db = dir.path().join(".sluice/dev.db");
    assert_eq!(
        query(&db, "SELECT migration_name || ':' || (finished_at IS NOT NULL) || ':' || checksum FROM _prisma_migrations ORDER BY migration_name")
            .iter()
            .map(|r| r.rsplit_once(':').unwrap().0.to_string())
            .collect::<Vec<_>>(),
        [
            "20240101090000_init:1",
            "20240115120000_add_user_role:1",
            "20240203083000_posts_published_index:1",
            "20240220101500_backfill_display_name:1",
        ]
    );
    let columns = query(
        &db,
        "SELECT name FROM pragma_table_info('User') ORDER BY cid",
    );
    assert_eq!(
        columns,
        ["id", "email", "name", "createdAt", "role", "displayName"]
    );

    let status = sluice(dir.path(), &["status", "--env", "dev", "--json"]);
    assert_eq!(status.status.code(), Some(0), "{status:?}");
    let doc: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(doc["up_to_date"], true);
    assert_eq!(doc["engine"], "sqlite");

    let again = sluice(dir.path(), &["apply", "--env", "dev"]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("up to date"));
    let staging = sluice(dir.path(), &["status", "--env", "staging"]);
    assert_eq!(
        staging.status.code(),
        Some(1),
        "staging has not been migrated"
    );
}

#[test]
fn a_broken_migration_on_sqlite_is_rolled_back_and_recorded() {
    let dir = example_copy();
    let broken = dir.path().join("migrations/20240301000000_broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(
        broken.join("migration.sql"),
        "CREATE TABLE \"Tag\" (\"id\" INTEGER PRIMARY KEY);\nINSERT INTO \"Nope\" VALUES (1);\n",
    )
    .unwrap();
    let out = sluice(dir.path(), &["apply", "--env", "dev"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("20240301000000_broken") && stderr.contains("no such table: Nope"),
        "{stderr}"
    );
    let db = dir.path().join(".sluice/dev.db");
    assert!(query(&db, "SELECT name FROM sqlite_master WHERE name = 'Tag'").is_empty());
    assert_eq!(
        query(&db, "SELECT migration_name FROM _prisma_migrations WHERE finished_at IS NULL AND logs IS NOT NULL"),
        ["20240301000000_broken"]
    );
}

#[test]
fn the_example_health_checks_pass_only_after_the_migrations() {
    let dir = example_copy();
    let before = sluice(dir.path(), &["check", "--env", "dev"]);
    assert_eq!(before.status.code(), Some(1), "{before:?}");
    assert!(sluice(dir.path(), &["apply", "--env", "dev"])
        .status
        .success());
    let after = sluice(dir.path(), &["check", "--env", "dev", "--json"]);
    assert_eq!(after.status.code(), Some(0), "{after:?}");
    let doc: serde_json::Value = serde_json::from_slice(&after.stdout).unwrap();
    assert_eq!(doc["outcome"], "successful");
    assert_eq!(doc["checks"].as_array().unwrap().len(), 2);
}

/// The README's first command: the whole ladder on the example, each environment's state
/// shown as it goes, every environment ending on the release with one snapshot taken before.
#[test]
fn the_readme_command_runs_the_whole_ladder() {
    let dir = example_copy();
    let out = sluice(dir.path(), &["promote", "--to", "prod", "--local"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    for env in ["dev", "staging", "prod"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(env) && l.ends_with("succeeded")),
            "{env} never succeeded:\n{stdout}"
        );
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(env) && l.contains("applying 4/4")),
            "{env} never showed its progress:\n{stdout}"
        );
        let db = dir.path().join(format!(".sluice/{env}.db"));
        assert_eq!(
            query(
                &db,
                "SELECT migration_name FROM _prisma_migrations WHERE finished_at IS NOT NULL"
            )
            .len(),
            4,
            "{env}"
        );
    }
    let staging_line = stdout
        .lines()
        .position(|l| l.starts_with("staging") && l.ends_with("locked"));
    let dev_done = stdout
        .lines()
        .position(|l| l.starts_with("dev") && l.ends_with("succeeded"));
    assert!(
        dev_done < staging_line,
        "staging started before dev was done:\n{stdout}"
    );
    let snapshots: Vec<_> = std::fs::read_dir(dir.path().join(".sluice"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".snap-"))
        .collect();
    assert_eq!(snapshots.len(), 3, "{snapshots:?}");

    // prod's policy says drift = "block": its run compared the schema before the snapshot.
    let runs: serde_json::Value =
        serde_json::from_slice(&sluice(dir.path(), &["runs", "--local", "--json"]).stdout).unwrap();
    for run in runs.as_array().unwrap() {
        let id = run["id"].as_str().unwrap();
        let detail: serde_json::Value =
            serde_json::from_slice(&sluice(dir.path(), &["run", id, "--local", "--json"]).stdout)
                .unwrap();
        let actions: Vec<&str> = detail["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["action"].as_str())
            .collect();
        let checked = actions.iter().position(|a| *a == "drift.checked");
        if run["environment"] == "prod" {
            let snapshot = actions.iter().position(|a| *a == "snapshot.created");
            assert!(checked.is_some() && checked < snapshot, "{actions:?}");
        } else {
            assert!(checked.is_none(), "{actions:?}");
        }
    }

    let again = sluice(dir.path(), &["promote", "--to", "prod", "--local"]);
    assert!(again.status.success(), "{again:?}");
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("already on release"),
        "{again:?}"
    );
}

#[test]
fn lint_reports_risky_statements_of_pending_migrations_and_honours_silencing() {
    let dir = example_copy();
    let added = dir.path().join("migrations/20240301000000_risky");
    std::fs::create_dir_all(&added).unwrap();
    std::fs::write(
        added.join("migration.sql"),
        "-- sluice:allow drop-column -- displayName is backfilled into name since 20240220\n\
         ALTER TABLE \"User\" DROP COLUMN \"displayName\";\n\
         CREATE INDEX \"Post_title_idx\" ON \"Post\"(\"title\");\n\
         -- sluice:allow rename\n\
         ALTER TABLE \"Post\" RENAME COLUMN \"title\" TO \"headline\";\n",
    )
    .unwrap();
    let out = sluice(dir.path(), &["lint", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let findings: Vec<(String, u64)> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["rule"].as_str().unwrap().to_string(),
                f["line"].as_u64().unwrap(),
            )
        })
        .collect();
    // Linting the whole directory, `Post` is created by the first migration of the slice, so
    // indexing it is not a finding; the rename is.
    assert_eq!(findings, vec![("rename".to_string(), 5)], "{report}");
    assert_eq!(report["silenced"][0]["rule"], "drop-column");
    assert!(report["silenced"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("backfilled"));
    assert!(
        report["problems"][0]
            .as_str()
            .unwrap()
            .contains("20240301000000_risky:4"),
        "{report}"
    );

    // With --env, only what the environment has not applied is linted.
    let out = sluice(
        dir.path(),
        &[
            "apply",
            "--env",
            "dev",
            "--to",
            "20240220101500_backfill_display_name",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let out = sluice(dir.path(), &["lint", "--env", "dev"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("2 finding(s) in 1 migration(s) pending on `dev`"),
        "{text}"
    );
    assert!(
        text.contains("20240301000000_risky:3: [index-without-concurrently]"),
        "{text}"
    );
    std::fs::remove_dir_all(&added).unwrap();
    let out = sluice(dir.path(), &["lint", "--env", "dev"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[test]
fn drift_on_sqlite_builds_the_expected_schema_in_a_temporary_file() {
    let dir = example_copy();
    let out = sluice(dir.path(), &["apply", "--env", "dev"]);
    assert!(out.status.success(), "{out:?}");
    let out = sluice(dir.path(), &["drift", "--env", "dev"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("`dev` matches the expected schema of its 4 applied migration(s)"),
        "{out:?}"
    );
    let db = dir.path().join(".sluice/dev.db");
    query(&db, "ALTER TABLE \"User\" ADD COLUMN \"nickname\" TEXT");
    let out = sluice(dir.path(), &["drift", "--env", "dev", "--json"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let differences = report["differences"].as_array().unwrap();
    assert_eq!(differences.len(), 1, "{report}");
    assert_eq!(differences[0]["kind"], "column");
    assert_eq!(differences[0]["name"], "main.\"User\".nickname", "{report}");
    assert_eq!(differences[0]["change"], "removed", "{report}");
    assert_eq!(report["applied"], 4);
}
