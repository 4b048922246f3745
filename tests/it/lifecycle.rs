//! status(), close(), and secrets kept out of Debug, Display and logs.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;
use pgrouter::error::ErrorKind;
use pgrouter::Config;
use pgrouter::DatabaseManager;
use pgrouter::Error;
use pgrouter::ReadStrategy;
use pgrouter::Role;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_every_node() {
    let cluster = start_cluster();
    let ports: Vec<u16> = cluster.nodes().iter().map(|n| n.port()).collect();
    let mut config = fast_config(node_configs(&cluster, &ports));
    config.read_strategy = ReadStrategy::GlobalRandom;
    let created = Instant::now();
    let db = DatabaseManager::new(config).await.unwrap();
    db.query("SELECT 1", &[]).await.unwrap();
    let status = db.status();
    let since_created = created.elapsed();
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
        // Probed by this manager (since it was created), whatever the load.
        let age = node.last_probe_age.expect("probed at start");
        assert!(age <= since_created, "{age:?} > {since_created:?}");
        assert_eq!(node.pool.max_size, 8);
    }
    assert!(status.nodes.iter().map(|n| n.pool.size).sum::<usize>() >= 1);
    assert!(status.can_write() && status.can_read());
    assert_eq!(status.primary().map(|n| n.name.as_str()), Some("node0"));

    // And probed again later: every node's last probe age drops below the
    // time since this mark. (A load-proof form of "the age stays small".)
    let mark = Instant::now();
    let probed_again = wait_until(Duration::from_secs(10), || {
        db.status()
            .nodes
            .iter()
            .all(|node| node.last_probe_age.is_some_and(|age| age < mark.elapsed()))
    })
    .await;
    eprintln!("every node probed again within {probed_again:?}");
    assert!(probed_again.is_some(), "{:?}", db.status());
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
    let closed = |error: Error| *error.kind() == ErrorKind::Closed;
    assert!(clone.query("SELECT 1", &[]).await.is_err_and(closed));
    assert!(clone.execute("SELECT 1", &[]).await.is_err_and(closed));
    let tx = clone.transaction(|_tx| Box::pin(async { Ok(()) })).await;
    assert!(matches!(
        tx.as_ref().map_err(Error::kind),
        Err(ErrorKind::Closed)
    ));
    assert!(matches!(
        clone.read_pool().as_ref().map_err(Error::kind),
        Err(ErrorKind::Closed)
    ));
    clone.close().await;
}

/// Statements containing `marker` running now on node `index`.
async fn running(cluster: &pgrouter_testkit::Cluster, index: usize, marker: &str) -> i64 {
    let (client, driver) = session(cluster, index).await;
    let sql = "SELECT count(*) FROM pg_stat_activity \
               WHERE state = 'active' AND pid <> pg_backend_pid() \
               AND strpos(query, $1) > 0";
    let count = client.query_one(sql, &[&marker]).await.unwrap().get(0);
    drop(client);
    let _ = driver.await;
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_lets_calls_in_flight_finish_stops_the_rest_at_its_timeout_and_refuses_new_ones() {
    let close_timeout = Duration::from_secs(3);
    let (cluster, db) = cluster_and_manager_with(|config| {
        config.read_strategy = ReadStrategy::RegionalPreferred;
        config.close_timeout = close_timeout;
        config.deadline = Duration::from_secs(120);
        config.pool.max_size = 32;
        config.pool.wait_timeout = Duration::from_secs(10);
    })
    .await;
    db.execute("CREATE TABLE t (kind text)", &[]).await.unwrap();
    blocking(|| cluster.wait_for_replicas(Duration::from_secs(10))).unwrap();
    // 32 calls: on the local replica (node1) 24 reads, on the primary 8
    // writes; in each half the short ones (1 s) end within the close
    // timeout, the long ones (60 s) do not.
    let mut calls = Vec::new();
    for n in 0..32 {
        let db = db.clone();
        let (write, seconds) = (n < 8, if n % 2 == 0 { 1 } else { 60 });
        calls.push(tokio::spawn(async move {
            let result = if write {
                let sql =
                    format!("INSERT INTO t SELECT 'close-test {seconds}' FROM pg_sleep({seconds})");
                db.execute(&sql, &[]).await.map(drop)
            } else {
                let sql = format!("SELECT 'close-test', pg_sleep({seconds})");
                db.query(&sql, &[]).await.map(drop)
            };
            (write, seconds, result, Instant::now())
        }));
    }
    let all_running = wait_until_async(Duration::from_secs(20), || async {
        running(&cluster, 0, "close-test").await == 8
            && running(&cluster, 1, "close-test").await == 24
    })
    .await;
    assert!(all_running.is_some(), "the 32 calls never ran together");

    let start = Instant::now();
    let closing = tokio::spawn({
        let db = db.clone();
        async move {
            db.close().await;
            Instant::now()
        }
    });
    let not_ready = wait_until(Duration::from_secs(2), || {
        db.readiness()
            .reasons
            .contains(&pgrouter::status::NotReady::Closed)
    })
    .await;
    assert!(not_ready.is_some(), "{:?}", db.readiness());
    // A call made now is refused at once, nothing sent.
    let refused_at = Instant::now();
    let refused = db.query("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(*refused.kind(), ErrorKind::Closed);
    assert!(!refused.is_outcome_unknown());
    assert!(refused_at.elapsed() < SLACK, "{:?}", refused_at.elapsed());

    let closed_at = closing.await.unwrap();
    let close_took = closed_at - start;
    assert!(
        close_took >= close_timeout - Duration::from_millis(100)
            && close_took < close_timeout + SLACK,
        "close took {close_took:?}, its timeout is {close_timeout:?}"
    );
    for call in calls {
        let (write, seconds, result, ended) = call.await.unwrap();
        let took = ended.saturating_duration_since(start);
        assert!(
            took < close_timeout + SLACK,
            "a call ended {took:?} after close"
        );
        match (seconds, result) {
            (1, Ok(())) => {}
            (60, Err(error)) => {
                assert_eq!(*error.kind(), ErrorKind::Closed, "{error}");
                assert_eq!(error.is_outcome_unknown(), write, "{error}");
                assert_eq!(error.http_status(), 503);
            }
            (seconds, result) => panic!("a {seconds} s call ended {result:?}"),
        }
    }
    // Stopped calls had their statements cancelled: nothing sleeps on, and
    // none of the long writes committed.
    let cancelled = wait_until_async(Duration::from_secs(10), || async {
        running(&cluster, 0, "close-test").await + running(&cluster, 1, "close-test").await == 0
    })
    .await;
    assert!(cancelled.is_some(), "statements of stopped calls still run");
    let rows = blocking(|| {
        cluster.psql(
            0,
            "SELECT count(*) FILTER (WHERE kind = 'close-test 1') || '/' || count(*) FROM t",
        )
    })
    .unwrap();
    assert_eq!(
        rows.trim(),
        "4/4",
        "the short writes committed, the long ones did not"
    );
    let after = db.execute("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(*after.kind(), ErrorKind::Closed);
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
// the thread-local subscriber. `block_in_place` (see `support::blocking`)
// panics on such a runtime, so this is a plain test: the cluster starts
// before the runtime exists, and only the async part runs on it.
#[test]
fn secrets_never_reach_debug_display_or_logs() {
    const SECRET: &str = "hunter2-very-secret";
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let cluster = start_cluster();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url =
        |port: u16| format!("postgres://app:{SECRET}@127.0.0.1:{port}/postgres?user=postgres");
    let config = Config::builder()
        .primary("writer", "us-east-1", url(cluster.node(0).port()))
        .replica("gone", "eu-west-1", url(dead_port()))
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
    let logged = |text: &str| String::from_utf8_lossy(&captured.0.lock().unwrap()).contains(text);
    runtime.block_on(async {
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
        // Until the monitor has logged the down replica (at once, normally).
        let down_logged =
            wait_until(Duration::from_secs(10), || logged("node health changed")).await;
        // A few more probe rounds of logs to search for the secret.
        tokio::time::sleep(Duration::from_millis(500)).await;
        db.close().await;
        assert!(down_logged.is_some(), "the down replica was not logged");
    });
    drop(runtime);

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("node health changed"),
        "the down replica was logged:\n{logs}"
    );
    assert!(shown.contains("writer"), "{shown}");
    assert!(!shown.contains(SECRET), "secret in Debug/Display:\n{shown}");
    assert!(!logs.contains(SECRET), "secret in logs:\n{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_stops_a_call_waiting_for_a_free_connection_at_its_timeout() {
    let close_timeout = Duration::from_secs(1);
    let (_cluster, db) = cluster_and_manager_with(|config| {
        config.close_timeout = close_timeout;
        config.deadline = Duration::from_secs(60);
        config.pool.max_size = 1;
        config.pool.wait_timeout = Duration::from_secs(30);
    })
    .await;
    fn primary_only(db: &DatabaseManager) -> pgrouter::ReadBuilder<'_> {
        db.read().strategy(ReadStrategy::PrimaryOnly)
    }
    primary_only(&db).query_one("SELECT 1", &[]).await.unwrap();
    // The primary's only connection is taken: a read waits for it.
    let held = db.write_pool().unwrap().get().await.unwrap();
    let waiting = tokio::spawn({
        let db = db.clone();
        async move {
            let result = primary_only(&db).query_one("SELECT 1", &[]).await;
            (result, Instant::now())
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "the read did not wait");

    let start = Instant::now();
    db.close().await;
    let (result, ended) = waiting.await.unwrap();
    let took = ended.saturating_duration_since(start);
    eprintln!("the waiting read ended {took:?} after close ({close_timeout:?} allowed)");
    let error = result.unwrap_err();
    assert_eq!(*error.kind(), ErrorKind::Closed, "{error:?}");
    assert!(!error.is_outcome_unknown(), "nothing was sent: {error:?}");
    assert!(
        took < close_timeout + SLACK,
        "the waiting read ended {took:?} after close"
    );
    drop(held);
}
