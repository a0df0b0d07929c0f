//! Consent history (append-only: a change is a new record, never an
//! update), contact policies, and the contact decision read from them.

use chrono::{DateTime, Utc};
use crm_proto::{
    common::v1::Channel,
    interaction::v1::{self as pb, interaction_event::Kind},
};
use crm_runtime::{
    db::Store,
    error::RuntimeError,
    idempotency::{self, Claim},
    ids::new_id,
    time::{now, to_timestamp},
};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
};

use super::{append_event, body, decode, interactions, lifecycle, lock_customer_contacts, refuse};
use crate::{
    conversions::{ConsentPage, ContactQuery, NewConsent, PolicyUpdate, consent_token, default_policy, policy_from_pb},
    domain::contact::{self, ConsentFact, ContactRequest, Decision},
};

/// Consent records.
pub mod consents {
    #![allow(missing_docs)]
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "consents")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub customer_id: String,
        pub channel: i32,
        pub purpose: i32,
        pub state: i32,
        pub recorded_at_us: i64,
        pub expires_at_us: Option<i64>,
        /// Feed sequence: the order of the history.
        pub sequence: i64,
        pub body: Vec<u8>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Contact policies, one per customer who set one.
pub mod contact_policies {
    #![allow(missing_docs)]
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "contact_policies")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub customer_id: String,
        /// Bumped by every update; the etag.
        pub version: i64,
        pub updated_at_us: i64,
        pub body: Vec<u8>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

fn consent_from_row(row: &consents::Model) -> Result<pb::Consent, RuntimeError> {
    let mut c: pb::Consent = decode(&row.body, "consent")?;
    c.customer_id.clone_from(&row.customer_id);
    Ok(c)
}

fn instant(us: i64) -> Result<DateTime<Utc>, RuntimeError> {
    DateTime::from_timestamp_micros(us).ok_or_else(|| RuntimeError::Internal(format!("stored instant {us} invalid")))
}

fn fact_from_row(row: &consents::Model) -> Result<ConsentFact, RuntimeError> {
    Ok(ConsentFact {
        id: row.id.clone(),
        channel: Channel::try_from(row.channel).unwrap_or_default(),
        purpose: pb::Purpose::try_from(row.purpose).unwrap_or_default(),
        state: pb::ConsentState::try_from(row.state).unwrap_or_default(),
        recorded_at: instant(row.recorded_at_us)?,
        expires_at: row.expires_at_us.map(instant).transpose()?,
        sequence: row.sequence,
    })
}

/// Append a consent record, idempotently.
pub async fn record_consent(store: &Store, cmd: NewConsent) -> Result<pb::RecordConsentResponse, RuntimeError> {
    const SCOPE: &str = "RecordConsent";
    let mut tx = store.begin_write().await?;
    if let Claim::Replay(r) = idempotency::claim(&tx, SCOPE, &cmd.request_id, cmd.fingerprint).await? {
        tx.rollback().await?;
        return Ok(r);
    }
    let requested = cmd.consent.customer_id.clone();
    let holder = lifecycle::write_holder(&tx, &requested).await?;
    let recorded = now();
    let mut consent = cmd.consent;
    consent.id = new_id();
    consent.customer_id.clone_from(&holder.id);
    consent.record_time = Some(to_timestamp(recorded));
    let sequence = append_event(
        &mut tx,
        &consent.customer_id,
        recorded,
        Kind::ConsentRecorded(pb::ConsentRecorded { consent: Some(consent.clone()) }),
    )
    .await?;
    consents::Entity::insert(consents::ActiveModel {
        id: Set(consent.id.clone()),
        customer_id: Set(consent.customer_id.clone()),
        channel: Set(consent.channel),
        purpose: Set(consent.purpose),
        state: Set(consent.state),
        recorded_at_us: Set(recorded.timestamp_micros()),
        expires_at_us: Set(cmd.expires_at.map(|t| t.timestamp_micros())),
        sequence: Set(sequence),
        body: Set(body(&consent)),
    })
    .exec_without_returning(&*tx)
    .await?;
    lifecycle::note_facts(&tx, &holder, "consents", &[&consent.id]).await?;
    let response = pb::RecordConsentResponse { consent: Some(consent), sequence };
    idempotency::complete_for(&tx, SCOPE, &cmd.request_id, &requested, &response).await?;
    tx.commit().await?;
    Ok(response)
}

/// A page of a customer's consent history, oldest first, and the next
/// page's token.
pub async fn list_consents(store: &Store, q: &ConsentPage) -> Result<(Vec<pb::Consent>, String), RuntimeError> {
    use consents::Column as C;
    let customer = lifecycle::holder(store.conn(), &q.customer_id).await?.id;
    let mut find = consents::Entity::find().filter(C::CustomerId.eq(customer.as_str()));
    if let Some(after) = q.after_sequence {
        find = find.filter(C::Sequence.gt(after));
    }
    let mut rows = find.order_by_asc(C::Sequence).limit(q.page_size + 1).all(store.conn()).await?;
    let more = rows.len() as u64 > q.page_size;
    rows.truncate(q.page_size as usize);
    let next = match (more, rows.last()) {
        (true, Some(last)) => consent_token(last.sequence),
        _ => String::new(),
    };
    let items = rows.iter().map(consent_from_row).collect::<Result<Vec<_>, _>>()?;
    Ok((items, next))
}

/// A customer's policy with its etag (the defaults, etag "0", if none was set).
async fn load_policy<C: ConnectionTrait>(c: &C, customer_id: &str) -> Result<pb::ContactPolicy, RuntimeError> {
    match contact_policies::Entity::find_by_id(customer_id.to_owned()).one(c).await? {
        Some(row) => {
            let mut p: pb::ContactPolicy = decode(&row.body, "contact policy")?;
            p.customer_id = row.customer_id;
            p.etag = row.version.to_string();
            Ok(p)
        }
        None => Ok(default_policy(customer_id)),
    }
}

/// A customer's contact policy.
pub async fn get_contact_policy(store: &Store, customer_id: &str) -> Result<pb::ContactPolicy, RuntimeError> {
    let customer = lifecycle::holder(store.conn(), customer_id).await?.id;
    load_policy(store.conn(), &customer).await
}

/// Replace a customer's contact policy, idempotently; FAILED_PRECONDITION
/// if the caller's etag is not the current one. (Preferences are not a feed
/// event: the feed's event kinds have none for them.)
pub async fn update_contact_policy(
    store: &Store,
    cmd: PolicyUpdate,
) -> Result<pb::UpdateContactPolicyResponse, RuntimeError> {
    const SCOPE: &str = "UpdateContactPolicy";
    let tx = store.begin_write().await?;
    if let Claim::Replay(r) = idempotency::claim(&tx, SCOPE, &cmd.request_id, cmd.fingerprint).await? {
        tx.rollback().await?;
        return Ok(r);
    }
    let requested = cmd.policy.customer_id.clone();
    let customer_id = lifecycle::write_holder(&tx, &requested).await?.id;
    lock_customer_contacts(&tx, &customer_id).await?;
    let current = contact_policies::Entity::find_by_id(customer_id.clone()).one(&*tx).await?;
    let version = current.as_ref().map_or(0, |r| r.version);
    if let Some(expected) = &cmd.expected_etag
        && *expected != version.to_string()
    {
        return refuse(
            tx,
            RuntimeError::FailedPrecondition(format!(
                "etag {expected:?} is not the current one ({version}): read the policy again"
            )),
        )
        .await;
    }
    let mut policy = cmd.policy;
    policy.customer_id.clone_from(&customer_id);
    let row = contact_policies::ActiveModel {
        customer_id: Set(customer_id.clone()),
        version: Set(version + 1),
        updated_at_us: Set(now().timestamp_micros()),
        body: Set(body(&policy)),
    };
    if current.is_some() {
        contact_policies::Entity::update(row).exec(&*tx).await?;
    } else {
        contact_policies::Entity::insert(row).exec_without_returning(&*tx).await?;
    }
    policy.etag = (version + 1).to_string();
    let response = pb::UpdateContactPolicyResponse { policy: Some(policy) };
    idempotency::complete_for(&tx, SCOPE, &cmd.request_id, &requested, &response).await?;
    tx.commit().await?;
    Ok(response)
}

/// Decide on a contact with `customer_id` through `c` (the pool, or the
/// write transaction that records the contact): the latest consent record
/// for the channel × purpose, the policy, and for a capped marketing
/// contact the outbound marketing contacts in the week up to it.
pub(super) async fn decide<C: ConnectionTrait>(
    c: &C,
    customer_id: &str,
    req: &ContactRequest,
) -> Result<Decision, RuntimeError> {
    use consents::Column as K;
    let latest = consents::Entity::find()
        .filter(K::CustomerId.eq(customer_id))
        .filter(K::Channel.eq(req.channel as i32))
        .filter(K::Purpose.eq(req.purpose as i32))
        .order_by_desc(K::Sequence)
        .one(c)
        .await?;
    let history = latest.as_ref().map(fact_from_row).transpose()?.into_iter().collect::<Vec<_>>();
    let policy = policy_from_pb(&load_policy(c, customer_id).await?)?;
    let recent = if req.purpose == pb::Purpose::Marketing && policy.max_contacts_per_week > 0 {
        use interactions::Column as I;
        interactions::Entity::find()
            .filter(I::CustomerId.eq(customer_id))
            .filter(I::Direction.eq(pb::Direction::Outbound as i32))
            .filter(I::Purpose.eq(pb::Purpose::Marketing as i32))
            .filter(I::OccurredAtUs.gt(contact::cap_window_start(req.at).timestamp_micros()))
            .filter(I::OccurredAtUs.lte(req.at.timestamp_micros()))
            .count(c)
            .await? as i64
    } else {
        0
    };
    Ok(contact::evaluate(&history, &policy, recent, req))
}

/// EvaluateContact.
pub async fn evaluate_contact(store: &Store, q: &ContactQuery) -> Result<pb::ContactDecision, RuntimeError> {
    let customer = lifecycle::holder(store.conn(), &q.customer_id).await?.id;
    let d = decide(store.conn(), &customer, &q.request).await?;
    Ok(pb::ContactDecision { allowed: d.allowed, reason: d.reason, consent_id: d.consent_id.unwrap_or_default() })
}
