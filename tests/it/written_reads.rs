//! Statements that write or lock, sent through the read path, never reach a
//! replica: each form, through `db.query*` and `db.read().query*`, on a
//! regional-preferred manager whose local node is a replica, runs on the
//! primary. Proof from the servers themselves: every node logs every
//! statement it parses or runs (`log_min_duration_statement = 0`,
//! `log_statement = all`), each statement carries a marker in a comment,
//! and the replicas' logs never show a marker while the primary's shows
//! every one.

use std::time::Duration;

use pgrouter::{CallInfo, DatabaseManager, Error};
use pgrouter_testkit::{Cluster, Flavour};

use crate::support::*;

const MARKER: &str = "pgrouter-written-read";

/// How many rows a form returns, so each is asked for with the methods
/// that accept that many.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Shape {
    /// Exactly one row: `query`, `query_one`, `query_opt`.
    One,
    /// No row: `query`, `query_opt`.
    None,
    /// Several rows: `query`.
    Many,
    /// The primary refuses it (an error named after the primary):
    /// `query`.
    Refused,
}

/// Each writing or locking form, `{n}` replaced by a number unique to the
/// call (for DDL names).
const FORMS: [(&str, &str, Shape); 19] = [
    ("insert", "INSERT INTO wr (v) VALUES (-1) RETURNING id", Shape::One),
    (
        "update",
        "UPDATE wr SET v = v + 1 WHERE id = (SELECT min(id) FROM wr) RETURNING id",
        Shape::One,
    ),
    (
        "delete",
        "DELETE FROM wr WHERE id = (SELECT max(id) FROM wr WHERE v > 0) RETURNING id",
        Shape::One,
    ),
    (
        "merge",
        "MERGE INTO wr USING (SELECT 1 AS k) s ON false WHEN NOT MATCHED THEN INSERT (v) VALUES (-7)",
        Shape::None,
    ),
    ("copy-from", "COPY wr (v) FROM '/dev/null'", Shape::None),
    ("create", "CREATE TABLE wr_ddl_{n} (a int)", Shape::None),
    (
        "for-update",
        "SELECT id FROM wr WHERE id = (SELECT min(id) FROM wr) FOR UPDATE",
        Shape::One,
    ),
    (
        "for-no-key-update",
        "SELECT id FROM wr WHERE id = (SELECT min(id) FROM wr) FOR NO KEY UPDATE",
        Shape::One,
    ),
    (
        "for-share",
        "SELECT id FROM wr WHERE id = (SELECT min(id) FROM wr) FOR SHARE",
        Shape::One,
    ),
    (
        "for-key-share",
        "select id from wr where id = (select min(id) from wr) for key share",
        Shape::One,
    ),
    (
        "cte-insert",
        "WITH n AS (INSERT INTO wr (v) VALUES (-2) RETURNING id) SELECT id FROM n",
        Shape::One,
    ),
    (
        "cte-update",
        "WITH n AS (UPDATE wr SET v = 0 WHERE id = (SELECT min(id) FROM wr) RETURNING id) \
         SELECT count(*) FROM n",
        Shape::One,
    ),
    ("nextval", "SELECT nextval('wr_seq')", Shape::One),
    ("setval", "SELECT setval('wr_seq', 1000)", Shape::One),
    ("call", "CALL wr_proc(-3)", Shape::None),
    ("select-into", "SELECT 1 AS a INTO wr_into_{n}", Shape::None),
    (
        "explain-analyze",
        "EXPLAIN ANALYZE INSERT INTO wr (v) VALUES (-9)",
        Shape::Many,
    ),
    ("advisory-lock", "SELECT pg_advisory_xact_lock(42)", Shape::One),
    // LOCK outside a transaction block: the primary answers 25P01.
    ("lock", "LOCK TABLE wr IN ACCESS SHARE MODE", Shape::Refused),
];

/// The calls a form of `shape` is sent with: (name, through `db.read()`).
fn methods(shape: Shape) -> Vec<(&'static str, bool)> {
    let names: &[&str] = match shape {
        Shape::One => &["query", "query_one", "query_opt"],
        Shape::None => &["query", "query_opt"],
        Shape::Many | Shape::Refused => &["query"],
    };
    names
        .iter()
        .flat_map(|name| [(*name, false), (*name, true)])
        .collect()
}

/// Sends `sql` with method `name`, through `db` or `db.read()`: the served
/// node's name (from the slot, or the error's context).
async fn send(
    db: &DatabaseManager,
    name: &str,
    through_read: bool,
    sql: &str,
) -> Result<String, (Option<String>, Error)> {
    let info = CallInfo::new();
    let result: Result<(), Error> = match (name, through_read) {
        ("query", false) => db.query(sql, &[]).await.map(drop),
        ("query_one", false) => db.query_one(sql, &[]).await.map(drop),
        ("query_opt", false) => db.query_opt(sql, &[]).await.map(drop),
        ("query", true) => db.read().info(&info).query(sql, &[]).await.map(drop),
        ("query_one", true) => db.read().info(&info).query_one(sql, &[]).await.map(drop),
        ("query_opt", true) => db.read().info(&info).query_opt(sql, &[]).await.map(drop),
        other => unreachable!("{other:?}"),
    };
    match result {
        Ok(()) if through_read => Ok(info.server().expect("a served call records its node").node),
        // `db.query*` takes no slot: the server's own log says where it ran.
        Ok(()) => Ok(String::new()),
        Err(error) => Err((error.node().map(str::to_owned), error)),
    }
}

/// Node `index`'s server log.
fn server_log(cluster: &Cluster, index: usize) -> String {
    let path = cluster.node(index).log_file();
    if let Ok(text) = std::fs::read_to_string(path) {
        return text;
    }
    // On the Docker backend the log is inside the node's container.
    let sql = format!("SELECT pg_read_file('{}')", path.display());
    blocking(|| cluster.psql(index, &sql)).expect("read the server log")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_writing_or_locking_statement_sent_as_a_read_reaches_a_replica() {
    let flavour = Flavour::from_env().expect("PGROUTER_TESTKIT_FLAVOUR");
    let builder = builder()
        .replicas(2)
        .flavour(flavour)
        .pooler(pooler())
        .setting("log_min_duration_statement", "0")
        .setting("log_statement", "all");
    let cluster = blocking(|| builder.start()).expect("start a cluster");
    let ports: Vec<u16> = cluster.nodes().iter().map(|n| n.client_port()).collect();
    // Regional-preferred (the default) in eu-west-1: node1, a replica, is
    // the local node.
    let config = fast_config(node_configs(&cluster, &ports));
    let db = DatabaseManager::new(config).await.expect("manager");
    assert_eq!(
        answering_port(&db, pgrouter::ReadStrategy::RegionalPreferred).await,
        port_of(&cluster, 1)
    );

    for setup in [
        "CREATE TABLE wr (id serial PRIMARY KEY, v int)",
        "INSERT INTO wr (v) SELECT g FROM generate_series(1, 200) g",
        "CREATE SEQUENCE wr_seq",
        "CREATE PROCEDURE wr_proc(x int) LANGUAGE sql AS $$ INSERT INTO wr (v) VALUES (x) $$",
    ] {
        db.execute(setup, &[]).await.expect(setup);
    }
    blocking(|| cluster.wait_for_replicas(Duration::from_secs(30))).expect("replicas caught up");
    let least_privilege = flavour == Flavour::LeastPrivilege;
    let before = db.status().writes_through_reads;

    let mut sent = Vec::new();
    let mut n = 0;
    for (form, template, shape) in FORMS {
        for (method, through_read) in methods(shape) {
            n += 1;
            let path = if through_read { "read()." } else { "db." };
            let marker = format!("{MARKER}:{form}:{path}{method}");
            let sql = format!("/* {marker} */ {}", template.replace("{n}", &n.to_string()));
            let served = send(&db, method, through_read, &sql).await;
            match (served, shape) {
                (Ok(node), Shape::One | Shape::None | Shape::Many) => {
                    assert!(
                        node.is_empty() || node == "node0",
                        "{marker}: served by {node}"
                    );
                }
                // COPY from a server file needs a privilege the
                // least-privilege role lacks; the primary says so.
                (Err((node, error)), _)
                    if shape == Shape::Refused || (least_privilege && form == "copy-from") =>
                {
                    assert_eq!(node.as_deref(), Some("node0"), "{marker}: {error:?}");
                }
                (other, _) => panic!("{marker}: {other:?}"),
            }
            sent.push(marker);
        }
    }
    assert_eq!(
        db.status().writes_through_reads - before,
        sent.len() as u64,
        "each one counted"
    );
    // The effects are the primary's: each insert through a read is there
    // once (6 calls each of INSERT and the CTE, 4 of CALL; seed rows are
    // positive, and only they are deleted).
    let count: i64 = db
        .read()
        .strategy(pgrouter::ReadStrategy::PrimaryOnly)
        .query_one("SELECT count(*) FROM wr WHERE v IN (-1, -2, -3)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        count,
        6 + 6 + 4,
        "inserts, CTE inserts and calls, each once"
    );

    let primary_log = server_log(&cluster, 0);
    for marker in &sent {
        assert!(
            primary_log.contains(marker.as_str()),
            "the primary's log shows every statement ({marker} missing): the check below would see one too"
        );
    }
    for replica in [1, 2] {
        let log = server_log(&cluster, replica);
        let reached: Vec<&str> = log.lines().filter(|line| line.contains(MARKER)).collect();
        assert!(
            reached.is_empty(),
            "node{replica} saw statements sent as reads that write: {reached:#?}"
        );
    }
    // Plain reads still go to the local replica.
    assert_eq!(
        answering_port(&db, pgrouter::ReadStrategy::RegionalPreferred).await,
        port_of(&cluster, 1)
    );
    db.close().await;
}
