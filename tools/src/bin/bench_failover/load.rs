//! Open-loop load: reads and writes issued at a fixed rate, each call in its
//! own task, so a stalled call never slows the arrival of the next one (no
//! coordinated omission). Every call's start, latency and outcome is kept.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use pgrouter::deadpool_postgres::PoolError;
use pgrouter::error::ErrorKind;
use pgrouter::DatabaseManager;
use pgrouter::Error;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// Rows in the `kv` table the load reads and updates.
pub(crate) const KEYS: i32 = 1_000;

/// A read or a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `SELECT v, current_setting('cluster_name') FROM kv WHERE id = $1`,
    /// default strategy (the second column names the node that served it).
    Read,
    /// `UPDATE kv SET v = v + 1 WHERE id = $1`, on the primary.
    Write,
}

/// One finished call.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    /// Read or write.
    pub kind: Kind,
    /// When it was issued.
    pub start: Instant,
    /// How long it took, failed or not.
    pub latency: Duration,
    /// `None` on success, else the error's kind (see [`error_kind`]).
    pub failure: Option<String>,
    /// The error's message, and for "no node" errors every node's state
    /// in `db.status()` right after.
    pub detail: Option<String>,
    /// The node that served a successful read.
    pub served_by: Option<String>,
}

impl Record {
    /// When it finished.
    pub(crate) fn end(&self) -> Instant {
        self.start + self.latency
    }
}

/// Every call's record, shared with the tasks that make them.
pub(crate) type Log = Arc<Mutex<Vec<Record>>>;

/// Copies the records out.
pub(crate) fn snapshot(log: &Log) -> Vec<Record> {
    log.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

/// Issues `per_second` calls of `kind` until `stop` is cancelled.
pub(crate) fn generate(
    db: DatabaseManager,
    kind: Kind,
    per_second: u32,
    log: Log,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(1) / per_second);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
        let mut rng = fastrand::Rng::with_seed(u64::from(per_second));
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = ticker.tick() => {}
            }
            let key = rng.i32(1..=KEYS);
            tokio::spawn(one_call(db.clone(), kind, key, Arc::clone(&log)));
        }
    })
}

async fn one_call(db: DatabaseManager, kind: Kind, key: i32, log: Log) {
    let start = Instant::now();
    let result = match kind {
        Kind::Read => db
            .query_one(
                "SELECT v, current_setting('cluster_name') FROM kv WHERE id = $1",
                &[&key],
            )
            .await
            .map(|row| Some(row.get::<_, String>(1))),
        Kind::Write => db
            .execute("UPDATE kv SET v = v + 1 WHERE id = $1", &[&key])
            .await
            .map(|_| None),
    };
    let latency = start.elapsed();
    let (failure, detail, served_by) = match result {
        Ok(served_by) => (None, None, served_by),
        Err(error) => (Some(error_kind(&error)), Some(detail(&db, &error)), None),
    };
    let record = Record {
        kind,
        start,
        latency,
        failure,
        detail,
        served_by,
    };
    log.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(record);
}

/// The error's message; after "no node" errors, what `db.status()` says.
fn detail(db: &DatabaseManager, error: &Error) -> String {
    if !matches!(
        error.kind(),
        ErrorKind::NoHealthyNode { .. } | ErrorKind::NoPrimary { .. }
    ) {
        return error.to_string();
    }
    let status = db.status();
    let nodes: Vec<String> = status
        .nodes
        .iter()
        .map(|node| {
            format!(
                "{} {} healthy={} suspect={} fenced={}",
                node.name, node.role, node.healthy, node.suspect, node.fenced
            )
        })
        .collect();
    format!("{error}; status after: {}", nodes.join(", "))
}

/// The error's variant, with the pool error or SQLSTATE where it tells
/// more, and the node it names (`Timeout @node1`).
pub(crate) fn error_kind(error: &Error) -> String {
    let kind = variant(error);
    match error.node() {
        Some(node) => format!("{kind} @{node}"),
        None => kind,
    }
}

fn variant(error: &Error) -> String {
    match error.kind() {
        ErrorKind::Timeout { .. } => "Timeout".to_owned(),
        ErrorKind::NoPrimary { .. } => "NoPrimary".to_owned(),
        ErrorKind::NoHealthyNode { .. } => "NoHealthyNode".to_owned(),
        ErrorKind::SplitBrain { .. } => "SplitBrain".to_owned(),
        ErrorKind::Connect => {
            let pool = std::error::Error::source(error)
                .and_then(|source| source.downcast_ref::<PoolError>());
            format!("Connect({})", pool.map_or("?".to_owned(), pool_error_kind))
        }
        ErrorKind::ConnectionLost => "ConnectionLost".to_owned(),
        ErrorKind::OutcomeUnknown => "OutcomeUnknown".to_owned(),
        ErrorKind::Database => {
            let code = error.code().map_or("?", |code| code.code());
            format!("Database({code})")
        }
        ErrorKind::Statement => "Statement".to_owned(),
        ErrorKind::Closed => "Closed".to_owned(),
        _ => format!("other: {error}"),
    }
}

fn pool_error_kind(error: &PoolError) -> String {
    match error {
        PoolError::Timeout(kind) => format!("{kind:?} timeout"),
        PoolError::Backend(source) => match source.code() {
            Some(code) => format!("backend {}", code.code()),
            None => "backend".to_owned(),
        },
        PoolError::Closed => "closed".to_owned(),
        other => format!("{other}"),
    }
}
