//! One trait over the database engines sluice migrates: connect, lock, run SQL, read the
//! history table and look up whether a non-transactional statement already took effect.
//!
//! The apply logic above sees only [`Target`], so it runs the same against PostgreSQL and
//! SQLite, and the history table's SQL for both engines lives in [`history`].

pub mod history;
pub mod postgres;
pub mod sqlite;

use std::time::Duration;

use async_trait::async_trait;

use crate::config::{Environment, HistoryMode};
use crate::error::{Error, Result};
use crate::migrations::classify::Effect;

pub use history::{HistoryRow, HistoryTable, Progress};

/// The database engines sluice can migrate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// PostgreSQL, any version sqlx speaks to.
    Postgres,
    /// SQLite, the embedded default for examples and local work.
    Sqlite,
}

impl Engine {
    /// The engine a URL points at, or a clear error for schemes sluice does not handle.
    pub fn from_url(url: &str) -> Result<Engine> {
        let scheme = url.split(':').next().unwrap_or_default();
        match scheme {
            "postgres" | "postgresql" => Ok(Engine::Postgres),
            "sqlite" => Ok(Engine::Sqlite),
            other => Err(Error::Config(format!(
                "unsupported database URL scheme `{other}:`; sluice migrates postgres:// and sqlite: databases"
            ))),
        }
    }

    /// Whether a Prisma `migration_lock.toml` provider names this engine.
    pub fn matches_prisma_provider(&self, provider: &str) -> bool {
        match self {
            Engine::Postgres => matches!(provider, "postgresql" | "postgres"),
            Engine::Sqlite => provider == "sqlite",
        }
    }
}

/// The advisory-lock key: Prisma's own in Prisma mode, so `prisma migrate deploy` and sluice
/// never run at once; a distinct one for sluice's own history table.
pub fn lock_key(mode: HistoryMode) -> i64 {
    match mode {
        HistoryMode::Prisma => 72_707_369,
        HistoryMode::Sluice => 0x736c_7569_6365,
    }
}

/// An error the server reported for some SQL, with every field the user needs to find it.
#[derive(Debug, Clone, Default)]
pub struct SqlError {
    /// SQLSTATE (PostgreSQL) or the extended result code (SQLite).
    pub code: Option<String>,
    /// The primary message.
    pub message: String,
    /// DETAIL, when the server sent one.
    pub detail: Option<String>,
    /// HINT, when the server sent one.
    pub hint: Option<String>,
    /// 1-based character position in the SQL that was sent, when the server reported one.
    pub position: Option<usize>,
}

/// Why a piece of SQL did not complete.
#[derive(Debug, Clone)]
pub enum ExecError {
    /// The server ran the SQL and refused it; any transaction it opened was rolled back.
    Sql(SqlError),
    /// The connection broke: whether the SQL committed is unknown until the history is read again.
    Connection(String),
}

/// What the catalog says about a non-transactional statement that may have run before a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EffectState {
    /// Its effect is in place; running it again would fail or do harm.
    Done,
    /// Its effect is absent (any invalid leftover was removed); it must run.
    NotDone,
    /// The catalog cannot tell.
    Unknown,
}

/// Who holds a migration lock, for the message when sluice gives up waiting.
#[derive(Debug, Clone)]
pub struct LockHolder {
    /// A one-line description: pid, application, user, since when.
    pub description: String,
}

/// A session that a running statement waits for, as [`Target::execute_watched`] saw it.
#[derive(Debug, Clone)]
pub struct Blocker {
    /// Its server process id.
    pub pid: i32,
    /// Who it is: application, user, client, state and since when.
    pub description: String,
    /// Why it blocks and what sluice did about it.
    pub kind: BlockerKind,
}

/// Why a session blocks a statement, and what sluice did about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockerKind {
    /// An ordinary session (an open transaction, a writer on the table): the statement goes on
    /// when it ends.
    Session,
    /// The session waits for the migration lock this target holds, so neither can ever
    /// finish; its lock wait was cancelled (its deploy stops without having changed anything).
    LockWaiterCancelled {
        /// The migration lock it waited for.
        key: i64,
    },
    /// As above, but cancelling its lock wait failed (no permission, say).
    LockWaiterNotCancelled {
        /// The migration lock it waits for.
        key: i64,
        /// The server's reason.
        why: String,
    },
}

/// What [`Target::execute_watched`] calls for each session the statement waits for; named so
/// that `async_trait` keeps the argument's lifetime higher-ranked.
pub type OnBlocked<'a> = dyn Fn(&Blocker) + Send + Sync + 'a;

/// A database sluice can migrate. Implementations keep the migration lock on a connection of
/// its own, so a failing migration never releases it early.
#[async_trait]
pub trait Target: Send {
    /// Which engine this is.
    fn engine(&self) -> Engine;

    /// Takes the migration lock, waiting at most `timeout`; on timeout the error names the holder.
    async fn lock(&mut self, key: i64, timeout: Duration) -> Result<()>;

    /// Releases the migration lock if held.
    async fn unlock(&mut self) -> Result<()>;

    /// Runs SQL text as one round trip. On failure any transaction the text opened is rolled
    /// back before returning.
    async fn execute(&mut self, sql: &str) -> Result<(), ExecError>;

    /// Runs one statement outside a transaction that may wait for other sessions (`CREATE
    /// INDEX CONCURRENTLY` waits for every older snapshot, even one held by a session waiting
    /// for the migration lock), calling `blocked` once for each session it is seen waiting
    /// for. A session that waits for the migration lock this target holds can never let the
    /// statement finish, and the server cannot see that cycle, so its lock wait is cancelled.
    /// Engines where statements wait for no other session just run it.
    async fn execute_watched(
        &mut self,
        sql: &str,
        blocked: &OnBlocked<'_>,
    ) -> Result<(), ExecError> {
        let _ = blocked;
        self.execute(sql).await
    }

    /// Reads the history table; `None` when it does not exist yet.
    async fn read_history(&mut self, table: &HistoryTable) -> Result<Option<Vec<HistoryRow>>>;

    /// Checks in the catalog whether a statement's effect is in place, removing an invalid
    /// leftover (such as an index a killed `CREATE INDEX CONCURRENTLY` left behind).
    async fn effect_state(&mut self, effect: &Effect) -> Result<EffectState>;

    /// Closes connections cleanly.
    async fn close(self: Box<Self>) -> Result<()>;
}

/// Connects to an environment's database with its timeouts applied.
pub async fn connect(env: &Environment) -> Result<Box<dyn Target>> {
    let url = env.database_url()?;
    match Engine::from_url(&url)
        .map_err(|e| Error::Config(format!("{}: {e}", env.file.display())))?
    {
        Engine::Postgres => Ok(Box::new(postgres::PgTarget::connect(&url, env).await?)),
        Engine::Sqlite => Ok(Box::new(sqlite::SqliteTarget::connect(&url, env).await?)),
    }
}
