//! PostgreSQL through sqlx: one connection for migrations and a dedicated one holding the
//! session advisory lock, both with `application_name = sluice`.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgDatabaseError, PgErrorPosition};
use sqlx::{ConnectOptions, Connection, Executor, Row};

use super::history::{HistoryRow, HistoryTable, RawRow};
use super::{EffectState, Engine, ExecError, SqlError, Target};
use crate::config::Environment;
use crate::error::{redact_urls, Error, Result};
use crate::migrations::classify::Effect;

/// The application name every sluice connection announces, so a lock holder is recognisable.
pub const APPLICATION_NAME: &str = "sluice";

/// A PostgreSQL database under migration.
pub struct PgTarget {
    conn: PgConnection,
    options: PgConnectOptions,
    lock: Option<(PgConnection, i64)>,
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
            options,
            lock: None,
        })
    }

    async fn describe_holders(&mut self, key: i64) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT a.pid, coalesce(a.application_name, ''), coalesce(a.usename::text, ''), \
                    coalesce(host(a.client_addr), 'local'), a.backend_start, coalesce(a.state, '') \
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted \
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND l.classid = $1::bigint::oid AND l.objid = $2::bigint::oid AND l.objsubid = 1",
        )
        .bind((key >> 32) & 0xffff_ffff)
        .bind(key & 0xffff_ffff)
        .fetch_all(&mut self.conn)
        .await
        .map_err(|e| Error::database("reading who holds the migration lock", e))?;
        Ok(rows
            .iter()
            .map(|row| {
                let pid: i32 = row.get(0);
                let app: String = row.get(1);
                let user: String = row.get(2);
                let addr: String = row.get(3);
                let since: Option<DateTime<Utc>> = row.get(4);
                let state: String = row.get(5);
                format!(
                    "pid {pid} (application_name `{app}`, user `{user}`, from {addr}, connected since {}, {state})",
                    since.map(|t| t.to_rfc3339()).unwrap_or_else(|| "unknown".into())
                )
            })
            .collect())
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
            .clone()
            .options([(
                "lock_timeout",
                millis(timeout.max(Duration::from_millis(1))),
            )])
            .connect()
            .await
            .map_err(|e| Error::database("opening the lock connection", e))?;
        match sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(key)
            .execute(&mut conn)
            .await
        {
            Ok(_) => {
                self.lock = Some((conn, key));
                Ok(())
            }
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("55P03") => {
                let holders = self.describe_holders(key).await?;
                let _ = conn.close().await;
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
            Err(e) => Err(Error::database("taking the migration lock", e)),
        }
    }

    async fn unlock(&mut self) -> Result<()> {
        if let Some((mut conn, key)) = self.lock.take() {
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
        match self.conn.execute(sqlx::raw_sql(sql)).await {
            Ok(_) => Ok(()),
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
    use super::take_schema_param;

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
