//! The monitor's timed rules on a paused clock, with scripted nodes: fall
//! and rise counts, recovery backoff, reports probed at once, a promotion,
//! fencing, and the write hold. Milliseconds of real time each.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Monitor;
use crate::config::{Config, Role};
use crate::failure::error::Error;
use crate::failure::error::ErrorKind;
use crate::failure::safety::NodeFault;
use crate::health::fake::{config, Answer, World};
use crate::hub::Hub;
use crate::observe::events::Event;
use crate::observe::status::Status;

const PRIMARY: Answer = Answer::Primary {
    timeline: 1,
    position: 100,
};
const REPLICA: Answer = Answer::Replica {
    timeline: 1,
    replayed: 100,
};

/// A hub, its monitor running over scripted nodes, and the clock's start.
struct Harness {
    hub: Arc<Hub>,
    world: World,
    events: broadcast::Receiver<Event>,
    start: Instant,
    shutdown: CancellationToken,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Harness {
    /// Starts as `DatabaseManager::new` does: one round, then the task.
    async fn start(config: Config, answers: &[Answer]) -> Self {
        let hub = Arc::new(Hub::new(config).expect("a valid test configuration"));
        let events = hub.subscribe();
        let world = World::new(answers);
        let start = Instant::now();
        let mut monitor = Monitor::new(Arc::clone(&hub), world.probers());
        monitor.first_round().await;
        let shutdown = CancellationToken::new();
        tokio::spawn(monitor.run(shutdown.clone()));
        Self {
            hub,
            world,
            events,
            start,
            shutdown,
        }
    }

    /// Lets the monitor run until `ms` after the start.
    async fn at(&self, ms: u64) {
        tokio::time::sleep_until(self.start + Duration::from_millis(ms)).await;
    }

    fn ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn status(&self) -> Status {
        Status::capture(&self.hub)
    }

    fn healthy(&self, index: usize) -> bool {
        self.status().nodes[index].healthy
    }

    /// When node `index` was probed, in milliseconds since the start.
    fn probed_at(&self, index: usize) -> Vec<u64> {
        let since = |at: Instant| at.duration_since(self.start).as_millis() as u64;
        self.world.probes(index).into_iter().map(since).collect()
    }

    fn drain_events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.events.try_recv().ok()).collect()
    }
}

fn down_and_up(events: &[Event], node: &str) -> Vec<&'static str> {
    events
        .iter()
        .filter_map(|event| match event {
            Event::NodeDown { node: n, .. } if n == node => Some("down"),
            Event::NodeUp { node: n } if n == node => Some("up"),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn fall_failures_take_a_node_down_and_rise_successes_bring_it_back() {
    let mut config = config(3);
    config.health.fall = 2;
    config.health.rise = 2;
    let mut h = Harness::start(config, &[PRIMARY, REPLICA, REPLICA]).await;
    h.at(500).await;
    h.world.set(1, Answer::Down);
    h.at(1500).await;
    assert!(h.healthy(1), "one failure of fall = 2 keeps it up");
    h.at(2500).await;
    assert!(
        !h.healthy(1),
        "the second consecutive failure takes it down"
    );
    h.world.set(1, REPLICA);
    // Down at 2 s: re-probed after recovery_initial (5 s), then every
    // interval until rise successes.
    h.at(7500).await;
    assert!(!h.healthy(1), "one success of rise = 2 keeps it down");
    h.at(8500).await;
    assert!(h.healthy(1), "{:?}", h.status().nodes[1]);
    assert_eq!(h.probed_at(1), [0, 1000, 2000, 7000, 8000]);
    assert_eq!(down_and_up(&h.drain_events(), "node1"), ["down", "up"]);
    assert!(h.status().nodes[1].last_error.is_none());
}

/// The defaults' promise (the configuration guide): a node that
/// answers again after a short fault is back in routing within about a
/// second, whenever in its backoff it comes back.
#[tokio::test(start_paused = true)]
async fn with_the_defaults_a_node_that_answers_again_is_back_within_about_a_second() {
    use crate::config::HealthSettings;
    let defaults = HealthSettings::default();
    // The bound: the longest re-probe gap, then the confirming probes.
    let bound = defaults.recovery_max + defaults.recovery_initial * (defaults.rise - 1);
    assert!(bound <= Duration::from_millis(1250), "{bound:?}");
    for fault_ms in [300, 1_000, 2_000, 10_000] {
        let mut config = config(3);
        config.health = defaults.clone();
        let h = Harness::start(config, &[PRIMARY, REPLICA, REPLICA]).await;
        h.at(100).await;
        h.world.set(1, Answer::Down);
        h.at(1_100).await;
        assert!(!h.healthy(1), "down after its failed probe");
        h.at(1_100 + fault_ms).await;
        h.world.set(1, REPLICA);
        let answering = Instant::now();
        while !h.healthy(1) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let back = answering.elapsed();
        assert!(
            back <= bound,
            "after a {fault_ms} ms fault: back {back:?} after it answered (bound {bound:?})"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn recovery_probes_back_off_from_recovery_initial_to_recovery_max() {
    let h = Harness::start(config(3), &[PRIMARY, Answer::Down, REPLICA]).await;
    h.at(100_500).await;
    // Gaps of 5, 10, 20, then 30 s (the cap), 30 s.
    assert_eq!(h.probed_at(1), [0, 5000, 15_000, 35_000, 65_000, 95_000]);
    // Healthy nodes keep their interval meanwhile.
    assert_eq!(h.probed_at(2).len(), 101);
    assert!(!h.healthy(1));
    let error = h.status().nodes[1].last_error.clone();
    assert_eq!(error.as_deref(), Some("connection refused"));
}

#[tokio::test(start_paused = true)]
async fn a_silent_node_is_bounded_by_the_probe_timeout_and_holds_back_no_one() {
    let h = Harness::start(config(3), &[PRIMARY, REPLICA, REPLICA]).await;
    h.world.set(1, Answer::Silent);
    h.world.set(2, Answer::Down);
    // Both are probed at 1 s: node2's failure is published at once, while
    // node1's probe still waits for its 500 ms timeout.
    h.at(1001).await;
    assert!(
        !h.healthy(2),
        "published without waiting for the silent probe"
    );
    assert!(h.healthy(1), "its probe is still in flight");
    h.at(1499).await;
    assert!(h.healthy(1));
    h.at(1501).await;
    assert!(!h.healthy(1), "down when its probe timed out");
    let error = h.status().nodes[1].last_error.clone().unwrap_or_default();
    assert!(error.contains("timed out after 500ms"), "{error}");
}

#[tokio::test(start_paused = true)]
async fn a_reported_node_is_probed_at_once() {
    let mut config = config(3);
    config.health.fall = 3;
    let h = Harness::start(config, &[PRIMARY, REPLICA, REPLICA]).await;
    h.world.set(1, Answer::Down);
    h.at(400).await;
    h.hub.blame(1, NodeFault::Suspect);
    let node = &h.status().nodes[1];
    assert!(
        node.suspect && !node.healthy,
        "out of routing at once: {node:?}"
    );
    h.at(450).await;
    assert_eq!(h.probed_at(1), [0, 400], "probed when reported, not at 1 s");
    let node = &h.status().nodes[1];
    assert!(
        !node.suspect && !node.healthy && node.last_error.is_some(),
        "one failed probe confirms a suspect node down despite fall = 3: {node:?}"
    );

    // A topology hint: probed at once, kept in routing meanwhile.
    h.hub.blame(2, NodeFault::Reprobe);
    assert!(h.healthy(2));
    h.at(500).await;
    assert_eq!(h.probed_at(2), [0, 450]);
    assert!(h.healthy(2));
}

#[tokio::test(start_paused = true)]
async fn a_promotion_moves_the_write_target_within_one_probe_and_the_old_primary_is_fenced() {
    let mut h = Harness::start(config(3), &[PRIMARY, REPLICA, REPLICA]).await;
    assert_eq!(h.hub.primary_index(), Some(0));
    h.at(500).await;
    // Failover: the primary dies, node1 is promoted onto timeline 2.
    h.world.set(0, Answer::Down);
    let promoted = Answer::Primary {
        timeline: 2,
        position: 200,
    };
    h.world.set(1, promoted);
    h.at(999).await;
    assert_eq!(h.hub.primary_index(), Some(0), "not yet probed");
    h.at(1000).await;
    tokio::task::yield_now().await;
    assert_eq!(h.hub.primary_index(), Some(1), "at {} ms", h.ms());
    let changes: Vec<_> = h
        .drain_events()
        .into_iter()
        .filter_map(|event| match event {
            Event::PrimaryChanged { to, .. } => Some(to),
            _ => None,
        })
        .collect();
    assert_eq!(
        changes.last(),
        Some(&Some("node1".to_owned())),
        "{changes:?}"
    );

    // The old primary comes back on timeline 1: fenced, never the target.
    h.world.set(0, PRIMARY);
    h.at(7500).await;
    let status = h.status();
    let node0 = &status.nodes[0];
    assert!(node0.fenced && node0.role == Role::Primary, "{node0:?}");
    assert!(node0.last_error.is_none(), "it answers probes: {node0:?}");
    assert!(!node0.healthy, "a fenced node serves nothing: {node0:?}");
    assert_eq!(status.write_target.as_deref(), Some("node1"));
    assert_eq!(h.hub.primary_index(), Some(1));

    // With the new primary gone too, the stale one still gets nothing.
    h.world.set(1, Answer::Down);
    h.world.set(2, Answer::Down);
    h.at(8500).await;
    assert_eq!(h.hub.primary_index(), None);
    let status = h.status();
    assert!(status.nodes[0].fenced);
    assert!(!status.can_read(), "only a fenced node is up: {status:?}");
}

#[tokio::test(start_paused = true)]
async fn a_write_holds_for_a_primary_until_write_hold_or_the_deadline() {
    let mut config = config(3);
    config.write_hold = Duration::from_secs(2);
    // The recovery and rise timings below, without the failover watch
    // (which would find the primary back at once; it has its own tests).
    config.health.failover_watch = Duration::ZERO;
    let h = Harness::start(config, &[Answer::Down, REPLICA, REPLICA]).await;
    assert_eq!(h.hub.primary_index(), None);

    let held = Instant::now();
    let error = h.hub.await_primary(held + Duration::from_secs(10)).await;
    assert!(
        matches!(error.as_ref().map_err(Error::kind), Err(ErrorKind::NoPrimary { waited }) if *waited == Duration::from_secs(2)),
        "{error:?}"
    );
    assert_eq!(held.elapsed(), Duration::from_secs(2));

    let held = Instant::now();
    let error = h.hub.await_primary(held + Duration::from_millis(300)).await;
    assert!(
        matches!(error.as_ref().map_err(Error::kind), Err(ErrorKind::NoPrimary { waited }) if *waited == Duration::from_millis(300)),
        "never past the deadline: {error:?}"
    );

    // The primary answers again from 4.5 s: re-probed at 5 s (recovery)
    // and 6 s (rise = 2); a write holding from 4.5 s gets it at 6 s.
    h.at(4500).await;
    h.world.set(0, PRIMARY);
    let index = h.hub.await_primary(h.start + Duration::from_secs(60)).await;
    assert_eq!(index.ok(), Some(0));
    assert_eq!(h.ms(), 6000);
}

#[tokio::test(start_paused = true)]
async fn durations_that_validate_never_overflow_an_instant() {
    let mut config = config(2);
    let huge = Duration::from_secs(u64::MAX);
    config.health.interval = huge;
    config.health.recovery_initial = huge;
    config.health.recovery_max = huge;
    config.write_hold = huge;
    config.deadline = huge;
    config.validate().expect("huge durations validate");
    let h = Harness::start(config, &[Answer::Down, REPLICA]).await;
    h.at(1000).await;
    assert_eq!(h.probed_at(0), [0], "the next probe is decades away");
    let held = Instant::now();
    let error = h.hub.await_primary(held + Duration::from_secs(3)).await;
    assert!(
        matches!(
            error.as_ref().map_err(Error::kind),
            Err(ErrorKind::NoPrimary { .. })
        ),
        "{error:?}"
    );
    assert_eq!(
        held.elapsed(),
        Duration::from_secs(3),
        "the deadline ends the hold"
    );
}

#[tokio::test(start_paused = true)]
async fn a_write_holding_for_a_suspect_primary_goes_on_when_its_probe_clears_it() {
    let h = Harness::start(config(3), &[PRIMARY, REPLICA, REPLICA]).await;
    h.at(300).await;
    // A caller saw the primary fail; it answers the probe that follows.
    h.hub.blame(0, NodeFault::Suspect);
    assert_eq!(h.hub.primary_index(), None);
    let index = h.hub.await_primary(h.start + Duration::from_secs(10)).await;
    assert_eq!(index.ok(), Some(0));
    assert_eq!(h.ms(), 300, "woken by the probe the report triggered");
}

#[tokio::test(start_paused = true)]
async fn close_ends_a_write_hold_at_once() {
    let h = Harness::start(config(2), &[Answer::Down, REPLICA]).await;
    let hub = Arc::clone(&h.hub);
    let held = tokio::spawn(async move {
        hub.await_primary(crate::config::clock::after(
            Instant::now(),
            Duration::from_secs(60),
        ))
        .await
    });
    h.at(100).await;
    h.hub.close();
    let result = held.await.expect("the holding task");
    assert!(
        matches!(result.as_ref().map_err(Error::kind), Err(ErrorKind::Closed)),
        "{result:?}"
    );
    assert_eq!(h.ms(), 100, "woken by close, not by the hold's end");
}

#[tokio::test(start_paused = true)]
async fn a_dead_monitor_is_reported_and_calls_fail_fast() {
    let h = Harness::start(config(2), &[PRIMARY, REPLICA]).await;
    assert!(h.status().monitor_running && h.hub.ensure_open().is_ok());
    h.world.set(1, Answer::Panic);
    h.at(1500).await;
    let status = h.status();
    assert!(!status.monitor_running, "{status:?}");
    assert!(!status.can_write() && !status.can_read());
    assert!(matches!(
        h.hub.ensure_open().as_ref().map_err(Error::kind),
        Err(ErrorKind::MonitorStopped)
    ));
}

#[tokio::test(start_paused = true)]
async fn a_node_that_refuses_new_connections_is_not_kept_up_by_an_old_one() {
    let mut h = Harness::start(config(3), &[PRIMARY, REPLICA, REPLICA]).await;
    let refuses = Answer::RefusesNewConnections {
        timeline: 1,
        replayed: 100,
    };
    h.world.set(1, refuses);
    h.at(2500).await;
    assert!(h.healthy(1), "its old probe connection still answers");
    // A caller's pool could not connect: the probe must prove it can.
    h.hub.blame(1, NodeFault::Suspect);
    h.at(2600).await;
    let node = h.status().nodes[1].clone();
    assert!(!node.healthy && !node.suspect, "{node:?}");
    assert!(node
        .last_error
        .is_some_and(|e| e.contains("too many clients")));
    // And it stays down: no old connection to flap back up on.
    h.at(20_000).await;
    assert!(!h.healthy(1));
    assert_eq!(down_and_up(&h.drain_events(), "node1"), ["down"]);
}

/// Where `count` bounded reads go: how many reached each node.
fn bounded_reads(hub: &Hub, bound: Duration, count: usize) -> Vec<usize> {
    let freshness = crate::routing::freshness::Freshness {
        max_staleness: Some(bound),
        after: None,
    };
    let mut rng = fastrand::Rng::with_seed(5);
    let mut served = vec![0; hub.len()];
    for _ in 0..count {
        let strategy = crate::config::ReadStrategy::GlobalRandom;
        if let Some(index) = hub.pick_read(strategy, freshness, None, &mut rng) {
            served[index] += 1;
        }
    }
    served
}

#[tokio::test(start_paused = true)]
async fn a_replica_already_behind_at_start_is_not_fresh_for_a_bound() {
    let behind = Answer::Replica {
        timeline: 1,
        replayed: 50,
    };
    let h = Harness::start(config(3), &[PRIMARY, REPLICA, behind]).await;
    // Half a second in, a history that starts with this manager would call
    // node2 at most half a second behind.
    h.at(500).await;
    let served = bounded_reads(&h.hub, Duration::from_secs(2), 300);
    assert_eq!(
        served[2], 0,
        "node2 never showed it had the primary's data: {served:?}"
    );
    assert!(served[1] > 0, "{served:?}");
    assert!(h.status().nodes[2].lag.is_none(), "unknown, not small");
}

#[tokio::test(start_paused = true)]
async fn replicas_grow_stale_while_the_primary_cannot_be_seen_and_between_probes() {
    let h = Harness::start(config(2), &[PRIMARY, REPLICA]).await;
    let bound = Duration::from_millis(1500);
    h.at(500).await;
    assert!(bounded_reads(&h.hub, bound, 100)[1] > 0);
    // A partition between the service and the primary's region: the
    // replica stops receiving too, and nothing shows it is fresh any more.
    h.world.set(0, Answer::Down);
    // The last good primary probe was sent at 0 s; the one at 1 s fails.
    h.at(1400).await;
    assert!(
        bounded_reads(&h.hub, bound, 100)[1] > 0,
        "fresh as of 0 s, 1.4 s ago"
    );
    h.at(1600).await;
    assert_eq!(
        bounded_reads(&h.hub, bound, 100)[1],
        0,
        "1.6 s since anything showed the replica fresh"
    );
    // The primary is seen again: the caught-up replica is fresh again.
    h.world.set(0, PRIMARY);
    h.at(10_500).await;
    assert!(h.healthy(0));
    assert!(bounded_reads(&h.hub, bound, 100)[1] > 0);
}

#[tokio::test(start_paused = true)]
async fn a_replica_left_following_the_old_primary_is_an_orphan() {
    let h = Harness::start(config(3), &[PRIMARY, REPLICA, REPLICA]).await;
    h.at(500).await;
    h.world.set(0, Answer::Down);
    let promoted = Answer::Primary {
        timeline: 2,
        position: 200,
    };
    h.world.set(1, promoted);
    // node2 still points at node0: its receiver stops, it stays on 1.
    let unfed = Answer::Unfed {
        timeline: 1,
        replayed: 150,
    };
    h.world.set(2, unfed);
    h.at(1500).await;
    let status = h.status();
    assert_eq!(status.write_target.as_deref(), Some("node1"));
    let node2 = &status.nodes[2];
    assert_eq!(
        node2.orphaned,
        Some(crate::topology::Orphan::NotReceiving),
        "{node2:?}"
    );
    assert!(!node2.healthy, "an orphan serves no read: {node2:?}");
    let mut rng = fastrand::Rng::with_seed(9);
    for _ in 0..100 {
        let strategy = crate::config::ReadStrategy::GlobalRandom;
        let pick = h
            .hub
            .pick_read(strategy, Default::default(), None, &mut rng);
        assert_eq!(pick, Some(1));
    }
    // Repointed at the new primary, it streams timeline 2 and rejoins.
    let repointed = Answer::Replica {
        timeline: 2,
        replayed: 200,
    };
    h.world.set(2, repointed);
    h.at(2500).await;
    let node2 = &h.status().nodes[2];
    assert!(node2.orphaned.is_none() && node2.healthy, "{node2:?}");
}

#[tokio::test(start_paused = true)]
async fn a_replica_on_a_higher_timeline_fences_an_old_primary_from_the_start() {
    // Started while the new primary (node1) is unreachable: the old one is
    // back and writable on timeline 1, but node2 shows timeline 2.
    let on_two = Answer::Replica {
        timeline: 2,
        replayed: 300,
    };
    let h = Harness::start(config(3), &[PRIMARY, Answer::Down, on_two]).await;
    let status = h.status();
    assert_eq!(status.write_target, None, "{status:?}");
    assert!(status.nodes[0].fenced, "{:?}", status.nodes[0]);
    assert_eq!(h.hub.primary_index(), None);
}

#[tokio::test(start_paused = true)]
async fn a_rebuilt_cluster_is_not_fenced_by_the_old_ones_timelines() {
    let on_three = Answer::Primary {
        timeline: 3,
        position: 900,
    };
    let h = Harness::start(config(1), &[on_three]).await;
    assert_eq!(h.hub.primary_index(), Some(0));
    // Rebuilt from scratch (or pg_upgrade): a new system, timeline 1.
    let rebuilt = Answer::PrimaryOf {
        system: 8,
        timeline: 1,
        position: 100,
    };
    h.world.set(0, rebuilt);
    h.at(1500).await;
    let status = h.status();
    assert!(!status.nodes[0].fenced, "{:?}", status.nodes[0]);
    assert_eq!(h.hub.primary_index(), Some(0));
}

/// Where `count` reads after `token` go: how many reached each node.
fn causal_reads(hub: &Hub, token: crate::causal::lsn::CausalToken, count: usize) -> Vec<usize> {
    let freshness = crate::routing::freshness::Freshness {
        max_staleness: None,
        after: Some(token),
    };
    let mut rng = fastrand::Rng::with_seed(7);
    let mut served = vec![0; hub.len()];
    for _ in 0..count {
        let strategy = crate::config::ReadStrategy::GlobalRandom;
        if let Some(index) = hub.pick_read(strategy, freshness, None, &mut rng) {
            served[index] += 1;
        }
    }
    served
}

#[tokio::test(start_paused = true)]
async fn a_replica_without_positions_is_healthy_but_serves_no_bounded_or_causal_read() {
    use crate::health::capability::Capability;
    let without = Answer::ReplicaWithout(Capability::Positions);
    let h = Harness::start(config(3), &[PRIMARY, REPLICA, without]).await;
    h.at(1500).await;
    let status = h.status();
    let node2 = &status.nodes[2];
    assert!(node2.healthy && node2.orphaned.is_none(), "{node2:?}");
    assert!(status.lacks("node2", Capability::Positions), "{node2:?}");
    assert!(!status.lacks("node1", Capability::Positions));
    assert!(node2.lag.is_none() && node2.wal_position.is_none());
    let bounded = bounded_reads(&h.hub, Duration::from_secs(5), 300);
    assert_eq!(bounded[2], 0, "no lag figure, no bounded read: {bounded:?}");
    assert!(bounded[1] > 0, "{bounded:?}");
    let token = crate::causal::lsn::CausalToken::on_timeline(1, crate::causal::lsn::Lsn(100));
    let causal = causal_reads(&h.hub, token, 300);
    assert_eq!(causal[2], 0, "{causal:?}");
    assert!(causal[0] > 0 && causal[1] > 0, "{causal:?}");
    let unbounded = {
        let mut rng = fastrand::Rng::with_seed(3);
        let strategy = crate::config::ReadStrategy::GlobalRandom;
        (0..300)
            .filter(|_| {
                h.hub
                    .pick_read(strategy, Default::default(), None, &mut rng)
                    == Some(2)
            })
            .count()
    };
    assert!(unbounded > 0, "it still serves plain reads");
}

#[tokio::test(start_paused = true)]
async fn a_primary_without_positions_leaves_bounded_reads_to_itself() {
    use crate::health::capability::Capability;
    let without = Answer::PrimaryWithout(Capability::Positions);
    let h = Harness::start(config(3), &[without, REPLICA, REPLICA]).await;
    h.at(1500).await;
    let status = h.status();
    assert_eq!(status.write_target.as_deref(), Some("node0"));
    assert!(status.can_write());
    let bounded = bounded_reads(&h.hub, Duration::from_secs(5), 300);
    assert_eq!(bounded, [300, 0, 0], "no replica's lag is known");
}

#[tokio::test(start_paused = true)]
async fn without_a_timeline_or_receiver_nodes_stay_healthy_and_fencing_uses_what_is_left() {
    use crate::health::capability::Capability;
    let answers = [
        Answer::PrimaryWithout(Capability::Timeline),
        Answer::ReplicaWithout(Capability::Receiver),
        Answer::ReplicaWithout(Capability::Timeline),
    ];
    let h = Harness::start(config(3), &answers).await;
    h.at(1500).await;
    let status = h.status();
    assert_eq!(status.write_target.as_deref(), Some("node0"), "{status:?}");
    assert!(status.nodes.iter().all(|node| node.healthy), "{status:?}");
    assert!(status.nodes[0].timeline.is_none());
    assert!(status.lacks("node0", Capability::Timeline));
    assert!(status.lacks("node1", Capability::Receiver));
    assert!(
        status.nodes[1].orphaned.is_none(),
        "unknown is not orphaned"
    );
    // A second claimant, neither with a timeline: undecidable.
    h.world.set(1, Answer::PrimaryWithout(Capability::Timeline));
    h.at(2500).await;
    let status = h.status();
    assert!(status.split_brain, "{status:?}");
    assert_eq!(status.write_target, None);
}

#[tokio::test(start_paused = true)]
async fn without_a_primary_every_node_is_probed_fast_until_a_promotion_is_seen() {
    let mut config = config(3);
    config.health.interval = Duration::from_secs(5);
    let h = Harness::start(config, &[PRIMARY, REPLICA, REPLICA]).await;
    assert_eq!(h.hub.primary_index(), Some(0));
    // The primary dies; its next probe (at 5 s) finds it down.
    h.world.set(0, Answer::Down);
    h.at(5_000).await;
    tokio::task::yield_now().await;
    assert_eq!(h.hub.primary_index(), None);
    // Node1 is promoted 300 ms later: seen within a watch interval (20 ms,
    // the watch is young), not at the next regular probe (10 s).
    h.at(5_300).await;
    let promoted_at = h.ms();
    h.world.set(
        1,
        Answer::Primary {
            timeline: 2,
            position: 200,
        },
    );
    h.at(5_340).await;
    tokio::task::yield_now().await;
    assert_eq!(h.hub.primary_index(), Some(1), "at {} ms", h.ms());
    let watched: Vec<u64> = h
        .probed_at(2)
        .into_iter()
        .filter(|&at| (5_000..promoted_at).contains(&at))
        .collect();
    assert!(
        watched.len() >= 14,
        "node2 probed fast during the watch: {watched:?}"
    );
    // Once a primary is elected, probes go back to every 5 s.
    let before = h.probed_at(2).len();
    h.at(9_000).await;
    assert!(h.probed_at(2).len() - before <= 1, "{:?}", h.probed_at(2));
}

#[tokio::test(start_paused = true)]
async fn a_silent_old_primary_does_not_slow_the_failover_watch() {
    let mut config = config(3);
    config.health.interval = Duration::from_secs(5);
    config.health.probe_timeout = Duration::from_secs(2);
    let h = Harness::start(config, &[PRIMARY, REPLICA, REPLICA]).await;
    // The primary is cut off (a black hole, not a refusal): its probe at
    // 5 s times out at 7 s, and every later one takes the full 2 s.
    h.world.set(0, Answer::Silent);
    h.at(7_001).await;
    tokio::task::yield_now().await;
    assert_eq!(h.hub.primary_index(), None);
    // Node1 is promoted while node0's watched probes hang: seen within a
    // watch interval, not when the silent probe gives up (9 s and later).
    h.at(7_300).await;
    h.world.set(
        1,
        Answer::Primary {
            timeline: 2,
            position: 200,
        },
    );
    h.at(7_340).await;
    tokio::task::yield_now().await;
    assert_eq!(h.hub.primary_index(), Some(1), "at {} ms", h.ms());
    let watched: Vec<u64> = h
        .probed_at(2)
        .into_iter()
        .filter(|&at| (7_001..7_300).contains(&at))
        .collect();
    assert!(watched.len() >= 10, "node2 probed fast: {watched:?}");
    // Node0 has one probe in flight at a time: sent again only when the
    // last one timed out.
    let node0 = h.probed_at(0);
    assert!(
        node0.windows(2).all(|pair| pair[1] - pair[0] >= 2_000),
        "{node0:?}"
    );
}

#[test]
fn the_watch_gap_backs_off_with_the_watch_age_within_its_bounds() {
    use super::watch_gap;
    use crate::config::HealthSettings;
    let exact = HealthSettings {
        probe_jitter: 0.0,
        ..HealthSettings::default()
    };
    let gap = |age_ms: u64, settings: &HealthSettings, draw: f64| {
        watch_gap(Duration::from_millis(age_ms), settings, draw).as_millis()
    };
    // 20 ms while young, then 5 % of the watch's age, capped at 1 s.
    let gaps: Vec<u128> = [0, 400, 1_000, 10_000, 20_000, 30_000]
        .map(|age| gap(age, &exact, 0.9))
        .to_vec();
    assert_eq!(gaps, [20, 20, 50, 500, 1_000, 1_000]);
    // Without backoff, every gap is the fast one.
    let fixed = HealthSettings {
        failover_backoff: 0.0,
        ..exact.clone()
    };
    assert_eq!(gap(30_000, &fixed, 0.9), 20);
    // Jitter only shortens: up to 20 % by default.
    let jittered = HealthSettings::default();
    assert_eq!(gap(10_000, &jittered, 0.0), 500);
    assert_eq!(gap(10_000, &jittered, 0.5), 450);
    assert!((16..=20).contains(&gap(0, &jittered, 0.99)));
    // A fast gap longer than the interval wins (nothing is probed faster
    // than asked, nor slower than the fast gap).
    let slow = HealthSettings {
        interval: Duration::from_millis(10),
        ..exact
    };
    assert_eq!(gap(30_000, &slow, 0.0), 20);
}

/// A fleet's pods wait out a long failover (an orchestrator that promotes
/// after its TTL) without probing every node every 20 ms throughout: the
/// watch backs off, and a late promotion is still seen within the watch's
/// gap at that age (5 % of it).
#[tokio::test(start_paused = true)]
async fn a_long_failover_watch_backs_off_and_a_late_promotion_is_seen_within_its_share() {
    let h = Harness::start(config(3), &[PRIMARY, REPLICA, REPLICA]).await;
    h.at(500).await;
    h.world.set(0, Answer::Down);
    // The probe at 1 s finds the primary gone: the watch starts.
    h.at(1_000).await;
    tokio::task::yield_now().await;
    assert_eq!(h.hub.primary_index(), None);
    let count = |from: u64, to: u64| {
        h.probed_at(2)
            .into_iter()
            .filter(|&at| (from..to).contains(&at))
            .count()
    };
    h.at(1_400).await;
    let young = count(1_001, 1_400);
    assert!(young >= 18, "fast while young: {:?}", h.probed_at(2));
    // 10 s in: about 20 + 20 ln(10 s / 0.4 s) = 84 watched rounds, where
    // 20 ms rounds would have made 500.
    h.at(11_000).await;
    let watched = count(1_001, 11_000);
    assert!(
        (70..=100).contains(&watched),
        "{watched} rounds: {:?}",
        h.probed_at(2)
    );
    // The gap is now about 500 ms: a promotion is seen within it.
    h.world.set(
        1,
        Answer::Primary {
            timeline: 2,
            position: 200,
        },
    );
    h.at(11_530).await;
    tokio::task::yield_now().await;
    assert_eq!(h.hub.primary_index(), Some(1), "at {} ms", h.ms());
    // The watch is over: back to one probe a second.
    h.at(15_000).await;
    assert!(count(12_000, 15_000) <= 4, "{:?}", h.probed_at(2));
}

#[tokio::test(start_paused = true)]
async fn the_failover_watch_ends_after_its_limit_and_can_be_turned_off() {
    for (watch, fast) in [(Duration::from_secs(1), true), (Duration::ZERO, false)] {
        let mut config = config(2);
        config.health.interval = Duration::from_secs(5);
        config.health.failover_watch = watch;
        let h = Harness::start(config, &[PRIMARY, REPLICA]).await;
        h.world.set(0, Answer::Down);
        h.at(5_000).await;
        tokio::task::yield_now().await;
        assert_eq!(h.hub.primary_index(), None);
        h.at(7_000).await;
        let count = |from: u64, to: u64| {
            h.probed_at(1)
                .into_iter()
                .filter(|&at| (from..to).contains(&at))
                .count()
        };
        // Fast within the watch's first second, then back to every 5 s.
        assert_eq!(count(5_001, 6_000) > 20, fast, "{:?}", h.probed_at(1));
        assert!(count(6_100, 7_000) <= 1, "{:?}", h.probed_at(1));
    }
}

#[tokio::test(start_paused = true)]
async fn readiness_holds_through_a_failover_within_write_hold_and_follows_failing_calls() {
    use crate::observe::readiness::NotReady;
    let mut config = config(3);
    config.write_hold = Duration::from_secs(5);
    config.health.failover_watch = Duration::ZERO;
    let h = Harness::start(config.clone(), &[PRIMARY, REPLICA, REPLICA]).await;
    assert!(h.hub.readiness().ready);

    // The primary dies at 0.5 s (seen at the 1 s probe): ready while writes
    // would be held, not ready once the hold is over.
    h.at(500).await;
    h.world.set(0, Answer::Down);
    h.at(5_900).await;
    assert!(h.hub.readiness().ready, "{:?}", h.hub.readiness());
    h.at(6_100).await;
    let readiness = h.hub.readiness();
    assert!(
        matches!(readiness.reasons[..], [NotReady::NoPrimary { missing_for }]
            if missing_for == Duration::from_millis(5_100)),
        "{readiness:?}"
    );
    // A promotion makes it ready again at the next probe.
    h.world.set(
        1,
        Answer::Primary {
            timeline: 2,
            position: 200,
        },
    );
    h.at(7_000).await;
    tokio::task::yield_now().await;
    assert!(h.hub.readiness().ready, "{:?}", h.hub.readiness());

    // Reads failing as unavailable: not ready until they leave the window.
    for failed in [true, true, true, false, true] {
        h.hub.read_outcomes.record(failed);
    }
    let readiness = h.hub.readiness();
    assert!(
        matches!(readiness.reasons[..], [NotReady::ReadsFailing(counts)]
            if counts.calls == 5 && counts.failed == 4),
        "{readiness:?}"
    );
    h.at(17_000).await;
    assert!(h.hub.readiness().ready, "{:?}", h.hub.readiness());

    // A read-only region's instances need no primary.
    let mut reads_only = config;
    reads_only.readiness.require = crate::config::Requirement::Reads;
    let h = Harness::start(reads_only, &[PRIMARY, REPLICA, REPLICA]).await;
    h.world.set(0, Answer::Down);
    h.at(60_000).await;
    assert_eq!(h.hub.primary_index(), None);
    assert!(h.hub.readiness().ready, "{:?}", h.hub.readiness());
    // No node at all for a read (from the probe at 60 or 61 s): not
    // ready once the hold is over.
    h.world.set(1, Answer::Down);
    h.world.set(2, Answer::Down);
    h.at(64_900).await;
    assert!(h.hub.readiness().ready, "{:?}", h.hub.readiness());
    h.at(66_500).await;
    let readiness = h.hub.readiness();
    assert!(
        matches!(readiness.reasons[..], [NotReady::NoReadNode { missing_for }]
            if missing_for > Duration::from_secs(5)),
        "{readiness:?}"
    );
}
