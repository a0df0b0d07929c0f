//! The gRPC surface of differentiation. Reads wait for `min_sequence` and
//! report `as_of_sequence`. RPCs of later milestones answer UNIMPLEMENTED.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use crm_proto::{
    common::v1::FeedSequences,
    differentiation::v1::{self as pb, differentiation_service_server::DifferentiationService},
};
use crm_runtime::{
    consistency::{self, wait_budget},
    consumer::Progress,
    db::Store,
    error::{FieldViolations, RuntimeError},
    page, time, validate,
};
use tonic::{Request, Response, Status};

use crate::{
    conversions,
    store::{self, models},
};

/// The differentiation service.
#[derive(Clone, Debug)]
pub struct DifferentiationApi {
    store: Store,
    interaction: Progress,
    identification: Option<Progress>,
    max_wait: Duration,
    /// The active model with its parameter draws, reused while active.
    model: Arc<Mutex<Option<Arc<models::Loaded>>>>,
}

impl DifferentiationApi {
    /// A service over `store`, whose interaction projection advances as
    /// `interaction` says; reads wait at most `max_wait` for a position.
    pub fn new(store: Store, interaction: Progress, max_wait: Duration) -> Self {
        DifferentiationApi { store, interaction, identification: None, max_wait, model: Arc::default() }
    }

    /// Also wait for and report the identification feed's position.
    pub fn following_identification(mut self, identification: Option<Progress>) -> Self {
        self.identification = identification;
        self
    }

    /// The active model, loaded once per version.
    async fn active_model(&self) -> Result<Option<Arc<models::Loaded>>, RuntimeError> {
        let cached = self.model.lock().map(|g| g.clone()).unwrap_or_default();
        let loaded = models::load_active(&self.store, cached).await?;
        if let Ok(mut g) = self.model.lock() {
            g.clone_from(&loaded);
        }
        Ok(loaded)
    }

    /// A customer's value as of now.
    async fn customer_value(
        &self,
        customer: &str,
        model: Option<&models::Loaded>,
    ) -> Result<pb::CustomerValue, RuntimeError> {
        let now = time::now();
        let (summary, update_time) = store::purchase_summary(&self.store, customer, now).await?;
        let lifetime_value = match model {
            Some(m) => models::lifetime_value(&self.store, m, customer, now).await?,
            None => None,
        };
        Ok(pb::CustomerValue {
            customer_id: customer.to_owned(),
            summary: Some(summary),
            lifetime_value,
            update_time,
            ..Default::default()
        })
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
        if min.identification_sequence > 0 && self.identification.is_none() {
            return Err(RuntimeError::FailedPrecondition(
                "this server does not follow the identification feed (no address configured); pass interaction_sequence only"
                    .into(),
            ));
        }
        let budget = wait_budget(request.metadata(), self.max_wait);
        let started = tokio::time::Instant::now();
        let applied = consistency::wait_for(self.interaction.watch(), min.interaction_sequence, budget).await?;
        let identification_sequence = match &self.identification {
            Some(p) => {
                let left = budget.saturating_sub(started.elapsed());
                consistency::wait_for(p.watch(), min.identification_sequence, left).await?
            }
            None => 0,
        };
        Ok(FeedSequences { interaction_sequence: applied, identification_sequence })
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
        let model = self.active_model().await?;
        let value = self.customer_value(&request.get_ref().customer_id, model.as_deref()).await?;
        Ok(Response::new(pb::GetCustomerValueResponse { value: Some(value), as_of_sequence: Some(as_of) }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_customer_values(
        &self,
        request: Request<pb::ListCustomerValuesRequest>,
    ) -> Result<Response<pb::ListCustomerValuesResponse>, Status> {
        let req = request.get_ref();
        let mut v = FieldViolations::new();
        let size = page::page_size(&mut v, req.page_size);
        let after = conversions::value_cursor(&mut v, &req.page_token);
        let tier = validate::enumeration::<pb::ValueTier>(&mut v, "tier", req.tier, false);
        v.finish()?;
        if tier.is_some() {
            return Err(
                RuntimeError::FailedPrecondition("value tiers are not assigned yet; leave tier unset".into()).into()
            );
        }
        let as_of = self.consistent(&request, request.get_ref().min_sequence.as_ref()).await?;
        let model = self.active_model().await?;
        let mut rows = store::list_customers(&self.store, after, size + 1).await.map_err(RuntimeError::from)?;
        let next_page_token = if rows.len() as u64 > size {
            rows.truncate(size as usize);
            rows.last().map(|(k, id)| conversions::value_token(*k, id)).unwrap_or_default()
        } else {
            String::new()
        };
        let mut values = Vec::with_capacity(rows.len());
        for (_, id) in &rows {
            values.push(self.customer_value(id, model.as_deref()).await?);
        }
        Ok(Response::new(pb::ListCustomerValuesResponse { values, next_page_token, as_of_sequence: Some(as_of) }))
    }

    #[tracing::instrument(skip_all)]
    async fn fit_value_model(
        &self,
        request: Request<pb::FitValueModelRequest>,
    ) -> Result<Response<pb::FitValueModelResponse>, Status> {
        let cmd = conversions::fit_command(request.get_ref(), time::now())?;
        let model = models::fit(&self.store, cmd).await?;
        tracing::info!(
            version = model.version,
            converged = model.converged,
            active = model.active,
            "value model fitted"
        );
        Ok(Response::new(pb::FitValueModelResponse { model: Some(model) }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_value_model(
        &self,
        request: Request<pb::GetValueModelRequest>,
    ) -> Result<Response<pb::GetValueModelResponse>, Status> {
        let version = request.get_ref().version;
        let mut v = FieldViolations::new();
        v.require(version >= 0, "version", "must not be negative");
        v.finish()?;
        let found = if version == 0 {
            models::active(self.store.conn()).await.map_err(RuntimeError::from)?
        } else {
            models::get(&self.store, version).await.map_err(RuntimeError::from)?
        };
        let model = found.ok_or_else(|| RuntimeError::NotFound {
            resource: "value model",
            id: if version == 0 { "active".into() } else { version.to_string() },
        })?;
        Ok(Response::new(pb::GetValueModelResponse { model: Some(model.proto) }))
    }
}
