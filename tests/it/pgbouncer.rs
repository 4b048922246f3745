//! Every node behind PgBouncer in transaction pooling mode (Debian's 1.18:
//! no prepared statement support): prepared mode fails with an error that
//! names the setting to change; unnamed mode serves reads, writes,
//! transactions, causal reads and a promotion. Skipped (with the reason
//! printed) where `pgbouncer` is not installed, unless
//! `PGROUTER_PGBOUNCER_TESTS=require`.

use std::time::{Duration, Instant};

use crate::support::*;
use pgrouter::config::StatementMode;
use pgrouter::error::ErrorKind;
use pgrouter::CallInfo;
use pgrouter::Config;
use pgrouter::DatabaseManager;
use pgrouter::Error;
use pgrouter::ReadStrategy;
use pgrouter::TxFuture;
use pgrouter_testkit::{Cluster, PgBouncer, Pooler, StopMode};

/// A primary and two replicas, each behind its own PgBouncer.
fn pooled_cluster() -> Cluster {
    let builder = Cluster::builder().replicas(2).pooler(Pooler::PgBouncer);
    blocking(|| builder.start()).expect("a cluster behind PgBouncer")
}

async fn manager(cluster: &Cluster, mode: StatementMode) -> DatabaseManager {
    let ports: Vec<u16> = cluster.nodes().iter().map(|n| n.client_port()).collect();
    let mut config: Config = fast_config(node_configs(cluster, &ports));
    config.statement_mode = mode;
    config.read_strategy = ReadStrategy::PrimaryOnly;
    DatabaseManager::new(config).await.expect("manager")
}

async fn create_table(cluster: &Cluster) {
    let (client, driver) = session(cluster, 0).await;
    client
        .batch_execute("CREATE TABLE items (id int PRIMARY KEY, note text NOT NULL)")
        .await
        .expect("table");
    drop(client);
    let _ = driver.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_mode_behind_a_transaction_pooler_names_the_setting_to_change() {
    if !PgBouncer::installed_or_skip() {
        return;
    }
    let cluster = pooled_cluster();
    let db = manager(&cluster, StatementMode::Prepared).await;
    // Concurrent calls make PgBouncer hand a connection's Bind to another
    // server connection than the one that took its Parse.
    let mut lost = None;
    for round in 0..20 {
        let calls = (0..16).map(|n| {
            let db = db.clone();
            tokio::spawn(async move {
                let sql = format!("SELECT $1::int + {n} + {round}");
                db.read().query_one(&sql, &[&1i32]).await.map(drop)
            })
        });
        for call in futures_util::future::join_all(calls).await {
            match call.expect("task") {
                Ok(()) => {}
                Err(error) if *error.kind() == ErrorKind::StatementMode => lost = Some(error),
                Err(other) => panic!("unexpected error: {other:?}"),
            }
        }
        if lost.is_some() {
            break;
        }
    }
    let error = lost.expect("prepared statements never went missing behind PgBouncer");
    let shown = error.to_string();
    assert!(
        shown.contains("set statement_mode = unnamed for node node0"),
        "{shown}"
    );
    assert!(
        matches!(error.code().map(|c| c.code()), Some("26000" | "42P05")),
        "{error:?}"
    );
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unnamed_mode_serves_reads_writes_transactions_and_causal_reads() {
    if !PgBouncer::installed_or_skip() {
        return;
    }
    let cluster = pooled_cluster();
    create_table(&cluster).await;
    let db = manager(&cluster, StatementMode::Unnamed).await;

    // Concurrent parameterised writes and reads: the load that breaks
    // prepared mode.
    let calls = (0..64).map(|id: i32| {
        let db = db.clone();
        tokio::spawn(async move {
            let note = format!("note {id}");
            db.execute(
                "INSERT INTO items (id, note) VALUES ($1, $2)",
                &[&id, &note],
            )
            .await?;
            let row = db
                .query_one("SELECT note FROM items WHERE id = $1", &[&id])
                .await?;
            assert_eq!(row.get::<_, String>(0), note);
            Ok::<_, Error>(())
        })
    });
    for call in futures_util::future::join_all(calls).await {
        call.expect("task").expect("a call through PgBouncer");
    }

    // Transactions: statements with parameters, prepare_cached (not kept
    // across transactions in unnamed mode), and a causal token.
    for round in 0..10i32 {
        let info = CallInfo::with_token();
        let moved: u64 = db
            .write()
            .info(&info)
            .transaction(|tx| -> TxFuture<'_, u64> {
                Box::pin(async move {
                    let update = tx
                        .prepare_cached("UPDATE items SET note = $1 WHERE id = $2")
                        .await?;
                    let note = format!("round {round}");
                    let n = tx.execute(&update, &[&note, &round]).await?;
                    let sum = tx.query_one("SELECT sum(id) FROM items", &[]).await?;
                    assert_eq!(sum.get::<_, i64>(0), (0..64).sum::<i64>());
                    Ok(n)
                })
            })
            .await
            .expect("transaction through PgBouncer");
        assert_eq!(moved, 1);
        let token = info.token().expect("the transaction's token");
        let row = db
            .read()
            .strategy(ReadStrategy::RegionalPreferred)
            .after(token)
            .query_one("SELECT note FROM items WHERE id = $1", &[&round])
            .await
            .expect("causal read");
        assert_eq!(row.get::<_, String>(0), format!("round {round}"));
    }

    // A write with its token, and an exactly-once write.
    let info = CallInfo::with_token();
    db.write()
        .info(&info)
        .execute("UPDATE items SET note = $1 WHERE id = 0", &[&"token"])
        .await
        .expect("write with token");
    let token = info.token().expect("the write's token");
    let note: String = db
        .read()
        .strategy(ReadStrategy::GlobalRandom)
        .after(token)
        .query_one("SELECT note FROM items WHERE id = 0", &[])
        .await
        .expect("causal read")
        .get(0);
    assert_eq!(note, "token");
    let inserted = db
        .write()
        .exactly_once()
        .execute(
            "INSERT INTO items (id, note) VALUES ($1, $2)",
            &[&1000i32, &"once"],
        )
        .await
        .expect("exactly-once write");
    assert_eq!(inserted, 1);

    // Errors stay what they are in prepared mode.
    let error = db.query("SELECT $1::int", &[]).await.unwrap_err();
    assert!(matches!(error.kind(), ErrorKind::Statement), "{error:?}");
    let error = db
        .execute(
            "INSERT INTO items (id, note) VALUES ($1, $2)",
            &[&1000i32, &"again"],
        )
        .await
        .unwrap_err();
    assert_eq!(error.code().map(|c| c.code()), Some("23505"));
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unnamed_mode_follows_a_promotion_through_pgbouncer() {
    if !PgBouncer::installed_or_skip() {
        return;
    }
    let cluster = pooled_cluster();
    create_table(&cluster).await;
    let db = manager(&cluster, StatementMode::Unnamed).await;
    let write = |id: i32| {
        let db = db.clone();
        async move {
            db.write()
                .deadline(Duration::from_secs(2))
                .query_one(
                    "INSERT INTO items (id, note) VALUES ($1, 'x') RETURNING inet_server_port()",
                    &[&id],
                )
                .await
                .map(|row| row.get::<_, i32>(0))
        }
    };
    assert_eq!(write(1).await.unwrap(), i32::from(port_of(&cluster, 0)));
    blocking(|| cluster.wait_for_replicas(Duration::from_secs(10))).unwrap();
    blocking(|| cluster.stop(0, StopMode::Immediate)).unwrap();
    blocking(|| cluster.promote(1)).unwrap();
    let promoted = Instant::now();
    let port = loop {
        match write(2).await {
            Ok(port) => break port,
            Err(error) => assert!(
                promoted.elapsed() < Duration::from_secs(20),
                "no write after the promotion: {error:?}"
            ),
        }
    };
    assert_eq!(port, i32::from(port_of(&cluster, 1)));
    assert_eq!(db.status().write_target.as_deref(), Some("node1"));
    db.close().await;
}
