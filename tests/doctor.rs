//! `sluice doctor` through the real binary (item 13): the shipped example has no problem; a
//! project with an unset URL variable, an unreachable server, a role without CREATEDB that does
//! not own its database, drift checks with scratch databases it may not create and an unset
//! Slack secret gets one line per problem with its fix, exit 1, and no password in the output;
//! once the role is fixed its environment is all ok; a file that does not parse is exit 2.

mod common;

use common::*;
use serde_json::Value;

/// The report of `sluice doctor --json` and the exit code.
fn doctor_json(project: &Project, extra: &[&str]) -> (Option<i32>, Value, String) {
    let mut args = vec!["doctor", "--json"];
    args.extend_from_slice(extra);
    let out = project.run(&args);
    let text = output_text(&out);
    let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code(), report, text)
}

/// The lines of `subject`'s `check`.
fn lines<'a>(report: &'a Value, subject: &str, check: &str) -> Vec<&'a Value> {
    report["checks"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter(|l| l["subject"] == subject && l["check"] == check)
                .collect()
        })
        .unwrap_or_default()
}

/// The one problem of `subject`'s `check` whose detail contains `needle`, with its fix.
#[track_caller]
fn problem<'a>(report: &'a Value, subject: &str, check: &str, needle: &str) -> &'a Value {
    let found: Vec<&Value> = lines(report, subject, check)
        .into_iter()
        .filter(|l| {
            l["status"] == "problem" && l["detail"].as_str().unwrap_or_default().contains(needle)
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "`{needle}` for {subject} {check} in {report:#}"
    );
    found[0]
}

/// `url` with another user and password (keeping host, database and parameters).
fn as_user(url: &str, user: &str, password: &str) -> String {
    let mut parsed = url::Url::parse(url).expect("the test server's URL parses");
    parsed.set_username(user).expect("a user fits the URL");
    parsed
        .set_password(Some(password))
        .expect("a password fits the URL");
    parsed.to_string()
}

#[test]
fn item13_doctor_finds_no_problem_in_the_shipped_example() {
    let dir = example_copy();
    let out = sluice()
        .args(["doctor"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.starts_with("SUBJECT"), "{text}");
    assert!(text.trim_end().ends_with("no problems"), "{text}");
    let has = |subject: &str, check: &str, detail: &str| {
        text.lines().any(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words.len() > 3 && words[..3] == [subject, check, "ok"] && l.contains(detail)
        })
    };
    for (subject, check, detail) in [
        ("project", "migrations", "4 migration(s)"),
        ("dev", "database", "SQLite file"),
        ("dev", "snapshot", "sqlite-file"),
        (
            "prod",
            "drift",
            "the expected schema is built in a temporary SQLite file",
        ),
        ("staging", "health", "2 check(s): schema, sql"),
    ] {
        assert!(
            has(subject, check, detail),
            "{subject} {check}: {detail}\n{text}"
        );
    }
    assert!(!text.contains("problem "), "{text}");
}

#[test]
fn item13_doctor_names_every_problem_with_its_fix_and_no_secret() {
    let db = pg().create_db("doctor_dev");
    let role = format!("doctor_role_{}", std::process::id());
    run_psql_admin(&format!(
        "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN PASSWORD 'hunter2pw' NOCREATEDB"
    ));
    let dev_url = as_user(&db.url, &role, "hunter2pw");
    let unreachable = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        format!("postgres://app:hunter2pw@127.0.0.1:{port}/app")
    };
    let mut project = Project::with_local_migrations(&[], "");
    project.add_env(
        "dev",
        &dev_url,
        "[snapshot]\nprovider = \"pg-template\"\n[drift]\nscratch_databases = true\n",
    );
    project.add_env("prod", &unreachable, "");
    std::fs::write(
        project.env_file("staging"),
        "url_env = \"SLUICE_TEST_DOCTOR_UNSET_URL\"\n",
    )
    .unwrap();
    std::fs::create_dir_all(project.path().join("policies")).unwrap();
    std::fs::write(
        project.path().join("policies/dev.toml"),
        "environment = \"dev\"\ndrift = \"block\"\n",
    )
    .unwrap();
    std::fs::write(
        project.path().join("sluice.toml"),
        "migrations = \"migrations\"\n[slack]\nsigning_secret_env = \"SLUICE_TEST_DOCTOR_UNSET_SLACK\"\n",
    )
    .unwrap();

    let (code, report, text) = doctor_json(&project, &[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        !text.contains("hunter2pw"),
        "a password was printed:\n{text}"
    );
    let line = problem(&report, "dev", "snapshot", "may not create databases");
    assert_eq!(
        line["fix"],
        format!("as a superuser: ALTER ROLE \"{role}\" CREATEDB;")
    );
    let line = problem(&report, "dev", "snapshot", "does not own database");
    assert!(
        line["fix"]
            .as_str()
            .unwrap_or_default()
            .starts_with(&format!(
                "as a superuser: ALTER DATABASE \"{}\" OWNER TO \"{role}\";",
                db.name
            )),
        "{line}"
    );
    problem(&report, "dev", "drift", "scratch databases: role");
    let line = problem(&report, "prod", "database", "cannot connect");
    assert!(
        line["fix"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("in `{}`", url_env_var("prod"))),
        "{line}"
    );
    let line = problem(
        &report,
        "staging",
        "url",
        "environments/staging.toml:1: key `url_env`: environment variable `SLUICE_TEST_DOCTOR_UNSET_URL` is not set",
    );
    assert!(
        line["fix"]
            .as_str()
            .unwrap_or_default()
            .starts_with("export SLUICE_TEST_DOCTOR_UNSET_URL="),
        "{line}"
    );
    problem(
        &report,
        "project",
        "slack",
        "sluice.toml:3: key `slack.signing_secret_env`: environment variable `SLUICE_TEST_DOCTOR_UNSET_SLACK` is not set",
    );
    assert_eq!(report["problems"], 6, "{report:#}");
    assert_eq!(
        lines(&report, "dev", "database")[0]["status"],
        "ok",
        "{report:#}"
    );

    // The human form: aligned lines, each problem followed by its fix.
    let out = project.run(&["doctor"]);
    let human = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{human}");
    assert!(!human.contains("hunter2pw"), "{human}");
    let rows: Vec<&str> = human.lines().collect();
    let at = rows
        .iter()
        .position(|l| l.starts_with("dev") && l.contains("may not create databases"))
        .unwrap_or_else(|| panic!("{human}"));
    assert!(
        rows[at + 1]
            .trim_start()
            .starts_with("fix: as a superuser: ALTER ROLE"),
        "{human}"
    );
    assert!(
        human.contains("6 problems: fix them and run `sluice doctor` again"),
        "{human}"
    );

    // Put the role right: dev is all ok, and --env leaves the others out.
    run_psql_admin(&format!(
        "ALTER ROLE {role} CREATEDB; ALTER DATABASE \"{}\" OWNER TO {role}",
        db.name
    ));
    let (code, report, text) = doctor_json(&project, &["--env", "dev"]);
    assert_eq!(code, Some(0), "{text}");
    let subjects: Vec<&str> = report["checks"]
        .as_array()
        .map(|a| a.iter().filter_map(|l| l["subject"].as_str()).collect())
        .unwrap_or_default();
    assert!(subjects.iter().all(|s| *s == "dev"), "{report:#}");
    for check in ["url", "database", "snapshot", "drift"] {
        assert_eq!(
            lines(&report, "dev", check)[0]["status"],
            "ok",
            "{report:#}"
        );
    }

    // A file that does not parse: sluice cannot run, exit 2.
    std::fs::write(project.env_file("prod"), "url_env = \n").unwrap();
    let (code, _, text) = doctor_json(&project, &[]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("environments/prod.toml:1"), "{text}");
    run_psql_admin(&format!(
        "ALTER DATABASE \"{}\" OWNER TO CURRENT_USER; DROP ROLE {role}",
        db.name
    ));
}

/// Runs SQL as the test server's administrator.
fn run_psql_admin(sql: &str) {
    let out = std::process::Command::new(pg().bin("psql"))
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &pg().admin_url(),
            "-c",
            sql,
        ])
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
