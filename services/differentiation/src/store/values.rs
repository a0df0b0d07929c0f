//! Customer values and tiers (DF-3, DF-4, DF-5), tier policies and the
//! tier change log, the remaining DF-1 inputs, and the profitability
//! matrix (DF-8).
//!
//! A customer's value row is recomputed from their facts inside the feed
//! consumer's transaction after every change to them (and to the customers
//! they referred), and their tier re-evaluated against the stored
//! boundaries. The boundaries (percentile thresholds, RFM quintiles) are
//! recomputed over the whole population — with every customer's tier
//! re-evaluated — when a policy version is stored, when a value model is
//! activated, after every N applied interaction events and periodically.
//! Segment memberships follow both (see [`super::segments`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use crm_proto::{common::v1::Money, differentiation::v1 as pb, identification::v1::Profile};
use crm_runtime::{
    db::{Store, WriteTxn},
    error::RuntimeError,
    idempotency::{self, Claim},
    ids::new_id,
    time,
};
use prost::Message;
use sea_orm::{ConnectionTrait, DbErr, Value};

use crate::{
    conversions,
    domain::{
        self,
        value::{self as dv, Inputs, Policy, RfmCuts, Thresholds, Tier},
    },
};

pub(crate) fn q<C: ConnectionTrait>(c: &C, sql: &str, values: Vec<Value>) -> sea_orm::Statement {
    crm_runtime::db::stmt(c.get_database_backend(), sql, values)
}

/// ` AND <col> = ?` for one customer, or nothing for everyone.
pub(crate) fn only(col: &str, customer: Option<&str>, values: &mut Vec<Value>) -> String {
    match customer {
        Some(c) => {
            values.push(c.into());
            format!(" AND {col} = ?")
        }
        None => String::new(),
    }
}

// ---------------------------------------------------------------- policies

/// The etag of a policy version.
pub fn etag(version: i64) -> String {
    format!("\"tier-policy-{version}\"")
}

/// The policy in force and when it was stored (version 1 is the built-in
/// default until a policy is stored; `start` stores one).
pub async fn current_policy<C: ConnectionTrait>(c: &C) -> Result<(Policy, i64), RuntimeError> {
    let row = c
        .query_one_raw(q(
            c,
            "SELECT version, body, created_us FROM tier_policies ORDER BY version DESC LIMIT 1",
            vec![],
        ))
        .await?;
    let Some(r) = row else { return Ok((Policy { version: 1, ..Policy::default() }, 0)) };
    let version: i64 = r.try_get_by_index(0)?;
    let body: Vec<u8> = r.try_get_by_index(1)?;
    let stored = pb::TierPolicy::decode(body.as_slice())
        .map_err(|e| RuntimeError::Internal(format!("stored tier policy undecodable: {e}")))?;
    let mut policy = conversions::policy_from_proto(&stored);
    policy.version = version;
    Ok((policy, r.try_get_by_index(2)?))
}

/// The policy as the API shows it.
pub fn policy_proto(p: &Policy, created_us: i64) -> pb::TierPolicy {
    pb::TierPolicy {
        version: p.version,
        etag: etag(p.version),
        create_time: DateTime::from_timestamp_micros(created_us).filter(|_| created_us > 0).map(time::to_timestamp),
        ..conversions::policy_to_proto(p)
    }
}

async fn insert_policy(tx: &WriteTxn, p: &Policy, created_us: i64) -> Result<(), DbErr> {
    let body = conversions::policy_to_proto(p).encode_to_vec();
    tx.execute_raw(tx.stmt(
        "INSERT INTO tier_policies (version, body, created_us) VALUES (?, ?, ?) ON CONFLICT (version) DO NOTHING",
        vec![p.version.into(), body.into(), created_us.into()],
    ))
    .await?;
    Ok(())
}

/// Store `initial` as version 1 if no policy is stored yet.
pub async fn ensure_policy(store: &Store, initial: &Policy) -> Result<(), DbErr> {
    let tx = store.begin_write().await?;
    let n: i64 = tx
        .query_one_raw(tx.stmt("SELECT COUNT(*) FROM tier_policies", vec![]))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("count".into()))?
        .try_get_by_index(0)?;
    if n == 0 {
        insert_policy(&tx, &Policy { version: 1, ..initial.clone() }, time::now().timestamp_micros()).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// A policy update.
#[derive(Debug, Clone)]
pub struct PolicyUpdate {
    /// The new policy (its version is assigned).
    pub policy: Policy,
    /// The etag the caller saw, if it checks one.
    pub etag: String,
    /// Idempotency key.
    pub request_id: String,
    /// Fingerprint of the request.
    pub fingerprint: i64,
}

const POLICY_SCOPE: &str = "UpdateTierPolicy";

/// Store a new policy version and re-tier the population under it.
pub async fn update_policy(store: &Store, cmd: PolicyUpdate) -> Result<pb::TierPolicy, RuntimeError> {
    let tx = store.begin_write().await?;
    if let Claim::Replay(r) =
        idempotency::claim::<pb::UpdateTierPolicyResponse>(&tx, POLICY_SCOPE, &cmd.request_id, cmd.fingerprint).await?
    {
        tx.rollback().await?;
        return r.policy.ok_or_else(|| RuntimeError::Internal("stored policy response without policy".into()));
    }
    super::models::lock_scores(&tx).await?;
    let (current, _) = current_policy(&*tx).await?;
    if !cmd.etag.is_empty() && cmd.etag != etag(current.version) {
        return Err(RuntimeError::FailedPrecondition(format!(
            "the tier policy changed (now {}); read it again and retry",
            etag(current.version)
        )));
    }
    let now = time::now();
    let policy = Policy { version: current.version + 1, ..cmd.policy };
    insert_policy(&tx, &policy, now.timestamp_micros()).await?;
    recompute_all(&tx, now).await?;
    let proto = policy_proto(&policy, now.timestamp_micros());
    let response = pb::UpdateTierPolicyResponse { policy: Some(proto.clone()) };
    idempotency::complete(&tx, POLICY_SCOPE, &cmd.request_id, &response).await?;
    tx.commit().await?;
    Ok(proto)
}

// ------------------------------------------------------------------ inputs

/// Merge aliases: merged-away id → the profile it was merged into.
async fn aliases<C: ConnectionTrait>(c: &C) -> Result<HashMap<String, String>, DbErr> {
    let rows = c.query_all_raw(q(c, "SELECT alias_id, profile_id FROM profile_aliases", vec![])).await?;
    rows.iter().map(|r| Ok((r.try_get_by_index(0)?, r.try_get_by_index(1)?))).collect()
}

/// Every id that stands for `customer` (itself and its aliases).
fn names_of(customer: &str, aliases: &HashMap<String, String>) -> Vec<String> {
    let mut out = vec![customer.to_owned()];
    out.extend(aliases.keys().filter(|a| dv::resolve(a, aliases) == customer && *a != customer).cloned());
    out
}

/// [`names_of`] `customer`, read from the store without loading every
/// alias: the aliases merged into it are found by following the aliases
/// table backwards from it, as far as [`dv::resolve`] follows it forwards.
/// A merged-away id stands only for itself.
async fn names_for<C: ConnectionTrait>(c: &C, customer: &str) -> Result<Vec<String>, DbErr> {
    let mut out = vec![customer.to_owned()];
    let merged = c
        .query_one_raw(q(
            c,
            "SELECT 1 FROM profile_aliases WHERE alias_id = ? AND profile_id <> alias_id",
            vec![customer.into()],
        ))
        .await?;
    if merged.is_some() {
        return Ok(out);
    }
    let mut frontier = out.clone();
    for _ in 0..dv::MAX_ALIAS_HOPS {
        if frontier.is_empty() {
            break;
        }
        let mut next = Vec::new();
        for chunk in frontier.chunks(super::IN_CHUNK) {
            let sql = format!(
                "SELECT alias_id FROM profile_aliases WHERE profile_id IN ({}) AND alias_id <> profile_id",
                in_list(chunk.len())
            );
            let values = chunk.iter().map(|n| Value::from(n.clone())).collect();
            for r in c.query_all_raw(q(c, &sql, values)).await? {
                let alias: String = r.try_get_by_index(0)?;
                if !out.contains(&alias) {
                    out.push(alias.clone());
                    next.push(alias);
                }
            }
        }
        frontier = next;
    }
    Ok(out)
}

fn in_list(n: usize) -> String {
    vec!["?"; n.max(1)].join(", ")
}

async fn referral_rows<C: ConnectionTrait>(
    c: &C,
    sql_where: &str,
    values: Vec<Value>,
) -> Result<Vec<dv::Referral>, DbErr> {
    let rows = c
        .query_all_raw(q(
            c,
            &format!("SELECT customer_id, referred_id, occur_us, interaction_id FROM customer_referrals {sql_where}"),
            values,
        ))
        .await?;
    rows.iter()
        .map(|r| {
            Ok(dv::Referral {
                referrer: r.try_get_by_index(0)?,
                referred: r.try_get_by_index(1)?,
                occur_us: r.try_get_by_index(2)?,
                interaction_id: r.try_get_by_index(3)?,
            })
        })
        .collect()
}

/// The customers credited to `customer` as referred by them (the aliases
/// are read only when they referred someone).
async fn credited<C: ConnectionTrait>(c: &C, customer: &str) -> Result<BTreeSet<String>, DbErr> {
    let own = referral_rows(c, "WHERE customer_id = ?", vec![customer.into()]).await?;
    if own.is_empty() {
        return Ok(BTreeSet::new());
    }
    let aliases = &aliases(c).await?;
    // Every referral naming any of those customers competes for them.
    let mut names: BTreeSet<String> = BTreeSet::new();
    for r in &own {
        names.extend(names_of(dv::resolve(&r.referred, aliases), aliases));
    }
    let names: Vec<String> = names.into_iter().collect();
    let mut all = Vec::new();
    for chunk in names.chunks(super::IN_CHUNK) {
        let values = chunk.iter().map(|n| Value::from(n.clone())).collect();
        all.extend(referral_rows(c, &format!("WHERE referred_id IN ({})", in_list(chunk.len())), values).await?);
    }
    Ok(dv::credits(&all, aliases).remove(dv::resolve(customer, aliases)).unwrap_or_default())
}

/// Referrers whose credit may include `customer` (referrals naming it or
/// one of its aliases).
async fn referrers_of<C: ConnectionTrait>(c: &C, customer: &str) -> Result<BTreeSet<String>, DbErr> {
    let names = names_for(c, customer).await?;
    let values = names.iter().map(|n| Value::from(n.clone())).collect();
    let rows = c
        .query_all_raw(q(
            c,
            &format!(
                "SELECT DISTINCT customer_id FROM customer_referrals WHERE referred_id IN ({})",
                in_list(names.len())
            ),
            values,
        ))
        .await?;
    let mut out = BTreeSet::new();
    for r in &rows {
        let id: String = r.try_get_by_index(0)?;
        if id != customer {
            out.insert(id);
        }
    }
    Ok(out)
}

/// Margin and revenue of customers in `currency`.
async fn totals<C: ConnectionTrait>(
    c: &C,
    currency: &str,
    customer: Option<&str>,
) -> Result<BTreeMap<String, (i64, i64)>, DbErr> {
    let mut values: Vec<Value> = vec![currency.into()];
    let f = only("customer_id", customer, &mut values);
    let rows = c
        .query_all_raw(q(
            c,
            &format!("SELECT customer_id, revenue_minor, cost_minor FROM customer_totals WHERE currency_code = ?{f}"),
            values,
        ))
        .await?;
    rows.iter()
        .map(|r| {
            let revenue: i64 = r.try_get_by_index(1)?;
            let cost: i64 = r.try_get_by_index(2)?;
            Ok((r.try_get_by_index(0)?, (revenue.saturating_sub(cost), revenue)))
        })
        .collect()
}

/// The value inputs of one customer (`Some`) or of everyone with facts.
pub async fn load_inputs<C: ConnectionTrait>(
    c: &C,
    policy: &Policy,
    today: i64,
    customer: Option<&str>,
) -> Result<BTreeMap<String, Inputs>, DbErr> {
    let currency = policy.currency.as_str();
    let mut out: BTreeMap<String, Inputs> = BTreeMap::new();
    let mut values = vec![];
    let f = only("customer_id", customer, &mut values);
    for r in c
        .query_all_raw(q(
            c,
            &format!("SELECT customer_id, transaction_count, last_purchase_us FROM customer_summaries WHERE 1 = 1{f}"),
            values,
        ))
        .await?
    {
        let last: Option<i64> = r.try_get_by_index(2)?;
        out.insert(
            r.try_get_by_index(0)?,
            Inputs {
                transactions: r.try_get_by_index(1)?,
                last_purchase_day: last.map(domain::day_of),
                ..Inputs::default()
            },
        );
    }
    if out.is_empty() {
        return Ok(out);
    }
    let margins = totals(c, currency, customer).await?;
    for (id, (margin, revenue)) in &margins {
        if let Some(i) = out.get_mut(id) {
            i.historical_margin = *margin;
            i.revenue = *revenue;
        }
    }
    let mut values: Vec<Value> = vec![currency.into()];
    let f = only("customer_id", customer, &mut values);
    for r in c
        .query_all_raw(q(
            c,
            &format!(
                "SELECT customer_id, clv_minor FROM customer_scores WHERE currency_code = ? AND clv_minor IS NOT NULL{f}"
            ),
            values,
        ))
        .await?
    {
        let id: String = r.try_get_by_index(0)?;
        if let Some(i) = out.get_mut(&id) {
            i.clv = r.try_get_by_index(1)?;
        }
    }
    for (id, per_channel) in channel_counts(c, customer).await? {
        if let Some(i) = out.get_mut(&id) {
            i.interactions = per_channel;
        }
    }
    for (id, declared) in declared_wallets(c, currency, customer).await? {
        if let Some(i) = out.get_mut(&id) {
            i.declared = declared;
        }
    }
    let since_day = today - dv::WALLET_WINDOW_DAYS;
    let mut values: Vec<Value> = vec![currency.into(), since_day.into()];
    let f = only("o.customer_id", customer, &mut values);
    for r in c
        .query_all_raw(q(
            c,
            &format!(
                "SELECT o.customer_id, oc.category, CAST(SUM(oc.revenue_minor) AS BIGINT) FROM order_categories oc \
                 JOIN orders o ON o.order_id = oc.order_id WHERE o.currency_code = ? AND o.day > ?{f} \
                 GROUP BY o.customer_id, oc.category"
            ),
            values,
        ))
        .await?
    {
        let id: String = r.try_get_by_index(0)?;
        if let Some(i) = out.get_mut(&id) {
            i.ours.insert(r.try_get_by_index(1)?, r.try_get_by_index(2)?);
        }
    }
    match customer {
        Some(id) => {
            let credited = credited(c, id).await?;
            if let Some(i) = out.get_mut(id) {
                i.referred_count = credited.len() as i64;
                for x in credited {
                    let t = totals(c, currency, Some(&x)).await?;
                    i.referral_value = i.referral_value.saturating_add(t.get(&x).map_or(0, |t| t.0));
                }
            }
        }
        None => {
            let aliases = aliases(c).await?;
            let all = referral_rows(c, "", vec![]).await?;
            for (referrer, referred) in dv::credits(&all, &aliases) {
                if let Some(i) = out.get_mut(&referrer) {
                    i.referred_count = referred.len() as i64;
                    i.referral_value =
                        referred.iter().fold(0i64, |a, x| a.saturating_add(margins.get(x).map_or(0, |t| t.0)));
                }
            }
        }
    }
    Ok(out)
}

/// Interactions per channel of one customer (`Some`) or of everyone.
pub(crate) async fn channel_counts<C: ConnectionTrait>(
    c: &C,
    customer: Option<&str>,
) -> Result<BTreeMap<String, BTreeMap<i32, i64>>, DbErr> {
    let mut out: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
    let mut values = vec![];
    let f = only("customer_id", customer, &mut values);
    let sql = format!(
        "SELECT customer_id, channel, COUNT(*) FROM customer_interactions WHERE 1 = 1{f} GROUP BY customer_id, channel"
    );
    for r in c.query_all_raw(q(c, &sql, values)).await? {
        out.entry(r.try_get_by_index(0)?).or_default().insert(r.try_get_by_index(1)?, r.try_get_by_index(2)?);
    }
    Ok(out)
}

/// Declared spend per category of one customer (`Some`) or of everyone, in
/// `currency`: the latest declaration of a category wins; one in another
/// currency (or of 0) declares nothing in this one.
pub(crate) async fn declared_wallets<C: ConnectionTrait>(
    c: &C,
    currency: &str,
    customer: Option<&str>,
) -> Result<BTreeMap<String, BTreeMap<String, i64>>, DbErr> {
    let mut out: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    let mut values = vec![];
    let f = only("customer_id", customer, &mut values);
    let sql = format!(
        "SELECT customer_id, category, currency_code, amount_minor FROM customer_wallets WHERE 1 = 1{f} \
         ORDER BY customer_id, category, occur_us, interaction_id"
    );
    for r in c.query_all_raw(q(c, &sql, values)).await? {
        let declared = out.entry(r.try_get_by_index(0)?).or_default();
        let category: String = r.try_get_by_index(1)?;
        let cur: String = r.try_get_by_index(2)?;
        let amount: i64 = r.try_get_by_index(3)?;
        if amount > 0 && (cur.is_empty() || cur == currency) {
            declared.insert(category, amount);
        } else {
            declared.remove(&category);
        }
    }
    Ok(out)
}

// -------------------------------------------------------------- boundaries

/// The stored boundaries.
#[derive(Debug, Clone)]
struct State {
    policy_version: i64,
    thresholds: Thresholds,
}

fn encode_cuts(c: &RfmCuts) -> String {
    c.recency_days.iter().chain(&c.frequency).chain(&c.monetary).map(f64::to_string).collect::<Vec<_>>().join(",")
}

fn decode_cuts(s: &str) -> RfmCuts {
    let v: Vec<f64> = s.split(',').filter_map(|x| x.parse().ok()).collect();
    let four = |i: usize| -> [f64; 4] { std::array::from_fn(|j| v.get(i * 4 + j).copied().unwrap_or(0.0)) };
    RfmCuts { recency_days: four(0), frequency: four(1), monetary: four(2) }
}

async fn state<C: ConnectionTrait>(c: &C) -> Result<Option<State>, DbErr> {
    let row = c
        .query_one_raw(q(
            c,
            "SELECT policy_version, most_valuable_minor, most_growable_minor, rfm_cuts, population FROM tier_state WHERE id = 1",
            vec![],
        ))
        .await?;
    let Some(r) = row else { return Ok(None) };
    let cuts: String = r.try_get_by_index(3)?;
    Ok(Some(State {
        policy_version: r.try_get_by_index(0)?,
        thresholds: Thresholds {
            most_valuable: r.try_get_by_index(1)?,
            most_growable: r.try_get_by_index(2)?,
            rfm: decode_cuts(&cuts),
            population: r.try_get_by_index(4)?,
        },
    }))
}

/// One evaluated customer.
struct Evaluated {
    id: String,
    value: dv::Value,
    rfm: Option<(i32, i32, i32)>,
    decision: dv::Decision,
    from: Option<Tier>,
    referred_count: i64,
}

/// Evaluate a customer holding `current`; `hysteresis` false assigns
/// afresh (a new policy version's first boundaries).
fn evaluate(
    id: String,
    inputs: &Inputs,
    policy: &Policy,
    t: &Thresholds,
    today: i64,
    current: Option<Tier>,
    hysteresis: bool,
) -> Evaluated {
    let value = dv::value(inputs, policy);
    let mut decision = dv::assign(&value, current.filter(|_| hysteresis), t, policy);
    decision.changed = current != Some(decision.tier);
    Evaluated {
        id,
        value,
        rfm: dv::rfm(inputs, &t.rfm, today),
        decision,
        from: current,
        referred_count: inputs.referred_count,
    }
}

const VALUE_COLUMNS: &str = "customer_id, currency_code, historical_margin_minor, clv_minor, referral_value_minor, referred_count, \
     real_value_minor, cost_to_serve_minor, net_value_minor, strategic_value_minor, rfm_recency, rfm_frequency, rfm_monetary, \
     tier, tier_reason, policy_version, updated_us";

fn value_values(e: &Evaluated, policy: &Policy, now_us: i64) -> Vec<Value> {
    let (r, f, m) = e.rfm.unwrap_or((0, 0, 0));
    vec![
        e.id.clone().into(),
        policy.currency.clone().into(),
        e.value.historical_margin.into(),
        e.value.clv.into(),
        e.value.referral_value.into(),
        e.referred_count.into(),
        e.value.real.into(),
        e.value.cost_to_serve.into(),
        e.value.net.into(),
        e.value.strategic.into(),
        r.into(),
        f.into(),
        m.into(),
        e.decision.tier.number().into(),
        e.decision.reason.clone().into(),
        policy.version.into(),
        now_us.into(),
    ]
}

async fn record_change(tx: &WriteTxn, e: &Evaluated, policy: &Policy, now_us: i64) -> Result<(), DbErr> {
    tx.execute_raw(tx.stmt(
        "INSERT INTO tier_changes (id, customer_id, from_tier, to_tier, reason, policy_version, change_us) VALUES (?, ?, ?, ?, ?, ?, ?)",
        vec![
            new_id().into(),
            e.id.clone().into(),
            e.from.map_or(0, Tier::number).into(),
            e.decision.tier.number().into(),
            e.decision.reason.clone().into(),
            policy.version.into(),
            now_us.into(),
        ],
    ))
    .await?;
    Ok(())
}

/// Rows per multi-row insert (17 values each).
const BATCH: usize = 200;

/// Recompute the boundaries over the population and re-tier everyone. The
/// first boundaries of a policy version assign tiers afresh (a new policy
/// is a deliberate re-tiering); later ones keep the hysteresis. The caller
/// holds the scores lock.
pub async fn recompute_all(tx: &WriteTxn, now: DateTime<Utc>) -> Result<(), RuntimeError> {
    let (policy, _) = current_policy(&**tx).await?;
    let hysteresis = state(&**tx).await?.is_some_and(|s| s.policy_version == policy.version);
    let today = domain::day_of(now.timestamp_micros());
    let inputs = load_inputs(&**tx, &policy, today, None).await?;
    let valued: Vec<(dv::Value, &Inputs)> = inputs.values().map(|i| (dv::value(i, &policy), i)).collect();
    let thresholds = dv::thresholds(&valued, &policy, today);
    let mut current: HashMap<String, Tier> = HashMap::new();
    for r in tx.query_all_raw(tx.stmt("SELECT customer_id, tier FROM customer_values", vec![])).await? {
        if let Some(t) = Tier::from_number(r.try_get_by_index(1)?) {
            current.insert(r.try_get_by_index(0)?, t);
        }
    }
    let now_us = now.timestamp_micros();
    let evaluated: Vec<Evaluated> = inputs
        .iter()
        .map(|(id, i)| evaluate(id.clone(), i, &policy, &thresholds, today, current.get(id).copied(), hysteresis))
        .collect();
    tx.execute_raw(tx.stmt("DELETE FROM customer_values", vec![])).await?;
    for chunk in evaluated.chunks(BATCH) {
        let marks = vec![format!("({})", in_list(17)); chunk.len()].join(", ");
        let values = chunk.iter().flat_map(|e| value_values(e, &policy, now_us)).collect();
        tx.execute_raw(tx.stmt(&format!("INSERT INTO customer_values ({VALUE_COLUMNS}) VALUES {marks}"), values))
            .await?;
    }
    for e in evaluated.iter().filter(|e| e.decision.changed) {
        record_change(tx, e, &policy, now_us).await?;
    }
    tx.execute_raw(tx.stmt(
        "INSERT INTO tier_state (id, policy_version, most_valuable_minor, most_growable_minor, rfm_cuts, population, computed_us, events_since) \
         VALUES (1, ?, ?, ?, ?, ?, ?, 0) ON CONFLICT (id) DO UPDATE SET policy_version = excluded.policy_version, \
         most_valuable_minor = excluded.most_valuable_minor, most_growable_minor = excluded.most_growable_minor, \
         rfm_cuts = excluded.rfm_cuts, population = excluded.population, computed_us = excluded.computed_us, events_since = 0",
        vec![
            policy.version.into(),
            thresholds.most_valuable.into(),
            thresholds.most_growable.into(),
            encode_cuts(&thresholds.rfm).into(),
            thresholds.population.into(),
            now_us.into(),
        ],
    ))
    .await?;
    tracing::debug!(population = thresholds.population, policy = policy.version, "tier boundaries recomputed");
    super::segments::reevaluate_all(tx, now).await
}

/// Recompute the boundaries in a transaction of its own (the periodic job).
pub async fn recompute(store: &Store) -> Result<(), RuntimeError> {
    let tx = store.begin_write().await?;
    super::models::lock_scores(&tx).await?;
    recompute_all(&tx, time::now()).await?;
    tx.commit().await?;
    Ok(())
}

/// Count an applied interaction event; recompute the boundaries when
/// `every` events have been applied since the last time (or when there are
/// none yet).
pub async fn after_event(tx: &WriteTxn, now: DateTime<Utc>, every: u64) -> Result<(), RuntimeError> {
    let bumped = tx
        .query_one_raw(
            tx.stmt(
                "UPDATE tier_state SET events_since = events_since + 1 WHERE id = 1 RETURNING events_since",
                vec![],
            ),
        )
        .await?;
    let Some(row) = bumped else { return recompute_all(tx, now).await };
    let since: i64 = row.try_get_by_index(0)?;
    if every > 0 && since >= every as i64 {
        recompute_all(tx, now).await?;
    }
    Ok(())
}

/// Re-evaluate one customer's value and tier against the current
/// boundaries (all of them, if the boundaries belong to another policy).
/// The caller (a feed consumer) holds the scores lock.
pub async fn revalue(tx: &WriteTxn, customer: &str, now: DateTime<Utc>) -> Result<(), RuntimeError> {
    if customer.is_empty() {
        return Ok(());
    }
    let (policy, _) = current_policy(&**tx).await?;
    let Some(state) = state(&**tx).await?.filter(|s| s.policy_version == policy.version) else {
        return recompute_all(tx, now).await;
    };
    let today = domain::day_of(now.timestamp_micros());
    let inputs = load_inputs(&**tx, &policy, today, Some(customer)).await?;
    let Some(i) = inputs.get(customer) else {
        tx.execute_raw(tx.stmt("DELETE FROM customer_values WHERE customer_id = ?", vec![customer.into()])).await?;
        return super::segments::reevaluate(tx, customer, now).await;
    };
    let current = tx
        .query_one_raw(tx.stmt("SELECT tier FROM customer_values WHERE customer_id = ?", vec![customer.into()]))
        .await?
        .map(|r| r.try_get_by_index::<i32>(0))
        .transpose()?
        .and_then(Tier::from_number);
    let e = evaluate(customer.to_owned(), i, &policy, &state.thresholds, today, current, true);
    let now_us = now.timestamp_micros();
    tx.execute_raw(tx.stmt("DELETE FROM customer_values WHERE customer_id = ?", vec![customer.into()])).await?;
    tx.execute_raw(tx.stmt(
        &format!("INSERT INTO customer_values ({VALUE_COLUMNS}) VALUES ({})", in_list(17)),
        value_values(&e, &policy, now_us),
    ))
    .await?;
    if e.decision.changed {
        record_change(tx, &e, &policy, now_us).await?;
    }
    super::segments::reevaluate(tx, customer, now).await
}

/// Re-evaluate the referrers whose credit may include `customer`.
pub async fn revalue_referrers(tx: &WriteTxn, customer: &str, now: DateTime<Utc>) -> Result<(), RuntimeError> {
    for r in referrers_of(&**tx, customer).await? {
        revalue(tx, &r, now).await?;
    }
    Ok(())
}

// ------------------------------------------------------ identity and facts

/// Keep a REFERRAL's referred customer or a PREFERENCE_STATEMENT's needs
/// and wallet. Returns the referred customer, if any.
pub async fn record_statement(
    tx: &WriteTxn,
    customer: &str,
    interaction: &crm_proto::interaction::v1::Interaction,
    occur_us: i64,
) -> Result<Option<String>, DbErr> {
    use crm_proto::interaction::v1::InteractionType;
    let id = interaction.id.clone();
    if interaction.r#type == InteractionType::Referral as i32 {
        let Some(referred) = dv::referred(&interaction.attributes) else { return Ok(None) };
        tx.execute_raw(tx.stmt(
            "INSERT INTO customer_referrals (interaction_id, customer_id, referred_id, occur_us) VALUES (?, ?, ?, ?) \
             ON CONFLICT (interaction_id) DO NOTHING",
            vec![id.into(), customer.into(), referred.clone().into(), occur_us.into()],
        ))
        .await?;
        return Ok(Some(referred));
    }
    if interaction.r#type != InteractionType::PreferenceStatement as i32 {
        return Ok(None);
    }
    let s = dv::statement(&interaction.attributes);
    for (need, stated) in &s.needs {
        tx.execute_raw(tx.stmt(
            "INSERT INTO customer_needs (interaction_id, need, customer_id, stated, occur_us) VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (interaction_id, need) DO NOTHING",
            vec![id.clone().into(), need.clone().into(), customer.into(), (*stated).into(), occur_us.into()],
        ))
        .await?;
    }
    for (category, amount) in &s.wallet {
        tx.execute_raw(tx.stmt(
            "INSERT INTO customer_wallets (interaction_id, category, customer_id, currency_code, amount_minor, occur_us) \
             VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (interaction_id, category) DO NOTHING",
            vec![
                id.clone().into(),
                category.clone().into(),
                customer.into(),
                s.wallet_currency.clone().unwrap_or_default().into(),
                (*amount).into(),
                occur_us.into(),
            ],
        ))
        .await?;
    }
    Ok(None)
}

/// The tables of interaction facts keyed by interaction id.
pub const STATEMENT_TABLES: [&str; 3] = ["customer_referrals", "customer_needs", "customer_wallets"];

/// Keep a profile's traits (the whole map, as of its latest state).
pub async fn set_traits(tx: &WriteTxn, profile: &Profile) -> Result<(), DbErr> {
    if profile.id.is_empty() {
        return Ok(());
    }
    tx.execute_raw(tx.stmt("DELETE FROM customer_traits WHERE customer_id = ?", vec![profile.id.clone().into()]))
        .await?;
    if profile.traits.is_empty() {
        return Ok(());
    }
    let body = Profile { traits: profile.traits.clone(), ..Default::default() }.encode_to_vec();
    tx.execute_raw(tx.stmt(
        "INSERT INTO customer_traits (customer_id, traits) VALUES (?, ?)",
        vec![profile.id.clone().into(), body.into()],
    ))
    .await?;
    Ok(())
}

/// `merged` now stands for `surviving`.
pub async fn alias(tx: &WriteTxn, merged: &str, surviving: &str, now: DateTime<Utc>) -> Result<(), RuntimeError> {
    tx.execute_raw(tx.stmt("DELETE FROM profile_aliases WHERE alias_id = ?", vec![merged.into()])).await?;
    tx.execute_raw(tx.stmt(
        "INSERT INTO profile_aliases (alias_id, profile_id) VALUES (?, ?)",
        vec![merged.into(), surviving.into()],
    ))
    .await?;
    tx.execute_raw(tx.stmt("DELETE FROM customer_traits WHERE customer_id = ?", vec![merged.into()])).await?;
    revalue_referrers(tx, surviving, now).await
}

/// `restored` stands for itself again.
pub async fn unalias(tx: &WriteTxn, restored: &str, surviving: &str, now: DateTime<Utc>) -> Result<(), RuntimeError> {
    let before = referrers_of(&**tx, surviving).await?;
    tx.execute_raw(tx.stmt("DELETE FROM profile_aliases WHERE alias_id = ?", vec![restored.into()])).await?;
    for r in before {
        revalue(tx, &r, now).await?;
    }
    revalue_referrers(tx, restored, now).await
}

/// Delete the value projections' data about `customer` (erasure), then
/// re-evaluate the referrers it was credited to.
pub async fn erase(tx: &WriteTxn, customer: &str, now: DateTime<Utc>) -> Result<(), RuntimeError> {
    let mut referrers = referrers_of(&**tx, customer).await?;
    // Whom they referred may now be credited to another referrer.
    let referred = referral_rows(&**tx, "WHERE customer_id = ?", vec![customer.into()]).await?;
    for r in &referred {
        referrers.extend(referrers_of(&**tx, &r.referred).await?);
    }
    referrers.remove(customer);
    // The ids merged into them stand for the same person: their remains go too.
    let names = names_for(&**tx, customer).await?;
    let list = in_list(names.len());
    let values = || names.iter().map(|n| Value::from(n.clone())).collect::<Vec<_>>();
    tx.execute_raw(tx.stmt(&format!("DELETE FROM customer_referrals WHERE referred_id IN ({list})"), values())).await?;
    for table in [
        "customer_referrals",
        "customer_needs",
        "customer_wallets",
        "customer_traits",
        "customer_values",
        "tier_changes",
        "segment_members",
    ] {
        tx.execute_raw(tx.stmt(&format!("DELETE FROM {table} WHERE customer_id IN ({list})"), values())).await?;
    }
    tx.execute_raw(tx.stmt(
        &format!("DELETE FROM profile_aliases WHERE alias_id IN ({list}) OR profile_id IN ({list})"),
        values().into_iter().chain(values()).collect(),
    ))
    .await?;
    for r in referrers {
        revalue(tx, &r, now).await?;
    }
    Ok(())
}

// ------------------------------------------------------------------- reads

fn money(currency: &str, minor: i64) -> Option<Money> {
    Some(Money { currency_code: currency.to_owned(), minor_units: minor })
}

/// Fill in what the value projections know of `v.customer_id`.
pub async fn fill(store: &Store, v: &mut pb::CustomerValue, now: DateTime<Utc>) -> Result<(), RuntimeError> {
    let c = store.conn();
    let customer = v.customer_id.clone();
    if let Some(r) = c
        .query_one_raw(
            store.stmt("SELECT traits FROM customer_traits WHERE customer_id = ?", vec![customer.clone().into()]),
        )
        .await?
    {
        let body: Vec<u8> = r.try_get_by_index(0)?;
        let p = Profile::decode(body.as_slice())
            .map_err(|e| RuntimeError::Internal(format!("stored traits undecodable: {e}")))?;
        v.traits = p.traits;
    }
    let mut needs: BTreeMap<String, bool> = BTreeMap::new();
    for r in c
        .query_all_raw(store.stmt(
            "SELECT need, stated FROM customer_needs WHERE customer_id = ? ORDER BY occur_us, interaction_id",
            vec![customer.clone().into()],
        ))
        .await?
    {
        needs.insert(r.try_get_by_index(0)?, r.try_get_by_index(1)?);
    }
    v.needs = needs.into_iter().filter(|(_, s)| *s).map(|(n, _)| n).collect();
    let Some(r) = c
        .query_one_raw(store.stmt(
            &format!("SELECT {VALUE_COLUMNS} FROM customer_values WHERE customer_id = ?"),
            vec![customer.clone().into()],
        ))
        .await?
    else {
        return Ok(());
    };
    let cur: String = r.try_get_by_index(1)?;
    let get = |i: usize| r.try_get_by_index::<i64>(i);
    v.historical_margin = money(&cur, get(2)?);
    v.referral_value = money(&cur, get(4)?);
    v.referred_customer_count = get(5)?;
    v.real_value = money(&cur, get(6)?);
    v.cost_to_serve = money(&cur, get(7)?);
    v.net_value = money(&cur, get(8)?);
    v.strategic_value = money(&cur, get(9)?);
    let (rr, rf, rm): (i32, i32, i32) = (r.try_get_by_index(10)?, r.try_get_by_index(11)?, r.try_get_by_index(12)?);
    if rr > 0 {
        v.rfm = Some(pb::RfmScore { recency: rr, frequency: rf, monetary: rm, code: format!("{rr}{rf}{rm}") });
    }
    v.tier = r.try_get_by_index(13)?;
    v.tier_reason = r.try_get_by_index(14)?;
    v.tier_policy_version = get(15)?;
    // The breakdowns, from the facts under the policy in force.
    let (policy, _) = current_policy(c).await?;
    let inputs = load_inputs(c, &policy, domain::day_of(now.timestamp_micros()), Some(&customer)).await?;
    if let Some(i) = inputs.get(&customer) {
        let pc = policy.currency.as_str();
        v.wallet = dv::growth_by_category(i)
            .into_iter()
            .map(|(category, growth)| pb::CategoryWallet {
                declared_spend: money(pc, i.declared.get(&category).copied().unwrap_or(0)),
                our_spend: money(pc, i.ours.get(&category).copied().unwrap_or(0)),
                growth_potential: money(pc, growth),
                category,
            })
            .collect();
        v.channel_use = i
            .interactions
            .iter()
            .map(|(channel, n)| pb::ChannelUse {
                channel: *channel,
                interaction_count: *n,
                cost_to_serve: money(
                    pc,
                    n.saturating_mul(policy.cost_per_interaction.get(channel).copied().unwrap_or(0)),
                ),
            })
            .collect();
    }
    Ok(())
}

/// Customers by real value (highest first, then by id), optionally of one
/// tier, after the keyset `after` = (real value, id).
pub async fn list_customers(
    store: &Store,
    tier: Option<i32>,
    after: Option<(i64, String)>,
    limit: u64,
) -> Result<Vec<(i64, String)>, DbErr> {
    let key = "COALESCE(v.real_value_minor, -9223372036854775807)";
    let mut conds = vec![];
    let mut values: Vec<Value> = vec![];
    if let Some(t) = tier {
        conds.push("v.tier = ?".to_owned());
        values.push(t.into());
    }
    if let Some((k, id)) = after {
        conds.push(format!("({key} < ? OR ({key} = ? AND s.customer_id > ?))"));
        values.extend([k.into(), k.into(), id.into()]);
    }
    let filter = if conds.is_empty() { String::new() } else { format!("WHERE {}", conds.join(" AND ")) };
    values.push((limit as i64).into());
    let rows = store
        .conn()
        .query_all_raw(store.stmt(
            &format!(
                "SELECT {key}, s.customer_id FROM customer_summaries s LEFT JOIN customer_values v ON v.customer_id = s.customer_id \
                 {filter} ORDER BY {key} DESC, s.customer_id ASC LIMIT ?"
            ),
            values,
        ))
        .await?;
    rows.iter().map(|r| Ok((r.try_get_by_index(0)?, r.try_get_by_index(1)?))).collect()
}

/// Tier changes, newest first, of one customer or all, after the keyset
/// `after` = (change time µs, id).
pub async fn tier_changes(
    store: &Store,
    customer: Option<&str>,
    after: Option<(i64, String)>,
    limit: u64,
) -> Result<Vec<(i64, String, pb::TierChange)>, DbErr> {
    let mut conds = vec![];
    let mut values: Vec<Value> = vec![];
    if let Some(c) = customer {
        conds.push("customer_id = ?");
        values.push(c.into());
    }
    if let Some((us, id)) = after {
        conds.push("(change_us < ? OR (change_us = ? AND id < ?))");
        values.extend([us.into(), us.into(), id.into()]);
    }
    let filter = if conds.is_empty() { String::new() } else { format!("WHERE {}", conds.join(" AND ")) };
    values.push((limit as i64).into());
    let rows = store
        .conn()
        .query_all_raw(store.stmt(
            &format!(
                "SELECT change_us, id, customer_id, from_tier, to_tier, reason, policy_version FROM tier_changes {filter} \
                 ORDER BY change_us DESC, id DESC LIMIT ?"
            ),
            values,
        ))
        .await?;
    rows.iter()
        .map(|r| {
            let us: i64 = r.try_get_by_index(0)?;
            Ok((
                us,
                r.try_get_by_index(1)?,
                pb::TierChange {
                    customer_id: r.try_get_by_index(2)?,
                    from_tier: r.try_get_by_index(3)?,
                    to_tier: r.try_get_by_index(4)?,
                    reason: r.try_get_by_index(5)?,
                    change_time: DateTime::from_timestamp_micros(us).map(time::to_timestamp),
                    policy_version: r.try_get_by_index(6)?,
                },
            ))
        })
        .collect()
}

/// A page of the profitability matrix.
#[derive(Debug, Default)]
pub struct Matrix {
    /// Rows: (customer, margin, revenue), in order.
    pub rows: Vec<(String, i64, i64)>,
    /// Cells: (customer, category, margin), by row then category.
    pub cells: Vec<(String, String, i64)>,
}

/// Customers ranked by margin in `currency` (net of returns), with their
/// margin per category; after the keyset `after` = (margin, id).
pub async fn profitability(
    store: &Store,
    currency: &str,
    customers: &[String],
    least_first: bool,
    after: Option<(i64, String)>,
    limit: u64,
) -> Result<Matrix, DbErr> {
    let margin = "CAST(SUM(oc.revenue_minor - oc.cost_minor) AS BIGINT)";
    let mut values: Vec<Value> = vec![currency.into()];
    let mut filter = String::new();
    if !customers.is_empty() {
        filter = format!(" AND o.customer_id IN ({})", in_list(customers.len()));
        values.extend(customers.iter().map(|c| Value::from(c.clone())));
    }
    let (cmp, dir) = if least_first { (">", "ASC") } else { ("<", "DESC") };
    let having = match after {
        Some((m, id)) => {
            values.extend([m.into(), m.into(), id.into()]);
            format!(" HAVING {margin} {cmp} ? OR ({margin} = ? AND o.customer_id > ?)")
        }
        None => String::new(),
    };
    values.push((limit as i64).into());
    let c = store.conn();
    let rows = c
        .query_all_raw(store.stmt(
            &format!(
                "SELECT o.customer_id, {margin}, CAST(SUM(oc.revenue_minor) AS BIGINT) FROM order_categories oc \
                 JOIN orders o ON o.order_id = oc.order_id WHERE o.currency_code = ?{filter} \
                 GROUP BY o.customer_id{having} ORDER BY {margin} {dir}, o.customer_id ASC LIMIT ?"
            ),
            values,
        ))
        .await?;
    let mut m = Matrix::default();
    for r in &rows {
        m.rows.push((r.try_get_by_index(0)?, r.try_get_by_index(1)?, r.try_get_by_index(2)?));
    }
    if m.rows.is_empty() {
        return Ok(m);
    }
    let mut values: Vec<Value> = vec![currency.into()];
    values.extend(m.rows.iter().map(|r| Value::from(r.0.clone())));
    let cells = c
        .query_all_raw(store.stmt(
            &format!(
                "SELECT o.customer_id, oc.category, {margin} FROM order_categories oc JOIN orders o ON o.order_id = oc.order_id \
                 WHERE o.currency_code = ? AND o.customer_id IN ({}) GROUP BY o.customer_id, oc.category \
                 ORDER BY o.customer_id, oc.category",
                in_list(m.rows.len())
            ),
            values,
        ))
        .await?;
    let mut by: BTreeMap<String, Vec<(String, i64)>> = BTreeMap::new();
    for r in &cells {
        by.entry(r.try_get_by_index(0)?).or_default().push((r.try_get_by_index(1)?, r.try_get_by_index(2)?));
    }
    for (id, _, _) in &m.rows {
        for (category, margin) in by.remove(id).unwrap_or_default() {
            m.cells.push((id.clone(), category, margin));
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfm_cuts_round_trip_as_text() {
        let c = RfmCuts { recency_days: [1.0, 2.5, 3.0, 4.0], frequency: [1.0; 4], monetary: [10.0, 20.0, 30.0, 1e12] };
        assert_eq!(decode_cuts(&encode_cuts(&c)), c);
        assert_eq!(decode_cuts(""), RfmCuts::default());
    }

    #[test]
    fn aliases_name_every_merged_id() {
        let a: HashMap<String, String> =
            [("b".to_owned(), "a".to_owned()), ("c".to_owned(), "b".to_owned()), ("d".to_owned(), "x".to_owned())]
                .into();
        let mut n = names_of("a", &a);
        n.sort();
        assert_eq!(n, ["a", "b", "c"]);
    }
}
