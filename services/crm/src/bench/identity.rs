//! The identification workload: a base of generated people loaded through
//! ImportProfiles, the matcher trained on it, then ResolveIdentity calls of
//! returning customers: corrupted duplicates of people in the base (typos,
//! nicknames, moves, missing fields), which the service must find among
//! everyone stored.

use std::{sync::Arc, time::Instant};

use anyhow::Context;
use crm_identification::domain::matching::{self, Record};
use crm_proto::{
    common::v1::Channel as ContactChannel,
    identification::v1::{self as pb, IdentifierType, identification_service_client::IdentificationServiceClient},
};
use serde::Serialize;
use tonic::{Status, transport::Channel};

use super::load::{Lane, per_second};

/// The RPC of the workload.
pub const RESOLVE_IDENTITY: &str = "crm.identification.v1.IdentificationService/ResolveIdentity";

/// The people of a run, the same for the same size and seed: `originals`
/// people (the base) followed by about one corrupted duplicate of each.
pub struct People {
    records: Vec<(u64, Record)>,
    originals: usize,
}

impl People {
    /// Generate them (FEBRL-style records, see the matching generator).
    pub fn generate(originals: usize, seed: u64) -> Self {
        People { records: matching::generate(originals, 1.0, seed), originals }
    }

    /// The base.
    pub fn originals(&self) -> &[(u64, Record)] {
        &self.records[..self.originals]
    }

    /// The returning customers.
    pub fn returning(&self) -> &[(u64, Record)] {
        &self.records[self.originals..]
    }
}

/// The region phone numbers without a country code are read in (the
/// in-process services' default).
const REGION: &str = "ES";

/// What a touchpoint of `r` sends: what the service accepts of it
/// ([`crm_identification::matcher::accepted_touchpoint_of`]), or a per-visit
/// cookie (which identifies no one) when it has neither e-mail nor phone.
fn touchpoint(r: &Record, visit: u64) -> (Vec<pb::Identifier>, pb::ProfileAttributes) {
    let (mut identifiers, attributes) = crm_identification::matcher::accepted_touchpoint_of(r, REGION);
    if identifiers.is_empty() {
        identifiers.push(pb::Identifier {
            r#type: IdentifierType::Cookie as i32,
            value: format!("bench-visit-{visit}"),
            namespace: String::new(),
        });
    }
    (identifiers, attributes)
}

/// What loading the base measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ImportStats {
    /// Records sent.
    pub records: u64,
    /// Concurrent ImportProfiles streams.
    pub streams: usize,
    /// Profiles created, records linked, sent to review, rejected.
    pub created: i64,
    /// Records linked to a profile loaded before them.
    pub linked: i64,
    /// Records sent to the review queue.
    pub review: i64,
    /// Records rejected as invalid.
    pub rejected: i64,
    /// Wall time, seconds.
    pub elapsed_s: f64,
    /// Records per second.
    pub records_per_s: f64,
}

/// Records per ImportProfiles call: a call, streaming or not, is bounded by
/// the server's request timeout (`CRM_REQUEST_TIMEOUT_MS`), so a large base
/// goes in chunks, as a loader would send it.
pub const IMPORT_CHUNK: usize = 10_000;

/// Load `people`'s base from record `from` on through `streams` concurrent
/// streams of ImportProfiles calls, each over its share of the records, in
/// order, [`IMPORT_CHUNK`] records a call.
pub async fn import(
    channels: &[Channel],
    people: &Arc<People>,
    streams: usize,
    from: usize,
) -> anyhow::Result<ImportStats> {
    let streams = streams.max(1);
    let total = people.originals().len();
    let from = from.min(total);
    let per_stream = (total - from).div_ceil(streams);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(streams);
    for s in 0..streams {
        let range = (from + s * per_stream).min(total)..(from + (s + 1) * per_stream).min(total);
        let people = Arc::clone(people);
        let mut client = IdentificationServiceClient::new(channels[s % channels.len()].clone());
        tasks.push(tokio::spawn(async move {
            let mut counts = pb::ImportProfilesResponse::default();
            let mut start = range.start;
            while start < range.end {
                let end = (start + IMPORT_CHUNK).min(range.end);
                let people = Arc::clone(&people);
                let requests = (start..end).map(move |i| {
                    let (identifiers, attributes) = touchpoint(&people.originals()[i].1, i as u64);
                    pb::ImportProfilesRequest {
                        identifiers,
                        attributes: Some(attributes),
                        acquisition: None,
                        source_key: format!("bench-{i}"),
                    }
                });
                let chunk = client.import_profiles(tokio_stream::iter(requests)).await?.into_inner();
                counts.created_count += chunk.created_count;
                counts.linked_count += chunk.linked_count;
                counts.review_count += chunk.review_count;
                counts.rejected_count += chunk.rejected_count;
                start = end;
            }
            Ok::<_, Status>(counts)
        }));
    }
    let mut stats = ImportStats { records: (total - from) as u64, streams, ..ImportStats::default() };
    for task in tasks {
        let counts = task
            .await
            .context("an import stream panicked")?
            .map_err(|s| anyhow::anyhow!("ImportProfiles: {}: {}", s.code(), s.message()))?;
        stats.created += counts.created_count;
        stats.linked += counts.linked_count;
        stats.review += counts.review_count;
        stats.rejected += counts.rejected_count;
    }
    let elapsed = started.elapsed();
    stats.elapsed_s = elapsed.as_secs_f64();
    stats.records_per_s = per_second(stats.records, elapsed);
    Ok(stats)
}

/// What training the matcher on the base measured.
#[derive(Debug, Clone, Serialize)]
pub struct TrainingStats {
    /// Wall time of the TrainMatcher call, seconds.
    pub elapsed_s: f64,
    /// The version trained.
    pub matcher_version: i64,
    /// Whether expectation–maximisation converged.
    pub converged: bool,
    /// Its iterations.
    pub iterations: i32,
    /// Candidate pairs it learnt from.
    pub pair_count: i64,
    /// Kept records it was fitted on.
    pub record_count: i64,
    /// Its prior that a candidate pair is the same person.
    pub match_prior: f64,
    /// Total weight from which it links.
    pub link_threshold: f64,
    /// Total weight from which it sends to review.
    pub review_threshold: f64,
}

/// Call TrainMatcher once and time it.
pub async fn train(channel: Channel) -> anyhow::Result<TrainingStats> {
    let mut client = IdentificationServiceClient::new(channel);
    let started = Instant::now();
    let trained = client
        .train_matcher(pb::TrainMatcherRequest::default())
        .await
        .map_err(|s| anyhow::anyhow!("TrainMatcher: {}: {}", s.code(), s.message()))?
        .into_inner();
    Ok(TrainingStats {
        elapsed_s: started.elapsed().as_secs_f64(),
        matcher_version: trained.matcher_version,
        converged: trained.converged,
        iterations: trained.iterations,
        pair_count: trained.pair_count,
        record_count: trained.record_count,
        match_prior: trained.match_prior,
        link_threshold: trained.link_threshold,
        review_threshold: trained.review_threshold,
    })
}

/// Which of `returning` customers call `index` resolves: a stride
/// through them (so lanes spread over the base) that visits each once in
/// any `returning` calls in a row, so runs over calls that do not overlap
/// (modulo `returning`) resolve different people.
fn pick(returning: usize, index: u64) -> usize {
    // A prime larger than any number of customers: coprime to it, so the
    // stride is a permutation.
    const STRIDE: u128 = (1 << 61) - 1;
    let n = returning as u128;
    ((u128::from(index) % n * STRIDE) % n) as usize
}

/// A lane of the workload: call `index` resolves the returning customer
/// [`pick`] chooses.
pub struct ResolveLane {
    client: IdentificationServiceClient<Channel>,
    people: Arc<People>,
}

impl ResolveLane {
    /// `concurrency` lanes sharing `channels` round-robin.
    pub fn lanes(channels: &[Channel], concurrency: usize, people: &Arc<People>) -> Vec<ResolveLane> {
        (0..concurrency)
            .map(|i| ResolveLane {
                client: IdentificationServiceClient::new(channels[i % channels.len()].clone()),
                people: Arc::clone(people),
            })
            .collect()
    }

    /// The request of call `index`.
    pub fn request(people: &People, index: u64) -> pb::ResolveIdentityRequest {
        let (_, r) = &people.returning()[pick(people.returning().len(), index)];
        let (identifiers, attributes) = touchpoint(r, index);
        pb::ResolveIdentityRequest {
            identifiers,
            attributes: Some(attributes),
            channel: ContactChannel::Web as i32,
            ..Default::default()
        }
    }
}

impl Lane for ResolveLane {
    async fn call(&mut self, index: u64) -> Result<(), Status> {
        let response = self.client.resolve_identity(ResolveLane::request(&self.people, index)).await?.into_inner();
        if response.profile.is_none() {
            return Err(Status::internal("the response carries no profile"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_returning_customers_of_the_base() {
        let people = People::generate(200, 5);
        assert_eq!(people.originals().len(), 200);
        assert!(!people.returning().is_empty());
        let originals: std::collections::BTreeSet<u64> = people.originals().iter().map(|(c, _)| *c).collect();
        assert!(people.returning().iter().all(|(c, _)| originals.contains(c)));
        let a = ResolveLane::request(&people, 3);
        assert_eq!(a, ResolveLane::request(&people, 3));
        let distinct: std::collections::BTreeSet<String> =
            (0..100).map(|i| format!("{:?}", ResolveLane::request(&people, i).attributes)).collect();
        assert!(distinct.len() > 50, "{}", distinct.len());
        for i in 0..100 {
            let r = ResolveLane::request(&people, i);
            assert!(!r.identifiers.is_empty());
            assert!(r.attributes.and_then(|a| a.name).is_some());
        }
    }

    #[test]
    fn runs_over_calls_that_do_not_overlap_resolve_different_people() {
        let people = People::generate(2_000, 7);
        let n = people.returning().len();
        let picked: std::collections::BTreeSet<usize> = (0..n as u64).map(|i| pick(n, i)).collect();
        assert_eq!(picked.len(), n, "each customer once in {n} calls in a row");
        let from_far = 7 * n as u64 + 13;
        let far: std::collections::BTreeSet<usize> = (from_far..from_far + n as u64).map(|i| pick(n, i)).collect();
        assert_eq!(far, picked);
        // Neighbouring calls spread over the base.
        assert!(pick(n, 0).abs_diff(pick(n, 1)) > 1, "{} {}", pick(n, 0), pick(n, 1));
        let (_, r) = &people.returning()[pick(n, 5)];
        let expected = touchpoint(r, 5);
        let request = ResolveLane::request(&people, 5);
        assert_eq!((request.identifiers, request.attributes), (expected.0, Some(expected.1)));
    }

    #[test]
    fn every_request_is_valid() {
        let people = People::generate(2_000, 2026);
        let base = people.originals().iter().enumerate().map(|(i, (_, r))| touchpoint(r, i as u64));
        let returning = (0..4_000).map(|i| {
            let req = ResolveLane::request(&people, i);
            (req.identifiers, req.attributes.unwrap_or_default())
        });
        for (identifiers, attributes) in base.chain(returning) {
            let req = pb::ResolveIdentityRequest {
                identifiers,
                attributes: Some(attributes),
                channel: ContactChannel::Web as i32,
                ..Default::default()
            };
            if let Err(e) = crm_identification::conversions::ResolveCommand::from_request(req.clone(), REGION) {
                panic!("{req:?} is refused: {e}");
            }
        }
    }
}
