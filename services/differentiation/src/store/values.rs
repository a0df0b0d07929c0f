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
use sea_orm::{ConnectionTrait, DbErr, QueryResult, Value};

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
    match row {
        Some(r) => policy_at(&r, 0),
        None => Ok(default_policy()),
    }
}

fn default_policy() -> (Policy, i64) {
    (Policy { version: 1, ..Policy::default() }, 0)
}

/// The policy in the version, body and creation time columns of `r` that
/// start at `base`.
fn policy_at(r: &QueryResult, base: usize) -> Result<(Policy, i64), RuntimeError> {
    let version: i64 = r.try_get_by_index(base)?;
    let body: Vec<u8> = r.try_get_by_index(base + 1)?;
    let stored = pb::TierPolicy::decode(body.as_slice())
        .map_err(|e| RuntimeError::Internal(format!("stored tier policy undecodable: {e}")))?;
    let mut policy = conversions::policy_from_proto(&stored);
    policy.version = version;
    Ok((policy, r.try_get_by_index(base + 2)?))
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
    let sql = format!("{} SELECT DISTINCT id FROM names", names_cte());
    let mut out = vec![customer.to_owned()];
    for r in c.query_all_raw(q(c, &sql, vec![customer.into(), customer.into()])).await? {
        let id: String = r.try_get_by_index(0)?;
        if !out.contains(&id) {
            out.push(id);
        }
    }
    Ok(out)
}

/// `names (id, hops)`: the ids merged into the customer bound twice, as
/// far back as [`dv::resolve`] follows the aliases forwards, with the
/// customer itself unless it was merged away.
fn names_cte() -> String {
    format!(
        "WITH RECURSIVE names (id, hops) AS (SELECT CAST(? AS TEXT), 0 WHERE NOT EXISTS \
         (SELECT 1 FROM profile_aliases WHERE alias_id = ? AND profile_id <> alias_id) \
         UNION SELECT CAST(a.alias_id AS TEXT), n.hops + 1 FROM names n JOIN profile_aliases a ON a.profile_id = n.id \
         WHERE a.alias_id <> a.profile_id AND n.hops < {})",
        dv::MAX_ALIAS_HOPS
    )
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

/// The referrals naming a customer (bound once) or one of the `names` of
/// [`names_cte`].
const REFERRING: &str = "referred_id = ? OR referred_id IN (SELECT id FROM names)";

/// Referrers whose credit may include `customer` (referrals naming it or
/// one of its aliases).
async fn referrers_of<C: ConnectionTrait>(c: &C, customer: &str) -> Result<BTreeSet<String>, DbErr> {
    let sql = format!("{} SELECT DISTINCT customer_id FROM customer_referrals WHERE {REFERRING}", names_cte());
    let query = q(c, &sql, vec![customer.into(), customer.into(), customer.into()]);
    let rows = c.query_all_raw(query).await?;
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

/// The value inputs of everyone with facts (one customer's: [`load_one`]).
pub async fn load_inputs<C: ConnectionTrait>(
    c: &C,
    policy: &Policy,
    today: i64,
) -> Result<BTreeMap<String, Inputs>, DbErr> {
    let currency = policy.currency.as_str();
    let mut out: BTreeMap<String, Inputs> = BTreeMap::new();
    for r in c
        .query_all_raw(q(c, "SELECT customer_id, transaction_count, last_purchase_us FROM customer_summaries", vec![]))
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
    let margins = totals(c, currency, None).await?;
    for (id, (margin, revenue)) in &margins {
        if let Some(i) = out.get_mut(id) {
            i.historical_margin = *margin;
            i.revenue = *revenue;
        }
    }
    for r in c
        .query_all_raw(q(
            c,
            "SELECT customer_id, clv_minor FROM customer_scores WHERE currency_code = ? AND clv_minor IS NOT NULL",
            vec![currency.into()],
        ))
        .await?
    {
        let id: String = r.try_get_by_index(0)?;
        if let Some(i) = out.get_mut(&id) {
            i.clv = r.try_get_by_index(1)?;
        }
    }
    for (id, per_channel) in channel_counts(c, None).await? {
        if let Some(i) = out.get_mut(&id) {
            i.interactions = per_channel;
        }
    }
    for (id, declared) in declared_wallets(c, currency, None).await? {
        if let Some(i) = out.get_mut(&id) {
            i.declared = declared;
        }
    }
    for r in c
        .query_all_raw(q(
            c,
            "SELECT o.customer_id, oc.category, CAST(SUM(oc.revenue_minor) AS BIGINT) FROM order_categories oc \
             JOIN orders o ON o.order_id = oc.order_id WHERE o.currency_code = ? AND o.day > ? \
             GROUP BY o.customer_id, oc.category",
            vec![currency.into(), (today - dv::WALLET_WINDOW_DAYS).into()],
        ))
        .await?
    {
        let id: String = r.try_get_by_index(0)?;
        if let Some(i) = out.get_mut(&id) {
            i.ours.insert(r.try_get_by_index(1)?, r.try_get_by_index(2)?);
        }
    }
    let aliases = aliases(c).await?;
    let all = referral_rows(c, "", vec![]).await?;
    for (referrer, referred) in dv::credits(&all, &aliases) {
        if let Some(i) = out.get_mut(&referrer) {
            i.referred_count = referred.len() as i64;
            i.referral_value = referred.iter().fold(0i64, |a, x| a.saturating_add(margins.get(x).map_or(0, |t| t.0)));
        }
    }
    Ok(out)
}

/// Credit `customer`'s referrals to their inputs `i`.
async fn credit_referrals<C: ConnectionTrait>(
    c: &C,
    currency: &str,
    customer: &str,
    i: &mut Inputs,
) -> Result<(), DbErr> {
    let credited = credited(c, customer).await?;
    i.referred_count = credited.len() as i64;
    for x in credited {
        let t = totals(c, currency, Some(&x)).await?;
        i.referral_value = i.referral_value.saturating_add(t.get(&x).map_or(0, |t| t.0));
    }
    Ok(())
}

/// [`load_inputs`] of one customer with their current tier, the rows of
/// every input read in one statement after the `pending` ones; `None` when
/// they have no summary. With `referrers`, the same statement also reads
/// [`referrers_of`] the customer into it.
async fn load_one<C: ConnectionTrait>(
    c: &C,
    pending: Vec<sea_orm::Statement>,
    policy: &Policy,
    today: i64,
    customer: &str,
    referrers: Option<&mut BTreeSet<String>>,
) -> Result<Option<(Inputs, Option<Tier>)>, DbErr> {
    // Every branch yields (part, text, text, number, number, order number, order text).
    const NONE: &str = "CAST(NULL AS TEXT)";
    const ZERO: &str = "CAST(NULL AS BIGINT)";
    let currency = policy.currency.as_str();
    let (names, referred_by) = match referrers {
        Some(_) => (
            names_cte(),
            format!(
                " UNION ALL SELECT 9, customer_id, {NONE}, {ZERO}, {ZERO}, {ZERO}, {NONE} FROM customer_referrals \
                 WHERE {REFERRING}"
            ),
        ),
        None => (String::new(), String::new()),
    };
    let sql = format!(
        "{names} SELECT 1, {NONE}, {NONE}, CAST(transaction_count AS BIGINT), last_purchase_us, {ZERO}, {NONE} \
         FROM customer_summaries WHERE customer_id = ? \
         UNION ALL SELECT 2, {NONE}, {NONE}, revenue_minor, cost_minor, {ZERO}, {NONE} \
         FROM customer_totals WHERE currency_code = ? AND customer_id = ? \
         UNION ALL SELECT 3, {NONE}, {NONE}, clv_minor, {ZERO}, {ZERO}, {NONE} \
         FROM customer_scores WHERE currency_code = ? AND clv_minor IS NOT NULL AND customer_id = ? \
         UNION ALL SELECT 4, {NONE}, {NONE}, CAST(channel AS BIGINT), CAST(COUNT(*) AS BIGINT), {ZERO}, {NONE} \
         FROM customer_interactions WHERE customer_id = ? GROUP BY channel \
         UNION ALL SELECT 5, category, currency_code, amount_minor, {ZERO}, occur_us, interaction_id \
         FROM customer_wallets WHERE customer_id = ? \
         UNION ALL SELECT 6, oc.category, {NONE}, CAST(SUM(oc.revenue_minor) AS BIGINT), {ZERO}, {ZERO}, {NONE} \
         FROM order_categories oc JOIN orders o ON o.order_id = oc.order_id \
         WHERE o.currency_code = ? AND o.day > ? AND o.customer_id = ? GROUP BY oc.category \
         UNION ALL SELECT 7, {NONE}, {NONE}, CAST(tier AS BIGINT), {ZERO}, {ZERO}, {NONE} \
         FROM customer_values WHERE customer_id = ? \
         UNION ALL SELECT 8, {NONE}, {NONE}, {ZERO}, {ZERO}, {ZERO}, {NONE} \
         FROM customer_referrals WHERE customer_id = ?{referred_by} \
         ORDER BY 1, 2, 6, 7"
    );
    let mut values: Vec<Value> = Vec::with_capacity(15);
    if referrers.is_some() {
        values.extend([customer.into(), customer.into()]);
    }
    values.extend([
        customer.into(),
        currency.into(),
        customer.into(),
        currency.into(),
        customer.into(),
        customer.into(),
        customer.into(),
        currency.into(),
        (today - dv::WALLET_WINDOW_DAYS).into(),
        customer.into(),
        customer.into(),
        customer.into(),
    ]);
    if referrers.is_some() {
        values.push(customer.into());
    }
    let rows = crm_runtime::db::query_all_after(c, pending, q(c, &sql, values)).await?;
    let (mut inputs, mut current, mut referred) = (None::<Inputs>, None, false);
    let mut referrers = referrers;
    for r in &rows {
        let part: i32 = r.try_get_by_index(0)?;
        let text: Option<String> = r.try_get_by_index(1)?;
        if part == 9 {
            if let (Some(out), Some(id)) = (referrers.as_deref_mut(), text)
                && id != customer
            {
                out.insert(id);
            }
            continue;
        }
        let number: Option<i64> = r.try_get_by_index(3)?;
        let other: Option<i64> = r.try_get_by_index(4)?;
        if part == 1 {
            inputs = Some(Inputs {
                transactions: number.unwrap_or_default(),
                last_purchase_day: other.map(domain::day_of),
                ..Inputs::default()
            });
            continue;
        }
        let Some(i) = inputs.as_mut() else { continue };
        let number = number.unwrap_or_default();
        match part {
            2 => {
                let cost = other.unwrap_or_default();
                i.historical_margin = number.saturating_sub(cost);
                i.revenue = number;
            }
            3 => i.clv = Some(number),
            4 => {
                i.interactions.insert(number as i32, other.unwrap_or_default());
            }
            5 => {
                declare(&mut i.declared, text.unwrap_or_default(), &r.try_get_by_index::<String>(2)?, number, currency)
            }
            6 => {
                i.ours.insert(text.unwrap_or_default(), number);
            }
            7 => current = Tier::from_number(number as i32),
            _ => referred = true,
        }
    }
    let Some(mut i) = inputs else { return Ok(None) };
    if referred {
        credit_referrals(c, currency, customer, &mut i).await?;
    }
    Ok(Some((i, current)))
}

/// Apply one wallet statement (in statement order) to `declared`: a positive
/// amount in `currency` (or in none) declares the category, anything else
/// withdraws it.
fn declare(
    declared: &mut BTreeMap<String, i64>,
    category: String,
    statement_currency: &str,
    amount: i64,
    currency: &str,
) {
    if amount > 0 && (statement_currency.is_empty() || statement_currency == currency) {
        declared.insert(category, amount);
    } else {
        declared.remove(&category);
    }
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
        let cur: String = r.try_get_by_index(2)?;
        declare(declared, r.try_get_by_index(1)?, &cur, r.try_get_by_index(3)?, currency);
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
        .query_one_raw(q(c, &format!("SELECT {} FROM tier_state WHERE id = 1", STATE_COLUMNS.join(", ")), vec![]))
        .await?;
    row.map(|r| state_at(&r, 0)).transpose()
}

/// The boundaries in the [`STATE_COLUMNS`] of `r` that start at `base`.
fn state_at(r: &QueryResult, base: usize) -> Result<State, DbErr> {
    let cuts: String = r.try_get_by_index(base + 3)?;
    Ok(State {
        policy_version: r.try_get_by_index(base)?,
        thresholds: Thresholds {
            most_valuable: r.try_get_by_index(base + 1)?,
            most_growable: r.try_get_by_index(base + 2)?,
            rfm: decode_cuts(&cuts),
            population: r.try_get_by_index(base + 4)?,
        },
    })
}

const STATE_COLUMNS: [&str; 5] =
    ["policy_version", "most_valuable_minor", "most_growable_minor", "rfm_cuts", "population"];

/// What updating one customer reads besides their own rows, read in one
/// round trip: the policy in force, the boundaries, the active value model
/// and whether any segment is defined.
pub(crate) struct Context {
    policy: Policy,
    state: Option<State>,
    /// The active value model.
    pub(crate) model: Option<super::models::StoredModel>,
    segments: bool,
}

impl Context {
    /// Read it.
    pub(crate) async fn load<C: ConnectionTrait>(c: &C) -> Result<Context, RuntimeError> {
        let state = STATE_COLUMNS.map(|col| format!("s.{col}")).join(", ");
        let model = super::models::COLUMNS.split(", ").map(|col| format!("m.{col}")).collect::<Vec<_>>().join(", ");
        let sql = format!(
            "SELECT p.version, p.body, p.created_us, {state}, \
             (SELECT COUNT(*) FROM (SELECT 1 FROM segments LIMIT 1) z), {model} \
             FROM (SELECT 1 AS one) x \
             LEFT JOIN (SELECT version, body, created_us FROM tier_policies ORDER BY version DESC LIMIT 1) p ON 1 = 1 \
             LEFT JOIN tier_state s ON s.id = 1 \
             LEFT JOIN value_models m ON m.active = ?"
        );
        let r = c
            .query_one_raw(q(c, &sql, vec![true.into()]))
            .await?
            .ok_or_else(|| DbErr::RecordNotFound("context".into()))?;
        let present = |i: usize| -> Result<bool, DbErr> { Ok(r.try_get_by_index::<Option<i64>>(i)?.is_some()) };
        let (policy, _) = if present(0)? { policy_at(&r, 0)? } else { default_policy() };
        let state = if present(3)? { Some(state_at(&r, 3)?) } else { None };
        let segments = r.try_get_by_index::<i64>(8)? > 0;
        let model = if present(9)? { Some(super::models::from_row_at(&r, 9)?) } else { None };
        Ok(Context { policy, state, model, segments })
    }

    /// The boundaries, if they were computed under the policy in force.
    fn boundaries(&self) -> Option<&Thresholds> {
        self.state.as_ref().filter(|s| s.policy_version == self.policy.version).map(|s| &s.thresholds)
    }
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

/// The statement that logs `e`'s tier change.
fn change(tx: &WriteTxn, e: &Evaluated, policy: &Policy, now_us: i64) -> sea_orm::Statement {
    tx.stmt(
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
    )
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
    let inputs = load_inputs(&**tx, &policy, today).await?;
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
    let changes = evaluated.iter().filter(|e| e.decision.changed).map(|e| change(tx, e, &policy, now_us)).collect();
    crm_runtime::db::execute_all(&**tx, changes).await?;
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

/// Count an applied interaction event, with the write's other deferred
/// statements. The boundaries are recomputed by the background job once
/// enough events were counted ([`recompute_due`]), outside the events'
/// transactions: an event is not held up by the whole population.
pub fn after_event(tx: &mut WriteTxn) {
    let bump = tx.stmt("UPDATE tier_state SET events_since = events_since + 1 WHERE id = 1", vec![]);
    tx.defer(bump);
}

/// Whether `every` interaction events (0: never) were applied since the
/// boundaries were last recomputed.
pub async fn recompute_due(store: &Store, every: u64) -> Result<bool, DbErr> {
    if every == 0 {
        return Ok(false);
    }
    let row =
        store.conn().query_one_raw(store.stmt("SELECT events_since FROM tier_state WHERE id = 1", vec![])).await?;
    Ok(match row {
        Some(r) => r.try_get_by_index::<i64>(0)? >= every as i64,
        None => false,
    })
}

/// Re-evaluate one customer's value and tier against the current
/// boundaries (all of them, if the boundaries belong to another policy).
/// The caller (a feed consumer) holds the scores lock.
pub async fn revalue(tx: &WriteTxn, customer: &str, now: DateTime<Utc>) -> Result<(), RuntimeError> {
    let written = revalue_in(tx, &mut Context::load(&**tx).await?, vec![], customer, now, None).await?;
    Ok(crm_runtime::db::execute_all(&**tx, written).await?)
}

/// [`revalue_in`] `customer`, then the referrers whose credit may include
/// them (read with the customer's inputs). Returns the statements that
/// store the new values, for the caller to run or defer.
pub(crate) async fn revalue_with_referrers(
    tx: &WriteTxn,
    ctx: &mut Context,
    pending: Vec<sea_orm::Statement>,
    customer: &str,
    now: DateTime<Utc>,
) -> Result<Vec<sea_orm::Statement>, RuntimeError> {
    let mut referrers = BTreeSet::new();
    let mut written = revalue_in(tx, ctx, pending, customer, now, Some(&mut referrers)).await?;
    for r in referrers {
        written = revalue_in(tx, ctx, written, &r, now, None).await?;
    }
    Ok(written)
}

/// [`revalue`] after the `pending` statements, with the context already
/// read (and read again if the boundaries had to be recomputed); with
/// `referrers`, also reading [`referrers_of`] `customer` into it. Returns
/// the statements that store the new value, for the caller to run (before
/// its next read, or with it).
pub(crate) async fn revalue_in(
    tx: &WriteTxn,
    ctx: &mut Context,
    pending: Vec<sea_orm::Statement>,
    customer: &str,
    now: DateTime<Utc>,
    referrers: Option<&mut BTreeSet<String>>,
) -> Result<Vec<sea_orm::Statement>, RuntimeError> {
    let Some(thresholds) = ctx.boundaries().filter(|_| !customer.is_empty()) else {
        crm_runtime::db::execute_all(&**tx, pending).await?;
        if !customer.is_empty() {
            recompute_all(tx, now).await?;
            *ctx = Context::load(&**tx).await?;
            if let Some(out) = referrers {
                out.extend(referrers_of(&**tx, customer).await?);
            }
        }
        return Ok(vec![]);
    };
    let today = domain::day_of(now.timestamp_micros());
    let now_us = now.timestamp_micros();
    let mut writes = vec![tx.stmt("DELETE FROM customer_values WHERE customer_id = ?", vec![customer.into()])];
    if let Some((i, current)) = load_one(&**tx, pending, &ctx.policy, today, customer, referrers).await? {
        let e = evaluate(customer.to_owned(), &i, &ctx.policy, thresholds, today, current, true);
        writes.push(tx.stmt(
            &format!("INSERT INTO customer_values ({VALUE_COLUMNS}) VALUES ({})", in_list(17)),
            value_values(&e, &ctx.policy, now_us),
        ));
        if e.decision.changed {
            writes.push(change(tx, &e, &ctx.policy, now_us));
        }
    }
    if !ctx.segments {
        return Ok(writes);
    }
    crm_runtime::db::execute_all(&**tx, writes).await?;
    super::segments::reevaluate(tx, customer, now).await?;
    Ok(vec![])
}

/// Re-evaluate the referrers whose credit may include `customer`.
pub async fn revalue_referrers(tx: &WriteTxn, customer: &str, now: DateTime<Utc>) -> Result<(), RuntimeError> {
    let referrers = referrers_of(&**tx, customer).await?;
    if referrers.is_empty() {
        return Ok(());
    }
    let ctx = &mut Context::load(&**tx).await?;
    let mut pending = vec![];
    for r in referrers {
        pending = revalue_in(tx, ctx, pending, &r, now, None).await?;
    }
    Ok(crm_runtime::db::execute_all(&**tx, pending).await?)
}

// ------------------------------------------------------ identity and facts

/// The statements that keep a REFERRAL's referred customer or a
/// PREFERENCE_STATEMENT's needs and wallet, with the referred customer, if
/// any.
pub fn statement_facts(
    tx: &WriteTxn,
    customer: &str,
    interaction: &crm_proto::interaction::v1::Interaction,
    occur_us: i64,
) -> (Vec<sea_orm::Statement>, Option<String>) {
    use crm_proto::interaction::v1::InteractionType;
    let id = interaction.id.clone();
    if interaction.r#type == InteractionType::Referral as i32 {
        let Some(referred) = dv::referred(&interaction.attributes) else { return (vec![], None) };
        let insert = tx.stmt(
            "INSERT INTO customer_referrals (interaction_id, customer_id, referred_id, occur_us) VALUES (?, ?, ?, ?) \
             ON CONFLICT (interaction_id) DO NOTHING",
            vec![id.into(), customer.into(), referred.clone().into(), occur_us.into()],
        );
        return (vec![insert], Some(referred));
    }
    if interaction.r#type != InteractionType::PreferenceStatement as i32 {
        return (vec![], None);
    }
    let s = dv::statement(&interaction.attributes);
    let needs = s.needs.iter().map(|(need, stated)| {
        tx.stmt(
            "INSERT INTO customer_needs (interaction_id, need, customer_id, stated, occur_us) VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (interaction_id, need) DO NOTHING",
            vec![id.clone().into(), need.clone().into(), customer.into(), (*stated).into(), occur_us.into()],
        )
    });
    let wallet = s.wallet.iter().map(|(category, amount)| {
        tx.stmt(
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
        )
    });
    (needs.chain(wallet).collect(), None)
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
pub async fn fill<C: ConnectionTrait>(
    c: &C,
    v: &mut pb::CustomerValue,
    now: DateTime<Utc>,
) -> Result<(), RuntimeError> {
    let customer = v.customer_id.clone();
    if let Some(r) = c
        .query_one_raw(q(c, "SELECT traits FROM customer_traits WHERE customer_id = ?", vec![customer.clone().into()]))
        .await?
    {
        let body: Vec<u8> = r.try_get_by_index(0)?;
        let p = Profile::decode(body.as_slice())
            .map_err(|e| RuntimeError::Internal(format!("stored traits undecodable: {e}")))?;
        v.traits = p.traits;
    }
    let mut needs: BTreeMap<String, bool> = BTreeMap::new();
    for r in c
        .query_all_raw(q(
            c,
            "SELECT need, stated FROM customer_needs WHERE customer_id = ? ORDER BY occur_us, interaction_id",
            vec![customer.clone().into()],
        ))
        .await?
    {
        needs.insert(r.try_get_by_index(0)?, r.try_get_by_index(1)?);
    }
    v.needs = needs.into_iter().filter(|(_, s)| *s).map(|(n, _)| n).collect();
    let Some(r) = c
        .query_one_raw(q(
            c,
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
    let inputs = load_one(c, vec![], &policy, domain::day_of(now.timestamp_micros()), &customer, None).await?;
    if let Some((i, _)) = &inputs {
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
