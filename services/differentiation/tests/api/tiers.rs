//! Real and strategic value, cost to serve, referrals, stated needs,
//! value tiers with hysteresis and their change log, the profitability
//! matrix, and erasure of all of it (segment memberships included) — over
//! generated populations.

use std::collections::{BTreeMap, BTreeSet};

use crm_differentiation::{domain::value::Policy, settings::ValueSettings};
use crm_proto::{
    common::v1::{Channel, FeedSequences, TraitValue, trait_value::Kind},
    differentiation::v1::{self as pb, ValueTier},
    identification::v1 as idpb,
    interaction::v1::{self as ipb, InteractionType},
};
use crm_runtime::{error::field_violations, ids::new_id};
use sea_orm::{ConnectionTrait, Database};
use tonic::Code;

use crate::{App, at, lifecycle::person, spawn_app_with};

/// Settings whose first policy is `policy`, recomputing boundaries only
/// when asked (a policy update), so each test controls them.
pub(crate) fn settings(policy: Policy) -> ValueSettings {
    ValueSettings {
        initial_policy: policy,
        recompute_events: 0,
        recompute_interval: std::time::Duration::ZERO,
        ..ValueSettings::default()
    }
}

fn costs(pairs: &[(Channel, i64)]) -> BTreeMap<i32, i64> {
    pairs.iter().map(|(c, v)| (*c as i32, *v)).collect()
}

fn days_ago(days: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds: chrono::Utc::now().timestamp() - days * 86_400, nanos: 0 })
}

/// A purchase of `lines` (sku, category, quantity, unit price, unit cost)
/// in euro, ten days ago.
fn order(customer: &str, lines: &[(&str, &str, i64, i64, i64)]) -> ipb::RecordPurchaseRequest {
    ipb::RecordPurchaseRequest {
        customer_id: customer.to_owned(),
        channel: Channel::Web as i32,
        occur_time: days_ago(10),
        currency_code: "EUR".into(),
        lines: lines
            .iter()
            .map(|(sku, category, quantity, price, cost)| ipb::OrderLine {
                sku: (*sku).into(),
                category: (*category).into(),
                quantity: *quantity,
                unit_price_minor: *price,
                unit_cost_minor: *cost,
            })
            .collect(),
        ..Default::default()
    }
}

/// Record a purchase; returns its order id and sequence.
async fn buy(app: &mut App, req: ipb::RecordPurchaseRequest) -> (String, i64) {
    let r = app.interactions.record_purchase(req).await.expect("purchase").into_inner();
    (r.order.expect("order").id, r.sequence)
}

/// A purchase of one unit with `margin` (price margin + 500, cost 500).
async fn buy_margin(app: &mut App, customer: &str, margin: i64) -> (String, i64) {
    buy(app, order(customer, &[("S", "c", 1, margin + 500, 500)])).await
}

/// Return `quantity` units of `sku` of an order; returns the sequence.
async fn give_back(app: &mut App, order_id: &str, sku: &str, quantity: i64) -> i64 {
    app.interactions
        .record_return(ipb::RecordReturnRequest {
            order_id: order_id.to_owned(),
            lines: vec![ipb::OrderLine { sku: sku.into(), quantity, ..Default::default() }],
            ..Default::default()
        })
        .await
        .expect("return")
        .into_inner()
        .sequence
}

pub(crate) fn text(v: &str) -> TraitValue {
    TraitValue { kind: Some(Kind::StringValue(v.into())) }
}

pub(crate) fn int(v: i64) -> TraitValue {
    TraitValue { kind: Some(Kind::IntValue(v)) }
}

/// Record an interaction; returns its sequence.
pub(crate) async fn contact(
    app: &mut App,
    customer: &str,
    channel: Channel,
    kind: InteractionType,
    attributes: &[(&str, TraitValue)],
) -> i64 {
    app.interactions
        .record_interaction(ipb::RecordInteractionRequest {
            customer_id: customer.to_owned(),
            channel: channel as i32,
            r#type: kind as i32,
            attributes: attributes.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect(),
            ..Default::default()
        })
        .await
        .expect("interaction")
        .into_inner()
        .sequence
}

async fn value(app: &mut App, customer: &str, seq: i64) -> pb::CustomerValue {
    app.values
        .get_customer_value(pb::GetCustomerValueRequest { customer_id: customer.to_owned(), min_sequence: at(seq) })
        .await
        .expect("value")
        .into_inner()
        .value
        .expect("value")
}

fn minor(m: &Option<crm_proto::common::v1::Money>) -> i64 {
    m.as_ref().expect("money").minor_units
}

/// Every customer of `tier`, through every page.
async fn tier_members(app: &mut App, tier: ValueTier, seq: i64) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut token = String::new();
    loop {
        let r = app
            .values
            .list_customer_values(pb::ListCustomerValuesRequest {
                page_size: 3,
                page_token: token,
                tier: tier as i32,
                min_sequence: at(seq),
            })
            .await
            .expect("list")
            .into_inner();
        for v in &r.values {
            assert_eq!(v.tier, tier as i32, "the filter returns only {tier:?}");
            assert!(out.insert(v.customer_id.clone()), "no customer twice");
        }
        if r.next_page_token.is_empty() {
            return out;
        }
        token = r.next_page_token;
    }
}

async fn changes(app: &mut App, customer: &str) -> Vec<pb::TierChange> {
    app.values
        .list_tier_changes(pb::ListTierChangesRequest {
            customer_id: customer.to_owned(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .expect("changes")
        .into_inner()
        .changes
}

fn policy_proto(p: &Policy) -> pb::TierPolicy {
    crm_differentiation::conversions::policy_to_proto(p)
}

async fn update_policy(app: &mut App, p: &Policy, etag: &str) -> pb::TierPolicy {
    app.values
        .update_tier_policy(pb::UpdateTierPolicyRequest {
            policy: Some(policy_proto(p)),
            etag: etag.to_owned(),
            ..Default::default()
        })
        .await
        .expect("update policy")
        .into_inner()
        .policy
        .expect("policy")
}

#[tokio::test]
async fn tiers_follow_the_policy_and_every_change_is_recorded_with_its_reason() {
    // Arrange: nobody is Most Valuable or Most Growable under the first
    // policy; the call centre costs 4.00 a contact, the web nothing.
    let first = Policy {
        most_valuable_share: 0.0,
        most_growable_share: 0.0,
        cost_per_interaction: costs(&[(Channel::CallCentre, 400)]),
        ..Policy::default()
    };
    let mut app = spawn_app_with(settings(first.clone())).await;
    let people: Vec<String> = (0..20).map(|_| new_id()).collect();
    let mut last = 0;
    // Customer i has a margin of (i + 1) × 10.00.
    for (i, c) in people.iter().enumerate() {
        last = last.max(buy_margin(&mut app, c, (i as i64 + 1) * 1000).await.1);
    }
    // Customer 0 costs more to serve than they bring; customer 1 does not.
    for _ in 0..3 {
        last = last.max(contact(&mut app, &people[0], Channel::CallCentre, InteractionType::Inquiry, &[]).await);
    }
    last = last.max(contact(&mut app, &people[1], Channel::CallCentre, InteractionType::Inquiry, &[]).await);
    // Declared spend in a category we do not sell them yet.
    for (i, wallet) in [(19, 90_000), (5, 80_000), (6, 70_000), (7, 60_000), (8, 50_000)] {
        let statement = [
            ("wallet.d", int(wallet)),
            ("need", text("Eco")),
            ("need.gift_wrap", TraitValue { kind: Some(Kind::BoolValue(true)) }),
        ];
        last = last
            .max(contact(&mut app, &people[i], Channel::Web, InteractionType::PreferenceStatement, &statement).await);
    }
    assert_eq!(value(&mut app, &people[0], last).await.tier, ValueTier::BelowZero as i32);
    assert!(tier_members(&mut app, ValueTier::MostValuable, last).await.is_empty());

    // Act: top 10 % by real value, top 20 % by growth potential.
    let current = app.values.get_tier_policy(pb::GetTierPolicyRequest {}).await.expect("get").into_inner();
    let current = current.policy.expect("policy");
    assert_eq!((current.version, current.most_valuable_share), (1, 0.0));
    let second = Policy { most_valuable_share: 0.1, most_growable_share: 0.2, ..first };
    let stored = update_policy(&mut app, &second, &current.etag).await;

    // Assert: tiers follow the policy.
    assert_eq!(stored.version, 2);
    assert_ne!(stored.etag, current.etag);
    let names = |ids: &[usize]| ids.iter().map(|i| people[*i].clone()).collect::<BTreeSet<_>>();
    assert_eq!(tier_members(&mut app, ValueTier::MostValuable, last).await, names(&[19, 18]));
    assert_eq!(tier_members(&mut app, ValueTier::MostGrowable, last).await, names(&[5, 6, 7]), "19 is Most Valuable");
    assert_eq!(tier_members(&mut app, ValueTier::BelowZero, last).await, names(&[0]));
    assert_eq!(tier_members(&mut app, ValueTier::Normal, last).await.len(), 14);

    let top = value(&mut app, &people[19], last).await;
    assert_eq!(
        (minor(&top.real_value), minor(&top.historical_margin), minor(&top.strategic_value)),
        (20_000, 20_000, 90_000)
    );
    assert_eq!(top.needs, ["eco", "gift_wrap"]);
    assert_eq!(top.wallet.len(), 1);
    assert_eq!((top.wallet[0].category.as_str(), minor(&top.wallet[0].growth_potential)), ("d", 90_000));
    assert_eq!(top.tier_policy_version, 2);
    let rfm = top.rfm.expect("rfm");
    assert_eq!(rfm.monetary, 5, "the largest spender is in the top quintile");
    let costly = value(&mut app, &people[0], last).await;
    assert_eq!((minor(&costly.cost_to_serve), minor(&costly.net_value)), (1200, -200));
    let call_centre = costly.channel_use.iter().find(|u| u.channel == Channel::CallCentre as i32).expect("call centre");
    assert_eq!((call_centre.interaction_count, minor(&call_centre.cost_to_serve)), (3, 1200));
    assert!(costly.tier_reason.contains("below zero"), "{}", costly.tier_reason);

    // Highest real value first.
    let page = app
        .values
        .list_customer_values(pb::ListCustomerValuesRequest {
            page_size: 5,
            min_sequence: at(last),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    let order: Vec<&str> = page.values.iter().map(|v| v.customer_id.as_str()).collect();
    assert_eq!(order, people[15..].iter().rev().map(String::as_str).collect::<Vec<_>>());

    // Every change is recorded, newest first, with its reason and policy.
    let c18 = changes(&mut app, &people[18]).await;
    assert_eq!(c18.len(), 2, "{c18:?}");
    assert_eq!(
        (c18[0].from_tier, c18[0].to_tier, c18[0].policy_version),
        (ValueTier::Normal as i32, ValueTier::MostValuable as i32, 2)
    );
    assert!(c18[0].reason.contains("Most Valuable threshold 190.00 EUR"), "{}", c18[0].reason);
    assert_eq!(
        (c18[1].from_tier, c18[1].to_tier, c18[1].policy_version),
        (ValueTier::Unspecified as i32, ValueTier::Normal as i32, 1)
    );
    let c0 = changes(&mut app, &people[0]).await;
    assert_eq!(
        c0.iter().map(|c| c.to_tier).collect::<Vec<_>>(),
        [ValueTier::BelowZero as i32, ValueTier::Normal as i32]
    );
    // All changes, paginated: 20 first tiers, customer 0 to Below Zero, and
    // five under the second policy.
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let r = app
            .values
            .list_tier_changes(pb::ListTierChangesRequest { page_size: 7, page_token: token, ..Default::default() })
            .await
            .expect("page")
            .into_inner();
        all.extend(r.changes);
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    assert_eq!(all.len(), 26);
    let micros = |c: &pb::TierChange| c.change_time.map(|t| t.seconds * 1_000_000 + i64::from(t.nanos / 1000));
    assert!(all.windows(2).all(|w| micros(&w[0]) >= micros(&w[1])), "newest first");
    assert!(all.iter().all(|c| !c.reason.is_empty()));
}

#[tokio::test]
async fn the_boundaries_are_recomputed_in_the_background_after_enough_events() {
    // Arrange: top 10 % Most Valuable, recomputed after every 10 events
    // (never by time). The first event sets the boundaries from a
    // population of one; the later, bigger buyers outrank them at once.
    let policy = Policy {
        most_valuable_share: 0.1,
        most_growable_share: 0.0,
        cost_per_interaction: BTreeMap::new(),
        hysteresis_share: 0.0,
        ..Policy::default()
    };
    let mut app = spawn_app_with(ValueSettings { recompute_events: 10, ..settings(policy) }).await;
    let people: Vec<String> = (0..10).map(|_| new_id()).collect();
    let mut last = 0;
    for (i, c) in people.iter().enumerate() {
        last = last.max(buy_margin(&mut app, c, (i as i64 + 1) * 1000).await.1);
    }
    assert_eq!(value(&mut app, &people[8], last).await.tier, ValueTier::MostValuable as i32, "stale boundaries");

    // Act: nothing more than waiting for the background job.
    // Assert: over all ten, only the top customer is Most Valuable.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (eight, nine) = (value(&mut app, &people[8], last).await, value(&mut app, &people[9], last).await);
        if eight.tier == ValueTier::Normal as i32 {
            assert_eq!(nine.tier, ValueTier::MostValuable as i32, "{}", nine.tier_reason);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not recomputed: {}", eight.tier_reason);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn hysteresis_keeps_a_customer_near_the_boundary_from_flapping() {
    // Arrange: top 10 % Most Valuable with a 10 % margin, nothing costs.
    let policy = Policy {
        most_valuable_share: 0.1,
        most_growable_share: 0.0,
        cost_per_interaction: BTreeMap::new(),
        hysteresis_share: 0.1,
        ..Policy::default()
    };
    let mut app = spawn_app_with(settings(policy.clone())).await;
    let people: Vec<String> = (0..10).map(|_| new_id()).collect();
    let mut last = 0;
    for (i, c) in people.iter().enumerate() {
        last = last.max(buy_margin(&mut app, c, (i as i64 + 1) * 1000).await.1);
    }
    value(&mut app, &people[9], last).await;
    // Boundaries over the whole population: the threshold is 100.00 (the
    // top customer), the margin 10.00.
    let etag = app
        .values
        .get_tier_policy(pb::GetTierPolicyRequest {})
        .await
        .expect("get")
        .into_inner()
        .policy
        .expect("p")
        .etag;
    update_policy(&mut app, &policy, &etag).await;
    let c = people[8].clone();
    assert_eq!(value(&mut app, &c, last).await.tier, ValueTier::Normal as i32);
    let before = changes(&mut app, &c).await.len();

    // Act and assert: 90.00 ↔ 102.00 crosses the threshold but never by
    // the margin — no change.
    for _ in 0..3 {
        let (order_id, seq) = buy(&mut app, order(&c, &[("U", "c", 1, 1700, 500)])).await;
        let v = value(&mut app, &c, seq).await;
        assert_eq!((minor(&v.real_value), v.tier), (10_200, ValueTier::Normal as i32), "{}", v.tier_reason);
        let seq = give_back(&mut app, &order_id, "U", 1).await;
        let v = value(&mut app, &c, seq).await;
        assert_eq!((minor(&v.real_value), v.tier), (9_000, ValueTier::Normal as i32));
    }
    assert_eq!(changes(&mut app, &c).await.len(), before, "no flapping below the boundary");

    // Beyond the boundary by the margin: Most Valuable.
    let (big, seq) = buy(&mut app, order(&c, &[("B", "c", 1, 2700, 500)])).await;
    let v = value(&mut app, &c, seq).await;
    assert_eq!((minor(&v.real_value), v.tier), (11_200, ValueTier::MostValuable as i32));
    // Back down to the threshold − margin and up again: kept.
    let seq = give_back(&mut app, &big, "B", 1).await;
    let v = value(&mut app, &c, seq).await;
    assert_eq!((minor(&v.real_value), v.tier), (9_000, ValueTier::MostValuable as i32));
    assert!(v.tier_reason.starts_with("kept Most Valuable"), "{}", v.tier_reason);
    let (_, seq) = buy(&mut app, order(&c, &[("U", "c", 1, 1700, 500)])).await;
    assert_eq!(value(&mut app, &c, seq).await.tier, ValueTier::MostValuable as i32);
    let (_, seq) = buy(&mut app, order(&c, &[("L", "c", 1, 0, 800)])).await;
    assert_eq!(value(&mut app, &c, seq).await.tier, ValueTier::MostValuable as i32, "94.00 is within the margin");
    // Below threshold − margin: Normal again.
    let (_, seq) = buy(&mut app, order(&c, &[("L", "c", 1, 0, 500)])).await;
    let v = value(&mut app, &c, seq).await;
    assert_eq!((minor(&v.real_value), v.tier), (8_900, ValueTier::Normal as i32));

    let after = changes(&mut app, &c).await;
    assert_eq!(after.len(), before + 2, "exactly one change up and one down: {after:?}");
    assert_eq!((after[0].from_tier, after[0].to_tier), (ValueTier::MostValuable as i32, ValueTier::Normal as i32));
    assert_eq!((after[1].from_tier, after[1].to_tier), (ValueTier::Normal as i32, ValueTier::MostValuable as i32));
}

#[tokio::test]
async fn referral_value_is_credited_to_the_first_referrer() {
    let policy = Policy { cost_per_interaction: BTreeMap::new(), ..Policy::default() };
    let mut app = spawn_app_with(settings(policy)).await;
    let (referred, _) = person(&mut app, &[]).await;
    let (referrer, other) = (new_id(), new_id());
    let referral = |id: &str| [(crm_differentiation::domain::value::REFERRED_CUSTOMER_ATTRIBUTE, text(id))];
    contact(&mut app, &referrer, Channel::Web, InteractionType::Referral, &referral(&referred)).await;
    contact(&mut app, &other, Channel::Web, InteractionType::Referral, &referral(&referred)).await;
    contact(&mut app, &referrer, Channel::Web, InteractionType::Referral, &referral(&referrer)).await;
    let (order_id, seq) = buy(&mut app, order(&referred, &[("S", "c", 2, 3000, 500)])).await;

    let v = value(&mut app, &referrer, seq).await;
    assert_eq!((minor(&v.referral_value), minor(&v.real_value), v.referred_customer_count), (5000, 5000, 1));
    let v = value(&mut app, &other, seq).await;
    assert_eq!((minor(&v.referral_value), v.referred_customer_count), (0, 0), "the first referral takes the credit");

    // A return reduces the credit.
    let seq = give_back(&mut app, &order_id, "S", 1).await;
    assert_eq!(minor(&value(&mut app, &referrer, seq).await.referral_value), 2500);

    // Erasing the referred customer removes the credit.
    let erased = app
        .profiles
        .erase_profile(idpb::EraseProfileRequest { profile_id: referred.clone(), ..Default::default() })
        .await
        .expect("erase")
        .into_inner();
    let v = app
        .values
        .get_customer_value(pb::GetCustomerValueRequest {
            customer_id: referrer.clone(),
            min_sequence: Some(FeedSequences { identification_sequence: erased.sequence, interaction_sequence: seq }),
        })
        .await
        .expect("value")
        .into_inner()
        .value
        .expect("value");
    assert_eq!((minor(&v.referral_value), v.referred_customer_count), (0, 0));
}

/// Rows about `customer` in each table of the value projections.
async fn rows_about(url: &str, customer: &str) -> BTreeMap<&'static str, i64> {
    let db = Database::connect(url.to_owned()).await.expect("connect");
    let mut out = BTreeMap::new();
    for (table, condition) in [
        ("customer_referrals", "customer_id = ? OR referred_id = ?"),
        ("customer_needs", "customer_id = ? OR customer_id = ?"),
        ("customer_wallets", "customer_id = ? OR customer_id = ?"),
        ("customer_traits", "customer_id = ? OR customer_id = ?"),
        ("customer_values", "customer_id = ? OR customer_id = ?"),
        ("tier_changes", "customer_id = ? OR customer_id = ?"),
        ("profile_aliases", "alias_id = ? OR profile_id = ?"),
        ("customer_interactions", "customer_id = ? OR customer_id = ?"),
        ("orders", "customer_id = ? OR customer_id = ?"),
        ("segment_members", "customer_id = ? OR customer_id = ?"),
    ] {
        let n: i64 = db
            .query_one_raw(crm_runtime::db::stmt(
                db.get_database_backend(),
                &format!("SELECT COUNT(*) FROM {table} WHERE {condition}"),
                vec![customer.into(), customer.into()],
            ))
            .await
            .expect("count")
            .expect("row")
            .try_get_by_index(0)
            .expect("n");
        out.insert(table, n);
    }
    let _ = db.close().await;
    out
}

#[tokio::test]
async fn erasure_removes_the_customer_from_every_value_projection() {
    // Arrange: a customer with traits, purchases, needs, a wallet, a
    // referral they made and one that names them, and a tier history.
    let mut app = spawn_app_with(settings(Policy::default())).await;
    let (erased, profile_seq) = person(&mut app, &[("segment", text("gold"))]).await;
    let (referrer, friend) = (new_id(), new_id());
    buy_margin(&mut app, &erased, 4000).await;
    contact(
        &mut app,
        &erased,
        Channel::Email,
        InteractionType::PreferenceStatement,
        &[("need", text("delivery")), ("wallet.c", int(20_000))],
    )
    .await;
    contact(&mut app, &erased, Channel::Web, InteractionType::Referral, &[("referred_customer_id", text(&friend))])
        .await;
    buy_margin(&mut app, &friend, 700).await;
    let seq = contact(
        &mut app,
        &referrer,
        Channel::Web,
        InteractionType::Referral,
        &[("referred_customer_id", text(&erased))],
    )
    .await;
    let v = app
        .values
        .get_customer_value(pb::GetCustomerValueRequest {
            customer_id: erased.clone(),
            min_sequence: Some(FeedSequences { identification_sequence: profile_seq, interaction_sequence: seq }),
        })
        .await
        .expect("value")
        .into_inner()
        .value
        .expect("value");
    assert_eq!(v.traits.get("segment"), Some(&text("gold")));
    assert_eq!(v.needs, ["delivery"]);
    assert_eq!((minor(&v.referral_value), minor(&v.strategic_value)), (700, 20_000 - 4500));
    assert_eq!(minor(&value(&mut app, &referrer, seq).await.referral_value), 4000);
    let segment = app
        .values
        .create_segment(pb::CreateSegmentRequest {
            segment: Some(pb::Segment {
                display_name: "Gold customers who want delivery".into(),
                expression: r#"traits.segment == "gold" && "delivery" in needs"#.into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("segment")
        .into_inner()
        .segment
        .expect("segment");
    assert_eq!(segment.member_count, 1);
    let before = rows_about(app.differentiation_store(), &erased).await;
    assert!(before.iter().filter(|(t, _)| **t != "profile_aliases").all(|(_, n)| *n > 0), "{before:?}");

    // Act.
    let r = app
        .profiles
        .erase_profile(idpb::EraseProfileRequest { profile_id: erased.clone(), ..Default::default() })
        .await
        .expect("erase")
        .into_inner();
    let min = Some(FeedSequences { identification_sequence: r.sequence, interaction_sequence: seq });
    let v = app
        .values
        .get_customer_value(pb::GetCustomerValueRequest { customer_id: referrer.clone(), min_sequence: min })
        .await
        .expect("value")
        .into_inner()
        .value
        .expect("value");

    // Assert: nothing about them is left in the store, and the referrer
    // lost the credit.
    assert_eq!(minor(&v.referral_value), 0);
    let after = rows_about(app.differentiation_store(), &erased).await;
    assert!(after.values().all(|n| *n == 0), "{after:?}");
    let members = app
        .values
        .list_segment_members(pb::ListSegmentMembersRequest { segment_id: segment.id, ..Default::default() })
        .await
        .expect("members")
        .into_inner();
    assert_eq!((members.customer_ids.len(), members.total_count), (0, 0));
    let friend_value = value(&mut app, &friend, seq).await;
    assert_eq!(minor(&friend_value.real_value), 700, "the customers they referred keep their own value");
}

#[tokio::test]
async fn the_profitability_matrix_ranks_customers_net_of_returns() {
    let mut app = spawn_app_with(settings(Policy::default())).await;
    let (a, b, c) = (new_id(), new_id(), new_id());
    let (order_a, _) = buy(&mut app, order(&a, &[("s1", "books", 2, 1000, 600), ("s2", "music", 1, 3000, 1000)])).await;
    buy(&mut app, order(&b, &[("s3", "books", 1, 500, 900)])).await;
    buy(&mut app, order(&c, &[("s4", "music", 1, 10_000, 2000)])).await;
    let seq = give_back(&mut app, &order_a, "s1", 1).await;

    let page = |size: i32, token: String, least: bool, ids: Vec<String>| pb::GetProfitabilityMatrixRequest {
        customer_ids: ids,
        page_size: size,
        page_token: token,
        min_sequence: at(seq),
        least_profitable_first: least,
        currency_code: String::new(),
    };
    let first =
        app.values.get_profitability_matrix(page(2, String::new(), false, vec![])).await.expect("m").into_inner();
    let rows: Vec<(&str, i64)> = first.customers.iter().map(|r| (r.customer_id.as_str(), minor(&r.margin))).collect();
    assert_eq!(rows, [(c.as_str(), 8000), (a.as_str(), 2400)]);
    let cells: Vec<(&str, &str, i64)> =
        first.cells.iter().map(|x| (x.customer_id.as_str(), x.category.as_str(), minor(&x.margin))).collect();
    assert_eq!(cells, [(c.as_str(), "music", 8000), (a.as_str(), "books", 400), (a.as_str(), "music", 2000)]);
    let second = app
        .values
        .get_profitability_matrix(page(2, first.next_page_token, false, vec![]))
        .await
        .expect("m")
        .into_inner();
    assert_eq!(
        second.customers.iter().map(|r| (r.customer_id.clone(), minor(&r.margin))).collect::<Vec<_>>(),
        [(b.clone(), -400)]
    );
    assert!(second.next_page_token.is_empty());
    let least =
        app.values.get_profitability_matrix(page(1, String::new(), true, vec![])).await.expect("m").into_inner();
    assert_eq!(least.customers[0].customer_id, b);
    let only = app.values.get_profitability_matrix(page(10, String::new(), false, vec![a.clone()])).await.expect("m");
    assert_eq!(
        only.into_inner().customers.iter().map(|r| r.customer_id.clone()).collect::<Vec<_>>(),
        std::slice::from_ref(&a)
    );
    let usd = app
        .values
        .get_profitability_matrix(pb::GetProfitabilityMatrixRequest {
            currency_code: "USD".into(),
            ..page(10, String::new(), false, vec![])
        })
        .await
        .expect("usd")
        .into_inner();
    assert!(usd.customers.is_empty() && usd.cells.is_empty());

    let err = app
        .values
        .get_profitability_matrix(pb::GetProfitabilityMatrixRequest {
            customer_ids: vec![a.clone(), "x".into()],
            currency_code: "usd".into(),
            page_size: -1,
            ..Default::default()
        })
        .await
        .expect_err("bad");
    assert_eq!(
        field_violations(&err).into_iter().map(|(f, _)| f).collect::<Vec<_>>(),
        ["customer_ids[1]", "currency_code", "page_size"]
    );
}

#[tokio::test]
async fn policy_updates_are_validated_checked_and_idempotent() {
    let mut app = spawn_app_with(settings(Policy::default())).await;
    let current =
        app.values.get_tier_policy(pb::GetTierPolicyRequest {}).await.expect("get").into_inner().policy.expect("p");
    assert_eq!(current.cost_per_interaction_minor.get("call_centre"), Some(&400));

    let err = app.values.update_tier_policy(pb::UpdateTierPolicyRequest::default()).await.expect_err("no policy");
    assert_eq!(field_violations(&err)[0].0, "policy");
    let bad = pb::TierPolicy {
        most_valuable_share: 2.0,
        cost_per_interaction_minor: [("pigeon".to_owned(), 5)].into(),
        ..current.clone()
    };
    let err = app
        .values
        .update_tier_policy(pb::UpdateTierPolicyRequest { policy: Some(bad), ..Default::default() })
        .await
        .expect_err("bad policy");
    assert_eq!(
        field_violations(&err).into_iter().map(|(f, _)| f).collect::<Vec<_>>(),
        ["policy.most_valuable_share", "policy.cost_per_interaction_minor[pigeon]"]
    );

    let req = pb::UpdateTierPolicyRequest {
        policy: Some(pb::TierPolicy { most_valuable_share: 0.05, ..current.clone() }),
        request_id: "policy-5pc".into(),
        etag: current.etag.clone(),
    };
    let first = app.values.update_tier_policy(req.clone()).await.expect("update").into_inner().policy.expect("p");
    let again = app.values.update_tier_policy(req.clone()).await.expect("retry").into_inner().policy.expect("p");
    assert_eq!(first, again, "a retry returns the first result");
    let now =
        app.values.get_tier_policy(pb::GetTierPolicyRequest {}).await.expect("get").into_inner().policy.expect("p");
    assert_eq!((now.version, now.most_valuable_share), (2, 0.05), "and stores nothing twice");
    let err = app
        .values
        .update_tier_policy(pb::UpdateTierPolicyRequest {
            policy: Some(pb::TierPolicy { most_valuable_share: 0.5, ..current.clone() }),
            ..req
        })
        .await
        .expect_err("key reused");
    assert_eq!(field_violations(&err)[0].0, "request_id");
    let err = app
        .values
        .update_tier_policy(pb::UpdateTierPolicyRequest {
            policy: Some(current.clone()),
            etag: current.etag.clone(),
            ..Default::default()
        })
        .await
        .expect_err("stale etag");
    assert_eq!(err.code(), Code::FailedPrecondition);

    let err = app
        .values
        .list_tier_changes(pb::ListTierChangesRequest {
            customer_id: "x".into(),
            page_size: -2,
            page_token: "nope".into(),
            ..Default::default()
        })
        .await
        .expect_err("bad changes");
    assert_eq!(
        field_violations(&err).into_iter().map(|(f, _)| f).collect::<Vec<_>>(),
        ["customer_id", "page_size", "page_token"]
    );
    let err = app
        .values
        .list_customer_values(pb::ListCustomerValuesRequest { tier: 42, ..Default::default() })
        .await
        .expect_err("bad tier");
    assert_eq!(field_violations(&err)[0].0, "tier");
}
