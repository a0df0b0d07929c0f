//! Needs-based segments (DF-6): definitions, their members, and the
//! customer facts the expressions are evaluated against (see
//! [`crate::domain::segment`] for the facts schema).
//!
//! Membership is stored and kept current inside the feed consumers'
//! transactions: whenever a customer's value row is recomputed (every
//! purchase, return, interaction, statement, re-key after a merge or
//! unmerge, and the referrers a change credits), their traits change, or
//! a merge or unmerge names them, that one customer is evaluated against
//! every segment and only the memberships that changed are written.
//! Whenever the tier boundaries are recomputed over the population (which
//! moves tiers and RFM scores, and is when time-driven facts such as
//! `days_since_last_purchase` catch up), everyone is. A new segment is
//! evaluated over the whole population when it is created; erasure removes
//! the customer from every segment.
//!
//! The population is every customer the projections know — with a
//! purchase summary (any interaction or order) or profile traits — except
//! ids merged into another profile.
//!
//! Compiled expressions are cached process-wide by segment id (ids are
//! never reused, and a segment's expression never changes), so applying an
//! event costs one query listing the segment ids, and none at all beyond
//! it while no segment exists.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, LazyLock, Mutex},
};

use chrono::{DateTime, Utc};
use crm_proto::{
    common::v1::{TraitValue, trait_value},
    differentiation::v1 as pb,
    identification::v1::Profile,
};
use crm_runtime::{
    db::{Store, WriteTxn},
    error::RuntimeError,
    idempotency::{self, Claim},
    ids::new_id,
    time,
};
use prost::Message;
use sea_orm::{ConnectionTrait, DbErr, Value};

use crate::domain::{
    self,
    segment::{Bound, Facts, Rule, TraitFact},
    value::{Tier, channel_key},
};

use super::values::{only, q};

fn marks(n: usize) -> String {
    vec!["?"; n.max(1)].join(", ")
}

// ------------------------------------------------------------------ rules

/// Most compiled expressions kept; beyond, the cache starts afresh.
const MAX_CACHED: usize = 10_000;

/// Compiled expressions by segment id.
static RULES: LazyLock<Mutex<HashMap<String, Arc<Rule>>>> = LazyLock::new(Mutex::default);

fn cached(id: &str) -> Option<Arc<Rule>> {
    RULES.lock().ok().and_then(|m| m.get(id).cloned())
}

fn cache(id: &str, rule: Arc<Rule>) {
    if let Ok(mut m) = RULES.lock() {
        if m.len() >= MAX_CACHED {
            m.clear();
        }
        m.insert(id.to_owned(), rule);
    }
}

fn uncache(id: &str) {
    if let Ok(mut m) = RULES.lock() {
        m.remove(id);
    }
}

/// Compile a stored expression (it compiled when stored).
fn compile_stored(id: &str, expression: &str) -> Option<Arc<Rule>> {
    match Rule::compile(expression) {
        Ok(r) => {
            let r = Arc::new(r);
            cache(id, r.clone());
            Some(r)
        }
        Err(e) => {
            tracing::error!(segment_id = id, error = %e, "stored segment expression does not compile; skipped");
            None
        }
    }
}

/// Every segment's compiled rule, by id.
async fn rules<C: ConnectionTrait>(c: &C) -> Result<Vec<(String, Arc<Rule>)>, DbErr> {
    let ids: Vec<String> = c
        .query_all_raw(q(c, "SELECT id FROM segments ORDER BY id", vec![]))
        .await?
        .iter()
        .map(|r| r.try_get_by_index(0))
        .collect::<Result<_, _>>()?;
    let mut out = Vec::with_capacity(ids.len());
    let mut missing = Vec::new();
    for id in ids {
        match cached(&id) {
            Some(r) => out.push((id, r)),
            None => missing.push(id),
        }
    }
    for chunk in missing.chunks(super::IN_CHUNK) {
        let rows = c
            .query_all_raw(q(
                c,
                &format!("SELECT id, expression FROM segments WHERE id IN ({})", marks(chunk.len())),
                chunk.iter().map(|i| Value::from(i.clone())).collect(),
            ))
            .await?;
        for r in rows {
            let id: String = r.try_get_by_index(0)?;
            let expression: String = r.try_get_by_index(1)?;
            if let Some(rule) = compile_stored(&id, &expression) {
                out.push((id, rule));
            }
        }
    }
    Ok(out)
}

/// The rule of one segment, if it exists.
async fn rule<C: ConnectionTrait>(c: &C, id: &str) -> Result<Option<Arc<Rule>>, DbErr> {
    let Some(row) = c.query_one_raw(q(c, "SELECT expression FROM segments WHERE id = ?", vec![id.into()])).await?
    else {
        return Ok(None);
    };
    if let Some(r) = cached(id) {
        return Ok(Some(r));
    }
    let expression: String = row.try_get_by_index(0)?;
    Ok(compile_stored(id, &expression))
}

// ------------------------------------------------------------------ facts

fn tier_name(n: i32) -> Option<&'static str> {
    Tier::from_number(n).map(|t| match t {
        Tier::MostValuable => "MOST_VALUABLE",
        Tier::MostGrowable => "MOST_GROWABLE",
        Tier::Normal => "NORMAL",
        Tier::BelowZero => "BELOW_ZERO",
    })
}

fn trait_fact(v: &TraitValue) -> Option<TraitFact> {
    Some(match v.kind.as_ref()? {
        trait_value::Kind::StringValue(s) => TraitFact::Text(s.clone()),
        trait_value::Kind::IntValue(i) => TraitFact::Int(*i),
        trait_value::Kind::DoubleValue(d) => TraitFact::Double(*d),
        trait_value::Kind::BoolValue(b) => TraitFact::Bool(*b),
        trait_value::Kind::TimestampValue(t) => TraitFact::Text(time::from_timestamp(t)?.to_rfc3339()),
    })
}

/// The facts of one customer (`Some`) or of the whole population, as of
/// `now`, in the tier policy's currency.
pub async fn load_facts<C: ConnectionTrait>(
    c: &C,
    customer: Option<&str>,
    now: DateTime<Utc>,
) -> Result<BTreeMap<String, Facts>, RuntimeError> {
    let today = domain::day_of(now.timestamp_micros());
    let mut out: BTreeMap<String, Facts> = BTreeMap::new();
    let blank = |id: &str| Facts { customer_id: id.to_owned(), ..Facts::default() };
    let mut values = vec![];
    let f = only("customer_id", customer, &mut values);
    for r in c
        .query_all_raw(q(
            c,
            &format!(
                "SELECT customer_id, interaction_count, order_count, transaction_count, first_purchase_us, last_purchase_us \
                 FROM customer_summaries WHERE 1 = 1{f}"
            ),
            values,
        ))
        .await?
    {
        let id: String = r.try_get_by_index(0)?;
        let counts = domain::Counts {
            orders: r.try_get_by_index(2)?,
            transactions: r.try_get_by_index(3)?,
            first_purchase_us: r.try_get_by_index(4)?,
            last_purchase_us: r.try_get_by_index(5)?,
        };
        let mut facts = blank(&id);
        facts.interaction_count = Some(r.try_get_by_index(1)?);
        facts.order_count = Some(counts.orders);
        facts.transaction_count = Some(counts.transactions);
        if let (Some(first), Some(last)) = (counts.first_purchase_us, counts.last_purchase_us) {
            let derived = domain::derive(&counts, now);
            facts.frequency = Some(derived.frequency);
            facts.recency_days = Some(derived.recency_days);
            facts.age_days = Some((today - domain::day_of(first)).max(0));
            facts.days_since_last_purchase = Some((today - domain::day_of(last)).max(0));
        }
        out.insert(id, facts);
    }
    let mut values = vec![];
    let f = only("customer_id", customer, &mut values);
    for r in c
        .query_all_raw(q(c, &format!("SELECT customer_id, traits FROM customer_traits WHERE 1 = 1{f}"), values))
        .await?
    {
        let id: String = r.try_get_by_index(0)?;
        let body: Vec<u8> = r.try_get_by_index(1)?;
        let p = Profile::decode(body.as_slice())
            .map_err(|e| RuntimeError::Internal(format!("stored traits undecodable: {e}")))?;
        let facts = out.entry(id.clone()).or_insert_with(|| blank(&id));
        facts.traits = p.traits.iter().filter_map(|(k, v)| Some((k.clone(), trait_fact(v)?))).collect();
    }
    // Merged-away ids stand for another profile.
    let mut values = vec![];
    let f = only("alias_id", customer, &mut values);
    for r in c.query_all_raw(q(c, &format!("SELECT alias_id FROM profile_aliases WHERE 1 = 1{f}"), values)).await? {
        out.remove(&r.try_get_by_index::<String>(0)?);
    }
    if out.is_empty() {
        return Ok(out);
    }
    let (policy, _) = super::values::current_policy(c).await?;
    let currency = policy.currency.as_str();
    let mut values = vec![];
    let f = only("customer_id", customer, &mut values);
    for r in c
        .query_all_raw(q(
            c,
            &format!(
                "SELECT customer_id, historical_margin_minor, referral_value_minor, referred_count, real_value_minor, \
                 cost_to_serve_minor, net_value_minor, strategic_value_minor, rfm_recency, rfm_frequency, rfm_monetary, tier \
                 FROM customer_values WHERE 1 = 1{f}"
            ),
            values,
        ))
        .await?
    {
        let id: String = r.try_get_by_index(0)?;
        let Some(facts) = out.get_mut(&id) else { continue };
        let get = |i: usize| r.try_get_by_index::<i64>(i).map(Some);
        facts.historical_margin = get(1)?;
        facts.referral_value = get(2)?;
        facts.referred_count = get(3)?;
        facts.real_value = get(4)?;
        facts.cost_to_serve = get(5)?;
        facts.net_value = get(6)?;
        facts.strategic_value = get(7)?;
        let (rr, rf, rm): (i32, i32, i32) = (r.try_get_by_index(8)?, r.try_get_by_index(9)?, r.try_get_by_index(10)?);
        facts.rfm = (rr > 0).then_some((i64::from(rr), i64::from(rf), i64::from(rm)));
        facts.tier = tier_name(r.try_get_by_index(11)?).map(str::to_owned);
    }
    let mut values = vec![];
    let f = only("customer_id", customer, &mut values);
    for r in c
        .query_all_raw(q(
            c,
            &format!(
                "SELECT customer_id, currency_code, probability_alive, expected_transactions, clv_minor \
                 FROM customer_scores WHERE 1 = 1{f}"
            ),
            values,
        ))
        .await?
    {
        let id: String = r.try_get_by_index(0)?;
        let Some(facts) = out.get_mut(&id) else { continue };
        let cur: String = r.try_get_by_index(1)?;
        facts.p_alive = Some(r.try_get_by_index(2)?);
        facts.expected_transactions = Some(r.try_get_by_index(3)?);
        let clv: Option<i64> = r.try_get_by_index(4)?;
        facts.clv = clv.filter(|_| cur == currency);
    }
    // The latest statement of a need wins (as in the customer value).
    let mut values = vec![];
    let f = only("customer_id", customer, &mut values);
    for r in c
        .query_all_raw(q(
            c,
            &format!(
                "SELECT customer_id, need, stated FROM customer_needs WHERE 1 = 1{f} ORDER BY customer_id, occur_us, interaction_id"
            ),
            values,
        ))
        .await?
    {
        let id: String = r.try_get_by_index(0)?;
        let Some(facts) = out.get_mut(&id) else { continue };
        let need: String = r.try_get_by_index(1)?;
        if r.try_get_by_index::<bool>(2)? {
            facts.needs.insert(need);
        } else {
            facts.needs.remove(&need);
        }
    }
    // As in the customer value.
    for (id, declared) in super::values::declared_wallets(c, currency, customer).await? {
        if let Some(facts) = out.get_mut(&id) {
            facts.wallet = declared;
        }
    }
    for (id, per_channel) in super::values::channel_counts(c, customer).await? {
        if let Some(facts) = out.get_mut(&id) {
            facts.channels =
                per_channel.into_iter().filter_map(|(channel, n)| Some((channel_key(channel)?, n))).collect();
        }
    }
    Ok(out)
}

/// The segments among `rules` whose expression holds for `facts`.
fn matching(rules: &[(String, Arc<Rule>)], facts: &Facts) -> BTreeSet<String> {
    let bound = Bound::new(facts);
    rules.iter().filter(|(_, r)| r.evaluate(&bound) == Ok(true)).map(|(id, _)| id.clone()).collect()
}

/// (segment, customer) pairs of `rules` over `population`, off the async
/// threads (a population can be large).
async fn evaluate_population(
    rules: Vec<(String, Arc<Rule>)>,
    population: BTreeMap<String, Facts>,
) -> Result<BTreeSet<(String, String)>, RuntimeError> {
    tokio::task::spawn_blocking(move || {
        let mut out = BTreeSet::new();
        for (customer, facts) in &population {
            for segment in matching(&rules, facts) {
                out.insert((segment, customer.clone()));
            }
        }
        out
    })
    .await
    .map_err(|e| RuntimeError::Internal(format!("segment evaluation task failed: {e}")))
}

/// Rows per multi-row insert (3 values each).
const BATCH: usize = 300;

async fn insert_members(tx: &WriteTxn, pairs: &[(String, String)], now_us: i64) -> Result<(), DbErr> {
    for chunk in pairs.chunks(BATCH) {
        let rows = vec!["(?, ?, ?)"; chunk.len()].join(", ");
        let values =
            chunk.iter().flat_map(|(s, c)| [Value::from(s.clone()), Value::from(c.clone()), now_us.into()]).collect();
        tx.execute_raw(
            tx.stmt(&format!("INSERT INTO segment_members (segment_id, customer_id, since_us) VALUES {rows}"), values),
        )
        .await?;
    }
    Ok(())
}

async fn delete_members(tx: &WriteTxn, pairs: &[(String, String)]) -> Result<(), DbErr> {
    let mut by_segment: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (s, c) in pairs {
        by_segment.entry(s).or_default().push(c);
    }
    for (segment, customers) in by_segment {
        for chunk in customers.chunks(super::IN_CHUNK) {
            let mut values: Vec<Value> = vec![segment.into()];
            values.extend(chunk.iter().map(|c| Value::from(*c)));
            tx.execute_raw(tx.stmt(
                &format!(
                    "DELETE FROM segment_members WHERE segment_id = ? AND customer_id IN ({})",
                    marks(chunk.len())
                ),
                values,
            ))
            .await?;
        }
    }
    Ok(())
}

/// Re-evaluate one customer against every segment, writing only the
/// memberships that change. The caller (a feed consumer) holds the scores
/// lock.
pub async fn reevaluate(tx: &WriteTxn, customer: &str, now: DateTime<Utc>) -> Result<(), RuntimeError> {
    if customer.is_empty() {
        return Ok(());
    }
    let rules = rules(&**tx).await?;
    if rules.is_empty() {
        return Ok(());
    }
    let facts = load_facts(&**tx, Some(customer), now).await?;
    let want = facts.get(customer).map(|f| matching(&rules, f)).unwrap_or_default();
    let have: BTreeSet<String> = tx
        .query_all_raw(tx.stmt("SELECT segment_id FROM segment_members WHERE customer_id = ?", vec![customer.into()]))
        .await?
        .iter()
        .map(|r| r.try_get_by_index(0))
        .collect::<Result<_, _>>()?;
    let pair = |s: &String| (s.clone(), customer.to_owned());
    let gone: Vec<_> = have.difference(&want).map(pair).collect();
    let new: Vec<_> = want.difference(&have).map(pair).collect();
    delete_members(tx, &gone).await?;
    insert_members(tx, &new, now.timestamp_micros()).await?;
    Ok(())
}

/// Re-evaluate the whole population against every segment (after the tier
/// boundaries moved). The caller holds the scores lock.
pub async fn reevaluate_all(tx: &WriteTxn, now: DateTime<Utc>) -> Result<(), RuntimeError> {
    let rules = rules(&**tx).await?;
    if rules.is_empty() {
        return Ok(());
    }
    let population = load_facts(&**tx, None, now).await?;
    let want = evaluate_population(rules, population).await?;
    let mut have: BTreeSet<(String, String)> = BTreeSet::new();
    for r in tx.query_all_raw(tx.stmt("SELECT segment_id, customer_id FROM segment_members", vec![])).await? {
        have.insert((r.try_get_by_index(0)?, r.try_get_by_index(1)?));
    }
    let gone: Vec<_> = have.difference(&want).cloned().collect();
    let new: Vec<_> = want.difference(&have).cloned().collect();
    delete_members(tx, &gone).await?;
    insert_members(tx, &new, now.timestamp_micros()).await?;
    tracing::debug!(left = gone.len(), joined = new.len(), "segment memberships re-evaluated");
    Ok(())
}

/// Take `customer` out of every segment (an id merged into another).
pub async fn leave_all(tx: &WriteTxn, customer: &str) -> Result<(), DbErr> {
    tx.execute_raw(tx.stmt("DELETE FROM segment_members WHERE customer_id = ?", vec![customer.into()])).await?;
    Ok(())
}

// ----------------------------------------------------------- definitions

/// A segment to create, validated.
#[derive(Debug)]
pub struct NewSegment {
    /// Display name.
    pub display_name: String,
    /// Description.
    pub description: String,
    /// The expression as written.
    pub expression: String,
    /// It, compiled.
    pub rule: Arc<Rule>,
    /// Idempotency key.
    pub request_id: String,
    /// Fingerprint of the request.
    pub fingerprint: i64,
}

const CREATE_SCOPE: &str = "CreateSegment";

fn segment_proto(
    id: String,
    display_name: String,
    description: String,
    expression: String,
    create_us: i64,
    members: i64,
) -> pb::Segment {
    pb::Segment {
        id,
        display_name,
        expression,
        description,
        member_count: members,
        create_time: DateTime::from_timestamp_micros(create_us).map(time::to_timestamp),
    }
}

/// Store a segment and evaluate it over the population.
pub async fn create(store: &Store, cmd: NewSegment) -> Result<pb::Segment, RuntimeError> {
    let tx = store.begin_write().await?;
    if let Claim::Replay(r) =
        idempotency::claim::<pb::CreateSegmentResponse>(&tx, CREATE_SCOPE, &cmd.request_id, cmd.fingerprint).await?
    {
        tx.rollback().await?;
        return r.segment.ok_or_else(|| RuntimeError::Internal("stored segment response without segment".into()));
    }
    // Serialised with the feed consumers, which keep memberships current.
    super::models::lock_scores(&tx).await?;
    let now = time::now();
    let id = new_id();
    tx.execute_raw(tx.stmt(
        "INSERT INTO segments (id, display_name, description, expression, create_us) VALUES (?, ?, ?, ?, ?)",
        vec![
            id.clone().into(),
            cmd.display_name.clone().into(),
            cmd.description.clone().into(),
            cmd.expression.clone().into(),
            now.timestamp_micros().into(),
        ],
    ))
    .await?;
    let population = load_facts(&*tx, None, now).await?;
    let members: Vec<_> =
        evaluate_population(vec![(id.clone(), cmd.rule.clone())], population).await?.into_iter().collect();
    insert_members(&tx, &members, now.timestamp_micros()).await?;
    let segment = segment_proto(
        id.clone(),
        cmd.display_name,
        cmd.description,
        cmd.expression,
        now.timestamp_micros(),
        members.len() as i64,
    );
    let response = pb::CreateSegmentResponse { segment: Some(segment.clone()) };
    idempotency::complete(&tx, CREATE_SCOPE, &cmd.request_id, &response).await?;
    tx.commit().await?;
    cache(&id, cmd.rule);
    Ok(segment)
}

/// Delete a segment and its memberships; `false` if there is none.
pub async fn delete(store: &Store, id: &str) -> Result<bool, RuntimeError> {
    let tx = store.begin_write().await?;
    super::models::lock_scores(&tx).await?;
    let n = tx.execute_raw(tx.stmt("DELETE FROM segments WHERE id = ?", vec![id.into()])).await?.rows_affected();
    tx.execute_raw(tx.stmt("DELETE FROM segment_members WHERE segment_id = ?", vec![id.into()])).await?;
    tx.commit().await?;
    uncache(id);
    Ok(n > 0)
}

async fn counts<C: ConnectionTrait>(c: &C, ids: &[String]) -> Result<HashMap<String, i64>, DbErr> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = c
        .query_all_raw(q(
            c,
            &format!(
                "SELECT segment_id, COUNT(*) FROM segment_members WHERE segment_id IN ({}) GROUP BY segment_id",
                marks(ids.len())
            ),
            ids.iter().map(|i| Value::from(i.clone())).collect(),
        ))
        .await?;
    rows.iter().map(|r| Ok((r.try_get_by_index(0)?, r.try_get_by_index(1)?))).collect()
}

async fn segments_where(store: &Store, sql_where: &str, values: Vec<Value>) -> Result<Vec<pb::Segment>, DbErr> {
    let c = store.conn();
    let rows = c
        .query_all_raw(store.stmt(
            &format!("SELECT id, display_name, description, expression, create_us FROM segments {sql_where}"),
            values,
        ))
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        out.push(segment_proto(
            r.try_get_by_index(0)?,
            r.try_get_by_index(1)?,
            r.try_get_by_index(2)?,
            r.try_get_by_index(3)?,
            r.try_get_by_index(4)?,
            0,
        ));
    }
    let ids: Vec<String> = out.iter().map(|s| s.id.clone()).collect();
    let n = counts(c, &ids).await?;
    for s in &mut out {
        s.member_count = n.get(&s.id).copied().unwrap_or(0);
    }
    Ok(out)
}

/// A segment with its member count.
pub async fn get(store: &Store, id: &str) -> Result<Option<pb::Segment>, DbErr> {
    Ok(segments_where(store, "WHERE id = ?", vec![id.into()]).await?.pop())
}

/// Segments in id (creation) order after `after`.
pub async fn list(store: &Store, after: Option<&str>, limit: u64) -> Result<Vec<pb::Segment>, DbErr> {
    let mut values: Vec<Value> = vec![];
    let mut filter = String::new();
    if let Some(a) = after {
        filter = "WHERE id > ? ".into();
        values.push(a.into());
    }
    values.push((limit as i64).into());
    segments_where(store, &format!("{filter}ORDER BY id LIMIT ?"), values).await
}

/// A page of a segment's members in id order after `after`, and how many
/// there are.
pub async fn members(store: &Store, id: &str, after: Option<&str>, limit: u64) -> Result<(Vec<String>, i64), DbErr> {
    let c = store.conn();
    let mut values: Vec<Value> = vec![id.into()];
    let mut filter = String::new();
    if let Some(a) = after {
        filter = " AND customer_id > ?".into();
        values.push(a.into());
    }
    values.push((limit as i64).into());
    let page = c
        .query_all_raw(store.stmt(
            &format!(
                "SELECT customer_id FROM segment_members WHERE segment_id = ?{filter} ORDER BY customer_id LIMIT ?"
            ),
            values,
        ))
        .await?
        .iter()
        .map(|r| r.try_get_by_index(0))
        .collect::<Result<Vec<String>, _>>()?;
    let total = counts(c, &[id.to_owned()]).await?.get(id).copied().unwrap_or(0);
    Ok((page, total))
}

/// Why `customer` is or is not in segment `id` as of `now` (`None`: no such
/// segment): whether a member, and the facts the expression reads.
pub async fn explain(
    store: &Store,
    id: &str,
    customer: &str,
    now: DateTime<Utc>,
) -> Result<Option<(bool, Vec<String>)>, RuntimeError> {
    let Some(rule) = rule(store.conn(), id).await? else { return Ok(None) };
    let facts = load_facts(store.conn(), Some(customer), now).await?;
    Ok(Some(match facts.get(customer) {
        Some(f) => rule.explain(&Bound::new(f)),
        None => {
            let (_, mut lines) =
                rule.explain(&Bound::new(&Facts { customer_id: customer.to_owned(), ..Facts::default() }));
            lines.retain(|l| !l.starts_with("not a member: "));
            lines.push("not a member: nothing is known about this customer".into());
            (false, lines)
        }
    }))
}

/// The lifetime value and P(alive) of a segment's members scored in
/// `currency`, and how many members it has.
pub async fn member_scores(store: &Store, id: &str, currency: &str) -> Result<(Vec<(i64, f64)>, i64), DbErr> {
    let rows = store
        .conn()
        .query_all_raw(store.stmt(
            "SELECT s.clv_minor, s.probability_alive FROM segment_members m \
             JOIN customer_scores s ON s.customer_id = m.customer_id \
             WHERE m.segment_id = ? AND s.currency_code = ? AND s.clv_minor IS NOT NULL ORDER BY m.customer_id",
            vec![id.into(), currency.into()],
        ))
        .await?;
    let scores =
        rows.iter().map(|r| Ok((r.try_get_by_index(0)?, r.try_get_by_index(1)?))).collect::<Result<_, DbErr>>()?;
    let total = counts(store.conn(), &[id.to_owned()]).await?.get(id).copied().unwrap_or(0);
    Ok((scores, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tier_names_are_the_enum_names_without_prefix() {
        for t in [1, 2, 3, 4] {
            let name = tier_name(t).expect("tier");
            let e = pb::ValueTier::try_from(t).expect("enum");
            assert_eq!(format!("VALUE_TIER_{name}"), e.as_str_name());
        }
        assert_eq!(tier_name(0), None);
    }

    #[test]
    fn instants_in_traits_are_rfc3339_text() {
        let v = TraitValue {
            kind: Some(trait_value::Kind::TimestampValue(prost_types::Timestamp { seconds: 0, nanos: 0 })),
        };
        assert_eq!(trait_fact(&v), Some(TraitFact::Text("1970-01-01T00:00:00+00:00".into())));
        assert_eq!(trait_fact(&TraitValue { kind: None }), None);
    }
}
