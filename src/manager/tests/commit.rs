//! A transaction whose `COMMIT` answer is lost: resolved as committed (its
//! value returned), as not committed (run again), or not before the
//! deadline (an unknown outcome), on the resolution's schedule.

use std::time::Duration;

use super::{two_nodes, Harness};
use crate::failure::error::Error;
use crate::failure::error::ErrorKind;
use crate::manager::fake::{Ask, Fake, FakeRow, Fault, Reply, Step};
use crate::manager::opening::{run_watched, Opening};
use crate::manager::session::{Count, Session};
use crate::manager::transaction::Body;
use crate::manager::write::WriteBuilder;
use crate::observe::events::{CommitOutcome, Event};

const UPDATE: &str = "UPDATE accounts SET balance = balance - 10 WHERE id = 1";
const XID: i64 = 740;
const PID: i32 = 3162;
const POSTMASTER: i64 = 1_000;

/// The transaction's body: one update; gives the rows it affected.
struct Transfer;

impl<S: Session> Body<S> for Transfer {
    type Output = u64;

    async fn run<'t>(&'t mut self, session: &'t S, opening: &'t Opening<'t>) -> Result<u64, Error> {
        Ok(run_watched::<Count, S>(session, opening, UPDATE, &[]).await?)
    }
}

/// Node 0 runs the transaction as `XID`; the answer to its first `COMMIT`
/// is lost after 5 ms (the connection breaks); asked about `XID`, it says
/// `status`.
fn commit_lost(status: &'static str) -> Fake {
    Fake::new(move |step: &Step<'_>| match (step.ask, step.sql) {
        (Ask::QueryOne, sql) if is_identity(sql) => {
            Some(Reply::rows(vec![FakeRow::identity(XID, PID, POSTMASTER)]))
        }
        (Ask::Batch, "COMMIT") if step.nth == 0 => Some(Reply::fail(Fault::Lost).after_ms(5)),
        (Ask::QueryOne, sql) if is_status(sql) => {
            Some(Reply::rows(vec![FakeRow::status(true, POSTMASTER, status)]))
        }
        _ => None,
    })
}

fn is_identity(sql: &str) -> bool {
    sql.starts_with("SELECT pg_current_xact_id()")
}

fn is_status(sql: &str) -> bool {
    sql.starts_with("SELECT NOT pg_is_in_recovery()")
}

/// When node 0 was asked about the transaction, in ms.
fn asked_about(fake: &Fake) -> Vec<u64> {
    let log = fake.log();
    let status = log.iter().filter_map(|entry| match &entry.event {
        crate::manager::fake::Event::Asked(Ask::QueryOne, sql) if is_status(sql) => Some(entry.ms),
        _ => None,
    });
    status.collect()
}

async fn transfer(h: &Harness, fake: &Fake) -> Result<u64, Error> {
    let write = WriteBuilder::new(&h.hub).deadline(Duration::from_secs(1));
    let (value, _) = write.run_transaction(fake, Transfer).await?;
    Ok(value)
}

fn resolved(events: &mut tokio::sync::broadcast::Receiver<Event>) -> Vec<CommitOutcome> {
    std::iter::from_fn(|| events.try_recv().ok())
        .filter_map(|event| match event {
            Event::CommitResolved { outcome, .. } => Some(outcome),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_lost_commit_found_committed_returns_the_value() {
    let h = Harness::healthy(two_nodes()).await;
    let mut events = h.hub.subscribe();
    let fake = commit_lost("committed");
    assert_eq!(transfer(&h, &fake).await.unwrap(), 1);
    assert_eq!(fake.ms(), 5, "asked as soon as the answer was lost");
    assert_eq!(asked_about(&fake), [5]);
    assert_eq!(fake.sent(0, "COMMIT"), [0], "not run again");
    assert_eq!(fake.sent(0, UPDATE), [0]);
    assert_eq!(resolved(&mut events), [CommitOutcome::Committed]);
}

#[tokio::test(start_paused = true)]
async fn a_lost_commit_found_aborted_runs_the_transaction_again() {
    let h = Harness::healthy(two_nodes()).await;
    let mut events = h.hub.subscribe();
    let fake = commit_lost("aborted");
    assert_eq!(transfer(&h, &fake).await.unwrap(), 1);
    assert_eq!(asked_about(&fake), [5]);
    // Not committed, so safe to run again, after the first backoff delay.
    assert_eq!(fake.sent(0, "COMMIT"), [0, 305]);
    assert_eq!(fake.sent(0, UPDATE), [0, 305]);
    assert_eq!(fake.ms(), 305);
    assert_eq!(resolved(&mut events), [CommitOutcome::NotCommitted]);
}

#[tokio::test(start_paused = true)]
async fn a_lost_commit_still_unresolved_at_the_deadline_is_an_unknown_outcome() {
    let h = Harness::healthy(two_nodes()).await;
    let mut events = h.hub.subscribe();
    // The session that holds the transaction is still running it: asked
    // again and again (10 ms, doubling, at most 200 ms between rounds),
    // its session ended after the second answer, until the deadline.
    let fake = commit_lost("in progress");
    let error = transfer(&h, &fake).await.unwrap_err();
    assert!(
        matches!(error.kind(), ErrorKind::OutcomeUnknown),
        "{error:?}"
    );
    assert!(error.is_outcome_unknown());
    assert_eq!(asked_about(&fake), [5, 15, 35, 75, 155, 315, 515, 715, 915]);
    assert_eq!(
        fake.sent(0, crate::commit::resolve::TERMINATE_SQL),
        [15],
        "the session still holding it is ended once"
    );
    assert_eq!(fake.ms(), 915, "the next round would end past the deadline");
    assert_eq!(fake.sent(0, "COMMIT"), [0], "never run again");
    assert_eq!(resolved(&mut events), [CommitOutcome::Unknown]);
}

#[tokio::test(start_paused = true)]
async fn a_token_that_does_not_come_after_commit_is_unavailable_not_unknown() {
    use crate::manager::token::TOKEN_SQL;
    let h = Harness::healthy(two_nodes()).await;
    let mut events = h.hub.subscribe();
    // COMMIT is answered at once; the token query behind it never is.
    let fake = Fake::new(move |step: &Step<'_>| match (step.ask, step.sql) {
        (Ask::QueryOne, sql) if is_identity(sql) => {
            Some(Reply::rows(vec![FakeRow::identity(XID, PID, POSTMASTER)]))
        }
        (Ask::QueryOne, TOKEN_SQL) => Some(Reply::never()),
        _ => None,
    });
    let info = crate::CallInfo::with_token();
    let write = WriteBuilder::new(&h.hub)
        .deadline(Duration::from_secs(1))
        .info(&info);
    let error = write.run_transaction(&fake, Transfer).await.unwrap_err();
    assert!(
        matches!(error.kind(), ErrorKind::TokenUnavailable),
        "{error:?}"
    );
    assert!(!error.is_outcome_unknown(), "COMMIT was answered");
    assert_eq!(fake.ms(), 1000, "the token waited for until the deadline");
    assert_eq!(fake.sent(0, "COMMIT"), [0], "never run again");
    assert!(asked_about(&fake).is_empty(), "nothing to resolve");
    assert!(resolved(&mut events).is_empty());
}

/// How a node that refuses the transaction id functions steps down.
#[tokio::test]
async fn a_node_steps_down_once_per_refusal_and_says_why_when_off() {
    use crate::commit::dialect::{Dialect, OutcomeSql};
    use crate::health::capability::Capability;
    use crate::manager::fake::pg_error;
    let sql = OutcomeSql::new(None, 2);
    assert_eq!(sql.dialect(1), Dialect::Xact);
    // Not a refusal: the node is unwell, nothing learnt.
    assert!(!sql.refused(1, Dialect::Xact, &pg_error(Fault::Sqlstate("57P01")).await));
    assert!(!sql.refused(1, Dialect::Xact, &pg_error(Fault::Lost).await));
    assert_eq!(sql.dialect(1), Dialect::Xact);

    let undefined = pg_error(Fault::Sqlstate("42883")).await;
    assert!(sql.refused(1, Dialect::Xact, &undefined));
    assert_eq!(sql.dialect(1), Dialect::Txid);
    assert_eq!(sql.missing(1), None, "resolution still runs");
    // Another call that saw the same refusal steps down no further.
    assert!(sql.refused(1, Dialect::Xact, &undefined));
    assert_eq!(sql.dialect(1), Dialect::Txid);

    let denied = pg_error(Fault::Sqlstate("42501")).await;
    assert!(sql.refused(1, Dialect::Txid, &denied));
    assert_eq!(sql.dialect(1), Dialect::Off);
    let missing = sql.missing(1).expect("said in status");
    assert_eq!(missing.capability, Capability::CommitStatus);
    assert_eq!(missing.code, "42501");
    assert_eq!((sql.dialect(0), sql.missing(0)), (Dialect::Xact, None));
    assert_eq!(sql.dialect(9), Dialect::Off, "no such node");
}
