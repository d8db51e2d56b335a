//! The project's configuration as the engine holds it: every environment file, every policy
//! and the migrations directory's release, loaded and checked together.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::config::{Environment, Project};
use crate::error::{Error, Result};
use crate::migrations::{discover, MigrationSet};
use crate::policy::{Policies, POLICIES_DIR};
use crate::store::{LoadedFile, Release};

/// The actor recorded for what the engine does by itself.
pub const MACHINE_ACTOR: &str = "sluice";

/// The project's configuration as loaded and validated: every environment file, every policy,
/// and the migrations directory's release.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// `sluice.toml`.
    pub project: Project,
    /// Environments by name.
    pub environments: BTreeMap<String, Environment>,
    /// Policies of the ladder.
    pub policies: Policies,
    /// The migrations directory as read.
    pub set: Arc<MigrationSet>,
    /// Its release.
    pub release: Release,
    /// The files as read, for the store's record.
    pub files: Vec<LoadedFile>,
}

impl Loaded {
    /// Reads and validates everything under `root`; any bad file fails the whole load, so a
    /// daemon keeps running on the configuration it had.
    pub fn load(root: &Path, source: &str) -> Result<Loaded> {
        let project = Project::load(root)?;
        let names = project.environment_names()?;
        let mut environments = BTreeMap::new();
        let mut files = Vec::new();
        for name in &names {
            let env = project.environment(name)?;
            files.push(read_file(root, &env.file)?);
            environments.insert(name.clone(), env);
        }
        let policies_dir = root.join(POLICIES_DIR);
        let policies = Policies::load(&policies_dir, &names)?;
        for policy in policies.iter() {
            if let Some(path) = &policy.source {
                files.push(read_file(root, path)?);
            }
        }
        let set = discover(&project.migrations_dir)?;
        crate::consistency::check(
            crate::consistency::Configuration {
                project: &project,
                environments: &environments,
                policies: &policies,
                migrations: Some(&set),
            },
            crate::consistency::Scope::Configuration,
        )?;
        let release = Release::of(&set, source);
        Ok(Loaded {
            project,
            environments,
            policies,
            set: Arc::new(set),
            release,
            files,
        })
    }

    /// One environment, or an error listing the known ones.
    pub fn environment(&self, name: &str) -> Result<&Environment> {
        self.environments.get(name).ok_or_else(|| {
            Error::NotFound(format!(
                "unknown environment `{name}`; known environments: {}",
                self.environment_names().join(", ")
            ))
        })
    }

    /// Environment names, sorted.
    pub fn environment_names(&self) -> Vec<String> {
        self.environments.keys().cloned().collect()
    }

    /// Environment names in ladder order (each after the one it is fed from), then the rest.
    pub fn ladder_order(&self) -> Vec<String> {
        let mut order: Vec<String> = Vec::new();
        for name in self.environments.keys() {
            for step in self.policies.chain_to(name) {
                if !order.contains(&step) {
                    order.push(step);
                }
            }
        }
        order
    }
}

fn read_file(root: &Path, path: &Path) -> Result<LoadedFile> {
    let text = crate::config::read_text(path)?;
    Ok(LoadedFile {
        path: path
            .strip_prefix(root)
            .unwrap_or(path)
            .display()
            .to_string(),
        sha256: crate::migrations::discover::sha256_hex(text.as_bytes()),
        text,
    })
}
