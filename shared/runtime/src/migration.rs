//! The runtime's own tables, created by the first migration of every
//! service: the event log and its head counter, idempotency keys, and feed
//! consumer cursors; and the later changes to them.

use sea_orm_migration::{
    prelude::*,
    sea_orm::{ConnectionTrait, DbErr},
};

/// Creates the runtime's tables. List it first in each service's migrator.
#[derive(Debug, Default)]
pub struct RuntimeTables;

impl MigrationName for RuntimeTables {
    fn name(&self) -> &str {
        "m20261122_000000_runtime_tables"
    }
}

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for RuntimeTables {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("event_log")
                    .if_not_exists()
                    .col(ColumnDef::new("sequence").big_integer().not_null().primary_key())
                    .col(ColumnDef::new("stream_key").string().not_null())
                    .col(ColumnDef::new("kind").string().not_null())
                    .col(ColumnDef::new("recorded_at_us").big_integer().not_null())
                    .col(ColumnDef::new("payload").blob().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("event_log_stream_key")
                    .table("event_log")
                    .col("stream_key")
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        // One row whose counter every append increments in its own
        // transaction: the row lock orders appenders, so sequences are
        // gap-free in commit order (a plain database sequence is not).
        manager
            .create_table(
                Table::create()
                    .table("event_log_head")
                    .if_not_exists()
                    .col(ColumnDef::new("id").integer().not_null().primary_key())
                    .col(ColumnDef::new("last_sequence").big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .get_connection()
            .execute_unprepared("INSERT INTO event_log_head (id, last_sequence) VALUES (1, 0)")
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("idempotency_keys")
                    .if_not_exists()
                    .col(ColumnDef::new("scope").string().not_null())
                    .col(ColumnDef::new("request_id").string().not_null())
                    .col(ColumnDef::new("fingerprint").big_integer().not_null())
                    .col(ColumnDef::new("response").blob().null())
                    // Whom the response is about, so erasure can delete it.
                    .col(ColumnDef::new("subject").string().not_null().default(""))
                    .col(ColumnDef::new("created_at_us").big_integer().not_null())
                    .primary_key(Index::create().col("scope").col("request_id"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idempotency_keys_subject")
                    .table("idempotency_keys")
                    .col("subject")
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("feed_cursors")
                    .if_not_exists()
                    .col(ColumnDef::new("name").string().not_null().primary_key())
                    .col(ColumnDef::new("position").big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for t in ["feed_cursors", "idempotency_keys", "event_log_head", "event_log"] {
            manager.drop_table(Table::drop().table(t).if_exists().to_owned()).await?;
        }
        Ok(())
    }
}

/// Adds the producer's W3C trace context to each event-log row
/// (`traceparent`, `tracestate`; null for events appended before, or
/// without a trace). List it after the service's migrations in every
/// service that appends to its event log.
#[derive(Debug, Default)]
pub struct EventLogTraceContext;

impl MigrationName for EventLogTraceContext {
    fn name(&self) -> &str {
        "m20261123_000000_event_log_trace_context"
    }
}

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for EventLogTraceContext {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one thing at a time.
        for column in ["traceparent", "tracestate"] {
            manager
                .alter_table(
                    Table::alter().table("event_log").add_column(ColumnDef::new(column).string().null()).to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in ["tracestate", "traceparent"] {
            manager.alter_table(Table::alter().table("event_log").drop_column(column).to_owned()).await?;
        }
        Ok(())
    }
}

/// On SQLite, rebuilds the event log with `sequence` as the table's rowid
/// (`INTEGER PRIMARY KEY`), keeping every event: the table was created with
/// a `BIGINT` primary key, which SQLite keeps in a unique index beside the
/// table's own rowid B-tree, so every append wrote two B-trees for one key.
/// Sequences, and so the feed, are the same after it. Nothing on
/// PostgreSQL (its primary key is the table's only index on `sequence`).
/// List it after `EventLogTraceContext`.
#[derive(Debug, Default)]
pub struct EventLogRowidSequence;

impl MigrationName for EventLogRowidSequence {
    fn name(&self) -> &str {
        "m20261124_000000_event_log_rowid_sequence"
    }
}

/// Rebuild the SQLite event log with `sequence` of type `sequence_type`
/// (`INTEGER`: the rowid; `BIGINT`: a key of its own), keeping its rows.
async fn rebuild_event_log(manager: &SchemaManager<'_>, sequence_type: &str) -> Result<(), DbErr> {
    let db = manager.get_connection();
    if db.get_database_backend() != sea_orm::DatabaseBackend::Sqlite {
        return Ok(());
    }
    let create = format!(
        "CREATE TABLE \"event_log_rebuilt\" (sequence {sequence_type} NOT NULL PRIMARY KEY, \
         stream_key varchar NOT NULL, kind varchar NOT NULL, recorded_at_us bigint NOT NULL, \
         payload blob NOT NULL, traceparent varchar NULL, tracestate varchar NULL)"
    );
    replace_sqlite_table(db, "event_log", &create).await
}

/// The stored SQL of SQLite's `kind` objects (`table`, `index`) of `table`.
async fn sqlite_schema<C: ConnectionTrait>(db: &C, kind: &str, table: &str) -> Result<Vec<String>, DbErr> {
    let sql = "SELECT sql FROM sqlite_master WHERE type = ? AND tbl_name = ? AND sql IS NOT NULL ORDER BY name";
    let stmt =
        sea_orm::Statement::from_sql_and_values(sea_orm::DatabaseBackend::Sqlite, sql, [kind.into(), table.into()]);
    db.query_all_raw(stmt).await?.iter().map(|r| r.try_get_by_index(0)).collect()
}

/// Replace SQLite `table` by the table `create` makes (named
/// `{table}_rebuilt`), copying every row column by column, then recreate
/// the table's indexes.
async fn replace_sqlite_table<C: ConnectionTrait>(db: &C, table: &str, create: &str) -> Result<(), DbErr> {
    let indexes = sqlite_schema(db, "index", table).await?;
    let columns: Vec<String> = db
        .query_all_raw(sea_orm::Statement::from_sql_and_values(
            sea_orm::DatabaseBackend::Sqlite,
            "SELECT name FROM pragma_table_info(?) ORDER BY cid",
            [table.into()],
        ))
        .await?
        .iter()
        .map(|r| r.try_get_by_index::<String>(0).map(|c| format!("\"{c}\"")))
        .collect::<Result<_, _>>()?;
    let columns = columns.join(", ");
    let rebuilt = format!("{table}_rebuilt");
    for sql in [
        create.to_owned(),
        format!("INSERT INTO \"{rebuilt}\" ({columns}) SELECT {columns} FROM \"{table}\""),
        format!("DROP TABLE \"{table}\""),
        format!("ALTER TABLE \"{rebuilt}\" RENAME TO \"{table}\""),
    ]
    .into_iter()
    .chain(indexes)
    {
        db.execute_unprepared(&sql).await?;
    }
    Ok(())
}

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for EventLogRowidSequence {
    /// The copy, the swap and the migration's record commit together (SQLite
    /// migrations run outside a transaction by default).
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        rebuild_event_log(manager, "INTEGER").await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        rebuild_event_log(manager, "bigint").await
    }
}

/// Rebuild SQLite `tables` as `WITHOUT ROWID` tables (`without_rowid`),
/// or back as rowid tables, keeping their rows, columns, keys and indexes:
/// a table keyed by text then is one B-tree instead of two (the rows and
/// the key's index), so a write touches fewer pages. Nothing happens on
/// PostgreSQL, nor to a table already in the asked form. Run it in a
/// transactional migration.
pub async fn rebuild_sqlite_tables(
    manager: &SchemaManager<'_>,
    tables: &[&str],
    without_rowid: bool,
) -> Result<(), DbErr> {
    const SUFFIX: &str = " WITHOUT ROWID";
    let db = manager.get_connection();
    if db.get_database_backend() != sea_orm::DatabaseBackend::Sqlite {
        return Ok(());
    }
    for table in tables {
        let Some(sql) = sqlite_schema(db, "table", table).await?.pop() else {
            return Err(DbErr::Custom(format!("no table {table} to rebuild")));
        };
        let body = sql.trim_end().strip_suffix(SUFFIX).unwrap_or(sql.trim_end());
        if (body.len() != sql.trim_end().len()) == without_rowid {
            continue;
        }
        let columns =
            body.find('(').map(|at| &body[at..]).ok_or_else(|| DbErr::Custom(format!("table {table}: {sql}")))?;
        let suffix = if without_rowid { SUFFIX } else { "" };
        replace_sqlite_table(db, table, &format!("CREATE TABLE \"{table}_rebuilt\" {columns}{suffix}")).await?;
    }
    Ok(())
}

/// The runtime's tables alone, with every change to them: the migrator of
/// stores that hold nothing else (the runtime's own tests).
#[derive(Debug, Default)]
pub struct RuntimeMigrator;

impl MigratorTrait for RuntimeMigrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(RuntimeTables), Box::new(EventLogTraceContext), Box::new(EventLogRowidSequence)]
    }
}
