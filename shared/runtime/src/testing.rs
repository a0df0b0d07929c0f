//! Test stores: a fresh SQLite file per test, or — when
//! `CRM_TEST_DATABASE_URL` names a PostgreSQL server — a database with a
//! unique name, created for the test and dropped after it.

use std::{future::Future, net::SocketAddr, time::Duration};

use sea_orm::{ConnectionTrait, Database};
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

use crate::{
    config::{ServiceKind, Settings},
    server::{Running, ServeError, Shutdown},
};

/// A service under test: running on an ephemeral port over a fresh store;
/// dropping it shuts the server down and drops the database.
#[derive(Debug)]
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its shutdown signal.
    pub shutdown: Shutdown,
    /// Its settings.
    pub settings: Settings,
    db: Option<TestDb>,
    task: Option<tokio::task::JoinHandle<Result<(), ServeError>>>,
}

impl TestServer {
    /// Start `kind` with `start` (the service crate's `start`) on port 0
    /// over a new test database, with `peers`, and wait until it serves.
    pub async fn start<F, Fut>(kind: ServiceKind, peers: crate::config::Peers, start: F) -> TestServer
    where
        F: FnOnce(Settings, Shutdown) -> Fut,
        Fut: Future<Output = Result<Running, ServeError>>,
    {
        let db = TestDb::new(kind.name()).await;
        let mut settings = Settings::for_tests(kind, db.url.clone());
        settings.peers = peers;
        Self::start_with(settings, db, start).await
    }

    /// Start with explicit settings over an existing database.
    pub async fn start_with<F, Fut>(settings: Settings, db: TestDb, start: F) -> TestServer
    where
        F: FnOnce(Settings, Shutdown) -> Fut,
        Fut: Future<Output = Result<Running, ServeError>>,
    {
        let shutdown = Shutdown::new();
        let running = start(settings.clone(), shutdown.clone()).await.unwrap_or_else(|e| panic!("start: {e}"));
        let server =
            TestServer { addr: running.local_addr, shutdown, settings, db: Some(db), task: Some(running.task) };
        wait_until_serving(server.channel()).await;
        server
    }

    /// Shut it down and wait until it has stopped. Returns its settings,
    /// bound to the port it had, and its database, to start it again.
    pub async fn stop(mut self) -> (Settings, TestDb) {
        self.shutdown.trigger();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        let mut settings = self.settings.clone();
        settings.listen = self.addr;
        match self.db.take() {
            Some(db) => (settings, db),
            None => unreachable!("a running test server always has its database"),
        }
    }

    /// Its database.
    pub fn db(&self) -> &TestDb {
        match &self.db {
            Some(db) => db,
            None => unreachable!("a running test server always has its database"),
        }
    }

    /// `http://addr`, for clients and peers.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A lazily connected channel to it.
    pub fn channel(&self) -> Channel {
        // A little longer than the server allows, so the server's answer
        // (or its timeout) is what the test sees.
        match crate::client::endpoint(&self.url(), Some(self.settings.request_timeout + Duration::from_secs(20))) {
            Ok(e) => e.connect_lazy(),
            Err(e) => panic!("channel: {e}"),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// Wait until the server's overall health is SERVING (at most 30 s).
pub async fn wait_until_serving(channel: Channel) {
    let mut client = HealthClient::new(channel);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client.check(HealthCheckRequest { service: String::new() }).await
            && r.into_inner().status == ServingStatus::Serving as i32
        {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("server did not become SERVING");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A database that exists for one test.
#[derive(Debug)]
pub struct TestDb {
    /// URL to connect the service under test to.
    pub url: String,
    postgres: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

/// The PostgreSQL server URL from `CRM_TEST_DATABASE_URL`, if set.
pub fn postgres_server() -> Option<String> {
    std::env::var("CRM_TEST_DATABASE_URL").ok().filter(|u| u.starts_with("postgres"))
}

impl TestDb {
    /// A new empty database for `label` (a service name).
    pub async fn new(label: &str) -> TestDb {
        match postgres_server() {
            Some(server) => {
                let server = server.trim_end_matches('/').to_owned();
                let name = format!("crm_test_{label}_{}", uuid::Uuid::now_v7().simple());
                let admin = admin_url(&server);
                let conn = Database::connect(admin.clone()).await.unwrap_or_else(|e| panic!("connect to {admin}: {e}"));
                conn.execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await
                    .unwrap_or_else(|e| panic!("create database: {e}"));
                let _ = conn.close().await;
                TestDb { url: format!("{}/{name}", base_url(&server)), postgres: Some((admin, name)), _dir: None }
            }
            None => {
                let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
                let url = crate::config::sqlite_url(dir.path(), label);
                TestDb { url, postgres: None, _dir: Some(dir) }
            }
        }
    }

    /// Which kind of store the tests run on, for their output.
    pub fn kind(&self) -> &'static str {
        if self.postgres.is_some() { "postgres" } else { "sqlite" }
    }
}

/// The server URL without a database path.
fn base_url(server: &str) -> String {
    // postgres://user@host:port[/db] → postgres://user@host:port
    match server.find("://") {
        Some(i) => match server[i + 3..].find('/') {
            Some(j) => server[..i + 3 + j].to_owned(),
            None => server.to_owned(),
        },
        None => server.to_owned(),
    }
}

fn admin_url(server: &str) -> String {
    format!("{}/postgres", base_url(server))
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((admin, name)) = self.postgres.take() else {
            return;
        };
        // Drop runs outside any async context we can rely on: use a thread
        // with its own runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
            if let Ok(rt) = rt {
                rt.block_on(async move {
                    if let Ok(conn) = Database::connect(admin).await {
                        let _ = conn.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
                        let _ = conn.close().await;
                    }
                });
            }
        })
        .join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_lose_their_database() {
        assert_eq!(base_url("postgres://postgres@127.0.0.1:5432"), "postgres://postgres@127.0.0.1:5432");
        assert_eq!(base_url("postgres://postgres@127.0.0.1:5432/x"), "postgres://postgres@127.0.0.1:5432");
        assert_eq!(admin_url("postgres://u@h:1/x"), "postgres://u@h:1/postgres");
    }
}
