//! `sluice diff` between live environments and `sluice drift` against the expected schema, on
//! real PostgreSQL: a lagging environment and each kind of hand-made change are reported
//! exactly, `--sql` makes the left side match, an untouched database (every corpus) reports
//! nothing, and a bad environment is an error (exit 1), not a difference (exit 2).

mod common;

use common::ladder::*;
use common::*;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn diff_reports_what_a_lagging_environment_lacks_and_its_sql_closes_the_gap() {
    let ladder = Ladder::new("drift_diff", &[]);
    let project = &ladder.project;
    project.run_ok(&["apply", "--env", "dev"]);
    project.run_ok(&["apply", "--env", "staging", "--to", M2]);

    let out = project.run(&["diff", "staging", "dev", "--json"]);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut found: Vec<(String, String, String)> = doc["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap_or_default().to_string(),
                d["name"].as_str().unwrap_or_default().to_string(),
                d["change"].to_string(),
            )
        })
        .collect();
    found.sort();
    assert_eq!(found.len(), 2, "{doc}");
    assert!(
        found
            .iter()
            .any(|(k, n, c)| k == "enum" && n == "public.order_status" && c.contains("added")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|(k, n, c)| k == "column" && n == "public.orders.status" && c.contains("added")),
        "{found:?}"
    );

    let human = stdout(&project.run(&["diff", "staging", "dev"]));
    assert!(
        human.contains("2 difference(s) between `staging` (left) and `dev` (right)"),
        "{human}"
    );
    assert!(human.contains("order_status"), "{human}");

    let out = project.run(&["diff", "staging", "dev", "--sql"]);
    assert_eq!(out.status.code(), Some(2));
    let script = stdout(&out);
    assert!(
        script.contains("CREATE TYPE public.order_status AS ENUM ('new', 'paid')"),
        "{script}"
    );
    ladder.db("staging").psql(&script);
    let out = project.run(&["diff", "staging", "dev"]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert!(stdout(&out).contains("have the same schema"));

    // A change made by hand in the console is exactly what is reported.
    ladder
        .db("dev")
        .psql("CREATE INDEX users_email_idx ON users (email);");
    let out = project.run(&["diff", "staging", "dev", "--json"]);
    assert_eq!(out.status.code(), Some(2));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let differences = doc["differences"].as_array().unwrap();
    assert_eq!(differences.len(), 1, "{doc}");
    assert_eq!(differences[0]["kind"], "index");
    assert!(
        differences[0]["name"]
            .as_str()
            .unwrap()
            .contains("users_email_idx"),
        "{doc}"
    );

    let out = project.run(&["diff", "staging", "nowhere"]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nowhere"),
        "{}",
        output_text(&out)
    );
}

/// The schema the hand-change cases start from: one migration with an enum, a view, a trigger
/// function and columns to change.
const BASE_MIGRATION: &str = "\
CREATE TYPE mood AS ENUM ('happy', 'sad', 'ok');
CREATE TABLE people (
    id serial PRIMARY KEY,
    name text NOT NULL,
    note text,
    mood mood NOT NULL DEFAULT 'ok',
    age integer DEFAULT 0
);
CREATE VIEW adults AS SELECT id, name FROM people WHERE age >= 18;
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
";

const DRIFT_TOML: &str = "[drift]\nscratch_databases = true\n";

/// (environment, the change made by hand, kind, name, change) of every case.
const HAND_CHANGES: &[(&str, &str, &str, &str, &str)] = &[
    (
        "add_column",
        "ALTER TABLE people ADD COLUMN nickname text;",
        "column",
        "public.people.nickname",
        "removed",
    ),
    (
        "drop_column",
        "ALTER TABLE people DROP COLUMN note;",
        "column",
        "public.people.note",
        "added",
    ),
    (
        "alter_column",
        "ALTER TABLE people ALTER COLUMN note TYPE varchar(200);",
        "column",
        "public.people.note",
        "changed",
    ),
    (
        "drop_enum_label",
        "ALTER TYPE mood RENAME TO mood_old;
         CREATE TYPE mood AS ENUM ('happy', 'ok');
         ALTER TABLE people ALTER COLUMN mood DROP DEFAULT;
         ALTER TABLE people ALTER COLUMN mood TYPE mood USING mood::text::mood;
         ALTER TABLE people ALTER COLUMN mood SET DEFAULT 'ok';
         DROP TYPE mood_old;",
        "enum",
        "public.mood",
        "changed",
    ),
    (
        "add_index",
        "CREATE INDEX people_name_idx ON people (name);",
        "index",
        "public.people.people_name_idx",
        "removed",
    ),
    (
        "change_default",
        "ALTER TABLE people ALTER COLUMN age SET DEFAULT 1;",
        "column",
        "public.people.age",
        "changed",
    ),
    (
        "alter_view",
        "CREATE OR REPLACE VIEW adults AS SELECT id, name FROM people WHERE age >= 21;",
        "view",
        "public.adults",
        "changed",
    ),
    (
        "enable_row_security",
        "ALTER TABLE people ENABLE ROW LEVEL SECURITY;",
        "table",
        "public.people",
        "changed",
    ),
    (
        "add_policy",
        "CREATE POLICY people_self ON people USING (name = current_user);",
        "policy",
        "public.people.people_self",
        "removed",
    ),
    (
        "add_trigger",
        "CREATE TRIGGER people_touch BEFORE UPDATE ON people FOR EACH ROW EXECUTE FUNCTION touch();",
        "trigger",
        "public.people.people_touch",
        "removed",
    ),
];

fn differences_of(out: &std::process::Output) -> Vec<serde_json::Value> {
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", output_text(out)));
    doc["differences"].as_array().cloned().unwrap_or_default()
}

#[test]
fn drift_reports_exactly_each_change_made_by_hand_and_its_sql_undoes_it() {
    let server = pg();
    let mut project = Project::with_local_migrations(&[], "");
    project.add_migration("20240101000000_base", BASE_MIGRATION);
    let mut dbs = Vec::new();
    for name in std::iter::once("untouched").chain(HAND_CHANGES.iter().map(|c| c.0)) {
        let db = server.create_db(&format!("drift_{name}"));
        project.add_env(name, &db.url, DRIFT_TOML);
        project.run_ok(&["apply", "--env", name]);
        dbs.push((name, db));
    }
    let db = |name: &str| &dbs.iter().find(|(n, _)| *n == name).unwrap().1;

    let out = project.run(&["drift", "--env", "untouched"]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert!(
        stdout(&out)
            .contains("`untouched` matches the expected schema of its 1 applied migration(s)"),
        "{}",
        output_text(&out)
    );
    let scratch_left = db("untouched")
        .psql_i64("SELECT count(*) FROM pg_database WHERE datname LIKE 'sluice_shadow_%'");
    assert_eq!(
        scratch_left, 0,
        "the scratch database is dropped after the build"
    );

    // One left behind by a build that was killed two hours ago goes with the next build; a
    // recent one (another build in progress) stays.
    let old = chrono::Utc::now().timestamp() - 7200;
    let recent = chrono::Utc::now().timestamp() - 60;
    db("untouched").psql(&format!("CREATE DATABASE sluice_shadow_{old}_abandoned;"));
    db("untouched").psql(&format!("CREATE DATABASE sluice_shadow_{recent}_inflight;"));
    project.run_ok(&["drift", "--env", "untouched", "--rebuild"]);
    assert_eq!(
        db("untouched").psql(
            "SELECT string_agg(datname, ',') FROM pg_database WHERE datname LIKE 'sluice_shadow_%'"
        ),
        format!("sluice_shadow_{recent}_inflight")
    );
    db("untouched").psql(&format!("DROP DATABASE sluice_shadow_{recent}_inflight;"));

    for (env, change, kind, name, verb) in HAND_CHANGES {
        db(env).psql(change);
        let out = project.run(&["drift", "--env", env, "--json"]);
        assert_eq!(out.status.code(), Some(2), "{env}: {}", output_text(&out));
        let found = differences_of(&out);
        assert_eq!(found.len(), 1, "{env}: exactly one difference: {found:#?}");
        assert_eq!(found[0]["kind"], *kind, "{env}: {found:#?}");
        assert_eq!(found[0]["name"], *name, "{env}: {found:#?}");
        assert_eq!(found[0]["change"], *verb, "{env}: {found:#?}");

        let human = stdout(&project.run(&["drift", "--env", env]));
        assert!(
            human.contains("`") && human.contains("drifted: 1 difference(s)"),
            "{env}: {human}"
        );

        let out = project.run(&["drift", "--env", env, "--sql"]);
        assert_eq!(out.status.code(), Some(2), "{env}: {}", output_text(&out));
        db(env).psql(&stdout(&out));
        let out = project.run(&["drift", "--env", env]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{env}: after the --sql script: {}",
            output_text(&out)
        );
    }
}

#[test]
fn drift_needs_a_place_to_build_and_ignores_what_the_config_says() {
    let server = pg();
    let db = server.create_db("drift_config");
    let mut project = Project::with_local_migrations(&[], "");
    project.add_migration("20240101000000_base", BASE_MIGRATION);
    project.add_env("nowhere", &db.url, "");
    project.run_ok(&["apply", "--env", "nowhere"]);
    let out = project.run(&["drift", "--env", "nowhere"]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("has nowhere to build its expected schema"),
        "{}",
        output_text(&out)
    );

    let out = project.run(&["drift", "--env", "missing"]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let good = std::fs::read_to_string(project.path().join("sluice.toml")).unwrap();
    std::fs::write(
        project.path().join("sluice.toml"),
        format!("{good}\n[drift]\nhistory_tables = []\n"),
    )
    .unwrap();
    let out = project.run(&["drift", "--env", "nowhere"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a bad sluice.toml is an error, not drift"
    );
    assert!(
        output_text(&out).contains("key `drift.history_tables`"),
        "{}",
        output_text(&out)
    );
    std::fs::write(project.path().join("sluice.toml"), good).unwrap();

    // A table and a column managed outside migrations, left out by configuration.
    project.add_env(
        "configured",
        &db.url,
        "[drift]\nscratch_databases = true\nignore_objects = [\"public.people.legacy\"]\n",
    );
    std::fs::write(
        project.path().join("sluice.toml"),
        "migrations = \"migrations\"\n[drift]\nignore_tables = [\"audit\"]\n",
    )
    .unwrap();
    db.psql("CREATE TABLE audit (id int); ALTER TABLE people ADD COLUMN legacy int;");
    let out = project.run(&["drift", "--env", "configured"]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    db.psql("ALTER TABLE people ADD COLUMN extra int;");
    let out = project.run(&["drift", "--env", "configured", "--json"]);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    let found = differences_of(&out);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0]["name"], "public.people.extra");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        doc["expected"], "cache",
        "the second check uses the cached expected schema"
    );
}

#[test]
fn a_shadow_database_is_erased_before_each_build_and_never_the_environment_itself() {
    let server = pg();
    let live = server.create_db("drift_shadow_live");
    let shadow = server.create_db("drift_shadow_shadow");
    let mut project = Project::with_local_migrations(&[], "");
    project.add_migration("20240101000000_base", BASE_MIGRATION);
    project.add_env(
        "live",
        &live.url,
        "[drift]\nshadow_url_env = \"SHADOW_URL\"\n",
    );
    project.run_ok(&["apply", "--env", "live"]);
    // Leftovers of an earlier build or of anything else: erased, not compared.
    shadow.psql("CREATE SCHEMA leftovers; CREATE TABLE leftovers.t (id int); CREATE TABLE public.junk (id int);");
    let drift = |url: &str, extra: &[&str]| {
        let mut args = vec!["drift", "--env", "live", "--rebuild"];
        args.extend_from_slice(extra);
        let mut cmd = project.cmd(&args);
        cmd.env("SHADOW_URL", url);
        run_with_timeout(cmd, std::time::Duration::from_secs(300))
    };
    let out = drift(&shadow.url, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert_eq!(
        shadow.psql("SELECT count(*) FROM pg_namespace WHERE nspname = 'leftovers'"),
        "0"
    );
    assert_eq!(
        shadow.psql("SELECT count(*) FROM information_schema.tables WHERE table_name = 'people'"),
        "1",
        "the shadow holds the expected schema after the build"
    );

    // The environment's own database as its shadow is refused before anything is erased.
    let out = drift(&live.url, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("the shadow database is the environment's own database"),
        "{}",
        output_text(&out)
    );
    assert_eq!(live.psql("SELECT count(*) FROM people"), "0");
    assert_eq!(
        live.psql("SELECT count(*) FROM information_schema.tables WHERE table_name = 'people'"),
        "1"
    );

    // A migration that fails in the shadow is an error, not a difference.
    project.add_migration(
        "20240102000000_broken",
        "ALTER TABLE nowhere ADD COLUMN x int;\n",
    );
    live.psql("INSERT INTO _prisma_migrations (id, checksum, migration_name, started_at, finished_at, applied_steps_count) SELECT gen_random_uuid()::text, 'x', '20240102000000_broken', now(), now(), 1");
    let out = drift(&shadow.url, &["--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("building the expected schema in the shadow database"),
        "{}",
        output_text(&out)
    );
}

fn corpora_dir() -> std::path::PathBuf {
    match std::env::var_os("SLUICE_CORPORA") {
        Some(dir) => std::path::PathBuf::from(dir),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpora"),
    }
}

#[test]
#[ignore = "needs ../shared/corpora"]
fn drift_reports_nothing_on_every_untouched_corpus() {
    let dir = corpora_dir();
    let mut corpora: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpora at {}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("migrations").is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    corpora.sort();
    assert!(corpora.len() >= 8, "{corpora:?}");
    let server = pg();
    for corpus in corpora {
        let migrations = dir.join(&corpus).join("migrations");
        let db = server.create_db(&format!("drift_corpus_{corpus}"));
        let mut project = Project::new(&migrations, &[]);
        project.add_env("live", &db.url, DRIFT_TOML);
        let started = std::time::Instant::now();
        project.run_ok(&["apply", "--env", "live"]);
        let applied = started.elapsed();
        let started = std::time::Instant::now();
        let out = project.run(&["drift", "--env", "live", "--json"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{corpus}: an untouched database drifted: {}",
            output_text(&out)
        );
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(doc["expected"], "built", "{corpus}");
        eprintln!(
            "{corpus}: {} migrations applied in {applied:?}; drift (shadow build + compare) {:?}",
            doc["applied"],
            started.elapsed()
        );
    }
}
