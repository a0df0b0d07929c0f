//! Matching's candidates read against a real store (SQLite, or PostgreSQL
//! when `CRM_TEST_DATABASE_URL` is set): the two stores run different
//! statements for it, and both must find the same people.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crm_identification::{
    domain::matching::{self, MAX_CANDIDATES, Record},
    matcher::{self, MAX_BLOCK},
    migration::Migrator,
    store::status,
};
use crm_runtime::{db::Store, testing::TestDb};
use sea_orm::ConnectionTrait;

/// Store profile `id` (with `status`, merged into `into`) with `record`
/// kept for it, under blocking key `key`.
async fn profile(store: &Store, id: &str, status: i32, into: Option<&str>, record: &Record, key: &str) {
    let c = store.conn();
    let statements = [
        store.stmt(
            "INSERT INTO profiles (id, status, lifecycle_stage, target_group, created_at_us, updated_at_us, version, \
             body, merged_into) VALUES (?, ?, 0, '', 0, 0, 1, ?, ?)",
            vec![id.into(), status.into(), Vec::<u8>::new().into(), into.map(str::to_owned).into()],
        ),
        store.stmt(
            "INSERT INTO profile_records (profile_id, fingerprint, seen_at_us, record) VALUES (?, ?, 0, ?)",
            vec![id.into(), record.fingerprint().into(), record.to_bytes().into()],
        ),
    ];
    for s in statements {
        c.execute_raw(s).await.expect("insert");
    }
    self::key(store, id, key).await;
}

/// File profile `id` under blocking key `key` too.
async fn key(store: &Store, id: &str, key: &str) {
    let insert = store.stmt("INSERT INTO blocking_keys (key, profile_id) VALUES (?, ?)", vec![key.into(), id.into()]);
    store.conn().execute_raw(insert).await.expect("insert");
}

/// A touchpoint's candidates are the live profiles sharing one of its
/// blocking keys, each with every record kept for it and for the profiles
/// merged into it; a key shared by more than `MAX_BLOCK` profiles is too
/// common to tell anyone apart and is skipped, one shared by exactly
/// `MAX_BLOCK` is not. Of more than `MAX_CANDIDATES`, those sharing the most
/// keys are kept, the lowest ids first among equals.
#[tokio::test]
async fn candidates_share_a_key_whose_block_is_not_too_large() {
    let db = TestDb::new("identification").await;
    let store = Store::connect(&db.url, 4).await.expect("connect");
    store.migrate::<Migrator>().await.expect("migrate");
    let touch = Record {
        given_name: "celia".into(),
        family_name: "dominguez".into(),
        birth_date: Some((1989, 4, 9)),
        street: "calle mayor 40".into(),
        postcode: "12005".into(),
        locality: "castellon".into(),
        ..Default::default()
    };
    let keys = matching::blocking_keys(&touch);
    assert!(keys.len() >= 4, "{keys:?}");
    let (small, edge, crowd, second) = (&keys[0], &keys[1], &keys[2], &keys[3]);
    let other = |i: usize| Record { given_name: format!("name{i}"), ..touch.clone() };

    // `near` and `merged` share two keys, every other candidate one.
    profile(&store, "near", status::ACTIVE, None, &other(0), small).await;
    key(&store, "near", second).await;
    // Merged into `near`: its record counts for `near`.
    profile(&store, "merged", status::MERGED, Some("near"), &other(1), small).await;
    key(&store, "merged", second).await;
    profile(&store, "stranger", status::ACTIVE, None, &other(2), "xx:no-key-of-the-touchpoint").await;
    for i in 0..MAX_BLOCK as usize {
        profile(&store, &format!("edge-{i:03}"), status::ACTIVE, None, &other(i), edge).await;
    }
    for i in 0..=MAX_BLOCK as usize {
        profile(&store, &format!("crowd-{i:03}"), status::ACTIVE, None, &other(i), crowd).await;
    }

    let found = matcher::candidates(store.conn(), &touch).await.expect("candidates");
    let ids: Vec<&str> = found.iter().map(|c| c.profile_id.as_str()).collect();
    // `near` and `merged` take two places; the edge block (not skipped)
    // fills the rest from its lowest ids; the crowd's ids, lower still,
    // are nowhere (skipped).
    let mut expected: Vec<String> = (0..MAX_CANDIDATES - 2).map(|i| format!("edge-{i:03}")).collect();
    expected.push("near".into());
    assert_eq!(ids, expected.iter().map(String::as_str).collect::<Vec<_>>());
    let near = found.iter().find(|c| c.profile_id == "near").expect("near");
    let mut given: Vec<&str> = near.records.iter().map(|r| r.given_name.as_str()).collect();
    given.sort_unstable();
    assert_eq!(given, ["name0", "name1"]);
    assert!(found.iter().filter(|c| c.profile_id != "near").all(|c| c.records.len() == 1));
}
