//! Read-your-writes in a causal scope through the call loops: a write
//! whose position the server refuses (as Aurora does) sends the scope's
//! reads to the primary for the window, then back to the local replica; a
//! position still wins unless the window is chosen.

use std::time::Duration;

use tokio::time::Instant;

use super::{two_nodes, Harness};
use crate::causal::causal_scope;
use crate::causal::lsn::{CausalToken, Lsn};
use crate::config::{Config, ReadYourWrites};
use crate::manager::fake::{Ask, Fake, FakeRow, Fault, Reply};
use crate::manager::read::ReadBuilder;
use crate::manager::session::Count;
use crate::manager::token::TOKEN_SQL;
use crate::manager::write::WriteBuilder;

const WRITE: &str = "UPDATE carts SET n = n + 1 WHERE id = 7";
const READ: &str = "SELECT n FROM carts WHERE id = 7";

/// Two nodes (node 1 the local replica), the window 2 s.
fn config(mode: ReadYourWrites) -> Config {
    let mut config = two_nodes();
    config.causal.read_your_writes = mode;
    config.causal.primary_window = Duration::from_secs(2);
    config
}

/// Nodes whose primary refuses the token query as Aurora does (0A000),
/// or answers it with position 0/500 on timeline 1.
fn nodes(refuse_positions: bool) -> Fake {
    Fake::new(move |step| match (step.ask, step.sql) {
        (Ask::Prepare, TOKEN_SQL) if refuse_positions => {
            Some(Reply::fail(Fault::Sqlstate("0A000")))
        }
        (Ask::QueryOne, TOKEN_SQL) => Some(Reply::rows(vec![FakeRow::token(0x500)])),
        // A transaction's identity, for lost-COMMIT resolution.
        (Ask::QueryOne, sql) if sql.starts_with("SELECT pg_current_xact_id()") => {
            Some(Reply::rows(vec![FakeRow::identity(740, 3162, 1_000)]))
        }
        _ => None,
    })
}

async fn write(h: &Harness, fake: &Fake) {
    let write = WriteBuilder::new(&h.hub).deadline(Duration::from_secs(1));
    write
        .run::<Count, _>(fake, WRITE, &[])
        .await
        .expect("write");
}

/// The node that served a read.
async fn read(h: &Harness, fake: &Fake) -> usize {
    let read = ReadBuilder::new(&h.hub).deadline(Duration::from_secs(1));
    read.rows(fake, READ, &[]).await.expect("read").0
}

/// Advances the paused clock to `ms` after `start`.
async fn at(start: Instant, ms: u64) {
    let target = start + Duration::from_millis(ms);
    tokio::time::advance(target.saturating_duration_since(Instant::now())).await;
}

#[tokio::test(start_paused = true)]
async fn without_positions_the_scope_reads_the_primary_for_the_window_then_the_replica() {
    let h = Harness::healthy(config(ReadYourWrites::Positions)).await;
    let fake = nodes(true);
    assert_eq!(
        read(&h, &fake).await,
        1,
        "outside a write, the local replica"
    );
    let ((), newest) = causal_scope(None, async {
        assert_eq!(read(&h, &fake).await, 1, "no write in the scope yet");
        write(&h, &fake).await;
        let start = Instant::now();
        // (ms after the write's answer, the node a read in the scope goes to)
        for (ms, node) in [(0, 0), (1000, 0), (1999, 0), (2000, 1), (2500, 1)] {
            at(start, ms).await;
            assert_eq!(read(&h, &fake).await, node, "{ms} ms after the write");
        }
        // Another write opens it again.
        write(&h, &fake).await;
        assert_eq!(read(&h, &fake).await, 0);
    })
    .await;
    assert_eq!(newest, None, "no token pins the client's next request");
    assert_eq!(read(&h, &fake).await, 1, "outside the scope, no window");
    assert!(
        fake.sent(0, TOKEN_SQL).is_empty(),
        "the refused token query was never run"
    );
}

#[tokio::test(start_paused = true)]
async fn a_position_wins_over_the_window_unless_the_window_is_chosen() {
    // Positions: the replica at 0/100 (its probe) has not replayed 0/500,
    // so reads go to the primary until a probe shows it has; no window.
    let h = Harness::healthy(config(ReadYourWrites::Positions)).await;
    let fake = nodes(false);
    let ((), newest) = causal_scope(None, async {
        write(&h, &fake).await;
        assert_eq!(read(&h, &fake).await, 0, "behind the token");
        h.nodes.set(
            1,
            crate::health::fake::Answer::Replica {
                timeline: 1,
                replayed: 0x500,
            },
        );
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(read(&h, &fake).await, 1, "replayed: well before 2 s");
    })
    .await;
    assert_eq!(newest, Some(CausalToken::on_timeline(1, Lsn(0x500))));
    assert_eq!(fake.sent(0, TOKEN_SQL).len(), 1);

    // Window: no token query at all, the primary for 2 s whatever the
    // replica has replayed.
    let h = Harness::healthy(config(ReadYourWrites::Window)).await;
    let fake = nodes(false);
    let ((), newest) = causal_scope(None, async {
        write(&h, &fake).await;
        let start = Instant::now();
        at(start, 1999).await;
        assert_eq!(read(&h, &fake).await, 0);
        at(start, 2000).await;
        assert_eq!(read(&h, &fake).await, 1);
    })
    .await;
    assert_eq!(newest, None);
    assert!(fake.sent(0, TOKEN_SQL).is_empty(), "no token query");
}

#[tokio::test(start_paused = true)]
async fn a_transaction_without_a_position_opens_the_window_too() {
    let h = Harness::healthy(config(ReadYourWrites::Positions)).await;
    let fake = nodes(true);
    causal_scope(None, async {
        let body = crate::manager::transaction::Statement::<Count> {
            sql: WRITE,
            params: &[],
            kind: std::marker::PhantomData,
        };
        let write = WriteBuilder::new(&h.hub).deadline(Duration::from_secs(1));
        write
            .run_transaction(&fake, body)
            .await
            .expect("transaction");
        let start = Instant::now();
        assert_eq!(read(&h, &fake).await, 0);
        at(start, 2000).await;
        assert_eq!(read(&h, &fake).await, 1);
    })
    .await;
}
