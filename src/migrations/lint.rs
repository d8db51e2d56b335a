//! Lint of pending migrations: flags statements that lose data, hold long
//! locks on tables that may already hold rows in prod, or break the code
//! that is still running while the migration is promoted.
//!
//! Works on the statements of the migration engine's own lexer
//! ([`super::lexer`]), so a keyword inside a string, comment, quoted
//! identifier or dollar-quoted body never triggers a rule, and line numbers
//! are the ones the runner reports. It recognises statement shapes, it does
//! not parse SQL: whatever it does not recognise it leaves alone (no finding,
//! never a panic).
//!
//! Rules are silenced per migration with a comment carrying a reason:
//! `-- sluice:allow <rule-id>[, <rule-id>...] -- <reason>` before a statement,
//! or `-- sluice:allow-file <rule-id> -- <reason>` anywhere in the file.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::lexer::{self, Statement, Token, TokenKind};

/// One lint rule. Ids are stable: policies (`lint = { block = [...] }`) and
/// silencing comments name rules by [`Rule::id`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    /// `DROP TABLE` of a table the migration did not create.
    DropTable,
    /// `ALTER TABLE … DROP [COLUMN] c`.
    DropColumn,
    /// An enum recreated (renamed away, defined again) with fewer labels.
    DropEnumValue,
    /// `DROP TYPE` / `DROP DOMAIN`.
    DropType,
    /// `ALTER TABLE … ALTER [COLUMN] c [SET DATA] TYPE …` on an existing table.
    ChangeColumnType,
    /// `ALTER TABLE … ALTER [COLUMN] c SET NOT NULL` on an existing table.
    SetNotNull,
    /// `ALTER TABLE … ADD [COLUMN] c … NOT NULL` without a default on an existing table.
    AddNotNullWithoutDefault,
    /// Renaming a table, column, view, type or enum value.
    Rename,
    /// `CREATE INDEX` without `CONCURRENTLY` on an existing table.
    IndexWithoutConcurrently,
    /// A foreign key added to an existing table without `NOT VALID`.
    ForeignKeyWithoutNotValid,
    /// `ALTER TYPE … ADD VALUE` inside a transaction where the server rejects it
    /// or the new value is used before commit.
    AddEnumValueInTransaction,
}

impl Rule {
    /// Every rule, in id order of the documentation, so callers can list and
    /// validate policy entries without repeating the set.
    pub const ALL: [Rule; 11] = [
        Rule::DropTable,
        Rule::DropColumn,
        Rule::DropEnumValue,
        Rule::DropType,
        Rule::ChangeColumnType,
        Rule::SetNotNull,
        Rule::AddNotNullWithoutDefault,
        Rule::Rename,
        Rule::IndexWithoutConcurrently,
        Rule::ForeignKeyWithoutNotValid,
        Rule::AddEnumValueInTransaction,
    ];

    /// The stable kebab-case id used in policies, silencing comments and JSON
    /// output, so none of them depends on the Rust variant name.
    pub fn id(self) -> &'static str {
        match self {
            Rule::DropTable => "drop-table",
            Rule::DropColumn => "drop-column",
            Rule::DropEnumValue => "drop-enum-value",
            Rule::DropType => "drop-type",
            Rule::ChangeColumnType => "change-column-type",
            Rule::SetNotNull => "set-not-null",
            Rule::AddNotNullWithoutDefault => "add-not-null-without-default",
            Rule::Rename => "rename",
            Rule::IndexWithoutConcurrently => "index-without-concurrently",
            Rule::ForeignKeyWithoutNotValid => "foreign-key-without-not-valid",
            Rule::AddEnumValueInTransaction => "add-enum-value-in-transaction",
        }
    }

    /// The rule with this id (exact, as [`Rule::id`] prints it); `None` for an
    /// unknown id, so a policy or comment naming one can be reported.
    pub fn from_id(id: &str) -> Option<Rule> {
        Rule::ALL.into_iter().find(|r| r.id() == id)
    }

    /// One line saying why the rule exists, appended to every finding so the
    /// reader knows what is at stake without opening the docs.
    pub fn explanation(self) -> &'static str {
        match self {
            Rule::DropTable => {
                "data loss: the rows are gone, and running code that still queries the table fails"
            }
            Rule::DropColumn => {
                "data loss, and running code that still reads or writes the column fails"
            }
            Rule::DropEnumValue => {
                "rows holding a dropped value make the migration fail, running code that still writes it breaks, and every table using the enum is rewritten under an ACCESS EXCLUSIVE lock"
            }
            Rule::DropType => {
                "running code and columns that still use the type break (CASCADE drops dependent columns: data loss)"
            }
            Rule::ChangeColumnType => {
                "takes an ACCESS EXCLUSIVE lock and usually rewrites the table and its indexes, and running code may break on the new type"
            }
            Rule::SetNotNull => {
                "takes an ACCESS EXCLUSIVE lock while the whole table is scanned, and fails if any row holds NULL"
            }
            Rule::AddNotNullWithoutDefault => {
                "fails on a table that has rows, and running code that inserts without the column breaks"
            }
            Rule::Rename => "running code that still uses the old name breaks",
            Rule::IndexWithoutConcurrently => {
                "blocks every write to the table for the whole index build; use CREATE INDEX CONCURRENTLY"
            }
            Rule::ForeignKeyWithoutNotValid => {
                "validation scans the table while writes to both tables are blocked; add it NOT VALID, then VALIDATE CONSTRAINT separately"
            }
            Rule::AddEnumValueInTransaction => {
                "PostgreSQL before 12 rejects ALTER TYPE … ADD VALUE in a transaction block, and no version lets the new value be used before commit"
            }
        }
    }
}

/// One problem found in a migration: what the user sees and what a policy
/// blocks or sends for approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The rule that fired (serialised as its id).
    pub rule: Rule,
    /// The migration's full name, as given to [`lint`].
    pub migration: String,
    /// 1-based line of the statement's first significant token.
    pub line: usize,
    /// The statement's first line, trimmed, at most 120 characters.
    pub statement: String,
    /// One line naming the object, then the rule's explanation.
    pub message: String,
}

/// A finding that a `sluice:allow` comment silenced, kept so reports can show
/// what was waived and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Silenced {
    /// The rule that would have fired (serialised as its id).
    pub rule: Rule,
    /// The migration's full name.
    pub migration: String,
    /// 1-based line of the silenced statement.
    pub line: usize,
    /// The reason written in the silencing comment.
    pub reason: String,
}

/// Everything one lint run found, in migration and statement order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LintReport {
    /// Findings that no comment silenced.
    pub findings: Vec<Finding>,
    /// Findings silenced by a `sluice:allow` comment, with its reason.
    pub silenced: Vec<Silenced>,
    /// Malformed silencing comments (no reason, unknown rule, nothing to
    /// silence) as `migration:line: what`; they silence nothing.
    pub problems: Vec<String>,
}

/// Options that depend on the target server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LintOptions {
    /// PostgreSQL major version of the target, when known: `ALTER TYPE … ADD
    /// VALUE` inside a transaction block is rejected before 12 (and the new
    /// value cannot be used in the same transaction on any version); `None` =
    /// assume the oldest (flag it).
    pub server_major: Option<u32>,
}

/// Lints migrations in order, so that what an earlier migration of the slice
/// creates is known to the later ones.
///
/// `migrations` = (full name, whole SQL text, runs_in_transaction) where the
/// bool says whether sluice will wrap the file in one transaction (the caller
/// knows from its classifier). Tables created by an earlier migration in the
/// slice, or earlier in the same migration, are "new" for the statements after
/// their creation; every other table is "existing" (it may already hold rows
/// in prod). Never panics, whatever the input.
pub fn lint(migrations: &[(&str, &str, bool)], options: LintOptions) -> LintReport {
    let mut report = LintReport::default();
    let mut slice = SliceState::default();
    for &(name, sql, in_transaction) in migrations {
        let m = MigrationLint {
            name,
            sql,
            in_transaction,
            options,
        };
        m.run(&mut slice, &mut report);
    }
    report
}

/// What earlier statements of the slice established.
#[derive(Default)]
struct SliceState {
    /// Keys of tables created in the slice (and not dropped since).
    new_tables: HashSet<String>,
    /// Enum labels by type key, when the slice defined the enum.
    enums: HashMap<String, Vec<String>>,
}

/// A name as written without quotes, plus the key PostgreSQL resolves it by
/// (unquoted names fold to lower case).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Name {
    shown: String,
    key: String,
}

/// One action of an `ALTER TABLE`.
#[derive(Debug)]
enum Action {
    DropColumn(Name),
    ChangeType(Name),
    SetNotNull(Name),
    AddColumn {
        column: Name,
        not_null_without_default: bool,
        references: bool,
    },
    AddForeignKey {
        constraint: Option<Name>,
        not_valid: bool,
    },
    RenameColumn(Name, Option<Name>),
    RenameTable(Option<Name>),
    Other,
}

/// What a type statement does beyond naming the type.
#[derive(Debug)]
enum TypeAction {
    AddValue(Option<String>),
    RenameTo(Name),
    RenameValue(Option<String>, Option<String>),
    RenameAttribute(Name),
    Other,
}

/// The statement shapes the rules care about.
#[derive(Debug)]
enum Parsed {
    CreateTable(Name),
    DropTables(Vec<Name>),
    AlterTable {
        table: Name,
        actions: Vec<Action>,
    },
    CreateIndex {
        index: Option<Name>,
        table: Name,
        concurrently: bool,
    },
    CreateEnum {
        name: Name,
        labels: Vec<String>,
    },
    CreateType(Name),
    CreateView(Name),
    AlterType {
        name: Name,
        domain: bool,
        action: TypeAction,
    },
    DropTypes {
        names: Vec<Name>,
        domain: bool,
    },
    RenameView {
        view: Name,
        column: Option<Name>,
        to: Option<Name>,
    },
    Other,
}

/// A finding before silencing, tied to the statement it is reported on.
struct Raw {
    stmt: usize,
    rule: Rule,
    message: String,
}

/// A parsed `sluice:allow` comment.
struct Allow {
    rules: Vec<Rule>,
    reason: String,
}

/// Lints one migration against the slice state.
struct MigrationLint<'a> {
    name: &'a str,
    sql: &'a str,
    in_transaction: bool,
    options: LintOptions,
}

impl MigrationLint<'_> {
    fn run(&self, slice: &mut SliceState, report: &mut LintReport) {
        let stmts = lexer::split(self.sql);
        let parsed: Vec<Parsed> = stmts.iter().map(parse_statement).collect();
        let raws = self.check(&stmts, &parsed, slice);
        let (stmt_allows, file_allows) = self.allows(&stmts, &mut report.problems);
        for raw in raws {
            let Some(stmt) = stmts.get(raw.stmt) else {
                continue;
            };
            let line = stmt.first_line(self.sql);
            let reason = file_allows
                .iter()
                .chain(stmt_allows.get(raw.stmt).into_iter().flatten())
                .find(|a| a.rules.contains(&raw.rule))
                .map(|a| a.reason.clone());
            match reason {
                Some(reason) => report.silenced.push(Silenced {
                    rule: raw.rule,
                    migration: self.name.to_string(),
                    line,
                    reason,
                }),
                None => report.findings.push(Finding {
                    rule: raw.rule,
                    migration: self.name.to_string(),
                    line,
                    statement: first_line_text(self.sql, stmt),
                    message: one_line(format!("{}: {}", raw.message, raw.rule.explanation())),
                }),
            }
        }
    }

    /// Runs the rules over the parsed statements; findings come back ordered
    /// by the statement they are reported on.
    fn check(&self, stmts: &[Statement], parsed: &[Parsed], slice: &mut SliceState) -> Vec<Raw> {
        let mut raws: Vec<Raw> = Vec::new();
        // Objects this migration created: dropping or renaming them is harmless.
        let mut tables_here: HashSet<String> = HashSet::new();
        let mut views_here: HashSet<String> = HashSet::new();
        // Types created here, with the statement that created them.
        let mut types_here: HashMap<String, usize> = HashMap::new();
        let recreate = find_enum_recreates(parsed);
        // Enum name -> labels before it was renamed away (None = unknown).
        let mut pending_recreate: HashMap<String, Option<Vec<String>>> = HashMap::new();

        for (i, p) in parsed.iter().enumerate() {
            let mut push = |stmt: usize, rule: Rule, message: String| {
                raws.push(Raw {
                    stmt,
                    rule,
                    message,
                })
            };
            match p {
                Parsed::CreateTable(t) => {
                    slice.new_tables.insert(t.key.clone());
                    tables_here.insert(t.key.clone());
                }
                Parsed::DropTables(names) => {
                    for t in names {
                        if !tables_here.remove(&t.key) {
                            push(i, Rule::DropTable, format!("drops table `{}`", t.shown));
                        }
                        slice.new_tables.remove(&t.key);
                    }
                }
                Parsed::AlterTable { table, actions } => {
                    let existing = !slice.new_tables.contains(&table.key);
                    let here = tables_here.contains(&table.key);
                    for a in actions {
                        match a {
                            Action::DropColumn(c) if !here => push(
                                i,
                                Rule::DropColumn,
                                format!("drops column `{}.{}`", table.shown, c.shown),
                            ),
                            Action::ChangeType(c) if existing => push(
                                i,
                                Rule::ChangeColumnType,
                                format!("changes the type of column `{}.{}`", table.shown, c.shown),
                            ),
                            Action::SetNotNull(c) if existing => push(
                                i,
                                Rule::SetNotNull,
                                format!("sets column `{}.{}` NOT NULL", table.shown, c.shown),
                            ),
                            Action::AddColumn {
                                column,
                                not_null_without_default,
                                references,
                            } if existing => {
                                if *not_null_without_default {
                                    push(
                                        i,
                                        Rule::AddNotNullWithoutDefault,
                                        format!(
                                            "adds NOT NULL column `{}.{}` without a default",
                                            table.shown, column.shown
                                        ),
                                    );
                                }
                                if *references {
                                    push(
                                        i,
                                        Rule::ForeignKeyWithoutNotValid,
                                        format!(
                                            "adds column `{}.{}` with a REFERENCES constraint (add the column, then the foreign key NOT VALID)",
                                            table.shown, column.shown
                                        ),
                                    );
                                }
                            }
                            Action::AddForeignKey {
                                constraint,
                                not_valid: false,
                            } if existing => {
                                let what = match constraint {
                                    Some(c) => format!("foreign key `{}`", c.shown),
                                    None => "a foreign key".to_string(),
                                };
                                push(
                                    i,
                                    Rule::ForeignKeyWithoutNotValid,
                                    format!("adds {what} to `{}` without NOT VALID", table.shown),
                                );
                            }
                            Action::RenameColumn(from, to) if !here => push(
                                i,
                                Rule::Rename,
                                format!(
                                    "renames column `{}.{}`{}",
                                    table.shown,
                                    from.shown,
                                    to_part(to.as_ref())
                                ),
                            ),
                            Action::RenameTable(to) => {
                                if !here {
                                    push(
                                        i,
                                        Rule::Rename,
                                        format!(
                                            "renames table `{}`{}",
                                            table.shown,
                                            to_part(to.as_ref())
                                        ),
                                    );
                                }
                                if let Some(to) = to {
                                    if slice.new_tables.remove(&table.key) {
                                        slice.new_tables.insert(to.key.clone());
                                    }
                                    if tables_here.remove(&table.key) {
                                        tables_here.insert(to.key.clone());
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
                Parsed::CreateIndex {
                    index,
                    table,
                    concurrently: false,
                } if !slice.new_tables.contains(&table.key) => {
                    let index = match index {
                        Some(n) => format!("index `{}`", n.shown),
                        None => "an index".to_string(),
                    };
                    push(
                        i,
                        Rule::IndexWithoutConcurrently,
                        format!(
                            "creates {index} on existing table `{}` without CONCURRENTLY",
                            table.shown
                        ),
                    );
                }
                Parsed::CreateEnum { name, labels } => {
                    types_here.insert(name.key.clone(), i);
                    slice.enums.insert(name.key.clone(), labels.clone());
                    if let Some(prev) = pending_recreate.remove(&name.key) {
                        if let Some(r) = recreate_finding(i, name, prev, labels) {
                            push(r.stmt, r.rule, r.message);
                        }
                    }
                }
                Parsed::CreateType(name) => {
                    types_here.insert(name.key.clone(), i);
                    slice.enums.remove(&name.key);
                }
                Parsed::CreateView(name) => {
                    views_here.insert(name.key.clone());
                }
                Parsed::AlterType {
                    name,
                    domain,
                    action,
                } => {
                    let here = types_here.contains_key(&name.key);
                    let kind = if *domain { "domain" } else { "type" };
                    match action {
                        TypeAction::AddValue(label) => {
                            if let (Some(label), Some(labels)) =
                                (label, slice.enums.get_mut(&name.key))
                            {
                                if !labels.contains(label) {
                                    labels.push(label.clone());
                                }
                            }
                            if let Some(message) =
                                self.add_value_problem(name, label.as_deref(), stmts, parsed, i)
                            {
                                push(i, Rule::AddEnumValueInTransaction, message);
                            }
                        }
                        TypeAction::RenameTo(to) => {
                            let labels = slice.enums.remove(&name.key);
                            if recreate.renames_away.contains(&i) {
                                pending_recreate.insert(name.key.clone(), labels.clone());
                            } else {
                                if let Some(prev) = pending_recreate.remove(&to.key) {
                                    // `ALTER TYPE x_new RENAME TO x` completes a recreate,
                                    // reported on the CREATE TYPE of `x_new` when it is here.
                                    let at = types_here.get(&name.key).copied().unwrap_or(i);
                                    // Unknown new labels: nothing to compare against.
                                    let prev = if labels.is_some() { prev } else { None };
                                    let new = labels.clone().unwrap_or_default();
                                    if let Some(r) = recreate_finding(at, to, prev, &new) {
                                        push(r.stmt, r.rule, r.message);
                                    }
                                }
                                if !here {
                                    push(
                                        i,
                                        Rule::Rename,
                                        format!(
                                            "renames {kind} `{}` to `{}`",
                                            name.shown, to.shown
                                        ),
                                    );
                                }
                            }
                            if let Some(labels) = labels {
                                slice.enums.insert(to.key.clone(), labels);
                            }
                            if let Some(at) = types_here.remove(&name.key) {
                                types_here.insert(to.key.clone(), at);
                            }
                        }
                        TypeAction::RenameValue(from, to) => {
                            if let (Some(from), Some(to), Some(labels)) =
                                (from, to, slice.enums.get_mut(&name.key))
                            {
                                for l in labels.iter_mut().filter(|l| *l == from) {
                                    l.clone_from(to);
                                }
                            }
                            if !here {
                                let from = from.as_deref().unwrap_or("?");
                                let to = match to {
                                    Some(t) => format!(" to '{t}'"),
                                    None => String::new(),
                                };
                                push(
                                    i,
                                    Rule::Rename,
                                    format!("renames value '{from}' of enum `{}`{to}", name.shown),
                                );
                            }
                        }
                        TypeAction::RenameAttribute(attr) if !here => push(
                            i,
                            Rule::Rename,
                            format!(
                                "renames attribute `{}` of type `{}`",
                                attr.shown, name.shown
                            ),
                        ),
                        _ => {}
                    }
                }
                Parsed::DropTypes { names, domain } => {
                    for t in names {
                        slice.enums.remove(&t.key);
                        let part_of_recreate = recreate
                            .old_names
                            .get(&t.key)
                            .is_some_and(|&renamed_at| renamed_at < i);
                        if types_here.remove(&t.key).is_some() || part_of_recreate {
                            continue;
                        }
                        let kind = if *domain { "domain" } else { "type" };
                        push(i, Rule::DropType, format!("drops {kind} `{}`", t.shown));
                    }
                }
                Parsed::RenameView { view, column, to } if !views_here.contains(&view.key) => {
                    let message = match column {
                        Some(c) => format!(
                            "renames column `{}.{}` of a view{}",
                            view.shown,
                            c.shown,
                            to_part(to.as_ref())
                        ),
                        None => format!("renames view `{}`{}", view.shown, to_part(to.as_ref())),
                    };
                    push(i, Rule::Rename, message);
                }
                _ => {}
            }
        }
        // A recreate reported on its CREATE TYPE may come after later findings.
        raws.sort_by_key(|r| r.stmt);
        raws
    }

    /// Why `ALTER TYPE name ADD VALUE 'label'` at statement `i` is a problem
    /// here, if it is.
    fn add_value_problem(
        &self,
        name: &Name,
        label: Option<&str>,
        stmts: &[Statement],
        parsed: &[Parsed],
        i: usize,
    ) -> Option<String> {
        if !self.in_transaction {
            return None;
        }
        let used_later = label.is_some_and(|l| label_used_after(stmts, parsed, i, l));
        let old_server = self.options.server_major.is_none_or(|v| v < 12);
        let value = label.map_or_else(|| "a value".to_string(), |l| format!("value '{l}'"));
        let what = format!("adds {value} to enum `{}` inside a transaction", name.shown);
        let server = match self.options.server_major {
            Some(v) => format!("PostgreSQL {v}"),
            None => "server version unknown, assumed before 12".to_string(),
        };
        match (old_server, used_later) {
            (true, true) => Some(format!(
                "{what} ({server}) and a later statement of this migration uses the new value"
            )),
            (true, false) => Some(format!("{what} ({server})")),
            (false, true) => Some(format!(
                "{what} and a later statement of this migration uses the new value before commit"
            )),
            (false, false) => None,
        }
    }

    /// Collects `sluice:allow` comments: per statement and for the whole
    /// file. Malformed ones go to `problems` and silence nothing.
    fn allows(
        &self,
        stmts: &[Statement],
        problems: &mut Vec<String>,
    ) -> (Vec<Vec<Allow>>, Vec<Allow>) {
        let mut per_stmt: Vec<Vec<Allow>> = Vec::with_capacity(stmts.len());
        let mut file: Vec<Allow> = Vec::new();
        for (k, stmt) in stmts.iter().enumerate() {
            let mut here: Vec<Allow> = Vec::new();
            let first_sig = stmt
                .significant()
                .find(|t| t.kind != TokenKind::Semicolon)
                .map(|t| t.start);
            for tok in stmt
                .tokens
                .iter()
                .filter(|t| matches!(t.kind, TokenKind::LineComment | TokenKind::BlockComment))
            {
                let Some(parsed) = parse_allow(tok) else {
                    continue;
                };
                let line = lexer::line_col(self.sql, tok.start).0;
                let problem = |what: &str| format!("{}:{line}: {what}", self.name);
                match parsed {
                    Err(what) => problems.push(problem(&what)),
                    Ok((true, allow)) => file.push(allow),
                    Ok((false, allow)) => {
                        // A comment before the first token, on the line where the
                        // previous statement ended, reads as belonging to that one.
                        let trailing = k > 0
                            && first_sig.is_some_and(|sig| tok.start < sig)
                            && !self
                                .sql
                                .get(stmt.start..tok.start)
                                .unwrap_or("\n")
                                .contains('\n');
                        if first_sig.is_none() {
                            problems.push(problem(
                                "`sluice:allow` is not followed by a statement, so it silences nothing",
                            ));
                        } else if trailing {
                            problems.push(problem(
                                "`sluice:allow` trails a statement on the same line; put it on its own line above the statement it silences",
                            ));
                        } else {
                            here.push(allow);
                        }
                    }
                }
            }
            per_stmt.push(here);
        }
        (per_stmt, file)
    }
}

/// ` to `x`` when the new name is known.
fn to_part(to: Option<&Name>) -> String {
    match to {
        Some(t) => format!(" to `{}`", t.shown),
        None => String::new(),
    }
}

/// The drop-enum-value finding for enum `name` recreated at statement `at`
/// with `labels`, given the labels before (`None` = unknown); none when no
/// label was lost.
fn recreate_finding(
    at: usize,
    name: &Name,
    prev: Option<Vec<String>>,
    labels: &[String],
) -> Option<Raw> {
    let message = match prev {
        None => format!("recreates enum `{}` (labels may be dropped)", name.shown),
        Some(prev) => {
            let missing: Vec<String> = prev
                .iter()
                .filter(|l| !labels.contains(l))
                .map(|l| format!("'{l}'"))
                .collect();
            if missing.is_empty() {
                return None;
            }
            format!(
                "recreates enum `{}` without {} {}",
                name.shown,
                if missing.len() == 1 {
                    "value"
                } else {
                    "values"
                },
                missing.join(", ")
            )
        }
    };
    Some(Raw {
        stmt: at,
        rule: Rule::DropEnumValue,
        message,
    })
}

/// Statements of the enum-recreate pattern in one migration.
#[derive(Default)]
struct Recreates {
    /// `ALTER TYPE x RENAME TO y` statements after which `x` is defined again.
    renames_away: HashSet<usize>,
    /// `y` (the renamed-away enum) -> the statement renaming it; its later
    /// `DROP TYPE` belongs to drop-enum-value, not drop-type.
    old_names: HashMap<String, usize>,
}

/// Finds `ALTER TYPE x RENAME TO y` followed, in the same migration, by a new
/// definition of `x` (`CREATE TYPE x AS ENUM` or `ALTER TYPE x_new RENAME TO
/// x`): how Prisma and hand-written migrations drop enum labels.
fn find_enum_recreates(parsed: &[Parsed]) -> Recreates {
    let mut out = Recreates::default();
    for (i, p) in parsed.iter().enumerate() {
        let Parsed::AlterType {
            name,
            domain: false,
            action: TypeAction::RenameTo(to),
        } = p
        else {
            continue;
        };
        if to.key == name.key {
            continue;
        }
        let redefined = parsed.iter().skip(i + 1).any(|q| match q {
            Parsed::CreateEnum { name: n, .. } => n.key == name.key,
            Parsed::AlterType {
                action: TypeAction::RenameTo(t),
                ..
            } => t.key == name.key,
            _ => false,
        });
        if redefined {
            out.renames_away.insert(i);
            out.old_names.insert(to.key.clone(), i);
        }
    }
    out
}

/// Whether a statement after `i` mentions `label` as a string literal (or
/// quoted inside a dollar-quoted body): the new enum value is used. Labels in
/// type definitions (`ADD VALUE 'x'` to another enum, `BEFORE 'x'`, `CREATE
/// TYPE … AS ENUM ('x')`) are not uses.
fn label_used_after(stmts: &[Statement], parsed: &[Parsed], i: usize, label: &str) -> bool {
    let quoted = format!("'{}'", label.replace('\'', "''"));
    let defines_types = |k: usize| {
        matches!(
            parsed.get(k),
            Some(Parsed::AlterType { .. } | Parsed::CreateEnum { .. })
        )
    };
    stmts.iter().enumerate().skip(i + 1).any(|(k, s)| {
        !defines_types(k)
            && s.significant().any(|t| match t.kind {
                TokenKind::StringLiteral => {
                    lexer::string_literal_value(t).as_deref() == Some(label)
                }
                TokenKind::DollarString => t.text.contains(&quoted),
                _ => false,
            })
    })
}

/// The statement's first line from its first significant token, trimmed and
/// cut to 120 characters.
fn first_line_text(sql: &str, stmt: &Statement) -> String {
    let start = stmt.significant().next().map_or(stmt.start, |t| t.start);
    let rest = sql.get(start..).unwrap_or("");
    let line = one_line(rest.lines().next().unwrap_or("").trim().to_string());
    if line.chars().count() <= 120 {
        line
    } else {
        let mut cut: String = line.chars().take(119).collect();
        cut.push('…');
        cut
    }
}

/// Escapes line breaks and other control characters (a quoted name or label
/// may hold them) so that the text stays on one line; tabs are kept.
fn one_line(s: String) -> String {
    let breaks = |c: char| c.is_control() && c != '\t';
    if !s.chars().any(breaks) {
        return s;
    }
    s.chars()
        .map(|c| {
            if breaks(c) {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Parses a comment token as a `sluice:allow` directive: `None` if it is not
/// one, `Err` if it is malformed, else (file-wide?, allow).
fn parse_allow(tok: &Token) -> Option<Result<(bool, Allow), String>> {
    let body = match tok.kind {
        TokenKind::LineComment => tok.text.strip_prefix("--")?,
        TokenKind::BlockComment => {
            let b = tok.text.strip_prefix("/*")?;
            b.strip_suffix("*/").unwrap_or(b)
        }
        _ => return None,
    };
    let body = body.trim_start();
    const PREFIX: &str = "sluice:allow";
    if !body
        .get(..PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(PREFIX))
    {
        return None;
    }
    let rest = body.get(PREFIX.len()..).unwrap_or("");
    let (file, rest) = match rest.get(..5) {
        Some(p) if p.eq_ignore_ascii_case("-file") => (true, rest.get(5..).unwrap_or("")),
        _ => (false, rest),
    };
    let directive = if file {
        "sluice:allow-file"
    } else {
        "sluice:allow"
    };
    if !rest.is_empty() && !rest.starts_with(char::is_whitespace) {
        let word: String = body.chars().take_while(|c| !c.is_whitespace()).collect();
        return Some(Err(format!(
            "unrecognised directive `{word}` (expected `sluice:allow` or `sluice:allow-file`); it silences nothing"
        )));
    }
    let (rules_part, reason) = match rest.split_once("--") {
        Some((r, reason)) => (r, reason.split_whitespace().collect::<Vec<_>>().join(" ")),
        None => (rest, String::new()),
    };
    let ids: Vec<&str> = rules_part
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .collect();
    if ids.is_empty() {
        return Some(Err(format!(
            "`{directive}` names no rule (write `-- {directive} <rule-id> -- <reason>`); it silences nothing"
        )));
    }
    let mut rules = Vec::new();
    let mut unknown = Vec::new();
    for id in ids {
        match Rule::from_id(&id.to_ascii_lowercase()) {
            Some(r) => rules.push(r),
            None => unknown.push(format!("`{id}`")),
        }
    }
    if !unknown.is_empty() {
        let known: Vec<&str> = Rule::ALL.iter().map(|r| r.id()).collect();
        return Some(Err(format!(
            "`{directive}` names unknown rule {} (known: {}); it silences nothing",
            unknown.join(", "),
            known.join(", ")
        )));
    }
    if reason.is_empty() {
        return Some(Err(format!(
            "`{directive}` has no reason (write `-- {directive} {} -- <why this is safe>`); it silences nothing",
            rules.iter().map(|r| r.id()).collect::<Vec<_>>().join(", ")
        )));
    }
    Some(Ok((file, Allow { rules, reason })))
}

// ---------------------------------------------------------------------------
// Statement shapes, recognised on significant tokens.
// ---------------------------------------------------------------------------

/// Whether `toks[i]` is the unquoted keyword `word` (any case).
fn kw(toks: &[&Token], i: usize, word: &str) -> bool {
    toks.get(i)
        .is_some_and(|t| t.kind == TokenKind::Word && t.text.eq_ignore_ascii_case(word))
}

/// Whether `toks[i]` is the punctuation `p`.
fn punct(toks: &[&Token], i: usize, p: &str) -> bool {
    toks.get(i)
        .is_some_and(|t| t.kind == TokenKind::Punct && t.text == p)
}

/// Skips the keyword sequence `words` at `i` if present.
fn skip(toks: &[&Token], i: usize, words: &[&str]) -> usize {
    if words.iter().enumerate().all(|(k, w)| kw(toks, i + k, w)) {
        i + words.len()
    } else {
        i
    }
}

/// The identifier at `i` (unquoted word or quoted identifier).
fn name_at(toks: &[&Token], i: usize) -> Option<Name> {
    let t = toks.get(i)?;
    match t.kind {
        TokenKind::Word => Some(Name {
            shown: t.text.to_string(),
            key: t.text.to_ascii_lowercase(),
        }),
        TokenKind::QuotedIdent => {
            let v = lexer::quoted_ident_value(t.text)?;
            Some(Name {
                shown: v.clone(),
                key: v,
            })
        }
        _ => None,
    }
}

/// A possibly schema-qualified name at `i`: its last part and the index after it.
fn qualified_name_at(toks: &[&Token], i: usize) -> Option<(Name, usize)> {
    let mut name = name_at(toks, i)?;
    let mut j = i + 1;
    while punct(toks, j, ".") {
        match name_at(toks, j + 1) {
            Some(n) => {
                name = n;
                j += 2;
            }
            None => break,
        }
    }
    Some((name, j))
}

/// A comma-separated list of qualified names at `i`.
fn name_list_at(toks: &[&Token], mut i: usize) -> Vec<Name> {
    let mut out = Vec::new();
    while let Some((n, j)) = qualified_name_at(toks, i) {
        out.push(n);
        if !punct(toks, j, ",") {
            break;
        }
        i = j + 1;
    }
    out
}

/// Parenthesis depth of each token (a parenthesis itself counts outside).
fn depths(toks: &[&Token]) -> Vec<usize> {
    let mut depth = 0usize;
    toks.iter()
        .map(|t| {
            if t.kind == TokenKind::Punct && t.text == ")" {
                depth = depth.saturating_sub(1);
            }
            let d = depth;
            if t.kind == TokenKind::Punct && t.text == "(" {
                depth += 1;
            }
            d
        })
        .collect()
}

/// Splits at commas outside parentheses.
fn split_top_level<'t, 'a>(toks: &'t [&'t Token<'a>]) -> Vec<&'t [&'t Token<'a>]> {
    let d = depths(toks);
    let mut out = Vec::new();
    let mut start = 0;
    for (i, t) in toks.iter().enumerate() {
        if t.kind == TokenKind::Punct && t.text == "," && d.get(i) == Some(&0) {
            out.push(toks.get(start..i).unwrap_or(&[]));
            start = i + 1;
        }
    }
    out.push(toks.get(start..).unwrap_or(&[]));
    out
}

/// Recognises the statement shapes the rules look at.
fn parse_statement(stmt: &Statement) -> Parsed {
    let toks: Vec<&Token> = stmt
        .significant()
        .filter(|t| t.kind != TokenKind::Semicolon)
        .collect();
    let t = toks.as_slice();
    if kw(t, 0, "CREATE") {
        parse_create(t)
    } else if kw(t, 0, "DROP") {
        parse_drop(t)
    } else if kw(t, 0, "ALTER") {
        parse_alter(t)
    } else {
        Parsed::Other
    }
}

fn parse_create(t: &[&Token]) -> Parsed {
    let mut i = skip(t, 1, &["OR", "REPLACE"]);
    while ["GLOBAL", "LOCAL", "TEMP", "TEMPORARY", "UNLOGGED"]
        .iter()
        .any(|w| kw(t, i, w))
    {
        i += 1;
    }
    if kw(t, i, "TABLE") {
        let i = skip(t, i + 1, &["IF", "NOT", "EXISTS"]);
        return match qualified_name_at(t, i) {
            Some((name, _)) => Parsed::CreateTable(name),
            None => Parsed::Other,
        };
    }
    if kw(t, i, "RECURSIVE") {
        i += 1;
    }
    if kw(t, i, "MATERIALIZED") {
        i += 1;
    }
    if kw(t, i, "VIEW") {
        let i = skip(t, i + 1, &["IF", "NOT", "EXISTS"]);
        return match qualified_name_at(t, i) {
            Some((name, _)) => Parsed::CreateView(name),
            None => Parsed::Other,
        };
    }
    if kw(t, i, "UNIQUE") {
        i += 1;
    }
    if kw(t, i, "INDEX") {
        return parse_create_index(t, i + 1);
    }
    if kw(t, i, "TYPE") || kw(t, i, "DOMAIN") {
        let domain = kw(t, i, "DOMAIN");
        let Some((name, j)) = qualified_name_at(t, i + 1) else {
            return Parsed::Other;
        };
        if !domain && kw(t, j, "AS") && kw(t, j + 1, "ENUM") {
            let labels = t
                .iter()
                .skip(j + 2)
                .filter_map(|tok| lexer::string_literal_value(tok))
                .collect();
            return Parsed::CreateEnum { name, labels };
        }
        return Parsed::CreateType(name);
    }
    Parsed::Other
}

/// `CREATE [UNIQUE] INDEX` from just after `INDEX`.
fn parse_create_index(t: &[&Token], start: usize) -> Parsed {
    let concurrently = kw(t, start, "CONCURRENTLY");
    let d = depths(t);
    let Some(on) = (start..t.len()).find(|&k| kw(t, k, "ON") && d.get(k) == Some(&0)) else {
        return Parsed::Other;
    };
    let name_start = skip(
        t,
        if concurrently { start + 1 } else { start },
        &["IF", "NOT", "EXISTS"],
    );
    let index = if name_start < on {
        qualified_name_at(t, name_start).map(|(n, _)| n)
    } else {
        None
    };
    let j = skip(t, on + 1, &["ONLY"]);
    match qualified_name_at(t, j) {
        Some((table, _)) => Parsed::CreateIndex {
            index,
            table,
            concurrently,
        },
        None => Parsed::Other,
    }
}

fn parse_drop(t: &[&Token]) -> Parsed {
    if kw(t, 1, "TABLE") {
        let i = skip(t, 2, &["IF", "EXISTS"]);
        let names = name_list_at(t, i);
        if names.is_empty() {
            return Parsed::Other;
        }
        return Parsed::DropTables(names);
    }
    if kw(t, 1, "TYPE") || kw(t, 1, "DOMAIN") {
        let i = skip(t, 2, &["IF", "EXISTS"]);
        let names = name_list_at(t, i);
        if names.is_empty() {
            return Parsed::Other;
        }
        return Parsed::DropTypes {
            names,
            domain: kw(t, 1, "DOMAIN"),
        };
    }
    Parsed::Other
}

fn parse_alter(t: &[&Token]) -> Parsed {
    if kw(t, 1, "TABLE") {
        let i = skip(t, 2, &["IF", "EXISTS"]);
        let i = skip(t, i, &["ONLY"]);
        let Some((table, mut j)) = qualified_name_at(t, i) else {
            return Parsed::Other;
        };
        if punct(t, j, "*") {
            j += 1;
        }
        let rest = t.get(j..).unwrap_or(&[]);
        let actions = split_top_level(rest)
            .into_iter()
            .map(parse_action)
            .collect();
        return Parsed::AlterTable { table, actions };
    }
    if kw(t, 1, "TYPE") || kw(t, 1, "DOMAIN") {
        let domain = kw(t, 1, "DOMAIN");
        let Some((name, j)) = qualified_name_at(t, 2) else {
            return Parsed::Other;
        };
        let action = if kw(t, j, "ADD") && kw(t, j + 1, "VALUE") && !domain {
            let k = skip(t, j + 2, &["IF", "NOT", "EXISTS"]);
            TypeAction::AddValue(t.get(k).and_then(|tok| lexer::string_literal_value(tok)))
        } else if kw(t, j, "RENAME") && kw(t, j + 1, "TO") {
            match qualified_name_at(t, j + 2) {
                Some((to, _)) => TypeAction::RenameTo(to),
                None => TypeAction::Other,
            }
        } else if kw(t, j, "RENAME") && kw(t, j + 1, "VALUE") && !domain {
            let from = t
                .get(j + 2)
                .and_then(|tok| lexer::string_literal_value(tok));
            let to = if kw(t, j + 3, "TO") {
                t.get(j + 4)
                    .and_then(|tok| lexer::string_literal_value(tok))
            } else {
                None
            };
            TypeAction::RenameValue(from, to)
        } else if kw(t, j, "RENAME") && kw(t, j + 1, "ATTRIBUTE") && !domain {
            match name_at(t, j + 2) {
                Some(a) => TypeAction::RenameAttribute(a),
                None => TypeAction::Other,
            }
        } else {
            TypeAction::Other
        };
        return Parsed::AlterType {
            name,
            domain,
            action,
        };
    }
    let view_at = if kw(t, 1, "VIEW") {
        Some(2)
    } else if kw(t, 1, "MATERIALIZED") && kw(t, 2, "VIEW") {
        Some(3)
    } else {
        None
    };
    if let Some(i) = view_at {
        let i = skip(t, i, &["IF", "EXISTS"]);
        let Some((view, j)) = qualified_name_at(t, i) else {
            return Parsed::Other;
        };
        if !kw(t, j, "RENAME") {
            return Parsed::Other;
        }
        if kw(t, j + 1, "TO") {
            let to = qualified_name_at(t, j + 2).map(|(n, _)| n);
            return Parsed::RenameView {
                view,
                column: None,
                to,
            };
        }
        let k = skip(t, j + 1, &["COLUMN"]);
        let Some(column) = name_at(t, k) else {
            return Parsed::Other;
        };
        let to = if kw(t, k + 1, "TO") {
            name_at(t, k + 2)
        } else {
            None
        };
        return Parsed::RenameView {
            view,
            column: Some(column),
            to,
        };
    }
    Parsed::Other
}

/// One `ALTER TABLE` action (tokens between top-level commas).
fn parse_action(a: &[&Token]) -> Action {
    if kw(a, 0, "DROP") {
        if kw(a, 1, "CONSTRAINT") {
            return Action::Other;
        }
        let explicit = kw(a, 1, "COLUMN");
        let i = skip(a, if explicit { 2 } else { 1 }, &["IF", "EXISTS"]);
        if !explicit
            && ["CONSTRAINT", "DEFAULT", "NOT", "IDENTITY", "EXPRESSION"]
                .iter()
                .any(|w| kw(a, i, w))
        {
            return Action::Other;
        }
        return match name_at(a, i) {
            Some(c) => Action::DropColumn(c),
            None => Action::Other,
        };
    }
    if kw(a, 0, "ALTER") {
        if kw(a, 1, "CONSTRAINT") {
            return Action::Other;
        }
        let i = skip(a, 1, &["COLUMN"]);
        let Some(c) = name_at(a, i) else {
            return Action::Other;
        };
        if kw(a, i + 1, "TYPE") || skip(a, i + 1, &["SET", "DATA", "TYPE"]) > i + 1 {
            return Action::ChangeType(c);
        }
        if skip(a, i + 1, &["SET", "NOT", "NULL"]) > i + 1 {
            return Action::SetNotNull(c);
        }
        return Action::Other;
    }
    if kw(a, 0, "ADD") {
        let table_constraint = [
            "CONSTRAINT",
            "PRIMARY",
            "UNIQUE",
            "CHECK",
            "FOREIGN",
            "EXCLUDE",
        ]
        .iter()
        .any(|w| kw(a, 1, w));
        if table_constraint {
            return parse_add_constraint(a);
        }
        let i = skip(a, 1, &["COLUMN"]);
        let i = skip(a, i, &["IF", "NOT", "EXISTS"]);
        let Some(column) = name_at(a, i) else {
            return Action::Other;
        };
        return parse_add_column(a, i, column);
    }
    if kw(a, 0, "RENAME") {
        if kw(a, 1, "TO") {
            return Action::RenameTable(qualified_name_at(a, 2).map(|(n, _)| n));
        }
        if kw(a, 1, "CONSTRAINT") {
            return Action::Other;
        }
        let i = skip(a, 1, &["COLUMN"]);
        let Some(from) = name_at(a, i) else {
            return Action::Other;
        };
        let to = if kw(a, i + 1, "TO") {
            name_at(a, i + 2)
        } else {
            None
        };
        return Action::RenameColumn(from, to);
    }
    Action::Other
}

/// `ADD COLUMN c type ...` with the column name at `name_idx`.
fn parse_add_column(a: &[&Token], name_idx: usize, column: Name) -> Action {
    let d = depths(a);
    let top = |k: usize| d.get(k) == Some(&0);
    let mut not_null = false;
    let mut default = false;
    let mut generated = false;
    let mut references = false;
    for k in name_idx + 1..a.len() {
        if !top(k) {
            continue;
        }
        if kw(a, k, "NOT") && kw(a, k + 1, "NULL") && !(k > 0 && kw(a, k - 1, "IS")) {
            not_null = true;
        } else if kw(a, k, "DEFAULT") && !kw(a, k + 1, "NULL") {
            default = true;
        } else if kw(a, k, "GENERATED") {
            generated = true;
        } else if kw(a, k, "REFERENCES") {
            references = true;
        }
    }
    // serial types carry an implicit default.
    let serial = a.get(name_idx + 1).is_some_and(|t| {
        t.kind == TokenKind::Word
            && [
                "serial",
                "serial2",
                "serial4",
                "serial8",
                "smallserial",
                "bigserial",
            ]
            .iter()
            .any(|s| t.text.eq_ignore_ascii_case(s))
    });
    Action::AddColumn {
        column,
        not_null_without_default: not_null && !default && !generated && !serial,
        references,
    }
}

/// `ADD [CONSTRAINT n] ...`: only foreign keys matter.
fn parse_add_constraint(a: &[&Token]) -> Action {
    let (constraint, body) = if kw(a, 1, "CONSTRAINT") {
        (name_at(a, 2), 3)
    } else {
        (None, 1)
    };
    if !kw(a, body, "FOREIGN") {
        return Action::Other;
    }
    let d = depths(a);
    let not_valid =
        (body..a.len()).any(|k| d.get(k) == Some(&0) && kw(a, k, "NOT") && kw(a, k + 1, "VALID"));
    Action::AddForeignKey {
        constraint,
        not_valid,
    }
}

/// Lints the named migrations of `set` in order (all of them when `names` is `None`), each
/// with the transaction mode the runner will use, so the CLI, `plan` and the policy gate all
/// judge the same slice the same way.
pub fn lint_migrations(
    set: &super::MigrationSet,
    names: Option<&[String]>,
    options: LintOptions,
) -> LintReport {
    let chosen: Vec<&super::Migration> = set
        .migrations
        .iter()
        .filter(|m| names.is_none_or(|names| names.contains(&m.name)))
        .collect();
    let inputs: Vec<(&str, &str, bool)> = chosen
        .iter()
        .map(|m| {
            let sql = m.up.sql();
            let statements = lexer::split(sql);
            let mode = super::classify::classify(sql, &statements).mode;
            (
                m.name.as_str(),
                sql,
                mode == super::classify::TxMode::Transactional,
            )
        })
        .collect();
    lint(&inputs, options)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run(migs: &[(&str, &str, bool)], server: Option<u32>) -> LintReport {
        lint(
            migs,
            LintOptions {
                server_major: server,
            },
        )
    }

    fn one(sql: &str) -> LintReport {
        run(&[("m1", sql, true)], Some(16))
    }

    fn rules(r: &LintReport) -> Vec<Rule> {
        r.findings.iter().map(|f| f.rule).collect()
    }

    fn rules_of(sql: &str) -> Vec<Rule> {
        rules(&one(sql))
    }

    #[test]
    fn ids_round_trip_and_serialise() {
        let mut seen = HashSet::new();
        for r in Rule::ALL {
            assert_eq!(Rule::from_id(r.id()), Some(r));
            assert!(seen.insert(r.id()));
            assert_eq!(
                serde_json::to_string(&r).unwrap_or_default(),
                format!("\"{}\"", r.id())
            );
            assert!(!r.explanation().is_empty() && !r.explanation().contains('\n'));
        }
        assert_eq!(Rule::from_id("nope"), None);
        assert_eq!(Rule::from_id("DROP-TABLE"), None);
    }

    #[test]
    fn finding_fields_and_json() {
        let sql = "-- drop it\n\nALTER TABLE public.users\n  DROP COLUMN email;\n";
        let r = one(sql);
        assert_eq!(r.findings.len(), 1);
        let f = &r.findings[0];
        assert_eq!(f.rule, Rule::DropColumn);
        assert_eq!(f.migration, "m1");
        assert_eq!(f.line, 3);
        assert_eq!(f.statement, "ALTER TABLE public.users");
        assert!(f
            .message
            .starts_with("drops column `users.email`: data loss"));
        let json = serde_json::to_value(&r).unwrap_or_default();
        assert_eq!(json["findings"][0]["rule"], "drop-column");
        assert_eq!(json["findings"][0]["line"], 3);
    }

    #[test]
    fn messages_stay_on_one_line() {
        let r = one("ALTER TABLE \"a\nb\" DROP COLUMN \"c\rd\";");
        assert_eq!(r.findings.len(), 1);
        assert!(r.findings[0]
            .message
            .starts_with("drops column `a\\nb.c\\rd`"));
        let r = one("DROP TABLE\tt;\r");
        assert_eq!(r.findings[0].statement, "DROP TABLE\tt;");
    }

    #[test]
    fn statement_text_is_cut_to_120_chars() {
        let long = format!("DROP TABLE t{};", "x".repeat(300));
        let r = one(&long);
        assert_eq!(r.findings[0].statement.chars().count(), 120);
        assert!(r.findings[0].statement.ends_with('…'));
    }

    #[test]
    fn drop_table() {
        assert_eq!(rules_of("DROP TABLE users;"), vec![Rule::DropTable]);
        let r = one("drop table if exists \"public\".\"User\", accounts cascade;");
        assert_eq!(rules(&r), vec![Rule::DropTable, Rule::DropTable]);
        assert!(r.findings[0].message.contains("`User`"));
        assert!(r.findings[1].message.contains("`accounts`"));
        // A helper table created by the same migration.
        assert!(
            rules_of("CREATE TABLE tmp (a int); INSERT INTO tmp VALUES (1); DROP TABLE tmp;")
                .is_empty()
        );
        // Quoted and unquoted spellings resolve like PostgreSQL does.
        assert!(rules_of("CREATE TABLE Tmp (a int); DROP TABLE \"tmp\";").is_empty());
        assert_eq!(
            rules_of("CREATE TABLE \"Tmp\" (a int); DROP TABLE tmp;"),
            vec![Rule::DropTable]
        );
        // Created by an earlier migration of the slice: still a drop.
        let r = run(
            &[
                ("m1", "CREATE TABLE t (a int);", true),
                ("m2", "DROP TABLE t;", true),
            ],
            None,
        );
        assert_eq!(rules(&r), vec![Rule::DropTable]);
        assert_eq!(r.findings[0].migration, "m2");
        // Other DROPs are not drop-table.
        assert!(rules_of("DROP INDEX t; DROP VIEW t; DROP SEQUENCE t;").is_empty());
    }

    #[test]
    fn drop_column() {
        assert_eq!(
            rules_of("ALTER TABLE t DROP COLUMN c;"),
            vec![Rule::DropColumn]
        );
        assert_eq!(
            rules_of("ALTER TABLE t DROP IF EXISTS c CASCADE;"),
            vec![Rule::DropColumn]
        );
        assert_eq!(
            rules_of("ALTER TABLE t DROP COLUMN IF EXISTS \"c\";"),
            vec![Rule::DropColumn]
        );
        let r = one(
            "ALTER TABLE \"x\" DROP COLUMN \"a\",\nADD COLUMN \"b\" TEXT,\nDROP COLUMN \"c\",\nALTER COLUMN \"d\" DROP DEFAULT;",
        );
        assert_eq!(rules(&r), vec![Rule::DropColumn, Rule::DropColumn]);
        assert!(r.findings[1].message.contains("`x.c`"));
        for sql in [
            "ALTER TABLE t DROP CONSTRAINT c;",
            "ALTER TABLE t DROP CONSTRAINT IF EXISTS c;",
            "ALTER TABLE t ALTER COLUMN c DROP DEFAULT;",
            "ALTER TABLE t ALTER c DROP NOT NULL;",
            "ALTER TABLE t ALTER COLUMN c DROP IDENTITY IF EXISTS;",
            "ALTER TABLE t ALTER COLUMN c DROP EXPRESSION;",
            "ALTER TABLE t ADD COLUMN c int, ALTER COLUMN d DROP NOT NULL;",
            // Created in the same migration: nothing to lose.
            "CREATE TABLE t (a int, b int); ALTER TABLE t DROP COLUMN b;",
        ] {
            assert!(rules_of(sql).is_empty(), "{sql}");
        }
    }

    #[test]
    fn change_column_type() {
        assert_eq!(
            rules_of("ALTER TABLE t ALTER COLUMN c TYPE bigint;"),
            vec![Rule::ChangeColumnType]
        );
        assert_eq!(
            rules_of("ALTER TABLE t ALTER c SET DATA TYPE numeric(10, 2) USING c::numeric;"),
            vec![Rule::ChangeColumnType]
        );
        let r = one(
            "ALTER TABLE \"a\".\"T\" ALTER COLUMN \"x\" TYPE text, ALTER COLUMN \"y\" SET DATA TYPE text;",
        );
        assert_eq!(r.findings.len(), 2);
        assert!(r.findings[0].message.contains("`T.x`"));
        assert!(rules_of("ALTER TABLE t ALTER COLUMN c SET DEFAULT 'TYPE';").is_empty());
        assert!(
            rules_of("CREATE TABLE t (c int); ALTER TABLE t ALTER COLUMN c TYPE bigint;")
                .is_empty()
        );
        let r = run(
            &[
                ("m1", "CREATE TABLE t (c int);", true),
                ("m2", "ALTER TABLE t ALTER COLUMN c TYPE bigint;", true),
            ],
            None,
        );
        assert!(r.findings.is_empty());
    }

    #[test]
    fn set_not_null() {
        assert_eq!(
            rules_of("ALTER TABLE t ALTER COLUMN c SET NOT NULL;"),
            vec![Rule::SetNotNull]
        );
        assert_eq!(
            rules_of("alter table only t alter c set not null, alter d set not null;"),
            vec![Rule::SetNotNull, Rule::SetNotNull]
        );
        assert!(rules_of("ALTER TABLE t ALTER COLUMN c DROP NOT NULL;").is_empty());
        assert!(rules_of("CREATE TABLE t (c int); ALTER TABLE t ALTER c SET NOT NULL;").is_empty());
    }

    #[test]
    fn add_not_null_without_default() {
        for sql in [
            "ALTER TABLE t ADD COLUMN c int NOT NULL;",
            "ALTER TABLE t ADD c text NOT NULL;",
            "ALTER TABLE t ADD COLUMN IF NOT EXISTS c int CONSTRAINT nn NOT NULL;",
            "ALTER TABLE \"t\" ADD COLUMN \"c\" \"Role\"[] NOT NULL DEFAULT NULL;",
            "ALTER TABLE t ADD COLUMN c int NOT NULL CHECK (c IS NOT NULL OR DEFAULT_ok());",
        ] {
            assert_eq!(rules_of(sql), vec![Rule::AddNotNullWithoutDefault], "{sql}");
        }
        for sql in [
            "ALTER TABLE t ADD COLUMN c int NOT NULL DEFAULT 0;",
            "ALTER TABLE t ADD COLUMN c int DEFAULT 0 NOT NULL;",
            "ALTER TABLE t ADD COLUMN c int;",
            "ALTER TABLE t ADD COLUMN c int CHECK (c IS NOT NULL);",
            "ALTER TABLE t ADD COLUMN c bigint GENERATED ALWAYS AS IDENTITY NOT NULL;",
            "ALTER TABLE t ADD COLUMN c int NOT NULL GENERATED ALWAYS AS (a + 1) STORED;",
            "ALTER TABLE t ADD COLUMN c bigserial NOT NULL;",
            "ALTER TABLE t ADD CONSTRAINT c CHECK (x IS NOT NULL);",
            "CREATE TABLE t (a int); ALTER TABLE t ADD COLUMN c int NOT NULL;",
        ] {
            assert!(rules_of(sql).is_empty(), "{sql}");
        }
        let r = one("ALTER TABLE \"x\" ADD COLUMN \"a\" TEXT NOT NULL,\nADD COLUMN \"b\" INTEGER NOT NULL DEFAULT 1,\nADD COLUMN \"c\" BOOLEAN NOT NULL;");
        assert_eq!(r.findings.len(), 2);
        assert!(r.findings[1].message.contains("`x.c`"));
    }

    #[test]
    fn rename() {
        for sql in [
            "ALTER TABLE t RENAME COLUMN a TO b;",
            "ALTER TABLE t RENAME a TO b;",
            "ALTER TABLE IF EXISTS t RENAME TO u;",
            "ALTER TYPE \"Role\" RENAME TO \"Kind\";",
            "ALTER TYPE \"Role\" RENAME VALUE 'A' TO 'B';",
            "ALTER TYPE addr RENAME ATTRIBUTE zip TO postcode;",
            "ALTER VIEW v RENAME TO w;",
            "ALTER MATERIALIZED VIEW v RENAME COLUMN a TO b;",
            "ALTER DOMAIN d RENAME TO e;",
        ] {
            assert_eq!(rules_of(sql), vec![Rule::Rename], "{sql}");
        }
        let r = one("ALTER TABLE \"s\".\"User\" RENAME COLUMN \"name\" TO \"fullName\";");
        assert!(r.findings[0]
            .message
            .starts_with("renames column `User.name` to `fullName`"));
        for sql in [
            "ALTER INDEX i RENAME TO j;",
            "ALTER TABLE t RENAME CONSTRAINT a TO b;",
            "ALTER SEQUENCE s RENAME TO z;",
            "CREATE TABLE t (a int); ALTER TABLE t RENAME COLUMN a TO b; ALTER TABLE t RENAME TO u;",
            "CREATE TYPE e AS ENUM ('a'); ALTER TYPE e RENAME VALUE 'a' TO 'b';",
            "CREATE VIEW v AS SELECT 1; ALTER VIEW v RENAME TO w;",
        ] {
            assert!(rules_of(sql).is_empty(), "{sql}");
        }
    }

    #[test]
    fn renamed_new_table_stays_new() {
        let sql = "CREATE TABLE new_t (a int); ALTER TABLE new_t RENAME TO t; CREATE INDEX i ON t (a); DROP TABLE t;";
        assert!(rules_of(sql).is_empty());
    }

    #[test]
    fn index_without_concurrently() {
        for sql in [
            "CREATE INDEX i ON t (a);",
            "CREATE UNIQUE INDEX \"i\" ON \"public\".\"T\" USING btree (\"a\");",
            "create index on only t (a);",
            "CREATE INDEX IF NOT EXISTS i ON t (lower(a));",
        ] {
            assert_eq!(rules_of(sql), vec![Rule::IndexWithoutConcurrently], "{sql}");
        }
        let r = one("CREATE UNIQUE INDEX \"User_email_key\" ON \"User\"(\"email\");");
        assert!(r.findings[0]
            .message
            .starts_with("creates index `User_email_key` on existing table `User`"));
        for sql in [
            "CREATE INDEX CONCURRENTLY i ON t (a);",
            "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS i ON t (a);",
            "CREATE TABLE \"T\" (a int);\nCREATE INDEX i ON \"T\" (a);",
            "CREATE TABLE s.t (a int); CREATE INDEX i ON t (a);",
        ] {
            assert!(rules_of(sql).is_empty(), "{sql}");
        }
        // A table from an earlier migration of the slice is new.
        let r = run(
            &[
                ("a", "CREATE TABLE t (a int);", true),
                ("b", "CREATE INDEX i ON t (a);", true),
            ],
            None,
        );
        assert!(r.findings.is_empty());
        // ... but only after its creation statement.
        assert_eq!(
            rules_of("CREATE INDEX i ON t (a); CREATE TABLE t (a int);"),
            vec![Rule::IndexWithoutConcurrently]
        );
        // Dropped and not recreated: existing again for later statements.
        let r = run(
            &[
                ("a", "CREATE TABLE t (a int);", true),
                ("b", "DROP TABLE t;", true),
                ("c", "CREATE INDEX i ON t (a);", true),
            ],
            None,
        );
        assert_eq!(
            rules(&r),
            vec![Rule::DropTable, Rule::IndexWithoutConcurrently]
        );
    }

    #[test]
    fn foreign_key_without_not_valid() {
        let fk = "ALTER TABLE \"Post\" ADD CONSTRAINT \"Post_authorId_fkey\" FOREIGN KEY (\"authorId\") REFERENCES \"User\"(\"id\") ON DELETE CASCADE ON UPDATE CASCADE;";
        let r = one(fk);
        assert_eq!(rules(&r), vec![Rule::ForeignKeyWithoutNotValid]);
        assert!(r.findings[0]
            .message
            .starts_with("adds foreign key `Post_authorId_fkey` to `Post` without NOT VALID"));
        assert_eq!(
            rules_of("ALTER TABLE t ADD FOREIGN KEY (a) REFERENCES u (id), ADD CONSTRAINT x FOREIGN KEY (b) REFERENCES u (id) NOT VALID;"),
            vec![Rule::ForeignKeyWithoutNotValid]
        );
        assert_eq!(
            rules_of("ALTER TABLE t ADD COLUMN u_id int REFERENCES u (id);"),
            vec![Rule::ForeignKeyWithoutNotValid]
        );
        for sql in [
            "ALTER TABLE t ADD CONSTRAINT f FOREIGN KEY (a) REFERENCES u (id) NOT VALID;",
            "ALTER TABLE t VALIDATE CONSTRAINT f;",
            "ALTER TABLE t ADD CONSTRAINT c CHECK (a > 0);",
            "ALTER TABLE t ADD CONSTRAINT p PRIMARY KEY (id);",
            "CREATE TABLE t (a int REFERENCES u (id));",
            // The altered table is new; the referenced one may be old.
            "CREATE TABLE \"Post\" (\"authorId\" int);\nALTER TABLE \"Post\" ADD CONSTRAINT \"f\" FOREIGN KEY (\"authorId\") REFERENCES \"User\"(\"id\");",
        ] {
            assert!(rules_of(sql).is_empty(), "{sql}");
        }
    }

    #[test]
    fn drop_type() {
        assert_eq!(rules_of("DROP TYPE \"Role\";"), vec![Rule::DropType]);
        let r = one("DROP TYPE IF EXISTS a, public.b CASCADE; DROP DOMAIN d;");
        assert_eq!(rules(&r), vec![Rule::DropType; 3]);
        assert!(r.findings[2].message.starts_with("drops domain `d`"));
        assert!(rules_of("CREATE TYPE x AS (a int); DROP TYPE x;").is_empty());
    }

    /// Prisma's recreate: new type first, old renamed away, new renamed in.
    const PRISMA_RECREATE: &str = "-- AlterEnum\nBEGIN;\n\
CREATE TYPE \"Role_new\" AS ENUM ('USER', 'ADMIN');\n\
ALTER TABLE \"User\" ALTER COLUMN \"role\" TYPE \"Role_new\" USING (\"role\"::text::\"Role_new\");\n\
ALTER TYPE \"Role\" RENAME TO \"Role_old\";\n\
ALTER TYPE \"Role_new\" RENAME TO \"Role\";\n\
DROP TYPE \"Role_old\";\n\
COMMIT;\n";

    #[test]
    fn enum_recreate_known_labels() {
        let r = run(
            &[
                (
                    "a",
                    "CREATE TYPE \"Role\" AS ENUM ('USER', 'ADMIN', 'GUEST');",
                    true,
                ),
                ("b", PRISMA_RECREATE, true),
            ],
            Some(16),
        );
        // The column type change is a finding of its own (User is existing).
        assert_eq!(
            rules(&r),
            vec![Rule::DropEnumValue, Rule::ChangeColumnType],
            "{r:?}"
        );
        let f = &r.findings[0];
        assert_eq!(f.migration, "b");
        assert_eq!(f.line, 3, "reported on the CREATE TYPE");
        assert!(f
            .message
            .starts_with("recreates enum `Role` without value 'GUEST'"));
        // Only adding labels: no drop-enum-value, and no rename/drop-type either.
        let r = run(
            &[
                ("a", "CREATE TYPE \"Role\" AS ENUM ('USER');", true),
                ("b", PRISMA_RECREATE, true),
            ],
            Some(16),
        );
        assert_eq!(rules(&r), vec![Rule::ChangeColumnType]);
        // Labels known through ADD VALUE and RENAME VALUE too.
        let r = run(
            &[
                ("a", "CREATE TYPE \"Role\" AS ENUM ('USER');", true),
                ("b", "ALTER TYPE \"Role\" ADD VALUE 'ADMIN';", false),
                (
                    "c",
                    "ALTER TYPE \"Role\" RENAME VALUE 'ADMIN' TO 'ROOT';",
                    true,
                ),
                ("d", PRISMA_RECREATE, true),
            ],
            Some(16),
        );
        assert_eq!(
            rules(&r),
            vec![Rule::Rename, Rule::DropEnumValue, Rule::ChangeColumnType]
        );
        assert!(r.findings[1].message.contains("without value 'ROOT'"));
    }

    #[test]
    fn enum_recreate_unknown_labels() {
        let r = one(PRISMA_RECREATE);
        assert_eq!(rules(&r), vec![Rule::DropEnumValue, Rule::ChangeColumnType]);
        assert!(r.findings[0]
            .message
            .starts_with("recreates enum `Role` (labels may be dropped)"));
        // Rename away first, then CREATE TYPE under the old name.
        let sql = "ALTER TYPE \"S\" RENAME TO \"S_old\";\n\
CREATE TYPE \"S\" AS ENUM ('A', 'B');\n\
ALTER TABLE \"m\" ALTER COLUMN \"s\" TYPE \"S\" USING \"s\"::text::\"S\";\n\
DROP TYPE \"S_old\";";
        let r = one(sql);
        assert_eq!(rules(&r), vec![Rule::DropEnumValue, Rule::ChangeColumnType]);
        assert_eq!(r.findings[0].line, 2);
        let r = run(
            &[
                ("a", "CREATE TYPE \"S\" AS ENUM ('A', 'B', 'C', 'D');", true),
                ("b", sql, true),
            ],
            Some(16),
        );
        assert!(r.findings[0].message.contains("without values 'C', 'D'"));
        // A plain rename is a rename, and a plain drop a drop.
        assert_eq!(
            rules_of("ALTER TYPE \"S\" RENAME TO \"S_old\"; DROP TYPE \"S_old\";"),
            vec![Rule::Rename, Rule::DropType]
        );
    }

    #[test]
    fn add_enum_value_in_transaction() {
        let sql = "ALTER TYPE \"Role\" ADD VALUE 'ROOT';";
        let in_tx = |server| rules(&run(&[("m", sql, true)], server));
        assert_eq!(in_tx(None), vec![Rule::AddEnumValueInTransaction]);
        assert_eq!(in_tx(Some(11)), vec![Rule::AddEnumValueInTransaction]);
        assert!(in_tx(Some(12)).is_empty());
        assert!(in_tx(Some(15)).is_empty());
        // Not wrapped in a transaction: fine everywhere.
        assert!(run(&[("m", sql, false)], None).findings.is_empty());
        let r = run(&[("m", sql, true)], Some(11));
        assert!(r.findings[0]
            .message
            .starts_with("adds value 'ROOT' to enum `Role` inside a transaction (PostgreSQL 11): PostgreSQL before 12 rejects"));
        let r = run(&[("m", sql, true)], None);
        assert!(r.findings[0]
            .message
            .contains("(server version unknown, assumed before 12)"));
        // Using the new value later in the same transaction fails on 15 too.
        let used = "ALTER TYPE \"Role\" ADD VALUE IF NOT EXISTS 'ROOT';\nUPDATE \"User\" SET role = 'ROOT' WHERE id = 1;";
        let r = run(&[("m", used, true)], Some(15));
        assert_eq!(rules(&r), vec![Rule::AddEnumValueInTransaction]);
        assert!(r.findings[0].message.contains("uses the new value"));
        let r = run(&[("m", used, true)], Some(11));
        assert!(r.findings[0].message.contains(
            "(PostgreSQL 11) and a later statement of this migration uses the new value"
        ));
        // In a DO body too; but a mention before the ADD VALUE is not a use.
        let used_do = "ALTER TYPE e ADD VALUE 'x';\nDO $$ BEGIN UPDATE t SET c = 'x'; END $$;";
        assert_eq!(
            rules(&run(&[("m", used_do, true)], Some(15))),
            vec![Rule::AddEnumValueInTransaction]
        );
        let before = "UPDATE t SET c = 'x';\nALTER TYPE e ADD VALUE 'x';";
        assert!(run(&[("m", before, true)], Some(15)).findings.is_empty());
        // The same label added to another enum, or used as a position, is no use.
        let defs = "ALTER TYPE a ADD VALUE 'x';\nALTER TYPE b ADD VALUE 'x';\nALTER TYPE a ADD VALUE 'y' AFTER 'x';\nCREATE TYPE c AS ENUM ('x');";
        assert!(run(&[("m", defs, true)], Some(15)).findings.is_empty());
        assert_eq!(run(&[("m", defs, true)], Some(11)).findings.len(), 3);
    }

    #[test]
    fn trigger_words_in_comments_strings_and_bodies() {
        let sql = "-- DROP TABLE users;\n/* ALTER TABLE t DROP COLUMN c; */\n\
SELECT 'DROP TABLE users', \"DROP TABLE x\";\n\
CREATE FUNCTION f() RETURNS void AS $$ BEGIN DROP TABLE users; ALTER TABLE t DROP COLUMN c; END $$ LANGUAGE plpgsql;\n\
DO $x$ BEGIN CREATE INDEX i ON t (a); END $x$;\n\
INSERT INTO log VALUES (E'ALTER TABLE t RENAME TO u');\n\
COMMENT ON TABLE t IS 'CREATE INDEX i ON t (a)';";
        let r = one(sql);
        assert!(r.findings.is_empty(), "{r:?}");
        assert!(r.problems.is_empty());
    }

    #[test]
    fn silencing_statement() {
        let sql = "-- sluice:allow drop-column -- backfilled into profiles in 2024_01\nALTER TABLE users DROP COLUMN bio;\nALTER TABLE users DROP COLUMN age;";
        let r = one(sql);
        assert_eq!(rules(&r), vec![Rule::DropColumn]);
        assert_eq!(r.findings[0].line, 3);
        assert_eq!(
            r.silenced,
            vec![Silenced {
                rule: Rule::DropColumn,
                migration: "m1".into(),
                line: 2,
                reason: "backfilled into profiles in 2024_01".into(),
            }]
        );
        assert!(r.problems.is_empty());
        // Several rules, block comment, inside the statement.
        let sql = "/* sluice:allow drop-column, rename -- both unused since v3 */\nALTER TABLE t DROP COLUMN a, RENAME COLUMN b TO c;\nALTER TABLE t\n  -- sluice:allow set-not-null -- checked: no NULLs\n  ALTER COLUMN d SET NOT NULL;";
        let r = one(sql);
        assert!(r.findings.is_empty(), "{r:?}");
        assert_eq!(r.silenced.len(), 3);
        assert_eq!(r.silenced[2].reason, "checked: no NULLs");
        // A different rule is not silenced.
        let r = one("-- sluice:allow rename -- ok\nDROP TABLE t;");
        assert_eq!(rules(&r), vec![Rule::DropTable]);
    }

    #[test]
    fn silencing_file() {
        let sql = "ALTER TABLE a DROP COLUMN x;\nCREATE INDEX i ON a (y);\n-- sluice:allow-file index-without-concurrently -- table a has 20 rows\nCREATE INDEX j ON a (z);";
        let r = one(sql);
        assert_eq!(rules(&r), vec![Rule::DropColumn]);
        assert_eq!(r.silenced.len(), 2);
        assert!(r.silenced.iter().all(|s| s.reason == "table a has 20 rows"));
        // Only for that migration.
        let r = run(
            &[("a", sql, true), ("b", "CREATE INDEX k ON b (z);", true)],
            None,
        );
        assert_eq!(r.findings.len(), 2);
        assert_eq!(r.findings[1].migration, "b");
    }

    #[test]
    fn silencing_problems() {
        let cases = [
            ("-- sluice:allow drop-table\nDROP TABLE t;", "no reason"),
            (
                "-- sluice:allow drop-table --   \nDROP TABLE t;",
                "no reason",
            ),
            (
                "-- sluice:allow drop-tables -- typo\nDROP TABLE t;",
                "unknown rule `drop-tables`",
            ),
            (
                "-- sluice:allow drop-table, nope -- x\nDROP TABLE t;",
                "unknown rule `nope`",
            ),
            ("-- sluice:allow -- why\nDROP TABLE t;", "names no rule"),
            (
                "-- sluice:allow-file -- why\nDROP TABLE t;",
                "`sluice:allow-file` names no rule",
            ),
            (
                "-- sluice:allowed drop-table -- x\nDROP TABLE t;",
                "unrecognised directive",
            ),
            (
                "SELECT 1; -- sluice:allow drop-table -- x\nDROP TABLE t;",
                "trails a statement",
            ),
            (
                "DROP TABLE t;\n-- sluice:allow drop-table -- too late\n",
                "not followed by a statement",
            ),
        ];
        for (sql, expect) in cases {
            let r = one(sql);
            assert_eq!(rules(&r), vec![Rule::DropTable], "{sql}");
            assert!(r.silenced.is_empty(), "{sql}");
            assert_eq!(r.problems.len(), 1, "{sql}: {:?}", r.problems);
            assert!(r.problems[0].contains(expect), "{sql}: {:?}", r.problems);
            assert!(r.problems[0].starts_with("m1:"), "{:?}", r.problems);
        }
        let r = one("DROP TABLE t;\n\n-- sluice:allow drop-table -- late\n");
        assert!(r.problems[0].starts_with("m1:3:"), "{:?}", r.problems);
        // Not a directive at all.
        let r = one("-- see sluice:allow in the docs\n-- sluice: allow\nDROP TABLE t;");
        assert!(r.problems.is_empty());
    }

    #[test]
    fn never_panics_on_odd_input() {
        let inputs = [
            "",
            ";",
            "ALTER",
            "ALTER TABLE",
            "ALTER TABLE t",
            "ALTER TABLE t ADD",
            "ALTER TABLE t ADD COLUMN",
            "ALTER TABLE t DROP",
            "ALTER TABLE t ALTER COLUMN",
            "ALTER TABLE t RENAME",
            "ALTER TABLE t RENAME COLUMN a",
            "ALTER TABLE \"unterminated",
            "ALTER TABLE t. DROP COLUMN c",
            "ALTER TYPE",
            "ALTER TYPE x",
            "ALTER TYPE x ADD VALUE",
            "ALTER TYPE x RENAME",
            "ALTER TYPE x RENAME TO",
            "ALTER TYPE x RENAME VALUE",
            "ALTER VIEW",
            "ALTER MATERIALIZED VIEW v RENAME COLUMN",
            "CREATE",
            "CREATE TABLE",
            "CREATE INDEX",
            "CREATE INDEX i ON",
            "CREATE UNIQUE INDEX CONCURRENTLY",
            "CREATE TYPE x AS ENUM (",
            "CREATE TYPE x AS ENUM ('a",
            "DROP TABLE",
            "DROP TABLE IF EXISTS",
            "DROP TYPE ,",
            "-- sluice:allow",
            "/* sluice:allow-file",
            "-- sluice:allow-fil",
            "-- sluice:allowé",
            "/* sluice:allow é -- é */ DROP TABLE é;",
            "ALTER TABLE t ALTER COLUMN c TYPE (((((",
            ")))) ALTER TABLE t ADD COLUMN c int NOT NULL",
            "ALTER TYPE x RENAME TO y; ALTER TYPE y RENAME TO x; CREATE TYPE x AS ENUM ();",
            "ALTER TYPE x RENAME TO x; CREATE TYPE x AS ENUM ('a'); DROP TYPE x;",
        ];
        for sql in inputs {
            for server in [None, Some(11), Some(16)] {
                let _ = run(&[("m", sql, true), ("n", sql, false)], server);
            }
        }
        // Every prefix of a realistic migration.
        let all = format!("{PRISMA_RECREATE}\n-- sluice:allow drop-column -- x\nALTER TABLE \"a\" DROP COLUMN \"b\", ADD COLUMN \"c\" INT NOT NULL;\nCREATE INDEX \"i\" ON \"a\"(\"c\");");
        for (k, _) in all.char_indices() {
            let _ = one(&all[..k]);
        }
    }

    /// SQL-ish fragments that reach every statement shape and action.
    fn fragment() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "ALTER ",
            "TABLE ",
            "TYPE ",
            "DOMAIN ",
            "VIEW ",
            "MATERIALIZED ",
            "INDEX ",
            "CREATE ",
            "DROP ",
            "UNIQUE ",
            "CONCURRENTLY ",
            "ON ",
            "ONLY ",
            "IF ",
            "EXISTS ",
            "NOT ",
            "NULL ",
            "VALID ",
            "ADD ",
            "COLUMN ",
            "CONSTRAINT ",
            "FOREIGN ",
            "KEY ",
            "REFERENCES ",
            "RENAME ",
            "TO ",
            "VALUE ",
            "ATTRIBUTE ",
            "SET ",
            "DATA ",
            "DEFAULT ",
            "GENERATED ",
            "AS ",
            "ENUM ",
            "serial ",
            "t ",
            "u ",
            "\"T\" ",
            "public.",
            ".",
            ", ",
            "(",
            ")",
            "*",
            "'a' ",
            "'b' ",
            "E'\\'' ",
            "$$ DROP TABLE t; $$",
            "; ",
            ";\n",
            "-- sluice:allow drop-table -- ok\n",
            "-- sluice:allow-file rename -- x\n",
            "/* sluice:allow nope */",
            "-- sluice:allow\n",
            "\"",
            "'",
            "/*",
            "é",
            "\n",
        ])
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn never_panics_on_arbitrary_text(s in any::<String>()) {
            let _ = run(&[("m", &s, true)], None);
        }

        #[test]
        fn never_panics_on_sqlish_text(
            a in prop::collection::vec(fragment(), 0..60),
            b in prop::collection::vec(fragment(), 0..60),
        ) {
            let (a, b) = (a.concat(), b.concat());
            for server in [None, Some(11), Some(16)] {
                let r = run(&[("a", &a, true), ("b", &b, false)], server);
                for f in &r.findings {
                    prop_assert!(f.line >= 1);
                    prop_assert!(f.statement.chars().count() <= 120);
                    prop_assert!(!f.message.contains(['\n', '\r']));
                    prop_assert!(!f.statement.contains(['\n', '\r']));
                }
            }
        }
    }

    /// Lints the shared corpora and prints per-corpus, per-rule counts: per
    /// file (each migration its own slice, comparable with squawk), the same
    /// for a PostgreSQL 16 target, and as one slice per corpus. With SLUICE_LINT_OUT set, writes the per-file
    /// findings there as JSON lines.
    #[test]
    #[ignore = "needs ../shared/corpora"]
    fn corpora() {
        use std::fmt::Write as _;
        let root = std::env::var("SLUICE_CORPORA").unwrap_or_else(|_| {
            concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/corpora").to_string()
        });
        let mut corpora: Vec<_> = std::fs::read_dir(&root)
            .unwrap_or_else(|e| panic!("reading {root}: {e}"))
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("migrations").is_dir())
            .collect();
        corpora.sort_by_key(|e| e.file_name());
        assert!(!corpora.is_empty(), "no corpora in {root}");
        let mut out = String::new();
        let mut jsonl = String::new();
        for corpus in corpora {
            let cname = corpus.file_name().to_string_lossy().into_owned();
            let mut dirs: Vec<_> = std::fs::read_dir(corpus.path().join("migrations"))
                .unwrap_or_else(|e| panic!("{cname}: {e}"))
                .filter_map(|e| e.ok())
                .filter(|e| e.path().join("migration.sql").is_file())
                .collect();
            dirs.sort_by(|a, b| {
                a.file_name()
                    .as_encoded_bytes()
                    .cmp(b.file_name().as_encoded_bytes())
            });
            let files: Vec<(String, String, bool)> = dirs
                .iter()
                .map(|d| {
                    let sql = std::fs::read_to_string(d.path().join("migration.sql"))
                        .unwrap_or_else(|e| panic!("{cname}: {e}"));
                    let upper = sql.to_ascii_uppercase();
                    let in_tx = !(upper.contains("CREATE INDEX CONCURRENTLY")
                        || upper.contains("BEGIN;")
                        || upper.contains("COMMIT;"));
                    let name = d.file_name().to_string_lossy().into_owned();
                    (name, sql, in_tx)
                })
                .collect();
            let borrowed: Vec<(&str, &str, bool)> = files
                .iter()
                .map(|(n, s, t)| (n.as_str(), s.as_str(), *t))
                .collect();
            let options = LintOptions { server_major: None };
            let pg16 = LintOptions {
                server_major: Some(16),
            };
            let mut per_file: HashMap<Rule, usize> = HashMap::new();
            let mut per_file_16: HashMap<Rule, usize> = HashMap::new();
            let mut problems = 0;
            for m in &borrowed {
                for f in lint(std::slice::from_ref(m), pg16).findings {
                    *per_file_16.entry(f.rule).or_default() += 1;
                }
                let r = lint(std::slice::from_ref(m), options);
                for f in &r.findings {
                    *per_file.entry(f.rule).or_default() += 1;
                    let line = serde_json::json!({
                        "corpus": cname, "migration": f.migration, "line": f.line,
                        "rule": f.rule, "message": f.message,
                    });
                    let _ = writeln!(jsonl, "{line}");
                }
                problems += r.problems.len();
            }
            let whole = lint(&borrowed, options);
            let mut slice: HashMap<Rule, usize> = HashMap::new();
            for f in &whole.findings {
                *slice.entry(f.rule).or_default() += 1;
            }
            let _ = writeln!(
                out,
                "{cname}: {} migrations, {problems} silencing problems",
                borrowed.len()
            );
            for rule in Rule::ALL {
                let count = |m: &HashMap<Rule, usize>| m.get(&rule).copied().unwrap_or(0);
                let _ = writeln!(
                    out,
                    "  {:<32} per-file {:>4}   per-file-pg16 {:>4}   whole-slice {:>4}",
                    rule.id(),
                    count(&per_file),
                    count(&per_file_16),
                    count(&slice)
                );
            }
        }
        println!("{out}");
        if let Ok(path) = std::env::var("SLUICE_LINT_OUT") {
            std::fs::write(&path, jsonl).unwrap_or_else(|e| panic!("{path}: {e}"));
        }
    }
}
