//! The load driver: a fixed number of calls spread over concurrency lanes,
//! each lane timing its own calls into its own HDR histogram (merged at
//! the end, so lanes never contend on a shared recorder).

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use serde::Serialize;
use tonic::Status;

/// One concurrency lane: makes call number `index` and says how it went.
pub trait Lane: Send + 'static {
    /// Make call `index` (unique across the phases of one run).
    fn call(&mut self, index: u64) -> impl Future<Output = Result<(), Status>> + Send;
}

/// Latencies are recorded in nanoseconds, from 1 µs to 2 minutes, with
/// three significant digits.
pub fn new_histogram() -> Histogram<u64> {
    match Histogram::new_with_bounds(1_000, 120_000_000_000, 3) {
        Ok(h) => h,
        // The bounds are constants that hdrhistogram accepts.
        Err(e) => unreachable!("histogram bounds: {e}"),
    }
}

/// What one phase (a fixed number of calls at a fixed concurrency) measured.
#[derive(Debug, Clone)]
pub struct PhaseStats {
    /// Calls made.
    pub requests: u64,
    /// Lanes.
    pub concurrency: usize,
    /// Calls that succeeded.
    pub ok: u64,
    /// Failed calls by gRPC code.
    pub errors: BTreeMap<String, u64>,
    /// One message per failing code, to say what went wrong.
    pub error_samples: BTreeMap<String, String>,
    /// Wall time from the first call to the last answer.
    pub elapsed: Duration,
    /// Latency of the successful calls, in nanoseconds.
    pub latency: Histogram<u64>,
}

impl PhaseStats {
    /// Failed calls.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Successful calls per second of wall time.
    pub fn throughput(&self) -> f64 {
        per_second(self.ok, self.elapsed)
    }

    /// A latency quantile in microseconds (0 when nothing succeeded).
    pub fn quantile_us(&self, q: f64) -> f64 {
        if self.latency.is_empty() { 0.0 } else { self.latency.value_at_quantile(q) as f64 / 1_000.0 }
    }

    /// The summary that reports print.
    pub fn summary(&self, rpc: &str, connections: usize) -> PhaseSummary {
        PhaseSummary {
            rpc: rpc.to_owned(),
            requests: self.requests,
            concurrency: self.concurrency,
            connections,
            ok: self.ok,
            errors: self.error_count(),
            error_codes: self.errors.clone(),
            error_samples: self.error_samples.clone(),
            elapsed_s: self.elapsed.as_secs_f64(),
            throughput: self.throughput(),
            p50_us: self.quantile_us(0.50),
            p99_us: self.quantile_us(0.99),
            p999_us: self.quantile_us(0.999),
            max_us: if self.latency.is_empty() { 0.0 } else { self.latency.max() as f64 / 1_000.0 },
            mean_us: if self.latency.is_empty() { 0.0 } else { self.latency.mean() / 1_000.0 },
        }
    }
}

/// A phase's figures as reported.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseSummary {
    /// The RPC called.
    pub rpc: String,
    /// Calls made.
    pub requests: u64,
    /// Lanes.
    pub concurrency: usize,
    /// HTTP/2 connections the lanes shared.
    pub connections: usize,
    /// Calls that succeeded.
    pub ok: u64,
    /// Calls that failed.
    pub errors: u64,
    /// Failed calls by gRPC code.
    pub error_codes: BTreeMap<String, u64>,
    /// One message per failing code.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub error_samples: BTreeMap<String, String>,
    /// Wall time, seconds.
    pub elapsed_s: f64,
    /// Successful calls per second.
    pub throughput: f64,
    /// Median latency, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// 99.9th percentile, µs.
    pub p999_us: f64,
    /// Slowest call, µs.
    pub max_us: f64,
    /// Mean latency, µs.
    pub mean_us: f64,
}

/// `count / elapsed`, 0 for an empty interval.
pub fn per_second(count: u64, elapsed: Duration) -> f64 {
    let s = elapsed.as_secs_f64();
    if s > 0.0 { count as f64 / s } else { 0.0 }
}

/// Make calls `first .. first + count` over `lanes` (one task each; a lane
/// takes the next call number when its previous call has answered), and
/// hand the lanes back for the next phase. Progress goes to stderr every
/// ten seconds under `label`.
pub async fn drive<L: Lane>(lanes: Vec<L>, first: u64, count: u64, label: &str) -> (Vec<L>, PhaseStats) {
    let concurrency = lanes.len();
    let next = Arc::new(AtomicU64::new(0));
    let progress = spawn_progress(label.to_owned(), next.clone(), count);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(lanes.len());
    for mut lane in lanes {
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut stats = LaneStats::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let t = Instant::now();
                let result = lane.call(first + i).await;
                stats.record(t.elapsed(), result);
            }
            (lane, stats)
        }));
    }
    let mut lanes = Vec::with_capacity(tasks.len());
    let mut total = LaneStats::new();
    for task in tasks {
        match task.await {
            Ok((lane, stats)) => {
                lanes.push(lane);
                total.merge(stats);
            }
            Err(e) => {
                // A lane that panicked: its calls count as failed.
                *total.errors.entry("PANIC".to_owned()).or_default() += 1;
                total.samples.entry("PANIC".to_owned()).or_insert_with(|| e.to_string());
            }
        }
    }
    let elapsed = start.elapsed();
    progress.abort();
    let stats = PhaseStats {
        requests: count,
        concurrency,
        ok: total.ok,
        errors: total.errors,
        error_samples: total.samples,
        elapsed,
        latency: total.latency,
    };
    (lanes, stats)
}

struct LaneStats {
    ok: u64,
    errors: BTreeMap<String, u64>,
    samples: BTreeMap<String, String>,
    latency: Histogram<u64>,
}

impl LaneStats {
    fn new() -> Self {
        LaneStats { ok: 0, errors: BTreeMap::new(), samples: BTreeMap::new(), latency: new_histogram() }
    }

    fn record(&mut self, took: Duration, result: Result<(), Status>) {
        match result {
            Ok(()) => {
                self.ok += 1;
                self.latency.saturating_record(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
            }
            Err(status) => {
                let code = format!("{:?}", status.code());
                *self.errors.entry(code.clone()).or_default() += 1;
                self.samples.entry(code).or_insert_with(|| status.message().to_owned());
            }
        }
    }

    fn merge(&mut self, other: LaneStats) {
        self.ok += other.ok;
        for (code, n) in other.errors {
            *self.errors.entry(code).or_default() += n;
        }
        for (code, message) in other.samples {
            self.samples.entry(code).or_insert(message);
        }
        // Same bounds on both sides: adding cannot fail.
        let _ = self.latency.add(&other.latency);
    }
}

fn spawn_progress(label: String, next: Arc<AtomicU64>, count: u64) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let start = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        tick.tick().await;
        loop {
            tick.tick().await;
            let done = next.load(Ordering::Relaxed).min(count);
            eprintln!(
                "crm bench: {label}: {done}/{count} calls started, {:.0}/s so far",
                per_second(done, start.elapsed())
            );
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counting {
        calls: u64,
    }

    impl Lane for Counting {
        async fn call(&mut self, index: u64) -> Result<(), Status> {
            self.calls += 1;
            if index % 10 == 9 { Err(Status::unavailable("down")) } else { Ok(()) }
        }
    }

    #[tokio::test]
    async fn every_call_is_made_once_and_counted() {
        let lanes = (0..4).map(|_| Counting { calls: 0 }).collect();
        let (lanes, stats) = drive(lanes, 100, 50, "test").await;
        assert_eq!(lanes.iter().map(|l| l.calls).sum::<u64>(), 50);
        assert_eq!(stats.requests, 50);
        assert_eq!(stats.ok, 45);
        assert_eq!(stats.errors.get("Unavailable"), Some(&5));
        assert_eq!(stats.error_samples.get("Unavailable").map(String::as_str), Some("down"));
        assert_eq!(stats.latency.len(), 45);
        assert_eq!(stats.concurrency, 4);
    }

    #[test]
    fn rates_of_empty_intervals_are_zero() {
        assert_eq!(per_second(10, Duration::ZERO), 0.0);
        assert_eq!(per_second(10, Duration::from_secs(2)), 5.0);
    }
}
