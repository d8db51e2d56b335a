//! Canonical schema model.
//!
//! Plain data, compared and serialized deterministically: every collection is a
//! `BTreeMap`/`BTreeSet` keyed by a qualified name, so two schemas taken from two
//! environments compare with `==` and serialize to byte-identical JSON when they
//! are the same (the daemon caches the model per release hash).
//!
//! Names are spelled the way PostgreSQL prints them (`quote_ident` rules):
//! `public.users`, `public."User"`, `"my schema".t`. A [`QName`] is always
//! `schema.name`; objects that live inside a table (columns, indexes,
//! constraints, triggers) are keyed by their own (quoted) name inside the
//! table, and named `schema.table.object` in diffs.
//!
//! Type names, defaults, index/constraint/view definitions are the server's own
//! rendering (`format_type`, `pg_get_expr`, `pg_get_indexdef`,
//! `pg_get_constraintdef`, `pg_get_viewdef`) produced with
//! `search_path = pg_catalog`, so every user object in them is schema-qualified
//! and the text does not depend on the session that introspected it.
//!
//! Indexes that back a PRIMARY KEY, UNIQUE or EXCLUDE constraint are modelled
//! only as the constraint (the constraint creates its index); they do not appear
//! again in [`Table::indexes`]. Objects inherited by partitions (cloned
//! constraints, attached partition indexes, cloned triggers) are modelled only on
//! the partitioned parent.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// `schema.name`, identifiers quoted as PostgreSQL's `quote_ident` would.
pub type QName = String;

/// Whole-database schema model.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schema {
    /// Schema (namespace) names, quoted.
    pub schemas: BTreeSet<String>,
    /// Installed extensions keyed by extension name (unquoted, as in `pg_extension`).
    pub extensions: BTreeMap<String, Extension>,
    /// Enum types: labels in sort order.
    pub enums: BTreeMap<QName, Vec<String>>,
    pub domains: BTreeMap<QName, Domain>,
    pub composites: BTreeMap<QName, Composite>,
    /// Free-standing and `serial`-owned sequences (identity sequences belong to
    /// their column and are not listed).
    pub sequences: BTreeMap<QName, Sequence>,
    /// Ordinary and partitioned tables, partitions included.
    pub tables: BTreeMap<QName, Table>,
    /// Views and materialized views.
    pub views: BTreeMap<QName, View>,
    /// Functions, procedures and aggregates keyed by qualified signature,
    /// e.g. `public.f(integer, text)` (argument types only).
    pub functions: BTreeMap<String, Function>,
    /// Triggers keyed by `schema.table.trigger`.
    pub triggers: BTreeMap<String, Trigger>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extension {
    pub schema: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Domain {
    /// Base type with modifiers (`format_type`).
    pub data_type: String,
    pub not_null: bool,
    pub default: Option<String>,
    /// Non-default collation, qualified (`pg_catalog."C"`).
    pub collation: Option<String>,
    /// CHECK constraints: name → `pg_get_constraintdef`.
    pub constraints: BTreeMap<String, String>,
    pub comment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Composite {
    /// Attributes in declaration order.
    pub attributes: Vec<CompositeAttribute>,
    pub comment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompositeAttribute {
    pub name: String,
    pub data_type: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sequence {
    pub data_type: String,
    pub start: i64,
    pub increment: i64,
    pub min_value: i64,
    pub max_value: i64,
    pub cache: i64,
    pub cycle: bool,
    /// `schema.table.column` for sequences owned by a column (serial).
    pub owned_by: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Table {
    /// Columns in `attnum` order. Compare by name with [`Table::column`] /
    /// [`Table::columns_by_name`]; physical order is not a schema difference.
    pub columns: Vec<Column>,
    /// For a partition: its parent and its bound (`FOR VALUES …` / `DEFAULT`).
    pub partition_of: Option<PartitionOf>,
    /// For a partitioned table: `pg_get_partkeydef`, e.g. `RANGE (created_at)`.
    pub partitioned_by: Option<String>,
    /// Indexes that do not back a constraint, keyed by (quoted) index name.
    pub indexes: BTreeMap<String, Index>,
    /// Constraints keyed by (quoted) constraint name.
    pub constraints: BTreeMap<String, Constraint>,
    pub comment: Option<String>,
    /// Row-level security: `disabled`, `enabled` or `forced` (also for the owner). Absent in
    /// schemas cached before it was read, which count as `disabled`.
    #[serde(default = "row_security_disabled")]
    pub row_security: String,
    /// Row-level security policies keyed by (quoted) name: `AS … FOR … TO … USING (…) WITH
    /// CHECK (…)`, the part of `CREATE POLICY` after `ON table`.
    #[serde(default)]
    pub policies: BTreeMap<String, String>,
}

fn row_security_disabled() -> String {
    ROW_SECURITY_DISABLED.to_string()
}

/// [`Table::row_security`] of a table without row-level security.
pub const ROW_SECURITY_DISABLED: &str = "disabled";

impl Table {
    /// The column named `name` (quoted form), if any.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// Columns keyed by name, for order-insensitive comparison.
    pub fn columns_by_name(&self) -> BTreeMap<&str, &Column> {
        self.columns.iter().map(|c| (c.name.as_str(), c)).collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionOf {
    pub parent: QName,
    /// `pg_get_expr(relpartbound)`: `FOR VALUES FROM (…) TO (…)`, `DEFAULT`, …
    pub bound: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    /// Quoted column name.
    pub name: String,
    /// `format_type(atttypid, atttypmod)`, e.g. `numeric(10,2)`, `public.order_status[]`.
    pub data_type: String,
    pub not_null: bool,
    /// Default expression (not set for generated columns).
    pub default: Option<String>,
    /// `"always"` or `"by default"` for identity columns.
    pub identity: Option<String>,
    /// Generation expression of a `GENERATED ALWAYS AS (…) STORED` column.
    pub generated: Option<String>,
    /// Collation when it differs from the type's default, qualified.
    pub collation: Option<String>,
    pub comment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    /// `pg_get_indexdef(oid)` (names schema-qualified).
    pub definition: String,
    pub unique: bool,
    pub primary: bool,
    /// Access method: `btree`, `gin`, `gist`, …
    pub method: String,
    /// Key columns or expressions in order (`pg_get_indexdef(oid, n, true)`).
    pub columns: Vec<String>,
    /// Partial index predicate.
    pub predicate: Option<String>,
    /// `false` for an index left INVALID by a failed `CREATE INDEX CONCURRENTLY`.
    pub valid: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConstraintKind {
    Primary,
    Unique,
    ForeignKey,
    Check,
    Exclusion,
}

impl ConstraintKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ConstraintKind::Primary => "primary key",
            ConstraintKind::Unique => "unique",
            ConstraintKind::ForeignKey => "foreign key",
            ConstraintKind::Check => "check",
            ConstraintKind::Exclusion => "exclusion",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Constraint {
    pub kind: ConstraintKind,
    /// `pg_get_constraintdef(oid)`, e.g.
    /// `FOREIGN KEY (user_id) REFERENCES public.users(id) ON DELETE CASCADE DEFERRABLE`.
    pub definition: String,
    pub deferrable: bool,
    pub initially_deferred: bool,
    /// `false` for a constraint added `NOT VALID` and never validated.
    pub validated: bool,
    /// Referenced table of a foreign key.
    pub references: Option<QName>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    pub materialized: bool,
    /// `pg_get_viewdef(oid, true)` (the SELECT, names schema-qualified).
    pub definition: String,
    /// Relations (tables, views) this view reads, qualified. Used to order
    /// re-creation; not compared by the diff.
    pub depends_on: Vec<QName>,
    /// Indexes of a materialized view, keyed by index name.
    pub indexes: BTreeMap<String, Index>,
    pub comment: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FunctionKind {
    Function,
    Procedure,
    Aggregate,
    Window,
}

impl FunctionKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            FunctionKind::Function => "function",
            FunctionKind::Procedure => "procedure",
            FunctionKind::Aggregate => "aggregate",
            FunctionKind::Window => "function",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Function {
    pub kind: FunctionKind,
    /// `pg_get_function_arguments`: names, modes and defaults.
    pub arguments: String,
    /// `pg_get_function_result`; `None` for procedures.
    pub returns: Option<String>,
    pub language: String,
    /// Lowercase hex SHA-256 of the source text (`prosrc`) as written.
    pub body_sha256: String,
    /// `immutable`, `stable` or `volatile`.
    pub volatility: String,
    pub security_definer: bool,
    /// `pg_get_functiondef` (`CREATE OR REPLACE …`), used to recreate the
    /// function; `None` for aggregates.
    pub definition: Option<String>,
    pub comment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trigger {
    /// Table (or view) the trigger is on.
    pub table: QName,
    /// Quoted trigger name.
    pub name: String,
    /// `pg_get_triggerdef(oid)`.
    pub definition: String,
    /// `origin` (enabled), `disabled`, `replica` or `always`.
    pub enabled: String,
}

/// What to leave out of a comparison.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ignore {
    /// Table names, unqualified (`_prisma_migrations`, matches in every schema)
    /// or qualified (`public._prisma_migrations`). Quoted or unquoted spelling
    /// both match.
    pub tables: Vec<String>,
    /// Schema names whose objects are all left out.
    pub schemas: Vec<String>,
}

/// Strip the double quotes PostgreSQL puts around an identifier (`"User"` → `User`).
pub fn unquote_ident(s: &str) -> String {
    if s.len() >= 2 && s.starts_with('"') && s.ends_with('"') {
        s[1..s.len() - 1].replace("\"\"", "\"")
    } else {
        s.to_string()
    }
}

/// Quote an identifier the way PostgreSQL's `quote_ident` does for the common
/// cases: left bare when it is lowercase `[a-z_][a-z0-9_$]*` and not a reserved
/// word, double-quoted otherwise.
pub fn quote_ident(s: &str) -> String {
    const RESERVED: &[&str] = &[
        "all",
        "analyse",
        "analyze",
        "and",
        "any",
        "array",
        "as",
        "asc",
        "asymmetric",
        "both",
        "case",
        "cast",
        "check",
        "collate",
        "column",
        "constraint",
        "create",
        "current_catalog",
        "current_date",
        "current_role",
        "current_time",
        "current_timestamp",
        "current_user",
        "default",
        "deferrable",
        "desc",
        "distinct",
        "do",
        "else",
        "end",
        "except",
        "false",
        "fetch",
        "for",
        "foreign",
        "from",
        "grant",
        "group",
        "having",
        "in",
        "initially",
        "intersect",
        "into",
        "lateral",
        "leading",
        "limit",
        "localtime",
        "localtimestamp",
        "not",
        "null",
        "offset",
        "on",
        "only",
        "or",
        "order",
        "placing",
        "primary",
        "references",
        "returning",
        "select",
        "session_user",
        "some",
        "symmetric",
        "table",
        "then",
        "to",
        "trailing",
        "true",
        "union",
        "unique",
        "user",
        "using",
        "variadic",
        "when",
        "where",
        "window",
        "with",
    ];
    let simple = !s.is_empty()
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
    if simple && !RESERVED.contains(&s) {
        s.to_string()
    } else {
        format!("\"{}\"", s.replace('"', "\"\""))
    }
}

/// Split a qualified name on the dots that are outside double quotes and unquote
/// each part: `public."a.b".c` → `["public", "a.b", "c"]`.
pub fn split_qualified(name: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    let mut chars = name.chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '"' => {
                cur.push(ch);
                if in_quotes && chars.peek() == Some(&'"') {
                    cur.push('"');
                    chars.next();
                } else {
                    in_quotes = !in_quotes;
                }
            }
            '.' if !in_quotes => parts.push(std::mem::take(&mut cur)),
            _ => cur.push(ch),
        }
    }
    parts.push(cur);
    parts.iter().map(|p| unquote_ident(p)).collect()
}

/// The position of the last dot outside double quotes, if any.
pub fn last_dot(name: &str) -> Option<usize> {
    let mut in_quotes = false;
    let mut last = None;
    for (i, ch) in name.char_indices() {
        match ch {
            '"' => in_quotes = !in_quotes,
            '.' if !in_quotes => last = Some(i),
            _ => {}
        }
    }
    last
}

impl Ignore {
    fn schema_ignored(&self, schema: &str) -> bool {
        let s = unquote_ident(schema);
        self.schemas.iter().any(|x| unquote_ident(x) == s)
    }

    fn table_ignored(&self, qname: &str) -> bool {
        let parts = split_qualified(qname);
        let (schema, name) = match parts.as_slice() {
            [s, n] => (s.as_str(), n.as_str()),
            _ => return false,
        };
        if self.schema_ignored(schema) {
            return true;
        }
        self.tables.iter().any(|t| {
            let tp = split_qualified(t);
            match tp.as_slice() {
                [n] => n == name,
                [s, n] => s == schema && n == name,
                _ => false,
            }
        })
    }

    fn qname_schema_ignored(&self, qname: &str) -> bool {
        split_qualified(qname)
            .first()
            .is_some_and(|s| self.schema_ignored(s))
    }
}

impl Schema {
    /// A copy without the ignored schemas and tables (and the triggers on,
    /// sequences owned by and views/partitions of nothing else referencing them).
    pub fn without(&self, ignore: &Ignore) -> Schema {
        let mut out = self.clone();
        out.schemas.retain(|s| !ignore.schema_ignored(s));
        out.extensions
            .retain(|_, e| !ignore.schema_ignored(&e.schema));
        out.enums.retain(|k, _| !ignore.qname_schema_ignored(k));
        out.domains.retain(|k, _| !ignore.qname_schema_ignored(k));
        out.composites
            .retain(|k, _| !ignore.qname_schema_ignored(k));
        out.tables.retain(|k, _| !ignore.table_ignored(k));
        out.sequences.retain(|k, s| {
            if ignore.qname_schema_ignored(k) {
                return false;
            }
            match &s.owned_by {
                Some(col) => match last_dot(col) {
                    Some(i) => !ignore.table_ignored(&col[..i]),
                    None => true,
                },
                None => true,
            }
        });
        out.views.retain(|k, _| !ignore.qname_schema_ignored(k));
        out.functions.retain(|k, _| {
            let sig = k.split('(').next().unwrap_or(k);
            !ignore.qname_schema_ignored(sig)
        });
        out.triggers.retain(|_, t| !ignore.table_ignored(&t.table));
        out
    }

    /// Every object count, for logs: `(kind, count)`.
    pub fn counts(&self) -> Vec<(&'static str, usize)> {
        let columns = self.tables.values().map(|t| t.columns.len()).sum();
        let indexes = self.tables.values().map(|t| t.indexes.len()).sum::<usize>()
            + self.views.values().map(|v| v.indexes.len()).sum::<usize>();
        let constraints = self.tables.values().map(|t| t.constraints.len()).sum();
        vec![
            ("schemas", self.schemas.len()),
            ("extensions", self.extensions.len()),
            ("enums", self.enums.len()),
            ("domains", self.domains.len()),
            ("composites", self.composites.len()),
            ("sequences", self.sequences.len()),
            ("tables", self.tables.len()),
            ("columns", columns),
            ("indexes", indexes),
            ("constraints", constraints),
            ("views", self.views.len()),
            ("functions", self.functions.len()),
            ("triggers", self.triggers.len()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_and_unquote() {
        assert_eq!(split_qualified("public.users"), vec!["public", "users"]);
        assert_eq!(
            split_qualified("public.\"a.b\".\"C\"\"d\""),
            vec!["public", "a.b", "C\"d"]
        );
        assert_eq!(last_dot("public.\"a.b\""), Some(6));
        assert_eq!(unquote_ident("\"User\""), "User");
    }

    #[test]
    fn without_drops_ignored_tables_and_their_triggers() {
        let mut s = Schema::default();
        let t = Table {
            columns: vec![],
            partition_of: None,
            partitioned_by: None,
            indexes: BTreeMap::new(),
            constraints: BTreeMap::new(),
            comment: None,
            row_security: ROW_SECURITY_DISABLED.into(),
            policies: BTreeMap::new(),
        };
        s.tables
            .insert("public._prisma_migrations".into(), t.clone());
        s.tables.insert("public.\"User\"".into(), t.clone());
        s.tables.insert("audit.log".into(), t);
        s.schemas.insert("audit".into());
        s.schemas.insert("public".into());
        s.triggers.insert(
            "public._prisma_migrations.x".into(),
            Trigger {
                table: "public._prisma_migrations".into(),
                name: "x".into(),
                definition: String::new(),
                enabled: "origin".into(),
            },
        );
        let ig = Ignore {
            tables: vec!["_prisma_migrations".into()],
            schemas: vec!["audit".into()],
        };
        let w = s.without(&ig);
        assert_eq!(
            w.tables.keys().cloned().collect::<Vec<_>>(),
            vec!["public.\"User\"".to_string()]
        );
        assert!(w.triggers.is_empty());
        assert_eq!(w.schemas.len(), 1);
        let ig2 = Ignore {
            tables: vec!["public.User".into()],
            schemas: vec![],
        };
        assert!(!s.without(&ig2).tables.contains_key("public.\"User\""));
        // JSON round trip is lossless.
        let json = serde_json::to_string(&s).unwrap();
        let back: Schema = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
    }
}
