//! The `crm` binary's library: run any one service, or the whole suite in
//! one process (each service on its own port with its own store, talking
//! real gRPC over loopback), or a service's migrations; and the load
//! generator behind `crm bench`.
#![forbid(unsafe_code)]

pub mod bench;
pub mod cli;

use crm_runtime::{
    config::{ServiceKind, Settings},
    db::Store,
    server::{Running, ServeError, Shutdown},
};

/// Start one service.
pub async fn start(kind: ServiceKind, settings: &Settings, shutdown: Shutdown) -> Result<Running, ServeError> {
    match kind {
        ServiceKind::Identification => crm_identification::start(settings, shutdown).await,
        ServiceKind::Interaction => crm_interaction::start(settings, shutdown).await,
        ServiceKind::Differentiation => crm_differentiation::start(settings, shutdown).await,
        ServiceKind::Personalization => crm_personalization::start(settings, shutdown).await,
        ServiceKind::Gateway => crm_gateway::start(settings, shutdown).await,
    }
}

/// Start every service in dependency order (systems of record first); the
/// settings of each come from `settings_for`. On error, the ones started
/// are shut down.
pub async fn up(
    settings_for: impl Fn(ServiceKind) -> Settings,
    shutdown: Shutdown,
) -> Result<Vec<(ServiceKind, Running)>, ServeError> {
    let mut running = Vec::new();
    for kind in ServiceKind::ALL {
        match start(kind, &settings_for(kind), shutdown.clone()).await {
            Ok(r) => running.push((kind, r)),
            Err(e) => {
                shutdown.trigger();
                return Err(e);
            }
        }
    }
    Ok(running)
}

/// Run the migrations of a service's store at `database_url`.
pub async fn migrate(kind: ServiceKind, database_url: &str) -> Result<(), MigrateError> {
    let store = Store::connect(database_url, 2).await?;
    match kind {
        ServiceKind::Identification => {
            store.migrate::<crm_identification::migration::Migrator>().await?;
            // Blocking keys of kinds added since the profiles were stored.
            crm_identification::matcher::backfill(&store)
                .await
                .map_err(|e| sea_orm::DbErr::Custom(format!("indexing profiles: {e}")))?;
        }
        ServiceKind::Interaction => store.migrate::<crm_interaction::migration::Migrator>().await?,
        ServiceKind::Differentiation => store.migrate::<crm_differentiation::migration::Migrator>().await?,
        ServiceKind::Personalization => store.migrate::<crm_personalization::migration::Migrator>().await?,
        ServiceKind::Gateway => return Err(MigrateError::NoStore),
    }
    store.close().await?;
    Ok(())
}

/// Why migrations did not run.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The gateway keeps no store.
    #[error("the gateway has no store to migrate")]
    NoStore,
    /// The database refused.
    #[error("database: {0}")]
    Db(#[from] sea_orm::DbErr),
}
