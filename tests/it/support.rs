//! Shared set-up for the integration tests: a real local cluster (primary +
//! two streaming replicas, one per region) and a manager with short timings.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use pgrouter::config::HealthSettings;
use pgrouter::config::NodeConfig;
use pgrouter::config::PoolSettings;
use pgrouter::config::RetrySettings;
use pgrouter::config::StatementMode;
use pgrouter::tokio_postgres::{Client, NoTls};
use pgrouter::Config;
use pgrouter::DatabaseManager;
use pgrouter::Error;
use pgrouter::ReadStrategy;
use pgrouter::Role;
use pgrouter_testkit::{
    Backend, Cluster, ClusterBuilder, FaultProxy, Flavour, PgBouncer, Pooler, POOLER_ENV,
};

/// node0 (primary), node1, node2 live in these regions.
pub const REGIONS: [&str; 3] = ["us-east-1", "eu-west-1", "ap-south-1"];
/// The service under test runs next to node1.
pub const LOCAL_REGION: &str = "eu-west-1";

/// Slack added to an upper bound on how long a call may wait (its deadline,
/// a write hold) before the bound is checked. The waits themselves are
/// tokio timers, which fire on time; what the slack absorbs is the machine:
/// on a loaded two-core box (say, a release build running beside the
/// tests) a ready task can wait hundreds of milliseconds for a core, a
/// connection attempt or a cancel request can be as slow, and several of
/// those can stack up in one call, so 500 ms (the old slack) left little
/// margin. 1 s is still small next to the waits under test (a 3 s deadline,
/// a 2 s hold), so an overrun — a wait that ignored its bound — is caught.
/// The exact timing rules are covered by paused-clock unit tests.
pub const SLACK: Duration = Duration::from_secs(1);

/// Timings short enough for tests, with the same shape as the defaults.
pub fn fast_config(nodes: Vec<NodeConfig>) -> Config {
    let mut config = Config::new(nodes);
    config.local_region = LOCAL_REGION.to_owned();
    config.deadline = Duration::from_secs(3);
    config.pool = {
        let mut settings = PoolSettings::default();
        settings.max_size = 8;
        settings.wait_timeout = Duration::from_secs(1);
        settings.create_timeout = Duration::from_secs(1);
        settings.recycle_timeout = Duration::from_millis(500);
        settings.verify_idle_after = Duration::from_secs(1);
        settings.connect_timeout = Duration::from_secs(1);
        settings.keepalive_idle = Duration::from_secs(5);
        settings.tcp_user_timeout = Duration::from_secs(2);
        settings
    };
    config.health = {
        let mut settings = HealthSettings::default();
        settings.interval = Duration::from_millis(200);
        settings.probe_timeout = Duration::from_millis(500);
        settings.recovery_initial = Duration::from_millis(200);
        settings.recovery_max = Duration::from_secs(1);
        settings.fall = 1;
        settings.rise = 2;
        settings
    };
    // Hedged reads and outlier detection stay on, but only a stalled node
    // reaches these delays: tests elsewhere check which node served a read,
    // and a loaded machine's slow reads (a few ms) must not move them.
    // tests/it/hedging.rs uses the defaults.
    config.hedging.min_delay = Duration::from_millis(250);
    config.outliers.silence = Duration::from_millis(250);
    config.retry = {
        let mut settings = RetrySettings::default();
        settings.max_retries = 3;
        settings.min_delay = Duration::from_millis(50);
        settings.max_delay = Duration::from_millis(400);
        settings.jitter = true;
        settings
    };
    // Behind a transaction pooler, named statements do not survive.
    if pooler() == Pooler::PgBouncer {
        config.statement_mode = StatementMode::Unnamed;
    }
    config
}

/// The pooler `PGROUTER_TESTKIT_POOLER` puts in front of every node of the
/// clusters [`start_cluster`] starts (`none` by default; `pgbouncer`:
/// PgBouncer in transaction mode, and managers in unnamed statement mode).
///
/// # Panics
///
/// When it names `pgbouncer` and none is installed: the variable asks for
/// the pooled suite, which must not pass by skipping (only the tests that
/// always need PgBouncer skip, see [`PgBouncer::installed_or_skip`]).
pub fn pooler() -> Pooler {
    let pooler = Pooler::from_env().expect(POOLER_ENV);
    if pooler == Pooler::PgBouncer {
        if let Err(e) = PgBouncer::binary() {
            panic!("{POOLER_ENV}=pgbouncer, but: {e}");
        }
    }
    pooler
}

/// One node config per cluster node, at `ports` (the node's client port, or
/// a proxy's in front of it).
pub fn node_configs(cluster: &Cluster, ports: &[u16]) -> Vec<NodeConfig> {
    cluster
        .nodes()
        .iter()
        .zip(ports)
        .enumerate()
        .map(|(index, (node, port))| {
            let role = if index == 0 {
                Role::Primary
            } else {
                Role::Replica
            };
            let url = format!(
                "host=127.0.0.1 port={port} user={} dbname={}",
                node.client_user(),
                node.dbname()
            );
            NodeConfig::new(node.name(), REGIONS[index], url, role)
        })
        .collect()
}

/// Runs blocking work — every `Cluster` call that waits on `pg_ctl` or
/// `psql` (start, stop, start_node, promote, pause/resume_replay, psql,
/// wait_for_replicas) — without stalling the runtime: `block_in_place` hands
/// this worker's other tasks (the manager's monitor, other test tasks) to
/// another worker while `f` runs. On a loaded two-core machine a `pg_ctl`
/// call can take seconds; without this, the tasks queued behind it would
/// starve and time out.
///
/// Needs a multi-thread runtime (every async test here uses one), or no
/// runtime at all (then `f` simply runs). It panics on a current-thread
/// runtime.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// A cluster builder on the backend `PGROUTER_TESTKIT_BACKEND` names
/// (`local` by default; `docker` runs every node in a container of
/// `PGROUTER_TEST_IMAGE`, see `pgrouter_testkit::docker`).
pub fn builder() -> ClusterBuilder {
    let backend = Backend::from_env().expect("PGROUTER_TESTKIT_BACKEND");
    Cluster::builder().backend(backend)
}

/// A primary and two streaming replicas, started (see [`blocking`]) on the
/// backend of [`builder`], in the flavour `PGROUTER_TESTKIT_FLAVOUR` names
/// (`vanilla` by default; `least-privilege` runs every manager as a role
/// with no superuser and no `pg_read_all_stats`).
pub fn start_cluster() -> Cluster {
    let flavour = Flavour::from_env().expect("PGROUTER_TESTKIT_FLAVOUR");
    let builder = builder().replicas(2).flavour(flavour).pooler(pooler());
    blocking(|| builder.start()).expect("start a cluster (primary + 2 replicas)")
}

/// Whether `PGROUTER_TESTKIT_FLAVOUR` asks for the emulated Aurora: no
/// WAL positions there (lag in time only, from Aurora's replica status; no
/// causal tokens).
pub fn aurora_flavour() -> bool {
    Flavour::from_env().ok() == Some(Flavour::Aurora)
}

/// A port on 127.0.0.1 that nobody listens on (bound, read, released), for
/// nodes that must be unreachable. Connecting to it is refused at once.
pub fn dead_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

/// Three nodes shaped like [`node_configs`] (node0 primary, node1 and node2
/// replicas, in [`REGIONS`]) but all at a port nobody listens on: for tests
/// that need a manager but no server. `DatabaseManager::new` accepts them;
/// they start unhealthy.
pub fn unreachable_node_configs() -> Vec<NodeConfig> {
    let port = dead_port();
    (0..REGIONS.len())
        .map(|index| {
            let role = if index == 0 {
                Role::Primary
            } else {
                Role::Replica
            };
            let url = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres");
            NodeConfig::new(format!("node{index}"), REGIONS[index], url, role)
        })
        .collect()
}

/// A cluster and a manager pointed straight at it.
pub async fn cluster_and_manager(strategy: ReadStrategy) -> (Cluster, DatabaseManager) {
    cluster_and_manager_with(|config| config.read_strategy = strategy).await
}

/// [`cluster_and_manager`], with the configuration edited before the
/// manager starts.
pub async fn cluster_and_manager_with(
    edit: impl FnOnce(&mut Config),
) -> (Cluster, DatabaseManager) {
    let cluster = start_cluster();
    let ports: Vec<u16> = cluster.nodes().iter().map(|n| n.client_port()).collect();
    let mut config = fast_config(node_configs(&cluster, &ports));
    edit(&mut config);
    let db = DatabaseManager::new(config).await.expect("manager");
    (cluster, db)
}

/// A cluster with a fault proxy in front of every node, and a manager that
/// connects through the proxies.
pub async fn proxied(strategy: ReadStrategy) -> (Cluster, Vec<FaultProxy>, DatabaseManager) {
    proxied_with(|config| config.read_strategy = strategy).await
}

/// [`proxied`], with the configuration edited before the manager starts.
pub async fn proxied_with(
    edit: impl FnOnce(&mut Config),
) -> (Cluster, Vec<FaultProxy>, DatabaseManager) {
    let cluster = start_cluster();
    let mut proxies = Vec::new();
    for node in cluster.nodes() {
        proxies.push(FaultProxy::start(node.client_addr()).await.expect("proxy"));
    }
    let ports: Vec<u16> = proxies.iter().map(FaultProxy::port).collect();
    let mut config = fast_config(node_configs(&cluster, &ports));
    edit(&mut config);
    let db = DatabaseManager::new(config).await.expect("manager");
    (cluster, proxies, db)
}

/// The real port of the server that answered (not the proxy's).
pub async fn answering_port(db: &DatabaseManager, strategy: ReadStrategy) -> u16 {
    let row = db
        .read()
        .strategy(strategy)
        .query_one("SELECT inet_server_port()", &[])
        .await
        .expect("read");
    let port: i32 = row.get(0);
    u16::try_from(port).expect("port")
}

pub fn port_of(cluster: &Cluster, index: usize) -> u16 {
    cluster.node(index).port()
}

/// Polls `condition` every 20 ms until it holds or `limit` passes; returns
/// how long it took.
pub async fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> Option<Duration> {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if condition() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// [`wait_until`] with an async condition.
pub async fn wait_until_async<F, Fut>(limit: Duration, mut condition: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if condition().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

pub fn healthy(db: &DatabaseManager, node: &str) -> bool {
    db.status().node(node).is_some_and(|n| n.healthy)
}

/// A session straight to node `index` (past any proxy), and the task that
/// drives its connection.
pub async fn session(cluster: &Cluster, index: usize) -> (Client, tokio::task::JoinHandle<()>) {
    let (client, connection) = cluster
        .node(index)
        .pg_config()
        .connect(NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    (client, driver)
}

/// Waits until a statement containing `marker` is running on node `index`,
/// asking the server directly (not through a proxy in front of it).
pub async fn until_running(cluster: &Cluster, index: usize, marker: &str) {
    let (client, driver) = session(cluster, index).await;
    let sql = "SELECT count(*) FROM pg_stat_activity \
               WHERE state = 'active' AND pid <> pg_backend_pid() \
               AND strpos(query, $1) > 0";
    let running = wait_until_async(Duration::from_secs(10), || async {
        let row = client.query_one(sql, &[&marker]).await.unwrap();
        row.get::<_, i64>(0) > 0
    })
    .await;
    assert!(running.is_some(), "{marker} never ran on node {index}");
    drop(client);
    let _ = driver.await;
}

/// Inserts a row tagged `phase` into the test's table `t (phase text)` on
/// the write target, and returns the port of the server that took it.
pub async fn write_port(db: &DatabaseManager, phase: &str) -> Result<i32, Error> {
    let row = db
        .write()
        .deadline(Duration::from_secs(2))
        .query_one(
            "INSERT INTO t (phase) VALUES ($1) RETURNING inet_server_port()",
            &[&phase],
        )
        .await?;
    Ok(row.get(0))
}
