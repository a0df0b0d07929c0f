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
            Box::new(ValueTierTables),
            Box::new(SegmentTables),
            Box::new(DefectionTables),
            Box::new(KeyedTables),
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

/// The remaining DF-1 inputs (referrals, stated needs, declared wallets,
/// profile traits and merge aliases), per-customer values and tiers, tier
/// policies, boundaries and the tier change log. Both projections are
/// rebuilt from their feeds: the cursors are reset and the facts emptied.
pub struct ValueTierTables;

impl MigrationName for ValueTierTables {
    fn name(&self) -> &str {
        "m20261124_000001_value_tiers"
    }
}

/// Empty `tables` and forget the cursors of `feeds`, so that the consumers
/// apply those feeds again from their start and fill the tables anew.
async fn replay_from_start(manager: &SchemaManager<'_>, tables: &[&str], feeds: &[&str]) -> Result<(), DbErr> {
    let db = manager.get_connection();
    for t in tables {
        db.execute_unprepared(&format!("DELETE FROM {t}")).await?;
    }
    let names = feeds.iter().map(|f| format!("'{f}'")).collect::<Vec<_>>().join(", ");
    db.execute_unprepared(&format!("DELETE FROM feed_cursors WHERE name IN ({names})")).await?;
    Ok(())
}

fn table(name: &'static str) -> TableCreateStatement {
    Table::create().table(name).to_owned()
}

fn index(name: &'static str, on: &'static str, cols: &[&'static str]) -> IndexCreateStatement {
    let mut i = Index::create().name(name).table(on).to_owned();
    for c in cols {
        i.col(*c);
    }
    i
}

const TIER_TABLES: [&str; 9] = [
    "tier_changes",
    "customer_values",
    "tier_state",
    "tier_policies",
    "profile_aliases",
    "customer_traits",
    "customer_wallets",
    "customer_needs",
    "customer_referrals",
];

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for ValueTierTables {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let id = |n: &'static str| ColumnDef::new(n).string().not_null().to_owned();
        let big = |n: &'static str| ColumnDef::new(n).big_integer().not_null().to_owned();
        let tables = [
            table("customer_referrals")
                .col(id("interaction_id").primary_key())
                .col(id("customer_id"))
                .col(id("referred_id"))
                .col(big("occur_us"))
                .to_owned(),
            table("customer_needs")
                .col(id("interaction_id"))
                .col(id("need"))
                .col(id("customer_id"))
                .col(ColumnDef::new("stated").boolean().not_null())
                .col(big("occur_us"))
                .primary_key(Index::create().col("interaction_id").col("need"))
                .to_owned(),
            table("customer_wallets")
                .col(id("interaction_id"))
                .col(id("category"))
                .col(id("customer_id"))
                .col(ColumnDef::new("currency_code").string().not_null())
                .col(big("amount_minor"))
                .col(big("occur_us"))
                .primary_key(Index::create().col("interaction_id").col("category"))
                .to_owned(),
            table("customer_traits")
                .col(id("customer_id").primary_key())
                .col(ColumnDef::new("traits").blob().not_null())
                .to_owned(),
            table("profile_aliases").col(id("alias_id").primary_key()).col(id("profile_id")).to_owned(),
            table("tier_policies")
                .col(big("version").primary_key())
                .col(ColumnDef::new("body").blob().not_null())
                .col(big("created_us"))
                .to_owned(),
            table("tier_state")
                .col(ColumnDef::new("id").integer().not_null().primary_key())
                .col(big("policy_version"))
                .col(ColumnDef::new("most_valuable_minor").big_integer().null())
                .col(ColumnDef::new("most_growable_minor").big_integer().null())
                .col(ColumnDef::new("rfm_cuts").text().not_null())
                .col(big("population"))
                .col(big("computed_us"))
                .col(big("events_since"))
                .to_owned(),
            table("customer_values")
                .col(id("customer_id").primary_key())
                .col(id("currency_code"))
                .col(big("historical_margin_minor"))
                .col(big("clv_minor"))
                .col(big("referral_value_minor"))
                .col(big("referred_count"))
                .col(big("real_value_minor"))
                .col(big("cost_to_serve_minor"))
                .col(big("net_value_minor"))
                .col(big("strategic_value_minor"))
                .col(ColumnDef::new("rfm_recency").integer().not_null())
                .col(ColumnDef::new("rfm_frequency").integer().not_null())
                .col(ColumnDef::new("rfm_monetary").integer().not_null())
                .col(ColumnDef::new("tier").integer().not_null())
                .col(ColumnDef::new("tier_reason").text().not_null())
                .col(big("policy_version"))
                .col(big("updated_us"))
                .to_owned(),
            table("tier_changes")
                .col(id("id").primary_key())
                .col(id("customer_id"))
                .col(ColumnDef::new("from_tier").integer().not_null())
                .col(ColumnDef::new("to_tier").integer().not_null())
                .col(ColumnDef::new("reason").text().not_null())
                .col(big("policy_version"))
                .col(big("change_us"))
                .to_owned(),
        ];
        for t in tables {
            manager.create_table(t).await?;
        }
        for i in [
            index("customer_referrals_by_customer", "customer_referrals", &["customer_id"]),
            index("customer_referrals_by_referred", "customer_referrals", &["referred_id"]),
            index("customer_needs_by_customer", "customer_needs", &["customer_id"]),
            index("customer_wallets_by_customer", "customer_wallets", &["customer_id"]),
            index("profile_aliases_by_profile", "profile_aliases", &["profile_id"]),
            index("customer_values_by_real_value", "customer_values", &["real_value_minor", "customer_id"]),
            index("customer_values_by_tier", "customer_values", &["tier", "real_value_minor", "customer_id"]),
            index("tier_changes_by_customer", "tier_changes", &["customer_id", "change_us"]),
            index("tier_changes_by_time", "tier_changes", &["change_us", "id"]),
        ] {
            manager.create_index(i).await?;
        }
        // Rebuild both projections from the start of their feeds, so that
        // facts recorded before these tables existed reach them.
        replay_from_start(
            manager,
            &[
                "order_categories",
                "orders",
                "customer_interactions",
                "customer_scores",
                "customer_totals",
                "purchase_days",
                "customer_summaries",
            ],
            &["interaction", "identification"],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for t in TIER_TABLES {
            manager.drop_table(Table::drop().table(t).if_exists().to_owned()).await?;
        }
        Ok(())
    }
}

/// Needs-based segments (DF-6) and their members, kept current by the
/// feed consumers. A new table is filled when a segment is created, so
/// nothing is rebuilt here.
pub struct SegmentTables;

impl MigrationName for SegmentTables {
    fn name(&self) -> &str {
        "m20261125_000001_segments"
    }
}

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for SegmentTables {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let id = |n: &'static str| ColumnDef::new(n).string().not_null().to_owned();
        manager
            .create_table(
                table("segments")
                    .col(id("id").primary_key())
                    .col(ColumnDef::new("display_name").text().not_null())
                    .col(ColumnDef::new("description").text().not_null())
                    .col(ColumnDef::new("expression").text().not_null())
                    .col(ColumnDef::new("create_us").big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                table("segment_members")
                    .col(id("segment_id"))
                    .col(id("customer_id"))
                    .col(ColumnDef::new("since_us").big_integer().not_null())
                    .primary_key(Index::create().col("segment_id").col("customer_id"))
                    .to_owned(),
            )
            .await?;
        manager.create_index(index("segment_members_by_customer", "segment_members", &["customer_id"])).await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for t in ["segment_members", "segments"] {
            manager.drop_table(Table::drop().table(t).if_exists().to_owned()).await?;
        }
        Ok(())
    }
}

/// Defections with the value lost with them (DF-7), kept under the
/// defection id so re-keys move them like any other fact. The interaction
/// projection is rebuilt from the start of its feed so that defections
/// applied before this table existed reach it: its cursor is reset and
/// the facts it keeps emptied (each is recorded again, once, on replay).
pub struct DefectionTables;

impl MigrationName for DefectionTables {
    fn name(&self) -> &str {
        "m20261126_000001_defections"
    }
}

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for DefectionTables {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let id = |n: &'static str| ColumnDef::new(n).string().not_null().to_owned();
        let big = |n: &'static str| ColumnDef::new(n).big_integer().not_null().to_owned();
        manager
            .create_table(
                table("customer_defections")
                    .col(id("defection_id").primary_key())
                    .col(id("customer_id"))
                    .col(ColumnDef::new("reason").integer().not_null())
                    .col(ColumnDef::new("manageable").boolean().not_null())
                    .col(big("occur_us"))
                    .col(id("currency_code"))
                    .col(ColumnDef::new("clv_minor").big_integer().null())
                    .col(ColumnDef::new("model_version").big_integer().null())
                    .col(big("margin_minor"))
                    .col(big("applied_us"))
                    .to_owned(),
            )
            .await?;
        for i in [
            index("customer_defections_by_customer", "customer_defections", &["customer_id"]),
            index("customer_defections_by_time", "customer_defections", &["occur_us"]),
        ] {
            manager.create_index(i).await?;
        }
        replay_from_start(
            manager,
            &[
                "order_categories",
                "orders",
                "customer_interactions",
                "customer_referrals",
                "customer_needs",
                "customer_wallets",
                "customer_scores",
                "customer_totals",
                "purchase_days",
                "customer_summaries",
            ],
            &["interaction"],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table("customer_defections").if_exists().to_owned()).await?;
        Ok(())
    }
}

/// On SQLite, the tables every purchase writes become `WITHOUT ROWID`
/// tables, each one B-tree keyed by its primary key: a purchase event
/// writes fewer pages. Nothing changes on PostgreSQL.
pub struct KeyedTables;

/// The tables [`KeyedTables`] rebuilds.
const KEYED: [&str; 8] = [
    "orders",
    "order_categories",
    "customer_interactions",
    "purchase_days",
    "customer_totals",
    "customer_summaries",
    "customer_scores",
    "customer_values",
];

impl MigrationName for KeyedTables {
    fn name(&self) -> &str {
        "m20261130_000001_keyed_tables"
    }
}

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for KeyedTables {
    /// The copies and swaps commit together with the migration's record.
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crm_runtime::migration::rebuild_sqlite_tables(manager, &KEYED, true).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crm_runtime::migration::rebuild_sqlite_tables(manager, &KEYED, false).await
    }
}
