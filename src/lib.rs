//! sluice: promotes database schema migrations through a ladder of environments.
//!
//! The library holds everything; `main.rs` only parses the command line and calls [`cli::run`].

pub mod api;
pub mod apply;
pub mod chatops;
pub mod cli;
pub mod client;
pub mod config;
pub mod consistency;
pub mod daemon;
pub mod doctor;
pub mod drift;
pub mod error;
pub mod health;
pub mod migrations;
pub mod notify;
pub mod policy;
pub mod promote;
pub mod schedule;
pub mod snapshot;
pub mod store;
pub mod target;
pub mod testhook;

pub use error::{Error, Result};
