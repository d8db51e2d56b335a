//! Bringing one target to the migrations directory: take the lock, read the history, stop on
//! anything a person must decide (edited, missing or failed migrations), then apply what is
//! pending, each migration committing together with its history row.
//!
//! The target is reached only through [`Target`], so this logic is the same for PostgreSQL and
//! SQLite and for every caller (CLI now, the promotion daemon later).

pub mod plan;
pub mod revert;
pub mod status;

use std::time::{Duration, Instant};

use crate::config::{Environment, HistoryMode};
use crate::error::{ChangedUnderUs, Error, MigrationFailure, Result};
use crate::migrations::classify::{StatementKind, TxMode};
use crate::migrations::lexer;
use crate::migrations::{Layout, Migration, MigrationSet};
use crate::target::history::RowState;
use crate::target::history::{row_id_for, NewRow};
use crate::target::{
    lock_key, Blocker, BlockerKind, EffectState, ExecError, HistoryRow, HistoryTable, Progress,
    SqlError, Target,
};
use crate::testhook;

pub use plan::{Prepared, Unit};
pub use status::{Entry, State, Status};

/// Everything about one environment that the apply logic needs besides the connection.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    /// The environment (name, timeouts, file for messages).
    pub env: &'a Environment,
    /// The migrations directory as read.
    pub set: &'a MigrationSet,
    /// The history table in use.
    pub history: HistoryTable,
}

impl<'a> Context<'a> {
    /// Builds the context, checking the Prisma provider against the target's engine.
    pub fn new(env: &'a Environment, set: &'a MigrationSet, target: &dyn Target) -> Result<Self> {
        let engine = target.engine();
        if let Layout::Prisma {
            provider: Some(provider),
        } = &set.layout
        {
            if !engine.matches_prisma_provider(provider) {
                return Err(Error::Config(format!(
                    "{}: provider `{provider}` does not match environment `{}`, which is a {engine:?} \
                     database; point the environment at the right database or the project at the right \
                     migrations directory",
                    set.dir.join(crate::migrations::discover::PRISMA_LOCK_FILE).display(),
                    env.name
                )));
            }
        }
        Ok(Context {
            env,
            set,
            history: HistoryTable {
                mode: history_mode(env, set),
                engine,
            },
        })
    }

    fn resolve_hint(&self, flag: &str, name: &str) -> String {
        format!(
            "sluice resolve --env {} --{flag} {} --reason \"...\"",
            self.env.name,
            shell_quote(name)
        )
    }
}

/// The history table an environment uses: its own choice, else Prisma's for a Prisma layout.
pub fn history_mode(env: &Environment, set: &MigrationSet) -> HistoryMode {
    env.history.unwrap_or(match set.layout {
        Layout::Prisma { .. } => HistoryMode::Prisma,
        Layout::Flat => HistoryMode::Sluice,
    })
}

/// A migration name as a shell word, for the commands sluice's messages suggest.
pub fn shell_quote(name: &str) -> String {
    if name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
    {
        name.to_string()
    } else {
        format!("'{}'", name.replace('\'', "'\\''"))
    }
}

/// Receives progress while migrations apply, for a progress bar or plain log lines.
pub trait Observer: Send + Sync {
    /// The migrations about to be applied, in order.
    fn planned(&self, _names: &[String]) {}
    /// A migration starts (or resumes at a statement).
    fn migration_started(&self, _name: &str, _mode: TxMode, _resume_at: Option<usize>) {}
    /// A statement of a statement-by-statement migration starts.
    fn statement_started(&self, _name: &str, _index: usize, _total: usize) {}
    /// A migration committed.
    fn migration_finished(&self, _name: &str, _elapsed: Duration) {}
    /// Something worth telling the user that is not an error.
    fn note(&self, _message: &str) {}
}

/// An observer that says nothing.
pub struct Silent;
impl Observer for Silent {}

/// How to apply.
#[derive(Debug, Clone, Default)]
pub struct ApplyOptions {
    /// Stop after this migration (inclusive).
    pub to: Option<String>,
    /// Report what would run without changing anything.
    pub dry_run: bool,
    /// Retry a failed migration: a transactional one from the start, a statement-by-statement
    /// one from its first uncommitted statement. A run always retries the migrations it failed
    /// itself (rows written by `run_id`), so resuming a halted run needs no flag.
    pub resume_failed: bool,
    /// Recorded with each history row in sluice mode.
    pub run_id: String,
    /// The migrations that were to run when a snapshot was taken before taking the lock; if
    /// the plan under the lock differs, another deploy got in between and nothing is applied.
    pub expected_plan: Option<Vec<String>>,
}

/// One migration in a plan.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Planned {
    /// Full name.
    pub name: String,
    /// How it will be applied.
    pub mode: TxMode,
    /// Why it cannot run as one transaction, when it cannot.
    pub reason: Option<String>,
    /// Statements in the file.
    pub statements: usize,
    /// First statement to run (0 unless resuming).
    pub resume_at: usize,
}

/// "Statements 1-3 of 6 are committed", in words that stay true when none or one is.
fn committed_statements(done: usize, total: usize) -> String {
    match done {
        0 => format!("None of its {total} statements is committed"),
        1 => format!("Statement 1 of {total} is committed"),
        _ => format!("Statements 1-{done} of {total} are committed"),
    }
}

/// What an apply did (or, with `dry_run`, would do).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ApplyOutcome {
    /// The plan, in order.
    pub plan: Vec<Planned>,
    /// Names applied by this call (empty for a dry run).
    pub applied: Vec<String>,
}

/// The migrations an apply with `opts` would run now, read without the lock (for deciding
/// whether a snapshot is needed first).
pub async fn pending(
    target: &mut dyn Target,
    ctx: &Context<'_>,
    opts: &ApplyOptions,
) -> Result<Vec<String>> {
    let status = status(target, ctx).await?;
    guard(ctx, &status, opts)?;
    Ok(plan_work(ctx, &status, opts)?
        .iter()
        .map(|w| w.prepared.migration.name.clone())
        .collect())
}

/// Reads the target's status without taking the lock or writing anything.
pub async fn status(target: &mut dyn Target, ctx: &Context<'_>) -> Result<Status> {
    let rows = target.read_history(&ctx.history).await?;
    Ok(status::compute(ctx.set, rows.as_deref()))
}

/// Whether `opts` retries the failed migration of `entry`: asked for, or the run's own.
fn retries(entry: &Entry, opts: &ApplyOptions) -> bool {
    opts.resume_failed
        || entry
            .row
            .as_ref()
            .is_some_and(|row| row.written_by(&opts.run_id))
}

fn guard(ctx: &Context<'_>, status: &Status, opts: &ApplyOptions) -> Result<()> {
    let mut problems = Vec::new();
    for entry in &status.entries {
        match entry.state {
            State::Edited => {
                let path = ctx
                    .set
                    .get(&entry.name)
                    .map(|m| m.up.path.display().to_string())
                    .unwrap_or_default();
                problems.push(format!(
                    "migration `{}` was edited after it was applied: recorded checksum {}, file {} now has {}.\n  \
                     An applied migration must not change. Restore the file from version control, or, if the \
                     database already matches the new text, accept it: {}",
                    entry.name,
                    entry.recorded_checksum.as_deref().unwrap_or("?"),
                    path,
                    entry.file_checksum.as_deref().unwrap_or("?"),
                    ctx.resolve_hint("applied", &entry.name)
                ));
            }
            State::Missing => problems.push(format!(
                "migration `{}` is recorded on `{}` (checksum {}) but is not in {}.\n  Restore it from version \
                 control, or, if it was removed on purpose, record that: {}",
                entry.name,
                ctx.env.name,
                entry.recorded_checksum.as_deref().unwrap_or("?"),
                ctx.set.dir.display(),
                ctx.resolve_hint("rolled-back", &entry.name)
            )),
            State::Failed if !retries(entry, opts) => {
                let mut text = format!(
                    "migration `{}` failed on `{}`{}:\n    {}\n  Nothing after it runs until it is resolved.",
                    entry.name,
                    ctx.env.name,
                    entry
                        .row
                        .as_ref()
                        .and_then(|r| r.started_at)
                        .map(|t| format!(" (started {})", t.to_rfc3339()))
                        .unwrap_or_default(),
                    entry
                        .error
                        .as_deref()
                        .unwrap_or("no error was recorded (the process applying it may have died)")
                        .replace('\n', "\n    ")
                );
                match &entry.progress {
                    Some(p) if p.done > 0 => text.push_str(&format!(
                        "\n  {}. Fix the cause, then continue at statement {}: \
                         sluice apply --env {} --resume\n  or undo those statements by hand and start over: {}",
                        committed_statements(p.done, p.total),
                        p.done + 1,
                        ctx.env.name,
                        ctx.resolve_hint("rolled-back", &entry.name)
                    )),
                    _ => text.push_str(&format!(
                        "\n  Fix the migration, then: {}\n  and apply again (it runs from the start); or retry \
                         it unchanged with: sluice apply --env {} --resume\n  If you completed it by hand: {}",
                        ctx.resolve_hint("rolled-back", &entry.name),
                        ctx.env.name,
                        ctx.resolve_hint("applied", &entry.name)
                    )),
                }
                problems.push(text);
            }
            _ => {}
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Guard(format!(
            "cannot apply to `{}`:\n- {}",
            ctx.env.name,
            problems.join("\n- ")
        )))
    }
}

/// What applying one migration starts from.
struct Work<'m> {
    prepared: Prepared<'m>,
    row: Option<HistoryRow>,
    resume_at: usize,
}

fn plan_work<'m>(ctx: &Context<'m>, status: &Status, opts: &ApplyOptions) -> Result<Vec<Work<'m>>> {
    let stop = match &opts.to {
        Some(name) => {
            if ctx.set.get(name).is_none() {
                return Err(Error::Usage(format!(
                    "--to {name}: no such migration in {}",
                    ctx.set.dir.display()
                )));
            }
            Some(name.as_str())
        }
        None => None,
    };
    let mut work = Vec::new();
    for entry in &status.entries {
        if let Some(stop) = stop {
            if entry.name.as_str() > stop {
                break;
            }
        }
        let wanted = match entry.state {
            State::Pending | State::Interrupted => true,
            State::Failed => retries(entry, opts),
            _ => false,
        };
        if !wanted {
            continue;
        }
        let Some(migration) = ctx.set.get(&entry.name) else {
            continue;
        };
        let prepared = Prepared::new(migration)?;
        let resume_at = resume_point(ctx, &prepared, entry)?;
        work.push(Work {
            prepared,
            row: entry.row.clone(),
            resume_at,
        });
    }
    Ok(work)
}

/// Where an unfinished statement-by-statement migration continues, after proving that the
/// statements already committed are still the file's first statements.
fn resume_point(ctx: &Context<'_>, prepared: &Prepared<'_>, entry: &Entry) -> Result<usize> {
    let Some(progress) = &entry.progress else {
        return Ok(0);
    };
    if prepared.mode() == TxMode::Transactional || progress.done == 0 {
        return Ok(0);
    }
    let name = &prepared.migration.name;
    if progress.done > prepared.statements.len()
        || prepared.prefix_checksum(progress.done) != progress.prefix
    {
        return Err(Error::Guard(format!(
            "cannot resume migration `{name}` on `{}`: statements 1-{} were committed, but the file no longer \
             starts with those statements. Restore them, or undo them by hand and run: {}",
            ctx.env.name,
            progress.done,
            ctx.resolve_hint("rolled-back", name)
        )));
    }
    let aligned = prepared.units.iter().any(|u| {
        let r = u.statements();
        r.start == progress.done || (matches!(u, Unit::Run(_)) && r.contains(&progress.done))
    }) || progress.done == prepared.statements.len();
    if !aligned {
        return Err(Error::Guard(format!(
            "cannot resume migration `{name}` at statement {}: it falls inside a BEGIN … COMMIT block of the \
             file as it is now. Restore the file as it was, or undo by hand and run: {}",
            progress.done + 1,
            ctx.resolve_hint("rolled-back", name)
        )));
    }
    Ok(progress.done)
}

/// Applies pending migrations in order. Holds the migration lock throughout; on the first
/// failure it records the failure, stops, and returns an error that says what to do next.
pub async fn apply(
    target: &mut dyn Target,
    ctx: &Context<'_>,
    opts: &ApplyOptions,
    observer: &dyn Observer,
) -> Result<ApplyOutcome> {
    if opts.dry_run {
        let status = status(target, ctx).await?;
        guard(ctx, &status, opts)?;
        let work = plan_work(ctx, &status, opts)?;
        return Ok(ApplyOutcome {
            plan: work.iter().map(planned).collect(),
            applied: Vec::new(),
        });
    }
    target
        .lock(lock_key(ctx.history.mode), ctx.env.lock_timeout)
        .await?;
    let result = apply_locked(target, ctx, opts, observer).await;
    let unlocked = target.unlock().await;
    let outcome = result?;
    unlocked?;
    Ok(outcome)
}

fn planned(w: &Work<'_>) -> Planned {
    Planned {
        name: w.prepared.migration.name.clone(),
        mode: w.prepared.mode(),
        reason: w.prepared.classification.reason.clone(),
        statements: w.prepared.statements.len(),
        resume_at: w.resume_at,
    }
}

async fn ensure_history_table(target: &mut dyn Target, table: &HistoryTable) -> Result<()> {
    target
        .execute(&table.create_sql())
        .await
        .map_err(|e| exec_to_error(&format!("creating {}", table.name()), e))
}

fn exec_to_error(context: &str, e: ExecError) -> Error {
    match e {
        ExecError::Sql(s) => Error::database(context, format_sql_error(&s)),
        ExecError::Connection(m) => Error::database(context, m),
    }
}

fn format_sql_error(e: &SqlError) -> String {
    match &e.code {
        Some(code) => format!("SQLSTATE {code}: {}", e.message),
        None => e.message.clone(),
    }
}

async fn apply_locked(
    target: &mut dyn Target,
    ctx: &Context<'_>,
    opts: &ApplyOptions,
    observer: &dyn Observer,
) -> Result<ApplyOutcome> {
    testhook::pause("after-lock");
    ensure_history_table(target, &ctx.history).await?;
    let status = status(target, ctx).await?;
    guard(ctx, &status, opts)?;
    let work = plan_work(ctx, &status, opts)?;
    let plan: Vec<Planned> = work.iter().map(planned).collect();
    if let Some(expected) = &opts.expected_plan {
        let actual: Vec<String> = plan.iter().map(|p| p.name.clone()).collect();
        if &actual != expected {
            let applied_meanwhile = status
                .entries
                .iter()
                .filter(|e| expected.contains(&e.name) && e.state == State::Applied)
                .map(|e| {
                    let by = match e.row.as_ref().and_then(|r| r.run_id.as_deref()) {
                        Some(run) => format!("sluice run {run}"),
                        None => "another deployer (Prisma or another sluice)".to_string(),
                    };
                    match e.finished_at {
                        Some(at) => format!("`{}` (by {by}, at {})", e.name, at.to_rfc3339()),
                        None => format!("`{}` (by {by})", e.name),
                    }
                })
                .collect();
            return Err(Error::ChangedUnderUs(Box::new(ChangedUnderUs {
                environment: ctx.env.name.clone(),
                expected: expected.clone(),
                pending: actual,
                applied_meanwhile,
            })));
        }
    }
    observer.planned(&plan.iter().map(|p| p.name.clone()).collect::<Vec<_>>());
    let mut applied = Vec::with_capacity(work.len());
    let count = work.len();
    for (position, w) in work.into_iter().enumerate() {
        let more_follow = position + 1 < count;
        let started = Instant::now();
        let name = w.prepared.migration.name.clone();
        observer.migration_started(
            &name,
            w.prepared.mode(),
            (w.resume_at > 0 || w.row.is_some()).then_some(w.resume_at),
        );
        match w.prepared.mode() {
            TxMode::Transactional => apply_transactional(target, ctx, opts, &w).await?,
            TxMode::SelfTransacting | TxMode::NonTransactional => {
                apply_statementwise(target, ctx, opts, &w, more_follow, observer).await?
            }
        }
        observer.migration_finished(&name, started.elapsed());
        applied.push(name);
    }
    Ok(ApplyOutcome { plan, applied })
}

/// Converts a server-reported character position within `sent` (whose bytes from `prefix_len`
/// on are the file's text from byte `file_offset`) into a byte offset within the file.
fn file_offset_of(
    sent: &str,
    prefix_len: usize,
    file_offset: usize,
    slice_len: usize,
    position: usize,
) -> Option<usize> {
    let byte = sent.char_indices().nth(position.checked_sub(1)?)?.0;
    let within = byte.checked_sub(prefix_len)?;
    (within < slice_len).then_some(file_offset + within)
}

fn new_row<'a>(id: &'a str, m: &'a Migration, run_id: &'a str) -> NewRow<'a> {
    NewRow {
        id,
        name: &m.name,
        checksum: &m.checksum,
        run_id,
    }
}

fn connection_lost(ctx: &Context<'_>, name: &str, message: String) -> Error {
    Error::Database {
        context: format!(
            "lost the connection while applying `{name}` on `{}`; whether its last step committed is \
             recorded in the history table. Run `sluice status --env {}`, then `sluice apply --env {}` \
             to continue",
            ctx.env.name, ctx.env.name, ctx.env.name
        ),
        message,
    }
}

async fn apply_transactional(
    target: &mut dyn Target,
    ctx: &Context<'_>,
    opts: &ApplyOptions,
    w: &Work<'_>,
) -> Result<()> {
    let m = w.prepared.migration;
    let sql = m.up.sql();
    let id = row_id_for(&opts.run_id);
    let row = new_row(&id, m, &opts.run_id);
    const PREFIX: &str = "BEGIN;\n";
    let mut text = String::with_capacity(sql.len() + 512);
    text.push_str(PREFIX);
    text.push_str(sql);
    text.push_str("\n;\n");
    text.push_str(
        &ctx.history
            .insert_finished(&row, w.prepared.statements.len()),
    );
    text.push_str(";\n");
    if let Some(old) = &w.row {
        text.push_str(&ctx.history.mark_rolled_back(
            &old.id,
            &format!("retried by run {} (row {id})", opts.run_id),
        ));
        text.push_str(";\n");
    }
    text.push_str("COMMIT;");
    testhook::pause(&format!("before-migration:{}", m.name));
    match target.execute(&text).await {
        Ok(()) => Ok(()),
        Err(ExecError::Connection(msg)) => Err(connection_lost(ctx, &m.name, msg)),
        Err(ExecError::Sql(err)) => {
            let mut location = err
                .position
                .and_then(|p| file_offset_of(&text, PREFIX.len(), 0, sql.len(), p))
                .map(|offset| lexer::line_col(sql, offset));
            let mut statement = None;
            if location.is_none() && w.prepared.statements.len() > 1 && worth_replaying(&err) {
                if let Some(index) = locate_failing_statement(target, &w.prepared).await {
                    statement = Some(index + 1);
                    location = Some((w.prepared.statement_line(index), 1));
                }
            }
            let failure = MigrationFailure {
                migration: m.name.clone(),
                file: m.up.path.display().to_string(),
                line: location.map(|l| l.0),
                column: location.filter(|_| statement.is_none()).map(|l| l.1),
                statement,
                sqlstate: err.code.clone(),
                message: err.message.clone(),
                detail: err.detail.clone(),
                hint: err.hint.clone(),
                outcome: format!(
                    "The migration was rolled back: `{}` is as it was before it, and nothing after it ran.",
                    ctx.env.name
                ),
                next: format!(
                    "fix the migration, then {} and apply again",
                    ctx.resolve_hint("rolled-back", &m.name)
                ),
            };
            let mut record = ctx.history.insert_failed(&row, &failure.log_text());
            if let Some(old) = &w.row {
                record = format!(
                    "BEGIN;\n{record};\n{};\nCOMMIT;",
                    ctx.history.mark_rolled_back(
                        &old.id,
                        &format!(
                            "retried by run {}, which failed too (row {id})",
                            opts.run_id
                        )
                    )
                );
            }
            record_failure(target, ctx, failure, Some(record)).await
        }
    }
}

async fn record_failure(
    target: &mut dyn Target,
    ctx: &Context<'_>,
    mut failure: MigrationFailure,
    record: Option<String>,
) -> Result<()> {
    if let Some(sql) = record {
        if let Err(e) = target.execute(&sql).await {
            failure.outcome.push_str(&format!(
                " Recording the failure in {} also failed ({}).",
                ctx.history.name(),
                match e {
                    ExecError::Sql(s) => format_sql_error(&s),
                    ExecError::Connection(m) => m,
                }
            ));
        }
    }
    Err(Error::Migration(Box::new(failure)))
}

/// Whether replaying a failed migration to find its failing statement is harmless: not after
/// timeouts, cancellations, lock or serialization conflicts and resource errors, where the
/// replay would wait, lock or load the server all over again.
fn worth_replaying(err: &SqlError) -> bool {
    let code = err.code.as_deref().unwrap_or("");
    !(code.starts_with("57")
        || code.starts_with("53")
        || code.starts_with("58")
        || code.starts_with("40")
        || code == "55P03"
        || code == "55006")
}

/// Finds which statement of a failed transactional migration raised an error the server gave
/// no position for, by replaying it statement by statement inside a transaction that is always
/// rolled back.
async fn locate_failing_statement(
    target: &mut dyn Target,
    prepared: &Prepared<'_>,
) -> Option<usize> {
    target.execute("BEGIN").await.ok()?;
    let mut failing = None;
    for i in 0..prepared.statements.len() {
        let (_, text) = prepared.text(i..i + 1);
        match target.execute(text).await {
            Ok(()) => {}
            Err(ExecError::Sql(_)) => {
                failing = Some(i);
                break;
            }
            Err(ExecError::Connection(_)) => return None,
        }
    }
    if failing.is_none() {
        let _ = target.execute("ROLLBACK").await;
    }
    failing
}

async fn apply_statementwise(
    target: &mut dyn Target,
    ctx: &Context<'_>,
    opts: &ApplyOptions,
    w: &Work<'_>,
    more_follow: bool,
    observer: &dyn Observer,
) -> Result<()> {
    let p = &w.prepared;
    let m = p.migration;
    let total = p.statements.len();
    let history = &ctx.history;
    let mut done = w.resume_at;
    let progress_at = |done: usize, running: Option<usize>| Progress {
        done,
        total,
        running,
        prefix: p.prefix_checksum(done),
    };
    let run = |e: ExecError| match e {
        ExecError::Connection(msg) => connection_lost(ctx, &m.name, msg),
        ExecError::Sql(s) => Error::database(
            format!("recording progress of `{}`", m.name),
            format_sql_error(&s),
        ),
    };
    let mut marked_running = None;
    let id = match &w.row {
        // A failed attempt keeps its row and error: the retry continues in a new row that
        // carries the committed statements' progress, and the old one is marked rolled back.
        Some(row) if row.state() == RowState::Failed => {
            let id = row_id_for(&opts.run_id);
            let carried =
                history.insert_started(&new_row(&id, m, &opts.run_id), &progress_at(done, None));
            let superseded = history.mark_rolled_back(
                &row.id,
                &format!("retried by run {}, continuing in row {id}", opts.run_id),
            );
            target
                .execute(&format!("BEGIN;\n{carried};\n{superseded};\nCOMMIT;"))
                .await
                .map_err(run)?;
            id
        }
        Some(row) => {
            let running = row.progress.as_ref().and_then(|pr| pr.running);
            if let Some(index) = running.filter(|r| *r == done) {
                let effect = p.statements[index].effect.clone();
                let state = match &effect {
                    Some(effect) => target.effect_state(effect).await?,
                    None => EffectState::Unknown,
                };
                match state {
                    EffectState::Done => {
                        done += 1;
                        target
                            .execute(&history.update_progress(
                                &row.id,
                                &progress_at(done, None),
                                None,
                            ))
                            .await
                            .map_err(run)?;
                        observer.note(&format!(
                            "{}: statement {} had completed before the interruption; continuing after it",
                            m.name,
                            index + 1
                        ));
                    }
                    EffectState::NotDone => {}
                    EffectState::Unknown => {
                        return Err(Error::Guard(format!(
                            "migration `{}` was interrupted while statement {} (line {}) ran outside a transaction, \
                             and sluice cannot tell from the catalog whether it completed. Check by hand; if it did, \
                             finish the remaining statements by hand and run {}; if it did not, undo statements \
                             1-{} and run {}",
                            m.name,
                            index + 1,
                            p.statement_line(index),
                            ctx.resolve_hint("applied", &m.name),
                            index,
                            ctx.resolve_hint("rolled-back", &m.name)
                        )));
                    }
                }
            }
            row.id.clone()
        }
        None => {
            let id = row_id_for(&opts.run_id);
            // A file that starts with a statement outside any transaction (the usual lone
            // CREATE INDEX CONCURRENTLY) is marked as running it in the same write that
            // creates its row: one commit fewer per such migration.
            if let Some(Unit::Bare(0)) = p.units.first() {
                marked_running = Some(0);
            }
            target
                .execute(&history.intent(&history.insert_started(
                    &new_row(&id, m, &opts.run_id),
                    &progress_at(0, marked_running),
                )))
                .await
                .map_err(run)?;
            id
        }
    };
    let sql = m.up.sql();
    let mut finished = false;
    for unit in &p.units {
        let range = unit.statements();
        if range.end <= done {
            continue;
        }
        let from = range.start.max(done);
        observer.statement_started(&m.name, from, total);
        testhook::pause(&format!("before-statement:{}:{}", m.name, from));
        let last = range.end == total;
        let after = if last {
            history.finish(&id, &m.checksum, total)
        } else {
            history.update_progress(&id, &progress_at(range.end, None), None)
        };
        let (offset, body) = p.text(from..range.end);
        let (prefix, text, extra) = match unit {
            Unit::Run(_) => {
                let prefix = "BEGIN;\n";
                (
                    prefix,
                    format!("{prefix}{body}\n;\n{after};\nCOMMIT;"),
                    None,
                )
            }
            Unit::Block {
                rolls_back: false, ..
            } => {
                let (_, inner) = p.text(from..range.end - 1);
                let (_, commit) = p.text(range.end - 1..range.end);
                ("", format!("{inner}\n;\n{after};\n{commit}"), None)
            }
            Unit::Block {
                rolls_back: true, ..
            } => ("", body.to_string(), Some(after.clone())),
            Unit::Bare(index) => {
                if marked_running != Some(*index) {
                    target
                        .execute(&history.intent(&history.update_progress(
                            &id,
                            &progress_at(done, Some(*index)),
                            None,
                        )))
                        .await
                        .map_err(run)?;
                }
                testhook::pause(&format!("before-bare:{}:{}", m.name, index));
                // The record that a bare statement finished may skip the WAL flush when the
                // catalog can tell after a server crash whether the statement took effect and
                // a later synchronous commit of this apply will flush it anyway.
                let detectable = p.statements[*index].effect.is_some();
                let after = if detectable && (more_follow || !last) {
                    history.intent(&after)
                } else {
                    after.clone()
                };
                ("", body.to_string(), Some(after))
            }
        };
        let executed = match unit {
            Unit::Bare(index) => {
                let report = |blocker: &Blocker| {
                    let message = blocked_message(ctx, p, *index, blocker);
                    tracing::info!("{message}");
                    observer.note(&message);
                };
                target.execute_watched(&text, &report).await
            }
            _ => target.execute(&text).await,
        };
        match executed {
            Ok(()) => {}
            Err(ExecError::Connection(msg)) => return Err(connection_lost(ctx, &m.name, msg)),
            Err(ExecError::Sql(err)) => {
                let location = err
                    .position
                    .and_then(|pos| file_offset_of(&text, prefix.len(), offset, body.len(), pos))
                    .map(|o| lexer::line_col(sql, o));
                let failed_at = match unit {
                    Unit::Bare(i) => *i,
                    _ => from,
                };
                let failure = MigrationFailure {
                    migration: m.name.clone(),
                    file: m.up.path.display().to_string(),
                    line: Some(location.map(|l| l.0).unwrap_or_else(|| p.statement_line(failed_at))),
                    column: location.map(|l| l.1),
                    statement: Some(failed_at + 1),
                    sqlstate: err.code.clone(),
                    message: err.message.clone(),
                    detail: err.detail.clone(),
                    hint: err.hint.clone(),
                    outcome: format!(
                        "{}; the failing step was rolled back where a transaction allowed it. Nothing \
                         after `{}` ran.",
                        committed_statements(done, total),
                        m.name
                    ),
                    next: format!(
                        "fix the cause, then continue at statement {}: sluice apply --env {} --resume",
                        done + 1,
                        ctx.env.name
                    ),
                };
                let record = history.update_progress(
                    &id,
                    &progress_at(done, None),
                    Some(&failure.log_text()),
                );
                return record_failure(target, ctx, failure, Some(record)).await;
            }
        }
        if let Some(extra) = extra {
            testhook::pause(&format!("after-bare:{}:{}", m.name, from));
            target.execute(&extra).await.map_err(run)?;
        }
        done = range.end;
        finished = last;
    }
    if !finished {
        target
            .execute(&history.finish(&id, &m.checksum, total))
            .await
            .map_err(run)?;
    }
    Ok(())
}

/// What to tell the user about a session that statement `index` (run outside a transaction)
/// waits for, and about what sluice did when that session waits for sluice's own lock.
fn blocked_message(ctx: &Context<'_>, p: &Prepared<'_>, index: usize, blocker: &Blocker) -> String {
    let what = match p.statements.get(index).map(|s| &s.kind) {
        Some(StatementKind::NoTransaction(construct)) => (*construct).to_string(),
        _ => "the statement".to_string(),
    };
    let at = format!(
        "{what} in `{}` (statement {}, line {})",
        p.migration.name,
        index + 1,
        p.statement_line(index)
    );
    let limit = if ctx.env.lock_timeout.is_zero() {
        "without limit, as lock_timeout is 0".to_string()
    } else {
        format!(
            "at most lock_timeout, {}",
            humantime::format_duration(ctx.env.lock_timeout)
        )
    };
    let pid = blocker.pid;
    match &blocker.kind {
        BlockerKind::Session => format!(
            "{at} waits for {}: it goes on when that session's transaction ends (it waits {limit})",
            blocker.description
        ),
        BlockerKind::LockWaiterCancelled { key } => format!(
            "{at} waits for {}, which is itself waiting for the migration lock {key} that this apply \
             holds (another deploy, such as `prisma migrate deploy`). Neither could ever finish and \
             PostgreSQL cannot see that cycle, so sluice cancelled pid {pid}'s wait for the lock: the \
             deploy behind it fails without having changed anything (if it had already given up, \
             only its leftover server session ends); run it again after this apply. The statement \
             goes on.",
            blocker.description
        ),
        BlockerKind::LockWaiterNotCancelled { key, why } => format!(
            "{at} waits for {}, which is itself waiting for the migration lock {key} that this apply \
             holds (another deploy, such as `prisma migrate deploy`): neither can finish. sluice could \
             not cancel its wait for the lock ({why}); end it with SELECT pg_cancel_backend({pid}), \
             or the statement waits {limit}",
            blocker.description
        ),
    }
}

/// What `sluice resolve` records.
#[derive(Debug, Clone)]
pub enum Resolution {
    /// The migration is applied (done by hand, or the edited file is accepted as is).
    Applied(String),
    /// The failed attempt is rolled back (or a missing migration was removed on purpose).
    RolledBack(String),
}

/// Records a person's decision about a migration in the history table, with who and why.
pub async fn resolve(
    target: &mut dyn Target,
    ctx: &Context<'_>,
    resolution: &Resolution,
    actor: &str,
    reason: &str,
) -> Result<String> {
    target
        .lock(lock_key(ctx.history.mode), ctx.env.lock_timeout)
        .await?;
    let result = resolve_locked(target, ctx, resolution, actor, reason).await;
    let unlocked = target.unlock().await;
    let message = result?;
    unlocked?;
    Ok(message)
}

async fn resolve_locked(
    target: &mut dyn Target,
    ctx: &Context<'_>,
    resolution: &Resolution,
    actor: &str,
    reason: &str,
) -> Result<String> {
    ensure_history_table(target, &ctx.history).await?;
    let status = status(target, ctx).await?;
    let now = chrono::Utc::now().to_rfc3339();
    let (name, flag) = match resolution {
        Resolution::Applied(n) => (n, "applied"),
        Resolution::RolledBack(n) => (n, "rolled back"),
    };
    let note = format!("resolved as {flag} by {actor} at {now}: {reason}");
    let entry = status.entries.iter().find(|e| &e.name == name);
    let Some(entry) = entry else {
        return Err(Error::Usage(format!(
            "`{name}` is neither in {} nor recorded on `{}`",
            ctx.set.dir.display(),
            ctx.env.name
        )));
    };
    let mut sql = vec!["BEGIN".to_string()];
    match (resolution, entry.state) {
        (Resolution::Applied(_), State::Pending | State::Failed | State::Interrupted | State::Edited) => {
            let Some(migration) = ctx.set.get(name) else {
                return Err(Error::Usage(format!("`{name}` is not in {}", ctx.set.dir.display())));
            };
            if let Some(row) = &entry.row {
                sql.push(ctx.history.mark_rolled_back(&row.id, &format!("superseded: {note}")));
            }
            let id = uuid::Uuid::new_v4().to_string();
            sql.push(ctx.history.insert_resolved(&new_row(&id, migration, "resolve"), &note));
        }
        (Resolution::RolledBack(_), State::Failed | State::Interrupted | State::Missing) => {
            let Some(row) = &entry.row else {
                return Err(Error::Usage(format!("`{name}` has no history row to roll back")));
            };
            if entry.state == State::Missing {
                let all: Vec<HistoryRow> = target.read_history(&ctx.history).await?.unwrap_or_default();
                for r in all.iter().filter(|r| &r.migration_name == name && r.rolled_back_at.is_none()) {
                    sql.push(ctx.history.mark_rolled_back(&r.id, &note));
                }
            } else {
                sql.push(ctx.history.mark_rolled_back(&row.id, &note));
            }
        }
        (Resolution::Applied(_), State::Applied) => {
            return Err(Error::Usage(format!("`{name}` is already applied on `{}`; nothing to resolve", ctx.env.name)))
        }
        (Resolution::Applied(_), State::Missing) => {
            return Err(Error::Usage(format!(
                "`{name}` is not in {}; only migrations in the directory can be marked applied",
                ctx.set.dir.display()
            )))
        }
        (Resolution::RolledBack(_), state) => {
            return Err(Error::Usage(format!(
                "`{name}` is {} on `{}`; only a failed or interrupted migration (or one missing from the directory) \
                 can be marked rolled back. To undo an applied migration, write a new migration.",
                match state {
                    State::Pending => "not applied",
                    _ => "applied",
                },
                ctx.env.name
            )))
        }
    }
    sql.push("COMMIT".into());
    let text = sql.join(";\n");
    target
        .execute(&text)
        .await
        .map_err(|e| exec_to_error(&format!("recording the resolution of `{name}`"), e))?;
    Ok(format!("recorded on `{}`: `{name}` {note}", ctx.env.name))
}
