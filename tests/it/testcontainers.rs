//! The most common service test: pgrouter pointed at one
//! testcontainers-modules `Postgres` as its only (primary) node, as the
//! README's "Testing with containers" shows. The image is
//! `PGROUTER_TEST_IMAGE` (built from Debian packages by
//! `testkit/docker/build.sh`, or the official `postgres`). Skipped (with
//! the reason printed) without Docker or the image, unless
//! `PGROUTER_DOCKER_TESTS=require`.

use std::time::Duration;

use pgrouter::CallInfo;
use pgrouter::Config;

use pgrouter::DatabaseManager;

use pgrouter::ReadStrategy;

use pgrouter::Role;
use testcontainers_modules::postgres::Postgres;
use testcontainers_modules::testcontainers::runners::AsyncRunner;
use testcontainers_modules::testcontainers::ImageExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_primary_in_a_testcontainers_postgres_serves_reads_and_writes_and_is_ready() {
    // Also makes testcontainers able to talk to an older engine (see
    // pgrouter_testkit::docker::api).
    let Some(image) = pgrouter_testkit::docker::image_or_skip() else {
        return;
    };
    let (name, tag) = image.rsplit_once(':').unwrap_or((&image, "latest"));
    let container = Postgres::default()
        .with_name(name)
        .with_tag(tag)
        .start()
        .await
        .expect("a Postgres container");
    let host = container.get_host().await.unwrap();
    let port = container.get_host_port_ipv4(5432).await.unwrap();
    let url = format!("postgres://postgres:postgres@{host}:{port}/postgres");

    let config = Config::builder()
        .primary("db", "local", url)
        .local_region("local")
        .deadline(Duration::from_secs(5))
        .build()
        .expect("a primary-only config");
    let db = DatabaseManager::new(config).await.expect("manager");

    db.execute("CREATE TABLE users (id int PRIMARY KEY, name text)", &[])
        .await
        .unwrap();
    let info = CallInfo::with_token();
    db.write()
        .info(&info)
        .execute("INSERT INTO users VALUES (1, 'ada')", &[])
        .await
        .unwrap();
    let token = info.token().unwrap();
    for strategy in [
        ReadStrategy::RegionalPreferred,
        ReadStrategy::GlobalRandom,
        ReadStrategy::PrimaryOnly,
        ReadStrategy::Nearest,
    ] {
        let row = db
            .read()
            .strategy(strategy)
            .query_one("SELECT name FROM users WHERE id = 1", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, &str>(0), "ada", "{strategy:?}");
    }
    // Bounded and causal reads have only the primary, which is always fresh.
    let bounded = db
        .read()
        .max_staleness(Duration::from_millis(1))
        .after(token)
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .unwrap();
    assert_eq!(bounded.get::<_, i64>(0), 1);
    db.transaction(|tx| {
        Box::pin(async move {
            tx.execute("UPDATE users SET name = 'Ada' WHERE id = 1", &[])
                .await?;
            Ok(())
        })
    })
    .await
    .unwrap();

    // No replicas is a shape, not a fault: ready, readable, nothing missing.
    let status = db.status();
    assert!(status.can_write() && status.can_read(), "{status:?}");
    assert_eq!(status.write_target.as_deref(), Some("db"));
    assert!(!status.split_brain);
    let [node] = status.nodes.as_slice() else {
        panic!("one node: {status:?}");
    };
    assert!(node.healthy && !node.fenced && !node.suspect, "{node:?}");
    assert_eq!(node.role, Role::Primary);
    assert!(node.orphaned.is_none() && node.lag.is_none(), "{node:?}");
    assert!(node.last_error.is_none(), "{node:?}");
    assert!(node.missing_capabilities.is_empty(), "{node:?}");
    db.close().await;
}
