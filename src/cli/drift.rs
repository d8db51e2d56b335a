//! `sluice diff`: compare the live schemas of two environments, for people (grouped by object),
//! for machines (`--json`) or as the SQL that would make the left one match the right (`--sql`).
//! Exit 0 when they match, 2 when they differ, 1 when they could not be compared.

use clap::Args;
use sqlx::Connection;

use crate::config::Project;
use crate::drift::diff::{diff, render_human, render_sql, to_sql};
use crate::drift::introspect::{introspect_postgres, introspect_sqlite, IntrospectOptions};
use crate::drift::model::{Ignore, Schema};
use crate::error::{Error, Result};
use crate::target::history::{PRISMA_TABLE, SLUICE_TABLE};
use crate::target::Engine;

/// `sluice diff`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The environment to be made to match (left).
    pub left: String,
    /// The environment to match (right).
    pub right: String,
    /// Print the differences as JSON.
    #[arg(long, conflicts_with = "sql")]
    pub json: bool,
    /// Print the SQL that would make LEFT match RIGHT (destructive steps marked); nothing is run.
    #[arg(long)]
    pub sql: bool,
    /// Also ignore this table (name or schema.name); the history tables are always ignored.
    #[arg(long = "ignore-table")]
    pub ignore_tables: Vec<String>,
    /// Also ignore everything in this schema.
    #[arg(long = "ignore-schema")]
    pub ignore_schemas: Vec<String>,
}

/// Reads one environment's live schema, without its history tables and what the caller ignores.
async fn live_schema(project: &Project, env_name: &str, ignore: &Ignore) -> Result<Schema> {
    let env = project.environment(env_name)?;
    let url = env.database_url()?;
    let context = format!("reading the schema of `{env_name}`");
    let schema = match Engine::from_url(&url)? {
        Engine::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&url)
                .await
                .map_err(|e| Error::database(&context, e))?;
            let schema = introspect_postgres(&mut conn, &IntrospectOptions::default())
                .await
                .map_err(|e| Error::database(&context, e))?;
            let _ = conn.close().await;
            schema
        }
        Engine::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&url)
                .await
                .map_err(|e| Error::database(&context, e))?;
            let schema = introspect_sqlite(&mut conn)
                .await
                .map_err(|e| Error::database(&context, e))?;
            let _ = conn.close().await;
            schema
        }
    };
    Ok(schema.without(ignore))
}

/// Runs `sluice diff`; errors are printed here because this command's error exit is 1.
pub async fn diff_cmd(project: &Project, args: DiffArgs) -> Result<u8> {
    match compare(project, &args).await {
        Ok(code) => Ok(code),
        Err(err) => {
            eprintln!("error: {err}");
            Ok(1)
        }
    }
}

async fn compare(project: &Project, args: &DiffArgs) -> Result<u8> {
    let mut tables = vec![PRISMA_TABLE.to_string(), SLUICE_TABLE.to_string()];
    tables.extend(args.ignore_tables.iter().cloned());
    let ignore = Ignore {
        tables,
        schemas: args.ignore_schemas.clone(),
    };
    let (left, right) = tokio::try_join!(
        live_schema(project, &args.left, &ignore),
        live_schema(project, &args.right, &ignore)
    )?;
    let differences = diff(&left, &right);
    if args.json {
        let doc = serde_json::json!({
            "left": args.left,
            "right": args.right,
            "differences": differences,
        });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else if args.sql {
        let steps = to_sql(&left, &right, &differences);
        println!(
            "-- make `{}` match `{}`: {} step(s); run them one by one, outside a transaction",
            args.left,
            args.right,
            steps.len()
        );
        print!("{}", render_sql(&steps));
    } else if differences.is_empty() {
        println!("`{}` and `{}` have the same schema", args.left, args.right);
    } else {
        println!(
            "{} difference(s) between `{}` (left) and `{}` (right):",
            differences.len(),
            args.left,
            args.right
        );
        print!("{}", render_human(&differences));
    }
    Ok(if differences.is_empty() { 0 } else { 2 })
}
