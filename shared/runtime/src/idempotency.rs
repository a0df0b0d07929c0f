//! Idempotency keys: a write retried with the same `request_id` returns the
//! first result and changes nothing. The key is claimed first in the write
//! transaction, so concurrent retries queue behind the first and then
//! replay its stored response.

use sea_orm::{ConnectionTrait, DbErr};

use crate::{
    db::WriteTxn,
    error::{FieldViolations, RuntimeError},
};

/// Longest accepted `request_id`.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Outcome of claiming a key.
#[derive(Debug)]
pub enum Claim<R> {
    /// First time: do the work, then `complete`.
    Fresh,
    /// Seen before: this was the response.
    Replay(R),
}

/// Validate a request id (empty means "not idempotent").
pub fn check_request_id(v: &mut FieldViolations, request_id: &str) {
    v.require(request_id.len() <= MAX_REQUEST_ID_LEN, "request_id", format!("at most {MAX_REQUEST_ID_LEN} bytes"));
    v.require(!request_id.chars().any(char::is_control), "request_id", "must not contain control characters");
}

/// A stable 64-bit FNV-1a fingerprint of a request.
pub fn fingerprint(bytes: &[u8]) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

/// Claim `request_id` within `scope` (the RPC) for a request fingerprinted
/// `fp`. An empty id is always `Fresh`. A key reused for a different request
/// is INVALID_ARGUMENT.
pub async fn claim<R: prost::Message + Default>(
    tx: &WriteTxn,
    scope: &str,
    request_id: &str,
    fp: i64,
) -> Result<Claim<R>, RuntimeError> {
    if request_id.is_empty() {
        return Ok(Claim::Fresh);
    }
    let inserted = tx
        .execute_raw(tx.stmt(
            "INSERT INTO idempotency_keys (scope, request_id, fingerprint, response, created_at_us) VALUES (?, ?, ?, NULL, ?) \
             ON CONFLICT (scope, request_id) DO NOTHING",
            vec![scope.into(), request_id.into(), fp.into(), crate::time::now().timestamp_micros().into()],
        ))
        .await?
        .rows_affected();
    if inserted == 1 {
        return Ok(Claim::Fresh);
    }
    let row = tx
        .query_one_raw(tx.stmt(
            "SELECT fingerprint, response FROM idempotency_keys WHERE scope = ? AND request_id = ?",
            vec![scope.into(), request_id.into()],
        ))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("idempotency key".into()))?;
    seen(fp, row.try_get_by_index(0)?, row.try_get_by_index(1)?).map(Claim::Replay)
}

/// What a key already stored (`stored_fp`, `response`) means for a request
/// fingerprinted `fp`: its response to replay, a key reused for another
/// request (INVALID_ARGUMENT), or the same request still in progress
/// (ABORTED).
pub fn seen<R: prost::Message + Default>(
    fp: i64,
    stored_fp: i64,
    response: Option<Vec<u8>>,
) -> Result<R, RuntimeError> {
    if stored_fp != fp {
        return Err(FieldViolations::single("request_id", "already used for a different request"));
    }
    match response {
        Some(bytes) => {
            R::decode(bytes.as_slice()).map_err(|e| RuntimeError::Internal(format!("stored response undecodable: {e}")))
        }
        None => Err(RuntimeError::Aborted("the same request is in progress; retry".into())),
    }
}

/// Store the response of a fresh claim.
pub async fn complete<R: prost::Message>(
    tx: &WriteTxn,
    scope: &str,
    request_id: &str,
    response: &R,
) -> Result<(), DbErr> {
    complete_for(tx, scope, request_id, "", response).await
}

/// Store the response of a fresh claim, noting whom it is about (a
/// customer or profile id), so that `forget_subject` can erase it.
pub async fn complete_for<R: prost::Message>(
    tx: &WriteTxn,
    scope: &str,
    request_id: &str,
    subject: &str,
    response: &R,
) -> Result<(), DbErr> {
    if let Some(stmt) = complete_statement(tx, scope, request_id, subject, response) {
        tx.execute_raw(stmt).await?;
    }
    Ok(())
}

/// The statement [`complete_for`] runs (`None` without a request id), for a
/// caller that runs it later in the same transaction.
pub fn complete_statement<R: prost::Message>(
    tx: &WriteTxn,
    scope: &str,
    request_id: &str,
    subject: &str,
    response: &R,
) -> Option<sea_orm::Statement> {
    (!request_id.is_empty()).then(|| {
        tx.stmt(
            "UPDATE idempotency_keys SET response = ?, subject = ? WHERE scope = ? AND request_id = ?",
            vec![response.encode_to_vec().into(), subject.into(), scope.into(), request_id.into()],
        )
    })
}

/// Store the key of a request found unclaimed, with its response, among
/// the write's deferred statements: for group-committed writes, which run
/// one at a time per store, so the lookup before the write (see [`seen`])
/// and this insert stand in for a claim. Should another process have
/// stored the key meanwhile, the insert fails the write, which then runs
/// again and replays that response.
pub fn record_later<R: prost::Message>(
    tx: &mut WriteTxn,
    scope: &str,
    request_id: &str,
    fp: i64,
    subject: &str,
    response: &R,
) {
    if request_id.is_empty() {
        return;
    }
    tx.note_recorded(scope, request_id);
    let stmt = tx.stmt(
        "INSERT INTO idempotency_keys (scope, request_id, fingerprint, response, subject, created_at_us) \
         VALUES (?, ?, ?, ?, ?, ?)",
        vec![
            scope.into(),
            request_id.into(),
            fp.into(),
            response.encode_to_vec().into(),
            subject.into(),
            crate::time::now().timestamp_micros().into(),
        ],
    );
    tx.defer(stmt);
}

/// Delete every stored response about `subject` (erasure). A retry of one
/// of those requests afterwards is treated as new.
pub async fn forget_subject(tx: &WriteTxn, subject: &str) -> Result<u64, DbErr> {
    if subject.is_empty() {
        return Ok(0);
    }
    Ok(tx
        .execute_raw(tx.stmt("DELETE FROM idempotency_keys WHERE subject = ?", vec![subject.into()]))
        .await?
        .rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_stable_and_discriminating() {
        assert_eq!(fingerprint(b""), 0xcbf2_9ce4_8422_2325_u64 as i64);
        assert_eq!(fingerprint(b"a"), 0xaf63_dc4c_8601_ec8c_u64 as i64);
        assert_ne!(fingerprint(b"ab"), fingerprint(b"ba"));
    }

    #[test]
    fn equal_requests_with_maps_fingerprint_equally() {
        use crm_proto::{
            common::v1::{TraitValue, trait_value::Kind},
            interaction::v1::RecordInteractionRequest,
        };
        use prost::Message;
        let value = |i: i64| TraitValue { kind: Some(Kind::IntValue(i)) };
        let keys: Vec<String> = (0..32).map(|i| format!("key-{i}")).collect();
        let mut forward = RecordInteractionRequest::default();
        for (i, k) in keys.iter().enumerate() {
            forward.attributes.insert(k.clone(), value(i as i64));
        }
        let mut backward = RecordInteractionRequest::default();
        for (i, k) in keys.iter().enumerate().rev() {
            backward.attributes.insert(k.clone(), value(i as i64));
        }
        assert_eq!(fingerprint(&forward.encode_to_vec()), fingerprint(&backward.encode_to_vec()));
    }

    #[test]
    fn request_ids_are_bounded() {
        let mut v = FieldViolations::new();
        check_request_id(&mut v, &"x".repeat(129));
        check_request_id(&mut v, "a\nb");
        check_request_id(&mut v, "fine-id");
        assert_eq!(v.violations().len(), 2);
    }
}
