//! Following the primary through a failover, and fencing the old one when
//! it comes back (split brain).

mod support;

use std::time::{Duration, Instant};

use pgrouter::{DatabaseManager, Error, Event, ReadStrategy, Role};
use pgrouter_testkit::{Cluster, StopMode};
use support::*;

async fn write_port(db: &DatabaseManager, phase: &str) -> Result<i32, Error> {
    let row = db
        .write()
        .deadline(Duration::from_secs(2))
        .query_one(
            "INSERT INTO t (phase) VALUES ($1) RETURNING inet_server_port()",
            &[&phase],
        )
        .await?;
    Ok(row.get(0))
}

fn port(cluster: &Cluster, index: usize) -> i32 {
    i32::from(port_of(cluster, index))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_follow_a_promoted_replica_and_never_reach_the_old_primary() {
    let (cluster, db) = cluster_and_manager(ReadStrategy::GlobalRandom).await;
    let mut events = db.subscribe();
    db.execute("CREATE TABLE t (id serial PRIMARY KEY, phase text)", &[])
        .await
        .unwrap();
    assert_eq!(write_port(&db, "before").await.unwrap(), port(&cluster, 0));
    cluster.wait_for_replicas(Duration::from_secs(5)).unwrap();

    // Failover: the primary dies, node1 is promoted.
    cluster.stop(0, StopMode::Immediate).unwrap();
    let promoted = Instant::now();
    cluster.promote(1).unwrap();
    let port_after = loop {
        match write_port(&db, "after-promote").await {
            Ok(port) => break port,
            Err(error) => {
                assert!(promoted.elapsed() < Duration::from_secs(10), "{error:?}");
            }
        }
    };
    let promote_to_write = promoted.elapsed();
    eprintln!("promote to first successful write: {promote_to_write:?}");
    assert_eq!(port_after, port(&cluster, 1));
    let health = &db.config().health;
    assert!(
        promote_to_write < health.interval * 2 + health.probe_timeout + Duration::from_secs(1),
        "{promote_to_write:?}"
    );
    let status = db.status();
    assert_eq!(status.write_target.as_deref(), Some("node1"));
    let node1 = status.node("node1").unwrap();
    assert_eq!(
        (node1.role, node1.timeline),
        (Role::Primary, Some(2)),
        "{node1:?}"
    );

    let mut saw_change = false;
    while let Ok(event) = events.try_recv() {
        if let Event::PrimaryChanged { to, .. } = &event {
            saw_change |= to.as_deref() == Some("node1");
        }
    }
    assert!(saw_change, "a PrimaryChanged event names node1");

    // Split brain: the old primary comes back as a primary on timeline 1.
    cluster.start_node(0).unwrap();
    let fenced = wait_until(Duration::from_secs(5), || {
        db.status()
            .node("node0")
            .is_some_and(|n| n.healthy && n.role == Role::Primary)
    })
    .await;
    assert!(fenced.is_some(), "{:?}", db.status());
    tokio::time::sleep(db.config().health.interval * 2).await;
    let node0 = db.status().node("node0").cloned().unwrap();
    assert!(node0.fenced && node0.timeline == Some(1), "{node0:?}");
    for _ in 0..30 {
        assert_eq!(write_port(&db, "split").await.unwrap(), port(&cluster, 1));
        let read = answering_port(&db, ReadStrategy::GlobalRandom).await;
        assert_ne!(
            i32::from(read),
            port(&cluster, 0),
            "a fenced node served a read"
        );
    }
    let on_old = cluster
        .psql(0, "SELECT count(*) FROM t WHERE phase <> 'before'")
        .unwrap();
    assert_eq!(on_old, "0", "a write landed on the stale primary");

    // With the new primary gone, the stale one still gets nothing.
    cluster.stop(1, StopMode::Immediate).unwrap();
    let err = write_port(&db, "orphan").await.unwrap_err();
    assert!(matches!(err, Error::NoPrimary { .. }), "{err:?}");
    let on_old = cluster
        .psql(0, "SELECT count(*) FROM t WHERE phase = 'orphan'")
        .unwrap();
    assert_eq!(on_old, "0");
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_hold_for_a_primary_then_fail_typed() {
    let cluster = start_cluster();
    let ports: Vec<u16> = cluster.nodes().iter().map(|n| n.port()).collect();
    let mut config = fast_config(node_configs(&cluster, &ports));
    config.write_hold = Duration::from_millis(1500);
    let db = DatabaseManager::new(config).await.unwrap();
    db.execute("CREATE TABLE t (id serial PRIMARY KEY, phase text)", &[])
        .await
        .unwrap();
    // Flush the WAL: the servers run with synchronous_commit = off.
    cluster.wait_for_replicas(Duration::from_secs(5)).unwrap();
    cluster.stop(0, StopMode::Immediate).unwrap();
    let gone = wait_until(Duration::from_secs(3), || {
        db.status().write_target.is_none()
    })
    .await;
    assert!(gone.is_some(), "{:?}", db.status());

    // Held for write_hold, then a typed error.
    let start = Instant::now();
    let err = db
        .execute("INSERT INTO t (phase) VALUES ('x')", &[])
        .await
        .unwrap_err();
    let waited = start.elapsed();
    assert!(matches!(err, Error::NoPrimary { .. }), "{err:?}");
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_secs(3),
        "{waited:?}"
    );

    // Never past the call's deadline.
    let start = Instant::now();
    let err = db
        .write()
        .deadline(Duration::from_millis(200))
        .execute("INSERT INTO t (phase) VALUES ('x')", &[])
        .await
        .unwrap_err();
    assert!(
        start.elapsed() < Duration::from_millis(600),
        "{:?}",
        start.elapsed()
    );
    assert!(matches!(err, Error::NoPrimary { .. }), "{err:?}");

    // A write holding when the primary comes back goes through.
    let restart = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        tokio::task::block_in_place(|| cluster.start_node(0)).unwrap();
    };
    let write_until_it_lands = async {
        let start = Instant::now();
        let mut holds = 0;
        loop {
            match db
                .execute("INSERT INTO t (phase) VALUES ('held')", &[])
                .await
            {
                Err(Error::NoPrimary { .. }) if start.elapsed() < Duration::from_secs(8) => {
                    holds += 1
                }
                other => break (other, holds),
            }
        }
    };
    let ((written, holds), ()) = tokio::join!(write_until_it_lands, restart);
    assert_eq!(written.unwrap(), 1, "landed after {holds} full holds");
    assert!(holds <= 2, "{holds}");
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configured_role_is_only_a_hint() {
    let cluster = start_cluster();
    let ports: Vec<u16> = cluster.nodes().iter().map(|n| n.port()).collect();
    let mut nodes = node_configs(&cluster, &ports);
    // Wrong on purpose: node2 is configured as the primary.
    nodes[0].role = Role::Replica;
    nodes[2].role = Role::Primary;
    let db = DatabaseManager::new(fast_config(nodes)).await.unwrap();
    let status = db.status();
    assert_eq!(status.write_target.as_deref(), Some("node0"), "{status:?}");
    assert_eq!(status.node("node2").unwrap().role, Role::Replica);
    let port: i32 = db
        .write()
        .query_one("SELECT inet_server_port()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(port, i32::from(port_of(&cluster, 0)));
    db.close().await;
}
