//! The event log, feed and consumer against a real store (SQLite, or
//! PostgreSQL when `CRM_TEST_DATABASE_URL` is set).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use crm_proto::identification::v1::{ProfileCreated, ProfileEvent, profile_event::Kind};
use crm_runtime::{
    consumer::{Applied, Consumer, LocalFeed, Projection, apply_once, load_cursor},
    db::{Store, WriteTxn},
    error::RuntimeError,
    eventlog,
    feed::{self, FeedEvent},
    idempotency::{self, Claim},
    migration::RuntimeMigrator,
    server::Shutdown,
    telemetry::{self, LogFormat},
    testing::TestDb,
};
use futures::{StreamExt, future::BoxFuture};
use opentelemetry::trace::TraceContextExt;
use sea_orm::ConnectionTrait;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

async fn store(db: &TestDb) -> Store {
    let store = Store::connect(&db.url, 8).await.expect("connect");
    store.migrate::<RuntimeMigrator>().await.expect("migrate");
    store
}

fn event(profile: &str) -> ProfileEvent {
    ProfileEvent {
        profile_id: profile.to_owned(),
        kind: Some(Kind::ProfileCreated(ProfileCreated::default())),
        ..Default::default()
    }
}

async fn append(store: &Store, profile: &str) -> i64 {
    let mut tx = store.begin_write().await.expect("begin");
    let seq = tx.append(profile, &event(profile)).await.expect("append");
    tx.commit().await.expect("commit");
    seq
}

#[tokio::test]
async fn sequences_are_gap_free_under_concurrent_appends() {
    let db = TestDb::new("runtime").await;
    let store = store(&db).await;
    let mut tasks = Vec::new();
    for w in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..40 {
                let mut tx = store.begin_write().await.expect("begin");
                tx.append(&format!("w{w}"), &event("x")).await.expect("append");
                // Every fifth transaction rolls back: its number must be reused.
                if i % 5 == 4 {
                    tx.rollback().await.expect("rollback");
                } else {
                    tx.commit().await.expect("commit");
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let all = eventlog::read_after(store.conn(), 0, 10_000).await.expect("read");
    let seqs: Vec<i64> = all.iter().map(|e| e.sequence).collect();
    assert_eq!(seqs, (1..=8 * 32).collect::<Vec<i64>>(), "on {}", db.kind());
    assert_eq!(eventlog::head(store.conn()).await.expect("head"), 8 * 32);
}

#[tokio::test]
async fn events_keep_and_deliver_the_trace_context_of_their_producer() {
    let telemetry = telemetry::init_with(LogFormat::Json, "event-log-test", false).expect("telemetry");
    let db = TestDb::new("runtime").await;
    let store = store(&db).await;
    let producer = tracing::info_span!("produce");
    let expected = producer.in_scope(telemetry::current_trace_context);
    let expected = expected.expect("a span has a trace context when telemetry is installed");
    let traced = append(&store, "p-traced").instrument(producer.clone()).await;
    let untraced = append(&store, "p-untraced").await;

    let all = eventlog::read_after(store.conn(), 0, 10).await.expect("read");
    assert_eq!(all.iter().map(|e| e.sequence).collect::<Vec<_>>(), vec![traced, untraced]);
    assert_eq!(all[0].trace_context.as_ref(), Some(&expected), "stored with the producer's context");
    assert_eq!(all[1].trace_context, None, "no span, no context");
    let linked = telemetry::span_context(&expected).expect("a valid producer span");
    assert_eq!(linked.span_id(), producer.context().span().span_context().span_id());

    let shutdown = Shutdown::new();
    let mut deliveries = Box::pin(feed::deliveries::<ProfileEvent>(store.clone(), 0, shutdown.clone()));
    let first = deliveries.next().await.expect("first").expect("ok");
    assert_eq!((first.event.sequence, first.trace_context), (traced, Some(expected)));
    let second = deliveries.next().await.expect("second").expect("ok");
    assert_eq!((second.event.sequence, second.trace_context), (untraced, None));
    shutdown.trigger();
    telemetry.shutdown();
}

#[tokio::test]
async fn subscribe_replays_then_tails_live() {
    let db = TestDb::new("runtime").await;
    let store = store(&db).await;
    for p in ["a", "b", "c", "d", "e"] {
        append(&store, p).await;
    }
    let shutdown = Shutdown::new();
    let mut stream = Box::pin(feed::subscribe::<ProfileEvent>(store.clone(), 2, shutdown.clone()));
    for expected in 3..=5 {
        let e = stream.next().await.expect("event").expect("ok");
        assert_eq!(e.sequence, expected);
    }
    // Nothing more yet: the tail waits.
    assert!(tokio::time::timeout(Duration::from_millis(100), stream.next()).await.is_err());
    append(&store, "f").await;
    append(&store, "g").await;
    let f =
        tokio::time::timeout(Duration::from_secs(5), stream.next()).await.expect("tail").expect("event").expect("ok");
    assert_eq!((f.sequence, f.profile_id.as_str()), (6, "f"));
    let g = stream.next().await.expect("event").expect("ok");
    assert_eq!(g.sequence, 7);
    shutdown.trigger();
    assert!(tokio::time::timeout(Duration::from_secs(5), stream.next()).await.expect("ends").is_none());
}

/// Counts applied events in a table, in the cursor's transaction.
struct Counter {
    fail_on: Mutex<Option<i64>>,
}

impl Projection<ProfileEvent> for Counter {
    fn apply<'a>(&'a self, tx: &'a mut WriteTxn, event: &'a ProfileEvent) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            tx.execute_raw(tx.stmt("INSERT INTO applied (sequence) VALUES (?)", vec![event.sequence().into()])).await?;
            if *self.fail_on.lock().expect("lock") == Some(event.sequence) {
                return Err(RuntimeError::Internal("injected failure".into()));
            }
            Ok(())
        })
    }
}

async fn applied(store: &Store) -> Vec<i64> {
    let rows = store
        .conn()
        .query_all_raw(store.stmt("SELECT sequence FROM applied ORDER BY sequence", vec![]))
        .await
        .expect("rows");
    rows.iter().map(|r| r.try_get_by_index::<i64>(0).expect("seq")).collect()
}

#[tokio::test]
async fn apply_once_skips_duplicates_refuses_gaps_and_rolls_back_failures() {
    let db = TestDb::new("runtime").await;
    let store = store(&db).await;
    store.conn().execute_unprepared("CREATE TABLE applied (sequence BIGINT PRIMARY KEY)").await.expect("table");
    let counter = Counter { fail_on: Mutex::new(Some(3)) };
    let ev = |seq: i64| {
        let mut e = event("p");
        e.sequence = seq;
        e
    };
    assert_eq!(apply_once(&store, "src", &counter, &ev(1)).await.expect("1"), Applied::Applied);
    assert_eq!(apply_once(&store, "src", &counter, &ev(2)).await.expect("2"), Applied::Applied);
    assert_eq!(apply_once(&store, "src", &counter, &ev(2)).await.expect("2 again"), Applied::Duplicate);
    assert!(apply_once(&store, "src", &counter, &ev(4)).await.is_err(), "a gap is refused");
    assert!(apply_once(&store, "src", &counter, &ev(3)).await.is_err(), "injected failure");
    assert_eq!(applied(&store).await, vec![1, 2], "the failed apply left nothing behind");
    assert_eq!(load_cursor(store.conn(), "src").await.expect("cursor"), 2);
    *counter.fail_on.lock().expect("lock") = None;
    assert_eq!(apply_once(&store, "src", &counter, &ev(3)).await.expect("3"), Applied::Applied);
    assert_eq!(applied(&store).await, vec![1, 2, 3]);
}

#[tokio::test]
async fn a_restarted_consumer_resumes_from_its_cursor_exactly_once() {
    let source_db = TestDb::new("source").await;
    let sink_db = TestDb::new("sink").await;
    let source = store(&source_db).await;
    let sink = store(&sink_db).await;
    sink.conn().execute_unprepared("CREATE TABLE applied (sequence BIGINT PRIMARY KEY)").await.expect("table");
    for i in 0..20 {
        append(&source, &format!("p{i}")).await;
    }
    let projection = Arc::new(Counter { fail_on: Mutex::new(None) });

    // First run: follow, then stop mid-stream.
    let shutdown = Shutdown::new();
    let consumer = Consumer {
        name: "source".into(),
        store: sink.clone(),
        source: Arc::new(LocalFeed { store: source.clone(), shutdown: shutdown.clone() }),
        projection: projection.clone(),
    };
    let progress = consumer.spawn(shutdown.clone()).await.expect("spawn");
    crm_runtime::consistency::wait_for(progress.watch(), 20, Duration::from_secs(10)).await.expect("caught up");
    shutdown.trigger();
    for i in 20..35 {
        append(&source, &format!("p{i}")).await;
    }

    // Second run: a new consumer on the same store picks up where it stopped.
    let shutdown = Shutdown::new();
    let consumer = Consumer {
        name: "source".into(),
        store: sink.clone(),
        source: Arc::new(LocalFeed { store: source.clone(), shutdown: shutdown.clone() }),
        projection,
    };
    let progress = consumer.spawn(shutdown.clone()).await.expect("spawn");
    assert_eq!(progress.applied(), 20, "resumes from the stored cursor");
    crm_runtime::consistency::wait_for(progress.watch(), 35, Duration::from_secs(10)).await.expect("caught up");
    // And it keeps tailing.
    append(&source, "late").await;
    crm_runtime::consistency::wait_for(progress.watch(), 36, Duration::from_secs(10)).await.expect("tail");
    shutdown.trigger();
    assert_eq!(applied(&sink).await, (1..=36).collect::<Vec<i64>>(), "each event exactly once on {}", sink_db.kind());
}

#[tokio::test]
async fn a_consumer_keeps_applying_while_its_server_drains_and_stops_once_drained() {
    let source_db = TestDb::new("source").await;
    let sink_db = TestDb::new("sink").await;
    let source = store(&source_db).await;
    let sink = store(&sink_db).await;
    sink.conn().execute_unprepared("CREATE TABLE applied (sequence BIGINT PRIMARY KEY)").await.expect("table");
    append(&source, "p0").await;
    // The feed belongs to another service, which keeps running.
    let feed_shutdown = Shutdown::new();
    let shutdown = Shutdown::new();
    let server = shutdown.serving();
    let consumer = Consumer {
        name: "source".into(),
        store: sink.clone(),
        source: Arc::new(LocalFeed { store: source.clone(), shutdown: feed_shutdown.clone() }),
        projection: Arc::new(Counter { fail_on: Mutex::new(None) }),
    };
    let progress = consumer.spawn(shutdown.clone()).await.expect("spawn");
    crm_runtime::consistency::wait_for(progress.watch(), 1, Duration::from_secs(10)).await.expect("caught up");

    // Shutdown starts; a call in flight still waits for the next event.
    shutdown.trigger();
    assert!(shutdown.is_triggered() && !shutdown.is_drained());
    append(&source, "p1").await;
    crm_runtime::consistency::wait_for(progress.watch(), 2, Duration::from_secs(10))
        .await
        .expect("applied while the server drains");

    // The server has finished: the consumer stops.
    drop(server);
    assert!(shutdown.is_drained());
    append(&source, "p2").await;
    let after = crm_runtime::consistency::wait_for(progress.watch(), 3, Duration::from_secs(10)).await;
    assert!(after.is_err(), "a drained consumer stops");
    feed_shutdown.trigger();
    assert_eq!(applied(&sink).await, vec![1, 2]);
}

#[tokio::test]
async fn idempotency_keys_replay_the_first_response() {
    let db = TestDb::new("runtime").await;
    let store = store(&db).await;
    let first = event("first");
    let tx = store.begin_write().await.expect("begin");
    assert!(matches!(idempotency::claim::<ProfileEvent>(&tx, "Op", "k1", 7).await.expect("claim"), Claim::Fresh));
    idempotency::complete(&tx, "Op", "k1", &first).await.expect("complete");
    tx.commit().await.expect("commit");

    let tx = store.begin_write().await.expect("begin");
    match idempotency::claim::<ProfileEvent>(&tx, "Op", "k1", 7).await.expect("claim") {
        Claim::Replay(r) => assert_eq!(r, first),
        Claim::Fresh => panic!("a retry must replay"),
    }
    let err = idempotency::claim::<ProfileEvent>(&tx, "Op", "k1", 8).await.expect_err("different request");
    assert!(matches!(err, RuntimeError::InvalidArgument(_)));
    assert!(matches!(idempotency::claim::<ProfileEvent>(&tx, "Other", "k1", 8).await.expect("claim"), Claim::Fresh));
    tx.rollback().await.expect("rollback");
}

#[tokio::test]
async fn a_read_transaction_sees_one_state_of_the_store() {
    let db = TestDb::new("runtime").await;
    let store = store(&db).await;
    store.conn().execute_unprepared("CREATE TABLE kv (k BIGINT PRIMARY KEY, v BIGINT NOT NULL)").await.expect("table");
    store.conn().execute_unprepared("INSERT INTO kv (k, v) VALUES (1, 1)").await.expect("row");
    async fn read(store: &Store, c: &sea_orm::DatabaseTransaction) -> i64 {
        let stmt = store.stmt("SELECT v FROM kv WHERE k = 1", vec![]);
        c.query_one_raw(stmt).await.expect("read").expect("row").try_get_by_index::<i64>(0).expect("v")
    }
    let snapshot = store.begin_read().await.expect("begin read");
    assert_eq!(read(&store, &snapshot).await, 1);
    let tx = store.begin_write().await.expect("begin write");
    tx.execute_raw(store.stmt("UPDATE kv SET v = 2 WHERE k = 1", vec![])).await.expect("update");
    tx.commit().await.expect("commit");
    assert_eq!(read(&store, &snapshot).await, 1, "a commit after the first read is not seen");
    snapshot.commit().await.expect("end read");
    let after = store.begin_read().await.expect("begin read");
    assert_eq!(read(&store, &after).await, 2);
}

/// Every kind of value a write defers reaches the store unchanged, however
/// the deferred statements are sent: quotes, backslashes, control
/// characters, bytes, extreme numbers and NULLs read back as they were
/// bound.
#[tokio::test]
async fn deferred_statements_store_every_value_unchanged() {
    let db = TestDb::new("runtime").await;
    let store = store(&db).await;
    let blob = match store.backend() {
        sea_orm::DatabaseBackend::Postgres => "BYTEA",
        _ => "BLOB",
    };
    store
        .conn()
        .execute_unprepared(&format!(
            "CREATE TABLE vals (id BIGINT PRIMARY KEY, s TEXT, b {blob}, i BIGINT, n INTEGER, f DOUBLE PRECISION, \
             g REAL, t BOOLEAN)"
        ))
        .await
        .expect("table");
    let controls: String = (1u8..32).map(char::from).chain(['\u{7f}']).collect();
    let long: String = "'\\\"$1?E'\\x41'; DROP TABLE vals; --".repeat(4_000);
    let texts: Vec<Option<String>> = vec![
        Some(String::new()),
        Some("O'Brien".into()),
        Some("back\\slash\\".into()),
        Some("\\x41\\\\'".into()),
        Some("E'\\''".into()),
        Some("$1 $2 $10 ?".into()),
        Some("'); DELETE FROM vals; --".into()),
        Some(controls),
        Some("Zoë 😀 ﷽ \u{202e}".into()),
        Some(long),
        None,
    ];
    let floats = [0.1, -0.0, 1e-300, 1e300, f64::MAX, f64::MIN_POSITIVE, f64::INFINITY, f64::NAN];
    let ints = [i64::MIN, i64::MAX, 0, -1];
    let bytes: Vec<u8> = (0..=255u8).collect();
    let mut tx = store.begin_write().await.expect("begin");
    let mut expected = Vec::new();
    for (k, text) in texts.iter().enumerate() {
        let id = k as i64;
        let row = (
            text.clone(),
            (k % 2 == 0).then(|| bytes.iter().rev().skip(k).copied().collect::<Vec<u8>>()),
            ints[k % ints.len()],
            (k as i32).wrapping_mul(i32::MAX / 7),
            floats[k % floats.len()],
            (k as f32) / 3.0,
            k % 3 == 0,
        );
        tx.defer(tx.stmt(
            "INSERT INTO vals (id, s, b, i, n, f, g, t) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            vec![
                id.into(),
                row.0.clone().into(),
                row.1.clone().into(),
                row.2.into(),
                row.3.into(),
                row.4.into(),
                row.5.into(),
                row.6.into(),
            ],
        ));
        expected.push((id, row));
    }
    // Text of the statement itself that looks like a parameter stays text.
    tx.defer(tx.stmt("UPDATE vals SET s = '$1' || s WHERE id = ?", vec![1i64.into()]));
    expected[1].1.0 = Some("$1O'Brien".into());
    tx.commit().await.expect("commit");

    let rows = store
        .conn()
        .query_all_raw(store.stmt("SELECT id, s, b, i, n, f, g, t FROM vals ORDER BY id", vec![]))
        .await
        .expect("read");
    assert_eq!(rows.len(), expected.len());
    for (row, (id, want)) in rows.iter().zip(&expected) {
        assert_eq!(row.try_get_by_index::<i64>(0).unwrap(), *id);
        assert_eq!(row.try_get_by_index::<Option<String>>(1).unwrap(), want.0, "text of row {id}");
        assert_eq!(row.try_get_by_index::<Option<Vec<u8>>>(2).unwrap(), want.1, "bytes of row {id}");
        assert_eq!(row.try_get_by_index::<i64>(3).unwrap(), want.2);
        assert_eq!(row.try_get_by_index::<i32>(4).unwrap(), want.3);
        // SQLite stores an integral REAL as an integer (-0.0 reads back 0)
        // and NaN as NULL.
        let f: f64 = row.try_get_by_index::<Option<f64>>(5).unwrap().unwrap_or(f64::NAN);
        let same = match store.backend() {
            sea_orm::DatabaseBackend::Sqlite => f == want.4,
            _ => f.to_bits() == want.4.to_bits(),
        };
        assert!(same || (f.is_nan() && want.4.is_nan()), "row {id}: {f} != {}", want.4);
        let g: f32 = match store.backend() {
            // SQLite keeps REAL as a double.
            sea_orm::DatabaseBackend::Sqlite => row.try_get_by_index::<f64>(6).unwrap() as f32,
            _ => row.try_get_by_index(6).unwrap(),
        };
        assert_eq!(g.to_bits(), want.5.to_bits());
        assert_eq!(row.try_get_by_index::<bool>(7).unwrap(), want.6);
    }

    // Text holding NUL: PostgreSQL text cannot hold it, and the write fails
    // (bound, as it always was) instead of storing a cut string.
    let mut tx = store.begin_write().await.expect("begin");
    tx.defer(tx.stmt("INSERT INTO vals (id, s) VALUES (?, ?)", vec![100i64.into(), "a\0b".into()]));
    let stored = tx.commit().await;
    match store.backend() {
        sea_orm::DatabaseBackend::Postgres => assert!(stored.is_err(), "NUL in text must fail, not be cut"),
        _ => {
            stored.expect("SQLite keeps NUL in text");
            let row = store
                .conn()
                .query_one_raw(store.stmt("SELECT s FROM vals WHERE id = 100", vec![]))
                .await
                .expect("read")
                .expect("row");
            assert_eq!(row.try_get_by_index::<String>(0).unwrap(), "a\0b");
        }
    }
}
