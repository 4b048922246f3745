//! Client cost of one routed `SELECT 1` read over three nodes, per read
//! strategy, counted in instructions and allocations, beside bare
//! deadpool-postgres making the same choice of server by hand: one pool on
//! node1 (what regional-preferred reads use), or one pool per node with a
//! pool drawn at random per read (what global-random and nearest do on
//! loopback, where every node is within nearest's window).
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

// A global allocator is an `unsafe` trait; each call forwards to `System`.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use pgrouter::deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use pgrouter::tokio_postgres::NoTls;
use pgrouter::Config;
use pgrouter::DatabaseManager;
use pgrouter_testkit::Cluster;

/// Default query counts of the two runs whose difference is measured.
const DEFAULT_QUERIES: (u64, u64) = (2_000, 12_000);
/// Rows of the per-function breakdown.
const BREAKDOWN_ROWS: usize = 30;
/// Reads before the measured part of every run.
const WARM_UP: u64 = 200;

/// The system allocator, counting allocations while `COUNTING` is set.
/// The worker is single-threaded (a current-thread runtime), so a global
/// flag counts exactly the measured loop.
struct CountingAllocator;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

fn note_allocation() {
    if COUNTING.load(Ordering::Relaxed) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to `System`; counting touches
// only atomics, which never allocate.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// The clients compared, in `ALL`'s order (their discriminants index it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    Deadpool,
    DeadpoolSpread,
    Regional,
    Global,
    Nearest,
}

impl Client {
    const ALL: [Client; 5] = [
        Client::Deadpool,
        Client::DeadpoolSpread,
        Client::Regional,
        Client::Global,
        Client::Nearest,
    ];

    fn arg(self) -> &'static str {
        match self {
            Client::Deadpool => "deadpool",
            Client::DeadpoolSpread => "deadpool-spread",
            Client::Regional => "regional-preferred",
            Client::Global => "global-random",
            Client::Nearest => "nearest",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Client::Deadpool => "bare deadpool, node1",
            Client::DeadpoolSpread => "bare deadpool, random of 3",
            Client::Regional => "pgrouter regional-preferred",
            Client::Global => "pgrouter global-random",
            Client::Nearest => "pgrouter nearest",
        }
    }

    /// The bare client that makes this strategy's choice by hand.
    fn baseline(self) -> Option<Client> {
        match self {
            Client::Deadpool | Client::DeadpoolSpread => None,
            Client::Regional => Some(Client::Deadpool),
            Client::Global | Client::Nearest => Some(Client::DeadpoolSpread),
        }
    }

    fn parse(arg: &str) -> Option<Client> {
        Client::ALL.into_iter().find(|client| client.arg() == arg)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(position) = args.iter().position(|arg| arg == "--worker") {
        let client = args.get(position + 1).and_then(|arg| Client::parse(arg));
        let queries = args.get(position + 2).and_then(|arg| arg.parse().ok());
        let url = args.get(position + 3);
        match (client, queries, url) {
            (Some(client), Some(queries), Some(url)) => worker(client, queries, url),
            _ => panic!("usage: --worker CLIENT QUERIES URL|URL|URL"),
        }
        return;
    }
    // `cargo test --benches` runs bench binaries with `--test`: nothing to
    // measure then.
    if args.iter().any(|arg| arg == "--test") {
        return;
    }
    driver();
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
        let allocations = per_query(small, large, |queries| {
            let output = run(Command::new(&exe).args(worker_args(client, queries, &url)));
            field(&output, "allocations")
        });
        // The whole run's instructions a read, and each function's own.
        let profiles = valgrind.then(|| {
            let at_small = callgrind(&exe, client, small, &url);
            let at_large = callgrind(&exe, client, large, &url);
            let instructions = (at_large.total as f64 - at_small.total as f64) / reads;
            let mut functions = at_large.functions;
            for (name, count) in functions.iter_mut() {
                let before = at_small.functions.get(name).copied().unwrap_or(0);
                *count = count.saturating_sub(before);
            }
            (instructions, functions)
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

/// The functions whose own instructions a read differ most between the two
/// clients: where pgrouter's extra goes.
fn breakdown(bare: &HashMap<String, u64>, routed: &HashMap<String, u64>, reads: f64) {
    let mut names: Vec<&String> = bare.keys().chain(routed.keys()).collect();
    names.sort();
    names.dedup();
    let per_read = |map: &HashMap<String, u64>, name: &String| {
        map.get(name).copied().unwrap_or(0) as f64 / reads
    };
    let mut rows: Vec<(f64, f64, f64, &String)> = names
        .into_iter()
        .map(|name| {
            let (b, r) = (per_read(bare, name), per_read(routed, name));
            (r - b, b, r, name)
        })
        .filter(|(difference, ..)| difference.abs() >= 40.0)
        .collect();
    rows.sort_by(|a, b| b.0.abs().total_cmp(&a.0.abs()));
    println!("\nwhere the difference goes (own instructions a read, |difference| >= 40):");
    println!("{:>8} {:>8} {:>8}  function", "diff", "bare", "pgrouter");
    for (difference, b, r, name) in rows.iter().take(BREAKDOWN_ROWS) {
        let name: String = name.chars().take(110).collect();
        println!("{difference:>+8.0} {b:>8.0} {r:>8.0}  {name}");
    }
    let shown: f64 = rows.iter().take(BREAKDOWN_ROWS).map(|row| row.0).sum();
    println!("{shown:>+8.0}                    (sum of the rows shown)");
}

fn queries() -> (u64, u64) {
    let Ok(value) = std::env::var("BENCH_QUERIES") else {
        return DEFAULT_QUERIES;
    };
    let parsed: Vec<u64> = value
        .split(',')
        .filter_map(|part| part.trim().parse().ok())
        .collect();
    match parsed[..] {
        [small, large] if small < large => (small, large),
        _ => panic!("BENCH_QUERIES must be two increasing counts, e.g. 2000,12000"),
    }
}

/// The per-query cost from whole-run totals at two query counts.
fn per_query(small: u64, large: u64, mut total: impl FnMut(u64) -> u64) -> f64 {
    let at_small = total(small);
    let at_large = total(large);
    (at_large as f64 - at_small as f64) / (large - small) as f64
}

fn worker_args(client: Client, queries: u64, url: &str) -> Vec<String> {
    vec![
        "--worker".to_owned(),
        client.arg().to_owned(),
        queries.to_string(),
        url.to_owned(),
    ]
}

fn valgrind_available() -> bool {
    Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success())
}

/// A callgrind run: the whole-process instruction count, and each
/// function's own (exclusive) count.
struct Profile {
    total: u64,
    functions: HashMap<String, u64>,
}

/// The worker's whole-process instruction count under callgrind.
fn callgrind(exe: &Path, client: Client, queries: u64, url: &str) -> Profile {
    let out = tempfile::NamedTempFile::new().expect("a temporary file");
    let mut command = Command::new("valgrind");
    command
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.path().display()))
        .arg(exe)
        .args(worker_args(client, queries, url));
    let _ = run(&mut command);
    let profile = std::fs::read_to_string(out.path()).expect("callgrind's output file");
    let total = profile
        .lines()
        .find_map(|line| {
            line.strip_prefix("summary:")
                .or_else(|| line.strip_prefix("totals:"))
        })
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .expect("a summary line in callgrind's output");
    let annotated = run(Command::new("callgrind_annotate")
        .arg("--threshold=100")
        .arg(out.path()));
    Profile {
        total,
        functions: functions(&annotated),
    }
}

/// Per-function exclusive counts from `callgrind_annotate`'s table: lines
/// such as `1,234 ( 0.5%)  ???:name [object]`.
fn functions(annotated: &str) -> HashMap<String, u64> {
    let mut functions = HashMap::new();
    for line in annotated.lines() {
        let Some((count, rest)) = line.trim_start().split_once(" (") else {
            continue;
        };
        let Ok(count) = count.replace(',', "").parse::<u64>() else {
            continue;
        };
        let Some((_, name)) = rest.split_once(")  ") else {
            continue;
        };
        if name.contains("PROGRAM TOTALS") {
            continue;
        }
        // `file:function [object]`: keep the function.
        let name = name.rsplit_once(" [").map_or(name, |(name, _)| name);
        let name = name.split_once(':').map_or(name, |(_, name)| name);
        *functions.entry(name.trim().to_owned()).or_insert(0) += count;
    }
    functions
}

fn run(command: &mut Command) -> String {
    let output = command.output().expect("the worker starts");
    assert!(
        output.status.success(),
        "worker failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("the worker prints UTF-8")
}

fn field(output: &str, name: &str) -> u64 {
    output
        .lines()
        .find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix('=')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {name}= line in the worker's output: {output}"))
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
                let strategy = match strategy {
                    Client::Regional => pgrouter::ReadStrategy::RegionalPreferred,
                    Client::Global => pgrouter::ReadStrategy::GlobalRandom,
                    _ => pgrouter::ReadStrategy::Nearest,
                };
                let db = router(url).await;
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

/// Warms up, then runs `queries` reads one after another, counting
/// allocations.
async fn measure<F, Fut>(queries: u64, read: F) -> u64
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..WARM_UP {
        read().await;
    }
    ALLOCATIONS.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::Relaxed);
    for _ in 0..queries {
        read().await;
    }
    COUNTING.store(false, Ordering::Relaxed);
    ALLOCATIONS.load(Ordering::Relaxed)
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

async fn router(url: &str) -> DatabaseManager {
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
    DatabaseManager::new(config)
        .await
        .expect("the router starts")
}
