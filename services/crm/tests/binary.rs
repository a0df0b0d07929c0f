//! The real `crm` binary: `crm up` serves health and reflection (v1 and
//! v1alpha) on all five ports, answers a touchpoint end to end, and shuts
//! down cleanly on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crm_proto::{
    common::v1::Channel,
    gateway::v1::{HandleTouchpointRequest, gateway_service_client::GatewayServiceClient},
    identification::v1::{Identifier, IdentifierType},
    interaction::v1::InteractionType,
};
use futures::StreamExt;
use tonic::transport::Channel as GrpcChannel;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

/// A base port whose five ports are free now.
fn free_base() -> u16 {
    for attempt in 0..200u16 {
        let base = 41_000 + (std::process::id() as u16 % 1000) * 10 + attempt * 7 % 9000;
        if (0..5).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no free ports");
}

struct Suite(Child);

impl Drop for Suite {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

async fn channel(port: u16) -> GrpcChannel {
    tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}")).unwrap().connect_lazy()
}

async fn wait_serving(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut client = HealthClient::new(channel(port).await);
    loop {
        if let Ok(r) = client.check(HealthCheckRequest { service: String::new() }).await
            && r.into_inner().status == ServingStatus::Serving as i32
        {
            return;
        }
        assert!(Instant::now() < deadline, "port {port} never became SERVING");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The services a server lists over one version of reflection.
macro_rules! list_services {
    ($version:ident, $port:expr) => {{
        use tonic_reflection::pb::$version::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let mut client = ServerReflectionClient::new(channel($port).await);
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = client.server_reflection_info(tokio_stream::iter([req])).await.unwrap().into_inner();
        match stream.next().await.unwrap().unwrap().message_response {
            Some(MessageResponse::ListServicesResponse(l)) => {
                l.service.into_iter().map(|s| s.name).collect::<Vec<String>>()
            }
            other => panic!("unexpected reflection answer {other:?}"),
        }
    }};
}

#[tokio::test]
async fn up_serves_the_suite_and_stops_on_sigterm() {
    let data = tempfile::tempdir().unwrap();
    let base = free_base();
    let child = Command::new(env!("CARGO_BIN_EXE_crm"))
        .args(["up", "--port", &base.to_string()])
        .env("CRM_DATA_DIR", data.path())
        .env("CRM_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut suite = Suite(child);

    let expected = [
        (0, "crm.gateway.v1.GatewayService"),
        (1, "crm.identification.v1.IdentificationService"),
        (2, "crm.differentiation.v1.DifferentiationService"),
        (3, "crm.interaction.v1.InteractionService"),
        (4, "crm.personalization.v1.PersonalizationService"),
    ];
    for (offset, service) in expected {
        let port = base + offset;
        wait_serving(port).await;
        for listed in [list_services!(v1, port), list_services!(v1alpha, port)] {
            assert!(listed.contains(&service.to_owned()), "{service} listed on {port}: {listed:?}");
            for expected in [
                "grpc.health.v1.Health",
                "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection",
            ] {
                assert!(listed.contains(&expected.to_owned()), "{expected} listed on {port}: {listed:?}");
            }
            assert_eq!(listed.iter().filter(|s| s.starts_with("crm.")).count(), 1, "only its own service on {port}");
        }
        let mut health = HealthClient::new(channel(port).await);
        let status =
            health.check(HealthCheckRequest { service: service.to_owned() }).await.unwrap().into_inner().status;
        assert_eq!(status, ServingStatus::Serving as i32);
    }

    let mut gateway = GatewayServiceClient::new(channel(base).await);
    let r = gateway
        .handle_touchpoint(HandleTouchpointRequest {
            identifiers: vec![Identifier {
                r#type: IdentifierType::Email as i32,
                value: "ana@correo.es".into(),
                namespace: String::new(),
            }],
            channel: Channel::Web as i32,
            interaction_type: InteractionType::Visit as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.profile_created);
    assert!(r.missing_parts.is_empty(), "{:?}", r.missing_parts);
    for db in ["identification", "interaction", "differentiation", "personalization"] {
        assert!(data.path().join(format!("{db}.db")).exists(), "{db} has its own SQLite file");
    }

    let pid = suite.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = suite.0.try_wait().unwrap() {
            assert!(status.success(), "clean exit, got {status}");
            break;
        }
        assert!(Instant::now() < deadline, "did not stop within the drain timeout");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn migrate_prepares_an_identification_store_without_serving() {
    use sea_orm::ConnectionTrait;
    let data = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/identification.db?mode=rwc", data.path().display());
    let status = Command::new(env!("CARGO_BIN_EXE_crm"))
        .args(["migrate", "identification"])
        .env("CRM_DATABASE_URL", &url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    // The schema is there, and the blocking keys of the current scheme are
    // marked as given to every stored profile.
    let store = crm_runtime::db::Store::connect(&url, 1).await.unwrap();
    let mark = store
        .conn()
        .query_one_raw(store.stmt(
            "SELECT position FROM feed_cursors WHERE name = ?",
            vec!["identification.blocking_key_scheme".into()],
        ))
        .await
        .unwrap()
        .map(|r| r.try_get_by_index::<i64>(0).unwrap());
    assert_eq!(mark, Some(crm_identification::matcher::KEY_SCHEME));
}
