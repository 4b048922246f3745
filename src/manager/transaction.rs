//! The transaction runner: BEGIN on the primary, hand the closure the
//! transaction, COMMIT on `Ok`, ROLLBACK on `Err`, retry the whole closure
//! when that is safe.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use deadpool_postgres::{Object, Transaction};
use tokio::time::{timeout_at, Instant};
use tokio_postgres::CancelToken;
use tracing::Instrument;

use super::attempt::{token_of, Fate, TOKEN_SQL};
use super::{DatabaseManager, Shared, WriteOptions};
use crate::error::Error;
use crate::lsn::CausalToken;
use crate::retry::Retrier;

/// The future a transaction closure returns: box it with `Box::pin(async
/// move { … })`. `?` on a `tokio_postgres::Error` converts it into
/// [`Error::Postgres`]; return [`Error::aborted`] for the application's own
/// reasons to roll back.
pub type TxFuture<'t, T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 't>>;

impl DatabaseManager {
    /// Runs `body` in a transaction on the primary: commits when it returns
    /// `Ok`, rolls back when it returns `Err`.
    ///
    /// The whole closure runs again (with backoff, within the deadline) after
    /// a serialization failure (40001), a deadlock (40P01), a shutdown
    /// (57P0x), or a connection lost before COMMIT was sent (nothing was
    /// committed). A connection lost during COMMIT gives
    /// [`Error::OutcomeUnknown`] unless the options say the closure is
    /// idempotent. So the closure may run more than once: keep side effects
    /// outside the database out of it.
    ///
    /// ```no_run
    /// # async fn demo(db: pgrouter::DatabaseManager) -> Result<(), pgrouter::Error> {
    /// let moved = db
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
    pub async fn transaction<T, F>(&self, body: F) -> Result<T, Error>
    where
        F: for<'t> FnMut(&'t Transaction<'t>) -> TxFuture<'t, T> + Send,
        T: Send,
    {
        self.transaction_with(WriteOptions::default(), body).await
    }

    /// [`DatabaseManager::transaction`] with per-call options.
    pub async fn transaction_with<T, F>(&self, options: WriteOptions, body: F) -> Result<T, Error>
    where
        F: for<'t> FnMut(&'t Transaction<'t>) -> TxFuture<'t, T> + Send,
        T: Send,
    {
        let (value, _) = self.run_transaction(&options, false, body).await?;
        Ok(value)
    }

    /// [`DatabaseManager::transaction_with`], also returning the commit's
    /// [`CausalToken`] for read-your-writes (one extra round trip after
    /// COMMIT).
    pub async fn transaction_with_token<T, F>(
        &self,
        options: WriteOptions,
        body: F,
    ) -> Result<(T, CausalToken), Error>
    where
        F: for<'t> FnMut(&'t Transaction<'t>) -> TxFuture<'t, T> + Send,
        T: Send,
    {
        let (value, token) = self.run_transaction(&options, true, body).await?;
        Ok((value, token.unwrap_or(CausalToken::PRIMARY)))
    }

    async fn run_transaction<T, F>(
        &self,
        options: &WriteOptions,
        token: bool,
        body: F,
    ) -> Result<(T, Option<CausalToken>), Error>
    where
        F: for<'t> FnMut(&'t Transaction<'t>) -> TxFuture<'t, T> + Send,
        T: Send,
    {
        let shared = &self.inner.shared;
        let bounds = Bounds::new(options.budget(shared.config.deadline)?, token);
        let span = tracing::debug_span!("pgrouter.transaction");
        shared
            .transaction(bounds, options.idempotent, body)
            .instrument(span)
            .await
    }
}

/// One transaction's limits, and whether it wants a causal token.
#[derive(Clone, Copy)]
struct Bounds {
    deadline: Instant,
    budget: Duration,
    token: bool,
}

impl Bounds {
    fn new(budget: Duration, token: bool) -> Self {
        Self {
            deadline: Instant::now() + budget,
            budget,
            token,
        }
    }
}

type Committed<T> = (T, Option<CausalToken>);

/// What a timed-out attempt needs: how to cancel it, and when it began.
struct InFlight {
    cancel: CancelToken,
    started: Instant,
}

impl Shared {
    async fn transaction<T, F>(
        &self,
        bounds: Bounds,
        idempotent: bool,
        mut body: F,
    ) -> Result<Committed<T>, Error>
    where
        F: for<'t> FnMut(&'t Transaction<'t>) -> TxFuture<'t, T> + Send,
        T: Send,
    {
        self.ensure_open()?;
        let mut retrier = Retrier::new(&self.config.retry, bounds.deadline, idempotent);
        loop {
            let result = match self.await_primary(bounds.deadline).await {
                Ok(index) => {
                    let span = tracing::debug_span!("pgrouter.attempt",
                        node = %self.nodes[index].context.node, attempt = retrier.attempt());
                    self.transaction_once(index, bounds, &mut body)
                        .instrument(span)
                        .await
                }
                Err(error) => Err(error),
            };
            match result {
                Ok(value) => return Ok(value),
                Err(error) if retrier.again(&error).await => continue,
                Err(error) => return Err(error),
            }
        }
    }

    async fn transaction_once<T, F>(
        &self,
        index: usize,
        bounds: Bounds,
        body: &mut F,
    ) -> Result<Committed<T>, Error>
    where
        F: for<'t> FnMut(&'t Transaction<'t>) -> TxFuture<'t, T> + Send,
        T: Send,
    {
        let started = Instant::now();
        let mut client = self.checkout(index, bounds.deadline, bounds.budget).await?;
        let cancel = InFlight {
            cancel: client.cancel_token(),
            started,
        };
        let (result, fate) = self
            .run_transaction(index, &mut client, cancel, bounds, body)
            .await;
        if let Fate::Discard = fate {
            drop(Object::take(client));
            return result.map(|value| (value, None));
        }
        match result {
            Ok(value) if bounds.token => {
                let token = self.read_token(index, &client, bounds).await?;
                Ok((value, Some(token)))
            }
            Ok(value) => Ok((value, None)),
            Err(error) => Err(error),
        }
    }

    async fn run_transaction<T, F>(
        &self,
        index: usize,
        client: &mut Object,
        cancel: InFlight,
        bounds: Bounds,
        body: &mut F,
    ) -> (Result<T, Error>, Fate)
    where
        F: for<'t> FnMut(&'t Transaction<'t>) -> TxFuture<'t, T> + Send,
        T: Send,
    {
        let tx = match timeout_at(bounds.deadline, client.transaction()).await {
            Ok(Ok(tx)) => tx,
            Ok(Err(error)) => return self.failed(index, error, false),
            Err(_) => return self.expired(index, cancel, bounds),
        };
        let value = match timeout_at(bounds.deadline, body(&tx)).await {
            Ok(Ok(value)) => value,
            Ok(Err(error)) => return self.roll_back(index, tx, error, bounds).await,
            Err(_) => return self.expired(index, cancel, bounds),
        };
        match timeout_at(bounds.deadline, tx.commit()).await {
            Ok(Ok(())) => (Ok(value), Fate::Keep),
            // The COMMIT may have reached the server: a lost connection now
            // leaves the outcome unknown.
            Ok(Err(error)) => self.failed(index, error, true),
            Err(_) => self.expired(index, cancel, bounds),
        }
    }

    /// The committed transaction's causal token, read on its connection.
    async fn read_token(
        &self,
        index: usize,
        client: &Object,
        bounds: Bounds,
    ) -> Result<CausalToken, Error> {
        match timeout_at(bounds.deadline, client.query_one(TOKEN_SQL, &[])).await {
            Ok(Ok(row)) => token_of(&row).map_err(|error| self.token_unavailable(index, error)),
            Ok(Err(error)) => Err(self.token_unavailable(index, error)),
            Err(_) => Err(Error::Timeout {
                context: self.nodes[index].context.clone(),
                deadline: bounds.budget,
            }),
        }
    }

    /// The closure failed: classify its error and roll back.
    async fn roll_back<T>(
        &self,
        index: usize,
        tx: Transaction<'_>,
        error: Error,
        bounds: Bounds,
    ) -> (Result<T, Error>, Fate) {
        let (error, fate) = match error {
            // Nothing is committed before COMMIT: a lost connection here is
            // as safe to retry as one lost before sending.
            Error::Postgres(source) => self.classify_statement_error(index, source, false),
            other => (other, Fate::Keep),
        };
        if let Fate::Discard = fate {
            return (Err(error), fate);
        }
        match timeout_at(bounds.deadline, tx.rollback()).await {
            Ok(Ok(())) => (Err(error), Fate::Keep),
            _ => (Err(error), Fate::Discard),
        }
    }

    fn failed<T>(
        &self,
        index: usize,
        error: tokio_postgres::Error,
        sent: bool,
    ) -> (Result<T, Error>, Fate) {
        let (error, fate) = self.classify_statement_error(index, error, sent);
        (Err(error), fate)
    }

    fn expired<T>(
        &self,
        index: usize,
        in_flight: InFlight,
        bounds: Bounds,
    ) -> (Result<T, Error>, Fate) {
        self.connector.cancel_in_background(in_flight.cancel);
        let error = self.timed_out(index, bounds.budget, in_flight.started);
        (Err(error), Fate::Discard)
    }
}
