//! The Aurora dialect against the test kit's emulated Aurora surface
//! (`Flavour::Aurora`): detected without an error, positions off (no LSN
//! compares across Aurora instances), the writer cross-checked with
//! `aurora_replica_status()`, and readers' lag taken from it, so bounded
//! reads still reach replicas while causal reads go to the writer.

mod support;

use std::time::Duration;

use pgrouter::{Capability, CausalToken, DatabaseManager, ReadStrategy};
use pgrouter_testkit::{Cluster, Flavour};
use support::*;

fn aurora_cluster() -> Cluster {
    let builder = Cluster::builder().replicas(2).flavour(Flavour::Aurora);
    blocking(|| builder.start()).expect("an emulated Aurora cluster")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aurora_is_detected_and_readers_lag_comes_from_its_replica_status() {
    let cluster = aurora_cluster();
    let ports: Vec<u16> = cluster.nodes().iter().map(|n| n.port()).collect();
    let mut config = fast_config(node_configs(&cluster, &ports));
    config.read_strategy = ReadStrategy::GlobalRandom;
    let db = DatabaseManager::new(config).await.expect("manager");
    let settled = wait_until(Duration::from_secs(20), || {
        let status = db.status();
        status.is_ready()
            && status.nodes.iter().all(|node| node.healthy)
            && status.nodes[1..].iter().all(|node| node.lag.is_some())
    })
    .await;
    let status = db.status();
    assert!(settled.is_some(), "{status:#?}");
    assert_eq!(status.write_target.as_deref(), Some("node0"));
    for node in &status.nodes {
        assert!(status.lacks(&node.name, Capability::Positions), "{node:#?}");
        assert!(node.wal_position.is_none(), "{node:#?}");
        assert!(
            !status.lacks(&node.name, Capability::PlatformLag),
            "{node:#?}"
        );
    }
    // Positions are off with Aurora's reason, whatever the function said.
    let primary = status.node("node0").expect("node0");
    assert!(primary
        .missing_capabilities
        .iter()
        .any(|m| m.capability == Capability::Positions && m.code == "0A000"));

    db.execute("CREATE TABLE t (n int)", &[])
        .await
        .expect("write");
    // Bounded reads reach replicas: their lag is Aurora's figure.
    blocking(|| cluster.wait_for_replicas(Duration::from_secs(10))).expect("caught up");
    let mut ports_seen = std::collections::HashSet::new();
    for _ in 0..60 {
        let row = db
            .read()
            .max_staleness(Duration::from_secs(5))
            .query_one("SELECT inet_server_port()", &[])
            .await
            .expect("bounded read");
        ports_seen.insert(row.get::<_, i32>(0));
    }
    let replica_ports: Vec<i32> = ports[1..].iter().map(|p| i32::from(*p)).collect();
    assert!(
        replica_ports.iter().any(|p| ports_seen.contains(p)),
        "bounded reads reached no replica: {ports_seen:?}"
    );
    // No position compares across Aurora instances, and the WAL functions
    // are refused: a write's token is the one that sends reads to the
    // writer, and the write (and its read-your-writes) still works.
    let (_, token) = db
        .write()
        .execute_with_token("INSERT INTO t VALUES (1)", &[])
        .await
        .expect("a write whose token query is refused");
    assert_eq!(token, CausalToken::PRIMARY);
    let (_, token) = db
        .write()
        .transaction_with_token(|tx| {
            Box::pin(async move { Ok(tx.execute("INSERT INTO t VALUES (2)", &[]).await?) })
        })
        .await
        .expect("a transaction whose token query is refused");
    assert_eq!(token, CausalToken::PRIMARY);
    let seen = db
        .read()
        .after(token)
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .expect("read-your-writes on the writer");
    assert_eq!(seen.get::<_, i64>(0), 2);
    let count = db
        .read()
        .strategy(ReadStrategy::PrimaryOnly)
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .expect("read on the writer");
    assert_eq!(count.get::<_, i64>(0), 2);
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_reader_grows_stale_by_aurora_s_own_figure() {
    let cluster = aurora_cluster();
    let ports: Vec<u16> = cluster.nodes().iter().map(|n| n.port()).collect();
    let db = DatabaseManager::new(fast_config(node_configs(&cluster, &ports)))
        .await
        .expect("manager");
    db.execute("CREATE TABLE t (n int)", &[])
        .await
        .expect("write");
    blocking(|| cluster.pause_replay(1)).expect("pause");
    for n in 0..5 {
        db.execute("INSERT INTO t VALUES ($1)", &[&n])
            .await
            .expect("write");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let stale = wait_until(Duration::from_secs(20), || {
        db.status()
            .node("node1")
            .and_then(|node| node.lag)
            .is_some_and(|lag| lag.time >= Duration::from_secs(1))
    })
    .await;
    assert!(stale.is_some(), "{:#?}", db.status());
    // A 500 ms bound skips it.
    for _ in 0..20 {
        let row = db
            .read()
            .strategy(ReadStrategy::RegionalPreferred)
            .max_staleness(Duration::from_millis(500))
            .query_one("SELECT inet_server_port()", &[])
            .await
            .expect("bounded read");
        assert_ne!(row.get::<_, i32>(0), i32::from(ports[1]));
    }
    blocking(|| cluster.resume_replay(1)).expect("resume");
    db.close().await;
}
