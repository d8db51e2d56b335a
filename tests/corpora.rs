//! Corpus equivalence: applying a real-world Prisma migration history with `sluice apply`
//! must give exactly the schema that plain `psql` gives, and a `_prisma_migrations` table
//! that Prisma itself would accept.
//!
//! Needs the corpora (`../shared/corpora` or `$SLUICE_CORPORA`), hence ignored unless asked for:
//! `cargo test --test corpora -- --ignored`.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// (migration_name, checksum) for every migration directory, checksum = lowercase hex
/// SHA-256 of the raw `migration.sql` bytes, computed with `sha256sum`.
fn expected_history(migrations: &Path) -> BTreeSet<(String, String)> {
    let dirs = migration_dirs(migrations);
    assert!(
        !dirs.is_empty(),
        "no migrations under {}",
        migrations.display()
    );
    let files: Vec<PathBuf> = dirs.iter().map(|d| d.join("migration.sql")).collect();
    let out = Command::new("sha256sum")
        .args(&files)
        .output()
        .expect("cannot run sha256sum");
    assert!(
        out.status.success(),
        "sha256sum failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("sha256sum output is UTF-8");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), files.len(), "one sha256sum line per file");
    dirs.iter()
        .zip(lines)
        .map(|(dir, line)| {
            // "<hex>  <file>"; a leading '\' marks an escaped file name.
            let hex = line.trim_start_matches('\\');
            let hex = &hex[..64];
            assert!(
                hex.bytes().all(|b| b.is_ascii_hexdigit()),
                "bad sha256sum line {line:?}"
            );
            let name = dir
                .file_name()
                .unwrap()
                .to_str()
                .expect("UTF-8 migration name");
            (name.to_string(), hex.to_ascii_lowercase())
        })
        .collect()
}

fn history_rows(db: &TestDb) -> i64 {
    db.psql_i64("SELECT count(*) FROM _prisma_migrations")
}

fn check_corpus(corpus: &str) {
    let migrations = corpus_migrations(corpus);
    let migrations = migrations
        .canonicalize()
        .unwrap_or_else(|e| panic!("corpus {corpus} not found at {}: {e}", migrations.display()));
    let expected = expected_history(&migrations);
    let server = pg();

    // 1. sluice apply into a fresh database.
    let db = server.create_db(&format!("corpus_{corpus}_sluice"));
    let project = Project::new(&migrations, &[("test", &db.url)]);
    let started = std::time::Instant::now();
    let out = project.run(&["apply", "--env", "test"]);
    if !out.status.success() {
        panic!(
            "{corpus}: `sluice apply --env test` failed\n{}",
            output_text(&out)
        );
    }
    eprintln!(
        "{corpus}: sluice apply of {} migrations took {:?}",
        expected.len(),
        started.elapsed()
    );

    // 2. The psql reference into another fresh database.
    let reference = server.create_db(&format!("corpus_{corpus}_psql"));
    let started = std::time::Instant::now();
    let non_tx = psql_reference_apply(&reference, &migrations);
    eprintln!(
        "{corpus}: psql reference apply took {:?} ({} files outside a transaction)",
        started.elapsed(),
        non_tx.len()
    );

    // 3. Same schema.
    assert_text_eq(
        &format!("{corpus}: schema after sluice apply vs psql reference"),
        "sluice",
        &db.schema_dump(),
        "psql",
        &reference.schema_dump(),
    );

    // 4. _prisma_migrations: one finished row per migration, with Prisma's checksums.
    let rows = history_rows(&db);
    assert_eq!(
        rows,
        expected.len() as i64,
        "{corpus}: _prisma_migrations should have one row per migration directory"
    );
    let unfinished = db.psql(
        "SELECT migration_name FROM _prisma_migrations \
         WHERE finished_at IS NULL OR rolled_back_at IS NOT NULL OR logs IS NOT NULL \
         ORDER BY migration_name",
    );
    assert!(
        unfinished.is_empty(),
        "{corpus}: rows not cleanly finished (finished_at NULL, rolled_back_at or logs set):\n{unfinished}"
    );
    // Names may contain spaces but no '|' or newlines; use a tab separator to be safe.
    let actual: BTreeSet<(String, String)> = db
        .psql("SELECT migration_name || E'\\t' || checksum FROM _prisma_migrations")
        .lines()
        .map(|l| {
            let (name, sum) = l.split_once('\t').unwrap_or((l, ""));
            (name.to_string(), sum.to_string())
        })
        .collect();
    if actual != expected {
        let missing: Vec<_> = expected.difference(&actual).take(20).collect();
        let extra: Vec<_> = actual.difference(&expected).take(20).collect();
        panic!(
            "{corpus}: (migration_name, checksum) in _prisma_migrations differ from the files\n\
             expected but missing (first 20): {missing:#?}\nunexpected (first 20): {extra:#?}"
        );
    }

    // 5. status says up to date; a second apply is a no-op.
    let status = project.run(&["status", "--env", "test"]);
    if status.status.code() != Some(0) {
        panic!(
            "{corpus}: `sluice status --env test` should exit 0 after apply\n{}",
            output_text(&status)
        );
    }
    let again = project.run(&["apply", "--env", "test"]);
    if !again.status.success() {
        panic!(
            "{corpus}: second `sluice apply --env test` failed\n{}",
            output_text(&again)
        );
    }
    assert_eq!(
        history_rows(&db),
        rows,
        "{corpus}: second apply changed the number of history rows\n{}",
        output_text(&again)
    );
}

#[test]
#[ignore = "needs ../shared/corpora"]
fn corpus_documenso() {
    check_corpus("documenso");
}

#[test]
#[ignore = "needs ../shared/corpora"]
fn corpus_ghostfolio() {
    check_corpus("ghostfolio");
}

#[test]
#[ignore = "needs ../shared/corpora"]
fn corpus_hoppscotch() {
    check_corpus("hoppscotch");
}

#[test]
#[ignore = "needs ../shared/corpora"]
fn corpus_langfuse() {
    check_corpus("langfuse");
}

#[test]
#[ignore = "needs ../shared/corpora"]
fn corpus_papermark() {
    check_corpus("papermark");
}

#[test]
#[ignore = "needs ../shared/corpora"]
fn corpus_rallly() {
    check_corpus("rallly");
}

#[test]
#[ignore = "needs ../shared/corpora"]
fn corpus_typebot() {
    check_corpus("typebot");
}

#[test]
#[ignore = "needs ../shared/corpora"]
fn corpus_umami() {
    check_corpus("umami");
}
