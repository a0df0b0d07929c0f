//! The gRPC surface of personalization: convert → store → domain → convert
//! back. RPCs of later issues answer UNIMPLEMENTED (generated defaults).

use crm_proto::{
    common::v1::FeedSequences,
    personalization::v1::{self as pb, personalization_service_server::PersonalizationService},
};
use crm_runtime::db::Store;
use crm_runtime::validate;
use tonic::{Request, Response, Status};

use crate::{
    conversions::{NewOffer, NextBestOffersQuery, OfferQuery},
    domain, store,
};

/// The personalization service.
#[derive(Clone, Debug)]
pub struct PersonalizationApi {
    store: Store,
}

impl PersonalizationApi {
    /// A service over `store`.
    pub fn new(store: Store) -> Self {
        PersonalizationApi { store }
    }
}

#[tonic::async_trait]
impl PersonalizationService for PersonalizationApi {
    #[tracing::instrument(skip_all, fields(offer_id))]
    async fn create_offer(
        &self,
        request: Request<pb::CreateOfferRequest>,
    ) -> Result<Response<pb::CreateOfferResponse>, Status> {
        let cmd = NewOffer::try_from(request.into_inner())?;
        let response = store::create_offer(&self.store, cmd).await?;
        if let Some(o) = &response.offer {
            tracing::Span::current().record("offer_id", o.id.as_str());
        }
        Ok(Response::new(response))
    }

    async fn get_offer(&self, request: Request<pb::GetOfferRequest>) -> Result<Response<pb::GetOfferResponse>, Status> {
        let id = request.into_inner().offer_id;
        validate::require_id("offer_id", &id)?;
        let offer = store::get_offer(&self.store, &id).await?;
        Ok(Response::new(pb::GetOfferResponse { offer: Some(offer) }))
    }

    async fn list_offers(
        &self,
        request: Request<pb::ListOffersRequest>,
    ) -> Result<Response<pb::ListOffersResponse>, Status> {
        let query = OfferQuery::try_from(request.into_inner())?;
        let (offers, next_page_token) = store::list_offers(&self.store, &query).await?;
        Ok(Response::new(pb::ListOffersResponse { offers, next_page_token }))
    }

    #[tracing::instrument(skip_all, fields(customer_id))]
    async fn next_best_offers(
        &self,
        request: Request<pb::NextBestOffersRequest>,
    ) -> Result<Response<pb::NextBestOffersResponse>, Status> {
        let query = NextBestOffersQuery::try_from(request.into_inner())?;
        tracing::Span::current().record("customer_id", query.customer_id.as_str());
        let candidates = store::active_offers(&self.store).await?;
        let offers = domain::next_best_offers(candidates, query.channel, query.at, query.max_offers);
        // No feed is consumed yet: the answer reflects no feed position, and
        // 0 ("any") in both fields says exactly that.
        Ok(Response::new(pb::NextBestOffersResponse { offers, as_of_sequence: Some(FeedSequences::default()) }))
    }
}
