//! Interaction — Interact: every contact, purchase and consent between the
//! company and a customer, on every channel, as one continuous dialogue.
//! The system of record whose feed every projection is built from. It
//! follows the identification feed (IN-7): merges re-key a customer's
//! facts, unmerges split them back exactly, erasures delete them (see
//! `store::lifecycle` for the design and what an erasure keeps of consent).
#![forbid(unsafe_code)]

pub mod api;
pub mod conversions;
pub mod domain;
pub mod migration;
pub mod store;

use std::sync::Arc;

use crm_proto::interaction::v1::interaction_service_server::InteractionServiceServer;
use crm_runtime::{
    client,
    config::{ServiceKind, Settings},
    consumer::{Consumer, ProfileFeed},
    db::Store,
    server::{Running, ServeError, ServiceSpec, Shutdown, spawn},
};
use tonic::server::NamedService;

/// The fully-qualified gRPC service name.
pub const SERVICE_NAME: &str = <InteractionServiceServer<api::InteractionApi> as NamedService>::NAME;

/// The cursor name of the identification feed consumer.
pub const IDENTIFICATION_FEED: &str = "identification";

/// Connect and migrate the store, follow the identification feed, then
/// serve until `shutdown`. Health turns SERVING once the feed is connected.
pub async fn start(settings: &Settings, shutdown: Shutdown) -> Result<Running, ServeError> {
    let identification = settings.peers.require(ServiceKind::Identification)?;
    let store = Store::connect(&settings.database_url, settings.db_max_connections).await?;
    store.migrate::<migration::Migrator>().await?;
    let consumer = Consumer {
        name: IDENTIFICATION_FEED.to_owned(),
        store: store.clone(),
        source: Arc::new(ProfileFeed(client::channel(&identification, None)?)),
        projection: Arc::new(store::IdentityLifecycle),
    };
    let progress = consumer.spawn(shutdown.clone()).await?;
    let api = api::InteractionApi::new(store, shutdown.clone());
    let service = InteractionServiceServer::new(api)
        .max_decoding_message_size(settings.max_message_bytes)
        .max_encoding_message_size(settings.max_message_bytes);
    let ready = async move { progress.connected().await };
    let spec = ServiceSpec { grpc_names: vec![SERVICE_NAME], routes: tonic::service::Routes::new(service), ready };
    spawn(settings, spec, shutdown).await
}
