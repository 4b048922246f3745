//! Writes and transactions: the builder a caller sets up. They run on the
//! primary through the write loop ([`on_primary`]); a transaction's steps
//! are the runner's (`transaction.rs`).

use std::marker::PhantomData;
use std::time::Duration;

use tokio_postgres::{IsolationLevel, Row};

use super::attempt::{at_most_one, exactly_one, traced, Call, Deadline};
use super::begin::TxOptions;
use super::explicit::{Start, Started};
use super::pooled::Pools;
use super::primary::{on_primary, OnPrimary};
use super::session::{Connect, Count, FirstRow, Params, Returns, RowOf, Rows};
use super::transaction::{Body, Statement, TransactionCall};
use super::tx::{Closure, Tx, TxFuture};
use crate::causal::lsn::CausalToken;
use crate::causal::scope as causal;
use crate::failure::error::{Error, ErrorKind};
use crate::hub::Hub;
use crate::observe::call_info::{self, CallInfo};
use crate::observe::spans::Observer;

/// A write or transaction being set up; see
/// [`DatabaseManager::write`](crate::DatabaseManager::write). Options left
/// unset use the configuration's values.
///
/// Runs on the node that is primary now, waiting up to
/// [`Config::write_hold`](crate::Config::write_hold) for one during a
/// failover. Retried with exponential backoff and jitter (see
/// [`RetrySettings`](crate::config::RetrySettings)) while the deadline allows, but
/// only after failures a retry can fix: nothing sent (checkout, connect),
/// 40001, 40P01, 57P01/57P02/57P03, 25006 (the last four also have the node
/// probed at once). Constraint violations (class 23), syntax and
/// permission (42), data (22) and every other server error return at once.
///
/// Inside a [`causal_scope`](crate::causal::causal_scope) a write (or transaction)
/// also fetches its causal token and advances the scope to it, or, without a
/// position (or with [`ReadYourWrites::Window`](crate::config::ReadYourWrites::Window)),
/// sends the scope's reads to the primary for
/// [`CausalSettings::primary_window`](crate::config::CausalSettings::primary_window).
#[derive(Clone)]
#[must_use = "a write does nothing until execute, a query method or transaction is awaited"]
pub struct WriteBuilder<'a> {
    pub(crate) hub: &'a Hub,
    pub(crate) idempotent: bool,
    exactly_once: bool,
    deadline: Option<Duration>,
    pub(crate) info: Option<&'a CallInfo>,
    options: TxOptions,
}

impl std::fmt::Debug for WriteBuilder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteBuilder")
            .field("idempotent", &self.idempotent)
            .field("exactly_once", &self.exactly_once)
            .field("deadline", &self.deadline)
            .field("info", &self.info)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<'a> WriteBuilder<'a> {
    pub(crate) fn new(hub: &'a Hub) -> Self {
        Self {
            hub,
            idempotent: false,
            exactly_once: false,
            deadline: None,
            info: None,
            options: TxOptions::default(),
        }
    }

    /// Marks the statement (or the transaction) safe to run twice, e.g. an
    /// upsert or a delete by key. Then a connection lost after sending it
    /// (or after sending `COMMIT`) is retried instead of failing with
    /// [`ErrorKind::OutcomeUnknown`](crate::error::ErrorKind::OutcomeUnknown).
    pub fn idempotent(mut self) -> Self {
        self.idempotent = true;
        self
    }

    /// Runs the statement in a transaction whose lost `COMMIT` answer is
    /// resolved, as [`WriteBuilder::transaction`] does (also when
    /// [`OutcomeSettings::resolve`](crate::config::OutcomeSettings::resolve) is
    /// off): a connection lost after the statement was sent then gives the
    /// statement's result once it is shown to have committed, or runs it
    /// again once it is shown not to have, instead of
    /// [`ErrorKind::OutcomeUnknown`](crate::error::ErrorKind::OutcomeUnknown). It costs two more round trips than a plain
    /// write (`BEGIN` with the transaction's identity, then the statement,
    /// then `COMMIT`) and a transaction id; BENCHMARKS.md has the measured
    /// cost. Without [`OutcomeSettings::marker_table`](crate::config::OutcomeSettings::marker_table),
    /// a commit can only be shown by the server that ran it, so across a
    /// failover the result may still be unknown.
    pub fn exactly_once(mut self) -> Self {
        self.exactly_once = true;
        self
    }

    /// Bounds this call, retries and write hold included, by `deadline`
    /// instead of [`Config::deadline`](crate::Config::deadline). Zero is
    /// [`ErrorKind::InvalidArgument`](crate::error::ErrorKind::InvalidArgument).
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Records in `slot` which node served the write (or transaction), if
    /// it succeeds, and its causal token when the slot was made with
    /// [`CallInfo::with_token`] (the token query then rides behind the
    /// statement or `COMMIT`, in the same round trip).
    pub fn info(mut self, slot: &'a CallInfo) -> Self {
        self.info = Some(slot);
        self
    }

    /// Sets the transaction's isolation level (sent with its `BEGIN`),
    /// as tokio-postgres's `TransactionBuilder::isolation_level` does.
    /// Default: the server's (`default_transaction_isolation`, normally
    /// read committed). For [`transaction`](WriteBuilder::transaction),
    /// [`begin`](WriteBuilder::begin) and
    /// [`exactly_once`](WriteBuilder::exactly_once) statements; a plain
    /// statement with it is
    /// [`ErrorKind::InvalidArgument`](crate::error::ErrorKind::InvalidArgument).
    /// Under `Serializable`, a serialization failure (40001) runs a
    /// closure again as a whole.
    pub fn isolation_level(mut self, level: IsolationLevel) -> Self {
        self.options.isolation = Some(level);
        self
    }

    /// Sets the transaction's access mode: `READ ONLY` (`true`) or `READ
    /// WRITE` (`false`), sent with its `BEGIN`, as tokio-postgres's
    /// `TransactionBuilder::read_only` does. A read-only transaction
    /// writes nothing, so it takes no transaction id and is not resolved
    /// after a lost `COMMIT` answer: it runs again, as an
    /// [`idempotent`](WriteBuilder::idempotent) one. Default: the server's.
    /// For transactions only, as [`isolation_level`](WriteBuilder::isolation_level).
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.options.read_only = Some(read_only);
        self
    }

    /// Sets whether the transaction is `DEFERRABLE` (sent with its
    /// `BEGIN`; it matters only for a serializable, read-only transaction,
    /// which then waits for a snapshot that cannot fail with 40001), as
    /// tokio-postgres's `TransactionBuilder::deferrable` does. Default: the
    /// server's. For transactions only, as
    /// [`isolation_level`](WriteBuilder::isolation_level).
    pub fn deferrable(mut self, deferrable: bool) -> Self {
        self.options.deferrable = Some(deferrable);
        self
    }

    /// Runs the statement and returns the number of rows affected.
    pub async fn execute(self, sql: &str, params: Params<'_>) -> Result<u64, Error> {
        self.run::<Count, _>(Pools, sql, params)
            .await
            .map(|served| served.output)
    }

    /// Runs the statement (e.g. with `RETURNING`) and returns every row.
    pub async fn query(self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, Error> {
        self.run::<Rows, _>(Pools, sql, params)
            .await
            .map(|served| served.output)
    }

    /// Runs the statement and returns its only row; any other count is
    /// [`ErrorKind::RowCount`](crate::error::ErrorKind::RowCount).
    pub async fn query_one(self, sql: &str, params: Params<'_>) -> Result<Row, Error> {
        let hub = self.hub;
        let served = self.run::<FirstRow, _>(Pools, sql, params).await?;
        exactly_one(&hub.context(served.index), served.output)
    }

    /// Runs the statement and returns its row, if any; more than one row is
    /// [`ErrorKind::RowCount`](crate::error::ErrorKind::RowCount).
    pub async fn query_opt(self, sql: &str, params: Params<'_>) -> Result<Option<Row>, Error> {
        let hub = self.hub;
        let served = self.run::<FirstRow, _>(Pools, sql, params).await?;
        at_most_one(&hub.context(served.index), served.output)
    }

    /// `BEGIN` with the transaction's options, checked.
    fn begin_sql(&self) -> Result<String, Error> {
        self.options.begin_sql()
    }

    /// Whether a lost `COMMIT` of the transaction is resolved: not for a
    /// read-only one, which writes nothing (and may not insert a marker).
    fn resolved(&self, asked: bool) -> bool {
        asked && !self.options.is_read_only()
    }

    /// Whether the transaction may run twice: marked so, or read only.
    fn rerunnable(&self) -> bool {
        self.idempotent || self.options.is_read_only()
    }

    /// A pooled connection of the node that is primary now (held for
    /// during a failover, as writes are), for what one statement cannot
    /// do: `COPY … FROM`, a streaming `query_raw`, portals, a transaction
    /// driven by hand. The deadline bounds finding the primary and the
    /// checkout only; what runs on the connection is not retried, resolved
    /// or bounded by pgrouter. Dropping it returns it to its pool.
    ///
    /// ```no_run
    /// # async fn run(db: pgrouter::DatabaseManager) -> Result<(), Box<dyn std::error::Error>> {
    /// let client = db.write().client().await?;
    /// client.batch_execute("COPY orders FROM '/dev/null'").await?;
    /// # Ok(()) }
    /// ```
    pub async fn client(self) -> Result<deadpool_postgres::Client, Error> {
        let deadline = self.deadline_from_now()?;
        if let Some(option) = self.options.first_set() {
            let reason = "applies to transaction(), begin() and exactly_once() only";
            return Err(Error::invalid_argument(option, reason));
        }
        super::dedicated::for_write(self.hub, deadline, self.info).await
    }

    /// The deadline in force, checked, counted from now.
    pub(crate) fn deadline_from_now(&self) -> Result<Deadline, Error> {
        match self.deadline {
            Some(deadline) if deadline.is_zero() => Err(Error::invalid_argument(
                "deadline",
                "must be greater than zero",
            )),
            Some(deadline) => Ok(Deadline::start(deadline)),
            None => Ok(Deadline::start(self.hub.config.deadline)),
        }
    }

    /// Runs the statement; inside a [`causal_scope`](crate::causal::causal_scope)
    /// it also asks for the token (unless the window is chosen) and advances
    /// the scope to it, or opens the scope's window. Counts the
    /// outcome for readiness, and records the server if asked.
    pub(crate) async fn run<K: Returns, C: Connect>(
        self,
        connect: C,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Served<K::Output<RowOf<C>>>, Error> {
        let (hub, slot) = (self.hub, self.info);
        let token = slot.is_some_and(CallInfo::wants_token);
        let scoped = causal::wants_position(&hub.config.causal);
        let result = self
            .run_statement::<K, C>(connect, sql, params, token || scoped)
            .await;
        // A call refused before it started (a bad option) is not counted.
        if !matches!(&result, Err(error) if matches!(error.kind(), ErrorKind::InvalidArgument { .. }))
        {
            let failed = result.as_ref().is_err_and(Error::is_unavailable);
            hub.write_outcomes.record(failed);
        }
        if let Ok(served) = &result {
            call_info::record(slot, hub, served.index, Some(served.token));
            causal::wrote(served.token, &hub.config.causal);
        }
        result
    }

    async fn run_statement<K: Returns, C: Connect>(
        self,
        connect: C,
        sql: &str,
        params: Params<'_>,
        token: bool,
    ) -> Result<Served<K::Output<RowOf<C>>>, Error> {
        let observer = Observer::write(self.hub, sql, self.exactly_once);
        let deadline = match self.deadline_from_now() {
            Ok(deadline) => deadline,
            Err(error) => return Err(observer.rejected(self.hub, error)),
        };
        if let Some(option) = self.options.first_set().filter(|_| !self.exactly_once) {
            let reason = "applies to transaction(), begin() and exactly_once() only";
            let error = Error::invalid_argument(option, reason);
            return Err(observer.rejected(self.hub, error));
        }
        if self.exactly_once {
            return self
                .run_exactly_once::<K, C>(connect, sql, params, deadline, token, observer)
                .await;
        }
        let call = Call {
            sql,
            params,
            deadline,
            token,
        };
        let statement = SingleStatement::<K, C> {
            connect,
            call: &call,
            kind: PhantomData,
        };
        on_primary(
            self.hub,
            call.deadline,
            self.idempotent,
            statement,
            observer,
        )
        .await
    }
}

impl<'a> WriteBuilder<'a> {
    /// Runs `body` in a transaction on the primary: commits when it returns
    /// `Ok`, rolls back when it returns `Err`.
    ///
    /// The whole closure runs again (with backoff, within the deadline) after
    /// a serialization failure (40001), a deadlock (40P01), a shutdown
    /// (57P0x), or a connection lost before COMMIT was sent (nothing was
    /// committed). So the closure may run more than once: keep side
    /// effects outside the database out of it.
    ///
    /// When the answer to `COMMIT` is lost, pgrouter finds out whether the
    /// transaction committed (see
    /// [`OutcomeSettings`](crate::config::OutcomeSettings)): if it did, this returns
    /// the closure's value; if it did not, the closure runs again. Only if
    /// neither can be shown before the deadline is the result
    /// [`ErrorKind::OutcomeUnknown`](crate::error::ErrorKind::OutcomeUnknown) (or a [`ErrorKind::Timeout`](crate::error::ErrorKind::Timeout) after `COMMIT`),
    /// unless the write is marked [`idempotent`](WriteBuilder::idempotent), which
    /// runs it again then.
    ///
    /// `BEGIN` carries the options set with
    /// [`isolation_level`](WriteBuilder::isolation_level),
    /// [`read_only`](WriteBuilder::read_only) and
    /// [`deferrable`](WriteBuilder::deferrable), and goes out with the
    /// closure's first statement: `SET TRANSACTION …` sent first works as
    /// in a plain transaction (see [`Tx`]).
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # async fn demo(db: pgrouter::DatabaseManager) -> Result<(), pgrouter::Error> {
    /// let moved = db
    ///     .write()
    ///     .deadline(Duration::from_secs(2))
    ///     .transaction(|tx| {
    ///         Box::pin(async move {
    ///             tx.execute("UPDATE accounts SET balance = balance - 10 WHERE id = 1", &[]).await?;
    ///             tx.execute("UPDATE accounts SET balance = balance + 10 WHERE id = 2", &[]).await?;
    ///             Ok(10)
    ///         })
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn transaction<T, F>(self, body: F) -> Result<T, Error>
    where
        F: for<'t> FnMut(&'t Tx<'t>) -> TxFuture<'t, T> + Send,
        T: Send,
    {
        let body = Closure(body, PhantomData);
        let (value, _) = self.run_transaction(Pools, body).await?;
        Ok(value)
    }

    /// Begins a transaction on the primary and hands it over, for code
    /// that cannot be written as a retryable closure: send its statements
    /// through the [`Tx`], then [`Tx::commit`] or [`Tx::rollback`];
    /// dropped without either, it is rolled back (in the background, or by
    /// closing its connection, which never returns to the pool inside a
    /// transaction).
    ///
    /// Finding the primary and a connection is retried as for any write
    /// (the write hold included); `BEGIN` (with the options set here) goes
    /// out with the first statement. Nothing after that is retried: a
    /// serialization failure is the caller's to retry (its
    /// [`Error::retry_hint`] says so). The deadline bounds the whole
    /// transaction, from `begin()` to the end of `commit()`: a statement
    /// past it fails with
    /// [`ErrorKind::Timeout`](crate::error::ErrorKind::Timeout). A lost
    /// `COMMIT` answer is resolved as a closure's is (see
    /// [`Tx::commit`]).
    ///
    /// ```no_run
    /// # async fn demo(db: pgrouter::DatabaseManager) -> Result<(), pgrouter::Error> {
    /// use pgrouter::tokio_postgres::IsolationLevel;
    ///
    /// let tx = db.write().isolation_level(IsolationLevel::Serializable).begin().await?;
    /// tx.execute("UPDATE accounts SET balance = balance - 10 WHERE id = 1", &[]).await?;
    /// tx.execute("UPDATE accounts SET balance = balance + 10 WHERE id = 2", &[]).await?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn begin(self) -> Result<Tx<'a>, Error> {
        let hub = self.hub;
        let observer = Observer::transaction(hub);
        let checked = self
            .deadline_from_now()
            .and_then(|deadline| Ok((deadline, self.begin_sql()?)));
        let (deadline, begin) = match checked {
            Ok(checked) => checked,
            Err(error) => return Err(observer.rejected(hub, error)),
        };
        let token = self.info.is_some_and(CallInfo::wants_token)
            || causal::wants_position(&hub.config.causal);
        let start = Start { deadline, token };
        let started = match on_primary(hub, deadline, false, start, observer).await {
            Ok(started) => Started::new(hub, deadline, started),
            Err(error) => {
                hub.write_outcomes.record(error.is_unavailable());
                return Err(error);
            }
        };
        // In flight for `close` until it ends; nothing was sent yet if
        // closing already started.
        let held = hub.hold_call()?;
        let resolve = self.resolved(hub.config.outcomes.resolve);
        Ok(Tx::explicit(
            started.transaction(begin, resolve, self.info, held),
        ))
    }

    /// The transaction `body`, its connections from `connect`.
    pub(crate) async fn run_transaction<C: Connect, B: Body<C::Session>>(
        self,
        connect: C,
        body: B,
    ) -> Result<(B::Output, Option<CausalToken>), Error> {
        let token = self.info.is_some_and(CallInfo::wants_token);
        let observer = Observer::transaction(self.hub);
        let checked = self
            .deadline_from_now()
            .and_then(|deadline| Ok((deadline, self.begin_sql()?)));
        let (deadline, begin) = match checked {
            Ok(checked) => checked,
            Err(error) => return Err(observer.rejected(self.hub, error)),
        };
        // Inside a causal scope, the commit's token advances the scope.
        let scoped = causal::wants_position(&self.hub.config.causal);
        let call = TransactionCall {
            connect,
            body,
            deadline,
            begin,
            token: token || scoped,
            resolve: self.resolved(self.hub.config.outcomes.resolve),
        };
        let rerunnable = self.rerunnable();
        let result = on_primary(self.hub, deadline, rerunnable, call, observer).await;
        let failed = result.as_ref().is_err_and(Error::is_unavailable);
        self.hub.write_outcomes.record(failed);
        let done = result?;
        call_info::record(self.info, self.hub, done.index, done.token);
        let token = done.token.unwrap_or(CausalToken::PRIMARY);
        causal::wrote(token, &self.hub.config.causal);
        Ok((done.value, done.token))
    }
}

impl WriteBuilder<'_> {
    /// The statement as the body of a resolved transaction.
    async fn run_exactly_once<K: Returns, C: Connect>(
        self,
        connect: C,
        sql: &str,
        params: Params<'_>,
        deadline: Deadline,
        token: bool,
        observer: Observer,
    ) -> Result<Served<K::Output<RowOf<C>>>, Error> {
        let begin = match self.begin_sql() {
            Ok(begin) => begin,
            Err(error) => return Err(observer.rejected(self.hub, error)),
        };
        let call = TransactionCall {
            connect,
            body: Statement::<K> {
                sql,
                params,
                kind: PhantomData,
            },
            deadline,
            begin,
            token,
            resolve: self.resolved(true),
        };
        let rerunnable = self.rerunnable();
        let done = on_primary(self.hub, deadline, rerunnable, call, observer).await?;
        Ok(Served {
            index: done.index,
            output: done.value,
            token: done.token.unwrap_or(CausalToken::PRIMARY),
        })
    }
}

/// What a write returned, and where.
pub(crate) struct Served<T> {
    pub(crate) index: usize,
    pub(crate) output: T,
    /// The causal token when one was asked for, else the one that sends
    /// reads to the primary.
    pub(crate) token: CausalToken,
}

/// A single statement, its connections from `connect`.
struct SingleStatement<'c, K, C> {
    connect: C,
    call: &'c Call<'c>,
    kind: PhantomData<K>,
}

impl<K: Returns, C: Connect> OnPrimary for SingleStatement<'_, K, C> {
    type Output = Served<K::Output<RowOf<C>>>;
    async fn attempt(
        &mut self,
        hub: &Hub,
        index: usize,
        number: u32,
    ) -> Result<Self::Output, Error> {
        let (output, token) = traced::<K, C>(
            hub,
            self.connect,
            index,
            number,
            self.call,
            tokio::time::Instant::now(),
        )
        .await?;
        Ok(Served {
            index,
            output,
            token: token.unwrap_or(CausalToken::PRIMARY),
        })
    }
}
