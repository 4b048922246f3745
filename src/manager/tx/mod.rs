//! [`Tx`]: a transaction on the primary, a closure's or one from
//! `begin()`, with every statement it can send watched (see `watch.rs` for
//! why) and the transaction opened with its first statement (see
//! `opening.rs`); its streamed statements are in `streams.rs`.

mod streams;

use std::future::Future;
use std::marker::PhantomData;
use std::pin::{pin, Pin};

use futures_util::FutureExt;
use tokio::time::timeout_at;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Row, SimpleQueryMessage, Statement, ToStatement};

use super::explicit::Explicit;
use super::opening::{simple, Next, Opening};
use super::pooled::Pooled;
use super::session::PgError;
use super::transaction::Body;
use super::watch::Unfinished;
use crate::config::StatementMode;
use crate::failure::error::Error;
use crate::hub::Work;

/// The future a transaction closure returns: box it with `Box::pin(async
/// move { … })`. `?` on the [`Tx`]'s errors (and on a `tokio_postgres::Error`,
/// which converts into
/// [`ErrorKind::Database`](crate::error::ErrorKind::Database)) works; return
/// [`Error::aborted`] for the application's own reasons to roll back.
pub type TxFuture<'t, T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 't>>;

/// A caller's closure (the marker ties `T`'s lifetime to the closure's).
pub(crate) struct Closure<F, T>(pub(crate) F, pub(crate) PhantomData<T>);

impl<T, F> Body<Pooled> for Closure<F, T>
where
    F: for<'t> FnMut(&'t Tx<'t>) -> TxFuture<'t, T> + Send,
    T: Send,
{
    type Output = T;
    fn run<'t>(
        &'t mut self,
        session: &'t Pooled,
        opening: &'t Opening<'t>,
    ) -> impl Future<Output = Result<T, Error>> + Send + 't {
        let tx = Tx::lent(session, opening);
        async move { (self.0)(&tx).await }
    }
}

/// A transaction on the primary: the one a closure runs in
/// ([`WriteBuilder::transaction`](crate::WriteBuilder::transaction), which
/// lends it as `&Tx`), or one begun with
/// [`WriteBuilder::begin`](crate::WriteBuilder::begin) (owned: end it with
/// [`Tx::commit`] or [`Tx::rollback`]; dropped, it is rolled back).
///
/// Its methods are tokio-postgres's, returning pgrouter's [`Error`] (with
/// the SQLSTATE at [`Error::code`]; `?` in a closure works as before).
/// Every statement is watched: if one fails (or its answer is dropped
/// unread) and the transaction is committed anyway, pgrouter first asks
/// the server whether PostgreSQL rolled the transaction back, and then
/// returns [`ErrorKind::RolledBack`](crate::error::ErrorKind::RolledBack)
/// (a closure runs again after a serialization failure or a deadlock)
/// instead of a false `Ok`. The connection itself is not reachable: a
/// statement sent past the watch could end that way.
///
/// `BEGIN` goes out with the first statement. `SET TRANSACTION …`
/// statements sent first (isolation level, read only, deferrable, snapshot)
/// are sent with it, before pgrouter's own identity query, so they work
/// as in a plain transaction; their answer is not waited for (an error in
/// them comes back with the next statement, or the commit). pgrouter sends
/// `BEGIN` and `COMMIT` itself: do not send `COMMIT`, `ROLLBACK` or another
/// `BEGIN` through it (use `SAVEPOINT` and `ROLLBACK TO SAVEPOINT` for
/// partial rollbacks).
pub struct Tx<'t> {
    form: Form<'t>,
}

enum Form<'t> {
    /// A closure's: the runner holds the connection and ends it.
    Lent {
        session: &'t Pooled,
        opening: &'t Opening<'t>,
    },
    /// `begin()`'s: holds its connection.
    Owned(Box<Explicit<'t>>),
}

impl std::fmt::Debug for Tx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (_, opening) = self.parts();
        f.debug_struct("Tx")
            .field("explicit", &matches!(self.form, Form::Owned(_)))
            .field("open", &opening.is_open())
            .field("failure", &opening.watch().failure())
            .finish_non_exhaustive()
    }
}

/// How a statement went.
enum Sent<T> {
    /// It ran (or was held back): its answer.
    Ran(Result<T, PgError>),
    /// Opening the transaction failed.
    NotOpen(PgError),
    /// The deadline of a transaction from `begin()` passed.
    TimedOut,
}

mod sealed {
    use tokio_postgres::Statement;

    /// A statement's text, when it is given as text. Sealed: `str`,
    /// `String` and tokio-postgres's `Statement`, as for `ToStatement`.
    #[allow(unreachable_pub)] // Sealed: nameable by no one outside the crate.
    pub trait StatementText {
        /// The text, or `None` for a prepared statement.
        fn text(&self) -> Option<&str>;
    }

    impl StatementText for str {
        fn text(&self) -> Option<&str> {
            Some(self)
        }
    }

    impl StatementText for String {
        fn text(&self) -> Option<&str> {
            Some(self)
        }
    }

    impl StatementText for Statement {
        fn text(&self) -> Option<&str> {
            None
        }
    }
}

use sealed::StatementText;

impl<'t> Tx<'t> {
    /// A closure's transaction on `session`.
    pub(crate) fn lent(session: &'t Pooled, opening: &'t Opening<'t>) -> Self {
        Self {
            form: Form::Lent { session, opening },
        }
    }

    /// A transaction from `begin()`.
    pub(crate) fn explicit(explicit: Explicit<'t>) -> Self {
        Self {
            form: Form::Owned(Box::new(explicit)),
        }
    }

    fn parts(&self) -> (&Pooled, &Opening<'t>) {
        match &self.form {
            Form::Lent { session, opening } => (session, opening),
            Form::Owned(explicit) => (explicit.session(), explicit.opening()),
        }
    }

    /// Sends `statement` (text `sql` when known; `held`: what it gives if
    /// it is held back as a setting, when it may be), the transaction
    /// opened first; watched, and bounded by the deadline of a transaction
    /// from `begin()`.
    ///
    /// The statement comes pinned by the caller: taken by value, it would
    /// be kept twice in this future (as an argument, and where it is
    /// awaited), and moved in.
    async fn send<T, S: Future<Output = Result<T, PgError>>>(
        &self,
        sql: Option<&str>,
        held: Option<impl FnOnce() -> T>,
        statement: Pin<&mut S>,
    ) -> Result<T, Error> {
        let (session, opening) = self.parts();
        if let Form::Owned(explicit) = &self.form {
            explicit.usable()?;
        }
        let unfinished = Unfinished::new(opening.watch());
        let held = held.filter(|_| sql.is_some());
        let run = async {
            let before = opening.before(session, sql.unwrap_or(""), held.is_some());
            match (before.await, held) {
                (Ok(Next::Held), Some(held)) => Sent::Ran(Ok(held())),
                (Ok(_), _) => Sent::Ran(opening.watch().watch(statement.await)),
                (Err(error), _) => Sent::NotOpen(error),
            }
        };
        let sent = match &self.form {
            Form::Lent { .. } => run.await,
            Form::Owned(explicit) => {
                // A combinator, not an `async` block: the block would keep
                // `run` twice (captured, and inside the timeout).
                let bounded = timeout_at(explicit.deadline(), run)
                    .map(|sent| Ok(sent.unwrap_or(Sent::TimedOut)));
                // Nothing of a statement is applied before `COMMIT`.
                explicit.step(Work::Read, pin!(bounded)).await?
            }
        };
        if !matches!(sent, Sent::TimedOut) {
            unfinished.finish();
        }
        match sent {
            Sent::Ran(Ok(value)) => Ok(value),
            Sent::Ran(Err(error)) => Err(self.failed(error)),
            Sent::NotOpen(error) => Err(self.not_open(error)),
            Sent::TimedOut => Err(self.timed_out()),
        }
    }

    /// A statement's error: as raised in a closure (the runner classifies
    /// it), or classified on the node now for a transaction from `begin()`.
    fn failed(&self, error: PgError) -> Error {
        match &self.form {
            Form::Lent { .. } => Error::from(error),
            Form::Owned(explicit) => explicit.failed(error),
        }
    }

    fn not_open(&self, error: PgError) -> Error {
        match &self.form {
            Form::Lent { .. } => Error::from(error),
            Form::Owned(explicit) => explicit.not_open(error),
        }
    }

    fn timed_out(&self) -> Error {
        match &self.form {
            // A closure's deadline ends the closure first.
            Form::Lent { .. } => Error::aborted("the transaction's deadline passed"),
            Form::Owned(explicit) => explicit.timed_out(),
        }
    }

    /// tokio-postgres's `query`, watched.
    pub async fn query<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, Error>
    where
        T: ?Sized + ToStatement + StatementText,
    {
        let sql = statement.text();
        let held = sql.is_some_and(|sql| simple(sql, params.len()));
        let query = self.parts().0.object().query(statement, params);
        self.send(sql, held.then_some(Vec::new), pin!(query)).await
    }

    /// tokio-postgres's `query_one`, watched.
    pub async fn query_one<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, Error>
    where
        T: ?Sized + ToStatement + StatementText,
    {
        let query = self.parts().0.object().query_one(statement, params);
        self.send(statement.text(), never(), pin!(query)).await
    }

    /// tokio-postgres's `query_opt`, watched.
    pub async fn query_opt<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, Error>
    where
        T: ?Sized + ToStatement + StatementText,
    {
        let sql = statement.text();
        let held = sql.is_some_and(|sql| simple(sql, params.len()));
        let query = self.parts().0.object().query_opt(statement, params);
        self.send(sql, held.then_some(|| None), pin!(query)).await
    }

    /// tokio-postgres's `execute`, watched.
    pub async fn execute<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, Error>
    where
        T: ?Sized + ToStatement + StatementText,
    {
        let sql = statement.text();
        let held = sql.is_some_and(|sql| simple(sql, params.len()));
        let execute = self.parts().0.object().execute(statement, params);
        self.send(sql, held.then_some(|| 0), pin!(execute)).await
    }

    /// tokio-postgres's `query_typed` (parameter types given, no prepare
    /// round trip), watched.
    pub async fn query_typed(
        &self,
        query: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Vec<Row>, Error> {
        let held = simple(query, params.len());
        let rows = self.parts().0.object().query_typed(query, params);
        self.send(Some(query), held.then_some(Vec::new), pin!(rows))
            .await
    }

    /// tokio-postgres's `simple_query`, watched.
    pub async fn simple_query(&self, query: &str) -> Result<Vec<SimpleQueryMessage>, Error> {
        let held = || vec![SimpleQueryMessage::CommandComplete(0)];
        let messages = self.parts().0.object().simple_query(query);
        self.send(
            Some(query),
            simple(query, 0).then_some(held),
            pin!(messages),
        )
        .await
    }

    /// tokio-postgres's `batch_execute`, watched.
    pub async fn batch_execute(&self, query: &str) -> Result<(), Error> {
        let batch = self.parts().0.object().batch_execute(query);
        self.send(Some(query), Some(|| ()), pin!(batch)).await
    }

    /// tokio-postgres's `prepare`, watched.
    pub async fn prepare(&self, query: &str) -> Result<Statement, Error> {
        let prepare = self.parts().0.object().prepare(query);
        self.send(Some(query), never(), pin!(prepare)).await
    }

    /// tokio-postgres's `prepare_typed`, watched.
    pub async fn prepare_typed(&self, query: &str, types: &[Type]) -> Result<Statement, Error> {
        let prepare = self.parts().0.object().prepare_typed(query, types);
        self.send(Some(query), never(), pin!(prepare)).await
    }

    /// deadpool's `prepare_cached`, watched. On a node in
    /// [`StatementMode::Unnamed`], `prepare` instead: a statement cached
    /// on the connection would outlive the transaction, and a
    /// transaction-pooling proxy gives the next transaction another
    /// server connection, where it does not exist.
    pub async fn prepare_cached(&self, query: &str) -> Result<Statement, Error> {
        let session = self.parts().0;
        match session.statements().mode() {
            StatementMode::Unnamed => self.prepare(query).await,
            _ => {
                let prepare = session.object().prepare_cached(query);
                self.send(Some(query), never(), pin!(prepare)).await
            }
        }
    }
}

/// Ending a transaction from `begin()`.
impl Tx<'_> {
    /// Commits a transaction from [`WriteBuilder::begin`](crate::WriteBuilder::begin).
    ///
    /// As a closure's commit: if a statement failed (or its answer was
    /// dropped unread), pgrouter first asks whether the transaction is
    /// still good and returns
    /// [`ErrorKind::RolledBack`](crate::error::ErrorKind::RolledBack) if
    /// PostgreSQL rolled it back; when the answer to `COMMIT` is lost, it
    /// finds out whether the transaction committed (`Ok`), did not
    /// ([`ErrorKind::NotCommitted`](crate::error::ErrorKind::NotCommitted)),
    /// or, only if neither can be shown before the deadline,
    /// [`ErrorKind::OutcomeUnknown`](crate::error::ErrorKind::OutcomeUnknown).
    /// Nothing is retried: the caller decides. A closure's transaction
    /// (lent as `&Tx`) cannot be moved here; it is committed when the
    /// closure returns `Ok`.
    pub async fn commit(self) -> Result<(), Error> {
        match self.form {
            Form::Owned(explicit) => explicit.commit().await,
            Form::Lent { .. } => Err(lent("commit")),
        }
    }

    /// Rolls back a transaction from [`WriteBuilder::begin`](crate::WriteBuilder::begin).
    /// A connection that cannot say `ROLLBACK` (lost, or past the deadline)
    /// is closed instead, which rolls the transaction back too.
    pub async fn rollback(self) -> Result<(), Error> {
        match self.form {
            Form::Owned(explicit) => {
                explicit.rollback().await;
                Ok(())
            }
            Form::Lent { .. } => Err(lent("rollback")),
        }
    }
}

/// No value to give in place of a statement's answer: it is never held
/// back.
fn never<T>() -> Option<fn() -> T> {
    None
}

/// A closure's transaction is ended by the runner.
fn lent(option: &'static str) -> Error {
    Error::invalid_argument(
        option,
        "a closure's transaction ends when the closure returns",
    )
}

const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tx<'static>>();
};
