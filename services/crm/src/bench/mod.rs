//! `crm bench`: the project's load generator.
//!
//! Every figure is a fixed number of calls (never a duration), spread over
//! concurrency lanes that share a few HTTP/2 connections, with a warm-up
//! that is not measured, and latencies kept in HDR histograms. Each
//! workload is measured right after the empty-call ceiling of the same
//! server in the same run, and reported as a ratio to it: the machine is
//! shared and noisy, so ratios are the figures to compare across runs.
//!
//! - `ceiling`: `grpc.health.v1.Health/Check`, a real unary call that does
//!   no store work.
//! - `record-interaction`: valid, varied RecordInteraction calls with
//!   unique request ids.
//! - `feed-replay`: fills the interaction feed up to N events if it holds
//!   fewer, then replays it with `Subscribe(after_sequence = 0)`, checking
//!   that sequences are contiguous.
//! - `resolve-identity`: loads a base of generated people through
//!   ImportProfiles (unless `--profiles 0`), trains the matcher on it and
//!   times that, then resolves returning customers (corrupted duplicates of
//!   people in the base) against identification.
//!
//! The target is a server already running on loopback (`--addr`; the
//! identification server for `resolve-identity`), or the services started
//! in this process over a fresh store (`--in-process sqlite|postgres`).

mod identity;
mod load;
mod report;
mod target;
mod workloads;

use std::time::Duration;

use anyhow::bail;
use clap::{Args, Subcommand};
use crm_runtime::telemetry::LogFormat;

pub use self::target::StoreKind;
use self::{
    identity::{People, RESOLVE_IDENTITY, ResolveLane},
    load::{Lane, PhaseStats, drive},
    report::Report,
    target::{InProcess, InProcessOptions, Services, Target},
    workloads::{HEALTH_CHECK, HealthLane, InteractionMix, RECORD_INTERACTION, RecordLane, SUBSCRIBE},
};

/// `crm bench …`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    workload: Workload,
}

#[derive(Debug, Subcommand)]
enum Workload {
    /// The empty-call ceiling: unary grpc.health.v1.Health/Check.
    Ceiling {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// RecordInteraction throughput and latency, beside the ceiling
    /// measured just before it.
    RecordInteraction {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        load: LoadArgs,
        /// Distinct customers the interactions are spread over.
        #[arg(long, default_value_t = 1_000)]
        customers: usize,
        /// Calls of the ceiling measured first (default: --requests).
        #[arg(long)]
        ceiling_requests: Option<u64>,
    },
    /// ResolveIdentity of returning customers against a base of
    /// --profiles people, beside the ceiling measured just before it.
    ResolveIdentity {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        load: LoadArgs,
        /// People in the base; loaded through ImportProfiles first unless 0
        /// (a server filled by an earlier run with the same --profiles and
        /// --seed).
        #[arg(long, default_value_t = 1_000_000)]
        profiles: usize,
        /// Size of the generated population when --profiles is 0.
        #[arg(long, default_value_t = 1_000_000)]
        population: usize,
        /// Seed of the generated people.
        #[arg(long, default_value_t = 2026)]
        seed: u64,
        /// Concurrent ImportProfiles streams loading the base.
        #[arg(long, default_value_t = 8)]
        import_streams: usize,
        /// Load the base from this person on (the ones before are stored
        /// already, by an interrupted run with the same --profiles and --seed).
        #[arg(long, default_value_t = 0)]
        import_from: usize,
        /// Do not call TrainMatcher after loading.
        #[arg(long)]
        no_train: bool,
        /// Calls of the ceiling measured first (default: --requests).
        #[arg(long)]
        ceiling_requests: Option<u64>,
        /// Number of the first call (warm-up included). Call i resolves the
        /// returning customer that i picks, each of them once in any run of
        /// calls as long as their number (about --population): runs over
        /// calls that do not overlap resolve different people, until all
        /// runs together have made that many calls. A run from 0 repeats
        /// the load's own run, and a person resolved before is found by the
        /// identifiers stored then, which costs less than matching a
        /// newcomer.
        #[arg(long, default_value_t = 0)]
        first_call: u64,
    },
    /// Feed replay rate: fill the feed to --events if it holds fewer, then
    /// Subscribe(after_sequence = 0) and read them all.
    FeedReplay {
        #[command(flatten)]
        target: TargetArgs,
        /// Events to replay.
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// Concurrent writers while filling the feed.
        #[arg(long, default_value_t = 32)]
        fill_concurrency: usize,
        /// Distinct customers of the events written to fill the feed.
        #[arg(long, default_value_t = 1_000)]
        customers: usize,
        /// Calls of the ceiling measured before the replay.
        #[arg(long, default_value_t = 20_000)]
        ceiling_requests: u64,
        /// Lanes of the ceiling.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// HTTP/2 connections of the ceiling and the fill.
        #[arg(long, default_value_t = DEFAULT_CONNECTIONS)]
        connections: usize,
        /// Replays measured, one after the other, each on a new connection.
        #[arg(long, default_value_t = 1)]
        rounds: u32,
    },
}

/// Where the load goes.
#[derive(Debug, Clone, Args)]
struct TargetArgs {
    /// The server, on loopback: `http://127.0.0.1:PORT`.
    #[arg(long, required_unless_present = "in_process", conflicts_with = "in_process")]
    addr: Option<String>,
    /// Start identification and interaction in this process over a fresh
    /// store instead (dropped after the run).
    #[arg(long, value_enum)]
    in_process: Option<StoreKind>,
    /// PostgreSQL server for `--in-process postgres`; a database is created
    /// on it for the run and dropped after.
    #[arg(long, env = "CRM_BENCH_POSTGRES_URL", default_value = "postgres://postgres@127.0.0.1:5432")]
    postgres_url: String,
    /// Largest database pool of each in-process service.
    #[arg(long, default_value_t = 16)]
    db_max_connections: u32,
    /// Also print the report as one JSON line (the last line of output).
    #[arg(long)]
    json: bool,
}

/// How much load.
#[derive(Debug, Clone, Args)]
struct LoadArgs {
    /// Measured calls.
    #[arg(long, default_value_t = 10_000)]
    requests: u64,
    /// Concurrent lanes, each with one call in flight.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// HTTP/2 connections the lanes share round-robin.
    #[arg(long, default_value_t = DEFAULT_CONNECTIONS)]
    connections: usize,
    /// Calls made before measuring, not counted (default: a tenth of
    /// --requests, at most 2,000).
    #[arg(long)]
    warmup: Option<u64>,
}

/// Connections shared by the lanes. Measured on two cores at concurrency
/// 32 (ceiling, calls/s): 1 connection 24–32 k, 2 connections 30–39 k,
/// 4 connections 21–29 k, one per lane 14–18 k: every connection is one
/// more task to wake per call, and a single one serialises on its task.
pub const DEFAULT_CONNECTIONS: usize = 2;

/// Longest a unary call may take before it counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest TrainMatcher may take (a base of millions).
const TRAIN_TIMEOUT: Duration = Duration::from_secs(600);

impl LoadArgs {
    fn check(&self) -> anyhow::Result<()> {
        if self.requests == 0 || self.concurrency == 0 || self.connections == 0 {
            bail!("--requests, --concurrency and --connections must be at least 1");
        }
        Ok(())
    }

    fn warmup(&self) -> u64 {
        self.warmup.unwrap_or((self.requests / 10).min(2_000))
    }

    fn connections(&self) -> usize {
        self.connections.min(self.concurrency)
    }
}

/// Log to stderr (stdout carries the report), with the servers' filter;
/// human-readable lines unless `format` asks for JSON.
pub fn init_logging(format: Option<LogFormat>) {
    use tracing_subscriber::{EnvFilter, fmt, prelude::*};
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(crm_runtime::telemetry::DEFAULT_FILTER));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        Some(LogFormat::Json) => registry.with(fmt::layer().json().with_writer(std::io::stderr)).try_init(),
        _ => registry.with(fmt::layer().compact().with_writer(std::io::stderr)).try_init(),
    };
}

/// Run `crm bench`: print the report, and fail if any call failed.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let target_args = match &args.workload {
        Workload::Ceiling { target, .. }
        | Workload::RecordInteraction { target, .. }
        | Workload::ResolveIdentity { target, .. }
        | Workload::FeedReplay { target, .. } => target.clone(),
    };
    let services = match &args.workload {
        Workload::ResolveIdentity { .. } => Services::Identification,
        _ => Services::IdentificationAndInteraction,
    };
    let target = match (&target_args.addr, target_args.in_process) {
        (Some(addr), _) => Target::external(addr)?,
        (None, Some(store)) => {
            let options = InProcessOptions {
                store,
                postgres_url: target_args.postgres_url.clone(),
                db_max_connections: target_args.db_max_connections,
                services,
            };
            InProcess::start(&options).await?
        }
        (None, None) => bail!("give --addr or --in-process"),
    };
    let result = tokio::select! {
        r = run_workload(args.workload, &target) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    let stopped = target.stop().await;
    let report = result?;
    print!("{}", report.text());
    if target_args.json {
        println!("{}", report.json());
    }
    stopped?;
    report.verdict()
}

async fn run_workload(workload: Workload, target: &Target) -> anyhow::Result<Report> {
    let url = target.url();
    let mut report = Report::new(&url, &target.describe());
    match workload {
        Workload::Ceiling { load, .. } => {
            load.check()?;
            report.set_bench("ceiling");
            let channels = target::connect(&url, load.connections(), Some(CALL_TIMEOUT)).await?;
            let ceiling = measure(HealthLane::lanes(&channels, load.concurrency), &load, 0, "ceiling").await;
            report.set_ceiling(ceiling.summary(HEALTH_CHECK, channels.len()), load.warmup());
        }
        Workload::RecordInteraction { load, customers, ceiling_requests, .. } => {
            load.check()?;
            report.set_bench("record-interaction");
            let channels = target::connect(&url, load.connections(), Some(CALL_TIMEOUT)).await?;
            let ceiling_load = LoadArgs { requests: ceiling_requests.unwrap_or(load.requests), ..load.clone() };
            let ceiling = measure(HealthLane::lanes(&channels, load.concurrency), &ceiling_load, 0, "ceiling").await;
            report.set_ceiling(ceiling.summary(HEALTH_CHECK, channels.len()), ceiling_load.warmup());
            let mix = InteractionMix::new(customers);
            let lanes = RecordLane::lanes(&channels, load.concurrency, &mix);
            let workflow = measure(lanes, &load, 0, "record-interaction").await;
            report.set_workflow(workflow.summary(RECORD_INTERACTION, channels.len()), load.warmup());
            report.set_customers(customers);
        }
        Workload::ResolveIdentity {
            load,
            profiles,
            population,
            seed,
            import_streams,
            import_from,
            no_train,
            ceiling_requests,
            first_call,
            ..
        } => {
            load.check()?;
            report.set_bench("resolve-identity");
            let size = if profiles > 0 { profiles } else { population };
            eprintln!("crm bench: generating {size} people (seed {seed})");
            let people = std::sync::Arc::new(People::generate(size, seed));
            let channels = target::connect(&url, load.connections(), Some(CALL_TIMEOUT)).await?;
            if profiles > 0 {
                eprintln!("crm bench: loading {profiles} people through {import_streams} ImportProfiles streams");
                let streams = target::connect(&url, import_streams.clamp(1, 64), None).await?;
                let imported = identity::import(&streams, &people, import_streams, import_from).await?;
                eprintln!("crm bench: loaded in {:.1} s", imported.elapsed_s);
                report.set_import(imported);
            }
            if !no_train {
                eprintln!("crm bench: training the matcher");
                let long = target::connect(&url, 1, Some(TRAIN_TIMEOUT)).await?;
                let Some(channel) = long.into_iter().next() else { bail!("no connection for TrainMatcher") };
                report.set_training(identity::train(channel).await?);
            }
            let ceiling_load = LoadArgs { requests: ceiling_requests.unwrap_or(load.requests), ..load.clone() };
            let ceiling = measure(HealthLane::lanes(&channels, load.concurrency), &ceiling_load, 0, "ceiling").await;
            report.set_ceiling(ceiling.summary(HEALTH_CHECK, channels.len()), ceiling_load.warmup());
            let lanes = ResolveLane::lanes(&channels, load.concurrency, &people);
            let workflow = measure(lanes, &load, first_call, "resolve-identity").await;
            report.set_workflow(workflow.summary(RESOLVE_IDENTITY, channels.len()), load.warmup());
            report.set_customers(size);
        }
        Workload::FeedReplay {
            events,
            fill_concurrency,
            customers,
            ceiling_requests,
            concurrency,
            connections,
            rounds,
            ..
        } => {
            if events == 0 || fill_concurrency == 0 || concurrency == 0 || connections == 0 {
                bail!("--events, --fill-concurrency, --concurrency and --connections must be at least 1");
            }
            report.set_bench("feed-replay");
            let channels = target::connect(&url, connections.min(concurrency), Some(CALL_TIMEOUT)).await?;
            let mix = InteractionMix::new(customers);
            let head = workloads::probe_head(channels[0].clone(), &mix).await?;
            let head = u64::try_from(head).unwrap_or(0);
            if head < events {
                let missing = events - head;
                eprintln!("crm bench: the feed holds {head} events; writing {missing} more");
                let lanes = RecordLane::lanes(&channels, fill_concurrency, &mix);
                let (_, fill) = drive(lanes, 0, missing, "fill").await;
                report.set_fill(fill.summary(RECORD_INTERACTION, channels.len()));
            }
            let ceiling_load = LoadArgs { requests: ceiling_requests, concurrency, connections, warmup: None };
            ceiling_load.check()?;
            let ceiling = measure(HealthLane::lanes(&channels, concurrency), &ceiling_load, 0, "ceiling").await;
            report.set_ceiling(ceiling.summary(HEALTH_CHECK, channels.len()), ceiling_load.warmup());
            for round in 1..=rounds.max(1) {
                let stream = target::connect(&url, 1, None).await?;
                let Some(channel) = stream.into_iter().next() else { bail!("no connection for the replay") };
                eprintln!("crm bench: replaying {events} events (round {round})");
                let replay = workloads::replay(channel, events).await?;
                report.add_replay(SUBSCRIBE, replay);
            }
        }
    }
    Ok(report)
}

/// Warm up (not measured), then measure `load.requests` calls numbered
/// after the warm-up's.
async fn measure<L: Lane>(lanes: Vec<L>, load: &LoadArgs, first: u64, label: &str) -> PhaseStats {
    let warmup = load.warmup();
    let lanes = if warmup > 0 { drive(lanes, first, warmup, &format!("{label} warm-up")).await.0 } else { lanes };
    drive(lanes, first + warmup, load.requests, label).await.1
}
