//! The identification store's schema.

use sea_orm_migration::{prelude::*, sea_orm::DbErr};

/// Every migration of the identification store, in order.
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(crm_runtime::migration::RuntimeTables),
            Box::new(ProfileTables),
            Box::new(ProfileSearchAndStatus),
            Box::new(MergeTables),
            Box::new(MatchingTables),
            Box::new(ProfileRecords),
            Box::new(crm_runtime::migration::EventLogTraceContext),
            Box::new(MatcherRecordCount),
        ]
    }
}

/// Profiles and their identifiers.
pub struct ProfileTables;

impl MigrationName for ProfileTables {
    fn name(&self) -> &str {
        "m20261122_000001_profiles"
    }
}

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for ProfileTables {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("profiles")
                    .col(ColumnDef::new("id").string().not_null().primary_key())
                    .col(ColumnDef::new("status").integer().not_null())
                    .col(ColumnDef::new("lifecycle_stage").integer().not_null())
                    .col(ColumnDef::new("target_group").string().not_null())
                    .col(ColumnDef::new("created_at_us").big_integer().not_null())
                    .col(ColumnDef::new("updated_at_us").big_integer().not_null())
                    .col(ColumnDef::new("version").big_integer().not_null())
                    .col(ColumnDef::new("body").blob().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("profiles_stage_group")
                    .table("profiles")
                    .col("lifecycle_stage")
                    .col("target_group")
                    .to_owned(),
            )
            .await?;
        // The primary key is the normalised identifier: one identifier,
        // one profile, enforced by the database under any concurrency.
        manager
            .create_table(
                Table::create()
                    .table("identifiers")
                    .col(ColumnDef::new("kind").integer().not_null())
                    .col(ColumnDef::new("namespace").string().not_null())
                    .col(ColumnDef::new("value").string().not_null())
                    .col(ColumnDef::new("profile_id").string().not_null())
                    .col(ColumnDef::new("created_at_us").big_integer().not_null())
                    .col(ColumnDef::new("last_seen_at_us").big_integer().not_null())
                    .col(ColumnDef::new("source_channel").integer().not_null())
                    .primary_key(Index::create().col("kind").col("namespace").col("value"))
                    .foreign_key(ForeignKey::create().from("identifiers", "profile_id").to("profiles", "id"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(Index::create().name("identifiers_profile").table("identifiers").col("profile_id").to_owned())
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for t in ["identifiers", "profiles"] {
            manager.drop_table(Table::drop().table(t).if_exists().to_owned()).await?;
        }
        Ok(())
    }
}

/// Trait keys for filtering, and the profile a merged-away profile lives on in.
pub struct ProfileSearchAndStatus;

impl MigrationName for ProfileSearchAndStatus {
    fn name(&self) -> &str {
        "m20261122_000002_profile_search_and_status"
    }
}

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for ProfileSearchAndStatus {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one column at a time.
        manager
            .alter_table(
                Table::alter()
                    .table("profiles")
                    .add_column(ColumnDef::new("trait_keys").string().not_null().default(""))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter().table("profiles").add_column(ColumnDef::new("merged_into").string().null()).to_owned(),
            )
            .await?;
        manager
            .create_index(Index::create().name("profiles_updated").table("profiles").col("updated_at_us").to_owned())
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_index(Index::drop().name("profiles_updated").table("profiles").to_owned()).await?;
        manager.alter_table(Table::alter().table("profiles").drop_column("merged_into").to_owned()).await?;
        manager.alter_table(Table::alter().table("profiles").drop_column("trait_keys").to_owned()).await?;
        Ok(())
    }
}

/// Merge audit records (with the snapshots unmerge restores) and the
/// journal of what arrives at a survivor while a merge stands.
pub struct MergeTables;

impl MigrationName for MergeTables {
    fn name(&self) -> &str {
        "m20261122_000003_merges"
    }
}

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for MergeTables {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("merges")
                    .col(ColumnDef::new("id").string().not_null().primary_key())
                    .col(ColumnDef::new("surviving_id").string().not_null())
                    .col(ColumnDef::new("merged_id").string().not_null())
                    .col(ColumnDef::new("status").integer().not_null())
                    .col(ColumnDef::new("sequence").big_integer().not_null())
                    .col(ColumnDef::new("created_at_us").big_integer().not_null())
                    .col(ColumnDef::new("survivor_version").big_integer().not_null())
                    .col(ColumnDef::new("merged_version").big_integer().not_null())
                    .col(ColumnDef::new("survivor_before").blob().not_null())
                    .col(ColumnDef::new("merged_before").blob().not_null())
                    .col(ColumnDef::new("merged_identifiers").blob().not_null())
                    .col(ColumnDef::new("evidence").text().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create().name("merges_survivor").table("merges").col("surviving_id").col("status").to_owned(),
            )
            .await?;
        manager.create_index(Index::create().name("merges_merged").table("merges").col("merged_id").to_owned()).await?;
        manager
            .create_table(
                Table::create()
                    .table("profile_journal")
                    .col(ColumnDef::new("profile_id").string().not_null())
                    .col(ColumnDef::new("sequence").big_integer().not_null())
                    .col(ColumnDef::new("arrived_with").string().null())
                    .col(ColumnDef::new("entry").blob().not_null())
                    .primary_key(Index::create().col("profile_id").col("sequence"))
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for t in ["profile_journal", "merges"] {
            manager.drop_table(Table::drop().table(t).if_exists().to_owned()).await?;
        }
        Ok(())
    }
}

/// Probabilistic matching: blocking keys per profile, versions of the
/// trained matcher, the review queue, pairs operators said never match,
/// and the explanation of every decision.
pub struct MatchingTables;

impl MigrationName for MatchingTables {
    fn name(&self) -> &str {
        "m20261122_000004_matching"
    }
}

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for MatchingTables {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("blocking_keys")
                    .col(ColumnDef::new("key").string().not_null())
                    .col(ColumnDef::new("profile_id").string().not_null())
                    .primary_key(Index::create().col("key").col("profile_id"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create().name("blocking_keys_profile").table("blocking_keys").col("profile_id").to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("matcher_models")
                    .col(ColumnDef::new("version").big_integer().not_null().primary_key())
                    .col(ColumnDef::new("created_at_us").big_integer().not_null())
                    .col(ColumnDef::new("converged").boolean().not_null())
                    .col(ColumnDef::new("iterations").integer().not_null())
                    .col(ColumnDef::new("pair_count").big_integer().not_null())
                    .col(ColumnDef::new("active").boolean().not_null())
                    .col(ColumnDef::new("model").blob().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("review_items")
                    .col(ColumnDef::new("id").string().not_null().primary_key())
                    .col(ColumnDef::new("profile_id").string().not_null())
                    .col(ColumnDef::new("candidate_profile_id").string().not_null())
                    .col(ColumnDef::new("status").integer().not_null())
                    .col(ColumnDef::new("explanation").blob().not_null())
                    .col(ColumnDef::new("created_at_us").big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create().name("review_items_open").table("review_items").col("status").col("id").to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("never_match")
                    .col(ColumnDef::new("low_id").string().not_null())
                    .col(ColumnDef::new("high_id").string().not_null())
                    .primary_key(Index::create().col("low_id").col("high_id"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("match_decisions")
                    .col(ColumnDef::new("id").string().not_null().primary_key())
                    .col(ColumnDef::new("sequence").big_integer().not_null())
                    .col(ColumnDef::new("profile_id").string().not_null())
                    .col(ColumnDef::new("method").integer().not_null())
                    .col(ColumnDef::new("explanation").blob().not_null())
                    .col(ColumnDef::new("created_at_us").big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create().name("match_decisions_profile").table("match_decisions").col("profile_id").to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for t in ["match_decisions", "never_match", "review_items", "matcher_models", "blocking_keys"] {
            manager.drop_table(Table::drop().table(t).if_exists().to_owned()).await?;
        }
        Ok(())
    }
}

/// Every distinct record a profile was told (each touchpoint's view of the
/// person), kept so a resolve compares a newcomer with all of them, not
/// only with the profile's merged view. Slot 0 of a profile is its current
/// view; other rows are keyed by the record's fingerprint.
pub struct ProfileRecords;

impl MigrationName for ProfileRecords {
    fn name(&self) -> &str {
        "m20261123_000005_profile_records"
    }
}

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for ProfileRecords {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("profile_records")
                    .col(ColumnDef::new("profile_id").string().not_null())
                    .col(ColumnDef::new("fingerprint").big_integer().not_null())
                    .col(ColumnDef::new("seen_at_us").big_integer().not_null())
                    .col(ColumnDef::new("record").blob().not_null())
                    .primary_key(Index::create().col("profile_id").col("fingerprint"))
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table("profile_records").if_exists().to_owned()).await?;
        Ok(())
    }
}

/// How many kept records each matcher version was trained on, so the next
/// training can wait until the base has grown (NULL: trained before this
/// was recorded).
pub struct MatcherRecordCount;

impl MigrationName for MatcherRecordCount {
    fn name(&self) -> &str {
        "m20261207_000006_matcher_record_count"
    }
}

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for MatcherRecordCount {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table("matcher_models")
                    .add_column(ColumnDef::new("record_count").big_integer().null())
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.alter_table(Table::alter().table("matcher_models").drop_column("record_count").to_owned()).await?;
        Ok(())
    }
}
