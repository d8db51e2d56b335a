//! Chat-ops: what sluice says in Slack and to webhooks while runs move.
//!
//! Two listeners hang off the engine's transitions. The [`Reporter`] keeps one Slack message
//! per run started from Slack up to date (posted with the bot token, then edited as the run
//! goes through snapshot, migrations, checks and its end), and posts an approval request with
//! Approve and Reject buttons for every run that waits for approval. The notification
//! listener hands every finished run to [`crate::notify::Notifier`]. Both only enqueue in the
//! engine's call, so a slow Slack or a hanging webhook never delays a run.
//!
//! Which Slack messages exist is recorded in the store's marks (`slack/progress/<run>`,
//! `slack/approval/<run>`), so a restarted daemon edits the same messages instead of posting
//! new ones.

pub mod slack_api;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::api::auth::{Caller, Role, ALL_ENVIRONMENTS};
use crate::config::chatops::{SinkKindConfig, SlackUser};
use crate::config::Project;
use crate::error::{Error, Result};
use crate::notify::{Notification, Notifier, NotifyOptions, Sink, SinkKind};
use crate::promote::engine::{DriftNotice, Engine, RunListener};
use crate::store::records::{short_hash, GateKind};
use crate::store::{Origin, Run, RunState};

use slack_api::{HttpSlackApi, Message, SlackApi};

/// Slack as the daemon uses it: the verified secret, who is who, and the Web API.
pub struct SlackSide {
    /// The signing secret every request is verified with.
    pub signing_secret: Vec<u8>,
    /// Known users.
    pub users: BTreeMap<String, SlackUser>,
    /// The Web API.
    pub api: Arc<dyn SlackApi>,
    /// Where approval requests go; without it, to the channel the run was requested from.
    pub approvals_channel: Option<String>,
    /// Whether a bot token is configured: without one, no message can be posted or edited,
    /// and a run started from Slack reports its end through the command's `response_url`.
    pub has_bot: bool,
}

impl SlackSide {
    /// The caller a Slack user acts as: a mapped user with their roles, anyone else as a
    /// viewer named `slack:<name>`, so unknown people can read and never change anything.
    pub fn caller_for(&self, user_id: &str, user_name: &str) -> Caller {
        match self.users.get(user_id) {
            Some(user) => Caller {
                name: user.name.clone(),
                roles: user.roles.clone(),
            },
            None => Caller {
                name: format!(
                    "slack:{}",
                    if user_name.is_empty() {
                        user_id
                    } else {
                        user_name
                    }
                ),
                roles: [(ALL_ENVIRONMENTS.to_string(), Role::Viewer)].into(),
            },
        }
    }
}

/// The inbound release hook's settings.
pub struct HookSide {
    /// The shared HMAC key.
    pub secret: Vec<u8>,
    /// The environment promoted to when the body names none.
    pub promote_to: Option<String>,
}

/// Everything the Slack and hook endpoints and the listeners share.
pub struct ChatOps {
    /// The engine.
    pub engine: Arc<Engine>,
    /// Slack, when configured.
    pub slack: Option<SlackSide>,
    /// The release hook, when configured.
    pub hooks: Option<HookSide>,
    /// Webhook notifications.
    pub notifier: Notifier,
    reporter: Option<Reporter>,
}

impl ChatOps {
    /// Reads the secrets the project names, starts the notifier and the Slack reporter and
    /// registers them with the engine. `slack_api` replaces the HTTP client (tests). A secret
    /// that cannot be read stops the daemon with the config error.
    pub fn start(
        engine: Arc<Engine>,
        project: &Project,
        slack_api: Option<Arc<dyn SlackApi>>,
    ) -> Result<Arc<ChatOps>> {
        let origin = project.root.join(crate::config::PROJECT_FILE);
        let environments = engine.loaded().environment_names();
        let config = &project.chatops;
        let slack = match &config.slack {
            Some(slack) => {
                let unknown = slack.unknown_environments(&environments);
                if !unknown.is_empty() {
                    return Err(Error::Config(format!(
                        "{}: [slack.users] grants roles on unknown environment(s) {}; known: {}",
                        origin.display(),
                        unknown.join(", "),
                        environments.join(", ")
                    )));
                }
                let signing_secret = slack.signing_secret.read(&origin)?.into_bytes();
                let bot_token = slack
                    .bot_token
                    .as_ref()
                    .map(|s| s.read(&origin))
                    .transpose()?;
                let api: Arc<dyn SlackApi> = match slack_api {
                    Some(api) => api,
                    None => Arc::new(
                        HttpSlackApi::new(&slack.api_url, bot_token.clone())
                            .map_err(|e| Error::Config(e.to_string()))?,
                    ),
                };
                Some(SlackSide {
                    signing_secret,
                    users: slack.users.clone(),
                    api,
                    approvals_channel: slack.approvals_channel.clone(),
                    has_bot: bot_token.is_some(),
                })
            }
            None => None,
        };
        let hooks = match &config.hooks {
            Some(hooks) => {
                if let Some(env) = &hooks.promote_to {
                    if !environments.contains(env) {
                        return Err(Error::Config(format!(
                            "{}: key `hooks.promote_to`: `{env}` is not a known environment; known: {}",
                            origin.display(),
                            environments.join(", ")
                        )));
                    }
                }
                Some(HookSide {
                    secret: hooks.secret.read(&origin)?.into_bytes(),
                    promote_to: hooks.promote_to.clone(),
                })
            }
            None => None,
        };
        let mut sinks = Vec::new();
        for sink in &config.notify {
            sinks.push(Sink {
                name: sink.name.clone(),
                kind: match sink.kind {
                    SinkKindConfig::Slack => SinkKind::SlackWebhook,
                    SinkKindConfig::Webhook => SinkKind::Webhook {
                        secret: sink.secret.as_ref().map(|s| s.read(&origin)).transpose()?,
                    },
                },
                url: sink.url.read(&origin)?,
                events: sink.events.clone(),
            });
        }
        let notifier = if sinks.is_empty() {
            Notifier::disabled()
        } else {
            Notifier::start(sinks, NotifyOptions::default())
        };
        engine.add_listener(Arc::new(NotifyListener {
            notifier: notifier.clone(),
        }));
        let reporter = slack.as_ref().map(|_| {
            let (tx, rx) = mpsc::unbounded_channel();
            let reporter = Reporter { tx };
            engine.add_listener(Arc::new(reporter.clone()));
            (reporter, rx)
        });
        let chatops = Arc::new(ChatOps {
            engine: engine.clone(),
            slack,
            hooks,
            notifier,
            reporter: reporter.as_ref().map(|(r, _)| r.clone()),
        });
        if let Some((_, rx)) = reporter {
            tokio::spawn(report_loop(chatops.clone(), rx));
        }
        Ok(chatops)
    }

    /// Asks the reporter to look at a run again (after a decision made in Slack).
    pub fn poke(&self, run_id: &str) {
        if let Some(reporter) = &self.reporter {
            let _ = reporter.tx.send(run_id.to_string());
        }
    }
}

/// Hands finished runs to the notifier.
struct NotifyListener {
    notifier: Notifier,
}

impl RunListener for NotifyListener {
    fn run_changed(&self, run: &Run) {
        // A halted run waits for a person, so it is announced like a finished one.
        if !(run.state.is_final() || matches!(run.state, RunState::Halted { .. })) {
            return;
        }
        let event = format!("run.{}", run.state.name());
        self.notifier.notify(Notification {
            event,
            environment: run.environment.clone(),
            run_id: run.id.clone(),
            release: short_hash(&run.release).to_string(),
            head: run.head.clone(),
            state: run.state.describe(),
            text: plain_line(run),
            at: run.updated_at,
            detail: serde_json::to_value(run).unwrap_or(Value::Null),
        });
    }

    fn drift_found(&self, notice: &DriftNotice) {
        let release = notice.report["release"].as_str().unwrap_or_default();
        self.notifier.notify(Notification {
            event: notice.event.clone(),
            environment: notice.environment.clone(),
            run_id: notice.run_id.clone().unwrap_or_default(),
            release: short_hash(release).to_string(),
            head: notice.report["head"].as_str().map(String::from),
            state: notice.summary.clone(),
            text: format!(
                "{}\n{}",
                notice.summary,
                clip(&notice.diff, DRIFT_TEXT_LIMIT)
            ),
            at: chrono::Utc::now(),
            detail: serde_json::to_value(notice).unwrap_or(Value::Null),
        });
    }
}

/// How much of a diff goes into a notification's text (Slack truncates long messages); the
/// whole report is in the notification's detail and the event log.
pub(crate) const DRIFT_TEXT_LIMIT: usize = 2500;

/// The first `limit` bytes of `text` at a line boundary, with a note when something was cut.
pub(crate) fn clip(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_string();
    }
    let mut cut = limit;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let cut = text[..cut].rfind('\n').map(|i| i + 1).unwrap_or(cut);
    format!(
        "{}… ({} more bytes; see the event log)",
        &text[..cut],
        text.len() - cut
    )
}

/// Queues run ids for the Slack worker.
#[derive(Clone)]
struct Reporter {
    tx: mpsc::UnboundedSender<String>,
}

impl RunListener for Reporter {
    fn run_changed(&self, run: &Run) {
        let _ = self.tx.send(run.id.clone());
    }
}

/// Updates Slack for each run id received; bursts are coalesced so a fast run is one or two
/// edits, not one per migration.
async fn report_loop(chatops: Arc<ChatOps>, mut rx: mpsc::UnboundedReceiver<String>) {
    while let Some(first) = rx.recv().await {
        let mut ids = BTreeSet::from([first]);
        while let Ok(more) = rx.try_recv() {
            ids.insert(more);
        }
        for id in ids {
            if let Err(err) = report(&chatops, &id).await {
                tracing::warn!(run = %id, error = %err, "could not update Slack");
            }
        }
    }
}

async fn report(chatops: &ChatOps, run_id: &str) -> Result<()> {
    let Some(slack) = &chatops.slack else {
        return Ok(());
    };
    let store = chatops.engine.store();
    let Some(run) = store.run(run_id)? else {
        return Ok(());
    };
    let slack_error = |e: slack_api::SlackError| Error::Io {
        path: "slack".into(),
        message: e.to_string(),
    };
    if !slack.has_bot {
        return report_without_bot(chatops, slack, &run).await;
    }
    if let Some(Origin::Slack { channel, .. }) = &run.origin {
        let key = format!("slack/progress/{}", run.id);
        let message = run_message(&run);
        match store.mark(&key)? {
            Some(mark) => {
                let rendered = run.state.describe();
                if mark.get("rendered").and_then(Value::as_str) != Some(rendered.as_str()) {
                    let ts = mark.get("ts").and_then(Value::as_str).unwrap_or_default();
                    slack
                        .api
                        .update_message(channel, ts, &message)
                        .await
                        .map_err(slack_error)?;
                    store.put_mark(
                        &key,
                        &json!({"channel": channel, "ts": ts, "rendered": rendered}),
                    )?;
                }
            }
            None => {
                let ts = slack
                    .api
                    .post_message(channel, &message)
                    .await
                    .map_err(slack_error)?;
                store.put_mark(
                    &key,
                    &json!({"channel": channel, "ts": ts, "rendered": run.state.describe()}),
                )?;
            }
        }
    }
    let key = format!("slack/approval/{}", run.id);
    let waits_for_approval = run.state.waits_for(GateKind::Approval);
    match store.mark(&key)? {
        None if waits_for_approval => {
            let channel = slack.approvals_channel.clone().or(match &run.origin {
                Some(Origin::Slack { channel, .. }) => Some(channel.clone()),
                _ => None,
            });
            if let Some(channel) = channel {
                let message = approval_message(&run);
                let ts = slack
                    .api
                    .post_message(&channel, &message)
                    .await
                    .map_err(slack_error)?;
                store.put_mark(
                    &key,
                    &json!({"channel": channel, "ts": ts, "rendered": approval_state(&run)}),
                )?;
            }
        }
        Some(mark) => {
            let rendered = approval_state(&run);
            if mark.get("rendered").and_then(Value::as_str) != Some(rendered.as_str()) {
                let channel = mark.get("channel").and_then(Value::as_str).unwrap_or("");
                let ts = mark.get("ts").and_then(Value::as_str).unwrap_or("");
                slack
                    .api
                    .update_message(channel, ts, &approval_message(&run))
                    .await
                    .map_err(slack_error)?;
                store.put_mark(
                    &key,
                    &json!({"channel": channel, "ts": ts, "rendered": rendered}),
                )?;
            }
        }
        None => {}
    }
    Ok(())
}

/// The prefix of the mark holding a Slack-started run's `response_url`.
pub const RESPONSE_URL_PREFIX: &str = "slack/response_url/";

/// Without a bot token nothing can be posted or edited: a run started from Slack tells its end
/// once through the command's `response_url` (valid for 30 minutes, which covers most runs).
async fn report_without_bot(chatops: &ChatOps, slack: &SlackSide, run: &Run) -> Result<()> {
    if !run.state.is_final() {
        return Ok(());
    }
    let store = chatops.engine.store();
    let Some(url) = store
        .mark(&format!("{RESPONSE_URL_PREFIX}{}", run.id))?
        .and_then(|m| m.get("url").and_then(Value::as_str).map(String::from))
    else {
        return Ok(());
    };
    if store.insert_mark(
        &format!("slack/final/{}", run.id),
        &json!({"state": run.state.name()}),
    )? {
        slack
            .api
            .respond(&url, &run_message(run), false)
            .await
            .map_err(|e| Error::Io {
                path: "slack".into(),
                message: e.to_string(),
            })?;
    }
    Ok(())
}

/// What an approval message shows, to edit it only when that changes.
fn approval_state(run: &Run) -> String {
    let approvers: Vec<&str> = run.approvals.iter().map(|a| a.by.as_str()).collect();
    if run.state.is_waiting() {
        format!("waiting|{}", approvers.join(","))
    } else {
        format!("{}|{}", run.state.name(), approvers.join(","))
    }
}

/// The emoji that starts a run's line in Slack.
fn emoji(state: &RunState) -> &'static str {
    match state {
        RunState::Succeeded => ":white_check_mark:",
        RunState::RolledBack { .. } => ":leftwards_arrow_with_hook:",
        RunState::Halted { .. } => ":octagonal_sign:",
        RunState::Cancelled { .. } | RunState::Rejected { .. } => ":no_entry_sign:",
        RunState::RollingBack { .. } => ":rewind:",
        RunState::Queued | RunState::Gated { .. } => ":hourglass_flowing_sand:",
        _ => ":arrows_counterclockwise:",
    }
}

/// One line about a run, for notifications and message fallbacks.
pub fn plain_line(run: &Run) -> String {
    format!(
        "{} `{}` run {} (release {}{}): {}",
        emoji(&run.state),
        run.environment,
        short_hash(&run.id),
        short_hash(&run.release),
        run.head
            .as_deref()
            .map(|h| format!(", head `{h}`"))
            .unwrap_or_default(),
        run.state.describe()
    )
}

fn context_line(run: &Run) -> Value {
    let mut parts = vec![format!("requested by {}", run.requested_by)];
    if let Some(reason) = &run.reason {
        parts.push(format!("reason: {reason}"));
    }
    parts.push(format!("run `{}`", run.id));
    json!({"type": "context", "elements": [{"type": "mrkdwn", "text": parts.join(" · ")}]})
}

/// The progress message of a run started from Slack.
pub fn run_message(run: &Run) -> Message {
    let mut lines = vec![plain_line(run)];
    if !run.plan.is_empty() {
        lines.push(format!(
            "migrations: {}/{} applied",
            run.applied.len(),
            run.plan.len()
        ));
    }
    if let Some(snapshot) = &run.snapshot {
        lines.push(format!("snapshot: `{snapshot}`"));
    }
    Message {
        text: plain_line(run),
        blocks: vec![
            json!({"type": "section", "text": {"type": "mrkdwn", "text": lines.join("\n")}}),
            context_line(run),
        ],
        in_channel: true,
    }
}

/// The value an Approve or Reject button carries: the run and the release it was shown for,
/// so a button left over from an earlier release cannot approve a different one.
pub fn button_value(run: &Run) -> String {
    format!("{}:{}", run.id, run.release)
}

/// The approval request with buttons while the run waits; the decision once it does not.
pub fn approval_message(run: &Run) -> Message {
    let headline = format!(
        "Approval needed: promote `{}` to release {}{}",
        run.environment,
        short_hash(&run.release),
        run.head
            .as_deref()
            .map(|h| format!(" (head `{h}`)"))
            .unwrap_or_default()
    );
    let approvals = if run.approvals.is_empty() {
        "no approvals yet".to_string()
    } else {
        format!(
            "approved by {}",
            run.approvals
                .iter()
                .map(|a| a.by.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let mut blocks = vec![
        json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("{headline}\n{approvals}")}}),
        context_line(run),
    ];
    let text = if run.state.is_waiting() {
        let value = button_value(run);
        blocks.push(json!({
            "type": "actions",
            "block_id": format!("sluice-approval-{}", run.id),
            "elements": [
                {"type": "button", "action_id": "approve", "style": "primary", "value": value,
                 "text": {"type": "plain_text", "text": "Approve"}},
                {"type": "button", "action_id": "reject", "style": "danger", "value": value,
                 "text": {"type": "plain_text", "text": "Reject"}},
            ]
        }));
        format!("{headline} ({approvals})")
    } else {
        let decided = match &run.state {
            RunState::Rejected { reason } => format!(":no_entry_sign: {reason}"),
            RunState::Cancelled { reason } => format!(":no_entry_sign: cancelled: {reason}"),
            other => format!(
                ":white_check_mark: {approvals}; the run is {}",
                other.describe()
            ),
        };
        blocks
            .push(json!({"type": "section", "text": {"type": "mrkdwn", "text": decided.clone()}}));
        format!("{headline}: {decided}")
    };
    Message {
        text,
        blocks,
        in_channel: true,
    }
}
