//! The gRPC surface of identification: convert → store → convert back.
//! RPCs of later milestones answer UNIMPLEMENTED (generated defaults).

use std::{collections::VecDeque, future::Future, sync::Arc, task::Poll};

use crm_proto::identification::v1::{self as pb, identification_service_server::IdentificationService};
use crm_runtime::{
    db::Store,
    error::FieldViolations,
    feed::{self, ResponseStream},
    idempotency::{check_request_id, fingerprint},
    page,
    server::Shutdown,
    validate,
};
use prost::Message;
use tonic::{Request, Response, Status};

use crate::{
    conversions::{IdentifiersCommand, ProfileQuery, ResolveCommand, UpdateCommand},
    matcher::{GrowthTraining, Matcher},
    store,
};

/// Records of one ImportProfiles call resolved at a time.
const IMPORT_IN_FLIGHT: usize = 64;

/// Count an imported record's outcome.
fn count(counts: &mut pb::ImportProfilesResponse, r: &pb::ResolveIdentityResponse) {
    if !r.review_item_id.is_empty() {
        counts.review_count += 1;
    } else if r.created {
        counts.created_count += 1;
    } else {
        counts.linked_count += 1;
    }
}

/// The identification service.
#[derive(Clone, Debug)]
pub struct IdentificationApi {
    store: Store,
    shutdown: Shutdown,
    default_region: String,
    matcher: Matcher,
    /// Refits as resolves and imports grow the base (`None`: off).
    growth: Option<Arc<GrowthTraining>>,
}

impl IdentificationApi {
    /// A service over `store`; phones without a country code are read in
    /// `default_region`; feeds end on `shutdown`; the matcher is refitted
    /// from `train_from_records` kept records on, whenever they double.
    pub fn new(store: Store, shutdown: Shutdown, default_region: String, train_from_records: Option<u64>) -> Self {
        let growth = train_from_records.map(|from| Arc::new(GrowthTraining::new(from)));
        IdentificationApi { store, shutdown, default_region, matcher: Matcher::default(), growth }
    }

    /// Note a resolve's outcome: a profile it created grows the base, and
    /// at the next mark the matcher is refitted in the background.
    fn grown(&self, r: &pb::ResolveIdentityResponse) {
        if let Some(growth) = self.growth.as_ref().filter(|g| r.created && g.grew(1)) {
            growth.refit_in_background_if_due(&self.store, &self.matcher);
        }
    }

    /// Count an imported record's outcome, and note it (see [`Self::grown`]).
    fn tally(&self, counts: &mut pb::ImportProfilesResponse, r: &pb::ResolveIdentityResponse) {
        count(counts, r);
        self.grown(r);
    }
}

#[tonic::async_trait]
impl IdentificationService for IdentificationApi {
    #[tracing::instrument(skip_all, fields(profile_id, created))]
    async fn resolve_identity(
        &self,
        request: Request<pb::ResolveIdentityRequest>,
    ) -> Result<Response<pb::ResolveIdentityResponse>, Status> {
        let cmd = ResolveCommand::from_request(request.into_inner(), &self.default_region)?;
        let response = store::resolve(&self.store, &self.matcher, Arc::new(cmd)).await?;
        self.grown(&response);
        let span = tracing::Span::current();
        span.record("profile_id", response.profile.as_ref().map(|p| p.id.as_str()).unwrap_or_default());
        span.record("created", response.created);
        Ok(Response::new(response))
    }

    async fn get_profile(
        &self,
        request: Request<pb::GetProfileRequest>,
    ) -> Result<Response<pb::GetProfileResponse>, Status> {
        let id = request.into_inner().profile_id;
        validate::require_id("profile_id", &id)?;
        let profile = store::get_profile(&self.store, &id).await?;
        Ok(Response::new(pb::GetProfileResponse { profile: Some(profile) }))
    }

    async fn list_profiles(
        &self,
        request: Request<pb::ListProfilesRequest>,
    ) -> Result<Response<pb::ListProfilesResponse>, Status> {
        let query = ProfileQuery::try_from(request.into_inner())?;
        let (profiles, next_page_token) = store::list_profiles(&self.store, &query).await?;
        Ok(Response::new(pb::ListProfilesResponse { profiles, next_page_token }))
    }

    #[tracing::instrument(skip_all, fields(profile_id))]
    async fn update_profile(
        &self,
        request: Request<pb::UpdateProfileRequest>,
    ) -> Result<Response<pb::UpdateProfileResponse>, Status> {
        let cmd = UpdateCommand::try_from(request.into_inner())?;
        tracing::Span::current().record("profile_id", cmd.profile.id.as_str());
        Ok(Response::new(store::update_profile(&self.store, &cmd).await?))
    }

    async fn list_profile_changes(
        &self,
        request: Request<pb::ListProfileChangesRequest>,
    ) -> Result<Response<pb::ListProfileChangesResponse>, Status> {
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        validate::id(&mut v, "profile_id", &req.profile_id);
        let page_size = page::page_size(&mut v, req.page_size);
        let after = match page::decode_token(&mut v, &req.page_token) {
            Some(t) => t.parse::<i64>().unwrap_or_else(|_| {
                v.add("page_token", "not a token returned by this service");
                0
            }),
            None => 0,
        };
        v.finish()?;
        let (changes, next_page_token) = store::list_changes(&self.store, &req.profile_id, page_size, after).await?;
        Ok(Response::new(pb::ListProfileChangesResponse { changes, next_page_token }))
    }

    #[tracing::instrument(skip_all, fields(profile_id))]
    async fn add_identifiers(
        &self,
        request: Request<pb::AddIdentifiersRequest>,
    ) -> Result<Response<pb::AddIdentifiersResponse>, Status> {
        let req = request.into_inner();
        let fp = fingerprint(&req.encode_to_vec());
        let cmd = IdentifiersCommand::new(req.profile_id, &req.identifiers, req.request_id, fp, &self.default_region)?;
        tracing::Span::current().record("profile_id", cmd.profile_id.as_str());
        Ok(Response::new(store::add_identifiers(&self.store, &cmd).await?))
    }

    #[tracing::instrument(skip_all, fields(profile_id))]
    async fn remove_identifiers(
        &self,
        request: Request<pb::RemoveIdentifiersRequest>,
    ) -> Result<Response<pb::RemoveIdentifiersResponse>, Status> {
        let req = request.into_inner();
        let fp = fingerprint(&req.encode_to_vec());
        let cmd = IdentifiersCommand::new(req.profile_id, &req.identifiers, req.request_id, fp, &self.default_region)?;
        tracing::Span::current().record("profile_id", cmd.profile_id.as_str());
        Ok(Response::new(store::remove_identifiers(&self.store, &cmd).await?))
    }

    #[tracing::instrument(skip_all, fields(profile_id))]
    async fn erase_profile(
        &self,
        request: Request<pb::EraseProfileRequest>,
    ) -> Result<Response<pb::EraseProfileResponse>, Status> {
        let req = request.into_inner();
        let fp = fingerprint(&req.encode_to_vec());
        let mut v = FieldViolations::new();
        validate::id(&mut v, "profile_id", &req.profile_id);
        check_request_id(&mut v, &req.request_id);
        v.finish()?;
        tracing::Span::current().record("profile_id", req.profile_id.as_str());
        Ok(Response::new(store::erase_profile(&self.store, &req.profile_id, &req.request_id, fp).await?))
    }

    async fn export_profile(
        &self,
        request: Request<pb::ExportProfileRequest>,
    ) -> Result<Response<pb::ExportProfileResponse>, Status> {
        let id = request.into_inner().profile_id;
        validate::require_id("profile_id", &id)?;
        Ok(Response::new(store::export_profile(&self.store, &id).await?))
    }

    #[tracing::instrument(skip_all, fields(surviving_id, merged_id))]
    async fn merge_profiles(
        &self,
        request: Request<pb::MergeProfilesRequest>,
    ) -> Result<Response<pb::MergeProfilesResponse>, Status> {
        let req = request.into_inner();
        let fp = fingerprint(&req.encode_to_vec());
        let mut v = FieldViolations::new();
        validate::id(&mut v, "surviving_id", &req.surviving_id);
        validate::id(&mut v, "merged_id", &req.merged_id);
        v.require(
            req.surviving_id != req.merged_id || req.merged_id.is_empty(),
            "merged_id",
            "must differ from surviving_id",
        );
        check_request_id(&mut v, &req.request_id);
        v.finish()?;
        let span = tracing::Span::current();
        span.record("surviving_id", req.surviving_id.as_str());
        span.record("merged_id", req.merged_id.as_str());
        Ok(Response::new(
            crate::merges::merge(&self.store, &req.surviving_id, &req.merged_id, &req.request_id, fp).await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(merge_id))]
    async fn unmerge_profiles(
        &self,
        request: Request<pb::UnmergeProfilesRequest>,
    ) -> Result<Response<pb::UnmergeProfilesResponse>, Status> {
        let req = request.into_inner();
        let fp = fingerprint(&req.encode_to_vec());
        let mut v = FieldViolations::new();
        validate::id(&mut v, "merge_id", &req.merge_id);
        check_request_id(&mut v, &req.request_id);
        v.finish()?;
        tracing::Span::current().record("merge_id", req.merge_id.as_str());
        Ok(Response::new(crate::merges::unmerge(&self.store, &req.merge_id, &req.request_id, fp).await?))
    }

    #[tracing::instrument(skip_all, fields(created, linked, review, rejected))]
    async fn import_profiles(
        &self,
        request: Request<tonic::Streaming<pb::ImportProfilesRequest>>,
    ) -> Result<Response<pb::ImportProfilesResponse>, Status> {
        let mut records = request.into_inner();
        let mut counts = pb::ImportProfilesResponse::default();
        // Records are resolved IMPORT_IN_FLIGHT at a time, so that they share
        // commits, each queued for the store's writer before the next is
        // read: the writer runs them in the order sent, and a record still
        // sees the ones before it.
        let mut in_flight = VecDeque::with_capacity(IMPORT_IN_FLIGHT);
        while let Some(record) = records.message().await? {
            let req = pb::ResolveIdentityRequest {
                identifiers: record.identifiers,
                attributes: record.attributes,
                channel: 0,
                acquisition: record.acquisition,
                request_id: String::new(),
            };
            // An invalid record is counted and skipped: one bad row must not
            // stop the load of a customer base.
            let Ok(cmd) = ResolveCommand::from_request(req, &self.default_region) else {
                counts.rejected_count += 1;
                continue;
            };
            let (store, matcher) = (self.store.clone(), self.matcher.clone());
            let mut resolve = Box::pin(async move { store::resolve_in_order(&store, &matcher, Arc::new(cmd)).await });
            // The first poll queues the write.
            if let Poll::Ready(r) = std::future::poll_fn(|cx| Poll::Ready(resolve.as_mut().poll(cx))).await {
                self.tally(&mut counts, &r?);
                continue;
            }
            in_flight.push_back(resolve);
            if in_flight.len() >= IMPORT_IN_FLIGHT
                && let Some(oldest) = in_flight.pop_front()
            {
                self.tally(&mut counts, &oldest.await?);
            }
        }
        for resolve in in_flight {
            self.tally(&mut counts, &resolve.await?);
        }
        let span = tracing::Span::current();
        span.record("created", counts.created_count);
        span.record("linked", counts.linked_count);
        span.record("review", counts.review_count);
        span.record("rejected", counts.rejected_count);
        Ok(Response::new(counts))
    }

    async fn train_matcher(
        &self,
        request: Request<pb::TrainMatcherRequest>,
    ) -> Result<Response<pb::TrainMatcherResponse>, Status> {
        let max_pairs = request.into_inner().max_pairs;
        let mut v = FieldViolations::new();
        v.require(max_pairs >= 0, "max_pairs", "must not be negative");
        v.finish()?;
        Ok(Response::new(crate::matcher::train(&self.store, &self.matcher, max_pairs).await?))
    }

    async fn list_review_items(
        &self,
        request: Request<pb::ListReviewItemsRequest>,
    ) -> Result<Response<pb::ListReviewItemsResponse>, Status> {
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        let page_size = page::page_size(&mut v, req.page_size);
        let after = page::decode_token(&mut v, &req.page_token);
        v.finish()?;
        let (items, next_page_token) = store::list_review_items(&self.store, page_size, after.as_deref()).await?;
        Ok(Response::new(pb::ListReviewItemsResponse { items, next_page_token }))
    }

    #[tracing::instrument(skip_all, fields(review_item_id))]
    async fn decide_review_item(
        &self,
        request: Request<pb::DecideReviewItemRequest>,
    ) -> Result<Response<pb::DecideReviewItemResponse>, Status> {
        let req = request.into_inner();
        let fp = fingerprint(&req.encode_to_vec());
        let mut v = FieldViolations::new();
        validate::id(&mut v, "review_item_id", &req.review_item_id);
        let decision = validate::enumeration::<pb::ReviewDecision>(&mut v, "decision", req.decision, true);
        check_request_id(&mut v, &req.request_id);
        v.finish()?;
        tracing::Span::current().record("review_item_id", req.review_item_id.as_str());
        let accept = decision == Some(pb::ReviewDecision::Accept);
        Ok(Response::new(
            store::decide_review_item(&self.store, &req.review_item_id, accept, &req.request_id, fp).await?,
        ))
    }

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<ResponseStream<pb::SubscribeResponse>>, Status> {
        feed::subscribe_response::<pb::ProfileEvent, _>(
            self.store.clone(),
            self.shutdown.clone(),
            request.into_inner().after_sequence,
            |event, trace_context| pb::SubscribeResponse { event: Some(event), trace_context },
        )
    }
}
