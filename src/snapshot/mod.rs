//! Snapshots taken just before sluice changes an environment, and restores that put it back
//! without destroying what they replace: one trait over every provider.
//!
//! Names are deterministic from the run id ([`run_token`]), so a create retried after a crash
//! finds the snapshot already made instead of making a second, and a restore retried after a
//! crash finishes the swap it started.

pub mod neon;
pub mod pg;
pub mod rds;
pub mod retention;
pub mod sqlite_file;

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::{Environment, ProviderConfig, SnapshotConfig};
use crate::error::{Error, Result};

/// Whether a listed copy is a snapshot sluice can restore, or the state a restore replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotKind {
    /// Taken before a run; restorable.
    Snapshot,
    /// What a restore replaced, kept under a `failed` name; never deleted by a restore.
    Preserved,
}

/// One snapshot or preserved copy as a provider sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    /// The provider's name for it (database, file, branch or snapshot identifier).
    pub name: String,
    /// Snapshot or preserved copy.
    pub kind: SnapshotKind,
    /// The run token in its name, when it has one.
    pub run: Option<String>,
    /// When it was made, when the provider knows.
    pub created_at: Option<DateTime<Utc>>,
    /// Provider status in its own words (`available`, `creating`, `ready`, …).
    pub status: String,
    /// Size in bytes, when the provider knows.
    pub size_bytes: Option<u64>,
}

/// What a restore did.
#[derive(Debug, Clone, Serialize)]
pub struct Restored {
    /// The snapshot that now is the environment.
    pub snapshot: String,
    /// Where the replaced state was kept.
    pub preserved_as: String,
}

/// Receives progress of long provider operations (cloud snapshots take minutes).
pub trait Progress: Send + Sync {
    /// A line worth showing: what is being waited for and for how long so far.
    fn update(&self, message: &str);
}

/// A progress sink that shows nothing.
pub struct Quiet;
impl Progress for Quiet {
    fn update(&self, _message: &str) {}
}

/// A change a provider makes to the live environment that must not outlive the process that
/// made it. It is noted (flushed) before it is made and cleared once undone, so that after a
/// crash whoever comes next undoes it first, and undoes only what sluice did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Hazard {
    /// `ALTER DATABASE … ALLOW_CONNECTIONS false`: a template copy or a restore's renames need
    /// the database to themselves, and the applications are locked out meanwhile.
    ConnectionsBlocked {
        /// The database whose connections are blocked.
        database: String,
    },
}

impl Hazard {
    /// A stable key for the hazard within its environment.
    pub fn key(&self) -> String {
        match self {
            Hazard::ConnectionsBlocked { database } => format!("connections-blocked/{database}"),
        }
    }
}

/// A hazard as noted: what, by which run, when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct NotedHazard {
    /// The hazard.
    pub hazard: Hazard,
    /// The run (or manual snapshot's id) whose provider call made it.
    pub run_id: String,
    /// When it was noted.
    pub at: DateTime<Utc>,
}

/// Where a provider notes hazards for one environment: the state store, so a crash cannot
/// lose them.
pub trait HazardLog: Send + Sync {
    /// Notes, flushed, that `hazard` is about to be made by `run_id`.
    fn note(&self, hazard: &Hazard, run_id: &str) -> Result<()>;
    /// Forgets `hazard`: it has been undone.
    fn clear(&self, hazard: &Hazard) -> Result<()>;
    /// Hazards noted and not cleared.
    fn open(&self) -> Result<Vec<NotedHazard>>;
}

/// A hazard log that keeps nothing, for callers without a store: the cloud providers make no
/// hazard, and their emulator tests call them directly.
pub struct NoHazards;

impl HazardLog for NoHazards {
    fn note(&self, _hazard: &Hazard, _run_id: &str) -> Result<()> {
        Ok(())
    }
    fn clear(&self, _hazard: &Hazard) -> Result<()> {
        Ok(())
    }
    fn open(&self) -> Result<Vec<NotedHazard>> {
        Ok(Vec::new())
    }
}

/// A way to copy an environment and put the copy back.
#[async_trait]
pub trait SnapshotProvider: Send + Sync {
    /// The provider's config name (`pg-template`, `neon`, …).
    fn kind(&self) -> &'static str;

    /// The snapshot name a run gets; the same run id always gives the same name.
    fn snapshot_name(&self, run_id: &str) -> String;

    /// Makes the snapshot for `run_id`, or returns the one a previous attempt already made.
    /// Anything it does that must not outlive the process is noted in `hazards` first.
    async fn create(
        &self,
        run_id: &str,
        progress: &dyn Progress,
        hazards: &dyn HazardLog,
    ) -> Result<Snapshot>;

    /// Makes `snapshot` the environment again. The current state is kept under a name derived
    /// from `run_id`; rerunning after an interruption completes the same swap.
    async fn restore(
        &self,
        snapshot: &str,
        run_id: &str,
        progress: &dyn Progress,
        hazards: &dyn HazardLog,
    ) -> Result<Restored>;

    /// Undoes the hazards a crashed create or restore left (noted in `hazards` and not
    /// cleared), after waiting for any copy or restore under way (the server may still be
    /// finishing one whose client was killed). Returns what it did, one sentence each, for the
    /// audit log.
    async fn recover(
        &self,
        hazards: &dyn HazardLog,
        progress: &dyn Progress,
    ) -> Result<Vec<String>> {
        let _ = (hazards, progress);
        Ok(Vec::new())
    }

    /// Deletes a snapshot or preserved copy by name.
    async fn delete(&self, name: &str) -> Result<()>;

    /// Snapshots and preserved copies of this environment, oldest first.
    async fn list(&self) -> Result<Vec<Snapshot>>;
}

/// The short, name-safe token of a run id used in every snapshot name: the first 12
/// alphanumeric characters, lowercased (a uuid's first 12 hex digits).
pub fn run_token(run_id: &str) -> String {
    run_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(12)
        .collect::<String>()
        .to_ascii_lowercase()
}

/// Builds the provider an environment's `[snapshot]` section asks for.
pub async fn provider_for(env: &Environment) -> Result<Box<dyn SnapshotProvider>> {
    let Some(config) = &env.snapshot else {
        return Err(Error::Config(format!(
            "{}: environment `{}` has no [snapshot] section; add one with `provider = \"…\"` \
             (pg-template, pg-dump, sqlite-file, neon, rds or rds-cluster)",
            env.file.display(),
            env.name
        )));
    };
    match &config.provider {
        ProviderConfig::PgTemplate { .. } | ProviderConfig::PgDump { .. } => {
            Ok(Box::new(pg::PgSnapshots::new(env, config).await?))
        }
        ProviderConfig::SqliteFile => Ok(Box::new(sqlite_file::SqliteFileSnapshots::new(env)?)),
        ProviderConfig::Neon(neon) => Ok(Box::new(neon::NeonSnapshots::new(env, neon, config)?)),
        ProviderConfig::Rds(rds) => Ok(Box::new(
            rds::RdsSnapshots::for_instance(env, rds, config).await?,
        )),
        ProviderConfig::RdsCluster(rds) => Ok(Box::new(
            rds::RdsSnapshots::for_cluster(env, rds, config).await?,
        )),
    }
}

/// Deadline and poll interval for provider waits, from the `[snapshot]` section.
pub fn waits(config: &SnapshotConfig) -> (Duration, Duration) {
    (config.timeout, config.poll_interval)
}

#[cfg(test)]
mod tests {
    use super::run_token;

    #[test]
    fn run_tokens_are_short_and_name_safe() {
        assert_eq!(
            run_token("0F8E3A2C-1B4D-4E5F-8A9B-0C1D2E3F4A5B"),
            "0f8e3a2c1b4d"
        );
        assert_eq!(run_token("manual"), "manual");
    }
}
