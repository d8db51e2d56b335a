//! Prometheus text metrics at `/metrics`: runs by state, environments with their release and
//! health, HTTP responses by class. Readable without a token: it carries no secret and no
//! run detail beyond counts.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::Ordering;

use crate::error::Result;
use crate::promote::views::environment_views;

use super::server::ApiState;

fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The metrics page.
pub fn render(state: &ApiState) -> Result<String> {
    let engine = &state.engine;
    let mut out = String::new();
    let _ = writeln!(out, "# HELP sluice_up 1 while the daemon serves requests.");
    let _ = writeln!(out, "# TYPE sluice_up gauge");
    let _ = writeln!(out, "sluice_up {}", u8::from(!engine.is_stopping()));

    let _ = writeln!(
        out,
        "# HELP sluice_runs_requested_total Runs requested since the daemon started."
    );
    let _ = writeln!(out, "# TYPE sluice_runs_requested_total counter");
    let _ = writeln!(
        out,
        "sluice_runs_requested_total {}",
        engine.counters.runs_requested.load(Ordering::Relaxed)
    );

    let _ = writeln!(out, "# HELP sluice_runs_finished_total Runs that ended since the daemon started, by final state.");
    let _ = writeln!(out, "# TYPE sluice_runs_finished_total counter");
    if let Ok(finished) = engine.counters.runs_finished.lock() {
        for (state_name, count) in finished.iter() {
            let _ = writeln!(
                out,
                "sluice_runs_finished_total{{state=\"{}\"}} {count}",
                label(state_name)
            );
        }
    }

    let _ = writeln!(
        out,
        "# HELP sluice_runs Runs in the store that have not ended, by environment and state."
    );
    let _ = writeln!(out, "# TYPE sluice_runs gauge");
    let mut open: BTreeMap<(String, &'static str), u64> = BTreeMap::new();
    for run in engine.store().runs()? {
        if !run.state.is_final() {
            *open
                .entry((run.environment.clone(), run.state.name()))
                .or_default() += 1;
        }
    }
    for ((env, state_name), count) in &open {
        let _ = writeln!(
            out,
            "sluice_runs{{environment=\"{}\",state=\"{state_name}\"}} {count}",
            label(env)
        );
    }

    let _ = writeln!(
        out,
        "# HELP sluice_environment_release Info: the release each environment is on (value 1)."
    );
    let _ = writeln!(out, "# TYPE sluice_environment_release gauge");
    let _ = writeln!(out, "# HELP sluice_environment_healthy 1 when the run that brought the environment to its release passed its checks.");
    let _ = writeln!(out, "# TYPE sluice_environment_healthy gauge");
    for view in environment_views(engine)? {
        let _ = writeln!(
            out,
            "sluice_environment_release{{environment=\"{}\",release=\"{}\",head=\"{}\"}} 1",
            label(&view.name),
            label(view.release.as_deref().unwrap_or("")),
            label(view.head.as_deref().unwrap_or(""))
        );
        let _ = writeln!(
            out,
            "sluice_environment_healthy{{environment=\"{}\"}} {}",
            label(&view.name),
            u8::from(view.healthy)
        );
    }

    let _ = writeln!(
        out,
        "# HELP sluice_gate_evaluations_total Times the gates of waiting runs were evaluated."
    );
    let _ = writeln!(out, "# TYPE sluice_gate_evaluations_total counter");
    let _ = writeln!(
        out,
        "sluice_gate_evaluations_total {}",
        engine.counters.ticks.load(Ordering::Relaxed)
    );

    let _ = writeln!(
        out,
        "# HELP sluice_http_responses_total HTTP responses by status class."
    );
    let _ = writeln!(out, "# TYPE sluice_http_responses_total counter");
    for (class, count) in &state.responses {
        let _ = writeln!(
            out,
            "sluice_http_responses_total{{class=\"{class}\"}} {}",
            count.load(Ordering::Relaxed)
        );
    }
    Ok(out)
}
