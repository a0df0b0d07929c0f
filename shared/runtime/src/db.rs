//! The store: one database per service, SQLite or PostgreSQL chosen by URL,
//! migrations at start-up, and write transactions that append to the event
//! log and tell the feed when they commit.
//!
//! On SQLite, writes go through one dedicated connection (the pool serves
//! reads): the writer's page cache stays warm, and the readers' caches are
//! not invalidated by commits on seven other connections. WAL checkpoints
//! run in the background, so a committing writer does not pay for them;
//! the automatic checkpoint stays as a safety net at a higher threshold.
//! On PostgreSQL, the group commit's batches go through one connection of
//! their own, and other writes through the pool.
//!
//! Under a steady stream of writes a background checkpoint never catches
//! up with the WAL (the writer appends while it copies), and SQLite starts
//! the WAL over only once everything in it was copied. So when the WAL has
//! grown long, the background checkpoint copies once more with the writers
//! held back: by then only what was appended during its last copy is left,
//! and the next write starts the WAL from its beginning. Without that the
//! writer's own automatic checkpoint would copy and sync the whole WAL
//! itself, stalling every write queued behind it.
//!
//! The SQLite writer reads the database file through a memory map (as much
//! of it as SQLite allows); readers read by calls (see `MMAP_BYTES`). Reads
//! on a hot path that need no transaction can run on the calling thread
//! (`Store::reads`, `crate::reads`).

use std::{
    collections::HashSet,
    ops::Deref,
    path::{Path, PathBuf},
    sync::{Arc, OnceLock, Weak},
    time::Duration,
};

use sea_orm::{
    AccessMode, ConnectOptions, ConnectionTrait, Database, DatabaseBackend, DatabaseConnection, DatabaseTransaction,
    DbErr, IsolationLevel, QueryResult, SqliteTransactionMode, Statement, TransactionOptions, TransactionTrait, Value,
    sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous},
};
use sea_orm_migration::MigratorTrait;
use tokio::sync::{Mutex, OwnedMutexGuard, watch};

use crate::{
    changes::{Changes, Touched, WriteMark},
    eventlog,
    feed::FeedEvent,
    group::GroupCommit,
    reads::{InlineReads, Reads},
};

/// How a SQLite store's WAL is checkpointed.
#[derive(Clone, Copy, Debug)]
struct Checkpointing {
    /// How often the background checkpoint looks for new commits.
    every: Duration,
    /// WAL pages past which the background checkpoint holds the writers
    /// back for its last copy, so that the WAL starts over.
    restart_pages: i64,
    /// WAL pages after which a committing writer checkpoints itself (a
    /// safety net: the background checkpoint normally starts the WAL over
    /// long before).
    autocheckpoint_pages: u32,
    /// Bytes a WAL file is cut back to when it starts over: one big
    /// transaction (a migration rebuilding tables) grows it far past what
    /// the steady flow of writes needs, and SQLite would otherwise keep
    /// the file at its largest for good.
    wal_limit_bytes: i64,
}

const CHECKPOINTING: Checkpointing = Checkpointing {
    every: Duration::from_millis(200),
    restart_pages: 4_096,
    autocheckpoint_pages: 16_384,
    wal_limit_bytes: 64 << 20,
};
/// Before it holds the writers back, the background checkpoint copies
/// again, at most this many times, until fewer pages than `CATCH_UP_PAGES`
/// were appended during its last copy.
const CATCH_UP_ROUNDS: usize = 4;
const CATCH_UP_PAGES: i64 = 128;
/// Most values bound in one multi-statement round trip on SQLite (it
/// accepts 32,766), or in one combined statement on PostgreSQL (see
/// `combined`).
const MAX_DEFERRED_VALUES: usize = 8_192;
/// Statements each PostgreSQL connection keeps prepared (sqlx keeps 100),
/// unless the URL sets `statement-cache-capacity`. A write's statements
/// come in a few hundred shapes (a resolve's combined write in about 240:
/// the rows and keys it inserts and deletes vary); one prepared again costs
/// its parse and plan on the connection every write waits for. A thousand
/// cost the server some 20 MB more a connection (BENCHMARKS.md,
/// identification).
const POSTGRES_STATEMENT_CACHE: usize = 1_000;
/// The SQLite writer's page cache, in KiB.
const WRITER_CACHE_KIB: u32 = 32_768;
/// How much of a SQLite database file the writer reads through a memory
/// map rather than a read call per page: the most SQLite accepts. Readers
/// read by calls: SQLite drops a connection's whole map when it finds the
/// database changed by another connection, which in WAL mode a reader
/// finds at nearly every read while writes flow, and each page it then
/// touches costs a fault to map again (about 30 a resolve at a million
/// people, against 3 without: BENCHMARKS.md, identification).
const MMAP_BYTES: u64 = 0x7fff_0000;
/// A PostgreSQL connection idle this long is pinged before it is handed
/// out (one dropped by the server, a proxy or a firewall is replaced, not
/// failed on); one in use since is not: a ping on every checkout is one
/// more round trip for every statement a pool connection runs.
const PING_AFTER_IDLE: Duration = Duration::from_secs(10);
/// SQLite connections kept open for reads on the calling thread, besides
/// one for each core (the runtime runs a worker a core, and each may be
/// reading): spares for threads that block. A read that finds none idle
/// opens one, and pays for it.
const INLINE_SPARE_READERS: usize = 2;

/// A service's database, shared by its handlers and background tasks.
#[derive(Clone, Debug)]
pub struct Store {
    db: DatabaseConnection,
    pub(crate) writer: Writer,
    /// On PostgreSQL, a pool of one connection for the group commit's
    /// batches: they do not wait for a connection behind the reads of the
    /// pool, and the statements they prepare stay prepared on it. `None`
    /// on SQLite, where `writer` is one connection already.
    group_conn: Option<DatabaseConnection>,
    /// The group-commit queue, started by its first write.
    pub(crate) group: Arc<OnceLock<GroupCommit>>,
    /// On a SQLite file, its reads on the calling thread.
    inline: Option<Arc<InlineReads>>,
}

/// What a write transaction needs: the connection writes go through, the
/// SQLite writer lock and the feed's committed watch.
#[derive(Clone, Debug)]
pub(crate) struct Writer {
    /// On SQLite a pool of one dedicated connection; on PostgreSQL the pool.
    pub(crate) conn: DatabaseConnection,
    /// SQLite takes one writer at a time: writers queue here instead of
    /// spinning on SQLITE_BUSY. `None` on PostgreSQL.
    lock: Option<Arc<Mutex<()>>>,
    /// Whether `conn` is a pool of its own (not the readers').
    dedicated: bool,
    /// The highest event-log sequence known committed by this process.
    pub(crate) committed: Arc<watch::Sender<i64>>,
    /// What this process's writes changed (see `crate::changes`).
    pub(crate) changes: Arc<Changes>,
}

impl Writer {
    /// Begin a write transaction (on SQLite, after the writers before it).
    pub(crate) async fn begin(&self) -> Result<WriteTxn, DbErr> {
        let guard = match &self.lock {
            Some(lock) => Some(lock.clone().lock_owned().await),
            None => None,
        };
        let tx = self
            .conn
            .begin_with_options(TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..Default::default()
            })
            .await?;
        Ok(WriteTxn {
            tx,
            _guard: guard,
            appended: None,
            committed: self.committed.clone(),
            batch: None,
            deferred: Vec::new(),
            flushes: 0,
            looked: None,
            recorded: HashSet::new(),
            changes: self.changes.clone(),
            touched: Touched::default(),
            numbered: false,
        })
    }

    /// Begin a group-committed batch's transaction.
    pub(crate) async fn begin_batch(&self) -> Result<WriteTxn, DbErr> {
        let mut tx = self.begin().await?;
        tx.batch = Some(BatchHead::default());
        Ok(tx)
    }
}

/// The SQLite options every connection of a store shares.
fn sqlite_options(opts: &mut ConnectOptions, max_connections: u32, writer: bool, checkpointing: Checkpointing) {
    // Nothing but this process can drop an embedded database's
    // connection: a ping before each checkout would only be one more
    // round trip to the connection's thread.
    opts.test_before_acquire(false);
    opts.max_connections(max_connections).min_connections(1).map_sqlx_sqlite_opts(move |o| {
        let o = o
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5))
            .create_if_missing(true)
            // Deleted content is overwritten, not left in free pages:
            // erasure must leave nothing readable in the file.
            .pragma("secure_delete", "on")
            .pragma("wal_autocheckpoint", checkpointing.autocheckpoint_pages.to_string())
            .pragma("journal_size_limit", checkpointing.wal_limit_bytes.to_string());
        if writer {
            o.pragma("cache_size", format!("-{WRITER_CACHE_KIB}")).pragma("mmap_size", MMAP_BYTES.to_string())
        } else {
            o
        }
    });
}

impl Store {
    /// Connect to `url` (`sqlite://path?mode=rwc` or `postgres://…`).
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, DbErr> {
        Self::connect_with(url, max_connections, CHECKPOINTING).await
    }

    async fn connect_with(url: &str, max_connections: u32, checkpointing: Checkpointing) -> Result<Self, DbErr> {
        let mut opts = ConnectOptions::new(url.to_owned());
        opts.sqlx_logging(false).acquire_timeout(Duration::from_secs(5));
        let sqlite = url.starts_with("sqlite:");
        if !sqlite {
            opts.max_connections(max_connections).min_connections(1).test_before_acquire_if_idle_for(PING_AFTER_IDLE);
            if !url.contains("statement-cache-capacity") {
                opts.map_sqlx_postgres_opts(|o| o.statement_cache_capacity(POSTGRES_STATEMENT_CACHE));
            }
            let mut group_opts = opts.clone();
            group_opts.max_connections(1);
            let db = Database::connect(opts).await?;
            let group_conn = Some(Database::connect(group_opts).await?);
            let writer = Writer {
                conn: db.clone(),
                lock: None,
                dedicated: false,
                committed: Arc::new(watch::channel(0).0),
                changes: Arc::default(),
            };
            return Ok(Store { db, writer, group_conn, group: Arc::default(), inline: None });
        }
        let file = sqlite_file(url);
        if let Some(dir) = file.and_then(Path::parent).filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| DbErr::Custom(format!("cannot create data directory: {e}")))?;
        }
        let mut writer_opts = opts.clone();
        sqlite_options(&mut opts, max_connections.clamp(1, 8), false, checkpointing);
        let db = Database::connect(opts).await?;
        // An in-memory database exists once per connection: it cannot have
        // a writer of its own.
        let dedicated = file.is_some();
        let conn = if dedicated {
            sqlite_options(&mut writer_opts, 1, true, checkpointing);
            Database::connect(writer_opts).await?
        } else {
            db.clone()
        };
        let writer = Writer {
            conn,
            lock: Some(Arc::new(Mutex::new(()))),
            dedicated,
            committed: Arc::new(watch::channel(0).0),
            changes: Arc::default(),
        };
        if let (Some(file), Some(lock)) = (file, &writer.lock) {
            let (committed, writers) = (Arc::downgrade(&writer.committed), Arc::downgrade(lock));
            let conns = (db.clone(), writer.conn.clone());
            tokio::spawn(checkpoints(conns, file.to_owned(), checkpointing, committed, writers));
        }
        let keep = std::thread::available_parallelism().map_or(2, usize::from) + INLINE_SPARE_READERS;
        let inline = file.map(|f| Arc::new(InlineReads::new(f, keep)));
        Ok(Store { db, writer, group_conn: None, group: Arc::default(), inline })
    }

    /// Run the migrations of `M` (the runtime's tables come first in each
    /// service's migrator), then learn the event log's head. On a SQLite
    /// file, then copy whatever the WAL holds into the database and empty
    /// it: a migration that rebuilt tables leaves the WAL as large as
    /// they are, and the background checkpoint only runs after writes.
    pub async fn migrate<M: MigratorTrait>(&self) -> Result<(), DbErr> {
        M::up(&self.db, None).await?;
        if let Ok(head) = eventlog::head(&self.db).await {
            self.writer.committed.send_if_modified(|c| bump(c, head));
        }
        if self.writer.dedicated
            && let Some(lock) = &self.writer.lock
        {
            let _held = lock.lock().await;
            empty_wal(&self.writer.conn).await;
        }
        Ok(())
    }

    /// The connection pool, for reads.
    pub fn conn(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Where a read that needs no transaction runs fastest: on a SQLite
    /// file the calling thread, else the pool (see `crate::reads`).
    pub fn reads(&self) -> Reads<'_> {
        match &self.inline {
            Some(inline) => Reads::Inline(inline),
            None => Reads::Pool(&self.db),
        }
    }

    /// The writer of the group commit's batches (see `group_conn`).
    pub(crate) fn group_writer(&self) -> Writer {
        match &self.group_conn {
            Some(conn) => Writer { conn: conn.clone(), ..self.writer.clone() },
            None => self.writer.clone(),
        }
    }

    /// Which database this is.
    pub fn backend(&self) -> DatabaseBackend {
        self.db.get_database_backend()
    }

    /// Begin a write transaction (on SQLite, after the writers before it).
    /// For a short write under concurrency, `group_commit` shares one
    /// commit among many.
    pub async fn begin_write(&self) -> Result<WriteTxn, DbErr> {
        self.writer.begin().await
    }

    /// Begin a read-only transaction whose reads all see one state of the
    /// store: REPEATABLE READ on PostgreSQL; on SQLite (WAL) the snapshot
    /// of its first read. For an answer assembled from several reads.
    pub async fn begin_read(&self) -> Result<DatabaseTransaction, DbErr> {
        match self.backend() {
            DatabaseBackend::Postgres => {
                self.db.begin_with_config(Some(IsolationLevel::RepeatableRead), Some(AccessMode::ReadOnly)).await
            }
            _ => self.db.begin().await,
        }
    }

    /// Where a read made outside a write begins, for the write that will
    /// use it to ask `WriteTxn::changed_since` (see `crate::changes`):
    /// take it before the read's first statement.
    pub fn settled(&self) -> WriteMark {
        self.writer.changes.settled()
    }

    /// Follow the highest committed event-log sequence (for feed tails).
    pub fn committed(&self) -> watch::Receiver<i64> {
        self.writer.committed.subscribe()
    }

    /// Note a sequence committed elsewhere (another replica), for tails.
    pub fn observe_committed(&self, sequence: i64) {
        self.writer.committed.send_if_modified(|c| bump(c, sequence));
    }

    /// Build a statement written with `?` placeholders for this backend.
    pub fn stmt(&self, sql: &str, values: Vec<Value>) -> Statement {
        stmt(self.backend(), sql, values)
    }

    /// Answer every group-committed write queued so far (refusing new
    /// ones), then close the pools.
    pub async fn close(self) -> Result<(), DbErr> {
        if let Some(group) = self.group.get() {
            group.close().await;
        }
        if let Some(conn) = self.group_conn {
            conn.close().await?;
        }
        if self.writer.dedicated {
            self.writer.conn.clone().close().await?;
        }
        self.db.close().await
    }
}

/// Checkpoint the WAL of a SQLite store (`file`) from a pool connection
/// whenever something was committed, until the store is gone. PASSIVE: it
/// never waits for the writer or the readers, and copies what it can.
///
/// Once the WAL is longer than `restart_pages`, it copies again at once
/// until little was appended during its last copy, has the kernel write out
/// the copied pages (and copies and writes out what was appended meanwhile,
/// until little was), and then copies the rest under the writer lock
/// (`writers`), on the writer's connection, which is idle then (a pool
/// connection might have to be waited for, with every writer waiting
/// too). With nothing appended meanwhile, that last copy reaches the
/// end of the WAL, so SQLite syncs the database file (only the few pages
/// just copied are left to write) and the next write starts the WAL over,
/// unless a reader still reads from it; then a later round tries again. It
/// never waits for readers, so a long read cannot hold the writers back.
async fn checkpoints(
    (db, writer): (DatabaseConnection, DatabaseConnection),
    file: PathBuf,
    checkpointing: Checkpointing,
    committed: Weak<watch::Sender<i64>>,
    writers: Weak<Mutex<()>>,
) {
    let mut checkpointed = 0;
    loop {
        tokio::time::sleep(checkpointing.every).await;
        let Some(committed) = committed.upgrade() else { return };
        let now = *committed.borrow();
        drop(committed);
        if now == checkpointed {
            continue;
        }
        let Ok(mut pages) = checkpoint(&db).await else { continue };
        checkpointed = now;
        if pages < checkpointing.restart_pages {
            continue;
        }
        pages = catch_up(&db, pages, None).await;
        if pages < checkpointing.restart_pages {
            continue; // the WAL has started over meanwhile
        }
        // A partial checkpoint writes pages without syncing them: SQLite
        // syncs the database file only when a checkpoint reaches the end
        // of the WAL, which would then write them all under the lock. What
        // is appended while the kernel writes them out is copied and
        // written out in turn, until little was: on a slow disk the first
        // write-out takes long enough for hundreds or thousands of pages to
        // be appended, which the lock would otherwise hold the writers for.
        pages = catch_up(&db, pages, Some(&file)).await;
        if pages < checkpointing.restart_pages {
            continue;
        }
        let Some(writers) = writers.upgrade() else { return };
        let _held = writers.lock().await;
        let started = std::time::Instant::now();
        let rest = checkpoint(&writer).await;
        tracing::debug!(
            wal_pages = pages,
            rest_pages = rest.as_ref().map_or(-1, |p| p - pages),
            held_us = started.elapsed().as_micros() as u64,
            "WAL checkpointed with the writers held back"
        );
    }
}

/// Copy again from the WAL (holding `pages`), at most `CATCH_UP_ROUNDS`
/// times, until a copy finds at most `CATCH_UP_PAGES` new pages (or the WAL
/// started over); before each copy, have the kernel write out the pages
/// copied into `write_out`, the database file, when given. Answer how many
/// pages the WAL holds.
async fn catch_up(db: &DatabaseConnection, mut pages: i64, write_out: Option<&Path>) -> i64 {
    for _ in 0..CATCH_UP_ROUNDS {
        if let Some(file) = write_out {
            let path = file.to_owned();
            let _ = tokio::task::spawn_blocking(move || std::fs::File::open(path)?.sync_data()).await;
        }
        let Ok(next) = checkpoint(db).await else { break };
        let appended = next - pages;
        pages = next;
        if appended <= CATCH_UP_PAGES {
            break;
        }
    }
    pages
}

/// Run a PASSIVE checkpoint; answer how many pages the WAL holds.
async fn checkpoint(db: &DatabaseConnection) -> Result<i64, DbErr> {
    let row = db
        .query_one_raw(Statement::from_string(DatabaseBackend::Sqlite, "PRAGMA wal_checkpoint(PASSIVE)"))
        .await?
        .ok_or_else(|| DbErr::Custom("wal_checkpoint answered no row".into()))?;
    // The row is (busy, pages in the WAL, pages copied).
    row.try_get_by_index::<i64>(1)
}

/// Copy everything the WAL holds into the database and empty it (the
/// writers held back by the caller), and log what it held. Another
/// process reading the file may keep it from being emptied: the
/// background checkpoint starts it over later.
async fn empty_wal(writer: &DatabaseConnection) {
    // Counted first: once emptied, the WAL answers no pages.
    let pages = checkpoint(writer).await.unwrap_or(0);
    let truncate = Statement::from_string(DatabaseBackend::Sqlite, "PRAGMA wal_checkpoint(TRUNCATE)");
    // The row is (busy, pages in the WAL, pages copied).
    let busy = |row: &QueryResult| row.try_get_by_index::<i64>(0).unwrap_or(0) != 0;
    match writer.query_one_raw(truncate).await {
        Ok(Some(row)) if busy(&row) => {
            tracing::warn!(wal_pages = pages, "WAL not emptied at start-up: another connection reads it");
        }
        Ok(_) if pages > 0 => tracing::info!(wal_pages = pages, "WAL copied into the database at start-up"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "WAL not emptied at start-up"),
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

/// A store on a SQLite file in a directory of its own, for tests.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) async fn file_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    let store = Store::connect(&url, 4).await.unwrap();
    (dir, store)
}

/// The file of a SQLite store; `None` for one in memory.
fn sqlite_file(url: &str) -> Option<&Path> {
    let rest = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
    let path = rest.split('?').next()?;
    if path.is_empty() || path.starts_with(":memory:") || rest.contains("mode=memory") {
        return None;
    }
    Some(Path::new(path))
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

/// `statements` as the round trips that run them in order: on SQLite
/// multi-statement chunks (each statement ended by `;`, in chunks that stay
/// far below its limit on bound values), elsewhere the statements
/// themselves (PostgreSQL takes no multi-statement query with parameters).
fn round_trips(backend: DatabaseBackend, statements: Vec<Statement>) -> Vec<Statement> {
    if backend != DatabaseBackend::Sqlite || statements.is_empty() {
        return statements;
    }
    let mut chunks = Vec::new();
    let mut sql = String::new();
    let mut values: Vec<Value> = Vec::new();
    for s in statements {
        let n = s.values.as_ref().map_or(0, |v| v.0.len());
        if !sql.is_empty() && values.len() + n > MAX_DEFERRED_VALUES {
            chunks.push(Statement::from_sql_and_values(backend, std::mem::take(&mut sql), std::mem::take(&mut values)));
        }
        sql.push_str(&s.sql);
        sql.push_str(";\n");
        if let Some(v) = s.values {
            values.extend(v.0);
        }
    }
    chunks.push(Statement::from_sql_and_values(backend, sql, values));
    chunks
}

/// On PostgreSQL, `statements` (each numbering its own `$n` placeholders)
/// as one statement, one round trip: all but the last as data-modifying
/// `WITH` queries of the last. Each runs exactly once, but they run on one
/// snapshot, none sees what another writes, and their order is not kept:
/// only for statements that each change rows no other one touches (see
/// `WriteTxn::combine_deferred_since`). Each must be an `INSERT`, `UPDATE`
/// or `DELETE`, and together they bind at most `MAX_DEFERRED_VALUES`
/// values (PostgreSQL takes 65,535); otherwise, and for a lone statement,
/// `statements` are left as they are, as they are on other backends.
fn combined(backend: DatabaseBackend, statements: Vec<Statement>) -> Vec<Statement> {
    let modifies = |s: &Statement| {
        let head = s.sql.trim_start().get(..6).unwrap_or_default().to_ascii_uppercase();
        matches!(head.as_str(), "INSERT" | "UPDATE" | "DELETE")
    };
    let bound: usize = statements.iter().map(|s| s.values.as_ref().map_or(0, |v| v.0.len())).sum();
    if backend != DatabaseBackend::Postgres
        || statements.len() < 2
        || bound > MAX_DEFERRED_VALUES
        || !statements.iter().all(modifies)
    {
        return statements;
    }
    let last = statements.len() - 1;
    let (mut sql, mut values) = (String::from("WITH "), Vec::new());
    for (i, s) in statements.into_iter().enumerate() {
        match i {
            0 => {}
            i if i == last => sql.push(' '),
            _ => sql.push_str(", "),
        }
        if i < last {
            sql.push_str(&format!("d{i} AS ("));
        }
        shift_placeholders(&s.sql, values.len(), &mut sql);
        if i < last {
            sql.push(')');
        }
        values.extend(s.values.map(|v| v.0).unwrap_or_default());
    }
    vec![Statement::from_sql_and_values(backend, sql, values)]
}

/// Append `sql` to `out` with each PostgreSQL placeholder `$n` outside
/// quotes renumbered `$(n + by)`.
fn shift_placeholders(sql: &str, by: usize, out: &mut String) {
    let mut quote: Option<char> = None;
    let mut chars = sql.chars().peekable();
    while let Some(ch) = chars.next() {
        out.push(ch);
        match (quote, ch) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(ch),
            (None, '$') if chars.peek().is_some_and(char::is_ascii_digit) => {
                let mut n = 0_usize;
                while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
                    n = n * 10 + d as usize;
                    chars.next();
                }
                out.push_str(&(n + by).to_string());
            }
            (None, _) => {}
        }
    }
}

/// Run `statements` through `c` in order, for their effects only: on
/// SQLite in one round trip (see [`round_trips`]), elsewhere one by one.
pub async fn execute_all<C: ConnectionTrait>(c: &C, statements: Vec<Statement>) -> Result<(), DbErr> {
    for chunk in round_trips(c.get_database_backend(), statements) {
        c.execute_raw(chunk).await?;
    }
    Ok(())
}

/// Run `writes` (for their effects only), then `query`, returning its rows:
/// on SQLite in one round trip when the writes fit in one chunk (see
/// [`round_trips`]), elsewhere one statement after another.
pub async fn query_all_after<C: ConnectionTrait>(
    c: &C,
    writes: Vec<Statement>,
    query: Statement,
) -> Result<Vec<QueryResult>, DbErr> {
    let (chunks, query) = before_query(c.get_database_backend(), round_trips(c.get_database_backend(), writes), query);
    for chunk in chunks {
        c.execute_raw(chunk).await?;
    }
    c.query_all_raw(query).await
}

/// The round trips that run `chunks` of writes and then `query`: on SQLite
/// the last chunk goes with the query.
fn before_query(backend: DatabaseBackend, mut chunks: Vec<Statement>, query: Statement) -> (Vec<Statement>, Statement) {
    let query = match chunks.pop() {
        Some(last) if backend == DatabaseBackend::Sqlite => {
            let mut values = last.values.map(|v| v.0).unwrap_or_default();
            values.extend(query.values.map(|v| v.0).unwrap_or_default());
            Statement::from_sql_and_values(backend, format!("{}{}", last.sql, query.sql), values)
        }
        Some(last) => {
            chunks.push(last);
            query
        }
        None => query,
    };
    (chunks, query)
}

/// Where the sequences of a group-committed batch come from: the event
/// log's head is read (and on PostgreSQL locked) by the batch's first
/// append, each append takes the next number, and the head row is written
/// once, just before the batch commits. A write rolled back to its
/// savepoint gives its numbers back by leaving the batch's copy as it was.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct BatchHead {
    /// The head as read by the first append.
    read: Option<i64>,
    /// The last sequence handed out.
    head: Option<i64>,
    /// Whether the head is already stored (queued with the deferred
    /// statements, see `WriteTxn::defer_head`).
    stored: bool,
}

impl BatchHead {
    /// The last sequence handed out in the batch, if any.
    pub(crate) fn last(&self) -> Option<i64> {
        self.head.filter(|h| Some(*h) != self.read)
    }

    /// Store the batch's head in `tx` (outside any savepoint), checking
    /// that nobody moved it since it was read.
    pub(crate) async fn store<C: ConnectionTrait>(&self, tx: &C) -> Result<(), DbErr> {
        let (Some(read), Some(head)) = (self.read, self.head) else { return Ok(()) };
        if read == head || self.stored {
            return Ok(());
        }
        let moved = tx
            .execute_raw(stmt(
                tx.get_database_backend(),
                "UPDATE event_log_head SET last_sequence = ? WHERE id = 1 AND last_sequence = ?",
                vec![head.into(), read.into()],
            ))
            .await?
            .rows_affected();
        if moved == 1 {
            Ok(())
        } else {
            Err(DbErr::Custom("the event log head moved during a group-committed batch".into()))
        }
    }
}

/// Read the event log's head, locking its row until the transaction ends
/// (PostgreSQL; the SQLite writer lock already excludes other writers).
async fn read_head_for_batch<C: ConnectionTrait>(c: &C) -> Result<i64, DbErr> {
    let sql = match c.get_database_backend() {
        DatabaseBackend::Postgres => "SELECT last_sequence FROM event_log_head WHERE id = 1 FOR UPDATE",
        _ => "SELECT last_sequence FROM event_log_head WHERE id = 1",
    };
    let row = c
        .query_one_raw(stmt(c.get_database_backend(), sql, vec![]))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("event_log_head".into()))?;
    row.try_get_by_index(0)
}

/// The read a write queued by `Store::group_commit_with_lookup` begins
/// with: a query returning at most one row, which the write takes with
/// `WriteTxn::looked_up`. On SQLite, a batch reads the lookups of its
/// writes together, in one round trip before the first of them runs.
#[derive(Debug, Clone)]
pub struct Lookup {
    pub(crate) query: Statement,
    /// The idempotency key (scope, request id) the query reads, if any.
    pub(crate) key: Option<(String, String)>,
    /// How to read it with others of its kind.
    pub(crate) batched: Option<Batched>,
}

/// How lookups of one kind are read together (see `Lookup::batched`).
#[derive(Debug, Clone)]
pub(crate) struct Batched {
    kind: &'static str,
    sql: fn(usize) -> String,
    row: Vec<Value>,
}

impl Lookup {
    /// A lookup by `query` (built for the store's backend).
    pub fn new(query: Statement) -> Self {
        Lookup { query, key: None, batched: None }
    }

    /// Let a batch read this lookup with the other lookups of the same
    /// `kind` in one query (SQLite): `sql(n)` reads n of them, given for
    /// each in turn its index among them and then its `row` of values, and
    /// answers for each at most one row, with the columns of `query` and
    /// then the index, named `lookup_index` (a `VALUES` list joined to the
    /// tables reads far faster than a `UNION ALL` of the single queries).
    /// Without it, the lookup is read on its own when the write asks.
    pub fn batched(mut self, kind: &'static str, sql: fn(usize) -> String, row: Vec<Value>) -> Self {
        self.batched = Some(Batched { kind, sql, row });
        self
    }

    /// Note that the query reads the idempotency key `request_id` of
    /// `scope` (nothing for an empty id): should a write before this one in
    /// the same batch store that key (`idempotency::record_later`), the
    /// query is run again for this write, after that write's statements.
    pub fn with_idempotency_key(mut self, scope: &str, request_id: &str) -> Self {
        self.key = (!request_id.is_empty()).then(|| (scope.to_owned(), request_id.to_owned()));
        self
    }
}

/// A place among a write's deferred statements (see
/// `WriteTxn::deferred_mark`).
#[derive(Debug, Clone, Copy)]
pub struct DeferredMark {
    flushes: u64,
    len: usize,
}

/// What `WriteTxn::looked_up` answers.
enum Looked {
    /// Read with the other lookups of the batch.
    Row(Option<QueryResult>),
    /// To read when asked (after the deferred statements before it).
    Query(Statement),
}

/// A write transaction. Events appended in it reach the feed's live tail
/// when it commits; dropped uncommitted, it rolls back. In a group-committed
/// batch it is one write's savepoint inside the batch's transaction.
pub struct WriteTxn {
    tx: DatabaseTransaction,
    _guard: Option<OwnedMutexGuard<()>>,
    appended: Option<i64>,
    committed: Arc<watch::Sender<i64>>,
    /// In a batch, the batch's sequences; otherwise `None` (each append
    /// reserves its number in the head row).
    batch: Option<BatchHead>,
    /// Statements to run when the write ends (see `defer`).
    deferred: Vec<Statement>,
    /// How many times deferred statements were taken to run (see
    /// `deferred_mark`).
    flushes: u64,
    /// The lookup of the write running (see `looked_up`).
    looked: Option<Looked>,
    /// The idempotency keys stored by the writes so far, for the lookups
    /// read ahead of them (see `Lookup::with_idempotency_key`).
    recorded: HashSet<(String, String)>,
    /// What this process's writes changed (see `crate::changes`).
    changes: Arc<Changes>,
    /// What the write running declared it changes (see `touches`).
    touched: Touched,
    /// Whether the group commit numbers and records the writes run in
    /// this transaction; otherwise its commit records it.
    numbered: bool,
}

impl WriteTxn {
    /// A savepoint in this batch's transaction, for one of its writes.
    pub(crate) async fn savepoint(&self) -> Result<WriteTxn, DbErr> {
        let tx = self.tx.begin().await?;
        Ok(WriteTxn {
            tx,
            _guard: None,
            appended: None,
            committed: self.committed.clone(),
            batch: self.batch,
            deferred: Vec::new(),
            flushes: 0,
            looked: None,
            recorded: HashSet::new(),
            changes: self.changes.clone(),
            touched: Touched::default(),
            numbered: true,
        })
    }

    /// Release this savepoint (its deferred statements must have run);
    /// returns the batch's sequences after it.
    pub(crate) async fn release(self) -> Result<BatchHead, DbErr> {
        let batch = self.batch.unwrap_or_default();
        self.tx.commit().await?;
        Ok(batch)
    }

    /// Declare that this write changes what `tokens` name (see
    /// `crate::changes::token`), and, unless it declares more, nothing
    /// else that a read outside it could depend on. A write that declares
    /// nothing changes everything.
    pub fn touches(&mut self, tokens: impl IntoIterator<Item = u64>) {
        self.touched.add(tokens);
    }

    /// Declare that this write may change anything, whatever it declared
    /// before (it did more than its tokens tell).
    pub fn touches_everything(&mut self) {
        self.touched = Touched::Everything;
    }

    /// Whether a write begun after `mark` (see `Store::settled`) changed
    /// anything `tokens` name, as far as this process knows: if so, a read
    /// made from `mark` must be made again, inside this write. The writes
    /// before this one in its batch count.
    pub fn changed_since(&self, mark: WriteMark, tokens: &[u64]) -> bool {
        self.changes.changed_since(mark, tokens)
    }

    /// Take what the write that ran declared, for the next one.
    pub(crate) fn take_touched(&mut self) -> Touched {
        std::mem::take(&mut self.touched)
    }

    /// The record of what writes changed.
    pub(crate) fn changes(&self) -> &Arc<Changes> {
        &self.changes
    }

    /// Have the group commit number and record the writes of this
    /// transaction (see `numbered`).
    pub(crate) fn set_numbered(&mut self) {
        self.numbered = true;
    }

    /// Run `stmt` when this write ends, with the write's other deferred
    /// statements — on SQLite all in one round trip. For writes whose
    /// outcome the write does not look at and that nothing in the write
    /// reads back: they run in order after the write's own work, before the
    /// next write of a batch reads anything (with its first read, for a
    /// write queued by `Store::group_commit_read_first`) and before the
    /// commit, and their failure fails the write.
    pub fn defer(&mut self, stmt: Statement) {
        self.deferred.push(stmt);
    }

    /// [`defer`](Self::defer) each of `stmts`, in order.
    pub fn defer_all(&mut self, stmts: impl IntoIterator<Item = Statement>) {
        self.deferred.extend(stmts);
    }

    /// Where the statements deferred from now on begin (see
    /// [`combine_deferred_since`](Self::combine_deferred_since)).
    pub fn deferred_mark(&self) -> DeferredMark {
        DeferredMark { flushes: self.flushes, len: self.deferred.len() }
    }

    /// Declare the statements deferred since `mark` independent of each
    /// other: each changes only rows that none of the others changes, and
    /// none needs another to have run first. On PostgreSQL they then run as
    /// one statement (one round trip rather than one each, see
    /// [`combined`]); SQLite runs deferred statements in one round trip
    /// anyway. Nothing changes if they already ran.
    pub fn combine_deferred_since(&mut self, mark: DeferredMark) {
        if mark.flushes != self.flushes || mark.len >= self.deferred.len() {
            return;
        }
        let tail = self.deferred.split_off(mark.len);
        self.deferred.extend(combined(self.tx.get_database_backend(), tail));
    }

    /// Store the response of a fresh idempotency claim (as
    /// `idempotency::complete_for`) with this write's deferred statements.
    pub fn complete_later<R: prost::Message>(&mut self, scope: &str, request_id: &str, subject: &str, response: &R) {
        if let Some(stmt) = crate::idempotency::complete_statement(self, scope, request_id, subject, response) {
            self.deferred.push(stmt);
        }
    }

    /// Run the deferred statements, in order: on SQLite as one
    /// multi-statement round trip (in chunks that stay far below its limit
    /// on bound values), elsewhere one by one. In a group-committed batch,
    /// those of the writes before this one too: a write that took its
    /// lookup read ahead (`looked_up`) calls this before it reads anything
    /// else, so that the read sees what the writes before it wrote.
    pub async fn flush_deferred(&mut self) -> Result<(), DbErr> {
        for chunk in self.take_deferred() {
            self.tx.execute_raw(chunk).await?;
        }
        Ok(())
    }

    /// Run the deferred statements — in a group-committed batch, those of
    /// the writes before this one too (see `Store::group_commit_read_first`)
    /// — then `query`, and return its first row: on SQLite in one round
    /// trip.
    pub async fn query_one_after_deferred(&mut self, query: Statement) -> Result<Option<QueryResult>, DbErr> {
        let query = self.run_deferred_before(query).await?;
        self.tx.query_one_raw(query).await
    }

    /// The first row of the lookup this write was queued with
    /// (`Store::group_commit_with_lookup`): read ahead with the other
    /// lookups of its batch, or else now, with the deferred statements
    /// before it (as `query_one_after_deferred`). Read ahead, it is
    /// current but for what the writes before it in the batch wrote, which
    /// by the contract of `group_commit_with_lookup` is nothing it reads;
    /// their deferred statements may not have run yet, so the write calls
    /// `flush_deferred` before it reads anything else.
    pub async fn looked_up(&mut self) -> Result<Option<QueryResult>, DbErr> {
        match self.looked.take() {
            Some(Looked::Row(row)) => Ok(row),
            Some(Looked::Query(query)) => self.query_one_after_deferred(query).await,
            None => Err(DbErr::Custom("a write without a lookup asked for it (or asked twice)".into())),
        }
    }

    /// Give the write about to run its lookup: `row` if it was read ahead
    /// and no write before it in the batch stored the idempotency key it
    /// reads, else the query.
    pub(crate) fn set_lookup(&mut self, lookup: Option<&Lookup>, row: Option<Option<QueryResult>>) {
        self.looked = lookup.map(|l| match row {
            Some(row) if l.key.as_ref().is_none_or(|k| !self.recorded.contains(k)) => Looked::Row(row),
            _ => Looked::Query(l.query.clone()),
        });
    }

    /// Note that this write stores idempotency key `request_id` of `scope`
    /// (see `Lookup::with_idempotency_key`).
    pub(crate) fn note_recorded(&mut self, scope: &str, request_id: &str) {
        self.recorded.insert((scope.to_owned(), request_id.to_owned()));
    }

    /// On SQLite, read the lookups at the start of `lookups` that are of
    /// the first one's kind (see `Lookup::batched`) in one round trip, with
    /// the deferred statements before them, and in a batch that has not read
    /// the event log's head yet, the head too: the first row of each of
    /// them, in order. Otherwise nothing (each is read when asked).
    pub(crate) async fn read_ahead(&mut self, lookups: &[&Lookup]) -> Result<Option<Vec<Option<QueryResult>>>, DbErr> {
        let Some(first) = lookups.first().and_then(|l| l.batched.as_ref()) else { return Ok(None) };
        if self.tx.get_database_backend() != DatabaseBackend::Sqlite {
            return Ok(None);
        }
        let mut values: Vec<Value> = Vec::new();
        let mut n = 0;
        for b in lookups.iter().map_while(|l| l.batched.as_ref().filter(|b| b.kind == first.kind)) {
            values.push((n as i64).into());
            values.extend(b.row.iter().cloned());
            n += 1;
        }
        let with_head = self.batch.is_some_and(|b| b.read.is_none());
        let sql = if with_head {
            format!(
                "SELECT *, (SELECT last_sequence FROM event_log_head WHERE id = 1) AS lookup_head FROM ({})",
                (first.sql)(n)
            )
        } else {
            (first.sql)(n)
        };
        let query = Statement::from_sql_and_values(DatabaseBackend::Sqlite, sql, values);
        let rows = self.query_all_after_deferred(query).await?;
        let mut out: Vec<Option<QueryResult>> = (0..n).map(|_| None).collect();
        for row in rows {
            if with_head
                && let Some(batch) = &mut self.batch
                && batch.read.is_none()
            {
                let head: i64 = row.try_get("", "lookup_head")?;
                batch.read = Some(head);
                batch.head = Some(head);
            }
            let i: i64 = row.try_get("", "lookup_index")?;
            if let Some(slot) = usize::try_from(i).ok().and_then(|i| out.get_mut(i))
                && slot.is_none()
            {
                *slot = Some(row);
            }
        }
        Ok(Some(out))
    }

    /// [`query_one_after_deferred`](Self::query_one_after_deferred),
    /// returning every row of `query`.
    pub async fn query_all_after_deferred(&mut self, query: Statement) -> Result<Vec<QueryResult>, DbErr> {
        let query = self.run_deferred_before(query).await?;
        self.tx.query_all_raw(query).await
    }

    /// Run the deferred statements but those that go with `query` (on
    /// SQLite the last chunk, see [`before_query`]), and return the query
    /// to run with them.
    async fn run_deferred_before(&mut self, query: Statement) -> Result<Statement, DbErr> {
        let deferred = self.take_deferred();
        let (chunks, query) = before_query(self.tx.get_database_backend(), deferred, query);
        for chunk in chunks {
            self.tx.execute_raw(chunk).await?;
        }
        Ok(query)
    }

    /// The deferred statements as the round trips that run them (see
    /// [`round_trips`]).
    fn take_deferred(&mut self) -> Vec<Statement> {
        self.flushes += 1;
        round_trips(self.tx.get_database_backend(), std::mem::take(&mut self.deferred))
    }

    /// On SQLite, queue the batch's head with the deferred statements, so
    /// that the batch's last round trip before COMMIT stores it too. The
    /// batch read the head in this transaction, which holds the database's
    /// write lock, so nobody can have moved it (PostgreSQL keeps the checked
    /// update of `BatchHead::store`).
    pub(crate) fn defer_head(&mut self) {
        if self.tx.get_database_backend() != DatabaseBackend::Sqlite {
            return;
        }
        let Some(batch) = &mut self.batch else { return };
        let (Some(read), Some(head)) = (batch.read, batch.head) else { return };
        if read == head || batch.stored {
            return;
        }
        batch.stored = true;
        self.deferred.push(stmt(
            DatabaseBackend::Sqlite,
            "UPDATE event_log_head SET last_sequence = ? WHERE id = 1",
            vec![head.into()],
        ));
    }

    /// Take the sequences a released savepoint handed out.
    pub(crate) fn adopt(&mut self, batch: BatchHead) {
        self.batch = Some(batch);
    }

    /// Store the batch's head, commit, then wake the feed's tails.
    pub(crate) async fn commit_batch(mut self) -> Result<(), DbErr> {
        if let Some(batch) = self.batch {
            batch.store(&self.tx).await?;
            if let Some(last) = batch.last() {
                self.appended = Some(last);
            }
        }
        self.commit().await
    }

    /// The next sequence: reserved in the head row, or the batch's next.
    async fn next_sequence(&mut self) -> Result<i64, DbErr> {
        let Some(batch) = &mut self.batch else { return eventlog::reserve(&self.tx).await };
        let current = match batch.head {
            Some(h) => h,
            None => {
                let h = read_head_for_batch(&self.tx).await?;
                batch.read = Some(h);
                h
            }
        };
        batch.head = Some(current + 1);
        Ok(current + 1)
    }

    /// The next sequence, as an append would take it (tests).
    #[cfg(test)]
    pub(crate) async fn next_sequence_for_test(&mut self) -> Result<i64, DbErr> {
        self.next_sequence().await
    }

    /// Append `event` to the event log under `key` (the customer or profile
    /// it concerns); returns its sequence, gap-free in commit order.
    pub async fn append<E: FeedEvent>(&mut self, key: &str, event: &E) -> Result<i64, DbErr> {
        let sequence = self.next_sequence().await?;
        self.insert_event(sequence, key, event.kind(), &event.encode_to_vec()).await?;
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
        let sequence = self.next_sequence().await?;
        let mut event = build(sequence);
        event.set_sequence(sequence);
        self.insert_event(sequence, key, event.kind(), &event.encode_to_vec()).await?;
        self.appended = Some(sequence);
        Ok((sequence, event))
    }

    /// Store an event: in a batch with the write's deferred statements
    /// (nothing in a write reads its own event back), else at once.
    async fn insert_event(&mut self, sequence: i64, key: &str, kind: &str, payload: &[u8]) -> Result<(), DbErr> {
        if self.batch.is_none() {
            return eventlog::insert(&self.tx, sequence, key, kind, payload).await;
        }
        let stmt = eventlog::insert_statement(self.tx.get_database_backend(), sequence, key, kind, payload);
        self.deferred.push(stmt);
        Ok(())
    }

    /// Run the deferred statements, commit, then wake the feed's tails.
    pub async fn commit(mut self) -> Result<(), DbErr> {
        self.flush_deferred().await?;
        let WriteTxn { tx, _guard, appended, committed, changes, touched, numbered, .. } = self;
        tx.commit().await?;
        // Recorded before the next writer may begin (on SQLite it waits
        // for the lock held here).
        if !numbered {
            changes.ended(touched);
        }
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
    use crm_proto::identification::v1::ProfileEvent;

    use super::*;

    #[test]
    fn placeholders_are_numbered_for_postgres_only() {
        let s = stmt(DatabaseBackend::Postgres, "SELECT a FROM t WHERE b = ? AND c = ?", vec![1.into(), 2.into()]);
        assert_eq!(s.sql, "SELECT a FROM t WHERE b = $1 AND c = $2");
        let s = stmt(DatabaseBackend::Sqlite, "SELECT a FROM t WHERE b = ?", vec![1.into()]);
        assert_eq!(s.sql, "SELECT a FROM t WHERE b = ?");
    }

    #[test]
    fn independent_statements_become_one_on_postgres_with_placeholders_renumbered() {
        let pg = DatabaseBackend::Postgres;
        let statements = vec![
            stmt(pg, "INSERT INTO t (a, b) VALUES (?, ?)", vec![1.into(), 2.into()]),
            stmt(pg, "UPDATE t SET b = ? WHERE a = ? AND c <> '$1' AND \"$2\" = 0", vec![3.into(), 4.into()]),
            stmt(pg, "delete FROM u WHERE x IN (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", (5..15).map(Value::from).collect()),
        ];
        let one = combined(pg, statements.clone());
        assert_eq!(one.len(), 1);
        assert_eq!(
            one[0].sql,
            "WITH d0 AS (INSERT INTO t (a, b) VALUES ($1, $2)), \
             d1 AS (UPDATE t SET b = $3 WHERE a = $4 AND c <> '$1' AND \"$2\" = 0) \
             delete FROM u WHERE x IN ($5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
        );
        assert_eq!(one[0].values.as_ref().map(|v| v.0.clone()), Some((1..15).map(Value::from).collect()));
        // A lone statement, one that is not a change, and SQLite: as they are.
        assert_eq!(combined(pg, statements[..1].to_vec())[0].sql, statements[0].sql);
        let select = stmt(pg, "SELECT 1", vec![]);
        assert_eq!(combined(pg, vec![statements[0].clone(), select]).len(), 2);
        let marks = vec!["?"; MAX_DEFERRED_VALUES].join(", ");
        let many = stmt(pg, &format!("DELETE FROM u WHERE x IN ({marks})"), vec![0.into(); MAX_DEFERRED_VALUES]);
        assert_eq!(combined(pg, vec![statements[0].clone(), many]).len(), 2);
        let lite = DatabaseBackend::Sqlite;
        let on_sqlite = vec![stmt(lite, "INSERT INTO t (a) VALUES (?)", vec![1.into()]); 2];
        assert_eq!(combined(lite, on_sqlite).len(), 2);
    }

    #[test]
    fn sqlite_file_is_found() {
        assert_eq!(sqlite_file("sqlite://./data/x.db?mode=rwc"), Some(Path::new("./data/x.db")));
        assert_eq!(sqlite_file("sqlite:x.db"), Some(Path::new("x.db")));
        assert_eq!(sqlite_file("sqlite::memory:"), None);
        assert_eq!(sqlite_file("sqlite://"), None);
        assert_eq!(sqlite_file("sqlite://shared?mode=memory&cache=shared"), None);
    }

    /// A statement whose plan may depend on a bound value (a bound LIMIT,
    /// as feed and list reads have, and the candidates read of matching)
    /// is compiled again whenever that value is bound anew, unless SQLite
    /// was built with the query planner stability guarantee (see
    /// `.cargo/config.toml`): cached statements would be compiled on every
    /// run.
    #[tokio::test]
    async fn sqlite_plans_never_depend_on_bound_values() {
        let store = Store::connect("sqlite::memory:", 1).await.unwrap();
        let option = Statement::from_string(DatabaseBackend::Sqlite, "SELECT sqlite_compileoption_used('ENABLE_QPSG')");
        let used: i64 = store.conn().query_one_raw(option).await.unwrap().unwrap().try_get_by_index(0).unwrap();
        assert_eq!(used, 1, "SQLite was built without SQLITE_ENABLE_QPSG");
    }

    /// SQLite was built so that connections on different threads do not
    /// wait for each other's page fetches and allocations (see
    /// `.cargo/config.toml`).
    #[tokio::test]
    async fn sqlite_connections_share_no_lock_for_pages_or_memory() {
        let store = Store::connect("sqlite::memory:", 1).await.unwrap();
        let options = Statement::from_string(
            DatabaseBackend::Sqlite,
            "SELECT sqlite_compileoption_used('ENABLE_MEMORY_MANAGEMENT'), \
             (SELECT COUNT(*) FROM pragma_compile_options WHERE compile_options = 'DEFAULT_MEMSTATUS=0')",
        );
        let row = store.conn().query_one_raw(options).await.unwrap().unwrap();
        let (shared_caches, uncounted): (i64, i64) =
            (row.try_get_by_index(0).unwrap(), row.try_get_by_index(1).unwrap());
        assert_eq!((shared_caches, uncounted), (0, 1), "built with ENABLE_MEMORY_MANAGEMENT or with memory counted");
    }

    /// The writer reads a SQLite file through a memory map; readers do not
    /// (SQLite drops a reader's whole map at nearly every read while writes
    /// flow, see `MMAP_BYTES`).
    #[tokio::test]
    async fn only_the_sqlite_writer_maps_the_file() {
        let (_dir, store) = file_store().await;
        let mmap_size = || Statement::from_string(DatabaseBackend::Sqlite, "PRAGMA mmap_size");
        let reader: i64 = store.conn().query_one_raw(mmap_size()).await.unwrap().unwrap().try_get_by_index(0).unwrap();
        let tx = store.begin_write().await.unwrap();
        let writer: i64 = tx.query_one_raw(mmap_size()).await.unwrap().unwrap().try_get_by_index(0).unwrap();
        tx.rollback().await.unwrap();
        assert_eq!((reader, writer), (0, MMAP_BYTES as i64));
        store.close().await.unwrap();
    }

    /// A store on a SQLite file checkpointed as `checkpointing` says, with
    /// a table `t` of blobs; its WAL's path.
    async fn wal_store(checkpointing: Checkpointing) -> (tempfile::TempDir, Store, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("w.db").display());
        let wal = dir.path().join("w.db-wal");
        let store = Store::connect_with(&url, 4, checkpointing).await.unwrap();
        store.conn().execute_unprepared("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB NOT NULL)").await.unwrap();
        (dir, store, wal)
    }

    /// A store whose WAL is checkpointed by nothing but what a test does
    /// (no background rounds, no automatic checkpoint), cut back to
    /// `wal_limit_bytes` when it starts over.
    async fn manual_wal_store(wal_limit_bytes: i64) -> (tempfile::TempDir, Store, PathBuf) {
        let every = Duration::from_secs(3_600);
        wal_store(Checkpointing { every, restart_pages: i64::MAX, autocheckpoint_pages: 1_000_000, wal_limit_bytes })
            .await
    }

    /// Write `n` rows of 16 KiB in one transaction of the writer.
    async fn write_rows(store: &Store, n: usize) {
        let tx = store.begin_write().await.unwrap();
        for i in 0..n {
            tx.execute_raw(store.stmt("INSERT INTO t (body) VALUES (?)", vec![vec![i as u8; 16 << 10].into()]))
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
    }

    fn len(path: &Path) -> u64 {
        std::fs::metadata(path).map_or(0, |m| m.len())
    }

    /// One big transaction grows the WAL past anything the steady flow
    /// needs; once the WAL starts over, the file is cut back to the limit.
    #[tokio::test]
    async fn a_wal_grown_by_one_big_transaction_is_cut_back_when_it_starts_over() {
        let limit = 64 << 10;
        let (_dir, store, wal) = manual_wal_store(limit).await;
        write_rows(&store, 64).await;
        assert!(len(&wal) > 1 << 20, "the WAL holds the rows: {} bytes", len(&wal));
        // Everything copied, then the next write starts the WAL over.
        let passive = Statement::from_string(DatabaseBackend::Sqlite, "PRAGMA wal_checkpoint(PASSIVE)");
        let row = store.conn().query_one_raw(passive).await.unwrap().unwrap();
        let (pages, copied): (i64, i64) = (row.try_get_by_index(1).unwrap(), row.try_get_by_index(2).unwrap());
        assert_eq!(pages, copied, "no reader holds the WAL");
        write_rows(&store, 1).await;
        assert!(len(&wal) <= limit as u64, "the WAL kept {} bytes (limit {limit})", len(&wal));
        store.close().await.unwrap();
    }

    /// Whatever the WAL holds when a store starts (a migration's rebuilt
    /// tables) is copied into the database, and the WAL emptied.
    #[tokio::test]
    async fn migrations_leave_the_wal_empty() {
        let (_dir, store, wal) = manual_wal_store(CHECKPOINTING.wal_limit_bytes).await;
        write_rows(&store, 64).await;
        assert!(len(&wal) > 1 << 20);
        store.migrate::<crate::migration::RuntimeMigrator>().await.unwrap();
        assert_eq!(len(&wal), 0);
        let count = Statement::from_string(DatabaseBackend::Sqlite, "SELECT COUNT(*) FROM t");
        let rows: i64 = store.conn().query_one_raw(count).await.unwrap().unwrap().try_get_by_index(0).unwrap();
        assert_eq!(rows, 64, "every row kept");
        store.close().await.unwrap();
    }

    /// What a WAL emptied at start-up held is logged (a count of pages,
    /// nothing of their content).
    #[tokio::test]
    async fn a_wal_emptied_at_start_up_is_logged_with_its_pages() {
        #[derive(Clone, Default)]
        struct Logs(Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Logs {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let (_dir, store, _wal) = manual_wal_store(CHECKPOINTING.wal_limit_bytes).await;
        write_rows(&store, 64).await;
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish();
        let guard = tracing::subscriber::set_default(subscriber);
        store.migrate::<crate::migration::RuntimeMigrator>().await.unwrap();
        drop(guard);
        let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        let line = text.lines().find(|l| l.contains("WAL copied into the database at start-up"));
        let pages: i64 = line
            .and_then(|l| l.split("wal_pages=").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no count of pages logged: {text}"));
        assert!(pages > 64 * 4, "64 rows of 16 KiB are more than {pages} pages");
        store.close().await.unwrap();
    }

    /// Under writes that never pause, a background checkpoint alone never
    /// catches up with the WAL, and SQLite only starts a WAL over once all
    /// of it was copied: the WAL would grow until the writer checkpoints it
    /// itself (here never: the writer's own checkpoint waits for more pages
    /// than are written). The background checkpoint starts it over long
    /// before, even on a machine too busy to run it on time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_starts_over_under_writes_that_never_pause() {
        let checkpointing = Checkpointing { every: Duration::from_millis(10), restart_pages: 64, ..CHECKPOINTING };
        let (_dir, store, wal) = wal_store(checkpointing).await;
        store.migrate::<crate::migration::RuntimeMigrator>().await.unwrap();
        let page = 4_096_u64;
        let (mut written, mut longest) = (0_u64, 0_u64);
        let total = 8_192 * page;
        while written < total {
            let mut tx = store.begin_write().await.unwrap();
            tx.append("wal", &ProfileEvent::default()).await.unwrap();
            let body = vec![written as u8; 3 * page as usize];
            tx.execute_raw(store.stmt("INSERT INTO t (body) VALUES (?)", vec![body.into()])).await.unwrap();
            tx.commit().await.unwrap();
            written += 3 * page;
            longest = longest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
        }
        let rows =
            store.conn().query_one_raw(Statement::from_string(DatabaseBackend::Sqlite, "SELECT COUNT(*) FROM t"));
        let rows: i64 = rows.await.unwrap().unwrap().try_get_by_index(0).unwrap();
        assert_eq!(rows as u64, written / (3 * page));
        // Without the background checkpoint's restarts the WAL holds every
        // page written, and more (the tree's pages, the event log's): twice
        // `total` here.
        let limit = total;
        assert!(longest < limit, "the WAL grew to {longest} bytes (limit {limit}) while {written} were written");
        store.close().await.unwrap();
    }
}
