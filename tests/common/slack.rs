//! A stand-in for Slack on loopback: it answers the Web API calls sluice makes
//! (`chat.postMessage`, `chat.update`), takes posts to `response_url`s and to webhook URLs,
//! and records every request so tests can assert what the channel would show. `/hang` accepts
//! a request and never answers, for "a slow endpoint delays no run".

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

/// One request the server received.
#[derive(Debug, Clone)]
pub struct Call {
    /// `chat.postMessage`, `chat.update`, `response/<id>` or `hook/<name>`.
    pub kind: String,
    /// Request headers (lower-case names).
    pub headers: BTreeMap<String, String>,
    /// The raw body.
    pub raw: Vec<u8>,
    /// The body as JSON (Null when it is not JSON).
    pub body: Value,
}

#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<Call>>,
    next_ts: AtomicU64,
}

/// The running server.
pub struct SlackServer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    recorder: Arc<Recorder>,
}

fn record(recorder: &Recorder, kind: String, headers: &HeaderMap, raw: &[u8]) {
    let headers = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                v.to_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    recorder.calls.lock().unwrap().push(Call {
        kind,
        headers,
        raw: raw.to_vec(),
        body: serde_json::from_slice(raw).unwrap_or(Value::Null),
    });
}

async fn api(
    State(recorder): State<Arc<Recorder>>,
    Path(method): Path<String>,
    headers: HeaderMap,
    raw: axum::body::Bytes,
) -> Json<Value> {
    record(&recorder, method.clone(), &headers, &raw);
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    let ts = match method.as_str() {
        "chat.update" => body["ts"].as_str().unwrap_or_default().to_string(),
        _ => format!(
            "1700000000.{:06}",
            recorder.next_ts.fetch_add(1, Ordering::SeqCst) + 1
        ),
    };
    Json(json!({"ok": true, "channel": body["channel"], "ts": ts}))
}

async fn response(
    State(recorder): State<Arc<Recorder>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    raw: axum::body::Bytes,
) -> &'static str {
    record(&recorder, format!("response/{id}"), &headers, &raw);
    "ok"
}

async fn hook(
    State(recorder): State<Arc<Recorder>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    raw: axum::body::Bytes,
) -> &'static str {
    record(&recorder, format!("hook/{name}"), &headers, &raw);
    "ok"
}

async fn hang(
    State(recorder): State<Arc<Recorder>>,
    headers: HeaderMap,
    raw: axum::body::Bytes,
) -> &'static str {
    record(&recorder, "hang".into(), &headers, &raw);
    std::future::pending::<()>().await;
    "never"
}

impl SlackServer {
    /// Starts the server on a free loopback port, on its own thread and runtime.
    pub fn start() -> SlackServer {
        let recorder = Arc::new(Recorder::default());
        let app = Router::new()
            .route("/api/{method}", post(api))
            .route("/response/{id}", post(response))
            .route("/hook/{name}", post(hook))
            .route("/hang", post(hang))
            .with_state(recorder.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        });
        let address = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        SlackServer {
            base: format!("http://{address}"),
            recorder,
        }
    }

    /// Every request so far, oldest first.
    pub fn calls(&self) -> Vec<Call> {
        self.recorder.calls.lock().unwrap().clone()
    }

    /// Requests of one kind.
    pub fn calls_of(&self, kind: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.kind == kind)
            .collect()
    }

    /// Waits until `done` holds for the calls so far; panics with them after `timeout`.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[Call]) -> bool,
    ) -> Vec<Call> {
        let deadline = Instant::now() + timeout;
        loop {
            let calls = self.calls();
            if done(&calls) {
                return calls;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; calls: {calls:#?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A `response_url` Slack would hand out with a command or a click.
    pub fn response_url(&self, id: &str) -> String {
        format!("{}/response/{id}", self.base)
    }
}

/// `v0=hex(HMAC-SHA256(secret, "v0:{ts}:{body}"))`, as Slack signs requests.
pub fn slack_signature(secret: &str, ts: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("v0:{ts}:").as_bytes());
    mac.update(body);
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}

/// `sha256=hex(HMAC-SHA256(secret, body))`, as the release hook and webhooks sign bodies.
pub fn body_signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A form-encoded body from pairs.
pub fn form(pairs: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(pairs).unwrap()
}

/// Now, as Slack's `X-Slack-Request-Timestamp`.
pub fn now_ts() -> String {
    chrono::Utc::now().timestamp().to_string()
}
