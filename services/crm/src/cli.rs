//! The command line of `crm`: `serve <service>`, `up`, `migrate <service>`
//! and `bench`, with telemetry set up before and flushed after.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use crm_runtime::{
    config::{ServerArgs, ServiceKind, Settings},
    server::Shutdown,
    telemetry::{self, LogFormat},
};

#[derive(Debug, Parser)]
#[command(name = "crm", version, about = "IDIC CRM: identify, differentiate, interact, customize")]
struct Cli {
    /// Log format (default: json for serve and migrate, pretty for up).
    #[arg(long, env = "CRM_LOG_FORMAT", value_enum, global = true)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one service.
    Serve {
        /// Which service.
        #[arg(value_enum)]
        service: ServiceKind,
        #[command(flatten)]
        args: ServerArgs,
    },
    /// Run the whole suite in one process: gateway on 50051 (or --port) and
    /// the four services on the next four ports, each with its own SQLite
    /// file under the data directory.
    Up {
        #[command(flatten)]
        args: ServerArgs,
    },
    /// Run a service's database migrations and exit.
    Migrate {
        /// Which service.
        #[arg(value_enum)]
        service: ServiceKind,
        #[command(flatten)]
        args: ServerArgs,
    },
    /// Load-test a service on this machine: the empty-call ceiling,
    /// RecordInteraction, feed replay, ResolveIdentity against a large base.
    Bench(crate::bench::BenchArgs),
}

/// Parse the command line and run it; what `crm`'s `main` does.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_format = if matches!(cli.command, Command::Up { .. }) { LogFormat::Pretty } else { LogFormat::Json };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The exporters' channels live on the runtime.
    let entered = runtime.enter();
    // The bench report owns stdout: its logs go to stderr.
    let telemetry = match &cli.command {
        Command::Bench(_) => {
            crate::bench::init_logging(cli.log_format);
            None
        }
        command => match telemetry::init(cli.log_format.unwrap_or(default_format), service_name(command)) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("crm: telemetry: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    drop(entered);
    let result = runtime.block_on(run(cli.command));
    // Spans and metrics still buffered are exported before exit; the
    // runtime keeps running the exporters' connections meanwhile.
    if let Some(telemetry) = telemetry {
        telemetry.shutdown();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "crm failed");
            eprintln!("crm: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The `service.name` of the process in telemetry (unless
/// `OTEL_SERVICE_NAME` says otherwise): the service it runs, or `crm` for
/// the whole suite.
fn service_name(command: &Command) -> &'static str {
    match command {
        Command::Serve { service, .. } | Command::Migrate { service, .. } => service.name(),
        Command::Up { .. } | Command::Bench(_) => "crm",
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve { service, args } => {
            let settings = Settings::from_args(service, &args, true)?;
            let shutdown = Shutdown::on_signals();
            let running = crate::start(service, &settings, shutdown.clone()).await?;
            running.task.await??;
            Ok(())
        }
        Command::Up { args } => {
            let base = args.port.unwrap_or(ServiceKind::Gateway.default_port());
            let mut settings = Vec::new();
            for kind in ServiceKind::ALL {
                let mut s = Settings::from_args(kind, &args, false)?;
                s.listen.set_port(up_port(base, kind));
                settings.push(s);
            }
            let peers = up_peers(base);
            let shutdown = Shutdown::on_signals();
            let running = crate::up(
                |kind| {
                    let mut s =
                        settings.iter().find(|s| s.kind == kind).cloned().unwrap_or_else(|| unreachable_settings(kind));
                    s.peers = peers.clone();
                    s
                },
                shutdown.clone(),
            )
            .await?;
            tracing::info!(gateway = %format!("localhost:{base}"), "suite is up; try: grpcurl -plaintext localhost:{base} list");
            let mut failed = None;
            for (kind, r) in running {
                match r.task.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        shutdown.trigger();
                        failed.get_or_insert(anyhow::anyhow!("{}: {e}", kind.name()));
                    }
                    Err(e) => {
                        shutdown.trigger();
                        failed.get_or_insert(anyhow::anyhow!("{}: {e}", kind.name()));
                    }
                }
            }
            failed.map_or(Ok(()), Err)
        }
        Command::Migrate { service, args } => {
            let settings = Settings::from_args(service, &args, true)?;
            crate::migrate(service, &settings.database_url).await?;
            tracing::info!(service = service.name(), "migrations applied");
            Ok(())
        }
        Command::Bench(args) => crate::bench::run(args).await,
    }
}

/// Port of a service under `crm up` with the gateway on `base`.
fn up_port(base: u16, kind: ServiceKind) -> u16 {
    base.saturating_add(kind.default_port() - ServiceKind::Gateway.default_port())
}

fn up_peers(base: u16) -> crm_runtime::config::Peers {
    let at = |k| Some(format!("http://127.0.0.1:{}", up_port(base, k)));
    crm_runtime::config::Peers {
        identification: at(ServiceKind::Identification),
        interaction: at(ServiceKind::Interaction),
        differentiation: at(ServiceKind::Differentiation),
        personalization: at(ServiceKind::Personalization),
    }
}

fn unreachable_settings(kind: ServiceKind) -> Settings {
    // Every kind is in ServiceKind::ALL, for which settings were built.
    Settings::for_tests(kind, String::new())
}
