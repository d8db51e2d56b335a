//! The daemon's retention: after each run ends (succeeded, rolled back, cancelled, rejected,
//! or halted for a person), the environment's snapshots and preserved copies are pruned by its
//! retention rules, as `sluice` in the audit log. The engine tells a [`RetentionListener`] of
//! every transition synchronously, so the listener only queues the environment; one
//! background task does the pruning, an environment at a time.

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::engine::{Engine, RunListener, MACHINE_ACTOR};
use super::{prune, Pruner, Request};
use crate::error::Result;
use crate::snapshot;
use crate::store::{Run, RunState};

/// Queues the environment of every run that ended, for the pruning task.
pub struct RetentionListener {
    queue: UnboundedSender<String>,
}

impl RunListener for RetentionListener {
    fn run_changed(&self, run: &Run) {
        if run.state.is_final() || matches!(run.state, RunState::Halted { .. }) {
            let _ = self.queue.send(run.environment.clone());
        }
    }
}

/// Registers the listener with `engine` and starts the task that prunes what it queues; the
/// task ends when the engine stops.
pub fn start(engine: Arc<Engine>) -> tokio::task::JoinHandle<()> {
    let (queue, queued) = unbounded_channel();
    engine.add_listener(Arc::new(RetentionListener { queue }));
    tokio::spawn(prune_queued(engine, queued))
}

async fn prune_queued(engine: Arc<Engine>, mut queued: UnboundedReceiver<String>) {
    let mut stop = engine.stop_receiver();
    loop {
        let first = tokio::select! {
            next = queued.recv() => next,
            _ = stop.changed() => return,
        };
        let Some(first) = first else { return };
        let mut environments = BTreeSet::from([first]);
        while let Ok(more) = queued.try_recv() {
            environments.insert(more);
        }
        for environment in environments {
            match prune_environment(&engine, &environment).await {
                Ok(deleted) if !deleted.is_empty() => {
                    tracing::info!(environment = %environment, deleted = ?deleted, "retention pruned old copies");
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(environment = %environment, error = %err, "pruning by retention failed")
                }
            }
        }
    }
}

/// Prunes one environment by its retention as the daemon does after a run: the last
/// success's snapshot, every copy of a run not finished and the newest preserved copy stay.
pub async fn prune_environment(engine: &Engine, environment: &str) -> Result<Vec<String>> {
    let loaded = engine.loaded();
    let Some(env) = loaded.environments.get(environment) else {
        return Ok(Vec::new());
    };
    if env.snapshot.is_none() {
        return Ok(Vec::new());
    }
    let provider = snapshot::provider_for(env).await?;
    let request = Request {
        actor: MACHINE_ACTOR.into(),
        reason: Some("retention, after a run ended".into()),
    };
    prune(
        env,
        provider.as_ref(),
        engine.store(),
        &request,
        false,
        Pruner::Daemon,
    )
    .await
}
