//! The health monitor on a real cluster: a stopped replica is detected,
//! routed around and recovered.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use pgrouter::error::ErrorKind;
use pgrouter::tokio_postgres::NoTls;
use pgrouter::ReadStrategy;
use pgrouter_testkit::StopMode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_replica_is_routed_around_and_recovers() {
    let (cluster, db) = cluster_and_manager(ReadStrategy::RegionalPreferred).await;
    let config = db.config().health.clone();
    let mut events = db.subscribe();
    assert_eq!(
        answering_port(&db, ReadStrategy::RegionalPreferred).await,
        port_of(&cluster, 1)
    );

    // Readers run throughout: none may fail, before or after detection.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let reads = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    for _ in 0..4 {
        let (db, stop, failures, reads) =
            (db.clone(), stop.clone(), failures.clone(), reads.clone());
        readers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match db.query_one("SELECT 1", &[]).await {
                    Ok(_) => reads.fetch_add(1, Ordering::Relaxed),
                    Err(error) => {
                        eprintln!("read failed: {error}");
                        failures.fetch_add(1, Ordering::Relaxed)
                    }
                };
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }

    tokio::time::sleep(Duration::from_millis(200)).await;
    blocking(|| cluster.stop(1, StopMode::Immediate)).unwrap();
    // Detection takes at most one probe interval plus one probe timeout
    // (sooner when a reader trips over the dead node first). The bound adds
    // 2 s for a loaded two-core machine: still far below what a missed
    // detection would cost (the next recovery re-probe, or never). The exact
    // timing rules are covered by paused-clock unit tests.
    let bound = config.interval + config.probe_timeout + Duration::from_secs(2);
    let detected = wait_until(bound, || !healthy(&db, "node1")).await;
    eprintln!("node1 marked unhealthy after {detected:?} (bound {bound:?})");
    assert!(
        detected.is_some(),
        "node1 not marked unhealthy within {bound:?}"
    );
    // A caller's failure may take it out first; the monitor confirms.
    let confirmed = wait_until(bound, || {
        db.status()
            .node("node1")
            .is_some_and(|n| n.last_error.is_some() && !n.suspect)
    })
    .await;
    assert!(confirmed.is_some(), "{:?}", db.status().node("node1"));

    for _ in 0..20 {
        let port = answering_port(&db, ReadStrategy::RegionalPreferred).await;
        assert_ne!(
            port,
            port_of(&cluster, 1),
            "reads must avoid the stopped replica"
        );
    }

    blocking(|| cluster.start_node(1)).unwrap();
    let recovered = wait_until(Duration::from_secs(10), || healthy(&db, "node1")).await;
    assert!(
        recovered.is_some(),
        "node1 did not recover: {:?}",
        db.status()
    );
    assert!(db.status().node("node1").unwrap().last_error.is_none());
    assert_eq!(
        answering_port(&db, ReadStrategy::RegionalPreferred).await,
        port_of(&cluster, 1)
    );

    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.await.unwrap();
    }
    assert!(reads.load(Ordering::Relaxed) > 100);
    let mut seen = Vec::new();
    while let Ok(event) = events.try_recv() {
        match event {
            pgrouter::status::Event::NodeDown { node, error } if node == "node1" => {
                assert!(!error.is_empty());
                seen.push("down");
            }
            pgrouter::status::Event::NodeUp { node } if node == "node1" => seen.push("up"),
            _ => {}
        }
    }
    assert_eq!(seen, ["down", "up"], "events for node1");
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "reads failed while a replica was down"
    );
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_random_with_no_healthy_node_is_a_typed_error() {
    let (cluster, db) = cluster_and_manager(ReadStrategy::GlobalRandom).await;
    for index in 0..3 {
        blocking(|| cluster.stop(index, StopMode::Immediate)).unwrap();
    }
    let all_down = wait_until(Duration::from_secs(10), || !db.status().can_read()).await;
    assert!(all_down.is_some(), "{:?}", db.status());
    let err = db.query("SELECT 1", &[]).await.unwrap_err();
    assert!(
        matches!(
            err.kind(),
            ErrorKind::NoHealthyNode {
                strategy: ReadStrategy::GlobalRandom
            }
        ),
        "{err:?}"
    );
    assert!(!db.status().can_write());
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_down_at_start_is_unhealthy_and_comes_in_later() {
    let cluster = start_cluster();
    blocking(|| cluster.stop(2, StopMode::Fast)).unwrap();
    let ports: Vec<u16> = cluster.nodes().iter().map(|n| n.port()).collect();
    let db = pgrouter::DatabaseManager::new(fast_config(node_configs(&cluster, &ports)))
        .await
        .unwrap();
    assert!(!healthy(&db, "node2"), "{:?}", db.status());
    assert!(db.status().can_write());
    blocking(|| cluster.start_node(2)).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || healthy(&db, "node2"))
            .await
            .is_some()
    );
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_refuses_new_connections_is_unhealthy_though_old_ones_work() {
    let (cluster, db) = cluster_and_manager(ReadStrategy::RegionalPreferred).await;
    assert_eq!(
        answering_port(&db, ReadStrategy::RegionalPreferred).await,
        port_of(&cluster, 1)
    );
    // node1 keeps its open sessions (the monitor's probe connection among
    // them) but rejects every new one.
    let (admin, driver) = session(&cluster, 1).await;
    let hba = cluster.node(1).data_dir().join("pg_hba.conf");
    let original = std::fs::read_to_string(&hba).unwrap();
    let reject = "local all all reject\nhost all all all reject\n";
    std::fs::write(&hba, format!("{reject}{original}")).unwrap();
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    let rejecting = wait_until_async(Duration::from_secs(10), || async {
        session_refused(&cluster, 1).await
    })
    .await;
    assert!(rejecting.is_some(), "node1 still takes new connections");
    db.pool("node1").unwrap().retain(|_, _| false);

    // Reads need a new connection to node1: they go elsewhere, and node1 is
    // taken down and kept down, not revived by the probe's old session.
    for _ in 0..10 {
        let port = answering_port(&db, ReadStrategy::RegionalPreferred).await;
        assert_ne!(port, port_of(&cluster, 1));
    }
    let down = wait_until(Duration::from_secs(10), || !healthy(&db, "node1")).await;
    assert!(down.is_some(), "{:?}", db.status());
    tokio::time::sleep(db.config().health.interval * 3).await;
    let node1 = db.status().node("node1").cloned().unwrap();
    assert!(!node1.healthy, "flapped back up: {node1:?}");
    let error = node1.last_error.unwrap_or_default();
    assert!(error.contains("pg_hba.conf rejects connection"), "{error}");

    std::fs::write(&hba, original).unwrap();
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    let back = wait_until(Duration::from_secs(15), || healthy(&db, "node1")).await;
    assert!(back.is_some(), "{:?}", db.status());
    drop(admin);
    let _ = driver.await;
    db.close().await;
}

/// Whether node `index` refuses a new session now.
async fn session_refused(cluster: &pgrouter_testkit::Cluster, index: usize) -> bool {
    cluster
        .node(index)
        .pg_config()
        .connect(NoTls)
        .await
        .is_err()
}
