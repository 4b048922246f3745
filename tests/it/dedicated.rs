//! Connections handed to the caller: routed by the read rules or to the
//! primary; and `LISTEN` that follows the primary through a promotion.

use std::time::Duration;

use futures_util::StreamExt;
use pgrouter::listen::Notice;
use pgrouter::{CallInfo, ReadStrategy};
use pgrouter_testkit::StopMode;

use crate::support::*;

/// Whether `client`'s server is in recovery.
async fn in_recovery(client: &deadpool_postgres::Client) -> bool {
    let row = client.query_one("SELECT pg_is_in_recovery()", &[]).await;
    row.expect("pg_is_in_recovery").get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_clients_follow_the_read_rules_and_the_primary() {
    let (cluster, db) = cluster_and_manager(ReadStrategy::RegionalPreferred).await;
    db.execute("CREATE TABLE c (x int)", &[]).await.unwrap();

    // The local replica, as a read would go.
    let info = CallInfo::new();
    let client = db.read().info(&info).client().await.unwrap();
    assert!(in_recovery(&client).await);
    assert_eq!(info.server().map(|s| s.node), Some("node1".to_owned()));
    let copied: Vec<_> = client
        .copy_out("COPY (SELECT generate_series(1, 3)) TO STDOUT")
        .await
        .unwrap()
        .collect()
        .await;
    let text: Vec<u8> = copied
        .into_iter()
        .flat_map(|chunk| chunk.unwrap())
        .collect();
    assert_eq!(text, b"1\n2\n3\n");
    drop(client);

    // Past a causal token no replica has replayed: the primary's.
    blocking(|| cluster.wait_for_replicas(Duration::from_secs(10))).unwrap();
    for replica in [1, 2] {
        blocking(|| cluster.pause_replay(replica)).unwrap();
    }
    let written = CallInfo::with_token();
    db.write()
        .info(&written)
        .execute("INSERT INTO c VALUES (1)", &[])
        .await
        .unwrap();
    let token = written.token().unwrap();
    let client = db.read().after(token).client().await.unwrap();
    assert!(
        !in_recovery(&client).await,
        "only the primary has the write"
    );
    let row = client
        .query_one("SELECT count(*) FROM c", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 1);
    drop(client);
    for replica in [1, 2] {
        blocking(|| cluster.resume_replay(replica)).unwrap();
    }

    // The primary's, for COPY FROM and hand-driven transactions.
    let mut client = db.write().client().await.unwrap();
    assert!(!in_recovery(&client).await);
    let tx = client.transaction().await.unwrap();
    tx.execute("INSERT INTO c VALUES (2)", &[]).await.unwrap();
    tx.commit().await.unwrap();
    drop(client);
    let rows = db.write().query_one("SELECT count(*) FROM c", &[]).await;
    assert_eq!(rows.unwrap().get::<_, i64>(0), 2);
    let status = db.status();
    assert!(status
        .nodes
        .iter()
        .all(|node| node.pool.size == node.pool.available));
    db.close().await;
}

/// The next notice, or a panic after `limit`.
async fn next(listener: &mut pgrouter::listen::Listener, limit: Duration) -> Notice {
    match tokio::time::timeout(limit, listener.recv()).await {
        Ok(Some(notice)) => notice,
        Ok(None) => panic!("the listener ended"),
        Err(_) => panic!("no notice within {limit:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_follows_the_primary_through_a_promotion_and_reports_the_gap() {
    let (cluster, db) = cluster_and_manager(ReadStrategy::RegionalPreferred).await;
    let mut listener = db.listen("orders").await.unwrap();
    db.execute("NOTIFY orders, 'before'", &[]).await.unwrap();
    match next(&mut listener, Duration::from_secs(10)).await {
        Notice::Notification(n) => assert_eq!((n.channel(), n.payload()), ("orders", "before")),
        other => panic!("{other:?}"),
    }

    // Failover: node0 dies, node1 is promoted.
    blocking(|| cluster.wait_for_replicas(Duration::from_secs(10))).unwrap();
    blocking(|| cluster.stop(0, StopMode::Immediate)).unwrap();
    blocking(|| cluster.promote(1)).unwrap();
    // Listening again on the new primary, the gap said first.
    match next(&mut listener, Duration::from_secs(30)).await {
        Notice::Gap { node } => assert_eq!(node, "node1"),
        other => panic!("{other:?}"),
    }
    db.execute("NOTIFY orders, 'after'", &[]).await.unwrap();
    match next(&mut listener, Duration::from_secs(10)).await {
        Notice::Notification(n) => assert_eq!(n.payload(), "after"),
        other => panic!("{other:?}"),
    }

    // Closing the manager ends the listener.
    db.close().await;
    let ended = tokio::time::timeout(Duration::from_secs(10), listener.recv()).await;
    assert!(matches!(ended, Ok(None)), "{ended:?}");
}
