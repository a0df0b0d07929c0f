//! The periodic refit of the value model (DF-2): versions appear without
//! anyone calling FitValueModel, and the active one scores the population.

use std::time::Duration;

use crm_differentiation::settings::ValueSettings;
use crm_proto::differentiation::v1 as pb;
use crm_runtime::ids::new_id;
use tonic::Code;

use crate::{
    at,
    defections::{Lcg, buy_for_a_while},
    spawn_app_with,
};

async fn model(app: &mut crate::App, version: i64) -> Option<pb::ValueModel> {
    match app.values.get_value_model(pb::GetValueModelRequest { version }).await {
        Ok(r) => r.into_inner().model,
        Err(e) if e.code() == Code::NotFound => None,
        Err(e) => panic!("get model: {e:?}"),
    }
}

#[tokio::test]
async fn the_value_model_is_refitted_on_a_schedule() {
    // Arrange: a refit every two seconds over a growing purchase history.
    let mut app =
        spawn_app_with(ValueSettings { refit_interval: Duration::from_secs(2), ..ValueSettings::default() }).await;
    let customers: Vec<String> = (0..80).map(|_| new_id()).collect();
    let now = chrono::Utc::now().timestamp();
    let (bought, last) = buy_for_a_while(&mut app, &customers, &mut Lcg(7), now).await;

    // Act: nobody calls FitValueModel.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let waited = async |app: &mut crate::App, version: i64, what: &str| -> pb::ValueModel {
        loop {
            if let Some(m) = model(app, version).await.filter(|m| m.customer_count == bought.len() as i64) {
                return m;
            }
            assert!(tokio::time::Instant::now() < deadline, "no scheduled refit {what} within the deadline");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let active = waited(&mut app, 0, "over the whole history").await;
    let next = waited(&mut app, active.version + 1, "after it").await;

    // Assert: a converged model over everyone became active, and the next
    // refit follows it in the same currency and valuation.
    assert!(active.converged && active.active, "{active:?}");
    assert_eq!((active.currency_code.as_str(), active.horizon_days), ("EUR", 365));
    assert!(next.converged, "{next:?}");
    assert_eq!((next.currency_code.as_str(), next.horizon_days), ("EUR", 365));
    let value = app
        .values
        .get_customer_value(pb::GetCustomerValueRequest { customer_id: customers[0].clone(), min_sequence: at(last) })
        .await
        .expect("value")
        .into_inner()
        .value
        .expect("value");
    assert!(value.lifetime_value.is_some_and(|l| l.model_version >= active.version), "scored by a refitted model");
}
