//! A transaction opened with its first statement.
//!
//! `BEGIN` (with the transaction's options) and the identity query that
//! lost-`COMMIT` resolution needs go out together, right before the
//! transaction's first statement, not before the body runs: `SET
//! TRANSACTION …` (isolation level, read only, deferrable, snapshot) must
//! come before the transaction's first query, and the identity query is
//! one. Such settings sent first are held back and sent in the `BEGIN`
//! round trip, ahead of the identity query; their errors come back with the
//! next statement (or the commit). The identity is thus known before any
//! statement of the body runs, and so before `COMMIT`.

use std::future::{ready, Future};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use futures_util::future::Either;
use tokio::sync::Mutex;

use super::begin::{is_single_statement, may_set_read_only, sets_transaction, with_held};
use super::session::{Params, PgError, Returns, Session};
use super::watch::Watch;
use crate::commit::judge::Identity;
use crate::commit::resolve::{begin, BeginError};
use crate::connect::statements::Block;
use crate::hub::Hub;

/// What to do with a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Send it: the transaction is open.
    Send,
    /// Nothing: it was held back, to go out with `BEGIN`.
    Held,
}

/// A transaction on node `index` that opens with its first statement, and
/// the first server error any of its statements met (its [`Watch`]).
pub(crate) struct Opening<'h> {
    hub: &'h Hub,
    index: usize,
    /// `BEGIN` with the transaction's options.
    begin: String,
    /// Whether the identity is fetched (lost-`COMMIT` resolution is on).
    resolve: bool,
    watch: Watch,
    /// Settings held back until `BEGIN`; locked while opening, so
    /// statements sent at once through `&Tx` open the transaction once.
    held: Mutex<Vec<String>>,
    /// Set once open: the identity, when it was fetched.
    opened: OnceLock<Option<Identity>>,
    /// Something was sent (a `BEGIN`, maybe failed).
    touched: AtomicBool,
    /// A `BEGIN` is awaiting its answer.
    in_flight: AtomicBool,
    /// The marker insert failed (the table is missing, or not writable).
    marker_failed: AtomicBool,
}

impl std::fmt::Debug for Opening<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opening")
            .field("begin", &self.begin)
            .field("open", &self.is_open())
            .field("failure", &self.watch.failure())
            .finish_non_exhaustive()
    }
}

impl<'h> Opening<'h> {
    /// A transaction on node `index` that will open with `begin`.
    pub(crate) fn new(hub: &'h Hub, index: usize, begin: String, resolve: bool) -> Self {
        Self {
            hub,
            index,
            begin,
            resolve,
            watch: Watch::default(),
            held: Mutex::new(Vec::new()),
            opened: OnceLock::new(),
            touched: AtomicBool::new(false),
            in_flight: AtomicBool::new(false),
            marker_failed: AtomicBool::new(false),
        }
    }

    pub(crate) fn index(&self) -> usize {
        self.index
    }

    /// The first server error a statement met.
    pub(crate) fn watch(&self) -> &Watch {
        &self.watch
    }

    pub(crate) fn is_open(&self) -> bool {
        self.opened.get().is_some()
    }

    /// The transaction's identity, once open (and when resolution is on).
    pub(crate) fn identity(&self) -> Option<Identity> {
        self.opened.get().copied().flatten()
    }

    /// Whether anything was sent on the connection for this transaction.
    pub(crate) fn touched(&self) -> bool {
        self.touched.load(Ordering::Acquire)
    }

    /// Whether a `BEGIN` is awaiting its answer (a deadline passing now
    /// passed before anything of the body was sent).
    pub(crate) fn in_flight(&self) -> bool {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Whether opening failed at the marker insert.
    pub(crate) fn marker_failed(&self) -> bool {
        self.marker_failed.load(Ordering::Acquire)
    }

    /// Before a statement: hold it back if it is a setting that must come
    /// before the first query and nothing else was sent yet (`simple`: it
    /// can travel in a simple query, with no parameters), else open the
    /// transaction if it is not open yet. A failure to open is watched.
    ///
    /// Open already (every statement after the first): ready at once. Else
    /// boxed: the opening's future (`BEGIN` and the identity query in one
    /// round trip, ~3 KB) is not carried in every statement's future, which
    /// a caller's future holds and moves.
    pub(crate) fn before<'a, S: Session>(
        &'a self,
        session: &'a S,
        sql: &'a str,
        simple: bool,
    ) -> impl Future<Output = Result<Next, PgError>> + 'a {
        match self.is_open() {
            true => Either::Left(ready(Ok(Next::Send))),
            false => Either::Right(Box::pin(self.hold_or_open(session, sql, simple))),
        }
    }

    async fn hold_or_open<S: Session>(
        &self,
        session: &S,
        sql: &str,
        simple: bool,
    ) -> Result<Next, PgError> {
        let mut held = self.held.lock().await;
        if self.is_open() {
            return Ok(Next::Send);
        }
        if simple && sets_transaction(sql) && !self.touched() {
            held.push(sql.to_owned());
            return Ok(Next::Held);
        }
        self.open_with(session, &held).await?;
        held.clear();
        Ok(Next::Send)
    }

    /// Opens the transaction if it is not open yet (before `COMMIT`: a
    /// body that sent nothing, or only settings). Ready at once when open;
    /// else boxed, as [`Opening::before`] is.
    pub(crate) fn open<'a, S: Session>(
        &'a self,
        session: &'a S,
    ) -> impl Future<Output = Result<(), PgError>> + 'a {
        match self.is_open() {
            true => Either::Left(ready(Ok(()))),
            false => Either::Right(Box::pin(self.open_now(session))),
        }
    }

    async fn open_now<S: Session>(&self, session: &S) -> Result<(), PgError> {
        let mut held = self.held.lock().await;
        if self.is_open() {
            return Ok(());
        }
        self.open_with(session, &held).await?;
        held.clear();
        Ok(())
    }

    /// `BEGIN`, the held settings, and the identity, in one round trip.
    /// A setting that may make the transaction read only goes without the
    /// identity: a read-only transaction may not insert the marker row.
    async fn open_with<S: Session>(&self, session: &S, held: &[String]) -> Result<(), PgError> {
        let resolve = self.resolve && !held.iter().any(|sql| may_set_read_only(sql));
        let sql = with_held(&self.begin, held);
        self.touched.store(true, Ordering::Release);
        self.in_flight.store(true, Ordering::Release);
        let begun = begin(self.hub, session, self.index, resolve, &sql).await;
        self.in_flight.store(false, Ordering::Release);
        let identity = match begun {
            Ok(identity) => identity,
            Err(BeginError::Postgres(error)) => return self.watch.watch(Err(error)),
            Err(BeginError::Marker(error)) => {
                self.marker_failed.store(true, Ordering::Release);
                return self.watch.watch(Err(error));
            }
        };
        // Set under the lock, once.
        let _ = self.opened.set(identity);
        Ok(())
    }
}

/// Whether a statement sent with `params` can be held back (a simple
/// query needs no parameters and one statement).
pub(crate) fn simple(sql: &str, params: usize) -> bool {
    params == 0 && is_single_statement(sql)
}

/// A routed statement (a write's body) run inside the transaction on
/// `session` the node's way, watched; the transaction opens first if the
/// statement is its first.
pub(crate) async fn run_watched<K: Returns, S: Session>(
    session: &S,
    opening: &Opening<'_>,
    sql: &str,
    params: Params<'_>,
) -> Result<K::Output<S::Row>, PgError> {
    opening.open(session).await?;
    let watch = opening.watch();
    let ready = watch.watch(session.prepare(sql, params, Block::Open).await)?;
    watch.watch(K::run(session, sql, &ready, params).await)
}
