//! Special functions the value models need, in forms that stay accurate
//! where the models evaluate them: the log-gamma function (Lanczos), the
//! digamma function (recurrence plus asymptotic series) and the Gauss
//! hypergeometric function ₂F₁ on 0 ≤ z < 1 (its power series, summed for
//! several arguments at once because a CLV needs one value per month).

use std::f64::consts::PI;

/// Lanczos parameter g and coefficients (n = 9), good to about 1e-15
/// relative error over the positive reals.
const LANCZOS_G: f64 = 7.0;
const LANCZOS: [f64; 9] = [
    0.999_999_999_999_809_9,
    676.520_368_121_885_1,
    -1_259.139_216_722_402_8,
    771.323_428_777_653_1,
    -176.615_029_162_140_6,
    12.507_343_278_686_905,
    -0.138_571_095_265_720_12,
    9.984_369_578_019_572e-6,
    1.505_632_735_149_311_6e-7,
];

/// ln |Γ(x)|. Infinite at the poles (0, −1, −2, …).
pub fn ln_gamma(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    if x <= 0.0 && x == x.floor() {
        return f64::INFINITY;
    }
    if x < 0.5 {
        // Reflection: Γ(x) Γ(1 − x) = π / sin(πx).
        return (PI / (PI * x).sin().abs()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut sum = LANCZOS[0];
    for (i, c) in LANCZOS.iter().enumerate().skip(1) {
        sum += c / (x + i as f64);
    }
    let t = x + LANCZOS_G + 0.5;
    0.5 * (2.0 * PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

/// ψ(x) = d/dx ln Γ(x). NaN at the poles.
pub fn digamma(x: f64) -> f64 {
    if x.is_nan() || (x <= 0.0 && x == x.floor()) {
        return f64::NAN;
    }
    if x < 0.0 {
        // Reflection: ψ(1 − x) − ψ(x) = π cot(πx).
        return digamma(1.0 - x) - PI / (PI * x).tan();
    }
    let mut x = x;
    let mut acc = 0.0;
    while x < 10.0 {
        acc -= 1.0 / x;
        x += 1.0;
    }
    let f = 1.0 / (x * x);
    // ψ(x) ~ ln x − 1/(2x) − Σ B₂ₖ/(2k x²ᵏ); at x ≥ 10 the first omitted
    // term is below 1e-15.
    let series = f
        * (1.0 / 12.0
            - f * (1.0 / 120.0 - f * (1.0 / 252.0 - f * (1.0 / 240.0 - f * (1.0 / 132.0 - f * (691.0 / 32_760.0))))));
    acc + x.ln() - 0.5 / x - series
}

/// Most series terms summed before ₂F₁ gives up.
pub const HYP2F1_MAX_TERMS: usize = 100_000;

/// Why ₂F₁ could not be evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hyp2f1Error {
    /// z outside [0, 1): the series does not converge there.
    OutOfDomain,
    /// The series did not settle within [`HYP2F1_MAX_TERMS`] terms.
    NotConverged,
}

/// ₂F₁(a, b; c; z) for 0 ≤ z < 1, a, b, c > 0.
pub fn hyp2f1(a: f64, b: f64, c: f64, z: f64) -> Result<f64, Hyp2f1Error> {
    let mut out = [0.0];
    hyp2f1_many(a, b, c, &[z], &mut out)?;
    Ok(out[0])
}

/// ₂F₁(a, b; c; zᵢ) for every zᵢ in `zs` (each in [0, 1)), into `out`.
/// The series coefficients are shared, so k arguments cost one series
/// plus k multiply-adds per term.
pub fn hyp2f1_many(a: f64, b: f64, c: f64, zs: &[f64], out: &mut [f64]) -> Result<(), Hyp2f1Error> {
    debug_assert_eq!(zs.len(), out.len());
    let mut zmax: f64 = 0.0;
    for &z in zs {
        if !(0.0..1.0).contains(&z) {
            return Err(Hyp2f1Error::OutOfDomain);
        }
        zmax = zmax.max(z);
    }
    if !(a.is_finite() && b.is_finite() && c > 0.0 && c.is_finite()) {
        return Err(Hyp2f1Error::OutOfDomain);
    }
    // Small fixed-size scratch for the powers: CLV needs at most a few
    // dozen arguments; larger requests are done in chunks.
    const CHUNK: usize = 64;
    for (zc, oc) in zs.chunks(CHUNK).zip(out.chunks_mut(CHUNK)) {
        let mut pow = [1.0f64; CHUNK];
        let k = zc.len();
        for o in oc.iter_mut() {
            *o = 1.0;
        }
        let mut coef = 1.0f64;
        let mut n = 0usize;
        loop {
            let nf = n as f64;
            coef *= (a + nf) * (b + nf) / ((c + nf) * (nf + 1.0));
            n += 1;
            let mut biggest: f64 = 0.0;
            let mut smallest_sum = f64::INFINITY;
            for i in 0..k {
                pow[i] *= zc[i];
                let term = coef * pow[i];
                oc[i] += term;
                biggest = biggest.max(term.abs());
                smallest_sum = smallest_sum.min(oc[i].abs());
            }
            // Once (a + n)(b + n)/(c + n) < n + 1 the terms shrink at least
            // geometrically by z, so a tiny term means a settled sum.
            let shrinking = (a + nf) * (b + nf) * zmax < (c + nf) * (nf + 1.0);
            if shrinking && biggest <= 1e-16 * smallest_sum.max(f64::MIN_POSITIVE) {
                break;
            }
            if !coef.is_finite() {
                return Err(Hyp2f1Error::NotConverged);
            }
            if n >= HYP2F1_MAX_TERMS {
                return Err(Hyp2f1Error::NotConverged);
            }
        }
    }
    Ok(())
}

/// ln(eᵃ + eᵇ) without overflow.
pub fn log_add_exp(a: f64, b: f64) -> f64 {
    let m = a.max(b);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + (-(a - b).abs()).exp().ln_1p()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs().max(1e-300)
    }

    #[test]
    fn ln_gamma_at_known_values() {
        // Γ(1) = Γ(2) = 1, Γ(1/2) = √π, Γ(5) = 24, Γ(0.1) = 9.513507698668732.
        assert!(ln_gamma(1.0).abs() < 1e-14);
        assert!(ln_gamma(2.0).abs() < 1e-14);
        assert!(close(ln_gamma(0.5), 0.5 * PI.ln(), 1e-14));
        assert!(close(ln_gamma(5.0), 24f64.ln(), 1e-14));
        assert!(close(ln_gamma(0.1), 9.513_507_698_668_732f64.ln(), 1e-13));
        // ln Γ(100) = ln(99!) = 359.13420536957540.
        assert!(close(ln_gamma(100.0), 359.134_205_369_575_4, 1e-14));
        // ln Γ(1e6) by Stirling: 12815504.569147611.
        assert!(close(ln_gamma(1e6), 12_815_504.569_147_611, 1e-13));
        // Γ(−0.5) = −2√π.
        assert!(close(ln_gamma(-0.5), (2.0 * PI.sqrt()).ln(), 1e-13));
        assert_eq!(ln_gamma(0.0), f64::INFINITY);
        assert_eq!(ln_gamma(-3.0), f64::INFINITY);
    }

    #[test]
    fn ln_gamma_satisfies_the_recurrence() {
        for &x in &[0.013, 0.243, 0.793, 2.426, 4.414, 17.5, 250.25] {
            assert!(close(ln_gamma(x + 1.0) - ln_gamma(x), x.ln(), 1e-12), "x = {x}");
        }
    }

    #[test]
    fn digamma_at_known_values() {
        // ψ(1) = −γ, ψ(1/2) = −γ − 2 ln 2, ψ(10) = 2.251752589066721.
        let euler = 0.577_215_664_901_532_9;
        assert!(close(digamma(1.0), -euler, 1e-14));
        assert!(close(digamma(0.5), -euler - 2.0 * 2f64.ln(), 1e-14));
        assert!(close(digamma(10.0), 2.251_752_589_066_721, 1e-14));
        // ψ(0.243) by the recurrence ψ(x) = ψ(x + 1) − 1/x.
        assert!(close(digamma(0.243), digamma(1.243) - 1.0 / 0.243, 1e-13));
        assert!(close(digamma(-0.5), 0.036_489_973_978_576_52, 1e-12));
        assert!(digamma(0.0).is_nan());
    }

    #[test]
    fn digamma_is_the_derivative_of_ln_gamma() {
        for &x in &[0.2, 0.793, 3.3, 42.0] {
            let h = 1e-5 * x;
            let numeric = (ln_gamma(x + h) - ln_gamma(x - h)) / (2.0 * h);
            assert!(close(digamma(x), numeric, 1e-8), "x = {x}");
        }
    }

    #[test]
    fn hyp2f1_at_known_values() {
        // ₂F₁(1, 1; 2; z) = −ln(1 − z)/z.
        for &z in &[0.0f64, 0.1, 0.5, 0.9, 0.99] {
            let want = if z == 0.0 { 1.0 } else { -(1.0 - z).ln() / z };
            assert!(close(hyp2f1(1.0, 1.0, 2.0, z).unwrap(), want, 1e-13), "z = {z}");
        }
        // ₂F₁(a, b; b; z) = (1 − z)^(−a).
        assert!(close(hyp2f1(0.7, 2.5, 2.5, 0.6).unwrap(), 0.4f64.powf(-0.7), 1e-13));
        // ₂F₁(1/2, 1/2; 3/2; z²) = asin(z)/z.
        let z: f64 = 0.8;
        assert!(close(hyp2f1(0.5, 0.5, 1.5, z * z).unwrap(), z.asin() / z, 1e-12));
        // A BG/NBD-shaped call, 2F1(r+x, b+x; a+b+x−1; z); the series
        // summed to 50 digits in decimal arithmetic gives
        // 2F1(2.243, 4.426; 5.219; 0.5) = 3.61470770682328228315772.
        assert!(close(hyp2f1(2.243, 4.426, 5.219, 0.5).unwrap(), 3.614_707_706_823_282, 1e-13));
    }

    #[test]
    fn hyp2f1_many_matches_single_calls() {
        let zs = [0.05, 0.3, 0.55, 0.8];
        let mut out = [0.0; 4];
        hyp2f1_many(1.3, 2.2, 3.1, &zs, &mut out).unwrap();
        for (z, o) in zs.iter().zip(out) {
            assert!(close(o, hyp2f1(1.3, 2.2, 3.1, *z).unwrap(), 1e-14));
        }
    }

    #[test]
    fn hyp2f1_outside_its_disc_is_an_error() {
        assert_eq!(hyp2f1(1.0, 1.0, 2.0, 1.0), Err(Hyp2f1Error::OutOfDomain));
        assert_eq!(hyp2f1(1.0, 1.0, 2.0, -0.1), Err(Hyp2f1Error::OutOfDomain));
        assert_eq!(hyp2f1(1.0, 1.0, 2.0, f64::NAN), Err(Hyp2f1Error::OutOfDomain));
    }

    #[test]
    fn log_add_exp_is_stable() {
        assert!(close(log_add_exp(1000.0, 1000.0), 1000.0 + 2f64.ln(), 1e-15));
        assert!(log_add_exp(-1000.0, 0.0).abs() < 1e-300);
        assert!(close(log_add_exp(0.0, 2f64.ln()), 3f64.ln(), 1e-15));
        assert_eq!(log_add_exp(f64::NEG_INFINITY, f64::NEG_INFINITY), f64::NEG_INFINITY);
    }
}
