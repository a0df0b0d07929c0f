//! Benchmarks of the probabilistic-matching core.
//!
//! `cargo bench -p crm-identification --bench matching` first trains once on
//! a generated base of about `BENCH_RECORDS` records (default 1,000,000:
//! half originals, a mean of one corrupted duplicate each) and prints the
//! time of every stage of `TrainMatcher`'s pure part (random-pair `u`,
//! blocking and comparison of all candidate pairs, EM) and the candidate
//! set sizes of resolves against that base; then Criterion measures
//! `score`, `compare`, `blocking_keys` and one EM fit on the base's
//! candidate vectors. Criterion options follow `--`, e.g. `-- --quick`.

use std::hint::black_box;
use std::time::Instant;

use criterion::Criterion;
use crm_identification::domain::matching::{
    BlockIndex, MAX_CANDIDATES, Record, TrainingOptions, VectorCounts, blocking_keys, candidate_vectors_by_kind,
    compare, default_model, estimate_u, generate, train_counts, train_sessions,
};

/// Blocks larger than this are skipped at resolve, as the store does.
const RESOLVE_MAX_BLOCK: usize = 200;

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Train once on the whole base and report each stage; returns the
/// candidate vectors (for the EM benchmark).
fn train_once(records: &[Record]) -> VectorCounts {
    let options = TrainingOptions { threads: threads(), ..TrainingOptions::default() };
    let start = Instant::now();
    let with_u = estimate_u(&default_model(), records, options.u_samples, options.seed, options.threads);
    let u_time = start.elapsed();
    let vectors = candidate_vectors_by_kind(records, options.max_block, options.threads, options.max_candidate_pairs);
    let pairs_time = start.elapsed() - u_time;
    let mut trained = train_sessions(&with_u, &vectors, options.max_iterations, &options.m_prior(records.len()));
    if let Some((link, review)) = options.calibration {
        trained.model.calibrate(link, review);
    }
    let total = start.elapsed();
    let em_time = total - u_time - pairs_time;
    let per_kind: u64 = vectors.by_kind.iter().map(|(_, c)| c.total()).sum();
    println!(
        "train on {} records with {} threads: {:.2} s total = u from {} random pairs {:.2} s + blocking and \
         comparing {} candidate pairs ({per_kind} pair-kind comparisons, {} distinct vectors) {:.2} s + EM {:.3} s; \
         converged {} in {} iterations; lambda {:.4}; thresholds {:.2} / {:.2}",
        records.len(),
        options.threads,
        total.as_secs_f64(),
        options.u_samples,
        u_time.as_secs_f64(),
        trained.pair_count,
        trained.distinct_vectors,
        pairs_time.as_secs_f64(),
        em_time.as_secs_f64(),
        trained.converged,
        trained.iterations,
        trained.model.lambda,
        trained.model.upper,
        trained.model.lower,
    );
    vectors.all()
}

/// Candidate sets and scoring time of resolves against the whole base.
fn resolve_sample(records: &[Record], sample: usize) {
    let start = Instant::now();
    let mut index = BlockIndex::new();
    for (i, r) in records.iter().enumerate() {
        index.insert(i as u32, &blocking_keys(r));
    }
    println!("in-memory blocking index of {} records: {:.2} s", records.len(), start.elapsed().as_secs_f64());
    let model = default_model();
    let step = (records.len() / sample.max(1)).max(1);
    let mut sizes = Vec::with_capacity(sample);
    let mut times = Vec::with_capacity(sample);
    for (i, r) in records.iter().enumerate().step_by(step) {
        let start = Instant::now();
        let keys = blocking_keys(r);
        // The record itself is indexed too, and shares every key: one more.
        let candidates: Vec<u32> = index
            .candidates(&keys, RESOLVE_MAX_BLOCK, MAX_CANDIDATES + 1)
            .into_iter()
            .filter(|&c| c as usize != i)
            .collect();
        let best = candidates
            .iter()
            .map(|&c| model.total_weight(compare(r, &records[c as usize])))
            .fold(f64::NEG_INFINITY, f64::max);
        black_box(best);
        times.push(start.elapsed().as_secs_f64() * 1e6);
        sizes.push(candidates.len());
    }
    sizes.sort_unstable();
    times.sort_by(f64::total_cmp);
    let pct = |v: &[usize], p: f64| v[((v.len() - 1) as f64 * p) as usize];
    let pct_f = |v: &[f64], p: f64| v[((v.len() - 1) as f64 * p) as usize];
    println!(
        "{} resolves against {} records: candidates mean {:.1}, median {}, p99 {}, max {}; keys + candidates + \
         scoring (in memory, one thread) mean {:.1} µs, p99 {:.1} µs",
        sizes.len(),
        records.len(),
        sizes.iter().sum::<usize>() as f64 / sizes.len() as f64,
        pct(&sizes, 0.5),
        pct(&sizes, 0.99),
        sizes.last().copied().unwrap_or(0),
        times.iter().sum::<f64>() / times.len() as f64,
        pct_f(&times, 0.99),
    );
}

fn main() {
    let target: usize = std::env::var("BENCH_RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let start = Instant::now();
    let records: Vec<Record> = generate(target / 2, 1.0, 42).into_iter().map(|(_, r)| r).collect();
    println!("generated {} records in {:.2} s", records.len(), start.elapsed().as_secs_f64());
    let counts = train_once(&records);
    resolve_sample(&records, 20_000);

    let mut c = Criterion::default().configure_from_args();
    let model = default_model();
    let original = records[0].clone();
    let mut duplicate = original.clone();
    duplicate.given_name.push('x');
    duplicate.street = "calle de la paz 3".into();
    let stranger = records[records.len() / 3].clone();
    c.bench_function("score/duplicate", |b| b.iter(|| model.score(black_box(&original), black_box(&duplicate))));
    c.bench_function("score/stranger", |b| b.iter(|| model.score(black_box(&original), black_box(&stranger))));
    c.bench_function("compare/stranger", |b| b.iter(|| compare(black_box(&original), black_box(&stranger))));
    c.bench_function("blocking_keys", |b| b.iter(|| blocking_keys(black_box(&original))));
    let mut group = c.benchmark_group("em");
    group.sample_size(10);
    group.bench_function(format!("train_counts/{} distinct vectors", counts.distinct()), |b| {
        b.iter(|| train_counts(&model, black_box(&counts), 1000))
    });
    group.finish();
    c.final_summary();
}
