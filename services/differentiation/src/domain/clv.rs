//! Customer lifetime value from a fitted BG/NBD + Gamma–Gamma pair.
//!
//! Model time is in weeks (the unit of the published CDNOW estimates);
//! the projection keeps days, converted here. The discounted CLV over a
//! horizon H is Σₖ E(M) · (E[Y(tₖ)] − E[Y(tₖ₋₁)]) / (1 + d)ᵏ over months
//! k = 1 … ⌈H / month⌉ with tₖ = min(k · month, H) and d the monthly
//! discount rate — the discrete form `lifetimes` uses — where E[Y(t)] is
//! the BG/NBD conditional expectation and E(M) the Gamma–Gamma
//! conditional expected margin per transaction.
//!
//! The interval comes from the parameters' sampling distribution: the
//! log-parameters are drawn from the normal with the fits' asymptotic
//! covariance (a fixed seed, so the same model always gives the same
//! draws) and the CLV is recomputed under each draw; the interval is the
//! central quantiles. It reflects estimation uncertainty of the model, not
//! the randomness of one customer's future purchases.

use std::collections::HashMap;

use super::{
    bgnbd::{self, Rft},
    gamma_gamma,
    optimize::{Matrix, cholesky},
    random::Rng,
    special::Hyp2f1Error,
};

/// Days in one model time unit (a week).
pub const DAYS_PER_UNIT: f64 = 7.0;
/// Days in a month for discounting (a twelfth of a Julian year).
pub const MONTH_DAYS: f64 = 365.25 / 12.0;
/// Parameter draws behind an interval.
pub const INTERVAL_DRAWS: usize = 200;
/// Probability covered by the interval.
pub const INTERVAL_LEVEL: f64 = 0.9;
/// Seed of the parameter draws.
pub const DRAW_SEED: u64 = 0x1D1C_C1F0_5EED;

/// How future value is counted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Valuation {
    /// Horizon, days (> 0).
    pub horizon_days: u32,
    /// Discount rate per month, ≥ 0.
    pub monthly_discount_rate: f64,
}

impl Default for Valuation {
    fn default() -> Self {
        Valuation { horizon_days: 365, monthly_discount_rate: 0.01 }
    }
}

/// A fitted value model, ready to score customers.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    /// Purchase process.
    pub bgnbd: bgnbd::Params,
    /// Margin per transaction.
    pub spend: gamma_gamma::Params,
    /// Horizon and discounting.
    pub valuation: Valuation,
}

/// A customer as the model sees them, in days and currency units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Customer {
    /// Repeat transactions.
    pub x: u32,
    /// Days from first to last transaction.
    pub t_x_days: f64,
    /// Days from first transaction to now.
    pub t_days: f64,
    /// Mean margin of the repeat transactions (currency units; 0 if none).
    pub mean_margin: f64,
}

impl Customer {
    /// In model time.
    pub fn rft(&self) -> Rft {
        Rft { x: self.x, t_x: self.t_x_days / DAYS_PER_UNIT, t: self.t_days / DAYS_PER_UNIT }
    }
}

/// A customer's value under a model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    /// P(alive), 0..1.
    pub probability_alive: f64,
    /// Expected transactions over the horizon.
    pub expected_transactions: f64,
    /// Expected margin per transaction; `None` if the spend model has no
    /// finite mean.
    pub expected_margin: Option<f64>,
    /// Discounted CLV over the horizon.
    pub clv: Option<f64>,
}

/// The month boundaries of a horizon, in model time.
fn steps(v: &Valuation) -> Vec<f64> {
    let h = v.horizon_days.max(1) as f64;
    let months = (h / MONTH_DAYS).ceil().max(1.0) as usize;
    (1..=months).map(|k| (k as f64 * MONTH_DAYS).min(h) / DAYS_PER_UNIT).collect()
}

/// Expected transactions over the horizon and their discounted sum.
fn transactions(p: &bgnbd::Params, c: &Rft, v: &Valuation, steps: &[f64]) -> Result<(f64, f64), Hyp2f1Error> {
    let mut e = vec![0.0; steps.len()];
    bgnbd::expected_transactions_many(p, c, steps, &mut e)?;
    let mut discounted = 0.0;
    let mut previous = 0.0;
    let mut factor = 1.0;
    for value in &e {
        factor /= 1.0 + v.monthly_discount_rate;
        discounted += (value - previous).max(0.0) * factor;
        previous = *value;
    }
    Ok((e.last().copied().unwrap_or(0.0), discounted))
}

/// Score one customer.
pub fn score(m: &Model, c: &Customer) -> Result<Score, Hyp2f1Error> {
    let rft = c.rft();
    let (expected, discounted) = transactions(&m.bgnbd, &rft, &m.valuation, &steps(&m.valuation))?;
    let margin = gamma_gamma::expected_average(&m.spend, c.x, c.mean_margin);
    Ok(Score {
        probability_alive: bgnbd::probability_alive(&m.bgnbd, &rft),
        expected_transactions: expected,
        expected_margin: margin,
        clv: margin.map(|mg| mg * discounted),
    })
}

/// Score many customers. The transaction part depends only on (x, tₓ, T),
/// so it is computed once per distinct triple; `threads` share the work.
pub fn score_population(m: &Model, customers: &[Customer], threads: usize) -> Vec<Result<Score, Hyp2f1Error>> {
    let st = steps(&m.valuation);
    // Distinct triples, in first-seen order.
    let mut index: HashMap<(u32, u64, u64), usize> = HashMap::with_capacity(customers.len() / 4);
    let mut distinct: Vec<Rft> = Vec::new();
    let slots: Vec<usize> = customers
        .iter()
        .map(|c| {
            let r = c.rft();
            *index.entry((r.x, r.t_x.to_bits(), r.t.to_bits())).or_insert_with(|| {
                distinct.push(r);
                distinct.len() - 1
            })
        })
        .collect();
    let threads = threads.clamp(1, 64);
    let chunk = distinct.len().div_ceil(threads).max(1);
    let computed: Vec<Result<(f64, f64, f64), Hyp2f1Error>> = std::thread::scope(|s| {
        let handles: Vec<_> = distinct
            .chunks(chunk)
            .map(|part| {
                let st = &st;
                s.spawn(move || {
                    part.iter()
                        .map(|r| {
                            transactions(&m.bgnbd, r, &m.valuation, st)
                                .map(|(e, d)| (bgnbd::probability_alive(&m.bgnbd, r), e, d))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    });
    customers
        .iter()
        .zip(slots)
        .map(|(c, slot)| {
            let (pa, e, d) = computed.get(slot).copied().unwrap_or(Err(Hyp2f1Error::NotConverged))?;
            let margin = gamma_gamma::expected_average(&m.spend, c.x, c.mean_margin);
            Ok(Score {
                probability_alive: pa,
                expected_transactions: e,
                expected_margin: margin,
                clv: margin.map(|mg| mg * d),
            })
        })
        .collect()
}

/// Both fits on one population.
#[derive(Debug, Clone, PartialEq)]
pub struct Fitted {
    /// The purchase-process fit.
    pub bgnbd: bgnbd::Fit,
    /// The spend fit.
    pub spend: gamma_gamma::Fit,
    /// Customers in the BG/NBD fit.
    pub customers: usize,
    /// Distinct (x, tₓ, T) triples it evaluated.
    pub distinct: usize,
    /// Customers in the Gamma–Gamma fit (repeat buyers with a positive
    /// mean margin).
    pub spenders: usize,
    /// Whether both converged.
    pub converged: bool,
    /// How the fits ended.
    pub message: String,
}

/// Fit BG/NBD on every customer and Gamma–Gamma on those with repeat
/// transactions and a positive mean margin.
pub fn fit(customers: &[Customer]) -> Fitted {
    let population = bgnbd::Population::new(customers.iter().map(|c| (c.rft(), 1.0)));
    let spenders = gamma_gamma::Population::new(
        customers.iter().map(|c| (gamma_gamma::Spend { x: c.x, mean: c.mean_margin }, 1.0)),
    );
    let b = population.fit();
    let s = spenders.fit();
    let converged = b.converged && s.converged;
    let message = format!("BG/NBD: {}; Gamma–Gamma: {}", b.message, s.message);
    Fitted {
        customers: population.customers() as usize,
        distinct: population.distinct(),
        spenders: spenders.customers() as usize,
        converged,
        message,
        bgnbd: b,
        spend: s,
    }
}

/// Parameter draws from the fits' asymptotic distribution.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Draws(pub Vec<Model>);

/// Draw `n` models around `m` from the covariances of the BG/NBD and
/// Gamma–Gamma log-parameters (fitted separately, so independent). `None`
/// if a covariance is missing or not positive definite.
pub fn draws(m: &Model, bgnbd_cov: &Matrix, spend_cov: &Matrix, n: usize, seed: u64) -> Option<Draws> {
    let lb = cholesky(bgnbd_cov)?;
    let ls = cholesky(spend_cov)?;
    let mut rng = Rng::new(seed);
    let mb = m.bgnbd.to_log();
    let ms = m.spend.to_log();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let zb: Vec<f64> = (0..4).map(|_| rng.normal()).collect();
        let zs: Vec<f64> = (0..3).map(|_| rng.normal()).collect();
        let mut b = mb;
        for i in 0..4 {
            b[i] += (0..=i).map(|k| lb[i][k] * zb[k]).sum::<f64>();
        }
        let mut s = ms;
        for i in 0..3 {
            s[i] += (0..=i).map(|k| ls[i][k] * zs[k]).sum::<f64>();
        }
        out.push(Model {
            bgnbd: bgnbd::Params::from_log_array(b),
            spend: gamma_gamma::Params::from_log_array(s),
            valuation: m.valuation,
        });
    }
    Some(Draws(out))
}

/// The central `level` interval of the CLV under the draws, or `None` when
/// fewer than half of the draws give a value.
pub fn interval(d: &Draws, c: &Customer, level: f64) -> Option<(f64, f64)> {
    let mut values: Vec<f64> = d.0.iter().filter_map(|m| score(m, c).ok().and_then(|s| s.clv)).collect();
    if values.is_empty() || values.len() * 2 < d.0.len() {
        return None;
    }
    values.sort_unstable_by(f64::total_cmp);
    let q = |p: f64| {
        let pos = p * (values.len() - 1) as f64;
        let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
        values[lo] + (values[hi] - values[lo]) * (pos - lo as f64)
    };
    Some((q((1.0 - level) / 2.0), q((1.0 + level) / 2.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cdnow() -> Model {
        Model {
            bgnbd: bgnbd::Params { r: 0.243, alpha: 4.414, a: 0.793, b: 2.426 },
            spend: gamma_gamma::Params { p: 6.25, q: 3.74, gamma: 15.44 },
            valuation: Valuation { horizon_days: 365, monthly_discount_rate: 0.01 },
        }
    }

    #[test]
    fn steps_cover_the_horizon_by_month() {
        let s = steps(&Valuation { horizon_days: 365, monthly_discount_rate: 0.0 });
        assert_eq!(s.len(), 12);
        assert!((s[11] - 365.0 / 7.0).abs() < 1e-12);
        let s = steps(&Valuation { horizon_days: 10, monthly_discount_rate: 0.0 });
        assert_eq!(s, vec![10.0 / 7.0]);
    }

    #[test]
    fn clv_is_margin_times_discounted_transactions() {
        let m = cdnow();
        let c = Customer { x: 2, t_x_days: 213.0, t_days: 272.0, mean_margin: 22.345 };
        let s = score(&m, &c).unwrap();
        let e = bgnbd::expected_transactions(&m.bgnbd, &c.rft(), 365.0 / 7.0).unwrap();
        assert!((s.expected_transactions - e).abs() < 1e-12);
        let margin = gamma_gamma::expected_average(&m.spend, 2, 22.345).unwrap();
        assert_eq!(s.expected_margin, Some(margin));
        let clv = s.clv.unwrap();
        // Discounting makes it less than the undiscounted value, not by much.
        assert!(clv < margin * e && clv > margin * e / 1.01f64.powi(12));
        let undiscounted =
            score(&Model { valuation: Valuation { monthly_discount_rate: 0.0, ..m.valuation }, ..m }, &c)
                .unwrap()
                .clv
                .unwrap();
        assert!((undiscounted - margin * e).abs() < 1e-9 * undiscounted);
    }

    #[test]
    fn a_lapsed_customer_is_worth_less_than_a_recent_one() {
        let m = cdnow();
        let recent = score(&m, &Customer { x: 5, t_x_days: 260.0, t_days: 272.0, mean_margin: 30.0 }).unwrap();
        let lapsed = score(&m, &Customer { x: 5, t_x_days: 20.0, t_days: 272.0, mean_margin: 30.0 }).unwrap();
        assert!(lapsed.probability_alive < recent.probability_alive);
        assert!(lapsed.clv.unwrap() < recent.clv.unwrap());
    }

    #[test]
    fn population_scoring_matches_one_by_one() {
        let m = cdnow();
        let customers: Vec<Customer> = (0..200)
            .map(|i| Customer {
                x: i % 5,
                t_x_days: if i % 5 == 0 { 0.0 } else { (i % 30) as f64 },
                t_days: 100.0 + (i % 3) as f64,
                mean_margin: if i % 5 == 0 { 0.0 } else { 10.0 + i as f64 },
            })
            .collect();
        let all = score_population(&m, &customers, 2);
        for (c, s) in customers.iter().zip(all) {
            assert_eq!(s.unwrap(), score(&m, c).unwrap());
        }
    }

    #[test]
    fn draws_are_deterministic_and_the_interval_contains_the_estimate() {
        let m = cdnow();
        let cov_b = vec![
            vec![0.01, 0.0, 0.0, 0.0],
            vec![0.0, 0.02, 0.0, 0.0],
            vec![0.0, 0.0, 0.03, 0.0],
            vec![0.0, 0.0, 0.0, 0.04],
        ];
        let cov_s = vec![vec![0.01, 0.0, 0.0], vec![0.0, 0.01, 0.0], vec![0.0, 0.0, 0.01]];
        let d1 = draws(&m, &cov_b, &cov_s, 100, 9).unwrap();
        let d2 = draws(&m, &cov_b, &cov_s, 100, 9).unwrap();
        assert_eq!(d1, d2);
        let c = Customer { x: 3, t_x_days: 200.0, t_days: 272.0, mean_margin: 25.0 };
        let clv = score(&m, &c).unwrap().clv.unwrap();
        let (lo, hi) = interval(&d1, &c, 0.9).unwrap();
        assert!(lo < clv && clv < hi, "{lo} {clv} {hi}");
        // A singular covariance gives no draws.
        let zero_b = vec![vec![1e-300, 0.0, 0.0, 0.0]; 4];
        assert!(draws(&m, &zero_b, &cov_s, 10, 9).is_none());
    }
}
