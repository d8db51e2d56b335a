//! Burst load for `scripts/bench-slack.sh`: how long Slack waits for the 200 reply when many
//! slash commands arrive at once.
//!
//! For each `--text` (a command's text, e.g. `status` or `promote dev`), and for the baseline
//! `GET /v1/health`, it sends `--concurrency` requests at the same instant, waits for all of
//! them, and repeats `--bursts` times (after one unrecorded warm-up burst). Every slash
//! command is a distinct, correctly signed form (its own `trigger_id`, so no two signatures
//! are equal and the replay guard lets each through), as Slack would send it. Latency runs
//! from the burst's start to the end of each reply body.
//!
//! Output: one line per series on stdout, `key=value` fields separated by spaces:
//! `series= sent= errors= p50_ms= p90_ms= p99_ms= max_ms=`; the first error goes to stderr.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use hmac::{Hmac, Mac};
use sha2::Sha256;

#[derive(Parser, Debug)]
#[command(about = "Concurrent signed Slack slash commands against sluice serve")]
struct Args {
    /// Base URL of the daemon, e.g. http://127.0.0.1:7407
    #[arg(long)]
    base: String,
    /// The Slack signing secret the daemon verifies with
    #[arg(long, env = "SLACK_LOAD_SECRET")]
    secret: String,
    /// Slack user id sending the commands
    #[arg(long, default_value = "U0BENCH")]
    user: String,
    /// Command text; repeat for several series
    #[arg(long = "text", required = true)]
    texts: Vec<String>,
    /// Requests per burst
    #[arg(long, default_value_t = 50)]
    concurrency: usize,
    /// Recorded bursts per series
    #[arg(long, default_value_t = 10)]
    bursts: usize,
}

fn signed_form(secret: &str, user: &str, text: &str, n: u64) -> (String, String, String) {
    let body = serde_urlencoded::to_string([
        ("token", "unused"),
        ("team_id", "T0BENCH"),
        ("channel_id", "C0BENCH"),
        ("user_id", user),
        ("user_name", "bench"),
        ("command", "/sluice"),
        ("text", text),
        ("response_url", "http://127.0.0.1:9/unused"),
        ("trigger_id", &format!("{n}.{}", uuid::Uuid::new_v4())),
    ])
    .unwrap_or_default();
    let ts = chrono::Utc::now().timestamp().to_string();
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("v0:{ts}:").as_bytes());
    mac.update(body.as_bytes());
    let signature = format!("v0={}", hex::encode(mac.finalize().into_bytes()));
    (body, ts, signature)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

/// One burst: `concurrency` requests built by `make`, all started at once.
async fn burst(
    concurrency: usize,
    make: &(dyn Fn(u64) -> reqwest::RequestBuilder + Sync),
    counter: &mut u64,
) -> Vec<Result<u64, String>> {
    let requests: Vec<reqwest::RequestBuilder> = (0..concurrency)
        .map(|_| {
            *counter += 1;
            make(*counter)
        })
        .collect();
    let start = Instant::now();
    let tasks: Vec<_> = requests
        .into_iter()
        .map(|request| {
            tokio::spawn(async move {
                let response = request.send().await.map_err(|e| e.to_string())?;
                let status = response.status();
                let body = response.bytes().await.map_err(|e| e.to_string())?;
                if status.is_success() {
                    Ok(start.elapsed().as_micros() as u64)
                } else {
                    Err(format!(
                        "HTTP {status}: {}",
                        String::from_utf8_lossy(&body[..body.len().min(200)])
                    ))
                }
            })
        })
        .collect();
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        results.push(task.await.unwrap_or_else(|e| Err(e.to_string())));
    }
    results
}

async fn series(
    args: &Args,
    name: &str,
    make: &(dyn Fn(u64) -> reqwest::RequestBuilder + Sync),
    counter: &mut u64,
) {
    let _ = burst(args.concurrency, make, counter).await;
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for _ in 0..args.bursts {
        for result in burst(args.concurrency, make, counter).await {
            match result {
                Ok(us) => latencies.push(us),
                Err(e) => {
                    errors += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    latencies.sort_unstable();
    if let Some(e) = first_error {
        eprintln!("slack_load: {name}: first error: {e}");
    }
    println!(
        "series={} sent={} errors={errors} p50_ms={:.2} p90_ms={:.2} p99_ms={:.2} max_ms={:.2}",
        name.replace(' ', "_"),
        args.concurrency * args.bursts,
        percentile(&latencies, 50.0),
        percentile(&latencies, 90.0),
        percentile(&latencies, 99.0),
        latencies.last().copied().unwrap_or(0) as f64 / 1000.0
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let args = Args::parse();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(args.concurrency)
        .build()
        .expect("http client");
    let base = args.base.trim_end_matches('/').to_string();
    let mut counter = 0u64;
    let health = {
        let client = client.clone();
        let url = format!("{base}/v1/health");
        move |_n: u64| client.get(&url)
    };
    series(&args, "GET /v1/health", &health, &mut counter).await;
    let secret = Arc::new(args.secret.clone());
    for text in &args.texts {
        let make = {
            let client = client.clone();
            let url = format!("{base}/slack/commands");
            let secret = secret.clone();
            let user = args.user.clone();
            let text = text.clone();
            move |n: u64| {
                let (body, ts, signature) = signed_form(&secret, &user, &text, n);
                client
                    .post(&url)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .header("x-slack-request-timestamp", ts)
                    .header("x-slack-signature", signature)
                    .body(body)
            }
        };
        series(&args, &format!("/sluice {text}"), &make, &mut counter).await;
    }
}
