//! The chat-ops sections of `sluice.toml`: `[slack]` (slash commands, approve buttons, progress
//! messages), `[[notify]]` (where finished runs are announced) and `[hooks]` (the signed
//! inbound webhook CI calls). Secrets are named here (an environment variable or a file),
//! never written here, and are read when the daemon starts.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;

use serde::Deserialize;
use toml::Spanned;

use super::{FileContext, SecretSource};
use crate::api::auth::{Role, ALL_ENVIRONMENTS};
use crate::error::Result;

/// Where Slack's Web API lives unless `[slack] api_url` says otherwise (tests point it at a
/// recording server on loopback).
pub const DEFAULT_SLACK_API_URL: &str = "https://slack.com/api";

/// Everything chat-ops needs from `sluice.toml`.
#[derive(Debug, Clone, Default)]
pub struct ChatOpsConfig {
    /// `[slack]`, when Slack is connected.
    pub slack: Option<SlackConfig>,
    /// `[[notify]]` sinks.
    pub notify: Vec<NotifySinkConfig>,
    /// `[hooks]`, when the inbound release webhook is enabled.
    pub hooks: Option<HooksConfig>,
}

/// How sluice talks with one Slack workspace.
#[derive(Debug, Clone)]
pub struct SlackConfig {
    /// The app's signing secret, which every request from Slack is verified against.
    pub signing_secret: SecretSource,
    /// The bot token for `chat.postMessage`/`chat.update`; without it only replies through
    /// `response_url` are sent and no approval requests are posted.
    pub bot_token: Option<SecretSource>,
    /// Base URL of the Web API.
    pub api_url: String,
    /// Channel id where approval requests (with Approve and Reject buttons) are posted.
    pub approvals_channel: Option<String>,
    /// Slack user id → the name recorded as actor and the roles per environment. Users not
    /// listed may only read.
    pub users: BTreeMap<String, SlackUser>,
}

/// One Slack user sluice knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlackUser {
    /// The actor name in the audit log (and for approval rules and self-approval).
    pub name: String,
    /// Role per environment, `"*"` for the rest, as in the tokens file.
    pub roles: BTreeMap<String, Role>,
}

/// What kind of endpoint a notification goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkKindConfig {
    /// A Slack incoming webhook.
    Slack,
    /// Any HTTP endpoint taking a signed JSON body.
    Webhook,
}

/// One `[[notify]]` entry.
#[derive(Debug, Clone)]
pub struct NotifySinkConfig {
    /// Name for logs and errors (the URL is a secret and never logged).
    pub name: String,
    /// Slack webhook or generic webhook.
    pub kind: SinkKindConfig,
    /// Where the URL comes from (incoming-webhook URLs carry their own credential).
    pub url: UrlValue,
    /// The HMAC key for generic webhooks.
    pub secret: Option<SecretSource>,
    /// Event names to send; empty = every finished run.
    pub events: Vec<String>,
}

/// A URL given inline or, because it is a credential, through a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlValue {
    /// Written in the file.
    Inline(String),
    /// From an environment variable or a file.
    Secret(SecretSource),
}

impl UrlValue {
    /// The URL now.
    pub fn read(&self, origin: &Path) -> Result<String> {
        match self {
            UrlValue::Inline(url) => Ok(url.clone()),
            UrlValue::Secret(source) => source.read(origin),
        }
    }
}

/// The signed inbound webhook `POST /hooks/release`.
#[derive(Debug, Clone)]
pub struct HooksConfig {
    /// The shared HMAC key.
    pub secret: SecretSource,
    /// The environment a hook promotes to when its body names none (default: the first
    /// environment of the ladder).
    pub promote_to: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSlack {
    signing_secret_env: Option<Spanned<String>>,
    signing_secret_file: Option<Spanned<String>>,
    bot_token_env: Option<Spanned<String>>,
    bot_token_file: Option<Spanned<String>>,
    api_url: Option<Spanned<String>>,
    approvals_channel: Option<Spanned<String>>,
    #[serde(default)]
    users: BTreeMap<String, RawSlackUser>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSlackUser {
    name: Spanned<String>,
    #[serde(default)]
    roles: BTreeMap<String, Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotify {
    name: Option<Spanned<String>>,
    kind: Spanned<String>,
    url: Option<Spanned<String>>,
    url_env: Option<Spanned<String>>,
    url_file: Option<Spanned<String>>,
    secret_env: Option<Spanned<String>>,
    secret_file: Option<Spanned<String>>,
    #[serde(default)]
    events: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHooks {
    secret_env: Option<Spanned<String>>,
    secret_file: Option<Spanned<String>>,
    promote_to: Option<Spanned<String>>,
}

/// Event names a `[[notify]]` entry may ask for.
pub const NOTIFY_EVENTS: [&str; 7] = [
    "run.succeeded",
    "run.rolled_back",
    "run.halted",
    "run.cancelled",
    "run.rejected",
    "drift.detected",
    "drift.resolved",
];

fn secret(
    ctx: &FileContext<'_>,
    root: &Path,
    key: &str,
    env: &Option<Spanned<String>>,
    file: &Option<Spanned<String>>,
) -> Result<Option<SecretSource>> {
    match (env, file) {
        (Some(_), Some(file)) => Err(ctx.at(
            &format!("{key}_file"),
            file,
            format!("give either `{key}_env` or `{key}_file`, not both"),
        )),
        (Some(var), None) if var.get_ref().trim().is_empty() => Err(ctx.at(
            &format!("{key}_env"),
            var,
            "must name an environment variable",
        )),
        (Some(var), None) => Ok(Some(SecretSource::Env(var.get_ref().trim().to_string()))),
        (None, Some(file)) => Ok(Some(SecretSource::File(root.join(file.get_ref())))),
        (None, None) => Ok(None),
    }
}

pub(super) fn parse(
    ctx: &FileContext<'_>,
    root: &Path,
    slack: Option<Spanned<RawSlack>>,
    notify: Vec<RawNotify>,
    hooks: Option<Spanned<RawHooks>>,
) -> Result<ChatOpsConfig> {
    let slack = match slack {
        Some(raw) => {
            let span_holder = &raw;
            let raw = raw.get_ref();
            let signing_secret = secret(
                ctx,
                root,
                "slack.signing_secret",
                &raw.signing_secret_env,
                &raw.signing_secret_file,
            )?
            .ok_or_else(|| {
                ctx.at(
                    "slack.signing_secret_env",
                    span_holder,
                    "missing; Slack requests are verified with the app's signing secret: set `signing_secret_env = \"VAR\"` or `signing_secret_file = \"path\"`",
                )
            })?;
            let bot_token = secret(
                ctx,
                root,
                "slack.bot_token",
                &raw.bot_token_env,
                &raw.bot_token_file,
            )?;
            let api_url = match &raw.api_url {
                Some(url) => {
                    let text = url.get_ref().trim().trim_end_matches('/').to_string();
                    if url::Url::parse(&text).is_err() {
                        return Err(ctx.at("slack.api_url", url, format!("`{text}` is not a URL")));
                    }
                    text
                }
                None => DEFAULT_SLACK_API_URL.to_string(),
            };
            let mut users = BTreeMap::new();
            for (id, user) in &raw.users {
                let mut roles = BTreeMap::new();
                for (env, role) in &user.roles {
                    let parsed = Role::from_str(role.get_ref())
                        .map_err(|m| ctx.at(&format!("slack.users.{id}.roles.{env}"), role, m))?;
                    roles.insert(env.clone(), parsed);
                }
                let name = user.name.get_ref().trim();
                if name.is_empty() {
                    return Err(ctx.at(
                        &format!("slack.users.{id}.name"),
                        &user.name,
                        "must not be empty: it is the actor recorded in the audit log",
                    ));
                }
                users.insert(
                    id.clone(),
                    SlackUser {
                        name: name.to_string(),
                        roles,
                    },
                );
            }
            Some(SlackConfig {
                signing_secret,
                bot_token,
                api_url,
                approvals_channel: raw
                    .approvals_channel
                    .as_ref()
                    .map(|c| c.get_ref().trim().to_string())
                    .filter(|c| !c.is_empty()),
                users,
            })
        }
        None => None,
    };
    let mut sinks = Vec::new();
    for (index, raw) in notify.iter().enumerate() {
        let key = |k: &str| format!("notify[{}].{k}", index + 1);
        let kind = match raw.kind.get_ref().as_str() {
            "slack" => SinkKindConfig::Slack,
            "webhook" => SinkKindConfig::Webhook,
            other => {
                return Err(ctx.at(
                    &key("kind"),
                    &raw.kind,
                    format!("`{other}` is not a sink kind; expected \"slack\" or \"webhook\""),
                ))
            }
        };
        let url = match (&raw.url, secret(ctx, root, &key("url"), &raw.url_env, &raw.url_file)?) {
            (Some(url), None) => {
                if url::Url::parse(url.get_ref()).is_err() {
                    return Err(ctx.at(&key("url"), url, "is not a URL"));
                }
                UrlValue::Inline(url.get_ref().clone())
            }
            (None, Some(source)) => UrlValue::Secret(source),
            (Some(url), Some(_)) => {
                return Err(ctx.at(
                    &key("url"),
                    url,
                    "give one of `url`, `url_env`, `url_file`",
                ))
            }
            (None, None) => {
                return Err(ctx.at(
                    &key("kind"),
                    &raw.kind,
                    "the sink has no URL: set `url_env = \"VAR\"` (incoming-webhook URLs are credentials), `url_file` or `url`",
                ))
            }
        };
        let secret = secret(ctx, root, &key("secret"), &raw.secret_env, &raw.secret_file)?;
        if let (SinkKindConfig::Slack, Some(_)) = (kind, &secret) {
            return Err(ctx.at(
                &key("kind"),
                &raw.kind,
                "a Slack incoming webhook is not signed by sluice; `secret_env`/`secret_file` apply to kind = \"webhook\"",
            ));
        }
        if let Some(unknown) = raw
            .events
            .iter()
            .find(|e| !NOTIFY_EVENTS.contains(&e.as_str()))
        {
            return Err(ctx.at(
                &key("events"),
                &raw.kind,
                format!(
                    "`{unknown}` is not an event; known: {}",
                    NOTIFY_EVENTS.join(", ")
                ),
            ));
        }
        sinks.push(NotifySinkConfig {
            name: raw
                .name
                .as_ref()
                .map(|n| n.get_ref().trim().to_string())
                .unwrap_or_else(|| format!("notify[{}]", index + 1)),
            kind,
            url,
            secret,
            events: raw.events.clone(),
        });
    }
    let hooks = match hooks {
        Some(raw) => {
            let span_holder = &raw;
            let raw = raw.get_ref();
            let secret = secret(ctx, root, "hooks.secret", &raw.secret_env, &raw.secret_file)?
                .ok_or_else(|| {
                    ctx.at(
                        "hooks.secret_env",
                        span_holder,
                        "missing; the release hook only accepts requests signed with a shared secret: set `secret_env = \"VAR\"` or `secret_file = \"path\"`",
                    )
                })?;
            Some(HooksConfig {
                secret,
                promote_to: raw
                    .promote_to
                    .as_ref()
                    .map(|p| p.get_ref().trim().to_string()),
            })
        }
        None => None,
    };
    Ok(ChatOpsConfig {
        slack,
        notify: sinks,
        hooks,
    })
}

impl SlackConfig {
    /// Environments named in user roles that do not exist, so the daemon refuses to start
    /// with a grant that would silently do nothing.
    pub fn unknown_environments(&self, environments: &[String]) -> Vec<String> {
        self.users
            .values()
            .flat_map(|u| u.roles.keys())
            .filter(|e| *e != ALL_ENVIRONMENTS && !environments.contains(e))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Project;

    /// Loads `sluice.toml` with `text` from a fresh directory.
    fn load(text: &str) -> crate::error::Result<Project> {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("sluice.toml"), text).expect("write");
        Project::load(dir.path())
    }

    fn error(text: &str) -> String {
        load(text).expect_err("must be refused").to_string()
    }

    #[test]
    fn a_full_chatops_section_parses() {
        let project = load(
            "[slack]\nsigning_secret_env = \"S\"\nbot_token_file = \"bot.txt\"\napi_url = \"http://127.0.0.1:9/api/\"\n\
             approvals_channel = \"C1\"\n[slack.users.U1]\nname = \"alice\"\nroles = { \"*\" = \"approver\", prod = \"viewer\" }\n\
             [[notify]]\nkind = \"slack\"\nurl_env = \"HOOK\"\n[[notify]]\nname = \"ci\"\nkind = \"webhook\"\n\
             url = \"https://ci.example.com/x\"\nsecret_env = \"W\"\nevents = [\"run.halted\"]\n\
             [hooks]\nsecret_file = \"hook.txt\"\npromote_to = \"dev\"\n",
        )
        .expect("parses");
        let chatops = project.chatops;
        let slack = chatops.slack.expect("slack");
        assert_eq!(slack.api_url, "http://127.0.0.1:9/api");
        assert_eq!(slack.approvals_channel.as_deref(), Some("C1"));
        let alice = &slack.users["U1"];
        assert_eq!(alice.name, "alice");
        assert_eq!(alice.roles["prod"], crate::api::auth::Role::Viewer);
        assert_eq!(chatops.notify.len(), 2);
        assert_eq!(chatops.notify[0].name, "notify[1]");
        assert_eq!(chatops.notify[1].events, vec!["run.halted".to_string()]);
        assert_eq!(
            chatops.hooks.expect("hooks").promote_to.as_deref(),
            Some("dev")
        );
        assert!(slack
            .unknown_environments(&["dev".into()])
            .contains(&"prod".to_string()));
    }

    #[test]
    fn bad_chatops_sections_name_the_line_and_key() {
        for (text, needle) in [
            ("[slack]\nbot_token_env = \"B\"\n", "sluice.toml:1: key `slack.signing_secret_env`: missing"),
            ("[slack]\nsigning_secret_env = \"S\"\nsigning_secret_file = \"f\"\n", ":3: key `slack.signing_secret_file`: give either"),
            ("[slack]\nsigning_secret_env = \"S\"\n[slack.users.U1]\nname = \"a\"\nroles = { \"*\" = \"god\" }\n", ":5: key `slack.users.U1.roles.*`"),
            ("[slack]\nsigning_secret_env = \"S\"\napi_url = \"not a url\"\n", ":3: key `slack.api_url`"),
            ("[[notify]]\nkind = \"email\"\nurl = \"https://x\"\n", ":2: key `notify[1].kind`: `email` is not a sink kind"),
            ("[[notify]]\nkind = \"webhook\"\n", "the sink has no URL"),
            ("[[notify]]\nkind = \"slack\"\nurl_env = \"H\"\nsecret_env = \"S\"\n", "is not signed by sluice"),
            ("[[notify]]\nkind = \"webhook\"\nurl_env = \"H\"\nevents = [\"run.exploded\"]\n", "`run.exploded` is not an event"),
            ("[hooks]\npromote_to = \"dev\"\n", "key `hooks.secret_env`: missing"),
            ("[slack]\nsigning_secret_env = \"S\"\nsigning_secret = \"inline\"\n", "sluice.toml:3"),
        ] {
            let message = error(text);
            assert!(message.contains(needle), "{text:?}: {message}");
        }
    }
}
