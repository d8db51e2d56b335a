//! A password in a database URL, however malformed, reaches no output: not the CLI's stdout or
//! stderr, not its debug logs (human or JSON), and through a daemon not a run, an event, an
//! environment view, the metrics or the daemon's log. The server is the test's private
//! PostgreSQL cluster (the URLs name its socket directory, and PGHOST points there too).
//! Each shape has to fail to connect; the test checks what the failure shows.

mod common;

use std::time::Duration;

use common::daemon::*;
use common::ladder::ADMIN;
use common::*;

const MARKER: &str = "Sec7etMarkerPw";

/// `?host=<socket dir>` of the private cluster, so the URLs reach it and no other server.
fn host_query() -> String {
    pg().socket_dir()
        .map(|dir| format!("?host={}", dir.display()))
        .unwrap_or_default()
}

/// PGHOST and PGUSER of the private cluster: what sqlx falls back on when a malformed URL
/// names no host or user, so the server answers about the database (the message that once
/// quoted the password) instead of an unknown role.
fn private_host_env() -> Vec<(String, String)> {
    pg().socket_dir()
        .map(|dir| {
            vec![
                ("PGHOST".to_string(), dir.display().to_string()),
                ("PGUSER".to_string(), "postgres".to_string()),
            ]
        })
        .unwrap_or_default()
}

/// URLs a user might mistype or encode, each holding the marker as (part of) its password.
fn malformed_urls() -> Vec<(&'static str, String)> {
    let host = host_query();
    let and = if host.is_empty() { "?" } else { "&" };
    vec![
        (
            "one slash after the scheme",
            format!("postgres:/postgres:{MARKER}@localhost/nodb{host}"),
        ),
        (
            "no slash after the scheme",
            format!("postgres:postgres:{MARKER}@localhost/nodb{host}"),
        ),
        ("no scheme", format!("postgres:{MARKER}@localhost/nodb")),
        (
            "a slash in the password",
            format!("postgres://postgres:ab/{MARKER}@localhost/nodb{host}"),
        ),
        (
            "percent-encoded",
            format!("postgres%3A%2F%2Fpostgres%3A{MARKER}%40localhost%2Fnodb"),
        ),
        (
            "a port that is no number",
            format!("postgres://postgres:{MARKER}@localhost:port/nodb"),
        ),
        (
            "a password parameter",
            format!("postgres://postgres@localhost/nodb{host}{and}password={MARKER}"),
        ),
    ]
}

#[test]
fn item09_a_password_in_a_malformed_url_reaches_no_cli_output_or_log() {
    let host_env = private_host_env();
    for (shape, url) in malformed_urls() {
        let project = Project::with_local_migrations(&[("dev", &url)], "lock_timeout = \"2s\"\n");
        project.add_migration("20240101000000_init", "CREATE TABLE t (id int);\n");
        for args in [
            &["status", "--env", "dev"][..],
            &["--log-format", "json", "status", "--env", "dev"][..],
            &["apply", "--env", "dev"][..],
        ] {
            let mut cmd = project.cmd(args);
            cmd.env("SLUICE_LOG", "debug");
            for (k, v) in &host_env {
                cmd.env(k, v);
            }
            let out = run_with_timeout(cmd, Duration::from_secs(120));
            let text = output_text(&out);
            assert!(
                !out.status.success(),
                "{shape}: {args:?} should fail to connect:\n{text}"
            );
            assert!(
                text.contains("error"),
                "{shape}: {args:?} says what failed:\n{text}"
            );
            assert!(
                !text.contains(MARKER),
                "{shape}: {args:?} printed the password:\n{text}"
            );
        }
    }
}

#[test]
fn item09_a_password_in_a_malformed_url_reaches_no_run_event_view_or_daemon_log() {
    let (shape, url) = malformed_urls().remove(0);
    let project = Project::with_local_migrations(&[("dev", &url)], "lock_timeout = \"2s\"\n");
    project.add_migration("20240101000000_init", "CREATE TABLE t (id int);\n");
    write_tokens(&project, &[("admin", ADMIN, "\"*\" = \"admin\"")]);
    std::fs::write(
        project.path().join("sluice.toml"),
        "migrations = \"migrations\"\nstate_dir = \".sluice\"\n\n[daemon]\n\
         tokens_file = \"tokens.toml\"\ntick = \"100ms\"\nwatch_interval = \"0s\"\n",
    )
    .unwrap();
    let mut env: Vec<(&str, &str)> = vec![("SLUICE_LOG", "debug")];
    let host_env = private_host_env();
    env.extend(host_env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let daemon = Daemon::start(&project, &env);

    let (status, created) = daemon.post(
        "/v1/promotions",
        Some(ADMIN),
        &format!(r#"{{"to": "dev", "reason": "check {shape}"}}"#),
    );
    assert_eq!(status, 202, "{created}");
    let id = created[0]["id"].as_str().unwrap().to_string();
    let run = daemon.wait_run(&id, ADMIN, Duration::from_secs(60), |r| {
        !matches!(state_of(r), "queued" | "gated" | "locked")
    });
    let (_, drift) = daemon.post("/v1/environments/dev/drift", Some(ADMIN), "");
    let mut shown = vec![
        ("the run", run.to_string()),
        ("the drift check", drift.to_string()),
    ];
    for path in [
        "/v1/runs",
        "/v1/events",
        "/v1/environments",
        "/v1/environments/dev",
        "/metrics",
    ] {
        let (status, body) = daemon.get(path, Some(ADMIN));
        assert_eq!(status, 200, "{path}: {body}");
        shown.push((path, body.to_string()));
    }
    let everything: String = shown.iter().map(|(_, text)| text.as_str()).collect();
    assert!(
        everything.contains("cannot connect") || everything.contains("does not exist"),
        "the connection failure is reported somewhere:\n{everything}"
    );
    shown.push(("the daemon's log", daemon.log()));
    for (what, text) in shown {
        assert!(
            !text.contains(MARKER),
            "{what} shows the password of a URL with {shape}:\n{text}"
        );
    }
}
