//! A scripted stand-in for the pools, so the call loops' timed rules run on
//! a paused clock without a server (as `health/fake.rs` stands in for the
//! probes). Every checkout and every statement asks the script what
//! happens and after how long; every question and every settled
//! connection is logged with its time.
//!
//! Failures are tokio-postgres's own errors, made by tokio-postgres from
//! what a scripted server sends over an in-memory stream ([`pg_error`]):
//! the classifier reads them as it reads a real server's.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use deadpool_postgres::PoolError;
use tokio::io::AsyncWriteExt;
use tokio::time::{sleep, timeout_at, Instant};
use tokio_postgres::types::Type;

use super::session::{Columns, Connect, Counted, Failure, Params, PgError, Session};
use crate::causal::lsn::Lsn;
use crate::connect::statements::Block;
use crate::failure::safety::Fate;
use crate::hub::Hub;

/// What a call loop asked of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ask {
    /// A connection.
    Checkout,
    /// A statement prepared (or its parameter types learnt).
    Prepare,
    /// A statement's rows.
    Query,
    /// A statement's count of rows affected.
    Execute,
    /// A statement's only row.
    QueryOne,
    /// A simple query: `BEGIN`, `COMMIT`, `ROLLBACK`, `SELECT 1`.
    Batch,
}

/// One question, as the script sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Step<'a> {
    pub(crate) node: usize,
    pub(crate) ask: Ask,
    /// The statement (empty for a checkout).
    pub(crate) sql: &'a str,
    /// How many times before this node was asked this (`ask` and `sql`).
    pub(crate) nth: usize,
}

/// How a scripted server fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// It answers with an error of this SQLSTATE (refuses the connection,
    /// at a checkout).
    Sqlstate(&'static str),
    /// The connection breaks (is refused, at a checkout).
    Lost,
}

/// What a scripted server answers.
#[derive(Debug, Clone)]
pub(crate) enum Answer {
    /// These rows (a statement's count is their number; a checkout, a
    /// prepare or a simple query ignores them).
    Rows(Vec<FakeRow>),
    /// This failure.
    Fail(Fault),
    /// Nothing, ever.
    Never,
}

/// An answer and how long it takes.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    after: Duration,
    answer: Answer,
}

impl Reply {
    /// These rows at once.
    pub(crate) fn rows(rows: Vec<FakeRow>) -> Self {
        Self {
            after: Duration::ZERO,
            answer: Answer::Rows(rows),
        }
    }

    /// This failure at once.
    pub(crate) fn fail(fault: Fault) -> Self {
        Self {
            after: Duration::ZERO,
            answer: Answer::Fail(fault),
        }
    }

    /// No answer, ever.
    pub(crate) fn never() -> Self {
        Self {
            after: Duration::ZERO,
            answer: Answer::Never,
        }
    }

    /// The same answer, `ms` milliseconds later.
    pub(crate) fn after_ms(self, ms: u64) -> Self {
        Self {
            after: Duration::from_millis(ms),
            ..self
        }
    }

    async fn wait(self) -> Answer {
        sleep(self.after).await;
        match self.answer {
            Answer::Never => std::future::pending().await,
            answer => answer,
        }
    }
}

/// When the scripted servers' statistics were last reset.
pub(crate) const STATS_RESET: i64 = 900;

/// A column value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Bool(bool),
    Int4(i32),
    Int8(i64),
    Text(Option<String>),
    Lsn(u64),
}

/// A row of a scripted answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FakeRow(pub(crate) Vec<Value>);

impl FakeRow {
    /// The default answer to a statement: which node answered.
    pub(crate) fn node(node: usize) -> Self {
        Self(vec![Value::Int8(node as i64)])
    }

    /// The node in a [`FakeRow::node`] row.
    pub(crate) fn answered_by(&self) -> usize {
        usize::try_from(self.int8(0).unwrap_or(-1)).unwrap_or(usize::MAX)
    }

    /// A `TOKEN_SQL` row: position `lsn` on timeline 1.
    pub(crate) fn token(lsn: u64) -> Self {
        let walfile = "000000010000000000000001".to_owned();
        Self(vec![Value::Lsn(lsn), Value::Text(Some(walfile))])
    }

    /// An `IDENTITY_SQL` row.
    pub(crate) fn identity(xid: i64, pid: i32, postmaster: i64) -> Self {
        Self(vec![
            Value::Int8(xid),
            Value::Int4(pid),
            Value::Int8(postmaster),
            Value::Int8(STATS_RESET),
        ])
    }

    /// A status row (without a marker table): out of recovery or not, the
    /// server's life (the postmaster's start, statistics reset at
    /// [`STATS_RESET`]), `pg_xact_status`.
    pub(crate) fn status(writable: bool, postmaster: i64, status: &str) -> Self {
        Self(vec![
            Value::Bool(writable),
            Value::Int8(postmaster),
            Value::Int8(STATS_RESET),
            Value::Text(Some(status.to_owned())),
        ])
    }

    fn value(&self, index: usize) -> &Value {
        match self.0.get(index) {
            Some(value) => value,
            None => panic!("scripted row {self:?} has no column {index}"),
        }
    }
}

/// A mismatch between a scripted row and the column read is a bug in the
/// script, not a case to handle.
fn wrong(row: &FakeRow, index: usize, wanted: &str) -> ! {
    panic!("scripted row {row:?}: column {index} is not {wanted}")
}

impl Columns for FakeRow {
    fn boolean(&self, index: usize) -> Result<bool, PgError> {
        match self.value(index) {
            Value::Bool(value) => Ok(*value),
            _ => wrong(self, index, "bool"),
        }
    }

    fn int4(&self, index: usize) -> Result<i32, PgError> {
        match self.value(index) {
            Value::Int4(value) => Ok(*value),
            _ => wrong(self, index, "int4"),
        }
    }

    fn int8(&self, index: usize) -> Result<i64, PgError> {
        match self.value(index) {
            Value::Int8(value) => Ok(*value),
            _ => wrong(self, index, "int8"),
        }
    }

    fn text(&self, index: usize) -> Result<&str, PgError> {
        match self.value(index) {
            Value::Text(Some(value)) => Ok(value),
            _ => wrong(self, index, "non-null text"),
        }
    }

    fn text_or_null(&self, index: usize) -> Result<Option<&str>, PgError> {
        match self.value(index) {
            Value::Text(value) => Ok(value.as_deref()),
            _ => wrong(self, index, "text"),
        }
    }

    fn lsn(&self, index: usize) -> Result<Lsn, PgError> {
        match self.value(index) {
            Value::Lsn(value) => Ok(Lsn(*value)),
            _ => wrong(self, index, "pg_lsn"),
        }
    }
}

/// What happened, in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// A question was asked (its answer may never come).
    Asked(Ask, String),
    /// A connection was settled (a connection just dropped is kept).
    Settled(Fate),
}

/// One log entry.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// Milliseconds since the fake was made.
    pub(crate) ms: u64,
    pub(crate) node: usize,
    pub(crate) event: Event,
}

/// What the nodes answer: `None` for the default.
type Script = Box<dyn Fn(&Step<'_>) -> Option<Reply> + Send + Sync>;

/// Every node's scripted server.
pub(crate) struct Fake {
    /// `None` from it: the default reply ([`Fake::default_reply`]).
    script: Script,
    start: Instant,
    log: Mutex<Vec<Entry>>,
    /// Bit `i`: node `i`'s pool has every connection in use.
    saturated: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Fake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fake")
            .field("log", &self.lock().len())
            .finish()
    }
}

impl Fake {
    /// Nodes that answer as `script` says, and by default at once: a
    /// connection, and one [`FakeRow::node`] row to every statement.
    pub(crate) fn new(script: impl Fn(&Step<'_>) -> Option<Reply> + Send + Sync + 'static) -> Self {
        Self {
            script: Box::new(script),
            start: Instant::now(),
            log: Mutex::new(Vec::new()),
            saturated: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// From now on, node `index`'s pool reports every connection in use.
    pub(crate) fn saturate(&self, index: usize) {
        self.saturated
            .fetch_or(1 << index, std::sync::atomic::Ordering::Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Entry>> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Everything logged so far.
    pub(crate) fn log(&self) -> Vec<Entry> {
        self.lock().clone()
    }

    /// When node `node` was asked `ask` (of any statement), in ms.
    pub(crate) fn asked(&self, node: usize, ask: Ask) -> Vec<u64> {
        let log = self.lock();
        let asked = |entry: &&Entry| {
            entry.node == node && matches!(&entry.event, Event::Asked(a, _) if *a == ask)
        };
        log.iter().filter(asked).map(|entry| entry.ms).collect()
    }

    /// When node `node` was sent `sql` (by any kind of question), in ms.
    pub(crate) fn sent(&self, node: usize, sql: &str) -> Vec<u64> {
        let log = self.lock();
        let sent = |entry: &&Entry| {
            entry.node == node
                && matches!(&entry.event, Event::Asked(ask, s) if s == sql && *ask != Ask::Prepare)
        };
        log.iter().filter(sent).map(|entry| entry.ms).collect()
    }

    /// How node `node`'s connections were settled, and when (in ms).
    pub(crate) fn settled(&self, node: usize) -> Vec<(u64, Fate)> {
        let log = self.lock();
        log.iter()
            .filter(|entry| entry.node == node)
            .filter_map(|entry| match entry.event {
                Event::Settled(fate) => Some((entry.ms, fate)),
                Event::Asked(..) => None,
            })
            .collect()
    }

    /// Milliseconds since the fake was made.
    pub(crate) fn ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn note(&self, node: usize, event: Event) {
        let ms = self.ms();
        self.lock().push(Entry { ms, node, event });
    }

    /// Logs the question and returns the script's reply (or the default).
    fn ask(&self, node: usize, ask: Ask, sql: &str) -> Reply {
        let nth = {
            let log = self.lock();
            log.iter()
                .filter(|entry| entry.node == node)
                .filter(|entry| matches!(&entry.event, Event::Asked(a, s) if *a == ask && s == sql))
                .count()
        };
        self.note(node, Event::Asked(ask, sql.to_owned()));
        let step = Step {
            node,
            ask,
            sql,
            nth,
        };
        (self.script)(&step).unwrap_or_else(|| Self::default_reply(node))
    }

    fn default_reply(node: usize) -> Reply {
        Reply::rows(vec![FakeRow::node(node)])
    }

    fn session(&self, node: usize) -> FakeSession<'_> {
        FakeSession {
            fake: self,
            node,
            settled: false,
        }
    }
}

impl<'f> Connect for &'f Fake {
    type Session = FakeSession<'f>;

    async fn checkout(
        self,
        _hub: &Hub,
        index: usize,
        deadline: Instant,
        _started: Instant,
    ) -> Result<FakeSession<'f>, Failure> {
        let reply = self.ask(index, Ask::Checkout, "");
        match timeout_at(deadline, reply.wait()).await {
            Err(_) => Err(Failure::Deadline),
            Ok(Answer::Fail(fault)) => {
                Err(Failure::Pool(PoolError::Backend(pg_error(fault).await)))
            }
            Ok(_) => Ok(self.session(index)),
        }
    }

    async fn get(self, _hub: &Hub, index: usize) -> Option<FakeSession<'f>> {
        match self.ask(index, Ask::Checkout, "").wait().await {
            Answer::Fail(_) => None,
            _ => Some(self.session(index)),
        }
    }

    fn saturated(self, _hub: &Hub, index: usize) -> bool {
        self.saturated.load(std::sync::atomic::Ordering::Relaxed) >> index & 1 == 1
    }
}

/// A scripted connection to one node.
#[derive(Debug)]
pub(crate) struct FakeSession<'f> {
    fake: &'f Fake,
    node: usize,
    settled: bool,
}

impl Drop for FakeSession<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.fake.note(self.node, Event::Settled(Fate::Keep));
        }
    }
}

impl FakeSession<'_> {
    /// Asks the script; its rows, or its failure as tokio-postgres's error.
    async fn answer(&self, ask: Ask, sql: &str) -> Result<Vec<FakeRow>, PgError> {
        match self.fake.ask(self.node, ask, sql).wait().await {
            Answer::Rows(rows) => Ok(rows),
            Answer::Fail(fault) => Err(pg_error(fault).await),
            Answer::Never => unreachable!("a reply that never comes never returns"),
        }
    }
}

impl<'f> Session for FakeSession<'f> {
    type Row = FakeRow;
    type Prepared = ();

    async fn prepare(&self, sql: &str, _params: Params<'_>, _block: Block) -> Result<(), PgError> {
        self.answer(Ask::Prepare, sql).await.map(drop)
    }

    async fn own(&self, sql: &str, _types: &[Type]) -> Result<(), PgError> {
        self.answer(Ask::Prepare, sql).await.map(drop)
    }

    async fn query<'a>(
        &'a self,
        sql: &'a str,
        _statement: &'a (),
        _params: Params<'a>,
    ) -> Result<Vec<FakeRow>, PgError> {
        self.answer(Ask::Query, sql).await
    }

    async fn query_counted<'a>(
        &'a self,
        sql: &'a str,
        _statement: &'a (),
        _params: Params<'a>,
    ) -> Result<Counted<FakeRow>, PgError> {
        self.answer(Ask::Query, sql).await.map(Counted::of)
    }

    async fn execute<'a>(
        &'a self,
        sql: &'a str,
        _statement: &'a (),
        _params: Params<'a>,
    ) -> Result<u64, PgError> {
        let rows = self.answer(Ask::Execute, sql).await?;
        Ok(rows.len() as u64)
    }

    async fn query_one<'a>(
        &'a self,
        sql: &'a str,
        _statement: &'a (),
        _params: Params<'a>,
    ) -> Result<FakeRow, PgError> {
        let mut rows = self.answer(Ask::QueryOne, sql).await?;
        match rows.len() {
            1 => Ok(rows.remove(0)),
            n => panic!("the script answered {sql:?} with {n} rows to a query_one"),
        }
    }

    async fn batch_execute(&self, sql: &str) -> Result<(), PgError> {
        self.answer(Ask::Batch, sql).await.map(|_| ())
    }

    fn forget_statements(&self) {}

    fn settle(mut self, _hub: &Hub, fate: Fate) {
        self.settled = true;
        self.fake.note(self.node, Event::Settled(fate));
    }
}

/// tokio-postgres's own error for `fault`, made by tokio-postgres from what
/// a scripted server sends over an in-memory stream, since its errors have
/// no public constructor: a server error with the SQLSTATE (an
/// `ErrorResponse` where tokio-postgres expects authentication), or a
/// broken connection (the server end closed: the first write fails).
pub(crate) async fn pg_error(fault: Fault) -> PgError {
    let (client, mut server) = tokio::io::duplex(4096);
    let server = match fault {
        Fault::Sqlstate(code) => {
            let response = error_response(code);
            server
                .write_all(&response)
                .await
                .unwrap_or_else(|error| panic!("an in-memory write failed: {error}"));
            Some(server)
        }
        Fault::Lost => {
            drop(server);
            None
        }
    };
    let mut config = tokio_postgres::Config::new();
    config.user("fake");
    let result = config.connect_raw(client, tokio_postgres::NoTls).await;
    drop(server);
    match result {
        Err(error) => error,
        Ok(_) => unreachable!("the scripted server never lets a client in"),
    }
}

/// A backend `ErrorResponse` message with SQLSTATE `code`.
fn error_response(code: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (field, value) in [(b'S', "ERROR"), (b'C', code), (b'M', "scripted failure")] {
        body.push(field);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let length = i32::try_from(body.len() + 4).unwrap_or(i32::MAX);
    let mut message = vec![b'E'];
    message.extend_from_slice(&length.to_be_bytes());
    message.extend_from_slice(&body);
    message
}

#[cfg(test)]
mod tests {
    use deadpool_postgres::PoolError;
    use tokio_postgres::error::SqlState;

    use crate::failure::safety::{Cause, CodeKind};
    use crate::manager::fake::{pg_error, Fault};

    #[tokio::test(start_paused = true)]
    async fn scripted_faults_are_tokio_postgres_errors_the_classifier_reads() {
        let conflict = pg_error(Fault::Sqlstate("40001")).await;
        assert_eq!(conflict.code(), Some(&SqlState::T_R_SERIALIZATION_FAILURE));
        assert_eq!(
            Cause::of_postgres(&conflict),
            Cause::Server {
                kind: CodeKind::Conflict,
                closed: false
            }
        );
        let unique = pg_error(Fault::Sqlstate("23505")).await;
        assert_eq!(unique.code(), Some(&SqlState::UNIQUE_VIOLATION));
        let lost = pg_error(Fault::Lost).await;
        assert_eq!(lost.code(), None);
        assert_eq!(Cause::of_postgres(&lost), Cause::Lost);
        let refused = PoolError::Backend(pg_error(Fault::Lost).await);
        assert_eq!(Cause::of_pool(&refused), Cause::Unreachable);
    }
}
