//! Versioned value models and scores. A fit reads the population's
//! purchase days up to the calibration end, fits off the async runtime,
//! and stores a new version; a converged fit that is to be activated
//! becomes the only active version and every customer is rescored in the
//! same transaction, and the tier boundaries recomputed with the new CLVs.
//! A fit that did not converge is stored (so operators
//! can see why) but never activated: the active model stays. Besides the
//! `FitValueModel` RPC, [`schedule_refit`] runs the same fit periodically,
//! so the active model follows the population as it buys, lapses and grows.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use crm_proto::differentiation::v1 as pb;
use crm_runtime::{
    db::{Store, WriteTxn},
    error::RuntimeError,
    idempotency::{self, Claim},
    server::Shutdown,
    time,
};
use sea_orm::{ConnectionTrait, DbErr, QueryResult, Statement, Value};

use crate::domain::{
    self, bgnbd,
    clv::{self, Customer, Model, Valuation},
    gamma_gamma,
    optimize::Matrix,
};

/// A stored model.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredModel {
    /// Version.
    pub version: i64,
    /// The parameters and valuation.
    pub model: Model,
    /// Currency of the margins.
    pub currency: String,
    /// Covariances of the BG/NBD and Gamma–Gamma log-parameters.
    pub covariance: Option<(Matrix, Matrix)>,
    /// As the API shows it.
    pub proto: pb::ValueModel,
}

pub(crate) const COLUMNS: &str = "version, fit_at_us, calibration_end_us, currency_code, horizon_days, monthly_discount_rate, r, alpha, a, b, \
     log_likelihood, customer_count, distinct_triples, p, q, gamma, gg_log_likelihood, gg_customer_count, converged, active, message, covariance";

fn encode_covariance(c: &Option<(Matrix, Matrix)>) -> String {
    match c {
        Some((b, s)) => b.iter().chain(s.iter()).flatten().map(|v| v.to_string()).collect::<Vec<_>>().join(","),
        None => String::new(),
    }
}

fn decode_covariance(text: &str) -> Option<(Matrix, Matrix)> {
    let v: Vec<f64> = text.split(',').map(str::parse).collect::<Result<_, _>>().ok()?;
    if v.len() != 25 {
        return None;
    }
    let b = (0..4).map(|i| v[i * 4..i * 4 + 4].to_vec()).collect();
    let s = (0..3).map(|i| v[16 + i * 3..16 + i * 3 + 3].to_vec()).collect();
    Some((b, s))
}

fn from_row(r: &QueryResult) -> Result<StoredModel, DbErr> {
    from_row_at(r, 0)
}

/// A model from the [`COLUMNS`] of `r` that start at index `base`.
pub(crate) fn from_row_at(r: &QueryResult, base: usize) -> Result<StoredModel, DbErr> {
    let at = |i: usize| base + i;
    let ts = |us: i64| chrono::DateTime::from_timestamp_micros(us).map(time::to_timestamp);
    let version: i64 = r.try_get_by_index(at(0))?;
    let currency: String = r.try_get_by_index(at(3))?;
    let horizon_days: i32 = r.try_get_by_index(at(4))?;
    let monthly_discount_rate: f64 = r.try_get_by_index(at(5))?;
    let bg = bgnbd::Params {
        r: r.try_get_by_index(at(6))?,
        alpha: r.try_get_by_index(at(7))?,
        a: r.try_get_by_index(at(8))?,
        b: r.try_get_by_index(at(9))?,
    };
    let gg = gamma_gamma::Params {
        p: r.try_get_by_index(at(13))?,
        q: r.try_get_by_index(at(14))?,
        gamma: r.try_get_by_index(at(15))?,
    };
    let covariance_text: String = r.try_get_by_index(at(21))?;
    let proto = pb::ValueModel {
        version,
        r: bg.r,
        alpha: bg.alpha,
        a: bg.a,
        b: bg.b,
        p: gg.p,
        q: gg.q,
        gamma: gg.gamma,
        log_likelihood: r.try_get_by_index(at(10))?,
        converged: r.try_get_by_index(at(18))?,
        customer_count: r.try_get_by_index(at(11))?,
        fit_time: ts(r.try_get_by_index(at(1))?),
        active: r.try_get_by_index(at(19))?,
        currency_code: currency.clone(),
        calibration_end_time: ts(r.try_get_by_index(at(2))?),
        horizon_days,
        monthly_discount_rate,
        message: r.try_get_by_index(at(20))?,
        gamma_gamma_log_likelihood: r.try_get_by_index(at(16))?,
        gamma_gamma_customer_count: r.try_get_by_index(at(17))?,
        time_unit_days: clv::DAYS_PER_UNIT as i32,
        distinct_triple_count: r.try_get_by_index(at(12))?,
    };
    Ok(StoredModel {
        version,
        model: Model {
            bgnbd: bg,
            spend: gg,
            valuation: Valuation { horizon_days: horizon_days.max(1) as u32, monthly_discount_rate },
        },
        currency,
        covariance: decode_covariance(&covariance_text),
        proto,
    })
}

/// The active model, if any.
pub async fn active<C: ConnectionTrait>(c: &C) -> Result<Option<StoredModel>, DbErr> {
    let row = c
        .query_one_raw(crm_runtime::db::stmt(
            c.get_database_backend(),
            &format!("SELECT {COLUMNS} FROM value_models WHERE active = ?"),
            vec![true.into()],
        ))
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// The active model's version, if any (a cheap check for caches).
pub async fn active_version(store: &Store) -> Result<Option<i64>, DbErr> {
    let row = store
        .conn()
        .query_one_raw(store.stmt("SELECT version FROM value_models WHERE active = ?", vec![true.into()]))
        .await?;
    row.map(|r| r.try_get_by_index(0)).transpose()
}

/// A model by version.
pub async fn get(store: &Store, version: i64) -> Result<Option<StoredModel>, DbErr> {
    let row = store
        .conn()
        .query_one_raw(
            store.stmt(&format!("SELECT {COLUMNS} FROM value_models WHERE version = ?"), vec![version.into()]),
        )
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// The currency with the most orders, if there are orders.
pub async fn most_common_currency(store: &Store) -> Result<Option<String>, DbErr> {
    let row = store
        .conn()
        .query_one_raw(store.stmt(
            "SELECT currency_code FROM orders GROUP BY currency_code ORDER BY COUNT(*) DESC, currency_code ASC LIMIT 1",
            vec![],
        ))
        .await?;
    row.map(|r| r.try_get_by_index(0)).transpose()
}

/// Every customer with a purchase on or before `as_of_day`, summarised
/// as of the end of that day (margins in `currency` units).
pub async fn population<C: ConnectionTrait>(
    c: &C,
    currency: &str,
    as_of_day: i64,
) -> Result<Vec<(String, Customer)>, DbErr> {
    let rows = c
        .query_all_raw(crm_runtime::db::stmt(
            c.get_database_backend(),
            "SELECT customer_id, day, CAST(SUM(CASE WHEN currency_code = ? THEN revenue_minor ELSE 0 END) AS BIGINT), \
             CAST(SUM(CASE WHEN currency_code = ? THEN revenue_minor - cost_minor ELSE 0 END) AS BIGINT) \
             FROM orders WHERE day <= ? GROUP BY customer_id, day ORDER BY customer_id, day",
            vec![currency.into(), currency.into(), as_of_day.into()],
        ))
        .await?;
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    let mut days: Vec<domain::PurchaseDay> = Vec::new();
    let mut flush = |id: Option<String>, days: &mut Vec<domain::PurchaseDay>| {
        if let Some(id) = id
            && let Some(s) = domain::repeat_summary(days, as_of_day)
        {
            out.push((id, customer_of(&s, currency)));
        }
        days.clear();
    };
    for r in &rows {
        let id: String = r.try_get_by_index(0)?;
        if current.as_deref() != Some(id.as_str()) {
            flush(current.take(), &mut days);
            current = Some(id);
        }
        days.push(domain::PurchaseDay {
            day: r.try_get_by_index(1)?,
            revenue_minor: r.try_get_by_index(2)?,
            margin_minor: r.try_get_by_index(3)?,
        });
    }
    flush(current, &mut days);
    Ok(out)
}

/// The model's view of a summary.
pub fn customer_of(s: &domain::RepeatSummary, currency: &str) -> Customer {
    Customer {
        x: s.frequency,
        t_x_days: s.recency_days as f64,
        t_days: s.age_days as f64,
        mean_margin: domain::to_units(s.mean_repeat_margin_minor, currency),
    }
}

/// What a fit is asked to do.
#[derive(Debug, Clone)]
pub struct FitCommand {
    /// Purchases on this UTC day and before are used.
    pub calibration_end: DateTime<Utc>,
    /// Currency of the margins; `None` picks the most common.
    pub currency: Option<String>,
    /// Horizon and discounting of the CLV.
    pub valuation: Valuation,
    /// Activate if it converged.
    pub activate: bool,
    /// Idempotency key.
    pub request_id: String,
    /// Fingerprint of the request, for the key.
    pub fingerprint: i64,
}

const FIT_SCOPE: &str = "FitValueModel";

/// Fit, store and (if converged and asked) activate a new model.
pub async fn fit(store: &Store, cmd: FitCommand) -> Result<pb::ValueModel, RuntimeError> {
    let currency = match cmd.currency.clone() {
        Some(c) => c,
        None => most_common_currency(store)
            .await?
            .ok_or_else(|| RuntimeError::FailedPrecondition("no purchases to fit a value model on".into()))?,
    };
    let end_day = domain::day_of(cmd.calibration_end.timestamp_micros());
    let people = population(store.conn(), &currency, end_day).await?;
    let customers: Vec<Customer> = people.into_iter().map(|(_, c)| c).collect();
    let fitted = tokio::task::spawn_blocking(move || clv::fit(&customers))
        .await
        .map_err(|e| RuntimeError::Internal(format!("fit task failed: {e}")))?;
    let covariance = match (&fitted.bgnbd.covariance, &fitted.spend.covariance) {
        (Some(b), Some(s)) => Some((b.clone(), s.clone())),
        _ => None,
    };
    let now = time::now();
    let tx = store.begin_write().await?;
    if let Claim::Replay(r) =
        idempotency::claim::<pb::FitValueModelResponse>(&tx, FIT_SCOPE, &cmd.request_id, cmd.fingerprint).await?
    {
        tx.rollback().await?;
        return r.model.ok_or_else(|| RuntimeError::Internal("stored fit response without model".into()));
    }
    lock_scores(&tx).await?;
    let version: i64 = tx
        .query_one_raw(tx.stmt("SELECT COALESCE(MAX(version), 0) + 1 FROM value_models", vec![]))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("version".into()))?
        .try_get_by_index(0)?;
    let activate = cmd.activate && fitted.converged;
    let message = if fitted.converged {
        fitted.message.clone()
    } else {
        format!("did not converge, the active model is kept: {}", fitted.message)
    };
    let (b, s) = (fitted.bgnbd.params, fitted.spend.params);
    let finite = |v: f64| if v.is_finite() { v } else { 0.0 };
    let values: Vec<Value> = vec![
        version.into(),
        now.timestamp_micros().into(),
        cmd.calibration_end.timestamp_micros().into(),
        currency.clone().into(),
        (cmd.valuation.horizon_days as i32).into(),
        cmd.valuation.monthly_discount_rate.into(),
        finite(b.r).into(),
        finite(b.alpha).into(),
        finite(b.a).into(),
        finite(b.b).into(),
        finite(fitted.bgnbd.log_likelihood).into(),
        (fitted.customers as i64).into(),
        (fitted.distinct as i64).into(),
        finite(s.p).into(),
        finite(s.q).into(),
        finite(s.gamma).into(),
        finite(fitted.spend.log_likelihood).into(),
        (fitted.spenders as i64).into(),
        fitted.converged.into(),
        false.into(),
        message.into(),
        encode_covariance(&covariance).into(),
    ];
    let marks = vec!["?"; values.len()].join(", ");
    tx.execute_raw(tx.stmt(&format!("INSERT INTO value_models ({COLUMNS}) VALUES ({marks})"), values)).await?;
    if activate {
        tx.execute_raw(tx.stmt("UPDATE value_models SET active = (version = ?)", vec![version.into()])).await?;
        let model = active(&*tx).await?.ok_or_else(|| DbErr::RecordNotFound("activated model".into()))?;
        rescore_all(&tx, &model, now).await?;
        super::values::recompute_all(&tx, now).await?;
    }
    let stored = fetch(&tx, version).await?;
    let response = pb::FitValueModelResponse { model: Some(stored.proto.clone()) };
    idempotency::complete(&tx, FIT_SCOPE, &cmd.request_id, &response).await?;
    tx.commit().await?;
    if !fitted.converged {
        tracing::warn!(version, "value model fit did not converge; active model kept");
    }
    Ok(stored.proto)
}

/// The fit a scheduled refit runs as of `now`: every purchase up to now,
/// activated if it converges, in the active model's currency and with its
/// valuation (so a refit follows the data, not a change of settings), or
/// with `FitValueModel`'s defaults when no model is active.
pub async fn refit_command(store: &Store, now: DateTime<Utc>) -> Result<FitCommand, DbErr> {
    let current = active(store.conn()).await?;
    Ok(FitCommand {
        calibration_end: now,
        currency: current.as_ref().map(|m| m.currency.clone()),
        valuation: current.map_or_else(Valuation::default, |m| m.model.valuation),
        activate: true,
        request_id: String::new(),
        fingerprint: 0,
    })
}

/// Refit the value model every `every` until `shutdown` (DF-2). A run
/// that does not converge is stored and reported like any other fit, and
/// the active model stays; a failed run is logged and retried at the next
/// period.
pub fn schedule_refit(store: Store, every: std::time::Duration, shutdown: Shutdown) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                biased;
                () = shutdown.wait() => break,
                () = tokio::time::sleep(every) => {}
            }
            let outcome = match refit_command(&store, time::now()).await {
                Ok(cmd) => fit(&store, cmd).await,
                Err(e) => Err(e.into()),
            };
            match outcome {
                Ok(m) => tracing::info!(
                    version = m.version,
                    converged = m.converged,
                    active = m.active,
                    customers = m.customer_count,
                    "value model refitted on schedule"
                ),
                Err(RuntimeError::FailedPrecondition(reason)) => {
                    tracing::info!(%reason, "scheduled value model refit skipped");
                }
                Err(e) => tracing::warn!(error = %e, "scheduled value model refit failed; retrying at the next period"),
            }
        }
    })
}

async fn fetch(tx: &WriteTxn, version: i64) -> Result<StoredModel, DbErr> {
    let row = tx
        .query_one_raw(tx.stmt(&format!("SELECT {COLUMNS} FROM value_models WHERE version = ?"), vec![version.into()]))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("value model".into()))?;
    from_row(&row)
}

/// Serialise score writers on PostgreSQL (the feed consumer and a fit's
/// rescoring); SQLite has one writer at a time already.
pub(crate) async fn lock_scores(tx: &WriteTxn) -> Result<(), DbErr> {
    if super::is_postgres(tx) {
        let key = idempotency::fingerprint(b"differentiation:scores");
        tx.execute_raw(tx.stmt("SELECT pg_advisory_xact_lock(?)", vec![key.into()])).await?;
    }
    Ok(())
}

/// Rows per multi-row insert.
const BATCH: usize = 400;

/// Rescore every customer with `model` as of `now`.
async fn rescore_all(tx: &WriteTxn, model: &StoredModel, now: DateTime<Utc>) -> Result<(), RuntimeError> {
    let today = domain::day_of(now.timestamp_micros());
    let people = population(&**tx, &model.currency, today).await?;
    let m = model.model.clone();
    let scored = tokio::task::spawn_blocking(move || {
        let customers: Vec<Customer> = people.iter().map(|(_, c)| *c).collect();
        let scores = clv::score_population(&m, &customers, 2);
        people.into_iter().map(|(id, _)| id).zip(scores).collect::<Vec<_>>()
    })
    .await
    .map_err(|e| RuntimeError::Internal(format!("scoring task failed: {e}")))?;
    tx.execute_raw(tx.stmt("DELETE FROM customer_scores", vec![])).await?;
    for chunk in scored.chunks(BATCH) {
        let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * 8);
        let mut rows = 0;
        for (id, score) in chunk {
            let Ok(s) = score else { continue };
            values.extend(score_values(id, model, s, now));
            rows += 1;
        }
        if rows == 0 {
            continue;
        }
        let marks = vec!["(?, ?, ?, ?, ?, ?, ?, ?)"; rows].join(", ");
        tx.execute_raw(tx.stmt(
            &format!(
                "INSERT INTO customer_scores (customer_id, model_version, currency_code, probability_alive, expected_transactions, \
                 expected_margin_minor, clv_minor, scored_at_us) VALUES {marks}"
            ),
            values,
        ))
        .await?;
    }
    Ok(())
}

fn score_values(id: &str, model: &StoredModel, s: &clv::Score, now: DateTime<Utc>) -> Vec<Value> {
    let minor = |v: Option<f64>| v.map(|v| domain::to_minor(v, &model.currency));
    vec![
        id.into(),
        model.version.into(),
        model.currency.clone().into(),
        s.probability_alive.into(),
        s.expected_transactions.into(),
        minor(s.expected_margin).into(),
        minor(s.clv).into(),
        now.timestamp_micros().into(),
    ]
}

/// The statements that rescore one customer with the active `model` from
/// their purchase `days` (amounts in its currency; inside the consumer's transaction, after each event that
/// changed them; the consumer holds the scores lock).
pub fn rescore_customer(
    tx: &WriteTxn,
    model: Option<&StoredModel>,
    customer: &str,
    days: &[domain::PurchaseDay],
    now: DateTime<Utc>,
) -> Vec<Statement> {
    let Some(model) = model else { return vec![] };
    let today = domain::day_of(now.timestamp_micros());
    let mut writes = vec![tx.stmt("DELETE FROM customer_scores WHERE customer_id = ?", vec![customer.into()])];
    // A score the special functions cannot evaluate is left out, not guessed.
    let score = domain::repeat_summary(days, today)
        .and_then(|summary| clv::score(&model.model, &customer_of(&summary, &model.currency)).ok());
    if let Some(score) = score {
        writes.push(tx.stmt(
            "INSERT INTO customer_scores (customer_id, model_version, currency_code, probability_alive, expected_transactions, \
             expected_margin_minor, clv_minor, scored_at_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            score_values(customer, model, &score, now),
        ));
    }
    writes
}

/// A model ready to score, with its parameter draws.
#[derive(Debug)]
pub struct Loaded {
    /// The stored model.
    pub stored: StoredModel,
    /// Draws for intervals, if the covariance allows.
    pub draws: Option<clv::Draws>,
}

/// The active model with its draws, reusing `cached` when it is still the
/// active version.
pub async fn load_active(store: &Store, cached: Option<Arc<Loaded>>) -> Result<Option<Arc<Loaded>>, RuntimeError> {
    let Some(version) = active_version(store).await? else { return Ok(None) };
    if let Some(c) = cached.filter(|c| c.stored.version == version) {
        return Ok(Some(c));
    }
    let Some(stored) = get(store, version).await? else { return Ok(None) };
    let draws = stored.covariance.as_ref().and_then(|(b, s)| {
        clv::draws(&stored.model, b, s, clv::INTERVAL_DRAWS, clv::DRAW_SEED ^ stored.version as u64)
    });
    Ok(Some(Arc::new(Loaded { stored, draws })))
}

/// A customer's lifetime value under a loaded model as of `now`; `None`
/// before their first purchase or if it cannot be evaluated.
pub async fn lifetime_value<C: ConnectionTrait>(
    c: &C,
    loaded: &Loaded,
    customer: &str,
    now: DateTime<Utc>,
) -> Result<Option<pb::LifetimeValue>, RuntimeError> {
    let m = &loaded.stored;
    let days = super::purchase_days(c, customer, &m.currency).await?;
    let Some(summary) = domain::repeat_summary(&days, domain::day_of(now.timestamp_micros())) else { return Ok(None) };
    let c = customer_of(&summary, &m.currency);
    let Ok(score) = clv::score(&m.model, &c) else { return Ok(None) };
    let money = |v: Option<f64>| {
        v.map(|v| crm_proto::common::v1::Money {
            currency_code: m.currency.clone(),
            minor_units: domain::to_minor(v, &m.currency),
        })
    };
    let interval = loaded.draws.as_ref().and_then(|d| clv::interval(d, &c, clv::INTERVAL_LEVEL));
    Ok(Some(pb::LifetimeValue {
        probability_alive: score.probability_alive,
        expected_transactions: score.expected_transactions,
        horizon_days: m.model.valuation.horizon_days as i32,
        expected_margin_per_transaction: money(score.expected_margin),
        clv: money(score.clv),
        clv_lower: money(interval.map(|i| i.0)),
        clv_upper: money(interval.map(|i| i.1)),
        model_version: m.version,
        interval_level: if interval.is_some() { clv::INTERVAL_LEVEL } else { 0.0 },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covariances_round_trip_as_text() {
        let b: Matrix = (0..4).map(|i| (0..4).map(|j| (i * 4 + j) as f64 * 0.1 + 1e-17).collect()).collect();
        let s: Matrix = (0..3).map(|i| (0..3).map(|j| -((i * 3 + j) as f64) / 3.0).collect()).collect();
        let text = encode_covariance(&Some((b.clone(), s.clone())));
        assert_eq!(decode_covariance(&text), Some((b, s)));
        assert_eq!(encode_covariance(&None), "");
        assert_eq!(decode_covariance(""), None);
        assert_eq!(decode_covariance("1,2"), None);
    }
}
