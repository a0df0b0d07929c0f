//! Black-box tests of identification over gRPC on an ephemeral port with a
//! real store (SQLite, or PostgreSQL when `CRM_TEST_DATABASE_URL` is set).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crm_proto::{
    common::v1::{Channel, Date},
    identification::v1::{
        self as pb, IdentifierType, LifecycleStage, MatchMethod,
        identification_service_client::IdentificationServiceClient, profile_event::Kind,
    },
};
use crm_runtime::{
    config::{Peers, ServiceKind},
    error::field_violations,
    ids::new_id,
    testing::TestServer,
};
use futures::StreamExt;
use tonic::{Code, transport::Channel as GrpcChannel};

async fn spawn_app() -> (TestServer, IdentificationServiceClient<GrpcChannel>) {
    let server = TestServer::start(ServiceKind::Identification, Peers::default(), |s, sd| async move {
        crm_identification::start(&s, sd).await
    })
    .await;
    let client = IdentificationServiceClient::new(server.channel());
    (server, client)
}

fn id(kind: IdentifierType, value: &str) -> pb::Identifier {
    pb::Identifier { r#type: kind as i32, value: value.into(), namespace: String::new() }
}

fn resolve(ids: Vec<pb::Identifier>) -> pb::ResolveIdentityRequest {
    pb::ResolveIdentityRequest { identifiers: ids, channel: Channel::Web as i32, ..Default::default() }
}

fn fields(status: &tonic::Status) -> Vec<String> {
    let mut f: Vec<String> = field_violations(status).into_iter().map(|(f, _)| f).collect();
    f.sort();
    f
}

#[tokio::test]
async fn a_new_person_becomes_a_prospect_of_their_target_group() {
    let (_server, mut client) = spawn_app().await;
    let mut req = resolve(vec![id(IdentifierType::Email, "ana@correo.es")]);
    req.acquisition =
        Some(pb::Acquisition { campaign: "spring".into(), target_group: "families".into(), ..Default::default() });
    req.attributes = Some(pb::ProfileAttributes {
        name: Some(pb::PersonName { given_name: "Ana".into(), family_name: "García".into(), ..Default::default() }),
        ..Default::default()
    });
    let r = client.resolve_identity(req).await.expect("resolve").into_inner();
    assert!(r.created);
    assert_eq!(r.sequence, 1);
    assert_eq!(r.explanation.as_ref().map(|e| e.method), Some(MatchMethod::Created as i32));
    let p = r.profile.expect("profile");
    assert_eq!(p.lifecycle_stage, LifecycleStage::Prospect as i32);
    let acq = p.acquisition.expect("acquisition");
    assert_eq!(
        (acq.channel, acq.campaign.as_str(), acq.target_group.as_str()),
        (Channel::Web as i32, "spring", "families")
    );
    assert_eq!(p.identifiers.len(), 1);

    let got = client.get_profile(pb::GetProfileRequest { profile_id: p.id.clone() }).await.expect("get").into_inner();
    assert_eq!(got.profile.map(|g| g.id), Some(p.id));
}

#[tokio::test]
async fn the_same_person_by_email_then_by_phone_and_email_is_one_profile() {
    let (_server, mut client) = spawn_app().await;
    let first = client
        .resolve_identity(resolve(vec![id(IdentifierType::Email, "Ana@Correo.es")]))
        .await
        .expect("1")
        .into_inner();
    let second = client
        .resolve_identity(resolve(vec![
            id(IdentifierType::Phone, "612 34 56 78"),
            id(IdentifierType::Email, " ana@correo.ES"),
        ]))
        .await
        .expect("2")
        .into_inner();
    let third = client
        .resolve_identity(resolve(vec![id(IdentifierType::Phone, "+34612345678")]))
        .await
        .expect("3")
        .into_inner();
    let pid = first.profile.as_ref().map(|p| p.id.clone());
    assert_eq!(second.profile.as_ref().map(|p| p.id.clone()), pid);
    assert_eq!(third.profile.as_ref().map(|p| p.id.clone()), pid);
    assert!(!second.created && !third.created);
    let how = second.explanation.expect("explanation");
    assert_eq!(how.method, MatchMethod::Deterministic as i32);
    assert_eq!(how.matched_identifier.map(|i| i.value), Some("ana@correo.es".to_owned()));
    let values: Vec<String> =
        third.profile.expect("profile").identifiers.into_iter().filter_map(|i| i.identifier.map(|i| i.value)).collect();
    assert_eq!(values, ["ana@correo.es", "+34612345678"]);

    let mut feed = client.subscribe(pb::SubscribeRequest { after_sequence: 0 }).await.expect("feed").into_inner();
    let e1 = feed.next().await.expect("1").expect("ok").event.expect("event");
    let e2 = feed.next().await.expect("2").expect("ok").event.expect("event");
    assert!(matches!(e1.kind, Some(Kind::ProfileCreated(_))));
    match e2.kind {
        Some(Kind::IdentifiersChanged(c)) => assert_eq!(c.added.len(), 1),
        other => panic!("expected identifiers_changed, got {other:?}"),
    }
    assert_eq!((e1.sequence, e2.sequence), (1, 2));
}

#[tokio::test]
async fn concurrent_resolves_of_one_new_person_create_one_profile() {
    let (_server, client) = spawn_app().await;
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let mut ids = vec![id(IdentifierType::Email, "rui@correio.pt")];
                if i % 2 == 0 {
                    ids.push(id(IdentifierType::Cookie, &format!("cookie-{i}")));
                }
                client.resolve_identity(resolve(ids)).await.expect("resolve").into_inner()
            })
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    let mut created = 0;
    for t in tasks {
        let r = t.await.expect("task");
        created += usize::from(r.created);
        ids.insert(r.profile.expect("profile").id);
    }
    assert_eq!(ids.len(), 1, "one profile");
    assert_eq!(created, 1, "created once");
}

#[tokio::test]
async fn a_retried_resolve_returns_the_first_answer() {
    let (_server, mut client) = spawn_app().await;
    let mut req = resolve(vec![id(IdentifierType::CustomerNumber, "C-1001")]);
    req.request_id = "touch-1".into();
    let first = client.resolve_identity(req.clone()).await.expect("first").into_inner();
    let retry = client.resolve_identity(req).await.expect("retry").into_inner();
    assert!(first.created);
    assert_eq!(first, retry);
}

#[tokio::test]
async fn invalid_input_gets_field_violations() {
    let (_server, mut client) = spawn_app().await;
    let err = client.resolve_identity(resolve(vec![])).await.expect_err("no identifiers");
    assert_eq!((err.code(), fields(&err)), (Code::InvalidArgument, vec!["identifiers".to_owned()]));

    let req = pb::ResolveIdentityRequest {
        identifiers: vec![
            id(IdentifierType::Email, "not-an-email"),
            pb::Identifier { r#type: 42, value: "x".into(), namespace: String::new() },
            id(IdentifierType::ExternalId, "A-1"),
            id(IdentifierType::Phone, "12"),
            id(IdentifierType::Email, &format!("{}@x.es", "a".repeat(10_000))),
        ],
        channel: 77,
        attributes: Some(pb::ProfileAttributes {
            birth_date: Some(Date { year: 1990, month: 2, day: 30 }),
            name: Some(pb::PersonName { given_name: "Ana\u{0}".into(), ..Default::default() }),
            locale: "es ES".into(),
            ..Default::default()
        }),
        request_id: "r".repeat(500),
        ..Default::default()
    };
    let err = client.resolve_identity(req).await.expect_err("invalid");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        fields(&err),
        [
            "attributes.birth_date",
            "attributes.locale",
            "attributes.name.given_name",
            "channel",
            "identifiers[0]",
            "identifiers[1].type",
            "identifiers[2]",
            "identifiers[3]",
            "identifiers[4]",
            "request_id",
        ]
    );

    let err = client
        .resolve_identity(resolve(vec![
            id(IdentifierType::Email, "test@example.com"),
            id(IdentifierType::Phone, "0000000"),
        ]))
        .await
        .expect_err("junk only");
    assert_eq!(err.code(), Code::InvalidArgument);

    let err = client.get_profile(pb::GetProfileRequest { profile_id: "nope".into() }).await.expect_err("bad id");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = client.get_profile(pb::GetProfileRequest { profile_id: new_id() }).await.expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn junk_identifiers_never_link_two_people() {
    let (_server, mut client) = spawn_app().await;
    let a = client
        .resolve_identity(resolve(vec![
            id(IdentifierType::Email, "ana@correo.es"),
            id(IdentifierType::Phone, "0000000"),
        ]))
        .await
        .expect("a")
        .into_inner();
    let b = client
        .resolve_identity(resolve(vec![
            id(IdentifierType::Email, "rui@correio.pt"),
            id(IdentifierType::Phone, "0000000"),
        ]))
        .await
        .expect("b")
        .into_inner();
    assert!(a.created && b.created);
    assert_ne!(a.profile.map(|p| p.id), b.profile.map(|p| p.id));
}

#[tokio::test]
async fn later_rpcs_answer_unimplemented() {
    let (_server, mut client) = spawn_app().await;
    let err = client.merge_profiles(pb::MergeProfilesRequest::default()).await.expect_err("later");
    assert_eq!(err.code(), Code::Unimplemented);
}
