//! The write loop: the node that is primary now, held for during a
//! failover, and tried again with backoff after a failure the retry rules
//! allow. Single statements and transactions alike run through it.

use std::future::Future;
use std::pin::pin;

use futures_util::future::BoxFuture;
use tracing::Instrument;

use super::attempt::Deadline;
use crate::failure::error::Error;
use crate::failure::retry::Retrier;
use crate::hub::{Hub, Work};
use crate::observe::spans::{Observer, Reason};

/// Something [`on_primary`] runs: one attempt on the primary at a time.
pub(crate) trait OnPrimary: Send {
    /// What a successful attempt gives.
    type Output: Send;
    /// Attempt number `number` (1 for the first) on node `index`.
    fn attempt(
        &mut self,
        hub: &Hub,
        index: usize,
        number: u32,
    ) -> impl Future<Output = Result<Self::Output, Error>> + Send;
}

/// Runs `call` on the node that is primary now, holding for one while none
/// is known, and again with backoff after a failure the retry rules allow,
/// until it succeeds, the rules forbid another try, or the deadline is near.
/// Runs in the observer's span, and tells it each attempt, retry and the end;
/// counted as a call in flight for `close` (which may stop it).
pub(crate) async fn on_primary<C: OnPrimary>(
    hub: &Hub,
    deadline: Deadline,
    idempotent: bool,
    call: C,
    mut observer: Observer,
) -> Result<C::Output, Error> {
    let span = observer.span().clone();
    let result = {
        let attempts = retry_on_primary(hub, deadline, idempotent, call, &mut observer);
        let attempts = pin!(attempts.instrument(span));
        hub.in_flight(Work::Write, attempts).await
    };
    observer.finish(hub, &result);
    result
}

async fn retry_on_primary<C: OnPrimary>(
    hub: &Hub,
    deadline: Deadline,
    idempotent: bool,
    mut call: C,
    observer: &mut Observer,
) -> Result<C::Output, Error> {
    hub.ensure_open()?;
    let mut retrier = Retrier::new(&hub.config.retry, deadline.at, idempotent);
    loop {
        let result = match hub.await_primary(deadline.at).await {
            Ok(index) => {
                let number = retrier.attempt();
                observer.attempt(hub, index, number, Reason::WriteTarget);
                // Boxed, as a `dyn` future: a write's attempt (checkout,
                // statement, token; a transaction's body and COMMIT) nests
                // its types ~35 levels deep, and inline it took a caller's
                // future past the compiler's layout depth limit (128) with
                // two `async` layers of the caller's own around a write
                // (`causal_scope`'s example did not compile). Behind the
                // box it is laid out once, here, not in every caller's
                // future; the write's own future shrinks with it. One
                // allocation an attempt, on a path that waits a round trip.
                let attempt: BoxFuture<'_, Result<C::Output, Error>> =
                    Box::pin(call.attempt(hub, index, number));
                attempt.await
            }
            Err(error) => Err(error),
        };
        match result {
            Ok(output) => return Ok(output),
            Err(error) if retrier.again(&error).await => observer.retry(hub, &error),
            Err(error) => return Err(error),
        }
    }
}
