//! One run against one environment: snapshot first when the environment has a `[snapshot]`
//! section and there is something to apply, then apply, then record the outcome. Manual
//! snapshots, restores and pruning are recorded the same way, with who and why.
//!
//! The promotion engine and its state machine live in the submodules.

pub mod engine;
pub mod gates;
pub mod machine;
pub mod views;

use chrono::Utc;
use serde_json::json;

use crate::apply::{self, ApplyOptions, ApplyOutcome, Context, Observer};
use crate::config::Environment;
use crate::error::{Error, Result};
use crate::migrations::MigrationSet;
use crate::snapshot::{
    self, retention, Hazard, HazardLog, NotedHazard, Progress, Restored, Snapshot, SnapshotProvider,
};
use crate::store::{Event, LastSuccess, SnapshotRecord, Store};
use crate::target;

/// Who asked for an action and why, recorded with it.
#[derive(Debug, Clone)]
pub struct Request {
    /// The person (or `sluice`).
    pub actor: String,
    /// Their reason, if they gave one.
    pub reason: Option<String>,
}

fn event(env: &Environment, request: &Request, action: &str, detail: serde_json::Value) -> Event {
    Event {
        at: Utc::now(),
        actor: request.actor.clone(),
        action: action.into(),
        environment: env.name.clone(),
        reason: request.reason.clone(),
        run_id: detail
            .get("run_id")
            .and_then(|v| v.as_str())
            .map(String::from),
        detail,
    }
}

/// What [`run_apply`] did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunOutcome {
    /// The run id.
    pub run_id: String,
    /// The snapshot taken first, if one was.
    pub snapshot: Option<Snapshot>,
    /// What apply did.
    pub apply: ApplyOutcome,
}

/// Everything a run reports to: migration progress and provider progress.
pub trait Reporter: Observer + Progress {}
impl<T: Observer + Progress> Reporter for T {}

/// Takes a snapshot (if configured and anything is pending), applies, and records the run.
pub async fn run_apply(
    env: &Environment,
    set: &MigrationSet,
    store: &dyn Store,
    request: &Request,
    opts: ApplyOptions,
    take_snapshot: bool,
    reporter: &dyn Reporter,
) -> Result<RunOutcome> {
    let (observer, progress): (&dyn Observer, &dyn Progress) = (reporter, reporter);
    let mut opts = opts;
    if !opts.dry_run {
        for line in recover_environment(env, store, request).await? {
            progress.update(&line);
        }
    }
    let mut target = target::connect(env).await?;
    let ctx = Context::new(env, set, target.as_ref())?;
    let mut taken = None;
    if take_snapshot && env.snapshot.is_some() && !opts.dry_run {
        let planned = apply::pending(target.as_mut(), &ctx, &opts).await?;
        if !planned.is_empty() {
            target.close().await?;
            let provider = snapshot::provider_for(env).await?;
            let made = create_snapshot(
                env,
                provider.as_ref(),
                store,
                request,
                &opts.run_id,
                progress,
            )
            .await?;
            taken = Some(made);
            opts.expected_plan = Some(planned);
            target = target::connect(env).await?;
        }
    }
    let ctx = Context::new(env, set, target.as_ref())?;
    let result = apply::apply(target.as_mut(), &ctx, &opts, observer).await;
    let closed = target.close().await;
    if opts.dry_run {
        return Ok(RunOutcome {
            run_id: opts.run_id,
            snapshot: None,
            apply: result?,
        });
    }
    let snapshot_name = taken.as_ref().map(|s| s.name.clone());
    // The database is the truth: once it has answered, a failure to record the answer in the
    // store is reported beside it, never instead of it.
    let recorded = match &result {
        Ok(outcome) => (|| {
            if !outcome.applied.is_empty() {
                store.set_last_success(
                    &env.name,
                    &LastSuccess {
                        run_id: opts.run_id.clone(),
                        snapshot: snapshot_name.clone(),
                        at: Utc::now(),
                    },
                )?;
            }
            store.append_event(&event(
                env,
                request,
                "apply.succeeded",
                json!({"run_id": opts.run_id, "applied": outcome.applied, "snapshot": snapshot_name}),
            ))
        })(),
        Err(err) => store.append_event(&event(
            env,
            request,
            "apply.failed",
            json!({"run_id": opts.run_id, "error": err.to_string(), "snapshot": snapshot_name}),
        )),
    };
    if let Err(store_err) = recorded {
        tracing::error!(
            environment = %env.name,
            run = %opts.run_id,
            "the outcome of this apply is in the database's history table but could not be \
             recorded in the state store: {store_err}"
        );
    }
    let apply = result?;
    closed?;
    Ok(RunOutcome {
        run_id: opts.run_id,
        snapshot: taken,
        apply,
    })
}

/// The state store as one environment's hazard log: marks under `hazard/<env>/`.
pub struct StoreHazards<'a> {
    store: &'a dyn Store,
    prefix: String,
}

impl<'a> StoreHazards<'a> {
    /// The hazard log of `environment` in `store`.
    pub fn new(store: &'a dyn Store, environment: &str) -> StoreHazards<'a> {
        StoreHazards {
            store,
            prefix: format!("hazard/{environment}/"),
        }
    }
}

impl HazardLog for StoreHazards<'_> {
    fn note(&self, hazard: &Hazard, run_id: &str) -> Result<()> {
        let noted = NotedHazard {
            hazard: hazard.clone(),
            run_id: run_id.to_string(),
            at: Utc::now(),
        };
        self.store.put_mark(
            &format!("{}{}", self.prefix, hazard.key()),
            &serde_json::to_value(&noted).unwrap_or_default(),
        )
    }

    fn clear(&self, hazard: &Hazard) -> Result<()> {
        self.store
            .remove_mark(&format!("{}{}", self.prefix, hazard.key()))
    }

    fn open(&self) -> Result<Vec<NotedHazard>> {
        Ok(self
            .store
            .marks(&self.prefix)?
            .into_iter()
            .filter_map(|(_, value)| serde_json::from_value(value).ok())
            .collect())
    }
}

/// Undoes what a crashed snapshot or restore left on `env` (connections blocked for a template
/// copy), before anything else connects to it; each thing undone goes to the audit log.
/// Nothing to do, or no snapshot configured, costs one store read.
pub async fn recover_environment(
    env: &Environment,
    store: &dyn Store,
    request: &Request,
) -> Result<Vec<String>> {
    let hazards = StoreHazards::new(store, &env.name);
    if env.snapshot.is_none() || hazards.open()?.is_empty() {
        return Ok(Vec::new());
    }
    let provider = snapshot::provider_for(env).await?;
    let done = provider.recover(&hazards).await?;
    for line in &done {
        tracing::info!(environment = %env.name, "{line}");
        store.append_event(&event(
            env,
            request,
            "snapshot.recovered",
            json!({"provider": provider.kind(), "done": line}),
        ))?;
    }
    Ok(done)
}

/// Makes the snapshot for `run_id` and records it.
pub async fn create_snapshot(
    env: &Environment,
    provider: &dyn SnapshotProvider,
    store: &dyn Store,
    request: &Request,
    run_id: &str,
    progress: &dyn Progress,
) -> Result<Snapshot> {
    store.append_event(&event(
        env,
        request,
        "snapshot.requested",
        json!({"run_id": run_id, "name": provider.snapshot_name(run_id), "provider": provider.kind()}),
    ))?;
    let hazards = StoreHazards::new(store, &env.name);
    let made = provider.create(run_id, progress, &hazards).await?;
    store.record_snapshot(
        &env.name,
        &SnapshotRecord {
            name: made.name.clone(),
            run_id: run_id.to_string(),
            provider: provider.kind().to_string(),
            created_at: Utc::now(),
            actor: request.actor.clone(),
            reason: request.reason.clone(),
        },
    )?;
    store.append_event(&event(
        env,
        request,
        "snapshot.created",
        json!({"run_id": run_id, "name": made.name, "provider": provider.kind()}),
    ))?;
    Ok(made)
}

/// Restores `name` over the environment, keeping what it replaces, and records it.
pub async fn restore_snapshot(
    env: &Environment,
    provider: &dyn SnapshotProvider,
    store: &dyn Store,
    request: &Request,
    name: &str,
    run_id: &str,
    progress: &dyn Progress,
) -> Result<Restored> {
    store.append_event(&event(
        env,
        request,
        "restore.requested",
        json!({"run_id": run_id, "snapshot": name, "provider": provider.kind()}),
    ))?;
    let hazards = StoreHazards::new(store, &env.name);
    let result = provider.restore(name, run_id, progress, &hazards).await;
    match &result {
        Ok(restored) => store.append_event(&event(
            env,
            request,
            "restore.succeeded",
            json!({"run_id": run_id, "snapshot": name, "preserved_as": restored.preserved_as}),
        ))?,
        Err(err) => store.append_event(&event(
            env,
            request,
            "restore.failed",
            json!({"run_id": run_id, "snapshot": name, "error": err.to_string()}),
        ))?,
    }
    result
}

/// One copy in a listing, with who made it and what retention says.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Listed {
    /// The provider's view.
    #[serde(flatten)]
    pub snapshot: Snapshot,
    /// sluice's record of it, if sluice made it.
    pub record: Option<SnapshotRecord>,
    /// Retention's verdict.
    pub verdict: retention::Verdict,
}

/// Lists snapshots and preserved copies with their retention verdicts.
pub async fn list_snapshots(
    env: &Environment,
    provider: &dyn SnapshotProvider,
    store: &dyn Store,
) -> Result<Vec<Listed>> {
    let copies = provider.list().await?;
    let records = store.snapshots(&env.name)?;
    let protected: Vec<String> = store
        .last_success(&env.name)?
        .and_then(|s| s.snapshot)
        .into_iter()
        .collect();
    let retention = env
        .snapshot
        .as_ref()
        .map(|s| s.retention.clone())
        .unwrap_or_default();
    let verdicts = retention::verdicts(&copies, &retention, &protected, Utc::now());
    Ok(copies
        .into_iter()
        .zip(verdicts)
        .map(|(snapshot, verdict)| Listed {
            record: records.iter().find(|r| r.name == snapshot.name).cloned(),
            snapshot,
            verdict,
        })
        .collect())
}

/// Deletes what retention allows (or, with `dry_run`, says what it would delete).
pub async fn prune(
    env: &Environment,
    provider: &dyn SnapshotProvider,
    store: &dyn Store,
    request: &Request,
    dry_run: bool,
) -> Result<Vec<String>> {
    let listed = list_snapshots(env, provider, store).await?;
    // Snapshots go before preserved copies: on Neon a restore hangs the old snapshots under
    // the preserved branch, which cannot be deleted while it has children.
    let mut doomed: Vec<&Listed> = listed
        .iter()
        .filter(|l| l.verdict == retention::Verdict::Prune)
        .collect();
    doomed.sort_by_key(|l| l.snapshot.kind != snapshot::SnapshotKind::Snapshot);
    let doomed: Vec<String> = doomed.iter().map(|l| l.snapshot.name.clone()).collect();
    if dry_run {
        return Ok(doomed);
    }
    let mut deleted = Vec::new();
    for name in doomed {
        match provider.delete(&name).await {
            Ok(()) => {
                store.forget_snapshot(&env.name, &name)?;
                deleted.push(name);
            }
            Err(err) => {
                store.append_event(&event(
                    env,
                    request,
                    "snapshot.pruned",
                    json!({"deleted": deleted}),
                ))?;
                return Err(Error::Snapshot(format!(
                    "pruning stopped at `{name}`: {err}; deleted before it: {}",
                    if deleted.is_empty() {
                        "nothing".to_string()
                    } else {
                        deleted.join(", ")
                    }
                )));
            }
        }
    }
    store.append_event(&event(
        env,
        request,
        "snapshot.pruned",
        json!({"deleted": deleted}),
    ))?;
    Ok(deleted)
}
