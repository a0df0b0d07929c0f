//! The calls a benchmark makes: the empty-call ceiling (health check),
//! RecordInteraction with varied, valid requests, and the feed replay.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use crm_proto::{
    common::v1::{Channel as ContactChannel, TraitValue, trait_value},
    interaction::v1::{
        Direction, InteractionType, Purpose, RecordInteractionRequest, SubscribeRequest,
        interaction_service_client::InteractionServiceClient,
    },
};
use serde::Serialize;
use tonic::{Status, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use super::load::{Lane, per_second};

/// The RPC of the ceiling.
pub const HEALTH_CHECK: &str = "grpc.health.v1.Health/Check";
/// The RPC of the write workload.
pub const RECORD_INTERACTION: &str = "crm.interaction.v1.InteractionService/RecordInteraction";
/// The RPC of the replay.
pub const SUBSCRIBE: &str = "crm.interaction.v1.InteractionService/Subscribe";

/// A lane of the ceiling: an empty unary call that touches no store.
pub struct HealthLane {
    client: HealthClient<Channel>,
}

impl HealthLane {
    /// Lane `i` of `concurrency` over `channels` (lanes share connections
    /// round-robin).
    pub fn lanes(channels: &[Channel], concurrency: usize) -> Vec<HealthLane> {
        (0..concurrency)
            .map(|i| HealthLane { client: HealthClient::new(channels[i % channels.len()].clone()) })
            .collect()
    }
}

impl Lane for HealthLane {
    async fn call(&mut self, _index: u64) -> Result<(), Status> {
        self.client.check(HealthCheckRequest { service: String::new() }).await.map(|_| ())
    }
}

/// Valid, varied RecordInteraction requests, a pure function of the call
/// number, so any lane can make any call and every call is unique.
#[derive(Debug, Clone)]
pub struct InteractionMix {
    customers: Arc<[String]>,
    /// Prefix of request ids, unique per run.
    run: String,
    seed: u64,
}

/// The inbound types recorded through RecordInteraction (purchases,
/// returns, complaints, surveys and defections have their own RPCs).
const INBOUND_TYPES: [InteractionType; 6] = [
    InteractionType::Visit,
    InteractionType::Visit,
    InteractionType::Inquiry,
    InteractionType::SupportCase,
    InteractionType::Referral,
    InteractionType::PreferenceStatement,
];

const CHANNELS: [ContactChannel; 11] = [
    ContactChannel::Web,
    ContactChannel::MobileApp,
    ContactChannel::Email,
    ContactChannel::Phone,
    ContactChannel::CallCentre,
    ContactChannel::Store,
    ContactChannel::Chat,
    ContactChannel::Social,
    ContactChannel::SalesRep,
    ContactChannel::Partner,
    ContactChannel::Sms,
];

impl InteractionMix {
    /// A mix over `customers` new customer ids.
    pub fn new(customers: usize) -> Self {
        let ids: Vec<String> = (0..customers.max(1)).map(|_| crm_runtime::ids::new_id()).collect();
        let run = crm_runtime::ids::new_id();
        let seed =
            run.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
        InteractionMix { customers: ids.into(), run: format!("bench-{run}"), seed }
    }

    /// Request number `index`: a customer, channel and type picked by a
    /// hash of the number; one in ten an outbound service message (checked
    /// against the contact policy, never refused for lack of consent); some
    /// with a thread, attributes or a past occurrence time.
    pub fn request(&self, index: u64) -> RecordInteractionRequest {
        let h = splitmix64(self.seed ^ index);
        let customer_index = (h % self.customers.len() as u64) as usize;
        let customer_id = self.customers[customer_index].clone();
        let channel = CHANNELS[((h >> 16) % CHANNELS.len() as u64) as usize];
        let outbound = (h >> 24).is_multiple_of(10);
        let (direction, kind, purpose) = if outbound {
            (Direction::Outbound, InteractionType::SupportCase, Purpose::Service)
        } else {
            (Direction::Inbound, INBOUND_TYPES[((h >> 32) % INBOUND_TYPES.len() as u64) as usize], Purpose::Unspecified)
        };
        let thread_id = if (h >> 40).is_multiple_of(4) {
            format!("thread-{customer_index}-{}", (h >> 44) % 3)
        } else {
            String::new()
        };
        let mut attributes = BTreeMap::new();
        if (h >> 48).is_multiple_of(3) {
            attributes.insert("source".to_owned(), text("load-test"));
            attributes.insert("page".to_owned(), text(&format!("/catalogue/{}", (h >> 52) % 500)));
        }
        let occur_time = (h >> 56).is_multiple_of(2).then(|| {
            let now = crm_runtime::time::now().timestamp();
            prost_types::Timestamp { seconds: now - ((h >> 20) % (30 * 24 * 3600)) as i64, nanos: 0 }
        });
        RecordInteractionRequest {
            customer_id,
            channel: channel as i32,
            direction: direction as i32,
            r#type: kind as i32,
            occur_time,
            thread_id,
            attributes,
            purpose: purpose as i32,
            request_id: format!("{}-{index}", self.run),
        }
    }
}

fn text(s: &str) -> TraitValue {
    TraitValue { kind: Some(trait_value::Kind::StringValue(s.to_owned())) }
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A lane of the write workload.
pub struct RecordLane {
    client: InteractionServiceClient<Channel>,
    mix: InteractionMix,
}

impl RecordLane {
    /// `concurrency` lanes sharing `channels` round-robin.
    pub fn lanes(channels: &[Channel], concurrency: usize, mix: &InteractionMix) -> Vec<RecordLane> {
        (0..concurrency)
            .map(|i| RecordLane {
                client: InteractionServiceClient::new(channels[i % channels.len()].clone()),
                mix: mix.clone(),
            })
            .collect()
    }
}

impl Lane for RecordLane {
    async fn call(&mut self, index: u64) -> Result<(), Status> {
        let response = self.client.record_interaction(self.mix.request(index)).await?.into_inner();
        if response.sequence <= 0 || response.interaction.is_none() {
            return Err(Status::internal("the response carries no interaction or sequence"));
        }
        Ok(())
    }
}

/// The feed's head: the sequence of one interaction recorded now (it is
/// at least the number of events the feed holds).
pub async fn probe_head(channel: Channel, mix: &InteractionMix) -> anyhow::Result<i64> {
    let mut client = InteractionServiceClient::new(channel);
    let response = client
        .record_interaction(mix.request(u64::MAX))
        .await
        .map_err(|s| anyhow::anyhow!("RecordInteraction: {}: {}", s.code(), s.message()))?;
    Ok(response.into_inner().sequence)
}

/// What one replay measured.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayStats {
    /// Events received (all of them, contiguous from 1).
    pub events: u64,
    /// From the Subscribe call to the last event, seconds.
    pub elapsed_s: f64,
    /// Events per second.
    pub events_per_s: f64,
    /// From the Subscribe call to the first event, µs.
    pub first_event_us: f64,
    /// Mean encoded size of the first thousand events, bytes.
    pub mean_event_bytes: f64,
}

/// Subscribe after 0 and read `events` events, checking that sequences
/// run 1, 2, 3, … with no gap and no repeat.
pub async fn replay(channel: Channel, events: u64) -> anyhow::Result<ReplayStats> {
    use prost::Message as _;
    let mut client = InteractionServiceClient::new(channel);
    let start = Instant::now();
    let mut stream = client
        .subscribe(SubscribeRequest { after_sequence: 0 })
        .await
        .map_err(|s| anyhow::anyhow!("Subscribe: {}: {}", s.code(), s.message()))?
        .into_inner();
    let mut expected: i64 = 1;
    let mut first_event = Duration::ZERO;
    let (mut sampled, mut sampled_bytes) = (0u64, 0u64);
    while (expected as u64) <= events {
        let message = match stream.message().await {
            Ok(Some(m)) => m,
            Ok(None) => bail!("the feed ended after {} of {events} events", expected - 1),
            Err(s) => bail!("the feed failed after {} events: {}: {}", expected - 1, s.code(), s.message()),
        };
        let event = message.event.context("a feed message without an event")?;
        if event.sequence != expected {
            bail!("feed gap: expected sequence {expected}, received {}", event.sequence);
        }
        if expected == 1 {
            first_event = start.elapsed();
        }
        if sampled < 1_000 {
            sampled += 1;
            sampled_bytes += event.encoded_len() as u64;
        }
        expected += 1;
    }
    let elapsed = start.elapsed();
    let received = (expected - 1) as u64;
    Ok(ReplayStats {
        events: received,
        elapsed_s: elapsed.as_secs_f64(),
        events_per_s: per_second(received, elapsed),
        first_event_us: first_event.as_secs_f64() * 1e6,
        mean_event_bytes: if sampled == 0 { 0.0 } else { sampled_bytes as f64 / sampled as f64 },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_valid_varied_and_unique() {
        let mix = InteractionMix::new(50);
        let requests: Vec<_> = (0..2_000).map(|i| mix.request(i)).collect();
        let ids: std::collections::BTreeSet<_> = requests.iter().map(|r| r.request_id.clone()).collect();
        assert_eq!(ids.len(), requests.len());
        let customers: std::collections::BTreeSet<_> = requests.iter().map(|r| r.customer_id.clone()).collect();
        assert_eq!(customers.len(), 50);
        let channels: std::collections::BTreeSet<_> = requests.iter().map(|r| r.channel).collect();
        assert_eq!(channels.len(), CHANNELS.len());
        assert!(requests.iter().any(|r| r.direction == Direction::Outbound as i32));
        for r in &requests {
            assert!(crm_runtime::ids::is_valid_id(&r.customer_id));
            assert_ne!(r.r#type, InteractionType::Purchase as i32);
            assert_ne!(r.r#type, InteractionType::Unspecified as i32);
            if r.direction == Direction::Outbound as i32 {
                assert_eq!(r.purpose, Purpose::Service as i32);
            }
            assert!(r.request_id.len() <= 128);
        }
        // The same number makes the same request.
        assert_eq!(mix.request(7), mix.request(7));
    }
}
