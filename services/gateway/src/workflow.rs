//! The value-chain workflows. HandleTouchpoint (GW-1): identify → record →
//! (value ‖ offers), with the recorded interaction's sequence as the
//! consistency token of the value read.

use crm_proto::{
    common::v1::FeedSequences,
    differentiation::v1::GetCustomerValueRequest,
    gateway::v1::{self as pb, MissingPart, Part},
    identification::v1::ResolveIdentityRequest,
    interaction::v1::{Direction, RecordInteractionRequest, RecordPurchaseRequest},
    personalization::v1::NextBestOffersRequest,
};
use tonic::Status;

use crate::{
    conversions::{check_touchpoint, step_key},
    downstream::{Downstream, code_name},
};

fn missing(part: Part, status: &Status) -> MissingPart {
    MissingPart { part: part as i32, code: code_name(status.code()).to_owned(), message: status.message().to_owned() }
}

/// A customer shows up. Fails as a whole only while nothing has been
/// recorded (invalid input, identification or interaction failing); once
/// the interaction is recorded, a failing value or offers step is reported
/// in `missing_parts` instead. A retry with the same `request_id` records
/// nothing twice: every write downstream carries a key derived from it.
pub async fn handle_touchpoint(
    downstream: &Downstream,
    req: pb::HandleTouchpointRequest,
) -> Result<pb::HandleTouchpointResponse, Status> {
    let max_offers = check_touchpoint(&req)?;
    let mut d = downstream.clone();

    let resolved = d
        .identification
        .resolve_identity(ResolveIdentityRequest {
            identifiers: req.identifiers.clone(),
            attributes: req.attributes.clone(),
            channel: req.channel,
            acquisition: req.acquisition.clone(),
            request_id: step_key(&req.request_id, "resolve"),
        })
        .await?
        .into_inner();
    let profile = resolved.profile.ok_or_else(|| Status::internal("identification returned no profile"))?;
    let customer_id = profile.id.clone();

    let direction = if req.direction == 0 { Direction::Inbound as i32 } else { req.direction };
    let (interaction, order, interaction_sequence) = match &req.purchase {
        Some(p) => {
            let r = d
                .interaction
                .record_purchase(RecordPurchaseRequest {
                    customer_id: customer_id.clone(),
                    channel: req.channel,
                    occur_time: req.occur_time,
                    order_number: p.order_number.clone(),
                    currency_code: p.currency_code.clone(),
                    lines: p.lines.clone(),
                    thread_id: req.thread_id.clone(),
                    attributes: req.interaction_attributes.clone(),
                    request_id: step_key(&req.request_id, "record"),
                })
                .await?
                .into_inner();
            (r.interaction, r.order, r.sequence)
        }
        None => {
            let r = d
                .interaction
                .record_interaction(RecordInteractionRequest {
                    customer_id: customer_id.clone(),
                    channel: req.channel,
                    direction,
                    r#type: req.interaction_type,
                    occur_time: req.occur_time,
                    thread_id: req.thread_id.clone(),
                    attributes: req.interaction_attributes.clone(),
                    purpose: req.purpose,
                    request_id: step_key(&req.request_id, "record"),
                })
                .await?
                .into_inner();
            (r.interaction, None, r.sequence)
        }
    };
    let sequences = FeedSequences { identification_sequence: resolved.sequence, interaction_sequence };

    let mut values = d.differentiation.clone();
    let mut offers = d.personalization.clone();
    let value_call = values.get_customer_value(GetCustomerValueRequest {
        customer_id: customer_id.clone(),
        min_sequence: Some(FeedSequences { interaction_sequence, identification_sequence: 0 }),
    });
    let offers_call = offers.next_best_offers(NextBestOffersRequest {
        customer_id: customer_id.clone(),
        channel: req.channel,
        max_offers,
        at_time: req.occur_time,
        ..Default::default()
    });
    let (value, ranked) = tokio::join!(value_call, offers_call);

    let mut missing_parts = Vec::new();
    let value = match value {
        Ok(r) => r.into_inner().value,
        Err(s) => {
            tracing::warn!(code = code_name(s.code()), "value step failed");
            missing_parts.push(missing(Part::Value, &s));
            None
        }
    };
    let offers = match ranked {
        Ok(r) => r.into_inner().offers,
        Err(s) => {
            tracing::warn!(code = code_name(s.code()), "offers step failed");
            missing_parts.push(missing(Part::Offers, &s));
            Vec::new()
        }
    };
    tracing::Span::current().record("customer_id", customer_id.as_str());
    Ok(pb::HandleTouchpointResponse {
        profile: Some(profile),
        profile_created: resolved.created,
        match_explanation: resolved.explanation,
        interaction,
        order,
        value,
        offers,
        sequences: Some(sequences),
        missing_parts,
    })
}
