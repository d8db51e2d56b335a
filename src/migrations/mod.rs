//! Migrations as files: discovery in the layouts users already have, checksums, the SQL lexer
//! and statement splitter, and transaction classification.

pub mod classify;
pub mod discover;
pub mod lexer;
pub mod lint;

pub use discover::{discover, Layout, Migration, MigrationSet, Script};
