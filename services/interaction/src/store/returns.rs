//! Returns: recorded against an order in the write transaction that checks
//! what is left to return, so concurrent returns cannot over-return.

use std::{collections::HashMap, sync::Arc};

use crm_proto::{
    common::v1::Channel,
    interaction::v1::{self as pb, interaction_event::Kind},
};
use crm_runtime::{
    db::{Store, WriteTxn},
    error::RuntimeError,
    idempotency::{self, Claim},
    ids::new_id,
    time::{now, to_timestamp},
};
use sea_orm::{ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder};

use super::{append_interaction, body, decode, fact_interaction, find_order, lock_row, money, order_lines};
use crate::{
    conversions::NewReturn,
    domain::{
        Line,
        returns::{self, Returnable},
    },
};

/// Returns of orders.
pub mod order_returns {
    #![allow(missing_docs)]
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "order_returns")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub order_id: String,
        pub customer_id: String,
        pub occurred_at_us: i64,
        pub sequence: i64,
        pub body: Vec<u8>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The order lines each return took units from.
pub mod order_return_lines {
    #![allow(missing_docs)]
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "order_return_lines")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub return_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub line_no: i32,
        pub order_id: String,
        pub order_line_no: i32,
        pub sku: String,
        pub quantity: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Units already returned per order line of `order_id`.
async fn returned_per_line<C: ConnectionTrait>(c: &C, order_id: &str) -> Result<HashMap<i32, i64>, RuntimeError> {
    let rows = c
        .query_all_raw(crm_runtime::db::stmt(
            c.get_database_backend(),
            "SELECT order_line_no, CAST(SUM(quantity) AS BIGINT) FROM order_return_lines WHERE order_id = ? GROUP BY order_line_no",
            vec![order_id.into()],
        ))
        .await?;
    rows.iter().map(|r| Ok((r.try_get_by_index::<i32>(0)?, r.try_get_by_index::<i64>(1)?))).collect()
}

/// Record a return, idempotently: NOT_FOUND for an unknown order,
/// FAILED_PRECONDITION (naming the sku) when more would be returned than
/// was bought. The order row is locked first (PostgreSQL), so what is left
/// to return is computed after every earlier return of it committed (and
/// after the earlier returns of its group-committed batch). A refused
/// return rolls back alone; the batch's other writes commit.
pub async fn record_return(store: &Store, cmd: NewReturn) -> Result<pb::RecordReturnResponse, RuntimeError> {
    let cmd = Arc::new(cmd);
    store.group_commit(move |tx| Box::pin(record_return_in(tx, Arc::clone(&cmd)))).await
}

/// RecordReturn's work in `tx`.
async fn record_return_in(tx: &mut WriteTxn, cmd: Arc<NewReturn>) -> Result<pb::RecordReturnResponse, RuntimeError> {
    const SCOPE: &str = "RecordReturn";
    if let Claim::Replay(r) = idempotency::claim(tx, SCOPE, &cmd.request_id, cmd.fingerprint).await? {
        return Ok(r);
    }
    super::lifecycle::lock_shared(tx).await?;
    lock_row(tx, "orders", &cmd.order_id).await?;
    let order = find_order(&**tx, &cmd.order_id).await?;
    let lines = order_lines::Entity::find()
        .filter(order_lines::Column::OrderId.eq(order.id.as_str()))
        .order_by_asc(order_lines::Column::LineNo)
        .all(&**tx)
        .await?;
    let returned = returned_per_line(&**tx, &order.id).await?;
    let returnable: Vec<Returnable> = lines
        .into_iter()
        .map(|l| Returnable {
            line_no: l.line_no,
            returned: returned.get(&l.line_no).copied().unwrap_or(0),
            sku: l.sku,
            category: l.category,
            line: Line { quantity: l.quantity, unit_price: l.unit_price_minor, unit_cost: l.unit_cost_minor },
        })
        .collect();
    let taken = returns::allocate(&returnable, &cmd.items)
        .map_err(|over| RuntimeError::FailedPrecondition(over.to_string()))?;
    let refund = returns::refund(&taken).ok_or_else(|| RuntimeError::Internal("refund overflows".into()))?;
    let recorded = now();
    let occurred_at_us = cmd.occurred_at.timestamp_micros();
    let order_return = pb::OrderReturn {
        id: new_id(),
        order_id: order.id.clone(),
        customer_id: order.customer_id.clone(),
        lines: taken
            .iter()
            .map(|t| pb::OrderLine {
                sku: t.sku.clone(),
                category: t.category.clone(),
                quantity: t.line.quantity,
                unit_price_minor: t.line.unit_price,
                unit_cost_minor: t.line.unit_cost,
            })
            .collect(),
        revenue: money(&order.currency_code, refund.revenue),
        margin: money(&order.currency_code, refund.margin()),
        occur_time: Some(to_timestamp(cmd.occurred_at)),
        reason: cmd.reason.clone(),
    };
    let channel = cmd.channel.unwrap_or_else(|| Channel::try_from(order.channel).unwrap_or_default());
    let mut interaction =
        fact_interaction(&order.customer_id, channel, pb::InteractionType::Return, cmd.occurred_at, recorded);
    interaction.order_id = order.id.clone();
    let sequence = append_interaction(tx, &mut interaction, recorded, occurred_at_us, |i| {
        Kind::ReturnRecorded(pb::ReturnRecorded { order_return: Some(order_return.clone()), interaction: Some(i) })
    })
    .await?;
    order_returns::Entity::insert(order_returns::ActiveModel {
        id: Set(order_return.id.clone()),
        order_id: Set(order.id.clone()),
        customer_id: Set(order.customer_id.clone()),
        occurred_at_us: Set(occurred_at_us),
        sequence: Set(sequence),
        body: Set(body(&order_return)),
    })
    .exec_without_returning(&**tx)
    .await?;
    let rows = taken.iter().enumerate().map(|(i, t)| order_return_lines::ActiveModel {
        return_id: Set(order_return.id.clone()),
        line_no: Set(i as i32),
        order_id: Set(order.id.clone()),
        order_line_no: Set(t.line_no),
        sku: Set(t.sku.clone()),
        quantity: Set(t.line.quantity),
    });
    order_return_lines::Entity::insert_many(rows).exec_without_returning(&**tx).await?;
    let response =
        pb::RecordReturnResponse { order_return: Some(order_return), sequence, interaction: Some(interaction) };
    tx.complete_later(SCOPE, &cmd.request_id, &order.customer_id, &response);
    Ok(response)
}

/// The returns of an order, oldest first.
pub async fn order_returns(store: &Store, order_id: &str) -> Result<Vec<pb::OrderReturn>, RuntimeError> {
    let rows = order_returns::Entity::find()
        .filter(order_returns::Column::OrderId.eq(order_id))
        .order_by_asc(order_returns::Column::Sequence)
        .all(store.conn())
        .await?;
    rows.iter()
        .map(|row| {
            let mut r: pb::OrderReturn = decode(&row.body, "return")?;
            r.customer_id.clone_from(&row.customer_id);
            Ok(r)
        })
        .collect()
}
