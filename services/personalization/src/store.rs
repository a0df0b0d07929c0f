//! The personalization store: sea-orm entities and the queries and write
//! transactions of every RPC. Each row keeps its indexed columns beside the
//! full record (`body`, the encoded message).

use crm_proto::personalization::v1::{self as pb, OfferState};
use crm_runtime::{
    db::Store,
    error::RuntimeError,
    idempotency::{self, Claim, fingerprint},
    ids::new_id,
    time::{now, to_timestamp},
};
use prost::Message;
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use crate::conversions::{NewOffer, OfferQuery, offer_token};

/// Offer definitions.
pub mod offers {
    #![allow(missing_docs)]
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "offers")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub state: i32,
        pub create_time_us: i64,
        pub body: Vec<u8>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

fn offer_from_row(m: &offers::Model) -> Result<pb::Offer, RuntimeError> {
    pb::Offer::decode(m.body.as_slice()).map_err(|e| RuntimeError::Internal(format!("stored offer undecodable: {e}")))
}

/// An etag for `offer`: a fingerprint of its content (including its update
/// time), so it changes on every update.
fn etag(offer: &pb::Offer) -> String {
    let unversioned = pb::Offer { etag: String::new(), ..offer.clone() };
    format!("{:016x}", fingerprint(&unversioned.encode_to_vec()) as u64)
}

/// Create one offer, idempotently; returns it as stored.
pub async fn create_offer(store: &Store, cmd: NewOffer) -> Result<pb::CreateOfferResponse, RuntimeError> {
    const SCOPE: &str = "CreateOffer";
    let tx = store.begin_write().await?;
    if let Claim::Replay(r) = idempotency::claim(&tx, SCOPE, &cmd.request_id, cmd.fingerprint).await? {
        tx.rollback().await?;
        return Ok(r);
    }
    let created = now();
    let mut offer = pb::Offer {
        id: new_id(),
        create_time: Some(to_timestamp(created)),
        update_time: Some(to_timestamp(created)),
        ..cmd.offer
    };
    offer.etag = etag(&offer);
    offers::Entity::insert(offers::ActiveModel {
        id: Set(offer.id.clone()),
        state: Set(offer.state),
        create_time_us: Set(created.timestamp_micros()),
        body: Set(offer.encode_to_vec()),
    })
    .exec_without_returning(&*tx)
    .await?;
    let response = pb::CreateOfferResponse { offer: Some(offer) };
    idempotency::complete(&tx, SCOPE, &cmd.request_id, &response).await?;
    tx.commit().await?;
    Ok(response)
}

/// One offer by id.
pub async fn get_offer(store: &Store, id: &str) -> Result<pb::Offer, RuntimeError> {
    let row = offers::Entity::find_by_id(id.to_owned())
        .one(store.conn())
        .await?
        .ok_or_else(|| RuntimeError::NotFound { resource: "offer", id: id.to_owned() })?;
    offer_from_row(&row)
}

/// A page of offers, oldest first (ids are UUIDv7, so id order is creation
/// order), and the next page's token.
pub async fn list_offers(store: &Store, q: &OfferQuery) -> Result<(Vec<pb::Offer>, String), RuntimeError> {
    use offers::Column as C;
    let mut find = offers::Entity::find();
    if let Some(s) = q.state {
        find = find.filter(C::State.eq(s as i32));
    }
    if let Some(after) = &q.after {
        find = find.filter(C::Id.gt(after.as_str()));
    }
    let mut rows = find.order_by_asc(C::Id).limit(q.page_size + 1).all(store.conn()).await?;
    let more = rows.len() as u64 > q.page_size;
    rows.truncate(q.page_size as usize);
    let next = match (more, rows.last()) {
        (true, Some(last)) => offer_token(&last.id),
        _ => String::new(),
    };
    let items = rows.iter().map(offer_from_row).collect::<Result<Vec<_>, _>>()?;
    Ok((items, next))
}

/// Every ACTIVE offer, oldest first. Offer catalogues are small (tens to a
/// few hundred definitions), so NextBestOffers loads them all and filters by
/// channel and validity window in domain code rather than in SQL.
pub async fn active_offers(store: &Store) -> Result<Vec<pb::Offer>, RuntimeError> {
    use offers::Column as C;
    let rows = offers::Entity::find()
        .filter(C::State.eq(OfferState::Active as i32))
        .order_by_asc(C::Id)
        .all(store.conn())
        .await?;
    rows.iter().map(offer_from_row).collect()
}
