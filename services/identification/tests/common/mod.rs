//! What the gRPC tests and the quality benchmark read straight from a test
//! server's store.

use crm_identification::domain::matching::MatchModel;
use crm_runtime::testing::TestServer;

/// A matcher version as stored.
pub struct StoredVersion {
    /// Its number.
    pub version: i64,
    /// Kept records it was fitted on (-1: not recorded).
    pub record_count: i64,
    /// Whether its fit converged.
    pub converged: bool,
    /// Whether resolves use it.
    pub active: bool,
    /// The model.
    pub model: MatchModel,
}

/// Every matcher version in the store behind `server`, oldest first.
pub async fn matcher_versions(server: &TestServer) -> Vec<StoredVersion> {
    let store = crm_runtime::db::Store::connect(&server.db().url, 1).await.unwrap();
    let rows = sea_orm::ConnectionTrait::query_all_raw(
        store.conn(),
        store.stmt(
            "SELECT version, record_count, converged, active, model FROM matcher_models ORDER BY version",
            vec![],
        ),
    )
    .await
    .unwrap();
    rows.iter()
        .map(|row| {
            let bytes: Vec<u8> = row.try_get_by_index(4).unwrap();
            StoredVersion {
                version: row.try_get_by_index(0).unwrap(),
                record_count: row.try_get_by_index::<Option<i64>>(1).unwrap().unwrap_or(-1),
                converged: row.try_get_by_index(2).unwrap(),
                active: row.try_get_by_index(3).unwrap(),
                model: MatchModel::from_bytes(&bytes).unwrap(),
            }
        })
        .collect()
}
