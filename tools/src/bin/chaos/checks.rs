//! The end of the run: every promise checked against the final primary and
//! the record, and the outcome counts printed.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use pgrouter::tokio_postgres::NoTls;
use pgrouter::DatabaseManager;
use pgrouter_testkit::Cluster;

use crate::workload::{Record, ACCOUNTS, OPENING};

/// Prints the counts and the violations; returns how many there were.
pub(crate) async fn run(db: &DatabaseManager, cluster: &Cluster, record: &Record) -> usize {
    let mut violations = record.violations.lock().unwrap().clone();
    let Some(primary) = await_primary(db).await else {
        violations.push(format!(
            "no primary at the end of the run: {:?}",
            db.status()
        ));
        return report(record, &violations);
    };
    // Straight to the server, past the fault proxies.
    let (client, connection) = cluster
        .node(primary)
        .pg_config()
        .connect(NoTls)
        .await
        .expect("a connection to the final primary");
    tokio::spawn(connection);
    let present: HashSet<i64> = client
        .query("SELECT id FROM items", &[])
        .await
        .expect("read items")
        .iter()
        .map(|row| row.get(0))
        .collect();
    let acked = record.acked.lock().unwrap().clone();
    let rejected = record.rejected.lock().unwrap().clone();
    let lost: Vec<_> = acked.iter().filter(|id| !present.contains(id)).collect();
    if !lost.is_empty() {
        violations.push(format!(
            "{} acknowledged writes missing, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        ));
    }
    let ghosts: Vec<_> = rejected.iter().filter(|id| present.contains(id)).collect();
    if !ghosts.is_empty() {
        violations.push(format!(
            "{} writes that returned a definite error are present, e.g. {:?}",
            ghosts.len(),
            &ghosts[..ghosts.len().min(5)]
        ));
    }
    let sum: i64 = client
        .query_one("SELECT sum(balance)::bigint FROM accounts", &[])
        .await
        .expect("sum the accounts")
        .get(0);
    let expected = i64::from(ACCOUNTS) * OPENING;
    if sum != expected {
        violations.push(format!("account sum {sum}, expected {expected}"));
    }
    println!(
        "writes acknowledged {}, rejected {}, rows on the final primary {}",
        acked.len(),
        rejected.len(),
        present.len()
    );
    println!("account sum {sum} (expected {expected})");
    report(record, &violations)
}

/// The final primary's index, once one is known (a fault may just have
/// ended).
async fn await_primary(db: &DatabaseManager) -> Option<usize> {
    for _ in 0..300 {
        let status = db.status();
        if let Some(target) = status.write_target.as_deref() {
            return status.nodes.iter().position(|node| node.name == target);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

fn report(record: &Record, violations: &[String]) -> usize {
    println!("calls: {}", record.calls.load(Ordering::Relaxed));
    println!(
        "most past a deadline: {:.1} ms (allowed {} ms)",
        record.overrun_us.load(Ordering::Relaxed) as f64 / 1000.0,
        crate::workload::OVERRUN.as_millis()
    );
    println!("outcomes:");
    for (outcome, count) in record.outcomes.lock().unwrap().iter() {
        println!("  {count:>8}  {outcome}");
    }
    for violation in violations {
        println!("violation: {violation}");
    }
    violations.len()
}
