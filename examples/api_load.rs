//! Open-loop HTTP load generator for `scripts/bench-api.sh`.
//!
//! For each `--path`, in the order given: `--warmup` seconds of load that is not recorded, then
//! `--duration` seconds that are. Requests are *scheduled* at a fixed rate (`--rate` per second,
//! evenly spaced) and each is sent on its own task at its scheduled time whether or not earlier
//! ones have answered (open loop), over a pool of keep-alive connections. The pacing runs on a
//! plain OS thread with `std::thread::sleep` (tens of microseconds late on Linux; tokio's timer
//! rounds up to whole milliseconds, which would add up to 1 ms to every figure).
//!
//! A request's latency is measured from its scheduled send time to the end of its response body,
//! so time spent queued behind a slow server (or a late generator) counts. The service time,
//! from the moment its task started to the end of the body, is reported too. A request is an
//! error when it fails at the transport level, times out (`--timeout`) or answers with a status
//! other than 2xx.
//!
//! Output: one line per path on stdout, `key=value` fields separated by spaces:
//! `path= sent= ok= errors= p50_ms= p90_ms= p99_ms= max_ms= mean_ms= svc_p50_ms= svc_p99_ms=
//! rate= send_lag_max_ms=` (`rate` is the achieved send rate of the recorded part;
//! `send_lag_max_ms` the largest delay between a scheduled send time and the moment its task
//! started, i.e. how far the generator itself fell behind). Errors and a short description of
//! the first one go to stderr.
//!
//! Example:
//! `cargo run --release --example api_load -- --base http://127.0.0.1:7407 --token T \
//!    --path /v1/health --path /v1/environments --rate 300 --duration 10 --warmup 2`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::runtime::Runtime;

#[derive(Parser, Debug)]
#[command(about = "Open-loop fixed-rate HTTP GET load generator")]
struct Args {
    /// Base URL of the server, e.g. http://127.0.0.1:7407
    #[arg(long)]
    base: String,
    /// Path to load, e.g. /v1/environments; repeat to load several paths one after another
    #[arg(long = "path", required = true)]
    paths: Vec<String>,
    /// Bearer token sent with every request (to every path, so requests are the same size)
    #[arg(long, env = "API_LOAD_TOKEN")]
    token: Option<String>,
    /// Requests per second
    #[arg(long, default_value_t = 300.0)]
    rate: f64,
    /// Recorded seconds per path
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Unrecorded warm-up seconds per path, before the recorded part
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Per-request timeout in seconds
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
    /// Worker threads of the generator's runtime
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

/// What one recorded request came to.
struct Sample {
    /// From the scheduled send time to the end of the body.
    latency_us: u64,
    /// From the start of the request's task to the end of the body.
    service_us: u64,
    ok: bool,
}

struct Report {
    path: String,
    sent: usize,
    ok: usize,
    errors: usize,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    mean_ms: f64,
    svc_p50_ms: f64,
    svc_p99_ms: f64,
    rate: f64,
    send_lag_max_ms: f64,
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

async fn one_request(
    client: reqwest::Client,
    url: Arc<String>,
    token: Option<Arc<String>>,
    scheduled: Instant,
    first_error: Arc<std::sync::Mutex<Option<String>>>,
) -> Sample {
    let started = Instant::now();
    let mut request = client.get(url.as_str());
    if let Some(token) = &token {
        request = request.bearer_auth(token.as_str());
    }
    let outcome = match request.send().await {
        Ok(response) => {
            let status = response.status();
            match response.bytes().await {
                Ok(_) if status.is_success() => Ok(()),
                Ok(body) => Err(format!(
                    "HTTP {status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                )),
                Err(e) => Err(format!("reading the body: {e}")),
            }
        }
        Err(e) => Err(format!("sending: {e}")),
    };
    let latency_us = scheduled.elapsed().as_micros() as u64;
    if let Err(message) = &outcome {
        let mut first = first_error.lock().unwrap_or_else(|e| e.into_inner());
        if first.is_none() {
            *first = Some(message.clone());
        }
    }
    Sample {
        latency_us,
        service_us: started.elapsed().as_micros() as u64,
        ok: outcome.is_ok(),
    }
}

/// Loads one path: paces the sends on the calling (non-runtime) thread, runs the requests on
/// `runtime`.
fn load_path(runtime: &Runtime, client: &reqwest::Client, args: &Args, path: &str) -> Report {
    let url = Arc::new(format!("{}{}", args.base.trim_end_matches('/'), path));
    let token = args.token.clone().map(Arc::new);
    let period = Duration::from_secs_f64(1.0 / args.rate);
    let warmup_count = (args.warmup * args.rate).round() as u64;
    let recorded_count = (args.duration * args.rate).round() as u64;
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let lag_max_us = Arc::new(AtomicU64::new(0));

    let start = Instant::now() + Duration::from_millis(10);
    let mut warm = Vec::with_capacity(warmup_count as usize);
    let mut recorded = Vec::with_capacity(recorded_count as usize);
    let mut recorded_first_send = None;
    let mut recorded_last_send = start;
    for i in 0..warmup_count + recorded_count {
        let scheduled = start + period.mul_f64(i as f64);
        let now = Instant::now();
        if scheduled > now {
            std::thread::sleep(scheduled - now);
        }
        let is_recorded = i >= warmup_count;
        if is_recorded {
            let now = Instant::now();
            recorded_first_send.get_or_insert(now);
            recorded_last_send = now;
        }
        let task = {
            let client = client.clone();
            let url = url.clone();
            let token = token.clone();
            let first_error = first_error.clone();
            let lag_max_us = lag_max_us.clone();
            runtime.spawn(async move {
                if is_recorded {
                    let lag = scheduled.elapsed().as_micros() as u64;
                    lag_max_us.fetch_max(lag, Ordering::Relaxed);
                }
                one_request(client, url, token, scheduled, first_error).await
            })
        };
        if is_recorded {
            recorded.push(task);
        } else {
            warm.push(task);
        }
    }

    let samples: Vec<Option<Sample>> = runtime.block_on(async {
        for task in warm {
            let _ = task.await;
        }
        let mut samples = Vec::with_capacity(recorded.len());
        for task in recorded {
            samples.push(task.await.ok());
        }
        samples
    });
    let sent = samples.len();
    let errors = samples
        .iter()
        .filter(|s| !s.as_ref().is_some_and(|s| s.ok))
        .count();
    let mut latencies: Vec<u64> = samples.iter().flatten().map(|s| s.latency_us).collect();
    let mut service: Vec<u64> = samples.iter().flatten().map(|s| s.service_us).collect();
    latencies.sort_unstable();
    service.sort_unstable();
    if let Some(message) = first_error.lock().unwrap_or_else(|e| e.into_inner()).take() {
        eprintln!("api_load: {path}: first error: {message}");
    }
    let span = recorded_first_send
        .map(|first| (recorded_last_send - first).as_secs_f64())
        .unwrap_or(0.0);
    let mean_us = if latencies.is_empty() {
        0.0
    } else {
        latencies.iter().sum::<u64>() as f64 / latencies.len() as f64
    };
    Report {
        path: path.to_string(),
        sent,
        ok: sent - errors,
        errors,
        p50_ms: ms(percentile(&latencies, 50.0)),
        p90_ms: ms(percentile(&latencies, 90.0)),
        p99_ms: ms(percentile(&latencies, 99.0)),
        max_ms: ms(latencies.last().copied().unwrap_or(0)),
        mean_ms: mean_us / 1000.0,
        svc_p50_ms: ms(percentile(&service, 50.0)),
        svc_p99_ms: ms(percentile(&service, 99.0)),
        // n sends span n-1 periods.
        rate: if span > 0.0 {
            sent.saturating_sub(1) as f64 / span
        } else {
            0.0
        },
        send_lag_max_ms: ms(lag_max_us.load(Ordering::Relaxed)),
    }
}

/// Checks that every path answers 2xx once.
async fn check_paths(client: &reqwest::Client, args: &Args) -> Result<(), String> {
    for path in &args.paths {
        let url = format!("{}{}", args.base.trim_end_matches('/'), path);
        let mut request = client.get(&url);
        if let Some(token) = &args.token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("GET {url}: reading the body: {e}"))?;
        if !status.is_success() {
            return Err(format!(
                "GET {url}: HTTP {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        eprintln!("api_load: GET {path}: HTTP {status}, {} bytes", body.len());
    }
    Ok(())
}

fn run(runtime: &Runtime, args: &Args) -> Result<(), String> {
    // Built inside the runtime: reqwest's connector needs it.
    let client = runtime.block_on(async {
        reqwest::Client::builder()
            .timeout(Duration::from_secs_f64(args.timeout))
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| format!("building the HTTP client: {e}"))
    })?;
    runtime.block_on(check_paths(&client, args))?;
    for path in &args.paths {
        let r = load_path(runtime, &client, args, path);
        println!(
            "path={} sent={} ok={} errors={} p50_ms={:.3} p90_ms={:.3} p99_ms={:.3} \
             max_ms={:.3} mean_ms={:.3} svc_p50_ms={:.3} svc_p99_ms={:.3} rate={:.1} \
             send_lag_max_ms={:.3}",
            r.path,
            r.sent,
            r.ok,
            r.errors,
            r.p50_ms,
            r.p90_ms,
            r.p99_ms,
            r.max_ms,
            r.mean_ms,
            r.svc_p50_ms,
            r.svc_p99_ms,
            r.rate,
            r.send_lag_max_ms
        );
    }
    Ok(())
}

fn main() {
    let args = Args::parse();
    if !(args.rate > 0.0 && args.rate.is_finite()) {
        eprintln!("api_load: --rate must be a positive number");
        std::process::exit(2);
    }
    if !(args.duration > 0.0 && args.warmup >= 0.0 && args.timeout > 0.0) {
        eprintln!("api_load: --duration and --timeout must be positive, --warmup not negative");
        std::process::exit(2);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    if let Err(message) = run(&runtime, &args) {
        eprintln!("api_load: {message}");
        std::process::exit(1);
    }
}
