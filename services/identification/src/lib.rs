//! Identification — Identify: recognise a person every time they contact
//! the company, on any channel, and keep one up-to-date profile per person.
//! The system of record of profiles and identities; its feed tells every
//! other service who is who.
#![forbid(unsafe_code)]

pub mod api;
pub mod conversions;
pub mod domain;
pub mod export;
pub mod matcher;
pub mod merges;
pub mod migration;
pub mod store;

use crm_proto::identification::v1::identification_service_server::IdentificationServiceServer;
use crm_runtime::{
    config::{ConfigError, Settings},
    db::Store,
    server::{Running, ServeError, ServiceSpec, Shutdown, spawn},
};
use tonic::server::NamedService;

/// The fully-qualified gRPC service name.
pub const SERVICE_NAME: &str = <IdentificationServiceServer<api::IdentificationApi> as NamedService>::NAME;

/// Connect and migrate the store, then serve until `shutdown`.
pub async fn start(settings: &Settings, shutdown: Shutdown) -> Result<Running, ServeError> {
    if settings.default_region.parse::<phonenumber::country::Id>().is_err() {
        return Err(ConfigError::Invalid {
            what: "CRM_DEFAULT_REGION",
            detail: "an ISO 3166-1 alpha-2 code such as ES".into(),
        }
        .into());
    }
    let store = Store::connect(&settings.database_url, settings.db_max_connections).await?;
    store.migrate::<migration::Migrator>().await?;
    matcher::backfill(&store).await.map_err(|e| sea_orm::DbErr::Custom(format!("indexing profiles: {e}")))?;
    if let Some(every) = settings.matcher_train_every {
        matcher::schedule_training(store.clone(), every, shutdown.clone());
    }
    let api = api::IdentificationApi::new(
        store,
        shutdown.clone(),
        settings.default_region.clone(),
        settings.matcher_train_from_records,
    );
    let service = IdentificationServiceServer::new(api)
        .max_decoding_message_size(settings.max_message_bytes)
        .max_encoding_message_size(settings.max_message_bytes);
    let spec =
        ServiceSpec { grpc_names: vec![SERVICE_NAME], routes: tonic::service::Routes::new(service), ready: async {} };
    spawn(settings, spec, shutdown).await
}
