//! How the monitor asks a node how it is: the [`Probe`] seam, and the real
//! probe, the monitor's own connection to one node.
//!
//! Probes do not borrow from the node's pool: a pool busy with callers must
//! not look like a dead node, and a dead node must not cost callers a probe.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_postgres::{Client, SimpleQueryMessage, SimpleQueryRow};

use crate::lsn::{timeline_of_walfile, Lsn};
use crate::tls::Connector;

/// A primary's position is its WAL *insert* position: with
/// `synchronous_commit = off` a commit is acknowledged before it is flushed,
/// so only the insert position is sure to cover every acknowledged write.
/// One round trip tells role, timeline, WAL positions and whether a replica
/// is receiving WAL. `CASE` keeps the primary-only functions from running on
/// a replica (where they raise). The timeline of a primary is the first 8
/// hex digits of its current WAL file name; a replica's is the one its WAL
/// receiver streams, or, when the role may not see that (or no receiver
/// runs), the one of its last restartpoint, which any role may read. A
/// running receiver shows its `pid` to any role.
const PROBE_SQL: &str = "SELECT pg_is_in_recovery(), \
    CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_insert_lsn() END, \
    CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_walfile_name(pg_current_wal_lsn()) END, \
    pg_last_wal_replay_lsn(), \
    (SELECT received_tli FROM pg_stat_wal_receiver), \
    EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE pid IS NOT NULL), \
    (SELECT timeline_id FROM pg_control_checkpoint()), \
    (SELECT system_identifier FROM pg_control_system())";

/// What one probe saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProbeReport {
    /// `pg_is_in_recovery()`.
    pub(crate) in_recovery: bool,
    /// The node's timeline, when it can be read.
    pub(crate) timeline: Option<u32>,
    /// Primary: WAL insert position; replica: replayed position.
    pub(crate) position: Option<Lsn>,
    /// A replica's WAL receiver runs (always true for a primary).
    pub(crate) receiving: bool,
    /// The cluster's system identifier, when it can be read.
    pub(crate) system: Option<u64>,
    /// The probe query's round trip (not the connect).
    pub(crate) rtt: Duration,
}

/// Asks one node for its [`ProbeReport`]: the real probe connection, or a
/// scripted stand-in in tests. The monitor bounds each call by the probe
/// timeout (dropping the future when it passes).
pub(crate) trait Probe: Send + 'static {
    /// The node's report, or a one-line description of why there is none.
    fn probe(&mut self) -> impl Future<Output = Result<ProbeReport, String>> + Send;

    /// Makes the next probe open a new connection: a node must accept new
    /// connections, not only keep an old one alive, to be healthy.
    fn reconnect(&mut self);
}

/// A probe connection, reopened after any failure.
#[derive(Debug)]
pub(crate) struct ProbeConnection {
    connector: Connector,
    config: tokio_postgres::Config,
    open: Option<Open>,
}

#[derive(Debug)]
struct Open {
    client: Client,
    driver: JoinHandle<()>,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl ProbeConnection {
    /// A probe of the node these settings reach; connects on first use.
    pub(crate) fn new(connector: Connector, config: tokio_postgres::Config) -> Self {
        Self {
            connector,
            config,
            open: None,
        }
    }
}

impl Probe for ProbeConnection {
    /// Connects if needed and runs the probe query. On any failure, or when
    /// the future is dropped half-way, the connection is gone, so the next
    /// probe reconnects.
    async fn probe(&mut self) -> Result<ProbeReport, String> {
        match self.round_trip().await {
            Ok(Some(report)) => Ok(report),
            Ok(None) => {
                self.open = None;
                Err("the probe query returned no row".to_owned())
            }
            Err(error) => Err(describe(&error)),
        }
    }

    fn reconnect(&mut self) {
        self.open = None;
    }
}

impl ProbeConnection {
    async fn round_trip(&mut self) -> Result<Option<ProbeReport>, tokio_postgres::Error> {
        // Taken out: a failure or a dropped future leaves `open` empty.
        let open = match self.open.take() {
            Some(open) if !open.client.is_closed() => open,
            _ => {
                let (client, driver) = self.connector.connect(&self.config).await?;
                Open { client, driver }
            }
        };
        let sent = Instant::now();
        let messages = open.client.simple_query(PROBE_SQL).await?;
        let rtt = sent.elapsed();
        self.open = Some(open);
        Ok(messages.iter().find_map(|message| match message {
            SimpleQueryMessage::Row(row) => Some(parse_report(row, rtt)),
            _ => None,
        }))
    }
}

fn parse_report(row: &SimpleQueryRow, rtt: Duration) -> ProbeReport {
    let text = |index: usize| row.get(index);
    let in_recovery = text(0) == Some("t");
    let lsn = |index: usize| text(index).and_then(|value| value.parse::<Lsn>().ok());
    let number = |index: usize| text(index).and_then(|value| value.parse().ok());
    let (position, timeline) = if in_recovery {
        (lsn(3), number(4).or_else(|| number(6)))
    } else {
        (lsn(1), text(2).and_then(timeline_of_walfile))
    };
    ProbeReport {
        in_recovery,
        timeline,
        position,
        receiving: !in_recovery || text(5) == Some("t"),
        system: text(7).and_then(|value| value.parse().ok()),
        rtt,
    }
}

/// A one-line description: tokio-postgres's `Display` plus its cause.
pub(crate) fn describe(error: &tokio_postgres::Error) -> String {
    match std::error::Error::source(error) {
        Some(source) => format!("{error}: {source}"),
        None => error.to_string(),
    }
}
