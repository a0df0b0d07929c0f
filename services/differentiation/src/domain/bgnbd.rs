//! The BG/NBD model of repeat buying (Fader, Hardie & Lee, "Counting your
//! customers the easy way", Marketing Science 24(2), 2005).
//!
//! While active a customer buys at rate λ ~ Gamma(r, α); after each
//! purchase they drop out with probability p ~ Beta(a, b). A customer is
//! summarised by (x, tₓ, T): repeat transactions, the time of the last one
//! and the time since the first, all measured from the first transaction.
//!
//! The fit maximises the log-likelihood over the logarithms of (r, α, a, b)
//! (so every step stays in the positive orthant) by BFGS with the analytic
//! gradient. Customers are compressed to their distinct (x, tₓ, T) triples
//! with multiplicities, and the terms that depend only on x are computed
//! once per distinct x, so an iteration costs O(distinct triples) with one
//! `exp` and one `ln_1p` per triple; the logarithms of α + t are tabulated
//! once per distinct time. The covariance of the log-parameters is the
//! inverse of the Hessian of the negative log-likelihood at the optimum
//! (central differences of the analytic gradient).

use super::{
    optimize::{self, Matrix},
    special::{Hyp2f1Error, digamma, hyp2f1_many, ln_gamma},
};

/// One customer in the model's terms (time in model units).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rft {
    /// Repeat transactions.
    pub x: u32,
    /// Time of the last transaction since the first (0 when x = 0).
    pub t_x: f64,
    /// Time since the first transaction (the customer's age).
    pub t: f64,
}

/// BG/NBD parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// Shape of the purchase-rate gamma.
    pub r: f64,
    /// Rate (inverse scale) of the purchase-rate gamma, in 1/time unit.
    pub alpha: f64,
    /// Beta shape a of the drop-out probability.
    pub a: f64,
    /// Beta shape b of the drop-out probability.
    pub b: f64,
}

impl Params {
    fn from_log(v: &[f64]) -> Params {
        Params { r: v[0].exp(), alpha: v[1].exp(), a: v[2].exp(), b: v[3].exp() }
    }

    /// The logarithms of (r, α, a, b).
    pub fn to_log(self) -> [f64; 4] {
        [self.r.ln(), self.alpha.ln(), self.a.ln(), self.b.ln()]
    }

    /// Parameters from the logarithms of (r, α, a, b).
    pub fn from_log_array(v: [f64; 4]) -> Params {
        Params::from_log(&v)
    }

    /// Whether all four are finite and positive.
    pub fn is_valid(&self) -> bool {
        [self.r, self.alpha, self.a, self.b].iter().all(|v| v.is_finite() && *v > 0.0)
    }
}

#[derive(Debug, Clone, Copy)]
struct Row {
    t_x: u32,
    t: u32,
    weight: f64,
}

#[derive(Debug, Clone)]
struct Group {
    x: u32,
    weight: f64,
    rows: Vec<Row>,
}

/// A population compressed to its distinct (x, tₓ, T) triples.
#[derive(Debug, Clone, Default)]
pub struct Population {
    times: Vec<f64>,
    groups: Vec<Group>,
    customers: f64,
    distinct: usize,
}

impl Population {
    /// Compress `(customer, multiplicity)` pairs. Invalid customers
    /// (negative or non-finite times, tₓ > T, x > 0 with tₓ = 0 is allowed)
    /// are skipped: see [`Population::skipped`].
    pub fn new(customers: impl IntoIterator<Item = (Rft, f64)>) -> Population {
        let mut all: Vec<(Rft, f64)> = customers
            .into_iter()
            .filter(|(c, w)| {
                c.t.is_finite() && c.t_x.is_finite() && c.t_x >= 0.0 && c.t_x <= c.t && *w > 0.0 && w.is_finite()
            })
            .map(|(c, w)| (if c.x == 0 { Rft { t_x: 0.0, ..c } } else { c }, w))
            .collect();
        all.sort_unstable_by(|(p, _), (q, _)| p.x.cmp(&q.x).then(p.t_x.total_cmp(&q.t_x)).then(p.t.total_cmp(&q.t)));
        let mut times: Vec<f64> = all.iter().flat_map(|(c, _)| [c.t_x, c.t]).collect();
        times.sort_unstable_by(f64::total_cmp);
        times.dedup();
        let index = |v: f64| times.partition_point(|t| *t < v) as u32;
        let mut groups: Vec<Group> = Vec::new();
        let mut customers = 0.0;
        let mut distinct = 0;
        let mut last: Option<Rft> = None;
        for (c, w) in &all {
            customers += w;
            if groups.last().is_none_or(|g| g.x != c.x) {
                groups.push(Group { x: c.x, weight: 0.0, rows: Vec::new() });
                last = None;
            }
            let Some(g) = groups.last_mut() else { continue };
            g.weight += w;
            match (last, g.rows.last_mut()) {
                (Some(l), Some(row)) if l == *c => row.weight += w,
                _ => {
                    g.rows.push(Row { t_x: index(c.t_x), t: index(c.t), weight: *w });
                    distinct += 1;
                }
            }
            last = Some(*c);
        }
        Population { times, groups, customers, distinct }
    }

    /// Customers in the population (sum of multiplicities).
    pub fn customers(&self) -> f64 {
        self.customers
    }

    /// Distinct (x, tₓ, T) triples: what a likelihood evaluation costs.
    pub fn distinct(&self) -> usize {
        self.distinct
    }

    /// Mean age and mean repeat transactions, for starting values.
    fn means(&self) -> (f64, f64) {
        let (mut t, mut x) = (0.0, 0.0);
        for g in &self.groups {
            x += g.x as f64 * g.weight;
            for r in &g.rows {
                t += self.times[r.t as usize] * r.weight;
            }
        }
        let n = self.customers.max(1.0);
        (t / n, x / n)
    }

    /// The log-likelihood at `p`; with `grad`, also its gradient with
    /// respect to (ln r, ln α, ln a, ln b).
    pub fn log_likelihood(&self, p: &Params, grad: Option<&mut [f64; 4]>) -> f64 {
        let Params { r, alpha, a, b } = *p;
        let ln_alpha = alpha.ln();
        let lt: Vec<f64> = self.times.iter().map(|t| (alpha + t).ln()).collect();
        let inv: Vec<f64> = self.times.iter().map(|t| 1.0 / (alpha + t)).collect();
        let (lg_r, lg_b, lg_ab) = (ln_gamma(r), ln_gamma(b), ln_gamma(a + b));
        let (dg_r, dg_b, dg_ab) = (digamma(r), digamma(b), digamma(a + b));
        let want_grad = grad.is_some();
        let mut ll = 0.0;
        let (mut gr, mut gal, mut ga, mut gb) = (0.0, 0.0, 0.0, 0.0);
        for g in &self.groups {
            let xf = g.x as f64;
            let u = r + xf;
            let constant = ln_gamma(u) - lg_r + r * ln_alpha + lg_ab + ln_gamma(b + xf) - lg_b - ln_gamma(a + b + xf);
            ll += g.weight * constant;
            if want_grad {
                gr += g.weight * (digamma(u) - dg_r + ln_alpha);
                gal += g.weight * r / alpha;
                let dg_abx = digamma(a + b + xf);
                ga += g.weight * (dg_ab - dg_abx);
                gb += g.weight * (dg_ab + digamma(b + xf) - dg_b - dg_abx);
            }
            if g.x == 0 {
                for row in &g.rows {
                    let (l, i) = (lt[row.t as usize], inv[row.t as usize]);
                    ll -= row.weight * u * l;
                    gr -= row.weight * l;
                    gal -= row.weight * u * i;
                }
                continue;
            }
            let k = a.ln() - (b + xf - 1.0).ln();
            let (mut sr, mut sal, mut sw) = (0.0, 0.0, 0.0);
            for row in &g.rows {
                let (lt_big, lt_x) = (lt[row.t as usize], lt[row.t_x as usize]);
                let a3 = -u * lt_big;
                let d = k - u * (lt_x - lt_big);
                let e = (-d.abs()).exp();
                let softplus = d.max(0.0) + e.ln_1p();
                ll += row.weight * (a3 + softplus);
                if want_grad {
                    // w: the share of the "still alive at T" term.
                    let w = if d > 0.0 { 1.0 / (1.0 + e) } else { e / (1.0 + e) };
                    sr -= row.weight * ((1.0 - w) * lt_big + w * lt_x);
                    sal -= row.weight * ((1.0 - w) * inv[row.t as usize] + w * inv[row.t_x as usize]);
                    sw += row.weight * w;
                }
            }
            gr += sr;
            gal += u * sal;
            ga += sw / a;
            gb -= sw / (b + xf - 1.0);
        }
        if let Some(out) = grad {
            *out = [gr * r, gal * alpha, ga * a, gb * b];
        }
        ll
    }

    /// Fit by maximum likelihood.
    pub fn fit(&self) -> Fit {
        let n = self.customers.max(1.0);
        let (mean_t, mean_x) = self.means();
        // Start at r = 1, a = b = 1 and α matching the mean rate.
        let alpha0 = if mean_x > 0.0 && mean_t > 0.0 { mean_t / mean_x } else { 1.0 };
        let start = [0.0, alpha0.ln(), 0.0, 0.0];
        let (m, converged, covariance) = optimize::fit_log_likelihood(
            |v, grad: &mut [f64; 4]| self.log_likelihood(&Params::from_log(v), Some(grad)),
            &start,
            self.customers,
            |v| Params::from_log(v).is_valid(),
        );
        let params = Params::from_log(&m.x);
        Fit {
            params,
            log_likelihood: -m.value * n,
            converged,
            iterations: m.iterations,
            message: if self.customers > 0.0 { m.message } else { "no customers to fit".into() },
            covariance,
        }
    }
}

/// The outcome of a fit.
#[derive(Debug, Clone, PartialEq)]
pub struct Fit {
    /// The estimates (meaningful only if `converged`).
    pub params: Params,
    /// The log-likelihood at the estimates.
    pub log_likelihood: f64,
    /// Whether the optimiser converged to a proper maximum.
    pub converged: bool,
    /// Iterations used.
    pub iterations: usize,
    /// The optimiser's account of how it stopped.
    pub message: String,
    /// Asymptotic covariance of (ln r, ln α, ln a, ln b), if the Hessian
    /// at the optimum is positive definite.
    pub covariance: Option<Matrix>,
}

/// ln of the odds "dropped out after the last purchase" : "still alive",
/// a / (b + x − 1) · ((α + T)/(α + tₓ))^(r + x); −∞ when x = 0.
fn log_death_odds(p: &Params, c: &Rft) -> f64 {
    if c.x == 0 {
        return f64::NEG_INFINITY;
    }
    let xf = c.x as f64;
    p.a.ln() - (p.b + xf - 1.0).ln() + (p.r + xf) * ((p.alpha + c.t).ln() - (p.alpha + c.t_x).ln())
}

/// P(alive | x, tₓ, T): the probability the customer has not dropped out.
pub fn probability_alive(p: &Params, c: &Rft) -> f64 {
    let lo = log_death_odds(p, c);
    if lo == f64::NEG_INFINITY {
        return 1.0;
    }
    // 1 / (1 + e^lo), stable for either sign.
    if lo > 0.0 {
        let e = (-lo).exp();
        e / (1.0 + e)
    } else {
        1.0 / (1.0 + lo.exp())
    }
}

/// Expected transactions in (T, T + tᵢ] for each horizon tᵢ in
/// `horizons` (model time units, each ≥ 0), written into `out`.
pub fn expected_transactions_many(p: &Params, c: &Rft, horizons: &[f64], out: &mut [f64]) -> Result<(), Hyp2f1Error> {
    let xf = c.x as f64;
    // The formula has a removable singularity at a = 1.
    let a = if (p.a - 1.0).abs() < 1e-7 { 1.0 + 1e-7 } else { p.a };
    let u = p.r + xf;
    let (hb, hc) = (p.b + xf, a + p.b + xf - 1.0);
    let big = p.alpha + c.t;
    let zs: Vec<f64> = horizons.iter().map(|h| h / (big + h)).collect();
    hyp2f1_many(u, hb, hc, &zs, out)?;
    let lead = probability_alive(p, c) * hc / (a - 1.0);
    for (o, h) in out.iter_mut().zip(horizons) {
        let ratio = (u * (big / (big + h)).ln()).exp();
        *o = (lead * (1.0 - ratio * *o)).max(0.0);
    }
    Ok(())
}

/// Expected transactions in (T, T + horizon].
pub fn expected_transactions(p: &Params, c: &Rft, horizon: f64) -> Result<f64, Hyp2f1Error> {
    let mut out = [0.0];
    expected_transactions_many(p, c, &[horizon], &mut out)?;
    Ok(out[0])
}

/// A population of `n` customers drawn from the model, acquired uniformly
/// over `[0, acquisition)` and observed until `end` (model time), with
/// times rounded down to whole multiples of `resolution` (e.g. one day).
pub fn simulate(
    p: &Params,
    n: usize,
    acquisition: f64,
    end: f64,
    resolution: f64,
    rng: &mut super::random::Rng,
) -> Vec<Rft> {
    let snap = |t: f64| (t / resolution).floor() * resolution;
    (0..n)
        .map(|_| {
            let first = snap(rng.uniform() * acquisition);
            let age = (end - first).max(0.0);
            let lambda = rng.gamma(p.r, p.alpha);
            let drop = rng.beta(p.a, p.b);
            let (mut t, mut x, mut t_x) = (0.0, 0u32, 0.0);
            loop {
                t += rng.exponential(lambda);
                if t > age {
                    break;
                }
                x += 1;
                t_x = t;
                if rng.uniform() < drop {
                    break;
                }
            }
            // Rounding can put distinct purchases on one day; keep the
            // customer consistent (tₓ ≤ T) as the projection would.
            Rft { x, t_x: snap(t_x).min(age), t: age }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::random::Rng;
    use proptest::prelude::*;

    const CDNOW: Params = Params { r: 0.243, alpha: 4.414, a: 0.793, b: 2.426 };

    /// The log-likelihood of one customer written out term by term.
    fn naive_ll(p: &Params, c: &Rft) -> f64 {
        let Params { r, alpha, a, b } = *p;
        let x = c.x as f64;
        let a1 = ln_gamma(r + x) - ln_gamma(r) + r * alpha.ln();
        let a2 = ln_gamma(a + b) + ln_gamma(b + x) - ln_gamma(b) - ln_gamma(a + b + x);
        let a3 = -(r + x) * (alpha + c.t).ln();
        let a4 = if c.x > 0 { a.ln() - (b + x - 1.0).ln() - (r + x) * (alpha + c.t_x).ln() } else { f64::NEG_INFINITY };
        a1 + a2 + crate::domain::special::log_add_exp(a3, a4)
    }

    #[test]
    fn likelihood_at_known_values() {
        // Customer 1 of the CDNOW sample: x = 2, tₓ = 30.43, T = 38.86, at
        // the published estimates; written out: A1 + A2 + ln(e^A3 + e^A4).
        let c = Rft { x: 2, t_x: 30.43, t: 38.86 };
        let pop = Population::new([(c, 1.0)]);
        let ll = pop.log_likelihood(&CDNOW, None);
        assert!((ll - naive_ll(&CDNOW, &c)).abs() < 1e-12);
        // The same terms evaluated independently (Python's math.lgamma).
        assert!((ll - (-9.458_606_307_066_272)).abs() < 1e-10, "{ll}");
        // A customer with no repeats: r ln(α/(α+T)).
        let c0 = Rft { x: 0, t_x: 0.0, t: 38.86 };
        let ll0 = Population::new([(c0, 1.0)]).log_likelihood(&CDNOW, None);
        assert!((ll0 - 0.243 * (4.414f64 / (4.414 + 38.86)).ln()).abs() < 1e-12);
    }

    #[test]
    fn compression_does_not_change_the_likelihood() {
        let mut rng = Rng::new(1);
        let people = simulate(&CDNOW, 3_000, 12.0, 39.0, 1.0 / 7.0, &mut rng);
        let pop = Population::new(people.iter().map(|c| (*c, 1.0)));
        assert!(pop.distinct() < people.len());
        assert_eq!(pop.customers(), 3_000.0);
        let naive: f64 = people.iter().map(|c| naive_ll(&CDNOW, c)).sum();
        let ll = pop.log_likelihood(&CDNOW, None);
        assert!((ll - naive).abs() < 1e-8 * naive.abs(), "{ll} vs {naive}");
    }

    #[test]
    fn the_gradient_matches_finite_differences() {
        let mut rng = Rng::new(2);
        let people = simulate(&CDNOW, 500, 12.0, 39.0, 1.0 / 7.0, &mut rng);
        let pop = Population::new(people.iter().map(|c| (*c, 1.0)));
        let at = Params { r: 0.5, alpha: 3.0, a: 1.2, b: 2.0 };
        let mut g = [0.0; 4];
        pop.log_likelihood(&at, Some(&mut g));
        let base = at.to_log();
        for i in 0..4 {
            let h = 1e-6;
            let (mut up, mut down) = (base, base);
            up[i] += h;
            down[i] -= h;
            let numeric = (pop.log_likelihood(&Params::from_log_array(up), None)
                - pop.log_likelihood(&Params::from_log_array(down), None))
                / (2.0 * h);
            assert!((g[i] - numeric).abs() < 1e-5 * numeric.abs().max(1.0), "{i}: {} vs {numeric}", g[i]);
        }
    }

    #[test]
    fn the_fit_recovers_the_parameters_of_a_simulated_population() {
        let mut rng = Rng::new(3);
        let people = simulate(&CDNOW, 60_000, 12.0, 78.0, 1.0 / 7.0, &mut rng);
        let fit = Population::new(people.iter().map(|c| (*c, 1.0))).fit();
        assert!(fit.converged, "{fit:?}");
        let p = fit.params;
        assert!((p.r - 0.243).abs() < 0.03, "{p:?}");
        assert!((p.alpha - 4.414).abs() < 0.7, "{p:?}");
        assert!((p.a - 0.793).abs() < 0.25, "{p:?}");
        assert!((p.b - 2.426).abs() < 1.0, "{p:?}");
        let cov = fit.covariance.expect("covariance");
        assert!((0..4).all(|i| cov[i][i] > 0.0));
    }

    #[test]
    fn an_empty_population_does_not_converge() {
        let fit = Population::new([]).fit();
        assert!(!fit.converged);
    }

    #[test]
    fn expected_transactions_at_known_values() {
        // The conditional expectation (Fader, Hardie & Lee 2005, eq. 10)
        // for (t = 39, x = 2, tₓ = 30.43, T = 38.86) at the CDNOW
        // estimates, evaluated independently with Python floats and a
        // directly summed series: 1.226028174767135.
        let c = Rft { x: 2, t_x: 30.43, t: 38.86 };
        let e = expected_transactions(&CDNOW, &c, 39.0).unwrap();
        assert!((e - 1.226_028_174_767_135).abs() < 1e-11, "{e}");
        assert_eq!(expected_transactions(&CDNOW, &c, 0.0).unwrap(), 0.0);
        let many = {
            let mut out = [0.0; 3];
            expected_transactions_many(&CDNOW, &c, &[10.0, 20.0, 39.0], &mut out).unwrap();
            out
        };
        assert!(many[0] < many[1] && many[1] < many[2]);
        assert!((many[2] - e).abs() < 1e-12);
    }

    #[test]
    fn probability_alive_at_known_values() {
        // x = 0: alive by assumption; customer 1 of CDNOW: 1/(1 + odds).
        assert_eq!(probability_alive(&CDNOW, &Rft { x: 0, t_x: 0.0, t: 38.86 }), 1.0);
        let c = Rft { x: 2, t_x: 30.43, t: 38.86 };
        let odds = 0.793 / (2.426 + 1.0) * ((4.414 + 38.86) / (4.414 + 30.43f64)).powf(2.243);
        assert!((probability_alive(&CDNOW, &c) - 1.0 / (1.0 + odds)).abs() < 1e-14);
    }

    fn params() -> impl Strategy<Value = Params> {
        (0.01f64..50.0, 0.01f64..200.0, 0.01f64..50.0, 0.01f64..50.0).prop_map(|(r, alpha, a, b)| Params {
            r,
            alpha,
            a,
            b,
        })
    }

    proptest! {
        #[test]
        fn probability_alive_is_a_probability(p in params(), x in 0u32..500, t in 0.0f64..1_000.0, share in 0.0f64..=1.0) {
            let pa = probability_alive(&p, &Rft { x, t_x: t * share, t });
            prop_assert!((0.0..=1.0).contains(&pa), "{pa}");
        }

        #[test]
        fn probability_alive_rises_with_recency(p in params(), x in 1u32..500, t in 0.0f64..1_000.0, s1 in 0.0f64..=1.0, s2 in 0.0f64..=1.0) {
            let (lo, hi) = if s1 <= s2 { (s1, s2) } else { (s2, s1) };
            let older = probability_alive(&p, &Rft { x, t_x: t * lo, t });
            let newer = probability_alive(&p, &Rft { x, t_x: t * hi, t });
            prop_assert!(older <= newer, "{older} > {newer}");
        }

        #[test]
        fn expected_transactions_are_finite_and_grow_with_the_horizon(p in params(), x in 0u32..50, t in 0.1f64..100.0, share in 0.0f64..=1.0) {
            let c = Rft { x, t_x: t * share, t };
            let mut out = [0.0; 2];
            if expected_transactions_many(&p, &c, &[4.0, 52.0], &mut out).is_ok() {
                prop_assert!(out.iter().all(|v| v.is_finite() && *v >= 0.0), "{out:?}");
                prop_assert!(out[0] <= out[1] * (1.0 + 1e-9) + 1e-12, "{out:?}");
            }
        }
    }
}
