//! The migration engine against a real PostgreSQL: failures, guards, resolve, locks and the
//! statement-by-statement path. Every test drives the real `sluice` binary.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn history(db: &TestDb) -> Vec<String> {
    db.psql(
        "SELECT migration_name || ':' || CASE WHEN rolled_back_at IS NOT NULL THEN 'rolled_back' \
         WHEN finished_at IS NOT NULL THEN 'finished' ELSE 'failed' END \
         FROM _prisma_migrations ORDER BY started_at, migration_name",
    )
    .lines()
    .map(str::to_string)
    .collect()
}

const M1: &str = "20240101000000_users";
const M2: &str = "20240102000000_orders";
const M3: &str = "20240103000000_audit";

fn three_migrations(project: &Project, second: &str) {
    project.add_migration(
        M1,
        "-- CreateTable\nCREATE TABLE \"users\" (id serial PRIMARY KEY, email text NOT NULL);\n",
    );
    project.add_migration(M2, second);
    project.add_migration(M3, "CREATE TABLE audit (id serial PRIMARY KEY);\n");
}

#[test]
fn a_failing_migration_stops_the_set_and_resolve_lets_it_finish() {
    let db = pg().create_db("fail_mid");
    let project = Project::with_local_migrations(&[("t", &db.url)], "");
    let broken = "CREATE TABLE orders (id serial PRIMARY KEY);\n\
                  -- the next statement points at a table that does not exist\n\
                  ALTER TABLE orders ADD COLUMN user_id int REFERENCES \"user\" (id);\n";
    three_migrations(&project, broken);

    let out = project.run(&["apply", "--env", "t"]);
    assert_exit_code(&out, 1);
    let err = stderr(&out);
    assert!(err.contains(M2), "names the migration: {err}");
    assert!(
        err.contains("migration.sql:3 (statement 2)"),
        "line 3 of the file: {err}"
    );
    assert!(err.contains("SQLSTATE 42P01"), "SQLSTATE: {err}");
    assert!(
        err.contains("relation \"user\" does not exist"),
        "message: {err}"
    );
    assert!(
        err.contains(&format!("sluice resolve --env t --rolled-back {M2}")),
        "next step: {err}"
    );

    assert_eq!(db.psql("SELECT to_regclass('users') IS NOT NULL"), "t");
    assert_eq!(
        db.psql("SELECT to_regclass('orders') IS NULL"),
        "t",
        "the failing migration's first statement was rolled back"
    );
    assert_eq!(db.psql("SELECT to_regclass('audit') IS NULL"), "t");
    assert_eq!(
        history(&db),
        [format!("{M1}:finished"), format!("{M2}:failed")]
    );
    let logs = db.psql(&format!(
        "SELECT logs FROM _prisma_migrations WHERE migration_name = '{M2}'"
    ));
    assert!(logs.contains("42P01"), "the failure is stored: {logs}");

    let again = project.run(&["apply", "--env", "t"]);
    assert_exit_code(&again, 1);
    let err = stderr(&again);
    assert!(
        err.contains(&format!("migration `{M2}` failed on `t`")) && err.contains("42P01"),
        "the guard names the failed migration and its stored error: {err}"
    );
    assert_eq!(history(&db).len(), 2, "a blocked apply writes nothing");

    let status = project.run(&["status", "--env", "t"]);
    assert_exit_code(&status, 1);
    assert!(stdout(&status).contains("1 applied, 1 pending, 1 failed"));

    project.add_migration(
        M2,
        "CREATE TABLE orders (id serial PRIMARY KEY);\n\
         ALTER TABLE orders ADD COLUMN user_id int REFERENCES users (id);\n",
    );
    let resolved = project.run(&[
        "resolve",
        "--env",
        "t",
        "--rolled-back",
        M2,
        "--reason",
        "fixed the table name",
        "--by",
        "alice",
    ]);
    assert_success(&resolved);
    let logs = db.psql(&format!(
        "SELECT logs FROM _prisma_migrations WHERE migration_name = '{M2}'"
    ));
    assert!(
        logs.contains("resolved as rolled back by alice") && logs.contains("fixed the table name"),
        "who and why are recorded: {logs}"
    );

    project.run_ok(&["apply", "--env", "t"]);
    assert_eq!(
        history(&db),
        [
            format!("{M1}:finished"),
            format!("{M2}:rolled_back"),
            format!("{M2}:finished"),
            format!("{M3}:finished"),
        ]
    );
    assert_eq!(
        db.psql("SELECT count(*) FROM information_schema.columns WHERE table_name = 'orders'"),
        "2"
    );
    let status = project.run(&["status", "--env", "t"]);
    assert_exit_code(&status, 0);
}

#[test]
fn errors_without_a_position_still_name_the_statement_detail_and_hint() {
    let db = pg().create_db("fail_detail");
    let project = Project::with_local_migrations(&[("t", &db.url)], "");
    project.add_migration(
        M1,
        "CREATE TABLE accounts (email text);\n\
         INSERT INTO accounts VALUES ('a@example.com'), ('a@example.com');\n\
         \n\
         CREATE UNIQUE INDEX accounts_email_key ON accounts (email);\n",
    );
    let out = project.run(&["apply", "--env", "t"]);
    assert_exit_code(&out, 1);
    let err = stderr(&out);
    assert!(err.contains("SQLSTATE 23505"), "{err}");
    assert!(
        err.contains("migration.sql:4"),
        "line of the failing statement: {err}"
    );
    assert!(err.contains("(statement 3)"), "{err}");
    assert!(
        err.contains("DETAIL: Key (email)=(a@example.com) is duplicated."),
        "{err}"
    );
    assert_eq!(db.psql("SELECT to_regclass('accounts') IS NULL"), "t");

    project.add_migration(
        M2,
        "DO $$ BEGIN RAISE EXCEPTION 'custom failure' USING HINT = 'try the other thing'; END $$;\n",
    );
    std::fs::write(
        project
            .path()
            .join("migrations")
            .join(M1)
            .join("migration.sql"),
        "CREATE TABLE accounts (email text);\n",
    )
    .unwrap();
    project.run_ok(&[
        "resolve",
        "--env",
        "t",
        "--rolled-back",
        M1,
        "--reason",
        "dedupe first",
    ]);
    let out = project.run(&["apply", "--env", "t"]);
    assert_exit_code(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains("HINT: try the other thing") && err.contains("P0001"),
        "{err}"
    );
    assert_eq!(
        history(&db)
            .iter()
            .filter(|h| h.ends_with(":finished"))
            .count(),
        1
    );
}

#[test]
fn an_edited_migration_is_refused_with_both_checksums() {
    let db = pg().create_db("edited");
    let project = Project::with_local_migrations(&[("t", &db.url)], "");
    let file = project.add_migration(M1, "CREATE TABLE a (id int);\nCREATE TABLE b (id int);\n");
    project.run_ok(&["apply", "--env", "t"]);
    let recorded = db.psql("SELECT checksum FROM _prisma_migrations");

    std::fs::write(
        &file,
        "CREATE TABLE a (id int);\r\nCREATE TABLE b (id int);\r\n",
    )
    .unwrap();
    let status = project.run(&["status", "--env", "t"]);
    assert_exit_code(&status, 0);

    std::fs::write(
        &file,
        "CREATE TABLE a (id bigint);\nCREATE TABLE b (id int);\n",
    )
    .unwrap();
    let edited = common_sha256(&file);
    project.add_migration(M2, "CREATE TABLE c (id int);\n");
    let out = project.run(&["apply", "--env", "t"]);
    assert_exit_code(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains(&format!("migration `{M1}` was edited after it was applied")),
        "{err}"
    );
    assert!(
        err.contains(&recorded) && err.contains(&edited),
        "both checksums: {err}"
    );
    assert!(
        err.contains(&format!("sluice resolve --env t --applied {M1}")),
        "{err}"
    );
    assert_eq!(
        db.psql("SELECT to_regclass('c') IS NULL"),
        "t",
        "nothing after the guard ran"
    );

    let status = project.run(&["status", "--env", "t", "--json"]);
    assert_exit_code(&status, 1);
    let doc: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(doc["status"]["entries"][0]["state"], "edited");
    assert_eq!(doc["status"]["entries"][1]["state"], "pending");

    project.run_ok(&[
        "resolve",
        "--env",
        "t",
        "--applied",
        M1,
        "--reason",
        "column widened by hand",
    ]);
    project.run_ok(&["apply", "--env", "t"]);
    assert_eq!(db.psql("SELECT to_regclass('c') IS NOT NULL"), "t");
    assert_exit_code(&project.run(&["status", "--env", "t"]), 0);
}

fn common_sha256(path: &std::path::Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn a_missing_migration_is_refused_and_can_be_recorded_as_removed() {
    let db = pg().create_db("missing");
    let project = Project::with_local_migrations(&[("t", &db.url)], "");
    project.add_migration(M1, "CREATE TABLE a (id int);\n");
    project.add_migration(M2, "CREATE TABLE b (id int);\n");
    project.run_ok(&["apply", "--env", "t"]);
    let recorded = db.psql(&format!(
        "SELECT checksum FROM _prisma_migrations WHERE migration_name = '{M2}'"
    ));
    std::fs::remove_dir_all(project.path().join("migrations").join(M2)).unwrap();
    project.add_migration(M3, "CREATE TABLE c (id int);\n");

    let out = project.run(&["apply", "--env", "t"]);
    assert_exit_code(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains(&format!("migration `{M2}` is recorded on `t`")),
        "{err}"
    );
    assert!(err.contains(&recorded), "recorded checksum: {err}");
    assert!(
        err.contains(&format!("sluice resolve --env t --rolled-back {M2}")),
        "{err}"
    );
    assert_eq!(db.psql("SELECT to_regclass('c') IS NULL"), "t");

    project.run_ok(&[
        "resolve",
        "--env",
        "t",
        "--rolled-back",
        M2,
        "--reason",
        "squashed into init",
    ]);
    project.run_ok(&["apply", "--env", "t"]);
    assert_eq!(db.psql("SELECT to_regclass('c') IS NOT NULL"), "t");
}

#[test]
fn resolve_refuses_what_it_cannot_mean() {
    let db = pg().create_db("resolve_refuse");
    let project = Project::with_local_migrations(&[("t", &db.url)], "");
    project.add_migration(M1, "CREATE TABLE a (id int);\n");
    project.run_ok(&["apply", "--env", "t"]);
    let out = project.run(&[
        "resolve",
        "--env",
        "t",
        "--rolled-back",
        M1,
        "--reason",
        "x",
    ]);
    assert_exit_code(&out, 2);
    assert!(stderr(&out).contains("only a failed or interrupted migration"));
    let out = project.run(&["resolve", "--env", "t", "--applied", M1, "--reason", "x"]);
    assert_exit_code(&out, 2);
    assert!(stderr(&out).contains("already applied"));
    let out = project.run(&[
        "resolve",
        "--env",
        "t",
        "--applied",
        "nope",
        "--reason",
        "x",
    ]);
    assert_exit_code(&out, 2);
    assert_eq!(history(&db), [format!("{M1}:finished")]);
}

#[test]
fn a_non_transactional_migration_runs_statement_by_statement_and_resumes_after_an_error() {
    let db = pg().create_db("nontx");
    let project = Project::with_local_migrations(&[("t", &db.url)], "");
    project.add_migration(
        M1,
        "CREATE TABLE log (step text PRIMARY KEY);\nCREATE TYPE mood AS ENUM ('ok');\n",
    );
    let m2 = project.add_migration(
        M2,
        "INSERT INTO log VALUES ('one');\n\
         CREATE INDEX CONCURRENTLY log_step_idx ON log (step);\n\
         ALTER TYPE mood ADD VALUE 'great';\n\
         INSERT INTO log VALUES ('two'), ('one');\n\
         INSERT INTO log SELECT 'three' WHERE 'great'::mood IS NOT NULL;\n",
    );
    let out = project.run(&["apply", "--env", "t"]);
    assert_exit_code(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains("23505") && err.contains("(statement 4)"),
        "{err}"
    );
    assert!(err.contains("Statements 1-3 of 5 are committed"), "{err}");
    assert!(err.contains("sluice apply --env t --resume"), "{err}");
    assert_eq!(
        db.psql("SELECT string_agg(step, ',' ORDER BY step) FROM log"),
        "one"
    );
    assert_eq!(
        db.psql("SELECT indisvalid FROM pg_index WHERE indexrelid = 'log_step_idx'::regclass"),
        "t"
    );
    assert_eq!(
        db.psql(&format!(
            "SELECT applied_steps_count FROM _prisma_migrations WHERE migration_name = '{M2}'"
        )),
        "3"
    );

    let blocked = project.run(&["apply", "--env", "t"]);
    assert_exit_code(&blocked, 1);
    assert!(stderr(&blocked).contains("Statements 1-3 of 5 are committed"));

    std::fs::write(
        &m2,
        "INSERT INTO log VALUES ('one');\n\
         CREATE INDEX CONCURRENTLY log_step_idx ON log (step);\n\
         ALTER TYPE mood ADD VALUE 'great';\n\
         INSERT INTO log VALUES ('two');\n\
         INSERT INTO log SELECT 'three' WHERE 'great'::mood IS NOT NULL;\n",
    )
    .unwrap();
    let resumed = project.run(&["apply", "--env", "t", "--resume"]);
    assert_success(&resumed);
    assert_eq!(
        db.psql("SELECT string_agg(step, ',' ORDER BY step) FROM log"),
        "one,three,two",
        "statements 1-3 did not run again"
    );
    assert_eq!(
        history(&db),
        [
            format!("{M1}:finished"),
            format!("{M2}:rolled_back"),
            format!("{M2}:finished")
        ],
        "the failed attempt keeps its row, marked rolled back; the retry has its own"
    );
    let (checksum, logs) = (
        db.psql(&format!(
            "SELECT checksum FROM _prisma_migrations WHERE migration_name = '{M2}' AND rolled_back_at IS NULL"
        )),
        db.psql(&format!(
            "SELECT coalesce(logs, 'NULL') FROM _prisma_migrations WHERE migration_name = '{M2}' AND rolled_back_at IS NULL"
        )),
    );
    assert_eq!(
        checksum,
        common_sha256(&m2),
        "the fixed file's checksum is recorded"
    );
    assert_eq!(logs, "NULL");
    assert_exit_code(&project.run(&["status", "--env", "t"]), 0);
}

#[test]
fn resume_refuses_when_committed_statements_changed() {
    let db = pg().create_db("nontx_changed");
    let project = Project::with_local_migrations(&[("t", &db.url)], "");
    let m1 = project.add_migration(
        M1,
        "CREATE TABLE t1 (id int);\nCREATE INDEX CONCURRENTLY t1_idx ON t1 (id);\nSELECT 1/0;\n",
    );
    assert_exit_code(&project.run(&["apply", "--env", "t"]), 1);
    std::fs::write(
        &m1,
        "CREATE TABLE t1 (id bigint);\nCREATE INDEX CONCURRENTLY t1_idx ON t1 (id);\n",
    )
    .unwrap();
    let out = project.run(&["apply", "--env", "t", "--resume"]);
    assert_exit_code(&out, 1);
    assert!(
        stderr(&out).contains("no longer starts with those statements"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn files_with_their_own_transactions_commit_progress_inside_them() {
    let db = pg().create_db("selftx");
    let project = Project::with_local_migrations(&[("t", &db.url)], "");
    project.add_migration(
        M1,
        "CREATE TABLE log (step text PRIMARY KEY);\n\
         BEGIN;\nINSERT INTO log VALUES ('a');\nINSERT INTO log VALUES ('b');\nCOMMIT;\n\
         BEGIN;\nINSERT INTO log VALUES ('never');\nROLLBACK;\n\
         INSERT INTO log VALUES ('c')",
    );
    let out = project.run_ok(&["apply", "--env", "t"]);
    assert!(
        stderr(&out).contains("its own transactions"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        db.psql("SELECT string_agg(step, ',' ORDER BY step) FROM log"),
        "a,b,c"
    );
    assert_eq!(history(&db), [format!("{M1}:finished")]);
}

#[test]
fn sluice_history_mode_records_the_run() {
    let db = pg().create_db("sluice_mode");
    let project = Project::with_options(std::path::Path::new("flat"), &[("t", &db.url)], "");
    let flat = project.path().join("flat");
    std::fs::create_dir_all(&flat).unwrap();
    std::fs::write(flat.join("0001_init.sql"), "CREATE TABLE a (id int);").unwrap();
    std::fs::write(flat.join("0002_more.up.sql"), "CREATE TABLE b (id int);").unwrap();
    std::fs::write(flat.join("0002_more.down.sql"), "DROP TABLE b;").unwrap();
    project.run_ok(&["apply", "--env", "t"]);
    assert_eq!(
        db.psql("SELECT count(*), count(DISTINCT run_id), bool_and(finished_at IS NOT NULL) FROM _sluice_migrations"),
        "2|1|t"
    );
    assert_eq!(
        db.psql("SELECT to_regclass('_prisma_migrations') IS NULL"),
        "t"
    );
}

#[test]
fn dry_run_and_to_change_only_what_they_say() {
    let db = pg().create_db("dry_to");
    let project = Project::with_local_migrations(&[("t", &db.url)], "");
    three_migrations(&project, "CREATE TABLE orders (id int);\n");
    let out = project.run_ok(&["apply", "--env", "t", "--dry-run"]);
    assert!(stdout(&out).contains(M1) && stdout(&out).contains(M3));
    assert_eq!(
        db.psql("SELECT to_regclass('_prisma_migrations') IS NULL"),
        "t"
    );

    project.run_ok(&["apply", "--env", "t", "--to", M2]);
    assert_eq!(
        history(&db),
        [format!("{M1}:finished"), format!("{M2}:finished")]
    );
    let out = project.run(&["apply", "--env", "t", "--to", "20990101_nope"]);
    assert_exit_code(&out, 2);
    assert!(stderr(&out).contains("no such migration"));
    project.run_ok(&["apply", "--env", "t"]);
    assert_eq!(history(&db).len(), 3);
}

/// A psql session that runs `hold` (statements that take some lock), prints `locked`, and
/// keeps its session open for 30 s or until killed.
fn spawn_psql_holding(db: &TestDb, hold: &[&str]) -> std::process::Child {
    let mut cmd = std::process::Command::new(db.server().bin("psql"));
    cmd.args(["-X", "-q", "-A", "-t", "-d", &db.url]);
    for statement in hold {
        cmd.arg("-c").arg(statement);
    }
    let mut child = cmd
        .args(["-c", "SELECT 'locked'", "-c", "SELECT pg_sleep(30)"])
        .env("PGAPPNAME", "prisma-migrate-lookalike")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    while !seen.contains("locked") {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            panic!("the psql holder ended before taking its lock: {seen}");
        }
        seen.push_str(&line);
    }
    child
}

/// Ends the holder and its server session (a killed psql leaves its backend sleeping).
fn release(mut holder: std::process::Child, db: &TestDb) {
    holder.kill().unwrap();
    let _ = holder.wait();
    db.psql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = 'prisma-migrate-lookalike' AND datname = current_database()",
    );
}

#[test]
fn a_held_lock_times_out_naming_the_holder_and_changes_nothing() {
    let db = pg().create_db("lock_held");
    let project = Project::with_local_migrations(&[("t", &db.url)], "lock_timeout = \"1s\"\n");
    project.add_migration(M1, "CREATE TABLE a (id int);\n");
    let holder = spawn_psql_holding(&db, &["SELECT pg_advisory_lock(72707369)"]);
    let pid = db.psql(
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'prisma-migrate-lookalike' AND datname = current_database()",
    );
    let started = Instant::now();
    let out = project.run(&["apply", "--env", "t"]);
    release(holder, &db);
    assert_exit_code(&out, 1);
    let err = stderr(&out);
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(
        err.contains(&format!("pid {pid}")),
        "names the pid {pid}: {err}"
    );
    assert!(
        err.contains("prisma-migrate-lookalike") && err.contains("connected since"),
        "{err}"
    );
    assert_eq!(db.psql("SELECT to_regclass('a') IS NULL"), "t");
}

fn spawn_apply(project: &Project) -> std::process::Child {
    project
        .cmd(&["apply", "--env", "t"])
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn two_concurrent_applies_serialise_on_the_lock() {
    let db = pg().create_db("concurrent");
    let mut project = Project::with_local_migrations(&[("t", &db.url)], "lock_timeout = \"30s\"\n");
    project.add_migration(
        M1,
        "CREATE TABLE runs (n int);\nINSERT INTO runs VALUES (1);\nSELECT pg_sleep(1.5);\n",
    );
    project.add_migration(M2, "INSERT INTO runs VALUES (2);\n");
    let first = spawn_apply(&project);
    std::thread::sleep(Duration::from_millis(300));
    let second = spawn_apply(&project);
    let first = first.wait_with_output().unwrap();
    let second = second.wait_with_output().unwrap();
    assert_success(&first);
    assert_success(&second);
    let texts = [stdout(&first), stdout(&second)];
    assert!(
        texts.iter().any(|t| t.contains("applied 2 migrations"))
            && texts
                .iter()
                .any(|t| t.contains("up to date; nothing to apply")),
        "one applied, the other found nothing to do: {texts:?}"
    );
    assert_eq!(
        db.psql("SELECT string_agg(n::text, ',' ORDER BY n) FROM runs"),
        "1,2"
    );
    assert_eq!(
        history(&db),
        [format!("{M1}:finished"), format!("{M2}:finished")]
    );

    project.add_env("t", &db.url, "lock_timeout = \"500ms\"\n");
    project.add_migration(M3, "SELECT pg_sleep(3);\n");
    let long = spawn_apply(&project);
    std::thread::sleep(Duration::from_millis(800));
    let loser = project.run(&["apply", "--env", "t"]);
    let long = long.wait_with_output().unwrap();
    assert_success(&long);
    assert_exit_code(&loser, 1);
    let err = stderr(&loser);
    assert!(
        err.contains("application_name `sluice`") && err.contains("pid "),
        "{err}"
    );
    assert_eq!(history(&db).len(), 3);
}

#[test]
fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let db = pg().create_db("bad_input");
    let project = Project::with_local_migrations(&[("t", &db.url)], "");
    project.add_migration(M1, "CREATE TABLE a (id int);\n");
    let out = project.run(&["apply", "--env", "prod"]);
    assert_exit_code(&out, 2);
    assert!(
        stderr(&out).contains("unknown environment `prod`")
            && stderr(&out).contains("known environments: t")
    );

    std::fs::write(
        project.env_file("t"),
        format!("url_env = \"{}\"\nhistory = \"prism\"\n", url_env_var("t")),
    )
    .unwrap();
    let out = project.run(&["apply", "--env", "t"]);
    assert_exit_code(&out, 2);
    assert!(
        stderr(&out).contains("t.toml:2: key `history`"),
        "{}",
        stderr(&out)
    );

    std::fs::write(
        project.env_file("t"),
        "url_env = \"SLUICE_UNSET_FOR_TEST\"\n",
    )
    .unwrap();
    let out = project.run(&["apply", "--env", "t"]);
    assert_exit_code(&out, 2);
    assert!(stderr(&out).contains("`SLUICE_UNSET_FOR_TEST` is not set"));

    std::fs::write(
        project.env_file("t"),
        format!("url_env = \"{}\"\n", url_env_var("t")),
    )
    .unwrap();
    std::fs::write(
        project.path().join("migrations/migration_lock.toml"),
        "provider = \"sqlite\"\n",
    )
    .unwrap();
    let out = project.run(&["apply", "--env", "t"]);
    assert_exit_code(&out, 2);
    assert!(
        stderr(&out).contains("provider `sqlite` does not match"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        db.psql("SELECT to_regclass('_prisma_migrations') IS NULL"),
        "t"
    );
}

#[test]
fn passwords_never_reach_the_output() {
    let project = Project::with_local_migrations(
        &[(
            "t",
            "postgres://sluice_nobody:hunter2secret@127.0.0.1:1/nodb",
        )],
        "",
    );
    project.add_migration(M1, "CREATE TABLE a (id int);\n");
    let out = project.run(&["status", "--env", "t"]);
    assert_exit_code(&out, 2);
    let text = output_text(&out);
    assert!(!text.contains("hunter2secret"), "{text}");
    assert!(text.contains("cannot connect to environment `t`"), "{text}");
}

#[test]
fn a_syntax_error_reports_line_and_column_in_the_file() {
    let db = pg().create_db("syntax");
    let project = Project::with_local_migrations(&[("t", &db.url)], "");
    project.add_migration(
        M1,
        "-- CreateTable\nCREATE TABLE \"t\" (\n    \"id\" int,\n    \"name\" text,\n);\n",
    );
    let out = project.run(&["apply", "--env", "t"]);
    assert_exit_code(&out, 1);
    let err = stderr(&out);
    assert!(err.contains("migration.sql:5:1"), "line 5, column 1: {err}");
    assert!(
        err.contains("SQLSTATE 42601") && err.contains("syntax error at or near \")\""),
        "{err}"
    );
}

#[test]
fn a_migration_waits_for_a_table_lock_no_longer_than_lock_timeout() {
    let db = pg().create_db("ddl_lock");
    let project = Project::with_local_migrations(&[("t", &db.url)], "lock_timeout = \"1s\"\n");
    project.add_migration(M1, "CREATE TABLE busy (id int);\n");
    project.run_ok(&["apply", "--env", "t"]);
    project.add_migration(
        M2,
        "CREATE TABLE other (id int);\nALTER TABLE busy ADD COLUMN note text;\n",
    );
    let holder = spawn_psql_holding(&db, &["BEGIN", "LOCK TABLE busy IN ACCESS SHARE MODE"]);
    let started = Instant::now();
    let out = project.run(&["apply", "--env", "t"]);
    let elapsed = started.elapsed();
    release(holder, &db);
    assert_exit_code(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains("SQLSTATE 55P03") && err.contains("lock timeout"),
        "{err}"
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "the migration gave up after lock_timeout, without replaying it: {elapsed:?}"
    );
    assert_eq!(db.psql("SELECT to_regclass('other') IS NULL"), "t");
    project.run_ok(&[
        "resolve",
        "--env",
        "t",
        "--rolled-back",
        M2,
        "--reason",
        "retry",
    ]);
    project.run_ok(&["apply", "--env", "t"]);
}
