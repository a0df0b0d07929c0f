//! Complaints (opened with a COMPLAINT interaction, then moved through
//! their states) and defections (with a DEFECTION interaction), and the
//! defection-cause breakdown.

use crm_proto::interaction::v1::{self as pb, interaction_event::Kind};
use crm_runtime::{
    db::Store,
    error::RuntimeError,
    idempotency::{self, Claim},
    ids::new_id,
    time::{now, to_timestamp},
};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, ConnectionTrait, EntityTrait, IntoActiveModel, Value};

use super::{append_event, append_interaction, body, decode, fact_interaction, lifecycle, lock_row, refuse};
use crate::{
    conversions::{ComplaintUpdate, DefectionQuery, NewComplaint, NewDefection},
    domain::complaints::{self, CauseCount},
};

/// Complaints.
pub mod complaints_table {
    #![allow(missing_docs)]
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "complaints")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub customer_id: String,
        pub category: String,
        pub status: i32,
        pub opened_at_us: i64,
        pub resolved_at_us: Option<i64>,
        /// Sequence of the last change.
        pub sequence: i64,
        pub body: Vec<u8>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Defections.
pub mod defections {
    #![allow(missing_docs)]
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "defections")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub customer_id: String,
        pub reason: i32,
        pub manageable: bool,
        pub occurred_at_us: i64,
        pub sequence: i64,
        pub body: Vec<u8>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Open a complaint with its COMPLAINT interaction, idempotently.
pub async fn record_complaint(store: &Store, cmd: NewComplaint) -> Result<pb::RecordComplaintResponse, RuntimeError> {
    const SCOPE: &str = "RecordComplaint";
    let mut tx = store.begin_write().await?;
    if let Claim::Replay(r) = idempotency::claim(&tx, SCOPE, &cmd.request_id, cmd.fingerprint).await? {
        tx.rollback().await?;
        return Ok(r);
    }
    let requested = cmd.complaint.customer_id.clone();
    let holder = lifecycle::write_holder(&tx, &requested).await?;
    let recorded = now();
    let opened_at_us = cmd.opened_at.timestamp_micros();
    let mut complaint = cmd.complaint;
    complaint.id = new_id();
    complaint.customer_id.clone_from(&holder.id);
    let mut interaction =
        fact_interaction(&complaint.customer_id, cmd.channel, pb::InteractionType::Complaint, cmd.opened_at, recorded);
    let sequence = append_interaction(&mut tx, &mut interaction, recorded, opened_at_us, |i| {
        Kind::ComplaintChanged(pb::ComplaintChanged { complaint: Some(complaint.clone()), interaction: Some(i) })
    })
    .await?;
    complaints_table::Entity::insert(complaints_table::ActiveModel {
        id: Set(complaint.id.clone()),
        customer_id: Set(complaint.customer_id.clone()),
        category: Set(complaint.category.clone()),
        status: Set(complaint.status),
        opened_at_us: Set(opened_at_us),
        resolved_at_us: Set(None),
        sequence: Set(sequence),
        body: Set(body(&complaint)),
    })
    .exec_without_returning(&*tx)
    .await?;
    lifecycle::note_facts(&tx, &holder, "complaints", &[&complaint.id]).await?;
    lifecycle::note_facts(&tx, &holder, "interactions", &[&interaction.id]).await?;
    let response = pb::RecordComplaintResponse { complaint: Some(complaint), sequence, interaction: Some(interaction) };
    idempotency::complete_for(&tx, SCOPE, &cmd.request_id, &requested, &response).await?;
    tx.commit().await?;
    Ok(response)
}

/// Move a complaint to a new status, idempotently: NOT_FOUND for an
/// unknown complaint, FAILED_PRECONDITION for a transition the life cycle
/// does not allow. Resolving sets its resolve time (now).
pub async fn update_complaint(
    store: &Store,
    cmd: ComplaintUpdate,
) -> Result<pb::UpdateComplaintResponse, RuntimeError> {
    const SCOPE: &str = "UpdateComplaint";
    let mut tx = store.begin_write().await?;
    if let Claim::Replay(r) = idempotency::claim(&tx, SCOPE, &cmd.request_id, cmd.fingerprint).await? {
        tx.rollback().await?;
        return Ok(r);
    }
    lifecycle::lock_shared(&tx).await?;
    lock_row(&tx, "complaints", &cmd.complaint_id).await?;
    let Some(row) = complaints_table::Entity::find_by_id(cmd.complaint_id.clone()).one(&*tx).await? else {
        return refuse(tx, RuntimeError::NotFound { resource: "complaint", id: cmd.complaint_id }).await;
    };
    let from = pb::ComplaintStatus::try_from(row.status).unwrap_or_default();
    if let Err(why) = complaints::transition(from, cmd.status) {
        return refuse(tx, RuntimeError::FailedPrecondition(why)).await;
    }
    let mut complaint: pb::Complaint = decode(&row.body, "complaint")?;
    complaint.customer_id.clone_from(&row.customer_id);
    let recorded = now();
    complaint.status = cmd.status as i32;
    let resolved_at_us = if cmd.status == pb::ComplaintStatus::Resolved {
        complaint.resolve_time = Some(to_timestamp(recorded));
        Some(recorded.timestamp_micros())
    } else {
        None
    };
    let sequence = append_event(
        &mut tx,
        &complaint.customer_id,
        recorded,
        Kind::ComplaintChanged(pb::ComplaintChanged { complaint: Some(complaint.clone()), interaction: None }),
    )
    .await?;
    let mut active = row.into_active_model();
    active.status = Set(complaint.status);
    active.resolved_at_us = Set(resolved_at_us);
    active.sequence = Set(sequence);
    active.body = Set(body(&complaint));
    active.update(&*tx).await?;
    let subject = complaint.customer_id.clone();
    let response = pb::UpdateComplaintResponse { complaint: Some(complaint), sequence };
    idempotency::complete_for(&tx, SCOPE, &cmd.request_id, &subject, &response).await?;
    tx.commit().await?;
    Ok(response)
}

/// Record a defection with its DEFECTION interaction, idempotently.
pub async fn record_defection(store: &Store, cmd: NewDefection) -> Result<pb::RecordDefectionResponse, RuntimeError> {
    const SCOPE: &str = "RecordDefection";
    let mut tx = store.begin_write().await?;
    if let Claim::Replay(r) = idempotency::claim(&tx, SCOPE, &cmd.request_id, cmd.fingerprint).await? {
        tx.rollback().await?;
        return Ok(r);
    }
    let requested = cmd.defection.customer_id.clone();
    let holder = lifecycle::write_holder(&tx, &requested).await?;
    let recorded = now();
    let occurred_at_us = cmd.occurred_at.timestamp_micros();
    let mut defection = cmd.defection;
    defection.id = new_id();
    defection.customer_id.clone_from(&holder.id);
    let mut interaction = fact_interaction(
        &defection.customer_id,
        cmd.channel,
        pb::InteractionType::Defection,
        cmd.occurred_at,
        recorded,
    );
    let sequence = append_interaction(&mut tx, &mut interaction, recorded, occurred_at_us, |i| {
        Kind::DefectionRecorded(pb::DefectionRecorded { defection: Some(defection.clone()), interaction: Some(i) })
    })
    .await?;
    defections::Entity::insert(defections::ActiveModel {
        id: Set(defection.id.clone()),
        customer_id: Set(defection.customer_id.clone()),
        reason: Set(defection.reason),
        manageable: Set(defection.manageable),
        occurred_at_us: Set(occurred_at_us),
        sequence: Set(sequence),
        body: Set(body(&defection)),
    })
    .exec_without_returning(&*tx)
    .await?;
    lifecycle::note_facts(&tx, &holder, "defections", &[&defection.id]).await?;
    lifecycle::note_facts(&tx, &holder, "interactions", &[&interaction.id]).await?;
    let response = pb::RecordDefectionResponse { defection: Some(defection), sequence, interaction: Some(interaction) };
    idempotency::complete_for(&tx, SCOPE, &cmd.request_id, &requested, &response).await?;
    tx.commit().await?;
    Ok(response)
}

/// Defections per reason over the period, most frequent first.
pub async fn analyze_defection_causes(
    store: &Store,
    q: DefectionQuery,
) -> Result<pb::AnalyzeDefectionCausesResponse, RuntimeError> {
    let mut sql = String::from(
        "SELECT reason, COUNT(*), CAST(SUM(CASE WHEN manageable THEN 1 ELSE 0 END) AS BIGINT) FROM defections WHERE 1 = 1",
    );
    let mut values: Vec<Value> = Vec::new();
    if let Some(from) = q.from_us {
        sql.push_str(" AND occurred_at_us >= ?");
        values.push(from.into());
    }
    if let Some(until) = q.until_us {
        sql.push_str(" AND occurred_at_us < ?");
        values.push(until.into());
    }
    sql.push_str(" GROUP BY reason");
    let rows = store.conn().query_all_raw(store.stmt(&sql, values)).await?;
    let counts = rows
        .iter()
        .map(|r| {
            let reason: i32 = r.try_get_by_index(0)?;
            let reason = pb::DefectionReason::try_from(reason)
                .map_err(|_| RuntimeError::Internal(format!("stored defection reason {reason} unknown")))?;
            Ok(CauseCount { reason, count: r.try_get_by_index(1)?, manageable: r.try_get_by_index(2)? })
        })
        .collect::<Result<Vec<_>, RuntimeError>>()?;
    let (causes, total) = complaints::breakdown(&counts);
    Ok(pb::AnalyzeDefectionCausesResponse {
        causes: causes
            .into_iter()
            .map(|c| pb::DefectionCause {
                reason: c.reason as i32,
                count: c.count,
                manageable_count: c.manageable,
                share: c.share,
            })
            .collect(),
        total,
    })
}
