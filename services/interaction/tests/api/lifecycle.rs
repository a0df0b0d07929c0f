//! The identity lifecycle (IN-7), against a real identification server:
//! a merge re-keys the merged customer's facts, an unmerge splits them back
//! exactly, an erasure leaves nothing about the customer in the store, and
//! a restart in the middle of the identification feed applies nothing
//! twice.

use std::{collections::BTreeSet, time::Duration};

use crm_proto::identification::v1::{
    self as ipb, IdentifierType, identification_service_client::IdentificationServiceClient,
};
use crm_runtime::{
    config::Settings,
    db::Store,
    feed::FeedEvent,
    server::Shutdown,
    testing::{TestDb, TestServer},
};
use sea_orm::{ConnectionTrait, DatabaseBackend};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

use crate::*;

type Client = InteractionServiceClient<GrpcChannel>;
type Identification = IdentificationServiceClient<GrpcChannel>;

/// A new person in identification; their profile id.
async fn person(ident: &mut Identification, given: &str, family: &str) -> String {
    let email = format!("{}.{}@correo.es", given.to_lowercase(), &new_id()[24..]);
    let r = ident
        .resolve_identity(ipb::ResolveIdentityRequest {
            identifiers: vec![ipb::Identifier {
                r#type: IdentifierType::Email as i32,
                value: email,
                namespace: String::new(),
            }],
            attributes: Some(ipb::ProfileAttributes {
                name: Some(ipb::PersonName {
                    given_name: given.into(),
                    family_name: family.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            channel: Channel::Web as i32,
            ..Default::default()
        })
        .await
        .expect("resolve")
        .into_inner();
    assert!(r.created, "a new person");
    r.profile.expect("profile").id
}

fn text(s: String) -> TraitValue {
    TraitValue { kind: Some(trait_value::Kind::StringValue(s)) }
}

/// Record one fact of every kind for `customer`, each carrying a personal
/// value tagged `private-…-{tag}`, idempotently; returns the order id.
async fn record_facts(client: &mut Client, customer: &str, tag: &str, with_policy: bool) -> String {
    let mut v = visit(customer, 1_700_000_000);
    v.attributes.insert("note".into(), text(format!("private-note-{tag}")));
    v.thread_id = format!("private-thread-{tag}");
    v.request_id = format!("visit-{tag}");
    client.record_interaction(v).await.expect("visit");
    let mut p = purchase(customer, &format!("purchase-{tag}"));
    p.occur_time = Some(prost_types::Timestamp { seconds: 1_700_000_100, nanos: 0 });
    p.order_number = format!("private-order-{tag}");
    let order = client.record_purchase(p).await.expect("purchase").into_inner().order.expect("order").id;
    client
        .record_return(pb::RecordReturnRequest {
            order_id: order.clone(),
            lines: vec![pb::OrderLine { sku: "PEG".into(), quantity: 1, ..Default::default() }],
            occur_time: Some(prost_types::Timestamp { seconds: 1_700_000_200, nanos: 0 }),
            reason: format!("private-reason-{tag}"),
            request_id: format!("return-{tag}"),
            ..Default::default()
        })
        .await
        .expect("return");
    client
        .record_survey_response(pb::RecordSurveyResponseRequest {
            response: Some(pb::SurveyResponse {
                customer_id: customer.to_owned(),
                nps: 9,
                csat: 5,
                ratings: vec![pb::AttributeRating {
                    attribute: format!("private-attribute-{tag}"),
                    importance: 5.0,
                    our_performance: 4.0,
                    competitor_performance: 3.0,
                }],
                occur_time: Some(prost_types::Timestamp { seconds: 1_700_000_300, nanos: 0 }),
                comment: format!("private-comment-{tag}"),
                ..Default::default()
            }),
            request_id: format!("survey-{tag}"),
            channel: Channel::Web as i32,
        })
        .await
        .expect("survey");
    client
        .record_complaint(pb::RecordComplaintRequest {
            complaint: Some(pb::Complaint {
                customer_id: customer.to_owned(),
                category: "delivery".into(),
                open_time: Some(prost_types::Timestamp { seconds: 1_700_000_400, nanos: 0 }),
                description: format!("private-complaint-{tag}"),
                ..Default::default()
            }),
            channel: Channel::Chat as i32,
            request_id: format!("complaint-{tag}"),
        })
        .await
        .expect("complaint");
    client
        .record_defection(pb::RecordDefectionRequest {
            defection: Some(pb::Defection {
                customer_id: customer.to_owned(),
                reason: pb::DefectionReason::Price as i32,
                manageable: true,
                occur_time: Some(prost_types::Timestamp { seconds: 1_700_000_500, nanos: 0 }),
                note: format!("private-defection-{tag}"),
                ..Default::default()
            }),
            request_id: format!("defection-{tag}"),
            ..Default::default()
        })
        .await
        .expect("defection");
    client
        .record_consent(pb::RecordConsentRequest {
            consent: Some(pb::Consent {
                customer_id: customer.to_owned(),
                channel: Channel::Email as i32,
                purpose: pb::Purpose::Marketing as i32,
                state: pb::ConsentState::Granted as i32,
                lawful_basis: pb::LawfulBasis::Consent as i32,
                source: format!("private-source-{tag}"),
                ..Default::default()
            }),
            request_id: format!("consent-{tag}"),
        })
        .await
        .expect("consent");
    if with_policy {
        client
            .update_contact_policy(pb::UpdateContactPolicyRequest {
                policy: Some(pb::ContactPolicy {
                    customer_id: customer.to_owned(),
                    preferred_channel: Channel::Sms as i32,
                    time_zone: "Europe/Lisbon".into(),
                    quiet_start_minute: 22 * 60,
                    quiet_end_minute: 8 * 60,
                    max_contacts_per_week: 2,
                    etag: String::new(),
                }),
                request_id: format!("policy-{tag}"),
            })
            .await
            .expect("policy");
    }
    order
}

/// A customer's whole timeline, newest first.
async fn timeline(client: &mut Client, customer: &str) -> Vec<pb::Interaction> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let r = client
            .list_interactions(pb::ListInteractionsRequest {
                customer_id: customer.to_owned(),
                page_size: 100,
                page_token,
                ..Default::default()
            })
            .await
            .expect("timeline")
            .into_inner();
        all.extend(r.interactions);
        if r.next_page_token.is_empty() {
            return all;
        }
        page_token = r.next_page_token;
    }
}

/// Everything interaction answers about a customer (and its orders).
#[derive(Debug, Clone, PartialEq)]
struct Snapshot {
    timeline: Vec<pb::Interaction>,
    consents: Vec<pb::Consent>,
    /// Without its etag.
    policy: pb::ContactPolicy,
    orders: Vec<pb::GetOrderResponse>,
}

async fn snapshot(client: &mut Client, customer: &str, orders: &[&str]) -> Snapshot {
    let consents = client
        .list_consents(pb::ListConsentsRequest {
            customer_id: customer.to_owned(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .expect("consents")
        .into_inner()
        .consents;
    let mut policy = policy(client, customer).await;
    policy.etag.clear();
    let mut got = Vec::new();
    for o in orders {
        got.push(
            client.get_order(pb::GetOrderRequest { order_id: (*o).to_owned() }).await.expect("order").into_inner(),
        );
    }
    Snapshot { timeline: timeline(client, customer).await, consents, policy, orders: got }
}

async fn policy(client: &mut Client, customer: &str) -> pb::ContactPolicy {
    client
        .get_contact_policy(pb::GetContactPolicyRequest { customer_id: customer.to_owned() })
        .await
        .expect("policy")
        .into_inner()
        .policy
        .expect("policy")
}

/// Wait (at most 30 s) for the first event of the feed that `pred` accepts.
async fn wait_for(client: &mut Client, pred: impl Fn(&pb::InteractionEvent) -> bool) -> pb::InteractionEvent {
    let mut feed = client.subscribe(pb::SubscribeRequest { after_sequence: 0 }).await.expect("feed").into_inner();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(item) = feed.next().await {
            let event = item.expect("event").event.expect("event");
            if pred(&event) {
                return event;
            }
        }
        panic!("the feed ended");
    })
    .await;
    found.expect("the event did not arrive in time")
}

fn rekey(event: &pb::InteractionEvent) -> Option<&pb::CustomerRekeyed> {
    match &event.kind {
        Some(Kind::CustomerRekeyed(r)) => Some(r),
        _ => None,
    }
}

/// Wait until the re-key of `merge_id` for `reason` is in the feed.
async fn rekeyed(client: &mut Client, merge_id: &str, reason: pb::RekeyReason) -> pb::CustomerRekeyed {
    let e = wait_for(client, |e| rekey(e).is_some_and(|r| r.merge_id == merge_id && r.reason == reason as i32)).await;
    rekey(&e).cloned().expect("re-key")
}

async fn erased(client: &mut Client, customer: &str) {
    wait_for(client, |e| matches!(&e.kind, Some(Kind::CustomerErased(x)) if x.customer_id == customer)).await;
}

async fn merge(ident: &mut Identification, surviving: &str, merged: &str) -> String {
    ident
        .merge_profiles(ipb::MergeProfilesRequest {
            surviving_id: surviving.to_owned(),
            merged_id: merged.to_owned(),
            request_id: String::new(),
        })
        .await
        .expect("merge")
        .into_inner()
        .merge_id
}

async fn unmerge(ident: &mut Identification, merge_id: &str) -> i64 {
    ident
        .unmerge_profiles(ipb::UnmergeProfilesRequest { merge_id: merge_id.to_owned(), request_id: String::new() })
        .await
        .expect("unmerge")
        .into_inner()
        .sequence
}

fn ids<'a>(items: impl IntoIterator<Item = &'a pb::Interaction>) -> BTreeSet<String> {
    items.into_iter().map(|i| i.id.clone()).collect()
}

fn sorted(v: &[String]) -> Vec<String> {
    let mut v = v.to_vec();
    v.sort();
    v
}

#[tokio::test]
async fn merge_then_unmerge_gives_back_exactly_what_each_had() {
    let (app, mut client) = spawn_app().await;
    let mut ident = IdentificationServiceClient::new(app.identification.channel());
    let a = person(&mut ident, "Ana", "García").await;
    let b = person(&mut ident, "Bruno", "Costa").await;
    let a_order = record_facts(&mut client, &a, "a", false).await;
    let b_order = record_facts(&mut client, &b, "b", true).await;
    let before_a = snapshot(&mut client, &a, &[&a_order]).await;
    let before_b = snapshot(&mut client, &b, &[&b_order]).await;
    let b_etag = policy(&mut client, &b).await.etag;
    assert_eq!(before_a.timeline.len(), 6);

    let merge_id = merge(&mut ident, &a, &b).await;
    let r = rekeyed(&mut client, &merge_id, pb::RekeyReason::Merge).await;
    assert_eq!((r.from_customer_id.as_str(), r.to_customer_id.as_str()), (b.as_str(), a.as_str()));
    let facts = r.facts.expect("facts");
    assert_eq!(sorted(&facts.interaction_ids), ids(&before_b.timeline).into_iter().collect::<Vec<_>>());
    assert_eq!(facts.order_ids, std::slice::from_ref(&b_order));
    assert_eq!(facts.consent_ids, before_b.consents.iter().map(|c| c.id.clone()).collect::<Vec<_>>());
    assert_eq!(
        (facts.return_ids.len(), facts.survey_response_ids.len(), facts.complaint_ids.len(), facts.defection_ids.len()),
        (1, 1, 1, 1)
    );

    let during = snapshot(&mut client, &a, &[&a_order, &b_order]).await;
    assert_eq!(ids(&during.timeline), ids(before_a.timeline.iter().chain(&before_b.timeline)), "A has both");
    assert!(during.timeline.iter().all(|i| i.customer_id == a));
    assert_eq!(during.consents.len(), 2);
    assert!(during.orders.iter().all(|o| o.order.as_ref().is_some_and(|o| o.customer_id == a)));
    assert_eq!(
        during.policy,
        pb::ContactPolicy { customer_id: a.clone(), ..before_b.policy.clone() },
        "A had no policy: it takes B's"
    );
    assert_eq!(timeline(&mut client, &b).await, during.timeline, "B's id reads its survivor while merged");

    unmerge(&mut ident, &merge_id).await;
    let back = rekeyed(&mut client, &merge_id, pb::RekeyReason::Unmerge).await;
    assert_eq!((back.from_customer_id.as_str(), back.to_customer_id.as_str()), (a.as_str(), b.as_str()));
    assert_eq!(back.facts, Some(facts), "exactly what the merge moved goes back");
    assert_eq!(snapshot(&mut client, &a, &[&a_order]).await, before_a);
    assert_eq!(snapshot(&mut client, &b, &[&b_order]).await, before_b);
    assert_eq!(policy(&mut client, &b).await.etag, b_etag, "B's own policy, as it was");
}

#[tokio::test]
async fn what_arrives_during_a_merge_goes_to_whom_it_was_recorded_for() {
    let (app, mut client) = spawn_app().await;
    let mut ident = IdentificationServiceClient::new(app.identification.channel());
    let a = person(&mut ident, "Carla", "Sousa").await;
    let b = person(&mut ident, "Dario", "Puig").await;
    let a_first = client.record_interaction(visit(&a, 1_700_000_000)).await.expect("visit").into_inner();
    let b_buy = client.record_purchase(purchase(&b, "")).await.expect("purchase").into_inner();
    let b_order = b_buy.order.expect("order").id;
    // Both had a policy: the survivor keeps its own.
    for (who, cap) in [(&a, 1), (&b, 5)] {
        client
            .update_contact_policy(pb::UpdateContactPolicyRequest {
                policy: Some(pb::ContactPolicy {
                    customer_id: who.to_string(),
                    time_zone: "Europe/Madrid".into(),
                    max_contacts_per_week: cap,
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await
            .expect("policy");
    }

    let merge_id = merge(&mut ident, &a, &b).await;
    rekeyed(&mut client, &merge_id, pb::RekeyReason::Merge).await;
    assert_eq!(policy(&mut client, &a).await.max_contacts_per_week, 1, "the survivor's policy is kept");
    assert_eq!(policy(&mut client, &b).await.customer_id, a, "B's id reads the survivor's policy");

    let a_own = client.record_interaction(visit(&a, 1_700_000_500)).await.expect("visit").into_inner();
    let via_alias = client.record_interaction(visit(&b, 1_700_000_600)).await.expect("visit").into_inner();
    let via_alias = via_alias.interaction.expect("interaction");
    assert_eq!(via_alias.customer_id, a, "a write for a merged-away id is recorded on the survivor");
    let ret = client
        .record_return(pb::RecordReturnRequest {
            order_id: b_order.clone(),
            lines: vec![pb::OrderLine { sku: "PEG".into(), quantity: 2, ..Default::default() }],
            ..Default::default()
        })
        .await
        .expect("return")
        .into_inner();
    assert_eq!(ret.order_return.as_ref().map(|r| r.customer_id.as_str()), Some(a.as_str()));

    unmerge(&mut ident, &merge_id).await;
    let back = rekeyed(&mut client, &merge_id, pb::RekeyReason::Unmerge).await.facts.expect("facts");
    let return_interaction = ret.interaction.expect("interaction").id;
    let expected_b =
        BTreeSet::from([b_buy.interaction.expect("interaction").id, via_alias.id.clone(), return_interaction]);
    assert_eq!(back.interaction_ids.iter().cloned().collect::<BTreeSet<_>>(), expected_b);
    assert_eq!(back.return_ids, [ret.order_return.expect("return").id]);

    assert_eq!(ids(&timeline(&mut client, &b).await), expected_b, "the alias write and the return follow B");
    let a_ids =
        BTreeSet::from([a_first.interaction.expect("interaction").id, a_own.interaction.expect("interaction").id]);
    assert_eq!(ids(&timeline(&mut client, &a).await), a_ids, "what A recorded for itself stays");
    let order = client.get_order(pb::GetOrderRequest { order_id: b_order }).await.expect("order").into_inner();
    assert_eq!(order.order.map(|o| o.customer_id), Some(b.clone()));
    assert!(order.returns.iter().all(|r| r.customer_id == b));
    assert_eq!(policy(&mut client, &a).await.max_contacts_per_week, 1);
    assert_eq!(policy(&mut client, &b).await.max_contacts_per_week, 5, "B's policy is back");

    // What B holds names nobody else, even what was written through A.
    let store = Store::connect(&app.interaction.db().url, 2).await.expect("connect");
    for table in ["interactions", "orders", "order_returns"] {
        let sql = format!("SELECT body FROM {table} WHERE customer_id = ?");
        let rows = store.conn().query_all_raw(store.stmt(&sql, vec![b.as_str().into()])).await.expect("bodies");
        assert!(!rows.is_empty());
        for r in rows {
            let bytes: Vec<u8> = r.try_get_by_index(0).expect("body");
            assert!(!contains(&bytes, &a), "a stored {table} record of B names A");
        }
    }
    store.close().await.expect("close");
}

/// The string columns and the binary columns of every table of the store.
async fn columns(store: &Store) -> (Vec<(String, String)>, Vec<(String, String)>) {
    let sql = match store.backend() {
        DatabaseBackend::Postgres => {
            "SELECT table_name::text, column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_schema = 'public'"
        }
        _ => {
            "SELECT m.name, p.name, p.type FROM sqlite_master m JOIN pragma_table_info(m.name) p \
             WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%'"
        }
    };
    let rows = store.conn().query_all_raw(store.stmt(sql, vec![])).await.expect("columns");
    let (mut strings, mut blobs) = (Vec::new(), Vec::new());
    for r in rows {
        let table: String = r.try_get_by_index(0).expect("table");
        let column: String = r.try_get_by_index(1).expect("column");
        let kind = r.try_get_by_index::<String>(2).expect("type").to_lowercase();
        if kind.contains("char") || kind.contains("text") {
            strings.push((table, column));
        } else if kind.contains("blob") || kind.contains("bytea") {
            blobs.push((table, column));
        }
    }
    (strings, blobs)
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn erasure_leaves_nothing_about_the_customer_in_the_store() {
    let (app, mut client) = spawn_app().await;
    let mut ident = IdentificationServiceClient::new(app.identification.channel());
    let a = person(&mut ident, "Elena", "Ruiz").await;
    let b = person(&mut ident, "Fabio", "Lima").await;
    let c = person(&mut ident, "Gina", "Vidal").await;
    let a_order = record_facts(&mut client, &a, "a", true).await;
    record_facts(&mut client, &b, "b", true).await;
    record_facts(&mut client, &c, "c", true).await;
    let c_before = snapshot(&mut client, &c, &[]).await;
    // B is merged into A, then the person is erased: both ids go.
    let merge_id = merge(&mut ident, &a, &b).await;
    rekeyed(&mut client, &merge_id, pb::RekeyReason::Merge).await;
    let kinds_before: Vec<&str> = feed_events(&mut client, 0).await.iter().map(FeedEvent::kind).collect();
    ident
        .erase_profile(ipb::EraseProfileRequest { profile_id: a.clone(), request_id: String::new() })
        .await
        .expect("erase");
    erased(&mut client, &a).await;
    erased(&mut client, &b).await;

    let store = Store::connect(&app.interaction.db().url, 2).await.expect("connect");
    let (strings, blobs) = columns(&store).await;
    assert!(strings.iter().any(|(t, c)| t == "consents" && c == "customer_id"), "the catalogue is read");
    let secrets: Vec<String> = ["a", "b"]
        .iter()
        .flat_map(|tag| {
            ["note", "thread", "order", "reason", "attribute", "comment", "complaint", "defection", "source"]
                .map(|what| format!("private-{what}-{tag}"))
        })
        .collect();
    for (table, column) in &strings {
        if (table.as_str(), column.as_str()) == ("event_log", "stream_key") {
            continue; // the feed's structure: the tombstone id, as identification keeps it
        }
        let mut values: Vec<sea_orm::Value> = vec![a.as_str().into(), b.as_str().into()];
        values.extend(secrets.iter().map(|s| s.as_str().into()));
        let list = vec!["?"; values.len()].join(", ");
        let sql = format!("SELECT COUNT(*) FROM {table} WHERE {column} IN ({list})");
        let n: i64 = store
            .conn()
            .query_one_raw(store.stmt(&sql, values))
            .await
            .expect("count")
            .expect("row")
            .try_get_by_index(0)
            .expect("count");
        assert_eq!(n, 0, "{table}.{column} still holds the erased customer's id or data");
    }
    let mut seen_c = false;
    for (table, column) in &blobs {
        let rows = store
            .conn()
            .query_all_raw(store.stmt(&format!("SELECT {column} FROM {table}"), vec![]))
            .await
            .expect("read");
        for r in rows {
            let Ok(bytes) = r.try_get_by_index::<Vec<u8>>(0) else { continue };
            for secret in &secrets {
                assert!(!contains(&bytes, secret), "{table}.{column} still holds {secret}");
            }
            if table != "event_log" {
                for id in [&a, &b] {
                    assert!(!contains(&bytes, id), "{table}.{column} still holds an erased id");
                }
            }
            seen_c |= contains(&bytes, "private-comment-c");
        }
    }
    assert!(seen_c, "the other customer's facts are untouched (and the scan sees content)");
    let count = |sql: &'static str| {
        let stmt = store.stmt(sql, vec![]);
        let conn = store.conn().clone();
        async move { conn.query_one_raw(stmt).await.expect("count").expect("row").try_get_by_index::<i64>(0).expect("n") }
    };
    assert_eq!(count("SELECT COUNT(*) FROM merge_facts").await, 0);
    assert_eq!(
        count("SELECT COUNT(*) FROM consent_archive").await,
        2,
        "a non-identifying record of each erased consent"
    );
    assert_eq!(count("SELECT COUNT(*) FROM order_lines").await, 2, "only the other customer's order lines");
    store.close().await.expect("close");

    assert_eq!(snapshot(&mut client, &c, &[]).await, c_before);
    let events = feed_events(&mut client, 0).await;
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.sequence, i as i64 + 1, "the feed keeps no holes");
    }
    let kinds_after: Vec<&str> = events.iter().take(kinds_before.len()).map(FeedEvent::kind).collect();
    assert_eq!(kinds_after, kinds_before, "redacted events keep their kind");
    let mut retry = purchase(&a, "purchase-a");
    retry.occur_time = Some(prost_types::Timestamp { seconds: 1_700_000_100, nanos: 0 });
    retry.order_number = "private-order-a".into();
    let again = client.record_purchase(retry).await.expect("retry").into_inner();
    assert_ne!(again.order.map(|o| o.id), Some(a_order), "the stored response was forgotten: a new request");
}

#[tokio::test]
async fn a_restart_in_the_middle_of_the_identification_feed_applies_nothing_twice() {
    let (App { identification, interaction }, mut client) = spawn_app().await;
    let mut ident = IdentificationServiceClient::new(identification.channel());
    let mut people = Vec::new();
    for (given, family) in [("Hugo", "Mora"), ("Irene", "Sala"), ("Joan", "Font"), ("Katia", "Neves")] {
        let p = person(&mut ident, given, family).await;
        client.record_interaction(visit(&p, 1_700_000_000)).await.expect("visit");
        people.push(p);
    }
    let [a, b, c, d] = <[String; 4]>::try_from(people).expect("four");
    let first = merge(&mut ident, &a, &b).await;
    rekeyed(&mut client, &first, pb::RekeyReason::Merge).await;

    let (settings, db) = interaction.stop().await;
    let second = merge(&mut ident, &c, &d).await;
    let head = unmerge(&mut ident, &first).await;
    let interaction =
        TestServer::start_with(settings, db, |s, sd| async move { crm_interaction::start(&s, sd).await }).await;
    let mut client = InteractionServiceClient::new(interaction.channel());
    rekeyed(&mut client, &first, pb::RekeyReason::Unmerge).await;

    let rekeys: Vec<(String, i32)> =
        feed_events(&mut client, 0).await.iter().filter_map(rekey).map(|r| (r.merge_id.clone(), r.reason)).collect();
    assert_eq!(
        rekeys,
        [
            (first.clone(), pb::RekeyReason::Merge as i32),
            (second, pb::RekeyReason::Merge as i32),
            (first, pb::RekeyReason::Unmerge as i32)
        ],
        "each identification event applied once"
    );
    for (who, n) in [(&a, 1), (&b, 1), (&c, 2), (&d, 2)] {
        assert_eq!(timeline(&mut client, who).await.len(), n);
    }
    let store = Store::connect(&interaction.db().url, 2).await.expect("connect");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let cursor = crm_runtime::consumer::load_cursor(store.conn(), crm_interaction::IDENTIFICATION_FEED)
            .await
            .expect("cursor");
        assert!(cursor <= head, "the cursor never passes the identification feed's head");
        if cursor == head {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the cursor does not reach the head");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    store.close().await.expect("close");
    drop(identification);
}

#[tokio::test]
async fn writes_racing_a_merge_all_end_up_with_the_survivor_and_go_back() {
    let (app, mut client) = spawn_app().await;
    let mut ident = IdentificationServiceClient::new(app.identification.channel());
    let a = person(&mut ident, "Lara", "Gil").await;
    let b = person(&mut ident, "Marco", "Reis").await;
    client.record_interaction(visit(&a, 1_700_000_000)).await.expect("visit");
    const WRITERS: i64 = 6;
    const EACH: i64 = 15;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let mut client = client.clone();
            let b = b.clone();
            tokio::spawn(async move {
                for i in 0..EACH {
                    client.record_interaction(visit(&b, 1_700_000_000 + w * 100 + i)).await.expect("visit");
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let merge_id = merge(&mut ident, &a, &b).await;
    for w in writers {
        w.await.expect("writer");
    }
    rekeyed(&mut client, &merge_id, pb::RekeyReason::Merge).await;
    let store = Store::connect(&app.interaction.db().url, 2).await.expect("connect");
    let held_by = |customer: String| {
        let stmt = store.stmt("SELECT COUNT(*) FROM interactions WHERE customer_id = ?", vec![customer.into()]);
        let conn = store.conn().clone();
        async move { conn.query_one_raw(stmt).await.expect("count").expect("row").try_get_by_index::<i64>(0).expect("n") }
    };
    assert_eq!(held_by(b.clone()).await, 0, "nothing is left behind under the merged id");
    assert_eq!(held_by(a.clone()).await, 1 + WRITERS * EACH);

    unmerge(&mut ident, &merge_id).await;
    rekeyed(&mut client, &merge_id, pb::RekeyReason::Unmerge).await;
    assert_eq!(held_by(b.clone()).await, WRITERS * EACH, "every write for B goes back to B");
    assert_eq!(held_by(a.clone()).await, 1);
    store.close().await.expect("close");
}

#[tokio::test]
async fn it_needs_identification_and_serves_only_once_its_feed_is_connected() {
    let db = TestDb::new("interaction").await;
    let mut settings = Settings::for_tests(ServiceKind::Interaction, db.url.clone());
    let err = crm_interaction::start(&settings, Shutdown::new()).await.expect_err("no identification peer");
    assert!(err.to_string().contains("CRM_IDENTIFICATION_ADDR"), "{err}");

    let unused = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    settings.peers.identification = Some(format!("http://{unused}"));
    let shutdown = Shutdown::new();
    let running = crm_interaction::start(&settings, shutdown.clone()).await.expect("start");
    let mut health = HealthClient::new(
        crm_runtime::client::channel(&format!("http://{}", running.local_addr), None).expect("channel"),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = health.check(HealthCheckRequest { service: String::new() }).await.expect("health").into_inner().status;
    assert_eq!(status, ServingStatus::NotServing as i32);
    shutdown.trigger();
}
