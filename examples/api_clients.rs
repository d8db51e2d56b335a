//! Closed-loop HTTP load generator for `scripts/bench-runs.sh`: `--clients` clients, each
//! sending its next GET as soon as the previous answer's body is read, over keep-alive
//! connections, for `--warmup` seconds unrecorded and then `--duration` seconds recorded, per
//! `--path` and per `--clients` value, in the order given.
//!
//! Output: one line per (path, clients) on stdout, `key=value` fields separated by spaces:
//! `path= clients= requests= errors= p50_ms= p90_ms= p99_ms= max_ms= bytes= rate=` (`bytes`
//! is the mean body size, `rate` the answered requests per second). A request is an error when
//! it fails at the transport level, times out (`--timeout`) or answers with a status other
//! than 2xx; the first error's description goes to stderr.
//!
//! Example:
//! `cargo run --release --example api_clients -- --base http://127.0.0.1:7407 --token T \
//!    --path /v1/runs --clients 4 --clients 64 --duration 10 --warmup 2`

use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Closed-loop concurrent HTTP GET load generator")]
struct Args {
    /// Base URL of the server, e.g. http://127.0.0.1:7407
    #[arg(long)]
    base: String,
    /// Path to load; repeat to load several paths one after another
    #[arg(long = "path", required = true)]
    paths: Vec<String>,
    /// Concurrent clients; repeat to load each path at several levels
    #[arg(long = "clients", required = true)]
    clients: Vec<usize>,
    /// Bearer token sent with every request
    #[arg(long, env = "API_LOAD_TOKEN")]
    token: Option<String>,
    /// Recorded seconds per path and level
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Unrecorded warm-up seconds before each recorded part
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Per-request timeout in seconds
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Worker threads of the generator's runtime
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

/// One answered (or failed) request of the recorded part.
struct Sample {
    latency_us: u64,
    bytes: usize,
    ok: bool,
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// One client: requests back to back until `end`, keeping what happened after `record_from`.
async fn client(
    http: reqwest::Client,
    url: String,
    token: Option<String>,
    record_from: Instant,
    end: Instant,
) -> (Vec<Sample>, Option<String>) {
    let mut samples = Vec::new();
    let mut first_error = None;
    while Instant::now() < end {
        let started = Instant::now();
        let mut request = http.get(&url);
        if let Some(token) = &token {
            request = request.bearer_auth(token);
        }
        let outcome = match request.send().await {
            Ok(response) if response.status().is_success() => match response.bytes().await {
                Ok(body) => Ok(body.len()),
                Err(e) => Err(format!("reading the body: {e}")),
            },
            Ok(response) => Err(format!("status {}", response.status())),
            Err(e) => Err(e.to_string()),
        };
        if started < record_from {
            continue;
        }
        let latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        match outcome {
            Ok(bytes) => samples.push(Sample {
                latency_us,
                bytes,
                ok: true,
            }),
            Err(why) => {
                first_error.get_or_insert(why);
                samples.push(Sample {
                    latency_us,
                    bytes: 0,
                    ok: false,
                });
            }
        }
    }
    (samples, first_error)
}

fn main() -> Result<(), String> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs_f64(args.timeout))
        .pool_max_idle_per_host(usize::MAX)
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let mut failed = false;
    for path in &args.paths {
        for &clients in &args.clients {
            let url = format!("{}{path}", args.base.trim_end_matches('/'));
            let record_from = Instant::now() + Duration::from_secs_f64(args.warmup);
            let end = record_from + Duration::from_secs_f64(args.duration);
            let results = runtime.block_on(async {
                let tasks: Vec<_> = (0..clients)
                    .map(|_| {
                        tokio::spawn(client(
                            http.clone(),
                            url.clone(),
                            args.token.clone(),
                            record_from,
                            end,
                        ))
                    })
                    .collect();
                let mut all = Vec::new();
                for task in tasks {
                    if let Ok(result) = task.await {
                        all.push(result);
                    }
                }
                all
            });
            let mut latencies: Vec<u64> = Vec::new();
            let (mut errors, mut bytes, mut answered) = (0usize, 0usize, 0usize);
            for (samples, first_error) in &results {
                if let Some(why) = first_error {
                    eprintln!("{path} with {clients} clients: {why}");
                }
                for sample in samples {
                    latencies.push(sample.latency_us);
                    if sample.ok {
                        bytes += sample.bytes;
                        answered += 1;
                    } else {
                        errors += 1;
                    }
                }
            }
            latencies.sort_unstable();
            failed |= errors > 0;
            println!(
                "path={path} clients={clients} requests={} errors={errors} p50_ms={:.3} p90_ms={:.3} p99_ms={:.3} max_ms={:.3} bytes={} rate={:.1}",
                latencies.len(),
                ms(percentile(&latencies, 50.0)),
                ms(percentile(&latencies, 90.0)),
                ms(percentile(&latencies, 99.0)),
                ms(latencies.last().copied().unwrap_or(0)),
                bytes.checked_div(answered).unwrap_or(0),
                answered as f64 / args.duration,
            );
        }
    }
    if failed {
        return Err("some requests failed".into());
    }
    Ok(())
}
