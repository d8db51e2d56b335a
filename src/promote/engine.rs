//! The promotion engine: holds the configuration as loaded, accepts requests (promote,
//! approve, reject, cancel, resume, roll back), opens gates, and runs one driver per
//! environment through the run state machine. The daemon and `--local` CLI commands use the
//! same engine, so both behave the same.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::Utc;
use serde_json::json;

use crate::config::ENVIRONMENTS_DIR;
use crate::error::{Error, Result};
use crate::migrations::discover;
use crate::store::records::{short_hash, Gate, GateKind};
use crate::store::{
    Approval, Event, LoadedConfig, Origin, Release, Run, RunKind, RunState, Store, Transition,
};

pub use super::loaded::{Loaded, MACHINE_ACTOR};

use super::gates::{closed_gates, GateInput};
use super::journal::Journal;
use super::machine;
use super::table;

/// The fewest characters of a run id accepted in its place.
pub const RUN_PREFIX_MIN: usize = 6;

/// How the engine behaves.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// How often gates are looked at again (soak and windows open with time).
    pub tick: Duration,
    /// Whether a success requests promotions downstream where the policy says `auto_promote`.
    pub auto_promote: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            tick: Duration::from_secs(1),
            auto_promote: true,
        }
    }
}

/// A request to bring an environment to a release.
#[derive(Debug, Clone)]
pub struct PromotionRequest {
    /// The environment.
    pub to: String,
    /// A release hash (or a unique prefix of at least 7 characters); the newest when absent.
    pub release: Option<String>,
    /// Also request every environment upstream of `to` that is not on the release yet.
    pub ladder: bool,
    /// Who asks.
    pub actor: String,
    /// Why.
    pub reason: Option<String>,
    /// What asked, when not a person at the API or CLI.
    pub origin: Option<Origin>,
}

/// What [`Engine::plan`] found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PlanView {
    /// The environment.
    pub environment: String,
    /// The release a promotion would bring.
    pub release: String,
    /// Its head migration.
    pub head: Option<String>,
    /// The release the environment is on, as sluice recorded it.
    pub current_release: Option<String>,
    /// The migrations that would run, in order, with how each would be applied.
    pub migrations: Vec<crate::apply::Planned>,
    /// The gates that would hold a promotion requested now, one sentence each.
    pub gates: Vec<String>,
    /// What the lint says about the migrations that would run.
    pub lint: crate::migrations::lint::LintReport,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Runs requested.
    pub runs_requested: AtomicU64,
    /// Runs that ended, by final state name.
    pub runs_finished: Mutex<BTreeMap<String, u64>>,
    /// Gate evaluations.
    pub ticks: AtomicU64,
}

/// Something that wants to hear of every run transition without slowing the run: the
/// notifier, the Slack progress reporter. Called synchronously right after the transition is
/// stored, so an implementation must only enqueue and return.
pub trait RunListener: Send + Sync {
    /// The run as it is now stored.
    fn run_changed(&self, run: &Run);

    /// A drift check (before a run, or a periodic scan) found something worth announcing.
    fn drift_found(&self, _notice: &DriftNotice) {}
}

/// What a drift check announces: the environment, the run it stopped or warned (none for a
/// scan), and the differences in words and as data.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DriftNotice {
    /// `drift.detected` (differences found or changed) or `drift.resolved` (gone since the
    /// last scan).
    pub event: String,
    /// The environment checked.
    pub environment: String,
    /// The run about to start, for a check before a run.
    pub run_id: Option<String>,
    /// One line.
    pub summary: String,
    /// The differences for people, grouped by table.
    pub diff: String,
    /// The report (differences as data, the applied head, the release hash).
    pub report: serde_json::Value,
}

/// The engine. Shared between the HTTP server, the ticker and the drivers.
pub struct Engine {
    listeners: RwLock<Vec<Arc<dyn RunListener>>>,
    root: PathBuf,
    pub(crate) store: Arc<dyn Store>,
    loaded: RwLock<Arc<Loaded>>,
    decisions: tokio::sync::Mutex<()>,
    drivers: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
    stopping: AtomicBool,
    stop_signal: tokio::sync::watch::Sender<bool>,
    wake: tokio::sync::Notify,
    /// Options it runs with.
    pub options: EngineOptions,
    /// Counters for `/metrics`.
    pub counters: Counters,
}

impl Engine {
    /// Loads the project at `root`, records the configuration and release in the store.
    pub fn open(root: &Path, store: Arc<dyn Store>, options: EngineOptions) -> Result<Arc<Engine>> {
        let loaded = Loaded::load(root, "start")?;
        let (stop_signal, _) = tokio::sync::watch::channel(false);
        let engine = Arc::new(Engine {
            listeners: RwLock::new(Vec::new()),
            root: root.to_path_buf(),
            store,
            loaded: RwLock::new(Arc::new(loaded.clone())),
            decisions: tokio::sync::Mutex::new(()),
            drivers: Mutex::new(HashMap::new()),
            stopping: AtomicBool::new(false),
            stop_signal,
            wake: tokio::sync::Notify::new(),
            options,
            counters: Counters::default(),
        });
        engine.record_loaded(&loaded, MACHINE_ACTOR)?;
        Ok(engine)
    }

    /// The configuration in force.
    pub fn loaded(&self) -> Arc<Loaded> {
        match self.loaded.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set_loaded(&self, loaded: Loaded) {
        match self.loaded.write() {
            Ok(mut guard) => *guard = Arc::new(loaded),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(loaded),
        }
    }

    /// Adds a listener told of every transition from now on.
    pub fn add_listener(&self, listener: Arc<dyn RunListener>) {
        match self.listeners.write() {
            Ok(mut guard) => guard.push(listener),
            Err(poisoned) => poisoned.into_inner().push(listener),
        }
    }

    fn tell_listeners(&self, run: &Run) {
        let listeners = match self.listeners.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        for listener in listeners {
            listener.run_changed(run);
        }
    }

    /// Runs `step` once per tick until the engine stops: the loop of the daemon's background
    /// tasks (the scheduler, the drift scanner).
    pub async fn each_tick<F, Fut>(&self, what: &str, mut step: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let tick = self.options.tick;
        let mut stop = self.stop_receiver();
        while !self.is_stopping() {
            step().await;
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = stop.changed() => break,
            }
        }
        tracing::debug!(actor = MACHINE_ACTOR, "{what} stopped");
    }

    /// Compares an environment with the expected schema of the migrations it has applied,
    /// keeping expected schemas in the store; for the pre-run check, the scan, the API and Slack.
    pub async fn check_drift(&self, environment: &str) -> Result<crate::drift::check::DriftReport> {
        let loaded = self.loaded();
        let env = loaded.environment(environment)?;
        let cache = crate::drift::expected::Cache {
            store: self.store(),
            rebuild: false,
        };
        crate::drift::check::check_environment(env, &loaded.set, &loaded.project.drift, Some(cache))
            .await
    }

    /// Records a drift check's finding (`drift.detected`, `drift.resolved`) in the event log
    /// with the diff in words and as data, then tells every listener. `detail` adds keys (the
    /// policy's rule for a check before a run).
    pub(crate) fn report_drift(
        &self,
        event: &str,
        run_id: Option<&str>,
        report: &crate::drift::check::DriftReport,
        mut detail: serde_json::Value,
    ) -> Result<()> {
        let summary = report.summary();
        let diff = report.human();
        let document = serde_json::to_value(report).unwrap_or_default();
        detail["diff"] = json!(diff);
        detail["report"] = document.clone();
        self.event(
            MACHINE_ACTOR,
            event,
            &report.environment,
            run_id,
            Some(&summary),
            detail,
        )?;
        let notice = DriftNotice {
            event: event.to_string(),
            environment: report.environment.clone(),
            run_id: run_id.map(String::from),
            summary,
            diff,
            report: document,
        };
        let listeners = match self.listeners.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        for listener in listeners {
            listener.drift_found(&notice);
        }
        Ok(())
    }

    /// The store.
    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    fn record_loaded(&self, loaded: &Loaded, actor: &str) -> Result<()> {
        self.store.put_loaded_config(&LoadedConfig {
            at: Utc::now(),
            by: actor.into(),
            files: loaded.files.clone(),
        })?;
        self.record_release(&loaded.release, actor)?;
        Ok(())
    }

    fn record_release(&self, release: &Release, actor: &str) -> Result<bool> {
        let fresh = self.store.put_release(release)?;
        let head_changed = self.store.head_release()?.as_deref() != Some(&release.hash);
        if head_changed {
            self.store.set_head_release(&release.hash)?;
        }
        if fresh || head_changed {
            self.event(
                actor,
                "release.recorded",
                "",
                None,
                None,
                json!({"release": release.hash, "head": release.head, "migrations": release.migrations.len(), "source": release.source}),
            )?;
            tracing::info!(release = %release.short(), head = release.head.as_deref().unwrap_or("(none)"), "new release recorded");
        }
        Ok(fresh || head_changed)
    }

    /// Re-reads every file; a bad one changes nothing and the error names it.
    pub async fn reload(&self, actor: &str) -> Result<Release> {
        let loaded = Loaded::load(&self.root, "reload")?;
        let _decisions = self.decisions.lock().await;
        self.record_loaded(&loaded, actor)?;
        let release = loaded.release.clone();
        self.set_loaded(loaded);
        self.event(
            actor,
            "config.reloaded",
            "",
            None,
            None,
            json!({"release": release.hash}),
        )?;
        self.wake.notify_one();
        Ok(release)
    }

    /// Reads the migrations directory and records its head if it is new. Returns the release
    /// and whether it was new.
    pub async fn scan_releases(&self, actor: &str, source: &str) -> Result<(Release, bool)> {
        let loaded = self.loaded();
        let set = discover(&loaded.project.migrations_dir)?;
        let release = Release::of(&set, source);
        if release.hash == loaded.release.hash {
            return Ok((loaded.release.clone(), false));
        }
        let _decisions = self.decisions.lock().await;
        let fresh = self.record_release(&release, actor)?;
        let mut updated = (*loaded).clone();
        updated.set = Arc::new(set);
        updated.release = release.clone();
        self.set_loaded(updated);
        Ok((release, fresh))
    }

    /// Appends to the audit log.
    pub(crate) fn event(
        &self,
        actor: &str,
        action: &str,
        environment: &str,
        run_id: Option<&str>,
        reason: Option<&str>,
        detail: serde_json::Value,
    ) -> Result<()> {
        self.store.append_event(&Event {
            at: Utc::now(),
            actor: actor.into(),
            action: action.into(),
            environment: environment.into(),
            reason: reason.map(String::from),
            detail,
            run_id: run_id.map(String::from),
        })
    }

    /// Writes a run's new state (flushed) and its event, then pauses there when a crash test
    /// asks to. Called before the action the state announces.
    pub(crate) fn transition(&self, run: &mut Run, state: RunState, actor: &str) -> Result<()> {
        table::check(run, &state)?;
        let now = Utc::now();
        run.state = state.clone();
        run.updated_at = now;
        run.transitions.push(Transition {
            at: now,
            state: state.clone(),
            actor: actor.into(),
        });
        self.store.put_run(run)?;
        self.event(
            actor,
            &format!("run.{}", state.name()),
            &run.environment,
            Some(&run.id),
            None,
            serde_json::to_value(&state).unwrap_or_default(),
        )?;
        if state.is_final() {
            if let Ok(mut finished) = self.counters.runs_finished.lock() {
                *finished.entry(state.name().to_string()).or_default() += 1;
            }
        }
        tracing::info!(run = %run.id, environment = %run.environment, state = %state.describe(), "run state");
        self.tell_listeners(run);
        crate::testhook::pause(&format!("run-state:{}", state.name()));
        if let RunState::Applying { index, .. } = state {
            crate::testhook::pause(&format!("run-state:applying:{index}"));
        }
        Ok(())
    }

    /// Saves a run without a state change (plan, measurements, applied migrations).
    pub(crate) fn save(&self, run: &Run) -> Result<()> {
        self.store.put_run(run)
    }

    /// One run by its id or a unique prefix of at least [`RUN_PREFIX_MIN`] characters (the
    /// CLI shows 8), or a clear error.
    pub fn run(&self, id: &str) -> Result<Run> {
        if let Some(run) = self.store.run(id)? {
            return Ok(run);
        }
        let wanted = id.trim().to_ascii_lowercase();
        if wanted.chars().count() < RUN_PREFIX_MIN {
            return Err(Error::NotFound(format!(
                "no run `{id}` (a run id may be shortened to its first {RUN_PREFIX_MIN} or more \
                 characters, when they are unique)"
            )));
        }
        let runs = self.store.runs()?;
        let matching: Vec<&Run> = runs.iter().filter(|r| r.id.starts_with(&wanted)).collect();
        match matching.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(Error::NotFound(format!(
                "no run `{id}`; `sluice runs` lists them"
            ))),
            several => Err(Error::Usage(format!(
                "`{id}` is the start of {} runs ({}); give more characters",
                several.len(),
                several
                    .iter()
                    .map(|r| r.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    fn resolve_release(&self, wanted: Option<&str>) -> Result<Release> {
        let hash = match wanted {
            None => self
                .store
                .head_release()?
                .ok_or_else(|| Error::NotFound("no release recorded yet".into()))?,
            Some(prefix) if prefix.len() >= 7 && prefix.chars().all(|c| c.is_ascii_hexdigit()) => {
                let matches: Vec<Release> = self
                    .store
                    .releases()?
                    .into_iter()
                    .filter(|r| r.hash.starts_with(&prefix.to_ascii_lowercase()))
                    .collect();
                match matches.as_slice() {
                    [one] => one.hash.clone(),
                    [] => {
                        return Err(Error::NotFound(format!(
                        "no release `{prefix}`; `GET /v1/releases` or `sluice releases` lists them"
                    )))
                    }
                    _ => {
                        return Err(Error::Usage(format!(
                            "release prefix `{prefix}` matches {} releases; give more characters",
                            matches.len()
                        )))
                    }
                }
            }
            Some(other) => {
                return Err(Error::Usage(format!(
                    "`{other}` is not a release hash (at least 7 hex characters)"
                )))
            }
        };
        self.store
            .release(&hash)?
            .ok_or_else(|| Error::NotFound(format!("no release `{hash}`")))
    }

    /// Records promotion requests: for `to`, and with `ladder` for every environment upstream
    /// of it that is not on the release yet (each then waits for the one before it).
    pub async fn request_promotion(&self, request: &PromotionRequest) -> Result<Vec<Run>> {
        let loaded = self.loaded();
        loaded.environment(&request.to)?;
        let release = self.resolve_release(request.release.as_deref())?;
        let _decisions = self.decisions.lock().await;
        let chain = if request.ladder {
            loaded.policies.chain_to(&request.to)
        } else {
            vec![request.to.clone()]
        };
        let runs = self.store.runs()?;
        let mut created = Vec::new();
        let mut skipped = Vec::new();
        for env in &chain {
            let explicit = env == &request.to;
            match self.check_promotable(&runs, env, &release) {
                Ok(()) => {}
                Err(err) if !explicit => {
                    skipped.push(err.to_string());
                    continue;
                }
                Err(err) => {
                    if created.is_empty() {
                        return Err(err);
                    }
                    skipped.push(err.to_string());
                    continue;
                }
            }
            created.push(self.create_promotion(&loaded, &runs, env, &release, request)?);
        }
        if created.is_empty() {
            return Err(Error::Conflict(skipped.join("; ")));
        }
        self.wake.notify_one();
        Ok(created)
    }

    fn check_promotable(&self, runs: &[Run], env: &str, release: &Release) -> Result<()> {
        let state = self.store.environment_state(env)?;
        let holder = holder_of(runs, env);
        if state.release.as_deref() == Some(release.hash.as_str()) && holder.is_none() {
            return Err(Error::Conflict(format!(
                "`{env}` is already on release {}",
                release.short()
            )));
        }
        if let Some(current) = state
            .release
            .as_deref()
            .and_then(|h| self.store.release(h).ok().flatten())
        {
            if release.is_prefix_of(&current) && release.hash != current.hash {
                return Err(Error::Conflict(format!(
                    "`{env}` is on release {}, which already contains release {}; to go back, roll back `{env}`",
                    current.short(),
                    release.short()
                )));
            }
        }
        if let Some(same) = runs.iter().find(|r| {
            r.environment == env
                && r.release == release.hash
                && r.kind == RunKind::Promotion
                && !r.state.is_final()
        }) {
            return Err(Error::Conflict(format!(
                "run {} already brings `{env}` to release {} ({})",
                same.id,
                release.short(),
                same.state.describe()
            )));
        }
        Ok(())
    }

    fn create_promotion(
        &self,
        loaded: &Loaded,
        runs: &[Run],
        env: &str,
        release: &Release,
        request: &PromotionRequest,
    ) -> Result<Run> {
        let policy = loaded.policies.for_env(env);
        let mut run = Run::promotion(
            env,
            release,
            self.store.environment_state(env)?.release,
            &request.actor,
            request.reason.clone(),
            request.origin.clone(),
        );
        if matches!(policy.concurrency, crate::policy::PendingRule::Replace) {
            for older in runs
                .iter()
                .filter(|r| r.environment == env && r.state.is_waiting())
            {
                let mut older = older.clone();
                self.transition(
                    &mut older,
                    RunState::Cancelled {
                        reason: format!(
                            "replaced by run {} for release {} (policy: pending = \"replace\")",
                            run.id,
                            release.short()
                        ),
                    },
                    &request.actor,
                )?;
            }
        }
        self.counters.runs_requested.fetch_add(1, Ordering::Relaxed);
        self.event(
            &request.actor,
            "run.requested",
            env,
            Some(&run.id),
            request.reason.as_deref(),
            json!({"release": release.hash, "head": release.head}),
        )?;
        self.transition(&mut run, RunState::Queued, &request.actor)?;
        Ok(run)
    }

    /// Records an approval. Self-approval and approvers the policy does not name are refused;
    /// approving twice is harmless.
    pub async fn approve(
        self: &Arc<Self>,
        run_id: &str,
        actor: &str,
        comment: Option<String>,
    ) -> Result<Run> {
        let run = self.record_approval(run_id, actor, comment).await?;
        // The gates are looked at again at once, so the answer (and whoever follows the run
        // from it) sees what the approval opened, not the gate it just satisfied.
        self.tick().await?;
        self.run(&run.id)
    }

    async fn record_approval(
        &self,
        run_id: &str,
        actor: &str,
        comment: Option<String>,
    ) -> Result<Run> {
        let _decisions = self.decisions.lock().await;
        let mut run = self.run(run_id)?;
        if !run.state.is_waiting() {
            return Err(Error::Conflict(format!(
                "run {} is {}; only a waiting run can be approved",
                run.id,
                run.state.describe()
            )));
        }
        let policy = self.loaded().policies.for_env(&run.environment);
        if actor == run.requested_by {
            return Err(Error::Refused(format!(
                "`{actor}` requested run {} and cannot approve it; another approver must",
                run.id
            )));
        }
        if !policy.approvals.may_approve(actor) {
            return Err(Error::Refused(format!(
                "the policy of `{}` accepts approvals only from {}",
                run.environment,
                policy.approvals.from.join(", ")
            )));
        }
        let now = Utc::now();
        let mine = |a: &&Approval| a.by == actor;
        if run
            .approvals
            .iter()
            .filter(mine)
            .any(|a| super::gates::approval_is_current(&policy, a, now))
        {
            return Ok(run);
        }
        // An approval of theirs that expired is renewed by approving again.
        let renewed = run.approvals.iter().any(|a| a.by == actor);
        run.approvals.push(Approval {
            by: actor.into(),
            at: now,
            comment: comment.clone(),
        });
        self.save(&run)?;
        self.event(
            actor,
            "run.approved",
            &run.environment,
            Some(&run.id),
            comment.as_deref(),
            json!({
                "approvals": super::gates::valid_approvals(&policy, &run, now),
                "renewed": renewed,
            }),
        )?;
        self.tell_listeners(&run);
        self.wake.notify_one();
        Ok(run)
    }

    /// An approver stops a waiting run.
    pub async fn reject(&self, run_id: &str, actor: &str, reason: &str) -> Result<Run> {
        let _decisions = self.decisions.lock().await;
        let mut run = self.run(run_id)?;
        if !run.state.is_waiting() {
            return Err(Error::Conflict(format!(
                "run {} is {}; only a waiting run can be rejected",
                run.id,
                run.state.describe()
            )));
        }
        if actor == run.requested_by {
            return Err(Error::Refused(format!(
                "`{actor}` requested run {}; cancel it instead of rejecting it",
                run.id
            )));
        }
        self.transition(
            &mut run,
            RunState::Rejected {
                reason: format!("rejected by {actor}: {reason}"),
            },
            actor,
        )?;
        Ok(run)
    }

    /// Cancels a waiting run, or a halted one (the environment stays as it is; the reason is
    /// recorded).
    pub async fn cancel(&self, run_id: &str, actor: &str, reason: &str) -> Result<Run> {
        let _decisions = self.decisions.lock().await;
        let mut run = self.run(run_id)?;
        match &run.state {
            s if s.is_waiting() => {}
            RunState::Halted { .. } => {}
            other => {
                return Err(Error::Conflict(format!(
                    "run {} is {}; only a waiting or halted run can be cancelled",
                    run.id,
                    other.describe()
                )))
            }
        }
        self.transition(
            &mut run,
            RunState::Cancelled {
                reason: format!("cancelled by {actor}: {reason}"),
            },
            actor,
        )?;
        self.wake.notify_one();
        Ok(run)
    }

    /// Continues a halted run from the step it stopped at.
    pub async fn resume(self: &Arc<Self>, run_id: &str, actor: &str) -> Result<Run> {
        let _decisions = self.decisions.lock().await;
        let mut run = self.run(run_id)?;
        let RunState::Halted { .. } = &run.state else {
            return Err(Error::Conflict(format!(
                "run {} is {}; only a halted run can be resumed",
                run.id,
                run.state.describe()
            )));
        };
        let next = table::resume_point(&run);
        self.transition(&mut run, next, actor)?;
        self.spawn_driver(&run);
        Ok(run)
    }

    /// Puts an environment back where it was before its last successful promotion: down
    /// scripts or the snapshot, as its policy's ladder says. Skips gates: it is the way out.
    pub async fn request_rollback(
        self: &Arc<Self>,
        env: &str,
        actor: &str,
        reason: &str,
        request_origin: Option<Origin>,
    ) -> Result<Run> {
        let loaded = self.loaded();
        loaded.environment(env)?;
        let _decisions = self.decisions.lock().await;
        let runs = self.store.runs()?;
        if let Some(holder) = holder_of(&runs, env) {
            if matches!(holder.state, RunState::Halted { .. }) && holder.kind == RunKind::Promotion
            {
                return self.roll_back_halted(&loaded, holder.clone(), actor, reason);
            }
            return Err(Error::Conflict(format!(
                "run {} is {} on `{env}`; cancel or finish it first",
                holder.id,
                holder.state.describe()
            )));
        }
        let state = self.store.environment_state(env)?;
        let last = state
            .run_id
            .as_deref()
            .and_then(|id| runs.iter().find(|r| r.id == id))
            .filter(|r| r.kind == RunKind::Promotion && !r.applied.is_empty())
            .ok_or_else(|| {
                Error::Conflict(format!(
                    "`{env}` has no promotion by sluice to roll back (its last run applied nothing)"
                ))
            })?;
        let now = Utc::now();
        let mut run = Run {
            id: uuid::Uuid::new_v4().to_string(),
            kind: RunKind::Rollback,
            environment: env.into(),
            release: last.release.clone(),
            head: last.head.clone(),
            previous_release: last.previous_release.clone(),
            requested_by: actor.into(),
            reason: Some(reason.into()),
            created_at: now,
            updated_at: now,
            state: RunState::Queued,
            transitions: Vec::new(),
            plan: last.applied.clone(),
            applied: last.applied.clone(),
            snapshot: last.snapshot.clone(),
            approvals: Vec::new(),
            measurements: Vec::new(),
            health: None,
            error: None,
            rolls_back: Some(last.id.clone()),
            origin: request_origin,
        };
        self.counters.runs_requested.fetch_add(1, Ordering::Relaxed);
        self.event(
            actor,
            "rollback.requested",
            env,
            Some(&run.id),
            Some(reason),
            json!({"rolls_back": last.id, "release": last.release}),
        )?;
        self.transition(&mut run, RunState::Queued, actor)?;
        let method =
            machine::choose_method(&loaded, &loaded.policies.for_env(env), &run, &run.applied)
                .map_err(Error::Conflict)?;
        self.transition(
            &mut run,
            RunState::RollingBack {
                method,
                reason: format!("requested by {actor}: {reason}"),
            },
            actor,
        )?;
        self.spawn_driver(&run);
        Ok(run)
    }

    /// Rolls back a halted promotion itself (what it applied), by the policy's full ladder: the
    /// way out a halt offers when the policy says `on_failure = "halt"` or a person prefers it
    /// to resuming. Called with the decisions lock held.
    fn roll_back_halted(
        self: &Arc<Self>,
        loaded: &Loaded,
        mut run: Run,
        actor: &str,
        reason: &str,
    ) -> Result<Run> {
        if run.applied.is_empty() {
            return Err(Error::Conflict(format!(
                "run {} is halted on `{}` and applied nothing, so there is nothing to roll back; \
                 cancel it: `sluice cancel {} --reason \"…\"`",
                run.id, run.environment, run.id
            )));
        }
        let policy = loaded.policies.for_env(&run.environment);
        let method =
            machine::choose_method(loaded, &policy, &run, &run.applied).map_err(Error::Conflict)?;
        self.event(
            actor,
            "rollback.requested",
            &run.environment,
            Some(&run.id),
            Some(reason),
            json!({"rolls_back": run.id, "halted": true}),
        )?;
        self.transition(
            &mut run,
            RunState::RollingBack {
                method,
                reason: format!("requested by {actor}: {reason}"),
            },
            actor,
        )?;
        self.spawn_driver(&run);
        Ok(run)
    }

    /// What a promotion of `env` would do now, without changing anything: the release it would
    /// bring (the upstream environment's, else the newest), the migrations the target's history
    /// says would run and how, and the gates that would hold it. For `plan` in chat-ops.
    pub async fn plan(&self, env: &str, release: Option<&str>, actor: &str) -> Result<PlanView> {
        let loaded = self.loaded();
        let environment = loaded.environment(env)?.clone();
        let policy = loaded.policies.for_env(env);
        let release = match (release, &policy.from) {
            (Some(wanted), _) => self.resolve_release(Some(wanted))?,
            (None, Some(from)) => match self.store.environment_state(from)?.release {
                Some(hash) => self.resolve_release(Some(&hash))?,
                None => self.resolve_release(None)?,
            },
            (None, None) => self.resolve_release(None)?,
        };
        let mut target = crate::target::connect(&environment).await?;
        let planned = async {
            let ctx = crate::apply::Context::new(&environment, &loaded.set, target.as_ref())?;
            let options = crate::apply::ApplyOptions {
                to: release.head.clone(),
                dry_run: true,
                ..crate::apply::ApplyOptions::default()
            };
            crate::apply::apply(target.as_mut(), &ctx, &options, &crate::apply::Silent).await
        }
        .await;
        let _ = target.close().await;
        let planned = planned?;
        let runs = self.store.runs()?;
        let now = Utc::now();
        let mut probe = Run::promotion(env, &release, None, actor, None, None);
        probe.id = "(plan)".into();
        let upstream = self.upstream_of(&policy)?;
        let upstream = upstream
            .as_ref()
            .map(|(state, release)| (state, release.as_ref()));
        let names: Vec<String> = planned.plan.iter().map(|m| m.name.clone()).collect();
        let lint = crate::migrations::lint::lint_migrations(
            &loaded.set,
            Some(&names),
            crate::migrations::lint::LintOptions::default(),
        );
        let gates = closed_gates(&GateInput {
            policy: &policy,
            run: &probe,
            release: &release,
            upstream,
            ahead: holder_of(&runs, env),
            lint: Some(&lint),
            now,
        })
        .into_iter()
        .map(|g| {
            g.sentence()
                .replace("sluice approve (plan)", "sluice approve <run>")
        })
        .collect();
        Ok(PlanView {
            lint,
            environment: env.into(),
            release: release.hash.clone(),
            head: release.head.clone(),
            current_release: self.store.environment_state(env)?.release,
            migrations: planned.plan,
            gates,
        })
    }

    /// The state and release of the environment feeding `policy`'s, for the upstream and soak
    /// gates; `None` for an entry point.
    fn upstream_of(
        &self,
        policy: &crate::policy::Policy,
    ) -> Result<Option<(crate::store::EnvironmentState, Option<Release>)>> {
        let Some(from) = &policy.from else {
            return Ok(None);
        };
        let state = self.store.environment_state(from)?;
        let release = match &state.release {
            Some(hash) => self.store.release(hash)?,
            None => None,
        };
        Ok(Some((state, release)))
    }

    /// The lint of the migrations `release` adds to what `env` is on (as sluice recorded it),
    /// when the policy has lint rules; the gate judges what a run would bring.
    fn lint_for(
        &self,
        loaded: &Loaded,
        env: &str,
        release: &Release,
        policy: &crate::policy::Policy,
    ) -> Result<Option<crate::migrations::lint::LintReport>> {
        if policy.lint.block.is_empty() && policy.lint.require_approval.is_empty() {
            return Ok(None);
        }
        let current: Vec<String> = match self.store.environment_state(env)?.release {
            Some(hash) => self
                .store
                .release(&hash)?
                .map(|r| r.migrations.into_iter().map(|m| m.name).collect())
                .unwrap_or_default(),
            None => Vec::new(),
        };
        let names: Vec<String> = release
            .migrations
            .iter()
            .map(|m| m.name.clone())
            .filter(|n| !current.contains(n))
            .collect();
        Ok(Some(crate::migrations::lint::lint_migrations(
            &loaded.set,
            Some(&names),
            crate::migrations::lint::LintOptions::default(),
        )))
    }

    /// Looks at every waiting run once: updates what it waits for, and starts the first run of
    /// each free environment whose gates are all open.
    pub async fn tick(self: &Arc<Self>) -> Result<()> {
        if self.is_stopping() {
            return Ok(());
        }
        self.counters.ticks.fetch_add(1, Ordering::Relaxed);
        let loaded = self.loaded();
        let _decisions = self.decisions.lock().await;
        let runs = self.store.open_runs()?;
        let now = Utc::now();
        for env in loaded.environments.keys() {
            let holder = holder_of(&runs, env);
            let waiting: Vec<&Run> = runs
                .iter()
                .filter(|r| &r.environment == env && r.state.is_waiting())
                .collect();
            let policy = loaded.policies.for_env(env);
            let mut ahead = holder;
            for run in waiting {
                let Some(release) = self.store.release(&run.release)? else {
                    continue;
                };
                let upstream = self.upstream_of(&policy)?;
                let upstream = upstream
                    .as_ref()
                    .map(|(state, release)| (state, release.as_ref()));
                let lint = self.lint_for(&loaded, env, &release, &policy)?;
                let closed = closed_gates(&GateInput {
                    policy: &policy,
                    run,
                    release: &release,
                    upstream,
                    ahead,
                    lint: lint.as_ref(),
                    now,
                });
                let mut run = run.clone();
                if closed.is_empty() {
                    self.transition(&mut run, RunState::Locked, MACHINE_ACTOR)?;
                    self.spawn_driver(&run);
                    break;
                }
                let changed = match &run.state {
                    RunState::Gated { gates } => gate_kinds(gates) != gate_kinds(&closed),
                    _ => true,
                };
                if changed {
                    self.transition(&mut run, RunState::Gated { gates: closed }, MACHINE_ACTOR)?;
                } else if let RunState::Gated { gates } = &mut run.state {
                    if *gates != closed {
                        *gates = closed;
                        self.save(&run)?;
                    }
                }
                if ahead.is_none() {
                    // Later waiting runs queue behind this one.
                    ahead = runs.iter().find(|r| r.id == run.id);
                }
            }
        }
        Ok(())
    }

    /// Starts a driver for every run that holds its environment and has none (after a crash
    /// or restart). Halted runs wait for a person.
    pub async fn recover(self: &Arc<Self>) -> Result<Vec<Run>> {
        let _decisions = self.decisions.lock().await;
        // What an interrupted snapshot left is undone in the background: it may have to wait
        // for a copy the server is still finishing, and a run that reaches the environment first
        // does the same before it plans.
        for env in self.loaded().environments.values() {
            let env = env.clone();
            let engine = self.clone();
            tokio::spawn(async move {
                let request = super::Request {
                    actor: MACHINE_ACTOR.into(),
                    reason: Some("sluice started".into()),
                };
                let progress = crate::snapshot::Quiet;
                if let Err(err) =
                    super::recover_environment(&env, engine.store(), &request, &progress).await
                {
                    tracing::error!(environment = %env.name, error = %err, "undoing what an interrupted snapshot left failed");
                }
            });
        }
        let mut resumed = Vec::new();
        for run in self.store.runs()? {
            if run.state.holds_environment() && !matches!(run.state, RunState::Halted { .. }) {
                tracing::warn!(run = %run.id, environment = %run.environment, state = %run.state.describe(), "resuming an unfinished run");
                self.event(
                    MACHINE_ACTOR,
                    "run.recovering",
                    &run.environment,
                    Some(&run.id),
                    None,
                    json!({"state": run.state.name()}),
                )?;
                self.spawn_driver(&run);
                resumed.push(run);
            }
        }
        Ok(resumed)
    }

    fn spawn_driver(self: &Arc<Self>, run: &Run) {
        let Ok(mut drivers) = self.drivers.lock() else {
            return;
        };
        if let Some(existing) = drivers.get(&run.environment) {
            if !existing.is_finished() {
                return;
            }
        }
        let engine = self.clone();
        let run_id = run.id.clone();
        let handle = tokio::spawn(async move {
            if let Err(err) = machine::drive(engine.as_ref(), &run_id).await {
                tracing::error!(run = %run_id, error = %err, "run driver stopped");
            }
            engine.wake.notify_one();
        });
        drivers.insert(run.environment.clone(), handle);
    }

    /// Called by the machine when a run succeeded: requests promotions downstream where the
    /// policy says `auto_promote`.
    pub(crate) async fn after_success(&self, run: &Run) -> Result<()> {
        if !self.options.auto_promote || run.kind != RunKind::Promotion {
            return Ok(());
        }
        let loaded = self.loaded();
        for policy in loaded.policies.downstream(&run.environment) {
            if !policy.auto_promote {
                continue;
            }
            let request = PromotionRequest {
                to: policy.environment.clone(),
                release: Some(run.release.clone()),
                ladder: false,
                actor: MACHINE_ACTOR.into(),
                reason: Some(format!(
                    "auto-promote: `{}` succeeded with release {}",
                    run.environment,
                    short_hash(&run.release)
                )),
                origin: run
                    .origin
                    .clone()
                    .filter(|o| matches!(o, Origin::Slack { .. })),
            };
            match self.request_promotion(&request).await {
                Ok(_) => {}
                Err(Error::Conflict(why)) => {
                    tracing::info!(environment = %policy.environment, reason = %why, "no auto-promotion")
                }
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// Whether shutdown has begun.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Resolves when shutdown begins.
    pub(crate) fn stop_receiver(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stop_signal.subscribe()
    }

    /// Runs gates every tick (and whenever something changes) until shutdown.
    pub async fn run_ticker(self: Arc<Self>) {
        let mut stop = self.stop_receiver();
        loop {
            if let Err(err) = self.tick().await {
                tracing::error!(error = %err, "evaluating gates failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(self.options.tick) => {}
                _ = self.wake.notified() => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Wakes the ticker now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Begins shutdown: no run starts, each driver finishes or parks its current step; waits
    /// for them.
    pub async fn shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let _ = self.stop_signal.send(true);
        let handles: Vec<_> = match self.drivers.lock() {
            Ok(mut drivers) => drivers.drain().map(|(_, h)| h).collect(),
            Err(_) => Vec::new(),
        };
        for handle in handles {
            let _ = handle.await;
        }
    }

    /// Whether a driver is working on `environment` now.
    pub fn is_driving(&self, environment: &str) -> bool {
        self.drivers
            .lock()
            .map(|d| d.get(environment).is_some_and(|h| !h.is_finished()))
            .unwrap_or(false)
    }

    /// Whether any driver is working.
    pub fn any_driving(&self) -> bool {
        self.drivers
            .lock()
            .map(|d| d.values().any(|h| !h.is_finished()))
            .unwrap_or(false)
    }

    /// The project root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the environments' files are.
    pub fn environments_dir(&self) -> PathBuf {
        self.root.join(ENVIRONMENTS_DIR)
    }
}

#[async_trait::async_trait]
impl Journal for Engine {
    fn run(&self, id: &str) -> Result<Run> {
        Engine::run(self, id)
    }
    fn loaded(&self) -> Arc<Loaded> {
        Engine::loaded(self)
    }
    fn store(&self) -> &dyn Store {
        Engine::store(self)
    }
    fn is_stopping(&self) -> bool {
        Engine::is_stopping(self)
    }
    fn stop_receiver(&self) -> tokio::sync::watch::Receiver<bool> {
        Engine::stop_receiver(self)
    }
    fn transition(&self, run: &mut Run, state: RunState, actor: &str) -> Result<()> {
        Engine::transition(self, run, state, actor)
    }
    fn save(&self, run: &Run) -> Result<()> {
        Engine::save(self, run)
    }
    fn event(
        &self,
        actor: &str,
        action: &str,
        environment: &str,
        run_id: Option<&str>,
        reason: Option<&str>,
        detail: serde_json::Value,
    ) -> Result<()> {
        Engine::event(self, actor, action, environment, run_id, reason, detail)
    }
    fn report_drift(
        &self,
        event: &str,
        run_id: Option<&str>,
        report: &crate::drift::check::DriftReport,
        detail: serde_json::Value,
    ) -> Result<()> {
        Engine::report_drift(self, event, run_id, report, detail)
    }
    async fn check_drift(&self, environment: &str) -> Result<crate::drift::check::DriftReport> {
        Engine::check_drift(self, environment).await
    }
    async fn after_success(&self, run: &Run) -> Result<()> {
        Engine::after_success(self, run).await
    }
}

/// The run that holds `environment` (from `locked` until it ends, `halted` included), if any.
pub fn holder_of<'a>(runs: &'a [Run], environment: &str) -> Option<&'a Run> {
    runs.iter()
        .find(|r| r.environment == environment && r.state.holds_environment())
}

/// The gate kinds of a list of closed gates (`soak`, `approval`, …): a change of kind is a
/// transition worth recording; a change of only the numbers is not.
fn gate_kinds(gates: &[Gate]) -> Vec<GateKind> {
    gates.iter().map(|g| g.kind).collect()
}
