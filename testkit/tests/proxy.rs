//! The fault proxy in front of a real PostgreSQL server.

use std::time::{Duration, Instant};

use pgrouter_testkit::{Cluster, Fault, FaultProxy};
use tokio_postgres::{Client, NoTls};

/// A single-node cluster and a proxy in front of it.
async fn setup() -> (Cluster, FaultProxy) {
    let cluster = Cluster::start(0).unwrap();
    let proxy = FaultProxy::start(cluster.primary().addr()).await.unwrap();
    (cluster, proxy)
}

async fn connect(cluster: &Cluster, proxy: &FaultProxy) -> Result<Client, tokio_postgres::Error> {
    let node = cluster.primary();
    let (client, connection) = tokio_postgres::Config::new()
        .host(node.host())
        .port(proxy.port())
        .user(node.user())
        .dbname(node.dbname())
        .connect(NoTls)
        .await?;
    tokio::spawn(connection);
    Ok(client)
}

async fn select_one(client: &Client) -> Result<i32, tokio_postgres::Error> {
    Ok(client.query_one("SELECT 1", &[]).await?.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_forwards_queries() {
    let (cluster, proxy) = setup().await;
    assert_eq!(proxy.fault(), Fault::Pass);
    assert_eq!(proxy.addr().ip().to_string(), "127.0.0.1");
    let client = connect(&cluster, &proxy).await.unwrap();
    let row = client.query_one("SELECT 40 + 2", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    assert_eq!(proxy.connections(), 1);

    drop(client);
    let deadline = Instant::now() + Duration::from_secs(5);
    while proxy.connections() != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(proxy.connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_hole_stalls_queries_until_lifted() {
    let (cluster, proxy) = setup().await;
    let client = connect(&cluster, &proxy).await.unwrap();
    proxy.set(Fault::BlackHole);
    assert_eq!(proxy.fault(), Fault::BlackHole);

    let stalled = tokio::time::timeout(Duration::from_millis(300), select_one(&client)).await;
    assert!(stalled.is_err(), "query should time out, got {stalled:?}");
    let new = tokio::time::timeout(Duration::from_millis(300), connect(&cluster, &proxy)).await;
    assert!(new.is_err(), "connecting should time out");

    proxy.set(Fault::Pass);
    assert_eq!(select_one(&client).await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuse_refuses_then_listens_again_on_the_same_port() {
    let (cluster, proxy) = setup().await;
    let existing = connect(&cluster, &proxy).await.unwrap();
    let port = proxy.port();

    proxy.set(Fault::Refuse);
    let err = tokio::net::TcpStream::connect(proxy.addr())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    assert_eq!(
        select_one(&existing).await.unwrap(),
        1,
        "existing connections keep working"
    );

    proxy.set(Fault::Pass);
    assert_eq!(proxy.port(), port);
    let client = connect(&cluster, &proxy).await.unwrap();
    assert_eq!(select_one(&client).await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_breaks_existing_and_new_connections() {
    let (cluster, proxy) = setup().await;
    let client = connect(&cluster, &proxy).await.unwrap();
    assert_eq!(select_one(&client).await.unwrap(), 1);

    proxy.set(Fault::Reset);
    assert!(select_one(&client).await.is_err());
    assert!(connect(&cluster, &proxy).await.is_err());

    proxy.set(Fault::Pass);
    let client = connect(&cluster, &proxy).await.unwrap();
    assert_eq!(select_one(&client).await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_delays_each_direction() {
    let (cluster, proxy) = setup().await;
    let client = connect(&cluster, &proxy).await.unwrap();

    proxy.set(Fault::Latency(Duration::from_millis(200)));
    let started = Instant::now();
    assert_eq!(select_one(&client).await.unwrap(), 1);
    let round_trip = started.elapsed();
    assert!(round_trip >= Duration::from_millis(400), "{round_trip:?}");

    proxy.set(Fault::Pass);
    let started = Instant::now();
    assert_eq!(select_one(&client).await.unwrap(), 1);
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_proxy_closes_everything() {
    let (cluster, proxy) = setup().await;
    let client = connect(&cluster, &proxy).await.unwrap();
    let addr = proxy.addr();
    drop(proxy);
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    assert!(select_one(&client).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_replies_lets_statements_run_but_keeps_their_answers() {
    let (cluster, proxy) = setup().await;
    let client = connect(&cluster, &proxy).await.unwrap();
    client
        .batch_execute("CREATE TABLE held (id int)")
        .await
        .unwrap();
    proxy.set(Fault::HoldReplies);

    // The insert reaches the server and commits; its answer is held back.
    let insert = client.batch_execute("INSERT INTO held VALUES (1)");
    let stalled = tokio::time::timeout(Duration::from_millis(300), insert).await;
    assert!(stalled.is_err(), "the answer should be held back");
    let seen = tokio::task::block_in_place(|| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let count = cluster.psql(0, "SELECT count(*) FROM held").unwrap();
            if count.trim() == "1" || Instant::now() > deadline {
                return count;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    assert_eq!(seen.trim(), "1", "the insert should have run on the server");

    // Lifted: held answers flow again and the connection works.
    proxy.set(Fault::Pass);
    assert_eq!(select_one(&client).await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jitter_delays_each_direction_and_keeps_byte_order() {
    let (cluster, proxy) = setup().await;
    let client = connect(&cluster, &proxy).await.unwrap();
    let delay = Duration::from_millis(30);
    let jitter = Duration::from_millis(20);
    proxy.set(Fault::Jittered { delay, jitter });

    // A lower bound only: a chunk is never released before `delay -
    // jitter` each way, however slow the machine.
    let started = Instant::now();
    assert_eq!(select_one(&client).await.unwrap(), 1);
    assert!(
        started.elapsed() >= 2 * (delay - jitter),
        "{:?}",
        started.elapsed()
    );

    // Statements sent 1 ms apart, far closer than the jitter's 40 ms spread,
    // are pipelined on one connection (each in chunks of its own): were a
    // later chunk released before an earlier one, the protocol stream would
    // break or answers would swap.
    let client = std::sync::Arc::new(client);
    let mut calls = Vec::new();
    for i in 0..50i32 {
        let client = std::sync::Arc::clone(&client);
        calls.push(tokio::spawn(async move {
            let row = client.query_one("SELECT $1::int", &[&i]).await?;
            Ok::<i32, tokio_postgres::Error>(row.get(0))
        }));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    for (i, call) in calls.into_iter().enumerate() {
        assert_eq!(call.await.unwrap().unwrap(), i32::try_from(i).unwrap());
    }

    proxy.set(Fault::Pass);
    assert_eq!(select_one(&client).await.unwrap(), 1);
}
