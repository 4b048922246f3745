//! A lost `COMMIT` answer is resolved, not handed to the caller as a guess:
//! on real clusters, with the fault proxy cutting the connection after
//! `COMMIT` was sent. Each case also runs with resolution switched off, to
//! show the fault really leaves the outcome unknown without it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::{
    blocking, fast_config, node_configs, pooler, session, until_running, wait_until_async,
};
use pgrouter::error::ErrorKind;
use pgrouter::status::Capability;
use pgrouter::status::CommitOutcome;
use pgrouter::status::Event;
use pgrouter::tokio_postgres::types::ToSql;
use pgrouter::tokio_postgres::{NoTls, Row};
use pgrouter::Config;
use pgrouter::DatabaseManager;
use pgrouter::Error;
use pgrouter_testkit::{Cluster, Fault, FaultProxy, Pooler, StopMode, APP_USER};

const MARKERS: &str = "pgrouter_outcomes";

/// How the manager under test resolves a lost `COMMIT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resolution {
    /// Switched off: a lost `COMMIT` is [`Error::OutcomeUnknown`].
    Off,
    /// The default: transaction ids only.
    Ids,
    /// With the marker table.
    Markers,
}

/// A cluster of `replicas + 1` nodes, a fault proxy in front of each.
async fn proxied_cluster(replicas: usize) -> (Cluster, Vec<Arc<FaultProxy>>) {
    let builder = Cluster::builder().replicas(replicas).pooler(pooler());
    let cluster = blocking(|| builder.start()).expect("cluster");
    let mut proxies = Vec::new();
    for node in cluster.nodes() {
        let proxy = FaultProxy::start(node.client_addr()).await.expect("proxy");
        proxies.push(Arc::new(proxy));
    }
    (cluster, proxies)
}

fn config(cluster: &Cluster, proxies: &[Arc<FaultProxy>], resolution: Resolution) -> Config {
    let ports: Vec<u16> = proxies.iter().map(|proxy| proxy.port()).collect();
    let mut config = fast_config(node_configs(cluster, &ports));
    // Room for a stop, a promotion and the monitor to follow, on a loaded
    // machine; resolving never needs the whole of it.
    config.deadline = Duration::from_secs(20);
    config.retry.max_retries = 20;
    config.outcomes.resolve = resolution != Resolution::Off;
    if resolution == Resolution::Markers {
        config.outcomes.marker_table = Some(MARKERS.to_owned());
    }
    config
}

async fn manager(
    cluster: &Cluster,
    proxies: &[Arc<FaultProxy>],
    resolution: Resolution,
) -> DatabaseManager {
    let config = config(cluster, proxies, resolution);
    DatabaseManager::new(config).await.expect("manager")
}

/// The ledger, with a deferred trigger that makes `COMMIT` of a row whose
/// note starts with `slow` take a second on the server (`slowest`: 30 s) (so a test can cut
/// the connection while `COMMIT` runs), and the marker table; made
/// directly on node 0, as the marker table must exist before a manager
/// that uses it runs a transaction.
async fn create_schema(cluster: &Cluster) {
    let ddl = format!(
        "CREATE TABLE ledger (id serial PRIMARY KEY, note text NOT NULL);
         CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN
                PERFORM pg_sleep(CASE WHEN NEW.note LIKE 'slowest%' THEN 30 ELSE 1 END);
                RETURN NULL;
              END $$;
         CREATE CONSTRAINT TRIGGER slow AFTER INSERT ON ledger
           DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
           WHEN (NEW.note LIKE 'slow%') EXECUTE FUNCTION slow_commit();
         {};",
        {
            let mut outcomes = pgrouter::config::OutcomeSettings::default();
            outcomes.marker_table = Some(MARKERS.to_owned());
            outcomes
        }
        .marker_table_sql()
        .expect("marker table SQL")
    );
    let (client, driver) = session(cluster, 0).await;
    client.batch_execute(&ddl).await.expect("schema");
    drop(client);
    let _ = driver.await;
}

/// The one row `sql` returns on node `index`, asked directly (past any
/// proxy) on a session of its own.
async fn row_on(cluster: &Cluster, index: usize, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Row {
    let (client, driver) = session(cluster, index).await;
    let row = client.query_one(sql, params).await.expect(sql);
    drop(client);
    let _ = driver.await;
    row
}

/// How many ledger rows carry `note` on node `index`, asked directly.
async fn rows(cluster: &Cluster, index: usize, note: &str) -> i64 {
    let sql = "SELECT count(*) FROM ledger WHERE note = $1";
    row_on(cluster, index, sql, &[&note]).await.get(0)
}

/// Waits until node `index` shows the row with `note` committed.
async fn until_committed(cluster: &Cluster, index: usize, note: &str) {
    let seen = wait_until_async(Duration::from_secs(15), || async {
        rows(cluster, index, note).await > 0
    })
    .await;
    assert!(seen.is_some(), "{note} never committed on node {index}");
}

/// Cuts every connection through `proxy` (the held answers are lost), then
/// lets traffic pass again.
async fn cut(proxy: &FaultProxy) {
    proxy.set(Fault::Reset);
    tokio::time::sleep(Duration::from_millis(20)).await;
    proxy.set(Fault::Pass);
}

/// A transaction inserting `note` that, on its first run only, switches
/// `proxy` to `fault` right before returning: `COMMIT` is then sent into
/// that fault. Returns the result and how many times the closure ran.
async fn insert_then_fault(
    db: &DatabaseManager,
    proxy: &Arc<FaultProxy>,
    fault: Fault,
    note: &'static str,
    after_commit_sent: impl std::future::Future<Output = ()>,
) -> (Result<u32, Error>, u32) {
    let runs = Arc::new(AtomicU32::new(0));
    let transaction = db.write().transaction(|tx| {
        let (proxy, runs, fault) = (Arc::clone(proxy), Arc::clone(&runs), fault.clone());
        Box::pin(async move {
            tx.execute("INSERT INTO ledger (note) VALUES ($1)", &[&note])
                .await?;
            let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
            if run == 1 {
                proxy.set(fault);
            }
            Ok(run)
        })
    });
    let (result, ()) = tokio::join!(transaction, after_commit_sent);
    (result, runs.load(Ordering::SeqCst))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_answer_is_lost_after_it_committed_resolves_ok_once() {
    let (cluster, proxies) = proxied_cluster(0).await;
    let proxy = &proxies[0];
    for (resolution, note) in [
        (Resolution::Ids, "resolved"),
        (Resolution::Off, "unresolved"),
    ] {
        let db = manager(&cluster, &proxies, resolution).await;
        if resolution == Resolution::Ids {
            create_schema(&cluster).await;
        }
        let mut events = db.subscribe();
        // COMMIT reaches the server and commits; its answer is held back,
        // then lost when the connection is cut.
        let (result, runs) = insert_then_fault(&db, proxy, Fault::HoldReplies, note, async {
            until_committed(&cluster, 0, note).await;
            cut(proxy).await;
        })
        .await;
        match resolution {
            Resolution::Off => {
                let error = result.expect_err("without resolution the outcome is unknown");
                assert!(error.is_outcome_unknown(), "{error:?}");
            }
            _ => {
                assert_eq!(result.expect("resolved as committed"), 1);
                let resolved =
                    std::iter::from_fn(|| events.try_recv().ok()).find_map(|event| match event {
                        Event::CommitResolved { node, outcome, .. } => Some((node, outcome)),
                        _ => None,
                    });
                assert_eq!(
                    resolved,
                    Some(("node0".to_owned(), CommitOutcome::Committed))
                );
            }
        }
        assert_eq!(runs, 1, "a committed transaction never runs again");
        assert_eq!(rows(&cluster, 0, note).await, 1);
        db.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_lost_before_the_server_saw_it_runs_again_once() {
    let (cluster, proxies) = proxied_cluster(0).await;
    let proxy = &proxies[0];
    for (resolution, note) in [(Resolution::Ids, "retried"), (Resolution::Off, "lost")] {
        let db = manager(&cluster, &proxies, resolution).await;
        if resolution == Resolution::Ids {
            create_schema(&cluster).await;
        }
        // COMMIT is stuck in the proxy and never reaches the server; the
        // cut then ends the session, and the server rolls back.
        let (result, runs) = insert_then_fault(&db, proxy, Fault::BlackHole, note, async {
            let blackholed = wait_until_async(Duration::from_secs(15), || async {
                proxy.fault() == Fault::BlackHole
            })
            .await;
            assert!(blackholed.is_some());
            // COMMIT is sent right after the closure returns; give it time
            // to be written into the proxy's socket.
            tokio::time::sleep(Duration::from_millis(200)).await;
            cut(proxy).await;
        })
        .await;
        match resolution {
            Resolution::Off => {
                let error = result.expect_err("without resolution the outcome is unknown");
                assert!(error.is_outcome_unknown(), "{error:?}");
                assert_eq!(runs, 1);
                assert_eq!(rows(&cluster, 0, note).await, 0);
            }
            _ => {
                assert_eq!(
                    result.expect("resolved as not committed, then run again"),
                    2
                );
                assert_eq!(rows(&cluster, 0, note).await, 1);
            }
        }
        db.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exactly_once_write_whose_commit_answer_is_lost_resolves_with_its_result() {
    let (cluster, proxies) = proxied_cluster(0).await;
    let proxy = &proxies[0];
    let db = manager(&cluster, &proxies, Resolution::Off).await;
    create_schema(&cluster).await;
    // COMMIT runs the slow deferred trigger: the answer is held back while
    // it runs, and lost once the row has committed.
    let cut_during_commit = |note: &'static str| {
        let cluster = &cluster;
        async move {
            until_running(cluster, 0, "COMMIT").await;
            proxy.set(Fault::HoldReplies);
            until_committed(cluster, 0, note).await;
            cut(proxy).await;
        }
    };
    let insert = "INSERT INTO ledger (note) VALUES ($1)";
    let (once, ()) = tokio::join!(
        db.write().exactly_once().execute(insert, &[&"slow once"]),
        cut_during_commit("slow once"),
    );
    assert_eq!(once.expect("resolved as committed"), 1);
    assert_eq!(rows(&cluster, 0, "slow once").await, 1);

    // Plain, the same fault leaves the outcome unknown. The statement's own
    // answer is lost: cut while it runs (its trigger fires at once).
    let (plain, ()) = tokio::join!(
        db.write().execute(
            "INSERT INTO ledger (note) SELECT 'slow plain' FROM pg_sleep(1)",
            &[]
        ),
        async {
            until_running(&cluster, 0, "'slow plain' FROM pg_sleep(1)").await;
            proxy.set(Fault::HoldReplies);
            until_committed(&cluster, 0, "slow plain").await;
            cut(proxy).await;
        },
    );
    let error = plain.expect_err("a plain write's lost answer is unknown");
    assert!(error.is_outcome_unknown(), "{error:?}");
    db.close().await;
}

/// The primary is stopped and a replica promoted while `COMMIT`'s answer is
/// held back; the commit made it to the replica before the stop.
async fn commit_lost_in_a_failover(resolution: Resolution) -> (Cluster, Result<u32, Error>, u32) {
    let (cluster, proxies) = proxied_cluster(1).await;
    let db = manager(&cluster, &proxies, resolution).await;
    create_schema(&cluster).await;
    let note = "failover";
    let (result, runs) = insert_then_fault(&db, &proxies[0], Fault::HoldReplies, note, async {
        until_committed(&cluster, 0, note).await;
        // A fast stop sends the replica every record before it ends.
        blocking(|| cluster.stop(0, StopMode::Fast)).expect("stop the primary");
        blocking(|| cluster.promote(1)).expect("promote the replica");
        cut(&proxies[0]).await;
    })
    .await;
    db.close().await;
    (cluster, result, runs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_lost_in_a_failover_resolves_on_the_new_primary_and_is_never_duplicated() {
    let (cluster, result, runs) = commit_lost_in_a_failover(Resolution::Markers).await;
    assert_eq!(result.expect("resolved as committed on the new primary"), 1);
    assert_eq!(runs, 1);
    assert_eq!(rows(&cluster, 1, "failover").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_resolution_a_commit_lost_in_a_failover_is_unknown() {
    let (cluster, result, runs) = commit_lost_in_a_failover(Resolution::Off).await;
    let error = result.expect_err("without resolution the outcome is unknown");
    assert!(error.is_outcome_unknown(), "{error:?}");
    assert_eq!(runs, 1);
    assert_eq!(rows(&cluster, 1, "failover").await, 1);
}

/// Node0 runs our transaction (id X) and commits it, with the answer held
/// back; node1 was stopped before X existed. Node0 then dies, node1 is
/// promoted and hands X out again to a transaction that commits. Only
/// then is the connection cut.
async fn commit_lost_and_its_id_reused(
    resolution: Resolution,
) -> (Cluster, Result<u32, Error>, u32) {
    let (cluster, proxies) = proxied_cluster(1).await;
    let db = manager(&cluster, &proxies, resolution).await;
    create_schema(&cluster).await;
    blocking(|| cluster.wait_for_replicas(Duration::from_secs(30))).expect("replica caught up");
    blocking(|| cluster.stop(1, StopMode::Fast)).expect("stop the replica");
    let note = "reused";
    let (result, runs) = insert_then_fault(&db, &proxies[0], Fault::HoldReplies, note, async {
        until_committed(&cluster, 0, note).await;
        let sql = "SELECT xmin::text::bigint FROM ledger WHERE note = $1";
        let ours: i64 = row_on(&cluster, 0, sql, &[&note]).await.get(0);

        blocking(|| cluster.stop(0, StopMode::Immediate)).expect("crash the primary");
        blocking(|| cluster.start_node(1)).expect("start the replica");
        blocking(|| cluster.promote(1)).expect("promote the replica");
        hand_out_again(&cluster, 1, ours).await;
        cut(&proxies[0]).await;
    })
    .await;
    db.close().await;
    (cluster, result, runs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_transaction_id_is_never_taken_for_our_commit() {
    let (cluster, result, runs) = commit_lost_and_its_id_reused(Resolution::Ids).await;
    // Node1's "committed" is someone else's transaction: without a marker
    // nothing can tell, so the outcome stays unknown; never a false Ok.
    let error = result.expect_err("a reused id must not read as our commit");
    assert!(error.is_outcome_unknown(), "{error:?}");
    assert_eq!(runs, 1);
    assert_eq!(rows(&cluster, 1, "reused").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_markers_a_reused_transaction_id_resolves_as_not_committed_and_runs_again() {
    let (cluster, result, runs) = commit_lost_and_its_id_reused(Resolution::Markers).await;
    // Our commit died with node0's timeline; on node1's it never happened,
    // and the marker says so: run again, once.
    assert_eq!(result.expect("run again on the new primary"), 2);
    assert_eq!(runs, 2);
    assert_eq!(rows(&cluster, 1, "reused").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_marker_table_is_named_and_old_markers_are_pruned() {
    let (cluster, proxies) = proxied_cluster(0).await;
    let mut settings = config(&cluster, &proxies, Resolution::Markers);
    settings.outcomes.marker_table = Some("missing_markers".to_owned());
    let db = DatabaseManager::new(settings).await.expect("manager");
    let error = db
        .write()
        .transaction(|tx| Box::pin(async move { tx.execute("SELECT 1", &[]).await }))
        .await
        .expect_err("the marker table does not exist");
    assert!(
        matches!(error.kind(), ErrorKind::MarkerTable { table, .. } if table == "missing_markers"),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("outcomes.marker_table"),
        "{error}"
    );
    db.close().await;

    // A marker older than the retention goes; a fresh one stays.
    create_schema(&cluster).await;
    let (client, driver) = session(&cluster, 0).await;
    client
        .batch_execute(&format!(
            "INSERT INTO {MARKERS} (id, written) VALUES ('old', now() - interval '2 hours')"
        ))
        .await
        .expect("an old marker");
    let mut settings = config(&cluster, &proxies, Resolution::Markers);
    settings.outcomes.marker_retention = Duration::from_secs(60);
    let db = DatabaseManager::new(settings).await.expect("manager");
    db.write()
        .transaction(|tx| Box::pin(async move { tx.execute("SELECT 1", &[]).await }))
        .await
        .expect("a transaction writes a fresh marker");
    let count = |sql: String| {
        let client = &client;
        async move {
            client
                .query_one(&sql, &[])
                .await
                .expect("count")
                .get::<_, i64>(0)
        }
    };
    // Pruned about every quarter of the retention (15 s here).
    let gone = wait_until_async(Duration::from_secs(60), || async {
        count(format!("SELECT count(*) FROM {MARKERS} WHERE id = 'old'")).await == 0
    })
    .await;
    assert!(gone.is_some(), "the old marker was never pruned");
    assert_eq!(count(format!("SELECT count(*) FROM {MARKERS}")).await, 1);
    db.close().await;
    drop(client);
    let _ = driver.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_outlasts_the_deadline_is_decided_not_left_unknown() {
    let (cluster, proxies) = proxied_cluster(0).await;
    create_schema(&cluster).await;
    let deadline = Duration::from_secs(3);
    for resolution in [Resolution::Ids, Resolution::Off] {
        let mut settings = config(&cluster, &proxies, resolution);
        settings.deadline = deadline;
        let db = DatabaseManager::new(settings).await.expect("manager");
        let note = format!("slowest {resolution:?}");
        let started = std::time::Instant::now();
        let result = db
            .write()
            .transaction(|tx| {
                let note = note.clone();
                Box::pin(async move {
                    tx.execute("INSERT INTO ledger (note) VALUES ($1)", &[&note])
                        .await
                })
            })
            .await;
        let took = started.elapsed();
        assert!(took < deadline + crate::support::SLACK, "took {took:?}");
        let error = result.expect_err("COMMIT takes 30 s");
        match resolution {
            // Part of the deadline is kept for asking: the server ends the
            // COMMIT (cancelled, its session ended) and says it did not
            // commit; the call is run again while the time allows and ends
            // with a definite answer: not committed, or no time left for
            // another attempt (nothing sent).
            Resolution::Ids => {
                assert!(
                    matches!(
                        error.kind(),
                        ErrorKind::NotCommitted
                            | ErrorKind::Timeout {
                                after_send: false,
                                ..
                            }
                    ),
                    "{error:?}"
                );
                assert!(!error.is_outcome_unknown());
            }
            _ => assert!(error.is_outcome_unknown(), "{error:?}"),
        }
        // Behind PgBouncer a cancel request for a client that has gone is
        // dropped, and nothing ends the COMMIT there without resolution:
        // it runs to the end (30 s) and commits.
        if resolution == Resolution::Off && pooler() == Pooler::PgBouncer {
            db.close().await;
            continue;
        }
        // Whatever the answer, the row is not there once the server is done.
        let settled = wait_until_async(Duration::from_secs(40), || async {
            let sql = "SELECT count(*) FROM pg_stat_activity \
                       WHERE query LIKE 'COMMIT%' AND state = 'active'";
            let busy: i64 = row_on(&cluster, 0, sql, &[]).await.get(0);
            busy == 0
        })
        .await;
        assert!(settled.is_some(), "a COMMIT is still running");
        assert_eq!(rows(&cluster, 0, &note).await, 0);
        db.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolved_commit_still_gives_a_causal_token_that_reads_the_write() {
    let (cluster, proxies) = proxied_cluster(1).await;
    create_schema(&cluster).await;
    let db = manager(&cluster, &proxies, Resolution::Ids).await;
    let proxy = Arc::clone(&proxies[0]);
    let note = "with token";
    let info = pgrouter::CallInfo::with_token();
    let transaction = db.write().info(&info).transaction(|tx| {
        let proxy = Arc::clone(&proxy);
        Box::pin(async move {
            tx.execute("INSERT INTO ledger (note) VALUES ($1)", &[&note])
                .await?;
            proxy.set(Fault::HoldReplies);
            Ok(())
        })
    });
    let (result, ()) = tokio::join!(transaction, async {
        until_committed(&cluster, 0, note).await;
        cut(&proxies[0]).await;
    });
    result.expect("resolved as committed");
    let token = info.token().expect("the resolved commit's token");
    // The cut made node0 suspect; the monitor clears it on its next probe.
    let back = crate::support::wait_until(Duration::from_secs(15), || {
        crate::support::healthy(&db, "node0")
    })
    .await;
    assert!(back.is_some(), "{:?}", db.status());
    // The token is the primary's position when it answered: a read after it
    // sees the write wherever it goes.
    let row = db
        .read()
        .after(token)
        .query_one("SELECT count(*) FROM ledger WHERE note = $1", &[&note])
        .await
        .expect("a causal read");
    assert_eq!(row.get::<_, i64>(0), 1);
    db.close().await;
}

/// Takes transaction ids on node `index` (committing each) until `ours` is
/// handed out, and checks that `ours` then reads as committed there: the
/// id reused by another transaction. Returns the first id taken.
async fn hand_out_again(cluster: &Cluster, index: usize, ours: i64) -> i64 {
    let (client, driver) = session(cluster, index).await;
    let take = "SELECT pg_current_xact_id()::text::bigint";
    let first: i64 = client.query_one(take, &[]).await.expect("id").get(0);
    let mut handed_out = first;
    while handed_out < ours {
        handed_out = client.query_one(take, &[]).await.expect("id").get(0);
    }
    let status: Option<String> = client
        .query_one("SELECT pg_xact_status($1::bigint::text::xid8)", &[&ours])
        .await
        .expect("status")
        .get(0);
    assert_eq!(
        status.as_deref(),
        Some("committed"),
        "the id is reused and committed on node {index}"
    );
    drop(client);
    let _ = driver.await;
    first
}

/// When node `index`'s shared statistics were last reset, as text.
async fn stats_reset(cluster: &Cluster, index: usize) -> Option<String> {
    let (client, connection) = cluster.node(index).pg_config().connect(NoTls).await.ok()?;
    let driver = tokio::spawn(connection);
    let sql = "SELECT pg_stat_get_bgwriter_stat_reset_time()::text";
    let reset = client.query_one(sql, &[]).await.ok()?.get(0);
    drop(client);
    let _ = driver.await;
    Some(reset)
}

/// Waits until node `index` accepts connections in a life after the one
/// whose statistics reset time was `before` (a crash restart resets them;
/// right after the kill, the old life may still answer for a moment).
async fn until_restarted(cluster: &Cluster, index: usize, before: &str) {
    let back = wait_until_async(Duration::from_secs(30), || async {
        stats_reset(cluster, index)
            .await
            .is_some_and(|reset| reset != before)
    })
    .await;
    assert!(back.is_some(), "node {index} never came back in a new life");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_restart_under_the_same_postmaster_is_a_new_life() {
    // Our transaction (id X) sends COMMIT and runs a 30 s deferred trigger;
    // a backend is killed with SIGKILL, so the postmaster reinitialises the
    // server and runs crash recovery, under the same postmaster. X wrote
    // nothing to the WAL (an unlogged table), so it is handed out again;
    // a transaction that commits takes it. Only then may resolution ask.
    let (cluster, proxies) = proxied_cluster(0).await;
    let proxy = &proxies[0];
    create_schema(&cluster).await;
    blocking(|| {
        cluster.psql(
            0,
            "CREATE UNLOGGED TABLE scratch (note text NOT NULL);
             CREATE CONSTRAINT TRIGGER slow AFTER INSERT ON scratch
               DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
               WHEN (NEW.note LIKE 'slow%') EXECUTE FUNCTION slow_commit();",
        )
    })
    .expect("scratch table");
    let mut settings = config(&cluster, &proxies, Resolution::Ids);
    settings.deadline = Duration::from_secs(12);
    let db = DatabaseManager::new(settings).await.expect("manager");
    let ours = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let runs = Arc::new(AtomicU32::new(0));
    let transaction = db.write().transaction(|tx| {
        let (ours, runs) = (Arc::clone(&ours), Arc::clone(&runs));
        Box::pin(async move {
            runs.fetch_add(1, Ordering::SeqCst);
            tx.execute("INSERT INTO scratch VALUES ('slowest crash')", &[])
                .await?;
            let row = tx
                .query_one("SELECT pg_current_xact_id()::text::bigint", &[])
                .await?;
            ours.store(row.get(0), Ordering::SeqCst);
            Ok(())
        })
    });
    let crash = async {
        until_running(&cluster, 0, "COMMIT").await;
        let sql = "SELECT pid FROM pg_stat_activity WHERE query = 'COMMIT' AND state = 'active'";
        let pid: i32 = row_on(&cluster, 0, sql, &[]).await.get(0);
        let before = stats_reset(&cluster, 0)
            .await
            .expect("the old life's reset time");
        // Questions find no server until X is handed out again.
        proxy.set(Fault::Reset);
        let killed = blocking(|| {
            std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status()
        });
        assert!(killed.expect("kill").success());
        until_restarted(&cluster, 0, &before).await;
        let ours = ours.load(Ordering::SeqCst);
        let first = hand_out_again(&cluster, 0, ours).await;
        assert!(first <= ours, "X is handed out again: {first} > {ours}");
        proxy.set(Fault::Pass);
    };
    let (result, ()) = tokio::join!(transaction, crash);
    // The same postmaster answers "committed" about X: another
    // transaction's commit, in the server's next life. Never our Ok.
    let error = result.expect_err("a crash-reused id must not read as our commit");
    assert!(error.is_outcome_unknown(), "{error:?}");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolution_steps_down_to_txid_functions_then_off_and_says_so() {
    let (cluster, proxies) = proxied_cluster(0).await;
    let proxy = &proxies[0];
    // The test kit's least-privilege role (PgBouncer knows it too).
    if cluster.node(0).client_user() != APP_USER {
        blocking(|| cluster.create_least_privilege_role(APP_USER)).expect("role");
    }
    create_schema(&cluster).await;
    let revoke = |function: &'static str| {
        let sql = format!("REVOKE EXECUTE ON FUNCTION {function} FROM PUBLIC");
        blocking(|| cluster.psql(0, &sql)).expect("revoke");
    };
    let mut settings = config(&cluster, &proxies, Resolution::Ids);
    for node in &mut settings.nodes {
        let url = node.url.expose().replace(
            &format!("user={}", cluster.node(0).client_user()),
            &format!("user={APP_USER}"),
        );
        node.url = url.into();
    }
    let commit_status_missing = |db: &DatabaseManager| {
        db.status().node("node0").map(|node| {
            node.missing_capabilities
                .iter()
                .any(|missing| missing.capability == Capability::CommitStatus)
        })
    };

    // PostgreSQL 12's names only: a lost COMMIT is still resolved.
    revoke("pg_current_xact_id()");
    let db = DatabaseManager::new(settings.clone())
        .await
        .expect("manager");
    let (result, runs) = insert_then_fault(&db, proxy, Fault::HoldReplies, "older", async {
        until_committed(&cluster, 0, "older").await;
        cut(proxy).await;
    })
    .await;
    assert_eq!(result.expect("resolved with txid_status"), 1);
    assert_eq!((runs, rows(&cluster, 0, "older").await), (1, 1));
    assert_eq!(commit_status_missing(&db), Some(false));

    // Neither: transactions run without resolution, and status says so.
    revoke("txid_current()");
    let (result, runs) = insert_then_fault(&db, proxy, Fault::HoldReplies, "none", async {
        until_committed(&cluster, 0, "none").await;
        cut(proxy).await;
    })
    .await;
    let error = result.expect_err("unresolved: the outcome is unknown");
    assert!(error.is_outcome_unknown(), "{error:?}");
    assert_eq!((runs, rows(&cluster, 0, "none").await), (1, 1));
    assert_eq!(commit_status_missing(&db), Some(true));
    let ran = db
        .transaction(|tx| Box::pin(async move { tx.execute("SELECT 1", &[]).await }))
        .await;
    assert_eq!(ran.expect("transactions still run"), 1);
    db.close().await;
}
