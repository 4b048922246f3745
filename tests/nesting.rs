//! The futures of pgrouter's calls leave room for a caller's own under the
//! compiler's layout depth limit (`recursion_limit`, 128 by default).
//! Laying out an `async fn` walks every future it holds, and a write's
//! future once took the `causal_scope` example (a write and a read inside
//! a scope, inside the caller's `async fn`) past the limit: it did not
//! compile. This crate lowers the limit to 100 and builds the same shape
//! (before a write's attempt was boxed it needed 102 levels here; it needs
//! under 100 now), so a future that grows into a caller's room fails to
//! build here first. (The depth counted also depends on what the compiler
//! happened to lay out before: this is a tripwire, not a measure.)

#![recursion_limit = "100"]

use pgrouter::causal::causal_scope;
use pgrouter::{CausalToken, DatabaseManager, Error};

async fn handler(db: &DatabaseManager, token: Option<CausalToken>) -> Result<i64, Error> {
    let (result, _newest) = causal_scope(token, async {
        db.execute("UPDATE carts SET n = n + 1 WHERE id = 7", &[])
            .await?;
        db.query_one("SELECT n FROM carts WHERE id = 7", &[]).await
    })
    .await;
    Ok(result?.get(0))
}

#[test]
fn every_call_kind_nests_in_a_callers_futures() {
    // Building this crate is the test: the handler's future is laid out
    // (its size taken), never run.
    fn size<F: std::future::Future>(
        _: impl FnOnce(&'static DatabaseManager, Option<CausalToken>) -> F,
    ) -> usize {
        size_of::<F>()
    }
    assert!(size(handler) > 0);
}
