//! End-to-end matching quality on generated data, resolving one record at a
//! time as the online resolver does.

use super::*;

/// Blocks larger than this are skipped at resolve, as the store does.
const RESOLVE_MAX_BLOCK: usize = 200;

/// Outcome of an online resolution run.
#[derive(Debug)]
#[allow(dead_code, reason = "printed with Debug")]
struct Outcome {
    metrics: Metrics,
    resolved: usize,
    linked: usize,
    reviewed: usize,
    created: usize,
    mean_candidates: f64,
    max_candidates: usize,
    blocking_misses: usize,
}

/// Store the originals, then resolve every duplicate in turn: gather the
/// candidates sharing a blocking key among the records seen so far, score
/// them and link to the best one at or above the upper threshold, else
/// create a new profile (counting those between the thresholds as sent to
/// review). A resolved record joins the index, as a stored profile would
/// keep what it was told.
fn resolve_online(records: &[(u64, Record)], originals: usize, model: &MatchModel) -> Outcome {
    let mut index = BlockIndex::new();
    let mut predicted: Vec<u64> = Vec::with_capacity(records.len());
    for (i, (_, r)) in records.iter().take(originals).enumerate() {
        index.insert(i as u32, &blocking_keys(r));
        predicted.push(i as u64);
    }
    let (mut linked, mut reviewed, mut created, mut blocking_misses) = (0, 0, 0, 0);
    let (mut total_candidates, mut max_candidates) = (0usize, 0usize);
    for (i, (truth, r)) in records.iter().enumerate().skip(originals) {
        let keys = blocking_keys(r);
        let candidates = index.candidates(&keys, RESOLVE_MAX_BLOCK, MAX_CANDIDATES);
        total_candidates += candidates.len();
        max_candidates = max_candidates.max(candidates.len());
        if !candidates.iter().any(|&c| records[c as usize].0 == *truth) {
            blocking_misses += 1;
        }
        let best = candidates
            .iter()
            .map(|&c| (model.total_weight(compare(r, &records[c as usize].1)), c))
            .max_by(|a, b| a.0.total_cmp(&b.0));
        match best.map(|(w, c)| (model.decide_weight(w), c)) {
            Some((Decision::Link, c)) => {
                linked += 1;
                predicted.push(predicted[c as usize]);
            }
            decision => {
                reviewed += usize::from(matches!(decision, Some((Decision::Review, _))));
                created += 1;
                predicted.push(i as u64);
            }
        }
        index.insert(i as u32, &keys);
    }
    let truth: Vec<u64> = records.iter().map(|(c, _)| *c).collect();
    let resolved = records.len() - originals;
    Outcome {
        metrics: pairwise_metrics(&truth, &predicted),
        resolved,
        linked,
        reviewed,
        created,
        mean_candidates: total_candidates as f64 / resolved.max(1) as f64,
        max_candidates,
        blocking_misses,
    }
}

fn plain(records: &[(u64, Record)]) -> Vec<Record> {
    records.iter().map(|(_, r)| r.clone()).collect()
}

fn trained_model(records: &[(u64, Record)], u_samples: usize) -> Trained {
    let options = TrainingOptions { u_samples, threads: 2, ..TrainingOptions::default() };
    train_on_records(&default_model(), &plain(records), &options)
}

/// The acceptance measure at the pure level: 5,000 originals with a mean of
/// one corrupted duplicate each, trained on everything, duplicates resolved
/// one at a time.
#[test]
fn online_resolution_quality() {
    let originals = 5_000;
    let seed = 20_240_601;
    let records = generate(originals, 1.0, seed);
    let trained = trained_model(&records, 200_000);
    assert!(trained.converged, "EM did not converge in {} iterations", trained.iterations);
    assert!(trained.kept_fields.is_empty(), "{:?}", trained.kept_fields);
    let outcome = resolve_online(&records, originals, &trained.model);
    eprintln!(
        "{} records ({originals} originals, seed {seed}), {} candidate pairs, EM {} iterations, lambda {:.4}, \
         thresholds {:.2} / {:.2}: {outcome:#?}",
        records.len(),
        trained.pair_count,
        trained.iterations,
        trained.model.lambda,
        trained.model.upper,
        trained.model.lower,
    );
    let m = outcome.metrics;
    assert!(m.precision >= 0.999, "precision {m:?}");
    assert!(m.recall >= 0.988, "recall {m:?}");
    assert!(m.f1 >= 0.994, "F1 {m:?}");
    assert!(outcome.mean_candidates < 3.0, "{outcome:?}");
    assert!(outcome.max_candidates <= 20, "{outcome:?}");
}

/// A customer file deduplicated before it is loaded: trained on the
/// originals alone, the model links the duplicates that arrive afterwards
/// (with typos, moves and missing fields) almost as well as one trained on a
/// base that holds them. Without the prior on `m`, the only matches the fit
/// sees are the few pairs of namesakes and housemates most alike, and it
/// learns that a match is never mistyped.
#[test]
fn a_base_without_its_duplicates_trains_a_model_that_links_them_when_they_arrive() {
    let originals = 5_000;
    let records = generate(originals, 1.0, 31);
    let base = plain(&records[..originals]);
    let options = TrainingOptions { u_samples: 200_000, threads: 2, ..TrainingOptions::default() };
    let trained = train_on_records(&default_model(), &base, &options);
    let outcome = resolve_online(&records, originals, &trained.model);
    let unanchored = TrainingOptions { m_prior_per_record: 0.0, ..options };
    let alone = train_on_records(&default_model(), &base, &unanchored);
    let outcome_alone = resolve_online(&records, originals, &alone.model);
    eprintln!(
        "trained on {originals} originals, {} candidate pairs: lambda {:.4}, thresholds {:.2} / {:.2}: {outcome:#?}\n\
         without the prior: lambda {:.4}, thresholds {:.2} / {:.2}: {outcome_alone:#?}",
        trained.pair_count,
        trained.model.lambda,
        trained.model.upper,
        trained.model.lower,
        alone.model.lambda,
        alone.model.upper,
        alone.model.lower,
    );
    let m = outcome.metrics;
    assert!(m.precision >= 0.999, "{m:?}");
    assert!(m.recall >= 0.98, "{m:?}");
    assert!(outcome_alone.metrics.recall < m.recall, "{outcome_alone:?}");
}

/// The built-in model, untrained, on another sample.
#[test]
fn default_model_works_without_training() {
    let originals = 3_000;
    let records = generate(originals, 1.0, 77);
    let outcome = resolve_online(&records, originals, &default_model());
    eprintln!("default model: {outcome:#?}");
    let m = outcome.metrics;
    assert!(m.precision >= 0.999, "{m:?}");
    assert!(m.recall >= 0.985, "{m:?}");
    assert!(m.f1 >= 0.99, "{m:?}");
}

/// Larger bases: `cargo test -p crm-identification --release --lib
/// online_resolution_quality_large -- --ignored --nocapture` (50,000 and
/// 200,000 originals; `ORIGINALS=500000` for one run of that size).
#[test]
#[ignore = "slow in debug builds; run in release"]
fn online_resolution_quality_large() {
    let sizes = match std::env::var("ORIGINALS").ok().and_then(|v| v.parse::<usize>().ok()) {
        Some(n) => vec![(n, 3u64)],
        None => vec![(50_000, 1), (200_000, 2)],
    };
    for (originals, seed) in sizes {
        let records = generate(originals, 1.0, seed);
        let trained = trained_model(&records, 1_000_000);
        let outcome = resolve_online(&records, originals, &trained.model);
        eprintln!(
            "{} records ({originals} originals, seed {seed}): EM converged {} in {} iterations, lambda {:.4}, \
             thresholds {:.2} / {:.2}: {outcome:#?}",
            records.len(),
            trained.converged,
            trained.iterations,
            trained.model.lambda,
            trained.model.upper,
            trained.model.lower,
        );
        assert!(outcome.metrics.precision >= 0.995, "{outcome:?}");
        assert!(outcome.metrics.f1 >= 0.99, "{outcome:?}");
    }
}

/// Threshold sweep and estimated against generating `m`:
/// `ORIGINALS=100000 cargo test -p crm-identification --release --lib matching_diagnostics -- --ignored --nocapture`.
#[test]
#[ignore = "diagnostics"]
fn matching_diagnostics() {
    let originals: usize = std::env::var("ORIGINALS").ok().and_then(|v| v.parse().ok()).unwrap_or(5_000);
    let records = generate(originals, 1.0, 20_240_601);
    let trained = trained_model(&records, 1_000_000);
    let truth: Vec<u64> = records.iter().map(|(c, _)| *c).collect();
    let pairs = candidate_pairs(&plain(&records), DEFAULT_MAX_BLOCK);
    let true_pairs = pairs.iter().filter(|(i, j)| truth[*i as usize] == truth[*j as usize]).count();
    eprintln!(
        "{} candidate pairs, {true_pairs} true (lambda {:.4}, estimated {:.4}); blocking pair recall {:.4}; \
         thresholds {:.2} / {:.2}",
        pairs.len(),
        true_pairs as f64 / pairs.len() as f64,
        trained.model.lambda,
        true_pairs as f64 / pairwise_metrics(&truth, &truth).true_positives as f64,
        trained.model.upper,
        trained.model.lower,
    );
    // Level frequencies among (duplicate, original) pairs against the estimate.
    for field in Field::ALL {
        let mut counts = vec![0usize; field.level_count()];
        for (c, r) in &records[originals..] {
            counts[usize::from(compare(r, &records[*c as usize].1).level(field))] += 1;
        }
        let known: usize = counts[1..].iter().sum();
        let fm = trained.model.field(field);
        let row: Vec<String> = (1..field.level_count())
            .map(|l| {
                let generated = counts[l] as f64 / known.max(1) as f64;
                format!("{} {:.3}/{:.3} u {:.6}", field.levels()[l], generated, fm.m[l - 1], fm.u[l - 1])
            })
            .collect();
        eprintln!("{:12} {}", field.name(), row.join(" | "));
    }
    for (name, model) in [("default", default_model()), ("trained", trained.model.clone())] {
        let mut index = BlockIndex::new();
        for (i, (_, r)) in records.iter().take(originals).enumerate() {
            index.insert(i as u32, &blocking_keys(r));
        }
        // Best candidate of each duplicate: its weight and whether it is the right person.
        let mut best = Vec::new();
        for (i, (truth, r)) in records.iter().enumerate().skip(originals) {
            let keys = blocking_keys(r);
            best.push(
                index
                    .candidates(&keys, RESOLVE_MAX_BLOCK, MAX_CANDIDATES)
                    .iter()
                    .map(|&c| (model.total_weight(compare(r, &records[c as usize].1)), records[c as usize].0 == *truth))
                    .max_by(|a, b| a.0.total_cmp(&b.0)),
            );
            index.insert(i as u32, &keys);
        }
        let n = best.len() as f64;
        eprintln!(
            "{name}: top candidate right for {:.4}",
            best.iter().filter(|b| matches!(b, Some((_, true)))).count() as f64 / n
        );
        for t in [4.0, 8.0, 10.0, 12.0, 13.0, 14.0, 15.0, 16.0, 18.0, 20.0] {
            let right = best.iter().filter(|b| matches!(b, Some((w, true)) if *w >= t)).count();
            let wrong = best.iter().filter(|b| matches!(b, Some((w, false)) if *w >= t)).count();
            eprintln!("  link at {t:4.1} bits: right {:.4}, wrong links {wrong}", right as f64 / n);
        }
    }
}
