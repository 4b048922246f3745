//! Real clusters: start-up, replication, stop/start, promotion, replay pause.

use std::time::{Duration, Instant};

use pgrouter_testkit::{Cluster, StopMode, TestkitError};

const CATCH_UP: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_a_primary_and_two_streaming_replicas() {
    let started = Instant::now();
    let cluster = Cluster::start(2).expect("cluster starts");
    eprintln!("primary + 2 replicas started in {:?}", started.elapsed());

    assert_eq!(cluster.nodes().len(), 3);
    assert_eq!(cluster.psql(0, "SELECT pg_is_in_recovery()").unwrap(), "f");
    for index in 1..3 {
        assert_eq!(
            cluster.psql(index, "SELECT pg_is_in_recovery()").unwrap(),
            "t"
        );
        assert!(cluster.is_running(index));
    }
    let streaming = cluster
        .psql(
            0,
            "SELECT string_agg(application_name, ',' ORDER BY application_name) \
             FROM pg_stat_replication WHERE state = 'streaming'",
        )
        .unwrap();
    assert_eq!(streaming, "node1,node2");

    // Every node is reachable through its tokio-postgres config.
    for node in cluster.nodes() {
        let (client, connection) = node
            .pg_config()
            .connect(tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let row = client
            .query_one("SELECT current_setting('port')::int", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, i32>(0), i32::from(node.port()));
    }

    let primary = cluster.primary();
    assert_eq!(primary.name(), "node0");
    assert_eq!(cluster.node(2).name(), "node2");
    assert_eq!(
        primary.addr().to_string(),
        format!("127.0.0.1:{}", primary.port())
    );
    assert_eq!(
        primary.connection_string(),
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            primary.port()
        )
    );
    assert_eq!(
        primary.url(),
        format!("postgres://postgres@127.0.0.1:{}/postgres", primary.port())
    );
    assert!(primary.data_dir().starts_with(cluster.dir()));
    assert!(cluster.get(3).is_none());
    assert!(!cluster.is_running(3));
    assert!(matches!(
        cluster.stop(3, StopMode::Fast),
        Err(TestkitError::NoSuchNode(3))
    ));
}

#[test]
fn replicates_writes_and_applies_builder_settings() {
    let cluster = Cluster::builder()
        .replicas(2)
        .setting("work_mem", "8MB")
        .setting("application_name", "it's quoted")
        .start()
        .unwrap();
    cluster
        .psql(
            0,
            "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 100)",
        )
        .unwrap();
    cluster.wait_for_replicas(CATCH_UP).unwrap();
    for index in 1..3 {
        assert_eq!(
            cluster.psql(index, "SELECT count(*) FROM t").unwrap(),
            "100"
        );
        assert_eq!(cluster.psql(index, "SHOW work_mem").unwrap(), "8MB");
    }
    assert_eq!(cluster.psql(0, "SHOW application_name").unwrap(), "psql");
    let err = cluster.psql(1, "INSERT INTO t VALUES (1)").unwrap_err();
    assert!(err.to_string().contains("read-only transaction"), "{err}");
}

#[test]
fn stops_and_starts_nodes() {
    let cluster = Cluster::start(1).unwrap();

    cluster.stop(1, StopMode::Immediate).unwrap();
    assert!(!cluster.is_running(1));
    assert!(cluster.psql(1, "SELECT 1").is_err());
    // A stopped replica is simply left out.
    cluster.psql(0, "CREATE TABLE t AS SELECT 1 AS id").unwrap();
    cluster.wait_for_replicas(CATCH_UP).unwrap();

    cluster.start_node(1).unwrap();
    assert!(cluster.is_running(1));
    cluster.wait_for_replicas(CATCH_UP).unwrap();
    assert_eq!(cluster.psql(1, "SELECT count(*) FROM t").unwrap(), "1");

    let port = cluster.primary().port();
    cluster.stop(0, StopMode::Fast).unwrap();
    assert!(!cluster.is_running(0));
    assert!(matches!(
        cluster.wait_for_replicas(Duration::from_millis(100)),
        Err(TestkitError::Timeout { .. })
    ));
    cluster.start_node(0).unwrap();
    assert_eq!(cluster.primary().port(), port);
    assert_eq!(cluster.psql(0, "SELECT count(*) FROM t").unwrap(), "1");
}

#[test]
fn promotes_a_replica() {
    let cluster = Cluster::start(1).unwrap();
    cluster.stop(0, StopMode::Immediate).unwrap();
    cluster.promote(1).unwrap();
    assert_eq!(cluster.psql(1, "SELECT pg_is_in_recovery()").unwrap(), "f");
    cluster
        .psql(1, "CREATE TABLE after_failover (id int)")
        .unwrap();
    assert!(
        cluster.promote(0).is_err(),
        "promoting a stopped node fails"
    );
}

#[test]
fn paused_replay_hides_new_rows_until_resumed() {
    let cluster = Cluster::start(1).unwrap();
    cluster.psql(0, "CREATE TABLE t (id int)").unwrap();
    cluster.wait_for_replicas(CATCH_UP).unwrap();

    cluster.pause_replay(1).unwrap();
    cluster.psql(0, "INSERT INTO t VALUES (1), (2)").unwrap();
    let err = cluster
        .wait_for_replicas(Duration::from_millis(300))
        .unwrap_err();
    assert!(matches!(err, TestkitError::Timeout { .. }), "{err}");
    assert_eq!(cluster.psql(1, "SELECT count(*) FROM t").unwrap(), "0");

    cluster.resume_replay(1).unwrap();
    cluster.wait_for_replicas(CATCH_UP).unwrap();
    assert_eq!(cluster.psql(1, "SELECT count(*) FROM t").unwrap(), "2");
}

#[test]
fn drop_stops_servers_and_removes_the_directory() {
    let cluster = Cluster::start(0).unwrap();
    let dir = cluster.dir().to_path_buf();
    let addr = cluster.primary().addr();
    assert!(std::net::TcpStream::connect(addr).is_ok());
    drop(cluster);
    assert!(!dir.exists());
    assert!(std::net::TcpStream::connect(addr).is_err());
}

#[test]
fn drop_cleans_up_after_a_panic() {
    let dir = std::sync::Mutex::new(None);
    let result = std::panic::catch_unwind(|| {
        let cluster = Cluster::start(0).unwrap();
        *dir.lock().unwrap() = Some(cluster.dir().to_path_buf());
        panic!("test failed");
    });
    assert!(result.is_err());
    let dir = dir.lock().unwrap().take().unwrap();
    assert!(!dir.exists());
}

#[test]
fn missing_binaries_explain_how_to_install_them() {
    let err = Cluster::builder()
        .bindir("/nonexistent/pg/bin")
        .start()
        .unwrap_err();
    assert!(matches!(err, TestkitError::BinariesNotFound { .. }));
    let message = err.to_string();
    assert!(message.contains("apt-get install postgresql"), "{message}");
    assert!(message.contains("PGROUTER_PG_BINDIR"), "{message}");
}

#[test]
fn clusters_abandoned_by_a_dead_process_are_reaped() {
    let abandoned = Cluster::start(0).unwrap();
    let dir = abandoned.dir().to_path_buf();
    // Its server, by process: its port may be taken again at once by a
    // cluster of a test running alongside.
    let pid_file = abandoned.primary().data_dir().join("postmaster.pid");
    let postmaster = std::fs::read_to_string(pid_file).unwrap();
    let postmaster = postmaster.lines().next().unwrap().trim().to_owned();
    // Pretend its process died without running `Drop` (e.g. Ctrl-C).
    let mut child = std::process::Command::new("true").spawn().unwrap();
    child.wait().unwrap();
    std::fs::write(dir.join("owner.pid"), child.id().to_string()).unwrap();
    std::mem::forget(abandoned);

    let _next = Cluster::start(0).unwrap();
    assert!(!dir.exists(), "{} should be gone", dir.display());
    // Gone, or a zombie left for its parent to reap: stopped either way.
    let stat = std::fs::read_to_string(format!("/proc/{postmaster}/stat"));
    let running = stat.is_ok_and(|stat| {
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.trim().chars().next());
        state != Some('Z')
    });
    assert!(!running, "its server (pid {postmaster}) should be stopped");
}

#[test]
fn handles_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Cluster>();
    assert_send_sync::<pgrouter_testkit::LocalNode>();
    assert_send_sync::<pgrouter_testkit::FaultProxy>();
    assert_send_sync::<TestkitError>();
}

#[test]
fn start_node_waits_for_its_port_to_be_free() {
    let cluster = Cluster::start(0).unwrap();
    cluster.stop(0, StopMode::Immediate).unwrap();
    let squatter = std::net::TcpListener::bind(cluster.primary().addr()).unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        drop(squatter);
    });
    cluster.start_node(0).unwrap();
    release.join().unwrap();
    assert_eq!(cluster.psql(0, "SELECT 1").unwrap(), "1");
    let log = std::fs::read_to_string(cluster.primary().log_file()).unwrap();
    assert!(log.contains("could not bind"), "{log}");
}

#[test]
fn an_old_primary_rejoins_as_a_replica_of_the_new_one_again_and_again() {
    let cluster = Cluster::start(1).unwrap();
    cluster
        .psql(0, "CREATE TABLE t (id int); INSERT INTO t VALUES (0)")
        .unwrap();
    // Two switchovers: node1 takes over, then node0 again.
    for (round, (old, new)) in [(0, 1), (1, 0)].into_iter().enumerate() {
        cluster.wait_for_replicas(Duration::from_secs(30)).unwrap();
        cluster.stop(old, StopMode::Fast).unwrap();
        cluster.promote(new).unwrap();
        cluster.rejoin(old, new).unwrap();
        assert_eq!(
            cluster.psql(old, "SELECT pg_is_in_recovery()").unwrap(),
            "t"
        );
        assert_eq!(
            cluster.psql(new, "SELECT pg_is_in_recovery()").unwrap(),
            "f"
        );
        let value = round + 1;
        cluster
            .psql(new, &format!("INSERT INTO t VALUES ({value})"))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let expected = (0..=value)
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join("\n");
        while cluster.psql(old, "SELECT id FROM t ORDER BY id").unwrap() != expected {
            assert!(
                Instant::now() < deadline,
                "node{old} never replayed row {value}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
