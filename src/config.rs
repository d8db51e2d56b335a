//! Reading `sluice.toml` and `environments/<name>.toml` into typed, validated structs.
//!
//! Every error names the file, the line and the key, because a deploy tool that says "invalid
//! config" at 6 pm is worse than none.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::error::{Error, Result};

pub mod chatops;
pub mod drift;
pub(crate) mod keys;

pub use chatops::ChatOpsConfig;
pub use drift::{DriftConfig, EnvDriftConfig, ShadowConfig};

/// Name of the project file at the project's root.
pub const PROJECT_FILE: &str = "sluice.toml";
/// Folder, beside `sluice.toml`, holding one file per environment.
pub const ENVIRONMENTS_DIR: &str = "environments";

/// The project as described by `sluice.toml`: where migrations and local state live.
#[derive(Debug, Clone)]
pub struct Project {
    /// Folder holding `sluice.toml`; relative paths in config are resolved against it.
    pub root: PathBuf,
    /// The migrations directory.
    pub migrations_dir: PathBuf,
    /// Where sluice keeps local state (SQLite files of the example, later the store).
    pub state_dir: PathBuf,
    /// How `sluice serve` listens and whom it lets in.
    pub daemon: DaemonConfig,
    /// Slack, notifications and the inbound release hook.
    pub chatops: ChatOpsConfig,
    /// What drift comparisons leave out.
    pub drift: DriftConfig,
}

/// The `[daemon]` section of `sluice.toml`.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonConfig {
    /// Address the HTTP API listens on; CLI commands talk to it there.
    pub listen: String,
    /// The file of hashed API tokens, if any (without one every API call but health is refused).
    pub tokens_file: Option<PathBuf>,
    /// How often gates (soak, windows) are evaluated again.
    pub tick: Duration,
    /// How often the migrations directory is read for a new release; zero turns watching off.
    pub watch_interval: Duration,
}

/// Where the daemon listens unless `sluice.toml` says otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7407";

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            listen: DEFAULT_LISTEN.into(),
            tokens_file: None,
            tick: Duration::from_secs(1),
            watch_interval: Duration::from_secs(5),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProject {
    migrations: Option<Spanned<String>>,
    state_dir: Option<Spanned<String>>,
    daemon: Option<RawDaemon>,
    slack: Option<Spanned<chatops::RawSlack>>,
    #[serde(default)]
    notify: Vec<chatops::RawNotify>,
    hooks: Option<Spanned<chatops::RawHooks>>,
    drift: Option<drift::RawProjectDrift>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    listen: Option<Spanned<String>>,
    tokens_file: Option<Spanned<String>>,
    tick: Option<Spanned<String>>,
    watch_interval: Option<Spanned<String>>,
}

/// Which history table records applied migrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HistoryMode {
    /// Prisma's own `_prisma_migrations`, so `prisma migrate status` agrees with sluice.
    Prisma,
    /// sluice's `_sluice_migrations`, which also records runs and who resolved what.
    Sluice,
}

impl fmt::Display for HistoryMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HistoryMode::Prisma => "prisma",
            HistoryMode::Sluice => "sluice",
        })
    }
}

/// Where an environment's database URL comes from; secrets never sit in the file itself.
#[derive(Debug, Clone)]
pub enum UrlSource {
    /// Inline in the file: allowed only for `sqlite:` URLs, which hold no secret.
    Inline(String),
    /// The named environment variable.
    Env(String),
    /// The first line of the named file.
    File(PathBuf),
}

/// One environment: a target database and how sluice treats it.
#[derive(Debug, Clone)]
pub struct Environment {
    /// The environment's name (its file name without `.toml`).
    pub name: String,
    /// The file it was read from, for messages.
    pub file: PathBuf,
    /// Where the database URL comes from.
    pub url_source: UrlSource,
    /// How long to wait for locks: the migration lock and, on the server, each DDL lock.
    pub lock_timeout: Duration,
    /// Server-side limit for one statement; zero means none.
    pub statement_timeout: Duration,
    /// The history table, when the file chooses one; otherwise the directory's layout decides.
    pub history: Option<HistoryMode>,
    /// How to snapshot and restore this environment, when configured.
    pub snapshot: Option<SnapshotConfig>,
    /// Checks that decide whether the environment is healthy after a run (`[[health]]`).
    pub health: Vec<crate::health::HealthCheck>,
    /// Where its expected schema is built and what its drift checks leave out.
    pub drift: EnvDriftConfig,
    /// The project's state directory (local snapshots, dumps, the store).
    pub state_dir: PathBuf,
    project_root: PathBuf,
}

/// Where a secret comes from: never the config file itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// The named environment variable.
    Env(String),
    /// The first line of the named file.
    File(PathBuf),
}

impl SecretSource {
    /// Reads the secret now; `origin` names the config file for messages.
    pub fn read(&self, origin: &Path) -> Result<String> {
        let value = match self {
            SecretSource::Env(var) => std::env::var(var).map_err(|_| {
                Error::Config(format!(
                    "{}: environment variable `{var}` is not set",
                    origin.display()
                ))
            })?,
            SecretSource::File(path) => read(path)?.lines().next().unwrap_or_default().to_string(),
        };
        let value = value.trim().to_string();
        if value.is_empty() {
            return Err(Error::Config(format!(
                "{}: the secret from {self:?} is empty",
                origin.display()
            )));
        }
        Ok(value)
    }
}

/// The `[snapshot]` section: a provider and its settings, waits and retention.
#[derive(Debug, Clone)]
pub struct SnapshotConfig {
    /// The provider and its own settings.
    pub provider: ProviderConfig,
    /// The longest a provider operation (a cloud snapshot, a restore) may take.
    pub timeout: Duration,
    /// How often a provider polls a long operation.
    pub poll_interval: Duration,
    /// Which snapshots `sluice snapshots prune` may delete.
    pub retention: Retention,
}

/// Retention rules: a snapshot is kept if either rule keeps it, and the snapshot of the last
/// successful run is always kept. No rule at all (an empty `[snapshot.retention]`) keeps
/// everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retention {
    /// Keep the newest N snapshots (and, counted separately, the newest N preserved copies).
    pub keep_last: Option<usize>,
    /// Keep snapshots younger than this.
    pub max_age: Option<Duration>,
}

impl Retention {
    /// What applies when a `[snapshot]` section has no `[snapshot.retention]`: the newest five
    /// snapshots and the newest five preserved copies, whatever their age, so copies stop
    /// piling up without anyone having to configure it (README: Snapshots and restores).
    pub const WHEN_UNSET: Retention = Retention {
        keep_last: Some(5),
        max_age: None,
    };
}

/// Settings of the Neon provider.
#[derive(Debug, Clone)]
pub struct NeonConfig {
    /// Neon project id.
    pub project_id: String,
    /// The environment's branch id.
    pub branch_id: String,
    /// The API key.
    pub api_key: SecretSource,
    /// API base URL (default `https://console.neon.tech/api/v2`).
    pub base_url: String,
}

/// Settings of the RDS providers.
#[derive(Debug, Clone)]
pub struct RdsConfig {
    /// DB instance identifier (`rds`) or DB cluster identifier (`rds-cluster`).
    pub identifier: String,
    /// AWS region; the usual AWS chain decides when absent.
    pub region: Option<String>,
    /// Endpoint override (moto, LocalStack, a VPC endpoint).
    pub endpoint_url: Option<String>,
}

/// Which provider, with its own settings.
#[derive(Debug, Clone)]
pub enum ProviderConfig {
    /// `CREATE DATABASE … TEMPLATE` on the same server.
    PgTemplate {
        /// Whether other sessions on the target may be terminated for the copy.
        terminate_sessions: bool,
        /// Database to connect to for CREATE/ALTER DATABASE (default `postgres`).
        maintenance_db: String,
    },
    /// `pg_dump -Fc` into the state directory; `pg_restore` into a fresh database.
    PgDump {
        /// Database to connect to for CREATE/ALTER DATABASE (default `postgres`).
        maintenance_db: String,
        /// The `pg_dump` binary (default: found on PATH or under /usr/lib/postgresql).
        pg_dump: Option<PathBuf>,
        /// The `pg_restore` binary.
        pg_restore: Option<PathBuf>,
    },
    /// An online copy of the SQLite file.
    SqliteFile,
    /// Neon branches.
    Neon(NeonConfig),
    /// AWS RDS instance snapshots.
    Rds(RdsConfig),
    /// Aurora cluster snapshots.
    RdsCluster(RdsConfig),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    keep_last: Option<Spanned<i64>>,
    max_age: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSnapshot {
    provider: Spanned<String>,
    terminate_sessions: Option<Spanned<bool>>,
    maintenance_db: Option<Spanned<String>>,
    pg_dump: Option<Spanned<String>>,
    pg_restore: Option<Spanned<String>>,
    project_id: Option<Spanned<String>>,
    branch_id: Option<Spanned<String>>,
    api_key_env: Option<Spanned<String>>,
    api_key_file: Option<Spanned<String>>,
    base_url: Option<Spanned<String>>,
    instance_id: Option<Spanned<String>>,
    cluster_id: Option<Spanned<String>>,
    region: Option<Spanned<String>>,
    endpoint_url: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    poll_interval: Option<Spanned<String>>,
    retention: Option<RawRetention>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnvironment {
    url: Option<Spanned<String>>,
    url_env: Option<Spanned<String>>,
    url_file: Option<Spanned<String>>,
    lock_timeout: Option<Spanned<String>>,
    statement_timeout: Option<Spanned<String>>,
    history: Option<Spanned<HistoryMode>>,
    snapshot: Option<RawSnapshot>,
    health: Option<Vec<crate::health::RawHealthCheck>>,
    drift: Option<drift::RawEnvDrift>,
}

/// Default wait for the migration lock and for DDL locks on the server.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// Position-aware error builder for one TOML file; shared with `policy` and the tokens file,
/// so every config file names file, line and key the same way.
pub(crate) struct FileContext<'a> {
    /// The file, for messages.
    pub(crate) path: &'a Path,
    /// The file's text, to turn byte offsets into line numbers.
    pub(crate) text: &'a str,
}

impl FileContext<'_> {
    pub(crate) fn line_of(&self, offset: usize) -> usize {
        crate::error::line_of(self.text, offset)
    }

    pub(crate) fn at<T>(&self, key: &str, value: &Spanned<T>, message: impl fmt::Display) -> Error {
        Error::Config(format!(
            "{}:{}: key `{key}`: {message}",
            self.path.display(),
            self.line_of(value.span().start)
        ))
    }

    pub(crate) fn parse_error(&self, err: toml::de::Error) -> Error {
        let line = err.span().map(|s| self.line_of(s.start));
        let key = line.and_then(|l| {
            let text = self.text.lines().nth(l - 1)?;
            let (key, _) = text.split_once('=')?;
            let key = key.trim();
            (!key.is_empty() && !key.starts_with('[')).then(|| key.to_string())
        });
        let message = err.message().trim().to_string();
        Error::Config(match (line, key) {
            (Some(l), Some(k)) => format!("{}:{l}: key `{k}`: {message}", self.path.display()),
            (Some(l), None) => format!("{}:{l}: {message}", self.path.display()),
            _ => format!("{}: {message}", self.path.display()),
        })
    }

    pub(crate) fn duration(
        &self,
        key: &str,
        value: &Option<Spanned<String>>,
    ) -> Result<Option<Duration>> {
        let Some(value) = value else { return Ok(None) };
        parse_duration(value.get_ref())
            .map(Some)
            .map_err(|message| self.at(key, value, message))
    }
}

/// Parses a config duration such as `"10s"`, `"2m"` or `"500ms"`; the error is the message
/// every config file shows for a bad one.
pub(crate) fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!("`{text}` is not a duration ({e}); write e.g. \"10s\", \"2m\" or \"500ms\"")
    })
}

fn read(path: &Path) -> Result<String> {
    read_text(path)
}

/// Reads a configuration file as text. Bytes that are not UTF-8 are a config error naming the
/// file and the line, like every other mistake in a config file.
pub(crate) fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    String::from_utf8(bytes).map_err(|e| {
        let bytes = e.as_bytes();
        let at = e.utf8_error().valid_up_to();
        let line_start = bytes[..at]
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1);
        let column = String::from_utf8_lossy(&bytes[line_start..at])
            .chars()
            .count()
            + 1;
        Error::Config(format!(
            "{}:{}: not valid UTF-8 (byte 0x{:02X} at column {column}); save the file as UTF-8",
            path.display(),
            bytes[..at].iter().filter(|b| **b == b'\n').count() + 1,
            bytes.get(at).copied().unwrap_or_default()
        ))
    })
}

impl Project {
    /// Loads `sluice.toml` from `root`. A missing file means the defaults: `migrations/` and
    /// `.sluice/`, so a directory of migrations works without ceremony.
    pub fn load(root: &Path) -> Result<Project> {
        let path = root.join(PROJECT_FILE);
        let text = if path.exists() {
            read(&path)?
        } else {
            String::new()
        };
        let ctx = FileContext {
            path: &path,
            text: &text,
        };
        let raw = toml::from_str::<RawProject>(&text).map_err(|e| ctx.parse_error(e))?;
        let mut daemon = DaemonConfig::default();
        if let Some(d) = raw.daemon {
            if let Some(listen) = &d.listen {
                if listen.get_ref().parse::<std::net::SocketAddr>().is_err() {
                    return Err(ctx.at(
                        "listen",
                        listen,
                        format!(
                            "`{}` is not an address such as \"127.0.0.1:7407\"",
                            listen.get_ref()
                        ),
                    ));
                }
                daemon.listen = listen.get_ref().clone();
            }
            daemon.tokens_file = d.tokens_file.map(|t| root.join(t.into_inner()));
            if let (Some(tick), Some(raw_tick)) = (ctx.duration("tick", &d.tick)?, &d.tick) {
                if tick.is_zero() {
                    return Err(ctx.at("tick", raw_tick, "must be more than zero"));
                }
                daemon.tick = tick;
            }
            if let Some(watch) = ctx.duration("watch_interval", &d.watch_interval)? {
                daemon.watch_interval = watch;
            }
        }
        let resolve = |v: Option<Spanned<String>>, default: &str| {
            let p = v.map(|s| s.into_inner()).unwrap_or_else(|| default.into());
            root.join(p)
        };
        let chatops = chatops::parse(&ctx, root, raw.slack, raw.notify, raw.hooks)?;
        let drift = drift::parse_project(&ctx, raw.drift)?;
        Ok(Project {
            root: root.to_path_buf(),
            migrations_dir: resolve(raw.migrations, "migrations"),
            state_dir: resolve(raw.state_dir, ".sluice"),
            daemon,
            chatops,
            drift,
        })
    }

    /// The names of all environments, sorted.
    pub fn environment_names(&self) -> Result<Vec<String>> {
        let dir = self.root.join(ENVIRONMENTS_DIR);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(&dir, e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&dir, e))?;
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) == Some("toml") {
                if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
                    names.push(stem.to_string());
                }
            }
        }
        names.sort();
        Ok(names)
    }

    /// Loads and validates one environment; an unknown name lists the known ones.
    pub fn environment(&self, name: &str) -> Result<Environment> {
        let valid_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        let path = self
            .root
            .join(ENVIRONMENTS_DIR)
            .join(format!("{name}.toml"));
        if !valid_name || !path.exists() {
            let known = self.environment_names()?;
            return Err(Error::Config(format!(
                "unknown environment `{name}`: no file {}; known environments: {}",
                path.display(),
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )));
        }
        let text = read(&path)?;
        let mut env = Environment::parse(name, &path, &text, &self.root)?;
        env.state_dir = self.state_dir.clone();
        Ok(env)
    }
}

impl Environment {
    /// Parses one environment file's text; `path` is used for messages only.
    pub fn parse(name: &str, path: &Path, text: &str, project_root: &Path) -> Result<Environment> {
        let ctx = FileContext { path, text };
        let raw: RawEnvironment = toml::from_str(text).map_err(|e| ctx.parse_error(e))?;
        let given: Vec<&str> = [
            raw.url.as_ref().map(|_| "url"),
            raw.url_env.as_ref().map(|_| "url_env"),
            raw.url_file.as_ref().map(|_| "url_file"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if given.len() > 1 {
            return Err(Error::Config(format!(
                "{}: keys {} are exclusive: give exactly one source for the database URL",
                path.display(),
                given
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(" and ")
            )));
        }
        let url_source = if let Some(url) = raw.url {
            if !url.get_ref().starts_with("sqlite:") {
                return Err(ctx.at(
                    "url",
                    &url,
                    "inline URLs are allowed only for `sqlite:` databases; put the URL in an \
                     environment variable (`url_env = \"VAR\"`) or a file (`url_file = \"path\"`) \
                     so no password lands in the repository",
                ));
            }
            UrlSource::Inline(url.into_inner())
        } else if let Some(var) = raw.url_env {
            if var.get_ref().trim().is_empty() {
                return Err(ctx.at("url_env", &var, "must name an environment variable"));
            }
            UrlSource::Env(var.into_inner())
        } else if let Some(file) = raw.url_file {
            UrlSource::File(project_root.join(file.get_ref()))
        } else {
            return Err(Error::Config(format!(
                "{}: no database URL: set `url_env = \"VAR\"`, `url_file = \"path\"`, or for \
                 SQLite `url = \"sqlite:path\"`",
                path.display()
            )));
        };
        let lock_timeout = ctx
            .duration("lock_timeout", &raw.lock_timeout)?
            .unwrap_or(DEFAULT_LOCK_TIMEOUT);
        let statement_timeout = ctx
            .duration("statement_timeout", &raw.statement_timeout)?
            .unwrap_or(Duration::ZERO);
        let snapshot = match raw.snapshot {
            Some(raw) => Some(parse_snapshot(&ctx, raw, project_root)?),
            None => None,
        };
        Ok(Environment {
            name: name.to_string(),
            file: path.to_path_buf(),
            url_source,
            lock_timeout,
            statement_timeout,
            history: raw.history.map(Spanned::into_inner),
            snapshot,
            health: crate::health::parse_checks(raw.health.unwrap_or_default(), path, text)?,
            drift: drift::parse_env(&ctx, raw.drift, project_root)?,
            state_dir: project_root.join(".sluice"),
            project_root: project_root.to_path_buf(),
        })
    }

    /// Resolves the database URL now, from the variable or file the config names. Relative
    /// SQLite paths are taken from the project's root, not from the working directory.
    pub fn database_url(&self) -> Result<String> {
        let url = match &self.url_source {
            UrlSource::Inline(url) => url.clone(),
            UrlSource::Env(var) => std::env::var(var).map_err(|_| {
                Error::Config(format!(
                    "{}: key `url_env`: environment variable `{var}` is not set",
                    self.file.display()
                ))
            })?,
            UrlSource::File(path) => read(path)?
                .lines()
                .next()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .ok_or_else(|| {
                    Error::Config(format!(
                        "{}: key `url_file`: {} is empty",
                        self.file.display(),
                        path.display()
                    ))
                })?,
        };
        Ok(match url.strip_prefix("sqlite:") {
            Some(rest) => {
                let rest = rest.strip_prefix("//").unwrap_or(rest);
                let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
                let path = if path == ":memory:" || Path::new(path).is_absolute() {
                    PathBuf::from(path)
                } else {
                    self.project_root.join(path)
                };
                let mut resolved = format!("sqlite://{}", path.display());
                if !query.is_empty() {
                    resolved.push('?');
                    resolved.push_str(query);
                }
                resolved
            }
            None => url,
        })
    }
}

fn parse_snapshot(ctx: &FileContext<'_>, raw: RawSnapshot, root: &Path) -> Result<SnapshotConfig> {
    let provider_name = raw.provider.get_ref().as_str();
    let keys: [(&str, Option<std::ops::Range<usize>>); 13] = [
        (
            "terminate_sessions",
            raw.terminate_sessions.as_ref().map(|v| v.span()),
        ),
        (
            "maintenance_db",
            raw.maintenance_db.as_ref().map(|v| v.span()),
        ),
        ("pg_dump", raw.pg_dump.as_ref().map(|v| v.span())),
        ("pg_restore", raw.pg_restore.as_ref().map(|v| v.span())),
        ("project_id", raw.project_id.as_ref().map(|v| v.span())),
        ("branch_id", raw.branch_id.as_ref().map(|v| v.span())),
        ("api_key_env", raw.api_key_env.as_ref().map(|v| v.span())),
        ("api_key_file", raw.api_key_file.as_ref().map(|v| v.span())),
        ("base_url", raw.base_url.as_ref().map(|v| v.span())),
        ("instance_id", raw.instance_id.as_ref().map(|v| v.span())),
        ("cluster_id", raw.cluster_id.as_ref().map(|v| v.span())),
        ("region", raw.region.as_ref().map(|v| v.span())),
        ("endpoint_url", raw.endpoint_url.as_ref().map(|v| v.span())),
    ];
    let allowed: &[&str] = match provider_name {
        "pg-template" => &["terminate_sessions", "maintenance_db"],
        "pg-dump" => &["maintenance_db", "pg_dump", "pg_restore"],
        "sqlite-file" => &[],
        "neon" => &["project_id", "branch_id", "api_key_env", "api_key_file", "base_url"],
        "rds" => &["instance_id", "region", "endpoint_url"],
        "rds-cluster" => &["cluster_id", "region", "endpoint_url"],
        other => {
            return Err(ctx.at(
                "snapshot.provider",
                &raw.provider,
                format!(
                    "unknown provider `{other}`; expected pg-template, pg-dump, sqlite-file, neon, rds or rds-cluster"
                ),
            ))
        }
    };
    for (key, span) in &keys {
        if let Some(span) = span {
            if !allowed.contains(key) {
                return Err(Error::Config(format!(
                    "{}:{}: key `snapshot.{key}` does not apply to provider `{provider_name}`",
                    ctx.path.display(),
                    ctx.line_of(span.start)
                )));
            }
        }
    }
    let required = |key: &str, value: &Option<Spanned<String>>| -> Result<String> {
        match value {
            Some(v) if !v.get_ref().trim().is_empty() => Ok(v.get_ref().trim().to_string()),
            Some(v) => Err(ctx.at(&format!("snapshot.{key}"), v, "must not be empty")),
            None => Err(Error::Config(format!(
                "{}: [snapshot] with provider `{provider_name}` needs `{key}`",
                ctx.path.display()
            ))),
        }
    };
    let text = |v: &Option<Spanned<String>>| v.as_ref().map(|s| s.get_ref().trim().to_string());
    let maintenance_db = text(&raw.maintenance_db).unwrap_or_else(|| "postgres".into());
    let provider = match provider_name {
        "pg-template" => ProviderConfig::PgTemplate {
            terminate_sessions: raw
                .terminate_sessions
                .map(Spanned::into_inner)
                .unwrap_or(false),
            maintenance_db,
        },
        "pg-dump" => ProviderConfig::PgDump {
            maintenance_db,
            pg_dump: text(&raw.pg_dump).map(|p| root.join(p)),
            pg_restore: text(&raw.pg_restore).map(|p| root.join(p)),
        },
        "sqlite-file" => ProviderConfig::SqliteFile,
        "neon" => {
            let api_key = match (&raw.api_key_env, &raw.api_key_file) {
                (Some(var), None) => {
                    SecretSource::Env(required("api_key_env", &Some(var.clone()))?)
                }
                (None, Some(file)) => SecretSource::File(root.join(file.get_ref())),
                (Some(_), Some(v)) => {
                    return Err(ctx.at(
                        "snapshot.api_key_file",
                        v,
                        "give either `api_key_env` or `api_key_file`, not both",
                    ))
                }
                (None, None) => {
                    return Err(Error::Config(format!(
                    "{}: [snapshot] with provider `neon` needs `api_key_env` (or `api_key_file`)",
                    ctx.path.display()
                )))
                }
            };
            ProviderConfig::Neon(NeonConfig {
                project_id: required("project_id", &raw.project_id)?,
                branch_id: required("branch_id", &raw.branch_id)?,
                api_key,
                base_url: text(&raw.base_url)
                    .unwrap_or_else(|| "https://console.neon.tech/api/v2".into())
                    .trim_end_matches('/')
                    .to_string(),
            })
        }
        "rds" => ProviderConfig::Rds(RdsConfig {
            identifier: required("instance_id", &raw.instance_id)?,
            region: text(&raw.region),
            endpoint_url: text(&raw.endpoint_url),
        }),
        _ => ProviderConfig::RdsCluster(RdsConfig {
            identifier: required("cluster_id", &raw.cluster_id)?,
            region: text(&raw.region),
            endpoint_url: text(&raw.endpoint_url),
        }),
    };
    let retention = match raw.retention {
        Some(r) => {
            let keep_last = match r.keep_last {
                Some(n) if *n.get_ref() < 1 => {
                    return Err(ctx.at("snapshot.retention.keep_last", &n, "must be at least 1"))
                }
                Some(n) => Some(*n.get_ref() as usize),
                None => None,
            };
            Retention {
                keep_last,
                max_age: ctx.duration("snapshot.retention.max_age", &r.max_age)?,
            }
        }
        None => Retention::WHEN_UNSET,
    };
    Ok(SnapshotConfig {
        provider,
        timeout: ctx
            .duration("snapshot.timeout", &raw.timeout)?
            .unwrap_or(Duration::from_secs(45 * 60)),
        poll_interval: ctx
            .duration("snapshot.poll_interval", &raw.poll_interval)?
            .unwrap_or(Duration::from_secs(10)),
        retention,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Environment> {
        Environment::parse(
            "dev",
            Path::new("environments/dev.toml"),
            text,
            Path::new("/p"),
        )
    }

    #[test]
    fn a_full_environment_parses() {
        let env = parse(
            "url_env = \"DEV_URL\"\nlock_timeout = \"3s\"\nstatement_timeout = \"1m\"\nhistory = \"sluice\"\n",
        )
        .unwrap();
        assert!(matches!(env.url_source, UrlSource::Env(ref v) if v == "DEV_URL"));
        assert_eq!(env.lock_timeout, Duration::from_secs(3));
        assert_eq!(env.statement_timeout, Duration::from_secs(60));
        assert_eq!(env.history, Some(HistoryMode::Sluice));
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let err = parse("url_env = \"X\"\n\nhistory = \"prism\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("environments/dev.toml:3: key `history`"),
            "{err}"
        );
        let err = parse("url_env = \"X\"\nlock_timeout = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("environments/dev.toml:2: key `lock_timeout`"),
            "{err}"
        );
        let err = parse("url_env = \"X\"\nurl_evn = \"Y\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains(":2:") && err.contains("url_evn"), "{err}");
        let err = parse("url_env = \n").unwrap_err().to_string();
        assert!(err.starts_with("environments/dev.toml:1"), "{err}");
    }

    #[test]
    fn inline_postgres_urls_are_refused() {
        let err = parse("\nurl = \"postgres://u:p@h/db\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("dev.toml:2: key `url`"), "{err}");
        assert!(
            !err.contains("u:p@"),
            "the secret must not be echoed: {err}"
        );
    }

    #[test]
    fn exactly_one_url_source() {
        let err = parse("url = \"sqlite:x.db\"\nurl_env = \"X\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("exclusive"), "{err}");
        let err = parse("lock_timeout = \"1s\"\n").unwrap_err().to_string();
        assert!(err.contains("no database URL"), "{err}");
    }

    #[test]
    fn relative_sqlite_paths_resolve_against_the_project() {
        let env = parse("url = \"sqlite:.sluice/dev.db?mode=rwc\"\n").unwrap();
        assert_eq!(
            env.database_url().unwrap(),
            "sqlite:///p/.sluice/dev.db?mode=rwc"
        );
    }

    #[test]
    fn a_missing_variable_is_named() {
        let env = parse("url_env = \"SLUICE_SURELY_UNSET_VAR\"\n").unwrap();
        let err = env.database_url().unwrap_err().to_string();
        assert!(err.contains("SLUICE_SURELY_UNSET_VAR"), "{err}");
    }
}

#[cfg(test)]
mod snapshot_tests {
    use super::*;

    fn parse(text: &str) -> Result<Environment> {
        Environment::parse(
            "prod",
            Path::new("environments/prod.toml"),
            text,
            Path::new("/p"),
        )
    }

    #[test]
    fn a_neon_section_parses_with_its_defaults() {
        let env = parse(
            "url_env = \"U\"\n[snapshot]\nprovider = \"neon\"\nproject_id = \"p1\"\nbranch_id = \"br-1\"\napi_key_env = \"NEON_API_KEY\"\n[snapshot.retention]\nkeep_last = 3\nmax_age = \"7days\"\n",
        )
        .unwrap();
        let snapshot = env.snapshot.unwrap();
        match snapshot.provider {
            ProviderConfig::Neon(n) => {
                assert_eq!(n.base_url, "https://console.neon.tech/api/v2");
                assert_eq!(n.api_key, SecretSource::Env("NEON_API_KEY".into()));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(snapshot.retention.keep_last, Some(3));
        assert_eq!(
            snapshot.retention.max_age,
            Some(Duration::from_secs(7 * 86400))
        );
    }

    #[test]
    fn item05_retention_defaults_to_five_of_each_kind_and_an_empty_table_keeps_everything() {
        let unset = parse("url_env = \"U\"\n[snapshot]\nprovider = \"pg-template\"\n").unwrap();
        assert_eq!(unset.snapshot.unwrap().retention, Retention::WHEN_UNSET);
        assert_eq!(Retention::WHEN_UNSET.keep_last, Some(5));
        let empty = parse(
            "url_env = \"U\"\n[snapshot]\nprovider = \"pg-template\"\n[snapshot.retention]\n",
        )
        .unwrap();
        assert_eq!(empty.snapshot.unwrap().retention, Retention::default());
    }

    #[test]
    fn snapshot_errors_name_line_and_key() {
        let err = parse("url_env = \"U\"\n[snapshot]\nprovider = \"rds\"\nbranch_id = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("prod.toml:4: key `snapshot.branch_id` does not apply to provider `rds`"),
            "{err}"
        );
        let err = parse("url_env = \"U\"\n[snapshot]\nprovider = \"zfs\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("prod.toml:3: key `snapshot.provider`: unknown provider `zfs`"),
            "{err}"
        );
        let err = parse("url_env = \"U\"\n[snapshot]\nprovider = \"rds\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs `instance_id`"), "{err}");
        let err = parse("url_env = \"U\"\n[snapshot]\nprovider = \"pg-template\"\n[snapshot.retention]\nkeep_last = 0\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("prod.toml:5: key `snapshot.retention.keep_last`"),
            "{err}"
        );
    }

    #[test]
    fn health_checks_are_read_from_the_environment_file() {
        let env = parse(
            "url_env = \"U\"\n[[health]]\nkind = \"schema\"\ntables = [\"User\"]\n[[health]]\nkind = \"sql\"\nquery = \"SELECT 1\"\nexpect = 1\n",
        )
        .unwrap();
        assert_eq!(env.health.len(), 2);
        let err = parse("url_env = \"U\"\n[[health]]\nkind = \"http\"\nurl = \"http://h/\"\nquery = \"SELECT 1\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("prod.toml:5: key `health[1].query`"), "{err}");
    }
}
