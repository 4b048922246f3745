//! The statements of a transaction, watched.
//!
//! PostgreSQL answers `COMMIT` of a transaction in which a statement failed
//! with `ROLLBACK` and no error, and tokio-postgres's `commit()` then
//! returns `Ok`: a body that swallowed an error would report a commit that
//! never happened. A [`Watch`] remembers the first server error any
//! statement of the transaction met, and whether an answer went unread (a
//! statement's future, or its row stream, dropped before the end: an error
//! in it is lost with it); before `COMMIT`, the runner asks the server (one
//! extra round trip, only then) whether the transaction is still good,
//! since a body may have recovered with `ROLLBACK TO SAVEPOINT`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use tokio_postgres::error::SqlState;

use super::session::PgError;

/// The first server error a watched statement met, and whether a
/// statement's answer went unread (its future or its row stream dropped
/// before the end: an error it met is lost with it).
#[derive(Debug, Default)]
pub(crate) struct Watch {
    failure: Mutex<Option<SqlState>>,
    unread: AtomicBool,
}

impl Watch {
    /// Notes `result`'s SQLSTATE, if it is the first; passes it on.
    pub(crate) fn watch<T>(&self, result: Result<T, PgError>) -> Result<T, PgError> {
        if let Err(error) = &result {
            if let Some(code) = error.code() {
                self.note(code.clone());
            }
        }
        result
    }

    /// Notes a failure the server reports to no one (a `COPY` pgrouter
    /// abandoned), if it is the first.
    pub(crate) fn note(&self, code: SqlState) {
        let mut failure = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
        failure.get_or_insert(code);
    }

    /// Notes that a statement's answer went unread.
    pub(crate) fn unread(&self) {
        self.unread.store(true, Ordering::Release);
    }

    /// The SQLSTATE of the first server error a watched statement met.
    pub(crate) fn failure(&self) -> Option<SqlState> {
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether the server must be asked before `COMMIT` whether the
    /// transaction is still good: a statement failed, or an answer went
    /// unread.
    pub(crate) fn doubtful(&self) -> bool {
        self.unread.load(Ordering::Acquire) || self.failure().is_some()
    }
}

/// Until [`Unfinished::finish`], a statement whose answer may go unread:
/// dropped before then, it tells the [`Watch`].
pub(crate) struct Unfinished<'w>(Option<&'w Watch>);

impl<'w> Unfinished<'w> {
    pub(crate) fn new(watch: &'w Watch) -> Self {
        Self(Some(watch))
    }

    /// The answer was read.
    pub(crate) fn finish(mut self) {
        self.0 = None;
    }
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if let Some(watch) = self.0 {
            watch.unread();
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio_postgres::error::SqlState;

    use super::{Unfinished, Watch};

    #[test]
    fn a_failure_or_an_answer_left_unread_makes_the_transaction_doubtful() {
        let watch = Watch::default();
        assert!(!watch.doubtful());
        Unfinished::new(&watch).finish();
        assert!(!watch.doubtful(), "an answer read to its end");
        drop(Unfinished::new(&watch));
        assert!(watch.doubtful(), "an answer dropped unread");
        assert_eq!(watch.failure(), None);

        let watch = Watch::default();
        watch.note(SqlState::QUERY_CANCELED);
        watch.note(SqlState::UNIQUE_VIOLATION);
        assert!(watch.doubtful());
        assert_eq!(watch.failure(), Some(SqlState::QUERY_CANCELED), "the first");
    }
}
