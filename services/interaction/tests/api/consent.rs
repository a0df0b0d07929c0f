//! Consent and contact policy (IN-5): the append-only history, the policy,
//! EvaluateContact, and outbound contacts refused by them.

use chrono::{Duration, Timelike};

use crate::*;

fn consent(
    customer: &str,
    channel: Channel,
    purpose: pb::Purpose,
    state: pb::ConsentState,
) -> pb::RecordConsentRequest {
    pb::RecordConsentRequest {
        consent: Some(pb::Consent {
            customer_id: customer.to_owned(),
            channel: channel as i32,
            purpose: purpose as i32,
            state: state as i32,
            lawful_basis: pb::LawfulBasis::Consent as i32,
            source: "web form".into(),
            ..Default::default()
        }),
        request_id: String::new(),
    }
}

async fn grant(
    client: &mut InteractionServiceClient<GrpcChannel>,
    customer: &str,
    channel: Channel,
    purpose: pb::Purpose,
) {
    client.record_consent(consent(customer, channel, purpose, pb::ConsentState::Granted)).await.expect("grant");
}

async fn set_policy(
    client: &mut InteractionServiceClient<GrpcChannel>,
    customer: &str,
    time_zone: &str,
    quiet: (i32, i32),
    cap: i32,
) -> pb::ContactPolicy {
    client
        .update_contact_policy(pb::UpdateContactPolicyRequest {
            policy: Some(pb::ContactPolicy {
                customer_id: customer.to_owned(),
                preferred_channel: Channel::Email as i32,
                time_zone: time_zone.to_owned(),
                quiet_start_minute: quiet.0,
                quiet_end_minute: quiet.1,
                max_contacts_per_week: cap,
                etag: String::new(),
            }),
            request_id: String::new(),
        })
        .await
        .expect("policy")
        .into_inner()
        .policy
        .expect("policy")
}

async fn evaluate(
    client: &mut InteractionServiceClient<GrpcChannel>,
    customer: &str,
    channel: Channel,
    purpose: pb::Purpose,
    at: DateTime<Utc>,
) -> pb::ContactDecision {
    client
        .evaluate_contact(pb::EvaluateContactRequest {
            customer_id: customer.to_owned(),
            channel: channel as i32,
            purpose: purpose as i32,
            at_time: Some(ts(at)),
        })
        .await
        .expect("evaluate")
        .into_inner()
        .decision
        .expect("decision")
}

fn outbound(customer: &str, channel: Channel, purpose: pb::Purpose, at: DateTime<Utc>) -> pb::RecordInteractionRequest {
    pb::RecordInteractionRequest {
        customer_id: customer.to_owned(),
        channel: channel as i32,
        direction: pb::Direction::Outbound as i32,
        r#type: pb::InteractionType::CampaignContact as i32,
        occur_time: Some(ts(at)),
        purpose: purpose as i32,
        ..Default::default()
    }
}

/// Now, to the whole second (what the tests place contacts around).
fn this_second() -> DateTime<Utc> {
    let now = Utc::now();
    now - Duration::nanoseconds(i64::from(now.nanosecond()))
}

#[tokio::test]
async fn consent_history_shows_every_change_in_order() {
    let (_server, mut client) = spawn_app().await;
    let customer = new_id();
    use pb::{ConsentState as S, Purpose as P};
    let changes = [
        (Channel::Email, P::Marketing, S::Granted),
        (Channel::Sms, P::Marketing, S::Granted),
        (Channel::Email, P::Marketing, S::Withdrawn),
        (Channel::Email, P::Profiling, S::Granted),
        (Channel::Email, P::Marketing, S::Granted),
    ];
    let mut recorded = Vec::new();
    for (i, (channel, purpose, state)) in changes.into_iter().enumerate() {
        let mut req = consent(&customer, channel, purpose, state);
        req.request_id = format!("consent-{i}");
        let r = client.record_consent(req.clone()).await.expect("record").into_inner();
        assert_eq!(client.record_consent(req).await.expect("retry").into_inner(), r, "retried: the first result");
        recorded.push(r);
    }
    client.record_consent(consent(&new_id(), Channel::Email, P::Marketing, S::Granted)).await.expect("someone else");

    let mut listed = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_consents(pb::ListConsentsRequest { customer_id: customer.clone(), page_size: 2, page_token: token })
            .await
            .expect("page")
            .into_inner();
        assert!(page.consents.len() <= 2);
        listed.extend(page.consents);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(listed, recorded.iter().map(|r| r.consent.clone().expect("consent")).collect::<Vec<_>>());
    assert_eq!(
        listed.iter().map(|c| (c.channel, c.purpose, c.state)).collect::<Vec<_>>(),
        changes.iter().map(|(c, p, s)| (*c as i32, *p as i32, *s as i32)).collect::<Vec<_>>(),
        "oldest first, nothing overwritten"
    );
    assert!(listed.iter().all(|c| c.record_time.is_some() && c.customer_id == customer));
    assert_eq!(recorded.iter().map(|r| r.sequence).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);

    let events = feed_events(&mut client, 0).await;
    assert_eq!(events.len(), 6, "one event per change, none for the retries");
    assert!(events.iter().all(|e| matches!(e.kind, Some(Kind::ConsentRecorded(_)))));

    let decision = evaluate(&mut client, &customer, Channel::Email, P::Marketing, Utc::now()).await;
    assert!(decision.allowed, "the latest change decides: {}", decision.reason);
    assert_eq!(decision.consent_id, listed[4].id);
}

#[tokio::test]
async fn without_consent_only_service_messages_may_be_sent_and_a_marketing_opt_out_does_not_block_them() {
    let (_server, mut client) = spawn_app().await;
    let customer = new_id();
    use pb::Purpose as P;
    let now = Utc::now();
    let d = evaluate(&mut client, &customer, Channel::Email, P::Service, now).await;
    assert!(d.allowed, "service messages rest on the contract");
    for purpose in [P::Marketing, P::Profiling, P::Survey] {
        let d = evaluate(&mut client, &customer, Channel::Email, purpose, now).await;
        assert!(!d.allowed);
        assert!(d.reason.starts_with("no consent"), "{}", d.reason);
    }

    grant(&mut client, &customer, Channel::Email, P::Marketing).await;
    let d = evaluate(&mut client, &customer, Channel::Email, P::Marketing, now).await;
    assert!(d.allowed);
    client.record_interaction(outbound(&customer, Channel::Email, P::Marketing, now)).await.expect("allowed contact");

    let withdrawal = client
        .record_consent(consent(&customer, Channel::Email, P::Marketing, pb::ConsentState::Withdrawn))
        .await
        .expect("withdraw")
        .into_inner();
    let d = evaluate(&mut client, &customer, Channel::Email, P::Marketing, now).await;
    assert!(!d.allowed);
    assert!(d.reason.starts_with("consent withdrawn"), "{}", d.reason);
    assert_eq!(d.consent_id, withdrawal.consent.expect("consent").id);
    let before = feed_events(&mut client, 0).await.len();

    let err =
        client.record_interaction(outbound(&customer, Channel::Email, P::Marketing, now)).await.expect_err("opted out");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("consent withdrawn"), "{}", err.message());

    let d = evaluate(&mut client, &customer, Channel::Email, P::Service, now).await;
    assert!(d.allowed, "{}", d.reason);
    let r = client
        .record_interaction(outbound(&customer, Channel::Email, P::Service, now))
        .await
        .expect("a service message goes out")
        .into_inner();
    assert_eq!(r.interaction.expect("interaction").purpose, P::Service as i32);
    let after = feed_events(&mut client, 0).await.len();
    assert_eq!(after, before + 1, "the refused contact left nothing in the feed");

    // Inbound contacts are never checked.
    let mut inbound = outbound(&customer, Channel::Email, P::Marketing, now);
    inbound.direction = pb::Direction::Inbound as i32;
    client.record_interaction(inbound).await.expect("inbound");
}

#[tokio::test]
async fn a_grant_lapses_at_its_expiry() {
    let (_server, mut client) = spawn_app().await;
    let customer = new_id();
    let expiry = this_second() + Duration::hours(1);
    let mut req = consent(&customer, Channel::Sms, pb::Purpose::Survey, pb::ConsentState::Granted);
    if let Some(c) = req.consent.as_mut() {
        c.expire_time = Some(ts(expiry));
    }
    let granted = client.record_consent(req).await.expect("grant").into_inner().consent.expect("consent");
    assert_eq!(granted.expire_time, Some(ts(expiry)));
    let before =
        evaluate(&mut client, &customer, Channel::Sms, pb::Purpose::Survey, expiry - Duration::seconds(1)).await;
    assert!(before.allowed);
    let after = evaluate(&mut client, &customer, Channel::Sms, pb::Purpose::Survey, expiry).await;
    assert!(!after.allowed);
    assert!(after.reason.starts_with("consent expired"), "{}", after.reason);
    assert_eq!(after.consent_id, granted.id);
}

#[tokio::test]
async fn quiet_hours_are_enforced_at_the_boundary_minute_in_the_customers_time_zone() {
    let (_server, mut client) = spawn_app().await;
    let customer = new_id();
    use pb::Purpose as P;
    grant(&mut client, &customer, Channel::Email, P::Marketing).await;
    grant(&mut client, &customer, Channel::Email, P::Survey).await;
    set_policy(&mut client, &customer, "Europe/Madrid", (22 * 60, 8 * 60), 0).await;
    let at = |t| evaluate_at(client.clone(), customer.clone(), P::Marketing, t);

    // February: Madrid is UTC+1.
    assert!(at(utc(2026, 2, 10, 20, 59, 59)).await.allowed, "21:59:59");
    let d = at(utc(2026, 2, 10, 21, 0, 0)).await;
    assert!(!d.allowed, "22:00 is the first quiet minute");
    assert_eq!(d.reason, "quiet hours 22:00–08:00 Europe/Madrid");
    assert!(!at(utc(2026, 2, 11, 6, 59, 59)).await.allowed, "07:59:59");
    assert!(at(utc(2026, 2, 11, 7, 0, 0)).await.allowed, "08:00 is allowed again");
    // 2026-03-29: summer time begins (UTC+2); 08:00 local is 06:00 UTC.
    assert!(!at(utc(2026, 3, 29, 5, 59, 0)).await.allowed, "07:59 CEST");
    assert!(at(utc(2026, 3, 29, 6, 0, 0)).await.allowed, "08:00 CEST");
    assert!(!at(utc(2026, 3, 28, 6, 0, 0)).await.allowed, "07:00 CET the day before");
    // 2026-10-25: back to UTC+1; 22:00 local is 21:00 UTC.
    assert!(at(utc(2026, 10, 25, 20, 59, 0)).await.allowed, "21:59 CET");
    assert!(!at(utc(2026, 10, 25, 21, 0, 0)).await.allowed, "22:00 CET");

    let survey = evaluate(&mut client, &customer, Channel::Email, P::Survey, utc(2026, 2, 10, 21, 0, 0)).await;
    assert!(!survey.allowed, "surveys respect quiet hours too");
    let service = evaluate(&mut client, &customer, Channel::Email, P::Service, utc(2026, 2, 10, 21, 0, 0)).await;
    assert!(service.allowed, "service messages do not");
}

async fn evaluate_at(
    mut client: InteractionServiceClient<GrpcChannel>,
    customer: String,
    purpose: pb::Purpose,
    at: DateTime<Utc>,
) -> pb::ContactDecision {
    evaluate(&mut client, &customer, Channel::Email, purpose, at).await
}

#[tokio::test]
async fn outbound_contacts_in_quiet_hours_are_refused_at_the_boundary_minute() {
    let (_server, mut client) = spawn_app().await;
    let customer = new_id();
    use pb::Purpose as P;
    grant(&mut client, &customer, Channel::Sms, P::Marketing).await;
    // Quiet hours for the hour from ten minutes from now, in Tokyo (no
    // summer time), whatever the hour is there.
    let soon = this_second() + Duration::minutes(10);
    let start = soon - Duration::seconds(i64::from(soon.second()));
    let local = start.with_timezone(&chrono_tz::Asia::Tokyo);
    let first_minute = (local.hour() * 60 + local.minute()) as i32;
    set_policy(&mut client, &customer, "Asia/Tokyo", (first_minute, (first_minute + 60) % 1440), 0).await;

    let send = |at| outbound(&customer, Channel::Sms, P::Marketing, at);
    client.record_interaction(send(start - Duration::seconds(1))).await.expect("the minute before");
    let err = client.record_interaction(send(start)).await.expect_err("the first quiet minute");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("quiet hours"), "{}", err.message());
    let err = client.record_interaction(send(start + Duration::seconds(3599))).await.expect_err("the last");
    assert_eq!(err.code(), Code::FailedPrecondition);
    client.record_interaction(send(start + Duration::minutes(60))).await.expect("the end minute is allowed");
    client
        .record_interaction(outbound(&customer, Channel::Sms, P::Service, start + Duration::minutes(30)))
        .await
        .expect("a service message in quiet hours");
    let d = evaluate(&mut client, &customer, Channel::Sms, P::Marketing, start).await;
    assert!(!d.allowed);
}

#[tokio::test]
async fn the_weekly_cap_is_enforced_at_the_boundary() {
    let (_server, mut client) = spawn_app().await;
    let customer = new_id();
    use pb::Purpose as P;
    grant(&mut client, &customer, Channel::Email, P::Marketing).await;
    grant(&mut client, &customer, Channel::Sms, P::Marketing).await;
    set_policy(&mut client, &customer, "UTC", (0, 0), 2).await;
    let t = this_second() - Duration::hours(1);
    let week = Duration::days(7);

    client.record_interaction(outbound(&customer, Channel::Email, P::Marketing, t - week)).await.expect("1st");
    client
        .record_interaction(outbound(&customer, Channel::Sms, P::Marketing, t - week + Duration::seconds(1)))
        .await
        .expect("2nd, any channel counts");
    // Not counted: inbound, or not marketing.
    let mut inbound = outbound(&customer, Channel::Email, P::Marketing, t - Duration::hours(2));
    inbound.direction = pb::Direction::Inbound as i32;
    client.record_interaction(inbound).await.expect("inbound");
    client
        .record_interaction(outbound(&customer, Channel::Email, P::Service, t - Duration::hours(2)))
        .await
        .expect("svc");

    let d = evaluate(&mut client, &customer, Channel::Email, P::Marketing, t - Duration::seconds(1)).await;
    assert!(!d.allowed, "both contacts fall in the 7 days up to t − 1 s");
    assert_eq!(d.reason, "frequency cap: 2 marketing contacts in the last 7 days (at most 2 a week)");
    let d = evaluate(&mut client, &customer, Channel::Email, P::Marketing, t).await;
    assert!(d.allowed, "the one exactly 7 days before t no longer counts: {}", d.reason);

    let err = client
        .record_interaction(outbound(&customer, Channel::Email, P::Marketing, t - Duration::seconds(1)))
        .await
        .expect_err("over the cap");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("frequency cap"), "{}", err.message());
    client.record_interaction(outbound(&customer, Channel::Email, P::Marketing, t)).await.expect("at the boundary");
    let err = client
        .record_interaction(outbound(&customer, Channel::Email, P::Marketing, t))
        .await
        .expect_err("that was the second of the week");
    assert_eq!(err.code(), Code::FailedPrecondition);
    client.record_interaction(outbound(&customer, Channel::Email, P::Service, t)).await.expect("service is not capped");
}

#[tokio::test]
async fn concurrent_outbound_contacts_cannot_exceed_the_cap() {
    let (_server, mut client) = spawn_app().await;
    let customer = new_id();
    grant(&mut client, &customer, Channel::Email, pb::Purpose::Marketing).await;
    set_policy(&mut client, &customer, "UTC", (0, 0), 3).await;
    let at = this_second();
    let sends = (0..10).map(|_| {
        let mut c = client.clone();
        let req = outbound(&customer, Channel::Email, pb::Purpose::Marketing, at);
        tokio::spawn(async move { c.record_interaction(req).await })
    });
    let results = futures::future::join_all(sends).await;
    let sent = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
    assert_eq!(sent, 3);
}

#[tokio::test]
async fn the_contact_policy_has_defaults_and_an_etag() {
    let (_server, mut client) = spawn_app().await;
    let customer = new_id();
    let policy = client
        .get_contact_policy(pb::GetContactPolicyRequest { customer_id: customer.clone() })
        .await
        .expect("get")
        .into_inner()
        .policy
        .expect("policy");
    assert_eq!(
        policy,
        pb::ContactPolicy {
            customer_id: customer.clone(),
            preferred_channel: 0,
            time_zone: "Europe/Madrid".into(),
            quiet_start_minute: 0,
            quiet_end_minute: 0,
            max_contacts_per_week: 0,
            etag: "0".into(),
        }
    );

    let update = |etag: &str, request_id: &str| pb::UpdateContactPolicyRequest {
        policy: Some(pb::ContactPolicy {
            customer_id: customer.clone(),
            preferred_channel: Channel::Sms as i32,
            time_zone: "America/Sao_Paulo".into(),
            quiet_start_minute: 1380,
            quiet_end_minute: 420,
            max_contacts_per_week: 4,
            etag: etag.to_owned(),
        }),
        request_id: request_id.to_owned(),
    };
    let first = client.update_contact_policy(update("0", "p-1")).await.expect("update").into_inner();
    assert_eq!(client.update_contact_policy(update("0", "p-1")).await.expect("retry").into_inner(), first);
    let p = first.policy.expect("policy");
    assert_eq!((p.etag.as_str(), p.time_zone.as_str(), p.max_contacts_per_week), ("1", "America/Sao_Paulo", 4));
    let err = client.update_contact_policy(update("0", "")).await.expect_err("stale etag");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let again = client.update_contact_policy(update("1", "")).await.expect("current etag").into_inner();
    assert_eq!(again.policy.map(|p| p.etag), Some("2".into()));
    let blind = client.update_contact_policy(update("", "")).await.expect("unconditional").into_inner();
    assert_eq!(blind.policy.map(|p| p.etag), Some("3".into()));
    let got = client
        .get_contact_policy(pb::GetContactPolicyRequest { customer_id: customer.clone() })
        .await
        .expect("get")
        .into_inner()
        .policy
        .expect("policy");
    assert_eq!((got.etag.as_str(), got.preferred_channel, got.quiet_start_minute), ("3", Channel::Sms as i32, 1380));

    let mut no_zone = update("", "");
    if let Some(p) = no_zone.policy.as_mut() {
        p.time_zone = String::new();
    }
    let p = client.update_contact_policy(no_zone).await.expect("default zone").into_inner().policy.expect("policy");
    assert_eq!(p.time_zone, "Europe/Madrid");
}

#[tokio::test]
async fn consent_and_policy_reject_invalid_and_hostile_input() {
    let (_server, mut client) = spawn_app().await;
    let bad = pb::RecordConsentRequest {
        consent: Some(pb::Consent {
            customer_id: "c".into(),
            channel: 0,
            purpose: 9,
            state: pb::ConsentState::Granted as i32,
            lawful_basis: 0,
            source: String::new(),
            expire_time: Some(ts(Utc::now() - Duration::days(1))),
            ..Default::default()
        }),
        request_id: "\u{0}".into(),
    };
    let err = client.record_consent(bad).await.expect_err("invalid");
    assert_eq!(
        fields(&err),
        [
            "consent.channel",
            "consent.customer_id",
            "consent.expire_time",
            "consent.lawful_basis",
            "consent.purpose",
            "consent.source",
            "request_id"
        ]
    );
    let mut withdrawal = consent(&new_id(), Channel::Email, pb::Purpose::Marketing, pb::ConsentState::Withdrawn);
    if let Some(c) = withdrawal.consent.as_mut() {
        c.lawful_basis = 0;
        c.expire_time = Some(ts(Utc::now() + Duration::days(1)));
        c.source = "s".repeat(257);
    }
    let err = client.record_consent(withdrawal).await.expect_err("a withdrawal does not expire");
    assert_eq!(fields(&err), ["consent.expire_time", "consent.source"]);
    let mut no_state = consent(&new_id(), Channel::Email, pb::Purpose::Marketing, pb::ConsentState::Unspecified);
    if let Some(c) = no_state.consent.as_mut() {
        c.lawful_basis = 17;
    }
    assert_eq!(
        fields(&client.record_consent(no_state).await.expect_err("")),
        ["consent.lawful_basis", "consent.state"]
    );
    assert_eq!(fields(&client.record_consent(pb::RecordConsentRequest::default()).await.expect_err("")), ["consent"]);

    let err = client
        .list_consents(pb::ListConsentsRequest { customer_id: String::new(), page_size: -1, page_token: "p1zz".into() })
        .await
        .expect_err("invalid");
    assert_eq!(fields(&err), ["customer_id", "page_size", "page_token"]);
    let forged = crm_runtime::page::encode_token("-5");
    let err = client
        .list_consents(pb::ListConsentsRequest { customer_id: new_id(), page_size: 0, page_token: forged })
        .await
        .expect_err("forged");
    assert_eq!(fields(&err), ["page_token"]);
    let empty = client
        .list_consents(pb::ListConsentsRequest { customer_id: new_id(), page_size: 100_000, page_token: String::new() })
        .await
        .expect("an unknown customer has no history")
        .into_inner();
    assert!(empty.consents.is_empty() && empty.next_page_token.is_empty());

    let err = client
        .get_contact_policy(pb::GetContactPolicyRequest { customer_id: "../etc/passwd".into() })
        .await
        .expect_err("invalid");
    assert_eq!(fields(&err), ["customer_id"]);

    let err = client
        .update_contact_policy(pb::UpdateContactPolicyRequest {
            policy: Some(pb::ContactPolicy {
                customer_id: String::new(),
                preferred_channel: 1234,
                time_zone: "Mars/Olympus_Mons".into(),
                quiet_start_minute: 1440,
                quiet_end_minute: -1,
                max_contacts_per_week: -5,
                etag: "e".repeat(200),
            }),
            request_id: String::new(),
        })
        .await
        .expect_err("invalid");
    assert_eq!(
        fields(&err),
        [
            "policy.customer_id",
            "policy.etag",
            "policy.max_contacts_per_week",
            "policy.preferred_channel",
            "policy.quiet_end_minute",
            "policy.quiet_start_minute",
            "policy.time_zone"
        ]
    );
    for zone in ["europe/madrid", "CET; DROP TABLE", &"A".repeat(10_000), "Europe/Madrid\n"] {
        let err = client
            .update_contact_policy(pb::UpdateContactPolicyRequest {
                policy: Some(pb::ContactPolicy {
                    customer_id: new_id(),
                    time_zone: zone.to_owned(),
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await
            .expect_err("unknown zone");
        assert_eq!(fields(&err), ["policy.time_zone"], "{zone:.20}");
    }
    let err = client.update_contact_policy(pb::UpdateContactPolicyRequest::default()).await.expect_err("empty");
    assert_eq!(fields(&err), ["policy"]);

    let err = client
        .evaluate_contact(pb::EvaluateContactRequest {
            customer_id: "x".into(),
            channel: 0,
            purpose: 55,
            at_time: Some(prost_types::Timestamp { seconds: 300_000_000_000, nanos: 0 }),
        })
        .await
        .expect_err("invalid");
    assert_eq!(fields(&err), ["at_time", "channel", "customer_id", "purpose"]);
    let err = client
        .evaluate_contact(pb::EvaluateContactRequest { customer_id: new_id(), channel: 3, ..Default::default() })
        .await
        .expect_err("no purpose");
    assert_eq!(fields(&err), ["purpose"]);
    assert!(feed_events(&mut client, 0).await.is_empty());
}
