//! Clients of the four services, on lazily connected channels that carry
//! the caller's trace context.

use crm_proto::{
    differentiation::v1::differentiation_service_client::DifferentiationServiceClient,
    identification::v1::identification_service_client::IdentificationServiceClient,
    interaction::v1::interaction_service_client::InteractionServiceClient,
    personalization::v1::personalization_service_client::PersonalizationServiceClient,
};
use crm_runtime::{
    client::{TracedChannel, channel},
    config::{ConfigError, ServiceKind, Settings},
};
use tonic::Code;

/// The services the gateway composes.
#[derive(Clone, Debug)]
pub struct Downstream {
    /// Identify.
    pub identification: IdentificationServiceClient<TracedChannel>,
    /// Interact.
    pub interaction: InteractionServiceClient<TracedChannel>,
    /// Differentiate.
    pub differentiation: DifferentiationServiceClient<TracedChannel>,
    /// Customize.
    pub personalization: PersonalizationServiceClient<TracedChannel>,
}

impl Downstream {
    /// Clients for the peers in `settings` (all four required).
    pub fn connect(settings: &Settings) -> Result<Self, ConfigError> {
        let timeout = Some(settings.request_timeout);
        let to = |kind| -> Result<TracedChannel, ConfigError> { channel(&settings.peers.require(kind)?, timeout) };
        Ok(Downstream {
            identification: IdentificationServiceClient::new(to(ServiceKind::Identification)?),
            interaction: InteractionServiceClient::new(to(ServiceKind::Interaction)?),
            differentiation: DifferentiationServiceClient::new(to(ServiceKind::Differentiation)?),
            personalization: PersonalizationServiceClient::new(to(ServiceKind::Personalization)?),
        })
    }
}

/// The canonical name of a status code ("UNAVAILABLE", …).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
