//! Topology discovery, applied by the monitor: after each round, the
//! instances the write target's `aurora_replica_status()` lists are planned
//! against the discovery slots (the pure rules of `topology/discovery.rs`), and
//! the changes applied: a node built, published and probed; or published
//! vacant (out of routing) and its pool dropped.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{Judge, Monitor};
use crate::config::{NodeConfig, Role};
use crate::connect::node::Node;
use crate::health::probe::Probe;
use crate::health::tracker::Tracker;
use crate::hub::Hub;
use crate::observe::events::{self, Event};
use crate::topology::discovery::{plan, touch, Change, Discovered, HostPattern, Removal};
use crate::topology::NodeState;

/// Makes the probe of a discovered node (its index, the node).
pub(crate) type ProbeFactory<P> = Box<dyn Fn(usize, &Node) -> P + Send>;

/// The discovery slots and what filling one takes.
pub(super) struct Discovery<P> {
    pattern: HostPattern,
    grace: Duration,
    /// The primary's configuration: a discovered node connects as it does,
    /// to another host.
    seed: NodeConfig,
    /// Discovered nodes' region.
    region: String,
    /// Slot `i` is node `configured + i`.
    slots: Vec<Option<Discovered>>,
    /// The instance each configured node last said it is (kept while it
    /// does not answer, so a configured node that is down is not
    /// discovered as a second node for the same server).
    identities: Vec<Option<String>>,
    make_probe: ProbeFactory<P>,
    /// Instances warned about (no room, no DNS label, no pool), once each.
    warned: HashSet<String>,
}

impl<P> std::fmt::Debug for Discovery<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("pattern", &self.pattern)
            .field("slots", &self.slots)
            .finish_non_exhaustive()
    }
}

impl<P> Discovery<P> {
    /// Discovery as `hub`'s configuration asks, if it does.
    pub(super) fn configured(hub: &Hub, make_probe: ProbeFactory<P>) -> Option<Self> {
        let settings = hub.config.discovery.as_ref()?;
        let field = "discovery.instance_host_pattern";
        // Validated with the configuration: it parses.
        let pattern = HostPattern::parse(field, &settings.instance_host_pattern).ok()?;
        let seed = hub.config.nodes.iter().find(|n| n.role == Role::Primary)?;
        Some(Self {
            pattern,
            grace: settings.removal_grace,
            region: settings
                .region
                .clone()
                .unwrap_or_else(|| seed.region.clone()),
            seed: seed.clone(),
            slots: vec![None; settings.max_nodes],
            identities: vec![None; hub.configured()],
            make_probe,
            warned: HashSet::new(),
        })
    }

    /// Whether `instance` can be followed (its identifier makes a host);
    /// warns once when not.
    fn followable(&mut self, instance: &str) -> bool {
        let ok = self.pattern.expand(instance).is_some();
        if !ok && self.warned.insert(instance.to_owned()) {
            tracing::warn!(
                instance,
                "instance identifier is not a DNS label; not discovered"
            );
        }
        ok
    }
}

impl<P: Probe> Monitor<P> {
    /// Discovers nodes as the configuration asks (if it does), probing
    /// each with a probe from `make_probe`.
    pub(crate) fn discovering(mut self, make_probe: ProbeFactory<P>) -> Self {
        self.discovery = Discovery::configured(&self.hub, make_probe);
        self
    }

    /// Plans the discovery slots against the write target's last Aurora
    /// view and applies the changes. Nothing changes while no write target
    /// answered its last probe with one: an instance is never removed for
    /// want of asking.
    pub(super) fn discover(&mut self) {
        let configured = self.hub.configured();
        let Some(discovery) = self.discovery.as_mut() else {
            return;
        };
        let answered = self.judge.aurora[..configured].iter();
        for (identity, view) in discovery.identities.iter_mut().zip(answered) {
            if let Some(view) = view {
                *identity = Some(view.instance.to_string());
            }
        }
        let primary = self.hub.snapshot().primary;
        let Some(view) = primary.and_then(|index| self.judge.aurora[index].clone()) else {
            return;
        };
        let claimed: Vec<String> = discovery.identities.iter().flatten().cloned().collect();
        let seen: Vec<String> = view
            .listed
            .iter()
            .filter(|instance| discovery.followable(instance))
            .cloned()
            .collect();
        let now = Instant::now();
        touch(&mut discovery.slots, &seen, now);
        for change in plan(&seen, &claimed, &discovery.slots, now, discovery.grace) {
            match change {
                Change::Add { slot, instance } => self.add(slot, instance, now),
                Change::Remove { slot, why } => self.remove(slot, why),
                Change::NoRoom { instance } => {
                    if discovery_of(&mut self.discovery)
                        .warned
                        .insert(instance.clone())
                    {
                        tracing::warn!(
                            instance,
                            "every discovery slot is taken (discovery.max_nodes); \
                             instance not added"
                        );
                    }
                }
            }
        }
    }

    /// Builds `instance`'s node into `slot`, publishes it (out of routing
    /// until its first probe answers) and schedules its probe.
    fn add(&mut self, slot: usize, instance: String, now: Instant) {
        let hub = Arc::clone(&self.hub);
        let index = hub.configured() + slot;
        let discovery = discovery_of(&mut self.discovery);
        let Some(host) = discovery.pattern.expand(&instance) else {
            return;
        };
        let config = NodeConfig {
            name: instance.clone(),
            region: discovery.region.clone(),
            url: discovery.seed.url.clone(),
            role: Role::Replica,
            statement_mode: Some(hub.config.statement_mode_of(&discovery.seed)),
            pool_size: discovery.seed.pool_size,
        };
        let built = Node::build_at(
            &config,
            Some(&host),
            &hub.config.pool,
            &hub.config.local_region,
            &hub.config.nearest.preferred_regions,
            &hub.config.tls,
            hub.config.password_provider.as_ref(),
        );
        let node = match built {
            Ok(node) => Arc::new(node),
            Err(error) => {
                if discovery.warned.insert(instance.clone()) {
                    tracing::warn!(instance, %error, "discovered instance has no pool; not added");
                }
                return;
            }
        };
        discovery.warned.remove(&instance);
        discovery.slots[slot] = Some(Discovered {
            instance: instance.clone(),
            last_seen: now,
        });
        self.probes[index] = Some((discovery.make_probe)(index, &node));
        self.generations[index] += 1;
        self.judge.trackers[index] = Tracker::new(now);
        self.judge.aurora[index] = None;
        hub.fill(index, Arc::clone(&node));
        tracing::info!(node = %instance, %host, region = %config.region, "discovered node added");
        let state = NodeState {
            up: false,
            ..node.initial_state()
        };
        let event = Event::NodeAdded {
            node: instance,
            host,
        };
        self.judge.replace(&hub, index, state, event);
    }

    /// Publishes `slot` vacant, then empties it: its probe stops and its
    /// pool is dropped once the calls still using it end.
    fn remove(&mut self, slot: usize, why: Removal) {
        let hub = Arc::clone(&self.hub);
        let index = hub.configured() + slot;
        let Some(entry) = discovery_of(&mut self.discovery).slots[slot].take() else {
            return;
        };
        self.probes[index] = None;
        self.generations[index] += 1;
        self.judge.aurora[index] = None;
        let reason = match why {
            Removal::Vanished => "no longer listed by aurora_replica_status()",
            Removal::Configured => "a configured node is this instance",
        };
        tracing::info!(node = %entry.instance, reason, "discovered node removed");
        let event = Event::NodeRemoved {
            node: entry.instance,
        };
        self.judge.replace(&hub, index, NodeState::vacant(), event);
        hub.vacate(index);
    }
}

/// The discovery state, present whenever a change is being applied.
fn discovery_of<P>(discovery: &mut Option<Discovery<P>>) -> &mut Discovery<P> {
    match discovery {
        Some(discovery) => discovery,
        None => unreachable!("changes are planned only with discovery configured"),
    }
}

impl Judge {
    /// Publishes node `index` as `state` (filled or emptied), judged with
    /// every other node, `event` first among the events.
    fn replace(&mut self, hub: &Hub, index: usize, state: NodeState, event: Event) {
        let now = Instant::now();
        let previous = hub.snapshot();
        let mut next = (**previous).clone();
        next.nodes[index] = state;
        self.assessor.assess(&mut next, &[], now, now);
        let mut events = vec![event];
        events.extend(events::diff(
            &previous,
            &next,
            |index| hub.context(index).node.to_string(),
            hub.config.max_staleness,
        ));
        drop(previous);
        hub.publish(next, events, None);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::broadcast;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::config::DiscoverySettings;
    use crate::health::fake::{config, Answer, World};
    use crate::observe::status::Status;

    const PRIMARY: Answer = Answer::Primary {
        timeline: 1,
        position: 100,
    };
    const REPLICA: Answer = Answer::Replica {
        timeline: 1,
        replayed: 100,
    };

    /// The writer configured (node0, instance `w`), two discovery slots
    /// (world nodes 1 and 2), a 5 s grace; probes every 1 s.
    async fn start(world: &World) -> (Arc<Hub>, broadcast::Receiver<Event>, CancellationToken) {
        let mut config = config(1);
        let mut discovery = DiscoverySettings::new("?.cluster-x.example");
        discovery.max_nodes = 2;
        discovery.removal_grace = Duration::from_secs(5);
        config.discovery = Some(discovery);
        let hub = Arc::new(Hub::new(config).expect("a valid test configuration"));
        let events = hub.subscribe();
        let factory = world.clone();
        let mut monitor = Monitor::new(Arc::clone(&hub), vec![world.prober(0)])
            .discovering(Box::new(move |index, _| factory.prober(index)));
        monitor.first_round().await;
        let shutdown = CancellationToken::new();
        tokio::spawn(monitor.run(shutdown.clone()));
        (hub, events, shutdown)
    }

    fn discovered(hub: &Hub) -> Vec<(String, bool)> {
        let status = Status::capture(hub);
        let nodes = status.nodes.into_iter().filter(|node| node.discovered);
        nodes.map(|node| (node.name, node.healthy)).collect()
    }

    fn added_and_removed(events: &mut broadcast::Receiver<Event>) -> Vec<String> {
        std::iter::from_fn(|| events.try_recv().ok())
            .filter_map(|event| match event {
                Event::NodeAdded { node, host } => Some(format!("+{node}@{host}")),
                Event::NodeRemoved { node } => Some(format!("-{node}")),
                _ => None,
            })
            .collect()
    }

    async fn at(start: Instant, ms: u64) {
        tokio::time::sleep_until(start + Duration::from_millis(ms)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_listed_reader_is_added_then_removed_after_the_grace() {
        let start = Instant::now();
        let world = World::new(&[PRIMARY, REPLICA, REPLICA]);
        world.aurora(0, "w", &["w", "r1"]);
        world.aurora(1, "r1", &["w", "r1"]);
        let (hub, mut events, _shutdown) = start_guarded(&world).await;
        // Added after the first round; routed once its own probe answers.
        at(start, 10).await;
        assert_eq!(discovered(&hub), [("r1".to_owned(), true)]);
        assert_eq!(added_and_removed(&mut events), ["+r1@r1.cluster-x.example"]);
        assert!(!world.probes(1).is_empty());
        let snapshot = hub.snapshot();
        assert!(snapshot.is_routable(1) && !snapshot.is_routable(2));
        drop(snapshot);

        // Last listed by the writer's probe at 1 s: still there within the
        // grace...
        at(start, 1_500).await;
        world.aurora(0, "w", &["w"]);
        at(start, 5_500).await;
        assert_eq!(discovered(&hub), [("r1".to_owned(), true)]);
        // ...and gone after the round at 6 s, its probes stopped.
        at(start, 6_500).await;
        assert_eq!(discovered(&hub), []);
        assert_eq!(added_and_removed(&mut events), ["-r1"]);
        assert!(!hub.snapshot().is_routable(1));
        let probes = world.probes(1).len();
        at(start, 10_000).await;
        assert_eq!(world.probes(1).len(), probes);
        assert!(hub.node(1).is_none());

        // Listed again: back, in the lowest free slot, with a new node.
        world.aurora(0, "w", &["w", "r1"]);
        at(start, 11_500).await;
        assert_eq!(discovered(&hub), [("r1".to_owned(), true)]);
        assert_eq!(added_and_removed(&mut events), ["+r1@r1.cluster-x.example"]);
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_removed_while_the_writer_cannot_be_asked() {
        let start = Instant::now();
        let world = World::new(&[PRIMARY, REPLICA, REPLICA]);
        world.aurora(0, "w", &["w", "r1", "r2"]);
        let (hub, mut events, _shutdown) = start_guarded(&world).await;
        at(start, 10).await;
        assert_eq!(discovered(&hub).len(), 2);
        world.set(0, Answer::Down);
        at(start, 60_000).await;
        assert_eq!(discovered(&hub).len(), 2, "removed without asking");
        assert_eq!(
            added_and_removed(&mut events),
            ["+r1@r1.cluster-x.example", "+r2@r2.cluster-x.example"]
        );
        // A configured node that turns out to be a discovered instance
        // takes its place at once.
        world.set(0, PRIMARY);
        world.aurora(0, "r2", &["w", "r1", "r2"]);
        at(start, 100_000).await;
        // (The old writer `w`, listed and no longer claimed, fills the slot
        // a round later.)
        let names: Vec<String> = discovered(&hub).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["r1", "w"]);
        assert_eq!(
            added_and_removed(&mut events),
            ["-r2", "+w@w.cluster-x.example"]
        );
    }

    /// `start`, the monitor stopped when the guard drops.
    async fn start_guarded(world: &World) -> (Arc<Hub>, broadcast::Receiver<Event>, impl Drop) {
        let (hub, events, shutdown) = start(world).await;
        (hub, events, shutdown.drop_guard())
    }
}
