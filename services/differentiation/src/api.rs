//! The gRPC surface of differentiation. Reads wait for `min_sequence` and
//! report `as_of_sequence`.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use crm_proto::{
    common::v1::{FeedSequences, Money},
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
    domain::{self, DAY_US, retention},
    store::{self, models, segments, values},
};

/// Most periods in one retention report.
pub const MAX_RETENTION_PERIODS: i64 = 1000;

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

    /// The values of the customers of a page of (key, id) rows, in order.
    async fn customer_values(
        &self,
        rows: &[(i64, String)],
        model: Option<&models::Loaded>,
    ) -> Result<Vec<pb::CustomerValue>, RuntimeError> {
        self.values_of(rows.iter().map(|(_, id)| id.as_str()), model).await
    }

    /// The values of `customers` as of now, in order, read in one snapshot:
    /// what a consumer commits meanwhile is in all of the answer or in none
    /// of it.
    async fn values_of<'a>(
        &self,
        customers: impl ExactSizeIterator<Item = &'a str>,
        model: Option<&models::Loaded>,
    ) -> Result<Vec<pb::CustomerValue>, RuntimeError> {
        let now = time::now();
        let tx = self.store.begin_read().await?;
        let mut out = Vec::with_capacity(customers.len());
        for customer in customers {
            let (summary, update_time) = store::purchase_summary(&tx, customer, now).await?;
            let lifetime_value = match model {
                Some(m) => models::lifetime_value(&tx, m, customer, now).await?,
                None => None,
            };
            let mut value = pb::CustomerValue {
                customer_id: customer.to_owned(),
                summary: Some(summary),
                lifetime_value,
                update_time,
                ..Default::default()
            };
            values::fill(&tx, &mut value, now).await?;
            out.push(value);
        }
        tx.commit().await?;
        Ok(out)
    }

    /// EvaluateRetention for a segment (the request is validated).
    async fn evaluate_segment_retention(
        &self,
        request: &Request<pb::EvaluateRetentionRequest>,
    ) -> Result<Response<pb::EvaluateRetentionResponse>, RuntimeError> {
        let req = request.get_ref();
        let as_of = self.consistent(request, req.min_sequence.as_ref()).await?;
        if segments::get(&self.store, &req.segment_id).await?.is_none() {
            return Err(RuntimeError::NotFound { resource: "segment", id: req.segment_id.clone() });
        }
        let cost = req.intervention_cost.clone().unwrap_or_default();
        let (members, total) = segments::member_scores(&self.store, &req.segment_id, &cost.currency_code).await?;
        if members.is_empty() {
            return Err(RuntimeError::FailedPrecondition(format!(
                "none of the segment's {total} members has a lifetime value in {} (no active value model, or none in that currency)",
                cost.currency_code
            )));
        }
        let e = retention::segment_economics(&members, cost.minor_units, req.expected_save_rate, &cost.currency_code);
        let money = |minor: i64| Some(Money { currency_code: cost.currency_code.clone(), minor_units: minor });
        Ok(Response::new(pb::EvaluateRetentionResponse {
            clv_at_risk: money(e.clv_at_risk),
            expected_net_value: money(e.expected_net_value),
            recommend: e.recommend,
            reason: e.reason,
            as_of_sequence: Some(as_of),
            clv: money(e.clv),
            probability_alive: e.mean_probability_alive,
            customer_count: e.customers,
            recommended_count: e.recommended_count,
            segment_member_count: total,
        }))
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
        let customer = request.get_ref().customer_id.as_str();
        let value = self.values_of(std::iter::once(customer), model.as_deref()).await?.pop();
        Ok(Response::new(pb::GetCustomerValueResponse { value, as_of_sequence: Some(as_of) }))
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
        let as_of = self.consistent(&request, request.get_ref().min_sequence.as_ref()).await?;
        let model = self.active_model().await?;
        let mut rows = values::list_customers(&self.store, tier.map(|t| t as i32), after, size + 1)
            .await
            .map_err(RuntimeError::from)?;
        let next_page_token = page::next_token(&mut rows, size, |(k, id)| conversions::value_token(*k, id));
        let values = self.customer_values(&rows, model.as_deref()).await?;
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

    #[tracing::instrument(skip_all)]
    async fn get_tier_policy(
        &self,
        _request: Request<pb::GetTierPolicyRequest>,
    ) -> Result<Response<pb::GetTierPolicyResponse>, Status> {
        let (policy, created_us) = values::current_policy(self.store.conn()).await?;
        Ok(Response::new(pb::GetTierPolicyResponse { policy: Some(values::policy_proto(&policy, created_us)) }))
    }

    #[tracing::instrument(skip_all)]
    async fn update_tier_policy(
        &self,
        request: Request<pb::UpdateTierPolicyRequest>,
    ) -> Result<Response<pb::UpdateTierPolicyResponse>, Status> {
        let cmd = conversions::policy_update(request.get_ref())?;
        let policy = values::update_policy(&self.store, cmd).await?;
        tracing::info!(version = policy.version, "tier policy stored; tiers recomputed");
        Ok(Response::new(pb::UpdateTierPolicyResponse { policy: Some(policy) }))
    }

    #[tracing::instrument(skip_all, fields(customer_id))]
    async fn list_tier_changes(
        &self,
        request: Request<pb::ListTierChangesRequest>,
    ) -> Result<Response<pb::ListTierChangesResponse>, Status> {
        let req = request.get_ref();
        let mut v = FieldViolations::new();
        if !req.customer_id.is_empty() {
            validate::id(&mut v, "customer_id", &req.customer_id);
        }
        let size = page::page_size(&mut v, req.page_size);
        let after = conversions::value_cursor(&mut v, &req.page_token);
        v.finish()?;
        tracing::Span::current().record("customer_id", req.customer_id.as_str());
        let as_of = self.consistent(&request, req.min_sequence.as_ref()).await?;
        let customer = (!req.customer_id.is_empty()).then_some(req.customer_id.as_str());
        let mut rows =
            values::tier_changes(&self.store, customer, after, size + 1).await.map_err(RuntimeError::from)?;
        let next_page_token = page::next_token(&mut rows, size, |(us, id, _)| conversions::value_token(*us, id));
        Ok(Response::new(pb::ListTierChangesResponse {
            changes: rows.into_iter().map(|(_, _, c)| c).collect(),
            next_page_token,
            as_of_sequence: Some(as_of),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_profitability_matrix(
        &self,
        request: Request<pb::GetProfitabilityMatrixRequest>,
    ) -> Result<Response<pb::GetProfitabilityMatrixResponse>, Status> {
        let req = request.get_ref();
        let mut v = FieldViolations::new();
        v.require(
            req.customer_ids.len() <= page::MAX_PAGE_SIZE as usize,
            "customer_ids",
            format!("at most {} ids", page::MAX_PAGE_SIZE),
        );
        for (i, id) in req.customer_ids.iter().enumerate().take(page::MAX_PAGE_SIZE as usize) {
            validate::id(&mut v, &format!("customer_ids[{i}]"), id);
        }
        v.require(
            req.currency_code.is_empty() || validate::is_currency_code(&req.currency_code),
            "currency_code",
            "an ISO 4217 code such as EUR",
        );
        let size = page::page_size(&mut v, req.page_size);
        let after = conversions::value_cursor(&mut v, &req.page_token);
        v.finish()?;
        let as_of = self.consistent(&request, req.min_sequence.as_ref()).await?;
        let currency = if req.currency_code.is_empty() {
            values::current_policy(self.store.conn()).await?.0.currency
        } else {
            req.currency_code.clone()
        };
        let mut ids = req.customer_ids.clone();
        ids.sort();
        ids.dedup();
        let mut m = values::profitability(&self.store, &currency, &ids, req.least_profitable_first, after, size + 1)
            .await
            .map_err(RuntimeError::from)?;
        let next_page_token = if m.rows.len() as u64 > size {
            let dropped = m.rows.split_off(size as usize);
            m.cells.retain(|(c, _, _)| !dropped.iter().any(|(d, _, _)| d == c));
            m.rows.last().map(|(id, margin, _)| conversions::value_token(*margin, id)).unwrap_or_default()
        } else {
            String::new()
        };
        let money = |minor: i64| Some(Money { currency_code: currency.clone(), minor_units: minor });
        Ok(Response::new(pb::GetProfitabilityMatrixResponse {
            cells: m
                .cells
                .into_iter()
                .map(|(customer_id, category, margin)| pb::ProfitabilityCell {
                    customer_id,
                    category,
                    margin: money(margin),
                })
                .collect(),
            customers: m
                .rows
                .into_iter()
                .map(|(customer_id, margin, revenue)| pb::CustomerMargin {
                    customer_id,
                    margin: money(margin),
                    revenue: money(revenue),
                })
                .collect(),
            next_page_token,
            as_of_sequence: Some(as_of),
        }))
    }

    #[tracing::instrument(skip_all, fields(segment_id))]
    async fn create_segment(
        &self,
        request: Request<pb::CreateSegmentRequest>,
    ) -> Result<Response<pb::CreateSegmentResponse>, Status> {
        let cmd = conversions::new_segment(request.get_ref())?;
        let segment = segments::create(&self.store, cmd).await?;
        tracing::Span::current().record("segment_id", segment.id.as_str());
        tracing::info!(members = segment.member_count, "segment created");
        Ok(Response::new(pb::CreateSegmentResponse { segment: Some(segment) }))
    }

    #[tracing::instrument(skip_all, fields(segment_id))]
    async fn get_segment(
        &self,
        request: Request<pb::GetSegmentRequest>,
    ) -> Result<Response<pb::GetSegmentResponse>, Status> {
        let id = &request.get_ref().segment_id;
        validate::require_id("segment_id", id)?;
        tracing::Span::current().record("segment_id", id.as_str());
        let segment = segments::get(&self.store, id)
            .await
            .map_err(RuntimeError::from)?
            .ok_or_else(|| RuntimeError::NotFound { resource: "segment", id: id.clone() })?;
        Ok(Response::new(pb::GetSegmentResponse { segment: Some(segment) }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_segments(
        &self,
        request: Request<pb::ListSegmentsRequest>,
    ) -> Result<Response<pb::ListSegmentsResponse>, Status> {
        let req = request.get_ref();
        let mut v = FieldViolations::new();
        let size = page::page_size(&mut v, req.page_size);
        let after = conversions::id_cursor(&mut v, &req.page_token);
        v.finish()?;
        let mut rows = segments::list(&self.store, after.as_deref(), size + 1).await.map_err(RuntimeError::from)?;
        let next_page_token = page::next_token(&mut rows, size, |s| conversions::id_token(&s.id));
        Ok(Response::new(pb::ListSegmentsResponse { segments: rows, next_page_token }))
    }

    #[tracing::instrument(skip_all, fields(segment_id))]
    async fn delete_segment(
        &self,
        request: Request<pb::DeleteSegmentRequest>,
    ) -> Result<Response<pb::DeleteSegmentResponse>, Status> {
        let id = &request.get_ref().segment_id;
        validate::require_id("segment_id", id)?;
        tracing::Span::current().record("segment_id", id.as_str());
        if !segments::delete(&self.store, id).await? {
            return Err(RuntimeError::NotFound { resource: "segment", id: id.clone() }.into());
        }
        tracing::info!("segment deleted");
        Ok(Response::new(pb::DeleteSegmentResponse {}))
    }

    #[tracing::instrument(skip_all, fields(segment_id))]
    async fn list_segment_members(
        &self,
        request: Request<pb::ListSegmentMembersRequest>,
    ) -> Result<Response<pb::ListSegmentMembersResponse>, Status> {
        let req = request.get_ref();
        let mut v = FieldViolations::new();
        validate::id(&mut v, "segment_id", &req.segment_id);
        let size = page::page_size(&mut v, req.page_size);
        let after = conversions::id_cursor(&mut v, &req.page_token);
        v.finish()?;
        tracing::Span::current().record("segment_id", req.segment_id.as_str());
        let as_of = self.consistent(&request, req.min_sequence.as_ref()).await?;
        if segments::get(&self.store, &req.segment_id).await.map_err(RuntimeError::from)?.is_none() {
            return Err(RuntimeError::NotFound { resource: "segment", id: req.segment_id.clone() }.into());
        }
        let (mut customer_ids, total_count) =
            segments::members(&self.store, &req.segment_id, after.as_deref(), size + 1)
                .await
                .map_err(RuntimeError::from)?;
        let next_page_token = page::next_token(&mut customer_ids, size, |id| conversions::id_token(id));
        Ok(Response::new(pb::ListSegmentMembersResponse {
            customer_ids,
            total_count,
            next_page_token,
            as_of_sequence: Some(as_of),
        }))
    }

    #[tracing::instrument(skip_all, fields(segment_id, customer_id))]
    async fn explain_segment_membership(
        &self,
        request: Request<pb::ExplainSegmentMembershipRequest>,
    ) -> Result<Response<pb::ExplainSegmentMembershipResponse>, Status> {
        let req = request.get_ref();
        let mut v = FieldViolations::new();
        validate::id(&mut v, "segment_id", &req.segment_id);
        validate::id(&mut v, "customer_id", &req.customer_id);
        v.finish()?;
        let span = tracing::Span::current();
        span.record("segment_id", req.segment_id.as_str());
        span.record("customer_id", req.customer_id.as_str());
        let as_of = self.consistent(&request, req.min_sequence.as_ref()).await?;
        let (member, facts) = segments::explain(&self.store, &req.segment_id, &req.customer_id, time::now())
            .await?
            .ok_or_else(|| RuntimeError::NotFound { resource: "segment", id: req.segment_id.clone() })?;
        Ok(Response::new(pb::ExplainSegmentMembershipResponse { member, facts, as_of_sequence: Some(as_of) }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_retention_report(
        &self,
        request: Request<pb::GetRetentionReportRequest>,
    ) -> Result<Response<pb::GetRetentionReportResponse>, Status> {
        let req = request.get_ref();
        let mut v = FieldViolations::new();
        let period = req.period.unwrap_or_default();
        let start = validate::timestamp(&mut v, "period.start_time", period.start_time.as_ref());
        let end = validate::timestamp(&mut v, "period.end_time", period.end_time.as_ref());
        v.require(
            (0..=conversions::MAX_HORIZON_DAYS).contains(&req.period_days),
            "period_days",
            format!("between 1 and {} (0 for the default, 30)", conversions::MAX_HORIZON_DAYS),
        );
        if let (Some(s), Some(e)) = (start, end) {
            v.require(s < e, "period.end_time", "must be after period.start_time");
        }
        let len = if req.period_days <= 0 { 30 } else { i64::from(req.period_days) };
        // Days before the end instant count; the default end is now.
        let end_day = domain::day_of(end.unwrap_or_else(time::now).timestamp_micros() - 1) + 1;
        let start_day = start.map_or(end_day - 12 * len, |s| domain::day_of(s.timestamp_micros()));
        let periods = (end_day - start_day + len - 1).div_euclid(len);
        v.require(
            periods <= MAX_RETENTION_PERIODS,
            "period_days",
            format!("at most {MAX_RETENTION_PERIODS} periods per report"),
        );
        v.finish()?;
        let as_of = self.consistent(&request, req.min_sequence.as_ref()).await?;
        let customers = store::retention::purchase_days(&self.store, start_day + periods * len)
            .await
            .map_err(RuntimeError::from)?;
        let rows = retention::retention(&customers, start_day, end_day, len)
            .into_iter()
            .map(|r| pb::RetentionRow {
                period_start_time: chrono::DateTime::from_timestamp_micros(r.period_start_day * DAY_US)
                    .map(time::to_timestamp),
                retention_rate: if r.at_start > 0 { r.retained as f64 / r.at_start as f64 } else { 0.0 },
                customers_at_start: r.at_start,
                retained: r.retained,
                cohort: r.cohort,
            })
            .collect();
        Ok(Response::new(pb::GetRetentionReportResponse { rows, as_of_sequence: Some(as_of) }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_at_risk_customers(
        &self,
        request: Request<pb::ListAtRiskCustomersRequest>,
    ) -> Result<Response<pb::ListAtRiskCustomersResponse>, Status> {
        let req = request.get_ref();
        let mut v = FieldViolations::new();
        let below = if req.probability_alive_below == 0.0 { 0.5 } else { req.probability_alive_below };
        v.require(
            below.is_finite() && below > 0.0 && below <= 1.0,
            "probability_alive_below",
            "above 0 and at most 1 (0 for the default, 0.5)",
        );
        let mut tiers: Vec<i32> = Vec::new();
        for (i, t) in req.tiers.iter().enumerate() {
            if let Some(t) = validate::enumeration::<pb::ValueTier>(&mut v, &format!("tiers[{i}]"), *t, true) {
                tiers.push(t as i32);
            }
        }
        if req.tiers.is_empty() {
            tiers = vec![pb::ValueTier::MostValuable as i32, pb::ValueTier::MostGrowable as i32];
        }
        let size = page::page_size(&mut v, req.page_size);
        let after = conversions::value_cursor(&mut v, &req.page_token);
        v.finish()?;
        let as_of = self.consistent(&request, req.min_sequence.as_ref()).await?;
        let model = self.active_model().await?;
        let mut rows =
            store::retention::at_risk(&self.store, below, &tiers, after, size + 1).await.map_err(RuntimeError::from)?;
        let next_page_token = page::next_token(&mut rows, size, |(k, id)| conversions::value_token(*k, id));
        let customers = self.customer_values(&rows, model.as_deref()).await?;
        Ok(Response::new(pb::ListAtRiskCustomersResponse { customers, next_page_token, as_of_sequence: Some(as_of) }))
    }

    #[tracing::instrument(skip_all)]
    async fn analyze_defection_value(
        &self,
        request: Request<pb::AnalyzeDefectionValueRequest>,
    ) -> Result<Response<pb::AnalyzeDefectionValueResponse>, Status> {
        let query = conversions::defection_query(request.get_ref(), time::now())?;
        let as_of = self.consistent(&request, request.get_ref().min_sequence.as_ref()).await?;
        let currency = match &query.currency {
            Some(c) => c.clone(),
            None => values::current_policy(self.store.conn()).await?.0.currency,
        };
        let (causes, total) =
            store::defections::report(&self.store, &query, &currency).await.map_err(RuntimeError::from)?;
        let money = |minor: i64| Some(Money { currency_code: currency.clone(), minor_units: minor });
        let proto = |c: &retention::CauseValue| pb::DefectionValue {
            reason: c.reason,
            defection_count: c.defections,
            manageable_count: c.manageable,
            customer_count: c.customers,
            lifetime_value_lost: money(c.clv_lost),
            margin_lost: money(c.margin_lost),
            value_lost: money(c.value_lost()),
            manageable_value_lost: money(c.manageable_value_lost),
            unscored_count: c.unscored,
            value_share: c.share_of(&total),
        };
        Ok(Response::new(pb::AnalyzeDefectionValueResponse {
            causes: retention::rank_causes(causes).iter().map(proto).collect(),
            total: Some(proto(&total)),
            currency_code: currency.clone(),
            as_of_sequence: Some(as_of),
        }))
    }

    #[tracing::instrument(skip_all, fields(customer_id))]
    async fn evaluate_retention(
        &self,
        request: Request<pb::EvaluateRetentionRequest>,
    ) -> Result<Response<pb::EvaluateRetentionResponse>, Status> {
        let req = request.get_ref();
        let mut v = FieldViolations::new();
        match (req.customer_id.is_empty(), req.segment_id.is_empty()) {
            (true, true) => v.add("customer_id", "required (or segment_id)"),
            (false, false) => v.add("segment_id", "give customer_id or segment_id, not both"),
            (false, true) => validate::id(&mut v, "customer_id", &req.customer_id),
            (true, false) => validate::id(&mut v, "segment_id", &req.segment_id),
        }
        match &req.intervention_cost {
            None => v.add("intervention_cost", "required"),
            Some(m) => {
                v.require(
                    validate::is_currency_code(&m.currency_code),
                    "intervention_cost.currency_code",
                    "an ISO 4217 code such as EUR",
                );
                v.require(m.minor_units >= 0, "intervention_cost.minor_units", "must not be negative");
            }
        }
        v.require(
            req.expected_save_rate.is_finite() && (0.0..=1.0).contains(&req.expected_save_rate),
            "expected_save_rate",
            "between 0 and 1",
        );
        v.finish()?;
        if !req.segment_id.is_empty() {
            return self.evaluate_segment_retention(&request).await.map_err(Status::from);
        }
        tracing::Span::current().record("customer_id", req.customer_id.as_str());
        let as_of = self.consistent(&request, req.min_sequence.as_ref()).await?;
        if !store::retention::known(&self.store, &req.customer_id).await.map_err(RuntimeError::from)? {
            return Err(RuntimeError::NotFound { resource: "customer", id: req.customer_id.clone() }.into());
        }
        let Some((Some(clv), p_alive, currency)) =
            store::retention::score(&self.store, &req.customer_id).await.map_err(RuntimeError::from)?
        else {
            return Err(RuntimeError::FailedPrecondition(
                "the customer has no lifetime value (no active value model, or no purchase in its currency)".into(),
            )
            .into());
        };
        let cost = req.intervention_cost.clone().unwrap_or_default();
        if cost.currency_code != currency {
            return Err(FieldViolations::single(
                "intervention_cost.currency_code",
                format!("must be {currency}, the currency of the lifetime value"),
            )
            .into());
        }
        let e = retention::economics(clv, p_alive, cost.minor_units, req.expected_save_rate, &currency);
        let money = |minor: i64| Some(Money { currency_code: currency.clone(), minor_units: minor });
        Ok(Response::new(pb::EvaluateRetentionResponse {
            clv_at_risk: money(e.clv_at_risk),
            expected_net_value: money(e.expected_net_value),
            recommend: e.recommend,
            reason: e.reason,
            as_of_sequence: Some(as_of),
            clv: money(clv),
            probability_alive: p_alive,
            customer_count: 1,
            recommended_count: i64::from(e.recommend),
            segment_member_count: 0,
        }))
    }
}
