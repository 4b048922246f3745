//! Writes: held for a primary up to the write hold; retried with backoff
//! only after what a retry can fix; a deadline that passes after the
//! statement was sent is an unknown outcome.

use std::time::Duration;

use super::{two_nodes, Harness, REPLICA};
use crate::failure::error::Error;
use crate::failure::error::ErrorKind;
use crate::failure::safety::Fate;
use crate::health::fake::Answer;
use crate::manager::fake::{Ask, Fake, Fault, Reply};
use crate::manager::session::Count;
use crate::manager::write::WriteBuilder;

const SQL: &str = "UPDATE accounts SET balance = 0 WHERE id = 1";

/// The write through `fake`, its deadline `deadline`.
async fn write(
    h: &Harness,
    fake: &Fake,
    deadline: Duration,
    idempotent: bool,
) -> Result<u64, Error> {
    let mut write = WriteBuilder::new(&h.hub).deadline(deadline);
    if idempotent {
        write = write.idempotent();
    }
    let served = write.run::<Count, _>(fake, SQL, &[]).await?;
    Ok(served.output)
}

/// Node 0 answers the write's first attempt with `fault`, later ones as
/// usual (at once, one row affected).
fn first_fails(fault: Fault) -> Fake {
    Fake::new(move |step| {
        (step.node == 0 && step.ask == Ask::Execute && step.nth == 0).then(|| Reply::fail(fault))
    })
}

#[tokio::test(start_paused = true)]
async fn a_write_stops_at_once_on_each_class_a_retry_cannot_help() {
    // Integrity (23), syntax and permission (42), data (22).
    let codes = [
        "23505", "23503", "23514", "23502", "42601", "42501", "42P01", "22012", "22P02",
    ];
    for code in codes {
        let h = Harness::healthy(two_nodes()).await;
        let fake = first_fails(Fault::Sqlstate(code));
        let error = write(&h, &fake, Duration::from_secs(5), true)
            .await
            .unwrap_err();
        assert!(
            matches!(error.kind(), ErrorKind::Database),
            "{code}: {error:?}"
        );
        assert_eq!(error.code().map(|c| c.code()), Some(code));
        assert_eq!(
            fake.sent(0, SQL),
            [0],
            "{code}: sent once, even when idempotent"
        );
        assert_eq!(fake.ms(), 0, "{code}: no backoff");
    }
}

#[tokio::test(start_paused = true)]
async fn a_write_is_retried_after_the_backoff_on_each_class_a_retry_can_fix() {
    // Serialization failure, deadlock, shutdown, read-only (a demoted
    // primary): the server applied nothing.
    for code in ["40001", "40P01", "57P01", "25006"] {
        let h = Harness::healthy(two_nodes()).await;
        let fake = first_fails(Fault::Sqlstate(code));
        let written = write(&h, &fake, Duration::from_secs(5), false).await;
        assert_eq!(written.unwrap(), 1, "{code}");
        assert_eq!(
            fake.sent(0, SQL),
            [0, 300],
            "{code}: again after the first delay"
        );
    }
    // A connection refused before anything was sent: the node is suspect
    // until the monitor's probe answers, which it does at once here.
    let h = Harness::healthy(two_nodes()).await;
    let fake = Fake::new(|step| {
        (step.ask == Ask::Checkout && step.nth == 0).then(|| Reply::fail(Fault::Lost))
    });
    let written = write(&h, &fake, Duration::from_secs(5), false).await;
    assert_eq!(written.unwrap(), 1);
    assert_eq!(fake.asked(0, Ask::Checkout), [0, 300]);
    assert_eq!(fake.sent(0, SQL), [300]);
}

#[tokio::test(start_paused = true)]
async fn the_write_backoff_doubles_until_the_retries_are_spent() {
    let h = Harness::healthy(two_nodes()).await;
    let fake =
        Fake::new(|step| (step.ask == Ask::Execute).then(|| Reply::fail(Fault::Sqlstate("40001"))));
    let error = write(&h, &fake, Duration::from_secs(5), false)
        .await
        .unwrap_err();
    assert_eq!(error.code().map(|c| c.code()), Some("40001"));
    // 300, 600, 1200 ms: three retries, then the last error. Tokio's
    // timer ends a sleep on its first millisecond tick at or after the
    // deadline: up to 1 ms late.
    let sent = fake.sent(0, SQL);
    let gaps: Vec<u64> = sent.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(sent.len(), 4, "{sent:?}");
    for (gap, delay) in gaps.iter().zip([300, 600, 1200]) {
        assert!((delay..=delay + 1).contains(gap), "{sent:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_deadline_that_passes_after_the_write_was_sent_is_an_unknown_outcome() {
    let h = Harness::healthy(two_nodes()).await;
    let fake = Fake::new(|step| (step.ask == Ask::Execute).then(Reply::never));
    let error = write(&h, &fake, Duration::from_secs(1), false)
        .await
        .unwrap_err();
    assert!(
        matches!(
            error.kind(),
            ErrorKind::Timeout {
                after_send: true,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.is_outcome_unknown());
    assert_eq!(fake.ms(), 1000);
    assert_eq!(fake.sent(0, SQL), [0], "never sent again");
    assert_eq!(
        fake.settled(0),
        [(1000, Fate::Cancel)],
        "the statement is cancelled on the server"
    );
}

#[tokio::test(start_paused = true)]
async fn a_deadline_that_passes_before_the_write_was_sent_is_a_plain_timeout() {
    for stuck in [Ask::Checkout, Ask::Prepare] {
        let h = Harness::healthy(two_nodes()).await;
        let fake = Fake::new(move |step| (step.ask == stuck).then(Reply::never));
        let error = write(&h, &fake, Duration::from_secs(1), false)
            .await
            .unwrap_err();
        assert!(
            matches!(
                error.kind(),
                ErrorKind::Timeout {
                    after_send: false,
                    ..
                }
            ),
            "{stuck:?}: {error:?}"
        );
        assert!(!error.is_outcome_unknown(), "{stuck:?}");
        assert_eq!(fake.ms(), 1000, "{stuck:?}");
        assert_eq!(fake.sent(0, SQL), [0u64; 0], "{stuck:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_connection_lost_after_the_write_was_sent_is_retried_only_when_idempotent() {
    let h = Harness::healthy(two_nodes()).await;
    let fake = first_fails(Fault::Lost);
    let error = write(&h, &fake, Duration::from_secs(5), false)
        .await
        .unwrap_err();
    assert!(
        matches!(error.kind(), ErrorKind::OutcomeUnknown),
        "{error:?}"
    );
    assert_eq!(fake.sent(0, SQL), [0]);
    assert_eq!(fake.settled(0), [(0, Fate::Discard)]);

    let h = Harness::healthy(two_nodes()).await;
    let fake = first_fails(Fault::Lost);
    let written = write(&h, &fake, Duration::from_secs(5), true).await;
    assert_eq!(written.unwrap(), 1);
    assert_eq!(fake.sent(0, SQL), [0, 300]);
}

#[tokio::test(start_paused = true)]
async fn the_write_hold_ends_at_its_bound_when_no_primary_appears() {
    let mut config = two_nodes();
    config.write_hold = Duration::from_secs(2);
    // The primary does not answer its probes; the monitor keeps probing.
    let h = Harness::start(config, &[Answer::Down, REPLICA]).await;
    let fake = Fake::new(|_| None);
    let error = write(&h, &fake, Duration::from_secs(10), false)
        .await
        .unwrap_err();
    assert!(
        matches!(error.kind(), ErrorKind::NoPrimary { waited } if *waited == Duration::from_secs(2)),
        "{error:?}"
    );
    assert_eq!(fake.ms(), 2000);
    assert!(fake.log().is_empty(), "nothing was sent: {:?}", fake.log());
    assert!(!h.nodes.probes(0).is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_write_hold_never_outlasts_the_deadline() {
    let mut config = two_nodes();
    config.write_hold = Duration::from_secs(2);
    let h = Harness::start(config, &[Answer::Down, REPLICA]).await;
    let fake = Fake::new(|_| None);
    let error = write(&h, &fake, Duration::from_millis(500), false)
        .await
        .unwrap_err();
    assert!(
        matches!(error.kind(), ErrorKind::NoPrimary { .. }),
        "{error:?}"
    );
    assert_eq!(fake.ms(), 500);
}

#[tokio::test(start_paused = true)]
async fn a_writes_causal_token_is_read_right_behind_it_on_the_same_connection() {
    use crate::causal::lsn::Lsn;
    use crate::manager::fake::FakeRow;
    use crate::manager::token::TOKEN_SQL;
    let h = Harness::healthy(two_nodes()).await;
    let fake = Fake::new(|step| match step.ask {
        Ask::Execute => Some(Reply::rows(vec![FakeRow::node(0)]).after_ms(7)),
        Ask::QueryOne if step.sql == TOKEN_SQL => Some(Reply::rows(vec![FakeRow::token(0x1_0000)])),
        _ => None,
    });
    let info = crate::CallInfo::with_token();
    let write = WriteBuilder::new(&h.hub)
        .deadline(Duration::from_secs(1))
        .info(&info);
    let served = write.run::<Count, _>(&fake, SQL, &[]).await.unwrap();
    assert_eq!(served.output, 1);
    let token = info.token().expect("the slot asked for the token");
    assert_eq!(token.lsn(), Lsn(0x1_0000));
    assert_eq!(token.timeline(), Some(1));
    // Pipelined: sent at once behind the statement, not after its answer.
    assert_eq!(fake.sent(0, SQL), [0]);
    assert_eq!(fake.sent(0, TOKEN_SQL), [0]);
    assert_eq!(fake.settled(0), [(7, Fate::Keep)]);
}

#[tokio::test(start_paused = true)]
async fn a_token_that_does_not_come_after_the_write_succeeded_is_unavailable_not_unknown() {
    use crate::manager::fake::FakeRow;
    use crate::manager::token::TOKEN_SQL;
    let h = Harness::healthy(two_nodes()).await;
    // The write is answered at 7 ms; its token query never is.
    let fake = Fake::new(|step| match step.ask {
        Ask::Execute => Some(Reply::rows(vec![FakeRow::node(0)]).after_ms(7)),
        Ask::QueryOne if step.sql == TOKEN_SQL => Some(Reply::never()),
        _ => None,
    });
    let info = crate::CallInfo::with_token();
    let write = WriteBuilder::new(&h.hub)
        .deadline(Duration::from_secs(1))
        .info(&info);
    let Err(error) = write.run::<Count, _>(&fake, SQL, &[]).await else {
        panic!("the token cannot have come");
    };
    assert!(
        matches!(error.kind(), ErrorKind::TokenUnavailable),
        "{error:?}"
    );
    assert!(!error.is_outcome_unknown(), "the write is known done");
    assert_eq!(fake.ms(), 1000, "waited for the token until the deadline");
    assert_eq!(fake.sent(0, SQL), [0], "never run again");
    assert_eq!(fake.settled(0), [(1000, Fate::Discard)]);
}
