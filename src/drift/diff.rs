//! Compare two [`Schema`]s and produce the SQL that makes the left one match
//! the right one.
//!
//! `left` is always the side to be changed, `right` the side to match:
//! [`Change::Added`] means "only on the right" (to be created on the left),
//! [`Change::Removed`] "only on the left" (to be dropped).
//!
//! The diff reports an added or removed table as one difference (its columns,
//! constraints and indexes are part of it); triggers are reported separately.
//! A changed object yields one difference per changed field. Columns are
//! compared by name (physical order is ignored), and columns of a partition
//! that come from its parent are compared on the parent only.

use super::model::{
    last_dot, quote_ident, split_qualified, unquote_ident, Column, Constraint, ConstraintKind,
    FunctionKind, Index, Schema, Table, ROW_SECURITY_DISABLED,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Kinds of objects, in dependency-friendly order (the order diffs are sorted in).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectKind {
    Schema,
    Extension,
    Enum,
    Domain,
    Composite,
    Sequence,
    Table,
    Column,
    Constraint,
    Index,
    Function,
    View,
    MaterializedView,
    Trigger,
    Policy,
    Comment,
}

impl ObjectKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ObjectKind::Schema => "schema",
            ObjectKind::Extension => "extension",
            ObjectKind::Enum => "enum",
            ObjectKind::Domain => "domain",
            ObjectKind::Composite => "composite type",
            ObjectKind::Sequence => "sequence",
            ObjectKind::Table => "table",
            ObjectKind::Column => "column",
            ObjectKind::Constraint => "constraint",
            ObjectKind::Index => "index",
            ObjectKind::Function => "function",
            ObjectKind::View => "view",
            ObjectKind::MaterializedView => "materialized view",
            ObjectKind::Trigger => "trigger",
            ObjectKind::Policy => "policy",
            ObjectKind::Comment => "comment",
        }
    }

    /// Kinds that live inside a table (named `schema.table.object`).
    fn is_table_child(&self) -> bool {
        matches!(
            self,
            ObjectKind::Column
                | ObjectKind::Constraint
                | ObjectKind::Index
                | ObjectKind::Trigger
                | ObjectKind::Policy
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "change")]
pub enum Change {
    /// Only on the right: to be created on the left.
    Added,
    /// Only on the left: to be dropped.
    Removed,
    /// On both sides, with `field` different. Absent values are `""`.
    Changed {
        field: String,
        left: String,
        right: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Difference {
    pub kind: ObjectKind,
    /// Qualified name: `public.users`, `public.users.email` (column),
    /// `public.users.users_pkey` (constraint/index/trigger), `public.f(integer)`.
    pub name: String,
    #[serde(flatten)]
    pub change: Change,
    /// Short description of an added/removed object for humans (column type
    /// and modifiers, index/constraint definition, enum labels, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

fn opt(s: &Option<String>) -> String {
    s.clone().unwrap_or_default()
}

struct Out(Vec<Difference>);

impl Out {
    fn added(&mut self, kind: ObjectKind, name: String, detail: Option<String>) {
        self.0.push(Difference {
            kind,
            name,
            change: Change::Added,
            detail,
        });
    }
    fn removed(&mut self, kind: ObjectKind, name: String, detail: Option<String>) {
        self.0.push(Difference {
            kind,
            name,
            change: Change::Removed,
            detail,
        });
    }
    /// Push a Changed difference when `l != r`; returns whether it did.
    fn field(&mut self, kind: ObjectKind, name: &str, field: &str, l: String, r: String) -> bool {
        if l == r {
            return false;
        }
        self.0.push(Difference {
            kind,
            name: name.to_string(),
            change: Change::Changed {
                field: field.to_string(),
                left: l,
                right: r,
            },
            detail: None,
        });
        true
    }
}

/// Walk two maps: `f(key, left, right)` for every key on either side.
fn each<'a, V>(
    l: &'a BTreeMap<String, V>,
    r: &'a BTreeMap<String, V>,
    mut f: impl FnMut(&'a String, Option<&'a V>, Option<&'a V>),
) {
    let keys: BTreeSet<&String> = l.keys().chain(r.keys()).collect();
    for k in keys {
        f(k, l.get(k), r.get(k));
    }
}

/// Column definition after the name: `type [COLLATE c] [GENERATED …] [DEFAULT d] [NOT NULL]`.
pub fn column_definition(c: &Column) -> String {
    let mut s = c.data_type.clone();
    if let Some(coll) = &c.collation {
        s.push_str(&format!(" COLLATE {coll}"));
    }
    if let Some(g) = &c.generated {
        s.push_str(&format!(" GENERATED ALWAYS AS ({g}) STORED"));
    }
    if let Some(id) = &c.identity {
        s.push_str(&format!(
            " GENERATED {} AS IDENTITY",
            if id == "always" {
                "ALWAYS"
            } else {
                "BY DEFAULT"
            }
        ));
    }
    if let Some(d) = &c.default {
        s.push_str(&format!(" DEFAULT {d}"));
    }
    if c.not_null {
        s.push_str(" NOT NULL");
    }
    s
}

fn view_kind(materialized: bool) -> ObjectKind {
    if materialized {
        ObjectKind::MaterializedView
    } else {
        ObjectKind::View
    }
}

/// Differences that make `left` match `right`, sorted by kind (dependency
/// order) then name.
pub fn diff(left: &Schema, right: &Schema) -> Vec<Difference> {
    use ObjectKind as K;
    let mut o = Out(Vec::new());

    for s in right.schemas.difference(&left.schemas) {
        o.added(K::Schema, s.clone(), None);
    }
    for s in left.schemas.difference(&right.schemas) {
        o.removed(K::Schema, s.clone(), None);
    }

    each(&left.extensions, &right.extensions, |k, l, r| {
        match (l, r) {
            (None, Some(r)) => o.added(K::Extension, k.clone(), Some(r.version.clone())),
            (Some(l), None) => o.removed(K::Extension, k.clone(), Some(l.version.clone())),
            (Some(l), Some(r)) => {
                o.field(
                    K::Extension,
                    k,
                    "schema",
                    l.schema.clone(),
                    r.schema.clone(),
                );
                o.field(
                    K::Extension,
                    k,
                    "version",
                    l.version.clone(),
                    r.version.clone(),
                );
            }
            _ => {}
        }
    });

    let labels = |v: &Vec<String>| v.join(", ");
    each(&left.enums, &right.enums, |k, l, r| match (l, r) {
        (None, Some(r)) => o.added(K::Enum, k.clone(), Some(labels(r))),
        (Some(l), None) => o.removed(K::Enum, k.clone(), Some(labels(l))),
        (Some(l), Some(r)) => {
            o.field(K::Enum, k, "labels", labels(l), labels(r));
        }
        _ => {}
    });

    each(&left.domains, &right.domains, |k, l, r| match (l, r) {
        (None, Some(r)) => o.added(K::Domain, k.clone(), Some(r.data_type.clone())),
        (Some(l), None) => o.removed(K::Domain, k.clone(), Some(l.data_type.clone())),
        (Some(l), Some(r)) => {
            o.field(
                K::Domain,
                k,
                "type",
                l.data_type.clone(),
                r.data_type.clone(),
            );
            o.field(
                K::Domain,
                k,
                "not_null",
                l.not_null.to_string(),
                r.not_null.to_string(),
            );
            o.field(K::Domain, k, "default", opt(&l.default), opt(&r.default));
            o.field(
                K::Domain,
                k,
                "collation",
                opt(&l.collation),
                opt(&r.collation),
            );
            each(&l.constraints, &r.constraints, |cn, lc, rc| {
                o.field(
                    K::Domain,
                    k,
                    &format!("constraint {cn}"),
                    lc.cloned().unwrap_or_default(),
                    rc.cloned().unwrap_or_default(),
                );
            });
            o.field(K::Comment, k, "comment", opt(&l.comment), opt(&r.comment));
        }
        _ => {}
    });

    let attrs = |c: &super::model::Composite| {
        c.attributes
            .iter()
            .map(|a| format!("{} {}", a.name, a.data_type))
            .collect::<Vec<_>>()
            .join(", ")
    };
    each(&left.composites, &right.composites, |k, l, r| {
        match (l, r) {
            (None, Some(r)) => o.added(K::Composite, k.clone(), Some(attrs(r))),
            (Some(l), None) => o.removed(K::Composite, k.clone(), Some(attrs(l))),
            (Some(l), Some(r)) => {
                o.field(K::Composite, k, "attributes", attrs(l), attrs(r));
                o.field(K::Comment, k, "comment", opt(&l.comment), opt(&r.comment));
            }
            _ => {}
        }
    });

    each(&left.sequences, &right.sequences, |k, l, r| match (l, r) {
        (None, Some(r)) => o.added(K::Sequence, k.clone(), Some(r.data_type.clone())),
        (Some(l), None) => o.removed(K::Sequence, k.clone(), Some(l.data_type.clone())),
        (Some(l), Some(r)) => {
            o.field(
                K::Sequence,
                k,
                "type",
                l.data_type.clone(),
                r.data_type.clone(),
            );
            o.field(
                K::Sequence,
                k,
                "start",
                l.start.to_string(),
                r.start.to_string(),
            );
            o.field(
                K::Sequence,
                k,
                "increment",
                l.increment.to_string(),
                r.increment.to_string(),
            );
            o.field(
                K::Sequence,
                k,
                "min_value",
                l.min_value.to_string(),
                r.min_value.to_string(),
            );
            o.field(
                K::Sequence,
                k,
                "max_value",
                l.max_value.to_string(),
                r.max_value.to_string(),
            );
            o.field(
                K::Sequence,
                k,
                "cache",
                l.cache.to_string(),
                r.cache.to_string(),
            );
            o.field(
                K::Sequence,
                k,
                "cycle",
                l.cycle.to_string(),
                r.cycle.to_string(),
            );
            o.field(
                K::Sequence,
                k,
                "owned_by",
                opt(&l.owned_by),
                opt(&r.owned_by),
            );
        }
        _ => {}
    });

    each(&left.tables, &right.tables, |k, l, r| match (l, r) {
        (None, Some(r)) => o.added(K::Table, k.clone(), table_detail(r)),
        (Some(l), None) => o.removed(K::Table, k.clone(), table_detail(l)),
        (Some(l), Some(r)) => diff_table(&mut o, k, l, r, right),
        _ => {}
    });

    each(&left.views, &right.views, |k, l, r| match (l, r) {
        (None, Some(r)) => o.added(view_kind(r.materialized), k.clone(), None),
        (Some(l), None) => o.removed(view_kind(l.materialized), k.clone(), None),
        (Some(l), Some(r)) => {
            let kind = view_kind(r.materialized);
            o.field(
                kind,
                k,
                "materialized",
                l.materialized.to_string(),
                r.materialized.to_string(),
            );
            o.field(
                kind,
                k,
                "definition",
                l.definition.clone(),
                r.definition.clone(),
            );
            diff_indexes(&mut o, k, &l.indexes, &r.indexes);
            o.field(K::Comment, k, "comment", opt(&l.comment), opt(&r.comment));
        }
        _ => {}
    });

    each(&left.functions, &right.functions, |k, l, r| match (l, r) {
        (None, Some(r)) => o.added(K::Function, k.clone(), Some(function_detail(r))),
        (Some(l), None) => o.removed(K::Function, k.clone(), Some(function_detail(l))),
        (Some(l), Some(r)) => {
            let mut any = false;
            any |= o.field(
                K::Function,
                k,
                "kind",
                l.kind.as_str().into(),
                r.kind.as_str().into(),
            );
            any |= o.field(
                K::Function,
                k,
                "arguments",
                l.arguments.clone(),
                r.arguments.clone(),
            );
            any |= o.field(K::Function, k, "returns", opt(&l.returns), opt(&r.returns));
            any |= o.field(
                K::Function,
                k,
                "language",
                l.language.clone(),
                r.language.clone(),
            );
            any |= o.field(
                K::Function,
                k,
                "body",
                l.body_sha256.clone(),
                r.body_sha256.clone(),
            );
            any |= o.field(
                K::Function,
                k,
                "volatility",
                l.volatility.clone(),
                r.volatility.clone(),
            );
            any |= o.field(
                K::Function,
                k,
                "security_definer",
                l.security_definer.to_string(),
                r.security_definer.to_string(),
            );
            if !any {
                o.field(
                    K::Function,
                    k,
                    "definition",
                    opt(&l.definition),
                    opt(&r.definition),
                );
            }
            o.field(K::Comment, k, "comment", opt(&l.comment), opt(&r.comment));
        }
        _ => {}
    });

    each(&left.triggers, &right.triggers, |k, l, r| match (l, r) {
        (None, Some(r)) => o.added(K::Trigger, k.clone(), Some(r.definition.clone())),
        (Some(l), None) => o.removed(K::Trigger, k.clone(), Some(l.definition.clone())),
        (Some(l), Some(r)) => {
            o.field(
                K::Trigger,
                k,
                "definition",
                l.definition.clone(),
                r.definition.clone(),
            );
            o.field(
                K::Trigger,
                k,
                "enabled",
                l.enabled.clone(),
                r.enabled.clone(),
            );
        }
        _ => {}
    });

    let mut v = o.0;
    v.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
    v
}

fn table_detail(t: &Table) -> Option<String> {
    match &t.partition_of {
        Some(p) => Some(format!("partition of {} {}", p.parent, p.bound)),
        None => Some(format!("{} columns", t.columns.len())),
    }
}

fn function_detail(f: &super::model::Function) -> String {
    match &f.returns {
        Some(r) => format!("{} returns {r}", f.kind.as_str()),
        None => f.kind.as_str().to_string(),
    }
}

fn diff_table(o: &mut Out, k: &str, l: &Table, r: &Table, right: &Schema) {
    use ObjectKind as K;
    let part = |t: &Table| {
        t.partition_of
            .as_ref()
            .map(|p| format!("{} {}", p.parent, p.bound))
            .unwrap_or_default()
    };
    o.field(K::Table, k, "partition_of", part(l), part(r));
    o.field(
        K::Table,
        k,
        "partitioned_by",
        opt(&l.partitioned_by),
        opt(&r.partitioned_by),
    );
    o.field(K::Comment, k, "comment", opt(&l.comment), opt(&r.comment));
    o.field(
        K::Table,
        k,
        "row_security",
        l.row_security.clone(),
        r.row_security.clone(),
    );
    each(&l.policies, &r.policies, |name, lp, rp| {
        let full = format!("{k}.{name}");
        match (lp, rp) {
            (None, Some(def)) => o.added(K::Policy, full, Some(def.clone())),
            (Some(def), None) => o.removed(K::Policy, full, Some(def.clone())),
            (Some(ld), Some(rd)) => {
                o.field(K::Policy, &full, "definition", ld.clone(), rd.clone());
            }
            _ => {}
        }
    });

    // Columns a partition takes from its parent are compared on the parent.
    let inherited: BTreeSet<&str> = match (&l.partition_of, &r.partition_of) {
        (Some(lp), Some(rp)) if lp.parent == rp.parent => right
            .tables
            .get(&rp.parent)
            .map(|p| p.columns.iter().map(|c| c.name.as_str()).collect())
            .unwrap_or_default(),
        _ => BTreeSet::new(),
    };
    let lc = l.columns_by_name();
    let rc = r.columns_by_name();
    let names: BTreeSet<&str> = lc.keys().chain(rc.keys()).copied().collect();
    for n in names {
        if inherited.contains(n) {
            continue;
        }
        let name = format!("{k}.{n}");
        match (lc.get(n), rc.get(n)) {
            (None, Some(c)) => o.added(K::Column, name, Some(column_definition(c))),
            (Some(c), None) => o.removed(K::Column, name, Some(column_definition(c))),
            (Some(a), Some(b)) => {
                o.field(
                    K::Column,
                    &name,
                    "type",
                    a.data_type.clone(),
                    b.data_type.clone(),
                );
                o.field(
                    K::Column,
                    &name,
                    "collation",
                    opt(&a.collation),
                    opt(&b.collation),
                );
                o.field(
                    K::Column,
                    &name,
                    "not_null",
                    a.not_null.to_string(),
                    b.not_null.to_string(),
                );
                o.field(
                    K::Column,
                    &name,
                    "default",
                    opt(&a.default),
                    opt(&b.default),
                );
                o.field(
                    K::Column,
                    &name,
                    "identity",
                    opt(&a.identity),
                    opt(&b.identity),
                );
                o.field(
                    K::Column,
                    &name,
                    "generated",
                    opt(&a.generated),
                    opt(&b.generated),
                );
                o.field(
                    K::Comment,
                    &name,
                    "comment",
                    opt(&a.comment),
                    opt(&b.comment),
                );
            }
            _ => {}
        }
    }

    each(&l.constraints, &r.constraints, |cn, a, b| {
        let name = format!("{k}.{cn}");
        match (a, b) {
            (None, Some(c)) => o.added(K::Constraint, name, Some(c.definition.clone())),
            (Some(c), None) => o.removed(K::Constraint, name, Some(c.definition.clone())),
            (Some(a), Some(b)) => {
                let definition_changed = o.field(
                    K::Constraint,
                    &name,
                    "definition",
                    a.definition.clone(),
                    b.definition.clone(),
                );
                if !definition_changed && a != b {
                    o.field(
                        K::Constraint,
                        &name,
                        "flags",
                        constraint_flags(a),
                        constraint_flags(b),
                    );
                }
            }
            _ => {}
        }
    });
    diff_indexes(o, k, &l.indexes, &r.indexes);
}

fn constraint_flags(c: &Constraint) -> String {
    format!(
        "{}deferrable{}{}",
        if c.deferrable { "" } else { "not " },
        if c.initially_deferred {
            " initially deferred"
        } else {
            ""
        },
        if c.validated { "" } else { " not valid" }
    )
}

fn diff_indexes(o: &mut Out, k: &str, l: &BTreeMap<String, Index>, r: &BTreeMap<String, Index>) {
    each(l, r, |n, a, b| {
        let name = format!("{k}.{n}");
        match (a, b) {
            (None, Some(i)) => o.added(ObjectKind::Index, name, Some(i.definition.clone())),
            (Some(i), None) => o.removed(ObjectKind::Index, name, Some(i.definition.clone())),
            (Some(a), Some(b)) => {
                let definition_changed = o.field(
                    ObjectKind::Index,
                    &name,
                    "definition",
                    a.definition.clone(),
                    b.definition.clone(),
                );
                if !definition_changed {
                    o.field(
                        ObjectKind::Index,
                        &name,
                        "valid",
                        a.valid.to_string(),
                        b.valid.to_string(),
                    );
                }
            }
            _ => {}
        }
    });
}

// ---------------------------------------------------------------------------
// Human rendering

fn short(v: &str) -> String {
    if v.is_empty() {
        "(none)".to_string()
    } else if v.contains('\n') || v.chars().count() > 100 {
        "…".to_string()
    } else {
        v.to_string()
    }
}

/// Split `schema.table.child` into (`schema.table`, `child`).
fn parent_and_child(name: &str) -> (&str, &str) {
    match last_dot(name) {
        Some(i) => (&name[..i], &name[i + 1..]),
        None => ("", name),
    }
}

/// Render differences for people, grouped by table:
///
/// ```text
/// + enum public.order_status (new, paid)
/// table public.orders:
///   + column status public.order_status NOT NULL DEFAULT 'new'::public.order_status
///   ~ column total: numeric(10,2) → numeric(12,2)
/// ```
pub fn render_human(diffs: &[Difference]) -> String {
    let mut blocks: Vec<(Option<String>, Vec<String>)> = Vec::new();
    let mut group_at: BTreeMap<String, usize> = BTreeMap::new();
    for d in diffs {
        let column_comment = d.kind == ObjectKind::Comment
            && !d.name.contains('(')
            && split_qualified(&d.name).len() == 3;
        let (group, label) = if d.kind.is_table_child() || column_comment {
            let (p, c) = parent_and_child(&d.name);
            let what = if column_comment {
                "comment on column".to_string()
            } else {
                d.kind.as_str().to_string()
            };
            (Some(p.to_string()), format!("{what} {c}"))
        } else if d.kind == ObjectKind::Comment {
            (None, format!("comment on {}", d.name))
        } else {
            (None, format!("{} {}", d.kind.as_str(), d.name))
        };
        let line = match &d.change {
            Change::Added => match &d.detail {
                Some(x) if !x.is_empty() => format!("+ {label} {}", detail_fmt(d.kind, x)),
                _ => format!("+ {label}"),
            },
            Change::Removed => format!("- {label}"),
            Change::Changed { field, left, right } => {
                let multi = left.contains('\n') || right.contains('\n');
                if (field == "type" && d.kind == ObjectKind::Column) || field == "comment" {
                    format!("~ {label}: {} → {}", short(left), short(right))
                } else if multi || left.len() > 100 || right.len() > 100 || field == "body" {
                    format!("~ {label}: {field} changed")
                } else {
                    format!("~ {label} {field}: {} → {}", short(left), short(right))
                }
            }
        };
        match group {
            Some(g) => {
                let at = *group_at.entry(g.clone()).or_insert_with(|| {
                    blocks.push((Some(g.clone()), Vec::new()));
                    blocks.len() - 1
                });
                blocks[at].1.push(line);
            }
            None => blocks.push((None, vec![line])),
        }
    }
    let mut s = String::new();
    for (header, lines) in blocks {
        match header {
            Some(h) => {
                s.push_str(&format!("table {h}:\n"));
                for l in lines {
                    s.push_str(&format!("  {l}\n"));
                }
            }
            None => {
                for l in lines {
                    s.push_str(&format!("{l}\n"));
                }
            }
        }
    }
    s
}

fn detail_fmt(kind: ObjectKind, x: &str) -> String {
    match kind {
        ObjectKind::Enum => format!("({x})"),
        _ => x.to_string(),
    }
}

// ---------------------------------------------------------------------------
// SQL generation

/// One statement of a migration script.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SqlStep {
    /// One SQL statement, terminated by `;`.
    pub sql: String,
    /// Drops, type changes that can lose data, removing enum labels.
    pub destructive: bool,
    /// What the step is for.
    pub comment: String,
}

/// Part of the comment of an `ADD COLUMN … NOT NULL` step without a default:
/// the step fails when the table already has rows (backfill first).
pub const REQUIRED_COLUMN_WARNING: &str =
    "WARNING: NOT NULL without a default fails if the table has rows; add it with a default or backfill first";

// Phases, in execution order.
const P_PRE: u16 = 0;
const P_DROP_TRIGGER: u16 = 10;
const P_DROP_VIEW: u16 = 20;
const P_DROP_FUNCTION_EARLY: u16 = 30;
const P_DROP_FK: u16 = 40;
const P_RELEASE_SEQUENCE: u16 = 42;
// Tables that go are dropped before any other constraint or index is dropped or created: a
// foreign key of theirs may hold an index that changes, and a new object may reuse the name
// of one of their indexes.
const P_DROP_TABLE: u16 = 45;
const P_DROP_CONSTRAINT: u16 = 50;
const P_DROP_INDEX: u16 = 60;
const P_SCHEMA: u16 = 100;
const P_EXTENSION: u16 = 110;
const P_TYPE: u16 = 120;
const P_SEQUENCE: u16 = 130;
const P_TABLE: u16 = 140;
const P_COLUMN_ADD: u16 = 150;
const P_COLUMN_ALTER: u16 = 160;
const P_SEQUENCE_OWNED: u16 = 170;
const P_CONSTRAINT_ADD: u16 = 180;
const P_INDEX_CREATE: u16 = 190;
const P_FK_ADD: u16 = 200;
const P_FUNCTION: u16 = 210;
const P_VIEW_CREATE: u16 = 220;
const P_TRIGGER: u16 = 240;
const P_COMMENT: u16 = 250;
const P_DROP_COLUMN: u16 = 300;
const P_DROP_FUNCTION: u16 = 320;
const P_DROP_SEQUENCE: u16 = 330;
const P_DROP_TYPE: u16 = 340;
const P_DROP_EXTENSION: u16 = 350;
const P_DROP_SCHEMA: u16 = 360;

#[derive(Default)]
struct Plan {
    phases: BTreeMap<u16, Vec<SqlStep>>,
    seen: BTreeSet<(u16, String)>,
}

impl Plan {
    fn push(&mut self, phase: u16, sql: String, destructive: bool, comment: impl Into<String>) {
        // The same statement can be implied by two differences; emit it once.
        if !self.seen.insert((phase, sql.clone())) {
            return;
        }
        self.phases.entry(phase).or_default().push(SqlStep {
            sql,
            destructive,
            comment: comment.into(),
        });
    }
    fn into_steps(self) -> Vec<SqlStep> {
        self.phases.into_values().flatten().collect()
    }
}

fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `schema` part of `schema.name` (quoted form kept).
fn schema_of(q: &str) -> &str {
    let mut in_quotes = false;
    for (i, ch) in q.char_indices() {
        match ch {
            '"' => in_quotes = !in_quotes,
            '.' if !in_quotes => return &q[..i],
            _ => {}
        }
    }
    q
}

/// `name` part of `schema.name` (quoted form kept).
fn name_of(q: &str) -> &str {
    parent_and_child(q).1
}

fn strip_semicolon(s: &str) -> &str {
    s.trim_end().trim_end_matches(';').trim_end()
}

/// Type changes that cannot lose data (widening).
fn is_widening(from: &str, to: &str) -> bool {
    fn split(t: &str) -> (&str, Vec<i64>) {
        match t.find('(') {
            Some(i) if t.ends_with(')') => (
                &t[..i],
                t[i + 1..t.len() - 1]
                    .split(',')
                    .filter_map(|x| x.trim().parse().ok())
                    .collect(),
            ),
            _ => (t, Vec::new()),
        }
    }
    let (fb, fm) = split(from);
    let (tb, tm) = split(to);
    let rank = |t: &str| match t {
        "smallint" => Some(1),
        "integer" => Some(2),
        "bigint" => Some(3),
        _ => None,
    };
    if let (Some(a), Some(b)) = (rank(fb), rank(tb)) {
        return b >= a;
    }
    if rank(fb).is_some() && tb == "numeric" && tm.is_empty() {
        return true;
    }
    match (fb, tb) {
        ("character varying", "text") | ("character", "text") => true,
        ("character varying", "character varying") => {
            tm.is_empty() || (!fm.is_empty() && tm[0] >= fm[0])
        }
        ("numeric", "numeric") => {
            tm.is_empty() || (fm.len() == 2 && tm.len() == 2 && tm[1] == fm[1] && tm[0] >= fm[0])
        }
        ("real", "double precision") => true,
        (a, b) if a == b && fm.is_empty() && tm.is_empty() => true,
        _ => false,
    }
}

fn constraint_sql(table: &str, name: &str, c: &Constraint) -> String {
    format!(
        "ALTER TABLE {table} ADD CONSTRAINT {name} {};",
        c.definition
    )
}

fn constraint_phase(c: &Constraint) -> u16 {
    if c.kind == ConstraintKind::ForeignKey {
        P_FK_ADD
    } else {
        P_CONSTRAINT_ADD
    }
}

fn comment_sql(what: &str, name: &str, comment: &Option<String>) -> String {
    match comment {
        Some(c) => format!("COMMENT ON {what} {name} IS {};", lit(c)),
        None => format!("COMMENT ON {what} {name} IS NULL;"),
    }
}

/// Depth-first order of `set` so that every member comes after the members it
/// depends on (`deps`); cycles are broken arbitrarily.
fn topo(set: &BTreeSet<String>, deps: impl Fn(&str) -> Vec<String>) -> Vec<String> {
    fn visit(
        n: &str,
        set: &BTreeSet<String>,
        deps: &dyn Fn(&str) -> Vec<String>,
        done: &mut BTreeSet<String>,
        out: &mut Vec<String>,
    ) {
        if !done.insert(n.to_string()) {
            return;
        }
        for d in deps(n) {
            if set.contains(&d) {
                visit(&d, set, deps, done, out);
            }
        }
        out.push(n.to_string());
    }
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for n in set {
        visit(n, set, &deps, &mut done, &mut out);
    }
    out
}

fn enum_recreate_needed(l: &[String], r: &[String]) -> bool {
    // ADD VALUE suffices when the left labels appear in the right in the same order.
    let mut it = r.iter();
    !l.iter().all(|x| it.any(|y| y == x))
}

/// Statements that make `left` match `right` for the given differences (as
/// returned by [`diff`], possibly filtered), in dependency order: drops of
/// dependents first (triggers, views, foreign keys, constraints, indexes), then
/// the tables that go (after releasing sequences that stay), then creations
/// (schemas, extensions, types, sequences, tables, columns, constraints,
/// indexes, foreign keys, functions, views, triggers, comments), then the
/// remaining drops (columns, functions, sequences, types, extensions, schemas).
///
/// `ALTER TYPE … ADD VALUE` steps must be committed before a later step uses
/// the new label: run the steps one by one in autocommit mode, or split the
/// script there.
pub fn to_sql(left: &Schema, right: &Schema, diffs: &[Difference]) -> Vec<SqlStep> {
    use ObjectKind as K;
    let mut p = Plan::default();

    // --- What changed, for dependency decisions.
    let mut removed_tables = BTreeSet::new();
    let mut touched: BTreeSet<String> = BTreeSet::new(); // relations whose shape changes
    let mut views_changed = BTreeSet::new();
    let mut views_removed = BTreeSet::new();
    let mut views_added = BTreeSet::new();
    let mut enums_recreated = BTreeSet::new();
    let mut columns_changed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut uniq_dropped_on: BTreeSet<String> = BTreeSet::new();
    let mut dropped_constraints: BTreeSet<String> = BTreeSet::new();
    for d in diffs {
        match (d.kind, &d.change) {
            (K::Table, Change::Removed) => {
                removed_tables.insert(d.name.clone());
                touched.insert(d.name.clone());
            }
            (K::Column, Change::Removed) => {
                touched.insert(parent_and_child(&d.name).0.to_string());
            }
            (K::Column, Change::Changed { field, .. }) => {
                if matches!(field.as_str(), "type" | "collation" | "generated") {
                    touched.insert(parent_and_child(&d.name).0.to_string());
                }
                columns_changed
                    .entry(d.name.clone())
                    .or_default()
                    .insert(field.clone());
            }
            (K::View | K::MaterializedView, Change::Changed { field, .. })
                if field == "definition" || field == "materialized" =>
            {
                views_changed.insert(d.name.clone());
                touched.insert(d.name.clone());
            }
            (K::View | K::MaterializedView, Change::Removed) => {
                views_removed.insert(d.name.clone());
                touched.insert(d.name.clone());
            }
            (K::View | K::MaterializedView, Change::Added) => {
                views_added.insert(d.name.clone());
            }
            (K::Enum, Change::Changed { .. }) => {
                if let (Some(l), Some(r)) = (left.enums.get(&d.name), right.enums.get(&d.name)) {
                    if enum_recreate_needed(l, r) {
                        enums_recreated.insert(d.name.clone());
                    }
                }
            }
            (K::Constraint, Change::Removed | Change::Changed { .. }) => {
                let (t, c) = parent_and_child(&d.name);
                dropped_constraints.insert(d.name.clone());
                if let Some(con) = left.tables.get(t).and_then(|x| x.constraints.get(c)) {
                    if matches!(con.kind, ConstraintKind::Primary | ConstraintKind::Unique) {
                        uniq_dropped_on.insert(t.to_string());
                    }
                }
            }
            (K::Index, Change::Removed | Change::Changed { .. }) => {
                let (t, i) = parent_and_child(&d.name);
                if left
                    .tables
                    .get(t)
                    .and_then(|x| x.indexes.get(i))
                    .is_some_and(|i| i.unique)
                {
                    uniq_dropped_on.insert(t.to_string());
                }
            }
            _ => {}
        }
    }
    // Tables with columns of a recreated enum change shape too.
    for (tn, t) in &left.tables {
        for c in &t.columns {
            let base = c.data_type.trim_end_matches("[]");
            if enums_recreated.contains(base) {
                touched.insert(tn.clone());
            }
        }
    }
    // Views depending (transitively) on something touched are dropped and recreated.
    let mut views_recreated: BTreeSet<String> = BTreeSet::new();
    loop {
        let mut grew = false;
        for (vn, v) in &left.views {
            if touched.contains(vn) {
                continue;
            }
            if v.depends_on.iter().any(|d| touched.contains(d)) {
                touched.insert(vn.clone());
                if right.views.contains_key(vn) && !views_removed.contains(vn) {
                    views_recreated.insert(vn.clone());
                }
                grew = true;
            }
        }
        if !grew {
            break;
        }
    }

    if diffs
        .iter()
        .any(|d| d.kind == K::Function && !matches!(d.change, Change::Removed))
    {
        p.push(
            P_PRE,
            "SET check_function_bodies = false;".into(),
            false,
            "functions may reference objects created later in this script",
        );
    }

    // --- Views: drop (dependents first), create (dependencies first).
    let to_drop: BTreeSet<String> = views_changed
        .iter()
        .chain(&views_removed)
        .chain(&views_recreated)
        .filter(|v| left.views.contains_key(*v))
        .cloned()
        .collect();
    let mut drop_order = topo(&to_drop, |n| {
        left.views
            .get(n)
            .map(|v| v.depends_on.clone())
            .unwrap_or_default()
    });
    drop_order.reverse();
    for vn in &drop_order {
        let v = &left.views[vn];
        let what = if v.materialized {
            "MATERIALIZED VIEW"
        } else {
            "VIEW"
        };
        let removed = views_removed.contains(vn);
        p.push(
            P_DROP_VIEW,
            format!("DROP {what} {vn};"),
            removed,
            if removed {
                format!("drop {} {vn}", what.to_lowercase())
            } else {
                format!("recreate {} {vn}", what.to_lowercase())
            },
        );
    }
    let to_create: BTreeSet<String> = views_changed
        .iter()
        .chain(&views_added)
        .chain(&views_recreated)
        .filter(|v| right.views.contains_key(*v))
        .cloned()
        .collect();
    for vn in topo(&to_create, |n| {
        right
            .views
            .get(n)
            .map(|v| v.depends_on.clone())
            .unwrap_or_default()
    }) {
        let v = &right.views[&vn];
        let what = if v.materialized {
            "MATERIALIZED VIEW"
        } else {
            "VIEW"
        };
        p.push(
            P_VIEW_CREATE,
            format!("CREATE {what} {vn} AS\n{};", strip_semicolon(&v.definition)),
            false,
            format!("create {} {vn}", what.to_lowercase()),
        );
        for (iname, idx) in &v.indexes {
            p.push(
                P_VIEW_CREATE,
                format!("{};", idx.definition),
                false,
                format!("create index {iname} on {vn}"),
            );
        }
        if v.comment.is_some() {
            let sql = comment_sql(what, &vn, &v.comment);
            p.push(P_COMMENT, sql, false, format!("comment on {vn}"));
        }
        // Triggers on a recreated view go with it.
        if !views_added.contains(&vn) {
            for t in right.triggers.values().filter(|t| t.table == vn) {
                p.push(
                    P_TRIGGER,
                    format!("{};", t.definition),
                    false,
                    format!("recreate trigger {} on {vn}", t.name),
                );
            }
        }
    }
    let recreated_views: BTreeSet<&String> = to_drop.iter().chain(&to_create).collect();

    // --- Foreign keys that depend on a unique index being dropped are re-added.
    for (tn, t) in &left.tables {
        if removed_tables.contains(tn) {
            continue;
        }
        for (cn, c) in &t.constraints {
            let full = format!("{tn}.{cn}");
            let Some(refs) = &c.references else { continue };
            if !uniq_dropped_on.contains(refs) || dropped_constraints.contains(&full) {
                continue;
            }
            if let Some(rc) = right.tables.get(tn).and_then(|rt| rt.constraints.get(cn)) {
                p.push(
                    P_DROP_FK,
                    format!("ALTER TABLE {tn} DROP CONSTRAINT {cn};"),
                    false,
                    format!("re-add {full}: the unique index it uses on {refs} changes"),
                );
                p.push(
                    P_FK_ADD,
                    constraint_sql(tn, cn, rc),
                    false,
                    format!("re-add {full}"),
                );
            }
        }
    }

    for d in diffs {
        let name = &d.name;
        match (d.kind, &d.change) {
            // --- schemas
            (K::Schema, Change::Added) => {
                p.push(P_SCHEMA, format!("CREATE SCHEMA {name};"), false, format!("create schema {name}"))
            }
            (K::Schema, Change::Removed) => p.push(
                P_DROP_SCHEMA,
                format!("DROP SCHEMA {name};"),
                true,
                format!("drop schema {name}"),
            ),
            (K::Schema, _) => {}

            // --- extensions
            (K::Extension, Change::Added) => {
                let e = &right.extensions[name];
                p.push(
                    P_EXTENSION,
                    format!("CREATE EXTENSION IF NOT EXISTS \"{name}\" WITH SCHEMA {};", e.schema),
                    false,
                    format!("create extension {name}"),
                )
            }
            (K::Extension, Change::Removed) => p.push(
                P_DROP_EXTENSION,
                format!("DROP EXTENSION \"{name}\";"),
                true,
                format!("drop extension {name}"),
            ),
            (K::Extension, Change::Changed { field, right: r, .. }) => {
                let sql = if field == "version" {
                    format!("ALTER EXTENSION \"{name}\" UPDATE TO {};", lit(r))
                } else {
                    format!("ALTER EXTENSION \"{name}\" SET SCHEMA {r};")
                };
                p.push(P_EXTENSION, sql, false, format!("alter extension {name} {field}"))
            }

            // --- enums
            (K::Enum, Change::Added) => {
                let labels: Vec<String> = right.enums[name].iter().map(|l| lit(l)).collect();
                p.push(
                    P_TYPE,
                    format!("CREATE TYPE {name} AS ENUM ({});", labels.join(", ")),
                    false,
                    format!("create enum {name}"),
                )
            }
            (K::Enum, Change::Removed) => p.push(
                P_DROP_TYPE,
                format!("DROP TYPE {name};"),
                true,
                format!("drop enum {name}"),
            ),
            (K::Enum, Change::Changed { .. }) => {
                let (l, r) = (&left.enums[name], &right.enums[name]);
                if enums_recreated.contains(name) {
                    enum_recreate(&mut p, left, right, name, l, r, &removed_tables);
                } else {
                    for (i, label) in r.iter().enumerate() {
                        if l.contains(label) {
                            continue;
                        }
                        let pos = if i > 0 {
                            format!(" AFTER {}", lit(&r[i - 1]))
                        } else if let Some(first) = l.first() {
                            format!(" BEFORE {}", lit(first))
                        } else {
                            String::new()
                        };
                        p.push(
                            P_TYPE,
                            format!("ALTER TYPE {name} ADD VALUE {}{pos};", lit(label)),
                            false,
                            format!("add label {label} to enum {name} (commit before using it)"),
                        );
                    }
                }
            }

            // --- domains
            (K::Domain, Change::Added) => {
                let dm = &right.domains[name];
                let mut s = format!("CREATE DOMAIN {name} AS {}", dm.data_type);
                if let Some(c) = &dm.collation {
                    s.push_str(&format!(" COLLATE {c}"));
                }
                if let Some(x) = &dm.default {
                    s.push_str(&format!(" DEFAULT {x}"));
                }
                if dm.not_null {
                    s.push_str(" NOT NULL");
                }
                for (cn, def) in &dm.constraints {
                    s.push_str(&format!(" CONSTRAINT {cn} {def}"));
                }
                s.push(';');
                p.push(P_TYPE, s, false, format!("create domain {name}"));
                if dm.comment.is_some() {
                    p.push(P_COMMENT, comment_sql("DOMAIN", name, &dm.comment), false, format!("comment on {name}"));
                }
            }
            (K::Domain, Change::Removed) => p.push(
                P_DROP_TYPE,
                format!("DROP DOMAIN {name};"),
                true,
                format!("drop domain {name}"),
            ),
            (K::Domain, Change::Changed { field, right: r, .. }) => {
                let dm = &right.domains[name];
                let (sql, destructive) = match field.as_str() {
                    "default" if r.is_empty() => (format!("ALTER DOMAIN {name} DROP DEFAULT;"), false),
                    "default" => (format!("ALTER DOMAIN {name} SET DEFAULT {r};"), false),
                    "not_null" if dm.not_null => (format!("ALTER DOMAIN {name} SET NOT NULL;"), false),
                    "not_null" => (format!("ALTER DOMAIN {name} DROP NOT NULL;"), false),
                    f if f.starts_with("constraint ") => {
                        let cn = &f["constraint ".len()..];
                        let mut s = String::new();
                        if left.domains[name].constraints.contains_key(cn) {
                            s.push_str(&format!("ALTER DOMAIN {name} DROP CONSTRAINT {cn};"));
                        }
                        if let Some(def) = dm.constraints.get(cn) {
                            if !s.is_empty() {
                                p.push(P_TYPE, s, false, format!("alter domain {name} {f}"));
                                s = String::new();
                            }
                            s.push_str(&format!("ALTER DOMAIN {name} ADD CONSTRAINT {cn} {def};"));
                        }
                        (s, false)
                    }
                    _ => (
                        format!(
                            "-- manual step: domain {name} {field} changed; recreate it and the columns using it"
                        ),
                        true,
                    ),
                };
                p.push(P_TYPE, sql, destructive, format!("alter domain {name} {field}"))
            }

            // --- composite types
            (K::Composite, Change::Added) => {
                let c = &right.composites[name];
                let attrs: Vec<String> =
                    c.attributes.iter().map(|a| format!("{} {}", a.name, a.data_type)).collect();
                p.push(
                    P_TYPE,
                    format!("CREATE TYPE {name} AS ({});", attrs.join(", ")),
                    false,
                    format!("create type {name}"),
                );
                if c.comment.is_some() {
                    p.push(P_COMMENT, comment_sql("TYPE", name, &c.comment), false, format!("comment on {name}"));
                }
            }
            (K::Composite, Change::Removed) => p.push(
                P_DROP_TYPE,
                format!("DROP TYPE {name};"),
                true,
                format!("drop type {name}"),
            ),
            (K::Composite, Change::Changed { .. }) => {
                let (l, r) = (&left.composites[name], &right.composites[name]);
                for a in &l.attributes {
                    if !r.attributes.iter().any(|b| b.name == a.name) {
                        p.push(
                            P_TYPE,
                            format!("ALTER TYPE {name} DROP ATTRIBUTE {};", a.name),
                            true,
                            format!("drop attribute {} of {name}", a.name),
                        );
                    }
                }
                for b in &r.attributes {
                    match l.attributes.iter().find(|a| a.name == b.name) {
                        None => p.push(
                            P_TYPE,
                            format!("ALTER TYPE {name} ADD ATTRIBUTE {} {};", b.name, b.data_type),
                            false,
                            format!("add attribute {} to {name}", b.name),
                        ),
                        Some(a) if a.data_type != b.data_type => p.push(
                            P_TYPE,
                            format!("ALTER TYPE {name} ALTER ATTRIBUTE {} TYPE {};", b.name, b.data_type),
                            !is_widening(&a.data_type, &b.data_type),
                            format!("change type of attribute {} of {name}", b.name),
                        ),
                        _ => {}
                    }
                }
            }

            // --- sequences
            (K::Sequence, Change::Added) => {
                let s = &right.sequences[name];
                p.push(
                    P_SEQUENCE,
                    format!(
                        "CREATE SEQUENCE {name} AS {} INCREMENT BY {} MINVALUE {} MAXVALUE {} START WITH {} CACHE {}{};",
                        s.data_type,
                        s.increment,
                        s.min_value,
                        s.max_value,
                        s.start,
                        s.cache,
                        if s.cycle { " CYCLE" } else { " NO CYCLE" }
                    ),
                    false,
                    format!("create sequence {name}"),
                );
                if let Some(o) = &s.owned_by {
                    p.push(
                        P_SEQUENCE_OWNED,
                        format!("ALTER SEQUENCE {name} OWNED BY {o};"),
                        false,
                        format!("sequence {name} belongs to {o}"),
                    );
                }
            }
            (K::Sequence, Change::Removed) => p.push(
                P_DROP_SEQUENCE,
                format!("DROP SEQUENCE IF EXISTS {name};"),
                true,
                format!("drop sequence {name}"),
            ),
            (K::Sequence, Change::Changed { field, right: r, .. }) => {
                let (phase, clause) = match field.as_str() {
                    "type" => (P_SEQUENCE, format!("AS {r}")),
                    "start" => (P_SEQUENCE, format!("START WITH {r}")),
                    "increment" => (P_SEQUENCE, format!("INCREMENT BY {r}")),
                    "min_value" => (P_SEQUENCE, format!("MINVALUE {r}")),
                    "max_value" => (P_SEQUENCE, format!("MAXVALUE {r}")),
                    "cache" => (P_SEQUENCE, format!("CACHE {r}")),
                    "cycle" => (
                        P_SEQUENCE,
                        if r == "true" { "CYCLE".into() } else { "NO CYCLE".into() },
                    ),
                    _ => (
                        P_SEQUENCE_OWNED,
                        if r.is_empty() { "OWNED BY NONE".into() } else { format!("OWNED BY {r}") },
                    ),
                };
                p.push(phase, format!("ALTER SEQUENCE {name} {clause};"), false, format!("alter sequence {name} {field}"))
            }

            // --- tables
            (K::Table, Change::Added) => create_table(&mut p, right, name),
            (K::Table, Change::Removed) => {} // below, in dependency order
            (K::Table, Change::Changed { field, left: l, right: r }) => match field.as_str() {
                "row_security" => p.push(
                    P_TRIGGER,
                    row_security_sql(name, r),
                    l == "forced" || r == ROW_SECURITY_DISABLED,
                    format!("row-level security on {name}: {l} → {r}"),
                ),
                "partition_of" => {
                    if let Some(lp) = &left.tables[name].partition_of {
                        p.push(
                            P_COLUMN_ALTER,
                            format!("ALTER TABLE {} DETACH PARTITION {name};", lp.parent),
                            false,
                            format!("detach {name}"),
                        );
                    }
                    if let Some(rp) = &right.tables[name].partition_of {
                        p.push(
                            P_COLUMN_ALTER,
                            format!("ALTER TABLE {} ATTACH PARTITION {name} {};", rp.parent, rp.bound),
                            false,
                            format!("attach {name}"),
                        );
                    }
                }
                _ => p.push(
                    P_COLUMN_ALTER,
                    format!("-- manual step: {name} {field} changes from '{l}' to '{r}'; the table must be recreated"),
                    true,
                    format!("table {name} {field} changed"),
                ),
            },

            // --- columns
            (K::Column, Change::Added) => {
                let (t, c) = parent_and_child(name);
                if let Some(col) = right.tables.get(t).and_then(|x| x.column(c)) {
                    let required = col.not_null
                        && col.default.is_none()
                        && col.identity.is_none()
                        && col.generated.is_none();
                    p.push(
                        P_COLUMN_ADD,
                        format!("ALTER TABLE {t} ADD COLUMN {c} {};", column_definition(col)),
                        false,
                        if required {
                            format!("add column {name} — {REQUIRED_COLUMN_WARNING}")
                        } else {
                            format!("add column {name}")
                        },
                    );
                    if col.comment.is_some() {
                        p.push(P_COMMENT, comment_sql("COLUMN", name, &col.comment), false, format!("comment on {name}"));
                    }
                }
            }
            (K::Column, Change::Removed) => {
                let (t, c) = parent_and_child(name);
                p.push(
                    P_DROP_COLUMN,
                    format!("ALTER TABLE {t} DROP COLUMN {c};"),
                    true,
                    format!("drop column {name}"),
                )
            }
            (K::Column, Change::Changed { .. }) => {
                // All fields of one column are handled together, once.
                if let Some(fields) = columns_changed.remove(name) {
                    alter_column(&mut p, left, right, name, &fields);
                }
            }

            // --- constraints
            (K::Constraint, Change::Added) => {
                let (t, c) = parent_and_child(name);
                if let Some(con) = right.tables.get(t).and_then(|x| x.constraints.get(c)) {
                    p.push(constraint_phase(con), constraint_sql(t, c, con), false, format!("add constraint {name}"));
                }
            }
            (K::Constraint, Change::Removed | Change::Changed { .. }) => {
                let (t, c) = parent_and_child(name);
                let removed = matches!(d.change, Change::Removed);
                if let Some(con) = left.tables.get(t).and_then(|x| x.constraints.get(c)) {
                    let phase = if con.kind == ConstraintKind::ForeignKey { P_DROP_FK } else { P_DROP_CONSTRAINT };
                    p.push(
                        phase,
                        format!("ALTER TABLE {t} DROP CONSTRAINT {c};"),
                        removed,
                        format!("{} constraint {name}", if removed { "drop" } else { "recreate" }),
                    );
                }
                if !removed {
                    if let Some(con) = right.tables.get(t).and_then(|x| x.constraints.get(c)) {
                        p.push(constraint_phase(con), constraint_sql(t, c, con), false, format!("recreate constraint {name}"));
                    }
                }
            }

            // --- indexes (of tables and of materialized views)
            (K::Index, change) => {
                let (t, i) = parent_and_child(name);
                let on_view = right.views.contains_key(t) || left.views.contains_key(t);
                if on_view && recreated_views.contains(&t.to_string()) {
                    continue; // dropped/created with its view
                }
                let idx_of = |s: &Schema| -> Option<Index> {
                    s.tables
                        .get(t)
                        .and_then(|x| x.indexes.get(i))
                        .or_else(|| s.views.get(t).and_then(|v| v.indexes.get(i)))
                        .cloned()
                };
                let qualified = format!("{}.{i}", schema_of(t));
                if !matches!(change, Change::Added) && idx_of(left).is_some() {
                    let removed = matches!(change, Change::Removed);
                    p.push(
                        P_DROP_INDEX,
                        format!("DROP INDEX {qualified};"),
                        removed,
                        format!("{} index {name}", if removed { "drop" } else { "recreate" }),
                    );
                }
                if !matches!(change, Change::Removed) {
                    if let Some(idx) = idx_of(right) {
                        let phase = if on_view { P_VIEW_CREATE } else { P_INDEX_CREATE };
                        let note = if idx.valid { "" } else { " (INVALID on the right side)" };
                        p.push(phase, format!("{};", idx.definition), false, format!("create index {name}{note}"));
                    }
                }
            }

            // --- views (handled above in dependency order)
            (K::View | K::MaterializedView, _) => {}

            // --- functions
            (K::Function, Change::Added) => create_function(&mut p, right, name, "create"),
            (K::Function, Change::Removed) => {
                let f = &left.functions[name];
                p.push(
                    P_DROP_FUNCTION,
                    format!("DROP {} {name};", f.kind.as_str().to_uppercase()),
                    true,
                    format!("drop {} {name}", f.kind.as_str()),
                )
            }
            (K::Function, Change::Changed { field, .. }) => {
                let f = &left.functions[name];
                if matches!(field.as_str(), "kind" | "returns" | "arguments") {
                    p.push(
                        P_DROP_FUNCTION_EARLY,
                        format!("DROP {} {name};", f.kind.as_str().to_uppercase()),
                        false,
                        format!("recreate {} {name}: its {field} changes", f.kind.as_str()),
                    );
                }
                create_function(&mut p, right, name, "replace");
            }

            // --- triggers
            (K::Trigger, change) => {
                let (t, tg) = parent_and_child(name);
                let only_enabled = matches!(change, Change::Changed { field, .. } if field == "enabled");
                if only_enabled {
                    if let Some(rt) = right.triggers.get(name) {
                        p.push(P_TRIGGER, enable_sql(t, tg, &rt.enabled), false, format!("set trigger {name} {}", rt.enabled));
                    }
                    continue;
                }
                if !matches!(change, Change::Added) && !recreated_views.contains(&t.to_string()) {
                    let removed = matches!(change, Change::Removed);
                    p.push(
                        P_DROP_TRIGGER,
                        format!("DROP TRIGGER {tg} ON {t};"),
                        removed,
                        format!("{} trigger {name}", if removed { "drop" } else { "recreate" }),
                    );
                }
                if !matches!(change, Change::Removed) {
                    if let Some(rt) = right.triggers.get(name) {
                        p.push(P_TRIGGER, format!("{};", rt.definition), false, format!("create trigger {name}"));
                        if rt.enabled != "origin" {
                            p.push(P_TRIGGER, enable_sql(t, tg, &rt.enabled), false, format!("set trigger {name} {}", rt.enabled));
                        }
                    }
                }
            }

            // --- row-level security policies (after the functions and columns they use)
            (K::Policy, change) => {
                let (t, policy) = parent_and_child(name);
                if !matches!(change, Change::Added) {
                    let removed = matches!(change, Change::Removed);
                    p.push(
                        P_DROP_TRIGGER,
                        format!("DROP POLICY {policy} ON {t};"),
                        removed,
                        format!("{} policy {name}", if removed { "drop" } else { "recreate" }),
                    );
                }
                if let Some(def) = right.tables.get(t).and_then(|rt| rt.policies.get(policy)) {
                    p.push(P_TRIGGER, format!("CREATE POLICY {policy} ON {t} {def};"), false, format!("create policy {name}"));
                }
            }

            // --- comments
            (K::Comment, Change::Changed { right: r, .. }) => {
                let c = if r.is_empty() { None } else { Some(r.clone()) };
                let what = if let Some(f) = right.functions.get(name) {
                    if f.kind == FunctionKind::Procedure { "PROCEDURE" } else if f.kind == FunctionKind::Aggregate { "AGGREGATE" } else { "FUNCTION" }
                } else if right.tables.contains_key(name) {
                    "TABLE"
                } else if let Some(v) = right.views.get(name) {
                    if v.materialized { "MATERIALIZED VIEW" } else { "VIEW" }
                } else if right.domains.contains_key(name) {
                    "DOMAIN"
                } else if right.composites.contains_key(name) {
                    "TYPE"
                } else {
                    "COLUMN"
                };
                p.push(P_COMMENT, comment_sql(what, name, &c), false, format!("comment on {name}"));
            }
            (K::Comment, _) => {}
        }
    }

    // --- Dropped tables: referencing tables and partitions before what they need.
    let drop_tables = topo(&removed_tables, |n| {
        // `n` must be dropped after the tables that depend on it: invert edges.
        removed_tables
            .iter()
            .filter(|m| {
                left.tables.get(*m).is_some_and(|t| {
                    t.partition_of.as_ref().is_some_and(|p| p.parent == *n)
                        || t.constraints
                            .values()
                            .any(|c| c.references.as_deref() == Some(n) && *m != n)
                })
            })
            .cloned()
            .collect()
    });
    // A sequence that stays but is owned by a column of a table that goes would go with it:
    // release it first (its owner on the right is set later).
    for (sn, seq) in &left.sequences {
        let owner_goes = seq
            .owned_by
            .as_deref()
            .and_then(|col| last_dot(col).map(|i| &col[..i]))
            .is_some_and(|table| removed_tables.contains(table));
        if owner_goes && right.sequences.contains_key(sn) {
            p.push(
                P_RELEASE_SEQUENCE,
                format!("ALTER SEQUENCE {sn} OWNED BY NONE;"),
                false,
                format!("keep {sn} when its table is dropped"),
            );
        }
    }
    for t in drop_tables {
        p.push(
            P_DROP_TABLE,
            format!("DROP TABLE IF EXISTS {t};"),
            true,
            format!("drop table {t}"),
        );
    }
    p.into_steps()
}

/// The statements that give `table` the row-level security `state` (`disabled`, `enabled`,
/// `forced`).
fn row_security_sql(table: &str, state: &str) -> String {
    match state {
        "forced" => format!(
            "ALTER TABLE {table} ENABLE ROW LEVEL SECURITY; ALTER TABLE {table} FORCE ROW LEVEL SECURITY;"
        ),
        "enabled" => format!(
            "ALTER TABLE {table} ENABLE ROW LEVEL SECURITY; ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY;"
        ),
        _ => format!(
            "ALTER TABLE {table} DISABLE ROW LEVEL SECURITY; ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY;"
        ),
    }
}

fn enable_sql(table: &str, trigger: &str, enabled: &str) -> String {
    match enabled {
        "disabled" => format!("ALTER TABLE {table} DISABLE TRIGGER {trigger};"),
        "replica" => format!("ALTER TABLE {table} ENABLE REPLICA TRIGGER {trigger};"),
        "always" => format!("ALTER TABLE {table} ENABLE ALWAYS TRIGGER {trigger};"),
        _ => format!("ALTER TABLE {table} ENABLE TRIGGER {trigger};"),
    }
}

fn create_function(p: &mut Plan, right: &Schema, name: &str, verb: &str) {
    let f = &right.functions[name];
    match &f.definition {
        Some(def) => p.push(
            P_FUNCTION,
            format!("{};", def.trim_end()),
            false,
            format!("{verb} {} {name}", f.kind.as_str()),
        ),
        None => p.push(
            P_FUNCTION,
            format!(
                "-- manual step: {} {name} cannot be recreated automatically",
                f.kind.as_str()
            ),
            false,
            format!("{verb} {} {name}", f.kind.as_str()),
        ),
    }
    if f.comment.is_some() && verb == "create" {
        let what = if f.kind == FunctionKind::Procedure {
            "PROCEDURE"
        } else {
            "FUNCTION"
        };
        p.push(
            P_COMMENT,
            comment_sql(what, name, &f.comment),
            false,
            format!("comment on {name}"),
        );
    }
}

fn create_table(p: &mut Plan, right: &Schema, name: &str) {
    let t = &right.tables[name];
    // Parents before partitions: nest the phase by partition depth.
    let mut depth = 0u16;
    let mut cur = t;
    while let Some(po) = &cur.partition_of {
        depth += 1;
        match right.tables.get(&po.parent) {
            Some(parent) if depth < 8 => cur = parent,
            _ => break,
        }
    }
    let phase = P_TABLE + depth;
    let mut inherited = BTreeSet::new();
    let sql = match &t.partition_of {
        Some(po) => {
            if let Some(parent) = right.tables.get(&po.parent) {
                inherited.extend(parent.columns.iter().map(|c| c.name.clone()));
            }
            let mut s = format!(
                "CREATE TABLE {name} PARTITION OF {} {}",
                po.parent, po.bound
            );
            if let Some(pb) = &t.partitioned_by {
                s.push_str(&format!(" PARTITION BY {pb}"));
            }
            s.push(';');
            s
        }
        None => {
            let cols: Vec<String> = t
                .columns
                .iter()
                .map(|c| format!("  {} {}", c.name, column_definition(c)))
                .collect();
            let mut s = format!("CREATE TABLE {name} (\n{}\n)", cols.join(",\n"));
            if let Some(pb) = &t.partitioned_by {
                s.push_str(&format!(" PARTITION BY {pb}"));
            }
            s.push(';');
            s
        }
    };
    p.push(phase, sql, false, format!("create table {name}"));
    if t.row_security != ROW_SECURITY_DISABLED {
        p.push(
            P_TRIGGER,
            row_security_sql(name, &t.row_security),
            false,
            format!("row-level security on {name}: {}", t.row_security),
        );
    }
    for (policy, def) in &t.policies {
        p.push(
            P_TRIGGER,
            format!("CREATE POLICY {policy} ON {name} {def};"),
            false,
            format!("create policy {name}.{policy}"),
        );
    }
    for (cn, c) in &t.constraints {
        p.push(
            constraint_phase(c),
            constraint_sql(name, cn, c),
            false,
            format!("add constraint {name}.{cn}"),
        );
    }
    for (iname, idx) in &t.indexes {
        let note = if idx.valid {
            ""
        } else {
            " (INVALID on the right side)"
        };
        p.push(
            P_INDEX_CREATE,
            format!("{};", idx.definition),
            false,
            format!("create index {name}.{iname}{note}"),
        );
    }
    if t.comment.is_some() {
        p.push(
            P_COMMENT,
            comment_sql("TABLE", name, &t.comment),
            false,
            format!("comment on {name}"),
        );
    }
    for c in &t.columns {
        if c.comment.is_some() && !inherited.contains(&c.name) {
            let cname = format!("{name}.{}", c.name);
            p.push(
                P_COMMENT,
                comment_sql("COLUMN", &cname, &c.comment),
                false,
                format!("comment on {cname}"),
            );
        }
    }
}

fn using_cast(col: &str, new_type: &str, right: &Schema) -> String {
    let base = new_type.trim_end_matches("[]");
    if right.enums.contains_key(base) {
        let arr = if new_type.ends_with("[]") { "[]" } else { "" };
        format!("{col}::text{arr}::{new_type}")
    } else {
        format!("{col}::{new_type}")
    }
}

fn alter_column(
    p: &mut Plan,
    left: &Schema,
    right: &Schema,
    name: &str,
    fields: &BTreeSet<String>,
) {
    let (t, c) = parent_and_child(name);
    let (Some(a), Some(b)) = (
        left.tables.get(t).and_then(|x| x.column(c)),
        right.tables.get(t).and_then(|x| x.column(c)),
    ) else {
        return;
    };
    let alter = |s: String| format!("ALTER TABLE {t} ALTER COLUMN {c} {s};");
    if fields.contains("generated") {
        p.push(
            P_COLUMN_ALTER,
            format!("ALTER TABLE {t} DROP COLUMN {c};"),
            true,
            format!("recreate generated column {name}"),
        );
        p.push(
            P_COLUMN_ALTER,
            format!("ALTER TABLE {t} ADD COLUMN {c} {};", column_definition(b)),
            false,
            format!("recreate generated column {name}"),
        );
        return;
    }
    if fields.contains("identity") && a.identity.is_some() && b.identity.is_none() {
        p.push(
            P_COLUMN_ALTER,
            alter("DROP IDENTITY".into()),
            false,
            format!("drop identity of {name}"),
        );
    }
    let retype = fields.contains("type") || fields.contains("collation");
    if retype {
        if a.default.is_some() {
            p.push(
                P_COLUMN_ALTER,
                alter("DROP DEFAULT".into()),
                false,
                format!("change type of {name}"),
            );
        }
        let coll = b
            .collation
            .as_ref()
            .map(|x| format!(" COLLATE {x}"))
            .unwrap_or_default();
        let destructive = !is_widening(&a.data_type, &b.data_type) || fields.contains("collation");
        p.push(
            P_COLUMN_ALTER,
            alter(format!(
                "TYPE {}{coll} USING {}",
                b.data_type,
                using_cast(c, &b.data_type, right)
            )),
            destructive,
            format!("change type of {name}: {} → {}", a.data_type, b.data_type),
        );
        if let Some(d) = &b.default {
            p.push(
                P_COLUMN_ALTER,
                alter(format!("SET DEFAULT {d}")),
                false,
                format!("default of {name}"),
            );
        }
    } else if fields.contains("default") {
        let sql = match &b.default {
            Some(d) => alter(format!("SET DEFAULT {d}")),
            None => alter("DROP DEFAULT".into()),
        };
        p.push(P_COLUMN_ALTER, sql, false, format!("default of {name}"));
    }
    if fields.contains("identity") {
        if let Some(id) = &b.identity {
            let how = if id == "always" {
                "ALWAYS"
            } else {
                "BY DEFAULT"
            };
            let sql = if a.identity.is_some() {
                alter(format!("SET GENERATED {how}"))
            } else {
                alter(format!("ADD GENERATED {how} AS IDENTITY"))
            };
            p.push(P_COLUMN_ALTER, sql, false, format!("identity of {name}"));
        }
    }
    if fields.contains("not_null") {
        let sql = if b.not_null {
            alter("SET NOT NULL".into())
        } else {
            alter("DROP NOT NULL".into())
        };
        p.push(P_COLUMN_ALTER, sql, false, format!("nullability of {name}"));
    }
}

/// Enum labels removed or reordered: rename the old type away, create the new
/// one, move every column over through `text`, drop the old type.
fn enum_recreate(
    p: &mut Plan,
    left: &Schema,
    right: &Schema,
    name: &str,
    l: &[String],
    r: &[String],
    removed_tables: &BTreeSet<String>,
) {
    let gone: Vec<&String> = l.iter().filter(|x| !r.contains(x)).collect();
    let why = if gone.is_empty() {
        format!("enum {name}: labels reordered")
    } else {
        format!(
            "enum {name}: labels removed ({}); rows holding them make this fail",
            gone.iter()
                .map(|g| g.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let old_unq = format!("{}__sluice_old", unquote_ident(name_of(name)));
    let old = format!("{}.{}", schema_of(name), quote_ident(&old_unq));
    p.push(
        P_TYPE,
        format!("ALTER TYPE {name} RENAME TO {};", quote_ident(&old_unq)),
        true,
        why.clone(),
    );
    let labels: Vec<String> = r.iter().map(|x| lit(x)).collect();
    p.push(
        P_TYPE,
        format!("CREATE TYPE {name} AS ENUM ({});", labels.join(", ")),
        true,
        why.clone(),
    );
    let array = format!("{name}[]");
    for (tn, t) in &left.tables {
        // Indexes and CHECK/EXCLUDE constraints that mention the type are
        // re-parsed against the renamed type when the column changes: drop
        // them first, recreate them afterwards.
        if !removed_tables.contains(tn) {
            for (iname, idx) in &t.indexes {
                if mentions(&idx.definition, name) {
                    p.push(
                        P_DROP_INDEX,
                        format!("DROP INDEX {}.{iname};", schema_of(tn)),
                        false,
                        format!("recreate index {tn}.{iname}: it uses enum {name}"),
                    );
                    if let Some(ri) = right.tables.get(tn).and_then(|rt| rt.indexes.get(iname)) {
                        p.push(
                            P_INDEX_CREATE,
                            format!("{};", ri.definition),
                            false,
                            format!("create index {tn}.{iname}"),
                        );
                    }
                }
            }
            for (cn, con) in &t.constraints {
                if con.kind != ConstraintKind::ForeignKey && mentions(&con.definition, name) {
                    p.push(
                        P_DROP_CONSTRAINT,
                        format!("ALTER TABLE {tn} DROP CONSTRAINT {cn};"),
                        false,
                        format!("recreate constraint {tn}.{cn}: it uses enum {name}"),
                    );
                    if let Some(rc) = right.tables.get(tn).and_then(|rt| rt.constraints.get(cn)) {
                        p.push(
                            constraint_phase(rc),
                            constraint_sql(tn, cn, rc),
                            false,
                            format!("recreate constraint {tn}.{cn}"),
                        );
                    }
                }
            }
        }
        // Columns of tables dropped later still move, or the old type cannot go.
        for c in &t.columns {
            if c.data_type != name && c.data_type != array {
                continue;
            }
            // A partition's column follows its parent's.
            if let Some(po) = &t.partition_of {
                if left
                    .tables
                    .get(&po.parent)
                    .is_some_and(|pt| pt.column(&c.name).is_some())
                {
                    continue;
                }
            }
            let alter = |s: String| format!("ALTER TABLE {tn} ALTER COLUMN {} {s};", c.name);
            if c.default.is_some() {
                p.push(P_TYPE, alter("DROP DEFAULT".into()), true, why.clone());
            }
            let arr = if c.data_type == array { "[]" } else { "" };
            p.push(
                P_TYPE,
                alter(format!(
                    "TYPE {} USING {}::text{arr}::{}",
                    c.data_type, c.name, c.data_type
                )),
                true,
                why.clone(),
            );
            let new_default = right
                .tables
                .get(tn)
                .and_then(|rt| rt.column(&c.name))
                .map(|rc| rc.default.clone())
                .unwrap_or_else(|| c.default.clone());
            if let Some(d) = new_default {
                p.push(P_TYPE, alter(format!("SET DEFAULT {d}")), true, why.clone());
            }
        }
    }
    p.push(P_TYPE, format!("DROP TYPE {old};"), true, why);
}

/// Whether SQL text mentions the qualified type name `ty` (not as a prefix of
/// a longer identifier).
fn mentions(text: &str, ty: &str) -> bool {
    text.match_indices(ty).any(|(i, _)| {
        let after = text[i + ty.len()..].chars().next();
        !after.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$')
    })
}

/// The script: one statement per step, each preceded by `-- comment`, or by
/// `-- DESTRUCTIVE: comment` when the step can lose data.
pub fn render_sql(steps: &[SqlStep]) -> String {
    let mut s = String::new();
    for st in steps {
        if st.destructive {
            s.push_str(&format!("-- DESTRUCTIVE: {}\n", st.comment));
        } else if !st.comment.is_empty() {
            s.push_str(&format!("-- {}\n", st.comment));
        }
        s.push_str(&st.sql);
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::super::introspect::test_support::{load_fixture, TestDb};
    use super::super::introspect::{introspect_postgres, IntrospectOptions};
    use super::super::model::Ignore;
    use super::*;
    use sqlx::Connection;

    async fn model(db: &TestDb) -> Schema {
        let mut c = db.connect().await;
        let s = introspect_postgres(&mut c, &IntrospectOptions::default())
            .await
            .unwrap();
        c.close().await.ok();
        s
    }

    /// Execute every step in autocommit mode; panic with the script on failure.
    async fn apply(db: &TestDb, steps: &[SqlStep]) {
        let mut c = db.connect().await;
        for st in steps {
            if let Err(e) = sqlx::raw_sql(&st.sql).execute(&mut c).await {
                // A required column cannot be added to a table with rows: that
                // is data, not schema. This is a throwaway database, so empty
                // the table and go on (what `prisma migrate diff` warns about).
                let not_null = e
                    .as_database_error()
                    .and_then(|d| d.code())
                    .is_some_and(|code| code == "23502");
                if not_null && st.comment.contains(REQUIRED_COLUMN_WARNING) {
                    let table = st.sql["ALTER TABLE ".len()..]
                        .split(" ADD COLUMN ")
                        .next()
                        .unwrap();
                    eprintln!("note: {table} has rows and gets a required column; emptying it in the test database");
                    sqlx::raw_sql(&format!("TRUNCATE {table} CASCADE"))
                        .execute(&mut c)
                        .await
                        .unwrap();
                    sqlx::raw_sql(&st.sql).execute(&mut c).await.unwrap();
                    continue;
                }
                panic!(
                    "step failed: {e}\n{}\n--- script ---\n{}",
                    st.sql,
                    render_sql(steps)
                );
            }
        }
        c.close().await.ok();
    }

    fn changed(kind: ObjectKind, name: &str, field: &str, l: &str, r: &str) -> Difference {
        Difference {
            kind,
            name: name.into(),
            change: Change::Changed {
                field: field.into(),
                left: l.into(),
                right: r.into(),
            },
            detail: None,
        }
    }

    #[tokio::test]
    async fn self_diff_and_single_changes() {
        let base = TestDb::create("diffbase", None).await;
        load_fixture(&base).await;
        let base_model = model(&base).await;
        assert!(diff(&base_model, &base_model).is_empty());

        // A second database from the same fixture has the same model (no oids,
        // no session-dependent text).
        let twin = TestDb::create("difftwin", None).await;
        load_fixture(&twin).await;
        assert_eq!(diff(&base_model, &model(&twin).await), vec![]);
        drop(twin);

        let cases: Vec<(&str, &str, Difference)> = vec![
            (
                "add_column",
                "ALTER TABLE app.orders ADD COLUMN discount numeric(5,2) NOT NULL DEFAULT 0",
                Difference {
                    kind: ObjectKind::Column,
                    name: "app.orders.discount".into(),
                    change: Change::Added,
                    detail: Some("numeric(5,2) DEFAULT 0 NOT NULL".into()),
                },
            ),
            (
                "drop_column",
                "ALTER TABLE app.users DROP COLUMN name",
                Difference {
                    kind: ObjectKind::Column,
                    name: "app.users.name".into(),
                    change: Change::Removed,
                    detail: Some("text COLLATE pg_catalog.\"C\"".into()),
                },
            ),
            (
                "alter_column_type",
                "DROP VIEW app.order_totals;
                 ALTER TABLE app.orders ALTER COLUMN total TYPE numeric(12,2);
                 CREATE VIEW app.order_totals AS SELECT user_id, sum(total) AS total FROM app.orders GROUP BY user_id;
                 COMMENT ON VIEW app.order_totals IS 'per user';",
                changed(ObjectKind::Column, "app.orders.total", "type", "numeric(10,2)", "numeric(12,2)"),
            ),
            (
                "drop_enum_label",
                "DROP MATERIALIZED VIEW app.order_counts;
                 ALTER TYPE app.order_status RENAME TO order_status_old;
                 CREATE TYPE app.order_status AS ENUM ('new', 'paid');
                 ALTER TABLE app.orders ALTER COLUMN status DROP DEFAULT;
                 DROP INDEX app.orders_one_new_per_user;
                 ALTER TABLE app.orders ALTER COLUMN status TYPE app.order_status USING status::text::app.order_status;
                 ALTER TABLE app.orders ALTER COLUMN status SET DEFAULT 'new';
                 DROP TYPE app.order_status_old;
                 CREATE UNIQUE INDEX orders_one_new_per_user ON app.orders (user_id) WHERE status = 'new';
                 CREATE MATERIALIZED VIEW app.order_counts AS SELECT status, count(*) AS n FROM app.orders GROUP BY status;
                 CREATE UNIQUE INDEX order_counts_status ON app.order_counts (status);",
                changed(ObjectKind::Enum, "app.order_status", "labels", "new, paid, shipped", "new, paid"),
            ),
            (
                "add_enum_label",
                "ALTER TYPE app.order_status ADD VALUE 'cancelled' BEFORE 'paid'",
                changed(
                    ObjectKind::Enum,
                    "app.order_status",
                    "labels",
                    "new, paid, shipped",
                    "new, cancelled, paid, shipped",
                ),
            ),
            (
                "add_index",
                "CREATE INDEX orders_created_idx ON app.orders (created_at DESC)",
                Difference {
                    kind: ObjectKind::Index,
                    name: "app.orders.orders_created_idx".into(),
                    change: Change::Added,
                    detail: Some(
                        "CREATE INDEX orders_created_idx ON app.orders USING btree (created_at DESC)".into(),
                    ),
                },
            ),
            (
                "change_default",
                "ALTER TABLE app.orders ALTER COLUMN total SET DEFAULT 1",
                changed(ObjectKind::Column, "app.orders.total", "default", "0", "1"),
            ),
            (
                "alter_view",
                "CREATE OR REPLACE VIEW app.order_totals AS
                   SELECT user_id, sum(total) AS total, count(*) AS n FROM app.orders GROUP BY user_id",
                changed(
                    ObjectKind::View,
                    "app.order_totals",
                    "definition",
                    &base_model.views["app.order_totals"].definition,
                    " SELECT orders.user_id,\n    sum(orders.total) AS total,\n    count(*) AS n\n   FROM app.orders\n  GROUP BY orders.user_id;",
                ),
            ),
            (
                "add_trigger",
                "CREATE TRIGGER orders_touch_upd BEFORE UPDATE ON app.orders FOR EACH ROW EXECUTE FUNCTION app.touch()",
                Difference {
                    kind: ObjectKind::Trigger,
                    name: "app.orders.orders_touch_upd".into(),
                    change: Change::Added,
                    detail: Some(
                        "CREATE TRIGGER orders_touch_upd BEFORE UPDATE ON app.orders FOR EACH ROW EXECUTE FUNCTION app.touch()".into(),
                    ),
                },
            ),
            (
                "function_body",
                "CREATE OR REPLACE FUNCTION app.add(a integer, b integer DEFAULT 1) RETURNS integer LANGUAGE sql IMMUTABLE AS 'SELECT a + b + 0'",
                {
                    use sha2::Digest;
                    changed(
                        ObjectKind::Function,
                        "app.add(integer, integer)",
                        "body",
                        &base_model.functions["app.add(integer, integer)"].body_sha256,
                        &hex::encode(sha2::Sha256::digest(b"SELECT a + b + 0")),
                    )
                },
            ),
            (
                "drop_fk",
                "ALTER TABLE app.orders DROP CONSTRAINT orders_user_id_fkey",
                Difference {
                    kind: ObjectKind::Constraint,
                    name: "app.orders.orders_user_id_fkey".into(),
                    change: Change::Removed,
                    detail: Some(
                        "FOREIGN KEY (user_id) REFERENCES app.users(id) ON DELETE CASCADE".into(),
                    ),
                },
            ),
            (
                "comment",
                "COMMENT ON COLUMN app.users.email IS 'sign-in address'",
                changed(ObjectKind::Comment, "app.users.email", "comment", "login", "sign-in address"),
            ),
        ];

        for (tag, change, expected) in cases {
            let changed_db = TestDb::create(&format!("{tag}_r"), Some(&base.name)).await;
            let mut c = changed_db.connect().await;
            sqlx::raw_sql(change).execute(&mut c).await.unwrap();
            c.close().await.ok();
            let right = model(&changed_db).await;
            let d = diff(&base_model, &right);
            assert_eq!(d, vec![expected.clone()], "case {tag}");
            eprintln!("[{tag}]\n{}", render_human(&d));

            // The script makes a copy of the base match the changed database.
            let left_db = TestDb::create(&format!("{tag}_l"), Some(&base.name)).await;
            let steps = to_sql(&base_model, &right, &d);
            eprintln!("{}", render_sql(&steps));
            apply(&left_db, &steps).await;
            let after = model(&left_db).await;
            assert_eq!(
                diff(&after, &right),
                vec![],
                "case {tag} after applying:\n{}",
                render_sql(&steps)
            );
            // And back again.
            let back = to_sql(&right, &base_model, &diff(&right, &base_model));
            apply(&left_db, &back).await;
            assert_eq!(
                diff(&model(&left_db).await, &base_model),
                vec![],
                "case {tag} reverse"
            );
        }
    }

    /// Tables that go are dropped before constraints and indexes change: a foreign key of
    /// theirs may hold an index being replaced, a new index may reuse the name of theirs, and
    /// a sequence they own may stay.
    #[tokio::test]
    async fn dropped_tables_make_way_for_what_replaces_them() {
        let cases = [
            (
                "fk_on_changing_pk",
                "CREATE TABLE parent (id int NOT NULL, v int NOT NULL, CONSTRAINT parent_pkey PRIMARY KEY (id));
                 CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent (id));",
                "CREATE TABLE parent (id int NOT NULL, v int NOT NULL, CONSTRAINT parent_pkey PRIMARY KEY (id, v));",
            ),
            (
                "index_name_reused",
                "CREATE TABLE a (id int CONSTRAINT a_pkey PRIMARY KEY);",
                "CREATE TABLE b (id int CONSTRAINT a_pkey PRIMARY KEY);",
            ),
            (
                "sequence_kept",
                "CREATE SEQUENCE shared_seq; CREATE TABLE old (id int DEFAULT nextval('shared_seq'));
                 ALTER SEQUENCE shared_seq OWNED BY old.id; CREATE TABLE keep (id int);",
                "CREATE SEQUENCE shared_seq; CREATE TABLE keep (id int DEFAULT nextval('shared_seq'));
                 ALTER SEQUENCE shared_seq OWNED BY keep.id; CREATE TABLE old2 (id int);",
            ),
        ];
        for (tag, left_sql, right_sql) in cases {
            let left = TestDb::create(&format!("makeway_{tag}_l"), None).await;
            let right = TestDb::create(&format!("makeway_{tag}_r"), None).await;
            for (db, sql) in [(&left, left_sql), (&right, right_sql)] {
                let mut c = db.connect().await;
                sqlx::raw_sql(sql).execute(&mut c).await.unwrap();
                c.close().await.ok();
            }
            let (ml, mr) = (model(&left).await, model(&right).await);
            let steps = to_sql(&ml, &mr, &diff(&ml, &mr));
            apply(&left, &steps).await;
            assert_eq!(
                diff(&model(&left).await, &mr),
                vec![],
                "{tag}:\n{}",
                render_sql(&steps)
            );
        }
    }

    /// Row-level security (on, forced, off) and policies are compared and their SQL converges
    /// both ways.
    #[tokio::test]
    async fn row_level_security_and_policies() {
        let plain = "CREATE TABLE docs (id int PRIMARY KEY, owner text);";
        let secured = "CREATE TABLE docs (id int PRIMARY KEY, owner text);
             ALTER TABLE docs ENABLE ROW LEVEL SECURITY; ALTER TABLE docs FORCE ROW LEVEL SECURITY;
             CREATE POLICY docs_owner ON docs FOR SELECT USING (owner = current_user);
             CREATE POLICY docs_insert ON docs AS RESTRICTIVE FOR INSERT TO PUBLIC WITH CHECK (owner IS NOT NULL);
             CREATE TABLE notes (id int);
             ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
             CREATE POLICY notes_all ON notes USING (id > 0);";
        for (tag, left_sql, right_sql, expected) in [
            ("rls_on", plain, secured, 4),
            ("rls_off", secured, plain, 4),
        ] {
            let left = TestDb::create(&format!("{tag}_l"), None).await;
            let right = TestDb::create(&format!("{tag}_r"), None).await;
            for (db, sql) in [(&left, left_sql), (&right, right_sql)] {
                let mut c = db.connect().await;
                sqlx::raw_sql(sql).execute(&mut c).await.unwrap();
                c.close().await.ok();
            }
            let (ml, mr) = (model(&left).await, model(&right).await);
            let found = diff(&ml, &mr);
            assert_eq!(found.len(), expected, "{tag}: {found:#?}");
            assert!(
                found.iter().any(|d| d.kind == ObjectKind::Table
                    && d.name == "public.docs"
                    && matches!(&d.change, Change::Changed { field, .. } if field == "row_security")),
                "{tag}: {found:#?}"
            );
            assert_eq!(
                found
                    .iter()
                    .filter(|d| d.kind == ObjectKind::Policy)
                    .count(),
                2,
                "{tag}: {found:#?}"
            );
            let steps = to_sql(&ml, &mr, &found);
            apply(&left, &steps).await;
            assert_eq!(
                diff(&model(&left).await, &mr),
                vec![],
                "{tag}:\n{}",
                render_sql(&steps)
            );
        }
    }

    #[tokio::test]
    async fn create_everything_from_nothing_and_drop_it_again() {
        let full = TestDb::create("fromnothing_full", None).await;
        load_fixture(&full).await;
        let right = model(&full).await;
        let empty = TestDb::create("fromnothing_empty", None).await;
        let left = model(&empty).await;
        let d = diff(&left, &right);
        let steps = to_sql(&left, &right, &d);
        apply(&empty, &steps).await;
        let after = model(&empty).await;
        // The INVALID index cannot be reproduced by creating it: it comes out valid.
        let rest: Vec<_> = diff(&after, &right);
        assert_eq!(
            rest,
            vec![changed(
                ObjectKind::Index,
                "app.dupes.dupes_v_key",
                "valid",
                "true",
                "false"
            )],
            "{}",
            render_sql(&steps)
        );
        // Dropping everything again.
        let down = to_sql(&after, &left, &diff(&after, &left));
        assert!(down.iter().any(|s| s.destructive));
        apply(&empty, &down).await;
        assert_eq!(diff(&model(&empty).await, &left), vec![]);
    }

    #[test]
    fn render_human_groups_by_table() {
        let d = vec![
            Difference {
                kind: ObjectKind::Enum,
                name: "public.order_status".into(),
                change: Change::Added,
                detail: Some("new, paid".into()),
            },
            Difference {
                kind: ObjectKind::Column,
                name: "public.orders.status".into(),
                change: Change::Added,
                detail: Some("public.order_status NOT NULL DEFAULT 'new'".into()),
            },
            changed(
                ObjectKind::Column,
                "public.orders.total",
                "type",
                "numeric(10,2)",
                "numeric(12,2)",
            ),
            Difference {
                kind: ObjectKind::Index,
                name: "public.orders.orders_total_idx".into(),
                change: Change::Removed,
                detail: None,
            },
        ];
        assert_eq!(
            render_human(&d),
            "+ enum public.order_status (new, paid)\n\
             table public.orders:\n  \
               + column status public.order_status NOT NULL DEFAULT 'new'\n  \
               ~ column total: numeric(10,2) → numeric(12,2)\n  \
               - index orders_total_idx\n"
        );
    }

    #[test]
    fn widening_and_enum_rules() {
        assert!(is_widening("integer", "bigint"));
        assert!(is_widening(
            "character varying(10)",
            "character varying(20)"
        ));
        assert!(is_widening("character varying(10)", "text"));
        assert!(is_widening("numeric(10,2)", "numeric(12,2)"));
        assert!(!is_widening("numeric(10,2)", "numeric(10,1)"));
        assert!(!is_widening("bigint", "integer"));
        assert!(!is_widening("text", "integer"));
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(!enum_recreate_needed(
            &v(&["a", "b"]),
            &v(&["x", "a", "y", "b", "z"])
        ));
        assert!(enum_recreate_needed(&v(&["a", "b"]), &v(&["b", "a"])));
        assert!(enum_recreate_needed(&v(&["a", "b"]), &v(&["a"])));
        let steps = render_sql(&[
            SqlStep {
                sql: "DROP TABLE t;".into(),
                destructive: true,
                comment: "drop table t".into(),
            },
            SqlStep {
                sql: "CREATE TABLE u ();".into(),
                destructive: false,
                comment: "create table u".into(),
            },
        ]);
        assert_eq!(
            steps,
            "-- DESTRUCTIVE: drop table t\nDROP TABLE t;\n-- create table u\nCREATE TABLE u ();\n"
        );
    }

    #[test]
    fn ignore_history_tables() {
        let mut a = Schema::default();
        let mut b = Schema::default();
        b.tables.insert(
            "public._prisma_migrations".into(),
            Table {
                columns: vec![],
                partition_of: None,
                partitioned_by: None,
                indexes: BTreeMap::new(),
                constraints: BTreeMap::new(),
                comment: None,
                row_security: crate::drift::model::ROW_SECURITY_DISABLED.into(),
                policies: BTreeMap::new(),
            },
        );
        assert_eq!(diff(&a, &b).len(), 1);
        let ig = Ignore {
            tables: vec!["_prisma_migrations".into()],
            schemas: vec![],
        };
        a = a.without(&ig);
        assert!(diff(&a, &b.without(&ig)).is_empty());
    }

    fn corpora_dir() -> std::path::PathBuf {
        match std::env::var("SLUICE_CORPORA") {
            Ok(dir) => dir.into(),
            Err(_) => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpora"),
        }
    }

    /// Migration files of a Prisma-layout corpus, ordered byte-wise by folder name.
    fn migrations(corpus: &std::path::Path) -> Vec<std::path::PathBuf> {
        let root = if corpus.join("migrations").is_dir() {
            corpus.join("migrations")
        } else {
            corpus.to_path_buf()
        };
        let mut dirs: Vec<_> = std::fs::read_dir(&root)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.join("migration.sql").is_file())
            .collect();
        dirs.sort_by(|a, b| {
            a.file_name()
                .unwrap()
                .as_encoded_bytes()
                .cmp(b.file_name().unwrap().as_encoded_bytes())
        });
        dirs.into_iter().map(|d| d.join("migration.sql")).collect()
    }

    fn apply_files(db: &TestDb, files: &[std::path::PathBuf]) {
        for f in files {
            let text = std::fs::read_to_string(f).unwrap();
            let upper = text.to_ascii_uppercase();
            let own_tx = upper.lines().any(|l| {
                let l = l.trim();
                l == "BEGIN;" || l == "COMMIT;" || l.starts_with("BEGIN TRANSACTION")
            });
            let single = !upper.contains("CONCURRENTLY") && !own_tx;
            if let Err(e) = db.psql_file(f, single) {
                panic!("applying {}: {e}", f.display());
            }
        }
    }

    #[tokio::test]
    #[ignore = "needs ../shared/corpora"]
    async fn corpora_to_sql_round_trip() {
        let dir = corpora_dir();
        let mut corpora: Vec<(usize, std::path::PathBuf)> = std::fs::read_dir(&dir)
            .expect("corpora directory")
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .map(|p| (migrations(&p).len(), p))
            .collect();
        corpora.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let ignore = Ignore {
            tables: vec!["_prisma_migrations".into(), "_sluice_migrations".into()],
            schemas: vec![],
        };
        // How many of the newest migrations B lacks (5 unless DRIFT_CORPUS_TAIL says otherwise).
        let tail: usize = std::env::var("DRIFT_CORPUS_TAIL")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(5);
        for (n, corpus) in corpora.into_iter().take(3) {
            let tail = tail.min(n);
            let tag = corpus
                .file_name()
                .unwrap()
                .to_string_lossy()
                .replace(['-', ' '], "_");
            let files = migrations(&corpus);
            let started = std::time::Instant::now();
            let b = TestDb::create(&format!("corpus_{tag}_b"), None).await;
            apply_files(&b, &files[..n - tail]);
            let a = TestDb::create(&format!("corpus_{tag}_a"), Some(&b.name)).await;
            apply_files(&a, &files[n - tail..]);
            let built = started.elapsed();

            let mut ca = a.connect().await;
            let (ma, sa) = super::super::introspect::introspect_postgres_with_stats(
                &mut ca,
                &IntrospectOptions::default(),
            )
            .await
            .unwrap();
            ca.close().await.ok();
            let t = std::time::Instant::now();
            let mb = model(&b).await;
            let intro_b = t.elapsed();
            let (ma, mb) = (ma.without(&ignore), mb.without(&ignore));
            let t = std::time::Instant::now();
            let d = diff(&mb, &ma);
            let steps = to_sql(&mb, &ma, &d);
            let diff_time = t.elapsed();
            eprintln!(
                "== {tag}: {n} migrations (built in {built:?}); introspect A {:?} ({} queries), B {intro_b:?}; diff+to_sql {diff_time:?}; {} differences, {} steps; model: {:?}",
                sa.elapsed,
                sa.query_count(),
                d.len(),
                steps.len(),
                ma.counts()
            );
            eprintln!("{}", render_human(&d));
            eprintln!("{}", render_sql(&steps));
            apply(&b, &steps).await;
            let after = model(&b).await.without(&ignore);
            let rest = diff(&after, &ma);
            assert_eq!(
                rest,
                vec![],
                "{tag}: left after applying:\n{}",
                render_human(&rest)
            );
            // Column order may differ (added columns go last); nothing else.
            assert_eq!(diff(&ma, &after), vec![], "{tag}: reverse diff");
        }
    }
}
