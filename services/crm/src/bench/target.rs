//! What a benchmark runs against: a server already running on loopback, or
//! identification and interaction started in this process over a fresh
//! store (a temporary SQLite file, or a PostgreSQL database created for the
//! run and dropped after it).

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context, bail};
use crm_runtime::{
    config::{Peers, ServiceKind, Settings},
    server::{Running, ServeError, Shutdown},
};
use sea_orm::{ConnectionTrait, Database};
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

/// The store of an in-process target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// A SQLite file in a temporary directory.
    Sqlite,
    /// A new database on the PostgreSQL server of `--postgres-url`.
    Postgres,
}

impl StoreKind {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Sqlite => "sqlite",
            StoreKind::Postgres => "postgres",
        }
    }
}

/// The services an in-process target starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Services {
    /// Identification alone; the target is its address.
    Identification,
    /// Identification, and interaction following its feed; the target is
    /// interaction's address.
    IdentificationAndInteraction,
}

/// Options of an in-process target.
#[derive(Debug, Clone)]
pub struct InProcessOptions {
    /// Which store.
    pub store: StoreKind,
    /// The PostgreSQL server (no database path) for `StoreKind::Postgres`.
    pub postgres_url: String,
    /// Largest database pool of each service.
    pub db_max_connections: u32,
    /// Which services to start.
    pub services: Services,
}

/// The server under test.
pub enum Target {
    /// Already running at this address.
    External(String),
    /// Started here.
    InProcess(InProcess),
}

impl Target {
    /// Use the running server at `addr`, which must be on loopback.
    pub fn external(addr: &str) -> anyhow::Result<Self> {
        require_loopback(addr)?;
        Ok(Target::External(addr.trim_end_matches('/').to_owned()))
    }

    /// Its address, `http://host:port`.
    pub fn url(&self) -> String {
        match self {
            Target::External(addr) => addr.clone(),
            Target::InProcess(p) => format!("http://{}", p.addr),
        }
    }

    /// What it is, for reports: `external`, `in-process sqlite`, …
    pub fn describe(&self) -> String {
        match self {
            Target::External(_) => "external".to_owned(),
            Target::InProcess(p) => format!("in-process {}", p.store.name()),
        }
    }

    /// Stop what was started here and drop its databases.
    pub async fn stop(self) -> anyhow::Result<()> {
        match self {
            Target::External(_) => Ok(()),
            Target::InProcess(p) => p.stop().await,
        }
    }
}

/// `addr` must be `http://` on 127.0.0.1, `localhost` or `[::1]`: the load
/// generator only ever sends traffic to this machine's loopback.
pub fn require_loopback(addr: &str) -> anyhow::Result<()> {
    let uri: tonic::codegen::http::Uri = addr.parse().with_context(|| format!("invalid address {addr}"))?;
    if uri.scheme_str() != Some("http") {
        bail!("the address must start with http:// (got {addr})");
    }
    match uri.host() {
        Some("127.0.0.1" | "localhost" | "[::1]" | "::1") if uri.port_u16().is_some() => Ok(()),
        Some("127.0.0.1" | "localhost" | "[::1]" | "::1") => bail!("the address needs a port (got {addr})"),
        _ => bail!("crm bench only sends traffic to loopback (127.0.0.1, localhost, [::1]); got {addr}"),
    }
}

/// `count` HTTP/2 connections to `url`, each its own channel, connected
/// now. `timeout` bounds each unary call; streams pass `None`.
pub async fn connect(url: &str, count: usize, timeout: Option<Duration>) -> anyhow::Result<Vec<Channel>> {
    let mut endpoint = Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("invalid address {url}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    if let Some(t) = timeout {
        endpoint = endpoint.timeout(t);
    }
    let mut channels = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        channels.push(endpoint.connect().await.with_context(|| format!("cannot connect to {url}"))?);
    }
    Ok(channels)
}

/// Wait (at most `limit`) until the server's overall health is SERVING.
pub async fn wait_serving(url: &str, limit: Duration) -> anyhow::Result<()> {
    let channel = Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("invalid address {url}"))?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(5))
        .connect_lazy();
    let mut client = HealthClient::new(channel);
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let last = match client.check(HealthCheckRequest { service: String::new() }).await {
            Ok(r) if r.get_ref().status == ServingStatus::Serving as i32 => return Ok(()),
            Ok(r) => format!("status {:?}", r.get_ref().status()),
            Err(e) => format!("{}: {}", e.code(), e.message()),
        };
        if tokio::time::Instant::now() > deadline {
            bail!("{url} did not become SERVING within {limit:?} ({last})");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Identification and interaction running in this process, interaction
/// following identification's feed, each over its own new store.
pub struct InProcess {
    addr: SocketAddr,
    store: StoreKind,
    shutdown: Shutdown,
    tasks: Vec<JoinHandle<Result<(), ServeError>>>,
    databases: Vec<BenchDb>,
}

impl InProcess {
    /// Start both services on 127.0.0.1:0 and wait until interaction serves.
    pub async fn start(options: &InProcessOptions) -> anyhow::Result<Target> {
        let mut started = InProcess {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            store: options.store,
            shutdown: Shutdown::new(),
            tasks: Vec::new(),
            databases: Vec::new(),
        };
        match started.start_services(options).await {
            Ok(()) => Ok(Target::InProcess(started)),
            Err(e) => {
                if let Err(cleanup) = started.stop().await {
                    eprintln!("crm bench: cleanup after a failed start: {cleanup:#}");
                }
                Err(e)
            }
        }
    }

    async fn start_services(&mut self, options: &InProcessOptions) -> anyhow::Result<()> {
        let identification = self.start_one(ServiceKind::Identification, options, Peers::default()).await?;
        let identification_url = format!("http://{identification}");
        wait_serving(&identification_url, Duration::from_secs(60)).await?;
        if options.services == Services::Identification {
            self.addr = identification;
            return Ok(());
        }
        let peers = Peers { identification: Some(identification_url), ..Peers::default() };
        self.addr = self.start_one(ServiceKind::Interaction, options, peers).await?;
        wait_serving(&format!("http://{}", self.addr), Duration::from_secs(60)).await
    }

    async fn start_one(
        &mut self,
        kind: ServiceKind,
        options: &InProcessOptions,
        peers: Peers,
    ) -> anyhow::Result<SocketAddr> {
        let db = BenchDb::create(options.store, kind.name(), &options.postgres_url).await?;
        let mut settings = Settings::for_tests(kind, db.url.clone());
        settings.db_max_connections = options.db_max_connections.max(1);
        settings.peers = peers;
        // TrainMatcher over a base of millions takes longer than a
        // touchpoint's call.
        settings.request_timeout = settings.request_timeout.max(Duration::from_secs(600));
        self.databases.push(db);
        let running: Running = match kind {
            ServiceKind::Identification => crm_identification::start(&settings, self.shutdown.clone()).await,
            ServiceKind::Interaction => crm_interaction::start(&settings, self.shutdown.clone()).await,
            other => unreachable!("crm bench does not start {}", other.name()),
        }
        .with_context(|| format!("cannot start {}", kind.name()))?;
        self.tasks.push(running.task);
        Ok(running.local_addr)
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.trigger();
        for task in self.tasks {
            let _ = task.await;
        }
        let mut first_error = None;
        for db in self.databases {
            if let Err(e) = db.drop_now().await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// A store that exists for one run.
struct BenchDb {
    url: String,
    /// The admin URL and the database name, on PostgreSQL.
    postgres: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

impl BenchDb {
    async fn create(kind: StoreKind, label: &str, postgres_url: &str) -> anyhow::Result<BenchDb> {
        match kind {
            StoreKind::Sqlite => {
                let dir = tempfile::Builder::new().prefix("crm-bench-").tempdir().context("temporary directory")?;
                let url = crm_runtime::config::sqlite_url(dir.path(), label);
                Ok(BenchDb { url, postgres: None, _dir: Some(dir) })
            }
            StoreKind::Postgres => {
                let server = server_url(postgres_url);
                let name = format!("crm_bench_{label}_{}", crm_runtime::ids::new_id().replace('-', ""));
                let admin = format!("{server}/postgres");
                let conn = Database::connect(admin.clone()).await.with_context(|| format!("connect to {admin}"))?;
                conn.execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await
                    .with_context(|| format!("create database {name}"))?;
                let _ = conn.close().await;
                Ok(BenchDb { url: format!("{server}/{name}"), postgres: Some((admin, name)), _dir: None })
            }
        }
    }

    /// Drop the database (PostgreSQL) or delete the file (SQLite).
    async fn drop_now(mut self) -> anyhow::Result<()> {
        let Some((admin, name)) = self.postgres.take() else {
            return Ok(());
        };
        let conn = Database::connect(admin.clone()).await.with_context(|| format!("connect to {admin}"))?;
        conn.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await
            .with_context(|| format!("drop database {name}"))?;
        let _ = conn.close().await;
        Ok(())
    }
}

/// `postgres://user@host:port[/db]` → `postgres://user@host:port`.
fn server_url(url: &str) -> String {
    let url = url.trim_end_matches('/');
    match url.find("://") {
        Some(i) => match url[i + 3..].find('/') {
            Some(j) => url[..i + 3 + j].to_owned(),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_addresses_are_targets() {
        assert!(require_loopback("http://127.0.0.1:50054").is_ok());
        assert!(require_loopback("http://localhost:50054").is_ok());
        assert!(require_loopback("http://[::1]:50054").is_ok());
        assert!(require_loopback("http://10.0.0.1:50054").is_err());
        assert!(require_loopback("http://example.com:50054").is_err());
        assert!(require_loopback("https://127.0.0.1:50054").is_err());
        assert!(require_loopback("http://127.0.0.1").is_err());
        assert!(require_loopback("127.0.0.1:50054").is_err());
    }

    #[test]
    fn server_urls_lose_their_database() {
        assert_eq!(server_url("postgres://postgres@127.0.0.1:5432"), "postgres://postgres@127.0.0.1:5432");
        assert_eq!(server_url("postgres://postgres@127.0.0.1:5432/"), "postgres://postgres@127.0.0.1:5432");
        assert_eq!(server_url("postgres://u@h:1/x"), "postgres://u@h:1");
    }
}
