//! Black-box tests of the gateway on its own: with its dependencies down it
//! answers quickly and precisely, and invalid input never reaches them.
//! (The workflows with every service up are in the end-to-end suite.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use crm_proto::{
    common::v1::Channel,
    gateway::v1::{self as pb, gateway_service_client::GatewayServiceClient},
    identification::v1::{Identifier, IdentifierType},
    interaction::v1::InteractionType,
};
use crm_runtime::{
    config::{Peers, ServiceKind, Settings},
    error::field_violations,
    server::Shutdown,
    testing::TestServer,
};
use tonic::Code;

/// Addresses where nothing listens.
fn dead_peers() -> Peers {
    let dead = || {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Some(format!("http://127.0.0.1:{port}"))
    };
    Peers { identification: dead(), interaction: dead(), differentiation: dead(), personalization: dead() }
}

async fn spawn_gateway() -> (TestServer, GatewayServiceClient<tonic::transport::Channel>) {
    let server =
        TestServer::start(ServiceKind::Gateway, dead_peers(), |s, sd| async move { crm_gateway::start(&s, sd).await })
            .await;
    let client = GatewayServiceClient::new(server.channel());
    (server, client)
}

fn visit() -> pb::HandleTouchpointRequest {
    pb::HandleTouchpointRequest {
        identifiers: vec![Identifier {
            r#type: IdentifierType::Email as i32,
            value: "ana@correo.es".into(),
            namespace: String::new(),
        }],
        channel: Channel::Web as i32,
        interaction_type: InteractionType::Visit as i32,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_down_dependency_is_unavailable_quickly() {
    let (_server, mut client) = spawn_gateway().await;
    let started = Instant::now();
    let err = client.handle_touchpoint(visit()).await.expect_err("identification is down");
    assert_eq!(err.code(), Code::Unavailable);
    assert!(started.elapsed() < Duration::from_secs(5), "failed fast, not at the request deadline");
}

#[tokio::test]
async fn invalid_touchpoints_are_refused_before_any_call() {
    let (_server, mut client) = spawn_gateway().await;
    let mut req = visit();
    req.interaction_type = InteractionType::Purchase as i32;
    req.max_offers = -1;
    let err = client.handle_touchpoint(req).await.expect_err("invalid");
    // INVALID_ARGUMENT, not UNAVAILABLE: nothing downstream was called.
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut fields: Vec<String> = field_violations(&err).into_iter().map(|(f, _)| f).collect();
    fields.sort();
    assert_eq!(fields, ["max_offers", "purchase"]);
}

#[tokio::test]
async fn later_workflows_answer_unimplemented() {
    let (_server, mut client) = spawn_gateway().await;
    let err = client.get_customer360(pb::GetCustomer360Request::default()).await.expect_err("later");
    assert_eq!(err.code(), Code::Unimplemented);
}

#[tokio::test]
async fn it_will_not_start_without_its_peers() {
    let settings = Settings::for_tests(ServiceKind::Gateway, String::new());
    let err = crm_gateway::start(&settings, Shutdown::new()).await.expect_err("no peers");
    assert!(err.to_string().contains("CRM_IDENTIFICATION_ADDR"), "{err}");
}
