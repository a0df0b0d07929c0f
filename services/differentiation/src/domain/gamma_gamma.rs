//! The Gamma–Gamma model of spend per transaction (Fader, Hardie & Lee,
//! "RFM and CLV: using iso-value curves for customer base analysis",
//! Journal of Marketing Research 42(4), 2005; the form of Colombo & Jiang).
//!
//! A customer's transaction values are Gamma(p, ν) with ν ~ Gamma(q, γ)
//! across customers; fitted on customers with at least one repeat
//! transaction from (x, m̄): repeat transactions and their mean value.
//! Like BG/NBD it is fitted over log-parameters by BFGS with the analytic
//! gradient, grouped by x so each evaluation costs one logarithm per
//! distinct (x, m̄).

use super::{
    optimize::{self, Matrix},
    special::{digamma, ln_gamma},
};

/// Gamma–Gamma parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// Shape of the transaction-value gamma.
    pub p: f64,
    /// Shape of the gamma of ν across customers.
    pub q: f64,
    /// Rate of the gamma of ν across customers (in currency units).
    pub gamma: f64,
}

impl Params {
    fn from_log(v: &[f64]) -> Params {
        Params { p: v[0].exp(), q: v[1].exp(), gamma: v[2].exp() }
    }

    /// The logarithms of (p, q, γ).
    pub fn to_log(self) -> [f64; 3] {
        [self.p.ln(), self.q.ln(), self.gamma.ln()]
    }

    /// Parameters from the logarithms of (p, q, γ).
    pub fn from_log_array(v: [f64; 3]) -> Params {
        Params::from_log(&v)
    }

    /// Whether all three are finite and positive.
    pub fn is_valid(&self) -> bool {
        [self.p, self.q, self.gamma].iter().all(|v| v.is_finite() && *v > 0.0)
    }
}

/// One customer: repeat transactions and their mean value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spend {
    /// Repeat transactions (≥ 1 to be used).
    pub x: u32,
    /// Mean value of the repeat transactions (> 0 to be used).
    pub mean: f64,
}

#[derive(Debug, Clone)]
struct Group {
    x: f64,
    weight: f64,
    sum_ln_mean: f64,
    rows: Vec<(f64, f64)>,
}

/// Spenders compressed to distinct (x, m̄) with multiplicities.
#[derive(Debug, Clone, Default)]
pub struct Population {
    groups: Vec<Group>,
    customers: f64,
}

impl Population {
    /// Compress `(customer, multiplicity)` pairs; customers without repeat
    /// transactions or with a non-positive mean are not part of the model.
    pub fn new(customers: impl IntoIterator<Item = (Spend, f64)>) -> Population {
        let mut all: Vec<(Spend, f64)> = customers
            .into_iter()
            .filter(|(s, w)| s.x > 0 && s.mean.is_finite() && s.mean > 0.0 && *w > 0.0 && w.is_finite())
            .collect();
        all.sort_unstable_by(|(a, _), (b, _)| a.x.cmp(&b.x).then(a.mean.total_cmp(&b.mean)));
        let mut groups: Vec<Group> = Vec::new();
        let mut customers = 0.0;
        for (s, w) in all {
            customers += w;
            let xf = s.x as f64;
            if groups.last().is_none_or(|g| g.x != xf) {
                groups.push(Group { x: xf, weight: 0.0, sum_ln_mean: 0.0, rows: Vec::new() });
            }
            let Some(g) = groups.last_mut() else { continue };
            g.weight += w;
            g.sum_ln_mean += w * s.mean.ln();
            match g.rows.last_mut() {
                Some((m, wt)) if *m == s.mean * xf => *wt += w,
                _ => g.rows.push((s.mean * xf, w)),
            }
        }
        Population { groups, customers }
    }

    /// Customers in the model (sum of multiplicities).
    pub fn customers(&self) -> f64 {
        self.customers
    }

    /// The log-likelihood at `p`; with `grad`, also its gradient with
    /// respect to (ln p, ln q, ln γ).
    pub fn log_likelihood(&self, prm: &Params, grad: Option<&mut [f64; 3]>) -> f64 {
        let Params { p, q, gamma } = *prm;
        let (lg_q, dg_q, ln_g) = (ln_gamma(q), digamma(q), gamma.ln());
        let want_grad = grad.is_some();
        let (mut ll, mut gp, mut gq, mut gg) = (0.0, 0.0, 0.0, 0.0);
        for g in &self.groups {
            let px = p * g.x;
            let (mut s_ln, mut s_inv) = (0.0, 0.0);
            for &(total, w) in &g.rows {
                let d = gamma + total;
                s_ln += w * d.ln();
                if want_grad {
                    s_inv += w / d;
                }
            }
            ll += g.weight * (ln_gamma(px + q) - ln_gamma(px) - lg_q + q * ln_g + px * g.x.ln())
                + (px - 1.0) * g.sum_ln_mean
                - (px + q) * s_ln;
            if want_grad {
                let dg = digamma(px + q);
                gp += g.weight * g.x * (dg - digamma(px) + g.x.ln()) + g.x * g.sum_ln_mean - g.x * s_ln;
                gq += g.weight * (dg - dg_q + ln_g) - s_ln;
                gg += g.weight * q / gamma - (px + q) * s_inv;
            }
        }
        if let Some(out) = grad {
            *out = [gp * p, gq * q, gg * gamma];
        }
        ll
    }

    /// Fit by maximum likelihood.
    pub fn fit(&self) -> Fit {
        let n = self.customers.max(1.0);
        let (m, converged, covariance) = optimize::fit_log_likelihood(
            |v, grad: &mut [f64; 3]| self.log_likelihood(&Params::from_log(v), Some(grad)),
            &[0.0, 0.0, 0.0],
            self.customers,
            |v| Params::from_log(v).is_valid(),
        );
        let params = Params::from_log(&m.x);
        Fit {
            params,
            log_likelihood: -m.value * n,
            converged,
            message: if self.customers > 0.0 { m.message } else { "no customers with repeat transactions".into() },
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
    /// Whether the optimiser converged.
    pub converged: bool,
    /// How it stopped.
    pub message: String,
    /// Asymptotic covariance of (ln p, ln q, ln γ).
    pub covariance: Option<Matrix>,
}

/// E(M | x, m̄): the expected value of this customer's transactions, a
/// weighted mean of the population mean pγ/(q − 1) and their own m̄.
/// `None` when q ≤ 1 (the population mean does not exist) and x = 0.
pub fn expected_average(p: &Params, x: u32, mean: f64) -> Option<f64> {
    let xf = x as f64;
    let denominator = p.p * xf + p.q - 1.0;
    if denominator <= 0.0 {
        return None;
    }
    let value = p.p * (p.gamma + xf * mean) / denominator;
    value.is_finite().then_some(value)
}

/// The mean of `x` transaction values of one customer drawn from the model.
pub fn simulate_mean(p: &Params, x: u32, rng: &mut super::random::Rng) -> f64 {
    let nu = rng.gamma(p.q, p.gamma);
    let total: f64 = (0..x).map(|_| rng.gamma(p.p, nu)).sum();
    total / x.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::random::Rng;

    const CDNOW: Params = Params { p: 6.25, q: 3.74, gamma: 15.44 };

    #[test]
    fn likelihood_at_a_known_value() {
        // Customer 1 of the CDNOW sample (x = 2, m̄ = 22.35) at the published
        // estimates, the terms evaluated independently with Python's
        // math.lgamma: −3.551316759731698.
        let pop = Population::new([(Spend { x: 2, mean: 22.35 }, 1.0)]);
        let ll = pop.log_likelihood(&CDNOW, None);
        assert!((ll - (-3.551_316_759_731_698)).abs() < 1e-10, "{ll}");
    }

    #[test]
    fn the_gradient_matches_finite_differences() {
        let mut rng = Rng::new(5);
        let people: Vec<(Spend, f64)> = (0..400)
            .map(|i| {
                let x = 1 + i % 7;
                (Spend { x, mean: simulate_mean(&CDNOW, x, &mut rng) }, 1.0)
            })
            .collect();
        let pop = Population::new(people);
        let at = Params { p: 4.0, q: 2.5, gamma: 10.0 };
        let mut g = [0.0; 3];
        pop.log_likelihood(&at, Some(&mut g));
        for i in 0..3 {
            let h = 1e-6;
            let (mut up, mut down) = (at.to_log(), at.to_log());
            up[i] += h;
            down[i] -= h;
            let numeric = (pop.log_likelihood(&Params::from_log_array(up), None)
                - pop.log_likelihood(&Params::from_log_array(down), None))
                / (2.0 * h);
            assert!((g[i] - numeric).abs() < 1e-5 * numeric.abs().max(1.0), "{i}: {} vs {numeric}", g[i]);
        }
    }

    #[test]
    fn the_fit_recovers_simulated_parameters() {
        let mut rng = Rng::new(6);
        let people: Vec<(Spend, f64)> = (0..40_000)
            .map(|i| {
                let x = 1 + i % 10;
                (Spend { x, mean: simulate_mean(&CDNOW, x, &mut rng) }, 1.0)
            })
            .collect();
        let fit = Population::new(people).fit();
        assert!(fit.converged, "{fit:?}");
        let p = fit.params;
        // p γ/(q − 1), the population mean, is well identified.
        let mean = p.p * p.gamma / (p.q - 1.0);
        assert!((mean - 6.25 * 15.44 / 2.74).abs() < 1.5, "{p:?}");
        assert!((p.p - 6.25).abs() < 0.6, "{p:?}");
        assert!(fit.covariance.is_some());
    }

    #[test]
    fn customers_without_repeats_are_not_in_the_model() {
        let pop = Population::new([(Spend { x: 0, mean: 0.0 }, 1.0), (Spend { x: 1, mean: -3.0 }, 1.0)]);
        assert_eq!(pop.customers(), 0.0);
        assert!(!pop.fit().converged);
    }

    #[test]
    fn expected_average_shrinks_towards_the_population_mean() {
        let population = 6.25 * 15.44 / 2.74;
        let none = expected_average(&CDNOW, 0, 0.0).unwrap();
        assert!((none - population).abs() < 1e-12);
        let few = expected_average(&CDNOW, 1, 100.0).unwrap();
        let many = expected_average(&CDNOW, 50, 100.0).unwrap();
        assert!(population < few && few < many && many < 100.0);
        assert_eq!(expected_average(&Params { q: 0.5, ..CDNOW }, 0, 0.0), None);
    }
}
