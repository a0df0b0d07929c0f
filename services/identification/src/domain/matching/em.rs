//! Expectation–maximisation of `m`, `u` and `lambda` from unlabelled
//! comparison vectors (Winkler 1988; Jaro 1989).
//!
//! Pairs are a latent mixture of matches and non-matches with fields
//! conditionally independent given the class. The sufficient statistics are
//! the counts of distinct comparison vectors, so one iteration costs
//! O(distinct vectors × fields) whatever the number of pairs. A `null`
//! level carries no information and is left out of both the likelihood and
//! the re-estimation of its field.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::compare::{ComparisonVector, FIELD_COUNT, Field, NULL};
use super::model::{MIN_PROBABILITY, MatchModel};

/// A fast hasher for the small keys of [`VectorCounts`] (no adversary).
#[derive(Clone, Copy, Debug, Default)]
struct VectorHasher(u64);

impl Hasher for VectorHasher {
    fn finish(&self) -> u64 {
        super::rng::mix64(self.0)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)) ^ (self.0 >> 56);
        }
    }
}

/// Counts of distinct comparison vectors.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VectorCounts {
    counts: HashMap<ComparisonVector, u64, BuildHasherDefault<VectorHasher>>,
    total: u64,
}

impl VectorCounts {
    /// No vectors.
    pub fn new() -> Self {
        Self::default()
    }

    /// Count one vector.
    pub fn add(&mut self, vector: ComparisonVector) {
        self.add_many(vector, 1);
    }

    /// Count `n` copies of a vector.
    pub fn add_many(&mut self, vector: ComparisonVector, n: u64) {
        if n > 0 {
            *self.counts.entry(vector).or_insert(0) += n;
            self.total += n;
        }
    }

    /// Add the counts of another set (e.g. one computed by another thread).
    pub fn merge(&mut self, other: &VectorCounts) {
        for (&v, &n) in &other.counts {
            self.add_many(v, n);
        }
    }

    /// Number of pairs counted.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Number of distinct vectors.
    pub fn distinct(&self) -> usize {
        self.counts.len()
    }

    /// Distinct vectors with their counts, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (ComparisonVector, u64)> + '_ {
        self.counts.iter().map(|(&v, &n)| (v, n))
    }
}

impl FromIterator<ComparisonVector> for VectorCounts {
    fn from_iter<I: IntoIterator<Item = ComparisonVector>>(iter: I) -> Self {
        let mut counts = VectorCounts::new();
        for v in iter {
            counts.add(v);
        }
        counts
    }
}

/// The outcome of training.
#[derive(Clone, Debug, PartialEq)]
pub struct Trained {
    /// The re-estimated model (thresholds as in the input model).
    pub model: MatchModel,
    /// Whether the largest parameter change of the last iteration was below
    /// the tolerance before the iteration cap.
    pub converged: bool,
    /// Iterations run.
    pub iterations: usize,
    /// Pairs the model was estimated from.
    pub pair_count: u64,
    /// Distinct comparison vectors among them.
    pub distinct_vectors: usize,
    /// Log-likelihood (natural log) of the pairs under the returned model.
    pub log_likelihood: f64,
    /// Fields whose estimate failed the sanity check (exact agreement no
    /// more likely among matches than among non-matches) and whose `m`/`u`
    /// were therefore kept from the input model.
    pub kept_fields: Vec<&'static str>,
}

/// Largest parameter change under which training has converged.
pub const TOLERANCE: f64 = 1e-6;

/// A Dirichlet prior on `m`: as if `pairs` pairs of the same person had
/// been seen besides the data, their levels spread as a reference model's
/// `m` says. Each field's `m` is then estimated as
/// `(expected match counts + pairs · m₀) / (their sum + pairs)`: where the
/// data hold many matches they decide, where they hold few the reference
/// does. A base loaded without its duplicates holds few matches, and the
/// pairs a fit takes for matches there agree on almost every field: `m`
/// estimated from them alone says that the same person is never mistyped,
/// and the duplicates that arrive later with a typo are taken for
/// strangers.
#[derive(Clone, Debug, PartialEq)]
pub struct MPrior {
    m: [Vec<f64>; FIELD_COUNT],
    pairs: f64,
}

impl MPrior {
    /// No prior: maximum likelihood.
    pub fn none() -> Self {
        MPrior { m: std::array::from_fn(|_| Vec::new()), pairs: 0.0 }
    }

    /// `pairs` pseudo-matches spread as `reference`'s `m` (none when
    /// `pairs` is not positive).
    pub fn new(reference: &MatchModel, pairs: f64) -> Self {
        if pairs.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
            return Self::none();
        }
        MPrior { m: std::array::from_fn(|f| reference.fields[f].m.clone()), pairs }
    }

    /// Add the pseudo-counts of field `f` to its expected match counts.
    pub(crate) fn add_to(&self, f: usize, counts: &mut [f64]) {
        for (c, p) in counts.iter_mut().zip(&self.m[f]) {
            *c += self.pairs * p;
        }
    }
}

/// Re-estimate `m`, `u` and `lambda` from comparison vectors of candidate
/// pairs, starting from `model`. Identical vectors are counted once with a
/// multiplicity, so the cost grows with distinct vectors, not pairs.
///
/// On blocked pairs, `u` comes out as the level frequencies among
/// *candidate* non-matches, and fields that change together (a move changes
/// street, postcode and locality) can pull the latent classes away from
/// match / non-match. [`train_m`] with `u` from random pairs
/// ([`super::estimate_u`]) is the robust choice on real data.
pub fn train(model: &MatchModel, pairs: impl IntoIterator<Item = ComparisonVector>, max_iterations: usize) -> Trained {
    train_counts(model, &pairs.into_iter().collect(), max_iterations)
}

/// [`train`] on pre-counted vectors.
pub fn train_counts(model: &MatchModel, counts: &VectorCounts, max_iterations: usize) -> Trained {
    run(model, counts, max_iterations, true, &MPrior::none())
}

/// Re-estimate `m` and `lambda` by expectation–maximisation with `u` held
/// fixed (typically estimated from random pairs by
/// [`super::estimate_u`]).
pub fn train_m(
    model: &MatchModel,
    pairs: impl IntoIterator<Item = ComparisonVector>,
    max_iterations: usize,
) -> Trained {
    train_m_counts(model, &pairs.into_iter().collect(), max_iterations, &MPrior::none())
}

/// [`train_m`] on pre-counted vectors, `m` estimated under `prior`
/// (maximum a posteriori; [`MPrior::none`] for maximum likelihood).
pub fn train_m_counts(model: &MatchModel, counts: &VectorCounts, max_iterations: usize, prior: &MPrior) -> Trained {
    run(model, counts, max_iterations, false, prior)
}

fn run(model: &MatchModel, counts: &VectorCounts, max_iterations: usize, estimate_u: bool, prior: &MPrior) -> Trained {
    let data: Vec<(ComparisonVector, f64)> = counts.iter().map(|(v, n)| (v, n as f64)).collect();
    let mut current = model.clone();
    let mut converged = false;
    let mut iterations = 0;
    if counts.total() > 0 {
        while iterations < max_iterations {
            let next = em_step(&current, &data, estimate_u, prior);
            let change = max_change(&current, &next);
            current = next;
            iterations += 1;
            if change < TOLERANCE {
                converged = true;
                break;
            }
        }
    }
    let kept_fields = enforce_sanity(&mut current, model);
    Trained {
        log_likelihood: log_likelihood(&current, &data),
        model: current,
        converged,
        iterations,
        pair_count: counts.total(),
        distinct_vectors: counts.distinct(),
        kept_fields,
    }
}

/// Likelihood of a vector under each class: `(λ·P(v|M), (1-λ)·P(v|U))`.
pub(crate) fn class_likelihoods(model: &MatchModel, v: ComparisonVector) -> (f64, f64) {
    let mut pm = model.lambda;
    let mut pu = 1.0 - model.lambda;
    for (fm, field) in model.fields.iter().zip(Field::ALL) {
        let level = v.level(field);
        if level == NULL {
            continue;
        }
        let i = usize::from(level) - 1;
        pm *= fm.m.get(i).copied().unwrap_or(1.0);
        pu *= fm.u.get(i).copied().unwrap_or(1.0);
    }
    (pm, pu)
}

fn em_step(model: &MatchModel, data: &[(ComparisonVector, f64)], estimate_u: bool, prior: &MPrior) -> MatchModel {
    // Expected counts per field and level under each class.
    let mut m_counts: [Vec<f64>; FIELD_COUNT] = std::array::from_fn(|f| vec![0.0; Field::ALL[f].level_count() - 1]);
    let mut u_counts = m_counts.clone();
    let mut total = 0.0;
    let mut matches = 0.0;
    for &(v, n) in data {
        let (pm, pu) = class_likelihoods(model, v);
        let g = if pm + pu > 0.0 { pm / (pm + pu) } else { 0.0 };
        total += n;
        matches += n * g;
        for field in Field::ALL {
            let level = v.level(field);
            if level == NULL {
                continue;
            }
            let i = usize::from(level) - 1;
            m_counts[field.index()][i] += n * g;
            u_counts[field.index()][i] += n * (1.0 - g);
        }
    }
    let mut next = model.clone();
    next.lambda = clamp(matches / total);
    for (f, (fm, (mc, uc))) in next.fields.iter_mut().zip(m_counts.iter_mut().zip(&u_counts)).enumerate() {
        prior.add_to(f, mc);
        if let Some(m) = normalised(mc) {
            fm.m = m;
        }
        if estimate_u && let Some(u) = normalised(uc) {
            fm.u = u;
        }
    }
    next
}

pub(crate) fn clamp(p: f64) -> f64 {
    p.clamp(MIN_PROBABILITY, 1.0 - MIN_PROBABILITY)
}

/// Counts to a clamped distribution; `None` when there is no mass (keep
/// the previous estimate).
pub(crate) fn normalised(counts: &[f64]) -> Option<Vec<f64>> {
    let sum: f64 = counts.iter().sum();
    if sum.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
        return None;
    }
    let clamped: Vec<f64> = counts.iter().map(|c| clamp(c / sum)).collect();
    let clamped_sum: f64 = clamped.iter().sum();
    Some(clamped.iter().map(|p| clamp(p / clamped_sum)).collect())
}

fn max_change(a: &MatchModel, b: &MatchModel) -> f64 {
    let mut change = (a.lambda - b.lambda).abs();
    for (fa, fb) in a.fields.iter().zip(&b.fields) {
        for (x, y) in fa.m.iter().zip(&fb.m).chain(fa.u.iter().zip(&fb.u)) {
            change = change.max((x - y).abs());
        }
    }
    change
}

pub(crate) fn log_likelihood(model: &MatchModel, data: &[(ComparisonVector, f64)]) -> f64 {
    data.iter()
        .map(|&(v, n)| {
            let (pm, pu) = class_likelihoods(model, v);
            n * (pm + pu).max(f64::MIN_POSITIVE).ln()
        })
        .sum()
}

/// Resolve label switching (the "match" class learned the non-matches) and
/// keep the input parameters of any field whose exact level is not more
/// likely among matches than among non-matches. Returns the kept fields.
pub(crate) fn enforce_sanity(model: &mut MatchModel, input: &MatchModel) -> Vec<&'static str> {
    let inverted = model.fields.iter().filter(|fm| fm.m[0] <= fm.u[0]).count();
    if inverted * 2 > FIELD_COUNT {
        for fm in &mut model.fields {
            std::mem::swap(&mut fm.m, &mut fm.u);
        }
        model.lambda = 1.0 - model.lambda;
    }
    let mut kept = Vec::new();
    for (fm, original) in model.fields.iter_mut().zip(&input.fields) {
        if fm.m[0] <= fm.u[0] {
            fm.m.clone_from(&original.m);
            fm.u.clone_from(&original.u);
            kept.push(fm.field.name());
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::super::model::default_model;
    use super::super::rng::SplitMix64;
    use super::*;

    /// A model unlike the default one, to recover from samples.
    fn truth() -> MatchModel {
        let mut model = default_model();
        model.lambda = 0.15;
        for (i, fm) in model.fields.iter_mut().enumerate() {
            let k = fm.m.len();
            // m: most mass on exact; u: most mass on different.
            let mut m: Vec<f64> = (0..k).map(|l| if l == 0 { 0.7 + 0.02 * i as f64 } else { 1.0 }).collect();
            let rest = 1.0 - m[0];
            for p in m.iter_mut().skip(1) {
                *p = rest / (k - 1) as f64;
            }
            let mut u: Vec<f64> = vec![0.0; k];
            u[0] = 0.02 + 0.01 * i as f64;
            for p in u.iter_mut().take(k - 1).skip(1) {
                *p = 0.03;
            }
            u[k - 1] = 1.0 - u.iter().sum::<f64>();
            fm.m = m;
            fm.u = u;
        }
        model
    }

    fn sample(dist: &[f64], rng: &mut SplitMix64) -> u8 {
        let x = rng.next_f64();
        let mut acc = 0.0;
        for (i, p) in dist.iter().enumerate() {
            acc += p;
            if x < acc {
                return (i + 1) as u8;
            }
        }
        dist.len() as u8
    }

    fn vectors(model: &MatchModel, n: usize, seed: u64) -> Vec<ComparisonVector> {
        let mut rng = SplitMix64::new(seed);
        (0..n)
            .map(|_| {
                let is_match = rng.next_f64() < model.lambda;
                let mut levels = [0u8; FIELD_COUNT];
                for (l, fm) in levels.iter_mut().zip(&model.fields) {
                    // 10 % missing values.
                    if rng.next_f64() < 0.1 {
                        continue;
                    }
                    *l = sample(if is_match { &fm.m } else { &fm.u }, &mut rng);
                }
                ComparisonVector::new(levels).unwrap()
            })
            .collect()
    }

    #[test]
    fn recovers_known_parameters() {
        let truth = truth();
        let data = vectors(&truth, 200_000, 7);
        let trained = train(&default_model(), data, 1000);
        assert!(trained.converged, "{} iterations", trained.iterations);
        assert_eq!(trained.pair_count, 200_000);
        assert!(trained.distinct_vectors < 200_000);
        assert!(trained.kept_fields.is_empty());
        assert!((trained.model.lambda - truth.lambda).abs() < 0.02, "lambda {}", trained.model.lambda);
        for (got, want) in trained.model.fields.iter().zip(&truth.fields) {
            for (g, w) in got.m.iter().zip(&want.m).chain(got.u.iter().zip(&want.u)) {
                assert!(
                    (g - w).abs() < 0.02,
                    "{}: {:?} vs {:?} / {:?} vs {:?}",
                    got.field.name(),
                    got.m,
                    want.m,
                    got.u,
                    want.u
                );
            }
        }
        // Thresholds are not trained.
        assert_eq!(trained.model.upper, default_model().upper);
        assert!(trained.log_likelihood < 0.0);
    }

    #[test]
    fn recovers_m_with_u_fixed() {
        let truth = truth();
        let data = vectors(&truth, 100_000, 9);
        let mut start = default_model();
        for (fm, t) in start.fields.iter_mut().zip(&truth.fields) {
            fm.u.clone_from(&t.u);
        }
        let trained = train_m(&start, data, 1000);
        assert!(trained.converged);
        assert!((trained.model.lambda - truth.lambda).abs() < 0.02);
        for (got, want) in trained.model.fields.iter().zip(&truth.fields) {
            assert_eq!(got.u, want.u);
            for (g, w) in got.m.iter().zip(&want.m) {
                assert!((g - w).abs() < 0.02, "{}: {:?} vs {:?}", got.field.name(), got.m, want.m);
            }
        }
    }

    #[test]
    fn reports_non_convergence() {
        let data = vectors(&truth(), 10_000, 3);
        let trained = train(&default_model(), data, 1);
        assert!(!trained.converged);
        assert_eq!(trained.iterations, 1);
        trained.model.validate().unwrap();
    }

    #[test]
    fn no_pairs_leaves_the_model_unchanged() {
        let trained = train(&default_model(), std::iter::empty(), 100);
        assert!(!trained.converged);
        assert_eq!(trained.iterations, 0);
        assert_eq!(trained.model, default_model());
    }

    #[test]
    fn estimates_stay_clamped_and_valid() {
        // Only perfect agreement: degenerate data must not produce 0 or 1.
        let all_exact = ComparisonVector::new([1; FIELD_COUNT]).unwrap();
        let all_different = ComparisonVector::new([6, 5, 5, 4, 3, 3, 4, 4]).unwrap();
        let data = std::iter::repeat_n(all_exact, 100).chain(std::iter::repeat_n(all_different, 10_000));
        let trained = train(&default_model(), data, 500);
        trained.model.validate().unwrap();
        for fm in &trained.model.fields {
            assert!(fm.m.iter().chain(&fm.u).all(|p| (MIN_PROBABILITY * 0.99..=1.0 - MIN_PROBABILITY).contains(p)));
            assert!(fm.m[0] > fm.u[0]);
        }
        assert!((trained.model.lambda - 100.0 / 10_100.0).abs() < 1e-3);
    }

    #[test]
    fn a_prior_on_m_decides_where_the_data_hold_few_matches_and_yields_where_they_hold_many() {
        // Matches that agree on every field, among strangers that agree on none.
        let all_exact = ComparisonVector::new([1; FIELD_COUNT]).unwrap();
        let all_different = ComparisonVector::new([6, 5, 5, 4, 3, 3, 4, 4]).unwrap();
        let fit = |matches: usize, prior: &MPrior| {
            let data: VectorCounts =
                std::iter::repeat_n(all_exact, matches).chain(std::iter::repeat_n(all_different, 20_000)).collect();
            train_m_counts(&default_model(), &data, 1000, prior).model
        };
        let reference = default_model();
        let prior = MPrior::new(&reference, 1_000.0);
        // 100 matches, 1,000 pseudo-matches: the levels no match showed keep
        // most of the reference's mass, as (0 + 1,000·m₀) / (100 + 1,000).
        let few = fit(100, &prior);
        let alone = fit(100, &MPrior::none());
        for ((with, without), r) in few.fields.iter().zip(&alone.fields).zip(&reference.fields) {
            let levels = r.m.len();
            for l in 1..levels - 1 {
                let expected = 1_000.0 * r.m[l] / 1_100.0;
                assert!((with.m[l] - expected).abs() < 0.01 * r.m[l] + 1e-9, "{}: {:?}", r.field.name(), with.m);
                assert!(without.m[l] < 1e-3, "{}: {:?}", r.field.name(), without.m);
            }
        }
        few.validate().unwrap();
        // 100,000 matches: the data decide.
        let many = fit(100_000, &prior);
        for fm in &many.fields {
            assert!(fm.m[0] > 0.98, "{}: {:?}", fm.field.name(), fm.m);
        }
        // No prior, or one of no pairs, is maximum likelihood.
        assert_eq!(MPrior::new(&reference, 0.0), MPrior::none());
        assert_eq!(fit(100, &MPrior::new(&reference, -1.0)), alone);
    }

    #[test]
    fn counts_merge() {
        let v = ComparisonVector::new([1; FIELD_COUNT]).unwrap();
        let mut a: VectorCounts = [v, v].into_iter().collect();
        let mut b = VectorCounts::new();
        b.add_many(v, 3);
        b.add_many(ComparisonVector::default(), 0);
        a.merge(&b);
        assert_eq!(a.total(), 5);
        assert_eq!(a.distinct(), 1);
    }
}
