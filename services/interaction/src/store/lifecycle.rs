//! Identity lifecycle (IN-7): interaction follows the identification feed
//! and applies merges, unmerges and erasures to the facts it holds. Each
//! profile event is applied inside the feed consumer's transaction, which
//! also moves its cursor and appends the resulting interaction events: the
//! effect, the cursor and the outbox event commit together, so a crash or a
//! restart applies nothing twice and loses nothing. Other profile events
//! (created, updated, identifiers changed) concern nothing held here.
//!
//! # Merge: re-keying with a ledger
//!
//! `ProfileMerged { surviving_id, merged_id, merge_id }` moves every fact
//! of the merged customer — interactions, orders, returns, survey
//! responses, complaints, defections, consent records (every table with a
//! `customer_id`; order lines, return lines and ratings belong to their
//! parent row) — to the survivor by rewriting `customer_id`. Where each
//! fact came from is kept in a ledger, `merge_facts (merge_id, fact_table,
//! fact_id)`, beside the merge itself in `customer_merges`. A ledger rather
//! than an "original customer" column because merges stack: a customer
//! merged into one that is later merged again is carried by both merges,
//! and each unmerge must know exactly its own share.
//!
//! Contact policy: the merged customer's policy is set aside in its
//! `customer_merges` row. If the survivor has a policy it is kept; if it
//! has none it adopts the merged one's (as a new version, noted as
//! adopted).
//!
//! While the merge stands the merged id is an alias: a write for it is
//! recorded on the survivor (and noted in the merge's ledger, so it goes
//! back with the rest on unmerge), and a read of it reads the survivor.
//! A merge appends `CustomerRekeyed { from: merged, to: survivor, merge_id,
//! reason: MERGE }` listing every fact moved.
//!
//! # Unmerge: splitting back exactly
//!
//! `ProfileUnmerged { surviving_id, restored_id, merge_id }` moves back the
//! facts in that merge's ledger (what the merged customer had, and what was
//! written for its id while merged), plus the returns of the orders that go
//! back (and their return interactions), since a return belongs to whoever
//! owns its order. Facts recorded for the survivor's own id after the merge
//! stay with the survivor: they were recorded for it. The restored
//! customer gets its set-aside policy back; a survivor that adopted that
//! policy and did not change it since goes back to the defaults (under a
//! new etag: an etag never names two states). Identification undoes merges
//! last-in first-out, so the ledger's facts are all at the survivor again
//! when their unmerge arrives. It appends `CustomerRekeyed { from:
//! survivor, to: restored, merge_id, reason: UNMERGE }` listing exactly the
//! facts moved back.
//!
//! # Erasure
//!
//! `ProfileErased { profile_id }` deletes every fact of that customer from
//! every table (child rows included), its contact policy, the merges it
//! took part in with their ledgers and set-aside policies, and the stored
//! idempotent responses about it (every write stores its response with the
//! customer it was for as subject); it rewrites the customer's entries in
//! the event log to carry no personal content (sequence, kind, customer id
//! and fact ids stay, so the feed keeps no holes) and appends
//! `CustomerErased`. Identification erases a person as their live profile
//! and every profile merged into it, one `ProfileErased` each, so what was
//! written under any of their ids goes. The event log's stream key (the
//! customer id, as identification keeps it in its tombstone) and commit
//! times are kept: they are the feed's structure, not content.
//!
//! # Consent history on erasure: what is kept and why
//!
//! GDPR art. 7(1) asks the controller to be able to demonstrate that the
//! data subject consented to processing based on consent; art. 17 gives the
//! data subject the right to have their personal data erased, and art.
//! 17(3) only exempts what is still necessary (a legal obligation, or the
//! establishment, exercise or defence of legal claims). After an erasure
//! nothing is processed for the person any more, so no further processing
//! needs consent demonstrated; keeping a consent history linked to the
//! person "in case of a claim" would keep exactly the data the person asked
//! to erase, without a concrete claim to justify it (a legal hold on a
//! pending dispute is an operator's decision made before erasing, not a
//! default). So the consent history is deleted with everything else.
//!
//! What is kept, in `consent_archive`, is a non-identifying record per
//! erased consent record: channel, purpose, state (granted / withdrawn),
//! lawful basis, and the UTC *days* it was recorded, would have expired and
//! was erased — no customer id, no source text, no record id, a random (not
//! time-ordered) row id, and days rather than instants so that it cannot be
//! matched back to the erased customer's entries in the event log. It lets
//! the controller show, for accountability (art. 5(2)), that the consents
//! it relied on existed, under which basis and scope, and that they ended
//! with the erasure, without identifying anyone.
//!
//! # Concurrency
//!
//! On PostgreSQL every write takes a shared transaction-scoped advisory
//! lock and a merge, unmerge or erasure takes it exclusively: a re-key
//! waits for the writes in flight, and a write that starts after it sees
//! the merge and follows the alias, so no fact is left behind under a
//! merged or erased id. SQLite runs one writer at a time already.

use std::collections::{BTreeSet, HashMap};

use crm_proto::{
    identification::v1::{ProfileErased, ProfileEvent, ProfileMerged, ProfileUnmerged, profile_event},
    interaction::v1::{
        self as pb, CustomerErased, CustomerRekeyed, InteractionEvent, RekeyReason, RekeyedFacts,
        interaction_event::Kind,
    },
};
use crm_runtime::{
    consumer::Projection,
    db::{Lookup, WriteTxn},
    error::RuntimeError,
    eventlog, idempotency,
    time::{now, to_timestamp},
};
use futures::future::BoxFuture;
use prost::Message;
use sea_orm::{ConnectionTrait, DatabaseBackend, DbErr, Value};

use crate::{
    conversions::default_policy,
    domain::lifecycle::{self, MAX_FACTS_PER_EVENT},
};

/// The tables holding facts about a customer in a `customer_id` column,
/// each keyed by `id`, parents before the rows that reference them.
pub const FACT_TABLES: [&str; 7] =
    ["interactions", "orders", "order_returns", "survey_responses", "complaints", "defections", "consents"];

/// Most merges followed from one id (a guard against a corrupt cycle).
const MAX_HOPS: usize = 64;
/// Ids per `IN (…)` list.
const IN_CHUNK: usize = 500;

/// The version a survivor's adopted policy gets (it had none: version 0).
const ADOPTED_VERSION: i64 = 1;

/// Applies the identification feed to the interaction store.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdentityLifecycle;

impl Projection<ProfileEvent> for IdentityLifecycle {
    fn apply<'a>(&'a self, tx: &'a mut WriteTxn, event: &'a ProfileEvent) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            match &event.kind {
                Some(profile_event::Kind::ProfileMerged(m)) => merge(tx, m).await,
                Some(profile_event::Kind::ProfileUnmerged(u)) => unmerge(tx, u).await,
                Some(profile_event::Kind::ProfileErased(e)) => erase(tx, e).await,
                Some(_) | None => Ok(()),
            }
        })
    }
}

fn lock_key() -> i64 {
    idempotency::fingerprint(b"interaction:identity-lifecycle")
}

/// Let writes run beside each other but not beside a merge, unmerge or
/// erasure (PostgreSQL; SQLite runs one writer at a time).
pub(crate) async fn lock_shared(tx: &WriteTxn) -> Result<(), DbErr> {
    if tx.get_database_backend() == DatabaseBackend::Postgres {
        tx.execute_raw(tx.stmt("SELECT pg_advisory_xact_lock_shared(?)", vec![lock_key().into()])).await?;
    }
    Ok(())
}

async fn lock_exclusive(tx: &WriteTxn) -> Result<(), DbErr> {
    if tx.get_database_backend() == DatabaseBackend::Postgres {
        tx.execute_raw(tx.stmt("SELECT pg_advisory_xact_lock(?)", vec![lock_key().into()])).await?;
    }
    Ok(())
}

/// Where the facts about a customer are kept now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The id itself, or the survivor it was merged into (following later
    /// merges of that survivor).
    pub id: String,
    /// The merges followed, first to last.
    pub via: Vec<String>,
}

/// The holder of `customer_id`'s facts, read through `c`.
pub async fn holder<C: ConnectionTrait>(c: &C, customer_id: &str) -> Result<Holder, DbErr> {
    let mut h = Holder { id: customer_id.to_owned(), via: Vec::new() };
    for _ in 0..MAX_HOPS {
        let row = c
            .query_one_raw(crm_runtime::db::stmt(
                c.get_database_backend(),
                "SELECT merge_id, surviving_id FROM customer_merges WHERE merged_id = ? ORDER BY applied_at_us DESC LIMIT 1",
                vec![h.id.clone().into()],
            ))
            .await?;
        let Some(row) = row else { break };
        h.via.push(row.try_get_by_index(0)?);
        h.id = row.try_get_by_index(1)?;
    }
    Ok(h)
}

/// The holder of `customer_id`'s facts for a write in `tx`, after waiting
/// for any merge, unmerge or erasure in flight.
pub(crate) async fn write_holder(tx: &WriteTxn, customer_id: &str) -> Result<Holder, DbErr> {
    lock_shared(tx).await?;
    holder(&**tx, customer_id).await
}

/// The lookup of a write queued by `Store::group_commit_with_lookup` that
/// [`claim_and_holder`] takes: the stored fingerprint and response of
/// `request_id` within `scope`, and the latest merge of `customer_id`, in
/// one row.
pub(crate) fn claim_lookup(backend: DatabaseBackend, scope: &str, request_id: &str, customer_id: &str) -> Lookup {
    Lookup::new(crm_runtime::db::stmt(
        backend,
        "SELECT k.fingerprint, k.response, m.merge_id, m.surviving_id FROM (SELECT 1 AS one) AS base \
         LEFT JOIN idempotency_keys k ON k.scope = ? AND k.request_id = ? \
         LEFT JOIN (SELECT merge_id, surviving_id FROM customer_merges WHERE merged_id = ? \
                    ORDER BY applied_at_us DESC LIMIT 1) m ON 1 = 1",
        vec![scope.into(), request_id.into(), customer_id.into()],
    ))
    .with_idempotency_key(scope, request_id)
    .batched("interaction-claim", claims_sql, vec![scope.into(), request_id.into(), customer_id.into()])
}

/// `n` lookups of [`claim_lookup`] in one query.
fn claims_sql(n: usize) -> String {
    let latest = |column: &str| {
        format!(
            "(SELECT {column} FROM customer_merges WHERE merged_id = q.customer_id ORDER BY applied_at_us DESC LIMIT 1)"
        )
    };
    format!(
        "WITH q (lookup_index, scope, request_id, customer_id) AS (VALUES {}) \
         SELECT k.fingerprint, k.response, {} AS merge_id, {} AS surviving_id, q.lookup_index FROM q \
         LEFT JOIN idempotency_keys k ON k.scope = q.scope AND k.request_id = q.request_id",
        vec!["(?, ?, ?, ?)"; n].join(", "),
        latest("merge_id"),
        latest("surviving_id"),
    )
}

/// For a write queued by `Store::group_commit_with_lookup` with
/// [`claim_lookup`] (same scope, request id and customer): the stored
/// response of the request if its key was seen (see
/// [`idempotency::seen`]), else the holder of `customer_id`'s facts. On
/// SQLite the lookup is read ahead for the whole batch, so this costs no
/// round trip unless the customer was merged away. The caller stores the
/// key with its response by [`idempotency::record_later`], and changes
/// nothing else that the lookup reads (merges are applied by the feed
/// consumer, in transactions of their own).
pub(crate) async fn claim_and_holder<R: prost::Message + Default>(
    tx: &mut WriteTxn,
    request_id: &str,
    fp: i64,
    customer_id: &str,
) -> Result<Result<Holder, R>, RuntimeError> {
    lock_shared(tx).await?;
    let row = tx.looked_up().await?.ok_or_else(|| DbErr::RecordNotFound("claim".into()))?;
    let stored_fp: Option<i64> = row.try_get_by_index(0)?;
    if let (Some(stored_fp), false) = (stored_fp, request_id.is_empty()) {
        return idempotency::seen(fp, stored_fp, row.try_get_by_index(1)?).map(Err);
    }
    let merge_id: Option<String> = row.try_get_by_index(2)?;
    let surviving_id: Option<String> = row.try_get_by_index(3)?;
    match (merge_id, surviving_id) {
        (Some(merge_id), Some(surviving_id)) => {
            // Merged: follow any later merges of the survivor (the lookup
            // may have been read ahead: the batch's writes before go first).
            tx.flush_deferred().await?;
            let mut h = holder(&**tx, &surviving_id).await?;
            h.via.insert(0, merge_id);
            Ok(Ok(h))
        }
        _ => Ok(Ok(Holder { id: customer_id.to_owned(), via: Vec::new() })),
    }
}

/// Note facts written through an alias in the ledger of every merge the
/// alias was followed through, so that unmerges take them back.
pub(crate) async fn note_facts(tx: &WriteTxn, holder: &Holder, table: &'static str, ids: &[&str]) -> Result<(), DbErr> {
    for merge_id in &holder.via {
        for id in ids {
            tx.execute_raw(tx.stmt(
                "INSERT INTO merge_facts (merge_id, fact_table, fact_id) VALUES (?, ?, ?) \
                 ON CONFLICT (merge_id, fact_table, fact_id) DO NOTHING",
                vec![merge_id.clone().into(), table.into(), (*id).into()],
            ))
            .await?;
        }
    }
    Ok(())
}

/// The holders of `ids`, distinct and sorted (for analyses over a list of
/// customers).
pub async fn holders<C: ConnectionTrait>(c: &C, ids: &[String]) -> Result<Vec<String>, DbErr> {
    let mut out = BTreeSet::new();
    let mut frontier: Vec<String> = ids.to_vec();
    for _ in 0..MAX_HOPS {
        if frontier.is_empty() {
            break;
        }
        let mut merged_into = HashMap::new();
        for chunk in frontier.chunks(IN_CHUNK) {
            let sql = format!(
                "SELECT merged_id, surviving_id FROM customer_merges WHERE merged_id IN ({})",
                placeholders(chunk.len())
            );
            let values = chunk.iter().map(|s| s.as_str().into()).collect();
            for row in c.query_all_raw(crm_runtime::db::stmt(c.get_database_backend(), &sql, values)).await? {
                merged_into.insert(row.try_get_by_index::<String>(0)?, row.try_get_by_index::<String>(1)?);
            }
        }
        let mut next = Vec::new();
        for id in frontier {
            match merged_into.remove(&id) {
                Some(survivor) => next.push(survivor),
                None => {
                    out.insert(id);
                }
            }
        }
        frontier = next;
    }
    out.extend(frontier);
    Ok(out.into_iter().collect())
}

fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

fn list_mut<'a>(facts: &'a mut RekeyedFacts, table: &str) -> Option<&'a mut Vec<String>> {
    Some(match table {
        "interactions" => &mut facts.interaction_ids,
        "orders" => &mut facts.order_ids,
        "order_returns" => &mut facts.return_ids,
        "survey_responses" => &mut facts.survey_response_ids,
        "complaints" => &mut facts.complaint_ids,
        "defections" => &mut facts.defection_ids,
        "consents" => &mut facts.consent_ids,
        _ => return None,
    })
}

/// The first column of every row `sql` selects, as strings.
async fn strings(tx: &WriteTxn, sql: &str, values: Vec<Value>) -> Result<Vec<String>, DbErr> {
    tx.query_all_raw(tx.stmt(sql, values)).await?.iter().map(|r| r.try_get_by_index(0)).collect()
}

/// Append the re-key of `facts` from `from` to `to`, split over as many
/// events as its size needs.
async fn append_rekey(
    tx: &mut WriteTxn,
    from: &str,
    to: &str,
    merge_id: &str,
    reason: RekeyReason,
    facts: RekeyedFacts,
) -> Result<(), DbErr> {
    let at = Some(to_timestamp(now()));
    for part in lifecycle::split(facts, MAX_FACTS_PER_EVENT) {
        tx.append_with(to, |seq| InteractionEvent {
            sequence: seq,
            occur_time: at,
            customer_id: to.to_owned(),
            kind: Some(Kind::CustomerRekeyed(CustomerRekeyed {
                from_customer_id: from.to_owned(),
                to_customer_id: to.to_owned(),
                merge_id: merge_id.to_owned(),
                reason: reason as i32,
                facts: Some(part),
            })),
        })
        .await?;
    }
    Ok(())
}

/// A merged customer's own contact policy, set aside while the merge stands.
#[derive(Debug, Clone)]
struct AsidePolicy {
    version: i64,
    updated_at_us: i64,
    body: Vec<u8>,
    /// The survivor's policy version when it adopted this one (it had none).
    adopted_version: Option<i64>,
}

async fn policy_row(tx: &WriteTxn, customer_id: &str) -> Result<Option<(i64, i64, Vec<u8>)>, DbErr> {
    let row = tx
        .query_one_raw(tx.stmt(
            "SELECT version, updated_at_us, body FROM contact_policies WHERE customer_id = ?",
            vec![customer_id.into()],
        ))
        .await?;
    row.map(|r| Ok((r.try_get_by_index(0)?, r.try_get_by_index(1)?, r.try_get_by_index(2)?))).transpose()
}

async fn put_policy(tx: &WriteTxn, customer_id: &str, version: i64, at_us: i64, body: Vec<u8>) -> Result<(), DbErr> {
    tx.execute_raw(tx.stmt(
        "INSERT INTO contact_policies (customer_id, version, updated_at_us, body) VALUES (?, ?, ?, ?) \
         ON CONFLICT (customer_id) DO UPDATE SET version = excluded.version, updated_at_us = excluded.updated_at_us, body = excluded.body",
        vec![customer_id.into(), version.into(), at_us.into(), body.into()],
    ))
    .await?;
    Ok(())
}

/// Set the merged customer's policy aside; a survivor without one adopts it.
async fn set_policy_aside(
    tx: &WriteTxn,
    survivor: &str,
    merged: &str,
    now_us: i64,
) -> Result<Option<AsidePolicy>, DbErr> {
    let Some((version, updated_at_us, body)) = policy_row(tx, merged).await? else { return Ok(None) };
    tx.execute_raw(tx.stmt("DELETE FROM contact_policies WHERE customer_id = ?", vec![merged.into()])).await?;
    let adopted_version = if policy_row(tx, survivor).await?.is_some() {
        None
    } else {
        // Whose it is lives in the key, never in the body.
        let adopted = match pb::ContactPolicy::decode(body.as_slice()) {
            Ok(p) => super::body(&p),
            Err(_) => body.clone(),
        };
        put_policy(tx, survivor, ADOPTED_VERSION, now_us, adopted).await?;
        Some(ADOPTED_VERSION)
    };
    Ok(Some(AsidePolicy { version, updated_at_us, body, adopted_version }))
}

/// Give the restored customer its policy back; a survivor that adopted it
/// and left it unchanged goes back to the defaults under a new version.
async fn restore_policy(
    tx: &WriteTxn,
    survivor: &str,
    restored: &str,
    aside: AsidePolicy,
    now_us: i64,
) -> Result<(), DbErr> {
    if let Some(adopted) = aside.adopted_version
        && let Some((current, _, _)) = policy_row(tx, survivor).await?
        && current == adopted
    {
        put_policy(tx, survivor, current + 1, now_us, super::body(&default_policy(survivor))).await?;
    }
    let version = match policy_row(tx, restored).await? {
        Some((current, _, _)) => aside.version.max(current + 1),
        None => aside.version,
    };
    put_policy(tx, restored, version, aside.updated_at_us, aside.body).await
}

/// Apply a merge: re-key, ledger, policy aside, `CustomerRekeyed`.
async fn merge(tx: &mut WriteTxn, m: &ProfileMerged) -> Result<(), RuntimeError> {
    let (survivor, merged, merge_id) = (m.surviving_id.as_str(), m.merged_id.as_str(), m.merge_id.as_str());
    if survivor.is_empty() || merged.is_empty() || merge_id.is_empty() || survivor == merged {
        tracing::warn!(merge_id, "malformed merge event ignored");
        return Ok(());
    }
    lock_exclusive(tx).await?;
    let known =
        tx.query_one_raw(tx.stmt("SELECT 1 FROM customer_merges WHERE merge_id = ?", vec![merge_id.into()])).await?;
    if known.is_some() {
        return Ok(());
    }
    let now_us = now().timestamp_micros();
    let mut facts = RekeyedFacts::default();
    for table in FACT_TABLES {
        let ids =
            strings(tx, &format!("SELECT id FROM {table} WHERE customer_id = ? ORDER BY id"), vec![merged.into()])
                .await?;
        if ids.is_empty() {
            continue;
        }
        tx.execute_raw(tx.stmt(
            &format!(
                "INSERT INTO merge_facts (merge_id, fact_table, fact_id) SELECT ?, ?, id FROM {table} WHERE customer_id = ?"
            ),
            vec![merge_id.into(), table.into(), merged.into()],
        ))
        .await?;
        tx.execute_raw(tx.stmt(
            &format!("UPDATE {table} SET customer_id = ? WHERE customer_id = ?"),
            vec![survivor.into(), merged.into()],
        ))
        .await?;
        if let Some(list) = list_mut(&mut facts, table) {
            *list = ids;
        }
    }
    let aside = set_policy_aside(tx, survivor, merged, now_us).await?;
    tx.execute_raw(tx.stmt(
        "INSERT INTO customer_merges (merge_id, surviving_id, merged_id, applied_at_us, policy_version, policy_updated_at_us, \
         policy_body, adopted_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        vec![
            merge_id.into(),
            survivor.into(),
            merged.into(),
            now_us.into(),
            aside.as_ref().map(|a| a.version).into(),
            aside.as_ref().map(|a| a.updated_at_us).into(),
            aside.as_ref().map(|a| a.body.clone()).into(),
            aside.as_ref().and_then(|a| a.adopted_version).into(),
        ],
    ))
    .await?;
    tracing::info!(merge_id, facts = lifecycle::fact_count(&facts), "merge applied");
    append_rekey(tx, merged, survivor, merge_id, RekeyReason::Merge, facts).await?;
    Ok(())
}

/// Apply an unmerge: the merge's facts (and the returns of its orders) go
/// back, the policy is restored, `CustomerRekeyed` back.
async fn unmerge(tx: &mut WriteTxn, u: &ProfileUnmerged) -> Result<(), RuntimeError> {
    let merge_id = u.merge_id.as_str();
    lock_exclusive(tx).await?;
    let row = tx
        .query_one_raw(tx.stmt(
            "SELECT surviving_id, merged_id, policy_version, policy_updated_at_us, policy_body, adopted_version \
             FROM customer_merges WHERE merge_id = ?",
            vec![merge_id.into()],
        ))
        .await?;
    let Some(row) = row else {
        // Not applied here (or its customers were erased since): nothing to split.
        tracing::warn!(merge_id, "unmerge of an unknown merge ignored");
        return Ok(());
    };
    let survivor: String = row.try_get_by_index(0)?;
    let restored: String = row.try_get_by_index(1)?;
    if survivor != u.surviving_id || restored != u.restored_id {
        tracing::warn!(merge_id, "unmerge names other profiles than its merge; following the merge");
    }
    let aside = match (
        row.try_get_by_index::<Option<i64>>(2)?,
        row.try_get_by_index::<Option<i64>>(3)?,
        row.try_get_by_index::<Option<Vec<u8>>>(4)?,
    ) {
        (Some(version), Some(updated_at_us), Some(body)) => {
            Some(AsidePolicy { version, updated_at_us, body, adopted_version: row.try_get_by_index(5)? })
        }
        _ => None,
    };

    let mut facts = RekeyedFacts::default();
    for table in FACT_TABLES {
        let ids = strings(
            tx,
            &format!(
                "SELECT t.id FROM {table} t JOIN merge_facts f ON f.fact_id = t.id \
                 WHERE f.merge_id = ? AND f.fact_table = ? AND t.customer_id = ? ORDER BY t.id"
            ),
            vec![merge_id.into(), table.into(), survivor.as_str().into()],
        )
        .await?;
        if let Some(list) = list_mut(&mut facts, table) {
            *list = ids;
        }
    }
    // Returns recorded meanwhile follow the orders they return.
    let mut returns: BTreeSet<String> = facts.return_ids.drain(..).collect();
    let mut interactions: BTreeSet<String> = facts.interaction_ids.drain(..).collect();
    for chunk in facts.order_ids.chunks(IN_CHUNK) {
        let values =
            || std::iter::once(survivor.as_str().into()).chain(chunk.iter().map(|s| s.as_str().into())).collect();
        let list = placeholders(chunk.len());
        returns.extend(
            strings(
                tx,
                &format!("SELECT id FROM order_returns WHERE customer_id = ? AND order_id IN ({list})"),
                values(),
            )
            .await?,
        );
        interactions.extend(
            strings(
                tx,
                &format!("SELECT id FROM interactions WHERE customer_id = ? AND order_id IN ({list})"),
                values(),
            )
            .await?,
        );
    }
    facts.return_ids = returns.into_iter().collect();
    facts.interaction_ids = interactions.into_iter().collect();

    for table in FACT_TABLES {
        let Some(ids) = list_mut(&mut facts, table) else { continue };
        for chunk in ids.chunks(IN_CHUNK) {
            let mut values: Vec<Value> = vec![restored.as_str().into(), survivor.as_str().into()];
            values.extend(chunk.iter().map(|s| s.as_str().into()));
            tx.execute_raw(tx.stmt(
                &format!(
                    "UPDATE {table} SET customer_id = ? WHERE customer_id = ? AND id IN ({})",
                    placeholders(chunk.len())
                ),
                values,
            ))
            .await?;
        }
    }
    if let Some(aside) = aside {
        restore_policy(tx, &survivor, &restored, aside, now().timestamp_micros()).await?;
    }
    tx.execute_raw(tx.stmt("DELETE FROM merge_facts WHERE merge_id = ?", vec![merge_id.into()])).await?;
    tx.execute_raw(tx.stmt("DELETE FROM customer_merges WHERE merge_id = ?", vec![merge_id.into()])).await?;
    tracing::info!(merge_id, facts = lifecycle::fact_count(&facts), "unmerge applied");
    append_rekey(tx, &survivor, &restored, merge_id, RekeyReason::Unmerge, facts).await?;
    Ok(())
}

/// Keep the non-identifying record of a customer's consent history.
async fn archive_consents(tx: &WriteTxn, customer_id: &str, now_us: i64) -> Result<(), DbErr> {
    let rows = tx
        .query_all_raw(tx.stmt(
            "SELECT recorded_at_us, expires_at_us, body, channel, purpose, state FROM consents WHERE customer_id = ? ORDER BY sequence",
            vec![customer_id.into()],
        ))
        .await?;
    for r in rows {
        let body: Vec<u8> = r.try_get_by_index(2)?;
        // The columns are authoritative; the basis is only in the record.
        let mut consent = pb::Consent::decode(body.as_slice()).unwrap_or_else(|_| {
            tracing::warn!("consent record undecodable; archived without its lawful basis");
            pb::Consent::default()
        });
        consent.channel = r.try_get_by_index(3)?;
        consent.purpose = r.try_get_by_index(4)?;
        consent.state = r.try_get_by_index(5)?;
        let a = lifecycle::archive(&consent, r.try_get_by_index(0)?, r.try_get_by_index(1)?, now_us);
        tx.execute_raw(tx.stmt(
            "INSERT INTO consent_archive (id, channel, purpose, state, lawful_basis, recorded_day, expires_day, erased_day) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            vec![
                uuid::Uuid::new_v4().to_string().into(),
                a.channel.into(),
                a.purpose.into(),
                a.state.into(),
                a.lawful_basis.into(),
                a.recorded_day.into(),
                a.expires_day.into(),
                a.erased_day.into(),
            ],
        ))
        .await?;
    }
    Ok(())
}

/// Apply an erasure: every fact, policy, merge, ledger entry and stored
/// response about the customer goes, its events are redacted, and
/// `CustomerErased` is appended.
async fn erase(tx: &mut WriteTxn, e: &ProfileErased) -> Result<(), RuntimeError> {
    let id = e.profile_id.as_str();
    if id.is_empty() {
        tracing::warn!("erasure without a profile id ignored");
        return Ok(());
    }
    lock_exclusive(tx).await?;
    let at = now();
    let one = || -> Vec<Value> { vec![id.into()] };
    let two = || -> Vec<Value> { vec![id.into(), id.into()] };
    archive_consents(tx, id, at.timestamp_micros()).await?;

    // The merges it took part in, with their ledgers and set-aside policies.
    tx.execute_raw(tx.stmt(
        "DELETE FROM merge_facts WHERE merge_id IN (SELECT merge_id FROM customer_merges WHERE surviving_id = ? OR merged_id = ?)",
        two(),
    ))
    .await?;
    tx.execute_raw(tx.stmt("DELETE FROM customer_merges WHERE surviving_id = ? OR merged_id = ?", two())).await?;
    for table in FACT_TABLES {
        tx.execute_raw(tx.stmt(
            &format!(
                "DELETE FROM merge_facts WHERE fact_table = ? AND fact_id IN (SELECT id FROM {table} WHERE customer_id = ?)"
            ),
            vec![table.into(), id.into()],
        ))
        .await?;
    }

    // Child rows first, then the facts (returns of its orders included).
    let its_orders = "SELECT id FROM orders WHERE customer_id = ?";
    tx.execute_raw(tx.stmt(
        &format!(
            "DELETE FROM order_return_lines WHERE return_id IN \
             (SELECT id FROM order_returns WHERE customer_id = ? OR order_id IN ({its_orders}))"
        ),
        two(),
    ))
    .await?;
    tx.execute_raw(
        tx.stmt(&format!("DELETE FROM order_returns WHERE customer_id = ? OR order_id IN ({its_orders})"), two()),
    )
    .await?;
    tx.execute_raw(tx.stmt(&format!("DELETE FROM order_lines WHERE order_id IN ({its_orders})"), one())).await?;
    tx.execute_raw(tx.stmt(
        "DELETE FROM survey_ratings WHERE response_id IN (SELECT id FROM survey_responses WHERE customer_id = ?)",
        one(),
    ))
    .await?;
    for table in FACT_TABLES {
        tx.execute_raw(tx.stmt(&format!("DELETE FROM {table} WHERE customer_id = ?"), one())).await?;
    }
    tx.execute_raw(tx.stmt("DELETE FROM contact_policies WHERE customer_id = ?", one())).await?;

    idempotency::forget_subject(tx, id).await?;
    let redacted =
        eventlog::redact_stream(&**tx, id, |stored| match InteractionEvent::decode(stored.payload.as_slice()) {
            Ok(event) => lifecycle::redact(event).encode_to_vec(),
            // An undecodable payload cannot be vetted: keep nothing of it.
            Err(_) => InteractionEvent { sequence: stored.sequence, customer_id: id.to_owned(), ..Default::default() }
                .encode_to_vec(),
        })
        .await?;
    tx.append_with(id, |seq| InteractionEvent {
        sequence: seq,
        occur_time: Some(to_timestamp(at)),
        customer_id: id.to_owned(),
        kind: Some(Kind::CustomerErased(CustomerErased { customer_id: id.to_owned() })),
    })
    .await?;
    tracing::info!(redacted, "erasure applied");
    Ok(())
}
