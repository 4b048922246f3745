//! The seam between the call loops and a pooled connection.
//!
//! The loops (an attempt's checkout, prepare, run and settle; a read's
//! retry and hedge; the write loop and its hold; the transaction runner;
//! lost-`COMMIT` resolution) reach a node's connections only through
//! [`Connect`] and [`Session`]. The real ones are each node's deadpool pool
//! (`manager/pooled.rs`); the tests put a script behind them
//! (`manager/fake.rs`) and run the loops' timed rules on a paused clock, as
//! the monitor's rules run over its `Probe`.
//!
//! Failures cross the seam as deadpool's and tokio-postgres's own errors
//! ([`Failure`]), so the safety classifier reads the same causes from a
//! script as from a server. Rows cross it as the session's own
//! [`Session::Row`], read through [`Columns`]. Everything is generic: the
//! real path is monomorphized over a unit struct, with no dynamic dispatch
//! and no allocation of its own.

use std::future::Future;

use deadpool_postgres::PoolError;
use tokio::time::Instant;
use tokio_postgres::types::Type;

use crate::causal::lsn::Lsn;
use crate::connect::statements::Block;
pub(crate) use crate::connect::statements::{Counted, Params};
use crate::failure::safety::Fate;
use crate::hub::Hub;

/// tokio-postgres's error: what a statement's failure carries.
pub(crate) type PgError = tokio_postgres::Error;

/// A row of `C`'s sessions.
pub(crate) type RowOf<C> = <<C as Connect>::Session as Session>::Row;

/// What went wrong on the way to an answer, with its source.
#[derive(Debug)]
pub(crate) enum Failure {
    /// No connection (pool wait, connect, a dead idle connection, the pool
    /// closed).
    Pool(PoolError),
    /// The server, the connection or tokio-postgres failed the statement.
    Postgres(PgError),
    /// The call's deadline passed.
    Deadline,
}

/// Where the call loops get a node's connections. Cheap to copy (the real
/// one is a unit struct), so the loops hold it by value.
pub(crate) trait Connect: Copy + Send + Sync {
    /// A connection checked out.
    type Session: Session;

    /// A connection to node `index` for an attempt that started at
    /// `started`, before `deadline`.
    fn checkout(
        self,
        hub: &Hub,
        index: usize,
        deadline: Instant,
        started: Instant,
    ) -> impl Future<Output = Result<Self::Session, Failure>> + Send;

    /// A connection to node `index` for a question of pgrouter's own (the
    /// caller bounds the wait); `None` if none can be had.
    fn get(self, hub: &Hub, index: usize) -> impl Future<Output = Option<Self::Session>> + Send;

    /// Whether node `index`'s pool has every connection open and in use.
    fn saturated(self, hub: &Hub, index: usize) -> bool;
}

/// A connection checked out of a node's pool: what the call loops send on
/// it, and what becomes of it.
///
/// A statement is prepared into a [`Session::Prepared`] that borrows
/// nothing, and its text is given again to run it. Running goes through a
/// [`Returns`] kind (`Rows::run`, `Count::run`, `One::run`, `FirstRow::run`). Both keep the
/// futures of the generic loops free of lifetimes that must outlive one
/// another, which the compiler cannot prove once such a future is spawned
/// (rust-lang/rust#100013: "lifetime bound not satisfied", caught by
/// `send_checks` in `manager/mod.rs`).
pub(crate) trait Session: Send + Sync + Sized {
    /// A row of an answer.
    type Row: Columns + Send + Sync;
    /// A statement ready to run on this connection.
    type Prepared: Send + Sync;

    /// `sql`, ready to run with `params`, as the node's statement mode says
    /// (see `Statements::prepare`).
    fn prepare(
        &self,
        sql: &str,
        params: Params<'_>,
        block: Block,
    ) -> impl Future<Output = Result<Self::Prepared, PgError>> + Send;

    /// pgrouter's own statement, whose parameter types are known.
    fn own(
        &self,
        sql: &str,
        types: &[Type],
    ) -> impl Future<Output = Result<Self::Prepared, PgError>> + Send;

    /// Every row of `sql`, prepared as `statement`.
    fn query<'a>(
        &'a self,
        sql: &'a str,
        statement: &'a Self::Prepared,
        params: Params<'a>,
    ) -> impl Future<Output = Result<Vec<Self::Row>, PgError>> + Send + 'a;

    /// The number of rows `sql`, prepared as `statement`, affected.
    fn execute<'a>(
        &'a self,
        sql: &'a str,
        statement: &'a Self::Prepared,
        params: Params<'a>,
    ) -> impl Future<Output = Result<u64, PgError>> + Send + 'a;

    /// The only row of `sql`, prepared as `statement`.
    fn query_one<'a>(
        &'a self,
        sql: &'a str,
        statement: &'a Self::Prepared,
        params: Params<'a>,
    ) -> impl Future<Output = Result<Self::Row, PgError>> + Send + 'a;

    /// The first row of `sql`, prepared as `statement`, and how many rows
    /// it returned in all; the rows after the first are counted, not kept.
    fn query_counted<'a>(
        &'a self,
        sql: &'a str,
        statement: &'a Self::Prepared,
        params: Params<'a>,
    ) -> impl Future<Output = Result<Counted<Self::Row>, PgError>> + Send + 'a;

    /// A simple query (`BEGIN`, `COMMIT`, `ROLLBACK`, `SELECT 1`).
    fn batch_execute(&self, sql: &str) -> impl Future<Output = Result<(), PgError>> + Send;

    /// Forgets the statements cached on this connection (the server no
    /// longer accepts one).
    fn forget_statements(&self);

    /// Back to the pool, discarded, or first cancelled on the server.
    fn settle(self, hub: &Hub, fate: Fate);
}

/// The columns pgrouter reads from the rows of its own statements.
pub(crate) trait Columns {
    /// A `bool` column.
    fn boolean(&self, index: usize) -> Result<bool, PgError>;
    /// An `int4` column.
    fn int4(&self, index: usize) -> Result<i32, PgError>;
    /// An `int8` column.
    fn int8(&self, index: usize) -> Result<i64, PgError>;
    /// A `text` column that is never null.
    fn text(&self, index: usize) -> Result<&str, PgError>;
    /// A `text` column that may be null.
    fn text_or_null(&self, index: usize) -> Result<Option<&str>, PgError>;
    /// A `pg_lsn` column.
    fn lsn(&self, index: usize) -> Result<Lsn, PgError>;
}

/// What a statement returns: every row, the number of rows affected, or
/// its only row.
pub(crate) trait Returns: Send + Sync + 'static {
    /// The result, for a session whose rows are `R`.
    type Output<R: Send>: Send;

    /// Runs `sql`, prepared as `statement`.
    fn run<'a, S: Session>(
        session: &'a S,
        sql: &'a str,
        statement: &'a S::Prepared,
        params: Params<'a>,
    ) -> impl Future<Output = Result<Self::Output<S::Row>, PgError>> + Send + 'a;
}

/// Every row (`query`).
#[derive(Debug)]
pub(crate) struct Rows;

impl Returns for Rows {
    type Output<R: Send> = Vec<R>;

    fn run<'a, S: Session>(
        session: &'a S,
        sql: &'a str,
        statement: &'a S::Prepared,
        params: Params<'a>,
    ) -> impl Future<Output = Result<Vec<S::Row>, PgError>> + Send + 'a {
        session.query(sql, statement, params)
    }
}

/// The number of rows affected (`execute`).
#[derive(Debug)]
pub(crate) struct Count;

impl Returns for Count {
    type Output<R: Send> = u64;

    fn run<'a, S: Session>(
        session: &'a S,
        sql: &'a str,
        statement: &'a S::Prepared,
        params: Params<'a>,
    ) -> impl Future<Output = Result<u64, PgError>> + Send + 'a {
        session.execute(sql, statement, params)
    }
}

/// Exactly one row (`query_one`).
#[derive(Debug)]
pub(crate) struct One;

impl Returns for One {
    type Output<R: Send> = R;

    fn run<'a, S: Session>(
        session: &'a S,
        sql: &'a str,
        statement: &'a S::Prepared,
        params: Params<'a>,
    ) -> impl Future<Output = Result<S::Row, PgError>> + Send + 'a {
        session.query_one(sql, statement, params)
    }
}

#[cfg(test)]
impl<R> Counted<R> {
    /// Counts `rows` (what a session that has them all in hand answers).
    pub(crate) fn of(rows: Vec<R>) -> Self {
        let count = rows.len();
        Self {
            first: rows.into_iter().next(),
            rows: count,
        }
    }
}

/// The first row and the number of rows (`query_one`, `query_opt`).
#[derive(Debug)]
pub(crate) struct FirstRow;

impl Returns for FirstRow {
    type Output<R: Send> = Counted<R>;

    fn run<'a, S: Session>(
        session: &'a S,
        sql: &'a str,
        statement: &'a S::Prepared,
        params: Params<'a>,
    ) -> impl Future<Output = Result<Counted<S::Row>, PgError>> + Send + 'a {
        session.query_counted(sql, statement, params)
    }
}
