//! The gRPC surface of identification: convert → store → convert back.
//! RPCs of later milestones answer UNIMPLEMENTED (generated defaults).

use crm_proto::identification::v1::{self as pb, identification_service_server::IdentificationService};
use crm_runtime::{
    db::Store,
    feed::{self, ResponseStream},
    server::Shutdown,
    validate,
};
use tonic::{Request, Response, Status};

use crate::{conversions::ResolveCommand, store};

/// The identification service.
#[derive(Clone, Debug)]
pub struct IdentificationApi {
    store: Store,
    shutdown: Shutdown,
    default_region: String,
}

impl IdentificationApi {
    /// A service over `store`; phones without a country code are read in
    /// `default_region`; feeds end on `shutdown`.
    pub fn new(store: Store, shutdown: Shutdown, default_region: String) -> Self {
        IdentificationApi { store, shutdown, default_region }
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
        let response = store::resolve(&self.store, &cmd).await?;
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

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<ResponseStream<pb::SubscribeResponse>>, Status> {
        feed::subscribe_response::<pb::ProfileEvent, _>(
            self.store.clone(),
            self.shutdown.clone(),
            request.into_inner().after_sequence,
            |event| pb::SubscribeResponse { event: Some(event) },
        )
    }
}
