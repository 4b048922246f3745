//! Closing with a drain: once `close` starts, new calls are refused; calls
//! in flight get up to `close_timeout` to finish, and the ones still
//! running then are stopped with [`ErrorKind::Closed`](crate::error::ErrorKind::Closed).
//!
//! A call in flight costs two atomic counts and, while it waits anywhere
//! but on a statement whose deadline the hub's registry keeps, one
//! registration with a `Notify` (taken once, not at every poll); a call
//! waiting on such a statement is woken at the stop through the registry.

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::sync::futures::Notified;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{deadlines, Hub};
use crate::config::clock;
use crate::failure::error::Error;

/// What kind of call is in flight: a stopped write may have been applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Work {
    /// A read.
    Read,
    /// A write or transaction.
    Write,
}

/// The calls in flight, and the close that waits for them.
#[derive(Debug, Default)]
pub(crate) struct Drain {
    /// `close` started: new calls are refused.
    closing: AtomicBool,
    /// Calls between `enter` and their end.
    in_flight: AtomicUsize,
    /// The last call in flight ended while closing.
    idle: Notify,
    /// The timeout ran out: calls still in flight stop.
    stopped: AtomicBool,
    /// Wakes the calls in flight when `stopped` is set.
    stop: Notify,
}

/// One call in flight, counted until dropped.
#[derive(Debug)]
pub(crate) struct InFlight<'d>(&'d Drain);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let drain = self.0;
        let left = drain.in_flight.fetch_sub(1, Ordering::SeqCst) - 1;
        if left == 0 && drain.closing.load(Ordering::SeqCst) {
            drain.idle.notify_waiters();
        }
    }
}

impl Drain {
    /// Counts a call in flight, or refuses it once closing started. (Counted
    /// first, then checked: `close` either sees the call or the call sees
    /// `close`.)
    pub(crate) fn enter(&self) -> Result<InFlight<'_>, Error> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let in_flight = InFlight(self);
        if self.closing.load(Ordering::SeqCst) {
            return Err(Error::closed());
        }
        Ok(in_flight)
    }

    /// Refuses calls from now on.
    pub(crate) fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
    }

    /// Whether `close` started.
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Calls in flight now.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Waits until no call is in flight or `until` passes, then stops the
    /// calls still in flight; returns how many it stopped. Call after
    /// [`Drain::close`].
    pub(crate) async fn finish(&self, until: Instant) -> usize {
        loop {
            // Registered before the count is read: a call that ends in
            // between wakes it.
            let mut idle = pin!(self.idle.notified());
            idle.as_mut().enable();
            if self.in_flight() == 0 {
                return 0;
            }
            if tokio::time::timeout_at(until, idle).await.is_err() {
                break;
            }
        }
        self.stopped.store(true, Ordering::SeqCst);
        self.stop.notify_waiters();
        self.in_flight()
    }

    /// Runs `call` as one call in flight: refused once closing started,
    /// stopped (dropped: its statement is cancelled) when the close timeout
    /// runs out before it ends. Takes the call pinned where it is, so the
    /// call's (large) future is not moved.
    pub(crate) fn run<'d, 'c, F>(
        &'d self,
        work: Work,
        call: Pin<&'c mut F>,
    ) -> Stoppable<'d, 'c, F> {
        let (in_flight, refused) = match self.enter() {
            Ok(in_flight) => (Some(in_flight), None),
            Err(error) => (None, Some(error)),
        };
        Stoppable::new(self, work, call, in_flight, refused)
    }

    /// Whether the close timeout ran out: calls still in flight stop.
    fn stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }
}

/// A call of several steps in flight (a transaction from `begin()`, from
/// `begin` to its end): counted until dropped, so `close` waits for it as
/// for any call; each step is stopped, as a call is, when the close timeout
/// runs out, and none starts after that.
#[derive(Debug)]
pub(crate) struct Held<'d> {
    drain: &'d Drain,
    _in_flight: InFlight<'d>,
}

impl<'d> Held<'d> {
    /// Runs one step (`work`: whether it may apply a write), or refuses it
    /// once the close timeout ran out.
    pub(crate) fn step<'c, F>(&self, work: Work, call: Pin<&'c mut F>) -> Stoppable<'d, 'c, F> {
        let refused = self.drain.stopped().then(|| Error::stopped_by_close(false));
        Stoppable::new(self.drain, work, call, None, refused)
    }
}

pin_project_lite::pin_project! {
    /// A call that is stopped when the close timeout runs out before it
    /// ends. Registers the task's waker with the drain's `Notify` on its
    /// first pending poll and again only if the waker changes, so a call
    /// polled many times takes the `Notify`'s lock once. One hand-written
    /// future, not `async` layers: every call is polled through it.
    #[must_use = "futures do nothing unless polled"]
    pub(crate) struct Stoppable<'d, 'c, F> {
        call: Pin<&'c mut F>,
        drain: &'d Drain,
        work: Work,
        #[pin]
        notified: Notified<'d>,
        registered: Option<Waker>,
        // Counted in flight until dropped (`None` for a step of a held call,
        // which is counted by its `Held`).
        in_flight: Option<InFlight<'d>>,
        // Refused before it started (closing, or the timeout ran out).
        refused: Option<Error>,
    }
}

impl<'d, 'c, F> Stoppable<'d, 'c, F> {
    fn new(
        drain: &'d Drain,
        work: Work,
        call: Pin<&'c mut F>,
        in_flight: Option<InFlight<'d>>,
        refused: Option<Error>,
    ) -> Self {
        Self {
            call,
            drain,
            work,
            notified: drain.stop.notified(),
            registered: None,
            in_flight,
            refused,
        }
    }
}

impl<F, T> Future for Stoppable<'_, '_, F>
where
    F: Future<Output = Result<T, Error>>,
{
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(error) = this.refused.take() {
            return Poll::Ready(Err(error));
        }
        deadlines::clear_waiting_mark();
        if let Poll::Ready(result) = this.call.as_mut().poll(cx) {
            return Poll::Ready(result);
        }
        let stopped = || Poll::Ready(Err(Error::stopped_by_close(*this.work == Work::Write)));
        if this.drain.stopped() {
            return stopped();
        }
        // Waiting on a statement whose deadline is registered: the stop
        // wakes it through the registry (`Deadlines::wake_all`), so no
        // registration with the drain's `Notify` is needed.
        if deadlines::waiting_registered() {
            return Poll::Pending;
        }
        if this
            .registered
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        if this.notified.poll(cx).is_ready() {
            return stopped();
        }
        *this.registered = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Closing: the drain.
impl Hub {
    /// Runs `call` as one call in flight (see [`Drain::run`]).
    pub(crate) fn in_flight<'c, F>(
        &self,
        work: Work,
        call: Pin<&'c mut F>,
    ) -> Stoppable<'_, 'c, F> {
        self.drain.run(work, call)
    }

    /// Counts a call of several steps in flight until the guard drops (see
    /// [`Held`]); refused once closing started.
    pub(crate) fn hold_call(&self) -> Result<Held<'_>, Error> {
        Ok(Held {
            drain: &self.drain,
            _in_flight: self.drain.enter()?,
        })
    }

    /// After [`Hub::close`]: waits up to `within` for the calls in flight
    /// to end, then stops the rest; returns how many it stopped.
    pub(crate) async fn finish_calls(&self, within: Duration) -> usize {
        let until = clock::after(Instant::now(), within);
        let stopped = self.drain.finish(until).await;
        if self.drain.stopped() {
            // The calls waiting on a registered statement, not on the
            // drain's `Notify` (see `Stoppable`).
            self.deadlines.wake_all();
        }
        if stopped > 0 {
            tracing::warn!(calls = stopped, timeout = ?within,
                "close: calls still in flight after the close timeout were stopped");
        }
        stopped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failure::error::ErrorKind;

    #[tokio::test(start_paused = true)]
    async fn a_call_waiting_on_a_registered_statement_is_stopped_at_the_timeout() {
        // Such a call does not register with the drain's `Notify`: the stop
        // reaches it through the deadline registry.
        let hub = std::sync::Arc::new(Hub::new(crate::health::fake::config(1)).unwrap());
        let keeper = deadlines::keep_deadlines(
            std::sync::Arc::clone(&hub.deadlines),
            Duration::from_secs(10),
        );
        tokio::spawn(keeper);
        tokio::task::yield_now().await;
        let running = tokio::spawn({
            let hub = std::sync::Arc::clone(&hub);
            async move {
                let far = clock::after(Instant::now(), Duration::from_secs(60));
                let statement = hub.deadlines.bound(far, std::future::pending::<()>());
                let call = async { statement.await.map_err(|_| Error::closed()) };
                hub.in_flight(Work::Write, pin!(call)).await
            }
        });
        tokio::task::yield_now().await;
        assert_eq!(hub.drain.in_flight(), 1);
        let start = Instant::now();
        hub.close();
        assert_eq!(hub.finish_calls(ms(500)).await, 1);
        let stopped = running.await.unwrap().unwrap_err();
        assert_eq!(*stopped.kind(), ErrorKind::Closed);
        assert!(stopped.is_outcome_unknown(), "a write stopped mid-flight");
        assert_eq!(
            start.elapsed(),
            ms(500),
            "at the close timeout, not at its deadline"
        );
        assert_eq!(hub.drain.in_flight(), 0);
    }

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    /// A call that ends after `after`.
    async fn call(after: Duration) -> Result<u32, Error> {
        tokio::time::sleep(after).await;
        Ok(7)
    }

    #[tokio::test(start_paused = true)]
    async fn calls_in_flight_finish_within_the_timeout_and_later_ones_are_refused() {
        let drain = std::sync::Arc::new(Drain::default());
        let running = tokio::spawn({
            let drain = std::sync::Arc::clone(&drain);
            async move { drain.run(Work::Read, pin!(call(ms(300)))).await }
        });
        tokio::task::yield_now().await;
        assert_eq!(drain.in_flight(), 1);
        let start = Instant::now();
        drain.close();
        let refused = drain.run(Work::Write, pin!(call(ms(1)))).await;
        assert!(matches!(
            refused.as_ref().map_err(Error::kind),
            Err(ErrorKind::Closed)
        ));
        assert!(
            !refused.unwrap_err().is_outcome_unknown(),
            "nothing was sent"
        );
        assert_eq!(drain.finish(start + ms(1000)).await, 0);
        assert_eq!(
            start.elapsed(),
            ms(300),
            "done as soon as the last call ended"
        );
        assert_eq!(running.await.unwrap().unwrap(), 7);
        assert_eq!(drain.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_call_is_waited_for_between_its_steps_then_stopped() {
        let drain = Drain::default();
        let held = Held {
            drain: &drain,
            _in_flight: drain.enter().unwrap(),
        };
        assert_eq!(held.step(Work::Read, pin!(call(ms(10)))).await.unwrap(), 7);
        let start = Instant::now();
        drain.close();
        // Between its steps it is still in flight: close waits for it, and
        // its next step runs.
        let finish = drain.finish(start + ms(1000));
        let step = async {
            tokio::time::sleep(ms(100)).await;
            held.step(Work::Read, pin!(call(ms(100)))).await
        };
        let (stopped, stepped) = tokio::join!(finish, step);
        assert_eq!(stepped.unwrap(), 7, "a step while closing runs");
        assert_eq!(stopped, 1, "still held at the timeout");
        assert_eq!(start.elapsed(), ms(1000));
        // After the timeout no step starts; a commit would be refused
        // before it is sent.
        let refused = held.step(Work::Write, pin!(call(ms(1)))).await.unwrap_err();
        assert_eq!(*refused.kind(), ErrorKind::Closed);
        assert!(!refused.is_outcome_unknown());
        drop(held);
        assert_eq!(drain.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn calls_still_running_at_the_timeout_stop_with_the_closing_error() {
        let drain = std::sync::Arc::new(Drain::default());
        let spawn = |work, after| {
            let drain = std::sync::Arc::clone(&drain);
            tokio::spawn(async move {
                let result = drain.run(work, pin!(call(after))).await;
                (result, Instant::now())
            })
        };
        let quick = spawn(Work::Read, ms(200));
        let slow_read = spawn(Work::Read, Duration::from_secs(60));
        let slow_write = spawn(Work::Write, Duration::from_secs(60));
        tokio::task::yield_now().await;
        let start = Instant::now();
        drain.close();
        assert_eq!(drain.finish(start + ms(1000)).await, 2);
        assert_eq!(start.elapsed(), ms(1000));
        let (result, at) = quick.await.unwrap();
        assert_eq!((result.unwrap(), at - start), (7, ms(200)));
        let (read, at) = slow_read.await.unwrap();
        assert_eq!(
            at - start,
            ms(1000),
            "stopped at the timeout, not its own end"
        );
        let read = read.unwrap_err();
        assert_eq!(*read.kind(), ErrorKind::Closed);
        assert!(!read.is_outcome_unknown());
        let (write, at) = slow_write.await.unwrap();
        assert_eq!(at - start, ms(1000));
        let write = write.unwrap_err();
        assert_eq!(*write.kind(), ErrorKind::Closed);
        assert!(
            write.is_outcome_unknown(),
            "a stopped write may have been applied"
        );
        assert_eq!(write.retry_hint(), crate::error::RetryHint::OutcomeUnknown);
        assert_eq!((read.http_status(), write.http_status()), (503, 503));
        assert!(
            write
                .to_string()
                .contains("may or may not have been applied"),
            "{write}"
        );
        assert_eq!(drain.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_timeout_stops_at_once_and_an_idle_drain_returns_at_once() {
        let drain = Drain::default();
        drain.close();
        assert_eq!(drain.finish(Instant::now()).await, 0, "nothing in flight");
        let drain = std::sync::Arc::new(Drain::default());
        let slow = tokio::spawn({
            let drain = std::sync::Arc::clone(&drain);
            async move { drain.run(Work::Read, pin!(call(ms(500)))).await }
        });
        tokio::task::yield_now().await;
        let start = Instant::now();
        drain.close();
        assert_eq!(drain.finish(start).await, 1);
        assert!(slow.await.unwrap().is_err());
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_polled_by_another_waker_is_still_stopped() {
        // The same call polled first under one task's waker, then moved
        // into another task: the stop must reach the second.
        let drain = std::sync::Arc::new(Drain::default());
        let mut first = Box::pin({
            let drain = std::sync::Arc::clone(&drain);
            async move {
                drain
                    .run(Work::Read, pin!(call(Duration::from_secs(60))))
                    .await
            }
        });
        assert!(futures_poll_once(first.as_mut()).await.is_pending());
        let moved = tokio::spawn(first);
        tokio::task::yield_now().await;
        drain.close();
        assert_eq!(drain.finish(Instant::now() + ms(10)).await, 1);
        assert!(moved.await.unwrap().is_err());
    }

    /// Polls `future` once with this task's waker.
    async fn futures_poll_once<F: Future>(future: Pin<&mut F>) -> Poll<F::Output> {
        let mut future = Some(future);
        std::future::poll_fn(|cx| {
            let poll = future.take().map(|f| f.poll(cx));
            Poll::Ready(poll.unwrap_or(Poll::Pending))
        })
        .await
    }
}
