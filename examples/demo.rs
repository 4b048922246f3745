//! The main demonstration: a local three-node cluster (one primary, two
//! streaming replicas, three regions), reads with each strategy, writes, a
//! replica stopped and recovered, and a failover to a promoted replica.
//!
//! ```text
//! cargo run --example demo
//! ```
//!
//! Needs the PostgreSQL server binaries (`apt-get install postgresql`); runs
//! the servers as the `postgres` user when started as root.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pgrouter::config::{ConfigError, HealthSettings};
use pgrouter::Config;
use pgrouter::DatabaseManager;
use pgrouter::Error;
use pgrouter::ReadStrategy;
use pgrouter_testkit::{Cluster, StopMode};

const REGIONS: [&str; 3] = ["us-east-1", "eu-west-1", "ap-south-1"];

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "pgrouter=info".into()),
        )
        .init();

    let started = Instant::now();
    println!("starting a local cluster: primary + 2 streaming replicas ...");
    let cluster = Cluster::start(2)?;
    println!("  up in {:.1?}", started.elapsed());
    let db = DatabaseManager::new(config(&cluster)?).await?;
    let names = node_names(&cluster);
    for node in db.status().nodes {
        println!(
            "  {:<6} {:<11} {:<8} port {}",
            node.name,
            node.region,
            node.role,
            names_port(&cluster, &node.name)
        );
    }

    println!("\nreads by strategy (service region eu-west-1), 60 reads each:");
    for strategy in ReadStrategy::ALL {
        let spread = read_spread(&db, strategy, &names, 60).await?;
        println!("  {:<19} {}", strategy.as_str(), show(&spread));
    }

    println!("\nwrites go to the primary:");
    db.execute(
        "CREATE TABLE orders (id bigserial PRIMARY KEY, item text NOT NULL)",
        &[],
    )
    .await?;
    let row = db
        .write()
        .query_one(
            "INSERT INTO orders (item) VALUES ($1) RETURNING id, inet_server_port()",
            &[&"book"],
        )
        .await?;
    println!(
        "  inserted order {} on port {}",
        row.get::<_, i64>(0),
        row.get::<_, i32>(1)
    );
    let duplicate = db
        .execute("INSERT INTO orders (id, item) VALUES (1, 'again')", &[])
        .await;
    if let Err(error) = &duplicate {
        println!("  duplicate key, not retried: {error}");
    }
    let total: i64 = db
        .transaction(|tx| {
            Box::pin(async move {
                tx.execute("INSERT INTO orders (item) VALUES ('pen'), ('ink')", &[])
                    .await?;
                Ok(tx
                    .query_one("SELECT count(*) FROM orders", &[])
                    .await?
                    .get(0))
            })
        })
        .await?;
    println!("  transaction committed; {total} orders");

    println!("\nstopping the local replica (node1) ...");
    let stopped = Instant::now();
    cluster.stop(1, StopMode::Immediate)?;
    let spread = read_spread(&db, ReadStrategy::RegionalPreferred, &names, 60).await?;
    let detected = wait_for(&db, "node1", false).await;
    println!(
        "  node1 marked unhealthy after {:.0?}",
        detected.map(|_| stopped.elapsed()).unwrap_or_default()
    );
    println!("  regional-preferred reads now: {}", show(&spread));

    println!("starting node1 again ...");
    cluster.start_node(1)?;
    let restarted = Instant::now();
    let recovered = wait_for(&db, "node1", true).await;
    println!(
        "  node1 healthy again after {:.0?}",
        recovered.map(|_| restarted.elapsed()).unwrap_or_default()
    );
    let spread = read_spread(&db, ReadStrategy::RegionalPreferred, &names, 60).await?;
    println!("  regional-preferred reads now: {}", show(&spread));

    println!("\nfailover: stopping the primary (node0) and promoting node1 ...");
    cluster.wait_for_replicas(Duration::from_secs(10))?;
    cluster.stop(0, StopMode::Immediate)?;
    let promoted = Instant::now();
    cluster.promote(1)?;
    let row = db
        .write()
        .query_one(
            "INSERT INTO orders (item) VALUES ('after failover') RETURNING inet_server_port()",
            &[],
        )
        .await?;
    let port: i32 = row.get(0);
    let landed = names.get(&port).map_or("?", String::as_str);
    println!(
        "  first write after promote landed on {landed} after {:.0?} (promote included)",
        promoted.elapsed()
    );

    // Let the monitor probe the stopped node once more before the summary.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let status = db.status();
    println!("\nsummary:");
    for node in &status.nodes {
        println!(
            "  {:<6} {:<8} timeline={} healthy={:<5} fenced={:<5} pool size={} probe age={:.0?}",
            node.name,
            node.role,
            node.timeline.map_or("?".to_owned(), |t| t.to_string()),
            node.healthy,
            node.fenced,
            node.pool.size,
            node.last_probe_age.unwrap_or_default()
        );
    }
    println!(
        "  write target={} ready={} total time {:.1?}",
        status.write_target.as_deref().unwrap_or("none"),
        status.can_write(),
        started.elapsed()
    );
    db.close().await;
    Ok(())
}

fn config(cluster: &Cluster) -> Result<Config, ConfigError> {
    let nodes = cluster.nodes();
    let mut health = HealthSettings::default();
    health.interval = Duration::from_millis(250);
    health.probe_timeout = Duration::from_millis(500);
    health.recovery_initial = Duration::from_millis(250);
    health.recovery_max = Duration::from_secs(2);
    Config::builder()
        .primary(nodes[0].name(), REGIONS[0], nodes[0].connection_string())
        .replica(nodes[1].name(), REGIONS[1], nodes[1].connection_string())
        .replica(nodes[2].name(), REGIONS[2], nodes[2].connection_string())
        .local_region("eu-west-1")
        .health(health)
        .deadline(Duration::from_secs(3))
        .build()
}

/// Which node answered `count` reads with this strategy.
async fn read_spread(
    db: &DatabaseManager,
    strategy: ReadStrategy,
    names: &BTreeMap<i32, String>,
    count: usize,
) -> Result<BTreeMap<String, usize>, Error> {
    let mut spread = BTreeMap::new();
    for _ in 0..count {
        let row = db
            .read()
            .strategy(strategy)
            .query_one("SELECT inet_server_port()", &[])
            .await?;
        let port: i32 = row.get(0);
        let name = names
            .get(&port)
            .cloned()
            .unwrap_or_else(|| port.to_string());
        *spread.entry(name).or_default() += 1;
    }
    Ok(spread)
}

fn node_names(cluster: &Cluster) -> BTreeMap<i32, String> {
    cluster
        .nodes()
        .iter()
        .map(|n| (i32::from(n.port()), n.name().to_owned()))
        .collect()
}

fn names_port(cluster: &Cluster, name: &str) -> u16 {
    cluster
        .nodes()
        .iter()
        .find(|n| n.name() == name)
        .map_or(0, |n| n.port())
}

fn show(spread: &BTreeMap<String, usize>) -> String {
    spread
        .iter()
        .map(|(name, n)| format!("{name}={n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

async fn wait_for(db: &DatabaseManager, node: &str, healthy: bool) -> Option<()> {
    for _ in 0..500 {
        if db.status().node(node).is_some_and(|n| n.healthy == healthy) {
            return Some(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}
