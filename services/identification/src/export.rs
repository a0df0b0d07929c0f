//! The right-of-access document: everything held about a person, as JSON.

use crm_proto::{common::v1::trait_value, identification::v1 as pb};
use serde_json::{Value, json};

fn ts(t: &Option<prost_types::Timestamp>) -> Value {
    t.as_ref().and_then(crm_runtime::time::from_timestamp).map_or(Value::Null, |t| Value::String(t.to_rfc3339()))
}

fn enum_name<E: TryFrom<i32>>(v: i32, name: impl Fn(E) -> &'static str) -> Value {
    E::try_from(v).map_or(Value::Null, |e| Value::String(name(e).to_owned()))
}

/// The export document of a profile and its history.
pub fn document(p: &pb::Profile, changes: &[pb::ProfileChange]) -> Value {
    let name = p.name.clone().unwrap_or_default();
    let traits: serde_json::Map<String, Value> = p
        .traits
        .iter()
        .map(|(k, v)| {
            let value = match &v.kind {
                Some(trait_value::Kind::StringValue(s)) => json!(s),
                Some(trait_value::Kind::IntValue(i)) => json!(i),
                Some(trait_value::Kind::DoubleValue(d)) => json!(d),
                Some(trait_value::Kind::BoolValue(b)) => json!(b),
                Some(trait_value::Kind::TimestampValue(t)) => ts(&Some(*t)),
                None => Value::Null,
            };
            (k.clone(), value)
        })
        .collect();
    json!({
        "profile_id": p.id,
        "party_type": enum_name(p.party_type, |e: pb::PartyType| e.as_str_name()),
        "name": {
            "given_name": name.given_name,
            "middle_name": name.middle_name,
            "family_name": name.family_name,
            "display_name": name.display_name,
        },
        "birth_date": p.birth_date.map(|d| json!({"year": d.year, "month": d.month, "day": d.day})),
        "addresses": p.addresses.iter().map(|a| json!({
            "lines": a.lines, "locality": a.locality, "region": a.region,
            "postal_code": a.postal_code, "country_code": a.country_code,
        })).collect::<Vec<_>>(),
        "locale": p.locale,
        "lifecycle_stage": enum_name(p.lifecycle_stage, |e: pb::LifecycleStage| e.as_str_name()),
        "acquisition": p.acquisition.as_ref().map(|a| json!({
            "channel": enum_name(a.channel, |e: crm_proto::common::v1::Channel| e.as_str_name()),
            "campaign": a.campaign, "target_group": a.target_group,
        })),
        "traits": traits,
        "identifiers": p.identifiers.iter().map(|i| {
            let id = i.identifier.clone().unwrap_or_default();
            json!({
                "type": enum_name(id.r#type, |e: pb::IdentifierType| e.as_str_name()),
                "namespace": id.namespace, "value": id.value,
                "first_seen": ts(&i.create_time), "last_seen": ts(&i.last_seen_time),
            })
        }).collect::<Vec<_>>(),
        "created": ts(&p.create_time),
        "updated": ts(&p.update_time),
        "merged_profile_ids": p.merged_ids,
        "history": changes.iter().map(|c| json!({
            "sequence": c.sequence, "time": ts(&c.change_time), "kind": c.kind, "fields": c.changed_fields,
        })).collect::<Vec<_>>(),
    })
}
