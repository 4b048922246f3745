//! Readiness judged on what the hub knows now (the rule itself is pure, in
//! `observe/readiness.rs`).

use tokio::time::Instant;

use super::Hub;
use crate::observe::readiness::{decide, Facts, Readiness};

/// Readiness: the facts.
impl Hub {
    /// Judges readiness now.
    pub(crate) fn readiness(&self) -> Readiness {
        decide(&self.readiness_facts(), &self.config.readiness)
    }

    fn readiness_facts(&self) -> Facts {
        let now = Instant::now();
        let missing = self.note_missing(now);
        let missing_for =
            |since: Option<Instant>| since.map(|at| now.saturating_duration_since(at));
        Facts {
            closed: self.is_closed(),
            monitor_running: self.monitor_running(),
            read_node_missing_for: missing_for(missing.reader),
            primary_missing_for: missing_for(missing.primary),
            write_hold: self.config.write_hold,
            reads: self.read_outcomes.tally(now),
            writes: self.write_outcomes.tally(now),
        }
    }
}
