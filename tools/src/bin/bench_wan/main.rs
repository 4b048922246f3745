//! A WAN benchmark: a local cluster (primary + 2 streaming replicas) with
//! every node behind a testkit `FaultProxy` that holds each chunk back by
//! its region's one-way delay, ±10 % jitter (`Fault::Jittered`), as seen
//! from a service in eu-west-1:
//!
//! | node | role | region | one way |
//! |---|---|---|---|
//! | node0 | primary | us-east-1 | 40 ms |
//! | node1 | replica | eu-west-1 | 0.5 ms |
//! | node2 | replica | ap-south-1 | 75 ms |
//!
//! Side by side in one run, each section a window of `BENCH_SECONDS`
//! (default 10) after a warm-up:
//!
//! 1. reads, open loop, with every read strategy at once;
//! 2. the cost of reading one's own write: a causal token, the time window
//!    (`causal.read_your_writes = window`), primary-only reads, and no
//!    read-your-writes at all (how many reads missed the write), the read
//!    right after the write and one second later;
//! 3. write latency: an autocommit `UPDATE`, a short transaction (`UPDATE`,
//!    `SELECT`) with its statements given as text (tokio-postgres prepares
//!    each, a round trip more) and prepared with `tx.prepare_cached`, and
//!    the same on a bare tokio-postgres connection (prepared statements)
//!    through the same proxy;
//! 4. the local replica turned slow (200 ms one way) and black-holed:
//!    pgrouter with hedging off (as shipped) and on, and "the seed": what a
//!    service did before pgrouter, two plain deadpool-postgres pools, a read
//!    to the regional pool, on error to the other, the pair retried 3 times
//!    with a backoff of 300 ms doubling to 3 s;
//! 5. a failover: the primary stopped, the local replica promoted once
//!    pgrouter has marked the primary down, as an orchestrator would.
//!
//! ```text
//! cargo run --release -p pgrouter-tools --bin bench_wan
//! ```
//!
//! Every manager runs on `Config`'s defaults (hedging off, outlier
//! detection on, a probe a second, a 10 s deadline), the service's region
//! eu-west-1. Latencies count every call, failed or not, from its first poll
//! to its answer. The WAN is only between the service and the nodes:
//! replication streams straight from the primary to the replicas (on this
//! machine), so a replica replays a write within a millisecond or so, and
//! what a causal token waits for is the next probe showing it.
//! `BENCH_SECONDS` sets the windows, `BENCH_READ_RATE` the reads per second
//! of each open-loop client (default 40); `BENCH_OUTLIERS=off` turns
//! outlier detection off in every manager.

#[allow(dead_code)]
#[path = "../../common.rs"]
mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use common::{millis, node_configs, Latencies, LOCAL_REGION};
use pgrouter::causal::causal_scope;
use pgrouter::config::{CausalSettings, ReadYourWrites};
use pgrouter::deadpool_postgres::{
    Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime,
};
use pgrouter::error::ErrorKind;
use pgrouter::{CallInfo, Config, DatabaseManager, ReadStrategy};
use pgrouter_testkit::{Cluster, Fault, FaultProxy, StopMode};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;
use tokio_postgres::NoTls;

/// Rows in the `kv` table.
const KEYS: i32 = 1_000;
/// One-way delay from the service to each node (node0, node1, node2).
const ONE_WAY: [Duration; 3] = [
    Duration::from_millis(40),
    Duration::from_micros(500),
    Duration::from_millis(75),
];
/// The local replica, in the service's region; promoted in the failover.
const LOCAL: usize = 1;
/// The local replica's one-way delay when it turns slow.
const SLOW: Duration = Duration::from_millis(200);
/// Load before each measured window, not reported.
const WARM_UP: Duration = Duration::from_secs(2);
/// Longest wait for a node to be marked down, up or primary.
const WAIT_LIMIT: Duration = Duration::from_secs(20);
/// Load after the promotion.
const AFTER_PROMOTION: Duration = Duration::from_secs(5);
/// The read every read row makes.
const READ: &str = "SELECT v FROM kv WHERE id = $1";
/// The write every write row makes.
const WRITE: &str = "UPDATE kv SET v = v + 1 WHERE id = $1";
/// The write of the read-your-writes rows, returning the value written.
const WRITE_RETURNING: &str = "UPDATE kv SET v = v + 1 WHERE id = $1 RETURNING v";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .init();
    let started = Instant::now();
    let window = duration_from_env("BENCH_SECONDS", Duration::from_secs(10));
    let rate = std::env::var("BENCH_READ_RATE").map_or(40, |text| {
        text.parse()
            .unwrap_or_else(|e| panic!("BENCH_READ_RATE={text:?}: {e}"))
    });

    let cluster = common::kv_cluster(KEYS)?;
    let mut proxies = Vec::new();
    for node in cluster.nodes() {
        proxies.push(FaultProxy::start(node.addr()).await?);
    }
    for (index, proxy) in proxies.iter().enumerate() {
        proxy.set(wan(ONE_WAY[index]));
    }
    let ports: Vec<u16> = proxies.iter().map(FaultProxy::port).collect();
    let round_trips = bare_round_trips(&ports).await?;
    println!(
        "\nbare round trips (SELECT 1 on one tokio-postgres connection through each node's proxy):"
    );
    println!("| node | region | one way | round trips | p50 ms | p99 ms |");
    println!("|---|---|---|---|---|---|");
    let regions = ["us-east-1", "eu-west-1", "ap-south-1"];
    for (index, rtt) in round_trips.iter().enumerate() {
        println!(
            "| node{index} | {} | {} ms ±10 % | {} | {} | {} |",
            regions[index],
            millis(ONE_WAY[index]),
            rtt.len(),
            millis(rtt.quantile(0.5)),
            millis(rtt.quantile(0.99))
        );
    }
    let local_rtt = round_trips[LOCAL].quantile(0.5);
    let primary_rtt = round_trips[0].quantile(0.5);

    let base = Config::new(node_configs(&cluster, &ports));
    let mut base = base;
    base.local_region = LOCAL_REGION.to_owned();
    if std::env::var("BENCH_OUTLIERS").is_ok_and(|value| value == "off") {
        base.outliers.enabled = false;
    }
    let db = manager(base.clone()).await?;
    print_setup(&db, window, rate);

    let regional = reads_by_strategy(&db, window, rate, local_rtt).await;
    read_your_writes(&base, window).await?;
    writes(&db, ports[0], window, primary_rtt).await?;
    slow_local_replica(&base, &db, &cluster, &proxies, window, rate).await?;
    failover(&db, &cluster, rate).await?;

    println!(
        "\nacceptance: regional-preferred read p50 {} ms, the bare local round trip {} ms: \
         {:+.2} ms (goal: within 2 ms) -> {}",
        millis(regional),
        millis(local_rtt),
        (regional.as_secs_f64() - local_rtt.as_secs_f64()) * 1000.0,
        if regional <= local_rtt + Duration::from_millis(2) {
            "met"
        } else {
            "NOT met"
        }
    );
    db.close().await;
    drop(proxies);
    println!("\ntotal time {:.1?}", started.elapsed());
    Ok(())
}

/// `delay` one way with ±10 % jitter.
fn wan(delay: Duration) -> Fault {
    Fault::Jittered {
        delay,
        jitter: delay / 10,
    }
}

/// A manager on `config`, once every node is healthy.
async fn manager(config: Config) -> Result<DatabaseManager, BoxError> {
    let db = DatabaseManager::new(config).await?;
    let up = wait_until(|| db.status().nodes.iter().all(|node| node.healthy)).await;
    if up.is_none() {
        return Err(format!(
            "nodes not all healthy after {WAIT_LIMIT:?}: {:?}",
            db.status()
        )
        .into());
    }
    Ok(db)
}

fn print_setup(db: &DatabaseManager, window: Duration, rate: u32) {
    let config = db.config();
    println!(
        "\nmanagers: Config defaults, local region {LOCAL_REGION}: read strategy {}, hedging {}, \
         outliers {}, probe every {:?} (timeout {:?}), deadline {:?}, write hold {:?}, pool {} per node",
        config.read_strategy,
        if config.hedging.enabled { "on" } else { "off" },
        if config.outliers.enabled { "on" } else { "off" },
        config.health.interval,
        config.health.probe_timeout,
        config.deadline,
        config.write_hold,
        config.pool.max_size,
    );
    println!(
        "windows of {window:?} after {WARM_UP:?} of warm-up; open-loop clients at {rate} reads/s each"
    );
}

/// One bare connection per node through its proxy: `SELECT 1` (prepared)
/// round trips, 200 to the local node and 25 to each remote one, all three
/// at once.
async fn bare_round_trips(ports: &[u16]) -> Result<Vec<Latencies>, BoxError> {
    let mut tasks = Vec::new();
    for (index, &port) in ports.iter().enumerate() {
        let samples = if index == LOCAL { 200 } else { 25 };
        tasks.push(tokio::spawn(async move {
            let client = bare_client(port).await?;
            let statement = client.prepare("SELECT 1").await?;
            let mut latencies = Latencies::default();
            for _ in 0..samples {
                let start = Instant::now();
                client.query_one(&statement, &[]).await?;
                latencies.record(start.elapsed());
            }
            Ok::<_, BoxError>(latencies)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.push(task.await??);
    }
    Ok(all)
}

/// A tokio-postgres connection to 127.0.0.1:`port`, its driver spawned.
async fn bare_client(port: u16) -> Result<tokio_postgres::Client, BoxError> {
    let (client, connection) = bare_config(port).connect(NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

fn bare_config(port: u16) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user("postgres")
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(5));
    config
}

// ---------------------------------------------------------------------------
// Calls and their outcomes

/// One finished call.
#[derive(Debug, Clone)]
struct Outcome {
    /// When it started.
    start: Instant,
    /// How long it (the measured part of it) took, failed or not.
    latency: Duration,
    /// `None` on success, else what failed.
    error: Option<String>,
    /// The node that served it, when known.
    node: Option<String>,
    /// A read after a write that did not see the write.
    stale: bool,
}

impl Outcome {
    fn new(start: Instant) -> Self {
        Self {
            start,
            latency: start.elapsed(),
            error: None,
            node: None,
            stale: false,
        }
    }

    fn failed(start: Instant, error: String) -> Self {
        Self {
            error: Some(error),
            ..Self::new(start)
        }
    }

    /// When it finished.
    fn end(&self) -> Instant {
        self.start + self.latency
    }
}

/// The variant of a pgrouter error and its node, e.g. `Timeout @node1`;
/// for a failed checkout, what the pool said (`Connect(Wait timeout)`).
fn kind(error: &pgrouter::Error) -> String {
    let debug = format!("{:?}", error.kind());
    let name = debug.split([' ', '(', '{']).next().unwrap_or("?");
    let name = match error.kind() {
        ErrorKind::Database => format!("{name}({})", error.code().map_or("?", |c| c.code())),
        ErrorKind::Connect => {
            let pool = std::error::Error::source(error).and_then(|source| source.downcast_ref());
            match pool {
                Some(PoolError::Timeout(kind)) => format!("{name}({kind:?} timeout)"),
                Some(PoolError::Backend(_)) => format!("{name}(backend)"),
                Some(_) => format!("{name}(pool)"),
                None => name.to_owned(),
            }
        }
        _ => name.to_owned(),
    };
    match error.node() {
        Some(node) => format!("{name} @{node}"),
        None => name,
    }
}

/// The node that served a call given `info`.
fn served_by(info: &CallInfo) -> Option<String> {
    info.server().map(|server| server.node)
}

/// Calls at `rate` a second for `run_for`, each in its own task (a slow call
/// never delays the next one); every outcome, once all have finished.
async fn open_loop<F, Fut>(rate: u32, run_for: Duration, call: F) -> Vec<Outcome>
where
    F: Fn(i32) -> Fut,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut tasks = JoinSet::new();
    let end = Instant::now() + run_for;
    while Instant::now() < end {
        ticker.tick().await;
        tasks.spawn(call(fastrand::i32(1..=KEYS)));
    }
    let mut outcomes = Vec::new();
    while let Some(outcome) = tasks.join_next().await {
        if let Ok(outcome) = outcome {
            outcomes.push(outcome);
        }
    }
    outcomes
}

/// `workers` tasks each calling in a loop for `run_for`, worker `w` on keys
/// of its own; every outcome.
async fn closed_loop<F, Fut>(workers: usize, run_for: Duration, call: F) -> Vec<Outcome>
where
    F: Fn(i32) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Outcome> + Send,
{
    let end = Instant::now() + run_for;
    let mut tasks = JoinSet::new();
    for worker in 0..workers {
        let call = call.clone();
        tasks.spawn(async move {
            let mut outcomes = Vec::new();
            let mut rng = fastrand::Rng::new();
            // Keys of this worker only: writes never wait on each other's locks.
            let keys = KEYS / i32::try_from(workers.max(1)).unwrap_or(1);
            let first = i32::try_from(worker).unwrap_or(0) * keys + 1;
            while Instant::now() < end {
                outcomes.push(call(rng.i32(first..first + keys.max(1))).await);
            }
            outcomes
        });
    }
    let mut all = Vec::new();
    while let Some(outcomes) = tasks.join_next().await {
        if let Ok(outcomes) = outcomes {
            all.extend(outcomes);
        }
    }
    all
}

/// What a set of outcomes comes to.
struct Summary {
    calls: usize,
    p50: Duration,
    p99: Duration,
    failures: BTreeMap<String, usize>,
    /// Successful calls served by each node.
    served: BTreeMap<String, usize>,
    stale: usize,
}

impl Summary {
    fn of(outcomes: &[Outcome]) -> Self {
        let mut latencies = Latencies::default();
        let mut failures = BTreeMap::new();
        let mut served = BTreeMap::new();
        let mut stale = 0;
        for outcome in outcomes {
            latencies.record(outcome.latency);
            if let Some(error) = &outcome.error {
                *failures.entry(error.clone()).or_default() += 1;
            } else if let Some(node) = &outcome.node {
                *served.entry(node.clone()).or_default() += 1;
            }
            stale += usize::from(outcome.stale);
        }
        Self {
            calls: outcomes.len(),
            p50: latencies.quantile(0.5),
            p99: latencies.quantile(0.99),
            failures,
            served,
            stale,
        }
    }

    fn failed(&self) -> String {
        let total: usize = self.failures.values().sum();
        if total == 0 {
            return "0".to_owned();
        }
        let kinds: Vec<String> = self
            .failures
            .iter()
            .map(|(kind, n)| format!("{n} {kind}"))
            .collect();
        format!("{total} ({})", kinds.join(", "))
    }

    /// The share of successful calls served by `node`, in percent.
    fn share(&self, node: &str) -> String {
        let ok: usize = self.served.values().sum();
        if ok == 0 {
            return "-".to_owned();
        }
        let n = self.served.get(node).copied().unwrap_or(0);
        format!("{:.0} %", 100.0 * n as f64 / ok as f64)
    }
}

// ---------------------------------------------------------------------------
// 1. Reads by strategy

/// A routed read of one key; `strategy` overrides the manager's.
async fn routed_read(db: DatabaseManager, strategy: Option<ReadStrategy>, key: i32) -> Outcome {
    let info = CallInfo::new();
    let start = Instant::now();
    let mut read = db.read().info(&info);
    if let Some(strategy) = strategy {
        read = read.strategy(strategy);
    }
    match read.query_one(READ, &[&key]).await {
        Ok(_) => Outcome {
            node: served_by(&info),
            ..Outcome::new(start)
        },
        Err(error) => Outcome::failed(start, kind(&error)),
    }
}

/// Every strategy at once, open loop; regional-preferred's p50.
async fn reads_by_strategy(
    db: &DatabaseManager,
    window: Duration,
    rate: u32,
    local_rtt: Duration,
) -> Duration {
    let run = |run_for: Duration| {
        let mut tasks = Vec::new();
        for strategy in ReadStrategy::ALL {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                open_loop(rate, run_for, move |key| {
                    routed_read(db.clone(), Some(strategy), key)
                })
                .await
            }));
        }
        tasks
    };
    for task in run(WARM_UP) {
        let _ = task.await;
    }
    let outliers_before = db.status().hedging.outliers;
    let mut summaries = Vec::new();
    for (strategy, task) in ReadStrategy::ALL.into_iter().zip(run(window)) {
        summaries.push((strategy, Summary::of(&task.await.unwrap_or_default())));
    }
    println!(
        "\n1. reads by strategy, all four at once, no fault (nodes marked outliers: {} in the warm-up, {} in the window):",
        outliers_before,
        db.status().hedging.outliers - outliers_before
    );
    println!("| strategy | reads | p50 ms | p99 ms | p50 - local round trip | failed | node0 (us-east-1) | node1 (eu-west-1) | node2 (ap-south-1) |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut regional = Duration::ZERO;
    for (strategy, summary) in &summaries {
        if *strategy == ReadStrategy::RegionalPreferred {
            regional = summary.p50;
        }
        println!(
            "| {strategy} | {} | {} | {} | {:+.2} ms | {} | {} | {} | {} |",
            summary.calls,
            millis(summary.p50),
            millis(summary.p99),
            (summary.p50.as_secs_f64() - local_rtt.as_secs_f64()) * 1000.0,
            summary.failed(),
            summary.share("node0"),
            summary.share("node1"),
            summary.share("node2"),
        );
    }
    regional
}

// ---------------------------------------------------------------------------
// 2. Read-your-writes

/// How a read sees the write before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ryw {
    /// The write's causal token, given to the read (`read().after(token)`).
    Token,
    /// Write and read in a causal scope of a manager with
    /// `causal.read_your_writes = window` (2 s).
    Window,
    /// The read goes to the primary (`read().strategy(PrimaryOnly)`).
    PrimaryOnly,
    /// Nothing: the read goes where regional-preferred sends it.
    Nothing,
}

impl Ryw {
    const ALL: [Ryw; 4] = [Ryw::Token, Ryw::Window, Ryw::PrimaryOnly, Ryw::Nothing];

    fn label(self) -> &'static str {
        match self {
            Ryw::Token => "causal token (positions)",
            Ryw::Window => "time window (2 s)",
            Ryw::PrimaryOnly => "primary-only read",
            Ryw::Nothing => "none (regional-preferred)",
        }
    }
}

/// Writes `key` (returning the value written), waits `gap`, reads it back;
/// the outcome times the read only.
async fn write_then_read(db: DatabaseManager, how: Ryw, gap: Duration, key: i32) -> Outcome {
    let work = async {
        let info = CallInfo::with_token();
        let write = match how {
            Ryw::Token => {
                db.write()
                    .info(&info)
                    .query_one(WRITE_RETURNING, &[&key])
                    .await
            }
            _ => db.write().query_one(WRITE_RETURNING, &[&key]).await,
        };
        let written: i32 = match write {
            Ok(row) => row.get(0),
            Err(error) => {
                return Outcome::failed(Instant::now(), format!("write {}", kind(&error)))
            }
        };
        tokio::time::sleep(gap).await;
        let read_info = CallInfo::new();
        let start = Instant::now();
        let read = db.read().info(&read_info);
        let read = match how {
            Ryw::Token => match info.token() {
                Some(token) => read.after(token),
                None => return Outcome::failed(start, "no token".to_owned()),
            },
            Ryw::PrimaryOnly => read.strategy(ReadStrategy::PrimaryOnly),
            Ryw::Window | Ryw::Nothing => read,
        };
        match read.query_one(READ, &[&key]).await {
            Ok(row) => Outcome {
                node: served_by(&read_info),
                stale: row.get::<_, i32>(0) < written,
                ..Outcome::new(start)
            },
            Err(error) => Outcome::failed(start, kind(&error)),
        }
    };
    match how {
        Ryw::Window => causal_scope(None, work).await.0,
        _ => work.await,
    }
}

/// Every way of reading one's writes at once, each on a manager of its
/// own (workers per row: 3 for the read right after the write, 6 for the
/// read a second later).
async fn read_your_writes(base: &Config, window: Duration) -> Result<(), BoxError> {
    let gaps = [Duration::ZERO, Duration::from_secs(1)];
    let mut managers = Vec::new();
    for how in Ryw::ALL {
        let mut config = base.clone();
        if how == Ryw::Window {
            let mut causal = CausalSettings::default();
            causal.read_your_writes = ReadYourWrites::Window;
            config.causal = causal;
        }
        managers.push(manager(config).await?);
    }
    let run = |run_for: Duration| {
        let mut tasks = Vec::new();
        for (how, db) in Ryw::ALL.into_iter().zip(&managers) {
            for gap in gaps {
                let db = db.clone();
                let workers = if gap.is_zero() { 3 } else { 6 };
                tasks.push(tokio::spawn(async move {
                    closed_loop(workers, run_for, move |key| {
                        write_then_read(db.clone(), how, gap, key)
                    })
                    .await
                }));
            }
        }
        tasks
    };
    for task in run(WARM_UP) {
        let _ = task.await;
    }
    let tasks = run(window);
    println!("\n2. read-your-writes: a write (UPDATE ... RETURNING v), then a read of the same row, all rows at once:");
    println!("| how | read after the write | reads | read p50 ms | read p99 ms | served by the primary | missed the write | failed |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut tasks = tasks.into_iter();
    for how in Ryw::ALL {
        for gap in gaps {
            let outcomes = match tasks.next() {
                Some(task) => task.await.unwrap_or_default(),
                None => Vec::new(),
            };
            let summary = Summary::of(&outcomes);
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                how.label(),
                if gap.is_zero() {
                    "at once".to_owned()
                } else {
                    format!("{gap:?} later")
                },
                summary.calls,
                millis(summary.p50),
                millis(summary.p99),
                summary.share("node0"),
                summary.stale,
                summary.failed(),
            );
        }
    }
    for db in managers {
        db.close().await;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// 3. Writes

/// Autocommit writes and short transactions (UPDATE, then SELECT), through
/// pgrouter and on bare connections through the primary's proxy, at once.
async fn writes(
    db: &DatabaseManager,
    primary_port: u16,
    window: Duration,
    primary_rtt: Duration,
) -> Result<(), BoxError> {
    const WORKERS: usize = 3;
    let autocommit = {
        let db = db.clone();
        move |key: i32| {
            let db = db.clone();
            async move {
                let start = Instant::now();
                match db.execute(WRITE, &[&key]).await {
                    Ok(_) => Outcome::new(start),
                    Err(error) => Outcome::failed(start, kind(&error)),
                }
            }
        }
    };
    let transaction = {
        let db = db.clone();
        move |key: i32| {
            let db = db.clone();
            async move {
                let start = Instant::now();
                let result = db
                    .transaction(move |tx| {
                        Box::pin(async move {
                            tx.execute(WRITE, &[&key]).await?;
                            tx.query_one(READ, &[&key]).await?;
                            Ok(())
                        })
                    })
                    .await;
                match result {
                    Ok(()) => Outcome::new(start),
                    Err(error) => Outcome::failed(start, kind(&error)),
                }
            }
        }
    };
    let cached_transaction = {
        let db = db.clone();
        move |key: i32| {
            let db = db.clone();
            async move {
                let start = Instant::now();
                let result = db
                    .transaction(move |tx| {
                        Box::pin(async move {
                            let write = tx.prepare_cached(WRITE).await?;
                            let read = tx.prepare_cached(READ).await?;
                            tx.execute(&write, &[&key]).await?;
                            tx.query_one(&read, &[&key]).await?;
                            Ok(())
                        })
                    })
                    .await;
                match result {
                    Ok(()) => Outcome::new(start),
                    Err(error) => Outcome::failed(start, kind(&error)),
                }
            }
        }
    };
    let bare = |transactions: bool, run_for: Duration| {
        tokio::spawn(bare_writes(primary_port, transactions, run_for, WORKERS))
    };
    let run = |run_for: Duration| {
        (
            tokio::spawn(closed_loop(WORKERS, run_for, autocommit.clone())),
            tokio::spawn(closed_loop(WORKERS, run_for, transaction.clone())),
            tokio::spawn(closed_loop(WORKERS, run_for, cached_transaction.clone())),
            bare(false, run_for),
            bare(true, run_for),
        )
    };
    let warm = run(WARM_UP);
    let _ = (
        warm.0.await,
        warm.1.await,
        warm.2.await,
        warm.3.await,
        warm.4.await,
    );
    let (a, t, cached, bare_a, bare_t) = run(window);
    let rows = [
        ("pgrouter autocommit UPDATE", a.await.unwrap_or_default()),
        (
            "pgrouter transaction (UPDATE, SELECT), statements as text",
            t.await.unwrap_or_default(),
        ),
        (
            "pgrouter transaction (UPDATE, SELECT), `tx.prepare_cached`",
            cached.await.unwrap_or_default(),
        ),
        ("bare autocommit UPDATE", bare_a.await??),
        (
            "bare transaction (BEGIN, UPDATE, SELECT, COMMIT)",
            bare_t.await??,
        ),
    ];
    println!(
        "\n3. writes, {WORKERS} closed-loop workers per row, all rows at once (primary round trip {} ms):",
        millis(primary_rtt)
    );
    println!("| call | calls | p50 ms | p99 ms | p50 in primary round trips | failed |");
    println!("|---|---|---|---|---|---|");
    for (label, outcomes) in rows {
        let summary = Summary::of(&outcomes);
        println!(
            "| {label} | {} | {} | {} | {:.1} | {} |",
            summary.calls,
            millis(summary.p50),
            millis(summary.p99),
            summary.p50.as_secs_f64() / primary_rtt.as_secs_f64().max(1e-9),
            summary.failed(),
        );
    }
    Ok(())
}

/// `workers` bare connections to the primary's proxy, each writing in a
/// loop (prepared statements), autocommit or in transactions.
async fn bare_writes(
    port: u16,
    transactions: bool,
    run_for: Duration,
    workers: usize,
) -> Result<Vec<Outcome>, BoxError> {
    let end = Instant::now() + run_for;
    let mut tasks = JoinSet::new();
    for worker in 0..workers {
        tasks.spawn(async move {
            let mut client = bare_client(port).await?;
            let write = client.prepare(WRITE).await?;
            let read = client.prepare(READ).await?;
            let mut rng = fastrand::Rng::with_seed(worker as u64);
            let mut outcomes = Vec::new();
            while Instant::now() < end {
                let key = rng.i32(1..=KEYS);
                let start = Instant::now();
                let result = if transactions {
                    let tx = client.transaction().await?;
                    tx.execute(&write, &[&key]).await?;
                    tx.query_one(&read, &[&key]).await?;
                    tx.commit().await
                } else {
                    client.execute(&write, &[&key]).await.map(|_| ())
                };
                outcomes.push(match result {
                    Ok(()) => Outcome::new(start),
                    Err(error) => Outcome::failed(start, error.to_string()),
                });
            }
            Ok::<_, BoxError>(outcomes)
        });
    }
    let mut all = Vec::new();
    while let Some(outcomes) = tasks.join_next().await {
        all.extend(outcomes??);
    }
    Ok(all)
}

// ---------------------------------------------------------------------------
// 4. The local replica slow or black-holed; the seed's behaviour

/// What a service did before pgrouter: a pool per node, reads to the
/// regional pool, on error to the other, the pair retried 3 times with a
/// backoff of 300 ms doubling to 3 s. The pools are deadpool-postgres's
/// with the seed's settings: 20 connections, 5 s to connect or to wait for
/// a connection, no statement timeout, no health check.
#[derive(Clone)]
struct Seed {
    /// The local replica's pool.
    regional: Pool,
    /// The primary's pool.
    other: Pool,
}

impl Seed {
    fn new(ports: &[u16]) -> Result<Self, BoxError> {
        let pool = |port: u16| {
            let manager = Manager::from_config(
                bare_config(port),
                NoTls,
                ManagerConfig {
                    recycling_method: RecyclingMethod::Fast,
                },
            );
            Pool::builder(manager)
                .max_size(20)
                .wait_timeout(Some(Duration::from_secs(5)))
                .create_timeout(Some(Duration::from_secs(5)))
                .runtime(Runtime::Tokio1)
                .build()
        };
        Ok(Self {
            regional: pool(ports[LOCAL])?,
            other: pool(ports[0])?,
        })
    }

    async fn read(self, key: i32) -> Outcome {
        let start = Instant::now();
        let mut backoff = Duration::from_millis(300);
        let mut last = String::new();
        for attempt in 0..=3 {
            for (pool, node) in [(&self.regional, "node1"), (&self.other, "node0")] {
                match Self::query(pool, key).await {
                    Ok(()) => {
                        return Outcome {
                            node: Some(node.to_owned()),
                            ..Outcome::new(start)
                        }
                    }
                    Err(error) => last = error,
                }
            }
            if attempt < 3 {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(3));
            }
        }
        Outcome::failed(start, last)
    }

    async fn query(pool: &Pool, key: i32) -> Result<(), String> {
        let client = pool.get().await.map_err(|error| match error {
            PoolError::Timeout(_) => "pool timeout".to_owned(),
            _ => "connect".to_owned(),
        })?;
        let statement = client
            .prepare_cached(READ)
            .await
            .map_err(|_| "query".to_owned())?;
        client
            .query_one(&statement, &[&key])
            .await
            .map(|_| ())
            .map_err(|_| "query".to_owned())
    }
}

/// Regional-preferred reads from pgrouter with hedging off (as shipped)
/// and on, and from the seed, at once, with no fault, then the local
/// replica slow, then black-holed.
async fn slow_local_replica(
    base: &Config,
    db: &DatabaseManager,
    cluster: &Cluster,
    proxies: &[FaultProxy],
    window: Duration,
    rate: u32,
) -> Result<(), BoxError> {
    let mut hedged_config = base.clone();
    hedged_config.hedging.enabled = true;
    let hedged = manager(hedged_config).await?;
    let ports: Vec<u16> = proxies.iter().map(FaultProxy::port).collect();
    let seed = Seed::new(&ports)?;
    let local = cluster.node(LOCAL).name().to_owned();
    let run = |run_for: Duration| {
        let (off, on, seed) = (db.clone(), hedged.clone(), seed.clone());
        (
            tokio::spawn(open_loop(rate, run_for, move |key| {
                routed_read(off.clone(), None, key)
            })),
            tokio::spawn(open_loop(rate, run_for, move |key| {
                routed_read(on.clone(), None, key)
            })),
            tokio::spawn(open_loop(rate, run_for, move |key| seed.clone().read(key))),
        )
    };
    let warm = run(WARM_UP);
    let _ = (warm.0.await, warm.1.await, warm.2.await);

    let faults = [
        ("no fault", wan(ONE_WAY[LOCAL])),
        ("local replica slow (200 ms one way)", wan(SLOW)),
        ("local replica black-holed", Fault::BlackHole),
    ];
    let mut rows = Vec::new();
    for (label, fault) in faults {
        proxies[LOCAL].set(fault);
        let hedges_before = hedged.status().hedging;
        let off_before = db.status().hedging;
        let (off, on, seed) = run(window);
        // The fault is lifted once the window's last call has been issued;
        // calls still held (a black hole) then finish.
        let lift = async {
            tokio::time::sleep(window).await;
            proxies[LOCAL].set(wan(ONE_WAY[LOCAL]));
        };
        let ((off, on, seed), ()) = tokio::join!(async { (off.await, on.await, seed.await) }, lift);
        let hedges = hedged.status().hedging;
        let off_after = db.status().hedging;
        let off_counts = (
            off_after.outliers - off_before.outliers,
            off_after.retries_refused - off_before.retries_refused,
        );
        rows.push((
            label,
            [
                Summary::of(&off.unwrap_or_default()),
                Summary::of(&on.unwrap_or_default()),
                Summary::of(&seed.unwrap_or_default()),
            ],
            hedges.sent - hedges_before.sent,
            hedges.won - hedges_before.won,
            hedges.outliers - hedges_before.outliers,
            hedges.retries_refused - hedges_before.retries_refused,
            off_counts,
        ));
        let back = wait_until(|| {
            [db, &hedged]
                .iter()
                .all(|db| db.status().node(&local).is_some_and(|node| node.healthy))
        })
        .await;
        if back.is_none() {
            println!("({local} not healthy again within {WAIT_LIMIT:?} after: {label})");
        }
        tokio::time::sleep(WARM_UP).await;
    }
    println!("\n4. regional-preferred reads (open loop, {rate}/s per client, all clients at once) while the local replica turns slow or silent:");
    println!("| fault | client | reads | p50 ms | p99 ms | failed | served by node1 (local) |");
    println!("|---|---|---|---|---|---|---|");
    for (label, summaries, sent, won, outliers, retries_refused, (outliers_off, refused_off)) in
        &rows
    {
        let clients = [
            format!(
                "pgrouter, hedging off (as shipped; {outliers_off} outliers; \
                 {refused_off} retries refused)"
            ),
            format!(
                "pgrouter, hedging on ({sent} hedges, {won} won; {outliers} outliers; \
                 {retries_refused} retries refused)"
            ),
            "seed: regional pool, fall back to the other, 3 retries 300-3000 ms".to_owned(),
        ];
        for (client, summary) in clients.iter().zip(summaries) {
            println!(
                "| {label} | {client} | {} | {} | {} | {} | {} |",
                summary.calls,
                millis(summary.p50),
                millis(summary.p99),
                summary.failed(),
                summary.share("node1"),
            );
        }
    }
    hedged.close().await;
    seed.regional.close();
    seed.other.close();
    Ok(())
}

// ---------------------------------------------------------------------------
// 5. Failover

/// A write of one key, its serving node recorded.
async fn routed_write(db: DatabaseManager, key: i32) -> Outcome {
    let info = CallInfo::new();
    let start = Instant::now();
    match db.write().info(&info).execute(WRITE, &[&key]).await {
        Ok(_) => Outcome {
            node: served_by(&info),
            ..Outcome::new(start)
        },
        Err(error) => Outcome::failed(start, kind(&error)),
    }
}

/// Reads (open loop, `rate`/s) and writes (`rate / 2`/s) through `db` while
/// the primary is stopped and, once `db` has marked it down, the local
/// replica promoted.
async fn failover(db: &DatabaseManager, cluster: &Cluster, rate: u32) -> Result<(), BoxError> {
    let stop = Arc::new(Mutex::new(false));
    let load = |write: bool| {
        let (db, stop) = (db.clone(), Arc::clone(&stop));
        tokio::spawn(async move {
            // Open loop until told to stop: windows of 1 s, back to back.
            let mut all = Vec::new();
            while !*stop.lock().unwrap_or_else(PoisonError::into_inner) {
                let db = db.clone();
                let per_second = if write { (rate / 2).max(1) } else { rate };
                all.extend(
                    open_loop(per_second, Duration::from_secs(1), move |key| {
                        let db = db.clone();
                        async move {
                            match write {
                                true => routed_write(db, key).await,
                                false => routed_read(db, None, key).await,
                            }
                        }
                    })
                    .await,
                );
            }
            all
        })
    };
    let (reads, writes) = (load(false), load(true));
    tokio::time::sleep(WARM_UP).await;

    let primary = cluster.node(0).name().to_owned();
    let new_primary = cluster.node(LOCAL).name().to_owned();
    // Watched from tasks of their own, from before the stop: the cluster's
    // calls block their task for the whole `pg_ctl` run.
    let detection = {
        let (db, primary) = (db.clone(), primary.clone());
        tokio::spawn(async move {
            wait_until(|| db.status().node(&primary).is_some_and(|node| !node.healthy)).await
        })
    };
    let following = {
        let (db, new_primary) = (db.clone(), new_primary.clone());
        tokio::spawn(async move {
            wait_until(|| db.status().write_target.as_deref() == Some(new_primary.as_str())).await
        })
    };
    let stopped = Instant::now();
    tokio::task::block_in_place(|| cluster.stop(0, StopMode::Immediate))?;
    let detected = detection.await?;
    let promoting = Instant::now();
    tokio::task::block_in_place(|| cluster.promote(LOCAL))?;
    let promoted = Instant::now();
    let followed = following.await?;
    tokio::time::sleep(AFTER_PROMOTION).await;
    *stop.lock().unwrap_or_else(PoisonError::into_inner) = true;
    let (reads, writes) = (reads.await?, writes.await?);

    let first_write = writes
        .iter()
        .filter(|w| w.error.is_none() && w.node.as_deref() == Some(new_primary.as_str()))
        .map(Outcome::end)
        .min();
    let during = |outcomes: &[Outcome]| {
        let after: Vec<Outcome> = outcomes
            .iter()
            .filter(|o| o.end() >= stopped)
            .cloned()
            .collect();
        Summary::of(&after)
    };
    let since = |instant: Option<Instant>| {
        instant.map_or("never".to_owned(), |at| {
            format!("{} ms", millis(at.saturating_duration_since(stopped)))
        })
    };
    let (reads, writes) = (during(&reads), during(&writes));
    println!("\n5. failover (pgrouter as shipped): the primary stopped (immediate), node1 promoted once marked down; reads {rate}/s, writes {}/s, open loop; times from the stop:", (rate / 2).max(1));
    println!("| primary marked down | promote issued | promote returned | write target node1 | first write served by node1 | reads from the stop | reads failed | reads p99 ms | writes from the stop | writes failed | writes p99 ms |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        since(detected),
        since(Some(promoting)),
        since(Some(promoted)),
        since(followed),
        since(first_write),
        reads.calls,
        reads.failed(),
        millis(reads.p99),
        writes.calls,
        writes.failed(),
        millis(writes.p99),
    );
    Ok(())
}

// ---------------------------------------------------------------------------

/// The humantime duration in `variable` (a bare number is seconds), or
/// `default`.
fn duration_from_env(variable: &str, default: Duration) -> Duration {
    match std::env::var(variable) {
        Ok(text) => match text.parse::<u64>() {
            Ok(seconds) => Duration::from_secs(seconds),
            Err(_) => humantime::parse_duration(&text)
                .unwrap_or_else(|error| panic!("{variable}={text:?}: {error}")),
        },
        Err(_) => default,
    }
}

/// Polls every 5 ms; the instant `condition` first held, or `None` after
/// `WAIT_LIMIT`.
async fn wait_until(mut condition: impl FnMut() -> bool) -> Option<Instant> {
    let limit = Instant::now() + WAIT_LIMIT;
    while Instant::now() < limit {
        if condition() {
            return Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}
