//! What the API returns and the CLI prints about environments and runs, built the same way
//! for a daemon and for `--local` commands so both show the same thing.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{redact_json, Result};
use crate::store::{Event, Run};

/// A run in a listing; the store keeps one per run (see [`crate::store::Store::run_summaries`]).
pub use crate::store::RunSummary;

use super::engine::{holder_of, Engine};

/// An environment with its current release and the runs concerning it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvironmentView {
    /// Name.
    pub name: String,
    /// The release it is on, as recorded by sluice.
    pub release: Option<String>,
    /// That release's head migration.
    pub head: Option<String>,
    /// Since when.
    pub since: Option<DateTime<Utc>>,
    /// Whether the run that brought it there passed its health checks.
    pub healthy: bool,
    /// The run that brought it there.
    pub run_id: Option<String>,
    /// The run holding it now (locked … rolling back, or halted).
    pub active_run: Option<RunSummary>,
    /// Runs waiting for it, oldest first.
    pub waiting_runs: Vec<RunSummary>,
    /// The environment that feeds it.
    pub from: Option<String>,
    /// Whether releases arrive by themselves.
    pub auto_promote: bool,
    /// The last periodic drift scan (policy `drift_scan`), if one ran.
    #[serde(default)]
    pub drift: Option<crate::drift::scan::ScanRecord>,
}

/// Views of every environment, in ladder order.
pub fn environment_views(engine: &Engine) -> Result<Vec<EnvironmentView>> {
    let loaded = engine.loaded();
    let runs = engine.store().open_runs()?;
    let mut views = Vec::new();
    for name in loaded.ladder_order() {
        let state = engine.store().environment_state(&name)?;
        let policy = loaded.policies.for_env(&name);
        views.push(EnvironmentView {
            active_run: holder_of(&runs, &name).map(RunSummary::of),
            waiting_runs: runs
                .iter()
                .filter(|r| r.environment == name && r.state.is_waiting())
                .map(RunSummary::of)
                .collect(),
            release: state.release,
            head: state.head,
            since: state.since,
            healthy: state.healthy,
            run_id: state.run_id,
            from: policy.from.clone(),
            auto_promote: policy.auto_promote,
            drift: engine
                .store()
                .mark(&crate::drift::scan::last_key(&name))?
                .and_then(|mut v| {
                    redact_json(&mut v);
                    serde_json::from_value(v).ok()
                }),
            name,
        });
    }
    Ok(views)
}

/// A run with, when asked for one run, its audit trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunView {
    /// The run.
    #[serde(flatten)]
    pub run: Run,
    /// Its events, oldest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<Event>>,
}

impl RunView {
    /// The view of `run`, with any credential in its text hidden (a run fresh from the engine
    /// has not been through the store's redaction yet).
    pub fn of(run: Run, events: Option<Vec<Event>>) -> RunView {
        let view = RunView { run, events };
        let Ok(mut document) = serde_json::to_value(&view) else {
            return view;
        };
        redact_json(&mut document);
        serde_json::from_value(document).unwrap_or(view)
    }
}
