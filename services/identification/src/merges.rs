//! Merge and unmerge (ID-5). A merge keeps snapshots of both profiles and
//! the merged one's identifiers; while it stands, what arrives at the
//! survivor is journaled with the identifier it came with. Unmerge restores
//! both snapshots and replays the journal on the side each entry belongs
//! to, so both profiles are as before plus what arrived meanwhile.

use std::collections::HashSet;

use crm_proto::identification::v1::{self as pb, profile_event::Kind};
use crm_runtime::{
    db::{Store, WriteTxn},
    error::RuntimeError,
    idempotency::{self, Claim},
    ids::new_id,
    time::now,
};
use prost::Message;
use sea_orm::{ConnectionTrait, DbErr, EntityTrait, QueryFilter};

use crate::{
    domain::{self, Normalized},
    store::{self, decode_profile, event, held_identifiers, id_condition, identifiers, live_row, profiles, status},
};

/// What arrived at a survivor while a merge stood.
#[derive(Clone, PartialEq, prost::Message)]
pub struct JournalEntry {
    /// Attributes a touchpoint applied.
    #[prost(message, optional, tag = "1")]
    pub attributes: Option<pb::ProfileAttributes>,
    /// Identifiers it attached.
    #[prost(message, repeated, tag = "2")]
    pub identifiers: Vec<pb::Identifier>,
    /// An operator's update (with `update_paths`).
    #[prost(message, optional, tag = "3")]
    pub update: Option<pb::Profile>,
    /// The update's mask.
    #[prost(string, repeated, tag = "4")]
    pub update_paths: Vec<String>,
}

/// Merge status codes.
mod merge_status {
    /// In force.
    pub const ACTIVE: i32 = 1;
    /// Undone by an unmerge.
    pub const UNDONE: i32 = 2;
}

/// The journal key of an identifier.
pub fn key(n: &Normalized) -> String {
    format!("{}|{}|{}", n.kind as i32, n.namespace, n.value)
}

fn key_of(i: &pb::Identifier) -> String {
    format!("{}|{}|{}", i.r#type, i.namespace, i.value)
}

/// Journal a change to `profile_id` at `sequence` if a merge into it
/// stands (otherwise there is nothing to undo later).
pub async fn journal(
    tx: &WriteTxn,
    profile_id: &str,
    sequence: i64,
    arrived_with: Option<&Normalized>,
    entry: &JournalEntry,
) -> Result<(), DbErr> {
    let standing = tx
        .query_one_raw(tx.stmt(
            "SELECT 1 FROM merges WHERE surviving_id = ? AND status = ? LIMIT 1",
            vec![profile_id.into(), merge_status::ACTIVE.into()],
        ))
        .await?
        .is_some();
    if standing && sequence > 0 {
        tx.execute_raw(journal_statement(tx, profile_id, sequence, arrived_with, entry)).await?;
    }
    Ok(())
}

/// The statement that journals a change to `profile_id` at `sequence`,
/// for a caller that knows a merge into it stands (see [`standing_merges`]).
pub(crate) fn journal_statement(
    tx: &WriteTxn,
    profile_id: &str,
    sequence: i64,
    arrived_with: Option<&Normalized>,
    entry: &JournalEntry,
) -> sea_orm::Statement {
    tx.stmt(
        "INSERT INTO profile_journal (profile_id, sequence, arrived_with, entry) VALUES (?, ?, ?, ?)",
        vec![profile_id.into(), sequence.into(), arrived_with.map(key).into(), entry.encode_to_vec().into()],
    )
}

/// A column expression counting the merges into the profile `p` that
/// stand, and the value it binds: for reading it with the profile's row.
pub(crate) fn standing_merges() -> (&'static str, i32) {
    ("(SELECT COUNT(*) FROM merges m WHERE m.surviving_id = p.id AND m.status = ?)", merge_status::ACTIVE)
}

/// Merge `merged_id` into `surviving_id`.
pub async fn merge(
    store: &Store,
    surviving_id: &str,
    merged_id: &str,
    request_id: &str,
    fp: i64,
) -> Result<pb::MergeProfilesResponse, RuntimeError> {
    const SCOPE: &str = "MergeProfiles";
    let mut tx = store.begin_write().await?;
    if let Claim::Replay(r) = idempotency::claim(&tx, SCOPE, request_id, fp).await? {
        tx.rollback().await?;
        return Ok(r);
    }
    let s_row = live_row(&*tx, surviving_id).await?;
    let m_row = live_row(&*tx, merged_id).await?;
    let (profile, merge_id, sequence) = merge_in(&mut tx, &s_row, &m_row).await?;
    let response = pb::MergeProfilesResponse { profile: Some(profile), merge_id, sequence };
    idempotency::complete_for(&tx, SCOPE, request_id, &s_row.id, &response).await?;
    tx.commit().await?;
    Ok(response)
}

/// Merge `m_row` into `s_row` inside `tx`: the survivor as it is after,
/// the merge's id, and the last sequence appended.
pub async fn merge_in(
    tx: &mut WriteTxn,
    s_row: &profiles::Model,
    m_row: &profiles::Model,
) -> Result<(pb::Profile, String, i64), RuntimeError> {
    if s_row.id == m_row.id {
        return Err(RuntimeError::FailedPrecondition("both ids name the same profile already".into()));
    }
    let survivor = decode_profile(s_row)?;
    let merged = decode_profile(m_row)?;
    let s_held = held_identifiers(&**tx, &s_row.id).await?;
    let m_held = held_identifiers(&**tx, &m_row.id).await?;
    if let Some(c) = m_held.iter().find(|n| domain::profile::contradicts(&s_held, n)) {
        return Err(RuntimeError::FailedPrecondition(format!(
            "both profiles hold a {}; remove one before merging",
            c.kind.as_str_name()
        )));
    }
    let (survived, decisions) = domain::merge::survive(&survivor, &merged);
    let at = now();
    let merge_id = new_id();

    // The merged profile's identifiers move; its id becomes an alias.
    tx.execute_raw(tx.stmt(
        "UPDATE identifiers SET profile_id = ? WHERE profile_id = ?",
        vec![s_row.id.clone().into(), m_row.id.clone().into()],
    ))
    .await?;
    tx.execute_raw(tx.stmt(
        "UPDATE profiles SET status = ?, merged_into = ?, updated_at_us = ? WHERE id = ?",
        vec![status::MERGED.into(), s_row.id.clone().into(), at.timestamp_micros().into(), m_row.id.clone().into()],
    ))
    .await?;
    // Its blocking keys and records stay under its id, which now stands
    // for the survivor: what it was told keeps recognising the person.
    let (merge_seq, _) = tx
        .append_with(&s_row.id, |seq| {
            event(
                seq,
                at,
                &s_row.id,
                Kind::ProfileMerged(pb::ProfileMerged {
                    surviving_id: s_row.id.clone(),
                    merged_id: m_row.id.clone(),
                    merge_id: merge_id.clone(),
                }),
            )
        })
        .await?;
    let moved = pb::IdentifiersChanged { added: m_held.iter().map(store::to_pb_identifier).collect(), removed: vec![] };
    tx.execute_raw(tx.stmt(
        "INSERT INTO merges (id, surviving_id, merged_id, status, sequence, created_at_us, survivor_version, merged_version, \
         survivor_before, merged_before, merged_identifiers, evidence) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        vec![
            merge_id.clone().into(),
            s_row.id.clone().into(),
            m_row.id.clone().into(),
            merge_status::ACTIVE.into(),
            merge_seq.into(),
            at.timestamp_micros().into(),
            s_row.version.into(),
            m_row.version.into(),
            s_row.body.clone().into(),
            m_row.body.clone().into(),
            moved.encode_to_vec().into(),
            domain::merge::evidence_json(&decisions).into(),
        ],
    ))
    .await?;
    let (profile, sequence) = store::save_update(tx, s_row, survived, vec!["merged"], at).await?;
    Ok((profile, merge_id, sequence))
}

/// Undo the merge `merge_id`: the latest merge into its survivor that
/// still stands.
pub async fn unmerge(
    store: &Store,
    merge_id: &str,
    request_id: &str,
    fp: i64,
) -> Result<pb::UnmergeProfilesResponse, RuntimeError> {
    const SCOPE: &str = "UnmergeProfiles";
    let mut tx = store.begin_write().await?;
    if let Claim::Replay(r) = idempotency::claim(&tx, SCOPE, request_id, fp).await? {
        tx.rollback().await?;
        return Ok(r);
    }
    let m = tx
        .query_one_raw(tx.stmt(
            "SELECT surviving_id, merged_id, status, sequence, merged_version, survivor_before, merged_before, merged_identifiers \
             FROM merges WHERE id = ?",
            vec![merge_id.into()],
        ))
        .await?
        .ok_or_else(|| RuntimeError::NotFound { resource: "merge", id: merge_id.to_owned() })?;
    let surviving_id: String = m.try_get_by_index(0)?;
    let merged_id: String = m.try_get_by_index(1)?;
    let merge_state: i32 = m.try_get_by_index(2)?;
    let merge_seq: i64 = m.try_get_by_index(3)?;
    let merged_version: i64 = m.try_get_by_index(4)?;
    let survivor_before: Vec<u8> = m.try_get_by_index(5)?;
    let merged_before: Vec<u8> = m.try_get_by_index(6)?;
    let merged_ids: Vec<u8> = m.try_get_by_index(7)?;
    if merge_state != merge_status::ACTIVE {
        return Err(RuntimeError::FailedPrecondition(format!("merge {merge_id} was already undone")));
    }
    let s_row = profiles::Entity::find_by_id(surviving_id.clone())
        .one(&*tx)
        .await?
        .ok_or_else(|| RuntimeError::Internal("merge survivor vanished".into()))?;
    if s_row.status != status::ACTIVE {
        return Err(RuntimeError::FailedPrecondition(format!(
            "profile {surviving_id} is no longer live (merged again or erased); undo that first"
        )));
    }
    let later = tx
        .query_one_raw(tx.stmt(
            "SELECT id FROM merges WHERE surviving_id = ? AND status = ? AND sequence > ? LIMIT 1",
            vec![surviving_id.clone().into(), merge_status::ACTIVE.into(), merge_seq.into()],
        ))
        .await?;
    if let Some(l) = later {
        let later_id: String = l.try_get_by_index(0)?;
        return Err(RuntimeError::FailedPrecondition(format!("undo the later merge {later_id} first")));
    }
    let decode = |b: &[u8]| {
        pb::Profile::decode(b).map_err(|e| RuntimeError::Internal(format!("merge snapshot undecodable: {e}")))
    };
    let mut survivor = decode(&survivor_before)?;
    let mut restored = decode(&merged_before)?;
    let moved = pb::IdentifiersChanged::decode(merged_ids.as_slice())
        .map_err(|e| RuntimeError::Internal(format!("merge identifiers undecodable: {e}")))?;
    let mut merged_side: HashSet<String> = moved.added.iter().map(key_of).collect();

    // Replay what arrived meanwhile on the side it belongs to.
    let entries = tx
        .query_all_raw(tx.stmt(
            "SELECT arrived_with, entry FROM profile_journal WHERE profile_id = ? AND sequence > ? ORDER BY sequence",
            vec![surviving_id.clone().into(), merge_seq.into()],
        ))
        .await?;
    for row in entries {
        let arrived_with: Option<String> = row.try_get_by_index(0)?;
        let bytes: Vec<u8> = row.try_get_by_index(1)?;
        let entry = JournalEntry::decode(bytes.as_slice())
            .map_err(|e| RuntimeError::Internal(format!("journal undecodable: {e}")))?;
        let to_merged = arrived_with.is_some_and(|k| merged_side.contains(&k));
        let target = if to_merged { &mut restored } else { &mut survivor };
        if let Some(a) = &entry.attributes {
            domain::apply_attributes(target, a);
        }
        if let Some(u) = &entry.update {
            domain::profile::apply_mask(target, u, &entry.update_paths);
        }
        if to_merged {
            merged_side.extend(entry.identifiers.iter().map(key_of));
        }
    }
    tx.execute_raw(tx.stmt(
        "DELETE FROM profile_journal WHERE profile_id = ? AND sequence > ?",
        vec![surviving_id.clone().into(), merge_seq.into()],
    ))
    .await?;

    // Identifiers of the merged side go back.
    let held = held_identifiers(&*tx, &surviving_id).await?;
    let back: Vec<&Normalized> = held.iter().filter(|n| merged_side.contains(&key(n))).collect();
    for n in &back {
        identifiers::Entity::update_many()
            .col_expr(identifiers::Column::ProfileId, sea_orm::sea_query::Expr::value(merged_id.clone()))
            .filter(id_condition(n))
            .exec(&*tx)
            .await?;
    }
    let at = now();
    tx.execute_raw(tx.stmt(
        "UPDATE profiles SET status = ?, merged_into = NULL WHERE id = ?",
        vec![status::ACTIVE.into(), merged_id.clone().into()],
    ))
    .await?;
    tx.execute_raw(
        tx.stmt("UPDATE merges SET status = ? WHERE id = ?", vec![merge_status::UNDONE.into(), merge_id.into()]),
    )
    .await?;
    tx.append_with(&surviving_id, |seq| {
        event(
            seq,
            at,
            &surviving_id,
            Kind::ProfileUnmerged(pb::ProfileUnmerged {
                surviving_id: surviving_id.clone(),
                restored_id: merged_id.clone(),
                merge_id: merge_id.to_owned(),
            }),
        )
    })
    .await?;
    // Versions only move forward, so an etag never names two states.
    let (surviving_profile, _) = store::save_update(&mut tx, &s_row, survivor, vec!["unmerged"], at).await?;
    let r_row = profiles::Entity::find_by_id(merged_id.clone())
        .one(&*tx)
        .await?
        .ok_or_else(|| RuntimeError::Internal("merged profile vanished".into()))?;
    let r_row = profiles::Model { version: r_row.version.max(merged_version), ..r_row };
    let (restored_profile, sequence) = store::save_update(&mut tx, &r_row, restored, vec!["unmerged"], at).await?;
    let response = pb::UnmergeProfilesResponse {
        surviving_profile: Some(surviving_profile),
        restored_profile: Some(restored_profile),
        sequence,
    };
    idempotency::complete_for(&tx, SCOPE, request_id, &surviving_id, &response).await?;
    tx.commit().await?;
    Ok(response)
}

/// Forget the merges and journal of an erased profile (they hold its data).
pub async fn forget(tx: &WriteTxn, profile_id: &str) -> Result<(), DbErr> {
    tx.execute_raw(tx.stmt(
        "DELETE FROM merges WHERE surviving_id = ? OR merged_id = ?",
        vec![profile_id.into(), profile_id.into()],
    ))
    .await?;
    tx.execute_raw(tx.stmt("DELETE FROM profile_journal WHERE profile_id = ?", vec![profile_id.into()])).await?;
    Ok(())
}
