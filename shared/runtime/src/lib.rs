//! The shared runtime of every IDIC CRM service, written once: typed
//! configuration, telemetry, the gRPC server bootstrap (health, reflection,
//! timeouts, message limits, graceful shutdown), the store (SQLite or
//! PostgreSQL by URL, migrations at start-up), the transactional event log
//! with its `Subscribe` feed and the idempotent feed consumer, consistency
//! tokens, idempotency keys, and the mapping of errors to `google.rpc.Status`.
#![forbid(unsafe_code)]

pub mod changes;
pub mod client;
pub mod config;
pub mod consistency;
pub mod consumer;
pub mod db;
pub mod error;
pub mod eventlog;
pub mod feed;
pub mod group;
pub mod idempotency;
pub mod ids;
pub mod migration;
pub mod page;
pub mod reads;
pub mod rpc_telemetry;
pub mod server;
pub mod telemetry;
pub mod testing;
pub mod time;
pub mod validate;

pub use error::{FieldViolations, RuntimeError};
