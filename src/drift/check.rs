//! Drift of one environment: its live schema against the expected schema of the migrations its
//! history table says are applied. The target database is the truth about which migrations
//! ran; the store only caches what those migrations produce.

use serde::Serialize;

use crate::apply::{self, Context, State};
use crate::config::{DriftConfig, Environment};
use crate::drift::diff::{diff, render_human, to_sql, Difference, SqlStep};
use crate::drift::expected::{
    expected_schema, introspect_url, server_flavour, shadow_for, Cache, ExpectedSource,
};
use crate::drift::model::{Ignore, Schema};
use crate::error::{Error, Result};
use crate::migrations::MigrationSet;
use crate::target;

/// What a drift check found.
#[derive(Debug, Clone, Serialize)]
pub struct DriftReport {
    /// The environment checked.
    pub environment: String,
    /// How many migrations the environment has applied (what the expected schema is built from).
    pub applied: usize,
    /// The last of them.
    pub head: Option<String>,
    /// Hash of their names and checksums: the release the environment is on.
    pub release: String,
    /// Whether the expected schema came from the cache or was built now.
    pub expected: ExpectedSource,
    /// Things worth knowing that do not stop the check (an edited migration).
    pub notes: Vec<String>,
    /// Live (left) against expected (right).
    pub differences: Vec<Difference>,
    #[serde(skip)]
    live: Schema,
    #[serde(skip)]
    expected_schema: Schema,
}

impl DriftReport {
    /// No difference.
    pub fn is_clean(&self) -> bool {
        self.differences.is_empty()
    }

    /// The differences for people, grouped by table.
    pub fn human(&self) -> String {
        render_human(&self.differences)
    }

    /// The statements that would make the live database match the expected schema.
    pub fn sql(&self) -> Vec<SqlStep> {
        to_sql(&self.live, &self.expected_schema, &self.differences)
    }

    /// A short stable fingerprint of the differences, so a periodic scan can tell a change.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let text = serde_json::to_string(&self.differences).unwrap_or_default();
        hex::encode(&Sha256::digest(text.as_bytes())[..8])
    }

    /// One line: "3 difference(s) from the expected schema of 12 migration(s) (head X)".
    pub fn summary(&self) -> String {
        let head = self.head.as_deref().unwrap_or("none");
        if self.is_clean() {
            format!(
                "`{}` matches the expected schema of its {} applied migration(s) (head {head})",
                self.environment, self.applied
            )
        } else {
            format!(
                "`{}` drifted: {} difference(s) from the expected schema of its {} applied migration(s) (head {head})",
                self.environment,
                self.differences.len(),
                self.applied
            )
        }
    }
}

/// What every comparison leaves out: the history tables and the configured objects.
pub fn ignore_of(config: &DriftConfig) -> Ignore {
    let mut tables = config.history_tables.clone();
    tables.extend(config.ignore_tables.iter().cloned());
    Ignore {
        tables,
        schemas: config.ignore_schemas.clone(),
    }
}

/// Whether a difference concerns an ignored object or one inside it.
fn object_ignored(config: &DriftConfig, difference: &Difference) -> bool {
    config.ignore_objects.iter().any(|object| {
        difference.name == *object
            || difference
                .name
                .strip_prefix(object.as_str())
                .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('('))
    })
}

/// Compares two schemas under `config`: left is changed to match right by [`DriftReport::sql`].
pub fn compare(
    config: &DriftConfig,
    left: &Schema,
    right: &Schema,
) -> (Schema, Schema, Vec<Difference>) {
    let ignore = ignore_of(config);
    let (left, right) = (left.without(&ignore), right.without(&ignore));
    let mut differences = diff(&left, &right);
    differences.retain(|d| !object_ignored(config, d));
    (left, right, differences)
}

/// Checks one environment. `project_drift` is the project's `[drift]`; the environment's own
/// additions are merged in here. `cache` keeps expected schemas (none: always built).
pub async fn check_environment(
    env: &Environment,
    set: &MigrationSet,
    project_drift: &DriftConfig,
    cache: Option<Cache<'_>>,
) -> Result<DriftReport> {
    let config = project_drift.with(&env.drift);
    let live_url = env.database_url()?;
    let shadow = shadow_for(env, &live_url)?;

    let mut target = target::connect(env).await?;
    let status = match Context::new(env, set, target.as_ref()) {
        Ok(ctx) => apply::status(target.as_mut(), &ctx).await,
        Err(err) => Err(err),
    };
    let _ = target.close().await;
    let status = status?;

    let mut notes = Vec::new();
    let mut applied_names = Vec::new();
    for entry in &status.entries {
        match entry.state {
            State::Applied => applied_names.push(entry.name.clone()),
            State::Edited => {
                notes.push(format!(
                    "migration `{}` was edited after it ran here; the expected schema uses the file as it is now",
                    entry.name
                ));
                applied_names.push(entry.name.clone());
            }
            State::Missing => {
                return Err(Error::Guard(format!(
                    "migration `{}` is recorded as applied on `{}` but is not in the migrations \
                     directory, so its expected schema cannot be built; restore the file",
                    entry.name, env.name
                )))
            }
            State::Failed | State::Interrupted => {
                return Err(Error::Guard(format!(
                "migration `{}` did not finish on `{}`; resume or resolve it before checking drift",
                entry.name, env.name
            )))
            }
            State::Pending => {}
        }
    }
    let mut applied_set = set.clone();
    applied_set
        .migrations
        .retain(|m| applied_names.contains(&m.name));

    let flavour = server_flavour(&live_url).await?;
    let live_what = format!("`{}`", env.name);
    let (live, (expected, source)) = tokio::try_join!(
        introspect_url(&live_url, &live_what),
        expected_schema(env, &applied_set, &flavour, shadow.as_ref(), cache)
    )?;
    let (live, expected, differences) = compare(&config, &live, &expected);
    Ok(DriftReport {
        environment: env.name.clone(),
        applied: applied_set.migrations.len(),
        head: applied_set.migrations.last().map(|m| m.name.clone()),
        release: applied_set.release_hash(),
        expected: source,
        notes,
        differences,
        live,
        expected_schema: expected,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drift::diff::{Change, ObjectKind};

    fn difference(kind: ObjectKind, name: &str) -> Difference {
        Difference {
            kind,
            name: name.into(),
            change: Change::Added,
            detail: None,
        }
    }

    #[test]
    fn ignored_objects_take_their_children_but_not_their_namesakes() {
        let config = DriftConfig {
            ignore_objects: vec!["public.legacy".into(), "public.f".into()],
            ..DriftConfig::default()
        };
        assert!(object_ignored(
            &config,
            &difference(ObjectKind::Table, "public.legacy")
        ));
        assert!(object_ignored(
            &config,
            &difference(ObjectKind::Column, "public.legacy.note")
        ));
        assert!(object_ignored(
            &config,
            &difference(ObjectKind::Function, "public.f(integer)")
        ));
        assert!(!object_ignored(
            &config,
            &difference(ObjectKind::Table, "public.legacy_2")
        ));
        assert!(!object_ignored(
            &config,
            &difference(ObjectKind::Function, "public.fx(integer)")
        ));
    }

    /// The daemon runs drift checks on its own tasks, so their futures must be `Send` for
    /// every lifetime (a `raw_sql(..).fetch_all(conn)` in the introspector once broke that).
    /// This only has to compile.
    #[test]
    fn drift_check_futures_are_send() {
        fn is_send<T: Send>(_: &T) {}
        fn probe<'a>(
            env: &'a Environment,
            set: &'a MigrationSet,
            config: &'a DriftConfig,
            store: &'a dyn crate::store::Store,
        ) {
            is_send(&introspect_url("u", "w"));
            is_send(&check_environment(env, set, config, None));
            is_send(&check_environment(
                env,
                set,
                config,
                Some(Cache {
                    store,
                    rebuild: false,
                }),
            ));
        }
        let _ = probe;
    }
}
