//! What resolving lost `COMMIT`s costs, side by side in one run against one
//! local primary: a plain write, the same write with `exactly_once()`, and
//! a one-statement transaction with resolution off, on (the default), and
//! on with the marker table; at 1 and 16 concurrent tasks.
//!
//! ```text
//! cargo run --release -p pgrouter-tools --bin bench_outcomes
//! ```
//!
//! Each round runs every row once (rows rotated per round) after a warm-up
//! round; the table shows medians over rounds and each row's ratio to the
//! plain write at the same concurrency. `BENCH_CALLS` and `BENCH_ROUNDS`
//! override the calls per row and round (at 16 tasks; 1 task runs a
//! quarter) and the number of rounds.

// Shared with bench_throughput, which uses all of it.
#[allow(dead_code)]
#[path = "../../common.rs"]
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{median, millis, node_configs, Latencies, LOCAL_REGION};
use pgrouter::config::OutcomeSettings;
use pgrouter::Config;
use pgrouter::DatabaseManager;
use pgrouter::Error;
use pgrouter_testkit::Cluster;

const ACCOUNTS: i32 = 10_000;
const MARKERS: &str = "pgrouter_outcomes";
const UPDATE: &str = "UPDATE accounts SET abalance = abalance + 1 WHERE aid = $1";

/// How a row writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Plain,
    ExactlyOnce,
    Transaction,
}

struct Row {
    label: &'static str,
    kind: Kind,
    db: DatabaseManager,
    /// Per round: calls per second, p50, p99.
    rounds: Vec<(f64, Duration, Duration)>,
    errors: usize,
}

async fn call(kind: Kind, db: &DatabaseManager, aid: i32) -> Result<u64, Error> {
    match kind {
        Kind::Plain => db.write().execute(UPDATE, &[&aid]).await,
        Kind::ExactlyOnce => db.write().exactly_once().execute(UPDATE, &[&aid]).await,
        Kind::Transaction => {
            db.write()
                .transaction(|tx| {
                    Box::pin(async move {
                        let update = tx.prepare_cached(UPDATE).await?;
                        tx.execute(&update, &[&aid]).await
                    })
                })
                .await
        }
    }
}

/// Runs `calls` calls over `tasks` tasks; returns calls per second, the
/// latencies and the error count.
async fn run(
    kind: Kind,
    db: &DatabaseManager,
    tasks: usize,
    calls: usize,
) -> (f64, Latencies, usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (db, next) = (db.clone(), Arc::clone(&next));
        handles.push(tokio::spawn(async move {
            let mut latencies = Latencies::default();
            let mut errors = 0;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= calls {
                    return (latencies, errors);
                }
                let aid = i32::try_from(n % ACCOUNTS as usize).unwrap_or(0) + 1;
                let begun = Instant::now();
                match call(kind, &db, aid).await {
                    Ok(_) => latencies.record(begun.elapsed()),
                    Err(error) => {
                        if errors == 0 {
                            eprintln!("{kind:?}: {error}");
                        }
                        errors += 1;
                    }
                }
            }
        }));
    }
    let mut all = Latencies::default();
    let mut errors = 0;
    for handle in handles {
        let (latencies, failed) = handle.await.expect("bench task");
        all.merge(&latencies);
        errors += failed;
    }
    let rate = calls as f64 / started.elapsed().as_secs_f64();
    (rate, all, errors)
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

async fn manager(cluster: &Cluster, outcomes: OutcomeSettings) -> DatabaseManager {
    let ports: Vec<u16> = cluster.nodes().iter().map(|node| node.port()).collect();
    let mut config = Config::new(node_configs(cluster, &ports));
    config.local_region = LOCAL_REGION.to_owned();
    config.pool.max_size = 16;
    config.outcomes = outcomes;
    DatabaseManager::new(config).await.expect("manager")
}

#[tokio::main]
async fn main() {
    let calls = env_or("BENCH_CALLS", 8_000);
    let rounds = env_or("BENCH_ROUNDS", 5);
    let cluster = tokio::task::spawn_blocking(|| Cluster::start(0))
        .await
        .expect("start")
        .expect("a local primary");
    let setup = format!(
        "CREATE TABLE accounts (aid int PRIMARY KEY, abalance int NOT NULL DEFAULT 0);
         INSERT INTO accounts (aid) SELECT generate_series(1, {ACCOUNTS});
         {};",
        {
            let mut settings = OutcomeSettings::default();
            settings.marker_table = Some(MARKERS.to_owned());
            settings
        }
        .marker_table_sql()
        .expect("marker table SQL")
    );
    cluster.psql(0, &setup).expect("schema");

    let off = {
        let mut settings = OutcomeSettings::default();
        settings.resolve = false;
        settings
    };
    let markers = {
        let mut settings = OutcomeSettings::default();
        settings.marker_table = Some(MARKERS.to_owned());
        settings
    };
    let plain = manager(&cluster, off.clone()).await;
    let mut rows = vec![
        ("plain write", Kind::Plain, plain.clone()),
        ("write().exactly_once()", Kind::ExactlyOnce, plain.clone()),
        ("transaction, resolve off", Kind::Transaction, plain),
        (
            "transaction, resolve on (default)",
            Kind::Transaction,
            manager(&cluster, OutcomeSettings::default()).await,
        ),
        (
            "transaction, resolve on + markers",
            Kind::Transaction,
            manager(&cluster, markers).await,
        ),
    ];
    println!(
        "bench_outcomes: {calls} calls per row and round at 16 tasks ({} at 1 task), {rounds} rounds, PostgreSQL 15 on loopback",
        calls / 4
    );
    for tasks in [1, 16] {
        let per_row = if tasks == 1 { calls / 4 } else { calls };
        let mut table: Vec<Row> = rows
            .iter()
            .map(|(label, kind, db)| Row {
                label,
                kind: *kind,
                db: db.clone(),
                rounds: Vec::new(),
                errors: 0,
            })
            .collect();
        for round in 0..=rounds {
            let count = if round == 0 { per_row / 4 } else { per_row };
            let len = table.len();
            let offset = round % len;
            for index in (0..len).map(|i| (i + offset) % len) {
                let row = &mut table[index];
                let (rate, latencies, errors) = run(row.kind, &row.db, tasks, count).await;
                if round > 0 {
                    row.rounds
                        .push((rate, latencies.quantile(0.5), latencies.quantile(0.99)));
                    row.errors += errors;
                }
            }
        }
        print_table(tasks, &table);
    }
    for (_, _, db) in rows.drain(..) {
        db.close().await;
    }
}

fn print_table(tasks: usize, table: &[Row]) {
    let medians: Vec<(f64, f64, f64)> = table
        .iter()
        .map(|row| {
            let mut rates: Vec<f64> = row.rounds.iter().map(|r| r.0).collect();
            let mut p50: Vec<f64> = row.rounds.iter().map(|r| r.1.as_secs_f64()).collect();
            let mut p99: Vec<f64> = row.rounds.iter().map(|r| r.2.as_secs_f64()).collect();
            (median(&mut rates), median(&mut p50), median(&mut p99))
        })
        .collect();
    let (base_rate, base_p50, _) = medians[0];
    println!("\n{tasks} task(s)");
    println!(
        "{:<36} {:>10} {:>8} {:>9} {:>9} {:>10} {:>7}",
        "row", "calls/s", "ratio", "p50 ms", "p99 ms", "p50 ratio", "errors"
    );
    for (row, (rate, p50, p99)) in table.iter().zip(medians) {
        println!(
            "{:<36} {:>10.0} {:>7.2}x {:>9} {:>9} {:>9.2}x {:>7}",
            row.label,
            rate,
            rate / base_rate,
            millis(Duration::from_secs_f64(p50)),
            millis(Duration::from_secs_f64(p99)),
            p50 / base_p50,
            row.errors
        );
    }
}
