//! Defections joined with the value lost with them (DF-7).
//!
//! A defection is kept under its id (so that a re-key moves it like any
//! other fact, and an erasure deletes it) with its reason, whether it was
//! manageable, when it happened, and what was lost with the defector,
//! valued once when the defection is applied — after the defector's rows
//! were refreshed — so that a report over a past period does not move:
//! their CLV from the active model (when it is in the tier policy's
//! currency) and the margin of their orders, net of returns, in the 365
//! days up to the defection, both in the policy's currency.

use chrono::{DateTime, Utc};
use crm_proto::interaction::v1::Defection;
use crm_runtime::{
    db::{Store, WriteTxn},
    error::RuntimeError,
    time,
};
use sea_orm::{ConnectionTrait, DbErr, QueryResult, Value};

use super::values;
use crate::domain::{DAY_US, retention::CauseValue};

/// How far back the margin lost with a defector is counted.
pub const MARGIN_WINDOW_US: i64 = 365 * DAY_US;

/// Keep `defection` of `customer`, valued now (once per id).
pub async fn record(tx: &WriteTxn, customer: &str, d: &Defection, now: DateTime<Utc>) -> Result<(), RuntimeError> {
    if d.id.is_empty() || customer.is_empty() {
        return Ok(());
    }
    let occur_us = d.occur_time.as_ref().and_then(time::from_timestamp).unwrap_or(now).timestamp_micros();
    let (policy, _) = values::current_policy(&**tx).await?;
    let currency = policy.currency;
    let score = tx
        .query_one_raw(tx.stmt(
            "SELECT clv_minor, model_version FROM customer_scores WHERE customer_id = ? AND currency_code = ?",
            vec![customer.into(), currency.clone().into()],
        ))
        .await?;
    let (clv, model_version): (Option<i64>, Option<i64>) = match score {
        Some(r) => (r.try_get_by_index(0)?, Some(r.try_get_by_index(1)?)),
        None => (None, None),
    };
    let margin: i64 = tx
        .query_one_raw(tx.stmt(
            "SELECT CAST(COALESCE(SUM(revenue_minor - cost_minor), 0) AS BIGINT) FROM orders \
             WHERE customer_id = ? AND currency_code = ? AND occur_us > ? AND occur_us <= ?",
            vec![
                customer.into(),
                currency.clone().into(),
                occur_us.saturating_sub(MARGIN_WINDOW_US).into(),
                occur_us.into(),
            ],
        ))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("margin".into()))?
        .try_get_by_index(0)?;
    tx.execute_raw(tx.stmt(
        "INSERT INTO customer_defections (defection_id, customer_id, reason, manageable, occur_us, currency_code, \
         clv_minor, model_version, margin_minor, applied_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT (defection_id) DO NOTHING",
        vec![
            d.id.clone().into(),
            customer.into(),
            d.reason.into(),
            d.manageable.into(),
            occur_us.into(),
            currency.into(),
            clv.into(),
            model_version.into(),
            margin.into(),
            now.timestamp_micros().into(),
        ],
    ))
    .await?;
    Ok(())
}

/// What a defection value report covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefectionQuery {
    /// Defections at or after this instant (µs since the epoch) …
    pub start_us: i64,
    /// … and before this one.
    pub end_us: i64,
    /// Only these reasons (empty: every reason).
    pub reasons: Vec<i32>,
    /// Currency of the value lost; `None`: the tier policy's.
    pub currency: Option<String>,
}

const SUMS: &str = "COUNT(*), \
     CAST(COALESCE(SUM(CASE WHEN manageable THEN 1 ELSE 0 END), 0) AS BIGINT), \
     COUNT(DISTINCT customer_id), \
     CAST(COALESCE(SUM(CASE WHEN currency_code = ? THEN COALESCE(clv_minor, 0) ELSE 0 END), 0) AS BIGINT), \
     CAST(COALESCE(SUM(CASE WHEN currency_code = ? THEN margin_minor ELSE 0 END), 0) AS BIGINT), \
     CAST(COALESCE(SUM(CASE WHEN currency_code = ? AND manageable THEN COALESCE(clv_minor, 0) + margin_minor ELSE 0 END), 0) AS BIGINT), \
     CAST(COALESCE(SUM(CASE WHEN currency_code = ? AND clv_minor IS NOT NULL THEN 0 ELSE 1 END), 0) AS BIGINT)";

fn cause(reason: i32, r: &QueryResult, at: usize) -> Result<CauseValue, DbErr> {
    Ok(CauseValue {
        reason,
        defections: r.try_get_by_index(at)?,
        manageable: r.try_get_by_index(at + 1)?,
        customers: r.try_get_by_index(at + 2)?,
        clv_lost: r.try_get_by_index(at + 3)?,
        margin_lost: r.try_get_by_index(at + 4)?,
        manageable_value_lost: r.try_get_by_index(at + 5)?,
        unscored: r.try_get_by_index(at + 6)?,
    })
}

/// The defections of `q` per reason (unranked) and all together, valued
/// in `currency`.
pub async fn report(store: &Store, q: &DefectionQuery, currency: &str) -> Result<(Vec<CauseValue>, CauseValue), DbErr> {
    let mut values: Vec<Value> = (0..4).map(|_| Value::from(currency)).collect();
    values.extend([q.start_us.into(), q.end_us.into()]);
    let mut filter = "occur_us >= ? AND occur_us < ?".to_owned();
    if !q.reasons.is_empty() {
        filter.push_str(&format!(" AND reason IN ({})", vec!["?"; q.reasons.len()].join(", ")));
        values.extend(q.reasons.iter().map(|r| Value::from(*r)));
    }
    let c = store.conn();
    let rows = c
        .query_all_raw(store.stmt(
            &format!("SELECT reason, {SUMS} FROM customer_defections WHERE {filter} GROUP BY reason"),
            values.clone(),
        ))
        .await?;
    let causes = rows.iter().map(|r| cause(r.try_get_by_index(0)?, r, 1)).collect::<Result<Vec<_>, DbErr>>()?;
    let total = c
        .query_one_raw(store.stmt(&format!("SELECT {SUMS} FROM customer_defections WHERE {filter}"), values))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("defection totals".into()))?;
    Ok((causes, cause(0, &total, 0)?))
}
