//! The schema: contacts recorded before the purpose column existed get
//! their purpose, and the latest migrations go down and up again.

use crm_interaction::migration::Migrator;
use crm_runtime::{db::Store, testing::TestDb};
use prost::Message;
use sea_orm::ConnectionTrait;
use sea_orm_migration::MigratorTrait;

use crate::*;

#[tokio::test]
async fn migrations_backfill_the_purpose_and_go_down_and_up_again() {
    let db = TestDb::new("interaction").await;
    let store = Store::connect(&db.url, 2).await.expect("connect");
    Migrator::up(store.conn(), Some(2)).await.expect("the first two migrations");
    let contact = pb::Interaction {
        id: new_id(),
        customer_id: new_id(),
        channel: Channel::Email as i32,
        direction: pb::Direction::Outbound as i32,
        r#type: pb::InteractionType::CampaignContact as i32,
        purpose: pb::Purpose::Marketing as i32,
        sequence: 1,
        ..Default::default()
    };
    store
        .conn()
        .execute_raw(store.stmt(
            "INSERT INTO interactions (id, customer_id, channel, direction, kind, occurred_at_us, thread_id, order_id, sequence, body) \
             VALUES (?, ?, ?, ?, ?, ?, '', NULL, 1, ?)",
            vec![
                contact.id.clone().into(),
                contact.customer_id.clone().into(),
                contact.channel.into(),
                contact.direction.into(),
                contact.r#type.into(),
                0_i64.into(),
                contact.encode_to_vec().into(),
            ],
        ))
        .await
        .expect("an interaction recorded before the purpose column");

    Migrator::up(store.conn(), None).await.expect("the rest");
    let purpose = |store: &Store| {
        let stmt = store.stmt("SELECT purpose FROM interactions WHERE id = ?", vec![contact.id.clone().into()]);
        let conn = store.conn().clone();
        async move {
            conn.query_one_raw(stmt).await.expect("query").expect("row").try_get_by_index::<i32>(0).expect("purpose")
        }
    };
    assert_eq!(purpose(&store).await, pb::Purpose::Marketing as i32);

    let count = |table: &'static str| {
        let stmt = store.stmt(&format!("SELECT COUNT(*) FROM {table}"), vec![]);
        let conn = store.conn().clone();
        async move { conn.query_one_raw(stmt).await }
    };
    let feed = |store: &Store| {
        let conn = store.conn().clone();
        async move {
            crm_runtime::eventlog::read_after(&conn, 0, 100)
                .await
                .expect("events")
                .into_iter()
                .map(|e| (e.sequence, e.stream_key, e.payload))
                .collect::<Vec<_>>()
        }
    };
    // Events appended before the event log is rebuilt keep their sequences.
    Migrator::down(store.conn(), Some(1)).await.expect("down the rowid sequence");
    let mut tx = store.begin_write().await.expect("begin");
    for customer in ["a", "b", "a"] {
        let event = pb::InteractionEvent { customer_id: customer.into(), ..Default::default() };
        tx.append(customer, &event).await.expect("append");
    }
    tx.commit().await.expect("commit");
    let before = feed(&store).await;
    assert_eq!(before.iter().map(|e| e.0).collect::<Vec<_>>(), vec![1, 2, 3]);
    Migrator::up(store.conn(), None).await.expect("up the rowid sequence");
    assert_eq!(feed(&store).await, before, "the same events under the same sequences");
    let a = crm_runtime::eventlog::read_stream(store.conn(), "a", 0, 10).await.expect("stream");
    assert_eq!(a.iter().map(|e| e.sequence).collect::<Vec<_>>(), vec![1, 3], "the stream index is back");
    Migrator::down(store.conn(), Some(1)).await.expect("down the rowid sequence");
    assert_eq!(feed(&store).await, before, "and down again");

    Migrator::down(store.conn(), Some(1)).await.expect("down the event-log trace context");
    assert!(count("event_log WHERE traceparent IS NULL").await.is_err(), "the trace columns are gone");
    assert!(count("event_log").await.is_ok(), "the event log stays");
    Migrator::down(store.conn(), Some(1)).await.expect("down the lifecycle tables");
    assert!(count("merge_facts").await.is_err(), "the merge ledger is gone");
    assert!(count("consents").await.is_ok(), "the facts stay");
    Migrator::down(store.conn(), Some(1)).await.expect("down the fact tables");
    assert!(count("consents").await.is_err(), "the consent table is gone");
    let kept = store
        .conn()
        .query_one_raw(store.stmt("SELECT COUNT(*) FROM interactions", vec![]))
        .await
        .expect("interactions stay")
        .expect("row")
        .try_get_by_index::<i64>(0)
        .expect("count");
    assert_eq!(kept, 1);

    Migrator::up(store.conn(), None).await.expect("up again");
    assert_eq!(purpose(&store).await, pb::Purpose::Marketing as i32);
    store.close().await.expect("close");
}
