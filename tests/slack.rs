//! Chat-ops end to end against a daemon on real PostgreSQL and a recording Slack on loopback:
//! signed slash commands and button clicks (and everything forged refused without effect),
//! progress posted to and edited in the channel, the approval flow to prod with stale and
//! self-approvals refused, notifications that never delay a run, and the signed release hook.

mod common;

use std::time::{Duration, Instant};

use common::daemon::*;
use common::ladder::*;
use common::slack::*;
use serde_json::{json, Value};

const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
const HOOK_SECRET: &str = "hook-secret-for-tests";
const WEBHOOK_SECRET: &str = "webhook-secret-for-tests";
/// Bob may deploy and approve everywhere; alice approves; carol is unknown to sluice.
const BOB: &str = "U0BOB";
const ALICE_ID: &str = "U0ALICE";

fn configure(ladder: &Ladder, slack: &SlackServer, extra: &str) {
    configure_with(ladder, slack, extra, "bot_token_env = \"TEST_SLACK_BOT\"\n")
}

fn configure_with(ladder: &Ladder, slack: &SlackServer, extra: &str, bot: &str) {
    let path = ladder.project.path().join("sluice.toml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&format!(
        "\n[slack]\nsigning_secret_env = \"TEST_SLACK_SECRET\"\n{bot}\
         api_url = \"{}/api\"\napprovals_channel = \"CAPPROVALS\"\n\n\
         [slack.users.{BOB}]\nname = \"bob\"\nroles = {{ \"*\" = \"approver\" }}\n\n\
         [slack.users.{ALICE_ID}]\nname = \"alice\"\nroles = {{ \"*\" = \"approver\" }}\n\n{extra}",
        slack.base
    ));
    std::fs::write(path, text).unwrap();
}

const DAEMON_ENV: &[(&str, &str)] = &[
    ("TEST_SLACK_SECRET", SECRET),
    ("TEST_SLACK_BOT", "xoxb-test-bot-token"),
    ("TEST_HOOK_SECRET", HOOK_SECRET),
    ("TEST_WEBHOOK_SECRET", WEBHOOK_SECRET),
];

/// What a refused request case is: its name, headers, body and the status it must get.
type Case<'a> = (&'a str, Vec<(&'a str, String)>, Vec<u8>, u16);

struct Signed {
    status: u16,
    body: Value,
}

/// POSTs `body` to `path` with the headers given (none added).
fn post_raw(daemon: &Daemon, path: &str, headers: &[(&str, String)], body: Vec<u8>) -> Signed {
    let client = reqwest::blocking::Client::new();
    let mut request = client.post(format!("{}{path}", daemon.base)).body(body);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = request.send().unwrap();
    let status = response.status().as_u16();
    let text = response.text().unwrap();
    Signed {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

/// A correctly signed, form-encoded Slack request.
fn slack_post(daemon: &Daemon, path: &str, body: &str) -> Signed {
    let ts = now_ts();
    post_raw(
        daemon,
        path,
        &[
            ("content-type", "application/x-www-form-urlencoded".into()),
            ("x-slack-request-timestamp", ts.clone()),
            (
                "x-slack-signature",
                slack_signature(SECRET, &ts, body.as_bytes()),
            ),
        ],
        body.as_bytes().to_vec(),
    )
}

fn command_body(slack: &SlackServer, user: &str, text: &str, reply: &str) -> String {
    form(&[
        ("token", "legacy-unused"),
        ("team_id", "T0TEAM"),
        ("channel_id", "CDEPLOYS"),
        ("user_id", user),
        ("user_name", "someone"),
        ("command", "/sluice"),
        ("text", text),
        ("response_url", &slack.response_url(reply)),
        ("trigger_id", "1.2.3"),
    ])
}

fn click_body(slack: &SlackServer, user: &str, action: &str, value: &str, reply: &str) -> String {
    let payload = json!({
        "type": "block_actions",
        "user": {"id": user, "username": "someone"},
        "channel": {"id": "CAPPROVALS"},
        "response_url": slack.response_url(reply),
        "actions": [{"action_id": action, "value": value, "type": "button"}],
    });
    form(&[("payload", &payload.to_string())])
}

fn run_count(daemon: &Daemon) -> usize {
    let (_, runs) = daemon.get("/v1/runs", Some(ADMIN));
    runs.as_array().map(Vec::len).unwrap_or(0)
}

fn event_count(daemon: &Daemon) -> usize {
    let (_, events) = daemon.get("/v1/events", Some(ADMIN));
    events.as_array().map(Vec::len).unwrap_or(0)
}

#[test]
fn forged_stale_replayed_or_malformed_slack_requests_are_refused_and_change_nothing() {
    let ladder = Ladder::new("slack_verify", &[]);
    let slack = SlackServer::start();
    configure(&ladder, &slack, "");
    let daemon = Daemon::start(&ladder.project, DAEMON_ENV);

    let good = command_body(&slack, BOB, "status", "r0");
    let answer = slack_post(&daemon, "/slack/commands", &good);
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let text = answer.body["text"].as_str().unwrap();
    assert!(text.contains("dev") && text.contains("prod"), "{text}");

    let runs_before = run_count(&daemon);
    let events_before = event_count(&daemon);
    let promote = command_body(&slack, BOB, "promote dev", "r1");
    let ts = now_ts();
    let signature = slack_signature(SECRET, &ts, promote.as_bytes());
    let form_type = (
        "content-type",
        "application/x-www-form-urlencoded".to_string(),
    );
    let cases: Vec<Case> = vec![
        (
            "wrong signature",
            vec![
                form_type.clone(),
                ("x-slack-request-timestamp", ts.clone()),
                (
                    "x-slack-signature",
                    slack_signature("not-the-secret", &ts, promote.as_bytes()),
                ),
            ],
            promote.clone().into_bytes(),
            401,
        ),
        (
            "stale timestamp",
            {
                let old = (chrono::Utc::now().timestamp() - 301).to_string();
                vec![
                    form_type.clone(),
                    (
                        "x-slack-signature",
                        slack_signature(SECRET, &old, promote.as_bytes()),
                    ),
                    ("x-slack-request-timestamp", old),
                ]
            },
            promote.clone().into_bytes(),
            401,
        ),
        (
            "missing signature header",
            vec![form_type.clone(), ("x-slack-request-timestamp", ts.clone())],
            promote.clone().into_bytes(),
            401,
        ),
        (
            "missing timestamp header",
            vec![form_type.clone(), ("x-slack-signature", signature.clone())],
            promote.clone().into_bytes(),
            401,
        ),
        (
            "not form-encoded",
            {
                let json_body = json!({"text": "promote dev", "user_id": BOB}).to_string();
                vec![
                    ("content-type", "application/json".to_string()),
                    ("x-slack-request-timestamp", ts.clone()),
                    (
                        "x-slack-signature",
                        slack_signature(SECRET, &ts, json_body.as_bytes()),
                    ),
                ]
            },
            json!({"text": "promote dev", "user_id": BOB})
                .to_string()
                .into_bytes(),
            415,
        ),
        (
            "oversized body",
            {
                let big = format!("{promote}&padding={}", "x".repeat(70 * 1024));
                vec![
                    form_type.clone(),
                    ("x-slack-request-timestamp", ts.clone()),
                    (
                        "x-slack-signature",
                        slack_signature(SECRET, &ts, big.as_bytes()),
                    ),
                ]
            },
            format!("{promote}&padding={}", "x".repeat(70 * 1024)).into_bytes(),
            413,
        ),
    ];
    for (what, headers, body, expected) in cases {
        let answer = post_raw(&daemon, "/slack/commands", &headers, body);
        assert_eq!(answer.status, expected, "{what}: {:?}", answer.body);
        assert!(
            answer.body["error"]["message"].is_string(),
            "{what}: {:?}",
            answer.body
        );
    }
    // The same signed request twice: the first is accepted, the replay refused.
    let headers = vec![
        form_type.clone(),
        ("x-slack-request-timestamp", ts.clone()),
        ("x-slack-signature", signature.clone()),
    ];
    let first = post_raw(
        &daemon,
        "/slack/commands",
        &headers,
        promote.clone().into_bytes(),
    );
    assert_eq!(first.status, 200, "{:?}", first.body);
    let runs_after_first = run_count(&daemon);
    assert_eq!(
        runs_after_first,
        runs_before + 1,
        "the signed command made its run"
    );
    let events_after_first = event_count(&daemon);
    let replay = post_raw(&daemon, "/slack/commands", &headers, promote.into_bytes());
    assert_eq!(replay.status, 409, "{:?}", replay.body);
    assert!(replay.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("already received"));
    assert_eq!(
        run_count(&daemon),
        runs_after_first,
        "the replay made no run"
    );
    assert!(events_before < events_after_first);

    // An unknown Slack user may read but not promote.
    let carol = slack_post(
        &daemon,
        "/slack/commands",
        &command_body(&slack, "U0CAROL", "promote staging", "r2"),
    );
    assert_eq!(carol.status, 200);
    let text = carol.body["text"].as_str().unwrap();
    assert!(
        text.contains("viewer") && text.contains("[slack.users]"),
        "{text}"
    );
    assert_eq!(run_count(&daemon), runs_after_first);
    let forged_click = post_raw(
        &daemon,
        "/slack/interactions",
        &[
            form_type,
            ("x-slack-request-timestamp", now_ts()),
            ("x-slack-signature", "v0=00".into()),
        ],
        click_body(&slack, ALICE_ID, "approve", "x:y", "r3").into_bytes(),
    );
    assert_eq!(forged_click.status, 401);
}

#[test]
fn item08_a_replay_with_the_signature_in_another_letter_case_is_refused() {
    let ladder = Ladder::new("slack_replay_case", &[]);
    let slack = SlackServer::start();
    configure(&ladder, &slack, "");
    let daemon = Daemon::start(&ladder.project, DAEMON_ENV);

    let promote = command_body(&slack, BOB, "promote dev", "case0");
    let ts = now_ts();
    let signature = slack_signature(SECRET, &ts, promote.as_bytes());
    let hex_part = signature.strip_prefix("v0=").unwrap().to_string();
    assert!(
        hex_part.chars().any(|c| c.is_ascii_alphabetic()),
        "the signature has letters to change the case of: {signature}"
    );
    let headers = |signature: String| {
        vec![
            (
                "content-type",
                "application/x-www-form-urlencoded".to_string(),
            ),
            ("x-slack-request-timestamp", ts.clone()),
            ("x-slack-signature", signature),
        ]
    };
    let runs_before = run_count(&daemon);
    let first = post_raw(
        &daemon,
        "/slack/commands",
        &headers(signature.clone()),
        promote.clone().into_bytes(),
    );
    assert_eq!(first.status, 200, "{:?}", first.body);
    assert_eq!(
        run_count(&daemon),
        runs_before + 1,
        "the command made its run"
    );

    let mixed: String = hex_part
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i % 3 == 0 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect();
    for variant in [
        format!("v0={}", hex_part.to_ascii_uppercase()),
        format!("v0={mixed}"),
    ] {
        let replay = post_raw(
            &daemon,
            "/slack/commands",
            &headers(variant.clone()),
            promote.clone().into_bytes(),
        );
        assert_eq!(replay.status, 409, "{variant}: {:?}", replay.body);
        assert_eq!(
            replay.body["error"]["code"], "replayed",
            "{:?}",
            replay.body
        );
    }
    assert_eq!(
        run_count(&daemon),
        runs_before + 1,
        "the replays made no run"
    );
}

#[test]
fn a_promotion_from_slack_is_reported_in_the_channel_until_it_ends() {
    let ladder = Ladder::new("slack_progress", &[]);
    let staging = ladder.project.env_file("staging");
    let mut text = std::fs::read_to_string(&staging).unwrap();
    text.push_str("\n[drift]\nscratch_databases = true\n");
    std::fs::write(&staging, text).unwrap();
    let slack = SlackServer::start();
    configure(&ladder, &slack, "");
    let daemon = Daemon::start(&ladder.project, DAEMON_ENV);

    let started = Instant::now();
    let answer = slack_post(
        &daemon,
        "/slack/commands",
        &command_body(&slack, BOB, "promote staging", "p1"),
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body["response_type"], "in_channel");
    let text = answer.body["text"].as_str().unwrap();
    assert!(
        text.contains("bob requested a promotion to `staging`"),
        "{text}"
    );

    let runs = daemon.wait_runs("staging", ADMIN, Duration::from_secs(120), |runs| {
        runs.iter().any(|r| state_of(r) == "succeeded")
    });
    let run_id = runs[0]["id"].as_str().unwrap().to_string();
    assert_eq!(runs[0]["origin"]["via"], "slack");
    assert_eq!(runs[0]["origin"]["channel"], "CDEPLOYS");
    let short = &run_id[..8];
    let calls = slack.wait_for(
        "the staging message to show success",
        Duration::from_secs(30),
        |calls| {
            calls.iter().any(|c| {
                c.kind == "chat.update"
                    && c.body["text"].as_str().unwrap_or_default().contains(short)
                    && c.body["text"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("succeeded")
            })
        },
    );
    let posts: Vec<_> = calls
        .iter()
        .filter(|c| {
            c.kind == "chat.postMessage"
                && c.body["text"].as_str().unwrap_or_default().contains(short)
        })
        .collect();
    assert_eq!(
        posts.len(),
        1,
        "one message per run, then edits: {calls:#?}"
    );
    assert_eq!(posts[0].body["channel"], "CDEPLOYS");
    assert_eq!(
        posts[0].headers["authorization"],
        "Bearer xoxb-test-bot-token"
    );
    let ts = posts[0].body.clone();
    let updates: Vec<_> = calls
        .iter()
        .filter(|c| {
            c.kind == "chat.update" && c.body["text"].as_str().unwrap_or_default().contains(short)
        })
        .collect();
    assert!(
        updates
            .iter()
            .all(|u| u.body["channel"] == "CDEPLOYS" && u.body["ts"].is_string()),
        "{updates:#?}"
    );
    assert!(ts["text"].is_string());
    let last = updates.last().unwrap();
    assert!(
        last.body["text"].as_str().unwrap().contains("succeeded"),
        "{last:#?}"
    );
    let blocks = last.body["blocks"].to_string();
    assert!(blocks.contains("3/3 applied"), "{blocks}");
    assert_eq!(
        ladder
            .db("staging")
            .psql("SELECT count(*) FROM _prisma_migrations WHERE finished_at IS NOT NULL"),
        "3"
    );

    // Read commands answer from the store.
    let status = slack_post(
        &daemon,
        "/slack/commands",
        &command_body(&slack, BOB, "runs staging", "p2"),
    );
    assert!(
        status.body["text"].as_str().unwrap().contains(short),
        "{:?}",
        status.body
    );
    let plan_text = command_answer(&daemon, &slack, "plan prod", "p3");
    assert!(plan_text.contains("Plan for `prod`"), "{plan_text}");
    assert!(
        plan_text.contains(M1) && plan_text.contains(M3),
        "{plan_text}"
    );
    ladder
        .db("staging")
        .psql("CREATE INDEX hand_made_idx ON users (email);");
    let drift_text = command_answer(&daemon, &slack, "drift staging", "p5");
    assert!(
        drift_text.contains("`staging` drifted: 1 difference(s)")
            && drift_text.contains("index hand_made_idx"),
        "{drift_text}"
    );
    let help = slack_post(
        &daemon,
        "/slack/commands",
        &command_body(&slack, BOB, "frobnicate", "p4"),
    );
    assert!(help.body["text"]
        .as_str()
        .unwrap()
        .contains("not a sluice command"));
}

/// A slash command's answer: inline, or from its `response_url` when it took longer than
/// Slack waits.
fn command_answer(daemon: &Daemon, slack: &SlackServer, text: &str, response_id: &str) -> String {
    let reply = slack_post(
        daemon,
        "/slack/commands",
        &command_body(slack, BOB, text, response_id),
    );
    let inline = reply.body["text"].as_str().unwrap_or_default().to_string();
    if !inline.contains("Working on it") {
        return inline;
    }
    let kind = format!("response/{response_id}");
    let calls = slack.wait_for("the late answer", Duration::from_secs(30), |c| {
        c.iter().any(|c| c.kind == kind)
    });
    calls.iter().find(|c| c.kind == kind).unwrap().body["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn the_approve_button_promotes_to_prod_and_stale_or_self_approvals_are_refused() {
    let ladder = Ladder::new("slack_approve", &[]);
    ladder.policy("staging", "environment = \"staging\"\nfrom = \"dev\"\n");
    ladder.policy(
        "prod",
        "environment = \"prod\"\nfrom = \"staging\"\n[approvals]\nrequired = 1\n",
    );
    let slack = SlackServer::start();
    configure(&ladder, &slack, "");
    let daemon = Daemon::start(&ladder.project, DAEMON_ENV);

    let answer = slack_post(
        &daemon,
        "/slack/commands",
        &command_body(&slack, BOB, "promote prod", "a1"),
    );
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let runs = daemon.wait_runs("prod", ADMIN, Duration::from_secs(120), |runs| {
        runs.iter().any(|r| {
            state_of(r) == "gated"
                && r["state"]["waiting_for"].to_string().contains("approval:")
                && !r["state"]["waiting_for"].to_string().contains("upstream:")
        })
    });
    let prod = &runs[0];
    let prod_id = prod["id"].as_str().unwrap().to_string();
    let release = prod["release"].as_str().unwrap().to_string();
    let calls = slack.wait_for("the approval request", Duration::from_secs(30), |calls| {
        calls
            .iter()
            .any(|c| c.kind == "chat.postMessage" && c.body["channel"] == "CAPPROVALS")
    });
    let request = calls
        .iter()
        .find(|c| c.kind == "chat.postMessage" && c.body["channel"] == "CAPPROVALS")
        .unwrap();
    let blocks = request.body["blocks"].as_array().unwrap();
    let actions = blocks
        .iter()
        .find(|b| b["type"] == "actions")
        .expect("buttons");
    let approve_value = actions["elements"][0]["value"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(approve_value, format!("{prod_id}:{release}"));
    assert_eq!(actions["elements"][0]["action_id"], "approve");
    assert_eq!(actions["elements"][1]["action_id"], "reject");

    // Bob asked for it: his click is refused.
    let own = slack_post(
        &daemon,
        "/slack/interactions",
        &click_body(&slack, BOB, "approve", &approve_value, "c1"),
    );
    assert_eq!(own.status, 200);
    let calls = slack.wait_for("bob's refusal", Duration::from_secs(10), |c| {
        c.iter().any(|c| c.kind == "response/c1")
    });
    let refusal = calls.iter().find(|c| c.kind == "response/c1").unwrap();
    assert!(
        refusal.body["text"]
            .as_str()
            .unwrap()
            .contains("cannot approve"),
        "{refusal:#?}"
    );

    // A button for another release (left over from an earlier request) is refused.
    let stale_value = format!("{prod_id}:{}", "0".repeat(64));
    slack_post(
        &daemon,
        "/slack/interactions",
        &click_body(&slack, ALICE_ID, "approve", &stale_value, "c2"),
    );
    let calls = slack.wait_for("the stale refusal", Duration::from_secs(10), |c| {
        c.iter().any(|c| c.kind == "response/c2")
    });
    let stale = calls.iter().find(|c| c.kind == "response/c2").unwrap();
    assert!(
        stale.body["text"]
            .as_str()
            .unwrap()
            .contains("this button was for release 0000000"),
        "{stale:#?}"
    );
    let (_, still) = daemon.get(&format!("/v1/runs/{prod_id}"), Some(ADMIN));
    assert_eq!(state_of(&still), "gated");
    assert!(still["approvals"].as_array().unwrap().is_empty(), "{still}");

    // Alice's click approves; prod runs; the request message shows who decided.
    slack_post(
        &daemon,
        "/slack/interactions",
        &click_body(&slack, ALICE_ID, "approve", &approve_value, "c3"),
    );
    let prod = daemon.wait_run(&prod_id, ADMIN, Duration::from_secs(120), |r| {
        state_of(r) == "succeeded"
    });
    assert_eq!(prod["approvals"][0]["by"], "alice");
    assert_eq!(prod["approvals"].as_array().unwrap().len(), 1);
    assert_eq!(
        ladder
            .db("prod")
            .psql("SELECT count(*) FROM _prisma_migrations WHERE finished_at IS NOT NULL"),
        "3"
    );
    let calls = slack.wait_for(
        "the decided approval message",
        Duration::from_secs(30),
        |calls| {
            calls.iter().any(|c| {
                c.kind == "chat.update"
                    && c.body["channel"] == "CAPPROVALS"
                    && c.body["text"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("approved by alice")
                    && c.body["text"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("succeeded")
            })
        },
    );
    let decided = calls
        .iter()
        .rev()
        .find(|c| c.kind == "chat.update" && c.body["channel"] == "CAPPROVALS")
        .unwrap();
    assert!(
        !decided.body["blocks"].to_string().contains("\"actions\""),
        "buttons removed: {decided:#?}"
    );

    // Clicking again changes nothing.
    slack_post(
        &daemon,
        "/slack/interactions",
        &click_body(&slack, ALICE_ID, "approve", &approve_value, "c4"),
    );
    slack.wait_for(
        "the repeated click's answer",
        Duration::from_secs(10),
        |c| c.iter().any(|c| c.kind == "response/c4"),
    );
    let (_, after) = daemon.get(&format!("/v1/runs/{prod_id}"), Some(ADMIN));
    assert_eq!(after["approvals"].as_array().unwrap().len(), 1);
    assert_eq!(state_of(&after), "succeeded");
}

#[test]
fn a_hanging_notification_endpoint_delays_no_run_and_webhooks_are_signed() {
    let ladder = Ladder::new("slack_notify", &[]);
    let slack = SlackServer::start();
    let sinks = format!(
        "[[notify]]\nname = \"hangs\"\nkind = \"webhook\"\nurl = \"{0}/hang\"\n\n\
         [[notify]]\nname = \"ci\"\nkind = \"webhook\"\nurl = \"{0}/hook/ci\"\nsecret_env = \"TEST_WEBHOOK_SECRET\"\n\n\
         [[notify]]\nname = \"team\"\nkind = \"slack\"\nurl = \"{0}/hook/team\"\n",
        slack.base
    );
    configure(&ladder, &slack, &sinks);
    let daemon = Daemon::start(&ladder.project, DAEMON_ENV);

    let (status, created) = daemon.post("/v1/promotions", Some(ADMIN), r#"{"to": "dev"}"#);
    assert_eq!(status, 202, "{created}");
    let run_id = created[0]["id"].as_str().unwrap().to_string();
    let run = daemon.wait_run(&run_id, ADMIN, Duration::from_secs(60), |r| {
        state_of(r) == "succeeded"
    });
    let first = run["transitions"][0]["at"].as_str().unwrap();
    let last = run["transitions"].as_array().unwrap().last().unwrap()["at"]
        .as_str()
        .unwrap();
    let took = chrono::DateTime::parse_from_rfc3339(last).unwrap()
        - chrono::DateTime::parse_from_rfc3339(first).unwrap();
    let calls = slack.wait_for(
        "the signed webhook and the Slack webhook",
        Duration::from_secs(20),
        |c| {
            c.iter().any(|c| c.kind == "hook/ci")
                && c.iter().any(|c| c.kind == "hook/team")
                && c.iter().any(|c| c.kind == "hang")
        },
    );
    assert!(
        took < chrono::Duration::seconds(8),
        "the run took {took} with a hanging endpoint"
    );
    let ci = calls.iter().find(|c| c.kind == "hook/ci").unwrap();
    assert_eq!(
        ci.headers["x-sluice-signature"],
        body_signature(WEBHOOK_SECRET, &ci.raw)
    );
    assert_eq!(ci.headers["x-sluice-event"], "run.succeeded");
    assert_eq!(ci.body["run_id"], run_id.as_str());
    assert_eq!(ci.body["environment"], "dev");
    let team = calls.iter().find(|c| c.kind == "hook/team").unwrap();
    assert!(
        team.body["text"].as_str().unwrap().contains("succeeded"),
        "{team:#?}"
    );

    // A second run while the hanging endpoint still holds the first delivery.
    let (status, rollback) = daemon.post(
        "/v1/environments/dev/rollback",
        Some(ADMIN),
        r#"{"reason": "again"}"#,
    );
    assert_eq!(status, 202, "{rollback}");
    let id = rollback["id"].as_str().unwrap();
    let started = Instant::now();
    daemon.wait_run(id, ADMIN, Duration::from_secs(60), |r| {
        state_of(r) == "rolled_back"
    });
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    slack.wait_for("the rollback notification", Duration::from_secs(20), |c| {
        c.iter()
            .any(|c| c.kind == "hook/ci" && c.body["event"] == "run.rolled_back")
    });
}

#[test]
fn the_release_hook_requests_a_gated_promotion_only_when_signed() {
    let ladder = Ladder::new("slack_hook", &[]);
    ladder.policy("dev", "environment = \"dev\"\n[approvals]\nrequired = 1\n");
    let slack = SlackServer::start();
    configure(
        &ladder,
        &slack,
        "[hooks]\nsecret_env = \"TEST_HOOK_SECRET\"\npromote_to = \"dev\"\n",
    );
    let daemon = Daemon::start(&ladder.project, DAEMON_ENV);
    let body = br#"{"reason": "main is at abc123", "delivery": "ci-42"}"#.to_vec();

    for (what, headers, expected) in [
        ("unsigned", vec![], 401),
        (
            "wrong secret",
            vec![("x-sluice-signature", body_signature("nope", &body))],
            401,
        ),
        (
            "not sha256=",
            vec![("x-sluice-signature", "md5=abc".to_string())],
            401,
        ),
    ] {
        let answer = post_raw(&daemon, "/hooks/release", &headers, body.clone());
        assert_eq!(answer.status, expected, "{what}: {:?}", answer.body);
    }
    assert_eq!(run_count(&daemon), 0);
    let bad_json = b"{not json".to_vec();
    let answer = post_raw(
        &daemon,
        "/hooks/release",
        &[("x-sluice-signature", body_signature(HOOK_SECRET, &bad_json))],
        bad_json,
    );
    assert_eq!(answer.status, 400);
    assert_eq!(run_count(&daemon), 0);

    let answer = post_raw(
        &daemon,
        "/hooks/release",
        &[("x-sluice-signature", body_signature(HOOK_SECRET, &body))],
        body.clone(),
    );
    assert_eq!(answer.status, 202, "{:?}", answer.body);
    let run_id = answer.body["runs"][0]["id"].as_str().unwrap().to_string();
    let run = daemon.wait_run(&run_id, ADMIN, Duration::from_secs(30), |r| {
        state_of(r) == "gated"
    });
    assert!(
        run["state"]["waiting_for"][0]
            .as_str()
            .unwrap()
            .starts_with("approval:"),
        "{run}"
    );
    assert_eq!(run["origin"]["via"], "hook");
    assert_eq!(run["origin"]["delivery"], "ci-42");
    assert_eq!(run["requested_by"], "hook");
    let again = post_raw(
        &daemon,
        "/hooks/release",
        &[("x-sluice-signature", body_signature(HOOK_SECRET, &body))],
        body,
    );
    assert_eq!(again.status, 200, "{:?}", again.body);
    assert!(
        again.body["nothing_to_do"]
            .as_str()
            .unwrap()
            .contains("already brings"),
        "{:?}",
        again.body
    );
    assert_eq!(run_count(&daemon), 1);
}

#[test]
fn without_a_bot_token_a_slack_run_reports_its_end_through_the_response_url() {
    let ladder = Ladder::new("slack_nobot", &[]);
    let slack = SlackServer::start();
    configure_with(&ladder, &slack, "", "");
    let daemon = Daemon::start(&ladder.project, DAEMON_ENV);
    let answer = slack_post(
        &daemon,
        "/slack/commands",
        &command_body(&slack, BOB, "promote dev", "n1"),
    );
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let calls = slack.wait_for(
        "the end of the run on the response_url",
        Duration::from_secs(60),
        |calls| {
            calls.iter().any(|c| {
                c.kind == "response/n1"
                    && c.body["text"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("succeeded")
            })
        },
    );
    assert!(
        calls.iter().all(|c| !c.kind.starts_with("chat.")),
        "no bot calls: {calls:#?}"
    );
    let finals = calls.iter().filter(|c| c.kind == "response/n1").count();
    assert_eq!(finals, 1, "{calls:#?}");
    let (_, run) = daemon.get("/v1/runs?environment=dev", Some(ADMIN));
    assert!(
        !run.to_string().contains("/response/"),
        "the response_url stays out of run views: {run}"
    );
}
