//! Run notifications: Slack incoming webhooks and signed generic webhooks.
//!
//! The engine calls [`Notifier::notify`] from its state machine, so enqueueing must never block:
//! every sink has its own bounded queue and worker task, and a slow, failing or hanging endpoint
//! only delays (or drops) its own deliveries. Webhook URLs are secrets and never reach the logs.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use serde::Serialize;
use sha2::Sha256;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Header carrying `sha256=<lowercase hex>` of the body, so receivers can authenticate us.
pub const SIGNATURE_HEADER: &str = "X-Sluice-Signature";
/// Header naming the event, so receivers can route without parsing the body.
pub const EVENT_HEADER: &str = "X-Sluice-Event";
/// Header with one uuid per notification, identical across retries, so receivers can dedupe.
pub const DELIVERY_HEADER: &str = "X-Sluice-Delivery";

const AGENT: &str = concat!("sluice/", env!("CARGO_PKG_VERSION"));
const SIGNATURE_PREFIX: &str = "sha256=";
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

type HmacSha256 = Hmac<Sha256>;

fn mac_for(secret: &[u8]) -> Option<HmacSha256> {
    // HMAC accepts keys of any length, so this is always `Some`; no panic path either way.
    <HmacSha256 as Mac>::new_from_slice(secret).ok()
}

/// Signs `body` the way outbound webhooks and the inbound release hook expect:
/// `"sha256=<hex of HMAC-SHA256(secret, body)>"`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    mac_for(secret)
        .map(|mut mac| {
            mac.update(body);
            format!(
                "{SIGNATURE_PREFIX}{}",
                hex::encode(mac.finalize().into_bytes())
            )
        })
        .unwrap_or_default()
}

/// Checks a header produced by [`sign`] in constant time, so inbound hooks can't be forged or
/// timed; surrounding whitespace is tolerated, any other prefix, bad hex or length is rejected.
pub fn verify(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(hex_sig) = header.trim().strip_prefix(SIGNATURE_PREFIX) else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    let Some(mut mac) = mac_for(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

/// What happened, in the form every sink renders.
#[derive(Debug, Clone, Serialize)]
pub struct Notification {
    /// Event name, e.g. "run.succeeded", "run.rolled_back", "run.halted"; sinks filter on it.
    pub event: String,
    /// Environment the run targeted.
    pub environment: String,
    /// Run identifier, for correlation with the API.
    pub run_id: String,
    /// Short release hash.
    pub release: String,
    /// Last migration name, if any was applied.
    pub head: Option<String>,
    /// Final state in words, e.g. "rolled back by snapshot: health check `api` failed".
    pub state: String,
    /// One human line, used as the Slack text.
    pub text: String,
    /// When the run reached this state.
    pub at: DateTime<Utc>,
    /// The full run view, for machines.
    pub detail: serde_json::Value,
}

/// How a sink renders and authenticates its deliveries.
#[derive(Clone, PartialEq, Eq)]
pub enum SinkKind {
    /// Slack incoming webhook: `text` plus mrkdwn blocks.
    SlackWebhook,
    /// Generic JSON webhook, HMAC-signed when a secret is set.
    Webhook {
        /// Shared secret for [`SIGNATURE_HEADER`].
        secret: Option<String>,
    },
}

impl fmt::Debug for SinkKind {
    // Hand-written so a debug print can never leak the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SinkKind::SlackWebhook => f.write_str("SlackWebhook"),
            SinkKind::Webhook { secret: None } => f.write_str("Webhook { secret: None }"),
            SinkKind::Webhook { .. } => f.write_str("Webhook { secret: <redacted> }"),
        }
    }
}

/// One configured destination for notifications.
#[derive(Clone)]
pub struct Sink {
    /// Name used in logs and stats instead of the (secret) URL.
    pub name: String,
    /// How to render and sign deliveries.
    pub kind: SinkKind,
    /// Endpoint; a secret, never logged.
    pub url: String,
    /// Event names this sink wants; empty = all.
    pub events: Vec<String>,
}

impl fmt::Debug for Sink {
    // Hand-written so a debug print can never leak the URL.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (name, kind, events) = (&self.name, &self.kind, &self.events);
        write!(
            f,
            "Sink {{ name: {name:?}, kind: {kind:?}, url: <redacted>, events: {events:?} }}"
        )
    }
}

/// Queueing and retry limits, so a bad endpoint costs bounded memory and time.
#[derive(Debug, Clone)]
pub struct NotifyOptions {
    /// Queue length per sink; further notifications are dropped (default 256).
    pub queue_capacity: usize,
    /// Total attempts per delivery, including the first (default 4).
    pub attempts: u32,
    /// Timeout of each attempt (default 10 s).
    pub timeout: Duration,
    /// Delay before the first retry, doubling after each (default 1 s).
    pub backoff: Duration,
}

impl Default for NotifyOptions {
    fn default() -> Self {
        NotifyOptions {
            queue_capacity: 256,
            attempts: 4,
            timeout: Duration::from_secs(10),
            backoff: Duration::from_secs(1),
        }
    }
}

/// Delivery counters summed over all sinks, for the API and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct NotifyStats {
    /// Notifications accepted into a sink queue.
    pub queued: u64,
    /// Deliveries acknowledged with a 2xx.
    pub delivered: u64,
    /// Deliveries given up after retries or on a non-retryable 4xx.
    pub failed: u64,
    /// Notifications dropped because a sink queue was full or closed.
    pub dropped: u64,
}

struct Job {
    notification: Arc<Notification>,
    delivery: String,
}

struct Slot {
    name: String,
    events: Vec<String>,
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

struct Inner {
    slots: Vec<Slot>,
    stats: Arc<Mutex<NotifyStats>>,
}

/// Handle the engine and API hold; cheap to clone (Arc inside).
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

impl fmt::Debug for Notifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notifier")
            .field("sinks", &self.sink_names())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Notifier {
    /// Spawns one worker task per sink (needs a tokio runtime), each with its own bounded mpsc
    /// queue, so a hanging endpoint only delays its own deliveries. Without a runtime or an HTTP
    /// client it logs an error and behaves as [`Notifier::disabled`] rather than panicking.
    pub fn start(sinks: Vec<Sink>, options: NotifyOptions) -> Notifier {
        if sinks.is_empty() {
            return Notifier::disabled();
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!("notifications disabled: no tokio runtime");
            return Notifier::disabled();
        };
        let client = match reqwest::Client::builder().timeout(options.timeout).build() {
            Ok(client) => client,
            Err(err) => {
                tracing::error!(error = %err.without_url(), "notifications disabled: no HTTP client");
                return Notifier::disabled();
            }
        };
        let stats = Arc::new(Mutex::new(NotifyStats::default()));
        let options = Arc::new(options);
        let slots = sinks
            .into_iter()
            .map(|sink| {
                let (tx, rx) = mpsc::channel(options.queue_capacity.max(1));
                let (name, events) = (sink.name.clone(), sink.events.clone());
                let worker = worker(sink, client.clone(), rx, options.clone(), stats.clone());
                Slot {
                    name,
                    events,
                    tx: Mutex::new(Some(tx)),
                    task: Mutex::new(Some(runtime.spawn(worker))),
                }
            })
            .collect();
        Notifier {
            inner: Arc::new(Inner { slots, stats }),
        }
    }

    /// A notifier with no sinks (for CLI/local mode and tests).
    pub fn disabled() -> Notifier {
        Notifier {
            inner: Arc::new(Inner {
                slots: Vec::new(),
                stats: Arc::default(),
            }),
        }
    }

    /// Enqueues for every sink whose `events` filter matches; never blocks, never awaits, so the
    /// engine's state machine is never held up. A full queue drops the notification for that
    /// sink with a warning naming the sink (never the URL) and counts it as dropped.
    pub fn notify(&self, notification: Notification) {
        let notification = Arc::new(notification);
        let delivery = uuid::Uuid::new_v4().to_string();
        for slot in &self.inner.slots {
            if !(slot.events.is_empty() || slot.events.contains(&notification.event)) {
                continue;
            }
            let Some(tx) = lock(&slot.tx).clone() else {
                continue; // shut down: no longer accepting
            };
            let job = Job {
                notification: notification.clone(),
                delivery: delivery.clone(),
            };
            match tx.try_send(job) {
                Ok(()) => lock(&self.inner.stats).queued += 1,
                Err(err) => {
                    lock(&self.inner.stats).dropped += 1;
                    let reason = match err {
                        mpsc::error::TrySendError::Full(_) => "queue full",
                        mpsc::error::TrySendError::Closed(_) => "worker gone",
                    };
                    tracing::warn!(sink = %slot.name, event = %notification.event,
                        run_id = %notification.run_id, reason, "notification dropped");
                }
            }
        }
    }

    /// Counters summed over all sinks.
    pub fn stats(&self) -> NotifyStats {
        *lock(&self.inner.stats)
    }

    /// Names of the active sinks, for status output (URLs stay secret).
    pub fn sink_names(&self) -> Vec<String> {
        self.inner.slots.iter().map(|s| s.name.clone()).collect()
    }

    /// Stops accepting, gives workers up to `grace` to drain, then aborts them (daemon shutdown).
    pub async fn shutdown(&self, grace: Duration) {
        for slot in &self.inner.slots {
            lock(&slot.tx).take();
        }
        let deadline = tokio::time::Instant::now() + grace;
        for slot in &self.inner.slots {
            let Some(mut task) = lock(&slot.task).take() else {
                continue;
            };
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
                tracing::warn!(sink = %slot.name, "notification sink did not drain in time; aborted");
            }
        }
    }
}

async fn worker(
    sink: Sink,
    client: reqwest::Client,
    mut rx: mpsc::Receiver<Job>,
    options: Arc<NotifyOptions>,
    stats: Arc<Mutex<NotifyStats>>,
) {
    while let Some(job) = rx.recv().await {
        let n = &job.notification;
        match deliver(&client, &sink, &job, &options).await {
            Ok(attempt) => {
                lock(&stats).delivered += 1;
                tracing::debug!(sink = %sink.name, event = %n.event, run_id = %n.run_id,
                    delivery = %job.delivery, attempt, "notification delivered");
            }
            Err(last) => {
                lock(&stats).failed += 1;
                tracing::warn!(sink = %sink.name, event = %n.event, run_id = %n.run_id,
                    delivery = %job.delivery, last = %last, "notification delivery gave up");
            }
        }
    }
}

/// The body posted to a sink, with any credential in its text hidden (the last exit before a
/// notification leaves the process).
fn body_for(sink: &Sink, n: &Notification) -> Result<Vec<u8>, serde_json::Error> {
    let mut document = plain_body_for(sink, n)?;
    crate::error::redact_json(&mut document);
    serde_json::to_vec(&document)
}

fn plain_body_for(sink: &Sink, n: &Notification) -> Result<serde_json::Value, serde_json::Error> {
    match sink.kind {
        SinkKind::Webhook { .. } => serde_json::to_value(n),
        SinkKind::SlackWebhook => {
            let run: String = n.run_id.chars().take(8).collect();
            let context = format!(
                "*environment:* `{}` · *release:* `{}` · *run:* `{}`",
                n.environment, n.release, run
            );
            let text = slack_escape(&n.text);
            let mrkdwn = format!("{text}\n{}", slack_escape(&context));
            Ok(serde_json::json!({
                "text": text,
                "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": mrkdwn}}],
            }))
        }
    }
}

/// Slack treats `&`, `<` and `>` as control characters in message text.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Error text without the URL (reqwest embeds it), with its causes.
fn describe(err: reqwest::Error) -> String {
    if err.is_timeout() {
        return "timed out".to_owned();
    }
    let err = err.without_url();
    let mut out = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

/// Returns the attempt number that succeeded, or the last status/error on giving up.
async fn deliver(
    client: &reqwest::Client,
    sink: &Sink,
    job: &Job,
    options: &NotifyOptions,
) -> Result<u32, String> {
    let n = &job.notification;
    let body = body_for(sink, n).map_err(|e| format!("cannot encode body: {e}"))?;
    let signature = match &sink.kind {
        SinkKind::Webhook {
            secret: Some(secret),
        } => Some(sign(secret.as_bytes(), &body)),
        _ => None,
    };
    let attempts = options.attempts.max(1);
    let mut backoff = options.backoff;
    let mut last = String::new();
    for attempt in 1..=attempts {
        let mut request = client
            .post(&sink.url)
            .timeout(options.timeout)
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, AGENT)
            .body(body.clone());
        if let SinkKind::Webhook { .. } = sink.kind {
            request = request
                .header(EVENT_HEADER, &n.event)
                .header(DELIVERY_HEADER, &job.delivery);
        }
        if let Some(signature) = &signature {
            request = request.header(SIGNATURE_HEADER, signature);
        }
        let mut delay = backoff;
        match request.send().await {
            Ok(response) => {
                let status = response.status();
                if status.is_success() {
                    return Ok(attempt);
                }
                last = format!("HTTP {status}");
                if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
                    let retry_after = response
                        .headers()
                        .get(RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok());
                    if let Some(secs) = retry_after {
                        delay = Duration::from_secs(secs).min(MAX_RETRY_AFTER);
                    }
                } else if !status.is_server_error() {
                    return Err(last);
                }
            }
            Err(err) => last = describe(err),
        }
        if attempt < attempts {
            tokio::time::sleep(delay).await;
            backoff = backoff.saturating_mul(2);
        }
    }
    Err(format!("{last} (after {attempts} attempts)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Bytes;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::post;
    use std::time::Instant;

    type Seen = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

    /// Records every request; answers `statuses[i]` (with `Retry-After: 0`) to the i-th one, 200
    /// afterwards.
    async fn serve(statuses: Vec<u16>) -> (String, Seen) {
        let seen: Seen = Arc::default();
        let record = seen.clone();
        let handler = move |headers: HeaderMap, body: Bytes| async move {
            let mut seen = lock(&record);
            let status = statuses.get(seen.len()).copied().unwrap_or(200);
            seen.push((headers, body));
            let status = StatusCode::from_u16(status).expect("valid status");
            (status, [(RETRY_AFTER, "0")])
        };
        (
            spawn(axum::Router::new().route("/hook", post(handler))).await,
            seen,
        )
    }

    /// Accepts connections and never answers.
    async fn serve_hanging() -> String {
        spawn(axum::Router::new().route("/hook", post(std::future::pending::<StatusCode>))).await
    }

    async fn spawn(app: axum::Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await;
        let listener = listener.expect("bind loopback");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/hook")
    }

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    fn opts() -> NotifyOptions {
        let (timeout, backoff) = (ms(300), ms(20));
        NotifyOptions {
            timeout,
            backoff,
            ..NotifyOptions::default()
        }
    }

    fn sink(name: &str, kind: SinkKind, url: &str, events: &[&str]) -> Sink {
        let events = events.iter().map(|e| e.to_string()).collect();
        Sink {
            name: name.into(),
            kind,
            url: url.into(),
            events,
        }
    }

    fn hook(secret: Option<&str>) -> SinkKind {
        SinkKind::Webhook {
            secret: secret.map(str::to_owned),
        }
    }

    fn note(event: &str, run_id: &str) -> Notification {
        Notification {
            event: event.into(),
            environment: "prod".into(),
            run_id: run_id.into(),
            release: "abc1234".into(),
            head: Some("0042_add_index".into()),
            state: "succeeded".into(),
            text: "prod: release abc1234 succeeded".into(),
            at: Utc::now(),
            detail: serde_json::json!({"steps": 3}),
        }
    }

    /// Sends `count` notifications and returns how long `notify` took in total.
    fn burst(n: &Notifier, count: usize) -> Duration {
        let start = Instant::now();
        for i in 0..count {
            n.notify(note("run.succeeded", &format!("run-{i}")));
        }
        start.elapsed()
    }

    async fn wait_until(limit: Duration, cond: impl Fn() -> bool) -> bool {
        let start = Instant::now();
        while !cond() {
            if start.elapsed() > limit {
                return false;
            }
            tokio::time::sleep(ms(10)).await;
        }
        true
    }

    fn header<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
        h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    #[tokio::test]
    async fn webhook_is_signed_and_carries_headers() {
        let (url, seen) = serve(vec![]).await;
        let n = Notifier::start(vec![sink("hook", hook(Some("s3cret")), &url, &[])], opts());
        n.notify(note("run.succeeded", "run-0001"));
        assert!(wait_until(ms(5000), || n.stats().delivered == 1).await);
        let seen = lock(&seen);
        let (headers, body) = &seen[0];
        let mut mac = HmacSha256::new_from_slice(b"s3cret").expect("key");
        mac.update(body);
        let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(header(headers, SIGNATURE_HEADER), expected);
        assert!(verify(b"s3cret", body, header(headers, SIGNATURE_HEADER)));
        assert_eq!(header(headers, EVENT_HEADER), "run.succeeded");
        assert!(uuid::Uuid::parse_str(header(headers, DELIVERY_HEADER)).is_ok());
        assert_eq!(header(headers, "content-type"), "application/json");
        assert!(header(headers, "user-agent").starts_with("sluice/"));
        let json: serde_json::Value = serde_json::from_slice(body).expect("json");
        assert_eq!(json["run_id"], "run-0001");
        assert_eq!(json["detail"]["steps"], 3);
    }

    #[tokio::test]
    async fn slack_gets_text_and_blocks() {
        let (url, seen) = serve(vec![]).await;
        let slack = sink("slack", SinkKind::SlackWebhook, &url, &[]);
        let n = Notifier::start(vec![slack], opts());
        n.notify(note("run.succeeded", "0123456789abcdef"));
        assert!(wait_until(ms(5000), || n.stats().delivered == 1).await);
        let seen = lock(&seen);
        assert!(seen[0].0.get(SIGNATURE_HEADER).is_none());
        let json: serde_json::Value = serde_json::from_slice(&seen[0].1).expect("json");
        assert_eq!(json["text"], "prod: release abc1234 succeeded");
        let block = &json["blocks"][0];
        assert_eq!(
            (&block["type"], &block["text"]["type"]),
            (&"section".into(), &"mrkdwn".into())
        );
        let mrkdwn = block["text"]["text"].as_str().expect("mrkdwn text");
        assert!(mrkdwn.starts_with("prod: release abc1234 succeeded\n"));
        assert!(mrkdwn.contains("`prod`") && mrkdwn.contains("`abc1234`"));
        assert!(mrkdwn.contains("`01234567`") && !mrkdwn.contains("012345678"));
    }

    #[tokio::test]
    async fn retries_5xx_with_same_delivery_id() {
        let (url, seen) = serve(vec![500, 500]).await;
        let n = Notifier::start(vec![sink("hook", hook(None), &url, &[])], opts());
        n.notify(note("run.failed", "run-0002"));
        assert!(wait_until(ms(5000), || n.stats().delivered == 1).await);
        {
            let seen = lock(&seen);
            assert_eq!(seen.len(), 3);
            let id = header(&seen[0].0, DELIVERY_HEADER);
            assert!(!id.is_empty());
            assert!(seen.iter().all(|(h, _)| header(h, DELIVERY_HEADER) == id));
            assert!(seen.iter().all(|(h, _)| h.get(SIGNATURE_HEADER).is_none()));
        }
        let s = n.stats();
        assert_eq!((s.queued, s.delivered, s.failed, s.dropped), (1, 1, 0, 0));

        let (url, seen) = serve(vec![429]).await;
        let n = Notifier::start(vec![sink("hook", hook(None), &url, &[])], opts());
        n.notify(note("run.failed", "run-0002"));
        assert!(wait_until(ms(5000), || n.stats().delivered == 1).await);
        assert_eq!(lock(&seen).len(), 2);
    }

    #[tokio::test]
    async fn client_error_is_not_retried() {
        let (url, seen) = serve(vec![400, 400, 400]).await;
        let n = Notifier::start(vec![sink("hook", hook(None), &url, &[])], opts());
        n.notify(note("run.failed", "run-0003"));
        assert!(wait_until(ms(5000), || n.stats().failed == 1).await);
        tokio::time::sleep(ms(100)).await;
        assert_eq!(lock(&seen).len(), 1);
        assert_eq!(n.stats().delivered, 0);

        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let closed = format!("http://{}/T0KEN", listener.local_addr().expect("addr"));
        drop(listener);
        let err = reqwest::Client::new()
            .post(&closed)
            .send()
            .await
            .expect_err("refused");
        let text = describe(err);
        assert!(
            !text.contains("T0KEN") && !text.contains("127.0.0.1"),
            "{text}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hanging_sink_never_blocks_notify() {
        let (url, seen) = serve(vec![]).await;
        let hang = serve_hanging().await;
        let options = NotifyOptions {
            attempts: 2,
            ..opts()
        };
        let sinks = vec![
            sink("hang", hook(None), &hang, &[]),
            sink("ok", hook(None), &url, &[]),
        ];
        let n = Notifier::start(sinks, options.clone());
        let took = burst(&n, 20);
        assert!(took < ms(200), "notify took {took:?}");
        assert!(wait_until(ms(5000), || lock(&seen).len() == 20).await);
        assert!(wait_until(ms(5000), || n.stats().failed >= 1).await);
        n.shutdown(ms(50)).await;

        let options = NotifyOptions {
            queue_capacity: 2,
            ..options
        };
        let small = Notifier::start(vec![sink("hang", hook(None), &hang, &[])], options);
        let took = burst(&small, 10);
        assert!(took < ms(200), "notify took {took:?}");
        let stats = small.stats();
        assert!(stats.dropped >= 7, "{stats:?}");
        assert_eq!(stats.queued + stats.dropped, 10);
        small.shutdown(ms(50)).await;
    }

    #[test]
    fn verify_rejects_tampering() {
        let body = br#"{"ref":"abc1234"}"#;
        let good = sign(b"key", body);
        assert!(good.starts_with("sha256=") && good.len() == 7 + 64);
        assert!(verify(b"key", body, &good));
        assert!(verify(b"key", body, &format!("  {good}\r\n")));
        assert!(!verify(b"other", body, &good));
        assert!(!verify(b"key", br#"{"ref":"abc1235"}"#, &good));
        assert!(!verify(b"key", body, good.trim_start_matches("sha256=")));
        assert!(!verify(b"key", body, &good.replace("sha256=", "sha1=")));
        assert!(!verify(b"key", body, "sha256=zz"));
        assert!(!verify(b"key", body, &good[..good.len() - 2]));
        assert!(!verify(b"key", body, ""));
        assert!(!verify(b"key", body, "sha256="));
    }

    #[tokio::test]
    async fn event_filter_selects_sinks() {
        let (all_url, all) = serve(vec![]).await;
        let (rb_url, rolled_back) = serve(vec![]).await;
        let rb = sink("rb", hook(None), &rb_url, &["run.rolled_back"]);
        let n = Notifier::start(vec![sink("all", hook(None), &all_url, &[]), rb], opts());
        for event in [
            "run.succeeded",
            "run.rolled_back",
            "run.halted",
            "run.rolled_back",
        ] {
            n.notify(note(event, "run-0004"));
        }
        assert!(wait_until(ms(5000), || n.stats().delivered == 6).await);
        assert_eq!(lock(&all).len(), 4);
        let rb = lock(&rolled_back);
        assert_eq!(rb.len(), 2);
        assert!(rb
            .iter()
            .all(|(h, _)| header(h, EVENT_HEADER) == "run.rolled_back"));
        assert_eq!(n.sink_names(), ["all", "rb"]);
    }

    #[tokio::test]
    async fn shutdown_drains_then_aborts() {
        let (url, seen) = serve(vec![]).await;
        let n = Notifier::start(vec![sink("ok", hook(None), &url, &[])], opts());
        burst(&n, 10);
        let start = Instant::now();
        n.shutdown(ms(5000)).await;
        assert!(start.elapsed() < ms(2000), "{:?}", start.elapsed());
        assert_eq!(lock(&seen).len(), 10);
        n.notify(note("run.succeeded", "late"));
        assert_eq!(n.stats().queued, 10);

        let hang = serve_hanging().await;
        let n = Notifier::start(vec![sink("hang", hook(None), &hang, &[])], opts());
        burst(&n, 10);
        let start = Instant::now();
        n.shutdown(ms(200)).await;
        assert!(start.elapsed() < ms(1000), "{:?}", start.elapsed());
        assert_eq!(n.stats().delivered, 0);

        let off = Notifier::disabled();
        off.notify(note("run.succeeded", "x"));
        assert_eq!(off.stats(), NotifyStats::default());
        assert!(off.sink_names().is_empty());
        off.shutdown(ms(10)).await;
    }
}
