//! Client cost of one routed `SELECT 1` read over three nodes, per read
//! strategy, counted in instructions and allocations, beside bare
//! deadpool-postgres making the same choice of server by hand: one pool on
//! node1 (what regional-preferred reads use), or one pool per node with a
//! pool drawn at random per read (what global-random and nearest do on
//! loopback, where every node is within nearest's window). One more row
//! reads regional-preferred with hedged reads on: what the hedge watch (its
//! timer, the delay's inputs) costs a read that is answered in time.
//!
//! ```text
//! cargo bench --bench spread_instructions
//! ```
//!
//! The method is `benches/instructions.rs`'s (which see): a local cluster
//! (here a primary and two replicas), each client a worker under callgrind
//! at two query counts, the per-read cost their difference divided by the
//! difference in reads. Every pool has one connection per node; pgrouter
//! runs with its defaults but for the regions (node1 local) and a 10 minute
//! probe interval. It answers whether a spreading strategy costs the client
//! more than the strategy that reads one node, and more than the bare pools
//! it is compared with in `bench_throughput`. `BENCH_QUERIES=A,B` overrides
//! the two query counts. Requires `valgrind` on `PATH`; without it the
//! allocation rows are still printed.

// The shared harness's global allocator is an `unsafe` trait; each call
// forwards to `System`.
#![allow(unsafe_code)]

#[path = "support/callgrind.rs"]
mod callgrind;

use std::time::Duration;

use pgrouter::deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use pgrouter::tokio_postgres::NoTls;
use pgrouter::Config;
use pgrouter::DatabaseManager;
use pgrouter_testkit::Cluster;

use callgrind::{breakdown, client_cost, dispatch, measure, queries, valgrind_available};

/// The clients compared, in `ALL`'s order (their discriminants index it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    Deadpool,
    DeadpoolSpread,
    Regional,
    Global,
    Nearest,
    RegionalHedging,
}

impl Client {
    const ALL: [Client; 6] = [
        Client::Deadpool,
        Client::DeadpoolSpread,
        Client::Regional,
        Client::Global,
        Client::Nearest,
        Client::RegionalHedging,
    ];

    fn arg(self) -> &'static str {
        match self {
            Client::Deadpool => "deadpool",
            Client::DeadpoolSpread => "deadpool-spread",
            Client::Regional => "regional-preferred",
            Client::Global => "global-random",
            Client::Nearest => "nearest",
            Client::RegionalHedging => "regional-preferred-hedging",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Client::Deadpool => "bare deadpool, node1",
            Client::DeadpoolSpread => "bare deadpool, random of 3",
            Client::Regional => "pgrouter regional-preferred",
            Client::Global => "pgrouter global-random",
            Client::Nearest => "pgrouter nearest",
            Client::RegionalHedging => "pgrouter regional, hedging on",
        }
    }

    /// The bare client that makes this strategy's choice by hand.
    fn baseline(self) -> Option<Client> {
        match self {
            Client::Deadpool | Client::DeadpoolSpread => None,
            Client::Regional | Client::RegionalHedging => Some(Client::Deadpool),
            Client::Global | Client::Nearest => Some(Client::DeadpoolSpread),
        }
    }

    fn parse(arg: &str) -> Option<Client> {
        Client::ALL.into_iter().find(|client| client.arg() == arg)
    }
}

fn main() {
    dispatch(Client::parse, worker, driver);
}

/// Starts the cluster, runs the workers, prints the table.
fn driver() {
    let (small, large) = queries();
    let cluster = Cluster::start(2).expect("a three-node local cluster");
    let url = cluster
        .nodes()
        .iter()
        .map(|node| node.connection_string())
        .collect::<Vec<_>>()
        .join("|");
    let exe = std::env::current_exe().expect("the bench binary's path");
    let valgrind = valgrind_available();
    if !valgrind {
        println!("valgrind not found on PATH: instruction counts skipped");
    }
    println!(
        "SELECT 1 reads over a primary and two local replicas (difference of runs of {large} and {small} reads)\n"
    );
    println!(
        "{:<28} {:>18} {:>18}",
        "client", "instructions/read", "allocations/read"
    );
    let reads = (large - small) as f64;
    let mut results = Vec::new();
    for client in Client::ALL {
        let (profiles, allocations) = client_cost(&exe, (small, large), valgrind, |queries| {
            worker_args(client, queries, &url)
        });
        println!(
            "{:<28} {:>18} {:>18.2}",
            client.label(),
            profiles
                .as_ref()
                .map_or("-".to_owned(), |(count, _)| format!("{count:.0}")),
            allocations
        );
        results.push((profiles, allocations));
    }
    println!();
    for (client, (profile, allocations)) in Client::ALL.into_iter().zip(&results) {
        let Some(baseline) = client.baseline() else {
            continue;
        };
        let (bare_profile, bare_allocations) = &results[baseline as usize];
        let (Some((routed, _)), Some((bare, _))) = (profile, bare_profile) else {
            continue;
        };
        println!(
            "{}: {:+.0} instructions a read against {} ({:.3}×), {:+.2} allocations a read",
            client.label(),
            routed - bare,
            baseline.label(),
            routed / bare,
            allocations - bare_allocations,
        );
    }
    let spread = Client::DeadpoolSpread as usize;
    let global = Client::Global as usize;
    if let (Some((_, bare_functions)), Some((_, routed_functions))) =
        (&results[spread].0, &results[global].0)
    {
        println!("\npgrouter global-random against bare deadpool, random of 3:");
        breakdown(bare_functions, routed_functions, reads);
    }
    drop(cluster);
}

fn worker_args(client: Client, queries: u64, url: &str) -> Vec<String> {
    vec![
        "--worker".to_owned(),
        client.arg().to_owned(),
        queries.to_string(),
        url.to_owned(),
    ]
}

/// One run: connect, warm up, then `queries` reads counted by the
/// allocator. Prints `allocations=N`.
fn worker(client: Client, queries: u64, url: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
    let allocations = runtime.block_on(async {
        match client {
            Client::Deadpool | Client::DeadpoolSpread => {
                let urls: Vec<&str> = url.split('|').collect();
                let pools: Vec<Pool> = match client {
                    Client::Deadpool => vec![bare_pool(urls[1])],
                    _ => urls.iter().map(|url| bare_pool(url)).collect(),
                };
                let rng = std::cell::RefCell::new(fastrand::Rng::with_seed(1));
                let read = || async {
                    let index = rng.borrow_mut().usize(..pools.len());
                    let client = pools[index].get().await.expect("a connection");
                    let statement = client.prepare_cached("SELECT 1").await.expect("prepared");
                    let row = client.query_one(&statement, &[]).await.expect("a row");
                    assert_eq!(row.get::<_, i32>(0), 1);
                };
                measure(queries, read).await
            }
            strategy => {
                let hedging = strategy == Client::RegionalHedging;
                let strategy = match strategy {
                    Client::Regional | Client::RegionalHedging => {
                        pgrouter::ReadStrategy::RegionalPreferred
                    }
                    Client::Global => pgrouter::ReadStrategy::GlobalRandom,
                    _ => pgrouter::ReadStrategy::Nearest,
                };
                let db = router(url, hedging).await;
                let read = || async {
                    let row = db
                        .read()
                        .strategy(strategy)
                        .query_one("SELECT 1", &[])
                        .await
                        .expect("a row");
                    assert_eq!(row.get::<_, i32>(0), 1);
                };
                let allocations = measure(queries, read).await;
                db.close().await;
                allocations
            }
        }
    });
    println!("allocations={allocations}");
}

fn bare_pool(url: &str) -> Pool {
    let config: tokio_postgres::Config = url.parse().expect("a connection string");
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(1)
        .runtime(Runtime::Tokio1)
        .build()
        .expect("a pool with a runtime")
}

/// pgrouter over the three nodes (node1 local), its defaults but for the
/// pools, the probe interval and, with `hedging`, hedged reads on.
async fn router(url: &str, hedging: bool) -> DatabaseManager {
    let urls: Vec<&str> = url.split('|').collect();
    let mut config = Config::builder()
        .primary("node0", "us-east-1", urls[0])
        .replica("node1", "eu-west-1", urls[1])
        .replica("node2", "ap-south-1", urls[2])
        .local_region("eu-west-1")
        .build()
        .expect("a valid configuration");
    config.pool.max_size = 1;
    config.health.interval = Duration::from_secs(600);
    config.hedging.enabled = hedging;
    DatabaseManager::new(config)
        .await
        .expect("the router starts")
}
