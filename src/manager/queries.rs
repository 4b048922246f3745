//! [`Queries`]: one trait for repository code, implemented by pgrouter's
//! handles and by the clients and transactions of tokio-postgres and
//! deadpool-postgres (whose own `GenericClient` is sealed).

use std::future::Future;

use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::read::ReadBuilder;
use super::tx::Tx;
use super::write::WriteBuilder;
use super::DatabaseManager;
use crate::failure::error::Error;

/// Statements, wherever they run: code written once against `&impl
/// Queries` runs on a [`DatabaseManager`], a [`ReadBuilder`], a
/// [`WriteBuilder`], a [`Tx`] (a closure's or one from `begin()`), and on
/// tokio-postgres's and deadpool-postgres's clients and transactions.
///
/// ```no_run
/// use pgrouter::{Error, Queries};
///
/// async fn load(db: &impl Queries, id: i32) -> Result<Option<String>, Error> {
///     let row = db.query_opt("SELECT name FROM users WHERE id = $1", &[&id]).await?;
///     Ok(row.map(|row| row.get(0)))
/// }
///
/// async fn rename(db: &impl Queries, id: i32, name: &str) -> Result<bool, Error> {
///     let n = db.execute("UPDATE users SET name = $2 WHERE id = $1", &[&id, &name]).await?;
///     Ok(n == 1)
/// }
///
/// # async fn demo(db: pgrouter::DatabaseManager) -> Result<(), Error> {
/// load(&db, 7).await?; // a read, where the strategy says
/// load(&db.read().max_staleness(std::time::Duration::from_secs(1)), 7).await?;
/// rename(&db.write(), 7, "ada").await?; // on the primary
/// db.transaction(|tx| Box::pin(async move { rename(tx, 7, "ada").await })).await?;
/// let client = db.write_pool()?.get().await.map_err(Error::aborted)?;
/// load(&client, 7).await?; // a deadpool client, unrouted
/// # Ok(()) }
/// ```
///
/// Each call goes where its handle sends it: on a [`DatabaseManager`],
/// `query`, `query_one` and `query_opt` are reads and `execute` a write
/// (as its own methods are); everything on a [`WriteBuilder`] or a [`Tx`]
/// runs on the primary; a [`ReadBuilder`] reads with its options, and
/// refuses `execute` with
/// [`ErrorKind::InvalidArgument`](crate::error::ErrorKind::InvalidArgument)
/// (a repository function that writes needs a handle that writes). Errors
/// are pgrouter's [`Error`] for every
/// implementation (a tokio-postgres error becomes
/// [`ErrorKind::Database`](crate::error::ErrorKind::Database), its SQLSTATE
/// at [`Error::code`]).
///
/// The futures are `Send`, so repository calls run in spawned tasks.
/// Statements are given as text: a prepared `Statement` belongs to one
/// connection, which a routed handle does not have. Typed-parameter
/// variants (`query_typed`) are not part of it: pgrouter's handles already
/// prepare a statement once per connection (or learn its parameter types
/// once per node), which is what they save; [`Tx::query_typed`] exists
/// for code inside a transaction.
pub trait Queries: Send + Sync {
    /// Runs the statement and returns every row.
    fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<Vec<Row>, Error>> + Send;

    /// Runs the statement and returns its only row; any other count is an
    /// error ([`ErrorKind::RowCount`](crate::error::ErrorKind::RowCount) on
    /// pgrouter's handles, tokio-postgres's own error on its clients).
    fn query_one(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<Row, Error>> + Send;

    /// Runs the statement and returns its row, if any; more than one row is
    /// an error.
    fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<Option<Row>, Error>> + Send;

    /// Runs the statement and returns the number of rows it affected (for
    /// a `SELECT`, returned).
    fn execute(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<u64, Error>> + Send;
}

impl Queries for DatabaseManager {
    async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, Error> {
        DatabaseManager::query(self, sql, params).await
    }

    async fn query_one(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Row, Error> {
        DatabaseManager::query_one(self, sql, params).await
    }

    async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, Error> {
        DatabaseManager::query_opt(self, sql, params).await
    }

    async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, Error> {
        DatabaseManager::execute(self, sql, params).await
    }
}

impl Queries for ReadBuilder<'_> {
    async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, Error> {
        self.clone().query(sql, params).await
    }

    async fn query_one(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Row, Error> {
        self.clone().query_one(sql, params).await
    }

    async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, Error> {
        self.clone().query_opt(sql, params).await
    }

    /// Refused: a read handle runs reads only.
    async fn execute(&self, _sql: &str, _params: &[&(dyn ToSql + Sync)]) -> Result<u64, Error> {
        Err(Error::invalid_argument(
            "execute",
            "a read handle (read()) executes nothing: pass write(), a Tx or the DatabaseManager",
        ))
    }
}

impl Queries for WriteBuilder<'_> {
    async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, Error> {
        self.clone().query(sql, params).await
    }

    async fn query_one(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Row, Error> {
        self.clone().query_one(sql, params).await
    }

    async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, Error> {
        self.clone().query_opt(sql, params).await
    }

    async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, Error> {
        self.clone().execute(sql, params).await
    }
}

impl Queries for Tx<'_> {
    async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, Error> {
        Tx::query(self, sql, params).await
    }

    async fn query_one(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Row, Error> {
        Tx::query_one(self, sql, params).await
    }

    async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, Error> {
        Tx::query_opt(self, sql, params).await
    }

    async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, Error> {
        Tx::execute(self, sql, params).await
    }
}

/// `Queries` for `$client`, through the tokio-postgres client or
/// transaction `$own` it is or derefs to, errors converted.
macro_rules! queries_through {
    ($($client:ty => $own:ty),+ $(,)?) => {$(
        impl Queries for $client {
            async fn query(
                &self,
                sql: &str,
                params: &[&(dyn ToSql + Sync)],
            ) -> Result<Vec<Row>, Error> {
                let own: &$own = self;
                Ok(own.query(sql, params).await?)
            }

            async fn query_one(
                &self,
                sql: &str,
                params: &[&(dyn ToSql + Sync)],
            ) -> Result<Row, Error> {
                let own: &$own = self;
                Ok(own.query_one(sql, params).await?)
            }

            async fn query_opt(
                &self,
                sql: &str,
                params: &[&(dyn ToSql + Sync)],
            ) -> Result<Option<Row>, Error> {
                let own: &$own = self;
                Ok(own.query_opt(sql, params).await?)
            }

            async fn execute(
                &self,
                sql: &str,
                params: &[&(dyn ToSql + Sync)],
            ) -> Result<u64, Error> {
                let own: &$own = self;
                Ok(own.execute(sql, params).await?)
            }
        }
    )+};
}

queries_through!(
    tokio_postgres::Client => tokio_postgres::Client,
    tokio_postgres::Transaction<'_> => tokio_postgres::Transaction<'_>,
    deadpool_postgres::Object => tokio_postgres::Client,
    deadpool_postgres::ClientWrapper => tokio_postgres::Client,
    deadpool_postgres::Transaction<'_> => tokio_postgres::Transaction<'_>,
);

/// A reference to something that has [`Queries`] has them too, so a
/// repository function can hand its `&impl Queries` on.
impl<Q: Queries + ?Sized> Queries for &Q {
    fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<Vec<Row>, Error>> + Send {
        (**self).query(sql, params)
    }

    fn query_one(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<Row, Error>> + Send {
        (**self).query_one(sql, params)
    }

    fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<Option<Row>, Error>> + Send {
        (**self).query_opt(sql, params)
    }

    fn execute(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<u64, Error>> + Send {
        (**self).execute(sql, params)
    }
}
