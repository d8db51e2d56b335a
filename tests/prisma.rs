//! sluice and the real Prisma 6 CLI (`prisma migrate deploy`) on one database at the same
//! time. They share the migration lock 72707369, and one migration builds an index
//! `CONCURRENTLY`, which waits for every session holding an older snapshot — including a
//! session blocked in `SELECT pg_advisory_lock(...)`.
//!
//! The first test stands psql sessions in for the other deploy and runs in every `cargo test`;
//! the second runs the real CLI. It needs the Prisma 6 CLI installed by `../shared/prisma6/setup.sh DIR`, found through
//! `SLUICE_PRISMA6_DIR=DIR`, hence ignored unless asked for:
//! `SLUICE_PRISMA6_DIR=DIR cargo test --test prisma -- --ignored`. `.ci/run` installs it.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;

/// Prisma's migration lock key, which sluice uses in Prisma mode.
const MIGRATION_LOCK: i64 = 72_707_369;
/// The advisory lock the test holds to keep the first deploy inside its first migration.
const GATE: i64 = 11;

const ITEMS: &str = "20240101000000_items";
const ITEMS_NAME_IDX: &str = "20240102000000_items_name_idx";

/// How long the test waits for something it is sure will happen.
const PATIENCE: Duration = Duration::from_secs(90);

/// A running command whose output is drained on threads, so it never blocks on a full pipe.
struct Running {
    what: String,
    child: Child,
    stdout: JoinHandle<Vec<u8>>,
    stderr: JoinHandle<Vec<u8>>,
    started: Instant,
}

impl Running {
    fn spawn(what: &str, mut cmd: Command) -> Running {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let drain = |mut pipe: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = pipe.read_to_end(&mut buf);
                buf
            })
        };
        let stdout = drain(Box::new(child.stdout.take().expect("piped stdout")));
        let stderr = drain(Box::new(child.stderr.take().expect("piped stderr")));
        Running {
            what: what.to_string(),
            child,
            stdout,
            stderr,
            started: Instant::now(),
        }
    }

    fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the command to end; kills it and panics, showing its output, after `limit`.
    fn finish(mut self, limit: Duration) -> (Output, Duration) {
        let deadline = Instant::now() + limit;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Ok(None) => {
                    let _ = self.child.kill();
                    let out = Output {
                        status: self.child.wait().expect("reap the killed command"),
                        stdout: self.stdout.join().unwrap_or_default(),
                        stderr: self.stderr.join().unwrap_or_default(),
                    };
                    panic!(
                        "{} did not finish within {limit:?} (killed)\n{}",
                        self.what,
                        output_text(&out)
                    );
                }
                Err(e) => panic!("waiting for {}: {e}", self.what),
            }
        };
        let elapsed = self.started.elapsed();
        let out = Output {
            status,
            stdout: self.stdout.join().unwrap_or_default(),
            stderr: self.stderr.join().unwrap_or_default(),
        };
        (out, elapsed)
    }
}

/// `../shared/prisma6/run.sh ARGS` against `db` with `migrations` (the recipe in
/// `../shared/prisma6/README.md`).
fn prisma(db: &TestDb, migrations: &std::path::Path, args: &[&str]) -> Command {
    let dir = std::env::var_os("SLUICE_PRISMA6_DIR")
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| {
            panic!(
                "SLUICE_PRISMA6_DIR is not set: install the Prisma 6 CLI with \
                 `bash ../shared/prisma6/setup.sh DIR` and set SLUICE_PRISMA6_DIR=DIR"
            )
        });
    let run = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/prisma6/run.sh");
    assert!(run.is_file(), "{} is missing", run.display());
    let mut cmd = Command::new("bash");
    cmd.arg(run)
        .args(args)
        .env("PRISMA6_DIR", dir)
        .env("DATABASE_URL", &db.url)
        .env("MIG_PATH", migrations);
    cmd
}

/// The pids holding (`granted`) or waiting for an advisory lock on `key` in `db`.
fn advisory(db: &TestDb, key: i64, granted: bool) -> Vec<i32> {
    db.psql(&format!(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' \
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
           AND classid = {} AND objid = {} AND objsubid = 1 AND granted = {granted} ORDER BY pid",
        key >> 32,
        key & 0xffff_ffff
    ))
    .lines()
    .filter_map(|l| l.trim().parse().ok())
    .collect()
}

fn application_of(db: &TestDb, pid: i32) -> String {
    db.psql(&format!(
        "SELECT coalesce(application_name, '') FROM pg_stat_activity WHERE pid = {pid}"
    ))
}

/// Polls `probe` every 100 ms until it returns something; panics with `what` after PATIENCE.
fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A psql session holding the advisory lock GATE until [`Gate::open`].
struct Gate {
    session: Child,
}

impl Gate {
    fn close(db: &TestDb) -> Gate {
        let session = Command::new(db.server().bin("psql"))
            .args(["-X", "-q", "-A", "-t", "-d", &db.url])
            .args(["-c", &format!("SELECT pg_advisory_lock({GATE})")])
            .args(["-c", "SELECT pg_sleep(600)"])
            .env("PGAPPNAME", "item11-gate")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start the gate's psql");
        wait_for("the gate to close", || {
            (!advisory(db, GATE, true).is_empty()).then_some(())
        });
        Gate { session }
    }

    fn open(mut self, db: &TestDb) {
        let _ = self.session.kill();
        let _ = self.session.wait();
        db.psql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = 'item11-gate' AND datname = current_database()",
        );
    }
}

/// A database and a Prisma-layout project whose first migration waits at the gate and whose
/// second is a lone `CREATE INDEX CONCURRENTLY` (which Prisma runs outside a transaction too).
fn setup(name: &str) -> (TestDb, Project) {
    let db = pg().create_db(name);
    let project = Project::with_local_migrations(&[("t", &db.url)], "lock_timeout = \"30s\"\n");
    project.add_migration(
        ITEMS,
        &format!(
            "-- CreateTable\nCREATE TABLE \"items\" (\"id\" SERIAL PRIMARY KEY, \"name\" TEXT NOT NULL);\n\
             INSERT INTO \"items\" (\"name\") SELECT md5(g::text) FROM generate_series(1, 20000) g;\n\
             SELECT pg_advisory_xact_lock({GATE});\n"
        ),
    );
    project.add_migration(
        ITEMS_NAME_IDX,
        "-- CreateIndex\nCREATE INDEX CONCURRENTLY \"items_name_idx\" ON \"items\" (\"name\");\n",
    );
    (db, project)
}

fn spawn_sluice(project: &Project) -> Running {
    Running::spawn("sluice apply", project.cmd(&["apply", "--env", "t"]))
}

fn spawn_prisma_deploy(db: &TestDb, project: &Project) -> Running {
    Running::spawn(
        "prisma migrate deploy",
        prisma(
            db,
            &project.path().join("migrations"),
            &["migrate", "deploy"],
        ),
    )
}

/// The server log written since `from` (empty when the server is not the private cluster).
fn server_log_since(from: u64) -> String {
    let Some(dir) = pg().socket_dir() else {
        return String::new();
    };
    let log = std::fs::read(dir.join("postgres.log")).unwrap_or_default();
    String::from_utf8_lossy(log.get(from as usize..).unwrap_or_default()).into_owned()
}

fn server_log_len() -> u64 {
    pg().socket_dir()
        .and_then(|d| std::fs::metadata(d.join("postgres.log")).ok())
        .map_or(0, |m| m.len())
}

/// Both migrations applied exactly once, nothing failed, the index valid, nobody left waiting
/// for the migration lock, and `prisma migrate status` agreeing.
fn assert_consistent(db: &TestDb, project: &Project, scenario: &str) {
    assert_eq!(
        db.psql(
            "SELECT string_agg(migration_name || ':' || CASE WHEN rolled_back_at IS NOT NULL THEN 'rolled_back' \
             WHEN finished_at IS NOT NULL THEN 'finished' ELSE 'failed' END, ',' ORDER BY migration_name) \
             FROM _prisma_migrations"
        ),
        format!("{ITEMS}:finished,{ITEMS_NAME_IDX}:finished"),
        "{scenario}: each migration applied once, no failed row"
    );
    assert_eq!(
        db.psql(
            "SELECT string_agg(c.relname || ':' || i.indisvalid, ',' ORDER BY c.relname) \
             FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
             WHERE i.indrelid = 'items'::regclass"
        ),
        "items_name_idx:true,items_pkey:true",
        "{scenario}: the index is built and valid, no invalid leftover"
    );
    assert_eq!(db.psql_i64("SELECT count(*) FROM items"), 20000);
    wait_for(
        &format!("{scenario}: no session left on the migration lock"),
        || {
            (advisory(db, MIGRATION_LOCK, true).is_empty()
                && advisory(db, MIGRATION_LOCK, false).is_empty())
            .then_some(())
        },
    );
    let status = Running::spawn(
        "prisma migrate status",
        prisma(
            db,
            &project.path().join("migrations"),
            &["migrate", "status"],
        ),
    );
    let (status, _) = status.finish(PATIENCE);
    assert!(
        status.status.success() && output_text(&status).contains("Database schema is up to date"),
        "{scenario}: Prisma agrees with the end state\n{}",
        output_text(&status)
    );
}

fn assert_no_deadlock(scenario: &str, outputs: &[&Output], log_from: u64) {
    for out in outputs {
        let text = output_text(out);
        assert!(
            !text.contains("deadlock"),
            "{scenario}: a deadlock was reported\n{text}"
        );
    }
    let log = server_log_since(log_from);
    assert!(
        !log.contains("deadlock detected"),
        "{scenario}: the server detected a deadlock:\n{log}"
    );
}

/// A `prisma migrate deploy` still running, or its output once it ended.
enum Deploy {
    Running(Running),
    Done(Output),
}

/// sluice holds the lock; `prisma migrate deploy` waits for it; then sluice builds the index.
/// `timed_out_first`: let Prisma give up (its own 10 s) before the build starts, leaving its
/// server session waiting for the lock with no client.
fn sluice_first(timed_out_first: bool) {
    let scenario = if timed_out_first {
        "sluice first, Prisma already timed out"
    } else {
        "sluice first, Prisma still waiting"
    };
    let (db, project) = setup(if timed_out_first {
        "item11_sluice_first_orphan"
    } else {
        "item11_sluice_first"
    });
    let log_from = server_log_len();
    let gate = Gate::close(&db);
    let mut sluice = spawn_sluice(&project);
    let sluice_lock = wait_for("sluice to hold the migration lock", || {
        assert!(sluice.is_running(), "sluice ended before taking the lock");
        advisory(&db, MIGRATION_LOCK, true).first().copied()
    });
    assert_eq!(application_of(&db, sluice_lock), "sluice");
    wait_for("sluice's first migration to reach the gate", || {
        (!advisory(&db, GATE, false).is_empty()).then_some(())
    });
    let mut deploy = spawn_prisma_deploy(&db, &project);
    let prisma_pid = wait_for(
        "prisma migrate deploy to wait for the migration lock",
        || {
            assert!(
                deploy.is_running(),
                "Prisma ended before waiting for the lock"
            );
            advisory(&db, MIGRATION_LOCK, false).first().copied()
        },
    );
    let early_deploy = if timed_out_first {
        let (out, _) = deploy.finish(PATIENCE);
        assert!(
            output_text(&out).contains("Timed out trying to acquire a postgres advisory lock"),
            "{scenario}: Prisma gives up after its own timeout\n{}",
            output_text(&out)
        );
        assert_eq!(
            advisory(&db, MIGRATION_LOCK, false),
            [prisma_pid],
            "{scenario}: Prisma's server session still waits for the lock after the CLI exited"
        );
        Deploy::Done(out)
    } else {
        Deploy::Running(deploy)
    };
    let released = Instant::now();
    gate.open(&db);
    let (sluice_out, _) = sluice.finish(PATIENCE);
    let after_gate = released.elapsed();
    let deploy_out = match early_deploy {
        Deploy::Done(out) => out,
        Deploy::Running(deploy) => deploy.finish(PATIENCE).0,
    };
    eprintln!(
        "{scenario}: sluice finished {after_gate:?} after the gate opened\n--- sluice ---\n{}\n--- prisma ---\n{}",
        output_text(&sluice_out),
        output_text(&deploy_out)
    );
    assert_no_deadlock(scenario, &[&sluice_out, &deploy_out], log_from);
    assert!(
        sluice_out.status.success(),
        "{scenario}: sluice applies both migrations\n{}",
        output_text(&sluice_out)
    );
    assert!(
        after_gate < Duration::from_secs(15),
        "{scenario}: the index build did not stall until a timeout (took {after_gate:?})"
    );
    let said = String::from_utf8_lossy(&sluice_out.stderr);
    assert!(
        said.contains(&format!("waits for pid {prisma_pid}"))
            && said.contains(&format!("waiting for the migration lock {MIGRATION_LOCK}"))
            && said.contains(ITEMS_NAME_IDX),
        "{scenario}: sluice says plainly which session blocked the index build and why\n{said}"
    );
    let prisma_said = output_text(&deploy_out);
    assert!(
        deploy_out.status.success()
            || prisma_said.contains("canceling statement due to user request")
            || prisma_said.contains("Timed out trying to acquire a postgres advisory lock"),
        "{scenario}: Prisma either applied or stopped at the lock\n{prisma_said}"
    );
    assert_consistent(&db, &project, scenario);
}

/// `prisma migrate deploy` holds the lock; sluice waits for it; then Prisma builds the index.
fn prisma_first() {
    let scenario = "Prisma first";
    let (db, project) = setup("item11_prisma_first");
    let log_from = server_log_len();
    let gate = Gate::close(&db);
    let mut deploy = spawn_prisma_deploy(&db, &project);
    let prisma_pid = wait_for("Prisma to hold the migration lock", || {
        assert!(deploy.is_running(), "Prisma ended before taking the lock");
        advisory(&db, MIGRATION_LOCK, true).first().copied()
    });
    wait_for("Prisma's first migration to reach the gate", || {
        (advisory(&db, GATE, false) == [prisma_pid]).then_some(())
    });
    let mut sluice = spawn_sluice(&project);
    wait_for("sluice to wait for the migration lock", || {
        assert!(
            sluice.is_running(),
            "sluice ended before waiting for the lock"
        );
        let waiting = db.psql(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'sluice' \
             AND datname = current_database() AND query LIKE '%advisory_lock(%'",
        );
        (waiting != "0").then_some(())
    });
    gate.open(&db);
    let (deploy_out, _) = deploy.finish(PATIENCE);
    let (sluice_out, _) = sluice.finish(PATIENCE);
    eprintln!(
        "{scenario}:\n--- prisma ---\n{}\n--- sluice ---\n{}",
        output_text(&deploy_out),
        output_text(&sluice_out)
    );
    assert_no_deadlock(scenario, &[&sluice_out, &deploy_out], log_from);
    assert!(
        deploy_out.status.success()
            && output_text(&deploy_out).contains("All migrations have been successfully applied"),
        "{scenario}: Prisma applies both migrations\n{}",
        output_text(&deploy_out)
    );
    assert!(
        sluice_out.status.success()
            && String::from_utf8_lossy(&sluice_out.stdout).contains("up to date"),
        "{scenario}: sluice waits, then finds nothing to do\n{}",
        output_text(&sluice_out)
    );
    assert_consistent(&db, &project, scenario);
}

#[test]
#[ignore = "needs the Prisma 6 CLI (../shared/prisma6/setup.sh DIR, SLUICE_PRISMA6_DIR=DIR); .ci/run provides it"]
fn item11_prisma_deploy_and_sluice_index_builds_interlock_without_deadlock() {
    let started = Instant::now();
    prisma_first();
    sluice_first(false);
    sluice_first(true);
    eprintln!("item11: all three scenarios in {:?}", started.elapsed());
}

/// A psql session running `statements` (the last one blocking) as `application`.
fn psql_session(db: &TestDb, application: &str, statements: &[&str]) -> Child {
    let mut cmd = Command::new(db.server().bin("psql"));
    cmd.args(["-X", "-q", "-A", "-t", "-d", &db.url]);
    for statement in statements {
        cmd.arg("-c").arg(statement);
    }
    cmd.env("PGAPPNAME", application)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start psql as {application}: {e}"))
}

fn pid_of(db: &TestDb, application: &str) -> i32 {
    wait_for(&format!("the session of {application}"), || {
        db.psql(&format!(
            "SELECT pid FROM pg_stat_activity WHERE application_name = '{application}' \
             AND datname = current_database() AND backend_xmin IS NOT NULL"
        ))
        .trim()
        .parse()
        .ok()
    })
}

/// Without Prisma: sluice holds the lock while its first migration waits at the gate; a
/// session (a deploy stand-in) blocks in `pg_advisory_lock(72707369)` and another holds a
/// snapshot in an open transaction. The index build then waits for both: sluice names the
/// reader and leaves it alone (the build goes on when the test ends it), and cancels the
/// stand-in's lock wait, which could never end.
#[test]
fn item11_an_index_build_names_whom_it_waits_for_and_ends_a_wait_for_its_own_lock() {
    let (db, project) = setup("item11_lookalike");
    let gate = Gate::close(&db);
    let mut sluice = project
        .cmd(&["apply", "--env", "t"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sluice apply");
    let (lines_tx, lines) = mpsc::channel();
    let stderr = BufReader::new(sluice.stderr.take().expect("piped stderr"));
    let reader_thread = std::thread::spawn(move || {
        for line in stderr.lines().map_while(std::result::Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    wait_for(
        "sluice to reach the gate holding the migration lock",
        || {
            (!advisory(&db, MIGRATION_LOCK, true).is_empty()
                && !advisory(&db, GATE, false).is_empty())
            .then_some(())
        },
    );
    let deploy = psql_session(
        &db,
        "deploy-lookalike",
        &[&format!("SELECT pg_advisory_lock({MIGRATION_LOCK})")],
    );
    let deploy_pid = wait_for("the stand-in to wait for the migration lock", || {
        advisory(&db, MIGRATION_LOCK, false).first().copied()
    });
    let mut reader = psql_session(
        &db,
        "long-reader",
        &[
            "BEGIN ISOLATION LEVEL REPEATABLE READ",
            "SELECT 1",
            "SELECT pg_sleep(600)",
        ],
    );
    let reader_pid = pid_of(&db, "long-reader");
    gate.open(&db);

    let deadline = Instant::now() + PATIENCE;
    let mut said = Vec::new();
    let mut reader_ended = false;
    while !matches!(sluice.try_wait(), Ok(Some(_))) {
        assert!(
            Instant::now() < deadline,
            "sluice did not finish:\n{}",
            said.join("\n")
        );
        let Ok(line) = lines.recv_timeout(Duration::from_millis(100)) else {
            continue;
        };
        if !reader_ended && line.contains(&format!("waits for pid {reader_pid} ")) {
            db.psql(&format!("SELECT pg_terminate_backend({reader_pid})"));
            reader_ended = true;
        }
        said.push(line);
    }
    let status = sluice.wait().expect("sluice's status");
    let _ = reader_thread.join();
    said.extend(lines.try_iter());
    let said = said.join("\n");
    let _ = reader.kill();
    let _ = reader.wait();
    let deploy_out = deploy.wait_with_output().expect("the stand-in's output");
    assert!(status.success(), "sluice applies both migrations:\n{said}");
    assert!(
        said.contains(&format!(
            "CREATE INDEX CONCURRENTLY in `{ITEMS_NAME_IDX}` (statement 1, line 2) waits for pid {reader_pid} \
             (application_name `long-reader`"
        )) && said.contains("it goes on when that session's transaction ends (it waits at most lock_timeout, 30s)"),
        "sluice names the reader and says what it waits for:\n{said}"
    );
    assert!(
        said.contains(&format!(
            "waits for pid {deploy_pid} (application_name `deploy-lookalike`"
        )) && said.contains(&format!(
            "which is itself waiting for the migration lock {MIGRATION_LOCK} that this apply holds"
        )) && said.contains(&format!(
            "sluice cancelled pid {deploy_pid}'s wait for the lock"
        )),
        "sluice names the stand-in, says why it can never go on and what it did:\n{said}"
    );
    assert!(
        String::from_utf8_lossy(&deploy_out.stderr)
            .contains("canceling statement due to user request"),
        "the stand-in's lock wait was cancelled: {}",
        String::from_utf8_lossy(&deploy_out.stderr)
    );
    assert_eq!(
        db.psql(
            "SELECT string_agg(migration_name || ':' || (finished_at IS NOT NULL), ',' ORDER BY migration_name) \
             FROM _prisma_migrations"
        ),
        format!("{ITEMS}:true,{ITEMS_NAME_IDX}:true")
    );
    assert_eq!(
        db.psql("SELECT indisvalid FROM pg_index WHERE indexrelid = 'items_name_idx'::regclass"),
        "t"
    );
}
