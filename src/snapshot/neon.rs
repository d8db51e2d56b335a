//! Neon branches as snapshots (being written).

use super::{Progress, Restored, Snapshot, SnapshotProvider};
use crate::config::{Environment, NeonConfig, SnapshotConfig};
use crate::error::{Error, Result};

/// Neon provider.
pub struct NeonSnapshots;

impl NeonSnapshots {
    /// Builds the provider.
    pub fn new(_env: &Environment, _neon: &NeonConfig, _config: &SnapshotConfig) -> Result<Self> {
        Err(Error::Snapshot("the neon provider is not built yet".into()))
    }
}

#[async_trait::async_trait]
impl SnapshotProvider for NeonSnapshots {
    fn kind(&self) -> &'static str {
        "neon"
    }
    fn snapshot_name(&self, run_id: &str) -> String {
        format!("sluice-snap-{}", super::run_token(run_id))
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
