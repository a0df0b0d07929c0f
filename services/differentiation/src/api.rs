//! The gRPC surface of differentiation. Reads wait for `min_sequence` and
//! report `as_of_sequence`. RPCs of later milestones answer UNIMPLEMENTED.

use std::time::Duration;

use crm_proto::{
    common::v1::FeedSequences,
    differentiation::v1::{self as pb, differentiation_service_server::DifferentiationService},
};
use crm_runtime::{
    consistency::{self, wait_budget},
    consumer::Progress,
    db::Store,
    error::{FieldViolations, RuntimeError},
    time, validate,
};
use tonic::{Request, Response, Status};

use crate::store;

/// The differentiation service.
#[derive(Clone, Debug)]
pub struct DifferentiationApi {
    store: Store,
    interaction: Progress,
    max_wait: Duration,
}

impl DifferentiationApi {
    /// A service over `store`, whose interaction projection advances as
    /// `interaction` says; reads wait at most `max_wait` for a position.
    pub fn new(store: Store, interaction: Progress, max_wait: Duration) -> Self {
        DifferentiationApi { store, interaction, max_wait }
    }

    /// Wait until the projections reflect `min`; returns what they reflect.
    async fn consistent<T>(
        &self,
        request: &Request<T>,
        min: Option<&FeedSequences>,
    ) -> Result<FeedSequences, RuntimeError> {
        let min = min.cloned().unwrap_or_default();
        let mut v = FieldViolations::new();
        validate::sequence(&mut v, "min_sequence.interaction_sequence", min.interaction_sequence);
        validate::sequence(&mut v, "min_sequence.identification_sequence", min.identification_sequence);
        v.finish()?;
        if min.identification_sequence > 0 {
            return Err(RuntimeError::FailedPrecondition(
                "this projection does not follow the identification feed yet; pass interaction_sequence only".into(),
            ));
        }
        let budget = wait_budget(request.metadata(), self.max_wait);
        let applied = consistency::wait_for(self.interaction.watch(), min.interaction_sequence, budget).await?;
        Ok(FeedSequences { interaction_sequence: applied, identification_sequence: 0 })
    }
}

#[tonic::async_trait]
impl DifferentiationService for DifferentiationApi {
    #[tracing::instrument(skip_all, fields(customer_id))]
    async fn get_customer_value(
        &self,
        request: Request<pb::GetCustomerValueRequest>,
    ) -> Result<Response<pb::GetCustomerValueResponse>, Status> {
        let mut v = FieldViolations::new();
        validate::id(&mut v, "customer_id", &request.get_ref().customer_id);
        v.finish()?;
        tracing::Span::current().record("customer_id", request.get_ref().customer_id.as_str());
        let as_of = self.consistent(&request, request.get_ref().min_sequence.as_ref()).await?;
        let value = store::customer_value(&self.store, &request.get_ref().customer_id, time::now()).await?;
        Ok(Response::new(pb::GetCustomerValueResponse { value: Some(value), as_of_sequence: Some(as_of) }))
    }
}
