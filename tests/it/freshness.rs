//! Replica lag, staleness bounds, read-your-writes tokens, and the nearest
//! strategy, on a real cluster.

use std::time::Duration;

use crate::support::*;
use pgrouter::causal::Lsn;
use pgrouter::error::ErrorKind;
use pgrouter::status::Event;
use pgrouter::CallInfo;
use pgrouter::CausalToken;
use pgrouter::DatabaseManager;
use pgrouter::Error;
use pgrouter::ReadStrategy;
use pgrouter_testkit::{Cluster, Fault};

async fn manager_with(
    cluster: &Cluster,
    edit: impl FnOnce(&mut pgrouter::Config),
) -> DatabaseManager {
    let ports: Vec<u16> = cluster.nodes().iter().map(|n| n.client_port()).collect();
    let mut config = fast_config(node_configs(cluster, &ports));
    edit(&mut config);
    DatabaseManager::new(config).await.unwrap()
}

fn lag_of(db: &DatabaseManager, node: &str) -> Option<pgrouter::status::Lag> {
    db.status().node(node).and_then(|n| n.lag)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_replica_lags_is_avoided_by_bounded_reads_and_returns() {
    let cluster = start_cluster();
    let bound = Duration::from_millis(600);
    let db = manager_with(&cluster, |c| {
        c.read_strategy = ReadStrategy::GlobalRandom;
        c.max_staleness = Some(bound);
    })
    .await;
    let mut events = db.subscribe();
    db.execute("CREATE TABLE t (id serial PRIMARY KEY)", &[])
        .await
        .unwrap();
    blocking(|| cluster.wait_for_replicas(Duration::from_secs(10))).unwrap();

    blocking(|| cluster.pause_replay(2)).unwrap();
    let writer = async {
        for _ in 0..40 {
            db.execute("INSERT INTO t DEFAULT VALUES", &[])
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    writer.await;
    let lag = lag_of(&db, "node2").expect("lag measured");
    // On Aurora, lag is a time only (bytes 0).
    assert!(
        (lag.bytes > 0 || aurora_flavour()) && lag.time > bound,
        "{lag:?}"
    );
    let fresh = lag_of(&db, "node1").expect("lag measured");
    assert!(fresh.time < bound, "{fresh:?}");

    for _ in 0..60 {
        let port = answering_port(&db, ReadStrategy::GlobalRandom).await;
        assert_ne!(
            port,
            port_of(&cluster, 2),
            "a read went to the lagging replica"
        );
    }
    // A looser per-call bound lets it serve again.
    let mut reached = false;
    for _ in 0..60 {
        let row = db
            .read()
            .max_staleness(Duration::from_secs(600))
            .query_one("SELECT inet_server_port()", &[])
            .await
            .unwrap();
        reached |= row.get::<_, i32>(0) == i32::from(port_of(&cluster, 2));
    }
    assert!(reached, "a loose bound may use the lagging replica");

    blocking(|| cluster.resume_replay(2)).unwrap();
    let back = wait_until(Duration::from_secs(10), || {
        lag_of(&db, "node2").is_some_and(|lag| lag.time <= bound)
    })
    .await;
    assert!(back.is_some(), "{:?}", lag_of(&db, "node2"));

    let mut exceeded = false;
    let mut recovered = false;
    while let Ok(event) = events.try_recv() {
        match event {
            Event::LagExceeded { node, .. } if node == "node2" => exceeded = true,
            Event::LagRecovered { node, .. } if node == "node2" => recovered = true,
            _ => {}
        }
    }
    assert!(
        exceeded && recovered,
        "lag events: exceeded={exceeded} recovered={recovered}"
    );
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caught_up_replicas_of_an_idle_primary_lag_no_more_than_a_probe_interval() {
    let cluster = start_cluster();
    let db = manager_with(&cluster, |_| {}).await;
    db.execute("CREATE TABLE t (id int)", &[]).await.unwrap();
    blocking(|| cluster.wait_for_replicas(Duration::from_secs(10))).unwrap();
    // Quiet for several probe intervals: the last transaction grows old,
    // the lag must not.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for node in ["node1", "node2"] {
        let lag = lag_of(&db, node).expect("lag measured");
        // Fresh as of the primary's last probe: at most an interval ago, plus
        // a probe's round trip and a loaded machine's scheduling.
        let bound = db.config().health.interval * 2 + SLACK;
        assert!(lag.time <= bound, "{node}: {lag:?}");
        assert!(lag.bytes < 1024, "{node}: {lag:?}");
    }
    assert!(lag_of(&db, "node0").is_none(), "the primary has no lag");
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_causal_token_never_reads_before_its_write() {
    let cluster = start_cluster();
    let db = manager_with(&cluster, |c| c.read_strategy = ReadStrategy::GlobalRandom).await;
    db.execute("CREATE TABLE t (id int PRIMARY KEY)", &[])
        .await
        .unwrap();
    blocking(|| cluster.wait_for_replicas(Duration::from_secs(10))).unwrap();
    blocking(|| cluster.pause_replay(1)).unwrap();
    if aurora_flavour() {
        // No position compares across Aurora instances: the token is the
        // one that sends reads to the writer, which has the write.
        let info = CallInfo::with_token();
        db.write()
            .info(&info)
            .execute("INSERT INTO t VALUES (0)", &[])
            .await
            .expect("a write whose token query is refused");
        let token = info.token().expect("the write's token");
        assert_eq!(token, CausalToken::PRIMARY);
        for _ in 0..20 {
            let row = db
                .read()
                .after(token)
                .query_one("SELECT count(*) FROM t WHERE id = 0", &[])
                .await
                .expect("a causal read");
            assert_eq!(row.get::<_, i64>(0), 1, "a causal read missed its write");
        }
        blocking(|| cluster.resume_replay(1)).unwrap();
        db.close().await;
        return;
    }

    let mut primary_reads = 0;
    for id in 0..40i32 {
        let info = CallInfo::with_token();
        let written = db
            .write()
            .info(&info)
            .execute("INSERT INTO t VALUES ($1)", &[&id])
            .await
            .unwrap();
        assert_eq!(written, 1);
        let token = info.token().unwrap();
        // The token travels as text, as it would in an HTTP header.
        let token: CausalToken = token.to_string().parse().unwrap();
        let row = db
            .read()
            .after(token)
            .query_opt("SELECT inet_server_port() FROM t WHERE id = $1", &[&id])
            .await
            .unwrap();
        let row = row.expect("a read with the token saw the write");
        assert_ne!(row.get::<_, i32>(0), i32::from(port_of(&cluster, 1)));
        primary_reads += usize::from(row.get::<_, i32>(0) == i32::from(port_of(&cluster, 0)));
    }
    assert!(primary_reads > 0);

    let info = CallInfo::with_token();
    let id = db
        .write()
        .info(&info)
        .transaction(|tx| {
            Box::pin(async move {
                let row = tx
                    .query_one("INSERT INTO t VALUES (1000) RETURNING id", &[])
                    .await?;
                Ok(row.get::<_, i32>(0))
            })
        })
        .await
        .unwrap();
    let token = info.token().unwrap();
    let seen = db
        .read()
        .after(token)
        .query_opt("SELECT 1 FROM t WHERE id = $1", &[&id])
        .await
        .unwrap();
    assert!(seen.is_some());
    // Its position binds and reads back as a `pg_lsn`, and the primary is
    // at or past it.
    let row = db
        .read()
        .strategy(ReadStrategy::PrimaryOnly)
        .query_one(
            "SELECT $1::pg_lsn, pg_current_wal_insert_lsn() >= $1::pg_lsn",
            &[&token.lsn()],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Lsn>(0), token.lsn());
    assert!(row.get::<_, bool>(1));

    // A replica that has replayed the token may serve it.
    blocking(|| cluster.resume_replay(1)).unwrap();
    blocking(|| cluster.wait_for_replicas(Duration::from_secs(10))).unwrap();
    tokio::time::sleep(db.config().health.interval * 2).await;
    let mut replica_reads = 0;
    for _ in 0..30 {
        let row = db
            .read()
            .after(token)
            .query_one("SELECT inet_server_port()", &[])
            .await
            .unwrap();
        replica_reads += usize::from(row.get::<_, i32>(0) != i32::from(port_of(&cluster, 0)));
    }
    assert!(replica_reads > 0, "caught-up replicas serve token reads");
    db.close().await;
}

/// The option an `InvalidArgument` error names.
fn rejected_option<T: std::fmt::Debug>(result: Result<T, Error>) -> &'static str {
    match result.as_ref().map_err(Error::kind) {
        Err(ErrorKind::InvalidArgument { option, .. }) => option,
        _ => panic!("expected InvalidArgument, got {result:?}"),
    }
}

// Argument checks come before any routing, so no server is needed: the
// nodes are unreachable (and start unhealthy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_per_call_input_is_a_typed_error() {
    let db = DatabaseManager::new(fast_config(unreachable_node_configs()))
        .await
        .unwrap();
    let zero = Duration::ZERO;
    let read = db.read().max_staleness(zero).query("SELECT 1", &[]).await;
    assert_eq!(rejected_option(read), "max_staleness");
    let read = db.read().deadline(zero).query("SELECT 1", &[]).await;
    assert_eq!(rejected_option(read), "deadline");
    let write = db.write().deadline(zero).execute("SELECT 1", &[]).await;
    assert_eq!(rejected_option(write), "deadline");
    let tx = db
        .write()
        .deadline(zero)
        .transaction(|_| Box::pin(async { Ok(()) }))
        .await;
    assert_eq!(rejected_option(tx), "deadline");
    assert!("not-a-token".parse::<CausalToken>().is_err());
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nearest_avoids_a_slow_node() {
    let (cluster, proxies, db) = proxied_with(|c| {
        c.read_strategy = ReadStrategy::Nearest;
        c.nearest.window = Duration::from_millis(20);
    })
    .await;
    proxies[1].set(Fault::Latency(Duration::from_millis(60)));
    let slow = wait_until(Duration::from_secs(5), || {
        db.status()
            .node("node1")
            .and_then(|n| n.rtt)
            .is_some_and(|rtt| rtt > Duration::from_millis(60))
    })
    .await;
    assert!(slow.is_some(), "{:?}", db.status());
    let mut seen = std::collections::HashSet::new();
    for _ in 0..60 {
        let port = answering_port(&db, ReadStrategy::Nearest).await;
        assert_ne!(
            port,
            port_of(&cluster, 1),
            "nearest read went to the slow node"
        );
        seen.insert(port);
    }
    assert_eq!(seen.len(), 2, "both fast nodes share the reads: {seen:?}");
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_already_behind_when_the_manager_starts_serves_no_bounded_read() {
    let cluster = start_cluster();
    let admin = manager_with(&cluster, |_| {}).await;
    admin
        .execute("CREATE TABLE t (id serial PRIMARY KEY)", &[])
        .await
        .unwrap();
    blocking(|| cluster.wait_for_replicas(Duration::from_secs(10))).unwrap();
    blocking(|| cluster.pause_replay(2)).unwrap();
    for _ in 0..5 {
        admin
            .execute("INSERT INTO t DEFAULT VALUES", &[])
            .await
            .unwrap();
    }
    admin.close().await;
    // node2 is now behind; a manager that starts now has seen none of the
    // primary's positions node2 stopped at.
    let bound = Duration::from_secs(2);
    let db = manager_with(&cluster, |c| {
        c.read_strategy = ReadStrategy::GlobalRandom;
        c.max_staleness = Some(bound);
    })
    .await;
    if aurora_flavour() {
        // Aurora reports node2's lag itself (the time since its last
        // replayed commit, an over-estimate): known from the first probe.
        let known = wait_until(Duration::from_secs(10), || lag_of(&db, "node2").is_some()).await;
        assert!(known.is_some(), "{:?}", db.status());
    } else {
        for _ in 0..60 {
            let port = answering_port(&db, ReadStrategy::GlobalRandom).await;
            assert_ne!(port, port_of(&cluster, 2), "a bounded read went to node2");
        }
        assert!(lag_of(&db, "node2").is_none(), "{:?}", lag_of(&db, "node2"));
    }
    blocking(|| cluster.resume_replay(2)).unwrap();
    let caught_up = wait_until(Duration::from_secs(10), || {
        lag_of(&db, "node2").is_some_and(|lag| lag.time <= bound)
    })
    .await;
    assert!(caught_up.is_some(), "{:?}", db.status());
    db.close().await;
}

/// The node that served a read of `t`'s rows made now, and their count.
async fn served_count(db: &DatabaseManager) -> (String, i64) {
    let info = CallInfo::new();
    let row = db
        .read()
        .info(&info)
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap();
    (info.server().expect("served").node, row.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chosen_window_reads_the_primary_after_a_write_whatever_positions_say() {
    use pgrouter::causal::causal_scope;
    use pgrouter::config::ReadYourWrites;
    let cluster = start_cluster();
    let window = Duration::from_secs(3);
    let db = manager_with(&cluster, |c| {
        c.read_strategy = ReadStrategy::RegionalPreferred;
        c.causal.read_your_writes = ReadYourWrites::Window;
        c.causal.primary_window = window;
    })
    .await;
    db.execute("CREATE TABLE t (id int)", &[]).await.unwrap();
    blocking(|| cluster.wait_for_replicas(Duration::from_secs(10))).unwrap();
    let ((), newest) = causal_scope(None, async {
        db.execute("INSERT INTO t VALUES (1)", &[]).await.unwrap();
        let written = std::time::Instant::now();
        let (node, count) = served_count(&db).await;
        assert!(
            written.elapsed() < window,
            "the read was not within the window"
        );
        assert_eq!((node.as_str(), count), ("node0", 1), "within the window");
        tokio::time::sleep(window.saturating_sub(written.elapsed())).await;
        let (node, _) = served_count(&db).await;
        assert_eq!(node, "node1", "after it: the local replica");
    })
    .await;
    assert_eq!(
        newest, None,
        "the window sends no token query, keeps no token"
    );
    db.close().await;
}
