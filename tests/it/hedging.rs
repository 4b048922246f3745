//! Hedged reads and outlier detection on a real cluster: a replica
//! black-holed by the fault proxy under concurrent reads with a 1 s
//! deadline fails no read with hedging on, and fails the reads in flight
//! with hedging off; a hedge that wins lets the losing statement end and
//! keeps its connection, or cancels it on its server once it outlasts
//! `pool.recycle_timeout`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;
use pgrouter::config::HedgeSettings;
use pgrouter::config::OutlierSettings;
use pgrouter::status::HedgeCounts;
use pgrouter::DatabaseManager;
use pgrouter::ReadStrategy;
use pgrouter_testkit::Fault;

/// Concurrent readers, as a service's request handlers.
const READERS: usize = 16;

/// What the readers saw: reads done, reads failed (with the first error).
#[derive(Debug, Default)]
struct Tally {
    done: AtomicUsize,
    failed: AtomicUsize,
    first_error: std::sync::Mutex<Option<String>>,
}

/// `READERS` tasks reading in a loop with a 1 s deadline until `until`.
fn readers(
    db: &DatabaseManager,
    until: Instant,
    tally: &Arc<Tally>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..READERS)
        .map(|_| {
            let (db, tally) = (db.clone(), Arc::clone(tally));
            tokio::spawn(async move {
                while Instant::now() < until {
                    let read = db
                        .read()
                        .deadline(Duration::from_secs(1))
                        .query_one("SELECT 1", &[])
                        .await;
                    tally.done.fetch_add(1, Ordering::Relaxed);
                    if let Err(error) = read {
                        tally.failed.fetch_add(1, Ordering::Relaxed);
                        let mut first = tally.first_error.lock().unwrap();
                        first.get_or_insert_with(|| error.to_string());
                    }
                }
            })
        })
        .collect()
}

/// Reads for 1 s, black-holes node1 (every read's first choice), reads on
/// for 2.5 s; what the readers saw and the manager's counts.
async fn black_hole_under_load(hedging: bool) -> (Tally, HedgeCounts, bool) {
    let (_cluster, proxies, db) = proxied_with(|config| {
        config.read_strategy = ReadStrategy::RegionalPreferred;
        config.hedging = {
            let mut settings = HedgeSettings::default();
            settings.enabled = hedging;
            settings
        };
        config.outliers = OutlierSettings::default();
    })
    .await;
    let warm = Instant::now() + Duration::from_secs(1);
    let tally = Arc::new(Tally::default());
    let start = Instant::now();
    let tasks = readers(&db, start + Duration::from_millis(3500), &tally);
    tokio::time::sleep_until(warm.into()).await;
    let before = tally.failed.load(Ordering::Relaxed);
    eprintln!(
        "before the fault: {} reads, {:?}",
        tally.done.load(Ordering::Relaxed),
        db.status().hedging
    );
    proxies[1].set(Fault::BlackHole);
    let marked = wait_until(Duration::from_secs(2), || !healthy(&db, "node1"))
        .await
        .is_some();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(before, 0, "no read fails before the fault");
    let counts = db.status().hedging;
    db.close().await;
    let tally = Arc::into_inner(tally).unwrap();
    (tally, counts, marked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_hedging_a_black_holed_replica_fails_no_read() {
    let (tally, counts, marked) = black_hole_under_load(true).await;
    let (done, failed) = (tally.done.into_inner(), tally.failed.into_inner());
    eprintln!("hedging on: {done} reads, {failed} failed, {counts:?}");
    assert_eq!(
        failed,
        0,
        "first error: {:?}",
        tally.first_error.into_inner().unwrap()
    );
    assert!(counts.sent > 0 && counts.won > 0, "{counts:?}");
    assert!(marked, "node1 taken out of routing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_hedging_the_reads_in_flight_wait_out_their_deadline() {
    let (tally, counts, marked) = black_hole_under_load(false).await;
    let (done, failed) = (tally.done.into_inner(), tally.failed.into_inner());
    eprintln!(
        "hedging off: {done} reads, {failed} failed, {counts:?}, first error: {:?}",
        tally.first_error.into_inner().unwrap()
    );
    assert!(failed > 0, "the control case shows the failures");
    assert!(
        failed <= READERS * 2,
        "new reads avoid the node once it is an outlier: {failed}"
    );
    assert_eq!((counts.sent, counts.won), (0, 0), "{counts:?}");
    assert!(
        counts.outliers > 0,
        "found an outlier on live traffic: {counts:?}"
    );
    assert!(marked, "node1 taken out of routing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_losing_statement_that_outlasts_the_bound_is_cancelled_on_its_server() {
    let (cluster, _proxies, db) = proxied_with(|config| {
        config.read_strategy = ReadStrategy::RegionalPreferred;
        config.hedging.enabled = true;
        config.hedging.delay = Some(Duration::from_millis(100));
        config.outliers.enabled = false;
    })
    .await;
    // Slow only on node1, every read's first choice.
    let sql = "SELECT pg_sleep(CASE current_setting('cluster_name') \
               WHEN 'node1' THEN 30 ELSE 0 END)::text, current_setting('cluster_name')";
    let started = Instant::now();
    let row = db.read().query_one(sql, &[]).await.unwrap();
    let answered = started.elapsed();
    assert_ne!(row.get::<_, String>(1), "node1", "the hedge answered");
    assert!(answered < Duration::from_secs(10), "{answered:?}");
    let counts = db.status().hedging;
    assert_eq!((counts.sent, counts.won), (1, 1), "{counts:?}");

    // The 30 s sleep on node1 was cancelled, not left running.
    let (client, driver) = session(&cluster, 1).await;
    let running = "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' \
                   AND pid <> pg_backend_pid() AND strpos(query, 'pg_sleep') > 0";
    let gone = wait_until_async(Duration::from_secs(5), || async {
        client
            .query_one(running, &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 0
    })
    .await;
    assert!(gone.is_some(), "the losing statement still runs on node1");
    drop(client);
    let _ = driver.await;
    let counts = db.status().hedging;
    assert_eq!(
        (counts.connections_kept, counts.connections_discarded),
        (0, 1),
        "{counts:?}"
    );

    // node1 still serves reads: its pool holds no connection left busy.
    for _ in 0..20 {
        let row = db
            .read()
            .query_one("SELECT current_setting('cluster_name')", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "node1");
    }
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_losing_hedge_keeps_its_connection() {
    let (_cluster, _proxies, db) = proxied_with(|config| {
        config.read_strategy = ReadStrategy::RegionalPreferred;
        config.hedging.enabled = true;
        config.hedging.delay = Some(Duration::from_millis(50));
        config.outliers.enabled = false;
        config.pool.recycle_timeout = Duration::from_secs(5);
    })
    .await;
    // node1's one pooled session, which the loser will hold.
    let pid_sql = "SELECT pg_backend_pid(), current_setting('cluster_name')";
    let row = db.read().query_one(pid_sql, &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(1), "node1");
    let before: i32 = row.get(0);
    // node1 answers after 300 ms: hedged at 50 ms, the hedge wins.
    let sql = "SELECT pg_sleep(CASE current_setting('cluster_name') \
               WHEN 'node1' THEN 0.3 ELSE 0 END)::text, current_setting('cluster_name')";
    let row = db.read().query_one(sql, &[]).await.unwrap();
    assert_ne!(row.get::<_, String>(1), "node1", "the hedge answered");
    // The loser's statement ends by itself; its connection goes back.
    let kept = wait_until(Duration::from_secs(10), || {
        db.status().hedging.connections_kept == 1
    })
    .await;
    let counts = db.status().hedging;
    assert!(kept.is_some(), "{counts:?}");
    assert_eq!(
        (counts.sent, counts.won, counts.connections_discarded),
        (1, 1, 0)
    );
    // No reconnect: node1's next read runs on the session the loser held.
    let row = db.read().query_one(pid_sql, &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(1), "node1");
    assert_eq!(row.get::<_, i32>(0), before, "the same session");
    db.close().await;
}
