//! Throughput, side by side in one run: bare deadpool-postgres against one
//! node, pgrouter reads with every strategy, pgrouter writes, and pgpool-II
//! (when installed) in front of the same local cluster (primary + 2
//! replicas), at 16 and 64 concurrent tasks. pgrouter runs in both
//! statement modes (`prepared`, `unnamed`), straight to the servers and
//! (when `pgbouncer` is installed) through PgBouncer in transaction
//! pooling mode in front of every node; a summary prints the ratios.
//!
//! ```text
//! cargo run --release -p pgrouter-tools --bin bench_throughput
//! cargo run --release -p pgrouter-tools --bin bench_throughput --features metrics
//! ```
//!
//! With the `metrics` feature, the table has two more rows: regional-preferred
//! reads and writes through a second manager whose metrics go to a
//! Prometheus recorder (the first manager is built before the recorder is
//! installed, so its rows pay for the hooks but record nothing).
//!
//! Every pool has the same size (`POOL_SIZE` connections per node, also for
//! the bare pools and the pool of connections to pgpool). Each round runs
//! every row once (a fixed number of queries, the row order rotated per
//! round) after one shorter warm-up round; the table shows the medians of
//! the rounds and each row's ratio to the bare deadpool row of the same
//! workload and concurrency (one pool on node1, or the primary for
//! writes), and to its matching bare baseline: bare deadpool making the
//! strategy's choice by hand over the same servers, with the same pool
//! size per server (primary-only: the pool on node0; global-random and
//! nearest: one of three pools, one per node, drawn at random per query;
//! nearest spreads over all three on loopback, which the closing "where
//! reads went" lines show). `BENCH_QUERIES` and `BENCH_ROUNDS` override the
//! query count per read row and the number of rounds; `BENCH_VERBOSE=1`
//! prints every run of every row.

#[path = "../../common.rs"]
mod common;
mod pgpool;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{median, millis, node_configs, Latencies, LOCAL_REGION};
use pgrouter::config::StatementMode;
use pgrouter::deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use pgrouter::tokio_postgres::types::ToSql;
use pgrouter::tokio_postgres::NoTls;
use pgrouter::Config;
use pgrouter::DatabaseManager;
use pgrouter::ReadStrategy;
use pgrouter_testkit::{Cluster, PgBouncer};

/// Connections per pool: pgrouter's per-node pools, the bare pools, and the
/// pool of connections to pgpool.
const POOL_SIZE: usize = 16;
/// Concurrent tokio tasks issuing queries.
const CONCURRENCY: [usize; 2] = [16, 64];
/// Rows in the pgbench-like `accounts` table.
const ACCOUNTS: i32 = 100_000;
/// Queries per read row and round (writes run half as many).
const DEFAULT_QUERIES: usize = 20_000;
/// Measured rounds (after one warm-up round of a quarter of the queries).
const DEFAULT_ROUNDS: usize = 5;
/// pgpool child processes (one per client connection); above `POOL_SIZE`.
const PGPOOL_CHILDREN: usize = POOL_SIZE + 4;

/// What every query of a row runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    Select1,
    PointSelect,
    Update,
}

impl Workload {
    const ALL: [Workload; 3] = [Workload::Select1, Workload::PointSelect, Workload::Update];

    fn sql(self) -> &'static str {
        match self {
            Workload::Select1 => "SELECT 1",
            Workload::PointSelect => "SELECT abalance FROM accounts WHERE aid = $1",
            Workload::Update => "UPDATE accounts SET abalance = abalance + 1 WHERE aid = $1",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Workload::Select1 => "SELECT 1",
            Workload::PointSelect => "point select",
            Workload::Update => "UPDATE by key",
        }
    }

    fn queries(self, reads: usize) -> usize {
        match self {
            Workload::Update => reads / 2,
            _ => reads,
        }
    }
}

/// Who runs the queries of a row.
#[derive(Debug, Clone)]
enum Client {
    /// A deadpool pool used directly (against a node, or against pgpool).
    Pool(Pool),
    /// Bare deadpool pools, one per node: each query takes one drawn at
    /// random (as global-random does, by hand).
    Spread(Vec<Pool>),
    /// pgrouter reads with this strategy.
    Read(DatabaseManager, ReadStrategy),
    /// pgrouter writes (always the primary).
    Write(DatabaseManager),
}

/// One line of the table.
#[derive(Debug)]
struct Row {
    label: String,
    client: Client,
    /// The label of the bare deadpool row that makes this row's choice of
    /// server by hand (its fair baseline), if any.
    baseline: Option<String>,
    /// Per measured round: queries per second, p50, p99.
    rounds: Vec<(f64, Duration, Duration)>,
    errors: usize,
    first_error: Option<String>,
}

impl Row {
    fn new(label: impl Into<String>, client: Client) -> Self {
        Self {
            label: label.into(),
            client,
            baseline: None,
            rounds: Vec::new(),
            errors: 0,
            first_error: None,
        }
    }

    /// This row with its fair baseline.
    fn against(self, baseline: &str) -> Self {
        Self {
            baseline: Some(baseline.to_owned()),
            ..self
        }
    }
}

/// One workload at one concurrency; row 0 is the bare deadpool reference.
#[derive(Debug)]
struct Block {
    workload: Workload,
    tasks: usize,
    rows: Vec<Row>,
}

/// What one run of one row measured.
#[derive(Debug, Default)]
struct Sample {
    elapsed: Duration,
    latencies: Latencies,
    errors: usize,
    first_error: Option<String>,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let queries = env_number("BENCH_QUERIES", DEFAULT_QUERIES);
    let rounds = env_number("BENCH_ROUNDS", DEFAULT_ROUNDS);
    let started = Instant::now();

    let cluster = Cluster::start(2)?;
    println!(
        "cluster: primary + 2 streaming replicas, up in {:.1?}",
        started.elapsed()
    );
    load_accounts(&cluster)?;

    let db = DatabaseManager::new(router_config(&cluster)).await?;
    let metered = metered_manager(&cluster).await?;
    let bouncers = start_pgbouncers(&cluster);
    let modes = Modes::new(&cluster, &bouncers).await?;
    let pgpool = start_pgpool(&cluster).await;
    let pools = Pools::new(&cluster, pgpool.as_ref());
    let mut blocks = blocks(&cluster, &db, metered.as_ref(), &modes, &pools);
    println!(
        "pool size {POOL_SIZE} per pool (pgrouter: per node); {queries} queries per read row \
         and round, {} per write row; 1 warm-up round + {rounds} rounds\n",
        Workload::Update.queries(queries)
    );

    run_round(&mut blocks, queries / 4, 0, false).await;
    // Nearest's baseline assumes it spreads over all three: shown here and
    // again at the end.
    print_spread(&db).await;
    for round in 1..=rounds {
        let round_start = Instant::now();
        run_round(&mut blocks, queries, round, true).await;
        println!(
            "round {round}/{rounds} done in {:.1?}",
            round_start.elapsed()
        );
    }
    print_table(&blocks);
    print_matched(&blocks);
    print_modes(&blocks);
    print_spread(&db).await;

    db.close().await;
    if let Some(metered) = metered {
        metered.close().await;
    }
    modes.close().await;
    drop(bouncers);
    drop(blocks);
    drop(pools);
    drop(pgpool);
    println!("\ntotal time {:.1?}", started.elapsed());
    Ok(())
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .filter(|&value| value > 0)
        .unwrap_or(default)
}

/// `accounts(aid, abalance, filler)` with `ACCOUNTS` rows, on every replica.
fn load_accounts(cluster: &Cluster) -> Result<(), Box<dyn std::error::Error>> {
    let start = Instant::now();
    cluster.psql(
        0,
        &format!(
            "CREATE TABLE accounts (aid int PRIMARY KEY, abalance int NOT NULL, filler char(84));
             INSERT INTO accounts SELECT g, 0, '' FROM generate_series(1, {ACCOUNTS}) g;"
        ),
    )?;
    cluster.psql(0, "VACUUM ANALYZE accounts")?;
    cluster.wait_for_replicas(Duration::from_secs(60))?;
    println!(
        "accounts: {ACCOUNTS} rows on the primary, replicated, in {:.1?}",
        start.elapsed()
    );
    Ok(())
}

/// Default settings, with the pool size written out.
fn router_config(cluster: &Cluster) -> Config {
    let ports: Vec<u16> = cluster.nodes().iter().map(|node| node.port()).collect();
    router_config_at(cluster, &ports)
}

/// [`router_config`] with the nodes at `ports` (PgBouncer's, say).
fn router_config_at(cluster: &Cluster, ports: &[u16]) -> Config {
    let mut config = Config::new(node_configs(cluster, ports));
    config.local_region = LOCAL_REGION.to_owned();
    config.pool.max_size = POOL_SIZE;
    config
}

/// With the `metrics` feature: installs a Prometheus recorder (no HTTP
/// listener; its upkeep runs every 5 s, as the listener's would) and builds
/// a manager that records into it.
#[cfg(feature = "metrics")]
async fn metered_manager(
    cluster: &Cluster,
) -> Result<Option<DatabaseManager>, Box<dyn std::error::Error>> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let buckets = [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &buckets)?
        .install_recorder()?;
    drop(tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            handle.run_upkeep();
        }
    }));
    Ok(Some(DatabaseManager::new(router_config(cluster)).await?))
}

/// Without the `metrics` feature there is nothing to record into.
#[cfg(not(feature = "metrics"))]
async fn metered_manager(
    _cluster: &Cluster,
) -> Result<Option<DatabaseManager>, Box<dyn std::error::Error>> {
    Ok(None)
}

/// A deadpool pool of `POOL_SIZE` connections, no timeouts (deadpool's
/// defaults), with this recycling method.
fn bare_pool(config: tokio_postgres::Config, recycling_method: RecyclingMethod) -> Pool {
    let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method });
    Pool::builder(manager)
        .max_size(POOL_SIZE)
        .runtime(Runtime::Tokio1)
        .build()
        .expect("a pool with a runtime")
}

async fn start_pgpool(cluster: &Cluster) -> Option<pgpool::Pgpool> {
    let Some(binary) = pgpool::find_binary() else {
        println!("pgpool-II: not installed (Debian package pgpool2); its rows are skipped");
        return None;
    };
    match pgpool::Pgpool::start(binary, cluster, PGPOOL_CHILDREN).await {
        Ok(pgpool) => {
            println!(
                "pgpool-II: listening on 127.0.0.1:{} (load balancing over 3 nodes)",
                pgpool.port()
            );
            Some(pgpool)
        }
        Err(error) => {
            println!("pgpool-II: could not start ({error}); its rows are skipped");
            None
        }
    }
}

/// PgBouncer (transaction pooling) in front of every node, if installed.
fn start_pgbouncers(cluster: &Cluster) -> Vec<PgBouncer> {
    let started: Result<Vec<PgBouncer>, _> = cluster
        .nodes()
        .iter()
        .map(|node| PgBouncer::start(node.addr()))
        .collect();
    match started {
        Ok(bouncers) => {
            println!("PgBouncer: transaction pooling in front of every node");
            bouncers
        }
        Err(error) => {
            println!("PgBouncer: not available ({error}); its rows are skipped");
            Vec::new()
        }
    }
}

/// pgrouter in the other statement mode, and through PgBouncer.
#[derive(Debug)]
struct Modes {
    /// Unnamed statements, straight to the servers.
    unnamed: DatabaseManager,
    /// Through PgBouncer: unnamed, then prepared (which fails there).
    pooled: Option<(DatabaseManager, DatabaseManager)>,
}

impl Modes {
    async fn new(cluster: &Cluster, bouncers: &[PgBouncer]) -> Result<Self, pgrouter::Error> {
        let mut config = router_config(cluster);
        config.statement_mode = StatementMode::Unnamed;
        let unnamed = DatabaseManager::new(config).await?;
        let pooled = match bouncers.is_empty() {
            true => None,
            false => {
                let ports: Vec<u16> = bouncers.iter().map(PgBouncer::port).collect();
                let mut config = router_config_at(cluster, &ports);
                config.statement_mode = StatementMode::Unnamed;
                let unnamed = DatabaseManager::new(config.clone()).await?;
                config.statement_mode = StatementMode::Prepared;
                let prepared = DatabaseManager::new(config).await?;
                Some((unnamed, prepared))
            }
        };
        Ok(Self { unnamed, pooled })
    }

    async fn close(self) {
        self.unnamed.close().await;
        if let Some((unnamed, prepared)) = self.pooled {
            unnamed.close().await;
            prepared.close().await;
        }
    }
}

/// The bare pools, shared by every block (so connections stay bounded).
#[derive(Debug)]
struct Pools {
    /// Against node1, the node regional-preferred reads use.
    reads: [Pool; 2],
    /// Against the primary, for writes.
    writes: [Pool; 2],
    /// `Fast` pools against node0, node1 and node2 (the first two are
    /// `writes[0]` and `reads[0]`): the spreading strategies' baseline.
    spread: Vec<Pool>,
    /// Against pgpool-II, when it runs.
    pgpool: Option<Pool>,
}

impl Pools {
    fn new(cluster: &Cluster, pgpool: Option<&pgpool::Pgpool>) -> Self {
        let pair = |index: usize| {
            let config = cluster.node(index).pg_config();
            [
                bare_pool(config.clone(), RecyclingMethod::Fast),
                bare_pool(config, RecyclingMethod::Verified),
            ]
        };
        let reads = pair(1);
        let writes = pair(0);
        let third = bare_pool(cluster.node(2).pg_config(), RecyclingMethod::Fast);
        Self {
            spread: vec![writes[0].clone(), reads[0].clone(), third],
            reads,
            writes,
            pgpool: pgpool.map(|p| bare_pool(p.pg_config(), RecyclingMethod::Fast)),
        }
    }
}

/// Every workload at every concurrency, with its rows.
fn blocks(
    cluster: &Cluster,
    db: &DatabaseManager,
    metered: Option<&DatabaseManager>,
    modes: &Modes,
    pools: &Pools,
) -> Vec<Block> {
    let mut blocks = Vec::new();
    for workload in Workload::ALL {
        for tasks in CONCURRENCY {
            let mut rows = rows(cluster, db, metered, pools, workload);
            rows.extend(mode_rows(modes, workload));
            blocks.push(Block {
                workload,
                tasks,
                rows,
            });
        }
    }
    blocks
}

/// The fair baselines' labels: bare deadpool making a strategy's choice by
/// hand.
const BARE_PRIMARY: &str = "deadpool Fast, node0";
const BARE_SPREAD: &str = "deadpool Fast, random of 3";

/// Row 0 is the reference: bare deadpool (default `Fast` recycling) against
/// the node regional-preferred reads use (node1), or the primary for writes.
/// Read blocks also have the bare rows that primary-only, global-random and
/// nearest are matched against.
fn rows(
    cluster: &Cluster,
    db: &DatabaseManager,
    metered: Option<&DatabaseManager>,
    pools: &Pools,
    workload: Workload,
) -> Vec<Row> {
    let (node, [fast, verified]) = match workload {
        Workload::Update => (0, &pools.writes),
        Workload::Select1 | Workload::PointSelect => (1, &pools.reads),
    };
    let name = cluster.node(node).name();
    let mut rows = vec![
        Row::new(format!("deadpool Fast, {name}"), Client::Pool(fast.clone())),
        Row::new(
            format!("deadpool Verified, {name}"),
            Client::Pool(verified.clone()),
        ),
    ];
    // Row 0, the baseline of the rows that use its node.
    let own = &rows[0].label.clone();
    if workload == Workload::Update {
        rows.push(Row::new("pgrouter write", Client::Write(db.clone())).against(own));
    } else {
        rows.push(Row::new(
            BARE_PRIMARY,
            Client::Pool(pools.writes[0].clone()),
        ));
        rows.push(Row::new(BARE_SPREAD, Client::Spread(pools.spread.clone())));
        for strategy in ReadStrategy::ALL {
            let baseline = match strategy {
                ReadStrategy::PrimaryOnly => BARE_PRIMARY,
                ReadStrategy::GlobalRandom | ReadStrategy::Nearest => BARE_SPREAD,
                _ => own,
            };
            rows.push(
                Row::new(
                    format!("pgrouter {strategy}"),
                    Client::Read(db.clone(), strategy),
                )
                .against(baseline),
            );
        }
    }
    if let Some(metered) = metered {
        rows.push(
            match workload {
                Workload::Update => {
                    Row::new("pgrouter write, metrics", Client::Write(metered.clone()))
                }
                _ => Row::new(
                    "pgrouter regional-preferred, metrics",
                    Client::Read(metered.clone(), ReadStrategy::RegionalPreferred),
                ),
            }
            .against(own),
        );
    }
    if let Some(pool) = &pools.pgpool {
        rows.push(Row::new(
            "pgpool-II (deadpool Fast)",
            Client::Pool(pool.clone()),
        ));
    }
    rows
}

/// Labels of the statement mode rows (the prepared, direct row is the
/// strategy's own row above them).
const PREPARED_DIRECT: &str = "pgrouter regional-preferred";
const PREPARED_DIRECT_WRITE: &str = "pgrouter write";
const UNNAMED_DIRECT: &str = "pgrouter unnamed";
const UNNAMED_BOUNCER: &str = "pgrouter unnamed, PgBouncer";
const PREPARED_BOUNCER: &str = "pgrouter prepared, PgBouncer";

/// pgrouter in unnamed mode, and both modes through PgBouncer (reads:
/// regional-preferred).
fn mode_rows(modes: &Modes, workload: Workload) -> Vec<Row> {
    let client = |db: &DatabaseManager| match workload {
        Workload::Update => Client::Write(db.clone()),
        _ => Client::Read(db.clone(), ReadStrategy::RegionalPreferred),
    };
    let mut rows = vec![Row::new(UNNAMED_DIRECT, client(&modes.unnamed))];
    if let Some((unnamed, prepared)) = &modes.pooled {
        rows.push(Row::new(UNNAMED_BOUNCER, client(unnamed)));
        rows.push(Row::new(PREPARED_BOUNCER, client(prepared)));
    }
    rows
}

/// Runs every row of every block once, the row order rotated by `round`.
async fn run_round(blocks: &mut [Block], queries: usize, round: usize, keep: bool) {
    for block in blocks.iter_mut() {
        let count = block.rows.len();
        for offset in 0..count {
            let row = &mut block.rows[(offset + round) % count];
            let total = block.workload.queries(queries);
            let sample = run(&row.client, block.workload, block.tasks, total).await;
            if std::env::var_os("BENCH_VERBOSE").is_some() {
                eprintln!(
                    "  {} x{} {}: {:.1?}, {} errors",
                    block.workload.label(),
                    block.tasks,
                    row.label,
                    sample.elapsed,
                    sample.errors
                );
            }
            if !keep {
                continue;
            }
            let rate = sample.latencies.len() as f64 / sample.elapsed.as_secs_f64();
            row.rounds.push((
                rate,
                sample.latencies.quantile(0.5),
                sample.latencies.quantile(0.99),
            ));
            row.errors += sample.errors;
            if row.first_error.is_none() {
                row.first_error = sample.first_error;
            }
        }
    }
}

/// `total` queries from `tasks` tasks; only successful queries count
/// towards the rate and the latencies.
async fn run(client: &Client, workload: Workload, tasks: usize, total: usize) -> Sample {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let client = client.clone();
            let next = Arc::clone(&next);
            tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(task as u64);
                let mut sample = Sample::default();
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    let aid = rng.i32(1..=ACCOUNTS);
                    let begun = Instant::now();
                    match call(&client, workload, aid, &mut rng).await {
                        Ok(()) => sample.latencies.record(begun.elapsed()),
                        Err(error) => {
                            sample.errors += 1;
                            sample.first_error.get_or_insert(error);
                        }
                    }
                }
                sample
            })
        })
        .collect();
    let mut merged = Sample::default();
    for handle in handles {
        let sample = handle.await.expect("a benchmark task panicked");
        merged.latencies.merge(&sample.latencies);
        merged.errors += sample.errors;
        if merged.first_error.is_none() {
            merged.first_error = sample.first_error;
        }
    }
    merged.elapsed = start.elapsed();
    merged
}

/// One query. Bare pools use a cached prepared statement, as pgrouter does;
/// `rng` draws the pool of a spread row.
async fn call(
    client: &Client,
    workload: Workload,
    aid: i32,
    rng: &mut fastrand::Rng,
) -> Result<(), String> {
    let sql = workload.sql();
    let with_key: [&(dyn ToSql + Sync); 1] = [&aid];
    let params: &[&(dyn ToSql + Sync)] = match workload {
        Workload::Select1 => &[],
        Workload::PointSelect | Workload::Update => &with_key,
    };
    match client {
        Client::Pool(pool) => bare_call(pool, workload, params).await,
        Client::Spread(pools) => {
            bare_call(&pools[rng.usize(..pools.len())], workload, params).await
        }
        Client::Read(db, strategy) => db
            .read()
            .strategy(*strategy)
            .query_one(sql, params)
            .await
            .map(drop)
            .map_err(|e| e.to_string()),
        Client::Write(db) => db
            .execute(sql, params)
            .await
            .map(drop)
            .map_err(|e| e.to_string()),
    }
}

/// One query on a bare pool, with a cached prepared statement.
async fn bare_call(
    pool: &Pool,
    workload: Workload,
    params: &[&(dyn ToSql + Sync)],
) -> Result<(), String> {
    let conn = pool.get().await.map_err(|e| e.to_string())?;
    let statement = conn
        .prepare_cached(workload.sql())
        .await
        .map_err(|e| e.to_string())?;
    match workload {
        Workload::Update => conn.execute(&statement, params).await.map(drop),
        _ => conn.query_one(&statement, params).await.map(drop),
    }
    .map_err(|e| e.to_string())
}

/// One line per row: median q/s (and the rounds' range), median p50 and
/// p99, and the ratio of median rates to the two bare rows of its block.
fn print_table(blocks: &[Block]) {
    println!(
        "\n{:<13} {:>5}  {:<28} {:>7} {:>13} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6}",
        "workload",
        "tasks",
        "client",
        "q/s",
        "(min-max)",
        "p50ms",
        "p99ms",
        "×Fast",
        "×Verif",
        "×match",
        "errors"
    );
    for block in blocks {
        let fast = median_of(&block.rows[0], |r| r.0);
        let verified = median_of(&block.rows[1], |r| r.0);
        for row in &block.rows {
            let rate = median_of(row, |r| r.0);
            let (low, high) = row
                .rounds
                .iter()
                .map(|r| r.0)
                .fold((f64::MAX, 0.0f64), |(lo, hi), q| (lo.min(q), hi.max(q)));
            let p50 = Duration::from_secs_f64(median_of(row, |r| r.1.as_secs_f64()));
            let p99 = Duration::from_secs_f64(median_of(row, |r| r.2.as_secs_f64()));
            let matched = baseline_rate(block, row)
                .map_or_else(|| "".to_owned(), |base| format!("{:.2}", rate / base));
            println!(
                "{:<13} {:>5}  {:<28} {:>7.0} {:>13} {:>6} {:>6} {:>6.2} {:>6.2} {:>6} {:>6}",
                block.workload.label(),
                block.tasks,
                row.label,
                rate,
                format!("({:.0}-{:.0})", low / 1000.0, high / 1000.0) + "k",
                millis(p50),
                millis(p99),
                rate / fast,
                rate / verified,
                matched,
                row.errors
            );
            if let Some(error) = &row.first_error {
                println!("{:>22}first error: {error}", "");
            }
        }
        println!();
    }
}

/// The median rate of `row`'s fair baseline in `block`.
fn baseline_rate(block: &Block, row: &Row) -> Option<f64> {
    let label = row.baseline.as_deref()?;
    let baseline = block.rows.iter().find(|other| other.label == label)?;
    Some(median_of(baseline, |r| r.0))
}

/// Per read block: each strategy's median rate against its fair baseline
/// and against the single bare pool (row 0), and each baseline against
/// row 0.
fn print_matched(blocks: &[Block]) {
    println!("strategies against bare deadpool Fast (ratios of median q/s):");
    println!(
        "  {:<13} {:<4} {:<20} {:>10} {:>10}  matching baseline (×node1)",
        "workload", "", "strategy", "×matching", "×node1"
    );
    for block in blocks.iter().filter(|b| b.workload != Workload::Update) {
        let single = median_of(&block.rows[0], |r| r.0);
        for row in &block.rows {
            let Client::Read(_, strategy) = &row.client else {
                continue;
            };
            if row.label != format!("pgrouter {strategy}") {
                continue;
            }
            let (Some(label), Some(base)) = (&row.baseline, baseline_rate(block, row)) else {
                continue;
            };
            let rate = median_of(row, |r| r.0);
            println!(
                "  {:<13} x{:<3} {:<20} {:>10.2} {:>10.2}  {} ({:.2})",
                block.workload.label(),
                block.tasks,
                strategy.as_str(),
                rate / base,
                rate / single,
                label,
                base / single
            );
        }
    }
    println!();
}

/// Per block: unnamed against prepared (both direct), and unnamed through
/// PgBouncer against unnamed direct, as ratios of median rates.
fn print_modes(blocks: &[Block]) {
    println!("statement modes (ratios of median q/s):");
    for block in blocks {
        let rate = |label: &str| {
            block
                .rows
                .iter()
                .find(|row| row.label == label)
                .map(|row| median_of(row, |r| r.0))
        };
        let prepared = rate(PREPARED_DIRECT).or_else(|| rate(PREPARED_DIRECT_WRITE));
        let (Some(prepared), Some(unnamed)) = (prepared, rate(UNNAMED_DIRECT)) else {
            continue;
        };
        let bouncer = rate(UNNAMED_BOUNCER).map_or_else(
            || "n/a".to_owned(),
            |pooled| format!("{:.2}", pooled / unnamed),
        );
        println!(
            "  {:<13} x{:<3} unnamed/prepared {:.2}   unnamed via PgBouncer/direct {}",
            block.workload.label(),
            block.tasks,
            unnamed / prepared,
            bouncer
        );
    }
    println!();
}

fn median_of(row: &Row, field: impl Fn(&(f64, Duration, Duration)) -> f64) -> f64 {
    let mut values: Vec<f64> = row.rounds.iter().map(field).collect();
    median(&mut values)
}

/// Which node served reads of each strategy (100 reads each), to show
/// which rows hit one node and which spread.
async fn print_spread(db: &DatabaseManager) {
    println!("where 100 reads of each strategy went (local region {LOCAL_REGION}):");
    let status = db.status();
    let rtts: Vec<String> = status
        .nodes
        .iter()
        .map(|node| format!("{}={:?}", node.name, node.rtt))
        .collect();
    println!("  probe round trips: {}", rtts.join(" "));
    for strategy in ReadStrategy::ALL {
        let mut counts = std::collections::BTreeMap::<String, usize>::new();
        for _ in 0..100 {
            let served = db
                .read()
                .strategy(strategy)
                .query_one("SELECT current_setting('cluster_name')", &[])
                .await;
            let name = served.map_or_else(|e| format!("error: {e}"), |row| row.get(0));
            *counts.entry(name).or_default() += 1;
        }
        let spread: Vec<String> = counts.iter().map(|(n, c)| format!("{n}={c}")).collect();
        println!("  {:<19} {}", strategy.as_str(), spread.join(" "));
    }
}
