//! One run against one environment: snapshot first when the environment has a `[snapshot]`
//! section and there is something to apply, then apply, then record the outcome. Manual
//! snapshots, restores and pruning are recorded the same way, with who and why.
//!
//! The promotion engine and its state machine live in the submodules.

pub mod engine;
pub mod gates;
pub mod journal;
pub mod loaded;
pub mod machine;
pub mod pruner;
pub mod table;
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
        for line in recover_environment(env, store, request, progress).await? {
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
    progress: &dyn Progress,
) -> Result<Vec<String>> {
    let hazards = StoreHazards::new(store, &env.name);
    if env.snapshot.is_none() || hazards.open()?.is_empty() {
        return Ok(Vec::new());
    }
    let provider = snapshot::provider_for(env).await?;
    let done = provider.recover(&hazards, progress).await?;
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
            preserved_from: None,
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
        Ok(restored) => {
            store.record_snapshot(
                &env.name,
                &SnapshotRecord {
                    name: restored.preserved_as.clone(),
                    run_id: run_id.to_string(),
                    provider: provider.kind().to_string(),
                    created_at: Utc::now(),
                    actor: request.actor.clone(),
                    reason: request.reason.clone(),
                    preserved_from: Some(name.to_string()),
                },
            )?;
            store.append_event(&event(
                env,
                request,
                "restore.succeeded",
                json!({"run_id": run_id, "snapshot": name, "preserved_as": restored.preserved_as}),
            ))?
        }
        Err(err) => store.append_event(&event(
            env,
            request,
            "restore.failed",
            json!({"run_id": run_id, "snapshot": name, "error": err.to_string()}),
        ))?,
    }
    result
}

/// One copy in a listing, with who made it, when and by whom a preserved copy was kept, and
/// what retention says.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Listed {
    /// The provider's view.
    #[serde(flatten)]
    pub snapshot: Snapshot,
    /// sluice's record of it, if sluice made it.
    pub record: Option<SnapshotRecord>,
    /// For a preserved copy: when the restore that kept it ran.
    pub preserved_at: Option<chrono::DateTime<Utc>>,
    /// For a preserved copy: who asked for that restore (`sluice` for its own rollbacks, whose
    /// reason names the person who requested one).
    pub preserved_by: Option<String>,
    /// For a preserved copy: the run that restored.
    pub preserved_run: Option<String>,
    /// For a preserved copy: why.
    pub preserved_reason: Option<String>,
    /// Retention's verdict.
    pub verdict: retention::Verdict,
}

/// An environment's copies as `sluice snapshots --json` and the API show them.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SnapshotListing {
    /// The environment.
    pub environment: String,
    /// Its snapshot provider.
    pub provider: String,
    /// Its snapshots and preserved copies, oldest first.
    pub snapshots: Vec<Listed>,
}

/// Who is pruning: the rules are the same, but the daemon's automatic pruning also leaves the
/// newest preserved copy of each environment for a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pruner {
    /// `sluice snapshots prune` or `POST /v1/environments/{env}/snapshots/prune`.
    Person,
    /// The daemon, after a run ended.
    Daemon,
}

/// The copies no rule may delete, each with why: the last success's snapshot; every
/// snapshot and preserved copy of a run that has not ended (a halted run's included: a person
/// may still roll back with it), found by the run token in their names or the run's own
/// `snapshot`; and, for the daemon, the newest preserved copy. Read after the provider listed
/// the copies: a run's intent is stored before its snapshot is made, so every copy listed
/// belongs to a run this reading sees.
fn protected(
    env: &Environment,
    copies: &[Snapshot],
    store: &dyn Store,
    pruner: Pruner,
) -> Result<std::collections::HashMap<String, retention::Verdict>> {
    let mut protected = std::collections::HashMap::new();
    for run in store
        .runs()?
        .into_iter()
        .filter(|r| r.environment == env.name)
    {
        if run.state.is_final() {
            continue;
        }
        let token = snapshot::run_token(&run.id);
        for copy in copies {
            if copy.run.as_deref() == Some(token.as_str())
                || run.snapshot.as_ref() == Some(&copy.name)
            {
                protected.insert(copy.name.clone(), retention::Verdict::KeepUnfinishedRun);
            }
        }
    }
    if let Some(name) = store.last_success(&env.name)?.and_then(|s| s.snapshot) {
        protected.insert(name, retention::Verdict::KeepLastSuccess);
    }
    if pruner == Pruner::Daemon {
        let newest = copies
            .iter()
            .filter(|c| c.kind == snapshot::SnapshotKind::Preserved)
            .max_by(|a, b| (a.created_at, &a.name).cmp(&(b.created_at, &b.name)));
        if let Some(newest) = newest {
            protected
                .entry(newest.name.clone())
                .or_insert(retention::Verdict::KeepNewestPreserved);
        }
    }
    Ok(protected)
}

/// The retention rules of an environment (its `[snapshot.retention]`, or the default when it
/// sets none).
pub fn retention_of(env: &Environment) -> crate::config::Retention {
    env.snapshot
        .as_ref()
        .map(|s| s.retention.clone())
        .unwrap_or_default()
}

/// Lists snapshots and preserved copies with their retention verdicts for `pruner`, and for
/// preserved copies when, by whom and why they were kept (from the store's record, or for
/// copies preserved before sluice recorded them, from the `restore.succeeded` event).
///
/// Retention ranks and ages each copy by when sluice made it: a snapshot by its record, a
/// preserved copy by when it was preserved. A provider's own time says when the copy's data
/// was created (a preserved PostgreSQL database is as old as the database it was), and often
/// only to the second.
pub async fn list_snapshots(
    env: &Environment,
    provider: &dyn SnapshotProvider,
    store: &dyn Store,
    pruner: Pruner,
) -> Result<Vec<Listed>> {
    let copies = provider.list().await?;
    let records = store.snapshots(&env.name)?;
    let unrecorded_preserved = copies.iter().any(|c| {
        c.kind == snapshot::SnapshotKind::Preserved && !records.iter().any(|r| r.name == c.name)
    });
    let restores: Vec<Event> = if unrecorded_preserved {
        store
            .events(Some(&env.name))?
            .into_iter()
            .filter(|e| e.action == "restore.succeeded")
            .collect()
    } else {
        Vec::new()
    };
    let listed: Vec<Listed> = copies
        .into_iter()
        .map(|snapshot| {
            let record = records.iter().find(|r| r.name == snapshot.name).cloned();
            let mut listed = Listed {
                record,
                snapshot,
                preserved_at: None,
                preserved_by: None,
                preserved_run: None,
                preserved_reason: None,
                verdict: retention::Verdict::KeepNoRule,
            };
            if listed.snapshot.kind == snapshot::SnapshotKind::Preserved {
                match &listed.record {
                    Some(r) => {
                        listed.preserved_at = Some(r.created_at);
                        listed.preserved_by = Some(r.actor.clone());
                        listed.preserved_run = Some(r.run_id.clone());
                        listed.preserved_reason = r.reason.clone();
                    }
                    None => {
                        if let Some(e) = restores.iter().rev().find(|e| {
                            e.detail.get("preserved_as").and_then(|v| v.as_str())
                                == Some(listed.snapshot.name.as_str())
                        }) {
                            listed.preserved_at = Some(e.at);
                            listed.preserved_by = Some(e.actor.clone());
                            listed.preserved_run = e.run_id.clone();
                            listed.preserved_reason = e.reason.clone();
                        }
                    }
                }
            }
            listed
        })
        .collect();
    let ranked: Vec<Snapshot> = listed
        .iter()
        .map(|l| {
            let made = match l.snapshot.kind {
                snapshot::SnapshotKind::Preserved => l.preserved_at,
                snapshot::SnapshotKind::Snapshot => l.record.as_ref().map(|r| r.created_at),
            };
            Snapshot {
                created_at: made.or(l.snapshot.created_at),
                ..l.snapshot.clone()
            }
        })
        .collect();
    let protected = protected(env, &ranked, store, pruner)?;
    let verdicts = retention::verdicts(&ranked, &retention_of(env), &protected, Utc::now());
    Ok(listed
        .into_iter()
        .zip(verdicts)
        .map(|(listed, verdict)| Listed { verdict, ..listed })
        .collect())
}

/// One prune at a time in this process: the daemon's after a run and a person's through the
/// API may otherwise race to delete the same copy.
static PRUNING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Deletes what retention allows (or, with `dry_run`, says what it would delete). A person's
/// prune is recorded as `snapshot.pruned` even when it deletes nothing; the daemon's only when
/// it deleted something.
pub async fn prune(
    env: &Environment,
    provider: &dyn SnapshotProvider,
    store: &dyn Store,
    request: &Request,
    dry_run: bool,
    pruner: Pruner,
) -> Result<Vec<String>> {
    let _one_at_a_time = PRUNING.lock().await;
    let listed = list_snapshots(env, provider, store, pruner).await?;
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
                    json!({"deleted": deleted, "failed": name, "error": err.to_string()}),
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
    if pruner == Pruner::Person || !deleted.is_empty() {
        store.append_event(&event(
            env,
            request,
            "snapshot.pruned",
            json!({"deleted": deleted}),
        ))?;
    }
    Ok(deleted)
}
