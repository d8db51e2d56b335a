//! Drift: what a database's schema really is, compared with another database or with what a
//! release's migrations produce. `model` is the canonical schema, `introspect` reads it from
//! PostgreSQL (one batch of one query per object kind) or SQLite, `diff` compares two models
//! and writes the SQL that would make the left side match the right. `expected` builds what a
//! release's migrations produce in a shadow database, `check` compares an environment with it,
//! `scan` does so on each environment's `drift_scan` schedule inside the daemon.

pub mod check;
pub mod diff;
pub mod expected;
pub mod introspect;
pub mod model;
pub mod scan;
