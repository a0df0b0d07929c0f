//! The differentiation store's schema: projections of the feeds.

use sea_orm_migration::{prelude::*, sea_orm::DbErr};

/// Every migration of the differentiation store, in order.
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(crm_runtime::migration::RuntimeTables),
            Box::new(PurchaseSummaryTables),
            Box::new(ValueModelTables),
        ]
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

/// The facts the summaries are derived from (orders and interactions, so a
/// re-key can move exactly the facts it lists), the fitted value models
/// and per-customer scores. The interaction projection is rebuilt from
/// the feed: its cursor is reset and the derived tables emptied.
pub struct ValueModelTables;

impl MigrationName for ValueModelTables {
    fn name(&self) -> &str {
        "m20261123_000001_value_models"
    }
}

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for ValueModelTables {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("orders")
                    .col(ColumnDef::new("order_id").string().not_null().primary_key())
                    .col(ColumnDef::new("customer_id").string().not_null())
                    .col(ColumnDef::new("day").big_integer().not_null())
                    .col(ColumnDef::new("occur_us").big_integer().not_null())
                    .col(ColumnDef::new("currency_code").string().not_null())
                    .col(ColumnDef::new("revenue_minor").big_integer().not_null())
                    .col(ColumnDef::new("cost_minor").big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create().name("orders_by_customer").table("orders").col("customer_id").col("day").to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("order_categories")
                    .col(ColumnDef::new("order_id").string().not_null())
                    .col(ColumnDef::new("category").string().not_null())
                    .col(ColumnDef::new("revenue_minor").big_integer().not_null())
                    .col(ColumnDef::new("cost_minor").big_integer().not_null())
                    .primary_key(Index::create().col("order_id").col("category"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("customer_interactions")
                    .col(ColumnDef::new("interaction_id").string().not_null().primary_key())
                    .col(ColumnDef::new("customer_id").string().not_null())
                    .col(ColumnDef::new("channel").integer().not_null())
                    .col(ColumnDef::new("interaction_type").integer().not_null())
                    .col(ColumnDef::new("occur_us").big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("customer_interactions_by_customer")
                    .table("customer_interactions")
                    .col("customer_id")
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("value_models")
                    .col(ColumnDef::new("version").big_integer().not_null().primary_key())
                    .col(ColumnDef::new("fit_at_us").big_integer().not_null())
                    .col(ColumnDef::new("calibration_end_us").big_integer().not_null())
                    .col(ColumnDef::new("currency_code").string().not_null())
                    .col(ColumnDef::new("horizon_days").integer().not_null())
                    .col(ColumnDef::new("monthly_discount_rate").double().not_null())
                    .col(ColumnDef::new("r").double().not_null())
                    .col(ColumnDef::new("alpha").double().not_null())
                    .col(ColumnDef::new("a").double().not_null())
                    .col(ColumnDef::new("b").double().not_null())
                    .col(ColumnDef::new("log_likelihood").double().not_null())
                    .col(ColumnDef::new("customer_count").big_integer().not_null())
                    .col(ColumnDef::new("distinct_triples").big_integer().not_null())
                    .col(ColumnDef::new("p").double().not_null())
                    .col(ColumnDef::new("q").double().not_null())
                    .col(ColumnDef::new("gamma").double().not_null())
                    .col(ColumnDef::new("gg_log_likelihood").double().not_null())
                    .col(ColumnDef::new("gg_customer_count").big_integer().not_null())
                    .col(ColumnDef::new("converged").boolean().not_null())
                    .col(ColumnDef::new("active").boolean().not_null())
                    .col(ColumnDef::new("message").text().not_null())
                    .col(ColumnDef::new("covariance").text().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("customer_scores")
                    .col(ColumnDef::new("customer_id").string().not_null().primary_key())
                    .col(ColumnDef::new("model_version").big_integer().not_null())
                    .col(ColumnDef::new("currency_code").string().not_null())
                    .col(ColumnDef::new("probability_alive").double().not_null())
                    .col(ColumnDef::new("expected_transactions").double().not_null())
                    .col(ColumnDef::new("expected_margin_minor").big_integer().null())
                    .col(ColumnDef::new("clv_minor").big_integer().null())
                    .col(ColumnDef::new("scored_at_us").big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create().name("customer_scores_by_clv").table("customer_scores").col("clv_minor").to_owned(),
            )
            .await?;
        // Rebuild the projection from the start of the feed.
        let db = manager.get_connection();
        for t in ["customer_totals", "purchase_days", "customer_summaries"] {
            db.execute_unprepared(&format!("DELETE FROM {t}")).await?;
        }
        db.execute_unprepared("DELETE FROM feed_cursors WHERE name = 'interaction'").await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for t in ["customer_scores", "value_models", "customer_interactions", "order_categories", "orders"] {
            manager.drop_table(Table::drop().table(t).if_exists().to_owned()).await?;
        }
        Ok(())
    }
}
