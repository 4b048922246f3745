//! A read's first attempt watched past its hedge delay: the slow path of
//! `route` in `read.rs`. Nothing here runs for a read answered before
//! its first check; it is boxed by the caller so the read future stays
//! small.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_util::future::Either;
use tokio::time::{sleep_until, Instant};
use tracing::Instrument;

use crate::config::clock;
use crate::config::ReadStrategy;
use crate::failure::error::Error;
use crate::hedging::{hedge_adds_load, hedge_delay, outlier_limit};
use crate::hub::Hub;
use crate::manager::attempt::{span, Attempt, Call};
use crate::manager::session::{Connect, Returns, RowOf};
use crate::routing::freshness::Freshness;

/// When a read's first attempt is looked at again, to hedge it. Times
/// count from the attempt's start. Outliers are found by the hub's outlier
/// watch (one task for every read, see `hub/hedging.rs`), not here.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Watch {
    /// When to hedge, counted from the call's start: also the first look.
    pub(crate) hedge_after: Duration,
    /// Once the budget refused the hedge: how often to look whether the
    /// node left routing (a free hedge then); `None`: never (detection off).
    recheck: Option<Duration>,
}

/// How a watched read ended, its answer `T`.
pub(crate) enum Settled<T> {
    /// The first attempt's own result (no hedge was sent).
    First(Result<T, Error>),
    /// A hedge was sent: the first answer and its node, or the first
    /// attempt's error if neither answered.
    Hedged(Result<(usize, T), Error>),
}

/// Where a hedge may go.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Route {
    pub(crate) strategy: ReadStrategy,
    pub(crate) freshness: Freshness,
    /// The first attempt's node.
    pub(crate) first: usize,
}

impl Watch {
    /// The plan for a read on `first`; `may_resend`: the read may run
    /// twice. `None`: nothing to watch for (hedging off, or the read may not
    /// run twice): no timer (the deadline is kept in the hub's registry).
    pub(crate) fn plan(hub: &Hub, first: usize, may_resend: bool) -> Option<Self> {
        let (hedging, outliers) = (&hub.config.hedging, &hub.config.outliers);
        if !(hedging.enabled && may_resend) {
            return None;
        }
        let p99 = hub.read_p99(first);
        let hedge_after = hedge_delay(hedging, p99);
        let recheck = outliers
            .enabled
            .then(|| (outlier_limit(outliers, p99) / 4).max(Duration::from_millis(1)));
        Some(Self {
            hedge_after,
            recheck,
        })
    }

    /// From the first look on: hedges once (free of the budget if the
    /// node left routing meanwhile), waits for the first attempt otherwise.
    pub(crate) async fn run<K: Returns, C: Connect, F>(
        self,
        hub: &Hub,
        connect: C,
        route: Route,
        mut attempt: Pin<&mut F>,
        call: &Call<'_>,
        rng: &mut fastrand::Rng,
    ) -> Settled<K::Output<RowOf<C>>>
    where
        F: Future<Output = Result<K::Output<RowOf<C>>, Error>>,
    {
        // Called at the first look, which counts from the call's start.
        let started = call.deadline.started;
        let mut hedge = Hedge::Due(clock::after(started, self.hedge_after));
        loop {
            let now = Instant::now();
            // A read moved off a node that left routing needs no token: it
            // adds no load (that node gets no new reads, and it had at most
            // a pool's worth in flight).
            let suspect = hub.is_suspect(route.first);
            let try_now = match hedge {
                Hedge::Due(at) => at <= now || suspect,
                Hedge::Refused => suspect,
                Hedge::Never => false,
            };
            if try_now {
                match self.hedge_target(hub, connect, route, rng, now, suspect) {
                    Target::Node(second) => {
                        let result =
                            race::<K, C, F>(hub, connect, route.first, attempt, second, call).await;
                        return Settled::Hedged(result);
                    }
                    Target::Refused => hedge = Hedge::Refused,
                    Target::Nowhere => hedge = Hedge::Never,
                }
            }
            let next = match (hedge, self.recheck) {
                (Hedge::Due(at), _) => at,
                (Hedge::Refused, Some(every)) => clock::after(now, every),
                _ => return Settled::First(attempt.await),
            };
            tokio::select! {
                biased;
                result = attempt.as_mut() => return Settled::First(result),
                () = sleep_until(next) => {}
            }
        }
    }

    /// Another eligible node, and a token from the budget for it unless
    /// `free`. None while the slowness looks like load (see
    /// `hedge_adds_load`), unless the first node left routing.
    fn hedge_target<C: Connect>(
        &self,
        hub: &Hub,
        connect: C,
        route: Route,
        rng: &mut fastrand::Rng,
        now: Instant,
        free: bool,
    ) -> Target {
        let Some(second) = hub.pick_read(route.strategy, route.freshness, Some(route.first), rng)
        else {
            return Target::Nowhere;
        };
        if !free {
            // The candidate's own reads only: no scan of its peers here.
            let candidate = hub.traffic_of(second, hub.nanos(now));
            let load = hedge_adds_load(
                connect.saturated(hub, route.first),
                connect.saturated(hub, second),
                candidate,
            );
            if load {
                tracing::debug!(
                    first = route.first,
                    candidate = second,
                    "hedge withheld: the slowness looks like load, not one slow node"
                );
                return Target::Refused;
            }
        }
        if !free && !hub.budget.withdraw(now) {
            hub.extra_read_refused(route.first, false);
            return Target::Refused;
        }
        hub.hedge_sent(route.first, second);
        Target::Node(second)
    }
}

/// Where a read stands on hedging.
#[derive(Debug, Clone, Copy)]
enum Hedge {
    /// To be hedged at this instant (or as soon as its node leaves routing).
    Due(Instant),
    /// The budget refused, or the slowness looked like load: hedged only
    /// if its node leaves routing.
    Refused,
    /// Not hedged (off, may not run twice, or no other node).
    Never,
}

/// Where a hedge goes.
enum Target {
    Node(usize),
    Refused,
    Nowhere,
}

/// The first attempt against a hedge on `second`: the first answer wins,
/// and the other is dropped, which cancels its statement on its server and
/// discards its connection (see `Busy`).
async fn race<K: Returns, C: Connect, F>(
    hub: &Hub,
    connect: C,
    first: usize,
    mut attempt: Pin<&mut F>,
    second: usize,
    call: &Call<'_>,
) -> Result<(usize, K::Output<RowOf<C>>), Error>
where
    F: Future<Output = Result<K::Output<RowOf<C>>, Error>>,
{
    let mut hedge = Box::pin(tracked::<K, C>(hub, connect, second, 2, call));
    tokio::select! {
        biased;
        result = attempt.as_mut() => match result {
            Ok(rows) => Ok((first, rows)),
            Err(error) => match hedge.await {
                Ok(rows) => {
                    hub.hedge_won(second);
                    Ok((second, rows))
                }
                Err(_) => Err(error),
            },
        },
        result = &mut hedge => match result {
            Ok(rows) => {
                hub.hedge_won(second);
                Ok((second, rows))
            }
            Err(_) => attempt.await.map(|rows| (first, rows)),
        },
    }
}

/// One read attempt on node `index`, counted in its live traffic, inside
/// a span naming the node, its role and the attempt's number when tracing
/// wants that span (a disabled span is not entered at every poll).
pub(crate) fn tracked<'a, K: Returns, C: Connect + 'a>(
    hub: &'a Hub,
    connect: C,
    index: usize,
    number: u32,
    call: &'a Call<'a>,
) -> impl Future<Output = Result<K::Output<RowOf<C>>, Error>> + Send + 'a {
    // The first attempt starts with the call.
    let started = match number {
        1 => call.deadline.started,
        _ => Instant::now(),
    };
    let attempt = Attempt::started_at(hub, connect, index, call.deadline, started);
    // No `async` block: one future layer less on every read.
    let span = span(hub, index, number);
    match span.is_disabled() {
        true => Either::Left(attempt.read::<K>(call)),
        false => Either::Right(attempt.read::<K>(call).instrument(span)),
    }
}
