//! What observing a call reads of the hub.

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
