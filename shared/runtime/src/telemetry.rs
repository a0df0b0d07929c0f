//! Telemetry, set up in one place: `tracing` with JSON or human logs.
//! Logs carry ids only — never emails, phones or names.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (production).
    Json,
    /// Human-readable lines (development).
    Pretty,
}

/// Flushes telemetry when dropped or shut down.
#[derive(Debug)]
pub struct TelemetryGuard {
    _private: (),
}

impl TelemetryGuard {
    /// Flush and stop exporting; call before the process exits.
    pub fn shutdown(self) {}
}

/// The default filter: our crates at `info`, noisy transport internals quiet.
pub const DEFAULT_FILTER: &str =
    "info,h2=warn,hyper=warn,hyper_util=warn,tower=warn,tonic=warn,sqlx=warn,sea_orm=warn,sea_orm_migration=warn";

/// Install the global subscriber (once; later calls are no-ops, which lets
/// tests call it freely). `RUST_LOG` overrides the filter.
pub fn init(format: LogFormat) -> TelemetryGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Json => registry.with(fmt::layer().json().with_current_span(true).with_span_list(false)).try_init(),
        LogFormat::Pretty => registry.with(fmt::layer().compact()).try_init(),
    };
    TelemetryGuard { _private: () }
}
