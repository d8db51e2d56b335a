//! The command line: argument parsing and human or JSON output. Each command is a thin shell
//! around a library function, so the daemon can call the same functions later.
//!
//! Exit codes: 0 = done / up to date; 1 = the database is not where it should be (pending or
//! blocked migrations, a failed migration, a lock held elsewhere); 2 = sluice could not do its
//! job (bad config or arguments, unreachable database).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Prints a line to stdout, ignoring a closed pipe (`sluice status | head` must not panic).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}
use comfy_table::{presets, Table};
use indicatif::{ProgressBar, ProgressStyle};

pub mod backup;
pub mod drift;
pub mod ladder;

use crate::apply::{self, ApplyOptions, Context, Observer, Resolution, State, Status};
use crate::config::{Environment, Project};
use crate::error::{Error, Result};
use crate::health;
use crate::migrations::classify::TxMode;
use crate::migrations::{self, MigrationSet};
use crate::promote::{self, Request};
use crate::snapshot;
use crate::store::OnDemandStore;
use crate::target::{self, Target};

/// sluice applies and guards schema migrations, Prisma-compatible, on PostgreSQL and SQLite.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about)]
pub struct Cli {
    /// Project directory (holding sluice.toml and environments/).
    #[arg(long, global = true, env = "SLUICE_PROJECT", default_value = ".")]
    pub project: PathBuf,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// sluice's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show applied, pending, failed, edited and missing migrations (exit 0 when up to date).
    Status(StatusArgs),
    /// Apply pending migrations in order.
    Apply(ApplyArgs),
    /// Record a decision about a failed, edited or missing migration.
    Resolve(ResolveArgs),
    /// Take a snapshot of an environment now.
    Snapshot(SnapshotArgs),
    /// Put a snapshot back as the environment; what it replaces is kept.
    Restore(RestoreArgs),
    /// List snapshots and preserved copies, or prune what retention allows.
    Snapshots(SnapshotsArgs),
    /// Run the environment's [[health]] checks now (exit 0 only when all succeed).
    Check(CheckArgs),
    /// Run the promotion daemon: the HTTP API, gates, runs and crash recovery.
    Serve(ladder::ServeArgs),
    /// Bring an environment (and, unless --only, those upstream of it) to a release, following
    /// the runs until they end or wait for a person (exit 0 all succeeded, 1 one failed or
    /// rolled back, 3 one waits for an approval).
    Promote(ladder::PromoteArgs),
    /// Show each environment's release and runs.
    Environments(ladder::EnvironmentsArgs),
    /// List runs, newest first.
    Runs(ladder::RunsArgs),
    /// Show one run: its transitions, measurements and audit trail.
    Run(ladder::RunArgs),
    /// Approve a waiting run.
    Approve(ladder::ApproveArgs),
    /// Reject a waiting run.
    Reject(ladder::RejectArgs),
    /// Cancel a waiting or halted run.
    Cancel(ladder::RejectArgs),
    /// Continue a halted run from the step it stopped at.
    Resume(ladder::ResumeArgs),
    /// Put an environment back where it was before its last promotion.
    Rollback(ladder::RollbackArgs),
    /// Tell the daemon to re-read its files (a bad file changes nothing).
    Reload(ladder::ReloadArgs),
    /// Make API tokens for the daemon's tokens file.
    #[command(subcommand)]
    Token(ladder::TokenCommand),
    /// Show each policy's schedule and its next firings in its time zone.
    Schedules(SchedulesArgs),
    /// Report risky statements in migrations (exit 0 none, 1 findings): all of them, or with
    /// --env the ones that environment has not applied.
    Lint(LintArgs),
    /// Compare the live schemas of two environments (exit 0 same, 2 different, 1 error).
    Diff(drift::DiffArgs),
    /// Compare an environment's live schema with the schema its applied migrations produce
    /// (exit 0 same, 2 drifted, 1 error).
    Drift(drift::DriftArgs),
    /// Check now what runs will need: every environment reachable, the privileges its snapshot
    /// provider needs, a place for drift checks, tokens and Slack secrets (exit 0 no problem,
    /// 1 problems, 2 bad config).
    Doctor(crate::doctor::DoctorArgs),
    /// Back up the state store as JSON lines, or restore a backup.
    #[command(subcommand)]
    Store(backup::StoreCommand),
}

/// `sluice lint`.
#[derive(Debug, Args)]
pub struct LintArgs {
    /// Lint only the migrations this environment has not applied (read from its history table).
    #[arg(long)]
    pub env: Option<String>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// `sluice schedules`.
#[derive(Debug, Args)]
pub struct SchedulesArgs {
    /// How many firings to show per schedule.
    #[arg(long, default_value_t = 5)]
    pub count: usize,
    /// Show firings after this instant (RFC 3339, e.g. 2026-03-28T12:00:00Z) instead of now.
    #[arg(long)]
    pub after: Option<String>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// `sluice check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Environment name (a file in environments/).
    #[arg(long)]
    pub env: String,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// `sluice snapshot`.
#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// Environment name (a file in environments/).
    #[arg(long)]
    pub env: String,
    /// Why: recorded with the snapshot.
    #[arg(long)]
    pub reason: Option<String>,
    /// Who asked (default: $SLUICE_ACTOR, else $USER, else the OS user name).
    #[arg(long)]
    pub by: Option<String>,
    /// Run id to take the snapshot for; the same run id always names the same snapshot, so a
    /// retry after an interruption finds the one already made (default: a new run).
    #[arg(long, value_name = "RUN")]
    pub run: Option<String>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// `sluice restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Environment name (a file in environments/).
    #[arg(long)]
    pub env: String,
    /// The snapshot to restore (a name from `sluice snapshots`).
    pub snapshot: String,
    /// Why: recorded with the restore.
    #[arg(long)]
    pub reason: String,
    /// Who decided (default: $SLUICE_ACTOR, else $USER, else the OS user name).
    #[arg(long)]
    pub by: Option<String>,
    /// Run id of an interrupted restore to finish (its preserved copy's name derives from it).
    #[arg(long, value_name = "RUN")]
    pub run: Option<String>,
}

/// `sluice snapshots`.
#[derive(Debug, Args)]
pub struct SnapshotsArgs {
    /// Environment name (a file in environments/).
    #[arg(long)]
    pub env: Option<String>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Where the store is: a running daemon (found when it holds the store) or, with
    /// --local, this process.
    #[command(flatten)]
    pub connection: ladder::Connection,
    /// What to do; without one, list.
    #[command(subcommand)]
    pub action: Option<SnapshotsAction>,
}

/// Actions on snapshots.
#[derive(Debug, Subcommand)]
pub enum SnapshotsAction {
    /// Delete what the environment's retention allows, and say what was deleted.
    Prune(PruneArgs),
}

/// `sluice snapshots prune`.
#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Environment name (a file in environments/).
    #[arg(long)]
    pub env: Option<String>,
    /// Say what would be deleted; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Where the store is, and who asks (`--by`, for --local).
    #[command(flatten)]
    pub connection: ladder::Connection,
}

/// `sluice status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Environment name (a file in environments/).
    #[arg(long)]
    pub env: String,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// `sluice apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Environment name (a file in environments/).
    #[arg(long)]
    pub env: String,
    /// Apply up to and including this migration.
    #[arg(long, value_name = "NAME")]
    pub to: Option<String>,
    /// Show what would run; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Retry a failed migration: transactional ones from the start, statement-by-statement ones
    /// from their first uncommitted statement.
    #[arg(long)]
    pub resume: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Do not take the snapshot the environment's [snapshot] section asks for.
    #[arg(long)]
    pub no_snapshot: bool,
}

/// `sluice resolve`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("action").required(true).args(["applied", "rolled_back"])))]
pub struct ResolveArgs {
    /// Environment name (a file in environments/).
    #[arg(long)]
    pub env: String,
    /// Mark NAME applied (completed by hand, or its edited file accepted as is).
    #[arg(long, value_name = "NAME")]
    pub applied: Option<String>,
    /// Mark NAME's failed attempt rolled back (it runs again on the next apply), or record that
    /// a migration missing from the directory was removed on purpose.
    #[arg(long, value_name = "NAME")]
    pub rolled_back: Option<String>,
    /// Why: recorded with the decision.
    #[arg(long)]
    pub reason: String,
    /// Who decided (default: $SLUICE_ACTOR, else $USER, else the OS user name).
    #[arg(long)]
    pub by: Option<String>,
}

/// Parses the command line, runs the command and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = if matches!(cli.command, Command::Serve(_)) {
        "info"
    } else {
        "warn"
    };
    init_logging(cli.log_format, default_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(exit_code_of(&err))
        }
    }
}

fn exit_code_of(err: &Error) -> u8 {
    match err {
        Error::Guard(_)
        | Error::Migration(_)
        | Error::ChangedUnderUs(_)
        | Error::Lock(_)
        | Error::Conflict(_)
        | Error::IllegalMove(_) => 1,
        _ => 2,
    }
}

fn init_logging(format: LogFormat, default_level: &str) {
    // The driver's own warnings (server notices such as "there is no transaction in
    // progress", slow-statement reports) are noise beside sluice's messages, and sled logs
    // what it finds wrong with its files itself while the store error says it once, with what
    // to do: both stay quiet unless SLUICE_LOG asks for them.
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{default_level},sqlx=error,sled=off"))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(crate::error::RedactedStderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Runs one parsed command; returns the exit code for outcomes that are not errors.
pub async fn run(cli: Cli) -> Result<u8> {
    let project = match Project::load(&cli.project) {
        Ok(project) => project,
        // For the comparing commands 2 means "different", so every error is 1.
        Err(err) if matches!(cli.command, Command::Diff(_) | Command::Drift(_)) => {
            eprintln!("error: {err}");
            return Ok(1);
        }
        Err(err) => return Err(err),
    };
    match cli.command {
        Command::Status(args) => status(&project, args).await,
        Command::Apply(args) => apply_cmd(&project, args).await,
        Command::Resolve(args) => resolve(&project, args).await,
        Command::Snapshot(args) => snapshot_cmd(&project, args).await,
        Command::Restore(args) => restore_cmd(&project, args).await,
        Command::Snapshots(args) => snapshots_cmd(&project, args).await,
        Command::Check(args) => check_cmd(&project, args).await,
        Command::Serve(args) => ladder::serve(&project, args).await,
        Command::Schedules(args) => schedules_cmd(&project, args),
        Command::Lint(args) => lint_cmd(&project, args).await,
        Command::Diff(args) => drift::diff_cmd(&project, args).await,
        Command::Drift(args) => drift::drift_cmd(&project, args).await,
        Command::Doctor(args) => crate::doctor::doctor_cmd(&project, args).await,
        Command::Promote(args) => ladder::promote(&project, args).await,
        Command::Environments(args) => ladder::environments(&project, args).await,
        Command::Runs(args) => ladder::runs(&project, args).await,
        Command::Run(args) => ladder::run(&project, args).await,
        Command::Approve(args) => ladder::approve(&project, args).await,
        Command::Reject(args) => ladder::decide(&project, args, "reject").await,
        Command::Cancel(args) => ladder::decide(&project, args, "cancel").await,
        Command::Resume(args) => ladder::resume(&project, args).await,
        Command::Rollback(args) => ladder::rollback(&project, args).await,
        Command::Reload(args) => ladder::reload(&project, args).await,
        Command::Token(command) => ladder::token(&project, command),
        Command::Store(command) => backup::store_cmd(&project, command).await,
    }
}

struct Loaded {
    env: Environment,
    set: MigrationSet,
    target: Box<dyn Target>,
}

async fn load(project: &Project, env_name: &str) -> Result<Loaded> {
    let env = project.environment(env_name)?;
    let set = migrations::discover(&project.migrations_dir)?;
    let target = target::connect(&env).await?;
    Ok(Loaded { env, set, target })
}

async fn status(project: &Project, args: StatusArgs) -> Result<u8> {
    let mut loaded = load(project, &args.env).await?;
    let ctx = Context::new(&loaded.env, &loaded.set, loaded.target.as_ref())?;
    let status = apply::status(loaded.target.as_mut(), &ctx).await?;
    loaded.target.close().await?;
    if args.json {
        let doc = serde_json::json!({
            "environment": ctx.env.name,
            "engine": ctx.history.engine,
            "history_table": ctx.history.name(),
            "up_to_date": status.is_up_to_date(),
            "status": status,
        });
        say!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        print_status(&ctx, &status);
    }
    Ok(if status.is_up_to_date() { 0 } else { 1 })
}

fn print_status(ctx: &Context<'_>, status: &Status) {
    let states = [
        (State::Applied, "applied"),
        (State::Pending, "pending"),
        (State::Failed, "failed"),
        (State::Interrupted, "interrupted"),
        (State::Edited, "edited"),
        (State::Missing, "missing"),
    ];
    let summary: Vec<String> = states
        .iter()
        .filter_map(|(s, label)| {
            let n = status.count(*s);
            (n > 0).then(|| format!("{n} {label}"))
        })
        .collect();
    say!(
        "environment `{}` ({:?}, history table {}): {}",
        ctx.env.name,
        ctx.history.engine,
        ctx.history.name(),
        if summary.is_empty() {
            "no migrations".to_string()
        } else {
            summary.join(", ")
        }
    );
    let mut table = Table::new();
    table.load_preset(presets::NOTHING);
    table.set_header(vec!["state", "migration", "finished", "note"]);
    for e in &status.entries {
        let label = states
            .iter()
            .find(|(s, _)| *s == e.state)
            .map(|(_, l)| *l)
            .unwrap_or("?");
        let note = match e.state {
            State::Edited => format!(
                "recorded {} ≠ file {}",
                short(e.recorded_checksum.as_deref()),
                short(e.file_checksum.as_deref())
            ),
            State::Failed | State::Interrupted => {
                let mut note = e
                    .error
                    .as_deref()
                    .and_then(|t| t.lines().nth(1).or_else(|| t.lines().next()))
                    .unwrap_or("")
                    .to_string();
                if let Some(p) = &e.progress {
                    note = format!("{}/{} statements committed. {note}", p.done, p.total);
                }
                note
            }
            State::Pending if e.out_of_order => "older than the last applied migration".into(),
            _ => String::new(),
        };
        table.add_row(vec![
            label.to_string(),
            e.name.clone(),
            e.finished_at
                .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                .unwrap_or_default(),
            note,
        ]);
    }
    if !status.entries.is_empty() {
        say!("{table}");
    }
}

fn short(checksum: Option<&str>) -> String {
    checksum
        .map(|c| c.chars().take(12).collect())
        .unwrap_or_else(|| "?".into())
}

/// Progress output: a bar on a terminal, plain lines elsewhere (CI logs, pipes).
struct CliObserver {
    bar: Option<ProgressBar>,
    current: Mutex<String>,
}

impl CliObserver {
    fn new(json: bool) -> CliObserver {
        let bar = (!json && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} {elapsed} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        CliObserver {
            bar,
            current: Mutex::new(String::new()),
        }
    }

    fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }
}

impl Observer for CliObserver {
    fn planned(&self, names: &[String]) {
        if let Some(bar) = &self.bar {
            bar.set_length(names.len() as u64);
        }
    }

    fn migration_started(&self, name: &str, mode: TxMode, resume_at: Option<usize>) {
        if let Ok(mut current) = self.current.lock() {
            *current = name.to_string();
        }
        let how = match mode {
            TxMode::Transactional => "one transaction",
            TxMode::SelfTransacting => "its own transactions",
            TxMode::NonTransactional => "statement by statement",
        };
        let resumed = resume_at
            .map(|i| format!(", resuming at statement {}", i + 1))
            .unwrap_or_default();
        match &self.bar {
            Some(bar) => bar.set_message(name.to_string()),
            None => eprintln!("applying {name} ({how}{resumed})"),
        }
        if self.bar.is_some() && !resumed.is_empty() {
            self.line(&format!("{name}: {}", resumed.trim_start_matches(", ")));
        }
    }

    fn statement_started(&self, name: &str, index: usize, total: usize) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!("{name} (statement {}/{total})", index + 1));
        }
    }

    fn migration_finished(&self, name: &str, elapsed: Duration) {
        match &self.bar {
            Some(bar) => bar.inc(1),
            None => eprintln!("applied {name} in {} ms", elapsed.as_millis()),
        }
    }

    fn note(&self, message: &str) {
        self.line(message);
    }
}

impl Drop for CliObserver {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

async fn apply_cmd(project: &Project, args: ApplyArgs) -> Result<u8> {
    let env = project.environment(&args.env)?;
    let set = migrations::discover(&project.migrations_dir)?;
    let store = store_of(project);
    if !args.dry_run {
        ensure_store_free(
            &store,
            &env.name,
            &format!(
                "Ask the daemon to apply: `sluice promote --to {} --only` (a run takes the \
                 snapshot, applies and checks health)",
                env.name
            ),
        )?;
    }
    let opts = ApplyOptions {
        to: args.to.clone(),
        dry_run: args.dry_run,
        resume_failed: args.resume,
        run_id: uuid::Uuid::new_v4().to_string(),
        expected_plan: None,
    };
    let request = Request {
        actor: actor(None),
        reason: None,
    };
    let observer = CliObserver::new(args.json);
    let result = promote::run_apply(
        &env,
        &set,
        &store,
        &request,
        opts,
        !args.no_snapshot,
        &observer,
    )
    .await;
    drop(observer);
    let run = result?;
    if let Some(snapshot) = &run.snapshot {
        if !args.json {
            eprintln!("snapshot {} taken before applying", snapshot.name);
        }
    }
    let outcome = run.apply;
    if args.json {
        say!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "environment": env.name,
                "run_id": run.run_id,
                "snapshot": run.snapshot,
                "dry_run": args.dry_run,
                "plan": outcome.plan,
                "applied": outcome.applied,
            }))
            .unwrap_or_default()
        );
    } else if args.dry_run {
        if outcome.plan.is_empty() {
            say!("`{}` is up to date; nothing would run", env.name);
        } else {
            say!("would apply to `{}`:", env.name);
            for p in &outcome.plan {
                let how = match p.mode {
                    TxMode::Transactional => "one transaction".to_string(),
                    _ => format!(
                        "statement by statement: {}",
                        p.reason.as_deref().unwrap_or("")
                    ),
                };
                let resume = if p.resume_at > 0 {
                    format!(", resuming at statement {}", p.resume_at + 1)
                } else {
                    String::new()
                };
                let plural = if p.statements == 1 { "" } else { "s" };
                say!(
                    "  {}  ({} statement{plural}, {how}{resume})",
                    p.name,
                    p.statements
                );
            }
        }
    } else if outcome.applied.is_empty() {
        say!("`{}` is up to date; nothing to apply", env.name);
    } else {
        say!(
            "applied {} migration{} to `{}`",
            outcome.applied.len(),
            if outcome.applied.len() == 1 { "" } else { "s" },
            env.name
        );
    }
    Ok(0)
}

async fn resolve(project: &Project, args: ResolveArgs) -> Result<u8> {
    let resolution = match (args.applied, args.rolled_back) {
        (Some(name), None) => Resolution::Applied(name),
        (None, Some(name)) => Resolution::RolledBack(name),
        _ => {
            return Err(Error::Usage(
                "give exactly one of --applied NAME or --rolled-back NAME".into(),
            ))
        }
    };
    if args.reason.trim().is_empty() {
        return Err(Error::Usage("--reason must say why".into()));
    }
    let actor = actor(args.by);
    let mut loaded = load(project, &args.env).await?;
    let ctx = Context::new(&loaded.env, &loaded.set, loaded.target.as_ref())?;
    let result = apply::resolve(
        loaded.target.as_mut(),
        &ctx,
        &resolution,
        &actor,
        args.reason.trim(),
    )
    .await;
    let closed = loaded.target.close().await;
    let message = result?;
    closed?;
    say!("{message}");
    Ok(0)
}

/// Who is acting: `--by`, else `$SLUICE_ACTOR`, else `$USER`, else the operating system's
/// name for the user running sluice (CI jobs and containers often have no `$USER`).
pub(crate) fn actor(by: Option<String>) -> String {
    [
        by,
        std::env::var("SLUICE_ACTOR").ok(),
        std::env::var("USER").ok(),
    ]
    .into_iter()
    .flatten()
    .find(|a| !a.trim().is_empty())
    .or_else(|| whoami::fallible::username().ok())
    .filter(|a| !a.trim().is_empty())
    .unwrap_or_else(|| "unknown".into())
}

/// Refuses, before any database is touched, when another process holds the state store for
/// more than a moment: a running daemon owns the environments, and a command that changed one
/// behind its back could not even record what it did.
fn ensure_store_free(store: &OnDemandStore, env: &str, instead: &str) -> Result<()> {
    store
        .ensure_free(Duration::from_secs(2))
        .map_err(|err| match err {
            Error::StoreBusy { path } => Error::Conflict(format!(
                "{path}: the state store is held by another sluice process, most likely `sluice \
                 serve`, which drives `{env}`; nothing was changed. {instead}; or stop the daemon \
                 and run this command again"
            )),
            other => other,
        })
}

fn store_of(project: &Project) -> OnDemandStore {
    OnDemandStore::new(&project.state_dir.join("store"), Duration::from_secs(5))
}

/// Progress lines of provider work done before a command's own output begins (undoing what an
/// interrupted snapshot left), on stderr.
struct CliProgress;

impl snapshot::Progress for CliProgress {
    fn update(&self, message: &str) {
        eprintln!("{message}");
    }
}

impl snapshot::Progress for CliObserver {
    fn update(&self, message: &str) {
        match &self.bar {
            Some(bar) => bar.set_message(message.to_string()),
            None => eprintln!("{message}"),
        }
    }
}

async fn snapshot_cmd(project: &Project, args: SnapshotArgs) -> Result<u8> {
    let env = project.environment(&args.env)?;
    let provider = snapshot::provider_for(&env).await?;
    let store = store_of(project);
    ensure_store_free(
        &store,
        &env.name,
        "Every run the daemon makes takes its snapshot first",
    )?;
    let request = Request {
        actor: actor(args.by),
        reason: args.reason,
    };
    promote::recover_environment(&env, &store, &request, &CliProgress).await?;
    let run_id = args.run.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let observer = CliObserver::new(args.json);
    let made = promote::create_snapshot(
        &env,
        provider.as_ref(),
        &store,
        &request,
        &run_id,
        &observer,
    )
    .await;
    drop(observer);
    let made = made?;
    if args.json {
        say!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"environment": env.name, "run_id": run_id, "snapshot": made})
            )
            .unwrap_or_default()
        );
    } else {
        say!(
            "snapshot {} of `{}` taken ({})",
            made.name,
            env.name,
            provider.kind()
        );
    }
    Ok(0)
}

async fn restore_cmd(project: &Project, args: RestoreArgs) -> Result<u8> {
    if args.reason.trim().is_empty() {
        return Err(Error::Usage("--reason must say why".into()));
    }
    let env = project.environment(&args.env)?;
    let provider = snapshot::provider_for(&env).await?;
    let store = store_of(project);
    ensure_store_free(
        &store,
        &env.name,
        &format!(
            "To put `{}` back through the daemon: `sluice rollback --env {} --reason \"…\"`",
            env.name, env.name
        ),
    )?;
    let request = Request {
        actor: actor(args.by),
        reason: Some(args.reason.trim().to_string()),
    };
    promote::recover_environment(&env, &store, &request, &CliProgress).await?;
    let run_id = args.run.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let observer = CliObserver::new(false);
    let restored = promote::restore_snapshot(
        &env,
        provider.as_ref(),
        &store,
        &request,
        &args.snapshot,
        &run_id,
        &observer,
    )
    .await;
    drop(observer);
    let restored = restored.map_err(|e| match e {
        Error::Snapshot(text) => Error::Snapshot(format!(
            "{text}\nTo finish this restore once the cause is fixed: sluice restore --env {} {} --run {run_id} --reason \"...\"",
            env.name, args.snapshot
        )),
        other => other,
    })?;
    say!(
        "restored `{}` from {}; the state it replaced is kept as {}",
        env.name,
        restored.snapshot,
        restored.preserved_as
    );
    Ok(0)
}

async fn snapshots_cmd(project: &Project, args: SnapshotsArgs) -> Result<u8> {
    let (env_name, dry_run, connection) = match args.action {
        Some(SnapshotsAction::Prune(p)) => (
            p.env.clone().or(args.env.clone()),
            Some(p.dry_run),
            args.connection.and(p.connection),
        ),
        None => (args.env.clone(), None, args.connection),
    };
    let Some(env_name) = env_name else {
        return Err(Error::Usage("give --env ENV".into()));
    };
    let env = project.environment(&env_name)?;
    if let Some(client) = connection.daemon_for_store(project)? {
        return match dry_run {
            Some(dry_run) => {
                print_pruned(
                    &env.name,
                    dry_run,
                    &client.prune(&env.name, dry_run).await?,
                    args.json,
                );
                Ok(0)
            }
            None => {
                print_listing(&client.snapshots(&env.name).await?, args.json);
                Ok(0)
            }
        };
    }
    let provider = snapshot::provider_for(&env).await?;
    let store = store_of(project);
    if let Some(dry_run) = dry_run {
        let request = Request {
            actor: actor(connection.by),
            reason: Some("retention".into()),
        };
        let deleted = promote::prune(
            &env,
            provider.as_ref(),
            &store,
            &request,
            dry_run,
            promote::Pruner::Person,
        )
        .await?;
        print_pruned(&env.name, dry_run, &deleted, args.json);
        return Ok(0);
    }
    let listed =
        promote::list_snapshots(&env, provider.as_ref(), &store, promote::Pruner::Person).await?;
    print_listing(
        &promote::SnapshotListing {
            environment: env.name.clone(),
            provider: provider.kind().to_string(),
            snapshots: listed,
        },
        args.json,
    );
    Ok(0)
}

fn print_pruned(env: &str, dry_run: bool, deleted: &[String], json: bool) {
    if json {
        say!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"environment": env, "dry_run": dry_run, "deleted": deleted})
            )
            .unwrap_or_default()
        );
    } else if deleted.is_empty() {
        say!("retention allows deleting nothing in `{env}`");
    } else {
        let verb = if dry_run { "would delete" } else { "deleted" };
        for name in deleted {
            say!("{verb} {name}");
        }
    }
}

fn print_listing(listing: &promote::SnapshotListing, json: bool) {
    if json {
        say!(
            "{}",
            serde_json::to_string_pretty(listing).unwrap_or_default()
        );
        return;
    }
    let listed = &listing.snapshots;
    say!(
        "environment `{}` ({}): {} copies",
        listing.environment,
        listing.provider,
        listed.len()
    );
    let time = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M:%S").to_string();
    let mut table = Table::new();
    table.load_preset(presets::NOTHING);
    table.set_header(vec![
        "kind",
        "name",
        "created",
        "size",
        "by",
        "preserved",
        "retention",
    ]);
    for l in listed {
        let preserved = match (&l.preserved_at, &l.preserved_by) {
            (Some(at), Some(by)) => format!(
                "{} by {by}{}",
                time(*at),
                l.preserved_run
                    .as_deref()
                    .map(|r| format!(" (run {})", r.get(..8).unwrap_or(r)))
                    .unwrap_or_default()
            ),
            _ => String::new(),
        };
        table.add_row(vec![
            match l.snapshot.kind {
                snapshot::SnapshotKind::Snapshot => "snapshot".to_string(),
                snapshot::SnapshotKind::Preserved => "preserved".to_string(),
            },
            l.snapshot.name.clone(),
            l.snapshot.created_at.map(time).unwrap_or_default(),
            l.snapshot
                .size_bytes
                .map(|b| format!("{:.1} MB", b as f64 / 1_048_576.0))
                .unwrap_or_default(),
            l.record
                .as_ref()
                .map(|r| match &r.reason {
                    Some(reason) => format!("{}: {reason}", r.actor),
                    None => r.actor.clone(),
                })
                .unwrap_or_default(),
            preserved,
            l.verdict.describe().to_string(),
        ]);
    }
    if !listed.is_empty() {
        say!("{table}");
    }
}

async fn check_cmd(project: &Project, args: CheckArgs) -> Result<u8> {
    let env = project.environment(&args.env)?;
    if env.health.is_empty() {
        return Err(Error::Config(format!(
            "{}: environment `{}` has no [[health]] checks",
            env.file.display(),
            env.name
        )));
    }
    let url = env.database_url()?;
    health::check_engine(&env.health, &url)?;
    let json = args.json;
    let sink = move |check: &str, m: &health::Measurement| {
        if !json {
            eprintln!("{check}: {} {}", m.outcome, m.message);
        }
    };
    let (outcome, results) = health::run_all(&env.health, &url, &sink).await;
    if args.json {
        say!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"environment": env.name, "outcome": outcome, "checks": results})
            )
            .unwrap_or_default()
        );
    } else {
        for r in &results {
            say!("{:<24} {}: {}", r.name, r.outcome, r.summary);
        }
        say!("`{}`: {}", env.name, outcome);
    }
    Ok(if outcome == health::HealthOutcome::Successful {
        0
    } else {
        1
    })
}

fn schedules_cmd(project: &Project, args: SchedulesArgs) -> Result<u8> {
    let after = match &args.after {
        Some(text) => chrono::DateTime::parse_from_rfc3339(text)
            .map(|d| d.with_timezone(&chrono::Utc))
            .map_err(|e| {
                Error::Usage(format!(
                    "--after `{text}` is not an RFC 3339 instant such as 2026-03-28T12:00:00Z ({e})"
                ))
            })?,
        None => chrono::Utc::now(),
    };
    let policies = crate::policy::Policies::load(
        &project.root.join(crate::policy::POLICIES_DIR),
        &project.environment_names()?,
    )?;
    let views = crate::schedule::upcoming(&policies, after, args.count);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&views).unwrap_or_default()
        );
        return Ok(0);
    }
    if views.is_empty() {
        println!("no policy has a schedule (add `schedule = \"0 10 * * Mon-Fri\"` to a file in policies/)");
        return Ok(0);
    }
    for view in views {
        let rule = &view.rule;
        println!(
            "{}: `{}` in {} (misfire = \"{}\", starting_deadline = {}, on_closed_window = \"{}\")",
            view.environment,
            rule.cron.expression,
            rule.cron.timezone.name(),
            rule.misfire.as_str(),
            crate::policy::format_duration(rule.starting_deadline),
            match rule.on_closed_window {
                crate::policy::ClosedWindowRule::Wait => "wait",
                crate::policy::ClosedWindowRule::Drop => "drop",
            }
        );
        for at in &view.next {
            println!(
                "  {}  ({})",
                at.format("%a %Y-%m-%d %H:%M %Z (%:z)"),
                at.with_timezone(&chrono::Utc).format("%Y-%m-%d %H:%M UTC")
            );
        }
    }
    Ok(0)
}

async fn lint_cmd(project: &Project, args: LintArgs) -> Result<u8> {
    use crate::migrations::lint::{lint_migrations, LintOptions};
    let mut options = LintOptions::default();
    let (set, pending) = match &args.env {
        Some(env) => {
            let mut loaded = load(project, env).await?;
            options.server_major =
                crate::drift::expected::postgres_major(&loaded.env.database_url()?).await?;
            let ctx = Context::new(&loaded.env, &loaded.set, loaded.target.as_ref())?;
            let status = apply::status(loaded.target.as_mut(), &ctx).await?;
            loaded.target.close().await?;
            let pending: Vec<String> = status
                .with_state(State::Pending)
                .map(|e| e.name.clone())
                .collect();
            (loaded.set.clone(), Some(pending))
        }
        None => (migrations::discover(&project.migrations_dir)?, None),
    };
    let report = lint_migrations(&set, pending.as_deref(), options);
    if args.json {
        say!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        let scope = match (&args.env, &pending) {
            (Some(env), Some(p)) => format!("{} migration(s) pending on `{env}`", p.len()),
            _ => format!("{} migration(s)", set.migrations.len()),
        };
        if report.findings.is_empty() {
            say!("no findings in {scope}");
        } else {
            say!("{} finding(s) in {scope}:", report.findings.len());
        }
        for f in &report.findings {
            say!(
                "{}:{}: [{}] {}\n    {}",
                f.migration,
                f.line,
                f.rule.id(),
                f.message,
                f.statement
            );
        }
        for s in &report.silenced {
            say!(
                "silenced {}:{}: [{}] {}",
                s.migration,
                s.line,
                s.rule.id(),
                s.reason
            );
        }
        for p in &report.problems {
            say!("problem: {p}");
        }
    }
    Ok(if report.findings.is_empty() { 0 } else { 1 })
}
