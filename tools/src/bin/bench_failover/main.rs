//! Failover: steady reads and writes while (1) the local replica is stopped
//! and started, (2) it is black-holed through a fault proxy, (3) the primary
//! is stopped and the local replica promoted. Reports, per event, failed
//! calls by error kind (a call counts against the phase it finished in),
//! failed reads after detection, p99 latency, hedges, and the time to the
//! first successful write after the promotion. The whole run is made twice,
//! on a fresh cluster each time: with hedged reads (the default) and
//! without; a table then sets the two side by side, fault by fault.
//!
//! ```text
//! cargo run --release -p pgrouter-tools --bin bench_failover
//! ```
//!
//! The manager reaches every node through a `FaultProxy`, probes every
//! 250 ms (probe timeout 500 ms) and gives each call a 1 s deadline. Reads
//! use the default strategy, regional-preferred, with the service in node1's
//! region: every read goes to node1, the node the first two events hit.
//! `BENCH_FAILURES=1` lists every failed call. `BENCH_HEALTH_INTERVAL=5s`
//! (humantime) probes at another interval: the failover watch makes the
//! first write after a promotion independent of it. `BENCH_PROBE_TIMEOUT=2s`
//! sets the probe timeout (500 ms here; 2 s is the default).
//! `BENCH_OLD_PRIMARY=silent` cuts the old primary off in (3) instead of
//! stopping it (its proxy black-holes everything, as a partition does: it
//! neither answers nor refuses), so its probes hang for the whole timeout.
//! `BENCH_LATENCY=1ms` (humantime) holds every chunk back by that long in
//! each direction in every proxy (a round trip takes at least twice as
//! long), outside the faults: on loopback a read's p99 is below a
//! millisecond, under tokio's timer resolution and the hedge delay's floor.

// Shared with bench_throughput, which uses all of it.
#[allow(dead_code)]
#[path = "../../common.rs"]
mod common;
mod load;
mod report;

use std::time::{Duration, Instant};

use common::{millis, node_configs, Latencies, LOCAL_REGION};
use load::{Kind, Log, KEYS};
use pgrouter::config::HealthSettings;
use pgrouter::config::PoolSettings;
use pgrouter::Config;
use pgrouter::DatabaseManager;
use pgrouter_testkit::{Cluster, Fault, FaultProxy, StopMode};
use report::{EventLog, Phase};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Reads per second (one task per read).
const READS_PER_SECOND: u32 = 200;
/// Writes per second (one task per write).
const WRITES_PER_SECOND: u32 = 50;
/// Load before the baseline, not reported.
const WARM_UP: Duration = Duration::from_secs(1);
/// Load before the first event.
const BASELINE: Duration = Duration::from_secs(2);
/// How long a stopped or black-holed node stays so.
const FAULT_HELD: Duration = Duration::from_secs(3);
/// Load after a node is back, before the next event.
const SETTLE: Duration = Duration::from_secs(2);
/// Load after the promotion.
const AFTER_PROMOTION: Duration = Duration::from_secs(4);
/// Longest wait for a detection or a recovery.
const WAIT_LIMIT: Duration = Duration::from_secs(15);
/// The local replica, hit by the first two events and promoted in the third.
const LOCAL: usize = 1;

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .init();
    let started = Instant::now();
    let mut runs = Vec::new();
    for hedging in [true, false] {
        println!(
            "\n######## hedged reads {}",
            if hedging { "on" } else { "off" }
        );
        runs.push((hedging, run(hedging).await?));
    }
    report::print_side_by_side(&runs);
    println!("\ntotal time {:.1?}", started.elapsed());
    Ok(())
}

/// One whole run on a fresh cluster; each fault's summary.
async fn run(hedging: bool) -> Result<Vec<report::Summary>, Box<dyn std::error::Error>> {
    let cluster = common::kv_cluster(KEYS)?;
    let mut proxies = Vec::new();
    for node in cluster.nodes() {
        let proxy = FaultProxy::start(node.addr()).await?;
        proxy.set(no_fault());
        proxies.push(proxy);
    }
    print_proxy_cost(&cluster, &proxies[LOCAL]).await?;
    let mut config = config(&cluster, &proxies);
    config.hedging.enabled = hedging;
    let db = DatabaseManager::new(config).await?;
    let events = EventLog::start(&db);
    wait_healthy(&db, &["node0", "node1", "node2"], true).await;
    print_setup(&db);

    let log = Log::default();
    let stop = CancellationToken::new();
    let generators = [
        (Kind::Read, READS_PER_SECOND),
        (Kind::Write, WRITES_PER_SECOND),
    ]
    .map(|(kind, rate)| load::generate(db.clone(), kind, rate, log.clone(), stop.clone()));

    // Every pool warm before the baseline: new connections are not what it
    // measures.
    tokio::time::sleep(WARM_UP).await;
    let mut phases = vec![baseline(&db).await];
    phases.push(replica_stopped(&cluster, &db).await?);
    phases.push(black_hole(&proxies[LOCAL], &db).await);
    phases.push(failover(&cluster, &proxies[0], &db).await?);

    stop.cancel();
    for generator in generators {
        generator.await?;
    }
    // Let the last calls finish (each is bounded by the 1 s deadline).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    report::close_phases(&mut phases, Instant::now(), db.status().hedging);
    let records = load::snapshot(&log);
    report::print(&phases, &records, &events.take());
    db.close().await;
    drop(proxies);
    Ok(report::summarize(&phases, &records))
}

/// 250 ms probes, 500 ms probe timeout, 1 s deadline; pools of 16 with
/// short timeouts; every other setting (idle check, retry, write hold
/// bounded by the deadline) at its default.
fn config(cluster: &Cluster, proxies: &[FaultProxy]) -> Config {
    let ports: Vec<u16> = proxies.iter().map(FaultProxy::port).collect();
    let mut config = Config::new(node_configs(cluster, &ports));
    config.local_region = LOCAL_REGION.to_owned();
    config.deadline = Duration::from_secs(1);
    config.pool = {
        let mut settings = PoolSettings::default();
        settings.max_size = 16;
        settings.wait_timeout = Duration::from_secs(1);
        settings.create_timeout = Duration::from_secs(1);
        settings.recycle_timeout = Duration::from_millis(500);
        settings.connect_timeout = Duration::from_secs(1);
        settings.keepalive_idle = Duration::from_secs(5);
        settings.tcp_user_timeout = Duration::from_secs(2);
        settings
    };
    config.health = {
        let mut settings = HealthSettings::default();
        settings.interval = health_interval();
        settings.probe_timeout = duration_from_env("BENCH_PROBE_TIMEOUT", 500);
        settings.recovery_initial = Duration::from_millis(250);
        settings.recovery_max = Duration::from_secs(1);
        settings.fall = 1;
        settings.rise = 2;
        settings
    };
    config
}

/// What every proxy does outside the faults: pass, or with
/// `BENCH_LATENCY`, hold each chunk back by that long.
fn no_fault() -> Fault {
    match duration_from_env("BENCH_LATENCY", 0) {
        latency if latency.is_zero() => Fault::Pass,
        latency => Fault::Latency(latency),
    }
}

/// `BENCH_HEALTH_INTERVAL`, or 250 ms.
fn health_interval() -> Duration {
    duration_from_env("BENCH_HEALTH_INTERVAL", 250)
}

/// The humantime duration in `variable`, or `default_ms`.
fn duration_from_env(variable: &str, default_ms: u64) -> Duration {
    match std::env::var(variable) {
        Ok(text) => humantime::parse_duration(&text)
            .unwrap_or_else(|error| panic!("{variable}={text:?}: {error}")),
        Err(_) => Duration::from_millis(default_ms),
    }
}

/// The median round trip of `SELECT 1` on node1, direct and through its
/// proxy (outside the faults: see [`no_fault`]), so the latencies below
/// can be read.
async fn print_proxy_cost(
    cluster: &Cluster,
    proxy: &FaultProxy,
) -> Result<(), Box<dyn std::error::Error>> {
    let direct = cluster.node(LOCAL).pg_config();
    let mut proxied = tokio_postgres::Config::new();
    proxied
        .host("127.0.0.1")
        .port(proxy.port())
        .user("postgres")
        .dbname("postgres");
    let mut medians = Vec::new();
    for config in [direct, proxied] {
        let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
        let driver = tokio::spawn(connection);
        let statement = client.prepare("SELECT 1").await?;
        let mut latencies = Latencies::default();
        for _ in 0..200 {
            let start = Instant::now();
            client.query_one(&statement, &[]).await?;
            latencies.record(start.elapsed());
        }
        medians.push(latencies.quantile(0.5));
        drop(client);
        driver.await??;
    }
    println!(
        "one SELECT 1 round trip to node1, median of 200: direct {} ms, through its FaultProxy {} ms",
        millis(medians[0]),
        millis(medians[1])
    );
    Ok(())
}

fn print_setup(db: &DatabaseManager) {
    let config = db.config();
    println!(
        "load: {READS_PER_SECOND} reads/s ({} strategy, local region {LOCAL_REGION}) and \
         {WRITES_PER_SECOND} writes/s, open loop",
        config.read_strategy
    );
    println!(
        "hedging: {:?}; outliers: {:?}",
        config.hedging, config.outliers
    );
    println!("every proxy outside the faults: {:?}", no_fault());
    println!(
        "health: probe every {:?}, probe timeout {:?}, fall {}, rise {}; deadline {:?}; \
         write hold {:?}; pool {} per node, idle connections checked after {:?}",
        config.health.interval,
        config.health.probe_timeout,
        config.health.fall,
        config.health.rise,
        config.deadline,
        config.write_hold,
        config.pool.max_size,
        config.pool.verify_idle_after
    );
}

async fn baseline(db: &DatabaseManager) -> Phase {
    let mut phase = Phase::new("baseline (no fault)", None, db);
    tokio::time::sleep(BASELINE).await;
    phase.end = Instant::now();
    phase
}

/// (1) The local replica stopped (immediate), started again.
async fn replica_stopped(
    cluster: &Cluster,
    db: &DatabaseManager,
) -> Result<Phase, Box<dyn std::error::Error>> {
    let node = cluster.node(LOCAL).name().to_owned();
    let mut phase = Phase::new("replica stopped and started", Some(node.clone()), db);
    let detection = watch_for_down(db, &node);
    cluster.stop(LOCAL, StopMode::Immediate)?;
    phase.detected = detection.await?;
    sleep_until(phase.start + FAULT_HELD).await;
    cluster.start_node(LOCAL)?;
    phase.cleared = Some(Instant::now());
    phase.recovered = wait_healthy(db, &[&node], true).await;
    tokio::time::sleep(SETTLE).await;
    phase.end = Instant::now();
    Ok(phase)
}

/// (2) The local replica black-holed (packets held, nothing answers), then
/// passed again.
async fn black_hole(proxy: &FaultProxy, db: &DatabaseManager) -> Phase {
    let node = db.status().nodes[LOCAL].name.clone();
    let mut phase = Phase::new("replica black-holed", Some(node.clone()), db);
    let detection = watch_for_down(db, &node);
    proxy.set(Fault::BlackHole);
    phase.detected = detection.await.ok().flatten();
    sleep_until(phase.start + FAULT_HELD).await;
    proxy.set(no_fault());
    phase.cleared = Some(Instant::now());
    phase.recovered = wait_healthy(db, &[&node], true).await;
    tokio::time::sleep(SETTLE).await;
    phase.end = Instant::now();
    phase
}

/// (3) The primary stopped (immediate), or with `BENCH_OLD_PRIMARY=silent`
/// cut off; once pgrouter has marked it down, the local replica is
/// promoted, as an orchestrator would.
async fn failover(
    cluster: &Cluster,
    proxy: &FaultProxy,
    db: &DatabaseManager,
) -> Result<Phase, Box<dyn std::error::Error>> {
    let primary = cluster.node(0).name().to_owned();
    let silent = std::env::var("BENCH_OLD_PRIMARY").is_ok_and(|mode| mode == "silent");
    let what = match silent {
        true => "primary cut off (silent), replica promoted",
        false => "primary stopped, replica promoted",
    };
    let mut phase = Phase::new(what, Some(primary.clone()), db);
    let detection = watch_for_down(db, &primary);
    match silent {
        true => proxy.set(Fault::BlackHole),
        false => cluster.stop(0, StopMode::Immediate)?,
    }
    phase.detected = detection.await?;
    phase.promoting = Some(Instant::now());
    cluster.promote(LOCAL)?;
    phase.promoted = Some(Instant::now());
    print_log_if_slow(cluster, phase.promoting, phase.promoted);
    let new_primary = cluster.node(LOCAL).name().to_owned();
    phase.recovered =
        wait_until(|| db.status().write_target.as_deref() == Some(&new_primary)).await;
    sleep_until(phase.promoted.unwrap_or(phase.start) + AFTER_PROMOTION).await;
    phase.end = Instant::now();
    Ok(phase)
}

/// A promotion normally takes about 100 ms here; when it took over a
/// second, the new primary's log says why.
fn print_log_if_slow(cluster: &Cluster, started: Option<Instant>, returned: Option<Instant>) {
    let (Some(started), Some(returned)) = (started, returned) else {
        return;
    };
    if returned - started < Duration::from_secs(1) {
        return;
    }
    let log = std::fs::read_to_string(cluster.node(LOCAL).log_file()).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    println!(
        "pg_ctl promote took {:.1?}; the end of node{LOCAL}'s log:",
        returned - started
    );
    for line in &lines[lines.len().saturating_sub(25)..] {
        println!("    {line}");
    }
}

/// Watches, from a task of its own, for `node` to show unhealthy in
/// `db.status()`: the testkit's cluster methods block the calling task for
/// the whole `pg_ctl` run (~100 ms), which would otherwise delay the first
/// look at the status.
fn watch_for_down(db: &DatabaseManager, node: &str) -> JoinHandle<Option<Instant>> {
    let (db, node) = (db.clone(), node.to_owned());
    tokio::spawn(async move { wait_healthy(&db, &[&node], false).await })
}

/// When every named node's `healthy` became `healthy` in `db.status()`.
async fn wait_healthy(db: &DatabaseManager, nodes: &[&str], healthy: bool) -> Option<Instant> {
    wait_until(|| {
        let status = db.status();
        nodes.iter().all(|name| {
            status
                .node(name)
                .is_some_and(|node| node.healthy == healthy)
        })
    })
    .await
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

async fn sleep_until(instant: Instant) {
    tokio::time::sleep_until(instant.into()).await;
}
