//! Read-your-writes for a unit of work (an HTTP request): a task-local
//! causal token that reads use when they are given none, that writes
//! advance, and the window on the primary a write without a position
//! opens (the rule itself is `window.rs`'s).

use std::future::Future;
use std::sync::{Mutex, PoisonError};

use tokio::time::Instant;

use crate::causal::lsn::CausalToken;
use crate::causal::window::Seen;
use crate::config::CausalSettings;

tokio::task_local! {
    static SCOPE: Scope;
}

/// What one scope has seen.
#[derive(Debug)]
struct Scope {
    seen: Mutex<Seen>,
}

impl Scope {
    fn with<T>(&self, f: impl FnOnce(&mut Seen) -> T) -> T {
        f(&mut self.seen.lock().unwrap_or_else(PoisonError::into_inner))
    }
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
/// Where a write has no position to wait for (Aurora), or when
/// [`ReadYourWrites::Window`](crate::config::ReadYourWrites::Window) is
/// chosen, the write does not advance the token: instead every read in the
/// scope goes to the primary for
/// [`CausalSettings::primary_window`](crate::config::CausalSettings::primary_window)
/// after it (explicit `after` tokens included), then routes as usual again.
/// That window lives in the scope only: it does not travel with the
/// returned token.
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
        seen: Mutex::new(Seen::starting_at(token)),
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
        .try_with(|scope| scope.with(|seen| seen.token))
        .ok()
        .flatten()
}

/// The token a read given `explicit` carries: in a scope, the primary's
/// while the scope's window is open, else `explicit` or the scope's token;
/// outside any scope, `explicit` (one task-local lookup; the clock is read
/// only while a window is open).
pub(crate) fn read_after(explicit: Option<CausalToken>) -> Option<CausalToken> {
    SCOPE
        .try_with(|scope| scope.with(|seen| seen.read_after(explicit, Instant::now)))
        .unwrap_or(explicit)
}

/// Whether a write made now asks for its position for the caller's scope:
/// in a scope, unless the window is chosen.
pub(crate) fn wants_position(settings: &CausalSettings) -> bool {
    Seen::wants_position(settings) && SCOPE.try_with(|_| ()).is_ok()
}

/// A write or transaction succeeded with `token` (its position, or
/// [`CausalToken::PRIMARY`] when it has none): the caller's scope, if any,
/// advances to the position or opens its window on the primary, as
/// `settings` say.
pub(crate) fn wrote(token: CausalToken, settings: &CausalSettings) {
    let now = Instant::now();
    let _outside = SCOPE.try_with(|scope| scope.with(|seen| seen.wrote(token, settings, now)));
}

/// Advances the caller's scope, if any, to `token` (the later of the two).
#[cfg(test)]
pub(crate) fn advance(token: CausalToken) {
    let _outside = SCOPE.try_with(|scope| scope.with(|seen| seen.advance(token)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::causal::lsn::Lsn;

    #[tokio::test]
    async fn a_scope_starts_at_its_token_and_keeps_the_newest() {
        assert_eq!(current(), None);
        assert!(!wants_position(&CausalSettings::default()));
        advance(CausalToken::new(Lsn(1)));
        let start = CausalToken::on_timeline(1, Lsn(100));
        let ((), newest) = causal_scope(Some(start), async {
            assert!(wants_position(&CausalSettings::default()));
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

    #[tokio::test(start_paused = true)]
    async fn a_write_without_a_position_opens_the_window_in_its_scope_only() {
        let settings = CausalSettings::default();
        wrote(CausalToken::PRIMARY, &settings);
        assert_eq!(read_after(None), None, "outside any scope: nothing kept");
        let client = CausalToken::on_timeline(1, Lsn(100));
        let ((), newest) = causal_scope(Some(client), async {
            wrote(CausalToken::PRIMARY, &settings);
            assert_eq!(read_after(None), Some(CausalToken::PRIMARY));
            let inner = tokio::spawn(async { read_after(None) });
            assert_eq!(inner.await.unwrap(), None, "a spawned task is outside");
            tokio::time::advance(settings.primary_window).await;
            assert_eq!(read_after(None), Some(client), "the window closed");
        })
        .await;
        assert_eq!(newest, Some(client), "the window is not handed back");
    }
}
