//! Personalization — Customize: what to offer each customer, and how.
//! Offer definitions and next-best-offer selection with a per-factor
//! explanation of every ranked offer; modular products, personalised
//! messages and loyalty follow in later issues.
#![forbid(unsafe_code)]

pub mod api;
pub mod conversions;
pub mod domain;
pub mod migration;
pub mod store;

use crm_proto::personalization::v1::personalization_service_server::PersonalizationServiceServer;
use crm_runtime::{
    config::Settings,
    db::Store,
    server::{Running, ServeError, ServiceSpec, Shutdown, spawn},
};
use tonic::server::NamedService;

/// The fully-qualified gRPC service name.
pub const SERVICE_NAME: &str = <PersonalizationServiceServer<api::PersonalizationApi> as NamedService>::NAME;

/// Connect and migrate the store, then serve until `shutdown`.
pub async fn start(settings: &Settings, shutdown: Shutdown) -> Result<Running, ServeError> {
    let store = Store::connect(&settings.database_url, settings.db_max_connections).await?;
    store.migrate::<migration::Migrator>().await?;
    let api = api::PersonalizationApi::new(store);
    let service = PersonalizationServiceServer::new(api)
        .max_decoding_message_size(settings.max_message_bytes)
        .max_encoding_message_size(settings.max_message_bytes);
    let spec =
        ServiceSpec { grpc_names: vec![SERVICE_NAME], routes: tonic::service::Routes::new(service), ready: async {} };
    spawn(settings, spec, shutdown).await
}
