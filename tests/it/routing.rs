//! Each read strategy sends reads where it should; writes go to the primary.

use std::collections::HashMap;
use std::time::Duration;

use crate::support::*;
use pgrouter::error::ErrorKind;
use pgrouter::tokio_postgres::error::SqlState;
use pgrouter::ReadStrategy;
use pgrouter_testkit::Fault;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strategies_send_reads_where_they_should() {
    let (cluster, db) = cluster_and_manager(ReadStrategy::RegionalPreferred).await;
    let ports: Vec<u16> = (0..3).map(|i| port_of(&cluster, i)).collect();

    for _ in 0..20 {
        assert_eq!(
            answering_port(&db, ReadStrategy::RegionalPreferred).await,
            ports[1],
            "local replica"
        );
        assert_eq!(
            answering_port(&db, ReadStrategy::PrimaryOnly).await,
            ports[0],
            "primary"
        );
    }

    let mut seen: HashMap<u16, usize> = HashMap::new();
    for _ in 0..150 {
        *seen
            .entry(answering_port(&db, ReadStrategy::GlobalRandom).await)
            .or_default() += 1;
    }
    for port in &ports {
        let count = seen.get(port).copied().unwrap_or_default();
        assert!(
            count >= 20,
            "global-random should reach every node: {seen:?}"
        );
    }

    let in_recovery: bool = db
        .read()
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(in_recovery, "regional-preferred read came from a replica");
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_go_to_the_primary_and_replicate() {
    let (cluster, db) = cluster_and_manager(ReadStrategy::RegionalPreferred).await;
    db.execute("CREATE TABLE kv (k text PRIMARY KEY, v int)", &[])
        .await
        .unwrap();
    let row = db
        .write()
        .query_one(
            "INSERT INTO kv VALUES ('a', 1) RETURNING inet_server_port()",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), i32::from(port_of(&cluster, 0)));
    blocking(|| cluster.wait_for_replicas(Duration::from_secs(10))).unwrap();
    let v: i32 = db
        .query_one("SELECT v FROM kv WHERE k = 'a'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 1);
    assert!(db
        .query_opt("SELECT v FROM kv WHERE k = 'zzz'", &[])
        .await
        .unwrap()
        .is_none());

    let err = db
        .query_one("SELECT v FROM kv WHERE k = 'zzz'", &[])
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::RowCount { actual: 0, .. }),
        "{err:?}"
    );

    // More rows than asked for: the exact count (the rows past the first
    // are counted as they stream in, not kept), and the connection serves
    // the next call.
    let three = "SELECT g FROM generate_series(1, 3) g";
    let errors = [
        db.query_one(three, &[]).await.map(drop).unwrap_err(),
        db.query_opt(three, &[]).await.map(drop).unwrap_err(),
        db.write()
            .query_one(three, &[])
            .await
            .map(drop)
            .unwrap_err(),
        db.write()
            .query_opt(three, &[])
            .await
            .map(drop)
            .unwrap_err(),
    ];
    for err in errors {
        assert!(
            matches!(err.kind(), ErrorKind::RowCount { actual: 3, .. }),
            "{err:?}"
        );
    }
    let one: i32 = db.query_one("SELECT 7", &[]).await.unwrap().get(0);
    assert_eq!(one, 7);

    let err = db
        .query("SELECT * FROM no_such_table", &[])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::UNDEFINED_TABLE));
    assert_eq!(err.node(), Some("node1"));

    let err = db.query("SELECT $1::int", &[]).await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Statement), "{err:?}");
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_pools_are_reachable() {
    let (cluster, db) = cluster_and_manager(ReadStrategy::RegionalPreferred).await;
    let read = db.read_pool().unwrap().get().await.unwrap();
    let port: i32 = read
        .query_one("SELECT inet_server_port()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(port, i32::from(port_of(&cluster, 1)));
    let write = db.write_pool().unwrap().get().await.unwrap();
    let port: i32 = write
        .query_one("SELECT inet_server_port()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(port, i32::from(port_of(&cluster, 0)));
    assert!(db.pool("node2").is_some() && db.pool("nope").is_none());
    drop((read, write));
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_whose_connection_to_the_primary_is_lost_after_sending_is_not_run_again() {
    // A "read" may write (`INSERT … RETURNING` sent through `query`): once
    // it was sent to the primary, running it again elsewhere could apply it
    // twice. The service runs next to the primary, so reads go there.
    let (cluster, proxies, db) = proxied_with(|c| c.local_region = REGIONS[0].to_owned()).await;
    let marker = "lost-read";
    let cut = async {
        until_running(&cluster, 0, marker).await;
        proxies[0].set(Fault::Reset);
        tokio::time::sleep(Duration::from_millis(10)).await;
        proxies[0].set(Fault::Pass);
    };
    let (result, ()) = tokio::join!(db.query("SELECT pg_sleep(2) -- lost-read", &[]), cut);
    let err = result.unwrap_err();
    assert!(err.is_outcome_unknown(), "{err:?}");
    assert_eq!(err.node(), Some("node0"));
    db.close().await;
}
