//! Needs-based segments (DF-6) over generated populations: members are
//! exactly the customers whose facts satisfy the expression (checked
//! against an independent computation), follow the facts as they change,
//! merges, unmerges and erasures, are paginated and explained; and the
//! retention economics of a segment (DF-7).

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use crm_differentiation::domain::value::Policy;
use crm_proto::{
    common::v1::{Channel, FeedSequences, Money},
    differentiation::v1::{self as pb, ValueTier},
    identification::v1 as idpb,
    interaction::v1::InteractionType,
};
use crm_runtime::{error::field_violations, ids::new_id};
use sea_orm::{ConnectionTrait, Database};
use tonic::Code;

use crate::{
    App, at, caught_up, fit_active_eur_model,
    lifecycle::{merge, person},
    purchase, spawn_app_with,
    tiers::{contact, int, settings, text},
};

/// A small deterministic generator.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> i64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) % n) as i64
    }
}

async fn buy(app: &mut App, customer: &str, day: i64, margin: i64) -> i64 {
    app.interactions
        .record_purchase(purchase(customer, day, "EUR", margin + 500, 500))
        .await
        .expect("purchase")
        .into_inner()
        .sequence
}

async fn create(app: &mut App, name: &str, expression: &str) -> pb::Segment {
    app.values
        .create_segment(pb::CreateSegmentRequest {
            segment: Some(pb::Segment {
                display_name: name.into(),
                expression: expression.into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("create {expression}: {e:?}"))
        .into_inner()
        .segment
        .expect("segment")
}

/// Every member through pages of 4, each exactly once, and the total.
async fn members(app: &mut App, segment: &str, min: Option<FeedSequences>) -> (BTreeSet<String>, i64) {
    let mut out = BTreeSet::new();
    let mut token = String::new();
    let mut total = None;
    loop {
        let r = app
            .values
            .list_segment_members(pb::ListSegmentMembersRequest {
                segment_id: segment.to_owned(),
                page_size: 4,
                page_token: token,
                min_sequence: min,
            })
            .await
            .expect("members")
            .into_inner();
        assert!(r.customer_ids.len() <= 4);
        assert!(r.as_of_sequence.is_some());
        for id in r.customer_ids {
            assert!(out.insert(id), "no member twice");
        }
        total.get_or_insert(r.total_count);
        if r.next_page_token.is_empty() {
            return (out, total.unwrap_or_default());
        }
        token = r.next_page_token;
    }
}

async fn explain(app: &mut App, segment: &str, customer: &str) -> pb::ExplainSegmentMembershipResponse {
    app.values
        .explain_segment_membership(pb::ExplainSegmentMembershipRequest {
            segment_id: segment.to_owned(),
            customer_id: customer.to_owned(),
            min_sequence: None,
        })
        .await
        .expect("explain")
        .into_inner()
}

async fn tier(app: &mut App, customer: &str, seq: i64) -> i32 {
    app.values
        .get_customer_value(pb::GetCustomerValueRequest { customer_id: customer.to_owned(), min_sequence: at(seq) })
        .await
        .expect("value")
        .into_inner()
        .value
        .expect("value")
        .tier
}

/// What a generated customer did.
#[derive(Debug, Clone)]
struct Person {
    id: String,
    orders: i64,
    margin: i64,
    store_visits: i64,
    eco: bool,
    books: Option<i64>,
}

#[tokio::test]
async fn members_are_exactly_the_customers_whose_facts_satisfy_the_expression() {
    // Arrange: a generated population.
    let mut app = spawn_app_with(settings(Policy { most_valuable_share: 0.2, ..Policy::default() })).await;
    let mut rng = Lcg(7);
    let mut people = Vec::new();
    let mut last = 0;
    for _ in 0..24 {
        let p = Person {
            id: new_id(),
            orders: 1 + rng.below(3),
            margin: 500 + 500 * rng.below(8),
            store_visits: rng.below(4),
            eco: rng.below(2) == 0,
            books: (rng.below(3) == 0).then(|| 5_000 * (1 + rng.below(4))),
        };
        for day in 0..p.orders {
            last = last.max(buy(&mut app, &p.id, day * 7, p.margin).await);
        }
        for _ in 0..p.store_visits {
            last = last.max(contact(&mut app, &p.id, Channel::Store, InteractionType::Visit, &[]).await);
        }
        let mut statement = vec![];
        if p.eco {
            statement.push(("need", text("Eco")));
        }
        if let Some(b) = p.books {
            statement.push(("wallet.books", int(b)));
        }
        if !statement.is_empty() {
            last = last
                .max(contact(&mut app, &p.id, Channel::Email, InteractionType::PreferenceStatement, &statement).await);
        }
        people.push(p);
    }
    // Tiers under a policy stored now (boundaries over everyone).
    let current = app.values.get_tier_policy(pb::GetTierPolicyRequest {}).await.expect("policy").into_inner();
    app.values
        .update_tier_policy(pb::UpdateTierPolicyRequest { policy: current.policy, ..Default::default() })
        .await
        .expect("update policy");
    let mut tiers = BTreeMap::new();
    for p in &people {
        tiers.insert(p.id.clone(), tier(&mut app, &p.id, last).await);
    }
    assert!(tiers.values().any(|t| *t == ValueTier::MostValuable as i32));

    // Act.
    let green = create(&mut app, "Green and profitable", r#""eco" in needs && historical_margin >= 3000"#).await;
    let loyal = create(&mut app, "Loyal", r#"("store" in channels && channels.store >= 2) || order_count >= 3"#).await;
    let readers = create(&mut app, "Readers", "wallet.books > 10000").await;
    let vip = create(&mut app, "VIP or eco", r#"tier == "MOST_VALUABLE" || "eco" in needs"#).await;

    // Assert: members as computed independently from what was generated.
    let expect =
        |f: &dyn Fn(&Person) -> bool| people.iter().filter(|p| f(p)).map(|p| p.id.clone()).collect::<BTreeSet<_>>();
    let cases: [(&pb::Segment, BTreeSet<String>); 4] = [
        (&green, expect(&|p| p.eco && p.orders * p.margin >= 3000)),
        (&loyal, expect(&|p| p.store_visits >= 2 || p.orders >= 3)),
        (&readers, expect(&|p| p.books.is_some_and(|b| b > 10_000))),
        (&vip, expect(&|p| p.eco || tiers[&p.id] == ValueTier::MostValuable as i32)),
    ];
    for (segment, want) in &cases {
        assert!(!want.is_empty() && want.len() < people.len(), "{}: a discriminating case", segment.display_name);
        assert_eq!(segment.member_count, want.len() as i64, "{}", segment.display_name);
        let (got, total) = members(&mut app, &segment.id, at(last)).await;
        assert_eq!(&got, want, "{}", segment.display_name);
        assert_eq!(total, want.len() as i64);
    }
    let listed = app
        .values
        .list_segments(pb::ListSegmentsRequest { page_size: 3, page_token: String::new() })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.segments.len(), 3);
    let rest = app
        .values
        .list_segments(pb::ListSegmentsRequest { page_size: 3, page_token: listed.next_page_token })
        .await
        .expect("list")
        .into_inner();
    assert!(rest.next_page_token.is_empty());
    let all: Vec<String> = listed.segments.iter().chain(&rest.segments).map(|s| s.id.clone()).collect();
    assert_eq!(all, [green.id.clone(), loyal.id.clone(), readers.id.clone(), vip.id.clone()], "in creation order");
    let got = app.values.get_segment(pb::GetSegmentRequest { segment_id: readers.id.clone() }).await.expect("get");
    let got = got.into_inner().segment.expect("segment");
    assert_eq!((got.expression.as_str(), got.member_count), ("wallet.books > 10000", cases[2].1.len() as i64));

    // Explain a member and a non-member.
    let member = people.iter().find(|p| cases[0].1.contains(&p.id)).expect("a green member");
    let e = explain(&mut app, &green.id, &member.id).await;
    assert!(e.member);
    assert_eq!(
        e.facts,
        [format!("historical_margin = {}", member.orders * member.margin), r#"needs = ["eco"]"#.to_owned()]
    );
    let outsider = people.iter().find(|p| p.books.is_none()).expect("no wallet");
    let e = explain(&mut app, &readers.id, &outsider.id).await;
    assert!(!e.member);
    assert_eq!(e.facts[0], "wallet.books is not known");
    assert!(e.facts[1].starts_with("not a member: "), "{:?}", e.facts);

    // A purchase that changes the facts moves the customer in.
    let joining = people.iter().find(|p| !cases[1].1.contains(&p.id) && p.orders == 1).expect("a one-order customer");
    buy(&mut app, &joining.id, 30, 100).await;
    let seq = buy(&mut app, &joining.id, 31, 100).await;
    let (got, total) = members(&mut app, &loyal.id, at(seq)).await;
    assert!(got.contains(&joining.id));
    assert_eq!(total, cases[1].1.len() as i64 + 1);
    assert!(explain(&mut app, &loyal.id, &joining.id).await.member);

    // Moving the tier boundaries re-evaluates everyone.
    app.values
        .update_tier_policy(pb::UpdateTierPolicyRequest {
            policy: Some(crm_differentiation::conversions::policy_to_proto(&Policy {
                most_valuable_share: 0.6,
                ..Policy::default()
            })),
            ..Default::default()
        })
        .await
        .expect("update policy");
    let mut want = BTreeSet::new();
    for p in &people {
        if p.eco || tier(&mut app, &p.id, seq).await == ValueTier::MostValuable as i32 {
            want.insert(p.id.clone());
        }
    }
    assert!(want.len() > cases[3].1.len());
    assert_eq!(members(&mut app, &vip.id, at(seq)).await.0, want);

    // Deleting a segment removes its memberships.
    app.values.delete_segment(pb::DeleteSegmentRequest { segment_id: vip.id.clone() }).await.expect("delete");
    assert_eq!(member_rows(app.differentiation_store(), "segment_id", &vip.id).await, 0);
    let err = app.values.get_segment(pb::GetSegmentRequest { segment_id: vip.id.clone() }).await.expect_err("gone");
    assert_eq!(err.code(), Code::NotFound);
}

/// Rows of `segment_members` whose `column` is `value`.
async fn member_rows(url: &str, column: &str, value: &str) -> i64 {
    let db = Database::connect(url.to_owned()).await.expect("connect");
    let n = db
        .query_one_raw(crm_runtime::db::stmt(
            db.get_database_backend(),
            &format!("SELECT COUNT(*) FROM segment_members WHERE {column} = ?"),
            vec![value.into()],
        ))
        .await
        .expect("count")
        .expect("row")
        .try_get_by_index(0)
        .expect("n");
    let _ = db.close().await;
    n
}

#[tokio::test]
async fn invalid_segment_requests_are_refused_precisely() {
    let mut app = spawn_app_with(settings(Policy::default())).await;
    let fields = |e: &tonic::Status| field_violations(e).into_iter().map(|(f, _)| f).collect::<Vec<_>>();
    let req = |name: &str, expression: &str| pb::CreateSegmentRequest {
        segment: Some(pb::Segment { display_name: name.into(), expression: expression.into(), ..Default::default() }),
        request_id: String::new(),
    };
    // A syntax error carries the parser's message.
    let err = app.values.create_segment(req("Broken", "tier == ")).await.expect_err("syntax");
    assert_eq!(err.code(), Code::InvalidArgument);
    let v = field_violations(&err);
    assert_eq!(v[0].0, "segment.expression");
    assert!(v[0].1.starts_with("ERROR: <input>:1:"), "{}", v[0].1);
    let err = app.values.create_segment(req("Typo", "tierr == 'NORMAL'")).await.expect_err("unknown fact");
    assert!(field_violations(&err)[0].1.contains("'tierr'"));
    for (name, expression, field) in [
        ("", "true", "segment.display_name"),
        (&"n".repeat(257), "true", "segment.display_name"),
        ("bell\u{7}", "true", "segment.display_name"),
        ("n", "", "segment.expression"),
        ("n", &"true && ".repeat(600), "segment.expression"),
        ("n", "true\u{0}", "segment.expression"),
    ] {
        let err = app.values.create_segment(req(name, expression)).await.expect_err("invalid");
        assert_eq!(fields(&err), [field], "{name:?} {expression:?}");
    }
    let err = app.values.create_segment(pb::CreateSegmentRequest::default()).await.expect_err("missing");
    assert_eq!(fields(&err), ["segment"]);

    // Idempotent by request id; a key reused for another request is refused.
    let mut first = req("Eco", "'eco' in needs");
    first.request_id = "segment-eco".into();
    let a = app.values.create_segment(first.clone()).await.expect("create").into_inner().segment.expect("segment");
    let b = app.values.create_segment(first.clone()).await.expect("retry").into_inner().segment.expect("segment");
    assert_eq!(a, b);
    let listed = app.values.list_segments(pb::ListSegmentsRequest::default()).await.expect("list").into_inner();
    assert_eq!(listed.segments.len(), 1, "a retry creates nothing");
    let mut other = req("Other", "true");
    other.request_id = "segment-eco".into();
    let err = app.values.create_segment(other).await.expect_err("reused key");
    assert_eq!(fields(&err), ["request_id"]);

    // Ids, pages and unknown segments.
    let unknown = new_id();
    let err = app.values.get_segment(pb::GetSegmentRequest { segment_id: "x".into() }).await.expect_err("bad id");
    assert_eq!(fields(&err), ["segment_id"]);
    let err = app.values.get_segment(pb::GetSegmentRequest { segment_id: unknown.clone() }).await.expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
    let err =
        app.values.delete_segment(pb::DeleteSegmentRequest { segment_id: unknown.clone() }).await.expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
    let err = app
        .values
        .list_segment_members(pb::ListSegmentMembersRequest { segment_id: unknown.clone(), ..Default::default() })
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
    let err = app
        .values
        .list_segment_members(pb::ListSegmentMembersRequest {
            segment_id: "nope".into(),
            page_size: -1,
            page_token: "zz".into(),
            min_sequence: at(-1),
        })
        .await
        .expect_err("bad page");
    assert_eq!(fields(&err), ["segment_id", "page_size", "page_token"]);
    let err = app
        .values
        .list_segment_members(pb::ListSegmentMembersRequest {
            segment_id: a.id.clone(),
            page_token: crm_runtime::page::encode_token("12|x"),
            ..Default::default()
        })
        .await
        .expect_err("forged token");
    assert_eq!(fields(&err), ["page_token"]);
    let err = app
        .values
        .list_segments(pb::ListSegmentsRequest { page_size: -2, page_token: "p1zz".into() })
        .await
        .expect_err("bad page");
    assert_eq!(fields(&err), ["page_size", "page_token"]);
    let err = app
        .values
        .explain_segment_membership(pb::ExplainSegmentMembershipRequest {
            segment_id: "s".into(),
            customer_id: String::new(),
            min_sequence: None,
        })
        .await
        .expect_err("bad ids");
    assert_eq!(fields(&err), ["segment_id", "customer_id"]);
    let err = app
        .values
        .explain_segment_membership(pb::ExplainSegmentMembershipRequest {
            segment_id: unknown.clone(),
            customer_id: new_id(),
            min_sequence: None,
        })
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
    // A customer nobody knows is not a member, and says so.
    let e = explain(&mut app, &a.id, &new_id()).await;
    assert!(!e.member);
    assert_eq!(e.facts, ["needs = []", "not a member: nothing is known about this customer"]);
}

/// Poll until the members of `segment` are `want` (a re-key reaches this
/// projection through interaction's feed, whose position the caller of a
/// merge does not learn).
async fn until_members(app: &mut App, segment: &str, want: &[&String]) {
    let want: BTreeSet<String> = want.iter().map(|s| (*s).clone()).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (got, total) = members(app, segment, None).await;
        if got == want && total == want.len() as i64 {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "members {got:?}, expected {want:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn merges_unmerges_and_erasures_move_customers_between_segments() {
    // Arrange: two people in Lisboa with one order each.
    let mut app = spawn_app_with(settings(Policy::default())).await;
    let (a, _) = person(&mut app, &[("city", text("Lisboa"))]).await;
    let (b, _) = person(&mut app, &[("city", text("Lisboa"))]).await;
    let (d, _) = person(&mut app, &[("city", text("Lisboa"))]).await;
    let (c, seq_c) = person(&mut app, &[("city", text("Porto"))]).await;
    buy(&mut app, &a, 0, 1000).await;
    let seq = buy(&mut app, &b, 1, 1000).await;
    // Wait for both feeds.
    let both = Some(FeedSequences { interaction_sequence: seq, identification_sequence: seq_c });
    app.values
        .get_customer_value(pb::GetCustomerValueRequest { customer_id: b.clone(), min_sequence: both })
        .await
        .expect("value");
    let buyers = create(&mut app, "Buyers in Lisboa", r#"traits.city == "Lisboa" && order_count >= 1"#).await;
    let repeat = create(&mut app, "Repeat buyers", "order_count >= 2").await;
    let lisboa = create(&mut app, "Lisboa", r#"traits.city == "Lisboa""#).await;
    assert_eq!(buyers.member_count, 2);
    assert_eq!(lisboa.member_count, 3, "a profile without interactions is a member by its traits");
    let (in_lisboa, _) = members(&mut app, &lisboa.id, None).await;
    assert_eq!(in_lisboa, [a.clone(), b.clone(), d.clone()].into());
    assert!(!in_lisboa.contains(&c));

    // Merge: the merged-away id leaves at once, the survivor has both orders.
    let merged = merge(&mut app, &a, &b).await;
    let min = Some(FeedSequences { interaction_sequence: 0, identification_sequence: merged.sequence });
    assert_eq!(members(&mut app, &lisboa.id, min).await.0, [a.clone(), d.clone()].into());
    until_members(&mut app, &repeat.id, &[&a]).await;
    until_members(&mut app, &buyers.id, &[&a]).await;
    let e = explain(&mut app, &repeat.id, &a).await;
    assert_eq!((e.member, e.facts.as_slice()), (true, ["order_count = 2".to_owned()].as_slice()));

    // Unmerge: both are re-evaluated.
    app.profiles
        .unmerge_profiles(idpb::UnmergeProfilesRequest { merge_id: merged.merge_id, ..Default::default() })
        .await
        .expect("unmerge");
    until_members(&mut app, &repeat.id, &[]).await;
    until_members(&mut app, &buyers.id, &[&a, &b]).await;

    // Erasure: out of every segment, nothing left about them.
    let erased = app
        .profiles
        .erase_profile(idpb::EraseProfileRequest { profile_id: a.clone(), ..Default::default() })
        .await
        .expect("erase")
        .into_inner();
    let min = Some(FeedSequences { interaction_sequence: 0, identification_sequence: erased.sequence });
    assert_eq!(members(&mut app, &buyers.id, min).await, ([b.clone()].into(), 1));
    assert_eq!(members(&mut app, &lisboa.id, min).await, ([b.clone(), d.clone()].into(), 2));
    assert_eq!(member_rows(app.differentiation_store(), "customer_id", &a).await, 0);
}

#[tokio::test]
async fn the_retention_economics_of_a_segment_sum_those_of_its_members() {
    // Arrange: a generated purchase history over the last year, a fitted
    // value model, and a segment of repeat buyers.
    let mut app = spawn_app_with(settings(Policy::default())).await;
    let mut rng = Lcg(11);
    let today = chrono::Utc::now().timestamp() / 86_400;
    let mut last = 0;
    // Each customer buys every `gap` days from their first purchase while
    // alive: some lapse early, others are still buying.
    for _ in 0..100 {
        let id = new_id();
        let first = 200 + rng.below(160);
        let gap = 4 + rng.below(40);
        let life = if rng.below(2) == 0 { rng.below(60) } else { 400 };
        let spend = 800 + 200 * rng.below(10);
        let mut day = today - first;
        while day < today && day <= today - first + life {
            let mut req = purchase(&id, 0, "EUR", spend + 50 * rng.below(5), 600);
            req.occur_time = Some(prost_types::Timestamp { seconds: day * 86_400 + 43_200, nanos: 0 });
            last = last.max(app.interactions.record_purchase(req).await.expect("purchase").into_inner().sequence);
            day += gap;
        }
    }
    caught_up(&mut app, last).await;
    fit_active_eur_model(&mut app).await;
    let segment = create(&mut app, "Repeat buyers", "frequency >= 2").await;
    let (ids, total) = members(&mut app, &segment.id, at(last)).await;
    assert!(total > 1 && total < 100, "{total}");

    // Act.
    let eur = |minor_units| Some(Money { currency_code: "EUR".into(), minor_units });
    let request = |customer_id: String, segment_id: String| pb::EvaluateRetentionRequest {
        customer_id,
        segment_id,
        intervention_cost: eur(150),
        expected_save_rate: 0.3,
        min_sequence: at(last),
    };
    let whole = app.values.evaluate_retention(request(String::new(), segment.id.clone())).await.expect("segment");
    let whole = whole.into_inner();

    // Assert: the sums of the members' own economics.
    let (mut clv, mut at_risk, mut net, mut paying, mut p) = (0, 0, 0, 0, 0.0);
    for id in &ids {
        let e = app.values.evaluate_retention(request(id.clone(), String::new())).await.expect("customer").into_inner();
        assert_eq!(e.customer_count, 1);
        clv += e.clv.expect("clv").minor_units;
        at_risk += e.clv_at_risk.expect("at risk").minor_units;
        net += e.expected_net_value.expect("net").minor_units;
        paying += i64::from(e.recommend);
        p += e.probability_alive;
    }
    let minor = |m: Option<Money>| m.expect("money").minor_units;
    assert_eq!((whole.customer_count, whole.segment_member_count), (total, total));
    assert_eq!(minor(whole.clv), clv);
    assert_eq!(minor(whole.clv_at_risk), at_risk);
    assert_eq!(minor(whole.expected_net_value), net);
    assert_eq!(whole.recommended_count, paying);
    assert!((whole.probability_alive - p / total as f64).abs() < 1e-9);
    assert_eq!(whole.recommend, net > 0, "{}", whole.reason);
    assert!(whole.reason.contains(&format!("{total} members")), "{}", whole.reason);

    // A currency nobody is valued in, and an unknown segment.
    let mut usd = request(String::new(), segment.id.clone());
    usd.intervention_cost = Some(Money { currency_code: "USD".into(), minor_units: 1 });
    let err = app.values.evaluate_retention(usd).await.expect_err("no usd values");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = app.values.evaluate_retention(request(String::new(), new_id())).await.expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
}
