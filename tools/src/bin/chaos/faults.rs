//! One fault at a time, in a seeded random order: a replica stopped and
//! started, a black hole, latency, refused and reset connections, paused
//! replay, and the primary stopped (`-m fast`) and a replica promoted (at
//! least once, as the first fault of the run's second half). After a
//! promotion the old primary and the other replica are re-cloned as
//! replicas of the new primary (`Cluster::rejoin`), so promotions can
//! follow one another.

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
    promotions: usize,
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
        following: (1..proxies.len()).collect(),
        promotions: 0,
    };
    let mut done = Vec::new();
    tokio::time::sleep(CALM).await;
    while Instant::now() + FAULT < until {
        let node = rng.usize(..proxies.len());
        let replica = topology
            .following
            .get(rng.usize(..topology.following.len().max(1)))
            .copied();
        let second_half = start.elapsed() >= run_for / 2;
        let pick = if second_half && topology.promotions == 0 {
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
            (1, Some(replica)) => {
                let old = topology.primary;
                blocking(&cluster, move |c| c.stop(old, StopMode::Fast))
                    .await
                    .ok();
                blocking(&cluster, move |c| c.promote(replica)).await.ok();
                tokio::time::sleep(FAULT).await;
                // Everyone else follows the new primary again.
                let others: Vec<usize> = (0..proxies.len()).filter(|&n| n != replica).collect();
                for &other in &others {
                    blocking(&cluster, move |c| c.rejoin(other, replica))
                        .await
                        .expect("rejoin the new primary");
                }
                topology.primary = replica;
                topology.following = others;
                topology.promotions += 1;
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
