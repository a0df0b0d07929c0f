//! A write's deferred statements against a real store (SQLite, or
//! PostgreSQL when `CRM_TEST_DATABASE_URL` is set).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crm_runtime::{db::Store, migration::RuntimeMigrator, testing::TestDb};
use sea_orm::{ConnectionTrait, DbErr, Value};

async fn store(db: &TestDb) -> Store {
    let store = Store::connect(&db.url, 4).await.expect("connect");
    store.migrate::<RuntimeMigrator>().await.expect("migrate");
    for sql in [
        "CREATE TABLE parents (id VARCHAR(64) PRIMARY KEY, n BIGINT NOT NULL)",
        "CREATE TABLE children (id VARCHAR(64) PRIMARY KEY, parent VARCHAR(64) NOT NULL REFERENCES parents (id))",
        "INSERT INTO parents (id, n) VALUES ('kept', 1), ('gone', 2)",
    ] {
        store.conn().execute_unprepared(sql).await.expect("set up");
    }
    store
}

async fn rows(store: &Store, sql: &str) -> Vec<(String, i64)> {
    let rows = store.conn().query_all_raw(store.stmt(sql, vec![])).await.expect("read");
    rows.iter().map(|r| (r.try_get_by_index(0).unwrap(), r.try_get_by_index(1).unwrap())).collect()
}

/// Defer `statements` (SQL with `?` and its values) in one write, declare
/// them independent, and commit.
async fn write_independently(store: &Store, statements: &[(&str, Vec<Value>)]) -> Result<(), DbErr> {
    let mut tx = store.begin_write().await?;
    let mark = tx.deferred_mark();
    for (sql, values) in statements {
        tx.defer(tx.stmt(sql, values.clone()));
    }
    tx.combine_deferred_since(mark);
    tx.commit().await
}

/// Statements declared independent (on PostgreSQL one statement) have the
/// effects of each: a child inserted beside its parent satisfies its
/// foreign key, and a placeholder-like text in a literal stays text.
#[tokio::test]
async fn independent_deferred_statements_have_each_ones_effect() {
    let db = TestDb::new("runtime").await;
    let store = store(&db).await;
    write_independently(
        &store,
        &[
            ("INSERT INTO parents (id, n) VALUES (?, ?)", vec!["new".into(), 3.into()]),
            ("INSERT INTO children (id, parent) VALUES (?, ?)", vec!["child".into(), "new".into()]),
            ("UPDATE parents SET n = ? WHERE id = ?", vec![10.into(), "kept".into()]),
            ("DELETE FROM parents WHERE id = ?", vec!["gone".into()]),
            ("INSERT INTO parents (id, n) VALUES ('$1', ?)", vec![4.into()]),
        ],
    )
    .await
    .expect("write");
    assert_eq!(
        rows(&store, "SELECT id, n FROM parents ORDER BY id").await,
        vec![("$1".into(), 4), ("kept".into(), 10), ("new".into(), 3)]
    );
    assert_eq!(rows(&store, "SELECT id, CAST(0 AS BIGINT) FROM children").await, vec![("child".into(), 0)]);
    store.close().await.expect("close");
}

/// A statement that fails fails the write whether combined or not, and
/// nothing of the write stays.
#[tokio::test]
async fn a_failing_independent_statement_fails_the_write() {
    let db = TestDb::new("runtime").await;
    let store = store(&db).await;
    let written = write_independently(
        &store,
        &[
            ("UPDATE parents SET n = ? WHERE id = ?", vec![10.into(), "kept".into()]),
            ("INSERT INTO parents (id, n) VALUES (?, ?)", vec!["gone".into(), 5.into()]),
        ],
    )
    .await;
    assert!(written.is_err(), "a duplicate key must fail the write");
    assert_eq!(
        rows(&store, "SELECT id, n FROM parents ORDER BY id").await,
        vec![("gone".into(), 2), ("kept".into(), 1)]
    );
    store.close().await.expect("close");
}

/// Statements that ran before the declaration are not combined with the
/// ones queued after them: here an update that must see the insert before
/// it (as one statement it would not, and change nothing).
#[tokio::test]
async fn statements_queued_after_a_flush_are_not_combined_with_a_mark_from_before_it() {
    let db = TestDb::new("runtime").await;
    let store = store(&db).await;
    let mut tx = store.begin_write().await.expect("begin");
    let mark = tx.deferred_mark();
    tx.defer(tx.stmt("UPDATE parents SET n = ? WHERE id = ?", vec![7.into(), "kept".into()]));
    tx.flush_deferred().await.expect("flush");
    tx.defer(tx.stmt("INSERT INTO parents (id, n) VALUES (?, ?)", vec!["late".into(), 1.into()]));
    tx.defer(tx.stmt("UPDATE parents SET n = ? WHERE id = ?", vec![8.into(), "late".into()]));
    tx.combine_deferred_since(mark);
    tx.commit().await.expect("commit");
    assert_eq!(
        rows(&store, "SELECT id, n FROM parents ORDER BY id").await,
        vec![("gone".into(), 2), ("kept".into(), 7), ("late".into(), 8)]
    );
    store.close().await.expect("close");
}
