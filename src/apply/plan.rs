//! Turning one migration file into the units sluice sends: the whole file in one transaction
//! when the SQL allows it, otherwise statement groups that each commit with their progress.

use std::ops::Range;

use sha2::{Digest, Sha256};

use crate::error::{Error, MigrationFailure, Result};
use crate::migrations::classify::{self, Classification, Effect, StatementKind, TxMode};
use crate::migrations::lexer;
use crate::migrations::Migration;

/// One non-empty statement of a migration, by position in the file.
#[derive(Debug, Clone)]
pub struct Stmt {
    /// Byte range in the script's SQL (leading comments included).
    pub range: Range<usize>,
    /// Transaction behaviour.
    pub kind: StatementKind,
    /// How to tell, after a crash, whether it took effect.
    pub effect: Option<Effect>,
    /// 1-based line of its first keyword (after leading comments).
    pub line: usize,
}

/// What one round trip sends for a statement-by-statement migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unit {
    /// The file's own `BEGIN` … `COMMIT`/`ROLLBACK` block, statements `range` (both ends
    /// included); sluice's progress update goes in just before the block's `COMMIT`.
    Block {
        /// Statement indexes, from the `BEGIN` to the closing statement.
        range: Range<usize>,
        /// Whether the block ends in `ROLLBACK` (progress then commits on its own).
        rolls_back: bool,
    },
    /// Consecutive statements that may share a transaction, wrapped by sluice.
    Run(Range<usize>),
    /// A statement that cannot run inside a transaction block.
    Bare(usize),
}

impl Unit {
    /// The statements the unit covers.
    pub fn statements(&self) -> Range<usize> {
        match self {
            Unit::Block { range, .. } | Unit::Run(range) => range.clone(),
            Unit::Bare(i) => *i..*i + 1,
        }
    }
}

/// A migration ready to apply: its statements, its transaction mode and its units.
#[derive(Debug, Clone)]
pub struct Prepared<'m> {
    /// The migration.
    pub migration: &'m Migration,
    /// How it must be applied, and why.
    pub classification: Classification,
    /// Its non-empty statements.
    pub statements: Vec<Stmt>,
    /// Units for statement-by-statement modes (empty for transactional migrations).
    pub units: Vec<Unit>,
}

/// Refuses, before anything is sent, a file no server would take: a string, quoted name,
/// dollar quote or comment that never closes (the server would report it against whatever
/// sluice sends after the file, its own history row) or a NUL byte (which the wire protocol
/// cannot carry). The error names the migration, the file, and where the trouble starts.
fn check_text(migration: &Migration) -> Result<()> {
    let sql = migration.up.sql();
    let fail = |offset: usize, message: String| {
        let (line, column) = lexer::line_col(sql, offset);
        Err(Error::Migration(Box::new(MigrationFailure {
            migration: migration.name.clone(),
            file: migration.up.path.display().to_string(),
            line: Some(line),
            column: Some(column),
            statement: None,
            sqlstate: None,
            message,
            detail: None,
            hint: None,
            outcome: "Nothing was sent to the server.".into(),
            next: format!("fix {}, then apply again", migration.up.path.display()),
        })))
    };
    if let Some(offset) = sql.find('\0') {
        return fail(
            offset,
            "the file contains a NUL byte (\\0), which PostgreSQL cannot accept in SQL text; \
             is it a binary or UTF-16 file?"
                .into(),
        );
    }
    if let Some(open) = lexer::tokenize(sql).into_iter().find(|t| !t.terminated) {
        let what = match open.kind {
            lexer::TokenKind::StringLiteral => "a quoted string (')",
            lexer::TokenKind::QuotedIdent => "a quoted identifier (\")",
            lexer::TokenKind::DollarString => "a dollar-quoted string ($$)",
            lexer::TokenKind::BlockComment => "a block comment (/*)",
            _ => "a quoted construct",
        };
        return fail(
            open.start,
            format!("{what} opened here is never closed; the rest of the file would be read as part of it"),
        );
    }
    Ok(())
}

impl<'m> Prepared<'m> {
    /// Lexes and classifies a migration and groups its statements into units.
    pub fn new(migration: &'m Migration) -> Result<Prepared<'m>> {
        let sql = migration.up.sql();
        check_text(migration)?;
        let pieces = lexer::split(sql);
        let classification = classify::classify(sql, &pieces);
        let statements: Vec<Stmt> = pieces
            .iter()
            .filter(|p| !p.is_empty())
            .map(|p| Stmt {
                range: p.start..p.start + p.text.len(),
                kind: classify::statement_kind(p),
                effect: classify::effect(p),
                line: p.first_line(sql),
            })
            .collect();
        let units = match classification.mode {
            TxMode::Transactional => Vec::new(),
            TxMode::SelfTransacting | TxMode::NonTransactional => {
                group_units(migration, &statements)?
            }
        };
        Ok(Prepared {
            migration,
            classification,
            statements,
            units,
        })
    }

    /// The transaction mode.
    pub fn mode(&self) -> TxMode {
        self.classification.mode
    }

    /// The SQL text of statements `range`, as one contiguous slice of the file.
    pub fn text(&self, range: Range<usize>) -> (usize, &'m str) {
        let sql = self.migration.up.sql();
        if range.is_empty() {
            return (0, "");
        }
        let start = self.statements[range.start].range.start;
        let end = self.statements[range.end - 1].range.end;
        (start, &sql[start..end])
    }

    /// SHA-256 of the first `count` statements' text: proves on resume that what already ran
    /// is what the file still says.
    pub fn prefix_checksum(&self, count: usize) -> String {
        let mut hasher = Sha256::new();
        for stmt in &self.statements[..count.min(self.statements.len())] {
            hasher.update(self.migration.up.sql()[stmt.range.clone()].as_bytes());
        }
        hex::encode(hasher.finalize())
    }

    /// The 1-based line where statement `index` starts (skipping leading comments).
    pub fn statement_line(&self, index: usize) -> usize {
        self.statements.get(index).map(|s| s.line).unwrap_or(1)
    }
}

fn group_units(migration: &Migration, statements: &[Stmt]) -> Result<Vec<Unit>> {
    let mut units = Vec::new();
    let mut i = 0;
    while i < statements.len() {
        match &statements[i].kind {
            StatementKind::Begin => {
                let close = statements[i + 1..]
                    .iter()
                    .position(|s| matches!(s.kind, StatementKind::Commit | StatementKind::Rollback))
                    .map(|p| p + i + 1);
                let Some(close) = close else {
                    let line = statements[i].line;
                    return Err(Error::Discovery(format!(
                        "{}:{line}: BEGIN without a matching COMMIT; the migration would leave a \
                         transaction open. Add COMMIT; at the end of the block.",
                        migration.up.path.display()
                    )));
                };
                units.push(Unit::Block {
                    range: i..close + 1,
                    rolls_back: statements[close].kind == StatementKind::Rollback,
                });
                i = close + 1;
            }
            StatementKind::NoTransaction(_) | StatementKind::Commit | StatementKind::Rollback => {
                units.push(Unit::Bare(i));
                i += 1;
            }
            StatementKind::Regular | StatementKind::Empty => {
                let start = i;
                while i < statements.len()
                    && matches!(
                        statements[i].kind,
                        StatementKind::Regular | StatementKind::Empty
                    )
                {
                    let barrier = matches!(statements[i].effect, Some(Effect::AddEnumValue { .. }));
                    i += 1;
                    if barrier {
                        break;
                    }
                }
                units.push(Unit::Run(start..i));
            }
        }
    }
    Ok(units)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migrations::discover;

    fn prepared_units(sql: &str) -> Result<Vec<Unit>> {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("1_m.sql"), sql).unwrap();
        let set = discover(tmp.path()).unwrap();
        Prepared::new(&set.migrations[0]).map(|p| p.units)
    }

    #[test]
    fn transactional_files_are_one_unit_sent_whole() {
        assert_eq!(
            prepared_units("CREATE TABLE a (id int);\nSELECT 1;").unwrap(),
            []
        );
    }

    #[test]
    fn own_blocks_runs_and_bare_statements_become_units() {
        let units = prepared_units(
            "CREATE TABLE a (id int);\nINSERT INTO a VALUES (1);\n\
             CREATE INDEX CONCURRENTLY a_idx ON a (id);\n\
             BEGIN;\nUPDATE a SET id = 2;\nCOMMIT;\n\
             BEGIN;\nDELETE FROM a;\nROLLBACK;\n\
             ALTER TYPE mood ADD VALUE 'x';\nSELECT 'x'::mood;\n",
        )
        .unwrap();
        assert_eq!(
            units,
            [
                Unit::Run(0..2),
                Unit::Bare(2),
                Unit::Block {
                    range: 3..6,
                    rolls_back: false
                },
                Unit::Block {
                    range: 6..9,
                    rolls_back: true
                },
                Unit::Run(9..10),
                Unit::Run(10..11),
            ]
        );
    }

    #[test]
    fn a_begin_without_commit_is_refused_with_its_line() {
        let err = prepared_units("SELECT 1;\nBEGIN;\nCREATE INDEX CONCURRENTLY i ON a (id);\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("1_m.sql:2: BEGIN without a matching COMMIT"),
            "{err}"
        );
    }

    #[test]
    fn prefix_checksums_cover_exactly_the_committed_statements() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("1_a.sql"), "SELECT 1;\nVACUUM;\nSELECT 2;").unwrap();
        std::fs::write(tmp.path().join("2_b.sql"), "SELECT 1;\nVACUUM;\nSELECT 3;").unwrap();
        let set = discover(tmp.path()).unwrap();
        let a = Prepared::new(&set.migrations[0]).unwrap();
        let b = Prepared::new(&set.migrations[1]).unwrap();
        assert_eq!(a.prefix_checksum(2), b.prefix_checksum(2));
        assert_ne!(a.prefix_checksum(3), b.prefix_checksum(3));
        assert_eq!(a.statement_line(2), 3);
    }
}
