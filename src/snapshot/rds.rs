//! RDS and Aurora snapshots (being written).

use super::{Progress, Restored, Snapshot, SnapshotProvider};
use crate::config::{Environment, RdsConfig, SnapshotConfig};
use crate::error::{Error, Result};

/// Neon provider.
pub struct RdsSnapshots;

impl RdsSnapshots {
    /// Builds the provider for an instance.
    pub async fn for_instance(
        _env: &Environment,
        _rds: &RdsConfig,
        _config: &SnapshotConfig,
    ) -> Result<Self> {
        Err(Error::Snapshot("the rds provider is not built yet".into()))
    }
    /// Builds the provider for an Aurora cluster.
    pub async fn for_cluster(
        _env: &Environment,
        _rds: &RdsConfig,
        _config: &SnapshotConfig,
    ) -> Result<Self> {
        Err(Error::Snapshot("the rds provider is not built yet".into()))
    }
}

#[async_trait::async_trait]
impl SnapshotProvider for RdsSnapshots {
    fn kind(&self) -> &'static str {
        "rds"
    }
    fn snapshot_name(&self, run_id: &str) -> String {
        format!("sluice-{}", super::run_token(run_id))
    }
    async fn create(&self, _run_id: &str, _progress: &dyn Progress) -> Result<Snapshot> {
        Err(Error::Snapshot("not built".into()))
    }
    async fn restore(&self, _s: &str, _r: &str, _p: &dyn Progress) -> Result<Restored> {
        Err(Error::Snapshot("not built".into()))
    }
    async fn delete(&self, _name: &str) -> Result<()> {
        Err(Error::Snapshot("not built".into()))
    }
    async fn list(&self) -> Result<Vec<Snapshot>> {
        Err(Error::Snapshot("not built".into()))
    }
}
