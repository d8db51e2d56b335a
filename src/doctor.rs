//! `sluice doctor`: everything a run will need, checked now instead of when a run reaches it —
//! each environment reachable and its server version, the role's privileges its snapshot
//! provider needs, the client tools, a place to build the expected schema where the policy's
//! drift checks need one, the tokens file, the Slack and webhook secrets — one line each, ok or
//! a problem with the exact fix.
//!
//! It reads the configuration like every command, so a file that does not parse stops it
//! (exit 2); combinations that cannot work ([`crate::consistency`]) become lines, so one run
//! shows them all. Databases are asked with a short timeout; cloud APIs are not called, and the
//! lines say so ("not checked") instead of guessing. No line carries a secret: variables and
//! files are named, never read out, and driver messages are redacted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, Row};

use crate::config::{Environment, Project, ProviderConfig, SecretSource, ShadowConfig, UrlSource};
use crate::consistency::{self, Configuration, Problem};
use crate::error::{redact_urls, Error, Result};
use crate::migrations::{discover, Layout, MigrationSet};
use crate::policy::{Policies, POLICIES_DIR};
use crate::target::postgres::{take_schema_param, APPLICATION_NAME};
use crate::target::Engine;

/// How long a connection may take before the server counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// `sluice doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Check only this environment (and none of the project-wide settings).
    #[arg(long)]
    pub env: Option<String>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// How one check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Status {
    /// It will work.
    #[serde(rename = "ok")]
    Ok,
    /// It will fail when a run reaches it; the line says how to fix it.
    #[serde(rename = "problem")]
    Problem,
    /// sluice cannot tell without a call it does not make (a cloud API) or a step that failed.
    #[serde(rename = "not checked")]
    NotChecked,
}

impl Status {
    fn word(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Problem => "problem",
            Status::NotChecked => "not checked",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Line {
    /// The environment, or `project` for `sluice.toml`.
    pub subject: String,
    /// What was checked: `database`, `snapshot`, `drift`, `tokens`, `slack`, …
    pub check: String,
    /// How it came out.
    pub status: Status,
    /// What was found, in words, without secrets.
    pub detail: String,
    /// For a problem: the exact change that resolves it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// Every line, project-wide ones first, then each environment in name order.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// The lines.
    pub checks: Vec<Line>,
}

impl Report {
    fn add(&mut self, subject: &str, check: &str, status: Status, detail: impl Into<String>) {
        self.checks.push(Line {
            subject: subject.into(),
            check: check.into(),
            status,
            detail: detail.into(),
            fix: None,
        });
    }

    fn ok(&mut self, subject: &str, check: &str, detail: impl Into<String>) {
        self.add(subject, check, Status::Ok, detail);
    }

    fn not_checked(&mut self, subject: &str, check: &str, detail: impl Into<String>) {
        self.add(subject, check, Status::NotChecked, detail);
    }

    fn problem(&mut self, subject: &str, check: &str, detail: impl Into<String>, fix: String) {
        self.checks.push(Line {
            subject: subject.into(),
            check: check.into(),
            status: Status::Problem,
            detail: detail.into(),
            fix: Some(fix),
        });
    }

    /// How many lines are problems.
    pub fn problems(&self) -> usize {
        self.checks
            .iter()
            .filter(|l| l.status == Status::Problem)
            .count()
    }
}

/// Runs `sluice doctor`: exit 0 without problems, 1 with any; a configuration that does not
/// parse is an error (exit 2).
pub async fn doctor_cmd(project: &Project, args: DoctorArgs) -> Result<u8> {
    let report = examine(project, args.env.as_deref()).await?;
    if args.json {
        let doc = serde_json::json!({
            "project": project.root.display().to_string(),
            "problems": report.problems(),
            "checks": report.checks,
        });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        print!("{}", render(&report));
    }
    Ok(if report.problems() == 0 { 0 } else { 1 })
}

/// The report as aligned lines: subject, check, status, detail, and the fix under a problem.
pub fn render(report: &Report) -> String {
    let width = |f: fn(&Line) -> usize, title: &str| {
        report
            .checks
            .iter()
            .map(f)
            .max()
            .unwrap_or(0)
            .max(title.len())
    };
    let subject_w = width(|l| l.subject.chars().count(), "SUBJECT");
    let check_w = width(|l| l.check.chars().count(), "CHECK");
    let status_w = width(|l| l.status.word().len(), "STATUS");
    let mut out = format!(
        "{:<subject_w$}  {:<check_w$}  {:<status_w$}  DETAIL\n",
        "SUBJECT", "CHECK", "STATUS"
    );
    let indent = " ".repeat(subject_w + check_w + status_w + 6);
    for line in &report.checks {
        out.push_str(&format!(
            "{:<subject_w$}  {:<check_w$}  {:<status_w$}  {}\n",
            line.subject,
            line.check,
            line.status.word(),
            line.detail
        ));
        if let Some(fix) = &line.fix {
            out.push_str(&format!("{indent}fix: {fix}\n"));
        }
    }
    out.push_str(&match report.problems() {
        0 => "\nno problems\n".to_string(),
        1 => "\n1 problem: fix it and run `sluice doctor` again\n".to_string(),
        n => format!("\n{n} problems: fix them and run `sluice doctor` again\n"),
    });
    out
}

/// Checks the project at `project` (one environment with `only`).
pub async fn examine(project: &Project, only: Option<&str>) -> Result<Report> {
    let names = project.environment_names()?;
    if let Some(name) = only {
        project.environment(name)?;
    }
    let mut environments = BTreeMap::new();
    for name in &names {
        environments.insert(name.clone(), project.environment(name)?);
    }
    let policies = Policies::load(&project.root.join(POLICIES_DIR), &names)?;
    let migrations = discover(&project.migrations_dir);
    let config = Configuration {
        project,
        environments: &environments,
        policies: &policies,
        migrations: migrations.as_ref().ok(),
    };
    let problems = consistency::problems(config);
    let mut report = Report::default();
    if only.is_none() {
        project_lines(project, &names, &migrations, &problems, &mut report);
    }
    for env in environments.values() {
        if only.is_some_and(|o| o != env.name) {
            continue;
        }
        let needs_drift = consistency::drift_needed(&policies.for_env(&env.name));
        environment_lines(env, needs_drift, &problems, &mut report).await;
    }
    Ok(report)
}

/// The problems of `subject` in `area` as lines; true when there were any.
fn problem_lines(problems: &[Problem], subject: &str, area: &str, report: &mut Report) -> bool {
    let mut any = false;
    for p in problems
        .iter()
        .filter(|p| p.subject == subject && p.area == area)
    {
        report.problem(subject, area, &p.message, p.fix.clone());
        any = true;
    }
    any
}

fn project_lines(
    project: &Project,
    names: &[String],
    migrations: &Result<MigrationSet>,
    problems: &[Problem],
    report: &mut Report,
) {
    const P: &str = "project";
    report.ok(
        P,
        "environments",
        if names.is_empty() {
            "none: add a file under environments/".to_string()
        } else {
            names.join(", ")
        },
    );
    match migrations {
        Ok(set) => {
            let layout = match &set.layout {
                Layout::Prisma {
                    provider: Some(provider),
                } => format!("Prisma layout, provider `{provider}`"),
                Layout::Prisma { provider: None } => "Prisma layout".to_string(),
                Layout::Flat => "flat layout".to_string(),
            };
            report.ok(
                P,
                "migrations",
                format!(
                    "{} migration(s) in {} ({layout})",
                    set.migrations.len(),
                    set.dir.display()
                ),
            );
        }
        Err(err) => report.problem(
            P,
            "migrations",
            err.to_string(),
            format!(
                "fix the migrations directory, or point `migrations` in {} at the right one",
                project.root.join(crate::config::PROJECT_FILE).display()
            ),
        ),
    }
    match &project.daemon.tokens_file {
        None => report.ok(
            P,
            "tokens",
            "no `[daemon] tokens_file`: --local commands need none; `sluice serve` would refuse \
             every API call but health, metrics and the OpenAPI document",
        ),
        Some(path) => match crate::api::auth::Tokens::load(path, names) {
            Ok(tokens) => report.ok(
                P,
                "tokens",
                format!("{} token(s) in {}", tokens.len(), path.display()),
            ),
            Err(err) => report.problem(
                P,
                "tokens",
                err.to_string(),
                format!(
                    "make {} readable and valid; `sluice token new --name NAME --role \"*=viewer\"` \
                     prints an entry",
                    path.display()
                ),
            ),
        },
    }
    let chatops = &project.chatops;
    if let Some(slack) = &chatops.slack {
        if !problem_lines(problems, P, "slack", report) {
            let mut found = vec![format!(
                "signing secret {}",
                secret_origin(&slack.signing_secret)
            )];
            if let Some(bot) = &slack.bot_token {
                found.push(format!("bot token {}", secret_origin(bot)));
            }
            found.push(format!("{} user(s)", slack.users.len()));
            report.ok(P, "slack", found.join("; "));
        }
    }
    if !chatops.notify.is_empty() && !problem_lines(problems, P, "notify", report) {
        let sinks: Vec<String> = chatops.notify.iter().map(|s| s.name.clone()).collect();
        report.ok(
            P,
            "notify",
            format!(
                "{} sink(s) with their URLs and secrets present: {}",
                sinks.len(),
                sinks.join(", ")
            ),
        );
    }
    if chatops.hooks.is_some() && !problem_lines(problems, P, "hooks", report) {
        report.ok(P, "hooks", "release hook secret present");
    }
}

/// "from `VAR`" or "from FILE", for a secret that was found.
fn secret_origin(source: &SecretSource) -> String {
    match source {
        SecretSource::Env(var) => format!("from `{var}` is set"),
        SecretSource::File(path) => format!("from {} is readable", path.display()),
    }
}

/// What a PostgreSQL server says about the role sluice connects as.
struct PgFacts {
    version: String,
    major: u32,
    role: String,
    database: String,
    superuser: bool,
    createdb: bool,
    owns_database: bool,
    owner: String,
}

async fn environment_lines(
    env: &Environment,
    needs_drift: bool,
    problems: &[Problem],
    report: &mut Report,
) {
    let name = env.name.as_str();
    let url = if problem_lines(problems, name, "url", report) {
        None
    } else {
        let url = env.database_url().ok();
        report.ok(name, "url", url_origin(env));
        url
    };
    let engine = url.as_deref().and_then(|u| Engine::from_url(u).ok());
    let mut facts = None;
    match (&url, engine) {
        (Some(url), Some(Engine::Postgres)) => match pg_facts(url, None).await {
            Ok(f) => {
                report.ok(
                    name,
                    "database",
                    format!(
                        "PostgreSQL {}, database `{}` as role `{}`{}",
                        f.version,
                        f.database,
                        f.role,
                        if f.superuser { " (superuser)" } else { "" }
                    ),
                );
                facts = Some(f);
            }
            Err(err) => report.problem(
                name,
                "database",
                err.to_string(),
                format!(
                    "start the server or correct the host, port, database, user and password \
                     {}",
                    url_place(env)
                ),
            ),
        },
        (Some(url), Some(Engine::Sqlite)) => sqlite_line(name, url, report).await,
        _ => report.not_checked(name, "database", "the database URL is not known"),
    }
    problem_lines(problems, name, "migrations", report);
    snapshot_lines(env, engine, facts.as_ref(), problems, report).await;
    if needs_drift {
        let reachable = facts.is_some() || engine == Some(Engine::Sqlite);
        drift_lines(
            env,
            engine,
            url.as_deref().filter(|_| reachable),
            problems,
            report,
        )
        .await;
    }
    if !problem_lines(problems, name, "health", report) {
        let kinds: Vec<&str> = env.health.iter().map(|c| c.kind.name()).collect();
        report.ok(
            name,
            "health",
            if kinds.is_empty() {
                "no [[health]] checks: a run succeeds once its migrations are applied".to_string()
            } else {
                format!("{} check(s): {}", kinds.len(), kinds.join(", "))
            },
        );
    }
    problem_lines(problems, name, "rollback", report);
}

/// Where the URL comes from, without the URL itself.
fn url_origin(env: &Environment) -> String {
    match &env.url_source {
        UrlSource::Env(var) => format!("from `{var}`"),
        UrlSource::File(path) => format!("from {}", path.display()),
        UrlSource::Inline(url) => format!("`{url}` in {}", env.file.display()),
    }
}

fn url_place(env: &Environment) -> String {
    match &env.url_source {
        UrlSource::Env(var) => format!("in `{var}`"),
        UrlSource::File(path) => format!("in {}", path.display()),
        UrlSource::Inline(_) => format!("in {}", env.file.display()),
    }
}

fn pg_options(url: &str) -> Result<PgConnectOptions> {
    let (plain, schema) = take_schema_param(url);
    let mut options = PgConnectOptions::from_str(&plain)
        .map_err(|e| {
            Error::Config(format!(
                "bad PostgreSQL URL: {}",
                redact_urls(&e.to_string())
            ))
        })?
        .application_name(APPLICATION_NAME)
        .log_statements(tracing::log::LevelFilter::Trace);
    if let Some(schema) = schema {
        options = options.options([("search_path", schema)]);
    }
    Ok(options)
}

async fn pg_connect(options: &PgConnectOptions) -> Result<PgConnection> {
    match tokio::time::timeout(CONNECT_TIMEOUT, options.connect()).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(err)) => Err(Error::database("cannot connect", err)),
        Err(_) => Err(Error::Database {
            context: "cannot connect".into(),
            message: format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()),
        }),
    }
}

/// Connects to `url` (or its server's database `database`) and reads the version and the
/// role's privileges.
async fn pg_facts(url: &str, database: Option<&str>) -> Result<PgFacts> {
    let mut options = pg_options(url)?;
    if let Some(database) = database {
        options = options.database(database);
    }
    let mut conn = pg_connect(&options).await?;
    let row = sqlx::query(
        "SELECT current_setting('server_version'), \
                current_setting('server_version_num')::int / 10000, \
                current_user::text, current_database()::text, r.rolsuper, r.rolcreatedb, \
                pg_has_role(current_user, d.datdba, 'MEMBER'), pg_get_userbyid(d.datdba)::text \
         FROM pg_roles r, pg_database d \
         WHERE r.rolname = current_user AND d.datname = current_database()",
    )
    .fetch_one(&mut conn)
    .await
    .map_err(|e| Error::database("reading the role's privileges", e));
    let _ = conn.close().await;
    let row = row?;
    let get = |e: sqlx::Error| Error::database("reading the role's privileges", e);
    let major: i32 = row.try_get(1).map_err(get)?;
    let version: String = row.try_get(0).map_err(get)?;
    Ok(PgFacts {
        version: version
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string(),
        major: u32::try_from(major).unwrap_or_default(),
        role: row.try_get(2).map_err(get)?,
        database: row.try_get(3).map_err(get)?,
        superuser: row.try_get(4).map_err(get)?,
        createdb: row.try_get(5).map_err(get)?,
        owns_database: row.try_get(6).map_err(get)?,
        owner: row.try_get(7).map_err(get)?,
    })
}

/// An SQLite environment: the file is opened read-only when it exists (doctor creates
/// nothing); otherwise the first apply creates it.
async fn sqlite_line(name: &str, url: &str, report: &mut Report) {
    let options = match SqliteConnectOptions::from_str(url) {
        Ok(o) => o.read_only(true).create_if_missing(false),
        Err(err) => {
            report.problem(
                name,
                "database",
                format!("bad SQLite URL: {err}"),
                "give `sqlite:path/to/file.db`".into(),
            );
            return;
        }
    };
    let path = options.get_filename().to_path_buf();
    if !path.exists() {
        report.ok(
            name,
            "database",
            format!(
                "SQLite file {} does not exist yet; the first apply creates it",
                path.display()
            ),
        );
        return;
    }
    let version = async {
        let mut conn = options.connect().await?;
        let version: String = sqlx::query_scalar("SELECT sqlite_version()")
            .fetch_one(&mut conn)
            .await?;
        let _ = conn.close().await;
        Ok::<_, sqlx::Error>(version)
    }
    .await;
    match version {
        Ok(version) => report.ok(
            name,
            "database",
            format!("SQLite {version}, file {}", path.display()),
        ),
        Err(err) => report.problem(
            name,
            "database",
            format!("cannot open {}: {err}", path.display()),
            "make the file readable and writable for the user sluice runs as".into(),
        ),
    }
}

async fn snapshot_lines(
    env: &Environment,
    engine: Option<Engine>,
    facts: Option<&PgFacts>,
    problems: &[Problem],
    report: &mut Report,
) {
    let name = env.name.as_str();
    if problem_lines(problems, name, "snapshot", report) {
        return;
    }
    let Some(snapshot) = &env.snapshot else {
        report.ok(
            name,
            "snapshot",
            "no [snapshot]: runs migrate without a copy, and a failed run can only be undone by \
             down scripts",
        );
        return;
    };
    let kind = consistency::provider_name(&snapshot.provider);
    match &snapshot.provider {
        ProviderConfig::PgTemplate { maintenance_db, .. }
        | ProviderConfig::PgDump { maintenance_db, .. } => {
            let Some(facts) = facts else {
                report.not_checked(
                    name,
                    "snapshot",
                    format!("{kind}: the role's privileges (the database could not be reached)"),
                );
                return;
            };
            let before = report.problems();
            pg_privileges(name, kind, facts, report);
            if let Ok(url) = env.database_url() {
                if let Err(err) = pg_facts(&url, Some(maintenance_db)).await {
                    report.problem(
                        name,
                        "snapshot",
                        format!("{kind}: the maintenance database `{maintenance_db}`: {err}"),
                        format!(
                            "set `snapshot.maintenance_db` in {} to a database role `{}` may \
                             connect to",
                            env.file.display(),
                            facts.role
                        ),
                    );
                }
            }
            let mut tools = Vec::new();
            if let ProviderConfig::PgDump {
                pg_dump,
                pg_restore,
                ..
            } = &snapshot.provider
            {
                for (tool, given) in [("pg_dump", pg_dump), ("pg_restore", pg_restore)] {
                    if let Some(found) =
                        tool_line(env, tool, given.as_deref(), facts.major, report).await
                    {
                        tools.push(found);
                    }
                }
            }
            if report.problems() == before {
                let mut detail = format!(
                    "{kind}: role `{}` may create databases and {} database `{}`",
                    facts.role,
                    if facts.superuser {
                        "is a superuser on"
                    } else {
                        "owns"
                    },
                    facts.database
                );
                if !tools.is_empty() {
                    detail.push_str(&format!("; {}", tools.join(", ")));
                }
                report.ok(name, "snapshot", detail);
            }
        }
        ProviderConfig::SqliteFile => {
            let file = env
                .database_url()
                .ok()
                .filter(|_| engine == Some(Engine::Sqlite))
                .and_then(|u| SqliteConnectOptions::from_str(&u).ok())
                .map(|o| o.get_filename().to_path_buf());
            match file {
                Some(file) => sqlite_dir_line(name, &file, report),
                None => report.not_checked(
                    name,
                    "snapshot",
                    "sqlite-file: the database file is not known",
                ),
            }
        }
        ProviderConfig::Neon(neon) => {
            report.ok(
                name,
                "snapshot",
                format!("neon: API key {}", secret_origin(&neon.api_key)),
            );
            report.not_checked(
                name,
                "snapshot",
                format!(
                    "neon: project `{}` and branch `{}` at {} (the Neon API is not called)",
                    neon.project_id, neon.branch_id, neon.base_url
                ),
            );
        }
        ProviderConfig::Rds(rds) | ProviderConfig::RdsCluster(rds) => {
            rds_lines(name, kind, rds, report);
        }
    }
}

/// The privileges template copies and renames need: CREATEDB and ownership of the database
/// (a superuser has both).
fn pg_privileges(name: &str, kind: &str, facts: &PgFacts, report: &mut Report) {
    if facts.superuser {
        return;
    }
    if !facts.createdb {
        report.problem(
            name,
            "snapshot",
            format!(
                "{kind}: role `{}` may not create databases, and snapshots and restores create them",
                facts.role
            ),
            format!(
                "as a superuser: ALTER ROLE \"{}\" CREATEDB;",
                facts.role
            ),
        );
    }
    if !facts.owns_database {
        report.problem(
            name,
            "snapshot",
            format!(
                "{kind}: role `{}` does not own database `{}` (owner `{}`), and copying it and \
                 renaming it on restore need the owner",
                facts.role, facts.database, facts.owner
            ),
            format!(
                "as a superuser: ALTER DATABASE \"{}\" OWNER TO \"{}\"; or connect as `{}`",
                facts.database, facts.role, facts.owner
            ),
        );
    }
}

/// A `pg_dump`/`pg_restore` binary: found, and not older than the server (an older `pg_dump`
/// refuses a newer server). Returns "pg_dump 16 (path)" when it will do.
async fn tool_line(
    env: &Environment,
    tool: &str,
    given: Option<&Path>,
    major: u32,
    report: &mut Report,
) -> Option<String> {
    let name = env.name.as_str();
    let path = given
        .map(Path::to_path_buf)
        .or_else(|| crate::snapshot::pg::find_pg_tool(tool))?;
    match tool_major(&path).await {
        Some(tool_major) if tool_major < major => report.problem(
            name,
            "snapshot",
            format!(
                "pg-dump: {} is version {tool_major}, older than the server ({major}), and \
                 refuses to dump it",
                path.display()
            ),
            format!(
                "install the PostgreSQL {major} client tools (or newer) and set `snapshot.{tool}` \
                 in {} if they are not found first",
                env.file.display()
            ),
        ),
        Some(tool_major) => return Some(format!("{tool} {tool_major} ({})", path.display())),
        None => report.problem(
            name,
            "snapshot",
            format!("pg-dump: {} --version does not answer", path.display()),
            format!("point `snapshot.{tool}` at a working `{tool}`"),
        ),
    }
    None
}

/// The major version a PostgreSQL client tool reports (`pg_dump (PostgreSQL) 16.4`).
async fn tool_major(path: &Path) -> Option<u32> {
    let out = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio::process::Command::new(path).arg("--version").output(),
    )
    .await
    .ok()?
    .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .find_map(|word| word.split('.').next()?.parse::<u32>().ok())
}

/// sqlite-file snapshots are written beside the database file.
fn sqlite_dir_line(name: &str, file: &Path, report: &mut Report) {
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    if !dir.exists() {
        report.ok(
            name,
            "snapshot",
            format!(
                "sqlite-file: {} does not exist yet; the first apply creates it",
                dir.display()
            ),
        );
        return;
    }
    let probe = dir.join(format!(".sluice-doctor-{}", uuid::Uuid::new_v4().simple()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            report.ok(
                name,
                "snapshot",
                format!("sqlite-file: copies go to {} (writable)", dir.display()),
            );
        }
        Err(err) => report.problem(
            name,
            "snapshot",
            format!("sqlite-file: cannot write in {}: {err}", dir.display()),
            format!(
                "make {} writable for the user sluice runs as",
                dir.display()
            ),
        ),
    }
}

/// RDS: what can be seen without calling AWS — a region and credentials in the usual places.
fn rds_lines(name: &str, kind: &str, rds: &crate::config::RdsConfig, report: &mut Report) {
    let set = |var: &str| std::env::var(var).is_ok_and(|v| !v.trim().is_empty());
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let aws_file = |file: &str| {
        home.as_ref()
            .is_some_and(|h| h.join(".aws").join(file).is_file())
    };
    let region = rds.region.clone().or_else(|| {
        ["AWS_REGION", "AWS_DEFAULT_REGION"]
            .iter()
            .find(|v| set(v))
            .map(|v| format!("from `{v}`"))
    });
    match region {
        Some(region) => report.ok(name, "snapshot", format!("{kind}: region {region}")),
        None => report.not_checked(
            name,
            "snapshot",
            format!(
                "{kind}: no `snapshot.region` nor AWS_REGION; ~/.aws/config or the instance's \
                 metadata may name one, else set `snapshot.region`"
            ),
        ),
    }
    let credentials = if set("AWS_ACCESS_KEY_ID") && set("AWS_SECRET_ACCESS_KEY") {
        Some("AWS credentials from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    } else if set("AWS_WEB_IDENTITY_TOKEN_FILE") {
        Some("AWS credentials from a web identity token (AWS_WEB_IDENTITY_TOKEN_FILE)")
    } else if set("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        || set("AWS_CONTAINER_CREDENTIALS_FULL_URI")
    {
        Some("AWS credentials from the container's task role")
    } else if set("AWS_PROFILE") || aws_file("credentials") || aws_file("config") {
        Some("AWS credentials from the profile files under ~/.aws")
    } else {
        None
    };
    match credentials {
        Some(found) => report.ok(name, "snapshot", format!("{kind}: {found}")),
        None => report.not_checked(
            name,
            "snapshot",
            format!(
                "{kind}: no AWS credentials in the environment or ~/.aws; an instance role may \
                 provide them"
            ),
        ),
    }
    report.not_checked(
        name,
        "snapshot",
        format!(
            "{kind}: `{}` and the permissions on it (the AWS API is not called)",
            rds.identifier
        ),
    );
}

async fn drift_lines(
    env: &Environment,
    engine: Option<Engine>,
    url: Option<&str>,
    problems: &[Problem],
    report: &mut Report,
) {
    let name = env.name.as_str();
    if problem_lines(problems, name, "drift", report) {
        return;
    }
    match (engine, &env.drift.shadow) {
        (None, _) => report.not_checked(name, "drift", "the database URL is not known"),
        (Some(Engine::Sqlite), _) => report.ok(
            name,
            "drift",
            "the expected schema is built in a temporary SQLite file",
        ),
        (Some(Engine::Postgres), ShadowConfig::Url(source)) => {
            let Ok(shadow) = source.read(&env.file) else {
                return;
            };
            match pg_facts(&shadow, None).await {
                Ok(f) => report.ok(
                    name,
                    "drift",
                    format!(
                        "shadow database `{}` reachable (PostgreSQL {}); sluice erases it before \
                         each build",
                        f.database, f.version
                    ),
                ),
                Err(err) => report.problem(
                    name,
                    "drift",
                    format!("the shadow database: {err}"),
                    format!(
                        "correct the shadow URL {}, or create that database",
                        match source {
                            SecretSource::Env(var) => format!("in `{var}`"),
                            SecretSource::File(path) => format!("in {}", path.display()),
                        }
                    ),
                ),
            }
        }
        (Some(Engine::Postgres), ShadowConfig::Scratch { maintenance_db }) => {
            let Some(url) = url else {
                report.not_checked(
                    name,
                    "drift",
                    "scratch databases: the server could not be reached",
                );
                return;
            };
            match pg_facts(url, Some(maintenance_db)).await {
                Ok(f) if f.superuser || f.createdb => report.ok(
                    name,
                    "drift",
                    format!(
                        "scratch databases via `{maintenance_db}`: role `{}` may create databases",
                        f.role
                    ),
                ),
                Ok(f) => report.problem(
                    name,
                    "drift",
                    format!(
                        "scratch databases: role `{}` may not create databases",
                        f.role
                    ),
                    format!(
                        "as a superuser: ALTER ROLE \"{}\" CREATEDB; or give `[drift] \
                         shadow_url_env` a database of its own",
                        f.role
                    ),
                ),
                Err(err) => report.problem(
                    name,
                    "drift",
                    format!("scratch databases via `{maintenance_db}`: {err}"),
                    format!(
                        "set `[drift] maintenance_db` in {} to a database the role may connect to",
                        env.file.display()
                    ),
                ),
            }
        }
        (Some(Engine::Postgres), ShadowConfig::Unset) => {}
    }
}
