//! Checks of the configuration as a whole: settings that are each valid in their own file but
//! cannot work together (a policy's `drift = "block"` for a PostgreSQL environment with nowhere
//! to build its expected schema, a SQLite snapshot provider on a PostgreSQL database, Slack
//! roles on an environment that does not exist), and what a run will need from the process
//! (a database URL's variable, a snapshot provider's API key, the secrets of Slack and the
//! webhooks).
//!
//! Without these a mistake passes `serve` and surfaces only when a run reaches it, perhaps in
//! prod after an approval. Nothing here touches the network: reachability, privileges and
//! server versions are `sluice doctor`'s job.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use crate::config::chatops::UrlValue;
use crate::config::{
    Environment, Project, ProviderConfig, SecretSource, ShadowConfig, UrlSource, PROJECT_FILE,
};
use crate::error::{Error, Result};
use crate::health::CheckKind;
use crate::migrations::discover::{Layout, PRISMA_LOCK_FILE};
use crate::migrations::MigrationSet;
use crate::policy::{DriftRule, FailureAction, Policies, Policy, RollbackMethod};
use crate::target::Engine;

/// Who refuses a problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// The files contradict each other: every load refuses them (`serve`, `POST /v1/reload`,
    /// the `--local` commands).
    Configuration,
    /// This process lacks what a run will need (a variable, a readable file, a tool): the
    /// daemon refuses to start without it; `--local` commands, which may work on one
    /// environment only, do not need every environment's credentials.
    Process,
}

/// One thing that would fail when a run reaches it, with where it is written and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The environment concerned, or `project` for `sluice.toml` as a whole.
    pub subject: String,
    /// The area, as `sluice doctor` groups its lines: `url`, `snapshot`, `drift`, `health`,
    /// `migrations`, `slack`, `notify`, `hooks`, `rollback`.
    pub area: &'static str,
    /// Who refuses it.
    pub scope: Scope,
    /// What is wrong, starting with `file:line: key `…``.
    pub message: String,
    /// The exact change that resolves it.
    pub fix: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; fix: {}", self.message, self.fix)
    }
}

/// The configuration as loaded, file by file.
#[derive(Clone, Copy)]
pub struct Configuration<'a> {
    /// `sluice.toml`.
    pub project: &'a Project,
    /// Every environment file, by name.
    pub environments: &'a BTreeMap<String, Environment>,
    /// Every policy file.
    pub policies: &'a Policies,
    /// The migrations directory, when it could be read.
    pub migrations: Option<&'a MigrationSet>,
}

/// Refuses the configuration when it has problems of `scope` or a narrower one, listing them
/// all; the daemon passes [`Scope::Process`], every load [`Scope::Configuration`].
pub fn check(config: Configuration<'_>, scope: Scope) -> Result<()> {
    let found: Vec<String> = problems(config)
        .into_iter()
        .filter(|p| p.scope <= scope)
        .map(|p| p.to_string())
        .collect();
    if found.is_empty() {
        return Ok(());
    }
    Err(Error::Config(if found.len() == 1 {
        found.join("")
    } else {
        format!(
            "{} problems in the configuration:\n{}",
            found.len(),
            found.join("\n")
        )
    }))
}

/// Every problem of the configuration, environments in name order, project-wide ones last.
pub fn problems(config: Configuration<'_>) -> Vec<Problem> {
    let mut out = Vec::new();
    for env in config.environments.values() {
        let policy = config.policies.for_env(&env.name);
        environment_problems(config, env, &policy, &mut out);
    }
    project_problems(config, &mut out);
    out
}

/// `file:line: key `key`` when the key is found in the file, else `file: key `key``.
pub fn located(file: &Path, key: &str) -> String {
    match line_in(file, key) {
        Some(line) => format!("{}:{line}: key `{key}`", file.display()),
        None => format!("{}: key `{key}`", file.display()),
    }
}

/// The line of `key` in the TOML file `file`, when it is written there.
fn line_in(file: &Path, key: &str) -> Option<usize> {
    let text = crate::config::read_text(file).ok()?;
    crate::config::keys::line_of_key(&text, key)
}

/// The engine of an environment when its URL can be had without the network: inline, or
/// from a variable or file that is present.
pub fn known_engine(env: &Environment) -> Option<Engine> {
    env.database_url()
        .ok()
        .and_then(|url| Engine::from_url(&url).ok())
}

/// Whether a policy makes sluice build the environment's expected schema.
pub fn drift_needed(policy: &Policy) -> bool {
    policy.drift != DriftRule::Off || policy.drift_scan.is_some()
}

/// The key of a policy that asks for drift checks, for messages.
fn drift_key(policy: &Policy) -> &'static str {
    if policy.drift != DriftRule::Off {
        "drift"
    } else {
        "drift_scan"
    }
}

fn environment_problems(
    config: Configuration<'_>,
    env: &Environment,
    policy: &Policy,
    out: &mut Vec<Problem>,
) {
    let mut problem = |area: &'static str, scope: Scope, message: String, fix: String| {
        out.push(Problem {
            subject: env.name.clone(),
            area,
            scope,
            message,
            fix,
        })
    };
    let file = env.file.as_path();
    let engine = match url_problem(env) {
        Some((message, fix)) => {
            problem("url", Scope::Process, message, fix);
            None
        }
        None => known_engine(env),
    };
    if let Some(engine) = engine {
        if let (Some(snapshot), Some(fix)) = (&env.snapshot, provider_mismatch(env, engine)) {
            let kind = provider_name(&snapshot.provider);
            problem(
                "snapshot",
                Scope::Configuration,
                format!(
                    "{}: provider `{kind}` cannot snapshot `{}`, whose database is {}",
                    located(file, "snapshot.provider"),
                    env.name,
                    engine_name(engine)
                ),
                fix,
            );
        }
        if engine == Engine::Sqlite {
            for (index, check) in env.health.iter().enumerate() {
                if let CheckKind::Schema(schema) = &check.kind {
                    if !schema.enums.is_empty() {
                        problem(
                            "health",
                            Scope::Configuration,
                            format!(
                                "{}: enum types exist only in PostgreSQL and `{}`'s database is SQLite",
                                located(file, &format!("health[{}].enums", index + 1)),
                                env.name
                            ),
                            format!(
                                "remove `enums` from check `{}` and check the columns instead",
                                check.name
                            ),
                        );
                    }
                }
            }
        }
        if let Some(set) = config.migrations {
            if let Layout::Prisma {
                provider: Some(provider),
            } = &set.layout
            {
                if !engine.matches_prisma_provider(provider) {
                    problem(
                        "migrations",
                        Scope::Configuration,
                        format!(
                            "{}: provider `{provider}` does not match `{}`, whose database is {}",
                            located(&set.dir.join(PRISMA_LOCK_FILE), "provider"),
                            env.name,
                            engine_name(engine)
                        ),
                        format!(
                            "point {} at a {} database, or the project at the migrations made for {}",
                            file.display(),
                            if provider == "sqlite" { "SQLite" } else { "PostgreSQL" },
                            engine_name(engine)
                        ),
                    );
                }
            }
        }
        if drift_needed(policy) && engine == Engine::Postgres {
            let origin = policy
                .source
                .as_deref()
                .map(|p| located(p, drift_key(policy)))
                .unwrap_or_else(|| format!("the policy of `{}`", env.name));
            match &env.drift.shadow {
                ShadowConfig::Unset => problem(
                    "drift",
                    Scope::Configuration,
                    format!(
                        "{origin}: drift checks need `{}`'s expected schema, and {} says nowhere \
                         to build it on PostgreSQL",
                        env.name,
                        file.display()
                    ),
                    format!(
                        "add `[drift]` with `scratch_databases = true` (sluice creates and drops a \
                         database on the server; the role needs CREATEDB) or `shadow_url_env = \
                         \"VAR\"` (a database sluice may erase) to {}",
                        file.display()
                    ),
                ),
                ShadowConfig::Url(source) => {
                    let key = secret_key("drift.shadow_url", source);
                    match source.read(file) {
                        Err(err) => problem(
                            "drift",
                            Scope::Process,
                            format!("{}: {}", located(file, &key), secret_error(&err)),
                            secret_fix(source, "the URL of a database sluice may erase"),
                        ),
                        Ok(shadow) => {
                            if let Ok(live) = env.database_url() {
                                if same_database(&live, &shadow) {
                                    problem(
                                        "drift",
                                        Scope::Configuration,
                                        format!(
                                            "{}: the shadow database is `{}`'s own database, and \
                                             sluice erases the shadow before each build",
                                            located(file, &key),
                                            env.name
                                        ),
                                        "give the shadow a database of its own".into(),
                                    );
                                }
                            }
                        }
                    }
                }
                ShadowConfig::Scratch { .. } => {}
            }
        }
    }
    if let Some(snapshot) = &env.snapshot {
        match &snapshot.provider {
            ProviderConfig::Neon(neon) => {
                if let Err(err) = neon.api_key.read(file) {
                    problem(
                        "snapshot",
                        Scope::Process,
                        format!(
                            "{}: {}",
                            located(file, &secret_key("snapshot.api_key", &neon.api_key)),
                            secret_error(&err)
                        ),
                        secret_fix(&neon.api_key, "a Neon API key"),
                    );
                }
            }
            ProviderConfig::PgDump {
                pg_dump,
                pg_restore,
                ..
            } => {
                for (tool, given) in [("pg_dump", pg_dump), ("pg_restore", pg_restore)] {
                    if let Some((message, fix)) = tool_problem(file, tool, given.as_deref()) {
                        problem("snapshot", Scope::Process, message, fix);
                    }
                }
            }
            _ => {}
        }
    } else if let (Some(source), FailureAction::Ladder(methods)) =
        (&policy.source, &policy.rollback.on_failure)
    {
        let written = line_in(source, "rollback.on_failure").is_some();
        if written && !methods.is_empty() && methods.iter().all(|m| *m == RollbackMethod::Snapshot)
        {
            problem(
                "rollback",
                Scope::Configuration,
                format!(
                    "{}: a failed run of `{}` is rolled back only by snapshot, and {} has no \
                     `[snapshot]`",
                    located(source, "rollback.on_failure"),
                    env.name,
                    file.display()
                ),
                format!(
                    "add `[snapshot]` with a `provider` to {}, or roll back with \
                     `on_failure = [\"down\"]` or `\"halt\"`",
                    file.display()
                ),
            );
        }
    }
    for (index, check) in env.health.iter().enumerate() {
        if let CheckKind::Http(http) = &check.kind {
            for header in &http.headers {
                let set = std::env::var(&header.env_var).is_ok_and(|v| !v.trim().is_empty());
                if !set {
                    problem(
                        "health",
                        Scope::Process,
                        format!(
                            "{}: environment variable `{}` (header `{}` of check `{}`) is not set",
                            located(file, &format!("health[{}].headers", index + 1)),
                            header.env_var,
                            header.name,
                            check.name
                        ),
                        format!(
                            "export {}=… in the environment sluice runs in",
                            header.env_var
                        ),
                    );
                }
            }
        }
    }
}

fn project_problems(config: Configuration<'_>, out: &mut Vec<Problem>) {
    let project = config.project;
    let file = project.root.join(PROJECT_FILE);
    let known: Vec<String> = config.environments.keys().cloned().collect();
    let known_list = if known.is_empty() {
        "none (add a file under environments/)".to_string()
    } else {
        known.join(", ")
    };
    let mut problem = |area: &'static str, scope: Scope, message: String, fix: String| {
        out.push(Problem {
            subject: "project".into(),
            area,
            scope,
            message,
            fix,
        })
    };
    let mut secret = |area: &'static str, key: &str, source: &SecretSource, what: &str| {
        if let Err(err) = source.read(&file) {
            problem(
                area,
                Scope::Process,
                format!(
                    "{}: {}",
                    located(&file, &secret_key(key, source)),
                    secret_error(&err)
                ),
                secret_fix(source, what),
            );
        }
    };
    let chatops = &project.chatops;
    if let Some(slack) = &chatops.slack {
        secret(
            "slack",
            "slack.signing_secret",
            &slack.signing_secret,
            "the Slack app's signing secret",
        );
        if let Some(bot) = &slack.bot_token {
            secret("slack", "slack.bot_token", bot, "the Slack bot token");
        }
    }
    for (index, sink) in chatops.notify.iter().enumerate() {
        let key = format!("notify[{}]", index + 1);
        if let UrlValue::Secret(source) = &sink.url {
            secret(
                "notify",
                &format!("{key}.url"),
                source,
                "the endpoint's URL",
            );
        }
        if let Some(source) = &sink.secret {
            secret(
                "notify",
                &format!("{key}.secret"),
                source,
                "the webhook's signing key",
            );
        }
    }
    if let Some(hooks) = &chatops.hooks {
        secret(
            "hooks",
            "hooks.secret",
            &hooks.secret,
            "the release hook's shared key",
        );
    }
    if let Some(slack) = &chatops.slack {
        for (id, user) in &slack.users {
            for env in user.roles.keys() {
                if env != crate::api::auth::ALL_ENVIRONMENTS && !known.contains(env) {
                    problem(
                        "slack",
                        Scope::Configuration,
                        format!(
                            "{}: `{env}` is not a known environment; known: {known_list}",
                            located(&file, &format!("slack.users.{id}.roles.{env}"))
                        ),
                        "name an environment that has a file under environments/, or \"*\" for all"
                            .into(),
                    );
                }
            }
        }
    }
    if let Some(env) = chatops.hooks.as_ref().and_then(|h| h.promote_to.as_ref()) {
        if !known.contains(env) {
            problem(
                "hooks",
                Scope::Configuration,
                format!(
                    "{}: `{env}` is not a known environment; known: {known_list}",
                    located(&file, "hooks.promote_to")
                ),
                "name an environment that has a file under environments/".into(),
            );
        }
    }
}

/// Why an environment's URL cannot be had, with the fix.
fn url_problem(env: &Environment) -> Option<(String, String)> {
    let file = env.file.as_path();
    let err = match env.database_url() {
        Ok(url) if url.trim().is_empty() => Error::Config("the database URL is empty".into()),
        Ok(url) => {
            return Engine::from_url(&url).err().map(|err| {
                let key = match &env.url_source {
                    UrlSource::Inline(_) => "url",
                    UrlSource::Env(_) => "url_env",
                    UrlSource::File(_) => "url_file",
                };
                (
                    format!("{}: {err}", located(file, key)),
                    "give a postgres:// or sqlite: URL".into(),
                )
            })
        }
        Err(err) => err,
    };
    Some(match &env.url_source {
        UrlSource::Env(var) => (
            format!(
                "{}: environment variable `{var}` is {}",
                located(file, "url_env"),
                if std::env::var_os(var).is_some() {
                    "empty"
                } else {
                    "not set"
                }
            ),
            format!("export {var}=postgres://… (the database of `{}`) in the environment sluice runs in", env.name),
        ),
        UrlSource::File(path) => (
            format!("{}: {err}", located(file, "url_file")),
            format!(
                "write the database URL of `{}` on the first line of {}",
                env.name,
                path.display()
            ),
        ),
        UrlSource::Inline(_) => (
            format!("{}: {err}", located(file, "url")),
            "give a sqlite: URL".into(),
        ),
    })
}

/// The fix when the snapshot provider cannot work on the engine, if it cannot.
fn provider_mismatch(env: &Environment, engine: Engine) -> Option<String> {
    let snapshot = env.snapshot.as_ref()?;
    let on_sqlite = matches!(snapshot.provider, ProviderConfig::SqliteFile);
    match (engine, on_sqlite) {
        (Engine::Sqlite, false) => Some("use `provider = \"sqlite-file\"` for a SQLite database".into()),
        (Engine::Postgres, true) => Some(
            "use `provider = \"pg-template\"` (or pg-dump, neon, rds, rds-cluster) for a PostgreSQL database"
                .into(),
        ),
        _ => None,
    }
}

/// The provider's name as written in `[snapshot] provider`.
pub fn provider_name(provider: &ProviderConfig) -> &'static str {
    match provider {
        ProviderConfig::PgTemplate { .. } => "pg-template",
        ProviderConfig::PgDump { .. } => "pg-dump",
        ProviderConfig::SqliteFile => "sqlite-file",
        ProviderConfig::Neon(_) => "neon",
        ProviderConfig::Rds(_) => "rds",
        ProviderConfig::RdsCluster(_) => "rds-cluster",
    }
}

fn engine_name(engine: Engine) -> &'static str {
    match engine {
        Engine::Postgres => "PostgreSQL",
        Engine::Sqlite => "SQLite",
    }
}

/// `prefix_env` or `prefix_file`, whichever the source is.
fn secret_key(prefix: &str, source: &SecretSource) -> String {
    match source {
        SecretSource::Env(_) => format!("{prefix}_env"),
        SecretSource::File(_) => format!("{prefix}_file"),
    }
}

/// A secret's read error without the origin file it repeats.
fn secret_error(err: &Error) -> String {
    let text = err.to_string();
    match text.split_once(": ") {
        Some((_, rest)) if matches!(err, Error::Config(_)) => rest.to_string(),
        _ => text,
    }
}

fn secret_fix(source: &SecretSource, what: &str) -> String {
    match source {
        SecretSource::Env(var) => {
            format!("export {var}=… ({what}) in the environment sluice runs in")
        }
        SecretSource::File(path) => format!("write {what} on the first line of {}", path.display()),
    }
}

/// Why a PostgreSQL client tool cannot be found, with the fix.
fn tool_problem(file: &Path, tool: &str, given: Option<&Path>) -> Option<(String, String)> {
    match given {
        Some(path) if path.is_file() => None,
        Some(path) => Some((
            format!(
                "{}: {} does not exist",
                located(file, &format!("snapshot.{tool}")),
                path.display()
            ),
            format!("point `snapshot.{tool}` at the `{tool}` binary"),
        )),
        None if crate::snapshot::pg::find_pg_tool(tool).is_some() => None,
        None => Some((
            format!(
                "{}: `{tool}` is not on PATH nor under /usr/lib/postgresql",
                located(file, "snapshot.provider")
            ),
            format!(
                "install the PostgreSQL client tools (e.g. `apt-get install postgresql-client`) or \
                 set `snapshot.{tool}` to the binary"
            ),
        )),
    }
}

/// Whether two PostgreSQL URLs name the same database on the same server.
fn same_database(a: &str, b: &str) -> bool {
    let parts = |url: &str| {
        let (plain, _) = crate::target::postgres::take_schema_param(url);
        url::Url::parse(&plain).ok().map(|u| {
            (
                u.host_str().unwrap_or_default().to_string(),
                u.port().unwrap_or(5432),
                u.path().trim_start_matches('/').to_string(),
            )
        })
    };
    matches!((parts(a), parts(b)), (Some(x), Some(y)) if x == y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_database_compares_server_and_name() {
        assert!(same_database(
            "postgres://a:x@db:5432/app",
            "postgres://b:y@db/app?schema=s"
        ));
        assert!(!same_database(
            "postgres://a@db/app",
            "postgres://a@db/app_shadow"
        ));
        assert!(!same_database(
            "postgres://a@db/app",
            "postgres://a@db2/app"
        ));
    }
}
