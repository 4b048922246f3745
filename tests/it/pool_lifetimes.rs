//! Pool lifetimes on a real server: idle connections closed after
//! `pool.idle_timeout`, every connection replaced by `pool.max_lifetime`
//! (less its jitter), per-node pool sizes; all visible in the pool status
//! and in the server's own `pg_stat_activity`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pgrouter::status::PoolStatus;
use pgrouter::tokio_postgres::Client;
use pgrouter::{DatabaseManager, ReadStrategy};

use crate::support::*;

/// Node `name`'s pool status.
fn pool(db: &DatabaseManager, name: &str) -> PoolStatus {
    db.status().node(name).expect("node").pool
}

/// Backends of pgrouter's connections (pools and probes) on the server
/// `client` is connected to.
async fn backends(client: &Client) -> Vec<i32> {
    client
        .query(
            "SELECT pid FROM pg_stat_activity \
             WHERE application_name = 'pgrouter' AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .expect("pg_stat_activity")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let (cluster, db) = cluster_and_manager_with(|config| {
        config.pool.idle_timeout = Duration::from_secs(1);
        config.pool.max_lifetime = Duration::ZERO;
        config.nodes[1].pool_size = Some(3);
    })
    .await;
    let primary = cluster.node(0).name().to_owned();
    let status = pool(&db, &primary);
    assert_eq!(status.idle_timeout, Some(Duration::from_secs(1)));
    assert_eq!(status.max_lifetime, None);
    assert_eq!(status.max_size, 8, "pool.max_size");
    assert_eq!(
        pool(&db, cluster.node(1).name()).max_size,
        3,
        "the node's own size"
    );

    let (server, driver) = session(&cluster, 0).await;
    let before = backends(&server).await.len();
    // Six reads at once, each holding its connection for 300 ms.
    let reads = (0..6).map(|_| {
        let db = db.clone();
        tokio::spawn(async move {
            db.read()
                .strategy(ReadStrategy::PrimaryOnly)
                .query_one("SELECT pg_sleep(0.3)::text", &[])
                .await
        })
    });
    for read in futures_util::future::join_all(reads).await {
        read.expect("task").expect("read");
    }
    let opened = pool(&db, &primary).size;
    assert!(opened >= 4, "the burst opened connections: {opened}");
    assert!(backends(&server).await.len() >= before + 4);

    let closed = wait_until(Duration::from_secs(20), || pool(&db, &primary).size == 0).await;
    assert!(closed.is_some(), "still open: {:?}", pool(&db, &primary));
    let status = pool(&db, &primary);
    assert_eq!(status.closed_idle, opened as u64, "{status:?}");
    assert_eq!(status.closed_expired, 0);
    // The server agrees: the pool's backends are gone.
    let gone = wait_until_async(Duration::from_secs(10), || async {
        backends(&server).await.len() <= before
    })
    .await;
    assert!(gone.is_some(), "{:?}", backends(&server).await);
    // And the pool opens new ones when asked.
    db.read()
        .strategy(ReadStrategy::PrimaryOnly)
        .query_one("SELECT 1", &[])
        .await
        .expect("read after the pool emptied");
    drop(server);
    let _ = driver.await;
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_connection_outlives_its_maximum_lifetime() {
    let lifetime = Duration::from_secs(2);
    let (cluster, db) = cluster_and_manager_with(|config| {
        config.pool.idle_timeout = Duration::ZERO;
        config.pool.max_lifetime = lifetime;
        config.pool.max_lifetime_jitter = Duration::from_millis(500);
        config.nodes[0].pool_size = Some(2);
    })
    .await;
    let primary = cluster.node(0).name().to_owned();
    assert_eq!(pool(&db, &primary).max_lifetime, Some(lifetime));
    assert_eq!(pool(&db, &primary).max_size, 2);

    // Reads one after another for 7 s, noting when each backend served.
    let mut seen: HashMap<i32, (Instant, Instant)> = HashMap::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(7) {
        let row = db
            .read()
            .strategy(ReadStrategy::PrimaryOnly)
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .expect("read");
        let now = Instant::now();
        seen.entry(row.get(0)).or_insert((now, now)).1 = now;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen.len() >= 3, "connections were replaced: {seen:?}");
    for (pid, (first, last)) in &seen {
        // Created before its first answer, never handed out past its
        // lifetime: what a test can see of it is shorter still (the slack
        // covers the last statement's own time on a loaded machine).
        let served_for = *last - *first;
        assert!(
            served_for <= lifetime + SLACK,
            "backend {pid} served for {served_for:?}"
        );
    }
    let status = pool(&db, &primary);
    assert!(status.closed_expired >= 2, "{status:?}");
    assert_eq!(status.closed_idle, 0);
    // Closed on the server too: every backend seen more than a lifetime
    // (and a sweep) ago is gone.
    let (server, driver) = session(&cluster, 0).await;
    let old: Vec<i32> = seen
        .iter()
        .filter(|(_, (first, _))| first.elapsed() > lifetime + SLACK)
        .map(|(pid, _)| *pid)
        .collect();
    assert!(!old.is_empty());
    let gone = wait_until_async(Duration::from_secs(10), || async {
        let alive = backends(&server).await;
        old.iter().all(|pid| !alive.contains(pid))
    })
    .await;
    assert!(
        gone.is_some(),
        "old backends still open: {old:?} in {:?}",
        backends(&server).await
    );
    drop(server);
    let _ = driver.await;
    db.close().await;
}
