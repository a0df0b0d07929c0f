//! The gRPC surface of interaction: convert → store → convert back.

use crm_proto::interaction::v1::{self as pb, interaction_service_server::InteractionService};
use crm_runtime::{
    db::Store,
    feed::{self, ResponseStream},
    server::Shutdown,
    validate,
};
use tonic::{Request, Response, Status};

use crate::{
    conversions::{
        AnalysisQuery, ComplaintUpdate, ConsentPage, ContactQuery, DefectionQuery, NewComplaint, NewConsent,
        NewDefection, NewInteraction, NewPurchase, NewReturn, NewSurveyResponse, PolicyUpdate, TimelineQuery,
    },
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
        let returns = store::order_returns(&self.store, &id).await?;
        Ok(Response::new(pb::GetOrderResponse { order: Some(order), returns }))
    }

    #[tracing::instrument(skip_all, fields(order_id))]
    async fn record_return(
        &self,
        request: Request<pb::RecordReturnRequest>,
    ) -> Result<Response<pb::RecordReturnResponse>, Status> {
        let cmd = NewReturn::try_from(request.into_inner())?;
        tracing::Span::current().record("order_id", cmd.order_id.as_str());
        Ok(Response::new(store::record_return(&self.store, cmd).await?))
    }

    #[tracing::instrument(skip_all, fields(customer_id))]
    async fn record_survey_response(
        &self,
        request: Request<pb::RecordSurveyResponseRequest>,
    ) -> Result<Response<pb::RecordSurveyResponseResponse>, Status> {
        let cmd = NewSurveyResponse::try_from(request.into_inner())?;
        tracing::Span::current().record("customer_id", cmd.response.customer_id.as_str());
        Ok(Response::new(store::record_survey_response(&self.store, cmd).await?))
    }

    async fn analyze_satisfaction(
        &self,
        request: Request<pb::AnalyzeSatisfactionRequest>,
    ) -> Result<Response<pb::AnalyzeSatisfactionResponse>, Status> {
        let query = AnalysisQuery::try_from(request.into_inner())?;
        let buckets = store::analyze_satisfaction(&self.store, &query).await?;
        Ok(Response::new(pb::AnalyzeSatisfactionResponse { buckets }))
    }

    async fn analyze_perceived_value(
        &self,
        request: Request<pb::AnalyzePerceivedValueRequest>,
    ) -> Result<Response<pb::AnalyzePerceivedValueResponse>, Status> {
        let query = AnalysisQuery::try_from(request.into_inner())?;
        Ok(Response::new(store::analyze_perceived_value(&self.store, &query).await?))
    }

    #[tracing::instrument(skip_all, fields(customer_id))]
    async fn record_complaint(
        &self,
        request: Request<pb::RecordComplaintRequest>,
    ) -> Result<Response<pb::RecordComplaintResponse>, Status> {
        let cmd = NewComplaint::try_from(request.into_inner())?;
        tracing::Span::current().record("customer_id", cmd.complaint.customer_id.as_str());
        Ok(Response::new(store::record_complaint(&self.store, cmd).await?))
    }

    #[tracing::instrument(skip_all, fields(complaint_id))]
    async fn update_complaint(
        &self,
        request: Request<pb::UpdateComplaintRequest>,
    ) -> Result<Response<pb::UpdateComplaintResponse>, Status> {
        let cmd = ComplaintUpdate::try_from(request.into_inner())?;
        tracing::Span::current().record("complaint_id", cmd.complaint_id.as_str());
        Ok(Response::new(store::update_complaint(&self.store, cmd).await?))
    }

    #[tracing::instrument(skip_all, fields(customer_id))]
    async fn record_defection(
        &self,
        request: Request<pb::RecordDefectionRequest>,
    ) -> Result<Response<pb::RecordDefectionResponse>, Status> {
        let cmd = NewDefection::try_from(request.into_inner())?;
        tracing::Span::current().record("customer_id", cmd.defection.customer_id.as_str());
        Ok(Response::new(store::record_defection(&self.store, cmd).await?))
    }

    async fn analyze_defection_causes(
        &self,
        request: Request<pb::AnalyzeDefectionCausesRequest>,
    ) -> Result<Response<pb::AnalyzeDefectionCausesResponse>, Status> {
        let query = DefectionQuery::try_from(request.into_inner())?;
        Ok(Response::new(store::analyze_defection_causes(&self.store, query).await?))
    }

    #[tracing::instrument(skip_all, fields(customer_id))]
    async fn record_consent(
        &self,
        request: Request<pb::RecordConsentRequest>,
    ) -> Result<Response<pb::RecordConsentResponse>, Status> {
        let cmd = NewConsent::try_from(request.into_inner())?;
        tracing::Span::current().record("customer_id", cmd.consent.customer_id.as_str());
        Ok(Response::new(store::record_consent(&self.store, cmd).await?))
    }

    async fn list_consents(
        &self,
        request: Request<pb::ListConsentsRequest>,
    ) -> Result<Response<pb::ListConsentsResponse>, Status> {
        let query = ConsentPage::try_from(request.into_inner())?;
        let (consents, next_page_token) = store::list_consents(&self.store, &query).await?;
        Ok(Response::new(pb::ListConsentsResponse { consents, next_page_token }))
    }

    async fn get_contact_policy(
        &self,
        request: Request<pb::GetContactPolicyRequest>,
    ) -> Result<Response<pb::GetContactPolicyResponse>, Status> {
        let id = request.into_inner().customer_id;
        validate::require_id("customer_id", &id)?;
        let policy = store::get_contact_policy(&self.store, &id).await?;
        Ok(Response::new(pb::GetContactPolicyResponse { policy: Some(policy) }))
    }

    #[tracing::instrument(skip_all, fields(customer_id))]
    async fn update_contact_policy(
        &self,
        request: Request<pb::UpdateContactPolicyRequest>,
    ) -> Result<Response<pb::UpdateContactPolicyResponse>, Status> {
        let cmd = PolicyUpdate::try_from(request.into_inner())?;
        tracing::Span::current().record("customer_id", cmd.policy.customer_id.as_str());
        Ok(Response::new(store::update_contact_policy(&self.store, cmd).await?))
    }

    #[tracing::instrument(skip_all, fields(customer_id))]
    async fn evaluate_contact(
        &self,
        request: Request<pb::EvaluateContactRequest>,
    ) -> Result<Response<pb::EvaluateContactResponse>, Status> {
        let query = ContactQuery::try_from(request.into_inner())?;
        tracing::Span::current().record("customer_id", query.customer_id.as_str());
        let decision = store::evaluate_contact(&self.store, &query).await?;
        Ok(Response::new(pb::EvaluateContactResponse { decision: Some(decision) }))
    }

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<ResponseStream<pb::SubscribeResponse>>, Status> {
        feed::subscribe_response::<pb::InteractionEvent, _>(
            self.store.clone(),
            self.shutdown.clone(),
            request.into_inner().after_sequence,
            |event, trace_context| pb::SubscribeResponse { event: Some(event), trace_context },
        )
    }
}
