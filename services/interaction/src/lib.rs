//! Interaction — Interact: every contact, purchase and consent between the
//! company and a customer, on every channel, as one continuous dialogue.
//! The system of record whose feed every projection is built from.
#![forbid(unsafe_code)]

pub mod api;
pub mod conversions;
pub mod domain;
pub mod migration;
pub mod store;

use crm_proto::interaction::v1::interaction_service_server::InteractionServiceServer;
use crm_runtime::{
    config::Settings,
    db::Store,
    server::{Running, ServeError, ServiceSpec, Shutdown, spawn},
};
use tonic::server::NamedService;

/// The fully-qualified gRPC service name.
pub const SERVICE_NAME: &str = <InteractionServiceServer<api::InteractionApi> as NamedService>::NAME;

/// Connect and migrate the store, then serve until `shutdown`.
pub async fn start(settings: &Settings, shutdown: Shutdown) -> Result<Running, ServeError> {
    let store = Store::connect(&settings.database_url, settings.db_max_connections).await?;
    store.migrate::<migration::Migrator>().await?;
    let api = api::InteractionApi::new(store, shutdown.clone());
    let service = InteractionServiceServer::new(api)
        .max_decoding_message_size(settings.max_message_bytes)
        .max_encoding_message_size(settings.max_message_bytes);
    let spec =
        ServiceSpec { grpc_names: vec![SERVICE_NAME], routes: tonic::service::Routes::new(service), ready: async {} };
    spawn(settings, spec, shutdown).await
}
