//! Crash injection into the run state machine: for every state, the daemon is paused right
//! after it wrote that state (before the action it announces), killed with SIGKILL, and
//! started again. The run must end consistently: the environment fully on the release and
//! recorded, or fully back where it was; no advisory lock left; exactly one snapshot.

mod common;

use std::time::Duration;

use chrono::{Timelike, Utc};
use common::daemon::*;
use common::*;

const TOKEN: &str = "slc_crash_test_token_0123456789";

const M1: &str = "20240101000000_users";
const M2: &str = "20240102000000_orders";
const M3: &str = "20240103000000_index";

struct Setup {
    project: Project,
    db: TestDb,
}

fn setup(prefix: &str, failing_health: bool, gated: bool) -> Setup {
    let db = pg().create_db(prefix);
    let health = if failing_health {
        "[[health]]\nname = \"no-users-yet\"\nkind = \"sql\"\nquery = \"SELECT count(*) FROM users\"\nexpect = 1\ninterval = \"20ms\"\n"
    } else {
        "[[health]]\nname = \"tables\"\nkind = \"schema\"\ntables = [\"users\", \"orders\"]\n"
    };
    let mut project = Project::with_local_migrations(&[], "");
    project.add_env(
        "dev",
        &db.url,
        &format!("lock_timeout = \"5s\"\n[snapshot]\nprovider = \"pg-template\"\n{health}"),
    );
    project.add_migration(
        M1,
        "CREATE TABLE users (id serial PRIMARY KEY, email text NOT NULL);\n",
    );
    project.add_migration(
        M2,
        "CREATE TABLE orders (id serial PRIMARY KEY, user_id int REFERENCES users(id));\n",
    );
    // A statement-by-statement migration, so `applying` has progress inside one migration too.
    project.add_migration(
        M3,
        "CREATE INDEX CONCURRENTLY orders_user ON orders (user_id);\n",
    );
    write_tokens(&project, &[("ops", TOKEN, "\"*\" = \"admin\"")]);
    std::fs::write(
        project.path().join("sluice.toml"),
        "migrations = \"migrations\"\nstate_dir = \".sluice\"\n[daemon]\ntokens_file = \"tokens.toml\"\ntick = \"100ms\"\nwatch_interval = \"0s\"\n",
    )
    .unwrap();
    let policies = project.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    let mut policy =
        String::from("environment = \"dev\"\n[rollback]\non_failure = [\"snapshot\"]\n");
    if gated {
        let now = Utc::now();
        policy.push_str(&format!(
            "[[windows]]\nkind = \"deny\"\ncron = \"{} {} {} * * *\"\nduration = \"15s\"\n",
            now.second(),
            now.minute(),
            now.hour()
        ));
    }
    std::fs::write(policies.join("dev.toml"), policy).unwrap();
    db.psql("CREATE TABLE keepme (id int PRIMARY KEY); INSERT INTO keepme VALUES (7)");
    Setup { project, db }
}

fn advisory_locks(db: &TestDb) -> i64 {
    db.psql_i64(&format!(
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
         WHERE l.locktype = 'advisory' AND d.datname = '{}'",
        db.name
    ))
}

fn copies(db: &TestDb, infix: &str) -> i64 {
    db.psql_i64(&format!(
        "SELECT count(*) FROM pg_database WHERE starts_with(datname, '{}{infix}')",
        db.name
    ))
}

fn snapshots(db: &TestDb) -> i64 {
    copies(db, "_snap_")
}

/// Pauses the daemon at `point`, kills it there, restarts it and checks the run's outcome.
fn crash_at(point: &str, failing_health: bool, gated: bool) {
    let tag: String = point.chars().filter(char::is_ascii_alphanumeric).collect();
    let s = setup(&format!("crash_{tag}"), failing_health, gated);
    let before = s.db.full_dump();
    let mut daemon = Daemon::start(&s.project, &[("SLUICE_TEST_PAUSE", point)]);
    let base = daemon.base.clone();
    // The request may itself pause (at `queued`), so it is sent from a thread.
    let request = std::thread::spawn(move || {
        let _ = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap()
            .post(format!("{base}/v1/promotions"))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(r#"{"to": "dev", "reason": "crash test"}"#)
            .send();
    });
    daemon.wait_for_log(
        &format!("sluice-test-paused: {point}"),
        Duration::from_secs(90),
    );
    daemon.kill();
    let _ = request.join();

    let daemon = Daemon::start(&s.project, &[]);
    let runs = daemon.wait_runs("dev", TOKEN, Duration::from_secs(120), |runs| {
        runs.len() == 1 && matches!(state_of(&runs[0]), "succeeded" | "rolled_back" | "halted")
    });
    let run = &runs[0];
    let expected = if failing_health {
        "rolled_back"
    } else {
        "succeeded"
    };
    assert_eq!(state_of(run), expected, "{run}\n{}", daemon.log());
    let history = s.db.psql_try(
        "SELECT string_agg(migration_name || ':' || (finished_at IS NOT NULL) || ':' || (rolled_back_at IS NOT NULL), ',' ORDER BY migration_name) FROM _prisma_migrations",
    );
    if failing_health {
        assert_eq!(
            s.db.full_dump(),
            before,
            "the environment is back where it was"
        );
        assert!(
            history.is_err() || history.as_deref() == Ok(""),
            "{history:?}"
        );
    } else {
        assert_eq!(
            history.unwrap(),
            format!("{M1}:true:false,{M2}:true:false,{M3}:true:false"),
            "every migration applied exactly once and recorded"
        );
        assert_eq!(
            s.db.psql_i64("SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = 'orders_user' AND i.indisvalid"),
            1
        );
        let (_, env) = daemon.get("/v1/environments/dev", Some(TOKEN));
        assert_eq!(env["release"], run["release"], "{env}");
    }
    assert_eq!(advisory_locks(&s.db), 0, "no advisory lock left behind");
    if failing_health {
        // The snapshot became the database again; what it replaced is kept, once.
        assert_eq!(snapshots(&s.db), 0, "the one snapshot was restored");
        assert_eq!(
            copies(&s.db, "_failed_"),
            1,
            "exactly one kept copy of the replaced state"
        );
    } else {
        assert_eq!(snapshots(&s.db), 1, "exactly one snapshot for the run");
    }
    let (_, env) = daemon.get("/v1/environments/dev", Some(TOKEN));
    assert!(
        env["active_run"].is_null(),
        "the environment is free again: {env}"
    );
    assert_eq!(
        s.db.psql_i64("SELECT count(*) FROM keepme WHERE id = 7"),
        1,
        "data from before the run is still there"
    );
    assert_eq!(
        databases_refusing_connections(&s.db),
        "",
        "every database accepts connections again"
    );
}

macro_rules! crash_tests {
    ($($name:ident: $point:expr, $failing:expr, $gated:expr;)*) => {$(
        #[test]
        fn $name() {
            crash_at($point, $failing, $gated);
        }
    )*};
}

crash_tests! {
    killed_while_queued: "run-state:queued", false, false;
    killed_while_gated: "run-state:gated", false, true;
    killed_while_locked: "run-state:locked", false, false;
    item01_killed_while_the_template_copy_blocks_connections: "snapshot-isolated", false, false;
    item01_killed_while_a_restore_blocks_connections: "restore-between-renames", true, false;
    killed_while_snapshotted: "run-state:snapshotted", false, false;
    killed_while_applying_the_first_migration: "run-state:applying:1", false, false;
    killed_while_applying_the_third_migration: "run-state:applying:3", false, false;
    killed_while_verifying: "run-state:verifying", false, false;
    killed_when_succeeded: "run-state:succeeded", false, false;
    killed_while_verifying_a_failing_check: "run-state:verifying", true, false;
    killed_while_rolling_back: "run-state:rolling_back", true, false;
    killed_when_rolled_back: "run-state:rolled_back", true, false;
}

/// SIGTERM while a run verifies (a slow check): the daemon parks the run and exits at once;
/// the next start checks again and finishes it.
#[test]
fn sigterm_parks_a_verifying_run_and_the_next_start_finishes_it() {
    let s = setup("sigterm", false, false);
    let env_file = s.project.env_file("dev");
    let text = std::fs::read_to_string(&env_file).unwrap()
        + "[[health]]\nname = \"slow\"\nkind = \"sql\"\nquery = \"SELECT 1\"\nexpect = 1\ninterval = \"300ms\"\ncount = 20\n";
    std::fs::write(&env_file, text).unwrap();
    let mut daemon = Daemon::start(&s.project, &[]);
    let (status, created) = daemon.post("/v1/promotions", Some(TOKEN), r#"{"to": "dev"}"#);
    assert_eq!(status, 202, "{created}");
    let id = created[0]["id"].as_str().unwrap().to_string();
    daemon.wait_run(&id, TOKEN, Duration::from_secs(60), |r| {
        state_of(r) == "verifying" && r["measurements"].as_array().is_some_and(|m| m.len() >= 2)
    });
    let stopped = std::time::Instant::now();
    let status = daemon.terminate();
    assert!(status.success(), "{status}\n{}", daemon.log());
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "the daemon waited for the checks"
    );
    assert!(daemon.log().contains("shutting down"), "{}", daemon.log());

    let daemon = Daemon::start(&s.project, &[]);
    let run = daemon.wait_run(&id, TOKEN, Duration::from_secs(90), |r| {
        state_of(r) == "succeeded"
    });
    let verifying = run["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["name"] == "verifying")
        .count();
    assert_eq!(verifying, 1, "parking does not add a transition: {run}");
    assert_eq!(snapshots(&s.db), 1);
    assert_eq!(advisory_locks(&s.db), 0);
}
