#!/usr/bin/env python3
"""Compares `sluice diff LEFT RIGHT --json` with migra's statements for the same pair of
databases, object by object. Called by scripts/drift-vs-migra.sh; see docs/drift-vs-migra.md.

    python drift_vs_migra.py --corpus NAME --sluice-json FILE --migra-sql FILE \
        --from-url SQLALCHEMY_URL --to-url SQLALCHEMY_URL [--statements-out FILE]

Runs with the Python of migra's virtualenv. It imports migra to get migra's statement list
(the calls `migra --unsafe` makes; the list, joined as the CLI joins it, must be byte-identical
to what the CLI printed into --migra-sql) and uses the two schemainspect inspections migra
worked from, plus three catalog queries on the same sessions, to look up facts a statement
does not carry: the table of a dropped index, which indexes back a constraint or are attached
to a partitioned parent's index, each function's argument types, and whether a view or
function migra recreates has a different definition. The rest is the standard library.

Both reports become a set of objects, (kind, qualified name), each with a change (added,
removed, changed); the two sets must be equal. Rules, named in the output:

migra statements folded into another object (listed under "folded"):
  table-children     sluice reports an added or dropped table as one difference; migra creates
                     it with its columns inline, then adds its indexes and constraints in
                     separate statements (and drops them before a dropped table). Column,
                     index and constraint statements on a table migra creates or drops belong
                     to that table.
  backing-index      an index behind a PRIMARY KEY, UNIQUE or EXCLUDE constraint is the
                     constraint in sluice's model; migra creates the index, then adds the
                     constraint `USING INDEX` (or drops both). The index statement belongs to
                     the constraint.
  partition-index    sluice models an index of a partition that is attached to the partitioned
                     parent's index on the parent only; migra lists each partition's index.
  enum-recreate      migra changes an enum by renaming it to <name>__old_version_to_be_dropped,
                     creating it anew, recasting every column of the type (`ALTER COLUMN c
                     TYPE e USING c::text::e`, its default dropped before and set back to the
                     same expression after) and dropping the old type: one changed enum (sluice:
                     `labels`; its --sql uses ALTER TYPE … ADD VALUE when labels are only
                     added). The recast and the restored default are not column changes; a
                     default set to a different expression still is.
  dependent-rebuild  migra drops and recreates views (and functions) that depend on a changed
                     object; one whose definition text is the same on both sides is not a
                     difference (a view's column types may differ, following the table).
migra statements that merge into one change:
  validate           `ADD CONSTRAINT … NOT VALID` then `VALIDATE CONSTRAINT`: one added
                     constraint.
  sequence-owner     `CREATE SEQUENCE` then `ALTER SEQUENCE … OWNED BY`: one added sequence.
  create-or-replace  `CREATE OR REPLACE` of a view or function the left side has: changed.
sluice differences migra cannot report (status "explained"):
  comments           migra does not compare comments (sluice kind `comment`).
  domains            migra 3.0 has no domain step at all (add_all_changes never diffs them).
  sequence-attributes  migra compares sequences by name and owner only (increment, start,
                     cache, … are sluice-only).
  index-was-constraint  a UNIQUE/PRIMARY KEY constraint replaced by a plain index of the same
                     name, or the other way round: to migra the index is the same on both
                     sides, only the constraint comes or goes.

Anything else on one side only, or with a different change, is UNEXPLAINED. A migra statement
the parser does not recognise is reported, never skipped.

Names: identifiers unquoted, joined with dots (`public.User.email`). A function is its schema
and its name with the argument types, whitespace removed (`public.f(integer,text)`): sluice
keys functions that way; migra names them by identity arguments with argument names, so each
migra function statement is matched to the inspected function it came from and that function's
`regprocedure` text is used.

Exit status: 0 when the sets are equal after the rules, 1 when something is unexplained, 2 on
bad input.
"""

import argparse
import json
import re
import sys

# ---------------------------------------------------------------------------
# Identifiers and qualified names

IDENT = r'(?:"(?:[^"]|"")*"|[A-Za-z_][A-Za-z0-9_$]*)'
QNAME = IDENT + r"(?:\s*\.\s*" + IDENT + r")*"


def unquote(ident):
    ident = ident.strip()
    if len(ident) >= 2 and ident.startswith('"') and ident.endswith('"'):
        return ident[1:-1].replace('""', '"')
    # A bare identifier is folded to lower case by the server.
    return ident.lower()


def split_qname(text):
    """`public."User".email` -> ('public', 'User', 'email'); dots inside quotes kept."""
    parts, cur, quoted, i = [], "", False, 0
    while i < len(text):
        ch = text[i]
        if ch == '"':
            if quoted and i + 1 < len(text) and text[i + 1] == '"':
                cur += '""'
                i += 2
                continue
            quoted = not quoted
            cur += ch
        elif ch == "." and not quoted:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
        i += 1
    parts.append(cur)
    return tuple(unquote(p) for p in parts)


def strip_args(text):
    """`public.f(integer, text)` -> `public.f` (the first parenthesis outside quotes)."""
    quoted = False
    for i, ch in enumerate(text):
        if ch == '"':
            quoted = not quoted
        elif ch == "(" and not quoted:
            return text[:i]
    return text


def func_parts(signature):
    """`public.f(integer, "Other Schema"."Kind")` -> ('public', 'f(integer,"OtherSchema"."Kind")'):
    schema, then name with the argument types (whitespace removed, so `integer, text` and
    `integer,text` are the same key)."""
    quoted = False
    for i, ch in enumerate(signature):
        if ch == '"':
            quoted = not quoted
        elif ch == "(" and not quoted:
            head, args = signature[:i], signature[i + 1 :].rstrip().rstrip(")")
            parts = split_qname(head)
            return parts[:-1] + (parts[-1] + "(" + re.sub(r"\s+", "", args) + ")",)
    return split_qname(signature)


def show(parts):
    return ".".join(parts)


# ---------------------------------------------------------------------------
# sluice's report


def sluice_objects(doc):
    """(kind, parts) -> {"changes": set, "detail": [...]} from `sluice diff --json`."""
    objs = {}
    for d in doc.get("differences", []):
        kind = d["kind"]
        name = d["name"]
        if kind == "function":
            parts = func_parts(name)
        else:
            parts = split_qname(name)
        if kind == "composite":
            kind = "composite type"
        # {"change": "added"|"removed"|"changed", "field": …, "left": …, "right": …} flattened
        # into the difference; older builds nested it as {"change": {"change": …, "field": …}}.
        ch = d["change"]
        if not isinstance(ch, dict):
            ch = d
        change = ch["change"]
        key = (kind, parts)
        rec = objs.setdefault(key, {"changes": set(), "detail": []})
        rec["changes"].add(change)
        if change == "changed":
            rec["detail"].append(ch.get("field", "?"))
    return objs


def category(changes):
    if changes == {"added"}:
        return "added"
    if changes == {"removed"}:
        return "removed"
    return "changed"


# ---------------------------------------------------------------------------
# migra's statements


class Rec:
    """One object a migra statement touches: kind, name parts, action, role."""

    def __init__(self, kind, parts, action, role="", extra=None, stmt=""):
        self.kind = kind
        self.parts = tuple(parts)
        self.action = action  # create | drop | alter
        self.role = role
        self.extra = extra or {}
        self.stmt = stmt

    def key(self):
        return (self.kind, self.parts)


OLD_SUFFIX = "__old_version_to_be_dropped"
F = re.IGNORECASE | re.DOTALL


def m(pattern, text):
    return re.match(pattern, text, F)


def classify(stmt, lookup):
    """The objects one migra statement touches (a list of Rec); raises ValueError when the
    statement is not understood (never silently ignored)."""
    s = stmt.strip()
    first = s.split("\n", 1)[0]

    def rec(kind, parts, action, role="", **extra):
        return Rec(kind, parts, action, role, extra, first)

    if m(r"set\s+check_function_bodies\b", s):
        return []
    if m(r"select 1;\s*--", s):
        # An exclusion constraint's own index, commented out by migra: the constraint
        # statement carries it.
        return []

    x = m(r"create\s+(?:unlogged\s+|temporary\s+)?table\s+(" + QNAME + r")", s)
    if x:
        return [rec("table", split_qname(x.group(1)), "create")]
    x = m(r"drop\s+table\s+(?:if\s+exists\s+)?(" + QNAME + r")", s)
    if x:
        return [rec("table", split_qname(x.group(1)), "drop")]

    x = m(r"alter\s+table\s+(?:only\s+)?(" + QNAME + r")\s+(.*)$", s)
    if x:
        table = split_qname(x.group(1))
        clause = x.group(2).strip().rstrip(";").strip()
        y = m(r"add\s+column\s+(?:if\s+not\s+exists\s+)?(" + IDENT + r")", clause)
        if y:
            return [rec("column", table + (unquote(y.group(1)),), "create")]
        y = m(r"drop\s+column\s+(?:if\s+exists\s+)?(" + IDENT + r")", clause)
        if y:
            return [rec("column", table + (unquote(y.group(1)),), "drop")]
        y = m(r"alter\s+column\s+(" + IDENT + r")\s+(.*)$", clause)
        if y:
            col = table + (unquote(y.group(1)),)
            rest = y.group(2).strip()
            if m(r"type\s+.*\busing\s+.*::text::", rest):
                # migra writes the column name of its enum recast unquoted whatever its case
                # (`alter column linkType type …`): take it verbatim, not folded to lower case.
                raw = y.group(1)
                verbatim = unquote(raw) if raw.startswith('"') else raw
                return [rec("column", table + (verbatim,), "alter", "enum-recast")]
            if m(r"drop\s+default$", rest):
                return [rec("column", col, "alter", "default-drop")]
            z = m(r"set\s+default\s+(.*)$", rest)
            if z:
                return [rec("column", col, "alter", "default-set", value=z.group(1).strip())]
            return [rec("column", col, "alter")]
        y = m(r"add\s+constraint\s+(" + IDENT + r")\s+(.*)$", clause)
        if y:
            using = m(r".*\busing\s+index\s+(" + IDENT + r")", y.group(2))
            return [
                rec(
                    "constraint",
                    table + (unquote(y.group(1)),),
                    "create",
                    using_index=unquote(using.group(1)) if using else None,
                )
            ]
        y = m(r"drop\s+constraint\s+(?:if\s+exists\s+)?(" + IDENT + r")", clause)
        if y:
            return [rec("constraint", table + (unquote(y.group(1)),), "drop")]
        y = m(r"validate\s+constraint\s+(" + IDENT + r")", clause)
        if y:
            return [rec("constraint", table + (unquote(y.group(1)),), "alter", "validate")]
        if m(r"(enable|disable|force|no\s+force)\s+row\s+level\s+security", clause):
            return [rec("row level security", table, "alter")]
        if m(r"(attach|detach)\s+partition|inherit|no\s+inherit|set\s+(logged|unlogged)", clause):
            return [rec("table", table, "alter")]
        raise ValueError("unknown ALTER TABLE clause")

    x = m(
        r"create\s+(?:unique\s+)?index\s+(?:concurrently\s+)?(?:if\s+not\s+exists\s+)?("
        + IDENT
        + r")\s+on\s+(?:only\s+)?("
        + QNAME
        + r")",
        s,
    )
    if x:
        table = split_qname(x.group(2))
        return [rec("index", table + (unquote(x.group(1)),), "create")]
    x = m(r"drop\s+index\s+(?:concurrently\s+)?(?:if\s+exists\s+)?(" + QNAME + r")", s)
    if x:
        schema, name = split_qname(x.group(1))
        table = lookup["index_table"].get((schema, name))
        if table is None:
            raise ValueError("dropped index not found in migra's inspection of the left side")
        return [rec("index", (schema, table, name), "drop")]

    x = m(r"alter\s+type\s+(" + QNAME + r")\s+rename\s+to\s+(" + IDENT + r")", s)
    if x:
        parts = split_qname(x.group(1))
        role = "enum-rename-old" if unquote(x.group(2)).endswith(OLD_SUFFIX) else ""
        return [rec(lookup_type_kind(parts, lookup), parts, "alter", role)]
    x = m(r"alter\s+type\s+(" + QNAME + r")\s+add\s+value", s)
    if x:
        return [rec("enum", split_qname(x.group(1)), "alter")]
    x = m(r"create\s+type\s+(" + QNAME + r")\s+as\s+enum\b", s)
    if x:
        return [rec("enum", split_qname(x.group(1)), "create")]
    x = m(r"create\s+type\s+(" + QNAME + r")\s+as\s*\(", s)
    if x:
        return [rec("composite type", split_qname(x.group(1)), "create")]
    x = m(r"drop\s+type\s+(?:if\s+exists\s+)?(" + QNAME + r")", s)
    if x:
        parts = split_qname(x.group(1))
        if parts[-1].endswith(OLD_SUFFIX):
            base = parts[:-1] + (parts[-1][: -len(OLD_SUFFIX)],)
            return [rec("enum", base, "alter", "enum-drop-old")]
        return [rec(lookup_type_kind(parts, lookup), parts, "drop")]
    x = m(r"(create|drop)\s+domain\s+(?:if\s+exists\s+)?(" + QNAME + r")", s)
    if x:
        action = x.group(1).lower()
        return [rec("domain", split_qname(x.group(2)), action)]

    x = m(r"create\s+(?:or\s+replace\s+)?view\s+(" + QNAME + r")", s)
    if x:
        return [rec("view", split_qname(x.group(1)), "create")]
    x = m(r"drop\s+view\s+(?:if\s+exists\s+)?(" + QNAME + r")", s)
    if x:
        return [rec("view", split_qname(x.group(1)), "drop")]
    x = m(r"create\s+materialized\s+view\s+(?:if\s+not\s+exists\s+)?(" + QNAME + r")", s)
    if x:
        return [rec("materialized_view", split_qname(x.group(1)), "create")]
    x = m(r"drop\s+materialized\s+view\s+(?:if\s+exists\s+)?(" + QNAME + r")", s)
    if x:
        return [rec("materialized_view", split_qname(x.group(1)), "drop")]

    # Functions: migra's statement is the inspected function's own create or drop statement,
    # which names it by identity arguments with argument names; look it up to get the
    # signature with argument types only (sluice's key).
    for action in ("create", "drop"):
        parts = lookup["function_stmt"][action].get(s)
        if parts is not None:
            return [rec("function", parts, action)]
    if m(r"(create\s+(or\s+replace\s+)?|drop\s+)(function|procedure|aggregate)\b", s):
        raise ValueError("function statement not found in migra's inspections")

    x = m(r"create\s+(?:constraint\s+)?trigger\s+(" + IDENT + r")\s.*?\son\s+(" + QNAME + r")\s", s)
    if x:
        return [rec("trigger", split_qname(x.group(2)) + (unquote(x.group(1)),), "create")]
    x = m(r"drop\s+trigger\s+(?:if\s+exists\s+)?(" + IDENT + r")\s+on\s+(" + QNAME + r")", s)
    if x:
        return [rec("trigger", split_qname(x.group(2)) + (unquote(x.group(1)),), "drop")]

    x = m(r"create\s+sequence\s+(?:if\s+not\s+exists\s+)?(" + QNAME + r")", s)
    if x:
        return [rec("sequence", split_qname(x.group(1)), "create")]
    x = m(r"drop\s+sequence\s+(?:if\s+exists\s+)?(" + QNAME + r")", s)
    if x:
        return [rec("sequence", split_qname(x.group(1)), "drop")]
    x = m(r"alter\s+sequence\s+(" + QNAME + r")\s+owned\s+by", s)
    if x:
        return [rec("sequence", split_qname(x.group(1)), "alter", "owned-by")]

    x = m(r"create\s+extension\s+(?:if\s+not\s+exists\s+)?(" + IDENT + r")", s)
    if x:
        return [rec("extension", (unquote(x.group(1)),), "create")]
    x = m(r"drop\s+extension\s+(?:if\s+exists\s+)?(" + IDENT + r")", s)
    if x:
        return [rec("extension", (unquote(x.group(1)),), "drop")]
    x = m(r"alter\s+extension\s+(" + IDENT + r")\s+update", s)
    if x:
        return [rec("extension", (unquote(x.group(1)),), "alter")]

    x = m(r"(create|drop)\s+schema\s+(?:if\s+(?:not\s+)?exists\s+)?(" + IDENT + r")", s)
    if x:
        return [rec("schema", (unquote(x.group(2)),), x.group(1).lower())]

    x = m(r"(create|drop|alter)\s+policy\s+(" + IDENT + r")\s+on\s+(" + QNAME + r")", s)
    if x:
        parts = split_qname(x.group(3)) + (unquote(x.group(2)),)
        return [rec("policy", parts, x.group(1).lower())]
    x = m(r"(create|drop)\s+collation\s+(?:if\s+(?:not\s+)?exists\s+)?(" + QNAME + r")", s)
    if x:
        return [rec("collation", split_qname(x.group(2)), x.group(1).lower())]
    x = m(r"(grant|revoke)\s", s)
    if x:
        return [rec("privilege", (first,), "alter")]
    raise ValueError("statement not understood")


def lookup_type_kind(parts, lookup):
    if parts in lookup["enums"]:
        return "enum"
    if parts in lookup["composites"]:
        return "composite type"
    return "enum"


# ---------------------------------------------------------------------------
# migra itself (runs only in migra's virtualenv)


def run_migra(from_url, to_url):
    """migra's statements for from_url -> to_url, as `migra --unsafe` computes them, plus
    lookups from the two inspections migra made."""
    from migra import Migration
    from sqlalchemy import text
    from sqlbag import S

    with S(from_url) as s_from, S(to_url) as s_to:
        mig = Migration(s_from, s_to)
        mig.set_safety(False)
        mig.add_all_changes()
        statements = list(mig.statements)
        sql = mig.sql if statements else ""
        i_from, i_to = mig.changes.i_from, mig.changes.i_target
        # Each function's signature with argument types only, schema-qualified
        # (regprocedure with only pg_catalog on the search path), by schema, name and
        # identity arguments (what schemainspect keys functions by).
        sigs, attached = {}, {}
        for side, sess in (("from", s_from), ("to", s_to)):
            sess.execute(text("SET search_path = pg_catalog"))
            rows = sess.execute(
                text(
                    "SELECT n.nspname, p.proname, pg_get_function_identity_arguments(p.oid), "
                    "p.oid::regprocedure::text FROM pg_proc p "
                    "JOIN pg_namespace n ON n.oid = p.pronamespace"
                )
            )
            sigs[side] = {(r[0], r[1], r[2]): r[3] for r in rows}
            # Indexes of partitions attached to an index of the partitioned parent.
            rows = sess.execute(
                text(
                    "SELECT n.nspname, t.relname, c.relname FROM pg_inherits h "
                    "JOIN pg_class c ON c.oid = h.inhrelid AND c.relkind = 'i' "
                    "JOIN pg_index i ON i.indexrelid = c.oid "
                    "JOIN pg_class t ON t.oid = i.indrelid "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace"
                )
            )
            attached[side] = {(r[0], r[1], r[2]) for r in rows}

    def qparts(q):
        return split_qname(strip_args(q))

    lookup = {"index_table": {}, "backing": {"from": set(), "to": set()}, "attached": attached}
    for side, insp in (("from", i_from), ("to", i_to)):
        for idx in insp.indexes.values():
            key = (idx.schema, idx.name)
            if side == "from":
                lookup["index_table"][key] = idx.table_name
            if idx.constraint is not None:
                lookup["backing"][side].add((idx.schema, idx.table_name, idx.name))
    lookup["enums"] = {qparts(k) for k in list(i_from.enums) + list(i_to.enums)}
    lookup["composites"] = {qparts(k) for k in list(i_from.types) + list(i_to.types)}

    # Columns' defaults on the left, for the enum-recreate rule.
    lookup["defaults_from"] = {}
    for tq, t in i_from.tables.items():
        for cname, col in t.columns.items():
            lookup["defaults_from"][qparts(tq) + (cname,)] = col.default

    def fparts(side, f):
        sig = sigs[side].get((f.schema, f.name, f.identity_arguments))
        if sig is None:
            return (f.schema, "%s(?%s)" % (f.name, f.identity_arguments))
        return func_parts(sig)

    lookup["function_stmt"] = {
        "create": {f.create_statement.strip(): fparts("to", f) for f in i_to.functions.values()},
        "drop": {f.drop_statement.strip(): fparts("from", f) for f in i_from.functions.values()},
    }

    # Views and functions whose definition text is the same on both sides (dependent-rebuild
    # rule; a view's columns may still differ in type, because a column it reads changed),
    # and those that exist on the left (`create or replace` of one of them is a change).
    unchanged, exists_from = set(), set()
    for kind, attr in (("view", "views"), ("materialized_view", "materialized_views")):
        a, b = getattr(i_from, attr), getattr(i_to, attr)
        exists_from.update((kind, qparts(k)) for k in a)
        for k in set(a) & set(b):
            if a[k].definition == b[k].definition:
                unchanged.add((kind, qparts(k)))
    a, b = i_from.functions, i_to.functions
    exists_from.update(("function", fparts("from", f)) for f in a.values())
    for k in set(a) & set(b):
        if a[k].definition == b[k].definition and a[k].full_definition == b[k].full_definition:
            unchanged.add(("function", fparts("from", a[k])))
    lookup["unchanged"] = unchanged
    lookup["exists_from"] = exists_from
    return statements, sql, lookup


# ---------------------------------------------------------------------------
# Normalisation


def migra_objects(statements, lookup):
    """(kind, parts) -> {"changes", "detail"}, plus the records folded away by each rule and
    the statements that were not understood."""
    recs, unparsed = [], []
    for st in statements:
        try:
            recs.extend(classify(st, lookup))
        except ValueError as e:
            unparsed.append((st.strip().split("\n", 1)[0], str(e)))

    folded = []  # (rule, Rec, explanation)

    def fold(rule, r, why):
        folded.append((rule, r, why))

    keep = []
    tables_created = {r.parts for r in recs if r.kind == "table" and r.action == "create"}
    tables_dropped = {r.parts for r in recs if r.kind == "table" and r.action == "drop"}
    tables_whole = tables_created | tables_dropped
    enums_recreated = {
        r.parts for r in recs if r.kind == "enum" and r.role in ("enum-rename-old", "enum-drop-old")
    }
    recast_cols = {r.parts for r in recs if r.role == "enum-recast"}
    for r in recs:
        if r.kind == "index" and (
            (r.action == "create" and r.parts in lookup["backing"]["to"])
            or (r.action == "drop" and r.parts in lookup["backing"]["from"])
        ):
            fold("backing-index", r, "index of constraint " + show(r.parts))
            continue
        if r.kind == "index" and (
            (r.action == "create" and r.parts in lookup["attached"]["to"])
            or (r.action == "drop" and r.parts in lookup["attached"]["from"])
        ):
            fold("partition-index", r, "attached to the index of the partitioned parent")
            continue
        if r.kind in ("column", "index", "constraint") and r.parts[:2] in tables_whole:
            what = "created" if r.parts[:2] in tables_created else "dropped"
            fold("table-children", r, "part of %s table %s" % (what, show(r.parts[:2])))
            continue
        if r.role == "enum-recast":
            fold("enum-recreate", r, "column recast to the recreated enum")
            continue
        if r.role in ("default-drop", "default-set") and r.parts in recast_cols:
            if r.role == "default-drop" or r.extra.get("value") == lookup["defaults_from"].get(r.parts):
                fold("enum-recreate", r, "default dropped and restored around the recast")
                continue
        if (r.kind, r.parts) in lookup["unchanged"]:
            fold("dependent-rebuild", r, "same definition on both sides")
            continue
        keep.append(r)

    objs = {}
    for r in keep:
        o = objs.setdefault(r.key(), {"actions": set(), "roles": set(), "stmts": []})
        o["actions"].add(r.action)
        o["roles"].add(r.role)
        o["stmts"].append(r.stmt)
    out = {}
    for key, o in objs.items():
        acts = set(o["actions"])
        notes = []
        if "validate" in o["roles"] and acts == {"create", "alter"}:
            acts = {"create"}
            notes.append("validate")
        if "owned-by" in o["roles"] and acts == {"create", "alter"}:
            acts = {"create"}
            notes.append("sequence-owner")
        if key[1] in enums_recreated and key[0] == "enum":
            notes.append("enum-recreate")
        if acts == {"create"} and key in lookup["exists_from"]:
            # `create or replace` of a view or function the left side already has.
            change = "changed"
            notes.append("create-or-replace")
        elif acts == {"create"}:
            change = "added"
        elif acts == {"drop"}:
            change = "removed"
        else:
            change = "changed"
        out[key] = {"change": change, "notes": notes, "stmts": o["stmts"]}
    return out, folded, unparsed


# ---------------------------------------------------------------------------
# Report


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--sluice-json", required=True)
    ap.add_argument("--migra-sql", required=True, help="what `migra --unsafe` printed")
    ap.add_argument("--from-url", required=True)
    ap.add_argument("--to-url", required=True)
    ap.add_argument("--statements-out", help="also write migra's statements here (JSON)")
    args = ap.parse_args()

    try:
        with open(args.sluice_json) as f:
            sluice_doc = json.load(f)
        with open(args.migra_sql) as f:
            cli_sql = f.read()
    except (OSError, ValueError) as e:
        print("drift-vs-migra: %s: cannot read the reports: %s" % (args.corpus, e), file=sys.stderr)
        return 2

    statements, sql, lookup = run_migra(args.from_url, args.to_url)
    # The CLI prints m.sql followed by print()'s newline, and nothing when there is nothing.
    expected_cli = sql + "\n" if statements else ""
    if cli_sql != expected_cli:
        print(
            "drift-vs-migra: %s: migra's statement list differs from what `migra --unsafe` printed "
            "(did the databases change between the two runs?)" % args.corpus,
            file=sys.stderr,
        )
        return 2
    if args.statements_out:
        with open(args.statements_out, "w") as f:
            json.dump(statements, f, indent=1)

    s_objs = sluice_objects(sluice_doc)
    m_objs, folded, unparsed = migra_objects(statements, lookup)

    # sluice's constraints and indexes by table and name, for the index-was-constraint rule.
    s_changes = {k: category(v["changes"]) for k, v in s_objs.items()}

    rows, problems = [], []
    for key in sorted(set(s_objs) | set(m_objs), key=lambda k: (k[0], k[1])):
        kind, parts = key
        s, mg = s_objs.get(key), m_objs.get(key)
        s_change = category(s["changes"]) if s else "-"
        m_change = mg["change"] if mg else "-"
        notes = list(mg["notes"]) if mg else []
        status = "both"
        if s and s["detail"]:
            notes.append("sluice fields: " + ",".join(sorted(set(s["detail"]))))
        if s and not mg:
            if kind == "comment":
                status = "explained"
                notes.append("comments: migra does not compare comments")
            elif kind == "domain":
                status = "explained"
                notes.append("domains: migra does not compare domains")
            elif kind == "sequence" and s_change == "changed" and set(s["detail"]) - {"owned_by"}:
                status = "explained"
                notes.append("sequence-attributes: migra compares sequences by name and owner only")
            elif kind == "index" and {s_change, s_changes.get(("constraint", parts))} == {"added", "removed"}:
                # A UNIQUE/PRIMARY KEY constraint replaced by a plain index of the same name
                # (or the other way round): to migra the index is the same on both sides and
                # only the constraint changes.
                status = "explained"
                notes.append("index-was-constraint: same-named constraint %s" % s_changes[("constraint", parts)])
            else:
                status = "UNEXPLAINED"
        elif mg and not s:
            status = "UNEXPLAINED"
            if kind in ("row level security", "policy"):
                notes.append("sluice does not model row-level security")
            notes.append("migra: " + " | ".join(mg["stmts"])[:160])
        elif s_change != m_change:
            status = "UNEXPLAINED"
            notes.append("change differs")
        if status == "UNEXPLAINED":
            problems.append(key)
        rows.append((kind, show(parts), s_change, m_change, status, "; ".join(notes)))

    print("== %s: %d sluice difference(s), %d migra statement(s)" % (
        args.corpus, len(sluice_doc.get("differences", [])), len(statements)))
    headers = ("kind", "object", "sluice", "migra", "status", "notes")
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    widths[-1] = 0
    fmt = "  ".join("%-" + str(w) + "s" for w in widths)
    print(fmt % headers)
    for r in rows:
        print((fmt % r).rstrip())
    if folded:
        print("-- migra statements folded by a rule:")
        seen = {}
        for rule, r, why in folded:
            k = (rule, r.kind, show(r.parts), why)
            seen[k] = seen.get(k, 0) + 1
        frows = [(rule, kind, name, str(n), why) for (rule, kind, name, why), n in seen.items()]
        fhead = ("rule", "kind", "object", "stmts", "why")
        fw = [max(len(h), *(len(r[i]) for r in frows)) for i, h in enumerate(fhead)]
        fw[-1] = 0
        ffmt = "   " + "  ".join("%-" + str(w) + "s" for w in fw)
        print((ffmt % fhead).rstrip())
        for r in frows:
            print((ffmt % r).rstrip())
    for st, why in unparsed:
        print("!! migra statement not understood (%s): %s" % (why, st[:160]))
    n_both = sum(1 for r in rows if r[4] == "both")
    n_expl = sum(1 for r in rows if r[4] == "explained")
    verdict = "OK" if not problems and not unparsed else "MISMATCH"
    print(
        "%s: %s: %d object(s) reported by both, %d explained, %d unexplained, %d migra statement(s) folded"
        % (args.corpus, verdict, n_both, n_expl, len(problems) + len(unparsed), len(folded))
    )
    return 0 if verdict == "OK" else 1


if __name__ == "__main__":
    sys.exit(main())
