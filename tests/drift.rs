//! `sluice diff` between live environments on real PostgreSQL: a lagging environment and a
//! hand-made change are reported exactly, `--sql` makes the left side match, and a bad
//! environment is an error (exit 1), not a difference (exit 2).

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
