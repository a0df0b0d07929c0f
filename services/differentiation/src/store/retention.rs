//! Reads for retention (DF-7): purchase days for the cohort report, the
//! at-risk list and one customer's score for retention economics.

use crm_runtime::db::Store;
use sea_orm::{ConnectionTrait, DbErr, Value};

/// Every customer's purchase days up to (excluding) `end_day`, ascending.
pub async fn purchase_days(store: &Store, end_day: i64) -> Result<Vec<Vec<i64>>, DbErr> {
    let rows = store
        .conn()
        .query_all_raw(store.stmt(
            "SELECT customer_id, day FROM purchase_days WHERE day < ? ORDER BY customer_id, day",
            vec![end_day.into()],
        ))
        .await?;
    let mut out: Vec<Vec<i64>> = Vec::new();
    let mut current: Option<String> = None;
    for r in &rows {
        let id: String = r.try_get_by_index(0)?;
        if current.as_deref() != Some(id.as_str()) {
            out.push(Vec::new());
            current = Some(id);
        }
        if let Some(days) = out.last_mut() {
            days.push(r.try_get_by_index(1)?);
        }
    }
    Ok(out)
}

/// The first purchase day of anyone, if any.
pub async fn first_day(store: &Store) -> Result<Option<i64>, DbErr> {
    let row = store.conn().query_one_raw(store.stmt("SELECT MIN(day) FROM purchase_days", vec![])).await?;
    Ok(row.map(|r| r.try_get_by_index::<Option<i64>>(0)).transpose()?.flatten())
}

/// Customers of `tiers` whose P(alive) is below `below`, most value at risk
/// (real value × (1 − P(alive))) first, after the keyset (value at risk, id).
pub async fn at_risk(
    store: &Store,
    below: f64,
    tiers: &[i32],
    after: Option<(i64, String)>,
    limit: u64,
) -> Result<Vec<(i64, String)>, DbErr> {
    let key = "CAST(v.real_value_minor * (1.0 - s.probability_alive) AS BIGINT)";
    let marks = vec!["?"; tiers.len().max(1)].join(", ");
    let mut values: Vec<Value> = vec![below.into()];
    values.extend(tiers.iter().map(|t| Value::from(*t)));
    let keyset = match after {
        Some((k, id)) => {
            values.extend([k.into(), k.into(), id.into()]);
            format!(" AND ({key} < ? OR ({key} = ? AND v.customer_id > ?))")
        }
        None => String::new(),
    };
    values.push((limit as i64).into());
    let rows = store
        .conn()
        .query_all_raw(store.stmt(
            &format!(
                "SELECT {key}, v.customer_id FROM customer_values v JOIN customer_scores s ON s.customer_id = v.customer_id \
                 WHERE s.probability_alive < ? AND v.tier IN ({marks}){keyset} ORDER BY {key} DESC, v.customer_id ASC LIMIT ?"
            ),
            values,
        ))
        .await?;
    rows.iter().map(|r| Ok((r.try_get_by_index(0)?, r.try_get_by_index(1)?))).collect()
}

/// A customer's stored score: (CLV minor units, P(alive), currency).
pub async fn score(store: &Store, customer: &str) -> Result<Option<(Option<i64>, f64, String)>, DbErr> {
    let row = store
        .conn()
        .query_one_raw(store.stmt(
            "SELECT clv_minor, probability_alive, currency_code FROM customer_scores WHERE customer_id = ?",
            vec![customer.into()],
        ))
        .await?;
    row.map(|r| Ok((r.try_get_by_index(0)?, r.try_get_by_index(1)?, r.try_get_by_index(2)?))).transpose()
}

/// Whether the projection knows `customer` at all.
pub async fn known(store: &Store, customer: &str) -> Result<bool, DbErr> {
    let row = store
        .conn()
        .query_one_raw(store.stmt("SELECT 1 FROM customer_summaries WHERE customer_id = ?", vec![customer.into()]))
        .await?;
    Ok(row.is_some())
}
