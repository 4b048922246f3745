//! A transaction from `begin()`, for code that cannot be a retryable
//! closure: a connection checked out on the primary (through the write
//! loop: the write hold, retries while nothing was sent), statements sent
//! through `Tx`, and `commit()` ending it the way a
//! closure's commit does (the same [`conclude`], lost answer resolved).
//! Nothing is retried once the connection is handed out; every wait is
//! bounded by the call's deadline, counted from `begin()`. From `begin()`
//! to its end it is one call in flight for `close`, which waits for it up
//! to the close timeout and then stops its statements. Dropped without
//! `commit()` or `rollback()`, it is rolled back in the background; the
//! connection never returns to its pool inside a transaction.

use std::pin::{pin, Pin};
use std::sync::{Mutex, PoisonError};

use tokio::time::Instant;

use super::attempt::{span, Attempt, Busy, Deadline};
use super::opening::Opening;
use super::pooled::{Pooled, Pools};
use super::primary::OnPrimary;
use super::session::{Failure, PgError, Session};
use super::transaction::{close, conclude, not_opened, token_query, TokenOf, TokenQuery};
use crate::causal::lsn::CausalToken;
use crate::causal::scope as causal;
use crate::failure::error::{Error, ErrorKind};
use crate::failure::safety::{Fate, Phase};
use crate::hub::{Held, Hub, Work};
use crate::observe::call_info::{self, CallInfo};

/// A transaction from `begin()`: its connection and what its commit needs.
pub(crate) struct Explicit<'t> {
    attempt: Attempt<'t, Pools>,
    /// `None` once ended.
    session: Option<Pooled>,
    opening: Opening<'t>,
    /// The causal token's query, prepared before anything was sent.
    token: TokenOf<Pooled>,
    info: Option<&'t CallInfo>,
    /// What the connection's failures so far say to do with it.
    fate: Mutex<Fate>,
    /// In flight for `close`, from `begin()` to the end.
    held: Held<'t>,
}

impl<'t> Explicit<'t> {
    pub(crate) fn session(&self) -> &Pooled {
        match &self.session {
            Some(session) => session,
            // Taken only by `commit`, `rollback` and `drop`, which consume it.
            None => unreachable!("an ended transaction is not reachable"),
        }
    }

    pub(crate) fn opening(&self) -> &Opening<'t> {
        &self.opening
    }

    pub(crate) fn deadline(&self) -> Instant {
        self.attempt.deadline()
    }

    /// Refuses a statement once the deadline has passed.
    pub(crate) fn usable(&self) -> Result<(), Error> {
        match Instant::now() < self.deadline() {
            true => Ok(()),
            false => Err(Error::timeout(
                self.attempt.context(),
                self.attempt.budget(),
                false,
            )),
        }
    }

    /// A statement's error, classified on the node now.
    pub(crate) fn failed(&self, error: PgError) -> Error {
        let (error, fate) = self
            .attempt
            .judge(Phase::InTransaction, Failure::Postgres(error));
        self.worsen(fate);
        error
    }

    /// The transaction could not be opened.
    pub(crate) fn not_open(&self, error: PgError) -> Error {
        let (error, fate) = not_opened(&self.attempt, &self.opening, error);
        self.worsen(fate);
        error
    }

    /// The deadline passed during a statement (or while `BEGIN` awaited
    /// its answer).
    pub(crate) fn timed_out(&self) -> Error {
        let phase = match self.opening.in_flight() {
            true => Phase::BeforeSend,
            false => Phase::InTransaction,
        };
        let (error, fate) = self.attempt.judge(phase, Failure::Deadline);
        self.worsen(fate);
        error
    }

    /// Runs one step (a statement: `Work::Read`, nothing of it can be
    /// applied before `COMMIT`; the commit: `Work::Write`) as part of the
    /// call in flight; stopped by `close` once its timeout ran out, the
    /// connection then cancelled.
    pub(crate) async fn step<F, T>(&self, work: Work, step: Pin<&mut F>) -> Result<T, Error>
    where
        F: std::future::Future<Output = Result<T, Error>>,
    {
        let result = self.held.step(work, step).await;
        if result
            .as_ref()
            .is_err_and(|error| *error.kind() == ErrorKind::Closed)
        {
            self.worsen(Fate::Cancel);
        }
        result
    }

    fn worsen(&self, fate: Fate) {
        let mut worst = self.fate.lock().unwrap_or_else(PoisonError::into_inner);
        *worst = worse(*worst, fate);
    }

    fn fate(&self) -> Fate {
        *self.fate.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `COMMIT`, as a closure's is made; the outcome counted for
    /// readiness, the server (and token) recorded, the causal scope
    /// advanced (or its window opened).
    pub(crate) async fn commit(mut self: Box<Self>) -> Result<(), Error> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        let hub = self.attempt.hub();
        let client = Busy::new(hub, session);
        let result = self.step(Work::Write, pin!(self.conclude(client))).await;
        let failed = result.as_ref().is_err_and(Error::is_unavailable);
        hub.write_outcomes.record(failed);
        let token = result?;
        call_info::record(self.info, hub, self.opening.index(), token);
        causal::wrote(token.unwrap_or(CausalToken::PRIMARY), &hub.config.causal);
        Ok(())
    }

    async fn conclude(&self, client: Busy<'t, Pooled>) -> Result<Option<CausalToken>, Error> {
        let attempt = &self.attempt;
        if Instant::now() >= attempt.deadline() {
            let (error, fate) = attempt.judge(Phase::InTransaction, Failure::Deadline);
            attempt.settle(client.take(), worse(fate, self.fate()));
            return Err(error);
        }
        if self.fate() != Fate::Keep {
            // A statement lost the connection: nothing can commit.
            attempt.settle(client.take(), self.fate());
            return Err(Error::lost_in_transaction(attempt.context()));
        }
        let wanted = !matches!(self.token, TokenQuery::NotWanted);
        let done = conclude(attempt, client, &self.opening, &self.token, (), wanted).await?;
        Ok(done.1)
    }

    /// `ROLLBACK` if anything was sent, within the deadline; a connection
    /// that cannot say it is closed, which rolls back too.
    pub(crate) async fn rollback(mut self: Box<Self>) {
        let Some(session) = self.session.take() else {
            return;
        };
        let fate = match self.opening.touched() {
            false => self.fate(),
            true => close(&self.attempt, &session, self.fate()).await,
        };
        let fate = match (fate, self.opening.touched()) {
            // `close` could not end a transaction past its deadline.
            (Fate::Discard, true) => Fate::Cancel,
            (fate, _) => fate,
        };
        self.attempt.settle(session, fate);
    }
}

impl Drop for Explicit<'_> {
    fn drop(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        let hub = self.attempt.hub();
        match (self.opening.touched(), self.fate()) {
            (false, fate) => session.settle(hub, fate),
            (true, Fate::Keep) => {
                tracing::debug!("a transaction from begin() dropped; rolling back");
                let bound = hub.config.health.probe_timeout;
                session.roll_back_in_background(hub.connector.clone(), bound);
            }
            (true, fate) => session.settle(hub, worse(fate, Fate::Discard)),
        }
    }
}

/// The more drastic of two fates for a connection inside a transaction,
/// where nothing is drained back into the pool (it would come back with
/// the transaction open): draining counts as cancelling.
fn worse(a: Fate, b: Fate) -> Fate {
    let rank = |fate| match fate {
        Fate::Keep => 0,
        Fate::Discard => 1,
        Fate::Cancel | Fate::Drain => 2,
    };
    let worst = if rank(b) > rank(a) { b } else { a };
    match worst {
        Fate::Drain => Fate::Cancel,
        fate => fate,
    }
}

/// `begin()`'s step on the primary: a connection, and the causal token's
/// query prepared if one is wanted. Nothing of the transaction is sent:
/// `BEGIN` goes with its first statement.
pub(crate) struct Start {
    pub(crate) deadline: Deadline,
    pub(crate) token: bool,
}

/// What [`Start`] got on the primary.
pub(crate) struct Started<'t> {
    attempt: Attempt<'t, Pools>,
    session: Pooled,
    token: TokenOf<Pooled>,
}

impl OnPrimary for Start {
    type Output = (usize, Pooled, TokenOf<Pooled>);

    async fn attempt(
        &mut self,
        hub: &Hub,
        index: usize,
        number: u32,
    ) -> Result<Self::Output, Error> {
        let once = async {
            let attempt = Attempt::start(hub, Pools, index, self.deadline);
            let client = attempt.checkout().await?;
            match token_query(&attempt, &*client, self.token).await {
                Ok(token) => Ok((index, client.take(), token)),
                Err((error, fate)) => {
                    attempt.settle(client.take(), fate);
                    Err(error)
                }
            }
        };
        tracing::Instrument::instrument(once, span(hub, index, number)).await
    }
}

impl<'t> Started<'t> {
    /// What `begin()` got on node `index`, its deadline counted from
    /// `deadline`.
    pub(crate) fn new(
        hub: &'t Hub,
        deadline: Deadline,
        (index, session, token): (usize, Pooled, TokenOf<Pooled>),
    ) -> Self {
        Self {
            attempt: Attempt::start(hub, Pools, index, deadline),
            session,
            token,
        }
    }

    /// The transaction, to open with `begin` (resolved if `resolve`),
    /// counted in flight for `close` by `held`.
    pub(crate) fn transaction(
        self,
        begin: String,
        resolve: bool,
        info: Option<&'t CallInfo>,
        held: Held<'t>,
    ) -> Explicit<'t> {
        let hub = self.attempt.hub();
        let index = self.attempt.index();
        Explicit {
            opening: Opening::new(hub, index, begin, resolve),
            attempt: self.attempt,
            session: Some(self.session),
            token: self.token,
            info,
            fate: Mutex::new(Fate::Keep),
            held,
        }
    }
}

const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Explicit<'static>>();
};
