//! The personalization store's schema.

use sea_orm_migration::{prelude::*, sea_orm::DbErr};

/// Every migration of the personalization store, in order.
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(crm_runtime::migration::RuntimeTables), Box::new(OfferTables)]
    }
}

/// Offer definitions.
pub struct OfferTables;

impl MigrationName for OfferTables {
    fn name(&self) -> &str {
        "m20261122_000001_offers"
    }
}

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for OfferTables {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("offers")
                    .col(ColumnDef::new("id").string().not_null().primary_key())
                    .col(ColumnDef::new("state").integer().not_null())
                    .col(ColumnDef::new("create_time_us").big_integer().not_null())
                    .col(ColumnDef::new("body").blob().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(Index::create().name("offers_state").table("offers").col("state").col("id").to_owned())
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table("offers").if_exists().to_owned()).await?;
        Ok(())
    }
}
