//! The gRPC surface of interaction: convert → store → convert back.
//! RPCs of later milestones answer UNIMPLEMENTED (generated defaults).

use crm_proto::interaction::v1::{self as pb, interaction_service_server::InteractionService};
use crm_runtime::{
    db::Store,
    feed::{self, ResponseStream},
    server::Shutdown,
    validate,
};
use tonic::{Request, Response, Status};

use crate::{
    conversions::{NewInteraction, NewPurchase, TimelineQuery},
    store,
};

/// The interaction service.
#[derive(Clone, Debug)]
pub struct InteractionApi {
    store: Store,
    shutdown: Shutdown,
}

impl InteractionApi {
    /// A service over `store`; feeds end on `shutdown`.
    pub fn new(store: Store, shutdown: Shutdown) -> Self {
        InteractionApi { store, shutdown }
    }
}

#[tonic::async_trait]
impl InteractionService for InteractionApi {
    #[tracing::instrument(skip_all, fields(customer_id))]
    async fn record_interaction(
        &self,
        request: Request<pb::RecordInteractionRequest>,
    ) -> Result<Response<pb::RecordInteractionResponse>, Status> {
        let cmd = NewInteraction::try_from(request.into_inner())?;
        tracing::Span::current().record("customer_id", cmd.customer_id.as_str());
        Ok(Response::new(store::record_interaction(&self.store, cmd).await?))
    }

    async fn get_interaction(
        &self,
        request: Request<pb::GetInteractionRequest>,
    ) -> Result<Response<pb::GetInteractionResponse>, Status> {
        let id = request.into_inner().interaction_id;
        validate::require_id("interaction_id", &id)?;
        let interaction = store::get_interaction(&self.store, &id).await?;
        Ok(Response::new(pb::GetInteractionResponse { interaction: Some(interaction) }))
    }

    async fn list_interactions(
        &self,
        request: Request<pb::ListInteractionsRequest>,
    ) -> Result<Response<pb::ListInteractionsResponse>, Status> {
        let query = TimelineQuery::try_from(request.into_inner())?;
        let (interactions, next_page_token) = store::list_interactions(&self.store, &query).await?;
        Ok(Response::new(pb::ListInteractionsResponse { interactions, next_page_token }))
    }

    #[tracing::instrument(skip_all, fields(customer_id))]
    async fn record_purchase(
        &self,
        request: Request<pb::RecordPurchaseRequest>,
    ) -> Result<Response<pb::RecordPurchaseResponse>, Status> {
        let cmd = NewPurchase::try_from(request.into_inner())?;
        tracing::Span::current().record("customer_id", cmd.customer_id.as_str());
        Ok(Response::new(store::record_purchase(&self.store, cmd).await?))
    }

    async fn get_order(&self, request: Request<pb::GetOrderRequest>) -> Result<Response<pb::GetOrderResponse>, Status> {
        let id = request.into_inner().order_id;
        validate::require_id("order_id", &id)?;
        let order = store::get_order(&self.store, &id).await?;
        Ok(Response::new(pb::GetOrderResponse { order: Some(order), returns: vec![] }))
    }

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<ResponseStream<pb::SubscribeResponse>>, Status> {
        feed::subscribe_response::<pb::InteractionEvent, _>(
            self.store.clone(),
            self.shutdown.clone(),
            request.into_inner().after_sequence,
            |event| pb::SubscribeResponse { event: Some(event) },
        )
    }
}
