//! Resolving a lost `COMMIT`: the transaction's identity fetched in the
//! round trip of `BEGIN`, the questions asked when `COMMIT`'s answer is
//! lost, and the pruning of marker rows. The rule for what an answer
//! proves is [`crate::commit::judge::judge`]; this module only asks and applies.

use std::time::Duration;

use tokio::time::{sleep_until, timeout_at, Instant};
use tokio_postgres::types::Type;
use tokio_util::sync::CancellationToken;

use crate::causal::lsn::CausalToken;
use crate::commit::judge::{judge, Answer, Identity, Life, Outcome, XactStatus};
use crate::config::clock;
use crate::connect::statements::Params;
use crate::failure::safety::{code_kind, CodeKind, Fate};
use crate::hub::Hub;
use crate::manager::session::{Columns, Connect, Count, One, PgError, Returns, Rows, Session};
use crate::manager::token::{token_of, TOKEN_SQL};
use crate::observe::events::{CommitOutcome, Event};

/// Ends the session still running transaction `$2` (backend `$1`), so that
/// its fate is decided; matching the transaction id makes sure the backend
/// is still ours.
pub(crate) const TERMINATE_SQL: &str = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
    WHERE pid = $1 AND backend_xid::text::bigint = $2::bigint % 4294967296";

/// The first and the largest pause between rounds of questions.
const FIRST_PAUSE: Duration = Duration::from_millis(10);
const MAX_PAUSE: Duration = Duration::from_millis(200);

/// A marker id as written in the table.
fn marker_text(marker: u128) -> String {
    format!("{marker:032x}")
}

/// Why `BEGIN` failed.
pub(crate) enum BeginError {
    /// `BEGIN` or the identity query.
    Postgres(tokio_postgres::Error),
    /// The server refused the marker insert (the table is missing, or the
    /// role may not write it).
    Marker(tokio_postgres::Error),
}

impl From<tokio_postgres::Error> for BeginError {
    fn from(error: tokio_postgres::Error) -> Self {
        BeginError::Postgres(error)
    }
}

/// `BEGIN` as `begin_sql` words it (the transaction's options, and any
/// `SET TRANSACTION` statements held back to run before its first query),
/// with the identity query (and the marker insert) pipelined behind it:
/// one round trip. `Ok(None)` when resolution is off, in the
/// configuration or on this node (see `commit/dialect.rs`): a node that
/// refuses the identity query's functions steps down to older ones, or to
/// none, and the transaction begins again.
pub(crate) async fn begin<S: Session>(
    hub: &Hub,
    client: &S,
    node: usize,
    resolve: bool,
    begin_sql: &str,
) -> Result<Option<Identity>, BeginError> {
    let sql = &hub.outcome_sql;
    loop {
        let dialect = sql.dialect(node);
        let identity_sql = match sql.identity(dialect) {
            Some(text) if resolve => text,
            _ => {
                client.batch_execute(begin_sql).await?;
                return Ok(None);
            }
        };
        match begin_with(hub, client, node, begin_sql, identity_sql).await {
            Err(BeginError::Postgres(error)) if sql.refused(node, dialect, &error) => {
                // Refused when prepared (nothing began) or run (the
                // transaction is aborted): end it, begin in the new dialect.
                client.batch_execute("ROLLBACK").await?;
            }
            result => return result,
        }
    }
}

/// [`begin`] with `identity_sql`.
async fn begin_with<S: Session>(
    hub: &Hub,
    client: &S,
    node: usize,
    begin_sql: &str,
    identity_sql: &str,
) -> Result<Option<Identity>, BeginError> {
    let sql = &hub.outcome_sql;
    // The table's own failures (missing, not permitted) are the setting's;
    // a shutdown or a lost connection is the node's, retried as usual.
    let marker_error = |error: tokio_postgres::Error| match error.code() {
        Some(code) if !error.is_closed() && code_kind(code) == CodeKind::Permanent => {
            BeginError::Marker(error)
        }
        _ => BeginError::Postgres(error),
    };
    let (identity, insert) =
        futures_util::future::try_join(async { Ok(client.own(identity_sql, &[]).await?) }, async {
            match &sql.insert_marker {
                Some(insert) => client
                    .own(insert, &[Type::TEXT])
                    .await
                    .map(Some)
                    .map_err(marker_error),
                None => Ok(None),
            }
        })
        .await?;
    let marker = insert.as_ref().map(|_| fastrand::u128(..));
    let marker_id = marker.map(marker_text);
    let insert_marker = async {
        match (&sql.insert_marker, &insert, &marker_id) {
            (Some(text), Some(statement), Some(id)) => {
                Count::run(client, text, statement, &[id]).await.map(Some)
            }
            _ => Ok(None),
        }
    };
    // Biased: BEGIN is sent first, the rest right behind it.
    let (begun, row, inserted) = tokio::join!(
        biased;
        client.batch_execute(begin_sql),
        One::run(client, identity_sql, &identity, &[]),
        insert_marker,
    );
    begun?;
    let row = row?;
    inserted.map_err(marker_error)?;
    Ok(Some(Identity {
        node,
        xid: row.int8(0)?,
        pid: row.int4(1)?,
        life: Life {
            postmaster: row.int8(2)?,
            stats_reset: row.int8(3)?,
        },
        marker,
    }))
}

/// What resolving a lost `COMMIT` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resolution {
    /// It committed; the token is the answering primary's position then.
    Committed(Option<CausalToken>),
    /// It did not, and never will.
    NotCommitted,
    /// The deadline came first.
    Unknown,
}

/// Asks, until one answer is conclusive or `deadline` passes, the node that
/// ran the transaction and the node that is primary now whether the
/// transaction `identity` committed.
pub(crate) async fn resolve<C: Connect>(
    hub: &Hub,
    connect: C,
    identity: &Identity,
    deadline: Instant,
    token: bool,
) -> Resolution {
    let mut pause = FIRST_PAUSE;
    let mut pending_rounds = 0u32;
    let started = Instant::now();
    loop {
        // The primary first when it is another node: the node that ran the
        // transaction is the one likely to be gone.
        let nodes = match hub.primary_index() {
            Some(primary) if primary != identity.node => [Some(primary), Some(identity.node)],
            _ => [Some(identity.node), None],
        };
        for node in nodes.into_iter().flatten() {
            let asked = ask(hub, connect, identity, node, deadline, token).await;
            let Some((answer, token)) = asked else {
                continue;
            };
            let outcome = judge(identity, &answer);
            tracing::debug!(node = %hub.context(node).node, ?answer, ?outcome,
                "asked whether a transaction whose COMMIT answer was lost committed");
            match outcome {
                Outcome::Committed => {
                    report(hub, identity, CommitOutcome::Committed, started);
                    return Resolution::Committed(token);
                }
                Outcome::NotCommitted => {
                    report(hub, identity, CommitOutcome::NotCommitted, started);
                    return Resolution::NotCommitted;
                }
                Outcome::Pending => {
                    // Give a COMMIT that arrived a moment to finish, then
                    // end the session that still holds the transaction:
                    // its fate is then decided one way or the other.
                    pending_rounds += 1;
                    if pending_rounds == 2 {
                        terminate(hub, connect, identity, deadline).await;
                    }
                }
                Outcome::Inconclusive => {}
            }
        }
        let next = clock::after(Instant::now(), pause);
        if next >= deadline {
            report(hub, identity, CommitOutcome::Unknown, started);
            return Resolution::Unknown;
        }
        sleep_until(next).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// Logs what resolving found and tells subscribers.
fn report(hub: &Hub, identity: &Identity, outcome: CommitOutcome, started: Instant) {
    let node = hub.context(identity.node).node;
    let took = started.elapsed();
    match outcome {
        CommitOutcome::Unknown => tracing::warn!(%node, ?took,
            "could not find out before the deadline whether a transaction committed"),
        _ => tracing::info!(%node, ?outcome, ?took,
            "resolved a transaction whose COMMIT answer was lost"),
    }
    hub.emit(Event::CommitResolved {
        node: node.to_string(),
        outcome,
        took,
    });
}

/// One node's answer, or `None` if it could not give one in time; with
/// `token`, also the node's causal token (`None` where the server refuses
/// the WAL functions, or is in recovery: reads then go to the primary).
async fn ask<C: Connect>(
    hub: &Hub,
    connect: C,
    identity: &Identity,
    node: usize,
    deadline: Instant,
    token: bool,
) -> Option<(Answer, Option<CausalToken>)> {
    let deadline = deadline.min(clock::after(
        Instant::now(),
        hub.config.health.probe_timeout,
    ));
    let marker = identity.marker.map(marker_text);
    let dialect = hub.outcome_sql.dialect(node);
    // A node without the status functions cannot be asked.
    let sql = hub.outcome_sql.status(dialect)?;
    let question = async {
        let client = connect.get(hub, node).await?;
        let status = async {
            match &marker {
                Some(marker) => {
                    let types = [Type::INT8, Type::TEXT];
                    let statement = client.own(sql, &types).await?;
                    One::run(&client, sql, &statement, &[&identity.xid, marker]).await
                }
                None => {
                    let statement = client.own(sql, &[Type::INT8]).await?;
                    One::run(&client, sql, &statement, &[&identity.xid]).await
                }
            }
        };
        let position = async {
            match token {
                true => match client.own(TOKEN_SQL, &[]).await {
                    Ok(statement) => One::run(&client, TOKEN_SQL, &statement, &[]).await.ok(),
                    Err(_) => None,
                },
                false => None,
            }
        };
        // Biased: the status question first, the token's right behind it.
        let (status, position) = tokio::join!(biased; status, position);
        match status {
            Ok(row) => Some((row, position)),
            Err(error) => {
                // Refused: the next round asks in the node's next dialect.
                let refused = hub.outcome_sql.refused(node, dialect, &error);
                tracing::debug!(%error, refused, "asking about a transaction's outcome failed");
                client.settle(hub, Fate::Discard);
                None
            }
        }
    };
    let (row, position) = timeout_at(deadline, question).await.ok()??;
    let elected = hub.primary_index() == Some(node);
    let token = position.and_then(|row| token_of(&row).ok());
    match answer_of(&row, node, elected, identity.marker.is_some()) {
        Ok(answer) => Some((answer, token.filter(|_| answer.writable))),
        Err(error) => {
            tracing::warn!(%error, "unexpected answer about a transaction's outcome");
            None
        }
    }
}

/// The answer in a status row.
fn answer_of(
    row: &impl Columns,
    node: usize,
    elected: bool,
    marker: bool,
) -> Result<Answer, PgError> {
    Ok(Answer {
        node,
        writable: row.boolean(0)?,
        life: Life {
            postmaster: row.int8(1)?,
            stats_reset: row.int8(2)?,
        },
        elected,
        status: XactStatus::parse(row.text_or_null(3)?),
        marker: match marker {
            true => Some(row.boolean(4)?),
            false => None,
        },
    })
}

/// Ends the session still holding the transaction, if it is still ours.
async fn terminate<C: Connect>(hub: &Hub, connect: C, identity: &Identity, deadline: Instant) {
    let deadline = deadline.min(clock::after(
        Instant::now(),
        hub.config.health.probe_timeout,
    ));
    let ended = timeout_at(deadline, async {
        let client = connect.get(hub, identity.node).await?;
        let params: Params<'_> = &[&identity.pid, &identity.xid];
        let types = [Type::INT4, Type::INT8];
        let result = match client.own(TERMINATE_SQL, &types).await {
            Ok(statement) => Rows::run(&client, TERMINATE_SQL, &statement, params).await,
            Err(error) => Err(error),
        };
        match result {
            Ok(rows) => Some(rows),
            Err(_) => {
                client.settle(hub, Fate::Discard);
                None
            }
        }
    })
    .await;
    if let Ok(Some(rows)) = ended {
        tracing::info!(node = %hub.context(identity.node).node, pid = identity.pid,
            ended = !rows.is_empty(),
            "ended the session still holding a transaction whose COMMIT answer was lost");
    }
}

/// Deletes old markers on the primary about every quarter of the
/// retention, until `shutdown`.
pub(crate) async fn prune_markers(hub: std::sync::Arc<Hub>, shutdown: CancellationToken) {
    let Some(prune) = hub.outcome_sql.prune.clone() else {
        return;
    };
    let retention = hub.config.outcomes.marker_retention;
    let every = retention / 4;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let Some(primary) = hub.primary_index() else {
            continue;
        };
        let deadline = clock::after(Instant::now(), hub.config.deadline);
        let seconds = retention.as_secs_f64();
        let pruned = timeout_at(deadline, async {
            let node = hub.node(primary)?;
            let client = node.pool.get().await.ok()?;
            let types = [Type::FLOAT8];
            let statement = node.statements.own(&client, &prune, &types).await.ok()?;
            statement.execute(&client, &[&seconds]).await.ok()
        })
        .await;
        match pruned {
            Ok(Some(rows)) => tracing::debug!(rows, "pruned old outcome markers"),
            _ => tracing::warn!(node = %hub.context(primary).node,
                "could not prune old outcome markers; trying again later"),
        }
    }
}
