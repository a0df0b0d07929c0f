//! Gateway — the value chain: one call per business moment, composing
//! identify, interact, differentiate and customize over gRPC. The only
//! place where services are called synchronously.
#![forbid(unsafe_code)]

pub mod api;
pub mod conversions;
pub mod downstream;
pub mod workflow;

use crm_proto::gateway::v1::gateway_service_server::GatewayServiceServer;
use crm_runtime::{
    config::Settings,
    server::{Running, ServeError, ServiceSpec, Shutdown, spawn},
};
use tonic::server::NamedService;

/// The fully-qualified gRPC service name.
pub const SERVICE_NAME: &str = <GatewayServiceServer<api::GatewayApi> as NamedService>::NAME;

/// Connect (lazily) to the four services and serve until `shutdown`.
/// Their addresses are required; start order does not matter.
pub async fn start(settings: &Settings, shutdown: Shutdown) -> Result<Running, ServeError> {
    let downstream = downstream::Downstream::connect(settings)?;
    let service = GatewayServiceServer::new(api::GatewayApi::new(downstream))
        .max_decoding_message_size(settings.max_message_bytes)
        .max_encoding_message_size(settings.max_message_bytes);
    let spec =
        ServiceSpec { grpc_names: vec![SERVICE_NAME], routes: tonic::service::Routes::new(service), ready: async {} };
    spawn(settings, spec, shutdown).await
}
