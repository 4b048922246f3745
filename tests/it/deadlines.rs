//! Every wait is bounded: a black-holed node (TCP accepted, nothing
//! forwarded) costs a caller at most its deadline, and the node is taken
//! out of routing on the first timeout.
//!
//! A wait is checked against its deadline plus [`crate::support::SLACK`] (1 s, for
//! a loaded two-core machine; see there). Each per-call deadline plus the
//! slack stays below the configured 3 s deadline, so a call that ignored its
//! own deadline for the configured one still fails.

use std::time::{Duration, Instant};

use crate::support::*;
use pgrouter::error::ErrorKind;
use pgrouter::tokio_postgres::NoTls;
use pgrouter::DatabaseManager;
use pgrouter::ReadStrategy;
use pgrouter_testkit::Fault;

async fn warm_every_pool(db: &DatabaseManager) {
    for strategy in [ReadStrategy::PrimaryOnly, ReadStrategy::RegionalPreferred] {
        let calls = (0..6).map(|_| {
            db.read()
                .strategy(strategy)
                .query("SELECT pg_sleep(0.05)", &[])
        });
        for result in futures_util::future::join_all(calls).await {
            result.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_replica_costs_at_most_the_deadline_then_is_avoided() {
    let (cluster, proxies, db) = proxied(ReadStrategy::RegionalPreferred).await;
    warm_every_pool(&db).await;
    let deadline = db.config().deadline;
    proxies[1].set(Fault::BlackHole);

    let mut slowest = Duration::ZERO;
    let mut failures = 0;
    for _ in 0..30 {
        let start = Instant::now();
        let result = db.query_one("SELECT inet_server_port()", &[]).await;
        slowest = slowest.max(start.elapsed());
        match result {
            Ok(row) => assert_ne!(row.get::<_, i32>(0), i32::from(port_of(&cluster, 1))),
            Err(error) => {
                assert!(
                    error.is_timeout() || error.node() == Some("node1"),
                    "{error:?}"
                );
                failures += 1;
            }
        }
    }
    eprintln!("slowest read {slowest:?}, deadline {deadline:?}, {failures} failed");
    assert!(
        slowest <= deadline + SLACK,
        "a call waited {slowest:?}, deadline {deadline:?}"
    );
    assert!(
        failures <= 1,
        "only the call that found the black hole may fail: {failures}"
    );
    assert!(!healthy(&db, "node1"));

    proxies[1].set(Fault::Pass);
    assert!(
        wait_until(Duration::from_secs(10), || healthy(&db, "node1"))
            .await
            .is_some()
    );
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_primary_bounds_writes_and_per_call_deadlines() {
    let (_cluster, proxies, db) = proxied(ReadStrategy::RegionalPreferred).await;
    db.execute("CREATE TABLE t (id int)", &[]).await.unwrap();
    warm_every_pool(&db).await;
    proxies[0].set(Fault::BlackHole);

    let short = Duration::from_millis(400);
    let start = Instant::now();
    let err = db
        .read()
        .strategy(ReadStrategy::PrimaryOnly)
        .deadline(short)
        .query("SELECT 1", &[])
        .await
        .unwrap_err();
    let waited = start.elapsed();
    eprintln!("read with a {short:?} deadline waited {waited:?}");
    assert!(waited <= short + SLACK, "{waited:?}");
    assert!(err.is_timeout(), "{err:?}");

    // The configured deadline first, then a shorter one per call.
    let short_write = Duration::from_secs(1);
    for deadline in [db.config().deadline, short_write, short_write] {
        let start = Instant::now();
        let err = db
            .write()
            .deadline(deadline)
            .execute("INSERT INTO t VALUES (1)", &[])
            .await
            .unwrap_err();
        let waited = start.elapsed();
        eprintln!("write with a {deadline:?} deadline waited {waited:?}");
        assert!(waited <= deadline + SLACK, "write waited {waited:?}");
        assert!(
            err.is_timeout() || matches!(err.kind(), ErrorKind::NoPrimary { .. }),
            "{err:?}"
        );
    }
    let start = Instant::now();
    let err = db
        .write()
        .deadline(short_write)
        .transaction(|tx| {
            Box::pin(async move { tx.execute("INSERT INTO t VALUES (2)", &[]).await })
        })
        .await
        .unwrap_err();
    let waited = start.elapsed();
    eprintln!("transaction with a {short_write:?} deadline waited {waited:?}");
    assert!(
        waited <= short_write + SLACK,
        "transaction waited {waited:?}"
    );
    assert!(!db.status().can_write(), "{err:?}");

    // Reads that may go elsewhere still work.
    db.query("SELECT 1", &[]).await.unwrap();
    proxies[0].set(Fault::Pass);
    assert!(
        wait_until(Duration::from_secs(10), || healthy(&db, "node0"))
            .await
            .is_some()
    );
    db.execute("INSERT INTO t VALUES (3)", &[]).await.unwrap();
    db.close().await;
}

/// Statements still running on the primary whose text contains `marker`.
fn running(cluster: &pgrouter_testkit::Cluster, marker: &str) -> u32 {
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE state = 'active' AND query LIKE '%{marker}%' AND pid <> pg_backend_pid()"
    );
    let count = blocking(|| cluster.psql(0, &sql)).unwrap();
    count.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_call_never_leaves_a_busy_connection_in_the_pool() {
    // One connection per node: a busy one handed out again would make the
    // next call wait behind the orphaned statement.
    let (cluster, db) = cluster_and_manager_with(|c| c.pool.max_size = 1).await;
    let primary_only = || db.read().strategy(ReadStrategy::PrimaryOnly);
    primary_only().query("SELECT 1", &[]).await.unwrap();

    // The caller gives up (its own timeout drops the call's future).
    let sleep = primary_only().query("SELECT pg_sleep(30) -- dropped-read", &[]);
    assert!(tokio::time::timeout(Duration::from_millis(300), sleep)
        .await
        .is_err());
    let start = Instant::now();
    let row = primary_only().query_one("SELECT 1", &[]).await;
    let waited = start.elapsed();
    eprintln!("the next read took {waited:?}");
    assert!(row.is_ok(), "{row:?}");
    assert!(
        waited < Duration::from_secs(2),
        "waited behind the dropped read: {waited:?}"
    );
    let gone = wait_until(Duration::from_secs(10), || {
        running(&cluster, "dropped-read") == 0
    })
    .await;
    assert!(
        gone.is_some(),
        "the dropped statement still runs on the server"
    );

    // The same for a transaction dropped half-way: no open transaction
    // comes back out of the pool.
    db.execute("CREATE TABLE t (id int)", &[]).await.unwrap();
    let tx = db.transaction(|tx| {
        Box::pin(async move {
            tx.execute("INSERT INTO t VALUES (1)", &[]).await?;
            tx.execute("SELECT pg_sleep(30) -- dropped-tx", &[]).await?;
            Ok(())
        })
    });
    assert!(tokio::time::timeout(Duration::from_millis(300), tx)
        .await
        .is_err());
    let start = Instant::now();
    db.execute("INSERT INTO t VALUES (2)", &[]).await.unwrap();
    let waited = start.elapsed();
    assert!(
        waited < Duration::from_secs(2),
        "waited behind the dropped transaction: {waited:?}"
    );
    let gone = wait_until(Duration::from_secs(10), || {
        running(&cluster, "dropped-tx") == 0
    })
    .await;
    assert!(
        gone.is_some(),
        "the dropped transaction's statement still runs"
    );
    let ids: Vec<i32> = primary_only()
        .query("SELECT id FROM t ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(ids, [2], "the dropped transaction committed nothing");
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_after_sending_is_an_unknown_outcome_and_a_busy_pool_blames_no_node() {
    let (_cluster, db) = cluster_and_manager_with(|c| c.pool.max_size = 1).await;
    db.execute("CREATE TABLE t (id int)", &[]).await.unwrap();
    let short = Duration::from_millis(300);

    // Sent, then the deadline passed: it may have been applied.
    let err = db
        .write()
        .deadline(short)
        .execute("INSERT INTO t SELECT 1 FROM pg_sleep(2)", &[])
        .await
        .unwrap_err();
    assert!(err.is_timeout() && err.is_outcome_unknown(), "{err:?}");
    assert!(err.to_string().contains("outcome is unknown"), "{err}");
    let back = wait_until(Duration::from_secs(10), || healthy(&db, "node0")).await;
    assert!(back.is_some(), "{:?}", db.status());

    // Nothing sent: the pool's only connection is busy elsewhere, and the
    // deadline passes while waiting for it. Not the node's fault.
    let held = db.write_pool().unwrap().get().await.unwrap();
    let err = db
        .write()
        .deadline(short)
        .execute("INSERT INTO t VALUES (2)", &[])
        .await
        .unwrap_err();
    let node0 = db.status().node("node0").cloned().unwrap();
    drop(held);
    assert!(err.is_timeout() && !err.is_outcome_unknown(), "{err:?}");
    assert!(
        !node0.suspect && node0.healthy,
        "a busy pool marked its node suspect: {node0:?}"
    );
    db.execute("INSERT INTO t VALUES (3)", &[]).await.unwrap();
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_wait_past_the_deadline_does_not_blame_the_node() {
    let (cluster, db) = cluster_and_manager(ReadStrategy::RegionalPreferred).await;
    db.execute("CREATE TABLE t (id int PRIMARY KEY, v int)", &[])
        .await
        .unwrap();
    db.execute("INSERT INTO t VALUES (1, 0)", &[])
        .await
        .unwrap();
    warm_every_pool(&db).await;
    let idle_before = db.status().node("node0").unwrap().pool.available;

    // Another session holds the row: the write waits on the lock, alive.
    let (locker, connection) = cluster.primary().pg_config().connect(NoTls).await.unwrap();
    let driver = tokio::spawn(connection);
    locker
        .batch_execute("BEGIN; UPDATE t SET v = 1 WHERE id = 1")
        .await
        .unwrap();
    let err = db
        .write()
        .deadline(Duration::from_millis(600))
        .execute("UPDATE t SET v = 2 WHERE id = 1", &[])
        .await
        .unwrap_err();
    let node0 = db.status().node("node0").cloned().unwrap();
    assert!(err.is_timeout() && err.is_outcome_unknown(), "{err:?}");
    assert!(
        !node0.suspect && node0.healthy,
        "a lock wait blamed the node: {node0:?}"
    );
    assert!(
        node0.pool.available + 1 >= idle_before,
        "idle connections were dropped: {idle_before} before, {node0:?}"
    );
    locker.batch_execute("ROLLBACK").await.unwrap();
    drop(locker);
    let _ = driver.await;
    db.execute("UPDATE t SET v = 3 WHERE id = 1", &[])
        .await
        .unwrap();
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pool_is_waited_on_for_its_wait_timeout_not_the_whole_deadline() {
    let wait = Duration::from_millis(300);
    let (_cluster, db) = cluster_and_manager_with(|c| {
        c.pool.max_size = 1;
        c.pool.wait_timeout = wait;
    })
    .await;
    db.read()
        .strategy(ReadStrategy::PrimaryOnly)
        .query_one("SELECT 1", &[])
        .await
        .unwrap();
    let deadline = db.config().deadline;
    assert!(
        deadline >= wait * 10,
        "the deadline {deadline:?} must be far"
    );

    // The primary's only connection is taken: the read waits for it, for
    // the pool's wait timeout, and has no other node to try.
    let held = db.write_pool().unwrap().get().await.unwrap();
    let start = Instant::now();
    let err = db
        .read()
        .strategy(ReadStrategy::PrimaryOnly)
        .query_one("SELECT 1", &[])
        .await
        .unwrap_err();
    let waited = start.elapsed();
    eprintln!("waited {waited:?} for a slot ({wait:?} allowed, deadline {deadline:?})");
    assert_eq!(*err.kind(), ErrorKind::Connect, "{err:?}");
    assert!(!err.is_outcome_unknown(), "{err:?}");
    assert!(waited >= wait, "gave up after {waited:?}, before {wait:?}");
    assert!(
        waited < wait + SLACK && waited < deadline,
        "waited {waited:?}: the wait timeout was not kept"
    );
    let node0 = db.status().node("node0").cloned().unwrap();
    assert!(
        !node0.suspect && node0.healthy,
        "a full pool marked its node suspect: {node0:?}"
    );

    // A slot freed while a read waits is taken at once.
    let read = tokio::spawn({
        let db = db.clone();
        async move {
            db.read()
                .strategy(ReadStrategy::PrimaryOnly)
                .query_one("SELECT 1", &[])
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(held);
    read.await.unwrap().unwrap();
    db.close().await;
}
