//! SQLite through sqlx: the embedded default for the example and for local work. The migration
//! lock is an OS file lock beside the database, since SQLite has no advisory locks.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteRow};
use sqlx::{ConnectOptions, Connection, Executor, Row};

use super::history::{HistoryRow, HistoryTable, RawRow};
use super::{EffectState, Engine, ExecError, SqlError, Target};
use crate::config::Environment;
use crate::error::{Error, Result};
use crate::migrations::classify::Effect;

/// A SQLite database file under migration.
pub struct SqliteTarget {
    conn: SqliteConnection,
    path: Option<PathBuf>,
    lock: Option<File>,
}

fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".sluice-lock");
    PathBuf::from(name)
}

fn exec_error(err: sqlx::Error) -> ExecError {
    match err {
        sqlx::Error::Database(db) => ExecError::Sql(SqlError {
            code: db.code().map(|c| c.into_owned()),
            message: db.message().to_string(),
            ..SqlError::default()
        }),
        other => ExecError::Connection(other.to_string()),
    }
}

fn timestamp(row: &SqliteRow, index: usize) -> Option<DateTime<Utc>> {
    if let Ok(Some(ms)) = row.try_get::<Option<i64>, _>(index) {
        return Utc.timestamp_millis_opt(ms).single();
    }
    let text: Option<String> = row.try_get(index).ok().flatten();
    let text = text?;
    DateTime::parse_from_rfc3339(&text)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            chrono::NaiveDateTime::parse_from_str(&text, "%Y-%m-%d %H:%M:%S%.f")
                .ok()
                .map(|t| t.and_utc())
        })
}

impl SqliteTarget {
    /// Opens (creating if needed) the database file, with the lock timeout as busy timeout.
    pub async fn connect(url: &str, env: &Environment) -> Result<SqliteTarget> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| {
                Error::Config(format!(
                    "{}: bad SQLite URL `{url}`: {e}",
                    env.file.display()
                ))
            })?
            .create_if_missing(true)
            .busy_timeout(env.lock_timeout)
            .foreign_keys(true)
            .log_statements(tracing::log::LevelFilter::Trace)
            .log_slow_statements(tracing::log::LevelFilter::Off, Duration::from_secs(1));
        let path = options.get_filename().to_path_buf();
        let in_memory = path.as_os_str().is_empty() || path.to_str() == Some(":memory:");
        if !in_memory {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
            }
        }
        let conn = options
            .connect()
            .await
            .map_err(|e| Error::database(format!("cannot open environment `{}`", env.name), e))?;
        Ok(SqliteTarget {
            conn,
            path: (!in_memory).then_some(path),
            lock: None,
        })
    }
}

#[async_trait]
impl Target for SqliteTarget {
    fn engine(&self) -> Engine {
        Engine::Sqlite
    }

    async fn lock(&mut self, _key: i64, timeout: Duration) -> Result<()> {
        let Some(db) = &self.path else { return Ok(()) };
        if self.lock.is_some() {
            return Ok(());
        }
        let path = lock_path(db);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let deadline = Instant::now() + timeout;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    let mut holder = String::new();
                    let _ = file.read_to_string(&mut holder);
                    return Err(Error::Lock(format!(
                        "another migration holds the lock on {} and did not release it within {}: {}. \
                         Wait for it to finish and retry, or raise `lock_timeout`.",
                        db.display(),
                        humantime::format_duration(timeout),
                        if holder.trim().is_empty() {
                            "holder unknown".to_string()
                        } else {
                            holder.trim().to_string()
                        }
                    )));
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
            }
        }
        let note = format!(
            "pid {} (application_name `sluice`, locked since {})",
            std::process::id(),
            Utc::now().to_rfc3339()
        );
        let written = file
            .set_len(0)
            .and_then(|_| file.rewind())
            .and_then(|_| file.write_all(note.as_bytes()));
        written.map_err(|e| Error::io(&path, e))?;
        self.lock = Some(file);
        Ok(())
    }

    async fn unlock(&mut self) -> Result<()> {
        if let Some(file) = self.lock.take() {
            let _ = file.set_len(0);
            let _ = file.unlock();
        }
        Ok(())
    }

    async fn execute(&mut self, sql: &str) -> Result<(), ExecError> {
        match self.conn.execute(sqlx::raw_sql(sql)).await {
            Ok(_) => Ok(()),
            Err(err) => {
                let err = exec_error(err);
                if matches!(err, ExecError::Sql(_)) {
                    // Leaves no transaction open; "no transaction is active" is the fine case.
                    let _ = self.conn.execute(sqlx::raw_sql("ROLLBACK")).await;
                }
                Err(err)
            }
        }
    }

    async fn read_history(&mut self, table: &HistoryTable) -> Result<Option<Vec<HistoryRow>>> {
        let exists: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?")
                .bind(table.name())
                .fetch_optional(&mut self.conn)
                .await
                .map_err(|e| Error::database("looking for the history table", e))?;
        if exists.is_none() {
            return Ok(None);
        }
        let rows = sqlx::query(&table.select_sql())
            .fetch_all(&mut self.conn)
            .await
            .map_err(|e| Error::database(format!("reading {}", table.name()), e))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let raw = (|| -> std::result::Result<RawRow, sqlx::Error> {
                Ok(RawRow {
                    id: row.try_get(0)?,
                    migration_name: row.try_get(1)?,
                    checksum: row.try_get(2)?,
                    started_at: timestamp(&row, 3),
                    finished_at: timestamp(&row, 4),
                    rolled_back_at: timestamp(&row, 5),
                    logs: row.try_get(6)?,
                    applied_steps_count: row.try_get(7)?,
                    statements_total: row.try_get(8)?,
                    running_statement: row.try_get(9)?,
                    prefix_checksum: row.try_get(10)?,
                    run_id: row.try_get(11)?,
                    notes: row.try_get(12)?,
                })
            })()
            .map_err(|e| {
                Error::database(
                    format!("{} does not have the expected columns", table.name()),
                    e,
                )
            })?;
            out.push(table.decode(raw));
        }
        Ok(Some(out))
    }

    async fn effect_state(&mut self, _effect: &Effect) -> Result<EffectState> {
        Ok(EffectState::Unknown)
    }

    async fn close(mut self: Box<Self>) -> Result<()> {
        self.unlock().await?;
        let _ = self.conn.close().await;
        Ok(())
    }
}
