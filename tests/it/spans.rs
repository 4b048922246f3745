//! The call span's fields, as a tracing layer sees them: the OpenTelemetry
//! database conventions, pgrouter's own fields, the level, and the
//! statement's text only when the configuration opts in.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::support::*;
use pgrouter::tokio_postgres::error::SqlState;
use pgrouter::tokio_postgres::types::ToSql;
use pgrouter::DatabaseManager;
use pgrouter::ReadStrategy;
use tracing::field::{Field, Visit};
use tracing::instrument::WithSubscriber;
use tracing::span::{Attributes, Id, Record};
use tracing::{Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// A closed span: its name, level and every field recorded on it.
#[derive(Debug, Clone)]
struct Captured {
    name: &'static str,
    level: Level,
    fields: BTreeMap<String, String>,
}

impl Captured {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

/// Collects every span's fields, as recorded at creation and later.
#[derive(Clone, Default)]
struct Capture {
    open: Arc<Mutex<BTreeMap<u64, Captured>>>,
    closed: Arc<Mutex<Vec<Captured>>>,
}

impl Capture {
    fn take(&self, name: &str) -> Vec<Captured> {
        let mut closed = self.closed.lock().unwrap();
        let (taken, kept) = closed.drain(..).partition(|span| span.name == name);
        *closed = kept;
        taken
    }
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _ctx: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let span = Captured {
            name: attrs.metadata().name(),
            level: *attrs.metadata().level(),
            fields,
        };
        self.open.lock().unwrap().insert(id.into_u64(), span);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
        if let Some(span) = self.open.lock().unwrap().get_mut(&id.into_u64()) {
            values.record(&mut Fields(&mut span.fields));
        }
    }

    fn on_close(&self, id: Id, _ctx: Context<'_, S>) {
        if let Some(span) = self.open.lock().unwrap().remove(&id.into_u64()) {
            self.closed.lock().unwrap().push(span);
        }
    }
}

/// Runs `call` with `capture` as its subscriber (on whichever worker
/// polls it) and returns the spans named `name` it closed.
async fn spans_of<F: std::future::Future>(
    capture: &Capture,
    name: &str,
    call: F,
) -> (F::Output, Vec<Captured>) {
    let subscriber = tracing_subscriber::registry().with(capture.clone());
    let output = call.with_subscriber(subscriber).await;
    (output, capture.take(name))
}

const SCHEMA: &str = "CREATE TABLE items (id int PRIMARY KEY, secret text)";
const READ: &str = "SELECT count(*) FROM items WHERE secret = 'hunter2'";
const INSERT: &str = "INSERT INTO items VALUES (1, 'hunter2')";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_spans_carry_the_database_conventions_and_no_text_by_default() {
    let cluster = start_cluster();
    let ports: Vec<u16> = cluster.nodes().iter().map(|n| n.port()).collect();
    let configs = node_configs(&cluster, &ports);
    let mut config = fast_config(configs.clone());
    config.read_strategy = ReadStrategy::RegionalPreferred;
    let db = DatabaseManager::new(config).await.expect("manager");
    let mut opted_in = fast_config(configs);
    opted_in.record_query_text = true;
    let verbose = DatabaseManager::new(opted_in).await.expect("manager");
    let capture = Capture::default();

    // A write: the primary, its address, the operation from the first word.
    let (done, spans) = spans_of(&capture, "pgrouter.write", db.execute(SCHEMA, &[])).await;
    done.expect("create table");
    let (done, spans_insert) = spans_of(&capture, "pgrouter.write", db.execute(INSERT, &[])).await;
    done.expect("insert");
    for (span, operation) in [(&spans[0], "CREATE"), (&spans_insert[0], "INSERT")] {
        assert_eq!(span.level, Level::INFO, "{span:?}");
        assert_eq!(span.field("db.system.name"), Some("postgresql"));
        assert_eq!(span.field("db.operation.name"), Some(operation));
        assert_eq!(span.field("otel.name"), Some(operation));
        assert_eq!(span.field("otel.kind"), Some("client"));
        assert_eq!(span.field("db.namespace"), Some(cluster.node(0).dbname()));
        assert_eq!(span.field("server.address"), Some("127.0.0.1"));
        assert_eq!(span.field("server.port"), Some(&*ports[0].to_string()));
        assert_eq!(span.field("pgrouter.node"), Some(cluster.node(0).name()));
        assert_eq!(span.field("pgrouter.role"), Some("primary"));
        assert_eq!(span.field("pgrouter.attempt"), Some("1"));
        assert_eq!(span.field("pgrouter.reason"), Some("write target"));
        assert_eq!(span.field("otel.status_code"), None, "{span:?}");
        assert_eq!(span.field("db.query.text"), None, "{span:?}");
    }

    // A read: the local replica, chosen by the strategy.
    blocking(|| cluster.wait_for_replicas(std::time::Duration::from_secs(30))).expect("replay");
    let (row, spans) = spans_of(&capture, "pgrouter.read", db.query_one(READ, &[])).await;
    row.expect("read");
    let [span] = &spans[..] else {
        panic!("one read span: {spans:?}")
    };
    assert_eq!(span.level, Level::INFO);
    assert_eq!(span.field("db.operation.name"), Some("SELECT"));
    assert_eq!(span.field("pgrouter.strategy"), Some("regional-preferred"));
    assert_eq!(span.field("pgrouter.node"), Some(cluster.node(1).name()));
    assert_eq!(span.field("pgrouter.region"), Some(LOCAL_REGION));
    assert_eq!(span.field("pgrouter.role"), Some("replica"));
    assert_eq!(span.field("pgrouter.reason"), Some("strategy"));
    assert_eq!(span.field("server.port"), Some(&*ports[1].to_string()));
    assert_eq!(span.field("db.query.text"), None, "{span:?}");
    assert!(
        !format!("{span:?}").contains("hunter2"),
        "statement text leaked: {span:?}"
    );

    // A failed write: marked as an error, with its class.
    let (failed, spans) = spans_of(&capture, "pgrouter.write", db.execute(INSERT, &[])).await;
    let error = failed.expect_err("duplicate key");
    assert_eq!(error.code(), Some(&SqlState::UNIQUE_VIOLATION));
    assert_eq!(spans[0].field("otel.status_code"), Some("ERROR"));
    assert_eq!(spans[0].field("error.type"), Some("integrity"));

    // A transaction: no single operation; the attempt on the primary.
    let transaction = db.transaction(|tx| {
        Box::pin(async move {
            tx.execute("UPDATE items SET secret = 'x' WHERE id = 1", &[])
                .await?;
            Ok(())
        })
    });
    let (done, spans) = spans_of(&capture, "pgrouter.transaction", transaction).await;
    done.expect("transaction");
    let [span] = &spans[..] else {
        panic!("one transaction span: {spans:?}")
    };
    assert_eq!(span.level, Level::INFO);
    assert_eq!(span.field("db.system.name"), Some("postgresql"));
    assert_eq!(span.field("db.operation.name"), None);
    assert_eq!(span.field("otel.name"), Some("pgrouter.transaction"));
    assert_eq!(span.field("pgrouter.role"), Some("primary"));
    assert_eq!(span.field("server.port"), Some(&*ports[0].to_string()));

    // Opted in: the text is recorded (never the parameters).
    let read = verbose
        .read()
        .strategy(ReadStrategy::PrimaryOnly)
        .query_one(READ, &[]);
    let (row, spans) = spans_of(&capture, "pgrouter.read", read).await;
    row.expect("read");
    assert_eq!(spans[0].field("db.query.text"), Some(READ));
    assert_eq!(spans[0].field("pgrouter.strategy"), Some("primary-only"));
    let param = "s3cret-param";
    let params: [&(dyn ToSql + Sync); 1] = [&param];
    let write = verbose.execute("UPDATE items SET secret = $1 WHERE id = 1", &params);
    let (done, spans) = spans_of(&capture, "pgrouter.write", write).await;
    done.expect("update");
    assert_eq!(
        spans[0].field("db.query.text"),
        Some("UPDATE items SET secret = $1 WHERE id = 1")
    );
    assert!(!format!("{:?}", spans[0]).contains(param));
    db.close().await;
    verbose.close().await;
}
