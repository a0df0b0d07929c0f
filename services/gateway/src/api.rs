//! The gRPC surface of the gateway. Workflows of later milestones answer
//! UNIMPLEMENTED (generated defaults).

use crm_proto::gateway::v1::{self as pb, gateway_service_server::GatewayService};
use tonic::{Request, Response, Status};

use crate::{downstream::Downstream, workflow};

/// The gateway service.
#[derive(Clone, Debug)]
pub struct GatewayApi {
    downstream: Downstream,
}

impl GatewayApi {
    /// A gateway over the four services.
    pub fn new(downstream: Downstream) -> Self {
        GatewayApi { downstream }
    }
}

#[tonic::async_trait]
impl GatewayService for GatewayApi {
    #[tracing::instrument(skip_all, fields(customer_id))]
    async fn handle_touchpoint(
        &self,
        request: Request<pb::HandleTouchpointRequest>,
    ) -> Result<Response<pb::HandleTouchpointResponse>, Status> {
        Ok(Response::new(workflow::handle_touchpoint(&self.downstream, request.into_inner()).await?))
    }
}
