//! The differentiation store: the purchase-summary projection of the
//! interaction feed (applied inside the consumer's cursor transaction) and
//! its reads.

use chrono::{DateTime, Utc};
use crm_proto::{
    differentiation::v1 as pb,
    interaction::v1::{InteractionEvent, interaction_event::Kind},
};
use crm_runtime::{
    consumer::Projection,
    db::{Store, WriteTxn},
    error::RuntimeError,
    time,
};
use futures::future::BoxFuture;
use sea_orm::{ConnectionTrait, DbErr};

use crate::domain::{self, Counts};

/// Applies interaction events to the purchase summary.
#[derive(Debug, Default, Clone, Copy)]
pub struct PurchaseSummaryProjection;

impl Projection<InteractionEvent> for PurchaseSummaryProjection {
    fn apply<'a>(
        &'a self,
        tx: &'a mut WriteTxn,
        event: &'a InteractionEvent,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            let now_us = time::now().timestamp_micros();
            match &event.kind {
                Some(Kind::InteractionRecorded(_)) => {
                    touch_customer(tx, &event.customer_id, now_us).await?;
                }
                Some(Kind::PurchaseRecorded(p)) => {
                    let Some(order) = &p.order else {
                        return Err(RuntimeError::Internal("purchase event without order".into()));
                    };
                    let at_us = order
                        .occur_time
                        .as_ref()
                        .and_then(time::from_timestamp)
                        .map(|t| t.timestamp_micros())
                        .unwrap_or(now_us);
                    touch_customer(tx, &event.customer_id, now_us).await?;
                    apply_purchase(tx, &event.customer_id, order, at_us, now_us).await?;
                }
                // Facts that later projections use; nothing to summarise yet.
                Some(_) | None => {}
            }
            Ok(())
        })
    }
}

/// Count one interaction, creating the customer's row on first sight.
async fn touch_customer(tx: &WriteTxn, customer: &str, now_us: i64) -> Result<(), DbErr> {
    tx.execute_raw(tx.stmt(
        "INSERT INTO customer_summaries (customer_id, interaction_count, order_count, transaction_count, first_purchase_us, last_purchase_us, updated_at_us) \
         VALUES (?, 1, 0, 0, NULL, NULL, ?) \
         ON CONFLICT (customer_id) DO UPDATE SET interaction_count = customer_summaries.interaction_count + 1, updated_at_us = excluded.updated_at_us",
        vec![customer.into(), now_us.into()],
    ))
    .await?;
    Ok(())
}

async fn apply_purchase(
    tx: &WriteTxn,
    customer: &str,
    order: &crm_proto::interaction::v1::Order,
    at_us: i64,
    now_us: i64,
) -> Result<(), DbErr> {
    let new_day = tx
        .execute_raw(tx.stmt(
            "INSERT INTO purchase_days (customer_id, day) VALUES (?, ?) ON CONFLICT (customer_id, day) DO NOTHING",
            vec![customer.into(), domain::day_of(at_us).into()],
        ))
        .await?
        .rows_affected() as i64;
    tx.execute_raw(tx.stmt(
        "UPDATE customer_summaries SET order_count = order_count + 1, transaction_count = transaction_count + ?, \
         first_purchase_us = CASE WHEN first_purchase_us IS NULL OR ? < first_purchase_us THEN ? ELSE first_purchase_us END, \
         last_purchase_us = CASE WHEN last_purchase_us IS NULL OR ? > last_purchase_us THEN ? ELSE last_purchase_us END, \
         updated_at_us = ? WHERE customer_id = ?",
        vec![new_day.into(), at_us.into(), at_us.into(), at_us.into(), at_us.into(), now_us.into(), customer.into()],
    ))
    .await?;
    let revenue = order.revenue.as_ref().map_or(0, |m| m.minor_units);
    let cost = order.cost.as_ref().map_or(0, |m| m.minor_units);
    tx.execute_raw(tx.stmt(
        "INSERT INTO customer_totals (customer_id, currency_code, revenue_minor, cost_minor, order_count) VALUES (?, ?, ?, ?, 1) \
         ON CONFLICT (customer_id, currency_code) DO UPDATE SET \
         revenue_minor = customer_totals.revenue_minor + excluded.revenue_minor, \
         cost_minor = customer_totals.cost_minor + excluded.cost_minor, \
         order_count = customer_totals.order_count + 1",
        vec![customer.into(), order.currency_code.clone().into(), revenue.into(), cost.into()],
    ))
    .await?;
    Ok(())
}

/// The value of a customer as far as the projection knows (an unknown
/// customer has an empty history, not an error: prospects have none).
pub async fn customer_value(
    store: &Store,
    customer: &str,
    now: DateTime<Utc>,
) -> Result<pb::CustomerValue, RuntimeError> {
    let c = store.conn();
    let row = c
        .query_one_raw(store.stmt(
            "SELECT interaction_count, order_count, transaction_count, first_purchase_us, last_purchase_us, updated_at_us \
             FROM customer_summaries WHERE customer_id = ?",
            vec![customer.into()],
        ))
        .await?;
    let mut summary = pb::PurchaseSummary::default();
    let mut update_time = None;
    if let Some(r) = row {
        let counts = Counts {
            orders: r.try_get_by_index(1)?,
            transactions: r.try_get_by_index(2)?,
            first_purchase_us: r.try_get_by_index(3)?,
            last_purchase_us: r.try_get_by_index(4)?,
        };
        let derived = domain::derive(&counts, now);
        let ts = |us: Option<i64>| us.and_then(chrono::DateTime::from_timestamp_micros).map(time::to_timestamp);
        summary = pb::PurchaseSummary {
            order_count: counts.orders,
            transaction_count: counts.transactions,
            frequency: derived.frequency,
            first_purchase_time: ts(counts.first_purchase_us),
            last_purchase_time: ts(counts.last_purchase_us),
            recency_days: derived.recency_days,
            age_days: derived.age_days,
            totals: vec![],
            interaction_count: r.try_get_by_index(0)?,
        };
        update_time = ts(Some(r.try_get_by_index(5)?));
        let totals = c
            .query_all_raw(store.stmt(
                "SELECT currency_code, revenue_minor, cost_minor, order_count FROM customer_totals WHERE customer_id = ? ORDER BY currency_code",
                vec![customer.into()],
            ))
            .await?;
        for t in totals {
            let revenue: i64 = t.try_get_by_index(1)?;
            let cost: i64 = t.try_get_by_index(2)?;
            summary.totals.push(pb::CurrencyTotals {
                currency_code: t.try_get_by_index(0)?,
                revenue_minor: revenue,
                cost_minor: cost,
                margin_minor: revenue - cost,
                order_count: t.try_get_by_index(3)?,
            });
        }
    }
    Ok(pb::CustomerValue {
        customer_id: customer.to_owned(),
        summary: Some(summary),
        update_time,
        ..Default::default()
    })
}
