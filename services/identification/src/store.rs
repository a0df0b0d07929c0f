//! The identification store: profiles and identifiers, and the resolve
//! transaction. Each profile row keeps its indexed columns beside the full
//! record (`body`, the encoded `Profile` without identifiers, which live
//! in their own table under a unique key).

use crm_proto::identification::v1::{self as pb, MatchExplanation, MatchMethod, ProfileEvent, profile_event::Kind};
use crm_runtime::{
    db::{Store, WriteTxn},
    error::RuntimeError,
    idempotency::{self, Claim},
    ids::new_id,
    time::{now, to_timestamp},
};
use prost::Message;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, sea_query::Expr,
};

use crate::{
    conversions::ResolveCommand,
    domain::{self, Normalized},
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
mod status {
    /// Live.
    pub const ACTIVE: i32 = 1;
}

fn to_pb_identifier(n: &Normalized) -> pb::Identifier {
    pb::Identifier { r#type: n.kind as i32, value: n.value.clone(), namespace: n.namespace.clone() }
}

fn micros_to_timestamp(us: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds: us.div_euclid(1_000_000), nanos: (us.rem_euclid(1_000_000) * 1000) as i32 })
}

fn id_condition(n: &Normalized) -> Condition {
    use identifiers::Column as C;
    Condition::all()
        .add(C::Kind.eq(n.kind as i32))
        .add(C::Namespace.eq(n.namespace.as_str()))
        .add(C::Value.eq(n.value.as_str()))
}

/// A profile with its identifiers, as the API shows it.
async fn load_profile<C: ConnectionTrait>(c: &C, id: &str) -> Result<Option<pb::Profile>, RuntimeError> {
    let Some(row) = profiles::Entity::find_by_id(id.to_owned()).one(c).await? else {
        return Ok(None);
    };
    let mut profile = pb::Profile::decode(row.body.as_slice())
        .map_err(|e| RuntimeError::Internal(format!("stored profile undecodable: {e}")))?;
    profile.identifiers = identifiers::Entity::find()
        .filter(identifiers::Column::ProfileId.eq(id))
        .order_by_asc(identifiers::Column::CreatedAtUs)
        .all(c)
        .await?
        .into_iter()
        .map(|r| pb::ProfileIdentifier {
            identifier: Some(pb::Identifier { r#type: r.kind, value: r.value, namespace: r.namespace }),
            create_time: micros_to_timestamp(r.created_at_us),
            last_seen_time: micros_to_timestamp(r.last_seen_at_us),
            source_channel: r.source_channel,
        })
        .collect();
    Ok(Some(profile))
}

/// A profile by id, or NOT_FOUND.
pub async fn get_profile(store: &Store, id: &str) -> Result<pb::Profile, RuntimeError> {
    load_profile(store.conn(), id)
        .await?
        .ok_or_else(|| RuntimeError::NotFound { resource: "profile", id: id.to_owned() })
}

/// Resolve a touchpoint's identifiers to one profile (ID-3, deterministic):
/// an identifier already held names the profile; otherwise a prospect is
/// created. Concurrent resolves of the same new person create one profile:
/// the loser of the race hits the identifier's unique key, rolls back and
/// resolves again, now finding the winner's profile.
pub async fn resolve(store: &Store, cmd: &ResolveCommand) -> Result<pb::ResolveIdentityResponse, RuntimeError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match resolve_once(store, cmd).await {
            Err(RuntimeError::Database(e)) if attempt < 3 && RuntimeError::is_unique_violation(&e) => continue,
            other => return other,
        }
    }
}

async fn resolve_once(store: &Store, cmd: &ResolveCommand) -> Result<pb::ResolveIdentityResponse, RuntimeError> {
    const SCOPE: &str = "ResolveIdentity";
    let mut tx = store.begin_write().await?;
    if let Claim::Replay(r) = idempotency::claim(&tx, SCOPE, &cmd.request_id, cmd.fingerprint).await? {
        tx.rollback().await?;
        return Ok(r);
    }
    let at = now();
    let at_us = at.timestamp_micros();

    let owned = identifiers::Entity::find()
        .filter(cmd.identifiers.iter().fold(Condition::any(), |c, n| c.add(id_condition(n))))
        .all(&*tx)
        .await?;
    let matches: Vec<(Normalized, String)> = cmd
        .identifiers
        .iter()
        .filter_map(|n| {
            owned
                .iter()
                .find(|o| o.kind == n.kind as i32 && o.namespace == n.namespace && o.value == n.value)
                .map(|o| (n.clone(), o.profile_id.clone()))
        })
        .collect();
    let unowned: Vec<&Normalized> = cmd.identifiers.iter().filter(|n| !matches.iter().any(|(m, _)| m == *n)).collect();

    let mut sequence = 0;
    let response = match domain::choose_profile(&matches) {
        None => {
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
            profiles::Entity::insert(profiles::ActiveModel {
                id: Set(profile.id.clone()),
                status: Set(status::ACTIVE),
                lifecycle_stage: Set(profile.lifecycle_stage),
                target_group: Set(target_group),
                created_at_us: Set(at_us),
                updated_at_us: Set(at_us),
                version: Set(1),
                body: Set(profile.encode_to_vec()),
            })
            .exec_without_returning(&*tx)
            .await?;
            insert_identifiers(&tx, &profile.id, &unowned, cmd.channel as i32, at_us).await?;
            let profile = load_profile(&*tx, &profile.id)
                .await?
                .ok_or_else(|| RuntimeError::Internal("profile vanished".into()))?;
            let (seq, _) = tx
                .append_with(&profile.id, |s| {
                    event(
                        s,
                        at,
                        &profile.id,
                        Kind::ProfileCreated(pb::ProfileCreated { profile: Some(profile.clone()) }),
                    )
                })
                .await?;
            sequence = seq;
            pb::ResolveIdentityResponse {
                profile: Some(profile),
                created: true,
                explanation: Some(MatchExplanation { method: MatchMethod::Created as i32, ..Default::default() }),
                confidence: 0.0,
                sequence,
            }
        }
        Some((matched, profile_id)) => {
            let profile_id = profile_id.clone();
            let row = profiles::Entity::find_by_id(profile_id.clone())
                .one(&*tx)
                .await?
                .ok_or_else(|| RuntimeError::Internal("identifier without profile".into()))?;
            let mut profile = pb::Profile::decode(row.body.as_slice())
                .map_err(|e| RuntimeError::Internal(format!("stored profile undecodable: {e}")))?;
            let changed = domain::apply_attributes(&mut profile, &cmd.attributes);
            // Seen again: every identifier of this profile used here.
            for (n, _) in matches.iter().filter(|(_, p)| *p == profile_id) {
                identifiers::Entity::update_many()
                    .col_expr(identifiers::Column::LastSeenAtUs, Expr::value(at_us))
                    .filter(id_condition(n))
                    .exec(&*tx)
                    .await?;
            }
            insert_identifiers(&tx, &profile_id, &unowned, cmd.channel as i32, at_us).await?;
            if !changed.is_empty() {
                let version = row.version + 1;
                profile.update_time = Some(to_timestamp(at));
                profile.etag = version.to_string();
                profiles::Entity::update_many()
                    .col_expr(profiles::Column::Version, Expr::value(version))
                    .col_expr(profiles::Column::UpdatedAtUs, Expr::value(at_us))
                    .col_expr(profiles::Column::Body, Expr::value(profile.encode_to_vec()))
                    .filter(profiles::Column::Id.eq(profile_id.as_str()))
                    .exec(&*tx)
                    .await?;
            }
            let full = load_profile(&*tx, &profile_id)
                .await?
                .ok_or_else(|| RuntimeError::Internal("profile vanished".into()))?;
            if !changed.is_empty() {
                let fields: Vec<String> = changed.iter().map(|s| (*s).to_owned()).collect();
                let (seq, _) = tx
                    .append_with(&profile_id, |s| {
                        event(
                            s,
                            at,
                            &profile_id,
                            Kind::ProfileUpdated(pb::ProfileUpdated {
                                profile: Some(full.clone()),
                                changed_fields: fields,
                            }),
                        )
                    })
                    .await?;
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
            pb::ResolveIdentityResponse {
                profile: Some(full),
                created: false,
                explanation: Some(MatchExplanation {
                    method: MatchMethod::Deterministic as i32,
                    matched_identifier: Some(to_pb_identifier(matched)),
                    ..Default::default()
                }),
                confidence: 1.0,
                sequence,
            }
        }
    };
    idempotency::complete(&tx, SCOPE, &cmd.request_id, &response).await?;
    tx.commit().await?;
    Ok(response)
}

fn event(sequence: i64, at: chrono::DateTime<chrono::Utc>, profile_id: &str, kind: Kind) -> ProfileEvent {
    ProfileEvent { sequence, occur_time: Some(to_timestamp(at)), profile_id: profile_id.to_owned(), kind: Some(kind) }
}

async fn insert_identifiers(
    tx: &WriteTxn,
    profile_id: &str,
    ids: &[&Normalized],
    channel: i32,
    at_us: i64,
) -> Result<(), RuntimeError> {
    if ids.is_empty() {
        return Ok(());
    }
    let rows = ids.iter().map(|n| identifiers::ActiveModel {
        kind: Set(n.kind as i32),
        namespace: Set(n.namespace.clone()),
        value: Set(n.value.clone()),
        profile_id: Set(profile_id.to_owned()),
        created_at_us: Set(at_us),
        last_seen_at_us: Set(at_us),
        source_channel: Set(channel),
    });
    identifiers::Entity::insert_many(rows).exec_without_returning(&**tx).await?;
    Ok(())
}
