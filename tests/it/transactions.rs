//! Transactions as tokio-postgres code writes them: options sent with
//! `BEGIN` and `SET TRANSACTION` as the first statement (the identity query
//! must not break either), a serialization failure under SERIALIZABLE run
//! again as a whole, and explicit `begin()` / `commit()` / `rollback()`
//! (a lost `COMMIT` answer resolved, a dropped transaction rolled back).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use pgrouter::error::ErrorKind;
use pgrouter::status::{CommitOutcome, Event};
use pgrouter::tokio_postgres::error::SqlState;
use pgrouter::tokio_postgres::IsolationLevel;
use pgrouter::{Config, DatabaseManager, Error, ReadStrategy, Tx};
use pgrouter_testkit::{Cluster, Fault, FaultProxy};

const MARKERS: &str = "pgrouter_outcomes";

/// What the transaction itself says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Characteristics {
    isolation: String,
    read_only: String,
    deferrable: String,
}

impl Characteristics {
    fn expected(isolation: &str, read_only: &str, deferrable: &str) -> Self {
        Self {
            isolation: isolation.to_owned(),
            read_only: read_only.to_owned(),
            deferrable: deferrable.to_owned(),
        }
    }
}

async fn characteristics(tx: &Tx<'_>) -> Result<Characteristics, Error> {
    let row = tx
        .query_one(
            "SELECT current_setting('transaction_isolation'), \
             current_setting('transaction_read_only'), \
             current_setting('transaction_deferrable')",
            &[],
        )
        .await?;
    Ok(Characteristics {
        isolation: row.get(0),
        read_only: row.get(1),
        deferrable: row.get(2),
    })
}

/// The cases: how the transaction is set up (builder options, or the
/// body's first statement), and what it must then say.
fn cases() -> Vec<(&'static str, Characteristics)> {
    vec![
        (
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            Characteristics::expected("serializable", "off", "off"),
        ),
        (
            "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
            Characteristics::expected("repeatable read", "off", "off"),
        ),
        (
            "SET TRANSACTION READ ONLY",
            Characteristics::expected("read committed", "on", "off"),
        ),
        (
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE",
            Characteristics::expected("serializable", "on", "on"),
        ),
    ]
}

/// A write builder with the options that `set` (one of [`cases`]) sets.
fn with_options<'a>(db: &'a DatabaseManager, set: &str) -> pgrouter::WriteBuilder<'a> {
    let write = db.write();
    match set {
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE" => {
            write.isolation_level(IsolationLevel::Serializable)
        }
        "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ" => {
            write.isolation_level(IsolationLevel::RepeatableRead)
        }
        "SET TRANSACTION READ ONLY" => write.read_only(true),
        _ => write
            .isolation_level(IsolationLevel::Serializable)
            .read_only(true)
            .deferrable(true),
    }
}

/// Every case through the options, through `SET TRANSACTION` sent with
/// `execute` and with `batch_execute`, in closures and in transactions from
/// `begin()`; on `db`.
async fn check_every_way(db: &DatabaseManager) {
    for (set, expected) in cases() {
        let seen = with_options(db, set)
            .transaction(|tx| Box::pin(characteristics(tx)))
            .await
            .unwrap_or_else(|e| panic!("{set} as options: {e:?}"));
        assert_eq!(seen, expected, "{set} as options");

        let seen = db
            .transaction(|tx| {
                Box::pin(async move {
                    assert_eq!(tx.execute(set, &[]).await?, 0);
                    characteristics(tx).await
                })
            })
            .await
            .unwrap_or_else(|e| panic!("{set} as the first statement: {e:?}"));
        assert_eq!(seen, expected, "{set} as the first statement");

        let tx = with_options(db, set).begin().await.expect("begin");
        let seen = characteristics(&tx).await.expect("inside begin()");
        tx.commit().await.expect("commit");
        assert_eq!(seen, expected, "{set} as options of begin()");

        let tx = db.begin().await.expect("begin");
        tx.batch_execute(set).await.expect("SET TRANSACTION");
        let seen = characteristics(&tx).await.expect("inside begin()");
        tx.commit().await.expect("commit");
        assert_eq!(seen, expected, "{set} first in begin()");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_read_only_and_deferrable_through_options_and_set_transaction() {
    let (cluster, db) = cluster_and_manager(ReadStrategy::RegionalPreferred).await;
    check_every_way(&db).await;

    // A read-only transaction refuses writes, as PostgreSQL says.
    let refused = db
        .write()
        .read_only(true)
        .transaction(|tx| {
            Box::pin(async move { tx.execute("CREATE TABLE nope (id int)", &[]).await })
        })
        .await
        .expect_err("a write in a read-only transaction");
    assert_eq!(
        refused.code(),
        Some(&SqlState::READ_ONLY_SQL_TRANSACTION),
        "{refused:?}"
    );

    // Two settings sent one after the other both come before the first
    // query (a snapshot needs the isolation level set before it).
    let (client, driver) = session(&cluster, 0).await;
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await
        .unwrap();
    let snapshot: String = client
        .query_one("SELECT pg_export_snapshot()", &[])
        .await
        .unwrap()
        .get(0);
    let imported = db
        .transaction(|tx| {
            let snapshot = snapshot.clone();
            Box::pin(async move {
                tx.batch_execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                    .await?;
                tx.batch_execute(&format!("SET TRANSACTION SNAPSHOT '{snapshot}'"))
                    .await?;
                let row = tx
                    .query_one("SELECT current_setting('transaction_isolation')", &[])
                    .await?;
                Ok(row.get::<_, String>(0))
            })
        })
        .await
        .expect("a snapshot imported by the body's first statements");
    assert_eq!(imported, "repeatable read");
    drop(client);
    let _ = driver.await;

    // The options belong to transactions: a plain statement is refused.
    let plain = db
        .write()
        .isolation_level(IsolationLevel::Serializable)
        .execute("SELECT 1", &[])
        .await
        .expect_err("options on a plain statement");
    assert!(
        matches!(
            plain.kind(),
            ErrorKind::InvalidArgument {
                option: "isolation_level",
                ..
            }
        ),
        "{plain:?}"
    );
    let client = db.write().read_only(true).client().await;
    assert!(
        matches!(
            client.as_ref().map_err(Error::kind),
            Err(ErrorKind::InvalidArgument {
                option: "read_only",
                ..
            })
        ),
        "options on a dedicated connection"
    );
    let once = db
        .write()
        .isolation_level(IsolationLevel::Serializable)
        .exactly_once()
        .query_one("SELECT current_setting('transaction_isolation')", &[])
        .await
        .expect("exactly_once() runs in a transaction with the options");
    assert_eq!(once.get::<_, String>(0), "serializable");
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_marker_table_read_only_transactions_still_work() {
    let (cluster, db) = cluster_and_manager_with(|config| {
        config.outcomes.marker_table = Some(MARKERS.to_owned());
    })
    .await;
    create_markers(&cluster).await;
    check_every_way(&db).await;
    let markers: i64 = db
        .read()
        .strategy(ReadStrategy::PrimaryOnly)
        .query_one(&format!("SELECT count(*) FROM {MARKERS}"), &[])
        .await
        .unwrap()
        .get(0);
    // The read-write cases (two isolation levels, four ways each) inserted
    // their marker; the read-only ones could not and did not.
    assert_eq!(markers, 8);
    db.close().await;
}

async fn create_markers(cluster: &Cluster) {
    let mut outcomes = pgrouter::config::OutcomeSettings::default();
    outcomes.marker_table = Some(MARKERS.to_owned());
    let ddl = outcomes.marker_table_sql().expect("marker table SQL");
    let (client, driver) = session(cluster, 0).await;
    client.batch_execute(&ddl).await.expect("marker table");
    drop(client);
    let _ = driver.await;
}

/// Two doctors on call; each transaction takes one off call if both are
/// on: write skew, which only SERIALIZABLE catches.
const DOCTORS: &str = "
    CREATE TABLE doctors (name text PRIMARY KEY, on_call bool NOT NULL);
    INSERT INTO doctors VALUES ('alice', true), ('bob', true);";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serialization_failure_under_serializable_reruns_the_closure_whole() {
    let (_cluster, db) = cluster_and_manager(ReadStrategy::RegionalPreferred).await;
    for how in ["option", "SET TRANSACTION"] {
        db.execute("DROP TABLE IF EXISTS doctors", &[])
            .await
            .unwrap();
        let client = db.write_pool().unwrap().get().await.unwrap();
        client.batch_execute(DOCTORS).await.unwrap();
        drop(client);
        // Both read before either writes: one of them must fail.
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let runs = Arc::new(AtomicU32::new(0));
        let off_call = |name: &'static str| {
            let (db, barrier, runs) = (db.clone(), Arc::clone(&barrier), Arc::clone(&runs));
            tokio::spawn(async move {
                let write = match how {
                    "option" => db.write().isolation_level(IsolationLevel::Serializable),
                    _ => db.write(),
                };
                let mine = AtomicU32::new(0);
                write
                    .transaction(|tx| {
                        let run = mine.fetch_add(1, Ordering::SeqCst) + 1;
                        runs.fetch_add(1, Ordering::SeqCst);
                        let barrier = Arc::clone(&barrier);
                        Box::pin(async move {
                            if how != "option" {
                                tx.batch_execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                                    .await?;
                            }
                            let row = tx
                                .query_one(
                                    "SELECT count(*), current_setting('transaction_isolation') \
                                     FROM doctors WHERE on_call",
                                    &[],
                                )
                                .await?;
                            assert_eq!(row.get::<_, String>(1), "serializable");
                            if run == 1 {
                                barrier.wait().await;
                            }
                            if row.get::<_, i64>(0) < 2 {
                                return Ok(false);
                            }
                            tx.execute(
                                "UPDATE doctors SET on_call = false WHERE name = $1",
                                &[&name],
                            )
                            .await?;
                            Ok(true)
                        })
                    })
                    .await
            })
        };
        let (alice, bob) = (off_call("alice"), off_call("bob"));
        let alice = alice.await.unwrap().expect("alice's transaction");
        let bob = bob.await.unwrap().expect("bob's transaction");
        assert!(alice != bob, "{how}: exactly one goes off call");
        assert_eq!(
            runs.load(Ordering::SeqCst),
            3,
            "{how}: the loser's closure ran again, whole"
        );
        let on_call: i64 = db
            .read()
            .strategy(ReadStrategy::PrimaryOnly)
            .query_one("SELECT count(*) FROM doctors WHERE on_call", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(on_call, 1, "{how}");
    }
    db.close().await;
}

/// A cluster of one node behind a fault proxy, and a manager that goes
/// through it (deadline long enough to resolve on a loaded machine).
async fn proxied_primary() -> (Cluster, Arc<FaultProxy>, DatabaseManager) {
    let builder = builder().replicas(0).pooler(pooler());
    let cluster = blocking(|| builder.start()).expect("cluster");
    let proxy = FaultProxy::start(cluster.node(0).client_addr())
        .await
        .expect("proxy");
    let mut config: Config = fast_config(node_configs(&cluster, &[proxy.port()]));
    config.deadline = Duration::from_secs(20);
    let db = DatabaseManager::new(config).await.expect("manager");
    let (client, driver) = session(&cluster, 0).await;
    client
        .batch_execute("CREATE TABLE ledger (id serial PRIMARY KEY, note text NOT NULL)")
        .await
        .expect("schema");
    drop(client);
    let _ = driver.await;
    (cluster, Arc::new(proxy), db)
}

/// How many ledger rows carry `note` on node 0, asked directly.
async fn ledger_rows(cluster: &Cluster, note: &str) -> i64 {
    let (client, driver) = session(cluster, 0).await;
    let sql = "SELECT count(*) FROM ledger WHERE note = $1";
    let count = client.query_one(sql, &[&note]).await.expect(sql).get(0);
    drop(client);
    let _ = driver.await;
    count
}

/// Cuts every connection through `proxy` (held answers are lost), then
/// lets traffic pass again.
async fn cut(proxy: &FaultProxy) {
    proxy.set(Fault::Reset);
    tokio::time::sleep(Duration::from_millis(20)).await;
    proxy.set(Fault::Pass);
}

fn resolved(events: &mut tokio::sync::broadcast::Receiver<Event>) -> Option<CommitOutcome> {
    std::iter::from_fn(|| events.try_recv().ok()).find_map(|event| match event {
        Event::CommitResolved { outcome, .. } => Some(outcome),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_commit_whose_answer_is_lost_is_resolved() {
    let (cluster, proxy, db) = proxied_primary().await;
    let mut events = db.subscribe();

    // COMMIT reaches the server and commits; its answer is held back, then
    // lost when the connection is cut: resolved as committed.
    let tx = db.begin().await.expect("begin");
    tx.execute("INSERT INTO ledger (note) VALUES ('committed')", &[])
        .await
        .expect("insert");
    proxy.set(Fault::HoldReplies);
    let (committed, ()) = tokio::join!(tx.commit(), async {
        let seen = wait_until_async(Duration::from_secs(15), || async {
            ledger_rows(&cluster, "committed").await > 0
        })
        .await;
        assert!(seen.is_some(), "the COMMIT never reached the server");
        cut(&proxy).await;
    });
    committed.expect("resolved as committed");
    assert_eq!(resolved(&mut events), Some(CommitOutcome::Committed));
    assert_eq!(ledger_rows(&cluster, "committed").await, 1);

    // COMMIT never reaches the server: resolved as not committed, and not
    // run again (nothing can be, from outside a closure).
    let tx = db.begin().await.expect("begin");
    tx.execute("INSERT INTO ledger (note) VALUES ('lost')", &[])
        .await
        .expect("insert");
    proxy.set(Fault::BlackHole);
    let (lost, ()) = tokio::join!(tx.commit(), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        cut(&proxy).await;
    });
    let error = lost.expect_err("COMMIT never arrived");
    assert_eq!(*error.kind(), ErrorKind::NotCommitted, "{error:?}");
    assert!(!error.is_outcome_unknown());
    assert_eq!(resolved(&mut events), Some(CommitOutcome::NotCommitted));
    assert_eq!(ledger_rows(&cluster, "lost").await, 0);
    db.close().await;
}

/// Sessions of the test's role on node 0 inside a transaction and idle
/// (a connection returned to its pool mid-transaction would be one).
async fn idle_in_transaction(cluster: &Cluster) -> i64 {
    let (client, driver) = session(cluster, 0).await;
    let sql = "SELECT count(*) FROM pg_stat_activity \
               WHERE state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()";
    let count = client.query_one(sql, &[]).await.expect(sql).get(0);
    drop(client);
    let _ = driver.await;
    count
}

/// Sessions on node 0 running `SELECT pg_sleep(30)`.
async fn sleeping(cluster: &Cluster) -> i64 {
    let (client, driver) = session(cluster, 0).await;
    let sql = "SELECT count(*) FROM pg_stat_activity \
               WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'";
    let count = client.query_one(sql, &[]).await.expect(sql).get(0);
    drop(client);
    let _ = driver.await;
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_transaction_rolls_back_when_dropped_or_asked() {
    // One connection per pool: a transaction left open on it would block
    // every later call.
    let (cluster, db) = cluster_and_manager_with(|config| config.pool.max_size = 1).await;
    db.execute("CREATE TABLE items (id int PRIMARY KEY)", &[])
        .await
        .unwrap();
    let primary = || db.read().strategy(ReadStrategy::PrimaryOnly);

    let tx = db.begin().await.expect("begin");
    tx.execute("INSERT INTO items VALUES (1)", &[])
        .await
        .unwrap();
    drop(tx);
    // The pool's only connection comes back, outside any transaction.
    let count: i64 = primary()
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .expect("the connection is usable again")
        .get(0);
    assert_eq!(count, 0, "a dropped transaction committed");

    let tx = db.begin().await.expect("begin");
    tx.execute("INSERT INTO items VALUES (2)", &[])
        .await
        .unwrap();
    tx.rollback().await.expect("rollback");
    let count: i64 = primary()
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 0, "a rolled-back transaction committed");
    assert_eq!(idle_in_transaction(&cluster).await, 0);

    // Dropped mid-statement: the statement is cancelled and the
    // connection closed, never returned to the pool inside the
    // transaction.
    let tx = db.begin().await.expect("begin");
    tx.execute("INSERT INTO items VALUES (3)", &[])
        .await
        .unwrap();
    let slow = tokio::time::timeout(
        Duration::from_millis(300),
        tx.execute("SELECT pg_sleep(30)", &[]),
    )
    .await;
    assert!(slow.is_err(), "pg_sleep(30) finished early");
    drop(tx);
    let gone = wait_until_async(Duration::from_secs(10), || async {
        sleeping(&cluster).await == 0 && idle_in_transaction(&cluster).await == 0
    })
    .await;
    assert!(gone.is_some(), "a session was left inside a transaction");
    let count: i64 = primary()
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .expect("the pool hands out a usable connection")
        .get(0);
    assert_eq!(count, 0);

    // Committed, it stays.
    let tx = db.begin().await.expect("begin");
    tx.execute("INSERT INTO items VALUES (4)", &[])
        .await
        .unwrap();
    tx.commit().await.expect("commit");
    let count: i64 = primary()
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 1);
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_transaction_is_bounded_by_its_deadline() {
    let (cluster, db) = cluster_and_manager(ReadStrategy::RegionalPreferred).await;
    db.execute("CREATE TABLE items (id int PRIMARY KEY)", &[])
        .await
        .unwrap();
    let deadline = Duration::from_secs(1);
    let tx = db.write().deadline(deadline).begin().await.expect("begin");
    tx.execute("INSERT INTO items VALUES (1)", &[])
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let error = tx
        .execute("SELECT pg_sleep(30)", &[])
        .await
        .expect_err("past the deadline");
    assert!(error.is_timeout(), "{error:?}");
    assert!(
        started.elapsed() < deadline + SLACK,
        "{:?}",
        started.elapsed()
    );
    // Nothing more is sent, and COMMIT is refused.
    let later = tx
        .execute("SELECT 1", &[])
        .await
        .expect_err("after the deadline");
    assert!(later.is_timeout(), "{later:?}");
    let commit = tx.commit().await.expect_err("commit after the deadline");
    assert!(commit.is_timeout(), "{commit:?}");
    assert!(!commit.is_outcome_unknown(), "COMMIT was never sent");
    let count: i64 = db
        .read()
        .strategy(ReadStrategy::PrimaryOnly)
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 0);
    // The sleeping statement was cancelled on the server.
    let stopped = wait_until_async(Duration::from_secs(10), || async {
        sleeping(&cluster).await == 0
    })
    .await;
    assert!(stopped.is_some(), "the statement still runs");
    db.close().await;
}

/// Every kind of statement a `Tx` can send, failing (or, for the last
/// two, its answer dropped unread while it fails).
const KINDS: [&str; 16] = [
    "query",
    "query_one",
    "query_opt",
    "execute",
    "query_typed",
    "query_raw",
    "simple_query",
    "batch_execute",
    "prepare",
    "prepare_typed",
    "prepare_cached",
    "copy_in",
    "copy_in_aborted",
    "copy_out",
    "query_raw_unread",
    "future_dropped",
];

/// Sends a statement of `kind` that fails, and swallows what it can see of
/// the failure.
async fn fail(tx: &Tx<'_>, kind: &str) {
    use futures_util::StreamExt;
    use pgrouter::tokio_postgres::types::Type;
    // Rows 1 and 2 come back before row 3 divides by zero.
    const STREAMED: &str = "SELECT 1 / (3 - g) FROM generate_series(1, 5) g";
    let failed = match kind {
        "query" => tx.query("SELECT 1/0", &[]).await.is_err(),
        "query_one" => tx.query_one("SELECT 1/0", &[]).await.is_err(),
        "query_opt" => tx.query_opt("SELECT 1/0", &[]).await.is_err(),
        "execute" => tx
            .execute("INSERT INTO nums VALUES (1)", &[])
            .await
            .is_err(),
        "query_typed" => tx
            .query_typed("SELECT 1 / $1", &[(&0i32, Type::INT4)])
            .await
            .is_err(),
        "query_raw" => {
            let rows = tx
                .query_raw(STREAMED, Vec::<i32>::new())
                .await
                .expect("started");
            let items: Vec<_> = rows.collect().await;
            assert!(items[0].is_ok() && items[1].is_ok(), "{items:?}");
            items.iter().any(Result::is_err)
        }
        "simple_query" => tx.simple_query("SELECT 1/0").await.is_err(),
        "batch_execute" => tx.batch_execute("SELECT 1/0").await.is_err(),
        "prepare" => tx.prepare("SELEKT 1").await.is_err(),
        "prepare_typed" => tx
            .prepare_typed("SELECT $1::no_such_type", &[])
            .await
            .is_err(),
        "prepare_cached" => tx.prepare_cached("SELEKT 2").await.is_err(),
        "copy_in" => {
            let data =
                futures_util::stream::iter([Ok::<_, std::io::Error>(b"not a number\n".as_slice())]);
            tx.copy_in("COPY nums FROM STDIN", data).await.is_err()
        }
        "copy_in_aborted" => {
            let data = futures_util::stream::iter([
                Ok(b"7\n".as_slice()),
                Err(std::io::Error::other("the source failed")),
            ]);
            let error = tx.copy_in("COPY nums FROM STDIN", data).await.unwrap_err();
            assert_eq!(*error.kind(), ErrorKind::Aborted, "{error:?}");
            true
        }
        "copy_out" => match tx.copy_out("COPY (SELECT 1/0) TO STDOUT").await {
            Err(_) => true,
            Ok(data) => data.collect::<Vec<_>>().await.iter().any(Result::is_err),
        },
        "query_raw_unread" => {
            // The first row is read, the error behind it never is.
            let mut rows = tx
                .query_raw(STREAMED, Vec::<i32>::new())
                .await
                .expect("started");
            assert!(rows.next().await.expect("a first row").is_ok());
            return;
        }
        "future_dropped" => {
            // Dropped while the server still runs it; it fails later.
            let sql = "DO $$ BEGIN PERFORM pg_sleep(0.5); PERFORM 1 / 0; END $$";
            let slow = tx.execute(sql, &[]);
            assert!(tokio::time::timeout(Duration::from_millis(50), slow)
                .await
                .is_err());
            return;
        }
        other => unreachable!("no kind {other}"),
    };
    assert!(failed, "{kind} did not fail");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swallowed_error_from_any_statement_kind_never_ends_as_ok() {
    let (_cluster, db) = cluster_and_manager(ReadStrategy::RegionalPreferred).await;
    db.execute("CREATE TABLE nums (n int PRIMARY KEY)", &[])
        .await
        .unwrap();
    db.execute("CREATE TABLE log (note text)", &[])
        .await
        .unwrap();
    db.execute("INSERT INTO nums VALUES (1)", &[])
        .await
        .unwrap();
    let logged = |note: String| {
        let db = db.clone();
        async move {
            db.read()
                .strategy(ReadStrategy::PrimaryOnly)
                .query_one("SELECT count(*) FROM log WHERE note = $1", &[&note])
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    for kind in KINDS {
        let note = format!("closure {kind}");
        let result = db
            .transaction(|tx| {
                let note = note.clone();
                Box::pin(async move {
                    tx.execute("INSERT INTO log (note) VALUES ($1)", &[&note])
                        .await?;
                    fail(tx, kind).await;
                    Ok(())
                })
            })
            .await;
        let error = result.expect_err(&note);
        assert!(
            matches!(error.kind(), ErrorKind::RolledBack { .. }),
            "{note}: {error:?}"
        );
        assert_eq!(logged(note.clone()).await, 0, "{note} committed");

        let note = format!("begin {kind}");
        let tx = db.begin().await.expect("begin");
        tx.execute("INSERT INTO log (note) VALUES ($1)", &[&note])
            .await
            .unwrap();
        fail(&tx, kind).await;
        let error = tx.commit().await.expect_err(&note);
        assert!(
            matches!(error.kind(), ErrorKind::RolledBack { .. }),
            "{note}: {error:?}"
        );
        assert_eq!(logged(note.clone()).await, 0, "{note} committed");
    }

    // The check costs nothing where nothing failed: a stream read to its
    // end, or dropped early with nothing wrong, still commits.
    db.transaction(|tx| {
        Box::pin(async move {
            use futures_util::StreamExt;
            let sql = "SELECT g FROM generate_series(1, 3) g";
            let all: Vec<_> = tx.query_raw(sql, Vec::<i32>::new()).await?.collect().await;
            assert_eq!(all.len(), 3);
            let mut some = tx.query_raw(sql, Vec::<i32>::new()).await?;
            assert!(some.next().await.is_some());
            drop(some);
            tx.execute("INSERT INTO log (note) VALUES ('streams')", &[])
                .await?;
            Ok(())
        })
    })
    .await
    .expect("nothing failed");
    assert_eq!(logged("streams".to_owned()).await, 1);
    db.close().await;
}

/// Rows of `items` on node 0, asked directly (the manager may be closed).
async fn items_on_primary(cluster: &Cluster) -> Vec<i32> {
    let (client, driver) = session(cluster, 0).await;
    let rows = client
        .query("SELECT id FROM items ORDER BY id", &[])
        .await
        .expect("items");
    drop(client);
    let _ = driver.await;
    rows.iter().map(|row| row.get(0)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_waits_for_an_explicit_transaction_then_stops_it() {
    let timeout = Duration::from_secs(2);
    let (cluster, db) = cluster_and_manager_with(|config| config.close_timeout = timeout).await;
    db.execute("CREATE TABLE items (id int PRIMARY KEY)", &[])
        .await
        .unwrap();

    // Open when close starts, ended within the close timeout: it commits,
    // and close waits for it.
    let tx = db.begin().await.expect("begin");
    tx.execute("INSERT INTO items VALUES (1)", &[])
        .await
        .unwrap();
    let closing = tokio::spawn({
        let db = db.clone();
        async move { db.close().await }
    });
    let refused = wait_until_async(Duration::from_secs(5), || async {
        matches!(db.begin().await.map(drop), Err(e) if *e.kind() == ErrorKind::Closed)
    })
    .await;
    assert!(refused.is_some(), "close never started");
    tx.execute("INSERT INTO items VALUES (2)", &[])
        .await
        .expect("a transaction in flight goes on while closing");
    assert!(
        !closing.is_finished(),
        "close did not wait for the transaction"
    );
    tx.commit().await.expect("commit while closing");
    tokio::time::timeout(timeout + SLACK, closing)
        .await
        .expect("close ends once the transaction did")
        .unwrap();
    assert_eq!(items_on_primary(&cluster).await, [1, 2]);

    // Still open when the close timeout runs out: stopped, never committed.
    let ports: Vec<u16> = cluster.nodes().iter().map(|n| n.client_port()).collect();
    let mut config = fast_config(node_configs(&cluster, &ports));
    config.close_timeout = Duration::from_millis(500);
    let db = DatabaseManager::new(config).await.expect("manager");
    let tx = db.begin().await.expect("begin");
    tx.execute("INSERT INTO items VALUES (3)", &[])
        .await
        .unwrap();
    let started = std::time::Instant::now();
    db.close().await;
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "close waited for the transaction"
    );
    let stopped = tx
        .execute("INSERT INTO items VALUES (4)", &[])
        .await
        .expect_err("stopped by close");
    assert_eq!(*stopped.kind(), ErrorKind::Closed, "{stopped:?}");
    let commit = tx.commit().await.expect_err("stopped by close");
    assert_eq!(*commit.kind(), ErrorKind::Closed, "{commit:?}");
    assert!(!commit.is_outcome_unknown(), "COMMIT was never sent");
    let gone = wait_until_async(Duration::from_secs(10), || async {
        idle_in_transaction(&cluster).await == 0
    })
    .await;
    assert!(gone.is_some(), "the stopped transaction's session lingers");
    assert_eq!(items_on_primary(&cluster).await, [1, 2]);
}
