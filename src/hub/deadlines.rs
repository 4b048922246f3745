//! Every statement's deadline in one registry, kept by one task, instead of
//! a timer per statement. A checkout that has to wait (every slot taken, a
//! connection being made) and a hedged read's first look are kept here too.
//!
//! A tokio timer costs each read ~650 instructions (its entry registered in
//! the runtime's wheel and removed again, the runtime handle cloned;
//! BENCHMARKS (g)). Here a statement still waiting after its first poll
//! registers its deadline and waker under one lock, and takes them out
//! under another when it ends. The keeper, one task for the hub, sleeps
//! until the earliest deadline registered (with none, until the configured
//! deadline from now, so that a statement with the usual budget, whose
//! deadline falls after that, never has to wake it), marks the statements
//! past their deadline and wakes them. A statement whose deadline falls
//! before the keeper's alarm wakes the keeper to set it earlier. The keeper
//! wakes at the earliest deadline to the same millisecond a timer would.
//!
//! Without a keeper (none started, or its runtime shut down), a statement
//! keeps its deadline with a timer of its own, as it did before.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use slab::Slab;
use tokio::sync::Notify;
use tokio::time::{sleep_until, Instant, Sleep};

use crate::config::clock;

std::thread_local! {
    /// Set when a [`Bounded`] polled on this thread returned pending with
    /// its deadline registered (the keeper can wake its task), cleared when
    /// one ends or is dropped: read by the drain's `Stoppable` right after
    /// it polls a call, so that a call waiting on a registered statement
    /// needs no registration of the drain's own (see [`Deadlines::wake_all`]).
    static WAITING_REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// Clears the mark before a call is polled.
pub(crate) fn clear_waiting_mark() {
    WAITING_REGISTERED.set(false);
}

/// Whether the call just polled waits on a registered statement (the last
/// registry event of the poll was a pending statement still registered).
pub(crate) fn waiting_registered() -> bool {
    WAITING_REGISTERED.get()
}

/// The statements' deadlines, and the keeper's alarm.
#[derive(Debug, Default)]
pub(crate) struct Deadlines {
    registry: Mutex<Registry>,
    /// Wakes the keeper: a deadline before its alarm, or the hub gone.
    rearm: Notify,
}

#[derive(Debug, Default)]
struct Registry {
    entries: Slab<Entry>,
    /// When the keeper wakes next; `None` while no keeper runs (statements
    /// then keep their own timers).
    alarm: Option<Instant>,
}

#[derive(Debug)]
struct Entry {
    at: Instant,
    waker: Waker,
    /// The keeper found it past `at` and woke it.
    expired: bool,
}

/// The deadline passed before the statement ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Expired;

/// A registered statement's state, as its next poll finds it.
enum Check {
    Waiting,
    Expired,
    /// The keeper stopped: the entry is gone, the statement keeps its own
    /// timer from now on.
    Unkept,
}

impl Deadlines {
    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `future`, or [`Expired`] once `at` passes.
    pub(crate) fn bound<F: Future>(&self, at: Instant, future: F) -> Bounded<'_, F> {
        Bounded {
            future,
            deadlines: self,
            at,
            state: State::Unregistered,
        }
    }

    /// Registers a deadline; `None` when no keeper runs.
    fn register(&self, at: Instant, waker: &Waker) -> Option<usize> {
        let mut registry = self.lock();
        let alarm = registry.alarm?;
        let key = registry.entries.insert(Entry {
            at,
            waker: waker.clone(),
            expired: false,
        });
        let earlier = at < alarm;
        if earlier {
            registry.alarm = Some(at);
        }
        drop(registry);
        if earlier {
            self.rearm.notify_one();
        }
        Some(key)
    }

    fn check(&self, key: usize, waker: &Waker) -> Check {
        let mut registry = self.lock();
        if registry.alarm.is_none() {
            registry.entries.try_remove(key);
            return Check::Unkept;
        }
        let Some(entry) = registry.entries.get_mut(key) else {
            return Check::Unkept;
        };
        if entry.expired {
            return Check::Expired;
        }
        if !entry.waker.will_wake(waker) {
            entry.waker = waker.clone();
        }
        Check::Waiting
    }

    fn remove(&self, key: usize) {
        WAITING_REGISTERED.set(false);
        self.lock().entries.try_remove(key);
    }

    /// Statements registered now (for tests).
    #[cfg(test)]
    fn registered(&self) -> usize {
        self.lock().entries.len()
    }

    /// Wakes every statement registered (the drain's stop: their calls,
    /// polled again, find the close timeout run out).
    pub(crate) fn wake_all(&self) {
        let wakers: Vec<Waker> = {
            let registry = self.lock();
            registry
                .entries
                .iter()
                .map(|(_, e)| e.waker.clone())
                .collect()
        };
        wakers.into_iter().for_each(Waker::wake);
    }

    /// The hub is being dropped: the keeper ends at once.
    pub(crate) fn release_keeper(&self) {
        self.rearm.notify_one();
    }
}

/// Keeps the deadlines of `deadlines` until the hub that holds it is
/// dropped (not at `close`: calls still draining keep their deadlines).
/// With nothing registered it wakes every `idle`, the configured deadline.
pub(crate) async fn keep_deadlines(deadlines: Arc<Deadlines>, idle: Duration) {
    let keeper = Keeper(&deadlines);
    let mut alarm = clock::after(Instant::now(), idle);
    keeper.0.lock().alarm = Some(alarm);
    loop {
        tokio::select! {
            () = sleep_until(alarm) => {}
            () = keeper.0.rearm.notified() => {}
        }
        if Arc::strong_count(&deadlines) == 1 {
            return;
        }
        let now = Instant::now();
        let mut late = Vec::new();
        {
            let mut registry = keeper.0.lock();
            let mut next: Option<Instant> = None;
            for (_, entry) in registry.entries.iter_mut().filter(|(_, e)| !e.expired) {
                if entry.at <= now {
                    entry.expired = true;
                    late.push(entry.waker.clone());
                } else {
                    next = Some(next.map_or(entry.at, |next| next.min(entry.at)));
                }
            }
            alarm = next.unwrap_or_else(|| clock::after(now, idle));
            registry.alarm = Some(alarm);
        }
        late.into_iter().for_each(Waker::wake);
    }
}

/// The keeper running; when it ends (its hub dropped, its runtime shut
/// down), the statements registered are woken to keep their own timers.
struct Keeper<'d>(&'d Deadlines);

impl Drop for Keeper<'_> {
    fn drop(&mut self) {
        self.0.lock().alarm = None;
        self.0.wake_all();
    }
}

enum State {
    /// Not waited on yet (the usual first poll sends the statement).
    Unregistered,
    /// Its deadline is in the registry under this key.
    Registered(usize),
    /// No keeper: a timer of its own (boxed: the usual future stays small).
    Own(Pin<Box<Sleep>>),
    /// Ended; nothing registered.
    Done,
}

pin_project_lite::pin_project! {
    /// A future bounded by a deadline kept in the hub's registry; see the
    /// module docs. Ends with [`Expired`] once the deadline passes.
    #[must_use = "futures do nothing unless polled"]
    pub(crate) struct Bounded<'d, F> {
        #[pin]
        future: F,
        deadlines: &'d Deadlines,
        at: Instant,
        state: State,
    }

    impl<'d, F> PinnedDrop for Bounded<'d, F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let State::Registered(key) = *this.state {
                this.deadlines.remove(key);
            }
        }
    }
}

impl<F: Future> Future for Bounded<'_, F> {
    type Output = Result<F::Output, Expired>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(output) = this.future.poll(cx) {
            if let State::Registered(key) = std::mem::replace(this.state, State::Done) {
                this.deadlines.remove(key);
            }
            return Poll::Ready(Ok(output));
        }
        let check = match this.state {
            State::Unregistered => match this.deadlines.register(*this.at, cx.waker()) {
                Some(key) => {
                    *this.state = State::Registered(key);
                    Check::Waiting
                }
                None => Check::Unkept,
            },
            State::Registered(key) => this.deadlines.check(*key, cx.waker()),
            State::Own(sleep) => match sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Check::Expired,
                Poll::Pending => Check::Waiting,
            },
            State::Done => Check::Expired,
        };
        match check {
            Check::Waiting => {
                let registered = matches!(this.state, State::Registered(_));
                WAITING_REGISTERED.set(registered);
                Poll::Pending
            }
            Check::Expired => {
                if let State::Registered(key) = std::mem::replace(this.state, State::Done) {
                    this.deadlines.remove(key);
                }
                Poll::Ready(Err(Expired))
            }
            Check::Unkept => {
                WAITING_REGISTERED.set(false);
                let mut sleep = Box::pin(sleep_until(*this.at));
                let passed = sleep.as_mut().poll(cx).is_ready();
                *this.state = match passed {
                    true => State::Done,
                    false => State::Own(sleep),
                };
                match passed {
                    true => Poll::Ready(Err(Expired)),
                    false => Poll::Pending,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::pending;

    use super::*;

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    /// A keeper started for `deadlines`, its idle alarm `idle` away.
    async fn kept(idle: Duration) -> Arc<Deadlines> {
        let deadlines = Arc::new(Deadlines::default());
        tokio::spawn(keep_deadlines(Arc::clone(&deadlines), idle));
        // Let it set its first alarm.
        tokio::task::yield_now().await;
        deadlines
    }

    #[tokio::test(start_paused = true)]
    async fn a_statement_that_never_ends_expires_at_its_deadline() {
        let deadlines = kept(Duration::from_secs(10)).await;
        for budget in [
            ms(30),
            ms(250),
            Duration::from_secs(10),
            Duration::from_secs(25),
        ] {
            let start = Instant::now();
            let ended = deadlines.bound(start + budget, pending::<()>()).await;
            assert_eq!(ended, Err(Expired));
            assert_eq!(start.elapsed(), budget, "woken at its deadline");
            assert_eq!(deadlines.registered(), 0, "taken out when it ended");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_statement_that_ends_in_time_is_answered_and_leaves_nothing() {
        let deadlines = kept(Duration::from_secs(10)).await;
        let start = Instant::now();
        let answer = async {
            tokio::time::sleep(ms(40)).await;
            7
        };
        assert_eq!(deadlines.bound(start + ms(50), answer).await, Ok(7));
        assert_eq!(start.elapsed(), ms(40));
        assert_eq!(deadlines.registered(), 0);
        // A statement dropped while it waits is taken out too.
        let mut waiting = Box::pin(deadlines.bound(start + ms(500), pending::<()>()));
        assert!(futures_util::poll!(waiting.as_mut()).is_pending());
        assert_eq!(deadlines.registered(), 1);
        drop(waiting);
        assert_eq!(deadlines.registered(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_out_of_order_each_expire_at_their_own() {
        let deadlines = kept(Duration::from_secs(10)).await;
        let start = Instant::now();
        // Registered latest first: each earlier one re-arms the keeper.
        let waits = [ms(900), ms(300), ms(600), ms(100)].map(|budget| {
            let deadlines = Arc::clone(&deadlines);
            tokio::spawn(async move {
                let ended = deadlines.bound(start + budget, pending::<()>()).await;
                (ended, start.elapsed(), budget)
            })
        });
        for wait in waits {
            let (ended, elapsed, budget) = wait.await.unwrap();
            assert_eq!(ended, Err(Expired));
            assert_eq!(elapsed, budget);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_keeper_a_statement_keeps_its_own_timer() {
        let deadlines = Deadlines::default();
        let start = Instant::now();
        let ended = deadlines.bound(start + ms(70), pending::<()>()).await;
        assert_eq!(ended, Err(Expired));
        assert_eq!(start.elapsed(), ms(70));
    }

    #[tokio::test(start_paused = true)]
    async fn a_keeper_that_stops_hands_its_statements_their_own_timers() {
        let deadlines = Arc::new(Deadlines::default());
        let keeper = tokio::spawn(keep_deadlines(Arc::clone(&deadlines), ms(10_000)));
        tokio::task::yield_now().await;
        let start = Instant::now();
        let waiting = tokio::spawn({
            let deadlines = Arc::clone(&deadlines);
            async move { deadlines.bound(start + ms(200), pending::<()>()).await }
        });
        tokio::time::sleep(ms(50)).await;
        assert_eq!(deadlines.registered(), 1);
        // Its runtime's shutdown drops the keeper the same way.
        keeper.abort();
        assert_eq!(waiting.await.unwrap(), Err(Expired));
        assert_eq!(start.elapsed(), ms(200), "still at its deadline");
        assert_eq!(deadlines.registered(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_keeper_ends_when_its_hub_is_gone() {
        let deadlines = Arc::new(Deadlines::default());
        let keeper = tokio::spawn(keep_deadlines(Arc::clone(&deadlines), ms(10_000)));
        tokio::task::yield_now().await;
        deadlines.release_keeper();
        drop(deadlines);
        tokio::time::timeout(ms(1), keeper)
            .await
            .expect("ended at once, not at its idle alarm")
            .unwrap();
    }
}
