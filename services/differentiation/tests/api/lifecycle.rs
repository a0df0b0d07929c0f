//! Merges, unmerges and erasures from the identification feed applied to
//! the value projections.

use std::time::Duration;

use crm_proto::{
    common::v1::{Channel, FeedSequences, TraitValue},
    differentiation::v1 as pb,
    identification::v1::{self as idpb, IdentifierType},
};
use crm_runtime::ids::new_id;

use crate::{App, purchase, spawn_app};

/// A new person known to identification, with `traits`: their id and the
/// sequence of the profile event.
pub(crate) async fn person(app: &mut App, traits: &[(&str, TraitValue)]) -> (String, i64) {
    let r = app
        .profiles
        .resolve_identity(idpb::ResolveIdentityRequest {
            identifiers: vec![idpb::Identifier {
                r#type: IdentifierType::Email as i32,
                value: format!("persona.{}@correo.es", &new_id()[24..]),
                namespace: String::new(),
            }],
            attributes: Some(idpb::ProfileAttributes {
                traits: traits.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect(),
                ..Default::default()
            }),
            channel: Channel::Web as i32,
            ..Default::default()
        })
        .await
        .expect("resolve")
        .into_inner();
    (r.profile.expect("profile").id, r.sequence)
}

/// Merge `merged` into `surviving` through identification.
pub(crate) async fn merge(app: &mut App, surviving: &str, merged: &str) -> idpb::MergeProfilesResponse {
    app.profiles
        .merge_profiles(idpb::MergeProfilesRequest {
            surviving_id: surviving.to_owned(),
            merged_id: merged.to_owned(),
            ..Default::default()
        })
        .await
        .expect("merge")
        .into_inner()
}

async fn summary(app: &mut App, customer: &str, min: Option<FeedSequences>) -> pb::PurchaseSummary {
    app.values
        .get_customer_value(pb::GetCustomerValueRequest { customer_id: customer.to_owned(), min_sequence: min })
        .await
        .expect("value")
        .into_inner()
        .value
        .expect("value")
        .summary
        .expect("summary")
}

/// Poll until `customer` has `orders` orders (a re-key reaches this
/// projection through interaction's feed, whose position the caller of a
/// merge does not learn).
async fn until_orders(app: &mut App, customer: &str, orders: i64) -> pb::PurchaseSummary {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let s = summary(app, customer, None).await;
        if s.order_count == orders {
            return s;
        }
        assert!(tokio::time::Instant::now() < deadline, "{customer} has {} orders, expected {orders}", s.order_count);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn listed(app: &mut App, customer: &str) -> bool {
    app.values
        .list_customer_values(pb::ListCustomerValuesRequest { page_size: 1000, ..Default::default() })
        .await
        .expect("list")
        .into_inner()
        .values
        .iter()
        .any(|v| v.customer_id == customer)
}

#[tokio::test]
async fn merges_move_value_unmerges_split_it_back_and_erasure_removes_everything() {
    let mut app = spawn_app().await;
    let (a, _) = person(&mut app, &[]).await;
    let (b, _) = person(&mut app, &[]).await;
    for (customer, day) in [(&a, 0), (&a, 4), (&b, 2)] {
        app.interactions.record_purchase(purchase(customer, day, "EUR", 1000, 400)).await.expect("purchase");
    }
    until_orders(&mut app, &a, 2).await;
    until_orders(&mut app, &b, 1).await;

    let merged = merge(&mut app, &a, &b).await;
    let s = until_orders(&mut app, &a, 3).await;
    assert_eq!((s.transaction_count, s.frequency), (3, 2));
    assert_eq!(s.totals[0].margin_minor, 1800);
    assert_eq!(summary(&mut app, &b, None).await.order_count, 0, "the merged id holds nothing");
    assert!(!listed(&mut app, &b).await);

    app.profiles
        .unmerge_profiles(idpb::UnmergeProfilesRequest { merge_id: merged.merge_id, ..Default::default() })
        .await
        .expect("unmerge");
    until_orders(&mut app, &a, 2).await;
    let s = until_orders(&mut app, &b, 1).await;
    assert_eq!(s.totals[0].margin_minor, 600);

    let erased = app
        .profiles
        .erase_profile(idpb::EraseProfileRequest { profile_id: a.clone(), ..Default::default() })
        .await
        .expect("erase")
        .into_inner();
    // Read at the erasure's identification position: gone at once.
    let at = Some(FeedSequences { identification_sequence: erased.sequence, interaction_sequence: 0 });
    let r = app
        .values
        .get_customer_value(pb::GetCustomerValueRequest { customer_id: a.clone(), min_sequence: at })
        .await
        .expect("value")
        .into_inner();
    assert!(r.as_of_sequence.expect("as of").identification_sequence >= erased.sequence);
    let s = r.value.expect("value").summary.expect("summary");
    assert_eq!((s.order_count, s.interaction_count, s.totals.len()), (0, 0, 0));
    assert!(!listed(&mut app, &a).await);
    assert!(listed(&mut app, &b).await, "the other customer is untouched");
}

/// Poll `customer`'s value until `done` holds (re-keys reach this
/// projection through interaction's feed, whose position is not known).
async fn until(app: &mut App, customer: &str, done: impl Fn(&pb::CustomerValue) -> bool) -> pb::CustomerValue {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let v = app
            .values
            .get_customer_value(pb::GetCustomerValueRequest { customer_id: customer.to_owned(), min_sequence: None })
            .await
            .expect("value")
            .into_inner()
            .value
            .expect("value");
        if done(&v) {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "{customer}: {v:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn minor(m: &Option<crm_proto::common::v1::Money>) -> i64 {
    m.as_ref().map_or(0, |m| m.minor_units)
}

#[tokio::test]
async fn needs_and_referrals_follow_merges_and_unmerges() {
    use crm_proto::{
        common::v1::{TraitValue, trait_value::Kind},
        interaction::v1::{self as ipb, InteractionType},
    };
    let mut app = spawn_app().await;
    let (a, _) = person(&mut app, &[]).await;
    let (b, _) = person(&mut app, &[]).await;
    let (friend, fan) = (new_id(), new_id());
    let text = |v: &str| TraitValue { kind: Some(Kind::StringValue(v.into())) };
    let say = |customer: &str, kind: InteractionType, key: &str, v: TraitValue| ipb::RecordInteractionRequest {
        customer_id: customer.to_owned(),
        channel: Channel::Web as i32,
        r#type: kind as i32,
        attributes: [(key.to_owned(), v)].into(),
        ..Default::default()
    };
    // b states a need and referred a friend; a fan referred b.
    for req in [
        say(&b, InteractionType::PreferenceStatement, "need", text("eco")),
        say(&b, InteractionType::Referral, "referred_customer_id", text(&friend)),
        say(&fan, InteractionType::Referral, "referred_customer_id", text(&b)),
    ] {
        app.interactions.record_interaction(req).await.expect("interaction");
    }
    for (customer, margin) in [(&friend, 800), (&a, 1000), (&b, 300)] {
        app.interactions.record_purchase(purchase(customer, 1, "EUR", margin + 100, 100)).await.expect("purchase");
    }
    until(&mut app, &b, |v| minor(&v.referral_value) == 800 && v.needs == ["eco"]).await;
    until(&mut app, &fan, |v| minor(&v.referral_value) == 300).await;

    let merged = merge(&mut app, &a, &b).await;
    let v = until(&mut app, &a, |v| minor(&v.referral_value) == 800).await;
    assert_eq!((v.needs.as_slice(), minor(&v.historical_margin)), (["eco".to_owned()].as_slice(), 1300));
    // The fan referred b, who is now a: credited with a's whole margin.
    until(&mut app, &fan, |v| minor(&v.referral_value) == 1300).await;
    let v = until(&mut app, &b, |v| v.needs.is_empty()).await;
    assert_eq!(minor(&v.referral_value), 0, "the merged id holds nothing");

    app.profiles
        .unmerge_profiles(idpb::UnmergeProfilesRequest { merge_id: merged.merge_id, ..Default::default() })
        .await
        .expect("unmerge");
    until(&mut app, &b, |v| minor(&v.referral_value) == 800 && v.needs == ["eco"]).await;
    let v = until(&mut app, &a, |v| minor(&v.referral_value) == 0).await;
    assert!(v.needs.is_empty());
    until(&mut app, &fan, |v| minor(&v.referral_value) == 300).await;
}
