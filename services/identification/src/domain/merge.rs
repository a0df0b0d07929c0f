//! Survivorship: how two profiles of one person become one (ID-5), field
//! by field, with the rule that decided each field kept as evidence.

use crm_proto::identification::v1::{LifecycleStage, PersonName, Profile};

use super::MAX_ADDRESSES;

/// Which profile a field's value came from, and by which rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDecision {
    /// The field.
    pub field: &'static str,
    /// The rule: "most_complete", "most_recent", "most_advanced", "first_touch", "union", "survivor".
    pub rule: &'static str,
    /// "survivor", "merged" or "both".
    pub source: &'static str,
}

fn micros(t: &Option<prost_types::Timestamp>) -> i64 {
    t.as_ref().map_or(i64::MIN, |t| t.seconds.saturating_mul(1_000_000).saturating_add(i64::from(t.nanos) / 1000))
}

fn name_parts(n: &Option<PersonName>) -> usize {
    n.as_ref().map_or(0, |n| {
        [&n.given_name, &n.family_name, &n.middle_name, &n.display_name].iter().filter(|s| !s.is_empty()).count()
    })
}

/// How far along the relationship a stage is (higher: further).
pub fn stage_rank(stage: i32) -> u8 {
    match LifecycleStage::try_from(stage).unwrap_or(LifecycleStage::Unspecified) {
        LifecycleStage::Unspecified => 0,
        LifecycleStage::Prospect => 1,
        LifecycleStage::Defected => 2,
        LifecycleStage::Lapsed => 3,
        LifecycleStage::FirstTimeCustomer => 4,
        LifecycleStage::RepeatCustomer => 5,
        LifecycleStage::LoyalCustomer => 6,
    }
}

/// The surviving profile of merging `merged` into `survivor`, and why.
/// Rules: names and birth dates, the most complete (then the most recent);
/// locale, the most recent; stage, the most advanced; acquisition, the
/// first touch; addresses and traits, the union (most recent first / wins).
pub fn survive(survivor: &Profile, merged: &Profile) -> (Profile, Vec<FieldDecision>) {
    let mut out = survivor.clone();
    let mut why = Vec::new();
    let merged_is_newer = micros(&merged.update_time) > micros(&survivor.update_time);
    let pick = |take_merged: bool| if take_merged { "merged" } else { "survivor" };

    let (sn, mn) = (name_parts(&survivor.name), name_parts(&merged.name));
    let take = mn > sn || (mn == sn && mn > 0 && merged_is_newer);
    if take {
        out.name = merged.name.clone();
    }
    why.push(FieldDecision {
        field: "name",
        rule: if mn != sn { "most_complete" } else { "most_recent" },
        source: pick(take),
    });

    let completeness = |p: &Profile| {
        p.birth_date.map_or(0, |d| usize::from(d.year != 0) + usize::from(d.month != 0) + usize::from(d.day != 0))
    };
    let (sd, md) = (completeness(survivor), completeness(merged));
    let take = md > sd;
    if take {
        out.birth_date = merged.birth_date;
    }
    why.push(FieldDecision { field: "birth_date", rule: "most_complete", source: pick(take) });

    let take = !merged.locale.is_empty() && (survivor.locale.is_empty() || merged_is_newer);
    if take {
        out.locale = merged.locale.clone();
    }
    why.push(FieldDecision { field: "locale", rule: "most_recent", source: pick(take) });

    let take = stage_rank(merged.lifecycle_stage) > stage_rank(survivor.lifecycle_stage);
    if take {
        out.lifecycle_stage = merged.lifecycle_stage;
    }
    why.push(FieldDecision { field: "lifecycle_stage", rule: "most_advanced", source: pick(take) });

    let take = micros(&merged.create_time) < micros(&survivor.create_time);
    if take {
        out.acquisition = merged.acquisition.clone();
        out.create_time = merged.create_time;
    }
    why.push(FieldDecision { field: "acquisition", rule: "first_touch", source: pick(take) });

    let (newer, older) = if merged_is_newer { (merged, survivor) } else { (survivor, merged) };
    let mut addresses = newer.addresses.clone();
    for a in &older.addresses {
        if !addresses.contains(a) {
            addresses.push(a.clone());
        }
    }
    addresses.truncate(MAX_ADDRESSES);
    out.addresses = addresses;
    why.push(FieldDecision { field: "addresses", rule: "union", source: "both" });

    let mut traits = older.traits.clone();
    traits.extend(newer.traits.clone());
    out.traits = traits;
    why.push(FieldDecision { field: "traits", rule: "union", source: "both" });

    out.merged_ids.push(merged.id.clone());
    out.merged_ids.extend(merged.merged_ids.iter().cloned());
    (out, why)
}

/// The decisions as a JSON array, for the merge's audit record.
pub fn evidence_json(decisions: &[FieldDecision]) -> String {
    let items: Vec<serde_json::Value> =
        decisions.iter().map(|d| serde_json::json!({"field": d.field, "rule": d.rule, "source": d.source})).collect();
    serde_json::Value::Array(items).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crm_proto::{common::v1::Date, identification::v1::PostalAddress};

    fn at(seconds: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp { seconds, nanos: 0 })
    }

    fn profile(id: &str, created: i64, updated: i64) -> Profile {
        Profile { id: id.into(), create_time: at(created), update_time: at(updated), ..Default::default() }
    }

    #[test]
    fn fields_survive_by_their_rules() {
        let mut s = profile("s", 100, 500);
        s.name = Some(PersonName { given_name: "Ana".into(), ..Default::default() });
        s.birth_date = Some(Date { year: 1990, month: 0, day: 0 });
        s.lifecycle_stage = LifecycleStage::RepeatCustomer as i32;
        s.locale = "es-ES".into();
        let mut m = profile("m", 50, 900);
        m.name = Some(PersonName { given_name: "Ana".into(), family_name: "García".into(), ..Default::default() });
        m.birth_date = Some(Date { year: 1990, month: 5, day: 17 });
        m.lifecycle_stage = LifecycleStage::Prospect as i32;
        m.locale = "ca-ES".into();
        m.merged_ids = vec!["older".into()];
        let (out, why) = survive(&s, &m);
        assert_eq!(out.id, "s");
        assert_eq!(out.name, m.name, "most complete name");
        assert_eq!(out.birth_date, m.birth_date, "most complete date");
        assert_eq!(out.lifecycle_stage, LifecycleStage::RepeatCustomer as i32, "most advanced stage");
        assert_eq!(out.locale, "ca-ES", "most recent locale");
        assert_eq!(out.create_time, at(50), "first touch");
        assert_eq!(out.merged_ids, ["m", "older"]);
        assert_eq!(why.len(), 7);
        assert!(evidence_json(&why).contains("most_advanced"));
    }

    #[test]
    fn addresses_and_traits_are_united() {
        let a = PostalAddress { locality: "Girona".into(), ..Default::default() };
        let b = PostalAddress { locality: "Porto".into(), ..Default::default() };
        let mut s = profile("s", 1, 1);
        s.addresses = vec![a.clone()];
        let mut m = profile("m", 2, 2);
        m.addresses = vec![b.clone(), a.clone()];
        let (out, _) = survive(&s, &m);
        assert_eq!(out.addresses, vec![b, a]);
    }

    #[test]
    fn stages_rank_by_relationship() {
        assert!(
            stage_rank(LifecycleStage::LoyalCustomer as i32) > stage_rank(LifecycleStage::FirstTimeCustomer as i32)
        );
        assert!(stage_rank(LifecycleStage::FirstTimeCustomer as i32) > stage_rank(LifecycleStage::Lapsed as i32));
        assert!(stage_rank(LifecycleStage::Lapsed as i32) > stage_rank(LifecycleStage::Prospect as i32));
    }
}
