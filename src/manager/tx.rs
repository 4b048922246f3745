//! [`Tx`]: the transaction a closure runs in, with its statements watched.
//!
//! PostgreSQL answers `COMMIT` of a transaction in which a statement failed
//! with `ROLLBACK` and no error, and tokio-postgres's `commit()` then
//! returns `Ok`: a closure that swallowed an error would report a commit
//! that never happened. `Tx` remembers the first server error any of its
//! statements met; before `COMMIT`, the runner asks the server (one extra
//! round trip, only then) whether the transaction is still good, since a
//! closure may have recovered with `ROLLBACK TO SAVEPOINT`.

use std::ops::Deref;
use std::sync::{Mutex, PoisonError};

use deadpool_postgres::{ClientWrapper, Object};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Statement, ToStatement};

use super::attempt::{Params, Returns};
use crate::config::StatementMode;
use crate::connect::statements::{Block, Statements};

/// The transaction handed to a closure by
/// [`Write::transaction`](crate::Write::transaction).
///
/// Its own methods (`query`, `query_one`, `query_opt`, `execute`,
/// `batch_execute`, `prepare`, `prepare_cached`) are tokio-postgres's, and
/// are watched: if one fails with a server error and the closure returns
/// `Ok` anyway, the runner finds out whether PostgreSQL rolled the
/// transaction back, and then returns [`Error::RolledBack`](crate::Error::RolledBack)
/// (or runs the closure again after a serialization failure or a deadlock)
/// instead of a false `Ok`. Everything else of the pooled connection
/// (deadpool's [`ClientWrapper`], a tokio-postgres `Client`) is reached
/// through `Deref`, unwatched. pgrouter itself sends `BEGIN` and `COMMIT`:
/// do not send `COMMIT`, `ROLLBACK` or another `BEGIN` through it (use
/// `SAVEPOINT` and `ROLLBACK TO SAVEPOINT` for partial rollbacks).
pub struct Tx<'t> {
    inner: &'t Object,
    statements: &'t Statements,
    /// The first server error a watched statement met.
    failure: Mutex<Option<SqlState>>,
}

impl std::fmt::Debug for Tx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx")
            .field("failure", &self.failure())
            .finish_non_exhaustive()
    }
}

impl<'t> Tx<'t> {
    pub(crate) fn new(inner: &'t Object, statements: &'t Statements) -> Self {
        Self {
            inner,
            statements,
            failure: Mutex::new(None),
        }
    }

    /// The SQLSTATE of the first server error a watched statement met.
    pub(crate) fn failure(&self) -> Option<SqlState> {
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn watch<T>(
        &self,
        result: Result<T, tokio_postgres::Error>,
    ) -> Result<T, tokio_postgres::Error> {
        if let Err(error) = &result {
            if let Some(code) = error.code() {
                let mut failure = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
                failure.get_or_insert_with(|| code.clone());
            }
        }
        result
    }

    /// tokio-postgres's `query`, watched.
    pub async fn query<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, tokio_postgres::Error>
    where
        T: ?Sized + ToStatement,
    {
        self.watch(self.inner.query(statement, params).await)
    }

    /// tokio-postgres's `query_one`, watched.
    pub async fn query_one<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, tokio_postgres::Error>
    where
        T: ?Sized + ToStatement,
    {
        self.watch(self.inner.query_one(statement, params).await)
    }

    /// tokio-postgres's `query_opt`, watched.
    pub async fn query_opt<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, tokio_postgres::Error>
    where
        T: ?Sized + ToStatement,
    {
        self.watch(self.inner.query_opt(statement, params).await)
    }

    /// tokio-postgres's `execute`, watched.
    pub async fn execute<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error>
    where
        T: ?Sized + ToStatement,
    {
        self.watch(self.inner.execute(statement, params).await)
    }

    /// tokio-postgres's `batch_execute`, watched.
    pub async fn batch_execute(&self, query: &str) -> Result<(), tokio_postgres::Error> {
        self.watch(self.inner.batch_execute(query).await)
    }

    /// tokio-postgres's `prepare`, watched.
    pub async fn prepare(&self, query: &str) -> Result<Statement, tokio_postgres::Error> {
        self.watch(self.inner.prepare(query).await)
    }

    /// deadpool's `prepare_cached`, watched. On a node in
    /// [`StatementMode::Unnamed`], `prepare` instead: a statement cached
    /// on the connection would outlive the transaction, and a
    /// transaction-pooling proxy gives the next transaction another
    /// server connection, where it does not exist.
    pub async fn prepare_cached(&self, query: &str) -> Result<Statement, tokio_postgres::Error> {
        match self.statements.mode() {
            StatementMode::Unnamed => self.prepare(query).await,
            _ => self.watch(self.inner.prepare_cached(query).await),
        }
    }

    /// A routed statement (a write's body) run the node's way, watched.
    pub(crate) async fn run<K: Returns>(
        &self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<K::Output, tokio_postgres::Error> {
        let ready = self
            .statements
            .prepare(self.inner, sql, params, Block::Open)
            .await;
        let ready = self.watch(ready)?;
        self.watch(K::run(self.inner, &ready, params).await)
    }
}

impl Deref for Tx<'_> {
    type Target = ClientWrapper;

    fn deref(&self) -> &ClientWrapper {
        self.inner
    }
}

const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tx<'static>>();
};
