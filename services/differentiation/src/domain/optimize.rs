//! Small dense numerics for the maximum-likelihood fits: a BFGS minimiser
//! with a backtracking (Armijo) line search, a Hessian by central
//! differences of an analytic gradient, and Cholesky factorisation and
//! inversion of symmetric positive-definite matrices.

// Matrix code reads best with the indices of the textbook formulas.
#![allow(clippy::needless_range_loop)]

/// A row-major square matrix.
pub type Matrix = Vec<Vec<f64>>;

/// What the minimiser reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Minimum {
    /// Where it stopped.
    pub x: Vec<f64>,
    /// The objective there.
    pub value: f64,
    /// The gradient's largest component there.
    pub gradient_norm: f64,
    /// Iterations done.
    pub iterations: usize,
    /// Whether the gradient tolerance was met.
    pub converged: bool,
    /// Why it stopped, for operators.
    pub message: String,
}

/// Settings of [`bfgs`].
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Stop when every gradient component is below this.
    pub gradient_tolerance: f64,
    /// Give up after this many iterations.
    pub max_iterations: usize,
    /// Box on every coordinate (the parameters are logarithms: ±40 is
    /// e^±40, far outside any sensible model).
    pub bound: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { gradient_tolerance: 1e-7, max_iterations: 400, bound: 40.0 }
    }
}

fn inf_norm(v: &[f64]) -> f64 {
    v.iter().fold(0.0f64, |m, x| m.max(x.abs()))
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Minimise `f` (returning the value and writing the gradient into its
/// second argument) from `x0` by BFGS. Non-finite values count as "too far"
/// and shorten the step.
pub fn bfgs(mut f: impl FnMut(&[f64], &mut [f64]) -> f64, x0: &[f64], settings: Settings) -> Minimum {
    let n = x0.len();
    let mut x = x0.to_vec();
    let mut g = vec![0.0; n];
    let mut fx = f(&x, &mut g);
    if !fx.is_finite() || g.iter().any(|v| !v.is_finite()) {
        return Minimum {
            x,
            value: fx,
            gradient_norm: f64::NAN,
            iterations: 0,
            converged: false,
            message: "the objective is not finite at the starting point".into(),
        };
    }
    // Inverse Hessian approximation.
    let mut h = identity(n);
    let mut xn = vec![0.0; n];
    let mut gn = vec![0.0; n];
    let mut stalled = 0;
    for it in 0..settings.max_iterations {
        let gnorm = inf_norm(&g);
        if gnorm < settings.gradient_tolerance {
            return Minimum {
                x,
                value: fx,
                gradient_norm: gnorm,
                iterations: it,
                converged: true,
                message: "gradient below tolerance".into(),
            };
        }
        let mut d: Vec<f64> = (0..n).map(|i| -dot(&h[i], &g)).collect();
        let mut slope = dot(&d, &g);
        if slope >= 0.0 {
            // Not a descent direction: restart from steepest descent.
            h = identity(n);
            d = g.iter().map(|v| -v).collect();
            slope = dot(&d, &g);
        }
        // Keep the first steps modest: the scale of the problem is unknown.
        let dn = inf_norm(&d);
        let mut step = if dn > 2.0 { 2.0 / dn } else { 1.0 };
        let mut accepted = false;
        let mut fnew = f64::NAN;
        for _ in 0..60 {
            for i in 0..n {
                xn[i] = (x[i] + step * d[i]).clamp(-settings.bound, settings.bound);
            }
            fnew = f(&xn, &mut gn);
            if fnew.is_finite() && gn.iter().all(|v| v.is_finite()) && fnew <= fx + 1e-4 * step * slope {
                accepted = true;
                break;
            }
            step *= 0.5;
        }
        if !accepted {
            let gnorm = inf_norm(&g);
            return Minimum {
                x,
                value: fx,
                gradient_norm: gnorm,
                iterations: it,
                // A line search that cannot improve at a point whose
                // gradient is already tiny has found the minimum to
                // machine precision.
                converged: gnorm < settings.gradient_tolerance * 100.0,
                message: "line search could not decrease the objective".into(),
            };
        }
        let s: Vec<f64> = (0..n).map(|i| xn[i] - x[i]).collect();
        let y: Vec<f64> = (0..n).map(|i| gn[i] - g[i]).collect();
        let sy = dot(&s, &y);
        if (fx - fnew).abs() <= 1e-15 * fx.abs().max(1.0) {
            stalled += 1;
        } else {
            stalled = 0;
        }
        x.copy_from_slice(&xn);
        g.copy_from_slice(&gn);
        fx = fnew;
        if x.iter().any(|v| v.abs() >= settings.bound) {
            return Minimum {
                gradient_norm: inf_norm(&g),
                x,
                value: fx,
                iterations: it + 1,
                converged: false,
                message: "a parameter ran off to 0 or infinity".into(),
            };
        }
        if stalled >= 5 {
            let gnorm = inf_norm(&g);
            return Minimum {
                x,
                value: fx,
                gradient_norm: gnorm,
                iterations: it + 1,
                converged: gnorm < settings.gradient_tolerance * 100.0,
                message: "the objective stopped changing".into(),
            };
        }
        if sy > 1e-12 * dot(&y, &y).sqrt() * dot(&s, &s).sqrt() {
            // BFGS update of the inverse Hessian.
            let hy: Vec<f64> = (0..n).map(|i| dot(&h[i], &y)).collect();
            let yhy = dot(&y, &hy);
            let rho = 1.0 / sy;
            for i in 0..n {
                for j in 0..n {
                    h[i][j] += rho * ((1.0 + rho * yhy) * s[i] * s[j] - hy[i] * s[j] - s[i] * hy[j]);
                }
            }
        } else {
            h = identity(n);
        }
    }
    Minimum {
        gradient_norm: inf_norm(&g),
        x,
        value: fx,
        iterations: settings.max_iterations,
        converged: false,
        message: format!("no convergence within {} iterations", settings.max_iterations),
    }
}

/// A maximum-likelihood fit over log-parameters: BFGS on the mean negative
/// log-likelihood of `customers` from `start`, and, when it converged
/// (`valid` also holding at the optimum), the asymptotic covariance of the
/// log-parameters (the inverse Hessian of the total negative
/// log-likelihood). `log_likelihood(v, gradient)` returns the total
/// log-likelihood at log-parameters `v` and writes its gradient.
pub fn fit_log_likelihood<const N: usize>(
    log_likelihood: impl Fn(&[f64], &mut [f64; N]) -> f64,
    start: &[f64; N],
    customers: f64,
    valid: impl Fn(&[f64]) -> bool,
) -> (Minimum, bool, Option<Matrix>) {
    let n = customers.max(1.0);
    let objective = |v: &[f64], g: &mut [f64]| {
        let mut grad = [0.0; N];
        let ll = log_likelihood(v, &mut grad);
        for (gi, d) in g.iter_mut().zip(grad) {
            *gi = -d / n;
        }
        -ll / n
    };
    let m = bfgs(objective, start, Settings::default());
    let converged = m.converged && valid(&m.x) && customers > 0.0;
    let covariance = if converged {
        let h = hessian(
            |v, g| {
                let mut grad = [0.0; N];
                log_likelihood(v, &mut grad);
                for (gi, d) in g.iter_mut().zip(grad) {
                    *gi = -d;
                }
            },
            &m.x,
        );
        spd_inverse(&h)
    } else {
        None
    };
    (m, converged, covariance)
}

/// The n × n identity.
pub fn identity(n: usize) -> Matrix {
    (0..n).map(|i| (0..n).map(|j| if i == j { 1.0 } else { 0.0 }).collect()).collect()
}

/// The Hessian at `x` by central differences of the gradient `grad`,
/// symmetrised.
pub fn hessian(mut grad: impl FnMut(&[f64], &mut [f64]), x: &[f64]) -> Matrix {
    let n = x.len();
    let mut h = vec![vec![0.0; n]; n];
    let mut xp = x.to_vec();
    let mut gp = vec![0.0; n];
    let mut gm = vec![0.0; n];
    for j in 0..n {
        let step = 1e-5 * x[j].abs().max(1.0);
        xp[j] = x[j] + step;
        grad(&xp, &mut gp);
        xp[j] = x[j] - step;
        grad(&xp, &mut gm);
        xp[j] = x[j];
        for i in 0..n {
            h[i][j] = (gp[i] - gm[i]) / (2.0 * step);
        }
    }
    for i in 0..n {
        for j in 0..i {
            let m = 0.5 * (h[i][j] + h[j][i]);
            h[i][j] = m;
            h[j][i] = m;
        }
    }
    h
}

/// The lower Cholesky factor L (A = L Lᵀ), or `None` if `a` is not
/// symmetric positive definite.
pub fn cholesky(a: &Matrix) -> Option<Matrix> {
    let n = a.len();
    let mut l = vec![vec![0.0; n]; n];
    for i in 0..n {
        for j in 0..=i {
            let mut sum = a[i][j];
            for k in 0..j {
                sum -= l[i][k] * l[j][k];
            }
            if i == j {
                if sum.is_nan() || sum <= 0.0 || sum.is_infinite() {
                    return None;
                }
                l[i][i] = sum.sqrt();
            } else {
                l[i][j] = sum / l[j][j];
            }
        }
    }
    Some(l)
}

/// The inverse of a symmetric positive-definite matrix, or `None`.
pub fn spd_inverse(a: &Matrix) -> Option<Matrix> {
    let n = a.len();
    let l = cholesky(a)?;
    // Solve L Lᵀ X = I column by column.
    let mut inv = vec![vec![0.0; n]; n];
    for c in 0..n {
        let mut y = vec![0.0; n];
        for i in 0..n {
            let mut s = if i == c { 1.0 } else { 0.0 };
            for k in 0..i {
                s -= l[i][k] * y[k];
            }
            y[i] = s / l[i][i];
        }
        let mut x = vec![0.0; n];
        for i in (0..n).rev() {
            let mut s = y[i];
            for k in i + 1..n {
                s -= l[k][i] * x[k];
            }
            x[i] = s / l[i][i];
        }
        for i in 0..n {
            inv[i][c] = x[i];
        }
    }
    Some(inv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bfgs_finds_the_rosenbrock_minimum() {
        let m = bfgs(
            |x, g| {
                let (a, b) = (x[0], x[1]);
                g[0] = -2.0 * (1.0 - a) - 400.0 * a * (b - a * a);
                g[1] = 200.0 * (b - a * a);
                (1.0 - a).powi(2) + 100.0 * (b - a * a).powi(2)
            },
            &[-1.2, 1.0],
            Settings { gradient_tolerance: 1e-9, max_iterations: 1000, bound: 40.0 },
        );
        assert!(m.converged, "{m:?}");
        assert!((m.x[0] - 1.0).abs() < 1e-6 && (m.x[1] - 1.0).abs() < 1e-6, "{m:?}");
    }

    #[test]
    fn bfgs_says_when_it_does_not_converge() {
        // Unbounded below along x: the parameter runs into the box.
        let m = bfgs(
            |x, g| {
                g[0] = -1.0;
                -x[0]
            },
            &[0.0],
            Settings::default(),
        );
        assert!(!m.converged);
        let m = bfgs(
            |x, g| {
                g[0] = 2.0 * x[0];
                x[0] * x[0]
            },
            &[5.0],
            Settings { max_iterations: 0, ..Settings::default() },
        );
        assert!(!m.converged);
        assert!(m.message.contains("no convergence"));
    }

    #[test]
    fn hessian_and_inverse_of_a_quadratic() {
        // f = ½ xᵀ A x with A = [[4, 1], [1, 3]].
        let a = vec![vec![4.0, 1.0], vec![1.0, 3.0]];
        let h = hessian(
            |x, g| {
                g[0] = 4.0 * x[0] + x[1];
                g[1] = x[0] + 3.0 * x[1];
            },
            &[0.3, -0.2],
        );
        for i in 0..2 {
            for j in 0..2 {
                assert!((h[i][j] - a[i][j]).abs() < 1e-8);
            }
        }
        let inv = spd_inverse(&a).unwrap();
        // A⁻¹ = [[3, −1], [−1, 4]] / 11.
        let want = [[3.0 / 11.0, -1.0 / 11.0], [-1.0 / 11.0, 4.0 / 11.0]];
        for i in 0..2 {
            for j in 0..2 {
                assert!((inv[i][j] - want[i][j]).abs() < 1e-14);
            }
        }
        assert!(spd_inverse(&vec![vec![1.0, 2.0], vec![2.0, 1.0]]).is_none());
    }
}
