//! A service under load: an axum service over pgrouter
//! (tools/bench_service_app), built against different library versions or
//! run with different settings, under the same closed loop, on the same
//! cluster, back to back in one run.
//!
//! The tool starts a local cluster (a primary and two streaming replicas,
//! regions us-east-1, eu-west-1, ap-south-1) with a `FaultProxy` in front
//! of every node, seeds `ITEMS` rows into `items`, and then, for each round
//! and each service given (the order rotated every round), starts the
//! service as a child process pointed at the proxies, in eu-west-1
//! (regional-preferred reads go to node1, the local replica), and drives it
//! with `BENCH_CLIENTS` (32) closed-loop HTTP clients, 80 % `GET
//! /items/{id}` (a point read, `db.read().query_opt`) and 20 % `POST
//! /items` (an insert transaction on the primary). After a warm-up it
//! measures three windows of `BENCH_WINDOW` (10 s) each: requests, p50,
//! p99, errors:
//!
//! 1. **no fault**;
//! 2. **after a black hole**: node1's proxy black-holes everything for
//!    `BENCH_FAULT_HELD` (3 s), then passes again; the window starts then;
//! 3. **after a restart**: node1 is stopped (`pg_ctl stop -m fast`), held
//!    down for `BENCH_FAULT_HELD`, started again; the window starts once
//!    `pg_ctl start -w` returns.
//!
//! `BENCH_READ_PERCENT` (80) sets the mix. The service process's CPU time
//! per request (user and system, from `/proc/PID/stat`) is printed beside
//! each window: on a shared, oversubscribed box the service gets about a
//! fixed share of the CPUs, so its cost per request moves its throughput
//! more directly than any latency does.
//!
//! So are the sessions opened on the servers in the window
//! (`pg_stat_database.sessions`, all three nodes: new pool connections)
//! and the share of transactions each node committed (`xact_commit`: a
//! read is one, so node1's share is where the reads went).
//!
//! The load runs through the faults too (their errors are printed per
//! run). After `BENCH_ROUNDS` (5) rounds it prints, per service and window,
//! the medians over the rounds, and the ratios asked for with `--compare`
//! (default: every service against the first): throughput (requests) and
//! p99, as ratios of the medians and the range of the per-round ratios
//! (the two services of a pair ran minutes apart at most).
//!
//! ```text
//! bench_service --service NAME=BINARY[,VAR=VALUE...] ... [--compare A/B ...]
//! ```
//!
//! `VAR=VALUE` pairs go to that service's environment, e.g.
//! `SERVICE_HEDGING=on`, `SERVICE_OUTLIERS=off` or
//! `SERVICE_SET=outliers.silence=1s` (any setting, through the config's
//! serde form; HEAD's build only; see tools/bench_service_app/src/main.rs).
//! Without them every setting is the library's default, as shipped.
//!
//! # Building the two services and running the comparison (issue #22)
//!
//! From the root of this repository, with the commit to compare against
//! (37aa5ce) checked out beside it:
//!
//! ```text
//! # The service against this checkout's pgrouter (HEAD).
//! cargo build --release --manifest-path tools/bench_service_app/Cargo.toml
//! cp tools/bench_service_app/target/release/bench-service-app /tmp/bench-service-head
//!
//! # The same source against 37aa5ce, whose API differs (`--features old`).
//! git worktree add ../old-37aa5ce 37aa5ce
//! mkdir -p ../old-37aa5ce/tools
//! cp -r tools/bench_service_app ../old-37aa5ce/tools/
//! cargo build --release --features old \
//!     --manifest-path ../old-37aa5ce/tools/bench_service_app/Cargo.toml
//! cp ../old-37aa5ce/tools/bench_service_app/target/release/bench-service-app /tmp/bench-service-old
//!
//! cargo run --release -p pgrouter-tools --bin bench_service -- \
//!     --service old=/tmp/bench-service-old \
//!     --service head=/tmp/bench-service-head \
//!     --service head-hedging=/tmp/bench-service-head,SERVICE_HEDGING=on \
//!     --compare head/old --compare head-hedging/head
//! ```
//!
//! (With `CARGO_TARGET_DIR` set, both builds put the binary at the same
//! path under it: copy each away before the next build.) The
//! service crate is a workspace of its own (`[workspace]` in its
//! Cargo.toml) with its own Cargo.lock, the same dependency versions for
//! both builds; its path dependency `../..` is the checkout it sits in.
//!
//! Every process (the clients, the proxies, the service, the three
//! PostgreSQL servers) shares this machine's CPUs: the figures are for a
//! service that is CPU-bound on the same box, and they move with whatever
//! else runs there (the load average is printed per run).

// Shared with the other bench binaries; not all of it is used here.
#[allow(dead_code, unused_imports)]
#[path = "../../common.rs"]
mod common;
mod load;
mod report;

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::LOCAL_REGION;
use load::Load;
use pgrouter_testkit::{Cluster, Fault, FaultProxy, StopMode};
use report::{Run, Service};

/// Rows seeded into `items`; reads pick ids among them.
const ITEMS: i64 = 10_000;
/// node0 (primary), node1, node2 live in these regions.
const REGIONS: [&str; 3] = ["us-east-1", "eu-west-1", "ap-south-1"];
/// The local replica, the one the faults hit.
const LOCAL: usize = 1;
/// Load before the first window, not reported (pools fill, caches warm).
const WARM_UP: Duration = Duration::from_secs(3);
/// How long the service may take to answer `/health`.
const START_LIMIT: Duration = Duration::from_secs(30);

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (services, compares) = report::parse_args(std::env::args().skip(1))?;
    let rounds = env_number("BENCH_ROUNDS", 5)?;
    let clients = env_number("BENCH_CLIENTS", 32)?;
    let read_percent = u32::try_from(env_number("BENCH_READ_PERCENT", 80)?.min(100))?;
    let window = env_duration("BENCH_WINDOW", Duration::from_secs(10))?;
    let held = env_duration("BENCH_FAULT_HELD", Duration::from_secs(3))?;
    let started = Instant::now();

    let cluster = start_cluster()?;
    let mut proxies = Vec::new();
    for node in cluster.nodes() {
        proxies.push(FaultProxy::start(node.addr()).await?);
    }
    let nodes = service_nodes(&cluster, &proxies);
    println!(
        "{clients} closed-loop clients, {read_percent} % GET /items/{{id}} (ids 1..={ITEMS}), \
         {} % POST /items; \
         windows of {window:?}; faults held {held:?}; {rounds} rounds; local region \
         {LOCAL_REGION} (node{LOCAL}); load average at start {}",
        100 - read_percent,
        load_average()
    );
    let mut runs: Vec<Run> = Vec::new();
    for round in 0..rounds {
        for offset in 0..services.len() {
            let index = (round + offset) % services.len();
            let service = &services[index];
            let run = run_service(
                &cluster,
                &proxies,
                &nodes,
                service,
                (clients, read_percent),
                window,
                held,
            )
            .await
            .map_err(|error| format!("{} (round {}): {error}", service.name, round + 1))?;
            report::print_run(round + 1, service, &run);
            runs.push(run.with(index, round));
        }
    }
    report::print_summary(&services, &compares, &runs);
    println!(
        "\nload average at the end {}; total time {:.0?}",
        load_average(),
        started.elapsed()
    );
    Ok(())
}

/// A primary and two streaming replicas with `items` seeded.
fn start_cluster() -> Result<Cluster, Box<dyn std::error::Error>> {
    let cluster = Cluster::start(2)?;
    cluster.psql(
        0,
        &format!(
            "CREATE TABLE items (id bigserial PRIMARY KEY, name text NOT NULL);
             INSERT INTO items (name) SELECT 'item ' || g FROM generate_series(1, {ITEMS}) g;
             ANALYZE items;"
        ),
    )?;
    cluster.wait_for_replicas(Duration::from_secs(30))?;
    Ok(cluster)
}

/// `SERVICE_NODES` for the service: every node through its proxy.
fn service_nodes(cluster: &Cluster, proxies: &[FaultProxy]) -> String {
    cluster
        .nodes()
        .iter()
        .zip(proxies)
        .zip(REGIONS)
        .enumerate()
        .map(|(index, ((node, proxy), region))| {
            let role = if index == 0 { "primary" } else { "replica" };
            format!(
                "{}|{region}|{role}|host=127.0.0.1 port={} user={} dbname={}",
                node.name(),
                proxy.port(),
                node.client_user(),
                node.dbname()
            )
        })
        .collect::<Vec<_>>()
        .join(";")
}

/// One service, started fresh: warm-up, then the three windows.
async fn run_service(
    cluster: &Cluster,
    proxies: &[FaultProxy],
    nodes: &str,
    service: &Service,
    (clients, read_percent): (usize, u32),
    window: Duration,
    held: Duration,
) -> Result<Run, Box<dyn std::error::Error>> {
    blocking(|| cluster.wait_for_replicas(Duration::from_secs(30))).await?;
    let load_before = load_average();
    let addr = free_addr()?;
    let mut child = ChildGuard(
        Command::new(&service.binary)
            .envs(service.env.iter().map(|(k, v)| (k, v)))
            .env("LISTEN_ADDR", addr.to_string())
            .env("SERVICE_NODES", nodes)
            .env("SERVICE_LOCAL_REGION", LOCAL_REGION)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|error| format!("{}: {error}", service.binary))?,
    );
    let limit = Instant::now() + START_LIMIT;
    while !load::healthy(addr).await {
        if let Some(status) = child.0.try_wait()? {
            return Err(format!("the service exited at start: {status}").into());
        }
        if Instant::now() > limit {
            return Err(format!("no answer on {addr} within {START_LIMIT:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let load = Load::start(addr, clients, read_percent, ITEMS);
    let mut meter = Meter {
        cpu: CpuMeter::start(child.0.id()),
        stats: node_stats(cluster).await,
    };
    tokio::time::sleep(WARM_UP).await;
    meter.lap(&load, cluster).await;
    tokio::time::sleep(window).await;
    let no_fault = meter.lap(&load, cluster).await;

    proxies[LOCAL].set(Fault::BlackHole);
    tokio::time::sleep(held).await;
    proxies[LOCAL].set(Fault::Pass);
    let during_black_hole = meter.lap(&load, cluster).await;
    tokio::time::sleep(window).await;
    let after_black_hole = meter.lap(&load, cluster).await;

    let down = Instant::now();
    blocking(|| cluster.stop(LOCAL, StopMode::Fast)).await?;
    tokio::time::sleep_until((down + held).into()).await;
    blocking(|| cluster.start_node(LOCAL)).await?;
    let during_restart = meter.lap(&load, cluster).await;
    tokio::time::sleep(window).await;
    let after_restart = meter.lap(&load, cluster).await;

    load.stop().await;
    drop(child);
    Ok(Run {
        service: 0,
        round: 0,
        load_average: load_before,
        windows: [no_fault, after_black_hole, after_restart],
        during: [during_black_hole, during_restart],
    })
}

/// What each window records beside the load's own figures.
struct Meter {
    cpu: CpuMeter,
    /// Sessions opened and transactions committed on each node so far.
    stats: Option<Vec<(i64, i64)>>,
}

impl Meter {
    /// Ends the load's window, with the CPU time and sessions since the
    /// last call.
    async fn lap(&mut self, load: &Load, cluster: &Cluster) -> load::Window {
        let mut window = load.take();
        window.service_cpu = self.cpu.lap();
        let now = node_stats(cluster).await;
        if let (Some(now), Some(last)) = (&now, &self.stats) {
            // Less this count's own session and transaction the time
            // before, one a node.
            let deltas = now
                .iter()
                .zip(last)
                .map(|(n, l)| (n.0 - l.0 - 1, n.1 - l.1 - 1));
            let (sessions, commits): (Vec<i64>, Vec<i64>) = deltas.unzip();
            window.sessions = Some(sessions.iter().sum());
            window.commits = Some(commits);
        }
        self.stats = now;
        window
    }
}

/// Per node, sessions ever opened on its database and transactions
/// committed there (`pg_stat_database.sessions`, `xact_commit`, which
/// PostgreSQL publishes within about a second); `None` when a node does not
/// answer (the restarting one).
async fn node_stats(cluster: &Cluster) -> Option<Vec<(i64, i64)>> {
    let mut stats = Vec::new();
    for node in cluster.nodes() {
        let (client, connection) = node.pg_config().connect(tokio_postgres::NoTls).await.ok()?;
        let driver = tokio::spawn(connection);
        let row = client
            .query_one(
                "SELECT sessions, xact_commit FROM pg_stat_database \
                 WHERE datname = current_database()",
                &[],
            )
            .await;
        drop(client);
        let _ = driver.await;
        let row = row.ok()?;
        stats.push((row.try_get(0).ok()?, row.try_get(1).ok()?));
    }
    Some(stats)
}

/// The service process's CPU time (user and system, all its threads) from
/// `/proc/PID/stat`, in clock ticks of 10 ms (`CLK_TCK` is 100 on Linux).
struct CpuMeter {
    pid: u32,
    last: Option<u64>,
}

impl CpuMeter {
    fn start(pid: u32) -> CpuMeter {
        CpuMeter {
            pid,
            last: cpu_ticks(pid),
        }
    }

    /// The CPU time used since the last call.
    fn lap(&mut self) -> Option<Duration> {
        let now = cpu_ticks(self.pid);
        let used = now
            .zip(self.last)
            .map(|(now, last)| now.saturating_sub(last));
        self.last = now;
        used.map(|ticks| Duration::from_millis(ticks * 10))
    }
}

/// utime + stime of `pid` in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), from field 3.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Kills the service when dropped (also on an early return).
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback address no one listens on now.
fn free_addr() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// Runs a blocking testkit call (`pg_ctl`, `psql`) off the runtime's
/// workers, so the clients and the proxies keep running.
async fn blocking<T>(
    f: impl FnOnce() -> Result<T, pgrouter_testkit::TestkitError>,
) -> Result<T, Box<dyn std::error::Error>> {
    Ok(tokio::task::block_in_place(f)?)
}

/// `/proc/loadavg`'s first three figures.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".to_owned())
}

fn env_number(variable: &str, default: usize) -> Result<usize, String> {
    match std::env::var(variable) {
        Ok(text) => text
            .trim()
            .parse()
            .map_err(|error| format!("{variable}={text:?}: {error}")),
        Err(_) => Ok(default),
    }
}

fn env_duration(variable: &str, default: Duration) -> Result<Duration, String> {
    match std::env::var(variable) {
        Ok(text) => humantime::parse_duration(&text)
            .map_err(|error| format!("{variable}={text:?}: {error}")),
        Err(_) => Ok(default),
    }
}

impl Run {
    fn with(mut self, service: usize, round: usize) -> Run {
        self.service = service;
        self.round = round;
        self
    }
}
