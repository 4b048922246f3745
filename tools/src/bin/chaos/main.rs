//! A chaos run: 64 clients write, read with a staleness bound, read their
//! own writes and move money in transactions, while a scheduler injects one
//! fault at a time in a seeded random order. At the end every promise is
//! checked against the database itself.
//!
//! ```text
//! cargo run --release -p pgrouter-tools --bin chaos -- --seconds 30 --seed 7
//! ```
//!
//! Exits non-zero on any violation. See RELIABILITY.md.

#[path = "../../common.rs"]
#[allow(dead_code)]
mod bench_common;
mod checks;
mod faults;
mod workload;

use std::sync::Arc;
use std::time::Duration;

use pgrouter::DatabaseManager;

use pgrouter::ReadStrategy;
use pgrouter_testkit::{Cluster, FaultProxy};

use bench_common::{node_configs, LOCAL_REGION};

/// The run's settings, from the command line.
#[derive(Debug, Clone, Copy)]
struct Args {
    seconds: u64,
    seed: u64,
}

fn args() -> Result<Args, String> {
    let mut args = Args {
        seconds: 30,
        seed: 1,
    };
    let mut words = std::env::args().skip(1);
    while let Some(word) = words.next() {
        let mut value = || {
            words
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or(format!("{word} takes a whole number"))
        };
        match word.as_str() {
            "--seconds" => args.seconds = value()?,
            "--seed" => args.seed = value()?,
            other => return Err(format!("unknown argument {other:?} (--seconds N --seed S)")),
        }
    }
    Ok(args)
}

fn main() -> std::process::ExitCode {
    let args = match args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return std::process::ExitCode::from(2);
        }
    };
    let cluster = Cluster::start(2).expect("a local cluster (primary + 2 replicas)");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    let violations = runtime.block_on(run(args, Arc::new(cluster)));
    if violations == 0 {
        println!("chaos: 0 violations");
        std::process::ExitCode::SUCCESS
    } else {
        println!("chaos: {violations} VIOLATIONS");
        std::process::ExitCode::FAILURE
    }
}

async fn run(args: Args, cluster: Arc<Cluster>) -> usize {
    let mut proxies = Vec::new();
    for node in cluster.nodes() {
        proxies.push(FaultProxy::start(node.addr()).await.expect("a fault proxy"));
    }
    let ports: Vec<u16> = proxies.iter().map(FaultProxy::port).collect();
    let mut config = pgrouter::Config::new(node_configs(&cluster, &ports));
    config.local_region = LOCAL_REGION.to_owned();
    config.read_strategy = ReadStrategy::GlobalRandom;
    config.deadline = workload::DEADLINE;
    config.health.interval = Duration::from_millis(250);
    config.health.probe_timeout = Duration::from_millis(500);
    config.health.recovery_initial = Duration::from_millis(250);
    config.health.recovery_max = Duration::from_secs(1);
    config.pool.max_size = 16;
    let db = DatabaseManager::new(config).await.expect("a manager");
    workload::setup(&db).await;
    let _ = tokio::task::spawn_blocking({
        let cluster = Arc::clone(&cluster);
        move || cluster.wait_for_replicas(Duration::from_secs(10))
    })
    .await;

    let run_for = Duration::from_secs(args.seconds);
    let record = Arc::new(workload::Record::default());
    let clients = workload::start(&db, &record, run_for, args.seed);
    let schedule = faults::run(Arc::clone(&cluster), &proxies, run_for, args.seed).await;
    for client in clients {
        let _ = client.await;
    }
    faults::heal(&cluster).await;
    println!("faults injected: {}", schedule.join(", "));
    let violations = checks::run(&db, &cluster, &record).await;
    db.close().await;
    violations
}
