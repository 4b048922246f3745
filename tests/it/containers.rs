//! pgrouter over a cluster in Docker containers, through faults only a
//! container runtime can cause: a frozen replica (a true black hole), a
//! partitioned primary, a killed host. Skipped (with the reason printed)
//! without Docker or the image, unless `PGROUTER_DOCKER_TESTS=require`.

use std::time::{Duration, Instant};

use crate::support::*;
use pgrouter::error::ErrorKind;
use pgrouter::DatabaseManager;
use pgrouter::ReadStrategy;
use pgrouter::Role;
use pgrouter_testkit::docker::image_or_skip;
use pgrouter_testkit::{Backend, Cluster};

/// A primary and two replicas in containers of `image`, and a manager
/// pointed at them (through their published ports).
async fn containers_and_manager(image: &str, strategy: ReadStrategy) -> (Cluster, DatabaseManager) {
    let builder = Cluster::builder()
        .backend(Backend::Docker)
        .image(image)
        .replicas(2);
    let cluster = blocking(|| builder.start()).expect("a cluster in containers");
    let ports: Vec<u16> = cluster.nodes().iter().map(|n| n.port()).collect();
    let mut config = fast_config(node_configs(&cluster, &ports));
    config.read_strategy = strategy;
    let db = DatabaseManager::new(config).await.expect("manager");
    (cluster, db)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_on_within_the_deadline_while_the_local_replica_is_frozen() {
    let Some(image) = image_or_skip() else { return };
    let (cluster, db) = containers_and_manager(&image, ReadStrategy::RegionalPreferred).await;
    let ports: Vec<u16> = (0..3).map(|i| port_of(&cluster, i)).collect();
    assert_eq!(
        answering_port(&db, ReadStrategy::RegionalPreferred).await,
        ports[1]
    );

    // docker pause: connections to node1 stay open and new ones are
    // accepted, but nothing ever answers. A read already routed there ends
    // at its deadline (README: a black-holed node costs one caller its
    // deadline, not every caller); node1 is then taken out and the others
    // serve every read.
    blocking(|| cluster.pause_container(1)).unwrap();
    let deadline = db.config().deadline;
    let mut slowest = Duration::ZERO;
    let mut timeouts = 0;
    for attempt in 0..30 {
        let started = Instant::now();
        let result = db.query_one("SELECT inet_server_port()", &[]).await;
        let took = started.elapsed();
        slowest = slowest.max(took);
        assert!(
            took < deadline + SLACK,
            "a read took {took:?}, deadline {deadline:?}"
        );
        match result {
            Ok(row) => {
                let port = u16::try_from(row.get::<_, i32>(0)).unwrap();
                assert_ne!(port, ports[1], "the frozen replica answered");
            }
            Err(error) if error.is_timeout() && attempt < 2 => {
                eprintln!("read {attempt} while node1 froze: {error:?}");
                timeouts += 1;
            }
            Err(error) => panic!("read {attempt} with node1 frozen: {error:?}"),
        }
    }
    eprintln!("node1 frozen: {timeouts} of 30 reads timed out, slowest {slowest:?} (deadline {deadline:?})");
    let out = wait_until(Duration::from_secs(10), || !healthy(&db, "node1")).await;
    assert!(out.is_some(), "{:?}", db.status().node("node1"));

    // Thawed, it is routed to again.
    blocking(|| cluster.unpause_container(1)).unwrap();
    let back = wait_until(Duration::from_secs(30), || healthy(&db, "node1")).await;
    assert!(back.is_some(), "{:?}", db.status().node("node1"));
    assert_eq!(
        answering_port(&db, ReadStrategy::RegionalPreferred).await,
        ports[1]
    );
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_follow_a_promotion_away_from_a_partitioned_primary_which_is_then_fenced() {
    let Some(image) = image_or_skip() else { return };
    let (cluster, db) = containers_and_manager(&image, ReadStrategy::GlobalRandom).await;
    db.execute("CREATE TABLE t (id serial PRIMARY KEY, phase text)", &[])
        .await
        .unwrap();
    assert_eq!(
        write_port(&db, "before").await.unwrap(),
        i32::from(port_of(&cluster, 0))
    );
    blocking(|| cluster.wait_for_replicas(Duration::from_secs(20))).unwrap();

    // A real partition: node0 keeps running, cut off from its replicas and
    // from pgrouter. The operator promotes node1.
    blocking(|| cluster.disconnect(0)).unwrap();
    blocking(|| cluster.promote(1)).unwrap();
    let promoted = Instant::now();
    let port_after = loop {
        match write_port(&db, "after").await {
            Ok(port) => break port,
            Err(error) => assert!(promoted.elapsed() < Duration::from_secs(30), "{error:?}"),
        }
    };
    eprintln!(
        "first write on the promoted replica {:?} after promote",
        promoted.elapsed()
    );
    assert_eq!(port_after, i32::from(port_of(&cluster, 1)));
    assert_eq!(db.status().write_target.as_deref(), Some("node1"));

    // The partition heals: node0 is still a primary, on the old timeline.
    blocking(|| cluster.reconnect(0)).unwrap();
    let fenced = wait_until(Duration::from_secs(30), || {
        db.status()
            .node("node0")
            .is_some_and(|n| n.fenced && n.role == Role::Primary)
    })
    .await;
    assert!(fenced.is_some(), "{:?}", db.status());
    for _ in 0..20 {
        assert_eq!(
            write_port(&db, "healed").await.unwrap(),
            i32::from(port_of(&cluster, 1))
        );
    }
    let on_old =
        blocking(|| cluster.psql(0, "SELECT count(*) FROM t WHERE phase <> 'before'")).unwrap();
    assert_eq!(on_old, "0", "a write reached the partitioned primary");
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_host_fails_writes_typed_and_its_restart_takes_them_again() {
    let Some(image) = image_or_skip() else { return };
    let (cluster, db) = containers_and_manager(&image, ReadStrategy::RegionalPreferred).await;
    db.execute("CREATE TABLE t (id serial PRIMARY KEY, phase text)", &[])
        .await
        .unwrap();
    blocking(|| cluster.wait_for_replicas(Duration::from_secs(20))).unwrap();

    blocking(|| cluster.kill_container(0)).unwrap();
    let gone = wait_until(Duration::from_secs(15), || {
        db.status().write_target.is_none()
    })
    .await;
    assert!(gone.is_some(), "{:?}", db.status());
    let err = write_port(&db, "down").await.unwrap_err();
    assert!(
        matches!(
            err.kind(),
            ErrorKind::NoPrimary { .. } | ErrorKind::Timeout { .. }
        ),
        "{err:?}"
    );
    assert!(!err.is_outcome_unknown(), "nothing was sent: {err:?}");

    blocking(|| cluster.start_container(0)).unwrap();
    let back = wait_until_async(Duration::from_secs(30), || async {
        write_port(&db, "back").await.is_ok()
    })
    .await;
    assert!(back.is_some(), "{:?}", db.status());
    assert_eq!(
        write_port(&db, "back").await.unwrap(),
        i32::from(port_of(&cluster, 0))
    );
    db.close().await;
}
