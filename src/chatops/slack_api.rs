//! The few Slack Web API calls sluice makes, behind a trait so the reporter and the endpoints
//! are the same code against Slack and against a recording server in tests.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};

/// A message as sluice sends it: fallback text plus Block Kit blocks.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Plain text (notifications, screen readers, clients without blocks).
    pub text: String,
    /// Block Kit blocks; empty = text only.
    pub blocks: Vec<Value>,
    /// Whether a `response_url` reply is shown to the whole channel (else only to the caller).
    pub in_channel: bool,
}

impl Message {
    /// A text-only message visible to the caller only.
    pub fn ephemeral(text: impl Into<String>) -> Message {
        Message {
            text: text.into(),
            blocks: Vec::new(),
            in_channel: false,
        }
    }

    /// The JSON Slack takes for a slash-command reply or a `response_url` post, with any
    /// credential in its text hidden.
    pub fn reply_json(&self) -> Value {
        let mut body = json!({
            "response_type": if self.in_channel { "in_channel" } else { "ephemeral" },
            "text": self.text,
        });
        if !self.blocks.is_empty() {
            body["blocks"] = Value::Array(self.blocks.clone());
        }
        crate::error::redact_json(&mut body);
        body
    }
}

/// Why a Slack call failed, without the token or the URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Slack {call}: {message}")]
pub struct SlackError {
    /// The method or `response_url`.
    pub call: String,
    /// What went wrong (Slack's `error` code, an HTTP status or a transport error).
    pub message: String,
}

/// The Slack calls sluice needs.
#[async_trait]
pub trait SlackApi: Send + Sync {
    /// `chat.postMessage`; returns the message's `ts`, which later updates name.
    async fn post_message(&self, channel: &str, message: &Message) -> Result<String, SlackError>;
    /// `chat.update` of a message sluice posted.
    async fn update_message(
        &self,
        channel: &str,
        ts: &str,
        message: &Message,
    ) -> Result<(), SlackError>;
    /// A post to a command's or a click's `response_url`.
    async fn respond(
        &self,
        response_url: &str,
        message: &Message,
        replace_original: bool,
    ) -> Result<(), SlackError>;
}

/// The Web API over HTTPS (or whatever `api_url` says).
pub struct HttpSlackApi {
    client: reqwest::Client,
    api_url: String,
    bot_token: Option<String>,
}

/// How long one Slack call may take; the reporter moves on after it.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

impl HttpSlackApi {
    /// A client for `api_url` (e.g. `https://slack.com/api`), with the bot token if any.
    pub fn new(api_url: &str, bot_token: Option<String>) -> Result<HttpSlackApi, SlackError> {
        let client = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SlackError {
                call: "client".into(),
                message: e.without_url().to_string(),
            })?;
        Ok(HttpSlackApi {
            client,
            api_url: api_url.trim_end_matches('/').to_string(),
            bot_token,
        })
    }

    async fn call(&self, method: &str, body: Value) -> Result<Value, SlackError> {
        let error = |message: String| SlackError {
            call: method.to_string(),
            message,
        };
        let token = self
            .bot_token
            .as_deref()
            .ok_or_else(|| error("no bot token configured ([slack] bot_token_env)".into()))?;
        let response = self
            .client
            .post(format!("{}/{method}", self.api_url))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .map_err(|e| error(e.without_url().to_string()))?;
        let status = response.status();
        if !status.is_success() {
            return Err(error(format!("HTTP {status}")));
        }
        let reply: Value = response
            .json()
            .await
            .map_err(|e| error(format!("unreadable reply: {}", e.without_url())))?;
        if reply.get("ok").and_then(Value::as_bool) != Some(true) {
            let code = reply
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("not ok");
            return Err(error(code.to_string()));
        }
        Ok(reply)
    }
}

/// The body of a `chat.postMessage` or `chat.update`, with any credential in its text hidden.
fn message_body(channel: &str, message: &Message) -> Value {
    let mut body = json!({"channel": channel, "text": message.text});
    if !message.blocks.is_empty() {
        body["blocks"] = Value::Array(message.blocks.clone());
    }
    crate::error::redact_json(&mut body);
    body
}

#[async_trait]
impl SlackApi for HttpSlackApi {
    async fn post_message(&self, channel: &str, message: &Message) -> Result<String, SlackError> {
        let reply = self
            .call("chat.postMessage", message_body(channel, message))
            .await?;
        reply
            .get("ts")
            .and_then(Value::as_str)
            .map(String::from)
            .ok_or_else(|| SlackError {
                call: "chat.postMessage".into(),
                message: "the reply has no `ts`".into(),
            })
    }

    async fn update_message(
        &self,
        channel: &str,
        ts: &str,
        message: &Message,
    ) -> Result<(), SlackError> {
        let mut body = message_body(channel, message);
        body["ts"] = Value::String(ts.to_string());
        self.call("chat.update", body).await.map(|_| ())
    }

    async fn respond(
        &self,
        response_url: &str,
        message: &Message,
        replace_original: bool,
    ) -> Result<(), SlackError> {
        let error = |message: String| SlackError {
            call: "response_url".into(),
            message,
        };
        let mut body = message.reply_json();
        body["replace_original"] = Value::Bool(replace_original);
        let response = self
            .client
            .post(response_url)
            .json(&body)
            .send()
            .await
            .map_err(|e| error(e.without_url().to_string()))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(error(format!("HTTP {}", response.status())))
        }
    }
}
