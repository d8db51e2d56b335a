//! Comparing the migrations directory with a target's history table: what is applied, pending,
//! failed, interrupted, edited since it ran, or applied but gone from the directory.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::migrations::MigrationSet;
use crate::target::history::RowState;
use crate::target::{HistoryRow, Progress};

/// Where one migration stands on one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Applied with the checksum the file has now.
    Applied,
    /// In the directory, not applied.
    Pending,
    /// Its last attempt failed; blocks everything after it until resolved.
    Failed,
    /// sluice was interrupted while applying it statement by statement; apply resumes it.
    Interrupted,
    /// Applied, but the file has changed since.
    Edited,
    /// Applied (or failed) on the target, but no longer in the directory.
    Missing,
}

/// One migration's line in a status report.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// Full name.
    pub name: String,
    /// Where it stands.
    pub state: State,
    /// Checksum of the file in the directory, if it is there.
    pub file_checksum: Option<String>,
    /// Checksum recorded in the history, if it ran.
    pub recorded_checksum: Option<String>,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// The stored error of a failed attempt.
    pub error: Option<String>,
    /// Statement progress of an unfinished statement-by-statement apply.
    pub progress: Option<Progress>,
    /// The history row this entry stands on, if any.
    #[serde(skip)]
    pub row: Option<HistoryRow>,
    /// A pending migration that sorts before one already applied (a merged branch).
    pub out_of_order: bool,
}

/// A target's whole status.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Whether the history table exists yet.
    pub history_table_exists: bool,
    /// Directory order first, then migrations missing from the directory.
    pub entries: Vec<Entry>,
}

impl Status {
    /// True when every migration is applied and nothing is wrong.
    pub fn is_up_to_date(&self) -> bool {
        self.entries.iter().all(|e| e.state == State::Applied)
    }

    /// Entries in a given state.
    pub fn with_state(&self, state: State) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(move |e| e.state == state)
    }

    /// Counts per state, for summaries.
    pub fn count(&self, state: State) -> usize {
        self.with_state(state).count()
    }
}

/// Computes the status of `set` against `history` (rows in any order; `None` = no table yet).
pub fn compute(set: &MigrationSet, history: Option<&[HistoryRow]>) -> Status {
    use std::collections::BTreeMap;
    let rows = history.unwrap_or_default();
    let mut by_name: BTreeMap<&str, Vec<&HistoryRow>> = BTreeMap::new();
    for row in rows {
        if row.state() != RowState::RolledBack {
            by_name
                .entry(row.migration_name.as_str())
                .or_default()
                .push(row);
        }
    }
    let mut entries = Vec::with_capacity(set.migrations.len());
    let mut last_applied: Option<&str> = None;
    for m in &set.migrations {
        let mut entry = Entry {
            name: m.name.clone(),
            state: State::Pending,
            file_checksum: Some(m.checksum.clone()),
            recorded_checksum: None,
            finished_at: None,
            error: None,
            progress: None,
            row: None,
            out_of_order: false,
        };
        if let Some(rows) = by_name.get(m.name.as_str()) {
            let applied: Vec<&&HistoryRow> = rows
                .iter()
                .filter(|r| r.state() == RowState::Applied)
                .collect();
            let unfinished = rows
                .iter()
                .rev()
                .find(|r| matches!(r.state(), RowState::Failed | RowState::Interrupted));
            if let Some(row) = applied.iter().find(|r| m.checksum_matches(&r.checksum)) {
                entry.state = State::Applied;
                entry.finished_at = row.finished_at;
                entry.recorded_checksum = Some(row.checksum.clone());
                entry.row = Some((**row).clone());
            } else if let Some(row) = applied.last() {
                entry.state = State::Edited;
                entry.finished_at = row.finished_at;
                entry.recorded_checksum = Some(row.checksum.clone());
                entry.row = Some((**row).clone());
            } else if let Some(row) = unfinished {
                entry.state = match row.state() {
                    RowState::Interrupted => State::Interrupted,
                    _ => State::Failed,
                };
                entry.recorded_checksum = Some(row.checksum.clone());
                entry.error = row.error.clone();
                entry.progress = row.progress.clone();
                entry.row = Some((*row).clone());
            }
        }
        if entry.state == State::Applied {
            last_applied = Some(&m.name);
        }
        entries.push(entry);
    }
    if let Some(last) = last_applied {
        for entry in entries.iter_mut() {
            if entry.state == State::Pending && entry.name.as_str() < last {
                entry.out_of_order = true;
            }
        }
    }
    for (name, rows) in by_name {
        if set.get(name).is_some() {
            continue;
        }
        let Some(row) = rows
            .iter()
            .find(|r| r.state() == RowState::Applied)
            .or_else(|| rows.last())
        else {
            continue;
        };
        entries.push(Entry {
            name: name.to_string(),
            state: State::Missing,
            file_checksum: None,
            recorded_checksum: Some(row.checksum.clone()),
            finished_at: row.finished_at,
            error: row.error.clone(),
            progress: row.progress.clone(),
            row: Some((*row).clone()),
            out_of_order: false,
        });
    }
    Status {
        history_table_exists: history.is_some(),
        entries,
    }
}
