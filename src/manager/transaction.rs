//! The transaction runner: BEGIN on the primary, hand the closure the
//! transaction, COMMIT on `Ok`, ROLLBACK on `Err`, and run the whole closure
//! again when that is safe (through the same retry loop as writes).

use std::future::Future;
use std::marker::PhantomData;
use std::time::Duration;

use tokio::time::{timeout_at, Instant};
use tokio_postgres::error::SqlState;
use tracing::Instrument;

use super::attempt::{span, Attempt, Busy, Deadline};
use super::opening::{run_watched, Opening};
use super::primary::OnPrimary;
use super::session::{Connect, Failure, One, Params, PgError, Returns, Session};
use super::token::{position_refused, token_of, TOKEN_SQL};
use crate::causal::lsn::CausalToken;
use crate::commit::resolve::{resolve, Resolution};
use crate::config::clock;
use crate::failure::error::{Error, ErrorKind};
use crate::failure::safety::{Fate, Phase};
use crate::hub::Hub;

/// What runs inside the transaction on a session `S`, which its first
/// statement opens (`opening`, which also watches every statement): a
/// caller's closure, or one statement.
pub(crate) trait Body<S: Session>: Send {
    /// What it gives when it succeeds.
    type Output: Send;
    /// Runs once inside the transaction.
    fn run<'t>(
        &'t mut self,
        session: &'t S,
        opening: &'t Opening<'t>,
    ) -> impl Future<Output = Result<Self::Output, Error>> + Send + 't;
}

/// One statement as a transaction's body.
pub(crate) struct Statement<'c, K> {
    pub(crate) sql: &'c str,
    pub(crate) params: Params<'c>,
    pub(crate) kind: PhantomData<K>,
}

impl<S: Session, K: Returns> Body<S> for Statement<'_, K> {
    type Output = K::Output<S::Row>;
    fn run<'t>(
        &'t mut self,
        session: &'t S,
        opening: &'t Opening<'t>,
    ) -> impl Future<Output = Result<Self::Output, Error>> + Send + 't {
        let (sql, params) = (self.sql, self.params);
        async move { Ok(run_watched::<K, S>(session, opening, sql, params).await?) }
    }
}

/// The body, its deadline, its `BEGIN`, whether it wants a causal token,
/// whether a lost `COMMIT` is resolved, and where its connections come
/// from.
pub(crate) struct TransactionCall<C, B> {
    pub(crate) connect: C,
    pub(crate) body: B,
    pub(crate) deadline: Deadline,
    /// `BEGIN` with the transaction's options.
    pub(crate) begin: String,
    pub(crate) token: bool,
    pub(crate) resolve: bool,
}

/// A committed transaction: the closure's value, where it ran, and its
/// causal token if one was asked for.
pub(crate) struct Committed<T> {
    pub(crate) value: T,
    pub(crate) index: usize,
    pub(crate) token: Option<CausalToken>,
}

/// How an attempt at a transaction stopped short of a known commit.
enum Stop<T> {
    /// It failed; the error, and what to do with the connection (the
    /// transaction is closed, or the connection is not kept).
    Failed(Error, Fate),
    /// `COMMIT` was sent and its answer lost: the closure's value, the
    /// error as it stands, and the connection's fate.
    CommitLost(T, Error, Fate),
}

impl<C: Connect, B: Body<C::Session>> OnPrimary for TransactionCall<C, B> {
    type Output = Committed<B::Output>;

    async fn attempt(
        &mut self,
        hub: &Hub,
        index: usize,
        number: u32,
    ) -> Result<Self::Output, Error> {
        let attempt = Attempt::start(hub, self.connect, index, self.deadline);
        // A resolved transaction retried with too little time left to
        // resolve its own COMMIT would likely end unknown: stop with a
        // definite answer instead (nothing of this attempt was sent).
        let left = self.deadline.at.saturating_duration_since(Instant::now());
        if self.resolve && number > 1 && left < 2 * reserve(&attempt) {
            return Err(Error::timeout(
                hub.context(index),
                self.deadline.budget,
                false,
            ));
        }
        self.once(attempt, index)
            .instrument(span(hub, index, number))
            .await
    }
}

impl<C: Connect, B: Body<C::Session>> TransactionCall<C, B> {
    async fn once(
        &mut self,
        attempt: Attempt<'_, C>,
        index: usize,
    ) -> Result<Committed<B::Output>, Error> {
        let client = attempt.checkout().await?;
        let token = match token_query(&attempt, &*client, self.token).await {
            Ok(token) => token,
            Err((error, fate)) => {
                attempt.settle(client.take(), fate);
                return Err(error);
            }
        };
        let begin = self.begin.clone();
        let opening = Opening::new(attempt.hub(), index, begin, self.resolve);
        let value = match run(&attempt, &*client, &mut self.body, &opening).await {
            Ok(value) => value,
            Err((error, fate)) => {
                attempt.settle(client.take(), fate);
                return Err(error);
            }
        };
        let (value, token) =
            conclude(&attempt, client, &opening, &token, value, self.token).await?;
        Ok(Committed {
            value,
            index,
            token,
        })
    }
}

/// After the body (a closure's, or the statements of a transaction from
/// `begin()`): the check for a swallowed error, `COMMIT`, and a lost
/// answer resolved (with a causal token if `wanted`). The transaction
/// opens first if the body sent nothing. Settles the connection.
pub(crate) async fn conclude<C: Connect, T>(
    attempt: &Attempt<'_, C>,
    client: Busy<'_, C::Session>,
    opening: &Opening<'_>,
    token: &TokenOf<C::Session>,
    value: T,
    wanted: bool,
) -> Result<(T, Option<CausalToken>), Error> {
    if let Err((error, fate)) = before_commit(attempt, &client, opening).await {
        let fate = close(attempt, &client, fate).await;
        attempt.settle(client.take(), fate);
        return Err(error);
    }
    let (value, error) = match commit(attempt, &client, token, value).await {
        Ok(done) => {
            attempt.settle(client.take(), Fate::Keep);
            return Ok(done);
        }
        Err(Stop::Failed(error, fate)) => {
            attempt.settle(client.take(), fate);
            return Err(error);
        }
        Err(Stop::CommitLost(value, error, fate)) => {
            attempt.settle(client.take(), fate);
            (value, error)
        }
    };
    let Some(identity) = opening.identity() else {
        return Err(error);
    };
    let hub = attempt.hub();
    let deadline = attempt.deadline();
    // Boxed: the slow path adds nothing to every transaction's future.
    let resolved = Box::pin(resolve(hub, attempt.connect(), &identity, deadline, wanted));
    match resolved.await {
        Resolution::Committed(token) => Ok((value, token)),
        Resolution::NotCommitted => {
            let source = match error.kind() {
                ErrorKind::OutcomeUnknown => error.into_postgres(),
                _ => None,
            };
            Err(Error::not_committed(attempt.context(), source))
        }
        Resolution::Unknown => Err(error),
    }
}

/// Before `COMMIT`: a statement failed or its answer went unread, so ask
/// whether the transaction is still good; then open it if the body sent
/// nothing (its identity must be known before `COMMIT`).
async fn before_commit<C: Connect>(
    attempt: &Attempt<'_, C>,
    client: &C::Session,
    opening: &Opening<'_>,
) -> Result<(), (Error, Fate)> {
    let watch = opening.watch();
    if watch.doubtful() {
        ensure_not_aborted(attempt, client, watch.failure()).await?;
    }
    // Ready at once when the body opened it (no timer then: the registry
    // sets nothing for a future ready at its first poll).
    let open = opening.open(client);
    match attempt
        .hub()
        .deadlines
        .bound(attempt.deadline(), open)
        .await
    {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(not_opened(attempt, opening, error)),
        Err(_) => Err(attempt.judge(Phase::BeforeSend, Failure::Deadline)),
    }
}

/// The transaction could not be opened (`BEGIN`, a held setting, the
/// identity query or the marker insert failed): nothing was applied.
pub(crate) fn not_opened<C: Connect>(
    attempt: &Attempt<'_, C>,
    opening: &Opening<'_>,
    error: PgError,
) -> (Error, Fate) {
    if opening.marker_failed() {
        let hub = attempt.hub();
        let table = hub.config.outcomes.marker_table.clone().unwrap_or_default();
        return (
            Error::marker_table(attempt.context(), table, error),
            Fate::Keep,
        );
    }
    attempt.judge(Phase::BeforeSend, Failure::Postgres(error))
}

/// The causal token's query, prepared (and cached) before `BEGIN`: a
/// platform that refuses it then costs the token, not the transaction.
pub(crate) enum TokenQuery<R> {
    /// No token asked for.
    NotWanted,
    /// The server refuses the WAL functions (a managed platform, a
    /// least-privileged role): the token sends reads to the primary.
    Refused,
    /// Sent right behind `COMMIT`.
    Ready(R),
}

/// A session's token query, ready.
pub(crate) type TokenOf<S> = TokenQuery<<S as Session>::Prepared>;

/// The token query prepared, when `wanted` (before `BEGIN`).
pub(crate) async fn token_query<C: Connect>(
    attempt: &Attempt<'_, C>,
    client: &C::Session,
    wanted: bool,
) -> Result<TokenOf<C::Session>, (Error, Fate)> {
    if !wanted {
        return Ok(TokenQuery::NotWanted);
    }
    let prepare = client.own(TOKEN_SQL, &[]);
    match timeout_at(attempt.deadline(), prepare).await {
        Ok(Ok(statement)) => Ok(TokenQuery::Ready(statement)),
        Ok(Err(error)) if position_refused(&error) => Ok(TokenQuery::Refused),
        Ok(Err(error)) => Err(attempt.judge(Phase::BeforeSend, Failure::Postgres(error))),
        Err(_) => Err(attempt.judge(Phase::BeforeSend, Failure::Deadline)),
    }
}

/// Ends a transaction that failed before `COMMIT` on a connection that is
/// to be kept: `ROLLBACK`, or discard the connection if that fails.
pub(crate) async fn close<C: Connect>(
    attempt: &Attempt<'_, C>,
    client: &C::Session,
    fate: Fate,
) -> Fate {
    if fate != Fate::Keep {
        return fate;
    }
    match timeout_at(attempt.deadline(), client.batch_execute("ROLLBACK")).await {
        Ok(Ok(())) => Fate::Keep,
        _ => Fate::Discard,
    }
}

/// The body, under the deadline; a failure classified, the transaction
/// rolled back if anything of it was sent.
async fn run<C: Connect, B: Body<C::Session>>(
    attempt: &Attempt<'_, C>,
    client: &C::Session,
    body: &mut B,
    opening: &Opening<'_>,
) -> Result<B::Output, (Error, Fate)> {
    match timeout_at(attempt.deadline(), body.run(client, opening)).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(roll_back(attempt, client, opening, error).await),
        Err(_) => {
            // Passed while `BEGIN` awaited its answer: nothing of the body
            // was sent.
            let phase = match opening.in_flight() {
                true => Phase::BeforeSend,
                false => Phase::InTransaction,
            };
            Err(attempt.judge(phase, Failure::Deadline))
        }
    }
}

/// `COMMIT`, and the causal token query right behind it. Without a
/// resolution to follow, `COMMIT` may use the whole deadline; with one,
/// part of it is kept for asking. Once `COMMIT` is answered the write is
/// known committed: a token that does not come by the deadline is
/// [`ErrorKind::TokenUnavailable`], never an unknown outcome.
async fn commit<C: Connect, T>(
    attempt: &Attempt<'_, C>,
    client: &C::Session,
    token: &TokenOf<C::Session>,
    value: T,
) -> Result<(T, Option<CausalToken>), Stop<T>> {
    let token_query = async {
        match token {
            TokenQuery::Ready(statement) => {
                One::run(client, TOKEN_SQL, statement, &[]).await.map(Some)
            }
            TokenQuery::NotWanted | TokenQuery::Refused => Ok(None),
        }
    };
    let committing = timeout_at(commit_deadline(attempt), client.batch_execute("COMMIT"));
    let token_query = timeout_at(attempt.deadline(), token_query);
    tokio::pin!(committing, token_query);
    // Biased: COMMIT is sent first, the token query right behind it; the
    // token's answer (which comes after COMMIT's) is kept if it is early.
    let mut early = None;
    let committed = loop {
        tokio::select! {
            biased;
            committed = &mut committing => break committed,
            row = &mut token_query, if early.is_none() => early = Some(row),
        }
    };
    match committed {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            let (error, fate) = attempt.judge(Phase::CommitSent, Failure::Postgres(error));
            return match error.is_outcome_unknown() {
                true => Err(Stop::CommitLost(value, error, fate)),
                false => Err(Stop::Failed(error, fate)),
            };
        }
        Err(_) => {
            let (error, fate) = attempt.judge(Phase::CommitSent, Failure::Deadline);
            return Err(Stop::CommitLost(value, error, fate));
        }
    }
    // Committed: from here on only the token can be lost.
    let row = match early {
        Some(row) => row,
        None => token_query.await,
    };
    match row {
        Ok(Ok(row)) => match row.map(|row| token_of(&row)).transpose() {
            Ok(None) if matches!(token, TokenQuery::Refused) => {
                Ok((value, Some(CausalToken::PRIMARY)))
            }
            Ok(position) => Ok((value, position)),
            Err(error) => Err(Stop::Failed(
                attempt.token_unavailable(Some(error)),
                Fate::Keep,
            )),
        },
        Ok(Err(error)) if position_refused(&error) => Ok((value, Some(CausalToken::PRIMARY))),
        Ok(Err(error)) => {
            let fate = match error.code() {
                Some(_) if !error.is_closed() => Fate::Keep,
                _ => Fate::Discard,
            };
            Err(Stop::Failed(attempt.token_unavailable(Some(error)), fate))
        }
        // The token query is still running on the connection: not kept.
        Err(_) => Err(Stop::Failed(attempt.token_unavailable(None), Fate::Discard)),
    }
}

/// How long `COMMIT`'s answer is waited for: the deadline, less a reserve
/// (a quarter of the budget, at most the probe timeout) for resolving it
/// if it does not come; once less than the reserve is left (a late retry),
/// half of what is left.
fn commit_deadline<C: Connect>(attempt: &Attempt<'_, C>) -> Instant {
    let reserve = reserve(attempt);
    let deadline = attempt.deadline();
    let now = Instant::now();
    match deadline.checked_sub(reserve) {
        Some(at) if at > now => at,
        _ => clock::after(now, deadline.saturating_duration_since(now) / 2),
    }
}

/// The time kept for resolving a lost `COMMIT`: a quarter of the budget,
/// at most the probe timeout.
fn reserve<C: Connect>(attempt: &Attempt<'_, C>) -> Duration {
    (attempt.budget() / 4).min(attempt.hub().config.health.probe_timeout)
}

/// A statement failed with `code` (or its answer went unread) and the
/// body went on as if it had not: `COMMIT` would silently roll back. Asks
/// the server (`SELECT 1` fails in an aborted transaction); a body that
/// recovered with `ROLLBACK TO SAVEPOINT` commits as usual.
async fn ensure_not_aborted<C: Connect>(
    attempt: &Attempt<'_, C>,
    client: &C::Session,
    code: Option<SqlState>,
) -> Result<(), (Error, Fate)> {
    match timeout_at(attempt.deadline(), client.batch_execute("SELECT 1")).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) if error.code() == Some(&SqlState::IN_FAILED_SQL_TRANSACTION) => {
            let code = code.unwrap_or(SqlState::IN_FAILED_SQL_TRANSACTION);
            tracing::debug!(
                code = code.code(),
                "the transaction's body swallowed an error; rolled back"
            );
            let error = Error::rolled_back(attempt.context(), code);
            Err((error, Fate::Keep))
        }
        Ok(Err(error)) => Err(attempt.judge(Phase::InTransaction, Failure::Postgres(error))),
        Err(_) => Err(attempt.judge(Phase::InTransaction, Failure::Deadline)),
    }
}

/// The body failed: classify its error (nothing is committed yet) and
/// roll back if anything was sent and the connection is still good. An
/// error raised from the statement that failed to open the transaction
/// is that failure's (the marker table's, when its insert failed).
async fn roll_back<C: Connect>(
    attempt: &Attempt<'_, C>,
    client: &C::Session,
    opening: &Opening<'_>,
    error: Error,
) -> (Error, Fate) {
    let (error, fate) = match error.into_raised() {
        Ok(source) if !opening.is_open() && opening.marker_failed() => {
            not_opened(attempt, opening, source)
        }
        Ok(source) => attempt.judge(Phase::InTransaction, Failure::Postgres(source)),
        Err(other) => (other, Fate::Keep),
    };
    if !opening.touched() {
        return (error, fate);
    }
    (error, close(attempt, client, fate).await)
}
