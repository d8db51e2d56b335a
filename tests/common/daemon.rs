//! A `sluice serve` process for tests: started on a free port, its stderr (the logs) captured
//! for assertions, stopped with SIGTERM or killed with SIGKILL; and a small blocking HTTP
//! client for its API.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::Project;

/// A running daemon.
pub struct Daemon {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    log: Arc<Mutex<String>>,
    http: reqwest::blocking::Client,
}

/// Writes `tokens.toml` in the project with `(name, token, roles)` entries, `roles` being the
/// TOML inline table body, e.g. `dev = "deployer", "*" = "viewer"`.
pub fn write_tokens(project: &Project, tokens: &[(&str, &str, &str)]) -> std::path::PathBuf {
    let mut text = String::new();
    for (name, token, roles) in tokens {
        let hash = hex::encode(Sha256::digest(token.as_bytes()));
        text.push_str(&format!(
            "[[token]]\nname = \"{name}\"\nsha256 = \"{hash}\"\nroles = {{ {roles} }}\n\n"
        ));
    }
    let path = project.path().join("tokens.toml");
    std::fs::write(&path, text).expect("write tokens.toml");
    path
}

fn spawn_logged(
    project: &Project,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Child, Arc<Mutex<String>>, std::sync::mpsc::Receiver<String>) {
    let mut cmd = project.cmd(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sluice serve");
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    for stream in [
        Box::new(child.stderr.take().expect("stderr")) as Box<dyn std::io::Read + Send>,
        Box::new(child.stdout.take().expect("stdout")),
    ] {
        let log = log.clone();
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if let Some(address) = line.strip_prefix("sluice serving on ") {
                    let _ = tx.send(address.trim().to_string());
                }
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
    }
    (child, log, rx)
}

impl Daemon {
    /// Starts `sluice serve` on a free port with JSON logs, `env` added to its environment,
    /// and waits until it listens.
    pub fn start(project: &Project, env: &[(&str, &str)]) -> Daemon {
        let (mut child, log, rx) = spawn_logged(
            project,
            &["serve", "--listen", "127.0.0.1:0", "--log-format", "json"],
            env,
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        let base = loop {
            if let Ok(address) = rx.recv_timeout(Duration::from_millis(50)) {
                break address;
            }
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "sluice serve exited with {status}:\n{}",
                    log.lock().unwrap()
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("sluice serve did not start:\n{}", log.lock().unwrap());
            }
        };
        Daemon {
            child: Some(child),
            base,
            log,
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client"),
        }
    }

    /// Everything the daemon printed so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "`{needle}` never appeared in the daemon's log:\n{}",
            self.log()
        );
    }

    /// SIGKILL, no goodbye.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("daemon already stopped");
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("daemon did not stop after SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn send(
        &self,
        request: reqwest::blocking::RequestBuilder,
        token: Option<&str>,
    ) -> (u16, Value) {
        let request = match token {
            Some(t) => request.bearer_auth(t),
            None => request,
        };
        let response = request.send().expect("request to the daemon");
        let status = response.status().as_u16();
        let text = response.text().unwrap_or_default();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    /// GET `path`.
    pub fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        self.send(self.http.get(format!("{}{path}", self.base)), token)
    }

    /// POST `path` with a raw body.
    pub fn post(&self, path: &str, token: Option<&str>, body: &str) -> (u16, Value) {
        self.send(
            self.http
                .post(format!("{}{path}", self.base))
                .header("content-type", "application/json")
                .body(body.to_string()),
            token,
        )
    }

    /// Polls run `id` until `done` says so; returns the last view.
    pub fn wait_run(
        &self,
        id: &str,
        token: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            let (status, run) = self.get(&format!("/v1/runs/{id}"), Some(token));
            if status == 200 {
                if done(&run) {
                    return run;
                }
                last = run;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "run {id} did not reach the expected state in {timeout:?}; last seen:\n{}\nlog:\n{}",
            serde_json::to_string_pretty(&last).unwrap_or_default(),
            self.log()
        );
    }

    /// Polls the runs of `environment` until one matches.
    pub fn wait_runs(
        &self,
        environment: &str,
        token: &str,
        timeout: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let mut last = Vec::new();
        while Instant::now() < deadline {
            let (status, runs) =
                self.get(&format!("/v1/runs?environment={environment}"), Some(token));
            if status == 200 {
                let runs = runs.as_array().cloned().unwrap_or_default();
                if done(&runs) {
                    return runs;
                }
                last = runs;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "runs of {environment} never matched in {timeout:?}; last seen:\n{}\nlog:\n{}",
            serde_json::to_string_pretty(&last).unwrap_or_default(),
            self.log()
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `sluice serve` expecting it to exit on its own; returns its output.
pub fn serve_expecting_exit(project: &Project, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let (mut child, log, _rx) = spawn_logged(project, &["serve", "--listen", "127.0.0.1:0"], env);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            std::thread::sleep(Duration::from_millis(100));
            return (status.code(), log.lock().unwrap().clone());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("sluice serve kept running:\n{}", log.lock().unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The state name of a run view.
pub fn state_of(run: &Value) -> &str {
    run["state"]["name"].as_str().unwrap_or("")
}
