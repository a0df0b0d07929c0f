//! The identification store: profiles and identifiers, and the resolve
//! transaction. Each profile row keeps its indexed columns beside the full
//! record (`body`, the encoded `Profile` without identifiers, which live
//! in their own table under a unique key).

use std::{collections::BTreeSet, sync::Arc};

use crm_proto::identification::v1::{self as pb, MatchExplanation, MatchMethod, ProfileEvent, profile_event::Kind};
use crm_runtime::{
    changes::WriteMark,
    db::{Store, WriteTxn},
    error::RuntimeError,
    eventlog,
    idempotency::{self, Claim},
    ids::new_id,
    page,
    reads::{ReadRows, Reads, Row},
    time::{now, to_timestamp},
};
use prost::Message;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DatabaseBackend, DbErr, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, QueryTrait, Statement, sea_query::Expr,
};

use crate::{
    conversions::{IdentifiersCommand, ProfileQuery, ResolveCommand, UpdateCommand},
    domain::{self, Normalized, matching},
    matcher::{self, Matcher},
};

/// Profiles.
pub mod profiles {
    #![allow(missing_docs)]
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "profiles")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub status: i32,
        pub lifecycle_stage: i32,
        pub target_group: String,
        pub created_at_us: i64,
        pub updated_at_us: i64,
        pub version: i64,
        pub body: Vec<u8>,
        pub trait_keys: String,
        pub merged_into: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Identifiers: normalised, each belonging to one profile.
pub mod identifiers {
    #![allow(missing_docs)]
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "identifiers")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub kind: i32,
        #[sea_orm(primary_key, auto_increment = false)]
        pub namespace: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub value: String,
        pub profile_id: String,
        pub created_at_us: i64,
        pub last_seen_at_us: i64,
        pub source_channel: i32,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Profile status codes.
pub mod status {
    /// Live.
    pub const ACTIVE: i32 = 1;
    /// Merged into another profile (`merged_into`); its id is an alias.
    pub const MERGED: i32 = 2;
    /// Personal data erased; a tombstone remains.
    pub const ERASED: i32 = 3;
}

/// The `trait_keys` column: every key between bars, for exact-key filters.
pub(crate) fn trait_keys(p: &pb::Profile) -> String {
    let mut keys: Vec<&String> = p.traits.keys().collect();
    keys.sort();
    let mut s = String::from("|");
    for k in keys {
        s.push_str(k);
        s.push('|');
    }
    s
}

pub(crate) fn to_pb_identifier(n: &Normalized) -> pb::Identifier {
    pb::Identifier { r#type: n.kind as i32, value: n.value.clone(), namespace: n.namespace.clone() }
}

fn micros_to_timestamp(us: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds: us.div_euclid(1_000_000), nanos: (us.rem_euclid(1_000_000) * 1000) as i32 })
}

pub(crate) fn id_condition(n: &Normalized) -> Condition {
    use identifiers::Column as C;
    Condition::all()
        .add(C::Kind.eq(n.kind as i32))
        .add(C::Namespace.eq(n.namespace.as_str()))
        .add(C::Value.eq(n.value.as_str()))
}

pub(crate) fn decode_profile(row: &profiles::Model) -> Result<pb::Profile, RuntimeError> {
    pb::Profile::decode(row.body.as_slice())
        .map_err(|e| RuntimeError::Internal(format!("stored profile undecodable: {e}")))
}

fn identifier_from_row(r: identifiers::Model) -> pb::ProfileIdentifier {
    pb::ProfileIdentifier {
        identifier: Some(pb::Identifier { r#type: r.kind, value: r.value, namespace: r.namespace }),
        create_time: micros_to_timestamp(r.created_at_us),
        last_seen_time: micros_to_timestamp(r.last_seen_at_us),
        source_channel: r.source_channel,
    }
}

/// A profile with its identifiers, as the API shows it.
pub(crate) async fn load_profile<C: ConnectionTrait>(c: &C, id: &str) -> Result<Option<pb::Profile>, RuntimeError> {
    let Some(row) = profiles::Entity::find_by_id(id.to_owned()).one(c).await? else {
        return Ok(None);
    };
    let mut profile = decode_profile(&row)?;
    profile.identifiers = identifiers::Entity::find()
        .filter(identifiers::Column::ProfileId.eq(id))
        .order_by_asc(identifiers::Column::CreatedAtUs)
        .all(c)
        .await?
        .into_iter()
        .map(identifier_from_row)
        .collect();
    Ok(Some(profile))
}

/// The live profile an id names: itself, or the survivor it was merged
/// into (ids are stable). Erased or unknown ids are NOT_FOUND.
pub(crate) async fn live_row<C: ConnectionTrait>(c: &C, id: &str) -> Result<profiles::Model, RuntimeError> {
    let not_found = || RuntimeError::NotFound { resource: "profile", id: id.to_owned() };
    let mut current = id.to_owned();
    for _ in 0..32 {
        let row = profiles::Entity::find_by_id(current.clone()).one(c).await?.ok_or_else(not_found)?;
        match (row.status, &row.merged_into) {
            (status::ACTIVE, _) => return Ok(row),
            (status::MERGED, Some(next)) => current = next.clone(),
            _ => return Err(not_found()),
        }
    }
    Err(RuntimeError::Internal(format!("alias chain of {id} too long")))
}

/// A profile by id, or NOT_FOUND.
pub async fn get_profile(store: &Store, id: &str) -> Result<pb::Profile, RuntimeError> {
    let row = live_row(store.conn(), id).await?;
    load_profile(store.conn(), &row.id)
        .await?
        .ok_or_else(|| RuntimeError::NotFound { resource: "profile", id: id.to_owned() })
}

/// Resolve a touchpoint's identifiers to one profile (ID-3, deterministic):
/// an identifier already held names the profile; otherwise a prospect is
/// created. It reads the identifiers' holders with its idempotency key,
/// then the candidates, and decides beside the store's writer (on a
/// SQLite file always, on the calling thread; on PostgreSQL while other
/// writes wait for the writer, on a pool connection); then one
/// group-committed write (see
/// `Store::group_commit_read_first`) writes what it decided — unless a
/// write begun since its read changed anything it read (`crm_runtime::
/// changes`): then it reads and decides again inside the write, so it sees
/// every write before it, those of its own batch included. Concurrent
/// resolves of the same new person create one profile: a store's
/// group-committed writes run one after the other, and should another
/// writer (another replica) insert the identifier first, the resolve hits
/// its unique key, rolls back alone and resolves again, now finding the
/// winner's profile (or, with the same request id, replaying its
/// response). A request id already answered is answered from the read.
pub async fn resolve(
    store: &Store,
    matcher: &Matcher,
    cmd: Arc<ResolveCommand>,
) -> Result<pb::ResolveIdentityResponse, RuntimeError> {
    resolve_with(store, matcher, cmd, true).await
}

/// [`resolve`], queued for the writer at its first poll, before anything
/// is read: resolves polled one after the other are written in that order,
/// each seeing the ones before it (a customer base loaded in the order of
/// its file). Reads and decides inside the write.
pub async fn resolve_in_order(
    store: &Store,
    matcher: &Matcher,
    cmd: Arc<ResolveCommand>,
) -> Result<pb::ResolveIdentityResponse, RuntimeError> {
    resolve_with(store, matcher, cmd, false).await
}

async fn resolve_with(
    store: &Store,
    matcher: &Matcher,
    cmd: Arc<ResolveCommand>,
    read_ahead: bool,
) -> Result<pb::ResolveIdentityResponse, RuntimeError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        // Read and decide beside the writer whenever that spares it work
        // (`Store::reads_ahead`); the write reads again only if something
        // it read changed meanwhile.
        let ahead = if let Some(reads) = read_ahead.then(|| store.reads_ahead()).flatten() {
            let mark = store.settled();
            let gathered = gather(&mut Reader::Ahead(reads), matcher, &cmd).await?;
            if let Some((fingerprint, response)) = gathered.stored {
                return idempotency::seen(cmd.fingerprint, fingerprint, response);
            }
            Some(Arc::new((mark, gathered)))
        } else {
            None
        };
        let (m, c) = (matcher.clone(), Arc::clone(&cmd));
        let outcome = store
            .group_commit_read_first(move |tx| Box::pin(resolve_in(tx, m.clone(), Arc::clone(&c), ahead.clone())))
            .await;
        match outcome {
            Err(RuntimeError::Database(e)) if attempt < 3 && RuntimeError::is_unique_violation(&e) => continue,
            other => return other,
        }
    }
}

/// Where a resolve reads: inside its write (after the deferred statements
/// of the writes before it in the batch), or before it is queued, where
/// the store reads fastest (`Store::reads`: on SQLite the calling thread).
enum Reader<'a> {
    Write(&'a mut WriteTxn),
    Ahead(Reads<'a>),
}

impl Reader<'_> {
    fn backend(&self) -> DatabaseBackend {
        match self {
            Reader::Write(tx) => tx.get_database_backend(),
            Reader::Ahead(r) => r.backend(),
        }
    }

    /// Every row of `query` (inside a write, with the deferred statements
    /// before it: see `WriteTxn::query_all_after_deferred`).
    async fn query_all(&mut self, query: Statement) -> Result<Vec<Row>, DbErr> {
        match self {
            Reader::Write(tx) => Ok(tx.query_all_after_deferred(query).await?.into_iter().map(Row::Pooled).collect()),
            Reader::Ahead(r) => r.rows(query).await,
        }
    }

    /// The active matcher model.
    async fn model(&self, matcher: &Matcher) -> Result<Arc<matching::MatchModel>, RuntimeError> {
        let (_, model) = match self {
            Reader::Write(tx) => matcher.active(&***tx).await?,
            Reader::Ahead(r) => matcher.active(r).await?,
        };
        Ok(model)
    }

    /// The candidates sharing one of the blocking keys `keys`.
    async fn candidates(&self, keys: &BTreeSet<String>) -> Result<Vec<matcher::Candidate>, DbErr> {
        match self {
            Reader::Write(tx) => matcher::candidates_by_keys(&***tx, keys).await,
            Reader::Ahead(r) => matcher::candidates_by_keys(r, keys).await,
        }
    }
}

/// What a resolve reads of the profiles it may settle on: every
/// identifier they hold (oldest first), their rows (each with whether a
/// merge into it stands: its changes are journaled then), and what
/// matching keeps of them; and its idempotency key, if stored.
#[derive(Default)]
struct Holdings {
    identifiers: Vec<identifiers::Model>,
    rows: std::collections::HashMap<String, (profiles::Model, bool)>,
    states: std::collections::HashMap<String, matcher::MatchState>,
    /// The stored key's request fingerprint and response.
    key: Option<(i64, Option<Vec<u8>>)>,
}

/// Read the [`Holdings`] of the profiles `holders` selects (SQL yielding
/// profile ids, bound to `values`), and the idempotency key `key` (scope,
/// request id), in one round trip with the deferred statements before it
/// (`WriteTxn::query_all_after_deferred`).
async fn holdings(
    reader: &mut Reader<'_>,
    holders: &str,
    values: Vec<sea_orm::Value>,
    key: Option<(&str, &str)>,
) -> Result<Holdings, RuntimeError> {
    let query = holdings_statement(reader.backend(), holders, values, key);
    let mut out = Holdings::default();
    for r in reader.query_all(query).await? {
        let part: i64 = r.get(0)?;
        let profile_id: String = r.get(1)?;
        let int = |i: usize| r.get::<i64>(i);
        match part {
            0 => out.identifiers.push(identifiers::Model {
                kind: int(2)? as i32,
                namespace: r.get(8)?,
                value: r.get(9)?,
                profile_id,
                created_at_us: int(3)?,
                last_seen_at_us: int(4)?,
                source_channel: int(5)? as i32,
            }),
            1 => {
                let row = profiles::Model {
                    id: profile_id.clone(),
                    status: int(2)? as i32,
                    lifecycle_stage: int(3)? as i32,
                    target_group: r.get(8)?,
                    created_at_us: int(4)?,
                    updated_at_us: int(5)?,
                    version: int(6)?,
                    body: r.get(11)?,
                    trait_keys: r.get(9)?,
                    merged_into: r.get(10)?,
                };
                out.rows.insert(profile_id, (row, int(7)? > 0));
            }
            2 => {
                let bytes: Vec<u8> = r.get(11)?;
                out.states.entry(profile_id).or_default().add_record(int(2)?, int(3)?, &bytes);
            }
            3 => out.states.entry(profile_id).or_default().add_key(r.get(8)?),
            _ => out.key = Some((int(2)?, r.get(11)?)),
        }
    }
    // Oldest first; those of the same time in the order stored.
    out.identifiers.sort_by_key(|i| i.created_at_us);
    Ok(out)
}

/// The statement [`holdings`] runs: one statement, its parts told apart by
/// their first column.
fn holdings_statement(
    backend: DatabaseBackend,
    holders: &str,
    mut values: Vec<sea_orm::Value>,
    key: Option<(&str, &str)>,
) -> Statement {
    let (standing, active) = crate::merges::standing_merges();
    values.push(active.into());
    let key_part = match key {
        Some((scope, request_id)) => {
            values.extend([scope.into(), request_id.into()]);
            " UNION ALL SELECT 4, '', k.fingerprint, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, k.response \
             FROM idempotency_keys k WHERE k.scope = ? AND k.request_id = ?"
        }
        None => "",
    };
    // The first part types every column for both backends; integers are
    // read as BIGINT.
    let sql = format!(
        "WITH h AS ({holders}) \
         SELECT CAST(0 AS BIGINT), i.profile_id, CAST(i.kind AS BIGINT), i.created_at_us, i.last_seen_at_us, \
         CAST(i.source_channel AS BIGINT), CAST(NULL AS BIGINT), CAST(NULL AS BIGINT), i.namespace, i.value, \
         CAST(NULL AS TEXT), NULL FROM identifiers i WHERE i.profile_id IN (SELECT profile_id FROM h) \
         UNION ALL SELECT 1, p.id, p.status, p.lifecycle_stage, p.created_at_us, p.updated_at_us, p.version, \
         {standing}, p.target_group, p.trait_keys, p.merged_into, p.body \
         FROM profiles p WHERE p.id IN (SELECT profile_id FROM h) \
         UNION ALL SELECT 2, r.profile_id, r.fingerprint, r.seen_at_us, NULL, NULL, NULL, NULL, NULL, NULL, NULL, \
         r.record FROM profile_records r WHERE r.profile_id IN (SELECT profile_id FROM h) \
         UNION ALL SELECT 3, k.profile_id, NULL, NULL, NULL, NULL, NULL, NULL, k.key, NULL, NULL, NULL \
         FROM blocking_keys k WHERE k.profile_id IN (SELECT profile_id FROM h){key_part}"
    );
    crm_runtime::db::stmt(backend, &sql, values)
}

/// The [`Holdings`] of the profiles holding any of `ids`, with `key`.
async fn holdings_of_identifiers(
    reader: &mut Reader<'_>,
    ids: &[Normalized],
    key: Option<(&str, &str)>,
) -> Result<Holdings, RuntimeError> {
    let (holders, values) = holders_of_identifiers(ids);
    holdings(reader, &holders, values, key).await
}

/// SQL selecting the profiles holding any of `ids`, and its values.
fn holders_of_identifiers(ids: &[Normalized]) -> (String, Vec<sea_orm::Value>) {
    let mut values: Vec<sea_orm::Value> = Vec::with_capacity(ids.len() * 3);
    let mut any = Vec::with_capacity(ids.len());
    for n in ids {
        any.push("(kind = ? AND namespace = ? AND value = ?)");
        values.extend([(n.kind as i32).into(), n.namespace.clone().into(), n.value.clone().into()]);
    }
    let any = if any.is_empty() { "1 = 0".to_owned() } else { any.join(" OR ") };
    (format!("SELECT profile_id FROM identifiers WHERE {any}"), values)
}

/// SQL selecting the profile `?` (see [`holdings`]).
const PROFILE_HOLDER: &str = "SELECT id AS profile_id FROM profiles WHERE id = ?";

/// The identifiers of `holders` that profile `id` holds.
fn held_by(holders: &[identifiers::Model], id: &str) -> Vec<Normalized> {
    holders.iter().filter(|r| r.profile_id == id).map(normalized_of_row).collect()
}

/// The touchpoint's identifiers that nobody holds (not among `matches`).
fn unowned<'a>(cmd: &'a ResolveCommand, matches: &[(Normalized, String)]) -> Vec<&'a Normalized> {
    cmd.identifiers.iter().filter(|n| !matches.iter().any(|(m, _)| m == *n)).collect()
}

fn normalized_of_row(r: &identifiers::Model) -> Normalized {
    Normalized { kind: domain::identifier_type(r.kind), namespace: r.namespace.clone(), value: r.value.clone() }
}

fn same_identifier(r: &identifiers::Model, n: &Normalized) -> bool {
    r.kind == n.kind as i32 && r.namespace == n.namespace && r.value == n.value
}

/// A profile as the API shows it: its row's body with the identifiers
/// `held` lists for it, in their order.
fn profile_with(row: &profiles::Model, held: &[identifiers::Model]) -> Result<pb::Profile, RuntimeError> {
    let mut profile = decode_profile(row)?;
    profile.identifiers = held.iter().filter(|i| i.profile_id == row.id).cloned().map(identifier_from_row).collect();
    Ok(profile)
}

/// What ResolveIdentity's reads are scoped under.
const RESOLVE_SCOPE: &str = "ResolveIdentity";

/// What a resolve reads, and what it decides on it, before it writes.
#[derive(Clone, Default)]
struct Gathered {
    /// Every identifier of the profiles it may settle on (see [`Holdings`]).
    holders: Vec<identifiers::Model>,
    rows: std::collections::HashMap<String, (profiles::Model, bool)>,
    states: std::collections::HashMap<String, matcher::MatchState>,
    /// The stored idempotency key's request fingerprint and response.
    stored: Option<(i64, Option<Vec<u8>>)>,
    /// The touchpoint's identifiers held already, with their holder.
    matches: Vec<(Normalized, String)>,
    touch_record: matching::Record,
    chosen: Option<Target>,
    review: Option<(String, MatchExplanation)>,
    near_miss: Option<MatchExplanation>,
    /// The tokens of everything read (see `crm_runtime::changes`).
    read: Vec<u64>,
}

/// The token of an identifier (see `crm_runtime::changes`): changed by a
/// write that gives it a holder, takes it away or marks it seen.
fn identifier_token(n: &Normalized) -> u64 {
    crm_runtime::changes::token(&["identification.identifier", &(n.kind as i32).to_string(), &n.namespace, &n.value])
}

/// The token of a profile: its row, its identifiers, what matching keeps
/// of it.
fn profile_token(id: &str) -> u64 {
    crm_runtime::changes::token(&["identification.profile", id])
}

/// The token of ResolveIdentity's idempotency key `request_id`.
fn request_token(request_id: &str) -> u64 {
    crm_runtime::changes::token(&["identification.request", request_id])
}

/// Read what a resolve decides on through `reader`, and decide: the
/// holders of its identifiers and its idempotency key; unless an
/// identifier settles it, the candidates sharing a blocking key, scored.
async fn gather(reader: &mut Reader<'_>, matcher: &Matcher, cmd: &ResolveCommand) -> Result<Gathered, RuntimeError> {
    let key = (!cmd.request_id.is_empty()).then_some((RESOLVE_SCOPE, cmd.request_id.as_str()));
    let Holdings { identifiers: mut holders, mut rows, mut states, key: stored } =
        holdings_of_identifiers(reader, &cmd.identifiers, key).await?;
    let mut read: Vec<u64> = cmd.identifiers.iter().map(identifier_token).collect();
    read.extend(key.map(|(_, request_id)| request_token(request_id)));
    if stored.is_some() {
        return Ok(Gathered { stored, read, ..Default::default() });
    }
    read.extend(holders.iter().map(|h| profile_token(&h.profile_id)));

    let matches: Vec<(Normalized, String)> = cmd
        .identifiers
        .iter()
        .filter_map(|n| holders.iter().find(|o| same_identifier(o, n)).map(|o| (n.clone(), o.profile_id.clone())))
        .collect();
    let unowned = unowned(cmd, &matches);

    // The strongest identifier decides, unless the touchpoint carries a
    // single-valued identifier (a customer number) that contradicts the
    // profile's, or the profile was found by a shareable identifier (email,
    // phone) and the person clearly differs (a household member): then it
    // is another person. A contradicting customer number rules the profile
    // out; a household member is left to the weight of all the evidence.
    let touch_record = matcher::record_of_touchpoint(&cmd.attributes, &cmd.identifiers);
    let mut excluded: Vec<String> = Vec::new();
    let mut household: Vec<String> = Vec::new();
    let mut chosen: Option<Target> = None;
    let mut by_strength: Vec<&(Normalized, String)> = matches.iter().collect();
    by_strength.sort_by_key(|(n, _)| std::cmp::Reverse(domain::normalize::priority(n.kind)));
    for (matched, profile_id) in by_strength {
        if excluded.contains(profile_id) || household.contains(profile_id) {
            continue;
        }
        let held = held_by(&holders, profile_id);
        if unowned.iter().any(|n| domain::profile::contradicts(&held, n)) {
            excluded.push(profile_id.clone());
            continue;
        }
        if matcher::shareable(matched.kind)
            && let Some((row, _)) = rows.get(profile_id)
        {
            let profile = profile_with(row, &holders)?;
            let records = match states.get(profile_id) {
                Some(state) => state.records(&profile),
                None => vec![matcher::record_of(&profile)],
            };
            if records.iter().all(|r| matching::contradicts_person(&touch_record, r)) {
                household.push(profile_id.clone());
                continue;
            }
        }
        chosen = Some(Target {
            profile_id: profile_id.clone(),
            held,
            arrived_with: Some(matched.clone()),
            explanation: MatchExplanation {
                method: MatchMethod::Deterministic as i32,
                matched_identifier: Some(to_pb_identifier(matched)),
                ..Default::default()
            },
            confidence: 1.0,
        });
        break;
    }

    // No identifier known: weigh the evidence (ID-4). Above the upper
    // threshold the touchpoint is that person; between the thresholds a new
    // profile is created and an operator asked to decide.
    let mut review: Option<(String, MatchExplanation)> = None;
    let mut near_miss: Option<MatchExplanation> = None;
    if chosen.is_none() {
        let record = &touch_record;
        if matcher::matchable(record) {
            let model = reader.model(matcher).await?;
            let mut best: Option<(String, matching::Scored)> = None;
            // Each candidate is compared by every record kept for it; its
            // best agreement counts.
            let keys: BTreeSet<String> = matching::blocking_keys(record).into_iter().collect();
            let candidates = reader.candidates(&keys).await?;
            read.extend(keys.iter().map(|k| matcher::key_token(k)));
            read.extend(candidates.iter().map(|c| profile_token(&c.profile_id)));
            for candidate in candidates {
                if excluded.contains(&candidate.profile_id) {
                    continue;
                }
                for stored in &candidate.records {
                    let scored = model.score(record, stored);
                    if matching::household::contradicts_levels(scored.vector, record, stored) {
                        continue;
                    }
                    if best.as_ref().is_none_or(|(_, b)| scored.total_weight > b.total_weight) {
                        best = Some((candidate.profile_id.clone(), scored));
                    }
                }
            }
            if let Some((candidate, scored)) = best {
                let explanation = matcher::explain(&scored);
                match model.decide(&scored) {
                    matching::Decision::Link => {
                        let theirs = holdings(reader, PROFILE_HOLDER, vec![candidate.clone().into()], None).await?;
                        holders.retain(|h| h.profile_id != candidate);
                        holders.extend(theirs.identifiers);
                        let held = held_by(&holders, &candidate);
                        if !unowned.iter().any(|n| domain::profile::contradicts(&held, n)) {
                            rows.extend(theirs.rows);
                            states.extend(theirs.states);
                            chosen = Some(Target {
                                profile_id: candidate,
                                held,
                                arrived_with: None,
                                explanation,
                                confidence: scored.probability,
                            });
                        }
                    }
                    matching::Decision::Review => review = Some((candidate, explanation)),
                    matching::Decision::NoMatch => near_miss = Some(explanation),
                }
            }
        }
    }
    read.sort_unstable();
    read.dedup();
    Ok(Gathered { holders, rows, states, stored: None, matches, touch_record, chosen, review, near_miss, read })
}

/// ResolveIdentity's work in `tx`, on what `ahead` read and decided from
/// its mark, unless something it read has changed since (or nothing was
/// read ahead): then it reads and decides here, its first statement
/// reading the holders and the idempotency key with the deferred
/// statements of the writes before it in its batch. What it writes and nothing in it reads back is deferred
/// to the end of the write (`WriteTxn::defer`), its key and response
/// included (`idempotency::record_later`): on SQLite one round trip with
/// the batch's others. It declares what it changes
/// (`WriteTxn::touches`), for the resolves reading beside it.
async fn resolve_in(
    tx: &mut WriteTxn,
    matcher: Matcher,
    cmd: Arc<ResolveCommand>,
    ahead: Option<Arc<(WriteMark, Gathered)>>,
) -> Result<pb::ResolveIdentityResponse, RuntimeError> {
    let gathered = match ahead.as_deref() {
        Some((mark, gathered)) if !tx.changed_since(*mark, &gathered.read) => gathered.clone(),
        _ => gather(&mut Reader::Write(tx), &matcher, &cmd).await?,
    };
    let Gathered { holders, mut rows, mut states, stored, matches, touch_record, chosen, review, near_miss, .. } =
        gathered;
    if let Some((fingerprint, response)) = stored {
        return idempotency::seen(cmd.fingerprint, fingerprint, response);
    }
    let at = now();
    let at_us = at.timestamp_micros();
    let backend = tx.get_database_backend();
    let unowned = unowned(&cmd, &matches);
    // What it changes: its key, its identifiers (given a holder or seen),
    // then its profile and the blocking keys it adds or takes away.
    let mut touched: Vec<u64> = cmd.identifiers.iter().map(identifier_token).collect();
    touched.extend((!cmd.request_id.is_empty()).then(|| request_token(&cmd.request_id)));

    // From here on the write only queues statements (but for a stitch,
    // which runs its own), each changing rows none of the others changes.
    let mark = tx.deferred_mark();
    let response = match chosen {
        None => {
            let (unowned, _) = domain::profile::within_limits(&[], &unowned);
            let mut profile = pb::Profile {
                id: new_id(),
                party_type: pb::PartyType::Person as i32,
                lifecycle_stage: pb::LifecycleStage::Prospect as i32,
                acquisition: Some(pb::Acquisition {
                    channel: if cmd.acquisition.channel != 0 { cmd.acquisition.channel } else { cmd.channel as i32 },
                    ..cmd.acquisition.clone()
                }),
                create_time: Some(to_timestamp(at)),
                update_time: Some(to_timestamp(at)),
                etag: "1".into(),
                ..Default::default()
            };
            domain::apply_attributes(&mut profile, &cmd.attributes);
            let target_group = cmd.acquisition.target_group.clone();
            let insert = profiles::Entity::insert(profiles::ActiveModel {
                id: Set(profile.id.clone()),
                status: Set(status::ACTIVE),
                lifecycle_stage: Set(profile.lifecycle_stage),
                target_group: Set(target_group),
                created_at_us: Set(at_us),
                updated_at_us: Set(at_us),
                version: Set(1),
                body: Set(profile.encode_to_vec()),
                trait_keys: Set(trait_keys(&profile)),
                merged_into: Set(None),
            })
            .build(backend);
            tx.defer(insert);
            let new_rows = identifier_rows(&profile.id, &unowned, cmd.channel as i32, at_us);
            if let Some(insert) = insert_identifiers_statement(backend, &new_rows) {
                tx.defer(insert);
            }
            profile.identifiers = new_rows.into_iter().map(identifier_from_row).collect();
            let (sequence, _) = tx
                .append_with(&profile.id, |s| {
                    event(
                        s,
                        at,
                        &profile.id,
                        Kind::ProfileCreated(pb::ProfileCreated { profile: Some(profile.clone()) }),
                    )
                })
                .await?;
            let mut state = matcher::MatchState::default();
            let (_, remembered) = matcher::remember_in(backend, &mut state, &profile.id, &touch_record, at_us);
            let (indexed, keys) = matcher::index_in(backend, &profile, &state);
            tx.defer_all(remembered.into_iter().chain(indexed));
            touched.push(profile_token(&profile.id));
            touched.extend(keys.iter().map(|k| matcher::key_token(k)));
            // Why it was not linked: the closest candidate's weights, if any.
            let why = review.as_ref().map(|(_, e)| e.clone()).or(near_miss).unwrap_or_default();
            let explanation = MatchExplanation { method: MatchMethod::Created as i32, ..why };
            let review_item_id = match &review {
                Some((existing, evidence)) => open_review(tx, existing, &profile.id, evidence),
                None => String::new(),
            };
            pb::ResolveIdentityResponse {
                profile: Some(profile),
                created: true,
                explanation: Some(explanation),
                confidence: 0.0,
                sequence,
                review_item_id,
            }
        }
        Some(Target { profile_id, held, arrived_with, explanation, confidence }) => {
            // Beyond a type's limit, new identifiers are not attached.
            let (unowned, _) = domain::profile::within_limits(&held, &unowned);
            let (row, standing) =
                rows.remove(&profile_id).ok_or_else(|| RuntimeError::Internal("identifier without profile".into()))?;
            let mut profile = decode_profile(&row)?;
            // Recognised by an identifier: what the person says now wins. By
            // probabilistic evidence only: fill what the profile lacks.
            let changed = if arrived_with.is_some() {
                domain::apply_attributes(&mut profile, &cmd.attributes)
            } else {
                domain::fill_attributes(&mut profile, &cmd.attributes)
            };
            // Stitching: an anonymous profile (cookies, devices only) seen in
            // this touchpoint is this person, now that they have identified
            // themselves: it is merged in, undoably, like any merge.
            let mut stitch: Vec<&String> = Vec::new();
            if arrived_with.as_ref().is_some_and(|m| !domain::normalize::is_anonymous(m.kind)) {
                for (n, owner) in &matches {
                    if *owner == profile_id || !domain::normalize::is_anonymous(n.kind) || stitch.contains(&owner) {
                        continue;
                    }
                    if domain::all_anonymous(&held_by(&holders, owner)) {
                        stitch.push(owner);
                    }
                }
            }
            // The merge reads what this write wrote before it: then the
            // writes run at once, otherwise at the end of the write.
            let mut writes: Vec<Statement> = Vec::new();
            // Seen again: every identifier of this profile used here.
            let mut ids: Vec<identifiers::Model> =
                holders.iter().filter(|h| h.profile_id == profile_id).cloned().collect();
            let seen: Vec<&Normalized> = matches.iter().filter(|(_, p)| *p == profile_id).map(|(n, _)| n).collect();
            if !seen.is_empty() {
                writes.push(
                    identifiers::Entity::update_many()
                        .col_expr(identifiers::Column::LastSeenAtUs, Expr::value(at_us))
                        .filter(seen.iter().fold(Condition::any(), |any, n| any.add(id_condition(n))))
                        .build(backend),
                );
            }
            for i in ids.iter_mut().filter(|i| seen.iter().any(|n| same_identifier(i, n))) {
                i.last_seen_at_us = at_us;
            }
            let new_rows = identifier_rows(&profile_id, &unowned, cmd.channel as i32, at_us);
            writes.extend(insert_identifiers_statement(backend, &new_rows));
            ids.extend(new_rows);
            let with_identifiers = |mut p: pb::Profile| {
                p.identifiers = ids.iter().cloned().map(identifier_from_row).collect();
                p
            };
            let mut sequence = 0;
            let mut full = None;
            if !changed.is_empty() {
                let version = row.version + 1;
                profile.update_time = Some(to_timestamp(at));
                profile.etag = version.to_string();
                writes.push(update_statement(backend, &row.id, version, &profile, at_us));
                let updated = with_identifiers(profile);
                let fields: Vec<String> = changed.iter().map(|s| (*s).to_owned()).collect();
                let (seq, _) = tx
                    .append_with(&row.id, |s| {
                        event(
                            s,
                            at,
                            &row.id,
                            Kind::ProfileUpdated(pb::ProfileUpdated {
                                profile: Some(updated.clone()),
                                changed_fields: fields,
                            }),
                        )
                    })
                    .await?;
                full = Some(updated);
                sequence = seq;
            }
            if !unowned.is_empty() {
                let added = unowned.iter().map(|n| to_pb_identifier(n)).collect();
                let (seq, _) = tx
                    .append_with(&profile_id, |s| {
                        event(
                            s,
                            at,
                            &profile_id,
                            Kind::IdentifiersChanged(pb::IdentifiersChanged { added, removed: vec![] }),
                        )
                    })
                    .await?;
                sequence = seq;
            }
            if standing && sequence > 0 {
                let entry = crate::merges::JournalEntry {
                    attributes: Some(cmd.attributes.clone()),
                    identifiers: unowned.iter().map(|n| to_pb_identifier(n)).collect(),
                    ..Default::default()
                };
                writes.push(crate::merges::journal_statement(tx, &profile_id, sequence, arrived_with.as_ref(), &entry));
            }
            let full = if stitch.is_empty() {
                for w in writes {
                    tx.defer(w);
                }
                let full = match full {
                    Some(f) => f,
                    None => with_identifiers(decode_profile(&row)?),
                };
                let mut state = states.remove(&profile_id).unwrap_or_default();
                let (told, remembered) = matcher::remember_in(backend, &mut state, &profile_id, &touch_record, at_us);
                for s in remembered {
                    tx.defer(s);
                }
                if sequence > 0 || told {
                    let (indexed, keys) = matcher::index_in(backend, &full, &state);
                    tx.defer_all(indexed);
                    touched.extend(keys.iter().map(|k| matcher::key_token(k)));
                }
                touched.push(profile_token(&profile_id));
                full
            } else {
                // A merge: it runs statements of its own, after those the
                // writes before it in the batch deferred, and may change
                // anything.
                tx.touches_everything();
                tx.flush_deferred().await?;
                for w in writes {
                    tx.execute_raw(w).await?;
                }
                for owner in stitch {
                    let s_row = live_row(&**tx, &profile_id).await?;
                    let q_row = live_row(&**tx, owner).await?;
                    let (p, _, seq) = crate::merges::merge_in(tx, &s_row, &q_row).await?;
                    full = Some(p);
                    sequence = seq;
                }
                let full = match full {
                    Some(f) => f,
                    None => load_profile(&**tx, &profile_id)
                        .await?
                        .ok_or_else(|| RuntimeError::Internal("profile vanished".into()))?,
                };
                let told = matcher::remember(&**tx, &profile_id, &touch_record, at_us).await?;
                if sequence > 0 || told {
                    matcher::index_profile(&**tx, &full).await?;
                }
                full
            };
            pb::ResolveIdentityResponse {
                profile: Some(full),
                created: false,
                explanation: Some(explanation),
                confidence,
                sequence,
                review_item_id: String::new(),
            }
        }
    };
    let subject = response.profile.as_ref().map(|p| p.id.clone()).unwrap_or_default();
    let decision = decision_statement(tx, &subject, response.sequence, response.explanation.as_ref());
    tx.defer(decision);
    idempotency::record_later(tx, RESOLVE_SCOPE, &cmd.request_id, cmd.fingerprint, &subject, &response);
    tx.combine_deferred_since(mark);
    tx.touches(touched);
    Ok(response)
}

/// The profile a resolve settled on, and why.
#[derive(Clone)]
struct Target {
    profile_id: String,
    held: Vec<Normalized>,
    /// The identifier that found it (None: found by probabilistic evidence).
    arrived_with: Option<Normalized>,
    explanation: MatchExplanation,
    confidence: f64,
}

/// Queue a review item, among the write's deferred statements: is
/// `candidate`, a profile created by this write, the person of `existing`?
/// (An operator cannot have refused a pair with a profile just created.)
fn open_review(tx: &mut WriteTxn, existing: &str, candidate: &str, evidence: &MatchExplanation) -> String {
    let id = new_id();
    let insert = tx.stmt(
        "INSERT INTO review_items (id, profile_id, candidate_profile_id, status, explanation, created_at_us) VALUES (?, ?, ?, ?, ?, ?)",
        vec![
            id.clone().into(),
            existing.into(),
            candidate.into(),
            review_status::OPEN.into(),
            evidence.encode_to_vec().into(),
            now().timestamp_micros().into(),
        ],
    );
    tx.defer(insert);
    id
}

/// Review item status codes.
pub mod review_status {
    /// Waiting for an operator.
    pub const OPEN: i32 = 1;
    /// Same person: merged.
    pub const ACCEPTED: i32 = 2;
    /// Different people: never match.
    pub const REJECTED: i32 = 3;
}

/// A page of kept records after a (profile, fingerprint): a range of the
/// primary key on both stores. (`profile_id > ? OR (profile_id = ? AND
/// …)` reads the same rows, but both stores then scan the key from its
/// start for every page: on PostgreSQL at a million people, a third of
/// TrainMatcher's time.)
const RECORDS_PAGE: &str = "SELECT profile_id, fingerprint, record FROM profile_records \
     WHERE (profile_id, fingerprint) > (?, ?) ORDER BY profile_id, fingerprint LIMIT 10000";

/// Every record kept for matching (each profile's view and what it was
/// told), read in pages (for training). Erased profiles keep none.
pub async fn all_records(store: &Store) -> Result<Vec<matching::Record>, RuntimeError> {
    let mut out = Vec::new();
    let (mut after_id, mut after_fp) = (String::new(), i64::MIN);
    loop {
        let rows = store
            .conn()
            .query_all_raw(crm_runtime::db::stmt(
                store.backend(),
                RECORDS_PAGE,
                vec![after_id.clone().into(), after_fp.into()],
            ))
            .await?;
        let Some(last) = rows.last() else { break };
        after_id = last.try_get_by_index(0)?;
        after_fp = last.try_get_by_index(1)?;
        for row in &rows {
            let bytes: Vec<u8> = row.try_get_by_index(2)?;
            if let Some(r) = matching::Record::from_bytes(&bytes) {
                out.push(r);
            }
        }
    }
    Ok(out)
}

/// The statement that keeps the explanation of a resolve's decision with
/// the profile it chose.
fn decision_statement(
    tx: &WriteTxn,
    profile_id: &str,
    sequence: i64,
    explanation: Option<&MatchExplanation>,
) -> Statement {
    let explanation = explanation.cloned().unwrap_or_default();
    tx.stmt(
        "INSERT INTO match_decisions (id, sequence, profile_id, method, explanation, created_at_us) VALUES (?, ?, ?, ?, ?, ?)",
        vec![
            new_id().into(),
            sequence.into(),
            profile_id.into(),
            explanation.method.into(),
            explanation.encode_to_vec().into(),
            now().timestamp_micros().into(),
        ],
    )
}

/// Delete what matching holds about an erased profile.
async fn forget_matching(tx: &WriteTxn, profile_id: &str) -> Result<(), DbErr> {
    for sql in [
        "DELETE FROM match_decisions WHERE profile_id = ?",
        "DELETE FROM blocking_keys WHERE profile_id = ?",
        "DELETE FROM profile_records WHERE profile_id = ?",
        "DELETE FROM review_items WHERE profile_id = ? OR candidate_profile_id = ?",
        "DELETE FROM never_match WHERE low_id = ? OR high_id = ?",
    ] {
        let values =
            if sql.contains(" OR ") { vec![profile_id.into(), profile_id.into()] } else { vec![profile_id.into()] };
        tx.execute_raw(tx.stmt(sql, values)).await?;
    }
    Ok(())
}

pub(crate) fn event(sequence: i64, at: chrono::DateTime<chrono::Utc>, profile_id: &str, kind: Kind) -> ProfileEvent {
    ProfileEvent { sequence, occur_time: Some(to_timestamp(at)), profile_id: profile_id.to_owned(), kind: Some(kind) }
}

pub(crate) async fn insert_identifiers(
    tx: &WriteTxn,
    profile_id: &str,
    ids: &[&Normalized],
    channel: i32,
    at_us: i64,
) -> Result<(), RuntimeError> {
    let rows = identifier_rows(profile_id, ids, channel, at_us);
    if let Some(insert) = insert_identifiers_statement(tx.get_database_backend(), &rows) {
        tx.execute_raw(insert).await?;
    }
    Ok(())
}

/// The rows of identifiers attached to `profile_id` now.
fn identifier_rows(profile_id: &str, ids: &[&Normalized], channel: i32, at_us: i64) -> Vec<identifiers::Model> {
    ids.iter()
        .map(|n| identifiers::Model {
            kind: n.kind as i32,
            namespace: n.namespace.clone(),
            value: n.value.clone(),
            profile_id: profile_id.to_owned(),
            created_at_us: at_us,
            last_seen_at_us: at_us,
            source_channel: channel,
        })
        .collect()
}

/// The statement inserting `rows` (`None` for none).
fn insert_identifiers_statement(backend: DatabaseBackend, rows: &[identifiers::Model]) -> Option<Statement> {
    if rows.is_empty() {
        return None;
    }
    let models = rows.iter().cloned().map(identifiers::ActiveModel::from);
    Some(identifiers::Entity::insert_many(models).build(backend))
}

/// The statement saving a profile's new body and version.
fn update_statement(backend: DatabaseBackend, id: &str, version: i64, profile: &pb::Profile, at_us: i64) -> Statement {
    profiles::Entity::update_many()
        .col_expr(profiles::Column::Version, Expr::value(version))
        .col_expr(profiles::Column::UpdatedAtUs, Expr::value(at_us))
        .col_expr(profiles::Column::LifecycleStage, Expr::value(profile.lifecycle_stage))
        .col_expr(
            profiles::Column::TargetGroup,
            Expr::value(profile.acquisition.as_ref().map(|a| a.target_group.clone()).unwrap_or_default()),
        )
        .col_expr(profiles::Column::TraitKeys, Expr::value(trait_keys(profile)))
        .col_expr(profiles::Column::Body, Expr::value(profile.encode_to_vec()))
        .filter(profiles::Column::Id.eq(id))
        .build(backend)
}

/// A page of live profiles, oldest first, and the next page's token.
pub async fn list_profiles(store: &Store, q: &ProfileQuery) -> Result<(Vec<pb::Profile>, String), RuntimeError> {
    use profiles::Column as C;
    let mut find = profiles::Entity::find().filter(C::Status.eq(status::ACTIVE));
    if let Some(stage) = q.lifecycle_stage {
        find = find.filter(C::LifecycleStage.eq(stage as i32));
    }
    if let Some(group) = &q.target_group {
        find = find.filter(C::TargetGroup.eq(group.as_str()));
    }
    if let Some(since) = q.updated_since_us {
        find = find.filter(C::UpdatedAtUs.gte(since));
    }
    if let Some(key) = &q.trait_key {
        // Keys are validated to [A-Za-z0-9_.:-]: no LIKE wildcards inside.
        find = find.filter(C::TraitKeys.like(format!("%|{key}|%")));
    }
    if let Some(after) = &q.after_id {
        find = find.filter(C::Id.gt(after.as_str()));
    }
    let mut rows = find.order_by_asc(C::Id).limit(q.page_size + 1).all(store.conn()).await?;
    let more = rows.len() as u64 > q.page_size;
    rows.truncate(q.page_size as usize);
    let next = match (more, rows.last()) {
        (true, Some(last)) => page::encode_token(&last.id),
        _ => String::new(),
    };
    let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    let mut held = identifiers::Entity::find()
        .filter(identifiers::Column::ProfileId.is_in(ids))
        .order_by_asc(identifiers::Column::CreatedAtUs)
        .all(store.conn())
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let mut p = decode_profile(row)?;
        let (mine, rest): (Vec<_>, Vec<_>) = held.into_iter().partition(|i| i.profile_id == row.id);
        held = rest;
        p.identifiers = mine.into_iter().map(identifier_from_row).collect();
        out.push(p);
    }
    Ok((out, next))
}

/// Save a profile's new body, bump its version, and append the update
/// event; returns the profile as the API shows it and the sequence.
pub(crate) async fn save_update(
    tx: &mut WriteTxn,
    row: &profiles::Model,
    mut profile: pb::Profile,
    changed: Vec<&'static str>,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<(pb::Profile, i64), RuntimeError> {
    let version = row.version + 1;
    profile.update_time = Some(to_timestamp(at));
    profile.etag = version.to_string();
    tx.execute_raw(update_statement(tx.get_database_backend(), &row.id, version, &profile, at.timestamp_micros()))
        .await?;
    let full = load_profile(&**tx, &row.id).await?.ok_or_else(|| RuntimeError::Internal("profile vanished".into()))?;
    matcher::index_profile(&**tx, &full).await?;
    let fields: Vec<String> = changed.iter().map(|s| (*s).to_owned()).collect();
    let (seq, _) = tx
        .append_with(&row.id, |s| {
            event(
                s,
                at,
                &row.id,
                Kind::ProfileUpdated(pb::ProfileUpdated { profile: Some(full.clone()), changed_fields: fields }),
            )
        })
        .await?;
    Ok((full, seq))
}

/// Update the fields an update mask names, if the etag (when given) matches.
pub async fn update_profile(store: &Store, cmd: &UpdateCommand) -> Result<pb::UpdateProfileResponse, RuntimeError> {
    const SCOPE: &str = "UpdateProfile";
    let mut tx = store.begin_write().await?;
    if let Claim::Replay(r) = idempotency::claim(&tx, SCOPE, &cmd.request_id, cmd.fingerprint).await? {
        tx.rollback().await?;
        return Ok(r);
    }
    let row = live_row(&*tx, &cmd.profile.id).await?;
    if row.id != cmd.profile.id {
        return Err(RuntimeError::FailedPrecondition(format!(
            "profile {} was merged into {}; update the survivor",
            cmd.profile.id, row.id
        )));
    }
    if !cmd.profile.etag.is_empty() && cmd.profile.etag != row.version.to_string() {
        return Err(RuntimeError::FailedPrecondition(format!(
            "etag {} does not match the current {}; read the profile again",
            cmd.profile.etag, row.version
        )));
    }
    let mut profile = decode_profile(&row)?;
    let changed = domain::profile::apply_mask(&mut profile, &cmd.profile, &cmd.paths);
    let response = if changed.is_empty() {
        let full =
            load_profile(&*tx, &row.id).await?.ok_or_else(|| RuntimeError::Internal("profile vanished".into()))?;
        pb::UpdateProfileResponse { profile: Some(full), sequence: 0 }
    } else {
        let (full, sequence) = save_update(&mut tx, &row, profile, changed, now()).await?;
        let entry = crate::merges::JournalEntry {
            update: Some(cmd.profile.clone()),
            update_paths: cmd.paths.clone(),
            ..Default::default()
        };
        crate::merges::journal(&tx, &row.id, sequence, None, &entry).await?;
        pb::UpdateProfileResponse { profile: Some(full), sequence }
    };
    idempotency::complete_for(&tx, SCOPE, &cmd.request_id, &row.id, &response).await?;
    tx.commit().await?;
    Ok(response)
}

/// A page of a profile's history, oldest first (from its feed events).
pub async fn list_changes(
    store: &Store,
    id: &str,
    page_size: u64,
    after: i64,
) -> Result<(Vec<pb::ProfileChange>, String), RuntimeError> {
    let row = live_row(store.conn(), id).await?;
    let mut events = eventlog::read_stream(store.conn(), &row.id, after, page_size.saturating_add(1)).await?;
    let more = events.len() as u64 > page_size;
    events.truncate(page_size as usize);
    let next = match (more, events.last()) {
        (true, Some(last)) => page::encode_token(&last.sequence.to_string()),
        _ => String::new(),
    };
    let changes = events.iter().map(change_from_event).collect::<Result<Vec<_>, _>>()?;
    Ok((changes, next))
}

fn change_from_event(e: &eventlog::StoredEvent) -> Result<pb::ProfileChange, RuntimeError> {
    let event = ProfileEvent::decode(e.payload.as_slice())
        .map_err(|err| RuntimeError::Internal(format!("stored event undecodable: {err}")))?;
    let changed_fields = match &event.kind {
        Some(Kind::ProfileUpdated(u)) => u.changed_fields.clone(),
        Some(Kind::IdentifiersChanged(_)) => vec!["identifiers".to_owned()],
        _ => vec![],
    };
    Ok(pb::ProfileChange { sequence: e.sequence, change_time: event.occur_time, kind: e.kind.clone(), changed_fields })
}

/// The normalised identifiers a profile holds.
pub(crate) async fn held_identifiers<C: ConnectionTrait>(
    c: &C,
    profile_id: &str,
) -> Result<Vec<Normalized>, RuntimeError> {
    Ok(identifiers::Entity::find()
        .filter(identifiers::Column::ProfileId.eq(profile_id))
        .all(c)
        .await?
        .into_iter()
        .map(|r| Normalized { kind: domain::identifier_type(r.kind), namespace: r.namespace, value: r.value })
        .collect())
}

/// Attach identifiers to a profile. One held by another profile is
/// ALREADY_EXISTS (merge the profiles instead); one beyond its type's limit
/// or contradicting a single-valued one is FAILED_PRECONDITION.
pub async fn add_identifiers(
    store: &Store,
    cmd: &IdentifiersCommand,
) -> Result<pb::AddIdentifiersResponse, RuntimeError> {
    const SCOPE: &str = "AddIdentifiers";
    let mut tx = store.begin_write().await?;
    if let Claim::Replay(r) = idempotency::claim(&tx, SCOPE, &cmd.request_id, cmd.fingerprint).await? {
        tx.rollback().await?;
        return Ok(r);
    }
    let row = live_row(&*tx, &cmd.profile_id).await?;
    let owned = identifiers::Entity::find()
        .filter(cmd.identifiers.iter().fold(Condition::any(), |c, n| c.add(id_condition(n))))
        .all(&*tx)
        .await?;
    if let Some(other) = owned.iter().find(|o| o.profile_id != row.id) {
        return Err(RuntimeError::AlreadyExists(format!(
            "a {} identifier given belongs to profile {}; merge the profiles instead",
            domain::identifier_type(other.kind).as_str_name(),
            other.profile_id
        )));
    }
    let held = held_identifiers(&*tx, &row.id).await?;
    let new: Vec<&Normalized> = cmd.identifiers.iter().filter(|n| !held.contains(n)).collect();
    if let Some(c) = new.iter().find(|n| domain::profile::contradicts(&held, n)) {
        return Err(RuntimeError::FailedPrecondition(format!(
            "the profile already holds another {}; a profile holds one",
            c.kind.as_str_name()
        )));
    }
    let (fit, over) = domain::profile::within_limits(&held, &new);
    if let Some(o) = over.first() {
        return Err(RuntimeError::FailedPrecondition(format!(
            "the profile holds the most {} identifiers allowed ({})",
            o.kind.as_str_name(),
            domain::profile::limit(o.kind)
        )));
    }
    let at = now();
    let mut sequence = 0;
    if !fit.is_empty() {
        insert_identifiers(&tx, &row.id, &fit, 0, at.timestamp_micros()).await?;
        let added = fit.iter().map(|n| to_pb_identifier(n)).collect();
        let (seq, _) = tx
            .append_with(&row.id, |s| {
                event(s, at, &row.id, Kind::IdentifiersChanged(pb::IdentifiersChanged { added, removed: vec![] }))
            })
            .await?;
        sequence = seq;
        let entry = crate::merges::JournalEntry {
            identifiers: fit.iter().map(|n| to_pb_identifier(n)).collect(),
            ..Default::default()
        };
        crate::merges::journal(&tx, &row.id, sequence, None, &entry).await?;
    }
    let profile = load_profile(&*tx, &row.id).await?;
    if let (Some(p), true) = (&profile, sequence > 0) {
        matcher::index_profile(&*tx, p).await?;
    }
    let response = pb::AddIdentifiersResponse { profile, sequence };
    idempotency::complete_for(&tx, SCOPE, &cmd.request_id, &row.id, &response).await?;
    tx.commit().await?;
    Ok(response)
}

/// Detach identifiers from a profile (those it does not hold are ignored).
pub async fn remove_identifiers(
    store: &Store,
    cmd: &IdentifiersCommand,
) -> Result<pb::RemoveIdentifiersResponse, RuntimeError> {
    const SCOPE: &str = "RemoveIdentifiers";
    let mut tx = store.begin_write().await?;
    if let Claim::Replay(r) = idempotency::claim(&tx, SCOPE, &cmd.request_id, cmd.fingerprint).await? {
        tx.rollback().await?;
        return Ok(r);
    }
    let row = live_row(&*tx, &cmd.profile_id).await?;
    let held = held_identifiers(&*tx, &row.id).await?;
    let gone: Vec<&Normalized> = cmd.identifiers.iter().filter(|n| held.contains(n)).collect();
    let mut sequence = 0;
    if !gone.is_empty() {
        identifiers::Entity::delete_many()
            .filter(identifiers::Column::ProfileId.eq(row.id.as_str()))
            .filter(gone.iter().fold(Condition::any(), |c, n| c.add(id_condition(n))))
            .exec(&*tx)
            .await?;
        let at = now();
        let removed = gone.iter().map(|n| to_pb_identifier(n)).collect();
        let (seq, _) = tx
            .append_with(&row.id, |s| {
                event(s, at, &row.id, Kind::IdentifiersChanged(pb::IdentifiersChanged { added: vec![], removed }))
            })
            .await?;
        sequence = seq;
    }
    let profile = load_profile(&*tx, &row.id).await?;
    if let (Some(p), true) = (&profile, sequence > 0) {
        matcher::index_profile(&*tx, p).await?;
    }
    let response = pb::RemoveIdentifiersResponse { profile, sequence };
    idempotency::complete_for(&tx, SCOPE, &cmd.request_id, &row.id, &response).await?;
    tx.commit().await?;
    Ok(response)
}

/// Erase a person (ID-6): their identifiers are deleted, their profile and
/// every profile merged into it become tombstones, their past events are
/// redacted, and `ProfileErased` is appended. Erasing again answers with
/// the first erasure's sequence.
pub async fn erase_profile(
    store: &Store,
    id: &str,
    request_id: &str,
    fp: i64,
) -> Result<pb::EraseProfileResponse, RuntimeError> {
    const SCOPE: &str = "EraseProfile";
    let mut tx = store.begin_write().await?;
    if let Claim::Replay(r) = idempotency::claim(&tx, SCOPE, request_id, fp).await? {
        tx.rollback().await?;
        return Ok(r);
    }
    let row = profiles::Entity::find_by_id(id.to_owned())
        .one(&*tx)
        .await?
        .ok_or_else(|| RuntimeError::NotFound { resource: "profile", id: id.to_owned() })?;
    if row.status == status::ERASED {
        let done = eventlog::read_stream(&*tx, id, 0, u64::MAX)
            .await?
            .into_iter()
            .rev()
            .find(|e| e.kind == "profile_erased")
            .map_or(0, |e| e.sequence);
        let response = pb::EraseProfileResponse { sequence: done };
        idempotency::complete(&tx, SCOPE, request_id, &response).await?;
        tx.commit().await?;
        return Ok(response);
    }
    // The person is the live profile and everything merged into it.
    let live = live_row(&*tx, id).await?;
    let mut ids = vec![live.id.clone()];
    let mut i = 0;
    while i < ids.len() {
        let merged =
            profiles::Entity::find().filter(profiles::Column::MergedInto.eq(ids[i].as_str())).all(&*tx).await?;
        ids.extend(merged.into_iter().map(|m| m.id));
        i += 1;
    }
    let at = now();
    for pid in &ids {
        identifiers::Entity::delete_many().filter(identifiers::Column::ProfileId.eq(pid.as_str())).exec(&*tx).await?;
        idempotency::forget_subject(&tx, pid).await?;
        crate::merges::forget(&tx, pid).await?;
        forget_matching(&tx, pid).await?;
        let row = profiles::Entity::find_by_id(pid.clone())
            .one(&*tx)
            .await?
            .ok_or_else(|| RuntimeError::Internal("profile vanished".into()))?;
        let stone = domain::profile::tombstone(&decode_profile(&row)?);
        profiles::Entity::update_many()
            .col_expr(profiles::Column::Status, Expr::value(status::ERASED))
            .col_expr(profiles::Column::Body, Expr::value(stone.encode_to_vec()))
            .col_expr(profiles::Column::TargetGroup, Expr::value(""))
            .col_expr(profiles::Column::TraitKeys, Expr::value("|"))
            .col_expr(profiles::Column::UpdatedAtUs, Expr::value(at.timestamp_micros()))
            .filter(profiles::Column::Id.eq(pid.as_str()))
            .exec(&*tx)
            .await?;
        eventlog::redact_stream(&*tx, pid, |e| match ProfileEvent::decode(e.payload.as_slice()) {
            Ok(ev) => domain::profile::redact(ev).encode_to_vec(),
            // Undecodable payloads cannot be vetted: drop their content.
            Err(_) => {
                ProfileEvent { sequence: e.sequence, profile_id: pid.clone(), ..Default::default() }.encode_to_vec()
            }
        })
        .await?;
    }
    let mut sequence = 0;
    for pid in &ids {
        let (seq, _) = tx
            .append_with(pid, |s| event(s, at, pid, Kind::ProfileErased(pb::ProfileErased { profile_id: pid.clone() })))
            .await?;
        sequence = seq;
    }
    let response = pb::EraseProfileResponse { sequence };
    idempotency::complete(&tx, SCOPE, request_id, &response).await?;
    tx.commit().await?;
    Ok(response)
}

/// Everything held about a person (right of access, ID-6): the profile,
/// its history, and one JSON document of both.
pub async fn export_profile(store: &Store, id: &str) -> Result<pb::ExportProfileResponse, RuntimeError> {
    let profile = get_profile(store, id).await?;
    // A person's whole history; profiles change at human pace.
    const MAX_HISTORY: u64 = 1_000_000;
    let (changes, _) = list_changes(store, &profile.id, MAX_HISTORY, 0).await?;
    let document_json = crate::export::document(&profile, &changes).to_string();
    Ok(pb::ExportProfileResponse { profile: Some(profile), changes, document_json })
}

/// A page of open review items, oldest first.
pub async fn list_review_items(
    store: &Store,
    page_size: u64,
    after: Option<&str>,
) -> Result<(Vec<pb::ReviewItem>, String), RuntimeError> {
    let rows = store
        .conn()
        .query_all_raw(store.stmt(
            "SELECT id, profile_id, candidate_profile_id, explanation, created_at_us FROM review_items \
             WHERE status = ? AND id > ? ORDER BY id LIMIT ?",
            vec![
                review_status::OPEN.into(),
                after.unwrap_or("").into(),
                (page_size.saturating_add(1).min(i64::MAX as u64) as i64).into(),
            ],
        ))
        .await?;
    let mut items = Vec::with_capacity(rows.len());
    for r in &rows {
        let explanation: Vec<u8> = r.try_get_by_index(3)?;
        items.push(pb::ReviewItem {
            id: r.try_get_by_index(0)?,
            profile_id: r.try_get_by_index(1)?,
            candidate_profile_id: r.try_get_by_index(2)?,
            explanation: Some(
                MatchExplanation::decode(explanation.as_slice())
                    .map_err(|e| RuntimeError::Internal(format!("stored explanation undecodable: {e}")))?,
            ),
            create_time: micros_to_timestamp(r.try_get_by_index(4)?),
        });
    }
    let more = items.len() as u64 > page_size;
    items.truncate(page_size as usize);
    let next = match (more, items.last()) {
        (true, Some(last)) => page::encode_token(&last.id),
        _ => String::new(),
    };
    Ok((items, next))
}

/// An operator's decision: accept merges the candidate into the existing
/// profile; reject remembers the pair as never-match.
pub async fn decide_review_item(
    store: &Store,
    id: &str,
    accept: bool,
    request_id: &str,
    fp: i64,
) -> Result<pb::DecideReviewItemResponse, RuntimeError> {
    const SCOPE: &str = "DecideReviewItem";
    let mut tx = store.begin_write().await?;
    if let Claim::Replay(r) = idempotency::claim(&tx, SCOPE, request_id, fp).await? {
        tx.rollback().await?;
        return Ok(r);
    }
    let item = tx
        .query_one_raw(
            tx.stmt("SELECT profile_id, candidate_profile_id, status FROM review_items WHERE id = ?", vec![id.into()]),
        )
        .await?
        .ok_or_else(|| RuntimeError::NotFound { resource: "review item", id: id.to_owned() })?;
    let existing: String = item.try_get_by_index(0)?;
    let candidate: String = item.try_get_by_index(1)?;
    let state: i32 = item.try_get_by_index(2)?;
    if state != review_status::OPEN {
        return Err(RuntimeError::FailedPrecondition(format!("review item {id} was already decided")));
    }
    let (profile, sequence) = if accept {
        let s_row = live_row(&*tx, &existing).await?;
        let m_row = live_row(&*tx, &candidate).await?;
        if s_row.id == m_row.id {
            (load_profile(&*tx, &s_row.id).await?, 0)
        } else {
            let (p, _, seq) = crate::merges::merge_in(&mut tx, &s_row, &m_row).await?;
            (Some(p), seq)
        }
    } else {
        let (low, high) = if existing < candidate { (&existing, &candidate) } else { (&candidate, &existing) };
        tx.execute_raw(tx.stmt(
            "INSERT INTO never_match (low_id, high_id) VALUES (?, ?) ON CONFLICT (low_id, high_id) DO NOTHING",
            vec![low.clone().into(), high.clone().into()],
        ))
        .await?;
        let row = live_row(&*tx, &existing).await?;
        (load_profile(&*tx, &row.id).await?, 0)
    };
    let status = if accept { review_status::ACCEPTED } else { review_status::REJECTED };
    tx.execute_raw(tx.stmt("UPDATE review_items SET status = ? WHERE id = ?", vec![status.into(), id.into()])).await?;
    let response = pb::DecideReviewItemResponse { profile, sequence };
    idempotency::complete_for(&tx, SCOPE, request_id, &existing, &response).await?;
    tx.commit().await?;
    Ok(response)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use crm_proto::{
        common::v1::{Channel, Date},
        identification::v1::IdentifierType,
    };
    use crm_runtime::testing::TestDb;

    use super::*;

    fn command(ids: &[(IdentifierType, &str)]) -> Arc<ResolveCommand> {
        let req = pb::ResolveIdentityRequest {
            identifiers: ids
                .iter()
                .map(|(kind, value)| pb::Identifier {
                    r#type: *kind as i32,
                    value: (*value).into(),
                    namespace: String::new(),
                })
                .collect(),
            channel: Channel::Web as i32,
            ..Default::default()
        };
        Arc::new(ResolveCommand::from_request(req, "ES").expect("valid"))
    }

    /// A touchpoint of a person born on 1985-03-12 in Girona, with an
    /// email, under `request_id`.
    fn touch(given: &str, family: &str, street: &str, email: &str, request_id: &str) -> Arc<ResolveCommand> {
        let req = pb::ResolveIdentityRequest {
            identifiers: vec![pb::Identifier {
                r#type: IdentifierType::Email as i32,
                value: email.into(),
                namespace: String::new(),
            }],
            channel: Channel::Store as i32,
            attributes: Some(pb::ProfileAttributes {
                name: Some(pb::PersonName {
                    given_name: given.into(),
                    family_name: family.into(),
                    ..Default::default()
                }),
                birth_date: Some(Date { year: 1985, month: 3, day: 12 }),
                address: Some(pb::PostalAddress {
                    lines: vec![street.into()],
                    postal_code: "17001".into(),
                    locality: "Girona".into(),
                    country_code: "ES".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            request_id: request_id.into(),
            ..Default::default()
        };
        Arc::new(ResolveCommand::from_request(req, "ES").expect("valid"))
    }

    /// While writes wait for the writer (on a SQLite file, always), a
    /// resolve reads and decides beside it (`Store::reads`), and
    /// what it read there decides when nothing it read changed since: the
    /// person the evidence points to, the holder of a known identifier,
    /// the stored answer to a request id answered before.
    #[tokio::test]
    async fn a_resolve_beside_waiting_writes_decides_on_what_it_read() {
        let db = TestDb::new("identification").await;
        let store = Store::connect(&db.url, 4).await.expect("connect");
        store.migrate::<crate::migration::Migrator>().await.expect("migrate");
        let matcher = Matcher::default();
        let first = touch("María José", "García López", "Carrer Major 12", "mj@correu.cat", "touch-1");
        let known = resolve(&store, &matcher, Arc::clone(&first)).await.expect("known");
        let known_id = known.profile.as_ref().expect("profile").id.clone();

        // Hold the writer with a write that changes nothing a resolve reads.
        let gate = Arc::new(tokio::sync::Notify::new());
        let held = tokio::spawn({
            let (store, gate) = (store.clone(), Arc::clone(&gate));
            async move {
                store
                    .group_commit(move |tx| {
                        tx.touches(std::iter::empty());
                        let gate = Arc::clone(&gate);
                        Box::pin(async move {
                            gate.notified().await;
                            Ok(())
                        })
                    })
                    .await
            }
        });
        let queued = |n: usize| {
            let store = store.clone();
            async move {
                while store.writes_waiting() < n {
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
            }
        };
        let spawn = |cmd: Arc<ResolveCommand>| {
            let (store, matcher) = (store.clone(), matcher.clone());
            tokio::spawn(async move { resolve(&store, &matcher, cmd).await.expect("resolve") })
        };
        queued(1).await;
        // The same person, a new email, no accents, a typo in the street:
        // only the candidates read ahead tell who it is.
        let by_evidence =
            spawn(touch("Maria Jose", "Garcia Lopez", "Carrer Majr 12", "mariajose@feina.cat", "touch-2"));
        queued(2).await;
        let by_email = spawn(touch("M. José", "García", "Carrer Major 12", "mj@correu.cat", "touch-3"));
        queued(3).await;
        // A retry is answered from the read, without waiting for the writer.
        let replayed = tokio::time::timeout(std::time::Duration::from_secs(10), spawn(first))
            .await
            .expect("answered beside the writer")
            .expect("task");
        assert_eq!(replayed, known);

        gate.notify_one();
        held.await.expect("task").expect("held write");
        let by_evidence = by_evidence.await.expect("task");
        assert!(!by_evidence.created, "{:?}", by_evidence.explanation);
        assert_eq!(by_evidence.profile.as_ref().map(|p| p.id.as_str()), Some(known_id.as_str()));
        let how = by_evidence.explanation.expect("explanation");
        assert_eq!(how.method, MatchMethod::Probabilistic as i32);
        let by_email = by_email.await.expect("task");
        assert_eq!(by_email.profile.as_ref().map(|p| p.id.as_str()), Some(known_id.as_str()));
        assert_eq!(by_email.explanation.map(|e| e.method), Some(MatchMethod::Deterministic as i32));
    }

    /// A resolve's holdings are read from the few profiles found, and
    /// training's pages of records from where the last one ended, by index
    /// searches: a table scanned would make every resolve, or every page,
    /// as slow as the table is large (SQLite's planner has chosen such
    /// plans for equivalent SQL).
    #[tokio::test]
    async fn reads_by_key_search_an_index_and_never_scan_a_table() {
        let db = TestDb::new("identification").await;
        let store = Store::connect(&db.url, 4).await.expect("connect");
        if store.backend() != DatabaseBackend::Sqlite {
            return;
        }
        store.migrate::<crate::migration::Migrator>().await.expect("migrate");
        let cmd = command(&[(IdentifierType::Email, "ana@correo.es"), (IdentifierType::Phone, "+34 612 345 678")]);
        let (holders, values) = holders_of_identifiers(&cmd.identifiers);
        let by_identifiers =
            holdings_statement(store.backend(), &holders, values, Some(("ResolveIdentity", "touch-1")));
        let by_id = holdings_statement(store.backend(), PROFILE_HOLDER, vec!["p-1".into()], None);
        let records_page = store.stmt(RECORDS_PAGE, vec!["p-1".into(), 7_i64.into()]);
        for query in [by_identifiers, by_id, records_page] {
            let plan = Statement { sql: format!("EXPLAIN QUERY PLAN {}", query.sql), ..query };
            let steps: Vec<String> = store
                .conn()
                .query_all_raw(plan)
                .await
                .expect("plan")
                .iter()
                .map(|r| r.try_get_by_index::<String>(3).expect("detail"))
                .collect();
            // Scanning the profiles found (`h`) is the point; scanning a
            // table is not.
            let scans: Vec<&String> =
                steps.iter().filter(|s| s.strip_prefix("SCAN ").is_some_and(|what| what != "h")).collect();
            assert!(scans.is_empty(), "{steps:#?}");
        }
    }

    #[tokio::test]
    async fn a_resolve_marks_every_identifier_it_came_with_as_seen_and_no_other() {
        let db = TestDb::new("identification").await;
        let store = Store::connect(&db.url, 4).await.expect("connect");
        store.migrate::<crate::migration::Migrator>().await.expect("migrate");
        let email = (IdentifierType::Email, "ana@correo.es");
        let phone = (IdentifierType::Phone, "+34 612 345 678");
        let number = (IdentifierType::CustomerNumber, "C-77");
        let first = resolve(&store, &Matcher::default(), command(&[email, phone, number])).await.expect("first");
        let seen = || async {
            let rows = store
                .conn()
                .query_all_raw(store.stmt("SELECT kind, last_seen_at_us FROM identifiers ORDER BY kind", vec![]))
                .await
                .expect("read");
            rows.iter()
                .map(|r| (r.try_get_by_index::<i32>(0).unwrap(), r.try_get_by_index::<i64>(1).unwrap()))
                .collect::<Vec<_>>()
        };
        let before = seen().await;
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        let again = resolve(&store, &Matcher::default(), command(&[email, phone])).await.expect("again");
        assert_eq!(again.profile.as_ref().map(|p| &p.id), first.profile.as_ref().map(|p| &p.id));
        let after = seen().await;
        let of = |rows: &[(i32, i64)], kind: i32| rows.iter().find(|(k, _)| *k == kind).unwrap().1;
        let (email, phone, number) =
            (IdentifierType::Email as i32, IdentifierType::Phone as i32, IdentifierType::CustomerNumber as i32);
        for kind in [email, phone] {
            assert!(of(&after, kind) > of(&before, kind), "kind {kind} seen again");
        }
        assert_eq!(of(&after, email), of(&after, phone), "seen by one resolve");
        assert_eq!(of(&after, number), of(&before, number));
        // The answer shows the same times as the store.
        let shown = again.profile.expect("profile").identifiers;
        assert_eq!(shown.len(), 3);
        for i in shown {
            let kind = i.identifier.expect("identifier").r#type;
            let at = crm_runtime::time::from_timestamp(&i.last_seen_time.expect("last seen")).expect("in range");
            assert_eq!(at.timestamp_micros(), of(&after, kind), "kind {kind}");
        }
    }
}
