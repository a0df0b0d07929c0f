//! The group commit's connection on a real PostgreSQL server (when
//! `CRM_TEST_DATABASE_URL` is set; on SQLite the writer is one connection
//! of its own already).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use crm_runtime::{db::Store, testing::TestDb};
use sea_orm::{ConnectionTrait, DatabaseBackend, Statement};

/// The server process that runs a group-committed write.
async fn writer_pid(store: &Store) -> i32 {
    let write = store.group_commit(|tx| {
        Box::pin(async move {
            let pid = Statement::from_string(DatabaseBackend::Postgres, "SELECT pg_backend_pid()");
            let row = tx.query_one_raw(pid).await?.expect("a row");
            Ok(row.try_get_by_index::<i32>(0)?)
        })
    });
    tokio::time::timeout(Duration::from_secs(3), write).await.expect("the write waited for the pool").expect("write")
}

/// On PostgreSQL the group commit's batches have a connection of their
/// own: they run while reads hold every connection of the pool (resolves
/// read beside the writer), and always on one server process, which keeps
/// their statements prepared.
#[tokio::test]
async fn group_commits_on_postgres_have_a_connection_of_their_own() {
    let db = TestDb::new("writer").await;
    if !db.url.starts_with("postgres") {
        return;
    }
    let store = Store::connect(&db.url, 2).await.expect("connect");
    let reads = (store.begin_read().await.expect("read"), store.begin_read().await.expect("read"));
    let first = writer_pid(&store).await;
    let second = writer_pid(&store).await;
    assert_eq!(first, second, "one connection");
    drop(reads);
    store.close().await.expect("close");
}
