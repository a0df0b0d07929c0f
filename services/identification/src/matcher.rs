//! Probabilistic matching at the store (ID-4): the record a profile or a
//! touchpoint offers the matcher, blocking keys kept per profile, the
//! active matcher model, training from the stored profiles, and candidate
//! scoring for a resolve.

use std::{
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use crm_proto::identification::v1::{self as pb, IdentifierType};
use crm_runtime::{db::Store, error::RuntimeError, time::now};
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

/// Whether a record says enough about a person to be matched on: a name
/// and at least one more fact.
pub fn matchable(r: &Record) -> bool {
    let name = !r.given_name.is_empty() && !r.family_name.is_empty();
    let more = r.birth_date.is_some()
        || !r.street.is_empty()
        || !r.postcode.is_empty()
        || !r.phone.is_empty()
        || !r.email.is_empty();
    name && more
}

/// Whether what a touchpoint says of the person contradicts a profile on
/// who they are: a clearly different given name or birth date. Emails and
/// phones are shared in households (a landline, a family address), so a
/// match on them alone does not outweigh this; spouses, siblings and twins
/// differ exactly here.
pub fn contradicts_person(model: &MatchModel, touch: &Record, profile: &Record) -> bool {
    model
        .score(touch, profile)
        .fields
        .iter()
        .any(|f| (f.field == "given_name" || f.field == "birth_date") && f.level == "different")
}

/// Identifiers that households share, whose match a contradicting person
/// overrides (a customer number or an external id is personal).
pub fn shareable(kind: IdentifierType) -> bool {
    matches!(kind, IdentifierType::Email | IdentifierType::Phone)
}

/// Rewrite the blocking keys of a live profile (after any change).
pub async fn index_profile<C: ConnectionTrait>(c: &C, profile: &pb::Profile) -> Result<(), DbErr> {
    let backend = c.get_database_backend();
    c.execute_raw(crm_runtime::db::stmt(
        backend,
        "DELETE FROM blocking_keys WHERE profile_id = ?",
        vec![profile.id.clone().into()],
    ))
    .await?;
    let record = record_of(profile);
    if !matchable(&record) {
        return Ok(());
    }
    for key in matching::blocking_keys(&record) {
        c.execute_raw(crm_runtime::db::stmt(
            backend,
            "INSERT INTO blocking_keys (key, profile_id) VALUES (?, ?) ON CONFLICT (key, profile_id) DO NOTHING",
            vec![key.into(), profile.id.clone().into()],
        ))
        .await?;
    }
    Ok(())
}

/// Forget a profile's blocking keys (merged away or erased).
pub async fn unindex_profile<C: ConnectionTrait>(c: &C, profile_id: &str) -> Result<(), DbErr> {
    c.execute_raw(crm_runtime::db::stmt(
        c.get_database_backend(),
        "DELETE FROM blocking_keys WHERE profile_id = ?",
        vec![profile_id.into()],
    ))
    .await?;
    Ok(())
}

/// Profiles sharing a blocking key with `record`, skipping keys whose block
/// is larger than `MAX_BLOCK`.
pub async fn candidates<C: ConnectionTrait>(c: &C, record: &Record) -> Result<Vec<String>, DbErr> {
    let keys = matching::blocking_keys(record);
    if keys.is_empty() {
        return Ok(vec![]);
    }
    let backend = c.get_database_backend();
    let marks = vec!["?"; keys.len()].join(", ");
    let sizes = c
        .query_all_raw(crm_runtime::db::stmt(
            backend,
            &format!("SELECT key, COUNT(*) FROM blocking_keys WHERE key IN ({marks}) GROUP BY key"),
            keys.iter().map(|k| k.clone().into()).collect(),
        ))
        .await?;
    let mut usable = Vec::new();
    for row in sizes {
        let key: String = row.try_get_by_index(0)?;
        let n: i64 = row.try_get_by_index(1)?;
        if n <= MAX_BLOCK {
            usable.push(key);
        }
    }
    if usable.is_empty() {
        return Ok(vec![]);
    }
    let marks = vec!["?"; usable.len()].join(", ");
    let rows = c
        .query_all_raw(crm_runtime::db::stmt(
            backend,
            &format!("SELECT DISTINCT profile_id FROM blocking_keys WHERE key IN ({marks})"),
            usable.into_iter().map(Into::into).collect(),
        ))
        .await?;
    rows.iter().map(|r| r.try_get_by_index::<String>(0)).collect()
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
    pub async fn active<C: ConnectionTrait>(&self, c: &C) -> Result<(i64, Arc<MatchModel>), RuntimeError> {
        {
            let cached = self.inner.read().map_err(|_| RuntimeError::Internal("matcher lock poisoned".into()))?;
            if cached.checked.elapsed() < Duration::from_secs(1) {
                return Ok((cached.version, cached.model.clone()));
            }
        }
        let row = c
            .query_one_raw(crm_runtime::db::stmt(
                c.get_database_backend(),
                "SELECT version, model FROM matcher_models WHERE active = ? ORDER BY version DESC LIMIT 1",
                vec![true.into()],
            ))
            .await?;
        let mut cached = self.inner.write().map_err(|_| RuntimeError::Internal("matcher lock poisoned".into()))?;
        if let Some(row) = row {
            let version: i64 = row.try_get_by_index(0)?;
            if version != cached.version {
                let bytes: Vec<u8> = row.try_get_by_index(1)?;
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
    let (_, base) = matcher.active(store.conn()).await?;
    let records = crate::store::all_records(store).await?;
    let options = matching::TrainingOptions {
        // Random pairs for u: enough to see every level, scaled to the data
        // (a small base has few distinct pairs), unless the caller says.
        u_samples: if max_pairs > 0 {
            usize::try_from(max_pairs).unwrap_or(usize::MAX)
        } else {
            records.len().saturating_mul(50).clamp(10_000, 1_000_000)
        },
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        ..Default::default()
    };
    let base = (*base).clone();
    // Training runs on its own thread and stores its model even if the
    // caller gives up waiting.
    let store = store.clone();
    let matcher = matcher.clone();
    tokio::spawn(async move {
        let trained = tokio::task::spawn_blocking(move || matching::train_on_records(&base, &records, &options))
            .await
            .map_err(|e| RuntimeError::Internal(format!("training task failed: {e}")))?;
        save_trained(&store, &matcher, trained).await
    })
    .await
    .map_err(|e| RuntimeError::Internal(format!("training task failed: {e}")))?
}

async fn save_trained(
    store: &Store,
    matcher: &Matcher,
    trained: matching::Trained,
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
        "INSERT INTO matcher_models (version, created_at_us, converged, iterations, pair_count, active, model) VALUES (?, ?, ?, ?, ?, ?, ?)",
        vec![
            next.into(),
            now().timestamp_micros().into(),
            trained.converged.into(),
            (trained.iterations as i32).into(),
            (trained.pair_count as i64).into(),
            trained.converged.into(),
            trained.model.to_bytes().into(),
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
    })
}
