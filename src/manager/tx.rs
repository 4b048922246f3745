//! [`Tx`]: the transaction a closure runs in, with its statements watched
//! (see `watch.rs` for why).

use std::ops::Deref;

use deadpool_postgres::ClientWrapper;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Statement, ToStatement};

use super::pooled::Pooled;

use super::watch::Watch;
use crate::config::StatementMode;

/// The transaction handed to a closure by
/// [`WriteBuilder::transaction`](crate::WriteBuilder::transaction).
///
/// Its own methods (`query`, `query_one`, `query_opt`, `execute`,
/// `batch_execute`, `prepare`, `prepare_cached`) are tokio-postgres's, and
/// are watched: if one fails with a server error and the closure returns
/// `Ok` anyway, the runner finds out whether PostgreSQL rolled the
/// transaction back, and then returns [`ErrorKind::RolledBack`](crate::error::ErrorKind::RolledBack)
/// (or runs the closure again after a serialization failure or a deadlock)
/// instead of a false `Ok`. Everything else of the pooled connection
/// (deadpool's [`ClientWrapper`], a tokio-postgres `Client`) is reached
/// through `Deref`, unwatched. pgrouter itself sends `BEGIN` and `COMMIT`:
/// do not send `COMMIT`, `ROLLBACK` or another `BEGIN` through it (use
/// `SAVEPOINT` and `ROLLBACK TO SAVEPOINT` for partial rollbacks).
pub struct Tx<'t> {
    session: &'t Pooled,
    /// The first server error a watched statement met.
    watch: &'t Watch,
}

impl std::fmt::Debug for Tx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx")
            .field("failure", &self.watch.failure())
            .finish_non_exhaustive()
    }
}

impl<'t> Tx<'t> {
    pub(crate) fn new(session: &'t Pooled, watch: &'t Watch) -> Self {
        Self { session, watch }
    }

    fn watch<T>(
        &self,
        result: Result<T, tokio_postgres::Error>,
    ) -> Result<T, tokio_postgres::Error> {
        self.watch.watch(result)
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
        self.watch(self.session.object().query(statement, params).await)
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
        self.watch(self.session.object().query_one(statement, params).await)
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
        self.watch(self.session.object().query_opt(statement, params).await)
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
        self.watch(self.session.object().execute(statement, params).await)
    }

    /// tokio-postgres's `batch_execute`, watched.
    pub async fn batch_execute(&self, query: &str) -> Result<(), tokio_postgres::Error> {
        self.watch(self.session.object().batch_execute(query).await)
    }

    /// tokio-postgres's `prepare`, watched.
    pub async fn prepare(&self, query: &str) -> Result<Statement, tokio_postgres::Error> {
        self.watch(self.session.object().prepare(query).await)
    }

    /// deadpool's `prepare_cached`, watched. On a node in
    /// [`StatementMode::Unnamed`], `prepare` instead: a statement cached
    /// on the connection would outlive the transaction, and a
    /// transaction-pooling proxy gives the next transaction another
    /// server connection, where it does not exist.
    pub async fn prepare_cached(&self, query: &str) -> Result<Statement, tokio_postgres::Error> {
        match self.session.statements().mode() {
            StatementMode::Unnamed => self.prepare(query).await,
            _ => self.watch(self.session.object().prepare_cached(query).await),
        }
    }
}

impl Deref for Tx<'_> {
    type Target = ClientWrapper;

    fn deref(&self) -> &ClientWrapper {
        self.session.object()
    }
}

const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tx<'static>>();
};
