//! A transaction opens with its first statement: `BEGIN` (with the
//! options) and the identity query go out then, settings sent first ride
//! with them, an empty body opens before `COMMIT`; a read-only transaction
//! takes no identity and runs again after a lost `COMMIT`; a deadline that
//! passes while `BEGIN` awaits its answer is the node's, one that passes in
//! the body's own work is not.

use std::time::Duration;

use tokio::time::sleep;
use tokio_postgres::IsolationLevel;

use super::{two_nodes, Harness};
use crate::failure::error::{Error, ErrorKind};
use crate::failure::safety::Fate;
use crate::manager::fake::{Ask, Fake, FakeRow, Fault, Reply, Step};
use crate::manager::opening::{run_watched, Next, Opening};
use crate::manager::session::{Count, Session};
use crate::manager::transaction::Body;
use crate::manager::write::WriteBuilder;

const UPDATE: &str = "UPDATE accounts SET balance = balance - 10 WHERE id = 1";

/// A body: waits `idle_ms` (work of its own), sends `settings` (held back
/// until `BEGIN`), then the update `updates` times at once.
struct Script {
    idle_ms: u64,
    settings: &'static [&'static str],
    updates: usize,
}

impl<S: Session> Body<S> for Script {
    type Output = u64;

    async fn run<'t>(&'t mut self, session: &'t S, opening: &'t Opening<'t>) -> Result<u64, Error> {
        sleep(Duration::from_millis(self.idle_ms)).await;
        for setting in self.settings {
            let next = opening.before(session, setting, true).await?;
            assert_eq!(next, Next::Held, "{setting} is held back");
        }
        let updates =
            (0..self.updates).map(|_| run_watched::<Count, S>(session, opening, UPDATE, &[]));
        let counts = futures_util::future::try_join_all(updates).await?;
        Ok(counts.into_iter().sum())
    }
}

/// Node 0 answers the identity query; `commit` says how its first
/// `COMMIT` goes (`None`: at once).
fn fake(commit: Option<Reply>) -> Fake {
    Fake::new(move |step: &Step<'_>| match (step.ask, step.sql) {
        (Ask::QueryOne, sql) if is_identity(sql) => {
            Some(Reply::rows(vec![FakeRow::identity(740, 3162, 1_000)]))
        }
        (Ask::Batch, "COMMIT") if step.nth == 0 => commit.clone(),
        _ => None,
    })
}

fn is_identity(sql: &str) -> bool {
    sql.starts_with("SELECT pg_current_xact_id()")
}

/// When node 0 was sent the identity query.
fn identity_sent(fake: &Fake) -> Vec<u64> {
    fake.log()
        .into_iter()
        .filter_map(|entry| match entry.event {
            crate::manager::fake::Event::Asked(Ask::QueryOne, sql) if is_identity(&sql) => {
                Some(entry.ms)
            }
            _ => None,
        })
        .collect()
}

/// When node 0 was sent a simple query starting with `BEGIN`, and what.
fn begins(fake: &Fake) -> Vec<(u64, String)> {
    fake.log()
        .into_iter()
        .filter_map(|entry| match entry.event {
            crate::manager::fake::Event::Asked(Ask::Batch, sql) if sql.starts_with("BEGIN") => {
                Some((entry.ms, sql))
            }
            _ => None,
        })
        .collect()
}

async fn run(write: WriteBuilder<'_>, fake: &Fake, body: Script) -> Result<u64, Error> {
    let (value, _) = write.run_transaction(fake, body).await?;
    Ok(value)
}

#[tokio::test(start_paused = true)]
async fn begin_and_its_settings_go_out_with_the_first_statement() {
    let h = Harness::healthy(two_nodes()).await;
    let fake = fake(None);
    let write = WriteBuilder::new(&h.hub)
        .deadline(Duration::from_secs(1))
        .isolation_level(IsolationLevel::RepeatableRead);
    let body = Script {
        idle_ms: 100,
        settings: &["SET TRANSACTION SNAPSHOT '00000003-0000001B-1'"],
        updates: 2,
    };
    assert_eq!(run(write, &fake, body).await.unwrap(), 2);
    // One BEGIN for two statements sent at once, at the first of them (not
    // when the body started), with the setting ahead of the identity query.
    assert_eq!(
        begins(&fake),
        [(
            100,
            "BEGIN ISOLATION LEVEL REPEATABLE READ;\n\
             SET TRANSACTION SNAPSHOT '00000003-0000001B-1'\n"
                .to_owned()
        )]
    );
    assert_eq!(identity_sent(&fake), [100]);
    assert_eq!(fake.sent(0, UPDATE), [100, 100]);
    assert_eq!(fake.sent(0, "COMMIT"), [100]);
    assert_eq!(fake.settled(0), [(100, Fate::Keep)]);
}

#[tokio::test(start_paused = true)]
async fn an_empty_body_opens_the_transaction_before_commit() {
    let h = Harness::healthy(two_nodes()).await;
    let fake = fake(None);
    let write = WriteBuilder::new(&h.hub).deadline(Duration::from_secs(1));
    let body = Script {
        idle_ms: 50,
        settings: &["SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"],
        updates: 0,
    };
    assert_eq!(run(write, &fake, body).await.unwrap(), 0);
    assert_eq!(
        begins(&fake),
        [(
            50,
            "BEGIN;\nSET TRANSACTION ISOLATION LEVEL SERIALIZABLE\n".to_owned()
        )]
    );
    // The identity is known before COMMIT is sent.
    assert_eq!(identity_sent(&fake), [50]);
    assert_eq!(fake.sent(0, "COMMIT"), [50]);
}

#[tokio::test(start_paused = true)]
async fn a_read_only_transaction_takes_no_identity_and_runs_again_after_a_lost_commit() {
    let h = Harness::healthy(two_nodes()).await;
    let fake = fake(Some(Reply::fail(Fault::Lost).after_ms(5)));
    let write = WriteBuilder::new(&h.hub)
        .deadline(Duration::from_secs(5))
        .read_only(true);
    let body = Script {
        idle_ms: 0,
        settings: &[],
        updates: 1,
    };
    assert_eq!(run(write, &fake, body).await.unwrap(), 1);
    assert_eq!(
        begins(&fake),
        [
            (0, "BEGIN READ ONLY".to_owned()),
            (305, "BEGIN READ ONLY".to_owned())
        ]
    );
    assert!(identity_sent(&fake).is_empty(), "no transaction id taken");
    // Nothing to resolve: it wrote nothing, so it ran again after the
    // first backoff delay.
    assert_eq!(fake.sent(0, "COMMIT"), [0, 305]);
}

#[tokio::test(start_paused = true)]
async fn a_read_only_setting_costs_the_identity_and_so_the_resolution() {
    let h = Harness::healthy(two_nodes()).await;
    let fake = fake(Some(Reply::fail(Fault::Lost).after_ms(5)));
    let write = WriteBuilder::new(&h.hub).deadline(Duration::from_secs(5));
    let body = Script {
        idle_ms: 0,
        settings: &["SET TRANSACTION READ ONLY"],
        updates: 1,
    };
    let error = run(write, &fake, body).await.unwrap_err();
    // A read-only transaction may not insert the marker: no identity, so a
    // lost COMMIT stays unknown (never run again, never guessed).
    assert!(
        matches!(error.kind(), ErrorKind::OutcomeUnknown),
        "{error:?}"
    );
    assert!(identity_sent(&fake).is_empty());
    assert_eq!(fake.sent(0, "COMMIT"), [0]);
}

#[tokio::test(start_paused = true)]
async fn a_deadline_while_begin_awaits_its_answer_is_the_nodes_before_anything_was_sent() {
    let h = Harness::healthy(two_nodes()).await;
    let fake = Fake::new(|step: &Step<'_>| {
        (step.ask == Ask::Batch && step.sql.starts_with("BEGIN")).then(Reply::never)
    });
    let write = WriteBuilder::new(&h.hub).deadline(Duration::from_secs(1));
    let body = Script {
        idle_ms: 0,
        settings: &[],
        updates: 1,
    };
    let error = run(write, &fake, body).await.unwrap_err();
    assert!(
        matches!(
            error.kind(),
            ErrorKind::Timeout {
                after_send: false,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(!error.is_outcome_unknown());
    assert_eq!(fake.ms(), 1000);
    assert!(fake.sent(0, UPDATE).is_empty());
    assert_eq!(fake.settled(0), [(1000, Fate::Cancel)]);
    assert!(h.hub.is_suspect(0), "a silent BEGIN marks the node suspect");
}

#[tokio::test(start_paused = true)]
async fn a_deadline_spent_in_the_bodys_own_work_blames_no_node() {
    let h = Harness::healthy(two_nodes()).await;
    let fake = fake(None);
    let write = WriteBuilder::new(&h.hub).deadline(Duration::from_secs(1));
    let body = Script {
        idle_ms: 5_000,
        settings: &[],
        updates: 1,
    };
    let error = run(write, &fake, body).await.unwrap_err();
    assert!(error.is_timeout(), "{error:?}");
    assert_eq!(fake.ms(), 1000);
    assert!(begins(&fake).is_empty(), "nothing was sent");
    assert!(!h.hub.is_suspect(0));
}
