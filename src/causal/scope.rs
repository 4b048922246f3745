//! Read-your-writes for a unit of work (an HTTP request): a task-local
//! causal token that reads use when they are given none, and that writes
//! advance.

use std::future::Future;
use std::sync::{Mutex, PoisonError};

use crate::causal::lsn::CausalToken;

tokio::task_local! {
    static SCOPE: Scope;
}

/// The newest token of one scope.
#[derive(Debug)]
struct Scope {
    token: Mutex<Option<CausalToken>>,
}

/// Runs `work` in a causal scope that starts at `token` (from the client's
/// last response, say) and returns what it returned with the scope's
/// newest token.
///
/// Inside the scope, every [`ReadBuilder`](crate::ReadBuilder) given no
/// [`after`](crate::ReadBuilder::after) reads after the scope's token, and every
/// successful write and transaction asks for its own token (the query
/// rides behind the statement, see
/// [`CallInfo::with_token`](crate::CallInfo::with_token)) and
/// advances the scope to it. Hand the returned token back to the client;
/// its next request, served by any instance, then sees its writes. The
/// `CausalLayer` (feature `tower`) does this for
/// every HTTP request.
///
/// The scope is a Tokio task-local: calls made in a task spawned from
/// `work` are outside it. Outside any scope a read costs one task-local
/// lookup more.
///
/// ```no_run
/// # async fn demo(db: pgrouter::DatabaseManager, from_client: Option<pgrouter::CausalToken>)
/// # -> Result<(), pgrouter::Error> {
/// let (result, newest) = pgrouter::causal::causal_scope(from_client, async {
///     db.execute("UPDATE carts SET n = n + 1 WHERE id = 7", &[]).await?;
///     // Sees the update, even from a replica.
///     db.query_one("SELECT n FROM carts WHERE id = 7", &[]).await
/// })
/// .await;
/// let row = result?;
/// // Send `newest` back to the client (a header or a cookie).
/// # Ok(()) }
/// ```
pub async fn causal_scope<F: Future>(
    token: Option<CausalToken>,
    work: F,
) -> (F::Output, Option<CausalToken>) {
    let scope = Scope {
        token: Mutex::new(token),
    };
    let (output, scope) = SCOPE
        .scope(scope, async {
            let output = work.await;
            let newest = current();
            (output, newest)
        })
        .await;
    (output, scope)
}

/// The token of the causal scope the caller runs in, if any.
pub fn current_causal_token() -> Option<CausalToken> {
    current()
}

/// The scope's token; `None` outside a scope (one task-local lookup).
pub(crate) fn current() -> Option<CausalToken> {
    SCOPE
        .try_with(|scope| *scope.token.lock().unwrap_or_else(PoisonError::into_inner))
        .ok()
        .flatten()
}

/// Whether the caller runs in a causal scope.
pub(crate) fn in_scope() -> bool {
    SCOPE.try_with(|_| ()).is_ok()
}

/// Advances the caller's scope, if any, to `token` (the later of the two).
pub(crate) fn advance(token: CausalToken) {
    let _outside = SCOPE.try_with(|scope| {
        let mut current = scope.token.lock().unwrap_or_else(PoisonError::into_inner);
        *current = Some(current.map_or(token, |known| known.max(token)));
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::causal::lsn::Lsn;

    #[tokio::test]
    async fn a_scope_starts_at_its_token_and_keeps_the_newest() {
        assert_eq!(current(), None);
        assert!(!in_scope());
        advance(CausalToken::new(Lsn(1)));
        let start = CausalToken::on_timeline(1, Lsn(100));
        let ((), newest) = causal_scope(Some(start), async {
            assert!(in_scope());
            assert_eq!(current(), Some(start));
            advance(CausalToken::on_timeline(1, Lsn(50)));
            assert_eq!(current(), Some(start), "an older token does not go back");
            advance(CausalToken::on_timeline(1, Lsn(200)));
        })
        .await;
        assert_eq!(newest, Some(CausalToken::on_timeline(1, Lsn(200))));
        let ((), none) = causal_scope(None, async {}).await;
        assert_eq!(none, None);
        assert_eq!(current(), None);
    }
}
