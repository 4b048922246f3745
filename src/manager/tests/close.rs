//! `close` through the call loops: calls in flight run on until the close
//! timeout and are then stopped, their statements cancelled; calls made
//! after `close` started are refused before anything is sent.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{two_nodes, Harness};
use crate::failure::error::ErrorKind;
use crate::failure::safety::Fate;
use crate::manager::fake::{Ask, Fake, Reply};
use crate::manager::read::ReadBuilder;
use crate::manager::session::Count;
use crate::manager::write::WriteBuilder;

const READ: &str = "SELECT pg_sleep(60)";
const WRITE: &str = "UPDATE t SET n = n + 1";

#[tokio::test(start_paused = true)]
async fn calls_in_flight_at_the_timeout_are_stopped_and_their_statements_cancelled() {
    let h = Harness::healthy(two_nodes()).await;
    // The read (node 1) answers after 300 ms; the write (node 0) never.
    let fake = Arc::new(Fake::new(|step| match (step.ask, step.sql) {
        (Ask::Query, READ) => Some(Reply::rows(vec![]).after_ms(300)),
        (Ask::Execute, WRITE) => Some(Reply::never()),
        _ => None,
    }));
    let start = Instant::now();
    let read = {
        let (hub, fake) = (Arc::clone(&h.hub), Arc::clone(&fake));
        tokio::spawn(async move {
            let read = ReadBuilder::new(&hub).deadline(Duration::from_secs(10));
            let result = read.rows(&*fake, READ, &[]).await.map(|(index, _)| index);
            (result, start.elapsed())
        })
    };
    let write = {
        let (hub, fake) = (Arc::clone(&h.hub), Arc::clone(&fake));
        tokio::spawn(async move {
            let write = WriteBuilder::new(&hub).deadline(Duration::from_secs(10));
            let result = write
                .run::<Count, _>(&*fake, WRITE, &[])
                .await
                .map(|s| s.index);
            (result, start.elapsed())
        })
    };
    tokio::task::yield_now().await;
    h.hub.close();
    let refused = ReadBuilder::new(&h.hub).rows(&*fake, "SELECT 1", &[]).await;
    assert!(matches!(
        refused.map_err(|e| e.kind().clone()),
        Err(ErrorKind::Closed)
    ));
    assert!(
        fake.sent(1, "SELECT 1").is_empty(),
        "refused before anything was sent"
    );
    assert_eq!(h.hub.finish_calls(Duration::from_secs(1)).await, 1);
    assert_eq!(start.elapsed(), Duration::from_secs(1));

    let (result, took) = read.await.unwrap();
    assert_eq!((result.unwrap(), took), (1, Duration::from_millis(300)));
    let (result, took) = write.await.unwrap();
    let error = result.unwrap_err();
    assert_eq!(
        (error.kind(), took),
        (&ErrorKind::Closed, Duration::from_secs(1))
    );
    assert!(error.is_outcome_unknown());
    assert_eq!(
        fake.settled(0),
        [(1000, Fate::Cancel)],
        "the write's statement is cancelled on its server"
    );
}
