//! Closing pooled connections past their idle timeout or lifetime, on
//! every node, in the background (the decision: `connect/lifetime.rs`;
//! busy connections meet it at their next checkout instead).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Hub;
use crate::connect::lifetime::Lifetimes;

/// The pools' sweep.
impl Hub {
    /// How often the sweep runs; `None` when no limit is set.
    pub(crate) fn sweep_every(&self) -> Option<Duration> {
        Lifetimes::new(&self.config.pool).sweep_every()
    }

    /// Closes every node's idle connections past their limits; returns
    /// how many.
    pub(crate) fn close_expired(&self) -> usize {
        self.each_node().map(|(_, node)| node.close_expired()).sum()
    }
}

/// Sweeps every `every` until `shutdown`.
pub(crate) async fn sweep_pools(hub: Arc<Hub>, every: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        hub.close_expired();
    }
}
