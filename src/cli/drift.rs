//! `sluice diff`: compare the live schemas of two environments, for people (grouped by object),
//! for machines (`--json`) or as the SQL that would make the left one match the right (`--sql`).
//! `sluice drift`: compare one environment's live schema with the schema its applied
//! migrations produce. Both exit 0 when they match, 2 when they differ, 1 when they could not
//! be compared.

use clap::Args;

use crate::config::Project;
use crate::drift::check::{check_environment, compare};
use crate::drift::diff::{render_human, render_sql, to_sql};
use crate::drift::expected::{introspect_url, Cache};
use crate::error::Result;
use crate::migrations::discover;

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
    /// Also ignore this table (name or schema.name); the history tables and what `[drift]`
    /// in sluice.toml and the environment files name are always ignored.
    #[arg(long = "ignore-table")]
    pub ignore_tables: Vec<String>,
    /// Also ignore everything in this schema.
    #[arg(long = "ignore-schema")]
    pub ignore_schemas: Vec<String>,
}

/// Runs `sluice diff`; errors are printed here because this command's error exit is 1.
pub async fn diff_cmd(project: &Project, args: DiffArgs) -> Result<u8> {
    match compare_live(project, &args).await {
        Ok(code) => Ok(code),
        Err(err) => {
            eprintln!("error: {err}");
            Ok(1)
        }
    }
}

async fn compare_live(project: &Project, args: &DiffArgs) -> Result<u8> {
    let (left_env, right_env) = (
        project.environment(&args.left)?,
        project.environment(&args.right)?,
    );
    let mut config = project.drift.with(&left_env.drift).with(&right_env.drift);
    config
        .ignore_tables
        .extend(args.ignore_tables.iter().cloned());
    config
        .ignore_schemas
        .extend(args.ignore_schemas.iter().cloned());
    let (left_url, right_url) = (left_env.database_url()?, right_env.database_url()?);
    let (left_what, right_what) = (format!("`{}`", args.left), format!("`{}`", args.right));
    let (left, right) = tokio::try_join!(
        introspect_url(&left_url, &left_what),
        introspect_url(&right_url, &right_what)
    )?;
    let (left, right, differences) = compare(&config, &left, &right);
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

/// `sluice drift`.
#[derive(Debug, Args)]
pub struct DriftArgs {
    /// The environment to check.
    #[arg(long)]
    pub env: String,
    /// Print the report as JSON.
    #[arg(long, conflicts_with = "sql")]
    pub json: bool,
    /// Print the SQL that would make the environment match its expected schema (destructive
    /// steps marked); nothing is run.
    #[arg(long)]
    pub sql: bool,
    /// Build the expected schema again instead of using the one cached in the store.
    #[arg(long)]
    pub rebuild: bool,
}

/// How long `sluice drift` waits for the store (a running daemon holds it): the cache is an
/// optimisation, so the check goes on without it rather than wait.
const STORE_WAIT: std::time::Duration = std::time::Duration::from_millis(300);

/// Runs `sluice drift`; errors are printed here because this command's error exit is 1.
pub async fn drift_cmd(project: &Project, args: DriftArgs) -> Result<u8> {
    match drift_of(project, &args).await {
        Ok(code) => Ok(code),
        Err(err) => {
            eprintln!("error: {err}");
            Ok(1)
        }
    }
}

async fn drift_of(project: &Project, args: &DriftArgs) -> Result<u8> {
    let env = project.environment(&args.env)?;
    let set = discover(&project.migrations_dir)?;
    let store = crate::store::OnDemandStore::new(&project.state_dir.join("store"), STORE_WAIT);
    let cache = Cache {
        store: &store,
        rebuild: args.rebuild,
    };
    let report = check_environment(&env, &set, &project.drift, Some(cache)).await?;
    for note in &report.notes {
        eprintln!("note: {note}");
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else if args.sql {
        let steps = report.sql();
        println!(
            "-- make `{}` match the expected schema of its applied migrations (head {}): {} step(s); run them one by one, outside a transaction",
            report.environment,
            report.head.as_deref().unwrap_or("none"),
            steps.len()
        );
        print!("{}", render_sql(&steps));
    } else {
        println!("{}", report.summary());
        print!("{}", report.human());
    }
    Ok(if report.is_clean() { 0 } else { 2 })
}
