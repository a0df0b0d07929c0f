//! The differentiation store's schema: projections of the feeds.

use sea_orm_migration::{prelude::*, sea_orm::DbErr};

/// Every migration of the differentiation store, in order.
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(crm_runtime::migration::RuntimeTables), Box::new(PurchaseSummaryTables)]
    }
}

/// Per-customer purchase summary, purchase days and per-currency totals.
pub struct PurchaseSummaryTables;

impl MigrationName for PurchaseSummaryTables {
    fn name(&self) -> &str {
        "m20261122_000001_purchase_summary"
    }
}

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for PurchaseSummaryTables {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("customer_summaries")
                    .col(ColumnDef::new("customer_id").string().not_null().primary_key())
                    .col(ColumnDef::new("interaction_count").big_integer().not_null())
                    .col(ColumnDef::new("order_count").big_integer().not_null())
                    .col(ColumnDef::new("transaction_count").big_integer().not_null())
                    .col(ColumnDef::new("first_purchase_us").big_integer().null())
                    .col(ColumnDef::new("last_purchase_us").big_integer().null())
                    .col(ColumnDef::new("updated_at_us").big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("purchase_days")
                    .col(ColumnDef::new("customer_id").string().not_null())
                    .col(ColumnDef::new("day").big_integer().not_null())
                    .primary_key(Index::create().col("customer_id").col("day"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("customer_totals")
                    .col(ColumnDef::new("customer_id").string().not_null())
                    .col(ColumnDef::new("currency_code").string().not_null())
                    .col(ColumnDef::new("revenue_minor").big_integer().not_null())
                    .col(ColumnDef::new("cost_minor").big_integer().not_null())
                    .col(ColumnDef::new("order_count").big_integer().not_null())
                    .primary_key(Index::create().col("customer_id").col("currency_code"))
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for t in ["customer_totals", "purchase_days", "customer_summaries"] {
            manager.drop_table(Table::drop().table(t).if_exists().to_owned()).await?;
        }
        Ok(())
    }
}
