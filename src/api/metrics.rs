//! Metrics at `/metrics` in the OpenMetrics text format, encoded by the `prometheus-client`
//! crate (every family's samples together under its `# TYPE`, as Prometheus' parser wants):
//! runs by state, each environment's release (`sluice_environment_info`) and health, runs
//! waiting for an approval, environments whose last drift scan found differences, HTTP
//! responses by class, and histograms of how long runs and their phases take. Readable without
//! a token: it carries no secret and no run detail beyond counts and durations.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::error::{Error, Result};
use crate::promote::engine::RunListener;
use crate::promote::views::environment_views;
use crate::store::records::GateKind;
use crate::store::{Run, RunState};

use super::server::ApiState;

/// The content type of the page (OpenMetrics 1.0 text, which Prometheus negotiates).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of a per-environment series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EnvironmentLabels {
    environment: String,
}

/// Labels of a finished run's duration: where, what kind, how it ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    environment: String,
    kind: String,
    state: String,
}

/// Labels of an environment's release.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReleaseLabels {
    environment: String,
    release: String,
    head: String,
}

/// Labels of the open runs gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    environment: String,
    state: String,
}

/// Labels of a counter by one name (`state`, `class`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FinalStateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    class: String,
}

type Durations<L> = Family<L, Histogram, fn() -> Histogram>;

/// Phases take from a fraction of a second (an empty apply) to a couple of hours.
fn phase_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.05, 2.0, 18))
}

/// Waiting for gates (soak, approvals, windows) and whole runs can take days.
fn wait_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 4.0, 12))
}

/// Durations of runs and their phases, observed from the transitions every run records: a
/// [`RunListener`] the engine tells of each change, so the state machine knows nothing of it.
pub struct RunDurations {
    run: Durations<RunLabels>,
    gate_wait: Durations<EnvironmentLabels>,
    snapshot: Durations<EnvironmentLabels>,
    apply: Durations<EnvironmentLabels>,
    verify: Durations<EnvironmentLabels>,
    /// How many transitions of each unfinished run were looked at already (a listener is also
    /// told of changes that add none, such as an approval).
    seen: Mutex<HashMap<String, usize>>,
}

impl Default for RunDurations {
    fn default() -> Self {
        RunDurations {
            run: Family::new_with_constructor(wait_histogram),
            gate_wait: Family::new_with_constructor(wait_histogram),
            snapshot: Family::new_with_constructor(phase_histogram),
            apply: Family::new_with_constructor(phase_histogram),
            verify: Family::new_with_constructor(phase_histogram),
            seen: Mutex::new(HashMap::new()),
        }
    }
}

fn seconds_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_milliseconds().max(0) as f64 / 1000.0
}

fn is_applying(state: &RunState) -> bool {
    matches!(state, RunState::Snapshotted | RunState::Applying { .. })
}

impl RunDurations {
    /// Observes what transition `index` of `run` ended: the wait for the gates when the run
    /// locks its environment, the snapshot when it is taken, the apply and the checks when the
    /// run moves past them, and the whole run when it ends.
    fn observe_transition(&self, run: &Run, index: usize) {
        let Some(current) = run.transitions.get(index) else {
            return;
        };
        let environment = EnvironmentLabels {
            environment: run.environment.clone(),
        };
        let previous = index.checked_sub(1).and_then(|i| run.transitions.get(i));
        match (&current.state, previous.map(|p| &p.state)) {
            (RunState::Locked, _) => self
                .gate_wait
                .get_or_create(&environment)
                .observe(seconds_between(run.created_at, current.at)),
            (RunState::Snapshotted, Some(RunState::Locked)) => {
                if let Some(previous) = previous {
                    self.snapshot
                        .get_or_create(&environment)
                        .observe(seconds_between(previous.at, current.at));
                }
            }
            _ => {}
        }
        if !is_applying(&current.state) && previous.is_some_and(|p| is_applying(&p.state)) {
            let started = run.transitions[..index]
                .iter()
                .rev()
                .find(|t| matches!(t.state, RunState::Snapshotted))
                .map(|t| t.at);
            if let Some(started) = started {
                self.apply
                    .get_or_create(&environment)
                    .observe(seconds_between(started, current.at));
            }
        }
        if let (Some(previous), false) = (
            previous.filter(|p| matches!(p.state, RunState::Verifying)),
            matches!(current.state, RunState::Verifying),
        ) {
            self.verify
                .get_or_create(&environment)
                .observe(seconds_between(previous.at, current.at));
        }
        if current.state.is_final() {
            self.run
                .get_or_create(&RunLabels {
                    environment: run.environment.clone(),
                    kind: run.kind.to_string(),
                    state: current.state.name().to_string(),
                })
                .observe(seconds_between(run.created_at, current.at));
        }
    }

    fn register(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "sluice_run_duration",
            "Time from a run's request to its end, by environment, kind and final state",
            Unit::Seconds,
            self.run.clone(),
        );
        registry.register_with_unit(
            "sluice_gate_wait_duration",
            "Time a run waited for its gates (soak, approvals, windows, runs ahead) before it locked its environment",
            Unit::Seconds,
            self.gate_wait.clone(),
        );
        registry.register_with_unit(
            "sluice_snapshot_duration",
            "Time taken by the snapshot before a run changed its environment",
            Unit::Seconds,
            self.snapshot.clone(),
        );
        registry.register_with_unit(
            "sluice_apply_duration",
            "Time from the snapshot to the end of applying the run's migrations (succeeded or not)",
            Unit::Seconds,
            self.apply.clone(),
        );
        registry.register_with_unit(
            "sluice_verify_duration",
            "Time the health checks after an apply took",
            Unit::Seconds,
            self.verify.clone(),
        );
    }
}

impl RunListener for RunDurations {
    fn run_changed(&self, run: &Run) {
        let total = run.transitions.len();
        let mut seen = match self.seen.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        // A run first met part-way (the daemon restarted) counts from its latest change on.
        let from = seen
            .get(&run.id)
            .copied()
            .unwrap_or(total.saturating_sub(1));
        for index in from..total {
            self.observe_transition(run, index);
        }
        if run.state.is_final() {
            seen.remove(&run.id);
        } else {
            seen.insert(run.id.clone(), total);
        }
    }
}

fn counter(value: u64) -> Counter {
    let counter = Counter::default();
    counter.inc_by(value);
    counter
}

fn gauge(value: u64) -> Gauge {
    let gauge = Gauge::default();
    gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
    gauge
}

/// Whether a run waits for an approval.
fn waits_for_approval(state: &RunState) -> bool {
    state.waits_for(GateKind::Approval)
}

/// The metrics page.
pub fn render(state: &ApiState) -> Result<String> {
    let engine = &state.engine;
    let mut registry = Registry::default();

    registry.register(
        "sluice_up",
        "1 while the daemon serves requests",
        gauge(u64::from(!engine.is_stopping())),
    );
    registry.register(
        "sluice_runs_requested",
        "Runs requested since the daemon started",
        counter(engine.counters.runs_requested.load(Ordering::Relaxed)),
    );
    let finished = Family::<FinalStateLabels, Counter>::default();
    if let Ok(counts) = engine.counters.runs_finished.lock() {
        for (name, count) in counts.iter() {
            finished
                .get_or_create(&FinalStateLabels {
                    state: name.clone(),
                })
                .inc_by(*count);
        }
    }
    registry.register(
        "sluice_runs_finished",
        "Runs that ended since the daemon started, by final state",
        finished,
    );

    let open_runs = engine.store().open_runs()?;
    let mut by_state: BTreeMap<(String, &'static str), u64> = BTreeMap::new();
    let mut pending: BTreeMap<String, u64> = BTreeMap::new();
    for run in &open_runs {
        *by_state
            .entry((run.environment.clone(), run.state.name()))
            .or_default() += 1;
        if waits_for_approval(&run.state) {
            *pending.entry(run.environment.clone()).or_default() += 1;
        }
    }
    let runs = Family::<StateLabels, Gauge>::default();
    for ((environment, state_name), count) in by_state {
        runs.get_or_create(&StateLabels {
            environment,
            state: state_name.to_string(),
        })
        .set(i64::try_from(count).unwrap_or(i64::MAX));
    }
    registry.register(
        "sluice_runs",
        "Runs in the store that have not ended, by environment and state",
        runs,
    );

    let views = environment_views(engine)?;
    let info = Family::<ReleaseLabels, Gauge>::default();
    let healthy = Family::<EnvironmentLabels, Gauge>::default();
    let approvals = Family::<EnvironmentLabels, Gauge>::default();
    let mut drifted = 0u64;
    for view in &views {
        info.get_or_create(&ReleaseLabels {
            environment: view.name.clone(),
            release: view.release.clone().unwrap_or_default(),
            head: view.head.clone().unwrap_or_default(),
        })
        .set(1);
        let environment = EnvironmentLabels {
            environment: view.name.clone(),
        };
        healthy
            .get_or_create(&environment)
            .set(i64::from(view.healthy));
        approvals
            .get_or_create(&environment)
            .set(i64::try_from(pending.get(&view.name).copied().unwrap_or(0)).unwrap_or(0));
        if view
            .drift
            .as_ref()
            .is_some_and(|scan| scan.error.is_none() && scan.differences > 0)
        {
            drifted += 1;
        }
    }
    registry.register(
        "sluice_environment_info",
        "The release each environment is on (labels environment, release, head; value 1)",
        info,
    );
    registry.register(
        "sluice_environment_healthy",
        "1 when the run that brought the environment to its release passed its checks",
        healthy,
    );
    registry.register(
        "sluice_pending_approvals",
        "Runs waiting for an approval, by environment",
        approvals,
    );
    registry.register(
        "sluice_drifted_environments",
        "Environments whose last drift scan found differences from their migrations",
        gauge(drifted),
    );

    registry.register(
        "sluice_gate_evaluations",
        "Times the gates of waiting runs were evaluated",
        counter(engine.counters.ticks.load(Ordering::Relaxed)),
    );
    let responses = Family::<ClassLabels, Counter>::default();
    for (class, count) in &state.responses {
        responses
            .get_or_create(&ClassLabels {
                class: class.to_string(),
            })
            .inc_by(count.load(Ordering::Relaxed));
    }
    registry.register(
        "sluice_http_responses",
        "HTTP responses by status class",
        responses,
    );

    state.durations.register(&mut registry);

    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .map_err(|e| Error::Usage(format!("encoding the metrics: {e}")))?;
    Ok(out)
}
