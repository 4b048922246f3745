//! The `metrics` feature through the Prometheus exporter of
//! `examples/prometheus`, scraped over HTTP after real reads, writes, a
//! retried write, a failed write, a transaction, a failover and a fenced
//! old primary: every family is there, with bounded labels only.
//!
//! Its own test binary, not a module of `tests/it`: the exporter installs
//! the process's global recorder, and every manager built after that
//! records into it. Beside the other tests (same node names, `node0` to
//! `node2`, in every cluster) the exact counts checked here would depend
//! on which tests ran at the same time.

#[path = "it/support.rs"]
mod support;

#[path = "../examples/prometheus/exporter.rs"]
mod exporter;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use pgrouter::tokio_postgres::error::SqlState;
use pgrouter::DatabaseManager;
use pgrouter::ReadStrategy;
use pgrouter_testkit::StopMode;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SCHEMA: &str = "
    CREATE SEQUENCE attempts;
    CREATE TABLE items (id int PRIMARY KEY, secret text);
    -- 40001 on its first call, then 1 (a sequence does not roll back).
    CREATE FUNCTION flaky() RETURNS int LANGUAGE plpgsql AS $$
    BEGIN
        IF nextval('attempts') < 2 THEN
            RAISE EXCEPTION 'simulated conflict' USING ERRCODE = '40001';
        END IF;
        RETURN 1;
    END $$;";

/// One sample line of the exposition format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A scrape: the `# TYPE` lines and the samples.
#[derive(Debug)]
struct Scrape {
    types: BTreeMap<String, String>,
    samples: Vec<Sample>,
    body: String,
}

impl Scrape {
    /// The value of the sample `name` whose labels include `labels`,
    /// summed over the ones that match.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .collect();
        (!matching.is_empty()).then(|| matching.iter().sum())
    }

    fn expect(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        match self.value(name, labels) {
            Some(value) => value,
            None => panic!("no {name} {labels:?} in the scrape:\n{}", self.pgrouter()),
        }
    }

    fn family_type(&self, name: &str) -> Option<&str> {
        self.types.get(name).map(String::as_str)
    }

    /// pgrouter's lines only, for failure messages.
    fn pgrouter(&self) -> String {
        self.body
            .lines()
            .filter(|line| line.contains("pgrouter_"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn parse(body: String) -> Scrape {
    let mut types = BTreeMap::new();
    let mut samples = Vec::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("a TYPE line");
            types.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample line");
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels = labels
            .split("\",")
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (key, value) = pair.split_once("=\"").expect("key=\"value\"");
                (key.to_owned(), value.trim_end_matches('"').to_owned())
            })
            .collect();
        let value = match value {
            "NaN" => f64::NAN,
            "+Inf" => f64::INFINITY,
            value => value.parse().expect("a number"),
        };
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    Scrape {
        types,
        samples,
        body,
    }
}

/// `GET /metrics` over a real TCP connection, as Prometheus scrapes.
async fn scrape(addr: SocketAddr) -> Scrape {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the exporter");
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read the response");
    let (head, body) = response.split_once("\r\n\r\n").expect("headers, body");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "a chunked body would need decoding: {head}"
    );
    parse(body.to_owned())
}

/// Scrapes until `ready` holds (gauges follow the monitor's publications).
async fn scrape_until(addr: SocketAddr, ready: impl Fn(&Scrape) -> bool) -> Scrape {
    let start = std::time::Instant::now();
    loop {
        let scrape = scrape(addr).await;
        if ready(&scrape) || start.elapsed() > Duration::from_secs(20) {
            return scrape;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Label keys and values pgrouter may use: nothing else, ever.
fn check_labels_are_bounded(scrape: &Scrape, nodes: &[&str]) {
    let keys = [
        "operation",
        "node",
        "role",
        "outcome",
        "reason",
        "keyword",
        "le",
    ];
    for sample in scrape
        .samples
        .iter()
        .filter(|s| s.name.starts_with("pgrouter_"))
    {
        for (key, value) in &sample.labels {
            assert!(keys.contains(&key.as_str()), "label {key} on {sample:?}");
            let allowed = match key.as_str() {
                "node" => nodes.contains(&value.as_str()) || value.is_empty(),
                "role" => ["primary", "replica", ""].contains(&value.as_str()),
                "operation" => ["read", "write", "transaction"].contains(&value.as_str()),
                // A SQL keyword or a built-in's name from a fixed set.
                "keyword" => {
                    value.len() < 32
                        && value
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
                }
                _ => value.len() < 32 && !value.contains(' '),
            };
            assert!(allowed, "label {key}={value:?} on {sample:?}");
        }
    }
    for secret in ["hunter2", "items", "SELECT", "password"] {
        assert!(!scrape.body.contains(secret), "{secret} in the scrape");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prometheus_scrape_shows_every_family_with_bounded_labels() {
    let cluster = start_cluster();
    let addr = SocketAddr::from(([127, 0, 0, 1], dead_port()));
    // Before the manager: its handles bind to the recorder installed now.
    exporter::install(addr).expect("install the Prometheus exporter");
    let ports: Vec<u16> = cluster.nodes().iter().map(|n| n.port()).collect();
    let mut config = fast_config(node_configs(&cluster, &ports));
    config.read_strategy = ReadStrategy::RegionalPreferred;
    let db = DatabaseManager::new(config).await.expect("manager");

    // Writes: a schema, a row, a duplicate (integrity), a conflict retried.
    db.execute("SELECT 1", &[]).await.expect("write");
    db.write_pool()
        .unwrap()
        .get()
        .await
        .unwrap()
        .batch_execute(SCHEMA)
        .await
        .expect("schema");
    db.execute("INSERT INTO items VALUES (1, 'hunter2')", &[])
        .await
        .expect("insert");
    let duplicate = db
        .execute("INSERT INTO items VALUES (1, 'hunter2')", &[])
        .await
        .expect_err("duplicate");
    assert_eq!(duplicate.code(), Some(&SqlState::UNIQUE_VIOLATION));
    db.execute("SELECT flaky()", &[])
        .await
        .expect("retried after 40001");
    db.transaction(|tx| {
        Box::pin(async move {
            tx.execute("UPDATE items SET secret = 'x' WHERE id = 1", &[])
                .await?;
            Ok(())
        })
    })
    .await
    .expect("transaction");
    // Reads: the local replica, then the primary.
    blocking(|| cluster.wait_for_replicas(Duration::from_secs(30))).expect("replay");
    for _ in 0..5 {
        db.query_one("SELECT count(*) FROM items", &[])
            .await
            .expect("read");
    }
    for _ in 0..3 {
        db.read()
            .strategy(ReadStrategy::PrimaryOnly)
            .query_one("SELECT 1", &[])
            .await
            .expect("read");
    }
    // A write sent as a read: on the primary, as a write, counted.
    db.query_one("INSERT INTO items VALUES (3, 'y') RETURNING id", &[])
        .await
        .expect("insert through a read");
    // Refused before any node: counted with empty node and role.
    let zero = db
        .read()
        .deadline(Duration::ZERO)
        .query("SELECT 1", &[])
        .await;
    assert!(zero.is_err());

    let (n0, n1, n2) = (
        cluster.node(0).name(),
        cluster.node(1).name(),
        cluster.node(2).name(),
    );
    let scrape = scrape_until(addr, |s| {
        s.value("pgrouter_replica_lag_bytes", &[("node", n1)])
            .is_some()
            && s.value("pgrouter_replica_lag_bytes", &[("node", n2)])
                .is_some()
    })
    .await;
    check_labels_are_bounded(&scrape, &[n0, n1, n2]);

    // Calls by operation, node, role and outcome.
    assert_eq!(scrape.family_type("pgrouter_calls_total"), Some("counter"));
    let calls = |op, node, role, outcome| {
        scrape.expect(
            "pgrouter_calls_total",
            &[
                ("operation", op),
                ("node", node),
                ("role", role),
                ("outcome", outcome),
            ],
        )
    };
    assert_eq!(calls("read", n1, "replica", "ok"), 5.0);
    assert_eq!(calls("read", n0, "primary", "ok"), 3.0);
    assert_eq!(
        calls("write", n0, "primary", "ok"),
        3.0,
        "with the INSERT sent as a read"
    );
    assert_eq!(
        scrape.expect(
            "pgrouter_writes_through_reads_total",
            &[("keyword", "INSERT")]
        ),
        1.0
    );
    assert_eq!(calls("write", n0, "primary", "integrity"), 1.0);
    assert_eq!(calls("write", n0, "primary", "retried"), 1.0);
    assert_eq!(calls("transaction", n0, "primary", "ok"), 1.0);
    assert_eq!(calls("read", "", "", "invalid_argument"), 1.0);
    assert_eq!(
        scrape.expect(
            "pgrouter_retries_total",
            &[("operation", "write"), ("node", n0), ("reason", "conflict")]
        ),
        1.0
    );

    // Latency and pool wait: real histograms.
    for family in [
        "pgrouter_call_duration_seconds",
        "pgrouter_pool_wait_seconds",
    ] {
        assert_eq!(scrape.family_type(family), Some("histogram"), "{family}");
    }
    let read_latency = [("operation", "read"), ("node", n1), ("role", "replica")];
    assert_eq!(
        scrape.expect("pgrouter_call_duration_seconds_count", &read_latency),
        5.0
    );
    assert!(scrape.expect("pgrouter_call_duration_seconds_sum", &read_latency) > 0.0);
    let mut le_inf = read_latency.to_vec();
    le_inf.push(("le", "+Inf"));
    assert_eq!(
        scrape.expect("pgrouter_call_duration_seconds_bucket", &le_inf),
        5.0
    );
    // One checkout per attempt: the retried write made two on node0.
    assert!(scrape.expect("pgrouter_pool_wait_seconds_count", &[("node", n0)]) >= 9.0);
    assert_eq!(
        scrape.expect("pgrouter_pool_wait_seconds_count", &[("node", n1)]),
        5.0
    );

    // Gauges from the monitor's snapshots.
    for node in [n0, n1, n2] {
        let node = [("node", node)];
        assert_eq!(scrape.expect("pgrouter_node_up", &node), 1.0);
        assert_eq!(scrape.expect("pgrouter_node_fenced", &node), 0.0);
        assert_eq!(scrape.expect("pgrouter_pool_max_connections", &node), 8.0);
        // As of the monitor's last publication, which may fall mid-call.
        assert!(scrape.expect("pgrouter_pool_waiters", &node) >= 0.0);
        assert!(scrape.expect("pgrouter_probe_rtt_seconds", &node) > 0.0);
        assert_eq!(scrape.expect("pgrouter_failovers_total", &node), 0.0);
        assert_eq!(scrape.expect("pgrouter_fencings_total", &node), 0.0);
        assert_eq!(scrape.expect("pgrouter_outliers_total", &node), 0.0);
        assert_eq!(
            scrape.expect("pgrouter_read_retries_refused_total", &node),
            0.0
        );
        for outcome in ["sent", "won", "refused"] {
            let labels = [node[0], ("outcome", outcome)];
            assert!(scrape.expect("pgrouter_hedges_total", &labels) >= 0.0);
        }
    }
    let primary_pool = [("node", n0)];
    assert!(scrape.expect("pgrouter_pool_connections", &primary_pool) >= 1.0);
    assert!(scrape.expect("pgrouter_pool_idle_connections", &primary_pool) >= 0.0);
    for replica in [n1, n2] {
        let lag = scrape.expect("pgrouter_replica_lag_seconds", &[("node", replica)]);
        assert!(lag >= 0.0, "{lag}");
        assert!(scrape.expect("pgrouter_replica_lag_bytes", &[("node", replica)]) >= 0.0);
    }
    assert_eq!(
        scrape.value("pgrouter_replica_lag_bytes", &primary_pool),
        None
    );
    for (family, kind) in [
        ("pgrouter_retries_total", "counter"),
        ("pgrouter_failovers_total", "counter"),
        ("pgrouter_fencings_total", "counter"),
        ("pgrouter_hedges_total", "counter"),
        ("pgrouter_outliers_total", "counter"),
        ("pgrouter_writes_through_reads_total", "counter"),
        ("pgrouter_node_up", "gauge"),
        ("pgrouter_pool_connections", "gauge"),
        ("pgrouter_replica_lag_seconds", "gauge"),
        ("pgrouter_probe_rtt_seconds", "gauge"),
    ] {
        assert_eq!(scrape.family_type(family), Some(kind), "{family}");
    }

    // A failover: node1 promoted is counted; the old primary, back as a
    // primary on the old timeline, is fenced.
    blocking(|| cluster.stop(0, StopMode::Immediate)).expect("stop node0");
    blocking(|| cluster.promote(1)).expect("promote node1");
    let written = wait_until_async(Duration::from_secs(20), || async {
        db.execute("INSERT INTO items VALUES (2, 'after')", &[])
            .await
            .is_ok()
    })
    .await;
    assert!(written.is_some(), "{:?}", db.status());
    blocking(|| cluster.start_node(0)).expect("restart node0");
    let scrape = scrape_until(addr, |s| {
        s.value("pgrouter_fencings_total", &[("node", n0)]) >= Some(1.0)
            && s.value("pgrouter_node_fenced", &[("node", n0)]) == Some(1.0)
    })
    .await;
    assert_eq!(
        scrape.expect("pgrouter_failovers_total", &[("node", n1)]),
        1.0,
        "{}",
        scrape.pgrouter()
    );
    assert_eq!(
        scrape.expect("pgrouter_failovers_total", &[("node", n0)]),
        0.0
    );
    // Seen here: once or twice (fenced, not fenced, fenced again while the
    // restarted server comes up; the cause was not looked into): each counts.
    let fencings = scrape.expect("pgrouter_fencings_total", &[("node", n0)]);
    eprintln!("node0 fenced {fencings} time(s) after its restart");
    assert!(fencings >= 1.0);
    assert_eq!(
        scrape.expect("pgrouter_node_fenced", &[("node", n0)]),
        1.0,
        "{:?}\n{}",
        db.status().node(n0),
        scrape.pgrouter()
    );
    // The first write to succeed after the promotion, first try or not.
    let served = |outcome| {
        let labels = [
            ("operation", "write"),
            ("node", n1),
            ("role", "primary"),
            ("outcome", outcome),
        ];
        scrape.value("pgrouter_calls_total", &labels).unwrap_or(0.0)
    };
    assert_eq!(
        served("ok") + served("retried"),
        1.0,
        "{}",
        scrape.pgrouter()
    );
    check_labels_are_bounded(&scrape, &[n0, n1, n2]);
    db.close().await;
}
