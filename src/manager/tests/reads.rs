//! Reads: tried once more on another node, within the deadline and the
//! budget; hedged after the hedge delay, the loser cancelled.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use super::{two_nodes, Harness};
use crate::config::Config;
use crate::failure::error::Error;
use crate::failure::error::ErrorKind;
use crate::failure::safety::Fate;
use crate::manager::fake::{Ask, Fake, FakeRow, Fault, Reply};
use crate::manager::read::ReadBuilder;

const SQL: &str = "SELECT 1";

/// Reads hedged 10 ms after they start (outlier detection as configured).
fn hedging() -> Config {
    let mut config = two_nodes();
    config.hedging.enabled = true;
    config.hedging.delay = Some(Duration::from_millis(10));
    config
}

/// A read with `deadline` through `fake`: the node that answered, and
/// which node its row says answered.
async fn read(h: &Harness, fake: &Fake, deadline: Duration) -> Result<(usize, Vec<usize>), Error> {
    let read = ReadBuilder::new(&h.hub).deadline(deadline);
    let (index, rows) = read.rows(fake, SQL, &[]).await?;
    Ok((index, rows.iter().map(FakeRow::answered_by).collect()))
}

#[tokio::test(start_paused = true)]
async fn a_read_refused_by_its_node_runs_on_another_node_at_once() {
    let h = Harness::healthy(two_nodes()).await;
    // Node 1 (the local replica) refuses the connection after 3 ms.
    let fake = Fake::new(|step| {
        (step.node == 1 && step.ask == Ask::Checkout).then(|| Reply::fail(Fault::Lost).after_ms(3))
    });
    let answer = read(&h, &fake, Duration::from_secs(1)).await;
    assert_eq!(answer.unwrap(), (0, vec![0]));
    assert_eq!(fake.asked(1, Ask::Checkout), [0]);
    assert_eq!(
        fake.sent(0, SQL),
        [3],
        "tried on node 0 as soon as node 1 refused"
    );
    assert_eq!(fake.ms(), 3);
    assert!(
        h.hub.is_suspect(1),
        "a caller that saw a refusal marks the node"
    );
}

#[tokio::test(start_paused = true)]
async fn a_read_is_not_tried_elsewhere_with_less_than_5_ms_of_its_deadline_left() {
    // The deadline is 20 ms: a refusal at 15 ms leaves 5 ms, one at 16 ms 4 ms.
    for (refused_at, retried) in [(15, true), (16, false)] {
        let h = Harness::healthy(two_nodes()).await;
        let fake = Fake::new(move |step| {
            (step.node == 1 && step.ask == Ask::Checkout)
                .then(|| Reply::fail(Fault::Lost).after_ms(refused_at))
        });
        let answer = read(&h, &fake, Duration::from_millis(20)).await;
        match retried {
            true => {
                assert_eq!(answer.unwrap(), (0, vec![0]));
                assert_eq!(fake.sent(0, SQL), [refused_at]);
            }
            false => {
                assert!(
                    matches!(
                        answer.as_ref().map_err(Error::kind),
                        Err(ErrorKind::Connect)
                    ),
                    "{answer:?}"
                );
                assert_eq!(fake.asked(0, Ask::Checkout), [0u64; 0]);
            }
        }
        assert_eq!(fake.ms(), refused_at);
    }
}

#[tokio::test(start_paused = true)]
async fn the_read_budget_pays_for_one_retry_and_refuses_the_next() {
    let mut config = two_nodes();
    // One token, and nothing earns another.
    config.hedging.budget_burst = 1;
    config.hedging.budget_percent = 0;
    config.hedging.budget_per_second = 0;
    let h = Harness::healthy(config).await;
    // Node 1 cancels every read (a recovery conflict, 40001): a retry can
    // fix it, and the node is not at fault.
    let fake = Fake::new(|step| {
        (step.node == 1 && step.ask == Ask::Query).then(|| Reply::fail(Fault::Sqlstate("40001")))
    });
    let first = read(&h, &fake, Duration::from_secs(1)).await;
    assert_eq!(first.unwrap(), (0, vec![0]), "the token pays for the retry");
    let second = read(&h, &fake, Duration::from_secs(1)).await;
    let error = second.unwrap_err();
    assert_eq!(error.code().map(|code| code.code()), Some("40001"));
    assert_eq!(fake.sent(1, SQL), [0, 0]);
    assert_eq!(fake.sent(0, SQL), [0], "the second read is not retried");
    assert_eq!(h.hub.counters.retries_refused.load(Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn a_slow_read_is_hedged_after_the_hedge_delay_and_the_loser_drained() {
    let h = Harness::healthy(hedging()).await;
    // Node 1 would answer after 50 ms, node 0 answers after 5 ms.
    let fake = Fake::new(|step| match (step.node, step.ask) {
        (1, Ask::Query) => Some(Reply::rows(vec![FakeRow::node(1)]).after_ms(50)),
        (0, Ask::Query) => Some(Reply::rows(vec![FakeRow::node(0)]).after_ms(5)),
        _ => None,
    });
    let answer = read(&h, &fake, Duration::from_secs(1)).await;
    assert_eq!(answer.unwrap(), (0, vec![0]), "the hedge answered first");
    assert_eq!(fake.sent(1, SQL), [0]);
    assert_eq!(fake.sent(0, SQL), [10], "hedged at the hedge delay");
    assert_eq!(fake.ms(), 15);
    assert_eq!(
        fake.settled(1),
        [(15, Fate::Drain)],
        "the loser's statement may end, and its connection go back to the pool"
    );
    assert_eq!(fake.settled(0), [(15, Fate::Keep)]);
    assert_eq!(h.hub.counters.sent.load(Relaxed), 1);
    assert_eq!(h.hub.counters.won.load(Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn a_read_answered_within_the_hedge_delay_is_not_hedged() {
    let h = Harness::healthy(hedging()).await;
    let fake = Fake::new(|step| {
        (step.node == 1 && step.ask == Ask::Query)
            .then(|| Reply::rows(vec![FakeRow::node(1)]).after_ms(9))
    });
    let answer = read(&h, &fake, Duration::from_secs(1)).await;
    assert_eq!(answer.unwrap(), (1, vec![1]));
    assert_eq!(fake.sent(0, SQL), [0u64; 0]);
    assert_eq!(fake.settled(1), [(9, Fate::Keep)]);
    assert_eq!(h.hub.counters.sent.load(Relaxed), 0);
}

#[tokio::test(start_paused = true)]
async fn a_node_that_goes_silent_under_reads_is_found_an_outlier_without_a_timer_per_read() {
    // Hedging off (the default): a read sets no timer (its deadline is
    // kept in the hub's registry); the hub's outlier watch looks at every
    // node's live reads instead.
    let h = Harness::healthy(two_nodes()).await;
    assert!(!h.hub.config.hedging.enabled && h.hub.config.outliers.enabled);
    // Node 1 (the local replica) answers its first three reads in 1 ms,
    // then nothing.
    let fake = Fake::new(|step| match (step.node, step.ask) {
        (1, Ask::Query) if step.nth < 3 => Some(Reply::rows(vec![FakeRow::node(1)]).after_ms(1)),
        (1, Ask::Query) => Some(Reply::never()),
        _ => None,
    });
    for _ in 0..3 {
        assert_eq!(read(&h, &fake, Duration::from_secs(1)).await.unwrap().0, 1);
    }
    // Its probes go unanswered too (else the probe sent when it is marked
    // suspect would clear it at once).
    h.nodes.set(1, crate::health::fake::Answer::Silent);
    let started = tokio::time::Instant::now();
    let silent = read(&h, &fake, Duration::from_secs(1));
    let watch = async {
        // 100 ms of silence (outliers.silence) while node 0 answers (a
        // read at 50 ms: the fault is node 1's, not this client's), then at
        // most one look (every 25 ms) later.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let primary = ReadBuilder::new(&h.hub).strategy(crate::config::ReadStrategy::PrimaryOnly);
        assert_eq!(primary.rows(&fake, SQL, &[]).await.unwrap().0, 0);
        tokio::time::sleep(Duration::from_millis(49)).await;
        assert!(!h.hub.is_suspect(1), "not before the silence");
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(h.hub.is_suspect(1), "found an outlier and marked suspect");
        assert_eq!(h.hub.counters.outliers.load(Relaxed), 1);
        started.elapsed()
    };
    let (result, found) = tokio::join!(silent, watch);
    assert!(found < Duration::from_millis(130), "{found:?}");
    // With hedging off the read in flight still waits for its deadline.
    let error = result.unwrap_err();
    assert!(
        matches!(error.kind(), ErrorKind::Timeout { .. }),
        "{error:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_far_node_answering_in_its_round_trip_is_not_an_outlier_while_its_estimate_warms_up() {
    // Node 1 is 150 ms away: every read takes 150 ms, as its probes do. Its
    // reads' p99 estimate starts at zero; the outlier limit must not be the
    // 100 ms silence floor meanwhile (that ejected healthy remote nodes).
    let mut config = two_nodes();
    // No probe in the test's time to replace the round trip set below.
    config.health.interval = Duration::from_secs(60);
    let h = Harness::healthy(config).await;
    let mut far = (**h.hub.snapshot()).clone();
    far.nodes[1].rtt = Some(Duration::from_millis(150));
    h.hub.publish(far, Vec::new(), None);
    let fake = Fake::new(|step| match (step.node, step.ask) {
        (1, Ask::Query) => Some(Reply::rows(vec![FakeRow::node(1)]).after_ms(150)),
        _ => None,
    });
    let far_reads = async {
        for _ in 0..12 {
            assert_eq!(read(&h, &fake, Duration::from_secs(1)).await.unwrap().0, 1);
        }
    };
    // The primary answers all along (a peer's answer is what makes a
    // silent node an outlier).
    let primary_reads = async {
        for _ in 0..90 {
            let primary =
                ReadBuilder::new(&h.hub).strategy(crate::config::ReadStrategy::PrimaryOnly);
            assert_eq!(primary.rows(&fake, SQL, &[]).await.unwrap().0, 0);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::join!(far_reads, primary_reads);
    assert_eq!(h.hub.counters.outliers.load(Relaxed), 0);
    assert!(!h.hub.is_suspect(1));
    // The hedge delay starts from the round trip too, not the 5 ms floor.
    assert!(h.hub.read_p99(1) >= Duration::from_millis(150));
}

#[tokio::test(start_paused = true)]
async fn a_read_queueing_for_a_full_pool_is_not_hedged() {
    // Node 1's reads take 50 ms, past the 10 ms hedge delay, but its pool
    // has every connection in use: the slowness is load in this client,
    // and a hedge would only add a read.
    let h = Harness::healthy(hedging()).await;
    let fake = Fake::new(|step| {
        (step.node == 1 && step.ask == Ask::Query)
            .then(|| Reply::rows(vec![FakeRow::node(1)]).after_ms(50))
    });
    fake.saturate(1);
    let answer = read(&h, &fake, Duration::from_secs(1)).await;
    assert_eq!(answer.unwrap(), (1, vec![1]));
    assert_eq!(fake.sent(0, SQL), [0u64; 0], "no hedge to node 0");
    assert_eq!(h.hub.counters.sent.load(Relaxed), 0);
}

#[tokio::test(start_paused = true)]
async fn a_read_is_not_hedged_to_a_node_as_slow_as_its_own() {
    // Node 0, the candidate, has a read in flight unanswered for longer
    // than its own p99: every node is slow, and a hedge would add load.
    let h = Harness::healthy(hedging()).await;
    let fake = Fake::new(|step| match (step.node, step.ask) {
        (0, Ask::Query) => Some(Reply::rows(vec![FakeRow::node(0)]).after_ms(500)),
        (1, Ask::Query) => Some(Reply::rows(vec![FakeRow::node(1)]).after_ms(50)),
        _ => None,
    });
    let stuck = async {
        let primary = ReadBuilder::new(&h.hub).strategy(crate::config::ReadStrategy::PrimaryOnly);
        primary.rows(&fake, SQL, &[]).await.unwrap().0
    };
    let slow = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        read(&h, &fake, Duration::from_secs(1)).await
    };
    let (stuck, slow) = tokio::join!(stuck, slow);
    assert_eq!(stuck, 0);
    assert_eq!(slow.unwrap(), (1, vec![1]));
    assert_eq!(
        fake.sent(0, SQL).len(),
        1,
        "only the primary-only read went to node 0"
    );
    assert_eq!(h.hub.counters.sent.load(Relaxed), 0);
}
