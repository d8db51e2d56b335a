//! What broke when sluice was tried as production users and attackers would (issue 12): a
//! process killed mid-snapshot, another deployer on the same database, a failed migration, the
//! CLI beside a daemon, CI reading exit codes. Each test is named after the item it proves and
//! drives the real binary against the harness's private PostgreSQL cluster.

mod common;

use std::path::Path;
use std::time::Duration;

use common::daemon::*;
use common::hints::{hint_args, hints, run_hint};
use common::ladder::*;
use common::*;
use serde_json::Value;

fn history(db: &TestDb) -> String {
    db.psql_try(
        "SELECT string_agg(migration_name || ':' || (finished_at IS NOT NULL) || ':' || \
         (rolled_back_at IS NOT NULL), ',' ORDER BY started_at, migration_name) FROM _prisma_migrations",
    )
    .unwrap_or_else(|e| format!("no history table: {e}"))
}

fn copies(db: &TestDb, infix: &str) -> i64 {
    db.admin_psql(&format!(
        "SELECT count(*) FROM pg_database WHERE starts_with(datname, '{}{infix}')",
        db.name
    ))
    .parse()
    .unwrap()
}

fn promote(daemon: &Daemon, body: &str) -> String {
    let (status, created) = daemon.post("/v1/promotions", Some(DEPLOYER), body);
    assert_eq!(status, 202, "{created}");
    created[0]["id"].as_str().unwrap().to_string()
}

fn settled(run: &Value) -> bool {
    matches!(
        state_of(run),
        "succeeded" | "rolled_back" | "halted" | "cancelled" | "rejected"
    )
}

fn reason_of(run: &Value) -> String {
    run["state"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The daemon's URL and a deployer token, for running ladder hints against it.
fn daemon_env(daemon: &Daemon) -> [(&'static str, String); 2] {
    [
        ("SLUICE_URL", daemon.base.clone()),
        ("SLUICE_TOKEN", DEPLOYER.to_string()),
    ]
}

fn run_hints_ok(project: &Project, daemon: &Daemon, hints: &[String]) {
    let env = daemon_env(daemon);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    for hint in hints {
        let out = run_hint(project, hint, &env);
        assert!(
            out.status.success(),
            "the hint `{hint}` failed:\n{}",
            output_text(&out)
        );
    }
}

fn release_file(dir: &Path) -> std::path::PathBuf {
    dir.join("go-on")
}

#[test]
fn hints_are_found_and_split_like_a_shell_would() {
    let text = "failed. Next: `sluice resume abc`; or `sluice resolve --env dev --rolled-back 'a b' --reason \"…\"` and `psql -c x`";
    let found = hints(text);
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(hint_args(&found[0], "x"), ["resume", "abc"]);
    assert_eq!(
        hint_args(&found[1], "why"),
        [
            "resolve",
            "--env",
            "dev",
            "--rolled-back",
            "a b",
            "--reason",
            "why"
        ]
    );
}

/// Item 2: another deployer applies migrations between the run's snapshot and its migration
/// lock. The run halts, says what changed, and undoes nothing; its hints get the environment
/// moving again.
#[test]
fn item02_a_run_never_undoes_what_another_deployer_applied_under_it() {
    let ladder = Ladder::new("item02", &[]);
    ladder.policy(
        "dev",
        "environment = \"dev\"\n[rollback]\non_failure = [\"snapshot\"]\n",
    );
    let dev = ladder.db("dev");
    let pause = tempfile::tempdir().unwrap();
    let go_on = release_file(pause.path());
    let daemon = Daemon::start(
        &ladder.project,
        &[
            ("SLUICE_TEST_PAUSE", "run-state:snapshotted"),
            ("SLUICE_TEST_PAUSE_UNTIL", go_on.to_str().unwrap()),
        ],
    );
    let id = promote(&daemon, r#"{"to": "dev"}"#);
    daemon.wait_for_log(
        "sluice-test-paused: run-state:snapshotted",
        Duration::from_secs(60),
    );

    // Another deployer (a second sluice with its own state) applies two migrations now.
    let other = Project::new(
        &ladder.project.path().join("migrations"),
        &[("dev", &dev.url)],
    );
    other.run_ok(&["apply", "--env", "dev", "--to", M2]);
    std::fs::write(&go_on, "").unwrap();

    let run = daemon.wait_run(&id, DEPLOYER, Duration::from_secs(60), settled);
    assert_eq!(state_of(&run), "halted", "{run}");
    let reason = reason_of(&run);
    assert!(
        reason.contains("changed between the snapshot and the migration lock")
            && reason.contains(M1)
            && reason.contains(M2)
            && reason.contains("nothing was undone"),
        "the halt says what changed: {reason}"
    );
    assert_eq!(
        history(dev),
        format!("{M1}:true:false,{M2}:true:false"),
        "the other deploy's migrations stay applied"
    );
    assert_eq!(
        dev.psql_i64("SELECT count(*) FROM information_schema.tables WHERE table_name IN ('users', 'orders')"),
        2
    );
    assert_eq!(copies(dev, "_failed_"), 0, "nothing was restored");

    // Its hints: cancel, then promote again, which applies only what is left.
    let next = hints(&reason);
    assert!(
        next.iter().any(|h| h.starts_with("sluice cancel"))
            && next.iter().any(|h| h.starts_with("sluice promote")),
        "{reason}"
    );
    run_hints_ok(&ladder.project, &daemon, &next);
    let runs = daemon.wait_runs("dev", DEPLOYER, Duration::from_secs(60), |runs| {
        runs.iter().any(|r| r["id"] != id.as_str() && settled(r))
    });
    let again = runs.iter().find(|r| r["id"] != id.as_str()).unwrap();
    assert_eq!(state_of(again), "succeeded", "{again}");
    assert_eq!(
        history(dev),
        format!("{M1}:true:false,{M2}:true:false,{M3}:true:false")
    );
}

/// Item 3, first half: a migration fails and the run applied nothing. It halts (no restore:
/// writes since the snapshot survive), and the hint for a cause outside the migration works.
#[test]
fn item03_a_failed_migration_with_nothing_applied_halts_and_resume_works() {
    let ladder = Ladder::new("item03a", &[]);
    ladder.policy(
        "dev",
        "environment = \"dev\"\n[rollback]\non_failure = [\"down\", \"snapshot\"]\n",
    );
    let dev = ladder.db("dev");
    ladder
        .project
        .run_ok(&["apply", "--env", "dev", "--to", M1]);
    // M2 needs a table only a person can provide.
    add_migration_with_down(
        &ladder.project,
        M2,
        "CREATE TABLE orders (id serial PRIMARY KEY, user_id int NOT NULL REFERENCES users(id), \
         account_id int REFERENCES accounts(id));\n",
        "DROP TABLE orders;\n",
    );
    let pause = tempfile::tempdir().unwrap();
    let go_on = release_file(pause.path());
    let daemon = Daemon::start(
        &ladder.project,
        &[
            ("SLUICE_TEST_PAUSE", "run-state:snapshotted"),
            ("SLUICE_TEST_PAUSE_UNTIL", go_on.to_str().unwrap()),
        ],
    );
    let id = promote(&daemon, r#"{"to": "dev"}"#);
    daemon.wait_for_log(
        "sluice-test-paused: run-state:snapshotted",
        Duration::from_secs(60),
    );
    // Written after the snapshot: a restore would throw it away.
    dev.psql("INSERT INTO users (email) VALUES ('after-the-snapshot@example.com')");
    std::fs::write(&go_on, "").unwrap();

    let run = daemon.wait_run(&id, DEPLOYER, Duration::from_secs(60), settled);
    assert_eq!(state_of(&run), "halted", "{run}");
    let reason = reason_of(&run);
    assert!(reason.contains("42P01"), "the SQL error is there: {reason}");
    assert!(reason.contains("nothing was applied"), "{reason}");
    assert_eq!(copies(dev, "_failed_"), 0, "no restore: {reason}");
    assert_eq!(
        dev.psql_i64("SELECT count(*) FROM users WHERE email = 'after-the-snapshot@example.com'"),
        1,
        "writes made since the snapshot are kept"
    );
    let next = hints(&reason);
    let resume = next
        .iter()
        .find(|h| h.starts_with("sluice resume"))
        .unwrap_or_else(|| panic!("no resume hint: {reason}"));
    assert!(
        next.iter()
            .any(|h| h.starts_with("sluice resolve") && h.contains(M2)),
        "{reason}"
    );

    // The cause lies outside the migration: provide it, then follow the resume hint.
    dev.psql("CREATE TABLE accounts (id serial PRIMARY KEY)");
    run_hints_ok(&ladder.project, &daemon, std::slice::from_ref(resume));
    let run = daemon.wait_run(&id, DEPLOYER, Duration::from_secs(60), |r| {
        state_of(r) == "succeeded" || state_of(r) == "halted" && reason_of(r) != reason
    });
    assert_eq!(state_of(&run), "succeeded", "{run}");
    assert_eq!(
        history(dev),
        format!("{M1}:true:false,{M2}:false:true,{M2}:true:false,{M3}:true:false"),
        "the failed attempt keeps its row (rolled back), the retry has its own"
    );
}

/// Item 3, second half: the other hints of a halt (cancel, resolve, new release) work, and
/// after a restore the rolled-back run suggests nothing that no longer applies.
#[test]
fn item03_every_hint_after_a_halt_or_a_restore_works() {
    let ladder = Ladder::new("item03b", &[]);
    ladder.policy(
        "dev",
        "environment = \"dev\"\n[rollback]\non_failure = [\"snapshot\"]\n",
    );
    let dev = ladder.db("dev");
    ladder
        .project
        .run_ok(&["apply", "--env", "dev", "--to", M1]);
    let m2 = ladder.project.add_migration(
        M2,
        "CREATE TABLE orders (id serial PRIMARY KEY, user_id int REFERENCES nope(id));\n",
    );
    std::fs::remove_file(
        ladder
            .project
            .path()
            .join("migrations")
            .join(M3)
            .join("migration.sql"),
    )
    .unwrap();
    std::fs::remove_dir_all(ladder.project.path().join("migrations").join(M3)).unwrap();
    let daemon = Daemon::start(&ladder.project, &[]);
    let first = promote(&daemon, r#"{"to": "dev"}"#);
    let run = daemon.wait_run(&first, DEPLOYER, Duration::from_secs(60), settled);
    assert_eq!(state_of(&run), "halted", "{run}");
    let reason = reason_of(&run);
    // The migration must change: cancel, resolve its failed attempt, fix, promote.
    let next: Vec<String> = hints(&reason)
        .into_iter()
        .filter(|h| !h.starts_with("sluice resume"))
        .collect();
    assert_eq!(next.len(), 2, "cancel and resolve: {reason}");
    run_hints_ok(&ladder.project, &daemon, &next);
    std::fs::write(
        &m2,
        "CREATE TABLE orders (id serial PRIMARY KEY, user_id int REFERENCES users(id));\n",
    )
    .unwrap();
    // M3 now applies M2's table and fails after M2 committed: the run applied something.
    ladder.project.add_migration(
        M3,
        "ALTER TABLE orders ADD COLUMN total numeric NOT NULL DEFAULT 'not a number';\n",
    );
    let (status, body) = daemon.post("/v1/releases", Some(DEPLOYER), "{}");
    assert!(status == 200 || status == 201, "{status} {body}");
    let second = promote(&daemon, r#"{"to": "dev"}"#);
    let run = daemon.wait_run(&second, DEPLOYER, Duration::from_secs(90), settled);
    assert_eq!(state_of(&run), "rolled_back", "{run}");
    let reason = reason_of(&run);
    assert!(
        !reason.contains("resolve"),
        "after a restore there is no failed row to resolve: {reason}"
    );
    assert!(
        reason.contains("back where it was") && reason.contains("_failed_"),
        "{reason}"
    );
    assert_eq!(history(dev), format!("{M1}:true:false,{M2}:false:true"));
    run_hints_ok(&ladder.project, &daemon, &hints(&reason));
    // "fix the cause and promote again"
    std::fs::write(
        ladder
            .project
            .path()
            .join("migrations")
            .join(M3)
            .join("migration.sql"),
        "ALTER TABLE orders ADD COLUMN total numeric NOT NULL DEFAULT 0;\n",
    )
    .unwrap();
    let (status, body) = daemon.post("/v1/releases", Some(DEPLOYER), "{}");
    assert!(status == 200 || status == 201, "{status} {body}");
    let third = promote(&daemon, r#"{"to": "dev"}"#);
    let run = daemon.wait_run(&third, DEPLOYER, Duration::from_secs(90), settled);
    assert_eq!(state_of(&run), "succeeded", "{run}");
}

fn pg_template_project(prefix: &str) -> (Project, TestDb) {
    let db = pg().create_db(prefix);
    let mut project = Project::with_local_migrations(&[], "");
    project.add_env(
        "dev",
        &db.url,
        "lock_timeout = \"5s\"\n[snapshot]\nprovider = \"pg-template\"\n",
    );
    project.add_migration(
        M1,
        "CREATE TABLE users (id serial PRIMARY KEY, email text NOT NULL);\n",
    );
    db.psql("CREATE TABLE keepme (id int PRIMARY KEY); INSERT INTO keepme VALUES (7)");
    (project, db)
}

fn allows_connections(db: &TestDb) -> bool {
    db.admin_psql(&format!(
        "SELECT datallowconn FROM pg_database WHERE datname = '{}'",
        db.name
    )) == "t"
}

/// Item 1: `sluice apply` killed while its template copy blocks connections. The next command
/// that connects says exactly how to lift the block by hand; the next `apply` lifts it first
/// (sluice noted that it blocked them) and carries on.
#[test]
fn item01_a_killed_template_copy_never_locks_applications_out() {
    let (project, db) = pg_template_project("item01");
    Paused::start(
        project.cmd(&["apply", "--env", "dev"]),
        "snapshot-isolated",
        None,
    )
    .kill();
    assert!(
        !allows_connections(&db),
        "the kill left connections blocked (the situation this test is about)"
    );

    let status = project.run(&["status", "--env", "dev"]);
    assert_exit_code(&status, 2);
    let text = output_text(&status);
    let sql = format!(
        "ALTER DATABASE \"{}\" WITH ALLOW_CONNECTIONS true;",
        db.name
    );
    assert!(
        text.contains(&sql),
        "the message gives the exact SQL:\n{text}"
    );

    let apply = project.run(&["apply", "--env", "dev"]);
    assert_success(&apply);
    assert!(allows_connections(&db), "{}", output_text(&apply));
    assert!(
        output_text(&apply).contains("re-allowed connections"),
        "the apply says what it undid:\n{}",
        output_text(&apply)
    );
    assert_eq!(history(&db), format!("{M1}:true:false"));
    assert_eq!(databases_refusing_connections(&db), "");
    assert_eq!(
        copies(&db, "_snap_"),
        1,
        "one snapshot, by the second apply"
    );
}

/// Item 6: a second sluice copies the database for a snapshot while the daemon verifies a
/// healthy deploy. The daemon's checks wait out the block instead of rolling back, and a third
/// sluice waits for the second's copy instead of racing it.
#[test]
fn item06_another_sluices_snapshot_never_rolls_back_a_healthy_deploy() {
    let ladder = Ladder::new(
        "item06",
        &[(
            "dev",
            "[[health]]\nname = \"users\"\nkind = \"sql\"\nquery = \"SELECT count(*) FROM users\"\nexpect = 0\ntimeout = \"20s\"\n",
        )],
    );
    ladder.policy(
        "dev",
        "environment = \"dev\"\n[rollback]\non_failure = [\"snapshot\"]\n",
    );
    let dev = ladder.db("dev");
    let pause = tempfile::tempdir().unwrap();
    let daemon_go = pause.path().join("daemon-go");
    let daemon = Daemon::start(
        &ladder.project,
        &[
            ("SLUICE_TEST_PAUSE", "run-state:verifying"),
            ("SLUICE_TEST_PAUSE_UNTIL", daemon_go.to_str().unwrap()),
        ],
    );
    let id = promote(&daemon, r#"{"to": "dev"}"#);
    daemon.wait_for_log(
        "sluice-test-paused: run-state:verifying",
        Duration::from_secs(60),
    );

    // Two other sluices (their own state) snapshot dev: the first stops with connections
    // blocked, the second has to wait for it.
    let other = Project::new(
        &ladder.project.path().join("migrations"),
        &[("dev", &dev.url)],
    );
    std::fs::write(
        other.env_file("dev"),
        std::fs::read_to_string(other.env_file("dev")).unwrap()
            + "[snapshot]\nprovider = \"pg-template\"\n",
    )
    .unwrap();
    let copy_go = pause.path().join("copy-go");
    let copying = Paused::start(
        other.cmd(&["snapshot", "--env", "dev", "--reason", "second sluice"]),
        "snapshot-isolated",
        Some(&copy_go),
    );
    assert!(!allows_connections(dev));
    let mut third = other
        .cmd(&["snapshot", "--env", "dev", "--reason", "third sluice"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();

    std::fs::write(&daemon_go, "").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::write(&copy_go, "").unwrap();
    let (status, _, stderr) = copying.finish();
    assert!(status.success(), "{stderr}");
    let third_status = third.wait().unwrap();
    let mut third_err = String::new();
    std::io::Read::read_to_string(&mut third.stderr.take().unwrap(), &mut third_err).unwrap();
    assert!(third_status.success(), "{third_err}");
    assert!(
        third_err.contains("another session is copying or restoring"),
        "the third sluice waited for the second's copy: {third_err}"
    );

    let run = daemon.wait_run(&id, DEPLOYER, Duration::from_secs(60), settled);
    assert_eq!(state_of(&run), "succeeded", "{run}");
    assert_eq!(copies(dev, "_failed_"), 0, "nothing was restored");
    assert_eq!(
        copies(dev, "_snap_"),
        3,
        "the run's snapshot and the two others"
    );
    assert_eq!(databases_refusing_connections(dev), "");
}

/// Item 4: `sluice apply` on a project whose daemon runs refuses at once, before it touches
/// the database, naming the command that asks the daemon; and a daemon that takes the store
/// while an apply runs never hides the apply's SQL error.
#[test]
fn item04_apply_beside_a_daemon_refuses_first_and_never_hides_a_sql_error() {
    let ladder = Ladder::new("item04", &[]);
    let dev = ladder.db("dev");
    let mut daemon = Daemon::start(&ladder.project, &[]);
    let started = std::time::Instant::now();
    let out = ladder.project.run(&["apply", "--env", "dev"]);
    assert_exit_code(&out, 1);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "refused at once, not after waiting for the store"
    );
    let text = output_text(&out);
    assert!(
        text.contains("`sluice promote --to dev --only`") && text.contains("nothing was changed"),
        "{text}"
    );
    assert!(
        dev.psql_try("SELECT 1 FROM _prisma_migrations").is_err(),
        "the database was not touched"
    );
    daemon.kill();

    // The daemon starts while an apply stands between its lock and its first migration.
    ladder.project.add_migration(
        M2,
        "CREATE TABLE orders (id serial PRIMARY KEY, user_id int REFERENCES nope(id));\n",
    );
    let pause = tempfile::tempdir().unwrap();
    let go_on = release_file(pause.path());
    let applying = Paused::start(
        ladder
            .project
            .cmd(&["apply", "--env", "dev", "--no-snapshot"]),
        "after-lock",
        Some(&go_on),
    );
    let daemon = Daemon::start(&ladder.project, &[]);
    std::fs::write(&go_on, "").unwrap();
    let (status, _, stderr) = applying.finish();
    drop(daemon);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("42P01") && stderr.contains(M2),
        "the SQL error is what the user reads: {stderr}"
    );
    assert!(
        stderr.contains("could not be recorded in the state store"),
        "and the store's trouble beside it: {stderr}"
    );
}

fn ladder_cmd(
    ladder: &Ladder,
    daemon: &Daemon,
    token: &str,
    args: &[&str],
) -> std::process::Output {
    let mut cmd = ladder.project.cmd(args);
    cmd.env("SLUICE_URL", &daemon.base)
        .env("SLUICE_TOKEN", token);
    run_with_timeout(cmd, Duration::from_secs(120))
}

fn climbing_ladder(prefix: &str, staging_health: &str) -> Ladder {
    let ladder = Ladder::new(prefix, &[("staging", staging_health)]);
    ladder.policy("dev", "environment = \"dev\"\n");
    ladder.policy(
        "staging",
        "environment = \"staging\"\nfrom = \"dev\"\nauto_promote = true\n",
    );
    ladder.policy(
        "prod",
        "environment = \"prod\"\nfrom = \"staging\"\nauto_promote = true\n\
         [approvals]\nrequired = 1\nfrom = [\"alice\"]\n",
    );
    ladder
}

/// Item 10: `promote --to prod` follows every run on the way, new or already requested, and
/// exits 3 while prod waits for an approval, 0 once prod is on the release. `approve` (given a
/// short run id, item 15) prints the run's state now, not its history.
#[test]
fn item10_promote_exits_by_where_the_target_ends_up() {
    let ladder = climbing_ladder("item10", "");
    let daemon = Daemon::start(&ladder.project, &[]);
    // staging and prod already have runs for the release (waiting upstream): only dev is new.
    for env in ["prod", "staging"] {
        let (status, body) = daemon.post(
            "/v1/promotions",
            Some(DEPLOYER),
            &format!(r#"{{"to": "{env}", "ladder": false}}"#),
        );
        assert_eq!(status, 202, "{body}");
    }
    let out = ladder_cmd(&ladder, &daemon, DEPLOYER, &["promote", "--to", "prod"]);
    let text = output_text(&out);
    assert_exit_code(&out, 3);
    assert!(
        text.contains("staging")
            && text.contains("succeeded")
            && text.contains("waits for a person"),
        "the existing staging and prod runs were followed:\n{text}"
    );
    let (_, prod) = daemon.get("/v1/environments/prod", Some(DEPLOYER));
    let waiting = prod["waiting_runs"][0]["id"].as_str().unwrap().to_string();

    let out = ladder_cmd(&ladder, &daemon, ALICE, &["approve", &waiting[..8]]);
    let text = output_text(&out);
    assert_exit_code(&out, 0);
    assert!(text.contains(&format!("approved run {waiting}")), "{text}");
    assert_eq!(
        text.matches("queued").count(),
        0,
        "the history before the approval is not replayed:\n{text}"
    );
    assert!(text.contains("succeeded"), "{text}");

    let again = ladder_cmd(&ladder, &daemon, DEPLOYER, &["promote", "--to", "prod"]);
    assert_exit_code(&again, 0);
    assert!(
        output_text(&again).contains("nothing to do"),
        "{}",
        output_text(&again)
    );
}

/// Item 10: a run that rolls back on the way fails the pipeline (exit 1) and is named.
#[test]
fn item10_promote_exits_1_when_a_run_on_the_way_rolls_back() {
    let ladder = climbing_ladder(
        "item10rb",
        "[[health]]\nname = \"never\"\nkind = \"sql\"\nquery = \"SELECT 1\"\nexpect = 2\n",
    );
    let daemon = Daemon::start(&ladder.project, &[]);
    let out = ladder_cmd(&ladder, &daemon, DEPLOYER, &["promote", "--to", "prod"]);
    let text = output_text(&out);
    assert_exit_code(&out, 1);
    assert!(
        text.contains("staging") && text.contains("rolled back"),
        "the rolled-back run is named:\n{text}"
    );
}

/// Item 12: an approval that expired is renewed by the same approver approving again.
#[test]
fn item12_an_expired_approval_is_renewed_by_approving_again() {
    let ladder = Ladder::new("item12", &[]);
    ladder.policy(
        "dev",
        "environment = \"dev\"\n[approvals]\nrequired = 1\nexpiry = \"2s\"\n",
    );
    // A deny window keeps the run gated while the first approval expires.
    let now = chrono::Utc::now();
    std::fs::write(
        ladder.project.path().join("policies").join("dev.toml"),
        format!(
            "environment = \"dev\"\n[approvals]\nrequired = 1\nexpiry = \"2s\"\n\
             [[windows]]\nkind = \"deny\"\ncron = \"{} {} {} * * *\"\nduration = \"4s\"\n",
            chrono::Timelike::second(&now),
            chrono::Timelike::minute(&now),
            chrono::Timelike::hour(&now)
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&ladder.project, &[]);
    let id = promote(&daemon, r#"{"to": "dev"}"#);
    let (status, _) = daemon.post(&format!("/v1/runs/{id}/approve"), Some(ALICE), "{}");
    assert_eq!(status, 200);
    // Window over, approval expired: the run waits for an approval again.
    let run = daemon.wait_run(&id, DEPLOYER, Duration::from_secs(30), |r| {
        state_of(r) == "gated"
            && r["state"]["waiting_for"].as_array().is_some_and(|g| {
                g.len() == 1 && g[0].as_str().unwrap_or("").starts_with("approval:")
            })
    });
    assert_eq!(run["approvals"].as_array().unwrap().len(), 1);
    let (status, body) = daemon.post(&format!("/v1/runs/{id}/approve"), Some(ALICE), "{}");
    assert_eq!(status, 200, "{body}");
    let run = daemon.wait_run(&id, DEPLOYER, Duration::from_secs(30), settled);
    assert_eq!(
        state_of(&run),
        "succeeded",
        "the renewed approval counts: {run}"
    );
    assert_eq!(
        run["approvals"].as_array().unwrap().len(),
        2,
        "both approvals are on record"
    );
}

/// Item 15: a run is found by any unique prefix of 6 or more characters, in the CLI and the
/// API; a shorter or ambiguous one is a clear error.
#[test]
fn item15_runs_are_found_by_a_unique_prefix() {
    let ladder = Ladder::new("item15", &[]);
    ladder.policy("dev", "environment = \"dev\"\n");
    let daemon = Daemon::start(&ladder.project, &[]);
    let id = promote(&daemon, r#"{"to": "dev"}"#);
    daemon.wait_run(&id, DEPLOYER, Duration::from_secs(60), settled);
    let (status, run) = daemon.get(&format!("/v1/runs/{}", &id[..6]), Some(DEPLOYER));
    assert_eq!(status, 200, "{run}");
    assert_eq!(run["id"], id.as_str());
    let out = ladder_cmd(&ladder, &daemon, DEPLOYER, &["run", &id[..8]]);
    assert_exit_code(&out, 0);
    assert!(
        output_text(&out).contains(&format!("run {id} (promotion)")),
        "{}",
        output_text(&out)
    );
    let (status, body) = daemon.get(&format!("/v1/runs/{}", &id[..5]), Some(DEPLOYER));
    assert_eq!(status, 404, "{body}");
    assert!(body.to_string().contains("6 or more"), "{body}");
}

/// Item 15: `apply --resume` keeps the failed attempt's record: its row (with its error) is
/// marked rolled back, and the retry has a row of its own.
#[test]
fn item15_resume_keeps_the_failed_attempts_record() {
    let db = pg().create_db("item15resume");
    let project = Project::with_local_migrations(&[("t", &db.url)], "");
    project.add_migration(M1, "CREATE TABLE log (step text PRIMARY KEY);\n");
    let m2 = project.add_migration(
        M2,
        "INSERT INTO log VALUES ('one');\nCREATE INDEX CONCURRENTLY log_idx ON log (step);\nINSERT INTO log VALUES ('one');\n",
    );
    assert_exit_code(&project.run(&["apply", "--env", "t"]), 1);
    std::fs::write(
        &m2,
        "INSERT INTO log VALUES ('one');\nCREATE INDEX CONCURRENTLY log_idx ON log (step);\nINSERT INTO log VALUES ('two');\n",
    )
    .unwrap();
    project.run_ok(&["apply", "--env", "t", "--resume"]);
    assert_eq!(
        history(&db),
        format!("{M1}:true:false,{M2}:false:true,{M2}:true:false")
    );
    let kept = db.psql(&format!(
        "SELECT logs FROM _prisma_migrations WHERE migration_name = '{M2}' AND rolled_back_at IS NOT NULL"
    ));
    assert!(
        kept.contains("23505") && kept.contains("retried by run"),
        "the failed attempt's error and who retried it: {kept}"
    );
}

/// Item 16: what users read. A quote that never closes and a NUL byte are reported against
/// the migration's own file and line before anything is sent; a first statement failing says
/// none is committed; driver notices and colour codes stay out of a non-terminal's stderr; the
/// actor is the OS user when `$USER` is unset.
#[test]
fn item16_messages_name_the_migration_and_say_only_what_is_true() {
    let db = pg().create_db("item16");
    let project = Project::with_local_migrations(&[("t", &db.url)], "");
    project.add_migration(M1, "CREATE TABLE t (v text);\n");
    let m2 = project.add_migration(
        M2,
        "INSERT INTO t VALUES ('a');\nINSERT INTO t VALUES ('abc);\n",
    );
    let out = project.run(&["apply", "--env", "t"]);
    assert_exit_code(&out, 1);
    let text = output_text(&out);
    assert!(
        text.contains(&format!("{M2}/migration.sql:2:23")) && text.contains("never closed"),
        "the quote's own line in the migration's file:\n{text}"
    );
    assert!(
        !text.contains("INSERT INTO \"_prisma_migrations\""),
        "{text}"
    );
    let rows = history(&db);
    assert!(
        rows.is_empty() || rows.starts_with("no history table"),
        "the whole plan is checked before anything is sent: {rows}"
    );
    project.run_ok(&["apply", "--env", "t", "--to", M1]);

    std::fs::write(&m2, b"INSERT INTO t VALUES ('a');\nSELECT 1;\0\n").unwrap();
    let out = project.run(&["apply", "--env", "t"]);
    assert_exit_code(&out, 1);
    let text = output_text(&out);
    assert!(
        text.contains("NUL byte") && text.contains(&format!("{M2}/migration.sql:2:10")),
        "{text}"
    );
    assert!(!text.contains("08P01"), "{text}");

    // A statement-by-statement migration whose first statement fails.
    std::fs::write(
        &m2,
        "INSERT INTO nope VALUES (1);\nCREATE INDEX CONCURRENTLY t_v ON t (v);\n",
    )
    .unwrap();
    let out = project.run(&["apply", "--env", "t"]);
    assert_exit_code(&out, 1);
    let text = output_text(&out);
    assert!(
        text.contains("None of its 2 statements is committed"),
        "{text}"
    );
    assert!(!text.contains("Statements 1-0"), "{text}");
    assert!(
        !text.contains("there is no transaction in progress"),
        "{text}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "no colour codes on a non-terminal: {text:?}"
    );

    let mut cmd = project.cmd(&[
        "resolve",
        "--env",
        "t",
        "--rolled-back",
        M2,
        "--reason",
        "no $USER here",
    ]);
    cmd.env_remove("USER").env_remove("SLUICE_ACTOR");
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    assert_success(&out);
    let note = db.psql(&format!(
        "SELECT logs FROM _prisma_migrations WHERE migration_name = '{M2}'"
    ));
    let me = String::from_utf8(
        std::process::Command::new("id")
            .arg("-un")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        note.contains(&format!("resolved as rolled back by {}", me.trim())),
        "the OS user, not `unknown`: {note}"
    );
}

/// Item 3: a run the policy halts after it applied something (`on_failure = "halt"`) offers
/// `sluice rollback`, and that hint rolls back the halted run itself.
#[test]
fn item03_the_rollback_hint_of_a_halted_run_rolls_it_back() {
    let ladder = Ladder::new(
        "item03c",
        &[(
            "dev",
            "[[health]]\nname = \"never\"\nkind = \"sql\"\nquery = \"SELECT 1\"\nexpect = 2\n",
        )],
    );
    ladder.policy(
        "dev",
        "environment = \"dev\"\n[rollback]\non_failure = \"halt\"\n",
    );
    let dev = ladder.db("dev");
    let before = dev.full_dump();
    let daemon = Daemon::start(&ladder.project, &[]);
    let id = promote(&daemon, r#"{"to": "dev"}"#);
    let run = daemon.wait_run(&id, DEPLOYER, Duration::from_secs(60), settled);
    assert_eq!(state_of(&run), "halted", "{run}");
    let reason = reason_of(&run);
    let rollback: Vec<String> = hints(&reason)
        .into_iter()
        .filter(|h| h.starts_with("sluice rollback"))
        .collect();
    assert_eq!(rollback.len(), 1, "{reason}");
    run_hints_ok(&ladder.project, &daemon, &rollback);
    let run = daemon.wait_run(&id, DEPLOYER, Duration::from_secs(60), settled);
    assert_eq!(state_of(&run), "rolled_back", "{run}");
    assert_eq!(dev.full_dump(), before, "dev is back where it was");
}
