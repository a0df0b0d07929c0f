//! Group commit: short writes from many callers share one transaction and
//! one commit.
//!
//! `Store::group_commit` queues a write — a closure run against a
//! `WriteTxn` — for the store's writer task. The writer takes every write
//! queued (up to `MAX_BATCH`), runs them one after the other in one
//! transaction and commits once: one fsync (and on SQLite one WAL append)
//! for the whole batch. A write that fails is rolled back alone and
//! answered with its error; the others commit. Each caller is answered
//! only after the batch committed, and the feed's tails are woken then.
//!
//! Every statement is a round trip to the database (on SQLite, to the
//! connection's thread), and the writer runs them one after the other: a
//! write's deferred statements (`WriteTxn::defer`: its event, the rows it
//! inserts and does not read back, its idempotent response) run together
//! when the write's own work is done, on SQLite in one round trip, and on
//! PostgreSQL as one statement when the write declares them independent
//! (`WriteTxn::combine_deferred_since`).
//!
//! Rolling back one write alone takes a SAVEPOINT around each write, two
//! more statements per write. While writes succeed the batch runs without
//! them; when one fails, the batch is rolled back and run again with a
//! savepoint per write, and so are the batches after it until one passes
//! without a failure.
//!
//! Sequences stay gap-free in commit order: the batch reads the event
//! log's head at its first append (on PostgreSQL locking the head row, as
//! every appender does), hands out the following numbers in the order the
//! writes run, gives back the numbers of a write rolled back to its
//! savepoint, and stores the new head once, just before it commits.
//!
//! A write queued by `Store::group_commit_read_first` begins with a read
//! through `WriteTxn::query_one_after_deferred` (or
//! `query_all_after_deferred`): in a batch, the deferred
//! statements of the writes before it run in that read's round trip rather
//! than in one of their own, so while writes succeed a batch of n such
//! writes takes n round trips and a few, not 2n. Whichever write a deferred
//! statement's failure shows in, the batch is run again with savepoints,
//! where every write runs its own deferred statements.
//!
//! A write queued by `Store::group_commit_with_lookup` begins with a
//! `Lookup` (the read it would make first, e.g. its idempotency key and
//! whatever else it decides on). On SQLite, the batch reads the lookups of
//! its writes together (those of one kind in one query, see
//! `Lookup::batched`), with the event log's head, in one round trip before
//! the first of them runs (and again after a write queued otherwise, which
//! may have changed anything): each write then takes its row without a
//! round trip, and a batch of n such writes takes a handful of round trips
//! whatever n is. Rows read ahead are only stale where a write before in
//! the batch changed what a lookup reads: such writes must change nothing
//! their lookups read but idempotency keys, which the batch tracks (a
//! second write with a key stored earlier in the batch reads its lookup
//! again, after that write's statements).
//!
//! Idempotency keys work as in a transaction of one's own: a write claims
//! its `request_id` in the batch's transaction (inside its savepoint when
//! it has one) and its response is stored before the next write runs, so a
//! second write with the same key later in the same batch finds the first
//! one's response and replays it.
//!
//! When something fails that is not one write's own doing — a savepoint
//! that cannot be set or released, the head row, the commit — nothing of
//! the batch is committed, and every write of it is run again alone, in a
//! transaction of its own (a write is a `Fn` for that reason). A write that
//! lost a deadlock or a serialisation conflict inside a batch is run again
//! alone after the batch committed. A write runs alone from the start when
//! it is the only one queued.
//!
//! The writer task lives as long as the store: it answers every queued
//! write before it stops, and `Store::close` waits for that.

use std::{
    panic::AssertUnwindSafe,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
};

use futures::{FutureExt, future::BoxFuture};
use sea_orm::{DbErr, QueryResult, RuntimeErr};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::{
    changes::Changes,
    db::{Lookup, Store, WriteTxn, Writer},
    error::RuntimeError,
};

/// Most writes in one batch.
pub const MAX_BATCH: usize = 256;
/// Writes that may wait in the queue before callers wait to queue theirs.
const QUEUE: usize = 4096;

/// A write for `Store::group_commit`: run against the batch's transaction,
/// possibly more than once (only one run's effects ever commit).
pub type Write<T> =
    Box<dyn for<'a> Fn(&'a mut WriteTxn) -> BoxFuture<'a, Result<T, RuntimeError>> + Send + Sync + 'static>;

/// The store's group-commit queue.
#[derive(Debug)]
pub(crate) struct GroupCommit {
    queue: mpsc::Sender<Message>,
    closed: AtomicBool,
    /// Writes queued and not yet answered.
    waiting: AtomicUsize,
}

enum Message {
    Write(Box<dyn Job>),
    /// Answered once every write queued before it was answered.
    Flush(oneshot::Sender<()>),
}

impl GroupCommit {
    fn start(writer: Writer) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run_writer(writer, rx));
        GroupCommit { queue, closed: AtomicBool::new(false), waiting: AtomicUsize::new(0) }
    }

    /// Refuse new writes, and wait until every queued one is answered.
    pub(crate) async fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.flush().await;
    }

    async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.queue.send(Message::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

impl Store {
    /// Run `write` in a transaction shared with the other writes queued at
    /// the same time, each in its own savepoint, and answer its result
    /// once the shared transaction has committed (see the module docs).
    /// `write` must not keep anything outside the database between runs:
    /// it may run again, alone, when its batch could not commit.
    pub async fn group_commit<T, F>(&self, write: F) -> Result<T, RuntimeError>
    where
        T: Send + 'static,
        F: for<'a> Fn(&'a mut WriteTxn) -> BoxFuture<'a, Result<T, RuntimeError>> + Send + Sync + 'static,
    {
        self.queue_write(Box::new(write), Read::Claim).await
    }

    /// `group_commit` for a write whose first statement is a read made
    /// with `WriteTxn::query_one_after_deferred` (or
    /// `query_all_after_deferred`): in a batch, the deferred
    /// statements of the writes before it run in that read's round trip
    /// instead of one of their own (see the module docs).
    pub async fn group_commit_read_first<T, F>(&self, write: F) -> Result<T, RuntimeError>
    where
        T: Send + 'static,
        F: for<'a> Fn(&'a mut WriteTxn) -> BoxFuture<'a, Result<T, RuntimeError>> + Send + Sync + 'static,
    {
        self.queue_write(Box::new(write), Read::First).await
    }

    /// `group_commit` for a write that begins with `lookup`, which it
    /// takes with `WriteTxn::looked_up` as its first read: on SQLite read
    /// ahead for the whole batch in one round trip (see the module docs).
    /// The write must change nothing that the lookups of other such writes
    /// read, except idempotency keys stored by `idempotency::record_later`,
    /// and must call `WriteTxn::flush_deferred` before any read of its own
    /// after the lookup.
    pub async fn group_commit_with_lookup<T, F>(&self, lookup: Lookup, write: F) -> Result<T, RuntimeError>
    where
        T: Send + 'static,
        F: for<'a> Fn(&'a mut WriteTxn) -> BoxFuture<'a, Result<T, RuntimeError>> + Send + Sync + 'static,
    {
        self.queue_write(Box::new(write), Read::Lookup(lookup)).await
    }

    async fn queue_write<T: Send + 'static>(&self, write: Write<T>, read: Read) -> Result<T, RuntimeError> {
        let group = self.group.get_or_init(|| GroupCommit::start(self.group_writer()));
        if group.closed.load(Ordering::SeqCst) {
            return Err(RuntimeError::Unavailable("the store is closing".into()));
        }
        let (reply, answer) = oneshot::channel();
        // Counted until answered, or until the caller gives up waiting.
        let _waiting = Waiting::count(&group.waiting);
        // The write runs in the writer task under the caller's span, so what
        // it logs and the events it appends belong to the caller's trace.
        let job = Typed { write, read, span: tracing::Span::current(), result: None, reply };
        group
            .queue
            .send(Message::Write(Box::new(job)))
            .await
            .map_err(|_| RuntimeError::Unavailable("the store's writer has stopped".into()))?;
        answer.await.map_err(|_| RuntimeError::Internal("the store's writer stopped before answering".into()))?
    }

    /// How many group-committed writes are queued or running and not yet
    /// answered: none when the writer is idle. A read made beside the writer
    /// on a pool connection (see `crate::changes`) pays only when writes
    /// wait; when none do, a write reads fastest itself (see
    /// `reads_ahead`).
    pub fn writes_waiting(&self) -> usize {
        self.group.get().map_or(0, |g| g.waiting.load(Ordering::Relaxed))
    }

    /// Where a write that decides on what it reads should read before it
    /// is queued (see `crate::changes`), or `None` when it pays to read
    /// inside the write: on a SQLite file always (`Store::reads` reads on
    /// the calling thread, and the writer is left only the write), else
    /// while writes wait for the writer.
    pub fn reads_ahead(&self) -> Option<crate::reads::Reads<'_>> {
        let reads = self.reads();
        (matches!(reads, crate::reads::Reads::Inline(_)) || self.writes_waiting() > 0).then_some(reads)
    }

    /// Wait until every write queued by `group_commit` so far is answered.
    pub async fn flush_group_commit(&self) {
        if let Some(group) = self.group.get() {
            group.flush().await;
        }
    }
}

/// One write counted in `GroupCommit::waiting` while this lives.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn count(waiting: &'a AtomicUsize) -> Self {
        waiting.fetch_add(1, Ordering::Relaxed);
        Waiting(waiting)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How a write's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Done,
    Failed,
    /// Lost a deadlock or a serialisation conflict: worth running alone.
    Conflict,
}

/// How a queued write begins.
enum Read {
    /// With anything (`Store::group_commit`).
    Claim,
    /// With a read that runs the deferred statements before it
    /// (`Store::group_commit_read_first`).
    First,
    /// With its lookup (`Store::group_commit_with_lookup`).
    Lookup(Lookup),
}

/// A queued write with its caller, its type erased.
trait Job: Send {
    /// Whether the write's first statement runs the deferred statements
    /// before it (`Store::group_commit_read_first`, or a lookup).
    fn read_first(&self) -> bool;
    /// The write's lookup (`Store::group_commit_with_lookup`).
    fn lookup(&self) -> Option<&Lookup>;
    /// Run the write in `tx`, keeping its result.
    fn run<'a>(&'a mut self, tx: &'a mut WriteTxn) -> BoxFuture<'a, Outcome>;
    /// Replace the kept result by an error (its effects did not commit).
    fn fail(&mut self, err: RuntimeError);
    /// Answer the caller with the kept result.
    fn answer(self: Box<Self>);
}

struct Typed<T> {
    write: Write<T>,
    read: Read,
    span: tracing::Span,
    result: Option<Result<T, RuntimeError>>,
    reply: oneshot::Sender<Result<T, RuntimeError>>,
}

impl<T: Send + 'static> Job for Typed<T> {
    fn read_first(&self) -> bool {
        !matches!(self.read, Read::Claim)
    }

    fn lookup(&self) -> Option<&Lookup> {
        match &self.read {
            Read::Lookup(l) => Some(l),
            Read::Claim | Read::First => None,
        }
    }

    fn run<'a>(&'a mut self, tx: &'a mut WriteTxn) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let write = (self.write)(tx).instrument(self.span.clone());
            let result = match AssertUnwindSafe(write).catch_unwind().await {
                Ok(r) => r,
                Err(_) => Err(RuntimeError::Internal("a group-committed write panicked".into())),
            };
            let outcome = match &result {
                Ok(_) => Outcome::Done,
                Err(e) if is_conflict(e) => Outcome::Conflict,
                Err(_) => Outcome::Failed,
            };
            self.result = Some(result);
            outcome
        })
    }

    fn fail(&mut self, err: RuntimeError) {
        self.result = Some(Err(err));
    }

    fn answer(self: Box<Self>) {
        let result = self.result.unwrap_or_else(|| Err(RuntimeError::Internal("a queued write never ran".into())));
        // The caller may have gone (its deadline passed): its write stands.
        let _ = self.reply.send(result);
    }
}

/// A deadlock or serialisation failure (PostgreSQL), or a busy database
/// (SQLite, another process writing).
fn is_conflict(err: &RuntimeError) -> bool {
    let RuntimeError::Database(DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e))) = err
    else {
        return false;
    };
    let Some(code) = e.as_database_error().and_then(|d| d.code()) else { return false };
    matches!(&*code, "40P01" | "40001" | "5" | "6" | "517")
}

async fn run_writer(writer: Writer, mut rx: mpsc::Receiver<Message>) {
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_BATCH);
    let mut flushes = Vec::new();
    let mut careful = false;
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Write(job) => batch.push(job),
                Message::Flush(done) => flushes.push(done),
            }
            if batch.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        careful = run_batch(&writer, std::mem::take(&mut batch), careful).await;
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

/// Run `jobs` as one batch and answer each. Returns whether a write of it
/// failed (the next batch then sets savepoints from the start).
async fn run_batch(writer: &Writer, mut jobs: Vec<Box<dyn Job>>, careful: bool) -> bool {
    if jobs.len() == 1
        && let Some(job) = jobs.pop()
    {
        return !run_alone(writer, job).await;
    }
    let mut outcome = commit_together(writer, &mut jobs, careful).await;
    let failed = careful || matches!(outcome, Err(Abandoned::WriteFailed));
    if let Err(Abandoned::WriteFailed) = outcome {
        outcome = commit_together(writer, &mut jobs, true).await;
    }
    match outcome {
        Ok(conflicts) => {
            let mut again = Vec::new();
            for (job, conflict) in jobs.into_iter().zip(conflicts) {
                if conflict { again.push(job) } else { job.answer() }
            }
            for job in again {
                run_alone(writer, job).await;
            }
            failed
        }
        Err(err) => {
            tracing::warn!(error = %err, writes = jobs.len(), "group commit failed; running its writes one by one");
            for job in jobs {
                run_alone(writer, job).await;
            }
            true
        }
    }
}

/// Run one write in a transaction of its own, commit it, answer it.
/// Returns whether it committed.
async fn run_alone(writer: &Writer, mut job: Box<dyn Job>) -> bool {
    let mut tx = match writer.begin().await {
        Ok(tx) => tx,
        Err(e) => {
            job.fail(e.into());
            job.answer();
            return false;
        }
    };
    tx.set_lookup(job.lookup(), None);
    tx.set_numbered();
    let mut numbered = Numbered::new(tx.changes().clone());
    let outcome = numbered.run(&mut job, &mut tx).await;
    let ended = if outcome == Outcome::Done { tx.commit().await } else { tx.rollback().await };
    drop(numbered);
    let committed = match (outcome, ended) {
        (Outcome::Done, Ok(())) => true,
        (Outcome::Done, Err(e)) => {
            job.fail(e.into());
            false
        }
        _ => false,
    };
    job.answer();
    committed
}

/// Why a batch was given up, with nothing committed.
#[derive(Debug, thiserror::Error)]
enum Abandoned {
    /// Run without savepoints, a write failed: run the batch again with them.
    #[error("a write failed")]
    WriteFailed,
    /// The batch's transaction failed.
    #[error(transparent)]
    Database(#[from] DbErr),
}

/// Run `jobs` in one transaction and commit. With `savepoints`, each write
/// runs in its own and one that fails is rolled back alone; without, the
/// first failure abandons the batch (cheaper while writes succeed).
/// Returns which writes lost a conflict (rolled back, to be run alone).
async fn commit_together(writer: &Writer, jobs: &mut [Box<dyn Job>], savepoints: bool) -> Result<Vec<bool>, Abandoned> {
    let mut tx = writer.begin_batch().await?;
    tx.set_numbered();
    let mut numbered = Numbered::new(tx.changes().clone());
    let mut conflicts = vec![false; jobs.len()];
    // Lookups read ahead, by write.
    let mut ahead: Vec<Option<Option<QueryResult>>> = jobs.iter().map(|_| None).collect();
    for i in 0..jobs.len() {
        if !savepoints {
            // The lookups of this write and of the lookup writes right
            // after it are read ahead, together (after a write queued
            // otherwise, which may have changed anything, anew).
            if jobs[i].lookup().is_some() && ahead[i].is_none() {
                let run = jobs[i..].iter().take_while(|j| j.lookup().is_some()).count();
                let lookups: Vec<&Lookup> = jobs[i..i + run].iter().filter_map(|j| j.lookup()).collect();
                match tx.read_ahead(&lookups).await {
                    Ok(Some(rows)) => {
                        for (slot, row) in ahead[i..i + run].iter_mut().zip(rows) {
                            *slot = Some(row);
                        }
                    }
                    Ok(None) => {}
                    Err(_) => {
                        tx.rollback().await?;
                        return Err(Abandoned::WriteFailed);
                    }
                }
            }
            let job = &mut jobs[i];
            tx.set_lookup(job.lookup(), ahead[i].take());
            // The deferred statements of the writes before run with a
            // read-first write's first read, else on their own before it.
            // Whichever write a failure shows in, the batch runs again with
            // savepoints, where each write runs its own.
            if (!job.read_first() && tx.flush_deferred().await.is_err())
                || numbered.run(job, &mut tx).await != Outcome::Done
            {
                tx.rollback().await?;
                return Err(Abandoned::WriteFailed);
            }
            continue;
        }
        let (job, conflict) = (&mut jobs[i], &mut conflicts[i]);
        let mut savepoint = tx.savepoint().await?;
        savepoint.set_lookup(job.lookup(), None);
        let mut outcome = numbered.run(job, &mut savepoint).await;
        if outcome == Outcome::Done
            && let Err(e) = savepoint.flush_deferred().await
        {
            let err = RuntimeError::from(e);
            outcome = if is_conflict(&err) { Outcome::Conflict } else { Outcome::Failed };
            job.fail(err);
        }
        if outcome == Outcome::Done {
            tx.adopt(savepoint.release().await?);
        } else {
            savepoint.rollback().await?;
            *conflict = outcome == Outcome::Conflict;
        }
    }
    if !savepoints {
        tx.defer_head();
        if tx.flush_deferred().await.is_err() {
            tx.rollback().await?;
            return Err(Abandoned::WriteFailed);
        }
    }
    tx.commit_batch().await?;
    drop(numbered);
    Ok(conflicts)
}

/// The numbers of the writes run in one transaction (see
/// `crate::changes`): each run is numbered and what it declared recorded;
/// they end when this is dropped, once the transaction has committed or
/// rolled back.
struct Numbered {
    changes: std::sync::Arc<Changes>,
    runs: Vec<u64>,
}

impl Numbered {
    fn new(changes: std::sync::Arc<Changes>) -> Self {
        Numbered { changes, runs: Vec::new() }
    }

    /// Run `job` in `tx` as a numbered write.
    async fn run(&mut self, job: &mut Box<dyn Job>, tx: &mut WriteTxn) -> Outcome {
        let n = self.changes.begin();
        self.runs.push(n);
        tx.take_touched();
        let outcome = job.run(tx).await;
        self.changes.record(n, tx.take_touched());
        outcome
    }
}

impl Drop for Numbered {
    fn drop(&mut self) {
        self.changes.end(&self.runs);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crm_proto::identification::v1::{ProfileCreated, ProfileEvent, profile_event::Kind};
    use sea_orm::ConnectionTrait;

    use super::*;
    use crate::{
        eventlog,
        idempotency::{self, Claim},
        migration::RuntimeMigrator,
        testing::TestDb,
    };

    /// A store with the runtime's tables, a table of facts and one of
    /// children whose parent must exist when the transaction commits.
    async fn store(db: &TestDb) -> Store {
        let store = Store::connect(&db.url, 8).await.expect("connect");
        store.migrate::<RuntimeMigrator>().await.expect("migrate");
        for sql in [
            "CREATE TABLE facts (id VARCHAR(64) PRIMARY KEY, sequence BIGINT NOT NULL)",
            "CREATE TABLE children (id VARCHAR(64) PRIMARY KEY, parent VARCHAR(64) NOT NULL \
             REFERENCES facts (id) DEFERRABLE INITIALLY DEFERRED)",
        ] {
            store.conn().execute_unprepared(sql).await.expect("create table");
        }
        store
    }

    /// What a test write does.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Mode {
        /// Record the fact.
        Ok,
        /// Record the fact, then refuse (after writing).
        Refuse,
        /// Record the fact and a child naming a missing parent: the
        /// statement passes, the commit fails.
        Orphan,
    }

    /// Record fact `id` idempotently under `request_id`: claim, append its
    /// event, store the fact with its sequence, store the response.
    async fn record(tx: &mut WriteTxn, request_id: &str, id: &str, mode: Mode) -> Result<ProfileEvent, RuntimeError> {
        let fp = idempotency::fingerprint(id.as_bytes());
        if let Claim::Replay(r) = idempotency::claim(tx, "Record", request_id, fp).await? {
            return Ok(r);
        }
        let event = ProfileEvent {
            profile_id: id.to_owned(),
            kind: Some(Kind::ProfileCreated(ProfileCreated::default())),
            ..Default::default()
        };
        let sequence = tx.append(id, &event).await?;
        tx.execute_raw(tx.stmt("INSERT INTO facts (id, sequence) VALUES (?, ?)", vec![id.into(), sequence.into()]))
            .await?;
        match mode {
            Mode::Ok => {}
            Mode::Refuse => return Err(RuntimeError::FailedPrecondition(format!("{id} refused"))),
            Mode::Orphan => {
                tx.execute_raw(tx.stmt(
                    "INSERT INTO children (id, parent) VALUES (?, ?)",
                    vec![format!("child-of-{id}").into(), "no-such-fact".into()],
                ))
                .await?;
            }
        }
        let response = ProfileEvent { sequence, ..event };
        idempotency::complete(tx, "Record", request_id, &response).await?;
        Ok(response)
    }

    /// The test writes' key lookup.
    fn key_lookup(backend: sea_orm::DatabaseBackend, request_id: &str) -> Lookup {
        Lookup::new(crate::db::stmt(
            backend,
            "SELECT fingerprint, response FROM idempotency_keys WHERE scope = ? AND request_id = ?",
            vec!["Record".into(), request_id.into()],
        ))
        .with_idempotency_key("Record", request_id)
        .batched("record-key", keys_sql, vec![request_id.into()])
    }

    /// `n` key lookups in one query.
    fn keys_sql(n: usize) -> String {
        format!(
            "WITH q (lookup_index, request_id) AS (VALUES {}) \
             SELECT k.fingerprint, k.response, q.lookup_index FROM q \
             JOIN idempotency_keys k ON k.scope = 'Record' AND k.request_id = q.request_id",
            vec!["(?, ?)"; n].join(", ")
        )
    }

    /// `record` as a read-first write: the key is looked up by the write's
    /// first statement (or, if `looked`, taken from the write's lookup, see
    /// `key_lookup`), and everything it writes is deferred.
    async fn record_read_first(
        tx: &mut WriteTxn,
        request_id: &str,
        id: &str,
        mode: Mode,
        looked: bool,
    ) -> Result<ProfileEvent, RuntimeError> {
        let fp = idempotency::fingerprint(id.as_bytes());
        let key = if looked {
            tx.looked_up().await?
        } else {
            tx.query_one_after_deferred(tx.stmt(
                "SELECT fingerprint, response FROM idempotency_keys WHERE scope = ? AND request_id = ?",
                vec!["Record".into(), request_id.into()],
            ))
            .await?
        };
        if let Some(key) = key {
            return idempotency::seen(fp, key.try_get_by_index(0)?, key.try_get_by_index(1)?);
        }
        let event = ProfileEvent {
            profile_id: id.to_owned(),
            kind: Some(Kind::ProfileCreated(ProfileCreated::default())),
            ..Default::default()
        };
        let sequence = tx.append(id, &event).await?;
        let fact = tx.stmt("INSERT INTO facts (id, sequence) VALUES (?, ?)", vec![id.into(), sequence.into()]);
        tx.defer(fact);
        match mode {
            Mode::Ok => {}
            Mode::Refuse => return Err(RuntimeError::FailedPrecondition(format!("{id} refused"))),
            Mode::Orphan => {
                let child = tx.stmt(
                    "INSERT INTO children (id, parent) VALUES (?, ?)",
                    vec![format!("child-of-{id}").into(), "no-such-fact".into()],
                );
                tx.defer(child);
            }
        }
        let response = ProfileEvent { sequence, ..event };
        idempotency::record_later(tx, "Record", request_id, fp, "", &response);
        Ok(response)
    }

    /// How the test writes look their key up.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Style {
        /// `record`, queued by `group_commit`.
        Claim,
        /// `record_read_first`, queued by `group_commit_read_first`.
        ReadFirst,
        /// Both, alternating.
        Mixed,
        /// `record_read_first` with its key looked up, queued by
        /// `group_commit_with_lookup`.
        Lookup,
        /// Two of those, then one `record`, and so on.
        MixedLookup,
    }

    const STYLES: [Style; 5] = [Style::Claim, Style::ReadFirst, Style::Mixed, Style::Lookup, Style::MixedLookup];

    impl Style {
        /// How the `i`th write of a batch reads.
        fn read(self, i: usize) -> Reads {
            match (self, i % 2, i % 3) {
                (Style::Claim, ..) | (Style::Mixed, 0, _) | (Style::MixedLookup, _, 2) => Reads::Claim,
                (Style::ReadFirst, ..) | (Style::Mixed, ..) => Reads::First,
                (Style::Lookup | Style::MixedLookup, ..) => Reads::Lookup,
            }
        }
    }

    /// How one test write reads.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Reads {
        Claim,
        First,
        Lookup,
    }

    type Answer = oneshot::Receiver<Result<ProfileEvent, RuntimeError>>;

    /// A queued write of `record` (or `record_read_first`) and where its
    /// answer comes.
    fn job(
        backend: sea_orm::DatabaseBackend,
        request_id: &str,
        id: &str,
        mode: Mode,
        reads: Reads,
    ) -> (Box<dyn Job>, Answer) {
        let read = match reads {
            Reads::Claim => Read::Claim,
            Reads::First => Read::First,
            Reads::Lookup => Read::Lookup(key_lookup(backend, request_id)),
        };
        let (request_id, id) = (request_id.to_owned(), id.to_owned());
        let (reply, answer) = oneshot::channel();
        let write: Write<ProfileEvent> = Box::new(move |tx| {
            let (request_id, id) = (request_id.clone(), id.clone());
            Box::pin(async move {
                match reads {
                    Reads::Claim => record(tx, &request_id, &id, mode).await,
                    Reads::First => record_read_first(tx, &request_id, &id, mode, false).await,
                    Reads::Lookup => record_read_first(tx, &request_id, &id, mode, true).await,
                }
            })
        });
        (Box::new(Typed { write, read, span: tracing::Span::none(), result: None, reply }), answer)
    }

    /// Run these writes as one batch; their answers in order.
    async fn batch(
        store: &Store,
        writes: &[(&str, &str, Mode)],
        style: Style,
    ) -> Vec<Result<ProfileEvent, RuntimeError>> {
        batch_with(store, writes, false, style).await
    }

    /// The same, with savepoints from the start if `careful`.
    async fn batch_with(
        store: &Store,
        writes: &[(&str, &str, Mode)],
        careful: bool,
        style: Style,
    ) -> Vec<Result<ProfileEvent, RuntimeError>> {
        let backend = store.backend();
        let (jobs, answers): (Vec<_>, Vec<_>) =
            writes.iter().enumerate().map(|(i, (r, id, m))| job(backend, r, id, *m, style.read(i))).unzip();
        run_batch(&store.writer, jobs, careful).await;
        let mut out = Vec::new();
        for a in answers {
            out.push(a.await.expect("answered"));
        }
        out
    }

    /// The committed facts, by id, with their sequences.
    async fn facts(store: &Store) -> Vec<(String, i64)> {
        let rows = store
            .conn()
            .query_all_raw(store.stmt("SELECT id, sequence FROM facts ORDER BY id", vec![]))
            .await
            .expect("facts");
        rows.iter().map(|r| (r.try_get_by_index(0).expect("id"), r.try_get_by_index(1).expect("sequence"))).collect()
    }

    /// The committed events' (sequence, stream key), in order.
    async fn events(store: &Store) -> Vec<(i64, String)> {
        let all = eventlog::read_after(store.conn(), 0, 100_000).await.expect("events");
        all.into_iter().map(|e| (e.sequence, e.stream_key)).collect()
    }

    fn sequence(r: &Result<ProfileEvent, RuntimeError>) -> i64 {
        match r {
            Ok(e) => e.sequence,
            Err(e) => panic!("write failed: {e}"),
        }
    }

    #[tokio::test]
    async fn a_failing_write_rolls_back_alone_and_the_batch_commits() {
        for style in STYLES {
            a_failing_write_rolls_back_alone(false, style).await;
        }
    }

    #[tokio::test]
    async fn a_failing_write_rolls_back_alone_with_savepoints_from_the_start() {
        for style in STYLES {
            a_failing_write_rolls_back_alone(true, style).await;
        }
    }

    async fn a_failing_write_rolls_back_alone(careful: bool, style: Style) {
        let db = TestDb::new("runtime").await;
        let store = store(&db).await;
        let mut committed = store.committed();
        let answers = batch_with(
            &store,
            &[("r-a", "a", Mode::Ok), ("r-b", "b", Mode::Refuse), ("r-c", "c", Mode::Ok)],
            careful,
            style,
        )
        .await;

        assert_eq!(sequence(&answers[0]), 1, "on {} ({style:?})", db.kind());
        assert!(
            matches!(&answers[1], Err(RuntimeError::FailedPrecondition(m)) if m == "b refused"),
            "the refused write gets its own error: {:?}",
            answers[1]
        );
        assert_eq!(sequence(&answers[2]), 2, "the refused write's number is given back");
        assert_eq!(facts(&store).await, vec![("a".to_owned(), 1), ("c".to_owned(), 2)]);
        assert_eq!(events(&store).await, vec![(1, "a".to_owned()), (2, "c".to_owned())]);
        assert_eq!(eventlog::head(store.conn()).await.expect("head"), 2);
        assert_eq!(*committed.borrow_and_update(), 2, "tails are told once the batch committed");

        // The refused write's key was rolled back with it: a retry runs anew.
        let retry = batch(&store, &[("r-b", "b", Mode::Ok), ("r-d", "d", Mode::Ok)], style).await;
        assert_eq!((sequence(&retry[0]), sequence(&retry[1])), (3, 4));
        assert_eq!(eventlog::head(store.conn()).await.expect("head"), 4);
    }

    #[tokio::test]
    async fn writes_tell_a_read_made_beside_them_what_they_changed() {
        use crate::changes::token;
        let db = TestDb::new("runtime").await;
        let store = store(&db).await;
        let (a, b) = (token(&["fact", "a"]), token(&["fact", "b"]));
        // What a write sees of the writes since `mark`, for tokens a and b.
        let seen = |mark| {
            store.group_commit(move |tx| {
                Box::pin(async move { Ok((tx.changed_since(mark, &[a]), tx.changed_since(mark, &[b]))) })
            })
        };
        let mark = store.settled();
        store
            .group_commit(move |tx| {
                Box::pin(async move {
                    tx.touches([a]);
                    Ok(())
                })
            })
            .await
            .expect("declares a");
        assert_eq!(seen(mark).await.expect("seen"), (true, false), "a changed, b did not");
        let after = store.settled();
        assert_eq!(seen(after).await.expect("seen"), (false, false), "nothing since");

        // In one batch, a write sees what the writes before it declared.
        let mark = store.settled();
        let writes = (0..3).map(|i| {
            store.group_commit(move |tx| {
                Box::pin(async move {
                    let before = tx.changed_since(mark, &[a]);
                    if i == 0 {
                        tx.touches([a]);
                    } else {
                        tx.touches([]);
                    }
                    Ok(before)
                })
            })
        });
        let seen_in_batch: Vec<bool> = futures::future::try_join_all(writes).await.expect("batch");
        assert_eq!(seen_in_batch, [false, true, true]);

        // A write that declares nothing changed everything: a group-committed
        // one, and one in a transaction of its own.
        let mark = store.settled();
        store.group_commit(|_tx| Box::pin(async { Ok(()) })).await.expect("undeclared");
        assert_eq!(seen(mark).await.expect("seen"), (true, true));
        let mark = store.settled();
        store.begin_write().await.expect("begin").commit().await.expect("commit");
        assert_eq!(seen(mark).await.expect("seen"), (true, true));
        // One that declared everything, whatever else it declared.
        let mark = store.settled();
        store
            .group_commit(move |tx| {
                Box::pin(async move {
                    tx.touches_everything();
                    tx.touches([a]);
                    Ok(())
                })
            })
            .await
            .expect("everything");
        assert_eq!(seen(mark).await.expect("seen"), (true, true));
    }

    #[tokio::test]
    async fn writes_waiting_counts_the_writes_not_yet_answered() {
        let db = TestDb::new("runtime").await;
        let store = store(&db).await;
        assert_eq!(store.writes_waiting(), 0, "nothing queued yet");
        let gate = Arc::new(tokio::sync::Notify::new());
        let write = tokio::spawn({
            let (store, gate) = (store.clone(), gate.clone());
            async move {
                store
                    .group_commit(move |_tx| {
                        let gate = gate.clone();
                        Box::pin(async move {
                            gate.notified().await;
                            Ok(())
                        })
                    })
                    .await
            }
        });
        let mut waited = 0;
        while store.writes_waiting() != 1 {
            waited += 1;
            assert!(waited < 500, "the running write is counted");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        gate.notify_one();
        write.await.expect("task").expect("write");
        assert_eq!(store.writes_waiting(), 0, "answered");
    }

    #[tokio::test]
    async fn the_same_request_twice_in_one_batch_is_written_once() {
        for style in STYLES {
            the_same_request_twice_in_one_batch(style).await;
        }
    }

    async fn the_same_request_twice_in_one_batch(style: Style) {
        let db = TestDb::new("runtime").await;
        let store = store(&db).await;
        let answers = batch(
            &store,
            &[
                ("r-x", "x", Mode::Ok),
                ("r-y", "y", Mode::Ok),
                ("r-x", "x", Mode::Ok),
                ("r-x", "x", Mode::Ok),
                ("r-y", "y", Mode::Ok),
            ],
            style,
        )
        .await;
        let first = answers[0].as_ref().expect("first");
        assert_eq!(first.sequence, 1, "on {} ({style:?})", db.kind());
        assert_eq!(sequence(&answers[1]), 2);
        for again in &answers[2..4] {
            assert_eq!(again.as_ref().expect("replay"), first, "a repeat answers the first response");
        }
        assert_eq!(answers[4].as_ref().expect("replay"), answers[1].as_ref().expect("second"));
        assert_eq!(facts(&store).await, vec![("x".to_owned(), 1), ("y".to_owned(), 2)], "one fact each");
        assert_eq!(events(&store).await, vec![(1, "x".to_owned()), (2, "y".to_owned())], "one event each");

        // And across batches, through the public entry point.
        let again = store
            .group_commit(|tx| Box::pin(async move { record(tx, "r-x", "x", Mode::Ok).await }))
            .await
            .expect("replay");
        assert_eq!(&again, first);
        assert_eq!(events(&store).await.len(), 2);
    }

    #[tokio::test]
    async fn a_batch_that_cannot_commit_is_run_again_write_by_write() {
        for style in STYLES {
            a_batch_that_cannot_commit(style).await;
        }
    }

    async fn a_batch_that_cannot_commit(style: Style) {
        let db = TestDb::new("runtime").await;
        let store = store(&db).await;
        let mut committed = store.committed();
        let answers =
            batch(&store, &[("r-a", "a", Mode::Ok), ("r-o", "o", Mode::Orphan), ("r-c", "c", Mode::Ok)], style).await;

        assert_eq!(sequence(&answers[0]), 1, "on {} ({style:?})", db.kind());
        assert!(
            matches!(&answers[1], Err(RuntimeError::Database(_))),
            "the write that breaks the commit fails alone: {:?}",
            answers[1]
        );
        assert_eq!(sequence(&answers[2]), 2);
        assert_eq!(facts(&store).await, vec![("a".to_owned(), 1), ("c".to_owned(), 2)]);
        assert_eq!(events(&store).await, vec![(1, "a".to_owned()), (2, "c".to_owned())]);
        assert_eq!(eventlog::head(store.conn()).await.expect("head"), 2);
        assert_eq!(*committed.borrow_and_update(), 2);
    }

    #[tokio::test]
    async fn concurrent_writers_get_contiguous_committed_sequences() {
        const WRITERS: usize = 24;
        const WRITES: usize = 30;
        let db = TestDb::new("runtime").await;
        let store = store(&db).await;
        let tasks: Vec<_> = (0..WRITERS)
            .map(|w| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut answers = Vec::new();
                    for i in 0..WRITES {
                        let id = format!("w{w}-{i}");
                        // Every seventh write is refused after writing; every
                        // fifth is sent twice with the same request id.
                        let mode = if i % 7 == 3 { Mode::Refuse } else { Mode::Ok };
                        let times = if i % 5 == 1 { 2 } else { 1 };
                        for _ in 0..times {
                            let (rid, fid) = (format!("r-{id}"), id.clone());
                            // A third of the writers claim their keys, a
                            // third look them up first, a third with a lookup.
                            let r = match w % 3 {
                                0 => {
                                    store
                                        .group_commit(move |tx| {
                                            let (rid, fid) = (rid.clone(), fid.clone());
                                            Box::pin(async move { record(tx, &rid, &fid, mode).await })
                                        })
                                        .await
                                }
                                1 => {
                                    store
                                        .group_commit_read_first(move |tx| {
                                            let (rid, fid) = (rid.clone(), fid.clone());
                                            Box::pin(
                                                async move { record_read_first(tx, &rid, &fid, mode, false).await },
                                            )
                                        })
                                        .await
                                }
                                _ => {
                                    store
                                        .group_commit_with_lookup(key_lookup(store.backend(), &rid), move |tx| {
                                            let (rid, fid) = (rid.clone(), fid.clone());
                                            Box::pin(async move { record_read_first(tx, &rid, &fid, mode, true).await })
                                        })
                                        .await
                                }
                            };
                            answers.push((id.clone(), mode, r));
                        }
                    }
                    answers
                })
            })
            .collect();
        let mut ok: Vec<(String, i64)> = Vec::new();
        for t in tasks {
            for (id, mode, r) in t.await.expect("writer") {
                match (mode, r) {
                    (Mode::Ok, Ok(e)) => {
                        assert_eq!(e.profile_id, id);
                        ok.push((id, e.sequence));
                    }
                    (Mode::Refuse, Err(RuntimeError::FailedPrecondition(_))) => {}
                    (m, r) => panic!("{id} ({m:?}): unexpected {r:?}"),
                }
            }
        }
        ok.sort();
        ok.dedup();
        let per_writer = (0..WRITES).filter(|i| i % 7 != 3).count();
        assert_eq!(ok.len(), WRITERS * per_writer, "each accepted write answered one sequence, on {}", db.kind());
        assert_eq!(facts(&store).await, ok, "every write answered OK is committed with its sequence");
        let mut seqs: Vec<i64> = ok.iter().map(|(_, s)| *s).collect();
        seqs.sort_unstable();
        let n = seqs.len() as i64;
        assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "gap-free");
        let logged: Vec<i64> = events(&store).await.into_iter().map(|(s, _)| s).collect();
        assert_eq!(logged, (1..=n).collect::<Vec<_>>(), "one event per fact, nothing else");
        assert_eq!(eventlog::head(store.conn()).await.expect("head"), n);
        assert_eq!(*store.committed().borrow(), n);
    }

    #[tokio::test]
    async fn a_batch_reads_its_lookups_ahead_in_one_round_trip_on_sqlite() {
        let db = TestDb::new("runtime").await;
        let store = store(&db).await;
        batch(&store, &[("r-a", "a", Mode::Ok), ("r-b", "b", Mode::Ok)], Style::Claim).await;
        let backend = store.backend();
        let lookups = [key_lookup(backend, "r-b"), key_lookup(backend, "r-new"), key_lookup(backend, "r-a")];
        let mut tx = store.writer.begin_batch().await.expect("begin");
        let rows = tx.read_ahead(&lookups.iter().collect::<Vec<_>>()).await.expect("read ahead");
        if backend != sea_orm::DatabaseBackend::Sqlite {
            assert!(rows.is_none(), "read when asked on {}", db.kind());
            return;
        }
        let rows = rows.expect("read ahead on SQLite");
        let fingerprints: Vec<Option<i64>> =
            rows.iter().map(|r| r.as_ref().map(|r| r.try_get_by_index(0).expect("fingerprint"))).collect();
        let fp = |id: &str| Some(idempotency::fingerprint(id.as_bytes()));
        assert_eq!(fingerprints, vec![fp("b"), None, fp("a")], "each lookup's row, in order");
        assert_eq!(tx.next_sequence_for_test().await.expect("next"), 3, "the head was read with them");
        tx.rollback().await.expect("rollback");
    }

    #[tokio::test]
    async fn closing_answers_every_queued_write_then_refuses_new_ones() {
        const QUEUED: u32 = 40;
        let db = TestDb::new("runtime").await;
        let store = store(&db).await;
        // Hold the writer up: a transaction that has appended keeps the
        // SQLite writer lock, and on PostgreSQL the event log head's row.
        let mut blocker = store.begin_write().await.expect("begin");
        let event = ProfileEvent { profile_id: "blocker".into(), ..Default::default() };
        blocker.append("blocker", &event).await.expect("append");

        let queued = Arc::new(tokio::sync::Semaphore::new(0));
        let pending: Vec<_> = (0..QUEUED)
            .map(|i| {
                let (store, queued) = (store.clone(), queued.clone());
                tokio::spawn(async move {
                    let id = format!("q{i}");
                    let mut write = Box::pin(store.group_commit(move |tx| {
                        let id = id.clone();
                        Box::pin(async move { record(tx, "", &id, Mode::Ok).await })
                    }));
                    // The first poll queues the write, then waits for its answer.
                    let first = futures::poll!(&mut write);
                    queued.add_permits(1);
                    match first {
                        std::task::Poll::Ready(r) => r,
                        std::task::Poll::Pending => write.await,
                    }
                })
            })
            .collect();
        queued.acquire_many(QUEUED).await.expect("queued").forget();

        let closing = tokio::spawn(store.clone().close());
        blocker.rollback().await.expect("rollback");
        closing.await.expect("close task").expect("close");
        for p in pending {
            p.await.expect("task").expect("a write queued before closing is committed and answered");
        }
        let late = store.group_commit(|tx| Box::pin(async move { record(tx, "", "late", Mode::Ok).await })).await;
        assert!(matches!(late, Err(RuntimeError::Unavailable(_))), "closed: {late:?}");

        let reopened = Store::connect(&db.url, 2).await.expect("reconnect");
        let ids: Vec<String> = facts(&reopened).await.into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids.len(), QUEUED as usize, "on {}", db.kind());
        assert_eq!(eventlog::head(reopened.conn()).await.expect("head"), i64::from(QUEUED));
        reopened.close().await.expect("close");
    }
}
