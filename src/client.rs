//! The HTTP client CLI commands use to talk to a running `sluice serve`. API refusals come back
//! as the same errors the engine gives locally, so the CLI prints the same message either way.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{describe_http_error, Error, Result};
use crate::promote::views::{EnvironmentView, RunSummary, RunView};
use crate::promote::SnapshotListing;

/// A client of one daemon.
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    message: String,
}

impl Client {
    /// A client of the daemon at `base` (e.g. `http://127.0.0.1:7407`) using `token`.
    pub fn new(base: &str, token: Option<String>) -> Result<Client> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| Error::Usage(format!("cannot build an HTTP client: {e}")))?;
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            token,
            http,
        })
    }

    async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<T> {
        let text = self.send_text(method, path, body).await?;
        serde_json::from_str(&text).map_err(|e| {
            Error::Usage(format!(
                "the daemon's answer is not what this sluice expects: {e}"
            ))
        })
    }

    /// Sends a request and returns the body of a success as text; a refusal becomes the error
    /// the engine would have given locally.
    async fn send_text(&self, method: Method, path: &str, body: Option<Value>) -> Result<String> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| {
            Error::Usage(format!(
                "no sluice daemon answered at {} ({}); start `sluice serve`, or add --local to work on \
                 the files and the store directly",
                self.base,
                describe_http_error(e)
            ))
        })?;
        let status = response.status();
        let text = response.text().await.map_err(|e| {
            Error::Usage(format!(
                "reading the daemon's answer: {}",
                describe_http_error(e)
            ))
        })?;
        if status.is_success() {
            return Ok(text);
        }
        let message = serde_json::from_str::<ErrorBody>(&text)
            .map(|b| b.error.message)
            .unwrap_or_else(|_| text.chars().take(300).collect());
        Err(match status {
            StatusCode::NOT_FOUND => Error::NotFound(message),
            StatusCode::CONFLICT => Error::Conflict(message),
            StatusCode::UNAUTHORIZED => {
                Error::Refused(format!("{message} (set SLUICE_TOKEN or --token-file)"))
            }
            StatusCode::FORBIDDEN => Error::Refused(message),
            StatusCode::UNPROCESSABLE_ENTITY => Error::Config(message),
            _ => Error::Usage(format!("the daemon answered {status}: {message}")),
        })
    }

    /// `GET /v1/environments`.
    pub async fn environments(&self) -> Result<Vec<EnvironmentView>> {
        self.send(Method::GET, "/v1/environments", None).await
    }

    /// `GET /v1/runs`: the newest `limit` run summaries (one page).
    pub async fn runs(&self, environment: Option<&str>, limit: usize) -> Result<Vec<RunSummary>> {
        let mut path = format!("/v1/runs?limit={limit}");
        if let Some(env) = environment {
            path.push_str("&environment=");
            path.push_str(
                &url::form_urlencoded::byte_serialize(env.as_bytes()).collect::<String>(),
            );
        }
        self.send(Method::GET, &path, None).await
    }

    /// The newest release the daemon recorded (`GET /v1/releases`' `head`).
    pub async fn head_release(&self) -> Result<Option<String>> {
        let answer: Value = self.send(Method::GET, "/v1/releases", None).await?;
        Ok(answer["head"].as_str().map(str::to_string))
    }

    /// `GET /v1/runs/{id}`.
    pub async fn run(&self, id: &str) -> Result<RunView> {
        self.send(Method::GET, &format!("/v1/runs/{}", segment(id)), None)
            .await
    }

    /// `POST /v1/promotions`.
    pub async fn promote(
        &self,
        to: &str,
        release: Option<&str>,
        ladder: bool,
        reason: Option<&str>,
    ) -> Result<Vec<RunView>> {
        self.send(
            Method::POST,
            "/v1/promotions",
            Some(json!({"to": to, "release": release, "ladder": ladder, "reason": reason})),
        )
        .await
    }

    /// `POST /v1/runs/{id}/{action}` with `body`.
    pub async fn act(&self, id: &str, action: &str, body: Value) -> Result<RunView> {
        self.send(
            Method::POST,
            &format!("/v1/runs/{}/{action}", segment(id)),
            Some(body),
        )
        .await
    }

    /// `POST /v1/environments/{env}/rollback`.
    pub async fn rollback(&self, env: &str, reason: &str) -> Result<RunView> {
        self.send(
            Method::POST,
            &format!("/v1/environments/{}/rollback", segment(env)),
            Some(json!({"reason": reason})),
        )
        .await
    }

    /// `POST /v1/reload`.
    pub async fn reload(&self) -> Result<Value> {
        self.send(Method::POST, "/v1/reload", None).await
    }

    /// `GET /v1/environments/{env}/snapshots`.
    pub async fn snapshots(&self, env: &str) -> Result<SnapshotListing> {
        self.send(
            Method::GET,
            &format!("/v1/environments/{}/snapshots", segment(env)),
            None,
        )
        .await
    }

    /// `POST /v1/environments/{env}/snapshots/prune`: the names deleted (or, with `dry_run`,
    /// that would be).
    pub async fn prune(&self, env: &str, dry_run: bool) -> Result<Vec<String>> {
        #[derive(Deserialize)]
        struct Pruned {
            deleted: Vec<String>,
        }
        let pruned: Pruned = self
            .send(
                Method::POST,
                &format!("/v1/environments/{}/snapshots/prune", segment(env)),
                Some(json!({"dry_run": dry_run})),
            )
            .await?;
        Ok(pruned.deleted)
    }

    /// `GET /v1/store/backup`: the backup's JSON lines.
    pub async fn store_backup(&self) -> Result<String> {
        self.send_text(Method::GET, "/v1/store/backup", None).await
    }
}

fn segment(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}
