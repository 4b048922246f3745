//! status(), close(), and secrets kept out of Debug, Display and logs.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgrouter::{Config, DatabaseManager, Error, ReadStrategy, Role};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_every_node() {
    let (_cluster, db) = cluster_and_manager(ReadStrategy::GlobalRandom).await;
    db.query("SELECT 1", &[]).await.unwrap();
    let status = db.status();
    assert_eq!(status.nodes.len(), 3);
    assert_eq!(status.read_strategy, ReadStrategy::GlobalRandom);
    assert_eq!(status.local_region, LOCAL_REGION);
    for (index, node) in status.nodes.iter().enumerate() {
        assert_eq!(node.name, format!("node{index}"));
        assert_eq!(node.region, REGIONS[index]);
        assert_eq!(
            node.role,
            if index == 0 {
                Role::Primary
            } else {
                Role::Replica
            }
        );
        assert!(
            node.healthy && !node.suspect && node.last_error.is_none(),
            "{node:?}"
        );
        let age = node.last_probe_age.expect("probed at start");
        assert!(age < Duration::from_secs(2), "{age:?}");
        assert_eq!(node.pool.max_size, 8);
    }
    assert!(status.nodes.iter().map(|n| n.pool.size).sum::<usize>() >= 1);
    assert!(status.is_ready() && status.can_read());
    assert_eq!(status.primary().map(|n| n.name.as_str()), Some("node0"));
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_stops_the_monitor_and_later_calls_fail() {
    let (cluster, db) = cluster_and_manager(ReadStrategy::RegionalPreferred).await;
    let clone = db.clone();
    db.query("SELECT 1", &[]).await.unwrap();
    // The monitor's probe connection and the pools' connections, as the
    // primary sees them.
    let ours = || {
        let sql = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgrouter'";
        let count = tokio::task::block_in_place(|| cluster.psql(0, sql)).unwrap();
        count.parse::<u32>().unwrap()
    };
    assert!(ours() >= 1);
    db.close().await;
    let gone = wait_until(Duration::from_secs(10), || ours() == 0).await;
    assert!(gone.is_some(), "close left connections open: {}", ours());
    assert!(matches!(
        clone.query("SELECT 1", &[]).await,
        Err(Error::Closed)
    ));
    assert!(matches!(
        clone.execute("SELECT 1", &[]).await,
        Err(Error::Closed)
    ));
    let tx = clone.transaction(|_tx| Box::pin(async { Ok(()) })).await;
    assert!(matches!(tx, Err(Error::Closed)));
    assert!(matches!(clone.read_pool(), Err(Error::Closed)));
    clone.close().await;
}

/// Collects everything the fmt subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// A current-thread runtime keeps the monitor task on this thread, inside
// the thread-local subscriber.
#[tokio::test]
async fn secrets_never_reach_debug_display_or_logs() {
    const SECRET: &str = "hunter2-very-secret";
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let cluster = start_cluster();
    let dead_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url =
        |port: u16| format!("postgres://app:{SECRET}@127.0.0.1:{port}/postgres?user=postgres");
    let config = Config::builder()
        .primary("writer", "us-east-1", url(cluster.node(0).port()))
        .replica("gone", "eu-west-1", url(dead_port))
        .local_region("eu-west-1")
        .build()
        .unwrap();
    let mut config = config;
    let fast = fast_config(Vec::new());
    (config.pool, config.health, config.deadline) = (fast.pool, fast.health, fast.deadline);

    let mut shown = format!(
        "{config:?}\n{}\n",
        serde_json::to_string(&config.health).unwrap()
    );
    let db = DatabaseManager::new(config).await.unwrap();
    shown += &format!("{db:?}\n{:?}\n", db.status());
    db.query("SELECT 1", &[]).await.unwrap();
    let error = db.pool("gone").unwrap().get().await.unwrap_err();
    shown += &format!("{error}\n{error:?}\n");
    let bad = Config::builder()
        .primary("w", "r", format!("postgres://app:{SECRET}@h:port/db"))
        .build();
    let bad = bad.unwrap_err();
    shown += &format!("{bad}\n{bad:?}\n");
    tokio::time::sleep(Duration::from_millis(500)).await;
    db.close().await;

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("node health changed"),
        "the down replica was logged:\n{logs}"
    );
    assert!(shown.contains("writer"), "{shown}");
    assert!(!shown.contains(SECRET), "secret in Debug/Display:\n{shown}");
    assert!(!logs.contains(SECRET), "secret in logs:\n{logs}");
}
