//! Black-box tests of identification over gRPC on an ephemeral port with a
//! real store (SQLite, or PostgreSQL when `CRM_TEST_DATABASE_URL` is set).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;

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
async fn concurrent_resolves_of_a_known_person_see_each_others_identifiers() {
    let (_server, mut client) = spawn_app().await;
    let email = || id(IdentifierType::Email, "lia@correo.es");
    let first = client.resolve_identity(resolve(vec![email()])).await.expect("first").into_inner();
    let pid = first.profile.expect("profile").id;
    // Each touchpoint brings a phone of its own; a profile holds five.
    let tasks: Vec<_> = (0..24)
        .map(|i| {
            let mut client = client.clone();
            let ids = vec![email(), id(IdentifierType::Phone, &format!("+3461200{i:04}"))];
            tokio::spawn(async move { client.resolve_identity(resolve(ids)).await.expect("resolve").into_inner() })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.expect("task"));
    }
    let phones = |p: &pb::Profile| {
        p.identifiers
            .iter()
            .filter(|i| i.identifier.as_ref().is_some_and(|i| i.r#type == IdentifierType::Phone as i32))
            .count()
    };
    assert!(answers.iter().all(|a| a.profile.as_ref().is_some_and(|p| p.id == pid)), "one person");
    let got = client.get_profile(pb::GetProfileRequest { profile_id: pid }).await.expect("get").into_inner();
    assert_eq!(phones(&got.profile.expect("profile")), 5, "the limit holds");
    // The resolves that attached a phone, in commit order: each shows the
    // phones attached before it.
    let mut attached: Vec<&pb::ResolveIdentityResponse> = answers.iter().filter(|a| a.sequence > 0).collect();
    attached.sort_by_key(|a| a.sequence);
    let shown: Vec<usize> = attached.iter().map(|a| phones(a.profile.as_ref().expect("profile"))).collect();
    assert_eq!(shown, [1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn a_retried_resolve_returns_the_first_answer() {
    let (_server, mut client) = spawn_app().await;
    let mut req = resolve(vec![id(IdentifierType::CustomerNumber, "C-1001")]);
    req.request_id = "touch-1".into();
    let first = client.resolve_identity(req.clone()).await.expect("first").into_inner();
    let retry = client.resolve_identity(req.clone()).await.expect("retry").into_inner();
    assert!(first.created);
    assert_eq!(first, retry);

    // The key names that request only.
    let mut other = resolve(vec![id(IdentifierType::CustomerNumber, "C-1002")]);
    other.request_id = req.request_id.clone();
    let err = client.resolve_identity(other).await.expect_err("key reused");
    assert_eq!((err.code(), fields(&err)), (Code::InvalidArgument, vec!["request_id".to_owned()]));
}

#[tokio::test]
async fn concurrent_retries_of_a_resolve_are_answered_alike_and_written_once() {
    let (_server, client) = spawn_app().await;
    let mut req = resolve(vec![id(IdentifierType::Email, "ines@correo.es")]);
    req.attributes = Some(pb::ProfileAttributes {
        name: Some(pb::PersonName { given_name: "Inés".into(), family_name: "Roca".into(), ..Default::default() }),
        ..Default::default()
    });
    req.request_id = "touch-retried".into();
    let tasks: Vec<_> = (0..12)
        .map(|_| {
            let (mut client, req) = (client.clone(), req.clone());
            tokio::spawn(async move { client.resolve_identity(req).await.expect("resolve").into_inner() })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.expect("task"));
    }
    assert!(answers[0].created, "{:?}", answers[0]);
    assert!(answers.iter().all(|a| *a == answers[0]), "every retry gets the first answer");

    // The feed holds one event of it: the next is another person's.
    let mut client = client;
    let next = client.resolve_identity(resolve(vec![id(IdentifierType::Email, "pau@correo.es")])).await.expect("next");
    let next = next.into_inner();
    let mut feed = client.subscribe(pb::SubscribeRequest { after_sequence: 0 }).await.expect("feed").into_inner();
    let mut events = Vec::new();
    for _ in 0..2 {
        let e = feed.next().await.expect("event").expect("ok").event.expect("event");
        events.push((e.sequence, e.profile_id, matches!(e.kind, Some(Kind::ProfileCreated(_)))));
    }
    let profile = |a: &pb::ResolveIdentityResponse| a.profile.as_ref().expect("profile").id.clone();
    assert_eq!(events, [(1, profile(&answers[0]), true), (2, profile(&next), true)]);
    assert_eq!((answers[0].sequence, next.sequence), (1, 2));
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

fn person(email: &str, given: &str, family: &str) -> pb::ResolveIdentityRequest {
    pb::ResolveIdentityRequest {
        identifiers: vec![id(IdentifierType::Email, email)],
        channel: Channel::Web as i32,
        attributes: Some(pb::ProfileAttributes {
            name: Some(pb::PersonName { given_name: given.into(), family_name: family.into(), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn profiles_list_with_filters_and_pages() {
    let (_server, mut client) = spawn_app().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let mut req = person(&format!("p{i}@correo.es"), "Ana", "Ruiz");
        req.acquisition = Some(pb::Acquisition {
            target_group: if i % 2 == 0 { "young".into() } else { "senior".into() },
            ..Default::default()
        });
        if i == 4 {
            req.attributes.as_mut().unwrap().traits.insert(
                "kids".into(),
                crm_proto::common::v1::TraitValue { kind: Some(crm_proto::common::v1::trait_value::Kind::IntValue(2)) },
            );
        }
        ids.push(client.resolve_identity(req).await.unwrap().into_inner().profile.unwrap().id);
    }
    let page1 = client
        .list_profiles(pb::ListProfilesRequest { page_size: 3, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let page2 = client
        .list_profiles(pb::ListProfilesRequest {
            page_size: 3,
            page_token: page1.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let all: Vec<String> = page1.profiles.iter().chain(&page2.profiles).map(|p| p.id.clone()).collect();
    assert_eq!(all, ids, "oldest first across pages");
    assert!(page1.profiles.iter().all(|p| p.identifiers.len() == 1), "identifiers come along");
    let young = client
        .list_profiles(pb::ListProfilesRequest {
            target_group: "young".into(),
            lifecycle_stage: LifecycleStage::Prospect as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(young.profiles.len(), 3);
    let kids = client
        .list_profiles(pb::ListProfilesRequest { trait_key: "kids".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kids.profiles.iter().map(|p| p.id.clone()).collect::<Vec<_>>(), [ids[4].clone()]);
    let err = client
        .list_profiles(pb::ListProfilesRequest { trait_key: "100%".into(), page_size: -1, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(fields(&err), ["page_size", "trait_key"]);
}

#[tokio::test]
async fn updates_follow_the_mask_and_the_etag_and_are_in_the_history() {
    let (_server, mut client) = spawn_app().await;
    let p =
        client.resolve_identity(person("ana@correo.es", "Ana", "García")).await.unwrap().into_inner().profile.unwrap();
    let mask = |paths: &[&str]| Some(prost_types::FieldMask { paths: paths.iter().map(|s| s.to_string()).collect() });
    let change = pb::Profile {
        id: p.id.clone(),
        etag: p.etag.clone(),
        name: Some(pb::PersonName { given_name: "Anna".into(), family_name: "IGNORED".into(), ..Default::default() }),
        lifecycle_stage: LifecycleStage::FirstTimeCustomer as i32,
        ..Default::default()
    };
    let r = client
        .update_profile(pb::UpdateProfileRequest {
            profile: Some(change.clone()),
            update_mask: mask(&["name.given_name", "lifecycle_stage"]),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let updated = r.profile.unwrap();
    let name = updated.name.as_ref().unwrap();
    assert_eq!((name.given_name.as_str(), name.family_name.as_str()), ("Anna", "García"));
    assert_eq!(updated.lifecycle_stage, LifecycleStage::FirstTimeCustomer as i32);
    assert_ne!(updated.etag, p.etag);

    // The old etag is stale now.
    let err = client
        .update_profile(pb::UpdateProfileRequest {
            profile: Some(change),
            update_mask: mask(&["locale"]),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    let err = client
        .update_profile(pb::UpdateProfileRequest {
            profile: Some(pb::Profile { id: p.id.clone(), ..Default::default() }),
            update_mask: mask(&["identifiers", "locale"]),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(fields(&err), ["update_mask.paths[0]"]);
    let err = client
        .update_profile(pb::UpdateProfileRequest {
            profile: Some(pb::Profile { id: p.id.clone(), ..Default::default() }),
            update_mask: None,
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(fields(&err), ["update_mask"]);

    let history = client
        .list_profile_changes(pb::ListProfileChangesRequest { profile_id: p.id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let kinds: Vec<(String, Vec<String>)> = history.changes.into_iter().map(|c| (c.kind, c.changed_fields)).collect();
    assert_eq!(
        kinds,
        [
            ("profile_created".to_owned(), vec![]),
            ("profile_updated".to_owned(), vec!["name".to_owned(), "lifecycle_stage".to_owned()])
        ]
    );
}

#[tokio::test]
async fn identifiers_are_added_and_removed_within_their_guardrails() {
    let (_server, mut client) = spawn_app().await;
    let mut req = person("ana@correo.es", "Ana", "García");
    req.identifiers.push(id(IdentifierType::CustomerNumber, "C-1"));
    let ana = client.resolve_identity(req).await.unwrap().into_inner().profile.unwrap();
    let rui =
        client.resolve_identity(person("rui@correio.pt", "Rui", "Costa")).await.unwrap().into_inner().profile.unwrap();

    let add = |profile: &str, ids: Vec<pb::Identifier>| pb::AddIdentifiersRequest {
        profile_id: profile.to_owned(),
        identifiers: ids,
        request_id: String::new(),
    };
    let r =
        client.add_identifiers(add(&ana.id, vec![id(IdentifierType::Phone, "612345678")])).await.unwrap().into_inner();
    assert_eq!(r.profile.unwrap().identifiers.len(), 3);
    let err =
        client.add_identifiers(add(&ana.id, vec![id(IdentifierType::Email, "RUI@correio.pt")])).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "it belongs to Rui");
    let err = client.add_identifiers(add(&ana.id, vec![id(IdentifierType::CustomerNumber, "C-2")])).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "one customer number per profile");
    let err =
        client.add_identifiers(add(&rui.id, vec![id(IdentifierType::Email, "test@example.com")])).await.unwrap_err();
    assert_eq!(fields(&err), ["identifiers[0]"]);

    // A touchpoint with Ana's email but another customer number is someone
    // else (a shared family address), not Ana.
    let mut req = person("ana@correo.es", "Pablo", "García");
    req.identifiers.push(id(IdentifierType::CustomerNumber, "C-9"));
    let other = client.resolve_identity(req).await.unwrap().into_inner();
    assert!(other.created);
    assert_ne!(other.profile.unwrap().id, ana.id);

    let r = client
        .remove_identifiers(pb::RemoveIdentifiersRequest {
            profile_id: ana.id.clone(),
            identifiers: vec![id(IdentifierType::Phone, "+34612345678")],
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.profile.unwrap().identifiers.len(), 2);
    let again =
        client.resolve_identity(resolve(vec![id(IdentifierType::Phone, "612345678")])).await.unwrap().into_inner();
    assert!(again.created, "a removed identifier no longer finds the profile");
}

#[tokio::test]
async fn an_erased_person_is_gone_from_every_table_but_the_tombstone_remains() {
    let (server, mut client) = spawn_app().await;
    let mut req = person("marta.puig@correu.cat", "Marta", "Puig");
    req.identifiers.push(id(IdentifierType::Phone, "+34 655 123 456"));
    req.attributes.as_mut().unwrap().birth_date = Some(Date { year: 1984, month: 7, day: 9 });
    req.request_id = "touch-erase".into();
    let marta = client.resolve_identity(req.clone()).await.unwrap().into_inner().profile.unwrap();
    client
        .update_profile(pb::UpdateProfileRequest {
            profile: Some(pb::Profile { id: marta.id.clone(), locale: "ca-ES".into(), ..Default::default() }),
            update_mask: Some(prost_types::FieldMask { paths: vec!["locale".into()] }),
            request_id: "upd-erase".into(),
        })
        .await
        .unwrap();
    let keep =
        client.resolve_identity(person("rui@correio.pt", "Rui", "Costa")).await.unwrap().into_inner().profile.unwrap();

    let erased = client
        .erase_profile(pb::EraseProfileRequest { profile_id: marta.id.clone(), request_id: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert!(erased.sequence > 0);
    let again = client
        .erase_profile(pb::EraseProfileRequest { profile_id: marta.id.clone(), request_id: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.sequence, erased.sequence, "erasing twice is the same erasure");
    let err = client.get_profile(pb::GetProfileRequest { profile_id: marta.id.clone() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Query the store itself: no personal value anywhere, the tombstone stays.
    let store = crm_runtime::db::Store::connect(&server.db().url, 2).await.unwrap();
    let needles = ["Marta", "Puig", "marta.puig@correu.cat", "+34655123456", "ca-ES"];
    for (table, column) in [
        ("profiles", "body"),
        ("identifiers", "value"),
        ("event_log", "payload"),
        ("idempotency_keys", "response"),
        ("match_decisions", "explanation"),
    ] {
        let rows = sea_orm::ConnectionTrait::query_all_raw(
            store.conn(),
            store.stmt(&format!("SELECT {column} FROM {table} WHERE {column} IS NOT NULL"), vec![]),
        )
        .await
        .unwrap();
        for row in rows {
            let bytes: Vec<u8> = row
                .try_get_by_index::<Vec<u8>>(0)
                .or_else(|_| row.try_get_by_index::<String>(0).map(String::into_bytes))
                .unwrap();
            let text = String::from_utf8_lossy(&bytes);
            for n in needles {
                assert!(!text.contains(n), "{n} is still in {table}.{column}");
            }
        }
    }
    let stone = sea_orm::ConnectionTrait::query_one_raw(
        store.conn(),
        store.stmt("SELECT status FROM profiles WHERE id = ?", vec![marta.id.clone().into()]),
    )
    .await
    .unwrap()
    .expect("tombstone");
    assert_eq!(stone.try_get_by_index::<i32>(0).unwrap(), 3);
    // Others are untouched, and the feed still counts every sequence.
    assert_eq!(
        client
            .get_profile(pb::GetProfileRequest { profile_id: keep.id })
            .await
            .unwrap()
            .into_inner()
            .profile
            .unwrap()
            .name
            .unwrap()
            .given_name,
        "Rui"
    );
    let mut feed = client.subscribe(pb::SubscribeRequest { after_sequence: 0 }).await.unwrap().into_inner();
    for expected in 1..=erased.sequence {
        let e = feed.next().await.unwrap().unwrap().event.unwrap();
        assert_eq!(e.sequence, expected);
    }
    // The same person coming back is a new prospect.
    let back = client.resolve_identity(req).await.unwrap().into_inner();
    assert!(back.created, "the erased identifiers and the replayable answer are gone");

    let export = client.export_profile(pb::ExportProfileRequest { profile_id: marta.id }).await.unwrap_err();
    assert_eq!(export.code(), Code::NotFound);
}

#[tokio::test]
async fn the_export_holds_everything_about_the_person() {
    let (_server, mut client) = spawn_app().await;
    let p =
        client.resolve_identity(person("ana@correo.es", "Ana", "García")).await.unwrap().into_inner().profile.unwrap();
    let export =
        client.export_profile(pb::ExportProfileRequest { profile_id: p.id.clone() }).await.unwrap().into_inner();
    let doc: serde_json::Value = serde_json::from_str(&export.document_json).unwrap();
    assert_eq!(doc["profile_id"], p.id);
    assert_eq!(doc["name"]["given_name"], "Ana");
    assert_eq!(doc["identifiers"][0]["value"], "ana@correo.es");
    assert_eq!(doc["history"][0]["kind"], "profile_created");
    assert_eq!(export.changes.len(), 1);
}

/// A profile without what legitimately moves on every touch (etag, update
/// time, identifiers' last-seen time), encoded: equal bytes, equal profile.
fn content(p: &pb::Profile) -> Vec<u8> {
    use prost::Message;
    let mut p = p.clone();
    p.etag.clear();
    p.update_time = None;
    for i in &mut p.identifiers {
        i.last_seen_time = None;
    }
    p.encode_to_vec()
}

#[tokio::test]
async fn merge_then_unmerge_restores_both_profiles_plus_what_arrived_meanwhile() {
    let (_server, mut client) = spawn_app().await;
    let mut a = person("ana@correo.es", "Ana", "García");
    a.attributes.as_mut().unwrap().birth_date = Some(Date { year: 1990, month: 5, day: 17 });
    let ana = client.resolve_identity(a).await.unwrap().into_inner().profile.unwrap();
    let mut b = resolve(vec![id(IdentifierType::Phone, "612345678")]);
    b.attributes = Some(pb::ProfileAttributes {
        name: Some(pb::PersonName {
            given_name: "Ana".into(),
            family_name: "García López".into(),
            ..Default::default()
        }),
        locale: "ca-ES".into(),
        ..Default::default()
    });
    let ana2 = client.resolve_identity(b).await.unwrap().into_inner().profile.unwrap();

    let merged = client
        .merge_profiles(pb::MergeProfilesRequest {
            surviving_id: ana.id.clone(),
            merged_id: ana2.id.clone(),
            request_id: "m-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let survivor = merged.profile.unwrap();
    assert_eq!(survivor.identifiers.len(), 2, "identifiers moved");
    assert_eq!(survivor.merged_ids, vec![ana2.id.clone()]);
    assert_eq!(survivor.locale, "ca-ES");
    assert_eq!(
        survivor.name.as_ref().unwrap().family_name,
        "García López",
        "equally complete names: the most recently updated wins"
    );
    let alias = client
        .get_profile(pb::GetProfileRequest { profile_id: ana2.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .profile
        .unwrap();
    assert_eq!(alias.id, ana.id, "the merged id resolves to the survivor");

    // Meanwhile: a touchpoint by the merged side's phone brings a work email;
    // one by the survivor's email brings a cookie.
    let via_phone = client
        .resolve_identity(resolve(vec![
            id(IdentifierType::Phone, "+34612345678"),
            id(IdentifierType::Email, "ana@feina.cat"),
        ]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(via_phone.profile.unwrap().id, ana.id);
    client
        .resolve_identity(resolve(vec![
            id(IdentifierType::Email, "ana@correo.es"),
            id(IdentifierType::Cookie, "ck-77"),
        ]))
        .await
        .unwrap();

    let undone = client
        .unmerge_profiles(pb::UnmergeProfilesRequest { merge_id: merged.merge_id.clone(), request_id: String::new() })
        .await
        .unwrap()
        .into_inner();
    let s = undone.surviving_profile.unwrap();
    let r = undone.restored_profile.unwrap();
    let values =
        |p: &pb::Profile| p.identifiers.iter().map(|i| i.identifier.clone().unwrap().value).collect::<Vec<_>>();
    assert_eq!(values(&s), ["ana@correo.es", "ck-77"]);
    assert_eq!(values(&r), ["+34612345678", "ana@feina.cat"]);

    // Byte for byte as before, plus the identifiers that arrived.
    let mut expected_s = ana.clone();
    expected_s.identifiers = s.identifiers.clone();
    let mut expected_r = ana2.clone();
    expected_r.identifiers = r.identifiers.clone();
    assert_eq!(content(&s), content(&expected_s));
    assert_eq!(content(&r), content(&expected_r));
    assert!(s.etag.parse::<i64>().unwrap() > survivor.etag.parse::<i64>().unwrap(), "etags only move forward");
    let got = client
        .get_profile(pb::GetProfileRequest { profile_id: ana2.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .profile
        .unwrap();
    assert_eq!(got.id, ana2.id, "the restored profile lives again");

    let err = client
        .unmerge_profiles(pb::UnmergeProfilesRequest { merge_id: merged.merge_id.clone(), request_id: String::new() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = client
        .unmerge_profiles(pb::UnmergeProfilesRequest { merge_id: new_id(), request_id: String::new() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let mut feed = client.subscribe(pb::SubscribeRequest { after_sequence: 0 }).await.unwrap().into_inner();
    let mut kinds = Vec::new();
    while let Ok(Some(Ok(e))) = tokio::time::timeout(std::time::Duration::from_millis(300), feed.next()).await {
        kinds.push(e.event.unwrap().kind.map(|k| match k {
            Kind::ProfileMerged(_) => "merged",
            Kind::ProfileUnmerged(_) => "unmerged",
            _ => "other",
        }));
    }
    assert!(kinds.contains(&Some("merged")) && kinds.contains(&Some("unmerged")));
}

#[tokio::test]
async fn merges_refuse_what_would_lose_or_confuse_identity() {
    let (_server, mut client) = spawn_app().await;
    let mut a = person("a@correo.es", "A", "A");
    a.identifiers.push(id(IdentifierType::CustomerNumber, "C-1"));
    let a = client.resolve_identity(a).await.unwrap().into_inner().profile.unwrap();
    let mut b = person("b@correo.es", "B", "B");
    b.identifiers.push(id(IdentifierType::CustomerNumber, "C-2"));
    let b = client.resolve_identity(b).await.unwrap().into_inner().profile.unwrap();
    let err = client
        .merge_profiles(pb::MergeProfilesRequest {
            surviving_id: a.id.clone(),
            merged_id: b.id.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "two customer numbers are two people");
    let err = client
        .merge_profiles(pb::MergeProfilesRequest {
            surviving_id: a.id.clone(),
            merged_id: a.id.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(fields(&err), ["merged_id"]);
    let err = client
        .merge_profiles(pb::MergeProfilesRequest {
            surviving_id: a.id.clone(),
            merged_id: new_id(),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = client.merge_profiles(pb::MergeProfilesRequest::default()).await.unwrap_err();
    assert_eq!(fields(&err), ["merged_id", "surviving_id"]);
}

#[tokio::test]
async fn erasing_a_survivor_erases_the_person_behind_every_alias() {
    let (_server, mut client) = spawn_app().await;
    let a = client.resolve_identity(person("a@correo.es", "Ana", "Vidal")).await.unwrap().into_inner().profile.unwrap();
    let b = client.resolve_identity(person("b@correo.es", "Ana", "Vidal")).await.unwrap().into_inner().profile.unwrap();
    client
        .merge_profiles(pb::MergeProfilesRequest {
            surviving_id: a.id.clone(),
            merged_id: b.id.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap();
    client
        .erase_profile(pb::EraseProfileRequest { profile_id: b.id.clone(), request_id: String::new() })
        .await
        .unwrap();
    for id in [&a.id, &b.id] {
        let err = client.get_profile(pb::GetProfileRequest { profile_id: id.clone() }).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
    }
    let back = client.resolve_identity(person("b@correo.es", "X", "Y")).await.unwrap().into_inner();
    assert!(back.created);
}

#[tokio::test]
async fn an_anonymous_visitor_is_stitched_to_the_person_when_they_identify() {
    let (_server, mut client) = spawn_app().await;
    let known =
        client.resolve_identity(person("ana@correo.es", "Ana", "García")).await.unwrap().into_inner().profile.unwrap();
    // Browsing anonymously on another device first.
    let anon = client
        .resolve_identity(resolve(vec![id(IdentifierType::Cookie, "ck-1"), id(IdentifierType::DeviceId, "dev-9")]))
        .await
        .unwrap()
        .into_inner()
        .profile
        .unwrap();
    assert_ne!(anon.id, known.id);
    // Then logging in: email plus that cookie.
    let r = client
        .resolve_identity(resolve(vec![id(IdentifierType::Email, "ana@correo.es"), id(IdentifierType::Cookie, "ck-1")]))
        .await
        .unwrap()
        .into_inner();
    let p = r.profile.unwrap();
    assert_eq!(p.id, known.id);
    assert_eq!(p.merged_ids, vec![anon.id.clone()]);
    assert_eq!(p.identifiers.len(), 3, "email, cookie and device");
    let alias = client
        .get_profile(pb::GetProfileRequest { profile_id: anon.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .profile
        .unwrap();
    assert_eq!(alias.id, known.id);

    // A known person's cookie is never stitched to someone else.
    let rui = client
        .resolve_identity(resolve(vec![
            id(IdentifierType::Email, "rui@correio.pt"),
            id(IdentifierType::Cookie, "ck-2"),
        ]))
        .await
        .unwrap()
        .into_inner()
        .profile
        .unwrap();
    let r = client
        .resolve_identity(resolve(vec![id(IdentifierType::Email, "ana@correo.es"), id(IdentifierType::Cookie, "ck-2")]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.profile.unwrap().id, known.id);
    let rui_now = client
        .get_profile(pb::GetProfileRequest { profile_id: rui.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .profile
        .unwrap();
    assert_eq!(rui_now.id, rui.id, "Rui keeps his profile and his cookie");
    assert_eq!(rui_now.identifiers.len(), 2);
}

#[tokio::test]
async fn a_customer_base_is_imported_deduplicating_as_it_goes() {
    let (_server, mut client) = spawn_app().await;
    let record = |ids: Vec<pb::Identifier>, given: &str| pb::ImportProfilesRequest {
        identifiers: ids,
        attributes: Some(pb::ProfileAttributes {
            name: Some(pb::PersonName { given_name: given.into(), ..Default::default() }),
            ..Default::default()
        }),
        acquisition: Some(pb::Acquisition { campaign: "legacy-crm".into(), ..Default::default() }),
        source_key: String::new(),
    };
    let records = vec![
        record(vec![id(IdentifierType::Email, "ana@correo.es")], "Ana"),
        record(vec![id(IdentifierType::Email, "rui@correio.pt")], "Rui"),
        record(vec![id(IdentifierType::Email, "ANA@correo.es"), id(IdentifierType::Phone, "612345678")], "Ana"),
        record(vec![id(IdentifierType::Email, "not-an-email")], "Bad"),
        record(vec![], "Nobody"),
    ];
    let counts = client.import_profiles(futures::stream::iter(records)).await.unwrap().into_inner();
    assert_eq!((counts.created_count, counts.linked_count, counts.review_count, counts.rejected_count), (2, 1, 0, 2));
    let all = client.list_profiles(pb::ListProfilesRequest::default()).await.unwrap().into_inner();
    assert_eq!(all.profiles.len(), 2);
    assert!(all.profiles.iter().all(|p| p.acquisition.as_ref().unwrap().campaign == "legacy-crm"));
}

#[tokio::test]
async fn every_decision_is_stored_with_its_explanation() {
    let (server, mut client) = spawn_app().await;
    let created = client.resolve_identity(person("ana@correo.es", "Ana", "García")).await.unwrap().into_inner();
    let linked =
        client.resolve_identity(resolve(vec![id(IdentifierType::Email, "ana@correo.es")])).await.unwrap().into_inner();
    let pid = created.profile.unwrap().id;
    let store = crm_runtime::db::Store::connect(&server.db().url, 2).await.unwrap();
    let rows = sea_orm::ConnectionTrait::query_all_raw(
        store.conn(),
        store.stmt(
            "SELECT method, explanation FROM match_decisions WHERE profile_id = ? ORDER BY created_at_us",
            vec![pid.into()],
        ),
    )
    .await
    .unwrap();
    let stored: Vec<pb::MatchExplanation> = rows
        .iter()
        .map(|r| {
            use prost::Message;
            pb::MatchExplanation::decode(r.try_get_by_index::<Vec<u8>>(1).unwrap().as_slice()).unwrap()
        })
        .collect();
    assert_eq!(stored, vec![created.explanation.unwrap(), linked.explanation.unwrap()]);
    assert_eq!(stored[1].method, MatchMethod::Deterministic as i32);
}

fn touch(
    given: &str,
    family: &str,
    born: (i32, i32, i32),
    street: &str,
    postcode: &str,
    email: &str,
) -> pb::ResolveIdentityRequest {
    pb::ResolveIdentityRequest {
        identifiers: vec![id(IdentifierType::Email, email)],
        channel: Channel::Store as i32,
        attributes: Some(pb::ProfileAttributes {
            name: Some(pb::PersonName { given_name: given.into(), family_name: family.into(), ..Default::default() }),
            // Year 0: no birth date given.
            birth_date: (born.0 != 0).then_some(Date { year: born.0, month: born.1, day: born.2 }),
            address: Some(pb::PostalAddress {
                lines: vec![street.into()],
                postal_code: postcode.into(),
                locality: "Girona".into(),
                country_code: "ES".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_person_without_a_known_identifier_is_recognised_by_the_evidence() {
    let (_server, mut client) = spawn_app().await;
    let original = client
        .resolve_identity(touch(
            "María José",
            "García López",
            (1985, 3, 12),
            "Carrer Major 12",
            "17001",
            "mj@correu.cat",
        ))
        .await
        .unwrap()
        .into_inner()
        .profile
        .unwrap();
    // The same person, a new email, no accents, a typo in the street.
    let r = client
        .resolve_identity(touch(
            "Maria Jose",
            "Garcia Lopez",
            (1985, 3, 12),
            "Carrer Majr 12",
            "17001",
            "mariajose@feina.cat",
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.created, "linked: {:?}", r.explanation);
    assert_eq!(r.profile.as_ref().unwrap().id, original.id);
    let how = r.explanation.unwrap();
    assert_eq!(how.method, MatchMethod::Probabilistic as i32);
    assert!(how.total_weight > 0.0);
    assert!(how.field_weights.iter().any(|f| f.field.contains("birth") && f.weight > 0.0), "{:?}", how.field_weights);
    assert!(r.confidence > 0.9 && r.confidence <= 1.0);
    assert_eq!(r.profile.unwrap().identifiers.len(), 2, "the new email joined the profile");

    // Someone else with the same common name: another person.
    let other = client
        .resolve_identity(touch(
            "María José",
            "García López",
            (1962, 11, 2),
            "Avinguda Jaume I 80",
            "17003",
            "mjg62@correu.cat",
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(other.created, "{:?}", other.explanation);
    assert!(other.review_item_id.is_empty() || other.profile.as_ref().unwrap().id != original.id);
}

/// [`touch`] with a phone as its only identifier.
fn touch_by_phone(
    given: &str,
    family: &str,
    born: (i32, i32, i32),
    street: &str,
    phone: &str,
) -> pb::ResolveIdentityRequest {
    let mut req = touch(given, family, born, street, "17001", "unused@correu.cat");
    req.identifiers = vec![id(IdentifierType::Phone, phone)];
    req
}

#[tokio::test]
async fn a_shared_landline_is_a_household_while_a_shared_mobile_is_the_person() {
    let (_server, mut client) = spawn_app().await;
    let mut resolve = async |req| client.resolve_identity(req).await.unwrap().into_inner();
    let born = (1970, 1, 1);
    // Twins at one address, sharing the landline: two people.
    let joan = resolve(touch_by_phone("Joan", "Puig Serra", born, "Carrer Major 12", "+34 972 123 456")).await;
    let pere = resolve(touch_by_phone("Pere", "Puig Serra", born, "Carrer Major 12", "+34 972 123 456")).await;
    assert!(pere.created, "{:?}", pere.explanation);
    assert_ne!(pere.profile.unwrap().id, joan.profile.unwrap().id);

    // A given name mistyped beyond recognition, the same birth date and
    // address: a twin too, but for the mobile, which is personal.
    let sara = resolve(touch_by_phone("Sara", "Herrera Castillo", born, "Carrer Nou 3", "+34 613 109 270")).await;
    let zaa = resolve(touch_by_phone("Zaa", "Herrera Castillo", born, "Carrer Nou 3", "+34613109270")).await;
    assert!(!zaa.created, "{:?}", zaa.explanation);
    let sara_id = sara.profile.unwrap().id;
    assert_eq!(zaa.profile.unwrap().id, sara_id);
    assert_eq!(zaa.explanation.unwrap().method, MatchMethod::Deterministic as i32);

    // The same mobile, handed on to someone of another family: not Sara.
    let lucia =
        resolve(touch_by_phone("Lucía", "Martín Ruiz", (1991, 6, 20), "Plaça Catalunya 1", "+34613109270")).await;
    assert_ne!(lucia.profile.unwrap().id, sara_id, "{:?}", lucia.explanation);
}

#[tokio::test]
async fn concurrent_resolves_of_one_new_person_by_evidence_alone_create_one_profile() {
    let (_server, client) = spawn_app().await;
    // No identifier in common: only the evidence tells that it is one person,
    // so each resolve must see the profile and records of the ones before it.
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let req = touch(
                    "Jordi",
                    "Puig Serra",
                    (1979, 6, 21),
                    "Carrer Nou 3",
                    "17004",
                    &format!("jordi{i}@correu.cat"),
                );
                client.resolve_identity(req).await.expect("resolve").into_inner()
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
    assert_eq!((ids.len(), created), (1, 1), "one profile, created once");
}

/// A person and a touchpoint the default model is unsure about (in the
/// review band between its thresholds).
async fn unsure_pair(
    client: &mut IdentificationServiceClient<GrpcChannel>,
) -> (pb::Profile, pb::ResolveIdentityRequest) {
    use crm_identification::{domain::matching, matcher};
    let joan = client
        .resolve_identity(touch("Joan", "Puig Ferrer", (1970, 6, 1), "Carrer Nou 3", "17004", "joan@correu.cat"))
        .await
        .unwrap()
        .into_inner()
        .profile
        .unwrap();
    let model = matching::default_model();
    let stored = matcher::record_of(&joan);
    // A grid of partial agreements; the model's review band holds some.
    let mut variants = Vec::new();
    let mut n = 0;
    for given in ["Joan", "J", "Jon"] {
        for family in ["Puig Ferrer", "Puig", "Ferrer", "Puig Farré"] {
            for born in [(1970, 6, 1), (1970, 6, 0), (1970, 1, 6), (1971, 6, 1), (0, 0, 0)] {
                for (street, postcode) in
                    [("Carrer Nou 3", "17004"), ("", "17004"), ("", ""), ("Plaça Gran 9", "17190")]
                {
                    n += 1;
                    variants.push(touch(given, family, born, street, postcode, &format!("v{n}@x.cat")));
                }
            }
        }
    }
    let unsure = variants
        .into_iter()
        .find(|v| {
            let ids: Vec<_> = v
                .identifiers
                .iter()
                .map(|i| crm_identification::domain::normalize(IdentifierType::Email, "", &i.value, "ES").unwrap())
                .collect();
            let record = matcher::record_of_touchpoint(v.attributes.as_ref().unwrap(), &ids);
            matcher::matchable(&record)
                && !matching::contradicts_person(&record, &stored)
                && model.decide(&model.score(&record, &stored)) == matching::Decision::Review
        })
        .expect("the review band holds one of these variants");
    (joan, unsure)
}

#[tokio::test]
async fn an_uncertain_match_waits_for_an_operator_who_accepts_it() {
    let (_server, mut client) = spawn_app().await;
    let (joan, unsure) = unsure_pair(&mut client).await;
    let r = client.resolve_identity(unsure).await.unwrap().into_inner();
    assert!(r.created && !r.review_item_id.is_empty());
    let items = client.list_review_items(pb::ListReviewItemsRequest::default()).await.unwrap().into_inner().items;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].profile_id, joan.id);
    assert!(!items[0].explanation.as_ref().unwrap().field_weights.is_empty(), "the evidence, field by field");
    let accepted = client
        .decide_review_item(pb::DecideReviewItemRequest {
            review_item_id: r.review_item_id.clone(),
            decision: pb::ReviewDecision::Accept as i32,
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let p = accepted.profile.unwrap();
    assert_eq!(p.id, joan.id);
    assert!(p.merged_ids.contains(&r.profile.unwrap().id));
    let err = client
        .decide_review_item(pb::DecideReviewItemRequest {
            review_item_id: r.review_item_id.clone(),
            decision: pb::ReviewDecision::Reject as i32,
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "decided once");
    assert!(
        client.list_review_items(pb::ListReviewItemsRequest::default()).await.unwrap().into_inner().items.is_empty()
    );
}

#[tokio::test]
async fn a_rejected_candidate_stays_its_own_person() {
    let (_server, mut client) = spawn_app().await;
    let (joan, unsure) = unsure_pair(&mut client).await;
    let r = client.resolve_identity(unsure).await.unwrap().into_inner();
    let candidate = r.profile.unwrap().id;
    let decided = client
        .decide_review_item(pb::DecideReviewItemRequest {
            review_item_id: r.review_item_id.clone(),
            decision: pb::ReviewDecision::Reject as i32,
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(decided.profile.unwrap().id, joan.id);
    let still = client.get_profile(pb::GetProfileRequest { profile_id: candidate.clone() }).await.unwrap().into_inner();
    assert_eq!(still.profile.unwrap().id, candidate);

    let err = client
        .decide_review_item(pb::DecideReviewItemRequest {
            review_item_id: new_id(),
            decision: 1,
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .decide_review_item(pb::DecideReviewItemRequest {
            review_item_id: "x".into(),
            decision: 0,
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(fields(&err), ["decision", "review_item_id"]);
}

#[tokio::test]
async fn the_matcher_is_trained_from_the_stored_profiles_in_versions() {
    // Training is a long operation: operators give it a longer request
    // timeout (CRM_REQUEST_TIMEOUT_MS); it also completes if the caller
    // stops waiting.
    let db = crm_runtime::testing::TestDb::new("identification").await;
    let mut settings = crm_runtime::config::Settings::for_tests(ServiceKind::Identification, db.url.clone());
    settings.request_timeout = std::time::Duration::from_secs(300);
    let _server =
        TestServer::start_with(settings, db, |s, sd| async move { crm_identification::start(&s, sd).await }).await;
    let mut client = IdentificationServiceClient::new(_server.channel());
    let records = generated_imports(250, 7);
    let counts = client.import_profiles(futures::stream::iter(records)).await.unwrap().into_inner();
    assert!(counts.created_count > 200, "{counts:?}");
    let first = client.train_matcher(pb::TrainMatcherRequest::default()).await.unwrap().into_inner();
    assert_eq!(first.matcher_version, 1);
    assert!(first.pair_count > 0 && first.iterations > 0, "{first:?}");
    let second = client.train_matcher(pb::TrainMatcherRequest { max_pairs: 10_000 }).await.unwrap().into_inner();
    assert_eq!(second.matcher_version, 2);
    // Each answer says what was stored: whether resolves use it, what it
    // was fitted on, its prior and its thresholds.
    let stored = common::matcher_versions(&_server).await;
    for (answer, version) in [&first, &second].into_iter().zip(&stored) {
        assert_eq!(answer.matcher_version, version.version);
        // Active when answered; a later version may have taken over since.
        assert_eq!((answer.converged, answer.active), (version.converged, version.converged), "{answer:?}");
        assert_eq!(answer.record_count, version.record_count);
        assert_eq!(answer.match_prior, version.model.lambda);
        assert_eq!((answer.link_threshold, answer.review_threshold), (version.model.upper, version.model.lower));
    }
    assert!(second.active && stored[1].active && !stored[0].active, "the newest converged version is in use");
    assert!(first.record_count >= counts.created_count, "{first:?} {counts:?}");
    assert!(first.match_prior > 0.0 && first.match_prior < 1.0, "{first:?}");
    assert!(first.review_threshold <= first.link_threshold, "{first:?}");
    let err = client.train_matcher(pb::TrainMatcherRequest { max_pairs: -1 }).await.unwrap_err();
    assert_eq!(fields(&err), ["max_pairs"]);
}

/// ImportProfiles records of `originals` generated people with half as many
/// corrupted duplicates (seed `seed`).
fn generated_imports(originals: usize, seed: u64) -> Vec<pb::ImportProfilesRequest> {
    crm_identification::domain::matching::generate(originals, 0.5, seed)
        .into_iter()
        .map(|(_, r)| {
            let (identifiers, attributes) = crm_identification::matcher::touchpoint_of(&r);
            pb::ImportProfilesRequest { identifiers, attributes: Some(attributes), ..Default::default() }
        })
        .collect()
}

#[tokio::test]
async fn the_matcher_is_retrained_on_a_schedule() {
    let db = crm_runtime::testing::TestDb::new("identification").await;
    let mut settings = crm_runtime::config::Settings::for_tests(ServiceKind::Identification, db.url.clone());
    settings.matcher_train_every = Some(std::time::Duration::from_millis(300));
    let server =
        TestServer::start_with(settings, db, |s, sd| async move { crm_identification::start(&s, sd).await }).await;
    let mut client = IdentificationServiceClient::new(server.channel());
    let records = generated_imports(200, 9);
    client.import_profiles(futures::stream::iter(records)).await.unwrap();

    // Nobody calls TrainMatcher: versions appear one after another.
    let store = crm_runtime::db::Store::connect(&server.db().url, 2).await.unwrap();
    let trained = async || -> i64 {
        let row = sea_orm::ConnectionTrait::query_one_raw(
            store.conn(),
            store.stmt("SELECT COUNT(*) FROM matcher_models WHERE pair_count > 0", vec![]),
        )
        .await
        .unwrap()
        .unwrap();
        row.try_get_by_index(0).unwrap()
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while trained().await < 2 {
        assert!(tokio::time::Instant::now() < deadline, "no scheduled training in 60 s");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The next version an operator trains follows the scheduled ones.
    let next = client.train_matcher(pb::TrainMatcherRequest::default()).await.unwrap().into_inner();
    assert!(next.matcher_version >= 3, "{next:?}");
}

/// How many kept records each matcher version was fitted on.
async fn trained_on(server: &TestServer) -> Vec<i64> {
    common::matcher_versions(server).await.into_iter().map(|v| v.record_count).collect()
}

#[tokio::test]
async fn the_matcher_retrains_as_resolves_and_imports_grow_the_base() {
    let db = crm_runtime::testing::TestDb::new("identification").await;
    let mut settings = crm_runtime::config::Settings::for_tests(ServiceKind::Identification, db.url.clone());
    settings.matcher_train_every = Some(std::time::Duration::from_secs(86_400));
    settings.matcher_train_from_records = Some(20);
    let server =
        TestServer::start_with(settings, db, |s, sd| async move { crm_identification::start(&s, sd).await }).await;
    let mut client = IdentificationServiceClient::new(server.channel());
    let until_trained = async |at_least: usize| -> Vec<i64> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let models = trained_on(&server).await;
            if models.len() >= at_least {
                return models;
            }
            assert!(tokio::time::Instant::now() < deadline, "{models:?}: no training on growth in 60 s");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };

    let people: Vec<pb::ResolveIdentityRequest> = generated_imports(40, 5)
        .into_iter()
        .map(|p| pb::ResolveIdentityRequest {
            identifiers: p.identifiers,
            attributes: p.attributes,
            ..Default::default()
        })
        .collect();
    // Below the minimum, nothing trains.
    for p in &people[..15] {
        client.resolve_identity(p.clone()).await.unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(trained_on(&server).await, Vec::<i64>::new());

    // New people resolved one at a time reach it: a version trained on at
    // least that many, in the background.
    for p in &people[15..30] {
        client.resolve_identity(p.clone()).await.unwrap();
    }
    let first = until_trained(1).await;
    assert!(first[0] >= 20, "{first:?}");

    // An import grows the base past twice that: trained again, each
    // version on at least twice the records of the one before.
    client.import_profiles(futures::stream::iter(generated_imports(200, 9))).await.unwrap();
    let models = until_trained(2).await;
    assert!(models.windows(2).all(|w| w[1] >= 2 * w[0]), "{models:?}");
    // Each refits u, the name frequencies and the prior (thresholds
    // calibrated on it), and keeps the m of the model it started from.
    let built_in = crm_identification::domain::matching::default_model();
    let versions = common::matcher_versions(&server).await;
    // Each is a version of its own, the newest the one resolves use.
    assert!(versions.iter().enumerate().all(|(i, v)| v.version == i as i64 + 1 && v.converged), "versions");
    assert!(versions.iter().rev().skip(1).all(|v| !v.active) && versions.last().is_some_and(|v| v.active));
    for common::StoredVersion { model: m, .. } in versions {
        assert!(m.fields.iter().zip(&built_in.fields).all(|(a, b)| a.m == b.m && a.u != b.u));
        assert_ne!(m.frequencies, built_in.frequencies);
        assert_ne!(m.lambda, built_in.lambda);
        use crm_identification::domain::matching::{LINK_PROBABILITY, MIN_UPPER};
        assert!((m.probability(m.upper) - LINK_PROBABILITY).abs() < 1e-9 || m.upper == MIN_UPPER, "{m:?}");
    }
    // The next version an operator trains follows those.
    let next = client.train_matcher(pb::TrainMatcherRequest::default()).await.unwrap().into_inner();
    assert!(next.matcher_version >= 3, "{next:?}");
}

#[tokio::test]
async fn profiles_indexed_before_a_new_key_kind_get_its_keys_at_start() {
    // Arrange: a profile whose keys predate the name-and-town and
    // street-and-name keys.
    let (server, mut client) = spawn_app().await;
    let record = crm_identification::domain::matching::Record {
        given_name: "lucia".into(),
        family_name: "ferrer".into(),
        street: "calle mayor 12".into(),
        postcode: "46001".into(),
        locality: "valencia".into(),
        email: "lucia.ferrer@correu.cat".into(),
        ..Default::default()
    };
    let (identifiers, attributes) = crm_identification::matcher::touchpoint_of(&record);
    let req = pb::ResolveIdentityRequest {
        identifiers,
        attributes: Some(attributes),
        channel: Channel::Web as i32,
        ..Default::default()
    };
    let lucia = client.resolve_identity(req).await.unwrap().into_inner().profile.unwrap();
    let store = crm_runtime::db::Store::connect(&server.db().url, 2).await.unwrap();
    let new_keys = async |store: &crm_runtime::db::Store| {
        let rows = sea_orm::ConnectionTrait::query_all_raw(
            store.conn(),
            store.stmt(
                "SELECT key FROM blocking_keys WHERE profile_id = ? AND (key LIKE 'nl:%' OR key LIKE 'sn:%')",
                vec![lucia.id.clone().into()],
            ),
        )
        .await
        .unwrap();
        rows.len()
    };
    let views = async |store: &crm_runtime::db::Store| {
        let sql = "SELECT COUNT(*) FROM profile_records WHERE profile_id = ?";
        let row = sea_orm::ConnectionTrait::query_one_raw(store.conn(), store.stmt(sql, vec![lucia.id.clone().into()]))
            .await
            .unwrap()
            .unwrap();
        row.try_get_by_index::<i64>(0).unwrap()
    };
    assert_eq!(new_keys(&store).await, 2);
    assert!(views(&store).await > 0);
    // A store from before the new key kinds, and from before records were
    // kept.
    for sql in [
        "DELETE FROM blocking_keys WHERE key LIKE 'nl:%' OR key LIKE 'sn:%'",
        "DELETE FROM profile_records",
        "DELETE FROM feed_cursors WHERE name = 'identification.blocking_key_scheme'",
    ] {
        sea_orm::ConnectionTrait::execute_raw(store.conn(), store.stmt(sql, vec![])).await.unwrap();
    }

    // Act
    let indexed = crm_identification::matcher::backfill(&store).await.unwrap();
    let again = crm_identification::matcher::backfill(&store).await.unwrap();

    // Assert: every live profile once, then nothing more to do.
    assert_eq!(indexed, 1);
    assert_eq!(again, 0);
    assert_eq!(new_keys(&store).await, 2);
    assert!(views(&store).await > 0, "the view is kept again");
}
