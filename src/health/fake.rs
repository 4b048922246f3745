//! A scripted stand-in for the probe connections, so the monitor's timed
//! rules run on a paused clock without a server (as go-hasql's
//! `NodeChecker` stands in for a database).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::checks::Facts;
use super::probe::{AuroraView, Probe, ProbeReport};
use crate::causal::lsn::Lsn;
use crate::config::{Config, HealthSettings, NodeConfig, Role};
use crate::health::capability::{Capability, MissingCapability};

/// The scripted cluster's system identifier.
pub(crate) const SYSTEM: u64 = 7_000_000_000_000_000_001;

/// What a scripted node answers to a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Answers as a primary (not in recovery).
    Primary { timeline: u32, position: u64 },
    /// Answers as the primary of another cluster (rebuilt, or upgraded).
    PrimaryOf {
        system: u64,
        timeline: u32,
        position: u64,
    },
    /// Answers as a replica receiving WAL.
    Replica { timeline: u32, replayed: u64 },
    /// Answers as a replica whose WAL receiver does not run (its primary is
    /// gone).
    Unfed { timeline: u32, replayed: u64 },
    /// Answers as a primary on timeline 1 at 100 that cannot report
    /// `capability` (42501, as with a revoked `EXECUTE`).
    PrimaryWithout(Capability),
    /// Answers as a replica on timeline 1 at 100 that cannot report
    /// `capability`.
    ReplicaWithout(Capability),
    /// Fails at once (refused, reset).
    Down,
    /// Never answers: the monitor's probe timeout ends the probe.
    Silent,
    /// Panics inside the probe (a bug standing in for any bug).
    Panic,
    /// Answers as this replica over a connection it already has, refuses
    /// new ones (too many clients, a rotated password, an expired
    /// certificate).
    RefusesNewConnections { timeline: u32, replayed: u64 },
}

/// One scripted node: what it answers now, when it was probed, and what it
/// says of its Aurora cluster.
type Script = (Answer, Vec<Instant>, Option<AuroraView>);

/// Every scripted node.
#[derive(Debug, Clone)]
pub(crate) struct World(Arc<Mutex<Vec<Script>>>);

impl World {
    pub(crate) fn new(answers: &[Answer]) -> Self {
        let nodes = answers
            .iter()
            .map(|answer| (*answer, Vec::new(), None))
            .collect();
        Self(Arc::new(Mutex::new(nodes)))
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Script>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// From now on node `index` answers `answer`.
    pub(crate) fn set(&self, index: usize, answer: Answer) {
        self.lock()[index].0 = answer;
    }

    /// From now on node `index` is Aurora instance `instance`, and its
    /// `aurora_replica_status()` lists `listed`.
    pub(crate) fn aurora(&self, index: usize, instance: &str, listed: &[&str]) {
        let listed: Vec<String> = listed.iter().map(|name| (*name).to_owned()).collect();
        self.lock()[index].2 = Some(AuroraView {
            instance: Arc::from(instance),
            listed: Arc::from(listed),
        });
    }

    /// A probe for node `index`, e.g. a discovered one.
    pub(crate) fn prober(&self, index: usize) -> FakeProbe {
        FakeProbe {
            world: self.clone(),
            index,
            connected: false,
        }
    }

    /// When node `index` was probed, oldest first.
    pub(crate) fn probes(&self, index: usize) -> Vec<Instant> {
        self.lock()[index].1.clone()
    }

    /// One probe per node, for `Monitor::new`.
    pub(crate) fn probers(&self) -> Vec<FakeProbe> {
        (0..self.lock().len())
            .map(|index| self.prober(index))
            .collect()
    }
}

/// Node `index` of a [`World`].
#[derive(Debug)]
pub(crate) struct FakeProbe {
    world: World,
    index: usize,
    /// The probe holds an open connection (its last probe succeeded and it
    /// was not told to reconnect).
    connected: bool,
}

impl Probe for FakeProbe {
    async fn probe(&mut self) -> Result<ProbeReport, String> {
        let (answer, aurora) = {
            let mut nodes = self.world.lock();
            nodes[self.index].1.push(Instant::now());
            (nodes[self.index].0, nodes[self.index].2.clone())
        };
        let report = |in_recovery, timeline, position| {
            let facts = Facts {
                position: Some(Lsn(position)),
                timeline: Some(timeline),
                receiving: Some(true),
                system: Some(SYSTEM),
                ..Facts::default()
            };
            ProbeReport::new(in_recovery, facts, Duration::from_millis(1))
        };
        let result = match answer {
            Answer::Primary { timeline, position } => Ok(report(false, timeline, position)),
            Answer::PrimaryOf {
                system,
                timeline,
                position,
            } => Ok(ProbeReport {
                system: Some(system),
                ..report(false, timeline, position)
            }),
            Answer::Replica { timeline, replayed } => Ok(report(true, timeline, replayed)),
            Answer::Unfed { timeline, replayed } => Ok(ProbeReport {
                receiving: Some(false),
                ..report(true, timeline, replayed)
            }),
            Answer::RefusesNewConnections { timeline, replayed } if self.connected => {
                Ok(report(true, timeline, replayed))
            }
            Answer::RefusesNewConnections { .. } => {
                Err("FATAL: sorry, too many clients already".to_owned())
            }
            Answer::PrimaryWithout(capability) => Ok(without(report(false, 1, 100), capability)),
            Answer::ReplicaWithout(capability) => Ok(without(report(true, 1, 100), capability)),
            Answer::Down => Err("connection refused".to_owned()),
            Answer::Silent => std::future::pending().await,
            Answer::Panic => panic!("scripted probe panic"),
        };
        self.connected = result.is_ok();
        result.map(|report| ProbeReport { aurora, ..report })
    }

    fn reconnect(&mut self) {
        self.connected = false;
    }
}

/// `report` as a node that cannot report `capability` gives it.
fn without(mut report: ProbeReport, capability: Capability) -> ProbeReport {
    match capability {
        Capability::Positions => report.position = None,
        Capability::Timeline => report.timeline = None,
        Capability::Receiver => report.receiving = None,
        Capability::ReplayTimestamp => report.replayed_at = None,
        Capability::SystemId => report.system = None,
        Capability::PlatformLag | Capability::GlobalLag => report.platform_fresh_as_of = None,
        // Not the probe's: transactions learn it.
        Capability::CommitStatus => {}
    }
    let role = if report.in_recovery {
        Role::Replica
    } else {
        Role::Primary
    };
    let missing = MissingCapability {
        capability,
        role,
        code: "42501".to_owned(),
        message: format!("permission denied for {capability}"),
    };
    report.missing = Arc::from([missing]);
    report
}

/// A configuration of `count` nodes (node 0 the primary) at addresses
/// nothing listens on, with round health settings for paused-clock tests:
/// probes every 1 s, timeout 500 ms, recovery 5 s doubling to 30 s, fall 1,
/// rise 2.
pub(crate) fn config(count: usize) -> Config {
    let nodes = (0..count)
        .map(|index| {
            let role = if index == 0 {
                Role::Primary
            } else {
                Role::Replica
            };
            let url = "host=127.0.0.1 port=1 user=test";
            NodeConfig::new(format!("node{index}"), format!("region{index}"), url, role)
        })
        .collect();
    let mut config = Config::new(nodes);
    config.health = HealthSettings {
        interval: Duration::from_secs(1),
        probe_timeout: Duration::from_millis(500),
        recovery_initial: Duration::from_secs(5),
        recovery_max: Duration::from_secs(30),
        fall: 1,
        rise: 2,
        // Exact gaps, so tests can name the instant of each probe.
        probe_jitter: 0.0,
        ..HealthSettings::default()
    };
    config
}
