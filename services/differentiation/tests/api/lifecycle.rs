//! Merges, unmerges and erasures from the identification feed applied to
//! the value projections.

use std::time::Duration;

use crm_proto::{
    common::v1::{Channel, FeedSequences},
    differentiation::v1 as pb,
    identification::v1::{self as idpb, IdentifierType},
};
use crm_runtime::ids::new_id;

use crate::{App, purchase, spawn_app};

async fn profile(app: &mut App) -> (String, i64) {
    let r = app
        .profiles
        .resolve_identity(idpb::ResolveIdentityRequest {
            identifiers: vec![idpb::Identifier {
                r#type: IdentifierType::Email as i32,
                value: format!("cliente.{}@correo.es", &new_id()[24..]),
                namespace: String::new(),
            }],
            channel: Channel::Web as i32,
            ..Default::default()
        })
        .await
        .expect("resolve")
        .into_inner();
    (r.profile.expect("profile").id, r.sequence)
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
    let (a, _) = profile(&mut app).await;
    let (b, _) = profile(&mut app).await;
    for (customer, day) in [(&a, 0), (&a, 4), (&b, 2)] {
        app.interactions.record_purchase(purchase(customer, day, "EUR", 1000, 400)).await.expect("purchase");
    }
    until_orders(&mut app, &a, 2).await;
    until_orders(&mut app, &b, 1).await;

    let merged = app
        .profiles
        .merge_profiles(idpb::MergeProfilesRequest {
            surviving_id: a.clone(),
            merged_id: b.clone(),
            ..Default::default()
        })
        .await
        .expect("merge")
        .into_inner();
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
