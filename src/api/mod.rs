//! The HTTP side of the daemon: the `/v1` API, its authentication, metrics and OpenAPI
//! document.

pub mod auth;
pub mod metrics;
pub mod openapi;
pub mod server;
pub mod slack;
pub mod snapshots;
