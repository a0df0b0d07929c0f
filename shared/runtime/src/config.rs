//! Typed configuration: flags and `CRM_*` environment variables with
//! defaults, so that `crm up` needs none.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

/// The five services of the suite, with their default ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum ServiceKind {
    /// The value-chain gateway (50051).
    Gateway,
    /// Identify (50052).
    Identification,
    /// Differentiate (50053).
    Differentiation,
    /// Interact (50054).
    Interaction,
    /// Customize (50055).
    Personalization,
}

impl ServiceKind {
    /// Every service, in start order (systems of record first).
    pub const ALL: [ServiceKind; 5] = [
        ServiceKind::Identification,
        ServiceKind::Interaction,
        ServiceKind::Differentiation,
        ServiceKind::Personalization,
        ServiceKind::Gateway,
    ];

    /// Short name, used for files, databases and logs.
    pub fn name(self) -> &'static str {
        match self {
            ServiceKind::Gateway => "gateway",
            ServiceKind::Identification => "identification",
            ServiceKind::Differentiation => "differentiation",
            ServiceKind::Interaction => "interaction",
            ServiceKind::Personalization => "personalization",
        }
    }

    /// Default gRPC port.
    pub fn default_port(self) -> u16 {
        match self {
            ServiceKind::Gateway => 50051,
            ServiceKind::Identification => 50052,
            ServiceKind::Differentiation => 50053,
            ServiceKind::Interaction => 50054,
            ServiceKind::Personalization => 50055,
        }
    }
}

/// Kept records at which identification first refits its matcher as the
/// base grows (`CRM_MATCHER_TRAIN_FROM_RECORDS`): enough for name
/// frequencies to tell, few enough that a bulk load has them early.
pub const DEFAULT_MATCHER_TRAIN_FROM_RECORDS: u64 = 10_000;

/// Settings common to every server, from flags or `CRM_*` variables.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Host to bind (`crm up` binds 127.0.0.1 unless this is set).
    #[arg(long, env = "CRM_HOST")]
    pub host: Option<String>,
    /// Port to bind (`crm serve` only; default: the service's port).
    #[arg(long, env = "CRM_PORT")]
    pub port: Option<u16>,
    /// Database URL (`sqlite://…` or `postgres://…`); `crm serve` only.
    /// Default: a SQLite file `<data dir>/<service>.db`.
    #[arg(long, env = "CRM_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Directory of the default SQLite files.
    #[arg(long, env = "CRM_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Longest time a request may run, in milliseconds.
    #[arg(long, env = "CRM_REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    pub request_timeout_ms: u64,
    /// Largest accepted or sent message, in bytes.
    #[arg(long, env = "CRM_MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_message_bytes: usize,
    /// How long shutdown waits for in-flight calls, in milliseconds.
    #[arg(long, env = "CRM_DRAIN_TIMEOUT_MS", default_value_t = 10_000)]
    pub drain_timeout_ms: u64,
    /// Largest database connection pool (PostgreSQL; SQLite uses fewer).
    #[arg(long, env = "CRM_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,
    /// Region (ISO 3166-1 alpha-2) for phone numbers written without a
    /// country code.
    #[arg(long, env = "CRM_DEFAULT_REGION", default_value = "ES")]
    pub default_region: String,
    /// Seconds between scheduled retrainings of the identity matcher on the
    /// stored profiles (identification; 0: only when TrainMatcher is called).
    #[arg(long, env = "CRM_MATCHER_TRAIN_SECS", default_value_t = 86_400)]
    pub matcher_train_secs: u64,
    /// Kept records at which identification first refits its matcher's `u`,
    /// name frequencies and prior as the base grows, and again each time
    /// they double (0: not on growth; nor when CRM_MATCHER_TRAIN_SECS is 0).
    #[arg(long, env = "CRM_MATCHER_TRAIN_FROM_RECORDS", default_value_t = DEFAULT_MATCHER_TRAIN_FROM_RECORDS)]
    pub matcher_train_from_records: u64,
    /// Address of identification, for services that call or follow it.
    #[arg(long, env = "CRM_IDENTIFICATION_ADDR")]
    pub identification_addr: Option<String>,
    /// Address of interaction, for services that call or follow it.
    #[arg(long, env = "CRM_INTERACTION_ADDR")]
    pub interaction_addr: Option<String>,
    /// Address of differentiation, for the gateway.
    #[arg(long, env = "CRM_DIFFERENTIATION_ADDR")]
    pub differentiation_addr: Option<String>,
    /// Address of personalization, for the gateway.
    #[arg(long, env = "CRM_PERSONALIZATION_ADDR")]
    pub personalization_addr: Option<String>,
}

/// Addresses of the other services (`http://host:port`).
#[derive(Debug, Clone, Default)]
pub struct Peers {
    /// identification.
    pub identification: Option<String>,
    /// interaction.
    pub interaction: Option<String>,
    /// differentiation.
    pub differentiation: Option<String>,
    /// personalization.
    pub personalization: Option<String>,
}

impl Peers {
    /// The peers of a suite running on localhost at the default ports.
    pub fn localhost() -> Self {
        let at = |k: ServiceKind| Some(format!("http://127.0.0.1:{}", k.default_port()));
        Peers {
            identification: at(ServiceKind::Identification),
            interaction: at(ServiceKind::Interaction),
            differentiation: at(ServiceKind::Differentiation),
            personalization: at(ServiceKind::Personalization),
        }
    }

    /// The address of a peer, or a configuration error naming its variable.
    pub fn require(&self, kind: ServiceKind) -> Result<String, ConfigError> {
        let addr = match kind {
            ServiceKind::Identification => &self.identification,
            ServiceKind::Interaction => &self.interaction,
            ServiceKind::Differentiation => &self.differentiation,
            ServiceKind::Personalization => &self.personalization,
            ServiceKind::Gateway => &None,
        };
        addr.clone()
            .ok_or_else(|| ConfigError::MissingPeer { variable: format!("CRM_{}_ADDR", kind.name().to_uppercase()) })
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A required peer address is not set.
    #[error("{variable} must be set")]
    MissingPeer {
        /// The variable to set.
        variable: String,
    },
    /// A value does not parse.
    #[error("invalid {what}: {detail}")]
    Invalid {
        /// The setting.
        what: &'static str,
        /// Why.
        detail: String,
    },
}

/// Everything one server needs to run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Which service.
    pub kind: ServiceKind,
    /// Address to bind; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Database URL.
    pub database_url: String,
    /// Longest request.
    pub request_timeout: Duration,
    /// Largest message.
    pub max_message_bytes: usize,
    /// Shutdown drain time.
    pub drain_timeout: Duration,
    /// Largest pool.
    pub db_max_connections: u32,
    /// The other services.
    pub peers: Peers,
    /// Region for phone numbers without a country code.
    pub default_region: String,
    /// How often identification retrains its matcher (`None`: only on
    /// request).
    pub matcher_train_every: Option<Duration>,
    /// Kept records at which identification first refits its matcher's `u`,
    /// name frequencies and prior, then each time they double (`None`: not
    /// on growth).
    pub matcher_train_from_records: Option<u64>,
}

impl Settings {
    /// Settings for tests and embedding: port 0 on loopback, the given
    /// database, defaults for the rest.
    pub fn for_tests(kind: ServiceKind, database_url: impl Into<String>) -> Self {
        Settings {
            kind,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            database_url: database_url.into(),
            request_timeout: Duration::from_secs(10),
            max_message_bytes: 4 * 1024 * 1024,
            drain_timeout: Duration::from_secs(5),
            db_max_connections: 8,
            peers: Peers::default(),
            default_region: "ES".to_owned(),
            matcher_train_every: None,
            matcher_train_from_records: None,
        }
    }

    /// Settings of one service from the command line and environment.
    /// `single` is true for `crm serve` (whose host, port and database URL
    /// apply to this one service) and false for `crm up`.
    pub fn from_args(kind: ServiceKind, args: &ServerArgs, single: bool) -> Result<Self, ConfigError> {
        let default_host = if single { "0.0.0.0" } else { "127.0.0.1" };
        let host = args.host.as_deref().unwrap_or(default_host);
        let port = if single { args.port.unwrap_or(kind.default_port()) } else { kind.default_port() };
        let listen: SocketAddr = format!("{host}:{port}")
            .parse()
            .map_err(|e| ConfigError::Invalid { what: "CRM_HOST/CRM_PORT", detail: format!("{e}") })?;
        let database_url = match (&args.database_url, single) {
            (Some(url), true) => url.clone(),
            _ => sqlite_url(&args.data_dir, kind.name()),
        };
        let mut peers = if single { Peers::default() } else { Peers::localhost() };
        if single {
            peers.identification = args.identification_addr.clone();
            peers.interaction = args.interaction_addr.clone();
            peers.differentiation = args.differentiation_addr.clone();
            peers.personalization = args.personalization_addr.clone();
        }
        Ok(Settings {
            kind,
            listen,
            database_url,
            request_timeout: Duration::from_millis(args.request_timeout_ms),
            max_message_bytes: args.max_message_bytes,
            drain_timeout: Duration::from_millis(args.drain_timeout_ms),
            db_max_connections: args.db_max_connections.max(1),
            peers,
            default_region: args.default_region.clone(),
            matcher_train_every: (args.matcher_train_secs > 0).then(|| Duration::from_secs(args.matcher_train_secs)),
            // CRM_MATCHER_TRAIN_SECS=0 means only on request (a rolling
            // upgrade relies on it): growth does not retrain either.
            matcher_train_from_records: (args.matcher_train_secs > 0 && args.matcher_train_from_records > 0)
                .then_some(args.matcher_train_from_records),
        })
    }
}

/// The URL of a SQLite file `<dir>/<name>.db`, created if missing.
pub fn sqlite_url(dir: &std::path::Path, name: &str) -> String {
    format!("sqlite://{}?mode=rwc", dir.join(format!("{name}.db")).display())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ServerArgs,
    }

    fn settings(flags: &[&str]) -> Settings {
        let cli = Cli::try_parse_from(std::iter::once("crm").chain(flags.iter().copied())).unwrap();
        Settings::from_args(ServiceKind::Identification, &cli.args, true).unwrap()
    }

    #[test]
    fn the_matcher_retrains_on_growth_unless_training_is_left_to_operators() {
        let on = settings(&["--matcher-train-secs", "86400", "--matcher-train-from-records", "10000"]);
        assert_eq!(on.matcher_train_from_records, Some(10_000));
        let growth_off = settings(&["--matcher-train-secs", "86400", "--matcher-train-from-records", "0"]);
        assert_eq!(growth_off.matcher_train_from_records, None);
        assert!(growth_off.matcher_train_every.is_some());
        // Only on request: no schedule and no growth (a rolling upgrade).
        let on_request = settings(&["--matcher-train-secs", "0", "--matcher-train-from-records", "10000"]);
        assert_eq!(on_request.matcher_train_from_records, None);
        assert_eq!(on_request.matcher_train_every, None);
    }
}
