//! A small deterministic random source (xoshiro256** seeded by SplitMix64)
//! and the distributions the models sample from: normal, exponential,
//! gamma (Marsaglia–Tsang) and beta. Deterministic by seed, so parameter
//! draws and synthetic populations are reproducible.

/// A seeded generator.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
    spare_normal: Option<f64>,
}

impl Rng {
    /// A generator whose whole stream is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^ (x >> 31)
        };
        Rng { s: [next(), next(), next(), next()], spare_normal: None }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform on (0, 1): never exactly 0 or 1.
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller, both values used).
    pub fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare_normal.take() {
            return z;
        }
        let (u, v) = (self.uniform(), self.uniform());
        let radius = (-2.0 * u.ln()).sqrt();
        let angle = 2.0 * std::f64::consts::PI * v;
        self.spare_normal = Some(radius * angle.sin());
        radius * angle.cos()
    }

    /// Exponential with rate `rate`.
    pub fn exponential(&mut self, rate: f64) -> f64 {
        -self.uniform().ln() / rate
    }

    /// Gamma with shape `shape` and rate `rate` (mean shape/rate).
    pub fn gamma(&mut self, shape: f64, rate: f64) -> f64 {
        if shape < 1.0 {
            // G(k) = G(k + 1) · U^(1/k).
            let u = self.uniform();
            return self.gamma(shape + 1.0, rate) * u.powf(1.0 / shape);
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let z = self.normal();
            let v = (1.0 + c * z).powi(3);
            if v <= 0.0 {
                continue;
            }
            let u = self.uniform();
            if u.ln() < 0.5 * z * z + d - d * v + d * v.ln() {
                return d * v / rate;
            }
        }
    }

    /// Beta(a, b).
    pub fn beta(&mut self, a: f64, b: f64) -> f64 {
        let x = self.gamma(a, 1.0);
        let y = self.gamma(b, 1.0);
        x / (x + y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mean_var(xs: &[f64]) -> (f64, f64) {
        let n = xs.len() as f64;
        let m = xs.iter().sum::<f64>() / n;
        (m, xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0))
    }

    #[test]
    fn the_same_seed_gives_the_same_stream() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        for _ in 0..10 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        assert_ne!(Rng::new(7).next_u64(), Rng::new(8).next_u64());
    }

    #[test]
    fn distributions_have_their_moments() {
        let mut rng = Rng::new(42);
        let n = 200_000;
        let (m, v) = mean_var(&(0..n).map(|_| rng.normal()).collect::<Vec<_>>());
        assert!(m.abs() < 0.01 && (v - 1.0).abs() < 0.02, "normal {m} {v}");
        // Gamma(0.243, 4.414): mean k/θ, variance k/θ².
        let (m, v) = mean_var(&(0..n).map(|_| rng.gamma(0.243, 4.414)).collect::<Vec<_>>());
        assert!((m - 0.243 / 4.414).abs() < 0.002, "gamma mean {m}");
        assert!((v - 0.243 / 4.414f64.powi(2)).abs() < 0.001, "gamma var {v}");
        let (m, _) = mean_var(&(0..n).map(|_| rng.gamma(6.25, 2.0)).collect::<Vec<_>>());
        assert!((m - 3.125).abs() < 0.02, "gamma mean {m}");
        let (m, _) = mean_var(&(0..n).map(|_| rng.beta(0.793, 2.426)).collect::<Vec<_>>());
        assert!((m - 0.793 / (0.793 + 2.426)).abs() < 0.005, "beta mean {m}");
        let (m, _) = mean_var(&(0..n).map(|_| rng.exponential(2.0)).collect::<Vec<_>>());
        assert!((m - 0.5).abs() < 0.005, "exponential mean {m}");
    }
}
