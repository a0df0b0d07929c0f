//! The transactional event log (outbox): appended in the same transaction
//! as the change it records, with a sequence that is gap-free in commit
//! order, and read back in order by the feed. Each event keeps the trace
//! context of the operation that appended it, so consumers can link their
//! work to the producer's trace.

use crm_proto::common::v1::TraceContext;
use sea_orm::{ConnectionTrait, DbErr};

use crate::db::stmt;

/// One stored event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Position in the log.
    pub sequence: i64,
    /// The customer or profile it concerns.
    pub stream_key: String,
    /// Event kind (the oneof case), for operators.
    pub kind: String,
    /// When it was appended, microseconds since the epoch.
    pub recorded_at_us: i64,
    /// The encoded event.
    pub payload: Vec<u8>,
    /// The W3C trace context of the operation that appended it, if traced.
    pub trace_context: Option<TraceContext>,
}

/// Reserve the next sequence in the caller's transaction.
///
/// The head row's counter is incremented: its row lock is held until the
/// transaction ends, so a concurrent appender waits and then sees the
/// committed value. Sequences are therefore contiguous and a reader never
/// sees a sequence before every smaller one has committed. A rollback
/// returns the number.
pub async fn reserve<C: ConnectionTrait>(c: &C) -> Result<i64, DbErr> {
    let row = c
        .query_one_raw(stmt(
            c.get_database_backend(),
            "UPDATE event_log_head SET last_sequence = last_sequence + 1 WHERE id = 1 RETURNING last_sequence",
            vec![],
        ))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("event_log_head".into()))?;
    row.try_get_by_index(0)
}

/// Store the event with a sequence from `reserve`, in the same transaction,
/// with the trace context of the current span (the producer's).
pub async fn insert<C: ConnectionTrait>(
    c: &C,
    sequence: i64,
    key: &str,
    kind: &str,
    payload: &[u8],
) -> Result<(), DbErr> {
    c.execute_raw(insert_statement(c.get_database_backend(), sequence, key, kind, payload)).await?;
    Ok(())
}

/// The statement [`insert`] runs, built now (it carries the current span's
/// trace context), for a caller that runs it later in the same transaction.
pub fn insert_statement(
    backend: sea_orm::DatabaseBackend,
    sequence: i64,
    key: &str,
    kind: &str,
    payload: &[u8],
) -> sea_orm::Statement {
    let trace = crate::telemetry::current_trace_context();
    let tracestate = trace.as_ref().map(|t| t.tracestate.clone()).filter(|s| !s.is_empty());
    stmt(
        backend,
        "INSERT INTO event_log (sequence, stream_key, kind, recorded_at_us, payload, traceparent, tracestate) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
        vec![
            sequence.into(),
            key.into(),
            kind.into(),
            crate::time::now().timestamp_micros().into(),
            payload.to_vec().into(),
            trace.map(|t| t.traceparent).into(),
            tracestate.into(),
        ],
    )
}

/// Append one event in the caller's transaction; returns its sequence.
pub async fn append<C: ConnectionTrait>(c: &C, key: &str, kind: &str, payload: &[u8]) -> Result<i64, DbErr> {
    let sequence = reserve(c).await?;
    insert(c, sequence, key, kind, payload).await?;
    Ok(sequence)
}

/// The columns `stored_event` reads, in its order.
const COLUMNS: &str = "sequence, stream_key, kind, recorded_at_us, payload, traceparent, tracestate";

/// A row of `SELECT {COLUMNS}`.
fn stored_event(r: &sea_orm::QueryResult) -> Result<StoredEvent, DbErr> {
    let traceparent: Option<String> = r.try_get_by_index(5)?;
    let tracestate: Option<String> = r.try_get_by_index(6)?;
    Ok(StoredEvent {
        sequence: r.try_get_by_index(0)?,
        stream_key: r.try_get_by_index(1)?,
        kind: r.try_get_by_index(2)?,
        recorded_at_us: r.try_get_by_index(3)?,
        payload: r.try_get_by_index(4)?,
        trace_context: traceparent
            .map(|traceparent| TraceContext { traceparent, tracestate: tracestate.unwrap_or_default() }),
    })
}

/// A LIMIT every database accepts (PostgreSQL refuses negative ones).
fn clamp(limit: u64) -> i64 {
    limit.min(i64::MAX as u64) as i64
}

/// Events after `after`, in order, at most `limit`.
pub async fn read_after<C: ConnectionTrait>(c: &C, after: i64, limit: u64) -> Result<Vec<StoredEvent>, DbErr> {
    let rows = c
        .query_all_raw(stmt(
            c.get_database_backend(),
            &format!("SELECT {COLUMNS} FROM event_log WHERE sequence > ? ORDER BY sequence LIMIT ?"),
            vec![after.into(), clamp(limit).into()],
        ))
        .await?;
    rows.iter().map(stored_event).collect()
}

/// The highest committed sequence (0 for an empty log).
pub async fn head<C: ConnectionTrait>(c: &C) -> Result<i64, DbErr> {
    let row = c
        .query_one_raw(stmt(c.get_database_backend(), "SELECT last_sequence FROM event_log_head WHERE id = 1", vec![]))
        .await?;
    match row {
        Some(r) => r.try_get_by_index(0),
        None => Ok(0),
    }
}

/// Events of one stream key after `after`, in order, at most `limit`.
pub async fn read_stream<C: ConnectionTrait>(
    c: &C,
    key: &str,
    after: i64,
    limit: u64,
) -> Result<Vec<StoredEvent>, DbErr> {
    let rows = c
        .query_all_raw(stmt(
            c.get_database_backend(),
            &format!("SELECT {COLUMNS} FROM event_log WHERE stream_key = ? AND sequence > ? ORDER BY sequence LIMIT ?"),
            vec![key.into(), after.into(), clamp(limit).into()],
        ))
        .await?;
    rows.iter().map(stored_event).collect()
}

/// Replace the payload of every event of `key` by what `redact` makes of
/// it, in the caller's transaction: erasure removes personal data from the
/// log while sequences, kinds and order stay (the feed keeps no holes).
/// Returns how many events were rewritten.
pub async fn redact_stream<C: ConnectionTrait>(
    c: &C,
    key: &str,
    mut redact: impl FnMut(&StoredEvent) -> Vec<u8>,
) -> Result<u64, DbErr> {
    let backend = c.get_database_backend();
    let mut after = 0;
    let mut rewritten = 0;
    loop {
        let batch = read_stream(c, key, after, 512).await?;
        let Some(last) = batch.last() else { break };
        after = last.sequence;
        for e in &batch {
            let payload = redact(e);
            if payload != e.payload {
                c.execute_raw(stmt(
                    backend,
                    "UPDATE event_log SET payload = ? WHERE sequence = ?",
                    vec![payload.into(), e.sequence.into()],
                ))
                .await?;
                rewritten += 1;
            }
        }
    }
    Ok(rewritten)
}
