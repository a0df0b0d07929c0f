//! The interaction store: sea-orm entities and the queries and write
//! transactions of every RPC. Each row keeps its indexed columns beside the
//! full record (`body`, the encoded message). Every write runs in one
//! transaction: claim the idempotency key, do the work, append its event,
//! store the response, commit; it returns the event's sequence.
//!
//! Interactions and purchases are here; returns, the voice of the customer,
//! complaints and defections, and consent and contact policy have a module
//! each; `lifecycle` follows the identification feed (merges, unmerges,
//! erasures). A write or read for a customer merged away acts on the
//! survivor while the merge stands (see `lifecycle`).

mod complaints;
mod consent;
pub mod lifecycle;
mod returns;
mod voice;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use crm_proto::{
    common::v1::{Channel, Money},
    interaction::v1::{self as pb, InteractionEvent, interaction_event::Kind},
};
use crm_runtime::{
    db::{Store, WriteTxn},
    error::RuntimeError,
    idempotency,
    ids::new_id,
    time::{now, to_timestamp},
};
use prost::Message;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DatabaseBackend, DbErr, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, QueryTrait,
};

pub use self::{
    complaints::{analyze_defection_causes, record_complaint, record_defection, update_complaint},
    consent::{evaluate_contact, get_contact_policy, list_consents, record_consent, update_contact_policy},
    lifecycle::IdentityLifecycle,
    returns::{order_returns, record_return},
    voice::{analyze_perceived_value, analyze_satisfaction, record_survey_response},
};
use crate::conversions::{NewInteraction, NewPurchase, TimelineQuery, timeline_token};

/// Interactions (the timeline).
pub mod interactions {
    #![allow(missing_docs)]
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "interactions")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub customer_id: String,
        pub channel: i32,
        pub direction: i32,
        pub kind: i32,
        pub occurred_at_us: i64,
        pub thread_id: String,
        pub order_id: Option<String>,
        pub sequence: i64,
        pub body: Vec<u8>,
        pub purpose: i32,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Orders.
pub mod orders {
    #![allow(missing_docs)]
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "orders")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub customer_id: String,
        pub order_number: String,
        pub currency_code: String,
        pub revenue_minor: i64,
        pub cost_minor: i64,
        pub occurred_at_us: i64,
        pub body: Vec<u8>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Order lines, for returns and product analyses.
pub mod order_lines {
    #![allow(missing_docs)]
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "order_lines")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub order_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub line_no: i32,
        pub sku: String,
        pub category: String,
        pub quantity: i64,
        pub unit_price_minor: i64,
        pub unit_cost_minor: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// A record stored whole in a `body` column beside its indexed columns.
trait Stored: Message + Clone {
    /// Forget whom it is about.
    fn clear_customer(&mut self);
}

macro_rules! stored {
    ($($t:ty),* $(,)?) => {
        $(impl Stored for $t {
            fn clear_customer(&mut self) {
                self.customer_id.clear();
            }
        })*
    };
}

stored!(
    pb::Interaction,
    pb::Order,
    pb::OrderReturn,
    pb::SurveyResponse,
    pb::Complaint,
    pb::Defection,
    pb::Consent,
    pb::ContactPolicy
);

/// The `body` of a record: the record without its customer id. The
/// `customer_id` column is authoritative (merges and unmerges move it, and
/// reads take it from there); an id inside the body would outlive them.
fn body<M: Stored>(record: &M) -> Vec<u8> {
    let mut m = record.clone();
    m.clear_customer();
    m.encode_to_vec()
}

fn decode<M: Message + Default>(bytes: &[u8], what: &str) -> Result<M, RuntimeError> {
    M::decode(bytes).map_err(|e| RuntimeError::Internal(format!("stored {what} undecodable: {e}")))
}

fn interaction_from_row(m: &interactions::Model) -> Result<pb::Interaction, RuntimeError> {
    let mut i: pb::Interaction = decode(&m.body, "interaction")?;
    i.customer_id.clone_from(&m.customer_id);
    Ok(i)
}

fn interaction_row(i: &pb::Interaction, occurred_at_us: i64) -> interactions::ActiveModel {
    interactions::ActiveModel {
        id: Set(i.id.clone()),
        customer_id: Set(i.customer_id.clone()),
        channel: Set(i.channel),
        direction: Set(i.direction),
        kind: Set(i.r#type),
        occurred_at_us: Set(occurred_at_us),
        thread_id: Set(i.thread_id.clone()),
        order_id: Set((!i.order_id.is_empty()).then(|| i.order_id.clone())),
        sequence: Set(i.sequence),
        body: Set(body(i)),
        purpose: Set(i.purpose),
    }
}

/// A new interaction that a recorded fact puts on the customer's timeline
/// (a return, a survey response, a complaint, a defection): inbound, no
/// thread, no attributes.
fn fact_interaction(
    customer_id: &str,
    channel: Channel,
    kind: pb::InteractionType,
    occurred_at: DateTime<Utc>,
    recorded: DateTime<Utc>,
) -> pb::Interaction {
    pb::Interaction {
        id: new_id(),
        customer_id: customer_id.to_owned(),
        channel: channel as i32,
        direction: pb::Direction::Inbound as i32,
        r#type: kind as i32,
        occur_time: Some(to_timestamp(occurred_at)),
        record_time: Some(to_timestamp(recorded)),
        thread_id: String::new(),
        attributes: Default::default(),
        purpose: 0,
        order_id: String::new(),
        sequence: 0,
    }
}

/// Append an event of `kind` about `customer_id` (for facts without a
/// timeline interaction); returns its sequence.
async fn append_event(
    tx: &mut WriteTxn,
    customer_id: &str,
    recorded: DateTime<Utc>,
    kind: Kind,
) -> Result<i64, RuntimeError> {
    let (sequence, _) = tx
        .append_with(customer_id, |seq| InteractionEvent {
            sequence: seq,
            occur_time: Some(to_timestamp(recorded)),
            customer_id: customer_id.to_owned(),
            kind: Some(kind),
        })
        .await?;
    Ok(sequence)
}

/// Roll `tx` back and answer `err` (a refusal decided inside the write).
async fn refuse<T>(tx: WriteTxn, err: RuntimeError) -> Result<T, RuntimeError> {
    tx.rollback().await?;
    Err(err)
}

/// On PostgreSQL, lock row `id` of `table` until `tx` ends, so that a
/// check-then-write on it cannot interleave with another (SQLite already
/// runs one writer at a time).
async fn lock_row(tx: &WriteTxn, table: &'static str, id: &str) -> Result<(), DbErr> {
    if tx.get_database_backend() == DatabaseBackend::Postgres {
        tx.execute_raw(tx.stmt(&format!("SELECT id FROM {table} WHERE id = ? FOR UPDATE"), vec![id.into()])).await?;
    }
    Ok(())
}

/// On PostgreSQL, serialise the writes that decide on one customer's
/// contacts (outbound contacts checked against the weekly cap, policy
/// updates) with a transaction-scoped advisory lock; a customer may have no
/// row to lock yet. SQLite already runs one writer at a time.
async fn lock_customer_contacts(tx: &WriteTxn, customer_id: &str) -> Result<(), DbErr> {
    if tx.get_database_backend() == DatabaseBackend::Postgres {
        let key = idempotency::fingerprint(format!("contacts:{customer_id}").as_bytes());
        tx.execute_raw(tx.stmt("SELECT pg_advisory_xact_lock(?)", vec![key.into()])).await?;
    }
    Ok(())
}

/// Append the event that records `interaction` (made by `kind` from the
/// interaction with its sequence set) and store the interaction's row, in
/// `tx`, both with the write's deferred statements. Returns the sequence.
async fn append_interaction(
    tx: &mut WriteTxn,
    interaction: &mut pb::Interaction,
    recorded: DateTime<Utc>,
    occurred_at_us: i64,
    kind: impl FnOnce(pb::Interaction) -> Kind,
) -> Result<i64, RuntimeError> {
    let customer_id = interaction.customer_id.clone();
    let (sequence, _) = tx
        .append_with(&customer_id, |seq| {
            interaction.sequence = seq;
            InteractionEvent {
                sequence: seq,
                occur_time: Some(to_timestamp(recorded)),
                customer_id: customer_id.clone(),
                kind: Some(kind(interaction.clone())),
            }
        })
        .await?;
    let insert =
        interactions::Entity::insert(interaction_row(interaction, occurred_at_us)).build(tx.get_database_backend());
    tx.defer(insert);
    Ok(sequence)
}

/// Record one interaction, idempotently; returns it with its sequence. An
/// outbound contact with a purpose is first decided as EvaluateContact
/// would, inside this transaction (with the customer's contacts
/// serialised, so concurrent contacts cannot overrun the weekly cap), and
/// refused with FAILED_PRECONDITION and the reason when denied. The write
/// is group-committed with the writes queued beside it.
pub async fn record_interaction(
    store: &Store,
    cmd: NewInteraction,
) -> Result<pb::RecordInteractionResponse, RuntimeError> {
    let lookup = lifecycle::claim_lookup(store.backend(), INTERACTION_SCOPE, &cmd.request_id, &cmd.customer_id);
    let cmd = Arc::new(cmd);
    store.group_commit_with_lookup(lookup, move |tx| Box::pin(record_interaction_in(tx, Arc::clone(&cmd)))).await
}

/// RecordInteraction's idempotency scope.
const INTERACTION_SCOPE: &str = "RecordInteraction";

/// RecordInteraction's work in `tx`: a refusal leaves it to the caller to
/// roll back.
async fn record_interaction_in(
    tx: &mut WriteTxn,
    cmd: Arc<NewInteraction>,
) -> Result<pb::RecordInteractionResponse, RuntimeError> {
    let holder = match lifecycle::claim_and_holder(tx, &cmd.request_id, cmd.fingerprint, &cmd.customer_id).await? {
        Ok(holder) => holder,
        Err(replay) => return Ok(replay),
    };
    if cmd.direction == pb::Direction::Outbound && cmd.purpose != pb::Purpose::Unspecified {
        // The decision reads the contacts recorded so far, those of the
        // writes before in the batch included.
        tx.flush_deferred().await?;
        lock_customer_contacts(tx, &holder.id).await?;
        let contact =
            crate::domain::contact::ContactRequest { channel: cmd.channel, purpose: cmd.purpose, at: cmd.occurred_at };
        let decision = consent::decide(&**tx, &holder.id, &contact).await?;
        if !decision.allowed {
            return Err(RuntimeError::FailedPrecondition(format!("contact refused: {}", decision.reason)));
        }
    }
    let recorded = now();
    let mut interaction = pb::Interaction {
        id: new_id(),
        customer_id: holder.id.clone(),
        channel: cmd.channel as i32,
        direction: cmd.direction as i32,
        r#type: cmd.kind as i32,
        occur_time: Some(to_timestamp(cmd.occurred_at)),
        record_time: Some(to_timestamp(recorded)),
        thread_id: cmd.thread_id.clone(),
        attributes: cmd.attributes.clone(),
        purpose: cmd.purpose as i32,
        order_id: String::new(),
        sequence: 0,
    };
    let sequence = append_interaction(tx, &mut interaction, recorded, cmd.occurred_at.timestamp_micros(), |i| {
        Kind::InteractionRecorded(pb::InteractionRecorded { interaction: Some(i) })
    })
    .await?;
    lifecycle::note_facts(tx, &holder, "interactions", &[&interaction.id]).await?;
    let response = pb::RecordInteractionResponse { interaction: Some(interaction), sequence };
    idempotency::record_later(tx, INTERACTION_SCOPE, &cmd.request_id, cmd.fingerprint, &cmd.customer_id, &response);
    Ok(response)
}

fn money(currency: &str, minor: i64) -> Option<Money> {
    Some(Money { currency_code: currency.to_owned(), minor_units: minor })
}

/// Record a purchase — the order, its lines and its interaction —
/// idempotently, group-committed with the writes queued beside it.
pub async fn record_purchase(store: &Store, cmd: NewPurchase) -> Result<pb::RecordPurchaseResponse, RuntimeError> {
    let lookup = lifecycle::claim_lookup(store.backend(), PURCHASE_SCOPE, &cmd.request_id, &cmd.customer_id);
    let cmd = Arc::new(cmd);
    store.group_commit_with_lookup(lookup, move |tx| Box::pin(record_purchase_in(tx, Arc::clone(&cmd)))).await
}

/// RecordPurchase's idempotency scope.
const PURCHASE_SCOPE: &str = "RecordPurchase";

/// RecordPurchase's work in `tx`.
async fn record_purchase_in(
    tx: &mut WriteTxn,
    cmd: Arc<NewPurchase>,
) -> Result<pb::RecordPurchaseResponse, RuntimeError> {
    let holder = match lifecycle::claim_and_holder(tx, &cmd.request_id, cmd.fingerprint, &cmd.customer_id).await? {
        Ok(holder) => holder,
        Err(replay) => return Ok(replay),
    };
    let recorded = now();
    let occurred_at_us = cmd.occurred_at.timestamp_micros();
    let order = pb::Order {
        id: new_id(),
        customer_id: holder.id.clone(),
        order_number: cmd.order_number.clone(),
        currency_code: cmd.currency_code.clone(),
        lines: cmd.lines.clone(),
        revenue: money(&cmd.currency_code, cmd.totals.revenue),
        cost: money(&cmd.currency_code, cmd.totals.cost),
        margin: money(&cmd.currency_code, cmd.totals.margin()),
        occur_time: Some(to_timestamp(cmd.occurred_at)),
        channel: cmd.channel as i32,
    };
    let mut interaction = pb::Interaction {
        id: new_id(),
        customer_id: holder.id.clone(),
        channel: cmd.channel as i32,
        direction: pb::Direction::Inbound as i32,
        r#type: pb::InteractionType::Purchase as i32,
        occur_time: Some(to_timestamp(cmd.occurred_at)),
        record_time: Some(to_timestamp(recorded)),
        thread_id: cmd.thread_id.clone(),
        attributes: cmd.attributes.clone(),
        purpose: 0,
        order_id: order.id.clone(),
        sequence: 0,
    };
    let sequence = append_interaction(tx, &mut interaction, recorded, occurred_at_us, |i| {
        Kind::PurchaseRecorded(pb::PurchaseRecorded { order: Some(order.clone()), interaction: Some(i) })
    })
    .await?;
    let backend = tx.get_database_backend();
    let insert_order = orders::Entity::insert(orders::ActiveModel {
        id: Set(order.id.clone()),
        customer_id: Set(order.customer_id.clone()),
        order_number: Set(order.order_number.clone()),
        currency_code: Set(order.currency_code.clone()),
        revenue_minor: Set(cmd.totals.revenue),
        cost_minor: Set(cmd.totals.cost),
        occurred_at_us: Set(occurred_at_us),
        body: Set(body(&order)),
    })
    .build(backend);
    tx.defer(insert_order);
    let lines = order.lines.iter().enumerate().map(|(i, l)| order_lines::ActiveModel {
        order_id: Set(order.id.clone()),
        line_no: Set(i as i32),
        sku: Set(l.sku.clone()),
        category: Set(l.category.clone()),
        quantity: Set(l.quantity),
        unit_price_minor: Set(l.unit_price_minor),
        unit_cost_minor: Set(l.unit_cost_minor),
    });
    if !order.lines.is_empty() {
        tx.defer(order_lines::Entity::insert_many(lines).build(backend));
    }
    lifecycle::note_facts(tx, &holder, "orders", &[&order.id]).await?;
    lifecycle::note_facts(tx, &holder, "interactions", &[&interaction.id]).await?;
    let response = pb::RecordPurchaseResponse { order: Some(order), interaction: Some(interaction), sequence };
    idempotency::record_later(tx, PURCHASE_SCOPE, &cmd.request_id, cmd.fingerprint, &cmd.customer_id, &response);
    Ok(response)
}

/// One interaction by id.
pub async fn get_interaction(store: &Store, id: &str) -> Result<pb::Interaction, RuntimeError> {
    let row = interactions::Entity::find_by_id(id.to_owned())
        .one(store.conn())
        .await?
        .ok_or_else(|| RuntimeError::NotFound { resource: "interaction", id: id.to_owned() })?;
    interaction_from_row(&row)
}

/// One order by id.
pub async fn get_order(store: &Store, id: &str) -> Result<pb::Order, RuntimeError> {
    find_order(store.conn(), id).await
}

/// One order by id, read through `c` (the pool or a write transaction).
async fn find_order<C: ConnectionTrait>(c: &C, id: &str) -> Result<pb::Order, RuntimeError> {
    let row = orders::Entity::find_by_id(id.to_owned())
        .one(c)
        .await?
        .ok_or_else(|| RuntimeError::NotFound { resource: "order", id: id.to_owned() })?;
    let mut order: pb::Order = decode(&row.body, "order")?;
    order.customer_id = row.customer_id;
    Ok(order)
}

/// A page of a customer's timeline, newest first, and the next page's token.
pub async fn list_interactions(
    store: &Store,
    q: &TimelineQuery,
) -> Result<(Vec<pb::Interaction>, String), RuntimeError> {
    use interactions::Column as C;
    let customer = lifecycle::holder(store.conn(), &q.customer_id).await?.id;
    let mut find = interactions::Entity::find().filter(C::CustomerId.eq(customer.as_str()));
    if let Some(c) = q.channel {
        find = find.filter(C::Channel.eq(c as i32));
    }
    if let Some(k) = q.kind {
        find = find.filter(C::Kind.eq(k as i32));
    }
    if let Some(f) = q.from_us {
        find = find.filter(C::OccurredAtUs.gte(f));
    }
    if let Some(u) = q.until_us {
        find = find.filter(C::OccurredAtUs.lt(u));
    }
    if let Some(t) = &q.thread_id {
        find = find.filter(C::ThreadId.eq(t.as_str()));
    }
    if let Some((at, id)) = &q.after {
        find = find.filter(
            Condition::any()
                .add(C::OccurredAtUs.lt(*at))
                .add(Condition::all().add(C::OccurredAtUs.eq(*at)).add(C::Id.lt(id.as_str()))),
        );
    }
    let mut rows =
        find.order_by_desc(C::OccurredAtUs).order_by_desc(C::Id).limit(q.page_size + 1).all(store.conn()).await?;
    let more = rows.len() as u64 > q.page_size;
    rows.truncate(q.page_size as usize);
    let next = match (more, rows.last()) {
        (true, Some(last)) => timeline_token(last.occurred_at_us, &last.id),
        _ => String::new(),
    };
    let items = rows.iter().map(interaction_from_row).collect::<Result<Vec<_>, _>>()?;
    Ok((items, next))
}
