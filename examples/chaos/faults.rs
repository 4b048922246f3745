//! One fault at a time, in a seeded random order: a replica stopped and
//! started, a black hole, latency, refused and reset connections, paused
//! replay; and, once, as the first fault of the run's second half, the
//! primary stopped and a replica promoted (once: the test kit cannot
//! repoint the other replica, which is left an orphan, so the faults after
//! it fall on the new primary and the orphan).

use std::sync::Arc;
use std::time::Duration;

use pgrouter_testkit::{Cluster, Fault, FaultProxy, StopMode};
use tokio::time::Instant;

/// How long a fault lasts, and the calm after it.
const FAULT: Duration = Duration::from_secs(2);
const CALM: Duration = Duration::from_secs(1);

/// Runs blocking cluster work off the async workers.
async fn blocking<T: Send + 'static>(
    cluster: &Arc<Cluster>,
    work: impl FnOnce(&Cluster) -> T + Send + 'static,
) -> T {
    let cluster = Arc::clone(cluster);
    tokio::task::spawn_blocking(move || work(&cluster))
        .await
        .expect("a cluster operation")
}

/// The topology as the scheduler changed it.
struct Topology {
    primary: usize,
    /// Replicas that follow the primary.
    following: Vec<usize>,
    promoted: bool,
}

/// Injects faults until `run_for` has passed; returns their names in order.
pub(crate) async fn run(
    cluster: Arc<Cluster>,
    proxies: &[FaultProxy],
    run_for: Duration,
    seed: u64,
) -> Vec<String> {
    let start = Instant::now();
    let until = start + run_for;
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut topology = Topology {
        primary: 0,
        following: vec![1, 2],
        promoted: false,
    };
    let orphan_or_primary = |topology: &Topology, any: usize| {
        if topology.primary == any || topology.following.contains(&any) || topology.promoted {
            any
        } else {
            topology.primary
        }
    };
    let mut done = Vec::new();
    tokio::time::sleep(CALM).await;
    while Instant::now() + FAULT < until {
        let node = orphan_or_primary(&topology, rng.usize(..proxies.len()));
        let replica = topology
            .following
            .get(rng.usize(..topology.following.len().max(1)))
            .copied();
        let second_half = start.elapsed() >= run_for / 2;
        let pick = if second_half && !topology.promoted {
            1
        } else {
            rng.u8(..7)
        };
        let name = match (pick, replica) {
            (0, Some(replica)) => {
                blocking(&cluster, move |c| c.stop(replica, StopMode::Immediate))
                    .await
                    .ok();
                tokio::time::sleep(FAULT).await;
                blocking(&cluster, move |c| c.start_node(replica))
                    .await
                    .ok();
                format!("stop+start node{replica}")
            }
            (1, Some(replica)) if second_half && !topology.promoted => {
                let old = topology.primary;
                blocking(&cluster, move |c| c.stop(old, StopMode::Fast))
                    .await
                    .ok();
                blocking(&cluster, move |c| c.promote(replica)).await.ok();
                topology.primary = replica;
                topology.following.clear();
                topology.promoted = true;
                tokio::time::sleep(FAULT).await;
                format!("stop node{old}, promote node{replica}")
            }
            (2, _) => hold(&proxies[node], Fault::BlackHole, node, "black hole").await,
            (3, _) => {
                let latency = Fault::Latency(Duration::from_millis(100));
                hold(&proxies[node], latency, node, "latency 100ms").await
            }
            (4, _) => hold(&proxies[node], Fault::Refuse, node, "refuse").await,
            (5, _) => {
                proxies[node].set(Fault::Reset);
                tokio::time::sleep(Duration::from_millis(300)).await;
                proxies[node].set(Fault::Pass);
                format!("reset node{node}")
            }
            (_, Some(replica)) => {
                blocking(&cluster, move |c| c.pause_replay(replica))
                    .await
                    .ok();
                tokio::time::sleep(FAULT).await;
                blocking(&cluster, move |c| c.resume_replay(replica))
                    .await
                    .ok();
                format!("pause replay node{replica}")
            }
            (_, None) => hold(&proxies[node], Fault::BlackHole, node, "black hole").await,
        };
        println!("fault: {name}");
        done.push(name);
        tokio::time::sleep(CALM).await;
    }
    done
}

/// `fault` on one node's proxy for [`FAULT`], then pass again.
async fn hold(proxy: &FaultProxy, fault: Fault, node: usize, name: &str) -> String {
    proxy.set(fault);
    tokio::time::sleep(FAULT).await;
    proxy.set(Fault::Pass);
    format!("{name} node{node}")
}

/// Every replica replays again at the end (a fault may have paused one).
pub(crate) async fn heal(cluster: &Arc<Cluster>) {
    for index in 1..cluster.nodes().len() {
        blocking(cluster, move |c| c.resume_replay(index))
            .await
            .ok();
    }
}
