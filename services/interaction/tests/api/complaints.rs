//! Complaints and defections (IN-4).

use crate::*;

fn complaint(customer: &str, request_id: &str) -> pb::RecordComplaintRequest {
    pb::RecordComplaintRequest {
        complaint: Some(pb::Complaint {
            customer_id: customer.to_owned(),
            category: "billing".into(),
            description: "charged twice".into(),
            // Ignored: a complaint always opens.
            status: pb::ComplaintStatus::Resolved as i32,
            ..Default::default()
        }),
        channel: Channel::CallCentre as i32,
        request_id: request_id.to_owned(),
    }
}

fn set_status(id: &str, status: pb::ComplaintStatus, request_id: &str) -> pb::UpdateComplaintRequest {
    pb::UpdateComplaintRequest { complaint_id: id.to_owned(), status: status as i32, request_id: request_id.to_owned() }
}

fn defection(
    customer: &str,
    reason: pb::DefectionReason,
    manageable: bool,
    at: DateTime<Utc>,
) -> pb::RecordDefectionRequest {
    pb::RecordDefectionRequest {
        defection: Some(pb::Defection {
            customer_id: customer.to_owned(),
            reason: reason as i32,
            manageable,
            occur_time: Some(ts(at)),
            note: "left".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_complaint_opens_moves_on_and_is_resolved() {
    let (_server, mut client) = spawn_app().await;
    let customer = new_id();
    let opened = client.record_complaint(complaint(&customer, "c-1")).await.expect("open").into_inner();
    let retry = client.record_complaint(complaint(&customer, "c-1")).await.expect("retry").into_inner();
    assert_eq!(opened, retry);
    let c = opened.complaint.expect("complaint");
    assert_eq!(c.status, pb::ComplaintStatus::Open as i32);
    assert_eq!(c.resolve_time, None);
    let interaction = opened.interaction.expect("interaction");
    assert_eq!(interaction.r#type, pb::InteractionType::Complaint as i32);
    assert_eq!(interaction.channel, Channel::CallCentre as i32);
    assert_eq!(interaction.sequence, opened.sequence);

    let progress = client
        .update_complaint(set_status(&c.id, pb::ComplaintStatus::InProgress, "u-1"))
        .await
        .expect("in progress")
        .into_inner();
    let again = client
        .update_complaint(set_status(&c.id, pb::ComplaintStatus::InProgress, "u-1"))
        .await
        .expect("retried update")
        .into_inner();
    assert_eq!(progress, again);
    assert_eq!(progress.complaint.as_ref().map(|c| c.status), Some(pb::ComplaintStatus::InProgress as i32));

    let err = client
        .update_complaint(set_status(&c.id, pb::ComplaintStatus::InProgress, ""))
        .await
        .expect_err("already in progress");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = client.update_complaint(set_status(&c.id, pb::ComplaintStatus::Open, "")).await.expect_err("back");
    assert_eq!(err.code(), Code::FailedPrecondition);

    let resolved = client
        .update_complaint(set_status(&c.id, pb::ComplaintStatus::Resolved, ""))
        .await
        .expect("resolve")
        .into_inner();
    let done = resolved.complaint.expect("complaint");
    assert_eq!(done.status, pb::ComplaintStatus::Resolved as i32);
    assert_eq!(done.open_time, c.open_time);
    let open_time = c.open_time.as_ref().and_then(crm_runtime::time::from_timestamp).expect("open time");
    let resolve_time = done.resolve_time.as_ref().and_then(crm_runtime::time::from_timestamp).expect("resolve time");
    assert!(resolve_time >= open_time, "time to resolve is resolve_time − open_time");

    let err = client.update_complaint(set_status(&c.id, pb::ComplaintStatus::Rejected, "")).await.expect_err("final");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("resolved"), "{}", err.message());

    let events = feed_events(&mut client, 0).await;
    assert_eq!(events.iter().map(|e| e.sequence).collect::<Vec<_>>(), [1, 2, 3]);
    let statuses: Vec<(i32, bool)> = events
        .iter()
        .map(|e| match &e.kind {
            Some(Kind::ComplaintChanged(c)) => {
                (c.complaint.as_ref().map(|c| c.status).unwrap_or_default(), c.interaction.is_some())
            }
            other => panic!("expected a complaint change, got {other:?}"),
        })
        .collect();
    assert_eq!(
        statuses,
        [
            (pb::ComplaintStatus::Open as i32, true),
            (pb::ComplaintStatus::InProgress as i32, false),
            (pb::ComplaintStatus::Resolved as i32, false)
        ]
    );
    assert_eq!(resolved.sequence, 3);
}

#[tokio::test]
async fn an_open_complaint_can_be_rejected_at_once_and_unknown_ones_are_not_found() {
    let (_server, mut client) = spawn_app().await;
    let c = client.record_complaint(complaint(&new_id(), "")).await.expect("open").into_inner().complaint.expect("c");
    let r = client
        .update_complaint(set_status(&c.id, pb::ComplaintStatus::Rejected, ""))
        .await
        .expect("reject")
        .into_inner();
    let rejected = r.complaint.expect("complaint");
    assert_eq!(rejected.status, pb::ComplaintStatus::Rejected as i32);
    assert_eq!(rejected.resolve_time, None, "rejected is not resolved");

    let err =
        client.update_complaint(set_status(&new_id(), pb::ComplaintStatus::Resolved, "")).await.expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn complaints_reject_invalid_input() {
    let (_server, mut client) = spawn_app().await;
    let mut bad = complaint("x", &"r".repeat(129));
    bad.channel = 0;
    if let Some(c) = bad.complaint.as_mut() {
        c.category = String::new();
        c.description = "d".repeat(4097);
        c.open_time = Some(prost_types::Timestamp { seconds: -1, nanos: -1 });
    }
    let err = client.record_complaint(bad).await.expect_err("invalid");
    assert_eq!(
        fields(&err),
        [
            "channel",
            "complaint.category",
            "complaint.customer_id",
            "complaint.description",
            "complaint.open_time",
            "request_id"
        ]
    );
    let mut long = complaint(&new_id(), "");
    if let Some(c) = long.complaint.as_mut() {
        c.category = "<script>alert(1)</script>".repeat(4);
    }
    assert_eq!(fields(&client.record_complaint(long).await.expect_err("long")), ["complaint.category"]);
    let err = client
        .record_complaint(pb::RecordComplaintRequest { channel: 42, ..Default::default() })
        .await
        .expect_err("no complaint");
    assert_eq!(fields(&err), ["channel", "complaint"]);
    let err = client
        .update_complaint(pb::UpdateComplaintRequest {
            complaint_id: "1".into(),
            status: 77,
            request_id: "a\u{1}".into(),
        })
        .await
        .expect_err("invalid update");
    assert_eq!(fields(&err), ["complaint_id", "request_id", "status"]);
    let err = client.update_complaint(set_status(&new_id(), pb::ComplaintStatus::Unspecified, "")).await.expect_err("");
    assert_eq!(fields(&err), ["status"]);
    assert!(feed_events(&mut client, 0).await.is_empty());
}

#[tokio::test]
async fn defections_are_recorded_once_with_their_interaction() {
    let (_server, mut client) = spawn_app().await;
    let customer = new_id();
    let mut req = defection(&customer, pb::DefectionReason::Competitor, true, utc(2026, 1, 10, 0, 0, 0));
    req.request_id = "d-1".into();
    req.channel = Channel::Phone as i32;
    let first = client.record_defection(req.clone()).await.expect("record").into_inner();
    assert_eq!(client.record_defection(req).await.expect("retry").into_inner(), first);
    let d = first.defection.expect("defection");
    assert!(d.manageable);
    let interaction = first.interaction.expect("interaction");
    assert_eq!(interaction.r#type, pb::InteractionType::Defection as i32);
    assert_eq!(interaction.channel, Channel::Phone as i32);
    assert_eq!(interaction.occur_time, d.occur_time);
    let events = feed_events(&mut client, 0).await;
    assert_eq!(events.len(), 1);
    assert!(matches!(&events[0].kind, Some(Kind::DefectionRecorded(e)) if e.defection.as_ref() == Some(&d)));
}

#[tokio::test]
async fn defection_causes_over_a_period_most_frequent_first() {
    let (_server, mut client) = spawn_app().await;
    use pb::DefectionReason as R;
    let january = [
        (R::Price, true, 3),
        (R::Service, true, 5),
        (R::Moved, false, 7),
        (R::Price, false, 20),
        (R::Service, true, 31),
    ];
    for (reason, manageable, day) in january {
        client
            .record_defection(defection(&new_id(), reason, manageable, utc(2026, 1, day, 12, 0, 0)))
            .await
            .expect("d");
    }
    client.record_defection(defection(&new_id(), R::Competitor, true, utc(2026, 2, 1, 0, 0, 0))).await.expect("d");
    client.record_defection(defection(&new_id(), R::Other, false, utc(2025, 12, 31, 23, 0, 0))).await.expect("d");

    let r = client
        .analyze_defection_causes(pb::AnalyzeDefectionCausesRequest {
            period: Some(Interval {
                start_time: Some(ts(utc(2026, 1, 1, 0, 0, 0))),
                end_time: Some(ts(utc(2026, 2, 1, 0, 0, 0))),
            }),
        })
        .await
        .expect("january")
        .into_inner();
    assert_eq!(r.total, 5);
    let causes: Vec<_> = r.causes.iter().map(|c| (c.reason, c.count, c.manageable_count, c.share)).collect();
    assert_eq!(
        causes,
        [(R::Price as i32, 2, 1, 0.4), (R::Service as i32, 2, 2, 0.4), (R::Moved as i32, 1, 0, 0.2)],
        "ties by reason"
    );

    let all = client
        .analyze_defection_causes(pb::AnalyzeDefectionCausesRequest::default())
        .await
        .expect("all time")
        .into_inner();
    assert_eq!(all.total, 7);
    assert_eq!(
        all.causes.iter().map(|c| c.reason).collect::<Vec<_>>(),
        [R::Price as i32, R::Service as i32, R::Competitor as i32, R::Moved as i32, R::Other as i32]
    );
    let from_february = client
        .analyze_defection_causes(pb::AnalyzeDefectionCausesRequest {
            period: Some(Interval { start_time: Some(ts(utc(2026, 2, 1, 0, 0, 0))), end_time: None }),
        })
        .await
        .expect("open end")
        .into_inner();
    assert_eq!(
        from_february.causes.iter().map(|c| (c.reason, c.share)).collect::<Vec<_>>(),
        [(R::Competitor as i32, 1.0)]
    );
    let none = client
        .analyze_defection_causes(pb::AnalyzeDefectionCausesRequest {
            period: Some(Interval { start_time: None, end_time: Some(ts(utc(2000, 1, 1, 0, 0, 0))) }),
        })
        .await
        .expect("nothing")
        .into_inner();
    assert_eq!((none.total, none.causes.len()), (0, 0));
}

#[tokio::test]
async fn defections_reject_invalid_input() {
    let (_server, mut client) = spawn_app().await;
    let mut bad = defection("", pb::DefectionReason::Unspecified, false, Utc::now() + chrono::Duration::days(30));
    if let Some(d) = bad.defection.as_mut() {
        d.note = "n".repeat(5000);
    }
    bad.channel = -3;
    let err = client.record_defection(bad).await.expect_err("invalid");
    assert_eq!(
        fields(&err),
        ["channel", "defection.customer_id", "defection.note", "defection.occur_time", "defection.reason"]
    );
    let mut unknown = defection(&new_id(), pb::DefectionReason::Price, false, utc(2026, 1, 1, 0, 0, 0));
    if let Some(d) = unknown.defection.as_mut() {
        d.reason = 12;
    }
    assert_eq!(fields(&client.record_defection(unknown).await.expect_err("reason")), ["defection.reason"]);
    let err = client.record_defection(pb::RecordDefectionRequest::default()).await.expect_err("empty");
    assert_eq!(fields(&err), ["defection"]);
    let err = client
        .analyze_defection_causes(pb::AnalyzeDefectionCausesRequest {
            period: Some(Interval {
                start_time: Some(ts(utc(2026, 2, 1, 0, 0, 0))),
                end_time: Some(prost_types::Timestamp { seconds: 0, nanos: -7 }),
            }),
        })
        .await
        .expect_err("bad end");
    assert_eq!(fields(&err), ["period.end_time"]);
    let err = client
        .analyze_defection_causes(pb::AnalyzeDefectionCausesRequest {
            period: Some(Interval {
                start_time: Some(ts(utc(2026, 2, 1, 0, 0, 0))),
                end_time: Some(ts(utc(2026, 1, 1, 0, 0, 0))),
            }),
        })
        .await
        .expect_err("backwards");
    assert_eq!(fields(&err), ["period"]);
}
