//! SQLite snapshots: an online copy with `VACUUM INTO` beside the database file; a restore
//! moves the current file aside as `<db>.failed-<run>` and copies the snapshot into place.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{ConnectOptions, Connection, Executor};

use super::{run_token, Progress, Restored, Snapshot, SnapshotKind, SnapshotProvider};
use crate::config::Environment;
use crate::error::{Error, Result};
use crate::target::history::literal;
use crate::testhook;

const SNAP_MARK: &str = ".snap-";
const FAILED_MARK: &str = ".failed-";

/// Snapshots of one SQLite database file.
pub struct SqliteFileSnapshots {
    env_name: String,
    db: PathBuf,
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl SqliteFileSnapshots {
    /// Builds the provider for the environment's SQLite file.
    pub fn new(env: &Environment) -> Result<SqliteFileSnapshots> {
        let url = env.database_url()?;
        let options = SqliteConnectOptions::from_str(&url)
            .map_err(|e| Error::Config(format!("{}: bad SQLite URL: {e}", env.file.display())))?;
        let db = options.get_filename().to_path_buf();
        if db.as_os_str().is_empty() || db.to_str() == Some(":memory:") {
            return Err(Error::Config(format!(
                "{}: an in-memory SQLite database cannot be snapshotted",
                env.file.display()
            )));
        }
        Ok(SqliteFileSnapshots {
            env_name: env.name.clone(),
            db,
        })
    }

    fn sibling(&self, name: &str) -> PathBuf {
        self.db.with_file_name(name)
    }

    fn failed_name(&self, run_id: &str) -> String {
        format!("{}{FAILED_MARK}{}", file_name(&self.db), run_token(run_id))
    }

    async fn open(&self, path: &Path) -> Result<SqliteConnection> {
        SqliteConnectOptions::new()
            .filename(path)
            .log_statements(tracing::log::LevelFilter::Trace)
            .log_slow_statements(tracing::log::LevelFilter::Off, Duration::from_secs(1))
            .connect()
            .await
            .map_err(|e| Error::database(format!("opening {}", path.display()), e))
    }

    /// Copies `from` to `to` through a temporary file and a rename, so `to` is either absent
    /// or complete, whatever moment the process dies at.
    fn copy_atomically(from: &Path, to: &Path) -> Result<()> {
        let partial = to.with_file_name(format!("{}.partial", file_name(to)));
        std::fs::copy(from, &partial).map_err(|e| Error::io(&partial, e))?;
        std::fs::rename(&partial, to).map_err(|e| Error::io(to, e))
    }
}

#[async_trait]
impl SnapshotProvider for SqliteFileSnapshots {
    fn kind(&self) -> &'static str {
        "sqlite-file"
    }

    fn snapshot_name(&self, run_id: &str) -> String {
        format!("{}{SNAP_MARK}{}", file_name(&self.db), run_token(run_id))
    }

    async fn create(
        &self,
        run_id: &str,
        progress: &dyn Progress,
        _hazards: &dyn super::HazardLog,
    ) -> Result<Snapshot> {
        let name = self.snapshot_name(run_id);
        let path = self.sibling(&name);
        if !path.exists() {
            if !self.db.exists() {
                return Err(Error::Snapshot(format!(
                    "environment `{}` has no database file at {} yet; nothing to snapshot",
                    self.env_name,
                    self.db.display()
                )));
            }
            progress.update(&format!("copying {} to {name}", self.db.display()));
            let partial = self.sibling(&format!("{name}.partial"));
            if partial.exists() {
                std::fs::remove_file(&partial).map_err(|e| Error::io(&partial, e))?;
            }
            let mut conn = self.open(&self.db).await?;
            let vacuum = format!("VACUUM INTO {}", literal(&partial.to_string_lossy()));
            conn.execute(sqlx::raw_sql(&vacuum))
                .await
                .map_err(|e| Error::database(format!("copying {}", self.db.display()), e))?;
            let _ = conn.close().await;
            testhook::pause("sqlite-snapshot-copied");
            std::fs::rename(&partial, &path).map_err(|e| Error::io(&path, e))?;
        }
        self.list()
            .await?
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| Error::Snapshot(format!("snapshot {name} vanished after it was made")))
    }

    async fn restore(
        &self,
        snapshot: &str,
        run_id: &str,
        progress: &dyn Progress,
        _hazards: &dyn super::HazardLog,
    ) -> Result<Restored> {
        let source = self.sibling(snapshot);
        if !snapshot.contains(SNAP_MARK) || !source.exists() {
            return Err(Error::Snapshot(format!(
                "no snapshot `{snapshot}` for environment `{}`; `sluice snapshots --env {}` lists them",
                self.env_name, self.env_name
            )));
        }
        let failed = self.failed_name(run_id);
        let preserved = self.sibling(&failed);
        if !preserved.exists() && self.db.exists() {
            progress.update(&format!("moving {} aside as {failed}", self.db.display()));
            let mut conn = self.open(&self.db).await?;
            conn.execute(sqlx::raw_sql("PRAGMA wal_checkpoint(TRUNCATE)"))
                .await
                .map_err(|e| Error::database("checkpointing before the swap", e))?;
            let _ = conn.close().await;
            std::fs::rename(&self.db, &preserved).map_err(|e| Error::io(&preserved, e))?;
            for suffix in ["-wal", "-shm"] {
                let side = self.sibling(&format!("{}{suffix}", file_name(&self.db)));
                if side.exists() {
                    let kept = self.sibling(&format!("{failed}{suffix}"));
                    std::fs::rename(&side, &kept).map_err(|e| Error::io(&kept, e))?;
                }
            }
        }
        testhook::pause("restore-between-renames");
        progress.update(&format!("copying {snapshot} into place"));
        Self::copy_atomically(&source, &self.db)?;
        Ok(Restored {
            snapshot: snapshot.to_string(),
            preserved_as: failed,
        })
    }

    async fn delete(&self, name: &str) -> Result<()> {
        let base = file_name(&self.db);
        let ours = name.starts_with(&format!("{base}{SNAP_MARK}"))
            || name.starts_with(&format!("{base}{FAILED_MARK}"));
        if !ours || name.contains('/') || name.ends_with(".partial") {
            return Err(Error::Snapshot(format!(
                "`{name}` is not a snapshot or preserved copy of environment `{}`; refusing to delete it",
                self.env_name
            )));
        }
        for suffix in ["", "-wal", "-shm"] {
            let path = self.sibling(&format!("{name}{suffix}"));
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(&path, e)),
            }
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<Snapshot>> {
        let dir = match self.db.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let base = file_name(&self.db);
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(Error::io(&dir, e)),
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(&base) else {
                continue;
            };
            let (kind, token) = if let Some(t) = rest.strip_prefix(SNAP_MARK) {
                (SnapshotKind::Snapshot, t)
            } else if let Some(t) = rest.strip_prefix(FAILED_MARK) {
                (SnapshotKind::Preserved, t)
            } else {
                continue;
            };
            if token.contains('.') || token.contains('-') {
                continue;
            }
            let meta = entry.metadata().ok();
            out.push(Snapshot {
                name: name.clone(),
                kind,
                run: Some(token.to_string()),
                created_at: meta
                    .as_ref()
                    .and_then(|m| m.modified().ok())
                    .map(DateTime::<Utc>::from),
                status: "file".into(),
                size_bytes: meta.map(|m| m.len()),
            });
        }
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.name.cmp(&b.name)));
        Ok(out)
    }
}
