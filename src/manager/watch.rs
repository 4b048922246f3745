//! The statements of a transaction, watched.
//!
//! PostgreSQL answers `COMMIT` of a transaction in which a statement failed
//! with `ROLLBACK` and no error, and tokio-postgres's `commit()` then
//! returns `Ok`: a body that swallowed an error would report a commit that
//! never happened. A [`Watch`] remembers the first server error any
//! statement of the transaction met; before `COMMIT`, the runner asks the
//! server (one extra round trip, only then) whether the transaction is
//! still good, since a body may have recovered with `ROLLBACK TO
//! SAVEPOINT`.

use std::sync::{Mutex, PoisonError};

use tokio_postgres::error::SqlState;

use super::session::{Params, PgError, Returns, Session};
use crate::connect::statements::Block;

/// The first server error a watched statement met.
#[derive(Debug, Default)]
pub(crate) struct Watch(Mutex<Option<SqlState>>);

impl Watch {
    /// Notes `result`'s SQLSTATE, if it is the first; passes it on.
    pub(crate) fn watch<T>(&self, result: Result<T, PgError>) -> Result<T, PgError> {
        if let Err(error) = &result {
            if let Some(code) = error.code() {
                let mut failure = self.0.lock().unwrap_or_else(PoisonError::into_inner);
                failure.get_or_insert_with(|| code.clone());
            }
        }
        result
    }

    /// The SQLSTATE of the first server error a watched statement met.
    pub(crate) fn failure(&self) -> Option<SqlState> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A routed statement (a write's body) run inside the transaction on
/// `session` the node's way, watched.
pub(crate) async fn run_watched<K: Returns, S: Session>(
    session: &S,
    watch: &Watch,
    sql: &str,
    params: Params<'_>,
) -> Result<K::Output<S::Row>, PgError> {
    let ready = watch.watch(session.prepare(sql, params, Block::Open).await)?;
    watch.watch(K::run(session, sql, &ready, params).await)
}
