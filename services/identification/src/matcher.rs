//! Probabilistic matching at the store (ID-4): the record a profile or a
//! touchpoint offers the matcher, blocking keys kept per profile, the
//! active matcher model, training from the stored profiles, and candidate
//! scoring for a resolve.

use std::{
    collections::BTreeSet,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use crm_proto::identification::v1::{self as pb, IdentifierType};
use crm_runtime::{db::Store, error::RuntimeError, reads::ReadRows, server::Shutdown, time::now};
use sea_orm::{ConnectionTrait, DbErr};

use crate::domain::{
    Normalized,
    matching::{self, MatchModel, Record, Scored},
};

/// Blocks larger than this are too common to tell people apart (e.g. a
/// phonetic surname key in a big city): their key is skipped at resolve.
pub const MAX_BLOCK: i64 = 200;

/// The record of a profile, from its attributes and identifiers.
pub fn record_of(profile: &pb::Profile) -> Record {
    let ids: Vec<Normalized> = profile
        .identifiers
        .iter()
        .filter_map(|i| i.identifier.as_ref())
        .map(|i| Normalized {
            kind: IdentifierType::try_from(i.r#type).unwrap_or(IdentifierType::Unspecified),
            namespace: i.namespace.clone(),
            value: i.value.clone(),
        })
        .collect();
    let attrs = pb::ProfileAttributes {
        name: profile.name.clone(),
        birth_date: profile.birth_date,
        address: profile.addresses.first().cloned(),
        ..Default::default()
    };
    record_of_touchpoint(&attrs, &ids)
}

/// The record of what a touchpoint offers.
pub fn record_of_touchpoint(attrs: &pb::ProfileAttributes, ids: &[Normalized]) -> Record {
    let name = attrs.name.clone().unwrap_or_default();
    let given = if name.given_name.is_empty() { name.display_name.clone() } else { name.given_name.clone() };
    let address = attrs.address.clone().unwrap_or_default();
    let first = |kind: IdentifierType| ids.iter().find(|n| n.kind == kind).map(|n| n.value.clone()).unwrap_or_default();
    Record {
        given_name: given,
        family_name: name.family_name,
        birth_date: attrs
            .birth_date
            .filter(|d| d.year != 0)
            .map(|d| (d.year, d.month.max(0) as u32, d.day.max(0) as u32)),
        street: address.lines.first().cloned().unwrap_or_default(),
        postcode: address.postal_code,
        locality: address.locality,
        phone: first(IdentifierType::Phone),
        email: first(IdentifierType::Email),
    }
    .normalized()
}

/// What a touchpoint that tells `r` sends: the attributes of which
/// [`record_of_touchpoint`] makes `r` again, and its e-mail and phone as
/// identifiers (empty ones left out). Loaders and load generators of
/// generated people use it.
pub fn touchpoint_of(r: &Record) -> (Vec<pb::Identifier>, pb::ProfileAttributes) {
    let identifiers = [(IdentifierType::Email, &r.email), (IdentifierType::Phone, &r.phone)]
        .into_iter()
        .filter(|(_, value)| !value.is_empty())
        .map(|(kind, value)| pb::Identifier { r#type: kind as i32, value: value.clone(), namespace: String::new() })
        .collect();
    let attributes = pb::ProfileAttributes {
        name: Some(pb::PersonName {
            given_name: r.given_name.clone(),
            family_name: r.family_name.clone(),
            ..Default::default()
        }),
        birth_date: r.birth_date.map(|(y, m, d)| crm_proto::common::v1::Date {
            year: y,
            month: m as i32,
            day: d as i32,
        }),
        address: Some(pb::PostalAddress {
            lines: if r.street.is_empty() { vec![] } else { vec![r.street.clone()] },
            postal_code: r.postcode.clone(),
            locality: r.locality.clone(),
            ..Default::default()
        }),
        ..Default::default()
    };
    (identifiers, attributes)
}

/// [`touchpoint_of`] as the service accepts it, the way a touchpoint or a
/// loader sends what it captured: without a birth date that is no calendar
/// date (a corrupted one) and without the e-mail or phone that is not valid
/// in `region` (a corrupted phone may no longer be a number). Empty
/// identifiers when neither is left.
pub fn accepted_touchpoint_of(r: &Record, region: &str) -> (Vec<pb::Identifier>, pb::ProfileAttributes) {
    let (mut identifiers, mut attributes) = touchpoint_of(r);
    if attributes.birth_date.as_ref().is_some_and(|d| !crate::conversions::is_plausible_birth_date(d)) {
        attributes.birth_date = None;
    }
    identifiers.retain(|i| {
        let kind = IdentifierType::try_from(i.r#type).unwrap_or(IdentifierType::Unspecified);
        crate::domain::normalize(kind, "", &i.value, region).is_ok()
    });
    (identifiers, attributes)
}

/// Whether a record says enough about a person to be matched on: a name
/// (given or family) and, all told, at least three facts (a missing given
/// or family name is a common gap in a real base).
pub fn matchable(r: &Record) -> bool {
    let facts = [
        !r.given_name.is_empty(),
        !r.family_name.is_empty(),
        r.birth_date.is_some(),
        !r.street.is_empty(),
        !r.postcode.is_empty(),
        !r.phone.is_empty(),
        !r.email.is_empty(),
    ];
    let named = facts[0] || facts[1];
    named && facts.iter().filter(|f| **f).count() >= 3
}

/// Identifiers that households share, whose match a contradicting person
/// overrides (a customer number or an external id is personal).
pub fn shareable(kind: IdentifierType) -> bool {
    matches!(kind, IdentifierType::Email | IdentifierType::Phone)
}

/// Records a profile keeps besides its current view; the least recently
/// seen go first.
pub const MAX_RECORDS: i64 = 16;

/// The slot of a profile's current view in `profile_records`.
const VIEW: i64 = 0;

/// Keep a record a touchpoint told about `profile_id`'s person, so later
/// resolves compare with it as well as with the profile's merged view.
/// Returns whether it was new.
pub async fn remember<C: ConnectionTrait>(c: &C, profile_id: &str, record: &Record, at_us: i64) -> Result<bool, DbErr> {
    let mut states = match_states(c, std::slice::from_ref(&profile_id.to_owned())).await?;
    let mut state = states.remove(profile_id).unwrap_or_default();
    let (told, statements) = remember_in(c.get_database_backend(), &mut state, profile_id, record, at_us);
    for s in statements {
        c.execute_raw(s).await?;
    }
    Ok(told)
}

/// A record kept for a profile, as stored.
#[derive(Debug, Clone)]
pub(crate) struct Kept {
    fingerprint: i64,
    seen_at_us: i64,
    /// `None` when it does not decode (it only narrows the evidence).
    record: Option<Record>,
}

/// What matching keeps of one profile: its records (its view under the
/// fingerprint `VIEW`, and what it was told) and its blocking keys.
#[derive(Debug, Clone, Default)]
pub(crate) struct MatchState {
    kept: Vec<Kept>,
    keys: BTreeSet<String>,
}

impl MatchState {
    /// The records it is compared by: its view and what it was told, or
    /// just `profile`'s view when none were kept.
    pub(crate) fn records(&self, profile: &pb::Profile) -> Vec<Record> {
        let mut by_fingerprint: Vec<&Kept> = self.kept.iter().collect();
        by_fingerprint.sort_by_key(|k| k.fingerprint);
        let records: Vec<Record> = by_fingerprint.into_iter().filter_map(|k| k.record.clone()).collect();
        if records.is_empty() { vec![record_of(profile)] } else { records }
    }

    /// Note a kept record, as stored.
    pub(crate) fn add_record(&mut self, fingerprint: i64, seen_at_us: i64, bytes: &[u8]) {
        self.kept.push(Kept { fingerprint, seen_at_us, record: Record::from_bytes(bytes) });
    }

    /// Note a blocking key.
    pub(crate) fn add_key(&mut self, key: String) {
        self.keys.insert(key);
    }
}

/// What matching keeps of each of `ids` (profiles keeping nothing are
/// absent), in one round trip.
pub(crate) async fn match_states<C: ConnectionTrait>(
    c: &C,
    ids: &[String],
) -> Result<std::collections::HashMap<String, MatchState>, DbErr> {
    let mut out: std::collections::HashMap<String, MatchState> = std::collections::HashMap::new();
    if ids.is_empty() {
        return Ok(out);
    }
    let marks = vec!["?"; ids.len()].join(", ");
    let mut values: Vec<sea_orm::Value> = ids.iter().map(|i| i.clone().into()).collect();
    values.extend(ids.iter().map(|i| i.clone().into()));
    let rows = c
        .query_all_raw(crm_runtime::db::stmt(
            c.get_database_backend(),
            &format!(
                "SELECT profile_id, fingerprint, seen_at_us, record, CAST(NULL AS TEXT) FROM profile_records \
                 WHERE profile_id IN ({marks}) \
                 UNION ALL SELECT profile_id, NULL, NULL, NULL, key FROM blocking_keys WHERE profile_id IN ({marks})"
            ),
            values,
        ))
        .await?;
    for row in rows {
        let id: String = row.try_get_by_index(0)?;
        let state = out.entry(id).or_default();
        match row.try_get_by_index::<Option<String>>(4)? {
            Some(key) => state.add_key(key),
            None => {
                let bytes: Vec<u8> = row.try_get_by_index(3)?;
                state.add_record(row.try_get_by_index(1)?, row.try_get_by_index(2)?, &bytes);
            }
        }
    }
    Ok(out)
}

/// [`remember`] planned on `state` (which it brings up to date): whether
/// the record was new, and the statements that store it.
pub(crate) fn remember_in(
    backend: sea_orm::DatabaseBackend,
    state: &mut MatchState,
    profile_id: &str,
    record: &Record,
    at_us: i64,
) -> (bool, Vec<sea_orm::Statement>) {
    if !matchable(record) {
        return (false, vec![]);
    }
    let fingerprint = record.fingerprint();
    if let Some(k) = state.kept.iter_mut().find(|k| k.fingerprint == fingerprint) {
        k.seen_at_us = at_us;
        let update = crm_runtime::db::stmt(
            backend,
            "UPDATE profile_records SET seen_at_us = ? WHERE profile_id = ? AND fingerprint = ?",
            vec![at_us.into(), profile_id.into(), fingerprint.into()],
        );
        return (false, vec![update]);
    }
    let mut statements = vec![crm_runtime::db::stmt(
        backend,
        "INSERT INTO profile_records (seen_at_us, profile_id, fingerprint, record) VALUES (?, ?, ?, ?)",
        vec![at_us.into(), profile_id.into(), fingerprint.into(), record.to_bytes().into()],
    )];
    state.kept.push(Kept { fingerprint, seen_at_us: at_us, record: Some(record.clone()) });
    // Only the most recently seen records stay, this one first whatever
    // the others' times (a clock stepped back): no statement here touches
    // a row another one touches.
    let mut told: Vec<(i64, i64)> = state
        .kept
        .iter()
        .filter(|k| k.fingerprint != VIEW && k.fingerprint != fingerprint)
        .map(|k| (k.seen_at_us, k.fingerprint))
        .collect();
    if told.len() as i64 >= MAX_RECORDS {
        told.sort_unstable_by(|a, b| b.cmp(a));
        let gone: Vec<i64> = told[MAX_RECORDS as usize - 1..].iter().map(|(_, f)| *f).collect();
        state.kept.retain(|k| !gone.contains(&k.fingerprint));
        let marks = vec!["?"; gone.len()].join(", ");
        let mut values = vec![profile_id.into()];
        values.extend(gone.iter().map(|f| (*f).into()));
        statements.push(crm_runtime::db::stmt(
            backend,
            &format!("DELETE FROM profile_records WHERE profile_id = ? AND fingerprint IN ({marks})"),
            values,
        ));
    }
    (true, statements)
}

/// Every record kept for `profile_id` (its view and what it was told).
async fn records_of_ids<C: ConnectionTrait>(c: &C, ids: &[String]) -> Result<Vec<(String, Record)>, DbErr> {
    if ids.is_empty() {
        return Ok(vec![]);
    }
    let marks = vec!["?"; ids.len()].join(", ");
    let rows = c
        .query_all_raw(crm_runtime::db::stmt(
            c.get_database_backend(),
            &format!(
                "SELECT profile_id, record FROM profile_records WHERE profile_id IN ({marks}) ORDER BY profile_id, fingerprint"
            ),
            ids.iter().map(|i| i.clone().into()).collect(),
        ))
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let id: String = row.try_get_by_index(0)?;
        let bytes: Vec<u8> = row.try_get_by_index(1)?;
        // A record that does not decode is skipped, not fatal: it only
        // narrows the evidence.
        if let Some(r) = Record::from_bytes(&bytes) {
            out.push((id, r));
        }
    }
    Ok(out)
}

/// The records a live profile is compared by: its own view and records,
/// or just its view when none were kept.
pub async fn records_of<C: ConnectionTrait>(c: &C, profile: &pb::Profile) -> Result<Vec<Record>, DbErr> {
    let mut records: Vec<Record> =
        records_of_ids(c, std::slice::from_ref(&profile.id)).await?.into_iter().map(|(_, r)| r).collect();
    if records.is_empty() {
        records.push(record_of(profile));
    }
    Ok(records)
}

/// Bring a profile's current view and the blocking keys of everything kept
/// for it up to date (after any change), writing only what changed: most
/// changes leave most keys as they were. Records of a profile merged away
/// stay under its id, which resolves to the survivor, so an unmerge needs
/// no re-indexing beyond the two profiles' views.
pub async fn index_profile<C: ConnectionTrait>(c: &C, profile: &pb::Profile) -> Result<(), DbErr> {
    let mut states = match_states(c, std::slice::from_ref(&profile.id)).await?;
    let state = states.remove(&profile.id).unwrap_or_default();
    for s in index_in(c.get_database_backend(), profile, &state).0 {
        c.execute_raw(s).await?;
    }
    Ok(())
}

/// [`index_profile`] planned on what matching keeps of the profile: the
/// statements that bring it up to date, and the blocking keys they add or
/// remove.
pub(crate) fn index_in(
    backend: sea_orm::DatabaseBackend,
    profile: &pb::Profile,
    state: &MatchState,
) -> (Vec<sea_orm::Statement>, Vec<String>) {
    let id = profile.id.as_str();
    let view = record_of(profile);
    let mut statements = Vec::new();
    let mut stored_view = None;
    let mut told = Vec::new();
    for k in &state.kept {
        // A record that does not decode is left out: it only narrows the
        // evidence.
        match (k.fingerprint == VIEW, &k.record) {
            (true, record) => stored_view = Some(record.clone()),
            (false, Some(record)) => told.push(record),
            (false, None) => {}
        }
    }

    // The view is kept unless unmatchable or already among the told records.
    let keep_view = matchable(&view) && !told.iter().any(|r| r.fingerprint() == view.fingerprint());
    match (stored_view, keep_view) {
        (Some(Some(old)), true) if old == view => {}
        (_, true) => statements.push(crm_runtime::db::stmt(
            backend,
            "INSERT INTO profile_records (profile_id, fingerprint, seen_at_us, record) VALUES (?, ?, ?, ?) \
             ON CONFLICT (profile_id, fingerprint) DO UPDATE SET seen_at_us = excluded.seen_at_us, record = excluded.record",
            vec![id.into(), VIEW.into(), now().timestamp_micros().into(), view.to_bytes().into()],
        )),
        (Some(_), false) => statements.push(crm_runtime::db::stmt(
            backend,
            "DELETE FROM profile_records WHERE profile_id = ? AND fingerprint = ?",
            vec![id.into(), VIEW.into()],
        )),
        (None, false) => {}
    }

    let wanted: BTreeSet<String> = told
        .into_iter()
        .chain(std::iter::once(&view))
        .filter(|r| matchable(r))
        .flat_map(matching::blocking_keys)
        .collect();
    let held = &state.keys;
    let stale: Vec<&String> = held.difference(&wanted).collect();
    for chunk in stale.chunks(200) {
        let marks = vec!["?"; chunk.len()].join(", ");
        let mut values = vec![id.into()];
        values.extend(chunk.iter().map(|k| (*k).clone().into()));
        statements.push(crm_runtime::db::stmt(
            backend,
            &format!("DELETE FROM blocking_keys WHERE profile_id = ? AND key IN ({marks})"),
            values,
        ));
    }
    let fresh: Vec<&String> = wanted.difference(held).collect();
    let changed: Vec<String> = stale.iter().chain(&fresh).map(|k| (*k).clone()).collect();
    for chunk in fresh.chunks(200) {
        let rows = vec!["(?, ?)"; chunk.len()].join(", ");
        let mut values = Vec::with_capacity(chunk.len() * 2);
        for key in chunk {
            values.push((*key).clone().into());
            values.push(id.into());
        }
        statements.push(crm_runtime::db::stmt(
            backend,
            &format!(
                "INSERT INTO blocking_keys (key, profile_id) VALUES {rows} ON CONFLICT (key, profile_id) DO NOTHING"
            ),
            values,
        ));
    }
    (statements, changed)
}

/// The token of blocking key `key` (see `crm_runtime::changes`): changed by
/// a write that adds it to a profile or takes it away, read by a resolve
/// whose touchpoint has it.
pub(crate) fn key_token(key: &str) -> u64 {
    crm_runtime::changes::token(&["identification.key", key])
}

/// Forget everything matching keeps of a profile (erased).
pub async fn unindex_profile<C: ConnectionTrait>(c: &C, profile_id: &str) -> Result<(), DbErr> {
    for sql in ["DELETE FROM blocking_keys WHERE profile_id = ?", "DELETE FROM profile_records WHERE profile_id = ?"] {
        c.execute_raw(crm_runtime::db::stmt(c.get_database_backend(), sql, vec![profile_id.into()])).await?;
    }
    Ok(())
}

/// A live profile that shares a blocking key with a touchpoint, with every
/// record kept for it (and for the profiles merged into it that share a key).
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The live profile.
    pub profile_id: String,
    /// Its records.
    pub records: Vec<Record>,
}

/// Live profiles sharing a blocking key with `record`, skipping keys whose
/// block is larger than `MAX_BLOCK`; of more, the `matching::MAX_CANDIDATES`
/// sharing the most keys (the lowest id first among equals). Keys of a
/// merged-away profile count for its survivor (ranked as a profile of its
/// own, so among more than that many its records may be left out); erased
/// profiles have none. One round trip (and one more when a candidate was
/// merged away): the blocks, each read in key order no further than tells
/// it is too large (an index range scan whatever the planner knows of the
/// table), and the records kept for the profiles of those that are not,
/// with whether each profile is live.
pub async fn candidates<C: ReadRows>(c: &C, record: &Record) -> Result<Vec<Candidate>, DbErr> {
    candidates_by_keys(c, &matching::blocking_keys(record).into_iter().collect()).await
}

/// [`candidates`] for a touchpoint whose blocking keys are `keys`.
pub(crate) async fn candidates_by_keys<C: ReadRows>(c: &C, keys: &BTreeSet<String>) -> Result<Vec<Candidate>, DbErr> {
    use crate::store::status;
    if keys.is_empty() {
        return Ok(vec![]);
    }
    let rows = c.rows(candidates_statement(c.backend(), keys)).await?;
    let mut kept: Vec<(String, Record)> = Vec::with_capacity(rows.len());
    let mut live: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    let mut merged: Vec<String> = Vec::new();
    for row in rows {
        let id: String = row.get(0)?;
        let bytes: Vec<u8> = row.get(1)?;
        let st: i32 = row.get(2)?;
        let into: Option<String> = row.get(3)?;
        match (st, into) {
            (status::ACTIVE, _) => {
                live.insert(id.clone(), id.clone());
            }
            (status::MERGED, Some(_)) if !merged.contains(&id) => merged.push(id.clone()),
            _ => {}
        }
        // A record that does not decode is skipped, not fatal: it only
        // narrows the evidence.
        if let Some(r) = Record::from_bytes(&bytes) {
            kept.push((id, r));
        }
    }
    live.extend(live_ids(c, &merged).await?);
    let mut grouped: std::collections::BTreeMap<String, Vec<Record>> = std::collections::BTreeMap::new();
    for (origin, record) in kept {
        if let Some(l) = live.get(&origin) {
            grouped.entry(l.clone()).or_default().push(record);
        }
    }
    Ok(grouped.into_iter().map(|(profile_id, records)| Candidate { profile_id, records }).collect())
}

/// The statement [`candidates`] runs for `keys`. Each block is read in key
/// order no further than tells it is too large. On PostgreSQL one statement
/// whatever the number of keys (they come as one JSON array): prepared once
/// per connection, its plan is soon made once for good (a generic plan),
/// where a statement per number of keys is planned again on every run
/// until each shape has run a few times (a tenth of a millisecond or more
/// for that many unions). SQLite has no lateral join: one union member per
/// key, a shape per number of keys, each prepared once.
fn candidates_statement(backend: sea_orm::DatabaseBackend, keys: &BTreeSet<String>) -> sea_orm::Statement {
    let (over, max, most) = (MAX_BLOCK + 1, MAX_BLOCK, matching::MAX_CANDIDATES);
    let rest = format!(
        "o AS (SELECT profile_id FROM b WHERE key IN (SELECT key FROM b GROUP BY key HAVING COUNT(*) <= {max}) \
         GROUP BY profile_id ORDER BY COUNT(*) DESC, profile_id LIMIT {most}) \
         SELECT r.profile_id, r.record, p.status, p.merged_into FROM profile_records r \
         JOIN profiles p ON p.id = r.profile_id WHERE r.profile_id IN (SELECT profile_id FROM o) \
         ORDER BY r.profile_id, r.fingerprint"
    );
    if backend == sea_orm::DatabaseBackend::Postgres {
        let keys = serde_json::Value::from(keys.iter().map(String::as_str).collect::<Vec<_>>()).to_string();
        let sql = format!(
            "WITH b AS (SELECT k.key, x.profile_id FROM json_array_elements_text(CAST(? AS json)) AS k(key) \
             CROSS JOIN LATERAL (SELECT profile_id FROM blocking_keys WHERE key = k.key \
             ORDER BY profile_id LIMIT {over}) AS x), {rest}"
        );
        return crm_runtime::db::stmt(backend, &sql, vec![keys.into()]);
    }
    let blocks = (0..keys.len())
        .map(|i| {
            format!(
                "SELECT key, profile_id FROM \
                 (SELECT key, profile_id FROM blocking_keys WHERE key = ? ORDER BY profile_id LIMIT {over}) AS b{i}"
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    let values = keys.iter().map(|k| k.clone().into()).collect();
    crm_runtime::db::stmt(backend, &format!("WITH b AS ({blocks}), {rest}"), values)
}

/// The live profile each id stands for: itself, or the survivor it was
/// merged into (following chains); erased ones are left out.
async fn live_ids<C: ReadRows>(c: &C, ids: &[String]) -> Result<std::collections::HashMap<String, String>, DbErr> {
    use crate::store::status;
    let mut out = std::collections::HashMap::new();
    // (origin, the id to look at next)
    let mut pending: Vec<(String, String)> = ids.iter().map(|i| (i.clone(), i.clone())).collect();
    for _ in 0..32 {
        if pending.is_empty() {
            break;
        }
        let mut look: Vec<String> = pending.iter().map(|(_, at)| at.clone()).collect();
        look.sort_unstable();
        look.dedup();
        let marks = vec!["?"; look.len()].join(", ");
        let rows = c
            .rows(crm_runtime::db::stmt(
                c.backend(),
                &format!("SELECT id, status, merged_into FROM profiles WHERE id IN ({marks})"),
                look.into_iter().map(Into::into).collect(),
            ))
            .await?;
        let mut state = std::collections::HashMap::new();
        for row in rows {
            let id: String = row.get(0)?;
            let st: i32 = row.get(1)?;
            let into: Option<String> = row.get(2)?;
            state.insert(id, (st, into));
        }
        let mut next = Vec::new();
        for (origin, at) in pending {
            match state.get(&at) {
                Some((st, _)) if *st == status::ACTIVE => {
                    out.insert(origin, at);
                }
                Some((st, Some(into))) if *st == status::MERGED => next.push((origin, into.clone())),
                _ => {}
            }
        }
        pending = next;
    }
    Ok(out)
}

/// The explanation of a probabilistic score, as the API shows it.
pub fn explain(scored: &Scored) -> pb::MatchExplanation {
    pb::MatchExplanation {
        method: pb::MatchMethod::Probabilistic as i32,
        matched_identifier: None,
        field_weights: scored
            .fields
            .iter()
            .map(|f| pb::FieldWeight { field: f.field.to_owned(), level: f.level.to_owned(), weight: f.weight })
            .collect(),
        total_weight: scored.total_weight,
    }
}

/// The active matcher, cached and refreshed from the store at most once a
/// second (another replica may have trained a new version).
#[derive(Debug, Clone)]
pub struct Matcher {
    inner: Arc<RwLock<Cached>>,
}

#[derive(Debug)]
struct Cached {
    version: i64,
    model: Arc<MatchModel>,
    checked: Instant,
}

impl Default for Matcher {
    fn default() -> Self {
        Matcher {
            inner: Arc::new(RwLock::new(Cached {
                version: 0,
                model: Arc::new(matching::default_model()),
                checked: Instant::now() - Duration::from_secs(60),
            })),
        }
    }
}

impl Matcher {
    /// The active model and its version (0: the built-in defaults).
    pub async fn active<C: ReadRows>(&self, c: &C) -> Result<(i64, Arc<MatchModel>), RuntimeError> {
        {
            let cached = self.inner.read().map_err(|_| RuntimeError::Internal("matcher lock poisoned".into()))?;
            if cached.checked.elapsed() < Duration::from_secs(1) {
                return Ok((cached.version, cached.model.clone()));
            }
        }
        let row = c
            .rows(crm_runtime::db::stmt(
                c.backend(),
                "SELECT version, model FROM matcher_models WHERE active = ? ORDER BY version DESC LIMIT 1",
                vec![true.into()],
            ))
            .await?
            .into_iter()
            .next();
        let mut cached = self.inner.write().map_err(|_| RuntimeError::Internal("matcher lock poisoned".into()))?;
        if let Some(row) = row {
            let version: i64 = row.get(0)?;
            if version != cached.version {
                let bytes: Vec<u8> = row.get(1)?;
                let model = MatchModel::from_bytes(&bytes)
                    .map_err(|e| RuntimeError::Internal(format!("stored matcher undecodable: {e}")))?;
                cached.version = version;
                cached.model = Arc::new(model);
            }
        }
        cached.checked = Instant::now();
        Ok((cached.version, cached.model.clone()))
    }

    /// Forget the cache (after training), so the next resolve reloads.
    pub fn invalidate(&self) {
        if let Ok(mut c) = self.inner.write() {
            c.checked = Instant::now() - Duration::from_secs(60);
        }
    }
}

/// Train a new matcher version on every live profile; activate it when it
/// converged (a fit that did not converge is kept, inactive, for review).
pub async fn train(store: &Store, matcher: &Matcher, max_pairs: i64) -> Result<pb::TrainMatcherResponse, RuntimeError> {
    fit(store, matcher, max_pairs, Fit::Train).await
}

/// What a new matcher version re-estimates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fit {
    /// Everything ([`matching::train_on_records`]).
    Train,
    /// `u`, the name frequencies and the prior, `m` kept
    /// ([`matching::refresh_on_records`]).
    Refresh,
}

/// A new matcher version fitted (`how`) on every live profile's records.
async fn fit(
    store: &Store,
    matcher: &Matcher,
    max_pairs: i64,
    how: Fit,
) -> Result<pb::TrainMatcherResponse, RuntimeError> {
    let (_, base) = matcher.active(store.conn()).await?;
    let records = crate::store::all_records(store).await?;
    let max_pairs = (max_pairs > 0).then(|| usize::try_from(max_pairs).unwrap_or(usize::MAX));
    let options = matching::TrainingOptions {
        // Random pairs for u: enough to see every level, scaled to the data
        // (a small base has few distinct pairs), unless the caller says.
        u_samples: max_pairs.unwrap_or_else(|| records.len().saturating_mul(50).clamp(10_000, 1_000_000)),
        // Candidate pairs: a sample of them beyond the cap.
        max_candidate_pairs: max_pairs.unwrap_or(matching::MAX_CANDIDATE_PAIRS),
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        ..Default::default()
    };
    let base = (*base).clone();
    let record_count = records.len() as i64;
    // Training runs on its own thread and stores its model even if the
    // caller gives up waiting.
    let store = store.clone();
    let matcher = matcher.clone();
    tokio::spawn(async move {
        let trained = tokio::task::spawn_blocking(move || match how {
            Fit::Train => matching::train_on_records(&base, &records, &options),
            Fit::Refresh => matching::refresh_on_records(&base, &records, &options),
        })
        .await
        .map_err(|e| RuntimeError::Internal(format!("training task failed: {e}")))?;
        save_trained(&store, &matcher, trained, record_count).await
    })
    .await
    .map_err(|e| RuntimeError::Internal(format!("training task failed: {e}")))?
}

/// Retrain the matcher on the stored profiles every `every` until
/// `shutdown` (ID-4), so the model follows the base as it grows and
/// changes. A failed or unconverged run is logged and the active model
/// stays.
pub fn schedule_training(store: Store, every: Duration, shutdown: Shutdown) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let matcher = Matcher::default();
        loop {
            tokio::select! {
                biased;
                () = shutdown.wait() => break,
                () = tokio::time::sleep(every) => {}
            }
            match train(&store, &matcher, 0).await {
                Ok(r) => tracing::info!(
                    version = r.matcher_version,
                    converged = r.converged,
                    pairs = r.pair_count,
                    "matcher retrained on schedule"
                ),
                Err(e) => tracing::warn!(error = %e, "scheduled matcher training failed"),
            }
        }
    })
}

/// The kept records at which the matcher retrains next, having last been
/// trained on `trained_on` of them: from `from` on, whenever they double,
/// so that a base loaded in bulk is matched with name frequencies soon
/// after it starts and training's total time stays within twice its last.
pub fn next_training_at(trained_on: u64, from: u64) -> u64 {
    from.max(trained_on.saturating_mul(2))
}

/// Refitting as the base grows (ID-4): resolves count the profiles they
/// create, and when the count reaches the next mark
/// ([`next_training_at`]) the kept records are counted exactly against
/// those the newest model was fitted on, and, if due, a new version
/// re-estimates `u`, the name frequencies and the prior (thresholds
/// calibrated on it) on the active model's `m`
/// ([`matching::refresh_on_records`]: a base being loaded may hold few of
/// its duplicates yet). One at a time per process;
/// replicas see each other's models in the store, so one of them fits at
/// each mark.
#[derive(Debug)]
pub struct GrowthTraining {
    from: u64,
    /// Kept records as last counted, plus the profiles created since.
    seen: std::sync::atomic::AtomicU64,
    /// The count at which to check again (0: not counted yet).
    due_at: std::sync::atomic::AtomicU64,
    running: Arc<tokio::sync::Mutex<()>>,
}

impl GrowthTraining {
    /// Refitting from `from` kept records on.
    pub fn new(from: u64) -> Self {
        GrowthTraining {
            from,
            seen: std::sync::atomic::AtomicU64::new(0),
            due_at: std::sync::atomic::AtomicU64::new(0),
            running: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Count `created` new profiles; true when a refit may be due.
    pub fn grew(&self, created: u64) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let seen = self.seen.fetch_add(created, Relaxed) + created;
        seen >= self.due_at.load(Relaxed)
    }

    /// Refit, in the background, if the store's kept records have reached
    /// the mark, unless a refit this process started runs already: a
    /// resolve never waits for it.
    pub fn refit_in_background_if_due(self: &Arc<Self>, store: &Store, matcher: &Matcher) {
        let Ok(running) = Arc::clone(&self.running).try_lock_owned() else { return };
        let (this, store, matcher) = (Arc::clone(self), store.clone(), matcher.clone());
        tokio::spawn(async move {
            let _running = running;
            if let Err(e) = this.check(&store, &matcher).await {
                tracing::warn!(error = %e, "matcher refit on growth failed");
            }
        });
    }

    /// Count, and refit if due (the caller holds `running`).
    async fn check(&self, store: &Store, matcher: &Matcher) -> Result<(), RuntimeError> {
        use std::sync::atomic::Ordering::Relaxed;
        let row = store
            .conn()
            .query_one_raw(crm_runtime::db::stmt(
                store.backend(),
                "SELECT (SELECT COUNT(*) FROM profile_records), \
                 (SELECT record_count FROM matcher_models ORDER BY version DESC LIMIT 1), \
                 (SELECT COUNT(*) FROM matcher_models)",
                vec![],
            ))
            .await?;
        let (records, trained_on, models) = match row {
            Some(r) => {
                (r.try_get_by_index::<i64>(0)?, r.try_get_by_index::<Option<i64>>(1)?, r.try_get_by_index::<i64>(2)?)
            }
            None => (0, None, 0),
        };
        let records = u64::try_from(records).unwrap_or(0);
        // A model from before counts were kept counts as trained on today's
        // base; the built-in one on none.
        let trained_on = match (models, trained_on) {
            (0, _) => 0,
            (_, Some(n)) => u64::try_from(n).unwrap_or(0),
            (_, None) => records,
        };
        let due = next_training_at(trained_on, self.from);
        if records < due {
            self.seen.store(records, Relaxed);
            self.due_at.store(due, Relaxed);
            return Ok(());
        }
        let started = Instant::now();
        let refreshed = fit(store, matcher, 0, Fit::Refresh).await?;
        tracing::info!(
            version = refreshed.matcher_version,
            pairs = refreshed.pair_count,
            records,
            seconds = started.elapsed().as_secs_f64(),
            "matcher's u, name frequencies and prior refitted as the base grew"
        );
        self.seen.store(records, Relaxed);
        self.due_at.store(next_training_at(records, self.from), Relaxed);
        Ok(())
    }
}

async fn save_trained(
    store: &Store,
    matcher: &Matcher,
    trained: matching::Trained,
    record_count: i64,
) -> Result<pb::TrainMatcherResponse, RuntimeError> {
    let tx = store.begin_write().await?;
    let next = tx
        .query_one_raw(tx.stmt("SELECT COALESCE(MAX(version), 0) + 1 FROM matcher_models", vec![]))
        .await?
        .map_or(Ok(1), |r| r.try_get_by_index::<i64>(0))?;
    if trained.converged {
        tx.execute_raw(tx.stmt("UPDATE matcher_models SET active = ?", vec![false.into()])).await?;
    }
    tx.execute_raw(tx.stmt(
        "INSERT INTO matcher_models (version, created_at_us, converged, iterations, pair_count, active, model, record_count) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        vec![
            next.into(),
            now().timestamp_micros().into(),
            trained.converged.into(),
            (trained.iterations as i32).into(),
            (trained.pair_count as i64).into(),
            trained.converged.into(),
            trained.model.to_bytes().into(),
            record_count.into(),
        ],
    ))
    .await?;
    tx.commit().await?;
    matcher.invalidate();
    Ok(pb::TrainMatcherResponse {
        matcher_version: next,
        converged: trained.converged,
        iterations: trained.iterations as i32,
        pair_count: trained.pair_count as i64,
        active: trained.converged,
        record_count,
        match_prior: trained.model.lambda,
        link_threshold: trained.model.upper,
        review_threshold: trained.model.lower,
    })
}

/// Version of the blocking key scheme, raised whenever a key kind is added
/// (2: `nl:` and `sn:`), so that profiles indexed before get the new keys.
pub const KEY_SCHEME: i64 = 2;

/// The `feed_cursors` row holding the key scheme the stored keys follow.
const KEY_SCHEME_MARK: &str = "identification.blocking_key_scheme";

/// Once per raise of [`KEY_SCHEME`], and on a store that never recorded
/// one, bring every live profile's view and keys up to date: a profile from
/// before records were kept gets its view, and every profile the keys of the
/// new kinds. In pages, run at start, before serving; a store already at
/// the scheme costs one read (not a search of every profile for one without
/// records, which took seconds at a million people). Returns the profiles
/// indexed.
pub async fn backfill(store: &Store) -> Result<u64, RuntimeError> {
    let mark = store
        .conn()
        .query_one_raw(crm_runtime::db::stmt(
            store.backend(),
            "SELECT position FROM feed_cursors WHERE name = ?",
            vec![KEY_SCHEME_MARK.into()],
        ))
        .await?
        .map(|r| r.try_get_by_index::<i64>(0))
        .transpose()?
        .unwrap_or(1);
    if mark >= KEY_SCHEME {
        return Ok(0);
    }
    // Indexing writes only what a profile lacks. Interrupted, it starts
    // over at the next start.
    let indexed = index_live_profiles(store).await?;
    let tx = store.begin_write().await?;
    tx.execute_raw(tx.stmt(
        "INSERT INTO feed_cursors (name, position) VALUES (?, ?) \
         ON CONFLICT (name) DO UPDATE SET position = excluded.position",
        vec![KEY_SCHEME_MARK.into(), KEY_SCHEME.into()],
    ))
    .await?;
    tx.commit().await?;
    Ok(indexed)
}

/// [`index_profile`] every live profile, in pages of 500 by id, a page per
/// transaction.
async fn index_live_profiles(store: &Store) -> Result<u64, RuntimeError> {
    const PAGE: &str = "SELECT id FROM profiles WHERE status = ? AND id > ? ORDER BY id LIMIT 500";
    let mut after = String::new();
    let mut indexed = 0;
    loop {
        let rows = store
            .conn()
            .query_all_raw(crm_runtime::db::stmt(
                store.backend(),
                PAGE,
                vec![crate::store::status::ACTIVE.into(), after.clone().into()],
            ))
            .await?;
        let ids: Vec<String> = rows.iter().map(|r| r.try_get_by_index::<String>(0)).collect::<Result<_, _>>()?;
        let Some(last) = ids.last() else { return Ok(indexed) };
        after.clone_from(last);
        let tx = store.begin_write().await?;
        for id in &ids {
            if let Some(profile) = crate::store::load_profile(&*tx, id).await? {
                index_profile(&*tx, &profile).await?;
                indexed += 1;
            }
        }
        tx.commit().await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn told(given: &str) -> Record {
        Record {
            given_name: given.into(),
            family_name: "garcia".into(),
            birth_date: Some((1980, 5, 17)),
            postcode: "28001".into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_matcher_retrains_from_a_minimum_base_each_time_it_doubles() {
        // Built-in model (trained on none) and small bases: the minimum.
        assert_eq!(next_training_at(0, 10_000), 10_000);
        assert_eq!(next_training_at(4_000, 10_000), 10_000);
        // Then twice what the last model saw.
        assert_eq!(next_training_at(10_000, 10_000), 20_000);
        assert_eq!(next_training_at(1_063_904, 10_000), 2_127_808);
        assert_eq!(next_training_at(u64::MAX / 2 + 1, 10), u64::MAX);
    }

    /// A resolve's statements touch rows none of the others touches (they
    /// may run as one statement): the record told now is never among those
    /// it pushes out, even when the others carry later times (a clock
    /// stepped back, another replica's clock).
    #[test]
    fn a_new_record_pushes_out_the_oldest_but_never_itself() {
        let backend = sea_orm::DatabaseBackend::Postgres;
        let at = 1_000_000;
        let mut state = MatchState::default();
        for i in 0..MAX_RECORDS {
            let r = told(&format!("name{i}"));
            state.kept.push(Kept { fingerprint: r.fingerprint(), seen_at_us: at - i, record: Some(r) });
        }
        let oldest = state.kept.last().map(|k| k.fingerprint).unwrap_or_default();
        let new = told("newcomer");
        let (was_new, statements) = remember_in(backend, &mut state, "p", &new, at - MAX_RECORDS);
        assert!(was_new);
        assert_eq!(statements.len(), 2, "an insert and a delete");
        let deleted: Vec<sea_orm::Value> = statements[1].values.as_ref().map(|v| v.0[1..].to_vec()).unwrap_or_default();
        assert_eq!(deleted, vec![sea_orm::Value::from(oldest)]);
        assert_eq!(state.kept.len() as i64, MAX_RECORDS);
        assert!(state.kept.iter().any(|k| k.fingerprint == new.fingerprint()));
    }
}
