//! Undoing migrations with their down scripts: each down script runs in one transaction
//! together with the history update that marks its migration rolled back, so a crash leaves
//! every migration either applied or undone and recorded, never in between.

use crate::error::{Error, Result};
use crate::migrations::classify::{classify, TxMode};
use crate::migrations::{lexer, MigrationSet};
use crate::target::{lock_key, Target};

use super::{exec_to_error, status, Context, State};

/// Why `names` cannot all be undone with down scripts, or `None` when they can: each needs a
/// `down.sql` that runs in a transaction (a down script with `CONCURRENTLY` or its own
/// `BEGIN`/`COMMIT` would leave nothing to record atomically).
pub fn down_scripts_problem(set: &MigrationSet, names: &[String]) -> Option<String> {
    for name in names {
        let Some(migration) = set.get(name) else {
            return Some(format!("`{name}` is no longer in {}", set.dir.display()));
        };
        let Some(down) = &migration.down else {
            return Some(format!("`{name}` has no down script"));
        };
        let statements = lexer::split(down.sql());
        let classification = classify(down.sql(), &statements);
        if classification.mode != TxMode::Transactional {
            return Some(format!(
                "the down script of `{name}` cannot run in one transaction ({})",
                classification.reason.unwrap_or_default()
            ));
        }
    }
    None
}

/// Undoes `names` (applied in this order) newest first, under the migration lock, touching
/// only history rows that run `owner` wrote: what another deployer applied is never undone. A
/// migration that is not applied (or not by `owner`) is skipped, so a rerun after an
/// interruption finishes the job; a failed attempt that committed nothing is only marked
/// rolled back; an applied one without a usable down script stops the undo with an error.
/// Returns the names undone.
pub async fn revert(
    target: &mut dyn Target,
    ctx: &Context<'_>,
    names: &[String],
    owner: &str,
    note: &str,
) -> Result<Vec<String>> {
    target
        .lock(lock_key(ctx.history.mode), ctx.env.lock_timeout)
        .await?;
    let result = revert_locked(target, ctx, names, owner, note).await;
    let unlocked = target.unlock().await;
    let undone = result?;
    unlocked?;
    Ok(undone)
}

async fn revert_locked(
    target: &mut dyn Target,
    ctx: &Context<'_>,
    names: &[String],
    owner: &str,
    note: &str,
) -> Result<Vec<String>> {
    let status = status(target, ctx).await?;
    let mut undone = Vec::new();
    for name in names.iter().rev() {
        let Some(entry) = status.entries.iter().find(|e| &e.name == name) else {
            continue;
        };
        let Some(row) = entry.row.as_ref().filter(|r| r.written_by(owner)) else {
            continue;
        };
        let sql = match entry.state {
            State::Pending => continue,
            State::Applied | State::Edited => {
                if let Some(problem) = down_scripts_problem(ctx.set, std::slice::from_ref(name)) {
                    return Err(Error::Guard(format!(
                        "cannot undo `{name}` on `{}` with its down script: {problem}",
                        ctx.env.name
                    )));
                }
                let down = ctx
                    .set
                    .get(name)
                    .and_then(|m| m.down.as_ref())
                    .map(|d| d.sql().to_string())
                    .unwrap_or_default();
                format!(
                    "BEGIN;\n{down}\n;\n{};\nCOMMIT;",
                    ctx.history.mark_rolled_back(&row.id, note)
                )
            }
            State::Failed if entry.progress.as_ref().is_none_or(|p| p.done == 0) => {
                ctx.history.mark_rolled_back(&row.id, note)
            }
            State::Failed | State::Interrupted => {
                return Err(Error::Guard(format!(
                "`{name}` is partly applied on `{}`; its down script assumes it ran completely. \
                     Restore the snapshot instead",
                ctx.env.name
            )))
            }
            State::Missing => continue,
        };
        target
            .execute(&sql)
            .await
            .map_err(|e| exec_to_error(&format!("undoing `{name}` with its down script"), e))?;
        undone.push(name.clone());
    }
    Ok(undone)
}
