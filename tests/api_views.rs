//! What the API shows, against a daemon on real PostgreSQL: the run list as pages of
//! summaries (the detail stays at `/v1/runs/{id}`), `/metrics` as a well-formed exposition with
//! the duration histograms and gauges, and the JSON error shape for a body that is too large.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::daemon::*;
use common::ladder::*;
use serde_json::Value;

/// Health checks that take several measurements, so a run carries real weight.
const MEASURED: &str = "[[health]]\nname = \"users-table\"\nkind = \"sql\"\n\
    query = \"SELECT count(*) FROM information_schema.tables WHERE table_name = 'users'\"\n\
    expect = 1\ncount = 8\ninterval = \"20ms\"\n";

fn get_raw(daemon: &Daemon, path: &str, token: &str) -> (u16, Option<String>, String) {
    let response = reqwest::blocking::Client::new()
        .get(format!("{}{path}", daemon.base))
        .bearer_auth(token)
        .send()
        .expect("request to the daemon");
    let status = response.status().as_u16();
    let link = response
        .headers()
        .get("link")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    (status, link, response.text().unwrap_or_default())
}

fn ids(runs: &Value) -> Vec<String> {
    runs.as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

fn finish(daemon: &Daemon, created: &Value) -> Value {
    let id = created
        .as_array()
        .and_then(|a| a.first())
        .unwrap_or(created)["id"]
        .as_str()
        .unwrap()
        .to_string();
    daemon.wait_run(&id, ADMIN, Duration::from_secs(120), |r| {
        matches!(state_of(r), "succeeded" | "rolled_back" | "halted")
    })
}

#[test]
fn item12_the_run_list_is_pages_of_summaries_and_the_detail_keeps_everything() {
    let ladder = Ladder::new("runlist", &[("dev", MEASURED)]);
    let daemon = Daemon::start(&ladder.project, &[]);

    // Three heavy runs on dev: the first release, then two more, each promoted.
    let mut finished = Vec::new();
    for step in 0..3 {
        if step > 0 {
            add_migration_with_down(
                &ladder.project,
                &format!("2024020{step}000000_more_{step}"),
                &format!("CREATE TABLE more_{step} (id int);\n"),
                &format!("DROP TABLE more_{step};\n"),
            );
            let (status, scanned) = daemon.post("/v1/releases", Some(ADMIN), "");
            assert_eq!(status, 201, "{scanned}");
        }
        let (status, created) = daemon.post("/v1/promotions", Some(ADMIN), r#"{"to": "dev"}"#);
        assert_eq!(status, 202, "{created}");
        let run = finish(&daemon, &created);
        assert_eq!(state_of(&run), "succeeded", "{run}");
        finished.push(run);
    }
    let (first, second, third) = (&finished[0], &finished[1], &finished[2]);
    let newest_first: Vec<String> = [third, second, first]
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();

    // The whole list: summaries, newest first, nothing per event or measurement.
    let (status, link, body) = get_raw(&daemon, "/v1/runs?environment=dev", ADMIN);
    assert_eq!(status, 200, "{body}");
    assert!(link.is_none(), "one page holds all three: {link:?}");
    let runs: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ids(&runs), newest_first);
    for (summary, id) in runs.as_array().unwrap().iter().zip(&newest_first) {
        for heavy in ["transitions", "measurements", "events", "plan", "applied"] {
            assert!(summary.get(heavy).is_none(), "`{heavy}` in {summary}");
        }
        assert_eq!(summary["environment"], "dev");
        assert_eq!(state_of(summary), "succeeded");
        assert!(summary["describe"].is_string() && summary["created_at"].is_string());
        assert!(summary["version"].as_u64().unwrap() >= 5, "{summary}");
        let (status, _, detail) = get_raw(&daemon, &format!("/v1/runs/{id}"), ADMIN);
        assert_eq!(status, 200);
        let detail: Value = serde_json::from_str(&detail).unwrap();
        assert!(!detail["transitions"].as_array().unwrap().is_empty());
        assert!(!detail["events"].as_array().unwrap().is_empty());
        assert_eq!(
            detail["transitions"].as_array().unwrap().len() as u64,
            summary["version"].as_u64().unwrap()
        );
    }
    let promotion_detail: Value =
        serde_json::from_str(&get_raw(&daemon, &format!("/v1/runs/{}", newest_first[0]), ADMIN).2)
            .unwrap();
    assert_eq!(
        promotion_detail["measurements"].as_array().unwrap().len(),
        8,
        "the detail keeps every measurement"
    );
    assert!(
        body.len() < 3 * 1500,
        "three summaries in {} bytes: {body}",
        body.len()
    );

    // Pages of two: the Link header leads to the rest, and the last page has none.
    let (status, link, body) = get_raw(&daemon, "/v1/runs?environment=dev&limit=2", ADMIN);
    assert_eq!(status, 200, "{body}");
    let page: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ids(&page), newest_first[..2]);
    let link = link.expect("a next link after a full page");
    let next = link
        .strip_prefix('<')
        .and_then(|l| l.split_once(">; rel=\"next\""))
        .map(|(path, _)| path.to_string())
        .unwrap_or_else(|| panic!("not a next link: {link}"));
    assert!(
        next.contains(&format!("before={}", newest_first[1])),
        "{next}"
    );
    let (status, link, body) = get_raw(&daemon, &next, ADMIN);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        ids(&serde_json::from_str(&body).unwrap()),
        newest_first[2..]
    );
    assert!(link.is_none(), "{link:?}");

    // A cursor that names no run is refused in the API's error shape.
    let (status, unknown) = daemon.get("/v1/runs?before=no-such-run", Some(ADMIN));
    assert_eq!(status, 400, "{unknown}");
    assert_eq!(unknown["error"]["code"], "bad_request", "{unknown}");

    // The CLI's table and `run ID` read the same daemon.
    let server = ["--server", daemon.base.as_str()];
    let out = ladder
        .project
        .cmd(&[&["runs", "--env", "dev"][..], &server[..]].concat())
        .env("SLUICE_TOKEN", ADMIN)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for id in &newest_first {
        assert!(table.contains(id.as_str()), "{id} missing from\n{table}");
    }
    let out = ladder
        .project
        .cmd(&[&["run", newest_first[0].as_str()][..], &server[..]].concat())
        .env("SLUICE_TOKEN", ADMIN)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("state: succeeded"), "{shown}");
}

/// One metric family as the exposition declares it.
#[derive(Debug, Default)]
struct MetricFamily {
    kind: String,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

/// Parses OpenMetrics/Prometheus text the way Prometheus' parser reads it, and refuses what it
/// refuses: a sample before its family's `# TYPE`, a family whose samples are interleaved with
/// another's (or declared twice), a sample name that does not belong to its family's type,
/// histogram buckets that are not cumulative or lack `+Inf`, and a missing `# EOF`.
fn parse_exposition(text: &str) -> Result<BTreeMap<String, MetricFamily>, String> {
    let mut families: BTreeMap<String, MetricFamily> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut closed: Vec<String> = Vec::new();
    let mut saw_eof = false;
    for line in text.lines() {
        if saw_eof {
            return Err(format!("text after # EOF: {line}"));
        }
        if line == "# EOF" {
            saw_eof = true;
            continue;
        }
        if let Some(meta) = line.strip_prefix("# ") {
            let mut parts = meta.splitn(3, ' ');
            let keyword = parts.next().unwrap_or_default();
            let name = parts
                .next()
                .ok_or(format!("bad metadata: {line}"))?
                .to_string();
            if current.as_deref() != Some(name.as_str()) {
                if let Some(previous) = current.take() {
                    closed.push(previous);
                }
                if closed.contains(&name) || families.contains_key(&name) {
                    return Err(format!("family {name} declared again: {line}"));
                }
                current = Some(name.clone());
            }
            if keyword == "TYPE" {
                let kind = parts.next().unwrap_or_default().to_string();
                families.entry(name).or_default().kind = kind;
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').ok_or(format!("bad sample: {line}"))?;
        let value: f64 = value.parse().map_err(|_| format!("bad value in: {line}"))?;
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (
                name,
                rest.strip_suffix('}')
                    .ok_or(format!("bad labels: {line}"))?,
            ),
            None => (series, ""),
        };
        let mut label_map = BTreeMap::new();
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once("=\"")
                .ok_or(format!("bad label in: {line}"))?;
            label_map.insert(key.to_string(), value.trim_end_matches('"').to_string());
        }
        let family_name = current
            .clone()
            .ok_or(format!("sample before any # TYPE: {line}"))?;
        let family = families
            .get_mut(&family_name)
            .ok_or(format!("sample of an undeclared family: {line}"))?;
        let suffixes: &[&str] = match family.kind.as_str() {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_sum", "_count", "_created"],
            "info" => &["_info"],
            "gauge" | "unknown" => &[""],
            other => return Err(format!("unknown type {other} of {family_name}")),
        };
        let belongs = suffixes
            .iter()
            .any(|suffix| name.strip_suffix(suffix) == Some(family_name.as_str()));
        if !belongs {
            return Err(format!(
                "sample {name} is not of family {family_name} ({}): samples are interleaved or misnamed",
                family.kind
            ));
        }
        family.samples.push((name.to_string(), label_map, value));
    }
    if !saw_eof {
        return Err("no # EOF at the end".into());
    }
    for (name, family) in &families {
        if family.kind != "histogram" {
            continue;
        }
        let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for (sample, labels, value) in &family.samples {
            if sample.ends_with("_bucket") {
                let mut rest = labels.clone();
                let le = rest
                    .remove("le")
                    .ok_or(format!("{name}: bucket without le"))?;
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().map_err(|_| format!("{name}: le {le}"))?
                };
                series
                    .entry(format!("{rest:?}"))
                    .or_default()
                    .push((bound, *value));
            }
        }
        for (labels, buckets) in series {
            if buckets.last().map(|b| b.0) != Some(f64::INFINITY) {
                return Err(format!("{name}{labels}: no +Inf bucket"));
            }
            if buckets
                .windows(2)
                .any(|w| w[0].0 >= w[1].0 || w[0].1 > w[1].1)
            {
                return Err(format!(
                    "{name}{labels}: buckets not cumulative: {buckets:?}"
                ));
            }
        }
    }
    Ok(families)
}

fn sample(
    families: &BTreeMap<String, MetricFamily>,
    family: &str,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    families.get(family)?.samples.iter().find_map(|(n, l, v)| {
        (n == name
            && labels
                .iter()
                .all(|(k, want)| l.get(*k).map(String::as_str) == Some(*want)))
        .then_some(*v)
    })
}

#[test]
fn item17_metrics_are_a_well_formed_exposition_with_durations_and_gauges() {
    let ladder = Ladder::new("metrics", &[]);
    ladder.policy("dev", "environment = \"dev\"\n");
    ladder.policy(
        "staging",
        "environment = \"staging\"\nfrom = \"dev\"\nauto_promote = true\n[approvals]\nrequired = 1\n",
    );
    ladder.policy("prod", "environment = \"prod\"\nfrom = \"staging\"\n");
    let daemon = Daemon::start(&ladder.project, &[]);

    let (status, created) = daemon.post("/v1/promotions", Some(DEPLOYER), r#"{"to": "dev"}"#);
    assert_eq!(status, 202, "{created}");
    let dev = finish(&daemon, &created);
    assert_eq!(state_of(&dev), "succeeded", "{dev}");
    daemon.wait_runs("staging", ADMIN, Duration::from_secs(60), |runs| {
        runs.iter().any(|r| {
            state_of(r) == "gated" && r["state"]["waiting_for"].to_string().contains("approval:")
        })
    });

    let response = reqwest::blocking::get(format!("{}/metrics", daemon.base)).unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let text = response.text().unwrap();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let families = parse_exposition(&text).unwrap_or_else(|why| panic!("{why}\n{text}"));

    for (family, kind) in [
        ("sluice_run_duration_seconds", "histogram"),
        ("sluice_gate_wait_duration_seconds", "histogram"),
        ("sluice_snapshot_duration_seconds", "histogram"),
        ("sluice_apply_duration_seconds", "histogram"),
        ("sluice_verify_duration_seconds", "histogram"),
        ("sluice_pending_approvals", "gauge"),
        ("sluice_drifted_environments", "gauge"),
        ("sluice_environment_info", "gauge"),
        ("sluice_environment_healthy", "gauge"),
        ("sluice_runs_requested", "counter"),
        ("sluice_http_responses", "counter"),
    ] {
        let found = families
            .get(family)
            .unwrap_or_else(|| panic!("no family {family}:\n{text}"));
        assert_eq!(found.kind, kind, "{family}");
    }
    let dev_only = [("environment", "dev")];
    for family in [
        "sluice_gate_wait_duration_seconds",
        "sluice_snapshot_duration_seconds",
        "sluice_apply_duration_seconds",
        "sluice_verify_duration_seconds",
    ] {
        assert_eq!(
            sample(&families, family, &format!("{family}_count"), &dev_only),
            Some(1.0),
            "{family} observed dev's run once:\n{text}"
        );
    }
    assert_eq!(
        sample(
            &families,
            "sluice_run_duration_seconds",
            "sluice_run_duration_seconds_count",
            &[
                ("environment", "dev"),
                ("kind", "promotion"),
                ("state", "succeeded")
            ]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &families,
            "sluice_pending_approvals",
            "sluice_pending_approvals",
            &[("environment", "staging")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &families,
            "sluice_drifted_environments",
            "sluice_drifted_environments",
            &[]
        ),
        Some(0.0)
    );
    let release = dev["release"].as_str().unwrap();
    assert_eq!(
        sample(
            &families,
            "sluice_environment_info",
            "sluice_environment_info",
            &[("environment", "dev"), ("release", release), ("head", M3)]
        ),
        Some(1.0),
        "{text}"
    );
}

#[test]
fn item16_a_body_over_the_limit_is_refused_in_the_json_error_shape() {
    let ladder = Ladder::new("bodylimit", &[]);
    let daemon = Daemon::start(&ladder.project, &[]);
    let big = format!(
        r#"{{"to": "dev", "reason": "{}"}}"#,
        "x".repeat(3 * 1024 * 1024)
    );
    let (status, body) = daemon.post("/v1/promotions", Some(DEPLOYER), &big);
    assert_eq!(status, 413);
    assert_eq!(body["error"]["code"], "payload_too_large", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("larger than"),
        "{body}"
    );
    // (A fresh connection: the server closes the one whose body it did not read.)
    let (status, _, runs) = get_raw(&daemon, "/v1/runs", ADMIN);
    assert_eq!(status, 200, "{runs}");
    assert_eq!(runs, "[]", "the refused request made no run");
}
