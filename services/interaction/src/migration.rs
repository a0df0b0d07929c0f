//! The interaction store's schema. Migrations are append-only: a landed
//! migration may already be applied somewhere, so a change is a new one.

use crm_proto::interaction::v1 as pb;
use prost::Message;
use sea_orm_migration::{
    prelude::*,
    sea_orm::{ConnectionTrait, DbErr},
};

/// Every migration of the interaction store, in order.
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(crm_runtime::migration::RuntimeTables),
            Box::new(InteractionTables),
            Box::new(FactTables),
            Box::new(LifecycleTables),
            Box::new(crm_runtime::migration::EventLogTraceContext),
            Box::new(crm_runtime::migration::EventLogRowidSequence),
        ]
    }
}

/// Interactions, orders and order lines.
pub struct InteractionTables;

impl MigrationName for InteractionTables {
    fn name(&self) -> &str {
        "m20261122_000001_interactions"
    }
}

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for InteractionTables {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("interactions")
                    .col(ColumnDef::new("id").string().not_null().primary_key())
                    .col(ColumnDef::new("customer_id").string().not_null())
                    .col(ColumnDef::new("channel").integer().not_null())
                    .col(ColumnDef::new("direction").integer().not_null())
                    .col(ColumnDef::new("kind").integer().not_null())
                    .col(ColumnDef::new("occurred_at_us").big_integer().not_null())
                    .col(ColumnDef::new("thread_id").string().not_null())
                    .col(ColumnDef::new("order_id").string().null())
                    .col(ColumnDef::new("sequence").big_integer().not_null())
                    .col(ColumnDef::new("body").blob().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("interactions_timeline")
                    .table("interactions")
                    .col("customer_id")
                    .col("occurred_at_us")
                    .col("id")
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("orders")
                    .col(ColumnDef::new("id").string().not_null().primary_key())
                    .col(ColumnDef::new("customer_id").string().not_null())
                    .col(ColumnDef::new("order_number").string().not_null())
                    .col(ColumnDef::new("currency_code").string().not_null())
                    .col(ColumnDef::new("revenue_minor").big_integer().not_null())
                    .col(ColumnDef::new("cost_minor").big_integer().not_null())
                    .col(ColumnDef::new("occurred_at_us").big_integer().not_null())
                    .col(ColumnDef::new("body").blob().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(Index::create().name("orders_customer").table("orders").col("customer_id").to_owned())
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("order_lines")
                    .col(ColumnDef::new("order_id").string().not_null())
                    .col(ColumnDef::new("line_no").integer().not_null())
                    .col(ColumnDef::new("sku").string().not_null())
                    .col(ColumnDef::new("category").string().not_null())
                    .col(ColumnDef::new("quantity").big_integer().not_null())
                    .col(ColumnDef::new("unit_price_minor").big_integer().not_null())
                    .col(ColumnDef::new("unit_cost_minor").big_integer().not_null())
                    .primary_key(Index::create().col("order_id").col("line_no"))
                    .foreign_key(
                        ForeignKey::create()
                            .from("order_lines", "order_id")
                            .to("orders", "id")
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for t in ["order_lines", "orders", "interactions"] {
            manager.drop_table(Table::drop().table(t).if_exists().to_owned()).await?;
        }
        Ok(())
    }
}

/// Returns, survey responses and ratings, complaints, defections, consent
/// history and contact policies; and the purpose of each interaction as a
/// column, for the weekly contact cap.
pub struct FactTables;

impl MigrationName for FactTables {
    fn name(&self) -> &str {
        "m20261123_000001_facts"
    }
}

/// Interactions whose purpose is copied from `body` per round trip.
const BACKFILL_BATCH: i64 = 1000;

/// Copy the purpose of every outbound interaction recorded before the
/// column existed from its stored message into the column.
async fn backfill_purpose(manager: &SchemaManager<'_>) -> Result<(), DbErr> {
    let db = manager.get_connection();
    let backend = db.get_database_backend();
    let mut after = String::new();
    loop {
        let rows = db
            .query_all_raw(crm_runtime::db::stmt(
                backend,
                "SELECT id, body FROM interactions WHERE direction = ? AND id > ? ORDER BY id LIMIT ?",
                vec![(pb::Direction::Outbound as i32).into(), after.clone().into(), BACKFILL_BATCH.into()],
            ))
            .await?;
        let Some(last) = rows.last() else { break };
        after = last.try_get_by_index(0)?;
        for row in &rows {
            let id: String = row.try_get_by_index(0)?;
            let body: Vec<u8> = row.try_get_by_index(1)?;
            let purpose = pb::Interaction::decode(body.as_slice())
                .map_err(|e| DbErr::Custom(format!("interaction {id} undecodable: {e}")))?
                .purpose;
            if purpose != 0 {
                db.execute_raw(crm_runtime::db::stmt(
                    backend,
                    "UPDATE interactions SET purpose = ? WHERE id = ?",
                    vec![purpose.into(), id.into()],
                ))
                .await?;
            }
        }
    }
    Ok(())
}

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for FactTables {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table("interactions")
                    .add_column(ColumnDef::new("purpose").integer().not_null().default(0))
                    .to_owned(),
            )
            .await?;
        backfill_purpose(manager).await?;
        manager
            .create_index(
                Index::create()
                    .name("interactions_contacts")
                    .table("interactions")
                    .col("customer_id")
                    .col("direction")
                    .col("purpose")
                    .col("occurred_at_us")
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table("order_returns")
                    .col(ColumnDef::new("id").string().not_null().primary_key())
                    .col(ColumnDef::new("order_id").string().not_null())
                    .col(ColumnDef::new("customer_id").string().not_null())
                    .col(ColumnDef::new("occurred_at_us").big_integer().not_null())
                    .col(ColumnDef::new("sequence").big_integer().not_null())
                    .col(ColumnDef::new("body").blob().not_null())
                    .foreign_key(
                        ForeignKey::create()
                            .from("order_returns", "order_id")
                            .to("orders", "id")
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        index(manager, "order_returns_order", "order_returns", &["order_id", "sequence"]).await?;
        index(manager, "order_returns_customer", "order_returns", &["customer_id"]).await?;
        manager
            .create_table(
                Table::create()
                    .table("order_return_lines")
                    .col(ColumnDef::new("return_id").string().not_null())
                    .col(ColumnDef::new("line_no").integer().not_null())
                    .col(ColumnDef::new("order_id").string().not_null())
                    .col(ColumnDef::new("order_line_no").integer().not_null())
                    .col(ColumnDef::new("sku").string().not_null())
                    .col(ColumnDef::new("quantity").big_integer().not_null())
                    .primary_key(Index::create().col("return_id").col("line_no"))
                    .foreign_key(
                        ForeignKey::create()
                            .from("order_return_lines", "return_id")
                            .to("order_returns", "id")
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        index(manager, "order_return_lines_order", "order_return_lines", &["order_id", "order_line_no"]).await?;

        manager
            .create_table(
                Table::create()
                    .table("survey_responses")
                    .col(ColumnDef::new("id").string().not_null().primary_key())
                    .col(ColumnDef::new("customer_id").string().not_null())
                    .col(ColumnDef::new("survey_id").string().not_null())
                    .col(ColumnDef::new("segment").string().not_null())
                    .col(ColumnDef::new("occurred_at_us").big_integer().not_null())
                    .col(ColumnDef::new("occurred_day").big_integer().not_null())
                    .col(ColumnDef::new("nps").integer().not_null())
                    .col(ColumnDef::new("csat").integer().not_null())
                    .col(ColumnDef::new("sequence").big_integer().not_null())
                    .col(ColumnDef::new("body").blob().not_null())
                    .to_owned(),
            )
            .await?;
        index(manager, "survey_responses_time", "survey_responses", &["occurred_at_us"]).await?;
        index(manager, "survey_responses_segment", "survey_responses", &["segment", "occurred_at_us"]).await?;
        index(manager, "survey_responses_customer", "survey_responses", &["customer_id", "occurred_at_us"]).await?;
        manager
            .create_table(
                Table::create()
                    .table("survey_ratings")
                    .col(ColumnDef::new("response_id").string().not_null())
                    .col(ColumnDef::new("idx").integer().not_null())
                    .col(ColumnDef::new("attribute").string().not_null())
                    .col(ColumnDef::new("importance").double().not_null())
                    .col(ColumnDef::new("our_performance").double().not_null())
                    .col(ColumnDef::new("competitor_performance").double().not_null())
                    .primary_key(Index::create().col("response_id").col("idx"))
                    .foreign_key(
                        ForeignKey::create()
                            .from("survey_ratings", "response_id")
                            .to("survey_responses", "id")
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table("complaints")
                    .col(ColumnDef::new("id").string().not_null().primary_key())
                    .col(ColumnDef::new("customer_id").string().not_null())
                    .col(ColumnDef::new("category").string().not_null())
                    .col(ColumnDef::new("status").integer().not_null())
                    .col(ColumnDef::new("opened_at_us").big_integer().not_null())
                    .col(ColumnDef::new("resolved_at_us").big_integer().null())
                    .col(ColumnDef::new("sequence").big_integer().not_null())
                    .col(ColumnDef::new("body").blob().not_null())
                    .to_owned(),
            )
            .await?;
        index(manager, "complaints_customer", "complaints", &["customer_id"]).await?;
        manager
            .create_table(
                Table::create()
                    .table("defections")
                    .col(ColumnDef::new("id").string().not_null().primary_key())
                    .col(ColumnDef::new("customer_id").string().not_null())
                    .col(ColumnDef::new("reason").integer().not_null())
                    .col(ColumnDef::new("manageable").boolean().not_null())
                    .col(ColumnDef::new("occurred_at_us").big_integer().not_null())
                    .col(ColumnDef::new("sequence").big_integer().not_null())
                    .col(ColumnDef::new("body").blob().not_null())
                    .to_owned(),
            )
            .await?;
        index(manager, "defections_time", "defections", &["occurred_at_us"]).await?;
        index(manager, "defections_customer", "defections", &["customer_id"]).await?;

        manager
            .create_table(
                Table::create()
                    .table("consents")
                    .col(ColumnDef::new("id").string().not_null().primary_key())
                    .col(ColumnDef::new("customer_id").string().not_null())
                    .col(ColumnDef::new("channel").integer().not_null())
                    .col(ColumnDef::new("purpose").integer().not_null())
                    .col(ColumnDef::new("state").integer().not_null())
                    .col(ColumnDef::new("recorded_at_us").big_integer().not_null())
                    .col(ColumnDef::new("expires_at_us").big_integer().null())
                    .col(ColumnDef::new("sequence").big_integer().not_null())
                    .col(ColumnDef::new("body").blob().not_null())
                    .to_owned(),
            )
            .await?;
        index(manager, "consents_history", "consents", &["customer_id", "sequence"]).await?;
        index(manager, "consents_latest", "consents", &["customer_id", "channel", "purpose", "sequence"]).await?;
        manager
            .create_table(
                Table::create()
                    .table("contact_policies")
                    .col(ColumnDef::new("customer_id").string().not_null().primary_key())
                    .col(ColumnDef::new("version").big_integer().not_null())
                    .col(ColumnDef::new("updated_at_us").big_integer().not_null())
                    .col(ColumnDef::new("body").blob().not_null())
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for t in [
            "contact_policies",
            "consents",
            "defections",
            "complaints",
            "survey_ratings",
            "survey_responses",
            "order_return_lines",
            "order_returns",
        ] {
            manager.drop_table(Table::drop().table(t).if_exists().to_owned()).await?;
        }
        manager.drop_index(Index::drop().name("interactions_contacts").table("interactions").to_owned()).await?;
        manager.alter_table(Table::alter().table("interactions").drop_column("purpose").to_owned()).await?;
        Ok(())
    }
}

/// What following the identification feed keeps (IN-7): the merges in
/// force with the merged customer's contact policy set aside, the ledger of
/// the facts each merge moved, and the non-identifying record of erased
/// consent.
pub struct LifecycleTables;

impl MigrationName for LifecycleTables {
    fn name(&self) -> &str {
        "m20261124_000001_lifecycle"
    }
}

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for LifecycleTables {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("customer_merges")
                    .col(ColumnDef::new("merge_id").string().not_null().primary_key())
                    .col(ColumnDef::new("surviving_id").string().not_null())
                    .col(ColumnDef::new("merged_id").string().not_null())
                    .col(ColumnDef::new("applied_at_us").big_integer().not_null())
                    // The merged customer's own contact policy, set aside.
                    .col(ColumnDef::new("policy_version").big_integer().null())
                    .col(ColumnDef::new("policy_updated_at_us").big_integer().null())
                    .col(ColumnDef::new("policy_body").blob().null())
                    // The version the survivor's policy got when it took the
                    // merged one's (it had none).
                    .col(ColumnDef::new("adopted_version").big_integer().null())
                    .to_owned(),
            )
            .await?;
        index(manager, "customer_merges_merged", "customer_merges", &["merged_id"]).await?;
        index(manager, "customer_merges_surviving", "customer_merges", &["surviving_id"]).await?;
        manager
            .create_table(
                Table::create()
                    .table("merge_facts")
                    .col(ColumnDef::new("merge_id").string().not_null())
                    .col(ColumnDef::new("fact_table").string().not_null())
                    .col(ColumnDef::new("fact_id").string().not_null())
                    .primary_key(Index::create().col("merge_id").col("fact_table").col("fact_id"))
                    .to_owned(),
            )
            .await?;
        index(manager, "merge_facts_fact", "merge_facts", &["fact_table", "fact_id"]).await?;
        manager
            .create_table(
                Table::create()
                    .table("consent_archive")
                    .col(ColumnDef::new("id").string().not_null().primary_key())
                    .col(ColumnDef::new("channel").integer().not_null())
                    .col(ColumnDef::new("purpose").integer().not_null())
                    .col(ColumnDef::new("state").integer().not_null())
                    .col(ColumnDef::new("lawful_basis").integer().not_null())
                    .col(ColumnDef::new("recorded_day").big_integer().not_null())
                    .col(ColumnDef::new("expires_day").big_integer().null())
                    .col(ColumnDef::new("erased_day").big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for t in ["consent_archive", "merge_facts", "customer_merges"] {
            manager.drop_table(Table::drop().table(t).if_exists().to_owned()).await?;
        }
        Ok(())
    }
}

async fn index(manager: &SchemaManager<'_>, name: &str, table: &str, cols: &[&str]) -> Result<(), DbErr> {
    let mut i = Index::create();
    i.name(name).table(table.to_owned());
    for c in cols {
        i.col((*c).to_owned());
    }
    manager.create_index(i.to_owned()).await
}
