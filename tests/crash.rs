//! SIGKILL of `sluice apply` at exact steps (through the test pause points) and at arbitrary
//! moments of a long corpus apply; the rerun must finish with the schema and history of a clean
//! run, no duplicated rows and no statement run twice.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

const M1: &str = "20240101000000_log";
const M2: &str = "20240102000000_concurrent";
const M3: &str = "20240103000000_own_transactions";
const M4: &str = "20240104000000_tail";
const M5: &str = "20240105000000_lone_index";

/// Every statement leaves a row in `log`, whose primary key makes a repeated statement fail
/// the rerun loudly; the index builds fail if repeated too (no IF NOT EXISTS).
fn write_set(project: &Project) {
    project.add_migration(
        M1,
        "CREATE TABLE log (step text PRIMARY KEY);\nINSERT INTO log VALUES ('m1');\n",
    );
    project.add_migration(
        M2,
        "INSERT INTO log VALUES ('m2-1');\n\
         CREATE INDEX CONCURRENTLY log_a_idx ON log (step);\n\
         INSERT INTO log VALUES ('m2-3');\n\
         DROP INDEX CONCURRENTLY log_a_idx;\n\
         CREATE UNIQUE INDEX CONCURRENTLY log_b_idx ON log (step);\n\
         INSERT INTO log VALUES ('m2-6');\n",
    );
    project.add_migration(
        M3,
        "BEGIN;\nINSERT INTO log VALUES ('m3-1');\nINSERT INTO log VALUES ('m3-2');\nCOMMIT;\n\
         INSERT INTO log VALUES ('m3-3');\n\
         BEGIN;\nINSERT INTO log VALUES ('m3-4');\nCOMMIT;\n",
    );
    project.add_migration(M4, "INSERT INTO log VALUES ('m4');\n");
    project.add_migration(
        M5,
        "-- CreateIndex\nCREATE INDEX CONCURRENTLY \"log_c_idx\" ON log (step);\n",
    );
}

const ALL_STEPS: &str = "m1,m2-1,m2-3,m2-6,m3-1,m3-2,m3-3,m3-4,m4";

/// Starts `sluice apply` paused at `point`, waits until it says so, and SIGKILLs it.
fn kill_at(project: &Project, point: &str) {
    let mut child = project
        .cmd(&["apply", "--env", "t"])
        .env("SLUICE_TEST_PAUSE", point)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with("sluice-test-paused:") {
                let _ = tx.send(Ok(line));
                return;
            }
            seen.push_str(&line);
            seen.push('\n');
        }
        let _ = tx.send(Err(seen));
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Ok(line)) => assert_eq!(line, format!("sluice-test-paused: {point}")),
        Ok(Err(output)) => panic!("sluice never reached {point}:\n{output}"),
        Err(_) => panic!("timed out waiting for {point}"),
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

fn assert_clean_end(db: &TestDb, reference: &str, point: &str) {
    assert_eq!(
        db.psql("SELECT string_agg(step, ',' ORDER BY step) FROM log"),
        ALL_STEPS,
        "every statement ran exactly once (killed at {point})"
    );
    assert_eq!(
        db.psql(
            "SELECT count(*), count(DISTINCT migration_name), \
             count(*) FILTER (WHERE finished_at IS NOT NULL AND rolled_back_at IS NULL) \
             FROM _prisma_migrations"
        ),
        "5|5|5",
        "one finished history row per migration (killed at {point})"
    );
    assert_eq!(
        db.psql("SELECT count(*) FROM pg_index WHERE NOT indisvalid"),
        "0",
        "no invalid index left behind (killed at {point})"
    );
    assert_text_eq(
        &format!("schema after a kill at {point}"),
        "clean run",
        reference,
        "after kill + rerun",
        &db.schema_dump(),
    );
}

#[test]
fn sigkill_at_every_step_then_rerun_ends_like_a_clean_run() {
    let clean = pg().create_db("crash_ref");
    let reference_project = Project::with_local_migrations(&[("t", &clean.url)], "");
    write_set(&reference_project);
    reference_project.run_ok(&["apply", "--env", "t"]);
    let reference = clean.schema_dump();

    let mut points = vec![
        "after-lock".to_string(),
        format!("before-migration:{M1}"),
        format!("before-migration:{M4}"),
    ];
    for i in 0..6 {
        points.push(format!("before-statement:{M2}:{i}"));
    }
    for i in [1, 3, 4] {
        points.push(format!("before-bare:{M2}:{i}"));
        points.push(format!("after-bare:{M2}:{i}"));
    }
    for i in [0, 4, 5] {
        points.push(format!("before-statement:{M3}:{i}"));
    }
    points.push(format!("before-bare:{M5}:0"));
    points.push(format!("after-bare:{M5}:0"));
    for point in &points {
        let db = pg().create_db("crash_step");
        let project = Project::with_local_migrations(&[("t", &db.url)], "lock_timeout = \"30s\"\n");
        write_set(&project);
        kill_at(&project, point);
        let rerun = project.run(&["apply", "--env", "t"]);
        assert!(
            rerun.status.success(),
            "rerun after a kill at {point} failed:\n{}",
            output_text(&rerun)
        );
        assert_clean_end(&db, &reference, point);
        assert_exit_code(&project.run(&["status", "--env", "t"]), 0);
    }
}

#[test]
#[ignore = "needs ../shared/corpora"]
fn sigkill_at_arbitrary_moments_of_the_langfuse_apply() {
    let corpus = corpus_migrations("langfuse");
    let clean = pg().create_db("crash_lf_ref");
    let reference_project = Project::new(&corpus, &[("t", &clean.url)]);
    let started = Instant::now();
    reference_project.run_ok(&["apply", "--env", "t"]);
    let full = started.elapsed();
    let reference = clean.schema_dump();
    let rows = clean.psql("SELECT count(*) FROM _prisma_migrations");

    for fraction in [0.05, 0.2, 0.35, 0.5, 0.65, 0.8, 0.95] {
        let db = pg().create_db("crash_lf");
        let project = Project::with_options(&corpus, &[("t", &db.url)], "lock_timeout = \"60s\"\n");
        let mut child = project
            .cmd(&["apply", "--env", "t"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(full.mul_f64(fraction));
        child.kill().unwrap();
        child.wait().unwrap();
        let partial = db
            .psql_try("SELECT count(*) FROM _prisma_migrations")
            .unwrap_or_else(|_| "no table".into());
        eprintln!("killed at {fraction} of {full:?}: {partial} history rows of {rows}");
        let rerun = project.run(&["apply", "--env", "t"]);
        assert!(
            rerun.status.success(),
            "rerun after a kill at {fraction} ({partial} rows) failed:\n{}",
            output_text(&rerun)
        );
        assert_eq!(
            db.psql("SELECT count(*) FROM _prisma_migrations"),
            rows,
            "one row per migration after a kill at {fraction}"
        );
        assert_eq!(
            db.psql(
                "SELECT count(*) FROM _prisma_migrations WHERE finished_at IS NULL OR rolled_back_at IS NOT NULL"
            ),
            "0"
        );
        assert_eq!(
            db.psql("SELECT count(*) FROM pg_index WHERE NOT indisvalid"),
            "0"
        );
        assert_text_eq(
            &format!("langfuse schema after a kill at {fraction} of the run ({partial} rows then)"),
            "clean run",
            &reference,
            "after kill + rerun",
            &db.schema_dump(),
        );
    }
}
