//! The monitor's own connection to one node, and one bounded probe over it.
//!
//! Probes do not borrow from the node's pool: a pool busy with callers must
//! not look like a dead node, and a dead node must not cost callers a probe.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_postgres::{Client, SimpleQueryMessage, SimpleQueryRow};

use crate::lsn::Lsn;
use crate::tls::Connector;

/// One round trip tells role, timeline and WAL positions. `CASE` keeps the
/// primary-only functions from running on a replica (where they raise).
/// The timeline of a primary is the first 8 hex digits of its current WAL
/// file name; a replica's is the one its WAL receiver streams (NULL when the
/// receiver is down or the role may not see it).
const PROBE_SQL: &str = "SELECT pg_is_in_recovery(), \
    CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_flush_lsn() END, \
    CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_walfile_name(pg_current_wal_lsn()) END, \
    pg_last_wal_replay_lsn(), \
    (SELECT received_tli FROM pg_stat_wal_receiver)";

/// What one probe saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProbeReport {
    /// `pg_is_in_recovery()`.
    pub(crate) in_recovery: bool,
    /// The node's timeline, when it can be read.
    pub(crate) timeline: Option<u32>,
    /// Primary: flushed WAL position; replica: replayed position.
    pub(crate) position: Option<Lsn>,
    /// The probe query's round trip (not the connect).
    pub(crate) rtt: Duration,
}

/// A probe connection, reopened after any failure.
#[derive(Debug, Default)]
pub(crate) struct ProbeConnection {
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
    /// Connects if needed and runs the probe query, all within `timeout`.
    /// On any failure the connection is dropped, so the next probe reconnects.
    pub(crate) async fn probe(
        &mut self,
        connector: &Connector,
        config: &tokio_postgres::Config,
        timeout: Duration,
    ) -> Result<ProbeReport, String> {
        let result = tokio::time::timeout(timeout, self.round_trip(connector, config)).await;
        let outcome = match result {
            Ok(Ok(Some(report))) => Ok(report),
            Ok(Ok(None)) => Err("the probe query returned no row".to_owned()),
            Ok(Err(error)) => Err(describe(&error)),
            Err(_) => Err(format!("probe timed out after {timeout:?}")),
        };
        if outcome.is_err() {
            self.open = None;
        }
        outcome
    }

    async fn round_trip(
        &mut self,
        connector: &Connector,
        config: &tokio_postgres::Config,
    ) -> Result<Option<ProbeReport>, tokio_postgres::Error> {
        let open = match self.open.take() {
            Some(open) if !open.client.is_closed() => open,
            _ => {
                let (client, driver) = connector.connect(config).await?;
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
    let (position, timeline) = if in_recovery {
        let timeline = text(4).and_then(|value| value.parse().ok());
        (lsn(3), timeline)
    } else {
        (lsn(1), text(2).and_then(timeline_of_walfile))
    };
    ProbeReport {
        in_recovery,
        timeline,
        position,
        rtt,
    }
}

/// `000000020000000000000003` is on timeline 2.
pub(crate) fn timeline_of_walfile(name: &str) -> Option<u32> {
    name.get(..8)
        .and_then(|hex| u32::from_str_radix(hex, 16).ok())
}

/// A one-line description: tokio-postgres's `Display` plus its cause.
pub(crate) fn describe(error: &tokio_postgres::Error) -> String {
    match std::error::Error::source(error) {
        Some(source) => format!("{error}: {source}"),
        None => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timelines_from_wal_file_names() {
        assert_eq!(timeline_of_walfile("000000020000000000000003"), Some(2));
        assert_eq!(timeline_of_walfile("0000001A0000000000000003"), Some(26));
        assert_eq!(timeline_of_walfile("xyz"), None);
        assert_eq!(timeline_of_walfile(""), None);
    }
}
