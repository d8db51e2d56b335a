//! Build a [`Schema`] from a live database.
//!
//! PostgreSQL: one catalog query per object kind (13 in all: schemas,
//! extensions, enums, domains, composites, sequences, tables, columns, indexes,
//! constraints, views, functions, triggers), all inside one read-only
//! REPEATABLE READ transaction (a savepoint when the caller already has a
//! transaction open) with `SET LOCAL search_path = pg_catalog`, so the snapshot
//! is consistent and every name the server renders is schema-qualified. The
//! transaction is rolled back at the end, which also undoes the `SET LOCAL`.
//!
//! Objects that belong to an extension (`pg_depend.deptype = 'e'`) are left
//! out: `CREATE EXTENSION pgcrypto` shows as one extension, not as its
//! functions. Indexes that back a PRIMARY KEY / UNIQUE / EXCLUDE constraint are
//! modelled as the constraint only; constraints, indexes and triggers that
//! partitions inherit from their parent are modelled on the parent only.
//!
//! SQLite: the subset SQLite has (tables, columns, primary keys, unique
//! constraints, foreign keys, indexes, views, triggers) in four queries, under
//! schema `main`.

use super::model::{
    quote_ident, Column, Composite, CompositeAttribute, Constraint, ConstraintKind, Domain,
    Extension, Function, FunctionKind, Index, PartitionOf, Schema, Sequence, Table, Trigger, View,
};
use sqlx::{Connection, Row};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum IntrospectError {
    #[error("introspecting {kind}: {source}")]
    Query {
        kind: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("opening the introspection transaction: {0}")]
    Transaction(#[source] sqlx::Error),
    #[error("PostgreSQL {0} is not supported for introspection (needs 11 or later)")]
    UnsupportedServer(u32),
    #[error("unexpected catalog data for {kind}: {detail}")]
    Unexpected { kind: &'static str, detail: String },
}

/// What to introspect.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IntrospectOptions {
    /// Schemas to read (unquoted names as in `pg_namespace`). `None` reads every
    /// schema except `pg_catalog`, `information_schema`, `pg_toast*` and
    /// `pg_temp*`.
    pub schemas: Option<Vec<String>>,
}

/// How an introspection went: catalog queries issued (one per object kind),
/// total round trips and time. All catalog queries travel in one round trip
/// (simple query protocol), so a whole introspection is three round trips:
/// BEGIN, the batch, ROLLBACK.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IntrospectStats {
    /// Object kinds queried, in order; one catalog query each.
    pub queries: Vec<&'static str>,
    /// Time of the round trip that runs all catalog queries.
    pub batch_time: Duration,
    /// Every round trip to the server, transaction control included.
    pub round_trips: usize,
    pub elapsed: Duration,
}

impl IntrospectStats {
    /// Number of catalog queries issued.
    pub fn query_count(&self) -> usize {
        self.queries.len()
    }
}

/// Introspect a PostgreSQL database (11 or later).
pub async fn introspect_postgres(
    conn: &mut sqlx::PgConnection,
    options: &IntrospectOptions,
) -> Result<Schema, IntrospectError> {
    introspect_postgres_with_stats(conn, options)
        .await
        .map(|(s, _)| s)
}

/// Like [`introspect_postgres`], also returning how many queries it took.
pub async fn introspect_postgres_with_stats(
    conn: &mut sqlx::PgConnection,
    options: &IntrospectOptions,
) -> Result<(Schema, IntrospectStats), IntrospectError> {
    let started = Instant::now();
    let version = conn.server_version_num().unwrap_or(150000);
    if version < 110000 {
        return Err(IntrospectError::UnsupportedServer(version));
    }
    let mut stats = IntrospectStats::default();
    let mut tx = if conn.is_in_transaction() {
        conn.begin().await
    } else {
        conn.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await
    }
    .map_err(IntrospectError::Transaction)?;
    stats.round_trips += 1;

    let result = run_queries(&mut tx, options, version, &mut stats).await;
    // Read-only: always roll back (also undoes SET LOCAL inside a savepoint).
    let rb = tx.rollback().await;
    stats.round_trips += 1;
    let schema = result?;
    rb.map_err(IntrospectError::Transaction)?;
    stats.elapsed = started.elapsed();
    Ok((schema, stats))
}

/// `nspname` filter for alias `n`, parameter `$1` (text[] or NULL).
const NS: &str =
    "(CASE WHEN $1::text[] IS NULL THEN n.nspname NOT IN ('pg_catalog', 'information_schema') \
     AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%' \
     ELSE n.nspname = ANY($1::text[]) END)";

/// Not a member of an extension: `{catalog}` is the object's catalog, `{oid}` its oid.
fn not_ext(catalog: &str, oid: &str) -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM pg_depend de WHERE de.classid = '{catalog}'::regclass \
         AND de.objid = {oid} AND de.deptype = 'e')"
    )
}

const COLLATION_OF: &str = "(SELECT quote_ident(cn.nspname) || '.' || quote_ident(co.collname) \
     FROM pg_collation co JOIN pg_namespace cn ON cn.oid = co.collnamespace WHERE co.oid = {coll})";

fn collation_of(expr: &str) -> String {
    COLLATION_OF.replace("{coll}", expr)
}

/// `$1::text[]` replacement: the schema list as an SQL literal, or NULL.
fn schema_filter(schemas: &Option<Vec<String>>) -> String {
    match schemas {
        None => "NULL::text[]".to_string(),
        Some(list) => {
            // E'' strings mean the same whatever standard_conforming_strings says.
            let items: Vec<String> = list
                .iter()
                .map(|s| format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''")))
                .collect();
            format!("ARRAY[{}]::text[]", items.join(", "))
        }
    }
}

/// Run every catalog query in one simple-protocol round trip (together with
/// `SET LOCAL search_path`), and split the rows back per kind: each query's
/// first column is tagged with its kind.
async fn run_batch(
    tx: &mut sqlx::PgConnection,
    queries: &[(&'static str, String)],
    filter: &str,
    stats: &mut IntrospectStats,
) -> Result<Vec<Vec<sqlx::postgres::PgRow>>, IntrospectError> {
    let mut batch = String::from("SET LOCAL search_path = pg_catalog;\n");
    for (kind, sql) in queries {
        let body = sql
            .strip_prefix("SELECT ")
            .ok_or(IntrospectError::Unexpected {
                kind,
                detail: "catalog query must start with SELECT".into(),
            })?;
        batch.push_str(&format!(
            "SELECT '{kind}'::text AS sluice_kind, {};\n",
            body.replace("$1::text[]", filter)
        ));
        stats.queries.push(kind);
    }
    stats.round_trips += 1;
    let started = Instant::now();
    // Called through the connection (not `raw_sql(..).fetch_all(conn)`), so the future stays
    // `Send` for every lifetime and the daemon can run introspection on its tasks.
    let rows = sqlx::Executor::fetch_all(tx, sqlx::raw_sql(&batch))
        .await
        .map_err(|source| IntrospectError::Query {
            kind: "catalog batch",
            source,
        })?;
    stats.batch_time = started.elapsed();
    let mut by_kind: Vec<Vec<sqlx::postgres::PgRow>> = queries.iter().map(|_| Vec::new()).collect();
    for row in rows {
        let kind: String = row
            .try_get("sluice_kind")
            .map_err(|source| IntrospectError::Query {
                kind: "catalog batch",
                source,
            })?;
        match queries.iter().position(|(k, _)| *k == kind) {
            Some(i) => by_kind[i].push(row),
            None => {
                return Err(IntrospectError::Unexpected {
                    kind: "catalog batch",
                    detail: format!("row of unknown kind {kind}"),
                })
            }
        }
    }
    Ok(by_kind)
}

fn get<'r, T>(
    row: &'r sqlx::postgres::PgRow,
    kind: &'static str,
    col: &str,
) -> Result<T, IntrospectError>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(col)
        .map_err(|source| IntrospectError::Query { kind, source })
}

/// The catalog queries, one per object kind, in execution order. `NS` in them
/// is replaced by the schema filter.
fn catalog_queries(version: u32) -> Vec<(&'static str, String)> {
    let mut q: Vec<(&'static str, String)> = Vec::new();
    q.push((
        "schemas",
        format!(
            "SELECT quote_ident(n.nspname) AS name FROM pg_namespace n WHERE {NS} AND {}",
            not_ext("pg_namespace", "n.oid")
        ),
    ));
    q.push(("extensions", "SELECT e.extname::text AS name, quote_ident(n.nspname) AS schema, e.extversion AS version \
         FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace \
         WHERE $1::text[] IS NULL OR n.nspname = ANY($1::text[])".to_string()));
    q.push(("enums", format!(
        "SELECT quote_ident(n.nspname) || '.' || quote_ident(t.typname) AS name, \
         ARRAY(SELECT e.enumlabel::text FROM pg_enum e WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder) AS labels \
         FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace \
         WHERE t.typtype = 'e' AND {NS} AND {}",
        not_ext("pg_type", "t.oid")
    )));
    q.push(("domains", format!(
        "SELECT quote_ident(n.nspname) || '.' || quote_ident(t.typname) AS name, \
         format_type(t.typbasetype, t.typtypmod) AS data_type, t.typnotnull AS not_null, \
         pg_get_expr(t.typdefaultbin, 0) AS default_expr, \
         CASE WHEN t.typcollation <> 0 AND t.typcollation <> bt.typcollation THEN {} END AS collation, \
         ARRAY(SELECT quote_ident(c.conname) FROM pg_constraint c WHERE c.contypid = t.oid AND c.contype = 'c' ORDER BY c.conname) AS con_names, \
         ARRAY(SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c WHERE c.contypid = t.oid AND c.contype = 'c' ORDER BY c.conname) AS con_defs, \
         obj_description(t.oid, 'pg_type') AS comment \
         FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace JOIN pg_type bt ON bt.oid = t.typbasetype \
         WHERE t.typtype = 'd' AND {NS} AND {}",
        collation_of("t.typcollation"),
        not_ext("pg_type", "t.oid")
    )));
    q.push(("composites", format!(
        "SELECT quote_ident(n.nspname) || '.' || quote_ident(t.typname) AS name, \
         ARRAY(SELECT quote_ident(a.attname) FROM pg_attribute a WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum) AS names, \
         ARRAY(SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum) AS types, \
         obj_description(t.oid, 'pg_type') AS comment \
         FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace JOIN pg_class c ON c.oid = t.typrelid \
         WHERE t.typtype = 'c' AND c.relkind = 'c' AND {NS} AND {}",
        not_ext("pg_type", "t.oid")
    )));
    q.push(("sequences", format!(
        "SELECT c.oid::regclass::text AS name, format_type(s.seqtypid, NULL) AS data_type, \
         s.seqstart, s.seqincrement, s.seqmin, s.seqmax, s.seqcache, s.seqcycle, \
         (SELECT d.refobjid::regclass::text || '.' || quote_ident(a.attname) FROM pg_depend d \
            JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid \
            WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.refclassid = 'pg_class'::regclass \
            AND d.deptype = 'a' AND d.refobjsubid > 0 LIMIT 1) AS owned_by \
         FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE {NS} AND {} AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass \
            AND d.objid = c.oid AND d.deptype = 'i')",
        not_ext("pg_class", "c.oid")
    )));
    q.push(("tables", format!(
        "SELECT c.oid::regclass::text AS name, \
         CASE WHEN c.relispartition THEN (SELECT i.inhparent::regclass::text FROM pg_inherits i WHERE i.inhrelid = c.oid LIMIT 1) END AS parent, \
         CASE WHEN c.relispartition THEN pg_get_expr(c.relpartbound, c.oid) END AS bound, \
         CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END AS partkey, \
         obj_description(c.oid, 'pg_class') AS comment, \
         CASE WHEN c.relforcerowsecurity THEN 'forced' WHEN c.relrowsecurity THEN 'enabled' ELSE 'disabled' END AS row_security, \
         ARRAY(SELECT quote_ident(p.polname) FROM pg_policy p WHERE p.polrelid = c.oid ORDER BY p.polname) AS policy_names, \
         ARRAY(SELECT 'AS ' || CASE WHEN p.polpermissive THEN 'PERMISSIVE' ELSE 'RESTRICTIVE' END \
            || ' FOR ' || CASE p.polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' WHEN 'w' THEN 'UPDATE' WHEN 'd' THEN 'DELETE' ELSE 'ALL' END \
            || ' TO ' || CASE WHEN p.polroles = '{{0}}'::oid[] THEN 'PUBLIC' ELSE \
               (SELECT string_agg(quote_ident(r.rolname), ', ' ORDER BY r.rolname) FROM pg_roles r WHERE r.oid = ANY (p.polroles)) END \
            || COALESCE(' USING (' || pg_get_expr(p.polqual, p.polrelid) || ')', '') \
            || COALESCE(' WITH CHECK (' || pg_get_expr(p.polwithcheck, p.polrelid) || ')', '') \
            FROM pg_policy p WHERE p.polrelid = c.oid ORDER BY p.polname) AS policy_defs \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p') AND {NS} AND {}",
        not_ext("pg_class", "c.oid")
    )));
    q.push(("columns", format!(
        "SELECT c.oid::regclass::text AS table_name, quote_ident(a.attname) AS name, \
         format_type(a.atttypid, a.atttypmod) AS data_type, a.attnotnull AS not_null, \
         CASE WHEN a.attgenerated = '' THEN pg_get_expr(ad.adbin, ad.adrelid) END AS default_expr, \
         CASE WHEN a.attgenerated <> '' THEN pg_get_expr(ad.adbin, ad.adrelid) END AS generated, \
         CASE a.attidentity WHEN 'a' THEN 'always' WHEN 'd' THEN 'by default' END AS identity, \
         CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation THEN {} END AS collation, \
         col_description(c.oid, a.attnum) AS comment \
         FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_type t ON t.oid = a.atttypid \
         LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum \
         WHERE c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped AND {NS} AND {} \
         ORDER BY c.oid, a.attnum",
        collation_of("a.attcollation"),
        not_ext("pg_class", "c.oid")
    )));
    q.push(("indexes", format!(
        "SELECT c.oid::regclass::text AS table_name, c.relkind::text AS relkind, quote_ident(i.relname) AS name, \
         pg_get_indexdef(i.oid) AS definition, x.indisunique AS is_unique, x.indisprimary AS is_primary, \
         am.amname::text AS method, \
         ARRAY(SELECT pg_get_indexdef(i.oid, k, true) FROM generate_series(1, x.indnkeyatts::int) k ORDER BY k) AS columns, \
         pg_get_expr(x.indpred, x.indrelid) AS predicate, x.indisvalid AS valid \
         FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class c ON c.oid = x.indrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_am am ON am.oid = i.relam \
         WHERE c.relkind IN ('r', 'p', 'm') AND {NS} AND {} AND {} \
         AND NOT EXISTS (SELECT 1 FROM pg_constraint con WHERE con.conindid = x.indexrelid \
             AND con.conrelid = x.indrelid AND con.contype IN ('p', 'u', 'x')) \
         AND NOT EXISTS (SELECT 1 FROM pg_inherits ih WHERE ih.inhrelid = x.indexrelid)",
        not_ext("pg_class", "c.oid"),
        not_ext("pg_class", "i.oid")
    )));
    q.push(("constraints", format!(
        "SELECT c.oid::regclass::text AS table_name, quote_ident(con.conname) AS name, con.contype::text AS contype, \
         pg_get_constraintdef(con.oid) AS definition, con.condeferrable, con.condeferred, con.convalidated, \
         CASE WHEN con.contype = 'f' THEN con.confrelid::regclass::text END AS refs \
         FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p') AND con.contype IN ('p', 'u', 'f', 'c', 'x') \
         AND con.conparentid = 0 AND con.conislocal AND {NS} AND {}",
        not_ext("pg_class", "c.oid")
    )));
    q.push(("views", format!(
        "SELECT c.oid::regclass::text AS name, c.relkind = 'm' AS materialized, \
         pg_get_viewdef(c.oid, true) AS definition, \
         ARRAY(SELECT DISTINCT d.refobjid::regclass::text FROM pg_rewrite r \
            JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid \
            WHERE r.ev_class = c.oid AND d.refclassid = 'pg_class'::regclass AND d.refobjid <> c.oid ORDER BY 1) AS depends_on, \
         obj_description(c.oid, 'pg_class') AS comment \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('v', 'm') AND {NS} AND {}",
        not_ext("pg_class", "c.oid")
    )));
    q.push(("functions", format!(
        "SELECT quote_ident(n.nspname) || '.' || quote_ident(p.proname) || '(' || \
           array_to_string(ARRAY(SELECT format_type(a.t, NULL) FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY AS a(t, ord) ORDER BY a.ord), ', ') \
           || ')' AS signature, \
         p.prokind::text AS prokind, pg_get_function_arguments(p.oid) AS arguments, \
         CASE WHEN p.prokind <> 'p' THEN pg_get_function_result(p.oid) END AS returns, \
         l.lanname::text AS language, encode(sha256(convert_to(p.prosrc, 'UTF8')), 'hex') AS body_sha256, \
         CASE p.provolatile WHEN 'i' THEN 'immutable' WHEN 's' THEN 'stable' ELSE 'volatile' END AS volatility, \
         p.prosecdef AS security_definer, \
         CASE WHEN p.prokind <> 'a' THEN pg_get_functiondef(p.oid) END AS definition, \
         obj_description(p.oid, 'pg_proc') AS comment \
         FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace JOIN pg_language l ON l.oid = p.prolang \
         WHERE {NS} AND {}",
        not_ext("pg_proc", "p.oid")
    )));
    let parent_filter = if version >= 130000 {
        "AND t.tgparentid = 0"
    } else {
        ""
    };
    q.push(("triggers", format!(
        "SELECT c.oid::regclass::text AS table_name, quote_ident(t.tgname) AS name, \
         pg_get_triggerdef(t.oid) AS definition, \
         CASE t.tgenabled WHEN 'O' THEN 'origin' WHEN 'D' THEN 'disabled' WHEN 'R' THEN 'replica' ELSE 'always' END AS enabled \
         FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE NOT t.tgisinternal {parent_filter} AND {NS} AND {}",
        not_ext("pg_class", "c.oid")
    )));
    q
}

async fn run_queries(
    tx: &mut sqlx::PgConnection,
    options: &IntrospectOptions,
    version: u32,
    stats: &mut IntrospectStats,
) -> Result<Schema, IntrospectError> {
    let queries = catalog_queries(version);
    let filter = schema_filter(&options.schemas);
    let mut results = run_batch(tx, &queries, &filter, stats).await?.into_iter();
    let mut next = |kind: &'static str| -> Result<Vec<sqlx::postgres::PgRow>, IntrospectError> {
        results.next().ok_or(IntrospectError::Unexpected {
            kind,
            detail: "missing result set".into(),
        })
    };
    let mut out = Schema::default();

    // --- schemas
    let kind = "schemas";
    for row in next(kind)? {
        out.schemas.insert(get(&row, kind, "name")?);
    }

    // --- extensions
    let kind = "extensions";
    for row in next(kind)? {
        out.extensions.insert(
            get(&row, kind, "name")?,
            Extension {
                schema: get(&row, kind, "schema")?,
                version: get(&row, kind, "version")?,
            },
        );
    }

    // --- enums
    let kind = "enums";
    for row in next(kind)? {
        out.enums
            .insert(get(&row, kind, "name")?, get(&row, kind, "labels")?);
    }

    // --- domains
    let kind = "domains";
    for row in next(kind)? {
        let names: Vec<String> = get(&row, kind, "con_names")?;
        let defs: Vec<String> = get(&row, kind, "con_defs")?;
        out.domains.insert(
            get(&row, kind, "name")?,
            Domain {
                data_type: get(&row, kind, "data_type")?,
                not_null: get(&row, kind, "not_null")?,
                default: get(&row, kind, "default_expr")?,
                collation: get(&row, kind, "collation")?,
                constraints: names.into_iter().zip(defs).collect(),
                comment: get(&row, kind, "comment")?,
            },
        );
    }

    // --- composite types
    let kind = "composites";
    for row in next(kind)? {
        let names: Vec<String> = get(&row, kind, "names")?;
        let types: Vec<String> = get(&row, kind, "types")?;
        out.composites.insert(
            get(&row, kind, "name")?,
            Composite {
                attributes: names
                    .into_iter()
                    .zip(types)
                    .map(|(name, data_type)| CompositeAttribute { name, data_type })
                    .collect(),
                comment: get(&row, kind, "comment")?,
            },
        );
    }

    // --- sequences (identity sequences belong to their column)
    let kind = "sequences";
    for row in next(kind)? {
        out.sequences.insert(
            get(&row, kind, "name")?,
            Sequence {
                data_type: get(&row, kind, "data_type")?,
                start: get(&row, kind, "seqstart")?,
                increment: get(&row, kind, "seqincrement")?,
                min_value: get(&row, kind, "seqmin")?,
                max_value: get(&row, kind, "seqmax")?,
                cache: get(&row, kind, "seqcache")?,
                cycle: get(&row, kind, "seqcycle")?,
                owned_by: get(&row, kind, "owned_by")?,
            },
        );
    }

    // --- tables and partitions
    let kind = "tables";
    for row in next(kind)? {
        let parent: Option<String> = get(&row, kind, "parent")?;
        let bound: Option<String> = get(&row, kind, "bound")?;
        out.tables.insert(
            get(&row, kind, "name")?,
            Table {
                columns: Vec::new(),
                partition_of: parent.map(|parent| PartitionOf {
                    parent,
                    bound: bound.unwrap_or_default(),
                }),
                partitioned_by: get(&row, kind, "partkey")?,
                indexes: BTreeMap::new(),
                constraints: BTreeMap::new(),
                comment: get(&row, kind, "comment")?,
                row_security: get(&row, kind, "row_security")?,
                policies: {
                    let names: Vec<String> = get(&row, kind, "policy_names")?;
                    let definitions: Vec<String> = get(&row, kind, "policy_defs")?;
                    names.into_iter().zip(definitions).collect()
                },
            },
        );
    }

    // --- columns
    let kind = "columns";
    for row in next(kind)? {
        let table: String = get(&row, kind, "table_name")?;
        let column = Column {
            name: get(&row, kind, "name")?,
            data_type: get(&row, kind, "data_type")?,
            not_null: get(&row, kind, "not_null")?,
            default: get(&row, kind, "default_expr")?,
            identity: get(&row, kind, "identity")?,
            generated: get(&row, kind, "generated")?,
            collation: get(&row, kind, "collation")?,
            comment: get(&row, kind, "comment")?,
        };
        match out.tables.get_mut(&table) {
            Some(t) => t.columns.push(column),
            None => {
                return Err(IntrospectError::Unexpected {
                    kind,
                    detail: format!("column {} of unknown table {table}", column.name),
                })
            }
        }
    }

    // --- indexes (not those backing constraints, not attached partition indexes)
    let kind = "indexes";
    let mut matview_indexes: Vec<(String, String, Index)> = Vec::new();
    for row in next(kind)? {
        let table: String = get(&row, kind, "table_name")?;
        let relkind: String = get(&row, kind, "relkind")?;
        let name: String = get(&row, kind, "name")?;
        let mut definition: String = get(&row, kind, "definition")?;
        if relkind == "p" {
            // An index on a partitioned table cascades to its partitions when
            // created without ONLY, which is what recreating it should do.
            definition = definition.replacen(" ON ONLY ", " ON ", 1);
        }
        let index = Index {
            definition,
            unique: get(&row, kind, "is_unique")?,
            primary: get(&row, kind, "is_primary")?,
            method: get(&row, kind, "method")?,
            columns: get(&row, kind, "columns")?,
            predicate: get(&row, kind, "predicate")?,
            valid: get(&row, kind, "valid")?,
        };
        if relkind == "m" {
            matview_indexes.push((table, name, index));
        } else if let Some(t) = out.tables.get_mut(&table) {
            t.indexes.insert(name, index);
        }
    }

    // --- constraints (local ones; clones on partitions are modelled on the parent)
    let kind = "constraints";
    for row in next(kind)? {
        let table: String = get(&row, kind, "table_name")?;
        let contype: String = get(&row, kind, "contype")?;
        let ckind = match contype.as_str() {
            "p" => ConstraintKind::Primary,
            "u" => ConstraintKind::Unique,
            "f" => ConstraintKind::ForeignKey,
            "c" => ConstraintKind::Check,
            "x" => ConstraintKind::Exclusion,
            other => {
                return Err(IntrospectError::Unexpected {
                    kind,
                    detail: format!("constraint type {other}"),
                })
            }
        };
        let constraint = Constraint {
            kind: ckind,
            definition: get(&row, kind, "definition")?,
            deferrable: get(&row, kind, "condeferrable")?,
            initially_deferred: get(&row, kind, "condeferred")?,
            validated: get(&row, kind, "convalidated")?,
            references: get(&row, kind, "refs")?,
        };
        if let Some(t) = out.tables.get_mut(&table) {
            t.constraints.insert(get(&row, kind, "name")?, constraint);
        }
    }

    // --- views and materialized views
    let kind = "views";
    for row in next(kind)? {
        out.views.insert(
            get(&row, kind, "name")?,
            View {
                materialized: get(&row, kind, "materialized")?,
                definition: get(&row, kind, "definition")?,
                depends_on: get(&row, kind, "depends_on")?,
                indexes: BTreeMap::new(),
                comment: get(&row, kind, "comment")?,
            },
        );
    }
    for (view, name, index) in matview_indexes {
        if let Some(v) = out.views.get_mut(&view) {
            v.indexes.insert(name, index);
        }
    }

    // --- functions, procedures, aggregates
    let kind = "functions";
    for row in next(kind)? {
        let prokind: String = get(&row, kind, "prokind")?;
        let fkind = match prokind.as_str() {
            "p" => FunctionKind::Procedure,
            "a" => FunctionKind::Aggregate,
            "w" => FunctionKind::Window,
            _ => FunctionKind::Function,
        };
        out.functions.insert(
            get(&row, kind, "signature")?,
            Function {
                kind: fkind,
                arguments: get(&row, kind, "arguments")?,
                returns: get(&row, kind, "returns")?,
                language: get(&row, kind, "language")?,
                body_sha256: get(&row, kind, "body_sha256")?,
                volatility: get(&row, kind, "volatility")?,
                security_definer: get(&row, kind, "security_definer")?,
                definition: get(&row, kind, "definition")?,
                comment: get(&row, kind, "comment")?,
            },
        );
    }

    // --- triggers (user triggers; clones on partitions are modelled on the parent)
    let kind = "triggers";
    for row in next(kind)? {
        let table: String = get(&row, kind, "table_name")?;
        let name: String = get(&row, kind, "name")?;
        out.triggers.insert(
            format!("{table}.{name}"),
            Trigger {
                table,
                name,
                definition: get(&row, kind, "definition")?,
                enabled: get(&row, kind, "enabled")?,
            },
        );
    }

    Ok(out)
}

/// Introspect a SQLite database: the subset SQLite has, under schema `main`
/// (tables, columns with declared type / NOT NULL / default, primary keys and
/// unique constraints, foreign keys, indexes with their SQL, views, triggers).
/// Four queries. CHECK constraints and generated expressions are not exposed by
/// SQLite's pragmas and are not modelled (generated columns are marked
/// `VIRTUAL`/`STORED`).
pub async fn introspect_sqlite(
    conn: &mut sqlx::SqliteConnection,
) -> Result<Schema, IntrospectError> {
    let mut out = Schema::default();
    out.schemas.insert("main".to_string());
    let q = |name: &str| format!("main.{}", quote_ident(name));

    // tables and columns
    let kind = "columns";
    let rows = sqlx::query(
        "SELECT m.name AS tname, p.name AS cname, p.type AS ctype, p.\"notnull\" AS nn, \
         p.dflt_value AS dflt, p.pk AS pk, p.hidden AS hidden \
         FROM sqlite_master m JOIN pragma_table_xinfo(m.name) p \
         WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY m.name, p.cid",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(|source| IntrospectError::Query { kind, source })?;
    let mut pks: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
    for row in rows {
        let sget = |col: &str| -> Result<Option<String>, IntrospectError> {
            row.try_get(col)
                .map_err(|source| IntrospectError::Query { kind, source })
        };
        let tname = sget("tname")?.unwrap_or_default();
        let cname = sget("cname")?.unwrap_or_default();
        let notnull: i64 = row
            .try_get("nn")
            .map_err(|source| IntrospectError::Query { kind, source })?;
        let pk: i64 = row
            .try_get("pk")
            .map_err(|source| IntrospectError::Query { kind, source })?;
        let hidden: i64 = row
            .try_get("hidden")
            .map_err(|source| IntrospectError::Query { kind, source })?;
        let qt = q(&tname);
        let table = out.tables.entry(qt.clone()).or_insert_with(|| Table {
            columns: Vec::new(),
            partition_of: None,
            partitioned_by: None,
            indexes: BTreeMap::new(),
            constraints: BTreeMap::new(),
            comment: None,
            row_security: super::model::ROW_SECURITY_DISABLED.into(),
            policies: BTreeMap::new(),
        });
        if pk > 0 {
            pks.entry(qt).or_default().push((pk, quote_ident(&cname)));
        }
        let generated = match hidden {
            2 => Some("VIRTUAL".to_string()),
            3 => Some("STORED".to_string()),
            _ => None,
        };
        if hidden == 1 {
            continue;
        }
        table.columns.push(Column {
            name: quote_ident(&cname),
            data_type: sget("ctype")?.unwrap_or_default(),
            not_null: notnull != 0,
            default: sget("dflt")?,
            identity: None,
            generated,
            collation: None,
            comment: None,
        });
    }
    for (qt, mut cols) in pks {
        cols.sort();
        let short = split_last(&qt);
        if let Some(t) = out.tables.get_mut(&qt) {
            t.constraints.insert(
                quote_ident(&format!("{short}_pkey")),
                Constraint {
                    kind: ConstraintKind::Primary,
                    definition: format!(
                        "PRIMARY KEY ({})",
                        cols.into_iter().map(|c| c.1).collect::<Vec<_>>().join(", ")
                    ),
                    deferrable: false,
                    initially_deferred: false,
                    validated: true,
                    references: None,
                },
            );
        }
    }

    // indexes (one row per index column)
    let kind = "indexes";
    let rows = sqlx::query(
        "SELECT m.name AS tname, il.name AS iname, il.\"unique\" AS uniq, il.origin AS origin, \
         il.partial AS partial, ix.sql AS sql, ii.seqno AS seqno, ii.name AS col \
         FROM sqlite_master m JOIN pragma_index_list(m.name) il \
         LEFT JOIN pragma_index_info(il.name) ii \
         LEFT JOIN sqlite_master ix ON ix.type = 'index' AND ix.name = il.name \
         WHERE m.type = 'table' ORDER BY m.name, il.name, ii.seqno",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(|source| IntrospectError::Query { kind, source })?;
    for row in rows {
        let e = |source| IntrospectError::Query { kind, source };
        let tname: String = row.try_get("tname").map_err(e)?;
        let iname: String = row.try_get("iname").map_err(e)?;
        let uniq: i64 = row.try_get("uniq").map_err(e)?;
        let origin: String = row.try_get("origin").map_err(e)?;
        let partial: i64 = row.try_get("partial").map_err(e)?;
        let sql: Option<String> = row.try_get("sql").map_err(e)?;
        let col: Option<String> = row.try_get("col").map_err(e)?;
        let col = col
            .map(|c| quote_ident(&c))
            .unwrap_or_else(|| "<expression>".into());
        let Some(table) = out.tables.get_mut(&q(&tname)) else {
            continue;
        };
        match origin.as_str() {
            "pk" => {}
            "u" => {
                let c = table
                    .constraints
                    .entry(quote_ident(&iname))
                    .or_insert_with(|| Constraint {
                        kind: ConstraintKind::Unique,
                        definition: String::new(),
                        deferrable: false,
                        initially_deferred: false,
                        validated: true,
                        references: None,
                    });
                let cols = c
                    .definition
                    .strip_prefix("UNIQUE (")
                    .and_then(|s| s.strip_suffix(')'))
                    .map(|s| s.to_string());
                c.definition = match cols {
                    Some(prev) => format!("UNIQUE ({prev}, {col})"),
                    None => format!("UNIQUE ({col})"),
                };
            }
            _ => {
                let sql = sql.unwrap_or_default();
                let predicate = if partial != 0 {
                    let upper = sql.to_ascii_uppercase();
                    upper
                        .rfind(" WHERE ")
                        .map(|i| sql[i + 7..].trim().to_string())
                } else {
                    None
                };
                let idx = table
                    .indexes
                    .entry(quote_ident(&iname))
                    .or_insert_with(|| Index {
                        definition: sql,
                        unique: uniq != 0,
                        primary: false,
                        method: "btree".into(),
                        columns: Vec::new(),
                        predicate,
                        valid: true,
                    });
                idx.columns.push(col);
            }
        }
    }

    // foreign keys (one row per column pair)
    let kind = "constraints";
    let rows = sqlx::query(
        "SELECT m.name AS tname, fk.id AS id, fk.\"table\" AS ref, fk.\"from\" AS src, fk.\"to\" AS dst, \
         fk.on_update AS on_update, fk.on_delete AS on_delete \
         FROM sqlite_master m JOIN pragma_foreign_key_list(m.name) fk \
         WHERE m.type = 'table' ORDER BY m.name, fk.id, fk.seq",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(|source| IntrospectError::Query { kind, source })?;
    // (table, id) -> (ref, from cols, to cols, on_update, on_delete)
    type Fk = (String, Vec<String>, Vec<String>, String, String);
    let mut fks: BTreeMap<(String, i64), Fk> = BTreeMap::new();
    for row in rows {
        let e = |source| IntrospectError::Query { kind, source };
        let tname: String = row.try_get("tname").map_err(e)?;
        let id: i64 = row.try_get("id").map_err(e)?;
        let entry = fks.entry((tname, id)).or_insert_with(|| {
            (
                row.try_get("ref").unwrap_or_default(),
                Vec::new(),
                Vec::new(),
                row.try_get("on_update").unwrap_or_default(),
                row.try_get("on_delete").unwrap_or_default(),
            )
        });
        let src: String = row.try_get("src").map_err(e)?;
        let dst: Option<String> = row.try_get("dst").map_err(e)?;
        entry.1.push(quote_ident(&src));
        entry
            .2
            .push(dst.map(|d| quote_ident(&d)).unwrap_or_default());
    }
    for ((tname, _), (reft, from, to, on_update, on_delete)) in fks {
        let mut def = format!(
            "FOREIGN KEY ({}) REFERENCES {}({})",
            from.join(", "),
            q(&reft),
            to.join(", ")
        );
        if on_update != "NO ACTION" && !on_update.is_empty() {
            def.push_str(&format!(" ON UPDATE {on_update}"));
        }
        if on_delete != "NO ACTION" && !on_delete.is_empty() {
            def.push_str(&format!(" ON DELETE {on_delete}"));
        }
        let unquoted: Vec<String> = from
            .iter()
            .map(|c| super::model::unquote_ident(c))
            .collect();
        let name = quote_ident(&format!("{tname}_{}_fkey", unquoted.join("_")));
        if let Some(t) = out.tables.get_mut(&q(&tname)) {
            t.constraints.insert(
                name,
                Constraint {
                    kind: ConstraintKind::ForeignKey,
                    definition: def,
                    deferrable: false,
                    initially_deferred: false,
                    validated: true,
                    references: Some(q(&reft)),
                },
            );
        }
    }

    // views and triggers
    let kind = "views";
    let rows = sqlx::query(
        "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE type IN ('view', 'trigger') ORDER BY name",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(|source| IntrospectError::Query { kind, source })?;
    for row in rows {
        let e = |source| IntrospectError::Query { kind, source };
        let typ: String = row.try_get("type").map_err(e)?;
        let name: String = row.try_get("name").map_err(e)?;
        let tbl: String = row.try_get("tbl_name").map_err(e)?;
        let sql: Option<String> = row.try_get("sql").map_err(e)?;
        if typ == "view" {
            out.views.insert(
                q(&name),
                View {
                    materialized: false,
                    definition: sql.unwrap_or_default(),
                    depends_on: Vec::new(),
                    indexes: BTreeMap::new(),
                    comment: None,
                },
            );
        } else {
            let table = q(&tbl);
            let tname = quote_ident(&name);
            out.triggers.insert(
                format!("{table}.{tname}"),
                Trigger {
                    table,
                    name: tname,
                    definition: sql.unwrap_or_default(),
                    enabled: "origin".into(),
                },
            );
        }
    }
    Ok(out)
}

fn split_last(qname: &str) -> String {
    match super::model::last_dot(qname) {
        Some(i) => super::model::unquote_ident(&qname[i + 1..]),
        None => super::model::unquote_ident(qname),
    }
}

/// Helpers shared by the drift tests: throwaway databases on the test server.
#[cfg(test)]
pub(crate) mod test_support {
    use sqlx::Connection;

    /// Server URL: `SLUICE_TEST_PG_URL` or the local trust-auth server.
    pub fn server_url() -> String {
        std::env::var("SLUICE_TEST_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
    }

    /// URL of database `db` on the test server.
    pub fn db_url(db: &str) -> String {
        let base = server_url();
        let (head, query) = match base.split_once('?') {
            Some((h, q)) => (h.to_string(), format!("?{q}")),
            None => (base.clone(), String::new()),
        };
        let scheme_end = head.find("://").map(|i| i + 3).unwrap_or(0);
        let host_end = head[scheme_end..]
            .find('/')
            .map(|i| scheme_end + i)
            .unwrap_or(head.len());
        format!("{}/{db}{query}", &head[..host_end])
    }

    /// A database that is dropped (WITH FORCE) when this value goes away,
    /// panics included.
    pub struct TestDb {
        pub name: String,
    }

    impl TestDb {
        /// Create `drift_<tag>_<pid>` (dropping a leftover of the same name),
        /// optionally from a template.
        pub async fn create(tag: &str, template: Option<&str>) -> TestDb {
            let name = format!("drift_{tag}_{}", std::process::id());
            let mut admin = sqlx::PgConnection::connect(&server_url())
                .await
                .expect("connect to the test server");
            sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut admin)
                .await
                .unwrap();
            let tpl = template
                .map(|t| format!(" TEMPLATE {t}"))
                .unwrap_or_default();
            sqlx::raw_sql(&format!("CREATE DATABASE {name}{tpl}"))
                .execute(&mut admin)
                .await
                .unwrap();
            admin.close().await.ok();
            TestDb { name }
        }

        pub fn url(&self) -> String {
            db_url(&self.name)
        }

        pub async fn connect(&self) -> sqlx::PgConnection {
            sqlx::PgConnection::connect(&self.url()).await.unwrap()
        }

        /// Run `psql -v ON_ERROR_STOP=1 [-1] -f file` against this database.
        pub fn psql_file(
            &self,
            file: &std::path::Path,
            single_transaction: bool,
        ) -> Result<(), String> {
            let mut cmd = std::process::Command::new("psql");
            cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1"]);
            if single_transaction {
                cmd.arg("--single-transaction");
            }
            cmd.arg("-d").arg(self.url()).arg("-f").arg(file);
            let out = cmd.output().map_err(|e| format!("running psql: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).into_owned())
            }
        }
    }

    impl Drop for TestDb {
        fn drop(&mut self) {
            // Synchronous, so it also runs while unwinding from a failed assertion.
            let _ = std::process::Command::new("psql")
                .args(["-X", "-q", "-d"])
                .arg(server_url())
                .arg("-c")
                .arg(format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                ))
                .output();
        }
    }

    /// Every object kind the model covers. `{EMAIL_TYPE}` is `public.citext`
    /// when the citext extension is available, `text` otherwise.
    pub const FIXTURE: &str = r#"
CREATE SCHEMA app;
{EXTENSION}
CREATE TYPE app.order_status AS ENUM ('new', 'paid', 'shipped');
CREATE DOMAIN app.positive_int AS integer NOT NULL DEFAULT 1 CONSTRAINT positive CHECK (VALUE > 0);
CREATE TYPE app.money_pair AS (amount numeric(12,2), currency char(3));
CREATE SEQUENCE app.invoice_no AS integer START 1000 INCREMENT 10 CACHE 5;
CREATE TABLE app.users (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  email {EMAIL_TYPE} NOT NULL,
  name text COLLATE "C",
  created_at timestamptz NOT NULL DEFAULT now(),
  email_domain text GENERATED ALWAYS AS (split_part(email::text, '@', 2)) STORED,
  CONSTRAINT users_email_key UNIQUE (email) DEFERRABLE INITIALLY DEFERRED
);
COMMENT ON TABLE app.users IS 'people';
COMMENT ON COLUMN app.users.email IS 'login';
CREATE TABLE app.orders (
  id serial PRIMARY KEY,
  user_id bigint NOT NULL REFERENCES app.users(id) ON DELETE CASCADE,
  status app.order_status NOT NULL DEFAULT 'new',
  total numeric(10,2) NOT NULL DEFAULT 0 CHECK (total >= 0),
  qty app.positive_int,
  note text,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX orders_one_new_per_user ON app.orders (user_id) WHERE status = 'new';
CREATE INDEX orders_lower_note ON app.orders (lower(note));
CREATE TABLE app.bookings (
  id int PRIMARY KEY,
  room int NOT NULL,
  during tstzrange NOT NULL,
  CONSTRAINT no_overlap EXCLUDE USING gist (during WITH &&)
);
CREATE TABLE app.events (
  id bigint NOT NULL,
  at date NOT NULL,
  payload jsonb,
  PRIMARY KEY (id, at)
) PARTITION BY RANGE (at);
CREATE TABLE app.events_2023 PARTITION OF app.events FOR VALUES FROM ('2023-01-01') TO ('2024-01-01');
CREATE TABLE app.events_2024 PARTITION OF app.events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE INDEX events_payload_idx ON app.events USING gin (payload);
CREATE TABLE app.dupes (v int);
INSERT INTO app.dupes VALUES (1), (1);
CREATE VIEW app.order_totals AS SELECT user_id, sum(total) AS total FROM app.orders GROUP BY user_id;
COMMENT ON VIEW app.order_totals IS 'per user';
CREATE MATERIALIZED VIEW app.order_counts AS SELECT status, count(*) AS n FROM app.orders GROUP BY status;
CREATE UNIQUE INDEX order_counts_status ON app.order_counts (status);
CREATE FUNCTION app.touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW.created_at := now();
  RETURN NEW;
END
$$;
CREATE FUNCTION app.add(a integer, b integer DEFAULT 1) RETURNS integer LANGUAGE sql IMMUTABLE AS 'SELECT a + b';
COMMENT ON FUNCTION app.add(integer, integer) IS 'adds';
CREATE PROCEDURE app.reset_totals(IN p_user bigint) LANGUAGE sql AS $$ UPDATE app.orders SET total = 0 WHERE user_id = p_user $$;
CREATE TRIGGER orders_touch BEFORE INSERT ON app.orders FOR EACH ROW EXECUTE FUNCTION app.touch();
"#;

    /// Whether the server can install `citext`.
    pub async fn has_citext(conn: &mut sqlx::PgConnection) -> bool {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_available_extensions WHERE name = 'citext'",
        )
        .fetch_one(conn)
        .await
        .map(|n| n > 0)
        .unwrap_or(false)
    }

    /// Load the fixture into `db`, including an INVALID index left by a failed
    /// `CREATE UNIQUE INDEX CONCURRENTLY`. Returns whether citext was used.
    pub async fn load_fixture(db: &TestDb) -> bool {
        let mut conn = db.connect().await;
        let citext = has_citext(&mut conn).await;
        if !citext {
            eprintln!("note: citext is not available on this server; the fixture uses text and no extension");
        }
        let sql = FIXTURE
            .replace(
                "{EXTENSION}",
                if citext {
                    "CREATE EXTENSION IF NOT EXISTS citext WITH SCHEMA public;"
                } else {
                    ""
                },
            )
            .replace(
                "{EMAIL_TYPE}",
                if citext { "public.citext" } else { "text" },
            );
        sqlx::raw_sql(&sql).execute(&mut conn).await.unwrap();
        let err = sqlx::query("CREATE UNIQUE INDEX CONCURRENTLY dupes_v_key ON app.dupes (v)")
            .execute(&mut conn)
            .await;
        assert!(
            err.is_err(),
            "the concurrent unique index must fail on duplicates"
        );
        conn.close().await.ok();
        citext
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{load_fixture, TestDb};
    use super::*;
    use sqlx::Connection;

    #[tokio::test]
    async fn introspects_every_object_kind() {
        let db = TestDb::create("introspect", None).await;
        let citext = load_fixture(&db).await;
        let mut conn = db.connect().await;
        let s = introspect_postgres(&mut conn, &IntrospectOptions::default())
            .await
            .unwrap();

        // schemas, extensions (members of an extension are not listed one by one)
        assert!(s.schemas.contains("app") && s.schemas.contains("public"));
        if citext {
            assert_eq!(s.extensions["citext"].schema, "public");
            assert!(!s.functions.keys().any(|f| f.contains("citext")));
            assert!(!s.domains.keys().any(|f| f.contains("citext")));
        }
        // enum labels in order
        assert_eq!(s.enums["app.order_status"], vec!["new", "paid", "shipped"]);
        // domain with check
        let d = &s.domains["app.positive_int"];
        assert_eq!(d.data_type, "integer");
        assert!(d.not_null);
        assert_eq!(d.default.as_deref(), Some("1"));
        assert_eq!(d.constraints["positive"], "CHECK ((VALUE > 0))");
        // composite
        let c = &s.composites["app.money_pair"];
        assert_eq!(c.attributes.len(), 2);
        assert_eq!(c.attributes[0].data_type, "numeric(12,2)");
        assert_eq!(c.attributes[1].data_type, "character(3)");
        // sequences: free-standing and serial; identity sequences are the column's
        let q = &s.sequences["app.invoice_no"];
        assert_eq!((q.start, q.increment, q.cache), (1000, 10, 5));
        assert_eq!(q.data_type, "integer");
        assert_eq!(
            s.sequences["app.orders_id_seq"].owned_by.as_deref(),
            Some("app.orders.id")
        );
        assert!(!s.sequences.contains_key("app.users_id_seq"));

        // columns: type with modifiers, identity, generated, collation, default, comment
        let users = &s.tables["app.users"];
        assert_eq!(users.comment.as_deref(), Some("people"));
        let names: Vec<&str> = users.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["id", "email", "name", "created_at", "email_domain"]);
        assert_eq!(
            users.column("id").unwrap().identity.as_deref(),
            Some("always")
        );
        assert_eq!(
            users.column("email").unwrap().data_type,
            if citext { "public.citext" } else { "text" }
        );
        assert_eq!(
            users.column("email").unwrap().comment.as_deref(),
            Some("login")
        );
        assert_eq!(
            users.column("name").unwrap().collation.as_deref(),
            Some("pg_catalog.\"C\"")
        );
        let gen = users.column("email_domain").unwrap();
        assert!(gen.generated.as_deref().unwrap().contains("split_part"));
        assert_eq!(gen.default, None);
        let uk = &users.constraints["users_email_key"];
        assert_eq!(uk.kind, ConstraintKind::Unique);
        assert!(uk.deferrable && uk.initially_deferred);
        assert_eq!(
            uk.definition,
            "UNIQUE (email) DEFERRABLE INITIALLY DEFERRED"
        );
        // constraint-backing indexes are constraints only
        assert!(users.indexes.is_empty());

        let orders = &s.tables["app.orders"];
        let total = orders.column("total").unwrap();
        assert_eq!(total.data_type, "numeric(10,2)");
        assert!(total.not_null);
        assert_eq!(total.default.as_deref(), Some("0"));
        assert_eq!(
            orders.column("status").unwrap().default.as_deref(),
            Some("'new'::app.order_status")
        );
        assert_eq!(orders.column("qty").unwrap().data_type, "app.positive_int");
        let fk = &orders.constraints["orders_user_id_fkey"];
        assert_eq!(fk.kind, ConstraintKind::ForeignKey);
        assert_eq!(
            fk.definition,
            "FOREIGN KEY (user_id) REFERENCES app.users(id) ON DELETE CASCADE"
        );
        assert_eq!(fk.references.as_deref(), Some("app.users"));
        assert_eq!(
            orders.constraints["orders_total_check"].kind,
            ConstraintKind::Check
        );
        assert_eq!(
            orders.constraints["orders_pkey"].kind,
            ConstraintKind::Primary
        );
        let partial = &orders.indexes["orders_one_new_per_user"];
        assert!(partial.unique && partial.valid);
        assert_eq!(
            partial.predicate.as_deref(),
            Some("(status = 'new'::app.order_status)")
        );
        let expr = &orders.indexes["orders_lower_note"];
        assert_eq!(expr.columns, vec!["lower(note)"]);
        assert_eq!(expr.method, "btree");
        assert_eq!(
            expr.definition,
            "CREATE INDEX orders_lower_note ON app.orders USING btree (lower(note))"
        );
        // exclusion constraint
        let ex = &s.tables["app.bookings"].constraints["no_overlap"];
        assert_eq!(ex.kind, ConstraintKind::Exclusion);
        assert_eq!(ex.definition, "EXCLUDE USING gist (during WITH &&)");
        // INVALID index from a failed CREATE INDEX CONCURRENTLY
        let inv = &s.tables["app.dupes"].indexes["dupes_v_key"];
        assert!(!inv.valid && inv.unique);

        // partitions: key on the parent, bounds on the partitions, inherited
        // constraints/indexes only on the parent
        let ev = &s.tables["app.events"];
        assert_eq!(ev.partitioned_by.as_deref(), Some("RANGE (at)"));
        assert_eq!(
            ev.indexes["events_payload_idx"].definition,
            "CREATE INDEX events_payload_idx ON app.events USING gin (payload)"
        );
        assert!(ev.constraints.contains_key("events_pkey"));
        let p23 = &s.tables["app.events_2023"];
        let po = p23.partition_of.as_ref().unwrap();
        assert_eq!(po.parent, "app.events");
        assert_eq!(po.bound, "FOR VALUES FROM ('2023-01-01') TO ('2024-01-01')");
        assert!(p23.constraints.is_empty() && p23.indexes.is_empty());
        assert_eq!(p23.columns.len(), 3);

        // views
        let v = &s.views["app.order_totals"];
        assert!(!v.materialized);
        assert!(v.definition.contains("sum(orders.total)"));
        assert_eq!(v.depends_on, vec!["app.orders"]);
        assert_eq!(v.comment.as_deref(), Some("per user"));
        let mv = &s.views["app.order_counts"];
        assert!(mv.materialized);
        assert!(mv.indexes["order_counts_status"].unique);

        // functions and procedures
        let add = &s.functions["app.add(integer, integer)"];
        assert_eq!(add.kind, FunctionKind::Function);
        assert_eq!(add.arguments, "a integer, b integer DEFAULT 1");
        assert_eq!(add.returns.as_deref(), Some("integer"));
        assert_eq!(add.language, "sql");
        assert_eq!(add.volatility, "immutable");
        assert_eq!(add.comment.as_deref(), Some("adds"));
        use sha2::Digest;
        assert_eq!(
            add.body_sha256,
            hex::encode(sha2::Sha256::digest(b"SELECT a + b"))
        );
        assert!(add
            .definition
            .as_deref()
            .unwrap()
            .starts_with("CREATE OR REPLACE FUNCTION app.add(a integer, b integer DEFAULT 1)"));
        let proc_ = &s.functions["app.reset_totals(bigint)"];
        assert_eq!(proc_.kind, FunctionKind::Procedure);
        assert_eq!(proc_.returns, None);
        assert_eq!(s.functions["app.touch()"].language, "plpgsql");
        assert_eq!(s.functions.len(), 3);

        // triggers
        let t = &s.triggers["app.orders.orders_touch"];
        assert_eq!(t.table, "app.orders");
        assert_eq!(
            t.definition,
            "CREATE TRIGGER orders_touch BEFORE INSERT ON app.orders FOR EACH ROW EXECUTE FUNCTION app.touch()"
        );
        assert_eq!(t.enabled, "origin");

        // deterministic JSON round trip
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Schema>(&json).unwrap(), s);

        // a schema filter limits every kind
        let only_public = introspect_postgres(
            &mut conn,
            &IntrospectOptions {
                schemas: Some(vec!["public".into()]),
            },
        )
        .await
        .unwrap();
        assert!(only_public.tables.is_empty());
        assert_eq!(only_public.schemas.iter().collect::<Vec<_>>(), ["public"]);
        conn.close().await.ok();
    }

    #[tokio::test]
    async fn one_query_per_object_kind() {
        let db = TestDb::create("roundtrips", None).await;
        load_fixture(&db).await;
        let mut conn = db.connect().await;
        let (schema, stats) =
            introspect_postgres_with_stats(&mut conn, &IntrospectOptions::default())
                .await
                .unwrap();
        assert!(!schema.tables.is_empty());
        let kinds: std::collections::BTreeSet<_> = stats.queries.iter().collect();
        assert_eq!(
            kinds.len(),
            stats.queries.len(),
            "a kind was queried twice: {stats:?}"
        );
        assert_eq!(stats.query_count(), 13, "{stats:?}");
        // BEGIN, one batch with SET LOCAL and the 13 catalog queries, ROLLBACK.
        assert_eq!(stats.round_trips, 3, "{stats:?}");
        // Works inside a caller's transaction too, and leaves its search_path alone.
        let mut tx = conn.begin().await.unwrap();
        let again = introspect_postgres(&mut tx, &IntrospectOptions::default())
            .await
            .unwrap();
        assert_eq!(again, schema);
        let sp: String = sqlx::query_scalar("SHOW search_path")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_ne!(sp, "pg_catalog");
        tx.rollback().await.unwrap();
        eprintln!(
            "introspection of the fixture: {:?} ({} round trips)",
            stats.elapsed, stats.round_trips
        );
        conn.close().await.ok();
    }

    #[tokio::test]
    async fn sqlite_subset() {
        use sqlx::sqlite::SqliteConnection;
        let mut conn = SqliteConnection::connect("sqlite::memory:").await.unwrap();
        sqlx::raw_sql(
            r#"
            CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE, name varchar(20) DEFAULT 'x');
            CREATE TABLE "Order" (
              id INTEGER NOT NULL, line INTEGER NOT NULL,
              user_id INTEGER REFERENCES users(id) ON DELETE CASCADE,
              status TEXT NOT NULL DEFAULT 'new',
              PRIMARY KEY (id, line)
            );
            CREATE INDEX order_status_open ON "Order"(status) WHERE status <> 'done';
            CREATE UNIQUE INDEX order_user_lower ON "Order"(user_id, lower(status));
            CREATE VIEW open_orders AS SELECT * FROM "Order" WHERE status <> 'done';
            CREATE TRIGGER order_touch AFTER INSERT ON "Order" BEGIN SELECT 1; END;
            "#,
        )
        .execute(&mut conn)
        .await
        .unwrap();
        let s = introspect_sqlite(&mut conn).await.unwrap();
        assert_eq!(s.schemas.iter().collect::<Vec<_>>(), ["main"]);
        let users = &s.tables["main.users"];
        assert_eq!(users.columns.len(), 3);
        assert_eq!(users.column("name").unwrap().data_type, "varchar(20)");
        assert_eq!(
            users.column("name").unwrap().default.as_deref(),
            Some("'x'")
        );
        assert!(users.column("email").unwrap().not_null);
        assert_eq!(
            users.constraints["users_pkey"].definition,
            "PRIMARY KEY (id)"
        );
        let uq = users
            .constraints
            .values()
            .find(|c| c.kind == ConstraintKind::Unique)
            .unwrap();
        assert_eq!(uq.definition, "UNIQUE (email)");
        let order = &s.tables["main.\"Order\""];
        assert_eq!(
            order.constraints["\"Order_pkey\""].definition,
            "PRIMARY KEY (id, line)"
        );
        let fk = &order.constraints["\"Order_user_id_fkey\""];
        assert_eq!(
            fk.definition,
            "FOREIGN KEY (user_id) REFERENCES main.users(id) ON DELETE CASCADE"
        );
        let partial = &order.indexes["order_status_open"];
        assert_eq!(partial.predicate.as_deref(), Some("status <> 'done'"));
        assert!(!partial.unique);
        let expr = &order.indexes["order_user_lower"];
        assert!(expr.unique);
        assert_eq!(expr.columns, vec!["user_id", "<expression>"]);
        assert!(s.views["main.open_orders"]
            .definition
            .starts_with("CREATE VIEW open_orders"));
        assert_eq!(
            s.triggers["main.\"Order\".order_touch"].table,
            "main.\"Order\""
        );
        // Deterministic: same database, same model.
        assert_eq!(introspect_sqlite(&mut conn).await.unwrap(), s);
    }
}
