//! Telemetry of the real suite (five `crm serve` processes) exported by
//! OTLP/gRPC to a test receiver: one HandleTouchpoint is one trace across
//! the gateway and the four services, a feed consumer's apply span links to
//! the producer's span, RPC metrics carry only the RED attributes, JSON logs
//! carry trace ids, and no personal data reaches spans, metrics or logs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use crm_e2e::{
    otlp::{ExportedPoint, ExportedSpan, Receiver, point_text, span_text},
    processes::Processes,
};
use crm_proto::{
    common::v1::{Channel, Date},
    gateway::v1::{HandleTouchpointRequest, gateway_service_client::GatewayServiceClient},
    identification::v1::{
        GetProfileRequest, Identifier, IdentifierType, PersonName, PostalAddress, ProfileAttributes,
        ResolveIdentityRequest, identification_service_client::IdentificationServiceClient,
    },
    interaction::v1::InteractionType,
};
use crm_runtime::config::ServiceKind;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use tonic::{Code, Request};

/// The personal data of the workflow, as sent.
const EMAIL: &str = "Wilhelmina.Quattrocchi@Correu-Privat.cat";
const PHONE: &str = "+34 655 918 273";
const GIVEN_NAME: &str = "Wilhelmina";
const FAMILY_NAME: &str = "Quattrocchi";
const STREET: &str = "Carrer de Zurbaran 77";
const BIRTH_DATE: (i32, i32, i32) = (1961, 3, 17);

/// Every form in which the personal data could leak: as sent, normalised
/// (lower-case email, E.164 phone, national digits, ISO birth date), and
/// distinctive parts.
fn personal_values() -> Vec<String> {
    let (y, m, d) = BIRTH_DATE;
    vec![
        EMAIL.to_owned(),
        EMAIL.to_lowercase(),
        "quattrocchi@correu-privat".to_owned(),
        PHONE.to_owned(),
        "+34655918273".to_owned(),
        "655918273".to_owned(),
        "655 918 273".to_owned(),
        GIVEN_NAME.to_owned(),
        FAMILY_NAME.to_owned(),
        STREET.to_owned(),
        "Zurbaran".to_owned(),
        format!("{y:04}-{m:02}-{d:02}"),
        format!("{y:04}{m:02}{d:02}"),
        format!("{d:02}/{m:02}/{y:04}"),
    ]
}

/// The personal values found in `text`, ignoring case.
fn leaks(text: &str) -> Vec<String> {
    let haystack = text.to_lowercase();
    personal_values().into_iter().filter(|v| haystack.contains(&v.to_lowercase())).collect()
}

/// The trace of the detector's self-check call: its `tracestate` carries a
/// personal value on purpose, through the same pipeline as everything else.
const CHECK_TRACE_ID: &str = "5eedc0de5eedc0de5eedc0de5eedc0de";

fn attributes() -> ProfileAttributes {
    let (year, month, day) = BIRTH_DATE;
    ProfileAttributes {
        name: Some(PersonName { given_name: GIVEN_NAME.into(), family_name: FAMILY_NAME.into(), ..Default::default() }),
        birth_date: Some(Date { year, month, day }),
        address: Some(PostalAddress {
            lines: vec![STREET.into()],
            locality: "Sabadell".into(),
            postal_code: "08201".into(),
            country_code: "ES".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn identifiers() -> Vec<Identifier> {
    vec![
        Identifier { r#type: IdentifierType::Email as i32, value: EMAIL.into(), namespace: String::new() },
        Identifier { r#type: IdentifierType::Phone as i32, value: PHONE.into(), namespace: String::new() },
    ]
}

/// What the suite exported and printed while it ran the workflow.
struct Observed {
    spans: Vec<ExportedSpan>,
    points: Vec<ExportedPoint>,
    logs: Vec<(&'static str, String)>,
}

/// Run the suite with telemetry going to a test receiver: one touchpoint
/// with personal data, one resolve of the same person, one invalid
/// touchpoint, and the detector's self-check call; then stop every process
/// with SIGTERM (which flushes what is buffered) and collect.
async fn observe() -> Observed {
    let receiver = Receiver::start().await;
    let endpoint = receiver.endpoint();
    let mut suite = Processes::start(
        env!("CARGO_BIN_EXE_crm-e2e-crm"),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
            ("CRM_LOG_FORMAT", "json"),
            ("RUST_LOG", "debug"),
        ],
    )
    .await;

    let mut gateway = GatewayServiceClient::new(suite.get(ServiceKind::Gateway).channel());
    let touchpoint = gateway
        .handle_touchpoint(HandleTouchpointRequest {
            identifiers: identifiers(),
            attributes: Some(attributes()),
            channel: Channel::Web as i32,
            interaction_type: InteractionType::Visit as i32,
            request_id: "telemetry-touchpoint-1".into(),
            ..Default::default()
        })
        .await
        .expect("touchpoint")
        .into_inner();
    assert!(touchpoint.missing_parts.is_empty(), "every step answered: {:?}", touchpoint.missing_parts);
    let profile_id = touchpoint.profile.expect("profile").id;

    let mut identification = IdentificationServiceClient::new(suite.get(ServiceKind::Identification).channel());
    let resolved = identification
        .resolve_identity(ResolveIdentityRequest {
            identifiers: identifiers(),
            attributes: Some(attributes()),
            channel: Channel::Store as i32,
            request_id: "telemetry-resolve-1".into(),
            ..Default::default()
        })
        .await
        .expect("resolve")
        .into_inner();
    assert_eq!(resolved.profile.expect("profile").id, profile_id, "the same person");

    let invalid = gateway.handle_touchpoint(HandleTouchpointRequest::default()).await.expect_err("invalid");
    assert_eq!(invalid.code(), Code::InvalidArgument);

    let mut check = Request::new(GetProfileRequest { profile_id: profile_id.clone() });
    check.metadata_mut().insert("traceparent", format!("00-{CHECK_TRACE_ID}-5eedc0de5eedc0de-01").parse().unwrap());
    check.metadata_mut().insert("tracestate", format!("crmcheck={FAMILY_NAME}").parse().unwrap());
    identification.get_profile(check).await.expect("self-check call");

    let statuses = suite.terminate().await;
    for (name, status) in &statuses {
        assert!(status.success(), "{name} exited with {status}");
    }
    Observed { spans: receiver.spans(), points: receiver.points(), logs: suite.output() }
}

fn server_spans<'a>(spans: &'a [ExportedSpan], service: &str, method: &str) -> Vec<&'a ExportedSpan> {
    spans
        .iter()
        .filter(|s| {
            s.span.kind == SpanKind::Server as i32
                && s.attribute("rpc.service").as_deref() == Some(service)
                && s.attribute("rpc.method").as_deref() == Some(method)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_touchpoint_is_one_trace_across_the_five_services() {
    let observed = observe().await;
    let spans = &observed.spans;

    // One gateway call, one trace.
    let gateway = server_spans(spans, "crm.gateway.v1.GatewayService", "HandleTouchpoint");
    let valid: Vec<_> =
        gateway.iter().filter(|s| s.attribute("rpc.grpc.status_code").as_deref() == Some("0")).collect();
    assert_eq!(valid.len(), 1, "one successful HandleTouchpoint server span: {gateway:#?}");
    let touchpoint = valid[0];
    assert_eq!(touchpoint.service_name, "gateway");
    assert_eq!(touchpoint.parent_span_id(), "", "the gateway call starts the trace");
    let trace = touchpoint.trace_id();
    let in_trace: Vec<_> = spans.iter().filter(|s| s.trace_id() == trace).collect();
    let ids_in_trace: BTreeSet<String> = in_trace.iter().map(|s| s.span_id()).collect();

    // Each downstream step is a server span of its own service in that
    // trace, whose parent is a span of the trace (propagated by the gateway).
    for (service_name, service, method) in [
        ("identification", "crm.identification.v1.IdentificationService", "ResolveIdentity"),
        ("interaction", "crm.interaction.v1.InteractionService", "RecordInteraction"),
        ("differentiation", "crm.differentiation.v1.DifferentiationService", "GetCustomerValue"),
        ("personalization", "crm.personalization.v1.PersonalizationService", "NextBestOffers"),
    ] {
        let step: Vec<_> = server_spans(spans, service, method).into_iter().filter(|s| s.trace_id() == trace).collect();
        assert_eq!(step.len(), 1, "{method} once in the touchpoint's trace");
        assert_eq!(step[0].service_name, service_name, "exported by {service_name}");
        assert!(ids_in_trace.contains(&step[0].parent_span_id()), "{method}'s parent is in the trace");
    }
    let services: BTreeSet<&str> =
        in_trace.iter().filter(|s| s.span.kind == SpanKind::Server as i32).map(|s| s.service_name.as_str()).collect();
    assert_eq!(
        services,
        BTreeSet::from(["differentiation", "gateway", "identification", "interaction", "personalization"]),
        "server spans of all five services in one trace"
    );
    // The steps only the touchpoint ran produced no other trace.
    for (service, method) in [
        ("crm.interaction.v1.InteractionService", "RecordInteraction"),
        ("crm.differentiation.v1.DifferentiationService", "GetCustomerValue"),
        ("crm.personalization.v1.PersonalizationService", "NextBestOffers"),
    ] {
        assert!(server_spans(spans, service, method).iter().all(|s| s.trace_id() == trace), "{method}");
    }

    // Differentiation applies the recorded interaction in a trace of its
    // own, linked to the interaction span that appended the event.
    let interaction_ids: BTreeSet<String> =
        in_trace.iter().filter(|s| s.service_name == "interaction").map(|s| s.span_id()).collect();
    let applies: Vec<_> =
        spans.iter().filter(|s| s.service_name == "differentiation" && s.span.name == "interaction apply").collect();
    assert!(!applies.is_empty(), "differentiation exported its apply spans");
    let linked: Vec<_> = applies
        .iter()
        .filter(|s| {
            s.span.links.iter().any(|l| hex(&l.trace_id) == trace && interaction_ids.contains(&hex(&l.span_id)))
        })
        .collect();
    assert_eq!(linked.len(), 1, "one apply span links to the producer: {applies:#?}");
    assert_eq!(linked[0].span.kind, SpanKind::Consumer as i32);
    assert_ne!(linked[0].trace_id(), trace, "applying is a trace of its own");

    // RED metrics with exactly the RPC attributes.
    let red = ["rpc.server.requests", "rpc.server.errors", "rpc.server.call.duration"];
    let points: Vec<_> = observed.points.iter().filter(|p| red.contains(&p.metric.as_str())).collect();
    for p in &points {
        let keys: BTreeSet<&str> = p.attributes.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, BTreeSet::from(["rpc.grpc.status_code", "rpc.method", "rpc.service"]), "{p:?}");
    }
    let value = |metric: &str, code: &str| -> f64 {
        points
            .iter()
            .filter(|p| {
                p.metric == metric
                    && p.service_name == "gateway"
                    && p.attribute("rpc.method").as_deref() == Some("HandleTouchpoint")
                    && p.attribute("rpc.grpc.status_code").as_deref() == Some(code)
            })
            .map(|p| p.value)
            .fold(0.0, f64::max)
    };
    assert_eq!(value("rpc.server.requests", "0"), 1.0, "one successful touchpoint counted");
    assert_eq!(value("rpc.server.requests", "3"), 1.0, "one invalid touchpoint counted");
    assert_eq!(value("rpc.server.errors", "3"), 1.0, "the invalid one is an error, by code");
    assert_eq!(value("rpc.server.errors", "0"), 0.0, "a success is no error");
    assert_eq!(value("rpc.server.call.duration", "0"), 1.0, "its duration measured");

    // JSON logs, with the ids of the span they were written in.
    let mut correlated = 0;
    for (service, line) in &observed.logs {
        let json: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{service} printed a non-JSON line ({e}): {line}"));
        if json["trace_id"] == trace.as_str() {
            assert_eq!(json["span_id"].as_str().map(str::len), Some(16), "{line}");
            correlated += 1;
        }
    }
    assert!(correlated > 0, "log lines written during the touchpoint carry its trace id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_personal_data_reaches_spans_metrics_or_logs() {
    let observed = observe().await;

    // The detector's self-check: the deliberate value is found where it was
    // put, through the same export pipeline.
    let (check, spans): (Vec<_>, Vec<_>) = observed.spans.iter().partition(|s| s.trace_id() == CHECK_TRACE_ID);
    assert!(!check.is_empty(), "the self-check call was exported");
    let check_text = check.iter().map(|s| span_text(s)).collect::<Vec<_>>().join("\n");
    assert_eq!(leaks(&check_text), vec![FAMILY_NAME.to_owned()], "the detector flags the planted value");

    // Everything else is free of personal data.
    assert!(spans.len() > 10, "the workflow was exported ({} spans)", spans.len());
    let mut found: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for s in &spans {
        for v in leaks(&span_text(s)) {
            found.entry(v).or_default().push(format!("span {} of {}", s.span.name, s.service_name));
        }
    }
    assert!(!observed.points.is_empty(), "metrics were exported");
    for p in &observed.points {
        for v in leaks(&point_text(p)) {
            found.entry(v).or_default().push(format!("metric {} of {}", p.metric, p.service_name));
        }
    }
    assert!(observed.logs.len() > 10, "the processes logged ({} lines)", observed.logs.len());
    for (service, line) in &observed.logs {
        for v in leaks(line) {
            found.entry(v).or_default().push(format!("log of {service}: {line}"));
        }
    }
    assert!(found.is_empty(), "personal data in telemetry: {found:#?}");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
