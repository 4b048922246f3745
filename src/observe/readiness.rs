//! [`Readiness`]: whether this instance of the service can serve its
//! traffic now. A pure decision over what the hub knows (the snapshot, the
//! callers' reports) and the outcomes of recent calls.

use std::time::Duration;

use serde::Serialize;

use crate::config::{ReadinessSettings, Requirement};
use crate::observe::window::Tally;

/// Whether this instance can serve its traffic now, and if not, why; from
/// [`DatabaseManager::readiness`](crate::DatabaseManager::readiness), for a
/// readiness probe.
///
/// Ready unless the manager is closed or its monitor stopped, recent calls
/// are failing (see [`ReadinessSettings`]), or for longer than
/// [`Config::write_hold`](crate::Config::write_hold) no node could serve a
/// read with the configured strategy and staleness bound, or no primary
/// was known. Within the hold (a failover: writes are held, replicas cut
/// off from the dead primary serve no read until they follow the new one)
/// it stays ready: the fault is the database's, shared by every instance,
/// and taking them all out of rotation at once serves no one. Writes count
/// only with [`Requirement::ReadsAndWrites`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Readiness {
    /// Ready to serve.
    pub ready: bool,
    /// Why not (empty when ready).
    pub reasons: Vec<NotReady>,
    /// Reads that ended in the window, and how many failed as unavailable.
    pub reads: CallCounts,
    /// Writes and transactions that ended in the window, and how many
    /// failed as unavailable.
    pub writes: CallCounts,
}

/// Calls that ended in the readiness window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[non_exhaustive]
pub struct CallCounts {
    /// Calls that ended.
    pub calls: u64,
    /// Of which failed because the database could not serve them.
    pub failed: u64,
}

/// Why an instance is not ready.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "reason")]
#[non_exhaustive]
pub enum NotReady {
    /// The manager was closed.
    Closed,
    /// The health monitor stopped: every call fails.
    MonitorStopped,
    /// No node may serve a read with the configured strategy and
    /// staleness bound, for longer than the write hold.
    NoReadNode {
        /// How long none has (as of the monitor's last round).
        #[serde(serialize_with = "crate::observe::micros::serialize")]
        missing_for: Duration,
    },
    /// No primary for longer than the write hold: writes fail.
    NoPrimary {
        /// How long it has been missing (as of the monitor's last round).
        #[serde(serialize_with = "crate::observe::micros::serialize")]
        missing_for: Duration,
    },
    /// More reads in the window failed than the settings allow.
    ReadsFailing(CallCounts),
    /// More writes in the window failed than the settings allow.
    WritesFailing(CallCounts),
}

/// What readiness is judged on, copied out of the hub.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Facts {
    pub(crate) closed: bool,
    pub(crate) monitor_running: bool,
    /// How long no read with the configured options would have found a
    /// node, if none would now.
    pub(crate) read_node_missing_for: Option<Duration>,
    /// How long no primary has been routable, if none is now.
    pub(crate) primary_missing_for: Option<Duration>,
    pub(crate) write_hold: Duration,
    pub(crate) reads: Tally,
    pub(crate) writes: Tally,
}

/// The decision.
pub(crate) fn decide(facts: &Facts, settings: &ReadinessSettings) -> Readiness {
    let writes_count = settings.require == Requirement::ReadsAndWrites;
    let mut reasons = Vec::new();
    if facts.closed {
        reasons.push(NotReady::Closed);
    } else if !facts.monitor_running {
        reasons.push(NotReady::MonitorStopped);
    }
    if let Some(missing_for) = facts.read_node_missing_for {
        if missing_for > facts.write_hold {
            reasons.push(NotReady::NoReadNode { missing_for });
        }
    }
    if let Some(missing_for) = facts.primary_missing_for {
        if writes_count && missing_for > facts.write_hold {
            reasons.push(NotReady::NoPrimary { missing_for });
        }
    }
    let reads = counts(facts.reads);
    if failing(facts.reads, settings) {
        reasons.push(NotReady::ReadsFailing(reads));
    }
    let writes = counts(facts.writes);
    if writes_count && failing(facts.writes, settings) {
        reasons.push(NotReady::WritesFailing(writes));
    }
    Readiness {
        ready: reasons.is_empty(),
        reasons,
        reads,
        writes,
    }
}

fn counts(tally: Tally) -> CallCounts {
    CallCounts {
        calls: tally.calls,
        failed: tally.failed,
    }
}

/// Enough calls to judge, and too large a share of them failed.
fn failing(tally: Tally, settings: &ReadinessSettings) -> bool {
    if tally.calls == 0 || tally.calls < u64::from(settings.min_calls) {
        return false;
    }
    // Counts stay far below 2^52: the conversion is exact.
    tally.failed as f64 > settings.max_failure_ratio * tally.calls as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            closed: false,
            monitor_running: true,
            read_node_missing_for: None,
            primary_missing_for: None,
            write_hold: Duration::from_secs(5),
            reads: Tally {
                calls: 100,
                failed: 0,
            },
            writes: Tally {
                calls: 10,
                failed: 0,
            },
        }
    }

    fn reads_only() -> ReadinessSettings {
        ReadinessSettings {
            require: Requirement::Reads,
            ..ReadinessSettings::default()
        }
    }

    fn reasons(facts: Facts, settings: &ReadinessSettings) -> Vec<NotReady> {
        let readiness = decide(&facts, settings);
        assert_eq!(readiness.ready, readiness.reasons.is_empty());
        readiness.reasons
    }

    #[test]
    fn a_primary_lost_within_the_write_hold_is_ready() {
        let both = ReadinessSettings::default();
        let lost = |secs| Facts {
            primary_missing_for: Some(Duration::from_secs(secs)),
            ..facts()
        };
        assert_eq!(reasons(lost(0), &both), vec![]);
        assert_eq!(reasons(lost(5), &both), vec![]);
        assert_eq!(
            reasons(lost(6), &both),
            vec![NotReady::NoPrimary {
                missing_for: Duration::from_secs(6)
            }]
        );
        assert_eq!(reasons(lost(600), &reads_only()), vec![]);
    }

    #[test]
    fn failing_calls_beyond_the_ratio_are_not_ready() {
        let both = ReadinessSettings::default();
        let with = |reads: (u64, u64), writes: (u64, u64)| Facts {
            reads: Tally {
                calls: reads.0,
                failed: reads.1,
            },
            writes: Tally {
                calls: writes.0,
                failed: writes.1,
            },
            ..facts()
        };
        assert_eq!(reasons(with((10, 5), (0, 0)), &both), vec![]);
        let failing = CallCounts {
            calls: 10,
            failed: 6,
        };
        assert_eq!(
            reasons(with((10, 6), (0, 0)), &both),
            vec![NotReady::ReadsFailing(failing)]
        );
        // Too few calls to judge.
        assert_eq!(reasons(with((4, 4), (4, 4)), &both), vec![]);
        assert_eq!(
            reasons(with((0, 0), (10, 6)), &both),
            vec![NotReady::WritesFailing(failing)]
        );
        assert_eq!(reasons(with((0, 0), (10, 10)), &reads_only()), vec![]);
        let strict = ReadinessSettings {
            max_failure_ratio: 0.0,
            min_calls: 0,
            ..both
        };
        assert_eq!(reasons(with((0, 0), (0, 0)), &strict), vec![]);
        assert_eq!(reasons(with((1000, 1), (0, 0)), &strict).len(), 1);
    }

    #[test]
    fn no_read_node_beyond_the_hold_or_no_monitor_is_not_ready_whatever_the_calls() {
        let both = ReadinessSettings::default();
        let no_read = |secs| Facts {
            read_node_missing_for: Some(Duration::from_secs(secs)),
            ..facts()
        };
        assert_eq!(reasons(no_read(5), &reads_only()), vec![]);
        assert_eq!(
            reasons(no_read(6), &reads_only()),
            vec![NotReady::NoReadNode {
                missing_for: Duration::from_secs(6)
            }]
        );
        let stopped = Facts {
            monitor_running: false,
            ..facts()
        };
        assert_eq!(reasons(stopped, &both), vec![NotReady::MonitorStopped]);
        let closed = Facts {
            closed: true,
            monitor_running: false,
            ..facts()
        };
        assert_eq!(reasons(closed, &both), vec![NotReady::Closed]);
    }
}
