//! What observing a call reads of the hub, and what the call loops count
//! there.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use super::Hub;
use crate::config::Role;
use crate::connect::node::Node;
use crate::observe::metrics::HubMetrics;
use crate::observe::spans::Deployment;

impl Deployment for Hub {
    fn record_query_text(&self) -> bool {
        self.config.record_query_text
    }

    fn role(&self, index: usize) -> Role {
        self.snapshot().nodes[index].role
    }

    fn node(&self, index: usize) -> Option<Arc<Node>> {
        Hub::node(self, index)
    }

    fn metrics(&self) -> &HubMetrics {
        &self.metrics
    }
}

/// What the read loop counts.
impl Hub {
    /// A statement sent as a read can write or lock (`why` is the word
    /// that showed it): counted, logged, and run on the primary as a write.
    pub(crate) fn write_through_read(&self, why: &'static str) {
        self.writes_through_reads.fetch_add(1, Relaxed);
        self.metrics.write_through_read(why);
        tracing::debug!(
            keyword = why,
            "statement sent as a read can write or lock; running it on the primary as a write"
        );
    }

    /// How many statements sent as reads ran as writes.
    pub(crate) fn writes_through_reads(&self) -> u64 {
        self.writes_through_reads.load(Relaxed)
    }
}
