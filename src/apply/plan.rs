//! Turning one migration file into the units sluice sends: the whole file in one transaction
//! when the SQL allows it, otherwise statement groups that each commit with their progress.

use std::ops::Range;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
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

impl<'m> Prepared<'m> {
    /// Lexes and classifies a migration and groups its statements into units.
    pub fn new(migration: &'m Migration) -> Result<Prepared<'m>> {
        let sql = migration.up.sql();
        let pieces = lexer::split(sql);
        let classification = classify::classify(sql, &pieces);
        let statements: Vec<Stmt> = pieces
            .iter()
            .filter(|p| !p.is_empty())
            .map(|p| Stmt {
                range: p.start..p.start + p.text.len(),
                kind: classify::statement_kind(p),
                effect: classify::effect(p),
            })
            .collect();
        let units = match classification.mode {
            TxMode::Transactional => Vec::new(),
            TxMode::SelfTransacting | TxMode::NonTransactional => {
                group_units(migration, sql, &statements)?
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
        let sql = self.migration.up.sql();
        let Some(stmt) = self.statements.get(index) else {
            return 1;
        };
        let text = &sql[stmt.range.clone()];
        let offset = lexer::tokenize(text)
            .iter()
            .find(|t| {
                !matches!(
                    t.kind,
                    lexer::TokenKind::Whitespace
                        | lexer::TokenKind::LineComment
                        | lexer::TokenKind::BlockComment
                )
            })
            .map(|t| t.start)
            .unwrap_or(0);
        lexer::line_col(sql, stmt.range.start + offset).0
    }
}

fn group_units(migration: &Migration, sql: &str, statements: &[Stmt]) -> Result<Vec<Unit>> {
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
                    let line = lexer::line_col(sql, statements[i].range.start).0;
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
