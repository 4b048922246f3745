//! The Aurora dialect against the test kit's emulated Aurora surface
//! (`Flavour::Aurora`): detected without an error, positions off (no LSN
//! compares across Aurora instances), the writer cross-checked with
//! `aurora_replica_status()`, and readers' lag taken from it, so bounded
//! reads still reach replicas while causal reads go to the writer.

use std::time::Duration;

use crate::support::*;
use pgrouter::config::DiscoverySettings;
use pgrouter::status::Capability;
use pgrouter::status::Event;
use pgrouter::status::Status;
use pgrouter::CallInfo;
use pgrouter::CausalToken;
use pgrouter::DatabaseManager;
use pgrouter::ReadStrategy;
use pgrouter_testkit::{Cluster, Flavour, StopMode};

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
        status.can_write()
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
    let info = CallInfo::with_token();
    db.write()
        .info(&info)
        .execute("INSERT INTO t VALUES (1)", &[])
        .await
        .expect("a write whose token query is refused");
    assert_eq!(info.token(), Some(CausalToken::PRIMARY));
    let info = CallInfo::with_token();
    db.write()
        .info(&info)
        .transaction(|tx| {
            Box::pin(async move { tx.execute("INSERT INTO t VALUES (2)", &[]).await })
        })
        .await
        .expect("a transaction whose token query is refused");
    let token = info.token().expect("the transaction's token");
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

/// Where the discovery test's host pattern points: one directory per
/// instance under the cluster's, each holding a link named for the
/// *primary's* port to that instance's own socket. The manager is given
/// the pattern `<dir>/instances/?` and the primary's connection string, so
/// it connects to instance `node1` exactly as it would on Aurora, at the
/// pattern's host with the seed's port; the links stand in for Aurora's
/// per-instance DNS names sharing one port.
fn instance_sockets(cluster: &Cluster) -> String {
    let root = cluster.dir().join("instances");
    let seed_port = cluster.node(0).port();
    for node in &cluster.nodes()[1..] {
        let dir = root.join(node.name());
        std::fs::create_dir_all(&dir).expect("instance directory");
        let socket = cluster.dir().join(format!(".s.PGSQL.{}", node.port()));
        let link = dir.join(format!(".s.PGSQL.{seed_port}"));
        std::os::unix::fs::symlink(socket, link).expect("socket link");
    }
    format!("{}/?", root.display())
}

fn discovered(status: &Status) -> Vec<(&str, bool)> {
    let nodes = status.nodes.iter().filter(|node| node.discovered);
    nodes
        .map(|node| (node.name.as_str(), node.healthy))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_are_discovered_removed_when_gone_and_added_again() {
    let cluster = aurora_cluster();
    let pattern = instance_sockets(&cluster);
    let ports: Vec<u16> = cluster.nodes().iter().map(|n| n.port()).collect();
    // Only the writer is configured.
    let mut config = fast_config(node_configs(&cluster, &ports[..1]));
    config.read_strategy = ReadStrategy::GlobalRandom;
    let mut discovery = DiscoverySettings::new(pattern);
    discovery.max_nodes = 4;
    discovery.removal_grace = Duration::from_secs(2);
    config.discovery = Some(discovery);
    let db = DatabaseManager::new(config).await.expect("manager");
    let mut events = db.subscribe();

    let both = wait_until(Duration::from_secs(30), || {
        let status = db.status();
        let mut found = discovered(&status);
        found.sort_unstable();
        found == [("node1", true), ("node2", true)]
    })
    .await;
    assert!(both.is_some(), "{:#?}", db.status());
    let status = db.status();
    assert_eq!(status.write_target.as_deref(), Some("node0"));
    assert_eq!(
        status.node("node1").map(|n| n.region.as_str()),
        Some(REGIONS[0])
    );

    // Reads reach the discovered readers.
    let port_of = |index: usize| ports[index].to_string();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..60 {
        let row = db
            .read()
            .query_one("SELECT current_setting('port')", &[])
            .await
            .expect("read");
        seen.insert(row.get::<_, String>(0));
    }
    assert!(
        seen.contains(&port_of(1)) && seen.contains(&port_of(2)),
        "reads reached {seen:?}, replicas are {} and {}",
        port_of(1),
        port_of(2)
    );

    // A reader gone from aurora_replica_status() is removed after the grace.
    blocking(|| cluster.stop(2, StopMode::Fast)).expect("stop node2");
    let removed = wait_until(Duration::from_secs(30), || {
        db.status().node("node2").is_none()
    })
    .await;
    assert!(removed.is_some(), "{:#?}", db.status());
    for _ in 0..30 {
        let row = db
            .read()
            .query_one("SELECT current_setting('port')", &[])
            .await
            .expect("read with node2 removed");
        assert_ne!(row.get::<_, String>(0), port_of(2));
    }

    // Back in the list: added again, with a new pool, and served.
    blocking(|| cluster.start_node(2)).expect("start node2");
    let back = wait_until(Duration::from_secs(30), || {
        db.status().node("node2").is_some_and(|node| node.healthy)
    })
    .await;
    assert!(back.is_some(), "{:#?}", db.status());
    let mut reached = false;
    for _ in 0..60 {
        let row = db
            .read()
            .query_one("SELECT current_setting('port')", &[])
            .await
            .expect("read");
        reached |= row.get::<_, String>(0) == port_of(2);
    }
    assert!(reached, "no read reached node2 after it came back");

    let mut names = Vec::new();
    while let Ok(event) = events.try_recv() {
        match event {
            Event::NodeAdded { node, .. } => names.push(format!("+{node}")),
            Event::NodeRemoved { node } => names.push(format!("-{node}")),
            _ => {}
        }
    }
    assert!(
        names.ends_with(&["-node2".to_owned(), "+node2".to_owned()]),
        "{names:?}"
    );
    db.close().await;
}

/// The node that served a read made now (in the caller's causal scope, if
/// any), and the count of `t` it saw.
async fn served_read(db: &DatabaseManager) -> (String, i64) {
    let info = CallInfo::new();
    let row = db
        .read()
        .info(&info)
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .expect("read");
    let server = info.server().expect("a successful read records its node");
    (server.node, row.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_write_a_causal_scope_reads_the_writer_for_the_window_then_the_local_reader() {
    use pgrouter::causal::causal_scope;
    let cluster = aurora_cluster();
    let ports: Vec<u16> = cluster.nodes().iter().map(|n| n.port()).collect();
    let mut config = fast_config(node_configs(&cluster, &ports));
    // node1 is the reader in the service's region; the default read
    // strategy (regional-preferred) sends reads there.
    config.read_strategy = ReadStrategy::RegionalPreferred;
    // Long enough that a loaded machine still routes the first read within
    // it; the rule to the millisecond is manager/tests/causal.rs's.
    let window = Duration::from_secs(3);
    config.causal.primary_window = window;
    let db = DatabaseManager::new(config).await.expect("manager");
    let ready = wait_until(Duration::from_secs(20), || {
        let status = db.status();
        status.can_write() && status.nodes.iter().all(|node| node.healthy)
    })
    .await;
    assert!(ready.is_some(), "{:#?}", db.status());
    db.execute("CREATE TABLE t (n int)", &[])
        .await
        .expect("create");
    blocking(|| cluster.wait_for_replicas(Duration::from_secs(10))).expect("caught up");
    assert_eq!(
        served_read(&db).await.0,
        "node1",
        "no write yet: the reader"
    );

    let ((), newest) = causal_scope(None, async {
        assert_eq!(served_read(&db).await.0, "node1", "no write in the scope");
        db.execute("INSERT INTO t VALUES (1)", &[])
            .await
            .expect("a write whose token query is refused");
        let written = std::time::Instant::now();
        let (node, count) = served_read(&db).await;
        assert!(
            written.elapsed() < window,
            "the read was not within the window"
        );
        assert_eq!((node.as_str(), count), ("node0", 1), "within the window");
        // A transaction opens it again, as its COMMIT's answer comes back.
        db.transaction(|tx| {
            Box::pin(async move { tx.execute("INSERT INTO t VALUES (2)", &[]).await })
        })
        .await
        .expect("transaction");
        let committed = std::time::Instant::now();
        let (node, count) = served_read(&db).await;
        assert!(committed.elapsed() < window);
        assert_eq!((node.as_str(), count), ("node0", 2));
        // Outside the scope (a task of its own), the same moment reads the
        // reader.
        let outside = tokio::spawn({
            let db = db.clone();
            async move { served_read(&db).await.0 }
        });
        assert_eq!(outside.await.expect("task"), "node1");

        tokio::time::sleep(window.saturating_sub(committed.elapsed())).await;
        let (node, count) = served_read(&db).await;
        assert_eq!(node, "node1", "after the window, the local reader");
        assert_eq!(count, 2, "the reader has replayed both writes by then");
    })
    .await;
    assert_eq!(
        newest, None,
        "no CausalToken::PRIMARY handed back to pin the client's next request"
    );
    db.close().await;
}
