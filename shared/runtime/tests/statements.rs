//! Prepared statements against a real PostgreSQL server (when
//! `CRM_TEST_DATABASE_URL` is set; on SQLite there is nothing to check).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crm_runtime::{db::Store, testing::TestDb};
use sea_orm::ConnectionTrait;

/// A PostgreSQL connection keeps hundreds of statements prepared, not
/// sqlx's hundred: a resolve's combined write alone comes in about 240
/// shapes, and each one evicted is parsed and planned again on the
/// connection every write waits for.
#[tokio::test]
async fn a_postgres_connection_keeps_hundreds_of_statements_prepared() {
    let db = TestDb::new("statements").await;
    if !db.url.starts_with("postgres") {
        return;
    }
    // One connection: every statement below is prepared on it.
    let store = Store::connect(&db.url, 1).await.expect("connect");
    let shapes = 300_i64;
    for i in 0..shapes {
        let row = store.conn().query_one_raw(store.stmt(&format!("SELECT {i} + ?"), vec![1_i64.into()]));
        let sum: i64 = row.await.expect("select").expect("a row").try_get_by_index(0).expect("sum");
        assert_eq!(sum, i + 1);
    }
    let count = store.stmt("SELECT COUNT(*) FROM pg_prepared_statements", vec![]);
    let prepared: i64 =
        store.conn().query_one_raw(count).await.expect("count").expect("a row").try_get_by_index(0).unwrap();
    assert!(prepared >= shapes, "{prepared} statements prepared of {shapes}");
}
