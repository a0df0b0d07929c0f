//! The store: one database per service, SQLite or PostgreSQL chosen by URL,
//! migrations at start-up, and write transactions that append to the event
//! log and tell the feed when they commit.

use std::{ops::Deref, path::Path, sync::Arc, time::Duration};

use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseBackend, DatabaseConnection, DatabaseTransaction, DbErr,
    SqliteTransactionMode, Statement, TransactionOptions, TransactionTrait, Value,
    sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous},
};
use sea_orm_migration::MigratorTrait;
use tokio::sync::{Mutex, OwnedMutexGuard, watch};

use crate::{eventlog, feed::FeedEvent};

/// A service's database, shared by its handlers and background tasks.
#[derive(Clone, Debug)]
pub struct Store {
    db: DatabaseConnection,
    /// SQLite takes one writer at a time: writers queue here instead of
    /// spinning on SQLITE_BUSY. `None` on PostgreSQL.
    write_lock: Option<Arc<Mutex<()>>>,
    /// The highest event-log sequence known committed by this process.
    committed: Arc<watch::Sender<i64>>,
}

impl Store {
    /// Connect to `url` (`sqlite://path?mode=rwc` or `postgres://…`).
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, DbErr> {
        let mut opts = ConnectOptions::new(url.to_owned());
        opts.sqlx_logging(false).acquire_timeout(Duration::from_secs(5));
        let sqlite = url.starts_with("sqlite:");
        if sqlite {
            if let Some(dir) = sqlite_parent_dir(url) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| DbErr::Custom(format!("cannot create data directory: {e}")))?;
            }
            opts.max_connections(max_connections.clamp(1, 8)).min_connections(1).map_sqlx_sqlite_opts(|o| {
                o.journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .foreign_keys(true)
                    .busy_timeout(Duration::from_secs(5))
                    .create_if_missing(true)
                    // Deleted content is overwritten, not left in free pages:
                    // erasure must leave nothing readable in the file.
                    .pragma("secure_delete", "on")
            });
        } else {
            opts.max_connections(max_connections).min_connections(1);
        }
        let db = Database::connect(opts).await?;
        let store = Store {
            db,
            write_lock: sqlite.then(|| Arc::new(Mutex::new(()))),
            committed: Arc::new(watch::channel(0).0),
        };
        Ok(store)
    }

    /// Run the migrations of `M` (the runtime's tables come first in each
    /// service's migrator), then learn the event log's head.
    pub async fn migrate<M: MigratorTrait>(&self) -> Result<(), DbErr> {
        M::up(&self.db, None).await?;
        if let Ok(head) = eventlog::head(&self.db).await {
            self.committed.send_if_modified(|c| bump(c, head));
        }
        Ok(())
    }

    /// The connection pool, for reads.
    pub fn conn(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Which database this is.
    pub fn backend(&self) -> DatabaseBackend {
        self.db.get_database_backend()
    }

    /// Begin a write transaction (on SQLite, after the writers before it).
    pub async fn begin_write(&self) -> Result<WriteTxn, DbErr> {
        let guard = match &self.write_lock {
            Some(lock) => Some(lock.clone().lock_owned().await),
            None => None,
        };
        let tx = self
            .db
            .begin_with_options(TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..Default::default()
            })
            .await?;
        Ok(WriteTxn { tx, _guard: guard, appended: None, committed: self.committed.clone() })
    }

    /// Follow the highest committed event-log sequence (for feed tails).
    pub fn committed(&self) -> watch::Receiver<i64> {
        self.committed.subscribe()
    }

    /// Note a sequence committed elsewhere (another replica), for tails.
    pub fn observe_committed(&self, sequence: i64) {
        self.committed.send_if_modified(|c| bump(c, sequence));
    }

    /// Build a statement written with `?` placeholders for this backend.
    pub fn stmt(&self, sql: &str, values: Vec<Value>) -> Statement {
        stmt(self.backend(), sql, values)
    }

    /// Close the pool.
    pub async fn close(self) -> Result<(), DbErr> {
        self.db.close().await
    }
}

fn bump(current: &mut i64, seen: i64) -> bool {
    if seen > *current {
        *current = seen;
        true
    } else {
        false
    }
}

fn sqlite_parent_dir(url: &str) -> Option<&Path> {
    let path = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
    let path = path.split('?').next()?;
    if path.is_empty() || path.starts_with(":memory:") {
        return None;
    }
    Path::new(path).parent().filter(|p| !p.as_os_str().is_empty())
}

/// A statement written with `?` placeholders, rewritten to `$n` for
/// PostgreSQL. The SQL must not contain `?` inside string literals.
pub fn stmt(backend: DatabaseBackend, sql: &str, values: Vec<Value>) -> Statement {
    let sql = if backend == DatabaseBackend::Postgres {
        let mut out = String::with_capacity(sql.len() + 8);
        let mut n = 0;
        for ch in sql.chars() {
            if ch == '?' {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            } else {
                out.push(ch);
            }
        }
        out
    } else {
        sql.to_owned()
    };
    Statement::from_sql_and_values(backend, sql, values)
}

/// A write transaction. Events appended in it reach the feed's live tail
/// when it commits; dropped uncommitted, it rolls back.
pub struct WriteTxn {
    tx: DatabaseTransaction,
    _guard: Option<OwnedMutexGuard<()>>,
    appended: Option<i64>,
    committed: Arc<watch::Sender<i64>>,
}

impl WriteTxn {
    /// Append `event` to the event log under `key` (the customer or profile
    /// it concerns); returns its sequence, gap-free in commit order.
    pub async fn append<E: FeedEvent>(&mut self, key: &str, event: &E) -> Result<i64, DbErr> {
        let sequence = eventlog::append(&self.tx, key, event.kind(), &event.encode_to_vec()).await?;
        self.appended = Some(sequence);
        Ok(sequence)
    }

    /// Append the event that `build` makes knowing its sequence (so the
    /// payload can carry it); returns the sequence and the event.
    pub async fn append_with<E: FeedEvent>(
        &mut self,
        key: &str,
        build: impl FnOnce(i64) -> E,
    ) -> Result<(i64, E), DbErr> {
        let sequence = eventlog::reserve(&self.tx).await?;
        let mut event = build(sequence);
        event.set_sequence(sequence);
        eventlog::insert(&self.tx, sequence, key, event.kind(), &event.encode_to_vec()).await?;
        self.appended = Some(sequence);
        Ok((sequence, event))
    }

    /// Commit, then wake the feed's tails.
    pub async fn commit(self) -> Result<(), DbErr> {
        let WriteTxn { tx, _guard, appended, committed } = self;
        tx.commit().await?;
        drop(_guard);
        if let Some(seq) = appended {
            committed.send_if_modified(|c| bump(c, seq));
        }
        Ok(())
    }

    /// Roll back explicitly.
    pub async fn rollback(self) -> Result<(), DbErr> {
        self.tx.rollback().await
    }

    /// The statement builder for this backend.
    pub fn stmt(&self, sql: &str, values: Vec<Value>) -> Statement {
        stmt(self.tx.get_database_backend(), sql, values)
    }
}

impl Deref for WriteTxn {
    type Target = DatabaseTransaction;
    fn deref(&self) -> &DatabaseTransaction {
        &self.tx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_for_postgres_only() {
        let s = stmt(DatabaseBackend::Postgres, "SELECT a FROM t WHERE b = ? AND c = ?", vec![1.into(), 2.into()]);
        assert_eq!(s.sql, "SELECT a FROM t WHERE b = $1 AND c = $2");
        let s = stmt(DatabaseBackend::Sqlite, "SELECT a FROM t WHERE b = ?", vec![1.into()]);
        assert_eq!(s.sql, "SELECT a FROM t WHERE b = ?");
    }

    #[test]
    fn sqlite_data_directory_is_found() {
        assert_eq!(sqlite_parent_dir("sqlite://./data/x.db?mode=rwc"), Some(Path::new("./data")));
        assert_eq!(sqlite_parent_dir("sqlite::memory:"), None);
        assert_eq!(sqlite_parent_dir("sqlite://x.db"), None);
    }
}
