//! Writes and transactions: where they go, what is retried, what is not.

use std::time::{Duration, Instant};

use crate::support::*;
use pgrouter::error::ErrorKind;
use pgrouter::tokio_postgres::error::SqlState;
use pgrouter::DatabaseManager;
use pgrouter::Error;
use pgrouter::ReadStrategy;
use pgrouter_testkit::Fault;

const SCHEMA: &str = "
    CREATE SEQUENCE attempts;
    CREATE TABLE parents (id int PRIMARY KEY);
    CREATE TABLE children (id int PRIMARY KEY, parent int REFERENCES parents(id));
    CREATE TABLE log (id serial PRIMARY KEY, note text);
    INSERT INTO parents VALUES (1);
    INSERT INTO children VALUES (1, 1);
    -- Fails with 40001 until it has been called `$1` times (counted in a
    -- sequence, which does not roll back).
    CREATE FUNCTION flaky(succeed_on bigint) RETURNS int LANGUAGE plpgsql AS $$
    BEGIN
        IF nextval('attempts') < succeed_on THEN
            RAISE EXCEPTION 'simulated conflict' USING ERRCODE = '40001';
        END IF;
        RETURN 1;
    END $$;";

async fn attempts(db: &DatabaseManager) -> i64 {
    db.read()
        .strategy(ReadStrategy::PrimaryOnly)
        .query_one("SELECT last_value FROM attempts", &[])
        .await
        .unwrap()
        .get(0)
}

async fn setup(db: &DatabaseManager) {
    let client = db.write_pool().unwrap().get().await.unwrap();
    client.batch_execute(SCHEMA).await.unwrap();
}

/// Backoff no test can miss: any retry would sleep at least `min_delay`
/// (jitter only lengthens a delay), and the deadline leaves room for it
/// (a delay that would end past the deadline is not slept, the call fails
/// at once — which would hide a retry).
const UNMISSABLE_MIN_DELAY: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn constraint_violations_are_never_retried() {
    let (_cluster, db) = cluster_and_manager_with(|config| {
        config.read_strategy = ReadStrategy::RegionalPreferred;
        config.retry.min_delay = UNMISSABLE_MIN_DELAY;
        config.retry.max_delay = UNMISSABLE_MIN_DELAY * 2;
        config.deadline = Duration::from_secs(30);
    })
    .await;
    setup(&db).await;

    let start = Instant::now();
    let err = db
        .execute(
            "INSERT INTO children SELECT 1, 1 FROM (SELECT nextval('attempts')) s",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::UNIQUE_VIOLATION), "{err:?}");
    assert_eq!(err.node(), Some("node0"));
    assert_eq!(attempts(&db).await, 1, "exactly one attempt for 23505");

    let err = db
        .execute(
            "INSERT INTO children SELECT 2, 99 FROM (SELECT nextval('attempts')) s",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&SqlState::FOREIGN_KEY_VIOLATION),
        "{err:?}"
    );
    assert_eq!(attempts(&db).await, 2, "exactly one attempt for 23503");

    let err = db
        .execute("INSERT INTO children VALUES (3, 1, 'x')", &[])
        .await
        .unwrap_err();
    // "INSERT has more expressions than target columns": class 42.
    assert_eq!(err.code(), Some(&SqlState::SYNTAX_ERROR), "{err:?}");
    // No backoff was slept: a single retry would have taken 5 s or more,
    // unmistakable against this 3 s bound even on a loaded machine.
    let took = start.elapsed();
    eprintln!("three failing writes took {took:?}");
    assert!(
        took < UNMISSABLE_MIN_DELAY * 3 / 5,
        "three failing writes took {took:?}: was one retried?"
    );
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serialization_failure_is_retried_until_it_succeeds() {
    let (_cluster, db) = cluster_and_manager(ReadStrategy::RegionalPreferred).await;
    setup(&db).await;
    let inserted = db
        .execute(
            "INSERT INTO log (note) SELECT 'ok' FROM (SELECT flaky(3)) s",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(inserted, 1);
    assert_eq!(attempts(&db).await, 3, "two failures, then success");

    // More failures than the schedule allows: the last error comes back.
    let err = db.execute("SELECT flaky(100)", &[]).await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::T_R_SERIALIZATION_FAILURE));
    assert_eq!(attempts(&db).await, 3 + 4, "one attempt plus three retries");
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_commit_roll_back_and_retry_as_a_whole() {
    let (cluster, db) = cluster_and_manager(ReadStrategy::RegionalPreferred).await;
    setup(&db).await;

    let id: i32 = db
        .transaction(|tx| {
            Box::pin(async move {
                let row = tx
                    .query_one(
                        "INSERT INTO log (note) VALUES ('committed') RETURNING id",
                        &[],
                    )
                    .await?;
                tx.execute("INSERT INTO parents VALUES (2)", &[]).await?;
                Ok(row.get(0))
            })
        })
        .await
        .unwrap();

    let err = db
        .transaction(|tx| {
            Box::pin(async move {
                tx.execute("INSERT INTO log (note) VALUES ('rolled back')", &[])
                    .await?;
                Err::<(), _>(Error::aborted("business rule says no"))
            })
        })
        .await
        .unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Aborted), "{err:?}");

    let err = db
        .transaction(|tx| {
            Box::pin(async move {
                tx.execute("INSERT INTO log (note) VALUES ('rolled back too')", &[])
                    .await?;
                tx.execute("INSERT INTO parents VALUES (1)", &[]).await?;
                Ok(())
            })
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::UNIQUE_VIOLATION));
    assert_eq!(
        err.node(),
        Some("node0"),
        "closure errors gain node context"
    );

    let mut runs = 0;
    db.transaction(|tx| {
        runs += 1;
        Box::pin(async move {
            tx.execute("INSERT INTO log (note) VALUES ('retried')", &[])
                .await?;
            tx.execute("SELECT flaky(3)", &[]).await?;
            Ok(())
        })
    })
    .await
    .unwrap();
    assert_eq!(runs, 3, "the whole closure reran after each 40001");

    blocking(|| cluster.wait_for_replicas(Duration::from_secs(10))).unwrap();
    let notes: Vec<String> = db
        .query("SELECT note FROM log ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(notes, ["committed", "retried"]);
    let parent: Option<i32> = db
        .query_opt("SELECT id FROM parents WHERE id = 2", &[])
        .await
        .unwrap()
        .map(|row| row.get(0));
    assert_eq!(parent, Some(2));
    assert!(id > 0);
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_lost_after_sending_is_an_unknown_outcome() {
    let (cluster, proxies, db) = proxied_with(|config| {
        // Room for the monitor to re-admit the primary between retries.
        config.retry.max_retries = 8;
        // Room for a reset, the re-admission and a whole second run of the
        // 2 s statement, on a loaded machine.
        config.deadline = Duration::from_secs(15);
    })
    .await;
    setup(&db).await;
    let proxy = &proxies[0];
    // The connection is cut once the statement is known to be running on
    // the server (so it was sent), not after a fixed delay that a slow
    // checkout on a loaded machine could outlast.
    let reset_once_running = |marker: &'static str| {
        let cluster = &cluster;
        async move {
            until_running(cluster, 0, marker).await;
            proxy.set(Fault::Reset);
            tokio::time::sleep(Duration::from_millis(10)).await;
            proxy.set(Fault::Pass);
        }
    };

    let (result, ()) = tokio::join!(
        db.execute("INSERT INTO log (note) SELECT 'slow' FROM pg_sleep(2)", &[]),
        reset_once_running("'slow' FROM pg_sleep(2)"),
    );
    let err = result.unwrap_err();
    assert!(err.is_outcome_unknown(), "{err:?}");
    assert_eq!(err.node(), Some("node0"));

    // Marked idempotent, the same failure is retried and succeeds.
    let healthy_again = wait_until(Duration::from_secs(10), || healthy(&db, "node0")).await;
    assert!(healthy_again.is_some(), "{:?}", db.status());
    let (written, ()) = tokio::join!(
        db.write().idempotent().execute(
            "INSERT INTO parents SELECT 7 FROM pg_sleep(2) ON CONFLICT DO NOTHING",
            &[]
        ),
        reset_once_running("SELECT 7 FROM pg_sleep(2)"),
    );
    assert!(written.is_ok(), "{written:?}");
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_change_does_not_break_cached_statements() {
    let (_cluster, db) = cluster_and_manager_with(|c| c.pool.max_size = 1).await;
    db.execute("CREATE TABLE items (id int)", &[])
        .await
        .unwrap();
    db.execute("INSERT INTO items VALUES (1)", &[])
        .await
        .unwrap();
    let primary = || db.read().strategy(ReadStrategy::PrimaryOnly);
    // Prepared and cached on the pool's only connection.
    assert_eq!(
        primary().query("SELECT * FROM items", &[]).await.unwrap()[0].len(),
        1
    );
    db.execute("ALTER TABLE items ADD COLUMN note text", &[])
        .await
        .unwrap();
    // The cached plan's result type changed: prepared again and run once more.
    let rows = primary().query("SELECT * FROM items", &[]).await.unwrap();
    assert_eq!(rows[0].len(), 2, "the new column is there");
    // The same for a write with RETURNING *.
    let row = db
        .write()
        .query_one("UPDATE items SET note = 'x' RETURNING *", &[])
        .await
        .unwrap();
    db.execute("ALTER TABLE items ADD COLUMN more int", &[])
        .await
        .unwrap();
    let again = db
        .write()
        .query_one("UPDATE items SET note = 'x' RETURNING *", &[])
        .await
        .unwrap();
    assert_eq!((row.len(), again.len()), (2, 3));
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_that_swallowed_an_error_does_not_report_a_commit() {
    let (_cluster, db) = cluster_and_manager(ReadStrategy::RegionalPreferred).await;
    setup(&db).await;
    let primary = || db.read().strategy(ReadStrategy::PrimaryOnly);

    // The duplicate key is ignored by the closure; PostgreSQL rolls back.
    let result = db
        .transaction(|tx| {
            Box::pin(async move {
                tx.execute("INSERT INTO log (note) VALUES ('swallowed')", &[])
                    .await?;
                let _ = tx.execute("INSERT INTO parents VALUES (1)", &[]).await;
                Ok(())
            })
        })
        .await;
    let err = result.unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::RolledBack { .. }),
        "{err:?}"
    );
    assert_eq!(err.code(), Some(&SqlState::UNIQUE_VIOLATION));
    let logged = primary()
        .query("SELECT 1 FROM log WHERE note = 'swallowed'", &[])
        .await
        .unwrap();
    assert!(logged.is_empty(), "a rolled-back transaction reported Ok");

    // A swallowed serialization failure runs the closure again.
    let mut runs = 0;
    db.transaction(|tx| {
        runs += 1;
        Box::pin(async move {
            let _ = tx.execute("SELECT flaky(3)", &[]).await;
            tx.execute("INSERT INTO log (note) VALUES ('after-retry')", &[])
                .await
                .ok();
            Ok(())
        })
    })
    .await
    .unwrap();
    assert_eq!(runs, 3, "two swallowed 40001s, then success");

    // Recovered with a savepoint: the transaction is good and commits.
    db.transaction(|tx| {
        Box::pin(async move {
            tx.batch_execute("SAVEPOINT s").await?;
            let _ = tx.execute("INSERT INTO parents VALUES (1)", &[]).await;
            tx.batch_execute("ROLLBACK TO SAVEPOINT s").await?;
            tx.execute("INSERT INTO log (note) VALUES ('recovered')", &[])
                .await?;
            Ok(())
        })
    })
    .await
    .unwrap();
    let notes: Vec<String> = primary()
        .query("SELECT note FROM log ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(notes, ["after-retry", "recovered"]);
    db.close().await;
}
