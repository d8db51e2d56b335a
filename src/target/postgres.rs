//! PostgreSQL through sqlx: one connection for migrations and a dedicated one holding the
//! session advisory lock, both with `application_name = sluice`.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgDatabaseError, PgErrorPosition};
use sqlx::{ConnectOptions, Connection, Executor, Row};

use super::history::{HistoryRow, HistoryTable, RawRow};
use super::{Blocker, BlockerKind, EffectState, Engine, ExecError, OnBlocked, SqlError, Target};
use crate::config::Environment;
use crate::error::{redact_urls, Error, Result};
use crate::migrations::classify::Effect;

/// The application name every sluice connection announces, so a lock holder is recognisable.
pub const APPLICATION_NAME: &str = "sluice";

/// The first pause between two attempts at the migration lock; each pause is half as long
/// again as the one before, up to [`LOCK_POLL_MAX`].
const LOCK_POLL_FIRST: Duration = Duration::from_millis(20);
/// The longest pause between two attempts at the migration lock.
const LOCK_POLL_MAX: Duration = Duration::from_millis(250);

/// A PostgreSQL database under migration.
pub struct PgTarget {
    conn: PgConnection,
    /// The server process of `conn`, read the first time a watched statement needs it.
    conn_pid: Option<i32>,
    options: PgConnectOptions,
    lock_timeout: Duration,
    lock: Option<LockSession>,
}

/// The dedicated connection holding the migration lock; idle between sluice's own short
/// queries, so it also watches a long statement of the migration connection.
struct LockSession {
    conn: PgConnection,
    key: i64,
}

fn millis(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// Splits Prisma's `schema=` parameter off a URL (sqlx does not know it) and returns it, so
/// the same `DATABASE_URL` works for Prisma and sluice.
pub(crate) fn take_schema_param(url: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_string(), None);
    };
    let mut schema = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.strip_prefix("schema=") {
            Some(value) => {
                schema = Some(value.to_string());
                false
            }
            None => !pair.is_empty(),
        })
        .collect();
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (url, schema)
}

/// The `(classid, objid)` pair under which `pg_locks` shows the advisory lock on a bigint key.
fn advisory_lock_ids(key: i64) -> (i64, i64) {
    ((key >> 32) & 0xffff_ffff, key & 0xffff_ffff)
}

/// One session as the messages about locks describe it.
fn describe_session(
    pid: i32,
    application: &str,
    user: &str,
    from: &str,
    state: &str,
    since: Option<DateTime<Utc>>,
    since_what: &str,
) -> String {
    let application = if application.is_empty() {
        "no application_name".to_string()
    } else {
        format!("application_name `{application}`")
    };
    let since = since.map_or_else(|| "unknown".to_string(), |t| t.to_rfc3339());
    let state = if state.is_empty() {
        String::new()
    } else {
        format!(", {state}")
    };
    format!("pid {pid} ({application}, user `{user}`, from {from}, {since_what} {since}{state})")
}

/// When the watcher of a statement first looks at what it waits for, and how often after
/// that. Each lock wait of the statement ends at `lock_timeout`, so the first look comes well
/// before it; with no `lock_timeout` (zero) the wait is unbounded and 2 s, then 1 s, do.
fn watch_schedule(lock_timeout: Duration) -> (Duration, Duration) {
    const FIRST: Duration = Duration::from_secs(2);
    const EVERY: Duration = Duration::from_secs(1);
    if lock_timeout.is_zero() {
        return (FIRST, EVERY);
    }
    (
        FIRST.min(lock_timeout / 2),
        EVERY.min((lock_timeout / 4).max(Duration::from_millis(50))),
    )
}

fn sql_error(err: sqlx::Error) -> ExecError {
    match err {
        sqlx::Error::Database(db) => {
            let mut out = SqlError {
                code: db.code().map(|c| c.into_owned()),
                message: db.message().to_string(),
                ..SqlError::default()
            };
            if let Some(pg) = db.try_downcast_ref::<PgDatabaseError>() {
                out.detail = pg.detail().map(str::to_string);
                out.hint = pg.hint().map(str::to_string);
                out.position = match pg.position() {
                    Some(PgErrorPosition::Original(p)) => Some(p),
                    _ => None,
                };
            }
            ExecError::Sql(out)
        }
        other => ExecError::Connection(redact_urls(&other.to_string())),
    }
}

/// The statement that blocks or re-allows new connections to `database` (run on another
/// database of the server): what pg-template snapshots do around a copy, and what a person
/// runs by hand when a killed copy left the block behind.
pub fn allow_connections_sql(database: &str, allow: bool) -> String {
    format!(
        "ALTER DATABASE \"{}\" WITH ALLOW_CONNECTIONS {allow}",
        database.replace('"', "\"\"")
    )
}

impl PgTarget {
    /// Connects with the environment's timeouts set as session defaults.
    pub async fn connect(url: &str, env: &Environment) -> Result<PgTarget> {
        let (url, schema) = take_schema_param(url);
        let mut options = PgConnectOptions::from_str(&url)
            .map_err(|e| {
                Error::Config(format!(
                    "{}: bad database URL: {}",
                    env.file.display(),
                    redact_urls(&e.to_string())
                ))
            })?
            .application_name(APPLICATION_NAME)
            .options([
                ("lock_timeout", millis(env.lock_timeout)),
                ("statement_timeout", millis(env.statement_timeout)),
                ("standard_conforming_strings", "on".to_string()),
                ("client_min_messages", "warning".to_string()),
            ])
            .log_statements(tracing::log::LevelFilter::Trace)
            .log_slow_statements(tracing::log::LevelFilter::Off, Duration::from_secs(1));
        if let Some(schema) = schema {
            options = options.options([("search_path", schema)]);
        }
        let conn = options.connect().await.map_err(|e| {
            let context = format!("cannot connect to environment `{}`", env.name);
            let refused = e
                .as_database_error()
                .is_some_and(|d| d.code().as_deref() == Some("55000"));
            match (refused, options.get_database()) {
                (true, Some(database)) => Error::Database {
                    context,
                    message: format!(
                        "{}. Its connections are blocked (datallowconn = false): sluice blocks them \
                         while it copies the database for a pg-template snapshot, and a copy killed \
                         half-way leaves them blocked. The next run or `sluice apply` of `{}` lifts a \
                         block sluice made; to lift it by hand, run on the maintenance database:\n  {};",
                        redact_urls(&e.as_database_error().map(|d| d.message().to_string()).unwrap_or_default()),
                        env.name,
                        allow_connections_sql(database, true)
                    ),
                },
                _ => Error::database(context, e),
            }
        })?;
        Ok(PgTarget {
            conn,
            conn_pid: None,
            options,
            lock_timeout: env.lock_timeout,
            lock: None,
        })
    }

    /// Rolls back what a failed statement left open, so the connection is ready for the next.
    async fn after_execute(&mut self, result: Result<(), sqlx::Error>) -> Result<(), ExecError> {
        match result {
            Ok(()) => Ok(()),
            Err(err) => {
                let err = sql_error(err);
                if let ExecError::Sql(_) = err {
                    if let Err(e) = self.conn.execute(sqlx::raw_sql("ROLLBACK")).await {
                        return Err(sql_error(e));
                    }
                }
                Err(err)
            }
        }
    }

    async fn describe_holders(&mut self, key: i64) -> Result<Vec<String>> {
        let (classid, objid) = advisory_lock_ids(key);
        let rows = sqlx::query(
            "SELECT a.pid, coalesce(a.application_name, ''), coalesce(a.usename::text, ''), \
                    coalesce(host(a.client_addr), 'local'), a.backend_start, coalesce(a.state, '') \
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted \
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND l.classid = $1::bigint::oid AND l.objid = $2::bigint::oid AND l.objsubid = 1",
        )
        .bind(classid)
        .bind(objid)
        .fetch_all(&mut self.conn)
        .await
        .map_err(|e| Error::database("reading who holds the migration lock", e))?;
        rows.iter()
            .map(|row| {
                Ok(describe_session(
                    row.try_get(0)?,
                    &row.try_get::<String, _>(1)?,
                    &row.try_get::<String, _>(2)?,
                    &row.try_get::<String, _>(3)?,
                    &row.try_get::<String, _>(5)?,
                    row.try_get(4)?,
                    "connected since",
                ))
            })
            .collect::<std::result::Result<Vec<String>, sqlx::Error>>()
            .map_err(|e| Error::database("reading who holds the migration lock", e))
    }

    /// The server process of the migration connection, asked once.
    async fn conn_pid(&mut self) -> Result<i32, ExecError> {
        if let Some(pid) = self.conn_pid {
            return Ok(pid);
        }
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut self.conn)
            .await
            .map_err(sql_error)?;
        self.conn_pid = Some(pid);
        Ok(pid)
    }
}

/// Watches the statement running in server process `statement_pid` from the lock connection
/// until `done` fires: every so often it reads whom the statement waits for
/// (`pg_blocking_pids`), cancels the lock wait of any of them waiting for the migration lock
/// (a cycle through sluice itself that the server's deadlock detector cannot see), and tells
/// `blocked` about each session once (and about each cancellation). A lock waiter sluice
/// may not cancel is told about once and left waiting.
async fn watch_statement(
    lock: &mut LockSession,
    statement_pid: i32,
    lock_timeout: Duration,
    mut done: tokio::sync::oneshot::Receiver<()>,
    blocked: &OnBlocked<'_>,
) {
    let (first, every) = watch_schedule(lock_timeout);
    let mut pause = first;
    let mut told: HashMap<i32, BlockerKind> = HashMap::new();
    loop {
        tokio::select! {
            _ = &mut done => return,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = every;
        let blockers = match blockers_of(lock, statement_pid).await {
            Ok(blockers) => blockers,
            Err(e) => {
                tracing::warn!(
                    "stopped watching what the running statement waits for: {}",
                    redact_urls(&e.to_string())
                );
                return;
            }
        };
        for seen in blockers {
            let kind = if seen.waits_for_lock {
                if matches!(
                    told.get(&seen.pid),
                    Some(BlockerKind::LockWaiterNotCancelled { .. })
                ) {
                    continue;
                }
                match cancel_lock_wait(lock, seen.pid).await {
                    Some(kind) => kind,
                    None => continue,
                }
            } else if told.contains_key(&seen.pid) {
                continue;
            } else {
                BlockerKind::Session
            };
            told.insert(seen.pid, kind.clone());
            blocked(&Blocker {
                pid: seen.pid,
                description: seen.description,
                kind,
            });
        }
    }
}

/// A session seen blocking the watched statement.
struct SeenBlocker {
    pid: i32,
    description: String,
    /// Whether it is waiting for the migration lock this target holds.
    waits_for_lock: bool,
}

/// The sessions the statement in `statement_pid` waits for now, sluice's own lock connection
/// left out.
async fn blockers_of(
    lock: &mut LockSession,
    statement_pid: i32,
) -> std::result::Result<Vec<SeenBlocker>, sqlx::Error> {
    let (classid, objid) = advisory_lock_ids(lock.key);
    let rows = sqlx::query(
        "SELECT b.pid, coalesce(a.application_name, ''), coalesce(a.usename::text, ''), \
                coalesce(host(a.client_addr), 'local'), coalesce(a.state, ''), \
                coalesce(a.xact_start, a.query_start), \
                EXISTS (SELECT 1 FROM pg_locks w WHERE w.pid = b.pid AND w.locktype = 'advisory' \
                          AND NOT w.granted \
                          AND w.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                          AND w.classid = $2::bigint::oid AND w.objid = $3::bigint::oid AND w.objsubid = 1) \
         FROM (SELECT DISTINCT unnest(pg_blocking_pids($1)) AS pid) b \
         LEFT JOIN pg_stat_activity a ON a.pid = b.pid \
         WHERE b.pid <> pg_backend_pid() \
         ORDER BY b.pid",
    )
    .bind(statement_pid)
    .bind(classid)
    .bind(objid)
    .fetch_all(&mut lock.conn)
    .await?;
    rows.iter()
        .map(|row| {
            let pid: i32 = row.try_get(0)?;
            Ok(SeenBlocker {
                pid,
                description: describe_session(
                    pid,
                    &row.try_get::<String, _>(1)?,
                    &row.try_get::<String, _>(2)?,
                    &row.try_get::<String, _>(3)?,
                    &row.try_get::<String, _>(4)?,
                    row.try_get(5)?,
                    "in its transaction since",
                ),
                waits_for_lock: row.try_get(6)?,
            })
        })
        .collect()
}

/// Cancels what `pid` runs if it is still waiting for the migration lock (checked in the same
/// statement, so a session that has moved on is left alone: `None`).
async fn cancel_lock_wait(lock: &mut LockSession, pid: i32) -> Option<BlockerKind> {
    let (classid, objid) = advisory_lock_ids(lock.key);
    let key = lock.key;
    let cancelled = sqlx::query_scalar::<_, bool>(
        "SELECT pg_cancel_backend(w.pid) FROM pg_locks w \
         WHERE w.pid = $1 AND w.locktype = 'advisory' AND NOT w.granted \
           AND w.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
           AND w.classid = $2::bigint::oid AND w.objid = $3::bigint::oid AND w.objsubid = 1",
    )
    .bind(pid)
    .bind(classid)
    .bind(objid)
    .fetch_optional(&mut lock.conn)
    .await;
    match cancelled {
        Ok(None) => None,
        Ok(Some(true)) => Some(BlockerKind::LockWaiterCancelled { key }),
        Ok(Some(false)) => Some(BlockerKind::LockWaiterNotCancelled {
            key,
            why: "the server did not signal it".into(),
        }),
        Err(e) => Some(BlockerKind::LockWaiterNotCancelled {
            key,
            why: match &e {
                sqlx::Error::Database(db) => db.message().to_string(),
                other => redact_urls(&other.to_string()),
            },
        }),
    }
}

#[async_trait]
impl Target for PgTarget {
    fn engine(&self) -> Engine {
        Engine::Postgres
    }

    async fn lock(&mut self, key: i64, timeout: Duration) -> Result<()> {
        if self.lock.is_some() {
            return Ok(());
        }
        let mut conn = self
            .options
            .connect()
            .await
            .map_err(|e| Error::database("opening the lock connection", e))?;
        // Attempts with pauses in between rather than one blocking pg_advisory_lock: a
        // session blocked in a statement holds a snapshot, which a CREATE INDEX CONCURRENTLY
        // of the holder would wait for (and PostgreSQL calls that a deadlock when the holder
        // builds on the connection that holds the lock, as Prisma does).
        let deadline = Instant::now() + timeout;
        let mut pause = LOCK_POLL_FIRST;
        loop {
            let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(key)
                .fetch_one(&mut conn)
                .await
                .map_err(|e| Error::database("taking the migration lock", e))?;
            if taken {
                self.lock = Some(LockSession { conn, key });
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            tokio::time::sleep(pause.min(left)).await;
            pause = (pause * 3 / 2).min(LOCK_POLL_MAX);
        }
        let _ = conn.close().await;
        let holders = self.describe_holders(key).await?;
        Err(Error::Lock(format!(
            "another migration holds the lock (advisory lock {key}) and did not release it within {}: {}. \
             Wait for it to finish and retry, or raise `lock_timeout`; if the holder is stuck, \
             end it with SELECT pg_terminate_backend(<pid>).",
            humantime::format_duration(timeout),
            if holders.is_empty() {
                "the holder has since gone".to_string()
            } else {
                holders.join("; ")
            }
        )))
    }

    async fn unlock(&mut self) -> Result<()> {
        if let Some(LockSession { mut conn, key, .. }) = self.lock.take() {
            sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(key)
                .execute(&mut conn)
                .await
                .map_err(|e| Error::database("releasing the migration lock", e))?;
            let _ = conn.close().await;
        }
        Ok(())
    }

    async fn execute(&mut self, sql: &str) -> Result<(), ExecError> {
        let result = self.conn.execute(sqlx::raw_sql(sql)).await.map(|_| ());
        self.after_execute(result).await
    }

    async fn execute_watched(
        &mut self,
        sql: &str,
        blocked: &OnBlocked<'_>,
    ) -> Result<(), ExecError> {
        if self.lock.is_none() {
            return self.execute(sql).await;
        }
        // Watched through the lock connection, idle meanwhile: no extra connection.
        let statement_pid = self.conn_pid().await?;
        let PgTarget {
            conn,
            lock: Some(lock),
            lock_timeout,
            ..
        } = &mut *self
        else {
            return self.execute(sql).await;
        };
        let (finished, done) = tokio::sync::oneshot::channel();
        let run = async {
            let result = conn.execute(sqlx::raw_sql(sql)).await.map(|_| ());
            let _ = finished.send(());
            result
        };
        let (result, ()) = tokio::join!(
            run,
            watch_statement(lock, statement_pid, *lock_timeout, done, blocked)
        );
        self.after_execute(result).await
    }

    async fn read_history(&mut self, table: &HistoryTable) -> Result<Option<Vec<HistoryRow>>> {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(format!("\"{}\"", table.name()))
            .fetch_one(&mut self.conn)
            .await
            .map_err(|e| Error::database("looking for the history table", e))?;
        if !exists {
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
                    started_at: row.try_get(3)?,
                    finished_at: row.try_get(4)?,
                    rolled_back_at: row.try_get(5)?,
                    logs: row.try_get(6)?,
                    applied_steps_count: row.try_get::<i32, _>(7)? as i64,
                    statements_total: row.try_get::<Option<i32>, _>(8)?.map(i64::from),
                    running_statement: row.try_get::<Option<i32>, _>(9)?.map(i64::from),
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

    async fn effect_state(&mut self, effect: &Effect) -> Result<EffectState> {
        let context = "checking the catalog for an interrupted statement";
        match effect {
            Effect::CreateIndex { schema, name, .. } => {
                let found: Option<(bool, String)> = sqlx::query_as(
                    "SELECT i.indisvalid, format('%I.%I', n.nspname, c.relname) \
                     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     JOIN pg_index i ON i.indexrelid = c.oid \
                     WHERE c.relname = $1 AND CASE WHEN $2::text IS NULL \
                       THEN n.nspname = ANY (current_schemas(false)) ELSE n.nspname = $2 END \
                     ORDER BY array_position(current_schemas(false), n.nspname) LIMIT 1",
                )
                .bind(name)
                .bind(schema)
                .fetch_optional(&mut self.conn)
                .await
                .map_err(|e| Error::database(context, e))?;
                match found {
                    None => Ok(EffectState::NotDone),
                    Some((true, _)) => Ok(EffectState::Done),
                    Some((false, qualified)) => {
                        let drop = format!("DROP INDEX CONCURRENTLY IF EXISTS {qualified}");
                        self.conn
                            .execute(sqlx::raw_sql(&drop))
                            .await
                            .map_err(|e| {
                                Error::database(
                                    format!("removing the invalid index {qualified} an interrupted build left"),
                                    e,
                                )
                            })?;
                        Ok(EffectState::NotDone)
                    }
                }
            }
            Effect::DropIndex { schema, name } => {
                let exists: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE c.relkind IN ('i', 'I') AND c.relname = $1 AND CASE WHEN $2::text IS NULL \
                       THEN n.nspname = ANY (current_schemas(false)) ELSE n.nspname = $2 END)",
                )
                .bind(name)
                .bind(schema)
                .fetch_one(&mut self.conn)
                .await
                .map_err(|e| Error::database(context, e))?;
                Ok(if exists {
                    EffectState::NotDone
                } else {
                    EffectState::Done
                })
            }
            Effect::CreateDatabase { name } | Effect::DropDatabase { name } => {
                let exists: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
                )
                .bind(name)
                .fetch_one(&mut self.conn)
                .await
                .map_err(|e| Error::database(context, e))?;
                let created = matches!(effect, Effect::CreateDatabase { .. });
                Ok(if exists == created {
                    EffectState::Done
                } else {
                    EffectState::NotDone
                })
            }
            Effect::AddEnumValue {
                schema,
                type_name,
                label,
            } => {
                let exists: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid \
                     JOIN pg_namespace n ON n.oid = t.typnamespace \
                     WHERE t.typname = $1 AND e.enumlabel = $3 AND CASE WHEN $2::text IS NULL \
                       THEN n.nspname = ANY (current_schemas(false)) ELSE n.nspname = $2 END)",
                )
                .bind(type_name)
                .bind(schema)
                .bind(label)
                .fetch_one(&mut self.conn)
                .await
                .map_err(|e| Error::database(context, e))?;
                Ok(if exists {
                    EffectState::Done
                } else {
                    EffectState::NotDone
                })
            }
            Effect::Rerunnable => Ok(EffectState::NotDone),
        }
    }

    async fn close(mut self: Box<Self>) -> Result<()> {
        self.unlock().await?;
        let _ = self.conn.close().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{take_schema_param, watch_schedule};

    #[test]
    fn the_watcher_looks_before_lock_timeout_ends_a_wait() {
        let ms = Duration::from_millis;
        assert_eq!(watch_schedule(ms(10_000)), (ms(2_000), ms(1_000)));
        assert_eq!(watch_schedule(ms(1_000)), (ms(500), ms(250)));
        assert_eq!(watch_schedule(ms(100)), (ms(50), ms(50)));
        assert_eq!(
            watch_schedule(Duration::ZERO),
            (ms(2_000), ms(1_000)),
            "lock_timeout 0 means no limit"
        );
    }

    #[test]
    fn prisma_schema_parameter_is_taken_off() {
        assert_eq!(
            take_schema_param("postgres://h/db?schema=app&sslmode=disable"),
            (
                "postgres://h/db?sslmode=disable".to_string(),
                Some("app".to_string())
            )
        );
        assert_eq!(
            take_schema_param("postgres://h/db?schema=app"),
            ("postgres://h/db".to_string(), Some("app".to_string()))
        );
        assert_eq!(
            take_schema_param("postgres://h/db"),
            ("postgres://h/db".to_string(), None)
        );
    }
}
