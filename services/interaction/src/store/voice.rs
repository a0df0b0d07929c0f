//! Survey responses and the analyses over them. The analyses let the
//! database add up the period's responses per UTC day (one indexed range
//! scan, never the rows themselves in memory) and stream those daily sums
//! into the requested buckets; what is kept is bounded by the answer's
//! size (at most 1000 buckets, and at most `MAX_VALUE_ROWS` period ×
//! attribute rows).

use std::collections::BTreeMap;

use crm_proto::interaction::v1::{self as pb, interaction_event::Kind};
use crm_runtime::{
    db::Store,
    error::RuntimeError,
    idempotency::{self, Claim},
    ids::new_id,
    time::now,
};
use futures::StreamExt;
use sea_orm::{ActiveValue::Set, DbErr, EntityTrait, QueryResult, StreamTrait, Value};

use super::{append_interaction, body, fact_interaction, lifecycle};
use crate::{
    conversions::{AnalysisQuery, NewSurveyResponse, bucket_interval},
    domain::voice::{self, DAY_US, SatisfactionSums, ValueSums},
};

/// Most period × attribute rows one perceived-value analysis answers.
pub const MAX_VALUE_ROWS: usize = 10_000;

/// Survey responses.
pub mod survey_responses {
    #![allow(missing_docs)]
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "survey_responses")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub customer_id: String,
        pub survey_id: String,
        pub segment: String,
        pub occurred_at_us: i64,
        /// UTC day number of `occurred_at_us`, for daily sums.
        pub occurred_day: i64,
        pub nps: i32,
        pub csat: i32,
        pub sequence: i64,
        pub body: Vec<u8>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Attribute ratings of survey responses.
pub mod survey_ratings {
    #![allow(missing_docs)]
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "survey_ratings")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub response_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub idx: i32,
        pub attribute: String,
        pub importance: f64,
        pub our_performance: f64,
        pub competitor_performance: f64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Record a survey response and its SURVEY_RESPONSE interaction, idempotently.
pub async fn record_survey_response(
    store: &Store,
    cmd: NewSurveyResponse,
) -> Result<pb::RecordSurveyResponseResponse, RuntimeError> {
    const SCOPE: &str = "RecordSurveyResponse";
    let mut tx = store.begin_write().await?;
    if let Claim::Replay(r) = idempotency::claim(&tx, SCOPE, &cmd.request_id, cmd.fingerprint).await? {
        tx.rollback().await?;
        return Ok(r);
    }
    let requested = cmd.response.customer_id.clone();
    let holder = lifecycle::write_holder(&tx, &requested).await?;
    let recorded = now();
    let occurred_at_us = cmd.occurred_at.timestamp_micros();
    let mut response = cmd.response;
    response.id = new_id();
    response.customer_id.clone_from(&holder.id);
    let mut interaction = fact_interaction(
        &response.customer_id,
        cmd.channel,
        pb::InteractionType::SurveyResponse,
        cmd.occurred_at,
        recorded,
    );
    let sequence = append_interaction(&mut tx, &mut interaction, recorded, occurred_at_us, |i| {
        Kind::SurveyResponseRecorded(pb::SurveyResponseRecorded {
            response: Some(response.clone()),
            interaction: Some(i),
        })
    })
    .await?;
    survey_responses::Entity::insert(survey_responses::ActiveModel {
        id: Set(response.id.clone()),
        customer_id: Set(response.customer_id.clone()),
        survey_id: Set(response.survey_id.clone()),
        segment: Set(response.segment.clone()),
        occurred_at_us: Set(occurred_at_us),
        occurred_day: Set(voice::day_of(occurred_at_us)),
        nps: Set(response.nps),
        csat: Set(response.csat),
        sequence: Set(sequence),
        body: Set(body(&response)),
    })
    .exec_without_returning(&*tx)
    .await?;
    if !response.ratings.is_empty() {
        let rows = response.ratings.iter().enumerate().map(|(i, r)| survey_ratings::ActiveModel {
            response_id: Set(response.id.clone()),
            idx: Set(i as i32),
            attribute: Set(r.attribute.clone()),
            importance: Set(r.importance),
            our_performance: Set(r.our_performance),
            competitor_performance: Set(r.competitor_performance),
        });
        survey_ratings::Entity::insert_many(rows).exec_without_returning(&*tx).await?;
    }
    lifecycle::note_facts(&tx, &holder, "survey_responses", &[&response.id]).await?;
    lifecycle::note_facts(&tx, &holder, "interactions", &[&interaction.id]).await?;
    let response =
        pb::RecordSurveyResponseResponse { response: Some(response), sequence, interaction: Some(interaction) };
    idempotency::complete_for(&tx, SCOPE, &cmd.request_id, &requested, &response).await?;
    tx.commit().await?;
    Ok(response)
}

/// `q` with its customers replaced by the customers holding their facts
/// now (a customer merged away is analysed through its survivor).
async fn with_holders(store: &Store, q: &AnalysisQuery) -> Result<AnalysisQuery, RuntimeError> {
    let mut q = q.clone();
    if !q.customer_ids.is_empty() {
        q.customer_ids = lifecycle::holders(store.conn(), &q.customer_ids).await?;
    }
    Ok(q)
}

/// The `WHERE` clause of an analysis over `survey_responses r`, and its values.
fn analysis_filter(q: &AnalysisQuery) -> (String, Vec<Value>) {
    let mut sql = String::from("r.occurred_at_us >= ? AND r.occurred_at_us < ?");
    let mut values: Vec<Value> = vec![q.start.timestamp_micros().into(), q.end.timestamp_micros().into()];
    if let Some(segment) = &q.segment {
        sql.push_str(" AND r.segment = ?");
        values.push(segment.as_str().into());
    }
    if !q.customer_ids.is_empty() {
        sql.push_str(" AND r.customer_id IN (");
        for (i, id) in q.customer_ids.iter().enumerate() {
            sql.push_str(if i == 0 { "?" } else { ", ?" });
            values.push(id.as_str().into());
        }
        sql.push(')');
    }
    (sql, values)
}

/// The bucket of a daily sum: the day's first instant within the period.
fn bucket_of_day(q: &AnalysisQuery, day: i64) -> Option<usize> {
    let first = day.saturating_mul(DAY_US).max(q.start.timestamp_micros());
    voice::bucket_of(&q.buckets, first)
}

/// A double from an aggregate (SQLite may hand back an integer).
fn double(row: &QueryResult, i: usize) -> Result<f64, DbErr> {
    match row.try_get_by_index::<f64>(i) {
        Ok(v) => Ok(v),
        Err(_) => row.try_get_by_index::<i64>(i).map(|v| v as f64),
    }
}

/// NPS and CSAT per bucket, oldest first, empty buckets included.
pub async fn analyze_satisfaction(
    store: &Store,
    q: &AnalysisQuery,
) -> Result<Vec<pb::SatisfactionBucket>, RuntimeError> {
    let q = &with_holders(store, q).await?;
    let (filter, values) = analysis_filter(q);
    let sql = format!(
        "SELECT r.occurred_day, \
         CAST(SUM(CASE WHEN r.nps >= 9 THEN 1 ELSE 0 END) AS BIGINT), \
         CAST(SUM(CASE WHEN r.nps BETWEEN 7 AND 8 THEN 1 ELSE 0 END) AS BIGINT), \
         CAST(SUM(CASE WHEN r.nps BETWEEN 0 AND 6 THEN 1 ELSE 0 END) AS BIGINT), \
         CAST(SUM(CASE WHEN r.csat > 0 THEN r.csat ELSE 0 END) AS BIGINT), \
         CAST(SUM(CASE WHEN r.csat > 0 THEN 1 ELSE 0 END) AS BIGINT) \
         FROM survey_responses r WHERE {filter} GROUP BY r.occurred_day"
    );
    let mut sums = vec![SatisfactionSums::default(); q.buckets.len()];
    let conn = store.conn();
    let mut rows = conn.stream_raw(store.stmt(&sql, values)).await?;
    while let Some(row) = rows.next().await {
        let row = row?;
        let Some(b) = bucket_of_day(q, row.try_get_by_index(0)?) else { continue };
        sums[b].add(&SatisfactionSums {
            promoters: row.try_get_by_index(1)?,
            passives: row.try_get_by_index(2)?,
            detractors: row.try_get_by_index(3)?,
            csat_total: row.try_get_by_index(4)?,
            csat_responses: row.try_get_by_index(5)?,
        });
    }
    Ok(q.buckets
        .iter()
        .zip(sums)
        .map(|(b, s)| pb::SatisfactionBucket {
            period: Some(bucket_interval(b)),
            nps_responses: s.nps_responses(),
            nps: s.nps(),
            csat_responses: s.csat_responses,
            csat_mean: s.csat_mean(),
        })
        .collect())
}

/// Perceived value per bucket × attribute (by bucket, then attribute; only
/// pairs with ratings) and the overall ratio. FAILED_PRECONDITION when the
/// answer would exceed `MAX_VALUE_ROWS` rows.
pub async fn analyze_perceived_value(
    store: &Store,
    q: &AnalysisQuery,
) -> Result<pb::AnalyzePerceivedValueResponse, RuntimeError> {
    let q = &with_holders(store, q).await?;
    let (filter, values) = analysis_filter(q);
    let known = "g.competitor_performance >= 0";
    let sql = format!(
        "SELECT r.occurred_day, g.attribute, COUNT(*), \
         CAST(SUM(g.importance) AS DOUBLE PRECISION), \
         CAST(SUM(g.our_performance) AS DOUBLE PRECISION), \
         CAST(SUM(CASE WHEN {known} THEN 1 ELSE 0 END) AS BIGINT), \
         CAST(SUM(CASE WHEN {known} THEN g.competitor_performance ELSE 0 END) AS DOUBLE PRECISION), \
         CAST(SUM(CASE WHEN {known} THEN g.importance ELSE 0 END) AS DOUBLE PRECISION), \
         CAST(SUM(CASE WHEN {known} THEN g.importance * g.our_performance ELSE 0 END) AS DOUBLE PRECISION), \
         CAST(SUM(CASE WHEN {known} THEN g.importance * g.competitor_performance ELSE 0 END) AS DOUBLE PRECISION) \
         FROM survey_ratings g JOIN survey_responses r ON r.id = g.response_id \
         WHERE {filter} GROUP BY r.occurred_day, g.attribute"
    );
    let mut cells: BTreeMap<(usize, String), ValueSums> = BTreeMap::new();
    let mut overall = ValueSums::default();
    let conn = store.conn();
    let mut rows = conn.stream_raw(store.stmt(&sql, values)).await?;
    while let Some(row) = rows.next().await {
        let row = row?;
        let Some(b) = bucket_of_day(q, row.try_get_by_index(0)?) else { continue };
        let attribute: String = row.try_get_by_index(1)?;
        let day = ValueSums {
            ratings: row.try_get_by_index(2)?,
            importance: double(&row, 3)?,
            ours: double(&row, 4)?,
            known: row.try_get_by_index(5)?,
            competitor: double(&row, 6)?,
            known_importance: double(&row, 7)?,
            weighted_ours: double(&row, 8)?,
            weighted_competitor: double(&row, 9)?,
        };
        overall.add(&day);
        let key = (b, attribute);
        if !cells.contains_key(&key) && cells.len() == MAX_VALUE_ROWS {
            return Err(RuntimeError::FailedPrecondition(format!(
                "more than {MAX_VALUE_ROWS} period × attribute rows: narrow the period, use a coarser granularity or filter"
            )));
        }
        cells.entry(key).or_default().add(&day);
    }
    let rows = cells
        .into_iter()
        .map(|((b, attribute), s)| pb::PerceivedValueRow {
            period: Some(bucket_interval(&q.buckets[b])),
            attribute,
            importance: s.mean_importance(),
            our_performance: s.mean_ours(),
            competitor_performance: s.mean_competitor(),
            weighted_advantage: s.weighted_advantage(),
            responses: s.ratings,
        })
        .collect();
    Ok(pb::AnalyzePerceivedValueResponse { rows, perceived_value_ratio: overall.perceived_value_ratio() })
}
