//! The interaction store's schema.

use sea_orm_migration::{prelude::*, sea_orm::DbErr};

/// Every migration of the interaction store, in order.
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(crm_runtime::migration::RuntimeTables), Box::new(InteractionTables)]
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
