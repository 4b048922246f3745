//! Statements sent as reads that can write or lock: on the primary under
//! the write rules (held for a primary, never sent twice unless marked
//! idempotent), never on a replica; plain reads unchanged.

use std::time::Duration;

use super::{two_nodes, Harness, REPLICA};
use crate::failure::error::{Error, ErrorKind};
use crate::failure::safety::Fate;
use crate::health::fake::Answer;
use crate::manager::fake::{Ask, Fake, FakeRow, Fault, Reply};
use crate::manager::read::ReadBuilder;

const INSERT: &str = "INSERT INTO orders (item) VALUES ($1) RETURNING id";

/// A read of `sql` with `deadline` through `fake`: the node that answered.
async fn read(
    h: &Harness,
    fake: &Fake,
    sql: &str,
    deadline: Duration,
    idempotent: bool,
) -> Result<usize, Error> {
    let mut read = ReadBuilder::new(&h.hub).deadline(deadline);
    if idempotent {
        read = read.idempotent();
    }
    let (index, rows) = read.rows(fake, sql, &[]).await?;
    assert_eq!(
        rows.iter().map(FakeRow::answered_by).collect::<Vec<_>>(),
        [index]
    );
    Ok(index)
}

#[tokio::test(start_paused = true)]
async fn each_writing_or_locking_form_runs_on_the_primary_and_is_counted() {
    let h = Harness::healthy(two_nodes()).await;
    let fake = Fake::new(|_| None);
    let forms = [
        INSERT,
        "UPDATE t SET a = 1 RETURNING a",
        "DELETE FROM t RETURNING id",
        "WITH n AS (INSERT INTO t DEFAULT VALUES RETURNING id) SELECT id FROM n",
        "SELECT * FROM t WHERE id = 1 FOR UPDATE",
        "SELECT * FROM t FOR SHARE",
        "SELECT nextval('s')",
        "CALL p()",
    ];
    for (count, sql) in forms.into_iter().enumerate() {
        let node = read(&h, &fake, sql, Duration::from_secs(1), false).await;
        assert_eq!(node.unwrap(), 0, "{sql}");
        assert_eq!(fake.sent(0, sql), [0], "{sql}");
        assert_eq!(fake.sent(1, sql), [0u64; 0], "{sql}: never on the replica");
        assert_eq!(h.hub.writes_through_reads(), count as u64 + 1);
    }
    // A plain read still goes to the local replica, uncounted.
    let node = read(&h, &fake, "SELECT id FROM t", Duration::from_secs(1), false).await;
    assert_eq!(node.unwrap(), 1);
    assert_eq!(h.hub.writes_through_reads(), forms.len() as u64);
    assert_eq!(fake.asked(1, Ask::Checkout).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_connection_lost_after_it_was_sent_is_an_unknown_outcome_not_a_retry_elsewhere() {
    let h = Harness::healthy(two_nodes()).await;
    let fake = Fake::new(|step| {
        (step.node == 0 && step.ask == Ask::Query && step.nth == 0)
            .then(|| Reply::fail(Fault::Lost))
    });
    let error = read(&h, &fake, INSERT, Duration::from_secs(5), false)
        .await
        .unwrap_err();
    assert!(
        matches!(error.kind(), ErrorKind::OutcomeUnknown),
        "{error:?}"
    );
    assert_eq!(fake.sent(0, INSERT), [0], "sent once");
    assert_eq!(fake.settled(0), [(0, Fate::Discard)]);
    assert!(
        fake.log().iter().all(|entry| entry.node == 0),
        "{:?}",
        fake.log()
    );

    // Marked idempotent, it runs again on the primary after the write
    // backoff (300 ms), as a write would.
    let h = Harness::healthy(two_nodes()).await;
    let fake = Fake::new(|step| {
        (step.node == 0 && step.ask == Ask::Query && step.nth == 0)
            .then(|| Reply::fail(Fault::Lost))
    });
    let node = read(&h, &fake, INSERT, Duration::from_secs(5), true).await;
    assert_eq!(node.unwrap(), 0);
    assert_eq!(fake.sent(0, INSERT), [0, 300]);
    assert_eq!(fake.sent(1, INSERT), [0u64; 0]);
}

#[tokio::test(start_paused = true)]
async fn a_read_only_answer_is_retried_on_the_primary_after_the_backoff() {
    // 25006 from the node thought primary (just demoted): a write retry,
    // not a read retry on the replica.
    let h = Harness::healthy(two_nodes()).await;
    let fake = Fake::new(|step| {
        (step.node == 0 && step.ask == Ask::Query && step.nth == 0)
            .then(|| Reply::fail(Fault::Sqlstate("25006")))
    });
    let node = read(&h, &fake, INSERT, Duration::from_secs(5), false).await;
    assert_eq!(node.unwrap(), 0);
    assert_eq!(fake.sent(0, INSERT), [0, 300]);
    assert_eq!(fake.sent(1, INSERT), [0u64; 0]);
}

#[tokio::test(start_paused = true)]
async fn it_is_held_for_a_primary_rather_than_sent_to_a_replica() {
    let mut config = two_nodes();
    config.write_hold = Duration::from_secs(2);
    let h = Harness::start(config, &[Answer::Down, REPLICA]).await;
    let fake = Fake::new(|_| None);
    let error = read(&h, &fake, INSERT, Duration::from_secs(10), false)
        .await
        .unwrap_err();
    assert!(
        matches!(error.kind(), ErrorKind::NoPrimary { waited } if *waited == Duration::from_secs(2)),
        "{error:?}"
    );
    assert_eq!(fake.ms(), 2000, "held for the write hold");
    assert!(fake.log().is_empty(), "nothing was sent: {:?}", fake.log());
    // A plain read is served by the replica meanwhile.
    let node = read(&h, &fake, "SELECT 1", Duration::from_secs(1), false).await;
    assert_eq!(node.unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_bad_read_option_is_refused_before_anything_is_sent() {
    let h = Harness::healthy(two_nodes()).await;
    let fake = Fake::new(|_| None);
    let read = ReadBuilder::new(&h.hub).max_staleness(Duration::ZERO);
    let error = read.rows(&fake, INSERT, &[]).await.unwrap_err();
    assert!(
        matches!(error.kind(), ErrorKind::InvalidArgument { .. }),
        "{error:?}"
    );
    assert!(fake.log().is_empty());
}
