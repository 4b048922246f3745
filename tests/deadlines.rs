//! Every wait is bounded: a black-holed node (TCP accepted, nothing
//! forwarded) costs a caller at most its deadline, and the node is taken
//! out of routing on the first timeout.
//!
//! A wait is checked against its deadline plus [`support::SLACK`] (1 s, for
//! a loaded two-core machine; see there). Each per-call deadline plus the
//! slack stays below the configured 3 s deadline, so a call that ignored its
//! own deadline for the configured one still fails.

mod support;

use std::time::{Duration, Instant};

use pgrouter::{DatabaseManager, ReadStrategy};
use pgrouter_testkit::Fault;
use support::*;

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
            err.is_timeout() || matches!(err, pgrouter::Error::NoPrimary { .. }),
            "{err:?}"
        );
    }
    let start = Instant::now();
    let err = db
        .write()
        .deadline(short_write)
        .transaction(|tx| {
            Box::pin(async move { Ok(tx.execute("INSERT INTO t VALUES (2)", &[]).await?) })
        })
        .await
        .unwrap_err();
    let waited = start.elapsed();
    eprintln!("transaction with a {short_write:?} deadline waited {waited:?}");
    assert!(
        waited <= short_write + SLACK,
        "transaction waited {waited:?}"
    );
    assert!(!db.status().is_ready(), "{err:?}");

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
