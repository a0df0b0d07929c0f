//! Reads that need no transaction: on PostgreSQL through the pool, on a
//! SQLite file on the calling thread.
//!
//! A sqlx SQLite connection lives on a thread of its own: each statement
//! is handed to that thread and its rows handed back, a wake-up each way.
//! For a read by key of pages the operating system has cached, the two
//! hand-offs cost more than the read itself (BENCHMARKS.md,
//! identification), so on a SQLite file [`Reads`] runs its statements on a
//! connection of a small pool of its own, on the thread that asks. Such a
//! read holds that thread for as long as it runs: use it for reads of a
//! bounded number of rows by key, never for scans.
//!
//! Each statement reads one state of the store (its own implicit
//! transaction), as a statement on a pool connection does.

use std::{
    future::Future,
    path::{Path, PathBuf},
    sync::Mutex,
};

use sea_orm::{ConnectionTrait, DatabaseBackend, DatabaseConnection, DbErr, QueryResult, RuntimeErr, Statement, Value};

/// Statements each inline connection keeps compiled: a hot read comes in a
/// few dozen shapes (one per number of keys or identifiers it binds).
const STATEMENT_CACHE: usize = 256;

/// Where a read that needs no transaction runs (see the module's comment).
#[derive(Clone, Copy, Debug)]
pub enum Reads<'a> {
    /// A pool connection, through sqlx.
    Pool(&'a DatabaseConnection),
    /// A SQLite connection used on the calling thread.
    Inline(&'a InlineReads),
}

/// A source of rows: a pool, a transaction, or [`Reads`].
pub trait ReadRows: Sync {
    /// Which database this reads.
    fn backend(&self) -> DatabaseBackend;
    /// Every row `query` yields.
    fn rows(&self, query: Statement) -> impl Future<Output = Result<Vec<Row>, DbErr>> + Send;
}

impl<C: ConnectionTrait + Sync> ReadRows for C {
    fn backend(&self) -> DatabaseBackend {
        self.get_database_backend()
    }

    async fn rows(&self, query: Statement) -> Result<Vec<Row>, DbErr> {
        Ok(self.query_all_raw(query).await?.into_iter().map(Row::Pooled).collect())
    }
}

impl ReadRows for Reads<'_> {
    fn backend(&self) -> DatabaseBackend {
        match self {
            Reads::Pool(c) => c.get_database_backend(),
            Reads::Inline(_) => DatabaseBackend::Sqlite,
        }
    }

    async fn rows(&self, query: Statement) -> Result<Vec<Row>, DbErr> {
        match self {
            Reads::Pool(c) => c.rows(query).await,
            Reads::Inline(i) => i.query_all(&query),
        }
    }
}

/// A value a [`Row`] column can be read as, whichever connection read it.
pub trait Column: sea_orm::TryGetable + rusqlite::types::FromSql {}
impl<T: sea_orm::TryGetable + rusqlite::types::FromSql> Column for T {}

/// A row read by [`ReadRows::rows`].
#[derive(Debug)]
pub enum Row {
    /// Read through sea-orm.
    Pooled(QueryResult),
    /// Read inline: its columns' values.
    Inline(Vec<rusqlite::types::Value>),
}

impl Row {
    /// Column `i` (from 0) as a `T`.
    pub fn get<T: Column>(&self, i: usize) -> Result<T, DbErr> {
        match self {
            Row::Pooled(r) => r.try_get_by_index(i),
            Row::Inline(values) => {
                let value = values.get(i).ok_or_else(|| DbErr::Type(format!("no column {i}")))?;
                T::column_result(value.into()).map_err(|e| DbErr::Type(format!("column {i}: {e}")))
            }
        }
    }
}

/// SQLite connections to one file, each used on the thread that asks (see
/// the module's comment). Up to `keep` stay open between reads; a read
/// that finds none idle opens one.
pub struct InlineReads {
    path: PathBuf,
    keep: usize,
    idle: Mutex<Vec<rusqlite::Connection>>,
}

impl std::fmt::Debug for InlineReads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InlineReads").field("path", &self.path).field("keep", &self.keep).finish_non_exhaustive()
    }
}

impl InlineReads {
    /// Reads of the SQLite database at `path` (which must exist, in WAL
    /// mode), keeping up to `keep` connections open.
    pub(crate) fn new(path: &Path, keep: usize) -> Self {
        InlineReads { path: path.to_owned(), keep, idle: Mutex::new(Vec::new()) }
    }

    /// Every row of `query` (written for SQLite, `?` placeholders), read
    /// on the calling thread.
    pub fn query_all(&self, query: &Statement) -> Result<Vec<Row>, DbErr> {
        let conn = self.take()?;
        let rows = read(&conn, query);
        // A connection whose read failed is dropped, not reused.
        if rows.is_ok() {
            self.give_back(conn);
        }
        rows
    }

    /// An idle connection, or a new one.
    fn take(&self) -> Result<rusqlite::Connection, DbErr> {
        match self.idle.lock().map_err(|_| unavailable("inline reads lock poisoned"))?.pop() {
            Some(conn) => Ok(conn),
            None => self.open(),
        }
    }

    /// Keep `conn` for the next read, unless `keep` are idle already.
    fn give_back(&self, conn: rusqlite::Connection) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < self.keep
        {
            idle.push(conn);
        }
    }

    fn open(&self) -> Result<rusqlite::Connection, DbErr> {
        use rusqlite::OpenFlags;
        // Opened for writing as every connection to a WAL database is (it
        // records its reads in the shared-memory index), and told never
        // to write.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = rusqlite::Connection::open_with_flags(&self.path, flags)
            .map_err(|e| unavailable(&format!("cannot open the database for reading: {e}")))?;
        conn.execute_batch("PRAGMA query_only = ON")
            .map_err(|e| unavailable(&format!("cannot configure a reading connection: {e}")))?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(conn)
    }
}

/// `query`'s rows on `conn`.
fn read(conn: &rusqlite::Connection, query: &Statement) -> Result<Vec<Row>, DbErr> {
    let failed = |e: rusqlite::Error| DbErr::Query(RuntimeErr::Internal(format!("inline read: {e}")));
    let mut statement = conn.prepare_cached(&query.sql).map_err(failed)?;
    let values = query.values.as_ref().map_or(&[][..], |v| &v.0[..]);
    if values.len() != statement.parameter_count() {
        let expected = statement.parameter_count();
        return Err(DbErr::Type(format!("{} values bound to {expected} parameters", values.len())));
    }
    for (i, value) in values.iter().enumerate() {
        statement.raw_bind_parameter(i + 1, bound(value)?).map_err(failed)?;
    }
    let columns = statement.column_count();
    let mut out = Vec::new();
    let mut rows = statement.raw_query();
    while let Some(row) = rows.next().map_err(failed)? {
        let mut values = Vec::with_capacity(columns);
        for i in 0..columns {
            values.push(row.get(i).map_err(failed)?);
        }
        out.push(Row::Inline(values));
    }
    Ok(out)
}

/// `value` as SQLite stores it, as sqlx binds it.
fn bound(value: &Value) -> Result<rusqlite::types::Value, DbErr> {
    use rusqlite::types::Value as V;
    let int = |i: Option<i64>| i.map_or(V::Null, V::Integer);
    Ok(match value {
        Value::Bool(b) => int(b.map(i64::from)),
        Value::TinyInt(i) => int(i.map(i64::from)),
        Value::SmallInt(i) => int(i.map(i64::from)),
        Value::Int(i) => int(i.map(i64::from)),
        Value::BigInt(i) => int(*i),
        Value::TinyUnsigned(i) => int(i.map(i64::from)),
        Value::SmallUnsigned(i) => int(i.map(i64::from)),
        Value::Unsigned(i) => int(i.map(i64::from)),
        Value::Float(f) => f.map_or(V::Null, |f| V::Real(f64::from(f))),
        Value::Double(f) => f.map_or(V::Null, V::Real),
        Value::String(s) => s.clone().map_or(V::Null, V::Text),
        Value::Bytes(b) => b.clone().map_or(V::Null, V::Blob),
        Value::Json(j) => j.as_ref().map_or(V::Null, |j| V::Text(j.to_string())),
        other => return Err(DbErr::Type(format!("a value of this type is not read inline: {other:?}"))),
    })
}

fn unavailable(message: &str) -> DbErr {
    DbErr::Conn(RuntimeErr::Internal(message.to_owned()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::db::{Store, file_store};

    #[tokio::test]
    async fn inline_reads_see_every_commit_and_read_each_type_as_the_pool_does() {
        let (_dir, store) = file_store().await;
        let Reads::Inline(inline) = store.reads() else { panic!("a SQLite file is read inline") };
        let exec = |sql: &str, values: Vec<Value>| store.conn().execute_raw(store.stmt(sql, values));
        exec("CREATE TABLE t (id BIGINT PRIMARY KEY, name TEXT, body BLOB, flag BOOLEAN)", vec![]).await.unwrap();
        let select = || store.stmt("SELECT id, name, body, flag FROM t WHERE id >= ? ORDER BY id", vec![0i64.into()]);
        assert!(inline.query_all(&select()).unwrap().is_empty());

        let tx = store.begin_write().await.unwrap();
        tx.execute_raw(store.stmt(
            "INSERT INTO t VALUES (?, ?, ?, ?), (?, NULL, NULL, ?)",
            vec![1i64.into(), "ä\u{1}b".into(), vec![0u8, 255].into(), true.into(), 2i64.into(), false.into()],
        ))
        .await
        .unwrap();
        // Not committed: not seen.
        assert!(inline.query_all(&select()).unwrap().is_empty());
        tx.commit().await.unwrap();

        let inline_rows = inline.query_all(&select()).unwrap();
        let pooled_rows = store.conn().rows(select()).await.unwrap();
        for rows in [&inline_rows, &pooled_rows] {
            assert_eq!(rows.len(), 2);
            assert_eq!(rows[0].get::<i64>(0).unwrap(), 1);
            assert_eq!(rows[0].get::<i32>(0).unwrap(), 1);
            assert_eq!(rows[0].get::<String>(1).unwrap(), "ä\u{1}b");
            assert_eq!(rows[0].get::<Vec<u8>>(2).unwrap(), vec![0u8, 255]);
            assert!(rows[0].get::<bool>(3).unwrap());
            assert_eq!(rows[1].get::<Option<String>>(1).unwrap(), None);
            assert_eq!(rows[1].get::<Option<Vec<u8>>>(2).unwrap(), None);
            assert!(!rows[1].get::<bool>(3).unwrap());
            assert!(rows[1].get::<String>(1).is_err(), "NULL is not a string");
        }
        assert!(inline_rows[0].get::<i64>(9).is_err(), "no such column");

        // Bound values of each kind select as they do on the pool.
        let by = |sql: &str, v: Value| store.stmt(&format!("SELECT id FROM t WHERE {sql} ORDER BY id"), vec![v]);
        for (sql, v, want) in [
            ("name = ?", Value::from("ä\u{1}b"), vec![1i64]),
            ("body = ?", Value::from(vec![0u8, 255]), vec![1]),
            ("flag = ?", Value::from(false), vec![2]),
            ("id = ?", Value::from(2i32), vec![2]),
            ("name IS ?", Value::String(None), vec![2]),
        ] {
            let ids: Vec<i64> = inline.query_all(&by(sql, v)).unwrap().iter().map(|r| r.get(0).unwrap()).collect();
            assert_eq!(ids, want, "{sql}");
        }
    }

    #[tokio::test]
    async fn an_inline_read_never_writes_and_a_failed_one_says_why() {
        let (_dir, store) = file_store().await;
        let Reads::Inline(inline) = store.reads() else { panic!("a SQLite file is read inline") };
        store.conn().execute_raw(store.stmt("CREATE TABLE t (id BIGINT PRIMARY KEY)", vec![])).await.unwrap();
        let write = store.stmt("INSERT INTO t VALUES (?)", vec![1i64.into()]);
        assert!(matches!(inline.query_all(&write), Err(DbErr::Query(_))));
        let n = |r: Vec<Row>| r[0].get::<i64>(0).unwrap();
        assert_eq!(n(store.conn().rows(store.stmt("SELECT COUNT(*) FROM t", vec![])).await.unwrap()), 0);
        assert!(matches!(inline.query_all(&store.stmt("SELECT * FROM missing", vec![])), Err(DbErr::Query(_))));
        let unbound = store.stmt("SELECT COUNT(*) FROM t WHERE id = ?", vec![]);
        assert!(matches!(inline.query_all(&unbound), Err(DbErr::Type(_))), "a parameter left unbound");
        // Still reads after both failures.
        assert_eq!(n(inline.query_all(&store.stmt("SELECT COUNT(*) FROM t", vec![])).unwrap()), 0);
    }

    #[tokio::test]
    async fn reads_reuse_idle_connections_and_keep_no_more_than_asked() {
        let (_dir, store) = file_store().await;
        let Reads::Inline(inline) = store.reads() else { panic!("a SQLite file is read inline") };
        let one = || inline.query_all(&store.stmt("SELECT 1", vec![])).unwrap();
        for _ in 0..3 {
            one();
        }
        assert_eq!(inline.idle.lock().unwrap().len(), 1, "reads one after another share a connection");
        // More reads at once than are kept: the extra connections are
        // closed when given back.
        let at_once: Vec<_> = (0..inline.keep + 2).map(|_| inline.take().unwrap()).collect();
        for conn in at_once {
            inline.give_back(conn);
        }
        assert_eq!(inline.idle.lock().unwrap().len(), inline.keep);
        assert!(inline.keep > 2, "one a core and spares");
        one();
        assert_eq!(inline.idle.lock().unwrap().len(), inline.keep);
    }

    #[tokio::test]
    async fn an_in_memory_database_is_read_through_the_pool() {
        let store = Store::connect("sqlite::memory:", 1).await.unwrap();
        assert!(matches!(store.reads(), Reads::Pool(_)));
        // Through the pool, reading ahead of an idle writer does not pay.
        assert!(store.reads_ahead().is_none());
    }

    #[tokio::test]
    async fn a_sqlite_file_is_always_read_ahead_of_the_writer() {
        let (_dir, store) = file_store().await;
        assert!(matches!(store.reads_ahead(), Some(Reads::Inline(_))), "with no write waiting");
    }
}
