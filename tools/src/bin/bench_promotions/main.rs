//! Many promotions under a steady write load: do resolved writes ever end
//! with an unknown outcome, or run twice?
//!
//! ```text
//! cargo run --release -p pgrouter-tools --bin bench_promotions -- [--promotions N] [--no-markers] [--sync] [--fast-only]
//! ```
//!
//! A local primary and one streaming replica. Writer tasks insert rows with
//! unique ids, half through `write().transaction(…)` (resolved by default)
//! and half through `write().exactly_once()`, each call with a 15 s
//! deadline, longer than a failover takes here. Every second the primary is
//! stopped (`-m fast` and `-m immediate` in turn), the replica promoted, and
//! the old primary re-cloned as a replica of the new one. At the end the
//! rows on the last primary are checked against what every call returned:
//! ids present more than once (duplicates), calls that ended with an
//! unknown outcome, and calls acknowledged as committed whose rows are gone
//! (with asynchronous replication a crash can lose acknowledged commits:
//! that is PostgreSQL's behaviour, and `--sync` turns on synchronous
//! replication to show it away). `--no-markers` runs without the marker
//! table, where a commit lost in a failover can only be shown uncommitted,
//! never committed.

#[allow(dead_code)]
#[path = "../../common.rs"]
mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{node_configs, Latencies, LOCAL_REGION};
use pgrouter::config::OutcomeSettings;
use pgrouter::status::CommitOutcome;
use pgrouter::status::Event;
use pgrouter::Config;
use pgrouter::DatabaseManager;
use pgrouter::Error;
use pgrouter_testkit::{Cluster, StopMode};
use tokio_util::sync::CancellationToken;

const MARKERS: &str = "pgrouter_outcomes";
const WRITERS: usize = 8;
const INSERT: &str = "INSERT INTO ledger (id) VALUES ($1)";

struct Args {
    promotions: usize,
    markers: bool,
    sync: bool,
    fast_only: bool,
}

fn args() -> Result<Args, String> {
    let mut args = Args {
        promotions: 20,
        markers: true,
        sync: false,
        fast_only: false,
    };
    let mut given = std::env::args().skip(1);
    while let Some(arg) = given.next() {
        match arg.as_str() {
            "--promotions" => {
                let value = given.next().ok_or("--promotions needs a number")?;
                args.promotions = value
                    .parse()
                    .map_err(|_| format!("--promotions {value}: not a number"))?;
            }
            "--no-markers" => args.markers = false,
            "--sync" => args.sync = true,
            "--fast-only" => args.fast_only = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

/// How a call ended.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Ended {
    Committed,
    Unknown,
    Failed(String),
}

type Outcomes = Arc<Mutex<Vec<(i64, Ended, Instant, Instant)>>>;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn write(db: &DatabaseManager, id: i64) -> Result<u64, Error> {
    if id % 2 == 0 {
        db.write()
            .transaction(|tx| Box::pin(async move { tx.execute(INSERT, &[&id]).await }))
            .await
    } else {
        db.write().exactly_once().execute(INSERT, &[&id]).await
    }
}

async fn writer(
    db: DatabaseManager,
    next: Arc<AtomicI64>,
    outcomes: Outcomes,
    latencies: Arc<Mutex<Latencies>>,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        let id = next.fetch_add(1, Ordering::Relaxed);
        let begun = Instant::now();
        let result = write(&db, id).await;
        lock(&latencies).record(begun.elapsed());
        let ended = match result {
            Ok(_) => Ended::Committed,
            Err(error) if error.is_outcome_unknown() => Ended::Unknown,
            Err(error) => Ended::Failed(kind(&error)),
        };
        lock(&outcomes).push((id, ended, begun, Instant::now()));
    }
}

fn kind(error: &Error) -> String {
    let text = format!("{error:?}");
    text.split([' ', '{', '(']).next().unwrap_or("?").to_owned()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = match args() {
        Ok(args) => args,
        Err(error) => {
            eprintln!("bench_promotions: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    let sync = args.sync;
    let cluster = Arc::new(
        blocking(move || {
            // PostgreSQL's default (the test kit turns it off for speed):
            // an acknowledged commit is at least on the primary's disk.
            let mut builder = Cluster::builder()
                .replicas(1)
                .setting("synchronous_commit", "on");
            if sync {
                builder = builder.setting("synchronous_standby_names", "*");
            }
            builder.start()
        })
        .await
        .expect("a primary and a replica"),
    );
    let schema = format!(
        "CREATE TABLE ledger (id bigint NOT NULL); {};",
        {
            let mut settings = OutcomeSettings::default();
            settings.marker_table = Some(MARKERS.to_owned());
            settings
        }
        .marker_table_sql()
        .expect("marker table SQL")
    );
    cluster.psql(0, &schema).expect("schema");
    let replication = cluster
        .psql(0, "SELECT current_setting('synchronous_standby_names'), string_agg(sync_state, ',') FROM pg_stat_replication")
        .expect("replication state");
    eprintln!("synchronous_standby_names|sync states: {replication}");

    let ports: Vec<u16> = cluster.nodes().iter().map(|node| node.port()).collect();
    let mut config = Config::new(node_configs(&cluster, &ports));
    config.local_region = LOCAL_REGION.to_owned();
    config.deadline = Duration::from_secs(15);
    config.write_hold = Duration::from_secs(15);
    config.health.interval = Duration::from_millis(200);
    config.health.probe_timeout = Duration::from_millis(500);
    config.health.recovery_initial = Duration::from_millis(200);
    config.health.recovery_max = Duration::from_secs(1);
    config.retry.max_retries = 30;
    config.retry.max_delay = Duration::from_millis(500);
    if args.markers {
        config.outcomes.marker_table = Some(MARKERS.to_owned());
    }
    let db = DatabaseManager::new(config).await.expect("manager");
    let mut events = db.subscribe();
    let counted = CancellationToken::new();
    let done = counted.clone();
    let resolved = tokio::spawn(async move {
        let mut counts: HashMap<String, usize> = HashMap::new();
        loop {
            let event = tokio::select! {
                event = events.recv() => event,
                () = done.cancelled() => break,
            };
            let Ok(event) = event else { break };
            if let Event::CommitResolved { outcome, .. } = event {
                let name = match outcome {
                    CommitOutcome::Committed => "committed",
                    CommitOutcome::NotCommitted => "not committed",
                    CommitOutcome::Unknown => "unknown",
                    _ => "other",
                };
                *counts.entry(name.to_owned()).or_default() += 1;
            }
        }
        counts
    });

    let outcomes: Outcomes = Arc::default();
    let latencies = Arc::new(Mutex::new(Latencies::default()));
    let next = Arc::new(AtomicI64::new(1));
    let stop = CancellationToken::new();
    let writers: Vec<_> = (0..WRITERS)
        .map(|_| {
            tokio::spawn(writer(
                db.clone(),
                Arc::clone(&next),
                Arc::clone(&outcomes),
                Arc::clone(&latencies),
                stop.clone(),
            ))
        })
        .collect();

    let started = Instant::now();
    let mut primary = 0;
    // The next id when each promotion began, to place lost rows.
    let mut boundaries = Vec::new();
    for round in 0..args.promotions {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (old, new) = (primary, 1 - primary);
        let mode = if round % 2 == 0 || args.fast_only {
            StopMode::Fast
        } else {
            StopMode::Immediate
        };
        boundaries.push((next.load(Ordering::Relaxed), mode));
        eprintln!(
            "promotion {} begins at {:.3?}",
            round + 1,
            started.elapsed()
        );
        let c = Arc::clone(&cluster);
        blocking(move || {
            c.stop(old, mode)?;
            c.promote(new)
        })
        .await
        .expect("stop and promote");
        primary = new;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let c = Arc::clone(&cluster);
        blocking(move || c.rejoin(old, new)).await.expect("rejoin");
        eprintln!(
            "promotion {}/{} ({mode:?} stop of node{old}) done at {:.1?}",
            round + 1,
            args.promotions,
            started.elapsed()
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.cancel();
    for handle in writers {
        handle.await.expect("writer");
    }
    db.close().await;
    counted.cancel();
    let resolved = resolved.await.expect("event counter");

    // Check every call against the last primary's rows.
    let rows = cluster
        .psql(primary, "SELECT id, count(*) FROM ledger GROUP BY id")
        .expect("rows");
    let present: HashMap<i64, i64> = rows
        .lines()
        .filter_map(|line| {
            let (id, count) = line.split_once('|')?;
            Some((id.parse().ok()?, count.parse().ok()?))
        })
        .collect();
    let outcomes = lock(&outcomes).clone();
    let mut ended: HashMap<String, usize> = HashMap::new();
    let mut lost_by_round: HashMap<usize, usize> = HashMap::new();
    let (mut duplicates, mut lost_acknowledged, mut failed_but_present) = (0, 0, 0);
    let mut shown = 0;
    for (id, how, begun, finished) in &outcomes {
        let count = present.get(id).copied().unwrap_or(0);
        duplicates += usize::from(count > 1);
        match how {
            Ended::Committed if count == 0 => {
                lost_acknowledged += 1;
                if shown < 12 {
                    shown += 1;
                    eprintln!(
                        "lost id {id} ({}): began {:.3?}, acknowledged {:.3?}",
                        if id % 2 == 0 {
                            "transaction"
                        } else {
                            "exactly_once"
                        },
                        begun.duration_since(started),
                        finished.duration_since(started)
                    );
                }
                let round = boundaries.partition_point(|(start, _)| start <= id);
                *lost_by_round.entry(round).or_default() += 1;
            }
            Ended::Committed => {}
            Ended::Failed(_) => failed_but_present += usize::from(count > 0),
            Ended::Unknown => {}
        }
        let name = match how {
            Ended::Committed => "ok".to_owned(),
            Ended::Unknown => "outcome unknown".to_owned(),
            Ended::Failed(kind) => format!("error {kind}"),
        };
        *ended.entry(name).or_default() += 1;
    }
    let latencies = lock(&latencies).clone();
    println!(
        "bench_promotions: {} promotions in {:.1?}, {WRITERS} writers, markers {}, replication {}",
        args.promotions,
        started.elapsed(),
        if args.markers { "on" } else { "off" },
        if args.sync {
            "synchronous"
        } else {
            "asynchronous"
        },
    );
    println!("calls: {}", outcomes.len());
    let mut ended: Vec<_> = ended.into_iter().collect();
    ended.sort();
    for (name, count) in &ended {
        println!("  {name:<40} {count}");
    }
    let mut resolved: Vec<_> = resolved.into_iter().collect();
    resolved.sort();
    println!("lost COMMIT answers resolved: {resolved:?}");
    println!("duplicated ids: {duplicates}");
    println!("failed calls whose row is present: {failed_but_present}");
    println!("acknowledged commits lost with a crashed primary: {lost_acknowledged}");
    let mut lost_by_round: Vec<_> = lost_by_round.into_iter().collect();
    lost_by_round.sort();
    for (round, lost) in lost_by_round {
        let mode = round
            .checked_sub(1)
            .and_then(|r| boundaries.get(r))
            .map(|(_, mode)| *mode);
        match mode {
            Some(mode) => println!(
                "  {lost} issued after promotion {round} began ({mode:?} stop of the primary), before the next"
            ),
            None => println!("  {lost} issued before the first promotion"),
        }
    }
    println!(
        "call latency: p50 {:?}, p99 {:?}, max {:?}",
        latencies.quantile(0.5),
        latencies.quantile(0.99),
        latencies.quantile(1.0)
    );
    let unknown = ended
        .iter()
        .find(|(name, _)| name == "outcome unknown")
        .map_or(0, |(_, n)| *n);
    if duplicates > 0 || failed_but_present > 0 || (args.markers && unknown > 0) {
        println!("FAILED: duplicates, failed-but-applied calls, or unknown outcomes with markers");
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}
