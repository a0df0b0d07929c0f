//! The report of one `crm bench` run: plain text for people, one JSON line
//! for scripts, both from the same figures.

use std::fmt::Write as _;

use serde::Serialize;

use super::{
    identity::{ImportStats, TrainingStats},
    load::PhaseSummary,
    workloads::ReplayStats,
};

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    bench: String,
    /// When the run started, UTC.
    date: String,
    target: String,
    kind: String,
    /// CPUs this process may use.
    cpus: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    customers: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ceiling: Option<PhaseSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ceiling_warmup: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    workflow: Option<PhaseSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    workflow_warmup: Option<u64>,
    /// Writes that filled the feed before a replay.
    #[serde(skip_serializing_if = "Option::is_none")]
    fill: Option<PhaseSummary>,
    /// The base loaded before resolving.
    #[serde(skip_serializing_if = "Option::is_none")]
    import: Option<ImportStats>,
    /// The matcher trained on it.
    #[serde(skip_serializing_if = "Option::is_none")]
    training: Option<TrainingStats>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    replays: Vec<ReplayStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    replay_rpc: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ratio: Option<Ratio>,
}

/// Workload figures over the same run's ceiling.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Ratio {
    /// Workload throughput / ceiling throughput (events/s over calls/s
    /// for a replay).
    pub throughput: f64,
    /// Workload p50 / ceiling p50 (absent for a replay).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50: Option<f64>,
    /// Workload p99 / ceiling p99.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99: Option<f64>,
    /// Workload p99.9 / ceiling p99.9.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p999: Option<f64>,
}

fn div(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

impl Report {
    /// An empty report about `target`.
    pub fn new(target: &str, kind: &str) -> Self {
        Report {
            bench: String::new(),
            date: crm_runtime::time::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            target: target.to_owned(),
            kind: kind.to_owned(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            customers: None,
            ceiling: None,
            ceiling_warmup: None,
            workflow: None,
            workflow_warmup: None,
            fill: None,
            import: None,
            training: None,
            replays: Vec::new(),
            replay_rpc: None,
            ratio: None,
        }
    }

    /// Which benchmark.
    pub fn set_bench(&mut self, bench: &str) {
        self.bench = bench.to_owned();
    }

    /// Customers the writes were spread over.
    pub fn set_customers(&mut self, customers: usize) {
        self.customers = Some(customers);
    }

    /// The ceiling.
    pub fn set_ceiling(&mut self, ceiling: PhaseSummary, warmup: u64) {
        self.ceiling = Some(ceiling);
        self.ceiling_warmup = Some(warmup);
        self.update_ratio();
    }

    /// The workload.
    pub fn set_workflow(&mut self, workflow: PhaseSummary, warmup: u64) {
        self.workflow = Some(workflow);
        self.workflow_warmup = Some(warmup);
        self.update_ratio();
    }

    /// The writes that filled the feed.
    pub fn set_fill(&mut self, fill: PhaseSummary) {
        self.fill = Some(fill);
    }

    /// The base loaded before resolving.
    pub fn set_import(&mut self, import: ImportStats) {
        self.import = Some(import);
    }

    /// The matcher training.
    pub fn set_training(&mut self, training: TrainingStats) {
        self.training = Some(training);
    }

    /// One replay.
    pub fn add_replay(&mut self, rpc: &str, replay: ReplayStats) {
        self.replay_rpc = Some(rpc.to_owned());
        self.replays.push(replay);
        self.update_ratio();
    }

    fn update_ratio(&mut self) {
        let Some(ceiling) = &self.ceiling else { return };
        if let Some(w) = &self.workflow {
            self.ratio = Some(Ratio {
                throughput: div(w.throughput, ceiling.throughput),
                p50: Some(div(w.p50_us, ceiling.p50_us)),
                p99: Some(div(w.p99_us, ceiling.p99_us)),
                p999: Some(div(w.p999_us, ceiling.p999_us)),
            });
        } else if !self.replays.is_empty() {
            let best = self.replays.iter().map(|r| r.events_per_s).fold(0.0, f64::max);
            self.ratio = Some(Ratio { throughput: div(best, ceiling.throughput), p50: None, p99: None, p999: None });
        }
    }

    /// The plain-text report.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "crm bench {}", self.bench);
        let _ = writeln!(out, "date        {}", self.date);
        let _ = writeln!(out, "target      {} ({}), {} cpus", self.target, self.kind, self.cpus);
        if let Some(c) = self.customers {
            let _ = writeln!(out, "customers   {c}");
        }
        if let Some(fill) = &self.fill {
            phase(&mut out, "fill", fill, None);
        }
        if let Some(i) = &self.import {
            let _ = writeln!(
                out,
                "import      {} records over {} streams in {:.1} s ({}/s): created {} linked {} review {} rejected {}",
                i.records,
                i.streams,
                i.elapsed_s,
                thousands(i.records_per_s),
                i.created,
                i.linked,
                i.review,
                i.rejected
            );
        }
        if let Some(t) = &self.training {
            let _ = writeln!(
                out,
                "training    TrainMatcher {:.1} s: version {} converged {} in {} iterations over {} pairs \
                 of {} records; prior {:.2e}, links from {:.1} bits, reviews from {:.1}",
                t.elapsed_s,
                t.matcher_version,
                t.converged,
                t.iterations,
                t.pair_count,
                t.record_count,
                t.match_prior,
                t.link_threshold,
                t.review_threshold
            );
        }
        if let Some(ceiling) = &self.ceiling {
            phase(&mut out, "ceiling", ceiling, self.ceiling_warmup);
        }
        if let Some(workflow) = &self.workflow {
            phase(&mut out, "workflow", workflow, self.workflow_warmup);
        }
        for (i, r) in self.replays.iter().enumerate() {
            let _ = writeln!(out, "replay {}    {}", i + 1, self.replay_rpc.as_deref().unwrap_or_default());
            let _ = writeln!(
                out,
                "  events {}  elapsed {:.3} s  throughput {}/s  first event {}  mean event {:.0} B",
                r.events,
                r.elapsed_s,
                thousands(r.events_per_s),
                duration_us(r.first_event_us),
                r.mean_event_bytes
            );
        }
        if let Some(ratio) = &self.ratio {
            let _ = writeln!(out, "ratio       workload / ceiling of this run");
            let _ = write!(out, "  throughput {:.3}", ratio.throughput);
            if let (Some(p50), Some(p99), Some(p999)) = (ratio.p50, ratio.p99, ratio.p999) {
                let _ = write!(out, "  p50 {p50:.2}x  p99 {p99:.2}x  p99.9 {p999:.2}x");
            }
            let _ = writeln!(out);
        }
        out
    }

    /// The report as one JSON line.
    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// Ok when every call succeeded; else an error naming what failed.
    pub fn verdict(&self) -> anyhow::Result<()> {
        let phases = [("fill", &self.fill), ("ceiling", &self.ceiling), ("workflow", &self.workflow)];
        let failed: Vec<String> = phases
            .iter()
            .filter_map(|(name, p)| p.as_ref().filter(|p| p.errors > 0).map(|p| (name, p)))
            .map(|(name, p)| format!("{name}: {} of {} calls failed ({:?})", p.errors, p.requests, p.error_codes))
            .collect();
        if failed.is_empty() { Ok(()) } else { Err(anyhow::anyhow!("{}", failed.join("; "))) }
    }
}

fn phase(out: &mut String, name: &str, p: &PhaseSummary, warmup: Option<u64>) {
    let _ = writeln!(out, "{name:<11} {}", p.rpc);
    let warmup = warmup.map(|w| format!("  warm-up {w}")).unwrap_or_default();
    let _ = writeln!(
        out,
        "  requests {}  concurrency {}  connections {}{warmup}  ok {}  errors {}  elapsed {:.3} s",
        p.requests, p.concurrency, p.connections, p.ok, p.errors, p.elapsed_s
    );
    let _ = writeln!(
        out,
        "  throughput {}/s  p50 {}  p99 {}  p99.9 {}  max {}",
        thousands(p.throughput),
        duration_us(p.p50_us),
        duration_us(p.p99_us),
        duration_us(p.p999_us),
        duration_us(p.max_us)
    );
    for (code, n) in &p.error_codes {
        let sample = p.error_samples.get(code).map(|m| format!(" (e.g. {m:.200})")).unwrap_or_default();
        let _ = writeln!(out, "  error {code}: {n}{sample}");
    }
}

/// `12345.6` → `12,346`.
fn thousands(x: f64) -> String {
    let n = x.round() as u64;
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Microseconds, printed in µs below 1 ms and in ms above.
fn duration_us(us: f64) -> String {
    if us < 1_000.0 { format!("{us:.0} µs") } else { format!("{:.2} ms", us / 1_000.0) }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn summary(throughput: f64, p50: f64, errors: u64) -> PhaseSummary {
        PhaseSummary {
            rpc: "x".into(),
            requests: 100,
            concurrency: 4,
            connections: 2,
            ok: 100 - errors,
            errors,
            error_codes: if errors > 0 {
                BTreeMap::from([("Unavailable".to_owned(), errors)])
            } else {
                BTreeMap::new()
            },
            error_samples: BTreeMap::new(),
            elapsed_s: 1.0,
            throughput,
            p50_us: p50,
            p99_us: p50 * 2.0,
            p999_us: p50 * 4.0,
            max_us: p50 * 8.0,
            mean_us: p50,
        }
    }

    #[test]
    fn ratios_compare_the_workload_with_the_ceiling_of_the_same_run() {
        let mut r = Report::new("http://127.0.0.1:1", "external");
        r.set_ceiling(summary(40_000.0, 500.0, 0), 10);
        r.set_workflow(summary(4_000.0, 5_000.0, 0), 10);
        let ratio = r.ratio.unwrap_or_else(|| panic!("no ratio"));
        assert!((ratio.throughput - 0.1).abs() < 1e-9);
        assert_eq!(ratio.p50, Some(10.0));
        let text = r.text();
        assert!(text.contains("throughput 40,000/s"), "{text}");
        assert!(text.contains("p50 10.00x"), "{text}");
        assert!(r.verdict().is_ok());
        let json: serde_json::Value = serde_json::from_str(&r.json()).unwrap_or_default();
        assert_eq!(json["workflow"]["throughput"], 4_000.0);
    }

    #[test]
    fn failed_calls_fail_the_run() {
        let mut r = Report::new("http://127.0.0.1:1", "external");
        r.set_ceiling(summary(40_000.0, 500.0, 3), 10);
        assert!(r.verdict().is_err());
        assert!(r.text().contains("error Unavailable: 3"));
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
        assert_eq!(duration_us(712.0), "712 µs");
        assert_eq!(duration_us(2_301.0), "2.30 ms");
    }
}
