//! The schema's latest change: on SQLite the tables a purchase writes are
//! rebuilt keyed by their primary keys (`WITHOUT ROWID`), keeping their
//! rows and indexes, and back again; on PostgreSQL nothing changes.

use crm_differentiation::migration::Migrator;
use crm_runtime::{db::Store, testing::TestDb};
use sea_orm::{ConnectionTrait, DatabaseBackend};
use sea_orm_migration::MigratorTrait;

/// The orders, and the customers by tier as the tier index serves them.
async fn contents(store: &Store) -> (Vec<(String, String, i64)>, Vec<String>) {
    let c = store.conn();
    let orders = c
        .query_all_raw(store.stmt("SELECT order_id, customer_id, revenue_minor FROM orders ORDER BY order_id", vec![]))
        .await
        .expect("orders")
        .iter()
        .map(|r| {
            (
                r.try_get_by_index(0).expect("id"),
                r.try_get_by_index(1).expect("customer"),
                r.try_get_by_index(2).expect("revenue"),
            )
        })
        .collect();
    let by_tier = c
        .query_all_raw(store.stmt(
            "SELECT customer_id FROM customer_values WHERE tier = 1 ORDER BY real_value_minor DESC, customer_id",
            vec![],
        ))
        .await
        .expect("values")
        .iter()
        .map(|r| r.try_get_by_index(0).expect("customer"))
        .collect();
    (orders, by_tier)
}

/// Whether SQLite keeps `table` without rowids.
async fn without_rowid(store: &Store, table: &str) -> bool {
    let row = store
        .conn()
        .query_one_raw(
            store.stmt("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", vec![table.into()]),
        )
        .await
        .expect("schema")
        .expect("table");
    row.try_get_by_index::<String>(0).expect("sql").ends_with("WITHOUT ROWID")
}

/// The named indexes of `table`.
async fn indexes(store: &Store, table: &str) -> Vec<String> {
    store
        .conn()
        .query_all_raw(store.stmt(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL ORDER BY name",
            vec![table.into()],
        ))
        .await
        .expect("indexes")
        .iter()
        .map(|r| r.try_get_by_index(0).expect("name"))
        .collect()
}

#[tokio::test]
async fn the_purchase_tables_are_rebuilt_keyed_with_their_rows_and_back() {
    let db = TestDb::new("differentiation").await;
    let store = Store::connect(&db.url, 2).await.expect("connect");
    let all = Migrator::migrations().len() as u32;
    Migrator::up(store.conn(), Some(all - 1)).await.expect("all but the last");
    for (order, customer, revenue, tier) in [("o2", "c1", 500_i64, 1), ("o1", "c2", 900, 1), ("o3", "c3", 100, 2)] {
        store
            .conn()
            .execute_raw(store.stmt(
                "INSERT INTO orders (order_id, customer_id, day, occur_us, currency_code, revenue_minor, cost_minor) \
                 VALUES (?, ?, 1, 1, 'EUR', ?, 0)",
                vec![order.into(), customer.into(), revenue.into()],
            ))
            .await
            .expect("order");
        store
            .conn()
            .execute_raw(store.stmt(
                "INSERT INTO customer_values (customer_id, currency_code, historical_margin_minor, clv_minor, \
                 referral_value_minor, referred_count, real_value_minor, cost_to_serve_minor, net_value_minor, \
                 strategic_value_minor, rfm_recency, rfm_frequency, rfm_monetary, tier, tier_reason, policy_version, updated_us) \
                 VALUES (?, 'EUR', ?, 0, 0, 0, ?, 0, ?, 0, 0, 0, 0, ?, '', 1, 0)",
                vec![customer.into(), revenue.into(), revenue.into(), revenue.into(), tier.into()],
            ))
            .await
            .expect("value");
    }
    let before = contents(&store).await;
    assert_eq!(before.1, vec!["c2".to_owned(), "c1".to_owned()]);
    let sqlite = store.backend() == DatabaseBackend::Sqlite;
    let value_indexes = if sqlite { indexes(&store, "customer_values").await } else { vec![] };

    Migrator::up(store.conn(), None).await.expect("the last");
    assert_eq!(contents(&store).await, before, "every row kept");
    if sqlite {
        for table in ["orders", "customer_values", "customer_summaries", "purchase_days"] {
            assert!(without_rowid(&store, table).await, "{table} keyed");
        }
        assert_eq!(indexes(&store, "customer_values").await, value_indexes, "the indexes are back");
        assert_eq!(indexes(&store, "orders").await, vec!["orders_by_customer".to_owned()]);
    }

    Migrator::down(store.conn(), Some(1)).await.expect("down");
    assert_eq!(contents(&store).await, before);
    if sqlite {
        assert!(!without_rowid(&store, "orders").await, "a rowid table again");
        assert_eq!(indexes(&store, "customer_values").await, value_indexes);
    }
    Migrator::up(store.conn(), None).await.expect("up again");
    assert_eq!(contents(&store).await, before);
}
