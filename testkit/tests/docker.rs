//! The Docker backend for real: the same cluster API as the local one, and
//! the container runtime's faults. Skipped (with the reason printed) when
//! Docker or the image is missing, unless `PGROUTER_DOCKER_TESTS=require`.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use pgrouter_testkit::docker::image_or_skip;
use pgrouter_testkit::{Backend, Cluster, StopMode, TestkitError};

const CATCH_UP: Duration = Duration::from_secs(20);

fn start(image: &str, replicas: usize) -> Cluster {
    let started = Instant::now();
    let cluster = Cluster::builder()
        .backend(Backend::Docker)
        .image(image)
        .replicas(replicas)
        .start()
        .expect("a cluster in containers starts");
    eprintln!(
        "{image}: primary + {replicas} replicas in containers started in {:?}",
        started.elapsed()
    );
    cluster
}

/// What a fresh connection to node `index` through its published port
/// gets within `limit`: `Some(answer)` or `None` (no answer in time).
async fn ask(cluster: &Cluster, index: usize, limit: Duration) -> Option<Result<String, String>> {
    let mut config = cluster.node(index).pg_config();
    config.connect_timeout(limit);
    let attempt = async {
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let row = client
            .query_one("SELECT current_setting('cluster_name')", &[])
            .await
            .map_err(|e| e.to_string())?;
        Ok(row.get::<_, String>(0))
    };
    tokio::time::timeout(limit, attempt).await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_cluster_api_in_containers() {
    let Some(image) = image_or_skip() else { return };
    let cluster = tokio::task::block_in_place(|| start(&image, 2));
    assert_eq!(cluster.backend(), Backend::Docker);
    let version = cluster.psql(0, "SHOW server_version_num").unwrap();
    eprintln!("server_version_num {version}");
    assert_eq!(cluster.psql(0, "SELECT pg_is_in_recovery()").unwrap(), "f");
    let streaming = cluster
        .psql(
            0,
            "SELECT string_agg(application_name, ',' ORDER BY application_name) \
             FROM pg_stat_replication WHERE state = 'streaming'",
        )
        .unwrap();
    assert_eq!(streaming, "node1,node2");

    // Reachable from the host on 127.0.0.1, at the port the server reports.
    for node in cluster.nodes() {
        let (client, connection) = node
            .pg_config()
            .connect(tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let row = client
            .query_one("SELECT inet_server_port(), pg_is_in_recovery()", &[])
            .await
            .unwrap();
        assert_eq!(
            row.get::<_, i32>(0),
            i32::from(node.port()),
            "{}",
            node.name()
        );
    }

    tokio::task::block_in_place(|| {
        cluster
            .psql(0, "CREATE TABLE t (v int); INSERT INTO t VALUES (1)")
            .unwrap();
        cluster.wait_for_replicas(CATCH_UP).unwrap();
        assert_eq!(cluster.psql(2, "SELECT count(*) FROM t").unwrap(), "1");

        // Replay pause and resume.
        cluster.pause_replay(1).unwrap();
        cluster.psql(0, "INSERT INTO t VALUES (2)").unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(cluster.psql(1, "SELECT count(*) FROM t").unwrap(), "1");
        cluster.resume_replay(1).unwrap();
        cluster.wait_for_replicas(CATCH_UP).unwrap();
        assert_eq!(cluster.psql(1, "SELECT count(*) FROM t").unwrap(), "2");

        // Stop and start a server (its container stays).
        cluster.stop(2, StopMode::Fast).unwrap();
        assert!(!cluster.is_running(2));
        assert!(cluster.psql(2, "SELECT 1").is_err());
        cluster.start_node(2).unwrap();
        assert!(cluster.is_running(2));

        // Failover: node1 promoted, the old primary rejoins under it.
        cluster.stop(0, StopMode::Immediate).unwrap();
        cluster.promote(1).unwrap();
        assert_eq!(cluster.psql(1, "SELECT pg_is_in_recovery()").unwrap(), "f");
        cluster.psql(1, "INSERT INTO t VALUES (3)").unwrap();
        cluster.rejoin(0, 1).unwrap();
        cluster.rejoin(2, 1).unwrap();
        cluster.wait_for_replicas(CATCH_UP).unwrap();
        for index in [0, 2] {
            assert_eq!(cluster.psql(index, "SELECT count(*) FROM t").unwrap(), "3");
            assert_eq!(
                cluster.psql(index, "SELECT pg_is_in_recovery()").unwrap(),
                "t"
            );
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_container_comes_back_with_its_data_on_its_port() {
    let Some(image) = image_or_skip() else { return };
    let cluster = tokio::task::block_in_place(|| start(&image, 1));
    tokio::task::block_in_place(|| {
        cluster
            .psql(
                0,
                "CREATE TABLE t (v int); INSERT INTO t VALUES (1); CHECKPOINT",
            )
            .unwrap();
        cluster.wait_for_replicas(CATCH_UP).unwrap();
        cluster.kill_container(1).unwrap();
        assert!(!cluster.is_running(1));
        assert!(
            TcpStream::connect(cluster.node(1).addr()).is_err()
                || cluster.psql(1, "SELECT 1").is_err()
        );
        cluster.psql(0, "INSERT INTO t VALUES (2)").unwrap();
        cluster.start_container(1).unwrap();
        cluster.wait_for_replicas(CATCH_UP).unwrap();
        assert_eq!(cluster.psql(1, "SELECT count(*) FROM t").unwrap(), "2");
    });
    let answer = ask(&cluster, 1, Duration::from_secs(10)).await;
    assert_eq!(answer, Some(Ok("node1".to_owned())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_container_is_a_black_hole_and_a_disconnected_one_is_cut_off() {
    let Some(image) = image_or_skip() else { return };
    let cluster = tokio::task::block_in_place(|| start(&image, 1));
    let quick = Duration::from_secs(2);
    assert_eq!(
        ask(&cluster, 1, quick * 5).await,
        Some(Ok("node1".to_owned()))
    );

    // Paused: nothing answers, not even with an error.
    tokio::task::block_in_place(|| cluster.pause_container(1)).unwrap();
    assert_eq!(
        ask(&cluster, 1, quick).await,
        None,
        "a paused node answered"
    );
    tokio::task::block_in_place(|| cluster.unpause_container(1)).unwrap();
    assert_eq!(
        ask(&cluster, 1, quick * 5).await,
        Some(Ok("node1".to_owned()))
    );

    // Disconnected: the primary cannot reach it, nor can the host; the
    // server inside keeps running and comes back with the network.
    tokio::task::block_in_place(|| cluster.disconnect(1)).unwrap();
    let cut = ask(&cluster, 1, quick).await;
    assert!(
        !matches!(cut, Some(Ok(_))),
        "a disconnected node answered: {cut:?}"
    );
    tokio::task::block_in_place(|| {
        cluster
            .psql(0, "CREATE TABLE t (v int); INSERT INTO t VALUES (1)")
            .unwrap();
        let err = cluster.wait_for_replicas(Duration::from_secs(1));
        assert!(err.is_err(), "replication went on across a partition");
        cluster.reconnect(1).unwrap();
        cluster.wait_for_replicas(Duration::from_secs(60)).unwrap();
    });
    assert_eq!(
        ask(&cluster, 1, quick * 5).await,
        Some(Ok("node1".to_owned()))
    );
}

#[test]
fn a_missing_image_and_container_faults_on_a_local_cluster_are_typed_errors() {
    let local = Cluster::start(0).expect("a local primary");
    for err in [
        local.pause_container(0).unwrap_err(),
        local.disconnect(0).unwrap_err(),
        local.kill_container(0).unwrap_err(),
    ] {
        assert!(
            matches!(
                err,
                TestkitError::Unsupported {
                    backend: "local",
                    ..
                }
            ),
            "{err}"
        );
    }
    assert_eq!(
        local.psql(0, "SELECT 1").unwrap(),
        "1",
        "nothing happened to it"
    );

    // Nothing is pulled: a missing image is an error naming it.
    let err = Cluster::builder()
        .backend(Backend::Docker)
        .image("pgrouter-testkit-no-such-image:0")
        .replicas(0)
        .start()
        .unwrap_err();
    assert!(matches!(err, TestkitError::Docker { .. }), "{err}");
    assert!(err.to_string().contains("no-such-image"), "{err}");
}
