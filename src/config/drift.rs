//! The `[drift]` sections: in `sluice.toml`, what every comparison leaves out (the history
//! tables and objects a team manages outside migrations); in an environment file, where the
//! expected schema of its release may be built (a shadow database sluice may erase, or scratch
//! databases it creates and drops on the environment's own server) and what else to leave out.

use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::{FileContext, SecretSource};
use crate::error::Result;
use crate::target::history::{PRISMA_TABLE, SLUICE_TABLE};

/// What every drift comparison leaves out, from `sluice.toml`'s `[drift]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriftConfig {
    /// Tables that record migrations rather than describe the application's schema.
    pub history_tables: Vec<String>,
    /// Tables (name or schema.name) managed outside migrations.
    pub ignore_tables: Vec<String>,
    /// Schemas managed outside migrations (a queue library's, an extension's).
    pub ignore_schemas: Vec<String>,
    /// Any other object by its qualified name as `sluice diff --json` prints it
    /// (`public.users.tmp_col`, `public.legacy_view`, `public.f(integer)`); its children go too.
    pub ignore_objects: Vec<String>,
}

impl Default for DriftConfig {
    fn default() -> Self {
        DriftConfig {
            history_tables: vec![PRISMA_TABLE.to_string(), SLUICE_TABLE.to_string()],
            ignore_tables: Vec::new(),
            ignore_schemas: Vec::new(),
            ignore_objects: Vec::new(),
        }
    }
}

impl DriftConfig {
    /// The project's lists with an environment's additions.
    pub fn with(&self, env: &EnvDriftConfig) -> DriftConfig {
        let mut out = self.clone();
        out.ignore_tables.extend(env.ignore_tables.iter().cloned());
        out.ignore_schemas
            .extend(env.ignore_schemas.iter().cloned());
        out.ignore_objects
            .extend(env.ignore_objects.iter().cloned());
        out
    }
}

/// Where an environment's expected schema is built.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ShadowConfig {
    /// Nowhere configured: fine for SQLite (a temporary file is used), an error for PostgreSQL.
    #[default]
    Unset,
    /// A database given for the purpose; sluice erases everything in it before each build.
    Url(SecretSource),
    /// A database sluice creates for each build on the environment's own server and drops
    /// afterwards (the environment's user needs CREATEDB); `maintenance_db` is where it
    /// connects to do so.
    Scratch {
        /// The database connected to for `CREATE DATABASE` / `DROP DATABASE`.
        maintenance_db: String,
    },
}

/// An environment file's `[drift]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EnvDriftConfig {
    /// Where its expected schema is built.
    pub shadow: ShadowConfig,
    /// Tables left out of comparisons for this environment only.
    pub ignore_tables: Vec<String>,
    /// Schemas left out for this environment only.
    pub ignore_schemas: Vec<String>,
    /// Objects left out for this environment only.
    pub ignore_objects: Vec<String>,
}

/// `[drift]` of `sluice.toml` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProjectDrift {
    history_tables: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    ignore_tables: Vec<String>,
    #[serde(default)]
    ignore_schemas: Vec<String>,
    #[serde(default)]
    ignore_objects: Vec<String>,
}

/// `[drift]` of an environment file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEnvDrift {
    shadow_url_env: Option<Spanned<String>>,
    shadow_url_file: Option<Spanned<String>>,
    scratch_databases: Option<Spanned<bool>>,
    maintenance_db: Option<Spanned<String>>,
    #[serde(default)]
    ignore_tables: Vec<String>,
    #[serde(default)]
    ignore_schemas: Vec<String>,
    #[serde(default)]
    ignore_objects: Vec<String>,
}

/// The `ignore_*` lists of either `[drift]` section must not hold empty names.
fn check_ignore_lists(
    ctx: &FileContext<'_>,
    tables: &[String],
    schemas: &[String],
    objects: &[String],
) -> Result<()> {
    for (key, names) in [
        ("ignore_tables", tables),
        ("ignore_schemas", schemas),
        ("ignore_objects", objects),
    ] {
        if names.iter().any(|n| n.trim().is_empty()) {
            return Err(crate::error::Error::Config(format!(
                "{}: key `drift.{key}`: names must not be empty",
                ctx.path.display()
            )));
        }
    }
    Ok(())
}

/// Validates `sluice.toml`'s `[drift]`.
pub(crate) fn parse_project(
    ctx: &FileContext<'_>,
    raw: Option<RawProjectDrift>,
) -> Result<DriftConfig> {
    let Some(raw) = raw else {
        return Ok(DriftConfig::default());
    };
    let history_tables = match raw.history_tables {
        Some(tables) => {
            if tables.get_ref().is_empty() || tables.get_ref().iter().any(|t| t.trim().is_empty()) {
                return Err(ctx.at(
                    "drift.history_tables",
                    &tables,
                    "list the history tables to leave out of comparisons, e.g. \
                     [\"_prisma_migrations\", \"_sluice_migrations\"]",
                ));
            }
            tables.into_inner()
        }
        None => DriftConfig::default().history_tables,
    };
    check_ignore_lists(
        ctx,
        &raw.ignore_tables,
        &raw.ignore_schemas,
        &raw.ignore_objects,
    )?;
    Ok(DriftConfig {
        history_tables,
        ignore_tables: raw.ignore_tables,
        ignore_schemas: raw.ignore_schemas,
        ignore_objects: raw.ignore_objects,
    })
}

/// Validates an environment file's `[drift]`.
pub(crate) fn parse_env(
    ctx: &FileContext<'_>,
    raw: Option<RawEnvDrift>,
    project_root: &Path,
) -> Result<EnvDriftConfig> {
    let Some(raw) = raw else {
        return Ok(EnvDriftConfig::default());
    };
    let scratch = raw.scratch_databases.as_ref().is_some_and(|s| *s.get_ref());
    let given: Vec<&str> = [
        raw.shadow_url_env.as_ref().map(|_| "drift.shadow_url_env"),
        raw.shadow_url_file
            .as_ref()
            .map(|_| "drift.shadow_url_file"),
        scratch.then_some("drift.scratch_databases"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if given.len() > 1 {
        return Err(crate::error::Error::Config(format!(
            "{}: keys {} are exclusive: build the expected schema in one place",
            ctx.path.display(),
            given
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(" and ")
        )));
    }
    if let (Some(db), false) = (&raw.maintenance_db, scratch) {
        return Err(ctx.at(
            "drift.maintenance_db",
            db,
            "only means something with `scratch_databases = true`",
        ));
    }
    let shadow = if let Some(var) = raw.shadow_url_env {
        if var.get_ref().trim().is_empty() {
            return Err(ctx.at(
                "drift.shadow_url_env",
                &var,
                "must name an environment variable",
            ));
        }
        ShadowConfig::Url(SecretSource::Env(var.into_inner()))
    } else if let Some(file) = raw.shadow_url_file {
        ShadowConfig::Url(SecretSource::File(project_root.join(file.get_ref())))
    } else if scratch {
        ShadowConfig::Scratch {
            maintenance_db: raw
                .maintenance_db
                .map(Spanned::into_inner)
                .unwrap_or_else(|| "postgres".to_string()),
        }
    } else {
        ShadowConfig::Unset
    };
    check_ignore_lists(
        ctx,
        &raw.ignore_tables,
        &raw.ignore_schemas,
        &raw.ignore_objects,
    )?;
    Ok(EnvDriftConfig {
        shadow,
        ignore_tables: raw.ignore_tables,
        ignore_schemas: raw.ignore_schemas,
        ignore_objects: raw.ignore_objects,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Doc<T> {
        drift: Option<T>,
    }

    /// Parses `text` as the file at `path` and hands its `[drift]` to `parse`.
    fn parse_as<T: for<'de> Deserialize<'de>, R>(
        path: &str,
        text: &str,
        parse: impl FnOnce(&FileContext<'_>, Option<T>) -> Result<R>,
    ) -> Result<R> {
        let ctx = FileContext {
            path: Path::new(path),
            text,
        };
        let doc: Doc<T> = toml::from_str(text).map_err(|e| ctx.parse_error(e))?;
        parse(&ctx, doc.drift)
    }

    fn project(text: &str) -> Result<DriftConfig> {
        parse_as("sluice.toml", text, parse_project)
    }

    fn env(text: &str) -> Result<EnvDriftConfig> {
        parse_as("environments/prod.toml", text, |ctx, raw| {
            parse_env(ctx, raw, Path::new("/p"))
        })
    }

    #[test]
    fn project_defaults_leave_out_both_history_tables() {
        let config = project("").unwrap();
        assert_eq!(
            config.history_tables,
            vec!["_prisma_migrations", "_sluice_migrations"]
        );
        let config = project(
            "[drift]\nhistory_tables = [\"schema_migrations\"]\nignore_schemas = [\"pgboss\"]\n",
        )
        .unwrap();
        assert_eq!(config.history_tables, vec!["schema_migrations"]);
        assert_eq!(config.ignore_schemas, vec!["pgboss"]);
    }

    #[test]
    fn bad_project_drift_names_the_line_and_key() {
        let err = project("[drift]\nhistory_tables = []\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sluice.toml:2: key `drift.history_tables`"),
            "{err}"
        );
        let err = project("[drift]\nignore_tabels = [\"x\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ignore_tabels"), "{err}");
    }

    #[test]
    fn environment_shadow_sources_are_exclusive() {
        assert_eq!(env("").unwrap().shadow, ShadowConfig::Unset);
        assert_eq!(
            env("[drift]\nshadow_url_env = \"SHADOW\"\n")
                .unwrap()
                .shadow,
            ShadowConfig::Url(SecretSource::Env("SHADOW".into()))
        );
        assert_eq!(
            env("[drift]\nscratch_databases = true\n").unwrap().shadow,
            ShadowConfig::Scratch {
                maintenance_db: "postgres".into()
            }
        );
        let err = env("[drift]\nshadow_url_env = \"S\"\nscratch_databases = true\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("are exclusive"), "{err}");
        let err = env("[drift]\nmaintenance_db = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("prod.toml:2: key `drift.maintenance_db`"),
            "{err}"
        );
    }
}
