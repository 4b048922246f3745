//! The transaction runner: BEGIN on the primary, hand the closure the
//! transaction, COMMIT on `Ok`, ROLLBACK on `Err`, and run the whole closure
//! again when that is safe (through the same retry loop as writes).

use std::future::Future;
use std::pin::Pin;

use deadpool_postgres::{Object, Transaction};
use tokio::time::timeout_at;
use tracing::Instrument;

use super::attempt::{span, token_of, Attempt, Busy, Deadline, Failure, TOKEN_SQL};
use super::tx::Tx;
use super::write::{on_primary, OnPrimary, Write};
use crate::error::Error;
use crate::hub::Hub;
use crate::lsn::CausalToken;
use crate::safety::{Fate, Phase};
use tokio_postgres::error::SqlState;

/// The future a transaction closure returns: box it with `Box::pin(async
/// move { … })`. `?` on a `tokio_postgres::Error` converts it into
/// [`Error::Postgres`]; return [`Error::aborted`] for the application's own
/// reasons to roll back.
pub type TxFuture<'t, T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 't>>;

impl Write<'_> {
    /// Runs `body` in a transaction on the primary: commits when it returns
    /// `Ok`, rolls back when it returns `Err`.
    ///
    /// The whole closure runs again (with backoff, within the deadline) after
    /// a serialization failure (40001), a deadlock (40P01), a shutdown
    /// (57P0x), or a connection lost before COMMIT was sent (nothing was
    /// committed). A connection lost during COMMIT gives
    /// [`Error::OutcomeUnknown`] unless the write is marked
    /// [`idempotent`](Write::idempotent). So the closure may run more than
    /// once: keep side effects outside the database out of it.
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
        let (value, _) = self.run_transaction(false, body).await?;
        Ok(value)
    }

    /// [`Write::transaction`], also returning the commit's [`CausalToken`]
    /// for read-your-writes (one extra round trip after COMMIT).
    pub async fn transaction_with_token<T, F>(self, body: F) -> Result<(T, CausalToken), Error>
    where
        F: for<'t> FnMut(&'t Tx<'t>) -> TxFuture<'t, T> + Send,
        T: Send,
    {
        let (value, token) = self.run_transaction(true, body).await?;
        Ok((value, token.unwrap_or(CausalToken::PRIMARY)))
    }

    async fn run_transaction<T, F>(
        self,
        token: bool,
        body: F,
    ) -> Result<(T, Option<CausalToken>), Error>
    where
        F: for<'t> FnMut(&'t Tx<'t>) -> TxFuture<'t, T> + Send,
        T: Send,
    {
        let deadline = self.deadline_from_now()?;
        let call = TransactionCall {
            body,
            deadline,
            token,
        };
        let span = tracing::debug_span!("pgrouter.transaction");
        on_primary(self.hub, deadline, self.idempotent, call)
            .instrument(span)
            .await
    }
}

/// The closure, its deadline, and whether it wants a causal token.
struct TransactionCall<F> {
    body: F,
    deadline: Deadline,
    token: bool,
}

impl<T, F> OnPrimary for TransactionCall<F>
where
    F: for<'t> FnMut(&'t Tx<'t>) -> TxFuture<'t, T> + Send,
    T: Send,
{
    type Output = (T, Option<CausalToken>);

    async fn attempt(
        &mut self,
        hub: &Hub,
        index: usize,
        number: u32,
    ) -> Result<Self::Output, Error> {
        let attempt = Attempt::start(hub, index, self.deadline);
        self.once(attempt)
            .instrument(span(hub, index, number))
            .await
    }
}

impl<T, F> TransactionCall<F>
where
    F: for<'t> FnMut(&'t Tx<'t>) -> TxFuture<'t, T> + Send,
    T: Send,
{
    async fn once(&mut self, attempt: Attempt<'_>) -> Result<(T, Option<CausalToken>), Error> {
        let mut client = attempt.checkout().await?;
        match run(&attempt, &mut client, &mut self.body).await {
            Ok(value) if self.token => {
                let token = read_token(&attempt, client).await?;
                Ok((value, Some(token)))
            }
            Ok(value) => {
                attempt.settle(client.take(), Fate::Keep);
                Ok((value, None))
            }
            Err((error, fate)) => {
                attempt.settle(client.take(), fate);
                Err(error)
            }
        }
    }
}

/// BEGIN, the closure, COMMIT; a failure comes with what to do with the
/// connection once the transaction is gone.
async fn run<T, F>(
    attempt: &Attempt<'_>,
    client: &mut Object,
    body: &mut F,
) -> Result<T, (Error, Fate)>
where
    F: for<'t> FnMut(&'t Tx<'t>) -> TxFuture<'t, T> + Send,
    T: Send,
{
    let deadline = attempt.deadline();
    let tx = match timeout_at(deadline, client.transaction()).await {
        Ok(Ok(tx)) => tx,
        Ok(Err(error)) => return Err(attempt.judge(Phase::BeforeSend, Failure::Postgres(error))),
        Err(_) => return Err(attempt.judge(Phase::BeforeSend, Failure::Deadline)),
    };
    let watched = Tx::new(&tx);
    let value = match timeout_at(deadline, body(&watched)).await {
        Ok(Ok(value)) => value,
        Ok(Err(error)) => {
            drop(watched);
            return Err(roll_back(attempt, tx, error).await);
        }
        Err(_) => return Err(attempt.judge(Phase::InTransaction, Failure::Deadline)),
    };
    let swallowed = watched.failure();
    drop(watched);
    if let Some(code) = swallowed {
        ensure_not_aborted(attempt, &tx, code).await?;
    }
    match timeout_at(deadline, tx.commit()).await {
        Ok(Ok(())) => Ok(value),
        Ok(Err(error)) => Err(attempt.judge(Phase::CommitSent, Failure::Postgres(error))),
        Err(_) => Err(attempt.judge(Phase::CommitSent, Failure::Deadline)),
    }
}

/// A statement failed with `code` and the closure went on as if it had not:
/// `COMMIT` would silently roll back. Asks the server (`SELECT 1` fails in
/// an aborted transaction); a closure that recovered with `ROLLBACK TO
/// SAVEPOINT` commits as usual.
async fn ensure_not_aborted(
    attempt: &Attempt<'_>,
    tx: &Transaction<'_>,
    code: SqlState,
) -> Result<(), (Error, Fate)> {
    match timeout_at(attempt.deadline(), tx.batch_execute("SELECT 1")).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) if error.code() == Some(&SqlState::IN_FAILED_SQL_TRANSACTION) => {
            tracing::debug!(
                code = code.code(),
                "the closure swallowed an error; rolled back"
            );
            let error = Error::RolledBack {
                context: attempt.context().clone(),
                code,
            };
            // The transaction object rolls back when dropped.
            Err((error, Fate::Keep))
        }
        Ok(Err(error)) => Err(attempt.judge(Phase::InTransaction, Failure::Postgres(error))),
        Err(_) => Err(attempt.judge(Phase::InTransaction, Failure::Deadline)),
    }
}

/// The closure failed: classify its error (nothing is committed yet) and
/// roll back if the connection is still good.
async fn roll_back(attempt: &Attempt<'_>, tx: Transaction<'_>, error: Error) -> (Error, Fate) {
    let (error, fate) = match error {
        Error::Postgres(source) => attempt.judge(Phase::InTransaction, Failure::Postgres(source)),
        other => (other, Fate::Keep),
    };
    if fate != Fate::Keep {
        return (error, fate);
    }
    match timeout_at(attempt.deadline(), tx.rollback()).await {
        Ok(Ok(())) => (error, Fate::Keep),
        _ => (error, Fate::Discard),
    }
}

/// The committed transaction's causal token, read on its connection.
async fn read_token(attempt: &Attempt<'_>, client: Busy<'_>) -> Result<CausalToken, Error> {
    let result = timeout_at(attempt.deadline(), client.query_one(TOKEN_SQL, &[])).await;
    let client = client.take();
    match result {
        Ok(Ok(row)) => token_of(&row).map_err(|error| attempt.token_unavailable(error)),
        Ok(Err(error)) => Err(attempt.token_unavailable(error)),
        Err(_) => {
            // COMMIT succeeded: the write is applied, only its token is lost.
            let (_, fate) = attempt.judge(Phase::CommitSent, Failure::Deadline);
            attempt.settle(client, fate);
            Err(Error::TokenUnavailable {
                context: attempt.context().clone(),
                source: None,
            })
        }
    }
}
