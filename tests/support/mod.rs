//! The whole suite in one process for end-to-end tests: five servers on
//! ephemeral ports, each with its own fresh store, talking real gRPC.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod otlp;
pub mod processes;

use crm_proto::{
    differentiation::v1::differentiation_service_client::DifferentiationServiceClient,
    gateway::v1::gateway_service_client::GatewayServiceClient,
    identification::v1::identification_service_client::IdentificationServiceClient,
    interaction::v1::interaction_service_client::InteractionServiceClient,
    personalization::v1::personalization_service_client::PersonalizationServiceClient,
};
use crm_runtime::{
    config::{Peers, ServiceKind, Settings},
    server::{Running, ServeError, Shutdown},
    testing::TestServer,
};
use tonic::transport::Channel;

/// Start `kind` the way `crm` does.
pub async fn start(kind: ServiceKind, settings: Settings, shutdown: Shutdown) -> Result<Running, ServeError> {
    match kind {
        ServiceKind::Identification => crm_identification::start(&settings, shutdown).await,
        ServiceKind::Interaction => crm_interaction::start(&settings, shutdown).await,
        ServiceKind::Differentiation => crm_differentiation::start(&settings, shutdown).await,
        ServiceKind::Personalization => crm_personalization::start(&settings, shutdown).await,
        ServiceKind::Gateway => crm_gateway::start(&settings, shutdown).await,
    }
}

/// The running suite.
pub struct Suite {
    /// Identify.
    pub identification: TestServer,
    /// Interact.
    pub interaction: TestServer,
    /// Differentiate (an `Option` so a test can stop and restart it).
    pub differentiation: Option<TestServer>,
    /// Customize.
    pub personalization: Option<TestServer>,
    /// The value chain.
    pub gateway: TestServer,
}

impl Suite {
    /// Start all five, systems of record first.
    pub async fn start() -> Suite {
        let identification = TestServer::start(ServiceKind::Identification, Peers::default(), |s, sd| {
            start(ServiceKind::Identification, s, sd)
        })
        .await;
        let interaction = TestServer::start(
            ServiceKind::Interaction,
            Peers { identification: Some(identification.url()), ..Default::default() },
            |s, sd| start(ServiceKind::Interaction, s, sd),
        )
        .await;
        let feeds = Peers {
            identification: Some(identification.url()),
            interaction: Some(interaction.url()),
            ..Default::default()
        };
        let differentiation = TestServer::start(ServiceKind::Differentiation, feeds.clone(), |s, sd| {
            start(ServiceKind::Differentiation, s, sd)
        })
        .await;
        let personalization = TestServer::start(ServiceKind::Personalization, feeds.clone(), |s, sd| {
            start(ServiceKind::Personalization, s, sd)
        })
        .await;
        let all = Peers {
            differentiation: Some(differentiation.url()),
            personalization: Some(personalization.url()),
            ..feeds
        };
        let gateway = TestServer::start(ServiceKind::Gateway, all, |s, sd| start(ServiceKind::Gateway, s, sd)).await;
        Suite {
            identification,
            interaction,
            differentiation: Some(differentiation),
            personalization: Some(personalization),
            gateway,
        }
    }

    /// Which store the suite runs on ("sqlite" or "postgres").
    pub fn store_kind(&self) -> &'static str {
        self.identification.db().kind()
    }

    /// Stop differentiation and start it again on the same port and store.
    pub async fn restart_differentiation(&mut self) {
        let server = self.differentiation.take().expect("running");
        let (settings, db) = server.stop().await;
        let server = TestServer::start_with(settings, db, |s, sd| start(ServiceKind::Differentiation, s, sd)).await;
        self.differentiation = Some(server);
    }

    /// A gateway client.
    pub fn gateway(&self) -> GatewayServiceClient<Channel> {
        GatewayServiceClient::new(self.gateway.channel())
    }

    /// An identification client.
    pub fn identification(&self) -> IdentificationServiceClient<Channel> {
        IdentificationServiceClient::new(self.identification.channel())
    }

    /// An interaction client.
    pub fn interaction(&self) -> InteractionServiceClient<Channel> {
        InteractionServiceClient::new(self.interaction.channel())
    }

    /// A differentiation client.
    pub fn differentiation(&self) -> DifferentiationServiceClient<Channel> {
        DifferentiationServiceClient::new(self.differentiation.as_ref().expect("running").channel())
    }

    /// A personalization client.
    pub fn personalization(&self) -> PersonalizationServiceClient<Channel> {
        PersonalizationServiceClient::new(self.personalization.as_ref().expect("running").channel())
    }
}
