//! One repository function, written once against `&impl Queries`, run
//! through every pgrouter handle and every tokio-postgres and
//! deadpool-postgres client and transaction, on a real cluster.

use std::time::Duration;

use crate::support::*;
use pgrouter::error::ErrorKind;
use pgrouter::{Error, Queries, ReadStrategy};

/// What the repository reports about a user.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Report {
    name: Option<String>,
    visits: i64,
    via: Vec<String>,
}

/// Reads only: `query_opt`, `query_one`, `query`.
async fn report(db: &impl Queries, user: i32) -> Result<Report, Error> {
    let name = db
        .query_opt("SELECT name FROM users WHERE id = $1", &[&user])
        .await?
        .map(|row| row.get(0));
    let visits = db
        .query_one("SELECT count(*) FROM visits WHERE user_id = $1", &[&user])
        .await?
        .get(0);
    let via = db
        .query(
            "SELECT via FROM visits WHERE user_id = $1 ORDER BY id",
            &[&user],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    Ok(Report { name, visits, via })
}

/// The repository function: records a visit (`execute`), then reports.
async fn visit(db: &impl Queries, user: i32, via: &str) -> Result<Report, Error> {
    let inserted = db
        .execute(
            "INSERT INTO visits (user_id, via) VALUES ($1, $2)",
            &[&user, &via],
        )
        .await?;
    assert_eq!(inserted, 1, "{via}");
    report(db, user).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_repository_function_runs_through_every_handle_and_client() {
    let (cluster, db) = cluster_and_manager_with(|config| {
        // The manager's own reads see its writes at once.
        config.read_strategy = ReadStrategy::PrimaryOnly;
    })
    .await;
    let pool = db.write_pool().unwrap();
    pool.get()
        .await
        .unwrap()
        .batch_execute(
            "CREATE TABLE users (id int PRIMARY KEY, name text NOT NULL);
             CREATE TABLE visits (id serial PRIMARY KEY, user_id int NOT NULL, via text NOT NULL);
             INSERT INTO users VALUES (1, 'ada');",
        )
        .await
        .unwrap();
    let mut via = Vec::new();
    let mut expect = |name: &str| {
        via.push(name.to_owned());
        Report {
            name: Some("ada".to_owned()),
            visits: via.len() as i64,
            via: via.clone(),
        }
    };

    // pgrouter's handles.
    assert_eq!(visit(&db, 1, "manager").await.unwrap(), expect("manager"));
    assert_eq!(
        visit(&db.write(), 1, "write").await.unwrap(),
        expect("write")
    );
    let in_closure = db
        .transaction(|tx| Box::pin(async move { visit(tx, 1, "closure").await }))
        .await
        .unwrap();
    assert_eq!(in_closure, expect("closure"));
    let tx = db.begin().await.unwrap();
    let in_begin = visit(&tx, 1, "begin").await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(in_begin, expect("begin"));
    // In a spawned task: the futures are Send.
    let spawned = tokio::spawn({
        let db = db.clone();
        async move { visit(&db, 1, "spawned").await }
    });
    assert_eq!(spawned.await.unwrap().unwrap(), expect("spawned"));

    // deadpool-postgres's client, its wrapper, its transaction.
    let mut object = pool.get().await.unwrap();
    assert_eq!(
        visit(&object, 1, "deadpool client").await.unwrap(),
        expect("deadpool client")
    );
    let wrapper: &deadpool_postgres::ClientWrapper = &object;
    assert_eq!(
        visit(wrapper, 1, "deadpool wrapper").await.unwrap(),
        expect("deadpool wrapper")
    );
    let transaction = object.transaction().await.unwrap();
    let in_deadpool = visit(&transaction, 1, "deadpool transaction")
        .await
        .unwrap();
    transaction.commit().await.unwrap();
    assert_eq!(in_deadpool, expect("deadpool transaction"));
    drop(object);

    // tokio-postgres's client and transaction.
    let (mut client, driver) = session(&cluster, 0).await;
    assert_eq!(
        visit(&client, 1, "tokio-postgres client").await.unwrap(),
        expect("tokio-postgres client")
    );
    let transaction = client.transaction().await.unwrap();
    let in_tokio = visit(&transaction, 1, "tokio-postgres transaction")
        .await
        .unwrap();
    transaction.commit().await.unwrap();
    assert_eq!(in_tokio, expect("tokio-postgres transaction"));
    drop(client);
    let _ = driver.await;

    // A read handle reads (here from a replica, once it has caught up)...
    let everything = expect("nothing more").via;
    blocking(|| cluster.wait_for_replicas(Duration::from_secs(10))).unwrap();
    let read = db
        .read()
        .strategy(ReadStrategy::RegionalPreferred)
        .max_staleness(Duration::from_secs(30));
    let seen = report(&read, 1).await.unwrap();
    assert_eq!(seen.via, everything[..everything.len() - 1]);
    // ...and refuses to execute, naming what to use.
    let refused = visit(&read, 1, "read").await.unwrap_err();
    assert!(
        matches!(
            refused.kind(),
            ErrorKind::InvalidArgument {
                option: "execute",
                ..
            }
        ),
        "{refused:?}"
    );
    // Errors are pgrouter's, whatever ran the statement.
    let duplicate = Queries::execute(
        &pool.get().await.unwrap(),
        "INSERT INTO users VALUES (1, 'again')",
        &[],
    )
    .await
    .unwrap_err();
    assert_eq!(*duplicate.kind(), ErrorKind::Database, "{duplicate:?}");
    assert_eq!(duplicate.code().map(|c| c.code()), Some("23505"));
    db.close().await;
}
