//! Benchmarks of the value-model core on a synthetic population.
//!
//! `cargo bench -p crm-differentiation --bench value_model` draws
//! `BENCH_CUSTOMERS` customers (default 1,000,000) from BG/NBD and
//! Gamma–Gamma at the published CDNOW estimates — acquired over 12 weeks,
//! observed to week 39, purchase times in whole days as the projection
//! keeps them — prints the population's size after compression and one
//! timed fit with its estimates, then Criterion measures the whole fit
//! (compression + BG/NBD + Gamma–Gamma, as `FitValueModel` runs it) and
//! the scoring of every customer (P(alive), expected transactions over a
//! year, expected margin, discounted CLV). Criterion options follow `--`.
//!
//! Before that it measures the per-event update latency of the projection
//! on a temporary SQLite store: `BENCH_EVENTS` purchase events (default
//! 20,000, over 5,000 customers) applied one by one exactly as the feed
//! consumer applies them (cursor check, facts, derived rows, rescoring with
//! the active model, cursor advance, commit), first with no model, then
//! the same number again after a model was fitted and activated.

use std::{hint::black_box, time::Instant};

use criterion::Criterion;
use crm_differentiation::domain::{
    bgnbd,
    clv::{self, Customer, Model, Valuation},
    gamma_gamma,
    random::Rng,
};

const CDNOW: bgnbd::Params = bgnbd::Params { r: 0.243, alpha: 4.414, a: 0.793, b: 2.426 };
const SPEND: gamma_gamma::Params = gamma_gamma::Params { p: 6.25, q: 3.74, gamma: 15.44 };

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn population(n: usize) -> Vec<Customer> {
    let mut rng = Rng::new(20_261_123);
    bgnbd::simulate(&CDNOW, n, 12.0, 39.0, 1.0 / 7.0, &mut rng)
        .into_iter()
        .map(|c| Customer {
            x: c.x,
            t_x_days: (c.t_x * 7.0).round(),
            t_days: (c.t * 7.0).round(),
            // Cents, as the projection stores them.
            mean_margin: if c.x > 0 {
                (gamma_gamma::simulate_mean(&SPEND, c.x, &mut rng) * 100.0).round() / 100.0
            } else {
                0.0
            },
        })
        .collect()
}

/// Latency percentiles of applying purchase events one by one.
fn event_latency(events: usize) {
    use crm_differentiation::store::{PurchaseSummaryProjection, models};
    use crm_proto::{
        common::v1::Channel,
        interaction::v1::{
            Interaction, InteractionEvent, InteractionType, Order, OrderLine, PurchaseRecorded, interaction_event::Kind,
        },
    };
    use crm_runtime::{consumer::apply_once, db::Store, ids::new_id};

    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => panic!("runtime: {e}"),
    };
    runtime.block_on(async move {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let url = format!("sqlite://{}/bench.db?mode=rwc", dir.path().display());
        let store = Store::connect(&url, 4).await.unwrap_or_else(|e| panic!("connect: {e}"));
        store.migrate::<crm_differentiation::migration::Migrator>().await.unwrap_or_else(|e| panic!("migrate: {e}"));
        let customers: Vec<String> = (0..5_000).map(|_| new_id()).collect();
        let mut rng = Rng::new(7);
        let now = chrono::Utc::now().timestamp();
        let mut sequence = 0i64;
        let mut event = |rng: &mut Rng| {
            sequence += 1;
            let customer = customers[(rng.uniform() * customers.len() as f64) as usize % customers.len()].clone();
            let at = prost_types::Timestamp { seconds: now - (rng.uniform() * 365.0 * 86_400.0) as i64, nanos: 0 };
            InteractionEvent {
                sequence,
                customer_id: customer.clone(),
                kind: Some(Kind::PurchaseRecorded(PurchaseRecorded {
                    order: Some(Order {
                        id: new_id(),
                        customer_id: customer.clone(),
                        currency_code: "EUR".into(),
                        lines: vec![OrderLine {
                            sku: "S".into(),
                            category: "c".into(),
                            quantity: 1,
                            unit_price_minor: 1_000 + (rng.uniform() * 9_000.0) as i64,
                            unit_cost_minor: 500,
                        }],
                        occur_time: Some(at),
                        ..Default::default()
                    }),
                    interaction: Some(Interaction {
                        id: new_id(),
                        customer_id: customer,
                        channel: Channel::Web as i32,
                        r#type: InteractionType::Purchase as i32,
                        occur_time: Some(at),
                        ..Default::default()
                    }),
                })),
                ..Default::default()
            }
        };
        let report = |label: &str, mut d: Vec<std::time::Duration>| {
            d.sort_unstable();
            let q = |p: f64| d[((d.len() as f64 - 1.0) * p).round() as usize];
            println!(
                "per-event update ({label}): {} events, p50 {:.3?}, p99 {:.3?}, p99.9 {:.3?}, max {:.3?}",
                d.len(),
                q(0.5),
                q(0.99),
                q(0.999),
                q(1.0)
            );
        };
        for phase in ["no active model", "active model, rescoring each event"] {
            if phase.starts_with("active") {
                let cmd = models::FitCommand {
                    calibration_end: chrono::Utc::now(),
                    currency: Some("EUR".into()),
                    valuation: Valuation::default(),
                    activate: true,
                    request_id: String::new(),
                    fingerprint: 0,
                };
                let m = models::fit(&store, cmd).await.unwrap_or_else(|e| panic!("fit: {e}"));
                println!("fitted on the bench store: converged {} active {}", m.converged, m.active);
            }
            let mut took = Vec::with_capacity(events);
            for _ in 0..events {
                let e = event(&mut rng);
                let start = Instant::now();
                apply_once(&store, "interaction", &PurchaseSummaryProjection, &e)
                    .await
                    .unwrap_or_else(|e| panic!("apply: {e}"));
                took.push(start.elapsed());
            }
            report(phase, took);
        }
    });
}

fn main() {
    let events: usize = std::env::var("BENCH_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    event_latency(events);
    let n: usize = std::env::var("BENCH_CUSTOMERS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let start = Instant::now();
    let customers = population(n);
    println!("generated {n} customers in {:.2?}", start.elapsed());
    let start = Instant::now();
    let fitted = clv::fit(&customers);
    println!(
        "one fit: {:.2?}; {} customers, {} distinct (x, t_x, T), {} spenders; converged {}; \
         r {:.4} alpha {:.4} a {:.4} b {:.4}; p {:.3} q {:.3} gamma {:.3}",
        start.elapsed(),
        fitted.customers,
        fitted.distinct,
        fitted.spenders,
        fitted.converged,
        fitted.bgnbd.params.r,
        fitted.bgnbd.params.alpha,
        fitted.bgnbd.params.a,
        fitted.bgnbd.params.b,
        fitted.spend.params.p,
        fitted.spend.params.q,
        fitted.spend.params.gamma,
    );
    let model = Model { bgnbd: fitted.bgnbd.params, spend: fitted.spend.params, valuation: Valuation::default() };
    let threads = threads();
    let start = Instant::now();
    let scores = clv::score_population(&model, &customers, threads);
    println!(
        "one scoring of {n} customers on {threads} threads: {:.2?} ({} failed)",
        start.elapsed(),
        scores.iter().filter(|s| s.is_err()).count()
    );

    let mut c = Criterion::default().sample_size(10).configure_from_args();
    c.bench_function(&format!("fit BG/NBD + Gamma-Gamma, {n} customers"), |b| {
        b.iter(|| black_box(clv::fit(black_box(&customers))))
    });
    c.bench_function(&format!("score {n} customers ({threads} threads)"), |b| {
        b.iter(|| black_box(clv::score_population(&model, black_box(&customers), threads)))
    });
    c.final_summary();
}
