//! Client cost of one routed `SELECT 1` read, counted in instructions and
//! allocations, beside the same read through a bare deadpool-postgres pool.
//!
//! ```text
//! cargo bench --bench instructions
//! ```
//!
//! Timings on a small shared machine cannot show a difference of a few
//! percent; instruction counts can: `valgrind --tool=callgrind` counts the
//! same total for the same binary and input whatever else the machine does.
//! The bench starts a one-node local cluster, then runs itself as a worker
//! under callgrind: once per client and per query count, a current-thread
//! tokio runtime that connects, warms up (statement prepared, pool filled),
//! and then runs `N` reads one after another. Each worker's whole-process
//! total is taken at two query counts, and the per-query cost is their
//! difference divided by the difference in queries, so connecting, warming
//! up and exiting cancel out. Allocations are counted the same way by a
//! counting global allocator in a worker run natively.
//!
//! Both clients use a pool of one connection per node, `prepare_cached`, and
//! `query_one`: the bare client is what a service without pgrouter would
//! write; pgrouter's is `db.read().query_one("SELECT 1", &[])` with its
//! defaults (one node, the primary, so every read goes there). A third row
//! runs the bare client with one timer pending in its runtime, as a
//! service's runtime has (an HTTP server's timeouts, pgrouter's own
//! monitor): tokio then parks every wake-up with a timeout, which costs
//! each read whoever set the timer. Two more rows run the bare client and
//! pgrouter's read with four tasks at once on the one connection, as a
//! service under load has more requests than connections: three of every
//! four reads wait for a free slot (bounded by the call's deadline and the
//! pool's wait timeout in pgrouter's; deadpool's default, no timeout, in
//! the bare one). The health
//! monitor probes at start-up and then every 10 minutes, so no probe falls
//! inside a run. `BENCH_QUERIES=A,B` overrides the two query counts.
//! Requires `valgrind` on `PATH`; without it the allocation rows are still
//! printed. Last, the sizes of the futures a caller holds (a read, a write,
//! a transaction, a statement in one): this bench awaits each where it is
//! made, but a service moves them (a web framework boxes each handler's
//! future, whole), and every move copies all of it.

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

use callgrind::{
    breakdown, client_cost, counted, dispatch, measure, queries, valgrind_available, WARM_UP,
};

/// The clients compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    Deadpool,
    /// The bare pool in a runtime with one timer pending, as any service's
    /// runtime has (an HTTP server's timeouts; pgrouter's health monitor):
    /// the runtime then parks with a timeout, which costs every wake-up.
    DeadpoolTimer,
    Pgrouter,
    /// The bare pool, [`TASKS`] tasks reading at once on its connection.
    DeadpoolBusy,
    /// pgrouter's read, [`TASKS`] tasks at once on its one connection.
    PgrouterBusy,
}

/// Tasks reading at once in the busy rows, on one connection.
const TASKS: u64 = 4;

impl Client {
    const ALL: [Client; 5] = [
        Client::Deadpool,
        Client::DeadpoolTimer,
        Client::Pgrouter,
        Client::DeadpoolBusy,
        Client::PgrouterBusy,
    ];

    fn arg(self) -> &'static str {
        match self {
            Client::Deadpool => "deadpool",
            Client::DeadpoolTimer => "deadpool-timer",
            Client::Pgrouter => "pgrouter",
            Client::DeadpoolBusy => "deadpool-busy",
            Client::PgrouterBusy => "pgrouter-busy",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Client::Deadpool => "bare deadpool pool",
            Client::DeadpoolTimer => "bare, a timer pending",
            Client::Pgrouter => "pgrouter read (routed)",
            Client::DeadpoolBusy => "bare, 4 tasks 1 conn",
            Client::PgrouterBusy => "pgrouter, 4 tasks 1 conn",
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
    let cluster = Cluster::start(0).expect("a one-node local cluster");
    let url = cluster.nodes()[0].connection_string();
    let exe = std::env::current_exe().expect("the bench binary's path");
    let valgrind = valgrind_available();
    if !valgrind {
        println!("valgrind not found on PATH: instruction counts skipped");
    }
    println!(
        "SELECT 1 reads against one local node (difference of runs of {large} and {small} reads)\n"
    );
    println!(
        "{:<24} {:>18} {:>18}",
        "client", "instructions/read", "allocations/read"
    );
    let reads = (large - small) as f64;
    let mut results = Vec::new();
    for client in Client::ALL {
        let (profiles, allocations) = client_cost(&exe, (small, large), valgrind, |queries| {
            worker_args(client, queries, &url)
        });
        println!(
            "{:<24} {:>18} {:>18.2}",
            client.label(),
            profiles
                .as_ref()
                .map_or("-".to_owned(), |(count, _)| format!("{count:.0}")),
            allocations
        );
        results.push((profiles, allocations));
    }
    let instructions = |client: Client| {
        let row = Client::ALL.iter().position(|each| *each == client);
        let (profile, allocations) = &results[row.expect("every client has a row")];
        profile
            .as_ref()
            .map(|(count, functions)| (*count, functions, *allocations))
    };
    if let (
        Some((bare, bare_functions, bare_allocations)),
        Some((timer, _, _)),
        Some((routed, routed_functions, routed_allocations)),
    ) = (
        instructions(Client::Deadpool),
        instructions(Client::DeadpoolTimer),
        instructions(Client::Pgrouter),
    ) {
        println!(
            "\npgrouter: {:+.0} instructions a read ({:.3}× bare deadpool, {:+.1}%), {:+.2} allocations a read",
            routed - bare,
            routed / bare,
            (routed / bare - 1.0) * 100.0,
            routed_allocations - bare_allocations,
        );
        println!(
            "a pending timer costs the bare pool {:+.0} instructions a read; pgrouter is {:.3}× that",
            timer - bare,
            routed / timer,
        );
        if let (
            Some((bare_busy, _, bare_busy_allocations)),
            Some((routed_busy, _, routed_busy_allocations)),
        ) = (
            instructions(Client::DeadpoolBusy),
            instructions(Client::PgrouterBusy),
        ) {
            println!(
                "{TASKS} tasks on one connection: pgrouter {:+.0} instructions a read ({:.3}× bare), {:+.2} allocations a read",
                routed_busy - bare_busy,
                routed_busy / bare_busy,
                routed_busy_allocations - bare_busy_allocations,
            );
        }
        breakdown(bare_functions, routed_functions, reads);
    }
    future_sizes(&url);
    drop(cluster);
}

/// The size of the futures a caller holds: each is copied whole when it is
/// moved (into a `Box::pin`, as a web framework does with a handler's
/// future, or into a spawned task), before its first poll.
fn future_sizes(url: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
    runtime.block_on(async {
        let db = router(url).await;
        let read = size_of_val(&db.read().query_one("SELECT 1", &[]));
        let write = size_of_val(&db.write().execute("SELECT 1", &[]));
        let transaction = size_of_val(&db.transaction(|tx| {
            Box::pin(async move { tx.execute("SELECT 1", &[]).await.map(drop) })
        }));
        let statement = db
            .transaction(|tx| {
                Box::pin(async move { Ok(size_of_val(&tx.execute("SELECT 1", &[]))) })
            })
            .await
            .expect("a transaction");
        println!(
            "\nfuture sizes (bytes): read {read}, write {write}, transaction {transaction}, \
             a statement in a transaction {statement}"
        );
        db.close().await;
    });
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
            Client::Deadpool | Client::DeadpoolTimer => {
                if client == Client::DeadpoolTimer {
                    drop(tokio::spawn(tokio::time::sleep(Duration::from_secs(3600))));
                }
                let pool = bare_pool(url);
                measure(queries, || bare_read(&pool)).await
            }
            Client::Pgrouter => {
                let db = router(url).await;
                let allocations = measure(queries, || routed_read(&db)).await;
                db.close().await;
                allocations
            }
            Client::DeadpoolBusy | Client::PgrouterBusy if !queries.is_multiple_of(TASKS) => {
                panic!("the busy rows need query counts that are multiples of {TASKS}")
            }
            Client::DeadpoolBusy => {
                let pool: &'static Pool = Box::leak(Box::new(bare_pool(url)));
                busy(queries, || bare_read(pool)).await
            }
            Client::PgrouterBusy => {
                let db: &'static DatabaseManager = Box::leak(Box::new(router(url).await));
                let allocations = busy(queries, || routed_read(db)).await;
                db.close().await;
                allocations
            }
        }
    });
    println!("allocations={allocations}");
}

/// The bare client's read.
async fn bare_read(pool: &Pool) {
    let client = pool.get().await.expect("a connection");
    let statement = client.prepare_cached("SELECT 1").await.expect("prepared");
    let row = client.query_one(&statement, &[]).await.expect("a row");
    assert_eq!(row.get::<_, i32>(0), 1);
}

/// pgrouter's read.
async fn routed_read(db: &DatabaseManager) {
    let row = db.read().query_one("SELECT 1", &[]).await.expect("a row");
    assert_eq!(row.get::<_, i32>(0), 1);
}

/// Warms up, then runs `queries` reads in [`TASKS`] tasks at once, each
/// its share one after another, counting allocations.
async fn busy<F, Fut>(queries: u64, read: F) -> u64
where
    F: Fn() -> Fut + Copy + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    in_tasks(WARM_UP, read).await;
    counted(in_tasks(queries, read)).await
}

/// `queries` reads in [`TASKS`] tasks at once.
async fn in_tasks<F, Fut>(queries: u64, read: F)
where
    F: Fn() -> Fut + Copy + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            tokio::spawn(async move {
                for _ in 0..queries / TASKS {
                    read().await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("a reader task");
    }
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
    let mut config = Config::builder()
        .primary("primary", "local", url)
        .build()
        .expect("a valid configuration");
    config.pool.max_size = 1;
    config.health.interval = Duration::from_secs(600);
    DatabaseManager::new(config)
        .await
        .expect("the router starts")
}
