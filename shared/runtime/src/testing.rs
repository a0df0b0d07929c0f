//! Test stores: a fresh SQLite file per test, or — when
//! `CRM_TEST_DATABASE_URL` names a PostgreSQL server — a database with a
//! unique name, created for the test and dropped after it.

use sea_orm::{ConnectionTrait, Database};

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
    std::env::var("CRM_TEST_DATABASE_URL")
        .ok()
        .filter(|u| u.starts_with("postgres"))
}

impl TestDb {
    /// A new empty database for `label` (a service name).
    pub async fn new(label: &str) -> TestDb {
        match postgres_server() {
            Some(server) => {
                let server = server.trim_end_matches('/').to_owned();
                let name = format!("crm_test_{label}_{}", uuid::Uuid::now_v7().simple());
                let admin = admin_url(&server);
                let conn = Database::connect(admin.clone())
                    .await
                    .unwrap_or_else(|e| panic!("connect to {admin}: {e}"));
                conn.execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await
                    .unwrap_or_else(|e| panic!("create database: {e}"));
                let _ = conn.close().await;
                TestDb {
                    url: format!("{}/{name}", base_url(&server)),
                    postgres: Some((admin, name)),
                    _dir: None,
                }
            }
            None => {
                let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
                let url = crate::config::sqlite_url(dir.path(), label);
                TestDb {
                    url,
                    postgres: None,
                    _dir: Some(dir),
                }
            }
        }
    }

    /// Which kind of store the tests run on, for their output.
    pub fn kind(&self) -> &'static str {
        if self.postgres.is_some() {
            "postgres"
        } else {
            "sqlite"
        }
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
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async move {
                    if let Ok(conn) = Database::connect(admin).await {
                        let _ = conn
                            .execute_unprepared(&format!(
                                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                            ))
                            .await;
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
        assert_eq!(
            base_url("postgres://postgres@127.0.0.1:5432"),
            "postgres://postgres@127.0.0.1:5432"
        );
        assert_eq!(
            base_url("postgres://postgres@127.0.0.1:5432/x"),
            "postgres://postgres@127.0.0.1:5432"
        );
        assert_eq!(admin_url("postgres://u@h:1/x"), "postgres://u@h:1/postgres");
    }
}
