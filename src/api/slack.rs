//! Slack's slash commands and button clicks, and the signed release hook CI calls.
//!
//! Nothing is believed before its signature is: Slack requests must carry
//! `X-Slack-Signature = v0=hex(HMAC-SHA256(signing_secret, "v0:{timestamp}:{raw body}"))`,
//! checked in constant time over the raw bytes, with a timestamp at most 300 s away from now
//! and a signature not seen before (seen signatures are kept in the store for the window, so a
//! replay is refused after a restart too). The hook's body must carry
//! `X-Sluice-Signature = sha256=hex(HMAC-SHA256(secret, body))`. Refusals are 4xx in the API's
//! error shape and change nothing.
//!
//! Slack wants an answer within 3 seconds. A command that is done within [`REPLY_BUDGET`] is
//! answered in the reply; anything slower is acknowledged and finished in the background,
//! with its result posted to the command's `response_url`.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use chrono::Utc;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Sha256;

use crate::api::auth::{Caller, Role};
use crate::api::server::ApiError;
use crate::chatops::slack_api::Message;
use crate::chatops::{clip, plain_line, ChatOps, SlackSide, DRIFT_TEXT_LIMIT};
use crate::error::Error;
use crate::promote::engine::PromotionRequest;
use crate::promote::views::environment_views;
use crate::store::records::short_hash;
use crate::store::{Origin, Run};

/// How far a request's timestamp may be from now (Slack's own recommendation).
pub const MAX_SKEW_SECONDS: i64 = 300;
/// The largest body accepted; slash commands and clicks are a few kilobytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// How long a command may take before it is acknowledged and finished in the background.
pub const REPLY_BUDGET: Duration = Duration::from_millis(2000);

const SEEN_PREFIX: &str = "slack/seen/";

/// The routes, each with its own verification instead of API tokens.
pub fn routes(chatops: Arc<ChatOps>) -> Router {
    Router::new()
        .route("/slack/commands", post(command))
        .route("/slack/interactions", post(interaction))
        .route("/hooks/release", post(release_hook))
        .with_state(Arc::new(Endpoints {
            chatops,
            last_prune: AtomicI64::new(0),
        }))
}

struct Endpoints {
    chatops: Arc<ChatOps>,
    last_prune: AtomicI64,
}

fn refuse(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(status, code, message)
}

/// Reads the whole body up to [`MAX_BODY_BYTES`].
async fn read_body(body: Body) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| {
            refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body is larger than {MAX_BODY_BYTES} bytes"),
            )
        })
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Checks a Slack request's signature and age. Pure, so it is tested on its own.
pub fn verify_slack_signature(
    secret: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<(), String> {
    let timestamp = timestamp.ok_or("missing header X-Slack-Request-Timestamp")?;
    let signature = signature.ok_or("missing header X-Slack-Signature")?;
    let at: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| "X-Slack-Request-Timestamp is not a number of seconds")?;
    match now.checked_sub(at).map(i64::unsigned_abs) {
        Some(skew) if skew <= MAX_SKEW_SECONDS.unsigned_abs() => {}
        Some(skew) => {
            return Err(format!(
                "X-Slack-Request-Timestamp is {skew} s away from now; requests more than {MAX_SKEW_SECONDS} s old or ahead are refused"
            ))
        }
        None => {
            return Err(format!(
                "X-Slack-Request-Timestamp is too far from now; requests more than {MAX_SKEW_SECONDS} s old or ahead are refused"
            ))
        }
    }
    let expected = signature_bytes(signature)?;
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret).map_err(|_| "the signing secret is unusable")?;
    mac.update(b"v0:");
    mac.update(timestamp.trim().as_bytes());
    mac.update(b":");
    mac.update(body);
    mac.verify_slice(&expected)
        .map_err(|_| "X-Slack-Signature does not match the body".to_string())
}

/// The bytes an `X-Slack-Signature` header stands for (`v0=` and hex digits in any letter
/// case): what the signature check compares and what the replay guard remembers, so one
/// signature written in upper, lower or mixed case is one signature.
fn signature_bytes(signature: &str) -> Result<Vec<u8>, String> {
    let hex_part = signature
        .trim()
        .strip_prefix("v0=")
        .ok_or("X-Slack-Signature does not start with v0=")?;
    hex::decode(hex_part).map_err(|_| "X-Slack-Signature is not hexadecimal".to_string())
}

/// The replay guard's key of a verified signature: its decoded bytes as `v0=` and lowercase
/// hex (the form Slack sends, so guards written before this keying still match).
fn seen_key(signature: &str) -> Result<String, String> {
    signature_bytes(signature).map(|bytes| format!("{SEEN_PREFIX}v0={}", hex::encode(bytes)))
}

impl Endpoints {
    fn slack(&self) -> Result<&SlackSide, ApiError> {
        self.chatops.slack.as_ref().ok_or_else(|| {
            refuse(
                StatusCode::NOT_FOUND,
                "not_found",
                "Slack is not configured on this daemon ([slack] in sluice.toml)",
            )
        })
    }

    /// Everything a Slack request must pass before its content is read.
    async fn verified_slack_body(
        &self,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<(Bytes, &SlackSide), ApiError> {
        let slack = self.slack()?;
        let bytes = read_body(body).await?;
        let now = Utc::now().timestamp();
        let signature = header_text(headers, "x-slack-signature");
        verify_slack_signature(
            &slack.signing_secret,
            header_text(headers, "x-slack-request-timestamp"),
            signature,
            &bytes,
            now,
        )
        .map_err(|why| {
            tracing::warn!(reason = %why, "refused a Slack request");
            refuse(StatusCode::UNAUTHORIZED, "unauthorized", why)
        })?;
        let content_type = header_text(headers, header::CONTENT_TYPE.as_str()).unwrap_or("");
        if !content_type.starts_with("application/x-www-form-urlencoded") {
            return Err(refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("expected application/x-www-form-urlencoded, got `{content_type}`"),
            ));
        }
        let store = self.chatops.engine.store();
        let key = seen_key(signature.unwrap_or_default())
            .map_err(|why| refuse(StatusCode::UNAUTHORIZED, "unauthorized", why))?;
        let fresh = store
            .insert_mark(&key, &json!({"at": now}))
            .map_err(ApiError::from)?;
        if !fresh {
            return Err(refuse(
                StatusCode::CONFLICT,
                "replayed",
                "this request was already received (same signature); replays are refused",
            ));
        }
        self.prune_seen(now);
        Ok((bytes, slack))
    }

    /// Forgets seen signatures older than the window, at most once a minute.
    fn prune_seen(&self, now: i64) {
        let last = self.last_prune.load(Ordering::Relaxed);
        if now - last < 60
            || self
                .last_prune
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let store = self.chatops.engine.store();
        if let Ok(marks) = store.marks(SEEN_PREFIX) {
            for (key, value) in marks {
                let at = value.get("at").and_then(Value::as_i64).unwrap_or(0);
                if now - at > 2 * MAX_SKEW_SECONDS {
                    let _ = store.remove_mark(&key);
                }
            }
        }
    }
}

/// The fields of a slash command sluice uses.
#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct SlashCommand {
    command: String,
    text: String,
    user_id: String,
    user_name: String,
    channel_id: String,
    response_url: String,
}

async fn command(
    State(endpoints): State<Arc<Endpoints>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (bytes, slack) = match endpoints.verified_slack_body(&headers, body).await {
        Ok(ok) => ok,
        Err(error) => return error.into_response(),
    };
    let command: SlashCommand = match serde_urlencoded::from_bytes(&bytes) {
        Ok(c) => c,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("the form could not be read: {e}"),
            )
            .into_response()
        }
    };
    if command.user_id.is_empty() {
        return refuse(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the form has no user_id",
        )
        .into_response();
    }
    let caller = slack.caller_for(&command.user_id, &command.user_name);
    tracing::info!(user = %caller.name, command = %command.command, text = %command.text, "slash command");
    let chatops = endpoints.chatops.clone();
    let response_url = command.response_url.clone();
    let mut work = tokio::spawn(async move { run_command(&chatops, &caller, &command).await });
    let reply = match tokio::time::timeout(REPLY_BUDGET, &mut work).await {
        Ok(Ok(message)) => message,
        Ok(Err(_)) => Message::ephemeral("sluice failed while answering; see the daemon's log"),
        Err(_) => {
            let chatops = endpoints.chatops.clone();
            tokio::spawn(async move {
                let message = work.await.unwrap_or_else(|_| {
                    Message::ephemeral("sluice failed while answering; see the daemon's log")
                });
                if let Some(slack) = &chatops.slack {
                    if let Err(err) = slack.api.respond(&response_url, &message, false).await {
                        tracing::warn!(error = %err, "could not post a late reply");
                    }
                }
            });
            Message::ephemeral("Working on it; the answer follows here.")
        }
    };
    Json(reply.reply_json()).into_response()
}

const HELP: &str = "*sluice* commands:\n\
• `status [env]`: each environment's release and runs\n\
• `plan <env> [release]`: what a promotion would run and what would hold it\n\
• `drift <env>`: how env's schema differs from what its applied migrations make\n\
• `promote <env> [release]`: request a promotion (up the ladder)\n\
• `approve <run> [comment]`, `reject <run> [reason]`\n\
• `rollback <env> [reason]`: undo the last promotion of env\n\
• `runs [env]`: recent runs\n\
Run ids may be shortened to their first 8 characters.";

async fn run_command(chatops: &ChatOps, caller: &Caller, command: &SlashCommand) -> Message {
    let words: Vec<&str> = command.text.split_whitespace().collect();
    let rest = |from: usize| -> Option<String> {
        let text = words.get(from..)?.join(" ");
        (!text.is_empty()).then_some(text)
    };
    let result = match words.as_slice() {
        [] | ["help", ..] => Ok(Message::ephemeral(HELP)),
        ["status"] => status(chatops, None),
        ["status", env] => status(chatops, Some(env)),
        ["runs"] => runs(chatops, None),
        ["runs", env] => runs(chatops, Some(env)),
        ["drift", env] => drift(chatops, caller, env).await,
        ["plan", env] => plan(chatops, caller, env, None).await,
        ["plan", env, release] => plan(chatops, caller, env, Some(release)).await,
        ["promote", env] => promote(chatops, caller, command, env, None).await,
        ["promote", env, release] => promote(chatops, caller, command, env, Some(release)).await,
        ["approve", run, ..] => approve(chatops, caller, run, rest(2), None).await,
        ["reject", run, ..] => reject(chatops, caller, run, rest(2), None).await,
        ["rollback", env, ..] => rollback(chatops, caller, command, env, rest(2)).await,
        [other, ..] => Ok(Message::ephemeral(format!(
            "`{other}` is not a sluice command (or has the wrong arguments).\n{HELP}"
        ))),
    };
    result.unwrap_or_else(|err| Message::ephemeral(format!(":warning: {err}")))
}

fn known_env(chatops: &ChatOps, env: &str) -> Result<(), Error> {
    chatops.engine.loaded().environment(env).map(|_| ())
}

fn require(caller: &Caller, env: &str, role: Role) -> Result<(), Error> {
    caller.require(env, role).map_err(|e| {
        Error::Refused(format!(
            "{e}. Slack users get roles in sluice.toml under [slack.users]"
        ))
    })
}

fn status(chatops: &ChatOps, env: Option<&str>) -> Result<Message, Error> {
    if let Some(env) = env {
        known_env(chatops, env)?;
    }
    let views = environment_views(&chatops.engine)?;
    let mut lines = Vec::new();
    for view in views.iter().filter(|v| env.is_none_or(|e| v.name == e)) {
        let mut line = format!(
            "{:<10} {:<8} {}{}",
            view.name,
            view.release.as_deref().map(short_hash).unwrap_or("-"),
            view.head.as_deref().unwrap_or("-"),
            if view.release.is_some() && !view.healthy {
                " (not healthy)"
            } else {
                ""
            }
        );
        if let Some(active) = &view.active_run {
            line.push_str(&format!(
                "\n           run {} {}",
                short_hash(&active.id),
                active.describe
            ));
        }
        for waiting in &view.waiting_runs {
            line.push_str(&format!(
                "\n           run {} {}",
                short_hash(&waiting.id),
                waiting.describe
            ));
        }
        lines.push(line);
    }
    Ok(Message::ephemeral(format!(
        "```\n{}\n```",
        lines.join("\n")
    )))
}

fn runs(chatops: &ChatOps, env: Option<&str>) -> Result<Message, Error> {
    if let Some(env) = env {
        known_env(chatops, env)?;
    }
    let store = chatops.engine.store();
    let wanted = |r: &crate::store::RunSummary| env.is_none_or(|e| r.environment == e);
    let newest = store.run_summaries(&crate::store::RunPage {
        before: None,
        limit: 10,
        wanted: &wanted,
    })?;
    let mut lines = Vec::new();
    for summary in newest {
        if let Some(run) = store.run(&summary.id)? {
            lines.push(plain_line(&run));
        }
    }
    if lines.is_empty() {
        return Ok(Message::ephemeral("no runs yet"));
    }
    Ok(Message::ephemeral(lines.join("\n")))
}

async fn plan(
    chatops: &ChatOps,
    caller: &Caller,
    env: &str,
    release: Option<&str>,
) -> Result<Message, Error> {
    known_env(chatops, env)?;
    require(caller, env, Role::Viewer)?;
    let plan = chatops.engine.plan(env, release, &caller.name).await?;
    let mut lines = vec![format!(
        "Plan for `{env}`: release {}{} (now on {})",
        short_hash(&plan.release),
        plan.head
            .as_deref()
            .map(|h| format!(", head `{h}`"))
            .unwrap_or_default(),
        plan.current_release
            .as_deref()
            .map(short_hash)
            .unwrap_or("nothing recorded")
    )];
    if plan.migrations.is_empty() {
        lines.push("migrations: none to run".into());
    } else {
        lines.push(format!("migrations ({}):", plan.migrations.len()));
        for m in &plan.migrations {
            lines.push(format!(
                "• `{}` ({} statement(s){})",
                m.name,
                m.statements,
                m.reason
                    .as_deref()
                    .map(|r| format!(", outside a transaction: {r}"))
                    .unwrap_or_default()
            ));
        }
    }
    if plan.lint.findings.is_empty() {
        lines.push("lint: no findings".into());
    } else {
        lines.push(format!("lint findings ({}):", plan.lint.findings.len()));
        lines.extend(plan.lint.findings.iter().map(|f| {
            format!(
                "• `{}`:{} [{}] {}",
                f.migration,
                f.line,
                f.rule.id(),
                f.message
            )
        }));
    }
    if !plan.lint.silenced.is_empty() {
        lines.push(format!(
            "lint: {} finding(s) silenced in the migrations with a reason",
            plan.lint.silenced.len()
        ));
    }
    if plan.gates.is_empty() {
        lines.push("gates: all open; a promotion would start at once".into());
    } else {
        lines.push("gates that would hold it:".into());
        lines.extend(plan.gates.iter().map(|g| format!("• {g}")));
    }
    Ok(Message::ephemeral(lines.join("\n")))
}

async fn drift(chatops: &ChatOps, caller: &Caller, env: &str) -> Result<Message, Error> {
    known_env(chatops, env)?;
    require(caller, env, Role::Viewer)?;
    let report = chatops.engine.check_drift(env).await?;
    let mut text = report.summary();
    if !report.is_clean() {
        text.push_str(&format!(
            "\n```\n{}```",
            clip(&report.human(), DRIFT_TEXT_LIMIT)
        ));
    }
    Ok(Message::ephemeral(text))
}

async fn promote(
    chatops: &ChatOps,
    caller: &Caller,
    command: &SlashCommand,
    env: &str,
    release: Option<&str>,
) -> Result<Message, Error> {
    known_env(chatops, env)?;
    let chain = chatops.engine.loaded().policies.chain_to(env);
    for step in &chain {
        require(caller, step, Role::Deployer)?;
    }
    let runs = chatops
        .engine
        .request_promotion(&PromotionRequest {
            to: env.to_string(),
            release: release.map(String::from),
            ladder: true,
            actor: caller.name.clone(),
            reason: Some(format!("{} {}", command.command, command.text)),
            origin: Some(Origin::Slack {
                channel: command.channel_id.clone(),
                user: command.user_id.clone(),
            }),
        })
        .await?;
    remember_response_url(
        chatops,
        runs.iter().map(|r| r.id.as_str()),
        &command.response_url,
    )?;
    let lines: Vec<String> = runs.iter().map(plain_line).collect();
    Ok(Message {
        text: format!(
            "{} requested a promotion to `{env}`:\n{}\nProgress follows in this channel.",
            caller.name,
            lines.join("\n")
        ),
        blocks: Vec::new(),
        in_channel: true,
    })
}

/// Keeps a command's `response_url` for its runs (in the store, never in a run view: the URL
/// lets anyone post to the channel), so a daemon without a bot token can report their end.
fn remember_response_url<'a>(
    chatops: &ChatOps,
    run_ids: impl IntoIterator<Item = &'a str>,
    response_url: &str,
) -> Result<(), Error> {
    if response_url.is_empty() {
        return Ok(());
    }
    for id in run_ids {
        chatops.engine.store().put_mark(
            &format!("{}{id}", crate::chatops::RESPONSE_URL_PREFIX),
            &json!({"url": response_url}),
        )?;
        chatops.poke(id);
    }
    Ok(())
}

/// Finds a run by its id or a unique prefix (the engine's rule, as everywhere).
fn find_run(chatops: &ChatOps, wanted: &str) -> Result<Run, Error> {
    chatops.engine.run(wanted)
}

/// Approves, checking the release the button showed when there was a button.
async fn approve(
    chatops: &ChatOps,
    caller: &Caller,
    run: &str,
    comment: Option<String>,
    shown_release: Option<&str>,
) -> Result<Message, Error> {
    let run = run_to_decide(chatops, caller, run, shown_release)?;
    if run.approvals.iter().any(|a| a.by == caller.name) && run.state.is_waiting() {
        return Ok(Message::ephemeral(format!(
            "you already approved run {}; it is {}",
            short_hash(&run.id),
            run.state.describe()
        )));
    }
    let run = chatops
        .engine
        .approve(&run.id, &caller.name, comment)
        .await?;
    Ok(Message::ephemeral(format!(
        ":white_check_mark: {} approved run {} (`{}`, release {})",
        caller.name,
        short_hash(&run.id),
        run.environment,
        short_hash(&run.release)
    )))
}

async fn reject(
    chatops: &ChatOps,
    caller: &Caller,
    run: &str,
    reason: Option<String>,
    shown_release: Option<&str>,
) -> Result<Message, Error> {
    let run = run_to_decide(chatops, caller, run, shown_release)?;
    let reason = reason.unwrap_or_else(|| format!("rejected in Slack by {}", caller.name));
    let run = chatops
        .engine
        .reject(&run.id, &caller.name, &reason)
        .await?;
    Ok(Message::ephemeral(format!(
        ":no_entry_sign: {} rejected run {} (`{}`)",
        caller.name,
        short_hash(&run.id),
        run.environment
    )))
}

/// The run an approver decides on: found by id or prefix, the caller an approver of its
/// environment, and, for a button, still bringing the release the button was shown for.
fn run_to_decide(
    chatops: &ChatOps,
    caller: &Caller,
    run: &str,
    shown_release: Option<&str>,
) -> Result<Run, Error> {
    let run = find_run(chatops, run)?;
    require(caller, &run.environment, Role::Approver)?;
    check_shown_release(&run, shown_release)?;
    Ok(run)
}

fn check_shown_release(run: &Run, shown_release: Option<&str>) -> Result<(), Error> {
    match shown_release {
        Some(shown) if shown != run.release => Err(Error::Refused(format!(
            "this button was for release {}, but run {} brings release {}; nothing was changed",
            short_hash(shown),
            short_hash(&run.id),
            short_hash(&run.release)
        ))),
        _ => Ok(()),
    }
}

async fn rollback(
    chatops: &ChatOps,
    caller: &Caller,
    command: &SlashCommand,
    env: &str,
    reason: Option<String>,
) -> Result<Message, Error> {
    known_env(chatops, env)?;
    require(caller, env, Role::Deployer)?;
    let reason = reason.unwrap_or_else(|| format!("requested in Slack by {}", caller.name));
    let run = chatops
        .engine
        .request_rollback(
            env,
            &caller.name,
            &reason,
            Some(Origin::Slack {
                channel: command.channel_id.clone(),
                user: command.user_id.clone(),
            }),
        )
        .await?;
    remember_response_url(chatops, [run.id.as_str()], &command.response_url)?;
    Ok(Message {
        text: format!(
            "{} requested a rollback of `{env}`: {}\nProgress follows in this channel.",
            caller.name,
            plain_line(&run)
        ),
        blocks: Vec::new(),
        in_channel: true,
    })
}

/// The parts of a `block_actions` payload sluice reads.
#[derive(Debug, Deserialize)]
struct BlockActions {
    #[serde(rename = "type")]
    kind: String,
    user: SlackUserRef,
    #[serde(default)]
    actions: Vec<Action>,
    #[serde(default)]
    response_url: Option<String>,
}

#[derive(Debug, Deserialize)]
struct SlackUserRef {
    id: String,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Action {
    action_id: String,
    #[serde(default)]
    value: String,
}

#[derive(Deserialize)]
struct InteractionForm {
    payload: String,
}

async fn interaction(
    State(endpoints): State<Arc<Endpoints>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (bytes, slack) = match endpoints.verified_slack_body(&headers, body).await {
        Ok(ok) => ok,
        Err(error) => return error.into_response(),
    };
    let payload: BlockActions = match serde_urlencoded::from_bytes::<InteractionForm>(&bytes)
        .map_err(|e| e.to_string())
        .and_then(|f| serde_json::from_str(&f.payload).map_err(|e| e.to_string()))
    {
        Ok(p) => p,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("expected a form with a JSON `payload`: {e}"),
            )
            .into_response()
        }
    };
    if payload.kind != "block_actions" {
        return StatusCode::OK.into_response();
    }
    let Some(action) = payload.actions.first() else {
        return StatusCode::OK.into_response();
    };
    let user_name = payload
        .user
        .username
        .as_deref()
        .or(payload.user.name.as_deref())
        .unwrap_or_default();
    let caller = slack.caller_for(&payload.user.id, user_name);
    let Some((run_id, release)) = action.value.split_once(':') else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the button's value is not `<run>:<release>`",
        )
        .into_response();
    };
    let (run_id, release, action_id) = (
        run_id.to_string(),
        release.to_string(),
        action.action_id.clone(),
    );
    tracing::info!(user = %caller.name, action = %action_id, run = %run_id, "Slack button");
    let chatops = endpoints.chatops.clone();
    let response_url = payload.response_url.clone();
    tokio::spawn(async move {
        let result = match action_id.as_str() {
            "approve" => approve(&chatops, &caller, &run_id, None, Some(&release)).await,
            "reject" => reject(&chatops, &caller, &run_id, None, Some(&release)).await,
            other => Err(Error::Usage(format!("unknown action `{other}`"))),
        };
        let message = result.unwrap_or_else(|err| Message::ephemeral(format!(":warning: {err}")));
        if let (Some(url), Some(slack)) = (response_url, &chatops.slack) {
            if let Err(err) = slack.api.respond(&url, &message, false).await {
                tracing::warn!(error = %err, "could not answer a Slack click");
            }
        }
    });
    StatusCode::OK.into_response()
}

/// The body of `POST /hooks/release`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReleaseHook {
    to: Option<String>,
    release: Option<String>,
    reason: Option<String>,
    delivery: Option<String>,
}

async fn release_hook(
    State(endpoints): State<Arc<Endpoints>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let chatops = &endpoints.chatops;
    let Some(hooks) = &chatops.hooks else {
        return refuse(
            StatusCode::NOT_FOUND,
            "not_found",
            "the release hook is not configured on this daemon ([hooks] in sluice.toml)",
        )
        .into_response();
    };
    let bytes = match read_body(body).await {
        Ok(b) => b,
        Err(error) => return error.into_response(),
    };
    let Some(signature) = header_text(&headers, crate::notify::SIGNATURE_HEADER) else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            format!(
                "missing header {}: sign the body with HMAC-SHA256 and the shared secret, as sha256=<hex>",
                crate::notify::SIGNATURE_HEADER
            ),
        ).into_response();
    };
    if !crate::notify::verify(&hooks.secret, &bytes, signature) {
        tracing::warn!("refused a release hook with a bad signature");
        return refuse(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            format!(
                "{} does not match the body",
                crate::notify::SIGNATURE_HEADER
            ),
        )
        .into_response();
    }
    let request: ReleaseHook = if bytes.iter().all(u8::is_ascii_whitespace) {
        ReleaseHook::default()
    } else {
        match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(e) => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("request body: {e}"),
                )
                .into_response()
            }
        }
    };
    let engine = &chatops.engine;
    let loaded = engine.loaded();
    let to = match request.to.or_else(|| hooks.promote_to.clone()) {
        Some(to) => to,
        None => match loaded.ladder_order().first() {
            Some(first) => first.clone(),
            None => {
                return refuse(
                    StatusCode::CONFLICT,
                    "conflict",
                    "no environment to promote to",
                )
                .into_response()
            }
        },
    };
    if let Err(err) = loaded.environment(&to) {
        return ApiError::from(err).into_response();
    }
    let release = match engine.scan_releases("hook", "hook").await {
        Ok((release, _)) => release,
        Err(err) => return ApiError::from(err).into_response(),
    };
    let result = engine
        .request_promotion(&PromotionRequest {
            to: to.clone(),
            release: Some(request.release.unwrap_or(release.hash.clone())),
            ladder: false,
            actor: "hook".into(),
            reason: request
                .reason
                .or_else(|| Some("release announced by the release hook".into())),
            origin: Some(Origin::Hook {
                delivery: request.delivery,
            }),
        })
        .await;
    match result {
        Ok(runs) => (
            StatusCode::ACCEPTED,
            Json(json!({"runs": runs.iter().map(crate::store::Run::clone).collect::<Vec<_>>()})),
        )
            .into_response(),
        Err(Error::Conflict(why)) => (
            StatusCode::OK,
            Json(json!({"runs": [], "nothing_to_do": why})),
        )
            .into_response(),
        Err(err) => ApiError::from(err).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &[u8], ts: &str, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("key");
        mac.update(format!("v0:{ts}:").as_bytes());
        mac.update(body);
        format!("v0={}", hex::encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn slack_signatures_are_checked_over_timestamp_and_raw_body() {
        let secret = b"8f742231b10e8888abcd99yyyzzz85a5";
        let body = b"token=x&team_id=T1&text=status";
        let now = 1_700_000_000;
        let ts = now.to_string();
        let good = sign(secret, &ts, body);
        assert_eq!(
            verify_slack_signature(secret, Some(&ts), Some(&good), body, now),
            Ok(())
        );
        assert!(
            verify_slack_signature(secret, Some(&ts), Some(&good), b"text=promote", now)
                .unwrap_err()
                .contains("does not match")
        );
        assert!(verify_slack_signature(b"other", Some(&ts), Some(&good), body, now).is_err());
        let stale =
            verify_slack_signature(secret, Some(&ts), Some(&good), body, now + 301).unwrap_err();
        assert!(stale.contains("301 s away"), "{stale}");
        assert!(verify_slack_signature(secret, Some(&ts), Some(&good), body, now + 300).is_ok());
        assert!(verify_slack_signature(secret, None, Some(&good), body, now)
            .unwrap_err()
            .contains("X-Slack-Request-Timestamp"));
        assert!(verify_slack_signature(secret, Some(&ts), None, body, now)
            .unwrap_err()
            .contains("X-Slack-Signature"));
        let no_prefix = good.trim_start_matches("v0=").to_string();
        assert!(verify_slack_signature(secret, Some(&ts), Some(&no_prefix), body, now).is_err());
        assert!(verify_slack_signature(secret, Some("soon"), Some(&good), body, now).is_err());
        assert!(verify_slack_signature(secret, Some(&ts), Some("v0=zz"), body, now).is_err());
    }

    #[test]
    fn item08_a_timestamp_whose_distance_from_now_overflows_is_refused() {
        let secret = b"8f742231b10e8888abcd99yyyzzz85a5";
        let body = b"token=x&team_id=T1&text=promote%20prod";
        let now: i64 = 1_700_000_000;
        for at in [now.wrapping_add(i64::MIN), i64::MIN, i64::MAX] {
            let ts = at.to_string();
            let signature = sign(secret, &ts, body);
            let refused = verify_slack_signature(secret, Some(&ts), Some(&signature), body, now)
                .expect_err("a timestamp centuries away must be refused");
            assert!(refused.contains("X-Slack-Request-Timestamp"), "{refused}");
        }
        for now in [i64::MIN, i64::MAX] {
            let ts = "0";
            let signature = sign(secret, ts, body);
            assert!(verify_slack_signature(secret, Some(ts), Some(&signature), body, now).is_err());
        }
    }

    #[test]
    fn item08_one_signature_in_any_letter_case_is_one_replay_key() {
        let secret = b"8f742231b10e8888abcd99yyyzzz85a5";
        let body = b"token=x&team_id=T1&text=status";
        let now = 1_700_000_000;
        let ts = now.to_string();
        let lower = sign(secret, &ts, body);
        let hex_part = lower.trim_start_matches("v0=");
        let upper = format!("v0={}", hex_part.to_ascii_uppercase());
        let mixed: String = format!(
            "v0={}",
            hex_part
                .chars()
                .enumerate()
                .map(|(i, c)| if i % 2 == 0 {
                    c.to_ascii_uppercase()
                } else {
                    c
                })
                .collect::<String>()
        );
        let key = seen_key(&lower).expect("a valid signature has a key");
        for variant in [&upper, &mixed, &format!(" {lower} ")] {
            assert_eq!(
                verify_slack_signature(secret, Some(&ts), Some(variant), body, now),
                Ok(()),
                "{variant}"
            );
            assert_eq!(seen_key(variant).as_ref(), Ok(&key), "{variant}");
        }
        assert_eq!(key, format!("{SEEN_PREFIX}{lower}"));
    }
}
