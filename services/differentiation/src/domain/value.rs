//! Real value, strategic value, cost to serve, value tiers with
//! hysteresis, and RFM quintiles (DF-1, DF-3, DF-4, DF-5, DF-6's RFM).
//!
//! Everything here is in minor units of one currency, the tier policy's.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crm_proto::common::v1::{Channel, TraitValue, trait_value::Kind};

use super::minor_unit_exponent;

/// The attribute of a REFERRAL interaction naming the referred customer.
pub const REFERRED_CUSTOMER_ATTRIBUTE: &str = "referred_customer_id";
/// The attribute of a PREFERENCE_STATEMENT naming one stated need.
pub const NEED_ATTRIBUTE: &str = "need";
/// The prefix of PREFERENCE_STATEMENT attributes stating (true) or
/// withdrawing (false) a need: `need.<name>`.
pub const NEED_PREFIX: &str = "need.";
/// The prefix of PREFERENCE_STATEMENT attributes declaring a category's
/// spend in minor units: `wallet.<category>`.
pub const WALLET_PREFIX: &str = "wallet.";
/// The attribute giving the currency of the `wallet.*` amounts.
pub const WALLET_CURRENCY_ATTRIBUTE: &str = "wallet_currency";
/// Longest need or category name kept.
pub const MAX_NAME: usize = 64;
/// Days of our spend compared with a declared (yearly) category spend.
pub const WALLET_WINDOW_DAYS: i64 = 365;

/// A value tier (DF-5), in order of precedence after Below Zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    /// Top share by real value.
    MostValuable,
    /// Top share by growth potential.
    MostGrowable,
    /// Neither of the others.
    Normal,
    /// Costs more than they bring.
    BelowZero,
}

impl Tier {
    /// The stored and wire number (`crm.differentiation.v1.ValueTier`).
    pub fn number(self) -> i32 {
        match self {
            Tier::MostValuable => 1,
            Tier::MostGrowable => 2,
            Tier::Normal => 3,
            Tier::BelowZero => 4,
        }
    }

    /// The tier of a stored number.
    pub fn from_number(n: i32) -> Option<Tier> {
        match n {
            1 => Some(Tier::MostValuable),
            2 => Some(Tier::MostGrowable),
            3 => Some(Tier::Normal),
            4 => Some(Tier::BelowZero),
            _ => None,
        }
    }

    /// A display name.
    pub fn label(self) -> &'static str {
        match self {
            Tier::MostValuable => "Most Valuable",
            Tier::MostGrowable => "Most Growable",
            Tier::Normal => "Normal",
            Tier::BelowZero => "Below Zero",
        }
    }
}

/// A tier policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Version (0 before it is stored).
    pub version: i64,
    /// Top share by real value that is Most Valuable, 0..=1.
    pub most_valuable_share: f64,
    /// Top share by growth potential that is Most Growable, 0..=1.
    pub most_growable_share: f64,
    /// Cost per interaction by channel number, minor units.
    pub cost_per_interaction: BTreeMap<i32, i64>,
    /// Currency of every amount.
    pub currency: String,
    /// Hysteresis margin as a share of |boundary|.
    pub hysteresis_share: f64,
    /// Smallest hysteresis margin, minor units.
    pub hysteresis_floor: i64,
}

impl Default for Policy {
    /// Top 10 % Most Valuable, top 20 % Most Growable, euro, a 5 % (at least
    /// 1.00) margin, and costs per contact that rise with the staff time a
    /// channel takes.
    fn default() -> Self {
        Policy {
            version: 0,
            most_valuable_share: 0.10,
            most_growable_share: 0.20,
            cost_per_interaction: default_costs(),
            currency: "EUR".to_owned(),
            hysteresis_share: 0.05,
            hysteresis_floor: 100,
        }
    }
}

/// Default cost per interaction, minor units, by channel.
pub fn default_costs() -> BTreeMap<i32, i64> {
    [
        (Channel::Web, 5),
        (Channel::MobileApp, 5),
        (Channel::Email, 10),
        (Channel::Sms, 10),
        (Channel::Social, 20),
        (Channel::Chat, 100),
        (Channel::Phone, 300),
        (Channel::CallCentre, 400),
        (Channel::Store, 200),
        (Channel::Partner, 300),
        (Channel::SalesRep, 2000),
    ]
    .into_iter()
    .map(|(c, v)| (c as i32, v))
    .collect()
}

/// The policy key of a channel: its name without the prefix, lower case.
pub fn channel_key(channel: i32) -> Option<String> {
    let c = Channel::try_from(channel).ok().filter(|c| *c != Channel::Unspecified)?;
    Some(c.as_str_name().trim_start_matches("CHANNEL_").to_ascii_lowercase())
}

/// The channel of a policy key ("web", "call_centre", …).
pub fn channel_of_key(key: &str) -> Option<i32> {
    let c = Channel::from_str_name(&format!("CHANNEL_{}", key.to_ascii_uppercase()))?;
    (c != Channel::Unspecified && key == key.to_ascii_lowercase()).then_some(c as i32)
}

/// What a customer's value is computed from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inputs {
    /// Margin of their orders, net of returns.
    pub historical_margin: i64,
    /// Revenue of their orders, net of returns.
    pub revenue: i64,
    /// Discounted CLV from the active model, if in the policy currency.
    pub clv: Option<i64>,
    /// Margin of the customers credited to them as referred.
    pub referral_value: i64,
    /// Customers credited to them.
    pub referred_count: i64,
    /// Interactions per channel.
    pub interactions: BTreeMap<i32, i64>,
    /// Declared spend per category (latest declaration, in the currency).
    pub declared: BTreeMap<String, i64>,
    /// Our revenue per category over the wallet window.
    pub ours: BTreeMap<String, i64>,
    /// Distinct purchase days.
    pub transactions: i64,
    /// Last purchase day (days since the epoch).
    pub last_purchase_day: Option<i64>,
}

/// A customer's value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Value {
    /// Historical margin.
    pub historical_margin: i64,
    /// CLV counted (0 without a model in the currency).
    pub clv: i64,
    /// Referral value.
    pub referral_value: i64,
    /// historical + CLV + referral.
    pub real: i64,
    /// Σ interactions × cost.
    pub cost_to_serve: i64,
    /// real − cost to serve.
    pub net: i64,
    /// Σ max(declared − ours, 0).
    pub strategic: i64,
}

/// Σ over channels of interactions × cost.
pub fn cost_to_serve(interactions: &BTreeMap<i32, i64>, policy: &Policy) -> i64 {
    interactions.iter().fold(0i64, |acc, (channel, n)| {
        acc.saturating_add(n.saturating_mul(policy.cost_per_interaction.get(channel).copied().unwrap_or(0)))
    })
}

/// Growth potential per declared category: max(declared − ours, 0).
pub fn growth_by_category(inputs: &Inputs) -> BTreeMap<String, i64> {
    inputs
        .declared
        .iter()
        .map(|(c, d)| (c.clone(), d.saturating_sub(inputs.ours.get(c).copied().unwrap_or(0)).max(0)))
        .collect()
}

/// A customer's value under a policy.
pub fn value(inputs: &Inputs, policy: &Policy) -> Value {
    let clv = inputs.clv.unwrap_or(0);
    let real = inputs.historical_margin.saturating_add(clv).saturating_add(inputs.referral_value);
    let cost = cost_to_serve(&inputs.interactions, policy);
    let strategic = growth_by_category(inputs).values().fold(0i64, |a, g| a.saturating_add(*g));
    Value {
        historical_margin: inputs.historical_margin,
        clv,
        referral_value: inputs.referral_value,
        real,
        cost_to_serve: cost,
        net: real.saturating_sub(cost),
        strategic,
    }
}

/// Quintile boundaries of RFM: the 20th, 40th, 60th and 80th percentiles.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RfmCuts {
    /// Of days since the last purchase.
    pub recency_days: [f64; 4],
    /// Of purchase days.
    pub frequency: [f64; 4],
    /// Of revenue.
    pub monetary: [f64; 4],
}

/// The boundaries of the tiers and RFM, computed over the population.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Thresholds {
    /// Real value of the customer at the top Most Valuable share; `None`
    /// when the share selects nobody.
    pub most_valuable: Option<i64>,
    /// Growth potential at the top Most Growable share.
    pub most_growable: Option<i64>,
    /// RFM quintiles over the customers with a purchase.
    pub rfm: RfmCuts,
    /// Customers they were computed over.
    pub population: i64,
}

/// The `share` top value of `values`: the k-th largest, k = ⌈n × share⌉.
pub fn top_share_threshold(values: &mut [i64], share: f64) -> Option<i64> {
    let k = (values.len() as f64 * share).ceil() as usize;
    if k == 0 || values.is_empty() {
        return None;
    }
    values.sort_unstable_by(|a, b| b.cmp(a));
    values.get(k.min(values.len()) - 1).copied()
}

/// The 20/40/60/80th percentiles of `values` (nearest rank).
pub fn quintile_cuts(values: &mut [f64]) -> [f64; 4] {
    if values.is_empty() {
        return [0.0; 4];
    }
    values.sort_unstable_by(f64::total_cmp);
    let n = values.len();
    let at = |q: f64| values[((n as f64 * q).ceil() as usize).clamp(1, n) - 1];
    [at(0.2), at(0.4), at(0.6), at(0.8)]
}

/// The score 1..=5 of `v` against quintile `cuts` (higher is better unless
/// `lower_is_better`).
pub fn quintile(v: f64, cuts: &[f64; 4], lower_is_better: bool) -> i32 {
    if lower_is_better {
        // Days since the last purchase: fewer is better; ties with a cut
        // belong to the better side.
        1 + cuts.iter().filter(|c| v <= **c).count() as i32
    } else {
        1 + cuts.iter().filter(|c| v > **c).count() as i32
    }
}

/// RFM scores of a customer on `today`, `None` before their first purchase.
pub fn rfm(inputs: &Inputs, cuts: &RfmCuts, today: i64) -> Option<(i32, i32, i32)> {
    let last = inputs.last_purchase_day?;
    Some((
        quintile((today - last) as f64, &cuts.recency_days, true),
        quintile(inputs.transactions as f64, &cuts.frequency, false),
        quintile(inputs.revenue as f64, &cuts.monetary, false),
    ))
}

/// Thresholds of a population of (value, inputs) on `today`.
pub fn thresholds(population: &[(Value, &Inputs)], policy: &Policy, today: i64) -> Thresholds {
    let mut real: Vec<i64> = population.iter().map(|(v, _)| v.real).collect();
    let mut growth: Vec<i64> = population.iter().map(|(v, _)| v.strategic).collect();
    let buyers: Vec<&Inputs> = population.iter().map(|(_, i)| *i).filter(|i| i.last_purchase_day.is_some()).collect();
    let mut r: Vec<f64> = buyers.iter().filter_map(|i| i.last_purchase_day.map(|d| (today - d) as f64)).collect();
    let mut f: Vec<f64> = buyers.iter().map(|i| i.transactions as f64).collect();
    let mut m: Vec<f64> = buyers.iter().map(|i| i.revenue as f64).collect();
    Thresholds {
        most_valuable: top_share_threshold(&mut real, policy.most_valuable_share),
        most_growable: top_share_threshold(&mut growth, policy.most_growable_share),
        rfm: RfmCuts {
            recency_days: quintile_cuts(&mut r),
            frequency: quintile_cuts(&mut f),
            monetary: quintile_cuts(&mut m),
        },
        population: population.len() as i64,
    }
}

/// The hysteresis margin around a boundary.
pub fn margin(boundary: i64, policy: &Policy) -> i64 {
    let share = (boundary.unsigned_abs() as f64 * policy.hysteresis_share).round();
    (share.min(i64::MAX as f64) as i64).max(policy.hysteresis_floor).max(0)
}

/// A tier decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The tier.
    pub tier: Tier,
    /// Why, in words.
    pub reason: String,
    /// Whether it differs from the tier held before.
    pub changed: bool,
}

/// `minor` units of `currency` as text, e.g. "-12.30 EUR".
pub fn money_text(minor: i64, currency: &str) -> String {
    let exp = minor_unit_exponent(currency).max(0) as u32;
    if exp == 0 {
        return format!("{minor} {currency}");
    }
    let scale = 10i128.pow(exp);
    let v = i128::from(minor);
    let sign = if v < 0 { "-" } else { "" };
    let a = v.abs();
    format!("{sign}{}.{:0width$} {currency}", a / scale, a % scale, width = exp as usize)
}

/// The tier of a customer with `value`, holding `current` (if any), under
/// `thresholds`. A condition of the tier held is relaxed by its margin, the
/// conditions of the others tightened by theirs: a customer moves only
/// once beyond a boundary by its margin. Precedence: Below Zero, Most
/// Valuable, Most Growable, Normal.
pub fn assign(value: &Value, current: Option<Tier>, thresholds: &Thresholds, policy: &Policy) -> Decision {
    let cur = policy.currency.as_str();
    let money = |m: i64| money_text(m, cur);
    // How far a tier's condition holds (≥ 0 holds), shifted for hysteresis.
    let shift = |tier: Tier, boundary: i64| -> i64 {
        match current {
            None => 0,
            Some(c) if c == tier => margin(boundary, policy),
            Some(_) => -margin(boundary, policy),
        }
    };
    let held = |tier: Tier| current == Some(tier);
    // Below Zero: net < 0, i.e. −net − 1 ≥ 0.
    let bz = value.net.saturating_neg().saturating_sub(1).saturating_add(shift(Tier::BelowZero, 0));
    if bz >= 0 {
        let reason = if held(Tier::BelowZero) && value.net >= 0 {
            format!(
                "kept Below Zero: net value {} is within the hysteresis margin {} of 0",
                money(value.net),
                money(margin(0, policy))
            )
        } else {
            format!(
                "net value {} (real value {} − cost to serve {}) is below zero",
                money(value.net),
                money(value.real),
                money(value.cost_to_serve)
            )
        };
        return decision(Tier::BelowZero, reason, current);
    }
    if let Some(t) = thresholds.most_valuable {
        let s = value.real.saturating_sub(t).saturating_add(shift(Tier::MostValuable, t));
        if s >= 0 && value.real > 0 {
            let reason = if held(Tier::MostValuable) && value.real < t {
                format!(
                    "kept Most Valuable: real value {} is within the hysteresis margin {} of the threshold {} (top {:.0}%)",
                    money(value.real),
                    money(margin(t, policy)),
                    money(t),
                    policy.most_valuable_share * 100.0
                )
            } else {
                format!(
                    "real value {} is at least the Most Valuable threshold {} (top {:.0}%)",
                    money(value.real),
                    money(t),
                    policy.most_valuable_share * 100.0
                )
            };
            return decision(Tier::MostValuable, reason, current);
        }
    }
    if let Some(t) = thresholds.most_growable {
        let s = value.strategic.saturating_sub(t).saturating_add(shift(Tier::MostGrowable, t));
        if s >= 0 && value.strategic > 0 {
            let reason = if held(Tier::MostGrowable) && value.strategic < t {
                format!(
                    "kept Most Growable: growth potential {} is within the hysteresis margin {} of the threshold {} (top {:.0}%)",
                    money(value.strategic),
                    money(margin(t, policy)),
                    money(t),
                    policy.most_growable_share * 100.0
                )
            } else {
                format!(
                    "growth potential {} is at least the Most Growable threshold {} (top {:.0}%)",
                    money(value.strategic),
                    money(t),
                    policy.most_growable_share * 100.0
                )
            };
            return decision(Tier::MostGrowable, reason, current);
        }
    }
    let threshold = |t: Option<i64>| t.map_or_else(|| "none".to_owned(), money);
    let reason = format!(
        "real value {} below the Most Valuable threshold {}, growth potential {} below the Most Growable threshold {}, net value {} not below zero (boundaries crossed by less than the hysteresis margin do not move a customer)",
        money(value.real),
        threshold(thresholds.most_valuable),
        money(value.strategic),
        threshold(thresholds.most_growable),
        money(value.net),
    );
    decision(Tier::Normal, reason, current)
}

fn decision(tier: Tier, reason: String, current: Option<Tier>) -> Decision {
    Decision { tier, reason, changed: current != Some(tier) }
}

/// What a PREFERENCE_STATEMENT or REFERRAL interaction says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Statement {
    /// Needs stated (true) or withdrawn (false), by name.
    pub needs: BTreeMap<String, bool>,
    /// Declared spend by category, minor units.
    pub wallet: BTreeMap<String, i64>,
    /// Currency of the declared spend, if named.
    pub wallet_currency: Option<String>,
}

fn name(raw: &str) -> Option<String> {
    let t = raw.trim();
    (!t.is_empty() && t.chars().count() <= MAX_NAME && !t.chars().any(char::is_control)).then(|| t.to_owned())
}

/// Read the needs and wallet of a PREFERENCE_STATEMENT's attributes:
/// `need` = "<name>" states a need; `need.<name>` = true/false states or
/// withdraws it; `wallet.<category>` = integer minor units ≥ 0 declares a
/// category's spend; `wallet_currency` = ISO 4217 code of those amounts.
/// Anything else (and values of other types) is ignored. Need names are
/// kept in lower case; categories as written (they match order lines).
pub fn statement(attributes: &BTreeMap<String, TraitValue>) -> Statement {
    let mut s = Statement::default();
    for (key, v) in attributes {
        let kind = v.kind.as_ref();
        if key == NEED_ATTRIBUTE {
            if let Some(Kind::StringValue(n)) = kind
                && let Some(n) = name(n)
            {
                s.needs.insert(n.to_lowercase(), true);
            }
        } else if let Some(n) = key.strip_prefix(NEED_PREFIX) {
            if let (Some(Kind::BoolValue(b)), Some(n)) = (kind, name(n)) {
                s.needs.insert(n.to_lowercase(), *b);
            }
        } else if let Some(c) = key.strip_prefix(WALLET_PREFIX) {
            if let (Some(Kind::IntValue(a)), Some(c)) = (kind, name(c))
                && *a >= 0
            {
                s.wallet.insert(c, *a);
            }
        } else if key == WALLET_CURRENCY_ATTRIBUTE
            && let Some(Kind::StringValue(c)) = kind
            && c.len() == 3
            && c.bytes().all(|b| b.is_ascii_uppercase())
        {
            s.wallet_currency = Some(c.clone());
        }
    }
    s
}

/// The customer a REFERRAL interaction names, if it names a valid id.
pub fn referred(attributes: &BTreeMap<String, TraitValue>) -> Option<String> {
    match attributes.get(REFERRED_CUSTOMER_ATTRIBUTE).and_then(|v| v.kind.as_ref()) {
        Some(Kind::StringValue(id)) if crm_runtime::ids::is_valid_id(id) => Some(id.clone()),
        _ => None,
    }
}

/// Longest alias chain followed (merges of merges).
pub const MAX_ALIAS_HOPS: usize = 32;

/// The live profile an id stands for, following merge aliases.
pub fn resolve<'a>(id: &'a str, aliases: &'a HashMap<String, String>) -> &'a str {
    let mut at = id;
    for _ in 0..MAX_ALIAS_HOPS {
        match aliases.get(at) {
            Some(next) if next != at => at = next,
            _ => break,
        }
    }
    at
}

/// A referral fact: who referred whom, when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Referral {
    /// The referrer (current owner of the interaction).
    pub referrer: String,
    /// The id the interaction named.
    pub referred: String,
    /// When, µs.
    pub occur_us: i64,
    /// The interaction, to break ties.
    pub interaction_id: String,
}

/// Which referred customers are credited to which referrer: each referred
/// customer (after aliases) to the earliest referral naming them, never to
/// themselves. Returns referrer → set of referred customers.
pub fn credits(referrals: &[Referral], aliases: &HashMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut first: BTreeMap<String, (&Referral, String)> = BTreeMap::new();
    for r in referrals {
        let referred = resolve(&r.referred, aliases).to_owned();
        let referrer = resolve(&r.referrer, aliases).to_owned();
        if referred == referrer {
            continue;
        }
        let better = match first.get(&referred) {
            Some((f, _)) => (r.occur_us, &r.interaction_id) < (f.occur_us, &f.interaction_id),
            None => true,
        };
        if better {
            first.insert(referred, (r, referrer));
        }
    }
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (referred, (_, referrer)) in first {
        out.entry(referrer).or_default().insert(referred);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy() -> Policy {
        Policy { cost_per_interaction: BTreeMap::new(), ..Policy::default() }
    }

    fn v(real: i64, strategic: i64, cost: i64) -> Value {
        Value { real, strategic, cost_to_serve: cost, net: real - cost, ..Value::default() }
    }

    #[test]
    fn value_adds_margin_clv_and_referrals_and_nets_cost_to_serve() {
        let mut p = policy();
        p.cost_per_interaction.insert(Channel::Phone as i32, 300);
        p.cost_per_interaction.insert(Channel::Web as i32, 5);
        let inputs = Inputs {
            historical_margin: 10_000,
            clv: Some(2_500),
            referral_value: 700,
            interactions: [(Channel::Phone as i32, 3), (Channel::Web as i32, 4), (Channel::Store as i32, 9)].into(),
            declared: [("shoes".to_owned(), 50_000), ("bags".to_owned(), 1_000)].into(),
            ours: [("shoes".to_owned(), 20_000), ("bags".to_owned(), 3_000)].into(),
            ..Inputs::default()
        };
        let v = value(&inputs, &p);
        assert_eq!(v.real, 13_200);
        assert_eq!(v.cost_to_serve, 920, "store costs nothing in this policy");
        assert_eq!(v.net, 12_280);
        assert_eq!(v.strategic, 30_000, "a category where we already win more than declared adds nothing");
        assert_eq!(value(&Inputs { clv: None, ..inputs }, &p).real, 10_700);
    }

    #[test]
    fn thresholds_select_the_top_share() {
        let mut values: Vec<i64> = (1..=20).map(|i| i * 100).collect();
        assert_eq!(top_share_threshold(&mut values, 0.10), Some(1900));
        assert_eq!(top_share_threshold(&mut values, 0.01), Some(2000), "at least one when the share is positive");
        assert_eq!(top_share_threshold(&mut values, 0.0), None);
        assert_eq!(top_share_threshold(&mut [], 0.5), None);
        assert_eq!(top_share_threshold(&mut values, 1.0), Some(100));
    }

    #[test]
    fn tiers_follow_precedence_without_history() {
        let t = Thresholds { most_valuable: Some(1000), most_growable: Some(500), ..Thresholds::default() };
        let p = policy();
        assert_eq!(assign(&v(5000, 9000, 6000), None, &t, &p).tier, Tier::BelowZero);
        assert_eq!(assign(&v(1000, 9000, 0), None, &t, &p).tier, Tier::MostValuable);
        assert_eq!(assign(&v(999, 500, 0), None, &t, &p).tier, Tier::MostGrowable);
        assert_eq!(assign(&v(999, 499, 0), None, &t, &p).tier, Tier::Normal);
        assert_eq!(assign(&v(0, 0, 0), None, &t, &p).tier, Tier::Normal, "zero is not below zero");
        let zero = Thresholds { most_valuable: Some(0), most_growable: Some(0), ..Thresholds::default() };
        assert_eq!(assign(&v(0, 0, 0), None, &zero, &p).tier, Tier::Normal, "value must be positive");
        let d = assign(&v(1500, 0, 0), Some(Tier::Normal), &t, &p);
        assert!(d.changed && d.reason.contains("15.00 EUR") && d.reason.contains("10.00 EUR"), "{}", d.reason);
    }

    #[test]
    fn a_customer_moves_only_beyond_the_margin() {
        let t = Thresholds { most_valuable: Some(10_000), most_growable: None, ..Thresholds::default() };
        let p = Policy { hysteresis_share: 0.1, ..policy() };
        // margin = 1,000 around 10,000.
        assert_eq!(assign(&v(10_500, 0, 0), Some(Tier::Normal), &t, &p).tier, Tier::Normal);
        assert_eq!(assign(&v(11_000, 0, 0), Some(Tier::Normal), &t, &p).tier, Tier::MostValuable);
        let kept = assign(&v(9_200, 0, 0), Some(Tier::MostValuable), &t, &p);
        assert_eq!((kept.tier, kept.changed), (Tier::MostValuable, false));
        assert!(kept.reason.starts_with("kept"), "{}", kept.reason);
        assert_eq!(assign(&v(8_999, 0, 0), Some(Tier::MostValuable), &t, &p).tier, Tier::Normal);
        // Below Zero around 0 with the floor (1.00).
        assert_eq!(assign(&v(0, 0, 50), Some(Tier::Normal), &t, &p).tier, Tier::Normal);
        assert_eq!(assign(&v(0, 0, 101), Some(Tier::Normal), &t, &p).tier, Tier::BelowZero);
        assert_eq!(assign(&v(60, 0, 0), Some(Tier::BelowZero), &t, &p).tier, Tier::BelowZero);
        assert_eq!(assign(&v(100, 0, 0), Some(Tier::BelowZero), &t, &p).tier, Tier::Normal);
        assert_eq!(assign(&v(0, 0, 1), None, &t, &p).tier, Tier::BelowZero, "a first tier takes no margin");
    }

    proptest! {
        /// A value oscillating around a boundary by less than the margin
        /// never changes the tier after the first assignment.
        #[test]
        fn oscillation_within_the_margin_does_not_flap(
            boundary in 1_000i64..10_000_000,
            start in -1.0f64..1.0,
            steps in prop::collection::vec(-1.0f64..1.0, 1..50),
        ) {
            let p = Policy { hysteresis_share: 0.05, hysteresis_floor: 1, ..policy() };
            let t = Thresholds { most_valuable: Some(boundary), ..Thresholds::default() };
            let m = margin(boundary, &p);
            let at = |x: f64| boundary + (x * (m - 1) as f64) as i64;
            let first = assign(&v(at(start), 0, 0), None, &t, &p).tier;
            let mut held = first;
            for s in steps {
                let d = assign(&v(at(s), 0, 0), Some(held), &t, &p);
                prop_assert_eq!(d.tier, first);
                prop_assert!(!d.changed);
                held = d.tier;
            }
        }

        /// Without a tier held, the decision is the plain classification:
        /// Below Zero exactly when the net value is negative.
        #[test]
        fn below_zero_is_negative_net_value(real in -1_000_000i64..1_000_000, cost in 0i64..1_000_000) {
            let d = assign(&v(real, 0, cost), None, &Thresholds::default(), &policy());
            prop_assert_eq!(d.tier == Tier::BelowZero, real - cost < 0);
        }
    }

    #[test]
    fn rfm_scores_by_quintile() {
        let mut xs: Vec<f64> = (1..=10).map(f64::from).collect();
        let cuts = quintile_cuts(&mut xs);
        assert_eq!(cuts, [2.0, 4.0, 6.0, 8.0]);
        assert_eq!(quintile(1.0, &cuts, false), 1);
        assert_eq!(quintile(10.0, &cuts, false), 5);
        assert_eq!(quintile(5.0, &cuts, false), 3);
        assert_eq!(quintile(1.0, &cuts, true), 5, "recent buyers score high");
        assert_eq!(quintile(10.0, &cuts, true), 1);
        let c = RfmCuts { recency_days: cuts, frequency: cuts, monetary: cuts };
        let i = Inputs { last_purchase_day: Some(98), transactions: 9, revenue: 3, ..Inputs::default() };
        assert_eq!(rfm(&i, &c, 100), Some((5, 5, 2)));
        assert_eq!(rfm(&Inputs::default(), &c, 100), None);
    }

    #[test]
    fn statements_read_needs_and_wallets() {
        let s = |v: &str| TraitValue { kind: Some(Kind::StringValue(v.into())) };
        let b = |v: bool| TraitValue { kind: Some(Kind::BoolValue(v)) };
        let i = |v: i64| TraitValue { kind: Some(Kind::IntValue(v)) };
        let attrs: BTreeMap<String, TraitValue> = [
            ("need".to_owned(), s(" Eco ")),
            ("need.Delivery".to_owned(), b(false)),
            ("need.gifts".to_owned(), s("yes")),
            ("wallet.shoes".to_owned(), i(12_000)),
            ("wallet.bags".to_owned(), i(-5)),
            ("wallet.".to_owned(), i(5)),
            ("wallet_currency".to_owned(), s("USD")),
            ("colour".to_owned(), s("red")),
        ]
        .into();
        let st = statement(&attrs);
        assert_eq!(st.needs, [("eco".to_owned(), true), ("delivery".to_owned(), false)].into());
        assert_eq!(st.wallet, [("shoes".to_owned(), 12_000)].into());
        assert_eq!(st.wallet_currency.as_deref(), Some("USD"));
        let id = crm_runtime::ids::new_id();
        assert_eq!(referred(&[(REFERRED_CUSTOMER_ATTRIBUTE.to_owned(), s(&id))].into()), Some(id));
        assert_eq!(referred(&[(REFERRED_CUSTOMER_ATTRIBUTE.to_owned(), s("bob"))].into()), None);
    }

    #[test]
    fn referrals_credit_the_first_referrer_through_aliases() {
        let r = |referrer: &str, referred: &str, at: i64| Referral {
            referrer: referrer.into(),
            referred: referred.into(),
            occur_us: at,
            interaction_id: format!("{referrer}{at}"),
        };
        let aliases: HashMap<String, String> = [("x-old".to_owned(), "x".to_owned())].into();
        let c = credits(&[r("b", "x", 20), r("a", "x-old", 10), r("a", "a", 5), r("c", "y", 1)], &aliases);
        assert_eq!(c.get("a"), Some(&["x".to_owned()].into()));
        assert_eq!(c.get("b"), None, "x was referred by a first");
        assert_eq!(c.get("c"), Some(&["y".to_owned()].into()));
        let loop_aliases: HashMap<String, String> =
            [("p".to_owned(), "q".to_owned()), ("q".to_owned(), "p".to_owned())].into();
        let _ = resolve("p", &loop_aliases);
    }

    #[test]
    fn channels_have_policy_keys() {
        assert_eq!(channel_key(Channel::CallCentre as i32).as_deref(), Some("call_centre"));
        assert_eq!(channel_of_key("call_centre"), Some(Channel::CallCentre as i32));
        assert_eq!(channel_of_key("CALL_CENTRE"), None);
        assert_eq!(channel_of_key("unspecified"), None);
        assert_eq!(channel_of_key("fax"), None);
        assert_eq!(channel_key(0), None);
    }

    #[test]
    fn money_reads_in_units() {
        assert_eq!(money_text(-1230, "EUR"), "-12.30 EUR");
        assert_eq!(money_text(5, "EUR"), "0.05 EUR");
        assert_eq!(money_text(5, "JPY"), "5 JPY");
        assert_eq!(money_text(i64::MIN, "KWD"), "-9223372036854775.808 KWD");
    }
}
