//! The differentiation store.
//!
//! The interaction projection keeps the facts the summaries derive from —
//! orders (with per-category totals) and interactions, each under its id —
//! so that a re-key after a merge or unmerge moves exactly the facts the
//! `CustomerRekeyed` event lists, and an erasure deletes everything. After
//! every change to a customer their derived rows (purchase days, totals
//! per currency, the summary) are recomputed from those facts and the
//! customer is rescored with the active value model, all inside the
//! consumer's cursor transaction: scores follow every purchase event.
//!
//! [`models`] holds the fitted value models and the population rescoring;
//! [`values`] the customer values and tiers, which follow every such
//! change too, and the remaining DF-1 inputs: referrals, stated needs and
//! declared wallets (from REFERRAL and PREFERENCE_STATEMENT interactions,
//! kept under their interaction id so re-keys move them like any other
//! fact), and profile traits and merge aliases (from the identification
//! feed). [`segments`] keeps the needs-based segments' members current
//! with every one of those changes. [`defections`] keeps each defection
//! (under its id, moved and erased like the other facts) with the value
//! lost with the defector.

pub mod defections;
pub mod models;
pub mod retention;
pub mod segments;
pub mod values;

use chrono::{DateTime, Utc};
use crm_proto::{
    differentiation::v1 as pb,
    identification::v1::{ProfileEvent, profile_event},
    interaction::v1::{Interaction, InteractionEvent, Order, interaction_event::Kind},
};
use crm_runtime::{consumer::Projection, db::WriteTxn, error::RuntimeError, time};
use futures::future::BoxFuture;
use sea_orm::{ConnectionTrait, DatabaseBackend, DbErr, Statement, Value};

use crate::domain::{self, Counts, PurchaseDay};

/// Applies interaction events to the purchase and value projections (each
/// counted for the tier boundaries' recompute: see [`values::after_event`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct PurchaseSummaryProjection;

impl Projection<InteractionEvent> for PurchaseSummaryProjection {
    fn apply<'a>(
        &'a self,
        tx: &'a mut WriteTxn,
        event: &'a InteractionEvent,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            // Both consumers and the population jobs take the scores lock
            // first, so they never wait on each other's rows while holding it.
            models::lock_scores(tx).await?;
            let now = time::now();
            let customer = event.customer_id.as_str();
            match &event.kind {
                Some(Kind::InteractionRecorded(r)) => {
                    let (facts, referred) = interaction_facts(tx, customer, r.interaction.as_ref());
                    let written = refresh_after(tx, facts, customer, now).await?;
                    crm_runtime::db::execute_all(&**tx, written).await?;
                    // An earlier referral may take the credit from another referrer.
                    if let Some(referred) = referred {
                        values::revalue_referrers(tx, &referred, now).await?;
                    }
                }
                Some(Kind::PurchaseRecorded(p)) => {
                    let Some(order) = &p.order else {
                        return Err(RuntimeError::Internal("purchase event without order".into()));
                    };
                    let (mut facts, _) = interaction_facts(tx, customer, p.interaction.as_ref());
                    facts.extend(record_order(tx, customer, order, now));
                    let written = refresh_after(tx, facts, customer, now).await?;
                    tx.defer_all(written);
                }
                Some(Kind::ReturnRecorded(r)) => {
                    crm_runtime::db::execute_all(&**tx, interaction_facts(tx, customer, r.interaction.as_ref()).0)
                        .await?;
                    let owner = match &r.order_return {
                        Some(ret) => apply_return(tx, ret).await?,
                        None => None,
                    };
                    refresh(tx, customer, now).await?;
                    if let Some(owner) = owner.filter(|o| o != customer) {
                        refresh(tx, &owner, now).await?;
                    }
                }
                Some(Kind::SurveyResponseRecorded(s)) => {
                    let facts = interaction_facts(tx, customer, s.interaction.as_ref()).0;
                    let written = refresh_after(tx, facts, customer, now).await?;
                    tx.defer_all(written);
                }
                Some(Kind::ComplaintChanged(c)) => {
                    if c.interaction.is_some() {
                        let facts = interaction_facts(tx, customer, c.interaction.as_ref()).0;
                        let written = refresh_after(tx, facts, customer, now).await?;
                        tx.defer_all(written);
                    }
                }
                Some(Kind::DefectionRecorded(d)) => {
                    let facts = interaction_facts(tx, customer, d.interaction.as_ref()).0;
                    let written = refresh_after(tx, facts, customer, now).await?;
                    crm_runtime::db::execute_all(&**tx, written).await?;
                    // Valued after the refresh: the score and margin now.
                    if let Some(defection) = &d.defection {
                        defections::record(tx, customer, defection, now).await?;
                    }
                }
                Some(Kind::CustomerRekeyed(k)) => {
                    let facts = k.facts.clone().unwrap_or_default();
                    move_facts(tx, "orders", "order_id", &facts.order_ids, &k.to_customer_id).await?;
                    move_facts(tx, "customer_defections", "defection_id", &facts.defection_ids, &k.to_customer_id)
                        .await?;
                    for table in std::iter::once("customer_interactions").chain(values::STATEMENT_TABLES) {
                        move_facts(tx, table, "interaction_id", &facts.interaction_ids, &k.to_customer_id).await?;
                    }
                    refresh(tx, &k.from_customer_id, now).await?;
                    refresh(tx, &k.to_customer_id, now).await?;
                }
                Some(Kind::CustomerErased(e)) => {
                    let id = if e.customer_id.is_empty() { customer } else { e.customer_id.as_str() };
                    erase(tx, id, now).await?;
                }
                Some(Kind::ConsentRecorded(_)) | None => {}
            }
            values::after_event(tx);
            Ok(())
        })
    }
}

fn micros(t: Option<&prost_types::Timestamp>, fallback: DateTime<Utc>) -> i64 {
    t.and_then(time::from_timestamp).unwrap_or(fallback).timestamp_micros()
}

/// Applies the identification feed. Erasure removes the person from every
/// projection (facts, summaries, scores, values, tiers, traits) at once,
/// without waiting for interaction's own `CustomerErased`; merges and
/// unmerges move facts through interaction's `CustomerRekeyed` events,
/// which list exactly the facts moved. What is held per profile here is
/// its traits (replaced by every created or updated profile, which carries
/// them whole — a merge and an unmerge update the profiles they concern)
/// and its merge aliases, through which a referral naming a merged-away id
/// credits the profile it now stands for. Segment memberships follow each
/// of these changes.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdentityProjection;

impl Projection<ProfileEvent> for IdentityProjection {
    fn apply<'a>(&'a self, tx: &'a mut WriteTxn, event: &'a ProfileEvent) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            models::lock_scores(tx).await?;
            let now = time::now();
            match &event.kind {
                Some(profile_event::Kind::ProfileErased(e)) => {
                    let id = if e.profile_id.is_empty() { event.profile_id.as_str() } else { e.profile_id.as_str() };
                    erase(tx, id, now).await?;
                }
                Some(profile_event::Kind::ProfileCreated(c)) => {
                    if let Some(p) = &c.profile {
                        values::set_traits(tx, p).await?;
                        segments::reevaluate(tx, &p.id, now).await?;
                    }
                }
                Some(profile_event::Kind::ProfileUpdated(u)) => {
                    if let Some(p) = &u.profile {
                        values::set_traits(tx, p).await?;
                        segments::reevaluate(tx, &p.id, now).await?;
                    }
                }
                Some(profile_event::Kind::ProfileMerged(m)) => {
                    values::alias(tx, &m.merged_id, &m.surviving_id, now).await?;
                    // The merged-away id leaves every segment at once; its
                    // facts reach the survivor with interaction's re-key.
                    segments::leave_all(tx, &m.merged_id).await?;
                    segments::reevaluate(tx, &m.surviving_id, now).await?;
                }
                Some(profile_event::Kind::ProfileUnmerged(u)) => {
                    values::unalias(tx, &u.restored_id, &u.surviving_id, now).await?;
                    segments::reevaluate(tx, &u.restored_id, now).await?;
                    segments::reevaluate(tx, &u.surviving_id, now).await?;
                }
                Some(profile_event::Kind::IdentifiersChanged(_)) | None => {}
            }
            Ok(())
        })
    }
}

/// The statements that keep an interaction (for counts and cost to serve),
/// once per id, with what a referral or preference statement says, and the
/// customer a referral names.
fn interaction_facts(tx: &WriteTxn, customer: &str, i: Option<&Interaction>) -> (Vec<Statement>, Option<String>) {
    let Some(i) = i.filter(|i| !i.id.is_empty()) else { return (vec![], None) };
    let occur_us = micros(i.occur_time.as_ref(), time::now());
    let mut facts = vec![tx.stmt(
        "INSERT INTO customer_interactions (interaction_id, customer_id, channel, interaction_type, occur_us) \
         VALUES (?, ?, ?, ?, ?) ON CONFLICT (interaction_id) DO NOTHING",
        vec![i.id.clone().into(), customer.into(), i.channel.into(), i.r#type.into(), occur_us.into()],
    )];
    let (statement, referred) = values::statement_facts(tx, customer, i, occur_us);
    facts.extend(statement);
    (facts, referred)
}

/// The statements that keep an order with its per-category totals.
fn record_order(tx: &WriteTxn, customer: &str, order: &Order, now: DateTime<Utc>) -> Vec<Statement> {
    let at_us = micros(order.occur_time.as_ref(), now);
    let (mut revenue, mut cost) = (0i64, 0i64);
    let mut by_category: std::collections::BTreeMap<&str, (i64, i64)> = Default::default();
    for l in &order.lines {
        let r = l.quantity.saturating_mul(l.unit_price_minor);
        let c = l.quantity.saturating_mul(l.unit_cost_minor);
        revenue = revenue.saturating_add(r);
        cost = cost.saturating_add(c);
        let e = by_category.entry(l.category.as_str()).or_default();
        e.0 = e.0.saturating_add(r);
        e.1 = e.1.saturating_add(c);
    }
    // A replayed id (never expected from an exactly-once feed) is ignored
    // rather than counted twice: the categories go in only with the order.
    let order_id = if order.id.is_empty() { crm_runtime::ids::new_id() } else { order.id.clone() };
    let mut out: Vec<Statement> = by_category
        .into_iter()
        .map(|(category, (r, c))| {
            tx.stmt(
                "INSERT INTO order_categories (order_id, category, revenue_minor, cost_minor) SELECT ?, ?, ?, ? \
                 WHERE NOT EXISTS (SELECT 1 FROM orders WHERE order_id = ?)",
                vec![order_id.clone().into(), category.into(), r.into(), c.into(), order_id.clone().into()],
            )
        })
        .collect();
    out.push(tx.stmt(
        "INSERT INTO orders (order_id, customer_id, day, occur_us, currency_code, revenue_minor, cost_minor) \
             VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (order_id) DO NOTHING",
        vec![
            order_id.clone().into(),
            customer.into(),
            domain::day_of(at_us).into(),
            at_us.into(),
            order.currency_code.clone().into(),
            revenue.into(),
            cost.into(),
        ],
    ));
    out
}

/// Net a return off its order; returns the order's customer, if known.
async fn apply_return(tx: &WriteTxn, ret: &crm_proto::interaction::v1::OrderReturn) -> Result<Option<String>, DbErr> {
    let revenue = ret.revenue.as_ref().map_or(0, |m| m.minor_units);
    let margin = ret.margin.as_ref().map_or(0, |m| m.minor_units);
    let cost = revenue - margin;
    let owner = tx
        .query_one_raw(tx.stmt("SELECT customer_id FROM orders WHERE order_id = ?", vec![ret.order_id.clone().into()]))
        .await?;
    let Some(owner) = owner else { return Ok(None) };
    tx.execute_raw(tx.stmt(
        "UPDATE orders SET revenue_minor = revenue_minor - ?, cost_minor = cost_minor - ? WHERE order_id = ?",
        vec![revenue.into(), cost.into(), ret.order_id.clone().into()],
    ))
    .await?;
    // Per category, from the lines returned (they carry the order's prices).
    for l in &ret.lines {
        tx.execute_raw(tx.stmt(
            "UPDATE order_categories SET revenue_minor = revenue_minor - ?, cost_minor = cost_minor - ? \
             WHERE order_id = ? AND category = ?",
            vec![
                l.quantity.saturating_mul(l.unit_price_minor).into(),
                l.quantity.saturating_mul(l.unit_cost_minor).into(),
                ret.order_id.clone().into(),
                l.category.clone().into(),
            ],
        ))
        .await?;
    }
    Ok(Some(owner.try_get_by_index(0)?))
}

/// Ids per `IN (…)` list.
pub(crate) const IN_CHUNK: usize = 500;

async fn move_facts(tx: &WriteTxn, table: &str, key: &str, ids: &[String], to: &str) -> Result<(), DbErr> {
    for chunk in ids.chunks(IN_CHUNK) {
        let marks = vec!["?"; chunk.len()].join(", ");
        let mut values: Vec<Value> = vec![to.into()];
        values.extend(chunk.iter().map(|i| Value::from(i.clone())));
        tx.execute_raw(tx.stmt(&format!("UPDATE {table} SET customer_id = ? WHERE {key} IN ({marks})"), values))
            .await?;
    }
    Ok(())
}

/// Delete everything held about a customer, in every projection.
pub async fn erase(tx: &WriteTxn, customer: &str, now: DateTime<Utc>) -> Result<(), RuntimeError> {
    tx.execute_raw(tx.stmt(
        "DELETE FROM order_categories WHERE order_id IN (SELECT order_id FROM orders WHERE customer_id = ?)",
        vec![customer.into()],
    ))
    .await?;
    for table in ["orders", "customer_interactions", "customer_defections"] {
        tx.execute_raw(tx.stmt(&format!("DELETE FROM {table} WHERE customer_id = ?"), vec![customer.into()])).await?;
    }
    forget_derived(tx, customer).await?;
    values::erase(tx, customer, now).await
}

/// Delete the rows derived from a customer's facts (when none are left).
async fn forget_derived(tx: &WriteTxn, customer: &str) -> Result<(), DbErr> {
    for table in ["purchase_days", "customer_totals", "customer_summaries", "customer_scores", "customer_values"] {
        tx.execute_raw(tx.stmt(&format!("DELETE FROM {table} WHERE customer_id = ?"), vec![customer.into()])).await?;
    }
    Ok(())
}

/// Recompute a customer's derived rows from their facts and rescore them.
pub async fn refresh(tx: &WriteTxn, customer: &str, now: DateTime<Utc>) -> Result<(), RuntimeError> {
    let written = refresh_after(tx, vec![], customer, now).await?;
    Ok(crm_runtime::db::execute_all(&**tx, written).await?)
}

/// Run the `facts` statements, then [`refresh`], but for the statements
/// that store the new values, which are returned for the caller to run
/// before it reads them (or to defer).
async fn refresh_after(
    tx: &WriteTxn,
    facts: Vec<Statement>,
    customer: &str,
    now: DateTime<Utc>,
) -> Result<Vec<Statement>, RuntimeError> {
    if customer.is_empty() {
        crm_runtime::db::execute_all(&**tx, facts).await?;
        return Ok(vec![]);
    }
    let mut ctx = values::Context::load(&**tx).await?;
    // The interaction count and the purchase days (amounts in the active
    // model's currency), read with the facts' writes.
    let currency = ctx.model.as_ref().map_or("", |m| m.currency.as_str());
    let per_day = tx.stmt(
        "SELECT (SELECT COUNT(*) FROM customer_interactions WHERE customer_id = ?), d.day, d.n, d.lo, d.hi, d.revenue, d.margin \
         FROM (SELECT 1 AS one) x LEFT JOIN (SELECT day, COUNT(*) AS n, MIN(occur_us) AS lo, MAX(occur_us) AS hi, \
         CAST(SUM(CASE WHEN currency_code = ? THEN revenue_minor ELSE 0 END) AS BIGINT) AS revenue, \
         CAST(SUM(CASE WHEN currency_code = ? THEN revenue_minor - cost_minor ELSE 0 END) AS BIGINT) AS margin \
         FROM orders WHERE customer_id = ? GROUP BY day) d ON 1 = 1 ORDER BY d.day",
        vec![customer.into(), currency.into(), currency.into(), customer.into()],
    );
    let rows = crm_runtime::db::query_all_after(&**tx, facts, per_day).await?;
    let (mut interactions, mut orders, mut first, mut last) = (0i64, 0i64, None::<i64>, None::<i64>);
    let mut days = Vec::with_capacity(rows.len());
    for r in &rows {
        interactions = r.try_get_by_index(0)?;
        let Some(day) = r.try_get_by_index::<Option<i64>>(1)? else { continue };
        let (lo, hi): (i64, i64) = (r.try_get_by_index(3)?, r.try_get_by_index(4)?);
        orders += r.try_get_by_index::<i64>(2)?;
        first = Some(first.map_or(lo, |f| f.min(lo)));
        last = Some(last.map_or(hi, |l| l.max(hi)));
        days.push(PurchaseDay { day, revenue_minor: r.try_get_by_index(5)?, margin_minor: r.try_get_by_index(6)? });
    }
    let transactions = days.len() as i64;
    if orders == 0 && interactions == 0 {
        // Facts moved away (a merge): nothing is derived from them any more;
        // the tier change log stays, and the referrers credited lose them.
        forget_derived(tx, customer).await?;
        segments::reevaluate(tx, customer, now).await?;
        values::revalue_referrers(tx, customer, now).await?;
        return Ok(vec![]);
    }
    // The derived rows and the score, rebuilt in one round trip on SQLite.
    let scores = models::rescore_customer(tx, ctx.model.as_ref(), customer, &days, now);
    let mut rebuild = vec![
        tx.stmt("DELETE FROM purchase_days WHERE customer_id = ?", vec![customer.into()]),
        tx.stmt(
            "INSERT INTO purchase_days (customer_id, day) SELECT DISTINCT customer_id, day FROM orders WHERE customer_id = ?",
            vec![customer.into()],
        ),
        tx.stmt("DELETE FROM customer_totals WHERE customer_id = ?", vec![customer.into()]),
        tx.stmt(
            "INSERT INTO customer_totals (customer_id, currency_code, revenue_minor, cost_minor, order_count) \
             SELECT customer_id, currency_code, CAST(SUM(revenue_minor) AS BIGINT), CAST(SUM(cost_minor) AS BIGINT), COUNT(*) \
             FROM orders WHERE customer_id = ? GROUP BY customer_id, currency_code",
            vec![customer.into()],
        ),
        tx.stmt(
        "INSERT INTO customer_summaries (customer_id, interaction_count, order_count, transaction_count, first_purchase_us, last_purchase_us, updated_at_us) \
         VALUES (?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT (customer_id) DO UPDATE SET interaction_count = excluded.interaction_count, order_count = excluded.order_count, \
         transaction_count = excluded.transaction_count, first_purchase_us = excluded.first_purchase_us, \
         last_purchase_us = excluded.last_purchase_us, updated_at_us = excluded.updated_at_us",
        vec![
            customer.into(),
            interactions.into(),
            orders.into(),
            transactions.into(),
            first.into(),
            last.into(),
            now.timestamp_micros().into(),
        ],
        ),
    ];
    rebuild.extend(scores);
    values::revalue_with_referrers(tx, &mut ctx, rebuild, customer, now).await
}

/// A customer's purchase days (ascending), with that day's revenue and
/// margin in `currency` (days in other currencies count as transactions
/// with no amount in it).
pub async fn purchase_days<C: ConnectionTrait>(
    c: &C,
    customer: &str,
    currency: &str,
) -> Result<Vec<PurchaseDay>, DbErr> {
    let rows = c
        .query_all_raw(crm_runtime::db::stmt(
            c.get_database_backend(),
            "SELECT day, CAST(SUM(CASE WHEN currency_code = ? THEN revenue_minor ELSE 0 END) AS BIGINT), \
             CAST(SUM(CASE WHEN currency_code = ? THEN revenue_minor - cost_minor ELSE 0 END) AS BIGINT) \
             FROM orders WHERE customer_id = ? GROUP BY day ORDER BY day",
            vec![currency.into(), currency.into(), customer.into()],
        ))
        .await?;
    rows.iter()
        .map(|r| {
            Ok(PurchaseDay {
                day: r.try_get_by_index(0)?,
                revenue_minor: r.try_get_by_index(1)?,
                margin_minor: r.try_get_by_index(2)?,
            })
        })
        .collect()
}

/// The purchase summary of a customer as far as the projection knows (an
/// unknown customer has an empty history, not an error: prospects have
/// none), and when it last changed.
pub async fn purchase_summary<C: ConnectionTrait>(
    c: &C,
    customer: &str,
    now: DateTime<Utc>,
) -> Result<(pb::PurchaseSummary, Option<prost_types::Timestamp>), RuntimeError> {
    let row = c
        .query_one_raw(values::q(
            c,
            "SELECT interaction_count, order_count, transaction_count, first_purchase_us, last_purchase_us, updated_at_us \
             FROM customer_summaries WHERE customer_id = ?",
            vec![customer.into()],
        ))
        .await?;
    let Some(r) = row else { return Ok((pb::PurchaseSummary::default(), None)) };
    let counts = Counts {
        orders: r.try_get_by_index(1)?,
        transactions: r.try_get_by_index(2)?,
        first_purchase_us: r.try_get_by_index(3)?,
        last_purchase_us: r.try_get_by_index(4)?,
    };
    let derived = domain::derive(&counts, now);
    let ts = |us: Option<i64>| us.and_then(chrono::DateTime::from_timestamp_micros).map(time::to_timestamp);
    let mut summary = pb::PurchaseSummary {
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
    let update_time = ts(Some(r.try_get_by_index(5)?));
    let totals = c
        .query_all_raw(values::q(
            c,
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
    Ok((summary, update_time))
}

/// Whether PostgreSQL (for advisory locks).
pub(crate) fn is_postgres(tx: &WriteTxn) -> bool {
    tx.get_database_backend() == DatabaseBackend::Postgres
}
