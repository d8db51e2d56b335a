//! What the run machine needs from whoever keeps the runs: read a run and the configuration,
//! record a transition (checked against the table), save, append to the audit log, hear that
//! it must stop, and what follows a success. The engine is the one implementation; the machine
//! sees only this trait, so it does not depend on the engine that drives it.

use std::sync::Arc;

use async_trait::async_trait;

use crate::drift::check::DriftReport;
use crate::error::Result;
use crate::store::{Run, RunState, Store};

use super::loaded::Loaded;

/// The run machine's view of the engine.
#[async_trait]
pub trait Journal: Send + Sync {
    /// One run, as stored now.
    fn run(&self, id: &str) -> Result<Run>;
    /// The configuration in force.
    fn loaded(&self) -> Arc<Loaded>;
    /// The state store.
    fn store(&self) -> &dyn Store;
    /// Whether shutdown has begun (a step parks instead of starting).
    fn is_stopping(&self) -> bool;
    /// Fires when shutdown begins, for steps that wait (health checks).
    fn stop_receiver(&self) -> tokio::sync::watch::Receiver<bool>;
    /// Writes a run's new state before the action it announces; refuses a move the table does
    /// not allow.
    fn transition(&self, run: &mut Run, state: RunState, actor: &str) -> Result<()>;
    /// Saves a run without a state change.
    fn save(&self, run: &Run) -> Result<()>;
    /// Appends to the audit log.
    fn event(
        &self,
        actor: &str,
        action: &str,
        environment: &str,
        run_id: Option<&str>,
        reason: Option<&str>,
        detail: serde_json::Value,
    ) -> Result<()>;
    /// Records and announces what a drift check found.
    fn report_drift(
        &self,
        event: &str,
        run_id: Option<&str>,
        report: &DriftReport,
        detail: serde_json::Value,
    ) -> Result<()>;
    /// Compares an environment with the expected schema of what it has applied.
    async fn check_drift(&self, environment: &str) -> Result<DriftReport>;
    /// What follows a successful run (promotions downstream).
    async fn after_success(&self, run: &Run) -> Result<()>;
}
