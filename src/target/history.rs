//! The history table: Prisma's `_prisma_migrations` exactly, or sluice's `_sluice_migrations`
//! (the same columns plus the run, who applied, and statement progress as real columns).
//!
//! Every write is produced as SQL text with inlined literals so it can travel in the same round
//! trip, and the same transaction, as the migration it records.

use chrono::{DateTime, Utc};

use super::Engine;
use crate::config::HistoryMode;

/// Prisma's table name.
pub const PRISMA_TABLE: &str = "_prisma_migrations";
/// sluice's own table name.
pub const SLUICE_TABLE: &str = "_sluice_migrations";
const PROGRESS_TAG: &str = "sluice-progress:";
const NOTE_TAG: &str = "sluice-note:";

/// Statement progress of a migration applied statement by statement.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Progress {
    /// Statements committed so far.
    pub done: usize,
    /// Statements in the migration.
    pub total: usize,
    /// A statement that cannot run in a transaction and was started but not confirmed
    /// (0-based index); after a crash its effect must be checked before anything else.
    pub running: Option<usize>,
    /// SHA-256 of the text of the committed statements, so a resumed run can prove they are
    /// unchanged even when a later statement of the file was fixed.
    pub prefix: String,
}

/// One row of the history table, decoded the same way for both modes and engines.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HistoryRow {
    /// Row id (uuid v4 text).
    pub id: String,
    /// The migration's full name.
    pub migration_name: String,
    /// Checksum of the file when it was applied.
    pub checksum: String,
    /// When sluice (or Prisma) started it.
    pub started_at: Option<DateTime<Utc>>,
    /// Set only when it finished successfully.
    pub finished_at: Option<DateTime<Utc>>,
    /// Set when someone resolved it as rolled back; such rows are ignored.
    pub rolled_back_at: Option<DateTime<Utc>>,
    /// The stored error, without sluice's bookkeeping lines.
    pub error: Option<String>,
    /// Statement progress while unfinished (sluice's statement-by-statement apply only).
    pub progress: Option<Progress>,
    /// Notes sluice recorded on the row: who resolved it, and why.
    pub notes: Vec<String>,
    /// The run that applied it (sluice mode).
    pub run_id: Option<String>,
}

/// How a row stands, following Prisma's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowState {
    /// Finished: the migration is applied.
    Applied,
    /// Rolled back by a person: ignored, the migration counts as not applied.
    RolledBack,
    /// Failed with an error: blocks every later migration until resolved.
    Failed,
    /// sluice was interrupted mid-way (a crash); the next apply resumes it.
    Interrupted,
}

impl HistoryRow {
    /// Whether run `run_id` wrote this row: the `run_id` column in sluice mode, the run's mark
    /// in the row id in Prisma mode (see [`row_id_for`]). A run may only ever undo what it
    /// applied itself, never what another deployer applied meanwhile.
    pub fn written_by(&self, run_id: &str) -> bool {
        if let Some(owner) = &self.run_id {
            return owner == run_id;
        }
        run_mark(run_id).is_some_and(|mark| self.id.starts_with(&mark))
    }

    /// The row's state by Prisma's rules, refined with sluice's progress records.
    pub fn state(&self) -> RowState {
        if self.rolled_back_at.is_some() {
            RowState::RolledBack
        } else if self.finished_at.is_some() {
            RowState::Applied
        } else if self.error.is_none() && self.progress.is_some() {
            RowState::Interrupted
        } else {
            RowState::Failed
        }
    }
}

/// A row as read from the database, before sluice's bookkeeping is decoded.
#[derive(Debug, Clone, Default)]
pub struct RawRow {
    /// `id`.
    pub id: String,
    /// `migration_name`.
    pub migration_name: String,
    /// `checksum`.
    pub checksum: String,
    /// `started_at`.
    pub started_at: Option<DateTime<Utc>>,
    /// `finished_at`.
    pub finished_at: Option<DateTime<Utc>>,
    /// `rolled_back_at`.
    pub rolled_back_at: Option<DateTime<Utc>>,
    /// `logs`.
    pub logs: Option<String>,
    /// `applied_steps_count`.
    pub applied_steps_count: i64,
    /// sluice mode only: `statements_total`.
    pub statements_total: Option<i64>,
    /// sluice mode only: `running_statement`.
    pub running_statement: Option<i64>,
    /// sluice mode only: `prefix_checksum`.
    pub prefix_checksum: Option<String>,
    /// sluice mode only: `run_id`.
    pub run_id: Option<String>,
    /// sluice mode only: `notes`.
    pub notes: Option<String>,
}

/// The history table of one target: its mode and engine decide names, types and encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryTable {
    /// Prisma's table or sluice's.
    pub mode: HistoryMode,
    /// The engine, for types and timestamp expressions.
    pub engine: Engine,
}

/// The first 12 hex digits of a uuid run id, as they open a uuid's text (`xxxxxxxx-xxxx`);
/// `None` for a run id that is not a uuid.
fn run_mark(run_id: &str) -> Option<String> {
    let uuid = uuid::Uuid::parse_str(run_id).ok()?;
    let text = uuid.hyphenated().to_string();
    Some(text[..13].to_string())
}

/// A new history row id for run `run_id`: a uuid v4 in form whose first 12 hex digits are the
/// run's, so a row in Prisma's table (which has no column for the run) still says which run
/// wrote it, and Prisma still sees a uuid. The other 74 bits are random.
pub fn row_id_for(run_id: &str) -> String {
    let random = uuid::Uuid::new_v4();
    let Some(mark) = run_mark(run_id) else {
        return random.to_string();
    };
    let text = random.hyphenated().to_string();
    format!("{mark}{}", &text[13..])
}

/// Quotes a string as an SQL literal (standard_conforming_strings on; NUL cannot be stored).
pub fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\0', "").replace('\'', "''"))
}

fn opt_literal(value: Option<&str>) -> String {
    value.map(literal).unwrap_or_else(|| "NULL".into())
}

/// What a new history row says about itself.
#[derive(Debug, Clone)]
pub struct NewRow<'a> {
    /// uuid v4 text.
    pub id: &'a str,
    /// Full migration name.
    pub name: &'a str,
    /// Checksum of the file being applied.
    pub checksum: &'a str,
    /// Run id (recorded in sluice mode).
    pub run_id: &'a str,
}

impl HistoryTable {
    /// The table's name.
    pub fn name(&self) -> &'static str {
        match self.mode {
            HistoryMode::Prisma => PRISMA_TABLE,
            HistoryMode::Sluice => SLUICE_TABLE,
        }
    }

    fn quoted(&self) -> String {
        format!("\"{}\"", self.name())
    }

    fn now(&self) -> &'static str {
        match self.engine {
            Engine::Postgres => "now()",
            Engine::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
        }
    }

    fn clock(&self) -> &'static str {
        match self.engine {
            Engine::Postgres => "clock_timestamp()",
            Engine::Sqlite => self.now(),
        }
    }

    /// `CREATE TABLE IF NOT EXISTS` for the table: Prisma's exact definition in Prisma mode.
    pub fn create_sql(&self) -> String {
        let (text, ts, int, id, cs, nm) = match self.engine {
            Engine::Postgres => (
                "TEXT",
                "TIMESTAMPTZ",
                "INTEGER",
                "VARCHAR(36)",
                "VARCHAR(64)",
                "VARCHAR(255)",
            ),
            Engine::Sqlite => ("TEXT", "DATETIME", "INTEGER", "TEXT", "TEXT", "TEXT"),
        };
        let default_now = match self.engine {
            Engine::Postgres => "now()".to_string(),
            Engine::Sqlite => format!("({})", self.now()),
        };
        let steps = match self.engine {
            Engine::Postgres => "INTEGER",
            Engine::Sqlite => "INTEGER UNSIGNED",
        };
        let mut sql = format!(
            "CREATE TABLE IF NOT EXISTS {} (\n    \"id\" {id} PRIMARY KEY NOT NULL,\n    \"checksum\" {cs} NOT NULL,\n    \"finished_at\" {ts},\n    \"migration_name\" {nm} NOT NULL,\n    \"logs\" {text},\n    \"rolled_back_at\" {ts},\n    \"started_at\" {ts} NOT NULL DEFAULT {default_now},\n    \"applied_steps_count\" {steps} NOT NULL DEFAULT 0",
            self.quoted()
        );
        if self.mode == HistoryMode::Sluice {
            sql.push_str(&format!(
                ",\n    \"statements_total\" {int},\n    \"running_statement\" {int},\n    \"prefix_checksum\" {cs},\n    \"run_id\" {text},\n    \"notes\" {text}"
            ));
        }
        sql.push_str("\n)");
        sql
    }

    /// The SELECT that [`RawRow`] decodes: the same column order in both modes.
    pub fn select_sql(&self) -> String {
        let extras = match self.mode {
            HistoryMode::Sluice => "\"statements_total\", \"running_statement\", \"prefix_checksum\", \"run_id\", \"notes\"",
            HistoryMode::Prisma => "NULL, NULL, NULL, NULL, NULL",
        };
        format!(
            "SELECT \"id\", \"migration_name\", \"checksum\", \"started_at\", \"finished_at\", \"rolled_back_at\", \"logs\", \"applied_steps_count\", {extras} FROM {} ORDER BY \"started_at\", \"migration_name\"",
            self.quoted()
        )
    }

    /// Decodes a raw row: in Prisma mode sluice's bookkeeping travels in `logs` lines tagged
    /// `sluice-progress:` and `sluice-note:`, which Prisma shows as text and otherwise ignores.
    pub fn decode(&self, raw: RawRow) -> HistoryRow {
        let mut error_lines = Vec::new();
        let mut notes = Vec::new();
        let mut progress = None;
        for line in raw.logs.as_deref().unwrap_or_default().lines() {
            if let Some(rest) = line.strip_prefix(PROGRESS_TAG) {
                progress = parse_progress(rest);
            } else if let Some(rest) = line.strip_prefix(NOTE_TAG) {
                notes.push(rest.trim().to_string());
            } else {
                error_lines.push(line);
            }
        }
        if self.mode == HistoryMode::Sluice {
            if let Some(total) = raw.statements_total {
                progress = Some(Progress {
                    done: raw.applied_steps_count.max(0) as usize,
                    total: total.max(0) as usize,
                    running: raw.running_statement.map(|r| r.max(0) as usize),
                    prefix: raw.prefix_checksum.clone().unwrap_or_default(),
                });
            }
            notes.extend(
                raw.notes
                    .as_deref()
                    .unwrap_or_default()
                    .lines()
                    .map(str::to_string),
            );
        }
        let error = error_lines.join("\n").trim().to_string();
        HistoryRow {
            id: raw.id,
            migration_name: raw.migration_name,
            checksum: raw.checksum,
            started_at: raw.started_at,
            finished_at: raw.finished_at,
            rolled_back_at: raw.rolled_back_at,
            error: (!error.is_empty()).then_some(error),
            progress,
            notes,
            run_id: raw.run_id,
        }
    }

    /// A finished row, for a migration that committed in the same transaction.
    pub fn insert_finished(&self, row: &NewRow, steps: usize) -> String {
        self.insert(row, self.clock(), "NULL", steps, None)
    }

    /// An unfinished row marking the start of a statement-by-statement apply.
    pub fn insert_started(&self, row: &NewRow, progress: &Progress) -> String {
        self.insert(row, "NULL", "NULL", progress.done, Some(progress))
    }

    /// A failed row, for a transactional migration whose transaction was rolled back.
    pub fn insert_failed(&self, row: &NewRow, error: &str) -> String {
        self.insert(row, "NULL", &literal(error), 0, None)
    }

    /// A row for `sluice resolve --applied`: finished without running any SQL.
    pub fn insert_resolved(&self, row: &NewRow, note: &str) -> String {
        match self.mode {
            HistoryMode::Prisma => self.insert(
                row,
                self.now(),
                &literal(&format!("{NOTE_TAG} {note}")),
                0,
                None,
            ),
            HistoryMode::Sluice => format!(
                "INSERT INTO {} (\"id\", \"checksum\", \"finished_at\", \"migration_name\", \"logs\", \"started_at\", \"applied_steps_count\", \"run_id\", \"notes\") VALUES ({}, {}, {}, {}, NULL, {}, 0, {}, {})",
                self.quoted(),
                literal(row.id),
                literal(row.checksum),
                self.now(),
                literal(row.name),
                self.now(),
                literal(row.run_id),
                literal(note)
            ),
        }
    }

    fn insert(
        &self,
        row: &NewRow,
        finished: &str,
        logs: &str,
        steps: usize,
        progress: Option<&Progress>,
    ) -> String {
        match self.mode {
            HistoryMode::Prisma => {
                let logs = match progress {
                    Some(p) => literal(&encode_progress(p)),
                    None => logs.to_string(),
                };
                format!(
                    "INSERT INTO {} (\"id\", \"checksum\", \"finished_at\", \"migration_name\", \"logs\", \"started_at\", \"applied_steps_count\") VALUES ({}, {}, {finished}, {}, {logs}, {}, {steps})",
                    self.quoted(),
                    literal(row.id),
                    literal(row.checksum),
                    literal(row.name),
                    self.now(),
                )
            }
            HistoryMode::Sluice => {
                let (total, running, prefix) = match progress {
                    Some(p) => (
                        p.total.to_string(),
                        p.running
                            .map(|r| r.to_string())
                            .unwrap_or_else(|| "NULL".into()),
                        literal(&p.prefix),
                    ),
                    None => ("NULL".into(), "NULL".into(), "NULL".into()),
                };
                format!(
                    "INSERT INTO {} (\"id\", \"checksum\", \"finished_at\", \"migration_name\", \"logs\", \"started_at\", \"applied_steps_count\", \"statements_total\", \"running_statement\", \"prefix_checksum\", \"run_id\") VALUES ({}, {}, {finished}, {}, {logs}, {}, {steps}, {total}, {running}, {prefix}, {})",
                    self.quoted(),
                    literal(row.id),
                    literal(row.checksum),
                    literal(row.name),
                    self.now(),
                    literal(row.run_id),
                )
            }
        }
    }

    /// Wraps a write that only records intent (a row created before any work, a statement
    /// about to start) so the server does not wait for its WAL flush. This is safe: the work
    /// that follows commits synchronously, which flushes the intent with it; and if the server
    /// crashes before that, neither the intent nor the work exists, which is the state a
    /// rerun expects.
    pub fn intent(&self, write: &str) -> String {
        match self.engine {
            Engine::Postgres => {
                format!("BEGIN;\nSET LOCAL synchronous_commit = off;\n{write};\nCOMMIT;")
            }
            Engine::Sqlite => write.to_string(),
        }
    }

    /// Records statement progress on an unfinished row; `error` marks it failed.
    pub fn update_progress(&self, id: &str, progress: &Progress, error: Option<&str>) -> String {
        match self.mode {
            HistoryMode::Prisma => {
                let mut logs = String::new();
                if let Some(error) = error {
                    logs.push_str(error.trim_end());
                    logs.push('\n');
                }
                logs.push_str(&encode_progress(progress));
                format!(
                    "UPDATE {} SET \"applied_steps_count\" = {}, \"logs\" = {} WHERE \"id\" = {}",
                    self.quoted(),
                    progress.done,
                    literal(&logs),
                    literal(id)
                )
            }
            HistoryMode::Sluice => format!(
                "UPDATE {} SET \"applied_steps_count\" = {}, \"statements_total\" = {}, \"running_statement\" = {}, \"prefix_checksum\" = {}, \"logs\" = {} WHERE \"id\" = {}",
                self.quoted(),
                progress.done,
                progress.total,
                progress
                    .running
                    .map(|r| r.to_string())
                    .unwrap_or_else(|| "NULL".into()),
                literal(&progress.prefix),
                opt_literal(error),
                literal(id)
            ),
        }
    }

    /// Marks an unfinished row finished; the file's current checksum is recorded, since a
    /// resumed migration may have had a failing statement fixed.
    pub fn finish(&self, id: &str, checksum: &str, steps: usize) -> String {
        let extras = match self.mode {
            HistoryMode::Sluice => ", \"running_statement\" = NULL",
            HistoryMode::Prisma => "",
        };
        format!(
            "UPDATE {} SET \"finished_at\" = {}, \"applied_steps_count\" = {steps}, \"checksum\" = {}, \"logs\" = NULL{extras} WHERE \"id\" = {}",
            self.quoted(),
            self.clock(),
            literal(checksum),
            literal(id)
        )
    }

    /// Marks a failed row rolled back, keeping its error and adding who and why.
    pub fn mark_rolled_back(&self, id: &str, note: &str) -> String {
        let (column, separator) = match self.mode {
            HistoryMode::Prisma => ("logs", format!("\n{NOTE_TAG} ")),
            HistoryMode::Sluice => ("notes", "\n".to_string()),
        };
        let concat = match self.engine {
            Engine::Postgres | Engine::Sqlite => format!(
                "COALESCE(\"{column}\", '') || {} || {}",
                literal(&separator),
                literal(note)
            ),
        };
        format!(
            "UPDATE {} SET \"rolled_back_at\" = {}, \"{column}\" = {concat} WHERE \"id\" = {}",
            self.quoted(),
            self.now(),
            literal(id)
        )
    }
}

fn encode_progress(p: &Progress) -> String {
    let mut s = format!("{PROGRESS_TAG} done={} total={}", p.done, p.total);
    if let Some(r) = p.running {
        s.push_str(&format!(" running={r}"));
    }
    s.push_str(&format!(" prefix={}", p.prefix));
    s
}

fn parse_progress(text: &str) -> Option<Progress> {
    let mut done = None;
    let mut total = None;
    let mut running = None;
    let mut prefix = String::new();
    for part in text.split_whitespace() {
        let (key, value) = part.split_once('=')?;
        match key {
            "done" => done = value.parse().ok(),
            "total" => total = value.parse().ok(),
            "running" => running = value.parse().ok(),
            "prefix" => prefix = value.to_string(),
            _ => {}
        }
    }
    Some(Progress {
        done: done?,
        total: total?,
        running,
        prefix,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item02_a_row_says_which_run_wrote_it_in_both_modes() {
        let run = "0f8e3a2c-1b4d-4e5f-8a9b-0c1d2e3f4a5b";
        let other = "9a8b7c6d-1b4d-4e5f-8a9b-0c1d2e3f4a5b";
        let id = row_id_for(run);
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id} is a uuid");
        assert!(id.starts_with("0f8e3a2c-1b4d-"), "{id}");
        assert_ne!(row_id_for(run), id, "ids stay unique within a run");
        let prisma_row = |id: &str| HistoryRow {
            id: id.into(),
            migration_name: "m".into(),
            checksum: String::new(),
            started_at: None,
            finished_at: None,
            rolled_back_at: None,
            error: None,
            progress: None,
            notes: Vec::new(),
            run_id: None,
        };
        assert!(prisma_row(&id).written_by(run));
        assert!(!prisma_row(&id).written_by(other));
        assert!(!prisma_row(&uuid::Uuid::new_v4().to_string()).written_by(run));
        assert!(
            !prisma_row(&id).written_by("manual"),
            "a run id that is no uuid owns nothing"
        );
        let mut sluice_row = prisma_row(&uuid::Uuid::new_v4().to_string());
        sluice_row.run_id = Some(other.into());
        assert!(sluice_row.written_by(other) && !sluice_row.written_by(run));
    }

    #[test]
    fn literals_escape_quotes_and_drop_nul() {
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(literal("a\0b"), "'ab'");
    }

    #[test]
    fn prisma_logs_round_trip_progress_and_errors() {
        let table = HistoryTable {
            mode: HistoryMode::Prisma,
            engine: Engine::Postgres,
        };
        let progress = Progress {
            done: 2,
            total: 5,
            running: Some(2),
            prefix: "ab12".into(),
        };
        let logs = format!("boom\nDETAIL: x\n{}", encode_progress(&progress));
        let row = table.decode(RawRow {
            logs: Some(logs),
            applied_steps_count: 2,
            ..RawRow::default()
        });
        assert_eq!(row.progress, Some(progress));
        assert_eq!(row.error.as_deref(), Some("boom\nDETAIL: x"));
        assert_eq!(row.state(), RowState::Failed);
    }

    #[test]
    fn row_states_follow_prisma() {
        let table = HistoryTable {
            mode: HistoryMode::Prisma,
            engine: Engine::Postgres,
        };
        let t = Some(Utc::now());
        let state = |finished, rolled, logs: Option<&str>| {
            table
                .decode(RawRow {
                    finished_at: finished,
                    rolled_back_at: rolled,
                    logs: logs.map(String::from),
                    ..RawRow::default()
                })
                .state()
        };
        assert_eq!(state(t, None, None), RowState::Applied);
        assert_eq!(state(None, t, Some("err")), RowState::RolledBack);
        assert_eq!(state(None, None, Some("err")), RowState::Failed);
        assert_eq!(state(None, None, None), RowState::Failed);
        assert_eq!(
            state(
                None,
                None,
                Some("sluice-progress: done=1 total=3 prefix=00")
            ),
            RowState::Interrupted
        );
        assert_eq!(
            state(t, None, Some("sluice-note: resolved as applied by me: why")),
            RowState::Applied
        );
    }
}
