//! Training a model from stored records: `u` from random pairs, then `m`
//! and the prior by expectation–maximisation on the candidate pairs that
//! blocking produces (the recipe of Splink and of Winkler's work at the US
//! Census Bureau).
//!
//! Random pairs are almost all non-matches, so their level frequencies are
//! direct estimates of `u`, free of the bias of blocked pairs (which agree
//! on names far more often than strangers do) and of the dependence between
//! fields. With `u` fixed, EM only has to separate matches among the
//! candidates, which it does reliably.

use super::Record;
use super::blocking::{CandidateVectors, DEFAULT_MAX_BLOCK, KeyKind, candidate_vectors_by_kind};
use super::compare::{ComparisonVector, FIELD_COUNT, Field, NULL, compare};
use super::em::{
    MPrior, Trained, VectorCounts, clamp, class_likelihoods, enforce_sanity, log_likelihood, normalised, train_m_counts,
};
use super::frequencies::NameFrequencies;
use super::model::{MIN_PROBABILITY, MatchModel, default_model};
use super::rng::SplitMix64;

/// Parameters of [`train_on_records`].
#[derive(Clone, Debug, PartialEq)]
pub struct TrainingOptions {
    /// Random pairs compared to estimate `u`.
    pub u_samples: usize,
    /// Candidate pairs compared for `m` and the prior at most (about): a
    /// uniform sample of them when blocking yields more (see
    /// [`candidate_vectors_by_kind`]).
    pub max_candidate_pairs: usize,
    /// Blocks larger than this are skipped (see [`DEFAULT_MAX_BLOCK`]).
    pub max_block: usize,
    /// EM iteration cap.
    pub max_iterations: usize,
    /// Threads used for comparisons.
    pub threads: usize,
    /// Seed of the random pair sample.
    pub seed: u64,
    /// Posterior probabilities `(link, review)` to set the thresholds from
    /// with [`MatchModel::calibrate`] once the prior is re-estimated; `None`
    /// keeps the input model's thresholds. The prior among candidate pairs
    /// falls as the base grows (blocks hold more strangers), so calibrated
    /// thresholds rise with it.
    pub calibration: Option<(f64, f64)>,
    /// Strength of the prior on `m` ([`MPrior`]), in pairs of the same
    /// person spread as the built-in model's `m` ([`default_model`]) says,
    /// per record trained on and never fewer than [`M_PRIOR_MIN_PAIRS`]
    /// (see [`TrainingOptions::m_prior`]); 0: none.
    pub m_prior_per_record: f64,
}

/// Default link probability of [`TrainingOptions::calibration`].
pub const LINK_PROBABILITY: f64 = 0.9999;
/// Default review probability of [`TrainingOptions::calibration`].
pub const REVIEW_PROBABILITY: f64 = 0.99;
/// Default of [`TrainingOptions::max_candidate_pairs`]: millions of
/// pairs estimate the few dozen `m` values as well as all of them do, and a
/// base of a million people yields some thirty million.
pub const MAX_CANDIDATE_PAIRS: usize = 8_000_000;
/// Default of [`TrainingOptions::m_prior_per_record`]. The pairs a fit on a
/// base without duplicates takes for matches grow with the base (about 2 %
/// of its records at 10,000 and at 100,000 originals), so the prior grows
/// with it to keep deciding there; a base that holds its duplicates has
/// several times more matches than this and decides `m` itself.
pub const M_PRIOR_PER_RECORD: f64 = 0.1;
/// The prior on `m` is worth at least this many pairs.
pub const M_PRIOR_MIN_PAIRS: f64 = 1_000.0;
/// Calibrated link threshold is never below this many bits.
pub const MIN_UPPER: f64 = 10.0;
/// Calibrated review threshold is never below this many bits.
pub const MIN_LOWER: f64 = 4.0;

impl Default for TrainingOptions {
    fn default() -> Self {
        TrainingOptions {
            u_samples: 1_000_000,
            max_candidate_pairs: MAX_CANDIDATE_PAIRS,
            max_block: DEFAULT_MAX_BLOCK,
            max_iterations: 1000,
            threads: 1,
            seed: 1,
            calibration: Some((LINK_PROBABILITY, REVIEW_PROBABILITY)),
            m_prior_per_record: M_PRIOR_PER_RECORD,
        }
    }
}

impl TrainingOptions {
    /// The prior on `m` for a base of `records`:
    /// [`TrainingOptions::m_prior_per_record`] pairs a record, at least
    /// [`M_PRIOR_MIN_PAIRS`], spread as the built-in `m`; none when the rate
    /// is not positive.
    pub fn m_prior(&self, records: usize) -> MPrior {
        if self.m_prior_per_record.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
            return MPrior::none();
        }
        MPrior::new(&default_model(), (self.m_prior_per_record * records as f64).max(M_PRIOR_MIN_PAIRS))
    }
}

/// Replace `u` of every field by its level frequencies among about
/// `samples` random pairs of distinct records (with half a count added to
/// every level, so a level never seen gets a probability below one in
/// `samples`, and clamped). The pairs are all the pairs of
/// `√(2·samples)` records drawn at random: each is a uniformly random pair,
/// and the comparisons stay in the processor's cache. Fewer than two
/// records leave the model unchanged.
pub fn estimate_u(model: &MatchModel, records: &[Record], samples: usize, seed: u64, threads: usize) -> MatchModel {
    if records.len() < 2 || samples == 0 {
        return model.clone();
    }
    let k = ((((2 * samples) as f64).sqrt().ceil() as usize) + 1).clamp(2, records.len());
    // Partial Fisher–Yates: k distinct records.
    let mut rng = SplitMix64::new(seed);
    let mut order: Vec<u32> = (0..records.len() as u32).collect();
    for i in 0..k {
        let j = i + rng.below(order.len() - i);
        order.swap(i, j);
    }
    let sample: Vec<Record> = order[..k].iter().map(|&i| records[i as usize].clone()).collect();
    let threads = threads.clamp(1, 64);
    let count = |part: usize| {
        let mut counts: [Vec<u64>; FIELD_COUNT] = std::array::from_fn(|f| vec![0; Field::ALL[f].level_count()]);
        for i in (part..k).step_by(threads) {
            // Pairs (i, j) with j > i, in order, up to `samples` overall.
            let before = i * (2 * k - i - 1) / 2;
            let take = samples.saturating_sub(before).min(k - i - 1);
            for j in i + 1..i + 1 + take {
                let v = compare(&sample[i], &sample[j]);
                for field in Field::ALL {
                    counts[field.index()][usize::from(v.level(field))] += 1;
                }
            }
        }
        counts
    };
    let parts: Vec<[Vec<u64>; FIELD_COUNT]> = if threads == 1 {
        vec![count(0)]
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads).map(|t| s.spawn(move || count(t))).collect();
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        })
    };
    let mut next = model.clone();
    for (f, fm) in next.fields.iter_mut().enumerate() {
        let levels = fm.u.len();
        let observed: Vec<f64> =
            (1..=levels).map(|l| parts.iter().map(|p| p[f][l]).sum::<u64>() as f64 + 0.5).collect();
        let total: f64 = observed.iter().sum();
        if total <= 0.5 * levels as f64 {
            continue; // Only missing values: keep the previous estimate.
        }
        let u: Vec<f64> = observed.iter().map(|c| (c / total).clamp(MIN_PROBABILITY, 1.0 - MIN_PROBABILITY)).collect();
        let sum: f64 = u.iter().sum();
        fm.u = u.iter().map(|p| p / sum).collect();
    }
    next
}

/// Train on stored records: [`estimate_u`] from random pairs, then
/// [`train_sessions`] on the candidate pairs of every key kind
/// ([`candidate_vectors_by_kind`]), `m` under the prior of
/// [`TrainingOptions::m_prior`], then thresholds from
/// [`TrainingOptions::calibration`] (kept when `None`), never below
/// [`MIN_UPPER`] / [`MIN_LOWER`] bits; the model keeps the name
/// frequencies of `records` ([`NameFrequencies::count`]).
pub fn train_on_records(model: &MatchModel, records: &[Record], options: &TrainingOptions) -> Trained {
    let with_u = estimate_u(model, records, options.u_samples, options.seed, options.threads);
    let vectors = candidate_vectors_by_kind(records, options.max_block, options.threads, options.max_candidate_pairs);
    let mut trained = train_sessions(&with_u, &vectors, options.max_iterations, &options.m_prior(records.len()));
    trained.model.frequencies = NameFrequencies::count(records);
    if let Some((link, review)) = options.calibration {
        calibrate_with_floors(&mut trained.model, link, review);
    }
    trained
}

/// What the stored records tell whether or not they hold duplicates yet:
/// `u` from random pairs ([`estimate_u`]), the name frequencies of
/// `records`, and the prior alone from the candidate pairs
/// ([`estimate_lambda`]) with the thresholds calibrated on it (as
/// [`train_on_records`] does); `model`'s `m` is kept. A base loaded in bulk
/// may hold few of its duplicates yet (a customer file's often come last):
/// `m` estimated from it would be that of a base where nobody has one, and
/// would miss the duplicates loaded later. The prior is what should follow
/// the base as it grows: blocks fill with strangers, so a candidate is less
/// often the same person and more evidence is needed to link; and name
/// frequencies tell a namesake of a common name from the same person.
/// Without [`TrainingOptions::calibration`] the prior and thresholds are
/// kept too, and no candidate pair is compared.
pub fn refresh_on_records(model: &MatchModel, records: &[Record], options: &TrainingOptions) -> Trained {
    let mut refreshed = estimate_u(model, records, options.u_samples, options.seed, options.threads);
    refreshed.frequencies = NameFrequencies::count(records);
    let Some((link, review)) = options.calibration else {
        return Trained {
            model: refreshed,
            converged: true,
            iterations: 0,
            pair_count: 0,
            distinct_vectors: 0,
            log_likelihood: 0.0,
            kept_fields: Vec::new(),
        };
    };
    let vectors = candidate_vectors_by_kind(records, options.max_block, options.threads, options.max_candidate_pairs);
    let mut trained = estimate_lambda(&refreshed, &vectors, options.max_iterations);
    calibrate_with_floors(&mut trained.model, link, review);
    trained
}

/// Thresholds calibrated on the model's prior ([`MatchModel::calibrate`]),
/// never below [`MIN_UPPER`] / [`MIN_LOWER`] bits: a prior estimated from a
/// small or one-sided base must not make weak evidence link.
fn calibrate_with_floors(model: &mut MatchModel, link: f64, review: f64) {
    if model.calibrate(link, review) {
        model.upper = model.upper.max(MIN_UPPER);
        model.lower = model.lower.max(MIN_LOWER).min(model.upper);
    }
}

/// The prior alone re-estimated by expectation–maximisation from the
/// candidate pairs, `m` and `u` held (each pair under the kind of the first
/// key it shares, without the fields that key conditions on). A base with
/// more strangers in its blocks gets a lower prior. The result is `model`
/// with that prior, whether its fixed point settled within
/// `max_iterations`, and the pairs it was estimated from.
pub fn estimate_lambda(model: &MatchModel, vectors: &CandidateVectors, max_iterations: usize) -> Trained {
    let even = MatchModel { lambda: 0.5, ..model.clone() };
    // Per distinct vector: its count and P(v|M) / P(v|U).
    let mut ratios: Vec<(f64, f64)> = Vec::new();
    for (kind, counts) in &vectors.by_first_kind {
        for (v, n) in mask(counts, *kind).iter() {
            let (pm, pu) = class_likelihoods(&even, v);
            if pu > 0.0 {
                ratios.push((n as f64, pm / pu));
            } else if pm > 0.0 {
                ratios.push((n as f64, f64::INFINITY));
            }
        }
    }
    let total: f64 = ratios.iter().map(|(n, _)| n).sum();
    let mut lambda = model.lambda;
    let (mut converged, mut iterations) = (false, 0);
    while total > 0.0 && iterations < max_iterations {
        let matches: f64 = ratios
            .iter()
            .map(|&(n, r)| if r.is_infinite() { n } else { n * lambda * r / (lambda * r + 1.0 - lambda) })
            .sum();
        let next = clamp(matches / total);
        let change = (next - lambda).abs();
        lambda = next;
        iterations += 1;
        if change < super::em::TOLERANCE {
            converged = true;
            break;
        }
    }
    fitted(MatchModel { lambda, ..model.clone() }, vectors, converged, iterations, Vec::new())
}

/// Estimate `m` and `lambda` with `u` fixed, one EM session per key kind,
/// `m` under `prior` (in each session, and once in their combination).
///
/// Pairs selected by a key agree on the fields the key is made of whether
/// they match or not ([`KeyKind::conditioned_fields`]), so a session leaves
/// those fields out and estimates `m` of the others; each field's `m`
/// combines the expected match counts of the sessions that observed it
/// (Splink's approach to blocked EM). `lambda`, the share of matches among
/// all candidate pairs, sums over every pair the match probability of the
/// session of the first key it shares (`m` and `u` as combined).
pub fn train_sessions(
    model: &MatchModel,
    vectors: &CandidateVectors,
    max_iterations: usize,
    prior: &MPrior,
) -> Trained {
    let mut expected: [Vec<f64>; FIELD_COUNT] = std::array::from_fn(|f| vec![0.0; Field::ALL[f].level_count() - 1]);
    let mut converged = true;
    let mut iterations = 0;
    let mut session_lambda = [None; KeyKind::ALL.len()];
    for (kind, counts) in &vectors.by_kind {
        if counts.total() == 0 {
            continue;
        }
        let masked = mask(counts, *kind);
        let session = train_m_counts(model, &masked, max_iterations, prior);
        converged &= session.converged;
        iterations = iterations.max(session.iterations);
        session_lambda[*kind as usize] = Some(session.model.lambda);
        for (v, n) in masked.iter() {
            let g = match_probability(&session.model, v);
            for field in Field::ALL {
                let level = v.level(field);
                if level != NULL {
                    expected[field.index()][usize::from(level) - 1] += n as f64 * g;
                }
            }
        }
    }
    let mut next = model.clone();
    for (f, (fm, e)) in next.fields.iter_mut().zip(&mut expected).enumerate() {
        prior.add_to(f, e);
        if let Some(m) = normalised(e) {
            fm.m = m;
        }
    }
    let kept_fields = enforce_sanity(&mut next, model);
    let (mut matches, mut total) = (0.0, 0.0);
    for (kind, counts) in &vectors.by_first_kind {
        let Some(lambda) = session_lambda[*kind as usize] else {
            continue;
        };
        let session = MatchModel { lambda, ..next.clone() };
        for (v, n) in mask(counts, *kind).iter() {
            matches += n as f64 * match_probability(&session, v);
            total += n as f64;
        }
    }
    if total > 0.0 {
        next.lambda = clamp(matches / total);
    }
    fitted(next, vectors, converged, iterations, kept_fields)
}

/// A model fitted on candidate pairs, with what it was fitted on: every
/// pair (whatever key it shares) and its log-likelihood under the model.
fn fitted(
    model: MatchModel,
    vectors: &CandidateVectors,
    converged: bool,
    iterations: usize,
    kept_fields: Vec<&'static str>,
) -> Trained {
    let all = vectors.all();
    let data: Vec<(ComparisonVector, f64)> = all.iter().map(|(v, n)| (v, n as f64)).collect();
    Trained {
        log_likelihood: log_likelihood(&model, &data),
        model,
        converged,
        iterations,
        pair_count: all.total(),
        distinct_vectors: all.distinct(),
        kept_fields,
    }
}

/// The vectors with the fields a key kind conditions on set to `null`.
fn mask(counts: &VectorCounts, kind: KeyKind) -> VectorCounts {
    let mut masked = VectorCounts::new();
    for (v, n) in counts.iter() {
        masked.add_many(kind.conditioned_fields().iter().fold(v, |v, &f| v.without(f)), n);
    }
    masked
}

/// Posterior match probability of a vector under a model.
fn match_probability(model: &MatchModel, v: ComparisonVector) -> f64 {
    let (pm, pu) = class_likelihoods(model, v);
    if pm + pu > 0.0 { pm / (pm + pu) } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::super::generator::generate;
    use super::super::model::default_model;
    use super::*;

    #[test]
    fn u_from_random_pairs_reflects_population_frequencies() {
        let records: Vec<Record> = generate(2_000, 0.0, 4).into_iter().map(|(_, r)| r).collect();
        let model = estimate_u(&default_model(), &records, 50_000, 1, 2);
        model.validate().unwrap();
        let given = model.field(Field::GivenName);
        // Strangers rarely share a given name, almost never a birth date or an e-mail.
        assert!(given.u[0] > 0.002 && given.u[0] < 0.05, "{:?}", given.u);
        assert!(model.field(Field::BirthDate).u[0] < 0.001);
        assert!(model.field(Field::Email).u[0] < 0.0001);
        assert_eq!(
            model.fields.iter().map(|f| f.m.clone()).collect::<Vec<_>>(),
            default_model().fields.iter().map(|f| f.m.clone()).collect::<Vec<_>>()
        );
        // Deterministic for a seed.
        assert_eq!(model, estimate_u(&default_model(), &records, 50_000, 1, 2));
        // Calibrated thresholds keep their floor even on a base of duplicates only.
        let pairs: Vec<Record> = records.iter().take(50).flat_map(|r| [r.clone(), r.clone()]).collect();
        let trained = train_on_records(
            &default_model(),
            &pairs,
            &TrainingOptions { u_samples: 2_000, ..TrainingOptions::default() },
        );
        assert!(trained.model.upper >= MIN_UPPER && trained.model.lower >= MIN_LOWER, "{:?}", trained.model);
        assert!(trained.model.lower <= trained.model.upper);
        // Too few records: unchanged.
        assert_eq!(estimate_u(&default_model(), &records[..1], 10, 1, 1), default_model());
    }

    #[test]
    fn a_base_without_its_duplicates_refits_u_the_name_frequencies_and_the_prior_and_keeps_m() {
        let records: Vec<Record> = generate(5_000, 0.0, 8).into_iter().map(|(_, r)| r).collect();
        let options = TrainingOptions { u_samples: 50_000, threads: 2, ..TrainingOptions::default() };
        let base = default_model();
        let fitted = refresh_on_records(&base, &records, &options);
        assert!(fitted.converged && fitted.iterations > 0, "{} iterations", fitted.iterations);
        assert!(fitted.pair_count > 0 && fitted.distinct_vectors > 0 && fitted.log_likelihood < 0.0);
        assert!(fitted.kept_fields.is_empty());
        let refreshed = fitted.model;
        refreshed.validate().unwrap();
        let u = estimate_u(&base, &records, options.u_samples, options.seed, options.threads);
        assert_eq!(refreshed.fields, u.fields);
        // The names counted (a mean summed in another order may differ in
        // its last bit).
        let counted = NameFrequencies::count(&records);
        assert_eq!(refreshed.frequencies.given.counts, counted.given.counts);
        assert_eq!(refreshed.frequencies.surnames.counts, counted.surnames.counts);
        assert_ne!(refreshed.frequencies, base.frequencies);
        assert!(refreshed.fields.iter().zip(&base.fields).all(|(a, b)| a.m == b.m));
        // The prior of a base without duplicates is low, and the thresholds
        // are calibrated on it; with its duplicates the prior is higher.
        assert!(refreshed.lambda < 0.1, "{}", refreshed.lambda);
        let (link, review) = (LINK_PROBABILITY, REVIEW_PROBABILITY);
        assert!((refreshed.probability(refreshed.upper) - link).abs() < 1e-9, "{refreshed:?}");
        assert!((refreshed.probability(refreshed.lower) - review).abs() < 1e-9, "{refreshed:?}");
        assert!(refreshed.upper > base.upper);
        let with_duplicates: Vec<Record> = generate(5_000, 1.0, 8).into_iter().map(|(_, r)| r).collect();
        let both = refresh_on_records(&base, &with_duplicates, &options).model;
        assert!(both.lambda > 2.0 * refreshed.lambda, "{} {}", both.lambda, refreshed.lambda);
        assert!(both.upper < refreshed.upper);
    }

    #[test]
    fn the_prior_on_m_grows_with_the_base_from_a_minimum() {
        let options = TrainingOptions::default();
        let pairs = |n| MPrior::new(&default_model(), n);
        assert_eq!(options.m_prior(0), pairs(M_PRIOR_MIN_PAIRS));
        assert_eq!(options.m_prior(5_000), pairs(1_000.0));
        assert_eq!(options.m_prior(100_000), pairs(10_000.0));
        assert_eq!(options.m_prior(1_000_000), pairs(100_000.0));
        let none = TrainingOptions { m_prior_per_record: 0.0, ..options };
        assert_eq!(none.m_prior(1_000_000), MPrior::none());
    }

    #[test]
    fn a_sample_of_the_candidate_pairs_estimates_what_all_of_them_do() {
        let records: Vec<Record> = generate(10_000, 1.0, 5).into_iter().map(|(_, r)| r).collect();
        let options = TrainingOptions { u_samples: 50_000, threads: 2, ..TrainingOptions::default() };
        let all = train_on_records(&default_model(), &records, &options);
        let cap = all.pair_count as usize / 2;
        let half = TrainingOptions { max_candidate_pairs: cap, ..options.clone() };
        let sampled = train_on_records(&default_model(), &records, &half);
        let compared = sampled.pair_count as usize;
        assert!(compared.abs_diff(cap) < cap / 10, "{compared} of {}", all.pair_count);
        let mut largest = 0.0f64;
        for (a, b) in all.model.fields.iter().zip(&sampled.model.fields) {
            assert_eq!(a.u, b.u, "the same random pairs");
            for (x, y) in a.m.iter().zip(&b.m) {
                largest = largest.max((x - y).abs());
            }
        }
        println!("largest difference of an m: {largest}");
        assert!(largest < 0.02, "{largest}");
        assert!(
            (sampled.model.lambda / all.model.lambda - 1.0).abs() < 0.1,
            "{} {}",
            sampled.model.lambda,
            all.model.lambda
        );
        assert!((sampled.model.upper - all.model.upper).abs() < 0.5);
        // The same sample every time.
        assert_eq!(train_on_records(&default_model(), &records, &half).pair_count, sampled.pair_count);
        // Without a cap, as under the default one: every pair.
        let uncapped = TrainingOptions { max_candidate_pairs: usize::MAX, ..options };
        assert_eq!(train_on_records(&default_model(), &records, &uncapped).pair_count, all.pair_count);
    }
}
