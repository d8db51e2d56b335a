//! Decides how a migration file must be run with respect to transactions, and
//! extracts the facts a resumed apply needs about non-transactional statements.
//!
//! PostgreSQL refuses some statements inside a transaction block (e.g. `CREATE
//! INDEX CONCURRENTLY`), some files manage their own transactions (`BEGIN` /
//! `COMMIT`), and everything else is best wrapped in one transaction so it
//! applies atomically. All matching is done on significant tokens from the
//! lexer, so keywords inside strings, comments or dollar-quoted bodies never
//! count, and comments between keywords never hide one.

use super::lexer::{
    quoted_ident_value, string_literal_value, tokenize, Statement, Token, TokenKind,
};

/// How the runner must execute a migration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TxMode {
    /// Wrap the whole file in one transaction (the safe default).
    Transactional,
    /// The file contains its own `BEGIN`/`COMMIT`/`ROLLBACK`; run it as is.
    SelfTransacting,
    /// The file contains something that cannot run in a transaction block;
    /// run statements one by one in autocommit mode.
    NonTransactional,
}

/// What a single statement means for transaction handling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatementKind {
    /// Only comments, whitespace or a bare `;`: nothing to execute.
    Empty,
    /// `BEGIN [WORK|TRANSACTION] [modes]` or `START TRANSACTION`.
    Begin,
    /// `COMMIT`, `END [WORK|TRANSACTION]`, `COMMIT AND [NO] CHAIN`, and
    /// `PREPARE TRANSACTION 'id'` (which also ends the current transaction).
    Commit,
    /// `ROLLBACK` or `ABORT` (not `ROLLBACK TO [SAVEPOINT] x`).
    Rollback,
    /// A statement PostgreSQL refuses inside a transaction block; the string
    /// names the construct, e.g. `"CREATE INDEX CONCURRENTLY"`.
    NoTransaction(&'static str),
    /// Anything else.
    Regular,
}

/// The statement's significant tokens, for positional keyword matching.
fn sig_tokens<'t, 'a>(stmt: &'t Statement<'a>) -> Vec<&'t Token<'a>> {
    stmt.significant().collect()
}

/// Whether `sig[i]` is the unquoted keyword `kw` (case-insensitive).
fn is_kw(sig: &[&Token], i: usize, kw: &str) -> bool {
    sig.get(i)
        .is_some_and(|t| t.kind == TokenKind::Word && t.text.eq_ignore_ascii_case(kw))
}

/// Whether `sig[i]` is the punctuation character `p`.
fn is_punct(sig: &[&Token], i: usize, p: &str) -> bool {
    sig.get(i)
        .is_some_and(|t| t.kind == TokenKind::Punct && t.text == p)
}

/// Index of the first word in `sig[from..]` equal to `kw`.
fn find_kw(sig: &[&Token], from: usize, kw: &str) -> Option<usize> {
    (from..sig.len()).find(|&i| is_kw(sig, i, kw))
}

/// Skips a parenthesised option list starting at `sig[i]` (if any) and
/// returns the index after its closing parenthesis.
fn skip_parens(sig: &[&Token], i: usize) -> usize {
    if !is_punct(sig, i, "(") {
        return i;
    }
    let mut depth = 0usize;
    for (j, _) in sig.iter().enumerate().skip(i) {
        if is_punct(sig, j, "(") {
            depth += 1;
        } else if is_punct(sig, j, ")") {
            depth -= 1;
            if depth == 0 {
                return j + 1;
            }
        }
    }
    sig.len()
}

/// Classifies one statement by its leading keywords.
pub fn statement_kind(stmt: &Statement) -> StatementKind {
    use StatementKind::*;
    if stmt.is_empty() {
        return Empty;
    }
    let sig = sig_tokens(stmt);
    let first = match sig.first() {
        Some(t) if t.kind == TokenKind::Word => t.text.to_ascii_uppercase(),
        _ => return Regular,
    };
    match first.as_str() {
        // `BEGIN ATOMIC` only occurs inside routine bodies; be safe anyway.
        "BEGIN" if is_kw(&sig, 1, "ATOMIC") => Regular,
        "BEGIN" => Begin,
        "START" if is_kw(&sig, 1, "TRANSACTION") => Begin,
        // COMMIT/ROLLBACK PREPARED act on a prepared transaction, not the
        // current one, and PostgreSQL refuses them inside a transaction block.
        "COMMIT" if is_kw(&sig, 1, "PREPARED") => NoTransaction("COMMIT PREPARED"),
        "COMMIT" | "END" => Commit,
        "ROLLBACK" if is_kw(&sig, 1, "PREPARED") => NoTransaction("ROLLBACK PREPARED"),
        // ROLLBACK [WORK|TRANSACTION] TO [SAVEPOINT] name
        "ROLLBACK" if is_kw(&sig, 1, "TO") || is_kw(&sig, 2, "TO") => Regular,
        "ROLLBACK" | "ABORT" => Rollback,
        "PREPARE"
            if is_kw(&sig, 1, "TRANSACTION")
                && sig
                    .get(2)
                    .is_some_and(|t| t.kind == TokenKind::StringLiteral) =>
        {
            Commit
        }
        "VACUUM" => NoTransaction("VACUUM"),
        "CREATE" => create_kind(&sig),
        "DROP" => drop_kind(&sig),
        "REINDEX" => reindex_kind(&sig),
        "ALTER" => alter_kind(&sig),
        "CLUSTER" => {
            // CLUSTER [VERBOSE | (options)] with no table reclusters the whole
            // database and is refused inside a transaction block.
            let mut i = skip_parens(&sig, 1);
            if is_kw(&sig, i, "VERBOSE") {
                i += 1;
            }
            if sig[i.min(sig.len())..]
                .iter()
                .all(|t| t.kind == TokenKind::Semicolon)
            {
                NoTransaction("CLUSTER without a table")
            } else {
                Regular
            }
        }
        "DISCARD" if is_kw(&sig, 1, "ALL") => NoTransaction("DISCARD ALL"),
        _ => Regular,
    }
}

/// `CREATE ...` statements that cannot run in a transaction block.
fn create_kind(sig: &[&Token]) -> StatementKind {
    let i = if is_kw(sig, 1, "UNIQUE") { 2 } else { 1 };
    if is_kw(sig, i, "INDEX") && is_kw(sig, i + 1, "CONCURRENTLY") {
        return StatementKind::NoTransaction("CREATE INDEX CONCURRENTLY");
    }
    if is_kw(sig, 1, "DATABASE") {
        return StatementKind::NoTransaction("CREATE DATABASE");
    }
    if is_kw(sig, 1, "TABLESPACE") {
        return StatementKind::NoTransaction("CREATE TABLESPACE");
    }
    if is_kw(sig, 1, "SUBSCRIPTION") {
        // Refused in a transaction when it creates a replication slot (the
        // default); running it outside one is always safe.
        return StatementKind::NoTransaction("CREATE SUBSCRIPTION");
    }
    StatementKind::Regular
}

/// `DROP ...` statements that cannot run in a transaction block.
fn drop_kind(sig: &[&Token]) -> StatementKind {
    if is_kw(sig, 1, "INDEX") && is_kw(sig, 2, "CONCURRENTLY") {
        return StatementKind::NoTransaction("DROP INDEX CONCURRENTLY");
    }
    if is_kw(sig, 1, "DATABASE") {
        return StatementKind::NoTransaction("DROP DATABASE");
    }
    if is_kw(sig, 1, "TABLESPACE") {
        return StatementKind::NoTransaction("DROP TABLESPACE");
    }
    if is_kw(sig, 1, "SUBSCRIPTION") {
        return StatementKind::NoTransaction("DROP SUBSCRIPTION");
    }
    StatementKind::Regular
}

/// `REINDEX [(options)] target [CONCURRENTLY] name`.
fn reindex_kind(sig: &[&Token]) -> StatementKind {
    let i = skip_parens(sig, 1);
    let target = match sig.get(i) {
        Some(t) if t.kind == TokenKind::Word => t.text.to_ascii_uppercase(),
        _ => return StatementKind::Regular,
    };
    let known = matches!(
        target.as_str(),
        "INDEX" | "TABLE" | "SCHEMA" | "DATABASE" | "SYSTEM"
    );
    if known && is_kw(sig, i + 1, "CONCURRENTLY") {
        return StatementKind::NoTransaction("REINDEX CONCURRENTLY");
    }
    match target.as_str() {
        "SCHEMA" => StatementKind::NoTransaction("REINDEX SCHEMA"),
        "DATABASE" => StatementKind::NoTransaction("REINDEX DATABASE"),
        "SYSTEM" => StatementKind::NoTransaction("REINDEX SYSTEM"),
        _ => StatementKind::Regular,
    }
}

/// `ALTER ...` statements that cannot run in a transaction block.
fn alter_kind(sig: &[&Token]) -> StatementKind {
    use StatementKind::*;
    if is_kw(sig, 1, "SYSTEM") {
        return NoTransaction("ALTER SYSTEM");
    }
    if is_kw(sig, 1, "DATABASE") {
        let set_tablespace =
            (2..sig.len()).any(|i| is_kw(sig, i, "SET") && is_kw(sig, i + 1, "TABLESPACE"));
        if set_tablespace {
            return NoTransaction("ALTER DATABASE ... SET TABLESPACE");
        }
    }
    if is_kw(sig, 1, "SUBSCRIPTION") {
        // REFRESH PUBLICATION, and SET/ADD/DROP PUBLICATION with the default
        // refresh = true, are refused inside a transaction block.
        if find_kw(sig, 2, "REFRESH").is_some() {
            return NoTransaction("ALTER SUBSCRIPTION ... REFRESH PUBLICATION");
        }
        if find_kw(sig, 2, "PUBLICATION").is_some() {
            return NoTransaction("ALTER SUBSCRIPTION ... PUBLICATION");
        }
    }
    if is_kw(sig, 1, "TABLE") {
        let detach =
            (2..sig.len()).find(|&i| is_kw(sig, i, "DETACH") && is_kw(sig, i + 1, "PARTITION"));
        if let Some(d) = detach {
            if find_kw(sig, d + 2, "CONCURRENTLY").is_some() {
                return NoTransaction("ALTER TABLE ... DETACH PARTITION CONCURRENTLY");
            }
        }
    }
    Regular
}

/// What a non-transactional statement does, so a resumed apply can tell
/// whether it already took effect before an interruption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// `CREATE [UNIQUE] INDEX [CONCURRENTLY] [IF NOT EXISTS] name ON table`.
    /// Names are as PostgreSQL stores them (unquoted → lowercased, quoted →
    /// exact, truncated to 63 bytes). An index always lives in its table's
    /// schema, so `schema` is the table's qualifier (`None`: search_path).
    CreateIndex {
        /// Schema of the indexed table, if qualified.
        schema: Option<String>,
        /// The index name.
        name: String,
        /// Whether `IF NOT EXISTS` was given.
        if_not_exists: bool,
    },
    /// `DROP INDEX [CONCURRENTLY] [IF EXISTS] [schema.]name` (first of a list).
    DropIndex {
        /// The schema qualifier, if any.
        schema: Option<String>,
        /// The index name.
        name: String,
    },
    /// `CREATE DATABASE name`.
    CreateDatabase {
        /// The database name.
        name: String,
    },
    /// `DROP DATABASE [IF EXISTS] name`.
    DropDatabase {
        /// The database name.
        name: String,
    },
    /// `ALTER TYPE [schema.]type ADD VALUE [IF NOT EXISTS] 'label'`.
    AddEnumValue {
        /// The schema qualifier, if any.
        schema: Option<String>,
        /// The enum type name.
        type_name: String,
        /// The decoded label.
        label: String,
    },
    /// VACUUM, ANALYZE, REINDEX, CLUSTER, ALTER SYSTEM: safe to run again.
    Rerunnable,
}

/// PostgreSQL's identifier length limit (NAMEDATALEN - 1) in bytes.
const MAX_IDENT_BYTES: usize = 63;

/// The stored form of an identifier token: unquoted words are ASCII-lowercased
/// (as PostgreSQL does), quoted ones kept exact; both truncated to 63 bytes.
fn ident_value(tok: &Token) -> Option<String> {
    let mut s = match tok.kind {
        TokenKind::Word => tok.text.to_ascii_lowercase(),
        TokenKind::QuotedIdent => quoted_ident_value(tok.text)?,
        _ => return None,
    };
    if s.len() > MAX_IDENT_BYTES {
        let mut end = MAX_IDENT_BYTES;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    Some(s)
}

/// A possibly qualified name `a[.b[.c]]` at `sig[i]`: its parts and the index
/// after it.
fn qualified_name(sig: &[&Token], i: usize) -> Option<(Vec<String>, usize)> {
    let mut parts = vec![ident_value(sig.get(i)?)?];
    let mut j = i + 1;
    while is_punct(sig, j, ".") {
        match sig.get(j + 1).and_then(|t| ident_value(t)) {
            Some(p) => parts.push(p),
            None => break,
        }
        j += 2;
    }
    Some((parts, j))
}

/// Splits qualified-name parts into (schema, name).
fn schema_and_name(mut parts: Vec<String>) -> Option<(Option<String>, String)> {
    let name = parts.pop()?;
    Some((parts.pop(), name))
}

/// Details of an `ALTER TYPE ... ADD VALUE` statement.
struct AddValue<'t, 'a> {
    schema: Option<String>,
    type_name: String,
    label: String,
    /// Tokens spelling the type name, for messages.
    type_tokens: &'t [&'t Token<'a>],
    /// The label literal, for messages.
    label_token: &'t Token<'a>,
}

/// Parses `ALTER TYPE name ADD VALUE [IF NOT EXISTS] 'label' ...`.
fn add_value<'t, 'a>(sig: &'t [&'t Token<'a>]) -> Option<AddValue<'t, 'a>> {
    if !(is_kw(sig, 0, "ALTER") && is_kw(sig, 1, "TYPE")) {
        return None;
    }
    let (parts, mut i) = qualified_name(sig, 2)?;
    let type_tokens = &sig[2..i];
    if !(is_kw(sig, i, "ADD") && is_kw(sig, i + 1, "VALUE")) {
        return None;
    }
    i += 2;
    if is_kw(sig, i, "IF") && is_kw(sig, i + 1, "NOT") && is_kw(sig, i + 2, "EXISTS") {
        i += 3;
    }
    let label_token = *sig.get(i)?;
    let label = string_literal_value(label_token)?;
    let (schema, type_name) = schema_and_name(parts)?;
    Some(AddValue {
        schema,
        type_name,
        label,
        type_tokens,
        label_token,
    })
}

/// Describes what a statement does, when that can be checked against the
/// database after an interrupted apply; `None` when there is nothing to
/// detect (e.g. `CREATE INDEX CONCURRENTLY ON t (x)` without a name).
pub fn effect(stmt: &Statement) -> Option<Effect> {
    let sig = sig_tokens(stmt);
    let first = sig.first().filter(|t| t.kind == TokenKind::Word)?;
    match first.text.to_ascii_uppercase().as_str() {
        "VACUUM" | "ANALYZE" | "ANALYSE" | "REINDEX" | "CLUSTER" => Some(Effect::Rerunnable),
        "ALTER" if is_kw(&sig, 1, "SYSTEM") => Some(Effect::Rerunnable),
        "ALTER" => add_value(&sig).map(|av| Effect::AddEnumValue {
            schema: av.schema,
            type_name: av.type_name,
            label: av.label,
        }),
        "CREATE" if is_kw(&sig, 1, "DATABASE") => {
            let (_, name) = schema_and_name(qualified_name(&sig, 2)?.0)?;
            Some(Effect::CreateDatabase { name })
        }
        "CREATE" => create_index_effect(&sig),
        "DROP" if is_kw(&sig, 1, "DATABASE") => {
            let mut i = 2;
            if is_kw(&sig, i, "IF") && is_kw(&sig, i + 1, "EXISTS") {
                i += 2;
            }
            let (_, name) = schema_and_name(qualified_name(&sig, i)?.0)?;
            Some(Effect::DropDatabase { name })
        }
        "DROP" if is_kw(&sig, 1, "INDEX") => {
            let mut i = 2;
            if is_kw(&sig, i, "CONCURRENTLY") {
                i += 1;
            }
            if is_kw(&sig, i, "IF") && is_kw(&sig, i + 1, "EXISTS") {
                i += 2;
            }
            let (schema, name) = schema_and_name(qualified_name(&sig, i)?.0)?;
            Some(Effect::DropIndex { schema, name })
        }
        _ => None,
    }
}

/// `CREATE [UNIQUE] INDEX [CONCURRENTLY] [IF NOT EXISTS] name ON [ONLY] table`.
fn create_index_effect(sig: &[&Token]) -> Option<Effect> {
    let mut i = if is_kw(sig, 1, "UNIQUE") { 2 } else { 1 };
    if !is_kw(sig, i, "INDEX") {
        return None;
    }
    i += 1;
    if is_kw(sig, i, "CONCURRENTLY") {
        i += 1;
    }
    let if_not_exists =
        is_kw(sig, i, "IF") && is_kw(sig, i + 1, "NOT") && is_kw(sig, i + 2, "EXISTS");
    if if_not_exists {
        i += 3;
    }
    // Without a name PostgreSQL picks one; `ON` is reserved, so an unquoted
    // `on` here is always the keyword.
    if is_kw(sig, i, "ON") {
        return None;
    }
    let name = ident_value(sig.get(i)?)?;
    i += 1;
    if !is_kw(sig, i, "ON") {
        return None;
    }
    i += 1;
    if is_kw(sig, i, "ONLY") {
        i += 1;
    }
    let schema = qualified_name(sig, i).and_then(|(parts, _)| schema_and_name(parts)?.0);
    Some(Effect::CreateIndex {
        schema,
        name,
        if_not_exists,
    })
}

/// The transaction mode of a migration file and why it was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    /// How to run the file.
    pub mode: TxMode,
    /// For non-default modes, the first deciding statement, e.g.
    /// `line 3: CREATE INDEX CONCURRENTLY cannot run inside a transaction block`.
    pub reason: Option<String>,
}

/// Decides how to run a migration file split into `statements` from
/// `source` (the text given to `split`, used for line numbers).
///
/// Own transaction control wins (`SelfTransacting`), since wrapping such a
/// file would break it; otherwise any statement PostgreSQL refuses inside a
/// transaction block, or an `ALTER TYPE ... ADD VALUE` whose new label is used
/// later in the same file (PostgreSQL forbids using a new enum value in the
/// transaction that added it), makes it `NonTransactional`.
pub fn classify(source: &str, statements: &[Statement]) -> Classification {
    for stmt in statements {
        let kind = statement_kind(stmt);
        if matches!(
            kind,
            StatementKind::Begin | StatementKind::Commit | StatementKind::Rollback
        ) {
            let words = stmt.keywords(2);
            let construct = match words.first().map(String::as_str) {
                Some("START" | "PREPARE") => words.join(" "),
                Some(w) => w.to_string(),
                None => format!("{kind:?}").to_ascii_uppercase(),
            };
            return Classification {
                mode: TxMode::SelfTransacting,
                reason: Some(format!(
                    "line {}: own transaction control ({construct})",
                    stmt.first_line(source)
                )),
            };
        }
    }
    for (idx, stmt) in statements.iter().enumerate() {
        if let StatementKind::NoTransaction(what) = statement_kind(stmt) {
            return Classification {
                mode: TxMode::NonTransactional,
                reason: Some(format!(
                    "line {}: {what} cannot run inside a transaction block",
                    stmt.first_line(source)
                )),
            };
        }
        let sig = sig_tokens(stmt);
        if let Some(av) = add_value(&sig) {
            let used = statements[idx + 1..].iter().find_map(|later| {
                // The new label of a later ADD VALUE (possibly for another
                // type) is a name being created, not a use of this value.
                let later_sig = sig_tokens(later);
                let own_label = add_value(&later_sig).map(|l| l.label_token.start);
                later
                    .tokens
                    .iter()
                    .filter(|t| Some(t.start) != own_label)
                    .find_map(|t| label_use(t, &av.label))
            });
            if let Some(offset) = used {
                let type_text: String = av.type_tokens.iter().map(|t| t.text).collect();
                return Classification {
                    mode: TxMode::NonTransactional,
                    reason: Some(format!(
                        "line {}: ALTER TYPE {type_text} ADD VALUE {} is used at line {}",
                        stmt.first_line(source),
                        av.label_token.text,
                        super::lexer::line_col(source, offset).0
                    )),
                };
            }
        }
    }
    Classification {
        mode: TxMode::Transactional,
        reason: None,
    }
}

/// Byte offset of a string literal equal to `label` in `tok`, looking inside
/// dollar-quoted bodies too (a DO block or SQL function body using the label
/// runs, or is validated, in the same transaction).
fn label_use(tok: &Token, label: &str) -> Option<usize> {
    match tok.kind {
        TokenKind::StringLiteral => {
            (string_literal_value(tok).as_deref() == Some(label)).then_some(tok.start)
        }
        TokenKind::DollarString => {
            // Opening delimiter is `$tag$`; the body follows it.
            let open = tok.text.get(1..)?.find('$')? + 2;
            let close = if tok.terminated { open } else { 0 };
            let end = tok.text.len().saturating_sub(close).max(open);
            let body = tok.text.get(open..end)?;
            tokenize(body)
                .iter()
                .find_map(|inner| label_use(inner, label).map(|off| tok.start + open + off))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::lexer::split;
    use super::*;

    fn kind(sql: &str) -> StatementKind {
        let stmts = split(sql);
        assert!(
            stmts.iter().filter(|s| !s.is_empty()).count() <= 1,
            "{sql:?} should be one statement"
        );
        stmts
            .iter()
            .find(|s| !s.is_empty())
            .map_or(StatementKind::Empty, statement_kind)
    }

    fn eff(sql: &str) -> Option<Effect> {
        let stmts = split(sql);
        effect(&stmts[0])
    }

    fn cls(sql: &str) -> Classification {
        classify(sql, &split(sql))
    }

    #[test]
    fn empty_statements() {
        assert_eq!(kind("-- just a comment\n"), StatementKind::Empty);
        assert_eq!(kind("/* x */ ;"), StatementKind::Empty);
        assert_eq!(kind("   "), StatementKind::Empty);
        assert_eq!(statement_kind(&split(";")[0]), StatementKind::Empty);
    }

    #[test]
    fn begin_forms() {
        for sql in [
            "BEGIN;",
            "begin",
            "BEGIN WORK;",
            "BEGIN TRANSACTION ISOLATION LEVEL SERIALIZABLE;",
            "START TRANSACTION;",
            "start transaction read only;",
            "/* c */ BEGIN -- x\n;",
        ] {
            assert_eq!(kind(sql), StatementKind::Begin, "{sql}");
        }
        assert_eq!(
            statement_kind(&split("BEGIN ATOMIC SELECT 1; END")[0]),
            StatementKind::Regular
        );
        assert_eq!(kind("START"), StatementKind::Regular);
    }

    #[test]
    fn commit_forms() {
        for sql in [
            "COMMIT;",
            "commit work;",
            "COMMIT TRANSACTION;",
            "COMMIT AND NO CHAIN;",
            "COMMIT AND CHAIN;",
            "END;",
            "end transaction;",
            "PREPARE TRANSACTION 'tx1';",
        ] {
            assert_eq!(kind(sql), StatementKind::Commit, "{sql}");
        }
        assert_eq!(
            kind("COMMIT PREPARED 'tx1';"),
            StatementKind::NoTransaction("COMMIT PREPARED")
        );
        assert_eq!(kind("PREPARE q AS SELECT 1;"), StatementKind::Regular);
    }

    #[test]
    fn rollback_forms() {
        for sql in [
            "ROLLBACK;",
            "rollback work;",
            "ROLLBACK AND CHAIN;",
            "ABORT;",
            "abort transaction;",
        ] {
            assert_eq!(kind(sql), StatementKind::Rollback, "{sql}");
        }
        for sql in [
            "ROLLBACK TO sp;",
            "ROLLBACK TO SAVEPOINT sp;",
            "ROLLBACK WORK TO SAVEPOINT sp;",
            "SAVEPOINT sp;",
            "RELEASE SAVEPOINT sp;",
        ] {
            assert_eq!(kind(sql), StatementKind::Regular, "{sql}");
        }
        assert_eq!(
            kind("ROLLBACK PREPARED 'tx1';"),
            StatementKind::NoTransaction("ROLLBACK PREPARED")
        );
    }

    #[test]
    fn no_transaction_statements() {
        use StatementKind::NoTransaction as NT;
        let cases = [
            (
                "CREATE INDEX CONCURRENTLY i ON t (a);",
                "CREATE INDEX CONCURRENTLY",
            ),
            (
                "create unique index concurrently if not exists i on t (a);",
                "CREATE INDEX CONCURRENTLY",
            ),
            (
                "CREATE /* x */ INDEX -- y\n CONCURRENTLY ON t (a);",
                "CREATE INDEX CONCURRENTLY",
            ),
            (
                "DROP INDEX CONCURRENTLY IF EXISTS \"i\";",
                "DROP INDEX CONCURRENTLY",
            ),
            ("REINDEX INDEX CONCURRENTLY i;", "REINDEX CONCURRENTLY"),
            (
                "REINDEX (VERBOSE) TABLE CONCURRENTLY t;",
                "REINDEX CONCURRENTLY",
            ),
            (
                "reindex (verbose, tablespace x) index concurrently i;",
                "REINDEX CONCURRENTLY",
            ),
            ("REINDEX SCHEMA public;", "REINDEX SCHEMA"),
            ("REINDEX DATABASE app;", "REINDEX DATABASE"),
            ("REINDEX SYSTEM;", "REINDEX SYSTEM"),
            ("VACUUM;", "VACUUM"),
            ("VACUUM (ANALYZE, VERBOSE) t;", "VACUUM"),
            ("vacuum full t;", "VACUUM"),
            ("CREATE DATABASE app;", "CREATE DATABASE"),
            ("DROP DATABASE IF EXISTS app WITH (FORCE);", "DROP DATABASE"),
            ("ALTER SYSTEM SET work_mem = '64MB';", "ALTER SYSTEM"),
            ("CREATE TABLESPACE ts LOCATION '/x';", "CREATE TABLESPACE"),
            ("DROP TABLESPACE ts;", "DROP TABLESPACE"),
            (
                "ALTER DATABASE app SET TABLESPACE ts;",
                "ALTER DATABASE ... SET TABLESPACE",
            ),
            (
                "CREATE SUBSCRIPTION s CONNECTION 'x' PUBLICATION p;",
                "CREATE SUBSCRIPTION",
            ),
            ("DROP SUBSCRIPTION s;", "DROP SUBSCRIPTION"),
            (
                "ALTER SUBSCRIPTION s REFRESH PUBLICATION;",
                "ALTER SUBSCRIPTION ... REFRESH PUBLICATION",
            ),
            (
                "ALTER SUBSCRIPTION s SET PUBLICATION p;",
                "ALTER SUBSCRIPTION ... PUBLICATION",
            ),
            (
                "ALTER TABLE p DETACH PARTITION c CONCURRENTLY;",
                "ALTER TABLE ... DETACH PARTITION CONCURRENTLY",
            ),
            ("CLUSTER;", "CLUSTER without a table"),
            ("CLUSTER VERBOSE;", "CLUSTER without a table"),
            ("DISCARD ALL;", "DISCARD ALL"),
        ];
        for (sql, what) in cases {
            assert_eq!(kind(sql), NT(what), "{sql}");
        }
    }

    #[test]
    fn regular_statements() {
        for sql in [
            "CREATE INDEX i ON t (a);",
            "CREATE INDEX \"concurrently\" ON t (a);",
            "DROP INDEX i;",
            "REINDEX INDEX i;",
            "REINDEX (VERBOSE) TABLE t;",
            "ANALYZE t;",
            "ALTER DATABASE app SET search_path = x;",
            "ALTER DATABASE app SET default_tablespace = 'ts';",
            "ALTER SUBSCRIPTION s DISABLE;",
            "ALTER TABLE p DETACH PARTITION c;",
            "ALTER TYPE \"Role\" ADD VALUE 'ADMIN';",
            "CLUSTER t USING i;",
            "DISCARD PLANS;",
            "REFRESH MATERIALIZED VIEW CONCURRENTLY v;",
            "SELECT 'VACUUM; CREATE INDEX CONCURRENTLY';",
            "-- VACUUM\nSELECT 1;",
            "DO $$ BEGIN COMMIT; END $$;",
            "\"BEGIN\";",
            "(SELECT 1);",
            "CREATE TABLE \"vacuum\" (id int);",
        ] {
            assert_eq!(kind(sql), StatementKind::Regular, "{sql}");
        }
    }

    #[test]
    fn create_index_effects() {
        assert_eq!(
            eff("CREATE INDEX CONCURRENTLY \"Users_Email_idx\" ON \"public\".\"Users\" (email);"),
            Some(Effect::CreateIndex {
                schema: Some("public".into()),
                name: "Users_Email_idx".into(),
                if_not_exists: false
            })
        );
        assert_eq!(
            eff("create unique index concurrently if not exists Users_Email ON ONLY users (email)"),
            Some(Effect::CreateIndex {
                schema: None,
                name: "users_email".into(),
                if_not_exists: true
            })
        );
        assert_eq!(
            eff("CREATE INDEX /* c */ i ON s.t (a);"),
            Some(Effect::CreateIndex {
                schema: Some("s".into()),
                name: "i".into(),
                if_not_exists: false
            })
        );
        assert_eq!(eff("CREATE INDEX CONCURRENTLY ON t (a);"), None);
        assert_eq!(eff("CREATE INDEX ON t (a);"), None);
        // Long names are truncated the way PostgreSQL stores them.
        let long = "a".repeat(70);
        match eff(&format!("CREATE INDEX {long} ON t (a);")) {
            Some(Effect::CreateIndex { name, .. }) => assert_eq!(name, "a".repeat(63)),
            other => panic!("unexpected {other:?}"),
        }
        let long = "é".repeat(40); // 80 bytes: cut at a char boundary
        match eff(&format!("CREATE INDEX \"{long}\" ON t (a);")) {
            Some(Effect::CreateIndex { name, .. }) => assert_eq!(name, "é".repeat(31)),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn drop_index_effects() {
        assert_eq!(
            eff("DROP INDEX CONCURRENTLY IF EXISTS \"traces_project_id_idx\";"),
            Some(Effect::DropIndex {
                schema: None,
                name: "traces_project_id_idx".into()
            })
        );
        assert_eq!(
            eff("drop index Public.\"My\"\"Idx\", other CASCADE;"),
            Some(Effect::DropIndex {
                schema: Some("public".into()),
                name: "My\"Idx".into()
            })
        );
        assert_eq!(
            eff("DROP INDEX U&\"d\\0061t\";"),
            Some(Effect::DropIndex {
                schema: None,
                name: "dat".into()
            })
        );
    }

    #[test]
    fn database_effects() {
        assert_eq!(
            eff("CREATE DATABASE \"App\" WITH OWNER x;"),
            Some(Effect::CreateDatabase { name: "App".into() })
        );
        assert_eq!(
            eff("drop database if exists App;"),
            Some(Effect::DropDatabase { name: "app".into() })
        );
        assert_eq!(
            eff("DROP DATABASE app WITH (FORCE);"),
            Some(Effect::DropDatabase { name: "app".into() })
        );
    }

    #[test]
    fn enum_value_effects() {
        assert_eq!(
            eff("ALTER TYPE \"Role\" ADD VALUE 'ADMIN';"),
            Some(Effect::AddEnumValue {
                schema: None,
                type_name: "Role".into(),
                label: "ADMIN".into()
            })
        );
        assert_eq!(
            eff("alter type public.mood add value if not exists E'it\\'s' BEFORE 'sad';"),
            Some(Effect::AddEnumValue {
                schema: Some("public".into()),
                type_name: "mood".into(),
                label: "it's".into()
            })
        );
        assert_eq!(eff("ALTER TYPE \"Role\" RENAME VALUE 'A' TO 'B';"), None);
        assert_eq!(eff("ALTER TYPE \"Role\" ADD VALUE;"), None);
        assert_eq!(eff("ALTER TABLE t ADD COLUMN c int;"), None);
    }

    #[test]
    fn rerunnable_effects() {
        for sql in [
            "VACUUM;",
            "vacuum analyze t;",
            "ANALYZE t;",
            "ANALYSE;",
            "REINDEX INDEX CONCURRENTLY i;",
            "ALTER SYSTEM SET x = 1;",
            "CLUSTER;",
        ] {
            assert_eq!(eff(sql), Some(Effect::Rerunnable), "{sql}");
        }
        assert_eq!(eff("SELECT 1;"), None);
        assert_eq!(eff("-- nothing"), None);
        assert_eq!(eff("CREATE TABLE t (id int);"), None);
    }

    #[test]
    fn classify_transactional() {
        let c = cls("CREATE TABLE t (id int);\nCREATE INDEX i ON t (id);\n");
        assert_eq!(
            c,
            Classification {
                mode: TxMode::Transactional,
                reason: None
            }
        );
        assert_eq!(cls("").mode, TxMode::Transactional);
        assert_eq!(cls("-- only a comment").mode, TxMode::Transactional);
        // BEGIN inside a DO block is plpgsql, not transaction control.
        let c = cls("DO $$\nBEGIN\n  PERFORM 1;\nEND $$;\n");
        assert_eq!(c.mode, TxMode::Transactional);
    }

    #[test]
    fn classify_self_transacting() {
        let sql = "-- x\nCREATE TABLE a (id int);\n\nBEGIN;\nCREATE INDEX CONCURRENTLY i ON a (id);\nCOMMIT;\n";
        let c = cls(sql);
        assert_eq!(c.mode, TxMode::SelfTransacting);
        assert_eq!(
            c.reason.as_deref(),
            Some("line 4: own transaction control (BEGIN)")
        );
        let c = cls("SELECT 1;\n  start   transaction;");
        assert_eq!(
            c.reason.as_deref(),
            Some("line 2: own transaction control (START TRANSACTION)")
        );
        let c = cls("SELECT 1;\n/* c */ COMMIT;");
        assert_eq!(
            c.reason.as_deref(),
            Some("line 2: own transaction control (COMMIT)")
        );
        assert_eq!(cls("ROLLBACK;").mode, TxMode::SelfTransacting);
        assert_eq!(
            cls("SAVEPOINT a; ROLLBACK TO a;").mode,
            TxMode::Transactional
        );
    }

    #[test]
    fn classify_non_transactional() {
        let sql = "CREATE TABLE a (id int);\n-- idx\n\nCREATE /* x */ INDEX\n CONCURRENTLY i ON a (id);\nVACUUM a;\n";
        let c = cls(sql);
        assert_eq!(c.mode, TxMode::NonTransactional);
        assert_eq!(
            c.reason.as_deref(),
            Some("line 4: CREATE INDEX CONCURRENTLY cannot run inside a transaction block")
        );
    }

    #[test]
    fn classify_add_value_used_later() {
        let sql = "-- AlterEnum\nALTER TYPE \"Role\" ADD VALUE 'ADMIN';\n\n\n\n\n\
                   UPDATE \"User\" SET role = 'ADMIN' WHERE id = 1;\n";
        let c = cls(sql);
        assert_eq!(c.mode, TxMode::NonTransactional);
        assert_eq!(
            c.reason.as_deref(),
            Some("line 2: ALTER TYPE \"Role\" ADD VALUE 'ADMIN' is used at line 7")
        );
        // Spelled differently but equal once decoded.
        let c = cls("ALTER TYPE s.r ADD VALUE IF NOT EXISTS 'it''s';\nSELECT E'it\\'s';");
        assert_eq!(c.mode, TxMode::NonTransactional);
        assert_eq!(
            c.reason.as_deref(),
            Some("line 1: ALTER TYPE s.r ADD VALUE 'it''s' is used at line 2")
        );
        // Used inside a DO block body.
        let sql = "ALTER TYPE r ADD VALUE 'X';\nDO $$\nBEGIN\n  UPDATE t SET c = 'X';\nEND $$;";
        let c = cls(sql);
        assert_eq!(c.mode, TxMode::NonTransactional);
        assert_eq!(
            c.reason.as_deref(),
            Some("line 1: ALTER TYPE r ADD VALUE 'X' is used at line 4")
        );
    }

    #[test]
    fn classify_add_value_not_used_later() {
        // Only used before, in a comment, as an identifier, or not at all.
        let sql = "SELECT 'ADMIN';\nALTER TYPE \"Role\" ADD VALUE 'ADMIN';\n-- 'ADMIN'\n\
                   ALTER TYPE \"Role\" ADD VALUE 'OWNER';\nSELECT \"ADMIN\", 'admin';\n";
        let c = cls(sql);
        assert_eq!(
            c,
            Classification {
                mode: TxMode::Transactional,
                reason: None
            }
        );
    }

    #[test]
    fn same_label_added_to_another_type_is_not_a_use() {
        // As in langfuse 20260721120000_add_boolean_score_widget_views.
        let sql = "ALTER TYPE \"A\" ADD VALUE 'X';\n\nALTER TYPE \"B\" ADD VALUE 'X';\n";
        assert_eq!(cls(sql).mode, TxMode::Transactional);
        // A later ADD VALUE positioned relative to the new label is
        // conservatively treated as a use of it.
        let sql = "ALTER TYPE a ADD VALUE 'X';\nALTER TYPE a ADD VALUE 'Y' AFTER 'X';\n";
        let c = cls(sql);
        assert_eq!(c.mode, TxMode::NonTransactional);
        assert_eq!(
            c.reason.as_deref(),
            Some("line 1: ALTER TYPE a ADD VALUE 'X' is used at line 2")
        );
    }

    #[test]
    fn self_transacting_beats_non_transactional() {
        let c = cls("CREATE INDEX CONCURRENTLY i ON t (a);\nBEGIN;\nSELECT 1;\nCOMMIT;");
        assert_eq!(c.mode, TxMode::SelfTransacting);
        assert_eq!(
            c.reason.as_deref(),
            Some("line 2: own transaction control (BEGIN)")
        );
    }

    #[test]
    fn first_deciding_statement_is_reported() {
        let sql = "ALTER TYPE r ADD VALUE 'X';\nVACUUM;\nSELECT 'X';";
        let c = cls(sql);
        assert_eq!(
            c.reason.as_deref(),
            Some("line 1: ALTER TYPE r ADD VALUE 'X' is used at line 3")
        );
    }

    #[test]
    fn tx_mode_serializes_snake_case() {
        assert_eq!(
            serde_json::to_string(&TxMode::SelfTransacting)
                .ok()
                .as_deref(),
            Some("\"self_transacting\"")
        );
        assert_eq!(
            serde_json::to_string(&TxMode::NonTransactional)
                .ok()
                .as_deref(),
            Some("\"non_transactional\"")
        );
        assert_eq!(
            serde_json::to_string(&TxMode::Transactional)
                .ok()
                .as_deref(),
            Some("\"transactional\"")
        );
    }

    #[test]
    fn begin_atomic_function_is_transactional() {
        let sql = "CREATE FUNCTION f() RETURNS int LANGUAGE sql\nBEGIN ATOMIC\n  SELECT 1;\n  SELECT 2;\nEND;\n";
        let stmts = split(sql);
        assert_eq!(stmts.iter().filter(|s| !s.is_empty()).count(), 1);
        assert_eq!(classify(sql, &stmts).mode, TxMode::Transactional);
    }

    /// Keyword-heavy fragments, so the positional matchers hit their edges.
    fn fragment() -> impl proptest::strategy::Strategy<Value = &'static str> {
        proptest::sample::select(vec![
            "CREATE ",
            "UNIQUE ",
            "INDEX ",
            "CONCURRENTLY ",
            "IF ",
            "NOT ",
            "EXISTS ",
            "ON ",
            "ONLY ",
            "DROP ",
            "ALTER ",
            "TYPE ",
            "ADD ",
            "VALUE ",
            "REINDEX ",
            "CLUSTER ",
            "DATABASE ",
            "SYSTEM ",
            "TABLE ",
            "DETACH ",
            "PARTITION ",
            "SUBSCRIPTION ",
            "BEGIN",
            "ATOMIC",
            "COMMIT",
            "ROLLBACK ",
            "TO ",
            "PREPARE ",
            "TRANSACTION ",
            "'X'",
            "E'\\'",
            "U&\"",
            "\"q\"",
            ".",
            "(",
            ")",
            ";",
            "$$",
            "/*",
            "*/",
            "--",
            "\n",
            "é",
            "x",
        ])
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        #[test]
        fn classification_never_panics_on_sqlish_input(
            parts in proptest::collection::vec(fragment(), 0..30)
        ) {
            let sql: String = parts.concat();
            let stmts = split(&sql);
            let c = classify(&sql, &stmts);
            proptest::prop_assert_eq!(c.reason.is_some(), c.mode != TxMode::Transactional);
            for s in &stmts {
                let _ = statement_kind(s);
                let _ = effect(s);
            }
        }

        #[test]
        fn classification_never_panics_on_arbitrary_input(sql in proptest::prelude::any::<String>()) {
            let stmts = split(&sql);
            let _ = classify(&sql, &stmts);
            for s in &stmts {
                let _ = effect(s);
            }
        }
    }

    /// Smoke test over real migration files when the shared corpora exist.
    #[test]
    fn real_corpora() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpora");
        let Ok(projects) = std::fs::read_dir(&root) else {
            return;
        };
        let mut seen = 0;
        for project in projects.flatten() {
            let Ok(migrations) = std::fs::read_dir(project.path().join("migrations")) else {
                continue;
            };
            for dir in migrations.flatten() {
                let file = dir.path().join("migration.sql");
                let Ok(sql) = std::fs::read_to_string(&file) else {
                    continue;
                };
                let stmts = split(&sql);
                let joined: String = stmts.iter().map(|s| s.text).collect();
                assert_eq!(joined, sql, "{}", file.display());
                let _ = classify(&sql, &stmts);
                for s in &stmts {
                    let _ = effect(s);
                }
                seen += 1;
            }
        }
        assert!(seen > 0, "no migration.sql found under {}", root.display());
        let mode = |rel: &str| {
            let sql =
                std::fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
            classify(&sql, &split(&sql))
        };
        let c = mode("langfuse/migrations/20240917183001_remove_covered_indexes_01/migration.sql");
        assert_eq!(c.mode, TxMode::NonTransactional, "{c:?}");
        let c =
            mode("langfuse/migrations/20240524165931_scores_source_enum_drop_review/migration.sql");
        assert_eq!(c.mode, TxMode::SelfTransacting, "{c:?}");
        let c = mode("documenso/migrations/20240205120648_create_delete_account/migration.sql");
        assert_eq!(c.mode, TxMode::Transactional, "{c:?}");
    }
}
