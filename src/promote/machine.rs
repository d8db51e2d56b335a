//! The run state machine's steps: locked → snapshotted → applying → verifying → succeeded, or
//! rolling back → rolled back, or halted. Each step writes the state it enters before it acts
//! (see `Engine::transition`), and each is safe to run again after a crash: the snapshot has a
//! name derived from the run id, applied migrations are read back from the target's history
//! table, restores and down scripts finish what an interrupted attempt started.

use std::sync::Mutex;

use serde_json::json;

use crate::apply::{self, revert, ApplyOptions, Context, Observer, State};
use crate::config::Environment;
use crate::error::{Error, Result};
use crate::health::{self, HealthOutcome, Measurement};
use crate::migrations::classify::TxMode;
use crate::policy::{DriftRule, FailureAction, InconclusiveAction, Policy, RollbackMethod};
use crate::snapshot::{self, Quiet};
use crate::store::records::{method_name, short_hash};
use crate::store::{
    EnvironmentState, RecordedMeasurement, Release, ReleaseOnEnvironment, Run, RunKind, RunState,
};
use crate::target;

use super::journal::Journal;
use super::loaded::{Loaded, MACHINE_ACTOR};
use super::Request;

/// How many earlier releases an environment's state keeps.
const HISTORY_KEPT: usize = 20;

/// Drives one run until it ends, halts, or the engine stops (then it parks between steps and
/// the next start picks it up).
pub async fn drive(engine: &dyn Journal, run_id: &str) -> Result<()> {
    loop {
        if engine.is_stopping() {
            return Ok(());
        }
        let mut run = engine.run(run_id)?;
        let loaded = engine.loaded();
        match run.state.clone() {
            RunState::Locked => locked(engine, &loaded, &mut run).await?,
            RunState::Snapshotted | RunState::Applying { .. } => {
                applying(engine, &loaded, &mut run).await?
            }
            RunState::Verifying => {
                if !verifying(engine, &loaded, &mut run).await? {
                    return Ok(());
                }
            }
            RunState::RollingBack { method, reason } => {
                rolling_back(engine, &loaded, &mut run, method, &reason).await?
            }
            _ => return Ok(()),
        }
    }
}

fn halt(engine: &dyn Journal, run: &mut Run, reason: String) -> Result<()> {
    run.error = Some(reason.clone());
    engine.save(run)?;
    engine.transition(run, RunState::Halted { reason }, MACHINE_ACTOR)
}

/// The release's migrations must be in the directory exactly as recorded; otherwise applying
/// "the release" would apply something else.
fn check_release_files(loaded: &Loaded, release: &Release) -> std::result::Result<(), String> {
    for m in &release.migrations {
        match loaded.set.get(&m.name) {
            Some(found) if found.checksum_matches(&m.checksum) => {}
            Some(_) => {
                return Err(format!(
                    "migration `{}` of release {} was edited after the release was recorded",
                    m.name,
                    release.short()
                ))
            }
            None => {
                return Err(format!(
                    "migration `{}` of release {} is no longer in {}",
                    m.name,
                    release.short(),
                    loaded.set.dir.display()
                ))
            }
        }
    }
    Ok(())
}

fn environment<'a>(loaded: &'a Loaded, run: &Run) -> Result<&'a Environment> {
    loaded.environment(&run.environment)
}

fn release_of(engine: &dyn Journal, run: &Run) -> Result<Release> {
    engine
        .store()
        .release(&run.release)?
        .ok_or_else(|| Error::NotFound(format!("release {} is not recorded", run.release)))
}

fn options(run: &Run) -> ApplyOptions {
    ApplyOptions {
        to: run.head.clone(),
        run_id: run.id.clone(),
        ..ApplyOptions::default()
    }
}

async fn locked(engine: &dyn Journal, loaded: &Loaded, run: &mut Run) -> Result<()> {
    let env = environment(loaded, run)?.clone();
    let release = release_of(engine, run)?;
    if let Err(why) = check_release_files(loaded, &release) {
        return halt(engine, run, format!("{why}; nothing was changed"));
    }
    let request = Request {
        actor: MACHINE_ACTOR.into(),
        reason: Some(format!("before run {}", run.id)),
    };
    if let Err(err) = super::recover_environment(&env, engine.store(), &request, &Quiet).await {
        return halt(
            engine,
            run,
            format!(
                "an interrupted snapshot or restore left `{}` unusable and sluice could not undo it, \
                 nothing was changed: {err}",
                run.environment
            ),
        );
    }
    let planned = match plan(&env, loaded, run).await {
        Ok(p) => p,
        Err(err) => {
            return halt(
                engine,
                run,
                format!("could not plan the run, nothing was changed: {err}"),
            )
        }
    };
    run.plan = planned;
    engine.save(run)?;
    if run.plan.is_empty() {
        return engine.transition(run, RunState::Verifying, MACHINE_ACTOR);
    }
    let rule = loaded.policies.for_env(&run.environment).drift;
    if run.kind == RunKind::Promotion && rule != DriftRule::Off {
        if let Some(reason) = check_drift(engine, run, rule).await? {
            return halt(engine, run, reason);
        }
    }
    if env.snapshot.is_some() {
        let provider = match snapshot::provider_for(&env).await {
            Ok(p) => p,
            Err(err) => {
                return halt(
                    engine,
                    run,
                    format!("snapshot provider: {err}; nothing was changed"),
                )
            }
        };
        run.snapshot = Some(provider.snapshot_name(&run.id));
        engine.save(run)?;
        let request = Request {
            actor: MACHINE_ACTOR.into(),
            reason: Some(format!("before run {}", run.id)),
        };
        if let Err(err) = super::create_snapshot(
            &env,
            provider.as_ref(),
            engine.store(),
            &request,
            &run.id,
            &Quiet,
        )
        .await
        {
            return halt(
                engine,
                run,
                format!("taking the snapshot failed, nothing was applied: {err}"),
            );
        }
    }
    engine.transition(run, RunState::Snapshotted, MACHINE_ACTOR)
}

/// Compares the environment with the expected schema of what it has applied, before the run
/// changes anything. Returns why the run must stop, if it must. Whatever is found is in the
/// event log and, when it differs, announced to the listeners (notifications).
async fn check_drift(engine: &dyn Journal, run: &Run, rule: DriftRule) -> Result<Option<String>> {
    let blocking = rule == DriftRule::Block;
    match engine.check_drift(&run.environment).await {
        Ok(report) if report.is_clean() => {
            engine.event(
                MACHINE_ACTOR,
                "drift.checked",
                &run.environment,
                Some(&run.id),
                Some(&report.summary()),
                json!({ "release": report.release, "head": report.head, "expected": report.expected }),
            )?;
            Ok(None)
        }
        Ok(report) => {
            engine.report_drift(
                "drift.detected",
                Some(&run.id),
                &report,
                json!({ "rule": rule }),
            )?;
            Ok(blocking.then(|| {
                format!(
                    "{}; nothing was changed (policy drift = \"block\"). Make the database \
                     match (`sluice drift --env {env} --sql` shows how) and resume the run, or \
                     cancel it.\n{}",
                    report.summary(),
                    report.human(),
                    env = run.environment
                )
            }))
        }
        Err(err) => {
            let message = err.to_string();
            engine.event(
                MACHINE_ACTOR,
                "drift.check_failed",
                &run.environment,
                Some(&run.id),
                Some(&message),
                json!({ "rule": rule }),
            )?;
            Ok(blocking.then(|| {
                format!("the drift check failed, nothing was changed (policy drift = \"block\"): {message}")
            }))
        }
    }
}

async fn plan(env: &Environment, loaded: &Loaded, run: &Run) -> Result<Vec<String>> {
    let mut target = target::connect(env).await?;
    let ctx = Context::new(env, &loaded.set, target.as_ref())?;
    let planned = apply::pending(target.as_mut(), &ctx, &options(run)).await;
    let closed = target.close().await;
    let planned = planned?;
    closed?;
    Ok(planned)
}

/// The run whose history rows a run may undo: its own, or for a rollback run the promotion it
/// rolls back.
fn owner_of(run: &Run) -> &str {
    match run.kind {
        RunKind::Rollback => run.rolls_back.as_deref().unwrap_or(&run.id),
        RunKind::Promotion => &run.id,
    }
}

/// What the target's history says about the migrations of a run's plan: which the run applied
/// itself (rows it wrote), which it left partly applied, and which someone else applied after
/// the run planned. A run only ever undoes its own.
#[derive(Debug, Default)]
struct Footprint {
    /// Migrations of the plan the run applied completely.
    applied: Vec<String>,
    /// A migration the run left with statements committed (or interrupted mid-statement).
    partial: Option<String>,
    /// The run's own failed attempts that committed nothing (their rows still block).
    failed_clean: Vec<String>,
    /// Migrations another deployer applied after the run planned, each with who, in words.
    foreign: Vec<String>,
}

impl Footprint {
    fn touched(&self) -> bool {
        !self.applied.is_empty() || self.partial.is_some()
    }
}

async fn footprint(env: &Environment, loaded: &Loaded, run: &Run) -> Result<Footprint> {
    let mut target = target::connect(env).await?;
    let ctx = Context::new(env, &loaded.set, target.as_ref())?;
    let status = apply::status(target.as_mut(), &ctx).await;
    let _ = target.close().await;
    let status = status?;
    let owner = owner_of(run);
    let mut found = Footprint::default();
    for entry in &status.entries {
        let Some(row) = &entry.row else { continue };
        let planned = run.plan.contains(&entry.name);
        let after_head = run.head.as_deref().is_some_and(|h| entry.name.as_str() > h);
        if !row.written_by(owner) {
            if entry.state == State::Applied && (planned || after_head) {
                found.foreign.push(format!(
                    "`{}`{}",
                    entry.name,
                    row.run_id
                        .as_deref()
                        .map(|r| format!(" (by sluice run {r})"))
                        .unwrap_or_default()
                ));
            }
            continue;
        }
        if !planned {
            continue;
        }
        match entry.state {
            State::Applied => found.applied.push(entry.name.clone()),
            State::Interrupted => found.partial = Some(entry.name.clone()),
            State::Failed if entry.progress.as_ref().is_some_and(|p| p.done > 0) => {
                found.partial = Some(entry.name.clone())
            }
            State::Failed => found.failed_clean.push(entry.name.clone()),
            _ => {}
        }
    }
    found
        .applied
        .sort_by_key(|name| run.plan.iter().position(|p| p == name));
    Ok(found)
}

/// The facts of a failure for a run's record, without the command-line advice an apply error
/// carries (a run computes its own next steps from the state it leaves).
fn failure_facts(err: &Error) -> String {
    match err {
        Error::Migration(failure) => format!(
            "{} {}",
            failure.log_text().trim_end().replace('\n', "; "),
            failure.outcome
        ),
        Error::ChangedUnderUs(change) => change.facts(),
        other => other.to_string(),
    }
}

struct RunObserver<'a> {
    engine: &'a dyn Journal,
    run: Mutex<Run>,
    failure: Mutex<Option<Error>>,
}

impl RunObserver<'_> {
    fn with(&self, f: impl FnOnce(&mut Run) -> Result<()>) {
        let Ok(mut run) = self.run.lock() else { return };
        if let Err(err) = f(&mut run) {
            if let Ok(mut failure) = self.failure.lock() {
                failure.get_or_insert(err);
            }
        }
    }
}

impl Observer for RunObserver<'_> {
    fn migration_started(&self, name: &str, _mode: TxMode, _resume_at: Option<usize>) {
        self.with(|run| {
            let index = run.plan.iter().position(|p| p == name).map_or(0, |i| i + 1);
            let state = RunState::Applying {
                index,
                total: run.plan.len(),
                migration: name.into(),
            };
            self.engine.transition(run, state, MACHINE_ACTOR)
        });
    }

    fn migration_finished(&self, name: &str, _elapsed: std::time::Duration) {
        self.with(|run| {
            if !run.applied.iter().any(|a| a == name) {
                run.applied.push(name.into());
            }
            self.engine.save(run)
        });
    }
}

async fn applying(engine: &dyn Journal, loaded: &Loaded, run: &mut Run) -> Result<()> {
    let env = environment(loaded, run)?.clone();
    let release = release_of(engine, run)?;
    if let Err(why) = check_release_files(loaded, &release) {
        return decide_after_failure(engine, loaded, &env, run, Error::Guard(why)).await;
    }
    let first_pass = !run
        .transitions
        .iter()
        .any(|t| matches!(t.state, RunState::Applying { .. }));
    let mut opts = options(run);
    if first_pass && matches!(run.state, RunState::Snapshotted) {
        opts.expected_plan = Some(run.plan.clone());
    }
    let observer = RunObserver {
        engine,
        run: Mutex::new(run.clone()),
        failure: Mutex::new(None),
    };
    let result = async {
        let mut target = target::connect(&env).await?;
        let ctx = Context::new(&env, &loaded.set, target.as_ref())?;
        let result = apply::apply(target.as_mut(), &ctx, &opts, &observer).await;
        let _ = target.close().await;
        result
    }
    .await;
    if let Some(err) = observer.failure.lock().ok().and_then(|mut f| f.take()) {
        return Err(err);
    }
    *run = observer.run.into_inner().unwrap_or_else(|p| p.into_inner());
    match result {
        Ok(_) => {
            match footprint(&env, loaded, run).await {
                Ok(found) => run.applied = found.applied,
                Err(err) => {
                    tracing::warn!(run = %run.id, error = %err, "could not read back the history")
                }
            }
            engine.save(run)?;
            engine.transition(run, RunState::Verifying, MACHINE_ACTOR)
        }
        Err(err) => decide_after_failure(engine, loaded, &env, run, err).await,
    }
}

async fn decide_after_failure(
    engine: &dyn Journal,
    loaded: &Loaded,
    env: &Environment,
    run: &mut Run,
    failure: Error,
) -> Result<()> {
    let facts = failure_facts(&failure);
    run.error = Some(facts.clone());
    engine.save(run)?;
    if let Error::ChangedUnderUs(change) = &failure {
        return halt(
            engine,
            run,
            format!(
                "{}. Next: `sluice cancel {id} --reason \"…\"`, then `sluice promote --to {env} \
                 --release {release} --only` plans again against what is there now, with a new \
                 snapshot",
                change.facts(),
                id = run.id,
                env = run.environment,
                release = short_hash(&run.release),
            ),
        );
    }
    let found = match footprint(env, loaded, run).await {
        Ok(found) => found,
        Err(err) => {
            return halt(
                engine,
                run,
                format!(
                    "{facts}; then reading the history of `{}` failed ({err}), so sluice cannot tell \
                     what was applied and undid nothing. Check the database, then `sluice resume {}` \
                     or `sluice rollback --env {} --reason \"…\"`",
                    env.name, run.id, env.name
                ),
            )
        }
    };
    run.applied = found.applied.clone();
    engine.save(run)?;
    if !found.touched() {
        return halt(engine, run, nothing_applied(run, &facts, &found));
    }
    start_rollback(engine, loaded, run, format!("apply failed: {facts}")).await
}

/// Why a run that applied nothing halts, and the ways on, computed from what it left: resume
/// retries its own failed attempt; a migration that must change needs a new release.
fn nothing_applied(run: &Run, facts: &str, found: &Footprint) -> String {
    let env = &run.environment;
    let id = &run.id;
    let retried = match found.failed_clean.as_slice() {
        [] => String::new(),
        names => format!(
            " ({} runs again)",
            names
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let resolve = found
        .failed_clean
        .iter()
        .map(|n| {
            format!(
                ", `sluice resolve --env {env} --rolled-back {} --reason \"…\"`",
                crate::apply::shell_quote(n)
            )
        })
        .collect::<String>();
    format!(
        "{facts}; nothing was applied by this run, so `{env}` is as it was and nothing was rolled back. \
         Next: if the cause lies outside the migrations (a lock, data, a permission), fix it and \
         `sluice resume {id}`{retried}; if a migration must change, `sluice cancel {id} --reason \
         \"…\"`{resolve}, fix the file and promote the new release"
    )
}

/// The ladder a policy gives for failures, or the full ladder when it says `halt` and a person
/// asked for the rollback.
fn ladder(policy: &Policy, requested: bool) -> Option<Vec<RollbackMethod>> {
    match &policy.rollback.on_failure {
        FailureAction::Ladder(methods) => Some(methods.clone()),
        FailureAction::Halt if requested => {
            Some(vec![RollbackMethod::Down, RollbackMethod::Snapshot])
        }
        FailureAction::Halt => None,
    }
}

/// The first method of the ladder that can undo `applied`, starting after `after` if given.
pub(crate) fn choose_method_from(
    loaded: &Loaded,
    methods: &[RollbackMethod],
    run: &Run,
    applied: &[String],
    after: Option<RollbackMethod>,
) -> std::result::Result<RollbackMethod, String> {
    let start = after
        .and_then(|a| methods.iter().position(|m| *m == a))
        .map_or(0, |i| i + 1);
    let mut why_not = Vec::new();
    for method in &methods[start.min(methods.len())..] {
        match method {
            RollbackMethod::Down => match revert::down_scripts_problem(&loaded.set, applied) {
                None => return Ok(RollbackMethod::Down),
                Some(problem) => why_not.push(format!("down: {problem}")),
            },
            RollbackMethod::Snapshot => match &run.snapshot {
                Some(_) => return Ok(RollbackMethod::Snapshot),
                None => why_not.push("snapshot: no snapshot was taken before the run".into()),
            },
        }
    }
    Err(if why_not.is_empty() {
        "no rollback method is left in the policy's ladder".into()
    } else {
        format!("no rollback method applies ({})", why_not.join("; "))
    })
}

/// The method a person's rollback request uses.
pub(crate) fn choose_method(
    loaded: &Loaded,
    policy: &Policy,
    run: &Run,
    applied: &[String],
) -> std::result::Result<RollbackMethod, String> {
    let methods = ladder(policy, true).unwrap_or_default();
    choose_method_from(loaded, &methods, run, applied, None)
}

async fn start_rollback(
    engine: &dyn Journal,
    loaded: &Loaded,
    run: &mut Run,
    reason: String,
) -> Result<()> {
    let policy = loaded.policies.for_env(&run.environment);
    let Some(methods) = ladder(&policy, false) else {
        return halt(
            engine,
            run,
            format!(
                "{reason}. The policy says `on_failure = \"halt\"`: `{}` is left as it is. Next: roll \
                 this run back with `sluice rollback --env {} --reason \"…\"`, or fix the cause and \
                 `sluice resume {}`",
                run.environment, run.environment, run.id
            ),
        );
    };
    match choose_method_from(loaded, &methods, run, &run.applied.clone(), None) {
        Ok(method) => {
            engine.transition(run, RunState::RollingBack { method, reason }, MACHINE_ACTOR)
        }
        Err(why) => halt(engine, run, format!("{reason}; and {why}")),
    }
}

async fn rolling_back(
    engine: &dyn Journal,
    loaded: &Loaded,
    run: &mut Run,
    method: RollbackMethod,
    reason: &str,
) -> Result<()> {
    let env = environment(loaded, run)?.clone();
    let note = format!("rolled back by sluice run {}: {reason}", run.id);
    if method == RollbackMethod::Snapshot {
        if let Ok(found) = footprint(&env, loaded, run).await {
            if !found.foreign.is_empty() {
                return halt(
                    engine,
                    run,
                    format!(
                        "{reason}; but another deployer applied {} to `{}` after this run planned, and \
                         restoring the snapshot would undo that too: sluice undoes only what its run \
                         applied, so nothing was restored. Next: undo this run's migrations ({}) by \
                         hand, or restore knowingly with `sluice restore --env {} {} --reason \"…\"`",
                        found.foreign.join(", "),
                        run.environment,
                        run.applied.join(", "),
                        run.environment,
                        run.snapshot.as_deref().unwrap_or("SNAPSHOT"),
                    ),
                );
            }
        }
    }
    let mut preserved = None;
    let outcome: Result<()> = match method {
        RollbackMethod::Down => {
            async {
                let mut target = target::connect(&env).await?;
                let ctx = Context::new(&env, &loaded.set, target.as_ref())?;
                let result =
                    revert::revert(target.as_mut(), &ctx, &run.plan, owner_of(run), &note).await;
                let _ = target.close().await;
                result.map(|_| ())
            }
            .await
        }
        RollbackMethod::Snapshot => {
            async {
                let Some(name) = run.snapshot.clone() else {
                    return Err(Error::Snapshot(
                        "no snapshot was taken before the run".into(),
                    ));
                };
                let provider = snapshot::provider_for(&env).await?;
                let request = Request {
                    actor: MACHINE_ACTOR.into(),
                    reason: Some(reason.to_string()),
                };
                super::restore_snapshot(
                    &env,
                    provider.as_ref(),
                    engine.store(),
                    &request,
                    &name,
                    &run.id,
                    &Quiet,
                )
                .await
                .map(|restored| preserved = Some(restored.preserved_as))
            }
            .await
        }
    };
    if let Err(err) = outcome {
        engine.event(
            MACHINE_ACTOR,
            "rollback.failed",
            &run.environment,
            Some(&run.id),
            Some(reason),
            json!({"method": method_name(method), "error": err.to_string()}),
        )?;
        let policy = loaded.policies.for_env(&run.environment);
        let methods = ladder(&policy, run.kind == RunKind::Rollback).unwrap_or_default();
        return match choose_method_from(loaded, &methods, run, &run.applied.clone(), Some(method)) {
            Ok(next) => engine.transition(
                run,
                RunState::RollingBack {
                    method: next,
                    reason: format!(
                        "{reason}; rollback by {} failed: {err}",
                        method_name(method)
                    ),
                },
                MACHINE_ACTOR,
            ),
            Err(_) => halt(
                engine,
                run,
                format!(
                    "{reason}; rolling back by {} failed: {err}. `{}` needs a person: check it, \
                     then resume the run or restore by hand",
                    method_name(method),
                    run.environment
                ),
            ),
        };
    }
    if run.kind == RunKind::Rollback {
        set_environment_release(engine, run, run.previous_release.clone(), None, true)?;
    }
    let kept = preserved
        .map(|p| format!(" (the state it replaced is kept as `{p}`)"))
        .unwrap_or_default();
    let outcome = match run.kind {
        RunKind::Promotion => format!(
            "{reason}. `{}` is back where it was before the run{kept}. Next: fix the cause and \
             promote again",
            run.environment
        ),
        RunKind::Rollback => format!(
            "{reason}. `{}` is back where it was before run {}{kept}",
            run.environment,
            run.rolls_back.as_deref().unwrap_or("?")
        ),
    };
    engine.transition(
        run,
        RunState::RolledBack {
            method,
            reason: outcome,
        },
        MACHINE_ACTOR,
    )
}

fn set_environment_release(
    engine: &dyn Journal,
    run: &Run,
    release: Option<String>,
    head: Option<String>,
    healthy: bool,
) -> Result<()> {
    let store = engine.store();
    let mut state = store.environment_state(&run.environment)?;
    if state.run_id.as_deref() != Some(run.id.as_str()) {
        state.history.insert(
            0,
            ReleaseOnEnvironment {
                release: state.release.clone(),
                since: state.since,
                run_id: state.run_id.clone(),
            },
        );
        state.history.truncate(HISTORY_KEPT);
    }
    let head = match (&release, head) {
        (_, Some(h)) => Some(h),
        (Some(hash), None) => store.release(hash)?.and_then(|r| r.head),
        (None, None) => None,
    };
    store.put_environment_state(
        &run.environment,
        &EnvironmentState {
            release,
            head,
            since: Some(chrono::Utc::now()),
            run_id: Some(run.id.clone()),
            healthy,
            history: state.history,
        },
    )
}

/// Runs the health checks; returns false when it parked because the engine is stopping.
async fn verifying(engine: &dyn Journal, loaded: &Loaded, run: &mut Run) -> Result<bool> {
    let env = environment(loaded, run)?.clone();
    let (outcome, summary) = if env.health.is_empty() {
        (
            HealthOutcome::Successful,
            String::from("no health checks configured"),
        )
    } else {
        let url = match env.database_url() {
            Ok(url) => url,
            Err(err) => {
                halt(engine, run, format!("cannot run the health checks: {err}"))?;
                return Ok(true);
            }
        };
        let shared = Mutex::new(run.clone());
        let sink = |check: &str, measurement: &Measurement| {
            if let Ok(mut run) = shared.lock() {
                run.measurements.push(RecordedMeasurement {
                    check: check.into(),
                    measurement: measurement.clone(),
                });
                if let Err(err) = engine.save(&run) {
                    tracing::error!(error = %err, "recording a measurement failed");
                }
            }
        };
        let mut stop = engine.stop_receiver();
        let (outcome, results) = tokio::select! {
            done = health::run_all(&env.health, &url, &sink) => done,
            _ = stop.changed() => return Ok(false),
        };
        *run = shared.into_inner().unwrap_or_else(|p| p.into_inner());
        let summary = results
            .iter()
            .filter(|r| r.outcome != HealthOutcome::Successful)
            .map(|r| format!("`{}` {}: {}", r.name, r.outcome, r.summary))
            .collect::<Vec<_>>()
            .join("; ");
        (outcome, summary)
    };
    run.health = Some(outcome);
    engine.save(run)?;
    engine.event(
        MACHINE_ACTOR,
        "health.checked",
        &run.environment,
        Some(&run.id),
        None,
        json!({"outcome": outcome, "summary": summary}),
    )?;
    match outcome {
        HealthOutcome::Successful => {
            set_environment_release(
                engine,
                run,
                Some(run.release.clone()),
                run.head.clone(),
                true,
            )?;
            if !run.applied.is_empty() {
                engine.store().set_last_success(
                    &run.environment,
                    &crate::store::LastSuccess {
                        run_id: run.id.clone(),
                        snapshot: run.snapshot.clone(),
                        at: chrono::Utc::now(),
                    },
                )?;
            }
            engine.after_success(run).await?;
            engine.transition(run, RunState::Succeeded, MACHINE_ACTOR)?;
        }
        HealthOutcome::Inconclusive => {
            let policy = loaded.policies.for_env(&run.environment);
            let reason = format!("health checks inconclusive: {summary}");
            match policy.rollback.on_inconclusive {
                InconclusiveAction::Pause => halt(
                    engine,
                    run,
                    format!("{reason}. Resume the run to check again, or roll back"),
                )?,
                InconclusiveAction::Rollback => start_rollback(engine, loaded, run, reason).await?,
            }
        }
        HealthOutcome::Failed | HealthOutcome::Error => {
            start_rollback(
                engine,
                loaded,
                run,
                format!("health checks {outcome}: {summary}"),
            )
            .await?
        }
    }
    Ok(true)
}
