//! The monitor's own connection to one node, and one bounded probe over it.
//!
//! Probes do not borrow from the node's pool: a pool busy with callers must
//! not look like a dead node, and a dead node must not cost callers a probe.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

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
    /// Connects if needed and runs `SELECT 1`, all within `timeout`.
    /// On any failure the connection is dropped, so the next probe reconnects.
    pub(crate) async fn probe(
        &mut self,
        config: &tokio_postgres::Config,
        timeout: Duration,
    ) -> Result<(), String> {
        let result = tokio::time::timeout(timeout, self.round_trip(config)).await;
        let outcome = match result {
            Ok(Ok(())) => Ok(()),
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
        config: &tokio_postgres::Config,
    ) -> Result<(), tokio_postgres::Error> {
        let open = match self.open.take() {
            Some(open) if !open.client.is_closed() => open,
            _ => connect(config).await?,
        };
        open.client.simple_query("SELECT 1").await?;
        self.open = Some(open);
        Ok(())
    }
}

async fn connect(config: &tokio_postgres::Config) -> Result<Open, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    let driver = tokio::spawn(async move {
        // The error, if any, reaches the client as a closed connection.
        let _ = connection.await;
    });
    Ok(Open { client, driver })
}

/// A one-line description: tokio-postgres's `Display` plus its cause.
pub(crate) fn describe(error: &tokio_postgres::Error) -> String {
    match std::error::Error::source(error) {
        Some(source) => format!("{error}: {source}"),
        None => error.to_string(),
    }
}
