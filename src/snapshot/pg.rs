//! Self-hosted PostgreSQL snapshots: `pg-template` (`CREATE DATABASE … TEMPLATE`, a fast file
//! copy on the same server) and `pg-dump` (`pg_dump -Fc` into the state directory, for servers
//! where template copies are impossible). Both restore by renaming the current database to
//! `<db>_failed_<run>` and the copy to the database's name: nothing is dropped.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::str::FromStr;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection, Executor, Row};

use super::{
    run_token, Hazard, HazardLog, Progress, Restored, Snapshot, SnapshotKind, SnapshotProvider,
};
use crate::config::{Environment, ProviderConfig, SnapshotConfig};
use crate::error::{redact_urls, Error, Result};
use crate::target::postgres::{allow_connections_sql, take_schema_param, APPLICATION_NAME};
use crate::testhook;

/// PostgreSQL's limit on identifier length in bytes.
const MAX_IDENT: usize = 63;

enum Method {
    Template {
        terminate_sessions: bool,
    },
    Dump {
        dir: PathBuf,
        pg_dump: PathBuf,
        pg_restore: PathBuf,
        tool_env: Vec<(String, String)>,
    },
}

/// Snapshots of one PostgreSQL database by template copy or dump file.
pub struct PgSnapshots {
    env_name: String,
    database: String,
    admin: PgConnectOptions,
    method: Method,
    /// The longest wait for another sluice's copy or restore of the same database.
    lock_wait: Duration,
}

/// The first key of the advisory lock (on the maintenance database) that one copy or restore
/// of a database holds, so two sluices never copy or swap one database at once; the second key
/// is `hashtext(<database>)`. 0x736c6373 is "slcs".
const SNAPSHOT_LOCK_CLASS: i32 = 0x736c_6373;

/// How long sessions on a database about to be copied may take to go away by themselves
/// before they count as in the way (new ones are refused meanwhile).
const CLOSING_GRACE: Duration = Duration::from_secs(2);

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `<db><suffix>`, cutting the database name (at a char boundary) so the whole fits in 63
/// bytes: the suffix carries the run token and must survive.
fn derived_name(database: &str, suffix: &str) -> String {
    let mut room = MAX_IDENT.saturating_sub(suffix.len());
    while room > 0 && !database.is_char_boundary(room.min(database.len())) {
        room -= 1;
    }
    format!("{}{suffix}", &database[..room.min(database.len())])
}

/// Finds a PostgreSQL client tool: on PATH, else the newest `/usr/lib/postgresql/*/bin`.
pub fn find_pg_tool(name: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    });
    on_path.or_else(|| {
        let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin").join(name)))
            .filter(|p| p.is_file())
            .collect();
        versions.sort();
        versions.pop()
    })
}

/// libpq environment variables for a URL, so `pg_dump`/`pg_restore` never see the password on
/// their command line (where `ps` would show it).
fn libpq_env(url: &str) -> Result<Vec<(String, String)>> {
    let parsed = url::Url::parse(url)
        .map_err(|e| Error::Config(format!("cannot read the database URL: {e}")))?;
    let mut vars = Vec::new();
    let decode = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    if let Some(host) = parsed.host_str().filter(|h| !h.is_empty()) {
        vars.push(("PGHOST".into(), host.trim_matches(['[', ']']).to_string()));
    }
    if let Some(port) = parsed.port() {
        vars.push(("PGPORT".into(), port.to_string()));
    }
    if !parsed.username().is_empty() {
        vars.push(("PGUSER".into(), decode(parsed.username())));
    }
    if let Some(password) = parsed.password() {
        vars.push(("PGPASSWORD".into(), decode(password)));
    }
    for (key, value) in parsed.query_pairs() {
        let var = match key.as_ref() {
            "host" => "PGHOST",
            "port" => "PGPORT",
            "user" => "PGUSER",
            "password" => "PGPASSWORD",
            "sslmode" => "PGSSLMODE",
            "sslrootcert" => "PGSSLROOTCERT",
            "sslcert" => "PGSSLCERT",
            "sslkey" => "PGSSLKEY",
            _ => continue,
        };
        vars.retain(|(k, _)| k != var);
        vars.push((var.into(), value.into_owned()));
    }
    Ok(vars)
}

struct Session {
    pid: i32,
    user: String,
    application: String,
    client: String,
    since: Option<DateTime<Utc>>,
    state: String,
}

impl std::fmt::Display for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {} (user `{}`, application_name `{}`, from {}, connected since {}, {})",
            self.pid,
            self.user,
            self.application,
            self.client,
            self.since
                .map(|t| t.to_rfc3339())
                .unwrap_or_else(|| "unknown".into()),
            self.state
        )
    }
}

impl PgSnapshots {
    /// Builds the provider from the environment's URL and `[snapshot]` section.
    pub async fn new(env: &Environment, config: &SnapshotConfig) -> Result<PgSnapshots> {
        let url = env.database_url()?;
        let (plain_url, _) = take_schema_param(&url);
        let options = PgConnectOptions::from_str(&plain_url).map_err(|e| {
            Error::Config(format!(
                "{}: bad database URL: {}",
                env.file.display(),
                redact_urls(&e.to_string())
            ))
        })?;
        let database = options.get_database().map(str::to_string).ok_or_else(|| {
            Error::Config(format!(
                "{}: the database URL names no database; pg snapshots copy a named database",
                env.file.display()
            ))
        })?;
        let (maintenance_db, method) = match &config.provider {
            ProviderConfig::PgTemplate {
                terminate_sessions,
                maintenance_db,
            } => (
                maintenance_db.clone(),
                Method::Template {
                    terminate_sessions: *terminate_sessions,
                },
            ),
            ProviderConfig::PgDump {
                maintenance_db,
                pg_dump,
                pg_restore,
            } => {
                let tool = |given: &Option<PathBuf>, name: &str| {
                    given.clone().or_else(|| find_pg_tool(name)).ok_or_else(|| {
                        Error::Config(format!(
                            "{}: `{name}` is not on PATH nor under /usr/lib/postgresql; install the \
                             PostgreSQL client tools or set `snapshot.{name}`",
                            env.file.display()
                        ))
                    })
                };
                (
                    maintenance_db.clone(),
                    Method::Dump {
                        dir: env.state_dir.join("snapshots").join(&env.name),
                        pg_dump: tool(pg_dump, "pg_dump")?,
                        pg_restore: tool(pg_restore, "pg_restore")?,
                        tool_env: libpq_env(&plain_url)?,
                    },
                )
            }
            _ => {
                return Err(Error::Config(format!(
                    "{}: not a PostgreSQL snapshot provider",
                    env.file.display()
                )))
            }
        };
        let admin = options
            .database(&maintenance_db)
            .application_name(APPLICATION_NAME)
            .log_statements(tracing::log::LevelFilter::Trace)
            .log_slow_statements(tracing::log::LevelFilter::Off, Duration::from_secs(1));
        Ok(PgSnapshots {
            env_name: env.name.clone(),
            database,
            admin,
            method,
            lock_wait: config.timeout,
        })
    }

    /// Takes this database's snapshot lock on the maintenance connection, waiting (without a
    /// transaction, so holding no snapshot) while another session holds it.
    async fn lock_database(&self, conn: &mut PgConnection, progress: &dyn Progress) -> Result<()> {
        let deadline = Instant::now() + self.lock_wait;
        let mut told = false;
        loop {
            if self.try_lock_database(conn).await? {
                return Ok(());
            }
            let holder = self.lock_holder(conn).await.unwrap_or_default();
            if Instant::now() > deadline {
                return Err(Error::Snapshot(format!(
                    "another session has been copying or restoring `{}` for longer than the \
                     snapshot timeout ({}): {holder}. Wait for it, or end it",
                    self.database,
                    humantime::format_duration(self.lock_wait)
                )));
            }
            if !told {
                progress.update(&format!(
                    "waiting: another session is copying or restoring {}: {holder}",
                    self.database
                ));
                told = true;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn try_lock_database(&self, conn: &mut PgConnection) -> Result<bool> {
        sqlx::query_scalar("SELECT pg_try_advisory_lock($1, hashtext($2))")
            .bind(SNAPSHOT_LOCK_CLASS)
            .bind(&self.database)
            .fetch_one(conn)
            .await
            .map_err(|e| Error::database("taking the snapshot lock", e))
    }

    async fn unlock_database(&self, conn: &mut PgConnection) {
        let _ = sqlx::query("SELECT pg_advisory_unlock($1, hashtext($2))")
            .bind(SNAPSHOT_LOCK_CLASS)
            .bind(&self.database)
            .execute(conn)
            .await;
    }

    /// Who holds this database's snapshot lock, in words.
    async fn lock_holder(&self, conn: &mut PgConnection) -> Result<String> {
        let row: Option<(i32, String, String, Option<DateTime<Utc>>)> = sqlx::query_as(
            "SELECT a.pid, coalesce(a.application_name, ''), coalesce(a.usename::text, ''), a.backend_start \
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 \
               AND l.classid::bigint = ($1::bigint & 4294967295) \
               AND l.objid::bigint = (hashtext($2)::bigint & 4294967295)",
        )
        .bind(SNAPSHOT_LOCK_CLASS)
        .bind(&self.database)
        .fetch_optional(conn)
        .await
        .map_err(|e| Error::database("looking up the snapshot lock's holder", e))?;
        Ok(match row {
            Some((pid, application, user, since)) => format!(
                "pid {pid} (application_name `{application}`, user `{user}`, connected since {})",
                since
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_else(|| "unknown".into())
            ),
            None => "a session that has just let go".into(),
        })
    }

    fn failed_name(&self, run_id: &str) -> String {
        derived_name(&self.database, &format!("_failed_{}", run_token(run_id)))
    }

    fn staging_name(&self, run_id: &str) -> String {
        derived_name(&self.database, &format!("_restoring_{}", run_token(run_id)))
    }

    async fn connect(&self) -> Result<PgConnection> {
        self.admin.connect().await.map_err(|e| {
            Error::database(
                format!(
                    "cannot connect to the maintenance database of environment `{}`",
                    self.env_name
                ),
                e,
            )
        })
    }

    async fn exists(conn: &mut PgConnection, name: &str) -> Result<bool> {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(conn)
            .await
            .map_err(|e| Error::database("looking up databases", e))
    }

    async fn run(conn: &mut PgConnection, sql: &str, context: &str) -> Result<()> {
        conn.execute(sqlx::raw_sql(sql))
            .await
            .map(|_| ())
            .map_err(|e| Error::database(context.to_string(), e))
    }

    /// Sessions on `database` that would stop a copy or a rename. Autovacuum workers are not
    /// among them: `CREATE DATABASE` and `ALTER DATABASE … RENAME` end those themselves, and a
    /// busy database almost always has one at work.
    async fn sessions(conn: &mut PgConnection, database: &str) -> Result<Vec<Session>> {
        let rows = sqlx::query(
            "SELECT pid, coalesce(usename::text, ''), coalesce(application_name, ''), \
                    coalesce(host(client_addr), 'local'), backend_start, coalesce(state, '') \
             FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid() \
               AND backend_type <> 'autovacuum worker' ORDER BY pid",
        )
        .bind(database)
        .fetch_all(conn)
        .await
        .map_err(|e| Error::database("listing sessions", e))?;
        Ok(rows
            .iter()
            .map(|r| Session {
                pid: r.get(0),
                user: r.get(1),
                application: r.get(2),
                client: r.get(3),
                since: r.get(4),
                state: r.get(5),
            })
            .collect())
    }

    /// Blocks or re-allows new connections to `database`. A block is noted in `hazards` before
    /// it is made and cleared after it is lifted, so a crash in between is undone by the next
    /// sluice (see [`SnapshotProvider::recover`]).
    async fn set_connections(
        conn: &mut PgConnection,
        database: &str,
        allow: bool,
        hazards: &dyn HazardLog,
        run_id: &str,
    ) -> Result<()> {
        let hazard = Hazard::ConnectionsBlocked {
            database: database.to_string(),
        };
        if !allow {
            hazards.note(&hazard, run_id)?;
        }
        Self::run(
            conn,
            &allow_connections_sql(database, allow),
            &format!(
                "{} new connections to {database}",
                if allow { "re-allowing" } else { "blocking" }
            ),
        )
        .await?;
        if allow {
            hazards.clear(&hazard)?;
        }
        Ok(())
    }

    /// Blocks new connections to `database` and makes sure no session is left on it:
    /// terminating them only when the environment allows it, otherwise failing with their names
    /// (and letting connections in again).
    async fn isolate(
        &self,
        conn: &mut PgConnection,
        database: &str,
        what: &str,
        hazards: &dyn HazardLog,
        run_id: &str,
    ) -> Result<()> {
        let terminate = matches!(
            self.method,
            Method::Template {
                terminate_sessions: true
            }
        );
        Self::set_connections(conn, database, false, hazards, run_id).await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        // A connection a client has just closed stays in pg_stat_activity until its backend
        // exits, a few milliseconds later; sluice's own (the plan read just before) is one.
        let closing_grace = Instant::now() + CLOSING_GRACE;
        loop {
            let sessions = Self::sessions(conn, database).await?;
            if sessions.is_empty() {
                return Ok(());
            }
            if !terminate && Instant::now() < closing_grace {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            if !terminate || Instant::now() > deadline {
                Self::set_connections(conn, database, true, hazards, run_id).await?;
                let list = sessions
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join("; ");
                return Err(Error::Snapshot(if terminate {
                    format!(
                        "cannot {what}: sessions on `{database}` did not end within 10s after \
                         pg_terminate_backend: {list}"
                    )
                } else {
                    format!(
                        "cannot {what}: {} other session(s) are connected to `{database}`: {list}. \
                         Close them, or set `terminate_sessions = true` in the [snapshot] section \
                         of environment `{}` to let sluice end them",
                        sessions.len(),
                        self.env_name
                    )
                }));
            }
            for session in &sessions {
                sqlx::query("SELECT pg_terminate_backend($1)")
                    .bind(session.pid)
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| Error::database("terminating a session", e))?;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn rename(conn: &mut PgConnection, from: &str, to: &str) -> Result<()> {
        Self::run(
            conn,
            &format!(
                "ALTER DATABASE {} RENAME TO {}",
                quote_ident(from),
                quote_ident(to)
            ),
            &format!("renaming database {from} to {to}"),
        )
        .await
    }

    fn dump_path(&self, run_id: &str) -> Option<PathBuf> {
        match &self.method {
            Method::Dump { dir, .. } => {
                Some(dir.join(format!("{}.dump", self.snapshot_name(run_id))))
            }
            Method::Template { .. } => None,
        }
    }

    async fn tool(&self, program: &Path, args: &[&str], env: &[(String, String)]) -> Result<()> {
        let output = tokio::process::Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| Error::io(program, e))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(Error::Snapshot(format!(
                "{} {} failed ({}): {}",
                program.display(),
                args.join(" "),
                output.status,
                redact_urls(String::from_utf8_lossy(&output.stderr).trim())
            )))
        }
    }

    async fn create_from_template(
        &self,
        name: &str,
        run_id: &str,
        progress: &dyn Progress,
        hazards: &dyn HazardLog,
    ) -> Result<()> {
        let mut conn = self.connect().await?;
        self.lock_database(&mut conn, progress).await?;
        let result = self
            .create_from_template_locked(&mut conn, name, run_id, hazards)
            .await;
        self.unlock_database(&mut conn).await;
        let _ = conn.close().await;
        result
    }

    async fn create_from_template_locked(
        &self,
        conn: &mut PgConnection,
        name: &str,
        run_id: &str,
        hazards: &dyn HazardLog,
    ) -> Result<()> {
        if Self::exists(conn, name).await? {
            return Self::set_connections(conn, &self.database, true, hazards, run_id).await;
        }
        self.isolate(
            conn,
            &self.database,
            "take a template snapshot",
            hazards,
            run_id,
        )
        .await?;
        testhook::pause("snapshot-isolated");
        let created = Self::run(
            conn,
            &format!(
                "CREATE DATABASE {} TEMPLATE {}",
                quote_ident(name),
                quote_ident(&self.database)
            ),
            &format!("copying {} to {name}", self.database),
        )
        .await;
        let reopened = Self::set_connections(conn, &self.database, true, hazards, run_id).await;
        match created {
            Ok(()) => {}
            Err(e) if Self::exists(conn, name).await.unwrap_or(false) => {
                tracing::info!("{name} was created by an earlier attempt: {e}");
            }
            Err(e) => return Err(e),
        }
        reopened
    }

    async fn create_dump(&self, run_id: &str) -> Result<()> {
        let Method::Dump {
            dir,
            pg_dump,
            tool_env,
            ..
        } = &self.method
        else {
            return Ok(());
        };
        let Some(path) = self.dump_path(run_id) else {
            return Ok(());
        };
        if path.exists() {
            return Ok(());
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let partial = path.with_extension("dump.partial");
        let partial_text = partial.to_string_lossy().into_owned();
        self.tool(
            pg_dump,
            &[
                "-Fc",
                "--no-password",
                "-f",
                &partial_text,
                "-d",
                &self.database,
            ],
            tool_env,
        )
        .await?;
        testhook::pause("dump-written");
        std::fs::rename(&partial, &path).map_err(|e| Error::io(&path, e))
    }

    /// Brings a dump back as a database named like a template snapshot, so the restore swap
    /// is the same for both methods.
    async fn stage_dump(
        &self,
        conn: &mut PgConnection,
        snapshot: &str,
        run_id: &str,
    ) -> Result<()> {
        let Method::Dump {
            pg_restore,
            tool_env,
            dir,
            ..
        } = &self.method
        else {
            return Ok(());
        };
        let path = dir.join(format!("{snapshot}.dump"));
        if !path.exists() {
            return Err(Error::Snapshot(format!(
                "no snapshot `{snapshot}` for environment `{}`: {} does not exist",
                self.env_name,
                path.display()
            )));
        }
        let staging = self.staging_name(run_id);
        if Self::exists(conn, &staging).await? {
            Self::run(
                conn,
                &format!("DROP DATABASE {} WITH (FORCE)", quote_ident(&staging)),
                &format!("dropping the half-restored staging database {staging}"),
            )
            .await?;
        }
        Self::run(
            conn,
            &format!(
                "CREATE DATABASE {} TEMPLATE template0",
                quote_ident(&staging)
            ),
            &format!("creating the staging database {staging}"),
        )
        .await?;
        let path_text = path.to_string_lossy().into_owned();
        self.tool(
            pg_restore,
            &[
                "--no-password",
                "--exit-on-error",
                "-d",
                &staging,
                &path_text,
            ],
            tool_env,
        )
        .await?;
        Self::rename(conn, &staging, snapshot).await
    }
    async fn restore_locked(
        &self,
        conn: &mut PgConnection,
        snapshot: &str,
        run_id: &str,
        progress: &dyn Progress,
        hazards: &dyn HazardLog,
    ) -> Result<Restored> {
        let target = &self.database;
        let failed = self.failed_name(run_id);
        let done = Restored {
            snapshot: snapshot.to_string(),
            preserved_as: failed.clone(),
        };
        let failed_exists = Self::exists(conn, &failed).await?;
        let target_exists = Self::exists(conn, target).await?;
        let mut snapshot_exists = Self::exists(conn, snapshot).await?;
        if failed_exists && target_exists && !snapshot_exists {
            Self::set_connections(conn, target, true, hazards, run_id).await?;
            return Ok(done);
        }
        if !failed_exists {
            if !snapshot_exists {
                progress.update(&format!(
                    "restoring dump {snapshot} into a staging database"
                ));
                self.stage_dump(conn, snapshot, run_id).await?;
                snapshot_exists = Self::exists(conn, snapshot).await?;
            }
            if !snapshot_exists {
                return Err(Error::Snapshot(format!(
                    "no snapshot `{snapshot}` for environment `{}`; `sluice snapshots --env {}` lists them",
                    self.env_name, self.env_name
                )));
            }
            if !target_exists {
                return Err(Error::Snapshot(format!(
                    "database `{target}` of environment `{}` does not exist, and no `{failed}` either; \
                     nothing was changed",
                    self.env_name
                )));
            }
            progress.update(&format!("moving {target} aside as {failed}"));
            self.isolate(conn, target, "restore", hazards, run_id)
                .await?;
            Self::rename(conn, target, &failed).await?;
            Self::set_connections(conn, &failed, true, hazards, run_id).await?;
            hazards.clear(&Hazard::ConnectionsBlocked {
                database: target.clone(),
            })?;
        }
        testhook::pause("restore-between-renames");
        if !snapshot_exists {
            return Err(Error::Snapshot(format!(
                "`{target}` was moved aside as `{failed}`, but the snapshot `{snapshot}` is gone; \
                 nothing was dropped. Rename `{failed}` back to `{target}` to undo"
            )));
        }
        progress.update(&format!("renaming {snapshot} to {target}"));
        self.isolate(conn, snapshot, "restore", hazards, run_id)
            .await?;
        Self::rename(conn, snapshot, target).await?;
        Self::set_connections(conn, target, true, hazards, run_id).await?;
        hazards.clear(&Hazard::ConnectionsBlocked {
            database: snapshot.to_string(),
        })?;
        Ok(done)
    }

    /// Lifts every connection block left on this environment's databases (the database and
    /// sluice's copies of it) and forgets the hazards; called with the snapshot lock held, so
    /// no copy or restore is under way.
    async fn recover_locked(
        &self,
        conn: &mut PgConnection,
        open: &[super::NotedHazard],
        hazards: &dyn HazardLog,
    ) -> Result<Vec<String>> {
        let mut names: Vec<String> = open
            .iter()
            .map(|noted| match &noted.hazard {
                Hazard::ConnectionsBlocked { database } => database.clone(),
            })
            .collect();
        names.push(self.database.clone());
        let prefixes = [
            derived_name(&self.database, "_snap_"),
            derived_name(&self.database, "_failed_"),
            derived_name(&self.database, "_restoring_"),
        ];
        let blocked: Vec<String> = sqlx::query_scalar(
            "SELECT datname FROM pg_database WHERE NOT datallowconn AND NOT datistemplate \
             AND (datname = ANY($1) OR starts_with(datname, $2) OR starts_with(datname, $3) \
                  OR starts_with(datname, $4)) ORDER BY datname",
        )
        .bind(&names)
        .bind(&prefixes[0])
        .bind(&prefixes[1])
        .bind(&prefixes[2])
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| Error::database("looking for databases left without connections", e))?;
        let by = open
            .iter()
            .map(|n| format!("run {} at {}", n.run_id, n.at.to_rfc3339()))
            .collect::<Vec<_>>()
            .join(", ");
        let mut done = Vec::new();
        for database in &blocked {
            Self::run(
                conn,
                &allow_connections_sql(database, true),
                &format!("re-allowing new connections to {database}"),
            )
            .await?;
            done.push(format!(
                "re-allowed connections to `{database}`: sluice blocked them for a copy or restore \
                 ({by}) whose process ended before it could let them in again"
            ));
        }
        for noted in open {
            hazards.clear(&noted.hazard)?;
        }
        Ok(done)
    }
}

#[async_trait]
impl SnapshotProvider for PgSnapshots {
    fn kind(&self) -> &'static str {
        match self.method {
            Method::Template { .. } => "pg-template",
            Method::Dump { .. } => "pg-dump",
        }
    }

    fn snapshot_name(&self, run_id: &str) -> String {
        derived_name(&self.database, &format!("_snap_{}", run_token(run_id)))
    }

    async fn create(
        &self,
        run_id: &str,
        progress: &dyn Progress,
        hazards: &dyn HazardLog,
    ) -> Result<Snapshot> {
        let name = self.snapshot_name(run_id);
        progress.update(&format!("copying {} to {name}", self.database));
        match &self.method {
            Method::Template { .. } => {
                self.create_from_template(&name, run_id, progress, hazards)
                    .await?
            }
            Method::Dump { .. } => self.create_dump(run_id).await?,
        }
        let found = self.list().await?.into_iter().find(|s| s.name == name);
        found.ok_or_else(|| {
            Error::Snapshot(format!(
                "snapshot {name} was made but cannot be found again"
            ))
        })
    }

    async fn restore(
        &self,
        snapshot: &str,
        run_id: &str,
        progress: &dyn Progress,
        hazards: &dyn HazardLog,
    ) -> Result<Restored> {
        let mut conn = self.connect().await?;
        self.lock_database(&mut conn, progress).await?;
        let result = self
            .restore_locked(&mut conn, snapshot, run_id, progress, hazards)
            .await;
        self.unlock_database(&mut conn).await;
        let _ = conn.close().await;
        result
    }

    async fn recover(
        &self,
        hazards: &dyn HazardLog,
        progress: &dyn Progress,
    ) -> Result<Vec<String>> {
        let open = hazards.open()?;
        if open.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.connect().await?;
        // A copy whose client was killed goes on in its server session, holding the lock, until
        // it is done: wait for it (or for another sluice's copy) before looking.
        self.lock_database(&mut conn, progress).await?;
        let result = self.recover_locked(&mut conn, &open, hazards).await;
        self.unlock_database(&mut conn).await;
        let _ = conn.close().await;
        result
    }
    async fn delete(&self, name: &str) -> Result<()> {
        let is_ours = [
            format!("{}_snap_", self.database),
            format!("{}_failed_", self.database),
        ]
        .iter()
        .any(|prefix| name.starts_with(prefix.as_str()))
            || self.list().await?.iter().any(|s| s.name == name);
        if name == self.database || !is_ours {
            return Err(Error::Snapshot(format!(
                "`{name}` is not a snapshot or preserved copy of environment `{}`; refusing to delete it",
                self.env_name
            )));
        }
        if let Method::Dump { dir, .. } = &self.method {
            let path = dir.join(format!("{name}.dump"));
            if path.exists() {
                return std::fs::remove_file(&path).map_err(|e| Error::io(&path, e));
            }
        }
        let mut conn = self.connect().await?;
        Self::run(
            &mut conn,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(name)),
            &format!("dropping {name}"),
        )
        .await
    }

    async fn list(&self) -> Result<Vec<Snapshot>> {
        let mut conn = self.connect().await?;
        // Creation time is the copy's PG_VERSION file time; reading it needs superuser or
        // pg_read_server_files, so fall back to names and sizes without it.
        let detailed = sqlx::query(
            "SELECT d.datname, pg_database_size(d.oid), \
                    (pg_stat_file('base/' || d.oid || '/PG_VERSION', true)).modification \
             FROM pg_database d ORDER BY d.datname",
        )
        .fetch_all(&mut conn)
        .await;
        let names: Vec<(String, Option<i64>, Option<DateTime<Utc>>)> = match detailed {
            Ok(rows) => rows
                .iter()
                .map(|r| (r.get(0), r.try_get(1).ok(), r.try_get(2).ok().flatten()))
                .collect(),
            Err(_) => sqlx::query_as::<_, (String, i64)>(
                "SELECT datname, pg_database_size(oid) FROM pg_database ORDER BY datname",
            )
            .fetch_all(&mut conn)
            .await
            .map_err(|e| Error::database("listing databases", e))?
            .into_iter()
            .map(|(n, size)| (n, Some(size), None))
            .collect(),
        };
        let _ = conn.close().await;
        let snap_prefix = derived_name(&self.database, "_snap_");
        let failed_prefix = derived_name(&self.database, "_failed_");
        let mut out = Vec::new();
        if let Method::Dump { dir, .. } = &self.method {
            if let Ok(entries) = std::fs::read_dir(dir) {
                for entry in entries.flatten() {
                    let file = entry.file_name().to_string_lossy().into_owned();
                    let Some(name) = file.strip_suffix(".dump") else {
                        continue;
                    };
                    let meta = entry.metadata().ok();
                    out.push(Snapshot {
                        name: name.to_string(),
                        kind: SnapshotKind::Snapshot,
                        run: name.rsplit('_').next().map(str::to_string),
                        created_at: meta
                            .as_ref()
                            .and_then(|m| m.modified().ok())
                            .map(DateTime::<Utc>::from),
                        status: "dump file".into(),
                        size_bytes: meta.map(|m| m.len()),
                    });
                }
            }
        }
        for (name, size, created) in names {
            let kind = if name.starts_with(&failed_prefix) {
                SnapshotKind::Preserved
            } else if name.starts_with(&snap_prefix)
                && matches!(self.method, Method::Template { .. })
            {
                SnapshotKind::Snapshot
            } else {
                continue;
            };
            out.push(Snapshot {
                run: name.rsplit('_').next().map(str::to_string),
                name,
                kind,
                created_at: created,
                status: "database".into(),
                size_bytes: size.map(|s| s.max(0) as u64),
            });
        }
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.name.cmp(&b.name)));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_names_fit_postgres_identifiers_and_keep_the_token() {
        let long = "d".repeat(70);
        let name = derived_name(&long, "_failed_0123456789ab");
        assert_eq!(name.len(), 63);
        assert!(name.ends_with("_failed_0123456789ab"));
        assert_eq!(derived_name("app", "_snap_x"), "app_snap_x");
        let multibyte = "é".repeat(40);
        let name = derived_name(&multibyte, "_snap_0123456789ab");
        assert!(name.len() <= 63 && name.ends_with("_snap_0123456789ab"));
    }

    #[test]
    fn tool_environment_carries_the_password_out_of_argv() {
        let vars = libpq_env("postgres://app:p%40ss@db.example:6543/shop?sslmode=require").unwrap();
        assert!(vars.contains(&("PGPASSWORD".into(), "p@ss".into())));
        assert!(vars.contains(&("PGHOST".into(), "db.example".into())));
        assert!(vars.contains(&("PGPORT".into(), "6543".into())));
        assert!(vars.contains(&("PGSSLMODE".into(), "require".into())));
        let vars = libpq_env("postgres://postgres@localhost/db?host=/tmp/sock").unwrap();
        assert!(vars.contains(&("PGHOST".into(), "/tmp/sock".into())));
    }
}
