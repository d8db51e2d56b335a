//! The expected schema of a release: its migrations applied, with the same engine code that
//! applies them to real environments, to an empty database (a shadow), then introspected.
//! Building one costs a database and a full apply, so results are kept in the store by the
//! hash of the migrations (name and checksum) and the server's major version.

use std::path::PathBuf;
use std::str::FromStr;

use async_trait::async_trait;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};

use crate::apply::{self, ApplyOptions, Context, Silent};
use crate::config::{Environment, ShadowConfig, UrlSource};
use crate::drift::introspect::{introspect_postgres, introspect_sqlite, IntrospectOptions};
use crate::drift::model::Schema;
use crate::error::{Error, Result};
use crate::migrations::MigrationSet;
use crate::store::Store;
use crate::target::postgres::take_schema_param;
use crate::target::{self, Engine};

/// An empty database to build an expected schema in, and how to give it back.
#[async_trait]
pub trait Shadow: Send + Sync {
    /// Where the schema is built, for messages (no secrets).
    fn describe(&self) -> String;
    /// The URL of an empty database.
    async fn acquire(&self) -> Result<String>;
    /// Called once the schema has been read (also after a failed build).
    async fn release(&self, url: &str) -> Result<()>;
}

/// The shadow an environment's `[drift]` section names; SQLite needs none (a temporary file).
pub fn shadow_for(env: &Environment, live_url: &str) -> Result<Box<dyn Shadow>> {
    match Engine::from_url(live_url)? {
        Engine::Sqlite => Ok(Box::new(SqliteShadow)),
        Engine::Postgres => match &env.drift.shadow {
            ShadowConfig::Unset => Err(Error::Config(format!(
                "{}: environment `{}` has nowhere to build its expected schema: add \
                 `[drift] shadow_url_env = \"VAR\"` (a database sluice may erase) or \
                 `[drift] scratch_databases = true` (sluice creates and drops a database on \
                 this server; needs CREATEDB)",
                env.file.display(),
                env.name
            ))),
            ShadowConfig::Url(source) => {
                let url = source.read(&env.file)?;
                refuse_same_database(env, live_url, &url)?;
                Ok(Box::new(PgShadowUrl { url }))
            }
            ShadowConfig::Scratch { maintenance_db } => Ok(Box::new(PgScratch {
                base_url: live_url.to_string(),
                maintenance_db: maintenance_db.clone(),
                env_name: env.name.clone(),
            })),
        },
    }
}

fn pg_options(url: &str) -> Result<PgConnectOptions> {
    let (plain, _) = take_schema_param(url);
    PgConnectOptions::from_str(&plain).map_err(|e| {
        Error::Config(format!(
            "bad PostgreSQL URL: {}",
            crate::error::redact_urls(&e.to_string())
        ))
    })
}

/// A shadow URL that points at the environment itself would be erased: refuse it.
fn refuse_same_database(env: &Environment, live_url: &str, shadow_url: &str) -> Result<()> {
    let (live, shadow) = (pg_options(live_url)?, pg_options(shadow_url)?);
    if live.get_host() == shadow.get_host()
        && live.get_port() == shadow.get_port()
        && live.get_database() == shadow.get_database()
    {
        return Err(Error::Config(format!(
            "{}: key `drift.shadow_url_*`: the shadow database is the environment's own database; \
             sluice erases the shadow before each build, so give it a database of its own",
            env.file.display()
        )));
    }
    Ok(())
}

/// The URL with another database name (keeping host, credentials and parameters).
pub fn url_with_database(url: &str, database: &str) -> Result<String> {
    let mut parsed =
        url::Url::parse(url).map_err(|e| Error::Config(format!("bad PostgreSQL URL: {e}")))?;
    parsed.set_path(&format!("/{database}"));
    Ok(parsed.to_string())
}

/// Runs SQL text (several statements, no parameters) on a connection.
async fn run_sql(conn: &mut sqlx::PgConnection, sql: &str) -> std::result::Result<(), sqlx::Error> {
    use sqlx::Executor;
    conn.execute(sqlx::raw_sql(sql)).await.map(|_| ())
}

/// A temporary SQLite file.
struct SqliteShadow;

#[async_trait]
impl Shadow for SqliteShadow {
    fn describe(&self) -> String {
        "a temporary SQLite file".into()
    }

    async fn acquire(&self) -> Result<String> {
        let dir =
            std::env::temp_dir().join(format!("sluice-shadow-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(format!("sqlite://{}", dir.join("shadow.db").display()))
    }

    async fn release(&self, url: &str) -> Result<()> {
        let path = PathBuf::from(url.trim_start_matches("sqlite://"));
        if let Some(dir) = path.parent() {
            std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        Ok(())
    }
}

/// A database given for the purpose, erased before each build.
struct PgShadowUrl {
    url: String,
}

/// Drops every schema but the server's own and recreates an empty `public`.
const ERASE_SQL: &str = r#"
DO $erase$
DECLARE s text;
BEGIN
  FOR s IN SELECT nspname FROM pg_namespace
           WHERE nspname NOT LIKE 'pg\_%' AND nspname <> 'information_schema'
  LOOP
    EXECUTE format('DROP SCHEMA %I CASCADE', s);
  END LOOP;
END
$erase$;
CREATE SCHEMA public;
"#;

#[async_trait]
impl Shadow for PgShadowUrl {
    fn describe(&self) -> String {
        let options = pg_options(&self.url).ok();
        let db = options
            .as_ref()
            .and_then(|o| o.get_database().map(str::to_string))
            .unwrap_or_default();
        format!("the shadow database `{db}`")
    }

    async fn acquire(&self) -> Result<String> {
        let context = "erasing the shadow database";
        let mut conn = pg_options(&self.url)?
            .connect()
            .await
            .map_err(|e| Error::database(context, e))?;
        let erased = run_sql(&mut conn, ERASE_SQL).await;
        let _ = conn.close().await;
        erased.map_err(|e| Error::database(context, e))?;
        Ok(self.url.clone())
    }

    async fn release(&self, _url: &str) -> Result<()> {
        Ok(())
    }
}

/// A database created on the environment's own server for one build and dropped after it.
struct PgScratch {
    base_url: String,
    maintenance_db: String,
    env_name: String,
}

impl PgScratch {
    async fn admin(&self) -> Result<sqlx::PgConnection> {
        pg_options(&self.base_url)?
            .database(&self.maintenance_db)
            .connect()
            .await
            .map_err(|e| {
                Error::database(
                    format!(
                        "connecting to `{}` on the server of `{}` to manage scratch databases",
                        self.maintenance_db, self.env_name
                    ),
                    e,
                )
            })
    }
}

/// Prefix of scratch database names, so an operator can tell them apart; the creation time
/// (Unix seconds) follows it.
pub const SCRATCH_PREFIX: &str = "sluice_shadow_";

/// A scratch database older than this was left by a build that never finished (the process
/// was killed): the next build drops it.
pub const SCRATCH_ABANDONED_AFTER_SECS: i64 = 3600;

/// Drops scratch databases whose name says they were created more than an hour ago.
async fn drop_abandoned_scratch(
    admin: &mut sqlx::PgConnection,
    now: i64,
) -> std::result::Result<(), sqlx::Error> {
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE starts_with(datname, $1)")
            .bind(SCRATCH_PREFIX)
            .fetch_all(&mut *admin)
            .await?;
    for name in names {
        let created = name
            .strip_prefix(SCRATCH_PREFIX)
            .and_then(|rest| rest.split('_').next())
            .and_then(|epoch| epoch.parse::<i64>().ok());
        if created.is_some_and(|at| now - at > SCRATCH_ABANDONED_AFTER_SECS) {
            tracing::info!(database = %name, "dropping an abandoned scratch database");
            run_sql(
                admin,
                &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
            )
            .await?;
        }
    }
    Ok(())
}

#[async_trait]
impl Shadow for PgScratch {
    fn describe(&self) -> String {
        format!("a scratch database on the server of `{}`", self.env_name)
    }

    async fn acquire(&self) -> Result<String> {
        let now = chrono::Utc::now().timestamp();
        let token = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("{SCRATCH_PREFIX}{now}_{}", &token[..12]);
        let mut admin = self.admin().await?;
        if let Err(err) = drop_abandoned_scratch(&mut admin, now).await {
            tracing::warn!(error = %err, "could not drop abandoned scratch databases");
        }
        let created = run_sql(
            &mut admin,
            &format!("CREATE DATABASE \"{name}\" TEMPLATE template0"),
        )
        .await;
        let _ = admin.close().await;
        created.map_err(|e| {
            Error::database(
                format!(
                    "creating a scratch database on the server of `{}` (the user needs CREATEDB)",
                    self.env_name
                ),
                e,
            )
        })?;
        let (plain, _) = take_schema_param(&self.base_url);
        url_with_database(&plain, &name)
    }

    async fn release(&self, url: &str) -> Result<()> {
        let Some(name) = pg_options(url)?.get_database().map(str::to_string) else {
            return Ok(());
        };
        if !name.starts_with(SCRATCH_PREFIX) {
            return Ok(());
        }
        let mut admin = self.admin().await?;
        let dropped = run_sql(
            &mut admin,
            &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
        )
        .await;
        let _ = admin.close().await;
        dropped
            .map(|_| ())
            .map_err(|e| Error::database(format!("dropping scratch database `{name}`"), e))
    }
}

/// Reads a database's schema as it is.
pub async fn introspect_url(url: &str, what: &str) -> Result<Schema> {
    let context = format!("reading the schema of {what}");
    match Engine::from_url(url)? {
        Engine::Postgres => {
            let mut conn = pg_options(url)?
                .connect()
                .await
                .map_err(|e| Error::database(&context, e))?;
            let schema = introspect_postgres(&mut conn, &IntrospectOptions::default()).await;
            let _ = conn.close().await;
            schema.map_err(|e| Error::database(&context, e))
        }
        Engine::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(url)
                .await
                .map_err(|e| Error::database(&context, e))?;
            let schema = introspect_sqlite(&mut conn).await;
            let _ = conn.close().await;
            schema.map_err(|e| Error::database(&context, e))
        }
    }
}

/// The PostgreSQL server's major version (`None` for SQLite): lint rules and catalog
/// renderings depend on it.
pub async fn postgres_major(url: &str) -> Result<Option<u32>> {
    if Engine::from_url(url)? == Engine::Sqlite {
        return Ok(None);
    }
    let context = "reading the server version";
    let mut conn = pg_options(url)?
        .connect()
        .await
        .map_err(|e| Error::database(context, e))?;
    let version: std::result::Result<String, _> =
        sqlx::query_scalar("SELECT current_setting('server_version_num')")
            .fetch_one(&mut conn)
            .await;
    let _ = conn.close().await;
    let version = version.map_err(|e| Error::database(context, e))?;
    Ok(version.parse::<u32>().ok().map(|v| v / 10000))
}

/// The server's major version (`pg15`) or `sqlite`: part of the cache key, because catalog
/// renderings (view definitions, defaults) differ between majors.
pub async fn server_flavour(url: &str) -> Result<String> {
    Ok(match postgres_major(url).await? {
        Some(major) => format!("pg{major}"),
        None => "sqlite".into(),
    })
}

/// The store key of a cached expected schema.
pub fn cache_key(flavour: &str, release_hash: &str) -> String {
    format!("drift/expected/{flavour}/{release_hash}")
}

/// How an expected schema was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpectedSource {
    /// Read from the store: built earlier for the same migrations and server major.
    Cache,
    /// Built now in a shadow database.
    Built,
}

/// Where expected schemas are kept between checks.
#[derive(Clone, Copy)]
pub struct Cache<'a> {
    /// The store holding them.
    pub store: &'a dyn Store,
    /// Build again even when a cached schema exists (and replace it).
    pub rebuild: bool,
}

/// The schema `set`'s migrations produce on an empty database like `env`'s, from the cache
/// when it has it (and then kept there).
pub async fn expected_schema(
    env: &Environment,
    set: &MigrationSet,
    flavour: &str,
    shadow: &dyn Shadow,
    cache: Option<Cache<'_>>,
) -> Result<(Schema, ExpectedSource)> {
    let key = cache_key(flavour, &set.release_hash());
    if let Some(Cache {
        store,
        rebuild: false,
    }) = cache
    {
        match store.mark(&key) {
            Ok(Some(value)) => {
                if let Ok(schema) = serde_json::from_value::<Schema>(value) {
                    return Ok((schema, ExpectedSource::Cache));
                }
            }
            Ok(None) => {}
            Err(err) => tracing::warn!(error = %err, "could not read the expected-schema cache"),
        }
    }
    let url = shadow.acquire().await?;
    let built = build_in(env, set, &url, &shadow.describe()).await;
    let released = shadow.release(&url).await;
    let schema = built?;
    if let Err(err) = released {
        tracing::warn!(error = %err, "could not clean up after building the expected schema");
    }
    if let Some(Cache { store, .. }) = cache {
        match serde_json::to_value(&schema) {
            Ok(value) => {
                if let Err(err) = store.put_mark(&key, &value) {
                    tracing::warn!(error = %err, "could not cache the expected schema");
                }
            }
            Err(err) => tracing::warn!(error = %err, "could not encode the expected schema"),
        }
    }
    Ok((schema, ExpectedSource::Built))
}

/// Applies every migration of `set` to the empty database at `url` and reads its schema.
async fn build_in(env: &Environment, set: &MigrationSet, url: &str, what: &str) -> Result<Schema> {
    let mut shadow_env = env.clone();
    shadow_env.name = format!("{}-shadow", env.name);
    shadow_env.url_source = UrlSource::Inline(url.to_string());
    shadow_env.snapshot = None;
    shadow_env.health.clear();
    let mut target = target::connect(&shadow_env).await?;
    let applied = match Context::new(&shadow_env, set, target.as_ref()) {
        Ok(ctx) => apply::apply(target.as_mut(), &ctx, &ApplyOptions::default(), &Silent)
            .await
            .map(|_| ()),
        Err(err) => Err(err),
    };
    let _ = target.close().await;
    applied.map_err(|err| match err {
        Error::Migration(failure) => Error::Guard(format!(
            "building the expected schema in {what} failed, so drift cannot be judged: {}",
            Error::Migration(failure)
        )),
        other => other,
    })?;
    introspect_url(url, what).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_with_database_keeps_credentials_and_parameters() {
        let url = url_with_database(
            "postgres://u:p%40ss@db.example:6543/app?sslmode=require&host=/run/pg",
            "sluice_shadow_1",
        )
        .unwrap();
        assert_eq!(
            url,
            "postgres://u:p%40ss@db.example:6543/sluice_shadow_1?sslmode=require&host=/run/pg"
        );
    }

    #[test]
    fn cache_keys_separate_server_majors() {
        assert_ne!(cache_key("pg15", "abc"), cache_key("pg16", "abc"));
        assert_eq!(cache_key("sqlite", "abc"), "drift/expected/sqlite/abc");
    }
}
