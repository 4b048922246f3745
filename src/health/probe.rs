//! How the monitor asks a node how it is: the [`Probe`] seam, and the real
//! probe, the monitor's own connection to one node.
//!
//! Probes do not borrow from the node's pool: a pool busy with callers must
//! not look like a dead node, and a dead node must not cost callers a probe.
//!
//! A probe is the role check and the node's optional checks (see
//! `checks.rs`), each its own simple-query statement, all sent at once on
//! the probe's connection: one round trip. The checks sent are those of the
//! role the node had at its last probe (its configured role at first); if
//! the role check says otherwise, the right ones follow in a second round
//! trip and the first answers are ignored.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::future::{join, join_all};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_postgres::{Client, SimpleQueryMessage};

use super::aurora;
use super::checks::{Capabilities, Check, Facts, ROLE_SQL};
use crate::causal::lsn::Lsn;
use crate::config::Role;
use crate::connect::tls::Connector;
use crate::failure::error::NodeContext;
use crate::health::capability::{Capability, MissingCapability};

/// What one probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProbeReport {
    /// `pg_is_in_recovery()`.
    pub(crate) in_recovery: bool,
    /// The node's timeline, when it can be read: a primary's from its WAL
    /// file name; a replica's from its WAL receiver, else its last
    /// restartpoint.
    pub(crate) timeline: Option<u32>,
    /// Primary: WAL insert position; replica: replayed position.
    pub(crate) position: Option<Lsn>,
    /// A replica's WAL receiver runs (always true for a primary); `None`
    /// when the node cannot say.
    pub(crate) receiving: Option<bool>,
    /// The cluster's system identifier, when it can be read.
    pub(crate) system: Option<u64>,
    /// A replica's last replayed commit time (the server's clock).
    pub(crate) replayed_at: Option<SystemTime>,
    /// Capabilities this node turned out not to have.
    pub(crate) missing: Arc<[MissingCapability]>,
    /// The probe's round trip (not the connect).
    pub(crate) rtt: Duration,
    /// A replica whose platform reports its lag in time (Aurora): the
    /// probe's send instant less that lag, on pgrouter's clock.
    pub(crate) platform_fresh_as_of: Option<Instant>,
    /// On Aurora: who the node is and which instances its cluster lists.
    pub(crate) aurora: Option<AuroraView>,
}

/// What an Aurora node said about its cluster, for topology discovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AuroraView {
    /// `aurora_db_instance_identifier()`.
    pub(crate) instance: Arc<str>,
    /// The instances `aurora_replica_status()` lists with a fresh row.
    pub(crate) listed: Arc<[String]>,
}

impl ProbeReport {
    /// A report of this role and these facts, nothing missing.
    pub(crate) fn new(in_recovery: bool, facts: Facts, rtt: Duration) -> Self {
        let timeline = match in_recovery {
            true => facts.received_timeline.or(facts.timeline),
            false => facts.timeline,
        };
        Self {
            in_recovery,
            timeline,
            position: facts.position,
            receiving: if in_recovery {
                facts.receiving
            } else {
                Some(true)
            },
            system: facts.system,
            replayed_at: facts.replayed_at,
            missing: Arc::from([]),
            rtt,
            platform_fresh_as_of: None,
            aurora: None,
        }
    }

    /// Whether the node cannot report `capability` in its present role.
    pub(crate) fn lacks(&self, capability: Capability) -> bool {
        let role = if self.in_recovery {
            Role::Replica
        } else {
            Role::Primary
        };
        self.missing
            .iter()
            .any(|missing| missing.capability == capability && missing.role == role)
    }
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

/// A probe connection, reopened after any failure, and what the node has
/// shown it can report.
#[derive(Debug)]
pub(crate) struct ProbeConnection {
    connector: Connector,
    config: tokio_postgres::Config,
    open: Option<Open>,
    /// The node, for the one warning per missing capability.
    node: NodeContext,
    /// The state at the last probe (the configured role before).
    in_recovery: bool,
    capabilities: Capabilities,
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

/// Why a probe failed.
enum Failure {
    Postgres(tokio_postgres::Error),
    Answer(&'static str),
    /// The platform's view contradicts the node's (see `aurora.rs`).
    Judged(String),
}

impl From<tokio_postgres::Error> for Failure {
    fn from(error: tokio_postgres::Error) -> Self {
        Self::Postgres(error)
    }
}

/// The answers to some checks, in order.
type Answers = Vec<Result<Vec<SimpleQueryMessage>, tokio_postgres::Error>>;

impl ProbeConnection {
    /// A probe of the node these settings reach, expected in `role`;
    /// connects on first use.
    pub(crate) fn new(
        connector: Connector,
        config: tokio_postgres::Config,
        node: NodeContext,
        role: Role,
    ) -> Self {
        Self {
            connector,
            config,
            open: None,
            node,
            in_recovery: role == Role::Replica,
            capabilities: Capabilities::default(),
        }
    }
}

impl Probe for ProbeConnection {
    /// Connects if needed and runs the probe. On any failure, or when the
    /// future is dropped half-way, the connection is gone, so the next
    /// probe reconnects.
    async fn probe(&mut self) -> Result<ProbeReport, String> {
        match self.round_trip().await {
            Ok(report) => Ok(report),
            Err(Failure::Postgres(error)) => Err(describe(&error)),
            Err(Failure::Answer(reason)) => Err(reason.to_owned()),
            Err(Failure::Judged(reason)) => Err(reason),
        }
    }

    fn reconnect(&mut self) {
        self.open = None;
    }
}

impl ProbeConnection {
    async fn round_trip(&mut self) -> Result<ProbeReport, Failure> {
        // Taken out: a failure or a dropped future leaves `open` empty.
        let open = match self.open.take() {
            Some(open) if !open.client.is_closed() => open,
            _ => {
                let (client, driver) = self.connector.connect(&self.config).await?;
                Open { client, driver }
            }
        };
        let sent = Instant::now();
        let expected = self.in_recovery;
        let mut checks = self.capabilities.to_ask(expected);
        let (role, mut answers) = join(
            open.client.simple_query(ROLE_SQL),
            ask(&open.client, &checks),
        )
        .await;
        let in_recovery = parse_role(&role?)?;
        let rtt = sent.elapsed();
        if in_recovery != expected {
            // Another role than last time: its own checks.
            checks = self.capabilities.to_ask(in_recovery);
            answers = ask(&open.client, &checks).await;
        }
        self.in_recovery = in_recovery;
        let mut facts = Facts::default();
        self.take_in(&checks, answers, in_recovery, &mut facts)?;
        if facts.aurora_marked && !checks.contains(&Check::AuroraReplicas) {
            // Just found out: Aurora's own view, at once.
            self.capabilities.marked_aurora();
            let more = [Check::AuroraReplicas, Check::AuroraGlobal];
            let answers = ask(&open.client, &more).await;
            self.take_in(&more, answers, in_recovery, &mut facts)?;
        }
        let (platform_fresh_as_of, aurora) = self.judge_platform(&mut facts, in_recovery, sent)?;
        self.open = Some(open);
        Ok(ProbeReport {
            missing: self.capabilities.missing(),
            platform_fresh_as_of,
            aurora,
            ..ProbeReport::new(in_recovery, facts, rtt)
        })
    }

    /// On Aurora: positions are off, a claimed writer must be Aurora's
    /// writer, and a reader's lag is Aurora's figure. Also what the node
    /// says of its cluster's instances.
    fn judge_platform(
        &mut self,
        facts: &mut Facts,
        in_recovery: bool,
        sent: Instant,
    ) -> Result<(Option<Instant>, Option<AuroraView>), Failure> {
        let Some(instance) = facts.aurora_instance.as_deref() else {
            return Ok((None, None));
        };
        self.capabilities.confirmed_aurora();
        facts.position = None;
        let rows = aurora::parse_replica_rows(facts.aurora_rows.as_deref());
        let global = aurora::parse_global_rows(facts.aurora_global.as_deref());
        let judged =
            aurora::judge(in_recovery, instance, &rows, &global).map_err(Failure::Judged)?;
        let view = AuroraView {
            instance: Arc::from(instance),
            listed: Arc::from(aurora::listed_instances(&rows)),
        };
        Ok((judged.lag.and_then(|lag| sent.checked_sub(lag)), Some(view)))
    }

    /// The facts in the checks' answers. A check refused for want of a
    /// capability turns it off (and is logged, once); any other error fails
    /// the probe.
    fn take_in(
        &mut self,
        checks: &[Check],
        answers: Answers,
        in_recovery: bool,
        facts: &mut Facts,
    ) -> Result<(), Failure> {
        for (check, answer) in checks.iter().zip(answers) {
            match answer {
                Ok(messages) => {
                    self.capabilities.answered(*check);
                    facts.absorb(*check, &first_row(&messages));
                }
                Err(error) => self.refused(*check, in_recovery, error)?,
            }
        }
        Ok(())
    }

    fn refused(
        &mut self,
        check: Check,
        in_recovery: bool,
        error: tokio_postgres::Error,
    ) -> Result<(), Failure> {
        let Some(db) = error.as_db_error() else {
            return Err(error.into());
        };
        let refused = self
            .capabilities
            .refused(check, in_recovery, db.code(), db.message());
        let Some(missing) = refused else {
            return Err(error.into());
        };
        tracing::warn!(
            node = %self.node.node, region = %self.node.region,
            capability = %missing.capability, role = ?missing.role,
            sqlstate = %missing.code, reason = %missing.message,
            disables = missing.disables(),
            "node cannot report a capability; it stays healthy without it"
        );
        Ok(())
    }
}

/// Sends every check at once (pipelined on the connection).
async fn ask(client: &Client, checks: &[Check]) -> Answers {
    join_all(checks.iter().map(|check| client.simple_query(check.sql()))).await
}

fn parse_role(messages: &[SimpleQueryMessage]) -> Result<bool, Failure> {
    match first_row(messages).first().copied().flatten() {
        Some("t") => Ok(true),
        Some("f") => Ok(false),
        _ => Err(Failure::Answer("pg_is_in_recovery() gave no answer")),
    }
}

/// The first row's columns as text (empty when there is no row).
fn first_row(messages: &[SimpleQueryMessage]) -> Vec<Option<&str>> {
    messages
        .iter()
        .find_map(|message| match message {
            SimpleQueryMessage::Row(row) => Some((0..row.len()).map(|i| row.get(i)).collect()),
            _ => None,
        })
        .unwrap_or_default()
}

/// A one-line description: tokio-postgres's `Display` plus its cause.
pub(crate) fn describe(error: &tokio_postgres::Error) -> String {
    match std::error::Error::source(error) {
        Some(source) => format!("{error}: {source}"),
        None => error.to_string(),
    }
}
