//! The pure part of following the identification feed (IN-7): what an
//! erased customer's events keep, how a re-key's fact list is split over
//! events, and the non-identifying form of an erased consent record. The
//! store applies them (`crate::store::lifecycle`, where the design and the
//! consent-retention decision are documented).

use crm_proto::interaction::v1::{self as pb, InteractionEvent, RekeyedFacts, interaction_event::Kind};

use super::voice::day_of;

/// The event with every personal content removed: its sequence, commit
/// time, customer id and kind stay (so the feed keeps no holes and a
/// consumer replaying it still sees a well-formed event of the same kind),
/// and so do the random ids of the facts it names; attributes, threads,
/// channels, order lines and amounts, reasons, comments, ratings,
/// descriptions, notes and consent details go.
pub fn redact(event: InteractionEvent) -> InteractionEvent {
    let customer_id = event.customer_id;
    let stub = |i: &pb::Interaction| pb::Interaction {
        id: i.id.clone(),
        customer_id: customer_id.clone(),
        order_id: i.order_id.clone(),
        sequence: i.sequence,
        ..Default::default()
    };
    let kind = event.kind.map(|kind| match kind {
        Kind::InteractionRecorded(r) => {
            Kind::InteractionRecorded(pb::InteractionRecorded { interaction: r.interaction.as_ref().map(stub) })
        }
        Kind::PurchaseRecorded(r) => Kind::PurchaseRecorded(pb::PurchaseRecorded {
            order: r.order.map(|o| pb::Order { id: o.id, customer_id: customer_id.clone(), ..Default::default() }),
            interaction: r.interaction.as_ref().map(stub),
        }),
        Kind::ReturnRecorded(r) => Kind::ReturnRecorded(pb::ReturnRecorded {
            order_return: r.order_return.map(|o| pb::OrderReturn {
                id: o.id,
                order_id: o.order_id,
                customer_id: customer_id.clone(),
                ..Default::default()
            }),
            interaction: r.interaction.as_ref().map(stub),
        }),
        Kind::SurveyResponseRecorded(r) => Kind::SurveyResponseRecorded(pb::SurveyResponseRecorded {
            response: r.response.map(|s| pb::SurveyResponse {
                id: s.id,
                customer_id: customer_id.clone(),
                ..Default::default()
            }),
            interaction: r.interaction.as_ref().map(stub),
        }),
        Kind::ComplaintChanged(r) => Kind::ComplaintChanged(pb::ComplaintChanged {
            complaint: r.complaint.map(|c| pb::Complaint {
                id: c.id,
                customer_id: customer_id.clone(),
                ..Default::default()
            }),
            interaction: r.interaction.as_ref().map(stub),
        }),
        Kind::DefectionRecorded(r) => Kind::DefectionRecorded(pb::DefectionRecorded {
            defection: r.defection.map(|d| pb::Defection {
                id: d.id,
                customer_id: customer_id.clone(),
                ..Default::default()
            }),
            interaction: r.interaction.as_ref().map(stub),
        }),
        Kind::ConsentRecorded(r) => Kind::ConsentRecorded(pb::ConsentRecorded {
            consent: r.consent.map(|c| pb::Consent {
                id: c.id,
                customer_id: customer_id.clone(),
                ..Default::default()
            }),
        }),
        // Ids only: nothing personal to remove.
        k @ (Kind::CustomerRekeyed(_) | Kind::CustomerErased(_)) => k,
    });
    InteractionEvent { sequence: event.sequence, occur_time: event.occur_time, customer_id, kind }
}

/// How many facts one event lists at most, so that an event stays far
/// below the maximum message size (an id is about 38 bytes encoded).
pub const MAX_FACTS_PER_EVENT: usize = 10_000;

/// How many ids `facts` lists.
pub fn fact_count(facts: &RekeyedFacts) -> usize {
    lists(facts).iter().map(|l| l.len()).sum()
}

fn lists(f: &RekeyedFacts) -> [&Vec<String>; 7] {
    [
        &f.interaction_ids,
        &f.order_ids,
        &f.return_ids,
        &f.survey_response_ids,
        &f.complaint_ids,
        &f.defection_ids,
        &f.consent_ids,
    ]
}

fn lists_mut(f: &mut RekeyedFacts) -> [&mut Vec<String>; 7] {
    [
        &mut f.interaction_ids,
        &mut f.order_ids,
        &mut f.return_ids,
        &mut f.survey_response_ids,
        &mut f.complaint_ids,
        &mut f.defection_ids,
        &mut f.consent_ids,
    ]
}

/// Split `facts` into parts of at most `max` ids each (at least one part,
/// empty when there is nothing), keeping every id once and in order.
pub fn split(mut facts: RekeyedFacts, max: usize) -> Vec<RekeyedFacts> {
    let max = max.max(1);
    let mut parts = vec![RekeyedFacts::default()];
    for (k, list) in lists_mut(&mut facts).into_iter().enumerate() {
        for id in list.drain(..) {
            let full = parts.last().is_some_and(|p| fact_count(p) >= max);
            if full {
                parts.push(RekeyedFacts::default());
            }
            if let Some(part) = parts.last_mut() {
                lists_mut(part)[k].push(id);
            }
        }
    }
    parts
}

/// What is kept of one erased consent record: its scope, state and lawful
/// basis, and the days (not instants) it was recorded, would expire and
/// was erased — no customer id, no source, no record id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchivedConsent {
    /// Channel.
    pub channel: i32,
    /// Purpose.
    pub purpose: i32,
    /// Granted or withdrawn.
    pub state: i32,
    /// The lawful basis it was recorded under.
    pub lawful_basis: i32,
    /// UTC day number it was recorded.
    pub recorded_day: i64,
    /// UTC day number it would have expired.
    pub expires_day: Option<i64>,
    /// UTC day number it was erased.
    pub erased_day: i64,
}

/// The non-identifying record of a consent erased at `erased_at_us`.
pub fn archive(
    consent: &pb::Consent,
    recorded_at_us: i64,
    expires_at_us: Option<i64>,
    erased_at_us: i64,
) -> ArchivedConsent {
    ArchivedConsent {
        channel: consent.channel,
        purpose: consent.purpose,
        state: consent.state,
        lawful_basis: consent.lawful_basis,
        recorded_day: day_of(recorded_at_us),
        expires_day: expires_at_us.map(day_of),
        erased_day: day_of(erased_at_us),
    }
}

#[cfg(test)]
mod tests {
    use crm_proto::common::v1::{TraitValue, trait_value};
    use prost::Message;

    use super::*;

    fn ids(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i}")).collect()
    }

    #[test]
    fn split_keeps_every_id_once_in_order_and_bounds_each_part() {
        let facts = RekeyedFacts {
            interaction_ids: ids("i", 7),
            order_ids: ids("o", 2),
            consent_ids: ids("c", 4),
            ..Default::default()
        };
        let parts = split(facts.clone(), 5);
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|p| fact_count(p) <= 5));
        let mut joined = RekeyedFacts::default();
        for p in parts {
            joined.interaction_ids.extend(p.interaction_ids);
            joined.order_ids.extend(p.order_ids);
            joined.consent_ids.extend(p.consent_ids);
        }
        assert_eq!(joined, facts);
    }

    #[test]
    fn nothing_to_split_is_one_empty_part() {
        assert_eq!(split(RekeyedFacts::default(), 10), vec![RekeyedFacts::default()]);
        assert_eq!(split(RekeyedFacts { order_ids: ids("o", 3), ..Default::default() }, 0).len(), 3);
    }

    #[test]
    fn redaction_keeps_sequence_kind_and_ids_but_no_content() {
        let mut attributes = std::collections::BTreeMap::new();
        attributes.insert(
            "note".to_owned(),
            TraitValue { kind: Some(trait_value::Kind::StringValue("lives at 1 Main St".into())) },
        );
        let interaction = pb::Interaction {
            id: "i1".into(),
            customer_id: "c1".into(),
            channel: 3,
            thread_id: "thread about a divorce".into(),
            attributes,
            sequence: 4,
            ..Default::default()
        };
        let event = InteractionEvent {
            sequence: 4,
            occur_time: None,
            customer_id: "c1".into(),
            kind: Some(Kind::SurveyResponseRecorded(pb::SurveyResponseRecorded {
                response: Some(pb::SurveyResponse {
                    id: "s1".into(),
                    customer_id: "c1".into(),
                    comment: "my neighbour Ann".into(),
                    nps: 3,
                    ..Default::default()
                }),
                interaction: Some(interaction),
            })),
        };
        let redacted = redact(event);
        assert_eq!(redacted.sequence, 4);
        assert_eq!(redacted.customer_id, "c1");
        let Some(Kind::SurveyResponseRecorded(r)) = &redacted.kind else { panic!("kind changed") };
        assert_eq!(r.response.as_ref().map(|s| (s.id.as_str(), s.nps, s.comment.as_str())), Some(("s1", 0, "")));
        let i = r.interaction.as_ref().expect("interaction stays");
        assert_eq!((i.id.as_str(), i.channel, i.attributes.len(), i.thread_id.as_str()), ("i1", 0, 0, ""));
        let bytes = redacted.encode_to_vec();
        for secret in ["Main St", "divorce", "Ann"] {
            assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "{secret} left");
        }
    }

    #[test]
    fn archived_consent_keeps_days_not_instants() {
        let consent =
            pb::Consent { channel: 2, purpose: 2, state: 2, lawful_basis: 1, source: "x".into(), ..Default::default() };
        let day = 86_400_000_000;
        let a = archive(&consent, 3 * day + 5, Some(9 * day + 1), 20 * day + 7);
        assert_eq!(
            a,
            ArchivedConsent {
                channel: 2,
                purpose: 2,
                state: 2,
                lawful_basis: 1,
                recorded_day: 3,
                expires_day: Some(9),
                erased_day: 20
            }
        );
    }
}
