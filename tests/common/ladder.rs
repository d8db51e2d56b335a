//! The ladder every daemon test climbs: dev, staging and prod on three fresh PostgreSQL
//! databases with pg-template snapshots, three migrations with down scripts, and API tokens.

use super::daemon::write_tokens;
use super::{pg, Project, TestDb};

pub const DEPLOYER: &str = "slc_deployer_token_0123456789";
pub const ALICE: &str = "slc_alice_token_0123456789abcd";
pub const ADMIN: &str = "slc_admin_token_0123456789abcd";

pub const M1: &str = "20240101000000_users";
pub const M2: &str = "20240102000000_orders";
pub const M3: &str = "20240103000000_order_status";

/// A project with environments dev, staging, prod on three fresh databases, pg-template
/// snapshots, a schema health check, three migrations with down scripts, and tokens.
pub struct Ladder {
    /// The project.
    pub project: Project,
    /// Each environment's database.
    pub dbs: Vec<(String, TestDb)>,
}

impl Ladder {
    pub fn new(prefix: &str, health: &[(&str, &str)]) -> Ladder {
        let names = ["dev", "staging", "prod"];
        let dbs: Vec<(String, TestDb)> = names
            .iter()
            .map(|n| (n.to_string(), pg().create_db(&format!("{prefix}_{n}"))))
            .collect();
        let mut project = Project::with_local_migrations(&[], "");
        for (name, db) in &dbs {
            let extra = health
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, h)| h.to_string())
                .unwrap_or_default();
            project.add_env(
                name,
                &db.url,
                &format!("lock_timeout = \"5s\"\n[snapshot]\nprovider = \"pg-template\"\n{extra}"),
            );
        }
        add_migration_with_down(
            &project,
            M1,
            "CREATE TABLE users (id serial PRIMARY KEY, email text NOT NULL);\n",
            "DROP TABLE users;\n",
        );
        add_migration_with_down(
            &project,
            M2,
            "CREATE TABLE orders (id serial PRIMARY KEY, user_id int NOT NULL REFERENCES users(id));\n",
            "DROP TABLE orders;\n",
        );
        add_migration_with_down(
            &project,
            M3,
            "CREATE TYPE order_status AS ENUM ('new', 'paid');\n\
             ALTER TABLE orders ADD COLUMN status order_status NOT NULL DEFAULT 'new';\n",
            "ALTER TABLE orders DROP COLUMN status;\nDROP TYPE order_status;\n",
        );
        write_tokens(
            &project,
            &[
                ("deployer", DEPLOYER, "\"*\" = \"deployer\""),
                ("alice", ALICE, "\"*\" = \"approver\""),
                ("admin", ADMIN, "\"*\" = \"admin\""),
            ],
        );
        std::fs::write(
            project.path().join("sluice.toml"),
            "migrations = \"migrations\"\nstate_dir = \".sluice\"\n\n[daemon]\ntokens_file = \"tokens.toml\"\ntick = \"100ms\"\nwatch_interval = \"0s\"\n",
        )
        .unwrap();
        Ladder { project, dbs }
    }

    pub fn db(&self, name: &str) -> &TestDb {
        &self.dbs.iter().find(|(n, _)| n == name).unwrap().1
    }

    pub fn policy(&self, name: &str, text: &str) {
        let dir = self.project.path().join("policies");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.toml")), text).unwrap();
    }
}

pub fn add_migration_with_down(project: &Project, name: &str, up: &str, down: &str) {
    let file = project.add_migration(name, up);
    std::fs::write(file.with_file_name("down.sql"), down).unwrap();
}
