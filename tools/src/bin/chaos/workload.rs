//! The clients: unique writes, bounded reads against a heartbeat, causal
//! reads of their own writes, money moved between accounts; every outcome
//! recorded for the final checks.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use pgrouter::error::ErrorKind;
use pgrouter::CallInfo;
use pgrouter::DatabaseManager;

use pgrouter::Error;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Every call's deadline.
pub(crate) const DEADLINE: Duration = Duration::from_secs(2);
/// What a call may overrun its deadline by before it is a violation: the
/// time between a deadline's timer firing and the caller's task running
/// again, which on a 2-core machine shared with three servers and 64
/// clients (a debug build in CI) reached 55 ms; it is the scheduler's, not
/// a wait the library adds.
pub(crate) const OVERRUN: Duration = Duration::from_millis(250);
/// The staleness bound of bounded reads.
pub(crate) const BOUND: Duration = Duration::from_secs(1);
/// Concurrent clients.
pub(crate) const CLIENTS: u64 = 64;
/// Accounts, and each one's opening balance.
pub(crate) const ACCOUNTS: i32 = 10;
pub(crate) const OPENING: i64 = 1000;

/// What the run saw.
#[derive(Debug, Default)]
pub(crate) struct Record {
    /// Writes acknowledged (`Ok`): each must be on the final primary once.
    pub(crate) acked: Mutex<Vec<i64>>,
    /// Writes that failed with a definite error: none may be there.
    pub(crate) rejected: Mutex<Vec<i64>>,
    /// Heartbeat ticks acknowledged, and when.
    heartbeats: Mutex<Vec<(Instant, i64)>>,
    /// Broken promises, described.
    pub(crate) violations: Mutex<Vec<String>>,
    /// Outcomes by operation and result.
    pub(crate) outcomes: Mutex<BTreeMap<String, u64>>,
    /// Calls made.
    pub(crate) calls: AtomicU64,
    /// The most any call ran past its deadline, in microseconds.
    pub(crate) overrun_us: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Record {
    fn violation(&self, text: String) {
        eprintln!("VIOLATION: {text}");
        lock(&self.violations).push(text);
    }

    fn outcome<T>(&self, op: &str, result: &Result<T, Error>) {
        let label = match result {
            Ok(_) => "ok".to_owned(),
            Err(error) if error.is_outcome_unknown() => "outcome-unknown".to_owned(),
            Err(error) => variant(error),
        };
        *lock(&self.outcomes)
            .entry(format!("{op} {label}"))
            .or_default() += 1;
    }

    /// Checks a call's duration against its deadline.
    fn timed(&self, op: &str, started: Instant) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let took = started.elapsed();
        let past = took.saturating_sub(DEADLINE);
        let micros = u64::try_from(past.as_micros()).unwrap_or(u64::MAX);
        self.overrun_us.fetch_max(micros, Ordering::Relaxed);
        if took > DEADLINE + OVERRUN {
            self.violation(format!("{op} took {took:?}, deadline {DEADLINE:?}"));
        }
    }

    /// The highest tick acknowledged no later than `at`.
    fn tick_as_of(&self, at: Instant) -> i64 {
        let beats = lock(&self.heartbeats);
        let index = beats.partition_point(|(acked, _)| *acked <= at);
        index.checked_sub(1).map_or(0, |last| beats[last].1)
    }
}

/// The error's variant, for the outcome table.
fn variant(error: &Error) -> String {
    let debug = format!("{error:?}");
    let name: String = debug.chars().take_while(|c| c.is_alphanumeric()).collect();
    match error.code() {
        Some(code) => format!("{name}({})", code.code()),
        None => name,
    }
}

pub(crate) async fn setup(db: &DatabaseManager) {
    let client = db.write_pool().unwrap().get().await.unwrap();
    client
        .batch_execute(&format!(
            "CREATE TABLE items (id bigint PRIMARY KEY, client int);
             CREATE TABLE accounts (id int PRIMARY KEY, balance bigint);
             INSERT INTO accounts SELECT g, {OPENING} FROM generate_series(1, {ACCOUNTS}) g;
             CREATE TABLE clock (id int PRIMARY KEY, tick bigint);
             INSERT INTO clock VALUES (1, 0);"
        ))
        .await
        .unwrap();
}

/// Starts the heartbeat and the clients; each stops after `run_for`.
pub(crate) fn start(
    db: &DatabaseManager,
    record: &Arc<Record>,
    run_for: Duration,
    seed: u64,
) -> Vec<JoinHandle<()>> {
    let until = Instant::now() + run_for;
    let mut tasks = vec![tokio::spawn(heartbeat(
        db.clone(),
        Arc::clone(record),
        until,
    ))];
    for client in 0..CLIENTS {
        let (db, record) = (db.clone(), Arc::clone(record));
        let rng = fastrand::Rng::with_seed(seed.wrapping_mul(1000).wrapping_add(client));
        tasks.push(tokio::spawn(run_client(db, record, client, rng, until)));
    }
    tasks
}

/// Advances the clock row every 50 ms; acknowledged ticks are the yardstick
/// of bounded reads.
async fn heartbeat(db: DatabaseManager, record: Arc<Record>, until: Instant) {
    let mut tick = 0i64;
    while Instant::now() < until {
        tick += 1;
        let started = Instant::now();
        let result = db
            .write()
            .execute("UPDATE clock SET tick = $1 WHERE id = 1", &[&tick])
            .await;
        record.timed("heartbeat", started);
        if result.is_ok() {
            lock(&record.heartbeats).push((Instant::now(), tick));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn run_client(
    db: DatabaseManager,
    record: Arc<Record>,
    client: u64,
    mut rng: fastrand::Rng,
    until: Instant,
) {
    let mut seq = 0i64;
    while Instant::now() < until {
        seq += 1;
        let id = (client as i64) * 1_000_000_000 + seq;
        match rng.u8(..100) {
            0..40 => write(&db, &record, id, client).await,
            40..65 => bounded_read(&db, &record).await,
            65..85 => causal(&db, &record, id, client).await,
            _ => transfer(&db, &record, &mut rng).await,
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(5..20))).await;
    }
}

/// Files a write's outcome: acknowledged, definitely not applied, or unknown.
fn file_write(record: &Record, id: i64, result: &Result<u64, Error>) {
    match result {
        Ok(_) => lock(&record.acked).push(id),
        Err(error) if error.is_outcome_unknown() => {}
        Err(_) => lock(&record.rejected).push(id),
    }
}

/// A plain write, or (every other id) an `exactly_once()` one.
async fn write(db: &DatabaseManager, record: &Record, id: i64, client: u64) {
    let started = Instant::now();
    let once = id % 2 == 1;
    let write = match once {
        true => db.write().exactly_once(),
        false => db.write(),
    };
    let result = write
        .execute(
            "INSERT INTO items (id, client) VALUES ($1, $2)",
            &[&id, &(client as i32)],
        )
        .await;
    let op = if once { "write-once" } else { "write" };
    record.timed(op, started);
    record.outcome(op, &result);
    file_write(record, id, &result);
}

async fn bounded_read(db: &DatabaseManager, record: &Record) {
    let started = Instant::now();
    let required = started
        .checked_sub(BOUND)
        .map_or(0, |at| record.tick_as_of(at));
    let result = db
        .read()
        .max_staleness(BOUND)
        .query_one("SELECT tick FROM clock WHERE id = 1", &[])
        .await;
    record.timed("bounded read", started);
    record.outcome("bounded-read", &result);
    if let Ok(row) = result {
        let tick: i64 = row.get(0);
        if tick < required {
            record.violation(format!(
                "bounded read saw tick {tick}; tick {required} was acknowledged more than {BOUND:?} before it began"
            ));
        }
    }
}

async fn causal(db: &DatabaseManager, record: &Record, id: i64, client: u64) {
    let started = Instant::now();
    let info = CallInfo::with_token();
    let result = db
        .write()
        .info(&info)
        .execute(
            "INSERT INTO items (id, client) VALUES ($1, $2)",
            &[&id, &(client as i32)],
        )
        .await;
    record.timed("causal write", started);
    record.outcome("causal-write", &result);
    let token = match result {
        Ok(_) => {
            lock(&record.acked).push(id);
            info.token()
                .expect("a successful write asked for its token")
        }
        // Applied, only its token is lost.
        Err(error) if *error.kind() == ErrorKind::TokenUnavailable => {
            return lock(&record.acked).push(id)
        }
        Err(error) if error.is_outcome_unknown() => return,
        Err(_) => return lock(&record.rejected).push(id),
    };
    let started = Instant::now();
    let read = db
        .read()
        .after(token)
        .query_one("SELECT count(*) FROM items WHERE id = $1", &[&id])
        .await;
    record.timed("causal read", started);
    record.outcome("causal-read", &read);
    if let Ok(row) = read {
        let seen: i64 = row.get(0);
        if seen != 1 {
            record.violation(format!("causal read after {token} did not see write {id}"));
        }
    }
}

async fn transfer(db: &DatabaseManager, record: &Record, rng: &mut fastrand::Rng) {
    let from = rng.i32(1..=ACCOUNTS);
    let to = rng.i32(1..=ACCOUNTS);
    let amount = rng.i64(1..50);
    let started = Instant::now();
    let result = db
        .transaction(|tx| {
            Box::pin(async move {
                tx.execute(
                    "UPDATE accounts SET balance = balance - $1 WHERE id = $2",
                    &[&amount, &from],
                )
                .await?;
                tx.execute(
                    "UPDATE accounts SET balance = balance + $1 WHERE id = $2",
                    &[&amount, &to],
                )
                .await?;
                Ok(())
            })
        })
        .await;
    record.timed("transfer", started);
    record.outcome("transfer", &result);
}
